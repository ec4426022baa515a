//! `/api/v1`: the JSON API. Every route but the OpenAPI document needs `Authorization: Bearer
//! TOKEN`; errors are JSON `{"error": {"code", "message"}}` with a stable code. The document at
//! `/api/v1/openapi.json` describes every route.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::WebState;
use crate::approval::DecideError;
use crate::approval::replies::parse_time;
use crate::http::guard::bearer_token;
use crate::http::listener::LocalAddr;
use crate::identity::{OPERATOR, Principal};
use crate::server::hub_api::{Announcement, HubInfo};
use crate::store::approvals::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use crate::store::{ApprovalFilter, Status};
use crate::visible::normalise_name;

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Most requests one bulk call decides.
pub const MAX_BULK: usize = 500;

pub fn routes() -> Router<Arc<WebState>> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/approvals", get(list))
        .route("/api/v1/approvals/stats", get(stats))
        .route("/api/v1/approvals/bulk-approve", post(bulk_approve))
        .route("/api/v1/approvals/bulk-deny", post(bulk_deny))
        .route("/api/v1/approvals/{id}", get(show))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/deny", post(deny))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/hub", get(hub))
        .route("/api/v1/hub/announce", post(announce))
        .route(crate::server::handshake::HELLO, post(handshake_hello))
        .route(crate::server::handshake::CONFIRM, post(handshake_confirm))
}

async fn openapi() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// An API error: HTTP status, stable code, message.
pub struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError(status, code, message.into())
    }

    pub fn message(&self) -> &str {
        &self.2
    }

    /// The stable code (`not_pending`).
    pub fn code(&self) -> &'static str {
        self.1
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
            DecideError::NotAnApprover(..) | DecideError::UnknownWorkflow(_) => {
                (StatusCode::FORBIDDEN, "not_an_approver")
            }
            DecideError::OwnRequest(_) => (StatusCode::FORBIDDEN, "own_request"),
            DecideError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError(status, code, e.to_string())
    }
}

/// The caller's identity, from `Authorization: Bearer TOKEN`.
pub(super) fn authorize(state: &WebState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    bearer_token(headers)
        .and_then(|t| state.identify(t))
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token".into()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    /// A status, or `all` (the default).
    pub status: Option<String>,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub agent: Option<String>,
    /// A rule name; `default` for requests that no named rule sent.
    pub rule: Option<String>,
    /// Created at or after: unix milliseconds, `YYYY-MM-DD` or an RFC 3339 time.
    pub from: Option<String>,
    /// Created before (same forms as `from`).
    pub to: Option<String>,
    /// Text search in the id, server, tool, agent, rule, reason and arguments.
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

impl ListQuery {
    /// The store filter, or the error naming the parameter that does not parse.
    pub fn filter(&self) -> Result<ApprovalFilter, ApiError> {
        let non_empty = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let status = match non_empty(&self.status).as_deref() {
            None | Some("all") => None,
            Some(s) => Some(
                s.parse::<Status>()
                    .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "bad_status", format!("unknown status {s:?}")))?,
            ),
        };
        Ok(ApprovalFilter {
            status,
            server: non_empty(&self.server),
            tool: non_empty(&self.tool),
            agent: non_empty(&self.agent),
            rule: non_empty(&self.rule),
            from: time_param("from", &self.from)?,
            to: time_param("to", &self.to)?,
            q: non_empty(&self.q),
            limit: self.limit,
            offset: self.offset.unwrap_or(0),
        })
    }
}

/// An optional time query parameter.
pub fn time_param(name: &str, value: &Option<String>) -> Result<Option<i64>, ApiError> {
    match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => parse_time(text).map(Some).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "bad_time",
                format!("{name}: {text:?} is not a time (unix ms, YYYY-MM-DD or RFC 3339)"),
            )
        }),
    }
}

async fn list(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let filter = q.filter()?;
    let limit = filter.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT);
    let offset = filter.offset;
    let store = &state.approvals.store;
    let (approvals, total) =
        tokio::try_join!(store.list_approvals(filter.clone()), store.count_approvals(filter)).map_err(internal)?;
    let ids = approvals.iter().map(|a| a.id.clone()).collect();
    let mut opinions = crate::review::opinions(store, ids).await.map_err(internal)?;
    let items: Vec<serde_json::Value> = approvals
        .iter()
        .map(|a| {
            let mut v = view(&state, a);
            if let Some(opinion) = opinions.remove(&a.id) {
                v["ai_review"] = opinion;
            }
            v
        })
        .collect();
    let end = u64::from(offset) + items.len() as u64;
    let next_offset = (end < total).then_some(end);
    Ok(Json(
        json!({ "approvals": items, "total": total, "limit": limit, "offset": offset, "next_offset": next_offset }),
    ))
}

async fn show(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let store = &state.approvals.store;
    let a = store
        .get_approval(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "not_found", format!("no approval request {id}")))?;
    let (transitions, risk) =
        tokio::try_join!(store.transitions(&id), store.risk_snapshot(a.agent.clone(), store.now_ms()))
            .map_err(internal)?;
    let mut v = view(&state, &a);
    v["history"] = serde_json::to_value(transitions).unwrap_or_default();
    v["risk_snapshot"] = serde_json::to_value(risk).unwrap_or_default();
    if let Some(opinion) = crate::review::opinions(store, vec![id.clone()]).await.map_err(internal)?.remove(&id) {
        v["ai_review"] = opinion;
    }
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
/// named approvers exist (then each approver has a token of their own). Whatever name it gives,
/// the shared token stays one credential: it casts one vote per request.
fn acting_as(state: &WebState, who: Principal, approver: Option<&str>) -> Result<Principal, ApiError> {
    let Some(name) = approver.map(str::trim).filter(|a| !a.is_empty()) else { return Ok(who) };
    if normalise_name(name) == normalise_name(&who.name) {
        return Ok(who);
    }
    if who.name != OPERATOR || !state.approvers.is_empty() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "approver_mismatch",
            format!("this token belongs to {}; it cannot decide as {name:?}", who.name),
        ));
    }
    if let Some(why) = crate::identity::impersonates(name) {
        return Err(ApiError(StatusCode::FORBIDDEN, "reserved_name", why));
    }
    Ok(Principal::shared_token_as(name))
}

#[derive(Debug, Default, Deserialize)]
pub struct BulkBody {
    pub approval_ids: Vec<String>,
    pub notes: Option<String>,
    pub reason: Option<String>,
}

async fn bulk_approve(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    bulk(state, headers, body, true).await
}

async fn bulk_deny(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    bulk(state, headers, body, false).await
}

/// Decides each listed request in turn. The answer is 200 with one result per id (in the
/// order given): `{"id", "ok": true, "status"}` or `{"id", "ok": false, "error": {code, message}}`.
async fn bulk(
    state: Arc<WebState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
    approve: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    // The token is checked before the body is looked at.
    let who = authorize(&state, &headers)?;
    let body: BulkBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError(StatusCode::BAD_REQUEST, "bad_request", format!("expected a JSON body with approval_ids: {e}"))
    })?;
    let mut ids: Vec<String> = Vec::new();
    for id in body.approval_ids {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() || ids.len() > MAX_BULK {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("approval_ids must list 1 to {MAX_BULK} requests"),
        ));
    }
    if !approve && body.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason_required",
            "a reason is required to deny".into(),
        ));
    }
    let (results, decided) = decide_many(&state, &who, &ids, approve, body.notes, body.reason).await;
    Ok(Json(json!({ "results": results, "decided": decided, "failed": ids.len() - decided })))
}

/// Decides several requests as `who`; the per-request results and how many succeeded.
pub async fn decide_many(
    state: &WebState,
    who: &Principal,
    ids: &[String],
    approve: bool,
    notes: Option<String>,
    reason: Option<String>,
) -> (Vec<serde_json::Value>, usize) {
    let mut results = Vec::with_capacity(ids.len());
    let mut decided = 0;
    for id in ids {
        match state.approvals.decide(id, who, approve, notes.clone(), reason.clone()).await {
            Ok(a) => {
                decided += 1;
                results.push(json!({ "id": id, "ok": true, "status": a.status }));
            }
            Err(e) => {
                let ApiError(_, code, message) = ApiError::from(e);
                results.push(json!({ "id": id, "ok": false, "error": { "code": code, "message": message } }));
            }
        }
    }
    (results, decided)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RangeQuery {
    pub from: Option<String>,
    pub to: Option<String>,
}

async fn stats(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let from = time_param("from", &q.from)?;
    let to = time_param("to", &q.to)?;
    let stats = state.approvals.store.stats(from, to).await.map_err(internal)?;
    Ok(Json(serde_json::to_value(stats).map_err(internal)?))
}

async fn audit(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Query(q): Query<crate::store::audit::AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let (rows, next) = crate::store::audit::page(&state.approvals.store, q).await.map_err(internal)?;
    Ok(Json(json!({ "entries": rows, "next_before": next })))
}

/// Who serves this approval server: how another mcp-gate process tells whether it can follow it.
async fn hub(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Result<Json<HubInfo>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(HubInfo::here(&state.approvals.store)))
}

/// A follower's change to the shared store: wake the calls waiting here and tell subscribers.
/// Only the shared approver token may announce (it is what the processes of a machine share).
async fn announce(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    // The token is checked before the body is looked at.
    authorize(&state, &headers)?;
    if !bearer_token(&headers).is_some_and(|t| state.is_shared_token(t)) {
        return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", "only the shared approver token may announce".into()));
    }
    let note: Announcement = serde_json::from_slice(&body).map_err(|e| {
        ApiError(StatusCode::BAD_REQUEST, "bad_request", format!("expected a JSON body with kind and id: {e}"))
    })?;
    match state.approvals.changed_elsewhere(note.kind, &note.id, note.actor.as_deref()).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError(StatusCode::NOT_FOUND, "not_found", format!("no approval request {}", note.id))),
        Err(e) => Err(internal(e)),
    }
}

/// Step 2 of [`crate::server::handshake`]: prove that this server knows the key the client names. Needs
/// no token: it is how a client decides whether to send one.
async fn handshake_hello(
    State(state): State<Arc<WebState>>,
    local: Option<Extension<LocalAddr>>,
    body: axum::body::Bytes,
) -> Result<Json<crate::server::handshake::HelloReply>, ApiError> {
    use crate::server::handshake::{Hello, HelloReply, is_nonce, nonce, server_proof};
    let hello: Hello = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected a JSON body with key_id and client_nonce: {e}"),
        )
    })?;
    if !is_nonce(&hello.client_nonce) {
        return Err(ApiError(StatusCode::BAD_REQUEST, "bad_request", "client_nonce must be 64 hex digits".into()));
    }
    let key = state
        .handshake_key(&hello.key_id)
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unknown_key", "no token with this key id".into()))?;
    let listener = listener_of(local)?;
    let server_nonce = nonce().map_err(internal)?;
    let server_proof = server_proof(&key, &hello.client_nonce, &server_nonce, &listener);
    if !state.start_handshake(server_nonce.clone(), key, hello.client_nonce) {
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many handshakes under way".into()));
    }
    Ok(Json(HelloReply { server_nonce, listener: Some(listener), server_proof }))
}

/// How the handshake names the listener a request came on; without it nothing can be proved.
fn listener_of(local: Option<Extension<LocalAddr>>) -> Result<String, ApiError> {
    match local {
        Some(Extension(LocalAddr(local))) => Ok(crate::server::handshake::listener_name(local)),
        None => Err(internal("the local address of the connection is unknown")),
    }
}

/// Step 4 of [`crate::server::handshake`]: the client proves it knows the key too.
async fn handshake_confirm(
    State(state): State<Arc<WebState>>,
    local: Option<Extension<LocalAddr>>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    use crate::server::handshake::{Confirm, client_proof};
    let confirm: Confirm = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected a JSON body with server_nonce and client_proof: {e}"),
        )
    })?;
    let refused = || ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "wrong or expired handshake".into());
    let listener = listener_of(local)?;
    let (key, client_nonce) = state.finish_handshake(&confirm.server_nonce).ok_or_else(refused)?;
    // The client proves it spoke to this listener: a confirmation relayed from elsewhere fails.
    let expected = client_proof(&key, &client_nonce, &confirm.server_nonce, &listener);
    if crate::secret::constant_time_eq(expected.as_bytes(), confirm.client_proof.as_bytes()) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(refused())
    }
}
