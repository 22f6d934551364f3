//! What a client sends on Codex's JSON protocol, as types: every frame is read into one of
//! these through `serde_path_to_error`, so a missing or mistyped field is refused with its
//! path (an `operation/response` error for an operation) instead of read as a default.
//! Field names are the protocol's: camelCase at the operation level, snake_case in the
//! bodies Codex copies from its own request types.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A frame after the handshake.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub(super) enum Incoming {
    /// An operation; its `request` is read on its own ([`Operation::read`]), so that a
    /// malformed one is answered with its id.
    #[serde(rename = "operation/request")]
    Request { id: u64, request: Value },
    #[serde(rename = "operation/yield")]
    Yield { id: u64 },
    #[serde(rename = "operation/cancel")]
    Cancel { id: u64 },
    #[serde(rename = "delegate/response")]
    DelegateResponse { id: u64, result: DelegateResult },
}

/// `connection/hello`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Hello {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub supported_versions: Vec<u64>,
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    #[serde(default)]
    pub optional_capabilities: Vec<String>,
}

/// The client's answer to a `delegate/request`.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub(super) enum DelegateResult {
    /// `{"status":"ok","value":{"type":"tool/result","result":<json>}}` (a notification's
    /// answer has no `result`).
    Ok { value: DelegateValue },
    /// `{"status":"error","message":...}`.
    Error { message: String },
}

#[derive(Debug, Deserialize)]
pub(super) struct DelegateValue {
    #[serde(default)]
    pub result: Value,
}

/// One operation, by its `method`.
#[derive(Debug)]
pub(super) enum Operation {
    Open(Open),
    Execute(Execute),
    Wait(Wait),
    Terminate(Terminate),
    Shutdown(Shutdown),
}

/// `session/open`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Open {
    pub session_id: String,
    #[serde(default)]
    pub output_truncation: Option<String>,
    #[serde(default)]
    pub cell_execution_limits: Option<Limits>,
}

/// `session/execute`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Execute {
    pub session_id: String,
    pub request: ExecuteBody,
}

/// `session/wait`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Wait {
    pub session_id: String,
    pub request: WaitBody,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
}

/// `session/terminate`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Terminate {
    pub session_id: String,
    pub cell_id: String,
}

/// `session/shutdown`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Shutdown {
    pub session_id: String,
}

/// Why an operation could not be read: its method is unknown, or a field is missing or of
/// the wrong type (named by its path).
#[derive(Debug, thiserror::Error)]
pub(super) enum BadOperation {
    #[error("unknown code-mode method `{0}`")]
    UnknownMethod(String),
    #[error("invalid {method} request: {error}")]
    Invalid {
        method: &'static str,
        error: serde_path_to_error::Error<serde_json::Error>,
    },
}

/// Reads the fields of `method` from `request`.
fn fields<T: DeserializeOwned>(method: &'static str, request: Value) -> Result<T, BadOperation> {
    serde_path_to_error::deserialize(request)
        .map_err(|error| BadOperation::Invalid { method, error })
}

impl Operation {
    /// Reads an operation's `request` (its `method` and that method's fields).
    pub(super) fn read(request: Value) -> Result<Self, BadOperation> {
        let method = request
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(match method {
            "session/open" => Operation::Open(fields("session/open", request)?),
            "session/execute" => Operation::Execute(fields("session/execute", request)?),
            "session/wait" => Operation::Wait(fields("session/wait", request)?),
            "session/terminate" => Operation::Terminate(fields("session/terminate", request)?),
            "session/shutdown" => Operation::Shutdown(fields("session/shutdown", request)?),
            other => return Err(BadOperation::UnknownMethod(other.to_owned())),
        })
    }
}

/// `cellExecutionLimits`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Limits {
    #[serde(default)]
    pub max_yield_time_ms: Option<u64>,
    #[serde(default)]
    pub max_heap_size_bytes: Option<u64>,
}

/// The body of `session/execute`.
#[derive(Debug, Deserialize)]
pub(super) struct ExecuteBody {
    pub tool_call_id: String,
    pub source: String,
    #[serde(default)]
    pub enabled_tools: Vec<Tool>,
    /// `tool-catalog-revision-v1`: the session's tool catalog under this revision (an
    /// empty `enabled_tools` reuses the one kept under it).
    #[serde(default)]
    pub catalog_revision: Option<u64>,
    #[serde(default)]
    pub yield_time_ms: Option<u64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
}

/// One of `enabled_tools` (its schemas are not read: the description carries what the
/// model sees).
#[derive(Debug, Deserialize)]
pub(super) struct Tool {
    pub name: String,
    #[serde(default)]
    pub tool_name: Option<QualifiedName>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub kind: Kind,
}

/// A tool's name with its namespace.
#[derive(Debug, Deserialize)]
pub(super) struct QualifiedName {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// How a tool takes its input.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Kind {
    #[default]
    Function,
    Freeform,
}

/// The body of `session/wait`.
#[derive(Debug, Deserialize)]
pub(super) struct WaitBody {
    pub cell_id: String,
    #[serde(default)]
    pub yield_time_ms: Option<u64>,
}
