//! Webhook signatures:
//! `X-Mcp-Gate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<delivery id>.<body>")>`.
//!
//! The timestamp and the delivery id (`X-Mcp-Gate-Delivery`) are signed together with the exact
//! body bytes, so a receiver that checks the signature, rejects old timestamps and remembers the
//! delivery ids it saw within that window cannot be fed a replayed or altered delivery, not even
//! one resent under another id.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How old a signed timestamp a receiver should accept.
pub const REPLAY_WINDOW_SECS: u64 = 300;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// HMAC-SHA256 of `message` under `key`, as lowercase hex.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut m = mac(key);
    m.update(message);
    hex::encode(m.finalize().into_bytes())
}

/// The MAC of one attempt of delivery `delivery` with `body`, sent at `timestamp`.
fn signed(key: &[u8], timestamp: u64, delivery: &str, body: &[u8]) -> HmacSha256 {
    let mut m = mac(key);
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(delivery.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The value of the signature header for delivery `delivery` of `body`, sent at `timestamp`
/// (Unix seconds).
pub fn signature_header(key: &[u8], timestamp: u64, delivery: &str, body: &[u8]) -> String {
    let m = signed(key, timestamp, delivery, body);
    format!("t={timestamp},v1={}", hex::encode(m.finalize().into_bytes()))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the timestamp is outside the replay window")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// Checks a signature header against delivery id `delivery` and `body` as a receiver would: the
/// timestamp must lie within `window_secs` of `now` (Unix seconds) and one `v1` value must match,
/// compared in constant time.
pub fn verify(
    key: &[u8],
    header: &str,
    delivery: &str,
    body: &[u8],
    now: u64,
    window_secs: u64,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<u64>().map_err(|_| VerifyError::Malformed)?),
            Some(("v1", s)) => signatures.push(s),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed)?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if now.abs_diff(timestamp) > window_secs {
        return Err(VerifyError::Stale);
    }
    for s in signatures {
        let Ok(bytes) = hex::decode(s) else { continue };
        if signed(key, timestamp, delivery, body).verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(hex_text: &str) -> Vec<u8> {
        hex::decode(hex_text).unwrap()
    }

    /// RFC 4231, test cases 1, 2, 3, 4, 6 and 7 (HMAC-SHA-256).
    #[test]
    fn rfc_4231_vectors() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (vec![0xaa; 20], vec![0xdd; 50], "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
            (
                bytes("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(hmac_sha256_hex(&key, &data), expected);
        }
    }

    #[test]
    fn header_format_and_verification() {
        let key = b"whsec-test";
        let body = br#"{"kind":"requested"}"#;
        let id = "0123456789abcdef0123456789abcdef";
        let header = signature_header(key, 1_700_000_000, id, body);
        let expected = hmac_sha256_hex(key, b"1700000000.0123456789abcdef0123456789abcdef.{\"kind\":\"requested\"}");
        assert_eq!(header, format!("t=1700000000,v1={expected}"));

        assert_eq!(verify(key, &header, id, body, 1_700_000_100, REPLAY_WINDOW_SECS), Ok(()));
        assert_eq!(verify(b"other", &header, id, body, 1_700_000_100, REPLAY_WINDOW_SECS), Err(VerifyError::Mismatch));
        assert_eq!(
            verify(key, &header, id, br#"{"kind":"approved"}"#, 1_700_000_100, REPLAY_WINDOW_SECS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(verify(key, &header, id, body, 1_700_000_301, REPLAY_WINDOW_SECS), Err(VerifyError::Stale));
        // A re-dated header does not verify: the timestamp is signed.
        let redated = header.replace("t=1700000000", "t=1700000200");
        assert_eq!(verify(key, &redated, id, body, 1_700_000_200, REPLAY_WINDOW_SECS), Err(VerifyError::Mismatch));
        assert_eq!(verify(key, "v1=abc", id, body, 0, REPLAY_WINDOW_SECS), Err(VerifyError::Malformed));
        assert_eq!(verify(key, "t=1", id, body, 1, REPLAY_WINDOW_SECS), Err(VerifyError::Malformed));
        // Another delivery id does not verify: the id is signed.
        assert_eq!(
            verify(key, &header, "ffffffffffffffffffffffffffffffff", body, 1_700_000_100, REPLAY_WINDOW_SECS),
            Err(VerifyError::Mismatch)
        );
    }
}
