//! Recording a person's (or the reviewer's) vote on a request, and what follows once it is
//! decided: the audit record, the change published, the waiting calls woken.

use tracing::info;

use super::{ApprovalService, ChangeKind, DecideError};
use crate::store::audit::Event;
use crate::store::{Approval, Status, TransitionError, Vote, VoteDecision};

impl ApprovalService {
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
        // Processes sharing the database may not share a configuration: only one that knows
        // the request's workflow decides it, and the request keeps the quorum and the approvers
        // it was opened with (the stricter of both lists admits a voter).
        if !self.knows_workflow(&current.workflow) {
            return Err(DecideError::UnknownWorkflow(current.workflow.clone()));
        }
        let workflow = self.workflow(&current.workflow);
        let required = workflow.required_approvals.max(current.required_approvals);
        let actor = who.name.as_str();
        let opened_with = current.approvers.as_deref().unwrap_or_default();
        if !who.admitted_by(&workflow.approvers) || !who.admitted_by(opened_with) {
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
        let result = self.store.record_vote(id, vote.clone(), required, self.now_ms()).await;
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
        self.recorded(&approval, &vote, required).await;
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
}
