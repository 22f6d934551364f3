//! The two model-facing tools: `exec` (freeform: raw JavaScript) and `wait` (a JSON
//! function tool), as tool specs an agent core hands to its model API, and the parser of
//! `wait`'s arguments.

use super::describe::{Catalog, ToolDescription, exec_description_of};
use code_mode_protocol::ids::CellId;
use code_mode_protocol::session::DEFAULT_YIELD_TIME_MS;
use serde_json::{Value, json};

/// The name of the tool that runs a cell.
pub const EXEC_TOOL_NAME: &str = "exec";

/// The name of the tool that observes or terminates a running cell.
pub const WAIT_TOOL_NAME: &str = "wait";

/// Default `max_tokens` of a `wait` call.
pub const DEFAULT_WAIT_MAX_TOKENS: u64 = 10_000;

const WAIT_DESCRIPTION: &str = "Waits on a script started by `exec` that is still running (its result named a cell ID). Returns only the output produced since the last call, or the final result. With `terminate: true`, stops the script and returns what it produced and had not returned yet.";

/// A tool as a model API declares it.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolSpec {
    /// A freeform tool: the model sends raw text.
    Freeform { name: String, description: String },
    /// A JSON function tool with a JSON Schema for its arguments.
    Function {
        name: String,
        description: String,
        parameters: Value,
    },
}

impl ToolSpec {
    pub fn name(&self) -> &str {
        match self {
            ToolSpec::Freeform { name, .. } | ToolSpec::Function { name, .. } => name,
        }
    }

    /// The usual JSON form: `{"type": "custom", ...}` for freeform tools,
    /// `{"type": "function", ..., "parameters": {...}}` for function tools.
    pub fn to_json(&self) -> Value {
        match self {
            ToolSpec::Freeform { name, description } => json!({
                "type": "custom",
                "name": name,
                "description": description,
            }),
            ToolSpec::Function {
                name,
                description,
                parameters,
            } => json!({
                "type": "function",
                "name": name,
                "description": description,
                "strict": false,
                "parameters": parameters,
            }),
        }
    }
}

/// The `exec` tool, its description built from the enabled tools.
pub fn exec_tool_spec(tools: &[ToolDescription]) -> ToolSpec {
    exec_tool_spec_of(Catalog::of(tools))
}

/// The `exec` tool, its description naming the tool sources that are down.
pub fn exec_tool_spec_of(catalog: Catalog<'_>) -> ToolSpec {
    ToolSpec::Freeform {
        name: EXEC_TOOL_NAME.to_owned(),
        description: exec_description_of(catalog),
    }
}

/// The `wait` tool.
pub fn wait_tool_spec() -> ToolSpec {
    ToolSpec::Function {
        name: WAIT_TOOL_NAME.to_owned(),
        description: WAIT_DESCRIPTION.to_owned(),
        parameters: json!({
            "type": "object",
            "properties": {
                "cell_id": {
                    "type": "string",
                    "description": "The cell ID an earlier result named."
                },
                "yield_time_ms": {
                    "type": "number",
                    "description": format!("How long to wait for output before returning, in milliseconds (default {DEFAULT_YIELD_TIME_MS}).")
                },
                "max_tokens": {
                    "type": "number",
                    "description": format!("The most output to return, in tokens (default {DEFAULT_WAIT_MAX_TOKENS}).")
                },
                "terminate": {
                    "type": "boolean",
                    "description": "Stop the script and return what it produced and had not returned yet."
                }
            },
            "required": ["cell_id"],
            "additionalProperties": false
        }),
    }
}

/// `wait`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitArguments {
    pub cell_id: CellId,
    pub yield_time_ms: u64,
    pub max_tokens: u64,
    pub terminate: bool,
}

/// Why `wait`'s arguments were refused; the text is shown to the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitArgumentsError {
    #[error("wait expects a JSON object: {0}")]
    NotJson(String),
    #[error("wait expects a JSON object")]
    NotAnObject,
    #[error("wait `cell_id` must be a string")]
    CellIdNotAString,
    #[error("wait `{0}` must be a non-negative number")]
    NotANonNegativeNumber(String),
    #[error("wait `terminate` must be a boolean")]
    TerminateNotABoolean,
    #[error("wait does not support `{0}`")]
    Unsupported(String),
    #[error("wait requires `cell_id`")]
    MissingCellId,
}

/// Parses `wait`'s JSON arguments.
pub fn parse_wait_arguments(arguments: &str) -> Result<WaitArguments, WaitArgumentsError> {
    let value: Value = serde_json::from_str(arguments)
        .map_err(|error| WaitArgumentsError::NotJson(error.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(WaitArgumentsError::NotAnObject);
    };
    let mut parsed = WaitArguments {
        cell_id: CellId::parse(""),
        yield_time_ms: DEFAULT_YIELD_TIME_MS,
        max_tokens: DEFAULT_WAIT_MAX_TOKENS,
        terminate: false,
    };
    let mut has_cell_id = false;
    for (key, value) in &fields {
        match key.as_str() {
            "cell_id" => {
                parsed.cell_id =
                    CellId::parse(value.as_str().ok_or(WaitArgumentsError::CellIdNotAString)?);
                has_cell_id = true;
            }
            "yield_time_ms" => parsed.yield_time_ms = non_negative(value, key)?,
            "max_tokens" => parsed.max_tokens = non_negative(value, key)?,
            "terminate" => {
                parsed.terminate = value
                    .as_bool()
                    .ok_or(WaitArgumentsError::TerminateNotABoolean)?;
            }
            other => return Err(WaitArgumentsError::Unsupported(other.to_owned())),
        }
    }
    if !has_cell_id {
        return Err(WaitArgumentsError::MissingCellId);
    }
    Ok(parsed)
}

/// A non-negative number, rounded down to whole units.
fn non_negative(value: &Value, key: &str) -> Result<u64, WaitArgumentsError> {
    value
        .as_f64()
        .filter(|number| number.is_finite() && *number >= 0.0)
        .map(|number| number as u64)
        .ok_or_else(|| WaitArgumentsError::NotANonNegativeNumber(key.to_owned()))
}
