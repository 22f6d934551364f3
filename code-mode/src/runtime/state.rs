//! The per-cell state a running cell's helpers and event loop share: the cell's channel to
//! its owner, its tools, stored values and writes, pending tool calls and timers, the stop
//! flags (`exit()`, termination, owner gone) and the output accounting.
//!
//! Owned by the cell thread ([`super::thread`]), which creates it when the cell starts and
//! puts it in an isolate slot; the helpers ([`super::helpers`]) find it there. Its own
//! module so that neither of the two depends on the other for it.

use super::tool_table::ToolTable;
use super::{CellConfig, CellControl, CellEvent, CellLimits, StoredValues};
use code_mode_protocol::CallId;
use code_mode_protocol::{ContentItem, ToolDefinition};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// A timer armed by `setTimeout`.
pub(crate) struct Timer {
    pub(crate) callback: v8::Global<v8::Function>,
    pub(crate) args: Vec<v8::Global<v8::Value>>,
}

/// The cell's mutable state, shared by the event loop and the helpers through an isolate
/// slot. Never borrowed across a call into JS (helpers can re-enter each other).
pub(crate) struct CellState {
    events: tokio::sync::mpsc::Sender<CellEvent>,
    control: Arc<CellControl>,
    pub(crate) tools: Arc<[ToolDefinition]>,
    pub(crate) stored: Arc<StoredValues>,
    pub(crate) writes: StoredValues,
    /// The size of the cell's view of the stored values (its snapshot plus its writes),
    /// and the session's cap on it.
    pub(crate) stored_bytes: u64,
    pub(crate) max_stored_bytes: Option<u64>,
    pub(crate) limits: CellLimits,
    next_tool_call: u64,
    pub(crate) pending_calls: HashMap<u64, v8::Global<v8::PromiseResolver>>,
    next_timer: u64,
    pub(crate) timers: HashMap<u64, Timer>,
    exit_requested: bool,
    owner_gone: bool,
    timer_error: Option<String>,
    /// Output bytes reported so far (text, image and audio URLs, notifications included).
    output_bytes: u64,
    /// Whether the output cap was reached (its marker has been reported).
    output_capped: bool,
    /// The cell's context: helpers act only for code running in it (an isolate reused by
    /// the session's next cell may still hold an earlier cell's code).
    pub(crate) context: Option<v8::Global<v8::Context>>,
    /// The cell's deferred tools by JavaScript name (contract §8.3), and the functions
    /// created for those it used.
    pub(crate) deferred: Option<Arc<ToolTable>>,
    pub(crate) deferred_functions: HashMap<usize, v8::Global<v8::Function>>,
    /// `Math.random`'s generator (SplitMix64), seeded from the cell's configuration.
    random_state: u64,
    /// Clock readings to give back before reading real time (a replayed cell's), and how
    /// many were given.
    clock_replay: Arc<[u64]>,
    clock_replayed: usize,
    /// Live clock readings not yet reported to the owner: they go ahead of the next event,
    /// so that every reading that could have shaped what the owner saw is in its journal.
    clock_unreported: Vec<u64>,
}

/// Real time, in whole milliseconds since the epoch (what `Date.now()` gives).
pub(crate) fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

pub(crate) type StateRef = Rc<RefCell<CellState>>;

impl CellState {
    /// The state of a cell that is about to start.
    pub(crate) fn new(
        events: tokio::sync::mpsc::Sender<CellEvent>,
        control: Arc<CellControl>,
        config: &CellConfig,
    ) -> Self {
        Self {
            events,
            control,
            tools: Arc::clone(&config.tools),
            stored: Arc::clone(&config.stored),
            writes: StoredValues::new(),
            stored_bytes: config.stored_bytes,
            max_stored_bytes: config.max_stored_bytes,
            limits: config.limits,
            next_tool_call: 0,
            pending_calls: HashMap::new(),
            next_timer: 0,
            timers: HashMap::new(),
            exit_requested: false,
            owner_gone: false,
            timer_error: None,
            output_bytes: 0,
            output_capped: false,
            context: None,
            deferred: None,
            deferred_functions: HashMap::new(),
            random_state: config.seed,
            clock_replay: Arc::clone(&config.clock),
            clock_replayed: 0,
            clock_unreported: Vec::new(),
        }
    }

    /// A reading of the cell's clock: the next replayed one, else real time (reported to
    /// the owner ahead of the next event).
    pub(crate) fn now_ms(&mut self) -> u64 {
        if let Some(&reading) = self.clock_replay.get(self.clock_replayed) {
            self.clock_replayed += 1;
            return reading;
        }
        let now = wall_clock_ms();
        self.clock_unreported.push(now);
        now
    }

    /// The next number of `Math.random()`, in [0, 1).
    pub(crate) fn next_random(&mut self) -> f64 {
        self.random_state = self.random_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.random_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits, as a fraction.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether the cell must not take any further effect: `exit()` ran, the owner asked for
    /// termination or went away.
    pub(crate) fn stopped(&self) -> bool {
        self.exit_requested || self.owner_gone || self.control.terminate_requested()
    }

    /// Reports an event unless the cell has stopped. Returns whether it was reported.
    /// Output beyond the cell's output cap is dropped (reported as done) behind one
    /// visible marker item.
    pub(crate) fn emit(&mut self, event: CellEvent) -> bool {
        if self.stopped() {
            return false;
        }
        let size = match &event {
            CellEvent::Output(ContentItem::InputText { text }) => Some(text.len()),
            CellEvent::Output(ContentItem::InputImage { image_url, .. }) => Some(image_url.len()),
            CellEvent::Output(ContentItem::InputAudio { audio_url }) => Some(audio_url.len()),
            CellEvent::Notify(text) => Some(text.len()),
            _ => None,
        };
        if let Some(size) = size {
            if self.output_capped {
                return true;
            }
            let total = self.output_bytes.saturating_add(size as u64);
            if total > self.limits.output_bytes {
                return self.reach_output_cap();
            }
            self.output_bytes = total;
        }
        self.send(event)
    }

    /// Marks the output cap as reached and reports its marker (once). Later output is
    /// dropped. Returns whether the cell is still running.
    pub(crate) fn reach_output_cap(&mut self) -> bool {
        if self.stopped() {
            return false;
        }
        if self.output_capped {
            return true;
        }
        self.output_capped = true;
        super::output_cap_reached();
        let marker = code_mode_protocol::texts::output_cap_reached(self.limits.output_bytes);
        self.send(CellEvent::Output(ContentItem::text(marker)))
    }

    /// Output bytes the cell may still produce before its cap.
    pub(crate) fn output_room(&self) -> u64 {
        if self.output_capped {
            0
        } else {
            self.limits.output_bytes.saturating_sub(self.output_bytes)
        }
    }

    /// Whether the owner stopped listening (it dropped its receiver): the cell then does
    /// not start. Asks the channel, sends nothing (which would wake the owner).
    pub(crate) fn owner_left(&mut self) -> bool {
        if self.events.is_closed() {
            self.owner_gone = true;
        }
        self.owner_gone
    }

    fn send(&mut self, event: CellEvent) -> bool {
        if !self.clock_unreported.is_empty() {
            let readings = std::mem::take(&mut self.clock_unreported);
            if !self.send_now(CellEvent::Clock(readings)) {
                return false;
            }
        }
        self.send_now(event)
    }

    fn send_now(&mut self, event: CellEvent) -> bool {
        if self.events.blocking_send(event).is_err() {
            // Nobody listens any more: stop running JS.
            self.owner_gone = true;
            self.control.terminate_isolate();
            return false;
        }
        true
    }

    /// The flags that end a cell, for the end check: whether the owner terminated it (or
    /// went away), whether `exit()` ran, and the first exception of a timer callback
    /// (taken: it is reported once).
    pub(crate) fn take_end_flags(&mut self) -> (bool, bool, Option<String>) {
        let terminated = self.owner_gone || self.control.terminate_requested();
        (terminated, self.exit_requested, self.timer_error.take())
    }

    /// Records the exception of a timer callback; the first one ends the cell.
    pub(crate) fn record_timer_error(&mut self, text: String) {
        if self.timer_error.is_none() {
            self.timer_error = Some(text);
        }
    }

    /// Whether the owner terminated the cell or went away.
    pub(crate) fn stopped_by_owner(&self) -> bool {
        self.owner_gone || self.control.terminate_requested()
    }

    /// Records `exit()`: from now on nothing the cell does takes effect.
    pub(crate) fn request_exit(&mut self) {
        self.exit_requested = true;
    }

    pub(crate) fn next_tool_call_id(&mut self) -> CallId {
        self.next_tool_call += 1;
        CallId::new(self.next_tool_call)
    }

    pub(crate) fn next_timer_id(&mut self) -> u64 {
        self.next_timer += 1;
        self.next_timer
    }

    /// Drops every V8 handle the state holds; must run before the isolate is disposed.
    pub(crate) fn release_handles(&mut self) {
        self.pending_calls.clear();
        self.timers.clear();
        self.deferred_functions.clear();
        self.context = None;
    }
}
