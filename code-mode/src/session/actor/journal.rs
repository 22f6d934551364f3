//! The cell's journal and its replay (CONTRACT §7, "Durable cells").
//!
//! A cell is deterministic apart from what enters it, so the journal holds exactly that:
//! what it started from (source, tools, stored values, the seed of `Math.random`), every
//! command that entered it in the order it entered (each nested call's answer, each timer
//! that fired), every clock reading it took, and a hash of each nested call it made. It
//! also counts what the cell already gave its owner: output items, notifications, yields.
//!
//! Replay starts the same cell on a fresh isolate with the journal's clock readings and
//! sends it the journal's commands in order, each once the cell has made again the call or
//! timer it answers. Calls the cell makes again are checked against their hashes and never
//! sent; output, notifications and yields it gives again are dropped. When every command
//! was applied, the cell is live again. A command that arrives during the replay is
//! journaled behind the others and reaches the cell in that order.

use super::*;
use crate::runtime::{CellConfig, spawn_cell_on};
use code_mode_protocol::journal::{CellJournal, JournalCommand, JournalEntry, call_hash};
use code_mode_protocol::session::MAX_JOURNAL_BYTES;
use code_mode_trace::traced::under;
use std::collections::HashSet;
#[cfg(feature = "test-hooks")]
use std::sync::Mutex;
use std::sync::atomic::Ordering;

/// What a journal entry costs beside its payload (its place in a vector, its tag).
const ENTRY_OVERHEAD_BYTES: u64 = 16;

/// Test hook (the `test-hooks` feature, which no shipped binary turns on): a replayed
/// call whose argument contains this text is taken as different from its journal's.
#[cfg(feature = "test-hooks")]
static PERTURB_REPLAYED_CALLS: Mutex<Option<String>> = Mutex::new(None);

/// Makes every replayed call whose argument's JSON text contains `marker` differ from its
/// journal (so its cell's rebuild diverges), or (`None`) stops doing so: for the tests of
/// divergence only.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub fn perturb_replayed_calls(marker: Option<&str>) {
    *code_mode_internal::sync::lock(&PERTURB_REPLAYED_CALLS) = marker.map(str::to_owned);
}

/// Whether the test hook perturbs a replayed call with this argument.
#[cfg(feature = "test-hooks")]
fn perturbed(input: Option<&str>) -> bool {
    let marker = code_mode_internal::sync::lock(&PERTURB_REPLAYED_CALLS);
    match (marker.as_deref(), input) {
        (Some(marker), Some(input)) => input.contains(marker),
        _ => false,
    }
}

/// Without the test hooks, no replayed call is perturbed (and no lock is taken).
#[cfg(not(feature = "test-hooks"))]
fn perturbed(_input: Option<&str>) -> bool {
    false
}

/// Everything that entered one cell, and what it gave out so far.
pub(crate) struct Journal {
    /// How each incarnation runs beside what the journal holds (limits, surface, span); its
    /// source is the journal's, and its clock readings are the journal's.
    config: CellConfig,
    /// What the cell started from, and everything that entered it since: the same data a
    /// host keeps and a cell is rebuilt from elsewhere.
    data: CellJournal,
    bytes: u64,
    /// Whether the journal is whole: once it would pass [`MAX_JOURNAL_BYTES`], it is
    /// dropped and the cell can no longer be rebuilt.
    durable: bool,
    /// Where its entries are reported (a runtime process's delegate, for its host).
    sink: Option<Arc<dyn CodeModeSessionDelegate>>,
    /// The calls the session answers itself (`tools.tool_search`): their answers are
    /// reported, where the delegate's own are not.
    internal_calls: HashSet<u64>,
}

/// A runtime command as the journal's data.
fn to_data(command: &CellCommand) -> JournalCommand {
    match command {
        CellCommand::ToolResult { id, result } => JournalCommand::ToolResult {
            call: *id,
            result: result.clone(),
        },
        CellCommand::TimerFired { id } => JournalCommand::TimerFired { id: *id },
    }
}

/// The journal's data as a runtime command.
fn from_data(command: JournalCommand) -> CellCommand {
    match command {
        JournalCommand::ToolResult { call, result } => CellCommand::ToolResult { id: call, result },
        JournalCommand::TimerFired { id } => CellCommand::TimerFired { id },
    }
}

/// Where the cell's current incarnation is in its journal.
#[derive(Default)]
pub(crate) struct Cursor {
    /// The next command of the journal to send.
    next: usize,
    calls: u64,
    timers: u64,
    outputs: u64,
    notifications: u64,
    yields: u64,
}

/// What a command costs the journal beside its entry.
fn data_bytes(command: &JournalCommand) -> u64 {
    match command {
        JournalCommand::ToolResult { result, .. } => match result {
            Ok(json) => json.as_str().len() as u64,
            Err(error) => error.message().len() as u64,
        },
        JournalCommand::TimerFired { .. } => 0,
    }
}

/// What the actor does with an event of a (possibly replaying) cell.
pub(crate) enum Seen {
    /// New: handle it as a live cell's.
    Live,
    /// Given before this incarnation: drop it.
    Replayed,
}

impl Journal {
    /// The journal of a cell starting from `config`, its entries reported to `sink`.
    pub(crate) fn new(
        mut config: CellConfig,
        sink: Option<Arc<dyn CodeModeSessionDelegate>>,
    ) -> Self {
        let bytes = config.source.len() as u64;
        let data = CellJournal {
            source: std::mem::take(&mut config.source),
            tools: Arc::clone(&config.tools),
            stored: Arc::clone(&config.stored),
            seed: config.seed,
            clock: Vec::new(),
            issued: Vec::new(),
            entered: Vec::new(),
            outputs: 0,
            notifications: 0,
            yields: 0,
        };
        Self {
            config,
            data,
            bytes,
            durable: true,
            sink,
            internal_calls: HashSet::new(),
        }
    }

    /// The journal a cell is rebuilt from (`data`, from another runtime), with `config`
    /// for the rest (what the cell starts from is the exec's, as `config` has it); later
    /// entries are reported to `sink`.
    pub(crate) fn resumed(
        config: CellConfig,
        data: CellJournal,
        sink: Option<Arc<dyn CodeModeSessionDelegate>>,
    ) -> Self {
        let mut journal = Self::new(config, sink);
        journal.bytes = journal
            .bytes
            .saturating_add(8 * data.clock.len() as u64)
            .saturating_add(
                data.issued
                    .iter()
                    .map(|(_, tool)| 8 + tool.len() as u64)
                    .sum(),
            );
        for command in &data.entered {
            let bytes = data_bytes(command);
            journal.bytes = journal.bytes.saturating_add(bytes + ENTRY_OVERHEAD_BYTES);
        }
        journal.data = CellJournal {
            clock: data.clock,
            issued: data.issued,
            entered: data.entered,
            outputs: data.outputs,
            notifications: data.notifications,
            yields: data.yields,
            ..journal.data
        };
        journal
    }

    fn report(&self, cell_id: &CellId, entry: impl FnOnce() -> JournalEntry) {
        if let Some(sink) = &self.sink {
            sink.journal(cell_id, entry());
        }
    }

    pub(crate) fn durable(&self) -> bool {
        self.durable
    }

    /// Traces the next incarnations' compile and evaluation under `span`.
    pub(crate) fn trace_under(&mut self, span: tracing::Span) {
        self.config.span = span;
    }

    /// The configuration of a new incarnation: the start, with every clock reading so far.
    pub(crate) fn config(&self) -> CellConfig {
        let mut config = self.config.clone();
        config.source.clone_from(&self.data.source);
        config.clock = Arc::from(self.data.clock.as_slice());
        config
    }

    /// Counts `bytes` more; past the cap the journal stops being durable (said once in the
    /// log), and what it holds is dropped once the cell has had all of it.
    fn grow(&mut self, cell_id: &CellId, bytes: u64) {
        if !self.durable {
            return;
        }
        self.bytes = self.bytes.saturating_add(bytes + ENTRY_OVERHEAD_BYTES);
        if self.bytes > MAX_JOURNAL_BYTES {
            self.durable = false;
            self.report(cell_id, || JournalEntry::NotDurable);
            tracing::warn!(
                cell = %cell_id,
                max_bytes = MAX_JOURNAL_BYTES,
                "the cell's journal passed its cap: the cell is no longer durable"
            );
        }
    }

    /// Live clock readings.
    pub(crate) fn clock_read(&mut self, cell_id: &CellId, readings: Vec<u64>) {
        self.grow(cell_id, 8 * readings.len() as u64);
        if self.durable {
            self.report(cell_id, || JournalEntry::Clock(readings.clone()));
            self.data.clock.extend(readings);
        }
    }

    /// A command decided for the cell: journaled, to be sent by [`Journal::due`].
    /// Only what the delegate cannot know is reported: a timer, or an answer the session
    /// gave itself, with its place among the commands.
    pub(crate) fn enter(&mut self, cell_id: &CellId, command: CellCommand) {
        let command = to_data(&command);
        self.grow(cell_id, data_bytes(&command));
        let own = match &command {
            JournalCommand::TimerFired { .. } => true,
            JournalCommand::ToolResult { call, .. } => self.internal_calls.contains(&call.number()),
        };
        if self.durable && own {
            let index = self.data.entered.len() as u64;
            self.report(cell_id, || JournalEntry::Entered {
                index,
                command: command.clone(),
            });
        }
        self.data.entered.push(command);
    }

    /// The next command to send to the incarnation at `cursor`, once the cell made the
    /// call or timer it answers; `None` when there is none yet. A journal that is no
    /// longer durable forgets what the cell has had.
    pub(crate) fn due(&mut self, cursor: &mut Cursor) -> Option<CellCommand> {
        let command = self.data.entered.get(cursor.next)?;
        let ready = match command {
            JournalCommand::ToolResult { call, .. } => call.number() <= cursor.calls,
            JournalCommand::TimerFired { id } => *id <= cursor.timers,
        };
        if !ready {
            return None;
        }
        let command = from_data(command.clone());
        cursor.next += 1;
        if !self.durable && cursor.next == self.data.entered.len() {
            self.data.entered.clear();
            cursor.next = 0;
            self.data.issued = Vec::new();
            self.data.clock = Vec::new();
        }
        Some(command)
    }

    /// Whether the incarnation at `cursor` has been sent every command of the journal.
    pub(crate) fn caught_up(&self, cursor: &Cursor) -> bool {
        cursor.next >= self.data.entered.len()
    }

    /// What the incarnation at `cursor` waits for to take the journal's next command
    /// (for the error of a cell that went idle without making it).
    pub(crate) fn awaited(&self, cursor: &Cursor) -> Option<String> {
        match self.data.entered.get(cursor.next)? {
            JournalCommand::ToolResult { call, .. } => {
                Some(format!("nested call {}", call.number()))
            }
            JournalCommand::TimerFired { id } => Some(format!("timer {id}")),
        }
    }

    /// A nested call the cell made: `Ok(Seen::Replayed)` when the journal has it (same
    /// hash), `Ok(Seen::Live)` when it is new (now journaled), or the divergence error.
    /// `internal`: the session answers the call itself (the delegate never sees it).
    pub(crate) fn call(
        &mut self,
        cell_id: &CellId,
        cursor: &mut Cursor,
        call: &ToolCallRequest,
        internal: bool,
    ) -> Result<Seen, String> {
        cursor.calls = call.id.number();
        let hash = call_hash(&call.name, call.input.as_deref());
        let index = usize::try_from(call.id.number().saturating_sub(1)).unwrap_or(usize::MAX);
        match self.data.issued.get(index) {
            Some((logged, _)) => {
                if *logged == hash && !perturbed(call.input.as_deref()) {
                    Ok(Seen::Replayed)
                } else {
                    Err(code_mode_protocol::texts::replay_diverged(
                        call.id.number(),
                        &call.name,
                    ))
                }
            }
            None => {
                self.grow(cell_id, 8 + call.name.len() as u64);
                if self.durable {
                    if internal {
                        self.internal_calls.insert(call.id.number());
                        self.report(cell_id, || JournalEntry::Issued {
                            call: call.id,
                            hash,
                            tool: call.name.clone(),
                        });
                    }
                    self.data.issued.push((hash, call.name.clone()));
                }
                Ok(Seen::Live)
            }
        }
    }

    /// A timer the cell armed (`id`; ids count up from 1).
    pub(crate) fn timer_set(cursor: &mut Cursor, id: u64) {
        cursor.timers = cursor.timers.max(id);
    }

    /// An output item the cell gave.
    pub(crate) fn output(&mut self, cursor: &mut Cursor) -> Seen {
        Self::count(&mut self.data.outputs, &mut cursor.outputs)
    }

    /// A notification the cell made.
    pub(crate) fn notification(&mut self, cursor: &mut Cursor) -> Seen {
        Self::count(&mut self.data.notifications, &mut cursor.notifications)
    }

    /// A `yield_control()` the cell ran.
    pub(crate) fn yielded(&mut self, cell_id: &CellId, cursor: &mut Cursor) -> Seen {
        let seen = Self::count(&mut self.data.yields, &mut cursor.yields);
        if let Seen::Live = seen {
            self.report(cell_id, || JournalEntry::Yielded);
        }
        seen
    }

    fn count(total: &mut u64, seen: &mut u64) -> Seen {
        *seen += 1;
        if *seen <= *total {
            Seen::Replayed
        } else {
            *total = *seen;
            Seen::Live
        }
    }

    /// Starts a new incarnation of the cell from the journal, on `shelf`'s isolate when
    /// there is one.
    pub(crate) fn respawn(
        &self,
        shelf: Option<Arc<crate::runtime::IsolateShelf>>,
    ) -> Result<(CellHandle, mpsc::Receiver<CellEvent>), crate::runtime::SpawnError> {
        let (events_tx, events_rx) = mpsc::channel(crate::runtime::EVENT_CHANNEL_CAPACITY);
        let handle = spawn_cell_on(self.config(), events_tx, shelf)?;
        Ok((handle, events_rx))
    }
}

impl CellActor {
    /// Sends the cell every journal command it can take now.
    pub(super) fn pump(&mut self) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        while let Some(command) = self.journal.due(&mut self.cursor) {
            if let CellCommand::TimerFired { id } = command {
                // Fired by the journal: the clock does not fire it again.
                self.timers.cancel(id);
            }
            self.frontier.commands_sent += 1;
            self.frontier.at_frontier = false;
            runtime.send(command);
        }
    }

    /// Starts the cell's next incarnation from its journal, which then replays.
    pub(super) fn wake(&mut self) {
        if self.runtime.is_some() || !matches!(self.life.phase, Phase::Running) {
            return;
        }
        self.hibernate_at = None;
        self.set_asleep(false);
        self.sleep_span = None;
        let cell = &self.routing.span;
        let replay = under(
            cell,
            || tracing::info_span!(parent: cell, "code_mode.replay", cell.id = %self.cell_id),
        )
        .unwrap_or_else(tracing::Span::none);
        self.journal.trace_under(replay.clone());
        self.replay_span = Some(replay);
        self.shared.wakes.fetch_add(1, Ordering::Relaxed);
        match self.journal.respawn(self.shared.shelf.clone()) {
            Ok((runtime, events)) => {
                tracing::debug!(cell = %self.cell_id, "hibernated cell woken");
                self.runtime = Some(runtime);
                self.events = events;
                self.cursor = Cursor::default();
                self.frontier.commands_sent = 0;
                self.frontier.at_frontier = false;
                // Timers of the hibernated incarnation are armed again by the new one.
                self.timers = Timers::default();
                self.pump();
            }
            Err(error) => {
                tracing::error!(cell = %self.cell_id, %error, "cannot wake a hibernated cell");
                self.on_runtime_lost();
            }
        }
    }

    /// Arms the hibernation of a cell at a frontier with nothing but nested calls (or
    /// answers held back for the next observation) pending, when its session allows it.
    pub(super) fn consider_hibernation(&mut self) {
        let Some(after_ms) = self.shared.options.hibernate_after_ms else {
            return;
        };
        if self.hibernatable() {
            self.hibernate_at = Instant::now().checked_add(Duration::from_millis(after_ms));
        }
    }

    fn hibernatable(&self) -> bool {
        let waits_on_calls = !self.callbacks.tool_tasks.is_empty()
            || !self.callbacks.deferred.is_empty()
            || !self.frontier.held_back.is_empty();
        matches!(self.life.phase, Phase::Running)
            && !self.life.shutting_down
            && self.runtime.is_some()
            && self.journal.durable()
            && self.journal.caught_up(&self.cursor)
            && self.frontier.at_frontier
            && self.timers.next_due().is_none()
            && waits_on_calls
    }

    /// Gives the cell's thread and isolate back; the journal keeps the cell.
    pub(super) fn hibernate(&mut self) {
        self.hibernate_at = None;
        if !self.hibernatable() {
            return;
        }
        tracing::debug!(cell = %self.cell_id, "cell hibernates");
        let cell = &self.routing.span;
        self.sleep_span = under(
            cell,
            || tracing::info_span!(parent: cell, "code_mode.hibernated", cell.id = %self.cell_id),
        );
        self.set_asleep(true);
        crate::session::count_hibernation(&self.shared);
        self.drop_runtime();
    }

    /// Whether the cell hibernates now, counted in its session.
    pub(super) fn set_asleep(&mut self, asleep: bool) {
        if self.asleep != asleep {
            self.asleep = asleep;
            if asleep {
                self.shared.hibernating.fetch_add(1, Ordering::Relaxed);
            } else {
                self.shared.hibernating.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Lets the current incarnation go: its thread stops and disposes of its isolate, and
    /// nothing it still reports is read.
    fn drop_runtime(&mut self) {
        self.runtime = None;
        let (_, closed) = mpsc::channel(1);
        self.events = closed;
    }

    /// Stops the cell for a termination decided already: its thread, or at once for a
    /// hibernating cell, which has none.
    pub(super) fn terminate_runtime(&mut self) {
        match &self.runtime {
            Some(runtime) => runtime.terminate(),
            None => {
                self.set_asleep(false);
                self.on_finished(CellOutcome::Terminated);
            }
        }
    }

    /// The rebuilt cell left its journal: it fails with `text`, sending nothing.
    pub(super) fn diverge(&mut self, text: String) {
        tracing::warn!(cell = %self.cell_id, %text, "replay diverged");
        self.drop_runtime();
        self.on_finished(CellOutcome::Completed {
            failure: Some(CellFailure::new(FailureKind::ReplayDiverged, text)),
            stored_writes: Default::default(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_past_its_cap_is_no_longer_durable_and_forgets_what_the_cell_had() {
        let cell = CellId::new(1);
        let mut journal = Journal::new(CellConfig::default(), None);
        let big = "x".repeat(usize::try_from(MAX_JOURNAL_BYTES / 2).unwrap());
        for id in 1..=2 {
            journal.enter(
                &cell,
                CellCommand::ToolResult {
                    id: CallId::new(id),
                    result: Ok(JsonText::new(format!("\"{big}\""))),
                },
            );
        }
        assert!(!journal.durable());
        let mut cursor = Cursor {
            calls: 2,
            ..Cursor::default()
        };
        // Still sent in order, though no longer durable.
        for id in 1..=2 {
            let command = journal.due(&mut cursor);
            assert!(
                matches!(command, Some(CellCommand::ToolResult { id: got, .. }) if got.number() == id)
            );
        }
        assert!(journal.data.entered.is_empty(), "what the cell had is kept");
        assert!(journal.caught_up(&cursor));
    }

    #[test]
    fn a_command_waits_until_the_cell_made_what_it_answers() {
        let cell = CellId::new(1);
        let mut journal = Journal::new(CellConfig::default(), None);
        journal.enter(&cell, CellCommand::TimerFired { id: 2 });
        let mut cursor = Cursor::default();
        Journal::timer_set(&mut cursor, 1);
        assert!(journal.due(&mut cursor).is_none());
        assert_eq!(journal.awaited(&cursor).as_deref(), Some("timer 2"));
        Journal::timer_set(&mut cursor, 2);
        assert_eq!(
            journal.due(&mut cursor),
            Some(CellCommand::TimerFired { id: 2 })
        );
        assert!(journal.caught_up(&cursor));
    }
}
