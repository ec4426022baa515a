//! One hub per machine, with real processes: followers announce their requests to the hub and
//! are released by its decisions; when the hub dies a follower takes over; processes that cannot
//! share stay on their own.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_gate::wire::sse::EventReader;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::binary::{data_dir, gate_in};
use super::common::*;

const TOKEN: &str = "hub-test-approver-token-0123";

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A stdio mcp-gate in front of the fixture server, its held calls waiting up to 30 s.
struct Gate {
    child: tokio::process::Child,
    pid: u32,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// From `mcp-gate: approvals at URL/`.
    approvals: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

async fn start(dir: &std::path::Path, listen: &str, token: &str) -> Gate {
    start_with(dir, listen, token, None).await
}

/// [`start`] with a configuration file.
async fn start_with(dir: &std::path::Path, listen: &str, token: &str, config: Option<&std::path::Path>) -> Gate {
    let mut cmd = gate_in(dir);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let mut child = cmd
        .arg("--")
        .arg(fixture_bin())
        .arg("stdio")
        .env("MCP_GATE_TOKEN", token)
        .env("MCP_GATE_APPROVALS_LISTEN", listen)
        .env("MCP_GATE_WAIT_SECS", "30")
        .env("MCP_GATE_LOG", "info,mcp_gate::server::hub=debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (found, mut approvals) = mpsc::unbounded_channel();
    let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
    let seen = stderr.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            if let Some(url) = line.strip_prefix("mcp-gate: approvals at ") {
                let _ = found.send(url.trim().trim_end_matches('/').to_owned());
            }
            seen.lock().unwrap().push(line);
        }
    });
    let approvals = within("approvals line", approvals.recv()).await.expect("an approvals line");
    let (stdin, lines) = handshake(&mut child, "hub-test").await;
    Gate { child, pid, stdin, lines, approvals, stderr }
}

impl Gate {
    /// Sends a call that the zero-config policy holds; its reply comes when it is decided.
    async fn send_call(&mut self, id: u64, why: &str) {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "test_image_content", "arguments": {"why": why}}});
        self.stdin.write_all(format!("{call}\n").as_bytes()).await.unwrap();
    }

    async fn reply(&mut self, id: u64) -> Value {
        loop {
            let line = self.lines.next_line().await.unwrap().expect("a reply");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return v["result"].clone();
            }
        }
    }

    /// Waits until a line of its stderr contains `text`.
    async fn logged(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(line) = self.stderr.lock().unwrap().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no {text:?} in the log: {:#?}", self.stderr.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kill(&mut self) {
        self.child.start_kill().unwrap(); // SIGKILL
        self.child.wait().await.unwrap();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn api(base: &str, path: &str) -> Value {
    let resp = http().get(format!("{base}{path}")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.unwrap()
}

async fn approve(base: &str, id: &str) -> reqwest::Response {
    http()
        .post(format!("{base}/api/v1/approvals/{id}/approve"))
        .bearer_auth(TOKEN)
        .json(&json!({"notes": "hub test"}))
        .send()
        .await
        .unwrap()
}

/// `GET /api/v1/events` of an approval server: (event name, data) as they arrive.
async fn events(base: &str) -> mpsc::UnboundedReceiver<(String, Value)> {
    let resp = http().get(format!("{base}/api/v1/events")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = EventReader::new(Box::pin(resp.bytes_stream()));
        while let Some(Ok(event)) = reader.next_event().await {
            if let Ok(data) = serde_json::from_str(&event.data) {
                let _ = tx.send((event.event_type().to_owned(), data));
            }
        }
    });
    rx
}

/// The next event named `kind` whose request was made with `why`.
async fn next_event(rx: &mut mpsc::UnboundedReceiver<(String, Value)>, kind: &str, why: &str) -> Value {
    within(&format!("a {kind} event"), async {
        loop {
            let (name, data) = rx.recv().await.expect("the event stream is open");
            if name == kind && data["approval"]["arguments"]["why"] == why {
                return data;
            }
        }
    })
    .await
}

/// The pending request made with `why`, once it is stored.
async fn pending_id(base: &str, why: &str) -> String {
    within("a pending request", async {
        loop {
            let listed = api(base, "/api/v1/approvals?status=pending").await;
            let found = listed["approvals"].as_array().unwrap().iter().find(|a| a["arguments"]["why"] == why);
            if let Some(a) = found {
                return a["id"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn ran(result: &Value) {
    assert_eq!(result["content"][0]["type"], "image", "the approved call ran: {result}");
    assert!(result.get("isError").is_none_or(|e| e == false), "{result}");
}

/// B's held call shows on A's dashboard, API and event stream; an approval on A releases it
/// within milliseconds.
#[tokio::test]
async fn a_second_process_follows_the_hub() {
    let dir = data_dir("hub-two");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut a = start(&dir, &listen, TOKEN).await;
    let hub = format!("http://{listen}");
    assert_eq!(a.approvals, hub);
    a.logged("(hub)").await;
    let mut b = start(&dir, &listen, TOKEN).await;
    assert_eq!(b.approvals, hub, "a follower hands out the hub's address");
    b.logged(&format!("(via the hub, pid {})", a.pid)).await;
    let info = api(&hub, "/api/v1/hub").await;
    assert_eq!(info["service"], "mcp-gate");
    assert_eq!(info["pid"], a.pid);
    assert_eq!(info["database"], std::fs::canonicalize(dir.join("mcp-gate.db")).unwrap().display().to_string());

    let mut stream = events(&hub).await;
    b.send_call(2, "from b").await;
    let requested = next_event(&mut stream, "requested", "from b").await;
    let id = requested["approval"]["id"].as_str().unwrap().to_owned();
    assert_eq!(requested["approval"]["url"], format!("{hub}/approvals/{id}"));
    assert_eq!(pending_id(&hub, "from b").await, id, "the hub's API lists the follower's request");

    let clock = Instant::now();
    assert_eq!(approve(&hub, &id).await.status(), 200);
    let answered = clock.elapsed();
    let result = within("the follower's reply", b.reply(2)).await;
    let latency = clock.elapsed();
    ran(&result);
    eprintln!(
        "approve POST to the hub -> follower's call answered: {latency:?} (the POST itself: {answered:?}, \
         then {:?} to the follower's reply)",
        latency - answered
    );
    // The figure is printed, not judged (timing belongs to the benchmark). The bound only proves
    // the decision travelled over the event stream: the fallback re-read comes after 10 s.
    assert!(latency - answered < Duration::from_secs(5), "released in {latency:?} (POST {answered:?})");
    let executed = next_event(&mut stream, "executed", "from b").await;
    assert_eq!(executed["actor"], "upstream", "the follower announces what happens after the decision too");
    b.kill().await;
    a.kill().await;
}

/// Kill -9 the hub while two followers wait: exactly one takes over, the other follows it, a
/// decision made while the hub did not hear of it still releases its call, and nothing is lost.
#[tokio::test]
async fn a_follower_takes_over_when_the_hub_dies() {
    let dir = data_dir("hub-takeover");
    let listen = format!("127.0.0.1:{}", free_port());
    let hub = format!("http://{listen}");
    let mut a = start(&dir, &listen, TOKEN).await;
    a.logged("(hub)").await;
    let mut b = start(&dir, &listen, TOKEN).await;
    let mut c = start(&dir, &listen, TOKEN).await;
    b.logged("(via the hub").await;
    c.logged("(via the hub").await;
    b.send_call(2, "from b").await;
    c.send_call(2, "from c").await;
    let b_id = pending_id(&hub, "from b").await;
    let c_id = pending_id(&hub, "from c").await;

    // A process on a port of its own decides on c's request: nobody tells the hub or c.
    let mut d = start(&dir, "127.0.0.1:0", TOKEN).await;
    assert_ne!(d.approvals, hub);
    assert_eq!(approve(&d.approvals, &c_id).await.status(), 200);
    d.kill().await;
    // That c's call is not released before it hears of the decision (or re-reads its request
    // every 10 s) depends on time, which real processes cannot hold still: it is checked on
    // paused time in `gating::a_decision_made_elsewhere_releases_a_call_when_heard_or_reread`.

    a.kill().await;
    let killed = Instant::now();
    let new_hub = within("a new hub", async {
        loop {
            if let Ok(resp) = http().get(format!("{hub}/api/v1/hub")).bearer_auth(TOKEN).send().await
                && let Ok(info) = resp.json::<Value>().await
                && let Some(pid) = info["pid"].as_u64()
            {
                return pid as u32;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    eprintln!("hub killed -> new hub answering: {:?}", killed.elapsed());
    assert!(new_hub == b.pid || new_hub == c.pid, "the new hub {new_hub} is one of the followers");

    // The decision made elsewhere reaches c once it (re)connects or takes over.
    let result = within("c's reply", c.reply(2)).await;
    ran(&result);
    eprintln!("hub killed -> call decided elsewhere released: {:?}", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(5));

    // b's request, pending across the hand-over, is approved on the new hub.
    assert_eq!(approve(&hub, &b_id).await.status(), 200);
    ran(&within("b's reply", b.reply(2)).await);

    // The other follower now follows the new hub: its new request is announced there.
    let (winner, loser) = if new_hub == b.pid { (&mut b, &mut c) } else { (&mut c, &mut b) };
    winner.logged("took over the approval address").await;
    loser.logged(&format!("(via the hub, pid {})", winner.pid)).await;
    let mut stream = events(&hub).await;
    loser.send_call(3, "after the hand-over").await;
    let requested = next_event(&mut stream, "requested", "after the hand-over").await;
    let id = requested["approval"]["id"].as_str().unwrap().to_owned();
    assert_eq!(approve(&hub, &id).await.status(), 200);
    ran(&within("the loser's reply", loser.reply(3)).await);
    b.kill().await;
    c.kill().await;
}

/// A process whose database or token differs, or that finds something else on the port,
/// serves on a free port of its own and says why.
#[tokio::test]
async fn processes_that_cannot_share_serve_alone() {
    let dir = data_dir("hub-alone");
    let listen = format!("127.0.0.1:{}", free_port());
    let hub = format!("http://{listen}");
    let mut a = start(&dir, &listen, TOKEN).await;
    a.logged("(hub)").await;

    let mut other_db = start(&data_dir("hub-alone-other"), &listen, TOKEN).await;
    assert_ne!(other_db.approvals, hub);
    other_db.logged("using another database").await;
    other_db.logged("(this process only)").await;

    let mut other_token = start(&dir, &listen, "another-token-0123456789").await;
    assert_ne!(other_token.approvals, hub);
    other_token.logged("rejected our approver token").await;

    // Not an mcp-gate: a web server that answers every request with text.
    let foreign = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let foreign_addr = foreign.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = foreign.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                let _ =
                    socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello").await;
            });
        }
    });
    let mut beside = start(&dir, &foreign_addr, TOKEN).await;
    assert_ne!(beside.approvals, format!("http://{foreign_addr}"));
    beside.logged("not mcp-gate").await;

    // Each still works on its own: the request shows on its own server.
    other_db.send_call(2, "on its own").await;
    let id = pending_id(&other_db.approvals, "on its own").await;
    let listed = api(&hub, "/api/v1/approvals?status=pending").await;
    assert!(listed["approvals"].as_array().unwrap().iter().all(|a| a["id"] != id.as_str()));
    assert_eq!(approve(&other_db.approvals, &id).await.status(), 200);
    ran(&within("the reply", other_db.reply(2)).await);
    for g in [&mut a, &mut other_db, &mut other_token, &mut beside] {
        g.kill().await;
    }
}

/// A plain TCP listener that answers every request with a JSON body and records every byte it
/// receives.
pub(super) async fn squatter() -> (String, Arc<Mutex<Vec<u8>>>) {
    recording_listener(|_head| {
        let body = r#"{"server_nonce":"00","server_proof":"00","service":"mcp-gate","version":"0","pid":1,"database":null}"#;
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    })
    .await
}

/// A loopback listener that records every byte it receives and answers each connection's first
/// request, once its headers have come, with what `reply` makes of them.
async fn recording_listener(reply: impl Fn(&str) -> String + Send + Sync + 'static) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (log, reply) = (log.clone(), reply.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut seen = Vec::new();
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let answer = reply(&String::from_utf8_lossy(&seen));
                        let _ = socket.write_all(answer.as_bytes()).await;
                        break;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// A program squatting the approval address is never sent the approver token, by hub discovery
/// or by `mcp-gate approvals`: it cannot prove it knows the token, and mcp-gate says so.
#[tokio::test]
async fn a_squatter_on_the_approval_address_never_receives_the_token() {
    let (addr, received) = squatter().await;
    let mut gate = start(&data_dir("hub-squat"), &addr, TOKEN).await;
    assert_ne!(gate.approvals, format!("http://{addr}"), "serves on a free port instead");
    let warning = gate.logged("did not prove that it knows the token").await;
    assert!(warning.contains(&addr) && warning.contains("WARN"), "{warning}");
    gate.logged("(this process only)").await;

    let out = within(
        "approvals list",
        gate_in(&data_dir("hub-squat-cli"))
            .args(["approvals", "list"])
            .env("MCP_GATE_URL", format!("http://{addr}"))
            .env("MCP_GATE_TOKEN", TOKEN)
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr) && stderr.contains("did not prove that it knows the token"), "{stderr}");

    let seen = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    assert!(seen.contains("POST /api/v1/handshake"), "the squatter was asked to prove itself: {seen}");
    assert!(!seen.contains(TOKEN), "the token reached the squatter: {seen}");
    assert!(!seen.to_ascii_lowercase().contains("authorization"), "{seen}");
    gate.kill().await;
}

/// A plain TCP relay on a port of its own to the listener at `to`, as another program on the
/// approval address could run to the real server's free port: it records every byte it passes
/// from the client.
pub(super) async fn relay(to: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&to).await else { continue };
            let log = log.clone();
            tokio::spawn(async move {
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut buf = [0u8; 8192];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut from_client, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to_server.shutdown().await;
            });
        }
    });
    (addr, received)
}

/// A listener that redirects every request (`307`, method and body kept) to the same path at
/// `to`, and records every byte it receives.
async fn redirector(to: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    recording_listener(move |head| {
        let path = head.split(' ').nth(1).unwrap_or("/");
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{to}{path}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
    })
    .await
}

/// What a listener was sent, and that the token was not part of it.
fn never_sent_the_token(received: &Mutex<Vec<u8>>) -> String {
    let seen = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    assert!(seen.contains("POST /api/v1/handshake"), "the listener was asked to prove itself: {seen}");
    assert!(!seen.contains(TOKEN), "the token reached the listener: {seen}");
    assert!(!seen.to_ascii_lowercase().contains("authorization"), "{seen}");
    seen
}

/// Another program on the approval address that relays the bytes to the real approval server
/// (its free port, found in /proc/net/tcp) gets the real server's proof, but for the real
/// server's address: the client sees that it is not the address it connected to and sends the
/// token nowhere. Nor does a redirect to the real server pass. The real server still proves
/// itself.
#[tokio::test]
async fn a_relay_to_the_approval_server_is_never_sent_the_token() {
    use mcp_gate::cli::approvals::client::{ApiClient, ClientError, Target};
    use mcp_gate::server::handshake::{HandshakeError, verify_listener};
    let approvals = fail_fast_service("", "test.toml").await;
    let state = mcp_gate::server::web::WebState::new(approvals, TOKEN.into(), Default::default(), Vec::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let real = listener.local_addr().unwrap().to_string();
    tokio::spawn(mcp_gate::server::web::serve(listener, state, std::future::pending()));
    let client = http();

    let (relayed, received) = relay(real.clone()).await;
    let e = verify_listener(&client, &format!("http://{relayed}"), TOKEN).await.unwrap_err();
    assert!(matches!(e, HandshakeError::NoProof(_)), "{e}");
    let why = e.to_string();
    assert!(why.contains(&real) && why.contains(&relayed) && why.contains("a relay"), "{why}");
    assert!(why.contains("the token was not sent"), "{why}");
    let api = ApiClient::new(Target { base: format!("http://{relayed}"), token: TOKEN.into() }).unwrap();
    let e = api.list(&[]).await.unwrap_err();
    assert!(matches!(e, ClientError::Unverified { .. }), "{e}");
    never_sent_the_token(&received);

    let (redirecting, received) = redirector(real.clone()).await;
    let e = verify_listener(&client, &format!("http://{redirecting}"), TOKEN).await.unwrap_err();
    assert!(matches!(e, HandshakeError::NoProof(_)) && e.to_string().contains("redirected"), "{e}");
    let api = ApiClient::new(Target { base: format!("http://{redirecting}"), token: TOKEN.into() }).unwrap();
    assert!(matches!(api.list(&[]).await.unwrap_err(), ClientError::Unverified { .. }));
    never_sent_the_token(&received);

    verify_listener(&client, &format!("http://{real}"), TOKEN).await.expect("the real server proves itself");
    let api = ApiClient::new(Target { base: format!("http://{real}"), token: TOKEN.into() }).unwrap();
    assert!(api.list(&[]).await.unwrap()["approvals"].is_array());
}

/// A second process of the machine finds the approval address held by a relay to the hub: it
/// does not follow the hub through the relay (which would see its token on every request), but
/// says why and serves on a port of its own.
#[tokio::test]
async fn a_second_process_does_not_follow_the_hub_through_a_relay() {
    let dir = data_dir("hub-relay");
    let mut hub = start(&dir, &format!("127.0.0.1:{}", free_port()), TOKEN).await;
    hub.logged("(hub)").await;
    let real = hub.approvals.trim_start_matches("http://").to_owned();
    let (relayed, received) = relay(real.clone()).await;
    let mut second = start(&dir, &relayed, TOKEN).await;
    let warning = second.logged("a relay").await;
    assert!(warning.contains(&relayed) && warning.contains(&real) && warning.contains("WARN"), "{warning}");
    second.logged("(this process only)").await;
    assert_ne!(second.approvals, format!("http://{relayed}"));
    assert_ne!(second.approvals, hub.approvals);
    never_sent_the_token(&received);
    for g in [&mut hub, &mut second] {
        g.kill().await;
    }
}

/// The database deleted under the hub: a process that then creates a fresh file at the same path
/// refuses to follow the hub (another file), says why, and serves on a port of its own; the hub
/// refuses held calls rather than queueing them in the lost file.
#[tokio::test]
async fn a_replaced_database_is_not_followed() {
    let dir = data_dir("hub-replaced");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut hub = start(&dir, &listen, TOKEN).await;
    hub.logged("(hub)").await;
    let db = dir.join("mcp-gate.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let newcomer = start(&dir, &listen, TOKEN).await;
    let why = newcomer.logged("refusing to follow the hub").await;
    assert!(why.contains("not the same file") && why.contains("mcp-gate.db"), "{why}");
    assert_ne!(newcomer.approvals, format!("http://{listen}"), "serves on a port of its own");

    hub.send_call(2, "into a lost file").await;
    let refused = hub.reply(2).await;
    assert_eq!(refused["isError"], true, "{refused}");
    // The hub's own check may have seen the path empty (deleted) before the newcomer created its
    // file (replaced): either way it refuses, naming what happened.
    let text = refused.to_string();
    assert!(
        text.contains("was replaced while mcp-gate was using it")
            || text.contains("was deleted while mcp-gate was using it"),
        "{refused}"
    );
    hub.logged("while in use: refusing every request").await;
}

/// Processes sharing a hub need not share a configuration (two projects, one data directory). A
/// follower's request under a two-person workflow the hub does not define is not approved on the
/// hub by its shared token alone, and the follower's call does not run.
#[tokio::test]
async fn the_hub_does_not_decide_a_workflow_it_does_not_know() {
    let dir = data_dir("hub-workflows");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut a = start(&dir, &listen, TOKEN).await;
    a.logged("(hub)").await;
    let config = dir.join("two-person.toml");
    let sha = |t: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(t.as_bytes()));
    std::fs::write(
        &config,
        format!(
            "[[approvers]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\
             [[approvers]]\nname = \"bob\"\ntoken_sha256 = \"{}\"\n\
             [[rules]]\nname = \"images\"\ntool = \"test_image_content\"\naction = \"approve\"\nworkflow = \"two\"\n\
             [[workflows]]\nname = \"two\"\nrequired_approvals = 2\napprovers = [\"alice\", \"bob\"]\n",
            sha("alice-token-0123456789"),
            sha("bob-token-0123456789ab")
        ),
    )
    .unwrap();
    let mut b = start_with(&dir, &listen, TOKEN, Some(&config)).await;
    b.logged(&format!("(via the hub, pid {})", a.pid)).await;
    let hub = format!("http://{listen}");
    b.send_call(2, "two people").await;
    let id = pending_id(&hub, "two people").await;
    let request = api(&hub, &format!("/api/v1/approvals/{id}")).await;
    assert_eq!((request["workflow"].as_str(), request["required_approvals"].as_u64()), (Some("two"), Some(2)));

    let refused = approve(&hub, &id).await;
    assert_eq!(refused.status(), 403, "the hub's shared token alone approved a two-person request");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_an_approver", "{body}");
    let after = api(&hub, &format!("/api/v1/approvals/{id}")).await;
    assert_eq!((after["status"].as_str(), after["votes"].as_array().map(Vec::len)), (Some("pending"), Some(0)));
    b.kill().await;
    a.kill().await;
}
