//! Tests that start the real `mcp-gate` executable.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::common::*;

/// A fresh data directory per test, so tests never share a database or a token.
pub fn data_dir(tag: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mcp-gate-it-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gate() -> Command {
    gate_in(&data_dir("bin"))
}

pub fn gate_in(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(gate_bin());
    cmd.env_remove("MCP_GATE_LOG")
        .env_remove("MCP_GATE_TOKEN")
        .env_remove("MCP_GATE_WAIT_SECS")
        .env("MCP_GATE_DATA_DIR", dir)
        .env("MCP_GATE_APPROVALS_LISTEN", "127.0.0.1:0")
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn check_config_names_the_key_and_the_file() {
    let dir = std::env::temp_dir().join(format!("mcp-gate-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[servers.files]\ncommand = \"x\"\nargz = [\"typo\"]\n").unwrap();
    let out = gate().args(["check-config", "--config"]).arg(&bad).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("argz") && stderr.contains("servers.files"), "{stderr}");
    assert!(out.stdout.is_empty());

    // Start-up fails the same way.
    let out = gate().arg("--config").arg(&bad).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("argz"));

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let out = gate().args(["check-config", "--config", example]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("everything"));
}

/// A wrong value from an `MCP_GATE_SECTION__KEY` variable is blamed on the variable, not on the
/// file, which may not even hold the key.
#[tokio::test]
async fn a_bad_environment_override_names_the_variable() {
    let dir = data_dir("envcfg");
    let file = dir.join("team.toml");
    std::fs::write(&file, "[listen]\nmax_sessions = 8\n").unwrap();
    let out = gate_in(&dir)
        .args(["check-config", "--config"])
        .arg(&file)
        .env("MCP_GATE_LISTEN__MAX_SESSIONS", "many")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MCP_GATE_LISTEN__MAX_SESSIONS") && stderr.contains("listen.max_sessions"), "{stderr}");
    assert!(!stderr.contains("team.toml"), "the file is not to blame: {stderr}");
    // A value of the right type that fails validation, too.
    let out = gate_in(&dir)
        .args(["check-config", "--config"])
        .arg(&file)
        .env("MCP_GATE_LISTEN__MAX_SESSIONS", "0")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MCP_GATE_LISTEN__MAX_SESSIONS") && stderr.contains("must be at least 1"), "{stderr}");
    assert!(!stderr.contains("team.toml"), "the file is not to blame: {stderr}");
}

#[tokio::test]
async fn a_missing_command_fails_at_start_up() {
    let out = gate().args(["--name", "files", "--", "/nonexistent/server-bin", "--flag"]).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`files`") && stderr.contains("/nonexistent/server-bin"), "{stderr}");

    let out =
        gate().args(["serve", "--listen", "127.0.0.1:0", "--", "no-such-command-anywhere"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-command-anywhere"));
}

/// stdout carries only MCP messages; logs (including the upstream's stderr) go to stderr.
#[tokio::test]
async fn stdio_mode_keeps_stdout_clean() {
    let mut child = gate()
        .arg("--")
        .arg(fixture_bin())
        .arg("stdio")
        .env("MCP_GATE_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin
        .write_all(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bin-test","version":"1"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#,
            "\n"
        ).as_bytes())
        .await
        .unwrap();
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let line = within("stdout line", lines.next_line()).await.unwrap().expect("a line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("stdout holds only JSON-RPC");
        if v.get("id").is_some() {
            replies.push(v);
        }
    }
    assert_eq!(replies[0]["result"]["serverInfo"]["name"], "conformance-upstream");
    // Zero config: `echo` is not annotated read-only, so it waits for approval (fail fast).
    let held = &replies[1]["result"];
    assert_eq!(held["isError"], true);
    assert_eq!(held["_meta"]["mcp-gate/approval"]["status"], "pending");
    assert!(held["_meta"]["mcp-gate/approval"]["url"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    drop(stdin);
    let status = within("exit after stdin closes", child.wait()).await.unwrap();
    assert!(status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).await.unwrap();
    assert!(stderr.contains("started"), "logs go to stderr: {stderr}");
}

/// `serve` binds loopback, announces its address, relays, and refuses foreign Host headers.
#[tokio::test]
async fn serve_relays_and_checks_host_and_origin() {
    let mut child = gate()
        .args(["serve", "--listen", "127.0.0.1:0", "--"])
        .arg(fixture_bin())
        .arg("stdio")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = within("listening line", async {
        loop {
            let line = lines.next_line().await.unwrap().expect("stderr line");
            if let Some(url) = line.strip_prefix("mcp-gate: listening on ") {
                return url.trim().to_owned();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let (client, _) = connect_http(&url).await;
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "test_simple_text"));

    let http = reqwest::Client::new();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#;
    let post = |host: Option<&str>, origin: Option<&str>| {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.timeout(Duration::from_secs(10)).send()
    };
    assert_eq!(post(Some("evil.example"), None).await.unwrap().status(), 403);
    assert_eq!(post(None, Some("http://evil.example")).await.unwrap().status(), 403);
    assert_eq!(post(None, Some("http://localhost:5173")).await.unwrap().status(), 200);
    // Without a session, a non-initialize request is refused; an unknown session is 404.
    let resp = http
        .post(&url)
        .header("content-type", "application/json")
        .header("mcp-session-id", "nope")
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    child.start_kill().unwrap();
}

/// Two servers exposed without prefixes that share a tool name: start-up fails naming both.
#[tokio::test]
async fn a_tool_name_collision_names_both_servers() {
    let dir = std::env::temp_dir().join(format!("mcp-gate-collide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("proxy.toml");
    let fixture = fixture_bin().display().to_string();
    std::fs::write(
        &cfg,
        format!(
            "[servers.one]\ncommand = {fixture:?}\nargs = [\"stdio\"]\nprefix = false\n\n[servers.two]\ncommand = {fixture:?}\nargs = [\"stdio\"]\nprefix = false\n"
        ),
    )
    .unwrap();
    let mut child = gate()
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "\n"
        ).as_bytes())
        .await
        .unwrap();
    let out = within("exit on collision", child.wait_with_output()).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("collision") && stderr.contains("`one`") && stderr.contains("`two`"), "{stderr}");
}

/// With a token configured, HTTP clients must present it.
#[tokio::test]
async fn http_requires_the_bearer_token_when_set() {
    let base = http_proxy(options(vec![stdio_server("fx")]), Some("s3cret-token")).await;
    let http = reqwest::Client::new();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#;
    let send = |auth: Option<&str>| {
        let mut req = http
            .post(format!("{base}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let resp = send(None).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(send(Some("Bearer wrong")).await.unwrap().status(), 401);
    assert_eq!(send(Some("Bearer s3cret-token")).await.unwrap().status(), 200);
}

/// The bearer scheme is read in any case; a request with two Authorization headers is refused,
/// whichever of them holds the token.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let base = http_proxy(options(vec![stdio_server("fx")]), Some("s3cret-token")).await;
    let http = reqwest::Client::new();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#;
    let send = |auth: &[&str]| {
        let mut req = http
            .post(format!("{base}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        for a in auth {
            req = req.header("authorization", *a);
        }
        req.send()
    };
    assert_eq!(send(&["BEARER s3cret-token"]).await.unwrap().status(), 200);
    assert_eq!(send(&["Bearer s3cret-token", "Bearer wrong"]).await.unwrap().status(), 401);
    assert_eq!(send(&["Bearer wrong", "Bearer s3cret-token"]).await.unwrap().status(), 401);
    assert_eq!(send(&["Bearer s3cret-token", "Bearer s3cret-token"]).await.unwrap().status(), 401);
}

/// A request whose `Mcp-Protocol-Version` is not a protocol version, or whose body is declared
/// as something else than JSON, gets an error that says so.
#[tokio::test]
async fn a_wrong_version_or_content_type_is_named() {
    let base = http_proxy(options(vec![stdio_server("fx")]), None).await;
    let http = reqwest::Client::new();
    let ping = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
    let send = |version: &str, content_type: &str| {
        http.post(format!("{base}/mcp"))
            .header("content-type", content_type)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", version)
            .header("mcp-method", "ping")
            .body(ping)
            .send()
    };
    for version in ["banana", "2026-7-28", "latest"] {
        let resp = send(version, "application/json").await.unwrap();
        assert_eq!(resp.status(), 400, "{version}");
        let body: serde_json::Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("Mcp-Protocol-Version") && message.contains(version), "{message}");
    }
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let resp = send("2026-07-28", content_type).await.unwrap();
        assert_eq!(resp.status(), 415, "{content_type}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("application/json"), "{body}");
    }
    let resp = send("2026-07-28", "application/json; charset=utf-8").await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// A session belongs to its endpoint for DELETE as for POST and GET: a session of `/mcp/fx` is
/// unknown at `/mcp`.
#[tokio::test]
async fn a_session_is_deleted_only_at_its_endpoint() {
    let base = http_proxy(options(vec![stdio_server("fx")]), None).await;
    let http = reqwest::Client::new();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#;
    let resp = http
        .post(format!("{base}/mcp/fx"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    resp.bytes().await.unwrap();
    let delete = |path: &str| http.delete(format!("{base}{path}")).header("mcp-session-id", &session).send();
    assert_eq!(delete("/mcp").await.unwrap().status(), 404, "not a session of /mcp");
    assert_eq!(delete("/mcp/fx").await.unwrap().status(), 200);
    assert_eq!(delete("/mcp/fx").await.unwrap().status(), 404, "gone");
}

/// A proxy process with its stdin, stdout lines and the approval server's address.
pub(super) struct Running {
    pub(super) child: tokio::process::Child,
    pub(super) stdin: tokio::process::ChildStdin,
    pub(super) lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pub(super) approvals: String,
}

pub(super) const APPROVER_TOKEN: &str = "binary-test-approver-token";

pub(super) async fn start_gated(dir: &std::path::Path) -> Running {
    let mut cmd = gate_in(dir);
    cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN);
    start_gated_with(cmd).await
}

/// Starts `cmd` (a `gate_in` command, with any further options) as a stdio proxy in front of
/// the fixture, and initializes it.
pub(super) async fn start_gated_with(mut cmd: Command) -> Running {
    cmd.arg("--").arg(fixture_bin()).arg("stdio");
    start_upstream(cmd, "crash-test").await
}

/// Starts `cmd` (a `gate_in` command ending with `-- UPSTREAM...`) as a stdio proxy, reads its
/// approval address and initializes it as `client`.
pub(super) async fn start_upstream(mut cmd: Command, client: &str) -> Running {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let approvals = within("approvals line", async {
        loop {
            let line = stderr.next_line().await.unwrap().expect("stderr");
            if let Some(url) = line.strip_prefix("mcp-gate: approvals at ") {
                return url.trim().trim_end_matches('/').to_owned();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let (stdin, lines) = handshake(&mut child, client).await;
    Running { child, stdin, lines, approvals }
}

impl Running {
    pub(super) async fn call(&mut self, id: u64) -> serde_json::Value {
        self.call_with(id, "crash test").await
    }

    /// Calls `test_image_content` (held by the zero-config policy) with `{"why": why}`.
    pub(super) async fn call_with(&mut self, id: u64, why: &str) -> serde_json::Value {
        let line = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "test_image_content", "arguments": {"why": why}}});
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        loop {
            let line = within("call reply", self.lines.next_line()).await.unwrap().expect("reply");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return v["result"].clone();
            }
        }
    }
}

/// Kill -9 with a call pending: after a restart it is still pending, an approval given then
/// is honoured by the retry, nothing runs twice, and the audit chain catches tampering.
#[tokio::test]
async fn pending_approvals_survive_a_crash_and_run_once() {
    let dir = data_dir("crash");
    let mut first = start_gated(&dir).await;
    let held = first.call(2).await;
    let meta = &held["_meta"]["mcp-gate/approval"];
    assert_eq!(meta["status"], "pending");
    let id = meta["id"].as_str().unwrap().to_owned();
    assert!(!held.to_string().contains(APPROVER_TOKEN), "no approving secret in what the model sees");
    first.child.start_kill().unwrap(); // SIGKILL
    first.child.wait().await.unwrap();

    let mut second = start_gated(&dir).await;
    let http = reqwest::Client::new();
    let api = format!("{}/api/v1/approvals", second.approvals);
    let listed: serde_json::Value = http
        .get(format!("{api}?status=pending"))
        .bearer_auth(APPROVER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["approvals"][0]["id"], id, "still pending after the crash");
    let resp = http
        .post(format!("{api}/{id}/approve"))
        .bearer_auth(APPROVER_TOKEN)
        .json(&serde_json::json!({"notes": "after restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let ran = second.call(3).await;
    assert_eq!(ran["content"][0]["type"], "image", "the approved retry ran: {ran}");
    let again = second.call(4).await;
    assert_eq!(again["_meta"]["mcp-gate/approval"]["status"], "pending", "a second retry is held again");
    assert_ne!(again["_meta"]["mcp-gate/approval"]["id"], id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(second.stdin);
    within("exit", second.child.wait()).await.unwrap();

    let verify = || gate_in(&dir).args(["audit", "verify"]).output();
    let out = verify().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tail = gate_in(&dir).args(["audit", "tail", "-n", "50"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&tail.stdout);
    for event in ["requested", "approved", "executed"] {
        assert!(text.contains(&format!("\"{event}\"")), "audit has {event}: {text}");
    }

    // Edit one record behind the proxy's back: verify names it.
    let db = rusqlite::Connection::open(dir.join("mcp-gate.db")).unwrap();
    db.execute_batch("DROP TRIGGER audit_no_update; UPDATE audit SET detail = '{}' WHERE id = 2;").unwrap();
    drop(db);
    let out = verify().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("record 2"), "{stderr}");
}

/// An agent credential that is also an approver credential is refused at start-up, and the
/// error names both keys: the HTTP token and the shared token, an `[[agents]]` token and the
/// shared token, and the HTTP token and the approver-token file of the data directory.
#[tokio::test]
async fn agents_and_approvers_never_share_a_token() {
    let token = "same-token-0123456789abcdef";
    let serve = |dir: &std::path::Path| {
        let mut cmd = gate_in(dir);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--"]).arg(fixture_bin()).arg("stdio");
        cmd
    };
    let refused = |out: std::process::Output, keys: &[&str]| {
        assert!(!out.status.success(), "started with a shared credential");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for key in keys {
            assert!(stderr.contains(key), "{key} not named: {stderr}");
        }
    };

    let out = within(
        "serve",
        serve(&data_dir("clash")).env("MCP_GATE_TOKEN", token).env("MCP_GATE_HTTP_TOKEN", token).output(),
    )
    .await
    .unwrap();
    refused(out, &["MCP_GATE_HTTP_TOKEN", "MCP_GATE_TOKEN"]);

    let dir = data_dir("clash");
    let config = dir.join("agents.toml");
    let hash: String = mcp_gate::identity::sha256(token).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&config, format!("[[agents]]\nname = \"bot\"\ntoken_sha256 = \"{hash}\"\n")).unwrap();
    let out = within(
        "check-config",
        gate_in(&dir).args(["check-config", "--config"]).arg(&config).env("MCP_GATE_TOKEN", token).output(),
    )
    .await
    .unwrap();
    refused(out, &["agents[0]", "MCP_GATE_TOKEN"]);

    // The shared token of the data directory, found only at start-up.
    let dir = data_dir("clash");
    std::fs::write(dir.join("approver-token"), format!("{token}\n")).unwrap();
    let out = within("serve", serve(&dir).env("MCP_GATE_HTTP_TOKEN", token).output()).await.unwrap();
    refused(out, &["MCP_GATE_HTTP_TOKEN", "approver-token"]);
}

/// `mcp-gate serve` in front of the fixture, with one 2025-11-25 session initialized.
pub(super) struct Served {
    pub(super) child: tokio::process::Child,
    pub(super) url: String,
    pub(super) approvals: String,
    pub(super) session: String,
    pub(super) http: reqwest::Client,
    /// The bearer token the client sends (an `[[agents]]` token), if any.
    pub(super) token: Option<String>,
}

impl Served {
    /// Starts `cmd` (a `gate_in` command, with any further options) as `serve` on a free port and
    /// initializes a session as `client`.
    pub(super) async fn start(cmd: Command, client: &str) -> Served {
        Served::start_as(cmd, client, None, None).await
    }

    /// [`Served::start`] with a configuration file, for a client that sends `token` as its
    /// bearer token.
    pub(super) async fn start_as(
        mut cmd: Command,
        client: &str,
        token: Option<&str>,
        config: Option<&std::path::Path>,
    ) -> Served {
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let mut child =
            cmd.arg("--").arg(fixture_bin()).arg("stdio").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut url, mut approvals) = (None, None);
        within("start-up lines", async {
            while url.is_none() || approvals.is_none() {
                let line = lines.next_line().await.unwrap().expect("stderr line");
                if let Some(u) = line.strip_prefix("mcp-gate: listening on ") {
                    url = Some(u.trim().to_owned());
                }
                if let Some(a) = line.strip_prefix("mcp-gate: approvals at ") {
                    approvals = Some(a.trim().trim_end_matches('/').to_owned());
                }
            }
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (url, approvals) = (url.unwrap(), approvals.unwrap());
        let mut served = Served {
            child,
            url,
            approvals,
            session: String::new(),
            http: reqwest::Client::new(),
            token: token.map(str::to_owned),
        };
        let (session, init) = served.open_session(client).await;
        init.bytes().await.unwrap();
        served.session = session;
        served
    }

    /// Opens a session on this server as `client` (with this client's token), and sends
    /// `notifications/initialized` in it: its id and the `initialize` response.
    pub(super) async fn open_session(&self, client: &str) -> (String, reqwest::Response) {
        let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": client, "version": "1"}}});
        let init = self.request(None, initialize).await.unwrap();
        let session = init.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.request(Some(&session), initialized).await.unwrap();
        (session, init)
    }

    /// POSTs a message in the session.
    pub(super) fn post(
        &self,
        body: serde_json::Value,
    ) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
        self.request(Some(&self.session), body)
    }

    /// POSTs a message in `session` (none: outside any session).
    pub(super) fn request(
        &self,
        session: Option<&str>,
        body: serde_json::Value,
    ) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
        let mut request = self.http.post(&self.url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session).header("mcp-protocol-version", "2025-11-25");
        }
        request
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string())
            .send()
    }
}
