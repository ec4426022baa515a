//! The HTTP headers of MCP's Streamable HTTP transport: their names, lower-case as HTTP/2 carries
//! them, and how a value that is not plain ASCII travels in one (`=?base64?...?=`).

/// The session a 2025-era request belongs to.
pub const SESSION: &str = "mcp-session-id";
/// The protocol version a request speaks.
pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// 2026-07-28: the request's method, repeated from the body for routers that do not read it.
pub const METHOD: &str = "mcp-method";
/// 2026-07-28: the tool or prompt name (or resource URI) of the request, repeated from the body.
pub const NAME: &str = "mcp-name";
/// 2026-07-28: the prefix of headers that repeat a tool argument marked for it.
pub const PARAM_PREFIX: &str = "mcp-param-";
/// SSE resumption: the last event id the client received on the stream.
pub const LAST_EVENT_ID: &str = "last-event-id";

const BASE64_PREFIX: &str = "=?base64?";
const BASE64_SUFFIX: &str = "?=";

/// Encodes a value for `Mcp-Name` / `Mcp-Param-*`: as it is when it is plain printable ASCII,
/// else (non-ASCII, control characters, leading or trailing space or tab, or a value that looks
/// like the sentinel) as `=?base64?<standard base64 of the UTF-8>?=`.
pub fn encode_value(value: &str) -> String {
    if needs_base64(value) {
        format!("{BASE64_PREFIX}{}{BASE64_SUFFIX}", base64_standard(value.as_bytes()))
    } else {
        value.to_owned()
    }
}

fn needs_base64(value: &str) -> bool {
    if value.is_empty() {
        return false;
    }
    let bytes = value.as_bytes();
    if matches!(bytes.first(), Some(b' ' | b'\t')) || matches!(bytes.last(), Some(b' ' | b'\t')) {
        return true;
    }
    if bytes.iter().any(|&b| !(0x20..=0x7E).contains(&b)) {
        return true;
    }
    value.starts_with(BASE64_PREFIX) && value.ends_with(BASE64_SUFFIX)
}

/// Standard-alphabet base64 with padding (RFC 4648 section 4).
pub fn base64_standard(input: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, input)
}

/// Decodes the `=?base64?...?=` form of a header value.
pub fn decode_value(value: &str) -> String {
    if let Some(inner) = value.strip_prefix(BASE64_PREFIX).and_then(|v| v.strip_suffix(BASE64_SUFFIX))
        && let Some(bytes) = base64_decode(inner)
        && let Ok(text) = String::from_utf8(bytes)
    {
        return text;
    }
    value.to_owned()
}

/// Standard-alphabet base64 (RFC 4648 section 4), read strictly: `=` only as the final padding
/// (which may be left out), no stray bits in the last character, nothing outside the alphabet.
const HEADER_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn base64_decode(input: &str) -> Option<Vec<u8>> {
    base64::Engine::decode(&HEADER_BASE64, input).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_standard_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_standard(input.as_bytes()), expected);
        }
        assert_eq!(base64_standard(&[0xFB, 0xFF, 0xBF]), "+/+/");
    }

    #[test]
    fn header_values_are_base64_wrapped_when_needed() {
        assert_eq!(encode_value("get_weather"), "get_weather");
        assert_eq!(encode_value("a b"), "a b");
        assert_eq!(encode_value("file:///tmp/x.json"), "file:///tmp/x.json");
        assert_eq!(encode_value(""), "");
        assert_eq!(encode_value("Hello, 世界"), "=?base64?SGVsbG8sIOS4lueVjA==?=");
        assert_eq!(encode_value(" lead"), format!("=?base64?{}?=", base64_standard(b" lead")));
        assert_eq!(encode_value("trail\t"), format!("=?base64?{}?=", base64_standard(b"trail\t")));
        assert_eq!(encode_value("a\r\nb"), format!("=?base64?{}?=", base64_standard(b"a\r\nb")));
        assert_eq!(encode_value("x\u{7f}"), format!("=?base64?{}?=", base64_standard(b"x\x7f")));
        assert_eq!(encode_value("=?base64?abc?="), format!("=?base64?{}?=", base64_standard(b"=?base64?abc?=")));
        assert_eq!(encode_value("=?base64?abc"), "=?base64?abc");
    }

    #[test]
    fn header_base64_is_read_strictly() {
        assert_eq!(base64_decode("aMOp").as_deref(), Some("h\u{e9}".as_bytes()));
        assert_eq!(base64_decode("SGVsbG8sIOS4lueVjA==").as_deref(), Some("Hello, \u{4e16}\u{754c}".as_bytes()));
        assert_eq!(base64_decode("SGVsbG8sIOS4lueVjA").as_deref(), Some("Hello, \u{4e16}\u{754c}".as_bytes()));
        // `=` anywhere but the end, stray bits, or characters outside the alphabet: not base64.
        for bad in ["aM=Op", "=aMOp", "aMOp=", "SGVsbG8=sIOS4lueVjA=", "aR==", "aR", "aMO", "aM Op", "aM-p"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }
}
