//! `codex-code-mode-host`: Codex's code-mode host protocol over our runtime process.
//!
//! `--listen grpc+stdio://` is what codex passes; no argument (or `--listen stdio`) is the
//! JSON protocol; `--listen grpc://IP:PORT` serves `codex app-server --code-mode-host`.
//! `install`, `uninstall` and `--check` put this host where a codex install finds it.

use clap::Parser;
use code_mode_host::{ProcessConfig, ProcessProvider};
use codex_code_mode_host::serve::{self, Listen};
use codex_code_mode_host::stdio;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "codex-code-mode-host",
    version,
    about = "Codex's code-mode host, running cells in the code-mode runtime"
)]
struct Cli {
    /// `grpc+stdio://` (gRPC on stdin/stdout, codex's default), `stdio` (the JSON
    /// protocol) or `grpc://IP:PORT`.
    #[arg(long, default_value = "stdio")]
    listen: String,
    /// TLS for `grpc://`: the server's certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS for `grpc://`: the server's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS for `grpc://`: clients must present a certificate from this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// The runtime binary (default: $CODE_MODE_BIN, then `code-mode-bin` next to this
    /// executable, then PATH).
    #[arg(long)]
    runtime: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let listen: Listen = match cli.listen.parse() {
        Ok(listen) => listen,
        Err(error) => {
            eprintln!("codex-code-mode-host: {error}");
            return ExitCode::from(2);
        }
    };
    // Before any thread or child exists: stdout is the protocol's alone from here on.
    let protocol_stdio = if listen.is_stdio() {
        match stdio::take_protocol_stdio() {
            Ok(protocol) => Some(protocol),
            Err(error) => {
                eprintln!("codex-code-mode-host: cannot take stdin and stdout: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, listen, protocol_stdio));
    // Sessions are closed; do not wait for tasks of a client that is gone.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("codex-code-mode-host: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CODEX_CODE_MODE_HOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(
    cli: Cli,
    listen: Listen,
    protocol_stdio: Option<stdio::ProtocolStdio>,
) -> Result<(), String> {
    let provider = ProcessProvider::new(ProcessConfig {
        binary: cli.runtime.clone(),
        ..ProcessConfig::default()
    })
    .map_err(|error| error.to_string())?;
    // The runtime starts while the client connects, so the first exec does not wait.
    let warm = provider.clone();
    tokio::spawn(async move {
        if let Err(error) = warm.start().await {
            tracing::warn!(%error, "the runtime did not start ahead of the first call");
        }
    });
    match (listen, protocol_stdio) {
        (Listen::GrpcStdio, Some(protocol)) => {
            let input = stdio::reader(protocol.input).map_err(|error| error.to_string())?;
            let output = stdio::writer(protocol.output).map_err(|error| error.to_string())?;
            serve::serve_grpc_connection(provider, tokio::io::join(input, output))
                .await
                .map_err(|error| format!("the gRPC connection on stdio failed: {error}"))
        }
        (Listen::GrpcTcp(address), _) => {
            let tls = match (&cli.tls_cert, &cli.tls_key) {
                (Some(cert), Some(key)) => {
                    let files = code_mode_host::protocol::wire::tls::TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: cli.client_ca.clone(),
                    };
                    let config =
                        code_mode_host::protocol::wire::tls::server_config(&files, &[b"h2"])
                            .map_err(|error| error.to_string())?;
                    Some(config)
                }
                _ => {
                    if !address.ip().is_loopback() {
                        return Err(format!(
                            "--listen grpc://{address} serves plaintext only on a loopback address; give --tls-cert and --tls-key to listen on {}",
                            address.ip()
                        ));
                    }
                    None
                }
            };
            serve::serve_grpc_tcp(provider, address, tls, |bound| {
                tracing::info!(%bound, "listening");
                eprintln!("codex-code-mode-host: listening on grpc://{bound}");
            })
            .await
            .map_err(|error| format!("cannot serve on {address}: {error}"))
        }
        (Listen::JsonStdio, Some(_protocol)) => {
            Err("the JSON protocol is not built yet".to_owned())
        }
        (_, None) => Err("stdio was not taken".to_owned()),
    }
}
