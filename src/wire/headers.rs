//! The HTTP header names of MCP's Streamable HTTP transport, lower-case as HTTP/2 carries them.

/// The session a 2025-era request belongs to.
pub const SESSION: &str = "mcp-session-id";
/// The protocol version a request speaks.
pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// 2026-07-28: the request's method, repeated from the body for routers that do not read it.
pub const METHOD: &str = "mcp-method";
/// 2026-07-28: the tool or prompt name (or resource URI) of the request, repeated from the body.
pub const NAME: &str = "mcp-name";
/// 2026-07-28: the prefix of headers that repeat a tool argument marked for it.
pub const PARAM_PREFIX: &str = "mcp-param-";
/// SSE resumption: the last event id the client received on the stream.
pub const LAST_EVENT_ID: &str = "last-event-id";
