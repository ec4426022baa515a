//! The operations routes of the approval server: `/healthz` and `/readyz` (see
//! [`crate::http::health`]) and, when `[metrics] enabled = true`, `/metrics` (see
//! [`crate::metrics`]). The Host/Origin rule they follow is applied by the server's guard.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::broadcast::error::RecvError;

use super::WebState;
use crate::approval::{ApprovalService, ChangeKind};
use crate::http::health::{self, Check, NotReady};
use crate::metrics::ApprovalDecision;
use crate::secret::ExposeSecret;
use crate::store::{ApprovalFilter, Status, Store};

pub fn routes() -> Router<Arc<WebState>> {
    Router::new()
        .route(health::HEALTHZ, get(healthz))
        .route(health::READYZ, get(readyz))
        .route(health::METRICS, get(metrics))
}

/// `GET /metrics`: 404 unless enabled; the bearer token when one is set.
async fn metrics(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    let settings = &state.metrics;
    if !settings.enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Some(token) = &settings.token
        && !crate::http::guard::bearer_matches(&headers, token.expose_secret())
    {
        let mut resp = StatusCode::UNAUTHORIZED.into_response();
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let pending = ApprovalFilter { status: Some(Status::Pending), ..ApprovalFilter::default() };
    match state.approvals.store.count_approvals(pending).await {
        Ok(n) => crate::metrics::global().set_pending(n),
        Err(e) => tracing::warn!("metrics: cannot count the pending requests: {e}"),
    }
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::global().render()).into_response()
}

/// Observes the time from request to decision of every request this process decides (a
/// change relayed from another process is counted by that process).
pub fn spawn_decision_metrics(approvals: &Arc<ApprovalService>) {
    let mut changes = approvals.changes.subscribe();
    tokio::spawn(async move {
        loop {
            let change = match changes.recv().await {
                Ok(change) => change,
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "metrics: changes missed");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let decision = match change.kind {
                ChangeKind::Approved => ApprovalDecision::Approved,
                ChangeKind::Denied => ApprovalDecision::Denied,
                _ => continue,
            };
            if change.relayed {
                continue;
            }
            let a = &change.approval;
            let Some(decided_at) = a.decided_at else { continue };
            let waited = u64::try_from(decided_at.saturating_sub(a.created_at)).unwrap_or(0);
            crate::metrics::approval_decided(decision, Duration::from_millis(waited));
        }
    });
}

async fn healthz() -> Response {
    health::healthz()
}

async fn readyz(State(state): State<Arc<WebState>>) -> Response {
    health::readyz(&state.readiness).await
}

/// The readiness check `store`: the approval store answers a read. Its error goes to the log;
/// the probe says only that it failed.
pub fn store_check(store: Store) -> Check {
    Check::new("store", move || {
        let store = store.clone();
        Box::pin(async move {
            store.ping().await.map_err(|e| {
                tracing::warn!("readiness: the approval store does not answer: {e}");
                NotReady::NotAnswering
            })
        })
    })
}
