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

use super::framing::{Line, LineReader, write_lines};
use super::{ConnectError, Reporter, UpstreamLink};
use crate::config::{ServerConfig, UpstreamTransport};
use crate::jsonrpc::Message;

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

    let (tx, rx) = mpsc::unbounded_channel::<super::Outgoing>();
    let (bytes_tx, bytes_rx) = mpsc::unbounded_channel();
    let (link, running) = UpstreamLink::new(tx);
    // Told when the session drops the link: the child then has a moment to exit, then is killed.
    let (released_tx, mut released) = tokio::sync::oneshot::channel::<()>();

    // Outgoing: strip the HTTP-only metadata and write lines.
    tokio::spawn(
        async move {
            let mut rx = rx;
            let forward = async move {
                while let Some(out) = rx.recv().await {
                    if bytes_tx.send(out.bytes).is_err() {
                        break;
                    }
                }
            };
            let write = write_lines(stdin, bytes_rx);
            let (_, res) = tokio::join!(forward, write);
            if let Err(e) = res {
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
                    Ok(Some(Line::TooLong)) => {
                        warn!("skipping a message over {} bytes", super::MAX_MESSAGE_BYTES)
                    }
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
