//! The session of a runtime process, local or remote: [`HostedSession`] opens its session
//! in the runtime on its first call and translates cell ids between the runtime's
//! numbering and the generation the agent core sees. An answer its caller dropped goes
//! back to its cell in the runtime (see the connection's `answers`), so nothing here keeps
//! one. [`crate::ProcessSession`] and [`crate::RemoteSession`] are it under the name of
//! their provider.

use crate::connection::{
    Connection, ExecJournal, FromResponse, LostCells, Opening, Placed, RequestHooks, Resumable,
};
use crate::error::HostError;
use code_mode_internal::SessionCall;
use code_mode_internal::futures::measure;
use code_mode_internal::sync::lock;
use code_mode_protocol::stored::CommittedValues;
use code_mode_protocol::{
    BoxFuture, CellId, CellResponse, CodeModeSession, CodeModeSessionDelegate, ExecHooks,
    ExecRequest, PendingOutcome, RuntimeFailure, SessionError, SessionOptions, StartedCell,
    StartedPendingCell, StoredValues, WaitRequest,
};
use code_mode_trace::traced::{CellTraces, Traced, capped, under};
use code_mode_wire::{Request, SessionId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Where sessions get their runtime: the supervised local process, or a pool of remote
/// runtimes. Each call places one session; the [`Placed`] guard counts it toward the
/// runtime's load until the session lets go of it.
pub(crate) trait RuntimeSource: Send + Sync + 'static {
    fn place(&self) -> BoxFuture<'_, Result<Placed, HostError>>;

    /// Whether an `Execute` that found its runtime lost before the cell was admitted runs
    /// once more on a fresh runtime: where a lost runtime is gone for sure and a fresh one
    /// starts at once (the supervised local process). A remote runtime may be alive behind
    /// a broken network, and its loss is reported as it is.
    fn reruns_unadmitted(&self) -> bool {
        false
    }
}

/// How many runtimes a session tries when the one it was placed on is draining.
const PLACEMENT_ATTEMPTS: usize = 4;

/// The session of every provider here, local process or remote pool: a [`HostedSession`]
/// whose cells and nested calls are traced as every provider traces them. It derefs to the
/// [`HostedSession`] (e.g. [`HostedSession::runtime`]).
pub type RuntimeSession = Traced<HostedSession>;

/// Opens a session over `source`'s runtimes (each provider's `open_session_with_values`).
pub(crate) fn open(
    source: Arc<dyn RuntimeSource>,
    delegate: Arc<dyn CodeModeSessionDelegate>,
    options: SessionOptions,
    stored_values: StoredValues,
) -> RuntimeSession {
    let traces = CellTraces::new();
    Traced::new(
        HostedSession::new(source, traces.delegate(delegate), options, stored_values),
        traces,
    )
}

/// How many runtimes a call on a cell tries before it gives the loss up to its caller
/// (each loss rebuilds the cell on the next runtime).
pub const REBUILD_ATTEMPTS: usize = 4;

/// The cause a call gives up with after [`REBUILD_ATTEMPTS`] losses, the last one's
/// `cause` inside: the cell is not rebuilt again.
fn given_up(cause: &str) -> String {
    format!(
        "{cause}; the cell's runtime was lost {REBUILD_ATTEMPTS} times during one call, so it is not rebuilt again"
    )
}

/// A session whose cells run in a runtime process, local or remote ([`RuntimeSession`] is
/// it traced). Dropping it starts its shutdown in the runtime.
///
/// The host keeps the session's committed stored values (every runtime reports each
/// commit before the cell's final response), so when the runtime is lost or drains the
/// session opens again on a fresh or another runtime with them, at its next call
/// (contract §7).
pub struct HostedSession {
    provider: Arc<dyn RuntimeSource>,
    delegate: Arc<dyn CodeModeSessionDelegate>,
    options: SessionOptions,
    /// The committed stored values, as the runtimes reported them.
    stored: Arc<Mutex<CommittedValues>>,
    /// What became of the cells lost with a runtime (rebuilt, finished, dead), by the id
    /// the agent core knows: the connection tells it of a loss when the loss happens.
    lost: Arc<LostCells>,
    /// The remote session, once opened, and its placement.
    binding: Mutex<Option<(Placed, SessionId)>>,
    /// Serializes opening the remote session.
    bind_lock: tokio::sync::Mutex<()>,
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for HostedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedSession").finish_non_exhaustive()
    }
}

impl Drop for HostedSession {
    fn drop(&mut self) {
        if let Some((placed, session)) = lock(&self.binding).take()
            && !placed.connection.is_lost()
        {
            placed.connection.send_detached(Request::shutdown(session));
        }
    }
}

impl HostedSession {
    pub(crate) fn new(
        provider: Arc<dyn RuntimeSource>,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> Self {
        Self {
            provider,
            delegate,
            options,
            stored: Arc::new(Mutex::new(CommittedValues::new(stored_values))),
            lost: Arc::default(),
            binding: Mutex::new(None),
            bind_lock: tokio::sync::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Whether the runtime the session is bound to stopped after a drain, closing its end
    /// cleanly: an exec it never admitted runs again elsewhere, remote or not (the runtime
    /// is gone for sure, and none of the cell's calls reached a delegate).
    fn left_by_drain(&self) -> bool {
        lock(&self.binding)
            .as_ref()
            .is_some_and(|(placed, _)| placed.connection.left_by_drain())
    }

    /// Where the session's cells run now (e.g. `pid 1234`, `runtime at 10.0.0.7:7300`),
    /// once it has run something.
    pub fn runtime(&self) -> Option<String> {
        lock(&self.binding)
            .as_ref()
            .map(|(placed, _)| placed.connection.describe())
    }

    /// The session's committed stored values (the host's copy), as a new runtime is seeded
    /// with them.
    fn committed_values(&self) -> StoredValues {
        lock(&self.stored).to_values()
    }

    /// After `attempt` losses of `cell_id`'s runtime during one call: `Ok` to go on with
    /// the cell rebuilt, or, past [`REBUILD_ATTEMPTS`], the loss the call gives up with
    /// (the cell is dead from then on).
    fn again_or_give_up(
        &self,
        cell_id: &CellId,
        attempt: usize,
        cause: &str,
    ) -> Result<(), SessionError> {
        if attempt < REBUILD_ATTEMPTS {
            return Ok(());
        }
        let cause = given_up(cause);
        // The cell is dead from now on, never rebuilt later behind its caller's back.
        self.lost.give_up(cell_id, &cause);
        Err(SessionError::RuntimeLost(cause))
    }

    /// Rebuilds the session's lost cells on `connection`, where the session is `session`.
    /// A cell that cannot be rebuilt dies with the error that says why.
    ///
    /// Each cell stays among the session's resumable ones until the runtime took it (or it
    /// died), so that [`Self::durable_state`] never misses it in between.
    async fn resume_lost(&self, connection: &Arc<Connection>, session: SessionId) {
        for (cell_id, resumable) in self.lost.waiting() {
            // The rebuild's span, under the cell's: the request carries it, so the new
            // runtime's spans of the rebuilt cell (its replay) hang under it.
            let rebuild = under(&resumable.span, || {
                tracing::info_span!(
                    parent: &resumable.span,
                    "code_mode.rebuild",
                    cell.id = %cell_id,
                    entries = i64::try_from(resumable.journal.entered.len()).unwrap_or(i64::MAX),
                    otel.status_code = tracing::field::Empty,
                    error.text = tracing::field::Empty,
                )
            })
            .unwrap_or_else(tracing::Span::none);
            let resumed = connection
                .resume(session, &cell_id, &resumable)
                .instrument(rebuild.clone())
                .await;
            if let Err(error) = &resumed {
                rebuild.record("otel.status_code", "error");
                rebuild.record("error.text", capped(&error.to_string()));
            }
            match resumed {
                Ok(runtime_id) => {
                    tracing::info!(cell = %cell_id, on = %runtime_id, "cell rebuilt from its journal on a fresh runtime");
                }
                // The runtime it was being rebuilt on was lost too: the cell stays to be
                // rebuilt on the next one (its journal is as it was; the call on it tries
                // again, up to its bound).
                Err(error) if connection.is_lost() => {
                    tracing::warn!(cell = %cell_id, %error, "the rebuild was cut short by another loss; trying again on the next runtime");
                    continue;
                }
                Err(error) => {
                    tracing::error!(cell = %cell_id, %error, "a lost cell could not be rebuilt");
                    let delegate = resumable
                        .delegate
                        .clone()
                        .unwrap_or_else(|| Arc::clone(&self.delegate));
                    delegate.cell_closed(&cell_id);
                    self.lost.bury(cell_id.clone(), error.to_string());
                }
            }
            self.lost.taken(&resumable);
        }
    }

    /// What [`crate::durable`] takes of the cells running on the session's runtime now.
    pub(crate) fn bound_durable_cells(&self) -> Vec<code_mode_protocol::durable::DurableCell> {
        match self.binding_for(false) {
            Binding::Serves(connection, session) | Binding::Leaving(connection, session) => {
                connection.durable_cells(session)
            }
            Binding::None => Vec::new(),
        }
    }

    /// The cells lost with a runtime (or restored) and not rebuilt yet.
    pub(crate) fn resumable_cells(&self) -> Vec<(CellId, Arc<Resumable>)> {
        self.lost.waiting()
    }

    /// The committed stored values now (the host's copy).
    pub(crate) fn stored_values_now(&self) -> StoredValues {
        self.committed_values()
    }

    /// A cell an earlier process ran, to be rebuilt on the session's next runtime.
    pub(crate) fn add_resumable(&self, cell_id: CellId, resumable: Resumable) {
        self.lost.to_rebuild(cell_id, Arc::new(resumable));
    }

    /// The final answer of `cell_id` the host holds, taken, so that the observation that
    /// asks for it (a `wait`, `wait_to_pending` or `terminate`: natural completion wins)
    /// needs no round trip: the answer the runtime offered when the cell finished with
    /// nobody observing it, or the one kept when the runtime was lost after the cell had
    /// finished. The observation gets it as the runtime would have given it.
    fn held_answer(&self, cell_id: &CellId) -> Option<CellResponse> {
        let binding = self.binding_for(false);
        if let Some(answer) = self.lost.take_finished(cell_id) {
            return Some(answer);
        }
        let Binding::Serves(connection, session) = binding else {
            return None;
        };
        let bound = Bound {
            connection,
            session,
        };
        let runtime_id = bound.runtime_cell_id(cell_id)?;
        let response = bound.connection.take_offer(bound.session, &runtime_id)?;
        Some(external_response(&bound, response, Some(cell_id)))
    }

    /// The session's binding as it stands, for a call that starts a cell (`moving`) or
    /// not. A lost runtime is let go of here, the one place: its cells' fates are in
    /// [`LostCells`] already, told by the connection when it was lost.
    fn binding_for(&self, moving: bool) -> Binding {
        let mut binding = lock(&self.binding);
        if binding
            .as_ref()
            .is_some_and(|(placed, _)| placed.connection.is_lost())
        {
            *binding = None;
        }
        let Some((placed, session)) = &*binding else {
            return Binding::None;
        };
        let connection = Arc::clone(&placed.connection);
        if moving && connection.is_draining() && connection.session_is_idle(*session) {
            Binding::Leaving(connection, *session)
        } else {
            Binding::Serves(connection, *session)
        }
    }

    /// The remote session, opening it (and starting a runtime) if needed.
    ///
    /// A session whose runtime was lost opens again on a fresh one (or another of the
    /// pool) with its committed stored values, without an error (contract §7). For a new
    /// cell (`moving`), a session bound to a draining runtime that has nothing left there
    /// moves the same way.
    async fn bind(&self, moving: bool) -> Result<(Arc<Connection>, SessionId), SessionError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SessionError::ShuttingDown);
        }
        // Bound already, as for every call after a session's first: nothing to wait for.
        if let Binding::Serves(connection, session) = self.binding_for(moving) {
            return Ok((connection, session));
        }
        let _guard = self.bind_lock.lock().await;
        // Again under the lock: a shutdown that ran while this call waited for it has
        // unbound the session, and must not see a new remote session opened behind it.
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SessionError::ShuttingDown);
        }
        match self.binding_for(moving) {
            Binding::Serves(connection, session) => return Ok((connection, session)),
            Binding::Leaving(connection, session) => {
                tracing::info!(
                    from = %connection.describe(),
                    "moving a session off a draining runtime"
                );
                connection.send_detached(Request::shutdown(session));
                connection.forget_session(session);
                *lock(&self.binding) = None;
            }
            Binding::None => {}
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let placed = self
                .provider
                .place()
                .await
                .map_err(|error| SessionError::Runtime(RuntimeFailure::caused_by(error)))?;
            let connection = Arc::clone(&placed.connection);
            let request = Request::OpenSession {
                options: self.options.clone().into(),
                stored_values: self.committed_values(),
            };
            let hooks = RequestHooks {
                opening: Some(Opening {
                    delegate: Arc::clone(&self.delegate),
                    stored: Arc::clone(&self.stored),
                    lost: Arc::downgrade(&self.lost),
                }),
                ..RequestHooks::default()
            };
            match connection.call::<SessionId>(request, hooks).await {
                Ok(session) => {
                    *lock(&self.binding) = Some((placed, session));
                    self.resume_lost(&connection, session).await;
                    return Ok((connection, session));
                }
                // A runtime that started draining or was lost meanwhile: another one takes
                // the session.
                Err(_)
                    if (connection.is_draining() || connection.is_lost())
                        && attempt < PLACEMENT_ATTEMPTS =>
                {
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Runs a call on the remote session.
    async fn call<T: FromResponse>(
        &self,
        call: SessionCall,
        hooks: RequestHooks,
    ) -> Result<(Bound, T), SessionError> {
        let (connection, session) = self.bind(call.starts_cell()).await?;
        self.call_on(connection, session, call, hooks).await
    }

    /// Runs an `Execute`. When the runtime turns out to be dead before it admitted the
    /// cell (it died after the previous call, and the host learns it from this one), the
    /// exec runs once more on a fresh runtime, as contract §7 promises the next call does:
    /// nothing of the cell ran that anyone saw, and none of its tool calls can have been
    /// sent, since the runtime reports a cell's admission before any of its callbacks.
    async fn start_cell(
        &self,
        request: ExecRequest,
        hooks: RequestHooks,
    ) -> Result<(Bound, StartedCell), SessionError> {
        let admitted: Arc<Mutex<Option<CellId>>> = Arc::new(Mutex::new(None));
        let told = hooks.admitted.clone();
        let seen = Arc::clone(&admitted);
        let yield_time_ms = request.yield_time_ms;
        let hooks = RequestHooks {
            admitted: Some(Arc::new(move |cell_id: &CellId| {
                *lock(&seen) = Some(cell_id.clone());
                if let Some(told) = &told {
                    told(cell_id);
                }
            })),
            exec: Some(exec_journal(&request)),
            ..hooks
        };
        let mut attempt = 0;
        let (outcome, cell_id) = loop {
            attempt += 1;
            let outcome = self
                .call(SessionCall::Execute(request.clone()), hooks.clone())
                .await;
            let Err(SessionError::RuntimeLost(cause)) = &outcome else {
                return outcome;
            };
            let cell_id = lock(&admitted).clone();
            if cell_id.is_some() || !(self.provider.reruns_unadmitted() || self.left_by_drain()) {
                break (outcome, cell_id);
            }
            // Never admitted: run again on a fresh runtime (the next may be lost before it
            // admits the cell too), up to the bound of one call.
            if attempt >= REBUILD_ATTEMPTS {
                return Err(SessionError::RuntimeLost(given_up(cause)));
            }
            tracing::info!(%cause, "the runtime was lost before it admitted the cell; running it on a fresh one");
        };
        match cell_id {
            // Admitted and rebuilt: its first observation goes on as a wait.
            Some(cell_id) if self.lost.rebuilds(&cell_id) => {
                let wait = |runtime_id| {
                    SessionCall::Wait(WaitRequest {
                        cell_id: runtime_id,
                        yield_time_ms,
                    })
                };
                let preempt = RequestHooks {
                    preempt: hooks.preempt.clone(),
                    ..RequestHooks::default()
                };
                match self
                    .call_on_cell::<CellResponse>(&cell_id, preempt, wait)
                    .await?
                {
                    Some((connection, response)) => {
                        let started = StartedCell {
                            cell_id: connection.runtime_cell_id(&cell_id).unwrap_or(cell_id),
                            initial_response: response,
                        };
                        Ok((connection, started))
                    }
                    None => Ok((
                        {
                            let (connection, session) = self.bind(false).await?;
                            Bound {
                                connection,
                                session,
                            }
                        },
                        StartedCell {
                            initial_response: CellResponse::missing(cell_id.clone()),
                            cell_id,
                        },
                    )),
                }
            }
            _ => outcome,
        }
    }

    /// Runs a call that names a cell, on the connection the cell id was translated for.
    /// `None` when the id belongs to another runtime generation (a missing cell).
    ///
    /// A call that fails because the runtime was lost goes again once the cell was
    /// rebuilt from its journal on the session's next runtime (contract §7).
    async fn call_on_cell<T: FromResponse>(
        &self,
        cell_id: &CellId,
        hooks: RequestHooks,
        make: impl Fn(CellId) -> SessionCall,
    ) -> Result<Option<(Bound, T)>, SessionError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(lost) = self.lost.dead(cell_id).map(SessionError::RuntimeLost) {
                return Err(lost);
            }
            let (connection, session) = self.bind(false).await?;
            let Some(runtime_id) = connection.runtime_cell_id(session, cell_id) else {
                // Its rebuild was cut short by the loss of that runtime too: again on the
                // next one, up to the bound.
                if self.lost.awaits_rebuild(cell_id) {
                    let cause = connection
                        .lost_cause()
                        .unwrap_or_else(|| "the runtime was lost".to_owned());
                    self.again_or_give_up(cell_id, attempt, &cause)?;
                    continue;
                }
                return Ok(None);
            };
            match self
                .call_on(connection, session, make(runtime_id), hooks.clone())
                .await
            {
                Err(SessionError::RuntimeLost(cause)) if self.lost.rebuilds(cell_id) => {
                    self.again_or_give_up(cell_id, attempt, &cause)?;
                    tracing::info!(cell = %cell_id, %cause, "the cell's runtime was lost; going on with the cell rebuilt");
                }
                // The runtime names the cell by its own id: the caller's is the one asked.
                Err(SessionError::BusyObserver(_)) => {
                    return Err(SessionError::BusyObserver(cell_id.clone()));
                }
                Err(SessionError::AlreadyTerminating(_)) => {
                    return Err(SessionError::AlreadyTerminating(cell_id.clone()));
                }
                other => return other.map(Some),
            }
        }
    }

    /// Sends `call` for `session` on `connection`. A session the runtime no longer knows
    /// while this one shuts down reports `ShuttingDown`.
    async fn call_on<T: FromResponse>(
        &self,
        connection: Arc<Connection>,
        session: SessionId,
        call: SessionCall,
        hooks: RequestHooks,
    ) -> Result<(Bound, T), SessionError> {
        let request = connection.session_request(session, call);
        match connection.call(request, hooks).await {
            Ok(answer) => Ok((
                Bound {
                    connection,
                    session,
                },
                answer,
            )),
            Err(error) => Err(error),
        }
    }
}

/// A session's binding to a runtime, as a call finds it.
enum Binding {
    /// Not bound (never, or its runtime was lost): a runtime must be placed.
    None,
    /// Bound, and serves the call.
    Serves(Arc<Connection>, SessionId),
    /// Bound to a draining runtime where the session has nothing left, and the call starts
    /// a cell: the session moves to another runtime.
    Leaving(Arc<Connection>, SessionId),
}

/// The runtime and the session there that answered a call: where its cell ids are
/// translated.
pub(crate) struct Bound {
    connection: Arc<Connection>,
    session: SessionId,
}

impl Bound {
    fn external_cell_id(&self, cell_id: &CellId) -> CellId {
        self.connection.external_cell_id(self.session, cell_id)
    }

    fn runtime_cell_id(&self, external: &CellId) -> Option<CellId> {
        self.connection.runtime_cell_id(self.session, external)
    }
}

/// What an exec tells the host about its cell's journal.
fn exec_journal(request: &ExecRequest) -> ExecJournal {
    ExecJournal {
        source: request.source.clone(),
        tools: Arc::clone(&request.tools),
        exec_call_id: request.tool_call_id.clone(),
        span: tracing::Span::current(),
    }
}

/// Rewrites the runtime's cell ids in a response to the ids the agent core sees.
fn external_response(
    connection: &Bound,
    response: CellResponse,
    asked: Option<&CellId>,
) -> CellResponse {
    if response.is_missing_cell() {
        let id = asked.map_or_else(
            || connection.external_cell_id(response.cell_id()),
            CellId::clone,
        );
        return CellResponse::missing(id).with_wall_time(response.wall_time());
    }
    let id = connection.external_cell_id(response.cell_id());
    response.with_cell_id(id)
}

fn external_outcome(
    connection: &Bound,
    outcome: PendingOutcome,
    asked: Option<&CellId>,
) -> PendingOutcome {
    match outcome {
        PendingOutcome::Pending {
            cell_id,
            content_items,
            pending_tool_call_ids,
            wall_time,
        } => PendingOutcome::Pending {
            cell_id: connection.external_cell_id(&cell_id),
            content_items,
            pending_tool_call_ids,
            wall_time,
        },
        PendingOutcome::Completed(response) => {
            PendingOutcome::Completed(external_response(connection, response, asked))
        }
    }
}

impl CodeModeSession for HostedSession {
    fn execute_with(
        &self,
        request: ExecRequest,
        hooks: ExecHooks,
    ) -> BoxFuture<'_, Result<StartedCell, SessionError>> {
        Box::pin(measure(async move {
            let hooks = RequestHooks {
                opening: None,
                cell_delegate: hooks.delegate,
                admitted: hooks.admitted,
                preempt: hooks.preempt,
                ..RequestHooks::default()
            };
            let (connection, started): (_, StartedCell) = self.start_cell(request, hooks).await?;
            Ok(StartedCell {
                cell_id: connection.external_cell_id(&started.cell_id),
                initial_response: external_response(&connection, started.initial_response, None),
            })
        }))
    }

    fn wait_with(
        &self,
        request: WaitRequest,
        preempt: Option<CancellationToken>,
    ) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        Box::pin(measure(async move {
            let asked = request.cell_id.clone();
            if let Some(answer) = self.held_answer(&asked) {
                return Ok(answer);
            }
            let yield_time_ms = request.yield_time_ms;
            let hooks = RequestHooks {
                preempt,
                ..RequestHooks::default()
            };
            let answer = self
                .call_on_cell(&asked, hooks, |cell_id| {
                    SessionCall::Wait(WaitRequest {
                        cell_id,
                        yield_time_ms,
                    })
                })
                .await?;
            let Some((connection, response)) = answer else {
                return Ok(CellResponse::missing(asked));
            };
            Ok(external_response(&connection, response, Some(&asked)))
        }))
    }

    fn terminate(&self, cell_id: CellId) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        Box::pin(measure(async move {
            // Natural completion wins (contract 3.7).
            if let Some(answer) = self.held_answer(&cell_id) {
                return Ok(answer);
            }
            let answer = self
                .call_on_cell(&cell_id, RequestHooks::default(), |cell_id| {
                    SessionCall::Terminate { cell_id }
                })
                .await?;
            let Some((connection, response)) = answer else {
                return Ok(CellResponse::missing(cell_id));
            };
            Ok(external_response(&connection, response, Some(&cell_id)))
        }))
    }

    fn execute_to_pending(
        &self,
        request: ExecRequest,
    ) -> BoxFuture<'_, Result<StartedPendingCell, SessionError>> {
        Box::pin(measure(async move {
            let hooks = RequestHooks {
                exec: Some(exec_journal(&request)),
                ..RequestHooks::default()
            };
            let (connection, started): (_, StartedPendingCell) = self
                .call(SessionCall::ExecuteToPending(request), hooks)
                .await?;
            Ok(StartedPendingCell {
                cell_id: connection.external_cell_id(&started.cell_id),
                outcome: external_outcome(&connection, started.outcome, None),
            })
        }))
    }

    fn wait_to_pending(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<PendingOutcome, SessionError>> {
        Box::pin(measure(async move {
            if let Some(answer) = self.held_answer(&cell_id) {
                return Ok(PendingOutcome::Completed(answer));
            }
            let answer = self
                .call_on_cell(&cell_id, RequestHooks::default(), |cell_id| {
                    SessionCall::WaitToPending { cell_id }
                })
                .await?;
            let Some((connection, outcome)) = answer else {
                return Ok(PendingOutcome::Completed(CellResponse::missing(cell_id)));
            };
            Ok(external_outcome(&connection, outcome, Some(&cell_id)))
        }))
    }

    fn interrupt(&self) -> BoxFuture<'_, Result<Vec<CellId>, SessionError>> {
        Box::pin(async move {
            // A session with no runtime yet has no cell to interrupt.
            let bound = lock(&self.binding)
                .as_ref()
                .map(|(placed, session)| (Arc::clone(&placed.connection), *session));
            let Some((connection, session)) = bound else {
                return Ok(Vec::new());
            };
            if connection.is_lost() {
                return Ok(Vec::new());
            }
            let (bound, cell_ids): (_, Vec<CellId>) = self
                .call_on(
                    connection,
                    session,
                    SessionCall::Interrupt,
                    RequestHooks::default(),
                )
                .await?;
            Ok(cell_ids
                .iter()
                .map(|cell_id| bound.external_cell_id(cell_id))
                .collect())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shutting_down.store(true, Ordering::SeqCst);
            let _guard = self.bind_lock.lock().await;
            let binding = lock(&self.binding).take();
            if let Some((placed, session)) = binding
                && !placed.connection.is_lost()
            {
                let connection = &placed.connection;
                // Cell-closed events precede the answer on the wire, so every cell has
                // been reported closed when this returns.
                let request = Request::shutdown(session);
                if let Err(error) = connection
                    .call::<()>(request, RequestHooks::default())
                    .await
                {
                    tracing::warn!("shutting the remote session down failed: {error}");
                }
                connection.forget_session(session);
            }
        })
    }

    fn stored_values(&self) -> StoredValues {
        self.committed_values()
    }
}
