//! Changes made by other replicas sharing a PostgreSQL store, heard through `LISTEN`/`NOTIFY`.
//!
//! Every replica announces each change it makes to an approval request on the channel
//! [`CHANNEL`] ([`Store::announce`], sent after the change is committed, so a listener that reads
//! the request sees it). Each replica listens on a connection of its own, on a thread of its own,
//! and hands what other replicas announced to the approvals ([`Heard::Change`]): a call held here
//! and approved through another replica is woken as soon as the notification arrives, with no
//! polling. When the listening connection is lost and comes back, notifications sent meanwhile
//! are gone: [`Heard::Resync`] then makes every waiting call re-read its request.
//!
//! The listening connection also elects the replica that announces what no single change
//! causes (requests about to expire): the one whose connection holds the session advisory lock
//! [`LEADER_LOCK`] ([`Store::leads`]). When that replica goes, its connection and lock go with it,
//! and another takes the lock within half a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{DatabaseUrl, Sql, Store, StoreError};

/// The notification channel of every mcp-gate replica on a database.
pub const CHANNEL: &str = "mcp_gate_changes";

/// The session advisory lock held by the replica that leads ("mcpgate" + 1).
pub const LEADER_LOCK: i64 = super::db::WRITE_LOCK + 1;

/// How long the listener waits for a notification before checking whether the store is still open
/// (and, when it does not lead, whether it can).
const POLL_STOP: Duration = Duration::from_millis(500);

/// The pause before reconnecting a lost listening connection (doubling up to [`MAX_PAUSE`]).
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// One announcement, as sent on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The instance that made the change ([`Store::instance`]); a replica ignores its own.
    pub instance: String,
    /// The change's kind (`approved`, `denied`…).
    pub kind: String,
    /// The approval request.
    pub id: String,
    pub actor: Option<String>,
}

/// What the listener hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Another replica changed a request.
    Change(Announcement),
    /// Notifications may have been missed (the listening connection was lost): re-read everything
    /// that waits.
    Resync,
}

impl Store {
    /// Tells the other replicas sharing this PostgreSQL store that request `id` changed. Queued
    /// behind the change's own commit; nothing to do on SQLite (processes sharing a file hear of
    /// changes through the machine's hub).
    pub fn announce(&self, kind: &str, id: &str, actor: Option<&str>) {
        if self.listener.is_none() {
            return;
        }
        let note = Announcement {
            instance: self.instance().to_owned(),
            kind: kind.to_owned(),
            id: id.to_owned(),
            actor: actor.map(str::to_owned),
        };
        let Ok(payload) = serde_json::to_string(&note) else { return };
        let sent = self.send_detached(move |conn| {
            conn.query("SELECT pg_notify(?1, ?2)", super::params![CHANNEL, payload]).map(drop)
        });
        if let Err(e) = sent {
            tracing::warn!(id, "could not announce a change to the other replicas: {e}");
        }
    }

    /// Whether this replica announces what belongs to no single change (expiry warnings): always on
    /// SQLite (where the machine's hub decides who runs those services), on PostgreSQL only the
    /// replica that holds [`LEADER_LOCK`].
    pub fn leads(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| l.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// What other replicas announce; `None` for an SQLite store.
    pub fn heard(&self) -> Option<broadcast::Receiver<Heard>> {
        self.listener.as_ref().map(|l| l.subscribe())
    }
}

/// Starts the listening thread for the store whose liveness `alive` tracks; it ends when `alive`
/// can no longer be upgraded (every handle dropped). Returns once it listens, so that no change
/// announced after the store opened is missed.
pub(super) async fn spawn<T: Send + Sync + 'static>(
    url: DatabaseUrl,
    me: Arc<str>,
    alive: Weak<T>,
    leader: Arc<AtomicBool>,
) -> Result<broadcast::Sender<Heard>, StoreError> {
    let (tx, _) = broadcast::channel(1024);
    let out = tx.clone();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("mcp-gate-listen".into()).spawn(move || match listen(&url) {
        Ok(client) => {
            let _ = ready_tx.send(Ok(()));
            run(&url, client, &me, &alive, &out, &leader);
        }
        Err(e) => {
            let _ = ready_tx.send(Err(e));
        }
    })?;
    ready.await.map_err(|_| StoreError::Aborted)??;
    Ok(tx)
}

fn listen(url: &DatabaseUrl) -> Result<postgres::Client, StoreError> {
    let mut client = url.connect_as("mcp-gate-listen")?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(client)
}

fn run<T>(
    url: &DatabaseUrl,
    mut client: postgres::Client,
    me: &str,
    alive: &Weak<T>,
    out: &broadcast::Sender<Heard>,
    leader: &AtomicBool,
) {
    let mut pause = FIRST_PAUSE;
    loop {
        let lost = loop {
            if alive.strong_count() == 0 {
                return;
            }
            if !leader.load(Ordering::Relaxed) {
                match client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]) {
                    Ok(row) if row.get::<_, bool>(0) => {
                        leader.store(true, Ordering::Relaxed);
                        tracing::info!(database = %url, "this replica now announces expiring requests");
                    }
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                }
            }
            // A fresh iterator each time: its timer is reset only by a notification.
            let next = postgres::fallible_iterator::FallibleIterator::next(
                &mut client.notifications().timeout_iter(POLL_STOP),
            );
            match next {
                Ok(Some(n)) => match serde_json::from_str::<Announcement>(n.payload()) {
                    Ok(note) if note.instance != me => {
                        let _ = out.send(Heard::Change(note));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("ignoring a malformed change notification: {e}"),
                },
                // Nothing within POLL_STOP, or the connection ended.
                Ok(None) if client.is_closed() => break "the connection closed".to_owned(),
                Ok(None) => {}
                Err(e) => break e.to_string(),
            }
        };
        // The lock went with the connection.
        leader.store(false, Ordering::Relaxed);
        tracing::warn!(database = %url, "lost the connection that hears other replicas' changes: {lost}");
        loop {
            if alive.strong_count() == 0 {
                return;
            }
            std::thread::sleep(pause);
            match listen(url) {
                Ok(c) => {
                    client = c;
                    pause = FIRST_PAUSE;
                    tracing::info!(database = %url, "listening for other replicas' changes again");
                    let _ = out.send(Heard::Resync);
                    break;
                }
                Err(e) => {
                    pause = (pause * 2).min(MAX_PAUSE);
                    tracing::warn!(database = %url, "cannot listen for other replicas' changes yet: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::testutil::shared_location;
    use crate::store::{Location, params};

    async fn next(heard: &mut broadcast::Receiver<Heard>) -> Heard {
        tokio::time::timeout(Duration::from_secs(10), heard.recv()).await.expect("heard within 10 s").unwrap()
    }

    /// A change announced by one store is heard by the other, not by itself; when the listening
    /// connection is cut, the store listens again and says that it may have missed some.
    #[tokio::test]
    async fn changes_are_heard_by_the_others_and_a_lost_listener_comes_back() {
        let (loc, _dir) = shared_location("listen").await;
        let a = crate::store::Store::open(loc.clone()).await.unwrap();
        let b = crate::store::Store::open(loc.clone()).await.unwrap();
        let Location::Postgres(_) = loc else {
            assert!(a.heard().is_none(), "SQLite stores hear each other through the hub");
            return;
        };
        let mut heard = a.heard().unwrap();
        b.announce("approved", "apr_1", Some("alice"));
        let Heard::Change(note) = next(&mut heard).await else { panic!("a change") };
        assert_eq!((note.kind.as_str(), note.id.as_str(), note.actor.as_deref()), ("approved", "apr_1", Some("alice")));
        assert_eq!(note.instance, b.instance());
        a.announce("denied", "apr_2", None);
        b.announce("denied", "apr_3", None);
        let Heard::Change(note) = next(&mut heard).await else { panic!("a change") };
        assert_eq!(note.id, "apr_3", "a store does not hear its own announcements");

        // Cut every listening connection (the server ends them as an administrator would).
        let cut = b
            .call(|c| {
                c.query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'mcp-gate-listen'",
                    params![],
                )?
                .get::<i64>(0)
            })
            .await
            .unwrap();
        assert!(cut >= 2, "both stores listen: {cut}");
        assert_eq!(next(&mut heard).await, Heard::Resync);
        b.announce("approved", "apr_4", None);
        let Heard::Change(note) = next(&mut heard).await else { panic!("a change after the reconnection") };
        assert_eq!(note.id, "apr_4");
    }
}
