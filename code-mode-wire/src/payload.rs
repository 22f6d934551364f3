//! The payloads the messages carry: the wire's own counterparts of the API's requests,
//! options, answers, ids and errors (`code_mode_protocol`'s `ExecRequest`,
//! `SessionOptions`, `CellResponse`, `CellId` and the rest).
//!
//! No API type crosses as itself: a field added to one for an agent core changes nothing
//! here until a conversion in [`crate::convert`] carries it, and then the pinned encodings
//! and [`crate::PROTOCOL_VERSION`] say so. Every type here is a plain struct or an
//! externally tagged enum, because bincode is not self-describing. The one API value the
//! wire sends whole is a session's stored values, a standard map of text.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A cell's id: its text (`3`, `g2:5`; or text that names no cell, kept as it was given).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CellId(pub String);

impl std::fmt::Display for CellId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Text types made from literal text, as tests and samples write them.
macro_rules! from_text {
    ($($text:ident),+) => {$(
        impl From<&str> for $text {
            fn from(text: &str) -> Self {
                Self(text.to_owned())
            }
        }

        impl From<String> for $text {
            fn from(text: String) -> Self {
                Self(text)
            }
        }
    )+};
}

from_text!(CellId, JsonText, ToolError);

/// A nested call's number in its cell (`tool-N` carries `N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallId(pub u64);

/// A JSON payload, as its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonText(pub String);

/// A nested call's failure, as its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolError(pub String);

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
        result: Result<JsonText, ToolError>,
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
    #[serde(with = "id_bytes")]
    pub trace_id: [u8; 16],
    #[serde(with = "id_bytes")]
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
    pub name: Name,
    pub unix_nanos: u64,
    pub attributes: Vec<(Name, SpanValue)>,
}

/// A span the runtime ended, handed back for the host to export: its ids, its parent's
/// (the host's span, or another of these), its times in nanoseconds since the Unix epoch
/// by the runtime's clock, and what it recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    #[serde(with = "id_bytes")]
    pub trace_id: [u8; 16],
    #[serde(with = "id_bytes")]
    pub span_id: [u8; 8],
    #[serde(with = "id_bytes")]
    pub parent_span_id: [u8; 8],
    pub name: Name,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(Name, SpanValue)>,
    pub events: Vec<SpanEvent>,
    pub status: SpanStatus,
}

/// Trace and span ids cross as one byte string each (its length, then its bytes): an
/// array would cross as a tuple, each of its bytes encoded and decoded on its own.
mod id_bytes {
    use serde::de::{Error, Visitor};

    pub(super) fn serialize<S: serde::Serializer, const N: usize>(
        id: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(id)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        deserializer.deserialize_bytes(IdBytes::<N>)
    }

    struct IdBytes<const N: usize>;

    impl<const N: usize> Visitor<'_> for IdBytes<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an id of {N} bytes")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<[u8; N], E> {
            bytes
                .try_into()
                .map_err(|_| E::invalid_length(bytes.len(), &self))
        }
    }
}

/// The name of a handed-back span, event or attribute. Made from a `&'static str` (as
/// `tracing` gives names) it holds that text; decoded, a name among [`KNOWN_NAMES`] is that
/// static text too, and only another name is allocated. It crosses as plain text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(std::borrow::Cow<'static, str>);

/// The names the runtime's own spans use (theirs, their attributes' and their events'):
/// decoded, each is a [`Name`] that allocates nothing. A name missing here still crosses,
/// allocated; this list changes nothing on the wire.
pub const KNOWN_NAMES: &[&str] = &[
    "code_mode.runtime",
    "code_mode.compile",
    "code_mode.evaluate",
    "code_mode.hibernated",
    "code_mode.replay",
    "process.pid",
    "runtime.session",
    "cpu.time_ms",
    "source.bytes",
    "typescript",
    "cell.id",
    "timer fired",
    "timer.id",
];

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's text, borrowed from a static when it is one.
    pub fn into_cow(self) -> std::borrow::Cow<'static, str> {
        self.0
    }

    /// The static text of `text` when it is a known name.
    fn known(text: &str) -> Option<&'static str> {
        KNOWN_NAMES.iter().find(|known| **known == text).copied()
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&'static str> for Name {
    fn from(name: &'static str) -> Self {
        Self(std::borrow::Cow::Borrowed(name))
    }
}

impl From<String> for Name {
    fn from(name: String) -> Self {
        Self(std::borrow::Cow::Owned(name))
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameText;

        impl Visitor<'_> for NameText {
            type Value = Name;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a name")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Name, E> {
                Ok(Name::known(text).map_or_else(|| Name::from(text.to_owned()), Name::from))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Name, E> {
                Ok(Name::known(&text).map_or(Name::from(text), Name::from))
            }
        }

        use serde::de::Visitor;
        deserializer.deserialize_str(NameText)
    }
}
