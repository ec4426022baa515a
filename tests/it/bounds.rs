//! Bounded resources: upstream timeouts, over-long answers, the session cap and reaping, the
//! connection cap and header timeout of both listeners, and a 413 that closes its connection.

use std::sync::Arc;
use std::time::Duration;

use mcp_gate::downstream::http;
use mcp_gate::http::listener::ListenerLimits;
use mcp_gate::upstream::settings::{ServerConfig, UpstreamTransport};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::common::*;

fn raw_bin() -> String {
    fixture_bin().with_file_name("raw-upstream").display().to_string()
}

/// The raw fixture upstream with `args`, `request_timeout` and `initialize_timeout` in seconds.
fn raw_server(args: &[&str], request_timeout: u64, initialize_timeout: u64) -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        name: "raw".into(),
        transport: UpstreamTransport::Stdio {
            command: raw_bin(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            cwd: None,
        },
        prefix: true,
        request_timeout: Duration::from_secs(request_timeout),
        initialize_timeout: Duration::from_secs(initialize_timeout),
    })
}

/// Bounds a wait well under the suite's limit.
async fn soon<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A client speaking raw lines to an in-process stdio proxy.
struct Lines {
    lines: tokio::io::Lines<BufReader<ReadHalf<DuplexStream>>>,
    write: WriteHalf<DuplexStream>,
}

impl Lines {
    async fn new(server: Arc<ServerConfig>) -> Lines {
        let (read, write) = tokio::io::split(stdio_proxy(options(vec![server])).await);
        Lines { lines: BufReader::new(read).lines(), write }
    }

    async fn send(&mut self, msg: Value) {
        self.write.write_all(format!("{msg}\n").as_bytes()).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        let line = soon("a line from the proxy", self.lines.next_line()).await.unwrap().expect("stdout open");
        serde_json::from_str(&line).unwrap()
    }

    async fn initialize(&mut self) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bounds", "version": "1"}}}))
            .await;
        let reply = self.recv().await;
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        reply
    }
}

/// An answer over 16 MiB (its id last, as the TypeScript SDK writes it) becomes an error
/// response to its request, which names the limit; the session goes on.
#[tokio::test]
async fn an_answer_over_the_size_limit_is_an_error_for_its_request() {
    let mut c = Lines::new(raw_server(&[], 300, 30)).await;
    assert!(c.initialize().await["result"].is_object());
    c.send(json!({"jsonrpc": "2.0", "id": "big-1", "method": "raw/big"})).await;
    let reply = c.recv().await;
    assert_eq!(reply["id"], "big-1", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("`raw`") && message.contains("16777216-byte limit"), "{message}");
    c.send(json!({"jsonrpc": "2.0", "id": 2, "method": "raw/echo"})).await;
    assert!(c.recv().await["result"]["received"].is_string());
}

/// A request the upstream never answers gets an error naming the server and the timeout.
#[tokio::test]
async fn a_request_never_answered_times_out_naming_the_server() {
    let mut c = Lines::new(raw_server(&[], 1, 30)).await;
    assert!(c.initialize().await["result"].is_object());
    c.send(json!({"jsonrpc": "2.0", "id": 5, "method": "raw/hold"})).await;
    let reply = c.recv().await;
    assert_eq!(reply["id"], 5);
    assert_eq!(reply["error"]["code"], -32000);
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("upstream `raw` did not answer `raw/hold` within 1 s (`request_timeout_secs`)"),
        "{message}"
    );
    // The upstream is told to stop working on it.
    let seen = c.recv().await;
    assert_eq!(seen["method"], "notifications/raw/seen", "{seen}");
    assert!(seen["params"]["line"].as_str().unwrap().contains("notifications/cancelled"));
}

/// stdio mode: an upstream that never answers `initialize` no longer hangs the client.
#[tokio::test]
async fn an_upstream_that_never_initializes_is_an_error_in_stdio() {
    let mut c = Lines::new(raw_server(&["--no-initialize"], 300, 1)).await;
    let reply = c.initialize().await;
    assert_eq!(reply["id"], 0);
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("`initialize`") && message.contains("initialize_timeout_secs"), "{message}");
}

/// Processes whose command line carries `tag`.
fn processes_tagged(tag: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == tag.as_bytes()))
        })
        .count()
}

async fn until_tagged(tag: &str, n: usize) {
    soon(&format!("{n} processes tagged {tag}"), async {
        while processes_tagged(tag) != n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

fn tag(what: &str) -> String {
    format!("--tag={what}-{}-{}", std::process::id(), mcp_gate::random::hex(4).expect("randomness"))
}

/// An in-process `serve` of one upstream with these limits; its `/mcp` URL.
async fn serve_with(server: Arc<ServerConfig>, limits: http::HttpLimits) -> String {
    let state = http::HttpState::new(http::HttpOptions {
        all: options(vec![server]),
        single: Default::default(),
        token: None,
        agents: Default::default(),
        allowed_hosts: Vec::new(),
        allowed_origins: Vec::new(),
        limits,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(listener, state, std::future::pending()));
    format!("http://{addr}/mcp")
}

fn initialize_body(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bounds", "version": "1"}}})
    .to_string()
}

async fn post(http: &reqwest::Client, url: &str, session: Option<&str>, body: String) -> reqwest::Response {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(s) = session {
        req = req.header("mcp-session-id", s).header("mcp-protocol-version", "2025-11-25");
    }
    soon("a response", req.send()).await.unwrap()
}

/// `serve`: an upstream that never answers `initialize` gets the client an error, and leaves no
/// child behind per attempt (the session is not kept).
#[tokio::test]
async fn serve_keeps_no_child_of_a_failed_initialize() {
    let tag = tag("noinit");
    let url = serve_with(raw_server(&["--no-initialize", &tag], 300, 1), Default::default()).await;
    let http = reqwest::Client::new();
    for attempt in 1..=3 {
        let resp = post(&http, &url, None, initialize_body(attempt)).await;
        assert!(resp.headers().get("mcp-session-id").is_none(), "no session for a failed initialize");
        let body = soon("the body", resp.text()).await.unwrap();
        assert!(body.contains("initialize_timeout_secs"), "{body}");
    }
    until_tagged(&tag, 0).await;
}

/// Past `max_sessions`, a new session is refused with 503 and a JSON-RPC error naming the limit;
/// closing one makes room.
#[tokio::test]
async fn sessions_past_the_cap_are_refused_with_503() {
    let tag = tag("flood");
    let limits = http::HttpLimits { max_sessions: 2, ..Default::default() };
    let url = serve_with(raw_server(&[&tag], 300, 30), limits).await;
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for id in 1..=2 {
        let resp = post(&http, &url, None, initialize_body(id)).await;
        assert_eq!(resp.status(), 200);
        sessions.push(resp.headers()["mcp-session-id"].to_str().unwrap().to_owned());
    }
    for id in 3..=6 {
        let resp = post(&http, &url, None, initialize_body(id)).await;
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().get("retry-after").is_some());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["id"], id, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("the limit is 2 (`[listen] max_sessions`)"), "{message}");
    }
    until_tagged(&tag, 2).await;
    let deleted = http.delete(&url).header("mcp-session-id", &sessions[0]).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let resp = post(&http, &url, None, initialize_body(7)).await;
    assert_eq!(resp.status(), 200, "a closed session makes room");
}

/// Idle sessions, the shared session of sessionless requests included, are closed with their
/// children.
#[tokio::test]
async fn idle_sessions_and_the_shared_session_are_reaped_with_their_children() {
    let tag = tag("idle");
    let limits = http::HttpLimits { session_idle: Duration::from_secs(1), ..Default::default() };
    let url = serve_with(raw_server(&[&tag], 300, 30), limits).await;
    let http = reqwest::Client::new();
    let resp = post(&http, &url, None, initialize_body(1)).await;
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    resp.bytes().await.unwrap();
    // A `server/discover` before any initialize goes to the shared session.
    let discover = json!({"jsonrpc": "2.0", "id": 2, "method": "server/discover"}).to_string();
    post(&http, &url, None, discover).await.bytes().await.unwrap();
    assert_eq!(processes_tagged(&tag), 2, "one child per session");
    until_tagged(&tag, 0).await;
    let ping = json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}).to_string();
    assert_eq!(post(&http, &url, Some(&session), ping).await.status(), 404);
}

/// A body over the limit is refused with 413 and `Connection: close`: the unread rest of it
/// cannot be taken for the next request.
#[tokio::test]
async fn a_413_closes_its_connection() {
    let url = serve_with(raw_server(&[], 300, 30), Default::default()).await;
    let http = reqwest::Client::new();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024 * 1024));
    let resp = post(&http, &url, None, big).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    let resp = post(&http, &url, None, initialize_body(1)).await;
    assert_eq!(resp.status(), 200, "the next request goes through");
}

/// A client that does not read its response stream while the upstream floods it: the stream is
/// closed, ending with an error for the request, instead of queueing without end.
#[tokio::test]
async fn a_stream_read_too_slowly_is_closed_with_an_error() {
    let url = serve_with(raw_server(&[], 300, 30), Default::default()).await;
    let http = reqwest::Client::new();
    let resp = post(&http, &url, None, initialize_body(1)).await;
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    resp.bytes().await.unwrap();
    let flood = json!({"jsonrpc": "2.0", "id": "f-1", "method": "raw/flood"}).to_string();
    let mut resp = post(&http, &url, Some(&session), flood).await;
    // Not read while the upstream writes 20 MiB of notifications.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut last = Vec::new();
    while let Some(chunk) = soon("the stream", resp.chunk()).await.unwrap() {
        last.extend_from_slice(&chunk);
        if last.len() > 8192 {
            last.drain(..last.len() - 8192);
        }
    }
    let text = String::from_utf8_lossy(&last);
    let final_event = text.trim_end().rsplit("data: ").next().unwrap();
    let reply: Value = serde_json::from_str(final_event).unwrap();
    assert_eq!(reply["id"], "f-1", "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("too slowly"), "{reply}");
}

/// Waits until the server closes `conn` (EOF or reset).
async fn closed_by_server(mut conn: TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Opens `n` connections to `addr`, half of them silent, half with half a request header.
async fn half_open(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for i in 0..n {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            conn.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty").await.unwrap();
        }
        conns.push(conn);
    }
    conns
}

/// 300 half-open connections to each listener (silent, or half a header): both still answer at
/// once, and the half-open connections are closed after the header timeout.
#[tokio::test]
async fn half_open_connections_neither_lock_out_clients_nor_stay_open() {
    let listener = ListenerLimits { max_connections: 32, header_timeout: Duration::from_secs(2) };
    let url = serve_with(raw_server(&[], 300, 30), http::HttpLimits { listener, ..Default::default() }).await;
    let mcp_addr = url.trim_start_matches("http://").trim_end_matches("/mcp").to_owned();

    let config = mcp_gate::config::Config::from_toml("", "empty.toml").unwrap();
    let store = mcp_gate::store::Store::open(mcp_gate::store::Location::Memory).await.unwrap();
    let approvals = mcp_gate::approval::ApprovalService::new(store, config.policy.clone(), Default::default());
    let mut web =
        mcp_gate::server::web::WebState::new(approvals, "t".repeat(24).into(), Default::default(), Vec::new());
    Arc::get_mut(&mut web).unwrap().limits = listener;
    let web_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = web_listener.local_addr().unwrap().to_string();
    tokio::spawn(mcp_gate::server::web::serve(web_listener, web, std::future::pending()));

    let mcp_flood = half_open(&mcp_addr, 300).await;
    let web_flood = half_open(&web_addr, 300).await;
    let http = reqwest::Client::new();
    let answered = tokio::time::timeout(Duration::from_secs(1), post(&http, &url, None, initialize_body(1)))
        .await
        .expect("the MCP endpoint answers while flooded");
    assert_eq!(answered.status(), 200);
    let api = tokio::time::timeout(
        Duration::from_secs(1),
        http.get(format!("http://{web_addr}/api/v1/approvals")).bearer_auth("t".repeat(24)).send(),
    )
    .await
    .expect("the approval API answers while flooded")
    .unwrap();
    assert_eq!(api.status(), 200);
    // Those still open are closed once their header time is up.
    let last_mcp = mcp_flood.into_iter().rev().take(20);
    let last_web = web_flood.into_iter().rev().take(20);
    soon("half-open connections closed", futures::future::join_all(last_mcp.chain(last_web).map(closed_by_server)))
        .await;
}

/// An upstream that stops reading its input: messages wait in a bounded queue, and past it a
/// request is answered with an error at once instead of being queued without end.
#[tokio::test]
async fn an_upstream_that_stops_reading_refuses_requests_past_its_queue() {
    let server = Arc::new(ServerConfig {
        name: "deaf".into(),
        transport: UpstreamTransport::Stdio {
            command: "sleep".into(),
            args: vec!["60".into()],
            env: Vec::new(),
            cwd: None,
        },
        prefix: true,
        request_timeout: Duration::from_secs(300),
        initialize_timeout: Duration::from_secs(300),
    });
    let mut c = Lines::new(server).await;
    let pad = "p".repeat(4096);
    let n = mcp_gate::upstream::LINK_QUEUE + 200;
    for id in 0..n {
        c.send(json!({"jsonrpc": "2.0", "id": id, "method": "vendor/echo", "params": {"pad": pad}})).await;
    }
    let reply = c.recv().await;
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("upstream `deaf`: the upstream is not keeping up"), "{reply}");
    assert!(reply["id"].as_u64().unwrap() >= mcp_gate::upstream::LINK_QUEUE as u64, "{reply}");
}

/// A Streamable HTTP upstream whose answers to `big/json` and `big/sse` are over 16 MiB, as a
/// JSON body and as an SSE event.
async fn oversized_http_upstream() -> String {
    use axum::http::header::CONTENT_TYPE;
    async fn mcp(body: String) -> axum::response::Response {
        use axum::response::IntoResponse;
        let msg: Value = serde_json::from_str(&body).unwrap();
        let id = msg["id"].clone();
        let big = json!({"jsonrpc": "2.0", "id": id, "result": {"text": "z".repeat(17 * 1024 * 1024)}});
        match msg["method"].as_str().unwrap_or_default() {
            "initialize" => axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "big", "version": "1"}}}))
            .into_response(),
            "big/json" => ([(CONTENT_TYPE, "application/json")], big.to_string()).into_response(),
            "big/sse" => {
                ([(CONTENT_TYPE, "text/event-stream")], format!("event: message\ndata: {big}\n\n")).into_response()
            }
            _ if id.is_null() => axum::http::StatusCode::ACCEPTED.into_response(),
            _ => axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {}})).into_response(),
        }
    }
    let app = axum::Router::new().route("/mcp", axum::routing::post(mcp));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/mcp")
}

/// Over HTTP too, an answer over the limit (a JSON body or an SSE event) is an error response
/// to its request, naming the limit.
#[tokio::test]
async fn an_http_answer_over_the_size_limit_is_an_error_for_its_request() {
    let url = oversized_http_upstream().await;
    let mut c = Lines::new(http_server("big", &url)).await;
    assert!(c.initialize().await["result"].is_object());
    for (id, method) in [(1, "big/json"), (2, "big/sse")] {
        c.send(json!({"jsonrpc": "2.0", "id": id, "method": method})).await;
        let reply = c.recv().await;
        assert_eq!(reply["id"], id, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("16777216"), "{method}: {message}");
    }
}

/// stdio: a client that does not read its stdout is not read from either, past the backlog:
/// its writes wait (backpressure), and every answer arrives once it reads again.
#[tokio::test]
async fn a_client_that_does_not_read_its_stdout_is_slowed_down() {
    let (client_end, proxy_end) = tokio::io::duplex(64 * 1024);
    let (read, write) = tokio::io::split(proxy_end);
    let opts = options(vec![raw_server(&[], 300, 30)]);
    let tuning = mcp_gate::downstream::stdio::Tuning { backlog: 256 * 1024, ..Default::default() };
    tokio::spawn(async move {
        let _ = mcp_gate::downstream::stdio::serve_with(opts, read, write, std::future::pending(), tuning).await;
    });
    let (read, mut write) = tokio::io::split(client_end);
    let mut lines = BufReader::new(read).lines();
    // 20 MiB of notifications the client does not read yet.
    let flood = json!({"jsonrpc": "2.0", "id": "flood", "method": "raw/flood"});
    write.write_all(format!("{flood}\n").as_bytes()).await.unwrap();
    soon("the first notification", lines.next_line()).await.unwrap().expect("a line");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = 2000;
    let writer = tokio::spawn(async move {
        let pad = "p".repeat(4096);
        for id in 0..n {
            let line = json!({"jsonrpc": "2.0", "id": id, "method": "raw/echo", "params": {"pad": pad}});
            write.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        }
        write
    });
    // 8 MiB of requests while the answers wait: the writer is held back.
    let held = tokio::time::timeout(Duration::from_secs(2), async {
        while !writer.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(held.is_err(), "the proxy read every request although its answers were not read");
    // Every request is answered (some with an error: the upstream, busy with the flood, is not
    // reading them while its queue is full).
    let mut answers = 0;
    while answers < n + 1 {
        let line = soon("an answer", lines.next_line()).await.unwrap().expect("a line");
        answers += usize::from(line.contains(r#""result""#) || line.contains(r#""error""#));
    }
    soon("the writer", writer).await.unwrap();
}

/// With `[[agents]]`, one agent opening sessions until `max_sessions` does not lock the others
/// out: an agent that holds no session can still open one (2025-11-25 session or the shared
/// session of its sessionless requests), while the agent holding the others is refused with 503.
#[tokio::test]
async fn one_agent_cannot_take_every_session_place() {
    let (alice, bob) = ("alice-token-0123456789abcdef", "bob-token-0123456789abcdef");
    let mut agents = mcp_gate::identity::Credentials::default();
    agents.add(alice, mcp_gate::identity::Principal::named("alice"));
    agents.add(bob, mcp_gate::identity::Principal::named("bob"));
    let tag = tag("hog");
    let state = http::HttpState::new(http::HttpOptions {
        all: options(vec![raw_server(&[&tag], 300, 30)]),
        single: Default::default(),
        token: None,
        agents,
        allowed_hosts: Vec::new(),
        allowed_origins: Vec::new(),
        limits: http::HttpLimits { max_sessions: 3, ..Default::default() },
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, state, std::future::pending()));
    let http = reqwest::Client::new();
    let init = |token: &'static str, id: u64| {
        http.post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(initialize_body(id))
            .send()
    };
    let mut statuses = Vec::new();
    for id in 1..=4 {
        statuses.push(soon("alice's initialize", init(alice, id)).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 503, 503], "alice may not take the place kept for bob");
    let resp = soon("bob's initialize", init(bob, 5)).await.unwrap();
    assert_eq!(resp.status(), 200, "bob is not locked out by alice's sessions");
    let resp = soon("alice again", init(alice, 6)).await.unwrap();
    assert_eq!(resp.status(), 503, "the cap still holds");
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("the limit is 3 (`[listen] max_sessions`)"), "{message}");
    until_tagged(&tag, 3).await;
}

/// A client that opens GET stream after GET stream on its session does not hold a connection per
/// stream: only the newest stream receives messages, so it replaces the older ones, whose
/// connections become idle again. With the connection cap at 4, eight GET streams leave room for
/// another client.
#[tokio::test]
async fn get_streams_of_a_session_do_not_take_every_connection() {
    let listener = ListenerLimits { max_connections: 4, header_timeout: Duration::from_secs(10) };
    let url = serve_with(raw_server(&[], 300, 30), http::HttpLimits { listener, ..Default::default() }).await;
    let addr = url.trim_start_matches("http://").trim_end_matches("/mcp").to_owned();
    let http = reqwest::Client::new();
    let resp = post(&http, &url, None, initialize_body(1)).await;
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    resp.bytes().await.unwrap();
    drop(http);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        let get = format!(
            "GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\n\r\n"
        );
        conn.write_all(get.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        soon("the stream's status line", conn.read_exact(&mut head)).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        streams.push(conn);
    }
    let other = reqwest::Client::new();
    let resp = soon(
        "another client's initialize",
        other
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(initialize_body(2))
            .send(),
    )
    .await;
    assert_eq!(resp.expect("another client is served").status(), 200);
}

/// Requests left in flight take a connection each, and busy connections are never evicted: one
/// session may keep at most half of `max_connections` requests in flight (held calls in wait mode,
/// a slow tool), so it cannot close the door on every other client; the rest are refused at once
/// with 503 and `Retry-After`.
#[tokio::test]
async fn requests_in_flight_of_one_session_do_not_take_every_connection() {
    let listener = ListenerLimits { max_connections: 4, header_timeout: Duration::from_secs(10) };
    let url = serve_with(raw_server(&[], 300, 30), http::HttpLimits { listener, ..Default::default() }).await;
    let http = reqwest::Client::new();
    let resp = post(&http, &url, None, initialize_body(1)).await;
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    resp.bytes().await.unwrap();
    let mut held = Vec::new();
    for id in 10..14 {
        let hold = json!({"jsonrpc": "2.0", "id": id, "method": "raw/hold"}).to_string();
        held.push(post(&http, &url, Some(&session), hold).await);
    }
    let statuses: Vec<u16> = held.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 200, 503, 503], "two in flight, the rest refused");
    assert_eq!(held[2].headers()["retry-after"], "1");
    let other = reqwest::Client::new();
    let resp = soon("another client's initialize", post_raw(&other, &url, initialize_body(2))).await;
    assert_eq!(resp.expect("another client is served").status(), 200);
}

/// A body sent slowly keeps its connection busy: it has `header_timeout` to arrive, then the
/// request is refused (408) and the connection closed.
#[tokio::test]
async fn a_body_sent_slowly_is_refused_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = ListenerLimits { max_connections: 4, header_timeout: Duration::from_secs(1) };
    let url = serve_with(raw_server(&[], 300, 30), http::HttpLimits { listener, ..Default::default() }).await;
    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{{\"jsonrpc\""
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection is closed within the timeout");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("header_timeout_secs"), "{answer}");
}

async fn post_raw(http: &reqwest::Client, url: &str, body: String) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body)
        .send()
        .await
}
