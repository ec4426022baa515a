//! Server-rendered dashboard: sign-in, the queue (Pending / All tabs with filters, pages and bulk
//! decisions), one request with Approve and Deny, and stats. Templates are maud (auto-escaping):
//! tool arguments are untrusted and shown as text only. Everything works without JavaScript;
//! `live.js` only refreshes views when the event stream reports a change.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::api::{ListQuery, decide_many, time_param};
use super::{BrowserSession, COOKIE, WebState};
use crate::approval::replies::iso8601;
use crate::secret::constant_time_eq;
use crate::store::approvals::DEFAULT_LIST_LIMIT;
use crate::store::stats::Breakdown;
use crate::store::{Approval, Status};

const STYLE: &str = include_str!("style.css");
const LIVE_JS: &str = include_str!("live.js");

pub fn routes() -> Router<Arc<WebState>> {
    Router::new()
        .route("/", get(queue))
        .route("/stats", get(stats))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/approvals/bulk", post(bulk))
        .route("/approvals/{id}", get(detail))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
        .route("/assets/style.css", get(style))
        .route("/assets/live.js", get(live_js))
}

/// Which top-level view a page belongs to (the highlighted tab).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tab {
    Pending,
    All,
    Stats,
    None,
}

pub(super) fn page(title: &str, tab: Tab, session: Option<&BrowserSession>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · mcp-gate" }
                link rel="stylesheet" href="/assets/style.css";
                @if session.is_some() { script src="/assets/live.js" defer {} }
            }
            body {
                header {
                    a.brand href="/" { "mcp-gate" }
                    @if let Some(s) = session {
                        nav aria-label="Views" {
                            a href="/" aria-current=[(tab == Tab::Pending).then_some("page")] { "Pending" }
                            a href="/?view=all" aria-current=[(tab == Tab::All).then_some("page")] { "All" }
                            a href="/stats" aria-current=[(tab == Tab::Stats).then_some("page")] { "Stats" }
                        }
                        span.who { (s.who.name) }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                div #live.live hidden role="status" {
                    "Something changed. " a href="" { "Refresh" }
                }
                main { (body) }
            }
        }
    }
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

async fn live_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], LIVE_JS)
}

fn session_of(state: &WebState, headers: &HeaderMap) -> Option<(String, BrowserSession)> {
    state.browser_session(headers)
}

/// Only same-origin paths may be redirected to after sign-in: one leading `/`, then no `/` or
/// `\` right after it, no backslash anywhere, no control character or space (browsers drop tabs
/// and newlines, so `/\t/evil.example` would become `//evil.example`). Anything else goes to `/`.
fn safe_next(next: Option<&str>) -> String {
    let same_origin = |n: &str| {
        n.starts_with('/')
            && !n.starts_with("//")
            && !n.contains('\\')
            && !n.chars().any(|c| c.is_control() || c.is_whitespace() || crate::visible::is_hidden(c))
    };
    match next {
        Some(n) if same_origin(n) => n.to_owned(),
        _ => "/".to_owned(),
    }
}

/// The texts a redirect may ask a page to show, by code: a notice or an error is never text from
/// the query, which anyone can put in a link.
fn flash_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "approved" => "Recorded: approved.",
        "denied" => "Recorded: denied.",
        "voted" => "Recorded: your vote. More approvals are needed.",
        "bulk-approved" => "The selected requests were approved.",
        "bulk-denied" => "The selected requests were denied.",
        "bulk-partial" => "Some of the selected requests were not decided: open them to see their status.",
        "choose-action" => "Choose approve or deny.",
        "select-some" => "Select at least one request.",
        "too-many" => "Too many requests at a time.",
        "reason-required" | "reason_required" => "A reason is required to deny (and, in this workflow, to approve).",
        "not_found" => "There is no such request.",
        "not_pending" => "The request is no longer pending.",
        "already_decided" => "You have already decided on this request.",
        "expired" => "The request expired before the decision.",
        "not_an_approver" => "You are not among the approvers of this request's workflow.",
        "own_request" => "You made this request: you cannot approve it.",
        "reserved_name" => "This approver name is reserved.",
        "internal" => "The decision could not be recorded: see the server's log.",
        _ => return None,
    })
}

fn to_login(next: &str) -> Response {
    let target = format!("/login?next={}", percent_encode(next));
    Redirect::to(&target).into_response()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_form(State(state): State<Arc<WebState>>, Query(q): Query<NextQuery>) -> Markup {
    let next = safe_next(q.next.as_deref());
    // Shown inside a command the person is told to run: only an id's characters, never text
    // from a link that could make the command do something else.
    let id = next.strip_prefix("/approvals/").filter(|id| {
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    page(
        "Sign in",
        Tab::None,
        None,
        html! {
            h1 { "Sign in" }
            (how_to_sign_in(&state, id))
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Approver token" }
                input id="token" type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// The command that signs a browser in on this machine, and where the token is: the sign-in
/// page's instructions. `id` is the request the person was going to.
pub(super) fn how_to_sign_in(state: &WebState, id: Option<&str>) -> Markup {
    let base = state.approvals.settings.public_url.trim_end_matches('/');
    let default_base = format!("http://{}", crate::approval::settings::DEFAULT_APPROVALS_LISTEN);
    let mut command = "mcp-gate approvals open".to_owned();
    if base != default_base {
        command.push_str(&format!(" --url {base}"));
    }
    if let Some(id) = id {
        command.push(' ');
        command.push_str(id);
    }
    html! {
        p { "On the machine where mcp-gate runs, as the same user, run:" }
        pre.command { code { (command) } }
        p { "It opens this page signed in, through a link that works once, for "
            (super::SIGN_IN_LINK_TTL.as_secs()) " seconds." }
        @match &state.token_file {
            Some(file) => p { "Or paste the approver token, stored in " code.path { (file.display()) } "." },
            None => p { "Or paste the approver token (set by " code { "MCP_GATE_TOKEN" } " or "
                code { "[approvals] token" } " in the configuration)." },
        }
    }
}

/// The `Set-Cookie` value of a new signed-in session.
pub(super) fn session_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200")
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(state): State<Arc<WebState>>, Form(form): Form<LoginForm>) -> Response {
    let Some(who) = state.identify(form.token.trim()) else {
        let body = page(
            "Sign in",
            Tab::None,
            None,
            html! { h1 { "Sign in" } p.error { "That token is not right." } a href="/login" { "Try again" } },
        );
        return (StatusCode::UNAUTHORIZED, body).into_response();
    };
    let (id, _) = match state.open_session(who) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!("sign-in refused: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "mcp-gate could not open a session").into_response();
        }
    };
    let mut response = Redirect::to(&safe_next(form.next.as_deref())).into_response();
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&id)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(state): State<Arc<WebState>>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if let Some((id, session)) = session_of(&state, &headers)
        && constant_time_eq(form.csrf.as_bytes(), session.csrf.as_bytes())
    {
        state.close_session(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("mcp_gate_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// The queue's query string. Everything is text here (a hand-edited URL must not fail the
/// page); the list filter validates it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct QueueQuery {
    view: Option<String>,
    status: Option<String>,
    server: Option<String>,
    tool: Option<String>,
    agent: Option<String>,
    rule: Option<String>,
    from: Option<String>,
    to: Option<String>,
    q: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
    done: Option<String>,
    error: Option<String>,
}

impl QueueQuery {
    fn list(&self) -> ListQuery {
        let number = |v: &Option<String>| v.as_deref().and_then(|v| v.trim().parse::<u32>().ok());
        ListQuery {
            status: self.status.clone(),
            server: self.server.clone(),
            tool: self.tool.clone(),
            agent: self.agent.clone(),
            rule: self.rule.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            q: self.q.clone(),
            limit: number(&self.limit),
            offset: number(&self.offset),
        }
    }
}

/// The queue: Pending (the default) or All, with filters, pages and bulk decisions.
async fn queue(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(q): Query<QueueQuery>,
) -> Response {
    let here = match &raw {
        Some(r) => format!("/?{r}"),
        None => "/".to_owned(),
    };
    let Some((_, session)) = session_of(&state, &headers) else { return to_login(&here) };
    let all = q.view.as_deref() == Some("all");
    let mut list = q.list();
    if !all {
        list.status = Some("pending".into());
    }
    let (rows, total, problem) = match list.filter() {
        Ok(filter) => {
            let store = &state.approvals.store;
            match tokio::try_join!(store.list_approvals(filter.clone()), store.count_approvals(filter)) {
                Ok((rows, total)) => (rows, total, None),
                Err(e) => (Vec::new(), 0, Some(format!("storage: {e}"))),
            }
        }
        Err(e) => (Vec::new(), 0, Some(e.message().to_owned())),
    };
    let limit = u64::from(list.limit.unwrap_or(DEFAULT_LIST_LIMIT).clamp(1, 1000));
    let offset = u64::from(list.offset.unwrap_or(0));
    let now = state.approvals.store.now_ms();
    let tab = if all { Tab::All } else { Tab::Pending };
    let title = if all { "All requests" } else { "Pending requests" };
    let page_link = |offset: u64| -> String {
        let mut pairs = form_urlencoded::Serializer::new(String::new());
        if all {
            pairs.append_pair("view", "all");
        }
        for (k, v) in [
            ("status", if all { &list.status } else { &None }),
            ("server", &list.server),
            ("tool", &list.tool),
            ("agent", &list.agent),
            ("rule", &list.rule),
            ("from", &list.from),
            ("to", &list.to),
            ("q", &list.q),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                pairs.append_pair(k, v);
            }
        }
        if let Some(l) = list.limit {
            pairs.append_pair("limit", &l.to_string());
        }
        pairs.append_pair("offset", &offset.to_string());
        format!("/?{}", pairs.finish())
    };
    let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
    let more_filters = [&list.server, &list.tool, &list.agent, &list.rule, &list.from, &list.to].into_iter().any(set)
        || (all && list.status.as_deref().is_some_and(|s| s != "all"));
    let body = html! {
        h1 { (title) " " span.count { "(" (total) ")" } }
        @if let Some(done) = q.done.as_deref().and_then(flash_text) { p.notice role="status" { (done) } }
        @if let Some(error) = q.error.as_deref().and_then(flash_text) { p.error role="alert" { (error) } }
        @if let Some(error) = &problem { p.error role="alert" { (error) } }
        form.filters method="get" action="/" {
            @if all { input type="hidden" name="view" value="all"; }
            label.search { "Search" input type="search" name="q" value=[list.q.as_deref()] placeholder="id, tool, arguments…"; }
            button type="submit" { "Filter" }
            details.more open[more_filters] {
                summary { "More filters" }
                div.more-fields {
                    @if all {
                        label { "Status"
                            select name="status" {
                                @for s in ["all", "pending", "approved", "denied", "expired", "executed", "failed"] {
                                    option value=(s) selected[list.status.as_deref().unwrap_or("all") == s] { (s) }
                                }
                            }
                        }
                    }
                    label { "Server" input type="text" name="server" value=[list.server.as_deref()]; }
                    label { "Tool" input type="text" name="tool" value=[list.tool.as_deref()]; }
                    label { "Agent" input type="text" name="agent" value=[list.agent.as_deref()]; }
                    label { "Rule" input type="text" name="rule" value=[list.rule.as_deref()]; }
                    label { "From" input type="date" name="from" value=[list.from.as_deref()]; }
                    label { "To" input type="date" name="to" value=[list.to.as_deref()]; }
                }
            }
        }
        @if rows.is_empty() {
            p.empty { @if all { "No requests match." } @else { "Nothing is waiting." } }
        } @else {
            form #queue method="post" action="/approvals/bulk" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="back" value=(here);
                table.queue {
                    thead { tr {
                        th { span.visually-hidden { "Select" } }
                        th { "Request" } th { "Agent" } th { "Call" } th { "Rule" } th { "Status" } th { "Age" }
                    } }
                    tbody {
                        @for a in &rows {
                            tr data-id=(a.id) {
                                td { @if a.status == Status::Pending {
                                    input type="checkbox" name="id" value=(a.id) aria-label={ "Select " (a.id) };
                                } }
                                td data-label="Request" {
                                    a href={ "/approvals/" (a.id) } { (a.id) }
                                    @if has_hidden(a) { " " span.hidden-warning title=(crate::visible::WARNING) { "⚠ hidden characters" } }
                                }
                                td data-label="Agent" { (shown(a.agent.as_deref().unwrap_or("-"))) }
                                td data-label="Call" { code { (shown(&a.server)) ":" (shown(&a.tool)) } }
                                td data-label="Rule" { (rule_label(a)) }
                                td data-label="Status" { span class={ "status " (a.status.as_str()) } { (a.status.as_str()) } }
                                td data-label="Age" { (age(now - a.created_at)) }
                            }
                        }
                    }
                }
                @if rows.iter().any(|a| a.status == Status::Pending) {
                    fieldset.bulk {
                        legend { "Selected requests" }
                        label { "Notes" input type="text" name="notes"; }
                        label { "Reason (required to deny)" input type="text" name="reason"; }
                        button.approve type="submit" name="action" value="approve" { "Approve selected" }
                        button.deny type="submit" name="action" value="deny" { "Deny selected" }
                    }
                }
            }
            nav.pages aria-label="Pages" {
                @if offset > 0 { a rel="prev" href=(page_link(offset.saturating_sub(limit))) { "← Newer" } }
                span { (offset + 1) "–" (offset + rows.len() as u64) " of " (total) }
                @if offset + (rows.len() as u64) < total { a rel="next" href=(page_link(offset + limit)) { "Older →" } }
            }
        }
    };
    page(title, tab, Some(&session), body).into_response()
}

/// Untrusted text with every invisible or look-alike character shown as a highlighted mark
/// (`⟨U+202E⟩`, see [`crate::visible`]), so that what the approver reads is what runs.
fn shown(text: &str) -> Markup {
    use crate::visible::{Segment, mark_of, segments};
    html! {
        @for segment in segments(text) {
            @match segment {
                Segment::Text(t) => (t),
                Segment::Hidden(c) => span.hidden-char title="an invisible or look-alike character" { (mark_of(c)) },
            }
        }
    }
}

/// Whether an approver reading this request could be misled by characters that do not show.
fn has_hidden(a: &Approval) -> bool {
    serde_json::to_value(a).is_ok_and(|v| crate::visible::in_request(&v))
}

/// What the channel of the call that opened a request means for the person deciding it.
fn channel_meaning(channel: &str) -> &'static str {
    match channel {
        "task" => "the client holds a task and gets the result when this is decided",
        "input_required" => "the client was asked to open this page; its retry runs the call once decided",
        "elicitation" => "the client was asked to open this page, and waited for a while",
        "wait" => "the call waited for a decision, then was answered pending; its retry runs once approved",
        "fail_fast" => "the call was answered pending at once; its retry runs once approved",
        _ => "",
    }
}

/// The rule that held a request, or `default` when the default policy did.
fn rule_label(a: &Approval) -> &str {
    a.rule.as_deref().unwrap_or("default")
}

fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d", s / 86_400),
    }
}

#[derive(Deserialize)]
struct Flash {
    done: Option<String>,
    error: Option<String>,
}

async fn detail(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Response {
    let Some((_, session)) = session_of(&state, &headers) else { return to_login(&format!("/approvals/{id}")) };
    let store = &state.approvals.store;
    let approval = match store.get_approval(&id).await {
        Ok(Some(a)) => a,
        _ => {
            let body = html! { h1 { "No such request" } p { a href="/" { "Back to the queue" } } };
            return (StatusCode::NOT_FOUND, page("Not found", Tab::None, Some(&session), body)).into_response();
        }
    };
    let ai_review = crate::review::opinions(store, vec![id.clone()]).await.unwrap_or_default();
    let ai_review = ai_review.get(&id);
    let now = state.approvals.store.now_ms();
    let (history, risk) = tokio::join!(store.transitions(&id), store.risk_snapshot(approval.agent.clone(), now));
    let history = history.unwrap_or_default();
    let risk = risk.unwrap_or_default();
    let arguments = serde_json::to_string_pretty(&approval.arguments).unwrap_or_default();
    let remaining = approval.expires_at - now;
    let info = approval.tool_info.as_ref();
    let description = info.and_then(|i| i.get("description")).and_then(|d| d.as_str());
    let annotations = info.and_then(|i| i.get("annotations")).filter(|a| a.as_object().is_some_and(|o| !o.is_empty()));
    let trace = approval.trace.as_array().cloned().unwrap_or_default();
    let body = html! {
        p.crumbs { a href="/" { "← Queue" } }
        h1 { "Request " code { (approval.id) } }
        @if let Some(done) = flash.done.as_deref().and_then(flash_text) { p.notice role="status" { (done) } }
        @if let Some(error) = flash.error.as_deref().and_then(flash_text) { p.error role="alert" { (error) } }
        @if has_hidden(&approval) {
            p.hidden-warning role="alert" { "Warning: " (crate::visible::WARNING) "." }
        }
        // What will run and the decision first: on a phone both fit above the fold.
        dl.facts.call data-id=(approval.id) {
            dt { "Status" } dd { span class={ "status " (approval.status.as_str()) } { (approval.status.as_str()) } }
            dt { "Server" } dd { code { (shown(&approval.server)) } }
            dt { "Tool" } dd { code { (shown(&approval.tool)) } }
            dt.wide { "Arguments" } dd.wide { pre.arguments { (shown(&arguments)) } }
        }
        @if approval.status == Status::Pending {
            form.decide method="post" action={ "/approvals/" (approval.id) "/approve" } {
                input type="hidden" name="csrf" value=(session.csrf);
                div.field {
                    label for="notes" { "Notes" }
                    textarea id="notes" name="notes" rows="1" {}
                }
                div.field {
                    label for="reason" { "Reason (required to deny)" }
                    textarea id="reason" name="reason" rows="1" {}
                }
                div.buttons {
                    button.approve type="submit" { "Approve" }
                    button.deny type="submit" formaction={ "/approvals/" (approval.id) "/deny" } { "Deny" }
                }
            }
        }
        dl.facts {
            dt { "Agent" } dd { (shown(approval.agent.as_deref().unwrap_or("-"))) }
            @if let Some(channel) = &approval.channel {
                dt { "Channel" } dd { code { (channel) } " · " (channel_meaning(channel)) }
            }
            @if description.is_some() || annotations.is_some() {
                dt { "About the tool" } dd {
                    @if let Some(d) = description { p.tool-description { (shown(d)) } }
                    @if let Some(a) = annotations { p.annotations { "Annotations: " code { (shown(&a.to_string())) } } }
                }
            }
            dt { "Created" } dd { (iso8601(approval.created_at)) " (" (age(now - approval.created_at)) " ago)" }
            dt { "Expires" } dd {
                (iso8601(approval.expires_at))
                @if approval.status == Status::Pending && remaining > 0 { " (" (age(remaining)) " remaining)" }
            }
            dt { "Workflow" } dd { (approval.workflow) " · " (approval.votes.len()) " of " (approval.required_approvals) " approval(s)" }
            @if let Some(approvers) = approval.approvers.as_ref().filter(|list| !list.is_empty()) {
                dt { "Approvers" } dd { (shown(&approvers.join(", "))) }
            }
            @if let Some(risk) = &approval.risk { dt { "Risk" } dd { (risk) } }
        }
        section.reason {
            h2 { "Reason" }
            p { strong { (rule_label(&approval)) } ": " (shown(approval.rule_reason.as_deref().unwrap_or("the default policy holds calls that are not read-only"))) }
        }
        @if let Some(r) = ai_review { (ai_review_section(r)) }
        section {
            h2 { "Policy trace" }
            ol.trace {
                @for step in &trace {
                    @let matched = step.get("matched").and_then(|m| m.as_bool()).unwrap_or(false);
                    li class=(if matched { "matched" } else { "skipped" }) {
                        (if matched { "✓ " } else { "· " })
                        code { (step.get("rule").and_then(|r| r.as_str()).unwrap_or("?")) }
                        @if let Some(why) = step.get("why").and_then(|w| w.as_str()) { ": " (why) }
                    }
                }
            }
        }
        section.risk {
            h2 { "Risk snapshot" }
            p { "Agent " strong { (shown(risk.agent.as_deref().unwrap_or("-"))) } ", with " (risk.pending_now) " request(s) pending now." }
            table.snapshot {
                thead { tr { th { "" } th { "Calls" } th { "Approved" } th { "Denied" } } }
                tbody {
                    tr { th { "Last hour" } td { (risk.last_hour.calls) } td { (risk.last_hour.approved) } td { (risk.last_hour.denied) } }
                    tr { th { "Last day" } td { (risk.last_day.calls) } td { (risk.last_day.approved) } td { (risk.last_day.denied) } }
                }
            }
        }
        section {
            h2 { "History" }
            ol.history {
                @for t in &history {
                    li {
                        time datetime=(iso8601(t.at)) { (iso8601(t.at)) }
                        " · " (t.from.map(|s| s.as_str()).unwrap_or("new")) " → " strong { (t.to.as_str()) }
                        " · " (shown(&t.actor))
                        @if let Some(n) = &t.notes { " · notes: " (shown(n)) }
                        @if let Some(r) = &t.reason { " · reason: " (shown(r)) }
                    }
                }
                @for v in approval.votes.iter().filter(|_| approval.status == Status::Pending) {
                    li { (iso8601(v.at)) " · vote " (v.decision.as_str()) " · " (shown(&v.actor)) @if let Some(n) = &v.notes { " · notes: " (shown(n)) } }
                }
            }
        }
    };
    page(&format!("Request {}", approval.id), Tab::None, Some(&session), body).into_response()
}

/// The AI reviewer's opinion on a request (model text: escaped like everything else).
fn ai_review_section(r: &serde_json::Value) -> Markup {
    let text = |k: &str| r.get(k).and_then(serde_json::Value::as_str).unwrap_or("-").to_owned();
    let confidence = r.get("confidence").and_then(serde_json::Value::as_f64).map(|c| format!("{c:.2}"));
    html! {
        section.ai-review {
            h2 { "AI review" }
            dl {
                dt { "Decision" } dd { (text("decision")) @if let Some(c) = confidence { " (confidence " (c) ")" } }
                dt { "Applied" } dd { (text("applied")) " (" (text("outcome")) ")" }
                dt { "Model" } dd { code { (text("model")) } " via " (text("provider")) }
                @if r.get("error").is_some_and(|e| !e.is_null()) { dt { "Error" } dd { (text("error")) } }
            }
            @if let Some(reasoning) = r.get("reasoning").and_then(serde_json::Value::as_str) { p { (reasoning) } }
        }
    }
}

#[derive(Deserialize)]
struct DecisionForm {
    csrf: String,
    notes: Option<String>,
    reason: Option<String>,
}

async fn approve(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Response {
    decide(state, headers, id, form, true).await
}

async fn deny(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Response {
    decide(state, headers, id, form, false).await
}

async fn decide(state: Arc<WebState>, headers: HeaderMap, id: String, form: DecisionForm, approve: bool) -> Response {
    let Some((_, session)) = session_of(&state, &headers) else { return to_login(&format!("/approvals/{id}")) };
    if !constant_time_eq(form.csrf.as_bytes(), session.csrf.as_bytes()) {
        return (StatusCode::FORBIDDEN, "invalid CSRF token").into_response();
    }
    let notes = form.notes.filter(|n| !n.trim().is_empty());
    let page = format!("/approvals/{}", percent_encode(&id));
    let back = match state.approvals.decide(&id, &session.who, approve, notes, form.reason).await {
        Ok(a) => {
            let code = match a.status {
                Status::Pending => "voted",
                _ if approve => "approved",
                _ => "denied",
            };
            format!("{page}?done={code}")
        }
        Err(e) => format!("{page}?error={}", super::api::ApiError::from(e).code()),
    };
    Redirect::to(&back).into_response()
}

/// Bulk approve or deny from the queue: `id` repeated, `action`, `notes`, `reason`, `csrf`.
async fn bulk(State(state): State<Arc<WebState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some((_, session)) = session_of(&state, &headers) else { return to_login("/") };
    let mut ids = Vec::new();
    let (mut csrf, mut action, mut notes, mut reason, mut back) = (None, None, None, None, None);
    for (k, v) in form_urlencoded::parse(&body) {
        let v = v.into_owned();
        match k.as_ref() {
            "id" if !ids.contains(&v) => ids.push(v),
            "csrf" => csrf = Some(v),
            "action" => action = Some(v),
            "notes" => notes = Some(v).filter(|n| !n.trim().is_empty()),
            "reason" => reason = Some(v).filter(|r| !r.trim().is_empty()),
            "back" => back = Some(v),
            _ => {}
        }
    }
    if !csrf.is_some_and(|c| constant_time_eq(c.as_bytes(), session.csrf.as_bytes())) {
        return (StatusCode::FORBIDDEN, "invalid CSRF token").into_response();
    }
    let back = safe_next(back.as_deref());
    let sep = if back.contains('?') { '&' } else { '?' };
    let flash = |key: &str, code: &'static str| Redirect::to(&format!("{back}{sep}{key}={code}")).into_response();
    let approve = match action.as_deref() {
        Some("approve") => true,
        Some("deny") => false,
        _ => return flash("error", "choose-action"),
    };
    if ids.is_empty() {
        return flash("error", "select-some");
    }
    if ids.len() > super::api::MAX_BULK {
        return flash("error", "too-many");
    }
    if !approve && reason.is_none() {
        return flash("error", "reason-required");
    }
    let (_, decided) = decide_many(&state, &session.who, &ids, approve, notes, reason).await;
    if decided < ids.len() {
        flash("error", "bulk-partial")
    } else if approve {
        flash("done", "bulk-approved")
    } else {
        flash("done", "bulk-denied")
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StatsQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn stats(State(state): State<Arc<WebState>>, headers: HeaderMap, Query(q): Query<StatsQuery>) -> Response {
    let Some((_, session)) = session_of(&state, &headers) else { return to_login("/stats") };
    let range = time_param("from", &q.from).and_then(|from| Ok((from, time_param("to", &q.to)?)));
    let (stats, problem) = match range {
        Ok((from, to)) => match state.approvals.store.stats(from, to).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(format!("storage: {e}"))),
        },
        Err(e) => (None, Some(e.message().to_owned())),
    };
    let duration =
        |ms: Option<i64>| ms.map_or_else(|| "-".to_owned(), |ms| if ms < 1000 { format!("{ms} ms") } else { age(ms) });
    let breakdown = |title: &str, rows: &[Breakdown]| {
        html! {
            section.breakdown {
                h2 { (title) }
                @if rows.is_empty() { p.empty { "None in this range." } } @else {
                    table {
                        thead { tr { th { "" } th { "Total" } th { "Pending" } th { "Approved" } th { "Denied" } th { "Expired" } } }
                        tbody { @for r in rows {
                            tr { th { (r.key) } td { (r.total) } td { (r.pending) } td { (r.approved) } td { (r.denied) } td { (r.expired) } }
                        } }
                    }
                }
            }
        }
    };
    let body = html! {
        h1 { "Stats" }
        form.filters method="get" action="/stats" {
            label { "From" input type="date" name="from" value=[q.from.as_deref()]; }
            label { "To" input type="date" name="to" value=[q.to.as_deref()]; }
            button type="submit" { "Show" }
        }
        @if let Some(p) = &problem { p.error role="alert" { (p) } }
        @if let Some(s) = &stats {
            section.totals {
                h2 { "Requests" }
                dl.figures {
                    dt { "Total" } dd { (s.total) }
                    @for (status, n) in &s.by_status { dt { (status) } dd { (n) } }
                }
            }
            section.totals {
                h2 { "Time to decision" }
                dl.figures {
                    dt { "Decided" } dd { (s.time_to_decision.decided) }
                    dt { "Median" } dd { (duration(s.time_to_decision.median_ms)) }
                    dt { "90th percentile" } dd { (duration(s.time_to_decision.p90_ms)) }
                }
            }
            (breakdown("By agent", &s.by_agent))
            (breakdown("By tool", &s.by_tool))
            (breakdown("By rule", &s.by_rule))
        }
    };
    page("Stats", Tab::Stats, Some(&session), body).into_response()
}
