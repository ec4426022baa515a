use std::process::ExitCode;

use clap::Parser;
use mcp_gate::logging::{self, Format};

fn main() -> ExitCode {
    let cli = mcp_gate::cli::Cli::parse();
    // The demo shows only its walkthrough (and errors) unless MCP_GATE_LOG asks for more.
    let quiet = matches!(cli.command, Some(mcp_gate::cli::Command::Demo { .. }));
    let from_file = mcp_gate::config::Config::peek_log_format(cli.config_file());
    let format = match Format::choose(from_file.as_deref()) {
        Ok(format) => format,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(format, if quiet { "error" } else { "info" });
    // stdio mode serves one client: one thread keeps every message hop on the same core with no
    // cross-thread wakeups. `serve` and the other commands use the multi-thread runtime.
    let runtime = if cli.command.is_none() {
        // That thread also commits the store's deferred audit rows when it is about to sleep with
        // no call in flight, so that no second thread runs while a call passes (`store::idle`).
        mcp_gate::store::idle::enable();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(mcp_gate::store::idle::on_park)
            .build()
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
    mcp_gate::store::idle::close();
    mcp_gate::store::wait_for_workers(mcp_gate::store::EXIT_WAIT);
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(signal)) => ExitCode::from(signal.exit_code()),
        Err(e) => {
            logging::fatal(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
