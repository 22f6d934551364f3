//! A cell's journal as data (CONTRACT §7, "Durable cells"): what a session that runs cells
//! reports of each one ([`JournalEntry`], as it happens, to its delegate's
//! [`crate::CodeModeSessionDelegate::journal`]), and the whole journal a cell is rebuilt
//! from on another runtime ([`CellJournal`]).
//!
//! A runtime process forwards every entry to its host, which keeps each running cell's
//! journal; when the runtime is lost, the host rebuilds the cell from it on a fresh one.

use crate::ids::{CallId, ToolError};
use crate::json_text::JsonText;
use crate::model::ToolDefinition;
use crate::stored::StoredValues;
use std::sync::Arc;

/// A command that entered a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalCommand {
    /// The answer to the cell's nested call `call`.
    ToolResult {
        call: CallId,
        result: Result<JsonText, ToolError>,
    },
    /// Timer `id` fired.
    TimerFired { id: u64 },
}

/// One thing a cell's journal gained, in the order the cell's session saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// The cell started: the seed of its `Math.random()`. Reported while the session's
    /// committed values are exactly the cell's snapshot (before any later commit), so a
    /// host that applies commits in order has the cell's stored values at this entry.
    Started { seed: u64 },
    /// Live readings of the cell's clock, in order.
    Clock(Vec<u64>),
    /// The cell made its next nested call: the hash of its tool name and argument, and
    /// the tool's name.
    Issued { hash: u64, tool: String },
    /// A command entered the cell.
    Entered(JournalCommand),
    /// The cell ran `yield_control()`.
    Yielded,
    /// The journal passed its cap: the cell can no longer be rebuilt.
    NotDurable,
}

/// Everything a cell is rebuilt from.
#[derive(Debug, Clone, PartialEq)]
pub struct CellJournal {
    /// The cell's source, as its exec sent it.
    pub source: String,
    /// Its tools.
    pub tools: Arc<[ToolDefinition]>,
    /// The stored values it started from.
    pub stored: Arc<StoredValues>,
    pub seed: u64,
    /// Its clock readings, in order.
    pub clock: Vec<u64>,
    /// Its nested calls in the order it made them (call `n` at `n - 1`): hash and tool.
    pub issued: Vec<(u64, String)>,
    /// The commands that entered it, in order.
    pub entered: Vec<JournalCommand>,
    /// Output items, notifications and yields it gave that were delivered: a rebuilt cell
    /// drops as many.
    pub outputs: u64,
    pub notifications: u64,
    pub yields: u64,
}

/// What [`CellJournal::apply`] made of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The journal took it.
    Kept,
    /// The cell is no longer durable: drop its journal.
    NotDurable,
}

impl CellJournal {
    /// The journal of a cell that started from `source`, `tools` and `stored` with the
    /// random seed `seed` (its [`JournalEntry::Started`]).
    pub fn start(
        source: String,
        tools: Arc<[ToolDefinition]>,
        stored: Arc<StoredValues>,
        seed: u64,
    ) -> Self {
        Self {
            source,
            tools,
            stored,
            seed,
            clock: Vec::new(),
            issued: Vec::new(),
            entered: Vec::new(),
            outputs: 0,
            notifications: 0,
            yields: 0,
        }
    }

    /// Adds what a later entry reports. A second `Started` changes nothing.
    pub fn apply(&mut self, entry: JournalEntry) -> Applied {
        match entry {
            JournalEntry::Started { .. } => {}
            JournalEntry::Clock(readings) => self.clock.extend(readings),
            JournalEntry::Issued { hash, tool } => self.issued.push((hash, tool)),
            JournalEntry::Entered(command) => self.entered.push(command),
            JournalEntry::Yielded => self.yields += 1,
            JournalEntry::NotDurable => return Applied::NotDurable,
        }
        Applied::Kept
    }
}
