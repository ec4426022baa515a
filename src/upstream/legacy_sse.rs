//! Legacy HTTP+SSE client transport (MCP 2024-11-05).
//!
//! `connect` opens `GET url` and waits for the server's `endpoint` event, whose data is the URL
//! (usually relative) that messages are POSTed to. Every `message` event on the stream is one
//! server message, reported with `related = None` (responses never travel on the POST here).
//! Messages are POSTed one after another in the order queued. When the GET stream ends the
//! transport reports `closed` once and stops; the session restarts it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::http::{describe, http_failure, media_type, read_body_prefix, recorrelated_error};
use super::{ConnectError, Outgoing, Reporter, UpstreamLink};
use crate::wire::jsonrpc::{self, Message, code};
use crate::wire::sse::{EventReader, SseEvent};

/// Time allowed for the GET to answer and send its `endpoint` event.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one POST (servers answer `202 Accepted` at once).
const POST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the writer checks whether the session is gone.
const CLOSED_POLL: Duration = Duration::from_millis(500);
/// How much of a POST's answer body is read.
const BODY_LIMIT: usize = 64 * 1024;

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// Connects to a legacy HTTP+SSE server: opens the event stream and waits for its endpoint.
pub async fn connect(
    server: &str,
    url: &str,
    headers: &[(String, String)],
    reporter: Reporter,
) -> Result<UpstreamLink, ConnectError> {
    let http_error = |message: String| ConnectError::Http { server: server.to_owned(), message };
    let (parsed, headers, client) = super::http::prepare(server, url, headers)?;

    let opened = tokio::time::timeout(ENDPOINT_TIMEOUT, open(&client, &parsed, &headers))
        .await
        .map_err(|_| http_error(format!("no `endpoint` event from {url} within {} s", ENDPOINT_TIMEOUT.as_secs())))?
        .map_err(|e| http_error(e.to_string()))?;
    let Opened { events, endpoint, early } = opened;
    tracing::info!(server, url, endpoint = %endpoint, "HTTP+SSE upstream connected");

    let shared = Arc::new(Shared {
        server: server.to_owned(),
        base: parsed.clone(),
        endpoint: Mutex::new(endpoint),
        client,
        headers,
        reporter,
        shutdown: CancellationToken::new(),
    });
    for event in early {
        shared.on_event(event);
    }
    let (tx, rx) = UpstreamLink::channel();
    let (link, running) = UpstreamLink::new(tx);
    tokio::spawn(read_stream(Arc::clone(&shared), events));
    tokio::spawn(async move {
        write_messages(shared, rx).await;
        drop(running);
    });
    Ok(link)
}

/// The open event stream after its `endpoint` event.
struct Opened {
    events: EventReader<ByteStream>,
    endpoint: reqwest::Url,
    /// Events that came before the endpoint (reported once connected).
    early: Vec<SseEvent>,
}

/// Why the event stream of an HTTP+SSE server could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("cannot reach {url}: {}", describe(.cause))]
    Unreachable { url: reqwest::Url, cause: reqwest::Error },
    #[error("GET {url}: {failure}")]
    Refused { url: reqwest::Url, failure: String },
    #[error("GET {url} answered `{media}`, not an event stream (is this an HTTP+SSE server?)")]
    NotEventStream { url: reqwest::Url, media: String },
    #[error("event stream from {url} failed before the `endpoint` event: {}", describe(.cause))]
    Broken { url: reqwest::Url, cause: reqwest::Error },
    #[error("event stream from {url} ended before the `endpoint` event")]
    Ended { url: reqwest::Url },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// An `endpoint` event that names no usable URL.
#[derive(Debug, thiserror::Error)]
enum EndpointError {
    #[error("the `endpoint` event is empty")]
    Empty,
    #[error("invalid endpoint `{data}`: {cause}")]
    Invalid { data: String, cause: <reqwest::Url as std::str::FromStr>::Err },
    #[error("endpoint `{endpoint}` refused: it is not on the origin of `{base}` (scheme, host and port)")]
    OtherOrigin { endpoint: reqwest::Url, base: String },
}

async fn open(client: &reqwest::Client, url: &reqwest::Url, headers: &HeaderMap) -> Result<Opened, OpenError> {
    let mut headers = headers.clone();
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let mut resp = client
        .get(url.clone())
        .headers(headers)
        .send()
        .await
        .map_err(|cause| OpenError::Unreachable { url: url.clone(), cause })?;
    let status = resp.status();
    if !status.is_success() {
        let body = read_body_prefix(&mut resp, BODY_LIMIT).await;
        return Err(OpenError::Refused { url: url.clone(), failure: http_failure(status, &body) });
    }
    let media = media_type(&resp);
    if media != "text/event-stream" {
        return Err(OpenError::NotEventStream { url: url.clone(), media });
    }
    let stream: ByteStream = Box::pin(resp.bytes_stream());
    let mut events = EventReader::new(stream);
    let mut early = Vec::new();
    loop {
        match events.next_event().await {
            Some(Ok(event)) if event.event_type() == "endpoint" => {
                let endpoint = resolve_endpoint(url, &event.data)?;
                return Ok(Opened { events, endpoint, early });
            }
            Some(Ok(event)) => early.push(event),
            Some(Err(cause)) => return Err(OpenError::Broken { url: url.clone(), cause }),
            None => return Err(OpenError::Ended { url: url.clone() }),
        }
    }
}

/// Resolves an `endpoint` event's URL reference (absolute, `//host/path`, a path, `?query`)
/// against the event stream's URL, and keeps it only on that URL's origin.
fn resolve_endpoint(base: &reqwest::Url, data: &str) -> Result<reqwest::Url, EndpointError> {
    let data = data.trim();
    if data.is_empty() {
        return Err(EndpointError::Empty);
    }
    let endpoint = base.join(data).map_err(|cause| EndpointError::Invalid { data: data.to_owned(), cause })?;
    // The messages carry the configured headers (an API key, say): they go only to the server
    // they were configured for, not to wherever its event stream points.
    if endpoint.origin() != base.origin() {
        return Err(EndpointError::OtherOrigin { endpoint, base: base.to_string() });
    }
    Ok(endpoint)
}

struct Shared {
    server: String,
    /// The SSE URL (endpoints are resolved against it).
    base: reqwest::Url,
    /// Where messages are POSTed; a later `endpoint` event replaces it.
    endpoint: Mutex<reqwest::Url>,
    client: reqwest::Client,
    headers: HeaderMap,
    reporter: Reporter,
    shutdown: CancellationToken,
}

impl Shared {
    fn endpoint(&self) -> MutexGuard<'_, reqwest::Url> {
        self.endpoint.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn on_event(&self, event: SseEvent) {
        match event.event_type() {
            "message" => {
                if event.data.trim().is_empty() {
                    return;
                }
                match Message::parse(event.data.as_bytes()) {
                    Ok(msg) => self.reporter.message(msg, None),
                    Err(e) => self.reporter.refused(event.data.as_bytes(), &e, None),
                }
            }
            "endpoint" => match resolve_endpoint(&self.base, &event.data) {
                Ok(endpoint) => {
                    tracing::info!(server = %self.server, endpoint = %endpoint, "new endpoint");
                    *self.endpoint() = endpoint;
                }
                Err(e) => tracing::warn!(server = %self.server, "ignored endpoint event: {e}"),
            },
            other => tracing::debug!(server = %self.server, event = other, "event ignored"),
        }
    }

    /// Reports a JSON-RPC error for a request that cannot be delivered, or logs for the rest.
    fn fail(&self, out: &Outgoing, what: &str) {
        match out.request_id {
            Some(id) => {
                tracing::warn!(server = %self.server, request = id, "{what}");
                let text = format!("upstream {}: {what}", self.server);
                self.reporter
                    .message(Message::error(Some(jsonrpc::number_id(id)), code::UPSTREAM_ERROR, &text), Some(id));
            }
            None => tracing::warn!(server = %self.server, method = ?out.method, "{what}"),
        }
    }

    async fn post(&self, out: &Outgoing) {
        let endpoint = self.endpoint().clone();
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let sent = self
            .client
            .post(endpoint.clone())
            .headers(headers)
            .timeout(POST_TIMEOUT)
            .body(out.bytes.clone())
            .send()
            .await;
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                self.fail(out, &format!("cannot reach {endpoint}: {}", describe(&e)));
                return;
            }
        };
        let status = resp.status();
        let body = read_body_prefix(&mut resp, BODY_LIMIT).await;
        if status.is_success() {
            tracing::trace!(server = %self.server, status = %status, "posted");
            return;
        }
        if let Some(id) = out.request_id {
            if let Some(msg) = recorrelated_error(&body, id) {
                self.reporter.message(msg, Some(id));
                return;
            }
        }
        self.fail(out, &http_failure(status, &body));
    }
}

/// Reads the event stream until it ends; then reports `closed` (unless the transport was
/// stopped from this side) and stops the writer.
async fn read_stream(shared: Arc<Shared>, mut events: EventReader<ByteStream>) {
    let reason = loop {
        let next = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            next = events.next_event() => next,
        };
        match next {
            Some(Ok(event)) => shared.on_event(event),
            Some(Err(e)) => break format!("SSE stream ended: {}", describe(&e)),
            None => break "SSE stream ended".to_owned(),
        }
    };
    if shared.shutdown.is_cancelled() {
        return;
    }
    tracing::info!(server = %shared.server, "{reason}");
    shared.shutdown.cancel();
    shared.reporter.closed(reason);
}

/// POSTs queued messages one at a time, in order, until the link is dropped or the transport
/// stops.
async fn write_messages(shared: Arc<Shared>, mut rx: mpsc::Receiver<Outgoing>) {
    let mut poll = tokio::time::interval(CLOSED_POLL);
    loop {
        let out = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = poll.tick() => {
                if shared.reporter.is_closed() {
                    break;
                }
                continue;
            }
            out = rx.recv() => match out {
                Some(out) => out,
                None => break,
            },
        };
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = shared.post(&out) => {}
        }
    }
    shared.shutdown.cancel();
    tracing::debug!(server = %shared.server, "HTTP+SSE transport stopped");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{RawQuery, State};
    use axum::http::{HeaderMap as AxHeaders, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use serde_json::{Value, json};

    use super::*;
    use crate::upstream::UpstreamEvent;
    use crate::wire::sse::encode_event;

    #[derive(Default)]
    struct Upstream {
        /// (query, headers, body) of each POST.
        posts: Mutex<Vec<(Option<String>, AxHeaders, Value)>>,
        gets: Mutex<Vec<AxHeaders>>,
        stream: Mutex<Option<mpsc::UnboundedSender<String>>>,
        /// Send no endpoint event and end the stream at once.
        no_endpoint: AtomicBool,
    }

    async fn on_get(State(up): State<Arc<Upstream>>, headers: AxHeaders) -> Response {
        up.gets.lock().unwrap().push(headers);
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        if up.no_endpoint.load(Ordering::SeqCst) {
            tx.send(": hello\n\n".to_owned()).unwrap();
            tx.send(encode_event(Some("message"), None, r#"{"jsonrpc":"2.0","method":"x"}"#)).unwrap();
        } else {
            tx.send(encode_event(Some("endpoint"), None, "messages?session_id=abc")).unwrap();
            *up.stream.lock().unwrap() = Some(tx);
        }
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (Ok::<_, Infallible>(Bytes::from(event)), rx))
        });
        Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
    }

    async fn on_post(
        State(up): State<Arc<Upstream>>,
        RawQuery(query): RawQuery,
        headers: AxHeaders,
        body: Bytes,
    ) -> Response {
        let body: Value = serde_json::from_slice(&body).unwrap();
        up.posts.lock().unwrap().push((query, headers, body.clone()));
        match body["method"].as_str() {
            Some("fail") => return (StatusCode::INTERNAL_SERVER_ERROR, "nope").into_response(),
            Some("bad") => {
                let error = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32602,"message":"bad params"}}"#;
                return (StatusCode::BAD_REQUEST, [("content-type", "application/json")], error).into_response();
            }
            _ => {}
        }
        if let Some(id) = body.get("id") {
            let reply = json!({"jsonrpc":"2.0","id":id,"result":{"method":body["method"]}});
            if let Some(tx) = up.stream.lock().unwrap().as_ref() {
                let _ = tx.send(encode_event(Some("message"), None, &reply.to_string()));
            }
        }
        (StatusCode::ACCEPTED, "Accepted").into_response()
    }

    async fn serve(up: Arc<Upstream>) -> String {
        let app = Router::new().route("/sse", get(on_get)).route("/messages", post(on_post)).with_state(up);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/sse")
    }

    type Events = mpsc::UnboundedReceiver<(usize, u64, UpstreamEvent)>;

    async fn next_event(events: &mut Events) -> UpstreamEvent {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("no event in time");
        event.expect("reporter channel closed").2
    }

    async fn next_message(events: &mut Events) -> (Value, Option<u64>) {
        match next_event(events).await {
            UpstreamEvent::Message { msg, related } => (serde_json::from_slice(&msg.to_bytes()).unwrap(), related),
            UpstreamEvent::Closed { reason } => panic!("unexpected close: {reason}"),
            other => panic!("unexpected event: {other:?}"),
        }
    }

    fn request(id: u64, method: &str) -> Outgoing {
        let mut out = Outgoing::plain(Bytes::from(json!({"jsonrpc":"2.0","id":id,"method":method}).to_string()));
        out.method = Some(method.to_owned());
        out.request_id = Some(id);
        out
    }

    async fn start(up: &Arc<Upstream>) -> (UpstreamLink, Events) {
        let url = serve(Arc::clone(up)).await;
        let (sink, events) = mpsc::unbounded_channel();
        let headers = [("Authorization".to_owned(), "Bearer t".to_owned())];
        let link = connect("legacy", &url, &headers, Reporter::new(0, 1, sink)).await.unwrap();
        (link, events)
    }

    #[test]
    fn resolves_endpoint_references() {
        let resolve =
            |base: &str, data: &str| resolve_endpoint(&reqwest::Url::parse(base).unwrap(), data).map(|u| u.to_string());
        let base = "http://h:8080/mcp/sse?x=1#f";
        assert_eq!(resolve(base, "messages?session_id=a").unwrap(), "http://h:8080/mcp/messages?session_id=a");
        assert_eq!(resolve(base, "/messages/?session_id=a").unwrap(), "http://h:8080/messages/?session_id=a");
        assert_eq!(resolve(base, "../m").unwrap(), "http://h:8080/m");
        assert_eq!(resolve(base, "./a/./b/../c").unwrap(), "http://h:8080/mcp/a/c");
        assert_eq!(resolve(base, "../../../x").unwrap(), "http://h:8080/x");
        assert_eq!(resolve(base, "?sessionId=b").unwrap(), "http://h:8080/mcp/sse?sessionId=b");
        assert_eq!(resolve(base, "#g").unwrap(), "http://h:8080/mcp/sse?x=1#g");
        assert_eq!(resolve(base, " messages \n").unwrap(), "http://h:8080/mcp/messages");
        assert_eq!(resolve("http://h", "messages").unwrap(), "http://h/messages");
        assert_eq!(resolve("http://h?q", "m/").unwrap(), "http://h/m/");
        assert_eq!(resolve("http://h/a/b/", "..").unwrap(), "http://h/a/");
        assert!(matches!(resolve(base, " "), Err(EndpointError::Empty)));
        assert!(matches!(resolve(base, "http://[::1/m"), Err(EndpointError::Invalid { .. })));
    }

    /// The configured headers go only where the configured URL points: an endpoint on another
    /// scheme, host or port is refused, as the official SDKs' clients refuse it.
    #[test]
    fn an_endpoint_on_another_origin_is_refused() {
        let base = &reqwest::Url::parse("http://h:8080/mcp/sse").unwrap();
        assert_eq!(resolve_endpoint(base, "/messages?s=1").unwrap().as_str(), "http://h:8080/messages?s=1");
        assert_eq!(resolve_endpoint(base, "http://h:8080/m").unwrap().as_str(), "http://h:8080/m");
        let tls = &reqwest::Url::parse("https://h/sse").unwrap();
        assert_eq!(resolve_endpoint(tls, "https://h:443/m").unwrap().as_str(), "https://h/m");
        for other in ["https://h:8080/m", "http://other:8080/m", "http://h:8081/m", "//other/m", "http://h/m"] {
            let err = resolve_endpoint(base, other).unwrap_err();
            assert!(matches!(err, EndpointError::OtherOrigin { .. }), "{other}: {err}");
            assert!(err.to_string().contains("not on the origin of `http://h:8080/mcp/sse`"), "{err}");
        }
    }

    #[tokio::test]
    async fn posts_to_the_endpoint_and_reports_message_events() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        assert!(link.send(request(1, "initialize")).is_ok());
        let mut note =
            Outgoing::plain(Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#));
        note.method = Some("notifications/initialized".to_owned());
        assert!(link.send(note).is_ok());
        assert!(link.send(request(2, "tools/list")).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(msg, json!({"jsonrpc":"2.0","id":1,"result":{"method":"initialize"}}));
        assert_eq!(related, None);
        let (msg, _) = next_message(&mut events).await;
        assert_eq!(msg["id"], 2);

        let gets = up.gets.lock().unwrap().clone();
        assert_eq!(gets[0].get("accept").unwrap(), "text/event-stream");
        assert_eq!(gets[0].get("authorization").unwrap(), "Bearer t");
        let posts = up.posts.lock().unwrap().clone();
        let methods: Vec<&str> = posts.iter().map(|(_, _, body)| body["method"].as_str().unwrap()).collect();
        assert_eq!(methods, ["initialize", "notifications/initialized", "tools/list"], "POSTed in order");
        for (query, headers, _) in &posts {
            assert_eq!(query.as_deref(), Some("session_id=abc"));
            assert_eq!(headers.get("content-type").unwrap(), "application/json");
            assert_eq!(headers.get("authorization").unwrap(), "Bearer t");
        }
    }

    #[tokio::test]
    async fn failed_posts_become_errors_for_requests() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        assert!(link.send(request(3, "fail")).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!(related, Some(3));
        assert_eq!(
            msg,
            json!({"jsonrpc":"2.0","id":3,"error":{"code":-32000,"message":"upstream legacy: HTTP 500 Internal Server Error: nope"}})
        );
        assert!(link.send(request(4, "bad")).is_ok());
        let (msg, _) = next_message(&mut events).await;
        assert_eq!(msg, json!({"jsonrpc":"2.0","id":4,"error":{"code":-32602,"message":"bad params"}}));
        assert!(link.send(request(5, "ping")).is_ok());
        assert_eq!(next_message(&mut events).await.0["id"], 5);
    }

    #[tokio::test]
    async fn stream_end_reports_closed_once() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        up.stream.lock().unwrap().take();
        match next_event(&mut events).await {
            UpstreamEvent::Closed { reason } => assert_eq!(reason, "SSE stream ended"),
            other => panic!("expected a close, got {other:?}"),
        }
        assert!(!matches!(tokio::time::timeout(Duration::from_millis(300), events.recv()).await, Ok(Some(_))));
        // The writer stopped too: the link refuses messages soon after.
        let mut refused = false;
        for _ in 0..50 {
            if link.send(request(9, "ping")).is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused);
    }

    #[tokio::test]
    async fn dropping_the_link_closes_the_stream_without_a_report() {
        let up = Arc::new(Upstream::default());
        let (link, mut events) = start(&up).await;
        drop(link);
        let mut gone = false;
        for _ in 0..50 {
            if up.stream.lock().unwrap().as_ref().is_some_and(|tx| tx.is_closed()) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the GET stream is dropped");
        assert!(!matches!(tokio::time::timeout(Duration::from_millis(300), events.recv()).await, Ok(Some(_))));
    }

    #[tokio::test]
    async fn missing_endpoint_event_is_a_connect_error() {
        let up = Arc::new(Upstream::default());
        up.no_endpoint.store(true, Ordering::SeqCst);
        let url = serve(Arc::clone(&up)).await;
        let (sink, _events) = mpsc::unbounded_channel();
        let err = connect("legacy", &url, &[], Reporter::new(0, 1, sink)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Http { .. }));
        assert!(err.to_string().contains("ended before the `endpoint` event"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_or_wrong_servers_are_connect_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/sse", listener.local_addr().unwrap());
        drop(listener);
        let (sink, _events) = mpsc::unbounded_channel();
        let err = connect("legacy", &url, &[], Reporter::new(0, 1, sink.clone())).await.unwrap_err();
        assert!(err.to_string().contains("cannot reach"), "{err}");

        let up = Arc::new(Upstream::default());
        let base = serve(up).await;
        let err = connect("legacy", &base.replace("/sse", "/nothing"), &[], Reporter::new(0, 1, sink.clone()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("HTTP 404"), "{err}");
        let err = connect("legacy", "nope", &[], Reporter::new(0, 1, sink)).await.unwrap_err();
        assert!(err.to_string().contains("invalid URL"), "{err}");
    }
}
