//! Webhooks in-process: signatures checked by a local receiver, Slack and Teams payloads,
//! retries, and a dead receiver that must not slow a held call down.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use mcp_gate::approval::{ApprovalService, ApprovalSettings, ChangeKind};
use mcp_gate::config::Config;
use mcp_gate::identity::Principal;
use mcp_gate::server::notify::sign::{REPLAY_WINDOW_SECS, VerifyError, verify};
use mcp_gate::server::notify::{DEFAULT_EVENTS, Format, Retry, Webhook};
use mcp_gate::store::{Location, Store};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::common::{hold_call, within};

const SECRET: &[u8] = b"whsec-test-signing-key";
const BASE: &str = "http://127.0.0.1:8377";

/// One request the receiver got.
struct Received {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The receiver's check of this delivery's signature, now, under the test secret.
    fn verify(&self) -> Result<(), VerifyError> {
        let (signature, delivery) = (self.header("x-mcp-gate-signature"), self.header("x-mcp-gate-delivery"));
        verify(SECRET, signature, delivery, &self.body, unix_now(), REPLAY_WINDOW_SECS)
    }
}

/// Answers for the receiver to give, in order: status and an optional `Retry-After`; 200 after.
type Script = Arc<Mutex<VecDeque<(u16, Option<&'static str>)>>>;

/// A local webhook receiver on 127.0.0.1.
struct Receiver {
    url: String,
    got: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start(script: &[(u16, Option<&'static str>)]) -> Receiver {
        let (tx, got) = mpsc::unbounded_channel();
        let script: Script = Arc::new(Mutex::new(script.iter().copied().collect()));
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state((tx, script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, got }
    }

    async fn next(&mut self) -> Received {
        within("a webhook delivery", self.got.recv()).await.expect("receiver running")
    }
}

async fn receive(
    State((tx, script)): State<(mpsc::UnboundedSender<Received>, Script)>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let _ = tx.send(Received { headers, body, at: Instant::now() });
    let (status, retry_after) = script.lock().unwrap().pop_front().unwrap_or((200, None));
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(after) = retry_after {
        response.headers_mut().insert("retry-after", after.parse().unwrap());
    }
    response
}

fn hook(url: &str, format: Format, secret: Option<&[u8]>) -> Webhook {
    Webhook {
        name: format!("test-{}", format.as_str()),
        url: url.to_owned(),
        format,
        secret: secret.map(|s| s.to_vec().into()),
        events: DEFAULT_EVENTS.into_iter().collect(),
        timeout: Duration::from_secs(10),
    }
}

fn quick() -> Retry {
    Retry {
        delays: [50, 100, 200, 400, 800].map(Duration::from_millis).to_vec(),
        max_retry_after: Duration::from_secs(5),
    }
}

/// An approval service on an in-memory store that redacts `/password` (shared with the desktop tests).
pub(super) async fn approvals() -> Arc<ApprovalService> {
    let config = Config::from_toml("", "empty.toml").unwrap();
    let store = Store::open(Location::Memory).await.unwrap();
    let settings = ApprovalSettings {
        wait: Duration::ZERO,
        public_url: BASE.into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        redact: vec!["/password".into()],
        ..ApprovalSettings::default()
    };
    ApprovalService::new(store, config.policy.clone(), settings)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_held_call_sends_a_signed_requested_delivery() {
    let mut receiver = Receiver::start(&[]).await;
    let approvals = approvals().await;
    mcp_gate::server::notify::spawn_with(&[hook(&receiver.url, Format::Generic, Some(SECRET))], &approvals, quick());
    let id =
        hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/etc/hosts", "password": "hunter2"})).await;

    let got = receiver.next().await;
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("x-mcp-gate-event"), "requested");
    let delivery = got.header("x-mcp-gate-delivery");
    assert!(delivery.len() == 32 && delivery.chars().all(|c| c.is_ascii_hexdigit()), "{delivery}");
    let signature = got.header("x-mcp-gate-signature");
    let re = regex::Regex::new(r"^t=(\d+),v1=[0-9a-f]{64}$").unwrap();
    let t: u64 = re.captures(signature).expect(signature)[1].parse().unwrap();
    assert!(unix_now().abs_diff(t) < 60, "the timestamp is now: {t}");

    // The receiver's check: it verifies with the secret, and fails with another secret, a
    // tampered body or a stale timestamp.
    assert_eq!(verify(SECRET, signature, delivery, &got.body, unix_now(), REPLAY_WINDOW_SECS), Ok(()));
    assert_eq!(
        verify(b"another-secret", signature, delivery, &got.body, unix_now(), REPLAY_WINDOW_SECS),
        Err(VerifyError::Mismatch)
    );
    let tampered = String::from_utf8(got.body.to_vec()).unwrap().replace("/etc/hosts", "/etc/passwd");
    assert_eq!(
        verify(SECRET, signature, delivery, tampered.as_bytes(), unix_now(), REPLAY_WINDOW_SECS),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(verify(SECRET, signature, delivery, &got.body, t + 301, REPLAY_WINDOW_SECS), Err(VerifyError::Stale));

    let body = got.json();
    assert_eq!(body["kind"], "requested");
    assert_eq!(body["actor"], "agent-x");
    assert!(body["at"].as_i64().unwrap() > 0);
    assert_eq!(body["summary"], format!("Approval needed: agent-x wants to call files:delete_file ({id})"));
    assert!(!String::from_utf8_lossy(&got.body).contains("hunter2"), "redacted like the audit log");

    // The approval is what the API shows, redacted and without the policy trace.
    let stored = approvals.store.get_approval(&id).await.unwrap().unwrap();
    let state =
        mcp_gate::server::web::WebState::new(approvals.clone(), "t".repeat(20).into(), Default::default(), Vec::new());
    let mut api = mcp_gate::server::web::api::view(&state, &stored);
    api.as_object_mut().unwrap().remove("trace");
    api["arguments"] = json!({"path": "/etc/hosts", "password": "[redacted]"});
    api["rule_reason"] = json!("[redacted]");
    assert_eq!(body["approval"], api);
    assert_eq!(body["approval"]["url"], format!("{BASE}/approvals/{id}"));

    // A decision is delivered next, under a new delivery id.
    approvals.decide(&id, &Principal::named("operator"), false, None, Some("not today".into())).await.unwrap();
    let got = receiver.next().await;
    assert_eq!(got.header("x-mcp-gate-event"), "denied");
    assert_ne!(got.header("x-mcp-gate-delivery"), delivery);
    assert_eq!(got.verify(), Ok(()));
    let body = got.json();
    assert_eq!(body["actor"], "operator");
    assert_eq!(body["approval"]["deny_reason"], "not today");
}

/// A receiver that redirects: the signed delivery is not followed to the other host (nor
/// retried), and one that answers with an endless body is not read, so neither holds up the
/// deliveries after it.
#[tokio::test]
async fn redirects_are_not_followed_and_answer_bodies_are_not_read() {
    let mut elsewhere = Receiver::start(&[]).await;
    let (tx, mut hits) = mpsc::unbounded_channel::<&'static str>();
    let target = elsewhere.url.clone();
    let app = axum::Router::new()
        .route(
            "/redirect",
            axum::routing::post({
                let tx = tx.clone();
                move || async move {
                    let _ = tx.send("redirect");
                    (StatusCode::TEMPORARY_REDIRECT, [("location", target)]).into_response()
                }
            }),
        )
        .route(
            "/endless",
            axum::routing::post(move || async move {
                let _ = tx.send("endless");
                let chunk = Bytes::from(vec![b'x'; 1 << 16]);
                let stream = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
                axum::body::Body::from_stream(stream).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let approvals = approvals().await;
    let hooks = [
        hook(&format!("{base}/redirect"), Format::Generic, Some(SECRET)),
        hook(&format!("{base}/endless"), Format::Slack, None),
    ];
    mcp_gate::server::notify::spawn_with(&hooks, &approvals, quick());
    let id = hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/x"})).await;
    approvals.decide(&id, &Principal::named("operator"), true, None, None).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(within("webhook attempts", hits.recv()).await.unwrap());
    }
    got.sort();
    assert_eq!(got, ["endless", "endless", "redirect", "redirect"], "each change once to each hook, in time");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hits.try_recv().is_err(), "a redirect is not retried");
    assert!(elsewhere.got.try_recv().is_err(), "the redirect was not followed");
}

/// README: "To stop replays within those 5 minutes, remember the `X-Mcp-Gate-Delivery` ids you
/// have processed". That only works if the id is part of what is signed: someone who captured a
/// delivery (a logging proxy, a shared inbox) resends its body and signature under a fresh id
/// header, and a receiver following the README accepts it a second time.
#[tokio::test]
async fn a_replay_under_a_fresh_delivery_id_is_detected() {
    let mut receiver = Receiver::start(&[]).await;
    let approvals = approvals().await;
    mcp_gate::server::notify::spawn_with(&[hook(&receiver.url, Format::Generic, Some(SECRET))], &approvals, quick());
    hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/tmp/x"})).await;
    let got = receiver.next().await;

    // The receiver of the README: a valid signature and an id not seen before.
    let mut seen = std::collections::HashSet::new();
    let mut accepts = |id: &str, signature: &str, body: &[u8]| {
        verify(SECRET, signature, id, body, unix_now(), REPLAY_WINDOW_SECS).is_ok() && seen.insert(id.to_owned())
    };
    let signature = got.header("x-mcp-gate-signature");
    assert!(accepts(got.header("x-mcp-gate-delivery"), signature, &got.body), "the genuine delivery");
    assert!(!accepts(got.header("x-mcp-gate-delivery"), signature, &got.body), "a plain replay");
    let forged_id = "0123456789abcdef0123456789abcdef";
    assert!(
        !accepts(forged_id, signature, &got.body),
        "the same signed body under a new delivery id is accepted again: the id is not signed"
    );
}

/// Ids, times and ports replaced by placeholders.
fn stable(v: &Value, id: &str) -> Value {
    let text = v.to_string().replace(id, "apr_ID");
    let text = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").unwrap().replace_all(&text, "TIME");
    let text = regex::Regex::new(r"<!date\^\d+\^").unwrap().replace_all(&text, "<!date^SECS^");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn slack_and_teams_payloads() {
    let mut slack = Receiver::start(&[]).await;
    let mut teams = Receiver::start(&[]).await;
    let approvals = approvals().await;
    let hooks = [hook(&slack.url, Format::Slack, None), hook(&teams.url, Format::Teams, None)];
    mcp_gate::server::notify::spawn_with(&hooks, &approvals, quick());
    let id =
        hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/etc/hosts", "password": "hunter2"})).await;

    let got = slack.next().await;
    assert_eq!(got.header("x-mcp-gate-event"), "requested");
    assert_eq!(got.header("x-mcp-gate-signature"), "", "no secret, no signature");
    let text = String::from_utf8_lossy(&got.body).into_owned();
    assert!(!text.contains("hunter2") && !text.contains("/etc/hosts"), "no arguments in chat messages");
    insta::assert_json_snapshot!("slack_requested", stable(&got.json(), &id));

    let got = teams.next().await;
    assert!(!String::from_utf8_lossy(&got.body).contains("hunter2"));
    insta::assert_json_snapshot!("teams_requested", stable(&got.json(), &id));

    approvals.decide(&id, &Principal::named("ada"), true, Some("fine".into()), None).await.unwrap();
    insta::assert_json_snapshot!("slack_approved", stable(&slack.next().await.json(), &id));
    insta::assert_json_snapshot!("teams_approved", stable(&teams.next().await.json(), &id));
}

#[tokio::test]
async fn ntfy_payloads_open_the_request_page() {
    let mut receiver = Receiver::start(&[]).await;
    let approvals = approvals().await;
    // The topic's URL; messages are published to the server's root (here `/hook`) as JSON.
    let topic_url = format!("{}/mcp-gate-approvals", receiver.url);
    mcp_gate::server::notify::spawn_with(&[hook(&topic_url, Format::Ntfy, None)], &approvals, quick());
    let id =
        hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/etc/hosts", "password": "hunter2"})).await;

    let got = receiver.next().await;
    assert_eq!(got.header("content-type"), "application/json");
    let text = String::from_utf8_lossy(&got.body).into_owned();
    assert!(!text.contains("hunter2") && !text.contains("/etc/hosts"), "no arguments in push messages");
    let v = got.json();
    assert_eq!(v["topic"], "mcp-gate-approvals");
    assert_eq!(v["actions"][0]["action"], "view");
    assert_eq!(v["actions"][0]["url"], format!("{BASE}/approvals/{id}"));
    insta::assert_json_snapshot!("ntfy_requested", stable(&v, &id));

    approvals.decide(&id, &Principal::named("ada"), true, Some("fine".into()), None).await.unwrap();
    insta::assert_json_snapshot!("ntfy_approved", stable(&receiver.next().await.json(), &id));
}

#[tokio::test]
async fn server_errors_are_retried_until_delivered_once() {
    let mut receiver = Receiver::start(&[(500, None), (503, None)]).await;
    let approvals = approvals().await;
    mcp_gate::server::notify::spawn_with(&[hook(&receiver.url, Format::Generic, Some(SECRET))], &approvals, quick());
    let id = hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/x"})).await;

    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    for got in [&first, &second, &third] {
        assert_eq!(got.header("x-mcp-gate-event"), "requested");
        assert_eq!(got.header("x-mcp-gate-delivery"), first.header("x-mcp-gate-delivery"), "one delivery id");
        assert_eq!(got.body, first.body, "the same body");
        assert_eq!(got.verify(), Ok(()));
    }
    assert!(second.at - first.at >= Duration::from_millis(50), "backoff before the first retry");
    assert!(third.at - second.at >= Duration::from_millis(100), "and longer before the second");

    // Delivered on the third attempt: the next request the receiver sees is the next change.
    approvals.decide(&id, &Principal::named("operator"), true, None, None).await.unwrap();
    let next = receiver.next().await;
    assert_eq!(next.header("x-mcp-gate-event"), "approved");
    assert_ne!(next.header("x-mcp-gate-delivery"), first.header("x-mcp-gate-delivery"));
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let mut receiver = Receiver::start(&[(400, None)]).await;
    let approvals = approvals().await;
    mcp_gate::server::notify::spawn_with(&[hook(&receiver.url, Format::Generic, Some(SECRET))], &approvals, quick());
    let id = hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/x"})).await;
    assert_eq!(receiver.next().await.header("x-mcp-gate-event"), "requested");
    approvals.decide(&id, &Principal::named("operator"), true, None, None).await.unwrap();
    assert_eq!(receiver.next().await.header("x-mcp-gate-event"), "approved", "the 400 was not retried");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.got.try_recv().is_err(), "nothing else was sent");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let mut receiver = Receiver::start(&[(429, Some("1"))]).await;
    let approvals = approvals().await;
    mcp_gate::server::notify::spawn_with(&[hook(&receiver.url, Format::Generic, Some(SECRET))], &approvals, quick());
    hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/x"})).await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    assert_eq!(second.header("x-mcp-gate-delivery"), first.header("x-mcp-gate-delivery"));
    assert!(second.at - first.at >= Duration::from_millis(950), "waited {:?}", second.at - first.at);
}

/// Only the events a webhook lists are sent to it.
#[tokio::test]
async fn events_filter_what_is_sent() {
    let mut receiver = Receiver::start(&[]).await;
    let approvals = approvals().await;
    let mut only_denied = hook(&receiver.url, Format::Generic, Some(SECRET));
    only_denied.events = [ChangeKind::Denied].into_iter().collect();
    mcp_gate::server::notify::spawn_with(&[only_denied], &approvals, quick());
    let first = hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/a"})).await;
    let second = hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/b"})).await;
    approvals.decide(&first, &Principal::named("operator"), true, None, None).await.unwrap();
    approvals.decide(&second, &Principal::named("operator"), false, None, Some("no".into())).await.unwrap();
    let got = receiver.next().await;
    assert_eq!(got.header("x-mcp-gate-event"), "denied");
    assert_eq!(got.json()["approval"]["id"], second);
}

/// A receiver that accepts connections and never answers, and one that is not there: held calls
/// answer at once all the same, long before the retries (1 + 2 + 4 + 8 + 16 s) would end.
#[tokio::test]
async fn a_dead_receiver_does_not_delay_held_calls() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);

    let approvals = approvals().await;
    let hooks = [hook(&silent_url, Format::Generic, Some(SECRET)), hook(&closed_url, Format::Slack, None)];
    mcp_gate::server::notify::spawn(&hooks, &approvals);
    let started = Instant::now();
    for i in 0..20 {
        let one = Instant::now();
        hold_call(&approvals, "delete_file", "agent-x", json!({"path": format!("/file-{i}")})).await;
        assert!(one.elapsed() < Duration::from_secs(1), "call {i} took {:?}", one.elapsed());
    }
    assert!(started.elapsed() < Duration::from_secs(5), "20 held calls took {:?}", started.elapsed());
}

/// The real binary reads `[[webhooks]]`, refuses an unset secret variable, and delivers a held
/// call's request, signed, with the approval server's URL.
#[tokio::test]
async fn the_binary_delivers_configured_webhooks() {
    use super::binary::{APPROVER_TOKEN, data_dir, gate_in, start_gated_with};

    let mut receiver = Receiver::start(&[]).await;
    let dir = data_dir("webhooks");
    let config = dir.join("hooks.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nname = \"audit-bot\"\nurl = \"{}\"\nsecret_env = \"MCP_GATE_IT_WEBHOOK_SECRET\"\n",
            receiver.url
        ),
    )
    .unwrap();

    let out = gate_in(&dir).args(["check-config", "--config"]).arg(&config).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hooks.toml")
            && stderr.contains("`webhooks[0].secret_env`")
            && stderr.contains("MCP_GATE_IT_WEBHOOK_SECRET is not set"),
        "{stderr}"
    );
    let out = gate_in(&dir)
        .args(["check-config", "--config"])
        .arg(&config)
        .env("MCP_GATE_IT_WEBHOOK_SECRET", "whsec-test-signing-key")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("webhook audit-bot: generic to 127.0.0.1, signed, on "), "{stderr}");

    let mut cmd = gate_in(&dir);
    cmd.arg("--config")
        .arg(&config)
        .env("MCP_GATE_IT_WEBHOOK_SECRET", "whsec-test-signing-key")
        .env("MCP_GATE_TOKEN", APPROVER_TOKEN);
    let mut gate = start_gated_with(cmd).await;
    let held = gate.call_with(2, "webhook").await;
    let id = held["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();

    let got = receiver.next().await;
    assert_eq!(got.header("x-mcp-gate-event"), "requested");
    assert_eq!(got.verify(), Ok(()));
    let body = got.json();
    assert_eq!(body["approval"]["id"], id);
    assert_eq!(body["approval"]["url"], format!("{}/approvals/{id}", gate.approvals));
    assert_eq!(body["approval"]["arguments"], json!({"why": "webhook"}));
    assert!(!String::from_utf8_lossy(&got.body).contains(APPROVER_TOKEN), "no token in a payload");
    gate.child.start_kill().unwrap();
}

/// The fenced blocks of README.md in `lang` that contain `needle`.
fn readme_blocks(lang: &str, needle: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let fence = format!("```{lang}\n");
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(start) = rest.find(&fence) {
        let after = &rest[start + fence.len()..];
        let end = after.find("```\n").expect("closed fence");
        if after[..end].contains(needle) {
            blocks.push(after[..end].to_owned());
        }
        rest = &after[end..];
    }
    blocks
}

/// The `[[webhooks]]` examples of the README and of proxy.toml (commented out there) validate.
#[tokio::test]
async fn the_webhook_examples_validate() {
    use super::binary::{data_dir, gate_in};

    let dir = data_dir("webhook-examples");
    let [readme] = &readme_blocks("toml", "[[webhooks]]")[..] else { panic!("one [[webhooks]] block in README") };
    let proxy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    let section = &proxy[proxy.find("# Webhooks:").expect("webhooks section in proxy.toml")..];
    let keys = ["[[webhooks]]", "name ", "url ", "format ", "secret_env ", "events ", "timeout_secs "];
    let uncommented: String = section
        .lines()
        .filter_map(|l| l.strip_prefix("# ").filter(|l| keys.iter().any(|k| l.starts_with(k))))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(uncommented.matches("[[webhooks]]").count(), 3, "{uncommented}");
    for (name, text, expect) in [
        ("readme.toml", readme.as_str(), "webhook ops-bot: generic to ops.example.com, signed"),
        ("proxy-webhooks.toml", uncommented.as_str(), "webhook webhooks[2]: teams to teams.example.com"),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let out = gate_in(&dir)
            .args(["check-config", "--config"])
            .arg(&file)
            .env("MCP_GATE_WEBHOOK_SECRET", "whsec-example")
            .env("SLACK_WEBHOOK_PATH", "T000/B000/XXXX")
            .env("TEAMS_WEBHOOK_URL", "https://teams.example.com/workflows/1")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
        assert!(!stderr.contains("T000/B000"), "URLs are not shown: {stderr}");
    }
}

/// The README's Python verification recipe is `scripts/verify_webhook.py`, and it accepts a real
/// signature and refuses a tampered body.
#[tokio::test]
async fn the_readme_verification_recipe_works() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_webhook.py");
    let source = std::fs::read_to_string(script).unwrap();
    let [recipe] = &readme_blocks("python", "def verify(")[..] else { panic!("one Python recipe in README") };
    assert!(source.contains(recipe.as_str()), "README's recipe and {script} differ");

    if std::process::Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 is not installed: the recipe was not run");
        return;
    }
    let body = br#"{"kind":"requested","summary":"x"}"#;
    let delivery = "0123456789abcdef0123456789abcdef";
    let signature = mcp_gate::server::notify::sign::signature_header(SECRET, unix_now(), delivery, body);
    let run = |body: &'static [u8], secret: &'static [u8]| {
        let signature = signature.clone();
        async move {
            let mut child = tokio::process::Command::new("python3")
                .arg(script)
                .env("SIGNATURE", signature)
                .env("DELIVERY", delivery)
                .env("MCP_GATE_WEBHOOK_SECRET", std::str::from_utf8(secret).unwrap())
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stdin, body).await.unwrap();
            drop(stdin);
            within("python3", child.wait()).await.unwrap().code()
        }
    };
    assert_eq!(run(body, SECRET).await, Some(0), "a genuine delivery verifies");
    assert_eq!(run(br#"{"kind":"approved","summary":"x"}"#, SECRET).await, Some(1), "a tampered body fails");
    assert_eq!(run(body, b"another-secret").await, Some(1), "another key fails");
}

/// Two processes sharing a database and an approval address: only the hub sends webhooks, and
/// it sends the follower's requests too, once each.
#[tokio::test]
async fn only_the_hub_sends_webhooks() {
    use super::binary::{APPROVER_TOKEN, data_dir, gate_in, start_gated_with};

    let mut receiver = Receiver::start(&[]).await;
    let dir = data_dir("webhooks-hub");
    let config = dir.join("hooks.toml");
    let hook = format!("[[webhooks]]\nurl = \"{}\"\nsecret_env = \"MCP_GATE_IT_WEBHOOK_SECRET\"\n", receiver.url);
    std::fs::write(&config, hook).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = |dir: &std::path::Path| {
        let mut cmd = gate_in(dir);
        cmd.arg("--config")
            .arg(&config)
            .env("MCP_GATE_APPROVALS_LISTEN", format!("127.0.0.1:{port}"))
            .env("MCP_GATE_IT_WEBHOOK_SECRET", "whsec-test-signing-key")
            .env("MCP_GATE_TOKEN", APPROVER_TOKEN);
        start_gated_with(cmd)
    };
    let mut hub = start(&dir).await;
    let mut follower = start(&dir).await;
    assert_eq!(follower.approvals, hub.approvals, "the second process follows the first");

    let id = held_id_of(&follower.call_with(2, "from the follower").await);
    let got = receiver.next().await;
    assert_eq!(got.header("x-mcp-gate-event"), "requested");
    assert_eq!(got.json()["approval"]["id"], id);
    let id_hub = held_id_of(&hub.call_with(2, "from the hub").await);
    let got = receiver.next().await;
    assert_eq!(got.header("x-mcp-gate-event"), "requested");
    assert_eq!(got.json()["approval"]["id"], id_hub);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.got.try_recv().is_err(), "one delivery per change");
    hub.child.start_kill().unwrap();
    follower.child.start_kill().unwrap();
}

fn held_id_of(result: &Value) -> String {
    let meta = &result["_meta"]["mcp-gate/approval"];
    assert_eq!(meta["status"], "pending", "{result}");
    meta["id"].as_str().unwrap().to_owned()
}
