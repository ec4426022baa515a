//! Claims: running an approved call (once, or within its grant), its outcome, and the claims of
//! processes that stopped.

use super::*;

impl Store {
    /// Atomically decides whether the caller may run an approved call now (see [`Claim`]). Two concurrent
    /// claims of a single-use approval, from any number of handles or processes, yield one [`Claim::Run`].
    ///
    /// Committed with `synchronous = FULL`: the claim is on disk before the tool runs.
    pub async fn claim_execution(&self, id: &str, now: i64) -> Result<Claim, StoreError> {
        let id = id.to_owned();
        let instance = self.instance().to_owned();
        self.call(move |conn| conn.write_durable(|tx| Ok(claim_in(tx, &id, now, &instance)?.0))).await
    }

    /// Records the end of a claimed execution: a single-use approval becomes `Executed` or `Failed`; for a
    /// grant the run is recorded as a transition and the status stays `Approved` until the window ends.
    pub async fn finish_execution(&self, id: &str, ok: bool, outcome: Value, now: i64) -> Result<Approval, StoreError> {
        let id = id.to_owned();
        let instance = self.instance().to_owned();
        self.call(move |conn| conn.write(|tx| finish_in(tx, &id, ok, &outcome, now, &instance))).await
    }

    /// Gives back one claim of an approval whose call was never sent (`uses` goes down by one,
    /// with a transition that says so): a single-use approval becomes usable again until its
    /// deadline.
    pub async fn release_claim(&self, id: &str, now: i64) -> Result<Approval, StoreError> {
        let id = id.to_owned();
        let instance = self.instance().to_owned();
        self.call(move |conn| conn.write(|tx| release_in(tx, &id, now, &instance))).await
    }

    /// Settles the claims of processes that stopped without finishing them, so that no request stays
    /// `approved` and used forever: a process is taken as stopped when its heartbeat is older than
    /// [`STALE_AFTER`](crate::store::STALE_AFTER), or when it ran on this host and its pid is no longer alive (a crash, `kill -9`).
    /// A single-use request becomes `Failed` with the outcome `{"error": ORPHANED}`; a grant records the
    /// run as failed and stays approved. The gate task a claim ran for fails with the same error. Returns the settled requests (as stored after), for the audit.
    ///
    /// Costs one read of the (small) instance table when nothing has stopped.
    pub async fn settle_orphaned_claims(&self, now: i64) -> Result<Vec<Approval>, StoreError> {
        let me = self.instance().to_owned();
        self.call(move |conn| {
            let stopped = stopped_instances(conn, &me, now)?;
            if stopped.is_empty() {
                return Ok(Vec::new());
            }
            conn.write(|tx| {
                let mut settled = Vec::new();
                let outcome = serde_json::to_string(&serde_json::json!({ "error": ORPHANED }))?;
                for instance in stopped {
                    let claims: Vec<(i64, String, Option<String>)> = tx.query_map(
                        "SELECT id, approval_id, task_id FROM claims WHERE instance = ?1 ORDER BY id",
                        params![instance],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?;
                    for (claim, id, task) in claims {
                        tx.execute("DELETE FROM claims WHERE id = ?1", params![claim])?;
                        if let Some(task) = task {
                            // Its outcome is unknown: the gate task fails, and is never run again.
                            fail_orphaned_tasks(tx, OrphanColumn::Id, &task, now)?;
                        }
                        let Some(a) = load(tx, &id)? else { continue };
                        if a.uses == 0 {
                            continue;
                        }
                        // A single-use request fails; a grant records the failed run and stays approved.
                        let (update, notes) = if a.grant_secs == 0 {
                            if a.status != Status::Approved {
                                continue;
                            }
                            (
                                "UPDATE approvals SET status = 'failed', executed_at = ?2, outcome = ?3 WHERE id = ?1",
                                None,
                            )
                        } else {
                            ("UPDATE approvals SET executed_at = ?2, outcome = ?3 WHERE id = ?1", Some("grant use"))
                        };
                        tx.execute(update, params![id, now, outcome])?;
                        let (from, actor) = (Some(a.status), SYSTEM_ACTOR);
                        insert_transition(tx, &id, now, from, Status::Failed, actor, notes, Some(ORPHANED))?;
                        settled.push(load(tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?);
                    }
                    // Tasks that ran without an approval have no claim: they fail by their instance.
                    fail_orphaned_tasks(tx, OrphanColumn::Instance, &instance, now)?;
                    tx.execute("DELETE FROM instances WHERE id = ?1", params![instance])?;
                }
                Ok(settled)
            })
        })
        .await
    }
}

/// Instances other than `me` that have stopped: a heartbeat older than [`STALE_AFTER`](crate::store::STALE_AFTER), or a dead
/// process on this host.
fn stopped_instances(conn: &mut dyn Sql, me: &str, now: i64) -> Result<Vec<String>, StoreError> {
    let stale = now.saturating_sub(i64::try_from(crate::store::STALE_AFTER.as_millis()).unwrap_or(i64::MAX));
    let host = crate::store::host_name();
    let rows: Vec<(String, String, i64, i64)> =
        conn.query_map("SELECT id, host, pid, heartbeat_at FROM instances WHERE id != ?1", params![me], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
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

/// Fails the `running` gate tasks whose `column` (`id` or `instance`) is `value`: their run's
/// process stopped, so their outcome is unknown and they are never run again.
fn fail_orphaned_tasks(tx: &mut dyn Sql, column: OrphanColumn, value: &str, now: i64) -> Result<(), StoreError> {
    let error = serde_json::json!({ "code": crate::wire::jsonrpc::code::INTERNAL_ERROR, "message": ORPHANED });
    let sql = match column {
        OrphanColumn::Id => {
            "UPDATE gate_tasks SET state = 'failed', status_message = ?2, error = ?3, updated_at = ?4
             WHERE id = ?1 AND state = 'running'"
        }
        OrphanColumn::Instance => {
            "UPDATE gate_tasks SET state = 'failed', status_message = ?2, error = ?3, updated_at = ?4
             WHERE instance = ?1 AND state = 'running'"
        }
    };
    tx.execute(sql, params![value, ORPHANED, error.to_string(), now])?;
    Ok(())
}

/// The column [`fail_orphaned_tasks`] selects the tasks by.
#[derive(Clone, Copy)]
enum OrphanColumn {
    Id,
    Instance,
}

/// Removes one claim of `id` made by `instance` (its run finished or was given back).
fn drop_claim(conn: &mut dyn Sql, id: &str, instance: &str) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM claims WHERE id = (SELECT id FROM claims WHERE approval_id = ?1 AND instance = ?2
         ORDER BY id LIMIT 1)",
        params![id, instance],
    )?;
    Ok(())
}

/// The claim of [`Store::claim_execution`] inside the caller's write transaction; with
/// [`Claim::Run`], the id of the `claims` row it wrote.
pub(in crate::store) fn claim_in(
    tx: &mut dyn Sql,
    id: &str,
    now: i64,
    instance: &str,
) -> Result<(Claim, Option<i64>), StoreError> {
    let a = load(tx, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
    let claim = match close_if_lapsed(tx, &a, now)?.unwrap_or(a.status) {
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
            tx.execute("UPDATE approvals SET uses = uses + 1 WHERE id = ?1", params![id])?;
            let claim: i64 = tx
                .query_one(
                    "INSERT INTO claims (approval_id, instance, at) VALUES (?1, ?2, ?3) RETURNING id",
                    params![id, instance, now],
                )?
                .get(0)?;
            return Ok((Claim::Run, Some(claim)));
        }
    };
    Ok((claim, None))
}

/// The finish of [`Store::finish_execution`] inside the caller's write transaction.
pub(in crate::store) fn finish_in(
    tx: &mut dyn Sql,
    id: &str,
    ok: bool,
    outcome: &Value,
    now: i64,
    instance: &str,
) -> Result<Approval, StoreError> {
    let a = load(tx, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
    drop_claim(tx, id, instance)?;
    let to = if ok { Status::Executed } else { Status::Failed };
    let outcome = serde_json::to_string(outcome)?;
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
        insert_transition(tx, id, now, Some(a.status), to, SYSTEM_ACTOR, None, None)?;
    } else {
        // A grant closed by `expire_due` while this run was in flight still records the run.
        if !matches!(a.status, Status::Approved | Status::Executed) || a.uses == 0 {
            return Err(StoreError::InvalidState(format!(
                "grant {id} is {} with {} uses; cannot finish a run",
                a.status, a.uses
            )));
        }
        tx.execute("UPDATE approvals SET executed_at = ?2, outcome = ?3 WHERE id = ?1", params![id, now, outcome])?;
        insert_transition(tx, id, now, Some(a.status), to, SYSTEM_ACTOR, Some("grant use"), None)?;
    }
    load(tx, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))
}

/// The release of [`Store::release_claim`] inside the caller's write transaction.
pub(in crate::store) fn release_in(
    tx: &mut dyn Sql,
    id: &str,
    now: i64,
    instance: &str,
) -> Result<Approval, StoreError> {
    let a = load(tx, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
    drop_claim(tx, id, instance)?;
    if a.status != Status::Approved || a.uses == 0 {
        return Err(StoreError::InvalidState(format!("approval {id} is {} with {} uses", a.status, a.uses)));
    }
    tx.execute("UPDATE approvals SET uses = uses - 1 WHERE id = ?1", params![id])?;
    insert_transition(
        tx,
        id,
        now,
        Some(a.status),
        a.status,
        SYSTEM_ACTOR,
        None,
        Some("claim released: the caller left before the call was sent"),
    )?;
    load(tx, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))
}
