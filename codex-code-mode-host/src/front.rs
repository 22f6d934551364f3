//! The host's state, whatever the transport: Codex's sessions over our sessions.
//!
//! [`Front`] owns what Codex's protocol names and ours does not: the session ids, the cell
//! ids `1`, `2`, ... per session (ours gain a generation prefix after a runtime loss), the
//! execution ids and their preempt signals, the wait ids and their cancellation, and the
//! pending tool invocations by their UUID. Each Codex session is one session of the shared
//! [`Runtimes`]: a local runtime process ([`code_mode_host::ProcessProvider`]) or a pool of
//! remote runtimes ([`code_mode_host::RemoteProvider`]); when a runtime dies only the cells running there end: the session
//! keeps its stored values (the host crate holds them) and goes on at its next exec.
//!
//! The gRPC service (`grpc`) and the JSON protocol (`json`) both drive this module and
//! only translate messages. Outcomes are bounded here ([`crate::bound`]) when the session
//! asked the host to truncate.

use crate::admission::{self, Admission, Counted};
use crate::bound;
use crate::dealer::{Dealer, Dealt, Subscription};
pub use crate::state::Owner;
use crate::state::{
    Checkpointed, CodexState, KeptCatalog, KeptCatalogTool, KeptCell, KeptSession, KeptTool, Orphan,
};
use code_mode_host::protocol::model::replace_lone_surrogate_escapes;
use code_mode_host::protocol::session::BoxFuture;
use code_mode_host::protocol::{
    CellFailure, CellId, CellLimits, CellResponse, CodeModeProvider, CodeModeSessionDelegate,
    ContentItem, ExecHooks, ExecRequest, JsonText, NestedToolCall, SessionError, SessionOptions,
    StoredValues, Surface, ToolDefinition, ToolError, ToolKind, WaitRequest,
};
use code_mode_host::{
    BINARY_ENV, BINARY_NAME, DurableSession, HandshakeError, HostError, RemoteError, Runtimes,
    SpawnError,
};
use code_mode_internal::sync::lock;
use code_mode_state::{CallRecord, SessionRecord};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The yield time of an `Execute` that names none (codex always sends one).
pub const DEFAULT_EXEC_YIELD_MS: u64 = 30_000;

/// The yield time of a `Wait` that names none.
pub const DEFAULT_WAIT_YIELD_MS: u64 = 10_000;

/// Errors of the host's operations, each with the text Codex's own host gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontError {
    #[error("code-mode session ID must be a UUID")]
    InvalidSessionId,
    #[error("unknown code-mode session {0}")]
    UnknownSession(String),
    #[error("code-mode session ID `{0}` is already open")]
    SessionAlreadyOpen(String),
    #[error("code-mode tool call ID must not be empty")]
    EmptyToolCallId,
    #[error("code-mode execution ID `{0}` was reused")]
    ExecutionReused(String),
    #[error("unknown code-mode output truncation mode")]
    UnknownTruncation,
    #[error("missing code-mode observation ID")]
    MissingObservationId,
    #[error("code-mode wait was cancelled")]
    WaitCancelled,
    #[error("unknown code-mode tool invocation {0}")]
    UnknownInvocation(String),
    #[error("code-mode tool invocation {0} has no result")]
    MissingResult(String),
    #[error("the tool list of this execution is not valid: {0}")]
    InvalidTools(String),
    /// Catalog revision 0 (Codex 0.171's revisions start at 1).
    #[error("invalid code-mode catalog revision")]
    InvalidCatalogRevision,
    /// A revision sent without its tools that is not the session's latest.
    #[error("unknown code-mode catalog revision")]
    UnknownCatalogRevision,
    /// The session's latest revision sent again with other tools.
    #[error("conflicting code-mode catalog revision")]
    ConflictingCatalogRevision,
    /// The session refused or could not run the call.
    #[error("{0}")]
    Session(SessionError),
    /// An `Execute`, `Wait` or `Terminate` over the host's bound of requests in flight.
    #[error("{}", admission::TOO_MANY_IN_FLIGHT_REQUESTS)]
    TooManyInFlightRequests,
    /// An `Execute` over the host's cap of active cells.
    #[error("{}", admission::TOO_MANY_ACTIVE_CELLS)]
    TooManyActiveCells,
    /// An `OpenSession` over the connection's cap of open sessions.
    #[error("this connection already has {0} open code-mode sessions; close one first")]
    TooManySessions(usize),
    /// The state directory could not keep what the answer depends on: the call is refused
    /// rather than answered with what a restart could not give back.
    #[error("code-mode state could not be written: {0}")]
    StateUnavailable(String),
    /// The state directory is near its size cap: a new session is refused (the figures
    /// and what frees room are in the text).
    #[error("{0}")]
    StateFull(String),
    /// No runtime can be started: what is wrong, what to do about it, and the full
    /// cause, in that order (codex shows the model the start of the text, cut).
    #[error("code-mode runtime unavailable: {summary}. Fix: {fix}. Details: {cause}")]
    RuntimeUnavailable {
        summary: String,
        fix: String,
        cause: String,
    },
}

impl FrontError {
    /// A session's error as the front reports it: a runtime that could not be started
    /// becomes [`FrontError::RuntimeUnavailable`] with its fix.
    pub fn from_session(error: SessionError) -> Self {
        match error
            .runtime_cause()
            .and_then(|cause| cause.downcast_ref::<HostError>())
        {
            Some(cause) => runtime_unavailable(cause),
            None => FrontError::Session(error),
        }
    }
}

/// Why no runtime can be started, with the fix for that cause.
pub fn runtime_unavailable(error: &HostError) -> FrontError {
    let log = "set CODEX_CODE_MODE_HOST_LOG=info to see the host's and the runtime's log";
    let (summary, fix) = match error {
        // A host that carries the runtime looks for another only where it is named.
        HostError::BinaryNotFound(_) if cfg!(feature = "runtime") => (
            format!("the `{BINARY_NAME}` named by --runtime or {BINARY_ENV} was not found"),
            format!(
                "unset {BINARY_ENV} (and drop --runtime) so that this host runs the runtime it carries, or name an executable `{BINARY_NAME}`; the next session looks again"
            ),
        ),
        HostError::BinaryNotFound(_) => (
            format!("`{BINARY_NAME}` was not found"),
            format!(
                "put `{BINARY_NAME}` (it ships with codex-code-mode-host) next to {}, or set {BINARY_ENV} to its path; `codex-code-mode-host install` does this for a codex install, and the next session looks again",
                std::env::current_exe()
                    .map_or_else(|_| "this host".to_owned(), |exe| exe.display().to_string())
            ),
        ),
        HostError::Spawn(SpawnError::Spawn { binary, .. }) => (
            format!("{} could not be started", binary.display()),
            format!(
                "make it an executable `{BINARY_NAME}` built for this machine, or reinstall with `codex-code-mode-host install`"
            ),
        ),
        HostError::Handshake(HandshakeError::Refused(_) | HandshakeError::Mismatch(_)) => (
            "the runtime speaks another protocol version than this host".to_owned(),
            format!("install the `{BINARY_NAME}` of the same release as codex-code-mode-host"),
        ),
        HostError::Remote(RemoteError::NoRuntime { .. } | RemoteError::Unusable { .. }) => (
            "no remote runtime could take the session".to_owned(),
            "check that the runtimes given with --runtimes are up (`code-mode-bin --listen`) and that this host's --runtimes-ca, --runtimes-cert and --runtimes-key match theirs".to_owned(),
        ),
        HostError::CrashLoop { .. } => (
            "the runtime keeps failing at start".to_owned(),
            format!("the host tries again after a pause; {log}"),
        ),
        _ => ("the runtime fails at start".to_owned(), log.to_owned()),
    };
    FrontError::RuntimeUnavailable {
        summary,
        fix,
        cause: error.to_string(),
    }
}

/// A session's pending-delegate-call limit when its client sets none (codex sends 4096).
pub const DEFAULT_MAX_PENDING_DELEGATE_CALLS: usize = 4096;

/// How a session's outcomes are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// The client truncates (codex's modes 0 and 1): outcomes go out whole.
    Client,
    /// The host truncates ("bounded-output-v1", codex's mode 2).
    Server,
}

/// Limits a client sets for every cell of a session (`cell_execution_limits`); zero or
/// absent means our default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimits {
    pub max_yield_time_ms: Option<u64>,
    pub max_heap_size_bytes: Option<u64>,
}

/// How an observation of a cell ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Yielded,
    Terminated,
    /// `error_text` is set when the script failed.
    Completed {
        error_text: Option<String>,
    },
}

/// What an `Execute`, `Wait` or `Terminate` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub cell_id: String,
    pub items: Vec<ContentItem>,
    pub status: Status,
    /// Measured by the host from the call's arrival to its answer.
    pub host_duration: Duration,
}

/// How long a result waited in the host before an observation took it, as both protocols
/// report it: always zero here, since a cell's answer goes to the observation waiting
/// for it as it is made and an answer nobody took stays with the cell, not in the host.
pub const RESULT_BUFFERED_FOR: Duration = Duration::ZERO;

/// A `Wait` or `Terminate` answer: a live cell, or an id the session does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Live(Outcome),
    Missing(Outcome),
}

/// A tool's real name, as codex names it (the JS identifier is separate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolName {
    pub name: String,
    pub namespace: Option<String>,
}

/// One tool enabled for an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnabledTool {
    /// The identifier on `tools`.
    pub js_name: String,
    pub tool_name: ToolName,
    pub description: String,
    pub kind: ToolKind,
}

/// An `Execute` as the front takes it.
#[derive(Debug, Clone, Default)]
pub struct Execution {
    pub execution_id: String,
    pub tool_call_id: String,
    pub source: String,
    pub tools: Vec<EnabledTool>,
    /// Codex 0.171's tool-catalog revision: with tools, they are the session's catalog
    /// under it; without, the catalog it names is used (see [`Front::claim_execution`]).
    pub catalog_revision: Option<u64>,
    pub yield_time_ms: Option<u64>,
    pub max_output_tokens: Option<u64>,
    /// The tools as the cell gets them, resolved by [`Front::claim_execution`] (the
    /// catalog revision's, checked and kept there, under one lock).
    pub resolved: Option<(Arc<ToolMap>, Arc<[ToolDefinition]>)>,
}

/// A nested tool call for the client to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub session_id: String,
    pub execution_id: String,
    pub cell_id: String,
    pub invocation_id: String,
    pub runtime_tool_call_id: String,
    pub tool_name: ToolName,
    pub kind: ToolKind,
    pub input_json: String,
    pub sequence: u64,
    /// The W3C trace context of the `Execute` span of the cell (none when not traced).
    pub traceparent: Option<String>,
    /// Whether its call ended (answered, cancelled, its cell gone): an invocation no
    /// subscription took by then is dealt to none.
    pub ended: CallEnded,
}

/// Whether an [`Invocation`]'s call ended; shared by the invocation's copies. Not part of
/// what invocations are compared by.
#[derive(Debug, Clone, Default)]
pub struct CallEnded(Arc<std::sync::atomic::AtomicBool>);

impl CallEnded {
    pub fn end(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_ended(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl PartialEq for CallEnded {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CallEnded {}

/// What a session streams to its client besides tool calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Notification {
        notification_id: String,
        execution_id: String,
        cell_id: String,
        call_id: String,
        text: String,
    },
    CellClosed {
        execution_id: String,
        cell_id: String,
        tool_call_count: u64,
    },
}

/// The answer to a tool invocation.
pub type ToolResult = Result<JsonText, ToolError>;

/// A receiver handed out once at a time: it goes back to its slot when the lease ends, so
/// that a client whose stream broke can subscribe again and misses nothing. An item taken
/// but not sent can be given back: the next `recv`, of this lease or a later one, gets it
/// first.
pub struct Lease<T> {
    receiver: Option<mpsc::UnboundedReceiver<T>>,
    slot: Arc<Mutex<Option<mpsc::UnboundedReceiver<T>>>>,
    unsent: Arc<Mutex<VecDeque<T>>>,
}

impl<T> Lease<T> {
    pub async fn recv(&mut self) -> Option<T> {
        if let Some(item) = lock(&self.unsent).pop_front() {
            return Some(item);
        }
        self.receiver.as_mut()?.recv().await
    }

    /// `item`, taken by [`Lease::recv`], was not sent: it comes first again.
    pub fn give_back(&self, item: T) {
        lock(&self.unsent).push_front(item);
    }
}

/// What a session stream takes its items from: a [`Lease`] (the event stream) or a
/// [`Subscription`] (tool invocations); an item taken and not sent is given back.
pub trait Source<T>: Send + Sync + 'static {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<T>> + Send;
    fn give_back(&self, item: T);
}

impl<T: Send + 'static> Source<T> for Lease<T> {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<T>> + Send {
        Lease::recv(self)
    }
    fn give_back(&self, item: T) {
        Lease::give_back(self, item);
    }
}

impl Source<Invocation> for Subscription<Invocation> {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Invocation>> + Send {
        Subscription::recv(self)
    }
    fn give_back(&self, item: Invocation) {
        Subscription::give_back(self, item);
    }
}

impl Dealt for Invocation {
    type Name = ToolName;
    fn name(&self) -> &ToolName {
        &self.tool_name
    }

    fn live(&self) -> bool {
        !self.ended.is_ended()
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.take()
            && let Ok(mut slot) = self.slot.lock()
        {
            *slot = Some(receiver);
        }
    }
}

/// A channel whose receiver is leased ([`Lease`]).
pub(crate) struct Leased<T> {
    pub(crate) sender: mpsc::UnboundedSender<T>,
    slot: Arc<Mutex<Option<mpsc::UnboundedReceiver<T>>>>,
    unsent: Arc<Mutex<VecDeque<T>>>,
}

impl<T> Leased<T> {
    pub(crate) fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender,
            slot: Arc::new(Mutex::new(Some(receiver))),
            unsent: Arc::default(),
        }
    }

    pub(crate) fn lease(&self) -> Option<Lease<T>> {
        let receiver = lock(&self.slot).take()?;
        Some(Lease {
            receiver: Some(receiver),
            slot: self.slot.clone(),
            unsent: self.unsent.clone(),
        })
    }
}

/// One cell as the front knows it.
struct Cell {
    execution_id: String,
    tool_call_id: String,
    runtime_id: CellId,
    tools: Arc<ToolMap>,
    tool_calls: u64,
    /// `cell_closed` went out.
    closed_sent: bool,
    /// The cell's place among the host's active cells, given back when it closes.
    active: Option<Counted>,
    /// The span of the `Execute` that started it: its nested calls' spans are children
    /// of it, and each call streamed to the client carries it as `traceparent`.
    trace: code_mode_trace::Parent,
}

/// An invocation the client answers: one of this process's, or one of a cell an earlier
/// process ran.
enum Waiting {
    Live(PendingInvocation),
    Restored(code_mode_host::RestoredCall),
}

impl Waiting {
    /// The cell (our session's id of it) and the call.
    fn call(&self) -> (CellId, code_mode_host::protocol::CallId) {
        match self {
            Waiting::Live(pending) => (pending.runtime_id.clone(), pending.call),
            Waiting::Restored(restored) => (restored.call.cell_id.clone(), restored.call.call_id),
        }
    }

    fn answer(self, result: ToolResult) {
        match self {
            // The cell may have stopped wanting it meanwhile; the answer is then dropped.
            Waiting::Live(pending) => {
                let _ = pending.answer.send(result);
            }
            Waiting::Restored(restored) => restored.answer(result),
        }
    }
}

/// `waiting` waits for its answer again under `invocation_id` (its answer could not be
/// recorded).
fn put_back_invocation(session: &FrontSession, invocation_id: &str, waiting: Waiting) {
    let mut state = lock(&session.state);
    match waiting {
        Waiting::Live(pending) => {
            state
                .pending_calls
                .insert(invocation_id.to_owned(), pending);
        }
        Waiting::Restored(restored) => {
            state
                .restored_calls
                .insert(invocation_id.to_owned(), restored);
        }
    }
}

/// The invocation `invocation_id` of `session`, no longer waiting.
fn take_invocation(session: &FrontSession, invocation_id: &str) -> Result<Waiting, FrontError> {
    let mut state = lock(&session.state);
    if let Some(pending) = state.pending_calls.remove(invocation_id) {
        return Ok(Waiting::Live(pending));
    }
    state
        .restored_calls
        .remove(invocation_id)
        .map(Waiting::Restored)
        .ok_or_else(|| FrontError::UnknownInvocation(invocation_id.to_owned()))
}

/// A tool invocation streamed to the client and waiting for its answer.
struct PendingInvocation {
    /// The cell (our session's id of it) and the call.
    runtime_id: CellId,
    call: code_mode_host::protocol::CallId,
    answer: oneshot::Sender<ToolResult>,
}

impl Cell {
    /// Its nested call `call` as the tool invocation streamed to the client (the cell's
    /// count of calls goes up).
    fn invocation(
        &mut self,
        session_id: &str,
        codex_id: String,
        call: &NestedToolCall,
        invocation_id: String,
    ) -> Invocation {
        self.tool_calls += 1;
        let (tool_name, kind) = self.tools.get(&call.tool_name).cloned().unwrap_or((
            ToolName {
                name: call.tool_name.clone(),
                namespace: None,
            },
            call.kind,
        ));
        // A call with no argument carries an empty input, as codex's host sends it. Lone
        // surrogate halves become U+FFFD, as everywhere text leaves a cell: a strict JSON
        // parser on the client's side refuses them.
        let input_json = call
            .input
            .as_ref()
            .map(|text| replace_lone_surrogate_escapes(text.as_str()).into_owned())
            .unwrap_or_default();
        Invocation {
            session_id: session_id.to_owned(),
            execution_id: self.execution_id.clone(),
            cell_id: codex_id,
            invocation_id,
            runtime_tool_call_id: call.call_id.to_string(),
            tool_name,
            kind,
            input_json,
            sequence: self.tool_calls,
            traceparent: self.trace.traceparent(),
            ended: CallEnded::default(),
        }
    }
}

#[derive(Default)]
struct SessionState {
    next_cell: u64,
    cells: HashMap<String, Cell>,
    by_runtime_id: HashMap<CellId, String>,
    pending_calls: HashMap<String, PendingInvocation>,
    /// Calls of cells an earlier process ran (with a state directory) that wait for the
    /// client's answer, by invocation id.
    restored_calls: HashMap<String, code_mode_host::RestoredCall>,
    /// Every execution id the session has used (each may be used once); dropped with the
    /// session.
    executions: HashSet<String>,
    /// In-flight executions' preempt signals, by execution id.
    preempts: HashMap<String, CancellationToken>,
    /// Pending waits' cancellation and preempt signals, by wait id.
    waits: HashMap<String, (CancellationToken, CancellationToken)>,
}

/// One Codex session.
pub struct FrontSession {
    id: String,
    truncation: Truncation,
    /// The limits and pending-call bound it was opened with, as the client gave them
    /// (kept in a state directory).
    limits: ClientLimits,
    max_pending_asked: u64,
    /// Tool calls of the session's cells waiting on the client at once (codex's
    /// `max_pending_delegate_calls`).
    max_pending_delegate_calls: usize,
    session: Arc<dyn DurableSession>,
    state: Mutex<SessionState>,
    events: Leased<SessionEvent>,
    invocations: Arc<Dealer<Invocation>>,
    /// Ends the session's streams when the session is closed.
    closed: CancellationToken,
    /// The client identity that opened it (kept in a state directory).
    owner: Option<Owner>,
    /// The tools the latest execution enabled, as they were passed on.
    enabled: Mutex<Option<EnabledSet>>,
    /// The session's tool catalog under its latest revision (Codex 0.171's host keeps
    /// only the latest), and its set as passed on.
    catalog: Mutex<Option<(u64, EnabledSet)>>,
}

/// A cell's tools by their name on `tools`: the client's name and kind of each.
pub type ToolMap = HashMap<String, (ToolName, ToolKind)>;

/// The tools an execution enabled, as the front passes them on. A client enables the same
/// tools exec after exec (codex sends the whole list every time), so an equal list takes
/// the session's last one: the same map, the same definitions and so the tool set the
/// runtime has registered, with nothing built or hashed again (for 128 tools, 384 strings
/// copied and the list hashed, in every exec).
#[derive(Clone)]
struct EnabledSet {
    tools: Arc<Vec<EnabledTool>>,
    map: Arc<ToolMap>,
    definitions: Arc<[ToolDefinition]>,
}

/// Codex 0.171's host's rules for an execution's catalog `revision` and `tools` against
/// the session's latest revision `kept`: revision 0 is invalid; a revision without tools
/// must be the latest; the latest sent again must come with the same tools.
fn check_catalog(
    revision: Option<u64>,
    tools: &[EnabledTool],
    kept: Option<&(u64, EnabledSet)>,
) -> Result<(), FrontError> {
    let Some(revision) = revision else {
        return Ok(());
    };
    let latest = kept.filter(|(latest, _)| *latest == revision);
    match (revision, tools.is_empty(), latest) {
        (0, _, _) => Err(FrontError::InvalidCatalogRevision),
        (_, true, None) => Err(FrontError::UnknownCatalogRevision),
        (_, false, Some((_, set))) if *set.tools != tools => {
            Err(FrontError::ConflictingCatalogRevision)
        }
        _ => Ok(()),
    }
}

impl FrontSession {
    /// `tools` (or, under a catalog revision and without tools, the catalog's) as the
    /// cell gets them (see [`EnabledSet`]); a tool without a name is refused, and a
    /// revision as [`check_catalog`] says.
    fn enabled_set(
        &self,
        revision: Option<u64>,
        tools: Vec<EnabledTool>,
    ) -> Result<(Arc<ToolMap>, Arc<[ToolDefinition]>), FrontError> {
        let Some(revision) = revision else {
            return self.tool_set(tools).map(|set| (set.map, set.definitions));
        };
        let mut catalog = lock(&self.catalog);
        check_catalog(Some(revision), &tools, catalog.as_ref())?;
        if tools.is_empty()
            && let Some((_, set)) = &*catalog
        {
            // A known revision: nothing of the list is read, built or compared.
            tracing::debug!(revision, "an exec's tools taken from the session's catalog");
            return Ok((Arc::clone(&set.map), Arc::clone(&set.definitions)));
        }
        let set = self.tool_set(tools)?;
        tracing::debug!(
            revision,
            tools = set.tools.len(),
            "an exec's tools kept as the session's catalog"
        );
        *catalog = Some((revision, set.clone()));
        Ok((set.map, set.definitions))
    }

    /// The session's catalog, as kept in a state directory.
    fn kept_catalog(&self) -> Option<KeptCatalog> {
        let catalog = lock(&self.catalog);
        let (revision, set) = catalog.as_ref()?;
        let tools = set
            .tools
            .iter()
            .map(|tool| KeptCatalogTool {
                js_name: tool.js_name.clone(),
                name: tool.tool_name.name.clone(),
                namespace: tool.tool_name.namespace.clone(),
                description: tool.description.clone(),
                freeform: tool.kind == ToolKind::Freeform,
            })
            .collect();
        Some(KeptCatalog {
            revision: *revision,
            tools,
        })
    }

    /// Takes back the catalog a state directory kept.
    fn restore_catalog(&self, kept: &KeptCatalog) {
        let tools = kept
            .tools
            .iter()
            .map(|tool| EnabledTool {
                js_name: tool.js_name.clone(),
                tool_name: ToolName {
                    name: tool.name.clone(),
                    namespace: tool.namespace.clone(),
                },
                description: tool.description.clone(),
                kind: if tool.freeform {
                    ToolKind::Freeform
                } else {
                    ToolKind::Function
                },
            })
            .collect();
        // Kept from a set that was taken once: its tools have names.
        if let Ok(set) = self.tool_set(tools) {
            *lock(&self.catalog) = Some((kept.revision, set));
        }
    }

    /// `tools` as a set: the latest execution's if equal, else made and kept as the latest.
    fn tool_set(&self, tools: Vec<EnabledTool>) -> Result<EnabledSet, FrontError> {
        let mut last = lock(&self.enabled);
        if let Some(set) = &*last
            && *set.tools == tools
        {
            return Ok(set.clone());
        }
        let mut map = HashMap::new();
        let mut definitions = Vec::with_capacity(tools.len());
        for tool in &tools {
            if tool.js_name.is_empty() {
                return Err(FrontError::InvalidTools(
                    "an enabled tool has no name".to_owned(),
                ));
            }
            map.insert(tool.js_name.clone(), (tool.tool_name.clone(), tool.kind));
            definitions.push(ToolDefinition::new(
                tool.js_name.clone(),
                tool.description.clone(),
                tool.kind,
            ));
        }
        let set = EnabledSet {
            tools: Arc::new(tools),
            map: Arc::new(map),
            definitions: definitions.into(),
        };
        *last = Some(set.clone());
        Ok(set)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Fires when the session is closed: its streams end then.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// The session's event stream (one lease at a time).
    pub fn events(&self) -> Option<Lease<SessionEvent>> {
        self.events.lease()
    }

    /// A subscription to the session's tool invocations: those of the tools `filter`
    /// names (every tool if none), dealt round-robin among its subscriptions
    /// ([`crate::dealer`]).
    pub fn invocations(&self, filter: Vec<ToolName>) -> Subscription<Invocation> {
        self.invocations.subscribe(filter)
    }

    fn codex_cell(&self, runtime_id: &CellId) -> Option<String> {
        lock(&self.state).by_runtime_id.get(runtime_id).cloned()
    }

    /// Tells the client once that a cell is closed, and forgets the cell when `forget`
    /// (its final outcome was given). A cell the runtime closed without an observer (a
    /// runtime lost under it, a shutdown) stays known, so that a later `Wait` gets what
    /// happened to it from the session instead of "not found".
    fn close_cell(&self, runtime_id: &CellId, forget: bool) {
        let mut state = lock(&self.state);
        let Some(codex_id) = state.by_runtime_id.get(runtime_id).cloned() else {
            return;
        };
        let Some(cell) = state.cells.get_mut(&codex_id) else {
            return;
        };
        if !cell.closed_sent {
            cell.closed_sent = true;
            cell.active = None;
            let _ = self.events.sender.send(SessionEvent::CellClosed {
                execution_id: cell.execution_id.clone(),
                cell_id: codex_id.clone(),
                tool_call_count: cell.tool_calls,
            });
        }
        if forget {
            state.by_runtime_id.remove(runtime_id);
            state.cells.remove(&codex_id);
        }
    }
}

impl Checkpointed for FrontSession {
    /// The session as a state directory keeps it: what Codex's ids map to, our session's
    /// durable state, and the invocations waiting for the client's answer.
    fn durable(&self) -> (SessionRecord, Vec<CallRecord>) {
        let (kept, calls) =
            {
                let state = lock(&self.state);
                let cells = state
                    .cells
                    .iter()
                    .map(|(codex_id, cell)| KeptCell {
                        codex_id: codex_id.clone(),
                        execution_id: cell.execution_id.clone(),
                        tool_call_id: cell.tool_call_id.clone(),
                        runtime_id: cell.runtime_id.to_string(),
                        tools: cell
                            .tools
                            .iter()
                            .map(|(js_name, (name, kind))| KeptTool {
                                js_name: js_name.clone(),
                                name: name.name.clone(),
                                namespace: name.namespace.clone(),
                                freeform: *kind == ToolKind::Freeform,
                            })
                            .collect(),
                        tool_calls: cell.tool_calls,
                    })
                    .collect();
                let waiting =
                    state
                        .pending_calls
                        .iter()
                        .map(|(id, pending)| (id, &pending.runtime_id, pending.call))
                        .chain(state.restored_calls.iter().map(|(id, restored)| {
                            (id, &restored.call.cell_id, restored.call.call_id)
                        }))
                        .map(|(id, cell_id, call)| CallRecord {
                            session: self.id.clone(),
                            cell_id: cell_id.clone(),
                            call,
                            front_id: id.clone(),
                        })
                        .collect();
                let kept = KeptSession {
                    server_truncation: self.truncation == Truncation::Server,
                    max_yield_time_ms: self.limits.max_yield_time_ms,
                    max_heap_size_bytes: self.limits.max_heap_size_bytes,
                    max_pending_delegate_calls: self.max_pending_asked,
                    next_cell: state.next_cell,
                    cells,
                    owner: self.owner.clone(),
                    catalog: self.kept_catalog(),
                };
                (kept, waiting)
            };
        let record = SessionRecord {
            id: self.id.clone(),
            options: serde_json::to_string(&kept).unwrap_or_default(),
            state: self.session.durable_state(),
        };
        (record, calls)
    }
}

/// The session's delegate in the runtime: sends tool calls and events to the client.
struct Delegate {
    session: std::sync::OnceLock<Weak<FrontSession>>,
}

impl Delegate {
    fn front(&self) -> Option<Arc<FrontSession>> {
        self.session.get().and_then(Weak::upgrade)
    }
}

impl CodeModeSessionDelegate for Delegate {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        let Some(front) = self.front() else {
            return Box::pin(std::future::ready(Err(ToolError::cancelled())));
        };
        let invocation_id = uuid::Uuid::new_v4().to_string();
        let (sender, receiver) = oneshot::channel();
        let (invocation, span) = {
            let mut state = lock(&front.state);
            let Some(codex_id) = state.by_runtime_id.get(&call.cell_id).cloned() else {
                return Box::pin(std::future::ready(Err(ToolError::cancelled())));
            };
            if state.pending_calls.len() >= front.max_pending_delegate_calls {
                return Box::pin(std::future::ready(Err(ToolError::new(
                    admission::TOO_MANY_PENDING_DELEGATE_CALLS,
                ))));
            }
            let Some(cell) = state.cells.get_mut(&codex_id) else {
                return Box::pin(std::future::ready(Err(ToolError::cancelled())));
            };
            let invocation = cell.invocation(&front.id, codex_id, &call, invocation_id.clone());
            let span = tracing::info_span!(
                parent: None,
                "code_mode.runtime.invoke_tool",
                cell.id = %invocation.cell_id,
                runtime_tool_call_id = %invocation.runtime_tool_call_id,
                tool_name = %invocation.tool_name.name,
                tool.arguments = tracing::field::Empty,
            );
            if code_mode_trace::capture().arguments {
                span.record(
                    "tool.arguments",
                    code_mode_trace::captured(&invocation.input_json),
                );
            }
            cell.trace.adopt(&span);
            state.pending_calls.insert(
                invocation_id.clone(),
                PendingInvocation {
                    runtime_id: call.cell_id.clone(),
                    call: call.call_id,
                    answer: sender,
                },
            );
            (invocation, span)
        };
        let ended = invocation.ended.clone();
        front.invocations.deal(invocation);
        // The call's span lasts from the call to its answer.
        Box::pin(tracing::Instrument::instrument(
            async move {
                let outcome = tokio::select! {
                    answer = receiver => answer.unwrap_or_else(|_| Err(ToolError::cancelled())),
                    () = cancel.cancelled() => Err(ToolError::cancelled()),
                };
                lock(&front.state).pending_calls.remove(&invocation_id);
                ended.end();
                front.invocations.drop_ended();
                outcome
            },
            span,
        ))
    }

    fn notify(&self, cell_id: CellId, text: String, _: CancellationToken) -> BoxFuture<'_, ()> {
        if let Some(front) = self.front() {
            let state = lock(&front.state);
            if let Some(codex_id) = state.by_runtime_id.get(&cell_id)
                && let Some(cell) = state.cells.get(codex_id)
            {
                let _ = front.events.sender.send(SessionEvent::Notification {
                    notification_id: uuid::Uuid::new_v4().to_string(),
                    execution_id: cell.execution_id.clone(),
                    cell_id: codex_id.clone(),
                    call_id: cell.tool_call_id.clone(),
                    text,
                });
            }
        }
        Box::pin(std::future::ready(()))
    }

    /// Cells that end with an observer were closed by the front already (before their
    /// final outcome, as codex's host orders it); this closes the others (a shutdown, a
    /// runtime lost with its cells).
    fn cell_closed(&self, cell_id: &CellId) {
        if let Some(front) = self.front() {
            front.close_cell(cell_id, false);
        }
    }
}

/// Sessions one connection may have open at once unless told otherwise; an
/// `OpenSession` over it is refused (`RESOURCE_EXHAUSTED`). Codex opens one per thread.
pub const DEFAULT_MAX_SESSIONS_PER_CONNECTION: usize = 256;

/// What every connection's front shares: where cells run and the cell limits that apply
/// where a client sets none.
#[derive(Clone)]
pub struct Settings {
    pub provider: Runtimes,
    pub limits: CellLimits,
    /// The host's bounds, across every connection.
    pub admission: Arc<Admission>,
    /// With `--state-dir`: where sessions are kept across restarts of the host.
    pub state: Option<Arc<CodexState>>,
    /// The connection's client, set per connection by the listener.
    pub owner: Option<Owner>,
    /// Sessions one connection may have open at once.
    pub max_sessions_per_connection: usize,
}

impl Settings {
    /// Our default limits and bounds over `provider`.
    pub fn new(provider: Runtimes) -> Self {
        Self {
            provider,
            limits: CellLimits::default(),
            admission: Arc::new(Admission::default()),
            state: None,
            owner: None,
            max_sessions_per_connection: DEFAULT_MAX_SESSIONS_PER_CONNECTION,
        }
    }
}

/// The host's sessions over one runtime provider.
pub struct Front {
    provider: Runtimes,
    limits: CellLimits,
    admission: Arc<Admission>,
    sessions: Mutex<HashMap<String, Arc<FrontSession>>>,
    state: Option<Arc<CodexState>>,
    owner: Option<Owner>,
    max_sessions: usize,
}

impl Front {
    pub fn new(settings: Settings) -> Self {
        Self {
            provider: settings.provider,
            limits: settings.limits,
            admission: settings.admission,
            sessions: Mutex::new(HashMap::new()),
            state: settings.state,
            owner: settings.owner,
            max_sessions: settings.max_sessions_per_connection,
        }
    }

    /// Whether the front keeps its sessions in a state directory.
    pub fn keeps_state(&self) -> bool {
        self.state.is_some()
    }

    /// With a state directory: `session` as it is now is on disk before an answer that
    /// depends on it goes out. A write that fails (a full disk, say) is tried again for
    /// the keeper's patience, then is the answer's error: what depends on it must not go out.
    pub async fn flush(&self, session: &FrontSession) -> Result<(), FrontError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        state
            .flush(session, self.provider.generations_used())
            .await
            .map_err(FrontError::StateUnavailable)
    }

    /// The `/metrics` page: the trace exporter's counters, and the state store's figures
    /// when the front keeps state.
    pub fn render_metrics(&self) -> String {
        let mut text = code_mode_trace::render_metrics();
        if let Some(state) = &self.state {
            text.push_str(&state.stats().render_metrics());
        }
        text
    }

    pub fn provider(&self) -> &Runtimes {
        &self.provider
    }

    /// A request's place among those in flight, held until it is answered.
    fn in_flight(&self) -> Result<Counted, FrontError> {
        self.admission
            .request()
            .ok_or(FrontError::TooManyInFlightRequests)
    }

    /// Whether a runtime runs or can be started now (it is started if none runs); the
    /// cause and its fix when not.
    pub async fn runtime_ready(&self) -> Result<(), FrontError> {
        self.provider
            .start()
            .await
            .map_err(|error| runtime_unavailable(&error))
    }

    /// Opens a session under a UUID the host makes (gRPC).
    pub async fn open_session_with_uuid(
        &self,
        truncation: Truncation,
        limits: ClientLimits,
        max_pending_delegate_calls: u64,
    ) -> Result<Arc<FrontSession>, FrontError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.open_session(id, truncation, limits, max_pending_delegate_calls)
            .await
    }

    /// Opens a session under the client's `id` (the JSON protocol); an id already open
    /// is refused. A `max_pending_delegate_calls` of zero keeps the default. A session
    /// that could run nothing (see [`Runtimes::able`]) is refused with the cause and its
    /// fix ([`FrontError::RuntimeUnavailable`]); one opened while its runtime starts does
    /// not wait for it (its first call does, and fails the same way if the start does).
    pub async fn open_session(
        &self,
        id: String,
        truncation: Truncation,
        limits: ClientLimits,
        max_pending_delegate_calls: u64,
    ) -> Result<Arc<FrontSession>, FrontError> {
        self.provider
            .able()
            .await
            .map_err(|error| runtime_unavailable(&error))?;
        let mut sessions = lock(&self.sessions);
        if sessions.contains_key(&id) || self.state.as_ref().is_some_and(|state| state.is_kept(&id))
        {
            return Err(FrontError::SessionAlreadyOpen(id));
        }
        if sessions.len() >= self.max_sessions {
            return Err(FrontError::TooManySessions(self.max_sessions));
        }
        if let Some(state) = &self.state {
            state.admit().map_err(FrontError::StateFull)?;
        }
        let front = self.new_session(
            id.clone(),
            truncation,
            limits,
            max_pending_delegate_calls,
            StoredValues::new(),
        );
        sessions.insert(id, front.clone());
        Ok(front)
    }

    /// A session of this front, opened with what a client asked for (or what an earlier
    /// process kept: its stored values).
    fn new_session(
        &self,
        id: String,
        truncation: Truncation,
        limits: ClientLimits,
        max_pending_delegate_calls: u64,
        stored: StoredValues,
    ) -> Arc<FrontSession> {
        let mut cell_limits = self.limits;
        if let Some(heap) = limits.max_heap_size_bytes.filter(|bytes| *bytes > 0) {
            cell_limits.heap_bytes = heap;
        }
        if max_pending_delegate_calls > 0 {
            cell_limits.max_in_flight_tool_calls = max_pending_delegate_calls;
        }
        let options = SessionOptions {
            max_yield_time_ms: limits.max_yield_time_ms.filter(|ms| *ms > 0),
            limits: cell_limits,
            // The globals of codex's own host: a model must not tell the two apart.
            surface: Surface::Codex,
            ..SessionOptions::default()
        };
        let delegate = Arc::new(Delegate {
            session: std::sync::OnceLock::new(),
        });
        let session: Arc<dyn DurableSession> = Arc::new(self.provider.open_session_with_values(
            delegate.clone(),
            options,
            stored,
        ));
        let front = Arc::new(FrontSession {
            id,
            truncation,
            limits,
            max_pending_asked: max_pending_delegate_calls,
            max_pending_delegate_calls: usize::try_from(max_pending_delegate_calls)
                .ok()
                .filter(|count| *count > 0)
                .unwrap_or(DEFAULT_MAX_PENDING_DELEGATE_CALLS),
            session,
            state: Mutex::new(SessionState::default()),
            events: Leased::new(),
            invocations: Arc::default(),
            closed: CancellationToken::new(),
            owner: self.owner.clone(),
            enabled: Mutex::new(None),
            catalog: Mutex::new(None),
        });
        let _ = delegate.session.set(Arc::downgrade(&front));
        front
    }

    /// Takes back a session an earlier process of the host kept: Codex's ids as they
    /// were, its stored values, its running cells (rebuilt at their next call). A call they
    /// wait on gets the answer that came before the restart, or waits for the client's
    /// under the invocation id the client was given; one the client was never given is
    /// streamed now.
    fn adopt(&self, orphan: Orphan) -> Arc<FrontSession> {
        let kept = &orphan.kept;
        let truncation = if kept.server_truncation {
            Truncation::Server
        } else {
            Truncation::Client
        };
        let limits = ClientLimits {
            max_yield_time_ms: kept.max_yield_time_ms,
            max_heap_size_bytes: kept.max_heap_size_bytes,
        };
        let front = self.new_session(
            orphan.held.id().to_owned(),
            truncation,
            limits,
            kept.max_pending_delegate_calls,
            orphan.held.record.state.stored.clone(),
        );
        if let Some(catalog) = &kept.catalog {
            front.restore_catalog(catalog);
        }
        {
            let mut state = lock(&front.state);
            state.next_cell = kept.next_cell;
            for cell in &kept.cells {
                let Ok(runtime_id) = cell.runtime_id.parse::<CellId>();
                let tools = cell
                    .tools
                    .iter()
                    .map(|tool| {
                        let kind = if tool.freeform {
                            ToolKind::Freeform
                        } else {
                            ToolKind::Function
                        };
                        let name = ToolName {
                            name: tool.name.clone(),
                            namespace: tool.namespace.clone(),
                        };
                        (tool.js_name.clone(), (name, kind))
                    })
                    .collect();
                if !cell.execution_id.is_empty() {
                    state.executions.insert(cell.execution_id.clone());
                }
                state
                    .by_runtime_id
                    .insert(runtime_id.clone(), cell.codex_id.clone());
                state.cells.insert(
                    cell.codex_id.clone(),
                    Cell {
                        execution_id: cell.execution_id.clone(),
                        tool_call_id: cell.tool_call_id.clone(),
                        runtime_id,
                        tools: Arc::new(tools),
                        tool_calls: cell.tool_calls,
                        closed_sent: false,
                        active: self.admission.cell(),
                        trace: code_mode_trace::Parent::of(&tracing::Span::none()),
                    },
                );
            }
        }
        // A call whose answer came before the restart got it; the others are the client's.
        let unanswered = orphan.held.restore(front.session.as_ref());
        tracing::info!(
            cells = kept.cells.len(),
            unanswered = unanswered.len(),
            "session taken back from the state directory"
        );
        tracing::debug!(session = %front.id, "the session taken back");
        for call in unanswered {
            let (cell_id, call_id) = (call.call.cell_id.clone(), call.call.call_id);
            let mut state = lock(&front.state);
            match orphan.held.front_id(&cell_id, call_id) {
                Some(id) => {
                    state.restored_calls.insert(id.to_owned(), call);
                }
                None => {
                    let Some(codex_id) = state.by_runtime_id.get(&cell_id).cloned() else {
                        continue;
                    };
                    let Some(cell) = state.cells.get_mut(&codex_id) else {
                        continue;
                    };
                    let id = uuid::Uuid::new_v4().to_string();
                    let invocation = cell.invocation(&front.id, codex_id, &call.call, id.clone());
                    state.restored_calls.insert(id, call);
                    front.invocations.deal(invocation);
                }
            }
        }
        front
    }

    /// The session `id` of a gRPC call, which Codex's host first checks is a UUID.
    pub fn session_by_uuid(&self, id: &str) -> Result<Arc<FrontSession>, FrontError> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(FrontError::InvalidSessionId);
        }
        self.session(id)
    }

    /// With a store that hosts share: session `id`, if no process of this host has it, is
    /// taken over from the host that kept it (once that one's lease ran out), so that
    /// [`Self::session`] finds it. A failure of the store is the caller's error.
    pub async fn take_over(&self, id: &str) -> Result<(), FrontError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        if lock(&self.sessions).contains_key(id) {
            return Ok(());
        }
        state
            .take_over(id, self.owner.as_ref())
            .await
            .map_err(FrontError::StateUnavailable)
    }

    /// The session `id` (any text: the JSON protocol's ids are the client's).
    pub fn session(&self, id: &str) -> Result<Arc<FrontSession>, FrontError> {
        if let Some(session) = lock(&self.sessions).get(id).cloned() {
            return Ok(session);
        }
        // A session an earlier process of the host kept: this connection takes it back if
        // its client is the one that owned it (to any other it is unknown).
        if let Some(state) = &self.state
            && let Some(kept) = state.take_orphan(id, self.owner.as_ref())
        {
            let session = self.adopt(kept);
            lock(&self.sessions).insert(id.to_owned(), Arc::clone(&session));
            return Ok(session);
        }
        Err(FrontError::UnknownSession(id.to_owned()))
    }

    /// Checks an execution before it starts, as codex's host does before it answers:
    /// a tool call id is required, its catalog revision must be one the session can use
    /// (as Codex 0.171's host checks it) and an execution id is used once. Call it first;
    /// its errors are the call's status.
    pub fn claim_execution(
        &self,
        session: &FrontSession,
        execution: &mut Execution,
    ) -> Result<(), FrontError> {
        if execution.tool_call_id.is_empty() {
            return Err(FrontError::EmptyToolCallId);
        }
        // Under a revision, its catalog is checked and kept now, in the order the execs
        // came, not when each one's cell starts.
        if execution.catalog_revision.is_some() {
            let tools = std::mem::take(&mut execution.tools);
            execution.resolved = Some(session.enabled_set(execution.catalog_revision, tools)?);
        }
        if !execution.execution_id.is_empty()
            && !lock(&session.state)
                .executions
                .insert(execution.execution_id.clone())
        {
            return Err(FrontError::ExecutionReused(execution.execution_id.clone()));
        }
        Ok(())
    }

    /// Starts a cell that [`Self::claim_execution`] accepted: `started` is told its id
    /// once it is admitted, and the first observation is returned.
    pub async fn execute(
        &self,
        session: &Arc<FrontSession>,
        execution: Execution,
        started: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<Outcome, FrontError> {
        let arrived = Instant::now();
        let _in_flight = self.in_flight()?;
        // The cell's place among the active cells, taken now and handed to the cell when
        // it is admitted (given back at the end of this call if it never is).
        let place = Arc::new(Mutex::new(Some(
            self.admission
                .cell()
                .ok_or(FrontError::TooManyActiveCells)?,
        )));
        let (tools, definitions) = match execution.resolved {
            Some(resolved) => resolved,
            None => session.enabled_set(None, execution.tools)?,
        };
        let preempt = CancellationToken::new();
        if !execution.execution_id.is_empty() {
            lock(&session.state)
                .preempts
                .insert(execution.execution_id.clone(), preempt.clone());
        }
        let mut request = ExecRequest::new(execution.source)
            .with_tools(definitions)
            .with_yield_time_ms(execution.yield_time_ms.unwrap_or(DEFAULT_EXEC_YIELD_MS));
        if !execution.tool_call_id.is_empty() {
            request = request.with_tool_call_id(execution.tool_call_id.clone());
        }
        let admitted: Arc<Mutex<Option<CellId>>> = Arc::default();
        let admitted_id = admitted.clone();
        let admitted_session = Arc::downgrade(session);
        let execution_id = execution.execution_id.clone();
        let tool_call_id = execution.tool_call_id.clone();
        let admitted_place = place.clone();
        let trace = code_mode_trace::Parent::of(&tracing::Span::current());
        let hooks = ExecHooks::default()
            .with_preempt(preempt)
            .on_admitted(move |runtime_id| {
                *lock(&admitted_id) = Some(runtime_id.clone());
                let Some(session) = admitted_session.upgrade() else {
                    return;
                };
                let codex_id = {
                    let mut state = lock(&session.state);
                    state.next_cell += 1;
                    let codex_id = state.next_cell.to_string();
                    state
                        .by_runtime_id
                        .insert(runtime_id.clone(), codex_id.clone());
                    state.cells.insert(
                        codex_id.clone(),
                        Cell {
                            execution_id: execution_id.clone(),
                            tool_call_id: tool_call_id.clone(),
                            runtime_id: runtime_id.clone(),
                            tools: tools.clone(),
                            tool_calls: 0,
                            closed_sent: false,
                            active: lock(&admitted_place).take(),
                            trace: trace.clone(),
                        },
                    );
                    codex_id
                };
                started(&codex_id);
            });
        // A runtime found dead before it admitted the cell runs it on a fresh one inside
        // the host crate; a loss after admission fails the cell below.
        let result = session.session.execute_with(request, hooks).await;
        if !execution.execution_id.is_empty() {
            lock(&session.state)
                .preempts
                .remove(&execution.execution_id);
        }
        let tokens = execution.max_output_tokens;
        match result {
            Ok(started) => Ok(self.outcome(session, started.initial_response, tokens, arrived)),
            // A cell that was admitted fails like a script: codex saw it start.
            Err(SessionError::RuntimeLost(cause)) => match lock(&admitted).clone() {
                Some(runtime_id) => Ok(self.lost(session, &runtime_id, &cause, tokens, arrived)),
                None => Err(FrontError::Session(SessionError::RuntimeLost(cause))),
            },
            Err(error) => Err(FrontError::from_session(error)),
        }
    }

    /// Observes a cell until it completes, yields or the yield time passes.
    pub async fn wait(
        &self,
        session: &Arc<FrontSession>,
        cell_id: &str,
        wait_id: Option<String>,
        yield_time_ms: Option<u64>,
        max_tokens: Option<u64>,
    ) -> Result<Observed, FrontError> {
        let arrived = Instant::now();
        let _in_flight = self.in_flight()?;
        let Some(runtime_id) = self.runtime_id(session, cell_id) else {
            return Ok(Observed::Missing(self.missing(session, cell_id, arrived)));
        };
        let cancel = CancellationToken::new();
        let preempt = CancellationToken::new();
        if let Some(wait_id) = &wait_id {
            lock(&session.state)
                .waits
                .insert(wait_id.clone(), (cancel.clone(), preempt.clone()));
        }
        let request = WaitRequest::new(runtime_id.clone())
            .with_yield_time_ms(yield_time_ms.unwrap_or(DEFAULT_WAIT_YIELD_MS));
        let result = tokio::select! {
            result = session.session.wait_with(request, Some(preempt)) => Some(result),
            () = cancel.cancelled() => None,
        };
        if let Some(wait_id) = &wait_id {
            lock(&session.state).waits.remove(wait_id);
        }
        let result = result.ok_or(FrontError::WaitCancelled)?;
        self.observed(session, cell_id, &runtime_id, result, max_tokens, arrived)
    }

    /// Terminates a cell.
    pub async fn terminate(
        &self,
        session: &Arc<FrontSession>,
        cell_id: &str,
    ) -> Result<Observed, FrontError> {
        let arrived = Instant::now();
        let _in_flight = self.in_flight()?;
        let Some(runtime_id) = self.runtime_id(session, cell_id) else {
            return Ok(Observed::Missing(self.missing(session, cell_id, arrived)));
        };
        let result = session.session.terminate(runtime_id.clone()).await;
        self.observed(session, cell_id, &runtime_id, result, None, arrived)
    }

    /// A `Wait` or `Terminate` answer from our session's: a cell lost with its runtime
    /// fails like a script, an id the runtime no longer knows is the missing outcome.
    fn observed(
        &self,
        session: &FrontSession,
        cell_id: &str,
        runtime_id: &CellId,
        result: Result<CellResponse, SessionError>,
        max_tokens: Option<u64>,
        arrived: Instant,
    ) -> Result<Observed, FrontError> {
        match result {
            Ok(response) if response.is_missing_cell() => {
                Ok(Observed::Missing(self.missing(session, cell_id, arrived)))
            }
            Ok(response) => Ok(Observed::Live(
                self.outcome(session, response, max_tokens, arrived),
            )),
            Err(SessionError::RuntimeLost(cause)) => Ok(Observed::Live(
                self.lost(session, runtime_id, &cause, max_tokens, arrived),
            )),
            Err(error) => Err(FrontError::from_session(error)),
        }
    }

    /// Answers a tool invocation. With a state directory the answer is on disk before
    /// the cell gets it.
    pub async fn complete_tool_call(
        &self,
        session: &Arc<FrontSession>,
        invocation_id: &str,
        result: ToolResult,
    ) -> Result<(), FrontError> {
        let waiting = take_invocation(session, invocation_id)?;
        if let Some(state) = &self.state {
            let (cell_id, call) = waiting.call();
            // An answer that is not on disk does not reach the cell: the invocation waits
            // for it again, and the client is told why (it may answer again).
            if let Err(error) = state
                .record_answer(&session.id, cell_id, call, &result)
                .await
            {
                put_back_invocation(session, invocation_id, waiting);
                return Err(FrontError::StateUnavailable(error));
            }
        }
        waiting.answer(result);
        Ok(())
    }

    /// [`Self::complete_tool_call`] for a front that keeps no state (the JSON protocol on
    /// stdio): the answer goes to the cell at once.
    pub fn complete_tool_call_now(
        &self,
        session: &Arc<FrontSession>,
        invocation_id: &str,
        result: ToolResult,
    ) -> Result<(), FrontError> {
        take_invocation(session, invocation_id)?.answer(result);
        Ok(())
    }

    /// Makes an in-flight `Execute` (by execution id) or `Wait` (by wait id) return
    /// `yielded` at once; the cell keeps running. An id that names neither does nothing.
    pub fn yield_observation(
        &self,
        session: &Arc<FrontSession>,
        observation_id: &str,
    ) -> Result<(), FrontError> {
        if observation_id.is_empty() {
            return Err(FrontError::MissingObservationId);
        }
        let state = lock(&session.state);
        if let Some(preempt) = state.preempts.get(observation_id) {
            preempt.cancel();
        } else if let Some((_, preempt)) = state.waits.get(observation_id) {
            preempt.cancel();
        }
        Ok(())
    }

    /// Ends a pending `Wait` with [`FrontError::WaitCancelled`].
    pub fn cancel_wait(&self, session: &Arc<FrontSession>, wait_id: &str) {
        if let Some((cancel, _)) = lock(&session.state).waits.get(wait_id) {
            cancel.cancel();
        }
    }

    /// Closes a session: its streams end, its cells stop, its values are dropped.
    pub async fn close_session(&self, session: &Arc<FrontSession>) {
        lock(&self.sessions).remove(&session.id);
        if let Some(state) = &self.state {
            state.forget(&session.id);
        }
        // The cells it stops are reported closed on the session's streams, which end
        // after that.
        session.session.shutdown().await;
        session.closed.cancel();
        let mut state = lock(&session.state);
        state.pending_calls.clear();
        state.cells.clear();
        state.by_runtime_id.clear();
    }

    /// Closes every session (the client went away).
    pub async fn close_all(&self) {
        let sessions: Vec<_> = lock(&self.sessions).values().cloned().collect();
        let closing = sessions.iter().map(|session| self.close_session(session));
        futures_util::future::join_all(closing).await;
    }

    fn runtime_id(&self, session: &FrontSession, cell_id: &str) -> Option<CellId> {
        lock(&session.state)
            .cells
            .get(cell_id)
            .map(|cell| cell.runtime_id.clone())
    }

    fn missing(&self, session: &FrontSession, cell_id: &str, arrived: Instant) -> Outcome {
        let error_text = CellResponse::missing(cell_id)
            .error_text()
            .unwrap_or_default()
            .to_owned();
        // The host adds the `Script error:` item only when it formats for the model.
        let items = match session.truncation {
            Truncation::Server => vec![ContentItem::text(
                code_mode_host::protocol::texts::script_error(&error_text),
            )],
            Truncation::Client => Vec::new(),
        };
        Outcome {
            cell_id: cell_id.to_owned(),
            items,
            status: Status::Completed {
                error_text: Some(error_text),
            },
            host_duration: arrived.elapsed(),
        }
    }

    /// The outcome of a cell whose runtime died under it: it failed, with the cause, and
    /// the session goes on (its next exec runs on a fresh runtime with its stored values).
    fn lost(
        &self,
        session: &FrontSession,
        runtime_id: &CellId,
        cause: &str,
        max_tokens: Option<u64>,
        arrived: Instant,
    ) -> Outcome {
        let response = CellResponse::result(
            runtime_id.clone(),
            Vec::new(),
            Some(CellFailure::new(
                code_mode_protocol::FailureKind::RuntimeLost,
                SessionError::RuntimeLost(cause.to_owned()).to_string(),
            )),
        );
        self.outcome(session, response, max_tokens, arrived)
    }

    /// Our response as Codex's outcome: its cell id, the `Script error:` item, the bound.
    fn outcome(
        &self,
        session: &FrontSession,
        response: CellResponse,
        max_tokens: Option<u64>,
        arrived: Instant,
    ) -> Outcome {
        let runtime_id = response.cell_id().clone();
        let cell_id = session
            .codex_cell(&runtime_id)
            .unwrap_or_else(|| runtime_id.to_string());
        let (mut items, status) = match response {
            CellResponse::Yielded { content_items, .. } => (content_items, Status::Yielded),
            CellResponse::Terminated { content_items, .. } => (content_items, Status::Terminated),
            CellResponse::Result {
                content_items,
                failure,
                ..
            } => (
                content_items,
                Status::Completed {
                    error_text: failure.map(|failure| failure.text),
                },
            ),
        };
        if session.truncation == Truncation::Server {
            let mut entries = bound::bound_items(items);
            if let Status::Completed {
                error_text: Some(error_text),
            } = &status
            {
                entries.push(bound::Entry::Item(ContentItem::text(
                    code_mode_host::protocol::texts::script_error(error_text),
                )));
            }
            items =
                bound::truncate_entries(entries, max_tokens.unwrap_or(bound::DEFAULT_MAX_TOKENS));
        }
        if status != Status::Yielded {
            session.close_cell(&runtime_id, true);
        }
        Outcome {
            cell_id,
            items,
            status,
            host_duration: arrived.elapsed(),
        }
    }
}
