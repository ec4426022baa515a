//! What both HTTP servers (the MCP endpoint of `mcp-gate serve` and the approval server) share:
//! the bounded [`listener`] and the request [`guard`] (Host/Origin checks, bearer tokens).

pub mod guard;
pub mod listener;
