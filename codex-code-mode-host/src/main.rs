//! `codex-code-mode-host`: Codex's code-mode host protocol over our runtime process.
//!
//! `--listen grpc+stdio://` is what codex passes; no argument (or `--listen stdio`) is the
//! JSON protocol; `--listen grpc://IP:PORT` serves `codex app-server --code-mode-host`.
//! `install`, `uninstall` and `--check` put this host where a codex install finds it.

use clap::Parser;
use code_mode_host::{ProcessConfig, ProcessProvider, RemoteConfig, RemoteProvider, Runtimes};
use codex_code_mode_host::serve::{self, Listen};
use codex_code_mode_host::stdio;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "codex-code-mode-host",
    version = concat!(env!("CARGO_PKG_VERSION"), " (code-mode)"),
    about = "Codex's code-mode host, running cells in the code-mode runtime",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Say which host the codex install (--codex, or `codex` on PATH) runs, and exit.
    #[arg(long)]
    check: bool,
    /// The codex executable (or npm's `codex` launcher) of the install to check.
    #[arg(long, value_name = "PATH")]
    codex: Option<PathBuf>,
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
    /// executable, then PATH), looked for at every start of a runtime.
    #[arg(long, conflicts_with = "runtimes")]
    runtime: Option<PathBuf>,
    /// Where the local runtime keeps its startup snapshot between starts (default:
    /// `$XDG_CACHE_HOME/code-mode`, else `~/.cache/code-mode`; `off` for none): a start
    /// that finds it makes no snapshot.
    #[arg(long, value_name = "DIR")]
    snapshot_cache: Option<PathBuf>,
    /// With `--listen grpc://`: where the sessions are kept across restarts, shared by
    /// replicas with `--state-url` (see docs/CODEX.md, "Restarts").
    #[command(flatten)]
    state: code_mode_state::StateArgs,
    /// Run cells on runtimes listening elsewhere (`code-mode-bin --listen`) instead of a
    /// local runtime process: HOST:PORT, repeated or comma-separated, or `dns://NAME:PORT`
    /// for a name that resolves to many (resolved again as the pool runs).
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
    runtimes: Vec<String>,
    /// With --runtimes: the CA of the runtimes' certificates (PEM). With --runtimes-cert
    /// and --runtimes-key; without the three, plaintext to loopback runtimes only.
    #[arg(long, value_name = "PEM", requires = "runtimes")]
    runtimes_ca: Option<PathBuf>,
    /// With --runtimes: this host's client certificate (PEM).
    #[arg(long, value_name = "PEM", requires = "runtimes")]
    runtimes_cert: Option<PathBuf>,
    /// With --runtimes: this host's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "runtimes")]
    runtimes_key: Option<PathBuf>,
    /// CPU time each cell may use, in milliseconds (codex sends no such limit).
    #[arg(long, value_name = "MS", default_value_t = code_mode_host::protocol::session::DEFAULT_CPU_BUDGET_MS)]
    cpu_budget_ms: u64,
    /// Cells admitted and not yet closed at once, across every client; an Execute over it
    /// is refused (RESOURCE_EXHAUSTED). Codex's own host allows 128.
    #[arg(long, value_name = "N", default_value_t = codex_code_mode_host::admission::DEFAULT_MAX_ACTIVE_CELLS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_active_cells: usize,
    /// Execute, Wait and Terminate calls in flight at once, across every client; one
    /// over it is refused (RESOURCE_EXHAUSTED).
    #[arg(long, value_name = "N", default_value_t = codex_code_mode_host::admission::DEFAULT_MAX_IN_FLIGHT_REQUESTS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_in_flight_requests: usize,
    /// With `--listen grpc://`: also answer `GET /healthz` (and nothing else) in plain
    /// HTTP/1 on IP:PORT, for probes from off the machine while the front itself listens
    /// on loopback.
    #[arg(long, value_name = "IP:PORT")]
    health_listen: Option<std::net::SocketAddr>,
    /// With `--listen grpc://`: connections served at once (lowered to what the open-file
    /// limit leaves); one over it is closed at once.
    #[arg(long, value_name = "N", default_value_t = code_mode_tls::gate::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// With `--listen grpc://`: sessions one connection may have open at once; an
    /// OpenSession over it is refused (RESOURCE_EXHAUSTED).
    #[arg(long, value_name = "N", default_value_t = codex_code_mode_host::front::DEFAULT_MAX_SESSIONS_PER_CONNECTION, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_sessions_per_connection: usize,
    /// Stream raw OTLP trace batches (JSON) to WebSocket clients of ws://IP:PORT, a
    /// loopback address only (the spans name sessions); a request with an `Origin` header
    /// is refused.
    #[arg(long, value_name = "URL", conflicts_with = "otel_trace_exporter")]
    otel_trace_listen: Option<String>,
    /// Send traces as OTLP/HTTP JSON to this URL (a full path, such as
    /// http://127.0.0.1:4318/v1/traces). Without either option, the standard
    /// OTEL_EXPORTER_OTLP_* variables are read.
    #[arg(long, value_name = "URL")]
    otel_trace_exporter: Option<String>,
    /// Let spans hold what the model wrote: `source`, `arguments` or both (comma-separated),
    /// each capped at 4 KiB. Off by default.
    #[arg(long, value_name = "WHAT", default_value = "none")]
    trace_capture: String,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Put this host (and its runtime) where a codex install finds it.
    Install {
        /// The codex executable or npm launcher (default: `codex` on PATH).
        #[arg(long, value_name = "PATH")]
        codex: Option<PathBuf>,
    },
    /// Remove what `install` put there and restore codex's own host.
    Uninstall {
        /// The codex executable or npm launcher (default: `codex` on PATH).
        #[arg(long, value_name = "PATH")]
        codex: Option<PathBuf>,
    },
    /// Say which host a codex install runs.
    Check {
        /// The codex executable or npm launcher (default: `codex` on PATH).
        #[arg(long, value_name = "PATH")]
        codex: Option<PathBuf>,
    },
}

/// `install`, `uninstall` and `check`: what they did goes to stdout (nothing serves
/// the protocol in these modes).
#[expect(
    clippy::print_stdout,
    reason = "the install commands report to the user"
)]
fn manage(command: Command) -> ExitCode {
    use codex_code_mode_host::install::CodexInstall;
    let (Command::Install { codex } | Command::Uninstall { codex } | Command::Check { codex }) =
        &command;
    let install = match CodexInstall::locate(codex.as_deref()) {
        Ok(install) => install,
        Err(error) => {
            eprintln!("codex-code-mode-host: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result =
        match command {
            Command::Check { .. } => {
                let choice = install.check();
                println!("codex: {}", install.codex.display());
                match &choice.path {
                    Some(path) if choice.ours => {
                        println!("host: {} (this code-mode host)", path.display());
                    }
                    Some(path) => println!("host: {} (codex's own host)", path.display()),
                    None => println!("host: none found; codex's code mode will be unavailable"),
                }
                for path in &choice.searched {
                    println!("searched: {}", path.display());
                }
                Ok(())
            }
            Command::Install { .. } => std::env::current_exe()
                .map_err(|error| format!("cannot find this executable: {error}"))
                .and_then(|host| {
                    // One file when this executable carries the runtime; else the runtime
                    // goes beside it.
                    let runtime = if cfg!(feature = "runtime") {
                        None
                    } else {
                        Some(code_mode_host::find_binary(None).map_err(|error| error.to_string())?)
                    };
                    install
                        .install(&host, runtime.as_deref())
                        .map_err(|error| error.to_string())
                })
                .map(|written| {
                    for path in written {
                        println!("installed: {}", path.display());
                    }
                    println!("codex {} now runs this host", install.codex.display());
                }),
            Command::Uninstall { .. } => install
                .uninstall()
                .map_err(|error| error.to_string())
                .map(|removed| {
                    for path in removed {
                        println!("removed: {}", path.display());
                    }
                    let choice = install.check();
                    match choice.path {
                        Some(path) => println!("codex runs {} again", path.display()),
                        None => println!("no host is left for codex"),
                    }
                }),
        };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("codex-code-mode-host: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The front's async runtime. On stdio the front serves one codex and keeps no state
/// store: it only moves messages between that codex and the runtime, microseconds each, so
/// one thread does it all, and a task that wakes another (every hop of a call, a wait's
/// events) does not wake a second thread with a system call. A TCP front serves many
/// codexes and may commit a state store on the calling thread, which must not stall the
/// others: it has a worker pool.
fn async_runtime(listen: &Listen) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if listen.is_stdio() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

/// The hidden first argument that makes this executable the runtime process (one-file
/// installs): the front starts itself with it, never a user.
#[cfg(feature = "runtime")]
const RUNTIME_MODE: &str = "__code-mode-runtime";

fn main() -> ExitCode {
    // The runtime, in a process of its own: before anything of the front exists.
    #[cfg(feature = "runtime")]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == RUNTIME_MODE)
    {
        let program = std::ffi::OsString::from(code_mode_host::BINARY_NAME);
        return code_mode_bin::run(std::iter::once(program).chain(std::env::args_os().skip(2)));
    }
    // First of all, while this process has one thread and has touched little: the
    // runtime, forked before the arguments are parsed. It starts V8 while they are, then
    // is sent its own command line, or killed if this front has no use for it.
    let forked = match fork_first() {
        #[cfg(feature = "runtime")]
        First::Runtime(code) => return code,
        First::Front(forked) => forked,
    };
    let mut cli = Cli::parse();
    if cli.check {
        drop(forked);
        return manage(Command::Check {
            codex: cli.codex.take(),
        });
    }
    if let Some(command) = cli.command.take() {
        drop(forked);
        return manage(command);
    }
    let listen: Listen = match cli.listen.parse() {
        Ok(listen) => listen,
        Err(error) => {
            eprintln!("codex-code-mode-host: {error}");
            return ExitCode::from(2);
        }
    };
    let local = cli.runtimes.is_empty().then(|| local_runtime(&cli));
    let prelaunched = prelaunch(local.as_ref(), forked);
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
    let telemetry = match telemetry(&cli) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("codex-code-mode-host: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(telemetry.as_ref());
    // As Codex's host: a span for the start, then one for the serving life.
    let startup = tracing::info_span!(parent: None, "code_mode_host.startup").entered();
    let runtime = match async_runtime(&listen) {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    drop(startup);
    let local = local.map(|config| LocalRuntime {
        config,
        prelaunched: prelaunched.and_then(|forked| {
            forked
                .map_err(
                    |error| tracing::warn!(%error, "no runtime forked at start; one is spawned"),
                )
                .ok()
        }),
    });
    let result = runtime.block_on(tracing::Instrument::instrument(
        run(cli, listen, protocol_stdio, local),
        tracing::info_span!(parent: None, "code_mode_host.run_main"),
    ));
    // Sessions are closed; do not wait for tasks of a client that is gone.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("codex-code-mode-host: {error}");
            ExitCode::FAILURE
        }
    };
    // What is left of the traces goes out before the process ends.
    drop(telemetry);
    code
}

fn init_logging(telemetry: Option<&code_mode_trace::Telemetry>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CODEX_CODE_MODE_HOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    code_mode_trace::init_subscriber(code_mode_trace::stderr_logs(filter), telemetry);
}

/// The trace exporter the options (else the OTEL_* environment) ask for, as Codex's host
/// names its resource: `service.name = codex-code-mode-host`, `env = code-mode-host`.
fn telemetry(cli: &Cli) -> Result<Option<code_mode_trace::Telemetry>, code_mode_trace::TraceError> {
    use code_mode_trace::{Capture, Destination, TraceSettings};
    const SERVICE: &str = "codex-code-mode-host";
    let version = env!("CARGO_PKG_VERSION");
    let settings = if let Some(url) = &cli.otel_trace_listen {
        Some(TraceSettings::new(
            Destination::websocket(url)?,
            SERVICE,
            version,
        ))
    } else if let Some(url) = &cli.otel_trace_exporter {
        Some(TraceSettings::new(
            Destination::otlp_json(url)?,
            SERVICE,
            version,
        ))
    } else {
        TraceSettings::from_env(SERVICE, version)?
    };
    let Some(mut settings) = settings else {
        return Ok(None);
    };
    settings
        .resource
        .push(("env".to_owned(), "code-mode-host".to_owned()));
    settings.capture = Capture::parse(&cli.trace_capture)?;
    code_mode_trace::Telemetry::start(settings).map(Some)
}

/// The runtime forked at start, or why none was; `None` if none was tried.
type ForkedRuntime = Option<Result<code_mode_host::Prelaunched, code_mode_host::ForkError>>;

/// What [`fork_first`] made of this process.
enum First {
    /// The front, with the runtime it forked (or why it did not), if it tried.
    Front(ForkedRuntime),
    /// The forked runtime, done: its exit code.
    #[cfg(feature = "runtime")]
    Runtime(ExitCode),
}

/// Forks a runtime from this process, first thing in `main`, when the executable carries
/// one (see `code_mode_host::fork_runtime`): the runtime then skips the exec and load that
/// a spawned one pays for on the cold start's path, and starts V8 while the front parses
/// its arguments. The child waits for its command line ([`prelaunch`] sends it) and then
/// runs as the runtime; a front that has no use for it (another runtime named, remote
/// runtimes, a management command) drops it, which kills it.
fn fork_first() -> First {
    #[cfg(feature = "runtime")]
    {
        match code_mode_host::fork_runtime() {
            Ok(code_mode_host::Forked::Child(socket)) => {
                code_mode_bin::start_v8();
                let (socket, args) = code_mode_host::receive_arguments(socket);
                let Ok(args) = args else {
                    // The front is gone, or did not want this runtime.
                    return First::Runtime(ExitCode::FAILURE);
                };
                // The descriptor is the child's for good: the runtime takes it by number
                // (`--socket-fd`, in the arguments the front sent).
                let _ = std::os::fd::IntoRawFd::into_raw_fd(socket);
                First::Runtime(code_mode_bin::run(args))
            }
            Ok(code_mode_host::Forked::Parent(runtime)) => First::Front(Some(Ok(runtime))),
            Err(error) => First::Front(Some(Err(error))),
        }
    }
    #[cfg(not(feature = "runtime"))]
    First::Front(None)
}

/// The local runtime's configuration, and the runtime forked at start, if one was.
struct LocalRuntime {
    config: ProcessConfig,
    prelaunched: Option<code_mode_host::Prelaunched>,
}

/// The runtime forked at start ([`fork_first`]) for the local runtime (`config`, if
/// cells run on one) when that is this executable in its runtime mode, sent its command
/// line; otherwise it is dropped (killed). The provider adopts the child at its first
/// start; a later runtime is spawned.
fn prelaunch(config: Option<&ProcessConfig>, forked: ForkedRuntime) -> ForkedRuntime {
    #[cfg(feature = "runtime")]
    if let Some(config) = config
        && config
            .runtime_args
            .first()
            .is_some_and(|arg| arg == RUNTIME_MODE)
    {
        let program = std::ffi::OsString::from(code_mode_host::BINARY_NAME);
        // In place of the runtime mode that tells this executable to become the runtime:
        // the forked child is the runtime already, its socket on a known descriptor.
        let args: Vec<std::ffi::OsString> = std::iter::once(program)
            .chain(
                config
                    .runtime_argv(code_mode_host::RuntimeSocket::Fd(code_mode_host::SOCKET_FD))
                    .into_iter()
                    .skip(1),
            )
            .collect();
        return forked.map(|forked| {
            let mut runtime = forked?;
            runtime
                .send_arguments(&args)
                .map_err(|source| code_mode_host::ForkError::Io {
                    what: "send the forked runtime its arguments",
                    source,
                })?;
            Ok(runtime)
        });
    }
    let _ = config;
    None
}

/// Whether `--runtime` or `$CODE_MODE_BIN` names the runtime binary.
#[cfg(feature = "runtime")]
fn runtime_named(cli: &Cli) -> bool {
    cli.runtime.is_some()
        || std::env::var_os(code_mode_host::BINARY_ENV).is_some_and(|value| !value.is_empty())
}

/// The local runtime: the binary `--runtime` or `$CODE_MODE_BIN` names, else this very
/// executable in its runtime mode (it carries the runtime), else `code-mode-bin` found
/// beside it or on PATH. It is looked for at every start, not once: a front whose runtime
/// is missing still comes up and tells each session why and how to fix it, and a runtime
/// installed later is found by the next session.
fn local_runtime(cli: &Cli) -> ProcessConfig {
    let cache: Vec<std::ffi::OsString> = snapshot_cache(cli)
        .map(|dir| vec!["--snapshot-cache".into(), dir.into_os_string()])
        .unwrap_or_default();
    #[cfg(feature = "runtime")]
    {
        if !runtime_named(cli)
            && let Ok(this) = std::env::current_exe()
        {
            return ProcessConfig {
                binary: Some(this),
                // Its cells all have the Codex surface: the isolates it prepares ahead
                // are made for it, so the first exec finds one ready. (A runtime named
                // by hand may be of another build, and learns it at the first session.)
                runtime_args: [RUNTIME_MODE, "--prepare-surface", "codex"]
                    .into_iter()
                    .map(std::ffi::OsString::from)
                    .chain(cache)
                    .collect(),
                ..ProcessConfig::default()
            };
        }
    }
    ProcessConfig {
        binary: cli.runtime.clone(),
        runtime_args: cache,
        ..ProcessConfig::default()
    }
}

/// The startup snapshot's cache directory (see `--snapshot-cache`), made if need be;
/// `None` when turned off or when there is nowhere to keep it.
fn snapshot_cache(cli: &Cli) -> Option<PathBuf> {
    let dir = match &cli.snapshot_cache {
        Some(dir) if dir.as_os_str() == "off" => return None,
        Some(dir) => dir.clone(),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?
            .join("code-mode"),
    };
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "no startup snapshot cache");
            None
        }
    }
}

/// Where cells run: the remote runtimes of `--runtimes`, else a local runtime process.
/// `generations_before`: the runtime generation an earlier process of the kept sessions
/// reached.
fn runtimes(
    cli: &Cli,
    generations_before: u64,
    local: Option<LocalRuntime>,
) -> Result<Runtimes, String> {
    if let Some(LocalRuntime {
        mut config,
        prelaunched,
    }) = local
    {
        config.generations_before = generations_before;
        let provider = ProcessProvider::deferred(config);
        if let Some(runtime) = prelaunched {
            provider.adopt(runtime);
        }
        return Ok(Runtimes::Local(provider));
    }
    let endpoints: Vec<String> = cli
        .runtimes
        .iter()
        .map(|endpoint| {
            endpoint
                .strip_prefix("dns://")
                .unwrap_or(endpoint)
                .to_owned()
        })
        .collect();
    let mut config = RemoteConfig::from_pem_files(
        endpoints,
        cli.runtimes_ca.as_deref(),
        cli.runtimes_cert.as_deref(),
        cli.runtimes_key.as_deref(),
    )
    .map_err(|error| error.to_string())?;
    config.generations_before = generations_before;
    RemoteProvider::new(config)
        .map(Runtimes::Remote)
        .map_err(|error| error.to_string())
}

/// `--listen grpc://IP:PORT`: off loopback only with mutual TLS; the health port beside
/// it if asked for; the bound URL alone on stdout.
async fn serve_tcp(
    cli: &Cli,
    mut settings: codex_code_mode_host::front::Settings,
    address: std::net::SocketAddr,
) -> Result<(), String> {
    // Off loopback, only clients with a certificate from --client-ca are served: anyone
    // who reaches the port could otherwise run cells and take kept sessions.
    if !address.ip().is_loopback() && cli.client_ca.is_none() {
        return Err(format!(
            "--listen grpc://{address} is off loopback: clients there must be authenticated, so give --tls-cert, --tls-key and --client-ca (the CA of the clients' certificates), or listen on 127.0.0.1"
        ));
    }
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            let files = code_mode_tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: cli.client_ca.clone(),
            };
            let config = code_mode_tls::server_config(&files, &[b"h2", b"http/1.1"])
                .map_err(|error| error.to_string())?;
            Some(config)
        }
        _ => None,
    };
    settings.max_sessions_per_connection = cli.max_sessions_per_connection;
    if let Some(health) = cli.health_listen {
        let listener = tokio::net::TcpListener::bind(health)
            .await
            .map_err(|error| format!("cannot serve --health-listen {health}: {error}"))?;
        tracing::info!("health checks on http://{health}/healthz");
        tokio::spawn(serve::serve_health(settings.clone(), listener));
    }
    serve::serve_grpc_tcp(settings, address, tls, cli.max_connections, |bound| {
        // As Codex's host: the bound URL, and nothing else, on stdout (launchers read
        // that line to learn the port of `grpc://IP:0`).
        let url = format!("http://{bound}");
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let printed = writeln!(stdout, "{url}").and_then(|()| stdout.flush());
        if let Err(error) = printed {
            tracing::warn!(%error, "cannot print the bound URL on stdout");
        }
        tracing::info!("codex-code-mode-host listening on {url}");
        eprintln!("codex-code-mode-host listening on {url}");
    })
    .await
    .map_err(|error| format!("cannot serve on {address}: {error}"))
}

async fn run(
    cli: Cli,
    listen: Listen,
    protocol_stdio: Option<stdio::ProtocolStdio>,
    local: Option<LocalRuntime>,
) -> Result<(), String> {
    let state = match (cli.state.store(), &listen) {
        (None, _) => None,
        (Some((location, options)), Listen::GrpcTcp(_)) => Some(std::sync::Arc::new(
            codex_code_mode_host::state::CodexState::open(&location, options)
                .map_err(|error| error.to_string())?,
        )),
        (Some(_), _) => {
            return Err(
                "--state-dir and --state-url keep the sessions of a host that serves `--listen grpc://IP:PORT`; on stdio the host lives and dies with the one codex that started it".to_owned(),
            );
        }
    };

    let generations = state.as_ref().map_or(0, |state| state.generations_before());
    let provider = runtimes(&cli, generations, local)?;
    let mut settings = codex_code_mode_host::front::Settings::new(provider.clone());
    settings.state = state;
    settings.limits.cpu_budget_ms = cli.cpu_budget_ms;
    settings.admission = std::sync::Arc::new(codex_code_mode_host::admission::Admission::new(
        cli.max_in_flight_requests,
        cli.max_active_cells,
    ));
    // The runtime starts while the client connects, so the first exec does not wait.
    let warm = provider.clone();
    tokio::spawn(async move {
        if let Err(error) = warm.start().await {
            tracing::warn!(%error, "the runtime did not start ahead of the first call");
        }
    });
    // The connection on stdio is served by a task, not by the runtime's `block_on`
    // future: the current-thread scheduler polls its I/O driver once more (a system call)
    // before each poll of a woken `block_on` future, which the connection's would be on
    // every frame.
    match (listen, protocol_stdio) {
        (Listen::GrpcStdio, Some(protocol)) => {
            let input = stdio::reader(protocol.input).map_err(|error| error.to_string())?;
            let output = stdio::writer(protocol.output).map_err(|error| error.to_string())?;
            as_task(async move {
                serve::serve_grpc_connection(settings, tokio::io::join(input, output))
                    .await
                    .map_err(|error| format!("the gRPC connection on stdio failed: {error}"))
            })
            .await
        }
        (Listen::GrpcTcp(address), _) => {
            let state = settings.state.clone();
            let mut sigterm =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|error| format!("cannot listen for SIGTERM: {error}"))?;
            tokio::select! {
                served = serve_tcp(&cli, settings, address) => served,
                // How an orchestrator stops it (a rolling update): every kept session is
                // let go, so that the next host takes each at once, not after its lease.
                _ = sigterm.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    if let Some(state) = state {
                        state.let_go().await;
                    }
                    Ok(())
                }
            }
        }
        (Listen::JsonStdio, Some(protocol)) => {
            let input = stdio::reader(protocol.input).map_err(|error| error.to_string())?;
            let output = stdio::writer(protocol.output).map_err(|error| error.to_string())?;
            as_task(async move {
                codex_code_mode_host::json::serve_json(settings, input, output)
                    .await
                    .map_err(|error| error.to_string())
            })
            .await
        }
        (_, None) => Err("stdio was not taken".to_owned()),
    }
}

/// Runs `serve` as a task of its own and waits for it; a panic in it is an error.
async fn as_task(
    serve: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
) -> Result<(), String> {
    tokio::spawn(serve)
        .await
        .unwrap_or_else(|error| Err(format!("the connection's task failed: {error}")))
}
