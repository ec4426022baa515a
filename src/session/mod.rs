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
//!
//! The rooms: this file holds the public API and the actor's loop, which dispatches each input;
//! `relay` the id maps (requests out, answers back, progress, cancellation);
//! `calls` `tools/call` through the gate and the tool-list fetch it may wait for; `tasks` the
//! gate's tasks (advertising them, their runners, the `tasks/*` requests for them);
//! `fanout` requests to several upstreams and the merge of their answers
//! ([`merge`] the pure helpers); `routes` which upstream a prompt, resource or
//! completion belongs to; `upstreams` each upstream's state, its deadlines and
//! its restarts, and the [`Connector`] that starts its transports; [`SessionError`] the errors
//! the session answers with and their JSON-RPC codes. `tests` drives the actor over fake links.

mod calls;
mod error;
mod fanout;
pub mod merge;
mod param_headers;
mod relay;
mod routes;
mod tasks;
#[cfg(test)]
mod tests;
mod upstreams;

pub use error::SessionError;
pub use upstreams::{Connector, Transports};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, warn};

use crate::gate::{CancellationToken, Gate, Outcome, Owner, Verdict};
use crate::upstream::settings::ServerConfig;
use crate::upstream::{ConnectError, Reporter, UpstreamEvent, UpstreamLink};
use crate::wire::era::{self, Era};
use crate::wire::jsonrpc::{self, Kind, Message};
use fanout::Fanout;
use relay::{ProgressEntry, progress_token};
use upstreams::Upstream;

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
    /// A held tool call was decided: it goes where it was judged to go.
    Resume { msg: Box<Message>, verdict: Verdict, route: Box<HeldRoute> },
    /// A held call (client request id) started waiting for `approval`, decided at `url`.
    Held { call: String, approval: String, url: String },
    /// An approval whose page the client was asked to open, after a pending answer, was decided.
    Decided { approval: String },
    /// A gate task's runner resolved (see [`crate::gate::TaskStart`]).
    TaskRun { id: String, run: crate::gate::TaskRun },
    /// The gate's answer to a `tasks/*` request for one of its tasks.
    TaskAnswer { id: Box<RawValue>, era: Era, answer: crate::gate::TaskAnswer },
    /// An upstream was restarted (or failed to).
    Restarted { index: usize, generation: u64, link: Result<UpstreamLink, ConnectError> },
}

/// Where a held call was judged to go: its upstream, the tool's name there and as the client
/// named it, and the `Mcp-Param-*` headers it came with. Once decided it goes there, not wherever
/// its name would be routed by then (a tool list may have changed meanwhile).
#[derive(Debug)]
pub struct HeldRoute {
    index: usize,
    tool: String,
    exposed: String,
    param_headers: Vec<(String, String)>,
    /// Cancelled when this call's caller left. Its id may then name a newer call of the client.
    gone: CancellationToken,
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
    /// The client started the proxy over stdio: the name it gives in `initialize` identifies it
    /// as the owner of its tasks. Over HTTP only an `[[agents]]` token does.
    pub stdio: bool,
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
    start_with(opts, downstream, Arc::new(Transports)).await
}

/// [`start`], with the upstreams' transports started by `connector` (at the start and at each
/// restart).
pub async fn start_with(
    opts: SessionOptions,
    downstream: Arc<dyn Downstream>,
    connector: Arc<dyn Connector>,
) -> Result<(SessionHandle, tokio::task::JoinHandle<()>), ConnectError> {
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let mut upstreams = Vec::with_capacity(opts.servers.len());
    for (index, cfg) in opts.servers.iter().enumerate() {
        let link = connector.connect(cfg.clone(), Reporter::new(index, 1, up_tx.clone())).await?;
        upstreams.push(Upstream::new(cfg.clone(), link));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let multi = upstreams.len() > 1;
    let span = tracing::info_span!("session", id = %opts.label);
    let session = Session {
        opts,
        connector,
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
        url_elicitation: false,
        client_initialized: false,
        client_name: None,
        modern_meta: None,
        era: None,
        listens: HashMap::new(),
        resource_routes: HashMap::new(),
        template_routes: Vec::new(),
        task_routes: HashMap::new(),
        held: HashMap::new(),
        elicited: HashMap::new(),
        channels_logged: Vec::new(),
        tasks: HashMap::new(),
    };
    let task = tokio::spawn(session.run(rx, up_rx).instrument(span));
    Ok((SessionHandle { tx }, task))
}

/// How often the session looks for requests past their deadline.
const DEADLINE_TICK: Duration = Duration::from_millis(500);

/// The gate's hook of a call sent upstream ([`Verdict::AllowTracked`], an approved task's run).
/// Dropped without an outcome (its caller cancelled it or left, or the session ended before the
/// answer came), it tells the gate that the call was sent and how it ended is unknown: the record
/// of an approved call is then closed instead of staying "running".
pub(super) struct Tracked(Option<crate::gate::OutcomeHook>);

/// What a [`Tracked`] call dropped before its answer reports.
pub(super) const UNKNOWN_OUTCOME: &str = r#"{"code":-32603,"message":"sent upstream, but its answer was not awaited (its caller left or the session ended): outcome unknown"}"#;

impl Tracked {
    pub(super) fn new(hook: crate::gate::OutcomeHook) -> Tracked {
        Tracked(Some(hook))
    }

    /// Tells the gate how the call ended.
    pub(super) fn report(mut self, outcome: Outcome<'_>) {
        if let Some(hook) = self.0.take() {
            hook(outcome);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Outside a runtime (the process is exiting) nothing can be recorded any more: the next
        // start settles the call as one whose process stopped.
        if let Some(hook) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            hook(Outcome::Error(UNKNOWN_OUTCOME));
        }
    }
}

/// What a request sent upstream is waiting to do with its response.
pub(super) enum Pending {
    /// Relay to the client under its id.
    Client {
        client_id: Box<RawValue>,
        method: String,
        /// The request asked for its full tool list (no cursor): cache it.
        tools_first_page: bool,
        /// The gate wants to know how this call ended.
        hook: Option<Tracked>,
    },
    /// One part of a request fanned out to several upstreams.
    Fanout(u64),
    /// The proxy's own tool list fetch; accumulates pages.
    ToolsFetch(Vec<Box<RawValue>>),
    /// Replaying `initialize` after a restart.
    Reinit,
    /// An approved gate task's call: its answer goes to the gate, not to the client.
    Task(Tracked),
}

struct Session {
    opts: SessionOptions,
    /// Starts an upstream's next transport when it restarts.
    connector: Arc<dyn Connector>,
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
    parked: VecDeque<(Message, Vec<(String, String)>)>,
    initialize_params: Option<Box<RawValue>>,
    /// Whether `initialize_params` declare URL-mode elicitation, read once when they arrive.
    url_elicitation: bool,
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
    /// Held calls (client request id) whose approval page the client was asked to open when
    /// the wait started, with the approval id (the `elicitationId`).
    elicited: HashMap<String, String>,
    /// The sets of channels the client declared that were logged with the channel they get
    /// (a handful at most: each flag of [`crate::gate::Offered`] on or off).
    channels_logged: Vec<crate::gate::Offered>,
    /// The runners of gate tasks attached to this session, by task id; cancelled when it ends.
    tasks: HashMap<String, CancellationToken>,
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
            // No request of the client is waiting on an upstream: the event loop may commit the
            // store's deferred writes when it next sleeps (stdio mode, `store::idle`).
            crate::store::idle::set_quiet(
                self.client_requests.is_empty() && self.fanouts.is_empty() && self.parked.is_empty(),
            );
        }
        // The session ended (client gone, DELETE, reaped): nobody is left to run a held call for.
        for (_, gone) in self.held.drain() {
            gone.cancel();
        }
        for (_, stop) in self.tasks.drain() {
            stop.cancel();
        }
        // Let every transport wind down (children exit, upstream sessions are deleted) before
        // the session is reported finished.
        let finished: Vec<_> =
            self.upstreams.iter().filter_map(|u| u.link.link().map(UpstreamLink::finished)).collect();
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
            Input::Resume { msg, verdict, route } => {
                if let Some(token) = progress_token(&msg) {
                    self.held_progress.remove(&token);
                }
                let id = msg.id_text().unwrap_or_default().to_owned();
                let elicited = self.elicited.get(&id).cloned();
                // The entry under this id is this call's only while its caller is still there:
                // once it left, the client may have reused the id for another call.
                if !route.gone.is_cancelled() && self.held.remove(&id).is_some() {
                    match elicited {
                        Some(approval) if calls::decided(&verdict) => self.complete_elicitation(&approval),
                        // Answered pending: the elicitation completes when the decision lands.
                        Some(approval) => self.complete_elicitation_when_decided(approval),
                        None => {}
                    }
                    let HeldRoute { index, tool, exposed, param_headers, .. } = *route;
                    self.apply_verdict_routed(*msg, verdict, index, &tool, &exposed, param_headers);
                    self.elicited.remove(&id);
                } else if let Verdict::AllowTracked(hook) = verdict {
                    // The caller left after the gate claimed the call for it: give the claim back.
                    hook(Outcome::NotRun);
                }
            }
            Input::Held { call, approval, url } => self.on_held(call, approval, url),
            Input::Decided { approval } => self.complete_elicitation(&approval),
            Input::TaskRun { id, run } => self.on_task_run(id, run),
            Input::TaskAnswer { id, era, answer } => self.on_task_answer(id, era, answer),
            Input::Restarted { index, generation, link } => self.on_restarted(index, generation, link),
        }
    }

    // ---- client -> upstream ----

    /// Who is calling: the authenticated agent, else the client's own name.
    fn agent(&self) -> Option<&str> {
        self.opts.agent.as_deref().or(self.client_name.as_deref())
    }

    /// Who owns this session's tasks and request states.
    fn owner(&self) -> Owner {
        match (&self.opts.agent, &self.client_name) {
            (Some(agent), _) => Owner::Agent(agent.clone()),
            (None, Some(name)) if self.opts.stdio => Owner::StdioClient(name.clone()),
            (None, None) if self.opts.stdio => Owner::StdioClient(String::new()),
            (None, _) => Owner::Anonymous,
        }
    }

    fn on_client_request(&mut self, mut msg: Message, param_headers: Vec<(String, String)>) {
        // A second request under the id of one in flight would take over its entry: one of the two
        // would never be answered, or be answered with the other's result.
        if let Some(id) = msg.id_text()
            && (self.held.contains_key(id) || self.client_requests.contains_key(id))
        {
            let error = SessionError::IdInUse(id.to_owned());
            warn!("request refused: {error}");
            return self.reply_error(msg.id, &error);
        }
        if msg.method() == "subscriptions/listen"
            && let Some(params) = msg.params.as_deref().and_then(tasks::without_gate_task_ids)
        {
            msg.params = Some(params);
        }
        self.note_request(&msg);
        let method = msg.method().to_owned();
        match method.as_str() {
            "initialize" => {
                self.initialize_params = msg.params.as_ref().map(|p| p.to_owned());
                let params = msg.params.as_deref().and_then(|p| serde_json::from_str::<Value>(p.get()).ok());
                self.url_elicitation =
                    params.as_ref().is_some_and(|v| v.pointer("/capabilities/elicitation/url").is_some());
                self.client_name = params
                    .as_ref()
                    .and_then(|v| v.pointer("/clientInfo/name").and_then(Value::as_str).map(str::to_owned));
                if self.multi {
                    self.fan_out(msg, |_| true);
                } else {
                    self.forward(0, msg, param_headers);
                }
            }
            "tools/call" => self.on_tools_call(msg, param_headers),
            m if m.starts_with("tasks/") && self.is_gate_task_request(&msg) => self.on_gate_task_request(msg),
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
                Err(e) => self.reply_error(msg.id, &e),
            },
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                let uri = msg.params.as_deref().and_then(|p| jsonrpc::string_field(p, "uri"));
                match uri.and_then(|u| self.route_uri(&u)) {
                    Some(index) => self.forward(index, msg, param_headers),
                    None => self.reply_error(msg.id, &SessionError::UnknownResource),
                }
            }
            "completion/complete" => match self.route_completion(&msg) {
                Ok((index, msg)) => self.forward(index, msg, param_headers),
                Err(e) => self.reply_error(msg.id, &e),
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

    fn broadcast(&mut self, msg: &Message) {
        for index in 0..self.upstreams.len() {
            self.send_upstream(index, msg, None);
        }
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
        if !era::mentions_version(params.get()) {
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
        // The oldest era the upstreams negotiated: modern only when every one that answered
        // `initialize` is.
        let mut eras = self.upstreams.iter().filter_map(|u| u.init_era).peekable();
        if eras.peek().is_some() && eras.all(Era::is_modern) { Era::Modern } else { Era::Legacy }
    }

    // ---- tools/call: routing, tool list, gate ----

    // ---- several upstreams ----

    // ---- upstream -> client ----

    fn on_upstream(&mut self, index: usize, generation: u64, event: UpstreamEvent) {
        if self.upstreams[index].link.generation() != generation {
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

    // ---- replies ----

    fn reply(&self, id: Option<Box<RawValue>>, result: Box<RawValue>) {
        let Some(id) = id else { return };
        self.downstream.send(&Message::response(id, result), Route::Reply);
    }

    fn reply_error(&self, id: Option<Box<RawValue>>, error: &SessionError) {
        let Some(id) = id else { return };
        self.downstream.send(&Message::error(Some(id), error.code(), &error.to_string()), Route::Reply);
    }
}

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
