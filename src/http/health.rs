//! `GET /healthz` and `GET /readyz`, served by both HTTP servers.
//!
//! - `/healthz`: the process answers HTTP. Always `200 {"status":"ok"}`.
//! - `/readyz`: the process can do its work: every [`Check`] of its [`Readiness`] passed within
//!   [`CHECK_TIMEOUT`]. `200 {"status":"ready","checks":{...}}`, else `503` with
//!   `"status":"not_ready"` and, for each failed check, a short reason.
//!
//! Neither needs a token, and neither says anything secret: check names are fixed words and
//! upstream names from the configuration, reasons are fixed phrases (the details go to the log).
//!
//! Host and Origin ([`probe_guard`]): an `Origin` is checked as on every other route, so a page in
//! a browser never reads them. The `Host` is checked as on every other route when the server
//! listens on a loopback address; when it listens on another address, any `Host` is accepted on
//! these routes (and on `/metrics`): load balancers and orchestrators probe by IP address or by
//! names the configuration cannot list, and DNS rebinding gains nothing from a read-only answer
//! that holds no secret.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::guard::{Forbidden, check_host_origin, check_origin};

/// The longest one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The paths of the probes (and of the metrics, which follow the same Host rule).
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";

/// What a check returns: `Err` says why in a short phrase that reveals nothing secret (the
/// details go to the log).
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), NotReady>> + Send>>;

/// Why a readiness check failed, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The store does not answer a read.
    #[error("not answering")]
    NotAnswering,
    /// A stdio upstream's command cannot be found.
    #[error("command not found")]
    CommandNotFound,
    /// An HTTP upstream's URL names no host and port.
    #[error("invalid URL")]
    InvalidUrl,
    /// An HTTP upstream does not take a connection.
    #[error("unreachable: {0}")]
    Unreachable(std::io::ErrorKind),
    /// The check gave no answer within [`CHECK_TIMEOUT`].
    #[error("no answer within {} s", CHECK_TIMEOUT.as_secs())]
    Timeout,
}

/// One named readiness check.
#[derive(Clone)]
pub struct Check {
    name: String,
    run: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl Check {
    pub fn new(name: impl Into<String>, run: impl Fn() -> CheckFuture + Send + Sync + 'static) -> Check {
        Check { name: name.into(), run: Arc::new(run) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What `/readyz` checks. Without checks the server is ready as soon as it answers.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<Check>,
}

impl Readiness {
    pub fn with(mut self, check: Check) -> Readiness {
        self.checks.push(check);
        self
    }

    /// Runs every check at once, each within [`CHECK_TIMEOUT`]; `true` when all passed, with the
    /// outcome of each by name.
    pub async fn run(&self) -> (bool, Map<String, Value>) {
        let outcomes = futures::future::join_all(self.checks.iter().map(|c| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, (c.run)()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(NotReady::Timeout),
            };
            (c.name.clone(), outcome)
        }))
        .await;
        let ready = outcomes.iter().all(|(_, o)| o.is_ok());
        let checks = outcomes
            .into_iter()
            .map(|(name, o)| (name, Value::String(o.err().map_or_else(|| "ok".to_owned(), |e| e.to_string()))))
            .collect();
        (ready, checks)
    }
}

/// The answer of `/healthz`.
pub fn healthz() -> Response {
    json_response(StatusCode::OK, json!({ "status": "ok" }))
}

/// The answer of `/readyz`.
pub async fn readyz(readiness: &Readiness) -> Response {
    let (ready, checks) = readiness.run().await;
    if ready {
        json_response(StatusCode::OK, json!({ "status": "ready", "checks": checks }))
    } else {
        let failed: Vec<&str> = checks.iter().filter(|(_, v)| *v != "ok").map(|(k, _)| k.as_str()).collect();
        tracing::debug!(failed = failed.join(", "), "not ready");
        json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "status": "not_ready", "checks": checks }))
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

/// Whether `path` is one of the operations routes (probes and metrics).
pub fn is_operations_path(path: &str) -> bool {
    matches!(path, HEALTHZ | READYZ | METRICS)
}

/// The Host/Origin rule of the operations routes (see the module documentation): with
/// `any_host` (the server listens on a non-loopback address) only the Origin is checked.
pub fn probe_guard(
    allowed_hosts: &[String],
    allowed_origins: &[String],
    any_host: bool,
    headers: &HeaderMap,
) -> Result<(), Forbidden> {
    if any_host {
        check_origin(allowed_origins, headers)
    } else {
        check_host_origin(allowed_hosts, allowed_origins, headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::guard::headers;

    fn check(name: &str, outcome: Result<(), NotReady>) -> Check {
        Check::new(name, move || {
            let outcome = outcome.clone();
            Box::pin(async move { outcome })
        })
    }

    #[tokio::test]
    async fn ready_only_when_every_check_passes() {
        let (ready, checks) = Readiness::default().run().await;
        assert!(ready && checks.is_empty());
        let both = Readiness::default().with(check("store", Ok(()))).with(check("upstream fs", Ok(())));
        let (ready, checks) = both.run().await;
        assert!(ready);
        assert_eq!(Value::Object(checks), json!({"store": "ok", "upstream fs": "ok"}));
        let one_fails =
            both.with(check("upstream web", Err(NotReady::Unreachable(std::io::ErrorKind::ConnectionRefused))));
        let (ready, checks) = one_fails.run().await;
        assert!(!ready);
        assert_eq!(checks["upstream web"], "unreachable: connection refused");
        assert_eq!(readyz(&one_fails).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_fails_after_the_timeout() {
        let hangs = Check::new("store", || Box::pin(std::future::pending()));
        let (ready, checks) = Readiness::default().with(hangs).run().await;
        assert!(!ready);
        assert_eq!(checks["store"], "no answer within 2 s");
    }

    #[test]
    fn probes_accept_any_host_only_on_a_non_loopback_listener() {
        let none: &[String] = &[];
        let pod = headers(&[("host", "10.1.2.3:8080")]);
        assert!(probe_guard(none, none, false, &pod).is_err(), "loopback listener: the usual Host check");
        assert!(probe_guard(none, none, true, &pod).is_ok(), "non-loopback listener: any Host");
        let page = headers(&[("host", "10.1.2.3:8080"), ("origin", "http://evil.example")]);
        assert!(probe_guard(none, none, true, &page).is_err(), "a foreign Origin is refused everywhere");
    }
}
