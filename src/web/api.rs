//! `/api/v1`: the JSON API. Every route needs `Authorization: Bearer TOKEN`; errors are JSON
//! `{"error": {"code", "message"}}` with a stable code.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::WebState;
use super::guard::bearer_token;
use crate::approval::DecideError;
use crate::identity::{OPERATOR, Principal};
use crate::store::{ApprovalFilter, Status};

pub fn routes() -> Router<Arc<WebState>> {
    Router::new()
        .route("/api/v1/approvals", get(list))
        .route("/api/v1/approvals/{id}", get(show))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/deny", post(deny))
}

/// An API error: HTTP status, stable code, message.
pub struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError(status, code, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": { "code": self.1, "message": self.2 } }))).into_response()
    }
}

impl From<DecideError> for ApiError {
    fn from(e: DecideError) -> ApiError {
        let (status, code) = match &e {
            DecideError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DecideError::ReasonRequired(_) => (StatusCode::UNPROCESSABLE_ENTITY, "reason_required"),
            DecideError::NotPending(_) => (StatusCode::CONFLICT, "not_pending"),
            DecideError::AlreadyVoted(_) => (StatusCode::CONFLICT, "already_decided"),
            DecideError::Expired => (StatusCode::CONFLICT, "expired"),
            DecideError::NotAnApprover(..) => (StatusCode::FORBIDDEN, "not_an_approver"),
            DecideError::OwnRequest(_) => (StatusCode::FORBIDDEN, "own_request"),
            DecideError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError(status, code, e.to_string())
    }
}

/// The caller's identity, from `Authorization: Bearer TOKEN`.
fn authorize(state: &WebState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    bearer_token(headers)
        .and_then(|t| state.identify(t))
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token".into()))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub status: Option<String>,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub agent: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

async fn list(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let status = match q.status.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(
            s.parse::<Status>()
                .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "bad_status", format!("unknown status {s:?}")))?,
        ),
    };
    let filter = ApprovalFilter {
        status,
        server: q.server,
        tool: q.tool,
        agent: q.agent,
        limit: q.limit,
        offset: q.offset.unwrap_or(0),
    };
    let approvals = state
        .approvals
        .store
        .list_approvals(filter)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let items: Vec<serde_json::Value> = approvals.iter().map(|a| view(&state, a)).collect();
    Ok(Json(json!({ "approvals": items })))
}

async fn show(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let a = state
        .approvals
        .store
        .get_approval(&id)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "not_found", format!("no approval request {id}")))?;
    let transitions = state.approvals.store.transitions(&id).await.unwrap_or_default();
    let mut v = view(&state, &a);
    v["history"] = serde_json::to_value(transitions).unwrap_or_default();
    Ok(Json(v))
}

/// The API's view of an approval: the stored record plus its page URL.
pub fn view(state: &WebState, a: &crate::store::Approval) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    v["url"] = serde_json::Value::String(state.approvals.url_for(&a.id));
    v
}

#[derive(Debug, Default, Deserialize)]
pub struct DecisionBody {
    pub notes: Option<String>,
    pub reason: Option<String>,
    /// Who decides, when the shared token is used and no `[[approvers]]` are configured
    /// (default `operator`). With named approvers the token alone says who decides.
    pub approver: Option<String>,
}

async fn approve(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide(state, headers, id, body, true).await
}

async fn deny(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide(state, headers, id, body, false).await
}

async fn decide(
    state: Arc<WebState>,
    headers: HeaderMap,
    id: String,
    body: Option<Json<DecisionBody>>,
    approve: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = authorize(&state, &headers)?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let who = acting_as(&state, who, body.approver.as_deref())?;
    let a = state.approvals.decide(&id, &who, approve, body.notes, body.reason).await?;
    Ok(Json(view(&state, &a)))
}

/// Applies the `approver` field: only the shared token may name who decides, and only while no
/// named approvers exist (then each approver has a token of their own).
fn acting_as(state: &WebState, who: Principal, approver: Option<&str>) -> Result<Principal, ApiError> {
    let Some(name) = approver.map(str::trim).filter(|a| !a.is_empty()) else { return Ok(who) };
    if name == who.name {
        return Ok(who);
    }
    if who.name != OPERATOR || !state.approvers.is_empty() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "approver_mismatch",
            format!("this token belongs to {}; it cannot decide as {name:?}", who.name),
        ));
    }
    Ok(Principal::named(name))
}
