//! Both ends prove they know the token before it travels.
//!
//! Whoever listens on the approval address first gets the connections of every process that
//! looks for the hub and of `mcp-gate approvals`. Before any of them sends its bearer token, it
//! runs this exchange with the listener, on two unauthenticated routes:
//!
//! 1. `POST /api/v1/handshake` `{"key_id", "client_nonce"}`: the client names which key it holds
//!    (a one-way id of it) and sends 32 random bytes.
//! 2. The server answers `{"server_nonce", "server_proof"}`: its own 32 random bytes and
//!    `HMAC-SHA256(key, "mcp-gate/server\0" || client_nonce || server_nonce)`. The client checks
//!    the proof; a listener that does not know the key cannot compute it, and is sent nothing more.
//! 3. `POST /api/v1/handshake/confirm` `{"server_nonce", "client_proof"}` with
//!    `HMAC-SHA256(key, "mcp-gate/client\0" || server_nonce || client_nonce)`: the client proves
//!    it too. Only after the server accepts it does the client use its bearer token.
//!
//! The key is the SHA-256 of the token, which the server keeps for the shared approver token and
//! for every `[[approvers]]` entry (`token_sha256` is therefore as private as the token: the
//! configuration file must not be readable by others). Nonces are single use and expire.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `POST` here first.
pub const HELLO: &str = "/api/v1/handshake";
/// Then here.
pub const CONFIRM: &str = "/api/v1/handshake/confirm";

const SERVER_LABEL: &[u8] = b"mcp-gate/server\0";
const CLIENT_LABEL: &[u8] = b"mcp-gate/client\0";
const KEY_ID_LABEL: &[u8] = b"mcp-gate/key-id\0";

/// Bytes of randomness in each nonce.
pub const NONCE_BYTES: usize = 32;

/// Step 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub key_id: String,
    pub client_nonce: String,
}

/// Step 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    pub server_nonce: String,
    pub server_proof: String,
}

/// Step 3.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confirm {
    pub server_nonce: String,
    pub client_proof: String,
}

/// The key both ends derive from a token.
pub fn key_of(token: &str) -> [u8; 32] {
    crate::identity::sha256(token)
}

/// The public id of a key: names it without revealing it.
pub fn key_id(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(KEY_ID_LABEL);
    h.update(key);
    hex::encode(&h.finalize()[..16])
}

fn proof(key: &[u8; 32], label: &[u8], first: &str, second: &str) -> String {
    let mut m = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    m.update(label);
    m.update(first.as_bytes());
    m.update(b"\0");
    m.update(second.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// What the server shows: it knows `key`.
pub fn server_proof(key: &[u8; 32], client_nonce: &str, server_nonce: &str) -> String {
    proof(key, SERVER_LABEL, client_nonce, server_nonce)
}

/// What the client shows: it knows `key` too.
pub fn client_proof(key: &[u8; 32], client_nonce: &str, server_nonce: &str) -> String {
    proof(key, CLIENT_LABEL, server_nonce, client_nonce)
}

/// A fresh nonce, or an error when the system has no randomness (then nothing is sent).
pub fn nonce() -> Result<String, crate::random::RandomError> {
    let mut bytes = [0u8; NONCE_BYTES];
    crate::random::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Whether `text` looks like a nonce (hex of [`NONCE_BYTES`] bytes).
pub fn is_nonce(text: &str) -> bool {
    text.len() == 2 * NONCE_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why the listener was not trusted with the token.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Nothing listens (connection refused).
    #[error("nothing answers: {0}")]
    Refused(String),
    /// No answer, or not HTTP.
    #[error("no usable answer: {0}")]
    Unreachable(String),
    /// The listener answered 401 to our key id: an mcp-gate that does not know our token.
    #[error("it does not know our token")]
    UnknownKey,
    /// The listener could not prove it knows the token: it is not the approval server we
    /// trust, whatever it is.
    #[error("it did not prove that it knows the token ({0}); the token was not sent")]
    NoProof(String),
    /// The server refused our proof.
    #[error("it refused our proof of the token: {0}")]
    Rejected(String),
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

impl HandshakeError {
    /// Whether the listener failed to prove that it knows the token (an impostor, or an
    /// mcp-gate too old to prove it).
    pub fn is_unproven(&self) -> bool {
        matches!(self, HandshakeError::NoProof(_))
    }
}

/// Runs the exchange with the listener at `base` (`http://HOST:PORT`). `Ok` means the listener
/// proved it knows `token` and accepted our proof: the token may now be sent there.
pub async fn verify_listener(http: &reqwest::Client, base: &str, token: &str) -> Result<(), HandshakeError> {
    let key = key_of(token);
    let client_nonce = nonce().map_err(|e| HandshakeError::Random(e.to_string()))?;
    let hello = Hello { key_id: key_id(&key), client_nonce: client_nonce.clone() };
    let sent = http.post(format!("{base}{HELLO}")).json(&hello).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Err(HandshakeError::Refused(e.to_string())),
        Err(e) => return Err(HandshakeError::Unreachable(e.to_string())),
    };
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        // Only an mcp-gate answers 401 with the API's error code for an unknown key.
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if body["error"]["code"] == "unknown_key" {
            return Err(HandshakeError::UnknownKey);
        }
        return Err(HandshakeError::NoProof(format!("{HELLO} answered {status}")));
    }
    if !status.is_success() {
        return Err(HandshakeError::NoProof(format!("{HELLO} answered {status}")));
    }
    let reply: HelloReply = match resp.json().await {
        Ok(r) => r,
        Err(e) => return Err(HandshakeError::NoProof(format!("{HELLO} answered something else: {e}"))),
    };
    let expected = server_proof(&key, &client_nonce, &reply.server_nonce);
    if !is_nonce(&reply.server_nonce)
        || !crate::secret::constant_time_eq(expected.as_bytes(), reply.server_proof.as_bytes())
    {
        return Err(HandshakeError::NoProof("wrong proof".into()));
    }
    let confirm = Confirm {
        client_proof: client_proof(&key, &client_nonce, &reply.server_nonce),
        server_nonce: reply.server_nonce,
    };
    let resp = http
        .post(format!("{base}{CONFIRM}"))
        .json(&confirm)
        .send()
        .await
        .map_err(|e| HandshakeError::Unreachable(e.to_string()))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(HandshakeError::Rejected(format!("{CONFIRM} answered {}", resp.status())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_the_key_the_direction_and_both_nonces() {
        let key = key_of("token-0123456789abcdef");
        let other = key_of("token-0123456789abcdeg");
        let (c, s) = (nonce().unwrap(), nonce().unwrap());
        assert!(is_nonce(&c) && is_nonce(&s) && c != s);
        let p = server_proof(&key, &c, &s);
        assert_eq!(p, server_proof(&key, &c, &s));
        assert_ne!(p, server_proof(&other, &c, &s));
        assert_ne!(p, client_proof(&key, &c, &s), "a server proof is not a client proof");
        assert_ne!(p, server_proof(&key, &s, &c));
        assert_ne!(p, server_proof(&key, &c, &nonce().unwrap()));
        assert_ne!(key_id(&key), key_id(&other));
        assert!(!key_id(&key).contains(&hex::encode(key)[..8]));
    }
}
