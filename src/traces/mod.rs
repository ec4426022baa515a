//! OpenTelemetry traces over OTLP/HTTP (protobuf), off by default ([`settings`]): one span per
//! `tools/call`, from the gate's verdict to the call's end, named `tools/call TOOL`, of kind
//! server, with these attributes:
//!
//! | attribute | value |
//! |---|---|
//! | `mcp.method.name` | `tools/call` |
//! | `gen_ai.tool.name`, `mcp_gate.tool` | the tool's name at the upstream |
//! | `mcp_gate.server` | the upstream server's configured name |
//! | `mcp_gate.agent` | the calling agent, when known |
//! | `mcp_gate.decision` | `allowed`, `denied`, `held`, `refused` (as `mcp_gate_calls_total`) |
//! | `mcp_gate.approval_id` | the approval request of a held call |
//! | `mcp_gate.outcome` | `ok`, `tool_error` (a result with `isError`), `error` (JSON-RPC or transport), `not_run` (its caller left first), `answered` (by the gate: a denial, the approval URL), `refused` (a request error), `settled` (a gate task that ended without running) |
//!
//! A W3C `traceparent` (and `tracestate`) in the request's `params._meta` makes the span its
//! child; the params are still forwarded upstream exactly as they came. Spans are exported in
//! batches from a thread of their own, through a bounded queue: a collector that is slow or down
//! only loses spans, it never delays or fails a call.
//!
//! The gate is wrapped ([`Traces::gate`]) only when traces are on; what happens inside the
//! approval gate reaches the call's span through [`decision`] and [`approval`], which do nothing
//! when traces are off.

pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde::Deserialize;

use crate::gate::tools::ToolInfo;
use crate::gate::{
    Channel, Gate, Offered, Outcome, OutcomeHook, RefusedCall, TaskOp, TaskReply, TaskRun, TaskStart, ToolCall, Verdict,
};
use crate::metrics::CallDecision;
use settings::{Endpoint, TracingSettings};

/// The `service.name` of the spans.
pub const SERVICE_NAME: &str = "mcp-gate";

/// How long one export may take before its spans are given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the last export may hold up the end of the process.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a [`Traces`] was started in this process ([`decision`] and [`approval`] return at
/// once otherwise).
static ON: AtomicBool = AtomicBool::new(false);

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting up the OTLP trace exporter: {0}")]
pub struct TracesError(#[from] opentelemetry_otlp::ExporterBuildError);

/// The process's trace pipeline: the tracer the gate's spans come from, and the batch exporter
/// behind it.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// Starts the exporter when traces are on; `None` when they are off.
    pub fn start(settings: &TracingSettings) -> Result<Option<Traces>, TracesError> {
        let Some(endpoint) = &settings.endpoint else { return Ok(None) };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT);
        if let Endpoint::File(url) = endpoint {
            exporter = exporter.with_endpoint(url.clone());
        }
        let exporter = exporter.build()?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(SERVICE_NAME).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer(SERVICE_NAME);
        ON.store(true, Ordering::Relaxed);
        Ok(Some(Traces { provider, tracer }))
    }

    /// `inner`, with a span for each `tools/call` it judges.
    pub fn gate(&self, inner: Arc<dyn Gate>) -> Arc<dyn Gate> {
        Arc::new(TracedGate { inner, tracer: self.tracer.clone() })
    }

    /// Exports what is queued (within a bounded time) and stops the exporter.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)).await;
        if let Ok(Err(e)) = done {
            tracing::debug!(error = %e, "the last spans were not exported");
        }
    }
}

/// Records the gate's decision on the span of the call being judged.
pub fn decision(decision: CallDecision) {
    if ON.load(Ordering::Relaxed) {
        Context::current().span().set_attribute(KeyValue::new("mcp_gate.decision", decision.label()));
    }
}

/// Records the approval request that stands for the call being held.
pub fn approval(id: &str) {
    if ON.load(Ordering::Relaxed) {
        Context::current().span().set_attribute(KeyValue::new("mcp_gate.approval_id", id.to_owned()));
    }
}

/// A gate whose calls each have a span.
struct TracedGate {
    inner: Arc<dyn Gate>,
    tracer: SdkTracer,
}

impl TracedGate {
    /// The span of a call, as the current span of the returned context.
    fn start(&self, server: &str, tool: &str, agent: Option<&str>, parent: &Context) -> Context {
        let mut attributes = vec![
            KeyValue::new("mcp.method.name", "tools/call"),
            KeyValue::new("gen_ai.tool.name", tool.to_owned()),
            KeyValue::new("mcp_gate.tool", tool.to_owned()),
            KeyValue::new("mcp_gate.server", server.to_owned()),
        ];
        if let Some(agent) = agent {
            attributes.push(KeyValue::new("mcp_gate.agent", agent.to_owned()));
        }
        let span = self
            .tracer
            .span_builder(format!("tools/call {tool}"))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }
}

impl Gate for TracedGate {
    fn check(&self, call: &ToolCall<'_>) -> Verdict {
        let cx = self.start(call.server, call.tool, call.agent, &parent_of(call.params.get()));
        let verdict = {
            let _current = cx.clone().attach();
            self.inner.check(call)
        };
        match verdict {
            Verdict::Hold(wait) => Verdict::Hold(Box::pin(async move {
                let verdict = wait.with_context(cx.clone()).await;
                settle(verdict, cx)
            })),
            verdict => settle(verdict, cx),
        }
    }

    fn refused(&self, call: &RefusedCall<'_>) {
        let tool = call.tool_names.first().map_or("", String::as_str);
        let cx = self.start(call.server, tool, call.agent, &Context::new());
        {
            let _current = cx.clone().attach();
            self.inner.refused(call);
        }
        let span = cx.span();
        span.set_attribute(KeyValue::new("mcp_gate.decision", CallDecision::Refused.label()));
        span.set_attribute(KeyValue::new("mcp_gate.outcome", "refused"));
        span.set_status(Status::error(call.reason.to_owned()));
        span.end();
    }

    fn hides(&self, server: &str, tool: &ToolInfo, agent: Option<&str>) -> bool {
        self.inner.hides(server, tool, agent)
    }

    fn hides_any(&self) -> bool {
        self.inner.hides_any()
    }

    fn channel(&self, agent: Option<&str>, offered: &Offered) -> Option<Channel> {
        self.inner.channel(agent, offered)
    }

    fn issued_state(&self, state: &str) -> bool {
        self.inner.issued_state(state)
    }

    fn offers_tasks(&self) -> bool {
        self.inner.offers_tasks()
    }

    fn could_hold(&self, server: &str, tool: &ToolInfo, agent: Option<&str>) -> bool {
        self.inner.could_hold(server, tool, agent)
    }

    fn task(&self, op: TaskOp) -> TaskReply {
        self.inner.task(op)
    }
}

/// The context of the caller's span: the `traceparent` and `tracestate` of `params._meta`, or
/// none (the call's span is then a root).
fn parent_of(params: &str) -> Context {
    #[derive(Deserialize)]
    struct Params {
        #[serde(rename = "_meta", default)]
        meta: Option<Meta>,
    }
    #[derive(Deserialize)]
    struct Meta {
        traceparent: Option<String>,
        tracestate: Option<String>,
    }
    let Ok(Params { meta: Some(meta) }) = serde_json::from_str::<Params>(params) else { return Context::new() };
    let Some(traceparent) = meta.traceparent else { return Context::new() };
    let mut carrier = HashMap::from([("traceparent".to_owned(), traceparent)]);
    if let Some(state) = meta.tracestate {
        carrier.insert("tracestate".to_owned(), state);
    }
    TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier)
}

/// The gate's final verdict, with the span ended now (the gate answered) or when the call ends.
fn settle(verdict: Verdict, cx: Context) -> Verdict {
    match verdict {
        Verdict::Allow => Verdict::AllowTracked(ended_by(cx, None)),
        Verdict::AllowTracked(hook) => Verdict::AllowTracked(ended_by(cx, Some(hook))),
        Verdict::Respond(result) => {
            end(&cx, "answered", None);
            Verdict::Respond(result)
        }
        Verdict::Refuse(e) => {
            end(&cx, "refused", Some(e.to_string()));
            Verdict::Refuse(e)
        }
        Verdict::Task { created, start } => {
            let TaskStart { id, run } = start;
            let run = Box::pin(async move {
                match run.with_context(cx.clone()).await {
                    TaskRun::Run { server, params, hook } => {
                        TaskRun::Run { server, params, hook: ended_by(cx, Some(hook)) }
                    }
                    TaskRun::Settled => {
                        end(&cx, "settled", None);
                        TaskRun::Settled
                    }
                }
            });
            Verdict::Task { created, start: TaskStart { id, run } }
        }
        // Not a final verdict: the session refuses it; the span ends when dropped.
        hold @ Verdict::Hold(_) => hold,
    }
}

/// A hook that records how the call ended, ends its span, then calls `then`.
fn ended_by(cx: Context, then: Option<OutcomeHook>) -> OutcomeHook {
    Box::new(move |outcome: Outcome<'_>| {
        match &outcome {
            Outcome::Result(result) => end(&cx, if is_error(result.get()) { "tool_error" } else { "ok" }, None),
            Outcome::Error(error) => end(&cx, "error", Some(shorten(error))),
            Outcome::NotRun => end(&cx, "not_run", None),
        }
        if let Some(then) = then {
            then(outcome);
        }
    })
}

/// Records the outcome (and an error's description) and ends the span.
fn end(cx: &Context, outcome: &'static str, error: Option<String>) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("mcp_gate.outcome", outcome));
    if let Some(error) = error {
        span.set_status(Status::error(error));
    }
    span.end();
}

/// Whether a `tools/call` result says `isError: true`.
fn is_error(result: &str) -> bool {
    #[derive(Deserialize)]
    struct Reply {
        #[serde(rename = "isError", default)]
        is_error: Option<bool>,
    }
    serde_json::from_str::<Reply>(result).is_ok_and(|r| r.is_error == Some(true))
}

/// An error's text, cut to a length fit for a span's status.
fn shorten(error: &str) -> String {
    const MAX: usize = 256;
    match error.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &error[..i]),
        None => error.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_the_traceparent_of_meta() {
        let params = r#"{"name":"t","arguments":{"_meta":{"traceparent":"no"}},"_meta":{
            "traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"k=v"}}"#;
        let cx = parent_of(params);
        let parent = cx.span().span_context().clone();
        assert!(parent.is_valid() && parent.is_remote());
        assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(parent.trace_state().header(), "k=v");
        for none in [r#"{"name":"t"}"#, r#"{"_meta":{}}"#, r#"{"_meta":{"traceparent":"garbage"}}"#, "[]"] {
            assert!(!parent_of(none).span().span_context().is_valid(), "{none}");
        }
    }

    #[test]
    fn a_result_with_is_error_is_a_tool_error() {
        assert!(is_error(r#"{"content":[],"isError":true}"#));
        assert!(!is_error(r#"{"content":[],"isError":false}"#));
        assert!(!is_error(r#"{"content":[]}"#));
        assert_eq!(shorten(&"é".repeat(300)).chars().count(), 259);
    }
}
