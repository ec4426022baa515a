//! Prometheus metrics of this process: one registry, updated through the small functions below
//! from where things happen (the gate's verdicts, the upstreams of a session, the HTTP sessions,
//! the change stream of the approvals), and rendered for `GET /metrics` of the approval server
//! when `[metrics] enabled = true` ([`settings`]).
//!
//! Names and labels (the series of the fixed labels are present from the start, at 0; those of an
//! upstream appear with its first error or restart):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mcp_gate_calls_total` | counter | `decision`: `allowed`, `denied` (by the policy), `held` (needs approval), `refused` (before evaluation) |
//! | `mcp_gate_approvals_pending` | gauge | requests waiting for a decision, read from the store at each scrape |
//! | `mcp_gate_approval_decision_seconds` | histogram | `decision`: `approved`, `denied`; from the request to its decision |
//! | `mcp_gate_upstream_errors_total` | counter | `server`; `kind`: `stopped`, `timed_out`, `restart_failed` |
//! | `mcp_gate_upstream_restarts_total` | counter | `server` |
//! | `mcp_gate_sessions_open` | gauge | `kind`: `session` (a client's own), `shared` (2026-07-28 clients) |
//!
//! The counters count what this process did; on a machine whose processes share a hub, the hub
//! serves the metrics of its own process.

pub mod settings;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::render`]'s text (OpenMetrics, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the approval latency buckets, in seconds: an AI review takes seconds, people
/// take minutes to hours.
const LATENCY_BUCKETS: [f64; 16] =
    [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0];

/// What the gate did with a `tools/call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallDecision {
    /// The policy let it through.
    Allowed,
    /// The policy denied it.
    Denied,
    /// The policy asked for approval: the call is held (or runs on an approval already given).
    Held,
    /// Refused before the policy could judge it.
    Refused,
}

impl CallDecision {
    const ALL: [CallDecision; 4] =
        [CallDecision::Allowed, CallDecision::Denied, CallDecision::Held, CallDecision::Refused];

    /// Its place in [`CallDecision::ALL`].
    fn index(self) -> usize {
        match self {
            CallDecision::Allowed => 0,
            CallDecision::Denied => 1,
            CallDecision::Held => 2,
            CallDecision::Refused => 3,
        }
    }

    /// The decision's name in the metrics' labels and the traces' attributes.
    pub fn label(self) -> &'static str {
        match self {
            CallDecision::Allowed => "allowed",
            CallDecision::Denied => "denied",
            CallDecision::Held => "held",
            CallDecision::Refused => "refused",
        }
    }
}

/// How an approval request was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalDecision {
    Approved,
    Denied,
}

impl ApprovalDecision {
    const ALL: [ApprovalDecision; 2] = [ApprovalDecision::Approved, ApprovalDecision::Denied];

    fn label(self) -> &'static str {
        match self {
            ApprovalDecision::Approved => "approved",
            ApprovalDecision::Denied => "denied",
        }
    }
}

/// What went wrong with an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Its transport ended (a child process exited, a connection was lost).
    Stopped,
    /// A request got no answer within its timeout.
    TimedOut,
    /// A restart did not bring it back.
    RestartFailed,
}

impl UpstreamError {
    fn label(self) -> &'static str {
        match self {
            UpstreamError::Stopped => "stopped",
            UpstreamError::TimedOut => "timed_out",
            UpstreamError::RestartFailed => "restart_failed",
        }
    }
}

type Labels = [(&'static str, &'static str); 1];
type ServerLabels = [(&'static str, String); 1];
type ServerKindLabels = [(&'static str, String); 2];

/// The registry and its metrics. The process has one ([`global`]); tests make their own.
pub struct Metrics {
    registry: Registry,
    /// The counters of the `calls` family, one per [`CallDecision`] in the order of `CallDecision::ALL`,
    /// resolved once: counting a call is then one atomic add, not a lookup of its labels.
    call_counters: [Counter; 4],
    pending: Gauge,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    upstream_errors: Family<ServerKindLabels, Counter>,
    upstream_restarts: Family<ServerLabels, Counter>,
    sessions: Family<Labels, Gauge>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mcp_gate");
        let calls = Family::<Labels, Counter>::default();
        registry.register("calls", "tools/call requests by the gate's decision", calls.clone());
        let pending = Gauge::default();
        registry.register("approvals_pending", "Approval requests waiting for a decision", pending.clone());
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "approval_decision_seconds",
            "Time from an approval request to its decision",
            latency.clone(),
        );
        let upstream_errors = Family::<ServerKindLabels, Counter>::default();
        registry.register("upstream_errors", "Upstream failures by server and kind", upstream_errors.clone());
        let upstream_restarts = Family::<ServerLabels, Counter>::default();
        registry.register("upstream_restarts", "Upstreams brought back after they stopped", upstream_restarts.clone());
        let sessions = Family::<Labels, Gauge>::default();
        registry.register("sessions_open", "MCP sessions open on the HTTP endpoint", sessions.clone());
        // Every label set of a fixed label is shown from the start, at zero.
        let call_counters = CallDecision::ALL.map(|d| calls.get_or_create(&[("decision", d.label())]).clone());
        for d in ApprovalDecision::ALL {
            drop(latency.get_or_create(&[("decision", d.label())]));
        }
        for kind in ["session", "shared"] {
            drop(sessions.get_or_create(&[("kind", kind)]));
        }
        Metrics { registry, call_counters, pending, latency, upstream_errors, upstream_restarts, sessions }
    }

    pub fn call(&self, decision: CallDecision) {
        self.call_counters[decision.index()].inc();
    }

    pub fn approval_decided(&self, decision: ApprovalDecision, waited: Duration) {
        self.latency.get_or_create(&[("decision", decision.label())]).observe(waited.as_secs_f64());
    }

    pub fn upstream_error(&self, server: &str, kind: UpstreamError) {
        self.upstream_errors.get_or_create(&[("server", server.to_owned()), ("kind", kind.label().to_owned())]).inc();
    }

    pub fn upstream_restarted(&self, server: &str) {
        self.upstream_restarts.get_or_create(&[("server", server.to_owned())]).inc();
    }

    pub fn set_pending(&self, n: u64) {
        self.pending.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts an MCP session (`shared`: the one of sessionless clients) until the value is dropped.
    pub fn session_open(&self, shared: bool) -> SessionOpen {
        let gauge = self.sessions.get_or_create(&[("kind", if shared { "shared" } else { "session" })]).clone();
        gauge.inc();
        SessionOpen(gauge)
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// The gate decided on a `tools/call`.
pub fn call(decision: CallDecision) {
    global().call(decision);
}

/// An approval request was decided `waited` after it was made.
pub fn approval_decided(decision: ApprovalDecision, waited: Duration) {
    global().approval_decided(decision, waited);
}

pub fn upstream_error(server: &str, kind: UpstreamError) {
    global().upstream_error(server, kind);
}

pub fn upstream_restarted(server: &str) {
    global().upstream_restarted(server);
}

/// Counts an MCP session (`shared`: the one of sessionless clients) until the value is dropped.
pub fn session_open(shared: bool) -> SessionOpen {
    global().session_open(shared)
}

/// An open MCP session, counted in `mcp_gate_sessions_open` until dropped.
pub struct SessionOpen(Gauge);

impl Drop for SessionOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name` (with its labels as written), if shown.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_metric_is_rendered_with_its_labels() {
        let m = Metrics::new();
        let text = m.render();
        for d in ["allowed", "denied", "held", "refused"] {
            assert_eq!(value(&text, &format!("mcp_gate_calls_total{{decision=\"{d}\"}}")), Some(0.0), "{text}");
        }
        assert_eq!(value(&text, "mcp_gate_approvals_pending"), Some(0.0), "{text}");
        assert_eq!(value(&text, "mcp_gate_sessions_open{kind=\"shared\"}"), Some(0.0), "{text}");
        assert!(text.contains("# TYPE mcp_gate_approval_decision_seconds histogram"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");

        m.call(CallDecision::Held);
        m.call(CallDecision::Held);
        m.call(CallDecision::Allowed);
        m.set_pending(3);
        m.approval_decided(ApprovalDecision::Approved, Duration::from_secs(7));
        m.approval_decided(ApprovalDecision::Approved, Duration::from_millis(300));
        m.upstream_error("files", UpstreamError::Stopped);
        m.upstream_restarted("files");
        let text = m.render();
        assert_eq!(value(&text, "mcp_gate_calls_total{decision=\"held\"}"), Some(2.0), "{text}");
        assert_eq!(value(&text, "mcp_gate_calls_total{decision=\"allowed\"}"), Some(1.0), "{text}");
        assert_eq!(value(&text, "mcp_gate_calls_total{decision=\"denied\"}"), Some(0.0), "{text}");
        assert_eq!(value(&text, "mcp_gate_approvals_pending"), Some(3.0), "{text}");
        let bucket =
            |le: &str| format!("mcp_gate_approval_decision_seconds_bucket{{le=\"{le}\",decision=\"approved\"}}");
        assert_eq!(value(&text, &bucket("0.5")), Some(1.0), "{text}");
        assert_eq!(value(&text, &bucket("10.0")), Some(2.0), "{text}");
        assert_eq!(value(&text, "mcp_gate_approval_decision_seconds_count{decision=\"approved\"}"), Some(2.0));
        assert_eq!(value(&text, "mcp_gate_approval_decision_seconds_sum{decision=\"approved\"}"), Some(7.3));
        assert_eq!(
            value(&text, "mcp_gate_upstream_errors_total{server=\"files\",kind=\"stopped\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "mcp_gate_upstream_restarts_total{server=\"files\"}"), Some(1.0), "{text}");
    }

    #[test]
    fn each_decision_counts_under_its_own_label() {
        let m = Metrics::new();
        for (n, d) in CallDecision::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                m.call(d);
            }
        }
        let text = m.render();
        for (n, d) in CallDecision::ALL.into_iter().enumerate() {
            let series = format!("mcp_gate_calls_total{{decision=\"{}\"}}", d.label());
            assert_eq!(value(&text, &series), Some((n + 1) as f64), "{text}");
        }
    }

    /// The README's table names every metric the registry renders, with its labels.
    #[test]
    fn the_readme_lists_every_metric() {
        let readme = include_str!("../../README.md");
        let start = readme.find("\n### Metrics\n").expect("the Metrics section");
        let section = &readme[start..];
        let section = &section[..section[5..].find("\n### ").map_or(section.len(), |i| i + 5)];
        let m = Metrics::new();
        // The upstream families show a series only once an upstream has one.
        m.upstream_error("files", UpstreamError::TimedOut);
        m.upstream_restarted("files");
        let text = m.render();
        let mut names = Vec::new();
        for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, kind) = line.split_once(' ').expect("name and type");
            let shown = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
            assert!(section.contains(&format!("| `{shown}` | {kind} |")), "{shown} ({kind}) is not in the README");
            names.push(shown);
        }
        assert_eq!(names.len(), 6, "{names:?}");
        for label in ["decision=\"allowed\"", "decision=\"approved\"", "kind=\"shared\""] {
            let (key, value) = label.split_once('=').expect("key=value");
            assert!(text.contains(label), "{text}");
            assert!(
                section.contains(&format!("`{key}`")) && section.contains(&format!("`{}`", value.trim_matches('"')))
            );
        }
    }

    #[test]
    fn a_session_is_counted_while_it_is_open() {
        let m = Metrics::new();
        let shown = |kind: &str| value(&m.render(), &format!("mcp_gate_sessions_open{{kind=\"{kind}\"}}"));
        let (one, two, shared) = (m.session_open(false), m.session_open(false), m.session_open(true));
        assert_eq!((shown("session"), shown("shared")), (Some(2.0), Some(1.0)));
        drop((one, shared));
        assert_eq!((shown("session"), shown("shared")), (Some(1.0), Some(0.0)));
        drop(two);
        assert_eq!(shown("session"), Some(0.0));
    }
}
