//! The JSON forms of what sessions answer: content items, cell responses, pending outcomes
//! and every [`SessionReply`]. One definition for every front end that speaks JSON (the
//! CLI's `--json`, the JSON-lines driver, MCP), documented in `docs/jsonl.md`.

use code_mode_internal::calls::SessionReply;
use code_mode_protocol::model::{ContentItem, ImageDetail};
use code_mode_protocol::session::{CellResponse, FailureKind, PendingOutcome};
use serde_json::{Value, json};

/// `{"type": "input_text", "text": ...}`, `{"type": "input_image", "image_url": ..., "detail": ...}`
/// or `{"type": "input_audio", "audio_url": ...}`.
pub fn item_json(item: &ContentItem) -> Value {
    match item {
        ContentItem::InputText { text } => json!({ "type": "input_text", "text": text }),
        ContentItem::InputImage { image_url, detail } => {
            json!({ "type": "input_image", "image_url": image_url, "detail": detail.as_str() })
        }
        ContentItem::InputAudio { audio_url } => {
            json!({ "type": "input_audio", "audio_url": audio_url })
        }
    }
}

/// The item [`item_json`] made `value` of; `None` for anything else.
pub fn item_from_json(value: &Value) -> Option<ContentItem> {
    let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
    match value.get("type").and_then(Value::as_str)? {
        "input_text" => Some(ContentItem::InputText {
            text: field("text")?,
        }),
        "input_image" => Some(ContentItem::InputImage {
            image_url: field("image_url")?,
            detail: field("detail").and_then(|detail| ImageDetail::parse(&detail))?,
        }),
        "input_audio" => Some(ContentItem::InputAudio {
            audio_url: field("audio_url")?,
        }),
        _ => None,
    }
}

/// A list of items, in order.
pub fn items_json(items: &[ContentItem]) -> Value {
    Value::Array(items.iter().map(item_json).collect())
}

/// A response: `type` is `yielded`, `terminated` or `result`; `wall_time_ms` is the time
/// the provider measured for the observation (contract 8.5), in milliseconds.
pub fn response_json(response: &CellResponse) -> Value {
    let wall_time_ms = milliseconds(response.wall_time());
    match response {
        CellResponse::Yielded {
            cell_id,
            content_items,
            ..
        } => json!({
            "type": "yielded", "cell_id": cell_id, "content_items": items_json(content_items),
            "wall_time_ms": wall_time_ms,
        }),
        CellResponse::Terminated {
            cell_id,
            content_items,
            ..
        } => json!({
            "type": "terminated", "cell_id": cell_id, "content_items": items_json(content_items),
            "wall_time_ms": wall_time_ms,
        }),
        CellResponse::Result {
            cell_id,
            content_items,
            ..
        } => json!({
            "type": "result", "cell_id": cell_id, "content_items": items_json(content_items),
            "error_text": response.error_text(), "failure": response.failure().map(FailureKind::as_str),
            "missing_cell": response.is_missing_cell(), "wall_time_ms": wall_time_ms,
        }),
    }
}

/// A time in milliseconds, to the microsecond.
fn milliseconds(time: std::time::Duration) -> f64 {
    (time.as_micros() as f64) / 1000.0
}

/// A pending-aware outcome: `type` is `pending`, or `completed` with a `response`.
pub fn pending_json(outcome: &PendingOutcome) -> Value {
    match outcome {
        PendingOutcome::Pending {
            cell_id,
            content_items,
            pending_tool_call_ids,
            wall_time,
        } => json!({
            "type": "pending", "cell_id": cell_id, "content_items": items_json(content_items),
            "pending_tool_call_ids": pending_tool_call_ids,
            "wall_time_ms": milliseconds(*wall_time),
        }),
        PendingOutcome::Completed(response) => json!({
            "type": "completed", "response": response_json(response),
        }),
    }
}

/// The answer to a session call: `{"cell_id", "response"}` for an `exec`, a response for
/// `wait` and `terminate`, `{"cell_id", "outcome"}` for `execute_to_pending`, an outcome
/// for `wait_to_pending`, `{"cell_ids": [...]}` for `interrupt`, `null` for `shutdown`.
pub fn reply_json(reply: &SessionReply) -> Value {
    match reply {
        SessionReply::Started(started) => json!({
            "cell_id": started.cell_id, "response": response_json(&started.initial_response),
        }),
        SessionReply::Cell(response) => response_json(response),
        SessionReply::StartedPending(started) => json!({
            "cell_id": started.cell_id, "outcome": pending_json(&started.outcome),
        }),
        SessionReply::Pending(outcome) => pending_json(outcome),
        SessionReply::Interrupted(cell_ids) => json!({ "cell_ids": cell_ids }),
        SessionReply::ShutDown => Value::Null,
    }
}
