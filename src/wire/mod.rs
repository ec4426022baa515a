//! What travels between peers, before anything is decided about it: the JSON-RPC envelope and its
//! strict reading ([`jsonrpc`]), newline framing for stdio ([`framing`]), the Server-Sent Events
//! codec ([`sse`]), the Streamable HTTP [`headers`], and which protocol era a request speaks ([`era`]).

pub mod era;
pub mod framing;
pub mod headers;
pub mod jsonrpc;
pub mod sse;

/// Longest accepted message: one stdio line or one HTTP body.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
