//! Approval gating: the [`Gate`] that applies the policy to each `tools/call` and holds the
//! calls that need approval.
//!
//! Life of a held call: the policy says `approve` -> the call's key (server, tool, canonical
//! arguments) finds a reusable approval or a new pending one is stored -> the caller waits (up
//! to `wait_secs`, with progress notifications) or gets the approval URL at once -> when a
//! decision lands, waiting callers wake within milliseconds -> an approved call is claimed in
//! the store (exactly once, or within the grant window) and sent upstream unchanged; its
//! outcome is recorded. A caller that goes away does not cancel the approval: an identical
//! retry joins it.

mod ai;
pub mod changes;
pub mod replies;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::gate::{CancellationToken, Gate, Outcome, ProgressSink, RefusedCall, ToolCall, Verdict};
use crate::policy::{Action, CallFacts, Decision, Policy, Risk};
use crate::store::audit::{AuditRecord, Event, Redactor};
use crate::store::{
    Approval, ApprovalRequest, Claim, SYSTEM_ACTOR, Status, Store, TransitionError, Vote, VoteDecision,
};
pub use changes::{Change, ChangeKind, Changes};

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
#[derive(Debug, Clone, Default)]
pub struct ApprovalSettings {
    /// How long a held call waits for a decision; zero fails fast.
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
}

impl ApprovalSettings {
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
pub struct Approvals {
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
    /// Cancelled when the process stops: held calls stop waiting (see [`Approvals::stop_waiting`]).
    stopping: tokio_util::sync::CancellationToken,
}

impl Approvals {
    pub fn new(store: Store, policy: Arc<Policy>, settings: ApprovalSettings) -> Arc<Approvals> {
        let redactor = Redactor::new(settings.redact.clone());
        let approvals = Arc::new(Approvals {
            store,
            policy,
            settings,
            redactor,
            waiters: DashMap::new(),
            changes: Changes::default(),
            warned: DashSet::new(),
            reviewer: std::sync::OnceLock::new(),
            stopping: tokio_util::sync::CancellationToken::new(),
        });
        // At start-up: the claims of a previous run that crashed are settled at once, without waiting
        // for the hub's sweeper.
        let weak = Arc::downgrade(&approvals);
        tokio::spawn(async move {
            if let Some(a) = weak.upgrade() {
                a.settle_orphaned_claims().await;
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

    fn workflow(&self, name: &str) -> Workflow {
        self.settings.workflows.get(name).cloned().unwrap_or_else(|| Workflow::default_named(name))
    }

    /// Records an approver's decision and wakes the calls waiting on it.
    pub async fn decide(
        &self,
        id: &str,
        who: &crate::identity::Principal,
        approve: bool,
        notes: Option<String>,
        reason: Option<String>,
    ) -> Result<Approval, DecideError> {
        let current = self
            .store
            .get_approval(id)
            .await
            .map_err(DecideError::Store)?
            .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
        let workflow = self.workflow(&current.workflow);
        let actor = who.name.as_str();
        if !who.admitted_by(&workflow.approvers) {
            return Err(DecideError::NotAnApprover(actor.to_owned(), workflow.name));
        }
        let own = current.agent.as_deref().map(crate::visible::normalise_name);
        if approve && own.is_some_and(|agent| agent == crate::visible::normalise_name(actor)) {
            return Err(DecideError::OwnRequest(actor.to_owned()));
        }
        let reason = reason.filter(|r| !r.trim().is_empty());
        if !approve && reason.is_none() {
            return Err(DecideError::ReasonRequired("deny"));
        }
        if approve && workflow.justify_approve && reason.is_none() && notes.as_deref().is_none_or(str::is_empty) {
            return Err(DecideError::ReasonRequired("approve in this workflow"));
        }
        let vote = Vote {
            actor: actor.to_owned(),
            credential: who.credential.clone(),
            decision: if approve { VoteDecision::Approve } else { VoteDecision::Deny },
            notes,
            reason,
        };
        let result = self.store.record_vote(id, vote.clone(), workflow.required_approvals, self.now_ms()).await;
        let approval = match result {
            Ok(a) => a,
            Err(TransitionError::Expired) => {
                self.after_change(id).await;
                return Err(DecideError::Expired);
            }
            Err(TransitionError::NotPending { status }) => return Err(DecideError::NotPending(status.to_string())),
            Err(TransitionError::AlreadyVoted { .. }) if who.credential != actor => {
                return Err(DecideError::AlreadyVoted(format!(
                    "the {} credential (deciding as {actor})",
                    who.credential
                )));
            }
            Err(TransitionError::AlreadyVoted { .. }) => return Err(DecideError::AlreadyVoted(actor.to_owned())),
            Err(TransitionError::NotFound(_)) => return Err(DecideError::NotFound(id.to_owned())),
            Err(TransitionError::Store(e)) => return Err(DecideError::Store(e)),
        };
        self.recorded(&approval, &vote, workflow.required_approvals).await;
        Ok(approval)
    }

    /// Audits and announces a vote recorded on `approval` (as stored after it).
    pub(crate) async fn recorded(&self, approval: &Approval, vote: &Vote, required: u32) {
        let id = approval.id.as_str();
        let actor = vote.actor.as_str();
        let event = match approval.status {
            Status::Approved => Some(Event::Approved),
            Status::Denied => Some(Event::Denied),
            _ => None,
        };
        let detail = serde_json::json!({
            "vote": vote.decision.as_str(),
            "notes": vote.notes,
            "reason": vote.reason,
            "status": approval.status.as_str(),
            "votes": approval.votes.len(),
            "required": required,
        });
        self.audit(event.unwrap_or(Event::Approved), approval, Some(actor), detail, event.is_none()).await;
        info!(id, actor, status = approval.status.as_str(), "decision recorded");
        self.notify(id);
        let kind = match approval.status {
            Status::Approved => ChangeKind::Approved,
            Status::Denied => ChangeKind::Denied,
            _ => ChangeKind::Voted,
        };
        self.publish(kind, approval, Some(actor));
    }

    /// Expires overdue requests and settles the claims of stopped processes (called by the
    /// sweeper every second).
    pub async fn sweep(&self) {
        match self.store.expire_due(self.now_ms()).await {
            Ok(expired) => {
                for a in expired {
                    self.expired(&a).await;
                }
            }
            // Already logged as an error by the store, once.
            Err(crate::store::StoreError::Replaced { .. }) => return,
            Err(e) => warn!("expiry sweep failed: {e}"),
        }
        self.settle_orphaned_claims().await;
        self.warn_expiring().await;
    }

    /// Announces pending requests that are close to their deadline, once each.
    async fn warn_expiring(&self) {
        if self.settings.expiry_warning.is_zero() {
            return;
        }
        let warning = self.settings.expiry_warning.as_millis() as i64;
        let now = self.now_ms();
        let due = match self.store.pending_expiring(now, warning).await {
            Ok(due) => due,
            Err(e) => return warn!("expiry warning query failed: {e}"),
        };
        self.warned.retain(|id| due.iter().any(|a| &a.id == id));
        for a in due {
            if self.warned.insert(a.id.clone()) {
                self.publish(ChangeKind::Expiring, &a, Some("system"));
            }
        }
    }

    /// Tells subscribers about a change of `approval` (as stored after it) made here.
    pub fn publish(&self, kind: ChangeKind, approval: &Approval, actor: Option<&str>) {
        self.publish_change(kind, approval, actor, false);
    }

    fn publish_change(&self, kind: ChangeKind, approval: &Approval, actor: Option<&str>, relayed: bool) {
        self.changes.publish(Change {
            kind,
            approval: Arc::new(approval.clone()),
            actor: actor.map(str::to_owned),
            at: self.now_ms(),
            relayed,
        });
    }

    /// Wakes the calls waiting on `id` after a change made elsewhere (another process sharing
    /// the store) and re-publishes it here, marked as relayed. `Ok(false)`: no such request.
    pub async fn changed_elsewhere(
        &self,
        kind: ChangeKind,
        id: &str,
        actor: Option<&str>,
    ) -> Result<bool, crate::store::StoreError> {
        self.notify(id);
        match self.store.get_approval(id).await? {
            Some(a) => {
                self.publish_change(kind, &a, actor, true);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Makes the calls waiting on `id` re-read their request from the store, without
    /// announcing anything (a change made by another process sharing the store).
    pub fn wake(&self, id: &str) {
        self.notify(id);
    }

    /// Makes every waiting call re-read its request: after a time in which changes made
    /// elsewhere may have gone unheard.
    pub fn wake_all(&self) {
        for tx in self.waiters.iter() {
            tx.send_modify(|v| *v += 1);
        }
    }

    pub fn spawn_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(a) => a.sweep().await,
                    None => break,
                }
            }
        });
    }

    async fn after_change(&self, id: &str) {
        if let Ok(Some(a)) = self.store.get_approval(id).await
            && a.status == Status::Expired
        {
            self.audit(Event::Expired, &a, Some("system"), serde_json::json!({}), false).await;
            self.publish(ChangeKind::Expired, &a, Some("system"));
        }
        self.notify(id);
    }

    fn notify(&self, id: &str) {
        if let Some(tx) = self.waiters.get(id) {
            tx.send_modify(|v| *v += 1);
        }
    }

    fn subscribe(&self, id: &str) -> watch::Receiver<u64> {
        self.waiters.entry(id.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    fn unsubscribe(&self, id: &str) {
        self.waiters.remove_if(id, |_, tx| tx.receiver_count() == 0);
    }

    /// Writes one audit record; `vote_only` marks a vote that did not change the status.
    async fn audit(&self, event: Event, a: &Approval, actor: Option<&str>, mut detail: Value, vote_only: bool) {
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
        if let Err(e) = self.store.audit_append(record, self.now_ms()).await {
            warn!("audit write failed: {e}");
        }
    }

    /// Queues the record of a call the policy decided on its own (allowed, denied); the store
    /// appends queued records in groups ([`Store::audit_append_later`]), off the call path: the
    /// call does not wait for its record.
    fn audit_call(&self, event: Event, call: &OwnedCall, decision: &Decision) {
        let record = AuditRecord {
            event,
            approval_id: None,
            server: call.server.clone(),
            tool: call.tool.clone(),
            agent: call.agent.clone(),
            actor: Some("policy".into()),
            detail: serde_json::json!({
                "rule": decision.rule,
                "arguments": self.redactor.redact(&call.arguments),
            }),
        };
        self.append_later(record);
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

    /// The held path of a call the policy sends to approval.
    async fn hold(self: Arc<Self>, call: OwnedCall, decision: Decision, caller: Caller) -> Verdict {
        let Action::Approve { workflow } = &decision.action else {
            return Verdict::Respond(replies::internal("a held call without an approve decision"));
        };
        let workflow = self.workflow(workflow);
        let key = call_key(&call.server, &call.tool, &call.arguments);
        let approval = match self.insert_request(&workflow, &call, &key, &decision).await {
            Ok((a, _joined)) => a,
            Err(e) => return self.fail_closed(&call, &e.to_string()),
        };
        self.wait_for(approval, caller).await
    }

    /// Opens a pending request for the call in `workflow`, or joins the request that stands for
    /// the same key (reusable, or a denial that stands until the request would have expired): one
    /// store transaction, so identical calls from any number of tasks or processes share one
    /// request. Only the call that created it audits `requested` and announces it. `true`: joined.
    async fn insert_request(
        &self,
        workflow: &Workflow,
        call: &OwnedCall,
        key: &str,
        decision: &Decision,
    ) -> Result<(Approval, bool), OpenError> {
        let now = self.now_ms();
        let new = self.new_request(workflow, call, key, decision, now)?;
        let opened = self.store.open_request(new, now).await?;
        for a in &opened.expired {
            self.expired(a).await;
        }
        let a = opened.approval;
        if opened.joined {
            return Ok((a, true));
        }
        self.requested(&a).await;
        Ok((a, false))
    }

    /// Opens the request of a call that `who` (a reviewer) has already decided, with the vote, in
    /// one store transaction (see [`Store::open_decided`]); audits `requested`. The caller audits the
    /// decision with [`Approvals::recorded`] once it has recorded why. `true`: a pending request for
    /// the key stood and was joined instead, undecided.
    async fn open_decided(
        &self,
        workflow: &Workflow,
        call: &OwnedCall,
        key: &str,
        decision: &Decision,
        vote: &Vote,
        who: &crate::identity::Principal,
    ) -> Result<(Approval, bool), OpenError> {
        if !who.admitted_by(&workflow.approvers) {
            return Err(DecideError::NotAnApprover(who.name.clone(), workflow.name.clone()).into());
        }
        let now = self.now_ms();
        let new = self.new_request(workflow, call, key, decision, now)?;
        let opened = self.store.open_decided(new, vote.clone(), workflow.required_approvals, now).await?;
        for a in &opened.expired {
            self.expired(a).await;
        }
        if !opened.joined {
            self.requested(&opened.approval).await;
        }
        Ok((opened.approval, opened.joined))
    }

    /// Audits and announces a request just created.
    async fn requested(&self, a: &Approval) {
        info!(id = %a.id, server = %a.server, tool = %a.tool, workflow = %a.workflow, "approval requested");
        self.audit(Event::Requested, a, a.agent.as_deref(), serde_json::json!({}), false).await;
        self.publish(ChangeKind::Requested, a, a.agent.as_deref());
    }

    /// The request to store for a held call in `workflow`.
    fn new_request(
        &self,
        workflow: &Workflow,
        call: &OwnedCall,
        key: &str,
        decision: &Decision,
        now: i64,
    ) -> Result<ApprovalRequest, crate::random::RandomError> {
        let expiry = self.settings.expiry_for(decision.risk, workflow);
        Ok(ApprovalRequest {
            id: new_id()?,
            key: key.to_owned(),
            server: call.server.clone(),
            tool: call.tool.clone(),
            arguments: call.arguments.clone(),
            agent: call.agent.clone(),
            risk: decision.risk.map(|r| r.to_string()),
            rule: decision.rule.clone(),
            rule_reason: decision.trace.last().map(|t| t.why.clone()),
            workflow: workflow.name.clone(),
            required_approvals: workflow.required_approvals,
            grant_secs: workflow.grant_secs,
            trace: serde_json::to_value(&decision.trace).unwrap_or(Value::Null),
            created_at: now,
            expires_at: now + i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX / 2),
            tool_info: call.tool_info.clone(),
        })
    }

    /// Audits and announces a request that has just expired.
    async fn expired(&self, a: &Approval) {
        self.audit(Event::Expired, a, Some("system"), serde_json::json!({}), false).await;
        self.notify(&a.id);
        self.warned.remove(&a.id);
        self.publish(ChangeKind::Expired, a, Some("system"));
    }

    /// Settles the claims of processes that stopped between a claim and its finish (see
    /// [`Store::settle_orphaned_claims`]): each is audited as `failed` with the reason.
    pub async fn settle_orphaned_claims(&self) {
        match self.store.settle_orphaned_claims(self.now_ms()).await {
            Ok(settled) => {
                for a in settled {
                    warn!(id = %a.id, "{}", crate::store::ORPHANED);
                    let detail = serde_json::json!({ "error": crate::store::ORPHANED });
                    self.audit(Event::Failed, &a, Some(SYSTEM_ACTOR), detail, false).await;
                    self.notify(&a.id);
                    self.publish(ChangeKind::Failed, &a, Some(SYSTEM_ACTOR));
                }
            }
            Err(e) => warn!("settling the claims of stopped processes failed: {e}"),
        }
    }

    /// Waits for a decision on `approval` on behalf of `caller`, and claims it for the caller
    /// when it is approved. A caller that leaves ends the wait without a claim (the answer is
    /// then dropped by the session); an approval stays usable by the identical retry.
    async fn wait_for(self: Arc<Self>, approval: Approval, caller: Caller) -> Verdict {
        let Caller { progress, gone } = caller;
        let id = approval.id.clone();
        let url = self.url_for(&id);
        let mut changes = self.subscribe(&id);
        let deadline = tokio::time::Instant::now() + self.settings.wait;
        let mut ticks = 0u32;
        let verdict = loop {
            let current = match self.store.get_approval(&id).await {
                Ok(Some(a)) => a,
                Ok(None) => break Verdict::Respond(replies::internal("the approval request vanished")),
                Err(e) => break Verdict::Respond(replies::internal(&format!("storage: {e}"))),
            };
            match current.status {
                Status::Approved if gone.is_cancelled() => break Verdict::Respond(replies::pending(&current, &url)),
                Status::Approved => break self.claim(&current, &gone).await,
                Status::Denied => break Verdict::Respond(replies::denied(&current, &url)),
                Status::Expired => break Verdict::Respond(replies::expired(&current, &url)),
                Status::Executed | Status::Failed => {
                    // Consumed by another call: this one needs a new approval.
                    break Verdict::Respond(replies::spent(&current, &url));
                }
                Status::Pending => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || self.stopping.is_cancelled() || gone.is_cancelled() {
                break Verdict::Respond(replies::pending(&current, &url));
            }
            let next_tick = (deadline - now).min(PROGRESS_EVERY);
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break Verdict::Respond(replies::pending(&current, &url));
                    }
                }
                _ = self.stopping.cancelled() => break Verdict::Respond(replies::pending(&current, &url)),
                _ = gone.cancelled() => break Verdict::Respond(replies::pending(&current, &url)),
                _ = tokio::time::sleep(next_tick) => {
                    if let Some(p) = progress.as_ref().filter(|_| tokio::time::Instant::now() < deadline) {
                        ticks += 1;
                        p.notify(f64::from(ticks), &replies::waiting_message(&current, &url));
                    }
                }
            }
        };
        drop(changes);
        self.unsubscribe(&id);
        verdict
    }

    /// Claims an approved request for this call; the outcome is recorded when it returns. The
    /// claim is audited when it is made. If the caller left meanwhile, or leaves before the call
    /// is sent ([`Outcome::NotRun`]), the claim is given back: the approval stays usable by the
    /// identical retry, exactly once.
    async fn claim(self: &Arc<Self>, approval: &Approval, gone: &CancellationToken) -> Verdict {
        let url = self.url_for(&approval.id);
        match self.store.claim_execution(&approval.id, self.now_ms()).await {
            Ok(Claim::Run) => {
                self.audit(Event::Claimed, approval, Some(SYSTEM_ACTOR), serde_json::json!({}), false).await;
                if gone.is_cancelled() {
                    self.release(&approval.id).await;
                    return Verdict::Respond(replies::pending(approval, &url));
                }
                let me = self.clone();
                let id = approval.id.clone();
                Verdict::AllowTracked(Box::new(move |outcome: Outcome<'_>| {
                    let (ok, detail) = match outcome {
                        Outcome::Result(r) => {
                            let v: Value = serde_json::from_str(r.get()).unwrap_or(Value::Null);
                            let is_error = v.get("isError").and_then(Value::as_bool).unwrap_or(false);
                            (!is_error, serde_json::json!({ "is_error": is_error }))
                        }
                        Outcome::Error(e) => (false, serde_json::json!({ "error": e })),
                        Outcome::NotRun => {
                            tokio::spawn(async move { me.release(&id).await });
                            return;
                        }
                    };
                    tokio::spawn(async move {
                        match me.store.finish_execution(&id, ok, detail.clone(), me.now_ms()).await {
                            Ok(a) => {
                                let event = if ok { Event::Executed } else { Event::Failed };
                                me.audit(event, &a, Some("upstream"), detail, false).await;
                                let kind = if ok { ChangeKind::Executed } else { ChangeKind::Failed };
                                me.publish(kind, &a, Some("upstream"));
                            }
                            Err(e) => warn!(id, "recording the outcome failed: {e}"),
                        }
                    });
                }))
            }
            Ok(Claim::Pending) => Verdict::Respond(replies::pending(approval, &url)),
            Ok(Claim::Denied { .. }) => Verdict::Respond(replies::denied(approval, &url)),
            Ok(Claim::Expired) => Verdict::Respond(replies::expired(approval, &url)),
            Ok(Claim::Spent) => Verdict::Respond(replies::spent(approval, &url)),
            Err(e) => Verdict::Respond(replies::internal(&format!("storage: {e}"))),
        }
    }

    /// Gives back a claim whose call was never sent (its caller left), audited as `released`.
    async fn release(&self, id: &str) {
        match self.store.release_claim(id, self.now_ms()).await {
            Ok(a) => {
                info!(id, "claim released: the caller left before the call was sent");
                self.audit(Event::Released, &a, Some(SYSTEM_ACTOR), serde_json::json!({}), false).await;
            }
            Err(e) => warn!(id, "releasing a claim failed: {e}"),
        }
    }

    fn fail_closed(&self, call: &OwnedCall, why: &str) -> Verdict {
        warn!(server = %call.server, tool = %call.tool, "approval store failed; call refused: {why}");
        Verdict::Respond(replies::internal(why))
    }
}

/// The gate: evaluates the policy and holds what needs approval.
pub struct ApprovalGate {
    pub approvals: Arc<Approvals>,
}

/// Who a held call waits for: where its progress goes, and whether it is still there.
struct Caller {
    progress: Option<ProgressSink>,
    gone: CancellationToken,
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
        let decision = self.approvals.policy.evaluate(&facts);
        let owned = OwnedCall {
            server: call.server.to_owned(),
            tool: call.tool.to_owned(),
            agent: call.agent.map(str::to_owned),
            arguments: call.arguments.clone(),
            tool_info: None,
        };
        match &decision.action {
            Action::Allow => {
                self.approvals.audit_call(Event::Allowed, &owned, &decision);
                Verdict::Allow
            }
            Action::Deny { reason } => {
                self.approvals.audit_call(Event::DeniedByPolicy, &owned, &decision);
                Verdict::Respond(replies::denied_by_policy(
                    &owned.server,
                    &owned.tool,
                    decision.rule.as_deref(),
                    reason,
                ))
            }
            Action::Approve { workflow } => {
                let mut owned = owned;
                owned.tool_info = call.info.map(describe_tool);
                let approvals = self.approvals.clone();
                let caller = Caller { progress: call.progress.clone(), gone: call.gone.clone() };
                if let Some(ai) = approvals.ai_workflow(workflow) {
                    let tool = call.info.cloned();
                    return Verdict::Hold(Box::pin(approvals.review_and_hold(ai, owned, tool, decision, caller)));
                }
                Verdict::Hold(Box::pin(approvals.hold(owned, decision, caller)))
            }
        }
    }

    fn refused(&self, call: &RefusedCall<'_>) {
        self.approvals.audit_refused(call);
    }

    fn hides(&self, server: &str, tool: &crate::gate::tools::ToolInfo, agent: Option<&str>) -> bool {
        self.approvals.policy.hides_tool(server, &tool.name, agent, tool.annotations())
    }

    fn hides_any(&self) -> bool {
        self.approvals.policy.hides_any()
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

/// The identity of a call for joining and reuse: server, tool and canonical arguments.
pub fn call_key(server: &str, tool: &str, arguments: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(server.as_bytes());
    hasher.update([0]);
    hasher.update(tool.as_bytes());
    hasher.update([0]);
    hasher.update(canonical_json(arguments).as_bytes());
    hex::encode(hasher.finalize())
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

    /// Without randomness no request id can be made: the held call is answered with the gate's
    /// internal error (it does not run), and the task that holds it ends instead of panicking,
    /// which would leave its caller waiting for an answer that never comes.
    #[tokio::test]
    async fn a_held_call_without_randomness_is_refused_not_left_waiting() {
        let toml = "[[rules]]\nname = \"ask\"\ntool = \"rm\"\naction = \"approve\"\n";
        let config = crate::config::Config::from_toml(toml, "hold.toml").expect("policy");
        let store = Store::open(crate::store::Location::Memory).await.expect("store");
        let settings = ApprovalSettings { wait: Duration::from_secs(3600), ..ApprovalSettings::default() };
        let gate = ApprovalGate { approvals: Approvals::new(store, config.policy.clone(), settings) };
        let arguments = serde_json::json!({"path": "/"});
        let call = ToolCall {
            server: "fs",
            tool: "rm",
            exposed_name: "rm",
            arguments: &arguments,
            info: None,
            agent: None,
            progress: None,
            gone: CancellationToken::new(),
        };
        let Verdict::Hold(held) = gate.check(&call) else { panic!("the call should be held") };
        let _failing = crate::random::failing::on_this_thread();
        let verdict = tokio::spawn(held).await.expect("the held call's task ends without a panic");
        let Verdict::Respond(reply) = verdict else { panic!("the held call should be answered") };
        let reply = reply.get();
        assert!(reply.contains("approval gate failed") && reply.contains("randomness"), "{reply}");
        let pending = gate.approvals.store.list_approvals(crate::store::ApprovalFilter::default()).await;
        assert!(pending.expect("list").is_empty(), "no request was opened");
    }
}
