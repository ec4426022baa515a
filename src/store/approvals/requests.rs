//! Requests: opening, joining, finding and listing them, and closing those whose deadline has passed.

use super::votes::vote_in;
use super::*;

impl Store {
    /// Stores a new pending approval (and its creation transition).
    pub async fn insert_approval(&self, a: ApprovalRequest) -> Result<Approval, StoreError> {
        self.call(move |conn| {
            conn.write(|tx| {
                insert_tx(tx, &a)?;
                load(tx, &a.id)?.ok_or_else(|| StoreError::NotFound(a.id.clone()))
            })
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
            conn.write(|tx| {
                let expired = close_lapsed_of_key(tx, &new.key, now)?;
                if let Some(standing) = standing_tx(tx, &new.key, now)? {
                    return Ok(Opened { approval: standing, joined: true, expired });
                }
                insert_tx(tx, &new)?;
                let stored = load(tx, &new.id)?.ok_or_else(|| StoreError::NotFound(new.id.clone()))?;
                Ok(Opened { approval: stored, joined: false, expired })
            })
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
            // A refused vote rolls the whole transaction back (the request is not opened).
            Ok(conn.write_or_undo(|tx| {
                let expired = close_lapsed_of_key(tx, &new.key, now)?;
                let pending = tx
                    .query_opt("SELECT id FROM approvals WHERE key = ?1 AND status = 'pending'", params![new.key])?
                    .map(|r| r.get::<String>(0))
                    .transpose()?;
                if let Some(id) = pending {
                    let standing = load(tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
                    return Ok(Opened { approval: standing, joined: true, expired });
                }
                insert_tx(tx, &new)?;
                let decided = vote_in(tx, &new.id, vote, required, now)?;
                Ok(Opened { approval: decided, joined: false, expired })
            }))
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

    /// Approval requests matching `filter`, newest first.
    pub async fn list_approvals(&self, filter: ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        self.call(move |conn| {
            let conn = conn.sql();
            let (conds, mut args) = filter_sql(&filter, conn.engine());
            let n = args.len();
            let sql = format!(
                "SELECT {COLS} FROM approvals{conds} ORDER BY created_at DESC, {} LIMIT ?{} OFFSET ?{}",
                newest_last_tiebreak(conn.engine()),
                n + 1,
                n + 2
            );
            args.push(Val::Int(i64::from(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT))));
            args.push(Val::Int(i64::from(filter.offset)));
            let rows = conn.query_map(&sql, &param_refs(&args), row_to_approval)?;
            with_votes(conn, rows)
        })
        .await
    }

    /// How many approvals match `filter` (its page is ignored).
    pub async fn count_approvals(&self, filter: ApprovalFilter) -> Result<u64, StoreError> {
        self.call(move |conn| {
            let (conds, args) = filter_sql(&filter, conn.engine());
            let sql = format!("SELECT count(*) FROM approvals{conds}");
            let n: i64 = conn.query_one(&sql, &param_refs(&args))?.get(0)?;
            Ok(u64::try_from(n).unwrap_or(0))
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
            conn.write(|tx| {
                let mut closed = Vec::new();
                for id in due {
                    // Read again under the write lock: another process may have closed or used it.
                    let Some(a) = load(tx, &id)? else { continue };
                    if close_if_lapsed(tx, &a, now)? == Some(Status::Expired) {
                        closed.push(load(tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?);
                    }
                }
                Ok(closed)
            })
        })
        .await
    }

    /// Pending requests within `warning_ms` of their deadline, or past half their life if that comes
    /// later (so a short-lived request is not announced as expiring the moment it is made).
    pub async fn pending_expiring(&self, now: i64, warning_ms: i64) -> Result<Vec<Approval>, StoreError> {
        self.call(move |conn| {
            // `min(a, b)` written out: SQLite's scalar `min` is `least` on PostgreSQL.
            let sql = concat!(
                "SELECT ",
                cols!(),
                " FROM approvals WHERE status = 'pending' AND expires_at > ?1
                 AND expires_at <= CAST(?1 AS BIGINT) + CAST(?2 AS BIGINT)
                 AND expires_at - CASE WHEN CAST(?2 AS BIGINT) < (expires_at - created_at) / 2
                     THEN CAST(?2 AS BIGINT) ELSE (expires_at - created_at) / 2 END <= ?1
                 ORDER BY expires_at"
            );
            let conn = conn.sql();
            let rows = conn.query_map(sql, params![now, warning_ms], row_to_approval)?;
            with_votes(conn, rows)
        })
        .await
    }

    /// Every state change of an approval, oldest first (empty if there is no such approval).
    pub async fn transitions(&self, id: &str) -> Result<Vec<Transition>, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.sql().query_map(
                "SELECT at, from_status, to_status, actor, notes, reason FROM approval_transitions
                 WHERE approval_id = ?1 ORDER BY id",
                params![id],
                |r| {
                    Ok(Transition {
                        at: r.get(0)?,
                        from: r.get(1)?,
                        to: r.get(2)?,
                        actor: r.get(3)?,
                        notes: r.get(4)?,
                        reason: r.get(5)?,
                    })
                },
            )
        })
        .await
    }
}

/// The tie-break of "newest first" between rows created in the same millisecond: the later
/// insert first, by SQLite's `rowid` or PostgreSQL's identity column `seq`.
fn newest_last_tiebreak(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => "rowid DESC",
        Engine::Postgres => "seq DESC",
    }
}

/// `args` as statement parameters.
fn param_refs(args: &[Val]) -> Vec<&dyn Param> {
    args.iter().map(|a| a as &dyn Param).collect()
}

/// The `WHERE` clause (with a leading space, or empty) and arguments of a filter; its
/// placeholders are `?1`..`?n` for the `n` arguments.
fn filter_sql(filter: &ApprovalFilter, engine: Engine) -> (String, Vec<Val>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Val> = Vec::new();
    // `cond` with its `?` replaced by the next argument's number.
    let push = |conds: &mut Vec<String>, args: &mut Vec<Val>, cond: &str, value: Val| {
        args.push(value);
        conds.push(cond.replacen('?', &format!("?{}", args.len()), 1));
    };
    if let Some(status) = filter.status {
        push(&mut conds, &mut args, "status = ?", status.to_val());
    }
    for (cond, value) in [("server = ?", &filter.server), ("tool = ?", &filter.tool), ("agent = ?", &filter.agent)] {
        if let Some(v) = value {
            push(&mut conds, &mut args, cond, Val::Text(v.clone()));
        }
    }
    match filter.rule.as_deref() {
        Some("default") => conds.push("rule IS NULL".to_owned()),
        Some(rule) => push(&mut conds, &mut args, "rule = ?", Val::Text(rule.to_owned())),
        None => {}
    }
    if let Some(from) = filter.from {
        push(&mut conds, &mut args, "created_at >= ?", Val::Int(from));
    }
    if let Some(to) = filter.to {
        push(&mut conds, &mut args, "created_at < ?", Val::Int(to));
    }
    if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        // Case-insensitive for ASCII (SQLite's LIKE; PostgreSQL's LIKE is case-sensitive, ILIKE is
        // not); `\` escapes the wildcards a user typed.
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
        let like = match engine {
            Engine::Sqlite => "LIKE",
            Engine::Postgres => "ILIKE",
        };
        let pattern = format!("%{escaped}%");
        args.push(Val::Text(pattern));
        // One argument, named by every column's test.
        let n = args.len();
        let any = SEARCHED.iter().map(|c| format!("{c} {like} ?{n} ESCAPE '\\'")).collect::<Vec<_>>().join(" OR ");
        conds.push(format!("({any})"));
    }
    if conds.is_empty() { (String::new(), args) } else { (format!(" WHERE {}", conds.join(" AND ")), args) }
}

/// The ids of rows whose deadline has passed, by index: pending by `expires_at`, unused single-use
/// approvals by `expires_at`, grants by the end of their window.
fn due_ids(conn: &mut dyn Sql, now: i64) -> Result<Vec<String>, StoreError> {
    let sql = match conn.engine() {
        Engine::Sqlite => DUE_SQL,
        Engine::Postgres => DUE_SQL_POSTGRES,
    };
    conn.query_map(sql, params![now], |r| r.get(0))
}

/// `INDEXED BY`: without statistics the planner would rather walk every approved row by status.
pub(crate) const DUE_SQL: &str = "SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= ?1
     UNION ALL
     SELECT id FROM approvals INDEXED BY approvals_unused_expires
         WHERE status = 'approved' AND grant_secs = 0 AND uses = 0 AND expires_at <= ?1
     UNION ALL
     SELECT id FROM approvals INDEXED BY approvals_grant_ends
         WHERE status = 'approved' AND grant_secs > 0 AND coalesce(decided_at, created_at) + grant_secs * 1000 <= ?1";

/// [`DUE_SQL`] for PostgreSQL, which has no `INDEXED BY` (its planner has statistics).
const DUE_SQL_POSTGRES: &str = "SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= ?1
     UNION ALL
     SELECT id FROM approvals
         WHERE status = 'approved' AND grant_secs = 0 AND uses = 0 AND expires_at <= ?1
     UNION ALL
     SELECT id FROM approvals
         WHERE status = 'approved' AND grant_secs > 0 AND coalesce(decided_at, created_at) + grant_secs * 1000 <= ?1";

/// Closes the open requests of `key` whose deadline has passed; returns those that expired.
fn close_lapsed_of_key(tx: &mut dyn Sql, key: &str, now: i64) -> Result<Vec<Approval>, StoreError> {
    let mut expired = Vec::new();
    let open: Vec<String> = tx.query_map(
        "SELECT id FROM approvals WHERE key = ?1 AND status IN ('pending', 'approved')",
        params![key],
        |r| r.get(0),
    )?;
    for id in open {
        let Some(a) = load(tx, &id)? else { continue };
        if close_if_lapsed(tx, &a, now)? == Some(Status::Expired) {
            expired.push(load(tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?);
        }
    }
    Ok(expired)
}

/// Stores `a` as pending, with its creation transition.
///
/// A duplicate id is [`StoreError::AlreadyExists`]; a second pending request for the key is
/// [`StoreError::InvalidState`]. The conflict is skipped (`ON CONFLICT DO NOTHING`) rather than
/// raised, so that the transaction stays usable on PostgreSQL to tell the two apart.
fn insert_tx(conn: &mut dyn Sql, a: &ApprovalRequest) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT INTO approvals (id, key, server, tool, arguments, agent, risk, rule, rule_reason, workflow,
             required_approvals, grant_secs, trace, created_at, expires_at, status, tool_info, channel, approvers)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 'pending', ?16, ?17, ?18)
         ON CONFLICT DO NOTHING",
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
            a.channel,
            a.approvers.as_ref().map(serde_json::to_string).transpose()?,
        ],
    );
    // `ON CONFLICT DO NOTHING` skips a duplicate id and a second pending row for the key alike.
    let conflict = inserted? == 0;
    if conflict {
        let exists: bool =
            conn.query_one("SELECT EXISTS (SELECT 1 FROM approvals WHERE id = ?1)", params![a.id])?.get(0)?;
        if exists {
            return Err(StoreError::AlreadyExists(a.id.clone()));
        }
        return Err(StoreError::InvalidState(format!("a request for call key {} is already pending", a.key)));
    }
    let actor = a.agent.as_deref().unwrap_or("agent");
    insert_transition(conn, &a.id, a.created_at, None, Status::Pending, actor, None, a.rule_reason.as_deref())
}

/// See [`Store::find_reusable`].
fn reusable_tx(conn: &mut dyn Sql, key: &str, now: i64) -> Result<Option<Approval>, StoreError> {
    macro_rules! reusable {
        ($tiebreak:literal) => {
            concat!(
                "SELECT ",
                cols!(),
                " FROM approvals
                 WHERE key = ?1 AND (
                     (status = 'pending' AND expires_at > ?2)
                     OR (status = 'approved' AND grant_secs = 0 AND uses = 0 AND expires_at > ?2)
                     OR (status = 'approved' AND grant_secs > 0
                         AND coalesce(decided_at, created_at) + grant_secs * 1000 > ?2))
                 ORDER BY created_at DESC, ",
                $tiebreak,
                " LIMIT 1"
            )
        };
    }
    // See `newest_last_tiebreak`.
    let sql = match conn.engine() {
        Engine::Sqlite => reusable!("rowid DESC"),
        Engine::Postgres => reusable!("seq DESC"),
    };
    let found = conn.query_opt(sql, params![key, now])?.as_ref().map(row_to_approval).transpose()?;
    with_votes(conn, found.into_iter().collect()).map(|mut v| v.pop())
}

/// See [`Store::find_standing`]: reusable, or else a denial that stands until the request would have
/// expired.
fn standing_tx(conn: &mut dyn Sql, key: &str, now: i64) -> Result<Option<Approval>, StoreError> {
    if let Some(a) = reusable_tx(conn, key, now)? {
        return Ok(Some(a));
    }
    macro_rules! denied {
        ($tiebreak:literal) => {
            concat!(
                "SELECT ",
                cols!(),
                " FROM approvals WHERE key = ?1 AND status = 'denied' AND expires_at > ?2
                 ORDER BY created_at DESC, ",
                $tiebreak,
                " LIMIT 1"
            )
        };
    }
    // See `newest_last_tiebreak`.
    let sql = match conn.engine() {
        Engine::Sqlite => denied!("rowid DESC"),
        Engine::Postgres => denied!("seq DESC"),
    };
    let denied = conn.query_opt(sql, params![key, now])?.as_ref().map(row_to_approval).transpose()?;
    with_votes(conn, denied.into_iter().collect()).map(|mut v| v.pop())
}
