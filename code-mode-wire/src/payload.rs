//! The payloads the messages carry: the wire's own counterparts of the API's requests,
//! options and answers (`code_mode_protocol`'s `ExecRequest`, `SessionOptions`,
//! `CellResponse` and the rest).
//!
//! The API types derive no serde: a field added to one for an agent core changes nothing
//! here until a conversion in [`crate::convert`] carries it, and then the pinned encodings
//! and [`crate::PROTOCOL_VERSION`] say so. Every type here is a plain struct or an
//! externally tagged enum, because bincode is not self-describing.
//!
//! Leaf values whose one encoding is their text cross as themselves: cell and call ids
//! (their text, as every JSON form carries them), [`JsonText`] payloads and [`ToolError`]
//! messages.
//!
//! [`JsonText`]: code_mode_protocol::json_text::JsonText
//! [`ToolError`]: code_mode_protocol::ids::ToolError

use code_mode_protocol::ids::{CallId, CellId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The globals a session's cells see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Surface {
    Contract,
    Codex,
}

/// A session's options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOptions {
    pub max_yield_time_ms: Option<u64>,
    pub limits: CellLimits,
    pub reuse_isolates: bool,
    pub max_stored_bytes: u64,
    pub surface: Surface,
    pub hibernate_after_ms: Option<u64>,
}

/// What one cell may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellLimits {
    pub heap_bytes: u64,
    pub cpu_budget_ms: u64,
    pub output_bytes: u64,
    pub max_in_flight_tool_calls: u64,
    pub max_tool_payload_bytes: u64,
}

/// How a nested tool takes its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolKind {
    Function,
    Freeform,
}

/// A nested tool enabled for a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    pub kind: ToolKind,
    pub deferred: bool,
}

/// An `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub source: String,
    pub tools: Vec<ToolDefinition>,
    pub yield_time_ms: Option<u64>,
    pub tool_call_id: Option<String>,
}

/// A `wait`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRequest {
    pub cell_id: CellId,
    pub yield_time_ms: Option<u64>,
}

/// One call of a session's methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionCall {
    Execute(ExecRequest),
    Wait(WaitRequest),
    Terminate { cell_id: CellId },
    ExecuteToPending(ExecRequest),
    WaitToPending { cell_id: CellId },
    Interrupt,
    Shutdown,
}

/// How much detail the model should see in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageDetail {
    Auto,
    Low,
    High,
    Original,
}

/// One item of a cell's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentItem {
    InputText {
        text: String,
    },
    InputImage {
        image_url: String,
        detail: ImageDetail,
    },
    InputAudio {
        audio_url: String,
    },
}

/// Why a cell failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    ScriptError,
    OutOfMemory,
    CpuBudget,
    Stalled,
    StoppedUnexpectedly,
    RuntimeLost,
    NotFound,
    ReplayDiverged,
}

/// A failed cell's reason and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellFailure {
    pub kind: FailureKind,
    pub text: String,
}

/// What one observation of a cell returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CellResponse {
    Yielded {
        cell_id: CellId,
        content_items: Vec<ContentItem>,
        wall_time: Duration,
    },
    Terminated {
        cell_id: CellId,
        content_items: Vec<ContentItem>,
        wall_time: Duration,
    },
    Result {
        cell_id: CellId,
        content_items: Vec<ContentItem>,
        failure: Option<CellFailure>,
        wall_time: Duration,
    },
}

/// What a pending-aware observation returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingOutcome {
    Pending {
        cell_id: CellId,
        content_items: Vec<ContentItem>,
        pending_tool_call_ids: Vec<CallId>,
        wall_time: Duration,
    },
    Completed(CellResponse),
}

/// The answer to a [`SessionCall`], by the call's kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionReply {
    /// To `Execute`: the cell's id and its first observation.
    Started {
        cell_id: CellId,
        initial_response: CellResponse,
    },
    /// To `Wait` and `Terminate`.
    Cell(CellResponse),
    /// To `ExecuteToPending`.
    StartedPending {
        cell_id: CellId,
        outcome: PendingOutcome,
    },
    /// To `WaitToPending`.
    Pending(PendingOutcome),
    /// To `Interrupt`: the cells it terminated.
    Interrupted(Vec<CellId>),
    /// To `Shutdown`.
    ShutDown,
}

/// A command that entered a cell (`code_mode_protocol::journal::JournalCommand`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalCommand {
    ToolResult {
        call: CallId,
        result: Result<code_mode_protocol::json_text::JsonText, code_mode_protocol::ids::ToolError>,
    },
    TimerFired {
        id: u64,
    },
}

/// What a cell's journal gained (`code_mode_protocol::journal::JournalEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalEntry {
    Started {
        seed: u64,
    },
    Clock(Vec<u64>),
    Issued {
        call: CallId,
        hash: u64,
        tool: String,
    },
    Entered {
        index: u64,
        command: JournalCommand,
    },
    Yielded,
    NotDurable,
}

/// Everything a cell is rebuilt from (`code_mode_protocol::journal::CellJournal`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellJournal {
    pub source: String,
    pub tools: Vec<ToolDefinition>,
    pub stored: code_mode_protocol::stored::StoredValues,
    pub seed: u64,
    pub clock: Vec<u64>,
    pub issued: Vec<(u64, String)>,
    pub entered: Vec<JournalCommand>,
    pub outputs: u64,
    pub notifications: u64,
    pub yields: u64,
}

/// The W3C trace context a request runs under (the host's span of the cell it starts or
/// rebuilds): the runtime's spans of that work are its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
}

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SpanValue {
    Bool(bool),
    I64(i64),
    F64(f64),
    Text(String),
}

/// A span's outcome, as OpenTelemetry states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error(String),
}

/// An event on a span: its name, when, and its attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub name: String,
    pub unix_nanos: u64,
    pub attributes: Vec<(String, SpanValue)>,
}

/// A span the runtime ended, handed back for the host to export: its ids, its parent's
/// (the host's span, or another of these), its times in nanoseconds since the Unix epoch
/// by the runtime's clock, and what it recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: [u8; 8],
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(String, SpanValue)>,
    pub events: Vec<SpanEvent>,
    pub status: SpanStatus,
}
