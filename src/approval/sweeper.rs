//! The hub's sweeper: requests past their deadline expire (once), those about to are announced,
//! and the claims of processes that stopped between a claim and its end are settled.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::{ApprovalService, ChangeKind};
use crate::store::audit::Event;
use crate::store::{Approval, SYSTEM_ACTOR};

impl ApprovalService {
    /// Expires overdue requests, settles the claims of stopped processes and purges ended tasks
    /// past their lifetime (called by the sweeper every second).
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
        if let Err(e) = self.store.purge_tasks(self.now_ms()).await {
            warn!("purging ended tasks failed: {e}");
        }
        self.warn_expiring().await;
    }

    /// Announces pending requests that are close to their deadline, once each.
    pub(super) async fn warn_expiring(&self) {
        // Of replicas sharing a PostgreSQL store, one announces: each would otherwise send its own.
        if self.settings.expiry_warning.is_zero() || !self.store.leads() {
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

    /// Audits and announces a request that has just expired.
    pub(super) async fn expired(&self, a: &Approval) {
        self.audit(Event::Expired, a, Some("system"), serde_json::json!({}), false).await;
        self.notify(&a.id);
        self.warned.remove(&a.id);
        self.publish(ChangeKind::Expired, a, Some("system"));
    }

    /// Settles the claims of processes that stopped between a claim and its finish (see
    /// [`Store::settle_orphaned_claims`](crate::store::Store::settle_orphaned_claims)): each is audited as `failed` with the reason.
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
}
