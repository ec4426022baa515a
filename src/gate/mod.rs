//! The hook on the `tools/call` path: a [`Gate`] decides, for each call, whether it goes
//! upstream, is answered by the proxy, or waits.

pub mod tools;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;
pub use tokio_util::sync::CancellationToken;

use crate::gate::tools::ToolInfo;
use crate::wire::era::Era;

/// What every `requestState` the gate issues starts with (see `approval::state`); any other is
/// the upstream's own.
pub const OWN_STATE_PREFIX: &str = "mcpg1.";

/// The key of the gate's own request in an `input_required` result's `inputRequests`, and of
/// the client's answer to it in a retry's `inputResponses`.
pub const APPROVAL_INPUT: &str = "mcp-gate/approval";

/// Whether a `requestState` has the form of one the gate issues ([`Gate::issued_state`] says
/// whether it really did).
pub fn is_own_state(state: &str) -> bool {
    state.starts_with(OWN_STATE_PREFIX)
}

/// A tool call as the gate sees it, after routing.
#[derive(Debug)]
pub struct ToolCall<'a> {
    /// The upstream server's configured name.
    pub server: &'a str,
    /// The tool's name at the upstream.
    pub tool: &'a str,
    /// The name the client used (with the server prefix when there are several upstreams).
    pub exposed_name: &'a str,
    pub arguments: &'a Value,
    /// The tool as the upstream listed it, when it did.
    pub info: Option<&'a ToolInfo>,
    /// The calling agent: the client's name from initialize, or the HTTP principal.
    pub agent: Option<&'a str>,
    /// Who the call's tasks and request states belong to.
    pub owner: &'a Owner,
    /// The channels the client declared for this request, through which a hold can be offered.
    pub offered: &'a Offered,
    /// The call's `params` exactly as the client sent them (the tool under its exposed name).
    pub params: &'a RawValue,
    /// Sends `notifications/progress` to the caller, when the request carried a progress token.
    pub progress: Option<ProgressSink>,
    /// Told the approval's id and URL when the call starts waiting for a person, so a client
    /// that takes URL elicitation is asked to open the page then (2025-11-25).
    pub held: Option<HeldSink>,
    /// Cancelled when the caller is gone (it cancelled the call, its stream or session closed):
    /// a held call then stops waiting and must not be claimed for it.
    pub gone: CancellationToken,
}

/// Who a held call's task or request state belongs to: only the same owner can read, cancel or
/// continue it. Stable across restarts of the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// An HTTP client authenticated by an `[[agents]]` token.
    Agent(String),
    /// The client that started the proxy over stdio, by the name it gave in `initialize`.
    StdioClient(String),
    /// Any other HTTP client (the shared listen token, or none): its name is only a claim.
    Anonymous,
}

impl Owner {
    /// The owner as stored: `agent:NAME`, `stdio:NAME` or `anonymous`.
    pub fn key(&self) -> String {
        match self {
            Owner::Agent(name) => format!("agent:{name}"),
            Owner::StdioClient(name) => format!("stdio:{name}"),
            Owner::Anonymous => "anonymous".to_owned(),
        }
    }
}

/// What the client declared, for this request, that a held call could be answered through.
/// Capabilities are read per request: a 2026-07-28 client declares them in each request's
/// `_meta`, an older one in `initialize` (and asks for a task with `params.task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    /// The era of the request: it decides the shapes of every answer.
    pub era: Era,
    /// The client asked for (2025-11-25 `params.task`) or accepts (2026-07-28 tasks extension) a
    /// task in place of the result.
    pub task: bool,
    /// The task lifetime the client asked for, in milliseconds (2025-11-25 `params.task.ttl`).
    pub requested_ttl_ms: Option<u64>,
    /// A 2026-07-28 client that declared URL-mode elicitation: it takes an `input_required`
    /// result asking it to open a URL.
    pub input_required: bool,
    /// A 2025-11-25 client that declared URL-mode elicitation in `initialize`: it takes an
    /// `elicitation/create` request in URL mode.
    pub url_elicitation: bool,
    /// The request carried a progress token.
    pub progress: bool,
}

impl Offered {
    /// A client that declared nothing beyond the base protocol of its era.
    pub const fn plain(era: Era) -> Offered {
        Offered {
            era,
            task: false,
            requested_ttl_ms: None,
            input_required: false,
            url_elicitation: false,
            progress: false,
        }
    }
}

/// How a held call reaches the person and its answer reaches the client, best first: a task the
/// client polls, an `input_required` result asking it to open the approval page (2026-07-28), a
/// URL-mode `elicitation/create` beside the wait (2025-11-25), a wait with progress, or the
/// pending result at once ("fail fast"). The approval gate chooses one per call from what the
/// client declared ([`Offered`]) and the agent's settings (see `approval::channel`). The variants
/// are declared best first, and compare in that order (`Task < FailFast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    Task,
    InputRequired,
    Elicitation,
    Wait,
    FailFast,
}

impl Channel {
    /// Every channel, best first.
    pub const ALL: [Channel; 5] =
        [Channel::Task, Channel::InputRequired, Channel::Elicitation, Channel::Wait, Channel::FailFast];

    /// The name used in settings, the audit log, the API and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Task => "task",
            Channel::InputRequired => "input_required",
            Channel::Elicitation => "elicitation",
            Channel::Wait => "wait",
            Channel::FailFast => "fail_fast",
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

type SendProgress = dyn Fn(f64, &str) + Send + Sync;

/// Reports progress to the client that made a held call.
#[derive(Clone)]
pub struct ProgressSink {
    send: Arc<SendProgress>,
}

impl ProgressSink {
    pub fn new(send: impl Fn(f64, &str) + Send + Sync + 'static) -> ProgressSink {
        ProgressSink { send: Arc::new(send) }
    }

    /// Sends one progress notification; `progress` must increase from call to call.
    pub fn notify(&self, progress: f64, message: &str) {
        (self.send)(progress, message)
    }
}

/// Where a held call's approval id and URL go when its wait starts (see [`ToolCall::held`]).
#[derive(Clone)]
pub struct HeldSink {
    send: Arc<SendHeld>,
}

type SendHeld = dyn Fn(&str, &str) + Send + Sync;

impl HeldSink {
    pub fn new(send: impl Fn(&str, &str) + Send + Sync + 'static) -> HeldSink {
        HeldSink { send: Arc::new(send) }
    }

    /// The call waits for approval `id`, decided at `url`.
    pub fn notify(&self, id: &str, url: &str) {
        (self.send)(id, url)
    }
}

impl std::fmt::Debug for HeldSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldSink")
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// How an allowed call ended upstream: its result, or the error (JSON-RPC or transport).
#[derive(Debug)]
pub enum Outcome<'a> {
    Result(&'a RawValue),
    Error(&'a str),
    /// The call was never sent: its caller left between the gate's answer and the send.
    NotRun,
}

/// Called once with the upstream's answer to a call the gate let through.
pub type OutcomeHook = Box<dyn FnOnce(Outcome<'_>) + Send>;

/// A gate's answer.
pub enum Verdict {
    /// Send the call upstream unchanged.
    Allow,
    /// Send the call upstream unchanged and report how it ended.
    AllowTracked(OutcomeHook),
    /// Answer the client with this `result` instead (a denial, an approval URL).
    Respond(Box<RawValue>),
    /// Decide later.
    Hold(BoxFuture<'static, Verdict>),
    /// Answer the client with a JSON-RPC error: the request itself is wrong (a `requestState`
    /// the proxy did not issue, or not to this caller).
    Refuse(GateError),
    /// Answer the client with `created` (a task in place of the result; the task is stored) and
    /// drive the task's run in this session.
    Task { created: Box<RawValue>, start: TaskStart },
}

/// A request the gate refuses as a protocol error, not as a tool result.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The params are invalid (JSON-RPC `-32602`).
    #[error("{0}")]
    InvalidParams(String),
}

impl std::fmt::Debug for TaskRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskRun::Run { server, .. } => write!(f, "Run({server})"),
            TaskRun::Settled => f.write_str("Settled"),
        }
    }
}

/// A gate task's run, attached to a session of its owner: at most one per task and session.
pub struct TaskStart {
    /// The task's id (`mcpg-...`).
    pub id: String,
    /// Resolves when the task may run (its approval was claimed for it) or ended without running.
    pub run: BoxFuture<'static, TaskRun>,
}

/// How a gate task's run resolves.
pub enum TaskRun {
    /// Send `params` as a `tools/call` to the upstream `server` now; report how it ended to
    /// `hook` (never to the client, which reads the task).
    Run { server: String, params: Box<RawValue>, hook: OutcomeHook },
    /// Nothing to run here (ended, cancelled, another owner's, or run elsewhere).
    Settled,
}

/// A `tasks/*` request for a gate task.
#[derive(Debug, Clone)]
pub struct TaskOp {
    pub method: TaskMethod,
    /// The `taskId` (absent for a list).
    pub id: Option<String>,
    /// The list cursor.
    pub cursor: Option<String>,
    pub owner: Owner,
    pub era: Era,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskMethod {
    Get,
    Result,
    Cancel,
    List,
    /// 2026-07-28 only: input for a task (a gate task never asks for any).
    Update,
}

/// The answer to a `tasks/*` request: a result or a JSON-RPC error.
#[derive(Debug)]
pub enum TaskAnswer {
    Result(Box<RawValue>),
    Error { code: i64, message: String },
}

/// What the gate does with a `tasks/*` request: the answer, and the task's run to attach to the
/// session when its owner is back (after a restart, or in another session).
pub struct TaskReply {
    pub answer: BoxFuture<'static, TaskAnswer>,
    pub resume: Option<TaskStart>,
}

/// The prefix of the ids of gate tasks (any other id is an upstream's task).
pub const TASK_ID_PREFIX: &str = "mcpg-";

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Allow => f.write_str("Allow"),
            Verdict::AllowTracked(_) => f.write_str("AllowTracked"),
            Verdict::Respond(r) => write!(f, "Respond({})", r.get()),
            Verdict::Hold(_) => f.write_str("Hold"),
            Verdict::Refuse(e) => write!(f, "Refuse({e})"),
            Verdict::Task { start, .. } => write!(f, "Task({})", start.id),
        }
    }
}

/// A `tools/call` refused before it could be judged: its bytes could not be read strictly, or an
/// argument differs only by case from a property the tool declares, so nothing of it was evaluated
/// or forwarded.
#[derive(Debug)]
pub struct RefusedCall<'a> {
    /// The upstream the name routes to, when that can be told.
    pub server: &'a str,
    /// Every tool name the message carried (several when the key was duplicated).
    pub tool_names: &'a [String],
    pub agent: Option<&'a str>,
    /// Why it was refused.
    pub reason: &'a str,
}

pub trait Gate: Send + Sync + 'static {
    fn check(&self, call: &ToolCall<'_>) -> Verdict;

    /// Records a call refused before evaluation.
    fn refused(&self, _call: &RefusedCall<'_>) {}

    /// Whether a tool is removed from `tools/list` for this agent.
    fn hides(&self, _server: &str, _tool: &ToolInfo, _agent: Option<&str>) -> bool {
        false
    }

    /// Whether any tool can be hidden at all (lets the relay skip the check).
    fn hides_any(&self) -> bool {
        false
    }

    /// The channel through which a held call of `agent`, offering `offered`, is answered; `None`
    /// when the gate does not choose (the session then offers the approval URL by elicitation
    /// to every client that declared it).
    fn channel(&self, _agent: Option<&str>, _offered: &Offered) -> Option<Channel> {
        None
    }

    /// Whether a `requestState` is one this gate issued (its signature holds). Such a state, and
    /// the client's answer to the gate's own input request ([`APPROVAL_INPUT`]), are removed from
    /// a call before it goes upstream; any other state (an upstream's own, another gate's) passes
    /// untouched.
    fn issued_state(&self, _state: &str) -> bool {
        false
    }
    /// Whether the gate answers held calls with tasks: the proxy then advertises tasks to
    /// 2025-11-25 clients. False keeps the proxy's answers exactly the upstream's.
    fn offers_tasks(&self) -> bool {
        false
    }

    /// Whether a call of this tool could be held for this agent (its listing then offers tasks).
    fn could_hold(&self, _server: &str, _tool: &ToolInfo, _agent: Option<&str>) -> bool {
        false
    }

    /// Resolves once approval `approval` is no longer pending (decided, expired, spent); never
    /// when the gate does not know it. A URL elicitation of it is then complete.
    fn decided(&self, _approval: &str) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    /// Answers a `tasks/*` request for a gate task (an id with [`TASK_ID_PREFIX`], or the list).
    fn task(&self, _op: TaskOp) -> TaskReply {
        TaskReply {
            answer: Box::pin(async {
                TaskAnswer::Error {
                    code: crate::wire::jsonrpc::code::INVALID_PARAMS,
                    message: "unknown task".to_owned(),
                }
            }),
            resume: None,
        }
    }
}

/// Lets every call through.
pub struct AllowAll;

impl Gate for AllowAll {
    fn check(&self, _call: &ToolCall<'_>) -> Verdict {
        Verdict::Allow
    }
}
