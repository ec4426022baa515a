//! The hook on the `tools/call` path: a [`Gate`] decides, for each call, whether it goes
//! upstream, is answered by the proxy, or waits.

use futures::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::tools::ToolInfo;

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
}

/// A gate's answer.
pub enum Verdict {
    /// Send the call upstream unchanged.
    Allow,
    /// Answer the client with this `result` instead (a denial, an approval URL).
    Respond(Box<RawValue>),
    /// Decide later.
    Hold(BoxFuture<'static, Verdict>),
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Allow => f.write_str("Allow"),
            Verdict::Respond(r) => write!(f, "Respond({})", r.get()),
            Verdict::Hold(_) => f.write_str("Hold"),
        }
    }
}

pub trait Gate: Send + Sync + 'static {
    fn check(&self, call: &ToolCall<'_>) -> Verdict;
}

/// Lets every call through.
pub struct AllowAll;

impl Gate for AllowAll {
    fn check(&self, _call: &ToolCall<'_>) -> Verdict {
        Verdict::Allow
    }
}
