//! mcp-gate: a transparent MCP proxy that puts a person (or a reviewer model) between an AI
//! agent and the tools it calls.
//!
//! # Layout
//!
//! A message from the client enters through a **downstream** ([`downstream::stdio`] when the
//! client started us, [`downstream::http`] for `mcp-gate serve`), is parsed into the raw
//! envelope of [`jsonrpc`] (params and results stay the exact bytes received) and handed to its
//! [`session`]. The session is an actor that owns the id maps and routes: it gives the request
//! a fresh id for the upstream it belongs to ([`router`] holds the pure helpers for several
//! upstreams: exposed names, merged capabilities, cursors), sends it through that upstream's
//! **transport** ([`transport::child`] for a stdio server, [`transport::http_client`] for
//! Streamable HTTP, [`transport::sse_client`] for legacy HTTP+SSE), and maps the answer back.
//!
//! `tools/call` takes one detour: the session looks the tool up in the upstream's tool list
//! ([`tools`], fetched by the proxy itself when the client has not listed tools) and asks the
//! [`gate`] whether the call may go upstream.
//!
//! [`config`] loads `proxy.toml`; [`cli`] is the command line.

pub mod cli;
pub mod config;
pub mod downstream;
pub mod gate;
pub mod jsonrpc;
pub mod router;
pub mod session;
pub mod tools;
pub mod transport;
