//! One downstream session: a client connected to its upstreams.
//!
//! A session is an actor: one task owns all of its state (pending requests, id maps, tool
//! lists, routes) and handles, in order, what the client sends ([`Input`]) and what the
//! upstream transports report. Nothing is locked and nothing waits inside the actor: work that
//! must wait (fetching a tool list, a gate decision) parks the message and resumes it when the
//! answer arrives.
//!
//! Ids: every request sent upstream gets a fresh numeric id from that upstream's counter; the
//! response is mapped back to the client's original id. Requests from an upstream to the client
//! (sampling, elicitation, roots) get a fresh id from the session's counter and their responses
//! are mapped back the same way. Progress tokens pass unchanged unless the session is shared by
//! several clients (stateless HTTP), where they are remapped to stay unique.

pub mod merge;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use crate::gate::tools::ToolList;
use crate::gate::{CancellationToken, Gate, Outcome, OutcomeHook, ProgressSink, RefusedCall, ToolCall, Verdict};
use crate::upstream::settings::{ServerConfig, UpstreamTransport};
use crate::upstream::{self, ConnectError, Outgoing, Reporter, UpstreamEvent, UpstreamLink};
use crate::wire::era::{self, Era};
use crate::wire::jsonrpc::{self, Kind, Message, code};
use merge::ListPosition;

/// Where a message to the client belongs (matters for HTTP, where each request has a stream).
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// A response: it goes to the stream of the request with the same id.
    Reply,
    /// Related to the client request with this id (progress, logging, sampling during a call).
    Related(&'a str),
    /// Not tied to a request (list changes, resource updates).
    Unrelated,
}

/// The client side of a session.
pub trait Downstream: Send + Sync + 'static {
    fn send(&self, msg: &Message, route: Route<'_>);
    /// The session cannot go on (for example a tool name collision); stdio exits with it.
    fn fatal(&self, _message: &str) {}
}

/// Input from the client side.
#[derive(Debug)]
pub enum Input {
    /// A message from the client, with `Mcp-Param-*` headers it came with (HTTP, 2026-07-28).
    Client { msg: Message, param_headers: Vec<(String, String)> },
    /// The HTTP stream of this request closed before its response. A held call is abandoned in
    /// every era; a call in flight upstream is cancelled there only when `cancel_upstream` (a
    /// closed stream cancels a 2026-07-28 request, not an older one).
    ClientGone { id: String, cancel_upstream: bool },
    /// A held tool call was decided.
    Resume { msg: Box<Message>, verdict: Verdict },
    /// An upstream was restarted (or failed to).
    Restarted { index: usize, generation: u64, link: Result<UpstreamLink, String> },
}

#[derive(Clone)]
pub struct SessionOptions {
    pub servers: Vec<Arc<ServerConfig>>,
    pub separator: String,
    /// Several clients share this session (stateless HTTP): progress tokens are remapped.
    pub shared: bool,
    pub gate: Arc<dyn Gate>,
    /// A label for logs.
    pub label: String,
    /// The agent this session speaks for, when the transport authenticated it (an HTTP client with
    /// an `[[agents]]` token). Otherwise the agent is the client's name from `initialize`.
    pub agent: Option<String>,
}

/// The handle clients use to feed a session. Dropping every handle ends the session.
///
/// Its queue is unbounded because some inputs are sent where nothing can wait (a closed HTTP
/// stream's `Drop`, a held call's resumption). It does not grow: the actor takes each input
/// without waiting on anything, and the client side feeds it one message at a time (the stdio
/// reader, one HTTP request each).
#[derive(Clone)]
pub struct SessionHandle {
    tx: mpsc::UnboundedSender<Input>,
}

impl SessionHandle {
    pub fn send(&self, input: Input) -> bool {
        self.tx.send(input).is_ok()
    }

    pub fn client(&self, msg: Message) -> bool {
        self.send(Input::Client { msg, param_headers: Vec::new() })
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Starts every upstream and the session actor. Fails when an upstream cannot be started.
pub async fn start(
    opts: SessionOptions,
    downstream: Arc<dyn Downstream>,
) -> Result<(SessionHandle, tokio::task::JoinHandle<()>), ConnectError> {
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let mut upstreams = Vec::with_capacity(opts.servers.len());
    for (index, cfg) in opts.servers.iter().enumerate() {
        let link = upstream::connect(cfg, Reporter::new(index, 1, up_tx.clone())).await?;
        upstreams.push(Upstream {
            cfg: cfg.clone(),
            link: Some(link),
            generation: 1,
            next_id: 1,
            pending: HashMap::new(),
            deadlines: HashMap::new(),
            tools: None,
            fetching_tools: false,
            started: Instant::now(),
            failures: 0,
            init_result: None,
        });
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let multi = upstreams.len() > 1;
    let span = tracing::info_span!("session", id = %opts.label);
    let session = Session {
        opts,
        downstream,
        upstreams,
        up_tx,
        self_tx: tx.downgrade(),
        multi,
        next_client_id: 1,
        server_requests: HashMap::new(),
        own_requests: std::collections::HashSet::new(),
        client_requests: HashMap::new(),
        progress: HashMap::new(),
        held_progress: std::collections::HashSet::new(),
        next_progress: 1,
        fanouts: HashMap::new(),
        next_fanout: 1,
        parked: VecDeque::new(),
        initialize_params: None,
        client_initialized: false,
        client_name: None,
        modern_meta: None,
        era: None,
        listens: HashMap::new(),
        resource_routes: HashMap::new(),
        template_routes: Vec::new(),
        task_routes: HashMap::new(),
        held: HashMap::new(),
    };
    let task = tokio::spawn(session.run(rx, up_rx).instrument(span));
    Ok((SessionHandle { tx }, task))
}

struct Upstream {
    cfg: Arc<ServerConfig>,
    link: Option<UpstreamLink>,
    generation: u64,
    next_id: u64,
    /// Requests sent to it and not answered yet, by our id. Entered and left only through
    /// [`Upstream::wait_for`] and [`Upstream::answered`], which keep `deadlines` alongside.
    pending: HashMap<u64, Pending>,
    /// When each pending request times out.
    deadlines: HashMap<u64, tokio::time::Instant>,
    tools: Option<ToolList>,
    fetching_tools: bool,
    started: Instant,
    failures: u32,
    init_result: Option<Value>,
}

impl Upstream {
    fn is_http(&self) -> bool {
        !matches!(self.cfg.transport, UpstreamTransport::Stdio { .. })
    }

    /// Records a request sent under `id`, with its deadline.
    /// A `subscriptions/listen` stream is open by design until the client ends it: it has no
    /// deadline.
    fn wait_for(&mut self, id: u64, method: &str, pending: Pending) {
        let timeout = match method {
            "subscriptions/listen" => None,
            "initialize" => Some(self.cfg.initialize_timeout),
            _ => Some(self.cfg.request_timeout),
        };
        if let Some(timeout) = timeout {
            self.deadlines.insert(id, tokio::time::Instant::now() + timeout);
        }
        self.pending.insert(id, pending);
    }

    /// The request `id` is answered (or given up): no longer pending.
    fn answered(&mut self, id: u64) -> Option<Pending> {
        self.deadlines.remove(&id);
        self.pending.remove(&id)
    }

    /// Every pending request, which will not be answered.
    fn take_pending(&mut self) -> HashMap<u64, Pending> {
        self.deadlines.clear();
        std::mem::take(&mut self.pending)
    }

    /// The pending requests whose deadline has passed.
    fn overdue(&self, now: tokio::time::Instant) -> Vec<u64> {
        self.deadlines.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect()
    }
}

/// How often the session looks for requests past their deadline.
const DEADLINE_TICK: Duration = Duration::from_millis(500);

/// What a request sent upstream is waiting to do with its response.
enum Pending {
    /// Relay to the client under its id.
    Client {
        client_id: Box<RawValue>,
        method: String,
        /// The request asked for its full tool list (no cursor): cache it.
        tools_first_page: bool,
        /// The gate wants to know how this call ended.
        hook: Option<OutcomeHook>,
    },
    /// One part of a request fanned out to several upstreams.
    Fanout(u64),
    /// The proxy's own tool list fetch; accumulates pages.
    ToolsFetch(Vec<Box<RawValue>>),
    /// Replaying `initialize` after a restart.
    Reinit,
}

/// An upstream's answer to one part of a fan-out: its result, or its error object.
type PartOutcome = Result<Box<RawValue>, Box<RawValue>>;

struct Fanout {
    client_id: Box<RawValue>,
    method: String,
    /// The era of the client's request: what the merged result must look like.
    era: Era,
    waiting: usize,
    /// (upstream, its result or error object).
    parts: Vec<(usize, PartOutcome)>,
}

struct ProgressEntry {
    client_id: String,
    /// The client's own token when the session remapped it.
    original: Option<Box<RawValue>>,
}

struct Session {
    opts: SessionOptions,
    downstream: Arc<dyn Downstream>,
    upstreams: Vec<Upstream>,
    up_tx: mpsc::UnboundedSender<(usize, u64, UpstreamEvent)>,
    self_tx: mpsc::WeakUnboundedSender<Input>,
    multi: bool,
    /// Next id for a request from an upstream to the client.
    next_client_id: u64,
    /// Our id towards the client -> (upstream, the upstream's id).
    server_requests: HashMap<u64, (usize, Box<RawValue>)>,
    /// Requests the proxy itself sent to the client (approval URL elicitations).
    own_requests: std::collections::HashSet<u64>,
    /// Client request id (raw text) -> (upstream, our id upstream), for cancellation.
    client_requests: HashMap<String, (usize, u64)>,
    /// Progress token as sent upstream (raw text) -> where its notifications go.
    progress: HashMap<String, ProgressEntry>,
    /// Progress tokens (raw text) of tool calls the gate holds: not sent upstream yet, so
    /// progress for them from an upstream is a spoof ("approved, running...") and is dropped.
    held_progress: std::collections::HashSet<String>,
    next_progress: u64,
    fanouts: HashMap<u64, Fanout>,
    next_fanout: u64,
    /// Tool calls waiting for a tool list.
    parked: VecDeque<Message>,
    initialize_params: Option<Box<RawValue>>,
    client_initialized: bool,
    client_name: Option<String>,
    /// The reserved `_meta` keys of the latest 2026-07-28 request, for the proxy's own requests.
    modern_meta: Option<jsonrpc::RawObject>,
    /// The era of the client's latest request; `None` until it sent one.
    era: Option<Era>,
    /// Open `subscriptions/listen` requests of a 2026-07-28 client (request id as raw text) and
    /// the notifications each asked for.
    listens: HashMap<String, Value>,
    resource_routes: HashMap<String, usize>,
    template_routes: Vec<(String, usize)>,
    task_routes: HashMap<String, usize>,
    /// Held tool calls by client request id (raw text); cancelling the token abandons the wait.
    held: HashMap<String, CancellationToken>,
}

impl Session {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Input>,
        mut up_rx: mpsc::UnboundedReceiver<(usize, u64, UpstreamEvent)>,
    ) {
        let mut tick = tokio::time::interval(DEADLINE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let waiting = self.upstreams.iter().any(|u| !u.deadlines.is_empty());
            tokio::select! {
                biased;
                event = up_rx.recv() => match event {
                    Some((index, generation, event)) => self.on_upstream(index, generation, event),
                    None => break,
                },
                input = rx.recv() => match input {
                    Some(input) => self.on_input(input),
                    None => break,
                },
                _ = tick.tick(), if waiting => self.time_out_overdue(),
            }
        }
        // The session ended (client gone, DELETE, reaped): nobody is left to run a held call for.
        for (_, gone) in self.held.drain() {
            gone.cancel();
        }
        // Let every transport wind down (children exit, upstream sessions are deleted) before
        // the session is reported finished.
        let finished: Vec<_> =
            self.upstreams.iter().filter_map(|u| u.link.as_ref().map(UpstreamLink::finished)).collect();
        drop(self);
        let _ = tokio::time::timeout(Duration::from_secs(3), futures::future::join_all(finished)).await;
        debug!("session ended");
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Client { msg, param_headers } => match msg.kind() {
                Kind::Request => self.on_client_request(msg, param_headers),
                Kind::Notification => self.on_client_notification(msg),
                Kind::Response => self.on_client_response(msg),
            },
            Input::ClientGone { id, cancel_upstream } => {
                if self.abandon_held(&id) || !cancel_upstream {
                    return;
                }
                if let Some((index, up_id)) = self.client_requests.remove(&id) {
                    self.upstreams[index].answered(up_id);
                    let params = serde_json::json!({"requestId": up_id, "reason": "client disconnected"});
                    self.send_upstream(
                        index,
                        &Message::notification("notifications/cancelled", Some(jsonrpc::to_raw(&params))),
                        None,
                    );
                }
            }
            Input::Resume { msg, verdict } => {
                if let Some(token) = progress_token(&msg) {
                    self.held_progress.remove(&token);
                }
                let id = msg.id_text().unwrap_or_default().to_owned();
                if self.held.remove(&id).is_some() {
                    self.apply_verdict(*msg, verdict);
                } else if let Verdict::AllowTracked(hook) = verdict {
                    // The caller left after the gate claimed the call for it: give the claim back.
                    hook(Outcome::NotRun);
                }
            }
            Input::Restarted { index, generation, link } => self.on_restarted(index, generation, link),
        }
    }

    // ---- client -> upstream ----

    /// Who is calling: the authenticated agent, else the client's own name.
    fn agent(&self) -> Option<&str> {
        self.opts.agent.as_deref().or(self.client_name.as_deref())
    }

    fn on_client_request(&mut self, msg: Message, param_headers: Vec<(String, String)>) {
        self.note_request(&msg);
        let method = msg.method().to_owned();
        match method.as_str() {
            "initialize" => {
                self.initialize_params = msg.params.as_ref().map(|p| p.to_owned());
                self.client_name = msg
                    .params
                    .as_deref()
                    .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
                    .and_then(|v| v.pointer("/clientInfo/name").and_then(Value::as_str).map(str::to_owned));
                if self.multi {
                    self.fan_out(msg, |_| true);
                } else {
                    self.forward(0, msg, param_headers);
                }
            }
            "tools/call" => self.on_tools_call(msg, param_headers),
            _ if !self.multi => self.forward(0, msg, param_headers),
            "server/discover" => self.fan_out(msg, |_| true),
            "ping" => {
                let era = self.era_of(&msg);
                self.reply(msg.id, era::own_result(jsonrpc::to_raw(&serde_json::json!({})), era))
            }
            "logging/setLevel" => self
                .fan_out(msg, |u| u.init_result.as_ref().is_none_or(|r| r.pointer("/capabilities/logging").is_some())),
            "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => self.list(msg),
            "prompts/get" => match self.route_prompt(&msg) {
                Ok((index, msg)) => self.forward(index, msg, param_headers),
                Err(e) => self.reply_error(msg.id, code::INVALID_PARAMS, &e),
            },
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                let uri = msg.params.as_deref().and_then(|p| jsonrpc::string_field(p, "uri"));
                match uri.and_then(|u| self.route_uri(&u)) {
                    Some(index) => self.forward(index, msg, param_headers),
                    None => {
                        self.reply_error(msg.id, code::INVALID_PARAMS, "unknown resource URI: list resources first")
                    }
                }
            }
            "completion/complete" => match self.route_completion(&msg) {
                Ok((index, msg)) => self.forward(index, msg, param_headers),
                Err(e) => self.reply_error(msg.id, code::INVALID_PARAMS, &e),
            },
            m if m.starts_with("tasks/") => {
                let task = msg.params.as_deref().and_then(|p| jsonrpc::string_field(p, "taskId"));
                let index = task.and_then(|t| self.task_routes.get(&t).copied()).unwrap_or(0);
                self.forward(index, msg, param_headers);
            }
            // Anything else goes to the first upstream, unchanged.
            _ => self.forward(0, msg, param_headers),
        }
    }

    fn on_client_notification(&mut self, msg: Message) {
        if is_request_method(msg.method()) {
            // A request without an id would reach the upstream unanswered and, for `tools/call`,
            // ungated: it is nobody's notification to relay.
            warn!(method = msg.method(), "client sent a request method as a notification; dropped");
            return;
        }
        match msg.method() {
            "notifications/initialized" => {
                self.client_initialized = true;
                self.broadcast(&msg);
                if self.multi {
                    for index in 0..self.upstreams.len() {
                        self.fetch_tools(index);
                    }
                }
            }
            "notifications/cancelled" => {
                let Some(params) = msg.params.as_deref() else { return };
                let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
                let Some(request_id) = jsonrpc::get(&obj, "requestId").map(|r| r.get().to_owned()) else { return };
                if self.abandon_held(&request_id) {
                    return;
                }
                let Some((index, up_id)) = self.client_requests.remove(&request_id) else {
                    debug!(request_id, "cancel for a request that is not in flight");
                    return;
                };
                self.upstreams[index].answered(up_id);
                jsonrpc::set(&mut obj, "requestId", jsonrpc::number_id(up_id));
                let out = Message { params: Some(jsonrpc::object_to_raw(&obj)), ..msg };
                self.send_upstream(index, &out, None);
            }
            _ => self.broadcast(&msg),
        }
    }

    fn on_client_response(&mut self, mut msg: Message) {
        let Some(our_id) = msg.id_text().and_then(|t| t.parse::<u64>().ok()) else {
            warn!("response from the client with an id the proxy never sent; dropped");
            return;
        };
        if self.own_requests.remove(&our_id) {
            // The answer to the proxy's own elicitation: nothing to do with it.
            return;
        }
        let Some((index, up_id)) = self.server_requests.remove(&our_id) else {
            warn!(id = our_id, "response from the client to no pending request; dropped");
            return;
        };
        msg.id = Some(up_id);
        self.send_upstream(index, &msg, None);
    }

    fn broadcast(&mut self, msg: &Message) {
        for index in 0..self.upstreams.len() {
            self.send_upstream(index, msg, None);
        }
    }

    /// Sends a client request to one upstream under a fresh id.
    fn forward(&mut self, index: usize, msg: Message, param_headers: Vec<(String, String)>) {
        self.forward_tracked(index, msg, param_headers, None);
    }

    fn forward_tracked(
        &mut self,
        index: usize,
        mut msg: Message,
        param_headers: Vec<(String, String)>,
        hook: Option<OutcomeHook>,
    ) {
        let Some(client_id) = msg.id.take() else { return };
        if self.upstreams[index].link.is_none() {
            let text = format!("upstream `{}` is not running; it is being restarted", self.upstreams[index].cfg.name);
            if let Some(hook) = hook {
                hook(Outcome::Error(&text));
            }
            self.reply_error(Some(client_id), code::UPSTREAM_ERROR, &text);
            return;
        }
        let method = msg.method().to_owned();
        if method == "tools/call" || method.starts_with("prompts/get") || method == "resources/read" {
            self.track_progress(&mut msg, client_id.get());
        }
        let up = &mut self.upstreams[index];
        let up_id = up.next_id;
        up.next_id += 1;
        let tools_first_page = method == "tools/list" && !has_cursor(&msg);
        self.client_requests.insert(client_id.get().to_owned(), (index, up_id));
        up.wait_for(up_id, &method, Pending::Client { client_id, method: method.clone(), tools_first_page, hook });
        msg.id = Some(jsonrpc::number_id(up_id));
        let mut out = outgoing(&msg, up.is_http());
        out.request_id = Some(up_id);
        out.param_headers = param_headers;
        let Some(Err(e)) = up.link.as_ref().map(|link| link.send(out)) else { return };
        // Refused: the request gets its error now.
        let text = format!("upstream `{}`: {e}", up.cfg.name);
        warn!("{text}");
        if let Some(pending) = up.answered(up_id) {
            self.fail_pending(index, pending, &text);
        }
    }

    /// Records a request's progress token so its notifications reach the right client stream,
    /// remapping it when the session is shared.
    fn track_progress(&mut self, msg: &mut Message, client_id: &str) {
        let Some(params) = msg.params.as_deref() else { return };
        if !params.get().contains("progressToken") {
            return;
        }
        let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
        let Some(meta) = jsonrpc::get(&obj, "_meta") else { return };
        let Ok(mut meta) = jsonrpc::parse_object(meta) else { return };
        let Some(token) = jsonrpc::get(&meta, "progressToken").map(|t| t.to_owned()) else { return };
        if self.opts.shared {
            let ours = jsonrpc::to_raw(&format!("mcp-gate-{}", self.next_progress));
            self.next_progress += 1;
            self.progress.insert(
                ours.get().to_owned(),
                ProgressEntry { client_id: client_id.to_owned(), original: Some(token) },
            );
            jsonrpc::set(&mut meta, "progressToken", ours);
            jsonrpc::set(&mut obj, "_meta", jsonrpc::object_to_raw(&meta));
            msg.params = Some(jsonrpc::object_to_raw(&obj));
        } else {
            self.progress
                .insert(token.get().to_owned(), ProgressEntry { client_id: client_id.to_owned(), original: None });
        }
    }

    fn send_upstream(&mut self, index: usize, msg: &Message, request_id: Option<u64>) {
        let up = &self.upstreams[index];
        let Some(link) = &up.link else {
            debug!(server = %up.cfg.name, method = msg.method(), "upstream down; message dropped");
            return;
        };
        let mut out = outgoing(msg, up.is_http());
        out.request_id = request_id;
        if let Err(e) = link.send(out) {
            warn!(server = %up.cfg.name, method = msg.method(), "message dropped: {e}");
            // A request the proxy sent for itself fails now rather than at its deadline.
            if let Some(id) = request_id
                && let Some(pending) = self.upstreams[index].answered(id)
            {
                let text = format!("upstream `{}`: {e}", self.upstreams[index].cfg.name);
                self.fail_pending(index, pending, &text);
            }
        }
    }

    /// Sends the proxy's own request to an upstream.
    fn internal_request(&mut self, index: usize, method: &str, params: Option<Box<RawValue>>, pending: Pending) {
        let params = self.with_modern_meta(params);
        let up = &mut self.upstreams[index];
        let up_id = up.next_id;
        up.next_id += 1;
        up.wait_for(up_id, method, pending);
        let msg = Message::request(jsonrpc::number_id(up_id), method, params);
        self.send_upstream(index, &msg, Some(up_id));
    }

    /// 2026-07-28 requests carry the client's version and capabilities in `_meta`; the proxy's
    /// own requests repeat those of the client's latest request.
    fn with_modern_meta(&self, params: Option<Box<RawValue>>) -> Option<Box<RawValue>> {
        let Some(meta) = &self.modern_meta else { return params };
        let mut obj = params.as_deref().and_then(|p| jsonrpc::parse_object(p).ok()).unwrap_or_default();
        jsonrpc::set(&mut obj, "_meta", jsonrpc::object_to_raw(meta));
        Some(jsonrpc::object_to_raw(&obj))
    }

    fn note_modern_meta(&mut self, msg: &Message) {
        let Some(params) = msg.params.as_deref() else { return };
        if !params.get().contains(era::VERSION_META) {
            return;
        }
        let Some(meta) = jsonrpc::parse_object(params)
            .ok()
            .and_then(|o| jsonrpc::get(&o, "_meta").and_then(|m| jsonrpc::parse_object(m).ok()))
        else {
            return;
        };
        let reserved: jsonrpc::RawObject =
            meta.into_iter().filter(|(k, _)| k.starts_with("io.modelcontextprotocol/")).collect();
        if self.client_name.is_none()
            && let Some(info) = jsonrpc::get(&reserved, "io.modelcontextprotocol/clientInfo")
        {
            self.client_name = jsonrpc::string_field(info, "name");
        }
        self.modern_meta = Some(reserved);
    }

    /// Keeps what the session needs to know of a client request: the reserved `_meta` of
    /// 2026-07-28, the client's era, and the `subscriptions/listen` streams it opens.
    fn note_request(&mut self, msg: &Message) {
        self.note_modern_meta(msg);
        let era = self.era_of(msg);
        self.era = Some(era);
        if era.is_modern()
            && msg.method() == "subscriptions/listen"
            && let Some(id) = msg.id_text()
        {
            let filter = msg
                .params
                .as_deref()
                .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
                .and_then(|mut v| v.get_mut("notifications").map(Value::take))
                .unwrap_or(Value::Null);
            // Forget the streams that ended, so the map holds only open ones.
            self.listens.retain(|id, _| self.client_requests.contains_key(id));
            self.listens.insert(id.to_owned(), filter);
        }
    }

    /// The era of a client request: the version it names in `_meta` (2026-07-28), else the
    /// version negotiated by `initialize`, else the legacy era (a client that has not
    /// negotiated yet, or sends `initialize` itself).
    fn era_of(&self, msg: &Message) -> Era {
        if let Some(era) = Era::of_request(msg) {
            return era;
        }
        self.upstreams
            .iter()
            .filter_map(|u| u.init_result.as_ref()?.get("protocolVersion")?.as_str())
            .min()
            .map_or(Era::Legacy, Era::of_version)
    }

    // ---- tools/call: routing, tool list, gate ----

    fn on_tools_call(&mut self, msg: Message, param_headers: Vec<(String, String)>) {
        let Some(params) = msg.params.as_deref() else {
            return self.reply_error(msg.id, code::INVALID_PARAMS, "tools/call needs params");
        };
        let Some(name) = jsonrpc::string_field(params, "name") else {
            return self.reply_error(msg.id, code::INVALID_PARAMS, "tools/call needs a tool name");
        };
        let (index, tool_name) = match self.route_tool(&name) {
            Ok(Some(route)) => route,
            Ok(None) => {
                // An unprefixed tool of a server whose list we do not have yet.
                self.park(msg);
                return;
            }
            Err(e) => return self.reply_error(msg.id, code::INVALID_PARAMS, &e),
        };
        if self.upstreams[index].tools.is_none() {
            if self.upstreams[index].link.is_some() {
                self.park(msg);
                self.fetch_tools(index);
                return;
            }
            // The upstream is down: forward() answers with the error.
            return self.forward(index, msg, param_headers);
        }
        let tool = self.upstreams[index].tools.as_ref().and_then(|t| t.get(&tool_name));
        // The message passed the strict reading, so this parse sees exactly what the upstream
        // will; should it fail anyway, the call is refused rather than judged on a default.
        let arguments = match serde_json::from_str::<Value>(params.get()) {
            Ok(Value::Object(mut p)) => p.remove("arguments").unwrap_or(Value::Null),
            Ok(_) => return self.reply_error(msg.id, code::INVALID_PARAMS, "tools/call params must be an object"),
            Err(e) => {
                let reason = format!("tools/call params could not be read: {e}");
                let names = [name.clone()];
                let server = self.upstreams[index].cfg.name.clone();
                let refused = RefusedCall { server: &server, tool_names: &names, agent: self.agent(), reason: &reason };
                self.opts.gate.refused(&refused);
                return self.reply_error(msg.id, code::INVALID_PARAMS, &reason);
            }
        };
        let gone = CancellationToken::new();
        let call = ToolCall {
            server: &self.upstreams[index].cfg.name,
            tool: &tool_name,
            exposed_name: &name,
            arguments: &arguments,
            info: tool,
            agent: self.agent(),
            progress: self.progress_sink(&msg, &gone),
            gone: gone.clone(),
        };
        match self.opts.gate.check(&call) {
            Verdict::Hold(wait) => {
                let Some(id) = msg.id_text().map(str::to_owned) else { return };
                self.held.insert(id, gone);
                // A weak handle: a held call does not keep its session alive.
                let tx = self.self_tx.clone();
                if let Some(token) = progress_token(&msg) {
                    self.held_progress.insert(token);
                }
                let msg = Box::new(msg);
                tokio::spawn(async move {
                    let verdict = wait.await;
                    match tx.upgrade() {
                        Some(tx) => {
                            let _ = tx.send(Input::Resume { msg, verdict });
                        }
                        None => {
                            if let Verdict::AllowTracked(hook) = verdict {
                                hook(Outcome::NotRun);
                            }
                        }
                    }
                });
            }
            verdict => self.apply_verdict_routed(msg, verdict, index, &tool_name, &name, param_headers),
        }
    }

    fn apply_verdict(&mut self, msg: Message, verdict: Verdict) {
        let Some(name) = msg.params.as_deref().and_then(|p| jsonrpc::string_field(p, "name")) else { return };
        match self.route_tool(&name) {
            Ok(Some((index, tool))) => self.apply_verdict_routed(msg, verdict, index, &tool, &name, Vec::new()),
            _ => self.reply_error(msg.id, code::INVALID_PARAMS, &format!("unknown tool {name:?}")),
        }
    }

    fn apply_verdict_routed(
        &mut self,
        mut msg: Message,
        verdict: Verdict,
        index: usize,
        tool: &str,
        exposed: &str,
        param_headers: Vec<(String, String)>,
    ) {
        match verdict {
            Verdict::Allow => {
                if tool != exposed {
                    rename_param(&mut msg, tool);
                }
                self.forward(index, msg, param_headers);
            }
            Verdict::AllowTracked(hook) => {
                if tool != exposed {
                    rename_param(&mut msg, tool);
                }
                self.forward_tracked(index, msg, param_headers, Some(hook));
            }
            Verdict::Respond(result) => {
                let era = self.era_of(&msg);
                if era == Era::Legacy {
                    // 2026-07-28 has no server-to-client requests: the URL is in the result.
                    self.offer_approval_url(&result);
                }
                self.reply(msg.id, era::own_result(result, era))
            }
            Verdict::Hold(_) => self.reply_error(msg.id, code::INTERNAL_ERROR, "gate held a call twice"),
        }
    }

    /// A `tools/list` result without the tools the policy hides from this agent.
    fn without_hidden_tools(&self, index: usize, result: &RawValue) -> Box<RawValue> {
        let Ok(mut obj) = jsonrpc::parse_object(result) else { return result.to_owned() };
        let server = &self.upstreams[index].cfg.name;
        let kept: Vec<Box<RawValue>> = merge::entries(result, "tools")
            .into_iter()
            .filter(|entry| {
                let Ok(list) = ToolList::from_result(&jsonrpc::to_raw(&serde_json::json!({ "tools": [entry] }))) else {
                    return true;
                };
                let hidden = list
                    .names()
                    .next()
                    .and_then(|n| list.get(n))
                    .is_some_and(|tool| self.opts.gate.hides(server, tool, self.agent()));
                !hidden
            })
            .collect();
        jsonrpc::set(&mut obj, "tools", jsonrpc::to_raw(&kept));
        if jsonrpc::get(&obj, "cacheScope").is_some() {
            // The list now depends on who asked: no shared cache may serve it to another agent.
            jsonrpc::set(&mut obj, "cacheScope", jsonrpc::to_raw("private"));
        }
        jsonrpc::object_to_raw(&obj)
    }

    /// The caller of a held call is gone (cancelled, stream closed): its wait ends without
    /// claiming, and no answer is sent for it. False when `id` is not a held call.
    fn abandon_held(&mut self, id: &str) -> bool {
        let Some(gone) = self.held.remove(id) else { return false };
        info!(id, "held call abandoned by its caller");
        gone.cancel();
        true
    }

    /// A way for the gate to send progress to the caller, when the call carried a token. It
    /// falls silent once the caller is gone.
    fn progress_sink(&self, msg: &Message, gone: &CancellationToken) -> Option<ProgressSink> {
        let params = msg.params.as_deref()?;
        if !params.get().contains("progressToken") {
            return None;
        }
        let obj = jsonrpc::parse_object(params).ok()?;
        let meta = jsonrpc::parse_object(jsonrpc::get(&obj, "_meta")?).ok()?;
        let token = jsonrpc::get(&meta, "progressToken")?.to_owned();
        let client_id = msg.id_text()?.to_owned();
        let downstream = self.downstream.clone();
        let gone = gone.clone();
        Some(ProgressSink::new(move |progress, message| {
            if gone.is_cancelled() {
                return;
            }
            let params = serde_json::json!({ "progressToken": &*token, "progress": progress, "message": message });
            let note = Message::notification("notifications/progress", Some(jsonrpc::to_raw(&params)));
            downstream.send(&note, Route::Related(&client_id));
        }))
    }

    /// A client that declared URL-mode elicitation is also asked to open the approval page of a
    /// pending call, so a person sees it even when the model does not relay the link.
    fn offer_approval_url(&mut self, result: &RawValue) {
        if !result.get().contains("\"pending\"") || !self.client_takes_url_elicitation() {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(result.get()) else { return };
        let meta = &v["_meta"]["mcp-gate/approval"];
        let (Some("pending"), Some(url), Some(id)) =
            (meta["status"].as_str(), meta["url"].as_str(), meta["id"].as_str())
        else {
            return;
        };
        let our_id = self.next_client_id;
        self.next_client_id += 1;
        self.own_requests.insert(our_id);
        let params = serde_json::json!({
            "mode": "url",
            "elicitationId": id,
            "url": url,
            "message": "A tool call is waiting for your approval. Open the page to approve or deny it.",
        });
        let request =
            Message::request(jsonrpc::number_id(our_id), "elicitation/create", Some(jsonrpc::to_raw(&params)));
        self.downstream.send(&request, Route::Unrelated);
    }

    /// Whether the client declared URL-mode elicitation in `initialize` (only clients of the
    /// legacy era are offered the URL this way).
    fn client_takes_url_elicitation(&self) -> bool {
        self.initialize_params
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
            .is_some_and(|v| v.pointer("/capabilities/elicitation/url").is_some())
    }

    /// Finds the upstream of an exposed tool name. `Ok(None)`: not known until tool lists arrive.
    fn route_tool(&self, exposed: &str) -> Result<Option<(usize, String)>, String> {
        if !self.multi {
            return Ok(Some((0, exposed.to_owned())));
        }
        if let Some((server, rest)) = merge::split_prefixed(exposed, &self.opts.separator)
            && let Some(index) = self.upstreams.iter().position(|u| u.cfg.prefix && u.cfg.name == server)
        {
            return Ok(Some((index, rest.to_owned())));
        }
        let mut unknown = false;
        for (index, up) in self.upstreams.iter().enumerate().filter(|(_, u)| !u.cfg.prefix) {
            match &up.tools {
                Some(list) if list.get(exposed).is_some() => return Ok(Some((index, exposed.to_owned()))),
                Some(_) => {}
                None => unknown = true,
            }
        }
        if unknown { Ok(None) } else { Err(format!("unknown tool {exposed:?}")) }
    }

    fn park(&mut self, msg: Message) {
        self.parked.push_back(msg);
        for index in 0..self.upstreams.len() {
            if self.upstreams[index].tools.is_none() && !self.upstreams[index].cfg.prefix {
                self.fetch_tools(index);
            }
        }
    }

    fn fetch_tools(&mut self, index: usize) {
        let up = &mut self.upstreams[index];
        if up.fetching_tools || up.tools.is_some() || up.link.is_none() {
            return;
        }
        up.fetching_tools = true;
        self.internal_request(index, "tools/list", None, Pending::ToolsFetch(Vec::new()));
    }

    fn tools_fetched(&mut self, index: usize, list: Option<ToolList>) {
        let up = &mut self.upstreams[index];
        up.fetching_tools = false;
        match list {
            Some(list) => up.tools = Some(list),
            None => {
                // Could not get the list: the calls waiting for it fail closed.
                let name = up.cfg.name.clone();
                for msg in std::mem::take(&mut self.parked) {
                    self.reply_error(
                        msg.id,
                        code::UPSTREAM_ERROR,
                        &format!("upstream `{name}` did not list its tools"),
                    );
                }
                return;
            }
        }
        if self.multi
            && let Err(e) = self.check_collisions()
        {
            warn!("{e}");
            self.downstream.fatal(&e);
            for msg in std::mem::take(&mut self.parked) {
                self.reply_error(msg.id, code::INTERNAL_ERROR, &e);
            }
            return;
        }
        let parked = std::mem::take(&mut self.parked);
        for msg in parked {
            self.on_tools_call(msg, Vec::new());
        }
    }

    /// Two upstreams exposing the same tool name is a configuration error.
    fn check_collisions(&self) -> Result<(), String> {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for up in &self.upstreams {
            let Some(list) = &up.tools else { continue };
            for tool in list.names() {
                let exposed = merge::exposed_name(&up.cfg.name, tool, up.cfg.prefix, &self.opts.separator);
                if let Some(other) = seen.insert(exposed.clone(), &up.cfg.name) {
                    return Err(format!(
                        "tool name collision: `{exposed}` is exposed by both `{other}` and `{}`; set `prefix = true` on one of them",
                        up.cfg.name
                    ));
                }
            }
        }
        Ok(())
    }

    // ---- several upstreams ----

    fn fan_out(&mut self, msg: Message, include: impl Fn(&Upstream) -> bool) {
        let targets: Vec<usize> = (0..self.upstreams.len())
            .filter(|&i| self.upstreams[i].link.is_some() && include(&self.upstreams[i]))
            .collect();
        self.fan_out_to(msg, targets.into_iter().map(|i| (i, None)).collect());
    }

    /// Sends a request to several upstreams; `params` overrides the request's params per upstream.
    fn fan_out_to(&mut self, msg: Message, targets: Vec<(usize, Option<Box<RawValue>>)>) {
        let Some(client_id) = msg.id.clone() else { return };
        let fanout_id = self.next_fanout;
        self.next_fanout += 1;
        let era = self.era_of(&msg);
        self.fanouts.insert(
            fanout_id,
            Fanout { client_id, method: msg.method().to_owned(), era, waiting: targets.len(), parts: Vec::new() },
        );
        if targets.is_empty() {
            self.finish_fanout(fanout_id);
            return;
        }
        for (index, params) in targets {
            let up = &mut self.upstreams[index];
            let up_id = up.next_id;
            up.next_id += 1;
            up.wait_for(up_id, msg.method(), Pending::Fanout(fanout_id));
            let part = Message {
                id: Some(jsonrpc::number_id(up_id)),
                method: msg.method.clone(),
                params: params.or_else(|| msg.params.as_ref().map(|p| p.to_owned())),
                ..Message::default()
            };
            self.send_upstream(index, &part, Some(up_id));
        }
    }

    fn fanout_part(&mut self, fanout_id: u64, index: usize, outcome: PartOutcome) {
        let Some(f) = self.fanouts.get_mut(&fanout_id) else { return };
        f.parts.push((index, outcome));
        f.waiting -= 1;
        if f.waiting == 0 {
            self.finish_fanout(fanout_id);
        }
    }

    fn finish_fanout(&mut self, fanout_id: u64) {
        let Some(f) = self.fanouts.remove(&fanout_id) else { return };
        let mut ok: Vec<(usize, Box<RawValue>)> = Vec::new();
        let mut first_error = None;
        for (index, outcome) in f.parts {
            match outcome {
                Ok(r) => ok.push((index, r)),
                Err(e) => {
                    warn!(server = %self.upstreams[index].cfg.name, method = %f.method, error = %e.get(), "upstream failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        ok.sort_by_key(|(i, _)| *i);
        if ok.is_empty()
            && let Some(error) = first_error
        {
            let msg = Message { id: Some(f.client_id), error: Some(error), ..Message::default() };
            self.downstream.send(&msg, Route::Reply);
            return;
        }
        let values = |ok: &[(usize, Box<RawValue>)], ups: &[Upstream]| -> Vec<(String, Value)> {
            ok.iter()
                .map(|(i, r)| (ups[*i].cfg.name.clone(), serde_json::from_str(r.get()).unwrap_or(Value::Null)))
                .collect()
        };
        let ttl = era::min_ttl(ok.iter().map(|(_, r)| &**r));
        let result = match f.method.as_str() {
            "initialize" => {
                for (i, r) in &ok {
                    self.upstreams[*i].init_result = serde_json::from_str(r.get()).ok();
                }
                let parts = values(&ok, &self.upstreams);
                let parts: Vec<(&str, Value)> = parts.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
                let requested =
                    self.initialize_params.as_deref().and_then(|p| jsonrpc::string_field(p, "protocolVersion"));
                jsonrpc::to_raw(&merge::merge_initialize(&parts, requested.as_deref()))
            }
            "server/discover" => {
                let parts = values(&ok, &self.upstreams);
                let parts: Vec<(&str, Value)> = parts.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
                jsonrpc::to_raw(&merge::merge_discover(&parts))
            }
            "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
                let merged = self.merge_list(&f.method, ok);
                if f.era.is_modern() { era::cacheable(merged, ttl) } else { merged }
            }
            _ => jsonrpc::to_raw(&serde_json::json!({})),
        };
        self.reply(Some(f.client_id), era::own_result(result, f.era));
    }

    fn list(&mut self, msg: Message) {
        let cursor = msg.params.as_deref().and_then(|p| jsonrpc::string_field(p, "cursor"));
        let position: ListPosition = match cursor {
            Some(c) => match merge::decode_cursor(&c) {
                Some(p) => p,
                None => return self.reply_error(msg.id, code::INVALID_PARAMS, "invalid cursor"),
            },
            None => (0..self.upstreams.len()).map(|i| (i, None)).collect(),
        };
        let capability = match msg.method() {
            "tools/list" => "tools",
            "prompts/list" => "prompts",
            _ => "resources",
        };
        let mut targets = Vec::new();
        for (index, cursor) in position {
            let Some(up) = self.upstreams.get(index) else { continue };
            if up.link.is_none() {
                continue;
            }
            // Skip upstreams whose initialize result says they lack the capability.
            if let Some(init) = &up.init_result
                && init.pointer(&format!("/capabilities/{capability}")).is_none()
            {
                continue;
            }
            let mut obj = msg.params.as_deref().and_then(|p| jsonrpc::parse_object(p).ok()).unwrap_or_default();
            obj.retain(|(k, _)| k != "cursor");
            if let Some(c) = cursor {
                obj.push(("cursor".to_owned(), jsonrpc::to_raw(&c)));
            }
            let params = (!obj.is_empty()).then(|| jsonrpc::object_to_raw(&obj));
            targets.push((index, params));
        }
        self.fan_out_to(msg, targets);
    }

    fn merge_list(&mut self, method: &str, parts: Vec<(usize, Box<RawValue>)>) -> Box<RawValue> {
        let key = match method {
            "tools/list" => "tools",
            "prompts/list" => "prompts",
            "resources/list" => "resources",
            _ => "resourceTemplates",
        };
        let mut merged: Vec<Box<RawValue>> = Vec::new();
        let mut next: ListPosition = Vec::new();
        for (index, result) in parts {
            let next_cursor = jsonrpc::string_field(&result, "nextCursor");
            let up = &self.upstreams[index];
            let (name, prefix, sep) = (up.cfg.name.clone(), up.cfg.prefix, self.opts.separator.clone());
            let result = if key == "tools" && self.opts.gate.hides_any() {
                self.without_hidden_tools(index, &result)
            } else {
                result
            };
            let entries = match key {
                "tools" | "prompts" => {
                    merge::rename_entries(&result, key, |n| merge::exposed_name(&name, n, prefix, &sep))
                        .unwrap_or_default()
                }
                _ => merge::entries(&result, key),
            };
            match key {
                "tools" if next_cursor.is_none() => {
                    // A first page without continuation is the whole list: keep it for policy.
                    if let Ok(list) = ToolList::from_result(&result) {
                        self.upstreams[index].tools = Some(list);
                    }
                }
                "resources" => {
                    for e in &entries {
                        if let Some(uri) = jsonrpc::string_field(e, "uri") {
                            self.resource_routes.insert(uri, index);
                        }
                    }
                }
                "resourceTemplates" => {
                    for e in &entries {
                        if let Some(t) = jsonrpc::string_field(e, "uriTemplate") {
                            let prefix = merge::template_prefix(&t).to_owned();
                            self.template_routes.retain(|(p, _)| p != &prefix);
                            self.template_routes.push((prefix, index));
                        }
                    }
                }
                _ => {}
            }
            merged.extend(entries);
            if let Some(c) = next_cursor {
                next.push((index, Some(c)));
            }
        }
        let mut out = serde_json::Map::new();
        let list = jsonrpc::to_raw(&merged);
        out.insert(key.to_owned(), serde_json::from_str(list.get()).unwrap_or(Value::Array(Vec::new())));
        if let Some(c) = merge::encode_cursor(&next) {
            out.insert("nextCursor".to_owned(), Value::String(c));
        }
        jsonrpc::to_raw(&out)
    }

    fn route_prompt(&self, msg: &Message) -> Result<(usize, Message), String> {
        let name =
            msg.params.as_deref().and_then(|p| jsonrpc::string_field(p, "name")).ok_or("prompts/get needs a name")?;
        let (index, original) = self.route_named(&name)?;
        let mut out = Message {
            id: msg.id.clone(),
            method: msg.method.clone(),
            params: msg.params.clone(),
            result: None,
            error: None,
            extra: msg.extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        if original != name {
            rename_param(&mut out, &original);
        }
        Ok((index, out))
    }

    /// Routes a prefixed name to its server; an unprefixed one to the first unprefixed server.
    fn route_named(&self, name: &str) -> Result<(usize, String), String> {
        if let Some((server, rest)) = merge::split_prefixed(name, &self.opts.separator)
            && let Some(index) = self.upstreams.iter().position(|u| u.cfg.prefix && u.cfg.name == server)
        {
            return Ok((index, rest.to_owned()));
        }
        self.upstreams
            .iter()
            .position(|u| !u.cfg.prefix)
            .map(|i| (i, name.to_owned()))
            .ok_or_else(|| format!("unknown name {name:?}: expected SERVER{}NAME", self.opts.separator))
    }

    fn route_uri(&self, uri: &str) -> Option<usize> {
        if let Some(&index) = self.resource_routes.get(uri) {
            return Some(index);
        }
        self.template_routes
            .iter()
            .filter(|(prefix, _)| uri.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, index)| *index)
    }

    fn route_completion(&self, msg: &Message) -> Result<(usize, Message), String> {
        let params: Value = msg
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .ok_or("completion/complete needs params")?;
        let reference = params.get("ref").ok_or("completion/complete needs a ref")?;
        match reference.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => {
                let name = reference.get("name").and_then(Value::as_str).ok_or("ref/prompt needs a name")?;
                let (index, original) = self.route_named(name)?;
                let mut params = params.clone();
                params["ref"]["name"] = Value::String(original);
                let out = Message {
                    id: msg.id.clone(),
                    method: msg.method.clone(),
                    params: Some(jsonrpc::to_raw(&params)),
                    ..Message::default()
                };
                Ok((index, out))
            }
            Some("ref/resource") => {
                let uri = reference.get("uri").and_then(Value::as_str).ok_or("ref/resource needs a uri")?;
                let index = self.route_uri(uri).ok_or("unknown resource URI: list resources first")?;
                let out = Message {
                    id: msg.id.clone(),
                    method: msg.method.clone(),
                    params: msg.params.clone(),
                    ..Message::default()
                };
                Ok((index, out))
            }
            _ => Err("unknown completion ref type".into()),
        }
    }

    // ---- upstream -> client ----

    fn on_upstream(&mut self, index: usize, generation: u64, event: UpstreamEvent) {
        if self.upstreams[index].generation != generation {
            return;
        }
        match event {
            UpstreamEvent::Message { msg, related } => match msg.kind() {
                Kind::Response => self.on_upstream_response(index, msg),
                Kind::Request => self.on_upstream_request(index, msg, related),
                Kind::Notification => self.on_upstream_notification(index, msg, related),
            },
            UpstreamEvent::TooLarge { id } => self.on_too_large(index, id),
            UpstreamEvent::Closed { reason } => self.on_upstream_closed(index, reason),
        }
    }

    /// The upstream's answer to `up_id` was over the size limit: the request gets an error.
    fn on_too_large(&mut self, index: usize, up_id: u64) {
        let Some(pending) = self.upstreams[index].answered(up_id) else { return };
        let text = format!(
            "upstream `{}` answered with a message over the {}-byte limit; it was dropped",
            self.upstreams[index].cfg.name,
            crate::wire::MAX_MESSAGE_BYTES
        );
        warn!(up_id, "{text}");
        self.fail_pending(index, pending, &text);
    }

    /// Answers a request that will get no answer from its upstream with an error.
    fn fail_pending(&mut self, index: usize, pending: Pending, text: &str) {
        match pending {
            Pending::Client { client_id, hook, .. } => {
                if let Some(hook) = hook {
                    hook(Outcome::Error(text));
                }
                self.client_requests.remove(client_id.get());
                if !self.progress.is_empty() {
                    self.progress.retain(|_, e| e.client_id != client_id.get());
                }
                self.reply_error(Some(client_id), code::UPSTREAM_ERROR, text);
            }
            Pending::Fanout(f) => {
                let error = jsonrpc::to_raw(&serde_json::json!({"code": code::UPSTREAM_ERROR, "message": text}));
                self.fanout_part(f, index, Err(error));
            }
            Pending::ToolsFetch(_) => self.tools_fetched(index, None),
            Pending::Reinit => {}
        }
    }

    fn on_upstream_response(&mut self, index: usize, mut msg: Message) {
        let Some(up_id) = msg.id_text().and_then(|t| t.parse::<u64>().ok()) else {
            warn!(server = %self.upstreams[index].cfg.name, "response with an id the proxy never sent: {msg}");
            return;
        };
        let Some(pending) = self.upstreams[index].answered(up_id) else {
            debug!(server = %self.upstreams[index].cfg.name, up_id, "response to a cancelled or unknown request");
            return;
        };
        match pending {
            Pending::Client { client_id, method, tools_first_page, hook } => {
                if let Some(hook) = hook {
                    match (&msg.result, &msg.error) {
                        (Some(result), _) => hook(Outcome::Result(result)),
                        (None, Some(error)) => hook(Outcome::Error(error.get())),
                        (None, None) => hook(Outcome::Error("empty response")),
                    }
                }
                self.client_requests.remove(client_id.get());
                if !self.progress.is_empty() {
                    self.progress.retain(|_, e| e.client_id != client_id.get());
                }
                if let Some(result) = msg.result.as_deref() {
                    self.observe_result(index, &method, result, tools_first_page);
                }
                if method == "tools/list"
                    && self.opts.gate.hides_any()
                    && let Some(result) = msg.result.as_deref()
                {
                    msg.result = Some(self.without_hidden_tools(index, result));
                }
                msg.id = Some(client_id);
                self.downstream.send(&msg, Route::Reply);
            }
            Pending::Fanout(fanout_id) => {
                let outcome = match (msg.result, msg.error) {
                    (Some(r), _) => Ok(r),
                    (None, Some(e)) => Err(e),
                    (None, None) => Err(jsonrpc::to_raw(
                        &serde_json::json!({"code": code::UPSTREAM_ERROR, "message": "empty response"}),
                    )),
                };
                self.fanout_part(fanout_id, index, outcome);
            }
            Pending::ToolsFetch(mut pages) => {
                let Some(result) = msg.result else {
                    warn!(server = %self.upstreams[index].cfg.name, "tools/list failed: {}", msg.error.as_deref().map_or("", RawValue::get));
                    return self.tools_fetched(index, None);
                };
                let next = jsonrpc::string_field(&result, "nextCursor");
                pages.push(result);
                match next {
                    Some(cursor) if pages.len() < 1000 => {
                        let params = jsonrpc::to_raw(&serde_json::json!({ "cursor": cursor }));
                        self.internal_request(index, "tools/list", Some(params), Pending::ToolsFetch(pages));
                    }
                    _ => {
                        let list = ToolList::from_pages(&pages);
                        self.tools_fetched(index, Some(list));
                    }
                }
            }
            Pending::Reinit => {
                if msg.result.is_some() {
                    self.upstreams[index].init_result =
                        msg.result.as_deref().and_then(|r| serde_json::from_str(r.get()).ok());
                    self.send_upstream(index, &Message::notification("notifications/initialized", None), None);
                    self.announce_list_changes(index);
                } else {
                    warn!(server = %self.upstreams[index].cfg.name, "re-initialize after restart failed: {msg}");
                }
            }
        }
    }

    /// Keeps what the proxy needs from results it relays (single upstream).
    fn observe_result(&mut self, index: usize, method: &str, result: &RawValue, tools_first_page: bool) {
        match method {
            "tools/list" if tools_first_page => {
                if jsonrpc::string_field(result, "nextCursor").is_none()
                    && let Ok(list) = ToolList::from_result(result)
                {
                    self.upstreams[index].tools = Some(list);
                }
            }
            "initialize" => self.upstreams[index].init_result = serde_json::from_str(result.get()).ok(),
            "tools/call" if self.multi => {
                // A task handle (2025-11-25 `task.taskId`, 2026-07-28 `taskId`) belongs to this upstream.
                if let Ok(v) = serde_json::from_str::<Value>(result.get())
                    && let Some(id) = v.pointer("/task/taskId").or_else(|| v.get("taskId")).and_then(Value::as_str)
                {
                    self.task_routes.insert(id.to_owned(), index);
                }
            }
            _ => {}
        }
    }

    fn on_upstream_request(&mut self, index: usize, mut msg: Message, related: Option<u64>) {
        let our_id = self.next_client_id;
        self.next_client_id += 1;
        let Some(up_id) = msg.id.replace(jsonrpc::number_id(our_id)) else { return };
        self.server_requests.insert(our_id, (index, up_id));
        let related = self.related_client_request(index, related);
        match related {
            Some(id) => self.downstream.send(&msg, Route::Related(&id)),
            None => self.downstream.send(&msg, Route::Unrelated),
        }
    }

    /// The client request an upstream message belongs to: the one whose HTTP stream carried it,
    /// or the only one in flight.
    fn related_client_request(&self, index: usize, related: Option<u64>) -> Option<String> {
        if let Some(up_id) = related
            && let Some(Pending::Client { client_id, .. }) = self.upstreams[index].pending.get(&up_id)
        {
            return Some(client_id.get().to_owned());
        }
        let mut in_flight = self.client_requests.iter().filter(|(_, (i, _))| *i == index);
        match (in_flight.next(), in_flight.next()) {
            (Some((id, _)), None) => Some(id.clone()),
            _ => None,
        }
    }

    fn on_upstream_notification(&mut self, index: usize, mut msg: Message, related: Option<u64>) {
        match msg.method() {
            "notifications/progress" => {
                let Some(params) = msg.params.as_deref() else { return };
                let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
                let Some(token) = jsonrpc::get(&obj, "progressToken").map(|t| t.get().to_owned()) else { return };
                if self.held_progress.contains(&token) && !self.progress.contains_key(&token) {
                    warn!(server = %self.upstreams[index].cfg.name, "dropped progress for a held call");
                    return;
                }
                let Some(entry) = self.progress.get(&token) else {
                    return self.downstream.send(&msg, Route::Unrelated);
                };
                let client_id = entry.client_id.clone();
                if let Some(original) = &entry.original {
                    jsonrpc::set(&mut obj, "progressToken", original.clone());
                    msg.params = Some(jsonrpc::object_to_raw(&obj));
                }
                self.downstream.send(&msg, Route::Related(&client_id));
                return;
            }
            "notifications/cancelled" => {
                // Cancels a request the upstream sent to the client, or ends a listen stream
                // the client opened (2026-07-28).
                let Some(params) = msg.params.as_deref() else { return };
                let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
                let Some(request_id) = jsonrpc::get(&obj, "requestId").map(|r| r.get().to_owned()) else { return };
                let ours = self
                    .server_requests
                    .iter()
                    .find(|(_, (i, up))| *i == index && up.get() == request_id)
                    .map(|(ours, _)| *ours);
                let mapped = match ours {
                    Some(ours) => {
                        self.server_requests.remove(&ours);
                        Some(jsonrpc::number_id(ours))
                    }
                    None => request_id.parse::<u64>().ok().and_then(|up_id| {
                        match self.upstreams[index].pending.get(&up_id) {
                            Some(Pending::Client { client_id, .. }) => Some(client_id.clone()),
                            _ => None,
                        }
                    }),
                };
                let Some(mapped) = mapped else { return };
                jsonrpc::set(&mut obj, "requestId", mapped);
                msg.params = Some(jsonrpc::object_to_raw(&obj));
            }
            "notifications/tools/list_changed" => {
                self.upstreams[index].tools = None;
            }
            _ => {}
        }
        let listen = self.map_subscription_id(index, &mut msg);
        let related = match msg.method() {
            "notifications/message" => self.related_client_request(index, related),
            _ => related.and_then(|r| match self.upstreams[index].pending.get(&r) {
                Some(Pending::Client { client_id, .. }) => Some(client_id.get().to_owned()),
                _ => None,
            }),
        };
        let related = related.or(listen);
        match related {
            Some(id) => self.downstream.send(&msg, Route::Related(&id)),
            None => self.downstream.send(&msg, Route::Unrelated),
        }
    }

    /// A notification of a `subscriptions/listen` stream (2026-07-28) names the stream by the id
    /// the upstream got; the client knows it by its own. Returns that id: the stream it goes on.
    fn map_subscription_id(&self, index: usize, msg: &mut Message) -> Option<String> {
        let params = msg.params.as_deref()?;
        if !params.get().contains(era::SUBSCRIPTION_META) {
            return None;
        }
        let mut obj = jsonrpc::parse_object(params).ok()?;
        let mut meta = jsonrpc::parse_object(jsonrpc::get(&obj, "_meta")?).ok()?;
        let up_id = jsonrpc::get(&meta, era::SUBSCRIPTION_META)?.get().parse::<u64>().ok()?;
        let Some(Pending::Client { client_id, .. }) = self.upstreams[index].pending.get(&up_id) else { return None };
        jsonrpc::set(&mut meta, era::SUBSCRIPTION_META, client_id.clone());
        jsonrpc::set(&mut obj, "_meta", jsonrpc::object_to_raw(&meta));
        msg.params = Some(jsonrpc::object_to_raw(&obj));
        Some(client_id.get().to_owned())
    }

    fn on_upstream_closed(&mut self, index: usize, reason: String) {
        let up = &mut self.upstreams[index];
        let name = up.cfg.name.clone();
        warn!(server = %name, %reason, "upstream stopped");
        up.link = None;
        up.tools = None;
        up.fetching_tools = false;
        let pending = up.take_pending();
        let text = format!("upstream `{name}` stopped before answering: {reason}");
        for (_, p) in pending {
            match p {
                Pending::Client { client_id, hook, .. } => {
                    if let Some(hook) = hook {
                        hook(Outcome::Error(&text));
                    }
                    self.client_requests.remove(client_id.get());
                    self.reply_error(Some(client_id), code::UPSTREAM_ERROR, &text);
                }
                Pending::Fanout(f) => {
                    let error = jsonrpc::to_raw(&serde_json::json!({"code": code::UPSTREAM_ERROR, "message": text}));
                    self.fanout_part(f, index, Err(error));
                }
                Pending::ToolsFetch(_) => self.tools_fetched(index, None),
                Pending::Reinit => {}
            }
        }
        self.server_requests.retain(|_, (i, _)| *i != index);
        self.schedule_restart(index);
    }

    /// Answers every request its upstream has not answered within its timeout with an error
    /// naming the server and the timeout, and cancels it upstream.
    fn time_out_overdue(&mut self) {
        let now = tokio::time::Instant::now();
        for index in 0..self.upstreams.len() {
            for up_id in self.upstreams[index].overdue(now) {
                let up = &mut self.upstreams[index];
                let Some(pending) = up.answered(up_id) else { continue };
                let (name, cfg) = (up.cfg.name.clone(), up.cfg.clone());
                let method = match &pending {
                    Pending::Client { method, .. } => method.as_str(),
                    Pending::Fanout(f) => self.fanouts.get(f).map_or("", |f| f.method.as_str()),
                    Pending::ToolsFetch(_) => "tools/list",
                    Pending::Reinit => "initialize",
                };
                let (secs, key) = if method == "initialize" {
                    (cfg.initialize_timeout.as_secs(), "initialize_timeout_secs")
                } else {
                    (cfg.request_timeout.as_secs(), "request_timeout_secs")
                };
                let text = format!("upstream `{name}` did not answer `{method}` within {secs} s (`{key}`)");
                warn!(server = %name, up_id, "{text}");
                if method != "initialize" {
                    let params = serde_json::json!({"requestId": up_id, "reason": "timed out"});
                    let cancel = Message::notification("notifications/cancelled", Some(jsonrpc::to_raw(&params)));
                    self.send_upstream(index, &cancel, None);
                }
                self.fail_pending(index, pending, &text);
            }
        }
    }

    fn schedule_restart(&mut self, index: usize) {
        let up = &mut self.upstreams[index];
        if up.started.elapsed() > Duration::from_secs(60) {
            up.failures = 0;
        }
        let delay = Duration::from_millis(250u64.saturating_mul(1 << up.failures.min(7))).min(Duration::from_secs(30));
        up.failures += 1;
        let generation = up.generation + 1;
        let cfg = up.cfg.clone();
        let reporter = Reporter::new(index, generation, self.up_tx.clone());
        let Some(tx) = self.self_tx.upgrade() else { return };
        info!(server = %cfg.name, delay_ms = delay.as_millis() as u64, "restarting upstream");
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if tx.is_closed() {
                return;
            }
            let link = upstream::connect(&cfg, reporter).await.map_err(|e| e.to_string());
            let _ = tx.send(Input::Restarted { index, generation, link });
        });
        // Reports from the old transport are ignored from now on.
        up.generation = generation;
    }

    fn on_restarted(&mut self, index: usize, generation: u64, link: Result<UpstreamLink, String>) {
        if self.upstreams[index].generation != generation {
            return;
        }
        match link {
            Ok(link) => {
                let up = &mut self.upstreams[index];
                up.link = Some(link);
                up.started = Instant::now();
                info!(server = %up.cfg.name, "upstream restarted");
                match self.initialize_params.clone() {
                    Some(params) => self.internal_request(index, "initialize", Some(params), Pending::Reinit),
                    None => self.announce_list_changes(index),
                }
            }
            Err(e) => {
                warn!(server = %self.upstreams[index].cfg.name, "restart failed: {e}");
                self.schedule_restart(index);
            }
        }
    }

    /// After a restart the upstream's lists may differ: tell the client to list again.
    fn announce_list_changes(&mut self, index: usize) {
        match self.era {
            // A client that has said nothing yet has listed nothing that could be stale.
            None => return,
            Some(Era::Modern) => return self.announce_on_listens(),
            Some(Era::Legacy) if self.initialize_params.is_some() && !self.client_initialized => return,
            Some(Era::Legacy) => {}
        }
        let caps = self.upstreams[index].init_result.as_ref().and_then(|r| r.get("capabilities")).cloned();
        for (cap, method) in [
            ("tools", "notifications/tools/list_changed"),
            ("prompts", "notifications/prompts/list_changed"),
            ("resources", "notifications/resources/list_changed"),
        ] {
            if caps.as_ref().is_none_or(|c| c.get(cap).is_some()) {
                self.downstream.send(&Message::notification(method, None), Route::Unrelated);
            }
        }
    }

    /// 2026-07-28 delivers list changes only on the `subscriptions/listen` streams that asked
    /// for them, tagged with the stream's id: unsolicited ones are not part of that version. The
    /// proxy announces a restart on every listen stream still open (one that went to the
    /// restarted upstream has already ended with an error, and the client listens again).
    fn announce_on_listens(&mut self) {
        self.listens.retain(|id, _| self.client_requests.contains_key(id));
        for (id, filter) in &self.listens {
            for (wanted, method) in [
                ("toolsListChanged", "notifications/tools/list_changed"),
                ("promptsListChanged", "notifications/prompts/list_changed"),
                ("resourcesListChanged", "notifications/resources/list_changed"),
            ] {
                if filter.get(wanted).and_then(Value::as_bool) != Some(true) {
                    continue;
                }
                let Ok(subscription) = RawValue::from_string(id.clone()) else { continue };
                let params = serde_json::json!({ "_meta": { era::SUBSCRIPTION_META: subscription } });
                let note = Message::notification(method, Some(jsonrpc::to_raw(&params)));
                self.downstream.send(&note, Route::Related(id));
            }
        }
    }

    // ---- replies ----

    fn reply(&self, id: Option<Box<RawValue>>, result: Box<RawValue>) {
        let Some(id) = id else { return };
        self.downstream.send(&Message::response(id, result), Route::Reply);
    }

    fn reply_error(&self, id: Option<Box<RawValue>>, code: i64, message: &str) {
        let Some(id) = id else { return };
        self.downstream.send(&Message::error(Some(id), code, message), Route::Reply);
    }
}

fn has_cursor(msg: &Message) -> bool {
    msg.params
        .as_deref()
        .is_some_and(|p| p.get().contains("\"cursor\"") && jsonrpc::string_field(p, "cursor").is_some())
}

/// Replaces `params.name` of a request.
/// Whether a method is a request in some MCP version (a client must never send it as a
/// notification).
fn is_request_method(method: &str) -> bool {
    const REQUESTS: [&str; 22] = [
        "initialize",
        "ping",
        "tools/call",
        "tools/list",
        "resources/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "resources/templates/list",
        "prompts/get",
        "prompts/list",
        "completion/complete",
        "logging/setLevel",
        "roots/list",
        "sampling/createMessage",
        "elicitation/create",
        "server/discover",
        "subscriptions/listen",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
    ];
    REQUESTS.contains(&method) || method.starts_with("tasks/")
}

fn rename_param(msg: &mut Message, name: &str) {
    let Some(params) = msg.params.as_deref() else { return };
    let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
    jsonrpc::set(&mut obj, "name", jsonrpc::to_raw(name));
    msg.params = Some(jsonrpc::object_to_raw(&obj));
}

/// Serializes a message for an upstream, with HTTP header material when it goes over HTTP.
fn outgoing(msg: &Message, http: bool) -> Outgoing {
    let mut out = Outgoing::plain(Bytes::from(msg.to_bytes()));
    if !http {
        return out;
    }
    out.method = msg.method.clone();
    if let Some(params) = msg.params.as_deref() {
        out.protocol_version = era::request_version(msg);
        out.name = match msg.method() {
            "tools/call" | "prompts/get" => jsonrpc::string_field(params, "name"),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => jsonrpc::string_field(params, "uri"),
            m if m.starts_with("tasks/") => jsonrpc::string_field(params, "taskId"),
            _ => None,
        };
    }
    out
}

/// The progress token of a request (raw text), if it carries one.
fn progress_token(msg: &Message) -> Option<String> {
    let params = msg.params.as_deref()?;
    if !params.get().contains("progressToken") {
        return None;
    }
    let obj = jsonrpc::parse_object(params).ok()?;
    let meta = jsonrpc::parse_object(jsonrpc::get(&obj, "_meta")?).ok()?;
    jsonrpc::get(&meta, "progressToken").map(|t| t.get().to_owned())
}
