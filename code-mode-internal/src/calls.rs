//! The session's methods as data: a [`SessionCall`] names one call of a
//! [`CodeModeSession`] with its arguments, and a [`SessionReply`] is its answer.
//!
//! Every front end that drives sessions from messages uses this one adapter instead of a
//! hand-written match over the methods: the JSON-lines driver through
//! [`SessionCall::run_with`], the runtime process (wire requests) through
//! [`SessionCall::dispatch`] on a target that hands its answers on untaken.
//! [`SessionCall::dispatch`] is the only place that maps a call to a method; a front end
//! only parses its own message format into a `SessionCall` and renders the `SessionReply`
//! (the JSON forms are in the `code-mode-surface` crate's `json` module).

use code_mode_protocol::ids::CellId;
use code_mode_protocol::session::{
    AdmittedHook, BoxFuture, CellResponse, CodeModeSession, ExecHooks, ExecRequest, PendingOutcome,
    SessionError, StartedCell, StartedPendingCell, WaitRequest,
};
use tokio_util::sync::CancellationToken;

/// One call of a session's methods. Opening a session is not one: that belongs to
/// whatever holds the sessions.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionCall {
    Execute(ExecRequest),
    Wait(WaitRequest),
    Terminate {
        cell_id: CellId,
    },
    ExecuteToPending(ExecRequest),
    WaitToPending {
        cell_id: CellId,
    },
    /// Terminates every running cell of the session (contract 8.4).
    Interrupt,
    /// Shuts the session down; whoever holds it forgets it afterwards.
    Shutdown,
}

/// What starting a cell gives a [`CallTarget`]: the cell's id and its first answer.
pub type StartedWith<'a, A> = BoxFuture<'a, Result<(CellId, A), SessionError>>;

/// What [`SessionCall::dispatch`] runs a call on: a session's methods, each answering in
/// the target's own form ([`CallTarget::Answer`]). A session whose caller takes each answer
/// at once is one ([`SessionCall::run_with`] wraps any [`CodeModeSession`]); the in-process
/// session is another when a runtime process hands its answers on untaken, held until the
/// host says what became of them.
pub trait CallTarget: Sync {
    /// An answer of type `V`, as this target hands it on.
    type Answer<V: Send + 'static>: Send;

    /// An answer that nothing holds (a missing cell, an interrupt, a shutdown).
    fn ready<V: Send + 'static>(value: V) -> Self::Answer<V>;

    /// The same answer, its value turned into another.
    fn map<V: Send + 'static, W: Send + 'static>(
        answer: Self::Answer<V>,
        into: impl FnOnce(V) -> W,
    ) -> Self::Answer<W>;

    /// Starts a cell: its id and its first observation.
    fn execute(
        &self,
        request: ExecRequest,
        hooks: ExecHooks,
    ) -> StartedWith<'_, Self::Answer<CellResponse>>;

    /// Observes a cell; `None` when the session does not know it.
    fn wait(
        &self,
        request: WaitRequest,
        preempt: Option<CancellationToken>,
    ) -> BoxFuture<'_, Result<Option<Self::Answer<CellResponse>>, SessionError>>;

    /// Terminates a cell; `None` when the session does not know it.
    fn terminate(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<Option<Self::Answer<CellResponse>>, SessionError>>;

    /// Starts a cell observed to its first frontier; `admitted` is told its id as soon as
    /// it is admitted, before any of its callbacks.
    fn execute_to_pending(
        &self,
        request: ExecRequest,
        admitted: Option<AdmittedHook>,
    ) -> StartedWith<'_, Self::Answer<PendingOutcome>>;

    /// Observes a cell to its next frontier; `None` when the session does not know it.
    fn wait_to_pending(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<Option<Self::Answer<PendingOutcome>>, SessionError>>;

    /// Terminates every running cell.
    fn interrupt(&self) -> BoxFuture<'_, Result<Vec<CellId>, SessionError>>;

    /// Shuts the session down.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Any session as a [`CallTarget`] whose answers are taken at once.
struct Taking<'a, S: ?Sized>(&'a S);

impl<S: CodeModeSession + ?Sized> CallTarget for Taking<'_, S> {
    type Answer<V: Send + 'static> = V;

    fn ready<V: Send + 'static>(value: V) -> V {
        value
    }

    fn map<V: Send + 'static, W: Send + 'static>(answer: V, into: impl FnOnce(V) -> W) -> W {
        into(answer)
    }

    fn execute(&self, request: ExecRequest, hooks: ExecHooks) -> StartedWith<'_, CellResponse> {
        Box::pin(async move {
            let started = self.0.execute_with(request, hooks).await?;
            Ok((started.cell_id, started.initial_response))
        })
    }

    fn wait(
        &self,
        request: WaitRequest,
        preempt: Option<CancellationToken>,
    ) -> BoxFuture<'_, Result<Option<CellResponse>, SessionError>> {
        Box::pin(async move { self.0.wait_with(request, preempt).await.map(Some) })
    }

    fn terminate(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<Option<CellResponse>, SessionError>> {
        Box::pin(async move { self.0.terminate(cell_id).await.map(Some) })
    }

    fn execute_to_pending(
        &self,
        request: ExecRequest,
        admitted: Option<AdmittedHook>,
    ) -> StartedWith<'_, PendingOutcome> {
        Box::pin(async move {
            let started = self.0.execute_to_pending(request).await?;
            // The trait's method reports no admission of its own: told with the answer.
            if let Some(admitted) = admitted {
                admitted(&started.cell_id);
            }
            Ok((started.cell_id, started.outcome))
        })
    }

    fn wait_to_pending(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<Option<PendingOutcome>, SessionError>> {
        Box::pin(async move { self.0.wait_to_pending(cell_id).await.map(Some) })
    }

    fn interrupt(&self) -> BoxFuture<'_, Result<Vec<CellId>, SessionError>> {
        self.0.interrupt()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.0.shutdown()
    }
}

/// What a front end attaches to a call beside its data: a preempt signal (for `Execute`
/// and `Wait`) and an admission hook (for `Execute`). Other calls ignore them.
#[derive(Clone, Default)]
pub struct CallHooks {
    pub preempt: Option<CancellationToken>,
    pub admitted: Option<AdmittedHook>,
}

/// The answer to a [`SessionCall`], by the call's kind.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionReply {
    /// To `Execute`.
    Started(StartedCell),
    /// To `Wait` and `Terminate`.
    Cell(CellResponse),
    /// To `ExecuteToPending`.
    StartedPending(StartedPendingCell),
    /// To `WaitToPending`.
    Pending(PendingOutcome),
    /// To `Interrupt`: the cells it terminated.
    Interrupted(Vec<CellId>),
    /// To `Shutdown`.
    ShutDown,
}

impl SessionCall {
    /// Runs the call on `session`.
    ///
    /// Cancel safety: that of the session method it calls.
    pub async fn run<S>(self, session: &S) -> Result<SessionReply, SessionError>
    where
        S: CodeModeSession + ?Sized,
    {
        self.run_with(session, CallHooks::default()).await
    }

    /// Runs the call on `session` with `hooks`, its answer taken at once.
    ///
    /// Cancel safety: that of the session method it calls.
    pub async fn run_with<S>(
        self,
        session: &S,
        hooks: CallHooks,
    ) -> Result<SessionReply, SessionError>
    where
        S: CodeModeSession + ?Sized,
    {
        self.dispatch(&Taking(session), hooks).await
    }

    /// Runs the call on `target`, its answer as the target hands answers on: the one
    /// place that maps a call to a session's method and its answer to a reply.
    ///
    /// Cancel safety: that of the target's method it calls.
    pub async fn dispatch<T>(
        self,
        target: &T,
        hooks: CallHooks,
    ) -> Result<T::Answer<SessionReply>, SessionError>
    where
        T: CallTarget + ?Sized,
    {
        Ok(match self {
            SessionCall::Execute(request) => {
                let hooks = ExecHooks {
                    delegate: None,
                    preempt: hooks.preempt,
                    admitted: hooks.admitted,
                };
                let (cell_id, answer) = target.execute(request, hooks).await?;
                T::map(answer, |initial_response| {
                    SessionReply::Started(StartedCell {
                        cell_id,
                        initial_response,
                    })
                })
            }
            SessionCall::Wait(request) => {
                let cell_id = request.cell_id.clone();
                match target.wait(request, hooks.preempt).await? {
                    Some(answer) => T::map(answer, SessionReply::Cell),
                    None => T::ready(SessionReply::Cell(CellResponse::missing(cell_id))),
                }
            }
            SessionCall::Terminate { cell_id } => match target.terminate(cell_id.clone()).await? {
                Some(answer) => T::map(answer, SessionReply::Cell),
                None => T::ready(SessionReply::Cell(CellResponse::missing(cell_id))),
            },
            SessionCall::ExecuteToPending(request) => {
                let (cell_id, answer) = target.execute_to_pending(request, hooks.admitted).await?;
                T::map(answer, |outcome| {
                    SessionReply::StartedPending(StartedPendingCell { cell_id, outcome })
                })
            }
            SessionCall::WaitToPending { cell_id } => {
                match target.wait_to_pending(cell_id.clone()).await? {
                    Some(answer) => T::map(answer, SessionReply::Pending),
                    None => T::ready(SessionReply::Pending(PendingOutcome::Completed(
                        CellResponse::missing(cell_id),
                    ))),
                }
            }
            SessionCall::Interrupt => {
                T::ready(SessionReply::Interrupted(target.interrupt().await?))
            }
            SessionCall::Shutdown => {
                target.shutdown().await;
                T::ready(SessionReply::ShutDown)
            }
        })
    }

    /// The request of an `Execute` or `ExecuteToPending` call.
    pub fn exec_request_mut(&mut self) -> Option<&mut ExecRequest> {
        match self {
            SessionCall::Execute(request) | SessionCall::ExecuteToPending(request) => Some(request),
            _ => None,
        }
    }

    /// Whether the call starts a cell (`Execute`, `ExecuteToPending`).
    pub fn starts_cell(&self) -> bool {
        matches!(
            self,
            SessionCall::Execute(_) | SessionCall::ExecuteToPending(_)
        )
    }

    /// Whether `reply` is of the kind this call is answered with.
    pub fn is_answered_by(&self, reply: &SessionReply) -> bool {
        matches!(
            (self, reply),
            (SessionCall::Execute(_), SessionReply::Started(_))
                | (
                    SessionCall::Wait(_) | SessionCall::Terminate { .. },
                    SessionReply::Cell(_)
                )
                | (
                    SessionCall::ExecuteToPending(_),
                    SessionReply::StartedPending(_)
                )
                | (SessionCall::WaitToPending { .. }, SessionReply::Pending(_))
                | (SessionCall::Interrupt, SessionReply::Interrupted(_))
                | (SessionCall::Shutdown, SessionReply::ShutDown)
        )
    }
}

/// A typed answer: the reply of one kind, as the method's own return type. Lets a caller
/// that knows which call it made take the answer without matching on the kind again.
pub trait FromReply: Sized {
    /// The answer, or the reply back when it is of another kind.
    fn from_reply(reply: SessionReply) -> Result<Self, SessionReply>;

    /// The reply this answer came in (e.g. to keep an answer its caller did not take).
    fn into_reply(self) -> SessionReply;
}

macro_rules! from_reply {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        $(
            impl FromReply for $ty {
                fn from_reply(reply: SessionReply) -> Result<Self, SessionReply> {
                    match reply {
                        SessionReply::$variant(answer) => Ok(answer),
                        other => Err(other),
                    }
                }

                fn into_reply(self) -> SessionReply {
                    SessionReply::$variant(self)
                }
            }
        )*
    };
}

from_reply!(
    Started => StartedCell,
    Cell => CellResponse,
    StartedPending => StartedPendingCell,
    Pending => PendingOutcome,
    Interrupted => Vec<CellId>,
);

impl FromReply for () {
    fn from_reply(reply: SessionReply) -> Result<Self, SessionReply> {
        match reply {
            SessionReply::ShutDown => Ok(()),
            other => Err(other),
        }
    }

    fn into_reply(self) -> SessionReply {
        SessionReply::ShutDown
    }
}
