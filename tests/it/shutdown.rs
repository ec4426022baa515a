//! Stopping the real binary: exit statuses, held calls and open streams on SIGTERM, and child
//! process groups.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;

use super::binary::{APPROVER_TOKEN, Served, data_dir, gate_in, start_gated};
use super::common::*;

fn signal(child: &tokio::process::Child, sig: Signal) {
    let pid = i32::try_from(child.id().expect("running")).unwrap();
    kill(Pid::from_raw(pid), sig).unwrap();
}

/// stdio mode exits with 128 + the signal's number, as shells expect.
#[tokio::test]
async fn stdio_exits_143_on_sigterm_and_130_on_sigint() {
    for (sig, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let mut running = start_gated(&data_dir("sig")).await;
        signal(&running.child, sig);
        let status = within("exit", running.child.wait()).await.unwrap();
        assert_eq!(status.code(), Some(code), "{sig}");
    }
}

/// `serve` with a held call waiting and a standalone GET stream open: SIGTERM answers the held
/// call with its approval URL, ends the stream and exits 143 well within ten seconds.
#[tokio::test]
async fn serve_stops_on_sigterm_with_a_held_call_and_an_open_stream() {
    let mut cmd = gate_in(&data_dir("serve-stop"));
    cmd.env("MCP_GATE_TOKEN", APPROVER_TOKEN).env("MCP_GATE_WAIT_SECS", "120");
    let served = Served::start(cmd, "stopper").await;
    let (url, session, http) = (&served.url, &served.session, &served.http);
    let mut get = http
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let call = served.post(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "test_image_content", "arguments": {"why": "stop test"}, "_meta": {"progressToken": "p"}}}));
    let held = tokio::spawn(async move { call.await.unwrap().text().await });
    // The call is held (its wait sends progress every few seconds); give it time to get there.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopped_at = std::time::Instant::now();
    let mut child = served.child;
    signal(&child, Signal::SIGTERM);
    let body = within("held call answered", held).await.unwrap().unwrap();
    assert!(body.contains("\"pending\"") && body.contains("/approvals/"), "the approval URL: {body}");
    assert!(!body.contains(APPROVER_TOKEN));
    // The GET stream ends.
    within("GET stream ends", async { while let Ok(Some(_)) = get.chunk().await {} }).await;
    let status = within("exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(stopped_at.elapsed() < Duration::from_secs(10), "stopped in {:?}", stopped_at.elapsed());
}

/// `serve` on SIGTERM commits the audit rows of the calls it answered, even while another
/// process holds the database's write lock past one busy timeout (5 s): the process waits for
/// its store worker, which tries its last group again, instead of ending under it.
#[tokio::test]
async fn serve_keeps_the_audit_rows_of_answered_calls_on_sigterm() {
    let dir = data_dir("serve-term-audit");
    let config = dir.join("allow.toml");
    std::fs::write(&config, "[policy]\ndefault = \"allow\"\n").unwrap();
    let served = Served::start_as(gate_in(&dir), "auditor", None, Some(&config)).await;
    let calls = 6;
    for n in 1..=calls {
        let call = serde_json::json!({"jsonrpc": "2.0", "id": n + 1, "method": "tools/call", "params": {
            "name": "echo", "arguments": {"message": format!("m{n}")}}});
        let body = within("call answered", async { served.post(call).await.unwrap().text().await.unwrap() }).await;
        assert!(body.contains(&format!("m{n}")), "{body}");
        if n == calls - 1 {
            // The last call's row is queued while another process holds the write lock.
            let other = rusqlite::Connection::open(dir.join("mcp-gate.db")).unwrap();
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(6500));
                other.execute_batch("COMMIT").unwrap();
            });
        }
    }
    let mut child = served.child;
    signal(&child, Signal::SIGTERM);
    let status = within("exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(143));
    let db = rusqlite::Connection::open(dir.join("mcp-gate.db")).unwrap();
    let allowed: i64 =
        db.query_row("SELECT count(*) FROM audit WHERE event = 'allowed' AND tool = 'echo'", [], |r| r.get(0)).unwrap();
    assert_eq!(allowed, calls, "every answered call keeps its audit row");
}

/// An upstream behind `sh` whose own child ignores the end of its input is stopped with it.
#[tokio::test]
async fn a_grandchild_of_an_upstream_is_stopped_with_it() {
    let dir = data_dir("pgroup");
    let pid_file = dir.join("grandchild.pid");
    let script = format!(
        "sleep 300 </dev/null >/dev/null 2>&1 & echo $! > '{}'; exec '{}' stdio",
        pid_file.display(),
        fixture_bin().display()
    );
    let mut child = gate_in(&dir)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut stdin, mut lines) = handshake(&mut child, "pgroup").await;
    stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n").await.unwrap();
    within("tools/list", lines.next_line()).await.unwrap().expect("reply");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(alive(pid), "the grandchild runs");
    drop(stdin);
    within("exit", child.wait()).await.unwrap();
    within("grandchild stopped", async {
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
