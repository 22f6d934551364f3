//! The state of a serving process that outlives it (CONTRACT §7, "Surviving a restart"):
//! the sessions it serves, their committed stored values, the journal of each running
//! cell, the nested calls those cells wait on and the answers that came for them.
//!
//! One [`Keeper`] per front writes it: a front hands it a session's changes
//! ([`Keeper::write`]) before it tells its client anything that depends on them, and an
//! answer ([`Keeper::record_answer`]) before the answer reaches its cell (or, for a front
//! that holds back what the cell does until its next write, with that write:
//! [`Keeper::record_answer_soon`]); the keeper gives it all back ([`Saved`]) in the next
//! process. Only what changed is encoded and written, and writes queued during a commit
//! share the next one (`keeper.rs`, `line.rs`, `written.rs`). A write is durable when it returns; one that fails keeps what was
//! written before, and is the caller's error once the keeper's patience is spent.
//!
//! Where it is written: SQLite, one database per front in a state directory
//! (`sqlite.rs`), or Postgres, which replicas share, each session leased to one process at
//! a time with an epoch the database checks (`postgres.rs`). What is written is this crate's own format (`format.rs`), so a change of
//! the wire protocol leaves a state directory readable; a database of the earlier format,
//! which used the wire's encoding, is rewritten at open (`legacy.rs`).

mod approvals;
#[cfg(feature = "cli")]
mod args;
mod format;
mod keeper;
mod legacy;
mod line;
mod pg_batch;
mod pg_connect;
mod postgres;
mod sqlite;
mod store;
mod written;

pub use approvals::{Approval, ApprovalBook, ApprovalError, ApprovalRequest, ApprovalState};
#[cfg(feature = "cli")]
pub use args::StateArgs;
pub use code_mode_protocol::durable::{DurableCell, DurableState};
pub use keeper::{
    Claimed, DEFAULT_PATIENCE, DEFAULT_TTL, Keeper, StoreLocation, StoreOptions, StoreStats, Ttl,
    parse_ttl,
};
pub use postgres::{GENERATION_BLOCK, LEASE};
pub use store::{Durability, Holder};

use code_mode_protocol::{CallId, CellId, JsonText, ToolError};
use std::collections::HashMap;
use std::path::PathBuf;

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory or a database file is not private to this user (or cannot be made).
    #[error(transparent)]
    Private(#[from] code_mode_files::FilesError),
    #[error(
        "the state database {path} is in use by another process (one process at a time serves a state directory)"
    )]
    InUse { path: PathBuf },
    #[error(
        "the state database {path} is not whole ({detail}); it was left as it is: move it away to start afresh, or restore it from a copy"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the state database {path} was written by another version ({found}; this one writes {expected}); it was left as it is"
    )]
    Foreign {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the state database {path} belongs to another front end ({found}, not {expected})")]
    OtherFront {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the state store {store} cannot be reached: {detail}")]
    Connect { store: String, detail: String },
    /// A front end's name that the approvals book's tables would share.
    #[error(
        "`{front}` cannot name a front end's sessions in a state store: `approvals` (and `approvals_…`) is the approvals book's"
    )]
    ReservedFront { front: String },
    #[error(
        "session {session} of the state store {store} was taken over by another process (its lease here ran out); this process's write was refused"
    )]
    Fenced { store: String, session: String },
    #[error("writing the state database {path} failed: {detail}; what it held before is kept")]
    Write { path: PathBuf, detail: String },
    #[error("reading the state database {path} failed: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error(
        "the state store {store} holds {bytes} bytes of its cap of {max} (--state-max-bytes): new sessions are refused until kept ones close or expire (--state-ttl), or the cap is raised"
    )]
    Full { store: String, bytes: u64, max: u64 },
}

/// What changed, for [`Keeper::write`]: sessions as they are now (each replaces what the
/// store had of it: stored values, running cells, and its calls waiting for the client,
/// which are exactly those of `calls` that name it), sessions that are gone, and counters.
/// A session not named is left as it is.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The front's own counters (its last session id, last call id, runtime generations).
    pub counters: Vec<(String, u64)>,
    pub sessions: Vec<SessionRecord>,
    /// The nested calls the front told its client about and that wait for an answer.
    pub calls: Vec<CallRecord>,
    /// Sessions that closed: they go with everything they had.
    pub removed: Vec<String>,
}

/// One session of a front.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The id the front's client knows it by.
    pub id: String,
    /// How the front opens it again (its own encoding, e.g. the request's JSON).
    pub options: String,
    pub state: DurableState,
}

/// A nested call the front named to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub session: String,
    pub cell_id: CellId,
    pub call: CallId,
    /// The front's id of it (what its client answers).
    pub front_id: String,
}

/// An answer that came for a nested call and was recorded before its cell got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRecord {
    pub session: String,
    pub cell_id: CellId,
    pub call: CallId,
    pub result: Result<JsonText, ToolError>,
}

/// What a store held when its keeper opened it.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    pub counters: HashMap<String, u64>,
    pub sessions: Vec<SessionRecord>,
    pub calls: Vec<CallRecord>,
    pub answers: Vec<AnswerRecord>,
}

impl Saved {
    /// A counter, 0 if it was never written.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// The answer recorded for a call, if one came.
    pub fn answer(
        &self,
        session: &str,
        cell_id: &CellId,
        call: CallId,
    ) -> Option<&Result<JsonText, ToolError>> {
        self.answers
            .iter()
            .find(|answer| {
                answer.session == session && answer.cell_id == *cell_id && answer.call == call
            })
            .map(|answer| &answer.result)
    }

    /// The front's id of a call, if it named the call to its client.
    pub fn front_id(&self, session: &str, cell_id: &CellId, call: CallId) -> Option<&str> {
        self.calls
            .iter()
            .find(|record| {
                record.session == session && record.cell_id == *cell_id && record.call == call
            })
            .map(|record| record.front_id.as_str())
    }
}

#[cfg(test)]
mod tests;
