//! Pure helpers for serving several upstreams as one: exposed names, merged capabilities and
//! results, and continuation cursors that remember which upstream a page came from.

use serde_json::{Map, Value, json};

use crate::wire::era;
use crate::wire::jsonrpc::{self, RawObject};
use serde_json::value::RawValue;

/// The name a tool or prompt of `server` is exposed as.
pub fn exposed_name(server: &str, name: &str, prefix: bool, separator: &str) -> String {
    if prefix { format!("{server}{separator}{name}") } else { name.to_owned() }
}

/// Splits `server<sep>name` into its parts.
pub fn split_prefixed<'a>(exposed: &'a str, separator: &str) -> Option<(&'a str, &'a str)> {
    exposed.split_once(separator)
}

/// Merges the capabilities of several upstreams: a capability is offered when any upstream
/// offers it, and boolean flags inside it (`listChanged`, `subscribe`) are true when any is.
/// Unknown capability keys are kept (the first upstream's value wins on conflict).
pub fn merge_capabilities<'a>(caps: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut out = Map::new();
    for cap in caps {
        let Some(cap) = cap.as_object() else { continue };
        for (key, value) in cap {
            match (out.get_mut(key), value) {
                (None, v) => {
                    out.insert(key.clone(), v.clone());
                }
                (Some(Value::Object(existing)), Value::Object(new)) => {
                    for (k, v) in new {
                        match (existing.get_mut(k), v) {
                            (None, v) => {
                                existing.insert(k.clone(), v.clone());
                            }
                            (Some(Value::Bool(a)), Value::Bool(b)) => *a |= *b,
                            (Some(Value::Object(a)), Value::Object(b)) => {
                                for (kk, vv) in b {
                                    a.entry(kk.clone()).or_insert_with(|| vv.clone());
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // Several upstreams may change their lists at any time (restarts): always announce it.
    for key in ["tools", "prompts", "resources"] {
        if let Some(Value::Object(o)) = out.get_mut(key) {
            o.insert("listChanged".into(), Value::Bool(true));
        }
    }
    Value::Object(out)
}

/// The `initialize` result the proxy gives when it fronts several upstreams. `parts` are
/// (server name, result) of the upstreams that answered.
pub fn merge_initialize(parts: &[(&str, Value)], requested_version: Option<&str>) -> Value {
    // The oldest version any upstream chose: every upstream can speak it to us, since each
    // answered with a version it supports at or below what the client asked.
    let version = parts
        .iter()
        .filter_map(|(_, r)| r.get("protocolVersion").and_then(Value::as_str))
        .min()
        .or(requested_version)
        .unwrap_or("2025-06-18")
        .to_owned();
    let caps = merge_capabilities(parts.iter().filter_map(|(_, r)| r.get("capabilities")));
    let instructions = merged_instructions(parts);
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": caps,
        "serverInfo": era::server_info(),
    });
    if let Some(text) = instructions {
        result["instructions"] = Value::String(text);
    }
    result
}

/// The `server/discover` result for several upstreams (2026-07-28).
pub fn merge_discover(parts: &[(&str, Value)]) -> Value {
    let mut versions: Option<Vec<String>> = None;
    for (_, r) in parts {
        let theirs: Vec<String> = r
            .get("supportedVersions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        versions = Some(match versions {
            None => theirs,
            Some(mine) => mine.into_iter().filter(|v| theirs.contains(v)).collect(),
        });
    }
    let caps = merge_capabilities(parts.iter().filter_map(|(_, r)| r.get("capabilities")));
    let ttl = parts.iter().filter_map(|(_, r)| r.get("ttlMs").and_then(Value::as_u64)).min().unwrap_or(0);
    let mut result = json!({
        "resultType": "complete",
        "supportedVersions": versions.unwrap_or_default(),
        "capabilities": caps,
        "ttlMs": ttl,
        "cacheScope": "private",
        "_meta": { "io.modelcontextprotocol/serverInfo": era::server_info() },
    });
    if let Some(text) = merged_instructions(parts) {
        result["instructions"] = Value::String(text);
    }
    result
}

fn merged_instructions(parts: &[(&str, Value)]) -> Option<String> {
    let texts: Vec<String> = parts
        .iter()
        .filter_map(|(name, r)| {
            r.get("instructions").and_then(Value::as_str).filter(|s| !s.is_empty()).map(|s| format!("[{name}] {s}"))
        })
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n\n"))
}

/// Where each upstream stands in a merged, paginated list: `(upstream index, its cursor)`.
/// `None` as cursor means "start from its first page".
pub type ListPosition = Vec<(usize, Option<String>)>;

const CURSOR_PREFIX: &str = "mcp-gate:";

pub fn encode_cursor(position: &ListPosition) -> Option<String> {
    if position.is_empty() {
        return None;
    }
    Some(format!("{CURSOR_PREFIX}{}", serde_json::to_string(position).unwrap_or_default()))
}

pub fn decode_cursor(cursor: &str) -> Option<ListPosition> {
    serde_json::from_str(cursor.strip_prefix(CURSOR_PREFIX)?).ok()
}

/// Rewrites the `name` of every entry of `result[key]` (tools or prompts) with `rename` and
/// returns the entries; other fields stay as raw bytes.
pub fn rename_entries(
    result: &RawValue,
    key: &str,
    mut rename: impl FnMut(&str) -> String,
) -> Result<Vec<Box<RawValue>>, serde_json::Error> {
    let obj = jsonrpc::parse_object(result)?;
    let Some(list) = jsonrpc::get(&obj, key) else { return Ok(Vec::new()) };
    let entries: Vec<Box<RawValue>> = serde_json::from_str(list.get())?;
    entries
        .into_iter()
        .map(|entry| {
            let mut e: RawObject = jsonrpc::parse_object(&entry)?;
            if let Some(name) = jsonrpc::get(&e, "name").and_then(|n| serde_json::from_str::<String>(n.get()).ok()) {
                jsonrpc::set(&mut e, "name", jsonrpc::to_raw(&rename(&name)));
            }
            Ok(jsonrpc::object_to_raw(&e))
        })
        .collect()
}

/// Reads `result[key]` as a list of raw entries without changing them.
pub fn entries(result: &RawValue, key: &str) -> Vec<Box<RawValue>> {
    jsonrpc::parse_object(result)
        .ok()
        .and_then(|obj| jsonrpc::get(&obj, key).and_then(|l| serde_json::from_str(l.get()).ok()))
        .unwrap_or_default()
}

/// The literal prefix of a URI template (up to its first expression), used to route reads of
/// templated resources.
pub fn template_prefix(template: &str) -> &str {
    template.split('{').next().unwrap_or(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_merge_as_union() {
        let a = json!({"tools": {"listChanged": false}, "logging": {}, "x-vendor": {"k": 1}});
        let b = json!({"tools": {}, "resources": {"subscribe": true}, "experimental": {"e": {}}});
        let merged = merge_capabilities([&a, &b]);
        assert_eq!(
            merged,
            json!({"tools": {"listChanged": true}, "logging": {}, "x-vendor": {"k": 1},
                   "resources": {"subscribe": true, "listChanged": true}, "experimental": {"e": {}}})
        );
    }

    #[test]
    fn initialize_takes_oldest_version_and_labels_instructions() {
        let parts = [
            ("a", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "instructions": "use a"})),
            ("b", json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}})),
        ];
        let r = merge_initialize(&parts, Some("2025-11-25"));
        assert_eq!(r["protocolVersion"], "2025-06-18");
        assert_eq!(r["instructions"], "[a] use a");
        assert_eq!(r["serverInfo"]["name"], "mcp-gate");
    }

    #[test]
    fn discover_intersects_versions() {
        let parts = [
            ("a", json!({"supportedVersions": ["2026-07-28", "2025-11-25"], "capabilities": {}, "ttlMs": 500})),
            ("b", json!({"supportedVersions": ["2026-07-28"], "capabilities": {"prompts": {}}, "ttlMs": 100})),
        ];
        let r = merge_discover(&parts);
        assert_eq!(r["supportedVersions"], json!(["2026-07-28"]));
        assert_eq!(r["ttlMs"], 100);
    }

    #[test]
    fn cursor_round_trip() {
        let pos = vec![(0, Some("abc".to_owned())), (2, None)];
        let c = encode_cursor(&pos).unwrap();
        assert_eq!(decode_cursor(&c), Some(pos));
        assert_eq!(decode_cursor("opaque-from-upstream"), None);
        assert_eq!(encode_cursor(&vec![]), None);
    }

    #[test]
    fn rename_keeps_other_fields_raw() {
        let raw = RawValue::from_string(
            r#"{"tools":[{"name":"echo","inputSchema":{"type":"object"},"execution":{"taskSupport":"optional"}}],"nextCursor":"x"}"#
                .into(),
        )
        .unwrap();
        let out = rename_entries(&raw, "tools", |n| exposed_name("srv", n, true, "__")).unwrap();
        assert_eq!(
            out[0].get(),
            r#"{"name":"srv__echo","inputSchema":{"type":"object"},"execution":{"taskSupport":"optional"}}"#
        );
        assert_eq!(split_prefixed("srv__echo__x", "__"), Some(("srv", "echo__x")));
        assert_eq!(template_prefix("file:///{path}"), "file:///");
    }
}
