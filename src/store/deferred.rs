//! Writes nobody waits for ([`Store::defer`](super::Store::defer)): queued, then committed
//! together in one transaction of their group.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::audit;
use super::db::{Conn, Sql};
use super::{LINGER, StoreError};

/// A deferred write of any kind (see [`Store::defer`](super::Store::defer)).
pub(super) type DeferredWrite = Box<dyn FnOnce(&mut dyn Sql) -> Result<(), StoreError> + Send + 'static>;

/// A write nobody waits for, run inside the transaction of its group (see [`Store::defer`](super::Store::defer)).
pub enum Deferred {
    /// Any write.
    Write(DeferredWrite),
    /// An audit record and its time ([`Store::audit_append_later`](super::Store::audit_append_later)): the records of a group
    /// that follow one another are chained with one read and one write of the chain's head.
    Audit(Box<audit::AuditRecord>, i64),
}

/// Deferred writes not yet committed, shared by every handle, the worker and the event loop's
/// [`idle::IdleWriter`].
#[derive(Default)]
pub(super) struct DeferredQueue {
    pub(super) pending: Mutex<Pending>,
    /// The loss of the database file once the worker found it, so that a write queued after that
    /// is refused at once instead of being dropped later.
    pub(super) lost: std::sync::OnceLock<(PathBuf, &'static str)>,
    /// Held by whoever commits deferred writes, from taking them until the commit, so that the
    /// groups reach the database in the order they were queued.
    pub(super) committing: Mutex<()>,
    /// How long the worker lets a group wait, in milliseconds; 0 for [`LINGER`]. Longer
    /// ([`idle::FALLBACK`]) when the event loop commits the groups ([`idle`]).
    pub(super) linger_ms: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
pub(super) struct Pending {
    pub(super) writes: Vec<Deferred>,
    /// When the oldest of `writes` was queued.
    pub(super) since: Option<Instant>,
}

impl DeferredQueue {
    /// When the oldest queued write was queued; `None` when none is.
    pub(super) fn since(&self) -> Option<Instant> {
        self.pending.lock().ok().and_then(|p| p.since)
    }

    /// Takes every queued write, oldest first.
    pub(super) fn take(&self) -> Vec<Deferred> {
        match self.pending.lock() {
            Ok(mut pending) => {
                pending.since = None;
                std::mem::take(&mut pending.writes)
            }
            Err(_) => Vec::new(),
        }
    }

    /// How long the worker lets a group wait before it commits it.
    pub(super) fn linger(&self) -> Duration {
        match self.linger_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => LINGER,
            ms => Duration::from_millis(ms),
        }
    }

    /// Leaves the groups to another writer: the worker commits one only after `wait`.
    pub(super) fn leave_for(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        self.linger_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for DeferredQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.pending.lock().map(|p| p.writes.len()).unwrap_or(0);
        f.debug_struct("DeferredQueue").field("pending", &pending).finish()
    }
}

/// Commits the pending deferred writes in one transaction (see [`Store::defer`](super::Store::defer)). Returns true when
/// they were left queued because the database stayed locked by another connection past the busy
/// timeout (the transaction could not begin, nothing was taken): the caller tries again later.
pub(super) fn write_deferred(conn: &mut Conn, deferred: &DeferredQueue, lost: Option<&StoreError>) -> bool {
    // Waits for the event loop's commit of an earlier group, if one is under way.
    let _committing = deferred.committing.lock();
    if let Some(lost) = lost {
        let count = deferred.take().len();
        if count > 0 {
            tracing::error!(count, "deferred writes dropped: {lost}");
        }
        return false;
    }
    if deferred.since().is_none() {
        return false;
    }
    // The group is taken once the write transaction began, as the event loop's writer does: a
    // database locked past the busy timeout leaves it queued instead of losing it.
    let mut count = 0;
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        conn.write(|tx| {
            let group = deferred.take();
            count = group.len();
            commit_group(tx, group)
        })
    }));
    match written {
        Ok(Ok(())) => false,
        Ok(Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))))
            if count == 0
                && matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            tracing::warn!("deferred writes wait for the database, locked by another connection");
            true
        }
        Ok(Err(e)) => {
            // Any other failure loses the group, as before, taken or not (nothing retries it).
            let count = if count == 0 { deferred.take().len() } else { count };
            tracing::warn!(count, "deferred writes failed: {e}");
            false
        }
        Err(_) => {
            tracing::error!(count, "a deferred write panicked; its group was rolled back");
            conn.rollback_if_open();
            false
        }
    }
}

/// Runs a group of deferred writes, in order, inside an open write transaction; the audit records
/// among them are chained with one read and one write of the chain's head.
pub(super) fn commit_group(tx: &mut dyn Sql, group: Vec<Deferred>) -> Result<(), StoreError> {
    let mut chain = audit::Chain::default();
    for write in group {
        match write {
            Deferred::Write(write) => {
                chain.settle(tx)?;
                write(tx)?;
            }
            Deferred::Audit(rec, at) => {
                chain.append(tx, &rec, at)?;
            }
        }
    }
    chain.settle(tx)
}
