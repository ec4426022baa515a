//! The store's worker thread: it owns the connection, runs each request in order, commits the
//! groups of deferred writes, watches the file, keeps the instance's heartbeat, and at exit
//! commits its last group.

use std::path::PathBuf;
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::clock::Clock;
use super::db::{self, Conn, Sql, params};
use super::deferred::{DeferredQueue, write_deferred};
use super::files::{FileId, create_private_dir, create_private_file, file_change};
use super::location::{DatabaseUrl, Location};
use super::{BUSY_TIMEOUT, HEARTBEAT, StoreError, TICK, migrate};

/// How many times a store worker tries its last group of deferred writes, each waiting up to
/// [`BUSY_TIMEOUT`] for another connection's write lock.
pub(super) const EXIT_TRIES: u32 = 3;

/// How long the process waits at exit for its store workers to commit their last groups
/// ([`wait_for_workers`]): their tries, and a margin.
pub const EXIT_WAIT: Duration = Duration::from_secs(5 * EXIT_TRIES as u64 + 5);

/// The store workers of this process, each ending its channel when its thread ends (its last
/// group of deferred writes committed, or given up).
pub(super) static WORKERS: Mutex<Vec<mpsc::Receiver<()>>> = Mutex::new(Vec::new());

/// Waits, up to `limit` in all, for every store worker whose handles are all dropped to commit
/// its last deferred writes and end. Called at exit, once the runtime (and so every handle) is
/// gone: the worker is not joined by anything else, and the process ending first would lose the
/// writes of its last group (the audit rows of the calls answered in its last moments).
pub fn wait_for_workers(limit: Duration) {
    let workers = match WORKERS.lock() {
        Ok(mut workers) => std::mem::take(&mut *workers),
        Err(_) => return,
    };
    let deadline = Instant::now() + limit;
    for worker in workers {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(mpsc::RecvTimeoutError::Timeout) = worker.recv_timeout(left) {
            tracing::warn!("a store worker was still writing at exit; its last writes may be lost");
        }
    }
}

pub(super) type Job = Box<dyn FnOnce(Result<&mut Conn, StoreError>) + Send + 'static>;

/// What the worker receives.
pub(super) enum Msg {
    /// A request, answered when it has run.
    Job(Job),
    /// The first deferred write of a new group is waiting in [`Store::deferred`].
    Deferred,
}

/// What the worker knows about the database file: where it is, its identity at open, and
/// whether it has been found deleted or replaced.
pub(super) struct Watch {
    pub(super) file: Option<(PathBuf, FileId)>,
    /// The path and what happened to it (`deleted`, `replaced`).
    pub(super) lost: Option<(PathBuf, &'static str)>,
}

impl Watch {
    /// What the last [`Watch::check`] found.
    pub(super) fn known(&self) -> Option<StoreError> {
        self.lost.as_ref().map(|(path, how)| StoreError::Replaced { path: path.clone(), how })
    }

    /// Checks the path's identity; once lost, stays lost. Logs the loss once, loudly.
    pub(super) fn check(&mut self) -> Option<StoreError> {
        if self.lost.is_none()
            && let Some((path, id)) = &self.file
        {
            if let Some(how) = file_change(path, *id) {
                self.lost = Some((path.clone(), how));
            }
        }
        self.known()
    }
}

/// Who the worker is, and where it reconnects to.
pub(super) struct Worker<'a> {
    pub(super) instance: &'a str,
    pub(super) clock: &'a Clock,
    /// The PostgreSQL server to reconnect to when the connection is lost; `None` for SQLite.
    pub(super) server: Option<&'a DatabaseUrl>,
}

impl Worker<'_> {
    /// Replaces a lost PostgreSQL connection before it is used. When the server cannot be reached
    /// the old one stays, and what runs on it fails (a held call is refused, nothing is let through).
    pub(super) fn reconnect_if_lost(&self, conn: &mut Conn) {
        let (Some(url), Conn::Postgres(pg)) = (self.server, &mut *conn) else { return };
        if !pg.is_closed() {
            return;
        }
        match url.connect() {
            Ok(client) => {
                **pg = db::PgConn::new(client);
                tracing::info!(database = %url, "reconnected to the database");
            }
            Err(e) => tracing::error!(database = %url, "the database connection is lost and cannot be made again: {e}"),
        }
    }
}

pub(super) fn run(
    conn: &mut Conn,
    queue: mpsc::Receiver<Msg>,
    deferred: &DeferredQueue,
    mut watch: Watch,
    me: Worker<'_>,
) {
    let Worker { instance, clock, .. } = me;
    let mut last_beat = std::time::Instant::now();
    // When the pending group of deferred writes is due.
    let mut due: Option<Instant> = None;
    loop {
        let wait = due.map_or(TICK, |d| d.saturating_duration_since(Instant::now()).min(TICK));
        let (job, woken) = match queue.recv_timeout(wait) {
            Ok(Msg::Job(job)) => (Some(job), false),
            Ok(Msg::Deferred) => {
                due.get_or_insert_with(|| Instant::now() + deferred.linger());
                (None, true)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => (None, false),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // The group is written when due, and before any request, so that a request sees every
        // write queued before it.
        let mut write_group = due.is_some_and(|d| job.is_some() || Instant::now() >= d);
        if write_group && job.is_none() {
            // The event loop may have committed the group meanwhile: what is queued now is a
            // later group, due in its own time.
            match deferred.since().map(|since| since + deferred.linger()) {
                Some(next) if next > Instant::now() => {
                    due = Some(next);
                    write_group = false;
                }
                Some(_) => {}
                None => {
                    due = None;
                    write_group = false;
                }
            }
        }
        if job.is_some() || write_group {
            me.reconnect_if_lost(conn);
        }
        let beat = last_beat.elapsed() >= HEARTBEAT;
        // The file is checked before anything is read or written, and at every idle tick; not
        // when the first deferred write of a group merely wakes the worker to start lingering
        // (one check per group instead of two).
        let lost = if woken && !write_group && !beat { watch.known() } else { watch.check() };
        if let Some(StoreError::Replaced { path, how }) = &lost {
            let _ = deferred.lost.set((path.clone(), how));
        }
        if write_group {
            due = None;
            if write_deferred(conn, deferred, lost.as_ref()) {
                due = Some(Instant::now() + deferred.linger());
            }
        }
        if lost.is_none() && beat {
            last_beat = std::time::Instant::now();
            if let Err(e) = heartbeat(conn, instance, clock.now_ms()) {
                tracing::warn!("store heartbeat failed: {e}");
            }
        }
        let Some(job) = job else { continue };
        let Some(lost) = lost else {
            // A panicking request must not take the store down with it. An open transaction is rolled back
            // by `Transaction`'s drop during unwinding; the caller sees `StoreError::Aborted`.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(conn)))).is_err() {
                tracing::error!("a store request panicked; it was rolled back");
                conn.rollback_if_open();
            }
            continue;
        };
        job(Err(lost));
    }
    let lost = watch.check();
    // The last group has no later round: another connection holding the write lock past the
    // busy timeout gets a few more, then the group is reported lost.
    let mut tries = 1;
    while write_deferred(conn, deferred, lost.as_ref()) {
        if tries == EXIT_TRIES {
            let count = deferred.take().len();
            tracing::error!(count, "deferred writes dropped at exit: the database stayed locked by another connection");
            break;
        }
        tries += 1;
    }
    if watch.lost.is_none() {
        // A clean end: the instance goes, unless it leaves claims in flight to be settled.
        let _ = conn.execute(
            "DELETE FROM instances WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM claims WHERE instance = ?1)",
            params![instance],
        );
    }
    tracing::debug!("store worker stopping: all handles dropped");
}

/// The host name and pid namespace, to tell the processes whose pid can be checked here from
/// others (another machine, or another container sharing the data directory).
pub(crate) fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    match std::fs::read_link("/proc/self/ns/pid") {
        Ok(ns) => format!("{name} {}", ns.display()),
        Err(_) => name,
    }
}

pub(super) fn register_instance(conn: &mut dyn Sql, instance: &str, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO instances (id, host, pid, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?4)",
        params![instance, host_name(), std::process::id(), now],
    )?;
    Ok(())
}

/// Records that this process lives. Its row is written again if it is gone: another process took
/// this one for stopped (its heartbeat went stale while it was suspended, say) and settled its
/// claims; without the row, the claims it makes from now on would never be settled if it stopped.
pub(super) fn heartbeat(conn: &mut dyn Sql, instance: &str, now: i64) -> Result<(), StoreError> {
    let beaten = conn.execute("UPDATE instances SET heartbeat_at = ?2 WHERE id = ?1", params![instance, now])?;
    if beaten == 0 {
        tracing::warn!("this process was taken for stopped (its heartbeat was late); recorded again");
        register_instance(conn, instance, now)?;
    }
    Ok(())
}

pub(super) fn open_connection(loc: &Location, now: i64) -> Result<Conn, StoreError> {
    let conn = match loc {
        Location::Postgres(url) => {
            let mut conn = Conn::Postgres(Box::new(db::PgConn::new(url.connect()?)));
            migrate::run(&mut conn, now)?;
            return Ok(conn);
        }
        Location::Memory => Connection::open_in_memory()?,
        Location::File(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_private_dir(parent)?;
            }
            create_private_file(path)?;
            Connection::open(path)?
        }
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if *loc != Location::Memory && !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "could not switch the database to WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 16 MiB of page cache (the default is 2 MiB): keeps a large queue's indexes and rows in memory.
    conn.pragma_update(None, "cache_size", -16_384)?;
    let mut conn = Conn::Sqlite(conn);
    migrate::run(&mut conn, now)?;
    Ok(conn)
}
