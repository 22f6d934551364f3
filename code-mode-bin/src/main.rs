//! `code-mode-bin`: the standalone runtime process. It connects to the host's local socket,
//! answers the handshake, and serves any number of in-process sessions over the wire
//! protocol of `code-mode-protocol`. Logs go to stderr through `tracing`; nothing is ever
//! written to stdout (clap's `--help`/`--version` aside).
//!
//! Exit codes: 0 when the host closed the connection cleanly, 1 when the connection failed
//! (handshake refused, protocol violation, I/O error), 2 for bad command-line arguments.

mod connection;
mod delegate;

use clap::Parser;
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// The code-mode runtime process: runs JavaScript cells in V8 for a host over a local socket.
#[derive(Debug, Parser)]
#[command(name = "code-mode-bin", version, about)]
struct Cli {
    /// Path of the host's local socket to connect to.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Log filter for stderr, in `tracing` env-filter syntax (e.g. `info`, `code_mode=debug`).
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    // V8 first, on the main thread, before any cell thread exists.
    code_mode::platform::init_v8();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("code-mode-bin")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let name = cli
            .socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(|error| format!("invalid socket path {}: {error}", cli.socket.display()))?;
        let stream = Stream::connect(name)
            .await
            .map_err(|error| format!("cannot connect to {}: {error}", cli.socket.display()))?;
        tracing::info!(socket = %cli.socket.display(), "connected");
        connection::serve(stream)
            .await
            .map_err(|error| error.to_string())
    });
    // Cell threads may still be tearing down their isolates; don't wait for idle tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => {
            tracing::info!("the host closed the connection; exiting");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("code-mode-bin: invalid --log filter {filter:?} ({error}); using `warn`");
        tracing_subscriber::EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
