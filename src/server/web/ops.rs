//! The operations routes of the approval server: `/healthz` and `/readyz` (see
//! [`crate::http::health`]; the Host/Origin rule they follow is applied by the server's guard).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

use super::WebState;
use crate::http::health::{self, Check};
use crate::store::Store;

pub fn routes() -> Router<Arc<WebState>> {
    Router::new().route(health::HEALTHZ, get(healthz)).route(health::READYZ, get(readyz))
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
                "not answering".to_owned()
            })
        })
    })
}
