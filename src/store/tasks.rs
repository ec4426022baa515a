//! Gate tasks: a held call answered with a task that the client polls, instead of a result.
//!
//! ```text
//! working ──claim (approved)──▶ running ──finish──▶ completed | failed
//!    │  ▲                          │
//!    │  └──── release (not sent) ──┘
//!    ├── settle (denied, expired, spent) ──▶ completed (with the gate's isError result)
//!    └── cancel ──▶ cancelled (never run; from running: the client never gets the result)
//! ```
//!
//! - **One open task per owner and call key**: [`Store::open_task`] returns the open task of the
//!   same owner for the same call, so a retry gets the same task back (a unique index backs it).
//! - **Exactly once**: [`Store::claim_task`] claims the approval and moves the task to `running`
//!   in one write transaction, and only from `working`: a cancelled task is never claimed, and of
//!   any number of concurrent claims one runs. A task cancelled while `running` stays
//!   `cancelled` for its client; the run's end is still recorded on its approval.
//! - **Orphans**: the `claims` row of a task's run names the task; when the process that made it
//!   stops, [`Store::settle_orphaned_claims`] fails the task (its outcome is unknown, it is never
//!   run again).
//! - A task belongs to its owner: every read and change names the owner, and another owner's
//!   task reads as absent.

use serde_json::Value;

use super::approvals::{Claim, claim_in, finish_in, release_in};
use super::db::{ColumnError, Engine, FromVal, Param, Row, Sql, Val, ValRef, params};
use super::{Approval, Store, StoreError};

/// Largest page of [`Store::tasks_of_owner`].
pub const TASK_PAGE: u32 = 100;

/// Where a gate task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting for its approval (or approved and not yet sent).
    Working,
    /// Claimed and sent upstream; its outcome is not in yet.
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Working => "working",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// No transition leaves this state.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed | TaskState::Cancelled)
    }
}

impl Param for TaskState {
    fn val_ref(&self) -> ValRef<'_> {
        ValRef::Text(self.as_str())
    }
}

impl FromVal for TaskState {
    fn from_val(v: Val) -> Result<Self, ColumnError> {
        match String::from_val(v)?.as_str() {
            "working" => Ok(TaskState::Working),
            "running" => Ok(TaskState::Running),
            "completed" => Ok(TaskState::Completed),
            "failed" => Ok(TaskState::Failed),
            "cancelled" => Ok(TaskState::Cancelled),
            other => Err(ColumnError::Unknown { what: "task state", value: other.to_owned() }),
        }
    }
}

/// A gate task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GateTask {
    pub id: String,
    /// `agent:NAME`, `stdio:NAME` or `anonymous` (see [`crate::gate::Owner::key`]).
    pub owner: String,
    /// `legacy` (2025-11-25 tasks) or `modern` (the 2026-07-28 tasks extension): the shapes of
    /// its answers.
    pub era: String,
    /// The approval it waits for; `None` for a call that needed none.
    pub approval_id: Option<String>,
    /// The call key of what it runs.
    pub key: String,
    pub server: String,
    pub tool: String,
    /// The params sent upstream when it runs (JSON text).
    pub params: String,
    pub state: TaskState,
    pub status_message: Option<String>,
    /// The final result (JSON text), when completed or cancelled.
    pub result: Option<String>,
    /// The JSON-RPC error object (JSON text), when failed.
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub ttl_ms: Option<i64>,
}

/// The answer of [`Store::open_task`].
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedTask {
    pub task: GateTask,
    /// `true`: the owner's open task for the same call was returned; `false`: created now.
    pub joined: bool,
}

/// The answer of [`Store::claim_task`].
#[derive(Debug, Clone, PartialEq)]
pub enum TaskClaim {
    /// Claimed: the task is `running` and its params go upstream now, once.
    Run(GateTask),
    /// The task is not `working` (cancelled, already running or finished): nothing was claimed.
    NotWorking(GateTask),
    /// The approval could not be claimed (pending, denied, expired, spent): the task is unchanged.
    Approval(Claim),
}

/// The answer of [`Store::cancel_task`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// Cancelled now: it will never run.
    Now(GateTask),
    /// Already in a terminal state.
    Terminal(GateTask),
}

/// How a task that ran ended (see [`Store::finish_task`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEnd {
    /// The upstream's result (also an `isError` one): `completed`.
    Result(Value),
    /// A JSON-RPC or transport error: `failed`.
    Error(Value),
}

const COLS: &str = "id, owner, era, approval_id, key, server, tool, params, state, status_message, result, error, \
                    created_at, updated_at, ttl_ms";

fn row_to_task(row: &Row) -> Result<GateTask, StoreError> {
    row_to_task_at(row, 0)
}

fn load(conn: &mut dyn Sql, id: &str) -> Result<Option<GateTask>, StoreError> {
    conn.query_opt(&format!("SELECT {COLS} FROM gate_tasks WHERE id = ?1"), params![id])?
        .map(|r| row_to_task(&r))
        .transpose()
}

fn must_load(conn: &mut dyn Sql, id: &str) -> Result<GateTask, StoreError> {
    load(conn, id)?.ok_or_else(|| StoreError::InvalidState(format!("task {id} vanished")))
}

/// Whether the task's run holds a claim on its approval (it was claimed and not finished).
fn has_claim(conn: &mut dyn Sql, id: &str) -> Result<bool, StoreError> {
    Ok(conn.query_opt("SELECT 1 FROM claims WHERE task_id = ?1", params![id])?.is_some())
}

/// Moves task `id` from one of `from` to `to`; `false` when it was in none of them.
#[allow(clippy::too_many_arguments)]
fn transition(
    conn: &mut dyn Sql,
    id: &str,
    from: &[TaskState],
    to: TaskState,
    message: Option<&str>,
    result: Option<&str>,
    error: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let sql = match conn.engine() {
        Engine::Sqlite => {
            "UPDATE gate_tasks SET state = ?2, status_message = coalesce(?3, status_message), result = ?4,
             error = ?5, updated_at = ?6
             WHERE id = ?1 AND state IN (SELECT value FROM json_each(?7))"
        }
        Engine::Postgres => {
            "UPDATE gate_tasks SET state = ?2, status_message = coalesce(?3, status_message), result = ?4,
             error = ?5, updated_at = ?6
             WHERE id = ?1 AND state IN (SELECT json_array_elements_text(CAST(?7 AS json)))"
        }
    };
    let changed = conn.execute(sql, params![id, to, message, result, error, now, serde_json::to_string(&from)?])?;
    Ok(changed == 1)
}

impl Store {
    /// Stores `new` as `working`, or returns the open task (`working` or `running`) of the same
    /// owner for the same call key. Committed with `synchronous = FULL`: the task is on disk
    /// before anyone is told its id.
    pub async fn open_task(&self, mut new: GateTask, now: i64) -> Result<OpenedTask, StoreError> {
        // A client asks for any lifetime: `created_at + ttl_ms` (the purge's index and condition)
        // must stay a 64-bit integer, or PostgreSQL refuses the insert (`bigint out of range`).
        new.ttl_ms = new.ttl_ms.map(|ttl| ttl.clamp(0, i64::MAX.saturating_sub(now.max(0))));
        self.call(move |conn| {
            conn.write_durable(|tx| {
                let open = tx
                    .query_opt(
                        &format!(
                            "SELECT {COLS} FROM gate_tasks
                             WHERE owner = ?1 AND key = ?2 AND state IN ('working', 'running')"
                        ),
                        params![new.owner, new.key],
                    )?
                    .map(|r| row_to_task(&r))
                    .transpose()?;
                if let Some(task) = open {
                    return Ok(OpenedTask { task, joined: true });
                }
                tx.execute(
                    "INSERT INTO gate_tasks (id, owner, era, approval_id, key, server, tool, params, state,
                     status_message, result, error, created_at, updated_at, ttl_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'working', ?9, NULL, NULL, ?10, ?10, ?11)",
                    params![
                        new.id,
                        new.owner,
                        new.era,
                        new.approval_id,
                        new.key,
                        new.server,
                        new.tool,
                        new.params,
                        new.status_message,
                        now,
                        new.ttl_ms
                    ],
                )?;
                let task = must_load(tx, &new.id)?;
                Ok(OpenedTask { task, joined: false })
            })
        })
        .await
    }

    /// The task `id` of `owner`; `None` when it does not exist or belongs to another owner.
    pub async fn task(&self, owner: &str, id: &str) -> Result<Option<GateTask>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.call(move |conn| Ok(load(conn, &id)?.filter(|t| t.owner == owner))).await
    }

    /// Claims the task's approval and moves the task to `running`, in one write transaction
    /// committed with `synchronous = FULL` (see [`Store::claim_execution`]); only a `working` task
    /// is claimed. The `claims` row names the task.
    pub async fn claim_task(&self, id: &str, now: i64) -> Result<TaskClaim, StoreError> {
        let id = id.to_owned();
        let instance = self.instance().to_owned();
        self.call(move |conn| {
            conn.write_durable(|tx| {
                let task = must_load(tx, &id)?;
                if task.state != TaskState::Working {
                    return Ok(TaskClaim::NotWorking(task));
                }
                if let Some(approval) = &task.approval_id {
                    let (claim, row) = claim_in(tx, approval, now, &instance)?;
                    if claim != Claim::Run {
                        // Closing a lapsed approval is committed; the task is settled by the caller.
                        return Ok(TaskClaim::Approval(claim));
                    }
                    tx.execute("UPDATE claims SET task_id = ?2 WHERE id = ?1", params![row, id])?;
                }
                transition(tx, &id, &[TaskState::Working], TaskState::Running, None, None, None, now)?;
                tx.execute("UPDATE gate_tasks SET instance = ?2 WHERE id = ?1", params![id, instance])?;
                let task = must_load(tx, &id)?;
                Ok(TaskClaim::Run(task))
            })
        })
        .await
    }

    /// Records how a `running` task ended, and finishes its approval's execution in the same
    /// transaction. Returns the task and the approval as stored after.
    pub async fn finish_task(
        &self,
        id: &str,
        end: TaskEnd,
        message: &str,
        now: i64,
    ) -> Result<(GateTask, Option<Approval>), StoreError> {
        let (id, message) = (id.to_owned(), message.to_owned());
        let instance = self.instance().to_owned();
        self.call(move |conn| {
            conn.write(|tx| {
                let task = must_load(tx, &id)?;
                let cancelled_running = task.state == TaskState::Cancelled && has_claim(tx, &id)?;
                if task.state != TaskState::Running && !cancelled_running {
                    return Err(StoreError::InvalidState(format!("task {id} is {}, not running", task.state.as_str())));
                }
                let (to, result, error, ok, outcome) = match &end {
                    TaskEnd::Result(r) => {
                        let is_error = r.get("isError").and_then(Value::as_bool).unwrap_or(false);
                        let outcome = serde_json::json!({ "is_error": is_error });
                        (TaskState::Completed, Some(serde_json::to_string(r)?), None, !is_error, outcome)
                    }
                    TaskEnd::Error(e) => (
                        TaskState::Failed,
                        None,
                        Some(serde_json::to_string(e)?),
                        false,
                        serde_json::json!({ "error": e }),
                    ),
                };
                // A task cancelled while running keeps its cancellation: only the approval learns the end.
                transition(
                    tx,
                    &id,
                    &[TaskState::Running],
                    to,
                    Some(&message),
                    result.as_deref(),
                    error.as_deref(),
                    now,
                )?;
                let approval = match &task.approval_id {
                    Some(a) => Some(finish_in(tx, a, ok, &outcome, now, &instance)?),
                    None => None,
                };
                let task = must_load(tx, &id)?;
                Ok((task, approval))
            })
        })
        .await
    }

    /// Gives back the claim of a `running` task whose call was never sent: the task is `working`
    /// again and its approval usable again, in one transaction.
    pub async fn release_task(&self, id: &str, now: i64) -> Result<GateTask, StoreError> {
        let id = id.to_owned();
        let instance = self.instance().to_owned();
        self.call(move |conn| {
            conn.write(|tx| {
                let task = must_load(tx, &id)?;
                // Cancelled while its call was about to be sent: it stays cancelled, the claim goes back.
                let cancelled_running = task.state == TaskState::Cancelled && has_claim(tx, &id)?;
                if !cancelled_running
                    && !transition(tx, &id, &[TaskState::Running], TaskState::Working, None, None, None, now)?
                {
                    return Err(StoreError::InvalidState(format!("task {id} is {}, not running", task.state.as_str())));
                }
                if let Some(a) = &task.approval_id {
                    release_in(tx, a, now, &instance)?;
                }
                must_load(tx, &id)
            })
        })
        .await
    }

    /// Ends a `working` task without running it (its approval was denied, expired or spent, or
    /// the policy now denies the call): `completed` with the gate's `result`, or `failed` with an
    /// `error`. `None` when the task was no longer `working`.
    pub async fn settle_task(
        &self,
        id: &str,
        end: TaskEnd,
        message: &str,
        now: i64,
    ) -> Result<Option<GateTask>, StoreError> {
        let (id, message) = (id.to_owned(), message.to_owned());
        self.call(move |conn| {
            conn.write(|tx| {
                let (to, result, error) = match &end {
                    TaskEnd::Result(r) => (TaskState::Completed, Some(serde_json::to_string(r)?), None),
                    TaskEnd::Error(e) => (TaskState::Failed, None, Some(serde_json::to_string(e)?)),
                };
                let moved = transition(
                    tx,
                    &id,
                    &[TaskState::Working],
                    to,
                    Some(&message),
                    result.as_deref(),
                    error.as_deref(),
                    now,
                )?;
                if moved { Ok(Some(must_load(tx, &id)?)) } else { Ok(None) }
            })
        })
        .await
    }

    /// Cancels the task `id` of `owner` if it is still `working`: it will never run. `result` is
    /// what its result reads afterwards. `None` when the owner has no such task.
    pub async fn cancel_task(
        &self,
        owner: &str,
        id: &str,
        message: &str,
        result: Value,
        now: i64,
    ) -> Result<Option<Cancelled>, StoreError> {
        let note = (message, result);
        self.cancel_task_noting(owner, id, note.clone(), note, now).await
    }

    /// [`Store::cancel_task`] with what the task reads afterwards (status message, result)
    /// chosen in the same transaction by what it was: `not_run` for a `working` task, `sent`
    /// for a `running` one (its call may already be upstream).
    pub async fn cancel_task_noting(
        &self,
        owner: &str,
        id: &str,
        not_run: (&str, Value),
        sent: (&str, Value),
        now: i64,
    ) -> Result<Option<Cancelled>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        let not_run = (not_run.0.to_owned(), serde_json::to_string(&not_run.1)?);
        let sent = (sent.0.to_owned(), serde_json::to_string(&sent.1)?);
        self.call(move |conn| {
            conn.write(|tx| {
                let Some(task) = load(tx, &id)?.filter(|t| t.owner == owner) else { return Ok(None) };
                let (message, result) = match task.state {
                    TaskState::Working => &not_run,
                    // A running task's call may already be upstream: it is cancelled for its client
                    // (who never gets its result), and its end is recorded on the approval.
                    TaskState::Running => &sent,
                    _ => return Ok(Some(Cancelled::Terminal(task))),
                };
                transition(tx, &id, &[task.state], TaskState::Cancelled, Some(message), Some(result), None, now)?;
                Ok(Some(Cancelled::Now(must_load(tx, &id)?)))
            })
        })
        .await
    }

    /// The tasks of `owner`, oldest first, [`TASK_PAGE`] at a time after `cursor` (the
    /// `next` of the previous page). Returns the page and the cursor of the next one.
    pub async fn tasks_of_owner(
        &self,
        owner: &str,
        cursor: Option<i64>,
    ) -> Result<(Vec<GateTask>, Option<i64>), StoreError> {
        let owner = owner.to_owned();
        self.call(move |conn| {
            let after = cursor.unwrap_or(0);
            // The cursor is the insertion number of the last task of the page: SQLite's rowid,
            // the identity column `seq` on PostgreSQL.
            let seq = insertion_order(conn.engine());
            let rows: Vec<(i64, GateTask)> = conn.sql().query_map(
                &format!(
                    "SELECT {seq}, {COLS} FROM gate_tasks WHERE owner = ?1 AND {seq} > ?2 ORDER BY {seq} LIMIT ?3"
                ),
                params![owner, after, TASK_PAGE + 1],
                |r| Ok((r.get(0)?, row_to_task_at(r, 1)?)),
            )?;
            let more = rows.len() > TASK_PAGE as usize;
            let page: Vec<(i64, GateTask)> = rows.into_iter().take(TASK_PAGE as usize).collect();
            let next = if more { page.last().map(|(rowid, _)| *rowid) } else { None };
            Ok((page.into_iter().map(|(_, t)| t).collect(), next))
        })
        .await
    }

    /// The `working` tasks waiting for approval `approval_id` (of any owner).
    pub async fn tasks_of_approval(&self, approval_id: &str) -> Result<Vec<GateTask>, StoreError> {
        let approval_id = approval_id.to_owned();
        self.call(move |conn| {
            let order = insertion_order(conn.engine());
            conn.sql().query_map(
                &format!("SELECT {COLS} FROM gate_tasks WHERE approval_id = ?1 AND state = 'working' ORDER BY {order}"),
                params![approval_id],
                row_to_task,
            )
        })
        .await
    }

    /// Deletes the tasks whose lifetime (from creation) has passed; returns how many. Writes only
    /// when there is one (an idle sweep reads).
    ///
    /// Ended tasks go, and so do waiting ones whose approval is no longer pending: their owner
    /// did not come back to run them within their lifetime (which outlasts the approval's expiry),
    /// and a call must not run for a caller who is gone. A task claimed to run (`running`) stays
    /// until it ends, and one whose approval is still pending stays until it is decided: the
    /// claim and this delete each take the database's write lock, so the one that comes second
    /// finds the task gone or no longer waiting.
    pub async fn purge_tasks(&self, now: i64) -> Result<usize, StoreError> {
        const DUE: &str = "ttl_ms IS NOT NULL AND created_at + ttl_ms <= ?1 \
             AND (state IN ('completed', 'failed', 'cancelled') \
                  OR (state = 'working' AND NOT EXISTS (SELECT 1 FROM approvals \
                      WHERE approvals.id = gate_tasks.approval_id AND approvals.status = 'pending')))";
        self.call(move |conn| {
            let due = conn.query_opt(&format!("SELECT 1 FROM gate_tasks WHERE {DUE} LIMIT 1"), params![now])?;
            if due.is_none() {
                return Ok(0);
            }
            let deleted = conn.execute(&format!("DELETE FROM gate_tasks WHERE {DUE}"), params![now])?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
        .await
    }
}

fn row_to_task_at(row: &Row, at: usize) -> Result<GateTask, StoreError> {
    Ok(GateTask {
        id: row.get(at)?,
        owner: row.get(at + 1)?,
        era: row.get(at + 2)?,
        approval_id: row.get(at + 3)?,
        key: row.get(at + 4)?,
        server: row.get(at + 5)?,
        tool: row.get(at + 6)?,
        params: row.get(at + 7)?,
        state: row.get(at + 8)?,
        status_message: row.get(at + 9)?,
        result: row.get(at + 10)?,
        error: row.get(at + 11)?,
        created_at: row.get(at + 12)?,
        updated_at: row.get(at + 13)?,
        ttl_ms: row.get(at + 14)?,
    })
}

#[cfg(test)]
mod tests;

/// The column that numbers gate tasks in insertion order.
fn insertion_order(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => "rowid",
        Engine::Postgres => "seq",
    }
}
