//! The approval queue: held tool calls, votes, and their lifecycle.
//!
//! ```text
//!            ┌──────────── deny vote ──────────────▶ Denied
//!            │
//! Pending ───┼── approve votes >= required ──▶ Approved ──claim──▶ (running) ──finish──▶ Executed | Failed
//!            │                                    │
//!            └── deadline passes ──▶ Expired ◀────┘ not used before its deadline
//! ```
//!
//! - **Single use** (`grant_secs == 0`): one claim; its deadline is `expires_at` (the decision deadline is
//!   also the use deadline). The claim marks it consumed (`uses = 1`), the finish moves it to `Executed` or
//!   `Failed`.
//! - **Grant** (`grant_secs > 0`): any number of claims while `now < decided_at + grant_secs`; each finish
//!   is recorded as a transition (to `Executed` or `Failed`) while the row stays `Approved`. When the window
//!   has ended the row is closed (by [`Store::expire_due`] or the next claim): `Executed` if it was used,
//!   `Expired` if not.
//!
//! - **One pending request per call key**: [`Store::open_request`] joins or opens in one transaction,
//!   and a unique index on the key of pending rows backs it up.
//! - **Claims in flight** are rows of `claims` naming the instance (process) that runs them; the claims
//!   of an instance that stopped are settled as `Failed` by [`Store::settle_orphaned_claims`].
//!
//! Every status change writes a row of `approval_transitions` in the same transaction; votes are rows of
//! `approval_votes` (one per distinct actor). All times are unix milliseconds.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, ToSql, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{SYSTEM_ACTOR, Store, StoreError, with_full_sync};

/// Default page size of [`Store::list_approvals`].
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Largest page size of [`Store::list_approvals`].
pub const MAX_LIST_LIMIT: u32 = 1000;

/// Where an approval is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    Executed,
    Failed,
}

impl Status {
    pub const ALL: [Status; 6] =
        [Status::Pending, Status::Approved, Status::Denied, Status::Expired, Status::Executed, Status::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Executed => "executed",
            Status::Failed => "failed",
        }
    }

    /// No further transition can leave this status.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Denied | Status::Expired | Status::Executed | Status::Failed)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown approval status {0:?}")]
pub struct ParseStatusError(pub String);

impl FromStr for Status {
    type Err = ParseStatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| ParseStatusError(s.to_owned()))
    }
}

impl ToSql for Status {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Status {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A reviewer's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoteDecision {
    Approve,
    Deny,
}

impl VoteDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            VoteDecision::Approve => "approve",
            VoteDecision::Deny => "deny",
        }
    }
}

impl FromSql for VoteDecision {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "approve" => Ok(VoteDecision::Approve),
            "deny" => Ok(VoteDecision::Deny),
            other => Err(FromSqlError::Other(format!("unknown vote decision {other:?}").into())),
        }
    }
}

/// A vote as cast (input of [`Store::record_vote`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub actor: String,
    /// The credential that cast it: one vote per credential (see [`crate::identity::Principal`]).
    pub credential: String,
    pub decision: VoteDecision,
    pub notes: Option<String>,
    pub reason: Option<String>,
}

/// A vote as stored, with its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRecord {
    pub actor: String,
    pub decision: VoteDecision,
    pub notes: Option<String>,
    pub reason: Option<String>,
    pub at: i64,
}

/// A held call as it was requested: what a request is opened with ([`Store::open_request`]),
/// which never changes after. [`Approval`] is this plus where the request is in its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: String,
    /// Canonical call key (server + tool + canonical arguments hash), computed by the caller.
    pub key: String,
    pub server: String,
    pub tool: String,
    pub arguments: Value,
    pub agent: Option<String>,
    pub risk: Option<String>,
    pub rule: Option<String>,
    pub rule_reason: Option<String>,
    pub workflow: String,
    pub required_approvals: u32,
    /// 0: single use. Otherwise the length of the grant window that opens when the approval is decided.
    pub grant_secs: u64,
    pub trace: Value,
    pub created_at: i64,
    pub expires_at: i64,
    /// The tool's title, description and annotations as listed by the upstream, if known.
    pub tool_info: Option<Value>,
}

/// An approval request with its votes and outcome; serialized as our API's snake_case JSON, the
/// request's fields beside the others. Its request's fields read as its own (`approval.server`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    #[serde(flatten)]
    pub request: ApprovalRequest,
    pub status: Status,
    pub votes: Vec<VoteRecord>,
    /// When it was approved (the start of a grant window) or denied.
    pub decided_at: Option<i64>,
    /// The actor whose vote decided it (every voter is in `votes`).
    pub decided_by: Option<String>,
    pub deny_reason: Option<String>,
    /// Notes of the deciding vote.
    pub notes: Option<String>,
    /// Successful claims: 0 or 1 for single use, the number of runs for a grant.
    pub uses: u32,
    /// When the last execution finished.
    pub executed_at: Option<i64>,
    /// The outcome of the last execution.
    pub outcome: Option<Value>,
}

impl std::ops::Deref for Approval {
    type Target = ApprovalRequest;

    fn deref(&self) -> &ApprovalRequest {
        &self.request
    }
}

impl Approval {
    /// `request` as just opened: pending, without votes.
    pub fn pending(request: ApprovalRequest) -> Approval {
        Approval {
            request,
            status: Status::Pending,
            votes: Vec::new(),
            decided_at: None,
            decided_by: None,
            deny_reason: None,
            notes: None,
            uses: 0,
            executed_at: None,
            outcome: None,
        }
    }

    /// The end of the grant window, for an approved grant.
    pub fn grant_ends_at(&self) -> Option<i64> {
        if self.grant_secs == 0 {
            return None;
        }
        self.decided_at.map(|at| at.saturating_add(grant_ms(self.grant_secs)))
    }
}

/// One stored state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at: i64,
    /// `None` for the creation of the approval.
    pub from: Option<Status>,
    pub to: Status,
    pub actor: String,
    pub notes: Option<String>,
    pub reason: Option<String>,
}

/// Filter and page of [`Store::list_approvals`]. The default lists everything, newest first, 100 at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApprovalFilter {
    pub status: Option<Status>,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub agent: Option<String>,
    /// The rule that sent the call to approval (`default` matches requests no rule named).
    pub rule: Option<String>,
    /// Created at or after (unix ms).
    pub from: Option<i64>,
    /// Created before (unix ms).
    pub to: Option<i64>,
    /// Case-insensitive text search in the id, server, tool, agent, rule, reason and arguments.
    pub q: Option<String>,
    /// Page size; `None` is [`DEFAULT_LIST_LIMIT`], larger values are cut to [`MAX_LIST_LIMIT`].
    pub limit: Option<u32>,
    pub offset: u32,
}

/// The `WHERE` clause (with a leading space, or empty) and arguments of a filter.
fn filter_sql(filter: &ApprovalFilter) -> (String, Vec<rusqlite::types::Value>) {
    let mut conds: Vec<&str> = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let search: String;
    if let Some(status) = filter.status {
        conds.push("status = ?");
        args.push(status.as_str().to_owned().into());
    }
    for (cond, value) in [("server = ?", &filter.server), ("tool = ?", &filter.tool), ("agent = ?", &filter.agent)] {
        if let Some(v) = value {
            conds.push(cond);
            args.push(v.clone().into());
        }
    }
    match filter.rule.as_deref() {
        Some("default") => conds.push("rule IS NULL"),
        Some(rule) => {
            conds.push("rule = ?");
            args.push(rule.to_owned().into());
        }
        None => {}
    }
    if let Some(from) = filter.from {
        conds.push("created_at >= ?");
        args.push(from.into());
    }
    if let Some(to) = filter.to {
        conds.push("created_at < ?");
        args.push(to.into());
    }
    if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        // LIKE is case-insensitive for ASCII; `\` escapes the wildcards a user typed.
        let escaped = q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        const SEARCHED: [&str; 7] = [
            "id",
            "server",
            "tool",
            "coalesce(agent, '')",
            "coalesce(rule, '')",
            "coalesce(rule_reason, '')",
            "arguments",
        ];
        let any = SEARCHED.iter().map(|c| format!("{c} LIKE ? ESCAPE '\\'")).collect::<Vec<_>>().join(" OR ");
        search = format!("({any})");
        conds.push(&search);
        let pattern = format!("%{escaped}%");
        for _ in SEARCHED {
            args.push(pattern.clone().into());
        }
    }
    if conds.is_empty() { (String::new(), args) } else { (format!(" WHERE {}", conds.join(" AND ")), args) }
}

/// The answer of [`Store::claim_execution`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller may run the call now (exactly once per `Run`).
    Run,
    /// Approved, but already used (single use consumed, or a grant whose window has ended after use).
    Spent,
    /// Expired: never decided, or approved but not used, before its deadline.
    Expired,
    /// Still waiting for votes.
    Pending,
    Denied {
        by: String,
        reason: Option<String>,
    },
}

/// The answer of [`Store::open_request`].
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The request the call now belongs to.
    pub approval: Approval,
    /// `true`: an identical call's request stood and was joined; `false`: the request was created now.
    pub joined: bool,
    /// Requests of the same key whose deadline had passed, closed as `Expired` on the way.
    pub expired: Vec<Approval>,
}

/// Why a vote was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("approval {0} not found")]
    NotFound(String),
    #[error("approval is {status}, not pending")]
    NotPending { status: Status },
    #[error("{actor} has already voted on this approval")]
    AlreadyVoted { actor: String },
    /// The deadline had passed: the approval has now been moved to `Expired` (committed).
    #[error("approval expired before the vote")]
    Expired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for TransitionError {
    fn from(e: rusqlite::Error) -> Self {
        TransitionError::Store(StoreError::Sqlite(e))
    }
}

impl Store {
    /// Stores a new pending approval (and its creation transition).
    pub async fn insert_approval(&self, a: ApprovalRequest) -> Result<Approval, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            insert_tx(&tx, &a)?;
            let stored = load(&tx, &a.id)?.ok_or_else(|| StoreError::NotFound(a.id.clone()))?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    /// Opens the request of a held call, or joins the one that already stands for its key, in one
    /// `BEGIN IMMEDIATE` transaction: the requests of that key whose deadline has passed are closed
    /// first, then the newest reusable one (see [`Store::find_reusable`]) or a denial that still
    /// stands is joined, and only if there is none is `new` stored as pending. Any number of
    /// identical calls, from any number of tasks or processes, get one pending request (a unique
    /// index on the key of pending rows backs this up).
    pub async fn open_request(&self, new: ApprovalRequest, now: i64) -> Result<Opened, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expired = close_lapsed_of_key(&tx, &new.key, now)?;
            if let Some(standing) = standing_tx(&tx, &new.key, now)? {
                tx.commit()?;
                return Ok(Opened { approval: standing, joined: true, expired });
            }
            insert_tx(&tx, &new)?;
            let stored = load(&tx, &new.id)?.ok_or_else(|| StoreError::NotFound(new.id.clone()))?;
            tx.commit()?;
            Ok(Opened { approval: stored, joined: false, expired })
        })
        .await
    }

    /// Opens the request of a call that a reviewer has already decided, and records the reviewer's
    /// vote, in one transaction: the request is never seen pending, so identical calls decided each
    /// on its own review each get their own request. If a pending request for the key stands (one
    /// waiting for a person), it is joined instead and no vote is recorded.
    pub async fn open_decided(
        &self,
        new: ApprovalRequest,
        vote: Vote,
        required: u32,
        now: i64,
    ) -> Result<Opened, TransitionError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expired = close_lapsed_of_key(&tx, &new.key, now)?;
            let pending: Option<String> = tx
                .prepare_cached("SELECT id FROM approvals WHERE key = ?1 AND status = 'pending'")?
                .query_row([&new.key], |r| r.get(0))
                .optional()?;
            if let Some(id) = pending {
                let standing = load(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
                tx.commit()?;
                return Ok(Ok(Opened { approval: standing, joined: true, expired }));
            }
            insert_tx(&tx, &new)?;
            let decided = match vote_in(&tx, &new.id, vote, required, now) {
                Ok(a) => a,
                Err(e) => return Ok(Err(e)),
            };
            tx.commit()?;
            Ok(Ok(Opened { approval: decided, joined: false, expired }))
        })
        .await?
    }

    /// The request an identical call would join now, without opening one: reusable (see
    /// [`Store::find_reusable`]) or denied with its deadline not yet passed.
    pub async fn find_standing(&self, key: &str, now: i64) -> Result<Option<Approval>, StoreError> {
        let key = key.to_owned();
        self.call(move |conn| standing_tx(conn, &key, now)).await
    }

    pub async fn get_approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| load(conn, &id)).await
    }

    /// The most recent approval for this call key that a new identical call may wait on or use: pending and
    /// not past its deadline, or approved and not consumed (single use unused and before `expires_at`, or a
    /// grant whose window is still open).
    pub async fn find_reusable(&self, key: &str, now: i64) -> Result<Option<Approval>, StoreError> {
        let key = key.to_owned();
        self.call(move |conn| reusable_tx(conn, &key, now)).await
    }

    /// Approvals matching `filter`, newest first.
    pub async fn list_approvals(&self, filter: ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        self.call(move |conn| {
            let (conds, mut args) = filter_sql(&filter);
            let sql =
                format!("SELECT {COLS} FROM approvals{conds} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?");
            args.push(i64::from(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT)).into());
            args.push(i64::from(filter.offset).into());
            let rows = conn
                .prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(args), row_to_approval)?
                .collect::<Result<Vec<_>, _>>()?;
            with_votes(conn, rows)
        })
        .await
    }

    /// How many approvals match `filter` (its page is ignored).
    pub async fn count_approvals(&self, filter: ApprovalFilter) -> Result<u64, StoreError> {
        self.call(move |conn| {
            let (conds, args) = filter_sql(&filter);
            let sql = format!("SELECT count(*) FROM approvals{conds}");
            let n: i64 = conn.prepare_cached(&sql)?.query_row(rusqlite::params_from_iter(args), |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

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

    /// Atomically decides whether the caller may run an approved call now (see [`Claim`]). Two concurrent
    /// claims of a single-use approval, from any number of handles or processes, yield one [`Claim::Run`].
    ///
    /// Committed with `synchronous = FULL`: the claim is on disk before the tool runs.
    pub async fn claim_execution(&self, id: &str, now: i64) -> Result<Claim, StoreError> {
        let id = id.to_owned();
        let instance = self.instance().to_owned();
        self.call(move |conn| with_full_sync(conn, |conn| claim_tx(conn, &id, now, &instance))).await
    }

    /// Records the end of a claimed execution: a single-use approval becomes `Executed` or `Failed`; for a
    /// grant the run is recorded as a transition and the status stays `Approved` until the window ends.
    pub async fn finish_execution(&self, id: &str, ok: bool, outcome: Value, now: i64) -> Result<Approval, StoreError> {
        let id = id.to_owned();
        let instance = self.instance().to_owned();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let a = load(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
            drop_claim(&tx, &id, &instance)?;
            let to = if ok { Status::Executed } else { Status::Failed };
            let outcome = serde_json::to_string(&outcome)?;
            if a.grant_secs == 0 {
                if a.status != Status::Approved || a.uses == 0 {
                    return Err(StoreError::InvalidState(format!(
                        "approval {id} is {} and {}claimed; cannot finish it",
                        a.status,
                        if a.uses == 0 { "not " } else { "" }
                    )));
                }
                tx.execute(
                    "UPDATE approvals SET status = ?2, executed_at = ?3, outcome = ?4 WHERE id = ?1",
                    params![id, to, now, outcome],
                )?;
                insert_transition(&tx, &id, now, Some(a.status), to, SYSTEM_ACTOR, None, None)?;
            } else {
                // A grant closed by `expire_due` while this run was in flight still records the run.
                if !matches!(a.status, Status::Approved | Status::Executed) || a.uses == 0 {
                    return Err(StoreError::InvalidState(format!(
                        "grant {id} is {} with {} uses; cannot finish a run",
                        a.status, a.uses
                    )));
                }
                tx.execute(
                    "UPDATE approvals SET executed_at = ?2, outcome = ?3 WHERE id = ?1",
                    params![id, now, outcome],
                )?;
                insert_transition(&tx, &id, now, Some(a.status), to, SYSTEM_ACTOR, Some("grant use"), None)?;
            }
            let stored = load(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    /// Gives back one claim of an approval whose call was never sent (`uses` goes down by one,
    /// with a transition that says so): a single-use approval becomes usable again until its
    /// deadline.
    pub async fn release_claim(&self, id: &str, now: i64) -> Result<Approval, StoreError> {
        let id = id.to_owned();
        let instance = self.instance().to_owned();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let a = load(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
            drop_claim(&tx, &id, &instance)?;
            if a.status != Status::Approved || a.uses == 0 {
                return Err(StoreError::InvalidState(format!("approval {id} is {} with {} uses", a.status, a.uses)));
            }
            tx.execute("UPDATE approvals SET uses = uses - 1 WHERE id = ?1", [&id])?;
            insert_transition(
                &tx,
                &id,
                now,
                Some(a.status),
                a.status,
                SYSTEM_ACTOR,
                None,
                Some("claim released: the caller left before the call was sent"),
            )?;
            let stored = load(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    /// Closes every approval whose deadline has passed, each with a transition by actor `"system"`, and
    /// returns the ones that became `Expired`:
    /// - pending with `expires_at <= now` → `Expired`;
    /// - approved single use, never claimed, with `expires_at <= now` → `Expired`;
    /// - approved grant whose window has ended unused → `Expired`;
    /// - approved grant whose window has ended after at least one run → `Executed`. Not returned: nothing
    ///   expired, and each run was already reported by [`Store::finish_execution`].
    ///
    /// Only rows that can lapse are read, by indexed deadlines, outside any write transaction; a short
    /// `BEGIN IMMEDIATE` transaction is opened only when something is due, so an idle sweep costs a few
    /// index lookups however many approvals wait to be used.
    pub async fn expire_due(&self, now: i64) -> Result<Vec<Approval>, StoreError> {
        self.call(move |conn| {
            let due = due_ids(conn, now)?;
            if due.is_empty() {
                return Ok(Vec::new());
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut closed = Vec::new();
            for id in due {
                // Read again under the write lock: another process may have closed or used it.
                let Some(a) = load(&tx, &id)? else { continue };
                if close_if_lapsed(&tx, &a, now)? == Some(Status::Expired) {
                    closed.push(load(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?);
                }
            }
            tx.commit()?;
            Ok(closed)
        })
        .await
    }

    /// Settles the claims of processes that stopped without finishing them, so that no request stays
    /// `approved` and used forever: a process is taken as stopped when its heartbeat is older than
    /// [`STALE_AFTER`](super::STALE_AFTER), or when it ran on this host and its pid is no longer alive (a crash, `kill -9`).
    /// A single-use request becomes `Failed` with the outcome `{"error": ORPHANED}`; a grant records the
    /// run as failed and stays approved. Returns the settled requests (as stored after), for the audit.
    ///
    /// Costs one read of the (small) instance table when nothing has stopped.
    pub async fn settle_orphaned_claims(&self, now: i64) -> Result<Vec<Approval>, StoreError> {
        let me = self.instance().to_owned();
        self.call(move |conn| {
            let stopped = stopped_instances(conn, &me, now)?;
            if stopped.is_empty() {
                return Ok(Vec::new());
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut settled = Vec::new();
            let outcome = serde_json::to_string(&serde_json::json!({ "error": ORPHANED }))?;
            for instance in stopped {
                let claims: Vec<(i64, String)> = tx
                    .prepare_cached("SELECT id, approval_id FROM claims WHERE instance = ?1 ORDER BY id")?
                    .query_map([&instance], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                for (claim, id) in claims {
                    tx.execute("DELETE FROM claims WHERE id = ?1", [claim])?;
                    let Some(a) = load(&tx, &id)? else { continue };
                    if a.uses == 0 {
                        continue;
                    }
                    if a.grant_secs == 0 {
                        if a.status != Status::Approved {
                            continue;
                        }
                        tx.execute(
                            "UPDATE approvals SET status = 'failed', executed_at = ?2, outcome = ?3 WHERE id = ?1",
                            params![id, now, outcome],
                        )?;
                        insert_transition(
                            &tx,
                            &id,
                            now,
                            Some(a.status),
                            Status::Failed,
                            SYSTEM_ACTOR,
                            None,
                            Some(ORPHANED),
                        )?;
                    } else {
                        tx.execute(
                            "UPDATE approvals SET executed_at = ?2, outcome = ?3 WHERE id = ?1",
                            params![id, now, outcome],
                        )?;
                        insert_transition(
                            &tx,
                            &id,
                            now,
                            Some(a.status),
                            Status::Failed,
                            SYSTEM_ACTOR,
                            Some("grant use"),
                            Some(ORPHANED),
                        )?;
                    }
                    settled.push(load(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?);
                }
                tx.execute("DELETE FROM instances WHERE id = ?1", [&instance])?;
            }
            tx.commit()?;
            Ok(settled)
        })
        .await
    }

    /// Pending requests within `warning_ms` of their deadline, or past half their life if that comes
    /// later (so a short-lived request is not announced as expiring the moment it is made).
    pub async fn pending_expiring(&self, now: i64, warning_ms: i64) -> Result<Vec<Approval>, StoreError> {
        self.call(move |conn| {
            let sql = format!(
                "SELECT {COLS} FROM approvals WHERE status = 'pending' AND expires_at > ?1 AND expires_at <= ?1 + ?2
                 AND expires_at - min(?2, (expires_at - created_at) / 2) <= ?1
                 ORDER BY expires_at"
            );
            let rows = conn
                .prepare_cached(&sql)?
                .query_map(params![now, warning_ms], row_to_approval)?
                .collect::<Result<Vec<_>, _>>()?;
            with_votes(conn, rows)
        })
        .await
    }

    /// Every state change of an approval, oldest first (empty if there is no such approval).
    pub async fn transitions(&self, id: &str) -> Result<Vec<Transition>, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT at, from_status, to_status, actor, notes, reason FROM approval_transitions
                     WHERE approval_id = ?1 ORDER BY id",
                )?
                .query_map([id], |r| {
                    Ok(Transition {
                        at: r.get(0)?,
                        from: r.get(1)?,
                        to: r.get(2)?,
                        actor: r.get(3)?,
                        notes: r.get(4)?,
                        reason: r.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

/// Grant windows are stored in seconds and compared in milliseconds; this keeps `grant_secs * 1000` an i64.
const MAX_GRANT_SECS: u64 = (i64::MAX / 1000) as u64;

fn grant_ms(grant_secs: u64) -> i64 {
    i64::try_from(grant_secs.min(MAX_GRANT_SECS)).unwrap_or(i64::MAX / 1000).saturating_mul(1000)
}

const COLS: &str = "id, key, server, tool, arguments, agent, risk, rule, rule_reason, workflow, required_approvals, \
                    grant_secs, trace, created_at, expires_at, status, decided_at, decided_by, deny_reason, notes, \
                    uses, executed_at, outcome, tool_info";

fn json_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Value> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

fn row_to_approval(row: &Row<'_>) -> rusqlite::Result<Approval> {
    let grant_secs: i64 = row.get(11)?;
    let outcome: Option<String> = row.get(22)?;
    let request = ApprovalRequest {
        id: row.get(0)?,
        key: row.get(1)?,
        server: row.get(2)?,
        tool: row.get(3)?,
        arguments: json_col(row, 4)?,
        agent: row.get(5)?,
        risk: row.get(6)?,
        rule: row.get(7)?,
        rule_reason: row.get(8)?,
        workflow: row.get(9)?,
        required_approvals: row.get(10)?,
        grant_secs: u64::try_from(grant_secs)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(11, Type::Integer, Box::new(e)))?,
        trace: json_col(row, 12)?,
        created_at: row.get(13)?,
        expires_at: row.get(14)?,
        tool_info: match row.get::<_, Option<String>>(23)? {
            Some(text) => serde_json::from_str(&text).ok(),
            None => None,
        },
    };
    Ok(Approval {
        request,
        status: row.get(15)?,
        votes: Vec::new(),
        decided_at: row.get(16)?,
        decided_by: row.get(17)?,
        deny_reason: row.get(18)?,
        notes: row.get(19)?,
        uses: row.get(20)?,
        executed_at: row.get(21)?,
        outcome: match outcome {
            Some(text) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| rusqlite::Error::FromSqlConversionFailure(22, Type::Text, Box::new(e)))?,
            ),
            None => None,
        },
    })
}

/// Fills in the votes of `approvals` with one query.
fn with_votes(conn: &Connection, mut approvals: Vec<Approval>) -> Result<Vec<Approval>, StoreError> {
    if approvals.is_empty() {
        return Ok(approvals);
    }
    let ids = serde_json::to_string(&approvals.iter().map(|a| a.id.as_str()).collect::<Vec<_>>())?;
    let mut stmt = conn.prepare_cached(
        "SELECT approval_id, actor, decision, notes, reason, at FROM approval_votes
         WHERE approval_id IN (SELECT value FROM json_each(?1))
         ORDER BY approval_id, at, actor",
    )?;
    let mut by_id: HashMap<String, Vec<VoteRecord>> = HashMap::new();
    let rows = stmt.query_map([ids], |r| {
        Ok((
            r.get::<_, String>(0)?,
            VoteRecord { actor: r.get(1)?, decision: r.get(2)?, notes: r.get(3)?, reason: r.get(4)?, at: r.get(5)? },
        ))
    })?;
    for row in rows {
        let (id, vote) = row?;
        by_id.entry(id).or_default().push(vote);
    }
    for a in &mut approvals {
        if let Some(votes) = by_id.remove(&a.id) {
            a.votes = votes;
        }
    }
    Ok(approvals)
}

/// The outcome recorded for a call whose process stopped between its claim and its finish.
pub const ORPHANED: &str = "the process running it stopped; outcome unknown";

/// The ids of rows whose deadline has passed, by index: pending by `expires_at`, unused single-use
/// approvals by `expires_at`, grants by the end of their window.
fn due_ids(conn: &Connection, now: i64) -> Result<Vec<String>, StoreError> {
    let ids = conn.prepare_cached(DUE_SQL)?.query_map([now], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
    Ok(ids)
}

/// `INDEXED BY`: without statistics the planner would rather walk every approved row by status.
pub(crate) const DUE_SQL: &str = "SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= ?1
     UNION ALL
     SELECT id FROM approvals INDEXED BY approvals_unused_expires
         WHERE status = 'approved' AND grant_secs = 0 AND uses = 0 AND expires_at <= ?1
     UNION ALL
     SELECT id FROM approvals INDEXED BY approvals_grant_ends
         WHERE status = 'approved' AND grant_secs > 0 AND coalesce(decided_at, created_at) + grant_secs * 1000 <= ?1";

/// Instances other than `me` that have stopped: a heartbeat older than [`STALE_AFTER`](super::STALE_AFTER), or a dead
/// process on this host.
fn stopped_instances(conn: &Connection, me: &str, now: i64) -> Result<Vec<String>, StoreError> {
    let stale = now.saturating_sub(i64::try_from(super::STALE_AFTER.as_millis()).unwrap_or(i64::MAX));
    let host = super::host_name();
    let rows: Vec<(String, String, i64, i64)> = conn
        .prepare_cached("SELECT id, host, pid, heartbeat_at FROM instances WHERE id != ?1")?
        .query_map([me], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .filter(|(_, h, pid, beat)| *beat < stale || (*h == host && !process_alive(*pid)))
        .map(|(id, ..)| id)
        .collect())
}

/// Whether a process with this pid exists on this host.
fn process_alive(pid: i64) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = i32::try_from(pid) else { return false };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            Ok(()) => true,
            Err(nix::errno::Errno::ESRCH) => false,
            // EPERM: it exists, under another user.
            Err(_) => true,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes one claim of `id` made by `instance` (its run finished or was given back).
fn drop_claim(conn: &Connection, id: &str, instance: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "DELETE FROM claims WHERE id = (SELECT id FROM claims WHERE approval_id = ?1 AND instance = ?2
         ORDER BY id LIMIT 1)",
    )?
    .execute(params![id, instance])?;
    Ok(())
}

/// Closes the open requests of `key` whose deadline has passed; returns those that expired.
fn close_lapsed_of_key(tx: &Connection, key: &str, now: i64) -> Result<Vec<Approval>, StoreError> {
    let mut expired = Vec::new();
    let open: Vec<String> = tx
        .prepare_cached("SELECT id FROM approvals WHERE key = ?1 AND status IN ('pending', 'approved')")?
        .query_map([key], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in open {
        let Some(a) = load(tx, &id)? else { continue };
        if close_if_lapsed(tx, &a, now)? == Some(Status::Expired) {
            expired.push(load(tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?);
        }
    }
    Ok(expired)
}

/// Stores `a` as pending, with its creation transition.
fn insert_tx(conn: &Connection, a: &ApprovalRequest) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT INTO approvals (id, key, server, tool, arguments, agent, risk, rule, rule_reason, workflow,
             required_approvals, grant_secs, trace, created_at, expires_at, status, tool_info)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 'pending', ?16)",
        params![
            a.id,
            a.key,
            a.server,
            a.tool,
            serde_json::to_string(&a.arguments)?,
            a.agent,
            a.risk,
            a.rule,
            a.rule_reason,
            a.workflow,
            a.required_approvals,
            i64::try_from(a.grant_secs.min(MAX_GRANT_SECS)).unwrap_or(i64::MAX),
            serde_json::to_string(&a.trace)?,
            a.created_at,
            a.expires_at,
            a.tool_info.as_ref().map(serde_json::to_string).transpose()?,
        ],
    );
    match inserted {
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
            return Err(StoreError::AlreadyExists(a.id.clone()));
        }
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE => {
            let exists: bool = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM approvals WHERE id = ?1)")?
                .query_row([&a.id], |r| r.get(0))?;
            if exists {
                return Err(StoreError::AlreadyExists(a.id.clone()));
            }
            return Err(StoreError::InvalidState(format!("a request for call key {} is already pending", a.key)));
        }
        other => other?,
    };
    let actor = a.agent.as_deref().unwrap_or("agent");
    insert_transition(conn, &a.id, a.created_at, None, Status::Pending, actor, None, a.rule_reason.as_deref())
}

/// See [`Store::find_reusable`].
fn reusable_tx(conn: &Connection, key: &str, now: i64) -> Result<Option<Approval>, StoreError> {
    let sql = format!(
        "SELECT {COLS} FROM approvals
         WHERE key = ?1 AND (
             (status = 'pending' AND expires_at > ?2)
             OR (status = 'approved' AND grant_secs = 0 AND uses = 0 AND expires_at > ?2)
             OR (status = 'approved' AND grant_secs > 0
                 AND coalesce(decided_at, created_at) + grant_secs * 1000 > ?2))
         ORDER BY created_at DESC, rowid DESC
         LIMIT 1"
    );
    let found = conn.prepare_cached(&sql)?.query_row(params![key, now], row_to_approval).optional()?;
    with_votes(conn, found.into_iter().collect()).map(|mut v| v.pop())
}

/// See [`Store::find_standing`]: reusable, or else a denial that stands until the request would have
/// expired.
fn standing_tx(conn: &Connection, key: &str, now: i64) -> Result<Option<Approval>, StoreError> {
    if let Some(a) = reusable_tx(conn, key, now)? {
        return Ok(Some(a));
    }
    let denied = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM approvals WHERE key = ?1 AND status = 'denied' AND expires_at > ?2
             ORDER BY created_at DESC, rowid DESC LIMIT 1"
        ))?
        .query_row(params![key, now], row_to_approval)
        .optional()?;
    with_votes(conn, denied.into_iter().collect()).map(|mut v| v.pop())
}

fn load(conn: &Connection, id: &str) -> Result<Option<Approval>, StoreError> {
    let found = conn
        .prepare_cached(&format!("SELECT {COLS} FROM approvals WHERE id = ?1"))?
        .query_row([id], row_to_approval)
        .optional()?;
    with_votes(conn, found.into_iter().collect()).map(|mut v| v.pop())
}

#[allow(clippy::too_many_arguments)]
fn insert_transition(
    conn: &Connection,
    id: &str,
    at: i64,
    from: Option<Status>,
    to: Status,
    actor: &str,
    notes: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO approval_transitions (approval_id, at, from_status, to_status, actor, notes, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![id, at, from, to, actor, notes, reason])?;
    Ok(())
}

/// Moves `a` to `to` with its transition row.
fn move_to(conn: &Connection, a: &Approval, to: Status, at: i64, actor: &str, reason: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE approvals SET status = ?2 WHERE id = ?1")?.execute(params![a.id, to])?;
    insert_transition(conn, &a.id, at, Some(a.status), to, actor, None, Some(reason))
}

/// If `a` is past its deadline, closes it (see [`Store::expire_due`]) and returns the new status.
fn close_if_lapsed(conn: &Connection, a: &Approval, now: i64) -> Result<Option<Status>, StoreError> {
    let (to, reason) = match a.status {
        Status::Pending if a.expires_at <= now => (Status::Expired, "no decision before the deadline"),
        Status::Approved if a.grant_secs == 0 && a.uses == 0 && a.expires_at <= now => {
            (Status::Expired, "approved but not used before the deadline")
        }
        Status::Approved if a.grant_secs > 0 && grant_end(a) <= now => {
            if a.uses > 0 {
                (Status::Executed, "grant window ended")
            } else {
                (Status::Expired, "grant window ended unused")
            }
        }
        _ => return Ok(None),
    };
    move_to(conn, a, to, now, SYSTEM_ACTOR, reason)?;
    Ok(Some(to))
}

fn grant_end(a: &Approval) -> i64 {
    a.decided_at.unwrap_or(a.created_at).saturating_add(grant_ms(a.grant_secs))
}

fn vote_tx(conn: &mut Connection, id: &str, vote: Vote, required: u32, now: i64) -> Result<Approval, TransitionError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match vote_in(&tx, id, vote, required, now) {
        Ok(stored) => {
            tx.commit()?;
            Ok(stored)
        }
        // The expiry is committed.
        Err(TransitionError::Expired) => {
            tx.commit()?;
            Err(TransitionError::Expired)
        }
        Err(e) => Err(e),
    }
}

/// The vote of [`Store::record_vote`], inside the caller's transaction.
fn vote_in(tx: &Connection, id: &str, vote: Vote, required: u32, now: i64) -> Result<Approval, TransitionError> {
    let a = load(tx, id)?.ok_or_else(|| TransitionError::NotFound(id.to_owned()))?;
    if a.status != Status::Pending {
        return Err(TransitionError::NotPending { status: a.status });
    }
    if close_if_lapsed(tx, &a, now)?.is_some() {
        return Err(TransitionError::Expired);
    }
    let same_credential: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM approval_votes WHERE approval_id = ?1 AND credential = ?2)")?
        .query_row(params![id, vote.credential], |r| r.get(0))?;
    if same_credential || a.votes.iter().any(|v| v.actor == vote.actor) {
        return Err(TransitionError::AlreadyVoted { actor: vote.actor });
    }
    tx.prepare_cached(
        "INSERT INTO approval_votes (approval_id, actor, decision, notes, reason, at, credential)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![id, vote.actor, vote.decision.as_str(), vote.notes, vote.reason, now, vote.credential])?;

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

fn claim_tx(conn: &mut Connection, id: &str, now: i64, instance: &str) -> Result<Claim, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let a = load(&tx, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
    let claim = match close_if_lapsed(&tx, &a, now)?.unwrap_or(a.status) {
        Status::Pending => Claim::Pending,
        Status::Denied => Claim::Denied {
            by: a.decided_by.clone().unwrap_or_else(|| SYSTEM_ACTOR.to_owned()),
            reason: a.deny_reason.clone(),
        },
        Status::Expired => Claim::Expired,
        Status::Executed | Status::Failed => Claim::Spent,
        Status::Approved if a.grant_secs == 0 && a.uses > 0 => Claim::Spent,
        Status::Approved => {
            // Not lapsed: a single use not yet claimed, or a grant inside its window.
            tx.prepare_cached("UPDATE approvals SET uses = uses + 1 WHERE id = ?1")?.execute([id])?;
            tx.prepare_cached("INSERT INTO claims (approval_id, instance, at) VALUES (?1, ?2, ?3)")?
                .execute(params![id, instance, now])?;
            Claim::Run
        }
    };
    tx.commit()?;
    Ok(claim)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::store::Location;
    use crate::store::testutil::TempDir;

    const T0: i64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    fn new(id: &str, key: &str) -> ApprovalRequest {
        ApprovalRequest {
            id: id.into(),
            key: key.into(),
            server: "fs".into(),
            tool: "delete_file".into(),
            arguments: json!({"path": "/tmp/x", "opts": {"force": true}}),
            agent: Some("claude".into()),
            risk: Some("high".into()),
            rule: Some("deletes".into()),
            rule_reason: Some("deleting files needs a human".into()),
            workflow: "default".into(),
            required_approvals: 1,
            grant_secs: 0,
            trace: json!([{"rule": "deletes", "result": "escalate"}]),
            created_at: T0,
            expires_at: T0 + HOUR,
            tool_info: Some(json!({"description": "Deletes a file", "annotations": {"destructiveHint": true}})),
        }
    }

    fn approve(actor: &str) -> Vote {
        Vote {
            actor: actor.into(),
            credential: actor.into(),
            decision: VoteDecision::Approve,
            notes: Some(format!("ok from {actor}")),
            reason: None,
        }
    }

    fn deny(actor: &str, reason: &str) -> Vote {
        Vote {
            actor: actor.into(),
            credential: actor.into(),
            decision: VoteDecision::Deny,
            notes: Some("code freeze".into()),
            reason: Some(reason.into()),
        }
    }

    async fn mem() -> Store {
        Store::open(Location::Memory).await.unwrap()
    }

    #[tokio::test]
    async fn expiring_means_within_the_warning_or_past_half_its_life() {
        const MIN: i64 = 60_000;
        let store = mem().await;
        // Lives an hour (T0 .. T0 + 60 min); a 10-minute warning starts at T0 + 50 min.
        store.insert_approval(new("hour", "k1")).await.unwrap();
        // Lives 10 minutes: the warning starts half-way, at T0 + 5 min, not at once.
        store.insert_approval(ApprovalRequest { expires_at: T0 + 10 * MIN, ..new("short", "k2") }).await.unwrap();
        let due = |now: i64| {
            let store = store.clone();
            async move {
                let ids: Vec<String> =
                    store.pending_expiring(now, 10 * MIN).await.unwrap().into_iter().map(|a| a.request.id).collect();
                ids
            }
        };
        assert!(due(T0).await.is_empty(), "nothing at creation");
        assert!(due(T0 + 4 * MIN).await.is_empty());
        assert_eq!(due(T0 + 5 * MIN).await, ["short"]);
        assert_eq!(due(T0 + 50 * MIN).await, ["hour"], "the short one has expired by then");
        store.record_vote("hour", approve("alice"), 1, T0 + 51 * MIN).await.unwrap();
        assert!(due(T0 + 55 * MIN).await.is_empty(), "only pending requests");
    }

    #[tokio::test]
    async fn insert_get_and_json_shape() {
        let store = mem().await;
        let a = store.insert_approval(new("a1", "k1")).await.unwrap();
        assert_eq!(a.status, Status::Pending);
        assert_eq!(a.arguments, json!({"path": "/tmp/x", "opts": {"force": true}}));
        assert_eq!(store.get_approval("a1").await.unwrap(), Some(a.clone()));
        assert_eq!(store.get_approval("nope").await.unwrap(), None);
        assert!(
            matches!(store.insert_approval(new("a1", "k1")).await, Err(StoreError::AlreadyExists(id)) if id == "a1")
        );

        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["status"], "pending");
        assert_eq!(v["rule_reason"], "deleting files needs a human");
        assert_eq!(v["required_approvals"], 1);
        assert!(v["votes"].as_array().unwrap().is_empty());

        let t = store.transitions("a1").await.unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].from, t[0].to, t[0].actor.as_str()), (None, Status::Pending, "claude"));

        assert_eq!("executed".parse::<Status>(), Ok(Status::Executed));
        assert!("bogus".parse::<Status>().is_err());
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
    }

    #[tokio::test]
    async fn pending_approvals_survive_a_reopen() {
        let dir = TempDir::new("store-durable");
        let loc = Location::File(dir.path().join("gate.db"));
        let store = Store::open(loc.clone()).await.unwrap();
        for i in 0..3 {
            store.insert_approval(new(&format!("p{i}"), &format!("k{i}"))).await.unwrap();
        }
        store.record_vote("p0", approve("alice"), 2, T0 + 1).await.unwrap();
        drop(store);

        let store = Store::open(loc).await.unwrap();
        let pending =
            store.list_approvals(ApprovalFilter { status: Some(Status::Pending), ..Default::default() }).await.unwrap();
        assert_eq!(pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["p2", "p1", "p0"]);
        assert_eq!(pending[2].votes.len(), 1);
        assert_eq!(pending[2].votes[0].actor, "alice");
    }

    #[tokio::test]
    async fn two_distinct_approvers_are_required() {
        let store = mem().await;
        store.insert_approval(ApprovalRequest { required_approvals: 2, ..new("a", "k") }).await.unwrap();

        let a = store.record_vote("a", approve("alice"), 2, T0 + 10).await.unwrap();
        assert_eq!(a.status, Status::Pending);
        assert_eq!(a.votes.len(), 1);

        let again = store.record_vote("a", approve("alice"), 2, T0 + 11).await;
        assert!(matches!(again, Err(TransitionError::AlreadyVoted { ref actor }) if actor == "alice"), "{again:?}");

        let a = store.record_vote("a", approve("bob"), 2, T0 + 20).await.unwrap();
        assert_eq!(a.status, Status::Approved);
        assert_eq!(a.decided_at, Some(T0 + 20));
        assert_eq!(a.decided_by.as_deref(), Some("bob"));
        assert_eq!(a.notes.as_deref(), Some("ok from bob"));
        assert_eq!(
            a.votes.iter().map(|v| (v.actor.as_str(), v.at)).collect::<Vec<_>>(),
            [("alice", T0 + 10), ("bob", T0 + 20)]
        );

        let late = store.record_vote("a", approve("carol"), 2, T0 + 30).await;
        assert!(matches!(late, Err(TransitionError::NotPending { status: Status::Approved })), "{late:?}");

        let t = store.transitions("a").await.unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[1].from, t[1].to, t[1].actor.as_str(), t[1].at),
            (Some(Status::Pending), Status::Approved, "bob", T0 + 20)
        );

        let missing = store.record_vote("nope", approve("alice"), 1, T0).await;
        assert!(matches!(missing, Err(TransitionError::NotFound(_))), "{missing:?}");
    }

    #[tokio::test]
    async fn one_deny_vote_denies() {
        let store = mem().await;
        store.insert_approval(ApprovalRequest { required_approvals: 2, ..new("a", "k") }).await.unwrap();
        store.record_vote("a", approve("alice"), 2, T0 + 1).await.unwrap();
        let a = store.record_vote("a", deny("bob", "Not approved during code freeze"), 2, T0 + 2).await.unwrap();
        assert_eq!(a.status, Status::Denied);
        assert_eq!(a.deny_reason.as_deref(), Some("Not approved during code freeze"));
        assert_eq!(a.notes.as_deref(), Some("code freeze"));
        assert_eq!(a.decided_by.as_deref(), Some("bob"));

        let t = store.transitions("a").await.unwrap();
        let last = t.last().unwrap();
        assert_eq!(last.to, Status::Denied);
        assert_eq!(last.reason.as_deref(), Some("Not approved during code freeze"));
        assert_eq!(last.notes.as_deref(), Some("code freeze"));

        assert_eq!(
            store.claim_execution("a", T0 + 3).await.unwrap(),
            Claim::Denied { by: "bob".into(), reason: Some("Not approved during code freeze".into()) }
        );
        assert!(store.find_reusable("k", T0 + 3).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn expiry_by_sweep_and_by_late_vote() {
        let store = mem().await;
        store.insert_approval(new("swept", "k1")).await.unwrap();
        store.insert_approval(ApprovalRequest { expires_at: T0 + 2 * HOUR, ..new("later", "k2") }).await.unwrap();
        store.insert_approval(ApprovalRequest { required_approvals: 2, ..new("half-voted", "k3") }).await.unwrap();
        store.record_vote("half-voted", approve("alice"), 2, T0 + 1).await.unwrap();

        assert!(store.expire_due(T0 + HOUR - 1).await.unwrap().is_empty());
        let mut expired = store.expire_due(T0 + HOUR).await.unwrap();
        expired.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            expired.iter().map(|a| (a.id.as_str(), a.status)).collect::<Vec<_>>(),
            [("half-voted", Status::Expired), ("swept", Status::Expired)]
        );
        let t = store.transitions("swept").await.unwrap();
        assert_eq!((t[1].from, t[1].to, t[1].actor.as_str()), (Some(Status::Pending), Status::Expired, "system"));
        assert_eq!(store.get_approval("later").await.unwrap().unwrap().status, Status::Pending);
        assert!(store.expire_due(T0 + HOUR).await.unwrap().is_empty(), "a second sweep finds nothing");

        // A vote after the deadline expires the approval instead (and that is committed).
        let r = store.record_vote("later", approve("alice"), 1, T0 + 2 * HOUR).await;
        assert!(matches!(r, Err(TransitionError::Expired)), "{r:?}");
        let a = store.get_approval("later").await.unwrap().unwrap();
        assert_eq!(a.status, Status::Expired);
        assert!(a.votes.is_empty(), "the late vote is not recorded");
        assert_eq!(store.transitions("later").await.unwrap().last().unwrap().to, Status::Expired);
        assert_eq!(store.claim_execution("later", T0 + 3 * HOUR).await.unwrap(), Claim::Expired);
    }

    #[tokio::test]
    async fn claim_and_finish_single_use() {
        let store = mem().await;
        store.insert_approval(new("a", "k")).await.unwrap();
        assert_eq!(store.claim_execution("a", T0 + 1).await.unwrap(), Claim::Pending);
        assert!(matches!(store.finish_execution("a", true, json!({}), T0 + 1).await, Err(StoreError::InvalidState(_))));
        store.record_vote("a", approve("alice"), 1, T0 + 2).await.unwrap();
        assert_eq!(store.claim_execution("a", T0 + 3).await.unwrap(), Claim::Run);
        assert_eq!(store.claim_execution("a", T0 + 4).await.unwrap(), Claim::Spent);
        let sync: i64 = store.call(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(sync, 1, "synchronous is back to NORMAL after a claim");
        let a = store.finish_execution("a", false, json!({"error": "disk full"}), T0 + 5).await.unwrap();
        assert_eq!(a.status, Status::Failed);
        assert_eq!(a.executed_at, Some(T0 + 5));
        assert_eq!(a.outcome, Some(json!({"error": "disk full"})));
        assert_eq!(a.uses, 1);
        assert_eq!(store.claim_execution("a", T0 + 6).await.unwrap(), Claim::Spent);
        assert!(matches!(store.finish_execution("a", true, json!({}), T0 + 7).await, Err(StoreError::InvalidState(_))));
        let t = store.transitions("a").await.unwrap();
        assert_eq!(t.iter().map(|t| t.to).collect::<Vec<_>>(), [Status::Pending, Status::Approved, Status::Failed]);
        assert!(matches!(store.claim_execution("nope", T0).await, Err(StoreError::NotFound(_))));

        // Approved but never claimed before the deadline: expired, by a claim or by the sweep.
        store.insert_approval(new("b", "kb")).await.unwrap();
        store.insert_approval(new("c", "kc")).await.unwrap();
        store.record_vote("b", approve("alice"), 1, T0 + 1).await.unwrap();
        store.record_vote("c", approve("alice"), 1, T0 + 1).await.unwrap();
        assert_eq!(store.claim_execution("b", T0 + HOUR).await.unwrap(), Claim::Expired);
        assert_eq!(store.get_approval("b").await.unwrap().unwrap().status, Status::Expired);
        let swept = store.expire_due(T0 + HOUR).await.unwrap();
        assert_eq!(swept.iter().map(|a| (a.id.as_str(), a.status)).collect::<Vec<_>>(), [("c", Status::Expired)]);
    }

    #[tokio::test]
    async fn exactly_one_run_under_16_concurrent_claims() {
        // One handle: requests serialize on the worker.
        let store = mem().await;
        store.insert_approval(new("a", "k")).await.unwrap();
        store.record_vote("a", approve("alice"), 1, T0 + 1).await.unwrap();
        let claims = futures::future::join_all((0..16).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_execution("a", T0 + 2).await.unwrap() })
        }))
        .await;
        let runs = claims.iter().filter(|c| matches!(c, Ok(Claim::Run))).count();
        assert_eq!(runs, 1, "{claims:?}");

        // 16 handles = 16 connections to one file, as if 16 processes: BEGIN IMMEDIATE does the work.
        let dir = TempDir::new("store-claims");
        let loc = Location::File(dir.path().join("gate.db"));
        let first = Store::open(loc.clone()).await.unwrap();
        first.insert_approval(new("b", "k")).await.unwrap();
        first.record_vote("b", approve("alice"), 1, T0 + 1).await.unwrap();
        let mut handles = vec![first];
        for _ in 1..16 {
            handles.push(Store::open(loc.clone()).await.unwrap());
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(16));
        let claims = futures::future::join_all(handles.into_iter().map(|store| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.claim_execution("b", T0 + 2).await.unwrap()
            })
        }))
        .await;
        let runs = claims.iter().filter(|c| matches!(c, Ok(Claim::Run))).count();
        assert_eq!(runs, 1, "{claims:?}");
        assert_eq!(claims.iter().filter(|c| matches!(c, Ok(Claim::Spent))).count(), 15);
    }

    #[tokio::test]
    async fn an_idle_sweep_reads_only_what_is_due_and_opens_no_write_transaction() {
        let dir = TempDir::new("store-sweep");
        let path = dir.path().join("gate.db");
        let store = Store::open(Location::File(path.clone())).await.unwrap();
        for i in 0..50 {
            let grant = if i % 5 == 0 { 7200 } else { 0 };
            store
                .insert_approval(ApprovalRequest { grant_secs: grant, ..new(&format!("a{i}"), &format!("k{i}")) })
                .await
                .unwrap();
            store.record_vote(&format!("a{i}"), approve("alice"), 1, T0 + 1).await.unwrap();
        }
        // Another process holds the write lock: a sweep with nothing due must not wait for it.
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let swept = store.expire_due(T0 + 2).await;
        other.execute_batch("ROLLBACK").unwrap();
        assert!(swept.unwrap().is_empty());

        let plan: Vec<String> = store
            .call(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {DUE_SQL}"))?;
                let rows = stmt.query_map([T0], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        for index in ["approvals_status_expires", "approvals_unused_expires", "approvals_grant_ends"] {
            assert!(plan.iter().any(|p| p.contains(index)), "{index} not used: {plan:?}");
        }
        assert!(!plan.iter().any(|p| p.starts_with("SCAN")), "no scan: {plan:?}");

        // Due rows are still closed.
        assert_eq!(store.expire_due(T0 + HOUR).await.unwrap().len(), 40);
        assert_eq!(store.expire_due(T0 + 7_200_001).await.unwrap().len(), 10);
    }

    #[tokio::test]
    async fn open_request_joins_what_stands_and_closes_what_lapsed() {
        let store = mem().await;
        let first = store.open_request(new("a", "k"), T0).await.unwrap();
        assert!(!first.joined);
        let again = store.open_request(new("b", "k"), T0 + 1).await.unwrap();
        assert_eq!((again.approval.id.as_str(), again.joined), ("a", true));
        assert!(store.get_approval("b").await.unwrap().is_none());
        // A denial stands for the retry until the request would have expired.
        store.record_vote("a", deny("bob", "no"), 1, T0 + 2).await.unwrap();
        let denied = store.open_request(new("c", "k"), T0 + 3).await.unwrap();
        assert_eq!((denied.approval.id.as_str(), denied.approval.status), ("a", Status::Denied));
        // Past its deadline a pending request is closed on the way, and a new one opened.
        let other = store.open_request(new("d", "k2"), T0).await.unwrap();
        assert!(!other.joined);
        let later = store.open_request(new("e", "k2"), T0 + HOUR).await.unwrap();
        assert_eq!((later.approval.id.as_str(), later.joined), ("e", false));
        assert_eq!(later.expired.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["d"]);
        // The unique index refuses a second pending row for a key, however it is written.
        let r = store.insert_approval(new("f", "k2")).await;
        assert!(matches!(r, Err(StoreError::InvalidState(_))), "{r:?}");
    }

    #[tokio::test]
    async fn claims_of_a_stopped_process_are_settled_as_failed() {
        let dir = TempDir::new("store-orphans");
        let loc = Location::File(dir.path().join("gate.db"));
        let crashed = Store::open(loc.clone()).await.unwrap();
        let survivor = Store::open(loc).await.unwrap();
        crashed.insert_approval(new("once", "k1")).await.unwrap();
        crashed.record_vote("once", approve("alice"), 1, T0 + 1).await.unwrap();
        crashed.insert_approval(ApprovalRequest { grant_secs: 600, ..new("grant", "k2") }).await.unwrap();
        crashed.record_vote("grant", approve("alice"), 1, T0 + 1).await.unwrap();
        crashed.insert_approval(new("mine", "k3")).await.unwrap();
        crashed.record_vote("mine", approve("alice"), 1, T0 + 1).await.unwrap();
        assert_eq!(crashed.claim_execution("once", T0 + 2).await.unwrap(), Claim::Run);
        assert_eq!(crashed.claim_execution("grant", T0 + 2).await.unwrap(), Claim::Run);
        assert_eq!(survivor.claim_execution("mine", T0 + 2).await.unwrap(), Claim::Run);

        // Alive: nothing to settle.
        assert!(survivor.settle_orphaned_claims(survivor.now_ms()).await.unwrap().is_empty());
        // Its heartbeat stops (as if the process had died on another host).
        let me = crashed.instance().to_owned();
        survivor
            .call(move |c| {
                Ok(c.execute("UPDATE instances SET heartbeat_at = 0, host = 'elsewhere' WHERE id = ?1", [me])?)
            })
            .await
            .unwrap();
        let settled = survivor.settle_orphaned_claims(survivor.now_ms()).await.unwrap();
        let mut got: Vec<_> = settled.iter().map(|a| (a.id.as_str(), a.status)).collect();
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(got, [("grant", Status::Approved), ("once", Status::Failed)]);
        let once = survivor.get_approval("once").await.unwrap().unwrap();
        assert_eq!(once.outcome, Some(json!({"error": ORPHANED})));
        let last = survivor.transitions("once").await.unwrap().pop().unwrap();
        assert_eq!((last.to, last.reason.as_deref()), (Status::Failed, Some(ORPHANED)));
        let last = survivor.transitions("grant").await.unwrap().pop().unwrap();
        assert_eq!((last.to, last.notes.as_deref()), (Status::Failed, Some("grant use")));
        // The survivor's own claim is untouched and can be finished.
        assert!(survivor.settle_orphaned_claims(survivor.now_ms()).await.unwrap().is_empty());
        let mine = survivor.finish_execution("mine", true, json!({}), T0 + 3).await.unwrap();
        assert_eq!(mine.status, Status::Executed);
    }

    #[tokio::test]
    async fn a_deleted_or_replaced_file_fails_closed() {
        let dir = TempDir::new("store-replaced");
        let path = dir.path().join("gate.db");
        let store = Store::open(Location::File(path.clone())).await.unwrap();
        assert!(store.file_id().is_some());
        store.insert_approval(new("a", "k")).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        let r = store.insert_approval(new("b", "k2")).await;
        assert!(matches!(r, Err(StoreError::Replaced { how: "deleted", .. })), "{r:?}");
        // A new file at the path does not bring it back.
        let fresh = Store::open(Location::File(path.clone())).await.unwrap();
        assert_ne!(fresh.file_id(), store.file_id());
        let r = store.get_approval("a").await;
        assert!(matches!(r, Err(StoreError::Replaced { .. })), "{r:?}");
        assert!(fresh.insert_approval(new("c", "k3")).await.is_ok());
    }

    #[tokio::test]
    async fn grant_window_runs_until_it_ends() {
        let store = mem().await;
        store.insert_approval(ApprovalRequest { grant_secs: 60, ..new("g", "k") }).await.unwrap();
        let a = store.record_vote("g", approve("alice"), 1, T0 + 1_000).await.unwrap();
        assert_eq!(a.grant_ends_at(), Some(T0 + 61_000));

        for i in 0..3 {
            let now = T0 + 2_000 + i * 10_000;
            assert_eq!(store.claim_execution("g", now).await.unwrap(), Claim::Run);
            let a = store.finish_execution("g", i != 1, json!({"run": i}), now + 500).await.unwrap();
            assert_eq!(a.status, Status::Approved, "a grant stays approved while its window is open");
            assert_eq!(a.uses, u32::try_from(i + 1).unwrap());
        }
        // Still reusable inside the window, even past expires_at of the request.
        assert_eq!(store.find_reusable("k", T0 + 60_999).await.unwrap().map(|a| a.request.id), Some("g".into()));
        assert_eq!(store.claim_execution("g", T0 + 60_999).await.unwrap(), Claim::Run);
        assert!(store.find_reusable("k", T0 + 61_000).await.unwrap().is_none());
        assert_eq!(store.claim_execution("g", T0 + 61_000).await.unwrap(), Claim::Spent);
        let a = store.get_approval("g").await.unwrap().unwrap();
        assert_eq!((a.status, a.uses), (Status::Executed, 4));

        // The run claimed just before the end can still be finished.
        store.finish_execution("g", true, json!({"run": 3}), T0 + 61_500).await.unwrap();
        let t = store.transitions("g").await.unwrap();
        let runs: Vec<_> = t.iter().filter(|t| t.notes.as_deref() == Some("grant use")).map(|t| t.to).collect();
        assert_eq!(runs, [Status::Executed, Status::Failed, Status::Executed, Status::Executed]);

        // When the window ends the sweep closes grants: an unused one expires (and is returned), a used one
        // becomes executed (not returned: nothing expired).
        store.insert_approval(ApprovalRequest { grant_secs: 60, ..new("unused", "k2") }).await.unwrap();
        store.record_vote("unused", approve("alice"), 1, T0).await.unwrap();
        store.insert_approval(ApprovalRequest { grant_secs: 60, ..new("used", "k3") }).await.unwrap();
        store.record_vote("used", approve("alice"), 1, T0).await.unwrap();
        assert_eq!(store.claim_execution("used", T0 + 1).await.unwrap(), Claim::Run);
        store.finish_execution("used", true, json!({}), T0 + 2).await.unwrap();
        assert!(store.expire_due(T0 + 59_999).await.unwrap().is_empty());
        let swept = store.expire_due(T0 + 60_000).await.unwrap();
        assert_eq!(swept.iter().map(|a| (a.id.as_str(), a.status)).collect::<Vec<_>>(), [("unused", Status::Expired)]);
        let used = store.get_approval("used").await.unwrap().unwrap();
        assert_eq!((used.status, used.uses), (Status::Executed, 1));
        let last = store.transitions("used").await.unwrap().pop().unwrap();
        assert_eq!((last.from, last.to, last.actor.as_str()), (Some(Status::Approved), Status::Executed, "system"));
        assert!(store.expire_due(T0 + 120_000).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn find_reusable_picks_the_newest_usable() {
        let store = mem().await;
        assert!(store.find_reusable("k", T0).await.unwrap().is_none());
        // One pending request per key: the older one is approved (not yet used) before the newer is made.
        store.insert_approval(new("old", "k")).await.unwrap();
        store.record_vote("old", approve("alice"), 1, T0 + 1).await.unwrap();
        store.insert_approval(ApprovalRequest { created_at: T0 + 5, ..new("new", "k") }).await.unwrap();
        store.insert_approval(ApprovalRequest { created_at: T0 + 9, ..new("other", "k-other") }).await.unwrap();
        assert_eq!(store.find_reusable("k", T0 + 10).await.unwrap().map(|a| a.request.id), Some("new".into()));

        store.record_vote("new", deny("bob", "no"), 1, T0 + 11).await.unwrap();
        let found = store.find_reusable("k", T0 + 14).await.unwrap().unwrap();
        assert_eq!((found.id.as_str(), found.status, found.votes.len()), ("old", Status::Approved, 1));

        assert_eq!(store.claim_execution("old", T0 + 15).await.unwrap(), Claim::Run);
        assert!(store.find_reusable("k", T0 + 16).await.unwrap().is_none(), "a consumed single use is not reusable");

        // Past the deadline nothing is reusable, even before the sweep.
        store.insert_approval(new("late", "k3")).await.unwrap();
        assert!(store.find_reusable("k3", T0 + HOUR - 1).await.unwrap().is_some());
        assert!(store.find_reusable("k3", T0 + HOUR).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn list_filters_and_paging() {
        let store = mem().await;
        for i in 0..6 {
            let mut a = new(&format!("a{i}"), &format!("k{i}"));
            a.created_at = T0 + i;
            a.server = if i % 2 == 0 { "fs".into() } else { "git".into() };
            a.tool = if i < 3 { "delete_file".into() } else { "push".into() };
            a.agent = if i == 5 { None } else { Some("claude".into()) };
            store.insert_approval(a).await.unwrap();
        }
        store.record_vote("a4", approve("alice"), 1, T0 + 10).await.unwrap();

        let ids = |v: Vec<Approval>| v.into_iter().map(|a| a.request.id).collect::<Vec<_>>();
        let list = |f: ApprovalFilter| {
            let store = store.clone();
            async move { ids(store.list_approvals(f).await.unwrap()) }
        };
        assert_eq!(list(ApprovalFilter::default()).await, ["a5", "a4", "a3", "a2", "a1", "a0"]);
        assert_eq!(
            list(ApprovalFilter { status: Some(Status::Pending), ..Default::default() }).await,
            ["a5", "a3", "a2", "a1", "a0"]
        );
        assert_eq!(list(ApprovalFilter { status: Some(Status::Approved), ..Default::default() }).await, ["a4"]);
        assert_eq!(list(ApprovalFilter { server: Some("git".into()), ..Default::default() }).await, ["a5", "a3", "a1"]);
        assert_eq!(
            list(ApprovalFilter { server: Some("fs".into()), tool: Some("delete_file".into()), ..Default::default() })
                .await,
            ["a2", "a0"]
        );
        assert_eq!(
            list(ApprovalFilter { agent: Some("claude".into()), limit: Some(2), ..Default::default() }).await,
            ["a4", "a3"]
        );
        assert_eq!(
            list(ApprovalFilter { status: Some(Status::Pending), limit: Some(2), offset: 2, ..Default::default() })
                .await,
            ["a2", "a1"]
        );
        assert!(list(ApprovalFilter { offset: 100, ..Default::default() }).await.is_empty());
        assert_eq!(store.list_approvals(ApprovalFilter::default()).await.unwrap()[1].votes.len(), 1);
    }

    #[tokio::test]
    async fn list_10k_pending_is_fast() {
        let store = mem().await;
        let started = Instant::now();
        for i in 0..10_000 {
            let mut a = new(&format!("appr-{i:05}"), &format!("key-{i}"));
            a.created_at = T0 + i;
            store.insert_approval(a).await.unwrap();
        }
        // A few decided ones in between, so the status filter has work to do.
        for i in (0..10_000).step_by(1000) {
            store.record_vote(&format!("appr-{i:05}"), approve("alice"), 1, T0 + 20_000).await.unwrap();
        }
        let inserted = started.elapsed();

        let plan: Vec<String> = store
            .call(|c| {
                let mut stmt = c.prepare(&format!(
                    "EXPLAIN QUERY PLAN SELECT {COLS} FROM approvals WHERE status = ?1
                     ORDER BY created_at DESC, rowid DESC LIMIT ?2 OFFSET ?3"
                ))?;
                let rows = stmt.query_map(params!["pending", 100, 0], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert!(plan.iter().any(|p| p.contains("approvals_status_created")), "{plan:?}");
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "listing must not sort: {plan:?}");

        let pending = |limit, offset| ApprovalFilter {
            status: Some(Status::Pending),
            limit: Some(limit),
            offset,
            ..Default::default()
        };
        let t = Instant::now();
        let first = store.list_approvals(pending(DEFAULT_LIST_LIMIT, 0)).await.unwrap();
        let default_page = t.elapsed();
        assert_eq!(first.len(), 100);
        assert_eq!(first[0].id, "appr-09999");

        let t = Instant::now();
        let last = store.list_approvals(pending(MAX_LIST_LIMIT, 8_990)).await.unwrap();
        let max_page = t.elapsed();
        assert_eq!(last.len(), 1000);
        assert_eq!(last[999].id, "appr-00001");

        let t = Instant::now();
        let mut all = Vec::new();
        loop {
            let page = store.list_approvals(pending(MAX_LIST_LIMIT, u32::try_from(all.len()).unwrap())).await.unwrap();
            if page.is_empty() {
                break;
            }
            all.extend(page);
        }
        let every_page = t.elapsed();
        assert_eq!(all.len(), 9_990);
        assert!(all.windows(2).all(|w| w[0].created_at > w[1].created_at));

        eprintln!(
            "10k approvals: insert + 10 votes {inserted:?}; with 9,990 pending: list default page (100) \
             {default_page:?}, list max page (1000, offset 8990) {max_page:?}, all 9,990 in 10 pages {every_page:?}"
        );
        // Generous bounds that hold in debug builds too; they catch a lost index or an N+1 query.
        assert!(max_page.as_millis() < 500, "a page of 1000 took {max_page:?}");
        assert!(every_page.as_millis() < 5_000, "listing all 10k pending took {every_page:?}");
    }
}
