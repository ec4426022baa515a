//! The raw JSON-RPC envelope.
//!
//! A [`Message`] keeps the id, method, params, result and error of a JSON-RPC 2.0 message as the
//! exact bytes the peer sent ([`RawValue`]), plus every other top-level key it carried. Relaying a
//! message therefore never re-encodes what the proxy did not change: unknown fields, `_meta`,
//! number formatting and key order inside params and results survive byte for byte.
//!
//! Every message is first read by [`strict::canonicalize`], which refuses what two parsers could
//! read differently and removes the whitespace between tokens; the envelope is parsed from, and
//! the raw parts are slices of, those canonical bytes. What the proxy judges is what it forwards.

pub mod strict;

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// JSON-RPC error codes used by the proxy itself.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The upstream server failed (crashed, unreachable, protocol violation).
    pub const UPSTREAM_ERROR: i64 = -32000;
    /// Streamable HTTP: the `Mcp-Session-Id` names no open session (the client must initialize again).
    pub const SESSION_NOT_FOUND: i64 = -32001;
    /// 2026-07-28 Streamable HTTP: an `Mcp-*` header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28: the request needs a client capability it did not declare (the tasks extension).
    pub const MISSING_CAPABILITY: i64 = -32021;
}

/// Why a line or body is not a JSON-RPC message we can relay.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid JSON-RPC message: {0}")]
    Invalid(&'static str),
    #[error("message refused: {0}")]
    Strict(#[from] strict::StrictError),
}

impl ParseError {
    /// The rule broken, without quoting the message (for the audit log).
    pub fn rule(&self) -> &'static str {
        match self {
            ParseError::Json(_) => "invalid JSON-RPC message",
            ParseError::Invalid(why) => why,
            ParseError::Strict(e) => e.rule(),
        }
    }

    pub fn code(&self) -> i64 {
        match self {
            // Valid JSON of the wrong shape is an invalid request, not a parse error.
            ParseError::Json(e) if e.classify() == serde_json::error::Category::Data => code::INVALID_REQUEST,
            ParseError::Json(_) => code::PARSE_ERROR,
            ParseError::Invalid(_) => code::INVALID_REQUEST,
            ParseError::Strict(e) if e.is_syntax() => code::PARSE_ERROR,
            ParseError::Strict(_) => code::INVALID_REQUEST,
        }
    }
}

/// One JSON-RPC 2.0 message with its payload kept as raw JSON.
#[derive(Debug, Default)]
pub struct Message {
    pub id: Option<Box<RawValue>>,
    pub method: Option<String>,
    pub params: Option<Box<RawValue>>,
    pub result: Option<Box<RawValue>>,
    pub error: Option<Box<RawValue>>,
    /// Top-level keys other than the standard ones, in the order received.
    pub extra: Vec<(String, Box<RawValue>)>,
}

/// What kind of message a [`Message`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

impl Message {
    /// Parses one message through the strict reading ([`strict`]), its keys distinct byte for
    /// byte ([`strict::Keys::Exact`]: a server's message); its raw parts are canonical. Batches
    /// (top-level arrays) are rejected: they were removed from MCP in 2025-06-18 and no current
    /// client sends them.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        Message::parse_with(bytes, strict::Keys::Exact)
    }

    /// [`Message::parse`] with the keys of each object distinct as `keys` says (a client's message
    /// is read with [`strict::Keys::Folded`]).
    pub fn parse_with(bytes: &[u8], keys: strict::Keys) -> Result<Message, ParseError> {
        let msg = strict::canonical_read(bytes, keys, |canonical, members| {
            if canonical.starts_with('[') {
                return Err(ParseError::Invalid("JSON-RPC batches are not supported"));
            }
            match members.and_then(|m| Message::from_members(&canonical, m)) {
                Some(msg) => Ok(msg),
                // Read as text (known to be UTF-8) rather than bytes: serde_json then checks no
                // string's UTF-8 again. The errors, and their positions, are the same.
                None => Ok(serde_json::from_str(&canonical)?),
            }
        })??;
        msg.validate()?;
        Ok(msg)
    }

    /// The message the `Deserialize` impl reads from canonical `text`, built from the members the
    /// strict reading found (keys unique, no whitespace); `None` for anything it would refuse, or
    /// that this shortcut does not read, so that serde then gives its own answer and error.
    fn from_members(text: &str, members: &[strict::Member]) -> Option<Message> {
        // A canonical string's value: its text when it has no escape, else serde_json's reading.
        fn string(quoted: &str) -> Option<std::borrow::Cow<'_, str>> {
            let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
            if inner.bytes().any(|b| b == b'\\') {
                serde_json::from_str::<String>(quoted).ok().map(Into::into)
            } else {
                Some(inner.into())
            }
        }
        // Serde reads a raw value as its exact text, as this does (it checks the JSON again).
        let raw = |value: &str| RawValue::from_string(value.to_owned()).ok();
        let mut msg = Message::default();
        let mut version_ok = false;
        for member in members {
            let key = string(text.get(member.key.0..member.key.1)?)?;
            let value = text.get(member.key.1 + 1..member.end)?;
            match &*key {
                "jsonrpc" => {
                    if string(value)? != "2.0" {
                        return None;
                    }
                    version_ok = true;
                }
                "id" => {
                    if !matches!(value.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9' | b'n')) {
                        return None;
                    }
                    msg.id = Some(raw(value)?);
                }
                "method" => msg.method = Some(string(value)?.into_owned()),
                "params" => msg.params = Some(raw(value)?),
                "result" => msg.result = Some(raw(value)?),
                "error" => msg.error = Some(raw(value)?),
                _ => msg.extra.push((key.into_owned(), raw(value)?)),
            }
        }
        version_ok.then_some(msg)
    }

    fn validate(&self) -> Result<(), ParseError> {
        match (&self.method, &self.result, &self.error) {
            (Some(_), None, None) => Ok(()),
            (None, Some(_), None) | (None, None, Some(_)) => Ok(()),
            (None, None, None) => Err(ParseError::Invalid("no method, result or error")),
            _ => Err(ParseError::Invalid("both a method and a result or error")),
        }
    }

    pub fn kind(&self) -> Kind {
        match (&self.method, &self.id) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, _) => Kind::Response,
        }
    }

    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }

    /// The id as its raw JSON text (`1`, `"abc"`), the key used to match responses.
    pub fn id_text(&self) -> Option<&str> {
        self.id.as_deref().map(RawValue::get)
    }

    pub fn request(id: Box<RawValue>, method: &str, params: Option<Box<RawValue>>) -> Message {
        Message { id: Some(id), method: Some(method.to_owned()), params, ..Message::default() }
    }

    pub fn notification(method: &str, params: Option<Box<RawValue>>) -> Message {
        Message { method: Some(method.to_owned()), params, ..Message::default() }
    }

    pub fn response(id: Box<RawValue>, result: Box<RawValue>) -> Message {
        Message { id: Some(id), result: Some(result), ..Message::default() }
    }

    /// An error response. `id` is `None` when the request's id could not be read (parse errors):
    /// the reply then has no id, as MCP's schema wants (its ids are strings or integers, never
    /// `null`).
    pub fn error(id: Option<Box<RawValue>>, code: i64, message: &str) -> Message {
        let error = serde_json::json!({ "code": code, "message": message });
        Message { id, error: Some(to_raw(&error)), ..Message::default() }
    }

    /// Serializes the message. Raw parts are written as received.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_hint() + 64);
        self.write_to(&mut out);
        out
    }

    fn size_hint(&self) -> usize {
        let raw = |v: &Option<Box<RawValue>>| v.as_ref().map_or(0, |r| r.get().len());
        raw(&self.params)
            + raw(&self.result)
            + raw(&self.error)
            + self.extra.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>()
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"jsonrpc":"2.0""#);
        if let Some(id) = &self.id {
            out.extend_from_slice(br#","id":"#);
            out.extend_from_slice(id.get().as_bytes());
        }
        if let Some(method) = &self.method {
            out.extend_from_slice(br#","method":"#);
            write_json_string(out, method);
        }
        for (key, value) in [("params", &self.params), ("result", &self.result), ("error", &self.error)] {
            if let Some(value) = value {
                out.push(b',');
                write_json_string(out, key);
                out.push(b':');
                out.extend_from_slice(value.get().as_bytes());
            }
        }
        for (key, value) in &self.extra {
            out.push(b',');
            write_json_string(out, key);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
    }

    /// The error object's code and message, when this is an error response.
    pub fn error_code(&self) -> Option<i64> {
        #[derive(serde::Deserialize)]
        struct Code {
            code: i64,
        }
        let raw = self.error.as_ref()?;
        serde_json::from_str::<Code>(raw.get()).ok().map(|c| c.code)
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `null` as a raw value.
pub fn null() -> Box<RawValue> {
    to_raw(&serde_json::Value::Null)
}

/// Serializes any value into a raw JSON value.
pub fn to_raw<T: serde::Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    // A `Serialize` of plain data (maps with string keys, numbers, strings) cannot fail; fall
    // back to null rather than panic if a caller passes something exotic.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| {
        RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("null is valid JSON"))
    })
}

/// A raw JSON number for a proxy-assigned id.
pub fn number_id(n: u64) -> Box<RawValue> {
    RawValue::from_string(n.to_string()).unwrap_or_else(|_| null())
}

/// A JSON object read with its values kept raw, preserving key order.
pub type RawObject = Vec<(String, Box<RawValue>)>;

/// Reads a JSON object keeping every value raw.
pub fn parse_object(raw: &RawValue) -> Result<RawObject, serde_json::Error> {
    struct ObjVisitor;
    impl<'de> Visitor<'de> for ObjVisitor {
        type Value = RawObject;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_map(ObjVisitor)
}

/// Writes an object read by [`parse_object`] back to raw JSON.
pub fn object_to_raw(obj: &RawObject) -> Box<RawValue> {
    let mut out = Vec::with_capacity(obj.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum());
    out.push(b'{');
    for (i, (k, v)) in obj.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    // The pieces are valid JSON, so the whole is.
    let text = String::from_utf8(out).unwrap_or_default();
    RawValue::from_string(text).unwrap_or_else(|_| null())
}

/// Looks up a key in a raw object.
pub fn get<'a>(obj: &'a RawObject, key: &str) -> Option<&'a RawValue> {
    obj.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
}

/// Replaces (or appends) a key in a raw object.
pub fn set(obj: &mut RawObject, key: &str, value: Box<RawValue>) {
    match obj.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value,
        None => obj.push((key.to_owned(), value)),
    }
}

/// Whether raw JSON `text` may hold `needle` once decoded: it holds it as written, or it holds an
/// escape, behind which any key or string can hide (`"pr\u006fgressToken"` is `"progressToken"`).
/// The quick test before a parse: never false where the parse would find `needle`.
pub fn may_hold(text: &str, needle: &str) -> bool {
    memchr::memchr(b'\\', text.as_bytes()).is_some() || text.contains(needle)
}

/// A JSON value as peers compare it, for keys of maps the proxy keeps in raw text (progress
/// tokens): a string decoded and written back (`"a\u002db"` is `"a-b"`), a number with no
/// fraction written as an integer (`7.0`, `7e0` and `70e-1` are `7`, as JavaScript and lax integer
/// readers see them), anything else in its compact form.
pub fn value_key(raw: &RawValue) -> String {
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Number(n)) if n.as_i64().is_none() && n.as_u64().is_none() => {
            match n.as_f64() {
                // Within ±2^53 a double with no fraction is an integer exactly.
                Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => format!("{}", f as i64),
                _ => n.to_string(),
            }
        }
        Ok(v) => v.to_string(),
        Err(_) => raw.get().to_owned(),
    }
}

/// Reads a string field of a raw JSON object without decoding the rest.
pub fn string_field(raw: &RawValue, key: &str) -> Option<String> {
    let obj = parse_object(raw).ok()?;
    serde_json::from_str(get(&obj, key)?.get()).ok()
}

impl<'de> serde::Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Message, D::Error> {
        struct MsgVisitor;
        impl<'de> Visitor<'de> for MsgVisitor {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON-RPC 2.0 object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let mut msg = Message::default();
                let mut version_ok = false;
                while let Some(key) = map.next_key::<Member>()? {
                    match key {
                        Member::Jsonrpc => {
                            if !map.next_value::<IsVersion>()?.0 {
                                return Err(de::Error::custom("jsonrpc must be \"2.0\""));
                            }
                            version_ok = true;
                        }
                        Member::Id => {
                            let id: Box<RawValue> = map.next_value()?;
                            let first = id.get().as_bytes().first().copied();
                            if !matches!(first, Some(b'"' | b'-' | b'0'..=b'9' | b'n')) {
                                return Err(de::Error::custom("id must be a string or a number"));
                            }
                            msg.id = Some(id);
                        }
                        Member::Method => msg.method = Some(map.next_value()?),
                        Member::Params => msg.params = Some(map.next_value()?),
                        Member::Result => msg.result = Some(map.next_value()?),
                        Member::Error => msg.error = Some(map.next_value()?),
                        Member::Other(key) => {
                            let v: Box<RawValue> = map.next_value()?;
                            msg.extra.push((key, v));
                        }
                    }
                }
                if !version_ok {
                    return Err(de::Error::custom("missing \"jsonrpc\": \"2.0\""));
                }
                Ok(msg)
            }
        }
        deserializer.deserialize_map(MsgVisitor)
    }
}

/// A top-level key of a message, read as a `String` is (same calls, same errors) but allocated
/// only when it is not one of the standard keys.
enum Member {
    Jsonrpc,
    Id,
    Method,
    Params,
    Result,
    Error,
    Other(String),
}

impl Member {
    fn of(key: &str) -> Option<Member> {
        Some(match key {
            "jsonrpc" => Member::Jsonrpc,
            "id" => Member::Id,
            "method" => Member::Method,
            "params" => Member::Params,
            "result" => Member::Result,
            "error" => Member::Error,
            _ => return None,
        })
    }
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Member, D::Error> {
        struct MemberVisitor;
        impl Visitor<'_> for MemberVisitor {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Member, E> {
                Ok(Member::of(v).unwrap_or_else(|| Member::Other(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Member, E> {
                Ok(Member::of(&v).unwrap_or(Member::Other(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Member, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => self.visit_str(s),
                    Err(_) => Err(de::Error::invalid_value(de::Unexpected::Bytes(v), &self)),
                }
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Member, E> {
                match String::from_utf8(v) {
                    Ok(s) => self.visit_string(s),
                    Err(e) => Err(de::Error::invalid_value(de::Unexpected::Bytes(&e.into_bytes()), &self)),
                }
            }
        }
        deserializer.deserialize_string(MemberVisitor)
    }
}

/// Whether a string is `2.0`, read as a `String` is (same calls, same errors) without allocating.
struct IsVersion(bool);

impl<'de> serde::Deserialize<'de> for IsVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IsVersion, D::Error> {
        struct VersionVisitor;
        impl Visitor<'_> for VersionVisitor {
            type Value = IsVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IsVersion, E> {
                Ok(IsVersion(v == "2.0"))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<IsVersion, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => self.visit_str(s),
                    Err(_) => Err(de::Error::invalid_value(de::Unexpected::Bytes(v), &self)),
                }
            }
        }
        deserializer.deserialize_string(VersionVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_written_differently_compare_the_same() {
        let key = |text: &str| value_key(&RawValue::from_string(text.to_owned()).unwrap());
        assert_eq!(key(r#""held\u002d1""#), key(r#""held-1""#));
        for seven in ["7.0", "7e0", "70e-1", "0.7e1"] {
            assert_eq!(key(seven), "7", "{seven}");
        }
        assert_eq!(key("-0.0"), "0");
        assert_eq!(key("7.5"), "7.5");
        assert_eq!(key("18446744073709551615"), "18446744073709551615");
        assert_ne!(key("1e300"), key("1"));
        assert_ne!(key(r#""7""#), key("7"));
    }

    #[test]
    fn may_hold_is_never_false_where_a_parse_finds_the_key() {
        assert!(may_hold(r#"{"progressToken":1}"#, "progressToken"));
        assert!(may_hold(r#"{"pr\u006fgressToken":1}"#, "progressToken"));
        assert!(!may_hold(r#"{"progress":1}"#, "progressToken"));
    }

    #[test]
    fn round_trip_keeps_bytes_of_payload_and_unknown_keys() {
        let line = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":{"n":1.50,"big":18446744073709551615,"s":"\u00e9\/"},"_meta":{"progressToken":"t"}},"vendor":{"a":[1,2]}}"#;
        let msg = Message::parse(line).unwrap();
        assert_eq!(msg.kind(), Kind::Request);
        assert_eq!(msg.id_text(), Some("7"));
        let out = String::from_utf8(msg.to_bytes()).unwrap();
        assert_eq!(out.as_bytes(), line.as_slice());
    }

    #[test]
    fn rejects_what_is_not_json_rpc() {
        assert_eq!(Message::parse(b"{not json").unwrap_err().code(), code::PARSE_ERROR);
        assert_eq!(Message::parse(br#"{"jsonrpc":"1.0","method":"x"}"#).unwrap_err().code(), code::INVALID_REQUEST);
        assert_eq!(Message::parse(br#"[{"jsonrpc":"2.0","method":"x"}]"#).unwrap_err().code(), code::INVALID_REQUEST);
        assert_eq!(Message::parse(br#"{"jsonrpc":"2.0","id":1}"#).unwrap_err().code(), code::INVALID_REQUEST);
        assert!(Message::parse(br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#).is_err());
    }

    #[test]
    fn error_reply_has_no_id_when_unknown() {
        let msg = Message::error(None, code::PARSE_ERROR, "bad");
        assert_eq!(msg.to_string(), r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"bad"}}"#);
    }

    #[test]
    fn raw_object_edit_keeps_other_values() {
        let raw = RawValue::from_string(r#"{"name":"a__b","arguments":{"x":1.0},"task":{"ttl":5}}"#.into()).unwrap();
        let mut obj = parse_object(&raw).unwrap();
        set(&mut obj, "name", to_raw("b"));
        assert_eq!(object_to_raw(&obj).get(), r#"{"name":"b","arguments":{"x":1.0},"task":{"ttl":5}}"#);
        assert_eq!(string_field(&raw, "name").as_deref(), Some("a__b"));
    }
}
