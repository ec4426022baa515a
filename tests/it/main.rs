//! Integration tests: in-process proxies with rmcp peers, and the real binary.

// Sampling and logging are deprecated in 2026-07-28 but still what older clients and servers use.
#![allow(deprecated, clippy::unwrap_used)]

mod ai_review;
mod approval_server;
mod approver_cli;
mod binary;
mod bounds;
mod caller_gone;
mod channels;
mod common;
mod dashboard_api;
mod desktop;
mod gating;
mod hub;
mod idle_audit;
mod input_required;
mod integrity;
mod layers;
mod ops;
mod relay;
mod replicas;
mod schema_validity;
mod shutdown;
mod sign_in;
mod sse_fixture;
mod store_faults;
mod tasks;
mod tasks_2026;
mod traces;
mod transparency;
mod webhooks;
