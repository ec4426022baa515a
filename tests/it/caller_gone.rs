//! A held call belongs to its caller: cancelled or disconnected before the decision, it is not
//! run for anybody, and the approval waits for the identical retry, which runs it once.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::binary::{APPROVER_TOKEN, Running, Served, data_dir, gate_in, start_gated_with};
use super::common::*;

/// `GET {approvals}{path}` on the approval API with the approver token, as JSON.
pub(super) async fn api_get(approvals: &str, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{approvals}{path}"))
        .bearer_auth(APPROVER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub(super) async fn pending_id(approvals: &str) -> String {
    within("a pending request", async {
        loop {
            let listed = api_get(approvals, "/api/v1/approvals?status=pending").await;
            if let Some(id) = listed["approvals"][0]["id"].as_str() {
                return id.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

pub(super) async fn approve(approvals: &str, id: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{approvals}/api/v1/approvals/{id}/approve"))
        .bearer_auth(APPROVER_TOKEN)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

pub(super) async fn status_of(approvals: &str, id: &str) -> serde_json::Value {
    api_get(approvals, &format!("/api/v1/approvals/{id}")).await
}

/// stdio, wait mode: the client cancels the held call, then a person approves. No answer goes
/// to the cancelled id, the approval stays unused, and the identical retry runs once.
#[tokio::test]
async fn cancel_then_approve_runs_only_the_retry_once() {
    let mut cmd = gate_in(&data_dir("cancel"));
    cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN).env("MCP_GATE_WAIT_SECS", "60");
    let mut gate: Running = start_gated_with(cmd).await;
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "test_image_content", "arguments": {"why": "cancel test"}}});
    gate.stdin.write_all(format!("{call}\n").as_bytes()).await.unwrap();
    let id = pending_id(&gate.approvals).await;
    let cancel = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2,"reason":"user"}}"#;
    gate.stdin.write_all(format!("{cancel}\n").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    approve(&gate.approvals, &id).await;
    // Time for a wrongly resumed call to run and answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let approved = status_of(&gate.approvals, &id).await;
    assert_eq!(approved["status"], "approved", "not consumed for the cancelled call: {approved}");
    assert_eq!(approved["uses"], 0, "{approved}");

    let retry = serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "test_image_content", "arguments": {"why": "cancel test"}}});
    gate.stdin.write_all(format!("{retry}\n").as_bytes()).await.unwrap();
    let reply = within("retry reply", async {
        loop {
            let line = gate.lines.next_line().await.unwrap().expect("a line");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_ne!(v["id"], 2, "an answer went to the cancelled request: {v}");
            if v["id"] == 3 {
                return v;
            }
        }
    })
    .await;
    assert_eq!(reply["result"]["content"][0]["type"], "image", "the retry ran: {reply}");
    let ran = status_of(&gate.approvals, &id).await;
    assert_eq!((ran["status"].as_str(), ran["uses"].as_u64()), (Some("executed"), Some(1)), "ran once: {ran}");
}

/// `serve`: the client's connection closes while its call is held, then a person approves. The
/// call does not run for nobody, and the client's identical retry runs it (no new request).
#[tokio::test]
async fn disconnect_then_approve_runs_the_retry_once() {
    let mut cmd = gate_in(&data_dir("disconnect"));
    cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN).env("MCP_GATE_WAIT_SECS", "60");
    let mut served = Served::start(cmd, "leaver").await;
    let approvals = served.approvals.clone();
    let call = |id: u64| {
        serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "test_image_content", "arguments": {"why": "disconnect test"}}})
    };
    // The first call's connection is dropped while the call is held.
    let held = tokio::spawn(served.post(call(2)));
    let id = pending_id(&approvals).await;
    held.abort();
    let _ = held.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    approve(&approvals, &id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let approved = status_of(&approvals, &id).await;
    assert_eq!((approved["status"].as_str(), approved["uses"].as_u64()), (Some("approved"), Some(0)), "{approved}");

    let retry = served.post(call(3)).await.unwrap().text().await.unwrap();
    assert!(retry.contains("\"image\""), "the retry ran: {retry}");
    assert_eq!(status_of(&approvals, &id).await["status"], "executed");
    let _ = served.child.start_kill();
}

/// `serve`: the client ends its session (`DELETE /mcp`) while its call is held, and keeps the
/// call's response stream open. The session is over, so the call stops waiting and is not run
/// for anybody when a person approves it later: the approval stays unused.
#[tokio::test]
async fn delete_session_then_approve_runs_nothing() {
    let mut cmd = gate_in(&data_dir("delete-session"));
    cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN).env("MCP_GATE_WAIT_SECS", "60");
    let mut served = Served::start(cmd, "deleter").await;
    let approvals = served.approvals.clone();
    let held = tokio::spawn(served.post(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "test_image_content", "arguments": {"why": "delete test"}}})));
    let id = pending_id(&approvals).await;
    let deleted = served
        .http
        .delete(&served.url)
        .header("mcp-session-id", &served.session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    approve(&approvals, &id).await;
    // Time for a wrongly resumed call to run and answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let approved = status_of(&approvals, &id).await;
    assert_eq!(
        (approved["status"].as_str(), approved["uses"].as_u64()),
        (Some("approved"), Some(0)),
        "not run for a deleted session: {approved}"
    );
    if let Ok(Ok(Ok(resp))) = tokio::time::timeout(Duration::from_secs(2), held).await {
        let text = tokio::time::timeout(Duration::from_secs(2), resp.text()).await;
        if let Ok(Ok(text)) = text {
            assert!(!text.contains("\"image\""), "the tool's result went to a deleted session: {text}");
        }
    }
    let _ = served.child.start_kill();
}

/// `serve`, 2026-07-28: clients without sessions share the proxy's upstream connections, and the
/// proxy numbers their requests itself (`"mcp-gate-N"`, a counter). A `notifications/cancelled`
/// from another client naming such a number does not abandon a held call that is not its own:
/// the caller still gets its answer once a person approves.
#[tokio::test]
async fn another_clients_cancel_does_not_abandon_a_held_call() {
    let mut cmd = gate_in(&data_dir("foreign-cancel"));
    cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN).env("MCP_GATE_WAIT_SECS", "60");
    let mut served = Served::start(cmd, "setup").await;
    let meta = |name: &str| {
        serde_json::json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": name, "version": "1"}})
    };
    let post = |body: serde_json::Value, method: &str, name: Option<&str>| {
        let mut request = served
            .http
            .post(&served.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method);
        if let Some(name) = name {
            request = request.header("mcp-name", name);
        }
        request.body(body.to_string()).send()
    };
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "test_image_content", "arguments": {"why": "foreign cancel"}, "_meta": meta("victim")}});
    let held = tokio::spawn(post(call, "tools/call", Some("test_image_content")));
    let id = pending_id(&served.approvals).await;
    for n in 0..20 {
        let cancel = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": format!("mcp-gate-{n}"), "_meta": meta("other")}});
        post(cancel, "notifications/cancelled", None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    approve(&served.approvals, &id).await;
    let reply = within("the held caller's answer", async { held.await.unwrap().unwrap().text().await.unwrap() }).await;
    assert!(reply.contains("\"image\""), "the caller's approved call ran for it: {reply}");
    let ran = status_of(&served.approvals, &id).await;
    assert_eq!((ran["status"].as_str(), ran["uses"].as_u64()), (Some("executed"), Some(1)), "ran once: {ran}");
    let _ = served.child.start_kill();
}
