//! `code-mode`: run model-style JavaScript cells with real tools from the command line.
//!
//! Subcommands: `run` (one cell, following yields to the end), `repl` (one session, a cell
//! per entry), `describe` (the `exec` description a model would see), `serve --jsonl` (a
//! JSON-lines driver for hosts in any language). Cells run in the `code-mode-bin` runtime
//! process unless `--in-process` is given.
//!
//! Exit codes: 0 success; 1 the script failed or was terminated (or a runtime failure);
//! 2 bad input (arguments, files, tools file, pragma).

#![forbid(unsafe_code)]

mod approvals;
mod mcp;
mod output;
mod repl;
mod run;
mod serve;
mod session;
use code_mode_tools as tools;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::Layer as _;

#[derive(Debug, Parser)]
#[command(
    name = "code-mode",
    version,
    about = "Run JavaScript cells that call real tools, in a sandboxed V8 runtime"
)]
struct Cli {
    /// Logs on stderr: -v for info, -vv for debug (the runtime process's too).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Export traces of cells and their nested calls over OTLP/HTTP to this collector
    /// (e.g. http://127.0.0.1:4318; /v1/traces is added). Without it, the standard
    /// OTEL_EXPORTER_OTLP_ENDPOINT (and _PROTOCOL, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER)
    /// decide.
    #[arg(long, value_name = "URL", global = true)]
    otel_endpoint: Option<String>,
    /// Let spans hold what the model wrote: `source`, `arguments` or both (comma-separated),
    /// each capped at 4 KiB. Off by default.
    #[arg(long, value_name = "WHAT", global = true, default_value = "none")]
    trace_capture: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ToolArgs {
    /// A TOML file of command tools and MCP servers (see examples/tools.toml, examples/mcp.toml).
    #[arg(long, value_name = "FILE")]
    tools: Option<PathBuf>,
    /// Built-in tool sets to enable: fs (read_file, list_dir, write_file), shell (exec_command).
    #[arg(long, value_name = "SETS", value_delimiter = ',')]
    builtin: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one cell to its end, printing output as it arrives.
    Run {
        /// The cell's JavaScript file, or `-` for stdin.
        file: PathBuf,
        #[command(flatten)]
        tools: ToolArgs,
        /// How long each observation waits before it yields, in milliseconds.
        #[arg(long, value_name = "MS")]
        yield_ms: Option<u64>,
        /// The output budget of each observation, in approximate tokens.
        #[arg(long, value_name = "TOKENS")]
        max_output_tokens: Option<u64>,
        /// Print one machine-readable JSON result instead of the output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        runtime: session::RuntimeArgs,
        /// Write the images and audio clips the cell outputs into this directory.
        #[arg(long, value_name = "DIR", alias = "save-images")]
        save_media: Option<PathBuf>,
    },
    /// One session on stdin: each entry (ended by a blank line) is a cell.
    Repl {
        #[command(flatten)]
        tools: ToolArgs,
        /// How long each observation waits before it yields, in milliseconds.
        #[arg(long, value_name = "MS")]
        yield_ms: Option<u64>,
        #[command(flatten)]
        runtime: session::RuntimeArgs,
        /// Give every cell a fresh isolate instead of reusing the session's (each cell
        /// gets a fresh context either way).
        #[arg(long)]
        no_isolate_reuse: bool,
    },
    /// Print the `exec` tool description a model would see for these tools.
    Describe {
        #[command(flatten)]
        tools: ToolArgs,
        /// Print the `exec` and `wait` tool specs as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Serve code mode to MCP clients: tools `exec` and `wait`, over stdio (default) or
    /// streamable HTTP; the tools file's tools (MCP servers included) are the nested tools.
    Mcp {
        #[command(flatten)]
        tools: ToolArgs,
        #[command(flatten)]
        http: Box<McpHttpArgs>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        runtime: session::RuntimeArgs,
        /// Give every cell a fresh isolate instead of reusing the session's.
        #[arg(long)]
        no_isolate_reuse: bool,
        #[command(flatten)]
        state: Box<code_mode_state::StateArgs>,
    },
    /// Serve sessions over a JSON-lines protocol on stdin/stdout (see docs/jsonl.md).
    Serve {
        /// The JSON-lines protocol (the only one).
        #[arg(long, required = true)]
        jsonl: bool,
        /// Tools the driver answers itself, added to every `exec`.
        #[command(flatten)]
        tools: ToolArgs,
        #[command(flatten)]
        runtime: session::RuntimeArgs,
        #[command(flatten)]
        state: Box<code_mode_state::StateArgs>,
    },
    /// The calls that wait on a person's approval, in a state store: list, approve, deny.
    Approvals {
        #[command(subcommand)]
        action: approvals::Action,
    },
}

/// `code-mode mcp --http` and what secures it.
#[derive(Debug, Args)]
struct McpHttpArgs {
    /// Serve streamable HTTP on this address (e.g. 127.0.0.1:3000; the endpoint is /mcp)
    /// instead of stdio. Loopback only unless --allow-remote is given.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<std::net::SocketAddr>,
    /// Accept a non-loopback --http address (it then needs a bearer token, and TLS or
    /// --allow-plaintext-remote).
    #[arg(long, requires = "http")]
    allow_remote: bool,
    /// A file holding the bearer token clients must send (`Authorization: Bearer <token>`);
    /// without it, CODE_MODE_MCP_TOKEN is used when set. Loopback needs none unless given.
    #[arg(long, value_name = "FILE", requires = "http")]
    auth_token_file: Option<PathBuf>,
    /// A file of `NAME TOKEN` lines (`#` comments): each static bearer token names a
    /// principal, and a session is reachable only by the principal that opened it.
    #[arg(long, value_name = "FILE", requires = "http")]
    auth_tokens_file: Option<PathBuf>,
    /// Accept OAuth 2.1 access tokens (JWTs) issued by this authorization server (`iss`);
    /// needs --auth-jwt-jwks and --auth-resource. The principal is the token's `sub`.
    #[arg(long, value_name = "URL", requires_all = ["http", "auth_jwt_jwks", "auth_resource"])]
    auth_jwt_issuer: Option<String>,
    /// The issuer's public keys (a JWKS): a file, or an https URL (read again every ten
    /// minutes, and for a key id it does not hold).
    #[arg(long, value_name = "FILE|URL", requires = "auth_jwt_issuer")]
    auth_jwt_jwks: Option<String>,
    /// What tokens must carry in `aud` (default: --auth-resource).
    #[arg(long, value_name = "AUD", requires = "auth_jwt_issuer")]
    auth_jwt_audience: Option<String>,
    /// A signing algorithm accepted (repeat for more; default RS256 and ES256); shared-secret
    /// HS* algorithms are refused.
    #[arg(long, value_name = "ALG", requires = "auth_jwt_issuer", value_parser = mcp::http::parse_algorithm)]
    auth_jwt_algorithm: Vec<jsonwebtoken::Algorithm>,
    /// This server's MCP endpoint as clients reach it (e.g. https://mcp.example:3000/mcp):
    /// the `resource` of its Protected Resource Metadata (RFC 9728), served at
    /// /.well-known/oauth-protected-resource.
    #[arg(long, value_name = "URL", requires = "auth_jwt_issuer")]
    auth_resource: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM); with --tls-key.
    #[arg(long, value_name = "PEM", requires_all = ["http", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["http", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Serve a non-loopback address without TLS (behind a TLS-terminating proxy).
    #[arg(long, requires = "allow_remote")]
    allow_plaintext_remote: bool,
    /// With --state-url: the plain http:// address the other replicas reach this one at
    /// (e.g. http://10.0.3.7:3000, a pod's IP): a request for a session this replica holds
    /// that reaches another is forwarded here at once. Default: the address served, when
    /// it is plaintext and not 0.0.0.0 or [::].
    #[arg(
        long,
        value_name = "URL",
        env = "CODE_MODE_STATE_ADVERTISE",
        requires = "http"
    )]
    state_advertise: Option<String>,
    /// A browser origin allowed to call (scheme://host[:port], port `*` for any); repeat
    /// for more. Requests without an Origin header are always allowed; on loopback, pages
    /// from localhost are too.
    #[arg(long = "allowed-origin", value_name = "ORIGIN", requires = "http")]
    allowed_origins: Vec<String>,
    /// Shut a session down after this many seconds without a request (its cells stop, its
    /// stored values go).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = mcp::http::DEFAULT_IDLE_TIMEOUT_SECS,
        value_parser = idle_timeout_secs,
        requires = "http"
    )]
    session_idle_timeout_secs: u64,
    /// How many sessions may be open at once; past it, `initialize` is refused (503).
    #[arg(
        long,
        value_name = "N",
        default_value_t = mcp::http::DEFAULT_MAX_SESSIONS,
        value_parser = max_sessions,
        requires = "http"
    )]
    max_sessions: usize,
}

/// A whole number of at least one; `zero` says why 0 is refused.
fn at_least_one(text: &str, zero: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err(zero.to_owned()),
        Ok(number) => Ok(number),
        Err(_) => Err("expected a whole number".to_owned()),
    }
}

/// `--session-idle-timeout-secs`: whole seconds, at least one (sessions always expire).
fn idle_timeout_secs(text: &str) -> Result<u64, String> {
    at_least_one(
        text,
        &format!(
            "0 would keep abandoned sessions forever; give at least 1 (the default is {})",
            mcp::http::DEFAULT_IDLE_TIMEOUT_SECS
        ),
    )
}

/// `--max-sessions`: at least one.
fn max_sessions(text: &str) -> Result<usize, String> {
    let max = at_least_one(text, "at least one session must be allowed")?;
    usize::try_from(max).map_err(|_| "too large".to_owned())
}

impl McpHttpArgs {
    fn options(self) -> Option<mcp::http::HttpOptions> {
        Some(mcp::http::HttpOptions {
            address: self.http?,
            allow_remote: self.allow_remote,
            allow_plaintext_remote: self.allow_plaintext_remote,
            advertise: self.state_advertise,
            auth_token_file: self.auth_token_file,
            auth_tokens_file: self.auth_tokens_file,
            jwt: match (self.auth_jwt_issuer, self.auth_jwt_jwks, self.auth_resource) {
                (Some(issuer), Some(jwks), Some(resource)) => Some(mcp::http::JwtOptions {
                    issuer,
                    jwks,
                    audience: self.auth_jwt_audience,
                    algorithms: self.auth_jwt_algorithm,
                    resource,
                }),
                _ => None,
            },
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            allowed_origins: self.allowed_origins,
            idle_timeout: std::time::Duration::from_secs(self.session_idle_timeout_secs),
            max_sessions: self.max_sessions,
        })
    }
}

/// Every session's limits (defaults as in the JSON-lines driver's `open_session`).
#[derive(Debug, Args)]
struct LimitArgs {
    /// Each cell's V8 heap limit, in bytes (`ArrayBuffer`s may use half as much again).
    #[arg(long, value_name = "BYTES", default_value_t = code_mode_protocol::session::DEFAULT_HEAP_LIMIT_BYTES)]
    heap_bytes: u64,
    /// Each cell's CPU budget, in milliseconds of CPU time (waiting does not count).
    #[arg(long, value_name = "MS", default_value_t = code_mode_protocol::session::DEFAULT_CPU_BUDGET_MS)]
    cpu_budget_ms: u64,
    /// Each cell's output cap, in bytes (text and images).
    #[arg(long, value_name = "BYTES", default_value_t = code_mode_protocol::session::DEFAULT_OUTPUT_CAP_BYTES)]
    output_bytes: u64,
    /// The longest an observation may wait before it yields, in milliseconds (caps the
    /// pragma's and `wait`'s yield times).
    #[arg(long, value_name = "MS")]
    max_yield_time_ms: Option<u64>,
    /// The session's cap on stored values, in bytes of keys and JSON text; a `store`
    /// beyond it throws.
    #[arg(long, value_name = "BYTES", default_value_t = code_mode_protocol::stored::DEFAULT_MAX_STORED_BYTES)]
    max_stored_bytes: u64,
    /// How long a cell waits on nothing but its nested calls before it hibernates (gives
    /// its thread and isolate back until an answer comes), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = code_mode_protocol::session::DEFAULT_HIBERNATE_AFTER_MS)]
    hibernate_after_ms: u64,
    /// Cells never hibernate.
    #[arg(long)]
    no_hibernation: bool,
}

impl LimitArgs {
    fn session_options(self, reuse_isolates: bool) -> code_mode_protocol::SessionOptions {
        code_mode_protocol::SessionOptions {
            max_yield_time_ms: self.max_yield_time_ms,
            limits: code_mode_protocol::CellLimits {
                heap_bytes: self.heap_bytes,
                cpu_budget_ms: self.cpu_budget_ms,
                output_bytes: self.output_bytes,
                ..code_mode_protocol::CellLimits::default()
            },
            reuse_isolates,
            max_stored_bytes: self.max_stored_bytes,
            surface: code_mode_protocol::Surface::Contract,
            hibernate_after_ms: (!self.no_hibernation).then_some(self.hibernate_after_ms),
        }
    }
}

/// Why a command failed, with its exit code.
pub struct Failure {
    message: Option<String>,
    code: u8,
}

impl Failure {
    /// Bad input: exit code 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            code: 2,
        }
    }

    /// The runtime could not run the cell: exit code 1.
    pub fn runtime(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            code: 1,
        }
    }

    /// The script failed or was terminated (already reported): exit code 1.
    pub fn script() -> Self {
        Self {
            message: None,
            code: 1,
        }
    }
}

/// The trace exporter the options (else the OTEL_* environment) ask for.
fn telemetry(cli: &Cli) -> Result<Option<code_mode_trace::Telemetry>, code_mode_trace::TraceError> {
    use code_mode_trace::{Capture, TraceSettings};
    const SERVICE: &str = "code-mode";
    let version = env!("CARGO_PKG_VERSION");
    let settings = match &cli.otel_endpoint {
        Some(endpoint) => TraceSettings::from_lookup(SERVICE, version, |name| {
            if name == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                return Some(endpoint.clone());
            }
            if name.ends_with("_ENDPOINT") || name == "OTEL_TRACES_EXPORTER" {
                return None;
            }
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        })?,
        None => TraceSettings::from_env(SERVICE, version)?,
    };
    let Some(mut settings) = settings else {
        return Ok(None);
    };
    settings.capture = Capture::parse(&cli.trace_capture)?;
    code_mode_trace::Telemetry::start(settings).map(Some)
}

fn init_logging(verbose: u8, telemetry: Option<&code_mode_trace::Telemetry>) -> String {
    let filter = match verbose {
        // rmcp warns about every error answer it sends (a client probing for a newer
        // protocol version, say) and logs an oversized MCP message that the call's own
        // error already explains; neither is the operator's problem.
        0 => "warn,rmcp::service=error,rmcp::transport::async_rw=off",
        // rmcp logs each new MCP session's id at info; ids are named at debug only.
        1 => "info,rmcp::transport::streamable_http_server=warn",
        _ => "debug",
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(tracing_subscriber::EnvFilter::new(filter));
    code_mode_trace::init_subscriber(logs, telemetry);
    filter.to_owned()
}

/// `span`, parented on the `TRACEPARENT` environment variable when it holds a well-formed
/// W3C trace context (OpenTelemetry's carrier for a command started inside a trace).
fn command_span(span: tracing::Span) -> tracing::Span {
    let traceparent = std::env::var("TRACEPARENT").ok();
    code_mode_trace::adopt_traceparent(&span, traceparent.as_deref());
    span
}

#[expect(clippy::print_stdout, reason = "the CLI's output is its stdout")]
/// `code-mode describe`: the `exec` description (or both tool specs as JSON) for the tools.
async fn describe(tools: ToolArgs, json: bool) -> Result<(), Failure> {
    let tools = tools::ToolSet::load(tools.tools.as_deref(), &tools.builtin)
        .await
        .map_err(|error| Failure::usage(error.to_string()))?;
    let descriptions = tools.descriptions();
    let unavailable = tools.unavailable();
    tools.stop().await;
    let catalog = code_mode_surface::Catalog {
        tools: &descriptions,
        unavailable: &unavailable,
    };
    if json {
        let specs = serde_json::json!([
            code_mode_surface::exec_tool_spec_of(catalog).to_json(),
            code_mode_surface::wait_tool_spec().to_json(),
        ]);
        println!(
            "{}",
            serde_json::to_string_pretty(&specs).unwrap_or_default()
        );
    } else {
        print!("{}", code_mode_surface::exec_description_of(catalog));
    }
    Ok(())
}

async fn dispatch(command: Command, runtime_log: String) -> Result<(), Failure> {
    if let Command::Run { runtime, .. }
    | Command::Repl { runtime, .. }
    | Command::Mcp { runtime, .. }
    | Command::Serve { runtime, .. } = &command
    {
        runtime.check().map_err(Failure::usage)?;
    }
    match command {
        Command::Run {
            file,
            tools,
            yield_ms,
            max_output_tokens,
            json,
            runtime,
            save_media,
        } => {
            let span = command_span(tracing::info_span!("code_mode.run"));
            tracing::Instrument::instrument(
                run::run(run::RunOptions {
                    file,
                    tools: tools.tools,
                    builtins: tools.builtin,
                    yield_ms,
                    max_output_tokens,
                    json,
                    runtime,
                    save_media,
                    runtime_log,
                }),
                span,
            )
            .await
        }
        Command::Repl {
            tools,
            yield_ms,
            runtime,
            no_isolate_reuse,
        } => {
            let span = command_span(tracing::info_span!("code_mode.repl"));
            tracing::Instrument::instrument(
                repl::repl(repl::ReplOptions {
                    tools: tools.tools,
                    builtins: tools.builtin,
                    yield_ms,
                    runtime,
                    reuse_isolates: !no_isolate_reuse,
                    runtime_log,
                }),
                span,
            )
            .await
        }
        Command::Describe { tools, json } => describe(tools, json).await,
        Command::Mcp {
            tools,
            http,
            limits,
            runtime,
            no_isolate_reuse,
            state,
        } => {
            mcp::serve(mcp::McpOptions {
                tools: tools.tools,
                builtins: tools.builtin,
                http: http.options(),
                runtime,
                session: limits.session_options(!no_isolate_reuse),
                runtime_log,
                state: state.store(),
            })
            .await
        }
        Command::Approvals { .. } => Ok(()),
        Command::Serve {
            jsonl: _,
            tools,
            runtime,
            state,
        } => {
            let tools = tools::ToolSet::load(tools.tools.as_deref(), &tools.builtin)
                .await
                .map_err(|error| Failure::usage(error.to_string()))?;
            serve::serve(&runtime, tools, runtime_log, state.store()).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Approvals { action } = cli.command {
        // Blocking, and before any async runtime (the Postgres client runs its own).
        return match approvals::run(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => {
                if let Some(message) = failure.message {
                    eprintln!("code-mode: {message}");
                }
                ExitCode::from(failure.code)
            }
        };
    }
    let telemetry = match telemetry(&cli) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("code-mode: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime_log = init_logging(cli.verbose, telemetry.as_ref());
    // The JSON-lines driver runs on one thread, so that each session's answers and later
    // events reach stdout in the order the session produced them (see `serve::serve`);
    // cells run on threads of their own either way.
    let mut builder = if matches!(cli.command, Command::Serve { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("code-mode: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(dispatch(cli.command, runtime_log));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // What is left of the traces goes out before the process ends.
    drop(telemetry);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Some(message) = failure.message {
                eprintln!("code-mode: {message}");
            }
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session options `code-mode mcp` opens its sessions with, from its arguments.
    fn mcp_session(args: &[&str]) -> code_mode_protocol::SessionOptions {
        let cli = Cli::try_parse_from(["code-mode", "mcp"].iter().chain(args))
            .expect("the arguments parse");
        match cli.command {
            Command::Mcp {
                limits,
                no_isolate_reuse,
                ..
            } => limits.session_options(!no_isolate_reuse),
            other => panic!("not mcp: {other:?}"),
        }
    }

    #[test]
    fn the_hibernation_flags_reach_the_sessions() {
        assert_eq!(
            mcp_session(&[]).hibernate_after_ms,
            Some(code_mode_protocol::session::DEFAULT_HIBERNATE_AFTER_MS)
        );
        assert_eq!(
            mcp_session(&["--hibernate-after-ms", "7"]).hibernate_after_ms,
            Some(7)
        );
        assert_eq!(mcp_session(&["--no-hibernation"]).hibernate_after_ms, None);
    }
}
