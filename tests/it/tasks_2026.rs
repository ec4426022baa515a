//! Gate tasks with a 2026-07-28 client over stdio, in raw JSON (the tasks extension, SEP-2663):
//! what the proxy advertises, a held call answered with a flat `CreateTaskResult`, `tasks/get`
//! with the result inlined, acknowledged cancel and update, the methods that are gone, and a
//! client that does not declare the extension. Results are checked by hand against SEP-2663's
//! interfaces (`schema.json` has no task types).

use std::sync::Arc;
use std::time::Duration;

use mcp_gate::approval::{ApprovalGate, ApprovalService};
use mcp_gate::identity::Principal;

use serde_json::{Value, json};

use super::common::*;
use super::schema_validity::{MODERN, Peer, recorded, scratch, upstream_log};

const POLICY: &str = r#"
[policy]
default = "allow"

[[rules]]
tool = "test_*"
action = "approve"
"#;

const EXTENSION: &str = "io.modelcontextprotocol/tasks";

async fn approvals() -> Arc<ApprovalService> {
    fail_fast_service(POLICY, "tasks-2026.toml").await
}

/// A 2026-07-28 client that declares the tasks extension on every request.
async fn peer(a: &Arc<ApprovalService>, dir: &std::path::Path) -> Peer {
    let fx = recorded("fx", &fixture_bin().display().to_string(), &["stdio"], dir);
    let mut c = Peer::start(MODERN, vec![fx], Arc::new(ApprovalGate { approvals: a.clone() })).await;
    c.capabilities["extensions"] = json!({ EXTENSION: {} });
    c
}

/// `tasks/get` until the task has ended.
async fn until_ended(c: &mut Peer, id: &str) -> Value {
    within("the task ends", async {
        loop {
            let got = c.request("tasks/get", json!({"taskId": id})).await;
            if got["result"]["status"] != "working" {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_held_call_becomes_a_flat_task_that_completes_with_the_result_inlined() {
    let dir = scratch("tasks-2026");
    let a = approvals().await;
    let mut c = peer(&a, &dir).await;
    let discovered = c.seen.iter().find(|m| m["result"]["supportedVersions"].is_array()).cloned().unwrap();
    assert!(discovered["result"]["capabilities"]["extensions"][EXTENSION].is_object(), "{discovered}");
    assert!(discovered["result"]["capabilities"].get("tasks").is_none(), "never the 2025-11-25 keys");

    let created = c.request("tools/call", json!({"name": "test_simple_text", "arguments": {"n": 1}})).await;
    let r = &created["result"];
    assert_eq!((r["resultType"].as_str(), r["status"].as_str()), (Some("task"), Some("working")), "{created}");
    assert!(r["statusMessage"].as_str().unwrap().contains("http://127.0.0.1:8377/approvals/apr_"), "{created}");
    assert!(r["ttlMs"].is_number() && r["pollIntervalMs"].is_number() && r.get("task").is_none(), "{created}");
    assert!(r["_meta"]["io.modelcontextprotocol/serverInfo"].is_object(), "{created}");
    let id = r["taskId"].as_str().unwrap().to_owned();
    let got = c.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(
        (got["result"]["resultType"].as_str(), got["result"]["status"].as_str()),
        (Some("complete"), Some("working"))
    );

    let approval = r["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();
    a.decide(&approval, &Principal::named("alice"), true, None, None).await.unwrap();
    let ended = until_ended(&mut c, &id).await;
    assert_eq!(ended["result"]["status"], "completed", "{ended}");
    assert_eq!(ended["result"]["result"]["content"][0]["text"], "This is a simple text response for testing.");

    // Gone in 2026-07-28.
    let result = c.request("tasks/result", json!({"taskId": id})).await;
    assert_eq!(result["error"]["code"], -32601, "{result}");

    // What went upstream: the call once, without a task and without the extension.
    let log = upstream_log(&dir, "fx", "test_simple_text").await;
    let sent: Vec<&Value> = log.iter().filter(|m| m["params"]["name"] == "test_simple_text").collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0]["params"].get("task").is_none(), "{}", sent[0]);
    assert!(!sent[0].to_string().contains(EXTENSION), "the upstream is not offered a task: {}", sent[0]);
    c.validate();
}

#[tokio::test]
async fn cancel_and_update_are_acknowledged_and_a_denial_is_a_completed_task() {
    let dir = scratch("tasks-2026-cancel");
    let a = approvals().await;
    let mut c = peer(&a, &dir).await;
    let created = c.request("tools/call", json!({"name": "test_simple_text", "arguments": {"n": 2}})).await;
    let id = created["result"]["taskId"].as_str().unwrap().to_owned();
    let ack = |r: &Value| r["result"]["resultType"] == "complete" && r["result"].as_object().unwrap().len() <= 2;
    let update = c.request("tasks/update", json!({"taskId": id, "inputResponses": {}})).await;
    assert!(ack(&update), "{update}");
    let cancel = c.request("tasks/cancel", json!({"taskId": id})).await;
    assert!(ack(&cancel), "{cancel}");
    let got = c.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(got["result"]["status"], "cancelled", "{got}");
    let again = c.request("tasks/cancel", json!({"taskId": id})).await;
    assert!(ack(&again), "{again}");
    let rows = mcp_gate::store::audit::tail(&a.store, 10_000).await.unwrap();
    let of = |event: &str| rows.iter().filter(|r| r.event == event && r.detail["task"] == id.as_str()).count();
    assert_eq!((of("task_created"), of("task_cancelled")), (1, 1), "{rows:?}");
    assert!(rows.iter().any(|r| r.event == "task_created" && r.detail["era"] == "modern"), "{rows:?}");
    let unknown = c.request("tasks/get", json!({"taskId": "mcpg-00000000000000000000000000000000"})).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");

    let created = c.request("tools/call", json!({"name": "test_simple_text", "arguments": {"n": 3}})).await;
    let id = created["result"]["taskId"].as_str().unwrap().to_owned();
    let approval = created["result"]["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();
    a.decide(&approval, &Principal::named("carol"), false, None, Some("not today".into())).await.unwrap();
    let ended = until_ended(&mut c, &id).await;
    assert_eq!(ended["result"]["status"], "completed", "a denial is completed, never failed: {ended}");
    assert_eq!(ended["result"]["result"]["isError"], true);
    assert!(ended["result"]["result"]["content"][0]["text"].as_str().unwrap().contains("not today"));
    c.validate();
}

#[tokio::test]
async fn without_the_extension_there_is_no_task_and_its_methods_are_refused() {
    let dir = scratch("tasks-2026-none");
    let a = approvals().await;
    let mut c = peer(&a, &dir).await;
    let created = c.request("tools/call", json!({"name": "test_simple_text", "arguments": {"n": 4}})).await;
    let id = created["result"]["taskId"].as_str().unwrap().to_owned();
    c.capabilities = json!({});
    let refused = c.request("tasks/get", json!({"taskId": id})).await;
    assert_eq!(refused["error"]["code"], -32021, "{refused}");
    assert!(refused["error"]["data"]["requiredCapabilities"]["extensions"][EXTENSION].is_object(), "{refused}");
    // The 2025-11-25 `task` param is ignored: a plain (pending) result.
    let plain = c
        .request("tools/call", json!({"name": "test_simple_text", "arguments": {"n": 5}, "task": {"ttl": 1000}}))
        .await;
    assert!(plain["result"].get("taskId").is_none(), "{plain}");
    assert_eq!(plain["result"]["_meta"]["mcp-gate/approval"]["status"], "pending", "{plain}");
    c.validate();
}

/// A `subscriptions/listen` filter reaches the upstream without the gate's own task ids (they
/// are not the upstream's); the upstream's ids and the rest of the filter pass unchanged, and a
/// list left empty goes.
#[tokio::test]
async fn gate_task_ids_never_reach_the_upstream_in_a_listen_filter() {
    let dir = scratch("tasks-2026-listen");
    let a = approvals().await;
    let mut c = peer(&a, &dir).await;
    let created = c.request("tools/call", json!({"name": "test_simple_text", "arguments": {"n": 7}})).await;
    let ours = created["result"]["taskId"].as_str().unwrap().to_owned();
    assert!(ours.starts_with("mcpg-"), "{created}");
    let filter = json!({"toolsListChanged": true, "taskIds": [ours, "upstream-task-1"]});
    c.send_request("subscriptions/listen", json!({"notifications": filter})).await;
    let only_ours = json!({"toolsListChanged": true, "taskIds": [ours]});
    c.send_request("subscriptions/listen", json!({"notifications": only_ours})).await;
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {"message": "after-listen"}})).await;
    assert!(r["result"]["content"].is_array(), "{r}");
    let log = upstream_log(&dir, "fx", "after-listen").await;
    let listens: Vec<&Value> = log.iter().filter(|m| m["method"] == "subscriptions/listen").collect();
    assert_eq!(listens.len(), 2, "{log:?}");
    assert_eq!(
        listens[0]["params"]["notifications"],
        json!({"toolsListChanged": true, "taskIds": ["upstream-task-1"]})
    );
    assert_eq!(listens[1]["params"]["notifications"], json!({"toolsListChanged": true}));
    assert!(!listens.iter().any(|m| m.to_string().contains("mcpg-")), "{listens:?}");
}

/// A client first answered with `input_required` (it did not declare the extension on that
/// request) retries with the proxy's `requestState` and its answer, now declaring the
/// extension: the call becomes a task, and when it runs, the proxy's own state and answer must
/// not reach the upstream (README: "The proxy's own state and answer never reach the upstream").
#[tokio::test]
async fn a_task_made_from_an_input_required_retry_sends_the_upstream_none_of_the_proxy_state() {
    let dir = scratch("tasks-2026-state");
    let a = approvals().await;
    let fx = recorded("fx", &fixture_bin().display().to_string(), &["stdio"], &dir);
    let mut c = Peer::start(MODERN, vec![fx], Arc::new(ApprovalGate { approvals: a.clone() })).await;
    let args = json!({"n": "state-then-task"});
    let first = c.request("tools/call", json!({"name": "test_simple_text", "arguments": args})).await;
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    let state = first["result"]["requestState"].as_str().unwrap().to_owned();

    c.capabilities["extensions"] = json!({ EXTENSION: {} });
    let answer = json!({"mcp-gate/approval": {"action": "accept"}});
    let retry = json!({"name": "test_simple_text", "arguments": args, "requestState": state, "inputResponses": answer});
    let created = c.request("tools/call", retry).await;
    assert_eq!(created["result"]["resultType"], "task", "{created}");
    let id = created["result"]["taskId"].as_str().unwrap().to_owned();
    let approval = created["result"]["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();
    a.decide(&approval, &Principal::named("alice"), true, None, None).await.unwrap();
    let ended = until_ended(&mut c, &id).await;
    assert_eq!(ended["result"]["status"], "completed", "{ended}");

    let log = upstream_log(&dir, "fx", "test_simple_text").await;
    let sent: Vec<&Value> = log.iter().filter(|m| m["params"]["name"] == "test_simple_text").collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0]["params"].get("requestState").is_none(), "the proxy's state went upstream: {}", sent[0]);
    assert!(sent[0]["params"].get("inputResponses").is_none(), "the proxy's answer went upstream: {}", sent[0]);
    c.validate();
}
