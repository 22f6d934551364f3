//! `code-mode-bin`: the standalone runtime process. It connects to the host's local socket,
//! sandboxes itself, answers the handshake, and serves any number of in-process sessions
//! over the wire protocol of `code-mode-protocol`. Logs go to stderr through `tracing`;
//! nothing is ever written to stdout (clap's `--help`/`--version` aside).
//!
//! Start-up order matters: V8 and its ICU data are loaded and the socket is connected
//! before the sandbox forbids file access and new sockets; the async runtime's threads are
//! created after it, so they inherit every restriction.
//!
//! Exit codes: 0 when the host closed the connection cleanly, 1 when the connection failed
//! (handshake refused, protocol violation, I/O error), 2 for bad command-line arguments,
//! 70 when a cell could not be stopped.

mod connection;
mod delegate;
mod sandbox;

use clap::Parser;
use interprocess::local_socket::tokio::Stream;
use interprocess::os::unix::uds_local_socket::tokio::Stream as UdsStream;
use std::io::IsTerminal;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;

/// The code-mode runtime process: runs JavaScript cells in V8 for a host over a local socket.
#[derive(Debug, Parser)]
#[command(name = "code-mode-bin", version, about)]
struct Cli {
    /// Path of the host's local socket to connect to.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "sandbox_self_test"
    )]
    socket: Option<PathBuf>,
    /// Log filter for stderr, in `tracing` env-filter syntax (e.g. `info`, `code_mode=debug`).
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    log: String,
    /// Applies the sandbox, then tries `read:<path>` or `exec:<path>` and reports (tests).
    #[arg(long, value_name = "ACTION", hide = true)]
    sandbox_self_test: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    if let Some(action) = &cli.sandbox_self_test {
        return sandbox_self_test(action);
    }
    let Some(socket) = cli.socket else {
        return ExitCode::from(2);
    };
    // V8 first, on the main thread, before any cell thread exists.
    code_mode::platform::init_v8();
    let connected = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(connected) => connected,
        Err(error) => {
            tracing::error!("cannot connect to {}: {error}", socket.display());
            return ExitCode::FAILURE;
        }
    };
    let report = sandbox::apply();
    tracing::info!(socket = %socket.display(), sandbox = %report, "connected and sandboxed");
    if !report.failures.is_empty() {
        tracing::warn!("sandbox incomplete: {report}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
    // Cell threads created from here on inherit the sandbox.
    code_mode::prewarm();
    let outcome = runtime.block_on(async {
        connected
            .set_nonblocking(true)
            .map_err(|error| format!("cannot configure the socket: {error}"))?;
        let stream = UdsStream::try_from(OwnedFd::from(connected))
            .map(Stream::from)
            .map_err(|error| format!("cannot adopt the socket: {error}"))?;
        connection::serve(stream, report.to_string())
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

/// Verifies the sandbox from the inside: exit 0 when the action was refused.
fn sandbox_self_test(action: &str) -> ExitCode {
    code_mode::platform::init_v8();
    let report = sandbox::apply();
    eprintln!("sandbox: {report}");
    match action.split_once(':') {
        Some(("read", path)) => match std::fs::read(path) {
            Ok(bytes) => {
                eprintln!("read {path}: {} bytes (NOT sandboxed)", bytes.len());
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("read {path}: refused: {error}");
                ExitCode::SUCCESS
            }
        },
        Some(("exec", path)) => {
            // The seccomp filter kills the process here; returning means it did not.
            let error = std::process::Command::new(path).status();
            eprintln!("exec {path}: not killed ({error:?}) (NOT sandboxed)");
            ExitCode::FAILURE
        }
        _ => {
            eprintln!("unknown self-test action {action:?}");
            ExitCode::from(2)
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
