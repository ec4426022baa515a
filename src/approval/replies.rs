//! The tool results the gate answers with instead of running a call. They are `isError: true`
//! tool results (never JSON-RPC errors, which clients hide from the model), carry
//! `_meta["mcp-gate/approval"]`, and hold no secret: only the approval page's URL.

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::store::Approval;
use crate::wire::jsonrpc;

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

/// A gate task cancelled by its client before it ran.
pub fn cancelled_task() -> Box<RawValue> {
    let text = "mcp-gate: this call was cancelled by the client before it ran; it was not run.".to_owned();
    result(text, json!({ "status": "cancelled" }))
}

/// The gate could not evaluate or record the call: it is not run (fail closed).
pub fn internal(why: &str) -> Box<RawValue> {
    let text = format!("mcp-gate: this call was not run because the approval gate failed: {why}");
    result(text, json!({ "status": "error" }))
}

/// Refused by an `ai_driven` workflow's fallback: the reviewer was unsure or could not review,
/// and the workflow denies such calls. `why` completes "the AI reviewer ..."; `retry` when
/// trying later may help (the reviewer failed rather than judged).
pub fn denied_by_reviewer(server: &str, tool: &str, reviewer: &str, why: &str, retry: bool) -> Box<RawValue> {
    let advice = if retry { "It may be reviewed if retried later." } else { "Do not retry it." };
    let text = format!(
        "mcp-gate: this call to `{tool}` on server `{server}` was not run: the AI reviewer ({reviewer}) {why}, \
         and this workflow denies the calls its reviewer does not approve.\n{advice}"
    );
    result(text, json!({ "status": "denied", "by": reviewer }))
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

/// Parses a time as unix milliseconds: a plain integer (already milliseconds), a date
/// `YYYY-MM-DD` (midnight UTC), or `YYYY-MM-DDTHH:MM[:SS[.fff]]` with an optional `Z` or
/// `±HH:MM` offset (UTC when absent).
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let num = |s: &str| -> Option<i64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let (year, month, day) = (num(parts.next()?)?, num(parts.next()?)?, num(parts.next()?)?);
    // Years of four digits: the arithmetic below cannot overflow.
    if parts.next().is_some() || !(1..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut ms = days * 86_400_000;
    if let Some(time) = time {
        let (clock, offset_ms) = if let Some(c) = time.strip_suffix('Z') {
            (c, 0)
        } else if let Some(i) = time.rfind(['+', '-']).filter(|&i| i >= 5) {
            let (c, off) = time.split_at(i);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (h, m) = off[1..].split_once(':')?;
            (c, sign * (num(h)? * 3600 + num(m)? * 60) * 1000)
        } else {
            (time, 0)
        };
        let mut fields = clock.split(':');
        let hours = num(fields.next()?)?;
        let minutes = num(fields.next()?)?;
        let (secs, frac) = match fields.next() {
            Some(s) => match s.split_once('.') {
                // Digits only, checked before the slice (which must fall on a character boundary).
                Some((s, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                    (num(s)?, num(&format!("{f:0<3}")[..3])?)
                }
                Some(_) => return None,
                None => (num(s)?, 0),
            },
            None => (0, 0),
        };
        if fields.next().is_some() || hours > 23 || minutes > 59 || secs > 60 {
            return None;
        }
        ms += ((hours * 60 + minutes) * 60 + secs) * 1000 + frac - offset_ms;
    }
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_back() {
        for ms in [0, 951_782_400_000, 1_795_237_200_000, -86_400_000] {
            assert_eq!(parse_time(&iso8601(ms)), Some(ms), "{}", iso8601(ms));
        }
        assert_eq!(parse_time("2026-11-21"), Some(1_795_219_200_000));
        assert_eq!(parse_time("2026-11-21T05:00"), Some(1_795_237_200_000));
        assert_eq!(parse_time("2026-11-21T06:00:00+01:00"), Some(1_795_237_200_000));
        assert_eq!(parse_time("2026-11-21T05:00:00.250Z"), Some(1_795_237_200_250));
        assert_eq!(parse_time("1795237200000"), Some(1_795_237_200_000));
        for bad in [
            "",
            "2026-13-01",
            "2026-11",
            "yesterday",
            "2026-11-21T25:00",
            "2026-11-21T05:00:00+0100",
            // Neither panics: a fraction that is not digits, a year whose milliseconds overflow.
            "2026-11-21T00:00:00.\u{e9}\u{e9}",
            "99999999999999-01-01",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_795_237_200_000), "2026-11-21T05:00:00Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
