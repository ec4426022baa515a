//! The Streamable HTTP client against an in-process axum server: handshake ordering, sessions,
//! resumption, re-initialization, the GET stream.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
use axum::response::{IntoResponse, Response as AxResponse};
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

use super::*;
use crate::upstream::UpstreamEvent;

/// One HTTP request the test upstream received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    headers: AxHeaders,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn rpc_method(&self) -> &str {
        self.body["method"].as_str().unwrap_or("")
    }
}

/// A small Streamable HTTP MCP server (2025-06-18 sessions, plus stateless 2026 requests).
#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<Seen>>,
    sessions: AtomicU64,
    live: Mutex<HashSet<String>>,
    /// Serve a standalone GET stream (else 405).
    get_stream: AtomicBool,
    get_tx: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// Answer GET with this status instead (200: a JSON body, not an event stream).
    get_status: Mutex<Option<u16>>,
    /// How long the GET handler takes before it answers (and registers its stream).
    get_delay: Mutex<Duration>,
    /// Standalone GET streams by session, registered when the GET is answered. A stream
    /// closes when this and `get_tx` (the latest one) let it go.
    streams: Mutex<HashMap<String, mpsc::UnboundedSender<String>>>,
    /// `elicit` calls whose `elicitation/create` found the session's GET stream open / did not.
    delivered: AtomicU64,
    lost: AtomicU64,
    /// Events replayed first on a GET whose `Last-Event-ID` is the key.
    replay: Mutex<HashMap<String, Vec<String>>>,
}

impl Upstream {
    fn record(&self, method: &str, headers: &AxHeaders, body: Value) {
        self.seen.lock().unwrap().push(Seen { method: method.to_owned(), headers: headers.clone(), body });
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn posts(&self, rpc_method: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.method == "POST" && s.rpc_method() == rpc_method).collect()
    }
    /// Where the first request of `method` (HTTP method, or JSON-RPC method of a POST) is in
    /// the order the upstream saw them.
    fn position(&self, method: &str) -> Option<usize> {
        self.seen().iter().position(|s| s.method == method || (s.method == "POST" && s.rpc_method() == method))
    }
}

fn json_reply(body: Value) -> AxResponse {
    ([("content-type", "application/json")], body.to_string()).into_response()
}

fn sse_reply(events: Vec<String>) -> AxResponse {
    let stream = futures::stream::iter(events).then(|event| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, Infallible>(Bytes::from(event))
    });
    AxResponse::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

fn sse_data(id: Option<&str>, data: &Value) -> String {
    crate::wire::sse::encode_event(Some("message"), id, &data.to_string())
}

async fn on_post(AxState(up): AxState<Arc<Upstream>>, headers: AxHeaders, body: Bytes) -> AxResponse {
    let body: Value = serde_json::from_slice(&body).unwrap();
    up.record("POST", &headers, body.clone());
    let method = body["method"].as_str().unwrap_or("").to_owned();
    let id = body.get("id").cloned().unwrap_or(Value::Null);
    if method == "initialize" {
        // Slow enough that anything sent without waiting for it would overtake it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let session = format!("s{}", up.sessions.fetch_add(1, Ordering::SeqCst) + 1);
        up.live.lock().unwrap().insert(session.clone());
        let result = json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-06-18",
            "capabilities":{},"serverInfo":{"name":"test","version":"1"}}});
        let mut resp = json_reply(result);
        resp.headers_mut().insert("mcp-session-id", session.parse().unwrap());
        return resp;
    }
    if let Some(session) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
        if !up.live.lock().unwrap().contains(session) {
            return (AxStatus::NOT_FOUND, "session not found").into_response();
        }
    }
    if id.is_null() {
        return AxStatus::ACCEPTED.into_response();
    }
    let name = body["params"]["name"].as_str().unwrap_or("").to_owned();
    match (method.as_str(), name.as_str()) {
        ("tools/list", _) => json_reply(json!({"jsonrpc":"2.0","id":id,"result":{"tools":[]}})),
        ("tools/call", "fail") => (AxStatus::INTERNAL_SERVER_ERROR, "internal kaboom").into_response(),
        ("tools/call", "jsonerr") => (
            AxStatus::BAD_REQUEST,
            [("content-type", "application/json")],
            r#"{"jsonrpc":"2.0","id":"server-error","error":{"code":-32600,"message":"Bad Request: nope"}}"#,
        )
            .into_response(),
        ("tools/call", "progress") => sse_reply(vec![
            ": keep-alive\n\n".to_owned(),
            sse_data(
                None,
                &json!({"jsonrpc":"2.0","method":"notifications/progress",
                "params":{"progressToken":"t","progress":1}}),
            ),
            sse_data(None, &json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}})),
        ]),
        ("tools/call", "cut") => sse_reply(vec![
            "id: e1\ndata:\n\n".to_owned(),
            sse_data(
                Some("e2"),
                &json!({"jsonrpc":"2.0","method":"notifications/progress",
                "params":{"progressToken":"t","progress":1}}),
            ),
        ]),
        ("tools/call", "elicit") => {
            // Like a server SDK: a request unrelated to the call goes to the standalone GET
            // stream, and is lost when that stream is not open at this moment.
            let session = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let stream = up.streams.lock().unwrap().get(&session).cloned();
            let request = json!({"jsonrpc":"2.0","id":format!("elicit-{session}"),"method":"elicitation/create",
                "params":{"message":"Name?","requestedSchema":{"type":"object","properties":{}}}});
            match stream {
                Some(tx) if tx.send(sse_data(None, &request)).is_ok() => up.delivered.fetch_add(1, Ordering::SeqCst),
                _ => up.lost.fetch_add(1, Ordering::SeqCst),
            };
            json_reply(json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}}))
        }
        ("tools/call", "slow") => {
            tokio::time::sleep(Duration::from_millis(400)).await;
            json_reply(json!({"jsonrpc":"2.0","id":id,"result":{"slow":true}}))
        }
        _ => json_reply(json!({"jsonrpc":"2.0","id":id,"result":{"echo":name}})),
    }
}

async fn on_get(AxState(up): AxState<Arc<Upstream>>, headers: AxHeaders) -> AxResponse {
    up.record("GET", &headers, Value::Null);
    if headers.get("last-event-id").and_then(|v| v.to_str().ok()) == Some("e2") {
        // Resumes the "cut" stream: the response to request 40.
        return sse_reply(vec![sse_data(Some("e3"), &json!({"jsonrpc":"2.0","id":40,"result":{"resumed":true}}))]);
    }
    let delay = *up.get_delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    up.record("GET answered", &headers, Value::Null);
    let status = *up.get_status.lock().unwrap();
    match status {
        Some(200) => return json_reply(json!({"jsonrpc":"2.0","method":"notifications/message"})),
        Some(status) => return (AxStatus::from_u16(status).unwrap(), "no").into_response(),
        None => {}
    }
    if !up.get_stream.load(Ordering::SeqCst) {
        return AxStatus::METHOD_NOT_ALLOWED.into_response();
    }
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let resumed_after = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    if let Some(events) = resumed_after.and_then(|id| up.replay.lock().unwrap().remove(id)) {
        for event in events {
            tx.send(event).unwrap();
        }
    }
    if let Some(session) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
        up.streams.lock().unwrap().insert(session.to_owned(), tx.clone());
    }
    *up.get_tx.lock().unwrap() = Some(tx);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<_, Infallible>(Bytes::from(event)), rx))
    });
    AxResponse::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

async fn on_delete(AxState(up): AxState<Arc<Upstream>>, headers: AxHeaders) -> AxStatus {
    up.record("DELETE", &headers, Value::Null);
    AxStatus::OK
}

async fn serve(up: Arc<Upstream>) -> String {
    let app = Router::new().route("/mcp", post(on_post).get(on_get).delete(on_delete)).with_state(up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/mcp")
}

type Events = mpsc::UnboundedReceiver<(usize, u64, UpstreamEvent)>;

async fn start(up: &Arc<Upstream>) -> (UpstreamLink, Events) {
    let url = serve(Arc::clone(up)).await;
    let (sink, events) = mpsc::unbounded_channel();
    let link =
        connect("up", &url, &[("X-Api-Key".to_owned(), "k1".to_owned())], Reporter::new(0, 1, sink)).await.unwrap();
    (link, events)
}

/// A wait for the GET stream longer than any test: requests go only once it answered.
const NO_CAP: Duration = Duration::from_secs(3600);

/// A transport to `url` that waits at most `get_open_wait` for its GET stream.
async fn start_at(url: &str, get_open_wait: Duration) -> (UpstreamLink, Events) {
    let (sink, events) = mpsc::unbounded_channel();
    let link = connect_with("up", url, &[], Reporter::new(0, 1, sink), get_open_wait).await.unwrap();
    (link, events)
}

fn slow_get_upstream(delay: Duration) -> Arc<Upstream> {
    let up = Arc::new(Upstream::default());
    up.get_stream.store(true, Ordering::SeqCst);
    *up.get_delay.lock().unwrap() = delay;
    up
}

/// Waits until the upstream has seen a request matching `pred`.
async fn until_seen(up: &Upstream, what: &str, pred: impl Fn(&Seen) -> bool) {
    for _ in 0..250 {
        if up.seen().iter().any(&pred) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the upstream never saw {what}");
}

/// Sends `call(id, "elicit")` and reads messages until its result; returns whether the
/// `elicitation/create` from the GET stream came before it.
async fn elicit(link: &UpstreamLink, events: &mut Events, id: u64) -> bool {
    assert!(link.send(call(id, "elicit")).is_ok());
    let mut elicited = false;
    loop {
        let (msg, related) = next_message(events).await;
        if msg["method"] == "elicitation/create" {
            assert_eq!(related, None, "it came on the standalone stream");
            elicited = true;
        } else {
            assert_eq!((msg["id"].as_u64(), related), (Some(id), Some(id)));
            assert_eq!(msg["result"], json!({"content":[]}));
            return elicited;
        }
    }
}

async fn next_message(events: &mut Events) -> (Value, Option<u64>) {
    // A guard against a hang, not a measure of speed: 50 sessions share a loaded machine.
    let event = tokio::time::timeout(Duration::from_secs(30), events.recv()).await.expect("no event in time");
    match event.expect("reporter channel closed") {
        (_, _, UpstreamEvent::Message { msg, related }) => (serde_json::from_slice(&msg.to_bytes()).unwrap(), related),
        (_, _, UpstreamEvent::Closed { reason }) => panic!("unexpected close: {reason}"),
        (_, _, other) => panic!("unexpected event: {other:?}"),
    }
}

async fn no_more_events(events: &mut Events) {
    if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        panic!("unexpected event {event:?}");
    }
}

fn outgoing(body: Value) -> Outgoing {
    let mut out = Outgoing::plain(Bytes::from(body.to_string()));
    out.method = body["method"].as_str().map(str::to_owned);
    out.request_id = body["id"].as_u64();
    out
}

fn call(id: u64, name: &str) -> Outgoing {
    outgoing(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":{}}}))
}

/// initialize + notifications/initialized, as a client would send them (without waiting).
async fn handshake(link: &UpstreamLink, events: &mut Events) {
    assert!(
        link.send(outgoing(json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}})))
            .is_ok()
    );
    assert!(link.send(outgoing(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))).is_ok());
    let (msg, related) = next_message(events).await;
    assert_eq!(msg["id"], 1);
    assert_eq!(msg["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(related, Some(1));
}

#[tokio::test]
async fn invalid_url_is_a_connect_error() {
    let (sink, _events) = mpsc::unbounded_channel();
    let err = connect("up", "not a url", &[], Reporter::new(0, 1, sink.clone())).await.unwrap_err();
    assert!(matches!(err, ConnectError::Http { .. }), "{err}");
    let err = connect("up", "ftp://host/x", &[], Reporter::new(0, 1, sink.clone())).await.unwrap_err();
    assert!(err.to_string().contains("http or https"), "{err}");
    let bad = [("Bad Header".to_owned(), "v".to_owned())];
    assert!(connect("up", "http://127.0.0.1:1/mcp", &bad, Reporter::new(0, 1, sink)).await.is_err());
}

#[tokio::test]
async fn json_response_with_session_and_negotiated_version() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!(msg, json!({"jsonrpc":"2.0","id":2,"result":{"tools":[]}}));
    assert_eq!(related, Some(2));

    let seen = up.seen();
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    let methods: Vec<&str> = posts.iter().map(|s| s.rpc_method()).collect();
    assert_eq!(methods, ["initialize", "notifications/initialized", "tools/list"]);
    for post in &posts {
        assert_eq!(post.header("content-type"), Some("application/json"));
        assert_eq!(post.header("accept"), Some("application/json, text/event-stream"));
        assert_eq!(post.header("x-api-key"), Some("k1"));
        assert_eq!(post.header("mcp-method"), None, "legacy requests carry no 2026 headers");
    }
    assert_eq!(posts[0].header("mcp-session-id"), None);
    assert_eq!(posts[0].header("mcp-protocol-version"), None);
    for post in &posts[1..] {
        assert_eq!(post.header("mcp-session-id"), Some("s1"));
        assert_eq!(post.header("mcp-protocol-version"), Some("2025-06-18"));
    }
    // The standalone GET stream was tried once the handshake was done; 405 is not retried.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let gets: Vec<Seen> = up.seen().into_iter().filter(|s| s.method == "GET").collect();
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].header("accept"), Some("text/event-stream"));
    assert_eq!(gets[0].header("mcp-session-id"), Some("s1"));
    no_more_events(&mut events).await;
}

#[tokio::test]
async fn sse_response_reports_progress_then_result_for_the_request() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    assert!(link.send(call(3, "progress")).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!(msg["method"], "notifications/progress");
    assert_eq!(related, Some(3));
    let (msg, related) = next_message(&mut events).await;
    assert_eq!(msg, json!({"jsonrpc":"2.0","id":3,"result":{"content":[]}}));
    assert_eq!(related, Some(3));
    no_more_events(&mut events).await;
}

#[tokio::test]
async fn requests_are_in_flight_concurrently() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    assert!(link.send(call(10, "slow")).is_ok());
    assert!(link.send(call(11, "fast")).is_ok());
    let (first, _) = next_message(&mut events).await;
    let (second, _) = next_message(&mut events).await;
    assert_eq!(first["id"], 11, "a slow response must not hold back a later request");
    assert_eq!(second["id"], 10);
}

#[tokio::test]
async fn expired_session_is_reinitialized_and_the_request_retried() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    // One round trip, so the handshake's last POST has been answered.
    assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":4,"method":"tools/list"}))).is_ok());
    assert_eq!(next_message(&mut events).await.0["id"], 4);
    up.live.lock().unwrap().clear();
    assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":5,"method":"tools/list"}))).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!(msg, json!({"jsonrpc":"2.0","id":5,"result":{"tools":[]}}), "replayed initialize is swallowed");
    assert_eq!(related, Some(5));

    let inits = up.posts("initialize");
    assert_eq!(inits.len(), 2);
    assert_eq!(inits[1].body["id"], json!(u64::MAX));
    assert_eq!(inits[1].body["params"], inits[0].body["params"], "the initialize is replayed as sent");
    assert_eq!(inits[1].header("mcp-session-id"), None);
    let initialized = up.posts("notifications/initialized");
    assert_eq!(initialized.len(), 2);
    assert_eq!(initialized[1].header("mcp-session-id"), Some("s2"));
    let lists = up.posts("tools/list");
    assert_eq!(lists.len(), 3);
    assert_eq!(lists[1].header("mcp-session-id"), Some("s1"));
    assert_eq!(lists[1].body["id"], 5);
    assert_eq!(lists[2].header("mcp-session-id"), Some("s2"));
    assert_eq!(lists[2].header("mcp-protocol-version"), Some("2025-06-18"));
    assert_eq!(lists[2].body, lists[1].body, "the failed request is retried as it was");
    no_more_events(&mut events).await;

    // Later requests use the new session directly.
    assert!(link.send(call(6, "x")).is_ok());
    assert_eq!(next_message(&mut events).await.0["result"]["echo"], "x");
    assert_eq!(up.posts("initialize").len(), 2);
}

#[tokio::test]
async fn http_500_with_plain_body_becomes_an_error_for_the_request() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    assert!(link.send(call(7, "fail")).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!(msg["id"], 7);
    assert_eq!(related, Some(7));
    assert_eq!(msg["error"]["code"], -32000);
    let text = msg["error"]["message"].as_str().unwrap();
    assert!(text.starts_with("upstream up: HTTP 500"), "{text}");
    assert!(text.contains("internal kaboom"), "{text}");
    // The transport goes on.
    assert!(link.send(call(8, "y")).is_ok());
    assert_eq!(next_message(&mut events).await.0["result"]["echo"], "y");
}

#[tokio::test]
async fn json_rpc_error_body_is_recorrelated_to_the_request() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    assert!(link.send(call(9, "jsonerr")).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!(msg, json!({"jsonrpc":"2.0","id":9,"error":{"code":-32600,"message":"Bad Request: nope"}}));
    assert_eq!(related, Some(9));
}

#[tokio::test]
async fn unreachable_server_gives_an_error_per_request() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    drop(listener);
    let (sink, mut events) = mpsc::unbounded_channel();
    let link = connect("up", &url, &[], Reporter::new(0, 1, sink)).await.unwrap();
    assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}))).is_ok());
    assert!(link.send(outgoing(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}))).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!((msg["id"].as_u64(), related), (Some(3), Some(3)));
    let text = msg["error"]["message"].as_str().unwrap();
    assert!(text.starts_with(&format!("upstream up: cannot reach {url}")), "{text}");
    no_more_events(&mut events).await;
}

#[tokio::test]
async fn modern_requests_carry_the_2026_headers() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    let mut out = call(20, "Hello, 世界");
    out.protocol_version = Some("2026-07-28".to_owned());
    out.name = Some("Hello, 世界".to_owned());
    out.param_headers = vec![("Region".to_owned(), "us-west1".to_owned())];
    assert!(link.send(out).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!((msg["id"].as_u64(), related), (Some(20), Some(20)));
    let mut out = call(21, "get_weather");
    out.protocol_version = Some("2026-07-28".to_owned());
    out.name = Some("get_weather".to_owned());
    assert!(link.send(out).is_ok());
    next_message(&mut events).await;

    let calls = up.posts("tools/call");
    assert_eq!(calls[0].header("mcp-protocol-version"), Some("2026-07-28"));
    assert_eq!(calls[0].header("mcp-method"), Some("tools/call"));
    assert_eq!(calls[0].header("mcp-name"), Some("=?base64?SGVsbG8sIOS4lueVjA==?="));
    assert_eq!(calls[0].header("mcp-param-region"), Some("us-west1"));
    assert_eq!(calls[0].header("mcp-session-id"), None);
    assert_eq!(calls[1].header("mcp-name"), Some("get_weather"));
    assert_eq!(calls[1].header("mcp-param-region"), None);
}

#[tokio::test]
async fn broken_stream_is_resumed_with_last_event_id() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    assert!(link.send(call(40, "cut")).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!((msg["method"].as_str(), related), (Some("notifications/progress"), Some(40)));
    let (msg, related) = next_message(&mut events).await;
    assert_eq!(msg, json!({"jsonrpc":"2.0","id":40,"result":{"resumed":true}}));
    assert_eq!(related, Some(40));
    let resumes: Vec<Seen> = up.seen().into_iter().filter(|s| s.header("last-event-id").is_some()).collect();
    assert_eq!(resumes.len(), 1);
    assert_eq!(resumes[0].method, "GET");
    assert_eq!(resumes[0].header("last-event-id"), Some("e2"));
    assert_eq!(resumes[0].header("mcp-session-id"), Some("s1"));
}

#[tokio::test]
async fn broken_stream_without_session_fails_the_request() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    let mut out = call(41, "cut");
    out.protocol_version = Some("2026-07-28".to_owned());
    assert!(link.send(out).is_ok());
    let (msg, _) = next_message(&mut events).await;
    assert_eq!(msg["method"], "notifications/progress");
    let (msg, related) = next_message(&mut events).await;
    assert_eq!(related, Some(41));
    assert_eq!(
        msg,
        json!({"jsonrpc":"2.0","id":41,"error":{"code":-32000,
            "message":"upstream up: response stream ended before the response"}})
    );
}

#[tokio::test]
async fn standalone_get_stream_messages_are_unrelated() {
    let up = Arc::new(Upstream::default());
    up.get_stream.store(true, Ordering::SeqCst);
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    let mut tx = None;
    for _ in 0..100 {
        tx = up.get_tx.lock().unwrap().clone();
        if tx.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tx = tx.expect("the GET stream was not opened");
    tx.send(sse_data(Some("g1"), &json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}))).unwrap();
    let (msg, related) = next_message(&mut events).await;
    assert_eq!(msg["method"], "notifications/tools/list_changed");
    assert_eq!(related, None);
    // Dropping it makes the client reconnect with Last-Event-ID.
    *up.get_tx.lock().unwrap() = None;
    up.streams.lock().unwrap().clear();
    drop(tx);
    for _ in 0..100 {
        if up.seen().iter().any(|s| s.method == "GET" && s.header("last-event-id") == Some("g1")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up.seen().iter().any(|s| s.method == "GET" && s.header("last-event-id") == Some("g1")));
    drop(link);
}

#[tokio::test]
async fn cancelling_a_modern_request_closes_its_stream() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    let mut out = call(30, "slow");
    out.protocol_version = Some("2026-07-28".to_owned());
    assert!(link.send(out).is_ok());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        link.send(outgoing(
            json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":30,"reason":"user"}})
        ))
        .is_ok()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    no_more_events(&mut events).await;
    let posts: Vec<Seen> = up.seen().into_iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 1, "the cancel is the stream's close, not a POST");
    // A legacy cancel is POSTed as usual.
    assert!(
        link.send(outgoing(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":99}})))
            .is_ok()
    );
    for _ in 0..50 {
        if !up.posts("notifications/cancelled").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.posts("notifications/cancelled").len(), 1);
}

#[tokio::test]
async fn a_new_initialize_starts_a_new_session_and_ends_the_old_one() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    handshake(&link, &mut events).await;
    assert!(link.send(call(2, "z")).is_ok());
    assert_eq!(next_message(&mut events).await.0["id"], 2);
    let seen = up.seen();
    let deletes: Vec<&Seen> = seen.iter().filter(|s| s.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].header("mcp-session-id"), Some("s1"));
    assert_eq!(deletes[0].header("mcp-protocol-version"), Some("2025-06-18"));
    let inits = up.posts("initialize");
    assert_eq!(inits[1].header("mcp-session-id"), None, "a new handshake carries no old session");
    assert_eq!(inits[1].body["id"], 1, "a client's own initialize is sent as it is");
    assert_eq!(up.posts("tools/call")[0].header("mcp-session-id"), Some("s2"));
}

#[tokio::test]
async fn dropping_the_link_deletes_the_session() {
    let up = Arc::new(Upstream::default());
    let (link, mut events) = start(&up).await;
    handshake(&link, &mut events).await;
    drop(link);
    for _ in 0..100 {
        if up.seen().iter().any(|s| s.method == "DELETE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deletes: Vec<Seen> = up.seen().into_iter().filter(|s| s.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].header("mcp-session-id"), Some("s1"));
    assert_eq!(deletes[0].header("x-api-key"), Some("k1"));
    // The transport does not report a close of its own.
    no_more_events(&mut events).await;
}

/// A server that sends `elicitation/create` on its standalone GET stream as soon as it gets
/// a `tools/call`, and whose GET is slow to answer: requests wait for that stream, so over
/// many sessions not one such request is lost.
#[tokio::test]
async fn requests_wait_for_a_slow_get_stream_so_no_server_request_is_lost() {
    const SESSIONS: u64 = 50;
    let up = slow_get_upstream(Duration::from_millis(300));
    let url = serve(Arc::clone(&up)).await;
    let sessions = (0..SESSIONS).map(|_| {
        let url = url.clone();
        async move {
            let (link, mut events) = start_at(&url, NO_CAP).await;
            handshake(&link, &mut events).await;
            let elicited = elicit(&link, &mut events, 2).await;
            (link, events, elicited)
        }
    });
    let sessions = futures::future::join_all(sessions).await;
    let lost = up.lost.load(Ordering::SeqCst);
    assert_eq!(lost, 0, "{lost} of {SESSIONS} server requests found no GET stream open");
    assert_eq!(up.delivered.load(Ordering::SeqCst), SESSIONS);
    for (_link, mut events, elicited) in sessions {
        if !elicited {
            let (msg, related) = next_message(&mut events).await;
            assert_eq!((msg["method"].as_str(), related), (Some("elicitation/create"), None));
        }
    }
}

/// After an expired session is re-initialized, the retried request and any request sent
/// meanwhile wait for the new session's GET stream.
#[tokio::test]
async fn after_reinitializing_requests_wait_for_the_new_get_stream() {
    let up = slow_get_upstream(Duration::ZERO);
    let url = serve(Arc::clone(&up)).await;
    let (link, mut events) = start_at(&url, NO_CAP).await;
    handshake(&link, &mut events).await;
    if !elicit(&link, &mut events, 2).await {
        assert_eq!(next_message(&mut events).await.0["method"], "elicitation/create");
    }

    *up.get_delay.lock().unwrap() = Duration::from_millis(300);
    up.live.lock().unwrap().clear();
    assert!(link.send(call(3, "elicit")).is_ok());
    // The replayed handshake is done and the new GET stream is on its way: a request sent now
    // must wait for it too.
    until_seen(&up, "the new session's GET", |s| s.method == "GET" && s.header("mcp-session-id") == Some("s2")).await;
    assert!(link.send(call(4, "elicit")).is_ok());
    let mut results = Vec::new();
    let mut elicitations = 0;
    while results.len() < 2 || elicitations < 2 {
        let (msg, related) = next_message(&mut events).await;
        if msg["method"] == "elicitation/create" {
            assert_eq!(related, None);
            elicitations += 1;
        } else {
            assert_eq!(msg["id"].as_u64(), related);
            results.push(related);
            if results.len() == 2 {
                let lost = up.lost.load(Ordering::SeqCst);
                assert_eq!(lost, 0, "{lost} server requests found no GET stream open");
            }
        }
    }
    assert_eq!(up.delivered.load(Ordering::SeqCst), 3);
    let elicits: Vec<Seen> = up.posts("tools/call");
    assert_eq!(elicits.last().unwrap().header("mcp-session-id"), Some("s2"));
}

/// A GET refused slowly (405, other 4xx, 5xx, or not an event stream) releases the requests
/// as soon as its answer arrives, with no cap to fall back on.
#[tokio::test]
async fn a_refused_get_stream_releases_requests_at_its_answer() {
    for status in [None, Some(404), Some(403), Some(500), Some(200)] {
        let up = slow_get_upstream(Duration::from_millis(100));
        up.get_stream.store(false, Ordering::SeqCst);
        *up.get_status.lock().unwrap() = status;
        let url = serve(Arc::clone(&up)).await;
        let (link, mut events) = start_at(&url, NO_CAP).await;
        handshake(&link, &mut events).await;
        assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))).is_ok());
        let (msg, related) = next_message(&mut events).await;
        assert_eq!((msg["id"].as_u64(), related), (Some(2), Some(2)), "GET answered {status:?}");
        let answered = up.position("GET answered").expect("the GET was answered");
        assert!(answered < up.position("tools/list").unwrap(), "GET answered {status:?}");
    }
}

/// A GET that never answers holds requests back only for the cap.
#[tokio::test]
async fn a_get_stream_that_never_answers_holds_requests_for_the_cap_only() {
    let cap = Duration::from_millis(300);
    let up = slow_get_upstream(NO_CAP);
    let url = serve(Arc::clone(&up)).await;
    let (link, mut events) = start_at(&url, cap).await;
    let started = tokio::time::Instant::now();
    handshake(&link, &mut events).await;
    assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!((msg["id"].as_u64(), related), (Some(2), Some(2)));
    assert!(started.elapsed() >= cap, "released before the cap");
    assert!(up.position("GET").unwrap() < up.position("tools/list").unwrap());
    assert_eq!(up.position("GET answered"), None);
}

/// 2026-07-28 requests are stateless: no handshake, no GET stream, nothing to wait for.
#[tokio::test]
async fn stateless_requests_wait_for_no_get_stream() {
    let up = slow_get_upstream(NO_CAP);
    let url = serve(Arc::clone(&up)).await;
    let (link, mut events) = start_at(&url, NO_CAP).await;
    let mut out = call(20, "x");
    out.protocol_version = Some("2026-07-28".to_owned());
    assert!(link.send(out).is_ok());
    let (msg, related) = next_message(&mut events).await;
    assert_eq!((msg["id"].as_u64(), related), (Some(20), Some(20)));
    assert_eq!(up.position("GET"), None);
}

/// A session whose GET stream is open and has carried the event `g1`, with `missed` (returned
/// last) stored for a resumption from it; the stream's sender is returned, to be broken.
async fn get_stream_past_g1() -> (Arc<Upstream>, UpstreamLink, Events, mpsc::UnboundedSender<String>, Value) {
    let up = slow_get_upstream(Duration::ZERO);
    let missed = json!({"jsonrpc":"2.0","method":"notifications/resources/list_changed"});
    up.replay.lock().unwrap().insert("g1".to_owned(), vec![sse_data(Some("g2"), &missed)]);
    let url = serve(Arc::clone(&up)).await;
    let (link, mut events) = start_at(&url, NO_CAP).await;
    handshake(&link, &mut events).await;
    // Released only once the GET stream is open, so it is there when this is answered.
    assert!(link.send(outgoing(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))).is_ok());
    assert_eq!(next_message(&mut events).await.1, Some(2));
    let tx = up.get_tx.lock().unwrap().take().expect("the GET stream is open");
    up.streams.lock().unwrap().clear();
    tx.send(sse_data(Some("g1"), &json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}))).unwrap();
    let (msg, related) = next_message(&mut events).await;
    assert_eq!((msg["method"].as_str(), related), (Some("notifications/tools/list_changed"), None));
    (up, link, events, tx, missed)
}

/// A GET stream that breaks is reopened with the id of the last event it carried, and what
/// the server sent meanwhile arrives.
#[tokio::test]
async fn a_broken_get_stream_is_resumed_with_last_event_id() {
    let (up, _link, mut events, tx, missed) = get_stream_past_g1().await;
    drop(tx);
    let (msg, related) = next_message(&mut events).await;
    assert_eq!((msg, related), (missed, None));
    let gets: Vec<Seen> = up.seen().into_iter().filter(|s| s.method == "GET").collect();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[0].header("last-event-id"), None);
    assert_eq!(gets[1].header("last-event-id"), Some("g1"));
    assert_eq!(gets[1].header("mcp-session-id"), Some("s1"));
}

/// A server that has not noticed yet that the broken stream is gone answers the reconnection
/// 409 (only one GET stream per session): it is tried again, still resuming.
#[tokio::test]
async fn a_get_stream_reconnection_refused_as_a_conflict_is_retried() {
    let (up, _link, mut events, tx, missed) = get_stream_past_g1().await;
    *up.get_status.lock().unwrap() = Some(409);
    drop(tx);
    until_seen(&up, "the reconnection", |s| s.method == "GET answered" && s.header("last-event-id") == Some("g1"))
        .await;
    *up.get_status.lock().unwrap() = None;
    let (msg, related) = next_message(&mut events).await;
    assert_eq!((msg, related), (missed, None));
}
