//! An upstream MCP server run as a child process over stdio.
//!
//! stdin carries our messages, stdout the server's (one JSON-RPC message per line), stderr is
//! copied into the log under the server's name. When the process exits the transport reports
//! `Closed`; restarting is the session's decision.
//!
//! The child leads a process group of its own, and stopping it stops the whole group: a server
//! started through `sh -c`, `npx` or `uv run` leaves no grandchild behind, even one that ignores
//! the end of its input.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use super::settings::{ServerConfig, UpstreamTransport};
use super::{ConnectError, Reporter, UpstreamLink};
use crate::wire::framing::{Line, LineReader};
use crate::wire::jsonrpc::Message;

pub fn spawn(server: &ServerConfig, reporter: Reporter) -> Result<UpstreamLink, ConnectError> {
    let UpstreamTransport::Stdio { command, args, env, cwd } = &server.transport else {
        unreachable!("child::spawn is only called for stdio servers");
    };
    let mut cmd = Command::new(command);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().map_err(|error| ConnectError::Spawn {
        server: server.name.clone(),
        command: command.clone(),
        error,
    })?;
    let pid = child.id().unwrap_or(0);
    // Whatever ends the task below (the child's exit, the session letting go, the runtime
    // shutting down) ends the group.
    let group = ProcessGroup(pid);
    let span = tracing::info_span!("upstream", server = %server.name, pid);
    span.in_scope(|| info!(command = %server.transport.describe(), "started"));

    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three pipes were requested");
    };

    let (tx, rx) = UpstreamLink::channel();
    let (link, running) = UpstreamLink::new(tx);
    // Told when the session drops the link: the child then has a moment to exit, then is killed.
    let (released_tx, mut released) = tokio::sync::oneshot::channel::<()>();

    // Outgoing: write lines (the HTTP-only metadata is not needed). While the child does not
    // read, messages wait in the link's bounded queue.
    tokio::spawn(
        async move {
            if let Err(e) = write_messages(stdin, rx).await {
                debug!("stdin closed: {e}");
            }
            let _ = released_tx.send(());
        }
        .instrument(span.clone()),
    );

    // stderr into the log.
    tokio::spawn(
        async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                info!(target: "mcp_gate::upstream_stderr", "{line}");
            }
        }
        .instrument(span.clone()),
    );

    // stdout: messages; then wait for the exit status and report.
    tokio::spawn(
        async move {
            let _running = running;
            let group = group;
            let mut reader = LineReader::new(stdout);
            loop {
                let next = tokio::select! {
                    next = reader.next_line() => next,
                    _ = &mut released => break,
                };
                match next {
                    Ok(Some(Line::Data(line))) => {
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        match Message::parse(&line) {
                            Ok(msg) => reporter.message(msg, None),
                            Err(e) => reporter.refused(&line, &e, None),
                        }
                    }
                    Ok(Some(Line::TooLong { head, tail })) => match answered_id(&head, &tail) {
                        // Its request gets an error instead of waiting for ever.
                        Some(id) => reporter.too_large(id),
                        None => warn!("skipping a message over {} bytes", crate::wire::MAX_MESSAGE_BYTES),
                    },
                    Ok(None) => break,
                    Err(e) => {
                        warn!("reading stdout failed: {e}");
                        break;
                    }
                }
            }
            // stdout closed, or the session let go: the process is exiting, or is made to.
            let status = tokio::select! {
                s = child.wait() => s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                    let _ = child.start_kill();
                    "closed its stdout and was killed".to_owned()
                }
            };
            // Its group may outlive it (a grandchild that ignores its closed stdin).
            drop(group);
            info!(%status, "exited");
            reporter.closed(format!("process exited ({status})"));
        }
        .instrument(span),
    );

    Ok(link)
}

/// Writes queued messages to the child, one per line, flushing whenever the queue runs dry so
/// that bursts cost one write and a lone message is not delayed.
async fn write_messages(
    mut stdin: tokio::process::ChildStdin,
    mut rx: mpsc::Receiver<super::Outgoing>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        buf.extend_from_slice(&first.bytes);
        buf.push(b'\n');
        while buf.len() < 1024 * 1024 {
            match rx.try_recv() {
                Ok(more) => {
                    buf.extend_from_slice(&more.bytes);
                    buf.push(b'\n');
                }
                Err(_) => break,
            }
        }
        stdin.write_all(&buf).await?;
        stdin.flush().await?;
        buf.clear();
    }
    stdin.flush().await
}

/// The process group a child leads; dropping it kills every process left in the group.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Ok(pgid) = i32::try_from(self.0) else { return };
        if pgid <= 1 {
            return;
        }
        // ESRCH (the group is already empty) is the normal case.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// The id of the response an over-long line carried, read from what is left of it: a top-level
/// `"id"` that is the object's first member (after `"jsonrpc"`), or its last. Only numeric ids
/// count (the proxy sends no others). The line is not parsed otherwise: this only routes an
/// error to the request that will not get its answer (or, for a client's line, answers it under
/// its own id).
pub(crate) fn answered_id(head: &[u8], tail: &[u8]) -> Option<u64> {
    first_member_id(head).or_else(|| last_member_id(tail))
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b.iter().rev().take_while(|c| c.is_ascii_whitespace()).count();
    &b[..b.len() - n]
}

/// `{"id": 7, ...` or `{"jsonrpc": "2.0", "id": 7, ...`.
fn first_member_id(head: &[u8]) -> Option<u64> {
    let mut rest = trim_start(head).strip_prefix(b"{")?;
    rest = trim_start(rest);
    if let Some(after) = rest.strip_prefix(b"\"jsonrpc\"") {
        let after = trim_start(trim_start(after).strip_prefix(b":")?);
        let after = trim_start(after.strip_prefix(b"\"2.0\"")?);
        rest = trim_start(after.strip_prefix(b",")?);
    }
    let after = trim_start(trim_start(rest.strip_prefix(b"\"id\"")?).strip_prefix(b":")?);
    let digits = after.iter().take_while(|c| c.is_ascii_digit()).count();
    let end = trim_start(&after[digits..]);
    if digits == 0 || !(end.starts_with(b",") || end.starts_with(b"}")) {
        return None;
    }
    std::str::from_utf8(&after[..digits]).ok()?.parse().ok()
}

/// `..., "id": 7}` at the very end of the line.
fn last_member_id(tail: &[u8]) -> Option<u64> {
    let rest = trim_end(trim_end(tail).strip_suffix(b"}")?);
    let digits = rest.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let (before, number) = rest.split_at(rest.len() - digits);
    let before = trim_end(trim_end(before).strip_suffix(b":")?);
    let before = trim_end(before.strip_suffix(b"\"id\"")?);
    if !(before.ends_with(b",") || before.ends_with(b"{")) {
        return None;
    }
    std::str::from_utf8(number).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_of_an_over_long_answer_is_read_from_either_end() {
        assert_eq!(answered_id(br#"{"jsonrpc":"2.0","id":12,"result":{"x":"#, b"xx\"}}"), Some(12));
        assert_eq!(answered_id(br#" { "id" : 3 , "result""#, b""), Some(3));
        assert_eq!(answered_id(br#"{"result":{"content":"#, br#"aaa"}]},"jsonrpc":"2.0","id":41}"#), Some(41));
        // An "id" inside the result, or inside a string, is not the message's.
        assert_eq!(answered_id(br#"{"result":{"id":5,"#, br#"x"}]}}"#), None);
        assert_eq!(answered_id(br#"{"result":"#, br#""text":"\"id\":9}"}"#), None);
        assert_eq!(answered_id(br#"{"result":"#, br#"{"id":9}}"#), None);
        assert_eq!(answered_id(b"", br#"{"id":"a"}"#), None);
    }
}
