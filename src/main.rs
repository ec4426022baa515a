use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = mcp_gate::cli::Cli::parse();
    // The demo shows only its walkthrough (and errors) unless MCP_GATE_LOG asks for more.
    let quiet = matches!(cli.command, Some(mcp_gate::cli::Command::Demo { .. }));
    let filter = EnvFilter::try_from_env("MCP_GATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if quiet { "error" } else { "info" }));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
    // stdio mode serves one client: one thread keeps every message hop on the same core with no
    // cross-thread wakeups. `serve` and the other commands use the multi-thread runtime.
    let runtime = if cli.command.is_none() {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(mcp_gate::cli::run(cli));
    // A blocking read of stdin may still be pending: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(signal)) => ExitCode::from(signal.exit_code()),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
