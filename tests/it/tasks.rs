//! Gate tasks with a 2025-11-25 client over stdio, in raw JSON: what the proxy advertises, a
//! held call answered with a task, and the task's life (approved, denied, cancelled, decided by
//! policy), owner-bound. Every message to the client is validated against the 2025-11-25 schema.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mcp_gate::approval::{ApprovalGate, ApprovalService, ApprovalSettings};
use mcp_gate::config::Config;
use mcp_gate::identity::Principal;
use mcp_gate::store::{Location, Store};
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
    let open = |policy: &'static str| {
        let db = db.clone();
        async move {
            let config = Config::from_toml(policy, "tasks.toml").expect("policy");
            let store = Store::open(Location::File(db)).await.expect("store");
            let settings = ApprovalSettings {
                wait: Duration::ZERO,
                public_url: "http://127.0.0.1:8377".into(),
                expiry_by_risk: config.approvals.expiry_by_risk,
                ..ApprovalSettings::default()
            };
            ApprovalService::new(store, config.policy.clone(), settings)
        }
    };
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
