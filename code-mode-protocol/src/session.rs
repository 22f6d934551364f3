//! The session API every provider implements: [`CodeModeSession`] (what the agent core
//! calls) and [`CodeModeSessionDelegate`] (what the session calls back: nested tool calls,
//! notifications, cell-closed), with their request and response types (contract 3.2).
//!
//! Transport-neutral and V8-free: the in-process session (`code-mode`) and the IPC session
//! (`code-mode-host`) implement the same trait, so an agent core swaps providers with one
//! line and the conformance suite runs unchanged against both. Methods return boxed
//! futures so that `dyn CodeModeSession` works.

use crate::ids::{CallId, CellId, ToolError};
use crate::json_text::JsonText;
use crate::model::{ContentItem, ToolDefinition, ToolKind};
use crate::stored::StoredValues;
use crate::texts;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A boxed, sendable future, as the session traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a delegate may keep running after its call or notification was cancelled
/// before it is abandoned (its future dropped).
pub const CANCEL_GRACE: Duration = Duration::from_millis(200);

/// Default time an observation waits before it yields, in milliseconds.
pub const DEFAULT_YIELD_TIME_MS: u64 = 10_000;

/// Requested yield times at or above this get [`YIELD_GRACE_MS`] extra, so that a tool
/// finishing just after ten seconds still completes in the same call.
pub const YIELD_GRACE_THRESHOLD_MS: u64 = 10_000;

/// The extra time granted to long yields, in milliseconds.
pub const YIELD_GRACE_MS: u64 = 1_000;

/// The time an observation actually waits: the requested time, plus the grace for long
/// requests, capped by the session's maximum.
pub fn effective_yield_time_ms(requested_ms: u64, session_max_ms: Option<u64>) -> u64 {
    let with_grace = if requested_ms >= YIELD_GRACE_THRESHOLD_MS {
        requested_ms.saturating_add(YIELD_GRACE_MS)
    } else {
        requested_ms
    };
    session_max_ms.map_or(with_grace, |max| with_grace.min(max))
}

/// The globals a cell sees: the contract's (CONTRACT §2), or those of Codex's own host,
/// for a front that must be indistinguishable from it (no `console`; a `content` helper
/// for MCP content blocks; Codex's order; plain writable properties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Surface {
    #[default]
    Contract,
    Codex,
}

/// Options of one session, whatever the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Caps every observation's yield time, grace included. `Some(0)` yields at once.
    pub max_yield_time_ms: Option<u64>,
    /// Limits applied to every cell of the session.
    pub limits: CellLimits,
    /// Whether a cell that ended normally hands its isolate (reset, with a fresh context)
    /// to the session's next cell (CONTRACT §7). On by default; off, every cell gets a
    /// fresh isolate.
    pub reuse_isolates: bool,
    /// Caps the session's stored values, in bytes of keys and JSON text
    /// ([`crate::stored`]); a `store` beyond it fails. Default
    /// [`crate::stored::DEFAULT_MAX_STORED_BYTES`] (64 MiB).
    pub max_stored_bytes: u64,
    /// The globals its cells see. Default: the contract's.
    pub surface: Surface,
    /// How long a cell waits on nothing but its nested calls before it hibernates: its
    /// thread and isolate are given back, and it is rebuilt from its journal when an
    /// answer arrives or an observation needs it (CONTRACT §7). `None`: never. Default
    /// [`DEFAULT_HIBERNATE_AFTER_MS`].
    pub hibernate_after_ms: Option<u64>,
}

/// Default of [`SessionOptions::hibernate_after_ms`]: 5 s.
pub const DEFAULT_HIBERNATE_AFTER_MS: u64 = 5_000;

/// The largest journal a cell keeps, in bytes (tool results, clock readings and the
/// bookkeeping of each entry). A cell whose journal would pass it is no longer durable: it
/// never hibernates, and it fails with its runtime as before.
pub const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            max_yield_time_ms: None,
            limits: CellLimits::default(),
            reuse_isolates: true,
            max_stored_bytes: crate::stored::DEFAULT_MAX_STORED_BYTES,
            surface: Surface::Contract,
            hibernate_after_ms: Some(DEFAULT_HIBERNATE_AFTER_MS),
        }
    }
}

/// Default heap limit of a cell, in bytes (128 MiB); `ArrayBuffer` memory has a budget of
/// half of it.
pub const DEFAULT_HEAP_LIMIT_BYTES: u64 = 128 * 1024 * 1024;

/// Default CPU budget of a cell, in milliseconds of CPU time (30 s). Time spent waiting
/// (for tools, timers, observers) does not count.
pub const DEFAULT_CPU_BUDGET_MS: u64 = 30_000;

/// Default output cap of a cell, in bytes (8 MiB), text and images together.
pub const DEFAULT_OUTPUT_CAP_BYTES: u64 = 8 * 1024 * 1024;

/// Default cap on nested tool calls in flight in one cell.
pub const DEFAULT_MAX_IN_FLIGHT_TOOL_CALLS: u64 = 1024;

/// Default size limit of one tool argument or result, in bytes of JSON (32 MiB): checked
/// before V8 or the wire sees it, and well inside the 64 MiB frame cap.
pub const DEFAULT_MAX_TOOL_PAYLOAD_BYTES: u64 = 32 * 1024 * 1024;

/// What one cell may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellLimits {
    /// V8 heap limit of the cell's isolate, in bytes; `ArrayBuffer`s may use half of it.
    pub heap_bytes: u64,
    /// CPU time the cell may use, in milliseconds.
    pub cpu_budget_ms: u64,
    /// Output the cell may produce (text and image bytes), in bytes; later output is
    /// dropped behind a visible marker.
    pub output_bytes: u64,
    /// Nested tool calls in flight at once; beyond it a call rejects.
    pub max_in_flight_tool_calls: u64,
    /// Size of one tool argument or result, in bytes of JSON.
    pub max_tool_payload_bytes: u64,
}

impl Default for CellLimits {
    fn default() -> Self {
        Self {
            heap_bytes: DEFAULT_HEAP_LIMIT_BYTES,
            cpu_budget_ms: DEFAULT_CPU_BUDGET_MS,
            output_bytes: DEFAULT_OUTPUT_CAP_BYTES,
            max_in_flight_tool_calls: DEFAULT_MAX_IN_FLIGHT_TOOL_CALLS,
            max_tool_payload_bytes: DEFAULT_MAX_TOOL_PAYLOAD_BYTES,
        }
    }
}

/// An `exec` call: the source (pragma already parsed and removed) and the enabled tools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub source: String,
    /// Every enabled nested tool, deferred ones included.
    pub tools: Arc<[ToolDefinition]>,
    /// `None`: [`DEFAULT_YIELD_TIME_MS`].
    pub yield_time_ms: Option<u64>,
    /// The model's id for the `exec` tool call that runs this cell; the cell's nested
    /// tool calls carry it back to the delegate ([`NestedToolCall::exec_call_id`],
    /// contract 8.5).
    pub tool_call_id: Option<String>,
}

impl ExecRequest {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            ..Self::default()
        }
    }

    pub fn with_tools(mut self, tools: impl Into<Arc<[ToolDefinition]>>) -> Self {
        self.tools = tools.into();
        self
    }

    pub fn with_yield_time_ms(mut self, yield_time_ms: u64) -> Self {
        self.yield_time_ms = Some(yield_time_ms);
        self
    }

    pub fn with_tool_call_id(mut self, tool_call_id: impl Into<String>) -> Self {
        self.tool_call_id = Some(tool_call_id.into());
        self
    }
}

/// Told the id of a cell as soon as the session admitted it, before its first
/// observation returns (contract 8.5).
pub type AdmittedHook = Arc<dyn Fn(&CellId) + Send + Sync>;

/// What an `exec` carries besides its [`ExecRequest`], for the caller's side only: none of
/// it crosses a process boundary as data (contract 8.4, 8.5).
#[derive(Clone, Default)]
pub struct ExecHooks {
    /// This cell's nested tool calls, notifications and closing go here instead of to
    /// the session's delegate.
    pub delegate: Option<Arc<dyn CodeModeSessionDelegate>>,
    /// When it fires, the observation returns `Yielded` at once with the output so far;
    /// the cell keeps running.
    pub preempt: Option<CancellationToken>,
    /// Called once with the cell's id when the cell is admitted, before any of its
    /// callbacks. It runs while the session admits the cell: keep it short (record the
    /// id, send a message), never block in it.
    pub admitted: Option<AdmittedHook>,
}

impl ExecHooks {
    pub fn with_delegate(mut self, delegate: Arc<dyn CodeModeSessionDelegate>) -> Self {
        self.delegate = Some(delegate);
        self
    }

    pub fn with_preempt(mut self, preempt: CancellationToken) -> Self {
        self.preempt = Some(preempt);
        self
    }

    pub fn on_admitted(mut self, admitted: impl Fn(&CellId) + Send + Sync + 'static) -> Self {
        self.admitted = Some(Arc::new(admitted));
        self
    }

    /// Reports an admitted cell to the hook, if there is one.
    pub fn admit(&self, cell_id: &CellId) {
        if let Some(admitted) = &self.admitted {
            admitted(cell_id);
        }
    }
}

impl std::fmt::Debug for ExecHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecHooks")
            .field("delegate", &self.delegate.is_some())
            .field("preempt", &self.preempt)
            .field("admitted", &self.admitted.is_some())
            .finish()
    }
}

/// A `wait` call (without `terminate`, which is [`CodeModeSession::terminate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitRequest {
    pub cell_id: CellId,
    /// `None`: [`DEFAULT_YIELD_TIME_MS`].
    pub yield_time_ms: Option<u64>,
}

impl WaitRequest {
    pub fn new(cell_id: impl Into<CellId>) -> Self {
        Self {
            cell_id: cell_id.into(),
            yield_time_ms: None,
        }
    }

    pub fn with_yield_time_ms(mut self, yield_time_ms: u64) -> Self {
        self.yield_time_ms = Some(yield_time_ms);
        self
    }
}

/// What one observation of a cell returns (contract 3.2).
///
/// Every variant carries `wall_time`: how long the provider took to answer the
/// observation, measured by the provider from the call's arrival to its answer (contract
/// 8.5); the formatter's `Wall time` line shows it. [`CellResponse::timeless`] compares
/// responses without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellResponse {
    /// The cell is still running; these are the items produced since the last observation.
    Yielded {
        cell_id: CellId,
        content_items: Vec<ContentItem>,
        wall_time: Duration,
    },
    /// The cell was terminated; the items it produced and had not returned.
    Terminated {
        cell_id: CellId,
        content_items: Vec<ContentItem>,
        wall_time: Duration,
    },
    /// The cell completed: successfully when `failure` is `None`, else with the failure's
    /// kind and the text the model reads. The answer to a `wait` on an id the session
    /// does not know is a result whose failure is [`FailureKind::NotFound`]
    /// ([`CellResponse::is_missing_cell`]).
    Result {
        cell_id: CellId,
        content_items: Vec<ContentItem>,
        failure: Option<CellFailure>,
        wall_time: Duration,
    },
}

/// How a cell failed, beside the text the model reads (`error_text`): for a caller that
/// acts on the reason (metrics, retries, a user interface) without reading the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The script threw, or its module's promise was rejected: syntax and type errors,
    /// an uncaught tool rejection, an exception in a timer callback.
    ScriptError,
    /// The cell reached its heap limit and was stopped (contract §7).
    OutOfMemory,
    /// The cell used its CPU budget and was stopped.
    CpuBudget,
    /// The script awaits a promise that nothing can settle: no tool call or timer is
    /// pending.
    Stalled,
    /// The cell's thread stopped without reporting how it ended (a runtime fault).
    StoppedUnexpectedly,
    /// The runtime process under the cell was lost. Sessions report this as
    /// [`SessionError::RuntimeLost`]; a front end that answers with a result instead (the
    /// Codex front) marks it so.
    RuntimeLost,
    /// The id names no cell of the session.
    NotFound,
    /// The cell was being rebuilt from its journal (after hibernation or the loss of its
    /// runtime) and made a nested call other than the one its journal holds at that
    /// position; nothing was sent.
    ReplayDiverged,
}

impl FailureKind {
    /// The name used in the JSON forms (JSON lines, MCP) and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::ScriptError => "script_error",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::CpuBudget => "cpu_budget",
            FailureKind::Stalled => "stalled",
            FailureKind::StoppedUnexpectedly => "stopped_unexpectedly",
            FailureKind::RuntimeLost => "runtime_lost",
            FailureKind::NotFound => "not_found",
            FailureKind::ReplayDiverged => "replay_diverged",
        }
    }
}

/// A failed cell's reason and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellFailure {
    pub kind: FailureKind,
    pub text: String,
}

impl CellFailure {
    pub fn new(kind: FailureKind, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
        }
    }
}

impl CellResponse {
    /// The result for an id the session does not know: `exec cell <id> not found`.
    pub fn missing(cell_id: impl Into<CellId>) -> Self {
        let cell_id = cell_id.into();
        CellResponse::Result {
            failure: Some(CellFailure::new(
                FailureKind::NotFound,
                texts::cell_not_found(&cell_id),
            )),
            cell_id,
            content_items: Vec::new(),
            wall_time: Duration::ZERO,
        }
    }

    /// The result of a cell that ended, with `failure` when it failed (no time yet: the
    /// provider stamps it).
    pub fn result(
        cell_id: impl Into<CellId>,
        content_items: Vec<ContentItem>,
        failure: Option<CellFailure>,
    ) -> Self {
        CellResponse::Result {
            cell_id: cell_id.into(),
            content_items,
            failure,
            wall_time: Duration::ZERO,
        }
    }

    /// The time the provider measured for the observation that returned this response
    /// (contract 8.5).
    pub fn wall_time(&self) -> Duration {
        match self {
            CellResponse::Yielded { wall_time, .. }
            | CellResponse::Terminated { wall_time, .. }
            | CellResponse::Result { wall_time, .. } => *wall_time,
        }
    }

    /// The same response with the time `measured`, as the provider that answers the
    /// observation stamps it.
    pub fn with_wall_time(mut self, measured: Duration) -> Self {
        match &mut self {
            CellResponse::Yielded { wall_time, .. }
            | CellResponse::Terminated { wall_time, .. }
            | CellResponse::Result { wall_time, .. } => *wall_time = measured,
        }
        self
    }

    /// The same response with no time: what it says, for comparing two responses whose
    /// measurements differ.
    pub fn timeless(self) -> Self {
        self.with_wall_time(Duration::ZERO)
    }

    /// The same response for another cell id (e.g. as a host presents it).
    pub fn with_cell_id(mut self, id: impl Into<CellId>) -> Self {
        match &mut self {
            CellResponse::Yielded { cell_id, .. }
            | CellResponse::Terminated { cell_id, .. }
            | CellResponse::Result { cell_id, .. } => *cell_id = id.into(),
        }
        self
    }

    pub fn cell_id(&self) -> &CellId {
        match self {
            CellResponse::Yielded { cell_id, .. }
            | CellResponse::Terminated { cell_id, .. }
            | CellResponse::Result { cell_id, .. } => cell_id,
        }
    }

    pub fn content_items(&self) -> &[ContentItem] {
        match self {
            CellResponse::Yielded { content_items, .. }
            | CellResponse::Terminated { content_items, .. }
            | CellResponse::Result { content_items, .. } => content_items,
        }
    }

    /// The same response with `earlier` items before its own (output an earlier
    /// observation returned that its caller never received).
    pub fn with_items_before(mut self, mut earlier: Vec<ContentItem>) -> Self {
        match &mut self {
            CellResponse::Yielded { content_items, .. }
            | CellResponse::Terminated { content_items, .. }
            | CellResponse::Result { content_items, .. } => {
                earlier.append(content_items);
                *content_items = earlier;
            }
        }
        self
    }

    /// How a completed cell failed, for a failed result.
    pub fn cell_failure(&self) -> Option<&CellFailure> {
        match self {
            CellResponse::Result { failure, .. } => failure.as_ref(),
            _ => None,
        }
    }

    /// The error text of a completed cell that failed.
    pub fn error_text(&self) -> Option<&str> {
        self.cell_failure().map(|failure| failure.text.as_str())
    }

    /// The kind of a completed cell's failure, for a failed result.
    pub fn failure(&self) -> Option<FailureKind> {
        self.cell_failure().map(|failure| failure.kind)
    }

    /// Whether this is the answer for an id the session does not know.
    pub fn is_missing_cell(&self) -> bool {
        self.failure() == Some(FailureKind::NotFound)
    }
}

/// What `execute` returns: the new cell's id and its first observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedCell {
    pub cell_id: CellId,
    pub initial_response: CellResponse,
}

/// What a pending-aware observation returns (contract 3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingOutcome {
    /// The cell has nothing runnable and is frozen until the next observation: it waits
    /// only on these nested tool calls (those started since the previous frontier) or on
    /// timers.
    Pending {
        cell_id: CellId,
        content_items: Vec<ContentItem>,
        pending_tool_call_ids: Vec<CallId>,
        /// As [`CellResponse`]'s: the provider's time for the observation.
        wall_time: Duration,
    },
    /// The cell finished (or was terminated) before reaching a frontier.
    Completed(CellResponse),
}

impl PendingOutcome {
    /// The time the provider measured for the observation (contract 8.5).
    pub fn wall_time(&self) -> Duration {
        match self {
            PendingOutcome::Pending { wall_time, .. } => *wall_time,
            PendingOutcome::Completed(response) => response.wall_time(),
        }
    }

    /// The same outcome with the time `measured`.
    pub fn with_wall_time(self, measured: Duration) -> Self {
        match self {
            PendingOutcome::Pending {
                cell_id,
                content_items,
                pending_tool_call_ids,
                ..
            } => PendingOutcome::Pending {
                cell_id,
                content_items,
                pending_tool_call_ids,
                wall_time: measured,
            },
            PendingOutcome::Completed(response) => {
                PendingOutcome::Completed(response.with_wall_time(measured))
            }
        }
    }

    /// The same outcome with no time, for comparisons.
    pub fn timeless(self) -> Self {
        self.with_wall_time(Duration::ZERO)
    }
}

/// What `execute_to_pending` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedPendingCell {
    pub cell_id: CellId,
    pub outcome: PendingOutcome,
}

/// A nested tool call, as the delegate receives it (contract section 6). Its argument is
/// the JSON text it travels as ([`JsonText`]); [`NestedToolCall::answer_with`] parses it
/// for a delegate that works with values.
#[derive(Debug, Clone, PartialEq)]
pub struct NestedToolCall<Input = JsonText> {
    pub cell_id: CellId,
    /// `tool-N`, numbered per cell.
    pub call_id: CallId,
    /// The tool's original name, namespace included.
    pub tool_name: String,
    pub kind: ToolKind,
    /// The argument, `None` when the cell passed none.
    pub input: Option<Input>,
    /// The model's id of the `exec` call that started the cell, when the exec gave one
    /// ([`ExecRequest::tool_call_id`]).
    pub exec_call_id: Option<String>,
}

impl NestedToolCall<JsonText> {
    /// The same call with its argument parsed (bounded, see [`JsonText::to_value`]).
    pub fn parsed(self) -> Result<NestedToolCall<serde_json::Value>, ToolError> {
        let input = match &self.input {
            None => None,
            Some(text) => Some(
                text.to_value()
                    .map_err(|error| ToolError::new(texts::tool_input_rejected(&error)))?,
            ),
        };
        Ok(NestedToolCall {
            cell_id: self.cell_id,
            call_id: self.call_id,
            tool_name: self.tool_name,
            kind: self.kind,
            input,
            exec_call_id: self.exec_call_id,
        })
    }

    /// The typed convenience over [`CodeModeSessionDelegate::invoke_tool`]: parses the
    /// argument, runs `answer` on the call with its value, and serialises the value it
    /// returns. An argument that is not JSON fails the call with `tool input rejected: ...`
    /// without running `answer`.
    ///
    /// Like the delegate method, this reports nothing before it returns: `answer` is
    /// called right away, so whatever it does before its first `.await` happens in call
    /// order.
    pub fn answer_with<'a, F, Fut>(self, answer: F) -> BoxFuture<'a, Result<JsonText, ToolError>>
    where
        F: FnOnce(NestedToolCall<serde_json::Value>) -> Fut,
        Fut: Future<Output = Result<serde_json::Value, ToolError>> + Send + 'a,
    {
        match self.parsed() {
            Ok(call) => {
                let value = answer(call);
                Box::pin(async move { Ok(JsonText::from_value(&value.await?)) })
            }
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }
}

/// Errors of session calls. The `Display` texts are the contract's exact strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("{}", texts::SHUTTING_DOWN)]
    ShuttingDown,
    #[error("{}", texts::busy_observer(.0))]
    BusyObserver(CellId),
    #[error("{}", texts::already_terminating(.0))]
    AlreadyTerminating(CellId),
    /// The runtime could not run the call (no thread or process could be started, ...).
    /// Its [`RuntimeFailure`] keeps the typed cause when one is known.
    #[error("{}", texts::runtime_failure(.0))]
    Runtime(#[source] RuntimeFailure),
    /// The runtime process died (or its connection was lost) while the call was in
    /// flight, or the call names a cell that was running there. The text names the cause.
    /// The session itself goes on: its next call runs on a fresh runtime with every
    /// committed stored value (contract §7).
    #[error("{}", texts::runtime_lost(.0))]
    RuntimeLost(String),
}

impl SessionError {
    /// The typed cause of a [`SessionError::Runtime`], when one is known: for a host, its
    /// `HostError` (a binary not found, a failed handshake, a remote pool with no
    /// runtime), to downcast instead of reading the text.
    pub fn runtime_cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            SessionError::Runtime(failure) => failure.cause(),
            _ => None,
        }
    }
}

/// Why a runtime could not run a call: the text every reader sees, and the error that
/// caused it when the failure came from one. Two failures are equal when their texts are:
/// the cause is for a caller that acts on it, not part of what the failure says.
#[derive(Debug, Clone)]
pub struct RuntimeFailure {
    message: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl RuntimeFailure {
    /// A failure with no typed cause.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            cause: None,
        }
    }

    /// A failure caused by `error`, worded as `error` displays.
    pub fn caused_by(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message: error.to_string(),
            cause: Some(Arc::new(error)),
        }
    }

    /// The same failure, caused by `error` (its text stays this failure's own).
    pub fn with_cause(mut self, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(error));
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error that caused the failure, if it came from one.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }
}

impl std::fmt::Display for RuntimeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RuntimeFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for RuntimeFailure {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for RuntimeFailure {}

impl From<String> for RuntimeFailure {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for RuntimeFailure {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// The agent core's side of a session: answers nested tool calls, receives notifications
/// and learns when a cell is closed. Only [`Self::invoke_tool`] must be written.
pub trait CodeModeSessionDelegate: Send + Sync + 'static {
    /// Runs a nested tool call. Its argument and its result are JSON text: a delegate that
    /// forwards payloads (to a process, over a socket) never parses them, and one that
    /// works with values uses [`NestedToolCall::answer_with`]. The cell checks the text
    /// answered (`tool result rejected: it is not valid JSON` when it is not JSON); an
    /// error rejects the cell's promise with its message.
    ///
    /// `cancel` fires when the cell no longer wants the answer (it ended, was terminated,
    /// or the session shuts down); the delegate should stop soon after, and is abandoned
    /// after a short grace period ([`CANCEL_GRACE`]) if it does not.
    ///
    /// Sessions poll the returned future once right away, on their own task and in the
    /// order the cell made its calls, before spawning it: report the call (an event, a log
    /// line) before the first `.await` to keep that order, and never block there (await
    /// instead), or the session waits with you.
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>>;

    /// Delivers a `notify(...)` text of the cell's current `exec` call. `cancel` fires
    /// when the cell is terminated or the session shuts down. The default drops it.
    fn notify(&self, _: CellId, _: String, _: CancellationToken) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// The cell is closed: it has stopped, its callbacks are cleaned up and its final
    /// response was returned (or the session shut down). Called exactly once per cell. The
    /// default does nothing.
    fn cell_closed(&self, _: &CellId) {}

    /// A completed cell's stored-value writes were merged into the session (contract
    /// section 4), in the same step as its completion and before its final response is
    /// given: `writes` holds each key the cell wrote with its last value. Called on the
    /// session's delegate (never a cell's own), only for cells that wrote something. A
    /// runtime process forwards it to its host, which keeps every session's committed
    /// values so that they outlive the runtime (contract §7); an agent core may persist
    /// them as they come. Never block in it. The default does nothing.
    fn committed(&self, _: &CellId, _: &StoredValues) {}

    /// Whether this delegate keeps the journals of the session's cells
    /// ([`Self::journal`]): a runtime process's delegate does, for its host. Asked once per
    /// cell. The default is `false`, and then no entry is made for it.
    fn keeps_journals(&self) -> bool {
        false
    }

    /// A cell's journal gained `entry` (CONTRACT §7, "Durable cells"). Called on the
    /// session's delegate, in the order of the cell's life, and (for
    /// [`crate::journal::JournalEntry::Started`]) in order with [`Self::committed`]. Never
    /// block in it. The default does nothing.
    fn journal(&self, _: &CellId, _: crate::journal::JournalEntry) {}

    /// Whether `call` must wait for a person's approval before [`Self::invoke_tool`] runs
    /// it, and why (the reason the approver and the model read). Asked once per call, by
    /// a session that keeps approvals (a stored session, a front with a state store); a
    /// session with nowhere to keep them never asks. It may decide from the input. Never
    /// block in it. The default: no approval.
    fn approval(&self, _: &NestedToolCall) -> Option<crate::approval::ApprovalNeed> {
        None
    }
}

/// What a call gets when its delegate says it needs a person's approval and nothing in
/// front of the delegate keeps approvals (the session has no store, or the front none):
/// it is refused, never run unapproved. `None` when no approval is needed (an approval
/// gate in front answers that it handled the need). Every session asks this before it
/// hands a call to its delegate.
pub fn refused_unapproved(
    delegate: &dyn CodeModeSessionDelegate,
    call: &NestedToolCall,
) -> Option<ToolError> {
    delegate
        .approval(call)
        .map(|_| ToolError::new(texts::approval_unkept(&call.tool_name)))
}

/// A delegate in front of another (a store's, a tracer's): every method of
/// [`CodeModeSessionDelegate`] goes to [`Self::inner`] unless the layer overrides it, so
/// that a method the delegate trait gains reaches the agent core's delegate through every
/// layer, with no forwarding written in each. Implement this, not the delegate trait: a
/// layer is a delegate.
pub trait DelegateLayer: Send + Sync + 'static {
    /// The delegate this layer stands in front of.
    fn inner(&self) -> &dyn CodeModeSessionDelegate;

    /// [`CodeModeSessionDelegate::invoke_tool`]; by default the inner delegate's.
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        self.inner().invoke_tool(call, cancel)
    }

    /// [`CodeModeSessionDelegate::notify`]; by default the inner delegate's.
    fn notify(
        &self,
        cell_id: CellId,
        text: String,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        self.inner().notify(cell_id, text, cancel)
    }

    /// [`CodeModeSessionDelegate::cell_closed`]; by default the inner delegate's.
    fn cell_closed(&self, cell_id: &CellId) {
        self.inner().cell_closed(cell_id);
    }

    /// [`CodeModeSessionDelegate::committed`]; by default the inner delegate's.
    fn committed(&self, cell_id: &CellId, writes: &StoredValues) {
        self.inner().committed(cell_id, writes);
    }

    /// [`CodeModeSessionDelegate::keeps_journals`]; by default the inner delegate's.
    fn keeps_journals(&self) -> bool {
        self.inner().keeps_journals()
    }

    /// [`CodeModeSessionDelegate::journal`]; by default the inner delegate's.
    fn journal(&self, cell_id: &CellId, entry: crate::journal::JournalEntry) {
        self.inner().journal(cell_id, entry);
    }

    /// [`CodeModeSessionDelegate::approval`]; by default the inner delegate's.
    fn approval(&self, call: &NestedToolCall) -> Option<crate::approval::ApprovalNeed> {
        self.inner().approval(call)
    }
}

impl<L: DelegateLayer> CodeModeSessionDelegate for L {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        DelegateLayer::invoke_tool(self, call, cancel)
    }

    fn notify(
        &self,
        cell_id: CellId,
        text: String,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        DelegateLayer::notify(self, cell_id, text, cancel)
    }

    fn cell_closed(&self, cell_id: &CellId) {
        DelegateLayer::cell_closed(self, cell_id);
    }

    fn committed(&self, cell_id: &CellId, writes: &StoredValues) {
        DelegateLayer::committed(self, cell_id, writes);
    }

    fn keeps_journals(&self) -> bool {
        DelegateLayer::keeps_journals(self)
    }

    fn journal(&self, cell_id: &CellId, entry: crate::journal::JournalEntry) {
        DelegateLayer::journal(self, cell_id, entry);
    }

    fn approval(&self, call: &NestedToolCall) -> Option<crate::approval::ApprovalNeed> {
        DelegateLayer::approval(self, call)
    }
}

/// Something that opens sessions. One per place cells run: `code_mode::InProcessProvider`
/// (this process), `code_mode_host::ProcessProvider` (a runtime process it spawns) and
/// `code_mode_host::RemoteProvider` (runtimes elsewhere, over TCP). An agent core written
/// against this trait swaps where its cells run with one line.
pub trait CodeModeProvider: Send + Sync {
    /// The session this provider hands out.
    type Session: CodeModeSession + 'static;

    /// A new session reporting to `delegate`, with no stored values. Opening is cheap and
    /// never fails: whatever the session needs (a thread, a process, a connection) is
    /// started by its first call, which reports what went wrong as a [`SessionError`].
    fn open_session(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> Self::Session {
        self.open_session_with_values(delegate, options, StoredValues::new())
    }

    /// [`Self::open_session`] with `stored_values` as the session's committed map: an agent
    /// core that resumes a conversation after its own restart restores what
    /// [`CodeModeSession::stored_values`] gave it. Values are JSON text; one that is not
    /// valid JSON makes `load` of its key throw. A map beyond the session's cap is kept
    /// whole, and only later `store`s are refused.
    fn open_session_with_values(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> Self::Session;
}

/// A code-mode session: one agent thread's cells, stored values and cancellation root.
pub trait CodeModeSession: Send + Sync {
    /// Starts a cell and waits for its first observation (the yield time counts from the
    /// cell's start). The same as [`Self::execute_with`] without hooks.
    ///
    /// Cancel safety: dropping the future does not stop the cell and consumes none of its
    /// output; the next `wait` on the cell's id returns it. The id is lost to the caller
    /// (unless an admission hook got it), but cells are numbered `1`, `2`, ... per session.
    fn execute(&self, request: ExecRequest) -> BoxFuture<'_, Result<StartedCell, SessionError>> {
        self.execute_with(request, ExecHooks::default())
    }

    /// [`Self::execute`] with hooks (contract 8.4, 8.5): a delegate for this cell only, a
    /// preempt signal for its first observation, and a hook told the cell's id as soon as
    /// it is admitted.
    ///
    /// Cancel safety: as `execute`.
    fn execute_with(
        &self,
        request: ExecRequest,
        hooks: ExecHooks,
    ) -> BoxFuture<'_, Result<StartedCell, SessionError>>;

    /// Observes a running cell: returns at its completion, at `yield_control()`, at the
    /// yield time, or at its termination. An unknown id gives [`CellResponse::missing`].
    /// The same as [`Self::wait_with`] without a preempt signal.
    ///
    /// Cancel safety: dropping the future consumes no output and frees the observer slot.
    fn wait(&self, request: WaitRequest) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        self.wait_with(request, None)
    }

    /// [`Self::wait`] that also returns `Yielded` with the output so far as soon as
    /// `preempt` fires (contract 8.4); the cell keeps running.
    ///
    /// Cancel safety: as `wait`.
    fn wait_with(
        &self,
        request: WaitRequest,
        preempt: Option<CancellationToken>,
    ) -> BoxFuture<'_, Result<CellResponse, SessionError>>;

    /// Terminates every cell of the session that is still running (the user interrupted
    /// the turn) and returns their ids, once their JS has stopped and their callbacks were
    /// cleaned up. Each one's `Terminated` response goes to its observer, or to the next
    /// `wait` on it. Cells that already completed keep their results; the session stays
    /// open (contract 8.4).
    ///
    /// Cancel safety: dropping the future does not stop the terminations.
    fn interrupt(&self) -> BoxFuture<'_, Result<Vec<CellId>, SessionError>>;

    /// Terminates a cell and returns `Terminated` with the output not yet returned, once
    /// its JS has stopped and its in-flight callbacks were cancelled. A cell that had
    /// already completed returns its completion instead.
    ///
    /// Cancel safety: dropping the future does not stop the termination.
    fn terminate(&self, cell_id: CellId) -> BoxFuture<'_, Result<CellResponse, SessionError>>;

    /// Like `execute`, but returns at the cell's first pending frontier (contract 3.4).
    ///
    /// Cancel safety: as `execute`.
    fn execute_to_pending(
        &self,
        request: ExecRequest,
    ) -> BoxFuture<'_, Result<StartedPendingCell, SessionError>>;

    /// Unfreezes the cell (applying queued tool answers and timer firings) and returns at
    /// its next frontier or completion.
    ///
    /// Cancel safety: as `wait`.
    fn wait_to_pending(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<PendingOutcome, SessionError>>;

    /// Shuts the session down: refuses new cells from now on, stops every admitted cell
    /// (CPU-bound ones included), waits for their cleanup, and reports each one closed.
    ///
    /// Cancel safety: the shutdown proceeds even if the future is dropped; a later call
    /// waits for it again.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// A snapshot of the session's committed stored values: every key finished cells
    /// stored, with its JSON text (contract section 4); writes of running cells are not
    /// in it. Open a session with it ([`CodeModeProvider::open_session_with_values`]) to
    /// restore it. For a session in a runtime process, this is the host's copy: no round
    /// trip, and it survives the runtime (contract §7).
    fn stored_values(&self) -> StoredValues;
}

#[cfg(test)]
mod tests {
    /// A delegate that records which of its methods were called.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<&'static str>>);

    impl Recording {
        fn saw(&self, what: &'static str) {
            self.0
                .lock()
                .expect("a test lock is never poisoned")
                .push(what);
        }
    }

    impl CodeModeSessionDelegate for Recording {
        fn invoke_tool(
            &self,
            _: NestedToolCall,
            _: CancellationToken,
        ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
            self.saw("invoke_tool");
            Box::pin(std::future::ready(Ok(JsonText::new("1"))))
        }
        fn notify(&self, _: CellId, _: String, _: CancellationToken) -> BoxFuture<'_, ()> {
            self.saw("notify");
            Box::pin(std::future::ready(()))
        }
        fn cell_closed(&self, _: &CellId) {
            self.saw("cell_closed");
        }
        fn committed(&self, _: &CellId, _: &StoredValues) {
            self.saw("committed");
        }
        fn keeps_journals(&self) -> bool {
            self.saw("keeps_journals");
            true
        }
        fn journal(&self, _: &CellId, _: crate::journal::JournalEntry) {
            self.saw("journal");
        }
        fn approval(&self, _: &NestedToolCall) -> Option<crate::ApprovalNeed> {
            self.saw("approval");
            Some(crate::ApprovalNeed::because("r"))
        }
    }

    /// A layer that overrides nothing.
    struct Bare(Recording);

    impl DelegateLayer for Bare {
        fn inner(&self) -> &dyn CodeModeSessionDelegate {
            &self.0
        }
    }

    #[test]
    fn a_layer_passes_every_method_it_does_not_override_to_its_inner_delegate() {
        let layer = Bare(Recording::default());
        let delegate: &dyn CodeModeSessionDelegate = &layer;
        let cell = CellId::new(1);
        let call = NestedToolCall {
            cell_id: cell.clone(),
            call_id: CallId::new(1),
            tool_name: "t".to_owned(),
            kind: crate::ToolKind::Function,
            input: None,
            exec_call_id: None,
        };
        assert_eq!(
            delegate.approval(&call),
            Some(crate::ApprovalNeed::because("r"))
        );
        let answered =
            futures_executor_block_on(delegate.invoke_tool(call, CancellationToken::new()));
        assert_eq!(
            answered.map(|text| text.as_str().to_owned()),
            Ok("1".to_owned())
        );
        futures_executor_block_on(delegate.notify(
            cell.clone(),
            "n".into(),
            CancellationToken::new(),
        ));
        delegate.cell_closed(&cell);
        delegate.committed(&cell, &StoredValues::default());
        assert!(delegate.keeps_journals());
        delegate.journal(&cell, crate::journal::JournalEntry::Started { seed: 1 });
        assert_eq!(
            *layer.0.0.lock().expect("a test lock is never poisoned"),
            [
                "approval",
                "invoke_tool",
                "notify",
                "cell_closed",
                "committed",
                "keeps_journals",
                "journal"
            ]
        );
    }

    /// Polls a future that is ready at once.
    fn futures_executor_block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("not ready at once"),
        }
    }

    use super::*;

    #[test]
    fn yield_time_gets_grace_at_ten_seconds_and_is_capped() {
        assert_eq!(effective_yield_time_ms(9_999, None), 9_999);
        assert_eq!(effective_yield_time_ms(10_000, None), 11_000);
        assert_eq!(effective_yield_time_ms(30_000, None), 31_000);
        assert_eq!(effective_yield_time_ms(10_000, Some(10_000)), 10_000);
        assert_eq!(effective_yield_time_ms(5_000, Some(10_000)), 5_000);
        assert_eq!(effective_yield_time_ms(10_000, Some(0)), 0);
        assert_eq!(effective_yield_time_ms(u64::MAX, None), u64::MAX);
    }

    #[test]
    fn errors_use_the_contract_strings() {
        assert_eq!(
            SessionError::ShuttingDown.to_string(),
            "code mode session is shutting down"
        );
        assert_eq!(
            SessionError::BusyObserver("1".into()).to_string(),
            "exec cell 1 already has an active observer"
        );
        assert_eq!(
            SessionError::AlreadyTerminating("1".into()).to_string(),
            "exec cell 1 is already terminating"
        );
        let missing = CellResponse::missing("7");
        assert_eq!(missing.error_text(), Some("exec cell 7 not found"));
        assert!(missing.is_missing_cell());
        assert!(missing.content_items().is_empty());
    }
}
