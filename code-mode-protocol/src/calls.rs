//! The session's methods as data: a [`SessionCall`] names one call of a
//! [`CodeModeSession`] with its arguments, and a [`SessionReply`] is its answer.
//!
//! Every front end that drives sessions from messages uses this one adapter instead of a
//! hand-written match over the methods: the runtime process (wire requests), the JSON-lines
//! driver, and later ones (MCP). [`SessionCall::run`] is the only place that maps a call to
//! a method; a front end only parses its own message format into a `SessionCall` and
//! renders the `SessionReply` (the JSON forms are in [`crate::surface::json`]).

use crate::ids::CellId;
use crate::session::{
    AdmittedHook, CellResponse, CodeModeSession, ExecHooks, ExecRequest, PendingOutcome,
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

    /// Runs the call on `session` with `hooks`.
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
        Ok(match self {
            SessionCall::Execute(request) => {
                let hooks = ExecHooks {
                    delegate: None,
                    preempt: hooks.preempt,
                    admitted: hooks.admitted,
                };
                SessionReply::Started(session.execute_with(request, hooks).await?)
            }
            SessionCall::Wait(request) => {
                SessionReply::Cell(session.wait_with(request, hooks.preempt).await?)
            }
            SessionCall::Interrupt => SessionReply::Interrupted(session.interrupt().await?),
            SessionCall::Terminate { cell_id } => {
                SessionReply::Cell(session.terminate(cell_id).await?)
            }
            SessionCall::ExecuteToPending(request) => {
                SessionReply::StartedPending(session.execute_to_pending(request).await?)
            }
            SessionCall::WaitToPending { cell_id } => {
                SessionReply::Pending(session.wait_to_pending(cell_id).await?)
            }
            SessionCall::Shutdown => {
                session.shutdown().await;
                SessionReply::ShutDown
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
