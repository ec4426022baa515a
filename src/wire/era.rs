//! Which protocol era a peer or a request speaks, decided in one place.
//!
//! 2026-07-28 reshaped what the proxy may write itself: every result says what it is
//! (`resultType`), list results carry caching hints (`ttlMs`, `cacheScope`), a server sends the
//! client no requests of its own (elicitation became part of a result), and list changes reach
//! only clients that opened a `subscriptions/listen` stream. Older clients get the older shapes.
//! Results relayed from an upstream are never touched: the upstream speaks its own version.

use serde_json::value::RawValue;

use crate::wire::jsonrpc::{self, Message};

/// The first protocol version of the modern era.
pub const MODERN_VERSION: &str = "2026-07-28";

/// The `_meta` key of a 2026-07-28 request that names its protocol version.
pub const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// The `_meta` key that tags a notification with the `subscriptions/listen` stream it belongs to.
pub const SUBSCRIPTION_META: &str = "io.modelcontextprotocol/subscriptionId";

/// The `_meta` key under which a 2026-07-28 request declares the client's capabilities.
pub const CLIENT_CAPABILITIES_META: &str = "io.modelcontextprotocol/clientCapabilities";

/// The 2026-07-28 tasks extension's identifier (under `capabilities.extensions`).
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// How the proxy names itself in the results it writes (`serverInfo`).
pub fn server_info() -> serde_json::Value {
    serde_json::json!({ "name": "mcp-gate", "version": env!("CARGO_PKG_VERSION") })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// Up to 2025-11-25: `initialize`, sessions, server-to-client requests.
    Legacy,
    /// 2026-07-28 and later: per-request versions, `resultType`, `subscriptions/listen`.
    Modern,
}

impl Era {
    /// The era of a protocol version. Versions are dates (`YYYY-MM-DD`), which order as text.
    pub fn of_version(version: &str) -> Era {
        if version >= MODERN_VERSION { Era::Modern } else { Era::Legacy }
    }

    /// The era a message declares in `params._meta` (2026-07-28 requests carry their version);
    /// `None` when it declares none.
    pub fn of_request(msg: &Message) -> Option<Era> {
        request_version(msg).map(|v| Era::of_version(&v))
    }

    pub fn is_modern(self) -> bool {
        self == Era::Modern
    }
}

/// Whether `text` may name [`VERSION_META`] once decoded: it contains it, or an escape (as
/// [`jsonrpc::may_hold`]). The quick test of every request before its params are parsed for it.
/// The searcher is prepared once: `str::contains` prepares one per call for a needle this long,
/// which costs more than the search itself.
pub fn mentions_version(text: &str) -> bool {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(VERSION_META));
    memchr::memchr(b'\\', text.as_bytes()).is_some() || FINDER.find(text.as_bytes()).is_some()
}

/// The protocol version a message names in `params._meta`.
pub fn request_version(msg: &Message) -> Option<String> {
    let params = msg.params.as_deref()?;
    if !mentions_version(params.get()) {
        return None;
    }
    let obj = jsonrpc::parse_object(params).ok()?;
    jsonrpc::string_field(jsonrpc::get(&obj, "_meta")?, VERSION_META)
}

/// A result the proxy makes up itself, shaped for the era of the request it answers: in
/// 2026-07-28 it says `resultType: "complete"` and names the proxy as the server that produced it.
pub fn own_result(result: Box<RawValue>, era: Era) -> Box<RawValue> {
    if era == Era::Legacy {
        return result;
    }
    let Ok(mut obj) = jsonrpc::parse_object(&result) else { return result };
    if jsonrpc::get(&obj, "resultType").is_none() {
        jsonrpc::set(&mut obj, "resultType", jsonrpc::to_raw("complete"));
    }
    let mut meta = jsonrpc::get(&obj, "_meta").and_then(|m| jsonrpc::parse_object(m).ok()).unwrap_or_default();
    if jsonrpc::get(&meta, "io.modelcontextprotocol/serverInfo").is_none() {
        jsonrpc::set(&mut meta, "io.modelcontextprotocol/serverInfo", jsonrpc::to_raw(&server_info()));
        jsonrpc::set(&mut obj, "_meta", jsonrpc::object_to_raw(&meta));
    }
    jsonrpc::object_to_raw(&obj)
}

/// A list result the proxy merged from several upstreams, for a 2026-07-28 request: the caching
/// hints every cacheable result needs. Fresh for as long as the least fresh part; private, since
/// what the proxy lists depends on who asks (the policy may hide tools from an agent).
pub fn cacheable(result: Box<RawValue>, ttl_ms: u64) -> Box<RawValue> {
    let Ok(mut obj) = jsonrpc::parse_object(&result) else { return result };
    jsonrpc::set(&mut obj, "ttlMs", jsonrpc::to_raw(&ttl_ms));
    jsonrpc::set(&mut obj, "cacheScope", jsonrpc::to_raw("private"));
    own_result(jsonrpc::object_to_raw(&obj), Era::Modern)
}

/// The smallest `ttlMs` of several results (0 when none says).
pub fn min_ttl<'a>(results: impl IntoIterator<Item = &'a RawValue>) -> u64 {
    results
        .into_iter()
        .map(|r| {
            jsonrpc::parse_object(r)
                .ok()
                .and_then(|o| jsonrpc::get(&o, "ttlMs").and_then(|t| serde_json::from_str::<u64>(t.get()).ok()))
                .unwrap_or(0)
        })
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mentions_version_finds_the_key_where_contains_does() {
        for text in [
            "",
            "io.modelcontextprotocol/protocolVersio",
            r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}"#,
            r#"{"a":"io.modelcontextprotocol/protocolVersion"}"#,
            "io.modelcontextprotocol/protocolVersion",
            "xio.modelcontextprotocol/protocolVersionx",
        ] {
            assert_eq!(super::mentions_version(text), text.contains(super::VERSION_META), "{text}");
        }
    }

    /// A key written with escapes is the same key to every JSON reader: the quick test lets it
    /// through to the parse, which reads it.
    #[test]
    fn a_version_key_written_with_escapes_is_found() {
        let escaped = r#"{"_meta":{"io.modelcontextprotocol\/protocolVersion":"2026-07-28"}}"#;
        assert!(super::mentions_version(escaped));
        let msg = Message::request(
            jsonrpc::number_id(1),
            "tools/list",
            Some(RawValue::from_string(escaped.to_owned()).unwrap()),
        );
        assert_eq!(request_version(&msg).as_deref(), Some("2026-07-28"));
        let unicode = r#"{"_meta":{"io.modelcontextprotocol/pr\u006ftocolVersion":"2026-07-28"}}"#;
        let msg = Message::request(
            jsonrpc::number_id(1),
            "tools/list",
            Some(RawValue::from_string(unicode.to_owned()).unwrap()),
        );
        assert_eq!(request_version(&msg).as_deref(), Some("2026-07-28"));
    }

    use super::*;

    fn raw(v: serde_json::Value) -> Box<RawValue> {
        jsonrpc::to_raw(&v)
    }

    #[test]
    fn eras_follow_the_version_date() {
        assert_eq!(Era::of_version("2025-11-25"), Era::Legacy);
        assert_eq!(Era::of_version("2026-07-28"), Era::Modern);
        assert_eq!(Era::of_version("2027-01-01"), Era::Modern);
        let modern = Message::request(
            jsonrpc::number_id(1),
            "tools/list",
            Some(raw(serde_json::json!({"_meta": {VERSION_META: "2026-07-28"}}))),
        );
        assert_eq!(Era::of_request(&modern), Some(Era::Modern));
        let legacy = Message::request(jsonrpc::number_id(1), "tools/list", None);
        assert_eq!(Era::of_request(&legacy), None);
    }

    #[test]
    fn own_results_say_complete_only_in_the_modern_era() {
        let r = raw(serde_json::json!({"content": [], "_meta": {"mcp-gate/approval": {"status": "pending"}}}));
        assert_eq!(own_result(r.to_owned(), Era::Legacy).get(), r.get());
        let v: serde_json::Value = serde_json::from_str(own_result(r, Era::Modern).get()).unwrap();
        assert_eq!(v["resultType"], "complete");
        assert_eq!(v["_meta"]["mcp-gate/approval"]["status"], "pending");
        assert_eq!(v["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "mcp-gate");
    }

    #[test]
    fn merged_lists_are_private_and_as_fresh_as_their_least_fresh_part() {
        let parts = [raw(serde_json::json!({"ttlMs": 500})), raw(serde_json::json!({"ttlMs": 100}))];
        assert_eq!(min_ttl(parts.iter().map(|p| &**p)), 100);
        assert_eq!(min_ttl([&*raw(serde_json::json!({"tools": []}))]), 0);
        let v: serde_json::Value =
            serde_json::from_str(cacheable(raw(serde_json::json!({"tools": []})), 100).get()).unwrap();
        assert_eq!(
            (v["ttlMs"].as_u64(), v["cacheScope"].as_str(), v["resultType"].as_str()),
            (Some(100), Some("private"), Some("complete"))
        );
    }
}
