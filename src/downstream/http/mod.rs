//! The Streamable HTTP downstream: `POST/GET/DELETE /mcp` (every upstream) and `/mcp/NAME`
//! (one upstream, fully transparent).
//!
//! Sessions. A client that initializes (protocol 2025-11-25 and older) gets an `Mcp-Session-Id`
//! and a session of its own, with its own upstream connections: its own child process for a
//! stdio upstream, its own upstream session for an HTTP one. Its capabilities, log level,
//! subscriptions and server-to-client requests therefore stay its own. Clients speaking
//! 2026-07-28 have no sessions; their requests share one session per endpoint, whose request
//! ids and progress tokens the proxy keeps apart.
//!
//! The rooms: this file holds the options, the shared state, the router and the server's run;
//! `sessions` opening, sharing, draining and reaping sessions within the limits; `methods` what
//! `POST`, `GET` and `DELETE` do; `streams` which response stream each message of a session goes
//! to; `refusal` the boundary's error type, with its HTTP status and JSON-RPC code.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, any};
use dashmap::DashMap;
use tokio::net::TcpListener;
use tracing::warn;

use crate::http::guard::check_host_origin;
use crate::http::health::{self, Readiness};
use crate::identity::Credentials;
use crate::session::SessionOptions;
use crate::wire::headers::PROTOCOL_VERSION as VERSION_HEADER;

mod methods;
mod refusal;
mod sessions;
mod streams;

use methods::{delete, get, post};
use refusal::{Refusal, validate_modern_headers};
use sessions::{Held, HttpSession};
use streams::{FrameRx, OpenRequest, STREAM_QUEUE, Streams, frame_channel};

/// On shutdown, how long requests in flight may take to finish before their streams end
/// with an error.
const DRAIN_WAIT: Duration = Duration::from_secs(3);
/// On shutdown, how long connections may stay open after every session closed.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// What the HTTP downstream serves and how it guards itself.
pub struct HttpOptions {
    /// Session options for `/mcp` (all upstreams).
    pub all: SessionOptions,
    /// Session options for `/mcp/NAME`, one per upstream.
    pub single: HashMap<String, SessionOptions>,
    /// Bearer token required on every request, if set.
    pub token: Option<String>,
    /// Named agents: a request bearing one of these tokens speaks for that agent, in sessions of
    /// its own. When any are configured, every request needs an agent token or `token`.
    pub agents: Credentials,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub limits: HttpLimits,
}

/// How much the HTTP downstream takes on (`[listen]`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Most sessions open at once, the shared sessions of sessionless clients included. Each has
    /// its own upstream connections (a child process per stdio upstream).
    pub max_sessions: usize,
    /// A session unused this long is closed. A request in flight keeps it open until the request
    /// is older than the longest request timeout of its upstreams: then it counts as stuck.
    pub session_idle: Duration,
    pub listener: crate::http::listener::ListenerLimits,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_sessions: super::settings::DEFAULT_MAX_SESSIONS,
            session_idle: super::settings::DEFAULT_SESSION_IDLE,
            listener: crate::http::listener::ListenerLimits::default(),
        }
    }
}

/// The operations routes of the MCP endpoint, `/healthz` and `/readyz` (see [`crate::http::health`]).
#[derive(Clone, Default)]
pub struct Operations {
    /// What `/readyz` checks.
    pub readiness: Readiness,
    /// The endpoint listens on a non-loopback address: the probes answer whatever the Host.
    pub any_host: bool,
}

/// An endpoint and the authenticated agent, if any.
type SharedKey = (String, Option<String>);

pub struct HttpState {
    opts: HttpOptions,
    sessions: DashMap<String, Arc<HttpSession>>,
    /// Shared sessions of sessionless (2026-07-28) clients, per endpoint and agent.
    shared: tokio::sync::Mutex<HashMap<SharedKey, Arc<HttpSession>>>,
    next_id: AtomicU64,
    /// One permit per open session, shared sessions included.
    slots: Arc<tokio::sync::Semaphore>,
    /// How many of those each principal holds.
    held: Held,
    /// With `[[agents]]`: every principal that may open sessions (the agents, and anonymous
    /// clients when `token` is set), each of which is kept a place under `max_sessions`.
    principals: Vec<Option<String>>,
    ops: Operations,
}

/// Builds the router (tests call this directly).
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/mcp", any(all_endpoint))
        .route("/mcp/{name}", any(named_endpoint))
        .route(health::HEALTHZ, routing::get(healthz))
        .route(health::READYZ, routing::get(readyz))
        .with_state(state)
}

async fn healthz(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    match state.probe_guard(&headers) {
        Ok(()) => health::healthz(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn readyz(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    match state.probe_guard(&headers) {
        Ok(()) => health::readyz(&state.ops.readiness).await,
        Err(refusal) => refusal.into_response(),
    }
}

impl HttpState {
    /// The Host/Origin rule of the probes (see [`crate::http::health`]).
    fn probe_guard(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let (hosts, origins) = (&self.opts.allowed_hosts, &self.opts.allowed_origins);
        Ok(health::probe_guard(hosts, origins, self.ops.any_host, headers)?)
    }
}

/// Serves until `shutdown` completes, then closes every session (see
/// `HttpState::drain_and_close`) and waits at most `CLOSE_WAIT` (3 s) for connections to end.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let reaper_state = Arc::downgrade(&state);
    let every = (state.opts.limits.session_idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match reaper_state.upgrade() {
                Some(s) => s.reap().await,
                None => break,
            }
        }
    });
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let closing = state.clone();
    let signal = async move {
        shutdown.await;
        closing.drain_and_close().await;
        let _ = closed_tx.send(());
    };
    let limits = state.opts.limits.listener;
    let server = crate::http::listener::serve(listener, router(state), limits, signal);
    let deadline = async {
        match closed_rx.await {
            Ok(()) => tokio::time::sleep(CLOSE_WAIT).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            warn!("connections still open {CLOSE_WAIT:?} after shutdown; closing them");
            Ok(())
        }
    }
}

async fn all_endpoint(State(state): State<Arc<HttpState>>, method: Method, headers: HeaderMap, body: Body) -> Response {
    handle(state, String::new(), method, headers, body).await
}

async fn named_endpoint(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !state.opts.single.contains_key(&name) {
        return Refusal::UnknownUpstream(name).into_response();
    }
    handle(state, name, method, headers, body).await
}

async fn handle(state: Arc<HttpState>, endpoint: String, method: Method, headers: HeaderMap, body: Body) -> Response {
    if let Err(why) = check_host_origin(&state.opts.allowed_hosts, &state.opts.allowed_origins, &headers) {
        return Refusal::from(why).into_response();
    }
    let Ok(agent) = state.caller(&headers) else {
        return Refusal::Unauthorized.into_response();
    };
    let agent = agent.as_deref();
    if let Some(version) = header_str(&headers, VERSION_HEADER)
        && !is_version(version)
    {
        return Refusal::BadVersion(version.to_owned()).into_response();
    }
    match method {
        Method::POST => post(state, endpoint, agent, headers, body).await,
        Method::GET => get(state, endpoint, agent, headers).await,
        Method::DELETE => delete(state, &endpoint, agent, headers),
        _ => {
            let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            resp
        }
    }
}

/// Whether `text` has the form of a protocol version: a date, `YYYY-MM-DD`.
fn is_version(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10 && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
}

/// A POST body declared as something else than JSON. No Content-Type at all is let through.
fn not_json(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?;
    let text = value.to_str().unwrap_or_default();
    let essence = text.split(';').next().unwrap_or_default().trim();
    (!essence.eq_ignore_ascii_case("application/json")).then(|| text.to_owned())
}

fn is_modern(headers: &HeaderMap) -> bool {
    header_str(headers, VERSION_HEADER).is_some_and(|v| crate::wire::era::Era::of_version(v).is_modern())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// 128 random bits as hex, from the OS.
fn random_id() -> Result<String, crate::random::RandomError> {
    crate::random::hex(16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::guard::headers;
    use crate::wire::jsonrpc::Message;

    /// A `tools/call` with these params.
    fn tools_call(params: &str) -> Message {
        Message::parse(format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#).as_bytes())
            .unwrap()
    }

    #[test]
    fn modern_headers_must_match_body() {
        let msg = tools_call(r#"{"name":"h\u00e9"}"#);
        let ok = headers(&[("mcp-method", "tools/call"), ("mcp-name", "=?base64?aMOp?=")]);
        assert!(validate_modern_headers(&ok, &msg).is_ok());
        let wrong = headers(&[("mcp-method", "tools/call"), ("mcp-name", "other")]);
        assert!(validate_modern_headers(&wrong, &msg).is_err());
        let missing = headers(&[("mcp-method", "tools/call")]);
        assert!(validate_modern_headers(&missing, &msg).is_err());
    }

    /// A client that opens and closes GET streams again and again does not make the session
    /// keep every stream it ever opened.
    #[test]
    fn closed_get_streams_are_not_kept() {
        let streams = Streams::default();
        for _ in 0..1000 {
            let (tx, rx) = frame_channel(STREAM_QUEUE);
            drop(rx);
            streams.open_get_stream(tx);
        }
        let (tx, _open) = frame_channel(STREAM_QUEUE);
        streams.open_get_stream(tx);
        assert_eq!(streams.inner.lock().unwrap().get_streams.len(), 1, "only the open stream is kept");
    }

    #[test]
    fn a_name_mismatch_reads_as_text() {
        let named = tools_call(r#"{"name":"echo"}"#);
        let unnamed = tools_call("{}");
        let h = headers(&[("mcp-method", "tools/call"), ("mcp-name", "get")]);
        let text = validate_modern_headers(&h, &named).unwrap_err().to_string();
        assert_eq!(text, r#"Header mismatch: Mcp-Name "get" but the body says "echo""#);
        let text = validate_modern_headers(&h, &unnamed).unwrap_err().to_string();
        assert_eq!(text, r#"Header mismatch: Mcp-Name "get" but the body names none"#);
    }

    #[test]
    fn a_misplaced_padding_leaves_the_header_as_written() {
        // A misplaced `=` leaves the header as written, which then does not match the body.
        let msg = tools_call(r#"{"name":"h\u00e9"}"#);
        let misplaced = headers(&[("mcp-method", "tools/call"), ("mcp-name", "=?base64?aM=Op?=")]);
        assert!(validate_modern_headers(&misplaced, &msg).is_err());
    }
}
