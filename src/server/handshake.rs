//! Both ends prove they know the token before it travels, and which listener they speak to.
//!
//! Whoever listens on the approval address first gets the connections of every process that
//! looks for the hub and of `mcp-gate approvals`. Before any of them sends its bearer token, it
//! runs this exchange with the listener, on two unauthenticated routes:
//!
//! 1. `POST /api/v1/handshake` `{"key_id", "client_nonce"}`: the client names which key it holds
//!    (a one-way id of it) and sends 32 random bytes.
//! 2. The server answers `{"server_nonce", "listener", "server_proof"}`: its own 32 random bytes,
//!    the local address of the connection it accepted the request on (`"127.0.0.1:8377"`), and
//!    `HMAC-SHA256(key, "mcp-gate/server/2\0" || client_nonce || server_nonce || listener)`. The
//!    client checks the proof; a listener that does not know the key cannot compute it, and is
//!    sent nothing more.
//! 3. Over plain `http`, the client also checks that `listener` is the address it connected to
//!    (or, for a listener that is not a loopback address, reached through a forward that keeps the
//!    port, that it has the same port). Another program on the approval address could relay the
//!    bytes to the real server (which serves on a free port when the address is taken): the
//!    server's proof would be right, but for the server's own address, not for the relay's. Such a
//!    listener is sent nothing more.
//!    Over `https` the certificate already names the peer, and a proxy that terminates TLS in
//!    front of the server is one the client chose: the proof is checked for the listener named,
//!    whatever it is. The exchange is answered at the URL asked or not at all: a redirect fails it.
//! 4. `POST /api/v1/handshake/confirm` `{"server_nonce", "client_proof"}` with
//!    `HMAC-SHA256(key, "mcp-gate/client/2\0" || server_nonce || client_nonce || listener)`: the
//!    client proves it too, for the same listener; the server checks it against the local address
//!    of the connection the confirmation came on. Only after the server accepts it does the client
//!    use its bearer token.
//!
//! The key is the SHA-256 of the token, which the server keeps for the shared approver token and
//! for every `[[approvers]]` entry (`token_sha256` is therefore as private as the token: the
//! configuration file must not be readable by others). Nonces are single use and expire.
//!
//! The labels carry the exchange's version (`/2`: since the proofs name the listener), so that a
//! proof of another version never passes for one of this version: an mcp-gate from before the
//! listener was named cannot prove itself to this one, nor this one to it, and no token travels
//! between them.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `POST` here first.
pub const HELLO: &str = "/api/v1/handshake";
/// Then here.
pub const CONFIRM: &str = "/api/v1/handshake/confirm";

const SERVER_LABEL: &[u8] = b"mcp-gate/server/2\0";
const CLIENT_LABEL: &[u8] = b"mcp-gate/client/2\0";
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
    /// The local address of the connection the server accepted step 1 on, as the server writes
    /// it (`"127.0.0.1:8377"`, `"[::1]:8377"`). An mcp-gate from before version 2 of the
    /// exchange does not name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
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

fn proof(key: &[u8; 32], label: &[u8], first: &str, second: &str, listener: &str) -> String {
    let mut m = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    m.update(label);
    for (i, part) in [first, second, listener].into_iter().enumerate() {
        if i > 0 {
            m.update(b"\0");
        }
        m.update(part.as_bytes());
    }
    hex::encode(m.finalize().into_bytes())
}

/// What the server shows: it knows `key`, and speaks from `listener`.
pub fn server_proof(key: &[u8; 32], client_nonce: &str, server_nonce: &str, listener: &str) -> String {
    proof(key, SERVER_LABEL, client_nonce, server_nonce, listener)
}

/// What the client shows: it knows `key` too, and spoke to `listener`.
pub fn client_proof(key: &[u8; 32], client_nonce: &str, server_nonce: &str, listener: &str) -> String {
    proof(key, CLIENT_LABEL, server_nonce, client_nonce, listener)
}

/// How the server names the local address of a connection in step 2: an IPv4 client of a
/// dual-stack socket as IPv4 (`127.0.0.1:8377`, not `[::ffff:127.0.0.1]:8377`).
pub fn listener_name(local: std::net::SocketAddr) -> String {
    std::net::SocketAddr::new(local.ip().to_canonical(), local.port()).to_string()
}

/// Whether the listener a server named is `connected`, the address the client reached: the same
/// address, or, for a server listening on an address that is not loopback (in a container, behind
/// a load balancer), the same port, as a forward that keeps the port gives (`docker -p 8377:8377`,
/// `compose.yaml`). A relay on the approval address cannot pass for the server: the server then
/// listens on another port of the same machine (the address being taken), and a loopback listener
/// must be the very address connected to.
fn is_listener(named: &str, connected: std::net::SocketAddr) -> bool {
    let Ok(named) = named.parse::<std::net::SocketAddr>() else { return false };
    if listener_name(named) == listener_name(connected) {
        return true;
    }
    !named.ip().to_canonical().is_loopback() && named.port() == connected.port()
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
/// proved it knows `token` (over plain `http`, for the address connected to) and accepted our
/// proof: the token may now be sent there.
pub async fn verify_listener(http: &reqwest::Client, base: &str, token: &str) -> Result<(), HandshakeError> {
    let key = key_of(token);
    let client_nonce = nonce().map_err(|e| HandshakeError::Random(e.to_string()))?;
    let hello = Hello { key_id: key_id(&key), client_nonce: client_nonce.clone() };
    let url = reqwest::Url::parse(&format!("{base}{HELLO}")).map_err(|e| HandshakeError::Unreachable(e.to_string()))?;
    let sent = http.post(url.clone()).json(&hello).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Err(HandshakeError::Refused(e.to_string())),
        Err(e) => return Err(HandshakeError::Unreachable(e.to_string())),
    };
    // A redirect would have the proof made elsewhere than where the token goes.
    if *resp.url() != url {
        return Err(HandshakeError::NoProof(format!("{HELLO} was redirected to {}", resp.url())));
    }
    let connected = resp.remote_addr();
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
    let Some(listener) = reply.listener else {
        return Err(HandshakeError::NoProof(format!(
            "{HELLO} answered without naming its listener: not mcp-gate, or an mcp-gate older than this one, \
             which cannot prove it"
        )));
    };
    let expected = server_proof(&key, &client_nonce, &reply.server_nonce, &listener);
    if !is_nonce(&reply.server_nonce)
        || !crate::secret::constant_time_eq(expected.as_bytes(), reply.server_proof.as_bytes())
    {
        return Err(HandshakeError::NoProof("wrong proof".into()));
    }
    // Over plain http, the proof counts only for the listener we reached; over https the
    // certificate named the peer already (see the module's documentation).
    if url.scheme() != "https" {
        match connected {
            Some(connected) if is_listener(&listener, connected) => {}
            Some(connected) => {
                return Err(HandshakeError::NoProof(format!(
                    "the proof is for the listener at {listener}, not for {connected} where we connected: a relay \
                     or a port forward?"
                )));
            }
            None => return Err(HandshakeError::NoProof("the address connected to is unknown".into())),
        }
    }
    let confirm = Confirm {
        client_proof: client_proof(&key, &client_nonce, &reply.server_nonce, &listener),
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

    const AT: &str = "127.0.0.1:8377";

    #[test]
    fn proofs_depend_on_the_key_the_direction_and_both_nonces() {
        let key = key_of("token-0123456789abcdef");
        let other = key_of("token-0123456789abcdeg");
        let (c, s) = (nonce().unwrap(), nonce().unwrap());
        assert!(is_nonce(&c) && is_nonce(&s) && c != s);
        let p = server_proof(&key, &c, &s, AT);
        assert_eq!(p, server_proof(&key, &c, &s, AT));
        assert_ne!(p, server_proof(&other, &c, &s, AT));
        assert_ne!(p, client_proof(&key, &c, &s, AT), "a server proof is not a client proof");
        assert_ne!(p, server_proof(&key, &s, &c, AT));
        assert_ne!(p, server_proof(&key, &c, &nonce().unwrap(), AT));
        assert_ne!(key_id(&key), key_id(&other));
        assert!(!key_id(&key).contains(&hex::encode(key)[..8]));
    }

    /// A relay in front of the server gets the server's proof for the server's own address,
    /// which is not the relay's.
    #[test]
    fn proofs_depend_on_the_listener() {
        let key = key_of("token-0123456789abcdef");
        let (c, s) = (nonce().unwrap(), nonce().unwrap());
        for (a, b) in [(AT, "127.0.0.1:42601"), (AT, "127.0.0.2:8377"), (AT, "[::1]:8377"), (AT, "")] {
            assert_ne!(server_proof(&key, &c, &s, a), server_proof(&key, &c, &s, b), "{a} / {b}");
            assert_ne!(client_proof(&key, &c, &s, a), client_proof(&key, &c, &s, b), "{a} / {b}");
        }
    }

    /// The labels carry the exchange's version: a proof made the way of version 1 (no listener)
    /// is not one of version 2.
    #[test]
    fn a_proof_of_the_first_version_is_not_one_of_this_version() {
        let key = key_of("token-0123456789abcdef");
        let (c, s) = (nonce().unwrap(), nonce().unwrap());
        let mut v1 = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        v1.update(b"mcp-gate/server\0");
        v1.update(c.as_bytes());
        v1.update(b"\0");
        v1.update(s.as_bytes());
        let v1 = hex::encode(v1.finalize().into_bytes());
        assert_ne!(v1, server_proof(&key, &c, &s, ""));
        assert_ne!(v1, server_proof(&key, &c, &s, AT));
    }

    #[test]
    fn the_listener_named_must_be_the_address_connected_to() {
        let at: std::net::SocketAddr = AT.parse().unwrap();
        assert!(is_listener(AT, at));
        assert!(!is_listener("127.0.0.1:42601", at));
        assert!(!is_listener("127.0.0.2:8377", at));
        assert!(!is_listener("localhost:8377", at));
        assert!(!is_listener("", at));
        // A dual-stack socket's view of an IPv4 client is the same address.
        let mapped: std::net::SocketAddr = "[::ffff:127.0.0.1]:8377".parse().unwrap();
        assert_eq!(listener_name(mapped), AT);
        assert!(is_listener(AT, mapped) && is_listener("[::ffff:127.0.0.1]:8377", at));
        assert_eq!(listener_name("[::1]:8377".parse().unwrap()), "[::1]:8377");
        // Reached through a forward that keeps the port, a server in a container or behind a
        // load balancer names an address that is not loopback: the port must still be the same.
        assert!(is_listener("172.18.0.3:8377", at));
        assert!(!is_listener("172.18.0.3:9000", at));
        // Another loopback address with the same port is not a forward: it is another listener.
        assert!(!is_listener("[::1]:8377", at));
    }
}
