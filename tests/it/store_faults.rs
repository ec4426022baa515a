//! Faults of the shared store: identical calls at the same moment, a process killed between the
//! claim and the finish of a call, and a database file deleted while in use.

use std::sync::Arc;
use std::time::Duration;

use mcp_gate::approval::{ApprovalService, ApprovalSettings};
use mcp_gate::config::Config;
use mcp_gate::store::{ApprovalFilter, Location, Status, Store};
use mcp_gate::store::{Sql, params};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::binary::{APPROVER_TOKEN, Running, data_dir, gate_in, start_gated_with, start_upstream};
use super::common::*;

async fn approvals_on(store: Store) -> Arc<ApprovalService> {
    let config = Config::from_toml("", "empty.toml").unwrap();
    let settings = ApprovalSettings {
        wait: Duration::ZERO,
        public_url: "http://127.0.0.1:9".into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        ..ApprovalSettings::default()
    };
    ApprovalService::new(store, config.policy.clone(), settings)
}

/// What a call of `tool` on server `fs` by `agent` carries, owned for the gate's [`ToolCall`] to borrow.
struct CallFacts {
    tool: &'static str,
    arguments: Value,
    params: Box<serde_json::value::RawValue>,
    offered: mcp_gate::gate::Offered,
}

impl CallFacts {
    fn new(tool: &'static str, arguments: Value) -> CallFacts {
        let params = serde_json::value::to_raw_value(&json!({"name": tool, "arguments": arguments})).unwrap();
        let offered = mcp_gate::gate::Offered::plain(mcp_gate::wire::era::Era::Legacy);
        CallFacts { tool, arguments, params, offered }
    }

    fn call(&self) -> mcp_gate::gate::ToolCall<'_> {
        mcp_gate::gate::ToolCall {
            server: "fs",
            tool: self.tool,
            exposed_name: self.tool,
            arguments: &self.arguments,
            info: None,
            agent: Some("agent"),
            owner: &mcp_gate::gate::Owner::Anonymous,
            offered: &self.offered,
            params: &self.params,
            progress: None,
            held: None,
            gone: Default::default(),
        }
    }
}

async fn count_events(store: &Store, event: &'static str) -> i64 {
    store
        .call(move |c| c.query_one("SELECT count(*) FROM audit WHERE event = ?1", params![event])?.get(0))
        .await
        .unwrap()
}

/// Twenty identical calls held at once in one process share one pending request, audited once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_identical_holds_make_one_request() {
    let store = Store::open(Location::Memory).await.unwrap();
    let approvals = approvals_on(store.clone()).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let ids = futures::future::join_all((0..20).map(|_| {
        let approvals = approvals.clone();
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/tmp/same"})).await
        })
    }))
    .await;
    let ids: Vec<String> = ids.into_iter().map(Result::unwrap).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one request for one call: {ids:?}");
    let pending =
        store.count_approvals(ApprovalFilter { status: Some(Status::Pending), ..Default::default() }).await.unwrap();
    assert_eq!(pending, 1);
    assert_eq!(count_events(&store, "requested").await, 1, "only the creator audits `requested`");
}

/// A stdio proxy on the shared data directory `dir`, in front of the conformance fixture.
async fn start_on(dir: &std::path::Path) -> Running {
    let mut cmd = gate_in(dir);
    cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN);
    start_gated_with(cmd).await
}

/// A stdio proxy on `dir` in front of `raw-upstream`.
async fn start_raw(dir: &std::path::Path) -> Running {
    let raw = fixture_bin().with_file_name("raw-upstream");
    let mut cmd = gate_in(dir);
    cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN).arg("--").arg(raw);
    start_upstream(cmd, "orphan-test").await
}

async fn send_call(run: &mut Running, id: u64, tool: &str, arguments: Value) {
    let line = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}});
    run.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
}

async fn reply(run: &mut Running, id: u64) -> Value {
    loop {
        let line = within("call reply", run.lines.next_line()).await.unwrap().expect("reply");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["id"] == id {
            return v;
        }
    }
}

/// Three processes sharing a data directory make the same call at the same moment: one pending
/// request. Approved, the three retries at once run it once.
#[tokio::test]
async fn three_processes_racing_one_call_share_one_request() {
    let dir = data_dir("race");
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(start_on(&dir).await);
    }
    let mut last = String::new();
    for round in 0..5u64 {
        let why = format!("race {round}");
        let id = 10 + round;
        futures::future::join_all(
            procs.iter_mut().map(|p| send_call(p, id, "test_image_content", json!({"why": why}))),
        )
        .await;
        let mut ids = Vec::new();
        for p in &mut procs {
            let r = reply(p, id).await;
            ids.push(r["result"]["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned());
        }
        assert!(ids.iter().all(|i| *i == ids[0]), "round {round}: one request for three identical calls: {ids:?}");
        last = ids[0].clone();
    }
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/api/v1/approvals/{last}/approve", procs[0].approvals))
        .bearer_auth(APPROVER_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    futures::future::join_all(
        procs.iter_mut().map(|p| send_call(p, 20, "test_image_content", json!({"why": "race 4"}))),
    )
    .await;
    let mut ran = 0;
    for p in &mut procs {
        let r = reply(p, 20).await;
        if r["result"]["content"][0]["type"] == "image" {
            ran += 1;
        }
    }
    assert_eq!(ran, 1, "the approved call runs once");
}

/// Kill -9 between the claim and the finish of a call: the next start settles the request as
/// `failed` (outcome unknown), audited; it is not left approved and used.
#[tokio::test]
async fn a_claim_whose_process_was_killed_is_settled_at_start_up() {
    let dir = data_dir("orphan");
    let mut first = start_raw(&dir).await;
    send_call(&mut first, 2, "raw_tool", json!({"hang": true})).await;
    let held = reply(&mut first, 2).await;
    let id = held["result"]["_meta"]["mcp-gate/approval"]["id"].as_str().expect("held").to_owned();
    let http = reqwest::Client::new();
    let api = format!("{}/api/v1/approvals/{id}", first.approvals);
    let resp = http.post(format!("{api}/approve")).bearer_auth(APPROVER_TOKEN).json(&json!({})).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The retry is claimed and sent upstream, which never answers.
    send_call(&mut first, 3, "raw_tool", json!({"hang": true})).await;
    let claimed = within("claimed", async {
        loop {
            let a: Value = http.get(&api).bearer_auth(APPROVER_TOKEN).send().await.unwrap().json().await.unwrap();
            if a["uses"] == 1 {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(claimed["status"], "approved");
    first.child.start_kill().unwrap(); // SIGKILL
    first.child.wait().await.unwrap();

    let second = start_raw(&dir).await;
    let api = format!("{}/api/v1/approvals/{id}", second.approvals);
    let settled = within("settled", async {
        loop {
            let a: Value = http.get(&api).bearer_auth(APPROVER_TOKEN).send().await.unwrap().json().await.unwrap();
            if a["status"] != "approved" {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(settled["status"], "failed", "{settled}");
    assert!(settled["outcome"]["error"].as_str().unwrap().contains("stopped; outcome unknown"), "{settled}");
    drop(second);

    let tail = gate_in(&dir).args(["audit", "tail", "-n", "50"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&tail.stdout);
    let failed = text.lines().find(|l| l.contains("\"failed\"") && l.contains(&id));
    assert!(failed.is_some_and(|l| l.contains("outcome unknown")), "audited as failed: {text}");
}

/// The database file deleted while the proxy runs: a held call is refused with an error that
/// says why, stderr names the path, and nothing is stored in the lost file.
#[tokio::test]
async fn a_deleted_database_fails_closed() {
    let dir = data_dir("deleted");
    let mut child = gate_in(&dir)
        .env("MCP_GATE_TOKEN", APPROVER_TOKEN)
        .arg("--")
        .arg(fixture_bin())
        .arg("stdio")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    within("approvals line", async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.starts_with("mcp-gate: approvals at ") {
                return;
            }
        }
    })
    .await;
    let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = errors_tx.send(line);
        }
    });
    let (stdin, lines) = handshake(&mut child, "deleted-db").await;
    let mut run = Running { child, stdin, lines, approvals: String::new() };
    let first = run.call_with(2, "before").await;
    assert_eq!(first["_meta"]["mcp-gate/approval"]["status"], "pending", "{first}");

    let db = dir.join("mcp-gate.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let refused = run.call_with(3, "after").await;
    assert_eq!(refused["isError"], true, "{refused}");
    let text = refused.to_string();
    assert!(text.contains("deleted"), "the error says why: {text}");
    assert!(refused["_meta"]["mcp-gate/approval"]["status"] != "pending", "not held into a lost file: {refused}");
    let logged = within("error on stderr", async {
        loop {
            let line = errors.recv().await.expect("stderr");
            if line.contains("database file") && line.contains("deleted") {
                return line;
            }
        }
    })
    .await;
    assert!(logged.contains(&db.display().to_string()) || logged.contains("mcp-gate.db"), "{logged}");
}

/// A call the policy allows does not run when its decision cannot go into the audit log: once
/// the store has found its file deleted, the call is answered with the gate's error instead of
/// being let through.
#[tokio::test]
async fn an_allowed_call_does_not_run_when_its_decision_cannot_be_audited() {
    use mcp_gate::approval::ApprovalGate;
    use mcp_gate::gate::{Gate, Verdict};

    let dir = data_dir("lost-audit");
    let db = dir.join("audit.db");
    let store = Store::open(Location::File(db.clone())).await.unwrap();
    let config = Config::from_toml("[policy]\ndefault = \"allow\"\n", "allow.toml").unwrap();
    let gate =
        ApprovalGate { approvals: ApprovalService::new(store.clone(), config.policy.clone(), Default::default()) };
    let facts = CallFacts::new("read_file", json!({"path": "/tmp/x"}));
    let call = facts.call();
    assert!(matches!(gate.check(&call), Verdict::Allow), "allowed while its decision can be recorded");

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    // The store finds the loss at its next request.
    assert!(store.list_approvals(ApprovalFilter::default()).await.is_err(), "the store refuses a lost file");
    match gate.check(&call) {
        Verdict::Respond(reply) => {
            let text = reply.get();
            assert!(text.contains("cannot be audited") && text.contains("deleted"), "{text}");
        }
        other => panic!("an allowed call ran without its audit record: {other:?}"),
    }
}

/// An approved call whose claim cannot be audited (the log refuses writes, as on a full disk)
/// does not run: the claim goes back, and once the log takes writes again the retry runs, once.
#[tokio::test]
async fn an_approved_call_does_not_run_when_its_claim_cannot_be_audited() {
    use mcp_gate::approval::ApprovalGate;
    use mcp_gate::gate::{Gate, Verdict};
    use mcp_gate::identity::Principal;

    let store = Store::open(Location::Memory).await.unwrap();
    let approvals = approvals_on(store.clone()).await;
    let gate = ApprovalGate { approvals: approvals.clone() };
    let facts = CallFacts::new("delete_file", json!({"path": "/srv/prod"}));
    let call = facts.call();
    let check = || async {
        match gate.check(&call) {
            Verdict::Hold(wait) => wait.await,
            other => other,
        }
    };
    assert!(matches!(check().await, Verdict::Respond(_)), "held: answered with the approval URL");
    let pending = approvals.store.list_approvals(ApprovalFilter::default()).await.unwrap();
    let id = pending[0].id.clone();
    approvals.decide(&id, &Principal::named("operator"), true, None, None).await.unwrap();

    store
        .call(|c| {
            c.execute(
                "CREATE TRIGGER audit_full BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
                &[],
            )
        })
        .await
        .unwrap();
    match check().await {
        Verdict::Respond(reply) => {
            let text = reply.get();
            assert!(text.contains("cannot be audited") && text.contains("disk is full"), "{text}");
        }
        other => panic!("an approved call ran without its claim audited: {other:?}"),
    }
    let a = store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!((a.status, a.uses), (Status::Approved, 0), "the claim went back");

    store.call(|c| c.execute("DROP TRIGGER audit_full", &[])).await.unwrap();
    assert!(matches!(check().await, Verdict::AllowTracked(_)), "runs once the log takes writes");
    assert_eq!(count_events(&store, "claimed").await, 1);
}

/// `audit verify`, `tail` and `export` read the log that exists: pointed at a database file that
/// is not there (a mistyped data directory, a deleted file), they fail naming the path instead of
/// creating an empty database and calling its log intact.
#[tokio::test]
async fn audit_commands_on_a_missing_database_fail_and_create_nothing() {
    let dir = data_dir("audit-missing").join("typo");
    for action in [&["verify"][..], &["tail", "-n", "5"], &["export"]] {
        let out = gate_in(&dir).arg("audit").args(action).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "audit {action:?} on a missing database succeeded: {stderr}");
        assert!(stderr.contains(&dir.join("mcp-gate.db").display().to_string()), "names the path: {stderr}");
        assert!(!stderr.contains("intact"), "{stderr}");
        assert!(!dir.exists(), "audit {action:?} created {}", dir.display());
    }
}

/// `audit tail` prints what agents sent: JSON escapes C0 controls, but DEL, the C1 controls
/// (U+009B is a CSI that terminals act on) and bidi overrides pass through raw. They are written as
/// `\u` escapes, so the lines stay the same JSON and cannot drive or disguise the terminal.
#[tokio::test]
async fn audit_tail_cannot_drive_the_terminal() {
    use mcp_gate::store::audit::{AuditRecord, Event};
    let dir = data_dir("audit-tail-escapes");
    let store = Store::open(Location::File(dir.join("mcp-gate.db"))).await.unwrap();
    let hostile = "x\u{9b}2J\u{1b}[31m\u{7f}/home/\u{202e}fdp.exe\u{e0041}";
    let rec = AuditRecord {
        event: Event::Allowed,
        approval_id: None,
        server: "files".into(),
        tool: format!("read{hostile}"),
        agent: Some(format!("agent{hostile}")),
        actor: None,
        detail: json!({ "arguments": { "path": hostile } }),
    };
    store.audit_append(rec, 1_700_000_000_000).await.unwrap();
    drop(store);
    let out = gate_in(&dir).args(["audit", "tail", "-n", "5"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for c in ['\u{9b}', '\u{1b}', '\u{7f}', '\u{202e}', '\u{e0041}'] {
        assert!(!text.contains(c), "raw {c:?} in `audit tail`: {text:?}");
    }
    let row: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(row["detail"]["arguments"]["path"], hostile, "still the same JSON: {text}");
    assert_eq!(row["agent"], format!("agent{hostile}"));
}
