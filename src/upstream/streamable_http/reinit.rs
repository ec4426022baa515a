//! Starting an expired upstream session again by replaying the saved handshake.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use reqwest::StatusCode;

use super::get_stream::open_get_stream;
use super::post::handle_response;
use super::{Ctx, Shared, Step};
use crate::upstream::Outgoing;
use crate::wire::jsonrpc::{self, Message};

/// Why an expired upstream session could not be started again.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReinitError {
    #[error("no initialize request to replay")]
    NothingToReplay,
    #[error("saved initialize is invalid: {0}")]
    Saved(#[from] jsonrpc::ParseError),
    #[error("cannot reach {url}: {}", crate::upstream::http::describe(.cause))]
    Unreachable { url: reqwest::Url, cause: reqwest::Error },
    /// What the replayed initialize got back, as reported to its callers.
    #[error("{0}")]
    Failed(String),
    #[error("no response to the replayed initialize")]
    NoResponse,
    #[error("notifications/initialized: HTTP {0}")]
    Initialized(StatusCode),
}

/// Replays the saved handshake after the upstream session expired: the initialize request (with
/// an id of the transport's own; its response is swallowed) and `notifications/initialized`.
pub(super) async fn reinitialize(shared: &Arc<Shared>, expired: &str) -> Result<(), ReinitError> {
    let _lock = shared.reinit_lock.lock().await;
    let (initialize, initialized) = {
        let state = shared.state();
        if state.session_id.as_deref() != Some(expired) {
            // Another request already re-initialized (or the client started over).
            return Ok(());
        }
        (state.initialize.clone(), state.initialized.clone())
    };
    let initialize = initialize.ok_or(ReinitError::NothingToReplay)?;
    let n = shared.replays.fetch_add(1, Ordering::Relaxed);
    let id = u64::MAX - n;
    let mut msg = Message::parse(&initialize)?;
    msg.id = Some(jsonrpc::number_id(id));
    let mut out = Outgoing::plain(Bytes::from(msg.to_bytes()));
    out.method = Some("initialize".to_owned());
    out.request_id = Some(id);

    let mut ctx = Ctx::new(&out, Step::Initialize, false, None);
    let resp = shared
        .post_request(&out, None, None)
        .send()
        .await
        .map_err(|cause| ReinitError::Unreachable { url: shared.url.clone(), cause })?;
    handle_response(shared, &mut ctx, resp, None).await;
    if let Some(failure) = ctx.failure {
        return Err(ReinitError::Failed(failure));
    }
    if !ctx.got_response {
        return Err(ReinitError::NoResponse);
    }
    let (session, version) = {
        let state = shared.state();
        (state.session_id.clone(), state.protocol_version.clone())
    };
    tracing::info!(server = %shared.server, session = ?session, "upstream session re-initialized");
    if let Some(initialized) = initialized {
        let mut out = Outgoing::plain(initialized);
        out.method = Some("notifications/initialized".to_owned());
        let resp = shared
            .post_request(&out, session.as_deref(), version.as_deref())
            .send()
            .await
            .map_err(|cause| ReinitError::Unreachable { url: shared.url.clone(), cause })?;
        if !resp.status().is_success() {
            return Err(ReinitError::Initialized(resp.status()));
        }
        open_get_stream(shared).await;
    }
    Ok(())
}
