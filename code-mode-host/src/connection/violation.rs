//! What a runtime can do wrong on the wire: every protocol violation the host detects, as
//! a type. A violation kills (or drops) the runtime; its text names what the runtime did
//! and becomes the cause of the loss.

use code_mode_protocol::CellId;
use code_mode_wire::{DelegateId, FrameError, RequestId, SessionId};

/// A protocol violation by the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// A frame that could not be read (undecodable, too large, garbage).
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A message only the handshake may carry, after it.
    #[error("{0} after the handshake")]
    AfterHandshake(&'static str),
    #[error("{id} names an invalid cell id {cell_id:?}")]
    DelegateCellInvalid { id: DelegateId, cell_id: CellId },
    #[error("{0} is already in flight")]
    DelegateInFlight(DelegateId),
    #[error("{id} is for {session}, which is not open")]
    DelegateSessionNotOpen { id: DelegateId, session: SessionId },
    #[error("{id} is for cell {cell_id} of {session}, which was not admitted or resumed there")]
    DelegateCellUnknown {
        id: DelegateId,
        session: SessionId,
        cell_id: CellId,
    },
    #[error("{id} is for cell {cell_id}, which has closed")]
    DelegateCellClosed { id: DelegateId, cell_id: CellId },
    #[error("{id} calls tool {tool:?}, which the exec of cell {cell_id} did not enable")]
    ToolNotEnabled {
        id: DelegateId,
        cell_id: CellId,
        tool: String,
    },
    #[error(
        "{id} issues call {call} of cell {cell_id} again (its calls are numbered above {last}): a call is never sent twice"
    )]
    CallIdReused {
        id: DelegateId,
        cell_id: CellId,
        call: u64,
        last: u64,
    },
    #[error("{id} admitted an invalid cell id {cell_id:?}")]
    AdmittedCellInvalid { id: RequestId, cell_id: CellId },
    #[error("{0} admitted a cell but is not in flight")]
    AdmittedNotInFlight(RequestId),
    #[error("{0} admitted a cell outside an open session")]
    AdmittedOutsideSession(RequestId),
    #[error("{0} admitted a cell but is not an exec")]
    AdmittedNotAnExec(RequestId),
    #[error("a close event for an invalid cell id {0:?}")]
    ClosedCellInvalid(CellId),
    #[error("a close event for {0}, which is not open")]
    ClosedSessionNotOpen(SessionId),
    #[error("cell {cell_id} of {session} closed twice")]
    ClosedTwice { session: SessionId, cell_id: CellId },
    #[error("a commit names an invalid cell id {0:?}")]
    CommitCellInvalid(CellId),
    #[error("a journal entry names an invalid cell id {0:?}")]
    JournalCellInvalid(CellId),
    #[error("a response to {0}, which is not in flight")]
    ResponseNotInFlight(RequestId),
    #[error("a response names an invalid cell id {0:?}")]
    ResponseCellInvalid(CellId),
    #[error("{0} was answered with a response of another kind")]
    ResponseOfAnotherKind(RequestId),
    #[error("{0} opened without a delegate")]
    OpenedWithoutDelegate(SessionId),
    #[error("{0} opened twice")]
    OpenedTwice(SessionId),
    #[error("an offer for cell {0:?} that is not a final answer of that cell")]
    OfferInvalid(CellId),
    #[error("{0}")]
    Span(#[from] crate::spans::SpanRefusal),
}
