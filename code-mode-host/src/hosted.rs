//! The session of a runtime process, local or remote: [`HostedSession`] opens its session
//! in the runtime on its first call and translates cell ids between the runtime's
//! numbering and the generation the agent core sees. An answer its caller dropped goes
//! back to its cell in the runtime (see the connection's `answers`), so nothing here keeps
//! one. [`crate::ProcessSession`] and [`crate::RemoteSession`] are it under the name of
//! their provider.

use crate::connection::{Connection, FromResponse, Opening, Placed, RequestHooks};
use crate::error::HostError;
use code_mode_protocol::session::measure;
use code_mode_protocol::stored::CommittedValues;
use code_mode_protocol::sync::lock;
use code_mode_protocol::{
    BoxFuture, CellId, CellResponse, CodeModeSession, CodeModeSessionDelegate, ExecHooks,
    ExecRequest, PendingOutcome, RuntimeFailure, SessionCall, SessionError, SessionOptions,
    StartedCell, StartedPendingCell, StoredValues, WaitRequest,
};
use code_mode_wire::{Request, SessionId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

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

/// Defines the public session type of a provider (a [`HostedSession`] under its own
/// name) and the provider's [`code_mode_protocol::CodeModeProvider`] implementation, which
/// opens one over the provider's `inner` runtime source.
macro_rules! hosted_session {
    ($(#[$doc:meta])* $name:ident of $provider:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name($crate::hosted::HostedSession);

        impl code_mode_protocol::CodeModeProvider for $provider {
            type Session = $name;

            fn open_session_with_values(
                &self,
                delegate: std::sync::Arc<dyn code_mode_protocol::CodeModeSessionDelegate>,
                options: code_mode_protocol::SessionOptions,
                stored_values: code_mode_protocol::StoredValues,
            ) -> $name {
                $name($crate::hosted::HostedSession::new(
                    self.inner.clone(),
                    delegate,
                    options,
                    stored_values,
                ))
            }
        }

        impl $name {
            /// Where the session's cells run now (e.g. `pid 1234`,
            /// `runtime at 10.0.0.7:7300`), once it has run something.
            pub fn runtime(&self) -> Option<String> {
                self.0.runtime()
            }
        }

        impl code_mode_protocol::CodeModeSession for $name {
            fn execute_with(
                &self,
                request: code_mode_protocol::ExecRequest,
                hooks: code_mode_protocol::ExecHooks,
            ) -> code_mode_protocol::BoxFuture<
                '_,
                Result<code_mode_protocol::StartedCell, code_mode_protocol::SessionError>,
            > {
                self.0.execute_with(request, hooks)
            }

            fn wait_with(
                &self,
                request: code_mode_protocol::WaitRequest,
                preempt: Option<tokio_util::sync::CancellationToken>,
            ) -> code_mode_protocol::BoxFuture<
                '_,
                Result<code_mode_protocol::CellResponse, code_mode_protocol::SessionError>,
            > {
                self.0.wait_with(request, preempt)
            }

            fn interrupt(
                &self,
            ) -> code_mode_protocol::BoxFuture<
                '_,
                Result<Vec<code_mode_protocol::CellId>, code_mode_protocol::SessionError>,
            > {
                self.0.interrupt()
            }

            fn terminate(
                &self,
                cell_id: code_mode_protocol::CellId,
            ) -> code_mode_protocol::BoxFuture<
                '_,
                Result<code_mode_protocol::CellResponse, code_mode_protocol::SessionError>,
            > {
                self.0.terminate(cell_id)
            }

            fn execute_to_pending(
                &self,
                request: code_mode_protocol::ExecRequest,
            ) -> code_mode_protocol::BoxFuture<
                '_,
                Result<code_mode_protocol::StartedPendingCell, code_mode_protocol::SessionError>,
            > {
                self.0.execute_to_pending(request)
            }

            fn wait_to_pending(
                &self,
                cell_id: code_mode_protocol::CellId,
            ) -> code_mode_protocol::BoxFuture<
                '_,
                Result<code_mode_protocol::PendingOutcome, code_mode_protocol::SessionError>,
            > {
                self.0.wait_to_pending(cell_id)
            }

            fn shutdown(&self) -> code_mode_protocol::BoxFuture<'_, ()> {
                self.0.shutdown()
            }

            fn stored_values(&self) -> code_mode_protocol::StoredValues {
                self.0.stored_values()
            }
        }
    };
}
pub(crate) use hosted_session;

/// How many cells that died with a runtime a session remembers, to answer a later `wait`
/// on one with the runtime-lost error.
const DEAD_CELLS_KEPT: usize = 1024;

/// A session whose cells run in a runtime process. Dropping it starts its shutdown in the
/// runtime.
///
/// The host keeps the session's committed stored values (every runtime reports each
/// commit before the cell's final response), so when the runtime is lost or drains the
/// session opens again on a fresh or another runtime with them, at its next call
/// (contract §7).
pub(crate) struct HostedSession {
    provider: Arc<dyn RuntimeSource>,
    delegate: Arc<dyn CodeModeSessionDelegate>,
    options: SessionOptions,
    /// The committed stored values, as the runtimes reported them.
    stored: Arc<Mutex<CommittedValues>>,
    /// Cells that were running when their runtime was lost, with its cause, oldest first.
    dead_cells: Mutex<VecDeque<(CellId, String)>>,
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
            dead_cells: Mutex::new(VecDeque::new()),
            binding: Mutex::new(None),
            bind_lock: tokio::sync::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Where the session's cells run now (e.g. `pid 1234`, `runtime at 10.0.0.7:7300`),
    /// once it has run something.
    pub(crate) fn runtime(&self) -> Option<String> {
        lock(&self.binding)
            .as_ref()
            .map(|(placed, _)| placed.connection.describe())
    }

    /// The session's committed stored values (the host's copy), as a new runtime is seeded
    /// with them.
    fn committed_values(&self) -> StoredValues {
        lock(&self.stored).to_values()
    }

    /// Lets go of a runtime that was lost, remembering the cells that died with it.
    fn forget_lost_runtime(&self) {
        let mut binding = lock(&self.binding);
        let Some((placed, session)) = &*binding else {
            return;
        };
        let Some(cause) = placed.connection.lost_cause() else {
            return;
        };
        let dead = placed.connection.take_lost_cells(*session);
        *binding = None;
        drop(binding);
        let mut dead_cells = lock(&self.dead_cells);
        for cell_id in dead {
            if dead_cells.len() >= DEAD_CELLS_KEPT {
                dead_cells.pop_front();
            }
            dead_cells.push_back((cell_id, cause.clone()));
        }
    }

    /// The runtime-lost error for a cell that died with its runtime.
    fn dead_cell(&self, cell_id: &CellId) -> Option<SessionError> {
        self.forget_lost_runtime();
        lock(&self.dead_cells)
            .iter()
            .find(|(dead, _)| dead == cell_id)
            .map(|(_, cause)| SessionError::RuntimeLost(cause.clone()))
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
        let _guard = self.bind_lock.lock().await;
        // Again under the lock: a shutdown that ran while this call waited for it has
        // unbound the session, and must not see a new remote session opened behind it.
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SessionError::ShuttingDown);
        }
        self.forget_lost_runtime();
        {
            let mut binding = lock(&self.binding);
            if let Some((placed, session)) = &*binding {
                let connection = &placed.connection;
                let leaving =
                    moving && connection.is_draining() && connection.session_is_idle(*session);
                if !leaving {
                    return Ok((Arc::clone(connection), *session));
                }
                tracing::info!(
                    from = %connection.describe(),
                    "moving a session off a draining runtime"
                );
                connection.send_detached(Request::shutdown(*session));
                connection.forget_session(*session);
                *binding = None;
            }
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
                }),
                ..RequestHooks::default()
            };
            match connection.call::<SessionId>(request, hooks).await {
                Ok(session) => {
                    *lock(&self.binding) = Some((placed, session));
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
    ) -> Result<(Arc<Connection>, T), SessionError> {
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
    ) -> Result<(Arc<Connection>, StartedCell), SessionError> {
        let admitted = Arc::new(AtomicBool::new(false));
        let told = hooks.admitted.clone();
        let flag = Arc::clone(&admitted);
        let hooks = RequestHooks {
            admitted: Some(Arc::new(move |cell_id: &CellId| {
                flag.store(true, Ordering::SeqCst);
                if let Some(told) = &told {
                    told(cell_id);
                }
            })),
            ..hooks
        };
        match self
            .call(SessionCall::Execute(request.clone()), hooks.clone())
            .await
        {
            Err(SessionError::RuntimeLost(cause))
                if !admitted.load(Ordering::SeqCst) && self.provider.reruns_unadmitted() =>
            {
                tracing::info!(%cause, "the runtime was lost before it admitted the cell; running it on a fresh one");
                self.call(SessionCall::Execute(request), hooks).await
            }
            other => other,
        }
    }

    /// Runs a call that names a cell, on the connection the cell id was translated for.
    /// `None` when the id belongs to another runtime generation (a missing cell).
    async fn call_on_cell<T: FromResponse>(
        &self,
        cell_id: &CellId,
        hooks: RequestHooks,
        make: impl FnOnce(CellId) -> SessionCall,
    ) -> Result<Option<(Arc<Connection>, T)>, SessionError> {
        if let Some(lost) = self.dead_cell(cell_id) {
            return Err(lost);
        }
        let (connection, session) = self.bind(false).await?;
        let Some(runtime_id) = connection.runtime_cell_id(cell_id) else {
            return Ok(None);
        };
        self.call_on(connection, session, make(runtime_id), hooks)
            .await
            .map(Some)
    }

    /// Sends `call` for `session` on `connection`. A session the runtime no longer knows
    /// while this one shuts down reports `ShuttingDown`.
    async fn call_on<T: FromResponse>(
        &self,
        connection: Arc<Connection>,
        session: SessionId,
        call: SessionCall,
        hooks: RequestHooks,
    ) -> Result<(Arc<Connection>, T), SessionError> {
        let request = connection.session_request(session, call);
        match connection.call(request, hooks).await {
            Ok(answer) => Ok((connection, answer)),
            Err(error) => Err(error),
        }
    }
}

/// Rewrites the runtime's cell ids in a response to the ids the agent core sees.
fn external_response(
    connection: &Connection,
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
    connection: &Connection,
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
            let (connection, started): (_, StartedPendingCell) = self
                .call(
                    SessionCall::ExecuteToPending(request),
                    RequestHooks::default(),
                )
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
            let (connection, cell_ids): (_, Vec<CellId>) = self
                .call_on(
                    connection,
                    session,
                    SessionCall::Interrupt,
                    RequestHooks::default(),
                )
                .await?;
            Ok(cell_ids
                .iter()
                .map(|cell_id| connection.external_cell_id(cell_id))
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
