//! Deferred writes committed by the event loop itself, when it is about to sleep with no call in
//! flight (stdio mode).
//!
//! In stdio mode mcp-gate is one event-loop thread between a client and its server. When the
//! store's worker thread commits a group of audit rows while a call passes from the client to the
//! server and back, the scheduler finds a second runnable thread on the proxy's CPU and moves the
//! proxy or the server to the client's CPU; the three processes can then stay in that arrangement,
//! which costs a sequential client about a tenth of its calls per second on two CPUs (README,
//! "Speed"). The same commit made by the event loop in the client's think time, when no call is in
//! flight, moves nobody: the loop is the only thread that runs.
//!
//! - [`enable`], called before the store opens (`main` does for stdio mode), makes
//!   [`Store::open`](super::Store::open) of a database file open a second connection for the event
//!   loop, an `IdleWriter`, registered once per process. The worker then waits [`FALLBACK`]
//!   instead of [`LINGER`](super::LINGER) before it commits a group itself: it still does when the
//!   loop never goes quiet (calls always in flight) and when the last handle is dropped.
//! - The session says whether a call is in flight ([`set_quiet`]).
//! - The runtime calls [`on_park`] before it sleeps: when quiet, and the oldest deferred write
//!   waited [`GROUP_AGE`], the writer commits every queued write in one transaction.
//! - It never blocks the loop on another writer: its connection has no busy timeout, it skips a
//!   round while the worker is committing, and it takes the writes only once `BEGIN IMMEDIATE`
//!   succeeded, so a busy database leaves them queued for its next round or for the worker.
//! - It never checkpoints the WAL (no `fsync` on the loop): the worker's commits do.
//! - It writes nothing once the database file is no longer the one it opened.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::db::Conn;
use super::{DeferredQueue, FileId, StoreError};

/// How long the oldest deferred write waits before a quiet event loop commits the group.
///
/// A commit costs about the same whatever it holds, and a group of this age at a few thousand
/// calls a second takes a few milliseconds to write, which the next call waits for once. It is
/// also, with [`FALLBACK`], the longest a record waits in memory: a crash of the process can lose
/// that much.
pub const GROUP_AGE: Duration = Duration::from_millis(100);

/// How long the worker leaves a group to the event loop before it commits it itself.
pub const FALLBACK: Duration = Duration::from_millis(500);

static ENABLED: AtomicBool = AtomicBool::new(false);
static QUIET: AtomicBool = AtomicBool::new(false);
static WRITER: OnceLock<IdleWriter> = OnceLock::new();

/// Lets the next [`Store::open`](super::Store::open) of a database file register the process's
/// `IdleWriter`. For a process whose runtime calls [`on_park`] (one event-loop thread).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub(super) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether no call is in flight: the event loop may then commit deferred writes when it sleeps.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Called by the runtime before its thread sleeps: commits the deferred writes when quiet and due.
pub fn on_park() {
    if let Some(writer) = WRITER.get() {
        writer.on_park(QUIET.load(Ordering::Relaxed), Instant::now());
    }
}

/// Commits what is still queued and closes the writer's connection, so that the last connection
/// to close checkpoints the WAL. Called once the runtime has stopped.
pub fn close() {
    if let Some(writer) = WRITER.get() {
        writer.close();
    }
}

/// Registers the process's writer; false if one already is (the first store opened keeps it).
pub(super) fn register(writer: IdleWriter) -> bool {
    WRITER.set(writer).is_ok()
}

/// The event loop's own connection to the database file, for the deferred writes.
pub(super) struct IdleWriter {
    deferred: Arc<DeferredQueue>,
    /// `None` once closed.
    conn: Mutex<Option<Conn>>,
    path: PathBuf,
    file_id: FileId,
    /// When the file's identity was last checked while writes were queued.
    checked: Mutex<Option<Instant>>,
}

impl IdleWriter {
    /// `conn` must be a connection to `path`, whose identity is `file_id` (the worker's file).
    pub(super) fn new(
        deferred: Arc<DeferredQueue>,
        mut conn: Conn,
        path: PathBuf,
        file_id: FileId,
    ) -> Result<IdleWriter, StoreError> {
        if let Conn::Sqlite(c) = &mut conn {
            c.busy_timeout(Duration::ZERO)?;
            c.pragma_update(None, "wal_autocheckpoint", 0)?;
        }
        Ok(IdleWriter { deferred, conn: Mutex::new(Some(conn)), path, file_id, checked: Mutex::new(None) })
    }

    /// Before the loop sleeps: while writes are queued, checks at most once per
    /// [`LINGER`](super::LINGER) that the database file is still the one opened (calls in flight
    /// or not), so that a deleted or replaced file refuses the next call as soon as the worker
    /// would have found it; then, when `quiet`, commits the writes if due.
    fn on_park(&self, quiet: bool, now: Instant) {
        if self.deferred.since().is_none() || !self.still_ours(now) {
            return;
        }
        if quiet {
            self.flush_if_due(now);
        }
    }

    /// Whether the database file is still the one opened, checked at most once per
    /// [`LINGER`](super::LINGER); once it is not, the queue refuses every further write.
    fn still_ours(&self, now: Instant) -> bool {
        if self.deferred.lost.get().is_some() {
            return false;
        }
        let Ok(mut checked) = self.checked.lock() else { return false };
        if checked.is_some_and(|at| now.saturating_duration_since(at) < super::LINGER) {
            return true;
        }
        *checked = Some(now);
        match super::file_change(&self.path, self.file_id) {
            None => true,
            Some(how) => {
                let _ = self.deferred.lost.set((self.path.clone(), how));
                false
            }
        }
    }

    /// Commits every queued deferred write if the oldest has waited [`GROUP_AGE`] at `now`.
    /// Returns how many were committed.
    pub(super) fn flush_if_due(&self, now: Instant) -> usize {
        self.flush(Some(now))
    }

    /// Commits every queued deferred write: when their oldest has waited [`GROUP_AGE`] at `now`,
    /// or whatever their age without one. Returns how many were committed.
    fn flush(&self, now: Option<Instant>) -> usize {
        let Some(since) = self.deferred.since() else { return 0 };
        let due = now.is_none_or(|now| now.saturating_duration_since(since) >= GROUP_AGE);
        if !due || self.deferred.lost.get().is_some() {
            return 0;
        }
        // The worker is committing: it takes these too, or leaves them for the next round.
        let Ok(_committing) = self.deferred.committing.try_lock() else { return 0 };
        self.commit_queued()
    }

    /// At the end (the runtime stopped): commits what is still queued and closes the connection.
    /// Unlike a round on the loop it waits, since nothing else will commit these writes before
    /// the process ends: for a commit of the worker under way (the last handle dropped, the worker
    /// may be writing the last group: the process must not end in the middle of it), and for
    /// another process's write lock, up to [`BUSY_TIMEOUT`](super::BUSY_TIMEOUT).
    fn close(&self) {
        let committing = self.deferred.committing.lock();
        if let Ok(mut conn) = self.conn.lock()
            && let Some(Conn::Sqlite(c)) = conn.as_mut()
            && let Err(e) = c.busy_timeout(super::BUSY_TIMEOUT)
        {
            tracing::warn!("the audit writer cannot wait for the database: {e}");
        }
        if self.deferred.lost.get().is_none() && self.deferred.since().is_some() {
            self.commit_queued();
        }
        drop(committing);
        if let Ok(mut conn) = self.conn.lock() {
            conn.take();
        }
    }

    /// Commits every queued deferred write, the caller holding `committing`. Returns how many
    /// were committed.
    fn commit_queued(&self) -> usize {
        if !matches!(FileId::of(&self.path), Ok(Some(id)) if id == self.file_id) {
            // Deleted or replaced: `still_ours` or the worker marks the queue lost.
            return 0;
        }
        let Ok(mut conn) = self.conn.lock() else { return 0 };
        let Some(conn) = conn.as_mut() else { return 0 };
        let mut taken = 0;
        // `write` begins the transaction before it runs the closure: when another connection
        // holds the write lock, nothing is taken from the queue.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            conn.write(|tx| {
                let group = self.deferred.take();
                taken = group.len();
                super::commit_group(tx, group)
            })
        }));
        match written {
            Ok(Ok(())) => taken,
            Ok(Err(e)) if taken == 0 => {
                tracing::debug!("deferred writes left to the next round: {e}");
                0
            }
            Ok(Err(e)) => {
                tracing::warn!(count = taken, "deferred writes failed: {e}");
                0
            }
            Err(_) => {
                tracing::error!(count = taken, "a deferred write panicked; its group was rolled back");
                conn.rollback_if_open();
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::audit::{self, AuditRecord, Event};
    use crate::store::testutil::TempDir;
    use crate::store::{Location, Store, open_connection};

    fn record(i: i64) -> AuditRecord {
        AuditRecord {
            event: Event::Allowed,
            approval_id: None,
            server: "fs".into(),
            tool: "read_file".into(),
            agent: None,
            actor: Some("policy".into()),
            detail: json!({"rule": null, "arguments": {"path": format!("/tmp/{i}")}}),
        }
    }

    /// A store on a file, and a writer for the event loop on the same file (not registered).
    async fn store_and_writer(dir: &TempDir) -> (Store, IdleWriter, PathBuf) {
        let path = dir.path().join("gate.db");
        let store = Store::open(Location::File(path.clone())).await.unwrap();
        let conn = open_connection(&Location::File(path.clone()), store.now_ms()).unwrap();
        let file_id = store.file_id().unwrap();
        let writer = IdleWriter::new(store.deferred.clone(), conn, path.clone(), file_id).unwrap();
        // The worker leaves the groups alone for the length of a test.
        store.deferred.leave_for(Duration::from_secs(3600));
        (store, writer, path)
    }

    /// Rows in the audit table, read by a connection of its own (a request to the store would
    /// have its worker commit the queued writes first).
    fn rows_on_disk(path: &std::path::Path) -> i64 {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row("SELECT count(*) FROM audit", [], |r| r.get(0)).unwrap()
    }

    fn queued(store: &Store) -> usize {
        store.deferred.pending.lock().unwrap().writes.len()
    }

    #[tokio::test]
    async fn a_group_is_committed_once_its_oldest_write_waited_long_enough() {
        let dir = TempDir::new("idle-age");
        let (store, writer, path) = store_and_writer(&dir).await;
        let start = Instant::now();
        for i in 1..=3 {
            store.audit_append_later(record(i), 1_700_000_000_000 + i).unwrap();
        }
        assert_eq!(writer.flush_if_due(start), 0, "too young to be written");
        assert_eq!((rows_on_disk(&path), queued(&store)), (0, 3));
        assert_eq!(writer.flush_if_due(start + GROUP_AGE + Duration::from_millis(1)), 3);
        assert_eq!((rows_on_disk(&path), queued(&store)), (3, 0));
        assert_eq!(store.deferred.since(), None);
        // The rows chain like any others, and the next group after them.
        store.audit_append_later(record(4), 1_700_000_000_004).unwrap();
        assert_eq!(writer.flush_if_due(Instant::now() + GROUP_AGE), 1);
        let report = audit::verify(&store).await.unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.rows, 4);
    }

    #[tokio::test]
    async fn at_the_end_every_queued_write_is_committed_whatever_its_age() {
        let dir = TempDir::new("idle-end");
        let (store, writer, path) = store_and_writer(&dir).await;
        store.audit_append_later(record(1), 1_700_000_000_001).unwrap();
        store.audit_append_later(record(2), 1_700_000_000_002).unwrap();
        assert_eq!(writer.flush(None), 2);
        assert_eq!((rows_on_disk(&path), queued(&store)), (2, 0));
        assert_eq!(writer.flush(None), 0, "nothing left");
    }

    #[tokio::test]
    async fn a_database_another_connection_writes_to_keeps_the_writes_queued() {
        let dir = TempDir::new("idle-busy");
        let (store, writer, path) = store_and_writer(&dir).await;
        store.audit_append_later(record(1), 1_700_000_000_001).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let late = Instant::now() + GROUP_AGE;
        // No wait on the event loop, and nothing taken: the writes are still there afterwards.
        let waited = Instant::now();
        assert_eq!(writer.flush_if_due(late), 0);
        assert!(waited.elapsed() < Duration::from_secs(1), "the writer waited for the lock");
        assert_eq!(queued(&store), 1);
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(writer.flush_if_due(late), 1);
        assert_eq!(rows_on_disk(&path), 1);
    }

    #[tokio::test]
    async fn the_writer_skips_a_round_while_the_worker_commits() {
        let dir = TempDir::new("idle-worker");
        let (store, writer, _path) = store_and_writer(&dir).await;
        store.audit_append_later(record(1), 1_700_000_000_001).unwrap();
        let committing = store.deferred.committing.lock().unwrap();
        assert_eq!(writer.flush_if_due(Instant::now() + GROUP_AGE), 0);
        drop(committing);
        assert_eq!(queued(&store), 1);
    }

    #[tokio::test]
    async fn a_replaced_database_file_gets_nothing_from_the_writer() {
        let dir = TempDir::new("idle-replaced");
        let (store, writer, path) = store_and_writer(&dir).await;
        store.audit_append_later(record(1), 1_700_000_000_001).unwrap();
        std::fs::rename(&path, dir.path().join("moved.db")).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert_eq!(writer.flush_if_due(Instant::now() + GROUP_AGE), 0);
        assert_eq!(queued(&store), 1, "left for the worker, which fails closed");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "nothing written to the new file");
        // Before the loop sleeps, even with a call in flight, the change is found: the next call
        // cannot queue its record, so it does not run.
        writer.on_park(false, Instant::now());
        let refused = store.audit_append_later(record(2), 1_700_000_000_002).unwrap_err();
        assert!(matches!(refused, StoreError::Replaced { how: "replaced", .. }), "{refused:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn the_worker_waits_longer_for_a_group_the_event_loop_commits() {
        let dir = TempDir::new("idle-linger");
        let path = dir.path().join("gate.db");
        let store = Store::open(Location::File(path)).await.unwrap();
        assert_eq!(store.deferred.linger(), crate::store::LINGER);
        store.deferred.leave_for(FALLBACK);
        assert_eq!(store.deferred.linger(), FALLBACK);
        assert!(FALLBACK > GROUP_AGE);
    }

    #[tokio::test]
    async fn at_the_end_the_writer_waits_for_a_commit_of_the_worker_under_way() {
        let dir = TempDir::new("idle-close-worker");
        let (store, writer, path) = store_and_writer(&dir).await;
        store.audit_append_later(record(1), 1_700_000_000_001).unwrap();
        // The worker, at the last handle's drop, is committing: the process must not end (main
        // returns once `close` does) before it has.
        let deferred = store.deferred.clone();
        let (held, holding) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let _committing = deferred.committing.lock().unwrap();
            held.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        holding.recv().unwrap();
        let start = Instant::now();
        writer.close();
        assert!(start.elapsed() >= Duration::from_millis(250), "close returned during the commit");
        worker.join().unwrap();
        assert_eq!((rows_on_disk(&path), queued(&store)), (1, 0));
    }

    #[tokio::test]
    async fn at_the_end_the_writer_waits_for_another_connections_write_lock() {
        let dir = TempDir::new("idle-close-busy");
        let (store, writer, path) = store_and_writer(&dir).await;
        store.audit_append_later(record(1), 1_700_000_000_001).unwrap();
        store.audit_append_later(record(2), 1_700_000_000_002).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            other.execute_batch("COMMIT").unwrap();
        });
        writer.close();
        holder.join().unwrap();
        assert_eq!((rows_on_disk(&path), queued(&store)), (2, 0), "rows dropped at the end");
        let report = audit::verify(&store).await.unwrap();
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test]
    async fn a_deleted_file_refuses_the_first_write_of_a_group() {
        let dir = TempDir::new("idle-first");
        let (store, _writer, path) = store_and_writer(&dir).await;
        // Nothing queued, nothing checks the file before the loop sleeps: the write itself does.
        std::fs::remove_file(&path).unwrap();
        let refused = store.audit_append_later(record(1), 1_700_000_000_001).unwrap_err();
        assert!(matches!(refused, StoreError::Replaced { how: "deleted", .. }), "{refused:?}");
        assert_eq!(queued(&store), 0);
    }
}
