//! Isolate reuse within a session (CONTRACT §7): an isolate whose cell ended normally is
//! reset, given a fresh context, and parked on its session's [`IsolateShelf`]; the
//! session's next cell starts there instead of paying for a new isolate.
//!
//! What makes a later cell unable to see an earlier one:
//! - every cell gets a fresh context (fresh globals and built-ins), created on the parked
//!   thread before it waits, off the critical path;
//! - before that, [`reset`] runs with termination requested and the earlier cell's state
//!   marked stopped: leftover microtasks are dropped by a checkpoint that terminates at
//!   once, a full collection frees the earlier context (its `FinalizationRegistry`
//!   objects and `WeakRef`s with it), the platform's pending tasks (finalization cleanup)
//!   run and are terminated at once, and objects kept alive for `WeakRef`s are released;
//! - helpers only act for the context of the cell that is running (`helpers::run_helper`),
//!   so code of an earlier context that still ran could reach nothing;
//! - an isolate is never reused after a termination, a heap or CPU limit, or when its heap
//!   is still larger than [`REUSE_MAX_HEAP_BYTES`] after the collections; shelves belong to
//!   one session and are never shared.

use super::Job;
use super::callbacks::HeapGuard;
use code_mode_protocol::sync::lock;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

/// How long a parked isolate waits for its session's next cell before it is released.
pub(crate) const IDLE_RELEASE: Duration = Duration::from_secs(30);

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
    /// The heap limit of the session's cells; isolates are created with it.
    heap_bytes: u64,
}

impl IsolateShelf {
    /// An empty shelf for cells with `heap_bytes` of heap.
    pub fn new(heap_bytes: u64) -> Self {
        Self {
            parked: Mutex::new(Vec::new()),
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
                Ok(()) => return None,
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

impl Parked {
    /// Waits for the session's next cell; `None` when nobody came within
    /// [`IDLE_RELEASE`] or the shelf was cleared.
    pub(crate) fn wait(self) -> Option<Job> {
        self.0.recv_timeout(IDLE_RELEASE).ok()
    }
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
    // Objects kept alive for the earlier cell's `WeakRef`s go with the collection.
    isolate.clear_kept_objects();
    // One full collection frees the earlier context. V8 offers it without its GC
    // extension (which would declare a function on every context's global, contract
    // section 8.6) as a critical memory-pressure notification: one full collection on
    // this thread, at once, and a second only when the first left more than 8 MiB of
    // garbage. `low_memory_notification`, the other way, does several with compaction and
    // empties the compilation cache: measured, it halves the cells per second a busy
    // runtime serves. The level goes back to none at once, so the next cell's heap grows
    // as usual.
    isolate.memory_pressure_notification(v8::MemoryPressureLevel::Critical);
    isolate.memory_pressure_notification(v8::MemoryPressureLevel::None);
    {
        let platform = crate::platform::platform();
        v8::scope!(let scope, isolate);
        while v8::Platform::pump_message_loop(platform, scope, false) {}
    }
    isolate.cancel_terminate_execution();
    let used = isolate.get_heap_statistics().used_heap_size();
    !heap_guard.hit() && used <= REUSE_MAX_HEAP_BYTES
}
