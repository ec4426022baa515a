//! Integration tests: in-process proxies with rmcp peers, and the real binary.

mod binary;
mod common;
mod relay;
mod sse_fixture;
mod transparency;
