//! `POST`, `GET` and `DELETE` on an endpoint: a message in, its answer as JSON or SSE; the
//! standalone stream; the end of a session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::{debug, info, warn};

use super::{
    FrameRx, HttpState, OpenRequest, Refusal, STREAM_QUEUE, Streams, frame_channel, header_str, is_modern, not_json,
    validate_modern_headers,
};
use crate::session::{Input, SessionHandle};
use crate::wire::MAX_MESSAGE_BYTES;
use crate::wire::headers::{PARAM_PREFIX as PARAM_HEADER_PREFIX, SESSION as SESSION_HEADER};
use crate::wire::jsonrpc::{self, Kind, Message, code};

pub(super) async fn post(
    state: Arc<HttpState>,
    endpoint: String,
    agent: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(content_type) = not_json(&headers) {
        return Refusal::NotJson(content_type).into_response();
    }
    // A body sent slowly holds its connection busy (busy connections are never evicted): it has
    // as long as the headers had.
    let body_time = state.opts.limits.listener.header_timeout;
    let bytes = match tokio::time::timeout(body_time, axum::body::to_bytes(body, MAX_MESSAGE_BYTES)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return Refusal::TooLarge.into_response(),
        Err(_) => return Refusal::SlowBody(body_time.as_secs()).into_response(),
    };
    let mut msg = match crate::downstream::read(&bytes) {
        Ok(m) => m,
        Err(e) => {
            // A refused notification or response gets the error without an id.
            let reply = match state.session_options(&endpoint) {
                Some(opts) => crate::downstream::refuse(&bytes, &e, opts, agent.or(opts.agent.as_deref())),
                None => None,
            };
            let reply = reply.unwrap_or_else(|| Message::error(None, e.code(), &e.to_string()));
            let body = reply.to_bytes();
            return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
    };
    let modern = is_modern(&headers);
    let mut param_headers = Vec::new();
    if modern {
        if let Err(e) = validate_modern_headers(&headers, &msg) {
            return Refusal::from(e).response(msg.id.take());
        }
        param_headers = headers
            .iter()
            .filter_map(|(k, v)| {
                let name = k.as_str().strip_prefix(PARAM_HEADER_PREFIX)?;
                Some((name.to_owned(), v.to_str().ok()?.to_owned()))
            })
            .collect();
    }

    let session_id = header_str(&headers, SESSION_HEADER).map(str::to_owned);
    let (session, new_id) = if modern && session_id.is_none() {
        match state.shared_session(&endpoint, agent).await {
            Ok(s) => (s, None),
            Err(e) => return e.response(msg.id.take()),
        }
    } else if let Some(id) = session_id {
        match state.sessions.get(&id).map(|s| s.clone()) {
            Some(s) if s.endpoint == endpoint && s.agent.as_deref() == agent && !s.handle.is_closed() => (s, None),
            _ => return Refusal::SessionNotFound.into_response(),
        }
    } else if msg.method() == "initialize" || msg.method() == "server/discover" {
        // `server/discover` from a client that has not negotiated yet is answered sessionless.
        if msg.method() == "server/discover" {
            match state.shared_session(&endpoint, agent).await {
                Ok(s) => (s, None),
                Err(e) => return e.response(msg.id.take()),
            }
        } else {
            match state.new_session(&endpoint, agent, false).await {
                Ok((id, s)) => (s, Some(id)),
                Err(e) => return e.response(msg.id.take()),
            }
        }
    } else {
        return Refusal::SessionRequired.into_response();
    };
    session.touch();
    let shared = new_id.is_none() && header_str(&headers, SESSION_HEADER).is_none();
    if shared && msg.method() == "notifications/cancelled" {
        // The requests of a shared session are known by ids of the proxy's own, which no client
        // chose: a cancellation naming one names another client's request. A 2026-07-28 client
        // cancels by closing its request's stream.
        debug!("cancellation in a shared session dropped");
        return StatusCode::ACCEPTED.into_response();
    }

    if msg.kind() != Kind::Request {
        if !session.handle.send(Input::Client { msg, param_headers }) {
            return Refusal::SessionNotFound.into_response();
        }
        return StatusCode::ACCEPTED.into_response();
    }

    // A request: open its response stream before the session can answer.
    let (tx, rx) = frame_channel(STREAM_QUEUE);
    let key = {
        let Ok(mut inner) = session.streams.inner.lock() else {
            return Refusal::Poisoned.into_response();
        };
        // Each request in flight keeps its connection busy, and busy connections are never
        // evicted: one session may not keep more than half of them.
        let cap = (state.opts.limits.listener.max_connections / 2).max(1);
        if inner.by_request.len() >= cap {
            warn!(cap, "request refused: too many requests in flight in its session");
            return Refusal::Busy(cap).into_response();
        }
        let key = if shared {
            // Clients of a shared session pick ids independently: give each request our own.
            let ours = jsonrpc::to_raw(&format!("mcp-gate-{}", state.next_id.fetch_add(1, Ordering::Relaxed)));
            let original = msg.id.replace(ours.clone());
            if let Some(original) = original {
                inner.original_ids.insert(ours.get().to_owned(), original);
            }
            ours.get().to_owned()
        } else {
            let key = msg.id_text().unwrap_or("null").to_owned();
            if inner.by_request.contains_key(&key) {
                // Its answer could not be told from the other's, and taking over that request's
                // stream would leave both unanswered: refused, the request in flight keeps it.
                warn!(id = key, "request refused: its id is in use by a request in flight");
                let text = format!("request id {key} is already in use by a request in flight");
                let reply = Message::error(msg.id.take(), code::INVALID_REQUEST, &text);
                return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], reply.to_bytes())
                    .into_response();
            }
            key
        };
        inner.by_request.insert(key.clone(), OpenRequest { tx, since: Instant::now() });
        key
    };
    if !session.handle.send(Input::Client { msg, param_headers }) {
        return Refusal::SessionNotFound.into_response();
    }
    let gone = Some(CancelOnDrop {
        handle: session.handle.clone(),
        streams: session.streams.clone(),
        key: key.clone(),
        cancel_upstream: modern,
    });
    let wants_sse = header_str(&headers, "accept").is_none_or(|a| a.contains("text/event-stream"));
    let rx = match &new_id {
        Some(id) => match first_answer(rx).await {
            Ok(rx) => rx,
            Err(rx) => {
                // A session whose `initialize` failed (or timed out) is not kept: its upstreams
                // stop now rather than when it would be reaped.
                if state.sessions.remove(id).is_some() {
                    info!(session = &id[..8], "session closed: initialize failed");
                }
                return if wants_sse { sse_response(rx, gone) } else { json_response(rx, gone).await };
            }
        },
        None => rx,
    };
    let mut resp = if wants_sse { sse_response(rx, gone) } else { json_response(rx, gone).await };
    if let Some(id) = new_id
        && let Ok(v) = HeaderValue::from_str(&id)
    {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

/// Waits for the answer to a request; `Err` when it is an error (or never comes). Either way
/// the returned receiver yields the same frames again.
pub(super) async fn first_answer(mut rx: FrameRx) -> Result<FrameRx, FrameRx> {
    // Room for all the source could hold, and its last message.
    let (tx, replay) = frame_channel(STREAM_QUEUE + 1);
    let mut ok = false;
    while let Some(frame) = rx.recv().await {
        let last = frame.last;
        if last {
            ok = Message::parse(&frame.bytes).is_ok_and(|m| m.error.is_none() && m.result.is_some());
        }
        let _ = tx.push(frame);
        if last {
            break;
        }
    }
    if ok { Ok(replay) } else { Err(replay) }
}

/// Closing the response stream of a request before its answer abandons it if it is held, and
/// cancels it upstream if it is a 2026-07-28 request.
pub(super) struct CancelOnDrop {
    pub(super) handle: SessionHandle,
    pub(super) streams: Arc<Streams>,
    pub(super) key: String,
    pub(super) cancel_upstream: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let open = self.streams.inner.lock().map(|mut i| {
            i.original_ids.remove(&self.key);
            i.by_request.remove(&self.key).is_some()
        });
        if open.unwrap_or(false) {
            self.handle.send(Input::ClientGone { id: self.key.clone(), cancel_upstream: self.cancel_upstream });
        }
    }
}

/// An SSE body: one `message` event per queued message; ends when the sender side closes.
/// With `until_reply`, it ends after the first response.
pub(super) fn sse_response(rx: FrameRx, guard: Option<CancelOnDrop>) -> Response {
    let stream = futures::stream::unfold((rx, guard, false), move |(mut rx, guard, done)| async move {
        if done {
            return None;
        }
        let frame = rx.recv().await?;
        let mut event = Vec::with_capacity(frame.bytes.len() + 24);
        event.extend_from_slice(b"event: message\ndata: ");
        crate::wire::framing::push_unsplittable(&mut event, &frame.bytes);
        event.extend_from_slice(b"\n\n");
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(event)), (rx, guard, frame.last)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

pub(super) async fn json_response(mut rx: FrameRx, guard: Option<CancelOnDrop>) -> Response {
    while let Some(frame) = rx.recv().await {
        if frame.last {
            drop(guard);
            return ([(header::CONTENT_TYPE, "application/json")], frame.bytes).into_response();
        }
    }
    Refusal::Ended.into_response()
}

pub(super) async fn get(state: Arc<HttpState>, endpoint: String, agent: Option<&str>, headers: HeaderMap) -> Response {
    if is_modern(&headers) {
        let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    if !header_str(&headers, "accept").is_some_and(|a| a.contains("text/event-stream")) {
        return Refusal::NotAcceptable.into_response();
    }
    let Some(id) = header_str(&headers, SESSION_HEADER) else {
        return Refusal::SessionRequired.into_response();
    };
    let Some(session) =
        state.sessions.get(id).map(|s| s.clone()).filter(|s| s.endpoint == endpoint && s.agent.as_deref() == agent)
    else {
        return Refusal::SessionNotFound.into_response();
    };
    session.touch();
    let (tx, rx) = frame_channel(STREAM_QUEUE);
    session.streams.open_get_stream(tx);
    sse_response(rx, None)
}

pub(super) fn delete(state: Arc<HttpState>, endpoint: &str, agent: Option<&str>, headers: HeaderMap) -> Response {
    let Some(id) = header_str(&headers, SESSION_HEADER) else {
        return Refusal::SessionRequired.into_response();
    };
    match state.sessions.remove_if(id, |_, s| s.endpoint == endpoint && s.agent.as_deref() == agent) {
        Some((_, session)) => {
            info!(session = &id[..id.len().min(8)], "session closed by the client");
            // Its requests end with it, whether their streams are still open or not: a held call
            // stops waiting and never runs, a call in flight is cancelled upstream.
            let open: Vec<String> = session
                .streams
                .inner
                .lock()
                .map(|inner| inner.by_request.keys().cloned().collect())
                .unwrap_or_default();
            for key in open {
                session.handle.send(Input::ClientGone { id: key, cancel_upstream: true });
            }
            session.streams.close("the session was deleted by the client");
            StatusCode::OK.into_response()
        }
        None => Refusal::SessionNotFound.into_response(),
    }
}
