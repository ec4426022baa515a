//! The store's side of signed request states (see [`crate::approval::state`]): the signing key,
//! created once and shared by every process on the database, and the states already used.

use secrecy::SecretSlice;

use super::approvals::claim_in;
use super::db::{Sql, params};
use super::{Claim, Store, StoreError};

/// The name of the request-state key in `secrets`.
const KEY_NAME: &str = "request_state_key";

/// The length of the request-state key, in bytes.
pub const KEY_LEN: usize = 32;

/// One use of a request state, as recorded.
#[derive(Debug, Clone)]
pub struct StateUse {
    pub nonce: String,
    pub approval_id: String,
    pub owner: String,
    /// When the state lapses (it is refused afterwards, used or not), unix milliseconds.
    pub expires_at: i64,
}

impl Store {
    /// The key request states are signed with: created with fresh random bytes the first time any
    /// process asks (`INSERT ... ON CONFLICT DO NOTHING`), then read, so every process on this database signs
    /// and verifies with the same key, across restarts.
    pub async fn request_state_key(&self) -> Result<SecretSlice<u8>, StoreError> {
        let now = self.now_ms();
        self.call(move |conn| {
            let mut fresh = vec![0u8; KEY_LEN];
            crate::random::fill(&mut fresh)?;
            let written = conn.write(|tx| {
                tx.execute(
                    "INSERT INTO secrets (name, value, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![KEY_NAME, fresh, now],
                )?;
                tx.query_one("SELECT value FROM secrets WHERE name = ?1", params![KEY_NAME])?.get::<Vec<u8>>(0)
            });
            fresh.fill(0);
            let key = written?;
            if key.len() != KEY_LEN {
                return Err(StoreError::Corrupt(format!("{KEY_NAME} has {} bytes, not {KEY_LEN}", key.len())));
            }
            Ok(SecretSlice::from(key))
        })
        .await
    }

    /// Whether a request state's nonce was already used.
    pub async fn request_state_used(&self, nonce: &str) -> Result<bool, StoreError> {
        let nonce = nonce.to_owned();
        self.call(move |conn| {
            Ok(conn.query_opt("SELECT 1 FROM request_state_uses WHERE nonce = ?1", params![nonce])?.is_some())
        })
        .await
    }

    /// Records the use of a request state; false when it was already used (a replay).
    pub async fn use_request_state(&self, used: StateUse) -> Result<bool, StoreError> {
        let now = self.now_ms();
        self.call(move |conn| conn.write(|tx| insert_use(tx, &used, now))).await
    }

    /// Claims approval `used.approval_id` (as [`Store::claim_execution`] does) and records the use
    /// of the request state that asked for it, in one transaction: `None` when the state was
    /// already used, and then nothing is claimed.
    pub async fn claim_with_state(&self, used: StateUse) -> Result<Option<Claim>, StoreError> {
        let now = self.now_ms();
        let instance = self.instance().to_owned();
        self.call(move |conn| {
            conn.write_durable(|tx| {
                if !insert_use(tx, &used, now)? {
                    // A replay: nothing is claimed (only the lapsed uses are forgotten).
                    return Ok(None);
                }
                let (claim, _) = claim_in(tx, &used.approval_id, now, &instance)?;
                Ok(Some(claim))
            })
        })
        .await
    }
}

/// Records a use, and forgets the uses of states that lapsed (so the table holds only the states
/// that could still be presented).
fn insert_use(tx: &mut dyn Sql, used: &StateUse, now: i64) -> Result<bool, StoreError> {
    tx.execute("DELETE FROM request_state_uses WHERE expires_at < ?1", params![now])?;
    let inserted = tx.execute(
        "INSERT INTO request_state_uses (nonce, approval_id, owner, at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        params![used.nonce, used.approval_id, used.owner, now, used.expires_at],
    )?;
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::store::Location;
    use crate::store::testutil::TempDir;

    #[tokio::test]
    async fn every_store_on_one_database_reads_the_same_key() {
        let dir = TempDir::new("state-key");
        let loc = Location::File(dir.path().join("gate.db"));
        let a = Store::open(loc.clone()).await.unwrap();
        let b = Store::open(loc.clone()).await.unwrap();
        let ka = a.request_state_key().await.unwrap();
        let kb = b.request_state_key().await.unwrap();
        assert_eq!(ka.expose_secret().len(), KEY_LEN);
        assert_eq!(ka.expose_secret(), kb.expose_secret());
        drop((a, b));
        let again = Store::open(loc).await.unwrap().request_state_key().await.unwrap();
        assert_eq!(again.expose_secret(), ka.expose_secret(), "the key survives a restart");
        let other =
            Store::open(crate::store::testutil::location().await).await.unwrap().request_state_key().await.unwrap();
        assert_ne!(other.expose_secret(), ka.expose_secret(), "another database has its own key");
    }

    #[tokio::test]
    async fn a_nonce_is_used_once() {
        let store = Store::open(crate::store::testutil::location().await).await.unwrap();
        let used = StateUse {
            nonce: "n1".into(),
            approval_id: "apr_1".into(),
            owner: "anonymous".into(),
            expires_at: i64::MAX,
        };
        assert!(!store.request_state_used("n1").await.unwrap());
        assert!(store.use_request_state(used.clone()).await.unwrap());
        assert!(store.request_state_used("n1").await.unwrap());
        assert!(!store.use_request_state(used.clone()).await.unwrap(), "a replay");
        assert_eq!(store.claim_with_state(used).await.unwrap().map(|_| ()), None, "nothing claimed on a replay");
    }

    /// The uses of lapsed states are forgotten by the next use (such a state is refused as
    /// expired, used or not).
    #[tokio::test(start_paused = true)]
    async fn lapsed_uses_are_forgotten() {
        let store = Store::open_with_clock(crate::store::testutil::location().await, crate::store::Clock::tokio(1_000))
            .await
            .unwrap();
        let old = StateUse { nonce: "old".into(), approval_id: "a".into(), owner: "o".into(), expires_at: 1_500 };
        assert!(store.use_request_state(old).await.unwrap());
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let new = StateUse { nonce: "new".into(), approval_id: "a".into(), owner: "o".into(), expires_at: 9_000 };
        assert!(store.use_request_state(new).await.unwrap());
        assert!(!store.request_state_used("old").await.unwrap());
        assert!(store.request_state_used("new").await.unwrap());
    }
}
