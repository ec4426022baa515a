//! Transports move messages; they know nothing of policy or routing.
//!
//! An upstream transport is started with [`connect`] and handed a [`Reporter`] through which it
//! reports every message it receives and, once, that it has closed. The session talks to it
//! through an [`UpstreamLink`]: a queue of at most [`LINK_QUEUE`] [`Outgoing`] messages. The
//! session never waits on a slow peer: when the queue is full, the message is refused and a
//! request gets an error at once.
//!
//! What a transport reports goes to its session through an unbounded queue: the session's actor
//! takes each report at once and never waits, so the queue holds only what arrived since the
//! actor last ran.

pub mod legacy_sse;
pub mod settings;
pub mod stdio;
pub mod streamable_http;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::upstream::settings::{ServerConfig, UpstreamTransport};
use crate::wire::jsonrpc::Message;

/// Most messages waiting to be sent to one upstream (for example a child that stopped reading
/// its input).
pub const LINK_QUEUE: usize = 1024;

/// Why a message was not queued for an upstream.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the upstream is not keeping up: {LINK_QUEUE} messages are waiting to be sent to it")]
    Full,
    #[error("the upstream has stopped")]
    Stopped,
}

/// A message on its way to an upstream, with what HTTP transports need for headers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The serialized JSON-RPC message.
    pub bytes: Bytes,
    /// The JSON-RPC method, for requests and notifications.
    pub method: Option<String>,
    /// The proxy-assigned id, for requests (responses on an HTTP stream are tied to it).
    pub request_id: Option<u64>,
    /// `Mcp-Name` for the 2026-07-28 HTTP transport (tool or prompt name, resource URI, task id).
    pub name: Option<String>,
    /// The protocol version carried in the request's `_meta` (2026-07-28 and later).
    pub protocol_version: Option<String>,
    /// `Mcp-Param-*` headers to send as they are (name without prefix, value already encoded).
    pub param_headers: Vec<(String, String)>,
}

impl Outgoing {
    pub fn plain(bytes: Bytes) -> Outgoing {
        Outgoing {
            bytes,
            method: None,
            request_id: None,
            name: None,
            protocol_version: None,
            param_headers: Vec::new(),
        }
    }
}

/// The session's end of a running upstream transport. Dropping every clone stops the
/// transport; [`UpstreamLink::finished`] then tells when it has wound down (child exited,
/// upstream session deleted).
#[derive(Debug, Clone)]
pub struct UpstreamLink {
    tx: mpsc::Sender<Outgoing>,
    done: tokio::sync::watch::Receiver<()>,
}

/// Held by a transport while it runs; dropping it marks the transport finished.
pub type Running = tokio::sync::watch::Sender<()>;

impl UpstreamLink {
    /// A link and the token its transport holds until it has finished.
    pub fn new(tx: mpsc::Sender<Outgoing>) -> (UpstreamLink, Running) {
        let (running, done) = tokio::sync::watch::channel(());
        (UpstreamLink { tx, done }, running)
    }

    /// Completes when the transport has finished.
    pub fn finished(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut done = self.done.clone();
        async move { while done.changed().await.is_ok() {} }
    }

    /// Queues a message without waiting.
    pub fn send(&self, out: Outgoing) -> Result<(), LinkError> {
        self.tx.try_send(out).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LinkError::Full,
            mpsc::error::TrySendError::Closed(_) => LinkError::Stopped,
        })
    }

    /// A link and the receiving end of its queue.
    pub fn channel() -> (mpsc::Sender<Outgoing>, mpsc::Receiver<Outgoing>) {
        mpsc::channel(LINK_QUEUE)
    }
}

/// What an upstream transport reports to its session.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// A message from the upstream. `related` is the proxy request id whose HTTP response stream
    /// carried it, when the transport knows it.
    Message { msg: Message, related: Option<u64> },
    /// The answer to the request with this proxy id was over [`MAX_MESSAGE_BYTES`](crate::wire::MAX_MESSAGE_BYTES) and was
    /// dropped.
    TooLarge { id: u64 },
    /// The transport stopped; in-flight requests will not be answered.
    Closed { reason: String },
}

/// Where a transport sends what it receives. `index` and `generation` let the session ignore
/// reports from a transport it has already replaced.
#[derive(Clone)]
pub struct Reporter {
    pub index: usize,
    pub generation: u64,
    sink: mpsc::UnboundedSender<(usize, u64, UpstreamEvent)>,
}

impl Reporter {
    pub fn new(index: usize, generation: u64, sink: mpsc::UnboundedSender<(usize, u64, UpstreamEvent)>) -> Reporter {
        Reporter { index, generation, sink }
    }

    pub fn message(&self, msg: Message, related: Option<u64>) {
        let _ = self.sink.send((self.index, self.generation, UpstreamEvent::Message { msg, related }));
    }

    pub fn too_large(&self, id: u64) {
        let _ = self.sink.send((self.index, self.generation, UpstreamEvent::TooLarge { id }));
    }

    /// Reports a message the strict reading refused. A response whose id can still be read
    /// becomes an error response under that id, so the request it answers fails instead of
    /// waiting; anything else is dropped with a warning. Nothing of it reaches the client.
    pub fn refused(&self, bytes: &[u8], err: &crate::wire::jsonrpc::ParseError, related: Option<u64>) {
        let env = crate::wire::jsonrpc::strict::lenient_envelope(bytes);
        match env.id {
            Some(id) if env.response && env.methods.is_empty() => {
                tracing::warn!("the upstream's response was refused: {err}");
                let text = format!("the upstream's response was refused: {err}");
                self.message(Message::error(Some(id), crate::wire::jsonrpc::code::UPSTREAM_ERROR, &text), related);
            }
            _ => tracing::warn!("message from the upstream refused and dropped: {err}"),
        }
    }

    pub fn closed(&self, reason: impl Into<String>) {
        let _ = self.sink.send((self.index, self.generation, UpstreamEvent::Closed { reason: reason.into() }));
    }

    /// True once the session is gone; transports stop then.
    pub fn is_closed(&self) -> bool {
        self.sink.is_closed()
    }
}

/// Why an upstream could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("upstream `{server}`: cannot start `{command}`: {error}")]
    Spawn { server: String, command: String, error: std::io::Error },
    #[error("upstream `{server}`: {message}")]
    Http { server: String, message: String },
}

/// Starts the transport for one upstream server.
pub async fn connect(server: &ServerConfig, reporter: Reporter) -> Result<UpstreamLink, ConnectError> {
    match &server.transport {
        UpstreamTransport::Stdio { .. } => stdio::spawn(server, reporter),
        UpstreamTransport::StreamableHttp { url, headers } => {
            streamable_http::connect(&server.name, url, headers, reporter).await
        }
        UpstreamTransport::Sse { url, headers } => legacy_sse::connect(&server.name, url, headers, reporter).await,
    }
}
