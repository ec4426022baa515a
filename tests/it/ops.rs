//! Operations: the probes of both servers (`/healthz`, `/readyz`) and the metrics of the
//! approval server (`/metrics`), run on the real binary.

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
    assert_eq!(get(&format!("{}/metrics", gate.approvals), None, None).await.0, 404, "metrics are off by default");
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

const METRICS_TOKEN: &str = "metrics-scraper-token-0123";
const APPROVER: &str = "approver-token-for-metrics-0123";

/// The value of one series (its name and labels as rendered) in a scrape.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `[metrics] enabled = true` with a token: a scrape after a few calls counts them by decision,
/// the pending requests, the approval latency and the open session; without the token, 401.
#[tokio::test]
async fn metrics_count_the_calls_by_decision() {
    let dir = data_dir("metrics");
    let config = dir.join("metrics.toml");
    std::fs::write(
        &config,
        "[metrics]\nenabled = true\ntoken_env = \"OPS_METRICS_TOKEN\"\n\n\
         [[rules]]\nname = \"fine\"\ntool = \"test_simple_text\"\naction = \"allow\"\n\n\
         [[rules]]\nname = \"no\"\ntool = \"test_image_content\"\naction = \"deny\"\nreason = \"no images\"\n\n\
         [[rules]]\nname = \"ask\"\ntool = \"echo\"\naction = \"approve\"\n",
    )
    .unwrap();
    let mut cmd = gate_in(&dir);
    cmd.env("OPS_METRICS_TOKEN", METRICS_TOKEN).env("MCP_GATE_TOKEN", APPROVER).env("MCP_GATE_WAIT_SECS", "0");
    cmd.args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--"])
        .arg(fixture_bin())
        .arg("stdio");
    let mut served = start(cmd).await;
    let http = reqwest::Client::new();
    let post = |session: Option<&str>, body: Value| {
        let mut req = http
            .post(format!("{}/mcp", served.mcp))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("mcp-protocol-version", "2025-11-25")
            .body(body.to_string());
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        async move { within("POST /mcp", req.send()).await.unwrap() }
    };
    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "metrics-test", "version": "1"}}});
    let init = post(None, initialize).await;
    let session = init.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    init.bytes().await.unwrap();
    post(Some(&session), serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    let call = |id: u64, tool: &str, arguments: Value| {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        let sent = post(Some(&session), body);
        async move { sent.await.text().await.unwrap() }
    };
    call(2, "test_simple_text", serde_json::json!({})).await;
    call(3, "test_simple_text", serde_json::json!({})).await;
    call(4, "test_image_content", serde_json::json!({})).await;
    let held = call(5, "echo", serde_json::json!({"message": "hi"})).await;
    assert!(held.contains("pending"), "{held}");
    // Two readings of one call (a duplicate key): refused before the policy judges it.
    let twice = r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","name":"test_simple_text"}}"#;
    let resp = within(
        "POST /mcp",
        http.post(format!("{}/mcp", served.mcp))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-session-id", &session)
            .body(twice)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);

    let scrape = |token: Option<&str>| {
        let mut req = reqwest::Client::new().get(format!("{}/metrics", served.approvals));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { within("scrape", req.send()).await.unwrap() }
    };
    let refused = scrape(None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(scrape(Some("wrong-token-wrong-token")).await.status(), 401);
    let resp = scrape(Some(METRICS_TOKEN)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    let calls = |d: &str| series(&text, &format!("mcp_gate_calls_total{{decision=\"{d}\"}}"));
    assert_eq!(
        (calls("allowed"), calls("denied"), calls("held"), calls("refused")),
        (Some(2.0), Some(1.0), Some(1.0), Some(1.0)),
        "{text}"
    );
    assert_eq!(series(&text, "mcp_gate_approvals_pending"), Some(1.0), "{text}");
    assert_eq!(series(&text, "mcp_gate_sessions_open{kind=\"session\"}"), Some(1.0), "{text}");
    let decided = "mcp_gate_approval_decision_seconds_count{decision=\"approved\"}";
    assert_eq!(series(&text, decided), Some(0.0), "{text}");
    assert!(!text.contains(METRICS_TOKEN) && !text.contains(APPROVER), "no secret in the metrics");

    let api = format!("{}/api/v1/approvals", served.approvals);
    let listed: Value =
        http.get(format!("{api}?status=pending")).bearer_auth(APPROVER).send().await.unwrap().json().await.unwrap();
    let id = listed["approvals"][0]["id"].as_str().unwrap().to_owned();
    let resp = http
        .post(format!("{api}/{id}/approve"))
        .bearer_auth(APPROVER)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The decision is observed from the change stream, a moment after the API answered.
    let text = within("the decision is observed", async {
        loop {
            let text = scrape(Some(METRICS_TOKEN)).await.text().await.unwrap();
            if series(&text, decided) == Some(1.0) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(series(&text, "mcp_gate_approvals_pending"), Some(0.0), "{text}");
    let le = |bound: &str| {
        series(&text, &format!("mcp_gate_approval_decision_seconds_bucket{{le=\"{bound}\",decision=\"approved\"}}"))
    };
    assert_eq!(le("+Inf"), Some(1.0), "{text}");
    assert_eq!(le("86400.0"), Some(1.0), "{text}");
    served.child.start_kill().unwrap();
}

/// With `MCP_GATE_LOG_FORMAT=json`, stdout still carries only MCP messages and every line of
/// stderr is a JSON object, the start-up lines and the final error included.
#[tokio::test]
async fn json_logs_keep_stdout_clean_and_every_stderr_line_is_json() {
    let mut child = gate_in(&data_dir("json-logs"))
        .arg("--")
        .arg(fixture_bin())
        .arg("stdio")
        .env("MCP_GATE_LOG_FORMAT", "json")
        .env("MCP_GATE_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut stdin, mut lines) = handshake(&mut child, "json-logs").await;
    let call =
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;
    tokio::io::AsyncWriteExt::write_all(&mut stdin, format!("{call}\n").as_bytes()).await.unwrap();
    let reply = within("the reply", lines.next_line()).await.unwrap().expect("a reply");
    let reply: Value = serde_json::from_str(&reply).expect("stdout holds only JSON-RPC");
    assert_eq!(reply["id"], 2);
    drop(stdin);
    assert!(within("exit", child.wait()).await.unwrap().success());
    while let Some(line) = lines.next_line().await.unwrap() {
        let v: Value = serde_json::from_str(&line).expect("stdout holds only JSON-RPC");
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
    }
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).await.unwrap();
    let events: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    assert!(events.len() > 3, "{stderr}");
    assert!(events.iter().all(|e| e["timestamp"].is_string() && e["level"].is_string()), "{stderr}");
    let said = |start: &str| events.iter().any(|e| e["message"].as_str().is_some_and(|m| m.starts_with(start)));
    assert!(said("mcp-gate: approvals at http://127.0.0.1:"), "the start-up line is an event: {stderr}");
    assert!(events.iter().any(|e| e["level"] == "DEBUG"), "MCP_GATE_LOG applies: {stderr}");

    // The error that stops the process is an event too.
    let out = gate_in(&data_dir("json-fatal"))
        .args(["serve", "--listen", "127.0.0.1:0", "--", "no-such-command-anywhere"])
        .env("MCP_GATE_LOG_FORMAT", "json")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: Value = serde_json::from_str(stderr.lines().last().unwrap()).expect("a JSON line");
    assert_eq!(last["level"], "ERROR");
    assert!(last["message"].as_str().unwrap().contains("no-such-command-anywhere"), "{stderr}");

    // A format it does not know stops it at once, naming the variable.
    let out = gate_in(&data_dir("json-bad")).arg("check-config").env("MCP_GATE_LOG_FORMAT", "xml").output().await;
    let out = out.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MCP_GATE_LOG_FORMAT=\"xml\""));
}

/// `[log] format = "json"` in the configuration file does what the variable does; the variable
/// wins over it; a wrong value is an error naming the key.
#[tokio::test]
async fn the_log_format_can_come_from_the_file() {
    let dir = data_dir("log-file");
    let config = dir.join("log.toml");
    std::fs::write(&config, "[log]\nformat = \"json\"\n").unwrap();
    // A stdio run whose client closes its stdin at once: it starts, logs, and exits.
    let run = |format: Option<&str>| {
        let mut cmd = gate_in(&dir);
        cmd.arg("--config").arg(&config).arg("--").arg(fixture_bin()).arg("stdio").stdin(Stdio::null());
        if let Some(f) = format {
            cmd.env("MCP_GATE_LOG_FORMAT", f);
        }
        async move { within("a stdio run", cmd.output()).await.unwrap() }
    };
    let out = run(None).await;
    assert!(out.status.success() && out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().count() > 2, "{stderr}");
    for line in stderr.lines() {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(event["level"].is_string(), "{line}");
    }
    let out = run(Some("text")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().all(|l| serde_json::from_str::<Value>(l).is_err()), "the variable wins: {stderr}");

    let check = || {
        let mut cmd = gate_in(&dir);
        cmd.args(["check-config", "--config"]).arg(&config);
        async move { within("check-config", cmd.output()).await.unwrap() }
    };
    std::fs::write(&config, "[log]\nformat = \"xml\"\n").unwrap();
    let out = check().await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`log.format`"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The commented `[log]` and `[metrics]` examples of `proxy.toml`, uncommented, are valid and do
/// what they say.
#[tokio::test]
async fn the_operations_examples_of_proxy_toml_validate() {
    let proxy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    let start = proxy.find("# Operations.").expect("the operations section of proxy.toml");
    let section = &proxy[start..];
    let section = &section[..section.find("# -----").expect("the next section")];
    let uncommented: String = section
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.contains("[log]") && uncommented.contains("[metrics]"), "{uncommented}");
    let dir = data_dir("ops-example");
    let file = dir.join("ops.toml");
    std::fs::write(&file, &uncommented).unwrap();
    let out = gate_in(&dir)
        .args(["check-config", "--config"])
        .arg(&file)
        .env("MCP_GATE_METRICS_TOKEN", METRICS_TOKEN)
        .env("MCP_GATE_LOG_FORMAT", "text")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{uncommented}\n{stderr}");
    assert!(
        stderr.contains(
            "metrics: http://127.0.0.1:0/metrics, bearer token from metrics.token_env (MCP_GATE_METRICS_TOKEN)"
        ),
        "{stderr}"
    );
}

/// A workflow that is not defined is an error naming the key that names it: the rule's
/// `workflow`, or `policy.default_workflow` (not a rule at all).
#[tokio::test]
async fn an_undefined_workflow_names_the_key_that_uses_it() {
    let dir = data_dir("undefined-workflow");
    let cases = [
        ("[policy]\ndefault_workflow = \"nosuch\"\n", "`policy.default_workflow`"),
        (
            "[[rules]]\ntool = \"a\"\naction = \"allow\"\n[[rules]]\ntool = \"b\"\naction = \"approve\"\nworkflow = \"nosuch\"\n",
            "`rules[1].workflow`",
        ),
    ];
    for (i, (toml, key)) in cases.into_iter().enumerate() {
        let file = dir.join(format!("wf-{i}.toml"));
        std::fs::write(&file, toml).unwrap();
        let out = gate_in(&dir).arg("check-config").arg("--config").arg(&file).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(&file.display().to_string()) && stderr.contains(key), "{key}: {stderr}");
        assert!(stderr.contains("\"nosuch\""), "{stderr}");
    }
}
