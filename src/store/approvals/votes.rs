//! Votes: one per credential, and the decision they make.

use super::*;

impl Store {
    /// Records one reviewer's vote and, if it decides the approval, the transition, in one transaction.
    ///
    /// A deny vote denies at once; approve votes approve when `max(required, 1)` distinct actors have
    /// approved. A vote after the deadline moves the approval to `Expired` (committed) and returns
    /// [`TransitionError::Expired`].
    pub async fn record_vote(
        &self,
        id: &str,
        vote: Vote,
        required: u32,
        now: i64,
    ) -> Result<Approval, TransitionError> {
        let id = id.to_owned();
        self.call(move |conn| Ok(vote_tx(conn, &id, vote, required, now))).await?
    }
}

fn vote_tx(conn: &mut Conn, id: &str, vote: Vote, required: u32, now: i64) -> Result<Approval, TransitionError> {
    // An expiry is committed, with the refusal it causes; any other refusal rolls back.
    conn.write_or_undo(|tx| match vote_in(tx, id, vote, required, now) {
        Err(TransitionError::Expired) => Ok(Err(TransitionError::Expired)),
        other => other.map(Ok),
    })?
}

/// The vote of [`Store::record_vote`], inside the caller's transaction.
pub(super) fn vote_in(
    tx: &mut dyn Sql,
    id: &str,
    vote: Vote,
    required: u32,
    now: i64,
) -> Result<Approval, TransitionError> {
    let a = load(tx, id)?.ok_or_else(|| TransitionError::NotFound(id.to_owned()))?;
    if a.status != Status::Pending {
        return Err(TransitionError::NotPending { status: a.status });
    }
    if close_if_lapsed(tx, &a, now)?.is_some() {
        return Err(TransitionError::Expired);
    }
    let same_credential: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM approval_votes WHERE approval_id = ?1 AND credential = ?2)",
            params![id, vote.credential],
        )?
        .get(0)?;
    if same_credential || a.votes.iter().any(|v| v.actor == vote.actor) {
        return Err(TransitionError::AlreadyVoted { actor: vote.actor });
    }
    tx.execute(
        "INSERT INTO approval_votes (approval_id, actor, decision, notes, reason, at, credential)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, vote.actor, vote.decision.as_str(), vote.notes, vote.reason, now, vote.credential],
    )?;

    let decided = match vote.decision {
        VoteDecision::Deny => Some(Status::Denied),
        VoteDecision::Approve => {
            let approves = a.votes.iter().filter(|v| v.decision == VoteDecision::Approve).count() + 1;
            (approves >= required.max(1) as usize).then_some(Status::Approved)
        }
    };
    if let Some(to) = decided {
        let deny_reason = if to == Status::Denied { vote.reason.as_deref() } else { None };
        tx.execute(
            "UPDATE approvals SET status = ?2, decided_at = ?3, decided_by = ?4, deny_reason = ?5, notes = ?6
             WHERE id = ?1",
            params![id, to, now, vote.actor, deny_reason, vote.notes],
        )?;
        insert_transition(
            tx,
            id,
            now,
            Some(Status::Pending),
            to,
            &vote.actor,
            vote.notes.as_deref(),
            vote.reason.as_deref(),
        )?;
    }
    let stored = load(tx, id)?.ok_or_else(|| TransitionError::NotFound(id.to_owned()))?;
    Ok(stored)
}
