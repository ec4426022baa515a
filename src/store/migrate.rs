//! Numbered schema migrations, embedded in the binary, one list per engine.
//!
//! To change the schema add `migrations/NNNN_what.sql` and `migrations/postgres/NNNN_what.sql` (the
//! same change in PostgreSQL's dialect) and a line to each list; never edit a file that has
//! shipped. Both engines record the same versions in `schema_version`.

use super::StoreError;
use super::db::{Conn, Engine, Sql, params};

struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

macro_rules! migrations {
    ($dir:literal) => {
        &[
            Migration { version: 1, name: "init", sql: include_str!(concat!($dir, "0001_init.sql")) },
            Migration { version: 2, name: "audit", sql: include_str!(concat!($dir, "0002_audit.sql")) },
            Migration { version: 3, name: "dashboard", sql: include_str!(concat!($dir, "0003_dashboard.sql")) },
            Migration {
                version: 4,
                name: "vote_credential",
                sql: include_str!(concat!($dir, "0004_vote_credential.sql")),
            },
            Migration {
                version: 5,
                name: "one_pending_and_claims",
                sql: include_str!(concat!($dir, "0005_one_pending_and_claims.sql")),
            },
            Migration { version: 6, name: "channel", sql: include_str!(concat!($dir, "0006_channel.sql")) },
            Migration { version: 7, name: "tasks", sql: include_str!(concat!($dir, "0007_tasks.sql")) },
            Migration { version: 8, name: "request_state", sql: include_str!(concat!($dir, "0008_request_state.sql")) },
            Migration { version: 9, name: "approvers", sql: include_str!(concat!($dir, "0009_approvers.sql")) },
        ]
    };
}

const MIGRATIONS: &[Migration] = migrations!("migrations/");
const POSTGRES_MIGRATIONS: &[Migration] = migrations!("migrations/postgres/");

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: u32 = 9;

/// The versions of every migration this build embeds, in order. Numbers are reserved ahead for
/// schema changes made side by side, so the list may have gaps; a database records each one it
/// applied.
#[cfg(test)]
pub(super) fn versions() -> Vec<u32> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

/// Applies every migration newer than the database's version, all in one write transaction
/// (`BEGIN IMMEDIATE`, or PostgreSQL's write lock) so that two processes opening a fresh
/// database at once do not both apply them.
pub(super) fn run(conn: &mut Conn, now: i64) -> Result<(), StoreError> {
    let (list, int, strict) = match conn.engine() {
        Engine::Sqlite => (MIGRATIONS, "INTEGER", " STRICT"),
        Engine::Postgres => (POSTGRES_MIGRATIONS, "BIGINT", ""),
    };
    conn.write(|tx| {
        tx.batch(&format!(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version    {int} NOT NULL PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at {int} NOT NULL
             ){strict};"
        ))?;
        let current: u32 =
            tx.query_one("SELECT max(version) FROM schema_version", params![])?.get::<Option<u32>>(0)?.unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found: current, supported: SCHEMA_VERSION });
        }
        for m in list.iter().filter(|m| m.version > current) {
            tx.batch(m.sql).map_err(|source| StoreError::Migration {
                version: m.version,
                name: m.name,
                source: Box::new(source),
            })?;
            tx.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![m.version, m.name, now],
            )?;
            tracing::info!(version = m.version, name = m.name, "applied database migration");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "migration {} out of order", pair[1].name);
        }
        assert_eq!(MIGRATIONS.first().map(|m| m.version), Some(1));
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }

    #[test]
    fn duplicate_pending_requests_of_old_databases_are_resolved_before_the_unique_index() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL,
             applied_at INTEGER NOT NULL) STRICT;",
        )
        .unwrap();
        for m in &MIGRATIONS[..4] {
            conn.execute_batch(m.sql).unwrap();
            conn.execute("INSERT INTO schema_version VALUES (?1, ?2, 0)", rusqlite::params![m.version, m.name])
                .unwrap();
        }
        for (id, key, created) in [("old", "k", 1), ("mid", "k", 2), ("new", "k", 3), ("alone", "k2", 1)] {
            conn.execute(
                "INSERT INTO approvals (id, key, server, tool, arguments, workflow, required_approvals, trace,
                     created_at, expires_at, status)
                 VALUES (?1, ?2, 's', 't', '{}', 'default', 1, '[]', ?3, 9999999999999, 'pending')",
                rusqlite::params![id, key, created],
            )
            .unwrap();
        }
        let mut conn = Conn::Sqlite(conn);
        run(&mut conn, 0).unwrap();
        let Conn::Sqlite(conn) = conn else { unreachable!("opened as SQLite") };
        let statuses: Vec<(String, String)> = conn
            .prepare("SELECT id, status FROM approvals ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want = [("alone", "pending"), ("mid", "expired"), ("new", "pending"), ("old", "expired")];
        assert_eq!(statuses, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
        let reasons: i64 = conn
            .query_row(
                "SELECT count(*) FROM approval_transitions WHERE to_status = 'expired' AND reason LIKE 'superseded%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(reasons, 2);
        let dup = conn.execute(
            "INSERT INTO approvals (id, key, server, tool, arguments, workflow, required_approvals, trace,
                 created_at, expires_at, status) VALUES ('x', 'k', 's', 't', '{}', 'd', 1, '[]', 4, 5, 'pending')",
            [],
        );
        assert!(dup.is_err(), "one pending request per key");
    }

    /// Requests stored before the channel and the approvers were recorded keep every field; those
    /// two are NULL.
    #[test]
    fn columns_added_later_keep_older_rows() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL,
             applied_at INTEGER NOT NULL) STRICT;",
        )
        .unwrap();
        for m in &MIGRATIONS[..5] {
            conn.execute_batch(m.sql).unwrap();
            conn.execute("INSERT INTO schema_version VALUES (?1, ?2, 0)", rusqlite::params![m.version, m.name])
                .unwrap();
        }
        conn.execute(
            "INSERT INTO approvals (id, key, server, tool, arguments, workflow, required_approvals, trace,
                 created_at, expires_at, status) VALUES ('old', 'k', 's', 't', '{}', 'd', 1, '[]', 4, 5, 'pending')",
            [],
        )
        .unwrap();
        let mut conn = Conn::Sqlite(conn);
        run(&mut conn, 0).unwrap();
        let Conn::Sqlite(conn) = conn else { unreachable!("opened as SQLite") };
        let (tool, channel, approvers): (String, Option<String>, Option<String>) = conn
            .query_row("SELECT tool, channel, approvers FROM approvals WHERE id = 'old'", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((tool.as_str(), channel, approvers), ("t", None, None));
    }
}
