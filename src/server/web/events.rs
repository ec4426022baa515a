//! `GET /api/v1/events`: the change stream as server-sent events.
//!
//! Each event is named after its [`ChangeKind`] (`requested`, `approved`, ...) and carries
//! `{"kind", "at", "actor", "approval": {...}}` with the approval as the API shows it. A
//! subscriber that falls behind gets a `resync` event (`{"missed": N}`) and should re-list.
//! Comments keep idle connections open. `?kinds=requested,expiring` narrows the stream.
//!
//! Authentication: a bearer token, or the dashboard's session cookie (an `EventSource` cannot
//! send headers; the cookie is `SameSite=Strict` and the Origin check applies).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::WebState;
use super::api::{ApiError, view};
use crate::approval::{Change, ChangeKind, UnknownKind};

pub fn routes() -> Router<Arc<WebState>> {
    Router::new().route("/api/v1/events", get(events))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Comma-separated change kinds; all when absent.
    pub kinds: Option<String>,
}

async fn events(State(state): State<Arc<WebState>>, headers: HeaderMap, Query(q): Query<EventsQuery>) -> Response {
    let signed_in = crate::http::guard::bearer_token(&headers).and_then(|t| state.identify(t)).is_some()
        || state.browser_session(&headers).is_some();
    if !signed_in {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token")
            .into_response();
    }
    let kinds = match parse_kinds(q.kinds.as_deref()) {
        Ok(k) => k,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, "bad_kind", e.to_string()).into_response(),
    };
    let stream = change_stream(state, kinds);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

fn parse_kinds(text: Option<&str>) -> Result<Option<HashSet<ChangeKind>>, UnknownKind> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else { return Ok(None) };
    text.split(',').map(|k| k.trim().parse::<ChangeKind>()).collect::<Result<HashSet<_>, _>>().map(Some)
}

fn change_stream(
    state: Arc<WebState>,
    kinds: Option<HashSet<ChangeKind>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let changes = state.approvals.changes.subscribe();
    futures::stream::unfold((state, changes, kinds), |(state, mut changes, kinds)| async move {
        loop {
            let event = match changes.recv().await {
                Ok(change) if kinds.as_ref().is_none_or(|k| k.contains(&change.kind)) => {
                    Event::default().event(change.kind.as_str()).data(change_json(&state, &change).to_string())
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    Event::default().event("resync").data(json!({ "missed": missed }).to_string())
                }
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok(event), (state, changes, kinds)));
        }
    })
}

/// The JSON body of one change event (also what webhooks and the hub carry).
pub fn change_json(state: &WebState, change: &Change) -> serde_json::Value {
    json!({
        "kind": change.kind,
        "at": change.at,
        "actor": change.actor,
        "approval": view(state, &change.approval),
    })
}
