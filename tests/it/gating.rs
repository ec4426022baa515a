//! Approval gating in-process: fail fast, wait, deny, join, grants, expiry, progress, and the
//! exact JSON the model sees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_gate::approval::{ApprovalGate, ApprovalService, ApprovalSettings, ChangeKind, DecideError, PROGRESS_EVERY};
use mcp_gate::config::Config;
use mcp_gate::gate::{Gate, Outcome, ProgressSink, ToolCall, Verdict};
use mcp_gate::identity::Principal;
use mcp_gate::store::{ApprovalFilter, Clock, Location, Status, Store};
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

async fn approvals(wait: Duration, extra: &str) -> Arc<ApprovalService> {
    approvals_on(Store::open(Location::Memory).await.expect("store"), wait, extra)
}

/// The wall time at which the tests on paused time start.
const T0: i64 = 1_800_000_000_000;

/// [`approvals`] on a clock that follows tokio's (paused) time from [`T0`].
async fn paused_approvals(wait: Duration, extra: &str) -> Arc<ApprovalService> {
    let store = Store::open_with_clock(Location::Memory, Clock::tokio(T0)).await.expect("store");
    approvals_on(store, wait, extra)
}

/// The approval service with the test policy (and `extra`) on `store`, whose clock they read.
fn approvals_on(store: Store, wait: Duration, extra: &str) -> Arc<ApprovalService> {
    let config = Config::from_toml(&format!("{POLICY}{extra}"), "gating.toml").expect("policy");
    let settings = ApprovalSettings {
        wait,
        public_url: "http://127.0.0.1:8377".into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        redact: vec!["/secret".into()],
        ..ApprovalSettings::default()
    };
    ApprovalService::new(store, config.policy.clone(), settings)
}

/// A raw-line client of an in-process stdio proxy in front of the fixture.
struct Line {
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    next: u64,
}

impl Line {
    async fn new(approvals: &Arc<ApprovalService>) -> Line {
        Line::with_capabilities(approvals, json!({})).await
    }

    async fn with_capabilities(approvals: &Arc<ApprovalService>, capabilities: Value) -> Line {
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
    let mut changes = approvals.changes.subscribe();
    let ran = c.call("test_image_content", json!({"secret": "s3cret", "n": 1})).await;
    assert_eq!(ran["content"][0]["type"], "image", "the approved call ran: {ran}");

    // The approval was single use: the next identical call is held again, as a new request.
    let held_again = c.call("test_image_content", json!({"secret": "s3cret", "n": 1})).await;
    let (id2, status2) = approval_meta(&held_again);
    assert_eq!(status2, "pending");
    assert_ne!(id2, id);
    // The outcome is recorded after the reply; it is announced once stored.
    within("the outcome recorded", async { while changes.recv().await.unwrap().kind != ChangeKind::Executed {} }).await;
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

/// A waiting call is released by the decision itself, not by its periodic re-read.
#[tokio::test(start_paused = true)]
async fn waiting_call_runs_when_approved_mid_wait() {
    let approvals = paused_approvals(Duration::from_secs(30), "").await;
    let mut changes = approvals.changes.subscribe();
    let a = approvals.clone();
    tokio::spawn(async move {
        let requested = changes.recv().await.unwrap();
        assert_eq!(requested.kind, ChangeKind::Requested);
        a.decide(&requested.approval.id, &Principal::named("bob"), true, None, None).await.unwrap();
    });
    let started = tokio::time::Instant::now();
    let verdict = hold(&approvals, "test_audio_content", json!({})).await;
    assert!(matches!(verdict, Verdict::AllowTracked(_)), "released to run: {verdict:?}");
    assert!(started.elapsed() < PROGRESS_EVERY, "released by the decision after {:?}", started.elapsed());
}

/// The gate's answer to a call of `tool`, after any wait.
async fn hold(approvals: &Arc<ApprovalService>, tool: &str, arguments: Value) -> Verdict {
    hold_as(approvals, "agent", tool, arguments).await
}

/// [`hold`], the call made by `agent`.
async fn hold_as(approvals: &Arc<ApprovalService>, agent: &str, tool: &str, arguments: Value) -> Verdict {
    let gate = ApprovalGate { approvals: approvals.clone() };
    let call = ToolCall {
        server: "fs",
        tool,
        exposed_name: tool,
        arguments: &arguments,
        info: None,
        agent: Some(agent),
        owner: &mcp_gate::gate::Owner::Anonymous,
        offered: &mcp_gate::gate::Offered::plain(mcp_gate::wire::era::Era::Legacy),
        params: &serde_json::value::to_raw_value(&serde_json::json!({})).expect("params"),
        progress: None,
        held: None,
        gone: Default::default(),
    };
    match gate.check(&call) {
        Verdict::Hold(wait) => wait.await,
        other => other,
    }
}

/// The id and status of a gate's answer that is an approval URL.
fn answered(verdict: Verdict) -> (String, String) {
    let Verdict::Respond(result) = verdict else { panic!("an answer, not {verdict:?}") };
    approval_meta(&serde_json::from_str(result.get()).unwrap())
}

/// Runs a call the gate let through, reporting a successful result.
fn run(verdict: Verdict) {
    let Verdict::AllowTracked(done) = verdict else { panic!("a call to run, not {verdict:?}") };
    let result = serde_json::value::RawValue::from_string(r#"{"content":[]}"#.into()).unwrap();
    done(Outcome::Result(&result));
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

/// An approval is the approval of one agent's call under the workflow its rule named: another
/// agent's identical call, which the policy sends to a stricter workflow, does not run on it.
#[tokio::test]
async fn an_approval_is_not_used_by_another_agent_or_workflow() {
    let extra = r#"
[[rules]]
name = "ci deletes need two people"
tool = "delete_file"
agent = "ci-*"
action = "approve"
workflow = "pair"

[[rules]]
name = "deletes need one person"
tool = "delete_file"
action = "approve"
"#;
    let approvals = approvals(Duration::ZERO, extra).await;
    let args = json!({"path": "/srv/prod"});
    let (alice_id, status) = answered(hold_as(&approvals, "alice", "delete_file", args.clone()).await);
    assert_eq!(status, "pending");
    approvals.decide(&alice_id, &Principal::named("operator"), true, None, None).await.unwrap();

    // The same call by ci-bot: its own request, in its own workflow, pending.
    let (ci_id, status) = answered(hold_as(&approvals, "ci-bot", "delete_file", args.clone()).await);
    assert_ne!(ci_id, alice_id, "ci-bot's call does not join alice's approved request");
    assert_eq!(status, "pending");
    let ci = approvals.store.get_approval(&ci_id).await.unwrap().unwrap();
    assert_eq!((ci.workflow.as_str(), ci.required_approvals, ci.agent.as_deref()), ("pair", 2, Some("ci-bot")));

    // Alice's identical retry runs on her approval, once.
    run(hold_as(&approvals, "alice", "delete_file", args.clone()).await);
    let a = approvals.store.get_approval(&alice_id).await.unwrap().unwrap();
    assert_eq!(a.uses, 1);
    // And ci-bot's call still waits for its two approvals.
    let (again, status) = answered(hold_as(&approvals, "ci-bot", "delete_file", args).await);
    assert_eq!((again, status.as_str()), (ci_id, "pending"));
}

#[tokio::test(start_paused = true)]
async fn expired_requests_are_not_run() {
    let extra = "\n[approvals.expiry]\nmedium = \"1s\"\n";
    let approvals = paused_approvals(Duration::ZERO, extra).await;
    let (id, _) = answered(hold(&approvals, "test_audio_content", json!({"x": 1})).await);
    tokio::time::advance(Duration::from_millis(999)).await;
    approvals.sweep().await;
    assert_eq!(approvals.store.get_approval(&id).await.unwrap().unwrap().status, Status::Pending);
    tokio::time::advance(Duration::from_millis(1)).await;
    approvals.sweep().await;
    assert_eq!(approvals.store.get_approval(&id).await.unwrap().unwrap().status, Status::Expired);
    assert!(approvals.decide(&id, &Principal::named("alice"), true, None, None).await.is_err(), "too late to approve");
    // A retry asks again.
    let (again, status) = answered(hold(&approvals, "test_audio_content", json!({"x": 1})).await);
    assert_ne!(again, id);
    assert_eq!(status, "pending");
}

/// The sweeper, every second of (paused) time, expires a request once its deadline has passed
/// and announces it.
#[tokio::test(start_paused = true)]
async fn the_sweeper_expires_requests_at_their_deadline() {
    let extra = "\n[approvals.expiry]\nmedium = \"60s\"\n";
    let approvals = paused_approvals(Duration::ZERO, extra).await;
    approvals.spawn_sweeper();
    let (id, _) = answered(hold(&approvals, "test_audio_content", json!({})).await);
    let created = approvals.store.get_approval(&id).await.unwrap().unwrap().created_at;
    assert_eq!(created, T0);
    let mut changes = approvals.changes.subscribe();
    let expired = tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            let change = changes.recv().await.unwrap();
            if change.kind == ChangeKind::Expired {
                return change;
            }
        }
    })
    .await
    .expect("expired by the sweeper");
    assert_eq!(expired.approval.id, id);
    assert_eq!(expired.actor.as_deref(), Some("system"));
    let late = expired.at - (T0 + 60_000);
    assert!((0..1_000).contains(&late), "expired {late} ms after its deadline");
    let t = approvals.store.transitions(&id).await.unwrap();
    assert_eq!(t.last().map(|t| (t.to, t.at, t.actor.as_str())), Some((Status::Expired, expired.at, "system")));
}

/// A grant lets identical calls run until its window ends, by the clock; then the next one is
/// held again as a new request.
#[tokio::test(start_paused = true)]
async fn a_grant_ends_with_its_window() {
    let extra = "\n[[rules]]\nname = \"granted\"\ntool = \"test_multiple_content_types\"\naction = \"approve\"\nworkflow = \"grant\"\n";
    let approvals = paused_approvals(Duration::ZERO, extra).await;
    let tool = "test_multiple_content_types";
    let (id, _) = answered(hold(&approvals, tool, json!({})).await);
    tokio::time::advance(Duration::from_secs(5)).await;
    approvals.decide(&id, &Principal::named("alice"), true, None, None).await.unwrap();
    let decided = approvals.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!(decided.grant_ends_at(), Some(T0 + 65_000));
    run(hold(&approvals, tool, json!({})).await);
    tokio::time::advance(Duration::from_millis(59_999)).await;
    run(hold(&approvals, tool, json!({})).await);
    tokio::time::advance(Duration::from_millis(1)).await;
    let (next, status) = answered(hold(&approvals, tool, json!({})).await);
    assert_ne!(next, id, "the window has ended: a new request");
    assert_eq!(status, "pending");
    let closed = approvals.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!((closed.status, closed.uses), (Status::Executed, 2));
}

/// A pending request is announced as expiring once, when the warning starts (here 10 minutes
/// before a one-hour deadline).
#[tokio::test(start_paused = true)]
async fn an_expiring_request_is_announced_once() {
    let config = Config::from_toml(&format!("{POLICY}\n[approvals.expiry]\nmedium = \"1h\"\n"), "gating.toml").unwrap();
    let store = Store::open_with_clock(Location::Memory, Clock::tokio(T0)).await.unwrap();
    let settings = ApprovalSettings {
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        expiry_warning: Duration::from_secs(600),
        ..ApprovalSettings::default()
    };
    let approvals = ApprovalService::new(store, config.policy.clone(), settings);
    let (id, _) = answered(hold(&approvals, "test_audio_content", json!({})).await);
    let mut changes = approvals.changes.subscribe();
    let mut expiring = || {
        let mut seen = Vec::new();
        while let Ok(c) = changes.try_recv() {
            if c.kind == ChangeKind::Expiring {
                seen.push(c.approval.id.clone());
            }
        }
        seen
    };
    tokio::time::advance(Duration::from_secs(50 * 60 - 1)).await;
    approvals.sweep().await;
    assert!(expiring().is_empty(), "not yet");
    tokio::time::advance(Duration::from_secs(1)).await;
    approvals.sweep().await;
    assert_eq!(expiring(), [id]);
    tokio::time::advance(Duration::from_secs(60)).await;
    approvals.sweep().await;
    assert!(expiring().is_empty(), "announced once");
}

/// A decision made by another process sharing the database (here another store handle on the
/// file) reaches a waiting call when it hears of it, or else at its re-read every
/// [`PROGRESS_EVERY`], and never before: on paused time, the same on every machine.
#[tokio::test(start_paused = true)]
async fn a_decision_made_elsewhere_releases_a_call_when_heard_or_reread() {
    let dir = super::binary::data_dir("gating-elsewhere");
    let path = dir.join("gate.db");
    let clock = Clock::tokio(T0);
    let here = Store::open_with_clock(Location::File(path.clone()), clock.clone()).await.unwrap();
    let there = Store::open_with_clock(Location::File(path), clock).await.unwrap();
    let waiting = approvals_on(here, Duration::from_secs(30), "");
    let deciding = approvals_on(there, Duration::ZERO, "");
    let mut changes = waiting.changes.subscribe();

    for (why, heard) in [("heard", true), ("reread", false)] {
        let started = tokio::time::Instant::now();
        let w = waiting.clone();
        let call = tokio::spawn(async move { hold(&w, "test_audio_content", json!({ "why": why })).await });
        let id = loop {
            let c = changes.recv().await.unwrap();
            if c.kind == ChangeKind::Requested {
                break c.approval.id.clone();
            }
        };
        // Paused time moves only when every task waits on a timer (a store request in flight
        // holds it back): this returns once the call has read its request and waits.
        tokio::time::sleep(Duration::from_millis(1)).await;
        deciding.decide(&id, &Principal::named("alice"), true, None, None).await.unwrap();
        tokio::time::advance(PROGRESS_EVERY - Duration::from_millis(1) - started.elapsed()).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!call.is_finished(), "{why}: not released before it hears of the decision or re-reads");
        if heard {
            waiting.wake(&id);
        }
        let verdict = tokio::time::timeout(Duration::from_secs(60), call).await.unwrap().unwrap();
        run(verdict);
        let released = started.elapsed();
        if heard {
            assert!(released < PROGRESS_EVERY, "{why}: released when told, after {released:?}");
        } else {
            assert!(released >= PROGRESS_EVERY, "{why}: released by the re-read, after {released:?}");
        }
    }
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
        owner: &mcp_gate::gate::Owner::Anonymous,
        offered: &mcp_gate::gate::Offered::plain(mcp_gate::wire::era::Era::Legacy),
        params: &serde_json::value::to_raw_value(&serde_json::json!({})).expect("params"),
        progress: Some(sink),
        held: None,
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

/// A client that takes URL elicitation is asked to open the approval page as soon as its call
/// is held (not only with the pending answer), and is told the elicitation is complete when the
/// decision lands while the call waits; it is not asked twice.
#[tokio::test]
async fn url_elicitation_starts_with_the_wait_and_completes_with_the_decision() {
    let approvals = approvals(Duration::from_secs(600), "").await;
    let mut c = Line::with_capabilities(&approvals, json!({"elicitation": {"form": {}, "url": {}}})).await;
    c.send(json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"test_audio_content","arguments":{}}}))
        .await;
    let asked = loop {
        let line = within("the elicitation", c.lines.next_line()).await.unwrap().expect("open");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v["id"] != 9 || v.get("method").is_some(), "answered before the decision: {v}");
        if v["method"] == "elicitation/create" {
            break v;
        }
    };
    let id = asked["params"]["elicitationId"].as_str().unwrap().to_owned();
    assert_eq!(asked["params"]["mode"], "url");
    assert_eq!(asked["params"]["url"], approvals.url_for(&id));
    c.send(json!({"jsonrpc":"2.0","id":asked["id"],"result":{"action":"accept"}})).await;
    approvals.decide(&id, &Principal::named("alice"), true, None, None).await.unwrap();
    let mut before = Vec::new();
    let reply = loop {
        let line = within("the reply", c.lines.next_line()).await.unwrap().expect("open");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["id"] == 9 && v.get("method").is_none() {
            break v;
        }
        before.push(v);
    };
    assert_ne!(reply["result"]["isError"], true, "the approved call ran: {reply}");
    let complete: Vec<&Value> = before.iter().filter(|m| m["method"] == "notifications/elicitation/complete").collect();
    assert_eq!(complete.len(), 1, "{before:?}");
    assert_eq!(complete[0]["params"], json!({"elicitationId": id}));
    assert!(!before.iter().any(|m| m["method"] == "elicitation/create"), "asked once: {before:?}");
}

/// Answered pending at once (no wait), the client that was asked to open the page is told the
/// elicitation is complete when the request is decided later, while its session is there.
#[tokio::test]
async fn url_elicitation_completes_after_a_pending_answer() {
    let approvals = approvals(Duration::ZERO, "").await;
    let mut c = Line::with_capabilities(&approvals, json!({"elicitation": {"form": {}, "url": {}}})).await;
    c.send(json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"test_audio_content","arguments":{}}}))
        .await;
    let (reply, requests) = c.reply_and_requests(9).await;
    let (id, status) = approval_meta(&reply["result"]);
    assert_eq!(status, "pending");
    assert_eq!(requests.len(), 1, "asked once: {requests:?}");
    assert_eq!(requests[0]["params"]["elicitationId"], id.as_str());
    c.send(json!({"jsonrpc":"2.0","id":requests[0]["id"],"result":{"action":"accept"}})).await;
    approvals.decide(&id, &Principal::named("alice"), false, None, Some("no".into())).await.unwrap();
    let complete = loop {
        let line = within("the completion", c.lines.next_line()).await.unwrap().expect("open");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["method"] == "notifications/elicitation/complete" {
            break v;
        }
    };
    assert_eq!(complete["params"], json!({"elicitationId": id}));
}

/// Processes sharing a database need not share a configuration (two projects' `proxy.toml`, one
/// data directory and hub). A request keeps the quorum it was opened with, and a process that
/// does not know the request's workflow (so not who may vote in it) does not decide it: the hub of
/// another project cannot approve a two-person request with one vote, or with anybody's.
#[tokio::test]
async fn a_request_is_not_decided_under_another_processs_workflows() {
    let store = Store::open(Location::Memory).await.expect("store");
    let opened_here = approvals_on(store.clone(), Duration::ZERO, "");
    let Verdict::Respond(held) = hold(&opened_here, "test_simple_text", json!({"n": 1})).await else {
        panic!("a pending answer")
    };
    let (id, _) = approval_meta(&serde_json::from_str(held.get()).unwrap());
    assert_eq!(opened_here.store.get_approval(&id).await.unwrap().unwrap().required_approvals, 2);

    // Another project: no `pair` workflow at all.
    let config = Config::from_toml("", "other-project.toml").expect("config");
    let settings = ApprovalSettings { workflows: config.approvals.workflows.clone(), ..ApprovalSettings::default() };
    let unaware = ApprovalService::new(store.clone(), config.policy.clone(), settings);
    let refused = unaware.decide(&id, &Principal::named("operator"), true, None, None).await;
    assert!(refused.is_err(), "decided under a workflow this process does not know: {refused:?}");

    // Another project whose `pair` needs one approval: the request still needs its two.
    let config = Config::from_toml("[[workflows]]\nname = \"pair\"\n", "lax-project.toml").expect("config");
    assert_eq!(config.approvals.workflows["pair"].required_approvals, 1);
    let settings = ApprovalSettings { workflows: config.approvals.workflows.clone(), ..ApprovalSettings::default() };
    let one_is_enough = ApprovalService::new(store.clone(), config.policy.clone(), settings);
    let voted = one_is_enough.decide(&id, &Principal::named("alice"), true, None, None).await.unwrap();
    assert_eq!(voted.status, Status::Pending, "one vote of the two the request was opened with");
    let done = opened_here.decide(&id, &Principal::named("bob"), true, None, None).await.unwrap();
    assert_eq!(done.status, Status::Approved);
}

/// A request keeps the approvers its workflow had when it was opened: the hub of a project whose
/// workflow of the same name admits everyone still admits only those the request's list admits.
#[tokio::test]
async fn a_request_keeps_the_approvers_it_was_opened_with() {
    let store = Store::open(Location::Memory).await.expect("store");
    let keys = format!(
        "\n[[rules]]\nname = \"keys\"\ntool = \"rotate_keys\"\naction = \"approve\"\nworkflow = \"keys\"\n\n\
         [[workflows]]\nname = \"keys\"\napprovers = [\"alice\", \"team:security\"]\n\n\
         [[approvers]]\nname = \"alice\"\ntoken_sha256 = \"{a}\"\n\n\
         [[approvers]]\nname = \"sam\"\nteams = [\"security\"]\ntoken_sha256 = \"{b}\"\n",
        a = "a".repeat(64),
        b = "b".repeat(64),
    );
    let keys = keys.as_str();
    let opened_here = approvals_on(store.clone(), Duration::ZERO, keys);
    let Verdict::Respond(held) = hold(&opened_here, "rotate_keys", json!({"key": "prod"})).await else {
        panic!("a pending answer")
    };
    let (id, _) = approval_meta(&serde_json::from_str(held.get()).unwrap());
    let stored = opened_here.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!(stored.approvers, Some(vec!["alice".to_owned(), "team:security".to_owned()]));
    let shown = serde_json::to_value(&stored).unwrap();
    assert_eq!(shown["approvers"], json!(["alice", "team:security"]), "the API shows the list");

    // Another project: its `keys` workflow has no approvers list, so it admits everyone.
    let config = Config::from_toml("[[workflows]]\nname = \"keys\"\n", "lax-project.toml").expect("config");
    assert!(config.approvals.workflows["keys"].approvers.is_empty());
    let settings = ApprovalSettings { workflows: config.approvals.workflows.clone(), ..ApprovalSettings::default() };
    let lax = ApprovalService::new(store.clone(), config.policy.clone(), settings);
    for approve in [true, false] {
        let refused = lax.decide(&id, &Principal::named("mallory"), approve, None, Some("no".into())).await;
        assert!(
            matches!(refused, Err(DecideError::NotAnApprover(ref who, _)) if who == "mallory"),
            "a voter the request's list does not admit: {refused:?}"
        );
    }
    assert_eq!(lax.store.get_approval(&id).await.unwrap().unwrap().status, Status::Pending);
    let sam = Principal { teams: vec!["security".into()], ..Principal::named("sam") };
    let done = lax.decide(&id, &sam, true, None, None).await.unwrap();
    assert_eq!(done.status, Status::Approved, "a team member both lists admit");
}
