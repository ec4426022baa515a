//! The `ntfy` webhook format: a push notification through an [ntfy](https://ntfy.sh) server
//! (ntfy.sh or one of your own), on a phone or a desktop.
//!
//! The webhook's `url` is the topic's address, `https://ntfy.sh/TOPIC` (a query such as
//! `?auth=...` is kept). Deliveries use ntfy's JSON publishing: they are POSTed to the server's
//! root (`https://ntfy.sh`) with the topic in the body, and carry a title, a plain-text message,
//! a priority, emoji tags, `click` and one `view` action: both open the request's page. Approving
//! still happens there, with a signed-in session; the notification approves nothing. Like the
//! Slack and Teams formats, it names the call but carries no argument values.

use serde_json::{Value, json};

use super::payload::{button_label, facts, summary};
use crate::approval::{Change, ChangeKind};

/// The topic of an ntfy topic URL: its last path segment.
pub fn topic_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.path_segments().and_then(|mut s| s.next_back().map(str::to_owned)))
        .unwrap_or_default()
}

/// Where a topic URL's JSON messages are published: the same URL without the topic.
pub fn publish_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else { return url.to_owned() };
    let mut segments: Vec<String> = u.path_segments().map(|s| s.map(str::to_owned).collect()).unwrap_or_default();
    segments.pop();
    let path = segments.join("/");
    u.set_path(if path.is_empty() { "/" } else { &path });
    let text = u.to_string();
    // `https://ntfy.sh/` and `https://ntfy.sh` are the same root; keep ntfy's own spelling.
    match (text.strip_suffix('/'), u.query()) {
        (Some(bare), None) if path.is_empty() => bare.to_owned(),
        _ => text,
    }
}

/// Whether `url` names a topic: a non-empty last path segment of letters, digits, `-` and `_`
/// (what ntfy accepts).
pub fn is_topic_url(url: &str) -> bool {
    let topic = topic_of(url);
    !topic.is_empty() && topic.len() <= 64 && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The JSON message for `change`, on `topic`, opening `page` (the request's page).
pub fn payload(change: &Change, page: &str, topic: &str) -> Value {
    let (priority, tags) = match change.kind {
        ChangeKind::Requested => (4, "raised_hand"),
        ChangeKind::Expiring => (4, "hourglass"),
        ChangeKind::Voted => (3, "ballot_box_with_check"),
        ChangeKind::Approved => (3, "white_check_mark"),
        ChangeKind::Denied => (3, "no_entry"),
        ChangeKind::Expired => (3, "x"),
        ChangeKind::Executed => (2, "heavy_check_mark"),
        ChangeKind::Failed => (3, "warning"),
    };
    let facts = facts(change);
    let mut tags = vec![tags];
    if facts.iter().any(|(title, _)| *title == "Warning") {
        tags.push("warning");
    }
    let message: Vec<String> = facts.iter().map(|(title, value)| format!("{title}: {value}")).collect();
    json!({
        "topic": topic,
        "title": summary(change),
        "message": message.join("\n"),
        "priority": priority,
        "tags": tags,
        "click": page,
        "actions": [{ "action": "view", "label": button_label(change.kind), "url": page, "clear": true }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_urls() {
        assert_eq!(topic_of("https://ntfy.sh/mcp-gate-x1"), "mcp-gate-x1");
        assert_eq!(publish_url("https://ntfy.sh/mcp-gate-x1"), "https://ntfy.sh");
        assert_eq!(publish_url("https://push.example/ntfy/alerts?auth=abc"), "https://push.example/ntfy?auth=abc");
        assert_eq!(publish_url("https://ntfy.sh/t?auth=abc"), "https://ntfy.sh/?auth=abc");
        assert!(is_topic_url("https://ntfy.sh/mcp_gate-1"));
        assert!(!is_topic_url("https://ntfy.sh/"));
        assert!(!is_topic_url("https://ntfy.sh/a%20b"));
    }
}
