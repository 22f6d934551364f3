//! What a serving process keeps of its sessions so that they outlive it (CONTRACT §7,
//! "Surviving a restart"): [`DurableSession::durable_state`] gives a session's committed
//! stored values and the journal of each running cell with the nested calls it still
//! waits on; a process started later opens the session again with those values and hands
//! the cells to [`DurableSession::restore`]. They are rebuilt by replay on the session's
//! next runtime, at its next call, as cells lost with a runtime are; the calls they still
//! wait on come back as [`RestoredCall`]s, whose answers go to the rebuilt cells.
//!
//! Where and how the state is written is the serving process's business (the fronts keep
//! it in `code-mode-state`'s database); this module only takes it out and puts it back.

use crate::connection::{LateAnswers, Resumable};
use crate::hosted::{HostedSession, RuntimeSession};
use code_mode_protocol::durable::{DurableCell, DurableState};
use code_mode_protocol::{CodeModeSession, JsonText, NestedToolCall, ToolError};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// A nested call a restored cell still waits on. Its delegate was asked it by the process
/// that ran the cell before; whoever answers it now gives the answer here, once.
pub struct RestoredCall {
    /// The call as the delegate was asked it (the cell id as the agent core knows it).
    pub call: NestedToolCall,
    late: Arc<LateAnswers>,
}

impl std::fmt::Debug for RestoredCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoredCall")
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}

impl RestoredCall {
    /// Gives the call's answer to its cell: at once if the cell was rebuilt, else when it
    /// is (at its session's next call).
    pub fn answer(self, result: Result<JsonText, ToolError>) {
        self.late.deliver(self.call.call_id, result);
    }
}

/// A session whose state can be taken out of one process and put back in another: the
/// sessions of [`crate::ProcessProvider`] and [`crate::RemoteProvider`].
pub trait DurableSession: CodeModeSession {
    /// The session's committed stored values and its running cells, as they are now.
    fn durable_state(&self) -> DurableState;

    /// Takes back cells an earlier process ran ([`Self::durable_state`] there): each is
    /// rebuilt from its journal on the session's next runtime, at its next call, and keeps
    /// its id. Returns the nested calls they still wait on.
    fn restore(&self, cells: Vec<DurableCell>) -> Vec<RestoredCall>;
}

impl HostedSession {
    pub(crate) fn durable_state(&self) -> DurableState {
        let mut cells = self.bound_durable_cells();
        for (cell_id, resumable) in self.resumable_cells() {
            // A cell being rebuilt is in both until the runtime took it; one rebuilt only
            // for its final answer (its writes merged) is not kept, as before its loss.
            if !resumable.committed && !cells.iter().any(|cell| cell.cell_id == cell_id) {
                cells.push(resumable.durable(&cell_id));
            }
        }
        DurableState {
            stored: self.stored_values_now(),
            cells,
        }
    }

    pub(crate) fn restore(&self, cells: Vec<DurableCell>) -> Vec<RestoredCall> {
        let mut calls = Vec::new();
        for cell in cells {
            let late = Arc::new(LateAnswers::default());
            calls.extend(cell.in_flight.iter().map(|call| RestoredCall {
                call: call.clone(),
                late: Arc::clone(&late),
            }));
            let resumable = Resumable {
                taken: Arc::new(AtomicU64::new(cell.journal.outputs)),
                journal: cell.journal,
                exec_call_id: cell.exec_call_id,
                delegate: None,
                late,
                span: tracing::Span::none(),
                in_flight: cell.in_flight,
                committed: false,
            };
            self.add_resumable(cell.cell_id, resumable);
        }
        calls
    }
}

impl DurableSession for RuntimeSession {
    fn durable_state(&self) -> DurableState {
        self.inner().durable_state()
    }

    fn restore(&self, cells: Vec<DurableCell>) -> Vec<RestoredCall> {
        self.inner().restore(cells)
    }
}
