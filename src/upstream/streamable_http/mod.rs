//! Streamable HTTP client transport (MCP 2025-03-26 .. 2025-11-25 sessions and 2026-07-28
//! stateless requests).
//!
//! Every outgoing message is POSTed to the server URL in its own task, so several requests can
//! be in flight at once. The only ordering kept is the handshake: after an `initialize` POST
//! nothing else is sent until its response arrived (its `Mcp-Session-Id` header and the result's
//! `protocolVersion` are needed by what follows), and after `notifications/initialized` nothing
//! else is sent until that POST returned (servers reject requests that overtake it) and then, in a
//! session with an `Mcp-Session-Id`, until the standalone GET stream opened or was refused (at
//! most `GET_OPEN_WAIT`, 2 s): a server sends its requests unrelated to a client request there, and
//! one sent before that stream is open is lost. The same holds when an expired session is
//! re-initialized: requests wait until the replayed handshake and its GET stream are done.
//! 2026-07-28 requests are stateless and wait for nothing.
//!
//! Messages arriving on a POST's response (JSON or SSE) are reported with `related` set to the
//! request's proxy id; messages on the standalone GET stream with `related = None`. A failed POST
//! is turned into a JSON-RPC error response for its request and never closes the transport; the
//! transport only stops when its [`UpstreamLink`] is dropped or the session goes away (it then
//! ends the upstream session with `DELETE`, best effort), so it never reports `closed` itself.
//!
//! The rooms: this file holds the transport's shared state, its run loop and the dispatch of each
//! message; `post` one POST and its answer (JSON, or SSE resumed with `Last-Event-ID`), and the
//! replay of the handshake when the upstream session expired; `get_stream` the standalone GET
//! stream and its reconnection.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::http::{describe, prepare};
use super::{ConnectError, Outgoing, Reporter, UpstreamLink};
use crate::wire::jsonrpc::{self, Kind, Message, ParseError, code};
use crate::wire::sse::SseEvent;
use post::post_task;

mod get_stream;
mod post;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

/// Time allowed for the closing `DELETE`.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a handshake POST before later messages are sent anyway.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);
/// Longest wait, once the handshake is done, for the standalone GET stream to open (or be
/// refused) before later messages are sent anyway. A server may send a request unrelated to any
/// client request (e.g. `elicitation/create`) as soon as it gets a `tools/call`; it puts that on
/// the GET stream, and while that stream is not open it drops the message or only stores it for
/// a resumption that a fresh GET never asks for.
const GET_OPEN_WAIT: Duration = Duration::from_secs(2);
/// First delay before reconnecting the GET stream, doubled on each failure.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest delay between GET stream reconnections.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Resumption attempts in a row that may bring nothing new before a request is given up.
const RESUME_ATTEMPTS: u32 = 3;
/// How much of an error body is read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// How often the run loop checks whether the session is gone.
const CLOSED_POLL: Duration = Duration::from_millis(500);

use crate::wire::headers::{
    LAST_EVENT_ID, METHOD as METHOD_HEADER, NAME as NAME_HEADER, PARAM_PREFIX as PARAM_HEADER_PREFIX,
    PROTOCOL_VERSION as PROTOCOL_HEADER, SESSION as SESSION_HEADER,
};
const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const EVENT_STREAM: &str = "text/event-stream";

/// Starts a Streamable HTTP transport for `url`. Does not touch the network: the first message
/// sent opens the first connection, so a server that is down does not stop start-up.
pub async fn connect(
    server: &str,
    url: &str,
    headers: &[(String, String)],
    reporter: Reporter,
) -> Result<UpstreamLink, ConnectError> {
    connect_with(server, url, headers, reporter, GET_OPEN_WAIT).await
}

/// [`connect`] with the longest wait for the GET stream to open given.
async fn connect_with(
    server: &str,
    url: &str,
    headers: &[(String, String)],
    reporter: Reporter,
    get_open_wait: Duration,
) -> Result<UpstreamLink, ConnectError> {
    let (parsed, headers, client) = prepare(server, url, headers)?;

    let shared = Arc::new(Shared {
        server: server.to_owned(),
        url: parsed,
        client,
        headers,
        reporter,
        shutdown: CancellationToken::new(),
        state: Mutex::new(State::default()),
        reinit_lock: tokio::sync::Mutex::new(()),
        replays: AtomicU64::new(0),
        get_open_wait,
    });
    let (tx, rx) = UpstreamLink::channel();
    tracing::info!(server = %shared.server, url = %shared.url, "streamable HTTP upstream ready");
    let (link, running) = UpstreamLink::new(tx);
    tokio::spawn(async move {
        run(shared, rx).await;
        drop(running);
    });
    Ok(link)
}

/// Parses a JSON body: one message, or an array of them (2025-03-26 batches).
fn parse_body(body: &[u8]) -> Result<Vec<Message>, BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<Box<RawValue>> = serde_json::from_slice(body)?;
        Ok(items.iter().map(|item| Message::parse(item.get().as_bytes())).collect::<Result<_, _>>()?)
    } else {
        Ok(vec![Message::parse(body)?])
    }
}

/// Why a JSON response body was not read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// A batch that is not a JSON array.
    #[error(transparent)]
    Batch(#[from] serde_json::Error),
    /// A message that is not one.
    #[error(transparent)]
    Message(#[from] ParseError),
}

/// What the transport shares between its tasks.
struct Shared {
    server: String,
    url: reqwest::Url,
    client: reqwest::Client,
    /// The configured headers, sent on every request.
    headers: HeaderMap,
    reporter: Reporter,
    /// Cancelled when the transport stops; every task ends with it.
    shutdown: CancellationToken,
    state: Mutex<State>,
    /// Held while the upstream session is re-initialized, so it happens once and later requests
    /// wait for it.
    reinit_lock: tokio::sync::Mutex<()>,
    /// Counts replayed initializes; their ids are `u64::MAX - n`.
    replays: AtomicU64,
    /// Longest wait for the GET stream to open after a handshake ([`GET_OPEN_WAIT`]).
    get_open_wait: Duration,
}

#[derive(Default)]
struct State {
    /// The `Mcp-Session-Id` the server issued on the last initialize.
    session_id: Option<String>,
    /// The `protocolVersion` of the last initialize result.
    protocol_version: Option<String>,
    /// The last `initialize` request as sent, replayed when the session expires.
    initialize: Option<Bytes>,
    /// The `notifications/initialized` that followed it.
    initialized: Option<Bytes>,
    /// The standalone GET stream task.
    get_stream: Option<AbortHandle>,
    /// Requests whose POST is running, by proxy id.
    in_flight: HashMap<u64, InFlight>,
}

struct InFlight {
    abort: AbortHandle,
    /// Sent as a 2026-07-28 request: closing its stream cancels it.
    modern: bool,
}

/// The handshake step a POST is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Initialize,
    Initialized,
    Other,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `fut` as a task that ends when the transport stops.
    fn spawn<F>(&self, fut: F) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = fut => {}
            }
        })
        .abort_handle()
    }

    fn session_id(&self) -> Option<String> {
        self.state().session_id.clone()
    }

    /// Headers common to every request: the configured ones, then the session's.
    fn base_headers(&self, session: Option<&str>, version: Option<&str>) -> HeaderMap {
        let mut headers = self.headers.clone();
        if let Some(session) = session {
            self.put(&mut headers, SESSION_HEADER, session);
        }
        if let Some(version) = version {
            self.put(&mut headers, PROTOCOL_HEADER, version);
        }
        headers
    }

    /// Sets a header, skipping (and logging) names or values HTTP cannot carry.
    fn put(&self, headers: &mut HeaderMap, name: &str, value: &str) {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            (Ok(name), Ok(value)) => {
                headers.insert(name, value);
            }
            _ => tracing::warn!(server = %self.server, header = name, "header cannot be sent over HTTP, dropped"),
        }
    }

    /// The session id and protocol version a message is sent with.
    fn session_for(&self, out: &Outgoing, step: Step) -> (Option<String>, Option<String>) {
        if step == Step::Initialize {
            return (None, None);
        }
        if let Some(version) = &out.protocol_version {
            return (None, Some(version.clone()));
        }
        let state = self.state();
        (state.session_id.clone(), state.protocol_version.clone())
    }

    fn post_request(&self, out: &Outgoing, session: Option<&str>, version: Option<&str>) -> reqwest::RequestBuilder {
        let mut headers = self.base_headers(session, version);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_BOTH));
        if out.protocol_version.is_some() {
            if let Some(method) = &out.method {
                self.put(&mut headers, METHOD_HEADER, method);
            }
            if let Some(name) = &out.name {
                self.put(&mut headers, NAME_HEADER, &crate::wire::headers::encode_value(name));
            }
            for (name, value) in &out.param_headers {
                self.put(&mut headers, &format!("{PARAM_HEADER_PREFIX}{name}"), value);
            }
        }
        self.client.post(self.url.clone()).headers(headers).body(out.bytes.clone())
    }

    fn get_request(&self, session: &str, last_event_id: Option<&str>) -> reqwest::RequestBuilder {
        let version = self.state().protocol_version.clone();
        let mut headers = self.base_headers(Some(session), version.as_deref());
        headers.insert(ACCEPT, HeaderValue::from_static(EVENT_STREAM));
        if let Some(id) = last_event_id {
            self.put(&mut headers, LAST_EVENT_ID, id);
        }
        self.client.get(self.url.clone()).headers(headers)
    }

    /// Reports a JSON-RPC error for a request that cannot be answered, or logs for the rest.
    fn fail(&self, ctx: &mut Ctx, what: &str) {
        match ctx.request_id {
            Some(id) if ctx.report => {
                tracing::warn!(server = %self.server, request = id, "{what}");
                let text = format!("upstream {}: {what}", self.server);
                self.reporter
                    .message(Message::error(Some(jsonrpc::number_id(id)), code::UPSTREAM_ERROR, &text), Some(id));
            }
            _ if ctx.report => tracing::warn!(server = %self.server, method = ?ctx.method, "{what}"),
            _ => {}
        }
        if ctx.failure.is_none() {
            ctx.failure = Some(what.to_owned());
        }
    }

    /// Hands one received message on, noting whether it answers the POST's request.
    fn deliver(&self, ctx: &mut Ctx, msg: Message) {
        let answers = msg.kind() == Kind::Response
            && ctx.request_id.is_some_and(|id| msg.id_text() == Some(id.to_string().as_str()));
        if answers {
            ctx.got_response = true;
            if ctx.step == Step::Initialize {
                if let Some(result) = &msg.result {
                    let version = jsonrpc::string_field(result, "protocolVersion");
                    tracing::debug!(server = %self.server, version = ?version, "initialized");
                    self.state().protocol_version = version;
                } else {
                    ctx.failure = Some(format!("initialize failed: {}", msg.error.as_ref().map_or("", |e| e.get())));
                }
                ctx.signal_ready();
            }
        }
        if ctx.report {
            self.reporter.message(msg, ctx.request_id);
        } else {
            tracing::debug!(server = %self.server, "swallowed {msg}");
        }
    }

    /// Handles an SSE event from a response stream; returns whether it carried a message.
    fn deliver_event(&self, ctx: &mut Ctx, event: SseEvent) -> bool {
        if event.data.trim().is_empty() {
            return false;
        }
        match Message::parse(event.data.as_bytes()) {
            Ok(msg) => {
                self.deliver(ctx, msg);
                true
            }
            Err(e) => {
                tracing::warn!(server = %self.server, "invalid message on the event stream ({e}), skipped");
                false
            }
        }
    }
}

/// What a POST's handling needs to know and learns.
struct Ctx {
    request_id: Option<u64>,
    method: Option<String>,
    step: Step,
    /// Report received messages (false for a replayed initialize, whose answer is swallowed).
    report: bool,
    /// Signalled once the handshake step is done and later messages may go.
    ready: Option<oneshot::Sender<()>>,
    got_response: bool,
    failure: Option<String>,
}

impl Ctx {
    fn new(out: &Outgoing, step: Step, report: bool, ready: Option<oneshot::Sender<()>>) -> Ctx {
        Ctx {
            request_id: out.request_id,
            method: out.method.clone(),
            step,
            report,
            ready,
            got_response: false,
            failure: None,
        }
    }

    fn signal_ready(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }
}

/// The transport's main loop: takes messages off the link until it is dropped.
async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Outgoing>) {
    let mut poll = tokio::time::interval(CLOSED_POLL);
    'main: loop {
        let out = tokio::select! {
            out = rx.recv() => match out {
                Some(out) => out,
                None => break,
            },
            _ = poll.tick() => {
                if shared.reporter.is_closed() {
                    break;
                }
                continue;
            }
        };
        if let Some(mut ready) = dispatch(&shared, out) {
            let deadline = tokio::time::sleep(HANDSHAKE_WAIT);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut ready => break,
                    _ = &mut deadline => {
                        tracing::warn!(server = %shared.server, "handshake POST still pending after {HANDSHAKE_WAIT:?}, sending on");
                        break;
                    }
                    _ = poll.tick() => {
                        if shared.reporter.is_closed() {
                            break 'main;
                        }
                    }
                }
            }
        }
    }
    stop(&shared).await;
}

/// Ends every task and the upstream session.
async fn stop(shared: &Arc<Shared>) {
    shared.shutdown.cancel();
    let (session, version) = {
        let mut state = shared.state();
        state.in_flight.clear();
        state.get_stream = None;
        (state.session_id.take(), state.protocol_version.clone())
    };
    if let Some(session) = session {
        delete_session(shared, &session, version.as_deref()).await;
    }
    tracing::debug!(server = %shared.server, "streamable HTTP transport stopped");
}

/// Ends an upstream session with `DELETE` (best effort: servers may answer 405).
async fn delete_session(shared: &Shared, session: &str, version: Option<&str>) {
    let headers = shared.base_headers(Some(session), version);
    let result = shared.client.delete(shared.url.clone()).headers(headers).timeout(DELETE_TIMEOUT).send().await;
    match result {
        Ok(resp) => tracing::debug!(server = %shared.server, status = %resp.status(), "session ended"),
        Err(e) => tracing::debug!(server = %shared.server, "DELETE failed: {}", describe(&e)),
    }
}

/// Starts the POST of one message; returns a receiver to wait on for handshake steps.
fn dispatch(shared: &Arc<Shared>, out: Outgoing) -> Option<oneshot::Receiver<()>> {
    let step = match out.method.as_deref() {
        Some("initialize") => Step::Initialize,
        Some("notifications/initialized") => Step::Initialized,
        Some("notifications/cancelled") => {
            if cancel_modern_request(shared, &out) {
                return None;
            }
            Step::Other
        }
        _ => Step::Other,
    };
    match step {
        Step::Initialize => {
            let (old_session, old_version) = {
                let mut state = shared.state();
                state.initialize = Some(out.bytes.clone());
                state.initialized = None;
                if let Some(get) = state.get_stream.take() {
                    get.abort();
                }
                (state.session_id.take(), state.protocol_version.take())
            };
            if let Some(session) = old_session {
                // The client starts over: end the session it leaves behind.
                let task_shared = Arc::clone(shared);
                shared.spawn(async move { delete_session(&task_shared, &session, old_version.as_deref()).await });
            }
        }
        Step::Initialized => shared.state().initialized = Some(out.bytes.clone()),
        Step::Other => {}
    }
    let (ready_tx, ready_rx) = match step {
        Step::Other => (None, None),
        _ => {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        }
    };
    let request_id = out.request_id;
    let modern = out.protocol_version.is_some();
    let task_shared = Arc::clone(shared);
    let mut state = shared.state();
    let abort = shared.spawn(async move {
        let _guard = request_id.map(|id| InFlightGuard { shared: Arc::clone(&task_shared), id });
        post_task(task_shared, out, step, ready_tx).await;
    });
    if let Some(id) = request_id {
        state.in_flight.insert(id, InFlight { abort, modern });
    }
    ready_rx
}

/// Removes a request from the in-flight table when its task ends (or is aborted).
struct InFlightGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.shared.state().in_flight.remove(&self.id);
    }
}

/// A 2026-07-28 request is cancelled by closing its response stream, not by a notification:
/// when `out` cancels such a request that is still running, abort its POST and send nothing.
fn cancel_modern_request(shared: &Arc<Shared>, out: &Outgoing) -> bool {
    let Ok(msg) = Message::parse(&out.bytes) else {
        return false;
    };
    let Some(params) = msg.params.as_deref() else {
        return false;
    };
    let Ok(obj) = jsonrpc::parse_object(params) else {
        return false;
    };
    let Some(id) = jsonrpc::get(&obj, "requestId").and_then(|raw| serde_json::from_str::<u64>(raw.get()).ok()) else {
        return false;
    };
    let entry = {
        let mut state = shared.state();
        match state.in_flight.get(&id) {
            Some(entry) if entry.modern => state.in_flight.remove(&id),
            _ => None,
        }
    };
    match entry {
        Some(entry) => {
            tracing::debug!(server = %shared.server, request = id, "cancelled: closing the response stream");
            entry.abort.abort();
            true
        }
        None => false,
    }
}
