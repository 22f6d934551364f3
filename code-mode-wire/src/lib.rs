//! **Internal to code-mode; not for direct use.** Agent cores program against
//! `code-mode-protocol`'s traits and `code-mode-host`'s providers; this crate is what those
//! providers and the runtime process speak to each other, and it changes with every
//! protocol version.
//!
//! The wire between a host (`code-mode-host`) and the runtime process (`code-mode-bin`):
//! typed messages ([`ClientMessage`], [`ServerMessage`]), the frame codec ([`codec`]), the
//! handshake ([`handshake`]), the transport seam that both ends run a connection on
//! ([`transport`]).
//!
//! The messages, and what answers each:
//!
//! | direction | message | answered by |
//! |---|---|---|
//! | host → runtime | `Hello` | `Ready` or `Rejected` (then the connection closes) |
//! | host → runtime | `Request { id, OpenSession / Session / SessionWithTools / RegisterTools }` | one `Response { id, result }` |
//! | host → runtime | `CancelRequest { id }`, `Preempt { id }` | nothing (the request answers `Cancelled`; the observation yields at once) |
//! | host → runtime | `Taken { id }` or `GivenBack { id }`, once per successful response to an exec, wait, terminate or their pending forms | nothing; until then the runtime holds the answer (a word for an answer not held is a violation) |
//! | runtime → host | `Admitted { id, cell_id }` | nothing; before the response of an exec (or its pending form) and any callback of the cell |
//! | runtime → host | `Spans(records)` | nothing; a traced request's ended spans, batched (on a timer while it runs; the last batch rides ahead of a frame sent within `RIDE_WITHIN`, in its write, else goes alone), checked by the host before export |
//! | runtime → host | `Delegate { id, session, InvokeTool / Notify }` | `DelegateReply { id, … }`, unless `CancelDelegate` |
//! | runtime → host | `Committed { session, cell_id, writes }` | nothing; before the cell's final response |
//! | runtime → host | `Journal { session, cell_id, entry }` | nothing; in order with the cell's calls, commits and answers (a cell's `Started` entry rides ahead of its admission, in one write) |
//! | host → runtime | `Request { id, Resume { session, journal, exec_call_id, committed } }` | `Resumed(cell_id)`: the cell rebuilt there |
//! | host → runtime | `Request { id, Answer { session, cell_id, call, result } }` | `Answered(taken)`: a late answer for a rebuilt cell |
//! | runtime → host | `Offer { session, cell_id, response }`: a final answer nobody asked for yet | `OfferTaken` (a `wait` or `terminate` got it) or `OfferGivenBack` (a request of the host observes the cell already, or the cell is unknown) |
//! | runtime → host | `CellClosed`, `Draining` | nothing |
//! | either way | `Ping(n)` | `Pong(n)` |
//!
//! Only these types cross the process boundary: the messages here and their payloads
//! ([`payload`]), the wire's own counterparts of the API types, converted in one module
//! ([`convert`]). They are externally tagged enums and plain structs, because bincode is
//! not self-describing; JSON payloads (tool inputs and results) travel as JSON text for
//! the same reason.
//!
//! A connection starts with [`ClientMessage::Hello`] answered by [`ServerMessage::Ready`]
//! or [`ServerMessage::Rejected`]. Then the client sends [`Request`]s with fresh
//! [`RequestId`]s, each answered by exactly one [`ServerMessage::Response`]; the server
//! sends [`DelegateCall`]s (nested tool calls, notifications) with fresh [`DelegateId`]s,
//! each answered by one [`ClientMessage::DelegateReply`] unless the server cancels it
//! first ([`ServerMessage::CancelDelegate`]), and reports [`ServerMessage::CellClosed`].
//!
//! An answer's life stays with the cell's actor in the runtime: a successful response to
//! a request that observes a cell ([`Request::holds_answer`]) is a copy, and the runtime
//! holds the answer itself until the host says, once, that its caller took it
//! ([`ClientMessage::Taken`]) or dropped it ([`ClientMessage::GivenBack`]). Until then the
//! actor holds the cell's next delegate calls back (for at most a second), and a given-back
//! answer goes to the cell's next observation. The host's reader never waits on a caller.
//!
//! Liveness: after the handshake each side sends a `Ping` every [`PING_INTERVAL`] (or its
//! own interval) and answers every `Ping` with a `Pong` carrying the same number. A side
//! that reads no complete frame for its liveness timeout declares the peer gone, so a
//! half-open connection (the peer's machine vanished without a FIN) ends within seconds.
//! A runtime that is draining says so once ([`ServerMessage::Draining`]): the host places
//! no new session there, and the runtime refuses one with [`WireError::Draining`].

pub mod codec;
pub mod convert;
pub mod handshake;
pub mod payload;
pub mod transport;

use code_mode_protocol::model::ToolDefinition;
use code_mode_protocol::session::SessionError;
use code_mode_protocol::texts;
use payload::{
    CallId, CellId, JsonText, SessionCall, SessionOptions, SessionReply, ToolError, ToolKind,
};
use serde::{Deserialize, Serialize};
use std::fmt;

pub use codec::{FrameCodec, FrameError, MAX_FRAME_BYTES};
pub use handshake::{
    CAPABILITIES, ClientHello, HandshakeRejection, PROTOCOL_VERSION, REMOTE_CAPABILITY, Ready,
    ReadyMismatch, SUPPORTED_VERSIONS, ServerOffer,
};
pub use transport::{EncodedFrame, FrameReader, MAX_QUEUED_BYTES, Outbox, RIDE_WITHIN, Transport};

/// How often each side pings the other by default.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a side waits for any complete frame before it declares the peer gone, by
/// default: three ping intervals (a live peer answers every ping).
pub const LIVENESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6);

/// How one end of a connection watches that its peer is alive: the host (always over the
/// network, optionally for a local runtime) and the listening runtime alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// How often this end pings its peer.
    pub ping_interval: std::time::Duration,
    /// No complete frame from the peer for this long loses the connection.
    pub timeout: std::time::Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            ping_interval: PING_INTERVAL,
            timeout: LIVENESS_TIMEOUT,
        }
    }
}

macro_rules! wire_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

wire_id!(
    /// A client request; unique among the client's requests in flight.
    RequestId,
    "request "
);
wire_id!(
    /// A session opened on this connection.
    SessionId,
    "session "
);
wire_id!(
    /// A delegate call from the server; unique among the server's calls in flight.
    DelegateId,
    "delegate call "
);
wire_id!(
    /// A tool set registered on a connection: the digest of its definitions.
    ToolSetId,
    "tool set "
);

impl ToolSetId {
    /// The digest of `tools`: their names, descriptions, kinds and deferred flags, in
    /// order. Equal sets get equal ids from one build of the host; the runtime only uses
    /// an id as the name the host gave a set.
    pub fn of(tools: &[ToolDefinition]) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        tools.len().hash(&mut hasher);
        for tool in tools {
            tool.name.hash(&mut hasher);
            tool.description.hash(&mut hasher);
            tool.kind.hash(&mut hasher);
            tool.deferred.hash(&mut hasher);
        }
        Self(hasher.finish())
    }
}

/// How many tool sets a runtime keeps per connection (the oldest registered goes first).
/// A host keeps track of fewer ([`HOST_TOOL_SETS`]), so every set it believes registered
/// still is.
pub const RUNTIME_TOOL_SETS: usize = 64;

/// How many registered tool sets a host remembers per connection.
pub const HOST_TOOL_SETS: usize = 32;

impl Request {
    /// The session a request is for (none for `OpenSession` and `RegisterTools`).
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Request::OpenSession { .. } | Request::RegisterTools { .. } => None,
            Request::Session { session, .. }
            | Request::SessionWithTools { session, .. }
            | Request::Resume { session, .. }
            | Request::Answer { session, .. } => Some(*session),
        }
    }

    /// Whether the request starts a cell (an `Execute`, an `ExecuteToPending`) or rebuilds
    /// one (`Resume`): the requests a trace context goes with.
    pub fn starts_cell(&self) -> bool {
        match self {
            Request::Session { call, .. } | Request::SessionWithTools { call, .. } => matches!(
                call,
                SessionCall::Execute(_) | SessionCall::ExecuteToPending(_)
            ),
            Request::Resume { .. } => true,
            Request::OpenSession { .. }
            | Request::RegisterTools { .. }
            | Request::Answer { .. } => false,
        }
    }

    /// Whether the request is a `Wait`: an observation that goes on when its cell is
    /// rebuilt on another runtime.
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            Request::Session {
                call: SessionCall::Wait(_),
                ..
            }
        )
    }

    /// Shuts `session` down (the runtime forgets it afterwards).
    pub fn shutdown(session: SessionId) -> Self {
        Request::Session {
            session,
            call: SessionCall::Shutdown,
        }
    }

    /// Whether the runtime holds this request's answer, when it succeeds, until the host
    /// says what became of it ([`ClientMessage::Taken`] or [`ClientMessage::GivenBack`]):
    /// the calls that observe a cell (execute, wait, terminate, and their pending-aware
    /// forms), whose answers a dropped caller gives back.
    pub fn holds_answer(&self) -> bool {
        match self {
            Request::OpenSession { .. }
            | Request::RegisterTools { .. }
            | Request::Resume { .. }
            | Request::Answer { .. } => false,
            Request::Session { call, .. } | Request::SessionWithTools { call, .. } => matches!(
                call,
                SessionCall::Execute(_)
                    | SessionCall::Wait(_)
                    | SessionCall::Terminate { .. }
                    | SessionCall::ExecuteToPending(_)
                    | SessionCall::WaitToPending { .. }
            ),
        }
    }
}

/// Everything a client (the host) sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// The first message, and only the first.
    Hello(ClientHello),
    /// A request, and the trace context it runs under when the host traces it (the
    /// runtime traces the cell an `Execute`, `ExecuteToPending` or `Resume` starts under
    /// it, and hands those spans back in [`ServerMessage::Spans`]).
    Request {
        id: RequestId,
        request: Request,
        trace: Option<payload::TraceContext>,
    },
    /// The client no longer wants the answer; the server answers `Err(Cancelled)` unless
    /// the response was already on its way.
    CancelRequest { id: RequestId },
    DelegateReply {
        id: DelegateId,
        reply: DelegateReply,
    },
    /// Liveness: the server answers with [`ServerMessage::Pong`] and the same number.
    Ping(u64),
    /// The answer to a [`ServerMessage::Ping`].
    Pong(u64),
    /// The observation `id` (an `Execute` or a `Wait`) is preempted: it answers `Yielded`
    /// with the output so far, and the cell keeps running (contract 8.4). Ignored when
    /// the request is no longer in flight or observes nothing.
    Preempt { id: RequestId },
    /// The caller of `id` took its answer. Sent once for each successful response to a
    /// request that observes a cell ([`Request::holds_answer`]); the runtime holds that
    /// answer until it hears which of this and [`ClientMessage::GivenBack`] happened.
    Taken { id: RequestId },
    /// The caller of `id` dropped its answer untaken (or had gone before it arrived): the
    /// runtime gives it back to the cell, whose next observation returns it.
    GivenBack { id: RequestId },
    /// The host answered an observation of the cell with its [`ServerMessage::Offer`]: the
    /// runtime takes the offered answer (the cell closes).
    OfferTaken { session: SessionId, cell_id: CellId },
    /// The host does not keep the cell's [`ServerMessage::Offer`] (a request of its own
    /// observes the cell already, or the session is gone): the runtime gives the answer
    /// back to the cell, whose next observation returns it.
    OfferGivenBack { session: SessionId, cell_id: CellId },
}

/// A request: open a session, or one call of an open session's methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Opens a session whose committed stored values are `stored_values`: empty for a
    /// new session, the host's copy when a session moves to this runtime (its runtime
    /// was lost or drains), or what an agent core restored (contract §7).
    OpenSession {
        options: SessionOptions,
        stored_values: code_mode_protocol::stored::StoredValues,
    },
    /// A call of the session's methods; `Shutdown` also makes the server forget it.
    Session {
        session: SessionId,
        call: SessionCall,
    },
    /// Rebuilds a cell of the session from its journal, kept by the host from a runtime
    /// that was lost (contract §7): answered with [`Response::Resumed`] and the cell's id
    /// on this runtime. Its nested calls carry `exec_call_id`. `committed`: the cell had
    /// completed and its writes were merged (the host has them) when its runtime was lost
    /// before its final answer; the rebuilt cell replays to that answer and merges nothing.
    Resume {
        session: SessionId,
        journal: payload::CellJournal,
        exec_call_id: Option<String>,
        committed: bool,
    },
    /// The answer to nested call `call` of a resumed cell, made on a runtime that was lost
    /// while the host's delegate worked on it: answered with [`Response::Answered`]
    /// (`false` when the cell is not there any more).
    Answer {
        session: SessionId,
        cell_id: CellId,
        call: CallId,
        result: Result<JsonText, ToolError>,
    },
    /// Registers a tool set on the connection, so that execs name it instead of carrying
    /// its definitions (a set of thousands of deferred tools is sent once, not per exec).
    /// Answered with [`Response::ToolsRegistered`]; handled before any later request.
    RegisterTools {
        tool_set: ToolSetId,
        tools: Vec<payload::ToolDefinition>,
    },
    /// A `call` (an `Execute` or `ExecuteToPending`, its tools left empty) that runs with
    /// the registered `tool_set`; [`WireError::UnknownToolSet`] when the runtime does not
    /// have it (any more).
    SessionWithTools {
        session: SessionId,
        tool_set: ToolSetId,
        call: SessionCall,
    },
}

/// The successful answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    SessionOpened(SessionId),
    /// The answer to a [`Request::Session`] call, of the call's kind.
    Reply(SessionReply),
    /// The answer to [`Request::RegisterTools`].
    ToolsRegistered,
    /// The answer to [`Request::Resume`]: the cell's id on this runtime.
    Resumed(CellId),
    /// The answer to [`Request::Answer`]: whether the cell took it.
    Answered(bool),
}

/// What the server asks of the session's delegate on the client side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DelegateCall {
    /// A nested tool call; `input` is JSON text (`None`: no argument).
    InvokeTool {
        cell_id: CellId,
        call_id: CallId,
        tool_name: String,
        kind: ToolKind,
        input: Option<JsonText>,
        /// The model's id of the exec call that started the cell.
        exec_call_id: Option<String>,
    },
    Notify {
        cell_id: CellId,
        text: String,
    },
}

/// The client's answer to a [`DelegateCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DelegateReply {
    /// The tool's result as JSON text, or its error string.
    ToolResult(Result<JsonText, ToolError>),
    /// The notification was delivered.
    Notified,
    /// Acknowledges a [`ServerMessage::CancelDelegate`]: the delegate stopped, or was
    /// abandoned after its grace period. Sent instead of a result for a cancelled call.
    Cancelled,
}

/// Everything the server (the runtime process) sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    Ready(Ready),
    Rejected(HandshakeRejection),
    Response {
        id: RequestId,
        result: Result<Response, WireError>,
    },
    Delegate {
        id: DelegateId,
        session: SessionId,
        call: DelegateCall,
    },
    CancelDelegate {
        id: DelegateId,
    },
    CellClosed {
        session: SessionId,
        cell_id: CellId,
    },
    /// Liveness: the client answers with [`ClientMessage::Pong`] and the same number.
    Ping(u64),
    /// The answer to a [`ClientMessage::Ping`].
    Pong(u64),
    /// The runtime is draining (it is shutting down): it refuses new sessions with
    /// [`WireError::Draining`] and lets running cells finish up to its deadline.
    Draining,
    /// The `Execute` request `id` admitted its cell: sent before the response and before
    /// any delegate call of the cell (contract 8.5).
    Admitted {
        id: RequestId,
        cell_id: CellId,
    },
    /// A cell's journal gained `entry` (contract §7): the host keeps each running cell's
    /// journal, to rebuild the cell elsewhere if this runtime is lost.
    Journal {
        session: SessionId,
        cell_id: CellId,
        entry: payload::JournalEntry,
    },
    /// A completed cell's stored-value writes were merged into its session: sent in the
    /// same step as the merge, so before the cell's final response. The host applies them
    /// to its copy of the session's committed values, which outlives this runtime
    /// (contract §7).
    Committed {
        session: SessionId,
        cell_id: CellId,
        writes: code_mode_protocol::stored::StoredValues,
    },
    /// Spans the runtime ended, of work done under a request's trace context: the host
    /// exports them (the sandboxed runtime has no network), so an operator configures one
    /// endpoint.
    Spans(Vec<payload::SpanRecord>),
    /// The cell finished with nobody observing it, and every answer it gave before was
    /// taken: its final answer, which the runtime holds for the host's word
    /// ([`ClientMessage::OfferTaken`] or [`ClientMessage::OfferGivenBack`]), as it holds a
    /// request's answer. The host answers the cell's next `wait` (or `terminate`) with it,
    /// without a round trip; the runtime offers a cell's final answer at most once.
    Offer {
        session: SessionId,
        cell_id: CellId,
        response: payload::CellResponse,
    },
}

/// Stable error kinds on the wire; the host maps them back to the contract's strings.
///
/// Every [`SessionError`] has a kind of its own, so an error crosses the wire and comes
/// back as the same error with the same text (`Runtime` carries only its inner message,
/// never its display text, which would be prefixed twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    #[error("code mode session {0} is not open on this runtime")]
    MissingSession(SessionId),
    #[error("{}", texts::SHUTTING_DOWN)]
    ShuttingDown,
    #[error("{}", texts::busy_observer(.0))]
    BusyObserver(CellId),
    #[error("{}", texts::already_terminating(.0))]
    AlreadyTerminating(CellId),
    #[error("the request was cancelled")]
    Cancelled,
    #[error("the response was too large for one frame ({bytes} bytes, at most {max})")]
    ResponseTooLarge { bytes: u64, max: u64 },
    /// [`SessionError::Runtime`]: its inner message.
    #[error("{}", texts::runtime_failure(.0))]
    Internal(String),
    /// [`SessionError::RuntimeLost`] (a runtime relaying another): its cause.
    #[error("{}", texts::runtime_lost(.0))]
    RuntimeLost(String),
    /// The runtime is draining and opens no new session; a host places it elsewhere.
    #[error("the runtime is draining and opens no new session")]
    Draining,
    /// The connection has as many sessions as a runtime allows per connection.
    #[error("the runtime allows at most {max} sessions per connection")]
    TooManySessions { max: u64 },
    /// A [`Request::SessionWithTools`] named a tool set the runtime does not have; the
    /// host registers it again.
    #[error("{0} is not registered on this connection")]
    UnknownToolSet(ToolSetId),
}

impl ClientMessage {
    /// The message's kind, for logs and error messages (never its payload).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "Hello",
            ClientMessage::Request { .. } => "Request",
            ClientMessage::CancelRequest { .. } => "CancelRequest",
            ClientMessage::Preempt { .. } => "Preempt",
            ClientMessage::DelegateReply { .. } => "DelegateReply",
            ClientMessage::Ping(_) => "Ping",
            ClientMessage::Pong(_) => "Pong",
            ClientMessage::Taken { .. } => "Taken",
            ClientMessage::GivenBack { .. } => "GivenBack",
            ClientMessage::OfferTaken { .. } => "OfferTaken",
            ClientMessage::OfferGivenBack { .. } => "OfferGivenBack",
        }
    }
}

impl ServerMessage {
    /// Every kind [`ServerMessage::kind`] names, in declaration order.
    pub const KINDS: [&'static str; 14] = [
        "Ready",
        "Rejected",
        "Response",
        "Delegate",
        "CancelDelegate",
        "Admitted",
        "CellClosed",
        "Ping",
        "Pong",
        "Draining",
        "Committed",
        "Journal",
        "Spans",
        "Offer",
    ];

    /// The message's kind, for logs and error messages (never its payload).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Ready(_) => "Ready",
            ServerMessage::Rejected(_) => "Rejected",
            ServerMessage::Response { .. } => "Response",
            ServerMessage::Delegate { .. } => "Delegate",
            ServerMessage::CancelDelegate { .. } => "CancelDelegate",
            ServerMessage::Admitted { .. } => "Admitted",
            ServerMessage::CellClosed { .. } => "CellClosed",
            ServerMessage::Ping(_) => "Ping",
            ServerMessage::Pong(_) => "Pong",
            ServerMessage::Draining => "Draining",
            ServerMessage::Committed { .. } => "Committed",
            ServerMessage::Journal { .. } => "Journal",
            ServerMessage::Spans(_) => "Spans",
            ServerMessage::Offer { .. } => "Offer",
        }
    }
}

impl From<SessionError> for WireError {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::ShuttingDown => WireError::ShuttingDown,
            SessionError::BusyObserver(cell) => WireError::BusyObserver(cell.into()),
            SessionError::AlreadyTerminating(cell) => WireError::AlreadyTerminating(cell.into()),
            SessionError::Runtime(failure) => WireError::Internal(failure.message().to_owned()),
            SessionError::RuntimeLost(cause) => WireError::RuntimeLost(cause),
        }
    }
}

impl WireError {
    /// The session error a host reports for this wire error: the same error for every
    /// kind a session produced; a [`SessionError::Runtime`] naming the failure for the
    /// kinds only the wire produces.
    pub fn into_session_error(self) -> SessionError {
        match self {
            WireError::ShuttingDown => SessionError::ShuttingDown,
            WireError::BusyObserver(cell) => SessionError::BusyObserver(cell.into()),
            WireError::AlreadyTerminating(cell) => SessionError::AlreadyTerminating(cell.into()),
            WireError::Internal(message) => SessionError::Runtime(message.into()),
            WireError::RuntimeLost(cause) => SessionError::RuntimeLost(cause),
            other @ (WireError::MissingSession(_)
            | WireError::Cancelled
            | WireError::ResponseTooLarge { .. }
            | WireError::Draining
            | WireError::TooManySessions { .. }
            | WireError::UnknownToolSet(_)) => SessionError::Runtime(other.to_string().into()),
        }
    }
}
