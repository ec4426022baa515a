//! Server-rendered pages: sign-in, the pending queue, and one request with Approve and Deny.
//! Templates are maud (auto-escaping): tool arguments are untrusted and shown as text only.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::guard::constant_time_eq;
use super::{BrowserSession, WebState};
use crate::approval::now_ms;
use crate::approval::replies::iso8601;
use crate::store::{ApprovalFilter, Status};

use super::COOKIE;
const STYLE: &str = include_str!("style.css");

pub fn routes() -> Router<Arc<WebState>> {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/approvals/{id}", get(detail))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
        .route("/assets/style.css", get(style))
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · mcp-gate" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body {
                header { a href="/" { "mcp-gate" } " approvals" }
                main { (body) }
            }
        }
    }
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

fn session_of(state: &WebState, headers: &HeaderMap) -> Option<(String, BrowserSession)> {
    state.browser_session(headers)
}

/// Only same-site paths may be redirected to after sign-in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
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

async fn login_form(Query(q): Query<NextQuery>) -> Markup {
    let next = safe_next(q.next.as_deref());
    page(
        "Sign in",
        html! {
            h1 { "Sign in" }
            p { "Paste the approver token. mcp-gate printed where it is stored when it started." }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Approver token" }
                input id="token" type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
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
            html! { h1 { "Sign in" } p.error { "That token is not right." } a href="/login" { "Try again" } },
        );
        return (StatusCode::UNAUTHORIZED, body).into_response();
    };
    let (id, _) = state.open_session(who);
    let mut response = Redirect::to(&safe_next(form.next.as_deref())).into_response();
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
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

async fn index(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    let Some((_, session)) = session_of(&state, &headers) else { return to_login("/") };
    let filter = ApprovalFilter { status: Some(Status::Pending), limit: Some(200), ..ApprovalFilter::default() };
    let pending = state.approvals.store.list_approvals(filter).await.unwrap_or_default();
    let now = now_ms();
    page(
        "Pending approvals",
        html! {
            h1 { "Pending approvals" }
            @if pending.is_empty() {
                p { "Nothing is waiting." }
            } @else {
                table {
                    thead { tr { th { "Request" } th { "Agent" } th { "Call" } th { "Rule" } th { "Age" } } }
                    tbody {
                        @for a in &pending {
                            tr {
                                td { a href={ "/approvals/" (a.id) } { (a.id) } }
                                td { (a.agent.as_deref().unwrap_or("-")) }
                                td { code { (a.server) ":" (a.tool) } }
                                td { (a.rule.as_deref().unwrap_or("default")) }
                                td { (age(now - a.created_at)) }
                            }
                        }
                    }
                }
            }
            (logout_form(&session))
        },
    )
    .into_response()
}

fn logout_form(session: &BrowserSession) -> Markup {
    html! {
        form.logout method="post" action="/logout" {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" { "Sign out" }
        }
    }
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
    let approval = match state.approvals.store.get_approval(&id).await {
        Ok(Some(a)) => a,
        _ => return (StatusCode::NOT_FOUND, page("Not found", html! { h1 { "No such request" } })).into_response(),
    };
    let history = state.approvals.store.transitions(&id).await.unwrap_or_default();
    let arguments = serde_json::to_string_pretty(&approval.arguments).unwrap_or_default();
    let trace = serde_json::to_string_pretty(&approval.trace).unwrap_or_default();
    let now = now_ms();
    let remaining = approval.expires_at - now;
    page(
        &format!("Request {}", approval.id),
        html! {
            h1 { "Request " (approval.id) }
            @if let Some(done) = &flash.done { p.notice { (done) } }
            @if let Some(error) = &flash.error { p.error { (error) } }
            dl {
                dt { "Status" } dd { strong.status { (approval.status.as_str()) } }
                dt { "Server" } dd { code { (approval.server) } }
                dt { "Tool" } dd { code { (approval.tool) } }
                dt { "Agent" } dd { (approval.agent.as_deref().unwrap_or("-")) }
                dt { "Rule" } dd { (approval.rule.as_deref().unwrap_or("default policy")) }
                @if let Some(why) = &approval.rule_reason { dt { "Why" } dd { (why) } }
                @if let Some(risk) = &approval.risk { dt { "Risk" } dd { (risk) } }
                dt { "Workflow" } dd { (approval.workflow) " (" (approval.required_approvals) " approval(s) needed)" }
                dt { "Created" } dd { (iso8601(approval.created_at)) }
                dt { "Expires" } dd {
                    (iso8601(approval.expires_at))
                    @if approval.status == Status::Pending && remaining > 0 { " (in " (age(remaining)) ")" }
                }
            }
            h2 { "Arguments" }
            pre { (arguments) }
            details { summary { "Policy trace" } pre { (trace) } }
            @if approval.status == Status::Pending {
                div.decide {
                    form method="post" action={ "/approvals/" (approval.id) "/approve" } {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="notes" { "Notes" }
                        textarea id="notes" name="notes" rows="2" {}
                        button.approve type="submit" { "Approve" }
                    }
                    form method="post" action={ "/approvals/" (approval.id) "/deny" } {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="reason" { "Reason (required to deny)" }
                        textarea id="reason" name="reason" rows="2" required {}
                        button.deny type="submit" { "Deny" }
                    }
                }
            }
            h2 { "History" }
            ol.history {
                @for t in &history {
                    li {
                        (iso8601(t.at)) " · " (t.from.map(|s| s.as_str()).unwrap_or("new")) " → " (t.to.as_str())
                        " · " (t.actor)
                        @if let Some(n) = &t.notes { " · notes: " (n) }
                        @if let Some(r) = &t.reason { " · reason: " (r) }
                    }
                }
            }
            (logout_form(&session))
            (PreEscaped(""))
        },
    )
    .into_response()
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
    let back = match state.approvals.decide(&id, &session.who, approve, notes, form.reason).await {
        Ok(a) => format!("/approvals/{id}?done={}", percent_encode(&format!("Recorded: {}", a.status.as_str()))),
        Err(e) => format!("/approvals/{id}?error={}", percent_encode(&e.to_string())),
    };
    Redirect::to(&back).into_response()
}
