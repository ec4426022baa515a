//! Approval gating: the [`Gate`] that applies the policy to each `tools/call` and holds the
//! calls that need approval.
//!
//! Life of a held call: the policy says `approve` -> the call's key (server, tool, canonical
//! arguments) finds a reusable approval or a new pending one is stored -> the caller waits (up
//! to `wait_secs`, with progress notifications) or gets the approval URL at once -> when a
//! decision lands, waiting callers wake within milliseconds -> an approved call is claimed in
//! the store (exactly once, or within the grant window) and sent upstream unchanged; its
//! outcome is recorded. A caller that goes away does not cancel the approval: an identical
//! retry joins it. A 2026-07-28 client that declared URL elicitation is not kept waiting on its
//! first call: see the `input_required` module.

mod ai;
pub mod changes;
pub mod channel;
mod decide;
mod hold;
mod input_required;
pub mod replies;
pub mod settings;
pub mod state;
mod sweeper;
pub mod tasks;
mod waiters;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::warn;

use crate::gate::{CancellationToken, Channel, Gate, Offered, ProgressSink, RefusedCall, ToolCall, Verdict};
use crate::policy::{Action, CallFacts, Decision, Policy, Risk};
use crate::store::audit::{AuditRecord, Event, Redactor};
use crate::store::{Approval, Store, TransitionError};
pub use changes::{Change, ChangeKind, Changes, UnknownKind};
use channel::{ChannelPrefs, ChannelRules};

/// How often a waiting caller hears progress (clients reset their timeouts on it).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A named approval workflow (`[[workflows]]`).
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    /// Distinct approvers needed.
    pub required_approvals: u32,
    /// Who may vote: approver names and `team:NAME`; empty admits every approver.
    pub approvers: Vec<String>,
    /// Overrides the risk-based expiry.
    pub expiry: Option<Duration>,
    /// A reason is required to approve (a deny always needs one).
    pub justify_approve: bool,
    /// After approval, identical calls within this window run without asking again (0 = once).
    pub grant_secs: u64,
}

impl Workflow {
    pub fn default_named(name: &str) -> Workflow {
        Workflow {
            name: name.to_owned(),
            required_approvals: 1,
            approvers: Vec::new(),
            expiry: None,
            justify_approve: false,
            grant_secs: 0,
        }
    }
}

/// Validated `[approvals]` settings.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    /// How long a held call waits for a decision at most (each agent's `answer_within` may
    /// shorten it); zero fails fast.
    pub wait: Duration,
    /// Base of the URLs handed out (`http://127.0.0.1:PORT` unless `public_url` is set).
    pub public_url: String,
    /// Expiry by risk: low, medium, high, critical. Requests without a risk use medium.
    pub expiry_by_risk: [Duration; 4],
    pub workflows: HashMap<String, Workflow>,
    /// JSON pointers whose values are redacted in the audit log.
    pub redact: Vec<String>,
    /// A pending request is announced as [`ChangeKind::Expiring`] this long before its deadline
    /// (or half-way through its life, if that is later). Zero turns the warning off.
    pub expiry_warning: Duration,
    /// `[[channels]]` and the built-in entries: the channel and the answer time of each agent.
    /// Empty (the default here): every channel allowed, waits bounded by `wait` alone.
    pub channels: ChannelRules,
    /// `[approvals] tasks`: whether held calls may be offered as tasks.
    pub tasks: bool,
    /// How many times a call answered with `input_required` is answered so again while it stays
    /// pending, before the readable pending result ([`DEFAULT_MRTR_ROUNDS`] when unset).
    pub mrtr_rounds: Option<u32>,
}

impl Default for ApprovalSettings {
    fn default() -> ApprovalSettings {
        ApprovalSettings {
            wait: Duration::ZERO,
            public_url: String::new(),
            expiry_by_risk: [Duration::ZERO; 4],
            workflows: HashMap::new(),
            redact: Vec::new(),
            expiry_warning: Duration::ZERO,
            channels: ChannelRules::default(),
            tasks: true,
            mrtr_rounds: None,
        }
    }
}

/// Rounds of `input_required` for one pending call: under the SDKs' own limit of 10 rounds, so
/// the client reads the pending result rather than failing.
pub const DEFAULT_MRTR_ROUNDS: u32 = 9;

impl ApprovalSettings {
    /// The channel through which a held call of `agent` that offered `offered` is answered, and
    /// how long it waits for a decision: `min(wait_secs, answer_within)` of the agent, so that
    /// the client hears the pending result before it gives up on the call by itself.
    ///
    /// `task_here` is false where this call cannot be a task whatever its client declared (an
    /// upstream that insists on its own task for the tool, a workflow an AI reviewer decides
    /// first): the call then gets the next channel its client declared.
    pub fn channel_for(&self, agent: Option<&str>, offered: &Offered, task_here: bool) -> (Channel, Duration) {
        let entry = self.channels.for_agent(agent);
        let wait = entry.answer_within.map_or(self.wait, |within| within.min(self.wait));
        let prefs = ChannelPrefs { ceiling: entry.ceiling, tasks: self.tasks && task_here, wait: !wait.is_zero() };
        match channel::choose(offered, &prefs) {
            Channel::FailFast => (Channel::FailFast, Duration::ZERO),
            chosen => (chosen, wait),
        }
    }

    pub fn mrtr_rounds(&self) -> u32 {
        self.mrtr_rounds.unwrap_or(DEFAULT_MRTR_ROUNDS)
    }

    pub fn expiry_for(&self, risk: Option<Risk>, workflow: &Workflow) -> Duration {
        if let Some(e) = workflow.expiry {
            return e;
        }
        let index = match risk {
            Some(Risk::Low) => 0,
            None | Some(Risk::Medium) => 1,
            Some(Risk::High) => 2,
            Some(Risk::Critical) => 3,
        };
        self.expiry_by_risk[index]
    }
}

/// Why a decision could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no approval request {0}")]
    NotFound(String),
    #[error("a reason is required to {0}")]
    ReasonRequired(&'static str),
    #[error("the request is already {0}")]
    NotPending(String),
    #[error("{0} has already decided on this request")]
    AlreadyVoted(String),
    #[error("the request expired before the decision")]
    Expired,
    #[error("{0} is not among the approvers of workflow {1:?}")]
    NotAnApprover(String, String),
    #[error("{0} made this request and cannot approve it")]
    OwnRequest(String),
    /// The request was opened under a workflow this process's configuration does not define
    /// (another process sharing the database has it): who may vote in it is not known here.
    #[error("this request's workflow {0:?} is not defined in this mcp-gate's configuration; decide it where it is")]
    UnknownWorkflow(String),
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Why a held call's request could not be opened: the call is then refused (fails closed).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The reviewer's vote on the request it opens was refused.
    #[error(transparent)]
    Vote(#[from] TransitionError),
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// No random bytes for the request's id.
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
}

/// The approval service: policy, store, waiters and the audit trail.
pub struct ApprovalService {
    pub store: Store,
    pub policy: Arc<Policy>,
    pub settings: ApprovalSettings,
    redactor: Redactor,
    /// Approval id -> a signal bumped whenever its status changes.
    waiters: DashMap<String, watch::Sender<u64>>,
    /// Every state change, for live views and notifications.
    pub changes: Changes,
    /// Pending requests already announced as expiring.
    warned: DashSet<String>,
    /// Decides the calls of `ai_driven` workflows (see [`ai`]).
    reviewer: std::sync::OnceLock<Arc<crate::review::Reviewer>>,
    /// Cancelled when the process stops: held calls stop waiting (see [`ApprovalService::stop_waiting`]).
    stopping: tokio_util::sync::CancellationToken,
    /// The key of signed request states, read from the store at first use.
    state_key: tokio::sync::OnceCell<Arc<state::StateKey>>,
}

impl ApprovalService {
    pub fn new(store: Store, policy: Arc<Policy>, settings: ApprovalSettings) -> Arc<ApprovalService> {
        let redactor = Redactor::new(settings.redact.clone());
        let approvals = Arc::new(ApprovalService {
            store,
            policy,
            settings,
            redactor,
            waiters: DashMap::new(),
            changes: Changes::default(),
            warned: DashSet::new(),
            reviewer: std::sync::OnceLock::new(),
            stopping: tokio_util::sync::CancellationToken::new(),
            state_key: tokio::sync::OnceCell::new(),
        });
        // At start-up: the claims of a previous run that crashed are settled at once, without waiting
        // for the hub's sweeper.
        let weak = Arc::downgrade(&approvals);
        tokio::spawn(async move {
            if let Some(a) = weak.upgrade() {
                a.settle_orphaned_claims().await;
                // Ready before any retry brings back a state (see `ApprovalGate::issued_state`).
                a.load_state_key().await;
            }
        });
        approvals
    }

    /// Ends every wait, now and to come: held calls are answered with the approval URL as if
    /// their wait had run out, and their requests stay open for a retry. Called when the
    /// process stops, so that callers get an answer rather than a closed stream.
    pub fn stop_waiting(&self) {
        self.stopping.cancel();
    }

    /// The current time of the store's clock (see [`crate::store::Clock`]), in unix milliseconds:
    /// every time the approvals record or compare is read here.
    pub fn now_ms(&self) -> i64 {
        self.store.now_ms()
    }

    pub fn url_for(&self, id: &str) -> String {
        format!("{}/approvals/{id}", self.settings.public_url.trim_end_matches('/'))
    }

    /// Whether this process's configuration defines workflow `name` (`default` always exists).
    fn knows_workflow(&self, name: &str) -> bool {
        name == "default" || self.settings.workflows.contains_key(name)
    }

    fn workflow(&self, name: &str) -> Workflow {
        self.settings.workflows.get(name).cloned().unwrap_or_else(|| Workflow::default_named(name))
    }

    /// Writes one audit record; `vote_only` marks a vote that did not change the status. A record
    /// that cannot be written is logged: use [`Self::try_audit`] where the call must then not go on.
    async fn audit(&self, event: Event, a: &Approval, actor: Option<&str>, detail: Value, vote_only: bool) {
        if let Err(e) = self.try_audit(event, a, actor, detail, vote_only).await {
            warn!("audit write failed: {e}");
        }
    }

    /// [`Self::audit`], telling whether the record was written.
    async fn try_audit(
        &self,
        event: Event,
        a: &Approval,
        actor: Option<&str>,
        mut detail: Value,
        vote_only: bool,
    ) -> Result<(), crate::store::StoreError> {
        if vote_only {
            detail["vote_only"] = Value::Bool(true);
        }
        detail["arguments"] = self.redactor.redact(&a.arguments);
        detail["rule"] = a.rule.clone().map_or(Value::Null, Value::String);
        let record = AuditRecord {
            event,
            approval_id: Some(a.id.clone()),
            server: a.server.clone(),
            tool: a.tool.clone(),
            agent: a.agent.clone(),
            actor: actor.map(str::to_owned),
            detail,
        };
        self.store.audit_append(record, self.now_ms()).await.map(|_| ())
    }

    /// Queues the record of a call the policy decided on its own (allowed, denied); the store
    /// appends queued records in groups ([`Store::audit_append_later`]), off the call path: the
    /// call does not wait for its record. An error means the decision cannot be recorded: an
    /// allowed call then does not run. The arguments are copied once, by the redaction.
    fn audit_call(
        &self,
        event: Event,
        call: &CallFacts<'_>,
        decision: &Decision,
    ) -> Result<(), crate::store::StoreError> {
        let record = AuditRecord {
            event,
            approval_id: None,
            server: call.server.to_owned(),
            tool: call.tool.to_owned(),
            agent: call.agent.map(str::to_owned),
            actor: Some("policy".into()),
            // Built as the map it is: `json!` would copy the redacted arguments once more.
            detail: Value::Object(serde_json::Map::from_iter([
                ("rule".to_owned(), decision.rule.clone().map_or(Value::Null, Value::String)),
                ("arguments".to_owned(), self.redactor.redact(call.arguments)),
            ])),
        };
        self.store.audit_append_later(record, self.now_ms()).inspect_err(|e| warn!("audit write failed: {e}"))
    }

    /// Queues a record for [`Store::audit_append_later`].
    fn append_later(&self, record: AuditRecord) {
        if let Err(e) = self.store.audit_append_later(record, self.now_ms()) {
            warn!("audit write failed: {e}");
        }
    }

    /// Queues the record of a call refused before evaluation.
    fn audit_refused(&self, call: &RefusedCall<'_>) {
        let record = AuditRecord {
            event: Event::Refused,
            approval_id: None,
            server: call.server.to_owned(),
            tool: call.tool_names.first().cloned().unwrap_or_default(),
            agent: call.agent.map(str::to_owned),
            actor: Some("proxy".into()),
            detail: serde_json::json!({ "reason": call.reason, "tool_names": call.tool_names }),
        };
        self.append_later(record);
    }
}

/// The gate: evaluates the policy and holds what needs approval.
pub struct ApprovalGate {
    pub approvals: Arc<ApprovalService>,
}

/// Who a held call waits for: where its progress goes, whether it is still there, and until when
/// it can wait.
struct Caller {
    progress: Option<ProgressSink>,
    held: Option<crate::gate::HeldSink>,
    gone: CancellationToken,
    /// The end of its wait, counted from the call's arrival: what happens before the wait (an AI
    /// review) does not push the answer past the client's `answer_within`.
    deadline: tokio::time::Instant,
}

/// A tool call's facts, owned so a held call can outlive the session's borrow.
#[derive(Debug, Clone)]
struct OwnedCall {
    server: String,
    tool: String,
    agent: Option<String>,
    arguments: Value,
    /// Title, description and annotations from the upstream's tool list.
    tool_info: Option<Value>,
    /// The channel a held call is answered through.
    channel: Option<Channel>,
}

impl OwnedCall {
    /// The key of this call's request when its rule names `workflow` (see [`request_key`]).
    fn request_key(&self, workflow: &str) -> String {
        request_key(&self.server, &self.tool, &self.arguments, self.agent.as_deref(), workflow)
    }
}

impl Gate for ApprovalGate {
    fn check(&self, call: &ToolCall<'_>) -> Verdict {
        let facts = CallFacts {
            server: call.server,
            tool: call.tool,
            agent: call.agent,
            annotations: call.info.and_then(|i| i.annotations()),
            arguments: call.arguments,
        };
        let mut decision = self.approvals.policy.decide(&facts);
        if matches!(decision.action, Action::Approve { .. }) {
            // Only a held call shows its trace (the approval page, the store): the same decision,
            // with why each rule considered did or did not match.
            decision = self.approvals.policy.evaluate(&facts);
        }
        // Built only where the call outlives this borrow (a denial, a hold, a task): an allowed
        // call is audited from the borrowed facts and its arguments are not copied twice.
        let owned = || OwnedCall {
            server: call.server.to_owned(),
            tool: call.tool.to_owned(),
            agent: call.agent.map(str::to_owned),
            arguments: call.arguments.clone(),
            tool_info: None,
            channel: None,
        };
        // A call made with `params.task` (2025-11-25) or the tasks extension (2026-07-28), which
        // the gate answers with its own task unless the upstream takes tasks for this tool itself.
        let upstream_tasks = call.info.and_then(|i| i.task_support.as_deref());
        let legacy = !call.offered.era.is_modern();
        let task = (call.offered.task && self.offers_tasks()).then(|| tasks::TaskCall {
            owner: call.owner.clone(),
            offered: *call.offered,
            params: tasks::upstream_params(call.params, call.tool),
        });
        match &decision.action {
            Action::Allow => {
                crate::metrics::call(crate::metrics::CallDecision::Allowed);
                crate::traces::decision(crate::metrics::CallDecision::Allowed);
                if let Err(e) = self.approvals.audit_call(Event::Allowed, &facts, &decision) {
                    // A call whose decision cannot be recorded does not run.
                    return Verdict::Respond(replies::internal(&format!("its decision cannot be audited: {e}")));
                }
                // A 2026-07-28 client takes a plain result: only a 2025-11-25 one insists on a task.
                match task.filter(|_| legacy) {
                    Some(task) if !matches!(upstream_tasks, Some("optional" | "required")) => {
                        Verdict::Hold(Box::pin(self.approvals.clone().decided_as_task(owned(), task, None)))
                    }
                    _ => Verdict::Allow,
                }
            }
            Action::Deny { reason } => {
                crate::metrics::call(crate::metrics::CallDecision::Denied);
                crate::traces::decision(crate::metrics::CallDecision::Denied);
                // Denied either way; a failed record is logged.
                let _ = self.approvals.audit_call(Event::DeniedByPolicy, &facts, &decision);
                let owned = owned();
                let denial = replies::denied_by_policy(&owned.server, &owned.tool, decision.rule.as_deref(), reason);
                match task.filter(|_| legacy) {
                    Some(task) => {
                        Verdict::Hold(Box::pin(self.approvals.clone().decided_as_task(owned, task, Some(denial))))
                    }
                    None => Verdict::Respond(denial),
                }
            }
            Action::Approve { workflow } => {
                crate::metrics::call(crate::metrics::CallDecision::Held);
                crate::traces::decision(crate::metrics::CallDecision::Held);
                let mut owned = owned();
                owned.tool_info = call.info.map(describe_tool);
                let approvals = self.approvals.clone();
                // A task is possible unless the upstream insists on its own task for this tool, or
                // an AI reviewer decides first.
                let task =
                    task.filter(|_| upstream_tasks != Some("required") && approvals.ai_workflow(workflow).is_none());
                let (channel, wait) = approvals.settings.channel_for(call.agent, call.offered, task.is_some());
                owned.channel = Some(channel);
                if channel == Channel::Task
                    && let Some(task) = task
                {
                    return Verdict::Hold(Box::pin(approvals.hold_as_task(owned, decision, task)));
                }
                let now = tokio::time::Instant::now();
                // A wait too long for the clock is as good as a year.
                let deadline = now.checked_add(wait).unwrap_or(now + Duration::from_secs(365 * 86_400));
                let caller = Caller {
                    progress: call.progress.clone(),
                    held: call.held.clone(),
                    gone: call.gone.clone(),
                    deadline,
                };
                if let Some(ai) = approvals.ai_workflow(workflow) {
                    let tool = call.info.cloned();
                    return Verdict::Hold(Box::pin(approvals.review_and_hold(ai, owned, tool, decision, caller)));
                }
                if channel == Channel::InputRequired {
                    let retry = input_required::Retry::of(call.params);
                    let owner = call.owner.key();
                    return Verdict::Hold(Box::pin(
                        approvals.hold_input_required(owned, decision, caller, owner, retry),
                    ));
                }
                Verdict::Hold(Box::pin(approvals.hold(owned, decision, caller)))
            }
        }
    }

    fn refused(&self, call: &RefusedCall<'_>) {
        crate::metrics::call(crate::metrics::CallDecision::Refused);
        self.approvals.audit_refused(call);
    }

    fn hides(&self, server: &str, tool: &crate::gate::tools::ToolInfo, agent: Option<&str>) -> bool {
        self.approvals.policy.hides_tool(server, &tool.name, agent, tool.annotations())
    }

    fn hides_any(&self) -> bool {
        self.approvals.policy.hides_any()
    }

    fn channel(&self, agent: Option<&str>, offered: &Offered) -> Option<Channel> {
        Some(self.approvals.settings.channel_for(agent, offered, true).0)
    }

    fn issued_state(&self, state: &str) -> bool {
        self.approvals.issued_state(state)
    }

    fn offers_tasks(&self) -> bool {
        self.approvals.settings.tasks && self.approvals.policy.holds_any()
    }

    fn could_hold(&self, server: &str, tool: &crate::gate::tools::ToolInfo, agent: Option<&str>) -> bool {
        self.approvals.policy.could_hold(server, &tool.name, agent, tool.annotations())
    }

    fn task(&self, op: crate::gate::TaskOp) -> crate::gate::TaskReply {
        self.approvals.task_op(op)
    }

    fn decided(&self, approval: &str) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(self.approvals.clone().until_decided(approval.to_owned()))
    }
}

/// What an approver is shown about a tool: its title, description and annotations.
fn describe_tool(info: &crate::gate::tools::ToolInfo) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(title) = info.tool.as_ref().and_then(|t| t.title.as_ref()) {
        out.insert("title".into(), Value::String(title.clone()));
    }
    if let Some(d) = info.description() {
        out.insert("description".into(), Value::String(d.to_owned()));
    }
    if let Some(a) = info.annotations() {
        out.insert("annotations".into(), serde_json::to_value(a).unwrap_or(Value::Null));
    }
    Value::Object(out)
}

/// The identity of a call: server, tool and canonical arguments (hex, no `.`).
pub fn call_key(server: &str, tool: &str, arguments: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(server.as_bytes());
    hasher.update([0]);
    hasher.update(tool.as_bytes());
    hasher.update([0]);
    hasher.update(canonical_json(arguments).as_bytes());
    hex::encode(hasher.finalize())
}

/// The key of a held call's request, by which identical calls join it and reuse its approval:
/// the call ([`call_key`]), then `.` and the scope it was judged in, the agent that makes it and the
/// workflow its rule named. An approval is therefore used only by the same agent's identical call
/// that the policy sends to the same workflow: not by another agent's, and not by a call whose
/// rule asks for a stricter workflow (more approvals, other approvers).
pub fn request_key(server: &str, tool: &str, arguments: &Value, agent: Option<&str>, workflow: &str) -> String {
    let mut hasher = Sha256::new();
    match agent {
        Some(agent) => {
            hasher.update([1]);
            hasher.update((agent.len() as u64).to_le_bytes());
            hasher.update(agent.as_bytes());
        }
        None => hasher.update([0]),
    }
    hasher.update(workflow.as_bytes());
    let scope = hasher.finalize();
    format!("{}.{}", call_key(server, tool, arguments), hex::encode(&scope[..16]))
}

/// The call part of a request's key ([`request_key`]); the whole key of one stored before keys
/// had a scope.
pub fn call_of_key(key: &str) -> &str {
    key.split_once('.').map_or(key, |(call, _)| call)
}

pub use crate::store::audit::canonical_json;

/// A short random id: `apr_` and 16 hex digits.
pub fn new_id() -> Result<String, crate::random::RandomError> {
    Ok(format!("apr_{}", crate::random::hex(8)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_key_ignores_key_order_but_not_values() {
        let a = serde_json::json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b = serde_json::json!({"a": {"x": "s", "y": [1, 2]}, "b": 1});
        let c = serde_json::json!({"a": {"x": "s", "y": [2, 1]}, "b": 1});
        assert_eq!(call_key("fs", "rm", &a), call_key("fs", "rm", &b));
        assert_ne!(call_key("fs", "rm", &a), call_key("fs", "rm", &c));
        assert_ne!(call_key("fs", "rm", &a), call_key("fs2", "rm", &a));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
    }

    #[test]
    fn a_request_key_is_scoped_to_the_agent_and_the_workflow() {
        let args = serde_json::json!({"path": "/srv"});
        let key = |agent, workflow| request_key("fs", "rm", &args, agent, workflow);
        let base = key(Some("alice"), "default");
        assert_eq!(base, key(Some("alice"), "default"));
        assert_ne!(base, key(Some("ci-bot"), "default"), "another agent");
        assert_ne!(base, key(Some("alice"), "two-person"), "another workflow");
        assert_ne!(key(None, "default"), key(Some(""), "default"), "no agent is not an empty name");
        assert_ne!(key(Some("a"), "\0b"), key(Some("a\0"), "b"));
        assert_eq!(call_of_key(&base), call_key("fs", "rm", &args));
        assert_eq!(call_of_key(&call_key("fs", "rm", &args)), call_key("fs", "rm", &args), "a key from before scopes");
    }

    /// Without randomness no request id can be made: the held call is answered with the gate's
    /// internal error (it does not run), and the task that holds it ends instead of panicking,
    /// which would leave its caller waiting for an answer that never comes.
    /// A gate with this policy (TOML rules) whose held calls wait an hour.
    async fn gate_with(toml: &str) -> ApprovalGate {
        let config = crate::config::Config::from_toml(toml, "hold.toml").expect("policy");
        let store = Store::open(crate::store::Location::Memory).await.expect("store");
        let settings = ApprovalSettings { wait: Duration::from_secs(3600), ..ApprovalSettings::default() };
        ApprovalGate { approvals: ApprovalService::new(store, config.policy.clone(), settings) }
    }

    const LEGACY: crate::gate::Offered = crate::gate::Offered::plain(crate::wire::era::Era::Legacy);

    /// A 2025-11-25 call of `fs`'s tool `rm` with these arguments.
    fn rm_call<'a>(
        arguments: &'a Value,
        params: &'a serde_json::value::RawValue,
        held: Option<crate::gate::HeldSink>,
    ) -> ToolCall<'a> {
        ToolCall {
            server: "fs",
            tool: "rm",
            exposed_name: "rm",
            arguments,
            info: None,
            agent: None,
            owner: &crate::gate::Owner::Anonymous,
            offered: &LEGACY,
            params,
            progress: None,
            held,
            gone: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_held_call_without_randomness_is_refused_not_left_waiting() {
        let gate = gate_with("[[rules]]\nname = \"ask\"\ntool = \"rm\"\naction = \"approve\"\n").await;
        let arguments = serde_json::json!({"path": "/"});
        let params = serde_json::value::to_raw_value(&serde_json::json!({})).expect("params");
        let call = rm_call(&arguments, &params, None);
        let Verdict::Hold(held) = gate.check(&call) else { panic!("the call should be held") };
        let _failing = crate::random::failing::on_this_thread();
        let verdict = tokio::spawn(held).await.expect("the held call's task ends without a panic");
        let Verdict::Respond(reply) = verdict else { panic!("the held call should be answered") };
        let reply = reply.get();
        assert!(reply.contains("approval gate failed") && reply.contains("randomness"), "{reply}");
        let pending = gate.approvals.store.list_approvals(crate::store::ApprovalFilter::default()).await;
        assert!(pending.expect("list").is_empty(), "no request was opened");
    }

    /// The gate decides without building the policy's trace, and builds it for a held call: the
    /// approval shows every rule considered, and the reason of the one that held it.
    #[tokio::test]
    async fn a_held_call_keeps_the_trace_of_the_rules_considered() {
        let gate = gate_with(
            "[[rules]]\nname = \"listing\"\ntool = \"ls\"\naction = \"allow\"\n\n\
             [[rules]]\nname = \"ask\"\ntool = \"rm\"\naction = \"approve\"\n",
        )
        .await;
        let arguments = serde_json::json!({"path": "/"});
        let params = serde_json::value::to_raw_value(&serde_json::json!({})).expect("params");
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let held_tx = std::sync::Mutex::new(Some(held_tx));
        let sink = crate::gate::HeldSink::new(move |id, _url| {
            if let Some(tx) = held_tx.lock().expect("lock").take() {
                let _ = tx.send(id.to_owned());
            }
        });
        let call = rm_call(&arguments, &params, Some(sink));
        let Verdict::Hold(held) = gate.check(&call) else { panic!("the call should be held") };
        let waiting = tokio::spawn(held);
        let id = held_rx.await.expect("the call is held under an approval");
        let approval = gate.approvals.store.get_approval(&id).await.expect("read").expect("the approval");
        waiting.abort();
        assert_eq!(approval.rule.as_deref(), Some("ask"));
        let steps = approval.trace.as_array().expect("a trace");
        let shown: Vec<(&str, bool)> =
            steps.iter().map(|s| (s["rule"].as_str().unwrap_or(""), s["matched"].as_bool().unwrap_or(false))).collect();
        assert_eq!(shown, [("listing", false), ("ask", true)], "{steps:?}");
        assert!(steps.iter().all(|s| s["why"].as_str().is_some_and(|w| !w.is_empty())), "{steps:?}");
        assert_eq!(approval.rule_reason.as_deref(), Some("tool \"rm\" matches \"rm\""));
    }
}
