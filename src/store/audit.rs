//! The audit log: append-only and hash-chained, in the store's database (table `audit`).
//!
//! Each row's `hash` is `sha256(prev_hash || canonical JSON of the row)` in lowercase hex, where the row is
//! `{actor, agent, approval_id, at, detail, event, id, server, tool}` with keys sorted, no whitespace, and
//! `detail` itself canonical (keys sorted at every level). The first row's `prev_hash` is 64 zeros. The
//! `detail` column stores exactly the canonical text that was hashed, so verification is byte-exact.
//!
//! `audit_head` holds the `(id, hash)` of the newest row, updated in the same transaction as each append, and
//! new rows chain onto the head rather than onto whatever row happens to be last.
//!
//! What [`verify`] detects:
//! - an edited row (its hash no longer matches), or an edited row whose hash was recomputed (the next row's
//!   `prev_hash` no longer matches);
//! - a deleted row in the middle (an id gap and a `prev_hash` mismatch), or deleted first rows;
//! - deleted last rows: the head still names the old tip. Deleting the tail *and* rewriting `audit_head` is
//!   not detectable from inside the file; neither is rewriting the whole chain from some row on. Copy the
//!   head elsewhere (`tail(store, 1)`) to anchor it outside the database.
//!
//! Callers pass already-redacted arguments in `detail`; [`Redactor`] does the redacting.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::db::{Engine, Param, Row, Sql, Val, params};
use crate::store::{Conn, Store, StoreError};

/// `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The replacement for redacted values.
pub const REDACTED: &str = "[redacted]";

/// What happened to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Allowed,
    DeniedByPolicy,
    Requested,
    Approved,
    Denied,
    Expired,
    Executed,
    Failed,
    AiDecision,
    /// A `tools/call` the proxy could not read strictly (duplicate keys, keys that differ only by
    /// case, invalid escapes, inexact numbers, too deep), or whose argument differs only by case
    /// from a property the tool declares: nothing of it was evaluated or forwarded.
    Refused,
    /// An approved call was claimed for a caller and is about to run.
    Claimed,
    /// A claim was given back unused: its caller left before the call was sent.
    Released,
    /// A `requestState` was refused: not issued by the proxy, altered, another caller's or
    /// another call's, or already used.
    StateRefused,
    /// A call was answered with a gate task (its id, owner and era in the detail; the approval
    /// it waits for, if any).
    TaskCreated,
    /// A client cancelled its gate task before it ran.
    TaskCancelled,
}

impl Event {
    pub const ALL: [Event; 15] = [
        Event::Allowed,
        Event::DeniedByPolicy,
        Event::Requested,
        Event::Approved,
        Event::Denied,
        Event::Expired,
        Event::Executed,
        Event::Failed,
        Event::AiDecision,
        Event::Refused,
        Event::Claimed,
        Event::Released,
        Event::StateRefused,
        Event::TaskCreated,
        Event::TaskCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Allowed => "allowed",
            Event::DeniedByPolicy => "denied_by_policy",
            Event::Requested => "requested",
            Event::Approved => "approved",
            Event::Denied => "denied",
            Event::Expired => "expired",
            Event::Executed => "executed",
            Event::Failed => "failed",
            Event::AiDecision => "ai_decision",
            Event::Refused => "refused",
            Event::Claimed => "claimed",
            Event::Released => "released",
            Event::StateRefused => "state_refused",
            Event::TaskCreated => "task_created",
            Event::TaskCancelled => "task_cancelled",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit event {0:?}")]
pub struct ParseEventError(pub String);

impl FromStr for Event {
    type Err = ParseEventError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Event::ALL.into_iter().find(|e| e.as_str() == s).ok_or_else(|| ParseEventError(s.to_owned()))
    }
}

/// One record to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub event: Event,
    pub approval_id: Option<String>,
    pub server: String,
    pub tool: String,
    pub agent: Option<String>,
    pub actor: Option<String>,
    /// Free-form JSON; arguments in it must already be redacted.
    pub detail: Value,
}

/// One stored row, every column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    /// The event as stored (a string, so that rows written by a newer mcp-gate still read).
    pub event: String,
    pub approval_id: Option<String>,
    pub server: String,
    pub tool: String,
    pub agent: Option<String>,
    pub actor: Option<String>,
    /// The parsed detail (a JSON string holding the raw text if the stored text is not JSON).
    pub detail: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Rows checked.
    pub rows: u64,
    /// The first row found wrong and why; `None` if the chain is intact.
    pub first_bad: Option<(i64, String)>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Replaces the values at JSON pointers (RFC 6901, e.g. `/password`, `/headers/authorization`) with
/// `"[redacted]"`. A pointer that does not resolve is ignored; the empty pointer redacts the whole value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    pointers: Vec<String>,
}

impl Redactor {
    pub fn new(pointers: Vec<String>) -> Redactor {
        Redactor { pointers }
    }

    pub fn redact(&self, args: &Value) -> Value {
        let mut out = args.clone();
        for pointer in &self.pointers {
            if let Some(slot) = out.pointer_mut(pointer) {
                *slot = Value::String(REDACTED.to_owned());
            }
        }
        out
    }
}

impl Store {
    /// Appends one record to the chain and returns its id.
    ///
    /// The head is read and the row and head written in one write transaction (`BEGIN IMMEDIATE`, or
    /// PostgreSQL's write lock), so concurrent writers (other handles, other processes or replicas)
    /// serialize on the database lock and the chain stays linear. Committed durably
    /// (`synchronous = FULL` on SQLite).
    pub async fn audit_append(&self, rec: AuditRecord, at: i64) -> Result<i64, StoreError> {
        self.call(move |conn| conn.write_durable(|tx| append_in(tx, &rec, at))).await
    }

    /// Queues a record to be appended within [`LINGER`](crate::store::LINGER), together with the
    /// others queued meanwhile, in one transaction, without forcing them to disk (WAL,
    /// `synchronous = NORMAL`; see [`Store::defer`]): for the high-volume records of calls the policy
    /// decided on its own, written off the call path. A power loss can lose the latest group; the
    /// chain stays consistent. Fails only if the store has stopped.
    pub fn audit_append_later(&self, rec: AuditRecord, at: i64) -> Result<(), StoreError> {
        self.enqueue(crate::store::Deferred::Audit(Box::new(rec), at))
    }
}

/// Appends one record inside an open write transaction (which holds the database's write lock,
/// serialising appends across processes and replicas): chains it onto the head and moves the head.
fn append_in(tx: &mut dyn Sql, rec: &AuditRecord, at: i64) -> Result<i64, StoreError> {
    let mut chain = Chain::default();
    let id = chain.append(tx, rec, at)?;
    chain.settle(tx)?;
    Ok(id)
}

/// The tip of the chain while one write transaction appends to it: read from `audit_head` before
/// the first record, carried from record to record, and written back once by [`Chain::settle`].
/// Only valid inside the transaction (which holds the write lock: no other writer can move the
/// head meanwhile); settle it before anything else runs in that transaction.
#[derive(Default)]
pub(crate) struct Chain {
    head: Option<(i64, String)>,
    /// Whether `head` moved since it was read.
    moved: bool,
}

impl Chain {
    /// Appends one record after the tip and makes it the tip; returns its id.
    pub(crate) fn append(&mut self, tx: &mut dyn Sql, rec: &AuditRecord, at: i64) -> Result<i64, StoreError> {
        let (last_id, prev_hash) = match self.head.take() {
            Some(head) => head,
            None => read_head(tx)?,
        };
        let (id, hash) = append_row(tx, rec, at, last_id, &prev_hash)?;
        self.head = Some((id, hash));
        self.moved = true;
        Ok(id)
    }

    /// Writes the tip back to `audit_head` if it moved, and forgets it.
    pub(crate) fn settle(&mut self, tx: &mut dyn Sql) -> Result<(), StoreError> {
        if let (Some((id, hash)), true) = (self.head.take(), std::mem::take(&mut self.moved)) {
            tx.execute(
                "INSERT INTO audit_head (singleton, id, hash) VALUES (1, ?1, ?2)
                 ON CONFLICT (singleton) DO UPDATE SET id = excluded.id, hash = excluded.hash",
                params![id, hash],
            )?;
        }
        Ok(())
    }
}

/// The tip of the chain as stored: `audit_head`, or the last row when the head is missing, or
/// the genesis.
fn read_head(tx: &mut dyn Sql) -> Result<(i64, String), StoreError> {
    let head: Option<(i64, String)> = tx
        .query_opt("SELECT id, hash FROM audit_head WHERE singleton = 1", params![])?
        .map(|r| Ok::<_, StoreError>((r.get(0)?, r.get(1)?)))
        .transpose()?;
    Ok(match head {
        Some(head) => head,
        None => {
            let last: Option<(i64, String)> = tx
                .query_opt("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1", params![])?
                .map(|r| Ok::<_, StoreError>((r.get(0)?, r.get(1)?)))
                .transpose()?;
            if last.is_some() {
                tracing::warn!("audit_head is missing although the audit log has rows; chaining onto the last row");
            }
            last.unwrap_or_else(|| (0, GENESIS_HASH.to_owned()))
        }
    })
}

/// Inserts one row chained onto (`last_id`, `prev_hash`); returns its id and hash.
fn append_row(
    tx: &mut dyn Sql,
    rec: &AuditRecord,
    at: i64,
    last_id: i64,
    prev_hash: &str,
) -> Result<(i64, String), StoreError> {
    let id = last_id.checked_add(1).ok_or_else(|| StoreError::Corrupt("audit id overflow".into()))?;
    let detail = canonical_json(&rec.detail);
    let fields = RowFields {
        id,
        at,
        event: rec.event.as_str(),
        approval_id: rec.approval_id.as_deref(),
        server: &rec.server,
        tool: &rec.tool,
        agent: rec.agent.as_deref(),
        actor: rec.actor.as_deref(),
        detail: &detail,
    };
    let hash = fields.hash(prev_hash);
    tx.execute(
        "INSERT INTO audit (id, at, event, approval_id, server, tool, agent, actor, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            id,
            at,
            fields.event,
            fields.approval_id,
            fields.server,
            fields.tool,
            fields.agent,
            fields.actor,
            detail,
            prev_hash,
            hash
        ],
    )?;
    Ok((id, hash))
}

/// The hashed fields of a row, borrowed.
struct RowFields<'a> {
    id: i64,
    at: i64,
    event: &'a str,
    approval_id: Option<&'a str>,
    server: &'a str,
    tool: &'a str,
    agent: Option<&'a str>,
    actor: Option<&'a str>,
    /// Canonical JSON text, used verbatim.
    detail: &'a str,
}

impl RowFields<'_> {
    /// `sha256(prev_hash || {"actor":…,"agent":…,"approval_id":…,"at":…,"detail":…,"event":…,"id":…,"server":…,"tool":…})`.
    fn hash(&self, prev_hash: &str) -> String {
        let mut doc = Vec::with_capacity(self.detail.len() + 256);
        let text = |doc: &mut Vec<u8>, key: &str, value: Option<&str>| {
            doc.extend_from_slice(key.as_bytes());
            match value {
                Some(value) => write_json_str(doc, value),
                None => doc.extend_from_slice(b"null"),
            }
        };
        text(&mut doc, "{\"actor\":", self.actor);
        text(&mut doc, ",\"agent\":", self.agent);
        text(&mut doc, ",\"approval_id\":", self.approval_id);
        doc.extend_from_slice(b",\"at\":");
        write_json(&mut doc, &self.at);
        doc.extend_from_slice(b",\"detail\":");
        doc.extend_from_slice(self.detail.as_bytes());
        text(&mut doc, ",\"event\":", Some(self.event));
        doc.extend_from_slice(b",\"id\":");
        write_json(&mut doc, &self.id);
        text(&mut doc, ",\"server\":", Some(self.server));
        text(&mut doc, ",\"tool\":", Some(self.tool));
        doc.push(b'}');

        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        hasher.update(&doc);
        hex::encode(hasher.finalize())
    }
}

/// Canonical JSON: object keys sorted (by code point) at every level, no whitespace, strings escaped and
/// numbers printed as `serde_json` prints them.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    // Only whole serde_json texts and ASCII punctuation were written.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends `value` as canonical JSON, with no intermediate text.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(out, k);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_json(out, scalar),
    }
}

/// Appends a string as serde_json writes it.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    write_json(out, s);
}

/// Appends `value` as serde_json's compact writer prints it (what `Value`'s `Display` prints).
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing a string, number, bool or null into memory cannot fail; the text then equals
    // `Value::to_string()` byte for byte (the same serializer).
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

const AUDIT_COLS: &str = "id, at, event, approval_id, server, tool, agent, actor, detail, prev_hash, hash";

/// A row as stored, `detail` as its raw text.
struct RawRow {
    id: i64,
    at: i64,
    event: String,
    approval_id: Option<String>,
    server: String,
    tool: String,
    agent: Option<String>,
    actor: Option<String>,
    detail: String,
    prev_hash: String,
    hash: String,
}

impl RawRow {
    fn read(r: &Row) -> Result<RawRow, StoreError> {
        Ok(RawRow {
            id: r.get(0)?,
            at: r.get(1)?,
            event: r.get(2)?,
            approval_id: r.get(3)?,
            server: r.get(4)?,
            tool: r.get(5)?,
            agent: r.get(6)?,
            actor: r.get(7)?,
            detail: r.get(8)?,
            prev_hash: r.get(9)?,
            hash: r.get(10)?,
        })
    }

    fn computed_hash(&self) -> String {
        RowFields {
            id: self.id,
            at: self.at,
            event: &self.event,
            approval_id: self.approval_id.as_deref(),
            server: &self.server,
            tool: &self.tool,
            agent: self.agent.as_deref(),
            actor: self.actor.as_deref(),
            detail: &self.detail,
        }
        .hash(&self.prev_hash)
    }

    fn into_row(self) -> AuditRow {
        let detail = serde_json::from_str(&self.detail).unwrap_or(Value::String(self.detail));
        AuditRow {
            id: self.id,
            at: self.at,
            event: self.event,
            approval_id: self.approval_id,
            server: self.server,
            tool: self.tool,
            agent: self.agent,
            actor: self.actor,
            detail,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

/// Walks the whole chain (in one read transaction, a consistent snapshot) and reports the first problem.
pub async fn verify(store: &Store) -> Result<VerifyReport, StoreError> {
    store.call(|conn| read_snapshot(conn, verify_snapshot)).await
}

/// Runs `f` in a read-only transaction that sees one snapshot of the database (no write lock:
/// appends go on meanwhile, unseen). SQLite: a deferred transaction in WAL mode; PostgreSQL:
/// `REPEATABLE READ`, since each statement of a `READ COMMITTED` transaction has its own snapshot.
fn read_snapshot<T>(conn: &mut Conn, f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>) -> Result<T, StoreError> {
    conn.batch(match conn.engine() {
        Engine::Sqlite => "BEGIN DEFERRED",
        Engine::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    })?;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn.sql())));
    match result {
        Ok(Ok(value)) => {
            conn.batch("COMMIT")?;
            Ok(value)
        }
        Ok(Err(e)) => {
            let _ = conn.batch("ROLLBACK");
            Err(e)
        }
        Err(panic) => {
            let _ = conn.batch("ROLLBACK");
            std::panic::resume_unwind(panic)
        }
    }
}

fn verify_snapshot(conn: &mut dyn Sql) -> Result<VerifyReport, StoreError> {
    // In pages, so that a long log is not held in memory at once; the snapshot keeps them consistent.
    const PAGE: i64 = 1000;
    let sql = format!("SELECT {AUDIT_COLS} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2");
    let mut count = 0u64;
    let mut first_bad: Option<(i64, String)> = None;
    let mut prev: Option<(i64, String)> = None; // (id, stored hash) of the previous row
    let mut after = i64::MIN;
    loop {
        let rows = conn.query_map(&sql, params![after, PAGE], RawRow::read)?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let full = rows.len() as i64 == PAGE;
        for row in rows {
            count += 1;
            if first_bad.is_none() {
                first_bad = check_row(&row, prev.as_ref()).map(|why| (row.id, why));
            }
            prev = Some((row.id, row.hash));
        }
        if !full {
            break;
        }
    }
    if first_bad.is_none() {
        first_bad = check_head(conn, prev.as_ref())?;
    }
    Ok(VerifyReport { rows: count, first_bad })
}

fn check_row(row: &RawRow, prev: Option<&(i64, String)>) -> Option<String> {
    let (want_id, want_prev) = match prev {
        Some((id, hash)) => (id + 1, hash.as_str()),
        None => (1, GENESIS_HASH),
    };
    if row.id != want_id {
        return Some(format!("id gap: expected row {want_id}, found {} (rows deleted)", row.id));
    }
    if row.prev_hash != want_prev {
        return Some("prev_hash does not match the previous row's hash (a row was deleted or rewritten)".into());
    }
    if row.computed_hash() != row.hash {
        return Some("hash mismatch: the row was edited".into());
    }
    None
}

fn check_head(conn: &mut dyn Sql, last: Option<&(i64, String)>) -> Result<Option<(i64, String)>, StoreError> {
    let head: Option<(i64, String)> = conn
        .query_opt("SELECT id, hash FROM audit_head WHERE singleton = 1", params![])?
        .map(|r| Ok::<_, StoreError>((r.get(0)?, r.get(1)?)))
        .transpose()?;
    Ok(match (head, last) {
        (None, None) => None,
        (None, Some((id, _))) => Some((*id, "audit_head is missing".into())),
        (Some((head_id, _)), None) => {
            Some((head_id, format!("audit_head names row {head_id} but the log is empty (rows deleted)")))
        }
        (Some((head_id, head_hash)), Some((id, hash))) => {
            if head_id != *id {
                Some((head_id, format!("audit_head names row {head_id} but the last row is {id} (tail deleted)")))
            } else if head_hash != *hash {
                Some((head_id, "audit_head hash does not match the last row".into()))
            } else {
                None
            }
        }
    })
}

/// The last `n` rows, oldest first.
pub async fn tail(store: &Store, n: usize) -> Result<Vec<AuditRow>, StoreError> {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    store
        .call(move |conn| {
            let mut rows: Vec<AuditRow> = conn.sql().query_map(
                &format!("SELECT {AUDIT_COLS} FROM audit ORDER BY id DESC LIMIT ?1"),
                params![n],
                |r| RawRow::read(r).map(RawRow::into_row),
            )?;
            rows.reverse();
            Ok(rows)
        })
        .await
}

/// The latest record of `event` about each of these approval requests that has one: its time
/// and detail, by request id.
pub async fn latest_of(
    store: &Store,
    event: Event,
    approval_ids: Vec<String>,
) -> Result<std::collections::HashMap<String, (i64, Value)>, StoreError> {
    if approval_ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    store
        .call(move |conn| {
            let mut found = std::collections::HashMap::new();
            // The ids go in as one JSON array, a page at a time; rows in id order, so a later
            // record about the same request replaces an earlier one.
            let sql = match conn.engine() {
                Engine::Sqlite => {
                    "SELECT approval_id, at, detail FROM audit
                     WHERE approval_id IN (SELECT value FROM json_each(?1)) AND event = ?2 ORDER BY id"
                }
                Engine::Postgres => {
                    "SELECT approval_id, at, detail FROM audit
                     WHERE approval_id IN (SELECT json_array_elements_text(CAST(?1 AS json))) AND event = ?2
                     ORDER BY id"
                }
            };
            for page in approval_ids.chunks(1000) {
                let ids = serde_json::to_string(page)?;
                for row in conn.query(sql, params![ids, event.as_str()])? {
                    let id: String = row.get(0)?;
                    let at: i64 = row.get(1)?;
                    let detail: String = row.get(2)?;
                    found.insert(id, (at, serde_json::from_str(&detail)?));
                }
            }
            Ok(found)
        })
        .await
}

/// Which audit rows [`page`] returns.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    /// Rows with a smaller id than this (the `next` cursor of the previous page).
    pub before: Option<i64>,
    pub limit: Option<u32>,
    pub approval_id: Option<String>,
    pub agent: Option<String>,
    pub event: Option<String>,
}

/// A page of audit rows, newest first, and the cursor of the next page.
pub async fn page(store: &Store, q: AuditQuery) -> Result<(Vec<AuditRow>, Option<i64>), StoreError> {
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    store
        .call(move |conn| {
            let mut conds = vec!["id < ?1".to_owned()];
            let mut args: Vec<Val> = vec![Val::Int(q.before.unwrap_or(i64::MAX))];
            for (column, value) in [("approval_id", q.approval_id), ("agent", q.agent), ("event", q.event)] {
                if let Some(v) = value {
                    args.push(Val::Text(v));
                    conds.push(format!("{column} = ?{}", args.len()));
                }
            }
            args.push(Val::Int(limit));
            let sql = format!(
                "SELECT {AUDIT_COLS} FROM audit WHERE {} ORDER BY id DESC LIMIT ?{}",
                conds.join(" AND "),
                args.len()
            );
            let args: Vec<&dyn Param> = args.iter().map(|v| v as &dyn Param).collect();
            let rows = conn.sql().query_map(&sql, &args, |r| RawRow::read(r).map(RawRow::into_row))?;
            let next = if rows.len() as i64 == limit { rows.last().map(|r| r.id) } else { None };
            Ok((rows, next))
        })
        .await
}

/// Writes every row as one JSON object per line, oldest first, and returns the number of rows.
///
/// Rows are fetched in pages so the worker is not held for the whole export; the output is written on the
/// calling task.
pub async fn export_jsonl(store: &Store, out: &mut (dyn std::io::Write + Send)) -> Result<u64, StoreError> {
    const PAGE: i64 = 1000;
    let mut after = 0i64;
    let mut written = 0u64;
    loop {
        let page = store
            .call(move |conn| {
                conn.sql().query_map(
                    &format!("SELECT {AUDIT_COLS} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2"),
                    params![after, PAGE],
                    |r| RawRow::read(r).map(RawRow::into_row),
                )
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for row in &page {
            serde_json::to_writer(&mut *out, row)?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::Location;
    use crate::store::testutil::TempDir;

    const T0: i64 = 1_700_000_000_000;

    fn rec(event: Event, i: i64) -> AuditRecord {
        AuditRecord {
            event,
            approval_id: Some(format!("appr-{i}")),
            server: "fs".into(),
            tool: "delete_file".into(),
            agent: Some("claude".into()),
            actor: (event == Event::Approved).then(|| "alice".into()),
            detail: json!({"z": 1, "arguments": {"path": format!("/tmp/{i}"), "b": [1, 2.5, null]}, "a": "é\"\n"}),
        }
    }

    async fn store_with(n: i64) -> Store {
        let store = Store::open(crate::store::testutil::location().await).await.unwrap();
        for i in 1..=n {
            let event = Event::ALL[usize::try_from(i).unwrap() % Event::ALL.len()];
            assert_eq!(store.audit_append(rec(event, i), T0 + i).await.unwrap(), i);
        }
        store
    }

    /// Runs raw SQL as an attacker would: without the append-only triggers.
    async fn tamper(store: &Store, sql: &'static str) {
        store
            .call(move |c| {
                c.batch(match c.engine() {
                    Engine::Sqlite => "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
                    Engine::Postgres => {
                        "DROP TRIGGER IF EXISTS audit_no_update ON audit; DROP TRIGGER IF EXISTS audit_no_delete ON audit;"
                    }
                })?;
                c.batch(sql)?;
                Ok(())
            })
            .await
            .unwrap();
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value = serde_json::from_str(r#"{"b": {"y": 1, "x": [ {"d": 1, "c": 2} ]}, "a": "é\u0001"}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":"é\u0001","b":{"x":[{"c":2,"d":1}],"y":1}}"#);
        let reparsed: Value = serde_json::from_str(&canonical_json(&v)).unwrap();
        assert_eq!(canonical_json(&reparsed), canonical_json(&v));
    }

    #[test]
    fn events_round_trip() {
        for e in Event::ALL {
            assert_eq!(serde_json::to_value(e).unwrap(), json!(e.as_str()));
            assert_eq!(e.as_str().parse::<Event>(), Ok(e));
        }
        assert_eq!(Event::DeniedByPolicy.as_str(), "denied_by_policy");
    }

    #[tokio::test]
    async fn chain_verifies_and_rows_read_back() {
        let empty = Store::open(crate::store::testutil::location().await).await.unwrap();
        assert_eq!(verify(&empty).await.unwrap(), VerifyReport { rows: 0, first_bad: None });

        let store = store_with(5).await;
        let report = verify(&store).await.unwrap();
        assert_eq!(report, VerifyReport { rows: 5, first_bad: None });

        let rows = tail(&store, 2).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        assert_eq!(rows[1].detail["arguments"]["path"], "/tmp/5");
        assert_eq!(rows[1].event, Event::ALL[5].as_str());
        assert_eq!(tail(&store, 100).await.unwrap()[0].prev_hash, GENESIS_HASH);
        assert!(tail(&store, 0).await.unwrap().is_empty());

        // The hash is what the module docs say it is.
        let first = &tail(&store, 100).await.unwrap()[0];
        let doc = format!(
            r#"{{"actor":null,"agent":"claude","approval_id":"appr-1","at":{},"detail":{},"event":"denied_by_policy","id":1,"server":"fs","tool":"delete_file"}}"#,
            T0 + 1,
            canonical_json(&first.detail)
        );
        let mut h = Sha256::new();
        h.update(GENESIS_HASH.as_bytes());
        h.update(doc.as_bytes());
        assert_eq!(first.hash, hex::encode(h.finalize()));

        let mut out: Vec<u8> = Vec::new();
        assert_eq!(export_jsonl(&store, &mut out).await.unwrap(), 5);
        let lines: Vec<AuditRow> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(lines[3..], rows[..]);
    }

    #[tokio::test]
    async fn records_appended_later_chain_in_order_with_immediate_ones() {
        let store = store_with(1).await;
        store.audit_append_later(rec(Event::Allowed, 2), T0 + 2).unwrap();
        store.audit_append_later(rec(Event::DeniedByPolicy, 3), T0 + 3).unwrap();
        // Appended at once, within the linger: the queued records are written first.
        assert_eq!(store.audit_append(rec(Event::Requested, 4), T0 + 4).await.unwrap(), 4);
        let rows = tail(&store, 10).await.unwrap();
        let got: Vec<(i64, &str, i64)> = rows.iter().map(|r| (r.id, r.event.as_str(), r.at)).collect();
        assert_eq!(
            got,
            [
                (1, "denied_by_policy", T0 + 1),
                (2, "allowed", T0 + 2),
                (3, "denied_by_policy", T0 + 3),
                (4, "requested", T0 + 4)
            ]
        );
        assert_eq!(verify(&store).await.unwrap(), VerifyReport { rows: 4, first_bad: None });
    }

    /// The head as stored and the last row, read in one request.
    async fn head_and_last(store: &Store) -> ((i64, String), (i64, String)) {
        store
            .call(|c| {
                let head = c.query_one("SELECT id, hash FROM audit_head WHERE singleton = 1", params![])?;
                let last = c.query_one("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1", params![])?;
                Ok(((head.get(0)?, head.get(1)?), (last.get(0)?, last.get(1)?)))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_group_carries_the_head_from_record_to_record_and_settles_it_before_other_writes() {
        let store = store_with(1).await;
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(i64, i64)>>> = Default::default();
        for i in 2..=41 {
            store.audit_append_later(rec(Event::Allowed, i), T0 + i).unwrap();
            if i % 10 == 0 {
                // A write of the same group, between records: it must find the head where the
                // records before it left it.
                let seen = seen.clone();
                store
                    .defer(move |tx| {
                        let head: i64 =
                            tx.query_one("SELECT id FROM audit_head WHERE singleton = 1", params![])?.get(0)?;
                        let last: i64 = tx.query_one("SELECT max(id) FROM audit", params![])?.get(0)?;
                        seen.lock().unwrap().push((head, last));
                        Ok(())
                    })
                    .unwrap();
            }
        }
        let ((head_id, head_hash), (last_id, last_hash)) = head_and_last(&store).await;
        assert_eq!((head_id, &head_hash), (41, &last_hash));
        assert_eq!(last_id, 41);
        assert_eq!(*seen.lock().unwrap(), [(10, 10), (20, 20), (30, 30), (40, 40)]);
        assert_eq!(verify(&store).await.unwrap(), VerifyReport { rows: 41, first_bad: None });
    }

    #[tokio::test]
    async fn groups_of_two_stores_on_one_database_make_one_chain() {
        let (location, _dir) = crate::store::testutil::shared_location("audit-groups").await;
        let a = Store::open(location.clone()).await.unwrap();
        let b = Store::open(location).await.unwrap();
        for i in 1..=60 {
            let store = if i % 3 == 0 { &b } else { &a };
            store.audit_append_later(rec(Event::Allowed, i), T0 + i).unwrap();
            if i % 7 == 0 {
                // An immediate append from the other store, between the two stores' groups.
                let other = if i % 3 == 0 { &a } else { &b };
                other.audit_append(rec(Event::Requested, 1000 + i), T0 + 1000 + i).await.unwrap();
            }
        }
        // A request of each store runs after its queued group.
        let rows = |s: &Store| {
            let s = s.clone();
            async move { s.call(|c| c.query_one("SELECT count(*) FROM audit", params![])?.get::<i64>(0)).await.unwrap() }
        };
        rows(&a).await;
        assert_eq!(rows(&b).await, 60 + 8);
        let ((head_id, head_hash), (last_id, last_hash)) = head_and_last(&a).await;
        assert_eq!((head_id, head_hash), (last_id, last_hash));
        assert_eq!(verify(&a).await.unwrap(), VerifyReport { rows: 68, first_bad: None });
    }

    #[tokio::test]
    async fn the_log_is_append_only_for_the_application() {
        let store = store_with(2).await;
        let upd = store.call(|c| c.execute("UPDATE audit SET detail = '{}' WHERE id = 1", params![])).await;
        assert!(upd.is_err(), "{upd:?}");
        let del = store.call(|c| c.execute("DELETE FROM audit WHERE id = 2", params![])).await;
        assert!(del.is_err(), "{del:?}");
        assert!(verify(&store).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn an_edited_row_is_found() {
        let store = store_with(5).await;
        tamper(&store, r#"UPDATE audit SET detail = '{"a":"forged"}' WHERE id = 3"#).await;
        let report = verify(&store).await.unwrap();
        assert_eq!(report.rows, 5);
        let (id, why) = report.first_bad.unwrap();
        assert_eq!(id, 3, "{why}");
        assert!(why.contains("hash mismatch"), "{why}");

        // Editing a row and recomputing its hash breaks the link to the next row instead.
        let store = store_with(5).await;
        let forged = store
            .call(|c| {
                let row =
                    RawRow::read(&c.query_one(&format!("SELECT {AUDIT_COLS} FROM audit WHERE id = 2"), params![])?)?;
                let row = RawRow { actor: Some("mallory".into()), ..row };
                Ok((row.computed_hash(), row.actor))
            })
            .await
            .unwrap();
        store
            .call(move |c| {
                c.batch(match c.engine() {
                    Engine::Sqlite => "DROP TRIGGER audit_no_update",
                    Engine::Postgres => "DROP TRIGGER audit_no_update ON audit",
                })?;
                c.execute("UPDATE audit SET actor = ?1, hash = ?2 WHERE id = 2", params![forged.1, forged.0])?;
                Ok(())
            })
            .await
            .unwrap();
        let (id, why) = verify(&store).await.unwrap().first_bad.unwrap();
        assert_eq!(id, 3, "{why}");
        assert!(why.contains("prev_hash"), "{why}");
    }

    #[tokio::test]
    async fn a_deleted_middle_row_is_found() {
        let store = store_with(5).await;
        tamper(&store, "DELETE FROM audit WHERE id = 3").await;
        let report = verify(&store).await.unwrap();
        assert_eq!(report.rows, 4);
        let (id, why) = report.first_bad.unwrap();
        assert_eq!(id, 4, "{why}");
        assert!(why.contains("gap"), "{why}");

        let store = store_with(3).await;
        tamper(&store, "DELETE FROM audit WHERE id = 1").await;
        let (id, why) = verify(&store).await.unwrap().first_bad.unwrap();
        assert_eq!(id, 2, "{why}");
    }

    #[tokio::test]
    async fn a_deleted_tail_is_found_through_the_head() {
        let store = store_with(5).await;
        tamper(&store, "DELETE FROM audit WHERE id = 5").await;
        let report = verify(&store).await.unwrap();
        assert_eq!(report.rows, 4);
        let (id, why) = report.first_bad.unwrap();
        assert_eq!(id, 5, "{why}");
        assert!(why.contains("tail deleted"), "{why}");

        // Appending afterwards does not paper over it: the new row chains onto the head, leaving a gap.
        store.audit_append(rec(Event::Allowed, 6), T0 + 6).await.unwrap();
        let (id, why) = verify(&store).await.unwrap().first_bad.unwrap();
        assert_eq!(id, 6, "{why}");

        // Everything deleted but the head.
        let store = store_with(2).await;
        tamper(&store, "DELETE FROM audit").await;
        let (id, why) = verify(&store).await.unwrap().first_bad.unwrap();
        assert_eq!(id, 2, "{why}");

        // Documented limit: deleting the tail and rewriting the head goes unnoticed.
        let store = store_with(5).await;
        tamper(&store, "DELETE FROM audit WHERE id = 5; UPDATE audit_head SET id = 4, hash = (SELECT hash FROM audit WHERE id = 4);").await;
        assert!(verify(&store).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn concurrent_writers_in_several_connections_keep_one_chain() {
        let dir = TempDir::new("audit-concurrent");
        let loc = Location::File(dir.path().join("gate.db"));
        let mut handles = Vec::new();
        for _ in 0..4 {
            handles.push(Store::open(loc.clone()).await.unwrap());
        }
        let tasks = handles.iter().enumerate().map(|(w, store)| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    store.audit_append(rec(Event::Allowed, w as i64 * 100 + i), T0 + i).await.unwrap();
                }
            })
        });
        for r in futures::future::join_all(tasks).await {
            r.unwrap();
        }
        let report = verify(&handles[0]).await.unwrap();
        assert_eq!(report, VerifyReport { rows: 100, first_bad: None });
    }

    #[test]
    fn redaction_replaces_only_existing_pointers() {
        let args = json!({
            "user": "ann",
            "password": "hunter2",
            "headers": {"authorization": "Bearer x", "accept": "*/*"},
            "items": [{"token": "a"}, {"token": "b"}],
            "a/b": "slash",
        });
        let r = Redactor::new(vec![
            "/password".into(),
            "/headers/authorization".into(),
            "/items/1/token".into(),
            "/a~1b".into(),
            "/missing/deep".into(),
            "not-a-pointer".into(),
        ]);
        assert_eq!(
            r.redact(&args),
            json!({
                "user": "ann",
                "password": "[redacted]",
                "headers": {"authorization": "[redacted]", "accept": "*/*"},
                "items": [{"token": "a"}, {"token": "[redacted]"}],
                "a/b": "[redacted]",
            })
        );
        assert_eq!(Redactor::default().redact(&args), args);
        assert_eq!(Redactor::new(vec![String::new()]).redact(&args), json!("[redacted]"));
    }

    /// The writers before they wrote into one buffer: each part through `Value`'s `Display`.
    mod reference {
        use super::*;

        pub fn canonical_json(value: &Value) -> String {
            match value {
                Value::Object(map) => {
                    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    let parts: Vec<String> = entries
                        .into_iter()
                        .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                        .collect();
                    format!("{{{}}}", parts.join(","))
                }
                Value::Array(items) => format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
                scalar => scalar.to_string(),
            }
        }

        pub fn hash(f: &RowFields<'_>, prev_hash: &str) -> String {
            let opt = |v: Option<&str>| canonical_json(&v.map_or(Value::Null, |s| Value::String(s.to_owned())));
            let doc = format!(
                r#"{{"actor":{},"agent":{},"approval_id":{},"at":{},"detail":{},"event":{},"id":{},"server":{},"tool":{}}}"#,
                opt(f.actor),
                opt(f.agent),
                opt(f.approval_id),
                f.at,
                f.detail,
                opt(Some(f.event)),
                f.id,
                opt(Some(f.server)),
                opt(Some(f.tool)),
            );
            let mut h = Sha256::new();
            h.update(prev_hash.as_bytes());
            h.update(doc.as_bytes());
            hex::encode(h.finalize())
        }
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = "(\\PC|[\\x00-\\x1f\"\\\\\u{7f}\u{2028}\u{fffd}]){0,12}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((text, inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn canonical_text_and_row_hash_equal_the_reference(
            detail in any_json(),
            texts in proptest::collection::vec("(\\PC|[\\x00-\\x1f\"\\\\])*", 6),
            some in proptest::collection::vec(proptest::bool::ANY, 3),
            at in proptest::num::i64::ANY,
            id in proptest::num::i64::ANY,
        ) {
            let canonical = canonical_json(&detail);
            proptest::prop_assert_eq!(&canonical, &reference::canonical_json(&detail));
            let fields = RowFields {
                id,
                at,
                event: &texts[0],
                approval_id: some[0].then_some(texts[1].as_str()),
                server: &texts[2],
                tool: &texts[3],
                agent: some[1].then_some(texts[4].as_str()),
                actor: some[2].then_some(texts[5].as_str()),
                detail: &canonical,
            };
            proptest::prop_assert_eq!(fields.hash(GENESIS_HASH), reference::hash(&fields, GENESIS_HASH));
        }
    }
}
