//! The command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::config::{CommandLineUpstream, Config, UpstreamTransport};
use crate::downstream::{http, stdio};
use std::io::Write;

use crate::approval::{ApprovalGate, ApprovalSettings, Approvals};
use crate::gate::Gate;
use crate::hub;
use crate::session::SessionOptions;
use crate::store::{Location, Store};

#[derive(Debug, Parser)]
#[command(
    name = "mcp-gate",
    version,
    about = "A transparent MCP proxy that gates tool calls",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  mcp-gate -- npx -y @modelcontextprotocol/server-everything\n  mcp-gate --config proxy.toml\n  mcp-gate serve --listen 127.0.0.1:8080 -- mcp-server-everything"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML).
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name of the upstream given after `--` (default: derived from the command or URL).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The upstream: a command with its arguments, or an http(s):// URL.
    #[arg(last = true, value_name = "COMMAND|URL")]
    pub upstream: Vec<String>,
}

/// `--config` alone, for commands that start no upstream.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP over Streamable HTTP at http://ADDR/mcp and http://ADDR/mcp/NAME.
    Serve {
        /// Address to listen on (default: `[listen] addr`, else 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Validate the configuration and explain what it does.
    CheckConfig {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Inspect the tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Decide on held calls from the terminal, through the approval server's API.
    #[command(after_help = APPROVALS_HELP)]
    Approvals {
        #[command(subcommand)]
        action: ApprovalsAction,
        /// The approval server (default: MCP_GATE_URL, else http:// + `[approvals] listen`).
        #[arg(long, global = true, value_name = "URL")]
        url: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Try it: a built-in MCP server with a gated destructive tool, and a scripted client.
    Demo {
        /// Port of the approval server (default: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        approvals: String,
    },
    /// The demo's MCP server over stdio (used by `demo`).
    #[command(hide = true)]
    DemoServer,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Check the hash chain; exits non-zero when a row was edited or deleted.
    Verify,
    /// Print the latest records.
    Tail {
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
    },
    /// Write every record as JSON Lines to stdout.
    Export,
}

const APPROVALS_HELP: &str = "The token is MCP_GATE_TOKEN, else `[approvals] token`, else the approver-token \
file in the data directory. Exit status: 0 on success, 1 when the server refuses (the API's error code and \
message are printed) or cannot be reached, 2 for a usage error.";

const STATUSES: [&str; 7] = ["pending", "approved", "denied", "expired", "executed", "failed", "all"];

#[derive(Debug, Subcommand)]
pub enum ApprovalsAction {
    /// List approval requests, newest first.
    List {
        #[arg(long, default_value = "pending", value_parser = STATUSES)]
        status: String,
        #[arg(long, value_name = "SERVER")]
        server: Option<String>,
        #[arg(long, value_name = "TOOL")]
        tool: Option<String>,
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one request: arguments, rule, votes and history.
    Show {
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (or vote for it, in a workflow that needs several approvers).
    Approve {
        id: String,
        #[arg(long, value_name = "TEXT")]
        notes: Option<String>,
        /// Decide as this approver (only with the shared token and no `[[approvers]]`).
        #[arg(long, value_name = "NAME")]
        approver: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deny a request; the reason is what the agent is told.
    Deny {
        id: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[arg(long, value_name = "TEXT")]
        notes: Option<String>,
        /// Decide as this approver (only with the shared token and no `[[approvers]]`).
        #[arg(long, value_name = "NAME")]
        approver: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print each change as it happens; ask about each new request when interactive.
    Watch {
        /// Ask approve / deny / skip for each new request (the default when stdin is a terminal).
        #[arg(long, short, conflicts_with = "no_interactive")]
        interactive: bool,
        /// Only print, even on a terminal.
        #[arg(long)]
        no_interactive: bool,
    },
    /// Sign your browser in to the dashboard (at request ID, or the queue) through a one-time link.
    #[command(after_help = "The link works once, for 60 seconds. It is opened with the desktop's opener \
(xdg-open, open) when there is one, and printed either way. MCP_GATE_NO_BROWSER=1 does what --print does.")]
    Open {
        /// The request to open (default: the queue).
        id: Option<String>,
        /// Only print the link; do not start a browser.
        #[arg(long)]
        print: bool,
        /// Print the API's JSON (holds the link).
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line; the binary's `main` only sets up the runtime and logging.
/// Runs a command. `Some(signal)` when a signal ended it: the process then exits with
/// [`Signal::exit_code`], as shells expect of a program stopped by that signal.
pub async fn run(cli: Cli) -> anyhow::Result<Option<Signal>> {
    match cli.command {
        None => run_stdio(cli.run).await,
        Some(Command::Serve { listen, run }) => run_serve(listen, run).await,
        Some(Command::CheckConfig { run }) => {
            let config = load(&run)?;
            eprint!("{}", config.explain());
            Ok(None)
        }
        Some(Command::Audit { action, run }) => audit(action, run).await.map(|()| None),
        Some(Command::Approvals { action, url, config }) => {
            let run = RunArgs { config: config.config, name: None, upstream: Vec::new() };
            approvals(action, url, run).await.map(|()| None)
        }
        Some(Command::Demo { approvals }) => crate::demo::run(&approvals).await.map(|()| None),
        Some(Command::DemoServer) => crate::demo::serve_stdio().await.map(|()| None),
    }
}

async fn audit(action: AuditAction, run: RunArgs) -> anyhow::Result<()> {
    let config = load(&run)?;
    let location = match &config.approvals.database {
        Some(path) => Location::File(path.clone()),
        None => bail!("the database is `:memory:`: there is no audit log to read"),
    };
    let store = Store::open(location).await?;
    match action {
        AuditAction::Verify => {
            let report = crate::audit::verify(&store).await?;
            match report.first_bad {
                None => {
                    eprintln!("audit log intact: {} records verified", report.rows);
                    Ok(())
                }
                Some((id, why)) => {
                    bail!("audit log tampered with at record {id}: {why} ({} records checked)", report.rows)
                }
            }
        }
        AuditAction::Tail { n } => {
            let mut out = std::io::stdout().lock();
            for row in crate::audit::tail(&store, n).await? {
                writeln!(out, "{}", serde_json::to_string(&row)?)?; // stdout-ok: CLI output
            }
            Ok(())
        }
        AuditAction::Export => {
            let mut out = std::io::stdout();
            let n = crate::audit::export_jsonl(&store, &mut out).await?;
            eprintln!("{n} records exported");
            Ok(())
        }
    }
}

async fn approvals(action: ApprovalsAction, url: Option<String>, run: RunArgs) -> anyhow::Result<()> {
    use crate::approver::Request;
    let target = crate::approver::resolve_target(url.as_deref(), || load(&run))?;
    let (request, json) = match action {
        ApprovalsAction::List { status, server, tool, agent, limit, json } => {
            (Request::List { status, server, tool, agent, limit }, json)
        }
        ApprovalsAction::Show { id, json } => (Request::Show { id }, json),
        ApprovalsAction::Approve { id, notes, approver, json } => {
            (Request::Decide { id, approve: true, notes, reason: None, approver }, json)
        }
        ApprovalsAction::Deny { id, reason, notes, approver, json } => {
            (Request::Decide { id, approve: false, notes, reason: Some(reason), approver }, json)
        }
        ApprovalsAction::Watch { interactive, no_interactive } => {
            use std::io::IsTerminal;
            let interactive = interactive || (!no_interactive && std::io::stdin().is_terminal());
            (Request::Watch { interactive }, false)
        }
        ApprovalsAction::Open { id, print, json } => {
            let no_browser = std::env::var_os("MCP_GATE_NO_BROWSER").is_some_and(|v| !v.is_empty() && v != "0");
            (Request::Open { id, browser: !(print || json || no_browser) }, json)
        }
    };
    crate::approver::run(target, request, json).await
}

fn load(run: &RunArgs) -> anyhow::Result<Config> {
    let extra =
        (!run.upstream.is_empty()).then(|| CommandLineUpstream { name: run.name.clone(), argv: run.upstream.clone() });
    Ok(Config::load(run.config.as_deref(), extra.as_ref())?)
}

pub fn session_options(
    config: &Config,
    servers: Vec<Arc<crate::config::ServerConfig>>,
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
    }
}

/// What [`start_gate_with`] started.
pub struct Started {
    pub gate: Arc<dyn Gate>,
    pub approvals: Arc<Approvals>,
    /// Base URL of the approval server.
    pub public_url: String,
    /// The approval server's state (served by this process when it is the hub).
    pub web: Arc<crate::web::WebState>,
}

/// Opens the store, starts (or joins) the approval server and returns the gate.
pub async fn start_gate(config: &Config) -> anyhow::Result<Arc<dyn Gate>> {
    Ok(start_gate_with(config).await?.gate)
}

/// Opens the store and takes this process's place on the machine (see [`crate::hub`]): the hub,
/// serving approvals on `[approvals] listen`, or a follower of the hub already there.
pub async fn start_gate_with(config: &Config) -> anyhow::Result<Started> {
    start_gate_announcing(config, true).await
}

/// [`start_gate_with`]; `announce: false` keeps the approval address and token file lines off
/// stderr (the demo prints its own).
pub async fn start_gate_announcing(config: &Config, announce: bool) -> anyhow::Result<Started> {
    let a = &config.approvals;
    let location = match &a.database {
        Some(path) => Location::File(path.clone()),
        None => Location::Memory,
    };
    let store =
        Store::open(location.clone()).await.with_context(|| format!("opening the approval store {location:?}"))?;
    let (token, token_file) = crate::web::load_or_create_token(a.token.as_deref(), &a.data_dir)
        .with_context(|| format!("storing the approver token in {}", a.data_dir.display()))?;
    if let Some(file) = &token_file {
        let key = format!("approver token file {}", file.display());
        crate::config::credentials_apart(&config.listen, a, Some((&token, &key)))
            .map_err(|(key, message)| anyhow::anyhow!("`{key}`: {message}"))?;
    }
    let start = hub::discover(&a.listen, &token, store.path())
        .await
        .with_context(|| format!("cannot listen on {} for approvals", a.listen))?;
    // The address to show: this process's server, or the hub's (the machine's approval address).
    let shown = match &start {
        hub::Start::Serve { listener, .. } => listener.local_addr()?.to_string(),
        hub::Start::Follow(_) => a.listen.clone(),
    };
    let public_url = a.public_url.clone().unwrap_or_else(|| format!("http://{shown}"));
    let settings = ApprovalSettings {
        wait: a.wait,
        public_url: public_url.clone(),
        expiry_by_risk: a.expiry_by_risk,
        workflows: a.workflows.clone(),
        redact: a.redact.clone(),
        expiry_warning: a.expiry_warning,
    };
    let approvals = Approvals::new(store, config.policy.clone(), settings);
    if let Some(reviewer) = crate::review::Reviewer::from_config(a).context("setting up the AI reviewer")? {
        approvals.set_reviewer(reviewer);
    }
    let mut hosts = Vec::new();
    if let Some(host) = public_url.split("://").nth(1).and_then(|r| r.split(['/', ':']).next()) {
        hosts.push(host.to_owned());
    }
    let mut web = crate::web::WebState::new(approvals.clone(), token.clone(), a.approvers.clone(), hosts);
    if let Some(w) = Arc::get_mut(&mut web) {
        w.limits = a.limits;
        w.token_file = token_file.clone();
    }
    let gate: Arc<dyn Gate> = Arc::new(ApprovalGate { approvals: approvals.clone() });
    let on_hub = {
        let approvals = approvals.clone();
        let config = config.clone();
        Box::new(move || start_hub_services(&approvals, &config))
    };
    if announce {
        eprintln!("mcp-gate: approvals at http://{shown}/");
    }
    hub::Node { approvals: approvals.clone(), web: web.clone(), listen: a.listen.clone(), token, on_hub }.start(start);
    if let Some(file) = token_file.filter(|_| announce) {
        eprintln!("mcp-gate: approver token in {}", file.display());
    }
    if config.default_policy {
        tracing::info!("no [[rules]]: tools annotated readOnlyHint are allowed, every other call needs approval");
    }
    Ok(Started { gate, approvals, public_url, web })
}

/// The services only one process of the machine runs: the hub. Called once, when this process
/// becomes the hub (at start-up, or when it takes over from a hub that exited).
fn start_hub_services(approvals: &Arc<Approvals>, config: &Config) {
    // Expiry of overdue requests and the expiry warnings on the change stream.
    approvals.spawn_sweeper();
    // Notifications: only the hub sends them, for every process's requests.
    crate::notify::spawn(&config.webhooks, approvals);
    crate::notify::desktop::spawn(approvals, crate::notify::desktop::from_config(config.desktop_notifications));
}

async fn run_stdio(run: RunArgs) -> anyhow::Result<Option<Signal>> {
    let config = load(&run)?;
    if config.servers.is_empty() {
        bail!("no upstream: give one after `--` (a command or a URL) or configure [servers.NAME] in a --config file");
    }
    let servers = config.servers.iter().cloned().map(Arc::new).collect();
    let started = start_gate_with(&config).await?;
    crate::notify::terminal::spawn(&started.approvals);
    let gate = started.gate;
    let opts = session_options(&config, servers, &gate, "stdio");
    let (input, output) = stdio::std_streams();
    let stopped_by = Arc::new(std::sync::OnceLock::new());
    let signal = {
        let stopped_by = stopped_by.clone();
        async move {
            let _ = stopped_by.set(shutdown_signal().await);
        }
    };
    stdio::serve(opts, input, output, signal).await?;
    Ok(stopped_by.get().copied())
}

async fn run_serve(listen: Option<String>, run: RunArgs) -> anyhow::Result<Option<Signal>> {
    let config = load(&run)?;
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
    crate::notify::terminal::spawn(&started.approvals);
    let gate = started.gate;
    let single =
        servers.iter().map(|s| (s.name.clone(), session_options(&config, vec![s.clone()], &gate, ""))).collect();
    let mut allowed_hosts = config.listen.allowed_hosts.clone();
    if !local.ip().is_unspecified() {
        allowed_hosts.push(local.ip().to_string());
    }
    let state = http::HttpState::new(http::HttpOptions {
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
    });
    eprintln!("mcp-gate: listening on http://{local}/mcp");
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
    http::serve(listener, state, signal).await?;
    Ok(stopped_by.get().copied())
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
