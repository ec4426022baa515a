//! The tool results the gate answers with instead of running a call. They are `isError: true`
//! tool results (never JSON-RPC errors, which clients hide from the model), carry
//! `_meta["mcp-gate/approval"]`, and hold no secret: only the approval page's URL.

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::jsonrpc;
use crate::store::Approval;

fn result(text: String, approval: Value) -> Box<RawValue> {
    jsonrpc::to_raw(&json!({
        "content": [{ "type": "text", "text": text }],
        "isError": true,
        "_meta": { "mcp-gate/approval": approval },
    }))
}

fn meta(a: &Approval, status: &str, url: &str) -> Value {
    json!({ "id": a.id, "status": status, "url": url })
}

/// Not decided yet (fail fast, or the wait ran out).
pub fn pending(a: &Approval, url: &str) -> Box<RawValue> {
    let text = format!(
        "mcp-gate: this call to `{}` on server `{}` needs a person's approval before it runs.\n\
         Ask the user to open {url} to approve or deny it.\n\
         Once it is approved, retry exactly the same call (same tool, same arguments): it will then run once.\n\
         Approval request {} expires at {}.",
        a.tool,
        a.server,
        a.id,
        iso8601(a.expires_at)
    );
    result(text, meta(a, "pending", url))
}

pub fn denied(a: &Approval, url: &str) -> Box<RawValue> {
    let by = a.decided_by.as_deref().unwrap_or("an approver");
    let reason = a.deny_reason.as_deref().unwrap_or("no reason given");
    let text = format!(
        "mcp-gate: this call to `{}` on server `{}` was denied by {by}: {reason}\nDo not retry it.",
        a.tool, a.server
    );
    result(text, meta(a, "denied", url))
}

pub fn expired(a: &Approval, url: &str) -> Box<RawValue> {
    let text = format!(
        "mcp-gate: approval request {} for `{}` on server `{}` expired before anyone decided. \
         Retrying the call will ask for approval again.",
        a.id, a.tool, a.server
    );
    result(text, meta(a, "expired", url))
}

/// The approval was for one run and that run happened.
pub fn spent(a: &Approval, url: &str) -> Box<RawValue> {
    let text = format!(
        "mcp-gate: approval request {} for `{}` on server `{}` was already used. \
         Retry the call to ask for approval again.",
        a.id, a.tool, a.server
    );
    result(text, meta(a, a.status.as_str(), url))
}

pub fn denied_by_policy(server: &str, tool: &str, rule: Option<&str>, reason: &str) -> Box<RawValue> {
    let rule_text = rule.map(|r| format!(" (rule `{r}`)")).unwrap_or_default();
    let text = format!(
        "mcp-gate: calls to `{tool}` on server `{server}` are not allowed by policy{rule_text}: {reason}\nDo not retry it."
    );
    result(text, json!({ "status": "denied", "rule": rule }))
}

/// The gate could not evaluate or record the call: it is not run (fail closed).
pub fn internal(why: &str) -> Box<RawValue> {
    let text = format!("mcp-gate: this call was not run because the approval gate failed: {why}");
    result(text, json!({ "status": "error" }))
}

/// The message of progress notifications sent while a call waits.
pub fn waiting_message(a: &Approval, url: &str) -> String {
    format!("Waiting for approval of `{}` ({}): {url}", a.tool, a.id)
}

/// Unix milliseconds as an ISO 8601 UTC timestamp (`2026-11-21T05:00:00Z`).
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_795_237_200_000), "2026-11-21T05:00:00Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
