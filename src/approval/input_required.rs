//! Held calls of 2026-07-28 clients that declared URL-mode elicitation: answered at once with an
//! `input_required` result that asks the client to open the approval page, and continued on the
//! client's retry, which carries the proxy's signed `requestState` (see [`super::state`]).
//!
//! On a retry, after the policy said `approve` again:
//!
//! | the state / the request | answer |
//! |---|---|
//! | not issued by the proxy, altered, another owner's or call's, already used | JSON-RPC `-32602`, audited `state_refused` |
//! | expired | ignored: the call is held afresh |
//! | pending, the client accepted (or a state-only round) | wait up to `wait_secs` (cut to the client's `answer_within`); still pending: `input_required` with a new state only, or after [`ApprovalSettings::mrtr_rounds`] rounds the readable pending result |
//! | pending, no answer to the page it asked to open | the first answer again (a new state), or after the rounds the pending result |
//! | pending, declined or cancelled | a result saying so (the request stays open) |
//! | approved | claimed together with the state's use (one transaction): runs once |
//! | denied, expired, spent | the same results as any held call |
//!
//! [`ApprovalSettings::mrtr_rounds`]: super::ApprovalSettings::mrtr_rounds

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::warn;

use super::state::{Payload, StateError, StateKey};
use super::{ApprovalService, Caller, OwnedCall, PROGRESS_EVERY, replies};
use crate::gate::{APPROVAL_INPUT, GateError, Verdict, is_own_state};
use crate::policy::{Action, Decision};
use crate::store::audit::{AuditRecord, Event};
use crate::store::request_state::StateUse;
use crate::store::{Approval, Status, StoreError};
use crate::wire::jsonrpc;

/// What a retry brought back for the proxy: its own `requestState` and the client's answer to
/// the approval page (`accept`, `decline`, `cancel`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Retry {
    state: Option<String>,
    action: Option<String>,
}

impl Retry {
    /// Reads a call's params (as the client sent them).
    pub(super) fn of(params: &RawValue) -> Retry {
        let text = params.get();
        if !jsonrpc::may_hold(text, "requestState") && !jsonrpc::may_hold(text, APPROVAL_INPUT) {
            return Retry::default();
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else { return Retry::default() };
        let state = v.get("requestState").and_then(Value::as_str).filter(|s| is_own_state(s)).map(str::to_owned);
        let action = v
            .get("inputResponses")
            .and_then(|r| r.get(APPROVAL_INPUT))
            .and_then(|r| r.get("action"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Retry { state, action }
    }
}

impl ApprovalService {
    /// The signing key of request states, read from the store once.
    async fn state_key(&self) -> Result<Arc<StateKey>, crate::store::StoreError> {
        self.state_key
            .get_or_try_init(|| async { Ok(Arc::new(StateKey::new(self.store.request_state_key().await?))) })
            .await
            .cloned()
    }

    /// Reads the signing key of request states, so that [`ApprovalService::issued_state`] can
    /// answer without waiting.
    pub(super) async fn load_state_key(&self) {
        if let Err(e) = self.state_key().await {
            warn!("reading the request-state key failed: {e}");
        }
    }

    /// Whether this service's key signed `state` (false until the key is read, at start-up).
    pub fn issued_state(&self, state: &str) -> bool {
        self.state_key.get().is_some_and(|k| k.signed(state))
    }

    /// The held path of a call whose client takes `input_required`.
    pub(super) async fn hold_input_required(
        self: Arc<Self>,
        call: OwnedCall,
        decision: Decision,
        caller: Caller,
        owner: String,
        retry: Retry,
    ) -> Verdict {
        let Action::Approve { workflow } = &decision.action else {
            return Verdict::Respond(replies::internal("a held call without an approve decision"));
        };
        let workflow = self.workflow(workflow);
        let key = call.request_key(&workflow.name);
        let signer = match self.state_key().await {
            Ok(k) => k,
            Err(e) => return self.fail_closed(&call, &format!("storage: {e}")),
        };
        if let Some(text) = &retry.state {
            match signer.verify(text, &owner, &key, self.now_ms()) {
                Ok(payload) => return self.next_round(&call, payload, retry.action, caller, &signer).await,
                // A state past its approval's deadline says nothing any more: held afresh.
                Err(StateError::Expired) => {}
                Err(e) => return self.refuse_state(&call, &owner, e),
            }
        }
        let approval = match self.insert_request(&workflow, &call, &key, &decision).await {
            Ok((a, _joined)) => a,
            Err(e) => return self.fail_closed(&call, &e.to_string()),
        };
        if approval.status != Status::Pending {
            // Decided already (a reusable approval, a standing denial): answered as any held call.
            return self.wait_for(approval, caller).await;
        }
        self.ask(&approval, &owner, &key, &signer, 0, true)
    }

    /// A retry that brought back a valid state of this owner and call.
    async fn next_round(
        self: &Arc<Self>,
        call: &OwnedCall,
        p: Payload,
        action: Option<String>,
        caller: Caller,
        signer: &StateKey,
    ) -> Verdict {
        match self.store.request_state_used(&p.nonce).await {
            Ok(false) => {}
            Ok(true) => return self.refuse_state(call, &p.owner, StateError::Used),
            Err(e) => return self.fail_closed(call, &format!("storage: {e}")),
        }
        let used = StateUse {
            nonce: p.nonce.clone(),
            approval_id: p.approval_id.clone(),
            owner: p.owner.clone(),
            expires_at: p.expires_at,
        };
        let approval = match self.store.get_approval(&p.approval_id).await {
            Ok(Some(a)) => a,
            Ok(None) => return Verdict::Respond(replies::internal("the approval request vanished")),
            Err(e) => return self.fail_closed(call, &format!("storage: {e}")),
        };
        // The retry of a state-only answer carries no answer: the client accepted before it.
        let accepted = match action.as_deref() {
            Some("accept") => true,
            Some(_) => false,
            None => !p.asked,
        };
        let approval = if approval.status == Status::Pending {
            if !accepted {
                if let Err(v) = self.use_state(call, used).await {
                    return v;
                }
                let url = self.url_for(&approval.id);
                return match action {
                    Some(_) => Verdict::Respond(declined(&approval, &url)),
                    // Asked and not answered: asked again, as long as rounds remain.
                    None if p.round >= self.settings.mrtr_rounds() => {
                        Verdict::Respond(replies::pending(&approval, &url))
                    }
                    None => self.ask(&approval, &p.owner, &p.call_key, signer, p.round + 1, true),
                };
            }
            match self.wait_decided(approval, &caller).await {
                Ok(a) => a,
                Err(StoreError::NotFound(_)) => {
                    return Verdict::Respond(replies::internal("the approval request vanished"));
                }
                Err(e) => return Verdict::Respond(replies::internal(&format!("storage: {e}"))),
            }
        } else {
            approval
        };
        let url = self.url_for(&approval.id);
        if caller.gone.is_cancelled() {
            // Nobody reads the answer; the state stays usable and nothing is claimed.
            return Verdict::Respond(replies::pending(&approval, &url));
        }
        if approval.status == Status::Approved {
            return match self.store.claim_with_state(used).await {
                Ok(None) => self.refuse_state(call, &p.owner, StateError::Used),
                Ok(Some(claim)) => self.claimed(&approval, &caller.gone, Ok(claim)).await,
                Err(e) => self.claimed(&approval, &caller.gone, Err(e)).await,
            };
        }
        if let Err(v) = self.use_state(call, used).await {
            return v;
        }
        match approval.status {
            Status::Pending if p.round >= self.settings.mrtr_rounds() => {
                Verdict::Respond(replies::pending(&approval, &url))
            }
            // Still pending: a new state only, so the client retries without asking again.
            Status::Pending => self.ask(&approval, &p.owner, &p.call_key, signer, p.round + 1, false),
            Status::Denied => Verdict::Respond(replies::denied(&approval, &url)),
            Status::Expired => Verdict::Respond(replies::expired(&approval, &url)),
            Status::Executed | Status::Failed | Status::Approved => Verdict::Respond(replies::spent(&approval, &url)),
        }
    }

    /// Records that a state was used; a replay (used meanwhile) is refused.
    async fn use_state(&self, call: &OwnedCall, used: StateUse) -> Result<(), Verdict> {
        let owner = used.owner.clone();
        match self.store.use_request_state(used).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.refuse_state(call, &owner, StateError::Used)),
            Err(e) => Err(self.fail_closed(call, &format!("storage: {e}"))),
        }
    }

    /// Waits for a decision on `approval` (with progress) until the caller's deadline (`wait_secs`,
    /// cut to its client's `answer_within`), and returns it as it then stands.
    async fn wait_decided(&self, approval: Approval, caller: &Caller) -> Result<Approval, StoreError> {
        let id = approval.id.clone();
        let url = self.url_for(&id);
        let mut changes = self.subscribe(&id);
        let deadline = caller.deadline;
        let mut ticks = 0u32;
        let mut current = approval;
        let outcome = loop {
            current = match self.store.get_approval(&id).await {
                Ok(Some(a)) => a,
                Ok(None) => break Err(StoreError::NotFound(id.clone())),
                Err(e) => break Err(e),
            };
            let now = tokio::time::Instant::now();
            if current.status != Status::Pending
                || now >= deadline
                || self.stopping.is_cancelled()
                || caller.gone.is_cancelled()
            {
                break Ok(());
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break Ok(()) },
                _ = self.stopping.cancelled() => break Ok(()),
                _ = caller.gone.cancelled() => break Ok(()),
                _ = tokio::time::sleep((deadline - now).min(PROGRESS_EVERY)) => {
                    if let Some(p) = caller.progress.as_ref().filter(|_| tokio::time::Instant::now() < deadline) {
                        ticks += 1;
                        p.notify(f64::from(ticks), &replies::waiting_message(&current, &url));
                    }
                }
            }
        };
        drop(changes);
        self.unsubscribe(&id);
        outcome.map(|()| current)
    }

    /// An `input_required` answer with a new state for `round`: with the request to open the
    /// approval page (`page`), or the state only.
    fn ask(&self, a: &Approval, owner: &str, key: &str, signer: &StateKey, round: u32, page: bool) -> Verdict {
        let nonce = match Payload::new_nonce() {
            Ok(n) => n,
            Err(e) => return Verdict::Respond(replies::internal(&e.to_string())),
        };
        let payload = Payload {
            approval_id: a.id.clone(),
            call_key: key.to_owned(),
            owner: owner.to_owned(),
            nonce,
            round,
            asked: page,
            expires_at: a.expires_at,
        };
        let url = self.url_for(&a.id);
        let state = signer.sign(&payload);
        Verdict::Respond(if page { open_page(a, &url, &state) } else { retry_later(a, &url, &state) })
    }

    /// Refuses a retry whose state cannot be used, with an audit record of it.
    fn refuse_state(&self, call: &OwnedCall, owner: &str, e: StateError) -> Verdict {
        warn!(server = %call.server, tool = %call.tool, owner, "requestState refused: {e}");
        self.append_later(AuditRecord {
            event: Event::StateRefused,
            approval_id: None,
            server: call.server.clone(),
            tool: call.tool.clone(),
            agent: call.agent.clone(),
            actor: Some("proxy".into()),
            detail: json!({ "reason": e.to_string(), "owner": owner }),
        });
        Verdict::Refuse(GateError::InvalidParams(e.to_string()))
    }
}

fn approval_meta(a: &Approval, url: &str) -> Value {
    json!({ "id": a.id, "status": "pending", "url": url })
}

/// `input_required` asking the client to open the approval page.
fn open_page(a: &Approval, url: &str, state: &str) -> Box<RawValue> {
    let message = format!(
        "mcp-gate: `{}` on `{}` needs a person's approval. Open the page to approve or deny it; \
         the call continues when it is decided.",
        a.tool, a.server
    );
    jsonrpc::to_raw(&json!({
        "resultType": "input_required",
        "inputRequests": { APPROVAL_INPUT: {
            "method": "elicitation/create",
            "params": { "mode": "url", "url": url, "message": message },
        }},
        "requestState": state,
        "_meta": { "mcp-gate/approval": approval_meta(a, url) },
    }))
}

/// `input_required` with a state only: the client retries at once, without asking anyone.
fn retry_later(a: &Approval, url: &str, state: &str) -> Box<RawValue> {
    jsonrpc::to_raw(&json!({
        "resultType": "input_required",
        "requestState": state,
        "_meta": { "mcp-gate/approval": approval_meta(a, url) },
    }))
}

/// The client declined (or dismissed) opening the page: the request stays open.
fn declined(a: &Approval, url: &str) -> Box<RawValue> {
    let text = format!(
        "mcp-gate: the user declined to open the approval page for `{}` on server `{}`, so the call did not run. \
         The approval request stays open at {url} until {}; once it is approved, retry exactly the same call.",
        a.tool,
        a.server,
        replies::iso8601(a.expires_at)
    );
    jsonrpc::to_raw(&json!({
        "content": [{ "type": "text", "text": text }],
        "isError": true,
        "_meta": { "mcp-gate/approval": approval_meta(a, url) },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_reads_only_our_state_and_our_answer() {
        let raw = |v: Value| jsonrpc::to_raw(&v);
        assert_eq!(Retry::of(&raw(json!({"name": "t"}))), Retry::default());
        let r = Retry::of(&raw(json!({"requestState": "mcpg1.x.y", "inputResponses": {
            "mcp-gate/approval": {"action": "accept"}, "other": {"action": "decline"}}})));
        assert_eq!(r, Retry { state: Some("mcpg1.x.y".into()), action: Some("accept".into()) });
        let r = Retry::of(&raw(json!({"requestState": "upstream", "inputResponses": {"other": {"action": "accept"}}})));
        assert_eq!(r, Retry::default());
    }
}
