//! Operations: the probes of both servers (`/healthz`, `/readyz`), run on the real binary.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::binary::{data_dir, gate_in};
use super::common::*;

/// A started `mcp-gate serve`: the MCP endpoint's base (`http://ADDR`) and the approval server's.
struct Running {
    child: Child,
    mcp: String,
    approvals: String,
}

/// `http://0.0.0.0:PORT` is reached at `http://127.0.0.1:PORT`.
fn reachable(url: &str) -> String {
    url.replace("://0.0.0.0:", "://127.0.0.1:")
}

/// Starts `cmd` (a `gate_in` command with `serve` and its arguments) and reads the two addresses
/// it announces.
async fn start(mut cmd: Command) -> Running {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut mcp, mut approvals) = (None, None);
    within("start-up lines", async {
        while mcp.is_none() || approvals.is_none() {
            let line = lines.next_line().await.unwrap().expect("stderr line");
            if let Some(u) = line.strip_prefix("mcp-gate: listening on ") {
                mcp = Some(reachable(u.trim().trim_end_matches("/mcp")));
            }
            if let Some(a) = line.strip_prefix("mcp-gate: approvals at ") {
                approvals = Some(reachable(a.trim().trim_end_matches('/')));
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Running { child, mcp: mcp.unwrap(), approvals: approvals.unwrap() }
}

/// GETs `url` with an optional Host and Origin: the status and the body as JSON (or `Null`).
async fn get(url: &str, host: Option<&str>, origin: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url).timeout(Duration::from_secs(10));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let resp = within("GET", req.send()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Both servers answer the probes without a token; `/readyz` lists its checks; on a loopback
/// listener a foreign Host is refused as on every other route.
#[tokio::test]
async fn both_servers_answer_the_probes() {
    let mut cmd = gate_in(&data_dir("probes"));
    cmd.env("MCP_GATE_HTTP_TOKEN", "a-token-the-probes-do-not-need")
        .args(["serve", "--listen", "127.0.0.1:0", "--name", "files", "--"])
        .arg(fixture_bin())
        .arg("stdio");
    let mut gate = start(cmd).await;
    for base in [&gate.mcp, &gate.approvals] {
        assert_eq!(get(&format!("{base}/healthz"), None, None).await, (200, serde_json::json!({"status": "ok"})));
        let (status, body) = get(&format!("{base}/readyz"), None, None).await;
        assert_eq!(status, 200, "{base}: {body}");
        assert_eq!(body["status"], "ready");
        assert_eq!(body["checks"]["store"], "ok");
        let (status, _) = get(&format!("{base}/healthz"), Some("evil.example"), None).await;
        assert_eq!(status, 403, "{base}: loopback listener, foreign Host");
        let (status, _) = get(&format!("{base}/healthz"), None, Some("http://evil.example")).await;
        assert_eq!(status, 403, "{base}: foreign Origin");
    }
    let (_, body) = get(&format!("{}/readyz", gate.mcp), None, None).await;
    assert_eq!(body["checks"]["upstream files"], "ok", "{body}");
    // The endpoint itself still wants the token.
    let resp = reqwest::Client::new().post(format!("{}/mcp", gate.mcp)).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    gate.child.start_kill().unwrap();
}

/// `/readyz` of `serve` fails, with a reason and no address, while an HTTP upstream's host
/// refuses connections, and while the store does not answer (its file was deleted).
#[tokio::test]
async fn readiness_follows_the_upstream_and_the_store() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let dir = data_dir("ready");
    let mut cmd = gate_in(&dir);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--name", "web", "--", &format!("http://127.0.0.1:{port}/mcp")]);
    let mut gate = start(cmd).await;
    let readyz = format!("{}/readyz", gate.mcp);
    let (status, body) = get(&readyz, None, None).await;
    assert_eq!((status, &body["checks"]["upstream web"]), (200, &Value::from("ok")), "{body}");

    drop(upstream);
    let (status, body) = get(&readyz, None, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["upstream web"], "unreachable: connection refused");
    assert_eq!(body["checks"]["store"], "ok");
    assert!(!body.to_string().contains(&port.to_string()), "the reason names no address: {body}");

    std::fs::remove_file(dir.join("mcp-gate.db")).unwrap();
    for base in [&gate.mcp, &gate.approvals] {
        let (status, body) = get(&format!("{base}/readyz"), None, None).await;
        assert_eq!(status, 503, "{base}: {body}");
        assert_eq!(body["checks"]["store"], "not answering", "{body}");
        assert!(!body.to_string().contains("mcp-gate.db"), "the reason names no path: {body}");
        assert_eq!(get(&format!("{base}/healthz"), None, None).await.0, 200, "alive all the same");
    }
    gate.child.start_kill().unwrap();
}

/// On a non-loopback listener the probes answer whatever the Host (load balancers probe by
/// address), while every other route keeps refusing a Host it does not know, and a foreign
/// Origin is refused everywhere.
#[tokio::test]
async fn on_a_non_loopback_listener_the_probes_answer_any_host() {
    let mut cmd = gate_in(&data_dir("anyhost"));
    cmd.env("MCP_GATE_APPROVALS_LISTEN", "0.0.0.0:0")
        .args(["serve", "--listen", "0.0.0.0:0", "--"])
        .arg(fixture_bin())
        .arg("stdio");
    let mut gate = start(cmd).await;
    let pod = Some("10.1.2.3:8080");
    for base in [&gate.mcp, &gate.approvals] {
        assert_eq!(get(&format!("{base}/healthz"), pod, None).await.0, 200, "{base}");
        assert_eq!(get(&format!("{base}/readyz"), pod, None).await.0, 200, "{base}");
        let (status, _) = get(&format!("{base}/readyz"), pod, Some("http://evil.example")).await;
        assert_eq!(status, 403, "{base}: foreign Origin");
    }
    assert_eq!(get(&format!("{}/mcp", gate.mcp), pod, None).await.0, 403);
    assert_eq!(get(&format!("{}/api/v1/approvals", gate.approvals), pod, None).await.0, 403);
    gate.child.start_kill().unwrap();
}
