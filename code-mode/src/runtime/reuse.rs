//! Isolate reuse within a session (CONTRACT §7): an isolate whose cell ended normally is
//! reset, given a fresh context, and parked on its session's [`IsolateShelf`]; the
//! session's next cell starts there instead of paying for a new isolate.
//!
//! What makes a later cell unable to see an earlier one:
//! - every cell gets a fresh context (fresh globals and built-ins), created on the parked
//!   thread before it waits, off the critical path;
//! - before that, [`reset`] runs with termination requested and the earlier cell's state
//!   marked stopped: leftover microtasks are dropped by a checkpoint that terminates at
//!   once, the platform's pending tasks (finalization cleanup the earlier cell had due)
//!   run and are terminated at once, and objects kept alive for `WeakRef`s are released.
//!   Nothing then references the earlier context: its `FinalizationRegistry` objects die
//!   with the targets they watch, in whichever collection finds them (a registry that is
//!   itself garbage is never scheduled for cleanup), and its `WeakRef`s are unreachable;
//! - the reset forces no collection on the exec path (contract §7, issue 27): a cell that
//!   allocated little leaves its garbage to V8's own schedule, and a parked isolate that
//!   waits [`IDLE_COLLECT`] for the next cell collects it then ([`collect_idle`]), while
//!   the session is idle. A cell that left the heap larger than [`REUSE_MAX_HEAP_BYTES`]
//!   pays for one full collection before the decision;
//! - helpers only act for the context of the cell that is running (`helpers::run_helper`),
//!   so code of an earlier context that still ran could reach nothing;
//! - an isolate is never reused after a termination, a heap or CPU limit, or when its heap
//!   is still larger than [`REUSE_MAX_HEAP_BYTES`] after a full collection; shelves belong
//!   to one session and are never shared.
//!
//! Full collections go through V8's critical memory-pressure notification, not its GC
//! extension: the extension would declare a function on every context's global object
//! (contract §8.6).

use super::Job;
use super::callbacks::HeapGuard;
use code_mode_protocol::sync::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

/// How long a parked isolate waits for its session's next cell before it is released.
pub(crate) const IDLE_RELEASE: Duration = Duration::from_secs(30);

/// How long a parked isolate waits for its session's next cell before it collects the
/// earlier cells' garbage (once per parking): longer than back-to-back cells are apart,
/// far shorter than a model's turn.
pub(crate) const IDLE_COLLECT: Duration = Duration::from_millis(50);

/// The most heap an isolate may still use after its cell and a full collection to be
/// reused, in bytes. Above it the cell kept memory alive that a fresh isolate would not
/// carry (or fragmented its heap): the isolate is disposed of instead.
pub(crate) const REUSE_MAX_HEAP_BYTES: usize = 16 * 1024 * 1024;

/// The parked isolates of one session, ready for its next cells. Dropping the shelf (the
/// session shut down) releases them.
#[derive(Debug)]
pub struct IsolateShelf {
    /// One sender per parked thread, most recently parked last.
    parked: Mutex<Vec<mpsc::Sender<Job>>>,
    /// How many cells ran on an isolate taken from this shelf.
    reused: AtomicU64,
    /// The heap limit of the session's cells; isolates are created with it.
    heap_bytes: u64,
}

impl IsolateShelf {
    /// An empty shelf for cells with `heap_bytes` of heap.
    pub fn new(heap_bytes: u64) -> Self {
        Self {
            parked: Mutex::new(Vec::new()),
            reused: AtomicU64::new(0),
            heap_bytes,
        }
    }

    pub(crate) fn heap_bytes(&self) -> u64 {
        self.heap_bytes
    }

    /// How many isolates are parked.
    pub fn parked(&self) -> usize {
        lock(&self.parked).len()
    }

    /// How many cells ran on an isolate parked here (the shelf's reuses so far).
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Releases every parked isolate (their threads dispose of them and end).
    pub fn clear(&self) {
        lock(&self.parked).clear();
    }

    /// Hands `job` to a parked isolate; gives it back when none is parked.
    pub(crate) fn run(&self, mut job: Job) -> Option<Job> {
        loop {
            let Some(parked) = lock(&self.parked).pop() else {
                return Some(job);
            };
            match parked.send(job) {
                Ok(()) => {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                // That thread released its isolate meanwhile; try the next one.
                Err(mpsc::SendError(unsent)) => job = unsent,
            }
        }
    }

    /// Puts the calling cell thread on the shelf; it then waits with [`Parked::wait`].
    pub(crate) fn park(&self) -> Parked {
        let (sender, jobs) = mpsc::channel();
        lock(&self.parked).push(sender);
        Parked(jobs)
    }
}

/// A cell thread on a shelf.
pub(crate) struct Parked(mpsc::Receiver<Job>);

/// What a parked isolate waited for.
pub(crate) enum Waited {
    Job(Job),
    /// Nobody came within the time given.
    Idle,
    /// The shelf was cleared (or dropped): the isolate is released.
    Released,
}

impl Parked {
    /// Waits at most `patience` for the session's next cell.
    pub(crate) fn wait(&self, patience: Duration) -> Waited {
        match self.0.recv_timeout(patience) {
            Ok(job) => Waited::Job(job),
            Err(mpsc::RecvTimeoutError::Timeout) => Waited::Idle,
            Err(mpsc::RecvTimeoutError::Disconnected) => Waited::Released,
        }
    }
}

/// One full collection, at once, on this thread (see the module documentation), and the
/// heap in use after it.
pub(crate) fn collect(isolate: &mut v8::OwnedIsolate) -> usize {
    // The critical level asks for one full collection now (a second only when the first
    // freed more than 8 MiB); back to none at once, so the next cell's heap grows as usual.
    isolate.memory_pressure_notification(v8::MemoryPressureLevel::Critical);
    isolate.memory_pressure_notification(v8::MemoryPressureLevel::None);
    isolate.get_heap_statistics().used_heap_size()
}

/// The collection of a parked isolate whose session is idle: frees the contexts of the
/// earlier cells while nobody waits for the isolate.
pub(crate) fn collect_idle(isolate: &mut v8::OwnedIsolate) {
    let used = collect(isolate);
    tracing::trace!(used, "idle isolate collected");
}

/// Makes an isolate whose cell ended ready for another: see the module documentation.
/// Returns whether it may be reused.
pub(crate) fn reset(isolate: &mut v8::OwnedIsolate, heap_guard: &HeapGuard) -> bool {
    if heap_guard.hit() {
        return false;
    }
    isolate.terminate_execution();
    {
        v8::scope!(let scope, isolate);
        // Leftover microtasks run into the termination at once and are dropped.
        scope.perform_microtask_checkpoint();
    }
    // Objects kept alive for the earlier cell's `WeakRef`s are let go.
    isolate.clear_kept_objects();
    // Garbage included: a cell that allocated little stays under the bar without a
    // collection; one that allocated much pays for one before the decision (and before
    // the pump below, so that cleanup it schedules runs into the termination too).
    let mut used = isolate.get_heap_statistics().used_heap_size();
    if used > REUSE_MAX_HEAP_BYTES {
        used = collect(isolate);
    }
    {
        let platform = crate::platform::platform();
        v8::scope!(let scope, isolate);
        while v8::Platform::pump_message_loop(platform, scope, false) {}
    }
    isolate.cancel_terminate_execution();
    !heap_guard.hit() && used <= REUSE_MAX_HEAP_BYTES
}
