//! `mcp-gate approvals ...` run as subprocesses against a running proxy's approval server.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::binary::{APPROVER_TOKEN, Running, data_dir, gate_in, start_gated};
use super::common::within;

/// `mcp-gate approvals ARGS` against `running`, with the approver token.
fn approvals(dir: &std::path::Path, running: &Running) -> Command {
    let mut cmd = gate_in(dir);
    cmd.arg("approvals").env("MCP_GATE_URL", &running.approvals).env("MCP_GATE_TOKEN", APPROVER_TOKEN);
    cmd
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: Command, args: &[&str]) -> Out {
    let out = within("approvals command", cmd.args(args).stdin(Stdio::null()).output()).await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn held_id(result: &serde_json::Value) -> String {
    let meta = &result["_meta"]["mcp-gate/approval"];
    assert_eq!(meta["status"], "pending", "{result}");
    meta["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn list_show_approve_and_deny_from_the_command_line() {
    let dir = data_dir("cli");
    let mut gate = start_gated(&dir).await;
    let id = held_id(&gate.call_with(2, "first").await);

    let out = run(approvals(&dir, &gate), &["list"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut lines = out.stdout.lines();
    let header = lines.next().unwrap();
    for column in ["ID", "AGE", "AGENT", "SERVER:TOOL", "RULE", "STATUS"] {
        assert!(header.contains(column), "{header}");
    }
    let row = lines.next().expect("one row");
    assert!(row.starts_with(&id) && row.contains("conformance-upstream:test_image_content"), "{row}");
    assert!(row.contains("crash-test") && row.ends_with("pending"), "{row}");

    let out =
        run(approvals(&dir, &gate), &["list", "--json", "--status", "pending", "--tool", "test_image_content"]).await;
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).expect("--json prints the API's JSON");
    assert_eq!(listed["approvals"][0]["id"], id);
    let out = run(approvals(&dir, &gate), &["list", "--status", "approved"]).await;
    assert_eq!(out.stdout, "no approved approval requests\n");

    let out = run(approvals(&dir, &gate), &["show", &id]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with(&format!("{id}  pending\n")), "{}", out.stdout);
    assert!(out.stdout.contains("\"why\": \"first\""), "arguments as pretty JSON: {}", out.stdout);
    assert!(out.stdout.contains("history:") && out.stdout.contains("created -> pending"), "{}", out.stdout);
    let out = run(approvals(&dir, &gate), &["show", &id, "--json"]).await;
    let shown: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["arguments"]["why"], "first");

    // A denial needs a reason: refused by the command line itself.
    let out = run(approvals(&dir, &gate), &["deny", &id]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--reason"), "{}", out.stderr);

    // A wrong token, an unknown id, an unreachable server: the API's code and message, exit 1.
    let mut wrong = approvals(&dir, &gate);
    wrong.env("MCP_GATE_TOKEN", "wrong-token-0123456789");
    let out = run(wrong, &["list"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unauthorized: missing or wrong bearer token"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    let out = run(approvals(&dir, &gate), &["show", "apr_0000000000000000"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not_found: no approval request apr_0000000000000000"), "{}", out.stderr);
    let out = run(approvals(&dir, &gate), &["list", "--url", "http://127.0.0.1:9"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot reach the approval server at http://127.0.0.1:9"), "{}", out.stderr);

    let out = run(approvals(&dir, &gate), &["approve", &id, "--notes", "checked"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, format!("approved {id}\n").as_str()), "{}", out.stderr);
    let ran = gate.call_with(3, "first").await;
    assert_eq!(ran["content"][0]["type"], "image", "the approved call ran: {ran}");
    let out = run(approvals(&dir, &gate), &["approve", &id]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not_pending"), "{}", out.stderr);

    let second = held_id(&gate.call_with(4, "second").await);
    let out = run(approvals(&dir, &gate), &["deny", &second, "--reason", "not on a Friday", "--notes", "n"]).await;
    assert_eq!(out.stdout, format!("denied {second}: not on a Friday\n"), "{}", out.stderr);
    let refused = gate.call_with(5, "second").await;
    assert!(refused.to_string().contains("not on a Friday"), "{refused}");
    let out = run(approvals(&dir, &gate), &["show", &second]).await;
    assert!(out.stdout.contains("pending -> denied  by operator  reason: not on a Friday  notes: n"), "{}", out.stdout);
}

/// Without MCP_GATE_URL and MCP_GATE_TOKEN the command finds the server from `[approvals] listen`
/// in `--config` and reads the token the server stored in the data directory.
#[tokio::test]
async fn the_server_and_token_are_found_like_the_server_finds_them() {
    let dir = data_dir("cli-token");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("gate.toml");
    std::fs::write(&config, format!("[approvals]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    let mut cmd = gate_in(&dir);
    cmd.env_remove("MCP_GATE_APPROVALS_LISTEN").arg("--config").arg(&config);
    let mut gate = super::binary::start_gated_with(cmd).await;
    assert_eq!(gate.approvals, format!("http://127.0.0.1:{port}"));
    let id = held_id(&gate.call_with(2, "token file").await);
    assert!(dir.join("approver-token").exists());

    let mut cmd = gate_in(&dir);
    cmd.env_remove("MCP_GATE_APPROVALS_LISTEN").args(["approvals", "list", "--config"]).arg(&config);
    let out = run(cmd, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&id), "{}", out.stdout);

    // MCP_GATE_APPROVALS_LISTEN wins over the file, as for the server; port 0 cannot be found.
    let mut cmd = gate_in(&dir);
    cmd.args(["approvals", "list", "--config"]).arg(&config);
    let out = run(cmd, &[]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("127.0.0.1:0") && out.stderr.contains("--url"), "{}", out.stderr);

    let other = data_dir("cli-no-token");
    let mut cmd = gate_in(&other);
    cmd.arg("approvals").env("MCP_GATE_URL", &gate.approvals);
    let out = run(cmd, &["list"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no approver token") && out.stderr.contains("MCP_GATE_TOKEN"), "{}", out.stderr);
}

/// A `watch` subprocess with piped stdin, stdout lines and stderr lines.
struct Watch {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn watch(dir: &std::path::Path, running: &Running, args: &[&str]) -> Watch {
    let mut child = approvals(dir, running)
        .arg("watch")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    within("watching line", async {
        loop {
            let line = stderr.next_line().await.unwrap().expect("stderr line");
            if line.starts_with("watching ") {
                break;
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    Watch { child, stdin, stdout }
}

impl Watch {
    async fn line(&mut self) -> String {
        within("a watch line", self.stdout.next_line()).await.unwrap().expect("watch output")
    }
}

#[tokio::test]
async fn watch_prints_changes_and_approves_interactively() {
    let dir = data_dir("cli-watch");
    let mut gate = start_gated(&dir).await;
    let mut quiet = watch(&dir, &gate, &["--no-interactive"]).await;
    let mut asking = watch(&dir, &gate, &["--interactive"]).await;
    asking.stdin.write_all(b"a\n").await.unwrap();

    let id = held_id(&gate.call_with(2, "watched").await);
    for w in [&mut quiet, &mut asking] {
        let line = w.line().await;
        assert!(line.contains(" requested ") && line.contains(&id), "{line}");
        assert!(line.contains("conformance-upstream:test_image_content") && line.contains("/approvals/"), "{line}");
    }
    assert_eq!(asking.line().await, format!("approved {id}"));
    for w in [&mut quiet, &mut asking] {
        let line = w.line().await;
        assert!(line.contains(" approved ") && line.contains(&id) && line.contains("by operator"), "{line}");
    }
    let ran = gate.call_with(3, "watched").await;
    assert_eq!(ran["content"][0]["type"], "image", "approved from the watch: {ran}");
    let line = quiet.line().await;
    assert!(line.contains(" executed ") && line.contains(&id), "{line}");

    for w in [&mut quiet, &mut asking] {
        w.child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await.unwrap().unwrap();
    }
}
