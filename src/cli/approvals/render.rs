//! Human output of the command-line approver: the list table, the block of one request and the
//! line of one event. Everything shown comes from agents and upstream servers and may hold
//! terminal escape sequences: control characters are shown escaped, never sent raw.

use std::fmt::Write as _;

use serde_json::Value;

use crate::approval::replies::iso8601;

/// Text from the API, safe for a terminal: control characters are escaped (`\u{1b}`, `\n`),
/// and invisible or look-alike characters shown as marks (`⟨U+202E⟩`, see [`crate::visible`]).
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else if crate::visible::is_hidden(c) {
            out.push_str(&crate::visible::mark_of(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// JSON text (as `serde_json` writes it) safe for a terminal and still the same JSON: `serde_json`
/// escapes only the C0 controls, so DEL, the C1 controls (U+009B is a CSI), bidi overrides and the
/// other invisible characters are written as `\u` escapes. Outside strings, JSON has none of them.
pub fn json_for_terminal(json: &str) -> String {
    if !crate::visible::contains_hidden(json) {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if crate::visible::is_hidden(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn millis(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// `5s`, `3m`, `2h`, `4d`.
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `server:tool`, cleaned.
fn call(a: &Value) -> String {
    clean(&format!("{}:{}", field(a, "server"), field(a, "tool")))
}

/// The table of `approvals list`: id, age, agent, server:tool, rule, status.
pub fn table(approvals: &[Value], now: i64) -> String {
    let mut rows = vec![["ID", "AGE", "AGENT", "SERVER:TOOL", "RULE", "STATUS"].map(str::to_owned)];
    for a in approvals {
        let agent = a.get("agent").and_then(Value::as_str).unwrap_or("-");
        let rule = a.get("rule").and_then(Value::as_str).unwrap_or("-");
        rows.push([
            clean(field(a, "id")),
            millis(a, "created_at").map_or_else(|| "-".into(), |at| age(now - at)),
            clip(&clean(agent), 24),
            clip(&call(a), 48),
            clip(&clean(rule), 32),
            if crate::visible::in_request(a) {
                format!("{} (hidden characters!)", clean(field(a, "status")))
            } else {
                clean(field(a, "status"))
            },
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The readable block of `approvals show` (and of a request in `watch --interactive`).
pub fn block(a: &Value, now: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}  {}", clean(field(a, "id")), clean(field(a, "status")));
    if crate::visible::in_request(a) {
        let _ = writeln!(out, "  WARNING: {}", crate::visible::WARNING);
    }
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "  {label:<10} {value}");
    };
    line("tool", call(a));
    line("agent", clean(a.get("agent").and_then(Value::as_str).unwrap_or("-")));
    let rule = clean(a.get("rule").and_then(Value::as_str).unwrap_or("policy default"));
    line(
        "rule",
        match a.get("risk").and_then(Value::as_str) {
            Some(risk) => format!("{rule} (risk: {})", clean(risk)),
            None => rule,
        },
    );
    if let Some(reason) = a.get("rule_reason").and_then(Value::as_str) {
        line("why", clean(reason));
    }
    if let Some(review) = a.get("ai_review").filter(|r| r.is_object()) {
        line("ai review", ai_review(review));
    }
    let required = a.get("required_approvals").and_then(Value::as_u64).unwrap_or(1);
    let given = a
        .get("votes")
        .and_then(Value::as_array)
        .map_or(0, |votes| votes.iter().filter(|v| v["decision"] == "approve").count());
    line("workflow", format!("{} ({given} of {required} approvals)", clean(field(a, "workflow"))));
    if let Some(at) = millis(a, "created_at") {
        line("created", format!("{} ({} ago)", iso8601(at), age(now - at)));
    }
    if let Some(at) = millis(a, "expires_at") {
        let when = if at > now { format!("in {}", age(at - now)) } else { format!("{} ago", age(now - at)) };
        line("expires", format!("{} ({when})", iso8601(at)));
    }
    if let Some(by) = a.get("decided_by").and_then(Value::as_str) {
        line("decided", clean(by));
    }
    if let Some(reason) = a.get("deny_reason").and_then(Value::as_str) {
        line("reason", clean(reason));
    }
    if let Some(notes) = a.get("notes").and_then(Value::as_str) {
        line("notes", clean(notes));
    }
    line("url", clean(field(a, "url")));
    // Pretty JSON escapes control characters inside strings; the rest of what does not show is
    // marked. Shown in full.
    let arguments = serde_json::to_string_pretty(a.get("arguments").unwrap_or(&Value::Null)).unwrap_or_default();
    let _ = writeln!(out, "  arguments:");
    for l in arguments.lines() {
        let _ = writeln!(out, "    {}", crate::visible::mark(l));
    }
    if let Some(history) = a.get("history").and_then(Value::as_array) {
        let _ = writeln!(out, "  history:");
        for t in history {
            let from = t.get("from").and_then(Value::as_str).unwrap_or("created");
            let mut entry = format!(
                "    {}  {} -> {}  by {}",
                millis(t, "at").map(iso8601).unwrap_or_default(),
                clean(from),
                clean(field(t, "to")),
                clean(field(t, "actor"))
            );
            if let Some(reason) = t.get("reason").and_then(Value::as_str) {
                let _ = write!(entry, "  reason: {}", clean(reason));
            }
            if let Some(notes) = t.get("notes").and_then(Value::as_str) {
                let _ = write!(entry, "  notes: {}", clean(notes));
            }
            let _ = writeln!(out, "{entry}");
        }
    }
    out
}

/// The AI reviewer's opinion: `approve (confidence 0.92, model M): reasoning`.
fn ai_review(r: &Value) -> String {
    let mut text = clean(r.get("decision").and_then(Value::as_str).unwrap_or("no decision"));
    let mut details = Vec::new();
    if let Some(c) = r.get("confidence").and_then(Value::as_f64) {
        details.push(format!("confidence {c:.2}"));
    }
    if let Some(m) = r.get("model").and_then(Value::as_str) {
        details.push(format!("model {}", clean(m)));
    }
    if r.get("cached").and_then(Value::as_bool) == Some(true) {
        details.push("reused".into());
    }
    if !details.is_empty() {
        let _ = write!(text, " ({})", details.join(", "));
    }
    if let Some(why) = r.get("reasoning").and_then(Value::as_str).or_else(|| r.get("error").and_then(Value::as_str)) {
        let _ = write!(text, ": {}", clean(why));
    }
    text
}

/// One line per change event of `approvals watch`: time, kind, id, call, then what matters for
/// that kind.
pub fn event_line(kind: &str, change: &Value) -> String {
    let a = &change["approval"];
    let at = change.get("at").and_then(Value::as_i64).map(iso8601).unwrap_or_default();
    let mut line = format!("{at}  {:<9} {}  {}", clean(kind), clean(field(a, "id")), call(a));
    let agent = a.get("agent").and_then(Value::as_str);
    let actor = change.get("actor").and_then(Value::as_str);
    match kind {
        "requested" => {
            let _ = write!(line, "  agent: {}", clean(agent.unwrap_or("-")));
            if let Some(rule) = a.get("rule").and_then(Value::as_str) {
                let _ = write!(line, "  rule: {}", clean(rule));
            }
            let _ = write!(line, "  {}", clean(field(a, "url")));
        }
        "voted" | "approved" | "denied" => {
            let _ = write!(line, "  by {}", clean(actor.unwrap_or("-")));
            if let Some(reason) = a.get("deny_reason").and_then(Value::as_str).filter(|_| kind == "denied") {
                let _ = write!(line, "  reason: {}", clean(reason));
            }
        }
        "expiring" => {
            if let Some(at) = millis(a, "expires_at") {
                let _ = write!(line, "  expires {}", iso8601(at));
            }
        }
        _ => {}
    }
    line
}

/// What a decision came to, in one line.
pub fn decision_line(a: &Value) -> String {
    let id = clean(field(a, "id"));
    match field(a, "status") {
        "approved" => format!("approved {id}"),
        "denied" => format!("denied {id}: {}", clean(field(a, "deny_reason"))),
        "pending" => {
            let required = a.get("required_approvals").and_then(Value::as_u64).unwrap_or(1);
            let given = a
                .get("votes")
                .and_then(Value::as_array)
                .map_or(0, |votes| votes.iter().filter(|v| v["decision"] == "approve").count());
            format!("vote recorded on {id}: {given} of {required} approvals, still pending")
        }
        other => format!("{id} is {}", clean(other)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hidden_characters_are_marked_and_arguments_shown_in_full() {
        let long = "x".repeat(5000);
        let a = json!({"id": "apr_1", "status": "pending", "server": "files", "tool": "delete_file",
            "agent": "Agent\u{200b}X", "arguments": {"path": "/home/user/\u{202e}cod.tropeR", "blob": long}});
        let text = block(&a, 0);
        assert!(text.contains("/home/user/⟨U+202E⟩cod.tropeR"), "{text}");
        assert!(text.contains("Agent⟨U+200B⟩X"), "{text}");
        assert!(text.contains("WARNING: this request contains invisible"), "{text}");
        assert!(text.contains(&long), "arguments are never cut");
        assert!(!text.contains('\u{202e}') && !text.contains('\u{200b}'));
        let listed = table(&[a], 0);
        assert!(listed.contains("hidden characters!") && !listed.contains('\u{200b}'), "{listed}");
        let plain = json!({"id": "apr_2", "status": "pending", "server": "files", "tool": "t", "arguments": {}});
        assert!(!block(&plain, 0).contains("WARNING"));
    }

    #[test]
    fn json_for_a_terminal_escapes_what_serde_json_leaves_raw() {
        let v = json!({"k\u{202e}": "a\u{9b}2J\u{7f}\u{1b}\u{e0041}\n"});
        let text = json_for_terminal(&serde_json::to_string(&v).unwrap());
        assert_eq!(text, r#"{"k\u202e":"a\u009b2J\u007f\u001b\udb40\udc41\n"}"#);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
        assert_eq!(json_for_terminal("{\"a\": [1]}\n"), "{\"a\": [1]}\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("rm\u{1b}[2J -rf\n"), "rm\\u{1b}[2J -rf\\n");
        assert_eq!(clean("fine: ü"), "fine: ü");
    }

    #[test]
    fn block_shows_the_reviewers_opinion() {
        let a = json!({"id": "apr_1", "status": "pending", "server": "db", "tool": "drop", "arguments": {},
            "ai_review": {"decision": "escalate", "confidence": 0.4, "model": "m1", "reasoning": "unsure\nwhy",
                "cached": false}});
        let text = block(&a, 0);
        assert!(text.contains("  ai review  escalate (confidence 0.40, model m1): unsure\\nwhy\n"), "{text}");
    }

    #[test]
    fn ages() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m");
        assert_eq!(age(7_200_000), "2h");
        assert_eq!(age(3 * 86_400_000), "3d");
        assert_eq!(age(-5), "0s");
    }

    #[test]
    fn table_lines_up() {
        let now = 1_795_237_200_000;
        let rows = [
            json!({"id": "apr_1", "created_at": now - 65_000, "agent": "claude", "server": "files",
                "tool": "delete_file", "rule": "writes", "status": "pending"}),
            json!({"id": "apr_22", "created_at": now - 5_000, "agent": null, "server": "db",
                "tool": "drop\u{1b}[31m", "rule": null, "status": "approved"}),
        ];
        assert_eq!(
            table(&rows, now),
            "ID      AGE  AGENT   SERVER:TOOL        RULE    STATUS\n\
             apr_1   1m   claude  files:delete_file  writes  pending\n\
             apr_22  5s   -       db:drop\\u{1b}[31m  -       approved\n"
        );
    }
}
