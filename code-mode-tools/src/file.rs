//! The tools file's format (`[[tool]]`, `[[mcp_server]]`, `[builtin.shell]`) and its
//! errors' wording: what [`crate::ToolSet::parse`] reads, checks and turns into tools and
//! MCP server settings.

use crate::environment::ToolEnv;
use crate::mcp::{
    DEFAULT_CALL_TIMEOUT_MS, DEFAULT_STARTUP_TIMEOUT_MS, McpServerConfig, McpTransport,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ToolsFile {
    #[serde(default)]
    pub(super) tool: Vec<ToolEntry>,
    #[serde(default)]
    pub(super) mcp_server: Vec<McpServerEntry>,
    #[serde(default)]
    pub(super) builtin: BuiltinSettings,
}

/// `[builtin.*]`: settings of the built-in tool sets, which apply when they are turned on
/// (`--builtin shell`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BuiltinSettings {
    pub(super) shell: Option<ShellSettings>,
}

/// `[builtin.shell]`: the environment of `exec_command`'s commands beyond the inherited
/// few, as a `[[tool]]` has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShellSettings {
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) env_vars: Vec<String>,
}

/// A `[[mcp_server]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct McpServerEntry {
    pub(super) name: String,
    pub(super) command: Option<Command>,
    /// Appended to `command`, as MCP client configurations elsewhere spell it.
    #[serde(default)]
    pub(super) args: Vec<String>,
    pub(super) url: Option<String>,
    /// Variables set for a stdio server, beyond the few inherited (`environment`).
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    /// Variables a stdio server takes from ours by name.
    #[serde(default)]
    pub(super) env_vars: Vec<String>,
    pub(super) cwd: Option<PathBuf>,
    pub(super) enabled_tools: Option<Vec<String>>,
    #[serde(default)]
    pub(super) disabled_tools: Vec<String>,
    pub(super) startup_timeout_ms: Option<u64>,
    pub(super) call_timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    /// Every tool of the server is deferred: found with `tools.tool_search`.
    #[serde(default)]
    pub(super) deferred: bool,
    /// What happens to a call of its tools cut short by a restart of the serving process.
    #[serde(default)]
    pub(super) on_interrupt: crate::OnInterrupt,
    /// Whether a call of its tools waits on a person's approval before it runs.
    #[serde(default)]
    pub(super) approval: crate::ApprovalPolicy,
    /// Why, as the approver and the model read it.
    #[serde(default)]
    pub(super) approval_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ToolEntry {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    pub(super) command: Command,
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) cwd: Option<PathBuf>,
    /// Variables set for the command, beyond the few inherited (`environment`).
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    /// Variables the command takes from ours by name.
    #[serde(default)]
    pub(super) env_vars: Vec<String>,
    #[serde(default)]
    pub(super) kind: Option<KindName>,
    #[serde(default)]
    pub(super) input_schema: Option<toml::Value>,
    #[serde(default)]
    pub(super) output_schema: Option<toml::Value>,
    /// Left out of the exec description: found with `tools.tool_search`.
    #[serde(default)]
    pub(super) deferred: bool,
    /// What happens to a call cut short by a restart of the serving process.
    #[serde(default)]
    pub(super) on_interrupt: crate::OnInterrupt,
    /// Whether a call waits on a person's approval before it runs.
    #[serde(default)]
    pub(super) approval: crate::ApprovalPolicy,
    /// Why, as the approver and the model read it.
    #[serde(default)]
    pub(super) approval_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum KindName {
    Function,
    Freeform,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    /// The program and its arguments; a string runs through `sh -c`.
    pub(super) fn split(&self) -> Result<(String, Vec<String>), String> {
        match self {
            Command::Shell(line) => Ok(("sh".to_owned(), vec!["-c".to_owned(), line.clone()])),
            Command::Argv(argv) => match argv.split_first() {
                Some((program, args)) => Ok((program.clone(), args.to_vec())),
                None => Err("`command` must not be empty".to_owned()),
            },
        }
    }
}

/// Checks an `env` table and an `env_vars` list: names a process can be given (not empty,
/// no `=` and no NUL), values without NUL.
pub(super) fn tool_env(
    env: BTreeMap<String, String>,
    env_vars: Vec<String>,
) -> Result<ToolEnv, String> {
    for name in env.keys().chain(&env_vars) {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!(
                "`{}` is not a variable name (empty, or with `=` or NUL)",
                name.escape_debug()
            ));
        }
    }
    if let Some((name, _)) = env.iter().find(|(_, value)| value.contains('\0')) {
        return Err(format!("`env`: the value of `{name}` has a NUL"));
    }
    Ok(ToolEnv {
        set: env,
        pass: env_vars,
    })
}

/// Checks an `[[mcp_server]]` entry; an error is the server's name and what is wrong.
pub(super) fn mcp_server_config(
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
            McpTransport::Stdio {
                program,
                args,
                env: tool_env(entry.env, entry.env_vars).map_err(fail)?,
                cwd,
            }
        }
        (None, Some(url)) => {
            if !entry.env.is_empty()
                || !entry.env_vars.is_empty()
                || entry.cwd.is_some()
                || !entry.args.is_empty()
            {
                return Err(fail(
                    "`args`, `env`, `env_vars` and `cwd` only apply to a `command` server"
                        .to_owned(),
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
        deferred: entry.deferred,
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
pub(super) fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
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

pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
