//! The durable store: one database holding the approval queue ([`approvals`]) and the audit log
//! ([`crate::store::audit`]): an SQLite file (the default), or a PostgreSQL database that several
//! replicas share ([`db`] runs every statement on either engine, [`listen`] carries the changes
//! between replicas). What follows describes SQLite; on PostgreSQL the worker holds one
//! connection, writes take the advisory lock [`db::WRITE_LOCK`] in place of `BEGIN IMMEDIATE`,
//! commits are durable as they are, and there is no file to watch.
//!
//! # Shape
//!
//! A [`Store`] is a cheap, cloneable handle. The [`rusqlite::Connection`] lives on one dedicated
//! `std::thread` (`mcp-gate-store`); every request is a boxed closure sent over a channel and answered on a
//! tokio oneshot, so no async task ever blocks on SQLite and no lock is held across an `.await`. When the
//! last handle is dropped the thread ends and the connection closes (checkpointing the WAL).
//!
//! The rooms: this file holds the handle and its requests; `location` where the database is;
//! `worker` the thread that owns the connection; `deferred` the writes nobody waits for and
//! their groups; `files` the database file's identity and the private files and directories.
//! Each table has its module (`approvals`, `audit`, `tasks`, `request_state`, `stats`).
//!
//! A request that has been sent runs to completion even if the caller's future is dropped: a claim or a
//! vote is either committed in full or not at all, never half-applied, but it may be committed without
//! anyone reading the answer.
//!
//! # Time
//!
//! Every time in the store is unix milliseconds, read from the store's [`Clock`] ([`Store::clock`]):
//! the system clock in a run, tokio's clock in tests (paused, it moves only with
//! `tokio::time::advance` or when every task waits on a timer). Operations that compare or record
//! a time take `now` from their caller, which reads it from this clock once per decision.
//!
//! # Durability and locking
//!
//! - `journal_mode = WAL`: readers never block the writer; several `mcp-gate` processes may share the file.
//! - `busy_timeout = 5 s`: a writer waits for another process's write transaction instead of failing.
//! - Every write runs in `BEGIN IMMEDIATE`, so the read-check-write of a vote, a claim or an audit append
//!   holds the database write lock from its first read: two processes cannot both see "not yet used".
//! - `synchronous = NORMAL` by default: a crash of the process never loses a commit; a power loss or OS
//!   crash may lose the last few commits but never corrupts the file. [`Store::claim_execution`] and
//!   [`Store::audit_append`](crate::store::audit) switch to `synchronous = FULL` for their transaction, so a
//!   claim is on disk before the tool runs (a power loss cannot make a single-use approval runnable
//!   twice) and an audit record is on disk once appended. Because the WAL is written in order, a FULL commit
//!   also makes every earlier commit durable.
//! - Deferred writes ([`Store::defer`]): records nothing waits for (the audit rows of calls the policy
//!   decided on its own) are collected for up to [`LINGER`] and committed together in one transaction,
//!   by the worker itself: queueing one costs the caller a lock and a push, and wakes the worker only
//!   when it is the first of its group. In stdio mode the event loop commits them instead when it is
//!   about to sleep with no call in flight ([`idle`]), and the worker only after [`idle::FALLBACK`].
//!   They are committed before any request sent after them, so the database sees them in order, and
//!   when the last handle is dropped.
//! - Schema changes are numbered `.sql` files in `migrations/`, applied once, in order, inside one
//!   `BEGIN IMMEDIATE` transaction, and recorded in `schema_version`.
//! - On unix the database file is created with mode 0600 (SQLite gives the `-wal` and `-shm` files the
//!   same mode).
//!
//! # Identity of the file
//!
//! When the database is a file, the store remembers its identity (device and inode) at open and checks
//! the path before every request and every [`TICK`] when idle. If the file was deleted or replaced, the
//! connection still writes to the old, unlinked file that no other process can see: the store then
//! fails closed, refusing every request with [`StoreError::Replaced`] and logging an error that names
//! the path, instead of splitting the queue between two files.
//!
//! # Instances
//!
//! Each open store registers an instance row (`instances`: host, pid, heartbeat every [`HEARTBEAT`]).
//! A claim records the instance that runs the call, so the claims of a process that stopped without
//! finishing them can be settled (see [`Store::settle_orphaned_claims`]).

pub mod approvals;
pub mod audit;
pub mod clock;
pub mod db;
mod deferred;
mod files;
pub mod idle;
pub mod listen;
mod location;
mod migrate;
pub mod request_state;
pub mod stats;
pub mod tasks;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

pub use db::{Conn, Engine, Row, Sql, Val, params};
use tokio::sync::oneshot;

pub use approvals::{
    Approval, ApprovalFilter, ApprovalRequest, Claim, ORPHANED, Opened, ParseStatusError, Status, Transition,
    TransitionError, Vote, VoteDecision, VoteRecord,
};
pub use clock::Clock;
pub use migrate::SCHEMA_VERSION;

pub use deferred::Deferred;
use deferred::{DeferredQueue, commit_group};
use files::file_change;
pub use files::{FileId, create_private_dir};
pub use location::{DatabaseUrl, Location};
pub(crate) use worker::host_name;
pub use worker::{EXIT_WAIT, wait_for_workers};
use worker::{Job, Msg, WORKERS, Watch, Worker, open_connection, register_instance};

/// How long a write waits for another connection's write lock before failing with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the worker checks the file's identity (and whether a heartbeat is due) when idle.
pub const TICK: Duration = Duration::from_secs(2);

/// How often an instance refreshes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// An instance whose heartbeat is older than this has stopped: its claims are settled.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// How long the worker waits for more deferred writes after the first of a group before committing
/// them together ([`Store::defer`]).
///
/// Each commit costs about the same whatever it holds (the write lock, WAL frames, the page-1
/// header, the wake-ups of this thread and the writes the kernel then makes), so at a steady rate
/// of calls the cost of auditing them falls with the size of the group: measured with the
/// sequential Python benchmark on two cores, 15 ms instead of 5 ms gives back about 4% of the
/// direct calls/s, and 25 ms nothing more. It is also the longest a record of a call the policy let
/// through waits in memory: a crash of the process (not of a request) can lose that much.
pub const LINGER: Duration = Duration::from_millis(15);

/// The actor recorded for transitions nobody decided (expiry, execution).
pub const SYSTEM_ACTOR: &str = "system";

/// The operating system's wall clock in unix milliseconds, the unit of every time in the store.
/// What reads the time on behalf of a store or the approvals asks their [`Clock`] instead
/// ([`Store::clock`]); this is for clients of the API, which have no store.
pub fn now_ms() -> i64 {
    Clock::system().now_ms()
}

/// Errors of the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("store i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid JSON in the store: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
    #[error("approval {0} not found")]
    NotFound(String),
    #[error("approval {0} already exists")]
    AlreadyExists(String),
    /// The operation does not apply to the approval in its current state (e.g. finishing an unclaimed call).
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// A stored value the code does not understand.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A column whose value cannot be read as the type the code expects.
    #[error("corrupt store: column {index}: {source}")]
    Column {
        index: usize,
        #[source]
        source: db::ColumnError,
    },
    #[error("database schema version {found} is newer than this mcp-gate supports ({supported}); upgrade mcp-gate")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: u32,
        name: &'static str,
        #[source]
        source: Box<StoreError>,
    },
    /// The worker thread has stopped; the handle can no longer be used.
    #[error("the store worker has stopped")]
    Closed,
    /// The database file was deleted or replaced while open: nothing is read or written any more.
    #[error(
        "the database file {path} was {how} while mcp-gate was using it; refusing to read or write a file \
         that other processes no longer share (restart mcp-gate)"
    )]
    Replaced { path: PathBuf, how: &'static str },
    /// The request was dropped by the worker without an answer (it panicked).
    #[error("the store request was aborted")]
    Aborted,
}

/// Cloneable handle to the database worker thread.
#[derive(Clone, Debug)]
pub struct Store {
    jobs: mpsc::Sender<Msg>,
    /// Deferred writes not yet taken by the worker.
    deferred: Arc<DeferredQueue>,
    /// The database file, canonicalized; `None` for an in-memory database.
    path: Option<Arc<PathBuf>>,
    /// The file's identity when it was opened.
    file_id: Option<FileId>,
    /// This handle's instance row (see [`Store::settle_orphaned_claims`]).
    instance: Arc<str>,
    /// Where the store's own times (instance heartbeats, migrations) come from, and the clock of
    /// everything that works on this store (see [`Store::clock`]).
    clock: Clock,
    /// What other replicas sharing a PostgreSQL store announce (see [`listen`]); `None` on SQLite.
    listener: Option<tokio::sync::broadcast::Sender<listen::Heard>>,
    /// Whether this replica leads (see [`Store::leads`]); `None` on SQLite.
    leader: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Store {
    /// Opens (creating if needed) the database, applies pending migrations and starts the worker thread.
    pub async fn open(loc: Location) -> Result<Store, StoreError> {
        Store::open_with_clock(loc, Clock::system()).await
    }

    /// [`Store::open`] with the clock that the store and everything working on it read the time from.
    pub async fn open_with_clock(loc: Location, clock: Clock) -> Result<Store, StoreError> {
        let path = match &loc {
            Location::Memory | Location::Postgres(_) => None,
            Location::File(p) => Some(p.clone()),
        };
        let loc_for_listener = match &loc {
            Location::Postgres(url) => Some(url.clone()),
            _ => None,
        };
        let (jobs, queue) = mpsc::channel::<Msg>();
        let deferred: Arc<DeferredQueue> = Arc::default();
        let pending = deferred.clone();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<Option<FileId>, StoreError>>();
        let instance: Arc<str> = Arc::from(format!("ins_{}", crate::random::hex(8)?));
        let me = instance.clone();
        let worker_clock = clock.clone();
        // Dropped when the thread ends: the process waits for that at exit (`wait_for_workers`).
        let (ended_tx, ended_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new().name("mcp-gate-store".into()).spawn(move || {
            let _ended = ended_tx;
            let clock = worker_clock;
            let opened = open_connection(&loc, clock.now_ms()).and_then(|mut conn| {
                let file_id = match &loc {
                    Location::File(p) => FileId::of(p)?,
                    Location::Memory | Location::Postgres(_) => None,
                };
                register_instance(&mut conn, &me, clock.now_ms())?;
                Ok((conn, file_id))
            });
            let (mut conn, file_id) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(file_id));
            let watched = match (&loc, file_id) {
                (Location::File(p), Some(id)) => Some((p.clone(), id)),
                _ => None,
            };
            let server = match &loc {
                Location::Postgres(url) => Some(url),
                _ => None,
            };
            let watch = Watch { file: watched, lost: None };
            worker::run(&mut conn, queue, &pending, watch, Worker { instance: &me, clock: &clock, server });
        })?;
        if let Ok(mut workers) = WORKERS.lock() {
            workers.retain(|w| matches!(w.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)));
            workers.push(ended_rx);
        }
        let file_id = ready_rx.await.map_err(|_| StoreError::Aborted)??;
        let path = match path {
            Some(p) => Some(Arc::new(std::fs::canonicalize(&p)?)),
            None => None,
        };
        if let (true, Some(path), Some(file_id)) = (idle::enabled(), &path, file_id) {
            let conn = open_connection(&Location::File(path.to_path_buf()), clock.now_ms())?;
            let writer = idle::IdleWriter::new(deferred.clone(), conn, path.to_path_buf(), file_id)?;
            if idle::register(writer) {
                deferred.leave_for(idle::FALLBACK);
            }
        }
        let (listener, leader) = match &loc_for_listener {
            Some(url) => {
                let leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let weak = Arc::downgrade(&deferred);
                (Some(listen::spawn(url.clone(), instance.clone(), weak, leader.clone()).await?), Some(leader))
            }
            None => (None, None),
        };
        Ok(Store { jobs, deferred, path, file_id, instance, clock, listener, leader })
    }

    /// The clock of this store: what reads the time for a request on it (the approvals, the
    /// sweeper) reads it here, so that a test can hold it still or move it.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The current time of [`Store::clock`], in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The identity (device and inode) of the database file when it was opened; `None` for
    /// `:memory:`. Two processes share their data only if their files have the same identity.
    pub fn file_id(&self) -> Option<FileId> {
        self.file_id
    }

    /// This handle's instance id, recorded with every claim it makes.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The database file (canonical: symbolic links resolved), or `None` for `:memory:`. Two
    /// stores with the same path share their data.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref().map(PathBuf::as_path)
    }

    /// Runs `f` on the worker thread with exclusive use of the connection and returns its result.
    ///
    /// The escape hatch for queries this module does not offer. `f` must not block on anything but SQLite:
    /// every other request waits for it.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(conn.and_then(f));
        });
        self.jobs.send(Msg::Job(job)).map_err(|_| StoreError::Closed)?;
        if self.clock.follows_tokio() {
            // Under a tokio clock (tests with paused time) the runtime must not take the wait for
            // the worker as idle time and jump to the next timer: a blocking wait holds tokio's
            // auto-advance back, so paused time moves only while every task waits on a timer.
            let answer = tokio::task::spawn_blocking(move || rx.blocking_recv()).await;
            return answer.map_err(|_| StoreError::Aborted)?.map_err(|_| StoreError::Aborted)?;
        }
        rx.await.map_err(|_| StoreError::Aborted)?
    }

    /// Sends `f` to the worker without waiting for it to run; its result is only logged.
    pub(crate) fn send_detached(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let job: Job = Box::new(move |conn| {
            if let Err(e) = conn.and_then(f) {
                tracing::warn!("store request failed: {e}");
            }
        });
        self.jobs.send(Msg::Job(job)).map_err(|_| StoreError::Closed)
    }

    /// The engine behind this store.
    pub fn engine(&self) -> Engine {
        if self.listener.is_some() { Engine::Postgres } else { Engine::Sqlite }
    }

    /// Whether the store answers: the worker runs a request and the database can be read (for
    /// `/readyz`). Fails like any request when the file was replaced ([`StoreError::Replaced`]).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.call(|conn| conn.query("SELECT count(*) FROM schema_version", params![]).map(drop)).await
    }

    /// Queues a write that nobody waits for. The worker commits it within [`LINGER`], together with
    /// the other deferred writes queued meanwhile, in one `BEGIN IMMEDIATE` transaction with
    /// `synchronous = NORMAL` (in stdio mode the event loop commits them, see [`idle`]). A
    /// database locked by another connection past the busy timeout leaves the group queued for
    /// another try; any other failure is logged and loses the whole group. Requests sent after
    /// this one see it committed, unless the database stayed locked. Never blocks on SQLite.
    /// Refused once the database file is found deleted or replaced (its writes could only be
    /// lost): by the worker, the event loop, or the first write of a group.
    pub fn defer(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.enqueue(Deferred::Write(Box::new(f)))
    }

    /// Queues a deferred write (see [`Store::defer`]).
    pub(crate) fn enqueue(&self, write: Deferred) -> Result<(), StoreError> {
        if let Some((path, how)) = self.deferred.lost.get() {
            return Err(StoreError::Replaced { path: path.clone(), how });
        }
        let first = {
            let mut pending = self.deferred.pending.lock().map_err(|_| StoreError::Aborted)?;
            // The first write of a group: nothing checked the file while none was queued (an idle
            // client), so it is checked now, before the write is accepted and its call runs. One
            // lock per write; the check only when the queue is empty.
            if pending.writes.is_empty()
                && let (Some(path), Some(id)) = (&self.path, self.file_id)
                && let Some(how) = file_change(path, id)
            {
                let _ = self.deferred.lost.set((path.to_path_buf(), how));
                return Err(StoreError::Replaced { path: path.to_path_buf(), how });
            }
            pending.writes.push(write);
            pending.since.get_or_insert_with(Instant::now);
            pending.writes.len() == 1
        };
        // Later writes of the same group join it silently: the worker is lingering, not waiting on
        // the channel, so waking it for each would only cost a context switch per write.
        if first {
            self.jobs.send(Msg::Deferred).map_err(|_| StoreError::Closed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A temporary directory removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            let dir = std::env::temp_dir().join(format!(
                "mcp-gate-{tag}-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A connection string of a PostgreSQL role that may create databases, on a cluster the
    /// tests may use (the test command starts a throw-away one).
    pub const POSTGRES_ENV: &str = "MCP_GATE_TEST_POSTGRES";

    /// `postgres` runs the store's test suite on PostgreSQL instead of SQLite.
    pub const ENGINE_ENV: &str = "MCP_GATE_TEST_ENGINE";

    /// Where a store test keeps its data: a fresh in-memory SQLite database, or, with
    /// `MCP_GATE_TEST_ENGINE=postgres`, a fresh PostgreSQL database on the cluster of
    /// [`POSTGRES_ENV`] created for this test alone. The same tests thus run on both engines.
    pub async fn location() -> super::Location {
        if std::env::var(ENGINE_ENV).as_deref() != Ok("postgres") {
            return super::Location::Memory;
        }
        let admin = std::env::var(POSTGRES_ENV).ok().filter(|a| !a.is_empty()).unwrap_or_else(|| {
            panic!("{ENGINE_ENV}=postgres needs {POSTGRES_ENV} (scripts/postgres.sh starts a cluster)")
        });
        fresh_postgres(admin).await
    }

    /// A database two stores can open together: an SQLite file in a new temporary directory
    /// (kept alive by the returned guard), or a fresh PostgreSQL database as [`location`] makes.
    pub async fn shared_location(tag: &str) -> (super::Location, Option<TempDir>) {
        match location().await {
            super::Location::Memory => {
                let dir = TempDir::new(tag);
                (super::Location::File(dir.path().join("gate.db")), Some(dir))
            }
            other => (other, None),
        }
    }

    /// A new, empty PostgreSQL database on the cluster `admin` connects to.
    pub async fn fresh_postgres(admin: String) -> super::Location {
        tokio::task::spawn_blocking(move || {
            let name = format!("mcpg_test_{}", crate::random::hex(8).unwrap());
            let config: postgres::Config = admin.parse().expect("MCP_GATE_TEST_POSTGRES");
            let mut client = config.connect(postgres::NoTls).expect("connecting to the test cluster");
            client.batch_execute(&format!("CREATE DATABASE {name}")).expect("creating a test database");
            let url = config_string(&admin, &name);
            super::Location::Postgres(super::DatabaseUrl::parse(&url).expect("test database url"))
        })
        .await
        .unwrap()
    }

    /// `admin` with its database replaced by `name` (key=value form).
    fn config_string(admin: &str, name: &str) -> String {
        if admin.starts_with("postgres://") || admin.starts_with("postgresql://") {
            let (base, query) = admin.split_once('?').map_or((admin, None), |(b, q)| (b, Some(q)));
            let rest = base.split_once("://").map_or(base, |(_, r)| r);
            let base = match rest.find('/') {
                Some(i) => format!("{}/{name}", &base[..base.len() - rest.len() + i]),
                None => format!("{base}/{name}"),
            };
            query.map_or(base.clone(), |q| format!("{base}?{q}"))
        } else {
            let kept: Vec<&str> = admin.split_whitespace().filter(|kv| !kv.starts_with("dbname=")).collect();
            format!("{} dbname={name}", kept.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::TempDir;
    use super::*;

    fn versions(conn: &mut Conn) -> Vec<u32> {
        let sql: &mut dyn Sql = conn;
        sql.query_map("SELECT version FROM schema_version ORDER BY version", params![], |r| r.get(0)).unwrap()
    }

    fn tables(conn: &mut Conn) -> Vec<String> {
        let query = match conn.engine() {
            Engine::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            Engine::Postgres => "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
        };
        let sql: &mut dyn Sql = conn;
        sql.query_map(query, params![], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn migrations_create_every_table() {
        let store = Store::open(testutil::location().await).await.unwrap();
        assert_eq!(store.path(), None);
        let (v, t) = store.call(|c| Ok((versions(c), tables(c)))).await.unwrap();
        assert_eq!(v, migrate::versions());
        for want in ["approvals", "approval_votes", "approval_transitions", "audit", "audit_head", "schema_version"] {
            assert!(t.iter().any(|n| n == want), "missing table {want}: {t:?}");
        }
    }

    #[tokio::test]
    async fn migrations_on_a_file_apply_once_and_refuse_newer_schema() {
        let dir = TempDir::new("store-migrate");
        let path = dir.path().join("nested/dir/gate.db");
        let loc = Location::File(path.clone());

        let store = Store::open(loc.clone()).await.unwrap();
        assert_eq!(store.path(), Some(std::fs::canonicalize(&path).unwrap().as_path()));
        let (v, mode) = store
            .call(|c| {
                let mode: String = c.query_one("PRAGMA journal_mode", params![])?.get(0)?;
                Ok((versions(c), mode))
            })
            .await
            .unwrap();
        assert_eq!(v, migrate::versions());
        assert_eq!(mode, "wal");
        drop(store);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "database file mode {mode:o}");
        }

        // Reopening applies nothing twice.
        let store = Store::open(loc.clone()).await.unwrap();
        let v = store.call(|c| Ok(versions(c))).await.unwrap();
        assert_eq!(v, migrate::versions());

        // A database migrated by a newer mcp-gate is refused rather than misread.
        store
            .call(|c| {
                c.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (999, 'future', 0)", params![])
            })
            .await
            .unwrap();
        drop(store);
        match Store::open(loc).await {
            Err(StoreError::SchemaTooNew { found: 999, supported }) => assert_eq!(supported, SCHEMA_VERSION),
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    /// A store on a tokio clock stamps its own rows with that clock, and on paused time the clock
    /// stands still while the store works, even with a timer pending.
    #[tokio::test(start_paused = true)]
    async fn a_store_on_paused_time_reads_and_keeps_its_clock() {
        const T: i64 = 1_800_000_000_000;
        let store = Store::open_with_clock(Location::Memory, Clock::tokio(T)).await.unwrap();
        let (applied, started): (i64, i64) = store
            .call(|c| {
                let applied = c.query_one("SELECT min(applied_at) FROM schema_version", params![])?.get(0)?;
                let started = c.query_one("SELECT started_at FROM instances", params![])?.get(0)?;
                Ok((applied, started))
            })
            .await
            .unwrap();
        assert_eq!((applied, started), (T, T));
        let timer = tokio::spawn(tokio::time::sleep(Duration::from_secs(1)));
        for _ in 0..20 {
            store.call(|c| c.query_one("SELECT count(*) FROM approvals", params![])?.get::<i64>(0)).await.unwrap();
        }
        assert_eq!(store.now_ms(), T, "waiting for the store is not idle time");
        assert!(!timer.is_finished());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(store.now_ms(), T + 1_000);
    }

    /// PostgreSQL: a connection the server dropped (a restart, a failover, an idle timeout) fails
    /// the request that was on it, and the next request runs on a new one.
    #[tokio::test]
    async fn a_lost_postgres_connection_is_made_again() {
        let loc = testutil::location().await;
        if !matches!(loc, Location::Postgres(_)) {
            return; // SQLite: there is no connection to lose
        }
        let store = Store::open(loc).await.unwrap();
        let killed = store.call(|c| c.query("SELECT pg_terminate_backend(pg_backend_pid())", params![])).await;
        assert!(killed.is_err(), "the request on the dropped connection fails: {killed:?}");
        let n: i64 =
            store.call(|c| c.query_one("SELECT count(*) FROM schema_version", params![])?.get(0)).await.unwrap();
        assert!(n >= 8, "{n}");
        store.ping().await.unwrap();
    }

    /// PostgreSQL: of two stores on one database exactly one leads, and when it goes the other
    /// takes over. On SQLite every store leads (the machine's hub decides who announces).
    #[tokio::test]
    async fn one_replica_leads_and_another_takes_over_when_it_goes() {
        let (loc, _dir) = testutil::shared_location("leader").await;
        let a = Store::open(loc.clone()).await.unwrap();
        let b = Store::open(loc.clone()).await.unwrap();
        if !matches!(loc, Location::Postgres(_)) {
            assert!(a.leads() && b.leads());
            return;
        }
        let settle = |a: Store, b: Store| async move {
            for _ in 0..100 {
                if a.leads() || b.leads() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
            (a.leads(), b.leads())
        };
        let (la, lb) = settle(a.clone(), b.clone()).await;
        assert!(la != lb, "exactly one leads: {la} {lb}");
        let (gone, stays) = if la { (a, b) } else { (b, a) };
        drop(gone);
        let mut took_over = false;
        for _ in 0..100 {
            if stays.leads() {
                took_over = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(took_over, "the other store leads once the leader is gone");
    }

    #[tokio::test]
    async fn a_panicking_request_does_not_kill_the_worker() {
        let store = Store::open(testutil::location().await).await.unwrap();
        let r = store
            .call(|c| -> Result<(), StoreError> {
                c.write(|tx| {
                    tx.execute("INSERT INTO audit_head (singleton, id, hash) VALUES (1, 1, 'x')", params![])?;
                    panic!("boom");
                })
            })
            .await;
        assert!(matches!(r, Err(StoreError::Aborted)), "{r:?}");
        let n: i64 = store.call(|c| c.query_one("SELECT count(*) FROM audit_head", params![])?.get(0)).await.unwrap();
        assert_eq!(n, 0, "the panicking request's transaction was rolled back");
    }

    /// The numbers in the scratch table `t`, in insertion order.
    async fn scratch(store: &Store) -> Vec<i64> {
        store
            .call(|c| {
                let sql: &mut dyn Sql = c;
                sql.query_map("SELECT n FROM t ORDER BY seq", params![], |r| r.get(0))
            })
            .await
            .unwrap()
    }

    fn insert(store: &Store, n: i64) {
        store.defer(move |tx| tx.execute("INSERT INTO t (seq, n) VALUES (?1, ?1)", params![n]).map(drop)).unwrap();
    }

    #[tokio::test]
    async fn deferred_writes_are_committed_before_any_later_request() {
        let store = Store::open(testutil::location().await).await.unwrap();
        store.call(|c| c.batch("CREATE TABLE t (seq BIGINT, n BIGINT)")).await.unwrap();
        for n in 1..=3 {
            insert(&store, n);
        }
        // Asked at once, well within the linger: the group is written first, in order.
        assert_eq!(scratch(&store).await, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_failing_deferred_write_loses_its_group_not_the_store() {
        let store = Store::open(testutil::location().await).await.unwrap();
        store.call(|c| c.batch("CREATE TABLE t (seq BIGINT, n BIGINT)")).await.unwrap();
        insert(&store, 1);
        store.defer(|_| Err(StoreError::Corrupt("refused".into()))).unwrap();
        assert_eq!(scratch(&store).await, Vec::<i64>::new(), "the group is one transaction");
        insert(&store, 2);
        assert_eq!(scratch(&store).await, [2]);
    }

    #[tokio::test]
    async fn deferred_writes_are_committed_when_the_last_handle_is_dropped() {
        let dir = TempDir::new("store-deferred");
        let loc = Location::File(dir.path().join("gate.db"));
        let store = Store::open(loc.clone()).await.unwrap();
        store.call(|c| c.batch("CREATE TABLE t (seq BIGINT, n BIGINT)")).await.unwrap();
        let (ran_tx, ran) = oneshot::channel();
        store
            .defer(move |tx| {
                tx.execute("INSERT INTO t (seq, n) VALUES (1, 7)", params![])?;
                let _ = ran_tx.send(());
                Ok(())
            })
            .unwrap();
        drop(store);
        ran.await.unwrap();
        // A write transaction of another connection waits for the first one's commit.
        let other = Store::open(loc).await.unwrap();
        let n: i64 = other
            .call(|c| c.write(|tx| tx.query_one("SELECT count(*) FROM t WHERE n = 7", params![])?.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
