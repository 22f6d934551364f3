//! What a call answers JS, as typed objects declared to TypeScript from here: a cell's
//! result ([`CellResult`]) or the error the call failed with ([`CallError`], whose `kind`
//! names the JS error class the package throws).

use code_mode_host::HostError;
use code_mode_protocol::{CellResponse, SessionError};
use code_mode_surface::format_response;
use napi_derive::napi;
use serde_json::Value;

/// One item a cell output: `type` is `text`, `image` or `audio`.
#[napi(object)]
pub struct ContentItem {
    #[napi(js_name = "type", ts_type = "'text' | 'image' | 'audio'")]
    pub kind: String,
    /// The text (`text(...)`, `console.log`).
    pub text: Option<String>,
    /// An image's data URL, or audio's.
    pub url: Option<String>,
    /// An image's detail (`auto`, `low`, `high`, `original`).
    pub detail: Option<String>,
}

/// What one observation of a cell answered (an `exec`, `wait` or `terminate`).
#[napi(object)]
pub struct CellResult {
    /// The cell's id in its session; `wait` and `terminate` take it.
    pub cell_id: String,
    /// `completed`, `running` (it yielded: `wait` for more) or `terminated`.
    #[napi(ts_type = "'completed' | 'running' | 'terminated'")]
    pub status: String,
    /// What the cell output since the last observation, in order.
    pub items: Vec<ContentItem>,
    /// The text items, joined by newlines.
    pub text: String,
    /// The text a model reads of the cell's failure, if it failed.
    pub error: Option<String>,
    /// The failure's kind (`script_error`, `out_of_memory`, `cpu_budget`, ...).
    pub failure: Option<String>,
    /// The observation's wall time, in milliseconds.
    pub wall_time_ms: f64,
    /// The whole answer as a model reads it: status line, wall time and output.
    pub model_text: String,
}

/// Why a call failed: `kind` is the error class (`RuntimeUnavailable`, `RuntimeLost`,
/// `SessionClosed` or `CodeModeError`), `message` says what happened and how to fix it.
#[napi(object)]
pub struct CallError {
    pub kind: String,
    pub message: String,
}

/// A call's outcome: exactly one of `result` and `error`.
#[napi(object)]
pub struct Outcome {
    pub result: Option<CellResult>,
    pub error: Option<CallError>,
}

/// How to fix a runtime that could not start, for Node's user.
const RUNTIME_FIX: &str = "to fix it, install the platform package (npm install code-mode-runtime-linux-x64-gnu; it ships the runtime as bin/code-mode-bin), or pass `runtime` (or set $CODE_MODE_BIN) to a code-mode-bin executable";

fn item(value: &Value) -> ContentItem {
    let text = |key: &str| value[key].as_str().map(str::to_owned);
    let kind = match value["type"].as_str() {
        Some("input_text") => "text",
        Some("input_image") => "image",
        _ => "audio",
    };
    ContentItem {
        kind: kind.to_owned(),
        text: text("text"),
        url: text("image_url").or_else(|| text("audio_url")),
        detail: text("detail"),
    }
}

/// The result of `response`, its model text cut to `budget` tokens.
pub(crate) fn result(response: &CellResponse, budget: u64) -> CellResult {
    let value = code_mode_surface::json::response_json(response);
    let items: Vec<ContentItem> = value["content_items"]
        .as_array()
        .map(|items| items.iter().map(item).collect())
        .unwrap_or_default();
    let text = items
        .iter()
        .filter_map(|item| item.text.as_deref())
        .collect::<Vec<_>>()
        .join("\n");
    let model_text = format_response(response, budget)
        .iter()
        .filter_map(|item| item.as_text())
        .collect::<Vec<_>>()
        .join("\n");
    let status = match value["type"].as_str() {
        Some("yielded") => "running",
        Some("terminated") => "terminated",
        _ => "completed",
    };
    CellResult {
        cell_id: value["cell_id"].as_str().unwrap_or_default().to_owned(),
        status: status.to_owned(),
        items,
        text,
        error: value["error_text"]
            .as_str()
            .filter(|text| !text.is_empty())
            .map(str::to_owned),
        failure: value["failure"].as_str().map(str::to_owned),
        wall_time_ms: value["wall_time_ms"].as_f64().unwrap_or_default(),
        model_text,
    }
}

/// The error class and message of `error`.
pub(crate) fn error(error: &SessionError) -> CallError {
    let kind = match error {
        SessionError::ShuttingDown => "SessionClosed",
        SessionError::RuntimeLost(_) => "RuntimeLost",
        SessionError::Runtime(_)
            if error
                .runtime_cause()
                .is_some_and(|cause| cause.is::<HostError>()) =>
        {
            "RuntimeUnavailable"
        }
        SessionError::Runtime(_)
        | SessionError::BusyObserver(_)
        | SessionError::AlreadyTerminating(_) => "CodeModeError",
    };
    let message = match kind {
        "RuntimeUnavailable" => format!("{error}; {RUNTIME_FIX}"),
        _ => error.to_string(),
    };
    CallError {
        kind: kind.to_owned(),
        message,
    }
}

/// An outcome of an error of class `kind`.
pub(crate) fn failed(kind: &str, message: String) -> Outcome {
    Outcome {
        result: None,
        error: Some(CallError {
            kind: kind.to_owned(),
            message,
        }),
    }
}
