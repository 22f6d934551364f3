//! What a store is, to the keeper that owns it: the operations it does under the keeper's
//! thread ([`Backend`]), what it gives back at open ([`Loaded`]), and what a committed
//! write survives ([`Durability`]).

use crate::StateError;
use crate::written::Op;
use std::collections::{HashMap, HashSet};

/// What a store gave back at open: its contents, and the next growth number of each cell.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) saved: crate::Saved,
    pub(crate) next_seq: HashMap<(String, String), u64>,
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
}

/// What a committed write survives before what depends on it goes out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// On disk (synced): it survives a crash of the machine, a power loss included.
    #[default]
    Disk,
    /// Handed to the operating system, synced later: it survives a crash of the process
    /// (`kill -9`, the OOM killer), not of the machine. Each write costs less.
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
