//! The in-process session: [`InProcessSession`] implements [`CodeModeSession`] on top of the
//! cell runtime.
//!
//! The session is a registry and router: it owns the cell registry, the stored values, the
//! id allocator, the root cancellation token and the task tracker of its cell actors. Each
//! cell's lifecycle (output, observer, yields, callbacks, the terminal decision, and each
//! answer's life until it is taken) belongs to its actor (`actor/`); the session only
//! forwards requests to it. A runtime process gets answers untaken
//! ([`InProcessSession::call_untaken`]) and takes or drops them on its host's word.
//!
//! Must be used inside a tokio runtime (multi-threaded or current-thread): cells run on
//! their own OS threads, their actors are tokio tasks.

mod actor;

#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use actor::perturb_replayed_calls;
pub mod search;

use crate::runtime::{
    CellConfig, EVENT_CHANNEL_CAPACITY, IsolateShelf, StoredValues, spawn_cell_on,
};
use actor::{ActorRequest, Answer, CellActor, Journal, Observer, Returnable, Routing};
use code_mode_internal::calls::StartedWith;
use code_mode_internal::futures::measure;
use code_mode_internal::sync::lock;
use code_mode_internal::{CallHooks, CallTarget, SessionCall, SessionReply};
use code_mode_protocol::journal::{CellJournal, JournalEntry};
use code_mode_protocol::session::{DEFAULT_YIELD_TIME_MS, effective_yield_time_ms};
use code_mode_protocol::stored::CommittedValues;
use code_mode_protocol::{AdmittedHook, CallId, JsonText, ToolError};
use code_mode_protocol::{
    BoxFuture, CellId, CellResponse, CodeModeProvider, CodeModeSession, CodeModeSessionDelegate,
    ExecHooks, ExecRequest, PendingOutcome, RuntimeFailure, SessionError, SessionOptions,
    StartedCell, StartedPendingCell, WaitRequest,
};
use code_mode_trace::traced::{CellTraces, Traced};
use search::{SearchCache, SearchableTools};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Capacity of a cell actor's request queue; callers wait when it is full.
const ACTOR_REQUEST_CAPACITY: usize = 16;

/// How an [`InProcessProvider`] runs its sessions' cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProcessConfig {
    /// Start V8 and prepare cell threads when the provider is created, so that the first
    /// cell does not pay for it (about a millisecond and a thread start). Default: on.
    pub prewarm: bool,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self { prewarm: true }
    }
}

/// The provider whose sessions run their cells in this process, each cell on a thread of
/// its own ([`InProcessSession`]).
#[derive(Debug, Clone)]
pub struct InProcessProvider {
    _config: InProcessConfig,
}

impl InProcessProvider {
    pub fn new(config: InProcessConfig) -> Self {
        if config.prewarm {
            crate::runtime::prewarm();
        }
        Self { _config: config }
    }
}

impl CodeModeProvider for InProcessProvider {
    /// The session, with its cells and nested calls traced as every provider traces them
    /// (`code_mode_trace::traced`); it dereferences to [`InProcessSession`].
    type Session = Traced<InProcessSession>;

    fn open_session_with_values(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> Traced<InProcessSession> {
        let traces = CellTraces::new();
        Traced::new(
            InProcessSession::with_values(traces.delegate(delegate), options, stored_values),
            traces,
        )
    }
}

/// A session whose cells run in this process. Dropping it starts its shutdown.
pub struct InProcessSession {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InProcessSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessSession").finish_non_exhaustive()
    }
}

/// What the session and its actors share.
pub(crate) struct Shared {
    delegate: Arc<dyn CodeModeSessionDelegate>,
    options: SessionOptions,
    /// Session root of the token tree: session → cell → callback.
    root: CancellationToken,
    /// Tracks every cell actor; shutdown waits on it.
    actors: TaskTracker,
    registry: Mutex<Registry>,
    /// The committed stored values. Cells get an `Arc` snapshot; commits copy on write.
    stored: Mutex<CommittedValues>,
    /// The session's parked isolates, when it reuses them (CONTRACT §7). Never shared
    /// with another session; cleared at shutdown.
    shelf: Option<Arc<IsolateShelf>>,
    /// The searchable form of the tool set with deferred tools the last cell used, so the
    /// index behind `tools.tool_search` is built once per set (contract 8.3).
    search: SearchCache,
    /// Cells hibernating now, and hibernations and wake-ups so far.
    hibernating: AtomicU64,
    hibernations: AtomicU64,
    wakes: AtomicU64,
    /// Where a cell that finished with nobody observing offers its final answer, when the
    /// session's driver asked for that ([`InProcessSession::offer_finished`]).
    offers: std::sync::OnceLock<OfferSink>,
}

struct Registry {
    shutting_down: bool,
    last_cell_id: u64,
    cells: HashMap<CellId, mpsc::Sender<ActorRequest>>,
}

impl Shared {
    fn begin_shutdown(&self) {
        lock(&self.registry).shutting_down = true;
        self.root.cancel();
        self.actors.close();
        if let Some(shelf) = &self.shelf {
            shelf.clear();
        }
    }

    /// Merges a completed cell's writes into the session, key by key, and tells the
    /// session's delegate (a runtime process's delegate sends them to its host) before the
    /// cell's final response can be given.
    pub(crate) fn commit(&self, cell_id: &CellId, writes: StoredValues) {
        if writes.is_empty() {
            return;
        }
        let mut stored = lock(&self.stored);
        stored.merge(&writes);
        // Under the lock: two cells committing at once reach the delegate in the order
        // they merged, so a copy applying them in turn ends equal to this map.
        self.delegate.committed(cell_id, &writes);
    }

    /// Removes a closed cell from the registry.
    pub(crate) fn forget(&self, cell_id: &CellId) {
        lock(&self.registry).cells.remove(cell_id);
    }

    pub(crate) fn root(&self) -> &CancellationToken {
        &self.root
    }

    fn deadline(&self, requested_ms: Option<u64>) -> Instant {
        let ms = effective_yield_time_ms(
            requested_ms.unwrap_or(DEFAULT_YIELD_TIME_MS),
            self.options.max_yield_time_ms,
        );
        // Far-future deadlines are clamped to what `Instant` can represent.
        let now = Instant::now();
        now.checked_add(Duration::from_millis(ms))
            .unwrap_or_else(|| now + Duration::from_secs(u32::MAX.into()))
    }

    /// Admits a new cell with its first observer. Admission and the shutdown flag share one
    /// lock, so a cell is either refused or stopped by the shutdown, never both or neither.
    fn start_cell(
        self: &Arc<Self>,
        request: ExecRequest,
        hooks: ExecHooks,
        observer: impl FnOnce(Instant) -> Observer,
    ) -> Result<CellId, SessionError> {
        code_mode_internal::hop!("exec called");
        let mut registry = lock(&self.registry);
        if registry.shutting_down {
            return Err(SessionError::ShuttingDown);
        }
        let cell_id = CellId::new(registry.last_cell_id + 1);
        let sink = self.journal_sink();
        let seed = random_seed();
        let (snapshot, stored_bytes) = {
            let stored = lock(&self.stored);
            // Under the lock that commits take: the host has the cell's stored values at
            // this entry.
            if let Some(sink) = &sink {
                sink.journal(&cell_id, JournalEntry::Started { seed });
            }
            (stored.snapshot(), stored.bytes())
        };
        let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        // With deferred tools, the cell also gets `tools.tool_search`, answered here.
        let searchable: Option<Arc<SearchableTools>> = self.search.get(&request.tools);
        let tools = searchable
            .as_ref()
            .map_or(request.tools, |searchable| Arc::clone(&searchable.tools));
        let config = CellConfig {
            source: request.source,
            tools,
            stored: snapshot,
            stored_bytes,
            max_stored_bytes: Some(self.options.max_stored_bytes),
            limits: self.options.limits,
            surface: self.options.surface,
            seed,
            clock: Arc::default(),
            span: tracing::Span::current(),
        };
        let runtime = spawn_cell_on(config.clone(), events_tx, self.shelf.clone())
            .map_err(|e| SessionError::Runtime(RuntimeFailure::caused_by(e)))?;
        code_mode_internal::hop!("cell handed to its thread");
        registry.last_cell_id += 1;
        // The exec clock starts when the cell starts.
        let observer = observer(self.deadline(request.yield_time_ms));
        let (requests_tx, requests_rx) = mpsc::channel(ACTOR_REQUEST_CAPACITY);
        let actor = CellActor::new(
            cell_id.clone(),
            Arc::clone(self),
            Journal::new(config, sink),
            Some(runtime),
            events_rx,
            requests_rx,
            Some(observer),
            Routing {
                delegate: hooks
                    .delegate
                    .clone()
                    .unwrap_or_else(|| Arc::clone(&self.delegate)),
                exec_call_id: request.tool_call_id,
                searchable,
                span: tracing::Span::current(),
                committed: false,
            },
        );
        registry.cells.insert(cell_id.clone(), requests_tx);
        // Admission is reported before the actor runs, so before any callback of the cell
        // (a runtime process sends it to its host ahead of the cell's first tool call).
        hooks.admit(&cell_id);
        self.actors.spawn(actor.run());
        Ok(cell_id)
    }

    /// Where the journals of this session's cells are reported, if anywhere.
    fn journal_sink(&self) -> Option<Arc<dyn CodeModeSessionDelegate>> {
        self.delegate
            .keeps_journals()
            .then(|| Arc::clone(&self.delegate))
    }

    /// Admits a cell rebuilt from `data`, another runtime's journal of it, with no
    /// observer: it replays on a fresh isolate and then runs live (CONTRACT §7).
    fn resume_cell(
        self: &Arc<Self>,
        data: CellJournal,
        exec_call_id: Option<String>,
        delegate: Option<Arc<dyn CodeModeSessionDelegate>>,
        committed: bool,
    ) -> Result<CellId, SessionError> {
        let mut registry = lock(&self.registry);
        if registry.shutting_down {
            return Err(SessionError::ShuttingDown);
        }
        registry.last_cell_id += 1;
        let cell_id = CellId::new(registry.last_cell_id);
        let searchable: Option<Arc<SearchableTools>> = self.search.get(&data.tools);
        let tools = searchable.as_ref().map_or_else(
            || Arc::clone(&data.tools),
            |searchable| Arc::clone(&searchable.tools),
        );
        let stored_bytes = code_mode_protocol::stored::map_bytes(&data.stored);
        let config = CellConfig {
            source: data.source.clone(),
            tools,
            stored: Arc::clone(&data.stored),
            stored_bytes,
            max_stored_bytes: Some(self.options.max_stored_bytes),
            limits: self.options.limits,
            surface: self.options.surface,
            seed: data.seed,
            clock: Arc::default(),
            span: tracing::Span::current(),
        };
        let journal = Journal::resumed(config, data, self.journal_sink());
        let (requests_tx, requests_rx) = mpsc::channel(ACTOR_REQUEST_CAPACITY);
        let (_, closed) = mpsc::channel(1);
        let actor = CellActor::new(
            cell_id.clone(),
            Arc::clone(self),
            journal,
            None,
            closed,
            requests_rx,
            None,
            Routing {
                delegate: delegate.unwrap_or_else(|| Arc::clone(&self.delegate)),
                exec_call_id,
                searchable,
                span: tracing::Span::current(),
                committed,
            },
        );
        registry.cells.insert(cell_id.clone(), requests_tx);
        self.actors.spawn(actor.run());
        Ok(cell_id)
    }

    fn actor(&self, cell_id: &CellId) -> Option<mpsc::Sender<ActorRequest>> {
        lock(&self.registry).cells.get(cell_id).cloned()
    }

    /// Sends a request to a cell's actor and waits for its answer, untaken; `None` if the
    /// cell is unknown or closed before answering.
    async fn ask<T: Returnable>(
        &self,
        cell_id: &CellId,
        request: impl FnOnce(oneshot::Sender<Answer<T>>) -> ActorRequest,
    ) -> Option<Answer<T>> {
        let actor = self.actor(cell_id)?;
        let (reply, answer) = oneshot::channel();
        actor.send(request(reply)).await.ok()?;
        answer.await.ok()
    }
}

impl InProcessSession {
    /// Creates a session whose nested tool calls, notifications and cell-closed events go to
    /// `delegate`.
    pub fn new(delegate: Arc<dyn CodeModeSessionDelegate>, options: SessionOptions) -> Self {
        Self::with_values(delegate, options, StoredValues::new())
    }

    /// [`Self::new`] with `stored_values` as the session's committed map (restored by an
    /// agent core, or seeded by a host whose runtime was lost).
    pub fn with_values(
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> Self {
        crate::runtime::note_session_surface(options.surface);
        crate::runtime::prewarm();
        let shelf = options
            .reuse_isolates
            .then(|| Arc::new(IsolateShelf::new(options.limits.heap_bytes)));
        Self {
            shared: Arc::new(Shared {
                delegate,
                options,
                root: CancellationToken::new(),
                actors: TaskTracker::new(),
                registry: Mutex::new(Registry {
                    shutting_down: false,
                    last_cell_id: 0,
                    cells: HashMap::new(),
                }),
                stored: Mutex::new(CommittedValues::new(stored_values)),
                shelf,
                search: SearchCache::default(),
                hibernating: AtomicU64::new(0),
                hibernations: AtomicU64::new(0),
                wakes: AtomicU64::new(0),
                offers: std::sync::OnceLock::new(),
            }),
        }
    }
}

/// Hibernations of every session of the process (the runtime process gives memory back
/// after them).
static HIBERNATIONS: AtomicU64 = AtomicU64::new(0);

/// How many times a cell of this process hibernated (only with the `internals` feature:
/// the runtime process's memory trim).
#[cfg(feature = "internals")]
#[doc(hidden)]
pub fn hibernations_total() -> u64 {
    HIBERNATIONS.load(Ordering::Relaxed)
}

/// Counts a hibernation, for the session and for the process.
pub(crate) fn count_hibernation(shared: &Shared) {
    shared.hibernations.fetch_add(1, Ordering::Relaxed);
    HIBERNATIONS.fetch_add(1, Ordering::Relaxed);
}

/// A seed for a cell's `Math.random()`: different for every cell of the process.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static CELLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CELLS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

impl InProcessSession {
    /// Rebuilds a cell from `journal`, another runtime's journal of it (CONTRACT §7): the
    /// cell replays on a fresh isolate, sending none of the calls, notifications or output
    /// its journal has, and then runs on. Its callbacks go to `delegate` (else the
    /// session's), its nested calls carry `exec_call_id`. Returns the cell's id here; it
    /// has no observer until one asks. `committed`: the cell had completed and its writes
    /// were merged into the session before its runtime was lost (the session's values have
    /// them): it replays to its final answer and merges nothing again.
    pub fn resume(
        &self,
        journal: CellJournal,
        exec_call_id: Option<String>,
        delegate: Option<Arc<dyn CodeModeSessionDelegate>>,
        committed: bool,
    ) -> Result<CellId, SessionError> {
        self.shared
            .resume_cell(journal, exec_call_id, delegate, committed)
    }

    /// Gives a resumed cell the answer to its nested call `call`, made on an earlier
    /// runtime and answered after it was lost. `false` when the cell is not here (any
    /// more).
    pub async fn answer_call(
        &self,
        cell_id: &CellId,
        call: CallId,
        result: Result<JsonText, ToolError>,
    ) -> bool {
        let Some(actor) = self.shared.actor(cell_id) else {
            return false;
        };
        actor
            .send(ActorRequest::Answer { call, result })
            .await
            .is_ok()
    }

    /// How many of this session's cells hibernate now (CONTRACT §7): their journal keeps
    /// them, without a thread or an isolate.
    pub fn cells_hibernating(&self) -> u64 {
        self.shared.hibernating.load(Ordering::Relaxed)
    }

    /// How many times this session's cells hibernated, and how many times one was woken.
    pub fn hibernation_counts(&self) -> (u64, u64) {
        (
            self.shared.hibernations.load(Ordering::Relaxed),
            self.shared.wakes.load(Ordering::Relaxed),
        )
    }

    /// How many of this session's cells ran on an isolate an earlier cell of the session
    /// left parked (CONTRACT §7); 0 when the session does not reuse isolates.
    pub fn isolates_reused(&self) -> u64 {
        self.shared.shelf.as_ref().map_or(0, |shelf| shelf.reused())
    }

    /// How many isolates this session has parked for its next cells now.
    pub fn isolates_parked(&self) -> usize {
        self.shared.shelf.as_ref().map_or(0, |shelf| shelf.parked())
    }
}

impl Drop for InProcessSession {
    fn drop(&mut self) {
        self.shared.begin_shutdown();
    }
}

/// A cell's final answer, offered to the session's driver as soon as the cell finished with
/// nobody observing it: a runtime process sends it to its host, which answers the cell's
/// next `wait` (or `terminate`) with it without asking the runtime. Taken
/// ([`Held::take`]), the cell closes as if an observation had returned it; dropped, it is
/// given back and the cell's next observation returns it, as before the offer.
#[derive(Debug)]
pub struct Offer {
    pub cell_id: CellId,
    pub response: CellResponse,
    pub held: Held,
}

/// Receives a session's [`Offer`]s, on the cell's actor: it must not block.
pub type OfferSink = Arc<dyn Fn(Offer) + Send + Sync>;

impl InProcessSession {
    /// From now on, a cell of this session that finishes while nobody observes it offers
    /// its final answer to `sink` (once per cell, and only once every answer it gave before
    /// was taken, so the driver has seen them first). The first sink set stays.
    pub fn offer_finished(&self, sink: OfferSink) {
        let _ = self.shared.offers.set(sink);
    }
}

impl Shared {
    /// Where finished cells offer their final answers, if the driver asked for offers.
    pub(crate) fn offer_sink(&self) -> Option<&OfferSink> {
        self.offers.get()
    }
}

/// The error for an actor that went away without answering.
fn actor_lost(cell_id: &CellId) -> SessionError {
    SessionError::Runtime(code_mode_protocol::texts::cell_stopped_without_answering(cell_id).into())
}

/// A session's reply whose answer is still untaken: what a runtime process sends to its
/// host (a copy of the answer) and the answer itself, held until the host says whether its
/// caller took it.
#[derive(Debug)]
pub struct Handed<R = SessionReply> {
    pub reply: R,
    /// The answer the reply carries, for the calls that observe a cell; empty for the
    /// others, and for an answer nothing waits on (a missing cell).
    pub held: Held,
}

/// An answer handed over and not yet taken (or nothing, for a reply that carries none).
/// [`Held::take`] when its caller took it; dropping it gives it back to its cell, whose
/// next observation returns it (a dropped observation consumes nothing).
#[derive(Default)]
pub struct Held(Option<Box<dyn TakeOnce>>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
    }
}

impl Held {
    /// The caller took the answer.
    pub fn take(self) {
        if let Some(answer) = self.0 {
            answer.take();
        }
    }

    /// The answer's copy is on its way to the host: the cell's thread, if the answer is
    /// final, may spend the CPU on the isolate now.
    pub fn sent(&self) {
        if let Some(answer) = &self.0 {
            answer.sent();
        }
    }
}

/// A delivery taken without a value wanted.
trait TakeOnce: Send {
    fn sent(&self);
    fn take(self: Box<Self>);
}

impl<T: Send> TakeOnce for code_mode_internal::delivery::Delivery<T> {
    fn sent(&self) {
        code_mode_internal::delivery::Delivery::sent(self);
    }

    fn take(self: Box<Self>) {
        drop((*self).take());
    }
}

/// `answer` handed on as a copy of its value, the answer held; a failure is taken at once
/// (nothing gives it back).
fn hand<T: Clone + Send + 'static>(answer: Answer<T>) -> Result<Handed<T>, SessionError> {
    match answer.value() {
        Ok(value) => Ok(Handed {
            reply: value.clone(),
            held: Held(Some(Box::new(answer))),
        }),
        Err(error) => {
            let error = error.clone();
            drop(answer.take());
            Err(error)
        }
    }
}

/// The in-process session as a [`CallTarget`] that hands its answers on untaken.
struct Untaken<'a>(&'a InProcessSession);

impl CallTarget for Untaken<'_> {
    type Answer<V: Send + 'static> = Handed<V>;

    fn ready<V: Send + 'static>(value: V) -> Handed<V> {
        Handed {
            reply: value,
            held: Held::default(),
        }
    }

    fn map<V: Send + 'static, W: Send + 'static>(
        answer: Handed<V>,
        into: impl FnOnce(V) -> W,
    ) -> Handed<W> {
        Handed {
            reply: into(answer.reply),
            held: answer.held,
        }
    }

    fn execute(
        &self,
        request: ExecRequest,
        hooks: ExecHooks,
    ) -> StartedWith<'_, Handed<CellResponse>> {
        Box::pin(async move {
            let (cell_id, answer) = self.0.execute_untaken(request, hooks).await?;
            Ok((cell_id, hand(answer)?))
        })
    }

    fn wait(
        &self,
        request: WaitRequest,
        preempt: Option<CancellationToken>,
    ) -> BoxFuture<'_, Result<Option<Handed<CellResponse>>, SessionError>> {
        Box::pin(async move {
            self.0
                .wait_untaken(request, preempt)
                .await
                .map(hand)
                .transpose()
        })
    }

    fn terminate(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<Option<Handed<CellResponse>>, SessionError>> {
        Box::pin(async move {
            self.0
                .terminate_untaken(&cell_id)
                .await
                .map(hand)
                .transpose()
        })
    }

    fn execute_to_pending(
        &self,
        request: ExecRequest,
        admitted: Option<AdmittedHook>,
    ) -> StartedWith<'_, Handed<PendingOutcome>> {
        Box::pin(async move {
            let (cell_id, answer) = self.0.execute_to_pending_untaken(request, admitted).await?;
            Ok((cell_id, hand(answer)?))
        })
    }

    fn wait_to_pending(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<Option<Handed<PendingOutcome>>, SessionError>> {
        Box::pin(async move {
            self.0
                .wait_to_pending_untaken(&cell_id)
                .await
                .map(hand)
                .transpose()
        })
    }

    fn interrupt(&self) -> BoxFuture<'_, Result<Vec<CellId>, SessionError>> {
        self.0.interrupt()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.0.shutdown()
    }
}

impl InProcessSession {
    /// Runs `call` and hands its answer on untaken ([`Handed`]): for a runtime process,
    /// which sends the reply over the wire and takes or drops the held answer when its
    /// host says what became of it there. The cell's actor stays the one owner of the
    /// answer's life: it holds the cell's next callbacks back until the answer is taken,
    /// and gets it back if it is given back. The call is dispatched as every front end's
    /// is ([`SessionCall::dispatch`]).
    ///
    /// Cancel safety: dropping the future before it resolves is a dropped call.
    pub async fn call_untaken(
        &self,
        call: SessionCall,
        hooks: CallHooks,
    ) -> Result<Handed, SessionError> {
        call.dispatch(&Untaken(self), hooks).await
    }

    async fn execute_untaken(
        &self,
        request: ExecRequest,
        hooks: ExecHooks,
    ) -> Result<(CellId, Answer<CellResponse>), SessionError> {
        let (reply, answer) = oneshot::channel();
        let preempt = hooks.preempt.clone();
        let cell_id = self.shared.start_cell(request, hooks, |deadline| {
            Observer::yielding(deadline, preempt, reply)
        })?;
        let answer = answer.await.map_err(|_| actor_lost(&cell_id))?;
        code_mode_internal::hop!("exec answered");
        Ok((cell_id, answer))
    }

    async fn wait_untaken(
        &self,
        request: WaitRequest,
        preempt: Option<CancellationToken>,
    ) -> Option<Answer<CellResponse>> {
        let deadline = self.shared.deadline(request.yield_time_ms);
        self.shared
            .ask(&request.cell_id, |reply| {
                ActorRequest::Observe(Observer::yielding(deadline, preempt, reply))
            })
            .await
    }

    async fn terminate_untaken(&self, cell_id: &CellId) -> Option<Answer<CellResponse>> {
        self.shared
            .ask(cell_id, |reply| ActorRequest::Terminate { reply })
            .await
    }

    async fn execute_to_pending_untaken(
        &self,
        request: ExecRequest,
        admitted: Option<AdmittedHook>,
    ) -> Result<(CellId, Answer<PendingOutcome>), SessionError> {
        let (reply, answer) = oneshot::channel();
        let hooks = ExecHooks {
            admitted,
            ..ExecHooks::default()
        };
        let cell_id = self
            .shared
            .start_cell(request, hooks, |_| Observer::pending(reply))?;
        let answer = answer.await.map_err(|_| actor_lost(&cell_id))?;
        Ok((cell_id, answer))
    }

    async fn wait_to_pending_untaken(&self, cell_id: &CellId) -> Option<Answer<PendingOutcome>> {
        self.shared
            .ask(cell_id, |reply| {
                ActorRequest::Observe(Observer::pending(reply))
            })
            .await
    }
}

impl CodeModeSession for InProcessSession {
    fn execute_with(
        &self,
        request: ExecRequest,
        hooks: ExecHooks,
    ) -> BoxFuture<'_, Result<StartedCell, SessionError>> {
        Box::pin(measure(async move {
            let (cell_id, answer) = self.execute_untaken(request, hooks).await?;
            Ok(StartedCell {
                cell_id,
                initial_response: answer.take()?,
            })
        }))
    }

    fn wait_with(
        &self,
        request: WaitRequest,
        preempt: Option<CancellationToken>,
    ) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        Box::pin(measure(async move {
            let cell_id = request.cell_id.clone();
            match self.wait_untaken(request, preempt).await {
                Some(answer) => answer.take(),
                None => Ok(CellResponse::missing(cell_id)),
            }
        }))
    }

    fn interrupt(&self) -> BoxFuture<'_, Result<Vec<CellId>, SessionError>> {
        Box::pin(async move {
            let actors: Vec<(CellId, mpsc::Sender<ActorRequest>)> = {
                let registry = lock(&self.shared.registry);
                let mut actors: Vec<_> = registry
                    .cells
                    .iter()
                    .map(|(cell_id, actor)| (cell_id.clone(), actor.clone()))
                    .collect();
                actors.sort_by_key(|(cell_id, _)| cell_id.number());
                actors
            };
            // Every termination starts before any is waited for.
            let mut stopping = Vec::with_capacity(actors.len());
            for (cell_id, actor) in actors {
                let (reply, stopped) = oneshot::channel();
                if actor.send(ActorRequest::Interrupt { reply }).await.is_ok() {
                    stopping.push((cell_id, stopped));
                }
            }
            let mut interrupted = Vec::new();
            for (cell_id, stopped) in stopping {
                if stopped.await == Ok(true) {
                    interrupted.push(cell_id);
                }
            }
            Ok(interrupted)
        })
    }

    fn terminate(&self, cell_id: CellId) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        Box::pin(measure(async move {
            match self.terminate_untaken(&cell_id).await {
                Some(answer) => answer.take(),
                None => Ok(CellResponse::missing(cell_id)),
            }
        }))
    }

    fn execute_to_pending(
        &self,
        request: ExecRequest,
    ) -> BoxFuture<'_, Result<StartedPendingCell, SessionError>> {
        Box::pin(measure(async move {
            let (cell_id, answer) = self.execute_to_pending_untaken(request, None).await?;
            Ok(StartedPendingCell {
                cell_id,
                outcome: answer.take()?,
            })
        }))
    }

    fn wait_to_pending(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<PendingOutcome, SessionError>> {
        Box::pin(measure(async move {
            match self.wait_to_pending_untaken(&cell_id).await {
                Some(answer) => answer.take(),
                None => Ok(PendingOutcome::Completed(CellResponse::missing(cell_id))),
            }
        }))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.begin_shutdown();
            self.shared.actors.wait().await;
        })
    }

    fn stored_values(&self) -> StoredValues {
        lock(&self.shared.stored).to_values()
    }
}
