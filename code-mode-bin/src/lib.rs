//! `code-mode-bin`: the standalone runtime process. It connects to the host's local socket
//! (`--socket`), or listens for hosts on TCP with mutual TLS (`--listen`, see `listen`),
//! sandboxes itself, answers the handshake, and serves any number of in-process sessions
//! over the wire protocol of `code-mode-protocol`. Logs go to stderr through `tracing`;
//! nothing is ever written to stdout (clap's `--help`/`--version` aside).
//!
//! Start-up order matters: V8 and its ICU data and the TLS files are loaded and the socket
//! is connected (or the listeners bound) before the sandbox forbids file access and new
//! sockets; the async runtime's threads are
//! created after it, so they inherit every restriction.
//!
//! Exit codes: 0 when the host closed the connection cleanly (or a listener drained after
//! SIGTERM), 1 when the connection failed
//! (handshake refused, protocol violation, I/O error), 2 for bad command-line arguments,
//! 70 when a cell could not be stopped.
//!
//! The process is this library's [`run`], so that another executable can carry the runtime
//! and become it in a process of its own: `codex-code-mode-host` does, as one file. The
//! `code-mode-bin` executable is `run` over its own arguments.

mod connection;
mod delegate;
mod drain;
mod listen;
mod metrics;
mod sandbox;
mod spans;
mod trim;

use clap::Parser;
use connection::ServeSettings;
use drain::Drain;
use interprocess::local_socket::tokio::Stream;
use interprocess::os::unix::uds_local_socket::tokio::Stream as UdsStream;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The code-mode runtime process: runs JavaScript cells in V8 for hosts, over a local
/// socket (one host) or over TCP with mutual TLS (many hosts).
#[derive(Debug, Parser)]
#[command(name = "code-mode-bin", version, about)]
struct Cli {
    /// Path of the host's local socket to connect to.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present_any = ["sandbox_self_test", "listen", "socket_fd"],
        conflicts_with_all = ["listen", "socket_fd"]
    )]
    socket: Option<PathBuf>,
    /// A socket already connected to the host, inherited as this descriptor (a runtime
    /// its host forked, or started with the socket in place).
    #[arg(long, value_name = "FD", conflicts_with = "listen")]
    socket_fd: Option<i32>,
    /// Serve hosts on this TCP address (e.g. `0.0.0.0:7300`), with TLS and client
    /// certificates (`--tls-cert`, `--tls-key`, `--client-ca`).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// The server's certificate chain (PEM), with `--listen`.
    #[arg(long, value_name = "PEM", requires = "listen")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM), with `--listen`.
    #[arg(long, value_name = "PEM", requires = "listen")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that every host's client certificate must chain to, with `--listen`.
    #[arg(long, value_name = "PEM", requires = "listen")]
    client_ca: Option<PathBuf>,
    /// Serve plaintext without client authentication: only on a loopback address.
    #[arg(long, requires = "listen", conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    insecure_loopback: bool,
    /// Serve Prometheus metrics on `/metrics`, and `/healthz` and `/readyz`, on this
    /// address (with `--listen`).
    #[arg(long, value_name = "ADDR:PORT", requires = "listen")]
    metrics: Option<String>,
    /// After SIGTERM, how long running cells get to finish before they are stopped.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    drain_timeout_secs: u64,
    /// How often the runtime pings each host (with `--listen`).
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..))]
    ping_interval_ms: u64,
    /// A host that sends no frame for this long is gone (half-open connection; with
    /// `--listen`).
    #[arg(long, value_name = "MS", default_value_t = 6000, value_parser = clap::value_parser!(u64).range(20..))]
    liveness_timeout_ms: u64,
    /// Most host connections at once (with `--listen`).
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,
    /// How long a new connection (to `--listen` or `--metrics`) has to send its first
    /// byte, and then to finish its TLS handshake; one that does not is closed.
    #[arg(long, value_name = "MS", default_value_t = code_mode_tls::gate::OPENING_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..), hide = true)]
    opening_timeout_ms: u64,
    /// Keep the startup snapshot of cell contexts in this directory between runs: read it
    /// at start when this executable made it (checked whole), else make it at start and
    /// write it there, so that later starts do not make it again.
    #[arg(long, value_name = "DIR")]
    snapshot_cache: Option<PathBuf>,
    /// The surface of the sessions this runtime serves: the cell isolates it prepares ahead
    /// of demand get that surface's helpers (`codex`: the Codex front's; a session of
    /// another surface still works, and turns the preparing to its own).
    #[arg(long, value_name = "SURFACE", value_enum, default_value_t = PreparedSurface::Contract)]
    prepare_surface: PreparedSurface,
    /// Log filter for stderr, in `tracing` env-filter syntax (e.g. `info`, `code_mode=debug`).
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    log: String,
    /// Applies the sandbox, then tries `read:<path>` or `exec:<path>` and reports (tests).
    #[arg(long, value_name = "ACTION", hide = true)]
    sandbox_self_test: Option<String>,
}

/// The surfaces `--prepare-surface` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PreparedSurface {
    /// The contract's (CONTRACT.md).
    Contract,
    /// The Codex front's.
    Codex,
}

impl From<PreparedSurface> for code_mode_protocol::Surface {
    fn from(surface: PreparedSurface) -> Self {
        match surface {
            PreparedSurface::Contract => Self::Contract,
            PreparedSurface::Codex => Self::Codex,
        }
    }
}

/// Runs the runtime process with `args` (the program name first, as `std::env::args_os`
/// gives it) and returns its exit code. Call it once, at the start of a process of its own
/// and before any thread exists: it initialises V8, sandboxes the process and exits when
/// its host is gone.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // V8 starts on a thread of its own while the command line is parsed, the logs are set
    // up and the snapshot cache's file is read: it needs none of them, and on a cold start
    // it is the longest step before the first isolate. Whoever needs V8 next waits for it.
    // Its platform threads are made there, before the sandbox, as they were on this
    // thread; they run no user code. That thread is a cell thread: it goes on as the first
    // one (`sandbox::first_cell_thread`), and prepares its isolate as soon as V8 is up.
    start_v8();
    let code = run_parsed(args);
    // An early exit (a wrong argument) does not leave the process while V8 is half made.
    code_mode::platform::init_v8();
    code
}

/// Starts V8 on the thread that will be the first cell thread, as [`run`] does first
/// thing, for a process that has work of its own before it calls [`run`] (a runtime forked
/// by the Codex front waits for its command line). Does nothing once V8 is starting.
pub fn start_v8() {
    code_mode::runtime::start_v8_on_cell_thread();
}

/// [`run`] once V8 is starting.
fn run_parsed<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            // Usage on stderr with exit code 2, or help and version on stdout with 0, as
            // clap's own exit would (which would not wait for V8).
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    if let Some(action) = &cli.sandbox_self_test {
        init_logging(&cli.log);
        return sandbox_self_test(action);
    }
    // First what the first cell thread waits for (the thread that started V8 makes its
    // isolate as soon as V8 is up): the snapshot cache's blob, read while V8 starts. Its
    // outcome is logged once the logs are set up.
    let cache = snapshot_cache(&cli);
    // The first cell thread makes its isolate while the logs are set up, the host reached
    // and the process sandboxed, rather than after; it predates the sandbox, so it
    // restricts itself, and joins the pool only once the sandbox is on and its restriction
    // matches.
    let surface = cli.prepare_surface.into();
    let first = sandbox::first_cell_thread(surface, || None);
    init_logging(&cli.log);
    log_snapshot_cache(cache);
    if cli.liveness_timeout_ms <= cli.ping_interval_ms {
        eprintln!(
            "code-mode-bin: --liveness-timeout-ms ({}) must be longer than --ping-interval-ms ({})",
            cli.liveness_timeout_ms, cli.ping_interval_ms
        );
        return ExitCode::from(2);
    }
    // While the first isolate is prepared: the first traced request finds the spans'
    // paths made once already.
    spans::warm();
    // V8 is up (its platform's threads made) before the sandbox.
    code_mode::platform::init_v8();
    if cli.listen.is_some() {
        listen_main(cli, first, surface)
    } else {
        socket_main(&cli, first, surface)
    }
}

/// The first cell thread, started before the sandbox ([`sandbox::first_cell_thread`]).
type FirstThread = Option<code_mode::runtime::FirstCellThread<sandbox::ThreadRestriction>>;

/// Serves the one host of `--socket` or `--socket-fd`.
fn socket_main(cli: &Cli, first: FirstThread, surface: code_mode_protocol::Surface) -> ExitCode {
    let host = match (&cli.socket, cli.socket_fd) {
        (_, Some(fd)) => match inherited_socket(fd) {
            Ok(connected) => Host::Inherited(connected, fd),
            Err(error) => {
                eprintln!("code-mode-bin: --socket-fd {fd}: {error}");
                return ExitCode::from(2);
            }
        },
        (Some(path), None) => Host::Path(path.clone()),
        (None, None) => return ExitCode::from(2),
    };
    die_with_parent();
    let (connected, socket) = match host {
        Host::Inherited(connected, fd) => (connected, format!("descriptor {fd}")),
        Host::Path(path) => match std::os::unix::net::UnixStream::connect(&path) {
            Ok(connected) => (connected, path.display().to_string()),
            Err(error) => {
                tracing::error!("cannot connect to {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        },
    };
    let report = sandboxed(false, first, surface);
    tracing::info!(%socket, sandbox = %report, "connected and sandboxed");
    if !report.failures.is_empty() {
        tracing::warn!("sandbox incomplete: {report}");
    }
    let Some(runtime) = async_runtime() else {
        return ExitCode::FAILURE;
    };
    let settings = serve_settings(cli, report.to_string(), false);
    let drain_timeout = Duration::from_secs(cli.drain_timeout_secs);
    let outcome = runtime.block_on(async {
        // SIGTERM (or SIGINT) drains, as a listening runtime does: the host is told, takes
        // new sessions elsewhere and moves idle ones; running cells get up to the drain
        // timeout to finish, then the connection ends.
        let drain = settings.drain.clone();
        drain.start_on_signals();
        trim::spawn(drain.clone());
        tokio::spawn(async move {
            drain.started().await;
            drain.until_idle(drain_timeout, || false).await;
            drain.stop();
        });
        connected
            .set_nonblocking(true)
            .map_err(|error| format!("cannot configure the socket: {error}"))?;
        let stream = UdsStream::try_from(OwnedFd::from(connected))
            .map(Stream::from)
            .map_err(|error| format!("cannot adopt the socket: {error}"))?;
        connection::serve(stream, settings)
            .await
            .map_err(|error| error.to_string())
    });
    finish(
        runtime,
        outcome,
        "the host closed the connection (or it drained); exiting",
    )
}

/// Where the one host is: a socket path to connect to, or a connected socket inherited.
enum Host {
    Path(PathBuf),
    Inherited(std::os::unix::net::UnixStream, i32),
}

/// Takes descriptor `fd` as the host's connected socket, after checking that it is one
/// (a wrong number must not make the runtime speak to a file or a terminal).
fn inherited_socket(fd: i32) -> Result<std::os::unix::net::UnixStream, String> {
    use std::os::fd::FromRawFd;
    if fd < 0 {
        return Err("not a descriptor".to_owned());
    }
    // SAFETY: fstat(2) into a zeroed stat this function owns; a closed `fd` fails.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err("not a socket".to_owned());
    }
    // SAFETY: `fd` is an open socket that this process hands to the runtime alone (the
    // option's contract); from here the stream owns it.
    let connected = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    // Not inherited by anything this process could start.
    // SAFETY: fcntl(2) on the descriptor the stream owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(connected)
}

/// A runtime serving one host's socket dies with the thread that started it (the host
/// starts it with `posix_spawn`, which cannot ask for this before the exec). A host that
/// died before this leaves no listener on the socket, and the runtime exits when it
/// cannot connect.
fn die_with_parent() {
    // SAFETY: `prctl(PR_SET_PDEATHSIG)` only sets a field of this process; it reads no
    // memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } == -1 {
        tracing::warn!(
            "cannot ask to die with the host: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Uses the startup snapshot's disk cache of `--snapshot-cache`, before the sandbox.
fn snapshot_cache(cli: &Cli) -> code_mode::runtime::CacheOutcome {
    match &cli.snapshot_cache {
        Some(dir) => code_mode::runtime::use_disk_cache(dir),
        None => code_mode::runtime::CacheOutcome::Unused,
    }
}

/// Logs what [`snapshot_cache`] did.
fn log_snapshot_cache(outcome: code_mode::runtime::CacheOutcome) {
    match outcome {
        code_mode::runtime::CacheOutcome::Loaded(path) => {
            tracing::info!(path = %path.display(), "startup snapshot read from the cache");
        }
        code_mode::runtime::CacheOutcome::Written(path) => {
            tracing::info!(path = %path.display(), "startup snapshot made and cached");
        }
        code_mode::runtime::CacheOutcome::NotWritten(reason) => {
            tracing::warn!("startup snapshot made, but not cached: {reason}");
        }
        code_mode::runtime::CacheOutcome::Unused => {}
    }
}

/// Stops the async runtime and turns the outcome into the exit code.
fn finish(runtime: tokio::runtime::Runtime, outcome: Result<(), String>, done: &str) -> ExitCode {
    // Cell threads may still be tearing down their isolates; don't wait for idle tasks.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => {
            tracing::info!("{done}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn serve_settings(cli: &Cli, sandbox: String, remote: bool) -> ServeSettings {
    ServeSettings {
        sandbox,
        remote,
        // A local socket needs no timeout: the host's death is an end of input.
        liveness: remote.then(|| connection::Liveness {
            ping_interval: Duration::from_millis(cli.ping_interval_ms),
            timeout: Duration::from_millis(cli.liveness_timeout_ms),
        }),
        drain: Drain::default(),
    }
}

fn async_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("code-mode-bin")
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            None
        }
    }
}

/// Resolves a command-line address; an error message names the flag.
fn resolve(flag: &str, address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|error| format!("{flag} {address:?}: {error}"))?
        .next()
        .ok_or_else(|| format!("{flag} {address:?}: resolves to no address"))
}

/// Binds a TCP listener before the sandbox, ready for the async runtime.
fn bind(flag: &str, address: SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|error| format!("{flag}: cannot listen on {address}: {error}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|error| format!("{flag}: cannot configure {address}: {error}"))?;
    Ok(listener)
}

/// `--listen`: the flags checked, TLS loaded and sockets bound before the sandbox, then
/// connections served until a termination signal has drained them.
/// `--listen`'s TLS: mutual TLS from the three files, or none with `--insecure-loopback`
/// on a loopback address; the usage error otherwise.
fn listen_tls(
    cli: &Cli,
    address: std::net::SocketAddr,
) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, String> {
    if cli.insecure_loopback {
        if !address.ip().is_loopback() {
            return Err(format!(
                "--insecure-loopback serves plaintext only on a loopback address, not {address}; use --tls-cert, --tls-key and --client-ca"
            ));
        }
        return Ok(None);
    }
    let (Some(cert), Some(key), Some(client_ca)) = (
        cli.tls_cert.clone(),
        cli.tls_key.clone(),
        cli.client_ca.clone(),
    ) else {
        return Err(
            "--listen needs --tls-cert, --tls-key and --client-ca (mutual TLS), or --insecure-loopback on a loopback address".to_owned(),
        );
    };
    let files = code_mode_tls::TlsFiles {
        cert,
        key,
        client_ca: Some(client_ca),
    };
    code_mode_tls::server_config(&files, &[])
        .map(Some)
        .map_err(|error| error.to_string())
}

fn listen_main(cli: Cli, first: FirstThread, surface: code_mode_protocol::Surface) -> ExitCode {
    let Some(listen) = cli.listen.as_deref() else {
        return ExitCode::from(2);
    };
    let usage = |message: String| {
        eprintln!("code-mode-bin: {message}");
        ExitCode::from(2)
    };
    let address = match resolve("--listen", listen) {
        Ok(address) => address,
        Err(message) => return usage(message),
    };
    let tls = match listen_tls(&cli, address) {
        Ok(tls) => tls,
        Err(message) => return usage(message),
    };
    let metrics_address = match cli.metrics.as_deref().map(|m| resolve("--metrics", m)) {
        Some(Err(message)) => return usage(message),
        Some(Ok(address)) => Some(address),
        None => None,
    };
    let listener = match bind("--listen", address) {
        Ok(listener) => listener,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let metrics_listener = match metrics_address.map(|address| bind("--metrics", address)) {
        Some(Err(message)) => {
            tracing::error!("{message}");
            return ExitCode::FAILURE;
        }
        Some(Ok(listener)) => Some(listener),
        None => None,
    };
    let report = sandboxed(true, first, surface);
    if !report.failures.is_empty() {
        tracing::warn!("sandbox incomplete: {report}");
    }
    let Some(runtime) = async_runtime() else {
        return ExitCode::FAILURE;
    };
    let settings = listen::ListenSettings {
        tls,
        serve: serve_settings(&cli, report.to_string(), true),
        drain_timeout: Duration::from_secs(cli.drain_timeout_secs),
        max_connections: cli.max_connections,
        opening_timeout: Duration::from_millis(cli.opening_timeout_ms),
    };
    let outcome = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|error| format!("cannot adopt the listener: {error}"))?;
        let local = listener
            .local_addr()
            .map_err(|error| format!("cannot read the listener's address: {error}"))?;
        if let Some(metrics_listener) = metrics_listener {
            let metrics_listener = tokio::net::TcpListener::from_std(metrics_listener)
                .map_err(|error| format!("cannot adopt the metrics listener: {error}"))?;
            if let Ok(metrics_local) = metrics_listener.local_addr() {
                tracing::info!("metrics on http://{metrics_local}/metrics");
            }
            let gate = code_mode_tls::gate::Gate::new("metrics", metrics::METRICS_MAX_CONNECTIONS)
                .with_opening_timeout(settings.opening_timeout);
            tokio::spawn(metrics::serve(
                metrics_listener,
                settings.serve.drain.clone(),
                gate,
            ));
        }
        let mode = if settings.tls.is_some() {
            "mutual TLS"
        } else {
            "plaintext, loopback only"
        };
        tracing::info!(sandbox = %report, "listening on {local} ({mode})");
        settings.serve.drain.start_on_signals();
        trim::spawn(settings.serve.drain.clone());
        listen::run(listener, settings).await;
        Ok::<(), String>(())
    });
    finish(runtime, outcome, "drained; exiting")
}

/// Sandboxes the process (`accepts`: see [`sandbox::apply`]), then hands the first cell
/// thread, started before, to the pool if it restricted itself as far, and starts the rest
/// of the pool: cell threads created from here on inherit the sandbox.
fn sandboxed(
    accepts: bool,
    first: FirstThread,
    surface: code_mode_protocol::Surface,
) -> sandbox::SandboxReport {
    let report = sandbox::apply(accepts);
    if let Some(first) = first
        && !first.release(|thread| sandbox::restricted_as(thread, &report))
    {
        tracing::warn!("the first cell thread did not restrict itself as the process did; unused");
    }
    code_mode::prewarm_for(surface);
    report
}

/// Verifies the sandbox from the inside: exit 0 when the action was refused.
fn sandbox_self_test(action: &str) -> ExitCode {
    code_mode::platform::init_v8();
    // `first-cell:<action>` runs the action on the first cell thread, which the runtime
    // starts before the sandbox (it restricts itself): once the process is sandboxed, as a
    // cell on that thread would.
    let (sandboxed, on_first) = std::sync::mpsc::channel::<()>();
    let on_first_thread = action.strip_prefix("first-cell:").map(|action| {
        let action = action.to_owned();
        sandbox::first_cell_thread(code_mode_protocol::Surface::Contract, move || {
            on_first.recv().ok().map(|()| self_test_action(&action))
        })
    });
    sandbox::probes::prepare();
    let report = sandbox::apply(false);
    eprintln!("sandbox: {report}");
    let _ = sandboxed.send(());
    let first = match on_first_thread {
        None => return self_test_action(action),
        Some(Some(first)) => first,
        Some(None) => {
            eprintln!("no first cell thread (NOT tested)");
            return ExitCode::FAILURE;
        }
    };
    let mut outcome = None;
    let joined = first.release(|thread| {
        outcome = thread.probe;
        sandbox::restricted_as(thread, &report)
    });
    eprintln!("first cell thread: landlock as the process: {joined}");
    match outcome {
        Some(outcome) if joined => outcome,
        _ => ExitCode::FAILURE,
    }
}

/// Tries `action` (`read:<path>`, `exec:<path>`, ...) on this thread of a sandboxed
/// process, and says whether the sandbox answered as it should.
fn self_test_action(action: &str) -> ExitCode {
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
        Some(("socket", _)) => {
            // SAFETY: socket takes integer arguments only.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            eprintln!("socket: not killed (fd {fd}) (NOT sandboxed)");
            ExitCode::FAILURE
        }
        #[cfg(target_arch = "x86_64")]
        Some(("x32", _)) => {
            // getpid through the x32 ABI (bit 30 set).
            // SAFETY: getpid takes no arguments and touches no memory.
            let pid = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
            eprintln!("x32 getpid: not killed ({pid}) (NOT sandboxed)");
            ExitCode::FAILURE
        }
        Some(("signal", target)) => {
            // Signal 0 checks the target without disturbing it.
            // SAFETY: getpid has no preconditions.
            let own = unsafe { libc::getpid() };
            let pid = if target == "self" {
                own
            } else {
                target.parse().unwrap_or(own)
            };
            // SAFETY: kill takes integers only; signal 0 sends nothing.
            let result = unsafe { libc::kill(pid, 0) };
            eprintln!("kill({pid}, 0): {result}");
            // Reached only when the filter let it through: only ours may be.
            if pid == own && result == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(("clone3", _)) => {
            // Answered ENOSYS (so that libc falls back to clone), not killed.
            // SAFETY: clone3 with a null argument and size 0 is refused before it reads.
            let result = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            eprintln!("clone3: {result}, errno {errno:?}");
            if result == -1 && errno == Some(libc::ENOSYS) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(("tkill", _)) => {
            // Refused (EPERM): a signal whose target the filter cannot see.
            // SAFETY: gettid has no preconditions; tkill with signal 0 sends nothing.
            let result = unsafe { libc::syscall(libc::SYS_tkill, libc::gettid(), 0) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            eprintln!("tkill: {result}, errno {errno:?}");
            if result == -1 && errno == Some(libc::EPERM) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(("thread", _)) => match std::thread::spawn(|| 6 * 7).join() {
            Ok(42) => {
                eprintln!("thread: ran");
                ExitCode::SUCCESS
            }
            other => {
                eprintln!("thread: {other:?}");
                ExitCode::FAILURE
            }
        },
        // `refused:<call>` and `allowed:<call>`: signals, limits, priorities, scheduling.
        _ => sandbox::probes::run(action).unwrap_or_else(|| {
            eprintln!("unknown self-test action {action:?}");
            ExitCode::from(2)
        }),
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("code-mode-bin: invalid --log filter {filter:?} ({error}); using `warn`");
        tracing_subscriber::EnvFilter::new("warn")
    });
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter);
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans::layer())
        .try_init();
}
