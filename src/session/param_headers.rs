//! `Mcp-Param-*` headers of a `tools/call` (2026-07-28 Streamable HTTP): the values of the
//! arguments a tool's `inputSchema` marks with `x-mcp-header`, repeated in headers so that
//! routers and gateways can act on them without reading the body.
//!
//! A router acts on the header, the policy judged the body: the two must say the same. So the
//! headers sent upstream are made here from the arguments that were judged, never copied from the
//! client, and a client whose header for a marked argument says something else than its body is
//! refused (`-32020`, as a server that reads the body must). Headers the schema does not mark pass
//! as they came, as an intermediary passes headers it does not know.

use serde_json::{Map, Value};

use crate::wire::headers::{decode_value, encode_value};

/// The marked arguments of a schema: each header name (without the prefix) and the chain of
/// `properties` keys that leads to its argument. Only chains made of `properties` alone count,
/// as the specification requires. Nothing is allocated for a schema that marks nothing, the
/// common case on every call.
fn marked(schema: &Map<String, Value>) -> Vec<(&str, Vec<&str>)> {
    let mut found = Vec::new();
    if has_mark(schema) {
        walk(schema, &mut Vec::new(), &mut found);
    }
    found
}

fn has_mark(schema: &Map<String, Value>) -> bool {
    let Some(Value::Object(properties)) = schema.get("properties") else { return false };
    properties.values().any(|sub| match sub {
        Value::Object(sub) => sub.contains_key("x-mcp-header") || has_mark(sub),
        _ => false,
    })
}

fn walk<'a>(schema: &'a Map<String, Value>, path: &mut Vec<&'a str>, found: &mut Vec<(&'a str, Vec<&'a str>)>) {
    let Some(Value::Object(properties)) = schema.get("properties") else { return };
    for (key, sub) in properties {
        let Value::Object(sub) = sub else { continue };
        path.push(key);
        if let Some(Value::String(header)) = sub.get("x-mcp-header") {
            found.push((header.as_str(), path.clone()));
        }
        walk(sub, path, found);
        path.pop();
    }
}

/// The header value of an argument: strings as they are, integers in decimal, booleans as
/// `true`/`false`; `None` for anything else (the header is then left out).
fn header_value(argument: &Value) -> Option<String> {
    match argument {
        Value::String(s) => Some(encode_value(s)),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

fn at<'a>(arguments: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(arguments, |v, key| v.get(*key))
}

/// A header of the client for a marked argument that does not match the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub header: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "header Mcp-Param-{} does not match the arguments", self.header)
    }
}

/// The `Mcp-Param-*` headers to send upstream with a call of a tool with `schema` and these
/// (judged) `arguments`, given those the client sent (`from_client`, names without the prefix).
/// `Err` when a client header for a marked argument says something else than the arguments.
pub fn mirror(
    schema: Option<&Map<String, Value>>,
    arguments: &Value,
    from_client: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, Mismatch> {
    let marked = schema.map(marked).unwrap_or_default();
    if marked.is_empty() {
        return Ok(from_client);
    }
    let mut out = Vec::with_capacity(marked.len() + from_client.len());
    for (name, value) in from_client {
        let Some((_, path)) = marked.iter().find(|(header, _)| header.eq_ignore_ascii_case(&name)) else {
            out.push((name, value));
            continue;
        };
        let judged = at(arguments, path).and_then(header_value);
        if judged.as_deref().map(decode_value) != Some(decode_value(&value)) {
            return Err(Mismatch { header: name });
        }
    }
    for (header, path) in &marked {
        if let Some(value) = at(arguments, path).and_then(header_value) {
            out.push(((*header).to_owned(), value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Map<String, Value> {
        let v = json!({
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "query": {"type": "string"},
                "target": {"type": "object", "properties": {"zone": {"type": "integer", "x-mcp-header": "Zone"}}},
                "list": {"type": "array", "items": {"type": "object", "properties": {"x": {"x-mcp-header": "X"}}}}
            }
        });
        v.as_object().cloned().unwrap()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn headers_are_made_from_the_judged_arguments() {
        let args = json!({"region": "sandbox", "query": "q", "target": {"zone": 7}});
        assert_eq!(mirror(Some(&schema()), &args, vec![]).unwrap(), h(&[("Region", "sandbox"), ("Zone", "7")]));
        // Only chains of `properties` count: nothing from inside `items`.
        let args = json!({"list": [{"x": "1"}]});
        assert_eq!(mirror(Some(&schema()), &args, vec![]).unwrap(), h(&[]));
        // Values that need it are encoded.
        let args = json!({"region": " padded "});
        assert_eq!(mirror(Some(&schema()), &args, vec![]).unwrap(), h(&[("Region", "=?base64?IHBhZGRlZCA=?=")]));
    }

    #[test]
    fn a_client_header_that_disagrees_with_the_body_is_refused() {
        let args = json!({"region": "sandbox"});
        let err = mirror(Some(&schema()), &args, h(&[("Region", "production")])).unwrap_err();
        assert_eq!(err.header, "Region");
        // Header names are case-insensitive; a header for an argument that is absent disagrees too.
        assert!(mirror(Some(&schema()), &args, h(&[("region", "production")])).is_err());
        assert!(mirror(Some(&schema()), &args, h(&[("Zone", "1")])).is_err());
        // Agreeing (encoded or not) is fine, and the header sent is the one made from the body.
        let ok = mirror(Some(&schema()), &args, h(&[("REGION", "=?base64?c2FuZGJveA==?=")])).unwrap();
        assert_eq!(ok, h(&[("Region", "sandbox")]));
    }

    #[test]
    fn headers_the_schema_does_not_mark_pass_as_they_came() {
        let args = json!({"region": "sandbox"});
        let out = mirror(Some(&schema()), &args, h(&[("Trace", "abc")])).unwrap();
        assert_eq!(out, h(&[("Trace", "abc"), ("Region", "sandbox")]));
        assert_eq!(mirror(None, &args, h(&[("Region", "x")])).unwrap(), h(&[("Region", "x")]));
    }
}
