//! What a store is, to the keeper that owns it: the operations it does under the keeper's
//! thread ([`Backend`]), what it gives back at open ([`Loaded`]), and what a committed
//! write survives ([`Durability`]).

use crate::format::{self, Growth, Header, Tail};
use crate::written::Op;
use crate::{AnswerRecord, CallRecord, SessionRecord, StateError};
use code_mode_protocol::durable::DurableState;
use code_mode_protocol::{CallId, CellId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What a store gave back at open: its contents, and the next growth number of each cell.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) saved: crate::Saved,
    pub(crate) next_seq: HashMap<(String, String), u64>,
}

/// A store's rows as every store keeps them (the same tables in SQLite and Postgres),
/// before [`Rows::assemble`] puts them together. Growth comes ordered by session, cell
/// and step.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub(crate) counters: Vec<(String, i64)>,
    pub(crate) sessions: Vec<(String, String)>,
    pub(crate) stored: Vec<(String, String, String)>,
    pub(crate) growth: Vec<(String, String, i64, Vec<u8>)>,
    pub(crate) cells: Vec<(String, String, Vec<u8>, Vec<u8>)>,
    pub(crate) calls: Vec<(String, String, i64, String)>,
    pub(crate) answers: Vec<(String, String, i64, Vec<u8>)>,
}

impl Rows {
    /// The sessions, cells, calls and answers the rows hold. A row that does not decode is
    /// an error that names it (nothing is dropped quietly).
    pub(crate) fn assemble(self) -> Result<Loaded, String> {
        let mut loaded = Loaded::default();
        let saved = &mut loaded.saved;
        for (name, value) in self.counters {
            saved.counters.insert(name, value.cast_unsigned());
        }
        let mut index: HashMap<String, usize> = HashMap::new();
        for (id, options) in self.sessions {
            index.insert(id.clone(), saved.sessions.len());
            saved.sessions.push(SessionRecord {
                id,
                options,
                state: DurableState::default(),
            });
        }
        for (session, key, json) in self.stored {
            if let Some(&at) = index.get(&session) {
                saved.sessions[at].state.stored.insert(key, Arc::from(json));
            }
        }
        let mut growth: HashMap<(String, String), Vec<Growth>> = HashMap::new();
        for (session, cell, seq, body) in self.growth {
            let grown: Growth = format::decode(&body)
                .map_err(|error| format!("cell {cell} of session {session}: {error}"))?;
            let key = (session, cell);
            loaded.next_seq.insert(key.clone(), seq.cast_unsigned() + 1);
            growth.entry(key).or_default().push(grown);
        }
        for (session, cell, header, tail) in self.cells {
            let what = |error: String| format!("cell {cell} of session {session}: {error}");
            let header: Header = format::decode(&header).map_err(what)?;
            let tail: Tail = format::decode(&tail).map_err(what)?;
            let Ok(cell_id) = cell.parse::<CellId>();
            let grown = growth
                .remove(&(session.clone(), cell.clone()))
                .unwrap_or_default();
            if let Some(&at) = index.get(&session) {
                loaded.saved.sessions[at]
                    .state
                    .cells
                    .push(format::cell(cell_id, header, grown, tail));
            }
        }
        let saved = &mut loaded.saved;
        for (session, cell, call, front_id) in self.calls {
            let Ok(cell_id) = cell.parse::<CellId>();
            saved.calls.push(CallRecord {
                session,
                cell_id,
                call: CallId::new(call.cast_unsigned()),
                front_id,
            });
        }
        for (session, cell, call, result) in self.answers {
            let Ok(cell_id) = cell.parse::<CellId>();
            let result = format::decode(&result)
                .map_err(|error| format!("an answer of cell {cell}: {error}"))?;
            saved.answers.push(AnswerRecord {
                session,
                cell_id,
                call: CallId::new(call.cast_unsigned()),
                result: format::result_in(result),
            });
        }
        Ok(loaded)
    }
}

/// Sessions a process took over from another ([`Backend::claim`]), read.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    pub(crate) loaded: Loaded,
}

/// What asking for a session another process may hold gives.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Taken over, and read.
    Taken(Claimed),
    /// Another process, not known to live, holds it for this many more milliseconds
    /// unless it renews.
    Held { for_ms: u64 },
    /// Another process that lives holds it (and renews it).
    Live,
    /// The store has no such session.
    Absent,
}

/// The live process that holds a session, as another one reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its name in the leases (`--state-replica`, or one of its own).
    pub name: String,
    /// Where it said it is reached (`http://10.0.3.7:3000`).
    pub address: String,
}

/// A store's own operations, under the keeper's thread.
pub(crate) trait Backend: Send + 'static {
    /// Does `ops` in one transaction, durable when it returns.
    fn apply(&mut self, ops: &[Op]) -> Result<(), StateError>;
    /// The bytes the store's data takes.
    fn bytes(&mut self) -> Result<u64, StateError>;
    /// Deletes the sessions last written before `before` (seconds since the epoch) that
    /// are not in `live`, and marks those in `live` written now; returns the deleted ids.
    fn expire(&mut self, before: i64, live: &HashSet<String>) -> Result<Vec<String>, StateError>;
    /// Where the store is, for messages.
    fn describe(&self) -> String;
    /// Renews this process's leases on the sessions it holds (a store processes share);
    /// returns those it no longer holds (expired, or taken over by another process).
    fn renew(&mut self) -> Result<Vec<String>, StateError> {
        Ok(Vec::new())
    }
    /// Takes over session `id` from a process whose lease on it ran out, and reads it. A
    /// store one process holds whole has nothing to take over.
    fn claim(&mut self, _id: &str) -> Result<Claim, StateError> {
        Ok(Claim::Absent)
    }
    /// Ends this process's lease on session `id` now (it took it and will not serve it);
    /// a store one process holds whole has none.
    fn release(&mut self, _id: &str) -> Result<(), StateError> {
        Ok(())
    }
    /// Ends this process's lease on every session it holds (a clean stop: the next
    /// process asked for one takes it at once, not after its lease); from then on this
    /// process writes none of them.
    fn release_all(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    /// The live process other than this one that holds session `id`, when it said where
    /// it is reached ([`Self::advertise`]): its name and address. `None` for a store one
    /// process holds whole.
    fn holder(&mut self, _id: &str) -> Result<Option<Holder>, StateError> {
        Ok(None)
    }
    /// Records `address` as where other processes reach this one; this process's name as
    /// the leases give it, which a request forwarded here names. `None` for a store one
    /// process holds whole.
    fn advertise(&mut self, _address: &str) -> Result<Option<String>, StateError> {
        Ok(None)
    }
    /// Whether [`Self::bytes`] costs little enough to ask after every commit.
    fn measures_cheaply(&self) -> bool {
        true
    }
    /// Whether a caller may commit on its own thread when the store is free: a commit that
    /// takes microseconds (SQLite), not a network round trip.
    fn commits_inline(&self) -> bool {
        true
    }
    /// How often the keeper renews leases, measures the store and looks for expired
    /// sessions.
    fn tick(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }
}

/// What a committed write survives before what depends on it goes out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// On disk (synced): it survives a crash of the machine, a power loss included.
    #[default]
    Disk,
    /// Handed to the operating system (or, on Postgres, committed without waiting for the
    /// server's sync), synced later: it survives a crash of the process (`kill -9`, the
    /// OOM killer), not of the machine that holds the store. Each write costs less.
    Process,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "disk" => Ok(Self::Disk),
            "process" => Ok(Self::Process),
            other => Err(format!(
                "`{other}` is no durability: `disk` (a write survives a machine crash) or `process` (a process crash)"
            )),
        }
    }
}

/// Seconds since the epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs().cast_signed())
}
