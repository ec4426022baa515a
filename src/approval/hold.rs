//! Holding a call: the request is opened (or joined) in the store, the caller waits on it or gets
//! its URL, and an approval is claimed once for a caller that is still there.

use std::sync::Arc;

use serde_json::Value;
use tracing::{info, warn};

use super::{
    ApprovalService, Caller, ChangeKind, DecideError, OpenError, OwnedCall, PROGRESS_EVERY, Workflow, new_id, replies,
};
use crate::gate::{CancellationToken, Outcome, Verdict};
use crate::policy::{Action, Decision};
use crate::store::audit::Event;
use crate::store::{Approval, ApprovalRequest, Claim, SYSTEM_ACTOR, Status, Vote};

impl ApprovalService {
    /// The held path of a call the policy sends to approval.
    pub(super) async fn hold(self: Arc<Self>, call: OwnedCall, decision: Decision, caller: Caller) -> Verdict {
        match self.open_request(&call, &decision).await {
            Ok(approval) => self.wait_for(approval, caller).await,
            Err(refused) => refused,
        }
    }

    /// Opens the approval request of a held call, or joins the pending one of the same call.
    /// `Err` is the answer when it cannot be opened (the call does not run).
    pub(super) async fn open_request(&self, call: &OwnedCall, decision: &Decision) -> Result<Approval, Verdict> {
        let Action::Approve { workflow } = &decision.action else {
            return Err(Verdict::Respond(replies::internal("a held call without an approve decision")));
        };
        let workflow = self.workflow(workflow);
        let key = call.request_key(&workflow.name);
        match self.insert_request(&workflow, call, &key, decision).await {
            Ok((approval, _joined)) => Ok(approval),
            Err(e) => Err(self.fail_closed(call, &e.to_string())),
        }
    }

    /// Opens a pending request for the call in `workflow`, or joins the request that stands for
    /// the same key (reusable, or a denial that stands until the request would have expired): one
    /// store transaction, so identical calls from any number of tasks or processes share one
    /// request. Only the call that created it audits `requested` and announces it. `true`: joined.
    pub(super) async fn insert_request(
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
        crate::traces::approval(&a.id);
        if opened.joined {
            return Ok((a, true));
        }
        self.requested(&a).await;
        Ok((a, false))
    }

    /// Opens the request of a call that `who` (a reviewer) has already decided, with the vote, in
    /// one store transaction (see [`Store::open_decided`]); audits `requested`. The caller audits the
    /// decision with [`ApprovalService::recorded`] once it has recorded why. `true`: a pending request for
    /// the key stood and was joined instead, undecided.
    pub(super) async fn open_decided(
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
        crate::traces::approval(&opened.approval.id);
        if !opened.joined {
            self.requested(&opened.approval).await;
        }
        Ok((opened.approval, opened.joined))
    }

    /// Audits and announces a request just created.
    pub(super) async fn requested(&self, a: &Approval) {
        let channel = a.channel.as_deref().unwrap_or("-");
        info!(id = %a.id, server = %a.server, tool = %a.tool, workflow = %a.workflow, channel, "approval requested");
        let detail = match &a.channel {
            Some(channel) => serde_json::json!({ "channel": channel }),
            None => serde_json::json!({}),
        };
        self.audit(Event::Requested, a, a.agent.as_deref(), detail, false).await;
        self.publish(ChangeKind::Requested, a, a.agent.as_deref());
    }

    /// The request to store for a held call in `workflow`.
    pub(super) fn new_request(
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
            channel: call.channel.map(|c| c.as_str().to_owned()),
            approvers: Some(workflow.approvers.clone()),
        })
    }

    /// Resolves once approval `id` is no longer pending, heard at once from this process and
    /// re-read every [`PROGRESS_EVERY`] for a decision made elsewhere; never while the proxy
    /// stops with it still pending.
    pub(super) async fn until_decided(self: Arc<Self>, id: String) {
        let mut changes = self.subscribe(&id);
        loop {
            match self.store.get_approval(&id).await {
                Ok(Some(a)) if a.status == Status::Pending => {}
                Ok(_) => break,
                Err(e) => {
                    warn!(approval = %id, "cannot read the approval: {e}");
                }
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                _ = self.stopping.cancelled() => {
                    drop(changes);
                    self.unsubscribe(&id);
                    return std::future::pending().await;
                }
            }
        }
        drop(changes);
        self.unsubscribe(&id);
    }

    /// Waits for a decision on `approval` on behalf of `caller`, and claims it for the caller
    /// when it is approved. A caller that leaves ends the wait without a claim (the answer is
    /// then dropped by the session); an approval stays usable by the identical retry.
    pub(super) async fn wait_for(self: Arc<Self>, approval: Approval, caller: Caller) -> Verdict {
        let Caller { progress, held, gone, deadline } = caller;
        let id = approval.id.clone();
        let url = self.url_for(&id);
        if let Some(held) = held.filter(|_| approval.status == Status::Pending) {
            held.notify(&id, &url);
        }
        let mut changes = self.subscribe(&id);
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
    pub(super) async fn claim(self: &Arc<Self>, approval: &Approval, gone: &CancellationToken) -> Verdict {
        let claim = self.store.claim_execution(&approval.id, self.now_ms()).await;
        self.claimed(approval, gone, claim).await
    }

    /// The verdict of a claim the store made (or refused) for this call; see [`Self::claim`].
    pub(super) async fn claimed(
        self: &Arc<Self>,
        approval: &Approval,
        gone: &CancellationToken,
        claim: Result<Claim, crate::store::StoreError>,
    ) -> Verdict {
        let url = self.url_for(&approval.id);
        match claim {
            Ok(Claim::Run) => {
                // A call whose claim cannot be recorded does not run: the claim goes back.
                let audited =
                    self.try_audit(Event::Claimed, approval, Some(SYSTEM_ACTOR), serde_json::json!({}), false);
                if let Err(e) = audited.await {
                    warn!(id = %approval.id, "the claim cannot be audited, the call does not run: {e}");
                    self.release(&approval.id).await;
                    return Verdict::Respond(replies::internal(&format!("its claim cannot be audited: {e}")));
                }
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
    pub(super) async fn release(&self, id: &str) {
        match self.store.release_claim(id, self.now_ms()).await {
            Ok(a) => {
                info!(id, "claim released: the caller left before the call was sent");
                self.audit(Event::Released, &a, Some(SYSTEM_ACTOR), serde_json::json!({}), false).await;
            }
            Err(e) => warn!(id, "releasing a claim failed: {e}"),
        }
    }

    pub(super) fn fail_closed(&self, call: &OwnedCall, why: &str) -> Verdict {
        warn!(server = %call.server, tool = %call.tool, "approval store failed; call refused: {why}");
        Verdict::Respond(replies::internal(why))
    }
}
