//! One-time sign-in links: how `mcp-gate approvals open` signs a browser in without anyone
//! pasting the approver token.
//!
//! 1. The command proves itself to the server ([`crate::server::handshake`]) and asks
//!    `POST /api/v1/sign-in-links` with its bearer token for a link, optionally to one request.
//! 2. The server draws 32 random bytes, keeps only their SHA-256 with who asked and where the
//!    link leads, and answers `{public_url}/login/link/{secret}`. A link works once, within
//!    [`LINK_TTL`]; at most [`MAX_LINKS`] are outstanding.
//! 3. `GET` of the link changes nothing: it shows a page with one button, which `POST`s the same
//!    address. The `POST` must carry an `Origin` naming this very server (the request's `Host`),
//!    so another site, even one on this machine, cannot sign a browser in with a link of its own
//!    (login CSRF). Then the link is spent, the browser gets the normal session cookie, and is
//!    sent to the request's page or the queue.
//!
//! The secret travels only in the API's answer to the command and in the browser's address bar;
//! it is never logged, and nothing the model sees ever holds it.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use dashmap::DashMap;
use maud::html;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::WebState;
use super::api::ApiError;
use super::pages::{Tab, page, session_cookie};
use crate::identity::Principal;

/// How long a sign-in link works.
pub use super::SIGN_IN_LINK_TTL as LINK_TTL;

/// Most links outstanding at once.
pub const MAX_LINKS: usize = 256;

/// Where links are redeemed: `/login/link/{secret}`.
pub const LINK_PATH: &str = "/login/link";

/// The API route that issues links.
pub const API_PATH: &str = "/api/v1/sign-in-links";

struct Link {
    who: Principal,
    next: String,
    expires: Instant,
}

/// The outstanding links, by the SHA-256 of their secret.
#[derive(Default)]
pub struct SignInLinks {
    links: DashMap<[u8; 32], Link>,
}

impl SignInLinks {
    /// A new link for `who` that leads to `next` (a path on this server); its secret, or `None`
    /// when too many links are outstanding. Without randomness there is no link.
    pub fn issue(&self, who: Principal, next: String) -> Result<Option<String>, crate::random::RandomError> {
        let now = Instant::now();
        if self.links.len() >= MAX_LINKS {
            self.links.retain(|_, l| l.expires > now);
            if self.links.len() >= MAX_LINKS {
                return Ok(None);
            }
        }
        let secret = crate::random::hex(32)?;
        self.links.insert(crate::identity::sha256(&secret), Link { who, next, expires: now + LINK_TTL });
        Ok(Some(secret))
    }

    /// Who a link would sign in, without spending it.
    pub fn peek(&self, secret: &str) -> Option<String> {
        let link = self.links.get(&crate::identity::sha256(secret))?;
        (link.expires > Instant::now()).then(|| link.who.name.clone())
    }

    /// Spends a link: who it signs in and where it leads. A link is redeemed at most once.
    pub fn redeem(&self, secret: &str) -> Option<(Principal, String)> {
        let (_, link) = self.links.remove(&crate::identity::sha256(secret))?;
        (link.expires > Instant::now()).then_some((link.who, link.next))
    }
}

pub fn routes() -> Router<Arc<WebState>> {
    Router::new().route(API_PATH, post(issue)).route(&format!("{LINK_PATH}/{{secret}}"), get(confirm_page).post(redeem))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct IssueBody {
    /// The request whose page the link leads to (default: the queue).
    approval_id: Option<String>,
}

/// `POST /api/v1/sign-in-links`: a one-time link that signs a browser in as the caller.
async fn issue(State(state): State<Arc<WebState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    match issue_link(&state, &headers, &body).await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn issue_link(state: &WebState, headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    // The token is checked before the body is looked at.
    let who = super::api::authorize(state, headers)?;
    let body: IssueBody = if body.iter().all(u8::is_ascii_whitespace) {
        IssueBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"approval_id\"}} or nothing: {e}"),
            )
        })?
    };
    let next = match body.approval_id.as_deref().map(str::trim).filter(|id| !id.is_empty()) {
        None => "/".to_owned(),
        Some(id) => {
            let found = state
                .approvals
                .store
                .get_approval(id)
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
            let Some(a) = found else {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no approval request {id}")));
            };
            format!("/approvals/{}", a.id)
        }
    };
    let issued = state
        .sign_in
        .issue(who, next.clone())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let secret = issued.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many sign-in links outstanding; try again in a minute",
        )
    })?;
    let base = state.approvals.settings.public_url.trim_end_matches('/');
    Ok(json!({
        "url": format!("{base}{LINK_PATH}/{secret}"),
        "next": next,
        "expires_in_secs": LINK_TTL.as_secs(),
    }))
}

/// `GET /login/link/{secret}`: says who the link signs in, with one button. Changes nothing.
async fn confirm_page(State(state): State<Arc<WebState>>, Path(secret): Path<String>) -> Response {
    let Some(name) = state.sign_in.peek(&secret) else { return spent(&state) };
    let body = html! {
        h1 { "Sign in" }
        p { "This one-time link signs this browser in as " strong { (name) } "." }
        form method="post" action={ (LINK_PATH) "/" (secret) } {
            button type="submit" { "Sign in as " (name) }
        }
    };
    page("Sign in", Tab::None, None, body).into_response()
}

/// `POST /login/link/{secret}`: spends the link and opens a session, when the form was sent by a
/// page of this very server.
async fn redeem(State(state): State<Arc<WebState>>, headers: HeaderMap, Path(secret): Path<String>) -> Response {
    if !same_origin(&headers) {
        let body = html! {
            h1 { "Sign in" }
            p.error { "A sign-in link can only be used from its own page." }
        };
        return (StatusCode::FORBIDDEN, page("Sign in", Tab::None, None, body)).into_response();
    }
    let Some((who, next)) = state.sign_in.redeem(&secret) else { return spent(&state) };
    let (id, _) = match state.open_session(who) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!("sign-in refused: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "mcp-gate could not open a session").into_response();
        }
    };
    let mut response = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&id)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Whether the request's `Origin` is this server itself (scheme and `Host`): a form on one of
/// its own pages. A missing `Origin` is refused too.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(origin), Some(host)) = (text(header::ORIGIN), text(header::HOST)) else { return false };
    ["http://", "https://"].iter().any(|scheme| origin.eq_ignore_ascii_case(&format!("{scheme}{host}")))
}

/// The answer to a link that is unknown, used or expired: how to get a new one.
fn spent(state: &WebState) -> Response {
    let body = html! {
        h1 { "Sign in" }
        p.error { "This sign-in link has expired or was already used." }
        (super::pages::how_to_sign_in(state, None))
    };
    (StatusCode::GONE, page("Sign in", Tab::None, None, body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_link_works_once_and_only_within_its_time() {
        let links = SignInLinks::default();
        let secret = links.issue(Principal::named("ada"), "/approvals/apr_1".into()).unwrap().unwrap();
        assert_eq!(secret.len(), 64);
        assert_eq!(links.peek(&secret).as_deref(), Some("ada"));
        assert_eq!(links.peek(&secret).as_deref(), Some("ada"), "looking does not spend it");
        assert!(links.redeem("0".repeat(64).as_str()).is_none());
        let (who, next) = links.redeem(&secret).unwrap();
        assert_eq!((who.name.as_str(), next.as_str()), ("ada", "/approvals/apr_1"));
        assert!(links.redeem(&secret).is_none(), "spent");
        assert!(links.peek(&secret).is_none());

        let late = links.issue(Principal::named("ada"), "/".into()).unwrap().unwrap();
        tokio::time::advance(LINK_TTL - Duration::from_secs(1)).await;
        assert!(links.peek(&late).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(links.peek(&late).is_none(), "expired");
        assert!(links.redeem(&late).is_none());

        // Only the secret's hash is kept.
        let kept = links.issue(Principal::named("ada"), "/".into()).unwrap().unwrap();
        assert!(links.links.contains_key(&crate::identity::sha256(&kept)));
        assert_eq!(links.links.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn outstanding_links_are_bounded() {
        let links = SignInLinks::default();
        for _ in 0..MAX_LINKS {
            assert!(links.issue(Principal::named("ada"), "/".into()).unwrap().is_some());
        }
        assert!(links.issue(Principal::named("ada"), "/".into()).unwrap().is_none());
        tokio::time::advance(LINK_TTL).await;
        assert!(links.issue(Principal::named("ada"), "/".into()).unwrap().is_some(), "expired links make room");
    }

    #[test]
    fn redeeming_needs_this_servers_own_origin() {
        let h = |pairs: &[(&'static str, &str)]| crate::http::guard::headers(pairs);
        assert!(same_origin(&h(&[("host", "127.0.0.1:8377"), ("origin", "http://127.0.0.1:8377")])));
        assert!(!same_origin(&h(&[("host", "127.0.0.1:8377")])));
        assert!(!same_origin(&h(&[("host", "127.0.0.1:8377"), ("origin", "http://127.0.0.1:9999")])));
        assert!(!same_origin(&h(&[("host", "127.0.0.1:8377"), ("origin", "null")])));
        assert!(!same_origin(&h(&[("host", "127.0.0.1:8377"), ("origin", "http://evil.example")])));
    }
}
