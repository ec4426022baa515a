//! Who hears of a change: the calls waiting on a request (woken through a watch per request) and
//! the change stream that feeds the event stream, the hub and the notifications.

use std::sync::Arc;

use tokio::sync::watch;

use super::{ApprovalService, Change, ChangeKind};
use crate::store::audit::Event;
use crate::store::{Approval, Status};

impl ApprovalService {
    /// Tells subscribers about a change of `approval` (as stored after it) made here.
    pub fn publish(&self, kind: ChangeKind, approval: &Approval, actor: Option<&str>) {
        self.publish_change(kind, approval, actor, false);
    }

    pub(super) fn publish_change(&self, kind: ChangeKind, approval: &Approval, actor: Option<&str>, relayed: bool) {
        if !relayed {
            // Other replicas sharing a PostgreSQL store wake their calls held on it.
            self.store.announce(kind.as_str(), &approval.id, actor);
        }
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

    pub(super) async fn after_change(&self, id: &str) {
        if let Ok(Some(a)) = self.store.get_approval(id).await
            && a.status == Status::Expired
        {
            self.audit(Event::Expired, &a, Some("system"), serde_json::json!({}), false).await;
            self.publish(ChangeKind::Expired, &a, Some("system"));
        }
        self.notify(id);
    }

    pub(super) fn notify(&self, id: &str) {
        if let Some(tx) = self.waiters.get(id) {
            tx.send_modify(|v| *v += 1);
        }
    }

    pub(super) fn subscribe(&self, id: &str) -> watch::Receiver<u64> {
        self.waiters.entry(id.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    pub(super) fn unsubscribe(&self, id: &str) {
        self.waiters.remove_if(id, |_, tx| tx.receiver_count() == 0);
    }
}
