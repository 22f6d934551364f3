//! The tools a cell can call from the command line: tools defined in a TOML file (each runs
//! a command with the JSON input on stdin) and the opt-in built-ins (`fs`: `read_file`,
//! `list_dir`, `write_file`; `shell`: `exec_command`), plus the tools of MCP servers
//! (`[[mcp_server]]`, see [`crate::mcp::client`]). Also the delegate that runs them.
//!
//! A tools file:
//! ```toml
//! [[tool]]
//! name = "count_lines"
//! description = "Counts the lines of files."
//! command = ["python3", "count_lines.py"]   # or a string, run with `sh -c`
//! timeout_ms = 30000                        # optional
//! cwd = "."                                 # optional, relative to the tools file
//! kind = "function"                         # optional: "function" or "freeform"
//! [tool.input_schema]                       # optional JSON Schema, as a TOML table
//! type = "object"
//!
//! [[mcp_server]]
//! name = "fs"                                  # tools.mcp__fs__<tool>
//! command = ["npx", "server-filesystem", "."]  # stdio; or: url = "http://127.0.0.1:3001/mcp"
//! # optional: env = { KEY = "v" }, cwd, enabled_tools = [...], disabled_tools = [...],
//! #           startup_timeout_ms, call_timeout_ms, headers = { ... } (with url)
//! ```

use crate::mcp::client::{
    DEFAULT_CALL_TIMEOUT_MS, DEFAULT_STARTUP_TIMEOUT_MS, McpServerConfig, McpSources, McpTransport,
};
use code_mode_protocol::surface::ToolDescription;
use code_mode_protocol::{
    BoxFuture, CodeModeSessionDelegate, NestedToolCall, ToolDefinition, ToolKind, js_tool_name,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Default timeout of a command tool, in milliseconds.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 30_000;

/// How much of a failed command's stderr is quoted in the rejection, in bytes.
const STDERR_TAIL_BYTES: usize = 2_000;

/// Largest file `read_file` returns whole, in bytes; longer files need `offset`/`limit`.
const READ_FILE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Why the tools could not be set up. Each message is one line a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("cannot read the tools file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad tools file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("bad tools file {path}: tool `{tool}`: {message}")]
    Tool {
        path: PathBuf,
        tool: String,
        message: String,
    },
    #[error("bad tools file {path}: MCP server `{server}`: {message}")]
    McpServer {
        path: PathBuf,
        server: String,
        message: String,
    },
    #[error("unknown built-in tool set `{0}` (known: fs, shell)")]
    UnknownBuiltin(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsFile {
    #[serde(default)]
    tool: Vec<ToolEntry>,
    #[serde(default)]
    mcp_server: Vec<McpServerEntry>,
}

/// A `[[mcp_server]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct McpServerEntry {
    name: String,
    command: Option<Command>,
    /// Appended to `command`, as MCP client configurations elsewhere spell it.
    #[serde(default)]
    args: Vec<String>,
    url: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    enabled_tools: Option<Vec<String>>,
    #[serde(default)]
    disabled_tools: Vec<String>,
    startup_timeout_ms: Option<u64>,
    call_timeout_ms: Option<u64>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolEntry {
    name: String,
    #[serde(default)]
    description: String,
    command: Command,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    kind: Option<KindName>,
    #[serde(default)]
    input_schema: Option<toml::Value>,
    #[serde(default)]
    output_schema: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KindName {
    Function,
    Freeform,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    /// The program and its arguments; a string runs through `sh -c`.
    fn split(&self) -> Result<(String, Vec<String>), String> {
        match self {
            Command::Shell(line) => Ok(("sh".to_owned(), vec!["-c".to_owned(), line.clone()])),
            Command::Argv(argv) => match argv.split_first() {
                Some((program, args)) => Ok((program.clone(), args.to_vec())),
                None => Err("`command` must not be empty".to_owned()),
            },
        }
    }
}

/// How a tool is implemented.
#[derive(Debug, Clone)]
enum Implementation {
    Command {
        program: PathBuf,
        args: Vec<String>,
        cwd: PathBuf,
        timeout: Duration,
    },
    ReadFile,
    ListDir,
    WriteFile,
    ExecCommand,
}

#[derive(Debug, Clone)]
struct Tool {
    description: ToolDescription,
    implementation: Implementation,
}

/// Every tool of a CLI run.
#[derive(Clone, Default)]
pub struct ToolSet {
    tools: BTreeMap<String, Tool>,
    order: Vec<String>,
    /// The `[[mcp_server]]` entries, until [`ToolSet::start`] starts them.
    mcp_configs: Vec<McpServerConfig>,
    mcp: Option<Arc<McpSources>>,
}

impl ToolSet {
    /// Loads a tools file (if given), adds the named built-in sets and starts the file's
    /// MCP servers.
    pub async fn load(file: Option<&Path>, builtins: &[String]) -> Result<Self, ToolsError> {
        let mut set = Self::parse(file, builtins)?;
        set.start(Arc::new(|| {})).await;
        Ok(set)
    }

    /// Starts the MCP servers of the tools file (concurrently); `on_change` runs whenever
    /// a server's tool list changes.
    pub async fn start(&mut self, on_change: Arc<dyn Fn() + Send + Sync>) {
        let configs = std::mem::take(&mut self.mcp_configs);
        if !configs.is_empty() {
            self.mcp = Some(Arc::new(McpSources::start(configs, on_change).await));
        }
    }

    /// Stops the MCP servers.
    pub async fn stop(&self) {
        if let Some(mcp) = &self.mcp {
            mcp.stop().await;
        }
    }

    /// Reads a tools file (if given) and adds the named built-in sets; MCP servers are
    /// checked, not started.
    pub fn parse(file: Option<&Path>, builtins: &[String]) -> Result<Self, ToolsError> {
        let mut set = ToolSet::default();
        if let Some(path) = file {
            set.load_file(path)?;
        }
        for builtin in builtins {
            match builtin.as_str() {
                "fs" => {
                    set.add_builtin("read_file", "Reads a UTF-8 text file. `offset` and `limit` select lines (0-based).", Implementation::ReadFile,
                        json!({"type": "object", "properties": {"path": {"type": "string"}, "offset": {"type": "integer"}, "limit": {"type": "integer"}}, "required": ["path"], "additionalProperties": false}));
                    set.add_builtin("list_dir", "Lists a directory: name, type (file, dir, symlink, other) and size of each entry, sorted by name.", Implementation::ListDir,
                        json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"], "additionalProperties": false}));
                    set.add_builtin("write_file", "Writes a UTF-8 text file, replacing it; returns the bytes written.", Implementation::WriteFile,
                        json!({"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}, "required": ["path", "content"], "additionalProperties": false}));
                }
                "shell" => set.add_builtin("exec_command", "Runs a shell command with `sh -c`; returns its exit code, stdout and stderr.", Implementation::ExecCommand,
                    json!({"type": "object", "properties": {"command": {"type": "string"}, "cwd": {"type": "string"}, "timeout_ms": {"type": "integer"}}, "required": ["command"], "additionalProperties": false})),
                other => return Err(ToolsError::UnknownBuiltin(other.to_owned())),
            }
        }
        Ok(set)
    }

    fn load_file(&mut self, path: &Path) -> Result<(), ToolsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ToolsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parsed: ToolsFile = toml::from_str(&text).map_err(|error| ToolsError::Parse {
            path: path.to_path_buf(),
            message: one_line(&describe_toml_error(&text, &error)),
        })?;
        // A bare file name (`--tools tools.toml`) has an empty parent: that is ".", not a
        // directory that cannot be entered.
        let base = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        for entry in parsed.tool {
            let tool_error = |message: String| ToolsError::Tool {
                path: path.to_path_buf(),
                tool: entry.name.clone(),
                message,
            };
            if entry.name.is_empty() {
                return Err(tool_error("`name` must not be empty".to_owned()));
            }
            if self.tools.contains_key(&entry.name) {
                return Err(tool_error("defined twice".to_owned()));
            }
            let cwd = base.join(entry.cwd.clone().unwrap_or_default());
            let (program, args) = entry.command.split().map_err(tool_error)?;
            let program = resolve_program(&program, &cwd)
                .ok_or_else(|| tool_error(format!("command `{program}` was not found")))?;
            let schema = |value: &Option<toml::Value>| -> Result<Option<Value>, ToolsError> {
                value
                    .as_ref()
                    .map(|value| serde_json::to_value(value).map_err(|e| tool_error(e.to_string())))
                    .transpose()
            };
            let description = ToolDescription {
                name: entry.name.clone(),
                description: entry.description.clone(),
                kind: match entry.kind {
                    Some(KindName::Freeform) => ToolKind::Freeform,
                    _ => ToolKind::Function,
                },
                input_schema: schema(&entry.input_schema)?,
                output_schema: schema(&entry.output_schema)?,
                ..ToolDescription::default()
            };
            if entry.name.starts_with(crate::mcp::client::MCP_TOOL_PREFIX) {
                return Err(tool_error(format!(
                    "names starting with `{}` belong to MCP servers",
                    crate::mcp::client::MCP_TOOL_PREFIX
                )));
            }
            let implementation = Implementation::Command {
                program,
                args,
                cwd,
                timeout: Duration::from_millis(entry.timeout_ms.unwrap_or(DEFAULT_TOOL_TIMEOUT_MS)),
            };
            self.insert(
                entry.name,
                Tool {
                    description,
                    implementation,
                },
            );
        }
        for entry in parsed.mcp_server {
            let config = mcp_server_config(entry, &base).map_err(|(server, message)| {
                ToolsError::McpServer {
                    path: path.to_path_buf(),
                    server,
                    message,
                }
            })?;
            if self
                .mcp_configs
                .iter()
                .any(|other| other.name == config.name)
            {
                return Err(ToolsError::McpServer {
                    path: path.to_path_buf(),
                    server: config.name,
                    message: "defined twice".to_owned(),
                });
            }
            self.mcp_configs.push(config);
        }
        Ok(())
    }

    fn add_builtin(
        &mut self,
        name: &str,
        description: &str,
        implementation: Implementation,
        schema: Value,
    ) {
        let description = ToolDescription {
            name: name.to_owned(),
            description: description.to_owned(),
            input_schema: Some(schema),
            ..ToolDescription::default()
        };
        self.insert(
            name.to_owned(),
            Tool {
                description,
                implementation,
            },
        );
    }

    fn insert(&mut self, name: String, tool: Tool) {
        if self.tools.insert(name.clone(), tool).is_none() {
            self.order.push(name);
        }
    }

    /// The tools as the description builder sees them, in definition order, then the MCP
    /// servers' tools as they list them now. A tool whose JavaScript name another tool
    /// already has is left out (with a warning), so `tools.<name>` is never ambiguous.
    pub fn descriptions(&self) -> Vec<ToolDescription> {
        let mut seen = HashSet::new();
        let fixed = self
            .order
            .iter()
            .filter_map(|name| self.tools.get(name))
            .map(|tool| tool.description.clone());
        let mcp = self.mcp.iter().flat_map(|mcp| mcp.descriptions());
        fixed
            .chain(mcp)
            .filter(|tool| {
                let fresh = seen.insert(js_tool_name(&tool.name));
                if !fresh {
                    tracing::warn!(tool = %tool.name, js_name = %js_tool_name(&tool.name), "left out: another tool has the same JavaScript name");
                }
                fresh
            })
            .collect()
    }

    /// Waits for MCP tool lists that changed to be listed again: call before taking the
    /// descriptions or definitions for a cell.
    pub async fn settled(&self) {
        if let Some(mcp) = &self.mcp {
            mcp.settled().await;
        }
    }

    /// The tools as a cell enables them.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.descriptions()
            .into_iter()
            .map(|tool| ToolDefinition::new(tool.name, tool.description, tool.kind))
            .collect()
    }

    /// Whether `name` is one of these tools (an MCP tool only while its server lists it).
    pub fn has(&self, name: &str) -> bool {
        self.tools.contains_key(name)
            || self
                .mcp
                .as_ref()
                .is_some_and(|mcp| mcp.lookup(name).is_some())
    }

    /// Runs a tool call.
    pub async fn call(
        &self,
        name: &str,
        input: Option<Value>,
        cancel: &CancellationToken,
    ) -> Result<Value, String> {
        let Some(tool) = self.tools.get(name) else {
            let mcp = self.mcp.as_ref().and_then(|mcp| mcp.lookup(name));
            return match mcp {
                Some(tool) => tool.call(&js_tool_name(name), input, cancel).await,
                None => Err(format!("unknown tool `{name}`")),
            };
        };
        match &tool.implementation {
            Implementation::Command {
                program,
                args,
                cwd,
                timeout,
            } => run_command(name, program, args, cwd, *timeout, input, cancel).await,
            Implementation::ReadFile => read_file(&input.unwrap_or(Value::Null)).await,
            Implementation::ListDir => list_dir(&input.unwrap_or(Value::Null)).await,
            Implementation::WriteFile => write_file(&input.unwrap_or(Value::Null)).await,
            Implementation::ExecCommand => {
                exec_command(&input.unwrap_or(Value::Null), cancel).await
            }
        }
    }
}

/// Checks an `[[mcp_server]]` entry; an error is the server's name and what is wrong.
fn mcp_server_config(
    entry: McpServerEntry,
    base: &Path,
) -> Result<McpServerConfig, (String, String)> {
    let name = entry.name.clone();
    let fail = |message: String| (name.clone(), message);
    if entry.name.is_empty()
        || !entry
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(fail(
            "`name` must be letters, digits, `_` or `-` (it becomes part of the tool names)"
                .to_owned(),
        ));
    }
    if entry.name.contains("__") {
        return Err(fail("`name` must not contain `__`".to_owned()));
    }
    let transport = match (entry.command, entry.url) {
        (Some(_), Some(_)) => {
            return Err(fail("give `command` or `url`, not both".to_owned()));
        }
        (None, None) => {
            return Err(fail(
                "needs `command` (a stdio server) or `url` (streamable HTTP)".to_owned(),
            ));
        }
        (Some(command), None) => {
            if !entry.headers.is_empty() {
                return Err(fail("`headers` only apply to a `url` server".to_owned()));
            }
            let cwd = base.join(entry.cwd.unwrap_or_default());
            // With `args`, a string `command` is the program itself (as other MCP client
            // configurations have it); alone, it is a shell line like a command tool's.
            let (program, args) = match command {
                Command::Shell(program) if !entry.args.is_empty() => (program, entry.args),
                command => {
                    let (program, mut args) = command.split().map_err(fail)?;
                    args.extend(entry.args);
                    (program, args)
                }
            };
            let program = resolve_program(&program, &cwd)
                .ok_or_else(|| fail(format!("command `{program}` was not found")))?;
            McpTransport::Stdio {
                program,
                args,
                env: entry.env,
                cwd,
            }
        }
        (None, Some(url)) => {
            if !entry.env.is_empty() || entry.cwd.is_some() || !entry.args.is_empty() {
                return Err(fail(
                    "`args`, `env` and `cwd` only apply to a `command` server".to_owned(),
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(fail(format!(
                    "`url` must be http:// or https://, got `{url}`"
                )));
            }
            McpTransport::Http {
                url,
                headers: entry.headers,
            }
        }
    };
    Ok(McpServerConfig {
        name: entry.name,
        transport,
        enabled_tools: entry.enabled_tools,
        disabled_tools: entry.disabled_tools,
        startup_timeout: Duration::from_millis(
            entry
                .startup_timeout_ms
                .unwrap_or(DEFAULT_STARTUP_TIMEOUT_MS),
        ),
        call_timeout: Duration::from_millis(
            entry.call_timeout_ms.unwrap_or(DEFAULT_CALL_TIMEOUT_MS),
        ),
    })
}

/// A toml error as "line L, column C: message" (the message names the field).
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Finds a program the way a shell would: a path with a slash relative to `cwd`, else
/// `PATH`.
fn resolve_program(program: &str, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    // Absolute, because the child starts in `cwd`, where a relative path would be
    // looked up again.
    if program.contains('/') {
        let path = std::path::absolute(cwd.join(program)).ok()?;
        return executable(&path).then_some(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| executable(path))
        .and_then(|path| std::path::absolute(path).ok())
}

/// The last `STDERR_TAIL_BYTES` of a command's stderr, trimmed.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let mut start = text.len().saturating_sub(STDERR_TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

async fn run_command(
    name: &str,
    program: &Path,
    args: &[String],
    cwd: &Path,
    timeout: Duration,
    input: Option<Value>,
    cancel: &CancellationToken,
) -> Result<Value, String> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            format!(
                "tool `{name}` could not start {}: {error}",
                program.display()
            )
        })?;
    // The input is written while the output is read, under the same timeout: a command
    // that answers as it reads (`cat`) fills its stdout pipe long before a large input is
    // written, and writing first would wait for it forever.
    let stdin = child.stdin.take();
    let input = input.map(|value| value.to_string()).unwrap_or_default();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input is fine.
            let _ = stdin.write_all(input.as_bytes()).await;
        } // Dropped here: the command sees the end of its input.
    };
    let run = async move { tokio::join!(feed, child.wait_with_output()).1 };
    let output = tokio::select! {
        output = tokio::time::timeout(timeout, run) => output,
        () = cancel.cancelled() => return Err(format!("tool `{name}` was cancelled")),
    };
    let output = match output {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("tool `{name}` failed: {error}")),
        Err(_) => {
            return Err(format!(
                "tool `{name}` timed out after {} ms",
                timeout.as_millis()
            ));
        }
    };
    if !output.status.success() {
        let tail = stderr_tail(&output.stderr);
        let status = output.status.code().map_or_else(
            || "was killed".to_owned(),
            |code| format!("exited with status {code}"),
        );
        return Err(if tail.is_empty() {
            format!("tool `{name}` {status}")
        } else {
            format!("tool `{name}` {status}: {tail}")
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    // JSON output (escaped lone surrogate halves become U+FFFD, as everywhere), else the
    // text itself.
    Ok(code_mode_protocol::model::parse_json(stdout.trim())
        .unwrap_or_else(|_| Value::String(stdout.trim_end_matches(['\n', '\r']).to_owned())))
}

fn string_field<'v>(input: &'v Value, field: &str) -> Result<&'v str, String> {
    input
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{field}` (a string) is required"))
}

async fn read_file(input: &Value) -> Result<Value, String> {
    let path = string_field(input, "path")?;
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|error| format!("cannot read {path}: {error}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let offset = input.get("offset").and_then(Value::as_u64);
    let limit = input.get("limit").and_then(Value::as_u64);
    if offset.is_none() && limit.is_none() {
        if text.len() > READ_FILE_MAX_BYTES {
            return Err(format!(
                "{path} has {} bytes, more than {READ_FILE_MAX_BYTES}; read it in parts with `offset` and `limit` (lines)",
                text.len()
            ));
        }
        return Ok(Value::String(text.into_owned()));
    }
    let lines = text
        .lines()
        .skip(usize::try_from(offset.unwrap_or(0)).unwrap_or(usize::MAX))
        .take(usize::try_from(limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX));
    Ok(Value::String(lines.collect::<Vec<_>>().join("\n")))
}

async fn list_dir(input: &Value) -> Result<Value, String> {
    let path = string_field(input, "path")?;
    let mut entries = tokio::fs::read_dir(path)
        .await
        .map_err(|error| format!("cannot list {path}: {error}"))?;
    let mut listed = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|error| format!("cannot list {path}: {error}"))?
    {
        let kind = match entry.file_type().await {
            Ok(kind) if kind.is_symlink() => "symlink",
            Ok(kind) if kind.is_dir() => "dir",
            Ok(kind) if kind.is_file() => "file",
            _ => "other",
        };
        let size = entry.metadata().await.map(|meta| meta.len()).unwrap_or(0);
        listed.push(json!({
            "name": entry.file_name().to_string_lossy(),
            "type": kind,
            "size": size,
        }));
    }
    listed.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Value::Array(listed))
}

async fn write_file(input: &Value) -> Result<Value, String> {
    let path = string_field(input, "path")?;
    let content = string_field(input, "content")?;
    tokio::fs::write(path, content)
        .await
        .map_err(|error| format!("cannot write {path}: {error}"))?;
    Ok(json!({ "bytes_written": content.len() }))
}

async fn exec_command(input: &Value, cancel: &CancellationToken) -> Result<Value, String> {
    let command = string_field(input, "command")?;
    let cwd = input.get("cwd").and_then(Value::as_str).unwrap_or(".");
    let timeout = Duration::from_millis(
        input
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_TOOL_TIMEOUT_MS),
    );
    let child = tokio::process::Command::new("sh")
        .args(["-c", command])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot run the command in {cwd}: {error}"))?;
    let output = tokio::select! {
        output = tokio::time::timeout(timeout, child.wait_with_output()) => output,
        () = cancel.cancelled() => return Err("exec_command was cancelled".to_owned()),
    };
    match output {
        Ok(Ok(output)) => Ok(json!({
            "exit_code": output.status.code(),
            "stdout": String::from_utf8_lossy(&output.stdout),
            "stderr": String::from_utf8_lossy(&output.stderr),
        })),
        Ok(Err(error)) => Err(format!("the command failed: {error}")),
        Err(_) => Err(format!(
            "the command timed out after {} ms",
            timeout.as_millis()
        )),
    }
}

/// What the CLI does with a notification.
pub type NotificationSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The delegate of CLI sessions: runs the tool set, hands notifications to a sink.
pub struct CliDelegate {
    tools: ToolSet,
    notifications: NotificationSink,
}

impl CliDelegate {
    pub fn new(tools: ToolSet, notifications: NotificationSink) -> Self {
        Self {
            tools,
            notifications,
        }
    }
}

impl CodeModeSessionDelegate for CliDelegate {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move {
            tracing::debug!(tool = %call.tool_name, cell = %call.cell_id, "tool call");
            self.tools.call(&call.tool_name, call.input, &cancel).await
        })
    }

    fn notify(
        &self,
        cell_id: String,
        text: String,
        _cancel: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async move { (self.notifications)(&cell_id, &text) })
    }

    fn cell_closed(&self, cell_id: &str) {
        tracing::debug!(cell = cell_id, "cell closed");
    }
}
