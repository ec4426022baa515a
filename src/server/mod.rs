//! The approval server and what runs beside it: the dashboard and JSON API ([`web`]), the per-machine
//! [`hub`] that decides which process serves them, the [`handshake`] by which both ends prove they
//! know a token before it travels, and the [`notify`] webhooks.

pub mod handshake;
pub mod hub;
pub mod hub_api;
pub mod notify;
pub mod web;
