//! What a webhook delivery carries, per format: the generic JSON (the change as
//! `GET /api/v1/events` shows it, plus a one-line summary), a Slack incoming-webhook message and a
//! Microsoft Teams (Workflows) Adaptive Card.
//!
//! Tool arguments only ever appear in the generic payload, redacted like the audit log
//! (`[approvals] redact`); the policy trace, which can quote argument values, is left out. Names
//! that come from agents and upstream servers are escaped for Slack's and Teams' markup.

use serde_json::{Value, json};

use crate::approval::replies::iso8601;
use crate::approval::{Change, ChangeKind};
use crate::store::audit::{REDACTED, Redactor};
use crate::store::{Approval, Status};

/// Longest value (in characters) put into a chat message field.
const FIELD_CHARS: usize = 300;

/// The approval as the API shows it (the stored record plus its page `url`), with the arguments
/// redacted and without the policy trace.
pub fn approval_view(approval: &Approval, url: &str, redactor: &Redactor) -> Value {
    let mut v = serde_json::to_value(approval).unwrap_or_default();
    let redacted = redactor.redact(&approval.arguments);
    if redacted != approval.arguments
        && let Some(reason) = v.get_mut("rule_reason").filter(|r| !r.is_null())
    {
        // The matching rule's explanation may quote a redacted value.
        *reason = Value::String(REDACTED.to_owned());
    }
    if let Some(map) = v.as_object_mut() {
        map.remove("trace");
    }
    v["arguments"] = redacted;
    v["url"] = Value::String(url.to_owned());
    v
}

/// The generic payload: `{"kind", "at", "actor", "approval", "summary"}`.
pub fn generic(change: &Change, url: &str, redactor: &Redactor) -> Value {
    json!({
        "kind": change.kind,
        "at": change.at,
        "actor": change.actor,
        "approval": approval_view(&change.approval, url, redactor),
        "summary": summary(change),
    })
}

/// One line saying what happened, in plain text.
pub fn summary(change: &Change) -> String {
    let a = &change.approval;
    let call = one_line(&format!("{}:{}", a.server, a.tool));
    let agent = one_line(a.agent.as_deref().unwrap_or("an unnamed agent"));
    let actor = one_line(change.actor.as_deref().or(a.decided_by.as_deref()).unwrap_or("an approver"));
    let text = match change.kind {
        ChangeKind::Requested => format!("Approval needed: {agent} wants to call {call}"),
        ChangeKind::Voted => {
            format!("{actor} voted on {call}: {} of {} approvals", approvals_given(a), a.required_approvals)
        }
        ChangeKind::Approved => format!("Approved by {actor}: {call}"),
        ChangeKind::Denied => {
            let reason = one_line(a.deny_reason.as_deref().unwrap_or("no reason given"));
            format!("Denied by {actor}: {call}: {reason}")
        }
        ChangeKind::Expiring => format!("Still waiting for approval, expires at {}: {call}", iso8601(a.expires_at)),
        ChangeKind::Expired => format!("Expired without a decision: {call}"),
        ChangeKind::Executed => format!("Ran after approval: {call}"),
        ChangeKind::Failed => format!("Failed after approval: {call}"),
    };
    format!("{} ({})", clip(&text, FIELD_CHARS), a.id)
}

fn approvals_given(a: &Approval) -> usize {
    a.votes.iter().filter(|v| v.decision == crate::store::VoteDecision::Approve).count()
}

/// The facts shown in chat messages, as (title, plain text) pairs.
pub(super) fn facts(change: &Change) -> Vec<(&'static str, String)> {
    let a = &change.approval;
    let mut out = vec![
        ("Agent", a.agent.clone().unwrap_or_else(|| "unnamed".into())),
        ("Tool", format!("{}:{}", a.server, a.tool)),
    ];
    let rule = a.rule.clone().unwrap_or_else(|| "policy default".into());
    out.push((
        "Rule",
        match &a.risk {
            Some(risk) => format!("{rule} (risk: {risk})"),
            None => rule,
        },
    ));
    let status = if a.status == Status::Pending && a.required_approvals > 1 {
        format!("pending, {} of {} approvals", approvals_given(a), a.required_approvals)
    } else {
        a.status.to_string()
    };
    out.push(("Status", status));
    if a.status == Status::Pending {
        out.push(("Expires", iso8601(a.expires_at)));
    }
    if let Some(by) = &a.decided_by {
        out.push(("Decided by", by.clone()));
    }
    if let Some(reason) = &a.deny_reason {
        out.push(("Reason", reason.clone()));
    }
    out.push(("Request", a.id.clone()));
    if serde_json::to_value(a).is_ok_and(|v| crate::visible::in_request(&v)) {
        out.insert(0, ("Warning", crate::visible::WARNING.to_owned()));
    }
    out.into_iter().map(|(title, value)| (title, clip(&one_line(&value), FIELD_CHARS))).collect()
}

/// A Slack incoming-webhook message: `text` (the notification) and Block Kit `blocks`.
pub fn slack(change: &Change, url: &str) -> Value {
    let summary = summary(change);
    let fields: Vec<Value> = facts(change)
        .into_iter()
        .map(|(title, value)| {
            let value = match title {
                "Tool" | "Request" => format!("`{}`", slack_escape(&value)),
                "Expires" => slack_date(change.approval.expires_at, &value),
                _ => slack_escape(&value),
            };
            json!({ "type": "mrkdwn", "text": format!("*{title}*\n{value}") })
        })
        .collect();
    json!({
        "text": slack_escape(&summary),
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": format!("*{}*", slack_escape(&summary)) } },
            { "type": "section", "fields": fields },
            {
                "type": "actions",
                "elements": [{
                    "type": "button",
                    "action_id": "open_approval",
                    "text": { "type": "plain_text", "text": button_label(change.kind) },
                    "url": url,
                }],
            },
        ],
    })
}

/// A Microsoft Teams message for a Workflows ("Post to a channel when a webhook request is
/// received") incoming webhook: one Adaptive Card 1.4 attachment.
pub fn teams(change: &Change, url: &str) -> Value {
    let facts: Vec<Value> = facts(change)
        .into_iter()
        .map(|(title, value)| json!({ "title": title, "value": teams_escape(&value) }))
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {
                        "type": "TextBlock",
                        "text": teams_escape(&summary(change)),
                        "weight": "Bolder",
                        "size": "Medium",
                        "wrap": true,
                    },
                    { "type": "FactSet", "facts": facts },
                ],
                "actions": [{ "type": "Action.OpenUrl", "title": button_label(change.kind), "url": url }],
            },
        }],
    })
}

pub(super) fn button_label(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Requested | ChangeKind::Voted | ChangeKind::Expiring => "Approve or deny",
        _ => "Open the request",
    }
}

/// Slack's date formatting (shown in the reader's time zone), with the UTC time as fallback.
fn slack_date(ms: i64, fallback: &str) -> String {
    format!("<!date^{}^{{date_short_pretty}} {{time}}|{fallback}>", ms.div_euclid(1000))
}

/// Escapes the three characters Slack's mrkdwn treats as control characters, so untrusted text
/// cannot form links or mentions.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Backslash-escapes the Markdown that Adaptive Cards render (emphasis, links), so untrusted text
/// shows as written. An underscore inside a word (`delete_file`) cannot start emphasis and is left
/// alone.
pub fn teams_escape(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let inside_word = |j: Option<usize>| j.and_then(|j| chars.get(j)).is_some_and(|c| c.is_alphanumeric());
        let escape = match c {
            '\\' | '*' | '[' | ']' => true,
            '_' => !(inside_word(i.checked_sub(1)) && inside_word(Some(i + 1))),
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Control characters (newlines among them) become spaces; invisible and look-alike characters
/// are shown as marks (`⟨U+202E⟩`, see [`crate::visible`]).
fn one_line(text: &str) -> String {
    let spaced: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    crate::visible::mark(&spaced).into_owned()
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{ApprovalRequest, VoteDecision, VoteRecord};

    fn approval() -> Approval {
        Approval::pending(ApprovalRequest {
            id: "apr_0123456789abcdef".into(),
            key: "k".into(),
            server: "files".into(),
            tool: "delete_file".into(),
            arguments: json!({"path": "/etc/hosts", "password": "hunter2"}),
            agent: Some("claude <@U123>".into()),
            risk: Some("high".into()),
            rule: Some("writes outside /tmp".into()),
            rule_reason: Some("/password = \"hunter2\" matches regex".into()),
            workflow: "two-person".into(),
            required_approvals: 2,
            grant_secs: 0,
            trace: json!([{"rule": "writes outside /tmp", "matched": true, "why": "hunter2"}]),
            created_at: 1_795_237_200_000,
            expires_at: 1_795_251_600_000,
            tool_info: None,
            channel: None,
            approvers: None,
        })
    }

    fn change(kind: ChangeKind, approval: Approval, actor: &str) -> Change {
        Change { kind, approval: Arc::new(approval), actor: Some(actor.into()), at: 1_795_237_260_000, relayed: false }
    }

    const URL: &str = "https://gate.example.com/approvals/apr_0123456789abcdef";

    #[test]
    fn generic_payload_redacts_and_drops_the_trace() {
        let redactor = Redactor::new(vec!["/password".into()]);
        let v = generic(&change(ChangeKind::Requested, approval(), "claude"), URL, &redactor);
        let text = v.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(v["approval"]["arguments"], json!({"path": "/etc/hosts", "password": "[redacted]"}));
        assert_eq!(v["approval"]["rule_reason"], "[redacted]");
        assert!(v["approval"].get("trace").is_none());
        assert_eq!(v["approval"]["url"], URL);
        assert_eq!(v["kind"], "requested");
        assert_eq!(v["actor"], "claude");
        assert_eq!(v["at"], 1_795_237_260_000i64);
        assert_eq!(
            v["summary"],
            "Approval needed: claude <@U123> wants to call files:delete_file (apr_0123456789abcdef)"
        );
        // Nothing redacted: the rule's explanation stays.
        let v = generic(&change(ChangeKind::Requested, approval(), "claude"), URL, &Redactor::default());
        assert_eq!(v["approval"]["rule_reason"], "/password = \"hunter2\" matches regex");
    }

    #[test]
    fn summaries() {
        let mut a = approval();
        a.votes.push(VoteRecord {
            actor: "ada".into(),
            decision: VoteDecision::Approve,
            notes: None,
            reason: None,
            at: 1_795_237_260_000,
        });
        assert_eq!(
            summary(&change(ChangeKind::Voted, a.clone(), "ada")),
            "ada voted on files:delete_file: 1 of 2 approvals (apr_0123456789abcdef)"
        );
        a.status = Status::Denied;
        a.deny_reason = Some("not on a Friday\nsorry".into());
        assert_eq!(
            summary(&change(ChangeKind::Denied, a, "bob")),
            "Denied by bob: files:delete_file: not on a Friday sorry (apr_0123456789abcdef)"
        );
        assert_eq!(
            summary(&change(ChangeKind::Expiring, approval(), "system")),
            "Still waiting for approval, expires at 2026-11-21T09:00:00Z: files:delete_file (apr_0123456789abcdef)"
        );
    }

    #[test]
    fn chat_payloads_escape_untrusted_text() {
        let c = change(ChangeKind::Requested, approval(), "claude");
        let slack = slack(&c, URL).to_string();
        assert!(slack.contains("claude &lt;@U123&gt;"), "{slack}");
        assert!(!slack.contains("<@U123>"), "no mention can be smuggled in: {slack}");
        assert!(!slack.contains("hunter2"), "{slack}");
        let teams = teams(&c, URL).to_string();
        assert!(teams.contains("delete_file"), "{teams}");
        assert!(!teams.contains("hunter2"), "{teams}");
        assert_eq!(teams_escape("[x](http://evil)"), r"\[x\](http://evil)");
        assert_eq!(teams_escape("_a_ **b** a_b c\\"), r"\_a\_ \*\*b\*\* a_b c\\");
        assert_eq!(clip("abcdef", 4), "abc…");
    }

    #[test]
    fn chat_payloads_show_hidden_characters_and_warn() {
        let mut a = approval();
        a.request.agent = Some("clau\u{200b}de\u{a0}\u{a0}x".into());
        a.request.tool = "delete\u{202e}elif".into();
        let c = change(ChangeKind::Requested, a, "claude");
        for text in [slack(&c, URL).to_string(), teams(&c, URL).to_string()] {
            assert!(text.contains("clau⟨U+200B⟩de⟨U+00A0⟩⟨U+00A0⟩x"), "{text}");
            assert!(text.contains("delete⟨U+202E⟩elif"), "{text}");
            assert!(!text.contains('\u{202e}') && !text.contains('\u{200b}'), "{text}");
            assert!(text.contains("invisible or look-alike characters"), "{text}");
        }
        let plain = slack(&change(ChangeKind::Requested, approval(), "claude"), URL).to_string();
        assert!(!plain.contains("look-alike"), "{plain}");
    }
}
