//! The change stream: every state change of an approval request, as it happens. It feeds the
//! dashboard's live updates, `GET /api/v1/events`, webhooks and the machine hub.

use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::store::Approval;

/// Changes kept for slow subscribers before they miss some (and are told to resynchronise).
const BACKLOG: usize = 1024;

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new request is waiting for a decision.
    Requested,
    /// An approver voted, and more votes are needed.
    Voted,
    Approved,
    Denied,
    /// Still pending, and close to its deadline.
    Expiring,
    Expired,
    /// The approved call ran.
    Executed,
    /// The approved call ran and failed.
    Failed,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 8] = [
        ChangeKind::Requested,
        ChangeKind::Voted,
        ChangeKind::Approved,
        ChangeKind::Denied,
        ChangeKind::Expiring,
        ChangeKind::Expired,
        ChangeKind::Executed,
        ChangeKind::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Requested => "requested",
            ChangeKind::Voted => "voted",
            ChangeKind::Approved => "approved",
            ChangeKind::Denied => "denied",
            ChangeKind::Expiring => "expiring",
            ChangeKind::Expired => "expired",
            ChangeKind::Executed => "executed",
            ChangeKind::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no [`ChangeKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown change kind {0:?}")]
pub struct UnknownKind(pub String);

impl FromStr for ChangeKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChangeKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// One change: the request as stored right after it, and who caused it.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    pub approval: Arc<Approval>,
    /// The approver, the agent, `system` (expiry) or `upstream` (execution).
    pub actor: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
    /// Announced by another process sharing the store (see [`crate::server::hub`]), not made here.
    pub relayed: bool,
}

/// A broadcast of [`Change`]s. Publishing never blocks; a subscriber that falls more than
/// `BACKLOG` (1024) changes behind is told how many it missed.
pub struct Changes {
    tx: broadcast::Sender<Change>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes { tx: broadcast::channel(BACKLOG).0 }
    }
}

impl Changes {
    pub fn publish(&self, change: Change) {
        // No subscribers is fine.
        let _ = self.tx.send(change);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_text_and_serde() {
        for kind in ChangeKind::ALL {
            assert_eq!(kind.as_str().parse::<ChangeKind>(), Ok(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::Value::String(kind.as_str().into()));
        }
        assert!("nope".parse::<ChangeKind>().is_err());
    }
}
