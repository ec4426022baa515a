//! Gate tasks with a 2025-11-25 client over stdio, in raw JSON: what the proxy advertises, a
//! held call answered with a task, and the task's life (approved, denied, cancelled, decided by
//! policy), owner-bound. Every message to the client is validated against the 2025-11-25 schema.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mcp_gate::approval::{ApprovalGate, ApprovalService, ApprovalSettings};
use mcp_gate::config::Config;
use mcp_gate::identity::Principal;
use mcp_gate::store::{Clock, Location, Store};
use serde_json::{Value, json};

use super::common::*;
use super::schema_validity::{LEGACY, Peer, recorded, scratch, upstream_log};

const POLICY: &str = r#"
[policy]
default = "allow"

[[rules]]
tool = "echo"
action = "allow"

[[rules]]
tool = "test_error_handling"
action = "deny"
reason = "this tool only fails"

[[rules]]
tool = "test_*"
action = "approve"
"#;

async fn approvals(policy: &str) -> Arc<ApprovalService> {
    fail_fast_service(policy, "tasks.toml").await
}

async fn peer(approvals: &Arc<ApprovalService>, dir: &Path, name: &str) -> Peer {
    let fx = recorded("fx", &fixture_bin().display().to_string(), &["stdio"], dir);
    Peer::start_named(LEGACY, vec![fx], Arc::new(ApprovalGate { approvals: approvals.clone() }), name).await
}

/// A task-augmented `tools/call`; returns the whole response.
async fn call_task(c: &mut Peer, tool: &str, arguments: Value) -> Value {
    c.request("tools/call", json!({"name": tool, "arguments": arguments, "task": {"ttl": 60000}})).await
}

fn task_id(created: &Value) -> String {
    created["result"]["task"]["taskId"].as_str().unwrap_or_else(|| panic!("a task: {created}")).to_owned()
}

fn approval_of(created: &Value) -> String {
    created["result"]["_meta"]["mcp-gate/approval"]["id"].as_str().expect("an approval id").to_owned()
}

/// How many times the upstream was sent a call of `tool`, once the line with `last` is there.
async fn upstream_calls(dir: &Path, tool: &str, last: &str) -> usize {
    let log = upstream_log(dir, "fx", last).await;
    log.iter().filter(|m| m["method"] == "tools/call" && m["params"]["name"] == tool).count()
}

/// Makes sure everything before it reached the upstream: an allowed call that ends the log.
async fn flush(c: &mut Peer, marker: &str) {
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": marker}})).await;
    assert!(r["result"]["content"].is_array(), "{r}");
}

#[tokio::test]
async fn tasks_are_advertised_only_when_a_call_can_be_held() {
    let dir = scratch("tasks-advertise");
    let a = approvals(POLICY).await;
    let mut c = peer(&a, &dir, "claude").await;
    let init = c.seen.iter().find(|m| m["result"]["capabilities"].is_object()).cloned().expect("initialize");
    let tasks = &init["result"]["capabilities"]["tasks"];
    assert!(tasks["requests"]["tools"]["call"].is_object(), "{init}");
    assert!(tasks["cancel"].is_object() && tasks["list"].is_object(), "{init}");
    let list = c.request("tools/list", json!({})).await;
    let tools = list["result"]["tools"].as_array().expect("tools");
    for t in tools {
        let name = t["name"].as_str().unwrap();
        let marked = t["execution"]["taskSupport"] == "optional";
        let holdable = name.starts_with("test_") && name != "test_error_handling";
        assert_eq!(marked, holdable, "{name}: {t}");
    }
    c.validate();

    // A policy that holds nothing: the upstream's answers as they were.
    let dir = scratch("tasks-advertise-none");
    let a = approvals("[[rules]]\ntool = \"*\"\naction = \"allow\"\n").await;
    let mut c = peer(&a, &dir, "claude").await;
    let init = c.seen.iter().find(|m| m["result"]["capabilities"].is_object()).cloned().expect("initialize");
    assert!(init["result"]["capabilities"].get("tasks").is_none(), "{init}");
    let list = c.request("tools/list", json!({})).await;
    assert!(list["result"]["tools"].as_array().unwrap().iter().all(|t| t.get("execution").is_none()), "{list}");
}

#[tokio::test]
async fn a_held_task_waits_for_approval_then_runs_once_with_the_upstream_result() {
    let dir = scratch("tasks-approved");
    let a = approvals(POLICY).await;
    let mut c = peer(&a, &dir, "claude").await;
    let args = json!({"path": "/srv/a"});
    let created = call_task(&mut c, "test_simple_text", args.clone()).await;
    let task = &created["result"]["task"];
    assert_eq!(task["status"], "working", "{created}");
    let id = task_id(&created);
    assert!(id.starts_with("mcpg-") && id.len() == 37, "{id}");
    let message = task["statusMessage"].as_str().unwrap();
    assert!(message.contains("http://127.0.0.1:8377/approvals/apr_"), "{message}");
    assert!(created["result"]["_meta"]["io.modelcontextprotocol/model-immediate-response"].is_string(), "{created}");
    // The same call again: the same task.
    let again = call_task(&mut c, "test_simple_text", args).await;
    assert_eq!(task_id(&again), id);
    let got = c.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(got["result"]["status"], "working", "{got}");

    // tasks/result blocks until the task ends.
    let waiting = c.send_request("tasks/result", json!({"taskId": id})).await;
    let got = c.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(got["result"]["status"], "working");
    assert!(!c.seen.iter().any(|m| m["id"] == waiting), "tasks/result answered before the decision");
    a.decide(&approval_of(&created), &Principal::named("alice"), true, None, None).await.unwrap();
    let result = c.response(waiting).await;
    assert_eq!(result["result"]["content"][0]["text"], "This is a simple text response for testing.", "{result}");
    assert_eq!(result["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"], id.as_str());
    let got = c.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(got["result"]["status"], "completed", "{got}");
    let twice = c.request("tasks/result", json!({"taskId": id})).await;
    assert_eq!(twice["result"], result["result"]);

    flush(&mut c, "after-approved").await;
    assert_eq!(upstream_calls(&dir, "test_simple_text", "after-approved").await, 1, "ran upstream once");
    let log = upstream_log(&dir, "fx", "after-approved").await;
    let sent = log.iter().find(|m| m["params"]["name"] == "test_simple_text").unwrap();
    assert!(sent["params"].get("task").is_none(), "the upstream is asked for a plain result: {sent}");
    let listed = c.request("tasks/list", json!({})).await;
    assert!(listed["result"]["tasks"].as_array().unwrap().iter().any(|t| t["taskId"] == id.as_str()), "{listed}");
    c.validate();
}

/// A client may ask a task to be kept longer than the gate would (`params.task.ttl`), up to 7 days:
/// the created task says the lifetime it got.
#[tokio::test]
async fn a_requested_task_lifetime_is_served_up_to_seven_days() {
    let dir = scratch("tasks-ttl");
    let a = approvals(POLICY).await;
    let mut c = peer(&a, &dir, "claude").await;
    let week = mcp_gate::approval::tasks::MAX_REQUESTED_TTL_MS;
    for (path, asked, got) in [("/a", 3 * 86_400_000_i64, 3 * 86_400_000_i64), ("/b", i64::MAX, week)] {
        let created = c
            .request(
                "tools/call",
                json!({"name": "test_simple_text", "arguments": {"path": path}, "task": {"ttl": asked}}),
            )
            .await;
        assert_eq!(created["result"]["task"]["ttl"], got, "asked {asked}: {created}");
    }
    c.validate();
}

#[tokio::test]
async fn a_denied_task_completes_with_a_readable_denial_and_never_runs() {
    let dir = scratch("tasks-denied");
    let a = approvals(POLICY).await;
    let mut c = peer(&a, &dir, "claude").await;
    let created = call_task(&mut c, "test_simple_text", json!({"path": "/srv/b"})).await;
    let id = task_id(&created);
    a.decide(&approval_of(&created), &Principal::named("carol"), false, None, Some("not today".into())).await.unwrap();
    let result = c.request("tasks/result", json!({"taskId": id})).await;
    assert_eq!(result["result"]["isError"], true, "{result}");
    let text = result["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("denied by carol: not today"), "{text}");
    let got = c.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(got["result"]["status"], "completed", "a denial is a result the model reads, not a failure");
    assert!(got["result"]["statusMessage"].as_str().unwrap().contains("not today"), "{got}");

    // Denied by policy: a task that is completed at once.
    let created = call_task(&mut c, "test_error_handling", json!({})).await;
    assert_eq!(created["result"]["task"]["status"], "completed", "{created}");
    let result = c.request("tasks/result", json!({"taskId": task_id(&created)})).await;
    assert!(result["result"]["content"][0]["text"].as_str().unwrap().contains("this tool only fails"));

    flush(&mut c, "after-denied").await;
    assert_eq!(upstream_calls(&dir, "test_simple_text", "after-denied").await, 0);
    assert_eq!(upstream_calls(&dir, "test_error_handling", "after-denied").await, 0);
    c.validate();
}

#[tokio::test]
async fn a_cancelled_task_never_runs_and_cannot_be_cancelled_twice() {
    let dir = scratch("tasks-cancel");
    let a = approvals(POLICY).await;
    let mut c = peer(&a, &dir, "claude").await;
    let created = call_task(&mut c, "test_simple_text", json!({"path": "/srv/c"})).await;
    let id = task_id(&created);
    let cancelled = c.request("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(cancelled["result"]["status"], "cancelled", "{cancelled}");
    let again = c.request("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(again["error"]["code"], -32602, "{again}");
    a.decide(&approval_of(&created), &Principal::named("alice"), true, None, None).await.unwrap();
    let result = c.request("tasks/result", json!({"taskId": id})).await;
    assert_eq!(result["result"]["isError"], true, "{result}");
    let got = c.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(got["result"]["status"], "cancelled");
    flush(&mut c, "after-cancel").await;
    assert_eq!(upstream_calls(&dir, "test_simple_text", "after-cancel").await, 0, "a cancelled task never runs");
    c.validate();
}

/// The audit records of task events, oldest first.
async fn task_events(a: &ApprovalService) -> Vec<mcp_gate::store::audit::AuditRow> {
    let mut rows = mcp_gate::store::audit::tail(&a.store, 10_000).await.unwrap();
    rows.retain(|r| r.event.starts_with("task_"));
    rows.sort_by_key(|r| r.id);
    rows
}

#[tokio::test]
async fn creating_and_cancelling_a_task_are_audited_once() {
    let dir = scratch("tasks-audit");
    let a = approvals(POLICY).await;
    let mut c = peer(&a, &dir, "claude").await;
    let created = call_task(&mut c, "test_simple_text", json!({"path": "/srv/audit"})).await;
    let id = task_id(&created);
    let approval = approval_of(&created);
    let retried = call_task(&mut c, "test_simple_text", json!({"path": "/srv/audit"})).await;
    assert_eq!(task_id(&retried), id, "a retry joins the task: {retried}");
    let rows = task_events(&a).await;
    assert_eq!(rows.len(), 1, "one creation, the retry joined it: {rows:?}");
    assert_eq!(rows[0].event, "task_created");
    assert_eq!(rows[0].approval_id.as_deref(), Some(approval.as_str()));
    assert_eq!(rows[0].detail["task"], id.as_str());
    assert_eq!(rows[0].detail["era"], "legacy");
    assert_eq!(rows[0].tool, "test_simple_text");

    let cancelled = c.request("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(cancelled["result"]["status"], "cancelled", "{cancelled}");
    let again = c.request("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(again["error"]["code"], -32602, "{again}");
    let rows = task_events(&a).await;
    assert_eq!(rows.len(), 2, "one cancellation, the refused second one is not recorded: {rows:?}");
    assert_eq!(rows[1].event, "task_cancelled");
    assert_eq!(rows[1].approval_id.as_deref(), Some(approval.as_str()));
    assert_eq!(rows[1].detail["task"], id.as_str());
    assert_eq!(rows[1].actor.as_deref(), Some("client"));
    c.validate();
}

#[tokio::test]
async fn another_owner_cannot_see_or_cancel_a_task() {
    let dir = scratch("tasks-owner");
    let a = approvals(POLICY).await;
    let mut mine = peer(&a, &dir, "claude").await;
    let created = call_task(&mut mine, "test_simple_text", json!({"path": "/srv/d"})).await;
    let id = task_id(&created);
    let other_dir = scratch("tasks-owner-other");
    let mut other = peer(&a, &other_dir, "intruder").await;
    for method in ["tasks/get", "tasks/result", "tasks/cancel"] {
        let r = other.request(method, json!({"taskId": id})).await;
        assert_eq!(r["error"]["code"], -32602, "{method}: {r}");
    }
    let listed = other.request("tasks/list", json!({})).await;
    assert_eq!(listed["result"]["tasks"], json!([]), "{listed}");
    let got = mine.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(got["result"]["status"], "working", "untouched: {got}");
    other.validate();
    mine.validate();
}

#[tokio::test]
async fn an_allowed_call_made_with_a_task_runs_at_once_as_a_task() {
    let dir = scratch("tasks-allowed");
    let a = approvals(POLICY).await;
    let mut c = peer(&a, &dir, "claude").await;
    let created = call_task(&mut c, "echo", json!({"message": "hello"})).await;
    let id = task_id(&created);
    let result = c.request("tasks/result", json!({"taskId": id})).await;
    assert!(result["result"]["content"][0]["text"].as_str().unwrap().contains("hello"), "{result}");
    c.validate();
}

// === restart ===

/// The JSON-RPC response in an HTTP reply body (plain JSON, or the `data:` of an SSE event).
async fn reply_of(response: reqwest::Response) -> Value {
    let body = response.text().await.unwrap();
    body.lines()
        .map(|l| l.strip_prefix("data:").unwrap_or(l).trim())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("id").is_some())
        .unwrap_or_else(|| panic!("a response in {body}"))
}

/// `serve` with a file database and an `[[agents]]` token is killed (SIGKILL) while a task is
/// working; started again on the same database, the agent's new session finds the task
/// working, and once approved it completes with the real output, run once.
#[tokio::test]
async fn a_working_task_survives_a_restart_and_runs_once_when_approved() {
    use super::binary::{APPROVER_TOKEN, Served, data_dir, gate_in};
    const AGENT_TOKEN: &str = "task-restart-agent-token-0123456789";
    let dir = data_dir("task-restart");
    let config = dir.join("agents.toml");
    let hash: String = mcp_gate::identity::sha256(AGENT_TOKEN).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&config, format!("[[agents]]\nname = \"bot\"\ntoken_sha256 = \"{hash}\"\n")).unwrap();
    let start = || {
        let mut cmd = gate_in(&dir);
        cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN);
        Served::start_as(cmd, "tasker", Some(AGENT_TOKEN), Some(&config))
    };
    let request =
        |id: u64, method: &str, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});

    let mut first = start().await;
    let call = json!({"name": "test_image_content", "arguments": {"why": "restart"}, "task": {}});
    let created = reply_of(first.post(request(2, "tools/call", call)).await.unwrap()).await;
    assert_eq!(created["result"]["task"]["status"], "working", "{created}");
    let id = created["result"]["task"]["taskId"].as_str().unwrap().to_owned();
    let approval = created["result"]["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();
    first.child.start_kill().unwrap(); // SIGKILL
    first.child.wait().await.unwrap();

    let mut second = start().await;
    let got = reply_of(second.post(request(3, "tasks/get", json!({"taskId": id}))).await.unwrap()).await;
    assert_eq!(got["result"]["status"], "working", "{got}");
    let api = format!("{}/api/v1/approvals/{approval}", second.approvals);
    let http = reqwest::Client::new();
    let approved = http
        .post(format!("{api}/approve"))
        .bearer_auth(APPROVER_TOKEN)
        .json(&json!({"notes": "after the restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);
    let result = reply_of(second.post(request(4, "tasks/result", json!({"taskId": id}))).await.unwrap()).await;
    assert_eq!(result["result"]["content"][0]["type"], "image", "the real output: {result}");
    assert_eq!(result["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"], id.as_str());
    let status: Value = http.get(&api).bearer_auth(APPROVER_TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!((status["status"].as_str(), status["uses"].as_u64()), (Some("executed"), Some(1)), "{status}");
    let _ = second.child.start_kill();
}

/// Approved by another process sharing the database, which this one does not hear of: the
/// owner's next poll finds the approval and the task runs, once.
#[tokio::test]
async fn a_task_approved_by_another_process_runs_at_the_next_poll() {
    let dir = scratch("tasks-elsewhere");
    let db = dir.join("gate.db");
    let open = |policy: &'static str| service_on(&db, policy);
    let here = open(POLICY).await;
    let elsewhere = open(POLICY).await;
    let mut c = peer(&here, &dir, "claude").await;
    let created = call_task(&mut c, "test_simple_text", json!({"path": "/srv/e"})).await;
    let id = task_id(&created);
    elsewhere.decide(&approval_of(&created), &Principal::named("alice"), true, None, None).await.unwrap();
    let done = within("the task completes", async {
        loop {
            let got = c.request("tasks/get", json!({"taskId": id})).await;
            if got["result"]["status"] != "working" {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(done["result"]["status"], "completed", "{done}");
    let result = c.request("tasks/result", json!({"taskId": id})).await;
    assert_eq!(result["result"]["content"][0]["text"], "This is a simple text response for testing.", "{result}");
    flush(&mut c, "after-elsewhere").await;
    assert_eq!(upstream_calls(&dir, "test_simple_text", "after-elsewhere").await, 1);
    c.validate();
}

/// The same over stdio: the owner is the client by the name it gives in `initialize`, so the
/// client started again after the proxy was killed finds its task and gets the real output.
#[tokio::test]
async fn a_working_task_of_a_stdio_client_survives_a_restart() {
    use super::binary::{APPROVER_TOKEN, Running, data_dir, start_gated};
    use tokio::io::AsyncWriteExt;
    async fn ask(r: &mut Running, id: u64, method: &str, params: Value) -> Value {
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        r.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        loop {
            let line = within("a reply", r.lines.next_line()).await.unwrap().expect("a line");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }
    let dir = data_dir("task-restart-stdio");
    let mut first = start_gated(&dir).await;
    let call = json!({"name": "test_image_content", "arguments": {"why": "stdio restart"}, "task": {}});
    let created = ask(&mut first, 2, "tools/call", call).await;
    assert_eq!(created["result"]["task"]["status"], "working", "{created}");
    let id = task_id(&created);
    let approval = approval_of(&created);
    first.child.start_kill().unwrap(); // SIGKILL
    first.child.wait().await.unwrap();

    let mut second = start_gated(&dir).await;
    let got = ask(&mut second, 3, "tasks/get", json!({"taskId": id})).await;
    assert_eq!(got["result"]["status"], "working", "{got}");
    let http = reqwest::Client::new();
    let api = format!("{}/api/v1/approvals/{approval}", second.approvals);
    let approved = http.post(format!("{api}/approve")).bearer_auth(APPROVER_TOKEN).json(&json!({})).send().await;
    assert_eq!(approved.unwrap().status(), 200);
    let result = ask(&mut second, 4, "tasks/result", json!({"taskId": id})).await;
    assert_eq!(result["result"]["content"][0]["type"], "image", "the real output: {result}");
    let status: Value = http.get(&api).bearer_auth(APPROVER_TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!((status["status"].as_str(), status["uses"].as_u64()), (Some("executed"), Some(1)), "{status}");
    let _ = second.child.start_kill();
}

/// With an upstream that lists tasks of its own, `tasks/list` gives the owner's gate tasks first,
/// then the upstream's pages through a merged cursor; an upstream task listed this way is still
/// the upstream's to answer.
#[tokio::test]
async fn tasks_list_gives_the_gate_tasks_then_the_upstream_pages() {
    let dir = scratch("tasks-list-merged");
    let policy = "[policy]\ndefault = \"allow\"\n\n[[rules]]\ntool = \"raw_tool\"\naction = \"approve\"\n";
    let a = approvals(policy).await;
    let raw = fixture_bin().with_file_name("raw-upstream").display().to_string();
    let up = recorded("raw", &raw, &["--tasks"], &dir);
    let mut c = Peer::start_named(LEGACY, vec![up], Arc::new(ApprovalGate { approvals: a.clone() }), "claude").await;
    let created = call_task(&mut c, "raw_tool", json!({"n": 1})).await;
    let ours = task_id(&created);

    let first = c.request("tasks/list", json!({})).await;
    let ids = |r: &Value| -> Vec<String> {
        r["result"]["tasks"].as_array().unwrap().iter().map(|t| t["taskId"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&first), vec![ours.clone()], "the gate's tasks first: {first}");
    let next = first["result"]["nextCursor"].as_str().expect("the upstream's pages follow").to_owned();
    let second = c.request("tasks/list", json!({"cursor": next})).await;
    assert_eq!(ids(&second), vec!["up-1"], "{second}");
    let next = second["result"]["nextCursor"].as_str().expect("the upstream's second page").to_owned();
    let third = c.request("tasks/list", json!({"cursor": next})).await;
    assert_eq!(ids(&third), vec!["up-2"], "{third}");
    assert!(third["result"].get("nextCursor").is_none(), "the end: {third}");

    let log = upstream_log(&dir, "raw", "page-2").await;
    let lists: Vec<&Value> = log.iter().filter(|m| m["method"] == "tasks/list").collect();
    assert_eq!(lists.len(), 2, "the first page is the gate's own: {log:?}");
    assert!(lists[0]["params"].get("cursor").is_none_or(Value::is_null), "{}", lists[0]);
    assert_eq!(lists[1]["params"]["cursor"], "page-2", "the upstream gets its own cursor back");
    let bad = c.request("tasks/list", json!({"cursor": "not-a-cursor"})).await;
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    c.validate();
}

// === attacks: a cancel racing the run, anonymous listing ===

/// Asks the gate directly for a task of `test_simple_text`, as the 2025-11-25 stdio client `claude`.
async fn task_in_process(gate: &ApprovalGate, args: &Value) -> (Value, mcp_gate::gate::TaskStart) {
    use mcp_gate::gate::{Gate, Offered, Owner, ToolCall, Verdict};
    let params =
        serde_json::value::to_raw_value(&json!({"name": "test_simple_text", "arguments": args, "task": {}})).unwrap();
    let owner = Owner::StdioClient("claude".into());
    let offered = Offered { task: true, ..Offered::plain(mcp_gate::wire::era::Era::Legacy) };
    let call = ToolCall {
        server: "fx",
        tool: "test_simple_text",
        exposed_name: "test_simple_text",
        arguments: args,
        info: None,
        agent: Some("claude"),
        owner: &owner,
        offered: &offered,
        params: &params,
        progress: None,
        held: None,
        gone: Default::default(),
    };
    let verdict = match gate.check(&call) {
        Verdict::Hold(wait) => wait.await,
        other => other,
    };
    let Verdict::Task { created, start } = verdict else { panic!("a task, not {verdict:?}") };
    (serde_json::from_str(created.get()).unwrap(), start)
}

/// A `tasks/*` request of the stdio client `claude`, answered in process.
async fn task_op_in_process(gate: &ApprovalGate, method: mcp_gate::gate::TaskMethod, id: &str) -> Value {
    use mcp_gate::gate::{Gate, Owner, TaskAnswer, TaskOp};
    let op = TaskOp {
        method,
        id: Some(id.to_owned()),
        cursor: None,
        owner: Owner::StdioClient("claude".into()),
        era: mcp_gate::wire::era::Era::Legacy,
    };
    match gate.task(op).answer.await {
        TaskAnswer::Result(r) => json!({ "result": serde_json::from_str::<Value>(r.get()).unwrap() }),
        TaskAnswer::Error { code, message } => json!({ "error": { "code": code, "message": message } }),
    }
}

/// Cancelled once its approved call was already sent upstream: the task stays `cancelled` (the
/// spec), the call ran once and is recorded `executed`, and what the client reads must not say
/// the call was not run: the model would believe nothing happened (and may do it again).
#[tokio::test]
async fn a_task_cancelled_after_its_call_went_upstream_does_not_say_it_was_not_run() {
    use mcp_gate::gate::{Outcome, TaskMethod, TaskRun};
    let a = approvals(POLICY).await;
    let gate = ApprovalGate { approvals: a.clone() };
    let (created, start) = task_in_process(&gate, &json!({"path": "/srv/sent"})).await;
    let id = start.id.clone();
    let approval = created["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();
    a.decide(&approval, &Principal::named("alice"), true, None, None).await.unwrap();
    let TaskRun::Run { hook, .. } = within("the run", start.run).await else { panic!("approved: it runs") };
    // The call is upstream now; the client cancels before its answer is in.
    let cancelled = task_op_in_process(&gate, TaskMethod::Cancel, &id).await;
    assert_eq!(cancelled["result"]["status"], "cancelled", "{cancelled}");
    let answer = serde_json::value::to_raw_value(&json!({"content": [{"type": "text", "text": "done"}]})).unwrap();
    hook(Outcome::Result(&answer));
    within("the run recorded on its approval", async {
        while a.store.get_approval(&approval).await.unwrap().unwrap().status != mcp_gate::store::Status::Executed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let got = task_op_in_process(&gate, TaskMethod::Get, &id).await;
    assert_eq!(got["result"]["status"], "cancelled", "it stays cancelled: {got}");
    let message = got["result"]["statusMessage"].as_str().unwrap_or_default();
    assert!(!message.contains("not run"), "the call ran, the status says otherwise: {got}");
    let result = task_op_in_process(&gate, TaskMethod::Result, &id).await;
    let text = result["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(!text.contains("not run") && !text.contains("before it ran"), "the call ran: {result}");
}

/// Anonymous HTTP clients all own tasks as "anonymous": `tasks/list` is not advertised to them,
/// and must not enumerate the tasks of every other anonymous client either (a task id, 128
/// random bits, is then the only way to a task: the spec's rule without context binding).
#[tokio::test]
async fn an_anonymous_client_cannot_list_the_tasks_of_other_anonymous_clients() {
    use super::binary::{Served, data_dir, gate_in};
    let dir = data_dir("task-anon-list");
    let alice = Served::start(gate_in(&dir), "alice").await;
    let request =
        |id: u64, method: &str, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let call = json!({"name": "test_image_content", "arguments": {"who": "alice"}, "task": {}});
    let created = reply_of(alice.post(request(2, "tools/call", call)).await.unwrap()).await;
    let id = created["result"]["task"]["taskId"].as_str().unwrap_or_else(|| panic!("a task: {created}")).to_owned();

    // Another anonymous client: its own session on the same proxy.
    let (session, init) = alice.open_session("mallory").await;
    let init = reply_of(init).await;
    assert!(init["result"]["capabilities"]["tasks"].get("list").is_none(), "not advertised: {init}");
    let mallory = |body: Value| alice.request(Some(&session), body);
    let listed = reply_of(mallory(request(3, "tasks/list", json!({}))).await.unwrap()).await;
    let ids: Vec<&str> =
        listed["result"]["tasks"].as_array().into_iter().flatten().filter_map(|t| t["taskId"].as_str()).collect();
    assert!(!ids.contains(&id.as_str()), "another anonymous client's task is listed: {listed}");
    let mut alice = alice;
    let _ = alice.child.start_kill();
}

/// A task stored by one process, read by the next on the same database: still its owner's only.
/// Another client's `tasks/*` get exactly the error of an id that never existed (nothing tells
/// "not yours" from "unknown"), in every era.
#[tokio::test]
async fn after_a_restart_another_owner_cannot_tell_a_task_from_an_unknown_one() {
    let dir = scratch("tasks-restart-owner");
    let db = dir.join("gate.db");
    let open = || service_on(&db, POLICY);
    let first = open().await;
    let mut c = peer(&first, &dir, "claude").await;
    let id = task_id(&call_task(&mut c, "test_simple_text", json!({"path": "/srv/restart-owner"})).await);
    c.validate();
    drop(c);
    drop(first);

    let second = open().await;
    let other_dir = scratch("tasks-restart-owner-other");
    let mut other = peer(&second, &other_dir, "intruder").await;
    let unknown = "mcpg-00000000000000000000000000000000";
    for method in ["tasks/get", "tasks/result", "tasks/cancel"] {
        let theirs = other.request(method, json!({"taskId": id})).await;
        let none = other.request(method, json!({"taskId": unknown})).await;
        assert_eq!(theirs["error"]["code"], -32602, "{method}: {theirs}");
        assert_eq!(theirs["error"]["code"], none["error"]["code"], "{method}");
        let msg = |r: &Value, id: &str| r["error"]["message"].as_str().unwrap().replace(id, "ID");
        assert_eq!(msg(&theirs, &id), msg(&none, unknown), "{method}: {theirs} / {none}");
    }
    let listed = other.request("tasks/list", json!({})).await;
    assert_eq!(listed["result"]["tasks"], json!([]), "{listed}");
    other.validate();
    let mut mine = peer(&second, &dir, "claude").await;
    let got = mine.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(got["result"]["status"], "working", "still its owner's, untouched: {got}");
    mine.validate();
}

/// A service on the SQLite file `db` with `policy`, failing fast (another process, or the same
/// one after a restart).
async fn service_on(db: &Path, policy: &str) -> Arc<ApprovalService> {
    service_with(Store::open(Location::File(db.to_owned())).await.expect("store"), policy)
}

/// A service failing fast on `store` with `policy`.
fn service_with(store: Store, policy: &str) -> Arc<ApprovalService> {
    let config = Config::from_toml(policy, "tasks.toml").expect("policy");
    let settings = ApprovalSettings {
        wait: Duration::ZERO,
        public_url: "http://127.0.0.1:8377".into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        ..ApprovalSettings::default()
    };
    ApprovalService::new(store, config.policy.clone(), settings)
}

/// An allowed call made as a task whose call could not be sent (its upstream was down: the
/// claim is given back, the task is `working` again) runs at its owner's next poll, maybe after
/// a restart with a policy that now denies the tool: the policy must be asked again, as it is
/// for an approved task, and the task completes with the denial, never run.
#[tokio::test]
async fn an_allowed_task_not_yet_sent_is_checked_against_the_policy_again_before_it_runs() {
    use mcp_gate::gate::{Gate, Outcome, TaskMethod, TaskOp, TaskRun};
    let dir = scratch("tasks-allowed-recheck");
    let db = dir.join("gate.db");
    let allowing = "[policy]\ndefault = \"allow\"\n\n[[rules]]\ntool = \"test_image_content\"\naction = \"approve\"\n";
    let before = service_on(&db, allowing).await;
    let (created, start) = task_in_process(&ApprovalGate { approvals: before.clone() }, &json!({"n": 1})).await;
    assert_eq!(created["task"]["status"], "working", "{created}");
    let id = start.id.clone();
    let TaskRun::Run { hook, .. } = within("the run", start.run).await else { panic!("allowed: it runs at once") };
    hook(Outcome::NotRun); // the upstream was down: not sent
    within("the claim given back", async {
        while before.store.task("stdio:claude", &id).await.unwrap().unwrap().state
            != mcp_gate::store::tasks::TaskState::Working
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(before);

    let denying = "[policy]\ndefault = \"allow\"\n\n[[rules]]\ntool = \"test_simple_text\"\naction = \"deny\"\n\
                   reason = \"no longer allowed\"\n";
    let after = service_on(&db, denying).await;
    let gate = ApprovalGate { approvals: after.clone() };
    let op = TaskOp {
        method: TaskMethod::Get,
        id: Some(id.clone()),
        cursor: None,
        owner: mcp_gate::gate::Owner::StdioClient("claude".into()),
        era: mcp_gate::wire::era::Era::Legacy,
    };
    let resume = gate.task(op).resume.expect("the owner's poll resumes the task");
    let run = within("the resumed run", resume.run).await;
    assert!(matches!(run, TaskRun::Settled), "a call the policy now denies is sent upstream");
    let result = task_op_in_process(&gate, TaskMethod::Result, &id).await;
    assert_eq!(result["result"]["isError"], true, "the denial: {result}");
}

/// A service failing fast on `location`, on a tokio clock at `T0` (time paused by the test).
async fn paused_service(location: Location, policy: &str) -> Arc<ApprovalService> {
    service_with(Store::open_with_clock(location, Clock::tokio(T0)).await.expect("store"), policy)
}

const T0: i64 = 1_800_000_000_000;

/// Holds a task of the stdio client `claude` whose runner is gone (its session ended), approves
/// it, and leaves that client waiting in `tasks/result` for it. Returns the task's id, its lifetime and
/// the waiting answer.
async fn approved_task_nobody_runs(
    a: &Arc<ApprovalService>,
    args: Value,
) -> (String, Duration, tokio::task::JoinHandle<Value>) {
    use mcp_gate::gate::TaskMethod;
    let gate = ApprovalGate { approvals: a.clone() };
    let (created, start) = task_in_process(&gate, &args).await;
    let id = start.id.clone();
    drop(start); // the session that would run it ended; its owner never comes back to poll
    let ttl = Duration::from_millis(created["task"]["ttl"].as_u64().expect("a lifetime"));
    let approval = created["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();
    a.decide(&approval, &Principal::named("alice"), true, None, None).await.unwrap();
    let waiting = {
        let id = id.clone();
        tokio::spawn(async move { task_op_in_process(&gate, TaskMethod::Result, &id).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "an approved task nobody ran has no result yet");
    (id, ttl, waiting)
}

/// A client waiting in `tasks/result` on a task that another process sharing the database ends
/// (here its sweep expires the approval nobody used and purges the task past its lifetime) is
/// answered: nothing tells this process, so the waiting `tasks/result` reads its task again
/// within a minute, instead of waiting for an end that it would never hear of.
#[tokio::test(start_paused = true)]
async fn a_result_waiting_on_a_task_ended_by_another_process_is_answered() {
    let dir = scratch("tasks-purged-elsewhere");
    let db = dir.join("gate.db");
    let here = paused_service(Location::File(db.clone()), POLICY).await;
    let there = paused_service(Location::File(db), POLICY).await;
    let (id, ttl, waiting) = approved_task_nobody_runs(&here, json!({"path": "/srv/gone-elsewhere"})).await;
    tokio::time::advance(ttl).await;
    there.sweep().await;
    assert!(here.store.task("stdio:claude", &id).await.unwrap().is_none(), "purged by the other process");
    let answer =
        tokio::time::timeout(Duration::from_secs(61), waiting).await.expect("answered within a minute").unwrap();
    // Read between the other process's expiry and its purge, the task ends as expired; read after
    // the purge, it is unknown. Either way the wait ends, and the call was not run.
    let expired = answer["result"]["_meta"]["mcp-gate/approval"]["status"] == "expired";
    let unknown = answer["error"]["message"] == format!("unknown task {id}");
    assert!(expired || unknown, "{answer}");
}
