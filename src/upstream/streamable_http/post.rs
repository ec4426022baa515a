//! POSTing one message and reading its answer: JSON, or an SSE stream resumed with
//! `Last-Event-ID`; when the upstream session expired, replaying the handshake to start it again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Response, StatusCode};
use tokio::sync::oneshot;

use super::get_stream::open_get_stream;
use super::{
    BACKOFF_MAX, BACKOFF_START, Ctx, ERROR_BODY_LIMIT, EVENT_STREAM, RESUME_ATTEMPTS, SESSION_HEADER, Shared, Step,
    parse_body,
};
use crate::upstream::Outgoing;
use crate::upstream::http::{
    describe, excerpt, http_failure, media_type, read_body, read_body_prefix, recorrelated_error,
};
use crate::wire::MAX_MESSAGE_BYTES;
use crate::wire::jsonrpc::{self, Message};
use crate::wire::sse::SseParser;

/// POSTs one message and handles its response; re-initializes once on an expired session.
pub(super) async fn post_task(shared: Arc<Shared>, out: Outgoing, step: Step, ready: Option<oneshot::Sender<()>>) {
    let mut ctx = Ctx::new(&out, step, true, ready);
    if step == Step::Other && out.protocol_version.is_none() {
        // A re-initialization under way: wait until the new session and its GET stream are set.
        drop(shared.reinit_lock.lock().await);
    }
    let mut may_reinit = true;
    loop {
        let (session, version) = shared.session_for(&out, step);
        let request = shared.post_request(&out, session.as_deref(), version.as_deref());
        let resp = match request.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let what = format!("cannot reach {}: {}", shared.url, describe(&e));
                shared.fail(&mut ctx, &what);
                break;
            }
        };
        if resp.status() == StatusCode::NOT_FOUND && may_reinit {
            if let Some(expired) = session {
                drop(resp);
                tracing::info!(server = %shared.server, "upstream session expired (HTTP 404), re-initializing");
                match reinitialize(&shared, &expired).await {
                    // The replay sent `notifications/initialized` itself.
                    Ok(()) if step == Step::Initialized => break,
                    Ok(()) => {
                        may_reinit = false;
                        continue;
                    }
                    Err(e) => {
                        let what = format!("session expired and re-initializing failed: {e}");
                        shared.fail(&mut ctx, &what);
                        break;
                    }
                }
            }
        }
        handle_response(&shared, &mut ctx, resp, session.as_deref()).await;
        break;
    }
    ctx.signal_ready();
}

/// Handles the response to a POST: records the session, reports what it carries.
pub(super) async fn handle_response(shared: &Arc<Shared>, ctx: &mut Ctx, mut resp: Response, session: Option<&str>) {
    let status = resp.status();
    if !status.is_success() {
        let body = read_body_prefix(&mut resp, ERROR_BODY_LIMIT).await;
        if let Some(id) = ctx.request_id {
            if let Some(msg) = recorrelated_error(&body, id) {
                tracing::debug!(server = %shared.server, request = id, status = %status, "error response");
                if ctx.step == Step::Initialize {
                    ctx.failure = Some(format!("initialize failed: HTTP {status}"));
                }
                if ctx.report {
                    shared.reporter.message(msg, Some(id));
                }
                return;
            }
        }
        shared.fail(ctx, &http_failure(status, &body));
        return;
    }
    if ctx.step == Step::Initialize {
        let issued = resp.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        tracing::debug!(server = %shared.server, session = ?issued, "initialize answered");
        shared.state().session_id = issued;
    }
    if ctx.step == Step::Initialized {
        // The handshake is complete: open the standalone stream, then let later messages go.
        open_get_stream(shared).await;
        ctx.signal_ready();
    }
    if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
        return;
    }
    let media = media_type(&resp);
    if media == EVENT_STREAM {
        read_post_stream(shared, ctx, resp, session).await;
        return;
    }
    let body = match read_body(&mut resp, MAX_MESSAGE_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            shared.fail(ctx, &format!("cannot read the response: {e}"));
            return;
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        if ctx.request_id.is_some() {
            tracing::debug!(server = %shared.server, status = %status, "empty response to a request");
        }
        return;
    }
    match parse_body(&body) {
        Ok(messages) => {
            for msg in messages {
                shared.deliver(ctx, msg);
            }
        }
        Err(e) => {
            let what = format!("invalid response ({media}): {e}: {}", excerpt(&body, 200));
            shared.fail(ctx, &what);
        }
    }
}

/// Reads a POST's SSE response as it arrives, resuming it with GET + `Last-Event-ID` when it
/// ends early in a session that supports that.
async fn read_post_stream(shared: &Arc<Shared>, ctx: &mut Ctx, mut resp: Response, session: Option<&str>) {
    let mut parser = SseParser::new();
    let mut retry = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                for event in parser.feed(&chunk) {
                    retry = event.retry.or(retry);
                    shared.deliver_event(ctx, event);
                    if ctx.got_response {
                        // The server closes the stream after the response; do not wait for it.
                        return;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(server = %shared.server, "response stream broke: {}", describe(&e));
                break;
            }
        }
    }
    drop(resp);
    if ctx.request_id.is_none() {
        return;
    }
    if parser.dropped_events() > 0 {
        // The answer was most likely the event over the limit: say so rather than wait for it.
        let what = format!("its answer was over the {MAX_MESSAGE_BYTES}-byte limit and was dropped");
        shared.fail(ctx, &what);
        return;
    }
    if let (Some(session), Some(last_id)) = (session, parser.last_event_id()) {
        let last_id = last_id.to_owned();
        if resume(shared, ctx, session, last_id, retry).await {
            return;
        }
    }
    shared.fail(ctx, "response stream ended before the response");
}

/// Resumes a request's response stream with GET + `Last-Event-ID` until the response arrives;
/// returns false when that cannot be done.
async fn resume(shared: &Arc<Shared>, ctx: &mut Ctx, session: &str, mut last_id: String, retry: Option<u64>) -> bool {
    let mut delay = retry.map_or(BACKOFF_START, Duration::from_millis).min(BACKOFF_MAX);
    let mut idle = 0;
    while idle < RESUME_ATTEMPTS {
        tokio::time::sleep(delay).await;
        tracing::debug!(server = %shared.server, request = ?ctx.request_id, last_event_id = %last_id, "resuming the response stream");
        let mut resp = match shared.get_request(session, Some(&last_id)).send().await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(server = %shared.server, "resumption failed: {}", describe(&e));
                return false;
            }
        };
        if !resp.status().is_success() || media_type(&resp) != EVENT_STREAM {
            tracing::debug!(server = %shared.server, status = %resp.status(), "resumption refused");
            return false;
        }
        let mut parser = SseParser::new();
        let mut progressed = false;
        let mut next_retry = None;
        while let Ok(Some(chunk)) = resp.chunk().await {
            for event in parser.feed(&chunk) {
                next_retry = event.retry.or(next_retry);
                progressed |= event.id.is_some() || !event.data.trim().is_empty();
                shared.deliver_event(ctx, event);
                if ctx.got_response {
                    return true;
                }
            }
        }
        if let Some(id) = parser.last_event_id() {
            last_id = id.to_owned();
        }
        if progressed {
            idle = 0;
        } else {
            idle += 1;
        }
        delay = next_retry.map_or(BACKOFF_START, Duration::from_millis).min(BACKOFF_MAX);
    }
    false
}

/// Why an expired upstream session could not be started again.
#[derive(Debug, thiserror::Error)]
enum ReinitError {
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
async fn reinitialize(shared: &Arc<Shared>, expired: &str) -> Result<(), ReinitError> {
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
