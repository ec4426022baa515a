//! The composition root: builds what a run needs from its [`Config`] (the store, the approval
//! gate, the hub and its services, the sessions' options) and runs the proxy on stdio or over
//! HTTP until a signal stops it. [`crate::cli`] only parses the command line and calls in here.

use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;

use crate::approval::{ApprovalGate, ApprovalService, ApprovalSettings};
use crate::config::Config;
use crate::downstream::{http, stdio};
use crate::gate::Gate;
use crate::http::health::{Check, NotReady, Readiness};
use crate::secret::ExposeSecret;
use crate::server::hub;
use crate::session::SessionOptions;
use crate::store::Store;
use crate::upstream::settings::{ServerConfig, UpstreamTransport};

pub fn session_options(
    config: &Config,
    servers: Vec<Arc<ServerConfig>>,
    gate: &Arc<dyn Gate>,
    label: &str,
) -> SessionOptions {
    SessionOptions {
        servers,
        separator: config.separator.clone(),
        shared: false,
        gate: gate.clone(),
        label: label.to_owned(),
        agent: None,
        stdio: false,
    }
}

/// What [`start_gate_with`] started.
pub struct Started {
    pub gate: Arc<dyn Gate>,
    pub approvals: Arc<ApprovalService>,
    /// Base URL of the approval server.
    pub public_url: String,
    /// The approval server's state (served by this process when it is the hub).
    pub web: Arc<crate::server::web::WebState>,
}

/// Opens the store, starts (or joins) the approval server and returns the gate.
pub async fn start_gate(config: &Config) -> anyhow::Result<Arc<dyn Gate>> {
    Ok(start_gate_with(config).await?.gate)
}

/// Opens the store and takes this process's place on the machine (see [`crate::server::hub`]): the hub,
/// serving approvals on `[approvals] listen`, or a follower of the hub already there.
pub async fn start_gate_with(config: &Config) -> anyhow::Result<Started> {
    start_gate_announcing(config, true).await
}

/// [`start_gate_with`]; `announce: false` keeps the approval address and token file lines off
/// stderr (the demo prints its own).
pub async fn start_gate_announcing(config: &Config, announce: bool) -> anyhow::Result<Started> {
    let a = &config.approvals;
    let location = a.database.clone();
    let store =
        Store::open(location.clone()).await.with_context(|| format!("opening the approval store, {location}"))?;
    let (token, token_file) = crate::server::web::load_or_create_token(a.token.as_deref(), &a.data_dir)
        .with_context(|| format!("storing the approver token in {}", a.data_dir.display()))?;
    if let Some(file) = &token_file {
        let key = format!("approver token file {}", file.display());
        let http = config.listen.token.as_deref().map(|t| (t, config.listen.token_key.as_str()));
        crate::identity::credentials_apart(&a.agents, &a.approvers, http, Some((token.expose_secret(), &key)))?;
    }
    let start = hub::discover(&a.listen, token.expose_secret(), store.path())
        .await
        .with_context(|| format!("cannot listen on {} for approvals", a.listen))?;
    // The address to show: this process's server, or the hub's (the machine's approval address).
    let shown = match &start {
        hub::Start::Serve { listener, .. } => listener.local_addr()?.to_string(),
        hub::Start::Follow(_) => a.listen.clone(),
    };
    // Whether the approval server, here or after taking over from the hub, listens beyond
    // loopback: the interface of `[approvals] listen` (a fallback port keeps it).
    let any_host_operations = match &start {
        hub::Start::Serve { listener, .. } => !listener.local_addr()?.ip().is_loopback(),
        hub::Start::Follow(_) => a.listen.parse::<std::net::SocketAddr>().is_ok_and(|l| !l.ip().is_loopback()),
    };
    let public_url = a.public_url.clone().unwrap_or_else(|| format!("http://{shown}"));
    let settings = ApprovalSettings {
        wait: a.wait,
        public_url: public_url.clone(),
        expiry_by_risk: a.expiry_by_risk,
        workflows: a.workflows.clone(),
        redact: a.redact.clone(),
        expiry_warning: a.expiry_warning,
        channels: a.channels.clone(),
        tasks: a.tasks,
        mrtr_rounds: Some(a.mrtr_rounds),
    };
    let heard = store.heard();
    let approvals = ApprovalService::new(store, config.policy.clone(), settings);
    if let Some(heard) = heard {
        tokio::spawn(hear_other_replicas(heard, Arc::downgrade(&approvals)));
    }
    if let Some(reviewer) =
        crate::review::Reviewer::from_config(&a.ai_workflows, &a.providers).context("setting up the AI reviewer")?
    {
        approvals.set_reviewer(reviewer);
    }
    let mut hosts = Vec::new();
    if let Some(host) = public_url.split("://").nth(1).and_then(|r| r.split(['/', ':']).next()) {
        hosts.push(host.to_owned());
    }
    let mut web = crate::server::web::WebState::new(approvals.clone(), token.clone(), a.approvers.clone(), hosts);
    if let Some(w) = Arc::get_mut(&mut web) {
        w.limits = a.limits;
        w.token_file = token_file.clone();
        w.any_host_operations = any_host_operations;
        w.metrics = config.metrics.clone();
    }
    let gate: Arc<dyn Gate> = Arc::new(ApprovalGate { approvals: approvals.clone() });
    crate::server::web::ops::spawn_decision_metrics(&approvals);
    let on_hub = {
        let approvals = approvals.clone();
        let config = config.clone();
        Box::new(move || start_hub_services(&approvals, &config))
    };
    if announce {
        crate::logging::announce(&format!("mcp-gate: approvals at http://{shown}/"));
    }
    hub::Node { approvals: approvals.clone(), web: web.clone(), listen: a.listen.clone(), token, on_hub }
        .start(start)
        .context("starting the approval server")?;
    if let Some(file) = token_file.filter(|_| announce) {
        crate::logging::announce(&format!("mcp-gate: approver token in {}", file.display()));
    }
    if config.default_policy {
        tracing::info!("no [[rules]]: tools annotated readOnlyHint are allowed, every other call needs approval");
    }
    Ok(Started { gate, approvals, public_url, web })
}

/// Wakes the calls held here when another replica sharing the PostgreSQL store changes their
/// request, and shows its changes on this replica's dashboard and event stream.
async fn hear_other_replicas(
    mut heard: tokio::sync::broadcast::Receiver<crate::store::listen::Heard>,
    approvals: std::sync::Weak<ApprovalService>,
) {
    use crate::store::listen::Heard;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let note = match heard.recv().await {
            Ok(Heard::Change(note)) => Some(note),
            // Missed notifications: every waiting call re-reads its request.
            Ok(Heard::Resync) | Err(RecvError::Lagged(_)) => None,
            Err(RecvError::Closed) => return,
        };
        let Some(approvals) = approvals.upgrade() else { return };
        let Some(note) = note else {
            approvals.wake_all();
            continue;
        };
        match note.kind.parse::<crate::approval::ChangeKind>() {
            Ok(kind) => {
                if let Err(e) = approvals.changed_elsewhere(kind, &note.id, note.actor.as_deref()).await {
                    tracing::warn!(id = %note.id, "cannot read a request another replica changed: {e}");
                    approvals.wake(&note.id);
                }
            }
            Err(_) => approvals.wake(&note.id),
        }
    }
}

/// The services only one process of the machine runs: the hub. Called once, when this process
/// becomes the hub (at start-up, or when it takes over from a hub that exited).
fn start_hub_services(approvals: &Arc<ApprovalService>, config: &Config) {
    // Expiry of overdue requests and the expiry warnings on the change stream.
    approvals.spawn_sweeper();
    // Notifications: only the hub sends them, for every process's requests.
    crate::server::notify::spawn(&config.webhooks, approvals);
    crate::server::notify::desktop::spawn(
        approvals,
        crate::server::notify::desktop::from_config(config.desktop_notifications),
    );
}

/// The gate, with a span for each call when traces are on.
fn traced(traces: &Option<crate::traces::Traces>, gate: Arc<dyn Gate>) -> Arc<dyn Gate> {
    match traces {
        Some(traces) => traces.gate(gate),
        None => gate,
    }
}

/// `mcp-gate [--config FILE] [-- COMMAND...]`: serves one client on this process's stdin and stdout.
pub async fn run_stdio(config: Config) -> anyhow::Result<Option<Signal>> {
    if config.servers.is_empty() {
        bail!("no upstream: give one after `--` (a command or a URL) or configure [servers.NAME] in a --config file");
    }
    let servers = config.servers.iter().cloned().map(Arc::new).collect();
    let started = start_gate_with(&config).await?;
    crate::server::notify::terminal::spawn(&started.approvals);
    let traces = crate::traces::Traces::start(&config.tracing)?;
    let gate = traced(&traces, started.gate);
    let mut opts = session_options(&config, servers, &gate, "stdio");
    opts.stdio = true;
    let (input, output) = stdio::std_streams();
    let stopped_by = Arc::new(std::sync::OnceLock::new());
    let signal = {
        let stopped_by = stopped_by.clone();
        async move {
            let _ = stopped_by.set(shutdown_signal().await);
        }
    };
    // The runtime's park hook (`main`) does not run while the loop polls: the poller calls it.
    let tuning = stdio::Tuning {
        busy_poll: config.stdio.busy_poll,
        on_poll: crate::store::idle::on_park,
        ..stdio::Tuning::default()
    };
    let served = stdio::serve_with(opts, input, output, signal, tuning).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    served?;
    Ok(stopped_by.get().copied())
}

/// `mcp-gate serve`: serves MCP clients over Streamable HTTP on `listen` (else `[listen] addr`).
pub async fn run_serve(config: Config, listen: Option<String>) -> anyhow::Result<Option<Signal>> {
    if config.servers.is_empty() {
        bail!("no upstream: give one after `--` (a command or a URL) or configure [servers.NAME] in a --config file");
    }
    for server in &config.servers {
        if let UpstreamTransport::Stdio { command, .. } = &server.transport {
            check_command(command).with_context(|| format!("upstream `{}`: cannot start `{command}`", server.name))?;
        }
    }
    let addr = match listen {
        Some(a) => a,
        None => config.listen.addr.map_or_else(|| "127.0.0.1:8080".to_owned(), |a| a.to_string()),
    };
    let listener = TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(%local, "listening on a non-loopback address: set a bearer token ([listen] token_env)");
    }
    let servers: Vec<Arc<_>> = config.servers.iter().cloned().map(Arc::new).collect();
    let started = start_gate_with(&config).await?;
    crate::server::notify::terminal::spawn(&started.approvals);
    let traces = crate::traces::Traces::start(&config.tracing)?;
    let gate = traced(&traces, started.gate);
    let single =
        servers.iter().map(|s| (s.name.clone(), session_options(&config, vec![s.clone()], &gate, ""))).collect();
    let mut allowed_hosts = config.listen.allowed_hosts.clone();
    if !local.ip().is_unspecified() {
        allowed_hosts.push(local.ip().to_string());
    }
    let mut readiness =
        Readiness::default().with(crate::server::web::ops::store_check(started.approvals.store.clone()));
    for server in &config.servers {
        readiness = readiness.with(upstream_check(server));
    }
    let operations = http::Operations { readiness, any_host: !local.ip().is_loopback() };
    let state = http::HttpState::with_operations(
        http::HttpOptions {
            all: session_options(&config, servers, &gate, ""),
            single,
            token: config.listen.token.clone(),
            agents: config.approvals.agents.clone(),
            allowed_hosts,
            allowed_origins: config.listen.allowed_origins.clone(),
            limits: http::HttpLimits {
                max_sessions: config.listen.max_sessions,
                session_idle: config.listen.session_idle,
                listener: config.listen.limits,
            },
        },
        operations,
    );
    crate::logging::announce(&format!("mcp-gate: listening on http://{local}/mcp"));
    let stopped_by = Arc::new(std::sync::OnceLock::new());
    let signal = {
        let (stopped_by, approvals) = (stopped_by.clone(), started.approvals.clone());
        async move {
            let signal = shutdown_signal().await;
            tracing::info!(?signal, "stopping: held calls get their approval URL, then sessions close");
            let _ = stopped_by.set(signal);
            // Held calls answer now with the pending reply (the approval stays open for a retry).
            approvals.stop_waiting();
        }
    };
    let served = http::serve(listener, state, signal).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    served?;
    Ok(stopped_by.get().copied())
}

/// The readiness check `upstream NAME` of `serve`: the command of a stdio upstream can be
/// found (each session starts its own), the host of an HTTP upstream accepts TCP connections.
/// Reasons name neither the command nor the URL (which may hold a secret); the log does.
fn upstream_check(server: &ServerConfig) -> Check {
    let name = server.name.clone();
    let transport = server.transport.clone();
    Check::new(format!("upstream {name}"), move || {
        let (name, transport) = (name.clone(), transport.clone());
        Box::pin(async move {
            match transport {
                UpstreamTransport::Stdio { command, .. } => check_command(&command).map_err(|e| {
                    tracing::warn!(server = %name, "readiness: cannot start `{command}`: {e}");
                    NotReady::CommandNotFound
                }),
                UpstreamTransport::StreamableHttp { url, .. } | UpstreamTransport::Sse { url, .. } => {
                    let address = reqwest::Url::parse(&url).ok().and_then(|u| {
                        Some((u.host_str()?.trim_matches(['[', ']']).to_owned(), u.port_or_known_default()?))
                    });
                    let Some(address) = address else { return Err(NotReady::InvalidUrl) };
                    match tokio::net::TcpStream::connect(address).await {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            tracing::warn!(server = %name, "readiness: cannot connect to the upstream: {e}");
                            Err(NotReady::Unreachable(e.kind()))
                        }
                    }
                }
            }
        })
    })
}

/// Checks that a command can be found, so `serve` fails at start-up rather than per session.
fn check_command(command: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new(command);
    if command.contains('/') {
        if path.is_file() {
            return Ok(());
        }
        bail!("no such file");
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| dir.join(command).is_file()))
        .unwrap_or(false);
    if found { Ok(()) } else { bail!("not found in PATH") }
}

/// A signal that asks the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// The exit status of a process stopped by this signal: 128 + its number.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// Completes on Ctrl-C or SIGTERM, saying which.
pub async fn shutdown_signal() -> Signal {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => Signal::Interrupt,
        _ = term => Signal::Terminate,
    }
}
