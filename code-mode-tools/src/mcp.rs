//! MCP servers as tool sources: each `[[mcp_server]]` of the tools file is started (a child
//! process speaking stdio, or a streamable-HTTP endpoint), its tools are listed, and each
//! becomes `mcp__<server>__<tool>` for cells. This module owns the connections: starting
//! them concurrently, the tool lists (refreshed on `tools/list_changed`), calls with their
//! timeout and cancellation, and restarting a server that died, with backoff.
//!
//! All MCP speaking is rmcp's; this module only decides what a cell sees.

use crate::environment::ToolEnv;
use crate::line_cap::LineCap;
use code_mode_internal::sync::lock;
use code_mode_protocol::ToolKind;
use code_mode_surface::{ToolDescription, UnavailableSource};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, Tool,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Default time a server has to start, answer `initialize` and list its tools.
pub const DEFAULT_STARTUP_TIMEOUT_MS: u64 = 10_000;

/// Default time one `tools/call` may take.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 60_000;

/// How much of a server's stderr is kept to explain its failures, in bytes.
const STDERR_TAIL_BYTES: usize = 2_000;

/// The first wait before starting a server again after a failed start; it doubles with
/// each failure in a row, up to [`MAX_RESTART_BACKOFF`].
const FIRST_RESTART_BACKOFF: Duration = Duration::from_millis(250);

/// The longest wait between two starts of a failing server.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(10);

/// After this long, a start still in progress is reported on stderr.
const SLOW_START_NOTICE: Duration = Duration::from_secs(2);

/// The longest MCP message a stdio server may send (rmcp's own line limit, below which
/// our reader fails first so that the call fails at once instead of waiting out its
/// timeout). Cells get tool results of this size comfortably under the 64 MiB frame.
pub const MAX_MCP_MESSAGE_BYTES: usize = 16 * 1024 * 1024 - 1;

/// How long a stdio server has to exit after its stdin closed before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(1_000);

/// How long an error waits for the last stderr of a server that went away.
const STDERR_SETTLE: Duration = Duration::from_millis(500);

/// The prefix of every MCP tool's name; the full name is `mcp__<server>__<tool>`.
pub const MCP_TOOL_PREFIX: &str = "mcp__";

/// How to reach a server.
#[derive(Debug, Clone)]
pub enum McpTransport {
    /// A child process speaking MCP on its stdin/stdout. `program` is as the tools file
    /// names it, found (on `PATH`, or relative to `cwd`) each time the server starts: a
    /// server whose program is missing fails to start, like any other start failure, and
    /// is tried again in the background; the other servers are not affected.
    /// Its environment is `env` over the few variables of ours every tool gets
    /// (`environment`), nothing else of ours.
    Stdio {
        program: String,
        args: Vec<String>,
        env: ToolEnv,
        cwd: PathBuf,
    },
    /// A streamable-HTTP endpoint.
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

/// One `[[mcp_server]]` entry, checked.
#[derive(Debug, Clone)]
pub struct McpServerConfig {
    /// The namespace: tools become `mcp__<name>__<tool>`.
    pub name: String,
    pub transport: McpTransport,
    /// Only these tools, when given.
    pub enabled_tools: Option<Vec<String>>,
    /// Never these tools.
    pub disabled_tools: Vec<String>,
    pub startup_timeout: Duration,
    pub call_timeout: Duration,
    /// Its tools are deferred (contract 8.3).
    pub deferred: bool,
}

impl McpServerConfig {
    fn exposes(&self, tool: &str) -> bool {
        let enabled = self
            .enabled_tools
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == tool));
        enabled && !self.disabled_tools.iter().any(|name| name == tool)
    }
}

/// The end of a child's stderr, kept to explain why it failed.
#[derive(Default)]
struct StderrTail(VecDeque<u8>);

impl StderrTail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend(bytes);
        let excess = self.0.len().saturating_sub(STDERR_TAIL_BYTES);
        self.0.drain(..excess);
    }

    fn text(&self) -> String {
        let bytes: Vec<u8> = self.0.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

type Client = RunningService<RoleClient, ClientSide>;

/// Why an MCP server could not be started; each names the server (and, where it has
/// one, ends with the end of its stderr).
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("MCP server `{server}` could not be started: command `{program}` was not found")]
    NotFound { server: String, program: String },
    #[error("MCP server `{server}` could not be started ({}): {source}", path.display())]
    Spawn {
        server: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("MCP server `{server}`: header `{name}`: {detail}")]
    Header {
        server: String,
        name: String,
        detail: String,
    },
    /// The MCP handshake failed (the text names the server and its stderr).
    #[error("{0}")]
    Initialize(String),
    /// `tools/list` failed.
    #[error("{0}")]
    ListTools(String),
    /// Neither answered within the startup timeout.
    #[error("{0}")]
    Timeout(String),
}

/// A server's connection state; its async lock serialises (re)starts.
#[derive(Default)]
struct Link {
    client: Option<Client>,
    /// A stdio server's process, killed when dropped.
    child: Option<tokio::process::Child>,
    /// Failed starts in a row.
    failures: u32,
    /// No start before this instant (the backoff after a failed start).
    retry_at: Option<Instant>,
    /// Counts starts, so a call that saw its server exit drops that client and not a
    /// newer one another call started meanwhile.
    generation: u64,
}

/// One configured server.
pub struct McpServer {
    config: McpServerConfig,
    link: tokio::sync::Mutex<Link>,
    /// The tools the server listed, those the configuration exposes.
    tools: Mutex<Vec<Tool>>,
    stderr: Arc<Mutex<StderrTail>>,
    /// How many `tools/list_changed` arrived.
    changes: Arc<AtomicU64>,
    /// Held while the tools are listed again; the value of `changes` then.
    relisting: tokio::sync::Mutex<u64>,
    /// Set when the current process sent a message over [`MAX_MCP_MESSAGE_BYTES`].
    oversized: Arc<AtomicBool>,
    /// The task copying the current process's stderr into `stderr`; it ends at EOF.
    stderr_reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cancelled when the sources stop: ends a start in progress and the retries.
    stopping: CancellationToken,
    /// Called after the tool list changed (`code-mode mcp` tells its clients).
    on_change: Arc<dyn Fn() + Send + Sync>,
    /// Why the last start failed, until a start succeeds: the server is unavailable.
    down: Mutex<Option<String>>,
}

/// rmcp's client handler: our identity, and the notifications a server sends.
struct ClientSide {
    server: Weak<McpServer>,
}

impl ClientHandler for ClientSide {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("code-mode", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        let Some(server) = self.server.upgrade() else {
            return;
        };
        // Over stdio the reader counted it already; over HTTP this is the first word of
        // it. Counting twice costs at most one more listing.
        server.changes.fetch_add(1, Ordering::SeqCst);
        server.relist(&context.peer).await;
    }
}

impl McpServer {
    /// Lists the tools again if a `tools/list_changed` came after the last listing. One
    /// listing at a time: whoever takes the lock second finds the list fresh.
    async fn relist(&self, peer: &rmcp::service::Peer<RoleClient>) {
        let mut listed = self.relisting.lock().await;
        let changes = self.changes.load(Ordering::SeqCst);
        if *listed == changes {
            return;
        }
        *listed = changes;
        // Bounded: cells wait for this listing before they start (see `settled`).
        let listing = tokio::time::timeout(self.config.call_timeout, peer.list_all_tools());
        let Ok(listing) = listing.await else {
            tracing::warn!(server = %self.config.name, "the changed MCP tools were not listed in time; the old list stays");
            return;
        };
        match listing {
            Ok(tools) => {
                tracing::info!(server = %self.config.name, count = tools.len(), "MCP tool list changed");
                self.set_tools(tools);
            }
            // The server went away right after it said so (at shutdown, say): the next
            // start lists its tools anew, so there is nothing to warn about.
            Err(error @ rmcp::ServiceError::TransportClosed) => {
                tracing::debug!(server = %self.config.name, %error, "cannot list the changed MCP tools");
            }
            Err(error) => {
                tracing::warn!(server = %self.config.name, %error, "cannot list the changed MCP tools");
            }
        }
    }

    /// Waits for a tool list that changed to be listed again, so that a cell starting
    /// after a call whose server said its tools changed sees the new ones.
    async fn settled(&self) {
        if *self.relisting.lock().await == self.changes.load(Ordering::SeqCst) {
            return;
        }
        let peer = self
            .link
            .lock()
            .await
            .client
            .as_ref()
            .map(|client| client.peer().clone());
        match peer {
            Some(peer) => self.relist(&peer).await,
            // No connection: the next start lists the tools anyway.
            None => *self.relisting.lock().await = self.changes.load(Ordering::SeqCst),
        }
    }
}

impl McpServer {
    fn new(config: McpServerConfig, on_change: Arc<dyn Fn() + Send + Sync>) -> Arc<Self> {
        Arc::new(Self {
            config,
            link: tokio::sync::Mutex::new(Link::default()),
            tools: Mutex::new(Vec::new()),
            stderr: Arc::new(Mutex::new(StderrTail::default())),
            stderr_reader: Mutex::new(None),
            oversized: Arc::new(AtomicBool::new(false)),
            changes: Arc::new(AtomicU64::new(0)),
            relisting: tokio::sync::Mutex::new(0),
            stopping: CancellationToken::new(),
            on_change,
            down: Mutex::new(None),
        })
    }

    fn set_tools(&self, tools: Vec<Tool>) {
        let exposed = tools
            .into_iter()
            .filter(|tool| self.config.exposes(&tool.name))
            .collect();
        *lock(&self.tools) = exposed;
        (self.on_change)();
    }

    /// "MCP server `fs`", with the end of its stderr when there is some.
    fn failure(&self, what: &str) -> String {
        let name = &self.config.name;
        let tail = lock(&self.stderr).text();
        if tail.is_empty() {
            format!("MCP server `{name}` {what}")
        } else {
            format!("MCP server `{name}` {what}; the end of its stderr:\n{tail}")
        }
    }

    /// Starts the server and lists its tools, within the startup timeout.
    /// A stdio server's process comes back beside its client; on failure it is killed.
    async fn connect(
        self: &Arc<Self>,
    ) -> Result<(Client, Option<tokio::process::Child>), ConnectError> {
        let started = Instant::now();
        let attempt = async {
            let handler = ClientSide {
                server: Arc::downgrade(self),
            };
            let (client, child) = match &self.config.transport {
                McpTransport::Stdio {
                    program,
                    args,
                    env,
                    cwd,
                } => {
                    let (client, child) =
                        self.start_stdio(handler, program, args, env, cwd).await?;
                    (client, Some(child))
                }
                McpTransport::Http { url, headers } => {
                    (self.connect_http(handler, url, headers).await?, None)
                }
            };
            let tools = client.list_all_tools().await.map_err(|error| {
                ConnectError::ListTools(self.failure(&format!("failed to list its tools: {error}")))
            })?;
            Ok::<_, ConnectError>((client, child, tools))
        };
        let notice = async {
            tokio::time::sleep(SLOW_START_NOTICE).await;
            eprintln!(
                "code-mode: still starting MCP server `{}` ({} s so far, timeout {} ms)",
                self.config.name,
                SLOW_START_NOTICE.as_secs(),
                self.config.startup_timeout.as_millis()
            );
            std::future::pending::<()>().await;
        };
        // A start that times out drops the attempt, and with it the process it spawned.
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(self.config.startup_timeout, attempt) => outcome,
            () = notice => unreachable!("the notice never ends"),
        };
        let (client, child, tools) = outcome.map_err(|_| {
            ConnectError::Timeout(self.failure(&format!(
                "did not start within {} ms (no answer to `initialize` or `tools/list`)",
                self.config.startup_timeout.as_millis()
            )))
        })??;
        tracing::info!(server = %self.config.name, tools = tools.len(), elapsed_ms = started.elapsed().as_millis() as u64, "MCP server started");
        self.set_tools(tools);
        Ok((client, child))
    }

    /// Spawns a stdio server (its stderr kept for failures) and initializes it. The process
    /// comes back beside its client; on failure it is dropped, which kills it.
    async fn start_stdio(
        self: &Arc<Self>,
        handler: ClientSide,
        program: &str,
        args: &[String],
        env: &ToolEnv,
        cwd: &std::path::Path,
    ) -> Result<(Client, tokio::process::Child), ConnectError> {
        let name = &self.config.name;
        let path = crate::program::resolve_program(program, cwd).ok_or_else(|| {
            ConnectError::NotFound {
                server: name.clone(),
                program: program.to_owned(),
            }
        })?;
        let mut command = tokio::process::Command::new(&path);
        env.apply(&mut command);
        command
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| ConnectError::Spawn {
            server: name.clone(),
            path: path.clone(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three pipes were asked for");
        };
        let tail = Arc::clone(&self.stderr);
        let server = name.clone();
        let reader = tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = stderr.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                let chunk = &buffer[..read];
                tracing::debug!(server = %server, stderr = %String::from_utf8_lossy(chunk).trim_end(), "MCP server stderr");
                lock(&tail).push(chunk);
            }
        });
        *lock(&self.stderr_reader) = Some(reader);
        self.oversized.store(false, Ordering::Relaxed);
        // The notification is flagged as it is read, before the answer after it reaches
        // its call: see `settled`.
        let stdout = LineCap::new(stdout, MAX_MCP_MESSAGE_BYTES, Arc::clone(&self.oversized))
            .watching(
                b"notifications/tools/list_changed",
                Arc::clone(&self.changes),
            );
        match handler.serve((stdout, stdin)).await {
            Ok(client) => Ok((client, child)),
            Err(error) => {
                self.stderr_settled().await;
                Err(ConnectError::Initialize(
                    self.failure(&format!("failed to initialize: {error}")),
                ))
            }
        }
    }

    /// Connects to a streamable-HTTP server with its headers and initializes it.
    async fn connect_http(
        self: &Arc<Self>,
        handler: ClientSide,
        url: &str,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Result<Client, ConnectError> {
        let header = |name: &str, detail: String| ConnectError::Header {
            server: self.config.name.clone(),
            name: name.to_owned(),
            detail,
        };
        let mut custom = HashMap::new();
        for (name, value) in headers {
            let key = http::HeaderName::try_from(name.as_str())
                .map_err(|error| header(name, error.to_string()))?;
            let value = http::HeaderValue::try_from(value.as_str())
                .map_err(|error| header(name, error.to_string()))?;
            custom.insert(key, value);
        }
        // reqwest's rustls has no provider of its own: ring, the workspace's.
        code_mode_tls::use_ring();
        let config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                url,
            )
            .custom_headers(custom);
        handler
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .map_err(|error| {
                ConnectError::Initialize(self.failure(&format!("failed to initialize: {error}")))
            })
    }

    /// A live client: the current one, or a new start (after the backoff of earlier
    /// failures, which a cancelled call stops waiting for).
    async fn client(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> Result<(rmcp::service::Peer<RoleClient>, u64), String> {
        let mut link = self.link.lock().await;
        if let Some(client) = &link.client {
            if !client.is_closed() && !client.peer().is_transport_closed() {
                return Ok((client.peer().clone(), link.generation));
            }
            shut_down(link.client.take(), link.child.take()).await;
        }
        if let Some(retry_at) = link.retry_at {
            tokio::select! {
                () = tokio::time::sleep_until(retry_at.into()) => {}
                () = cancel.cancelled() => return Err("cancelled".to_owned()),
            }
        }
        lock(&self.stderr).0.clear();
        // A cancelled start kills what it spawned (dropping the attempt drops the child).
        let attempt = tokio::select! {
            attempt = self.connect() => attempt.map_err(|error| error.to_string()),
            () = cancel.cancelled() => return Err("cancelled".to_owned()),
        };
        match attempt {
            Ok((client, child)) => {
                let peer = client.peer().clone();
                link.client = Some(client);
                link.child = child;
                link.failures = 0;
                link.retry_at = None;
                link.generation += 1;
                *lock(&self.down) = None;
                Ok((peer, link.generation))
            }
            Err(error) => {
                *lock(&self.down) = Some(error.clone());
                link.failures += 1;
                let backoff = FIRST_RESTART_BACKOFF
                    .saturating_mul(1 << (link.failures - 1).min(16))
                    .min(MAX_RESTART_BACKOFF);
                link.retry_at = Some(Instant::now() + backoff);
                Err(error)
            }
        }
    }

    /// Tries to start a server whose first start failed, with the backoff of its failures
    /// (up to [`MAX_RESTART_BACKOFF`] apart), until it starts or the sources stop: its
    /// tools then appear for later cells, and `code-mode mcp` tells its clients.
    async fn keep_trying(self: Arc<Self>) {
        let mut attempts = 1u32;
        loop {
            attempts += 1;
            match self.client(&self.stopping).await {
                Ok(_) => {
                    tracing::info!(server = %self.config.name, attempts, "MCP server started after failing to");
                    return;
                }
                Err(_) if self.stopping.is_cancelled() => return,
                Err(error) => {
                    tracing::debug!(server = %self.config.name, attempts, %error, "MCP server still not started");
                }
            }
        }
    }

    /// Calls one of this server's tools; the result is the `CallToolResult` as JSON, and
    /// an `isError` result is the text of its content.
    async fn call(
        self: &Arc<Self>,
        tool: &str,
        js_name: &str,
        input: Option<Value>,
        cancel: &CancellationToken,
    ) -> Result<Value, String> {
        let arguments = match input {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(arguments)) => arguments,
            Some(other) => {
                return Err(format!(
                    "tools.{js_name} takes an object of arguments (or none), not {}",
                    json_type(&other)
                ));
            }
        };
        let (peer, generation) = self.client(cancel).await?;
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        // Dropping rmcp's call future sends `notifications/cancelled` for it.
        let call = tokio::time::timeout(self.config.call_timeout, peer.call_tool(params));
        let outcome = tokio::select! {
            outcome = call => outcome,
            () = cancel.cancelled() => return Err("cancelled".to_owned()),
        };
        match outcome {
            Ok(Ok(result)) => result_json(result),
            Ok(Err(error)) => {
                let exited = peer.is_transport_closed()
                    || matches!(
                        error,
                        rmcp::ServiceError::TransportClosed | rmcp::ServiceError::TransportSend(_)
                    );
                if exited && self.oversized.load(Ordering::Relaxed) {
                    self.forget(generation).await;
                    Err(format!(
                        "MCP server `{}` answered `{tool}` with a message over the {} MiB limit of one MCP message; the server was stopped and is started again on the next call",
                        self.config.name,
                        (MAX_MCP_MESSAGE_BYTES + 1) / (1024 * 1024)
                    ))
                } else if exited {
                    self.forget(generation).await;
                    self.stderr_settled().await;
                    Err(self.failure(&format!(
                        "exited during the call to `{tool}`; it is started again on the next call"
                    )))
                } else {
                    Err(format!(
                        "MCP server `{}` failed the call to `{tool}`: {error}",
                        self.config.name
                    ))
                }
            }
            Err(_) => Err(format!(
                "MCP server `{}` did not answer the call to `{tool}` within {} ms",
                self.config.name,
                self.config.call_timeout.as_millis()
            )),
        }
    }

    /// Waits a moment for the stderr of a process that went away to reach its end, so
    /// that the error text has its last words.
    async fn stderr_settled(&self) {
        let reader = lock(&self.stderr_reader).take();
        if let Some(reader) = reader {
            let _ = tokio::time::timeout(STDERR_SETTLE, reader).await;
        }
    }

    /// Drops the client of start `generation` after its server went away, so that the
    /// next call starts the server again; a process still running is killed.
    async fn forget(&self, generation: u64) {
        let mut link = self.link.lock().await;
        if link.generation == generation {
            let (client, child) = (link.client.take(), link.child.take());
            drop(link);
            shut_down(client, child).await;
        }
    }

    /// Stops the server (and its retries, if it never started).
    async fn stop(&self) {
        self.stopping.cancel();
        let mut link = self.link.lock().await;
        let (client, child) = (link.client.take(), link.child.take());
        drop(link);
        shut_down(client, child).await;
    }
}

/// Ends a connection: rmcp closes the transport (a stdio server sees its stdin end), the
/// process gets a moment to exit on its own, and is killed if it has not.
async fn shut_down(client: Option<Client>, child: Option<tokio::process::Child>) {
    if let Some(client) = client {
        let _ = client.cancel().await;
    }
    if let Some(mut child) = child
        && tokio::time::timeout(EXIT_GRACE, child.wait())
            .await
            .is_err()
    {
        let _ = child.kill().await;
    }
}

/// A JSON value's type, as the error texts name it.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The result a cell gets: `content`, `structuredContent`, `_meta` (and `isError` when
/// false). An `isError: true` result rejects with the text of its content.
fn result_json(result: CallToolResult) -> Result<Value, String> {
    let mut value = serde_json::to_value(&result)
        .map_err(|error| format!("the MCP result could not be read: {error}"))?;
    if let Value::Object(fields) = &mut value {
        fields.remove("resultType");
    }
    if result.is_error == Some(true) {
        let texts: Vec<String> = value
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        let message = if texts.is_empty() {
            "the MCP tool reported an error without text".to_owned()
        } else {
            texts.join("\n")
        };
        return Err(message);
    }
    Ok(value)
}

/// The output schema a cell's result follows: a `CallToolResult` whose
/// `structuredContent` is the tool's own output schema.
fn call_tool_result_schema(output_schema: Option<&serde_json::Map<String, Value>>) -> Value {
    let mut properties = serde_json::Map::new();
    properties.insert(
        "content".to_owned(),
        json!({"type": "array", "items": {"type": "object"}}),
    );
    if let Some(schema) = output_schema {
        properties.insert(
            "structuredContent".to_owned(),
            Value::Object(schema.clone()),
        );
    }
    properties.insert("isError".to_owned(), json!({"type": "boolean"}));
    properties.insert("_meta".to_owned(), json!({"type": "object"}));
    json!({"type": "object", "properties": properties, "required": ["content"]})
}

/// Every configured server.
pub struct McpSources {
    servers: Vec<Arc<McpServer>>,
}

/// One MCP tool as a cell sees it.
pub struct McpToolRef {
    server: Arc<McpServer>,
    tool: String,
}

impl McpSources {
    /// Starts every server concurrently. A server that fails to start is reported on
    /// stderr and offers no tools; the others are unaffected.
    pub async fn start(
        configs: Vec<McpServerConfig>,
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let servers: Vec<Arc<McpServer>> = configs
            .into_iter()
            .map(|config| McpServer::new(config, Arc::clone(&on_change)))
            .collect();
        let starts = servers.iter().map(|server| async move {
            if let Err(error) = server.client(&server.stopping).await {
                eprintln!("code-mode: {error}; trying again in the background");
                tokio::spawn(Arc::clone(server).keep_trying());
            }
        });
        futures_util::future::join_all(starts).await;
        Self { servers }
    }

    /// The full name of a server's tool.
    pub fn tool_name(server: &str, tool: &str) -> String {
        format!("{MCP_TOOL_PREFIX}{server}__{tool}")
    }

    /// The servers whose last start failed, with the failure: their tools are missing
    /// until a start in the background succeeds.
    pub fn unavailable(&self) -> Vec<UnavailableSource> {
        self.servers
            .iter()
            .filter_map(|server| {
                let reason = lock(&server.down).clone()?;
                let name = format!("MCP server `{}`", server.config.name);
                // The failure names the server first; the description names it already.
                let reason = reason
                    .strip_prefix(&name)
                    .map_or(reason.as_str(), str::trim_start)
                    .to_owned();
                Some(UnavailableSource { name, reason })
            })
            .collect()
    }

    /// Every exposed tool, server by server in configuration order, each server's tools
    /// under a namespace header.
    pub fn descriptions(&self) -> Vec<ToolDescription> {
        let mut descriptions = Vec::new();
        for server in &self.servers {
            let name = &server.config.name;
            for tool in lock(&server.tools).iter() {
                descriptions.push(ToolDescription {
                    name: Self::tool_name(name, &tool.name),
                    namespace: Some(format!("{MCP_TOOL_PREFIX}{name}")),
                    namespace_description: Some(format!("Tools of the MCP server `{name}`.")),
                    description: titled_description(tool),
                    kind: ToolKind::Function,
                    input_schema: Some(Value::Object((*tool.input_schema).clone())),
                    output_schema: Some(call_tool_result_schema(tool.output_schema.as_deref())),
                    deferred: server.config.deferred,
                });
            }
        }
        descriptions
    }

    /// The server tool behind a full name, if a server lists it now.
    pub fn lookup(&self, name: &str) -> Option<McpToolRef> {
        let rest = name.strip_prefix(MCP_TOOL_PREFIX)?;
        self.servers.iter().find_map(|server| {
            let tool = rest
                .strip_prefix(server.config.name.as_str())?
                .strip_prefix("__")?;
            lock(&server.tools)
                .iter()
                .any(|listed| listed.name == tool)
                .then(|| McpToolRef {
                    server: Arc::clone(server),
                    tool: tool.to_owned(),
                })
        })
    }

    /// Waits until every tool list a server said changed has been listed again.
    pub async fn settled(&self) {
        futures_util::future::join_all(self.servers.iter().map(|server| server.settled())).await;
    }

    /// Stops every server.
    pub async fn stop(&self) {
        futures_util::future::join_all(self.servers.iter().map(|server| server.stop())).await;
    }
}

impl McpToolRef {
    /// Calls the tool; `js_name` is how the cell named it (for error texts).
    pub async fn call(
        &self,
        js_name: &str,
        input: Option<Value>,
        cancel: &CancellationToken,
    ) -> Result<Value, String> {
        self.server.call(&self.tool, js_name, input, cancel).await
    }
}

/// A server tool's description, after its title when it has one that says more than its
/// name (the title is what `tools.tool_search` and the model read first).
fn titled_description(tool: &rmcp::model::Tool) -> String {
    let description = tool.description.as_deref().unwrap_or_default().trim();
    match tool.title.as_deref().map(str::trim) {
        Some(title)
            if !title.is_empty() && title != tool.name && !description.starts_with(title) =>
        {
            if description.is_empty() {
                title.to_owned()
            } else {
                format!("{title}: {description}")
            }
        }
        _ => description.to_owned(),
    }
}
