//! The command line.

pub mod approvals;

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use crate::app::{self, Signal};
use crate::config::Config;
use crate::store::{Location, Store};
use crate::upstream::settings::CommandLineUpstream;

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
        None => app::run_stdio(load(&cli.run)?).await,
        Some(Command::Serve { listen, run }) => app::run_serve(load(&run)?, listen).await,
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
        Location::Memory => bail!("the database is `:memory:`: there is no audit log to read"),
        other => other.clone(),
    };
    // Opening creates a missing file: a mistyped data directory would then read as an intact,
    // empty log. The audit commands read only a database that exists.
    if let Location::File(path) = &location
        && !path.is_file()
    {
        bail!("no database at {}: there is no audit log to read (is the data directory right?)", path.display());
    }
    let store = Store::open(location).await?;
    match action {
        AuditAction::Verify => {
            let report = crate::store::audit::verify(&store).await?;
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
            for row in crate::store::audit::tail(&store, n).await? {
                let line = crate::cli::approvals::render::json_for_terminal(&serde_json::to_string(&row)?);
                writeln!(out, "{line}")?; // stdout-ok: CLI output
            }
            Ok(())
        }
        AuditAction::Export => {
            let mut out = std::io::stdout();
            let n = crate::store::audit::export_jsonl(&store, &mut out).await?;
            eprintln!("{n} records exported");
            Ok(())
        }
    }
}

async fn approvals(action: ApprovalsAction, url: Option<String>, run: RunArgs) -> anyhow::Result<()> {
    use crate::cli::approvals::Request;
    let target = crate::cli::approvals::resolve_target(url.as_deref(), || load(&run))?;
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
    crate::cli::approvals::run(target, request, json).await
}

impl Cli {
    /// The `--config` file of the command, if it takes one.
    pub fn config_file(&self) -> Option<&std::path::Path> {
        match &self.command {
            None => self.run.config.as_deref(),
            Some(Command::Serve { run, .. } | Command::CheckConfig { run } | Command::Audit { run, .. }) => {
                run.config.as_deref()
            }
            Some(Command::Approvals { config, .. }) => config.config.as_deref(),
            Some(Command::Demo { .. } | Command::DemoServer) => None,
        }
    }
}

fn load(run: &RunArgs) -> anyhow::Result<Config> {
    let extra =
        (!run.upstream.is_empty()).then(|| CommandLineUpstream { name: run.name.clone(), argv: run.upstream.clone() });
    Ok(Config::load(run.config.as_deref(), extra.as_ref())?)
}
