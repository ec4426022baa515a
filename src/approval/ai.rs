//! The held path of calls whose workflow is `ai_driven`: a [`Reviewer`] decides inline, and its
//! decision goes through the same store records as a person's.
//!
//! ```text
//! identical call already has a request? ── yes ──▶ join it (wait_for; checked again when the
//!        │                                         request is opened, in the same transaction)
//!        │ no
//!        ▼
//! review (cached answer, or ask the model; bounded by the provider's timeout)
//!        │
//!        ├─ approve (final or fallback) ─▶ request decided by `ai:MODEL` ─▶ claim ─▶ runs once
//!        ├─ deny, final ────────────────▶ request denied by `ai:MODEL`: the reasoning, like a person's denial
//!        ├─ deny, fallback ─────────────▶ refused, nothing stored but the audit record
//!        └─ escalate ───────────────────▶ pending request in the escalation workflow (wait or fail fast)
//! ```
//!
//! Every review is audited as `ai_decision` with the answer, the model, the provider, the
//! guidelines in force, what was applied and any error.

use std::sync::Arc;

use serde_json::json;
use tracing::{info, warn};

use super::{ApprovalService, Caller, OwnedCall, replies};
use crate::gate::Verdict;
use crate::gate::tools::ToolInfo;
use crate::identity::Principal;
use crate::policy::Decision;
use crate::review::{
    AiWorkflow, Applied, DecidedBy, RECENT_DECISIONS, RecentDecision, Review, ReviewDecision, Reviewer, Subject,
};
use crate::store::audit::{AuditRecord, Event};
use crate::store::{Approval, ApprovalFilter, Status, Vote, VoteDecision};

impl ApprovalService {
    /// Hands the `ai_driven` workflows to `reviewer`; set once, at start-up. Without a reviewer
    /// such workflows are decided by people like any other.
    pub fn set_reviewer(&self, reviewer: Arc<Reviewer>) {
        if self.reviewer.set(reviewer).is_err() {
            warn!("a reviewer was already set; keeping the first");
        }
    }

    /// The reviewer settings of a workflow, when it is `ai_driven` and a reviewer is set.
    pub(super) fn ai_workflow(&self, name: &str) -> Option<Arc<AiWorkflow>> {
        self.reviewer.get()?.workflow(name)
    }

    /// The held path of a call the policy sends to an `ai_driven` workflow.
    pub(super) async fn review_and_hold(
        self: Arc<Self>,
        ai: Arc<AiWorkflow>,
        call: OwnedCall,
        tool: Option<ToolInfo>,
        decision: Decision,
        caller: Caller,
    ) -> Verdict {
        let Some(reviewer) = self.reviewer.get().cloned() else {
            return self.hold(call, decision, caller).await;
        };
        let key = call.request_key(&ai.name);
        let now = self.now_ms();
        // An identical call already has a request (escalated and pending, approved, or denied
        // recently): it stands, as for any held call.
        let existing = match self.store.find_standing(&key, now).await {
            Ok(a) => a,
            Err(e) => return self.fail_closed(&call, &e.to_string()),
        };
        if let Some(a) = existing {
            return self.wait_for(a, caller).await;
        }

        let subject = Subject {
            server: call.server.clone(),
            tool: call.tool.clone(),
            tool_info: tool,
            arguments: self.redactor.redact(&call.arguments),
            agent: call.agent.clone(),
            recent: self.recent_decisions(call.agent.as_deref()).await,
        };
        let review = reviewer.review(&ai, &key, &subject).await;
        let (applied, outcome) = ai.apply(&review.answer);
        let actor = ai.actor();
        let reviewer_identity = Principal::named(&actor);
        match (applied, outcome) {
            (Applied::Approve, _) => {
                let notes = match outcome {
                    DecidedBy::Final => format!("AI review: {}", explain(&ai, &review)),
                    _ => format!("fallback approve: {}", explain(&ai, &review)),
                };
                let vote = reviewer_vote(&actor, VoteDecision::Approve, Some(notes), None);
                let workflow = self.workflow(&ai.name);
                let a = match self.open_decided(&workflow, &call, &key, &decision, &vote, &reviewer_identity).await {
                    // A request waiting for a person stood for this call: it stands.
                    Ok((a, true)) => return self.wait_for(a, caller).await,
                    Ok((a, false)) => a,
                    Err(e) => return self.fail_closed(&call, &e.to_string()),
                };
                self.audit_review(&ai, &call, Some(&a), &review, applied, outcome).await;
                self.recorded(&a, &vote, workflow.required_approvals).await;
                match a.status {
                    Status::Approved => self.claim(&a, &caller.gone).await,
                    // More approvals than the reviewer's are required: it waits for people.
                    _ => self.wait_for(a, caller).await,
                }
            }
            (Applied::Deny, DecidedBy::Final) => {
                let reason = match &review.answer {
                    Ok(answer) if !answer.reasoning.trim().is_empty() => answer.reasoning.clone(),
                    _ => "no reasoning given".to_owned(),
                };
                let vote = reviewer_vote(&actor, VoteDecision::Deny, None, Some(reason));
                let workflow = self.workflow(&ai.name);
                let a = match self.open_decided(&workflow, &call, &key, &decision, &vote, &reviewer_identity).await {
                    Ok((a, true)) => return self.wait_for(a, caller).await,
                    Ok((a, false)) => a,
                    Err(e) => return self.fail_closed(&call, &e.to_string()),
                };
                self.audit_review(&ai, &call, Some(&a), &review, applied, outcome).await;
                self.recorded(&a, &vote, workflow.required_approvals).await;
                Verdict::Respond(replies::denied(&a, &self.url_for(&a.id)))
            }
            (Applied::Deny, _) => {
                self.audit_review(&ai, &call, None, &review, applied, outcome).await;
                info!(server = %call.server, tool = %call.tool, workflow = %ai.name, "refused by the reviewer's fallback");
                let (why, retry) = match &review.answer {
                    Ok(a) if a.decision == ReviewDecision::Escalate => {
                        (format!("asked for a person to decide: {}", a.reasoning), false)
                    }
                    Ok(_) => (format!("was not sure enough ({})", explain(&ai, &review)), false),
                    Err(e) => (e.summary().to_owned(), true),
                };
                Verdict::Respond(replies::denied_by_reviewer(&call.server, &call.tool, &actor, &why, retry))
            }
            (Applied::Escalate, _) => {
                let Some(to) = ai.escalation_workflow.as_deref() else {
                    return self.fail_closed(&call, "an escalating AI workflow without an escalation workflow");
                };
                let a = match self.insert_request(&self.workflow(to), &call, &key, &decision).await {
                    Ok((a, true)) => return self.wait_for(a, caller).await,
                    Ok((a, false)) => a,
                    Err(e) => return self.fail_closed(&call, &e.to_string()),
                };
                self.audit_review(&ai, &call, Some(&a), &review, applied, outcome).await;
                info!(id = %a.id, workflow = %to, "escalated by the reviewer to people");
                self.wait_for(a, caller).await
            }
        }
    }

    /// The agent's latest requests, newest first, for the reviewer's context.
    async fn recent_decisions(&self, agent: Option<&str>) -> Vec<RecentDecision> {
        let Some(agent) = agent else { return Vec::new() };
        let filter =
            ApprovalFilter { agent: Some(agent.to_owned()), limit: Some(RECENT_DECISIONS), ..Default::default() };
        match self.store.list_approvals(filter).await {
            Ok(list) => list
                .into_iter()
                .map(|a| RecentDecision {
                    at: replies::iso8601(a.decided_at.unwrap_or(a.created_at)),
                    server: a.request.server,
                    tool: a.request.tool,
                    status: a.status.to_string(),
                    decided_by: a.decided_by,
                    reason: a.deny_reason,
                })
                .collect(),
            Err(e) => {
                warn!("reading the agent's recent decisions failed: {e}");
                Vec::new()
            }
        }
    }

    /// Appends the `ai_decision` record of a review (durably, before the call goes on).
    async fn audit_review(
        &self,
        ai: &AiWorkflow,
        call: &OwnedCall,
        approval: Option<&Approval>,
        review: &Review,
        applied: Applied,
        outcome: DecidedBy,
    ) {
        let answer = review.answer.as_ref().ok();
        let detail = json!({
            "workflow": ai.name,
            "provider": ai.provider,
            "model": ai.model,
            "decision": answer.map(|a| a.decision.as_str()),
            "confidence": answer.map(|a| a.confidence),
            "reasoning": answer.map(|a| a.reasoning.as_str()),
            "threshold": ai.threshold,
            "outcome": outcome.as_str(),
            "applied": applied.as_str(),
            "escalated_to": if applied == Applied::Escalate { ai.escalation_workflow.as_deref() } else { None },
            "cached": review.cached,
            "error": review.answer.as_ref().err().map(ToString::to_string),
            "guidelines": ai.guidelines,
            "guidelines_sha256": ai.guidelines_sha256(),
        });
        let actor = ai.actor();
        match approval {
            Some(a) => self.audit(Event::AiDecision, a, Some(&actor), detail, false).await,
            None => {
                let mut detail = detail;
                detail["arguments"] = self.redactor.redact(&call.arguments);
                let record = AuditRecord {
                    event: Event::AiDecision,
                    approval_id: None,
                    server: call.server.clone(),
                    tool: call.tool.clone(),
                    agent: call.agent.clone(),
                    actor: Some(actor),
                    detail,
                };
                if let Err(e) = self.store.audit_append(record, self.now_ms()).await {
                    warn!("audit write failed: {e}");
                }
            }
        }
    }
}

/// The vote a reviewer casts, under its own name and credential.
fn reviewer_vote(actor: &str, decision: VoteDecision, notes: Option<String>, reason: Option<String>) -> Vote {
    let who = Principal::named(actor);
    Vote { actor: who.name, credential: who.credential, decision, notes, reason }
}

/// The review in a few words: `confidence 0.93: reasoning`, `confidence 0.42, below 0.80: ...`,
/// or the error.
fn explain(ai: &AiWorkflow, review: &Review) -> String {
    match &review.answer {
        Ok(a) if a.confidence < ai.threshold => format!(
            "{} with confidence {:.2}, below {:.2}: {}",
            a.decision.as_str(),
            a.confidence,
            ai.threshold,
            a.reasoning
        ),
        Ok(a) => format!("{} with confidence {:.2}: {}", a.decision.as_str(), a.confidence, a.reasoning),
        Err(e) => format!("no review ({e})"),
    }
}
