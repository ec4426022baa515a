//! Why a request is refused before it reaches a session, and the HTTP answer each refusal gets.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;

use super::header_str;
use crate::wire::MAX_MESSAGE_BYTES;
use crate::wire::headers::{METHOD as METHOD_HEADER, NAME as NAME_HEADER};
use crate::wire::jsonrpc::{self, Kind, Message, code};

/// Why a request to the MCP endpoint is answered by the proxy with an HTTP error: the boundary's
/// one error type. [`Refusal::status`] and [`Refusal::code`] are its only mappings to an HTTP
/// status and a JSON-RPC code.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("no upstream named {0:?}")]
    UnknownUpstream(String),
    #[error("unknown endpoint")]
    UnknownEndpoint,
    #[error(transparent)]
    Forbidden(#[from] crate::http::guard::Forbidden),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("body exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge,
    #[error("the request body did not arrive within {0} s (`header_timeout_secs`)")]
    SlowBody(u64),
    #[error(
        "too many requests in flight in this session: the limit is {0} (half of `[listen] max_connections`); retry when one ends"
    )]
    Busy(usize),
    #[error(transparent)]
    HeaderMismatch(#[from] HeaderMismatch),
    #[error("Bad Request: Mcp-Session-Id header is required")]
    SessionRequired,
    #[error("Session not found")]
    SessionNotFound,
    #[error("Accept must include text/event-stream")]
    NotAcceptable,
    #[error("Bad Request: Mcp-Protocol-Version {0:?} is not a protocol version (YYYY-MM-DD, such as 2025-11-25)")]
    BadVersion(String),
    #[error("Unsupported Media Type: Content-Type {0:?}; the body must be application/json")]
    NotJson(String),
    #[error("too many sessions: the limit is {0} (`[listen] max_sessions`); close one or retry later")]
    Full(usize),
    #[error(
        "too many sessions: the limit is {0} (`[listen] max_sessions`) and the places left are kept for agents that hold none; close one of yours or retry later"
    )]
    Reserved(usize),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::ConnectError),
    #[error("the session ended before answering")]
    Ended,
    #[error("internal error: a lock was poisoned")]
    Poisoned,
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
}

impl Refusal {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Refusal::UnknownUpstream(_) | Refusal::UnknownEndpoint | Refusal::SessionNotFound => StatusCode::NOT_FOUND,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::HeaderMismatch(_) | Refusal::SessionRequired | Refusal::BadVersion(_) => StatusCode::BAD_REQUEST,
            Refusal::NotJson(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Refusal::Full(_) | Refusal::Reserved(_) | Refusal::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Upstream(_) | Refusal::Ended => StatusCode::BAD_GATEWAY,
            Refusal::Poisoned | Refusal::Random(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(super) fn code(&self) -> i64 {
        match self {
            Refusal::UnknownUpstream(_)
            | Refusal::UnknownEndpoint
            | Refusal::Forbidden(_)
            | Refusal::Unauthorized
            | Refusal::TooLarge
            | Refusal::SlowBody(_)
            | Refusal::SessionRequired
            | Refusal::NotAcceptable
            | Refusal::BadVersion(_)
            | Refusal::NotJson(_) => code::INVALID_REQUEST,
            Refusal::HeaderMismatch(_) => code::HEADER_MISMATCH,
            Refusal::SessionNotFound => code::SESSION_NOT_FOUND,
            Refusal::Full(_) | Refusal::Reserved(_) | Refusal::Busy(_) | Refusal::Poisoned | Refusal::Random(_) => {
                code::INTERNAL_ERROR
            }
            Refusal::Upstream(_) | Refusal::Ended => code::UPSTREAM_ERROR,
        }
    }

    /// The answer, under the request's id when it has one.
    pub(super) fn response(&self, id: Option<Box<RawValue>>) -> Response {
        let body = Message::error(id, self.code(), &self.to_string()).to_bytes();
        let mut resp = (self.status(), [(header::CONTENT_TYPE, "application/json")], body).into_response();
        let headers = resp.headers_mut();
        match self {
            Refusal::Full(_) | Refusal::Reserved(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Refusal::Busy(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Refusal::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body is unread: the connection cannot carry another request.
            Refusal::TooLarge | Refusal::SlowBody(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.response(None)
    }
}

/// `Mcp-Method` or `Mcp-Name` (2026-07-28) disagrees with the body, or is missing.
#[derive(Debug, thiserror::Error)]
pub(super) enum HeaderMismatch {
    #[error("Header mismatch: Mcp-Method is required")]
    MethodMissing,
    #[error("Header mismatch: Mcp-Method {header:?} but the body's method is {body:?}")]
    Method { header: String, body: String },
    #[error("Header mismatch: Mcp-Name is required")]
    NameMissing,
    #[error("Header mismatch: Mcp-Name {header:?} but the body says {body:?}")]
    Name { header: String, body: String },
    #[error("Header mismatch: Mcp-Name {header:?} but the body names none")]
    NameNotInBody { header: String },
}

/// Checks `Mcp-Method` and `Mcp-Name` against the body (2026-07-28).
pub(super) fn validate_modern_headers(headers: &HeaderMap, msg: &Message) -> Result<(), HeaderMismatch> {
    if msg.kind() == Kind::Response {
        return Ok(());
    }
    match header_str(headers, METHOD_HEADER) {
        Some(m) if m == msg.method() => {}
        Some(m) => {
            return Err(HeaderMismatch::Method { header: m.to_owned(), body: msg.method().to_owned() });
        }
        None => return Err(HeaderMismatch::MethodMissing),
    }
    let key = match msg.method() {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return Ok(()),
    };
    let body_value = msg.params.as_deref().and_then(|p| jsonrpc::string_field(p, key));
    let header_value = header_str(headers, NAME_HEADER).map(crate::wire::headers::decode_value);
    match (header_value, body_value) {
        (Some(h), Some(b)) if h == b => Ok(()),
        (None, _) => Err(HeaderMismatch::NameMissing),
        (Some(h), Some(b)) => Err(HeaderMismatch::Name { header: h.to_owned(), body: b.to_owned() }),
        (Some(h), None) => Err(HeaderMismatch::NameNotInBody { header: h.to_owned() }),
    }
}
