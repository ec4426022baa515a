//! The Streamable HTTP downstream: `POST/GET/DELETE /mcp` (every upstream) and `/mcp/NAME`
//! (one upstream, fully transparent).
//!
//! Sessions. A client that initializes (protocol 2025-11-25 and older) gets an `Mcp-Session-Id`
//! and a session of its own, with its own upstream connections: its own child process for a
//! stdio upstream, its own upstream session for an HTTP one. Its capabilities, log level,
//! subscriptions and server-to-client requests therefore stay its own. Clients speaking
//! 2026-07-28 have no sessions; their requests share one session per endpoint, whose request
//! ids and progress tokens the proxy keeps apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, any};
use dashmap::DashMap;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::http::guard::{bearer_matches, bearer_token, check_host_origin};
use crate::http::health::{self, Readiness};
use crate::identity::Credentials;
use crate::session::{self, Downstream, Input, Route, SessionHandle, SessionOptions};
use crate::wire::MAX_MESSAGE_BYTES;
use crate::wire::jsonrpc::{self, Kind, Message, code};

/// On shutdown, how long requests in flight may take to finish before their streams end
/// with an error.
const DRAIN_WAIT: Duration = Duration::from_secs(3);
/// On shutdown, how long connections may stay open after every session closed.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

use crate::wire::headers::{
    METHOD as METHOD_HEADER, NAME as NAME_HEADER, PARAM_PREFIX as PARAM_HEADER_PREFIX,
    PROTOCOL_VERSION as VERSION_HEADER, SESSION as SESSION_HEADER,
};

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

/// Why a request to the MCP endpoint is answered by the proxy with an HTTP error: the boundary's
/// one error type. [`Refusal::status`] and [`Refusal::code`] are its only mappings to an HTTP
/// status and a JSON-RPC code.
#[derive(Debug, thiserror::Error)]
enum Refusal {
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
    fn status(&self) -> StatusCode {
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

    fn code(&self) -> i64 {
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
    fn response(&self, id: Option<Box<RawValue>>) -> Response {
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
enum HeaderMismatch {
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

struct HttpSession {
    endpoint: String,
    /// The authenticated agent that opened it; only that agent may use it.
    agent: Option<String>,
    handle: SessionHandle,
    streams: Arc<Streams>,
    last_used: Mutex<Instant>,
    /// Requests in flight longer than this are stuck: they no longer keep the session open.
    stuck_after: Duration,
    /// Its place under `max_sessions`, given back when the session is dropped.
    _slot: Place,
    /// Counted in `mcp_gate_sessions_open` while it exists.
    _counted: crate::metrics::SessionOpen,
}

/// Places under `max_sessions` held by each principal: an agent, or `None` for anonymous clients.
/// Only principals holding at least one are present.
type Held = Arc<Mutex<HashMap<Option<String>, usize>>>;

/// A session's place under `max_sessions`, counted for its principal; both are given back when
/// it is dropped.
struct Place {
    _slot: tokio::sync::OwnedSemaphorePermit,
    agent: Option<String>,
    held: Held,
}

impl Drop for Place {
    fn drop(&mut self) {
        let Ok(mut held) = self.held.lock() else { return };
        if let Some(n) = held.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.agent);
            }
        }
    }
}

impl HttpSession {
    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    /// Whether the reaper should close it: unused for `idle`, with no request in flight that is
    /// not stuck, or its actor already gone.
    fn reapable(&self, idle: Duration) -> bool {
        if self.handle.is_closed() {
            return true;
        }
        let unused = self.last_used.lock().map(|t| t.elapsed()).unwrap_or_default();
        if unused < idle {
            return false;
        }
        let Ok(inner) = self.streams.inner.lock() else { return true };
        inner.by_request.values().all(|open| open.since.elapsed() >= self.stuck_after)
    }
}

/// One message on its way to an HTTP response; `last` ends a request's stream.
struct Frame {
    bytes: Bytes,
    last: bool,
}

/// Most messages queued for one response stream. A client that reads its stream slower than
/// messages arrive does not make the proxy buffer without end: past this, its stream is closed,
/// ending with an error that says why.
const STREAM_QUEUE: usize = 256;

/// The sending end of a response stream.
struct FrameTx {
    tx: mpsc::Sender<Frame>,
    /// What the stream ends with when it was closed for falling behind.
    overflow: Arc<Mutex<Option<Bytes>>>,
}

/// The receiving end: the queued frames, then the overflow error if there was one.
struct FrameRx {
    rx: mpsc::Receiver<Frame>,
    overflow: Arc<Mutex<Option<Bytes>>>,
}

fn frame_channel(capacity: usize) -> (FrameTx, FrameRx) {
    let (tx, rx) = mpsc::channel(capacity);
    let overflow = Arc::new(Mutex::new(None));
    (FrameTx { tx, overflow: overflow.clone() }, FrameRx { rx, overflow })
}

/// Why a frame was not queued.
enum Refused {
    /// The client is not keeping up: the stream must be closed.
    Full,
    /// The stream is gone.
    Closed,
}

impl FrameTx {
    fn push(&self, frame: Frame) -> Result<(), Refused> {
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refused::Full,
            mpsc::error::TrySendError::Closed(_) => Refused::Closed,
        })
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Closes the stream (once this sender is dropped) with `reply` as its last message.
    fn end_with(self, reply: Bytes) {
        warn!("a client read its response stream too slowly; the stream was closed");
        if let Ok(mut slot) = self.overflow.lock() {
            *slot = Some(reply);
        }
    }
}

impl FrameRx {
    async fn recv(&mut self) -> Option<Frame> {
        match self.rx.recv().await {
            Some(frame) => Some(frame),
            None => {
                let bytes = self.overflow.lock().ok().and_then(|mut o| o.take())?;
                Some(Frame { bytes, last: true })
            }
        }
    }
}

/// The error a request's stream ends with when the client fell behind.
fn overflow_reply(id: Option<Box<RawValue>>) -> Bytes {
    let text = format!(
        "the client read its response stream too slowly (more than {STREAM_QUEUE} messages queued); the stream was closed"
    );
    Bytes::from(Message::error(id, code::INTERNAL_ERROR, &text).to_bytes())
}

/// The response stream of one request in flight.
struct OpenRequest {
    tx: FrameTx,
    since: Instant,
}

/// Open response streams of one session; the session's [`Downstream`].
#[derive(Default)]
struct Streams {
    inner: Mutex<StreamsInner>,
}

#[derive(Default)]
struct StreamsInner {
    /// Request id (raw text, as the session sees it) -> its response stream.
    by_request: HashMap<String, OpenRequest>,
    /// Standalone GET streams, newest last.
    get_streams: Vec<FrameTx>,
    /// Shared sessions: our id -> the client's own id.
    original_ids: HashMap<String, Box<RawValue>>,
}

impl Downstream for Streams {
    fn send(&self, msg: &Message, route: Route<'_>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        match route {
            Route::Reply => {
                let Some(key) = msg.id_text().map(str::to_owned) else { return };
                let Some(OpenRequest { tx, .. }) = inner.by_request.remove(&key) else {
                    debug!(id = key, "response for a request whose stream is gone");
                    return;
                };
                let original = inner.original_ids.remove(&key);
                let client_id = original.clone().or_else(|| msg.id.clone());
                let bytes = match original {
                    Some(original) => {
                        let mut restored = Message { id: Some(original), ..Message::default() };
                        restored.result = msg.result.as_ref().map(|r| r.to_owned());
                        restored.error = msg.error.as_ref().map(|r| r.to_owned());
                        restored.extra = msg.extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                        restored.to_bytes()
                    }
                    None => msg.to_bytes(),
                };
                if let Err(Refused::Full) = tx.push(Frame { bytes: Bytes::from(bytes), last: true }) {
                    tx.end_with(overflow_reply(client_id));
                }
            }
            Route::Related(id) => {
                let bytes = match inner.original_ids.get(id) {
                    Some(original) => Bytes::from(with_subscription_id(msg, id, original)),
                    None => Bytes::from(msg.to_bytes()),
                };
                if let Some(OpenRequest { tx, .. }) = inner.by_request.get(id) {
                    match tx.push(Frame { bytes: bytes.clone(), last: false }) {
                        Ok(()) => return,
                        Err(Refused::Full) => {
                            let client_id =
                                inner.original_ids.remove(id).or_else(|| RawValue::from_string(id.to_owned()).ok());
                            if let Some(open) = inner.by_request.remove(id) {
                                open.tx.end_with(overflow_reply(client_id));
                            }
                            return;
                        }
                        Err(Refused::Closed) => {}
                    }
                }
                inner.send_unrelated(bytes);
            }
            Route::Unrelated => inner.send_unrelated(Bytes::from(msg.to_bytes())),
        }
    }
}

/// A notification of a `subscriptions/listen` stream names the stream by the request's id: in a
/// shared session that is the client's own id, not the one the session knew the request by.
fn with_subscription_id(msg: &Message, ours: &str, original: &RawValue) -> Vec<u8> {
    let tagged = msg.params.as_deref().and_then(|p| {
        let mut params = jsonrpc::parse_object(p).ok()?;
        let mut meta = jsonrpc::parse_object(jsonrpc::get(&params, "_meta")?).ok()?;
        (jsonrpc::get(&meta, crate::wire::era::SUBSCRIPTION_META)?.get() == ours).then_some(())?;
        jsonrpc::set(&mut meta, crate::wire::era::SUBSCRIPTION_META, original.to_owned());
        jsonrpc::set(&mut params, "_meta", jsonrpc::object_to_raw(&meta));
        Some(jsonrpc::object_to_raw(&params))
    });
    match tagged {
        Some(params) => {
            Message { method: msg.method.clone(), params: Some(params), id: msg.id.clone(), ..Message::default() }
                .to_bytes()
        }
        None => msg.to_bytes(),
    }
}

impl Streams {
    /// Adds a standalone GET stream. Only the newest receives messages, so it replaces the
    /// others, which end: a client opening stream after stream neither makes the session keep
    /// them all nor holds a connection per stream (and so cannot take every connection).
    fn open_get_stream(&self, tx: FrameTx) {
        if let Ok(mut inner) = self.inner.lock() {
            if !inner.get_streams.is_empty() {
                debug!("a newer GET stream replaces the session's older one");
            }
            inner.get_streams.clear();
            inner.get_streams.push(tx);
        }
    }

    fn in_flight(&self) -> usize {
        self.inner.lock().map(|i| i.by_request.len()).unwrap_or(0)
    }

    /// Ends every stream: requests still in flight are answered with an error.
    fn close(&self, why: &str) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let open: Vec<_> = inner.by_request.drain().collect();
        for (key, OpenRequest { tx, .. }) in open {
            let id = inner.original_ids.remove(&key).or_else(|| RawValue::from_string(key).ok());
            let reply = Message::error(id, code::INTERNAL_ERROR, why);
            if let Err(Refused::Full) = tx.push(Frame { bytes: Bytes::from(reply.to_bytes()), last: true }) {
                tx.end_with(Bytes::from(reply.to_bytes()));
            }
        }
        inner.get_streams.clear();
    }
}

impl StreamsInner {
    fn send_unrelated(&mut self, bytes: Bytes) {
        self.get_streams.retain(|tx| !tx.is_closed());
        let frame = Frame { bytes, last: false };
        if let Some(tx) = self.get_streams.last() {
            if let Err(Refused::Full) = tx.push(frame) {
                // A standalone stream that fell behind is closed; the client opens another.
                warn!("a client read its standalone stream too slowly; the stream was closed");
                self.get_streams.pop();
            }
            return;
        }
        // No standalone stream: any open request stream will do (if it has room).
        if let Some(OpenRequest { tx, .. }) = self.by_request.values().find(|open| !open.tx.is_closed()) {
            let _ = tx.push(frame);
            return;
        }
        debug!("message for the client dropped: no open stream");
    }
}

impl HttpState {
    /// The state of an endpoint whose `/readyz` checks nothing.
    pub fn new(opts: HttpOptions) -> Arc<HttpState> {
        HttpState::with_operations(opts, Operations::default())
    }

    pub fn with_operations(opts: HttpOptions, ops: Operations) -> Arc<HttpState> {
        let mut principals: Vec<Option<String>> = opts.agents.principals().map(|p| Some(p.name.clone())).collect();
        if !principals.is_empty() && opts.token.is_some() {
            principals.push(None);
        }
        Arc::new(HttpState {
            sessions: DashMap::new(),
            shared: tokio::sync::Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            slots: Arc::new(tokio::sync::Semaphore::new(opts.limits.max_sessions)),
            held: Held::default(),
            principals,
            opts,
            ops,
        })
    }

    fn session_options(&self, endpoint: &str) -> Option<&SessionOptions> {
        if endpoint.is_empty() { Some(&self.opts.all) } else { self.opts.single.get(endpoint) }
    }

    async fn new_session(
        &self,
        endpoint: &str,
        agent: Option<&str>,
        shared: bool,
    ) -> Result<(String, Arc<HttpSession>), Refusal> {
        let mut opts = self.session_options(endpoint).ok_or(Refusal::UnknownEndpoint)?.clone();
        let slot = match self.admit(agent) {
            Ok(place) => place,
            Err(_) => {
                // Sessions past their idle time may still hold places: close them first.
                self.reap().await;
                self.admit(agent).inspect_err(|_| {
                    warn!(limit = self.opts.limits.max_sessions, agent, "session refused: too many sessions");
                })?
            }
        };
        let stuck_after = opts.servers.iter().map(|s| s.request_timeout).max().unwrap_or_default();
        let id = random_id()?;
        opts.shared = shared;
        opts.agent = agent.map(str::to_owned);
        opts.label = if shared { format!("http-shared/{endpoint}") } else { format!("http/{}", &id[..8]) };
        let streams = Arc::new(Streams::default());
        let (handle, _task) = session::start(opts, streams.clone()).await?;
        let session = Arc::new(HttpSession {
            endpoint: endpoint.to_owned(),
            agent: agent.map(str::to_owned),
            handle,
            streams,
            last_used: Mutex::new(Instant::now()),
            stuck_after,
            _slot: slot,
            _counted: crate::metrics::session_open(shared),
        });
        if !shared {
            self.sessions.insert(id.clone(), session.clone());
            info!(session = &id[..8], endpoint, "session opened");
        }
        Ok((id, session))
    }

    /// Takes a place under `max_sessions` for `agent`. With `[[agents]]`, one place is kept for
    /// each other principal that holds none: an agent that already holds a session may not take
    /// those, so no agent can lock the others out by opening sessions up to the cap.
    fn admit(&self, agent: Option<&str>) -> Result<Place, Refusal> {
        let limit = self.opts.limits.max_sessions;
        let mut held = self.held.lock().map_err(|_| Refusal::Poisoned)?;
        let key = agent.map(str::to_owned);
        if held.contains_key(&key) {
            let kept = self.principals.iter().filter(|p| **p != key && !held.contains_key(*p)).count();
            if self.slots.available_permits() <= kept {
                return Err(Refusal::Reserved(limit));
            }
        }
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| Refusal::Full(limit))?;
        *held.entry(key.clone()).or_default() += 1;
        Ok(Place { _slot: slot, agent: key, held: self.held.clone() })
    }

    async fn shared_session(&self, endpoint: &str, agent: Option<&str>) -> Result<Arc<HttpSession>, Refusal> {
        let mut shared = self.shared.lock().await;
        let key = (endpoint.to_owned(), agent.map(str::to_owned));
        if let Some(s) = shared.get(&key)
            && !s.handle.is_closed()
        {
            return Ok(s.clone());
        }
        // A closed one gives its place back before a new one takes it.
        shared.remove(&key);
        drop(shared);
        let (_, s) = self.new_session(endpoint, agent, true).await?;
        let mut shared = self.shared.lock().await;
        if let Some(other) = shared.get(&key)
            && !other.handle.is_closed()
        {
            // Another request opened it meanwhile: use that one.
            return Ok(other.clone());
        }
        shared.insert(key, s.clone());
        Ok(s)
    }

    /// Who sends this request: `Ok(Some(agent))` for an agent token, `Ok(None)` for an
    /// anonymous client (allowed when no token is required), `Err` when it must be refused.
    fn caller(&self, headers: &HeaderMap) -> Result<Option<String>, ()> {
        // Hashing the token is skipped when no agents are configured (the common case).
        let presented = bearer_token(headers).filter(|_| !self.opts.agents.is_empty());
        if let Some(agent) = presented.and_then(|t| self.opts.agents.authenticate(t)) {
            return Ok(Some(agent.name.clone()));
        }
        match &self.opts.token {
            Some(token) if bearer_matches(headers, token) => Ok(None),
            Some(_) => Err(()),
            None if self.opts.agents.is_empty() => Ok(None),
            None => Err(()),
        }
    }

    fn all_sessions(&self) -> Vec<Arc<HttpSession>> {
        let mut all: Vec<_> = self.sessions.iter().map(|s| s.value().clone()).collect();
        if let Ok(shared) = self.shared.try_lock() {
            all.extend(shared.values().cloned());
        }
        all
    }

    /// Shutdown: waits up to [`DRAIN_WAIT`] for requests in flight (held calls answer at once
    /// when the approvals stop waiting), then ends every stream and session, which stops the
    /// upstreams.
    async fn drain_and_close(&self) {
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        loop {
            let in_flight: usize = self.all_sessions().iter().map(|s| s.streams.in_flight()).sum();
            if in_flight == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(in_flight, "stopping with requests still in flight; they are answered with an error");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for session in self.all_sessions() {
            session.streams.close("mcp-gate is shutting down");
        }
        self.sessions.clear();
        self.shared.lock().await.clear();
    }

    /// Closes idle, abandoned and stuck sessions (see [`HttpLimits::session_idle`]), the shared
    /// ones included; their upstreams stop.
    async fn reap(&self) {
        let idle = self.opts.limits.session_idle;
        let mut closed = Vec::new();
        self.sessions.retain(|id, s| {
            let keep = !s.reapable(idle);
            if !keep {
                info!(session = &id[..8], "idle session closed");
                closed.push(s.clone());
            }
            keep
        });
        self.shared.lock().await.retain(|(endpoint, _), s| {
            let keep = !s.reapable(idle);
            if !keep {
                info!(endpoint, "idle shared session closed");
                closed.push(s.clone());
            }
            keep
        });
        for s in closed {
            s.streams.close("the session was closed: idle, or its requests got no answer");
        }
    }
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

async fn post(
    state: Arc<HttpState>,
    endpoint: String,
    agent: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(content_type) = not_json(&headers) {
        return Refusal::NotJson(content_type).into_response();
    }
    // A body sent slowly holds its connection busy (busy connections are never evicted): it has
    // as long as the headers had.
    let body_time = state.opts.limits.listener.header_timeout;
    let bytes = match tokio::time::timeout(body_time, axum::body::to_bytes(body, MAX_MESSAGE_BYTES)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return Refusal::TooLarge.into_response(),
        Err(_) => return Refusal::SlowBody(body_time.as_secs()).into_response(),
    };
    let mut msg = match super::read(&bytes) {
        Ok(m) => m,
        Err(e) => {
            // A refused notification or response gets the error without an id.
            let reply = match state.session_options(&endpoint) {
                Some(opts) => super::refuse(&bytes, &e, opts, agent.or(opts.agent.as_deref())),
                None => None,
            };
            let reply = reply.unwrap_or_else(|| Message::error(None, e.code(), &e.to_string()));
            let body = reply.to_bytes();
            return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
    };
    let modern = is_modern(&headers);
    let mut param_headers = Vec::new();
    if modern {
        if let Err(e) = validate_modern_headers(&headers, &msg) {
            return Refusal::from(e).response(msg.id.take());
        }
        param_headers = headers
            .iter()
            .filter_map(|(k, v)| {
                let name = k.as_str().strip_prefix(PARAM_HEADER_PREFIX)?;
                Some((name.to_owned(), v.to_str().ok()?.to_owned()))
            })
            .collect();
    }

    let session_id = header_str(&headers, SESSION_HEADER).map(str::to_owned);
    let (session, new_id) = if modern && session_id.is_none() {
        match state.shared_session(&endpoint, agent).await {
            Ok(s) => (s, None),
            Err(e) => return e.response(msg.id.take()),
        }
    } else if let Some(id) = session_id {
        match state.sessions.get(&id).map(|s| s.clone()) {
            Some(s) if s.endpoint == endpoint && s.agent.as_deref() == agent && !s.handle.is_closed() => (s, None),
            _ => return Refusal::SessionNotFound.into_response(),
        }
    } else if msg.method() == "initialize" || msg.method() == "server/discover" {
        // `server/discover` from a client that has not negotiated yet is answered sessionless.
        if msg.method() == "server/discover" {
            match state.shared_session(&endpoint, agent).await {
                Ok(s) => (s, None),
                Err(e) => return e.response(msg.id.take()),
            }
        } else {
            match state.new_session(&endpoint, agent, false).await {
                Ok((id, s)) => (s, Some(id)),
                Err(e) => return e.response(msg.id.take()),
            }
        }
    } else {
        return Refusal::SessionRequired.into_response();
    };
    session.touch();
    let shared = new_id.is_none() && header_str(&headers, SESSION_HEADER).is_none();
    if shared && msg.method() == "notifications/cancelled" {
        // The requests of a shared session are known by ids of the proxy's own, which no client
        // chose: a cancellation naming one names another client's request. A 2026-07-28 client
        // cancels by closing its request's stream.
        debug!("cancellation in a shared session dropped");
        return StatusCode::ACCEPTED.into_response();
    }

    if msg.kind() != Kind::Request {
        if !session.handle.send(Input::Client { msg, param_headers }) {
            return Refusal::SessionNotFound.into_response();
        }
        return StatusCode::ACCEPTED.into_response();
    }

    // A request: open its response stream before the session can answer.
    let (tx, rx) = frame_channel(STREAM_QUEUE);
    let key = {
        let Ok(mut inner) = session.streams.inner.lock() else {
            return Refusal::Poisoned.into_response();
        };
        // Each request in flight keeps its connection busy, and busy connections are never
        // evicted: one session may not keep more than half of them.
        let cap = (state.opts.limits.listener.max_connections / 2).max(1);
        if inner.by_request.len() >= cap {
            warn!(cap, "request refused: too many requests in flight in its session");
            return Refusal::Busy(cap).into_response();
        }
        let key = if shared {
            // Clients of a shared session pick ids independently: give each request our own.
            let ours = jsonrpc::to_raw(&format!("mcp-gate-{}", state.next_id.fetch_add(1, Ordering::Relaxed)));
            let original = msg.id.replace(ours.clone());
            if let Some(original) = original {
                inner.original_ids.insert(ours.get().to_owned(), original);
            }
            ours.get().to_owned()
        } else {
            let key = msg.id_text().unwrap_or("null").to_owned();
            if inner.by_request.contains_key(&key) {
                // Its answer could not be told from the other's, and taking over that request's
                // stream would leave both unanswered: refused, the request in flight keeps it.
                warn!(id = key, "request refused: its id is in use by a request in flight");
                let text = format!("request id {key} is already in use by a request in flight");
                let reply = Message::error(msg.id.take(), code::INVALID_REQUEST, &text);
                return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], reply.to_bytes())
                    .into_response();
            }
            key
        };
        inner.by_request.insert(key.clone(), OpenRequest { tx, since: Instant::now() });
        key
    };
    if !session.handle.send(Input::Client { msg, param_headers }) {
        return Refusal::SessionNotFound.into_response();
    }
    let gone = Some(CancelOnDrop {
        handle: session.handle.clone(),
        streams: session.streams.clone(),
        key: key.clone(),
        cancel_upstream: modern,
    });
    let wants_sse = header_str(&headers, "accept").is_none_or(|a| a.contains("text/event-stream"));
    let rx = match &new_id {
        Some(id) => match first_answer(rx).await {
            Ok(rx) => rx,
            Err(rx) => {
                // A session whose `initialize` failed (or timed out) is not kept: its upstreams
                // stop now rather than when it would be reaped.
                if state.sessions.remove(id).is_some() {
                    info!(session = &id[..8], "session closed: initialize failed");
                }
                return if wants_sse { sse_response(rx, gone) } else { json_response(rx, gone).await };
            }
        },
        None => rx,
    };
    let mut resp = if wants_sse { sse_response(rx, gone) } else { json_response(rx, gone).await };
    if let Some(id) = new_id
        && let Ok(v) = HeaderValue::from_str(&id)
    {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

/// Waits for the answer to a request; `Err` when it is an error (or never comes). Either way
/// the returned receiver yields the same frames again.
async fn first_answer(mut rx: FrameRx) -> Result<FrameRx, FrameRx> {
    // Room for all the source could hold, and its last message.
    let (tx, replay) = frame_channel(STREAM_QUEUE + 1);
    let mut ok = false;
    while let Some(frame) = rx.recv().await {
        let last = frame.last;
        if last {
            ok = Message::parse(&frame.bytes).is_ok_and(|m| m.error.is_none() && m.result.is_some());
        }
        let _ = tx.push(frame);
        if last {
            break;
        }
    }
    if ok { Ok(replay) } else { Err(replay) }
}

/// Closing the response stream of a request before its answer abandons it if it is held, and
/// cancels it upstream if it is a 2026-07-28 request.
struct CancelOnDrop {
    handle: SessionHandle,
    streams: Arc<Streams>,
    key: String,
    cancel_upstream: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let open = self.streams.inner.lock().map(|mut i| {
            i.original_ids.remove(&self.key);
            i.by_request.remove(&self.key).is_some()
        });
        if open.unwrap_or(false) {
            self.handle.send(Input::ClientGone { id: self.key.clone(), cancel_upstream: self.cancel_upstream });
        }
    }
}

/// An SSE body: one `message` event per queued message; ends when the sender side closes.
/// With `until_reply`, it ends after the first response.
fn sse_response(rx: FrameRx, guard: Option<CancelOnDrop>) -> Response {
    let stream = futures::stream::unfold((rx, guard, false), move |(mut rx, guard, done)| async move {
        if done {
            return None;
        }
        let frame = rx.recv().await?;
        let mut event = Vec::with_capacity(frame.bytes.len() + 24);
        event.extend_from_slice(b"event: message\ndata: ");
        crate::wire::framing::push_unsplittable(&mut event, &frame.bytes);
        event.extend_from_slice(b"\n\n");
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(event)), (rx, guard, frame.last)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn json_response(mut rx: FrameRx, guard: Option<CancelOnDrop>) -> Response {
    while let Some(frame) = rx.recv().await {
        if frame.last {
            drop(guard);
            return ([(header::CONTENT_TYPE, "application/json")], frame.bytes).into_response();
        }
    }
    Refusal::Ended.into_response()
}

async fn get(state: Arc<HttpState>, endpoint: String, agent: Option<&str>, headers: HeaderMap) -> Response {
    if is_modern(&headers) {
        let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    if !header_str(&headers, "accept").is_some_and(|a| a.contains("text/event-stream")) {
        return Refusal::NotAcceptable.into_response();
    }
    let Some(id) = header_str(&headers, SESSION_HEADER) else {
        return Refusal::SessionRequired.into_response();
    };
    let Some(session) =
        state.sessions.get(id).map(|s| s.clone()).filter(|s| s.endpoint == endpoint && s.agent.as_deref() == agent)
    else {
        return Refusal::SessionNotFound.into_response();
    };
    session.touch();
    let (tx, rx) = frame_channel(STREAM_QUEUE);
    session.streams.open_get_stream(tx);
    sse_response(rx, None)
}

fn delete(state: Arc<HttpState>, endpoint: &str, agent: Option<&str>, headers: HeaderMap) -> Response {
    let Some(id) = header_str(&headers, SESSION_HEADER) else {
        return Refusal::SessionRequired.into_response();
    };
    match state.sessions.remove_if(id, |_, s| s.endpoint == endpoint && s.agent.as_deref() == agent) {
        Some((_, session)) => {
            info!(session = &id[..id.len().min(8)], "session closed by the client");
            // Its requests end with it, whether their streams are still open or not: a held call
            // stops waiting and never runs, a call in flight is cancelled upstream.
            let open: Vec<String> = session
                .streams
                .inner
                .lock()
                .map(|inner| inner.by_request.keys().cloned().collect())
                .unwrap_or_default();
            for key in open {
                session.handle.send(Input::ClientGone { id: key, cancel_upstream: true });
            }
            session.streams.close("the session was deleted by the client");
            StatusCode::OK.into_response()
        }
        None => Refusal::SessionNotFound.into_response(),
    }
}

/// Checks `Mcp-Method` and `Mcp-Name` against the body (2026-07-28).
fn validate_modern_headers(headers: &HeaderMap, msg: &Message) -> Result<(), HeaderMismatch> {
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

    #[test]
    fn modern_headers_must_match_body() {
        let msg =
            Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"h\u00e9"}}"#).unwrap();
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
        let named =
            Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#).unwrap();
        let unnamed = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#).unwrap();
        let h = headers(&[("mcp-method", "tools/call"), ("mcp-name", "get")]);
        let text = validate_modern_headers(&h, &named).unwrap_err().to_string();
        assert_eq!(text, r#"Header mismatch: Mcp-Name "get" but the body says "echo""#);
        let text = validate_modern_headers(&h, &unnamed).unwrap_err().to_string();
        assert_eq!(text, r#"Header mismatch: Mcp-Name "get" but the body names none"#);
    }

    #[test]
    fn a_misplaced_padding_leaves_the_header_as_written() {
        // A misplaced `=` leaves the header as written, which then does not match the body.
        let msg =
            Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"h\u00e9"}}"#).unwrap();
        let misplaced = headers(&[("mcp-method", "tools/call"), ("mcp-name", "=?base64?aM=Op?=")]);
        assert!(validate_modern_headers(&misplaced, &msg).is_err());
    }
}
