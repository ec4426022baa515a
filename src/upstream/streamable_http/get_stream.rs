//! The standalone GET stream: what the server sends outside any request, reconnected with
//! backoff.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::oneshot;

use super::{BACKOFF_MAX, BACKOFF_START, EVENT_STREAM, Shared};
use crate::upstream::http::{describe, media_type};
use crate::wire::jsonrpc::Message;
use crate::wire::sse::{SseEvent, SseParser};

/// Opens the standalone GET stream of the current session (replacing any older one) and waits
/// until its first response arrived, whether the stream opened or was refused, or the connection
/// failed; at most `get_open_wait`, then goes on with a warning.
pub(super) async fn open_get_stream(shared: &Arc<Shared>) {
    let Some(answered) = start_get_stream(shared) else {
        return;
    };
    if tokio::time::timeout(shared.get_open_wait, answered).await.is_err() {
        tracing::warn!(
            server = %shared.server,
            "the GET stream has not answered after {:?}, sending on; server messages sent before it opens may be lost",
            shared.get_open_wait
        );
    }
}

/// Starts the standalone GET stream task of the current session (replacing any older one);
/// returns a receiver that completes once the first GET got its response (or failed), or `None`
/// when there is no session to open a stream for.
pub(super) fn start_get_stream(shared: &Arc<Shared>) -> Option<oneshot::Receiver<()>> {
    let session = shared.session_id()?;
    let (answered_tx, answered_rx) = oneshot::channel();
    let task = shared.spawn(get_stream(Arc::clone(shared), session, answered_tx));
    if let Some(old) = shared.state().get_stream.replace(task) {
        old.abort();
    }
    Some(answered_rx)
}

/// The standalone GET stream: server messages unrelated to a request, reported with
/// `related = None`. Reconnects with backoff and `Last-Event-ID` while the session lasts.
/// `answered` is signalled once the first GET has its response headers (or failed).
pub(super) async fn get_stream(shared: Arc<Shared>, session: String, answered: oneshot::Sender<()>) {
    let mut answered = Some(answered);
    let mut backoff = BACKOFF_START;
    let mut last_id: Option<String> = None;
    loop {
        if shared.session_id().as_deref() != Some(session.as_str()) {
            return;
        }
        let mut retry = None;
        let result = shared.get_request(&session, last_id.as_deref()).send().await;
        if let Some(answered) = answered.take() {
            let _ = answered.send(());
        }
        match result {
            Err(e) => tracing::debug!(server = %shared.server, "GET stream: {}", describe(&e)),
            Ok(mut resp) => {
                let status = resp.status();
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    tracing::debug!(server = %shared.server, "the server offers no GET stream");
                    return;
                }
                // 409: the server still holds the stream that broke (it has not noticed yet).
                if status == StatusCode::NOT_FOUND
                    || (status.is_client_error()
                        && status != StatusCode::REQUEST_TIMEOUT
                        && status != StatusCode::CONFLICT
                        && status != StatusCode::TOO_MANY_REQUESTS)
                {
                    tracing::info!(server = %shared.server, status = %status, "GET stream refused, not retried");
                    return;
                }
                if status.is_success() && media_type(&resp) != EVENT_STREAM {
                    tracing::info!(server = %shared.server, "GET stream is not an event stream, not retried");
                    return;
                }
                if status.is_success() {
                    tracing::debug!(server = %shared.server, "GET stream open");
                    let mut parser = SseParser::new();
                    let mut delivered = false;
                    loop {
                        match resp.chunk().await {
                            Ok(Some(chunk)) => {
                                for event in parser.feed(&chunk) {
                                    retry = event.retry.or(retry);
                                    delivered = true;
                                    deliver_unrelated(&shared, event);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!(server = %shared.server, "GET stream broke: {}", describe(&e));
                                break;
                            }
                        }
                    }
                    if let Some(id) = parser.last_event_id() {
                        last_id = Some(id.to_owned());
                    }
                    if delivered {
                        backoff = BACKOFF_START;
                    }
                    tracing::debug!(server = %shared.server, "GET stream ended");
                } else {
                    tracing::debug!(server = %shared.server, status = %status, "GET stream failed");
                }
            }
        }
        let delay = retry.map_or(backoff, Duration::from_millis).min(BACKOFF_MAX);
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

pub(super) fn deliver_unrelated(shared: &Shared, event: SseEvent) {
    if event.data.trim().is_empty() {
        return;
    }
    match Message::parse(event.data.as_bytes()) {
        Ok(msg) => shared.reporter.message(msg, None),
        Err(e) => tracing::warn!(server = %shared.server, "invalid message on the GET stream ({e}), skipped"),
    }
}
