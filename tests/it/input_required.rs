//! A held call of a 2026-07-28 client that declared URL-mode elicitation, over raw JSON: the
//! `input_required` answer with the approval page and a signed `requestState`, and every row of
//! what a retry gets. Every message the client and the upstream were sent is checked against the
//! 2026-07-28 schema.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_gate::approval::state::{Payload, StateKey};
use mcp_gate::approval::{ApprovalGate, ApprovalService, ApprovalSettings};
use mcp_gate::config::Config;
use mcp_gate::gate::{Gate, Offered, Owner, ProgressSink, ToolCall, Verdict};
use mcp_gate::identity::Principal;
use mcp_gate::store::{Location, Store};
use mcp_gate::wire::era::Era;
use serde_json::{Value, json};

use super::common::*;
use super::schema_validity::{MODERN, Peer, recorded, scratch, upstream_log, validate_upstream};

/// `echo` runs, `test_error_handling` is denied, the rest waits for a person.
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
"#;

const OWNER: &str = "stdio:schema-test";

async fn service(wait: Duration, rounds: u32) -> Arc<ApprovalService> {
    let config = Config::from_toml(POLICY, "input-required.toml").expect("policy");
    let store = Store::open(Location::Memory).await.expect("store");
    let settings = ApprovalSettings {
        wait,
        public_url: "http://127.0.0.1:8377".into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        mrtr_rounds: Some(rounds),
        ..ApprovalSettings::default()
    };
    ApprovalService::new(store, config.policy.clone(), settings)
}

struct Rig {
    c: Peer,
    approvals: Arc<ApprovalService>,
    dir: std::path::PathBuf,
}

async fn rig(name: &str, wait: Duration, rounds: u32) -> Rig {
    let dir = scratch(&format!("input-required-{name}"));
    let approvals = service(wait, rounds).await;
    let fx = recorded("fx", &fixture_bin().display().to_string(), &["stdio"], &dir);
    let gate = Arc::new(ApprovalGate { approvals: approvals.clone() });
    let c = Peer::start(MODERN, vec![fx], gate).await;
    Rig { c, approvals, dir }
}

impl Rig {
    /// A `tools/call` with extra params (`requestState`, `inputResponses`); the whole response.
    async fn call(&mut self, tool: &str, arguments: Value, extra: Value) -> Value {
        let mut params = json!({"name": tool, "arguments": arguments});
        for (k, v) in extra.as_object().into_iter().flatten() {
            params[k] = v.clone();
        }
        self.c.request("tools/call", params).await
    }

    /// Every message checked against the schema; what the upstream was sent, ending with an
    /// `echo` of `last`.
    async fn finish(mut self, last: &str) -> Vec<Value> {
        let r = self.call("echo", json!({"text": last}), json!({})).await;
        assert_ne!(r["result"]["isError"], true, "{r}");
        self.c.validate();
        let log = upstream_log(&self.dir, "fx", last).await;
        validate_upstream(MODERN, &log);
        let _ = std::fs::remove_dir_all(&self.dir);
        log
    }

    async fn signer(&self) -> StateKey {
        StateKey::new(self.approvals.store.request_state_key().await.unwrap())
    }
}

fn state_of(r: &Value) -> String {
    r["result"]["requestState"].as_str().unwrap_or_else(|| panic!("a requestState: {r}")).to_owned()
}

fn approval_id(r: &Value) -> String {
    r["result"]["_meta"]["mcp-gate/approval"]["id"].as_str().expect("an approval id").to_owned()
}

fn accept() -> Value {
    json!({"mcp-gate/approval": {"action": "accept"}})
}

fn text(r: &Value) -> String {
    r["result"]["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

/// The upstream's runs of `tool`.
fn runs(log: &[Value], tool: &str) -> Vec<Value> {
    log.iter().filter(|m| m["method"] == "tools/call" && m["params"]["name"] == tool).cloned().collect()
}

fn assert_first_answer(r: &Value, approvals: &ApprovalService) {
    let result = &r["result"];
    assert_eq!(result["resultType"], "input_required", "{r}");
    let ask = &result["inputRequests"]["mcp-gate/approval"];
    assert_eq!(ask["method"], "elicitation/create", "{r}");
    assert_eq!(ask["params"]["mode"], "url", "{r}");
    let url = approvals.url_for(&approval_id(r));
    assert_eq!(ask["params"]["url"], url.as_str(), "{r}");
    assert!(ask["params"]["message"].as_str().unwrap().contains("approval"), "{r}");
    assert!(state_of(r).starts_with("mcpg1."), "{r}");
    assert_eq!(result["_meta"]["mcp-gate/approval"]["status"], "pending", "{r}");
}

fn assert_state_only(r: &Value) {
    assert_eq!(r["result"]["resultType"], "input_required", "{r}");
    assert!(r["result"].get("inputRequests").is_none(), "no new question: {r}");
    assert!(state_of(r).starts_with("mcpg1."), "{r}");
}

fn assert_refused(r: &Value, says: &str) {
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(r["error"]["message"].as_str().unwrap_or_default().contains(says), "{says}: {r}");
}

async fn refusals(approvals: &ApprovalService) -> usize {
    let rows = mcp_gate::store::audit::tail(&approvals.store, 10_000).await.unwrap();
    rows.iter().filter(|r| r.event == "state_refused").count()
}

/// Pending rows: the first answer, accept -> state-only rounds up to the cap -> the readable
/// pending result; no answer -> the first answer again; decline -> a result saying so. Nothing
/// runs, and nothing of the proxy's own reaches the upstream.
#[tokio::test]
async fn pending_rounds_end_in_a_readable_result() {
    let mut rig = rig("pending", Duration::ZERO, 2).await;
    let args = json!({"path": "/srv/a"});
    let first = rig.call("test_simple_text", args.clone(), json!({})).await;
    assert_first_answer(&first, &rig.approvals);
    let id = approval_id(&first);

    // Accepted; nobody decides (no wait configured): a state-only round, twice, then the result.
    let r1 = rig
        .call("test_simple_text", args.clone(), json!({"requestState": state_of(&first), "inputResponses": accept()}))
        .await;
    assert_state_only(&r1);
    assert_ne!(state_of(&r1), state_of(&first), "a new state each round");
    let r2 = rig.call("test_simple_text", args.clone(), json!({"requestState": state_of(&r1)})).await;
    assert_state_only(&r2);
    let end = rig.call("test_simple_text", args.clone(), json!({"requestState": state_of(&r2)})).await;
    assert_eq!(end["result"]["resultType"], "complete", "{end}");
    assert_eq!(end["result"]["isError"], true, "{end}");
    assert!(text(&end).contains(&rig.approvals.url_for(&id)), "the model reads the URL: {end}");

    // No answer to the page in a round that asked: asked again, same page.
    let again = rig.call("test_simple_text", args.clone(), json!({})).await;
    assert_first_answer(&again, &rig.approvals);
    assert_eq!(approval_id(&again), id, "the same request");
    let asked = rig.call("test_simple_text", args.clone(), json!({"requestState": state_of(&again)})).await;
    assert_first_answer(&asked, &rig.approvals);
    assert_eq!(approval_id(&asked), id);
    // ... as long as rounds remain; then the pending result.
    let asked = rig.call("test_simple_text", args.clone(), json!({"requestState": state_of(&asked)})).await;
    assert_first_answer(&asked, &rig.approvals);
    let capped = rig.call("test_simple_text", args.clone(), json!({"requestState": state_of(&asked)})).await;
    assert!(capped["result"]["resultType"] == "complete" && capped["result"]["isError"] == true, "{capped}");
    let asked = rig.call("test_simple_text", args.clone(), json!({})).await;
    assert_first_answer(&asked, &rig.approvals);

    // Declined: said so, the request stays open.
    let declined = rig
        .call(
            "test_simple_text",
            args.clone(),
            json!({"requestState": state_of(&asked), "inputResponses": {"mcp-gate/approval": {"action": "decline"}}}),
        )
        .await;
    assert_eq!(declined["result"]["isError"], true, "{declined}");
    assert!(
        text(&declined).contains("declined") && text(&declined).contains(&rig.approvals.url_for(&id)),
        "{declined}"
    );
    let a = rig.approvals.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!(a.status.as_str(), "pending");

    let approvals = rig.approvals.clone();
    let log = rig.finish("pending-end").await;
    assert!(runs(&log, "test_simple_text").is_empty(), "nothing ran");
    assert_eq!(refusals(&approvals).await, 0);
}

/// Approved: the retry runs once, without the proxy's state and answer; the same state again
/// is refused. Spent by another call: said so. Denied: the denial.
#[tokio::test]
async fn an_approved_retry_runs_once_and_its_state_is_spent() {
    let mut rig = rig("approved", Duration::ZERO, 9).await;
    let args = json!({"path": "/srv/run"});
    let first = rig.call("test_simple_text", args.clone(), json!({})).await;
    assert_first_answer(&first, &rig.approvals);
    rig.approvals.decide(&approval_id(&first), &Principal::named("alice"), true, None, None).await.unwrap();
    let retry = json!({"requestState": state_of(&first), "inputResponses": accept()});
    let ran = rig.call("test_simple_text", args.clone(), retry.clone()).await;
    assert!(ran["result"]["content"].is_array(), "{ran}");
    assert!(ran["result"]["_meta"].get("mcp-gate/approval").is_none(), "the upstream's result: {ran}");

    let replay = rig.call("test_simple_text", args.clone(), retry).await;
    assert_refused(&replay, "already used");
    assert_eq!(refusals(&rig.approvals).await, 1, "the replay is audited");

    // Spent by the identical call without the state: the state's retry is told so.
    let args_s = json!({"path": "/srv/spent"});
    let first = rig.call("test_simple_text", args_s.clone(), json!({})).await;
    rig.approvals.decide(&approval_id(&first), &Principal::named("alice"), true, None, None).await.unwrap();
    let plain = rig.call("test_simple_text", args_s.clone(), json!({})).await;
    assert!(plain["result"]["_meta"].get("mcp-gate/approval").is_none(), "ran: {plain}");
    let spent = rig
        .call("test_simple_text", args_s, json!({"requestState": state_of(&first), "inputResponses": accept()}))
        .await;
    assert!(spent["result"]["isError"] == true && text(&spent).contains("already used"), "{spent}");

    // Denied by a person.
    let args_b = json!({"path": "/srv/b"});
    let first = rig.call("test_simple_text", args_b.clone(), json!({})).await;
    let id = approval_id(&first);
    rig.approvals.decide(&id, &Principal::named("carol"), false, None, Some("not today".into())).await.unwrap();
    let denied = rig
        .call("test_simple_text", args_b, json!({"requestState": state_of(&first), "inputResponses": accept()}))
        .await;
    assert!(denied["result"]["isError"] == true && text(&denied).contains("not today"), "{denied}");

    let log = rig.finish("approved-end").await;
    let ran = runs(&log, "test_simple_text");
    assert_eq!(ran.len(), 2, "each approval ran once: {ran:?}");
    assert!(ran[0]["params"].get("requestState").is_none(), "{}", ran[0]);
    assert!(ran[0]["params"].get("inputResponses").is_none(), "{}", ran[0]);
}

/// Decided while the retry waits: it runs in that same retry.
#[tokio::test]
async fn a_decision_during_the_wait_runs_the_waiting_retry() {
    let mut rig = rig("wait", Duration::from_secs(600), 9).await;
    let args = json!({"path": "/srv/w"});
    let first = rig.call("test_simple_text", args.clone(), json!({})).await;
    assert_first_answer(&first, &rig.approvals);
    let params = json!({"name": "test_simple_text", "arguments": args,
                        "requestState": state_of(&first), "inputResponses": accept()});
    let call = rig.c.send_request("tools/call", params).await;
    // Decided after the retry was sent: it either waits and wakes, or finds the decision.
    rig.approvals.decide(&approval_id(&first), &Principal::named("bob"), true, None, None).await.unwrap();
    let ran = rig.c.response(call).await;
    assert!(ran["result"]["content"].is_array() && ran["result"]["_meta"].get("mcp-gate/approval").is_none(), "{ran}");
    let log = rig.finish("wait-end").await;
    assert_eq!(runs(&log, "test_simple_text").len(), 1);
}

fn now() -> i64 {
    mcp_gate::store::now_ms()
}

/// Forged, altered, another owner's, another call's: refused with -32602 and audited. Expired:
/// held afresh. The policy runs first: a denied tool is denied whatever state it carries, an
/// allowed one runs without the proxy's state.
#[tokio::test]
async fn states_that_are_not_ours_to_use_are_refused() {
    let mut rig = rig("refused", Duration::ZERO, 9).await;
    let args = json!({"path": "/srv/r"});
    let first = rig.call("test_simple_text", args.clone(), json!({})).await;
    assert_first_answer(&first, &rig.approvals);
    let good = state_of(&first);

    let forged = rig.call("test_simple_text", args.clone(), json!({"requestState": "mcpg1.e30.AAAA"})).await;
    assert_refused(&forged, "not issued by mcp-gate");
    let mut altered = good.clone().into_bytes();
    let at = altered.len() / 2;
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let r = rig.call("test_simple_text", args.clone(), json!({"requestState": altered})).await;
    assert_refused(&r, "not issued by mcp-gate");

    // Signed with the real key, for somebody else or another call.
    let signer = rig.signer().await;
    let key = rig.approvals.store.get_approval(&approval_id(&first)).await.unwrap().expect("the request").key.clone();
    let mut p = signer.verify(&good, OWNER, &key, now()).unwrap();
    p.owner = "agent:mallory".into();
    let r = rig.call("test_simple_text", args.clone(), json!({"requestState": signer.sign(&p)})).await;
    assert_refused(&r, "another client");
    let r = rig.call("test_simple_text", json!({"path": "/srv/other"}), json!({"requestState": good.clone()})).await;
    assert_refused(&r, "another call");
    assert_eq!(refusals(&rig.approvals).await, 4, "every refusal is audited");

    // Expired: ignored, held afresh (the first answer again).
    let expired = Payload { expires_at: now() - 1, owner: OWNER.into(), ..p };
    let r = rig.call("test_simple_text", args.clone(), json!({"requestState": signer.sign(&expired)})).await;
    assert_first_answer(&r, &rig.approvals);

    // The policy first.
    let r = rig.call("test_error_handling", json!({}), json!({"requestState": "mcpg1.e30.AAAA"})).await;
    assert!(text(&r).contains("not allowed by policy"), "{r}");
    // An allowed call: the proxy's own state and answer are removed; a state of the same form
    // that the proxy did not sign (another gate's, upstream) passes untouched, with the answers.
    let r = rig.call("echo", json!({"text": "mine"}), json!({"requestState": good, "inputResponses": accept()})).await;
    assert_ne!(r["result"]["isError"], true, "{r}");
    let other_gate = json!({"requestState": "mcpg1.e30.AAAA", "inputResponses": accept()});
    let r = rig.call("echo", json!({"text": "other-gate"}), other_gate).await;
    assert_ne!(r["result"]["isError"], true, "{r}");
    // An upstream's own state and every answer that comes with it pass untouched (the key
    // `mcp-gate/approval` may be an inner gate's).
    let theirs = json!({"requestState": "upstream-state-1",
                        "inputResponses": {"theirs": {"action": "accept"}, "mcp-gate/approval": {"action": "accept"}}});
    let r = rig.call("echo", json!({"text": "theirs"}), theirs).await;
    assert_ne!(r["result"]["isError"], true, "{r}");

    let log = rig.finish("refused-end").await;
    assert!(runs(&log, "test_simple_text").is_empty(), "nothing held ran");
    let echoes = runs(&log, "echo");
    let mine = echoes.iter().find(|m| m["params"]["arguments"]["text"] == "mine").expect("ran");
    assert!(mine["params"].get("requestState").is_none() && mine["params"].get("inputResponses").is_none(), "{mine}");
    let other = echoes.iter().find(|m| m["params"]["arguments"]["text"] == "other-gate").expect("ran");
    assert_eq!(other["params"]["requestState"], "mcpg1.e30.AAAA", "{other}");
    assert_eq!(other["params"]["inputResponses"], accept(), "{other}");
    let theirs = echoes.iter().find(|m| m["params"]["arguments"]["text"] == "theirs").expect("ran");
    assert_eq!(theirs["params"]["requestState"], "upstream-state-1", "{theirs}");
    let answers = json!({"theirs": {"action": "accept"}, "mcp-gate/approval": {"action": "accept"}});
    assert_eq!(theirs["params"]["inputResponses"], answers, "{theirs}");
}

// === in process, on paused time ===

/// Asks the gate directly, as a 2026-07-28 client that declared URL elicitation.
async fn ask_gate(
    gate: &ApprovalGate,
    args: &Value,
    extra: Value,
    progress: Option<ProgressSink>,
) -> mcp_gate::gate::Verdict {
    let mut params = json!({"name": "test_simple_text", "arguments": args});
    for (k, v) in extra.as_object().into_iter().flatten() {
        params[k] = v.clone();
    }
    let params = serde_json::value::to_raw_value(&params).unwrap();
    let owner = Owner::StdioClient("schema-test".into());
    let offered = Offered { input_required: true, progress: progress.is_some(), ..Offered::plain(Era::Modern) };
    let call = ToolCall {
        server: "fx",
        tool: "test_simple_text",
        exposed_name: "test_simple_text",
        arguments: args,
        info: None,
        agent: Some("schema-test"),
        owner: &owner,
        offered: &offered,
        params: &params,
        progress,
        held: None,
        gone: Default::default(),
    };
    match gate.check(&call) {
        Verdict::Hold(wait) => wait.await,
        other => other,
    }
}

fn responded(v: Verdict) -> Value {
    let Verdict::Respond(r) = v else { panic!("an answer, not {v:?}") };
    json!({ "result": serde_json::from_str::<Value>(r.get()).unwrap() })
}

/// Accepted and still pending: the retry waits the whole limit, telling the caller where the
/// page is, before the state-only answer.
#[tokio::test(start_paused = true)]
async fn an_accepted_round_waits_with_progress_then_answers_state_only() {
    let approvals = service(Duration::from_secs(25), 9).await;
    let gate = ApprovalGate { approvals: approvals.clone() };
    let args = json!({"path": "/srv/p"});
    let first = responded(ask_gate(&gate, &args, json!({}), None).await);
    assert_first_answer(&first, &approvals);
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = {
        let seen = seen.clone();
        ProgressSink::new(move |_, m| seen.lock().unwrap().push(m.to_owned()))
    };
    let started = tokio::time::Instant::now();
    let retry = json!({"requestState": state_of(&first), "inputResponses": accept()});
    let r = responded(ask_gate(&gate, &args, retry, Some(sink)).await);
    assert_state_only(&r);
    assert!(started.elapsed() >= Duration::from_secs(25), "waited {:?}", started.elapsed());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "progress at 10 s and 20 s: {seen:?}");
    assert!(seen.iter().all(|m| m.contains(&approvals.url_for(&approval_id(&first)))), "{seen:?}");
}

/// Decided while the retry waits: that retry is released to run, before its limit.
#[tokio::test(start_paused = true)]
async fn a_waiting_round_is_released_by_the_decision() {
    let approvals = service(Duration::from_secs(3600), 9).await;
    let gate = Arc::new(ApprovalGate { approvals: approvals.clone() });
    let args = json!({"path": "/srv/q"});
    let first = responded(ask_gate(&gate, &args, json!({}), None).await);
    let id = approval_id(&first);
    let started = tokio::time::Instant::now();
    let retry = json!({"requestState": state_of(&first), "inputResponses": accept()});
    let waiting = {
        let (gate, args) = (gate.clone(), args.clone());
        tokio::spawn(async move { ask_gate(&gate, &args, retry, None).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiting.is_finished(), "the round waits for the decision");
    approvals.decide(&id, &Principal::named("alice"), true, None, None).await.unwrap();
    let verdict = waiting.await.unwrap();
    assert!(matches!(verdict, Verdict::AllowTracked(_)), "released to run: {verdict:?}");
    assert!(started.elapsed() < Duration::from_secs(3600), "before the limit: {:?}", started.elapsed());
}

/// The same state presented twice at once (a replay racing the real retry), both waiting when
/// the approval lands: one runs, the other is refused as used; the approval is claimed once.
#[tokio::test(start_paused = true)]
async fn a_state_replayed_while_its_round_waits_runs_once() {
    let approvals = service(Duration::from_secs(3600), 9).await;
    let gate = Arc::new(ApprovalGate { approvals: approvals.clone() });
    let args = json!({"path": "/srv/twice"});
    let first = responded(ask_gate(&gate, &args, json!({}), None).await);
    let id = approval_id(&first);
    let retry = json!({"requestState": state_of(&first), "inputResponses": accept()});
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (gate, args, retry) = (gate.clone(), args.clone(), retry.clone());
            tokio::spawn(async move { ask_gate(&gate, &args, retry, None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    approvals.decide(&id, &Principal::named("alice"), true, None, None).await.unwrap();
    let mut ran = 0;
    let mut refused = 0;
    for w in waiting {
        match w.await.unwrap() {
            Verdict::AllowTracked(hook) => {
                ran += 1;
                let done = serde_json::value::to_raw_value(&json!({"content": []})).unwrap();
                hook(mcp_gate::gate::Outcome::Result(&done));
            }
            Verdict::Refuse(e) => {
                assert!(e.to_string().contains("already used"), "{e}");
                refused += 1;
            }
            other => panic!("run or refused, not {other:?}"),
        }
    }
    assert_eq!((ran, refused), (1, 1), "one run, one refusal");
    assert_eq!(refusals(&approvals).await, 1, "the replay is audited");
    // A third presentation, after the run: refused, nothing claimed again.
    let again = ask_gate(&gate, &args, retry, None).await;
    assert!(matches!(again, Verdict::Refuse(_)), "{again:?}");
}
