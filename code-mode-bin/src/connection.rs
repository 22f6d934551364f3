//! One connection to a host: the handshake, then requests in and responses, delegate calls
//! and cell-closed events out.
//!
//! Reading and writing each live in a dedicated task (framed reads and writes are not
//! cancel-safe inside `select!`). Every request runs in its own task, so a long `wait` never
//! blocks another call. A malformed, oversized or out-of-state message ends the connection
//! with a logged reason; end of input ends it cleanly. Either way every session is shut
//! down before [`serve`] returns.
//!
//! Liveness and bounds: a network connection (`--listen`) pings the host every ping
//! interval; no complete frame from the host within the liveness timeout ends it (a
//! half-open peer). Pings from the host are always answered. A local socket needs no
//! timeout: the host's death is an end of input, and a host that drives its async runtime
//! only now and then must not lose its runtime for that. What is queued for the host is bounded in bytes (the transport's
//! outbox), and so are the requests in flight and the sessions of one connection: a slow
//! or hostile host cannot make the runtime buffer without limit.

use crate::delegate::{DelegateCalls, RemoteDelegate};
use crate::drain::Drain;
use crate::metrics::METRICS;
use code_mode::{Handed, Held, InProcessSession};
use code_mode_internal::futures::poll_once;
use code_mode_internal::sync::lock;
use code_mode_internal::{CallHooks, SessionCall};
use code_mode_protocol::{AdmittedHook, CellId, CodeModeSession, ToolDefinition};
use code_mode_wire::convert::{tool_result, tools_from_wire};
use code_mode_wire::payload::TraceContext;
use code_mode_wire::transport::{self, FrameReader, Outbox, Transport};
use code_mode_wire::*;
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// Why a connection ended other than by a clean end of input.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connection failed: {0}")]
    Frame(#[from] FrameError),
    #[error("the host closed the connection before the handshake")]
    NoHello,
    #[error("handshake refused: {0}")]
    Refused(HandshakeRejection),
    #[error("protocol violation: {0}")]
    Violation(String),
    #[error("the host sent no frame for {0:?} (liveness timeout: the peer is gone)")]
    LivenessTimeout(Duration),
    #[error(
        "the host is not reading what the runtime sends (more than {} bytes queued)",
        MAX_QUEUED_BYTES
    )]
    Stalled,
}

/// Most requests of one connection in flight at once; more is a protocol violation.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 4096;

/// Most sessions open on one connection at once; more are refused.
pub const MAX_SESSIONS_PER_CONNECTION: usize = 1024;

pub use code_mode_wire::Liveness;

/// How one connection is served.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The sandbox level, reported in the handshake.
    pub sandbox: String,
    /// Offer the `remote` capability (a network listener).
    pub remote: bool,
    /// Ping the host this often, and end the connection when no frame came for
    /// `liveness_timeout`; `None` for a local socket.
    pub liveness: Option<Liveness>,
    /// The runtime's drain: once it started, no new sessions; once it stopped, the
    /// connection ends.
    pub drain: Drain,
}

/// Sends a response; one too large for a frame becomes an error response instead (and
/// `false` says so).
fn respond(
    outbox: &Outbox<ServerMessage>,
    id: RequestId,
    result: Result<Response, WireError>,
) -> bool {
    let message = ServerMessage::Response { id, result };
    code_mode_internal::hop!("runtime sends the response");
    let Err(error) = outbox.send(&message) else {
        return true;
    };
    tracing::warn!(%id, "response not sent as is: {error}");
    let bytes = match error {
        FrameError::TooLarge { bytes } => bytes,
        _ => 0,
    };
    let fallback = ServerMessage::Response {
        id,
        result: Err(WireError::ResponseTooLarge {
            bytes,
            max: MAX_FRAME_BYTES as u64,
        }),
    };
    if let Err(error) = outbox.send(&fallback) {
        tracing::error!(%id, "even the error response could not be sent: {error}");
    }
    false
}

/// State shared by the reader and the request tasks.
struct Connection {
    outbox: Outbox<ServerMessage>,
    sessions: Mutex<HashMap<SessionId, Arc<InProcessSession>>>,
    last_session: AtomicU64,
    requests: Mutex<HashMap<RequestId, InFlight>>,
    /// The sessions' delegates hold it weakly.
    delegate_calls: Arc<DelegateCalls>,
    /// The tool sets the host registered, oldest first, at most [`RUNTIME_TOOL_SETS`].
    /// Every exec of a set gets the same `Arc`, so what the runtime works out per set
    /// (the search index, the cells' tool tables) is found by address.
    tool_sets: Mutex<VecDeque<(ToolSetId, Arc<[ToolDefinition]>)>>,
    /// Set when the runtime stops serving with requests still in flight (its drain timeout
    /// passed): they are answered with the runtime-lost error and this cause, as the cells
    /// they observe die with the runtime.
    ending: std::sync::OnceLock<&'static str>,
    /// The runtime's drain: refuses new sessions once started; counts the cells it waits for.
    drain: Drain,
    /// The final answers offered to the host ([`ServerMessage::Offer`]), held until its word.
    offers: Arc<Offers>,
}

/// The final answers this connection's sessions offered to the host, each held until the
/// host takes it or gives it back (or the session or the connection ends).
type Offers = Mutex<HashMap<(SessionId, CellId), Held>>;

/// The sink of session `session`'s offers: each is held here, then sent; one that cannot
/// be sent goes back to its cell at once.
fn offer_sink(
    session: SessionId,
    offers: &Arc<Offers>,
    outbox: &Outbox<ServerMessage>,
) -> code_mode::OfferSink {
    let offers = Arc::clone(offers);
    let outbox = outbox.clone();
    Arc::new(move |offer: code_mode::Offer| {
        let code_mode::Offer {
            cell_id,
            response,
            held,
        } = offer;
        let key = (session, cell_id.clone());
        lock(&offers).insert(key.clone(), held);
        let message = ServerMessage::Offer {
            session,
            cell_id: cell_id.into(),
            response: response.into(),
        };
        match outbox.send(&message) {
            Ok(()) => {
                if let Some(held) = lock(&offers).get(&key) {
                    held.sent();
                }
            }
            Err(error) => {
                tracing::debug!(%session, "an offer not sent: {error}");
                let held = lock(&offers).remove(&key);
                drop(held);
            }
        }
    })
}

impl Connection {
    /// Runs request `request_id`: opens a session, registers a tool set, rebuilds a cell,
    /// gives a late answer, or runs a call of a session ([`Self::run_call`]); `preempt`
    /// fires when the host preempts it (an observation then answers `Yielded` at once).
    /// The answer of a call that observes a cell comes back held, for the host's word.
    async fn dispatch(
        self: &Arc<Self>,
        request_id: RequestId,
        request: Request,
        preempt: CancellationToken,
    ) -> Result<(Response, Held), WireError> {
        let unheld = |response| Ok((response, Held::default()));
        match request {
            Request::RegisterTools { tool_set, tools } => {
                self.register_tools(tool_set, tools);
                unheld(Response::ToolsRegistered)
            }
            Request::SessionWithTools {
                session,
                tool_set,
                call,
            } => {
                let tools = lock(&self.tool_sets)
                    .iter()
                    .find(|(known, _)| *known == tool_set)
                    .map(|(_, tools)| Arc::clone(tools))
                    .ok_or(WireError::UnknownToolSet(tool_set))?;
                let mut call = SessionCall::from(call);
                if let Some(request) = call.exec_request_mut() {
                    request.tools = tools;
                }
                self.run_call(request_id, session, call, preempt).await
            }
            Request::Session { session, call } => {
                self.run_call(request_id, session, call.into(), preempt)
                    .await
            }
            Request::Resume {
                session,
                journal,
                exec_call_id,
                committed,
            } => {
                let session = self.session(session)?;
                let cell_id = session.resume(journal.into(), exec_call_id, None, committed)?;
                self.drain.cell_started();
                METRICS.cell_resumed();
                unheld(Response::Resumed(cell_id.into()))
            }
            Request::Answer {
                session,
                cell_id,
                call,
                result,
            } => {
                let session = self.session(session)?;
                let taken = session
                    .answer_call(&cell_id.into(), call.into(), tool_result(result))
                    .await;
                unheld(Response::Answered(taken))
            }
            Request::OpenSession {
                options,
                stored_values,
            } => unheld(Response::SessionOpened(
                self.open_session(options, stored_values)?,
            )),
        }
    }

    /// Keeps a tool set the host registered (the oldest goes past [`RUNTIME_TOOL_SETS`]).
    fn register_tools(
        &self,
        tool_set: ToolSetId,
        tools: Vec<code_mode_wire::payload::ToolDefinition>,
    ) {
        let mut sets = lock(&self.tool_sets);
        sets.retain(|(known, _)| *known != tool_set);
        if sets.len() >= RUNTIME_TOOL_SETS {
            sets.pop_front();
        }
        sets.push_back((tool_set, tools_from_wire(tools)));
    }

    /// Opens a session with `stored_values` committed, unless the runtime drains or the
    /// connection has its maximum of sessions.
    fn open_session(
        &self,
        options: code_mode_wire::payload::SessionOptions,
        stored_values: code_mode_protocol::stored::StoredValues,
    ) -> Result<SessionId, WireError> {
        if self.drain.is_draining() {
            return Err(WireError::Draining);
        }
        if lock(&self.sessions).len() >= MAX_SESSIONS_PER_CONNECTION {
            return Err(WireError::TooManySessions {
                max: MAX_SESSIONS_PER_CONNECTION as u64,
            });
        }
        let id = SessionId(self.last_session.fetch_add(1, Ordering::SeqCst) + 1);
        let delegate =
            RemoteDelegate::new(Arc::downgrade(&self.delegate_calls), id, self.drain.clone());
        if !stored_values.is_empty() {
            METRICS.session_seeded();
        }
        let session =
            InProcessSession::with_values(Arc::new(delegate), options.into(), stored_values);
        session.offer_finished(offer_sink(id, &self.offers, &self.outbox));
        lock(&self.sessions).insert(id, Arc::new(session));
        METRICS.sessions_opened(1);
        Ok(id)
    }

    /// Runs a call of session `id` ([`InProcessSession::call_untaken`]), its admission
    /// reported before its answer; a shutdown also forgets the session.
    async fn run_call(
        self: &Arc<Self>,
        request_id: RequestId,
        id: SessionId,
        call: SessionCall,
        preempt: CancellationToken,
    ) -> Result<(Response, Held), WireError> {
        let session = if matches!(call, SessionCall::Shutdown) {
            let removed = lock(&self.sessions).remove(&id);
            if removed.is_some() {
                METRICS.sessions_closed(1);
                if self.drain.is_draining() {
                    METRICS.session_moved_off();
                }
            }
            // Its offers go back to their cells, which the shutdown closes.
            let offers: Vec<Held> = lock(&self.offers)
                .extract_if(|(session, _), _| *session == id)
                .map(|(_, held)| held)
                .collect();
            drop(offers);
            removed
        } else {
            lock(&self.sessions).get(&id).cloned()
        };
        let session = session.ok_or(WireError::MissingSession(id))?;
        let timed = call.starts_cell().then(Instant::now);
        let _running = timed.map(|_| self.drain.execute_running());
        // The admission goes out before the response and before any delegate call
        // of the cell (the session reports it before the cell's actor runs).
        let outbox = self.outbox.clone();
        let admitted: AdmittedHook = Arc::new(move |cell_id: &CellId| {
            let message = ServerMessage::Admitted {
                id: request_id,
                cell_id: cell_id.into(),
            };
            if let Err(error) = outbox.send(&message) {
                tracing::debug!("admission of cell {cell_id} not sent: {error}");
            }
        });
        let hooks = CallHooks {
            preempt: Some(preempt),
            admitted: Some(admitted),
        };
        let Handed { reply, held } = session.call_untaken(call, hooks).await?;
        if matches!(
            reply,
            code_mode_internal::SessionReply::Started(_)
                | code_mode_internal::SessionReply::StartedPending(_)
        ) {
            self.drain.cell_started();
        }
        METRICS.reply(&reply, timed.map(|started| started.elapsed()));
        Ok((Response::Reply(reply.into()), held))
    }

    /// An open session of this connection.
    fn session(&self, id: SessionId) -> Result<Arc<InProcessSession>, WireError> {
        lock(&self.sessions)
            .get(&id)
            .cloned()
            .ok_or(WireError::MissingSession(id))
    }

    /// Shuts every session down (the connection is over).
    async fn shut_down_sessions(&self) {
        let sessions: Vec<_> = lock(&self.sessions).drain().map(|(_, s)| s).collect();
        METRICS.sessions_closed(sessions.len() as u64);
        let shutdowns = sessions.iter().map(|session| session.shutdown());
        futures_util::future::join_all(shutdowns).await;
        // Delegate calls still waiting get "connection closed" as their senders drop.
        self.delegate_calls.clear();
    }
}

/// A request the runtime is running: how the host cancels it, and how it preempts it.
/// Once answered, a request that observes a cell stays here with its answer held until the
/// host says what became of it ([`ClientMessage::Taken`], [`ClientMessage::GivenBack`]).
struct InFlight {
    cancel: CancellationToken,
    preempt: CancellationToken,
    held: Option<Held>,
}

/// Serves one host connection until it ends (or `settings.stop` is cancelled).
pub async fn serve<S>(stream: S, settings: ServeSettings) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Transport {
        mut reader,
        outbox,
        writer,
    } = transport::split::<S, ClientMessage, ServerMessage>(stream);
    let connection = Arc::new(Connection {
        delegate_calls: DelegateCalls::new(outbox.clone()),
        outbox,
        sessions: Mutex::new(HashMap::new()),
        last_session: AtomicU64::new(0),
        requests: Mutex::new(HashMap::new()),
        tool_sets: Mutex::new(VecDeque::new()),
        ending: std::sync::OnceLock::new(),
        drain: settings.drain.clone(),
        offers: Arc::new(Mutex::new(HashMap::new())),
    });
    let tasks = TaskTracker::new();
    let outcome = read_loop(&connection, &mut reader, &tasks, &settings).await;
    if let Err(error) = &outcome {
        tracing::error!("closing the connection: {error}");
    }
    if settings.drain.is_stopped() {
        let _ = connection
            .ending
            .set(code_mode_protocol::texts::DRAIN_DEADLINE_PASSED);
    }
    for (_, in_flight) in lock(&connection.requests).drain() {
        in_flight.cancel.cancel();
    }
    let offers: Vec<Held> = lock(&connection.offers)
        .drain()
        .map(|(_, held)| held)
        .collect();
    drop(offers);
    connection.shut_down_sessions().await;
    tasks.close();
    tasks.wait().await;
    // Let the writer flush what is queued (cell-closed events), then stop it. After the
    // host closed its side, it may not read them any more: that is not a failure.
    drop(connection);
    match writer.await {
        Ok(Err(error)) => tracing::debug!("final writes to the host failed: {error}"),
        Err(error) => tracing::error!("the writer task failed: {error}"),
        Ok(Ok(())) => {}
    }
    outcome
}

/// Reads the host's messages until the connection ends: the handshake, then each message
/// handled in wire order.
async fn read_loop<S: AsyncRead>(
    connection: &Arc<Connection>,
    reader: &mut FrameReader<S, ClientMessage, ServerMessage>,
    tasks: &TaskTracker,
    settings: &ServeSettings,
) -> Result<(), ConnectionError> {
    handshake(connection, reader, settings).await?;
    let _stop_pinger = settings.liveness.map(|liveness| {
        AbortOnDrop(transport::spawn_pinger(
            connection.outbox.clone(),
            liveness.ping_interval,
            ServerMessage::Ping,
        ))
    });
    let mut told_draining = false;
    loop {
        if settings.drain.is_draining() && !told_draining {
            told_draining = true;
            let _ = connection.outbox.send(&ServerMessage::Draining);
        }
        let next = tokio::select! {
            biased;
            () = settings.drain.stopped() => return Ok(()),
            () = connection.outbox.stalled().cancelled() => return Err(ConnectionError::Stalled),
            () = settings.drain.started(), if !told_draining => continue,
            next = within(settings.liveness, reader.next()) => next?,
        };
        let Some(message) = next else {
            return Ok(());
        };
        match message? {
            ClientMessage::Ping(nonce) => {
                let _ = connection.outbox.send(&ServerMessage::Pong(nonce));
            }
            ClientMessage::Pong(_) => {}
            ClientMessage::Hello(_) => {
                return Err(ConnectionError::Violation("a second Hello".to_owned()));
            }
            ClientMessage::Request { id, request, trace } => {
                start_request(connection, tasks, id, request, trace)?;
            }
            ClientMessage::CancelRequest { id } => {
                // Unknown ids are answered already: the cancellation crossed the response.
                if let Some(in_flight) = lock(&connection.requests).get(&id) {
                    in_flight.cancel.cancel();
                }
            }
            ClientMessage::Preempt { id } => {
                // As for a cancellation, an unknown id was answered already.
                if let Some(in_flight) = lock(&connection.requests).get(&id) {
                    in_flight.preempt.cancel();
                }
            }
            ClientMessage::Taken { id } => settle_word(connection, id, Word::Taken)?,
            ClientMessage::GivenBack { id } => settle_word(connection, id, Word::GivenBack)?,
            ClientMessage::OfferTaken { session, cell_id } => {
                settle_offer(connection, session, cell_id.into(), Word::Taken)?;
            }
            ClientMessage::OfferGivenBack { session, cell_id } => {
                settle_offer(connection, session, cell_id.into(), Word::GivenBack)?;
            }
            ClientMessage::DelegateReply { id, reply } => {
                code_mode_internal::hop!("runtime has the tool result");
                connection
                    .delegate_calls
                    .complete(id, reply)
                    .map_err(ConnectionError::Violation)?;
            }
        }
    }
}

/// Reads the host's `Hello` and answers it: `Ready`, or `Rejected` and the end.
async fn handshake<S: AsyncRead>(
    connection: &Connection,
    reader: &mut FrameReader<S, ClientMessage, ServerMessage>,
    settings: &ServeSettings,
) -> Result<(), ConnectionError> {
    let refuse = |rejection: HandshakeRejection| {
        let _ = connection
            .outbox
            .send(&ServerMessage::Rejected(rejection.clone()));
        ConnectionError::Refused(rejection)
    };
    let hello = match within(settings.liveness, reader.next()).await? {
        Some(Ok(ClientMessage::Hello(hello))) => hello,
        Some(Ok(other)) => {
            return Err(refuse(HandshakeRejection::InvalidHello(format!(
                "expected Hello, got {}",
                other.kind()
            ))));
        }
        Some(Err(error)) => return Err(error.into()),
        None => return Err(ConnectionError::NoHello),
    };
    let mut offer = ServerOffer::current(
        concat!("code-mode-bin ", env!("CARGO_PKG_VERSION")),
        settings.sandbox.clone(),
    );
    if settings.remote {
        offer = offer.with_capability(REMOTE_CAPABILITY);
    }
    let ready = offer.negotiate(&hello).map_err(refuse)?;
    tracing::info!(client = %hello.client, %ready, "handshake done");
    connection
        .outbox
        .send(&ServerMessage::Ready(ready))
        .map_err(ConnectionError::Frame)
}

/// Registers request `id` as in flight and starts it: polled once here, in wire order (an
/// `execute` hands its cell to a thread now, without waiting for a task of its own to be
/// scheduled), and spawned only if it has to wait. A request the host traces runs under
/// a span whose children are handed back to the host (`spans`).
fn start_request(
    connection: &Arc<Connection>,
    tasks: &TaskTracker,
    id: RequestId,
    request: Request,
    trace: Option<TraceContext>,
) -> Result<(), ConnectionError> {
    code_mode_internal::hop!("runtime has the request");
    let cancel = CancellationToken::new();
    let preempt = CancellationToken::new();
    {
        let mut requests = lock(&connection.requests);
        if requests.contains_key(&id) {
            return Err(ConnectionError::Violation(format!(
                "{id} is already in flight"
            )));
        }
        if requests.len() >= MAX_REQUESTS_IN_FLIGHT {
            return Err(ConnectionError::Violation(format!(
                "more than {MAX_REQUESTS_IN_FLIGHT} requests in flight"
            )));
        }
        requests.insert(
            id,
            InFlight {
                cancel: cancel.clone(),
                preempt: preempt.clone(),
                held: None,
            },
        );
    }
    let (span, route) = trace
        .and_then(|trace| crate::spans::runtime_span(trace, request.session()))
        .map_or((tracing::Span::none(), None), |(span, route)| {
            (span, Some(route))
        });
    let mut task = Box::pin(
        run_request(Arc::clone(connection), id, request, cancel, preempt).instrument(span),
    );
    if poll_once(&mut task).is_none() {
        tasks.spawn(task);
    }
    // After the request's first poll: an `execute`'s cell is compiling meanwhile.
    if let Some(route) = route {
        crate::spans::open_route(route, &connection.outbox);
    }
    Ok(())
}

/// Runs request `id` to its response. Every success of a request that observes a cell is
/// held (an empty one for a missing cell) before the response goes, for the host's word
/// that comes after it.
async fn run_request(
    connection: Arc<Connection>,
    id: RequestId,
    request: Request,
    cancel: CancellationToken,
    preempt: CancellationToken,
) {
    let holds_answer = request.holds_answer();
    // Biased: the request gets its first poll even if a cancellation is already queued,
    // so an `execute` cut short still admits its cell, exactly as in process.
    let result = tokio::select! {
        biased;
        result = connection.dispatch(id, request, preempt) => result,
        () = cancel.cancelled() => Err(match connection.ending.get() {
            Some(cause) => WireError::RuntimeLost((*cause).to_owned()),
            None => WireError::Cancelled,
        }),
    };
    let (result, held) = match result {
        Ok((response, held)) => (Ok(response), holds_answer.then_some(held)),
        Err(error) => (Err(error), None),
    };
    let holding = held.is_some();
    {
        let mut requests = lock(&connection.requests);
        match (held, requests.get_mut(&id)) {
            (Some(held), Some(in_flight)) => in_flight.held = Some(held),
            _ => drop(requests.remove(&id)),
        }
    }
    let sent = respond(&connection.outbox, id, result);
    if !holding {
        return;
    }
    let mut requests = lock(&connection.requests);
    if sent {
        // On its way: a final answer's cell thread may reset now.
        if let Some(held) = requests
            .get(&id)
            .and_then(|in_flight| in_flight.held.as_ref())
        {
            held.sent();
        }
    } else if let Some(held) = requests.remove(&id).and_then(|in_flight| in_flight.held) {
        // The host got an error instead of the answer: it says nothing of it, and the
        // answer, too large to send, is not kept either.
        drop(requests);
        held.take();
    }
}

/// What the host said of an answer the runtime holds.
#[derive(Debug, Clone, Copy)]
enum Word {
    Taken,
    GivenBack,
}

/// Settles the answer held for request `id` as the host's word says: taken, or given back
/// to its cell. At once, in wire order: an answer given back is the cell's again before
/// any later request of the host reaches the cell. A word for a request that holds no
/// answer is a violation.
fn settle_word(connection: &Connection, id: RequestId, word: Word) -> Result<(), ConnectionError> {
    let held = {
        let mut requests = lock(&connection.requests);
        match requests.get(&id) {
            Some(in_flight) if in_flight.held.is_some() => {
                requests.remove(&id).and_then(|in_flight| in_flight.held)
            }
            _ => None,
        }
    };
    let Some(held) = held else {
        return Err(ConnectionError::Violation(format!(
            "{word:?} for {id}, which holds no answer"
        )));
    };
    match word {
        Word::Taken => held.take(),
        Word::GivenBack => drop(held),
    }
    Ok(())
}

/// Settles the answer cell `cell_id` of `session` offered as the host's word says, at once
/// and in wire order as [`settle_word`] does. A word for an offer the runtime does not
/// hold is ignored when the session is gone (its shutdown gave its offers back), and a
/// violation otherwise.
fn settle_offer(
    connection: &Connection,
    session: SessionId,
    cell_id: CellId,
    word: Word,
) -> Result<(), ConnectionError> {
    let held = lock(&connection.offers).remove(&(session, cell_id.clone()));
    let Some(held) = held else {
        if lock(&connection.sessions).contains_key(&session) {
            return Err(ConnectionError::Violation(format!(
                "{word:?} for cell {cell_id} of {session}, which offered no answer"
            )));
        }
        return Ok(());
    };
    match word {
        Word::Taken => held.take(),
        Word::GivenBack => drop(held),
    }
    Ok(())
}

/// Awaits `future`, within the liveness timeout when there is one.
async fn within<T>(
    liveness: Option<Liveness>,
    future: impl std::future::Future<Output = T>,
) -> Result<T, ConnectionError> {
    match liveness {
        None => Ok(future.await),
        Some(liveness) => tokio::time::timeout(liveness.timeout, future)
            .await
            .map_err(|_| ConnectionError::LivenessTimeout(liveness.timeout)),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
