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

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Response, StatusCode};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::http::{
    describe, excerpt, http_failure, media_type, prepare, read_body, read_body_prefix, recorrelated_error,
};
use super::{ConnectError, Outgoing, Reporter, UpstreamLink};
use crate::wire::MAX_MESSAGE_BYTES;
use crate::wire::jsonrpc::{self, Kind, Message, ParseError, code};
use crate::wire::sse::{SseEvent, SseParser};

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

/// POSTs one message and handles its response; re-initializes once on an expired session.
async fn post_task(shared: Arc<Shared>, out: Outgoing, step: Step, ready: Option<oneshot::Sender<()>>) {
    let mut ctx = Ctx::new(&out, step, true, ready);
    if step == Step::Other && out.protocol_version.is_none() {
        // A re-initialization under way: wait until the new session and its GET stream are set.
        drop(shared.reinit_lock.lock().await);
    }
    let mut may_reinit = true;
    loop {
        let (session, version) = shared.session_for(&out, step);
        let request = shared.post_request(&out, session.as_deref(), version.as_deref());
        let resp = match request.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let what = format!("cannot reach {}: {}", shared.url, describe(&e));
                shared.fail(&mut ctx, &what);
                break;
            }
        };
        if resp.status() == StatusCode::NOT_FOUND && may_reinit {
            if let Some(expired) = session {
                drop(resp);
                tracing::info!(server = %shared.server, "upstream session expired (HTTP 404), re-initializing");
                match reinitialize(&shared, &expired).await {
                    // The replay sent `notifications/initialized` itself.
                    Ok(()) if step == Step::Initialized => break,
                    Ok(()) => {
                        may_reinit = false;
                        continue;
                    }
                    Err(e) => {
                        let what = format!("session expired and re-initializing failed: {e}");
                        shared.fail(&mut ctx, &what);
                        break;
                    }
                }
            }
        }
        handle_response(&shared, &mut ctx, resp, session.as_deref()).await;
        break;
    }
    ctx.signal_ready();
}

/// Handles the response to a POST: records the session, reports what it carries.
async fn handle_response(shared: &Arc<Shared>, ctx: &mut Ctx, mut resp: Response, session: Option<&str>) {
    let status = resp.status();
    if !status.is_success() {
        let body = read_body_prefix(&mut resp, ERROR_BODY_LIMIT).await;
        if let Some(id) = ctx.request_id {
            if let Some(msg) = recorrelated_error(&body, id) {
                tracing::debug!(server = %shared.server, request = id, status = %status, "error response");
                if ctx.step == Step::Initialize {
                    ctx.failure = Some(format!("initialize failed: HTTP {status}"));
                }
                if ctx.report {
                    shared.reporter.message(msg, Some(id));
                }
                return;
            }
        }
        shared.fail(ctx, &http_failure(status, &body));
        return;
    }
    if ctx.step == Step::Initialize {
        let issued = resp.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        tracing::debug!(server = %shared.server, session = ?issued, "initialize answered");
        shared.state().session_id = issued;
    }
    if ctx.step == Step::Initialized {
        // The handshake is complete: open the standalone stream, then let later messages go.
        open_get_stream(shared).await;
        ctx.signal_ready();
    }
    if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
        return;
    }
    let media = media_type(&resp);
    if media == EVENT_STREAM {
        read_post_stream(shared, ctx, resp, session).await;
        return;
    }
    let body = match read_body(&mut resp, MAX_MESSAGE_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            shared.fail(ctx, &format!("cannot read the response: {e}"));
            return;
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        if ctx.request_id.is_some() {
            tracing::debug!(server = %shared.server, status = %status, "empty response to a request");
        }
        return;
    }
    match parse_body(&body) {
        Ok(messages) => {
            for msg in messages {
                shared.deliver(ctx, msg);
            }
        }
        Err(e) => {
            let what = format!("invalid response ({media}): {e}: {}", excerpt(&body, 200));
            shared.fail(ctx, &what);
        }
    }
}

/// Reads a POST's SSE response as it arrives, resuming it with GET + `Last-Event-ID` when it
/// ends early in a session that supports that.
async fn read_post_stream(shared: &Arc<Shared>, ctx: &mut Ctx, mut resp: Response, session: Option<&str>) {
    let mut parser = SseParser::new();
    let mut retry = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                for event in parser.feed(&chunk) {
                    retry = event.retry.or(retry);
                    shared.deliver_event(ctx, event);
                    if ctx.got_response {
                        // The server closes the stream after the response; do not wait for it.
                        return;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(server = %shared.server, "response stream broke: {}", describe(&e));
                break;
            }
        }
    }
    drop(resp);
    if ctx.request_id.is_none() {
        return;
    }
    if parser.dropped_events() > 0 {
        // The answer was most likely the event over the limit: say so rather than wait for it.
        let what = format!("its answer was over the {MAX_MESSAGE_BYTES}-byte limit and was dropped");
        shared.fail(ctx, &what);
        return;
    }
    if let (Some(session), Some(last_id)) = (session, parser.last_event_id()) {
        let last_id = last_id.to_owned();
        if resume(shared, ctx, session, last_id, retry).await {
            return;
        }
    }
    shared.fail(ctx, "response stream ended before the response");
}

/// Resumes a request's response stream with GET + `Last-Event-ID` until the response arrives;
/// returns false when that cannot be done.
async fn resume(shared: &Arc<Shared>, ctx: &mut Ctx, session: &str, mut last_id: String, retry: Option<u64>) -> bool {
    let mut delay = retry.map_or(BACKOFF_START, Duration::from_millis).min(BACKOFF_MAX);
    let mut idle = 0;
    while idle < RESUME_ATTEMPTS {
        tokio::time::sleep(delay).await;
        tracing::debug!(server = %shared.server, request = ?ctx.request_id, last_event_id = %last_id, "resuming the response stream");
        let mut resp = match shared.get_request(session, Some(&last_id)).send().await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(server = %shared.server, "resumption failed: {}", describe(&e));
                return false;
            }
        };
        if !resp.status().is_success() || media_type(&resp) != EVENT_STREAM {
            tracing::debug!(server = %shared.server, status = %resp.status(), "resumption refused");
            return false;
        }
        let mut parser = SseParser::new();
        let mut progressed = false;
        let mut next_retry = None;
        while let Ok(Some(chunk)) = resp.chunk().await {
            for event in parser.feed(&chunk) {
                next_retry = event.retry.or(next_retry);
                progressed |= event.id.is_some() || !event.data.trim().is_empty();
                shared.deliver_event(ctx, event);
                if ctx.got_response {
                    return true;
                }
            }
        }
        if let Some(id) = parser.last_event_id() {
            last_id = id.to_owned();
        }
        if progressed {
            idle = 0;
        } else {
            idle += 1;
        }
        delay = next_retry.map_or(BACKOFF_START, Duration::from_millis).min(BACKOFF_MAX);
    }
    false
}

/// Replays the saved handshake after the upstream session expired: the initialize request (with
/// an id of the transport's own; its response is swallowed) and `notifications/initialized`.
/// Why an expired upstream session could not be started again.
#[derive(Debug, thiserror::Error)]
enum ReinitError {
    #[error("no initialize request to replay")]
    NothingToReplay,
    #[error("saved initialize is invalid: {0}")]
    Saved(#[from] jsonrpc::ParseError),
    #[error("cannot reach {url}: {}", super::http::describe(.cause))]
    Unreachable { url: reqwest::Url, cause: reqwest::Error },
    /// What the replayed initialize got back, as reported to its callers.
    #[error("{0}")]
    Failed(String),
    #[error("no response to the replayed initialize")]
    NoResponse,
    #[error("notifications/initialized: HTTP {0}")]
    Initialized(StatusCode),
}

async fn reinitialize(shared: &Arc<Shared>, expired: &str) -> Result<(), ReinitError> {
    let _lock = shared.reinit_lock.lock().await;
    let (initialize, initialized) = {
        let state = shared.state();
        if state.session_id.as_deref() != Some(expired) {
            // Another request already re-initialized (or the client started over).
            return Ok(());
        }
        (state.initialize.clone(), state.initialized.clone())
    };
    let initialize = initialize.ok_or(ReinitError::NothingToReplay)?;
    let n = shared.replays.fetch_add(1, Ordering::Relaxed);
    let id = u64::MAX - n;
    let mut msg = Message::parse(&initialize)?;
    msg.id = Some(jsonrpc::number_id(id));
    let mut out = Outgoing::plain(Bytes::from(msg.to_bytes()));
    out.method = Some("initialize".to_owned());
    out.request_id = Some(id);

    let mut ctx = Ctx::new(&out, Step::Initialize, false, None);
    let resp = shared
        .post_request(&out, None, None)
        .send()
        .await
        .map_err(|cause| ReinitError::Unreachable { url: shared.url.clone(), cause })?;
    handle_response(shared, &mut ctx, resp, None).await;
    if let Some(failure) = ctx.failure {
        return Err(ReinitError::Failed(failure));
    }
    if !ctx.got_response {
        return Err(ReinitError::NoResponse);
    }
    let (session, version) = {
        let state = shared.state();
        (state.session_id.clone(), state.protocol_version.clone())
    };
    tracing::info!(server = %shared.server, session = ?session, "upstream session re-initialized");
    if let Some(initialized) = initialized {
        let mut out = Outgoing::plain(initialized);
        out.method = Some("notifications/initialized".to_owned());
        let resp = shared
            .post_request(&out, session.as_deref(), version.as_deref())
            .send()
            .await
            .map_err(|cause| ReinitError::Unreachable { url: shared.url.clone(), cause })?;
        if !resp.status().is_success() {
            return Err(ReinitError::Initialized(resp.status()));
        }
        open_get_stream(shared).await;
    }
    Ok(())
}

/// Opens the standalone GET stream of the current session (replacing any older one) and waits
/// until its first response arrived, whether the stream opened or was refused, or the connection
/// failed; at most `get_open_wait`, then goes on with a warning.
async fn open_get_stream(shared: &Arc<Shared>) {
    let Some(answered) = start_get_stream(shared) else {
        return;
    };
    if tokio::time::timeout(shared.get_open_wait, answered).await.is_err() {
        tracing::warn!(
            server = %shared.server,
            "the GET stream has not answered after {:?}, sending on; server messages sent before it opens may be lost",
            shared.get_open_wait
        );
    }
}

/// Starts the standalone GET stream task of the current session (replacing any older one);
/// returns a receiver that completes once the first GET got its response (or failed), or `None`
/// when there is no session to open a stream for.
fn start_get_stream(shared: &Arc<Shared>) -> Option<oneshot::Receiver<()>> {
    let session = shared.session_id()?;
    let (answered_tx, answered_rx) = oneshot::channel();
    let task = shared.spawn(get_stream(Arc::clone(shared), session, answered_tx));
    if let Some(old) = shared.state().get_stream.replace(task) {
        old.abort();
    }
    Some(answered_rx)
}

/// The standalone GET stream: server messages unrelated to a request, reported with
/// `related = None`. Reconnects with backoff and `Last-Event-ID` while the session lasts.
/// `answered` is signalled once the first GET has its response headers (or failed).
async fn get_stream(shared: Arc<Shared>, session: String, answered: oneshot::Sender<()>) {
    let mut answered = Some(answered);
    let mut backoff = BACKOFF_START;
    let mut last_id: Option<String> = None;
    loop {
        if shared.session_id().as_deref() != Some(session.as_str()) {
            return;
        }
        let mut retry = None;
        let result = shared.get_request(&session, last_id.as_deref()).send().await;
        if let Some(answered) = answered.take() {
            let _ = answered.send(());
        }
        match result {
            Err(e) => tracing::debug!(server = %shared.server, "GET stream: {}", describe(&e)),
            Ok(mut resp) => {
                let status = resp.status();
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    tracing::debug!(server = %shared.server, "the server offers no GET stream");
                    return;
                }
                // 409: the server still holds the stream that broke (it has not noticed yet).
                if status == StatusCode::NOT_FOUND
                    || (status.is_client_error()
                        && status != StatusCode::REQUEST_TIMEOUT
                        && status != StatusCode::CONFLICT
                        && status != StatusCode::TOO_MANY_REQUESTS)
                {
                    tracing::info!(server = %shared.server, status = %status, "GET stream refused, not retried");
                    return;
                }
                if status.is_success() && media_type(&resp) != EVENT_STREAM {
                    tracing::info!(server = %shared.server, "GET stream is not an event stream, not retried");
                    return;
                }
                if status.is_success() {
                    tracing::debug!(server = %shared.server, "GET stream open");
                    let mut parser = SseParser::new();
                    let mut delivered = false;
                    loop {
                        match resp.chunk().await {
                            Ok(Some(chunk)) => {
                                for event in parser.feed(&chunk) {
                                    retry = event.retry.or(retry);
                                    delivered = true;
                                    deliver_unrelated(&shared, event);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!(server = %shared.server, "GET stream broke: {}", describe(&e));
                                break;
                            }
                        }
                    }
                    if let Some(id) = parser.last_event_id() {
                        last_id = Some(id.to_owned());
                    }
                    if delivered {
                        backoff = BACKOFF_START;
                    }
                    tracing::debug!(server = %shared.server, "GET stream ended");
                } else {
                    tracing::debug!(server = %shared.server, status = %status, "GET stream failed");
                }
            }
        }
        let delay = retry.map_or(backoff, Duration::from_millis).min(BACKOFF_MAX);
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn deliver_unrelated(shared: &Shared, event: SseEvent) {
    if event.data.trim().is_empty() {
        return;
    }
    match Message::parse(event.data.as_bytes()) {
        Ok(msg) => shared.reporter.message(msg, None),
        Err(e) => tracing::warn!(server = %shared.server, "invalid message on the GET stream ({e}), skipped"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicBool;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::State as AxState;
    use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
    use axum::response::{IntoResponse, Response as AxResponse};
    use axum::routing::post;
    use futures::StreamExt;
    use serde_json::{Value, json};

    use super::*;
    use crate::upstream::UpstreamEvent;

    /// One HTTP request the test upstream received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        headers: AxHeaders,
        body: Value,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }
        fn rpc_method(&self) -> &str {
            self.body["method"].as_str().unwrap_or("")
        }
    }

    /// A small Streamable HTTP MCP server (2025-06-18 sessions, plus stateless 2026 requests).
    #[derive(Default)]
    struct Upstream {
        seen: Mutex<Vec<Seen>>,
        sessions: AtomicU64,
        live: Mutex<HashSet<String>>,
        /// Serve a standalone GET stream (else 405).
        get_stream: AtomicBool,
        get_tx: Mutex<Option<mpsc::UnboundedSender<String>>>,
        /// Answer GET with this status instead (200: a JSON body, not an event stream).
        get_status: Mutex<Option<u16>>,
        /// How long the GET handler takes before it answers (and registers its stream).
        get_delay: Mutex<Duration>,
        /// Standalone GET streams by session, registered when the GET is answered. A stream
        /// closes when this and `get_tx` (the latest one) let it go.
        streams: Mutex<HashMap<String, mpsc::UnboundedSender<String>>>,
        /// `elicit` calls whose `elicitation/create` found the session's GET stream open / did not.
        delivered: AtomicU64,
        lost: AtomicU64,
        /// Events replayed first on a GET whose `Last-Event-ID` is the key.
        replay: Mutex<HashMap<String, Vec<String>>>,
    }

    impl Upstream {
        fn record(&self, method: &str, headers: &AxHeaders, body: Value) {
            self.seen.lock().unwrap().push(Seen { method: method.to_owned(), headers: headers.clone(), body });
        }
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
        fn posts(&self, rpc_method: &str) -> Vec<Seen> {
            self.seen().into_iter().filter(|s| s.method == "POST" && s.rpc_method() == rpc_method).collect()
        }
        /// Where the first request of `method` (HTTP method, or JSON-RPC method of a POST) is in
        /// the order the upstream saw them.
        fn position(&self, method: &str) -> Option<usize> {
            self.seen().iter().position(|s| s.method == method || (s.method == "POST" && s.rpc_method() == method))
        }
    }

    fn json_reply(body: Value) -> AxResponse {
        ([("content-type", "application/json")], body.to_string()).into_response()
    }

    fn sse_reply(events: Vec<String>) -> AxResponse {
        let stream = futures::stream::iter(events).then(|event| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, Infallible>(Bytes::from(event))
        });
        AxResponse::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
    }

    fn sse_data(id: Option<&str>, data: &Value) -> String {
        crate::wire::sse::encode_event(Some("message"), id, &data.to_string())
    }

    async fn on_post(AxState(up): AxState<Arc<Upstream>>, headers: AxHeaders, body: Bytes) -> AxResponse {
        let body: Value = serde_json::from_slice(&body).unwrap();
        up.record("POST", &headers, body.clone());
        let method = body["method"].as_str().unwrap_or("").to_owned();
        let id = body.get("id").cloned().unwrap_or(Value::Null);
        if method == "initialize" {
            // Slow enough that anything sent without waiting for it would overtake it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let session = format!("s{}", up.sessions.fetch_add(1, Ordering::SeqCst) + 1);
            up.live.lock().unwrap().insert(session.clone());
            let result = json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-06-18",
                "capabilities":{},"serverInfo":{"name":"test","version":"1"}}});
            let mut resp = json_reply(result);
            resp.headers_mut().insert("mcp-session-id", session.parse().unwrap());
            return resp;
        }
        if let Some(session) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
            if !up.live.lock().unwrap().contains(session) {
                return (AxStatus::NOT_FOUND, "session not found").into_response();
            }
        }
        if id.is_null() {
            return AxStatus::ACCEPTED.into_response();
        }
        let name = body["params"]["name"].as_str().unwrap_or("").to_owned();
        match (method.as_str(), name.as_str()) {
            ("tools/list", _) => json_reply(json!({"jsonrpc":"2.0","id":id,"result":{"tools":[]}})),
            ("tools/call", "fail") => (AxStatus::INTERNAL_SERVER_ERROR, "internal kaboom").into_response(),
            ("tools/call", "jsonerr") => (
                AxStatus::BAD_REQUEST,
                [("content-type", "application/json")],
                r#"{"jsonrpc":"2.0","id":"server-error","error":{"code":-32600,"message":"Bad Request: nope"}}"#,
            )
                .into_response(),
            ("tools/call", "progress") => sse_reply(vec![
                ": keep-alive\n\n".to_owned(),
                sse_data(
                    None,
                    &json!({"jsonrpc":"2.0","method":"notifications/progress",
                    "params":{"progressToken":"t","progress":1}}),
                ),
                sse_data(None, &json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}})),
            ]),
            ("tools/call", "cut") => sse_reply(vec![
                "id: e1\ndata:\n\n".to_owned(),
                sse_data(
                    Some("e2"),
                    &json!({"jsonrpc":"2.0","method":"notifications/progress",
                    "params":{"progressToken":"t","progress":1}}),
                ),
            ]),
            ("tools/call", "elicit") => {
                // Like a server SDK: a request unrelated to the call goes to the standalone GET
                // stream, and is lost when that stream is not open at this moment.
                let session = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let stream = up.streams.lock().unwrap().get(&session).cloned();
                let request = json!({"jsonrpc":"2.0","id":format!("elicit-{session}"),"method":"elicitation/create",
                    "params":{"message":"Name?","requestedSchema":{"type":"object","properties":{}}}});
                match stream {
                    Some(tx) if tx.send(sse_data(None, &request)).is_ok() => {
                        up.delivered.fetch_add(1, Ordering::SeqCst)
                    }
                    _ => up.lost.fetch_add(1, Ordering::SeqCst),
                };
                json_reply(json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}}))
            }
            ("tools/call", "slow") => {
                tokio::time::sleep(Duration::from_millis(400)).await;
                json_reply(json!({"jsonrpc":"2.0","id":id,"result":{"slow":true}}))
            }
            _ => json_reply(json!({"jsonrpc":"2.0","id":id,"result":{"echo":name}})),
        }
    }

    async fn on_get(AxState(up): AxState<Arc<Upstream>>, headers: AxHeaders) -> AxResponse {
        up.record("GET", &headers, Value::Null);
        if headers.get("last-event-id").and_then(|v| v.to_str().ok()) == Some("e2") {
            // Resumes the "cut" stream: the response to request 40.
            return sse_reply(vec![sse_data(Some("e3"), &json!({"jsonrpc":"2.0","id":40,"result":{"resumed":true}}))]);
        }
        let delay = *up.get_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        up.record("GET answered", &headers, Value::Null);
        let status = *up.get_status.lock().unwrap();
        match status {
            Some(200) => return json_reply(json!({"jsonrpc":"2.0","method":"notifications/message"})),
            Some(status) => return (AxStatus::from_u16(status).unwrap(), "no").into_response(),
            None => {}
        }
        if !up.get_stream.load(Ordering::SeqCst) {
            return AxStatus::METHOD_NOT_ALLOWED.into_response();
        }
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let resumed_after = headers.get("last-event-id").and_then(|v| v.to_str().ok());
        if let Some(events) = resumed_after.and_then(|id| up.replay.lock().unwrap().remove(id)) {
            for event in events {
                tx.send(event).unwrap();
            }
        }
        if let Some(session) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
            up.streams.lock().unwrap().insert(session.to_owned(), tx.clone());
        }
        *up.get_tx.lock().unwrap() = Some(tx);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (Ok::<_, Infallible>(Bytes::from(event)), rx))
        });
        AxResponse::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
    }

    async fn on_delete(AxState(up): AxState<Arc<Upstream>>, headers: AxHeaders) -> AxStatus {
        up.record("DELETE", &headers, Value::Null);
        AxStatus::OK
    }

    async fn serve(up: Arc<Upstream>) -> String {
        let app = Router::new().route("/mcp", post(on_post).get(on_get).delete(on_delete)).with_state(up);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/mcp")
    }

    type Events = mpsc::UnboundedReceiver<(usize, u64, UpstreamEvent)>;

    async fn start(up: &Arc<Upstream>) -> (UpstreamLink, Events) {
        let url = serve(Arc::clone(up)).await;
        let (sink, events) = mpsc::unbounded_channel();
        let link =
            connect("up", &url, &[("X-Api-Key".to_owned(), "k1".to_owned())], Reporter::new(0, 1, sink)).await.unwrap();
        (link, events)
    }

    /// A wait for the GET stream longer than any test: requests go only once it answered.
    const NO_CAP: Duration = Duration::from_secs(3600);

    /// A transport to `url` that waits at most `get_open_wait` for its GET stream.
    async fn start_at(url: &str, get_open_wait: Duration) -> (UpstreamLink, Events) {
        let (sink, events) = mpsc::unbounded_channel();
        let link = connect_with("up", url, &[], Reporter::new(0, 1, sink), get_open_wait).await.unwrap();
        (link, events)
    }

    fn slow_get_upstream(delay: Duration) -> Arc<Upstream> {
        let up = Arc::new(Upstream::default());
        up.get_stream.store(true, Ordering::SeqCst);
        *up.get_delay.lock().unwrap() = delay;
        up
    }

    /// Waits until the upstream has seen a request matching `pred`.
    async fn until_seen(up: &Upstream, what: &str, pred: impl Fn(&Seen) -> bool) {
        for _ in 0..250 {
            if up.seen().iter().any(&pred) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the upstream never saw {what}");
    }

    /// Sends `call(id, "elicit")` and reads messages until its result; returns whether the
    /// `elicitation/create` from the GET stream came before it.
    async fn elicit(link: &UpstreamLink, events: &mut Events, id: u64) -> bool {
        assert!(link.send(call(id, "elicit")).is_ok());
        let mut elicited = false;
        loop {
            let (msg, related) = next_message(events).await;
            if msg["method"] == "elicitation/create" {
                assert_eq!(related, None, "it came on the standalone stream");
                elicited = true;
            } else {
                assert_eq!((msg["id"].as_u64(), related), (Some(id), Some(id)));
                assert_eq!(msg["result"], json!({"content":[]}));
                return elicited;
            }
        }
    }

    async fn next_message(events: &mut Events) -> (Value, Option<u64>) {
        // A guard against a hang, not a measure of speed: 50 sessions share a loaded machine.
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv()).await.expect("no event in time");
        match event.expect("reporter channel closed") {
            (_, _, UpstreamEvent::Message { msg, related }) => {
                (serde_json::from_slice(&msg.to_bytes()).unwrap(), related)
            }
            (_, _, UpstreamEvent::Closed { reason }) => panic!("unexpected close: {reason}"),
            (_, _, other) => panic!("unexpected event: {other:?}"),
        }
    }

    async fn no_more_events(events: &mut Events) {
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
            panic!("unexpected event {event:?}");
        }
    }

    fn outgoing(body: Value) -> Outgoing {
        let mut out = Outgoing::plain(Bytes::from(body.to_string()));
        out.method = body["method"].as_str().map(str::to_owned);
        out.request_id = body["id"].as_u64();
        out
    }

    fn call(id: u64, name: &str) -> Outgoing {
        outgoing(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":{}}}))
    }

    /// initialize + notifications/initialized, as a client would send them (without waiting).
    async fn handshake(link: &UpstreamLink, events: &mut Events) {
        assert!(
            link.send(outgoing(json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}})))
                .is_ok()
        );
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))).is_ok());
        let (msg, related) = next_message(events).await;
        assert_eq!(msg["id"], 1);
        assert_eq!(msg["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(related, Some(1));
    }

    #[tokio::test]
    async fn invalid_url_is_a_connect_error() {
        let (sink, _events) = mpsc::unbounded_channel();
        let err = connect("up", "not a url", &[], Reporter::new(0, 1, sink.clone())).await.unwrap_err();
        assert!(matches!(err, ConnectError::Http { .. }), "{err}");
        let err = connect("up", "ftp://host/x", &[], Reporter::new(0, 1, sink.clone())).await.unwrap_err();
        assert!(err.to_string().contains("http or https"), "{err}");
        let bad = [("Bad Header".to_owned(), "v".to_owned())];
        assert!(connect("up", "http://127.0.0.1:1/mcp", &bad, Reporter::new(0, 1, sink)).await.is_err());
    }

    #[tokio::test]
    async fn json_response_with_session_and_negotiated_version() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(msg, json!({"jsonrpc":"2.0","id":2,"result":{"tools":[]}}));
        assert_eq!(related, Some(2));

        let seen = up.seen();
        let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
        let methods: Vec<&str> = posts.iter().map(|s| s.rpc_method()).collect();
        assert_eq!(methods, ["initialize", "notifications/initialized", "tools/list"]);
        for post in &posts {
            assert_eq!(post.header("content-type"), Some("application/json"));
            assert_eq!(post.header("accept"), Some("application/json, text/event-stream"));
            assert_eq!(post.header("x-api-key"), Some("k1"));
            assert_eq!(post.header("mcp-method"), None, "legacy requests carry no 2026 headers");
        }
        assert_eq!(posts[0].header("mcp-session-id"), None);
        assert_eq!(posts[0].header("mcp-protocol-version"), None);
        for post in &posts[1..] {
            assert_eq!(post.header("mcp-session-id"), Some("s1"));
            assert_eq!(post.header("mcp-protocol-version"), Some("2025-06-18"));
        }
        // The standalone GET stream was tried once the handshake was done; 405 is not retried.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let gets: Vec<Seen> = up.seen().into_iter().filter(|s| s.method == "GET").collect();
        assert_eq!(gets.len(), 1);
        assert_eq!(gets[0].header("accept"), Some("text/event-stream"));
        assert_eq!(gets[0].header("mcp-session-id"), Some("s1"));
        no_more_events(&mut events).await;
    }

    #[tokio::test]
    async fn sse_response_reports_progress_then_result_for_the_request() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        assert!(link.send(call(3, "progress")).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(msg["method"], "notifications/progress");
        assert_eq!(related, Some(3));
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(msg, json!({"jsonrpc":"2.0","id":3,"result":{"content":[]}}));
        assert_eq!(related, Some(3));
        no_more_events(&mut events).await;
    }

    #[tokio::test]
    async fn requests_are_in_flight_concurrently() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        assert!(link.send(call(10, "slow")).is_ok());
        assert!(link.send(call(11, "fast")).is_ok());
        let (first, _) = next_message(&mut events).await;
        let (second, _) = next_message(&mut events).await;
        assert_eq!(first["id"], 11, "a slow response must not hold back a later request");
        assert_eq!(second["id"], 10);
    }

    #[tokio::test]
    async fn expired_session_is_reinitialized_and_the_request_retried() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        // One round trip, so the handshake's last POST has been answered.
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":4,"method":"tools/list"}))).is_ok());
        assert_eq!(next_message(&mut events).await.0["id"], 4);
        up.live.lock().unwrap().clear();
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":5,"method":"tools/list"}))).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(msg, json!({"jsonrpc":"2.0","id":5,"result":{"tools":[]}}), "replayed initialize is swallowed");
        assert_eq!(related, Some(5));

        let inits = up.posts("initialize");
        assert_eq!(inits.len(), 2);
        assert_eq!(inits[1].body["id"], json!(u64::MAX));
        assert_eq!(inits[1].body["params"], inits[0].body["params"], "the initialize is replayed as sent");
        assert_eq!(inits[1].header("mcp-session-id"), None);
        let initialized = up.posts("notifications/initialized");
        assert_eq!(initialized.len(), 2);
        assert_eq!(initialized[1].header("mcp-session-id"), Some("s2"));
        let lists = up.posts("tools/list");
        assert_eq!(lists.len(), 3);
        assert_eq!(lists[1].header("mcp-session-id"), Some("s1"));
        assert_eq!(lists[1].body["id"], 5);
        assert_eq!(lists[2].header("mcp-session-id"), Some("s2"));
        assert_eq!(lists[2].header("mcp-protocol-version"), Some("2025-06-18"));
        assert_eq!(lists[2].body, lists[1].body, "the failed request is retried as it was");
        no_more_events(&mut events).await;

        // Later requests use the new session directly.
        assert!(link.send(call(6, "x")).is_ok());
        assert_eq!(next_message(&mut events).await.0["result"]["echo"], "x");
        assert_eq!(up.posts("initialize").len(), 2);
    }

    #[tokio::test]
    async fn http_500_with_plain_body_becomes_an_error_for_the_request() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        assert!(link.send(call(7, "fail")).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(msg["id"], 7);
        assert_eq!(related, Some(7));
        assert_eq!(msg["error"]["code"], -32000);
        let text = msg["error"]["message"].as_str().unwrap();
        assert!(text.starts_with("upstream up: HTTP 500"), "{text}");
        assert!(text.contains("internal kaboom"), "{text}");
        // The transport goes on.
        assert!(link.send(call(8, "y")).is_ok());
        assert_eq!(next_message(&mut events).await.0["result"]["echo"], "y");
    }

    #[tokio::test]
    async fn json_rpc_error_body_is_recorrelated_to_the_request() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        assert!(link.send(call(9, "jsonerr")).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(msg, json!({"jsonrpc":"2.0","id":9,"error":{"code":-32600,"message":"Bad Request: nope"}}));
        assert_eq!(related, Some(9));
    }

    #[tokio::test]
    async fn unreachable_server_gives_an_error_per_request() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        drop(listener);
        let (sink, mut events) = mpsc::unbounded_channel();
        let link = connect("up", &url, &[], Reporter::new(0, 1, sink)).await.unwrap();
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}))).is_ok());
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}))).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!((msg["id"].as_u64(), related), (Some(3), Some(3)));
        let text = msg["error"]["message"].as_str().unwrap();
        assert!(text.starts_with(&format!("upstream up: cannot reach {url}")), "{text}");
        no_more_events(&mut events).await;
    }

    #[tokio::test]
    async fn modern_requests_carry_the_2026_headers() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        let mut out = call(20, "Hello, 世界");
        out.protocol_version = Some("2026-07-28".to_owned());
        out.name = Some("Hello, 世界".to_owned());
        out.param_headers = vec![("Region".to_owned(), "us-west1".to_owned())];
        assert!(link.send(out).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!((msg["id"].as_u64(), related), (Some(20), Some(20)));
        let mut out = call(21, "get_weather");
        out.protocol_version = Some("2026-07-28".to_owned());
        out.name = Some("get_weather".to_owned());
        assert!(link.send(out).is_ok());
        next_message(&mut events).await;

        let calls = up.posts("tools/call");
        assert_eq!(calls[0].header("mcp-protocol-version"), Some("2026-07-28"));
        assert_eq!(calls[0].header("mcp-method"), Some("tools/call"));
        assert_eq!(calls[0].header("mcp-name"), Some("=?base64?SGVsbG8sIOS4lueVjA==?="));
        assert_eq!(calls[0].header("mcp-param-region"), Some("us-west1"));
        assert_eq!(calls[0].header("mcp-session-id"), None);
        assert_eq!(calls[1].header("mcp-name"), Some("get_weather"));
        assert_eq!(calls[1].header("mcp-param-region"), None);
    }

    #[tokio::test]
    async fn broken_stream_is_resumed_with_last_event_id() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        assert!(link.send(call(40, "cut")).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!((msg["method"].as_str(), related), (Some("notifications/progress"), Some(40)));
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(msg, json!({"jsonrpc":"2.0","id":40,"result":{"resumed":true}}));
        assert_eq!(related, Some(40));
        let resumes: Vec<Seen> = up.seen().into_iter().filter(|s| s.header("last-event-id").is_some()).collect();
        assert_eq!(resumes.len(), 1);
        assert_eq!(resumes[0].method, "GET");
        assert_eq!(resumes[0].header("last-event-id"), Some("e2"));
        assert_eq!(resumes[0].header("mcp-session-id"), Some("s1"));
    }

    #[tokio::test]
    async fn broken_stream_without_session_fails_the_request() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        let mut out = call(41, "cut");
        out.protocol_version = Some("2026-07-28".to_owned());
        assert!(link.send(out).is_ok());
        let (msg, _) = next_message(&mut events).await;
        assert_eq!(msg["method"], "notifications/progress");
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(related, Some(41));
        assert_eq!(
            msg,
            json!({"jsonrpc":"2.0","id":41,"error":{"code":-32000,
                "message":"upstream up: response stream ended before the response"}})
        );
    }

    #[tokio::test]
    async fn standalone_get_stream_messages_are_unrelated() {
        let up = Arc::new(Upstream::default());
        up.get_stream.store(true, Ordering::SeqCst);
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        let mut tx = None;
        for _ in 0..100 {
            tx = up.get_tx.lock().unwrap().clone();
            if tx.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tx = tx.expect("the GET stream was not opened");
        tx.send(sse_data(Some("g1"), &json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}))).unwrap();
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(msg["method"], "notifications/tools/list_changed");
        assert_eq!(related, None);
        // Dropping it makes the client reconnect with Last-Event-ID.
        *up.get_tx.lock().unwrap() = None;
        up.streams.lock().unwrap().clear();
        drop(tx);
        for _ in 0..100 {
            if up.seen().iter().any(|s| s.method == "GET" && s.header("last-event-id") == Some("g1")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(up.seen().iter().any(|s| s.method == "GET" && s.header("last-event-id") == Some("g1")));
        drop(link);
    }

    #[tokio::test]
    async fn cancelling_a_modern_request_closes_its_stream() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        let mut out = call(30, "slow");
        out.protocol_version = Some("2026-07-28".to_owned());
        assert!(link.send(out).is_ok());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            link.send(outgoing(
                json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":30,"reason":"user"}})
            ))
            .is_ok()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        no_more_events(&mut events).await;
        let posts: Vec<Seen> = up.seen().into_iter().filter(|s| s.method == "POST").collect();
        assert_eq!(posts.len(), 1, "the cancel is the stream's close, not a POST");
        // A legacy cancel is POSTed as usual.
        assert!(
            link.send(outgoing(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":99}})))
                .is_ok()
        );
        for _ in 0..50 {
            if !up.posts("notifications/cancelled").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(up.posts("notifications/cancelled").len(), 1);
    }

    #[tokio::test]
    async fn a_new_initialize_starts_a_new_session_and_ends_the_old_one() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        handshake(&link, &mut events).await;
        assert!(link.send(call(2, "z")).is_ok());
        assert_eq!(next_message(&mut events).await.0["id"], 2);
        let seen = up.seen();
        let deletes: Vec<&Seen> = seen.iter().filter(|s| s.method == "DELETE").collect();
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].header("mcp-session-id"), Some("s1"));
        assert_eq!(deletes[0].header("mcp-protocol-version"), Some("2025-06-18"));
        let inits = up.posts("initialize");
        assert_eq!(inits[1].header("mcp-session-id"), None, "a new handshake carries no old session");
        assert_eq!(inits[1].body["id"], 1, "a client's own initialize is sent as it is");
        assert_eq!(up.posts("tools/call")[0].header("mcp-session-id"), Some("s2"));
    }

    #[tokio::test]
    async fn dropping_the_link_deletes_the_session() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        handshake(&link, &mut events).await;
        drop(link);
        for _ in 0..100 {
            if up.seen().iter().any(|s| s.method == "DELETE") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deletes: Vec<Seen> = up.seen().into_iter().filter(|s| s.method == "DELETE").collect();
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].header("mcp-session-id"), Some("s1"));
        assert_eq!(deletes[0].header("x-api-key"), Some("k1"));
        // The transport does not report a close of its own.
        no_more_events(&mut events).await;
    }

    /// A server that sends `elicitation/create` on its standalone GET stream as soon as it gets
    /// a `tools/call`, and whose GET is slow to answer: requests wait for that stream, so over
    /// many sessions not one such request is lost.
    #[tokio::test]
    async fn requests_wait_for_a_slow_get_stream_so_no_server_request_is_lost() {
        const SESSIONS: u64 = 50;
        let up = slow_get_upstream(Duration::from_millis(300));
        let url = serve(Arc::clone(&up)).await;
        let sessions = (0..SESSIONS).map(|_| {
            let url = url.clone();
            async move {
                let (link, mut events) = start_at(&url, NO_CAP).await;
                handshake(&link, &mut events).await;
                let elicited = elicit(&link, &mut events, 2).await;
                (link, events, elicited)
            }
        });
        let sessions = futures::future::join_all(sessions).await;
        let lost = up.lost.load(Ordering::SeqCst);
        assert_eq!(lost, 0, "{lost} of {SESSIONS} server requests found no GET stream open");
        assert_eq!(up.delivered.load(Ordering::SeqCst), SESSIONS);
        for (_link, mut events, elicited) in sessions {
            if !elicited {
                let (msg, related) = next_message(&mut events).await;
                assert_eq!((msg["method"].as_str(), related), (Some("elicitation/create"), None));
            }
        }
    }

    /// After an expired session is re-initialized, the retried request and any request sent
    /// meanwhile wait for the new session's GET stream.
    #[tokio::test]
    async fn after_reinitializing_requests_wait_for_the_new_get_stream() {
        let up = slow_get_upstream(Duration::ZERO);
        let url = serve(Arc::clone(&up)).await;
        let (link, mut events) = start_at(&url, NO_CAP).await;
        handshake(&link, &mut events).await;
        if !elicit(&link, &mut events, 2).await {
            assert_eq!(next_message(&mut events).await.0["method"], "elicitation/create");
        }

        *up.get_delay.lock().unwrap() = Duration::from_millis(300);
        up.live.lock().unwrap().clear();
        assert!(link.send(call(3, "elicit")).is_ok());
        // The replayed handshake is done and the new GET stream is on its way: a request sent now
        // must wait for it too.
        until_seen(&up, "the new session's GET", |s| s.method == "GET" && s.header("mcp-session-id") == Some("s2"))
            .await;
        assert!(link.send(call(4, "elicit")).is_ok());
        let mut results = Vec::new();
        let mut elicitations = 0;
        while results.len() < 2 || elicitations < 2 {
            let (msg, related) = next_message(&mut events).await;
            if msg["method"] == "elicitation/create" {
                assert_eq!(related, None);
                elicitations += 1;
            } else {
                assert_eq!(msg["id"].as_u64(), related);
                results.push(related);
                if results.len() == 2 {
                    let lost = up.lost.load(Ordering::SeqCst);
                    assert_eq!(lost, 0, "{lost} server requests found no GET stream open");
                }
            }
        }
        assert_eq!(up.delivered.load(Ordering::SeqCst), 3);
        let elicits: Vec<Seen> = up.posts("tools/call");
        assert_eq!(elicits.last().unwrap().header("mcp-session-id"), Some("s2"));
    }

    /// A GET refused slowly (405, other 4xx, 5xx, or not an event stream) releases the requests
    /// as soon as its answer arrives, with no cap to fall back on.
    #[tokio::test]
    async fn a_refused_get_stream_releases_requests_at_its_answer() {
        for status in [None, Some(404), Some(403), Some(500), Some(200)] {
            let up = slow_get_upstream(Duration::from_millis(100));
            up.get_stream.store(false, Ordering::SeqCst);
            *up.get_status.lock().unwrap() = status;
            let url = serve(Arc::clone(&up)).await;
            let (link, mut events) = start_at(&url, NO_CAP).await;
            handshake(&link, &mut events).await;
            assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))).is_ok());
            let (msg, related) = next_message(&mut events).await;
            assert_eq!((msg["id"].as_u64(), related), (Some(2), Some(2)), "GET answered {status:?}");
            let answered = up.position("GET answered").expect("the GET was answered");
            assert!(answered < up.position("tools/list").unwrap(), "GET answered {status:?}");
        }
    }

    /// A GET that never answers holds requests back only for the cap.
    #[tokio::test]
    async fn a_get_stream_that_never_answers_holds_requests_for_the_cap_only() {
        let cap = Duration::from_millis(300);
        let up = slow_get_upstream(NO_CAP);
        let url = serve(Arc::clone(&up)).await;
        let (link, mut events) = start_at(&url, cap).await;
        let started = tokio::time::Instant::now();
        handshake(&link, &mut events).await;
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!((msg["id"].as_u64(), related), (Some(2), Some(2)));
        assert!(started.elapsed() >= cap, "released before the cap");
        assert!(up.position("GET").unwrap() < up.position("tools/list").unwrap());
        assert_eq!(up.position("GET answered"), None);
    }

    /// 2026-07-28 requests are stateless: no handshake, no GET stream, nothing to wait for.
    #[tokio::test]
    async fn stateless_requests_wait_for_no_get_stream() {
        let up = slow_get_upstream(NO_CAP);
        let url = serve(Arc::clone(&up)).await;
        let (link, mut events) = start_at(&url, NO_CAP).await;
        let mut out = call(20, "x");
        out.protocol_version = Some("2026-07-28".to_owned());
        assert!(link.send(out).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!((msg["id"].as_u64(), related), (Some(20), Some(20)));
        assert_eq!(up.position("GET"), None);
    }

    /// A GET stream that breaks is reopened with the id of the last event it carried, and what
    /// the server sent meanwhile arrives.
    #[tokio::test]
    async fn a_broken_get_stream_is_resumed_with_last_event_id() {
        let up = slow_get_upstream(Duration::ZERO);
        let missed = json!({"jsonrpc":"2.0","method":"notifications/resources/list_changed"});
        up.replay.lock().unwrap().insert("g1".to_owned(), vec![sse_data(Some("g2"), &missed)]);
        let url = serve(Arc::clone(&up)).await;
        let (link, mut events) = start_at(&url, NO_CAP).await;
        handshake(&link, &mut events).await;
        // Released only once the GET stream is open, so it is there when this is answered.
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))).is_ok());
        assert_eq!(next_message(&mut events).await.1, Some(2));
        let tx = up.get_tx.lock().unwrap().take().expect("the GET stream is open");
        up.streams.lock().unwrap().clear();
        tx.send(sse_data(Some("g1"), &json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}))).unwrap();
        let (msg, related) = next_message(&mut events).await;
        assert_eq!((msg["method"].as_str(), related), (Some("notifications/tools/list_changed"), None));
        drop(tx);
        let (msg, related) = next_message(&mut events).await;
        assert_eq!((msg, related), (missed, None));
        let gets: Vec<Seen> = up.seen().into_iter().filter(|s| s.method == "GET").collect();
        assert_eq!(gets.len(), 2);
        assert_eq!(gets[0].header("last-event-id"), None);
        assert_eq!(gets[1].header("last-event-id"), Some("g1"));
        assert_eq!(gets[1].header("mcp-session-id"), Some("s1"));
    }

    /// A server that has not noticed yet that the broken stream is gone answers the reconnection
    /// 409 (only one GET stream per session): it is tried again, still resuming.
    #[tokio::test]
    async fn a_get_stream_reconnection_refused_as_a_conflict_is_retried() {
        let up = slow_get_upstream(Duration::ZERO);
        let missed = json!({"jsonrpc":"2.0","method":"notifications/resources/list_changed"});
        up.replay.lock().unwrap().insert("g1".to_owned(), vec![sse_data(Some("g2"), &missed)]);
        let url = serve(Arc::clone(&up)).await;
        let (link, mut events) = start_at(&url, NO_CAP).await;
        handshake(&link, &mut events).await;
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))).is_ok());
        assert_eq!(next_message(&mut events).await.1, Some(2));
        let tx = up.get_tx.lock().unwrap().take().expect("the GET stream is open");
        up.streams.lock().unwrap().clear();
        tx.send(sse_data(Some("g1"), &json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}))).unwrap();
        assert_eq!(next_message(&mut events).await.1, None);
        *up.get_status.lock().unwrap() = Some(409);
        drop(tx);
        until_seen(&up, "the reconnection", |s| s.method == "GET answered" && s.header("last-event-id") == Some("g1"))
            .await;
        *up.get_status.lock().unwrap() = None;
        let (msg, related) = next_message(&mut events).await;
        assert_eq!((msg, related), (missed, None));
    }
}
