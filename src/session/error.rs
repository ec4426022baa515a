//! Why the session answers a client request with an error itself, and the one mapping of those
//! errors to JSON-RPC error codes.

use serde_json::value::RawValue;

use crate::upstream::LinkError;
use crate::wire::jsonrpc::{self, code};

/// An error the session answers a request with (the upstream's own errors are relayed as they are).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The request's params are missing something the session needs to route it.
    #[error("{0}")]
    BadParams(&'static str),
    #[error("tools/call params could not be read: {0}")]
    UnreadableParams(String),
    /// An argument that differs from a property of the tool's `inputSchema` only by case: some
    /// servers read it as that property, which the policy did not see.
    #[error(
        "argument {key:?} differs from {property:?}, a property of the tool's inputSchema, only by case: some servers read them as one key"
    )]
    CaseVariantArgument { key: String, property: String },
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    #[error("unknown name {name:?}: expected SERVER{separator}NAME")]
    UnknownName { name: String, separator: String },
    #[error("unknown resource URI: list resources first")]
    UnknownResource,
    #[error("invalid cursor")]
    InvalidCursor,
    #[error(
        "tool name collision: `{exposed}` is exposed by both `{first}` and `{second}`; set `prefix = true` on one of them"
    )]
    ToolCollision { exposed: String, first: String, second: String },
    #[error("gate held a call twice")]
    HeldTwice,
    #[error("upstream `{server}` is not running; it is being restarted")]
    Restarting { server: String },
    #[error("upstream `{server}` stopped before answering: {reason}")]
    Stopped { server: String, reason: String },
    #[error("upstream `{server}` did not answer `{method}` within {secs} s (`{key}`)")]
    TimedOut { server: String, method: String, secs: u64, key: &'static str },
    #[error("upstream `{server}` answered with a message over the {limit}-byte limit; it was dropped")]
    TooLarge { server: String, limit: usize },
    #[error("upstream `{server}`: {error}")]
    Refused { server: String, error: LinkError },
    #[error("upstream `{server}` did not list its tools")]
    NoToolList { server: String },
    #[error("empty response")]
    EmptyResponse,
    /// The client reused the id of one of its requests still in flight (or held).
    #[error("request id {0} is already in use by a request in flight")]
    IdInUse(String),
    /// 2026-07-28: an `Mcp-Param-*` header of the request says something else than its body.
    #[error("{0}")]
    HeaderMismatch(String),
    /// The gate refused the request itself.
    #[error(transparent)]
    Gate(#[from] crate::gate::GateError),
}

impl SessionError {
    /// The JSON-RPC error code the client sees.
    pub fn code(&self) -> i64 {
        match self {
            SessionError::BadParams(_)
            | SessionError::UnreadableParams(_)
            | SessionError::CaseVariantArgument { .. }
            | SessionError::UnknownTool(_)
            | SessionError::UnknownName { .. }
            | SessionError::UnknownResource
            | SessionError::InvalidCursor => code::INVALID_PARAMS,
            SessionError::IdInUse(_) => code::INVALID_REQUEST,
            SessionError::HeaderMismatch(_) => code::HEADER_MISMATCH,
            SessionError::ToolCollision { .. } | SessionError::HeldTwice => code::INTERNAL_ERROR,
            SessionError::Gate(crate::gate::GateError::InvalidParams(_)) => code::INVALID_PARAMS,
            SessionError::Restarting { .. }
            | SessionError::Stopped { .. }
            | SessionError::TimedOut { .. }
            | SessionError::TooLarge { .. }
            | SessionError::Refused { .. }
            | SessionError::NoToolList { .. }
            | SessionError::EmptyResponse => code::UPSTREAM_ERROR,
        }
    }

    /// The JSON-RPC error object (`code` and `message`).
    pub fn to_error_object(&self) -> Box<RawValue> {
        jsonrpc::to_raw(&serde_json::json!({"code": self.code(), "message": self.to_string()}))
    }
}
