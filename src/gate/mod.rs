//! The hook on the `tools/call` path: a [`Gate`] decides, for each call, whether it goes
//! upstream, is answered by the proxy, or waits.

pub mod tools;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;
pub use tokio_util::sync::CancellationToken;

use crate::gate::tools::ToolInfo;

/// A tool call as the gate sees it, after routing.
#[derive(Debug)]
pub struct ToolCall<'a> {
    /// The upstream server's configured name.
    pub server: &'a str,
    /// The tool's name at the upstream.
    pub tool: &'a str,
    /// The name the client used (with the server prefix when there are several upstreams).
    pub exposed_name: &'a str,
    pub arguments: &'a Value,
    /// The tool as the upstream listed it, when it did.
    pub info: Option<&'a ToolInfo>,
    /// The calling agent: the client's name from initialize, or the HTTP principal.
    pub agent: Option<&'a str>,
    /// Sends `notifications/progress` to the caller, when the request carried a progress token.
    pub progress: Option<ProgressSink>,
    /// Cancelled when the caller is gone (it cancelled the call, its stream or session closed):
    /// a held call then stops waiting and must not be claimed for it.
    pub gone: CancellationToken,
}

type SendProgress = dyn Fn(f64, &str) + Send + Sync;

/// Reports progress to the client that made a held call.
#[derive(Clone)]
pub struct ProgressSink {
    send: Arc<SendProgress>,
}

impl ProgressSink {
    pub fn new(send: impl Fn(f64, &str) + Send + Sync + 'static) -> ProgressSink {
        ProgressSink { send: Arc::new(send) }
    }

    /// Sends one progress notification; `progress` must increase from call to call.
    pub fn notify(&self, progress: f64, message: &str) {
        (self.send)(progress, message)
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// How an allowed call ended upstream: its result, or the error (JSON-RPC or transport).
#[derive(Debug)]
pub enum Outcome<'a> {
    Result(&'a RawValue),
    Error(&'a str),
    /// The call was never sent: its caller left between the gate's answer and the send.
    NotRun,
}

/// Called once with the upstream's answer to a call the gate let through.
pub type OutcomeHook = Box<dyn FnOnce(Outcome<'_>) + Send>;

/// A gate's answer.
pub enum Verdict {
    /// Send the call upstream unchanged.
    Allow,
    /// Send the call upstream unchanged and report how it ended.
    AllowTracked(OutcomeHook),
    /// Answer the client with this `result` instead (a denial, an approval URL).
    Respond(Box<RawValue>),
    /// Decide later.
    Hold(BoxFuture<'static, Verdict>),
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Allow => f.write_str("Allow"),
            Verdict::AllowTracked(_) => f.write_str("AllowTracked"),
            Verdict::Respond(r) => write!(f, "Respond({})", r.get()),
            Verdict::Hold(_) => f.write_str("Hold"),
        }
    }
}

/// A `tools/call` refused before it could be judged: its bytes could not be read strictly, so
/// nothing of it was evaluated or forwarded.
#[derive(Debug)]
pub struct RefusedCall<'a> {
    /// The upstream the name routes to, when that can be told.
    pub server: &'a str,
    /// Every tool name the message carried (several when the key was duplicated).
    pub tool_names: &'a [String],
    pub agent: Option<&'a str>,
    /// Why it was refused.
    pub reason: &'a str,
}

pub trait Gate: Send + Sync + 'static {
    fn check(&self, call: &ToolCall<'_>) -> Verdict;

    /// Records a call refused before evaluation.
    fn refused(&self, _call: &RefusedCall<'_>) {}

    /// Whether a tool is removed from `tools/list` for this agent.
    fn hides(&self, _server: &str, _tool: &ToolInfo, _agent: Option<&str>) -> bool {
        false
    }

    /// Whether any tool can be hidden at all (lets the relay skip the check).
    fn hides_any(&self) -> bool {
        false
    }
}

/// Lets every call through.
pub struct AllowAll;

impl Gate for AllowAll {
    fn check(&self, _call: &ToolCall<'_>) -> Verdict {
        Verdict::Allow
    }
}
