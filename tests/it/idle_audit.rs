//! stdio mode's audit writer (`store::idle`): the rows of the calls the policy decides on its own
//! are committed by the event loop when it sleeps with no call in flight, by the store's worker
//! after `FALLBACK`, and at exit by `idle::close`. Every decided call keeps its row, in order.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::binary::{data_dir, gate_in};
use super::common::*;

const TOKEN: &str = "idle-audit-approver-token";

fn raw_bin() -> String {
    fixture_bin().with_file_name("raw-upstream").display().to_string()
}

/// A policy that allows everything but deletes, in front of one recording upstream.
fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("proxy.toml");
    let text = format!(
        "[policy]\ndefault = \"allow\"\n\n[[rules]]\nname = \"no deletes\"\ntool = \"delete_*\"\naction = \"deny\"\nreason = \"deletes are not allowed\"\n\n[servers.raw]\ncommand = {:?}\n",
        raw_bin()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

struct Proxy {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: ChildLines,
    dir: std::path::PathBuf,
}

impl Proxy {
    async fn start(dir: std::path::PathBuf, cfg: &std::path::Path) -> Proxy {
        Proxy::start_with(dir, cfg, &[]).await
    }

    async fn start_with(dir: std::path::PathBuf, cfg: &std::path::Path, env: &[(&str, &str)]) -> Proxy {
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut child = gate_in(&dir)
            .env("MCP_GATE_LOG", "debug")
            .env("MCP_GATE_TOKEN", TOKEN)
            .envs(env.iter().copied())
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let (stdin, lines) = handshake(&mut child, "idle-audit").await;
        let mut proxy = Proxy { child, stdin: Some(stdin), lines, dir };
        let list = proxy.request(r#"{"jsonrpc":"2.0","id":"list","method":"tools/list"}"#, &json!("list")).await;
        assert!(list["result"]["tools"].is_array(), "{list}");
        proxy
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
    }

    async fn next(&mut self) -> Value {
        let line = within("a line from the proxy", self.lines.next_line()).await.unwrap().expect("proxy stdout open");
        serde_json::from_str(&line).unwrap()
    }

    async fn request(&mut self, line: &str, id: &Value) -> Value {
        self.send(line).await;
        loop {
            let v = self.next().await;
            if &v["id"] == id && v.get("method").is_none() {
                return v;
            }
        }
    }

    /// Calls `tool` with id `n`: allowed unless it is a delete.
    async fn call(&mut self, n: u64, tool: &str) -> Value {
        self.request(&call_line(n, tool), &json!(n)).await
    }

    /// Closes stdin and waits for the process to end.
    async fn close(mut self) -> std::path::PathBuf {
        drop(self.stdin.take());
        within("exit", self.child.wait()).await.unwrap();
        self.dir
    }
}

/// Audit rows `(id, event, tool, n)` in id order, read by a connection of the test's own.
fn rows(dir: &std::path::Path) -> Vec<(i64, String, String, Value)> {
    let Ok(db) =
        rusqlite::Connection::open_with_flags(dir.join("mcp-gate.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut stmt) = db.prepare("SELECT id, event, tool, detail FROM audit ORDER BY id") else { return Vec::new() };
    stmt.query_map([], |r| {
        let detail: String = r.get(3)?;
        let detail: Value = serde_json::from_str(&detail).unwrap_or(Value::Null);
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, detail["arguments"]["n"].clone()))
    })
    .map(|rows| rows.filter_map(Result::ok).collect())
    .unwrap_or_default()
}

/// The `n` of the decided calls' rows, in id order.
fn numbers(dir: &std::path::Path) -> Vec<u64> {
    rows(dir)
        .into_iter()
        .filter(|r| r.1 == "allowed" || r.1 == "denied_by_policy")
        .filter_map(|r| r.3.as_u64())
        .collect()
}

/// A `tools/call` of `tool` with id `n`, as a line.
fn call_line(n: u64, tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": tool, "arguments": {"n": n}}})
        .to_string()
}

/// A `tools/call` of `read_file` with id `n`, as a line.
fn read_file(n: u64) -> String {
    call_line(n, "read_file")
}

/// A gate in a fresh data directory with `in_flight` calls sent and not yet answered; returns
/// the directory, the gate and the next id.
async fn loaded(tag: &str, in_flight: u64) -> (std::path::PathBuf, Proxy, u64) {
    let dir = data_dir(tag);
    let cfg = write_config(&dir);
    let mut proxy = Proxy::start(dir.clone(), &cfg).await;
    for n in 1..=in_flight {
        proxy.send(&read_file(n)).await;
    }
    (dir, proxy, in_flight + 1)
}

/// Deletes the database file with its WAL and shared-memory files.
fn delete_database(dir: &std::path::Path) {
    let db = dir.join("mcp-gate.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

async fn verify(dir: &std::path::Path) {
    let out = gate_in(dir).args(["audit", "verify"]).output().await.unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("intact"), "{said}");
}

#[tokio::test]
async fn stdin_closed_right_after_calls_keeps_every_row_in_order() {
    for round in 0..5 {
        let dir = data_dir("idle-eof");
        let cfg = write_config(&dir);
        let mut proxy = Proxy::start(dir, &cfg).await;
        for n in 1..=6 {
            let tool = if n % 3 == 0 { "delete_file" } else { "read_file" };
            proxy.call(n, tool).await;
        }
        let dir = proxy.close().await;
        assert_eq!(numbers(&dir), (1..=6).collect::<Vec<_>>(), "round {round}");
        verify(&dir).await;
    }
}

#[tokio::test]
async fn a_row_reaches_disk_while_the_client_stays_idle() {
    let dir = data_dir("idle-idle");
    let cfg = write_config(&dir);
    let mut proxy = Proxy::start(dir.clone(), &cfg).await;
    proxy.call(1, "read_file").await;
    let replied = Instant::now();
    loop {
        if numbers(&dir) == [1] {
            break;
        }
        // Bound: the worker's 500 ms fallback, with room for a loaded machine; without it the row
        // would wait for the process to end.
        assert!(replied.elapsed() < Duration::from_secs(3), "no row on disk after {:?}", replied.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(proxy.child.try_wait().unwrap().is_none(), "still running");
    proxy.close().await;
}

/// At exit the event loop's connection has no busy timeout: while another process holds the
/// write lock for a moment, the rows still queued must wait for it, not be dropped.
#[tokio::test]
async fn rows_queued_at_exit_survive_another_process_holding_the_write_lock() {
    let dir = data_dir("idle-exit-busy");
    let cfg = write_config(&dir);
    let mut proxy = Proxy::start(dir.clone(), &cfg).await;
    proxy.call(1, "read_file").await;
    proxy.call(2, "delete_file").await;
    let other = rusqlite::Connection::open(dir.join("mcp-gate.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        other.execute_batch("COMMIT").unwrap();
    });
    let dir = proxy.close().await;
    holder.join().unwrap();
    assert_eq!(numbers(&dir), [1, 2], "rows lost at exit");
    verify(&dir).await;
}

#[tokio::test]
async fn sigterm_mid_stream_keeps_the_rows_of_the_calls_answered() {
    let dir = data_dir("idle-term");
    let cfg = write_config(&dir);
    let mut proxy = Proxy::start(dir.clone(), &cfg).await;
    let mut answered = Vec::new();
    for n in 1..=20 {
        proxy.call(n, "read_file").await;
        answered.push(n);
    }
    let pid = proxy.child.id().unwrap();
    // A few more in flight when the signal arrives.
    for n in 21..=24 {
        proxy.send(&read_file(n)).await;
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    within("exit", proxy.child.wait()).await.unwrap();
    let got = numbers(&dir);
    assert_eq!(&got[..20], &answered[..], "{got:?}");
    // Whatever of the rest was decided is there once, in order.
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, got);
    verify(&dir).await;
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether the upstream ran the call (the recording upstream echoes what it received).
fn ran(reply: &Value) -> bool {
    reply["result"]["received"].is_string()
}

/// The database deleted while the client is idle (nothing queued, so nothing checks the file
/// before the loop sleeps): the next call must not run, since its row could only be dropped.
#[tokio::test]
async fn a_call_after_the_database_was_deleted_during_idle_time_does_not_run() {
    let dir = data_dir("idle-deleted");
    let cfg = write_config(&dir);
    let mut proxy = Proxy::start(dir.clone(), &cfg).await;
    assert!(ran(&proxy.call(1, "read_file").await));
    // The row is committed (by the worker after FALLBACK): the queue is empty again.
    within("row 1", async {
        while numbers(&dir) != [1] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    delete_database(&dir);
    let reply = proxy.call(2, "read_file").await;
    assert!(!ran(&reply), "a call ran while its row could only be dropped: {reply}");
    proxy.close().await;
}

/// The database deleted while calls are always in flight: calls are refused within a few
/// loop rounds (the identity is checked every 15 ms while rows are queued).
#[tokio::test]
async fn calls_in_flight_are_refused_soon_after_the_database_is_deleted() {
    // Four in flight at all times.
    let (dir, mut proxy, mut next) = loaded("idle-deleted-busy", 4).await;
    let mut deleted: Option<Instant> = None;
    let mut ran_after = 0;
    loop {
        let v = proxy.next().await;
        if v.get("id").is_none() {
            continue;
        }
        if deleted.is_none() && next == 200 {
            delete_database(&dir);
            deleted = Some(Instant::now());
        }
        if let Some(at) = deleted {
            if ran(&v) {
                ran_after += 1;
            } else {
                let took = at.elapsed();
                eprintln!("refused {took:?} after the deletion; {ran_after} calls answered in between");
                // Found by the loop's 15 ms check, not the worker's 2 s tick.
                assert!(took < Duration::from_millis(1500), "{took:?}");
                break;
            }
        }
        proxy.send(&read_file(next)).await;
        next += 1;
    }
    proxy.close().await;
}

/// Sixteen calls always in flight, never quiet: the worker commits the rows after FALLBACK,
/// so a row is on disk within about a second while the load goes on.
#[tokio::test]
async fn rows_reach_disk_under_continuous_load() {
    let (dir, mut proxy, mut next) = loaded("idle-load", 16).await;
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut last_seen = 0usize;
    let mut since_growth = Instant::now();
    let mut rss_start = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let v = proxy.next().await;
        assert!(ran(&v), "{v}");
        proxy.send(&read_file(next)).await;
        next += 1;
        if rss_start == 0 && start.elapsed() > Duration::from_millis(500) {
            rss_start = rss_kib(proxy.child.id().unwrap());
        }
        if next % 50 == 0 {
            let on_disk = numbers(&dir).len();
            if on_disk > last_seen {
                last_seen = on_disk;
                since_growth = Instant::now();
            }
            worst = worst.max(since_growth.elapsed());
        }
    }
    let rss_end = rss_kib(proxy.child.id().unwrap());
    eprintln!(
        "{next} calls; {last_seen} rows seen on disk; longest without new rows {worst:?}; \
         resident {rss_start} KiB after 0.5 s, {rss_end} KiB at the end"
    );
    assert!(rss_end < rss_start + 20 * 1024, "memory grew from {rss_start} KiB to {rss_end} KiB");
    // The load lasts 3 s: rows kept in memory until the end would show about that.
    assert!(worst < Duration::from_millis(1800), "rows stayed in memory for {worst:?}");
    let dir = proxy.close().await;
    let got = numbers(&dir);
    let answered = got.len();
    assert_eq!(got, (1..=answered as u64).collect::<Vec<_>>());
    assert!(answered as u64 >= next - 17, "{answered} of {}", next - 1);
    verify(&dir).await;
}

/// Two stdio gates on one data directory (the first is the hub), both calling: every row of
/// each is there once, in its own order, the chain is intact, and no call waits seconds for the
/// other process's write lock.
#[tokio::test]
async fn two_processes_sharing_a_directory_lose_nothing_and_never_stall() {
    let dir = data_dir("idle-two");
    let cfg = write_config(&dir);
    let mut a = Proxy::start(dir.clone(), &cfg).await;
    let mut b = Proxy::start(dir.clone(), &cfg).await;
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        n += 1;
        for (proxy, base) in [(&mut a, 0u64), (&mut b, 1_000_000)] {
            let t = Instant::now();
            let tool = if n % 7 == 0 { "delete_file" } else { "read_file" };
            proxy.call(base + n, tool).await;
            worst = worst.max(t.elapsed());
        }
        // Some think time now and then, so that both event loops commit.
        if n % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }
    eprintln!("{n} calls each; slowest call {worst:?}");
    a.close().await;
    b.close().await;
    let got = numbers(&dir);
    let of_a: Vec<u64> = got.iter().copied().filter(|&x| x < 1_000_000).collect();
    let of_b: Vec<u64> = got.iter().copied().filter(|&x| x >= 1_000_000).map(|x| x - 1_000_000).collect();
    assert_eq!(of_a, (1..=n).collect::<Vec<_>>());
    assert_eq!(of_b, (1..=n).collect::<Vec<_>>());
    verify(&dir).await;
    // A loop waiting on the other process's lock would wait its busy timeout (5 s).
    assert!(worst < Duration::from_secs(2), "a call waited {worst:?}");
}

/// Held calls approved through the API while allowed calls flow: the durable records of the
/// approval and the deferred rows of the allowed calls are in the order things happened, and the
/// chain is intact.
#[tokio::test]
async fn approvals_and_allowed_rows_interleave_in_order() {
    let dir = data_dir("idle-approve");
    let cfg = write_config(&dir);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replace(
        "[servers.raw]",
        "[[rules]]\nname = \"transfers\"\ntool = \"transfer\"\naction = \"approve\"\n\n[servers.raw]",
    );
    std::fs::write(&cfg, text).unwrap();
    let mut proxy = Proxy::start(dir.clone(), &cfg).await;
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    let url = log
        .lines()
        .find_map(|l| l.strip_prefix("mcp-gate: approvals at "))
        .expect("approvals line")
        .trim()
        .trim_end_matches('/')
        .to_owned();
    for n in 1..=5 {
        assert!(ran(&proxy.call(n, "read_file").await));
    }
    let held = proxy.call(100, "transfer").await;
    let approval = held["result"]["_meta"]["mcp-gate/approval"]["id"].as_str().expect("held").to_owned();
    for n in 6..=10 {
        assert!(ran(&proxy.call(n, "read_file").await));
    }
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/v1/approvals/{approval}/approve"))
        .bearer_auth(TOKEN)
        .json(&json!({"notes": "ok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for n in 11..=15 {
        assert!(ran(&proxy.call(n, "read_file").await));
    }
    assert!(ran(&proxy.call(100, "transfer").await), "the approved retry runs");
    for n in 16..=20 {
        assert!(ran(&proxy.call(n, "read_file").await));
    }
    let dir = proxy.close().await;
    let seq: Vec<String> = rows(&dir)
        .into_iter()
        .map(|(_, event, tool, n)| if tool == "transfer" { event } else { n.to_string() })
        .collect();
    let at = |what: &str| seq.iter().position(|e| e == what).unwrap_or_else(|| panic!("{what} not in {seq:?}"));
    assert!(at("5") < at("requested") && at("requested") < at("6"), "{seq:?}");
    assert!(at("10") < at("approved") && at("approved") < at("11"), "{seq:?}");
    let numbers_in_order: Vec<u64> = numbers(&dir);
    assert_eq!(numbers_in_order, (1..=20).collect::<Vec<_>>(), "{seq:?}");
    eprintln!("{seq:?}");
    verify(&dir).await;
}

/// Another process holds the database's write lock longer than the busy timeout (5 s) while
/// calls flow: the rows wait in the queue for the lock, none is dropped.
#[tokio::test]
async fn rows_wait_out_a_write_lock_held_longer_than_the_busy_timeout() {
    let dir = data_dir("idle-long-lock");
    let cfg = write_config(&dir);
    let mut proxy = Proxy::start(dir.clone(), &cfg).await;
    let db = dir.join("mcp-gate.db");
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let other = rusqlite::Connection::open(db).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::sleep(Duration::from_millis(6500));
        other.execute_batch("COMMIT").unwrap();
    });
    let start = Instant::now();
    let mut n = 0;
    let mut worst = Duration::ZERO;
    while start.elapsed() < Duration::from_millis(7500) {
        n += 1;
        let t = Instant::now();
        assert!(ran(&proxy.call(n, "read_file").await));
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.join().unwrap();
    eprintln!("{n} calls; slowest {worst:?} while another process held the write lock");
    // A loop waiting on the other process's lock would wait its busy timeout (5 s).
    assert!(worst < Duration::from_secs(2), "a call waited {worst:?} for the lock");
    let dir = proxy.close().await;
    let got = numbers(&dir);
    let missing: Vec<u64> = (1..=n).filter(|x| !got.contains(x)).collect();
    assert!(missing.is_empty(), "{} of {n} rows lost: {missing:?}", missing.len());
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    verify(&dir).await;
}

/// A held call waits for its approval the whole time (a call is always in flight, the loop is
/// never quiet) while allowed calls flow: the worker commits their rows after FALLBACK.
#[tokio::test]
async fn rows_reach_disk_while_a_held_call_keeps_the_loop_busy() {
    let dir = data_dir("idle-never-quiet");
    let cfg = write_config(&dir);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replace(
        "[servers.raw]",
        "[[rules]]\nname = \"transfers\"\ntool = \"transfer\"\naction = \"approve\"\n\n[servers.raw]",
    );
    std::fs::write(&cfg, text).unwrap();
    let mut proxy = Proxy::start_with(dir.clone(), &cfg, &[("MCP_GATE_WAIT_SECS", "60")]).await;
    let held = json!({"jsonrpc": "2.0", "id": "held", "method": "tools/call",
        "params": {"name": "transfer", "arguments": {"to": "bob"}}});
    proxy.send(&held.to_string()).await;
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(3) {
        n += 1;
        assert!(ran(&proxy.call(n, "read_file").await));
        let called = Instant::now();
        // The row of this call reaches disk while the held call still waits.
        loop {
            if numbers(&dir).last() == Some(&n) {
                break;
            }
            assert!(called.elapsed() < Duration::from_secs(3), "row {n} not on disk after {:?}", called.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        worst = worst.max(called.elapsed());
    }
    eprintln!("{n} calls; the longest a row took to reach disk: {worst:?}");
    let dir = proxy.close().await;
    assert_eq!(numbers(&dir), (1..=n).collect::<Vec<_>>());
    verify(&dir).await;
}

/// The CPU time process `pid` has used (user and system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // 100 ticks a second (USER_HZ) on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// `[stdio] busy_poll_us` (here the default, 1 ms): calls sent back to back pass and are audited
/// as without it, the rows of calls answered while it polls reach disk while the client stays
/// idle, and the process stops polling once the pipes are quiet: it uses almost no CPU while the
/// client is idle.
#[tokio::test]
async fn busy_polling_relays_audits_and_then_sleeps() {
    let dir = data_dir("idle-busy-poll");
    let cfg = write_config(&dir);
    let mut proxy = Proxy::start_with(dir.clone(), &cfg, &[]).await;
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(!log.contains("ignored"), "{log}");
    assert!(log.contains("busy polling while messages come close together"), "{log}");
    for n in 1..=40 {
        let tool = if n % 5 == 0 { "delete_file" } else { "read_file" };
        let reply = proxy.call(n, tool).await;
        assert_eq!(ran(&reply), n % 5 != 0, "{reply}");
    }
    let replied = Instant::now();
    within("the rows on disk", async {
        while numbers(&dir) != (1..=40).collect::<Vec<_>>() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    eprintln!("rows on disk {:?} after the last answer", replied.elapsed());
    // Polling ends at most 1 ms after the last message: over a quiet second the process sleeps.
    let pid = proxy.child.id().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = cpu_time(pid) - before;
    assert!(idle < Duration::from_millis(200), "{idle:?} of CPU in a second with no message");
    let dir = proxy.close().await;
    verify(&dir).await;
}
