//! Approval gating in-process: fail fast, wait, deny, join, grants, expiry, progress, and the
//! exact JSON the model sees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_gate::approval::{ApprovalGate, ApprovalSettings, Approvals};
use mcp_gate::config::Config;
use mcp_gate::gate::{Gate, ProgressSink, ToolCall, Verdict};
use mcp_gate::identity::Principal;
use mcp_gate::store::{ApprovalFilter, Location, Status, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::common::*;

/// Policy for these tests: `echo` is allowed, `test_error_handling` is denied, the rest needs
/// approval; `test_simple_text` uses a two-person workflow.
const POLICY: &str = r#"
[[rules]]
name = "echo is harmless"
tool = "echo"
action = "allow"

[[rules]]
name = "no errors"
tool = "test_error_handling"
action = "deny"
reason = "this tool only fails"

[[rules]]
name = "two people"
tool = "test_simple_text"
action = "approve"
workflow = "pair"
risk = "high"

[[workflows]]
name = "pair"
required_approvals = 2

[[workflows]]
name = "grant"
grant_secs = 60
"#;

async fn approvals(wait: Duration, extra: &str) -> Arc<Approvals> {
    let config = Config::from_toml(&format!("{POLICY}{extra}"), "gating.toml").expect("policy");
    let store = Store::open(Location::Memory).await.expect("store");
    let settings = ApprovalSettings {
        wait,
        public_url: "http://127.0.0.1:8377".into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        redact: vec!["/secret".into()],
        ..ApprovalSettings::default()
    };
    Approvals::new(store, config.policy.clone(), settings)
}

/// A raw-line client of an in-process stdio proxy in front of the fixture.
struct Line {
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    next: u64,
}

impl Line {
    async fn new(approvals: &Arc<Approvals>) -> Line {
        Line::with_capabilities(approvals, json!({})).await
    }

    async fn with_capabilities(approvals: &Arc<Approvals>, capabilities: Value) -> Line {
        let gate: Arc<dyn Gate> = Arc::new(ApprovalGate { approvals: approvals.clone() });
        let stream = stdio_proxy(options_with_gate(vec![stdio_server("fx")], gate)).await;
        let (read, write) = tokio::io::split(stream);
        let mut l = Line { lines: BufReader::new(read).lines(), write, next: 100 };
        l.send(json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":capabilities,"clientInfo":{"name":"gating-test","version":"1"}}})).await;
        l.reply(1).await;
        l.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;
        l
    }

    async fn send(&mut self, v: Value) {
        self.write.write_all(format!("{v}\n").as_bytes()).await.unwrap();
    }

    async fn reply(&mut self, id: u64) -> Value {
        self.reply_and_requests(id).await.0
    }

    /// The reply to `id`, and the requests the proxy sent the client before it.
    async fn reply_and_requests(&mut self, id: u64) -> (Value, Vec<Value>) {
        let mut requests = Vec::new();
        loop {
            let line = within("reply", self.lines.next_line()).await.unwrap().expect("open");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id && v.get("method").is_none() {
                return (v, requests);
            }
            if v.get("method").is_some() && v.get("id").is_some() {
                requests.push(v);
            }
        }
    }

    async fn call(&mut self, tool: &str, arguments: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}}))
            .await;
        self.reply(id).await["result"].clone()
    }
}

fn approval_meta(result: &Value) -> (String, String) {
    let meta = &result["_meta"]["mcp-gate/approval"];
    (meta["id"].as_str().unwrap().to_owned(), meta["status"].as_str().unwrap().to_owned())
}

/// Replaces the parts that change from run to run so the snapshot is stable.
fn stable(mut v: Value, id: &str) -> Value {
    let text = serde_json::to_string(&v).unwrap().replace(id, "apr_ID");
    v = serde_json::from_str(&text).unwrap();
    if let Some(t) = v.pointer_mut("/content/0/text") {
        let s = t.as_str().unwrap().to_owned();
        let cut = s.find("expires at ").map(|i| format!("{}expires at TIME.", &s[..i])).unwrap_or(s);
        *t = Value::String(cut);
    }
    v
}

#[tokio::test]
async fn fail_fast_then_approve_then_retry_runs_once() {
    let approvals = approvals(Duration::ZERO, "").await;
    let mut c = Line::new(&approvals).await;

    // Allowed by a rule: runs at once.
    let r = c.call("echo", json!({"message": "hi"})).await;
    assert!(r["content"][0]["text"].as_str().unwrap().contains("hi"));

    // Needs approval: an isError result with the URL, never a JSON-RPC error.
    let held = c.call("test_image_content", json!({"secret": "s3cret", "n": 1})).await;
    let (id, status) = approval_meta(&held);
    assert_eq!(status, "pending");
    insta::assert_json_snapshot!("pending_reply", stable(held.clone(), &id));

    // An identical retry joins the same request (argument order does not matter).
    let again = c.call("test_image_content", json!({"n": 1, "secret": "s3cret"})).await;
    assert_eq!(approval_meta(&again).0, id);
    let pending = approvals
        .store
        .list_approvals(ApprovalFilter { status: Some(Status::Pending), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);

    approvals.decide(&id, &Principal::named("alice"), true, Some("fine".into()), None).await.unwrap();
    let ran = c.call("test_image_content", json!({"secret": "s3cret", "n": 1})).await;
    assert_eq!(ran["content"][0]["type"], "image", "the approved call ran: {ran}");

    // The approval was single use: the next identical call is held again, as a new request.
    let held_again = c.call("test_image_content", json!({"secret": "s3cret", "n": 1})).await;
    let (id2, status2) = approval_meta(&held_again);
    assert_eq!(status2, "pending");
    assert_ne!(id2, id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done = approvals.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!(done.status, Status::Executed);
    let history: Vec<Status> = approvals.store.transitions(&id).await.unwrap().iter().map(|t| t.to).collect();
    assert_eq!(history, [Status::Pending, Status::Approved, Status::Executed]);

    // The audit has every decision, with the secret argument redacted and the chain intact.
    let rows = mcp_gate::store::audit::tail(&approvals.store, 50).await.unwrap();
    let events: Vec<String> =
        rows.iter().map(|r| serde_json::to_value(r).unwrap()["event"].as_str().unwrap().to_owned()).collect();
    for e in ["allowed", "requested", "approved", "executed"] {
        assert!(events.iter().any(|x| x == e), "audit has {e}: {events:?}");
    }
    let dump = serde_json::to_string(&rows).unwrap();
    assert!(!dump.contains("s3cret") && dump.contains("[redacted]"), "{dump}");
    assert!(mcp_gate::store::audit::verify(&approvals.store).await.unwrap().first_bad.is_none());
}

#[tokio::test]
async fn waiting_call_runs_when_approved_mid_wait() {
    let approvals = approvals(Duration::from_secs(30), "").await;
    let mut c = Line::new(&approvals).await;
    let a = approvals.clone();
    tokio::spawn(async move {
        for _ in 0..100 {
            let pending = a
                .store
                .list_approvals(ApprovalFilter { status: Some(Status::Pending), ..Default::default() })
                .await
                .unwrap();
            if let Some(p) = pending.first() {
                a.decide(&p.id, &Principal::named("bob"), true, None, None).await.unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let started = std::time::Instant::now();
    let r = c.call("test_audio_content", json!({})).await;
    assert_eq!(r["content"][0]["type"], "audio", "{r}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn denied_calls_say_who_and_why() {
    let approvals = approvals(Duration::ZERO, "").await;
    let mut c = Line::new(&approvals).await;
    let held = c.call("test_embedded_resource", json!({})).await;
    let (id, _) = approval_meta(&held);
    let err = approvals.decide(&id, &Principal::named("carol"), false, None, None).await.unwrap_err();
    assert!(err.to_string().contains("reason"), "a deny needs a reason");
    approvals.decide(&id, &Principal::named("carol"), false, None, Some("not today".into())).await.unwrap();
    let denied = c.call("test_embedded_resource", json!({})).await;
    insta::assert_json_snapshot!("denied_reply", stable(denied, &id));

    // Denied by policy: the rule's reason, at once.
    let by_policy = c.call("test_error_handling", json!({})).await;
    insta::assert_json_snapshot!("policy_denied_reply", by_policy);
}

#[tokio::test]
async fn two_person_workflow_needs_two_distinct_approvers() {
    let approvals = approvals(Duration::ZERO, "").await;
    let mut c = Line::new(&approvals).await;
    let held = c.call("test_simple_text", json!({})).await;
    let (id, _) = approval_meta(&held);
    let a = approvals.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!(a.risk.as_deref(), Some("high"));
    assert_eq!(a.required_approvals, 2);
    approvals.decide(&id, &Principal::named("alice"), true, None, None).await.unwrap();
    assert!(
        approvals.decide(&id, &Principal::named("alice"), true, None, None).await.is_err(),
        "the same person twice"
    );
    let still = c.call("test_simple_text", json!({})).await;
    assert_eq!(approval_meta(&still), (id.clone(), "pending".into()));
    approvals.decide(&id, &Principal::named("bob"), true, None, None).await.unwrap();
    let ran = c.call("test_simple_text", json!({})).await;
    assert!(ran.get("_meta").is_none(), "ran upstream: {ran}");
}

#[tokio::test]
async fn grant_window_lets_identical_calls_run_without_asking_again() {
    let extra = "\n[[rules]]\nname = \"granted\"\ntool = \"test_multiple_content_types\"\naction = \"approve\"\nworkflow = \"grant\"\n";
    // Later rules come after the ones in POLICY, so this one applies to its tool only.
    let approvals = approvals(Duration::ZERO, extra).await;
    let mut c = Line::new(&approvals).await;
    let held = c.call("test_multiple_content_types", json!({})).await;
    let (id, _) = approval_meta(&held);
    approvals.decide(&id, &Principal::named("alice"), true, None, None).await.unwrap();
    for _ in 0..3 {
        let r = c.call("test_multiple_content_types", json!({})).await;
        assert!(r.get("_meta").is_none(), "runs within the grant: {r}");
    }
}

#[tokio::test]
async fn expired_requests_are_not_run() {
    let extra = "\n[approvals.expiry]\nmedium = \"1s\"\n";
    let approvals = approvals(Duration::ZERO, extra).await;
    let mut c = Line::new(&approvals).await;
    let held = c.call("test_audio_content", json!({"x": 1})).await;
    let (id, _) = approval_meta(&held);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    approvals.sweep().await;
    assert_eq!(approvals.store.get_approval(&id).await.unwrap().unwrap().status, Status::Expired);
    assert!(approvals.decide(&id, &Principal::named("alice"), true, None, None).await.is_err(), "too late to approve");
    // A retry asks again.
    let again = c.call("test_audio_content", json!({"x": 1})).await;
    assert_ne!(approval_meta(&again).0, id);
}

/// While a call waits, the caller hears progress with the URL at least every 10 s.
#[tokio::test(start_paused = true)]
async fn waiting_sends_progress_with_the_url() {
    let approvals = approvals(Duration::from_secs(25), "").await;
    let gate = ApprovalGate { approvals: approvals.clone() };
    let seen = Arc::new(Mutex::new(Vec::<(f64, String)>::new()));
    let sink = {
        let seen = seen.clone();
        ProgressSink::new(move |p, m| seen.lock().unwrap().push((p, m.to_owned())))
    };
    let args = json!({"path": "/tmp/x"});
    let call = ToolCall {
        server: "fs",
        tool: "delete_file",
        exposed_name: "delete_file",
        arguments: &args,
        info: None,
        agent: Some("agent"),
        progress: Some(sink),
        gone: Default::default(),
    };
    let Verdict::Hold(wait) = gate.check(&call) else { panic!("held") };
    let Verdict::Respond(result) = wait.await else { panic!("answered") };
    let result: Value = serde_json::from_str(result.get()).unwrap();
    let (id, status) = approval_meta(&result);
    assert_eq!(status, "pending");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "progress at 10 s and 20 s of a 25 s wait: {seen:?}");
    assert!(seen[0].0 < seen[1].0);
    assert!(seen.iter().all(|(_, m)| m.contains(&approvals.url_for(&id))));
}

/// A client that declared URL-mode elicitation is also offered the approval page through it.
#[tokio::test]
async fn url_elicitation_offers_the_approval_page() {
    let approvals = approvals(Duration::ZERO, "").await;
    let mut c = Line::with_capabilities(&approvals, json!({"elicitation": {"form": {}, "url": {}}})).await;
    c.send(json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"test_audio_content","arguments":{}}}))
        .await;
    let (reply, requests) = c.reply_and_requests(7).await;
    let (id, status) = approval_meta(&reply["result"]);
    assert_eq!(status, "pending");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let e = &requests[0];
    assert_eq!(e["method"], "elicitation/create");
    assert_eq!(e["params"]["mode"], "url");
    assert_eq!(e["params"]["url"], approvals.url_for(&id));
    // The client's answer is absorbed by the proxy.
    c.send(json!({"jsonrpc":"2.0","id":e["id"],"result":{"action":"accept"}})).await;
    let ok = c.call("echo", json!({"message": "still fine"})).await;
    assert!(ok["content"][0]["text"].as_str().unwrap().contains("still fine"));

    // A client without URL elicitation gets only the result.
    let mut plain = Line::new(&approvals).await;
    plain
        .send(
            json!({"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"test_audio_content","arguments":{}}}),
        )
        .await;
    let (_, requests) = plain.reply_and_requests(8).await;
    assert!(requests.is_empty());
}
