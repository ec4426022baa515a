//! Gate tasks (2025-11-25 tasks): a call made with `params.task` that the gate holds (or
//! decides) is answered at once with a task the client polls, instead of a result.
//!
//! Life of a task: the request is opened (or joined) and the task stored before the client hears
//! its id -> the session of its owner runs a *runner* that waits on the approval -> approved: the
//! policy is checked again, the approval and the task are claimed in one transaction, the stored
//! call (exactly what was approved) goes upstream once, and the upstream's answer completes the
//! task -> denied, expired, spent or denied by policy: the task completes with the gate's
//! `isError` result, which the model can read (a `failed` task reaches it as a bare "failed").
//! A runner ends with its session; the owner's next `tasks/get` or `tasks/result`, in any
//! process, attaches a new one, so an approved task runs when its owner is there.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{ApprovalService, ChangeKind, OwnedCall, call_key, replies};
use crate::gate::{
    Offered, Outcome, OutcomeHook, Owner, TASK_ID_PREFIX, TaskAnswer, TaskMethod, TaskOp, TaskReply, TaskRun,
    TaskStart, Verdict,
};
use crate::policy::{Action, CallFacts, Decision};
use crate::store::audit::Event;
use crate::store::tasks::{Cancelled, GateTask, TaskClaim, TaskEnd, TaskState};
use crate::store::{Approval, Claim, SYSTEM_ACTOR, Status};
use crate::wire::era::{self, Era};
use crate::wire::jsonrpc::{self, code};

/// How often a client is asked to poll a task (milliseconds).
pub const POLL_INTERVAL_MS: i64 = 2000;

/// How long a task is kept after the last moment its approval could be decided (milliseconds).
const KEPT_AFTER_MS: i64 = 3_600_000;

/// The longest a client may ask a task to be kept (`params.task.ttl`, milliseconds): 7 days. A
/// longer request is served with this; the created task says the lifetime it got.
pub const MAX_REQUESTED_TTL_MS: i64 = 7 * 24 * 3_600_000;

/// How often a `tasks/result` that waits reads its task again when nothing woke it: a change
/// made by another process sharing the database (a purge, a decision without a hub to relay it)
/// reaches it within this time.
const RESULT_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// The `_meta` key that ties a result to its task.
const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

/// What a task call carries besides the call's facts.
pub(super) struct TaskCall {
    pub owner: Owner,
    pub offered: Offered,
    /// The params to send upstream when it runs: the tool under its upstream name, no `task`.
    pub params: Box<RawValue>,
}

/// The params as they go upstream: the tool under its name there, without `task` and without
/// the tasks extension among the client's capabilities, so that the upstream answers with a plain
/// result (the gate task is the client's task).
pub fn upstream_params(params: &RawValue, tool: &str) -> Box<RawValue> {
    let Ok(mut obj) = jsonrpc::parse_object(params) else { return params.to_owned() };
    obj.retain(|(k, _)| k != "task");
    jsonrpc::set(&mut obj, "name", jsonrpc::to_raw(tool));
    if let Some(meta) = jsonrpc::get(&obj, "_meta").map(|m| m.to_owned()) {
        jsonrpc::set(&mut obj, "_meta", without_tasks_extension(&meta));
    }
    jsonrpc::object_to_raw(&obj)
}

/// A request's `_meta` without the tasks extension among its client capabilities.
pub fn without_tasks_extension(meta: &RawValue) -> Box<RawValue> {
    if !jsonrpc::may_hold(meta.get(), era::TASKS_EXTENSION) {
        return meta.to_owned();
    }
    let Ok(mut v) = serde_json::from_str::<Value>(meta.get()) else { return meta.to_owned() };
    if let Some(ext) =
        v.get_mut(era::CLIENT_CAPABILITIES_META).and_then(|c| c.get_mut("extensions")).and_then(Value::as_object_mut)
    {
        ext.remove(era::TASKS_EXTENSION);
    }
    jsonrpc::to_raw(&v)
}

fn new_task_id() -> Result<String, crate::random::RandomError> {
    Ok(format!("{TASK_ID_PREFIX}{}", crate::random::hex(16)?))
}

impl ApprovalService {
    /// A held call made with a task: its request is opened (or joined), the task stored, and the
    /// client answered with it at once.
    pub(super) async fn hold_as_task(self: Arc<Self>, call: OwnedCall, decision: Decision, task: TaskCall) -> Verdict {
        let approval = match self.open_request(&call, &decision).await {
            Ok(approval) => approval,
            Err(refused) => return refused,
        };
        let key = approval.key.clone();
        let message = waiting_message(&approval, &self.url_for(&approval.id));
        let ttl = (approval.expires_at - self.now_ms()).max(0) + KEPT_AFTER_MS;
        self.create_task(&call, task, Some(&approval), key, message, ttl, None).await
    }

    /// A call made with a task that the gate decides on its own: allowed (it runs at once, as a
    /// task, when its upstream would not answer with one) or denied (the task completes with the
    /// denial).
    pub(super) async fn decided_as_task(
        self: Arc<Self>,
        call: OwnedCall,
        task: TaskCall,
        denial: Option<Box<RawValue>>,
    ) -> Verdict {
        // Each such call is its own task: the key is made unique so identical calls do not join.
        let key = match crate::random::hex(8) {
            Ok(nonce) => format!("{}:{nonce}", call_key(&call.server, &call.tool, &call.arguments)),
            Err(e) => return self.fail_closed(&call, &e.to_string()),
        };
        let message = if denial.is_some() { "Denied by policy".to_owned() } else { "Running".to_owned() };
        self.create_task(&call, task, None, key, message, KEPT_AFTER_MS, denial).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_task(
        self: Arc<Self>,
        call: &OwnedCall,
        task: TaskCall,
        approval: Option<&Approval>,
        key: String,
        message: String,
        ttl_ms: i64,
        settled: Option<Box<RawValue>>,
    ) -> Verdict {
        let id = match new_task_id() {
            Ok(id) => id,
            Err(e) => return self.fail_closed(call, &e.to_string()),
        };
        let now = self.now_ms();
        let requested =
            task.offered.requested_ttl_ms.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX).min(MAX_REQUESTED_TTL_MS));
        let new = GateTask {
            id,
            owner: task.owner.key(),
            era: if task.offered.era.is_modern() { "modern" } else { "legacy" }.to_owned(),
            approval_id: approval.map(|a| a.id.clone()),
            key,
            server: call.server.clone(),
            tool: call.tool.clone(),
            params: task.params.get().to_owned(),
            state: TaskState::Working,
            status_message: Some(message),
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            ttl_ms: Some(ttl_ms.max(requested)),
        };
        let mut stored = match self.store.open_task(new, now).await {
            Ok(opened) if opened.joined => opened.task,
            Ok(opened) => {
                self.audit_task(Event::TaskCreated, &opened.task, call.agent.clone(), Some("proxy")).await;
                opened.task
            }
            Err(e) => return self.fail_closed(call, &format!("storage: {e}")),
        };
        if let Some(result) = settled {
            let end = TaskEnd::Result(serde_json::from_str(result.get()).unwrap_or(Value::Null));
            match self.store.settle_task(&stored.id, end, "Denied by policy", self.now_ms()).await {
                Ok(Some(t)) => stored = t,
                Ok(None) => {}
                Err(e) => return self.fail_closed(call, &format!("storage: {e}")),
            }
        }
        info!(task = %stored.id, server = %call.server, tool = %call.tool, "answered with a task");
        let created = self.task_created(&stored, approval, task.offered.era);
        let start =
            TaskStart { id: stored.id.clone(), run: Box::pin(self.clone().run_task(task.owner, stored.id, false)) };
        Verdict::Task { created, start }
    }

    /// Appends the audit record of a task's creation or cancellation (written before the client
    /// is answered).
    async fn audit_task(&self, event: Event, task: &GateTask, agent: Option<String>, actor: Option<&str>) {
        let record = crate::store::audit::AuditRecord {
            event,
            approval_id: task.approval_id.clone(),
            server: task.server.clone(),
            tool: task.tool.clone(),
            agent,
            actor: actor.map(str::to_owned),
            detail: json!({ "task": task.id, "owner": task.owner, "era": task.era }),
        };
        if let Err(e) = self.store.audit_append(record, self.now_ms()).await {
            warn!("audit write failed: {e}");
        }
    }

    /// The `CreateTaskResult` for `task`: the task under `task` (2025-11-25), or its fields
    /// with `resultType: "task"` (2026-07-28 tasks extension).
    fn task_created(&self, task: &GateTask, approval: Option<&Approval>, era: Era) -> Box<RawValue> {
        let mut meta = serde_json::Map::new();
        if let Some(a) = approval {
            let url = self.url_for(&a.id);
            let immediate = replies::pending(a, &url);
            let text = serde_json::from_str::<Value>(immediate.get())
                .ok()
                .and_then(|v| v.pointer("/content/0/text").and_then(Value::as_str).map(str::to_owned));
            if let Some(text) = text {
                meta.insert("io.modelcontextprotocol/model-immediate-response".into(), Value::String(text));
            }
            meta.insert("mcp-gate/approval".into(), json!({ "id": a.id, "status": a.status.as_str(), "url": url }));
        }
        if era.is_modern() {
            let mut created = modern_task_view(task);
            created["resultType"] = json!("task");
            created["_meta"] = Value::Object(meta);
            return jsonrpc::to_raw(&created);
        }
        jsonrpc::to_raw(&json!({ "task": task_view(task), "_meta": meta }))
    }

    /// The runner of task `id`: waits for its approval, then claims it and returns the call to
    /// send, or settles the task when it will not run.
    /// `resumed`: attached by the owner's poll, not by the call that made the task.
    pub(super) async fn run_task(self: Arc<Self>, owner: Owner, id: String, resumed: bool) -> TaskRun {
        let owner = owner.key();
        loop {
            let task = match self.store.task(&owner, &id).await {
                Ok(Some(t)) if t.state == TaskState::Working => t,
                Ok(_) => return TaskRun::Settled,
                Err(e) => {
                    warn!(task = %id, "reading a task failed: {e}");
                    return TaskRun::Settled;
                }
            };
            let Some(approval_id) = task.approval_id.clone() else {
                return self.claim_task(task, None, resumed).await;
            };
            let mut changes = self.subscribe(&approval_id);
            let approval = match self.store.get_approval(&approval_id).await {
                Ok(Some(a)) => a,
                Ok(None) | Err(_) => {
                    drop(changes);
                    self.unsubscribe(&approval_id);
                    return TaskRun::Settled;
                }
            };
            if approval.status != Status::Pending {
                drop(changes);
                self.unsubscribe(&approval_id);
                if approval.status == Status::Approved {
                    return self.claim_task(task, Some(approval), resumed).await;
                }
                self.settle(&task, &approval, None).await;
                return TaskRun::Settled;
            }
            let ended = tokio::select! {
                changed = changes.changed() => changed.is_err(),
                _ = self.stopping.cancelled() => true,
            };
            drop(changes);
            self.unsubscribe(&approval_id);
            if ended {
                return TaskRun::Settled;
            }
        }
    }

    /// Claims an approved task (the policy is asked again first, and what runs must be what was
    /// approved); settles it when it cannot run.
    async fn claim_task(self: &Arc<Self>, task: GateTask, approval: Option<Approval>, resumed: bool) -> TaskRun {
        let params: Value = serde_json::from_str(&task.params).unwrap_or(Value::Null);
        let arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
        if let Some(a) = &approval {
            if call_key(&task.server, &task.tool, &arguments) != super::call_of_key(&a.key) {
                warn!(task = %task.id, "the stored call is not the approved one; not run");
                let error = json!({ "code": code::INTERNAL_ERROR, "message": "the stored call is not the one that was approved" });
                let _ = self.store.settle_task(&task.id, TaskEnd::Error(error), "Not run", self.now_ms()).await;
                self.notify(&task.id);
                return TaskRun::Settled;
            }
            let annotations = a
                .tool_info
                .as_ref()
                .and_then(|i| i.get("annotations"))
                .and_then(|v| serde_json::from_value::<rmcp::model::ToolAnnotations>(v.clone()).ok());
            let facts = CallFacts {
                server: &task.server,
                tool: &task.tool,
                agent: a.agent.as_deref(),
                annotations: annotations.as_ref(),
                arguments: &arguments,
            };
            let decision = self.policy.decide(&facts);
            if let Action::Deny { reason } = &decision.action {
                let denial = replies::denied_by_policy(&task.server, &task.tool, decision.rule.as_deref(), reason);
                self.settle(&task, a, Some(denial)).await;
                return TaskRun::Settled;
            }
        }
        if approval.is_none() && resumed {
            // An allowed task runs at once (decided by the policy just before), unless its call
            // could not be sent (its claim was given back): then at its owner's next poll, maybe
            // in a process with another policy. The policy is asked again, as for an approved
            // task (without the tool's annotations, which are not stored: a rule that allowed it
            // by its annotations no longer does, and it is not run, which errs on the safe side).
            let agent = owner_agent(&task.owner);
            let facts = CallFacts {
                server: &task.server,
                tool: &task.tool,
                agent: agent.as_deref(),
                annotations: None,
                arguments: &arguments,
            };
            let decision = self.policy.decide(&facts);
            if let Action::Deny { reason } = &decision.action {
                let denial = replies::denied_by_policy(&task.server, &task.tool, decision.rule.as_deref(), reason);
                let end = TaskEnd::Result(serde_json::from_str(denial.get()).unwrap_or(Value::Null));
                if let Err(e) = self.store.settle_task(&task.id, end, "Denied by policy", self.now_ms()).await {
                    warn!(task = %task.id, "settling a task failed: {e}");
                }
                self.notify(&task.id);
                return TaskRun::Settled;
            }
        }
        match self.store.claim_task(&task.id, self.now_ms()).await {
            Ok(TaskClaim::Run(running)) => {
                if let Some(a) = &approval
                    && let Err(e) =
                        self.try_audit(Event::Claimed, a, Some(SYSTEM_ACTOR), json!({ "task": task.id }), false).await
                {
                    // A call whose claim cannot be recorded does not run: the claim goes back and
                    // the task stays working.
                    warn!(task = %task.id, "the claim cannot be audited, the call does not run: {e}");
                    if let Err(e) = self.store.release_task(&task.id, self.now_ms()).await {
                        warn!(task = %task.id, "releasing a task failed: {e}");
                    }
                    self.notify(&task.id);
                    return TaskRun::Settled;
                }
                self.notify(&task.id);
                let Ok(params) = RawValue::from_string(running.params.clone()) else {
                    return TaskRun::Settled;
                };
                TaskRun::Run { server: running.server.clone(), params, hook: self.task_hook(running.id) }
            }
            Ok(TaskClaim::NotWorking(_)) => TaskRun::Settled,
            Ok(TaskClaim::Approval(claim)) => {
                if let Some(a) = approval {
                    let current = self.store.get_approval(&a.id).await.ok().flatten().unwrap_or(a);
                    let reply = match claim {
                        Claim::Pending => return TaskRun::Settled,
                        Claim::Denied { .. } => None,
                        Claim::Expired => None,
                        Claim::Spent | Claim::Run => Some(replies::spent(&current, &self.url_for(&current.id))),
                    };
                    self.settle(&task, &current, reply).await;
                }
                TaskRun::Settled
            }
            Err(e) => {
                warn!(task = %task.id, "claiming a task failed: {e}");
                TaskRun::Settled
            }
        }
    }

    /// Completes a working task that will not run with the gate's answer for its approval
    /// (denied, expired, spent), or with `reply` when given.
    async fn settle(&self, task: &GateTask, approval: &Approval, reply: Option<Box<RawValue>>) {
        let url = self.url_for(&approval.id);
        let (reply, message) = match reply {
            Some(r) => (r, "Not run".to_owned()),
            None => match approval.status {
                Status::Denied => {
                    let by = approval.decided_by.as_deref().unwrap_or("an approver");
                    let reason = approval.deny_reason.as_deref().unwrap_or("no reason given");
                    (replies::denied(approval, &url), format!("Denied by {by}: {reason}"))
                }
                Status::Expired => (replies::expired(approval, &url), "Expired before anyone decided".to_owned()),
                Status::Pending | Status::Approved => return,
                Status::Executed | Status::Failed => {
                    (replies::spent(approval, &url), "The approval was already used".to_owned())
                }
            },
        };
        let end = TaskEnd::Result(serde_json::from_str(reply.get()).unwrap_or(Value::Null));
        match self.store.settle_task(&task.id, end, &message, self.now_ms()).await {
            Ok(_) => self.notify(&task.id),
            Err(e) => warn!(task = %task.id, "settling a task failed: {e}"),
        }
    }

    /// Records how the task's call ended upstream.
    fn task_hook(self: &Arc<Self>, id: String) -> OutcomeHook {
        let me = self.clone();
        Box::new(move |outcome: Outcome<'_>| {
            let end = match outcome {
                Outcome::Result(r) => TaskEnd::Result(serde_json::from_str(r.get()).unwrap_or(Value::Null)),
                Outcome::Error(e) => TaskEnd::Error(
                    serde_json::from_str::<Value>(e)
                        .ok()
                        .filter(|v| v.get("code").is_some())
                        .unwrap_or_else(|| json!({ "code": code::INTERNAL_ERROR, "message": e })),
                ),
                Outcome::NotRun => {
                    tokio::spawn(async move {
                        match me.store.release_task(&id, me.now_ms()).await {
                            Ok(t) => {
                                info!(task = %id, "task claim released: its call was not sent");
                                if let Some(a) = t.approval_id.as_deref()
                                    && let Ok(Some(a)) = me.store.get_approval(a).await
                                {
                                    me.audit(Event::Released, &a, Some(SYSTEM_ACTOR), json!({ "task": id }), false)
                                        .await;
                                }
                            }
                            Err(e) => warn!(task = %id, "releasing a task failed: {e}"),
                        }
                        me.notify(&id);
                    });
                    return;
                }
            };
            tokio::spawn(async move {
                let ok =
                    matches!(&end, TaskEnd::Result(r) if !r.get("isError").and_then(Value::as_bool).unwrap_or(false));
                let message = match &end {
                    TaskEnd::Result(_) => "Completed".to_owned(),
                    TaskEnd::Error(e) => e.get("message").and_then(Value::as_str).unwrap_or("failed").to_owned(),
                };
                match me.store.finish_task(&id, end, &message, me.now_ms()).await {
                    Ok((_, Some(a))) => {
                        let event = if ok { Event::Executed } else { Event::Failed };
                        me.audit(event, &a, Some("upstream"), json!({ "task": id, "is_error": !ok }), false).await;
                        let kind = if ok { ChangeKind::Executed } else { ChangeKind::Failed };
                        me.publish(kind, &a, Some("upstream"));
                    }
                    Ok((_, None)) => {}
                    Err(e) => warn!(task = %id, "recording a task's outcome failed: {e}"),
                }
                me.notify(&id);
            });
        })
    }

    /// Answers a `tasks/*` request for a gate task; for `get` and `result`, the task's runner is
    /// attached to the asking session (it ends at once when there is nothing to run).
    pub fn task_op(self: &Arc<Self>, op: TaskOp) -> TaskReply {
        let resume = match (op.method, &op.id) {
            (TaskMethod::Get | TaskMethod::Result, Some(id)) => Some(TaskStart {
                id: id.clone(),
                run: Box::pin(self.clone().run_task(op.owner.clone(), id.clone(), true)),
            }),
            _ => None,
        };
        let me = self.clone();
        TaskReply { answer: Box::pin(async move { me.answer_task_op(op).await }), resume }
    }

    async fn answer_task_op(self: Arc<Self>, op: TaskOp) -> TaskAnswer {
        if op.era.is_modern() {
            return self.answer_modern_task_op(op).await;
        }
        let owner = op.owner.key();
        let unknown =
            |id: &str| TaskAnswer::Error { code: code::INVALID_PARAMS, message: format!("unknown task {id}") };
        let storage = |e: crate::store::StoreError| TaskAnswer::Error {
            code: code::INTERNAL_ERROR,
            message: format!("storage: {e}"),
        };
        if op.method == TaskMethod::List {
            // Anonymous clients all own tasks as "anonymous": a list would show each of them the
            // others' tasks (ids, approval URLs). It is not advertised to them and lists none.
            if op.owner == Owner::Anonymous {
                return TaskAnswer::Result(jsonrpc::to_raw(&json!({ "tasks": [] })));
            }
            let cursor = match op.cursor.as_deref() {
                None => None,
                Some(c) => match c.strip_prefix("mcpg:").and_then(|n| n.parse::<i64>().ok()) {
                    Some(n) => Some(n),
                    None => return TaskAnswer::Error { code: code::INVALID_PARAMS, message: "invalid cursor".into() },
                },
            };
            return match self.store.tasks_of_owner(&owner, cursor).await {
                Ok((tasks, next)) => {
                    let mut result = json!({ "tasks": tasks.iter().map(task_view).collect::<Vec<_>>() });
                    if let Some(next) = next {
                        result["nextCursor"] = json!(format!("mcpg:{next}"));
                    }
                    TaskAnswer::Result(jsonrpc::to_raw(&result))
                }
                Err(e) => storage(e),
            };
        }
        let Some(id) = op.id.clone() else {
            return TaskAnswer::Error { code: code::INVALID_PARAMS, message: "taskId is required".into() };
        };
        match op.method {
            TaskMethod::Get => match self.current(&owner, &id).await {
                Ok(Some(t)) => TaskAnswer::Result(jsonrpc::to_raw(&task_view(&t))),
                Ok(None) => unknown(&id),
                Err(e) => storage(e),
            },
            TaskMethod::Cancel => match self.cancel(&owner, &id).await {
                Ok(Some(Cancelled::Now(t))) => TaskAnswer::Result(jsonrpc::to_raw(&task_view(&t))),
                Ok(Some(Cancelled::Terminal(t))) => TaskAnswer::Error {
                    code: code::INVALID_PARAMS,
                    message: format!("task {id} is already {}", t.state.as_str()),
                },
                Ok(None) => unknown(&id),
                Err(e) => storage(e),
            },
            TaskMethod::Result => loop {
                let mut on_task = self.subscribe(&id);
                let task = match self.current(&owner, &id).await {
                    Ok(Some(t)) => t,
                    Ok(None) => {
                        self.unsubscribe(&id);
                        return unknown(&id);
                    }
                    Err(e) => {
                        self.unsubscribe(&id);
                        return storage(e);
                    }
                };
                if task.state.is_terminal() {
                    self.unsubscribe(&id);
                    return final_answer(&task);
                }
                let approval = task.approval_id.clone();
                let mut on_approval = approval.as_deref().map(|a| self.subscribe(a));
                let approval_changed = async {
                    match on_approval.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                let stop = tokio::select! {
                    changed = on_task.changed() => changed.is_err(),
                    changed = approval_changed => !changed,
                    // What another process did is not always heard of here (it purged the
                    // task, say, and has no way to tell this one): read the task again now and then.
                    () = tokio::time::sleep(RESULT_RECHECK) => false,
                    _ = self.stopping.cancelled() => true,
                };
                drop(on_task);
                drop(on_approval);
                self.unsubscribe(&id);
                if let Some(a) = &approval {
                    self.unsubscribe(a);
                }
                if stop {
                    return TaskAnswer::Error { code: code::INTERNAL_ERROR, message: "the proxy is stopping".into() };
                }
            },
            TaskMethod::List | TaskMethod::Update => TaskAnswer::Error {
                code: code::METHOD_NOT_FOUND,
                message: "tasks/update is not a 2025-11-25 method".into(),
            },
        }
    }

    /// The 2026-07-28 tasks extension: `tasks/get` answers the detailed task, `tasks/cancel` and
    /// `tasks/update` an empty acknowledgement; `tasks/result` and `tasks/list` are gone.
    async fn answer_modern_task_op(self: Arc<Self>, op: TaskOp) -> TaskAnswer {
        let owner = op.owner.key();
        let unknown =
            |id: &str| TaskAnswer::Error { code: code::INVALID_PARAMS, message: format!("unknown task {id}") };
        let storage = |e: crate::store::StoreError| TaskAnswer::Error {
            code: code::INTERNAL_ERROR,
            message: format!("storage: {e}"),
        };
        let ack = || TaskAnswer::Result(jsonrpc::to_raw(&json!({ "resultType": "complete" })));
        let Some(id) =
            op.id.clone().filter(|_| matches!(op.method, TaskMethod::Get | TaskMethod::Cancel | TaskMethod::Update))
        else {
            return TaskAnswer::Error {
                code: code::METHOD_NOT_FOUND,
                message: "tasks/result and tasks/list are not part of the 2026-07-28 tasks extension".into(),
            };
        };
        match op.method {
            TaskMethod::Get => match self.current(&owner, &id).await {
                Ok(Some(t)) => TaskAnswer::Result(jsonrpc::to_raw(&detailed_task(&t))),
                Ok(None) => unknown(&id),
                Err(e) => storage(e),
            },
            TaskMethod::Cancel => match self.cancel(&owner, &id).await {
                Ok(Some(_)) => ack(),
                Ok(None) => unknown(&id),
                Err(e) => storage(e),
            },
            // A gate task never asks for input: the responses are acknowledged and ignored.
            _ => match self.store.task(&owner, &id).await {
                Ok(Some(_)) => ack(),
                Ok(None) => unknown(&id),
                Err(e) => storage(e),
            },
        }
    }

    /// Cancels the owner's task `id` for its client: when it was still `working`, the cancellation
    /// is audited and whoever waits on the task or its approval hears of it.
    async fn cancel(&self, owner: &str, id: &str) -> Result<Option<Cancelled>, crate::store::StoreError> {
        let result = replies::cancelled_task();
        let value: Value = serde_json::from_str(result.get()).unwrap_or(Value::Null);
        let not_run = ("Cancelled by the client; not run", value);
        let cancelled =
            self.store.cancel_task_noting(owner, id, not_run, cancelled_after_sent(), self.now_ms()).await?;
        if let Some(Cancelled::Now(t)) = &cancelled {
            info!(task = %id, "task cancelled by its client");
            self.audit_task(Event::TaskCancelled, t, owner_agent(owner), Some("client")).await;
            self.notify(id);
            if let Some(a) = &t.approval_id {
                self.notify(a);
            }
        }
        Ok(cancelled)
    }

    /// The owner's task as it stands, a working task first settled when its approval was
    /// decided against it (so a poll sees a denial even when no runner is attached).
    async fn current(&self, owner: &str, id: &str) -> Result<Option<GateTask>, crate::store::StoreError> {
        let Some(task) = self.store.task(owner, id).await? else { return Ok(None) };
        if task.state != TaskState::Working {
            return Ok(Some(task));
        }
        let Some(approval) = task.approval_id.as_deref() else { return Ok(Some(task)) };
        let Some(a) = self.store.get_approval(approval).await? else { return Ok(Some(task)) };
        match a.status {
            Status::Denied | Status::Expired => {
                self.settle(&task, &a, None).await;
                return self.store.task(owner, id).await;
            }
            // Approved where this process did not hear of it (another process sharing the
            // database, without a hub to relay it): the runner waiting here re-reads it.
            Status::Approved => self.notify(approval),
            _ => {}
        }
        Ok(Some(task))
    }
}

/// The 2026-07-28 `Task` fields of a gate task.
pub fn modern_task_view(task: &GateTask) -> Value {
    let legacy = task_view(task);
    let mut view = json!({
        "taskId": legacy["taskId"],
        "status": legacy["status"],
        "createdAt": legacy["createdAt"],
        "lastUpdatedAt": legacy["lastUpdatedAt"],
        "ttlMs": legacy["ttl"],
        "pollIntervalMs": POLL_INTERVAL_MS,
    });
    if let Some(m) = legacy.get("statusMessage") {
        view["statusMessage"] = m.clone();
    }
    view
}

/// The 2026-07-28 `DetailedTask` of `tasks/get`: the task with its result or error when ended.
fn detailed_task(task: &GateTask) -> Value {
    let mut view = modern_task_view(task);
    match task.state {
        TaskState::Completed => {
            view["result"] = task.result.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or(json!({}));
        }
        TaskState::Failed => {
            view["error"] = task.error.as_deref().and_then(|e| serde_json::from_str(e).ok()).unwrap_or(json!({}));
        }
        _ => {}
    }
    view
}

/// The 2025-11-25 `Task` object of a gate task.
pub fn task_view(task: &GateTask) -> Value {
    let status = match task.state {
        TaskState::Working | TaskState::Running => "working",
        TaskState::Completed => "completed",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
    };
    let message = match task.state {
        TaskState::Running => Some("Approved; running".to_owned()),
        _ => task.status_message.clone(),
    };
    let mut view = json!({
        "taskId": task.id,
        "status": status,
        "createdAt": replies::iso8601(task.created_at),
        "lastUpdatedAt": replies::iso8601(task.updated_at),
        "ttl": task.ttl_ms,
        "pollInterval": POLL_INTERVAL_MS,
    });
    if let Some(m) = message {
        view["statusMessage"] = Value::String(m);
    }
    view
}

/// `tasks/result` of a terminal task: the result with the related-task `_meta`, or the error.
fn final_answer(task: &GateTask) -> TaskAnswer {
    if let Some(error) = task.error.as_deref() {
        let e: Value = serde_json::from_str(error).unwrap_or(Value::Null);
        return TaskAnswer::Error {
            code: e.get("code").and_then(Value::as_i64).unwrap_or(code::INTERNAL_ERROR),
            message: e.get("message").and_then(Value::as_str).unwrap_or("the task failed").to_owned(),
        };
    }
    let mut result: Value =
        task.result.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_else(|| json!({ "content": [] }));
    if !result.is_object() {
        result = json!({ "content": [] });
    }
    result["_meta"][RELATED_TASK] = json!({ "taskId": task.id });
    TaskAnswer::Result(jsonrpc::to_raw(&result))
}

/// What a task cancelled after its call went upstream reads (status message, result): the call
/// was not stopped and may have had its effect, so it must not read "not run" (the model would
/// take it as never done); its outcome is recorded on the approval, not given to the client.
fn cancelled_after_sent() -> (&'static str, Value) {
    let text = "mcp-gate: this call was cancelled by the client after it was approved and sent upstream; \
                it was not stopped and may have had its effect. Its outcome is not reported to the client: \
                check before doing it again.";
    let result = json!({
        "content": [{ "type": "text", "text": text }],
        "isError": true,
        "_meta": { "mcp-gate/approval": { "status": "cancelled" } },
    });
    ("Cancelled by the client after its call was sent upstream; it may have run", result)
}

/// The agent name an owner key carries (`agent:NAME`, `stdio:NAME`); `None` for `anonymous`.
fn owner_agent(owner: &str) -> Option<String> {
    owner.split_once(':').map(|(_, name)| name.to_owned())
}

fn waiting_message(a: &Approval, url: &str) -> String {
    format!(
        "Waiting for a person to approve `{}` on `{}`: {url} (expires at {})",
        a.tool,
        a.server,
        replies::iso8601(a.expires_at)
    )
}
