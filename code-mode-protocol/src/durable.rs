//! A session's state as a process that goes on with it needs it (CONTRACT §7, "Surviving a
//! restart"): its committed stored values and the journal of each running cell. The host
//! takes it out of a session and puts it back (`code_mode_host::DurableSession`); where it
//! is kept is the serving process's business.

use crate::journal::CellJournal;
use crate::session::NestedToolCall;
use crate::{CellId, StoredValues};

/// A session as a restarted process needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurableState {
    /// The committed stored values.
    pub stored: StoredValues,
    /// Its running cells that can be rebuilt (a cell whose journal passed its cap cannot,
    /// and is not here).
    pub cells: Vec<DurableCell>,
}

/// A running cell as a restarted process rebuilds it.
#[derive(Debug, Clone, PartialEq)]
pub struct DurableCell {
    /// Its id as the agent core knows it.
    pub cell_id: CellId,
    /// Everything it is rebuilt from, the output its callers took included.
    pub journal: CellJournal,
    /// The model's id of the exec that started it.
    pub exec_call_id: Option<String>,
    /// The nested calls it made that were not answered yet, as the delegate was asked them.
    pub in_flight: Vec<NestedToolCall>,
}
