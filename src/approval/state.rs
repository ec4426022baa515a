//! The signed `requestState` of a held call answered with `input_required` (2026-07-28).
//!
//! The client echoes the state back on its retry; the spec has servers treat it as
//! attacker-controlled. Ours is `mcpg1.` + base64url(payload) + `.` + base64url(MAC), where the
//! payload is JSON binding the approval, the call (its key), the owner, a nonce, the round and
//! the expiry, and the MAC is HMAC-SHA256 under a key of [`KEY_LEN`] random bytes kept in the
//! store (shared by every process on the database). It is verified in constant time; its nonce
//! is accepted once (the store records its use). A state is never an authority on its own: the
//! approval it names must still be approved, and is claimed once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub use crate::store::request_state::KEY_LEN;

pub use crate::gate::OWN_STATE_PREFIX as PREFIX;

/// Signed ahead of the payload, so that no other MAC under the key can pass for a state.
const LABEL: &[u8] = b"mcp-gate/request-state\0";

/// Whether a `requestState` was issued by the proxy (by its form; [`StateKey::verify`] says
/// whether it really was).
pub use crate::gate::is_own_state as is_ours;

/// What a state says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// The approval request.
    #[serde(rename = "a")]
    pub approval_id: String,
    /// The call's key (server, tool, canonical arguments).
    #[serde(rename = "k")]
    pub call_key: String,
    /// The owner's key (`agent:NAME`, `stdio:NAME`, `anonymous`).
    #[serde(rename = "o")]
    pub owner: String,
    /// 16 hex digits; a state is used once.
    #[serde(rename = "n")]
    pub nonce: String,
    /// 0 for the first answer, then one more for each answer to a retry.
    #[serde(rename = "r")]
    pub round: u32,
    /// The answer that carried this state asked the client to open the page (a state-only
    /// answer did not: its retry carries no answer to the page).
    #[serde(rename = "q")]
    pub asked: bool,
    /// When it lapses (the approval's deadline), unix milliseconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

impl Payload {
    /// A fresh nonce for a state.
    pub fn new_nonce() -> Result<String, crate::random::RandomError> {
        crate::random::hex(8)
    }
}

/// Why a state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("requestState was not issued by mcp-gate or was altered")]
    Forged,
    #[error("requestState belongs to another client")]
    OtherOwner,
    #[error("requestState belongs to another call")]
    OtherCall,
    #[error("requestState expired")]
    Expired,
    #[error("requestState already used")]
    Used,
}

/// The key states are signed with.
pub struct StateKey(SecretSlice<u8>);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey")
    }
}

impl StateKey {
    pub fn new(key: SecretSlice<u8>) -> StateKey {
        StateKey(key)
    }

    fn mac(&self, payload: &[u8]) -> [u8; 32] {
        let mut m = match Hmac::<Sha256>::new_from_slice(self.0.expose_secret()) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        m.update(LABEL);
        m.update(payload);
        m.finalize().into_bytes().into()
    }

    /// The state for `payload`.
    pub fn sign(&self, payload: &Payload) -> String {
        let bytes = serde_json::to_vec(payload).unwrap_or_default();
        let mac = self.mac(&bytes);
        format!("{PREFIX}{}.{}", URL_SAFE_NO_PAD.encode(&bytes), URL_SAFE_NO_PAD.encode(mac))
    }

    /// The payload of a state this key signed, checked against the caller's owner and call and
    /// the time `now`. The nonce is not checked here (the store knows which were used).
    pub fn verify(&self, state: &str, owner: &str, call_key: &str, now: i64) -> Result<Payload, StateError> {
        let p = self.open(state)?;
        if p.owner != owner {
            return Err(StateError::OtherOwner);
        }
        if p.call_key != call_key {
            return Err(StateError::OtherCall);
        }
        if now > p.expires_at {
            return Err(StateError::Expired);
        }
        Ok(p)
    }

    /// Whether this key signed `state` (whoever it was for, expired or not).
    pub fn signed(&self, state: &str) -> bool {
        self.open(state).is_ok()
    }

    /// The payload of a state whose MAC this key made.
    fn open(&self, state: &str) -> Result<Payload, StateError> {
        let rest = state.strip_prefix(PREFIX).ok_or(StateError::Forged)?;
        let (payload, mac) = rest.split_once('.').ok_or(StateError::Forged)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| StateError::Forged)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| StateError::Forged)?;
        if !crate::secret::constant_time_eq(&self.mac(&payload), &mac) {
            return Err(StateError::Forged);
        }
        serde_json::from_slice(&payload).map_err(|_| StateError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn key(byte: u8) -> StateKey {
        StateKey::new(SecretSlice::from(vec![byte; KEY_LEN]))
    }

    fn payload() -> Payload {
        Payload {
            approval_id: "apr_0123456789abcdef".into(),
            call_key: "k1".into(),
            owner: "stdio:mcp".into(),
            nonce: "00112233445566ff".into(),
            round: 2,
            asked: false,
            expires_at: NOW + 60_000,
        }
    }

    #[test]
    fn a_signed_state_round_trips() {
        let k = key(0x0b);
        let state = k.sign(&payload());
        assert!(is_ours(&state), "{state}");
        assert_eq!(k.verify(&state, "stdio:mcp", "k1", NOW), Ok(payload()));
        assert!(k.signed(&state) && !key(0x0c).signed(&state));
        assert!(!is_ours("upstream-state"));
    }

    /// The layout, against an independent computation: HMAC-SHA256 with the key 32 bytes of
    /// 0x0b over the label and the payload bytes (Python's `hmac` module gave the MAC).
    #[test]
    fn the_mac_covers_the_label_and_the_payload_bytes() {
        let state = key(0x0b).sign(&payload());
        let json = r#"{"a":"apr_0123456789abcdef","k":"k1","o":"stdio:mcp","n":"00112233445566ff","r":2,"q":false,"e":1800000060000}"#;
        let (body, mac) = state.strip_prefix(PREFIX).unwrap().split_once('.').unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap(), json.as_bytes());
        assert_eq!(hex::encode(URL_SAFE_NO_PAD.decode(mac).unwrap()), FIXED_MAC);
    }

    const FIXED_MAC: &str = "904ec701f1cfd3bcc9ac9da2647714b75f131c021ba116da0cae55d0063e1e88";

    #[test]
    fn every_altered_byte_is_refused() {
        let k = key(7);
        let state = k.sign(&payload());
        // Each character of the text.
        for i in 0..state.len() {
            let mut bytes = state.clone().into_bytes();
            bytes[i] ^= 0x01;
            let Ok(altered) = String::from_utf8(bytes) else { continue };
            assert!(k.verify(&altered, "stdio:mcp", "k1", NOW).is_err(), "character {i}: {altered}");
        }
        // Each byte of the decoded payload and MAC, encoded again.
        let (body, mac) = state.strip_prefix(PREFIX).unwrap().split_once('.').unwrap();
        let (body, mac) = (URL_SAFE_NO_PAD.decode(body).unwrap(), URL_SAFE_NO_PAD.decode(mac).unwrap());
        for i in 0..body.len() + mac.len() {
            let (mut b, mut m) = (body.clone(), mac.clone());
            if i < b.len() {
                b[i] ^= 0x01;
            } else {
                m[i - b.len()] ^= 0x01;
            }
            let altered = format!("{PREFIX}{}.{}", URL_SAFE_NO_PAD.encode(&b), URL_SAFE_NO_PAD.encode(&m));
            assert_eq!(k.verify(&altered, "stdio:mcp", "k1", NOW), Err(StateError::Forged), "byte {i}");
        }
        for bad in ["", "mcpg1.", "mcpg1..", "mcpg1.e30.", "mcpg1.e30", "mcpg1.a.b.c", &state[..state.len() - 1]] {
            assert_eq!(k.verify(bad, "stdio:mcp", "k1", NOW), Err(StateError::Forged), "{bad}");
        }
    }

    #[test]
    fn other_key_owner_call_or_time_are_refused() {
        let state = key(1).sign(&payload());
        assert_eq!(key(2).verify(&state, "stdio:mcp", "k1", NOW), Err(StateError::Forged));
        assert_eq!(key(1).verify(&state, "agent:mcp", "k1", NOW), Err(StateError::OtherOwner));
        assert_eq!(key(1).verify(&state, "stdio:mcp", "k2", NOW), Err(StateError::OtherCall));
        assert_eq!(key(1).verify(&state, "stdio:mcp", "k1", NOW + 60_001), Err(StateError::Expired));
        assert!(key(1).verify(&state, "stdio:mcp", "k1", NOW + 60_000).is_ok(), "valid up to its expiry");
    }

    /// A payload with a field more than ours (signed with the right key) is not read loosely.
    #[test]
    fn unknown_payload_fields_are_refused() {
        let k = key(3);
        let json = br#"{"a":"x","k":"k1","o":"stdio:mcp","n":"00","r":0,"q":true,"e":1900000000000,"x":1}"#;
        let state = format!("{PREFIX}{}.{}", URL_SAFE_NO_PAD.encode(json), URL_SAFE_NO_PAD.encode(k.mac(json)));
        assert_eq!(k.verify(&state, "stdio:mcp", "k1", NOW), Err(StateError::Forged));
    }

    /// A nonce is used once: the store refuses its second use, whatever the state's fate.
    #[tokio::test]
    async fn a_reused_nonce_is_refused_by_the_store() {
        let store = crate::store::Store::open(crate::store::Location::Memory).await.unwrap();
        let k = StateKey::new(store.request_state_key().await.unwrap());
        let p = payload();
        let state = k.sign(&p);
        let checked = k.verify(&state, "stdio:mcp", "k1", NOW).unwrap();
        let used = crate::store::request_state::StateUse {
            nonce: checked.nonce.clone(),
            approval_id: checked.approval_id.clone(),
            owner: checked.owner.clone(),
            expires_at: checked.expires_at,
        };
        assert!(store.use_request_state(used.clone()).await.unwrap());
        assert!(k.verify(&state, "stdio:mcp", "k1", NOW).is_ok(), "the signature alone still holds");
        assert!(!store.use_request_state(used).await.unwrap(), "the second use is refused");
    }
}
