//! The client-facing side: stdio (the client started us) and Streamable HTTP (`serve`).

pub mod busy_poll;
pub mod http;
pub mod settings;
pub mod stdio;

use tracing::warn;

use crate::gate::RefusedCall;
use crate::session::SessionOptions;
use crate::session::merge;
use crate::wire::jsonrpc::{Kind, Message, ParseError, strict};

/// Reads one client message strictly, refusing keys of one object that differ only by case as well
/// as duplicates, and a key of the envelope or its `params` that differs only by case from one the
/// protocol defines there ([`strict::Keys::Folded`]: a server that matches keys loosely would read
/// them as one, and run what the gate did not judge), and refuses a request whose id is
/// `null` (MCP's ids are strings or integers, and a `null` id is the one an error about an
/// unreadable message carries) and a method that only differs from `tools/call` by case,
/// spaces or control characters: it would pass the gate as an unknown method, and a server that
/// reads method names loosely could take it for a tool call.
pub(crate) fn read(bytes: &[u8]) -> Result<Message, ParseError> {
    let msg = Message::parse_with(bytes, strict::Keys::Folded)?;
    if msg.kind() == Kind::Request && msg.id_text() == Some("null") {
        return Err(ParseError::Invalid("a request id must be a string or an integer, not null"));
    }
    if msg.kind() != Kind::Response && near_tools_call(msg.method()) {
        return Err(ParseError::Invalid("a method written like tools/call but not as it is refused"));
    }
    Ok(msg)
}

/// Whether `method` is not `tools/call` but becomes it without case, spaces and control characters.
fn near_tools_call(method: &str) -> bool {
    const GATED: &str = "tools/call";
    if method == GATED {
        return false;
    }
    let mut kept = method.chars().filter(|c| !c.is_whitespace() && !c.is_control());
    GATED.chars().all(|g| kept.next().is_some_and(|c| c.eq_ignore_ascii_case(&g))) && kept.next().is_none()
}

/// Handles a client message that could not be read: a refused `tools/call` is audited, a request
/// gets the error to answer with (under its own id when a lenient look can read it), and a
/// notification or response is dropped with a warning (`None`). Nothing of it goes upstream.
pub(crate) fn refuse(bytes: &[u8], err: &ParseError, opts: &SessionOptions, agent: Option<&str>) -> Option<Message> {
    let env = strict::lenient_envelope(bytes);
    if env.is_tools_call() {
        let server = refused_route(&env.tool_names, opts);
        opts.gate.refused(&RefusedCall { server, tool_names: &env.tool_names, agent, reason: err.rule() });
    }
    let method = env.methods.first().map_or("", String::as_str);
    match (env.methods.is_empty(), env.id_count) {
        // A request whose id is `true`, `null`, an array or an object has an id the scan does not
        // count; it is still no notification, and gets its error (without an id).
        (false, 0) if !has_id_member(bytes) => {
            warn!(method, "notification from the client refused and dropped: {err}");
            None
        }
        (true, 1..) if env.response => {
            warn!("response from the client refused and dropped: {err}");
            None
        }
        _ => {
            warn!(method, "message from the client refused: {err}");
            Some(Message::error(env.id, err.code(), &err.to_string()))
        }
    }
}

/// Whether a message that is an object has a top-level `id` member, whatever its value. Read
/// leniently (a duplicate key is no error here): only to choose between answering and dropping.
fn has_id_member(bytes: &[u8]) -> bool {
    serde_json::from_slice::<std::collections::HashMap<String, serde::de::IgnoredAny>>(bytes)
        .is_ok_and(|members| members.contains_key("id"))
}

/// The upstream a refused call names, for the audit record ("" when it cannot be told).
fn refused_route<'a>(names: &[String], opts: &'a SessionOptions) -> &'a str {
    if let [only] = opts.servers.as_slice() {
        return &only.name;
    }
    let Some((prefix, _)) = names.first().and_then(|n| merge::split_prefixed(n, &opts.separator)) else { return "" };
    opts.servers.iter().find(|s| s.prefix && s.name == prefix).map_or("", |s| s.name.as_str())
}
