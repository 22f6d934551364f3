//! The host's side of one connection to a runtime process (one *generation*).
//!
//! Requests carry fresh ids and are answered exactly once; a caller that stops waiting
//! sends `CancelRequest`. Delegate calls from the runtime run the session's delegate in a
//! task each and are answered unless the runtime cancels them. Every message from the
//! runtime is validated (known ids, the response kind the request expects, known sessions,
//! a cell closed at most once); a violation kills the process.
//!
//! When the connection ends (EOF, a bad frame, a violation), the loss is recorded once
//! with its cause (exit status or signal), every call in flight fails at once with
//! [`SessionError::RuntimeLost`], delegate calls are cancelled, and every cell known to be
//! alive is reported closed to its delegate, exactly once.
//!
//! Liveness (on for remote runtimes, optional for a local one): the connection pings the
//! runtime every ping interval; no complete frame from the runtime within the liveness
//! timeout loses the connection (a half-open peer, e.g. a machine that vanished), with
//! that cause. The runtime's pings are always answered. A runtime that
//! announces it is draining is marked so: providers place no new session there.
//!
//! The connection runs on any framed byte stream (the protocol crate's transport seam) and
//! knows the other end only as a [`Peer`]: a child process it supervises, or a runtime on
//! another machine reached over TCP and TLS.
//!
//! `answers` holds how a response reaches its caller (and the word the runtime waits for
//! when it holds the answer); `delegate` the runtime's calls to a session's delegate.

mod answers;
mod delegate;
mod journals;
mod lost;
mod offers;
mod violation;

use crate::error::HandshakeError;
use crate::faults::{self, Fault};
pub(crate) use answers::FromResponse;
use answers::{AbandonOnDrop, Abandoned, Deliver, Word, deliver_to};
use code_mode_internal::futures::{poll_once, until_cancelled};
use code_mode_internal::sync::lock;
use code_mode_internal::{FromReply, SessionCall};
use code_mode_protocol::stored::CommittedValues;
use code_mode_protocol::{
    AdmittedHook, BoxFuture, CellId, CellResponse, CodeModeSessionDelegate, JsonText,
    NestedToolCall, PendingOutcome, RuntimeFailure, SessionError, StartedCell, StartedPendingCell,
    ToolDefinition, ToolError,
};
use code_mode_wire::convert::{tool_result, tools_to_wire};
use code_mode_wire::transport::{self, FrameReader, Outbox, Transport};
use code_mode_wire::*;
use futures_util::StreamExt;
use journals::LostCell;
pub(crate) use journals::{ExecJournal, LateAnswers, Resumable};
use journals::{Kept, Rebuilds, ResumedHook};
pub(crate) use lost::LostCells;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
pub use violation::Violation;

/// How long the host waits for the runtime's answer to its hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a runtime that closed its socket gets to exit before it is killed.
const EXIT_PATIENCE: Duration = Duration::from_secs(1);

use code_mode_internal::delivery::Delivery;

pub use code_mode_wire::Liveness;

/// Why the reader stopped.
enum Ended {
    /// End of input.
    Closed,
    /// The stream failed (reset, or closed without TLS's close_notify).
    Broken(String),
    /// A bad frame or a protocol violation.
    Violation(Violation),
    /// No frame within the liveness timeout.
    Silent(Duration),
    /// The runtime does not read what the host sends.
    Stalled,
    /// The runtime drains, and the host moved its running cells to another runtime.
    Moved,
}

/// The other end of a connection, beyond its byte stream.
pub(crate) trait Peer: Send + Sync + 'static {
    /// Names the peer in logs (e.g. `pid 1234`).
    fn describe(&self) -> String;
    /// Names the runtime in a loss cause (e.g. `the runtime process`).
    fn noun(&self) -> String;
    /// The process id, when the peer is a local process.
    fn pid(&self) -> Option<u32>;
    /// Stops the peer for good (kills a child process). Idempotent.
    fn kill(&self);
    /// Why the peer's stream ended, waiting up to `patience` to learn it (e.g. `exited
    /// with status 1`, `was killed by signal 9 (SIGKILL)`).
    fn exit_cause(&self, patience: Duration) -> BoxFuture<'_, String>;
}

/// The provider that placed sessions on a runtime, as the runtime's connection asks it
/// when the runtime drains.
pub(crate) trait Placement: Send + Sync + 'static {
    /// Whether a runtime other than the one of connection `generation` can take its cells
    /// now (a fresh local process; a healthy runtime of the pool): a draining runtime's
    /// cells then move at once.
    fn elsewhere(&self, generation: u64) -> bool;
}

struct PendingRequest {
    deliver: Deliver,
    /// The session the request is for (none for `OpenSession`).
    session: Option<SessionId>,
    /// The runtime holds the request's answer until the host's word (`Request::holds_answer`).
    holds_answer: bool,
    /// A `wait`: it goes on if its cell is rebuilt elsewhere.
    observes: bool,
    /// The cell it observes (a wait, a pending-aware wait, a terminate): an offer of that
    /// cell's final answer is given back, for the runtime to answer this request with it.
    cell: Option<CellId>,
    hooks: RequestHooks,
}

/// What the host keeps of a session being opened: its delegate, its copy of the
/// committed stored values, which `Committed` messages update, and the owner of its lost
/// cells' fates, told of each cell at once when the runtime is lost.
#[derive(Clone)]
pub(crate) struct Opening {
    pub(crate) delegate: Arc<dyn CodeModeSessionDelegate>,
    pub(crate) stored: Arc<Mutex<CommittedValues>>,
    pub(crate) lost: Weak<LostCells>,
}

/// What a request carries for the host's side only.
#[derive(Default, Clone)]
pub(crate) struct RequestHooks {
    /// For `OpenSession`: the session being opened.
    pub(crate) opening: Option<Opening>,
    /// For `Execute`: the cell's own delegate (contract 8.5), registered at admission.
    pub(crate) cell_delegate: Option<Arc<dyn CodeModeSessionDelegate>>,
    /// For `Execute`: told the cell's id (as the agent core sees it) at admission.
    pub(crate) admitted: Option<AdmittedHook>,
    /// For `Execute` and `Wait`: sends `Preempt` when it fires (contract 8.4).
    pub(crate) preempt: Option<CancellationToken>,
    /// For `Execute`: what the cell's journal starts from (contract §7).
    pub(crate) exec: Option<ExecJournal>,
    /// For `Resume`: what the host keeps of the cell once the runtime took it.
    pub(crate) resumed: Option<ResumedHook>,
}

struct SessionEntry {
    delegate: Arc<dyn CodeModeSessionDelegate>,
    /// The host's copy of the session's committed stored values (contract §7).
    stored: Arc<Mutex<CommittedValues>>,
    /// Cells started with a delegate of their own, until they close.
    cell_delegates: HashMap<CellId, Arc<dyn CodeModeSessionDelegate>>,
    /// Cells seen alive (by a response or a delegate call) and not yet closed.
    live_cells: HashSet<CellId>,
    /// The cells closed lately, for the messages a close overtakes.
    closed_cells: RecentlyClosed,
    /// The journals of its running cells (contract §7).
    journals: HashMap<CellId, Kept>,
    /// What each cell admitted or resumed here may ask of the delegate (the host's wall
    /// against a runtime that escaped its cells), until it closes.
    guards: HashMap<CellId, CellGuard>,
    /// The final answers the runtime offered, for the cells' next observation (`offers`).
    offers: HashMap<CellId, offers::Offer>,
    /// Where its cells go when the runtime is lost (the session's [`LostCells`]); gone
    /// with the session.
    lost: Weak<LostCells>,
}

/// The last [`CLOSED_CELLS_KEPT`] cells a session closed: a late message about one (its
/// response, overtaken by its close; a second close; a delegate call) is known for what it
/// is. Older ones are forgotten, so that a session that runs for ever keeps no more than
/// this (before, every closed cell's id stayed for the session's life, some 60 bytes a
/// cell); a forgotten one's number is at or below the highest number forgotten, which
/// counts as closed for any cell not open ([`SessionEntry::closed`]): a runtime that
/// closes a cell, floods closes and admits it again finds it still closed.
#[derive(Default)]
struct RecentlyClosed {
    ids: HashSet<CellId>,
    order: VecDeque<CellId>,
    /// The highest cell number forgotten.
    forgotten_up_to: u64,
}

/// How many closed cells a session remembers ([`RecentlyClosed`]).
const CLOSED_CELLS_KEPT: usize = 4096;

impl RecentlyClosed {
    /// Whether `cell_id` closed (or, forgotten, may have: [`SessionEntry::closed`] asks
    /// only of cells not open).
    fn contains(&self, cell_id: &CellId) -> bool {
        self.ids.contains(cell_id)
            || cell_id
                .number()
                .is_some_and(|number| number <= self.forgotten_up_to)
    }

    /// Remembers `cell_id` as closed; `false` if it was already (the oldest goes past the
    /// bound).
    fn insert(&mut self, cell_id: CellId) -> bool {
        if !self.ids.insert(cell_id.clone()) {
            return false;
        }
        self.order.push_back(cell_id);
        if self.order.len() > CLOSED_CELLS_KEPT
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
            if let Some(number) = oldest.number() {
                self.forgotten_up_to = self.forgotten_up_to.max(number);
            }
        }
        true
    }
}

/// What the host lets one cell's runtime ask of its delegate: only tools its exec enabled,
/// each call under a number above every one it issued before. A runtime that asks anything
/// else is dropped with the violation named, before any delegate sees the call.
struct CellGuard {
    /// The names of the tools its exec enabled.
    tools: HashSet<String>,
    /// The highest call number it issued (or its journal holds).
    last_call: u64,
}

impl CellGuard {
    fn new(tools: &[ToolDefinition], last_call: u64) -> Self {
        Self {
            tools: tools.iter().map(|tool| tool.name.clone()).collect(),
            last_call,
        }
    }
}

#[derive(Default)]
struct State {
    last_request: u64,
    pending: HashMap<RequestId, PendingRequest>,
    /// Requests whose caller gave up: one late response each is expected; an answer it
    /// carries is given back to its cell.
    abandoned: HashMap<RequestId, Abandoned>,
    /// The cell delegates of abandoned `Execute` requests: their cells still run and
    /// still call them.
    abandoned_delegates: HashMap<RequestId, Arc<dyn CodeModeSessionDelegate>>,
    sessions: HashMap<SessionId, SessionEntry>,
    /// Delegate calls in flight: how to cancel each, and its session and cell.
    delegate_calls: HashMap<DelegateId, (CancellationToken, SessionId, CellId)>,
    /// The tool sets registered on the runtime, oldest first (at most [`HOST_TOOL_SETS`]).
    registered_tools: std::collections::VecDeque<ToolSetId>,
    /// The ids of recently used tool sets, by address, so a caller that passes the same
    /// `Arc` to every exec is not hashed again.
    tool_set_ids: Vec<(std::sync::Weak<[ToolDefinition]>, ToolSetId)>,
    /// Cells that outlive a runtime: those rebuilt here, and once lost, their calls that
    /// go on.
    rebuilds: Rebuilds,
    /// The traces its requests carried: the runtime's spans are exported only in those.
    sent_traces: crate::spans::SentTraces,
}

/// How many tool sets' ids a connection remembers by address.
const TOOL_SET_IDS_BY_ADDRESS: usize = 8;

pub(crate) struct Connection {
    /// 1 for the first process of a provider, then 2, 3, ... after each replacement (a
    /// pool numbers all of its connections in one sequence).
    pub(crate) generation: u64,
    peer: Box<dyn Peer>,
    placement: Box<dyn Placement>,
    outbox: Outbox<ClientMessage>,
    state: Mutex<State>,
    /// Set once, when the connection is lost: its cause.
    lost: OnceLock<String>,
    /// The runtime announced it is draining.
    draining: AtomicBool,
    /// The runtime closed its end cleanly after it announced a drain: it stopped, and
    /// everything it sent arrived (so an exec it never reported admitted ran nothing that
    /// anyone saw).
    left_by_drain: AtomicBool,
    /// Sessions placed on this runtime by a provider (bound or being bound).
    placed: AtomicUsize,
    /// The pinger and writer tasks, stopped when the connection is lost or dropped (the
    /// pinger holds the outbox, which keeps the writer and so the stream alive). Fixed at
    /// the start; aborting one twice does nothing.
    tasks: Vec<AbortHandle>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Nobody uses this runtime any more; the process goes with it.
        self.peer.kill();
        self.stop_tasks();
    }
}

/// A session placed on a connection; counts toward its load until dropped.
pub(crate) struct Placed {
    pub(crate) connection: Arc<Connection>,
}

impl Placed {
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        connection.placed.fetch_add(1, Ordering::SeqCst);
        Self { connection }
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.connection.placed.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connection {
    /// Completes the handshake on a fresh stream to `peer` and starts the reader and
    /// writer tasks.
    pub(crate) async fn establish<S>(
        (peer, placement): (Box<dyn Peer>, Box<dyn Placement>),
        stream: S,
        generation: u64,
        liveness: Option<Liveness>,
    ) -> Result<Arc<Self>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let Transport {
            mut reader,
            outbox,
            writer,
        } = transport::split::<S, ServerMessage, ClientMessage>(stream);
        // A failed write shows as a lost reader; the writer's handle only stops it.
        let writer = writer.abort_handle();
        let hello = ClientHello::current(concat!("code-mode-host ", env!("CARGO_PKG_VERSION")));
        outbox.send(&ClientMessage::Hello(hello.clone()))?;
        let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
            Err(_) => return Err(HandshakeError::Timeout(HANDSHAKE_TIMEOUT)),
            Ok(None) => {
                return Err(HandshakeError::Closed(peer.exit_cause(EXIT_PATIENCE).await));
            }
            Ok(Some(frame)) => frame?,
        };
        let ready = match first {
            ServerMessage::Ready(ready) => ready,
            ServerMessage::Rejected(rejection) => return Err(HandshakeError::Refused(rejection)),
            other => return Err(HandshakeError::Unexpected(other.kind().to_owned())),
        };
        hello.accept(&ready)?;
        tracing::info!(generation, peer = %peer.describe(), %ready, "code-mode runtime ready");
        let mut tasks = vec![writer];
        if let Some(liveness) = liveness {
            let pinger = transport::spawn_pinger(
                outbox.clone(),
                liveness.ping_interval,
                ClientMessage::Ping,
            );
            tasks.push(pinger.abort_handle());
        }
        let connection = Arc::new(Self {
            generation,
            peer,
            placement,
            outbox,
            state: Mutex::new(State::default()),
            lost: OnceLock::new(),
            draining: AtomicBool::new(false),
            left_by_drain: AtomicBool::new(false),
            placed: AtomicUsize::new(0),
            tasks,
        });
        tokio::spawn(read_loop(
            Arc::downgrade(&connection),
            reader,
            liveness.map(|liveness| liveness.timeout),
        ));
        Ok(connection)
    }

    fn stop_tasks(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Whether the host should leave this draining runtime now and rebuild its running
    /// cells on another (CONTRACT §7): a rolling update then waits for no long cell and
    /// kills none. Only when another runtime can take them, at least one cell runs here,
    /// every running cell can be rebuilt from a whole journal, and nothing but
    /// observations of them is in flight (an exec or a call that would fail with the loss
    /// is waited for; each later message asks again).
    fn moves_cells(&self) -> bool {
        if !self.is_draining() || self.is_lost() {
            return false;
        }
        {
            let state = lock(&self.state);
            let mut running = false;
            for entry in state.sessions.values() {
                running |= !entry.live_cells.is_empty();
                if !entry.all_rebuildable() {
                    return false;
                }
            }
            if !running || !state.pending.values().all(|pending| pending.observes) {
                return false;
            }
        }
        // Asked without this connection's lock: it looks at the provider's other runtimes.
        self.placement.elsewhere(self.generation)
    }

    /// The runtime announced that it is draining (or refused a session for it).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Sessions placed on this runtime.
    pub(crate) fn placed(&self) -> usize {
        self.placed.load(Ordering::SeqCst)
    }

    /// Whether the runtime can take a new session: not lost, not draining.
    pub(crate) fn is_healthy(&self) -> bool {
        !self.is_lost() && !self.is_draining()
    }

    /// Names the runtime in logs.
    pub(crate) fn describe(&self) -> String {
        self.peer.describe()
    }

    /// The runtime's process id, when it is a local process.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// Whether the runtime stopped after a drain and closed its end cleanly (set before
    /// the loss is reported to any caller).
    pub(crate) fn left_by_drain(&self) -> bool {
        self.left_by_drain.load(Ordering::SeqCst)
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.get().is_some()
    }

    /// Why the connection was lost, once it was.
    pub(crate) fn lost_cause(&self) -> Option<String> {
        self.lost.get().cloned()
    }

    /// Whether `session` has nothing on this runtime that a move would leave behind: no
    /// cell alive (an answer given back keeps its cell alive), no request in flight.
    pub(crate) fn session_is_idle(&self, session: SessionId) -> bool {
        let state = lock(&self.state);
        let quiet = state
            .sessions
            .get(&session)
            .is_none_or(|entry| entry.live_cells.is_empty());
        quiet
            && !state
                .pending
                .values()
                .any(|pending| pending.session == Some(session))
            && !state
                .abandoned
                .values()
                .any(|abandoned| abandoned.session == Some(session))
    }

    fn lost_error(&self) -> SessionError {
        SessionError::RuntimeLost(
            self.lost
                .get()
                .cloned()
                .unwrap_or_else(|| "the connection closed".to_owned()),
        )
    }

    /// The id the agent core sees for a runtime cell id of `session` ([`Rebuilds::external`]).
    pub(crate) fn external_cell_id(&self, session: SessionId, cell_id: &CellId) -> CellId {
        lock(&self.state)
            .rebuilds
            .external(self.generation, session, cell_id)
    }

    /// The runtime's id in `session` for a cell id the agent core gave
    /// ([`Rebuilds::runtime`]).
    pub(crate) fn runtime_cell_id(&self, session: SessionId, external: &CellId) -> Option<CellId> {
        lock(&self.state)
            .rebuilds
            .runtime(self.generation, session, external)
    }

    /// Sends a request and waits for its response.
    ///
    /// Cancel safety: the request is sent during the first poll; dropping the future
    /// afterwards sends `CancelRequest`, and the runtime treats it like a dropped call in
    /// process (e.g. an `execute` still admits its cell, a `wait` consumes nothing).
    pub(crate) async fn call<T: FromResponse>(
        self: &Arc<Self>,
        request: Request,
        hooks: RequestHooks,
    ) -> Result<T, SessionError> {
        let preempt = hooks.preempt.clone();
        let (reply, answer) = oneshot::channel();
        // A request that starts or rebuilds a cell carries the span it is made under (the
        // cell's), so that the runtime's spans of the cell hang under it.
        let trace = request
            .starts_cell()
            .then(|| crate::spans::trace_of(&tracing::Span::current()))
            .flatten();
        let id = {
            let mut state = lock(&self.state);
            if self.is_lost() {
                return Err(self.lost_error());
            }
            // A cell that finished unobserved offered its final answer: no round trip.
            if let Some(response) = self.answer_from_offer(&mut state, &request) {
                drop(state);
                return T::from_response(response).map_err(|_| {
                    SessionError::Runtime("an offered answer of another kind".into())
                });
            }
            if let Some(trace) = &trace {
                state.sent_traces.remember(trace.trace_id, trace.span_id);
            }
            register(&mut state, &request, deliver_to::<T>(reply), hooks)
        };
        code_mode_internal::hop!("host sends the request");
        if let Err(error) = self
            .outbox
            .send(&ClientMessage::Request { id, request, trace })
        {
            lock(&self.state).pending.remove(&id);
            let failure = RuntimeFailure::new(format!("the request could not be sent: {error}"));
            return Err(SessionError::Runtime(failure.with_cause(error)));
        }
        let mut guard = AbandonOnDrop {
            connection: self,
            id,
            answer,
            armed: true,
        };
        let answer = match preempt {
            None => (&mut guard.answer).await,
            Some(preempt) => {
                tokio::select! {
                    biased;
                    answer = &mut guard.answer => answer,
                    () = preempt.cancelled() => {
                        // The runtime answers the observation at once; an id already
                        // answered is ignored there.
                        let _ = self.outbox.send(&ClientMessage::Preempt { id });
                        (&mut guard.answer).await
                    }
                }
            }
        };
        guard.armed = false;
        answer.map_or_else(|_| Err(self.lost_error()), Delivery::take)
    }

    /// The request that runs `call` on `session`. An exec with tools names its tool set,
    /// registered on the runtime first if it is not yet (contract: the tool list is sent
    /// once per connection, not per exec); the registration is queued ahead of the
    /// request, so the runtime has it when the request arrives.
    pub(crate) fn session_request(
        self: &Arc<Self>,
        session: SessionId,
        mut call: SessionCall,
    ) -> Request {
        let Some(exec) = call.exec_request_mut() else {
            return Request::Session {
                session,
                call: call.into(),
            };
        };
        if exec.tools.is_empty() {
            return Request::Session {
                session,
                call: call.into(),
            };
        }
        let tools = std::mem::replace(&mut exec.tools, Arc::from(Vec::new()));
        let mut state = lock(&self.state);
        state.tool_set_ids.retain(|(set, _)| set.strong_count() > 0);
        let known = state
            .tool_set_ids
            .iter()
            .find(|(set, _)| std::ptr::addr_eq(set.as_ptr(), Arc::as_ptr(&tools)))
            .map(|(_, id)| *id);
        let tool_set = known.unwrap_or_else(|| ToolSetId::of(&tools));
        if known.is_none() {
            if state.tool_set_ids.len() >= TOOL_SET_IDS_BY_ADDRESS {
                state.tool_set_ids.remove(0);
            }
            state.tool_set_ids.push((Arc::downgrade(&tools), tool_set));
        }
        if !state.registered_tools.contains(&tool_set) {
            if state.registered_tools.len() >= HOST_TOOL_SETS {
                state.registered_tools.pop_front();
            }
            state.registered_tools.push_back(tool_set);
            // Queued while the set is marked registered, under the same lock: another
            // session that finds it marked sends its exec after this registration.
            let request = Request::RegisterTools {
                tool_set,
                tools: tools_to_wire(&tools),
            };
            self.send_detached_locked(&mut state, request);
        }
        drop(state);
        Request::SessionWithTools {
            session,
            tool_set,
            call: call.into(),
        }
    }

    /// Sends a request whose answer nobody waits for (used when a session is dropped).
    pub(crate) fn send_detached(self: &Arc<Self>, request: Request) {
        self.send_detached_locked(&mut lock(&self.state), request);
    }

    /// [`Self::send_detached`] under the state lock the caller holds: queued in the order
    /// of that lock.
    fn send_detached_locked(&self, state: &mut State, request: Request) {
        let id = register(
            state,
            &request,
            Box::new(|_, _| Ok(())),
            RequestHooks::default(),
        );
        let _ = self.outbox.send(&ClientMessage::Request {
            id,
            request,
            trace: None,
        });
    }

    /// Handles one message from the runtime; `Err` is a protocol violation.
    fn handle(self: &Arc<Self>, message: ServerMessage) -> Result<(), Violation> {
        match message {
            ServerMessage::Response { id, result } => {
                code_mode_internal::hop!("host has the response");
                self.on_response(id, result)
            }
            ServerMessage::Delegate { id, session, call } => {
                code_mode_internal::hop!("host has the tool call");
                self.on_delegate_call(id, session, call)
            }
            ServerMessage::CancelDelegate { id } => {
                // The task acknowledges once the delegate stopped; an unknown id was
                // answered already (the cancellation crossed the answer).
                if let Some((token, _, _)) = lock(&self.state).delegate_calls.get(&id) {
                    token.cancel();
                }
                Ok(())
            }
            ServerMessage::CellClosed { session, cell_id } => {
                self.on_cell_closed(session, cell_id.into())
            }
            ServerMessage::Admitted { id, cell_id } => self.on_admitted(id, cell_id.into()),
            ServerMessage::Offer {
                session,
                cell_id,
                response,
            } => {
                let kept = self.on_offer(session, cell_id.into(), response);
                code_mode_internal::hop!("host has the offer");
                kept
            }
            ServerMessage::Spans(records) => {
                // Checked and ordered under the lock; made spans outside it, since an
                // exporter may take its time.
                let (records, out_of_bounds) = crate::spans::within_bounds(records);
                let (ready, refused) = lock(&self.state).sent_traces.admit_batch(records);
                crate::spans::emit_all(ready);
                match refused.or(out_of_bounds) {
                    Some(refusal) => Err(Violation::Span(refusal)),
                    None => Ok(()),
                }
            }
            ServerMessage::Journal {
                session,
                cell_id,
                entry,
            } => self.on_journal(session, cell_id.into(), entry.into()),
            ServerMessage::Committed {
                session,
                cell_id,
                writes,
            } => {
                let cell_id = CellId::from(cell_id);
                if !is_runtime_cell_id(&cell_id) {
                    return Err(Violation::CommitCellInvalid(cell_id));
                }
                let stored = lock(&self.state).sessions.get_mut(&session).map(|entry| {
                    // The cell completed and its writes are in: until its final answer
                    // comes, it is rebuilt only to give that answer, merging nothing.
                    if let Some(kept) = entry.journals.get_mut(&cell_id) {
                        kept.committed = true;
                    }
                    Arc::clone(&entry.stored)
                });
                match stored {
                    // Proof that the chaos test sees a lost commit (a test-only switch).
                    Some(_) if faults::fire(Fault::DropCommit, || !writes.is_empty()) => {}
                    Some(stored) => lock(&stored).merge(&writes),
                    // A session the host already forgot (shut down): nobody keeps it.
                    None => tracing::debug!(%session, "a commit for a session no longer open"),
                }
                Ok(())
            }
            ServerMessage::Ping(nonce) => {
                let _ = self.outbox.send(&ClientMessage::Pong(nonce));
                Ok(())
            }
            ServerMessage::Pong(_) => Ok(()),
            ServerMessage::Draining => {
                if !self.draining.swap(true, Ordering::SeqCst) {
                    tracing::warn!(peer = %self.peer.describe(), "the code-mode runtime is draining");
                }
                Ok(())
            }
            other @ (ServerMessage::Ready(_) | ServerMessage::Rejected(_)) => {
                Err(Violation::AfterHandshake(other.kind()))
            }
        }
    }

    fn on_response(
        self: &Arc<Self>,
        id: RequestId,
        result: Result<Response, WireError>,
    ) -> Result<(), Violation> {
        let mut state = lock(&self.state);
        let Some(pending) = state.pending.remove(&id) else {
            // The cell delegate an abandoned exec kept goes once the lock is let go: its
            // drop is the agent core's code.
            let delegate = state.abandoned_delegates.remove(&id);
            let handled = match state.abandoned.remove(&id) {
                Some(abandoned) => self.on_abandoned_response(state, id, abandoned, result),
                None => {
                    drop(state);
                    Err(Violation::ResponseNotInFlight(id))
                }
            };
            drop(delegate);
            return handled;
        };
        if matches!(result, Err(WireError::Draining)) {
            self.draining.store(true, Ordering::SeqCst);
        }
        if let Err(violation) = self.book_response(&mut state, &pending, &result) {
            // What the request held (its delegate, its hooks) goes after the lock: its
            // drop is the agent core's code.
            drop(state);
            drop(pending);
            return Err(violation);
        }
        if faults::fire(Fault::LoseAnswer, || is_final(&result)) {
            // Proof that the chaos test sees a lost answer (a test-only switch): the
            // caller waits for ever.
            std::mem::forget(pending);
            return Ok(());
        }
        // The runtime holds the answer until this word.
        let took = match (&result, pending.session) {
            (Ok(Response::Reply(reply)), Some(session)) => journals::observed_items(reply)
                .and_then(|(cell_id, items)| {
                    let taken = state
                        .sessions
                        .get(&session)?
                        .taken_output(&cell_id.into())?;
                    Some((taken, items))
                }),
            _ => None,
        };
        drop(state);
        let word = (pending.holds_answer && result.is_ok()).then(|| Word {
            outbox: self.outbox.clone(),
            id,
            took,
        });
        (pending.deliver)(result.map_err(WireError::into_session_error), word)
            .map_err(|_| Violation::ResponseOfAnotherKind(id))
    }

    /// What a response tells the host's state: a session opened, a cell resumed or seen
    /// alive, a cell over.
    fn book_response(
        &self,
        state: &mut State,
        pending: &PendingRequest,
        result: &Result<Response, WireError>,
    ) -> Result<(), Violation> {
        if let Ok(response) = result {
            match response {
                Response::SessionOpened(session) => {
                    let Some(Opening {
                        delegate,
                        stored,
                        lost,
                    }) = pending.hooks.opening.clone()
                    else {
                        return Err(Violation::OpenedWithoutDelegate(*session));
                    };
                    let entry = SessionEntry {
                        delegate,
                        stored,
                        cell_delegates: HashMap::new(),
                        live_cells: HashSet::new(),
                        closed_cells: RecentlyClosed::default(),
                        journals: HashMap::new(),
                        guards: HashMap::new(),
                        offers: HashMap::new(),
                        lost,
                    };
                    if state.sessions.contains_key(session) {
                        return Err(Violation::OpenedTwice(*session));
                    }
                    state.sessions.insert(*session, entry);
                }
                Response::Resumed(cell_id) => {
                    let cell_id = CellId::from(cell_id);
                    self.on_resumed(state, pending.session, &cell_id, &pending.hooks)?;
                }
                Response::Reply(reply) => {
                    if let payload::SessionReply::Started { cell_id, .. }
                    | payload::SessionReply::StartedPending { cell_id, .. } = reply
                    {
                        mark_alive(state, pending.session, &cell_id.into())?;
                    }
                    // A cell whose final answer came is over: it is never rebuilt.
                    if let Some(cell_id) = journals::finished_cell(reply)
                        && let Some(entry) = pending
                            .session
                            .and_then(|session| state.sessions.get_mut(&session))
                    {
                        entry.journals.remove(&CellId::from(cell_id));
                    }
                }
                Response::ToolsRegistered | Response::Answered(_) => {}
            }
        }
        Ok(())
    }

    /// Forgets a session once its shutdown was answered.
    pub(crate) fn forget_session(&self, session: SessionId) {
        // The entry (its delegates) goes after the lock.
        let gone = lock(&self.state).sessions.remove(&session);
        drop(gone);
    }

    /// Records the loss of the runtime and fails or closes everything that depended on it.
    /// Why the connection ended, in words, the runtime killed where it may still run.
    async fn cause_of(&self, ended: Ended) -> String {
        match ended {
            Ended::Violation(violation) => {
                self.peer.kill();
                format!("protocol violation by the runtime: {violation}")
            }
            Ended::Silent(timeout) => {
                self.peer.kill();
                format!(
                    "{} sent nothing for {timeout:?}, not even an answer to a ping (liveness timeout: the connection is half-open or the runtime is stuck)",
                    self.peer.noun()
                )
            }
            Ended::Stalled => {
                self.peer.kill();
                format!(
                    "{} stopped reading what the host sends (liveness: the connection is stuck)",
                    self.peer.noun()
                )
            }
            Ended::Moved => {
                self.peer.kill();
                format!(
                    "{} is draining; its running cells moved to another runtime",
                    self.peer.noun()
                )
            }
            Ended::Closed => format!(
                "{} {}",
                self.peer.noun(),
                self.peer.exit_cause(EXIT_PATIENCE).await
            ),
            Ended::Broken(error) => format!(
                "{} {} ({error})",
                self.peer.noun(),
                self.peer.exit_cause(EXIT_PATIENCE).await
            ),
        }
    }

    async fn on_lost(&self, ended: Ended) {
        if matches!(ended, Ended::Closed) && self.is_draining() {
            self.left_by_drain.store(true, Ordering::SeqCst);
        }
        let cause = self.cause_of(ended).await;
        self.stop_tasks();
        tracing::error!(
            generation = self.generation,
            peer = %self.peer.describe(),
            "code-mode runtime lost: {cause}"
        );
        let mut closing = Vec::new();
        // Told under the lock, logged and let go of after it: the sessions' owners of
        // their lost cells, the cells to log, and the cells of sessions gone meanwhile.
        let mut told = Vec::new();
        let mut orphaned = Vec::new();
        let late;
        let state = {
            let mut state = lock(&self.state);
            // Each session's owner of its lost cells is told of them before the loss is
            // known: a caller that gets the error and asks about its cell at once finds
            // its fate there.
            let mut late_calls = HashMap::new();
            let State {
                sessions, rebuilds, ..
            } = &mut *state;
            for (session, entry) in sessions.iter_mut() {
                let external =
                    |cell_id: &CellId| rebuilds.external(self.generation, *session, cell_id);
                let cells = entry.lost_cells(external, &mut late_calls, &mut closing);
                match entry.lost.upgrade() {
                    Some(fates) => {
                        let cut_short = fates.runtime_lost(&cause, cells);
                        told.push((fates, cut_short));
                    }
                    None => orphaned.push(cells),
                }
            }
            late = rebuilds.lose(late_calls);
            let _ = self.lost.set(cause.clone());
            // Everything else of the runtime's state is over.
            let rebuilds = std::mem::take(&mut state.rebuilds);
            std::mem::replace(
                &mut *state,
                State {
                    rebuilds,
                    ..State::default()
                },
            )
        };
        for (_fates, cut_short) in told {
            for cell in cut_short {
                cell.log(&cause);
            }
        }
        drop(orphaned);
        for (_, pending) in state.pending {
            let error = SessionError::RuntimeLost(cause.clone());
            let _ = (pending.deliver)(Err(error), None);
        }
        // The calls of cells that can be rebuilt go on; the others are cancelled.
        for (id, (token, _, _)) in state.delegate_calls {
            if !late.contains(&id) {
                token.cancel();
            }
        }
        // The dead cells are reported closed, each once.
        for (delegate, cell_id) in closing {
            delegate.cell_closed(&cell_id);
        }
    }
}

/// Registers a request in flight and returns its fresh id.
fn register(
    state: &mut State,
    request: &Request,
    deliver: Deliver,
    hooks: RequestHooks,
) -> RequestId {
    state.last_request += 1;
    let id = RequestId(state.last_request);
    let pending = PendingRequest {
        deliver,
        session: request.session(),
        holds_answer: request.holds_answer(),
        observes: request.is_wait(),
        cell: offers::observed_cell(request),
        hooks,
    };
    state.pending.insert(id, pending);
    id
}

/// Records a started cell as alive in its session (unless it already closed: the close
/// event may overtake the response).
fn mark_alive(
    state: &mut State,
    session: Option<SessionId>,
    cell_id: &CellId,
) -> Result<(), Violation> {
    if !is_runtime_cell_id(cell_id) {
        return Err(Violation::ResponseCellInvalid(cell_id.clone()));
    }
    if let Some(entry) = session.and_then(|session| state.sessions.get_mut(&session))
        && !entry.closed(cell_id)
    {
        entry.live_cells.insert(cell_id.clone());
    }
    Ok(())
}

/// A runtime names its cells in its own first generation; the host adds its generation.
fn is_runtime_cell_id(cell_id: &CellId) -> bool {
    cell_id.generation() == Some(1)
}

/// Whether a read error means the stream broke (the peer died) rather than misbehaved.
fn is_broken(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// The reader task: handles messages until the connection ends, then records the loss.
async fn read_loop<S: AsyncRead>(
    connection: Weak<Connection>,
    mut reader: FrameReader<S, ServerMessage, ClientMessage>,
    timeout: Option<Duration>,
) {
    let stalled = match connection.upgrade() {
        Some(connection) => connection.outbox.stalled().clone(),
        None => return,
    };
    let ended = loop {
        let next = tokio::select! {
            biased;
            () = stalled.cancelled() => break Ended::Stalled,
            next = async {
                match timeout {
                    Some(timeout) => tokio::time::timeout(timeout, reader.next()).await.map_err(|_| timeout),
                    None => Ok(reader.next().await),
                }
            } => next,
        };
        let Some(connection) = connection.upgrade() else {
            return; // Nobody uses this runtime any more.
        };
        match next {
            Err(timeout) => break Ended::Silent(timeout),
            Ok(None) => break Ended::Closed,
            Ok(Some(Err(FrameError::Io(error)))) if is_broken(&error) => {
                break Ended::Broken(error.to_string());
            }
            Ok(Some(Err(error))) => break Ended::Violation(error.into()),
            Ok(Some(Ok(message))) => {
                if let Err(violation) = connection.handle(message) {
                    break Ended::Violation(violation);
                }
                if connection.moves_cells() {
                    break Ended::Moved;
                }
            }
        }
    };
    drop(reader);
    if let Some(connection) = connection.upgrade() {
        connection.on_lost(ended).await;
    }
}

/// Whether a response ends a cell (its final result, to an exec or an observation).
fn is_final(result: &Result<Response, WireError>) -> bool {
    match result {
        Ok(Response::Reply(
            payload::SessionReply::Started {
                initial_response: response,
                ..
            }
            | payload::SessionReply::Cell(response),
        )) => matches!(response, payload::CellResponse::Result { .. }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_remembers_only_its_latest_closed_cells() {
        let mut closed = RecentlyClosed::default();
        for number in 1..=CLOSED_CELLS_KEPT as u64 + 1000 {
            assert!(closed.insert(CellId::new(number)));
        }
        assert!(
            !closed.insert(CellId::new(CLOSED_CELLS_KEPT as u64 + 1000)),
            "twice"
        );
        assert_eq!(closed.ids.len(), CLOSED_CELLS_KEPT);
        assert_eq!(closed.order.len(), CLOSED_CELLS_KEPT);
        assert_eq!(
            closed.ids.len(),
            CLOSED_CELLS_KEPT,
            "the oldest ids are forgotten"
        );
        assert!(!closed.ids.contains(&CellId::new(1000)));
        // A forgotten one still counts as closed (a cell not open below the highest
        // number forgotten); one above it that never closed does not.
        assert!(closed.contains(&CellId::new(1000)));
        assert!(closed.contains(&CellId::new(1001)));
        assert!(!closed.contains(&CellId::new(CLOSED_CELLS_KEPT as u64 + 2000)));
        assert!(closed.contains(&CellId::new(CLOSED_CELLS_KEPT as u64 + 1000)));
    }
}
