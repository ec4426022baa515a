//! How a held call reaches its client: the channel each client gets, the answer before its own
//! limit (`answer_within`), and where the channel is recorded (audit, request, API).

use std::sync::Arc;
use std::time::Duration;

use mcp_gate::approval::{ApprovalGate, ApprovalService, ApprovalSettings};
use mcp_gate::config::Config;
use mcp_gate::gate::{Channel, Gate, Offered, Owner, ToolCall, Verdict};
use mcp_gate::identity::Principal;
use mcp_gate::store::{ApprovalFilter, Clock, Location, Store};
use mcp_gate::wire::era::Era;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use super::common::*;

const CONFIG: &str = r#"
[[rules]]
name = "ask"
tool = ["delete_file", "test_audio_content"]
action = "approve"

[[channels]]
agent = "slow-*"
answer_within_secs = 300

[[channels]]
agent = "plain-waiter"
use = "wait"
"#;

/// The approval service of [`CONFIG`] with its `[[channels]]` (and the built-in entries), held
/// calls waiting up to `wait`, on a clock that follows tokio's.
async fn approvals(wait: Duration) -> Arc<ApprovalService> {
    let store = Store::open_with_clock(Location::Memory, Clock::tokio(1_800_000_000_000)).await.expect("store");
    let config = Config::from_toml(CONFIG, "channels.toml").expect("config");
    let settings = ApprovalSettings {
        wait,
        public_url: "http://127.0.0.1:8377".into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        channels: config.approvals.channels.clone(),
        tasks: config.approvals.tasks,
        ..ApprovalSettings::default()
    };
    ApprovalService::new(store, config.policy.clone(), settings)
}

/// The gate's answer to a held `delete_file` of `agent`, and how long it took.
async fn held_call(approvals: &Arc<ApprovalService>, agent: &str, offered: Offered) -> (Verdict, Duration) {
    let gate = ApprovalGate { approvals: approvals.clone() };
    let arguments = json!({"path": format!("/tmp/{agent}")});
    let params = serde_json::value::to_raw_value(&json!({})).expect("params");
    let call = ToolCall {
        server: "fs",
        tool: "delete_file",
        exposed_name: "delete_file",
        arguments: &arguments,
        info: None,
        agent: Some(agent),
        owner: &Owner::StdioClient(agent.to_owned()),
        offered: &offered,
        params: &params,
        progress: None,
        held: None,
        gone: Default::default(),
    };
    let started = Instant::now();
    let verdict = match gate.check(&call) {
        Verdict::Hold(wait) => wait.await,
        other => other,
    };
    (verdict, started.elapsed())
}

fn status(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Respond(r) => {
            let v: Value = serde_json::from_str(r.get()).unwrap();
            v["_meta"]["mcp-gate/approval"]["status"].as_str().unwrap_or("none").to_owned()
        }
        Verdict::AllowTracked(_) => "run".into(),
        other => format!("{other:?}"),
    }
}

/// Claude Desktop gives up on a call after about 60 s: its held call is answered with the
/// pending result (readable by the model, with the URL) at 50 s, although `wait_secs` allows 600.
#[tokio::test(start_paused = true)]
async fn a_claude_desktop_call_is_answered_pending_before_its_limit() {
    let approvals = approvals(Duration::from_secs(600)).await;
    let (verdict, took) = held_call(&approvals, "claude-ai", Offered::plain(Era::Legacy)).await;
    assert_eq!(status(&verdict), "pending");
    assert_eq!(took, Duration::from_secs(50), "answered within the client's limit");
    let Verdict::Respond(reply) = verdict else { unreachable!() };
    assert!(reply.get().contains("http://127.0.0.1:8377/approvals/apr_"), "{}", reply.get());

    // An unknown client gets the same default; a shorter wait_secs is still the cap.
    let (verdict, took) = held_call(&approvals, "someone", Offered::plain(Era::Modern)).await;
    assert_eq!((status(&verdict).as_str(), took), ("pending", Duration::from_secs(50)));
    let short = self::approvals(Duration::from_secs(20)).await;
    let (_, took) = held_call(&short, "claude-ai", Offered::plain(Era::Legacy)).await;
    assert_eq!(took, Duration::from_secs(20), "min(wait_secs, answer_within)");
}

/// A client whose `[[channels]]` entry says 300 s keeps waiting past 50 s: approved at 120 s,
/// its call runs; undecided, it is answered pending at 300 s. The Python SDK (`mcp`, no limit
/// of its own) gets 300 s too.
#[tokio::test(start_paused = true)]
async fn a_client_with_a_longer_limit_keeps_waiting() {
    let approvals = approvals(Duration::from_secs(600)).await;
    let mut changes = approvals.changes.subscribe();
    let a = approvals.clone();
    tokio::spawn(async move {
        let requested = changes.recv().await.unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        a.decide(&requested.approval.id, &Principal::named("bob"), true, None, None).await.unwrap();
    });
    let (verdict, took) = held_call(&approvals, "slow-bot", Offered::plain(Era::Legacy)).await;
    assert_eq!(status(&verdict), "run");
    assert_eq!(took, Duration::from_secs(120));

    let (verdict, took) = held_call(&approvals, "slow-other", Offered::plain(Era::Legacy)).await;
    assert_eq!((status(&verdict).as_str(), took), ("pending", Duration::from_secs(300)));
    let (_, took) = held_call(&approvals, "mcp", Offered::plain(Era::Modern)).await;
    assert_eq!(took, Duration::from_secs(300));
}

/// The channel of the call that opened a request is recorded: in the `requested` audit record,
/// on the request (and so in the API's JSON of it).
#[tokio::test(start_paused = true)]
async fn the_opening_channel_is_recorded() {
    let approvals = approvals(Duration::from_secs(600)).await;
    let elicits = Offered { url_elicitation: true, ..Offered::plain(Era::Legacy) };
    let asks_task = Offered { task: true, ..Offered::plain(Era::Legacy) };
    let cases = [
        ("claude-ai", Offered::plain(Era::Legacy), "wait"),
        ("claude-code", elicits, "elicitation"),
        // Declared, but this agent's `use` says wait at best.
        ("plain-waiter", elicits, "wait"),
        // Asked for a task: answered with one at once.
        ("codex-mcp-client", asks_task, "task"),
    ];
    for (agent, offered, want) in cases {
        let (verdict, _) = held_call(&approvals, agent, offered).await;
        if want == "task" {
            assert!(matches!(verdict, Verdict::Task { .. }), "{agent}: {verdict:?}");
        } else {
            assert_eq!(status(&verdict), "pending", "{agent}");
        }
    }
    let fail_fast = self::approvals(Duration::ZERO).await;
    let (verdict, took) = held_call(&fail_fast, "claude-ai", Offered::plain(Era::Legacy)).await;
    assert_eq!((status(&verdict).as_str(), took), ("pending", Duration::ZERO), "wait_secs = 0 fails fast");

    for (service, cases) in
        [(&approvals, &cases[..]), (&fail_fast, &[("claude-ai", Offered::plain(Era::Legacy), "fail_fast")][..])]
    {
        let list = service.store.list_approvals(ApprovalFilter::default()).await.unwrap();
        let audit = mcp_gate::store::audit::tail(&service.store, 100).await.unwrap();
        for (agent, _, want) in cases {
            let a = list.iter().find(|a| a.agent.as_deref() == Some(*agent)).expect("a request per agent");
            assert_eq!(a.channel.as_deref(), Some(*want), "{agent}");
            assert_eq!(serde_json::to_value(a).unwrap()["channel"], *want, "the API's JSON of {agent}");
            let requested = audit
                .iter()
                .find(|r| r.event == "requested" && r.agent.as_deref() == Some(*agent))
                .expect("requested record");
            assert_eq!(requested.detail["channel"], *want, "{agent}");
        }
    }
}

/// A raw-line stdio client of an in-process proxy (with `gate`) in front of the fixture, named
/// `name`, declaring `caps`.
async fn line_client(
    gate: Arc<dyn Gate>,
    name: &str,
    caps: Value,
) -> (
    tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
) {
    let stream = stdio_proxy(options_with_gate(vec![stdio_server("fx")], gate)).await;
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":caps,"clientInfo":{"name":name,"version":"1"}}});
    write.write_all(format!("{init}\n").as_bytes()).await.unwrap();
    loop {
        let line = within("initialize", lines.next_line()).await.unwrap().expect("open");
        if serde_json::from_str::<Value>(&line).unwrap()["id"] == 1 {
            break;
        }
    }
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    write.write_all(format!("{initialized}\n").as_bytes()).await.unwrap();
    (lines, write)
}

/// The approval URL is offered by `elicitation/create` only to a client whose channel is
/// elicitation: an agent whose `use` says `wait` is not sent one, although it declared URL
/// elicitation.
#[tokio::test]
async fn elicitation_is_sent_only_where_it_is_the_channel() {
    let approvals = approvals(Duration::ZERO).await;
    for (name, want) in [("claude-code", 1), ("plain-waiter", 0)] {
        let gate: Arc<dyn Gate> = Arc::new(ApprovalGate { approvals: approvals.clone() });
        let (mut lines, mut write) = line_client(gate, name, json!({"elicitation": {"form": {}, "url": {}}})).await;
        let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"test_audio_content","arguments":{"n":name}}});
        write.write_all(format!("{call}\n").as_bytes()).await.unwrap();
        let mut elicitations = 0;
        loop {
            let line = within("reply", lines.next_line()).await.unwrap().expect("open");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["method"] == "elicitation/create" {
                elicitations += 1;
            }
            if v["id"] == 7 && v.get("method").is_none() {
                assert_eq!(v["result"]["_meta"]["mcp-gate/approval"]["status"], "pending");
                // Requests sent before the reply come first on the same pipe.
                break;
            }
        }
        assert_eq!(elicitations, want, "{name}");
    }
}

/// A gate that answers every call itself and counts how often the session asks it for a
/// client's channel.
#[derive(Default)]
struct CountingGate {
    asked: std::sync::atomic::AtomicUsize,
}

impl Gate for CountingGate {
    fn check(&self, _call: &ToolCall<'_>) -> Verdict {
        Verdict::Respond(serde_json::value::to_raw_value(&json!({"content": [], "isError": true})).unwrap())
    }

    fn channel(&self, _agent: Option<&str>, _offered: &Offered) -> Option<Channel> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Channel::Wait)
    }
}

/// The session logs (at info) what a client declared and the channel it gets once per client and
/// set of declared channels: repeated calls add no line, a call that declares more does.
#[tokio::test]
async fn the_session_logs_what_a_client_declared_and_its_channel_once() {
    let gate = Arc::new(CountingGate::default());
    let (mut lines, mut write) = line_client(gate.clone(), "claude-code", json!({})).await;
    let calls = [
        json!({"name": "echo", "arguments": {"n": 1}}),
        json!({"name": "echo", "arguments": {"n": 2}}),
        json!({"name": "echo", "arguments": {"n": 3}, "_meta": {"progressToken": "p"}}),
        json!({"name": "echo", "arguments": {"n": 4}, "_meta": {"progressToken": "q"}}),
    ];
    for (i, params) in calls.into_iter().enumerate() {
        let id = 10 + i;
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
        write.write_all(format!("{call}\n").as_bytes()).await.unwrap();
        loop {
            let line = within("reply", lines.next_line()).await.unwrap().expect("open");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id && v.get("method").is_none() {
                break;
            }
        }
    }
    assert_eq!(gate.asked.load(std::sync::atomic::Ordering::SeqCst), 2, "one line per declared set");
}

/// The wait is counted from the call's arrival: time spent before the wait starts (an AI
/// review, a slow store) does not push the answer past the client's limit.
#[tokio::test(start_paused = true)]
async fn the_wait_counts_from_the_calls_arrival() {
    let approvals = approvals(Duration::from_secs(600)).await;
    let gate = ApprovalGate { approvals: approvals.clone() };
    let arguments = json!({"path": "/tmp/late"});
    let params = serde_json::value::to_raw_value(&json!({})).expect("params");
    let offered = Offered::plain(Era::Legacy);
    let call = ToolCall {
        server: "fs",
        tool: "delete_file",
        exposed_name: "delete_file",
        arguments: &arguments,
        info: None,
        agent: Some("claude-ai"),
        owner: &Owner::StdioClient("claude-ai".into()),
        offered: &offered,
        params: &params,
        progress: None,
        held: None,
        gone: Default::default(),
    };
    let Verdict::Hold(held) = gate.check(&call) else { panic!("held") };
    tokio::time::advance(Duration::from_secs(30)).await;
    let started = Instant::now();
    let verdict = held.await;
    assert_eq!(status(&verdict), "pending");
    assert_eq!(started.elapsed(), Duration::from_secs(20), "50 s after the call arrived");
}
