//! Several `mcp-gate serve` replicas sharing one PostgreSQL database: a decision made through
//! any replica reaches a call held on another at once, identical calls make one request, and a
//! replica's death loses nothing.
//!
//! Needs a PostgreSQL cluster: `MCP_GATE_TEST_POSTGRES` (a role that may create databases; the
//! test command starts a throw-away cluster, see `scripts/postgres.sh`). Without it these tests
//! say so and pass, unless `MCP_GATE_REQUIRE_POSTGRES` is set (as the test command does).

use std::time::{Duration, Instant};

use super::binary::{APPROVER_TOKEN, Served, data_dir, gate_in};
use super::caller_gone::{api_get, approve, pending_id, status_of};
use super::common::*;

/// A new database on the test cluster, as a connection string; `None` when no cluster is given.
async fn fresh_database() -> Option<String> {
    let admin = match std::env::var("MCP_GATE_TEST_POSTGRES") {
        Ok(a) if !a.is_empty() => a,
        _ if std::env::var_os("MCP_GATE_REQUIRE_POSTGRES").is_some() => {
            panic!("MCP_GATE_REQUIRE_POSTGRES is set but MCP_GATE_TEST_POSTGRES is not")
        }
        _ => {
            eprintln!("skipped: no PostgreSQL cluster (set MCP_GATE_TEST_POSTGRES)");
            return None;
        }
    };
    let name = format!("mcpg_replicas_{}_{}", std::process::id(), rand_suffix());
    let url = tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("connecting to the test cluster");
        client.batch_execute(&format!("CREATE DATABASE {name}")).expect("creating the test database");
        let (base, _) = admin.rsplit_once('/').expect("a postgres:// URL");
        format!("{base}/{name}")
    })
    .await
    .unwrap();
    Some(url)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() % 1_000_000_000
}

/// A replica on `database`, waiting up to `wait_secs` for a decision on a held call. Its session
/// is the same client's on every replica (as one agent behind a load balancer): an approval is
/// that agent's, whichever replica its calls land on.
async fn replica(database: &str, tag: &str, wait_secs: u32) -> Served {
    let mut cmd = gate_in(&data_dir(tag));
    cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN)
        .env("MCP_GATE_WAIT_SECS", wait_secs.to_string())
        .env("MCP_GATE_DATABASE", database);
    Served::start(cmd, "replica-test").await
}

fn call(id: u64, why: &str) -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "test_image_content", "arguments": {"why": why}}})
}

/// The JSON-RPC result in a reply body (plain JSON or one SSE event).
fn result_of(body: &str) -> serde_json::Value {
    let json = body.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or(body);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["result"].clone()
}

/// A call held on replica A is approved through replica B's API and completes on A within a
/// moment of the approval, though A waits up to a minute: A heard of it, it did not poll.
#[tokio::test]
async fn a_call_held_on_one_replica_is_approved_through_another() {
    let Some(db) = fresh_database().await else { return };
    let a = replica(&db, "replica-a", 60).await;
    let b = replica(&db, "replica-b", 60).await;
    let held = tokio::spawn(a.post(call(2, "across replicas")));
    let id = pending_id(&b.approvals).await;
    let approved_at = Instant::now();
    approve(&b.approvals, &id).await;
    let body = within("the held call", held).await.unwrap().unwrap().text().await.unwrap();
    let woken_after = approved_at.elapsed();
    assert_eq!(result_of(&body)["content"][0]["type"], "image", "the call ran on A: {body}");
    assert!(woken_after < Duration::from_secs(5), "A was woken {woken_after:?} after the approval");
    let ran = status_of(&a.approvals, &id).await;
    assert_eq!((ran["status"].as_str(), ran["uses"].as_u64()), (Some("executed"), Some(1)), "{ran}");
}

/// The same call arriving on two replicas at once makes one pending request.
#[tokio::test]
async fn identical_calls_racing_on_two_replicas_make_one_request() {
    let Some(db) = fresh_database().await else { return };
    let a = replica(&db, "race-a", 0).await;
    let b = replica(&db, "race-b", 0).await;
    for round in 0..5 {
        let why = format!("race {round}");
        let (ra, rb) = tokio::join!(a.post(call(10 + round, &why)), b.post(call(20 + round, &why)));
        let (ra, rb) = (result_of(&ra.unwrap().text().await.unwrap()), result_of(&rb.unwrap().text().await.unwrap()));
        let (ia, ib) = (&ra["_meta"]["mcp-gate/approval"]["id"], &rb["_meta"]["mcp-gate/approval"]["id"]);
        assert!(ia.is_string(), "held on A: {ra}");
        assert_eq!(ia, ib, "one request for both replicas in round {round}");
    }
    let listed = api_get(&a.approvals, "/api/v1/approvals?status=pending&limit=100").await;
    assert_eq!(listed["approvals"].as_array().map(Vec::len), Some(5), "{listed}");
}

/// Replica A is killed with a call held; replica B serves its approval and the client's retry,
/// which runs once.
#[tokio::test]
async fn a_killed_replica_loses_nothing() {
    let Some(db) = fresh_database().await else { return };
    let mut a = replica(&db, "killed-a", 0).await;
    let b = replica(&db, "killed-b", 0).await;
    let held = result_of(&a.post(call(2, "survives a replica")).await.unwrap().text().await.unwrap());
    let id = held["_meta"]["mcp-gate/approval"]["id"].as_str().expect("held").to_owned();
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    approve(&b.approvals, &id).await;
    let ran = result_of(&b.post(call(3, "survives a replica")).await.unwrap().text().await.unwrap());
    assert_eq!(ran["content"][0]["type"], "image", "the retry ran on B: {ran}");
    let again = result_of(&b.post(call(4, "survives a replica")).await.unwrap().text().await.unwrap());
    assert_eq!(again["_meta"]["mcp-gate/approval"]["status"], "pending", "a second retry is held again: {again}");
    assert_ne!(again["_meta"]["mcp-gate/approval"]["id"], id.as_str());
    let ran = status_of(&b.approvals, &id).await;
    assert_eq!((ran["status"].as_str(), ran["uses"].as_u64()), (Some("executed"), Some(1)), "{ran}");

    // The audit log both replicas appended to is one chain.
    let verify = gate_in(&data_dir("killed-verify"))
        .env("MCP_GATE_DATABASE", &db)
        .args(["audit", "verify"])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.contains("audit log intact"), "{said}");
    assert!(!said.contains("postgres@"), "the connection string is not shown: {said}");
}

/// A 2026-07-28 request (no session) to `served`, declaring the tasks extension.
async fn modern(served: &Served, id: u64, method: &str, mut params: serde_json::Value) -> serde_json::Value {
    params["_meta"] = serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
        "io.modelcontextprotocol/clientInfo": {"name": "replica-test", "version": "1"},
    });
    let mut request = served
        .http
        .post(&served.url)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .header("accept", "application/json, text/event-stream");
    if let Some(name) = params["name"].as_str() {
        request = request.header("mcp-name", name);
    }
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let text = within("a 2026-07-28 reply", request.json(&body).send()).await.unwrap().text().await.unwrap();
    let json = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or(&text);
    serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// 2026-07-28 requests carry no session, so they may land on any replica: a call held as a task
/// on replica A is approved through replica B, and polled to its end on B.
#[tokio::test]
async fn a_task_created_on_one_replica_is_followed_to_its_end_on_another() {
    let Some(db) = fresh_database().await else { return };
    let a = replica(&db, "task-a", 0).await;
    let b = replica(&db, "task-b", 0).await;
    let created = modern(&a, 2, "tools/call", serde_json::json!({"name": "test_image_content", "arguments": {}})).await;
    let r = &created["result"];
    assert_eq!((r["resultType"].as_str(), r["status"].as_str()), (Some("task"), Some("working")), "{created}");
    let task = r["taskId"].as_str().unwrap().to_owned();
    let approval = r["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();
    let seen = modern(&b, 3, "tasks/get", serde_json::json!({"taskId": task})).await;
    assert_eq!(seen["result"]["status"], "working", "B sees A's task: {seen}");
    approve(&b.approvals, &approval).await;
    let ended = within("the task ends", async {
        let mut id = 10;
        loop {
            id += 1;
            let got = modern(&b, id, "tasks/get", serde_json::json!({"taskId": task})).await;
            if got["result"]["status"] != "working" {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(ended["result"]["status"], "completed", "{ended}");
    assert_eq!(ended["result"]["result"]["content"][0]["type"], "image", "the call ran once approved: {ended}");
    let ran = status_of(&b.approvals, &approval).await;
    assert_eq!((ran["status"].as_str(), ran["uses"].as_u64()), (Some("executed"), Some(1)), "{ran}");
}
