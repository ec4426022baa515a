//! The stdio downstream: the client starts `mcp-gate` and talks over its stdin and stdout.
//! stdout carries only MCP messages; everything else goes to the log on stderr.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::busy_poll::BusyPoll;
use crate::session::{self, Downstream, Route, SessionOptions};
use crate::upstream::ConnectError;
use crate::wire::MAX_MESSAGE_BYTES;
use crate::wire::framing::{Line, LineReader, write_lines};
use crate::wire::jsonrpc::{self, Message, code};

/// How many bytes may wait for the client to read its stdout before mcp-gate stops reading its
/// stdin: a client that does not read its answers is slowed down instead of making the proxy
/// buffer them without end.
pub const STDOUT_BACKLOG: usize = 32 * 1024 * 1024;

/// Bytes queued for stdout and not written yet.
#[derive(Default)]
struct Backlog {
    bytes: AtomicUsize,
    drained: tokio::sync::Notify,
}

impl Backlog {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn written(&self, n: usize) {
        // Saturating: the read loop's own error replies are written without being counted.
        let _ = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(n)));
        self.drained.notify_waiters();
    }

    /// Waits until at most `limit` bytes are queued.
    async fn below(&self, limit: usize) {
        if self.bytes.load(Ordering::Acquire) <= limit {
            return;
        }
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.bytes.load(Ordering::Acquire) <= limit {
                return;
            }
            drained.await;
        }
    }
}

/// Stdout, counting what is written off the backlog.
struct Counted<W> {
    inner: W,
    backlog: Arc<Backlog>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.backlog.written(n);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct StdioDownstream {
    busy_poll: Option<Arc<BusyPoll>>,
    out: mpsc::UnboundedSender<Bytes>,
    backlog: Arc<Backlog>,
    fatal: Mutex<Option<String>>,
    stop: tokio::sync::Notify,
}

impl Downstream for StdioDownstream {
    fn send(&self, msg: &Message, _route: Route<'_>) {
        let bytes = Bytes::from(msg.to_bytes());
        // The message and its newline.
        self.backlog.add(bytes.len() + 1);
        let _ = self.out.send(bytes);
        if let Some(poll) = &self.busy_poll {
            poll.touch();
        }
    }

    fn fatal(&self, message: &str) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert_with(|| message.to_owned());
        }
        self.stop.notify_one();
    }
}

/// The process's stdin and stdout. When they are pipes (as when a client starts mcp-gate),
/// they are read and written without blocking, on the runtime's own event loop; otherwise
/// (a terminal, a file) through tokio's blocking-thread adapters.
pub fn std_streams() -> (Box<dyn AsyncRead + Unpin + Send>, Box<dyn AsyncWrite + Unpin + Send>) {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use tokio::net::unix::pipe;
        let input = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| pipe::Receiver::from_file(std::fs::File::from(fd)).ok());
        let output = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| pipe::Sender::from_file(std::fs::File::from(fd)).ok());
        let input: Box<dyn AsyncRead + Unpin + Send> = match input {
            Some(r) => Box::new(r),
            None => Box::new(tokio::io::stdin()),
        };
        let output: Box<dyn AsyncWrite + Unpin + Send> = match output {
            Some(w) => Box::new(w),
            None => Box::new(tokio::io::stdout()),
        };
        (input, output)
    }
    #[cfg(not(unix))]
    {
        (Box::new(tokio::io::stdin()), Box::new(tokio::io::stdout()))
    }
}

/// Why a stdio run ended badly.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Fatal(String),
    #[error("stdio: {0}")]
    Io(#[from] std::io::Error),
}

/// How a stdio session treats its client beyond the session's own options.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Reads no further input while more than this many bytes wait for the client to read its
    /// output ([`STDOUT_BACKLOG`]).
    pub backlog: usize,
    /// How long to poll the pipes after each message before sleeping (`[stdio] busy_poll_us`).
    pub busy_poll: std::time::Duration,
    /// Called each round of polling, in place of the runtime's `on_thread_park` hook, which does
    /// not run while the loop polls.
    pub on_poll: fn(),
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning { backlog: STDOUT_BACKLOG, busy_poll: std::time::Duration::ZERO, on_poll: || {} }
    }
}

/// Serves one client over the given reader and writer until the input ends or `shutdown` fires.
pub async fn serve<R, W>(
    opts: SessionOptions,
    input: R,
    output: W,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StdioError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    serve_with(opts, input, output, shutdown, Tuning::default()).await
}

/// [`serve`] with the given [`Tuning`].
pub async fn serve_with<R, W>(
    opts: SessionOptions,
    input: R,
    output: W,
    shutdown: impl std::future::Future<Output = ()>,
    tuning: Tuning,
) -> Result<(), StdioError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let backlog_limit = tuning.backlog;
    let busy_poll = BusyPoll::start(tuning.busy_poll, tuning.on_poll);
    // Unbounded, because the session writes to the client from its actor, which cannot wait;
    // what it holds is kept under `backlog_limit` by reading no more input past it (answers
    // and notifications then arriving from the upstreams can still add to it).
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    let downstream = Arc::new(StdioDownstream {
        busy_poll: busy_poll.clone(),
        out: out_tx.clone(),
        backlog: backlog.clone(),
        fatal: Mutex::new(None),
        stop: tokio::sync::Notify::new(),
    });
    let writer = tokio::spawn(write_lines(Counted { inner: output, backlog: backlog.clone() }, out_rx));
    // What the border needs to answer and audit messages it refuses.
    let border = opts.clone();
    let (session, task) = session::start(opts, downstream.clone()).await?;

    let mut reader = LineReader::new(input);
    let read_loop = async {
        loop {
            backlog.below(backlog_limit).await;
            match reader.next_line().await {
                Ok(Some(Line::Data(line))) => {
                    if let Some(poll) = &busy_poll {
                        poll.touch();
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match super::read(&line) {
                        Ok(msg) => {
                            if !session.client(msg) {
                                break;
                            }
                        }
                        Err(e) => {
                            if let Some(reply) = super::refuse(&line, &e, &border, border.agent.as_deref()) {
                                let _ = out_tx.send(Bytes::from(reply.to_bytes()));
                            }
                        }
                    }
                }
                Ok(Some(Line::TooLong { head, tail })) => {
                    warn!("message from the client over {MAX_MESSAGE_BYTES} bytes rejected");
                    let text = format!("message exceeds the {MAX_MESSAGE_BYTES}-byte limit");
                    // Answered under its own id when the line shows one at either end.
                    let id = crate::upstream::stdio::answered_id(&head, &tail).map(jsonrpc::number_id);
                    let reply = Message::error(id, code::INVALID_REQUEST, &text);
                    let _ = out_tx.send(Bytes::from(reply.to_bytes()));
                }
                Ok(None) => {
                    debug!("stdin closed");
                    break;
                }
                Err(e) => {
                    error!("reading stdin failed: {e}");
                    break;
                }
            }
        }
    };
    tokio::select! {
        _ = read_loop => {}
        _ = downstream.stop.notified() => {}
        _ = shutdown => {}
    }
    if let Some(poll) = &busy_poll {
        poll.stop();
    }
    // Ending the session closes the upstreams (children see stdin close and exit).
    drop(session);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    drop(out_tx);
    drop(downstream.clone());
    let fatal = downstream.fatal.lock().ok().and_then(|f| f.clone());
    drop(downstream);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    match fatal {
        Some(message) => Err(StdioError::Fatal(message)),
        None => Ok(()),
    }
}
