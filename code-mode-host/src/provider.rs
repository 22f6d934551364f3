//! [`IpcProvider`] and [`IpcSession`]: `CodeModeSession` over a `code-mode-bin` process.
//!
//! One provider owns one runtime process at a time, spawned on first use and shared by all
//! of its sessions. A session opens its remote session lazily, on its first call. When the
//! process dies, calls in flight fail with [`SessionError::RuntimeLost`] (the cause named),
//! each live cell is reported closed, and the next call of each session that had state
//! fails once with [`SessionError::RuntimeReplaced`]; later calls run in a fresh process
//! (the next *generation*, whose cell ids read `g2:1`, `g3:1`, ...). Nothing is replayed.
//! Restarts back off, and a crash loop gives up with a clear error.

use crate::binary::find_binary;
use crate::connection::{Answer, Connection, Liveness, Placed};
pub use crate::error::HostError;
use crate::process;
use crate::unclaimed::{Reclaim, Unclaimed};
use code_mode_protocol::sync::lock;
use code_mode_protocol::wire::{Request, SessionId};
use code_mode_protocol::{
    BoxFuture, CellResponse, CodeModeSession, CodeModeSessionDelegate, ExecRequest, PendingOutcome,
    SessionCall, SessionError, SessionOptions, StartedCell, StartedPendingCell, WaitRequest,
};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Crashes within [`CRASH_WINDOW`] after which the provider stops restarting.
pub const MAX_CRASHES: usize = 5;

/// The window in which crashes are counted.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// The first restart delay after a crash; doubled for each further recent crash.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);

/// The longest restart delay.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(2);

/// How the provider finds and starts its runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// The runtime binary; `None` to search (see [`find_binary`]).
    pub binary: Option<PathBuf>,
    /// The runtime's stderr log filter (`tracing` env-filter syntax).
    pub log_filter: String,
    /// How long a fresh runtime gets to connect.
    pub connect_timeout: Duration,
    /// Pings and a liveness timeout on the connection to the local runtime; off by
    /// default (its death is seen at once as the end of its socket, and a host that drives
    /// its async runtime only now and then would take its own pause for a dead runtime).
    pub liveness: Option<Liveness>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            binary: None,
            log_filter: "warn".to_owned(),
            connect_timeout: Duration::from_secs(10),
            liveness: None,
        }
    }
}

/// Where sessions get their runtime: the supervised local process, or a pool of remote
/// runtimes. Each call places one session; the [`Placed`] guard counts it toward the
/// runtime's load until the session lets go of it.
pub(crate) trait RuntimeSource: Send + Sync + 'static {
    fn place(&self) -> BoxFuture<'_, Result<Placed, HostError>>;
}

/// How many runtimes a session tries when the one it was placed on is draining.
const PLACEMENT_ATTEMPTS: usize = 4;

struct Runtime {
    current: Option<Arc<Connection>>,
    last_generation: u64,
    /// When recent runtimes died or failed to start, oldest first.
    failures: VecDeque<Instant>,
    last_failure: String,
}

struct ProviderInner {
    binary: PathBuf,
    config: HostConfig,
    /// Serializes spawning; holds the current runtime.
    runtime: tokio::sync::Mutex<Runtime>,
}

/// Creates [`IpcSession`]s that share one runtime process.
#[derive(Clone)]
pub struct IpcProvider {
    inner: Arc<ProviderInner>,
}

impl std::fmt::Debug for IpcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcProvider")
            .field("binary", &self.inner.binary)
            .finish_non_exhaustive()
    }
}

impl IpcProvider {
    /// Finds the runtime binary now, so that a misconfiguration surfaces at once; the
    /// process itself starts on first use.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let binary = find_binary(config.binary.as_deref())?;
        Ok(Self {
            inner: Arc::new(ProviderInner {
                binary,
                config,
                runtime: tokio::sync::Mutex::new(Runtime {
                    current: None,
                    last_generation: 0,
                    failures: VecDeque::new(),
                    last_failure: String::new(),
                }),
            }),
        })
    }

    /// The runtime binary in use.
    pub fn binary(&self) -> &std::path::Path {
        &self.inner.binary
    }

    /// A new session reporting to `delegate`. Nothing is started until its first call.
    pub fn open_session(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> IpcSession {
        IpcSession::new(self.inner.clone(), delegate, options)
    }

    /// Starts the runtime process now (spawn and handshake) unless one is running, so that
    /// the first call does not pay for it.
    pub async fn start(&self) -> Result<(), HostError> {
        self.inner.connection().await.map(drop)
    }

    /// The pid of the current runtime process, if one is running.
    pub async fn runtime_pid(&self) -> Option<u32> {
        let runtime = self.inner.runtime.lock().await;
        runtime
            .current
            .as_ref()
            .filter(|connection| !connection.is_lost())
            .and_then(|connection| connection.pid())
    }
}

impl ProviderInner {
    /// The live runtime, starting one if needed.
    async fn connection(&self) -> Result<Arc<Connection>, HostError> {
        let mut runtime = self.runtime.lock().await;
        if let Some(current) = &runtime.current {
            if !current.is_lost() {
                return Ok(Arc::clone(current));
            }
            runtime.current = None;
            runtime.failures.push_back(Instant::now());
            runtime.last_failure = "the previous runtime was lost".to_owned();
        }
        let now = Instant::now();
        while runtime
            .failures
            .front()
            .is_some_and(|failed| now.duration_since(*failed) > CRASH_WINDOW)
        {
            runtime.failures.pop_front();
        }
        let recent = runtime.failures.len();
        if recent >= MAX_CRASHES {
            return Err(HostError::CrashLoop {
                crashes: recent,
                window: CRASH_WINDOW,
                last: runtime.last_failure.clone(),
            });
        }
        if recent > 0 {
            let exponent = u32::try_from(recent - 1).unwrap_or(u32::MAX).min(16);
            let delay = FIRST_RESTART_DELAY
                .saturating_mul(2u32.saturating_pow(exponent))
                .min(MAX_RESTART_DELAY);
            tracing::warn!(
                ?delay,
                recent,
                "restarting the code-mode runtime after a failure"
            );
            tokio::time::sleep(delay).await;
        }
        let generation = runtime.last_generation + 1;
        match self.start(generation).await {
            Ok(connection) => {
                runtime.last_generation = generation;
                runtime.current = Some(Arc::clone(&connection));
                Ok(connection)
            }
            Err(error) => {
                runtime.failures.push_back(Instant::now());
                runtime.last_failure = error.to_string();
                Err(error)
            }
        }
    }

    async fn start(&self, generation: u64) -> Result<Arc<Connection>, HostError> {
        let (process, stream) = process::spawn(
            &self.binary,
            &self.config.log_filter,
            self.config.connect_timeout,
        )
        .await?;
        let liveness = self.config.liveness;
        Ok(Connection::establish(Box::new(process), stream, generation, liveness).await?)
    }
}

impl RuntimeSource for ProviderInner {
    fn place(&self) -> BoxFuture<'_, Result<Placed, HostError>> {
        Box::pin(async move { self.connection().await.map(Placed::new) })
    }
}

/// A session whose cells run in a runtime process: the [`IpcProvider`]'s local one, or one
/// of a [`crate::RemoteProvider`]'s. Dropping it starts its shutdown in the runtime.
pub struct IpcSession {
    provider: Arc<dyn RuntimeSource>,
    delegate: Arc<dyn CodeModeSessionDelegate>,
    options: SessionOptions,
    /// The remote session, once opened, and its placement.
    binding: Mutex<Option<(Placed, SessionId)>>,
    /// Serializes opening the remote session.
    bind_lock: tokio::sync::Mutex<()>,
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for IpcSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcSession").finish_non_exhaustive()
    }
}

impl Drop for IpcSession {
    fn drop(&mut self) {
        if let Some((placed, session)) = lock(&self.binding).take()
            && !placed.connection.is_lost()
        {
            placed.connection.send_detached(Request::Session {
                session,
                call: SessionCall::Shutdown,
            });
        }
    }
}

impl IpcSession {
    pub(crate) fn new(
        provider: Arc<dyn RuntimeSource>,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> Self {
        Self {
            provider,
            delegate,
            options,
            binding: Mutex::new(None),
            bind_lock: tokio::sync::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Where the session's cells run now (e.g. `pid 1234`, `runtime at 10.0.0.7:7300`),
    /// once it has run something.
    pub fn runtime(&self) -> Option<String> {
        lock(&self.binding)
            .as_ref()
            .map(|(placed, _)| placed.connection.describe())
    }

    /// The remote session, opening it (and starting a runtime) if needed. A session whose
    /// runtime was lost fails once with [`SessionError::RuntimeReplaced`].
    async fn bind(&self) -> Result<(Arc<Connection>, SessionId), SessionError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SessionError::ShuttingDown);
        }
        let _guard = self.bind_lock.lock().await;
        // Again under the lock: a shutdown that ran while this call waited for it has
        // unbound the session, and must not see a new remote session opened behind it.
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SessionError::ShuttingDown);
        }
        {
            let mut binding = lock(&self.binding);
            match &*binding {
                Some((placed, session)) if !placed.connection.is_lost() => {
                    return Ok((Arc::clone(&placed.connection), *session));
                }
                Some(_) => {
                    *binding = None;
                    return Err(SessionError::RuntimeReplaced);
                }
                None => {}
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let placed = self
                .provider
                .place()
                .await
                .map_err(|error| SessionError::Runtime(error.to_string()))?;
            let connection = Arc::clone(&placed.connection);
            let request = Request::OpenSession {
                options: self.options.clone(),
            };
            match connection
                .call::<SessionId>(request, Some(Arc::clone(&self.delegate)))
                .await
            {
                Ok(session) => {
                    *lock(&self.binding) = Some((placed, session));
                    return Ok((connection, session));
                }
                // A runtime that started draining meanwhile: another one takes the session.
                Err(_) if connection.is_draining() && attempt < PLACEMENT_ATTEMPTS => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Runs a call on the remote session.
    async fn call<T: Answer>(
        &self,
        call: SessionCall,
    ) -> Result<(Arc<Connection>, T), SessionError> {
        let (connection, session) = self.bind().await?;
        self.call_on(connection, session, call).await
    }

    /// Runs a call that names a cell, on the connection the cell id was translated for.
    /// `None` when the id belongs to another runtime generation (a missing cell).
    ///
    /// An answer the runtime gave to a dropped call of this cell (see `unclaimed`) comes
    /// first: alone when it ends the cell or when `same_kind_settles` and it is of this
    /// call's kind, otherwise before the runtime's answer to this call. Dropping this
    /// call, or its failure, puts it back.
    async fn call_on_cell<T: Answer + Reclaim>(
        &self,
        cell_id: &str,
        same_kind_settles: bool,
        make: impl FnOnce(String) -> SessionCall,
    ) -> Result<Option<(Arc<Connection>, T)>, SessionError> {
        let (connection, session) = self.bind().await?;
        let Some(runtime_id) = connection.runtime_cell_id(cell_id) else {
            return Ok(None);
        };
        let mut kept = KeptAnswer {
            connection: &connection,
            session,
            unclaimed: connection.take_unclaimed(session, &runtime_id),
        };
        if let Some(unclaimed) = kept.unclaimed.take() {
            match T::settled_by(unclaimed, same_kind_settles) {
                Ok(answer) => return Ok(Some((Arc::clone(&connection), answer))),
                Err(unclaimed) => kept.unclaimed = Some(unclaimed),
            }
        }
        let (connection, answer) = self
            .call_on(Arc::clone(&connection), session, make(runtime_id.clone()))
            .await?;
        // A dropped call of this cell whose answer crossed this one: it came first.
        let crossed = connection.take_unclaimed(session, &runtime_id);
        let earlier = match (kept.unclaimed.take(), crossed) {
            (Some(first), Some(then)) => Some(first.then(then)),
            (first, then) => first.or(then),
        };
        let answer = match earlier {
            Some(earlier) => T::after(earlier, answer),
            None => answer,
        };
        Ok(Some((connection, answer)))
    }

    /// Sends `call` for `session` on `connection`. A session the runtime no longer knows
    /// while this one shuts down reports `ShuttingDown`.
    async fn call_on<T: Answer>(
        &self,
        connection: Arc<Connection>,
        session: SessionId,
        call: SessionCall,
    ) -> Result<(Arc<Connection>, T), SessionError> {
        match connection
            .call(Request::Session { session, call }, None)
            .await
        {
            Ok(answer) => Ok((connection, answer)),
            Err(SessionError::Runtime(_)) if self.shutting_down.load(Ordering::SeqCst) => {
                Err(SessionError::ShuttingDown)
            }
            Err(error) => Err(error),
        }
    }
}

/// An unclaimed answer taken for an observation: put back unless the observation returns
/// it (a dropped or failed observation consumes nothing).
struct KeptAnswer<'a> {
    connection: &'a Connection,
    session: SessionId,
    unclaimed: Option<Unclaimed>,
}

impl Drop for KeptAnswer<'_> {
    fn drop(&mut self) {
        if let Some(unclaimed) = self.unclaimed.take() {
            self.connection.restore_unclaimed(self.session, unclaimed);
        }
    }
}

/// Rewrites the runtime's cell ids in a response to the ids the agent core sees.
fn external_response(
    connection: &Connection,
    response: CellResponse,
    asked: Option<&str>,
) -> CellResponse {
    if response.is_missing_cell() {
        let id = asked.map_or_else(
            || connection.external_cell_id(response.cell_id()),
            str::to_owned,
        );
        return CellResponse::missing(id);
    }
    let id = connection.external_cell_id(response.cell_id());
    response.with_cell_id(id)
}

fn external_outcome(
    connection: &Connection,
    outcome: PendingOutcome,
    asked: Option<&str>,
) -> PendingOutcome {
    match outcome {
        PendingOutcome::Pending {
            cell_id,
            content_items,
            pending_tool_call_ids,
        } => PendingOutcome::Pending {
            cell_id: connection.external_cell_id(&cell_id),
            content_items,
            pending_tool_call_ids,
        },
        PendingOutcome::Completed(response) => {
            PendingOutcome::Completed(external_response(connection, response, asked))
        }
    }
}

impl CodeModeSession for IpcSession {
    fn execute(&self, request: ExecRequest) -> BoxFuture<'_, Result<StartedCell, SessionError>> {
        Box::pin(async move {
            let (connection, started): (_, StartedCell) =
                self.call(SessionCall::Execute(request)).await?;
            Ok(StartedCell {
                cell_id: connection.external_cell_id(&started.cell_id),
                initial_response: external_response(&connection, started.initial_response, None),
            })
        })
    }

    fn wait(&self, request: WaitRequest) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        Box::pin(async move {
            let asked = request.cell_id.clone();
            let yield_time_ms = request.yield_time_ms;
            let answer = self
                .call_on_cell(&asked, true, |cell_id| {
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
        })
    }

    fn terminate(&self, cell_id: String) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        Box::pin(async move {
            let answer = self
                .call_on_cell(&cell_id, false, |cell_id| SessionCall::Terminate {
                    cell_id,
                })
                .await?;
            let Some((connection, response)) = answer else {
                return Ok(CellResponse::missing(cell_id));
            };
            Ok(external_response(&connection, response, Some(&cell_id)))
        })
    }

    fn execute_to_pending(
        &self,
        request: ExecRequest,
    ) -> BoxFuture<'_, Result<StartedPendingCell, SessionError>> {
        Box::pin(async move {
            let (connection, started): (_, StartedPendingCell) =
                self.call(SessionCall::ExecuteToPending(request)).await?;
            Ok(StartedPendingCell {
                cell_id: connection.external_cell_id(&started.cell_id),
                outcome: external_outcome(&connection, started.outcome, None),
            })
        })
    }

    fn wait_to_pending(
        &self,
        cell_id: String,
    ) -> BoxFuture<'_, Result<PendingOutcome, SessionError>> {
        Box::pin(async move {
            let answer = self
                .call_on_cell(&cell_id, true, |cell_id| SessionCall::WaitToPending {
                    cell_id,
                })
                .await?;
            let Some((connection, outcome)) = answer else {
                return Ok(PendingOutcome::Completed(CellResponse::missing(cell_id)));
            };
            Ok(external_outcome(&connection, outcome, Some(&cell_id)))
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
                let request = Request::Session {
                    session,
                    call: SessionCall::Shutdown,
                };
                if let Err(error) = connection.call::<()>(request, None).await {
                    tracing::warn!("shutting the remote session down failed: {error}");
                }
                connection.forget_session(session);
            }
        })
    }
}
