//! What both HTTP servers (the MCP endpoint of `mcp-gate serve` and the approval server) share:
//! the bounded [`listener`], the request [`guard`] (Host/Origin checks, bearer tokens) and the
//! [`health`] probes (`/healthz`, `/readyz`).

pub mod guard;
pub mod health;
pub mod listener;
