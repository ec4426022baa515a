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
//!
//! This file holds the model (a request as opened, [`ApprovalRequest`], and the [`Approval`] it
//! becomes) and the row reading every query shares; the store's operations are grouped by what
//! they change: `requests.rs` (open, join, find, list, expire), `votes.rs` and `claims.rs`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::db::{ColumnError, Conn, Engine, FromVal, Param, Row, Sql, Val, ValRef, params};
use super::{SYSTEM_ACTOR, Store, StoreError};

mod claims;
pub(in crate::store) use claims::{claim_in, finish_in, release_in};
mod requests;
#[cfg(test)]
mod tests;
mod votes;

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

impl Param for Status {
    fn val_ref(&self) -> ValRef<'_> {
        ValRef::Text(self.as_str())
    }
}

impl FromVal for Status {
    fn from_val(v: Val) -> Result<Self, ColumnError> {
        match v {
            Val::Text(s) => {
                s.parse().map_err(|ParseStatusError(value)| ColumnError::Unknown { what: "approval status", value })
            }
            other => Err(ColumnError::kind("an approval status", other)),
        }
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

impl Param for VoteDecision {
    fn val_ref(&self) -> ValRef<'_> {
        ValRef::Text(self.as_str())
    }
}

impl FromVal for VoteDecision {
    fn from_val(v: Val) -> Result<Self, ColumnError> {
        match v {
            Val::Text(s) => match s.as_str() {
                "approve" => Ok(VoteDecision::Approve),
                "deny" => Ok(VoteDecision::Deny),
                other => Err(ColumnError::Unknown { what: "vote decision", value: other.to_owned() }),
            },
            other => Err(ColumnError::kind("a vote decision", other)),
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
    /// The channel through which the call that opened the request was answered (`task`,
    /// `input_required`, `elicitation`, `wait`, `fail_fast`); `None` for older requests.
    #[serde(default)]
    pub channel: Option<String>,
    /// Who may vote: the workflow's `approvers` (names and `team:NAME`; empty admits everyone)
    /// when the request was opened. A voter must be admitted by this list and by the deciding
    /// process's own workflow. `None` for older requests.
    #[serde(default)]
    pub approvers: Option<Vec<String>>,
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

impl From<postgres::Error> for TransitionError {
    fn from(e: postgres::Error) -> Self {
        TransitionError::Store(StoreError::Postgres(e))
    }
}

/// Grant windows are stored in seconds and compared in milliseconds; this keeps `grant_secs * 1000` an i64.
const MAX_GRANT_SECS: u64 = (i64::MAX / 1000) as u64;

fn grant_ms(grant_secs: u64) -> i64 {
    i64::try_from(grant_secs.min(MAX_GRANT_SECS)).unwrap_or(i64::MAX / 1000).saturating_mul(1000)
}

/// The columns [`row_to_approval`] reads, as a literal (for `concat!`: statements stay `&'static str`).
macro_rules! cols {
    () => {
        "id, key, server, tool, arguments, agent, risk, rule, rule_reason, workflow, required_approvals, \
         grant_secs, trace, created_at, expires_at, status, decided_at, decided_by, deny_reason, notes, \
         uses, executed_at, outcome, tool_info, channel, approvers"
    };
}
use cols;

const COLS: &str = cols!();

fn json_col(row: &Row, idx: usize) -> Result<Value, StoreError> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column {idx}: {e}")))
}

fn row_to_approval(row: &Row) -> Result<Approval, StoreError> {
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
        grant_secs: u64::try_from(grant_secs).map_err(|_| StoreError::Column {
            index: 11,
            source: ColumnError::Range { value: grant_secs, ty: "u64" },
        })?,
        trace: json_col(row, 12)?,
        created_at: row.get(13)?,
        expires_at: row.get(14)?,
        tool_info: match row.get::<Option<String>>(23)? {
            Some(text) => serde_json::from_str(&text).ok(),
            None => None,
        },
        channel: row.get(24)?,
        approvers: match row.get::<Option<String>>(25)? {
            // Unreadable, it admits nobody rather than everybody: the decision fails.
            Some(text) => {
                Some(serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column 25: {e}")))?)
            }
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
            Some(text) => {
                Some(serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column 22: {e}")))?)
            }
            None => None,
        },
    })
}

/// Fills in the votes of `approvals` with one query.
fn with_votes(conn: &mut dyn Sql, mut approvals: Vec<Approval>) -> Result<Vec<Approval>, StoreError> {
    if approvals.is_empty() {
        return Ok(approvals);
    }
    let ids = serde_json::to_string(&approvals.iter().map(|a| a.id.as_str()).collect::<Vec<_>>())?;
    let sql = match conn.engine() {
        Engine::Sqlite => {
            "SELECT approval_id, actor, decision, notes, reason, at FROM approval_votes
             WHERE approval_id IN (SELECT value FROM json_each(?1))
             ORDER BY approval_id, at, actor"
        }
        Engine::Postgres => {
            "SELECT approval_id, actor, decision, notes, reason, at FROM approval_votes
             WHERE approval_id IN (SELECT json_array_elements_text(CAST(?1 AS json)))
             ORDER BY approval_id, at, actor"
        }
    };
    let mut by_id: HashMap<String, Vec<VoteRecord>> = HashMap::new();
    let rows = conn.query_map(sql, params![ids], |r| {
        Ok((
            r.get::<String>(0)?,
            VoteRecord { actor: r.get(1)?, decision: r.get(2)?, notes: r.get(3)?, reason: r.get(4)?, at: r.get(5)? },
        ))
    })?;
    for (id, vote) in rows {
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

fn load(conn: &mut dyn Sql, id: &str) -> Result<Option<Approval>, StoreError> {
    let found = conn
        .query_opt(concat!("SELECT ", cols!(), " FROM approvals WHERE id = ?1"), params![id])?
        .as_ref()
        .map(row_to_approval)
        .transpose()?;
    with_votes(conn, found.into_iter().collect()).map(|mut v| v.pop())
}

#[allow(clippy::too_many_arguments)]
fn insert_transition(
    conn: &mut dyn Sql,
    id: &str,
    at: i64,
    from: Option<Status>,
    to: Status,
    actor: &str,
    notes: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO approval_transitions (approval_id, at, from_status, to_status, actor, notes, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, at, from, to, actor, notes, reason],
    )?;
    Ok(())
}

/// Moves `a` to `to` with its transition row.
fn move_to(conn: &mut dyn Sql, a: &Approval, to: Status, at: i64, actor: &str, reason: &str) -> Result<(), StoreError> {
    conn.execute("UPDATE approvals SET status = ?2 WHERE id = ?1", params![a.id, to])?;
    insert_transition(conn, &a.id, at, Some(a.status), to, actor, None, Some(reason))
}

/// If `a` is past its deadline, closes it (see [`Store::expire_due`]) and returns the new status.
fn close_if_lapsed(conn: &mut dyn Sql, a: &Approval, now: i64) -> Result<Option<Status>, StoreError> {
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
