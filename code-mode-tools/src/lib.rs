//! Tool sources beyond an agent core's own code, for every front end that offers them (the
//! `code-mode` CLI and the Python package): tools defined in a TOML file (each runs a
//! command with the JSON input on stdin), the opt-in built-ins (`fs`: `read_file`,
//! `list_dir`, `write_file`; `shell`: `exec_command`), and the tools of MCP servers
//! (`[[mcp_server]]`, see [`mcp`]). Also the delegate that runs them. Its parts: `file`
//! reads the tools file, `command` runs command tools, `builtins` are the built-ins, [`mcp`]
//! the MCP servers (with `line_cap`, the bound on a server's lines), [`program`] finds a
//! program to run and [`environment`] says what environment it starts with; this module
//! holds the set every front end uses and the delegate. It never links V8.
//!
//! Nothing secret of ours reaches a tool: a command tool, an MCP stdio server and the
//! `shell` built-in's commands start with only the few variables of
//! [`environment::INHERITED`] that we have (`PATH`, `HOME`, the locale, ...), plus what the
//! tools file names for them: `env` (values) and `env_vars` (names taken from ours).
//!
//! A tools file:
//! ```toml
//! [[tool]]
//! name = "count_lines"
//! description = "Counts the lines of files."
//! command = ["python3", "count_lines.py"]   # or a string, run with `sh -c`
//! timeout_ms = 30000                        # optional
//! cwd = "."                                 # optional, relative to the tools file
//! env = { LOG_LEVEL = "info" }              # optional: set for it
//! env_vars = ["GITHUB_TOKEN"]               # optional: passed from ours by name
//! kind = "function"                         # optional: "function" or "freeform"
//! deferred = true                           # optional: found with tools.tool_search
//! on_interrupt = "retry"                    # optional: "fail" (default) or "retry"
//! approval = "always"                       # optional: "never" (default) or "always":
//! approval_reason = "it sends mail"         #   each call waits on a person (a state store)
//! [tool.input_schema]                       # optional JSON Schema, as a TOML table
//! type = "object"
//!
//! [[mcp_server]]
//! name = "fs"                                  # tools.mcp__fs__<tool>
//! command = ["npx", "server-filesystem", "."]  # stdio; or: url = "http://127.0.0.1:3001/mcp"
//! # optional: env = { KEY = "v" }, env_vars = ["NAME"], cwd, enabled_tools = [...],
//! #           disabled_tools = [...],
//! #           startup_timeout_ms, call_timeout_ms, headers = { ... } (with url),
//! #           deferred = true (every tool of the server: found with tools.tool_search),
//! #           on_interrupt = "retry" (every tool of the server),
//! #           approval = "always", approval_reason = "..." (every tool of the server)
//!
//! [builtin.shell]                          # optional: for `--builtin shell`'s commands
//! env = { PAGER = "cat" }
//! env_vars = ["GITHUB_TOKEN"]
//! ```

mod builtins;
mod command;
pub mod environment;
mod file;
mod line_cap;
pub mod mcp;
pub mod program;

use crate::mcp::{McpServerConfig, McpSources};
use crate::program::resolve_program;
use builtins::{exec_command, list_dir, read_file, write_file};
use code_mode_protocol::{
    ApprovalNeed, BoxFuture, CellId, CodeModeSessionDelegate, JsonText, NestedToolCall,
    ToolDefinition, ToolError, ToolKind, js_tool_name,
};
use code_mode_surface::{ToolDescription, UnavailableSource};
use command::{CommandTool, run_command};
use environment::ToolEnv;
use file::{
    KindName, ToolEntry, ToolsFile, describe_toml_error, mcp_server_config, one_line, tool_env,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What happens to a call of a tool that a restart of the serving process cut short
/// (`--state-dir`): it may have had its effect, and no one knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInterrupt {
    /// The call fails with a text that says it may have run (the default).
    #[default]
    Fail,
    /// The call runs again (for a tool that may run twice, e.g. one that only reads).
    Retry,
}

/// Whether a tool's calls wait on a person's approval before they run (issue 86): only
/// where the front keeps approvals (`--state-dir` or `--state-url`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalPolicy {
    /// The call runs at once (the default).
    #[default]
    Never,
    /// Every call waits until a person approves it (or denies it).
    Always,
}

/// Whether `entry` names an MCP server's tools (`mcp__<server>__`) and `name` is one.
fn server_prefix_of(entry: &str, name: &str) -> bool {
    entry.ends_with("__")
        && entry.starts_with(crate::mcp::MCP_TOOL_PREFIX)
        && name.starts_with(entry)
}

/// Default timeout of a command tool, in milliseconds.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 30_000;

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

/// How a tool is implemented.
#[derive(Debug, Clone)]
enum Implementation {
    Command(CommandTool),
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
    /// Tools (and MCP servers, by namespace prefix) whose calls run again after a restart.
    retried: HashSet<String>,
    /// Tools (and MCP servers, by namespace prefix) whose calls wait on a person, with the
    /// reason given.
    approved: HashMap<String, Option<String>>,
    order: Vec<String>,
    /// The `[[mcp_server]]` entries, until [`ToolSet::start`] starts them.
    mcp_configs: Vec<McpServerConfig>,
    mcp: Option<Arc<McpSources>>,
    /// The environment of the `shell` built-in's commands (`[builtin.shell]`).
    shell_env: ToolEnv,
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
            self.add_command_tool(entry, path, &base)?;
        }
        for entry in parsed.mcp_server {
            let prefix = format!("{}{}__", crate::mcp::MCP_TOOL_PREFIX, entry.name);
            if entry.on_interrupt == OnInterrupt::Retry {
                self.retried.insert(prefix.clone());
            }
            if entry.approval == ApprovalPolicy::Always {
                self.approved.insert(prefix, entry.approval_reason.clone());
            }
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
        if let Some(shell) = parsed.builtin.shell {
            self.shell_env =
                tool_env(shell.env, shell.env_vars).map_err(|message| ToolsError::Parse {
                    path: path.to_path_buf(),
                    message: format!("[builtin.shell]: {message}"),
                })?;
        }
        Ok(())
    }

    /// Checks a `[[tool]]` entry (`path` is the tools file, `base` its directory) and adds
    /// it.
    fn add_command_tool(
        &mut self,
        mut entry: ToolEntry,
        path: &Path,
        base: &Path,
    ) -> Result<(), ToolsError> {
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
        let env = tool_env(
            std::mem::take(&mut entry.env),
            std::mem::take(&mut entry.env_vars),
        )
        .map_err(tool_error)?;
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
            deferred: entry.deferred,
            ..ToolDescription::default()
        };
        if entry.name.starts_with(crate::mcp::MCP_TOOL_PREFIX) {
            return Err(tool_error(format!(
                "names starting with `{}` belong to MCP servers",
                crate::mcp::MCP_TOOL_PREFIX
            )));
        }
        if entry.on_interrupt == OnInterrupt::Retry {
            self.retried.insert(entry.name.clone());
        }
        if entry.approval == ApprovalPolicy::Always {
            self.approved
                .insert(entry.name.clone(), entry.approval_reason.clone());
        }
        let implementation = Implementation::Command(CommandTool {
            program,
            args,
            cwd,
            timeout: Duration::from_millis(entry.timeout_ms.unwrap_or(DEFAULT_TOOL_TIMEOUT_MS)),
            env,
        });
        self.insert(
            entry.name,
            Tool {
                description,
                implementation,
            },
        );
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

    /// The tool sources that are down now (MCP servers whose last start failed), for the
    /// exec description.
    pub fn unavailable(&self) -> Vec<UnavailableSource> {
        self.mcp
            .as_ref()
            .map(|mcp| mcp.unavailable())
            .unwrap_or_default()
    }

    /// Waits for MCP tool lists that changed to be listed again: call before taking the
    /// descriptions or definitions for a cell.
    pub async fn settled(&self) {
        if let Some(mcp) = &self.mcp {
            mcp.settled().await;
        }
    }

    /// The tools as a cell enables them (each description followed by its declaration,
    /// deferred ones flagged).
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.descriptions()
            .iter()
            .map(ToolDescription::definition)
            .collect()
    }

    /// What happens to a call of tool `name` cut short by a restart.
    pub fn on_interrupt(&self, name: &str) -> OnInterrupt {
        let retried = self.retried.contains(name)
            || self
                .retried
                .iter()
                .any(|entry| server_prefix_of(entry, name));
        if retried {
            OnInterrupt::Retry
        } else {
            OnInterrupt::Fail
        }
    }

    /// Whether a call of tool `name` waits on a person's approval, and why.
    pub fn approval(&self, name: &str) -> Option<ApprovalNeed> {
        let reason = self.approved.get(name).or_else(|| {
            self.approved
                .iter()
                .find(|(entry, _)| server_prefix_of(entry, name))
                .map(|(_, reason)| reason)
        })?;
        Some(ApprovalNeed {
            reason: reason.clone(),
        })
    }

    /// Whether any tool's calls wait on a person (the front then needs a state store).
    pub fn needs_approvals(&self) -> bool {
        !self.approved.is_empty()
    }

    /// Whether `name` is one of these tools (an MCP tool only while its server lists it).
    pub fn has(&self, name: &str) -> bool {
        self.tools.contains_key(name)
            || self
                .mcp
                .as_ref()
                .is_some_and(|mcp| mcp.lookup(name).is_some())
    }

    /// Answers a session's nested tool call with this set, once `before` (a front end's
    /// state write, when it keeps one) succeeded: a call it could not write is not made,
    /// and the cell's promise rejects with why.
    pub fn answer_after<'a>(
        &'a self,
        before: Option<&'a BeforeCall>,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<JsonText, ToolError>> {
        let Some(before) = before else {
            return self.answer(call, cancel);
        };
        Box::pin(async move {
            tokio::select! {
                written = before() => {
                    if let Err(error) = written {
                        return Err(ToolError::new(code_mode_protocol::texts::state_unwritten(
                            "the call was not made",
                            &error,
                        )));
                    }
                }
                () = cancel.cancelled() => return Err(ToolError::cancelled()),
            }
            self.answer(call, cancel).await
        })
    }

    /// Answers a session's nested tool call with this set (the delegate method of every
    /// front end that runs its own tools).
    pub fn answer(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        call.answer_with(|call| async move {
            tracing::debug!(
                tool = %call.tool_name,
                cell = %call.cell_id,
                exec_call = call.exec_call_id.as_deref().unwrap_or("-"),
                "tool call"
            );
            self.call(&call.tool_name, call.input, &cancel).await
        })
    }

    /// Runs a tool call; its error is what the cell's promise rejects with.
    pub async fn call(
        &self,
        name: &str,
        input: Option<Value>,
        cancel: &CancellationToken,
    ) -> Result<Value, ToolError> {
        self.run(name, input, cancel).await.map_err(ToolError::new)
    }

    async fn run(
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
            Implementation::Command(command) => run_command(name, command, input, cancel).await,
            Implementation::ReadFile => read_file(&input.unwrap_or(Value::Null)).await,
            Implementation::ListDir => list_dir(&input.unwrap_or(Value::Null)).await,
            Implementation::WriteFile => write_file(&input.unwrap_or(Value::Null)).await,
            Implementation::ExecCommand => {
                exec_command(&input.unwrap_or(Value::Null), &self.shell_env, cancel).await
            }
        }
    }
}

/// What a front end does with a cell's notification (cell id, text); the session waits
/// for the future, so a notification is delivered before the cell's completion is.
pub type NotificationSink = Arc<dyn Fn(CellId, String) -> BoxFuture<'static, ()> + Send + Sync>;

/// A sink that handles each notification at once, with nothing to wait for.
pub fn sink_now(handle: impl Fn(&str) + Send + Sync + 'static) -> NotificationSink {
    Arc::new(move |_, text| {
        handle(&text);
        Box::pin(std::future::ready(()))
    })
}

/// What a front end that keeps its sessions in a state store does before one of its own
/// tools runs: it writes the session, whose journal then holds the call, so that after a
/// restart the call is known to have been made and is never made again by the rebuilt
/// cell. An error (its text) means the call must not be made.
pub type BeforeCall = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Told each answer of the set's tools (its cell, its call, the result) just before the
/// cell gets it: a front that keeps sessions queues the answer's record there, so that a
/// cell that finishes on it keeps its output through a crash.
pub type AfterAnswer =
    Arc<dyn Fn(&CellId, code_mode_protocol::CallId, &Result<JsonText, ToolError>) + Send + Sync>;

/// The delegate of the CLI's sessions (`run`, `repl`, `mcp`): runs the tool set (after
/// its [`BeforeCall`], if it has one, and telling its [`AfterAnswer`]), hands
/// notifications to a sink.
pub struct CliDelegate {
    tools: ToolSet,
    notifications: NotificationSink,
    before_call: Option<BeforeCall>,
    after_answer: Option<AfterAnswer>,
}

impl CliDelegate {
    pub fn new(tools: ToolSet, notifications: NotificationSink) -> Self {
        Self {
            tools,
            notifications,
            before_call: None,
            after_answer: None,
        }
    }

    /// Runs `before` before each tool call (a state write).
    #[must_use]
    pub fn with_before_call(mut self, before: Option<BeforeCall>) -> Self {
        self.before_call = before;
        self
    }

    /// Tells `after` each answer before its cell gets it (a state record).
    #[must_use]
    pub fn with_after_answer(mut self, after: Option<AfterAnswer>) -> Self {
        self.after_answer = after;
        self
    }
}

impl CodeModeSessionDelegate for CliDelegate {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        let Some(after) = &self.after_answer else {
            return self
                .tools
                .answer_after(self.before_call.as_ref(), call, cancel);
        };
        let (cell_id, call_id) = (call.cell_id.clone(), call.call_id);
        Box::pin(async move {
            let result = self
                .tools
                .answer_after(self.before_call.as_ref(), call, cancel)
                .await;
            after(&cell_id, call_id, &result);
            result
        })
    }

    fn notify(
        &self,
        cell_id: CellId,
        text: String,
        _cancel: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        (self.notifications)(cell_id, text)
    }

    fn approval(&self, call: &NestedToolCall) -> Option<ApprovalNeed> {
        self.tools.approval(&call.tool_name)
    }

    fn cell_closed(&self, cell_id: &CellId) {
        tracing::debug!(cell = %cell_id, "cell closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools_file(text: &str) -> Result<ToolSet, ToolsError> {
        let dir = std::env::temp_dir().join(format!(
            "code-mode-tools-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("tools.toml");
        std::fs::write(&path, text).expect("written");
        let parsed = ToolSet::parse(Some(&path), &[]);
        let _ = std::fs::remove_dir_all(&dir);
        parsed
    }

    #[test]
    fn on_interrupt_says_which_tools_and_servers_run_again_after_a_restart() {
        let set = tools_file(
            "[[tool]]\nname = \"reader\"\ncommand = \"true\"\non_interrupt = \"retry\"\n\n\
             [[tool]]\nname = \"writer\"\ncommand = \"true\"\n\n\
             [[tool]]\nname = \"careful\"\ncommand = \"true\"\non_interrupt = \"fail\"\n\n\
             [[mcp_server]]\nname = \"docs\"\ncommand = \"true\"\non_interrupt = \"retry\"\n\n\
             [[mcp_server]]\nname = \"docsx\"\ncommand = \"true\"\n",
        )
        .expect("parses");
        assert_eq!(set.on_interrupt("reader"), OnInterrupt::Retry);
        assert_eq!(set.on_interrupt("writer"), OnInterrupt::Fail);
        assert_eq!(set.on_interrupt("careful"), OnInterrupt::Fail);
        assert_eq!(set.on_interrupt("mcp__docs__search"), OnInterrupt::Retry);
        assert_eq!(set.on_interrupt("mcp__docsx__search"), OnInterrupt::Fail);
        let error = tools_file(
            "[[tool]]\nname = \"t\"\ncommand = \"true\"\non_interrupt = \"sometimes\"\n",
        )
        .err()
        .expect("refused");
        assert!(error.to_string().contains("sometimes"), "{error}");
    }

    #[test]
    fn approval_says_which_tools_and_servers_wait_on_a_person_and_why() {
        let set = tools_file(
            "[[tool]]\nname = \"send\"\ncommand = \"true\"\napproval = \"always\"\napproval_reason = \"it sends mail\"\n\n\
             [[tool]]\nname = \"pay\"\ncommand = \"true\"\napproval = \"always\"\n\n\
             [[tool]]\nname = \"read\"\ncommand = \"true\"\napproval = \"never\"\n\n\
             [[mcp_server]]\nname = \"bank\"\ncommand = \"true\"\napproval = \"always\"\n\n\
             [[mcp_server]]\nname = \"bankx\"\ncommand = \"true\"\n",
        )
        .expect("parses");
        assert!(set.needs_approvals());
        assert_eq!(
            set.approval("send"),
            Some(ApprovalNeed::because("it sends mail"))
        );
        assert_eq!(set.approval("pay"), Some(ApprovalNeed::required()));
        assert_eq!(set.approval("read"), None);
        assert_eq!(
            set.approval("mcp__bank__transfer"),
            Some(ApprovalNeed::required())
        );
        assert_eq!(set.approval("mcp__bankx__transfer"), None);
        let error =
            tools_file("[[tool]]\nname = \"t\"\ncommand = \"true\"\napproval = \"maybe\"\n")
                .err()
                .expect("refused");
        assert!(error.to_string().contains("maybe"), "{error}");
        let none = tools_file("[[tool]]\nname = \"t\"\ncommand = \"true\"\n").expect("parses");
        assert!(!none.needs_approvals());
    }
}
