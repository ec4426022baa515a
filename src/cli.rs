//! The command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::config::{CommandLineUpstream, Config, UpstreamTransport};
use crate::downstream::{http, stdio};
use crate::gate::{AllowAll, Gate};
use crate::session::SessionOptions;

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
}

/// Runs the command line; the binary's `main` only sets up the runtime and logging.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => run_stdio(cli.run).await,
        Some(Command::Serve { listen, run }) => run_serve(listen, run).await,
        Some(Command::CheckConfig { run }) => {
            let config = load(&run)?;
            eprint!("{}", config.explain());
            Ok(())
        }
    }
}

fn load(run: &RunArgs) -> anyhow::Result<Config> {
    let extra =
        (!run.upstream.is_empty()).then(|| CommandLineUpstream { name: run.name.clone(), argv: run.upstream.clone() });
    Ok(Config::load(run.config.as_deref(), extra.as_ref())?)
}

fn gate(_config: &Config) -> Arc<dyn Gate> {
    Arc::new(AllowAll)
}

fn session_options(config: &Config, servers: Vec<Arc<crate::config::ServerConfig>>, label: &str) -> SessionOptions {
    SessionOptions {
        servers,
        separator: config.separator.clone(),
        shared: false,
        gate: gate(config),
        label: label.to_owned(),
    }
}

async fn run_stdio(run: RunArgs) -> anyhow::Result<()> {
    let config = load(&run)?;
    if config.servers.is_empty() {
        bail!("no upstream: give one after `--` (a command or a URL) or configure [servers.NAME] in a --config file");
    }
    let servers = config.servers.iter().cloned().map(Arc::new).collect();
    let opts = session_options(&config, servers, "stdio");
    stdio::serve(opts, tokio::io::stdin(), tokio::io::stdout(), shutdown_signal()).await?;
    Ok(())
}

async fn run_serve(listen: Option<String>, run: RunArgs) -> anyhow::Result<()> {
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
    let single = servers.iter().map(|s| (s.name.clone(), session_options(&config, vec![s.clone()], ""))).collect();
    let mut allowed_hosts = config.listen.allowed_hosts.clone();
    if !local.ip().is_unspecified() {
        allowed_hosts.push(local.ip().to_string());
    }
    let state = http::HttpState::new(http::HttpOptions {
        all: session_options(&config, servers, ""),
        single,
        token: config.listen.token.clone(),
        allowed_hosts,
        allowed_origins: config.listen.allowed_origins.clone(),
    });
    eprintln!("mcp-gate: listening on http://{local}/mcp");
    http::serve(listener, state, shutdown_signal()).await?;
    Ok(())
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

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
        _ = ctrl_c => {}
        _ = term => {}
    }
}
