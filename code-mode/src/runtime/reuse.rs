//! Isolate reuse within a session (CONTRACT §7): an isolate whose cell ended normally is
//! reset, given a fresh context, and parked on its session's [`IsolateShelf`]; the
//! session's next cell starts there instead of paying for a new isolate. A cell that
//! comes while its session's isolate is still being reset, and finds no prepared pool
//! thread, waits for that reset (about half a millisecond) instead of preparing a new
//! isolate (two or more).
//!
//! Such a wait, when the cell came [`SPARE_AFTER`] or more after the one before it
//! ended, says that the session's cells come back to back through a round trip outside
//! the runtime that is shorter than a reset: the shelf then gets one *spare* isolate,
//! prepared on a thread of its own on the other core. From then on the two take turns, each reset while the other runs the
//! next cell, and no cell waits for a reset. A spare that no cell took for
//! [`IDLE_COLLECT`] (cells no longer come back to back) is released; the shelf may get
//! another at the next wait.
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
//! - the reset forces no collection on the exec path (contract §7): a cell that
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
use code_mode_internal::sync::lock;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

/// How long after its session's latest cell ended a cell must come, to order a spare
/// isolate when it has to wait for a reset. Such a cell's round trip outside the runtime
/// (a host, its client and the model's agent loop) is long enough for a reset to be hidden
/// behind the next one, so a spare makes every wait go. A cell that comes at once (an
/// agent core running cells in process, back to back) would only have two resets compete
/// for the cores, and the spare's making would cost more than it saves.
pub(crate) const SPARE_AFTER: Duration = Duration::from_micros(100);

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
///
/// A cell that arrives while none is parked but one is being reset for the session (its
/// cell ended a moment ago: the usual case when cells come back to back) may wait for it
/// (`IsolateShelf::wait_for_reset`) rather than take a pool thread that is still being
/// prepared: a reset takes about half a millisecond, preparing a thread two or more. An
/// isolate counts as being reset from the moment its cell's end is reported; its thread
/// starts the reset once the owner releases the cell ([`super::RELEASE_PATIENCE`] at the
/// most).
#[derive(Debug)]
pub struct IsolateShelf {
    state: Mutex<ShelfState>,
    /// How many cells ran on an isolate taken from this shelf.
    reused: AtomicU64,
    /// The heap limit of the session's cells; isolates are created with it.
    heap_bytes: u64,
}

/// What the shelf's lock guards.
#[derive(Debug, Default)]
struct ShelfState {
    /// One sender per parked thread, most recently parked last, with the number that
    /// thread knows it by.
    parked: Vec<(u64, mpsc::Sender<Job>)>,
    /// The number the next parked thread gets.
    next_parking: u64,
    /// Threads resetting an isolate for this shelf, or preparing its spare (each holds a
    /// [`Resetting`]).
    resetting: usize,
    /// Cells waiting for one of them, first come first served; never more than
    /// `resetting`.
    waiting: VecDeque<Job>,
    /// Whether the shelf has its spare isolate (being prepared, running a cell, being
    /// reset or parked): at most one.
    spare: bool,
    /// When the session's latest cell ended (its isolate's reset began).
    last_end: Option<Instant>,
}

impl IsolateShelf {
    /// An empty shelf for cells with `heap_bytes` of heap.
    pub fn new(heap_bytes: u64) -> Self {
        Self {
            state: Mutex::new(ShelfState::default()),
            reused: AtomicU64::new(0),
            heap_bytes,
        }
    }

    pub(crate) fn heap_bytes(&self) -> u64 {
        self.heap_bytes
    }

    /// How many isolates are parked.
    pub fn parked(&self) -> usize {
        lock(&self.state).parked.len()
    }

    /// How many cells ran on an isolate parked here (the shelf's reuses so far).
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Releases every parked isolate (their threads dispose of them and end). Isolates
    /// being reset still run the cells that wait for them.
    pub fn clear(&self) {
        lock(&self.state).parked.clear();
    }

    /// Whether the shelf has its spare isolate (see the module documentation).
    pub fn has_spare(&self) -> bool {
        lock(&self.state).spare
    }

    /// Hands `job` to a parked isolate; gives it back when none is parked.
    pub(crate) fn run(&self, job: Job) -> Option<Job> {
        let Some((_, parked)) = lock(&self.state).parked.pop() else {
            return Some(job);
        };
        self.run_on(parked, job)
    }

    /// Queues `job` for an isolate being reset for this shelf, if one is not spoken for
    /// already (or parked meanwhile: then it runs there); gives it back otherwise.
    ///
    /// A job queued while the shelf has no spare isolate, [`SPARE_AFTER`] or more after
    /// the session's latest cell ended, comes with the order to prepare one
    /// ([`Queued::WithSpare`]): the caller starts its thread.
    pub(crate) fn wait_for_reset(self: &Arc<Self>, job: Job) -> Queued {
        self.wait_for_reset_at(job, Instant::now())
    }

    /// [`IsolateShelf::wait_for_reset`] for a job that came at `now`.
    fn wait_for_reset_at(self: &Arc<Self>, job: Job, now: Instant) -> Queued {
        let mut state = lock(&self.state);
        if let Some((_, parked)) = state.parked.pop() {
            drop(state);
            return match self.run_on(parked, job) {
                Some(job) => Queued::No(job),
                None => Queued::Yes,
            };
        }
        if state.waiting.len() >= state.resetting {
            return Queued::No(job);
        }
        let hidden = state
            .last_end
            .is_some_and(|ended| now.saturating_duration_since(ended) >= SPARE_AFTER);
        if state.spare || !hidden {
            state.waiting.push_back(job);
            return Queued::Yes;
        }
        let like = super::SpareLike {
            heap_bytes: job.config.limits.heap_bytes,
            surface: job.config.surface,
            tools: Arc::clone(&job.config.tools),
        };
        state.waiting.push_back(job);
        state.spare = true;
        state.resetting += 1;
        Queued::WithSpare(Spare {
            preparing: Resetting {
                shelf: Arc::clone(self),
                placed: false,
            },
            guard: SpareGuard(Arc::downgrade(self)),
            like,
        })
    }

    /// Sends `job` to a parked thread, or on to the next one if that thread released its
    /// isolate meanwhile.
    fn run_on(&self, parked: mpsc::Sender<Job>, job: Job) -> Option<Job> {
        match parked.send(job) {
            Ok(()) => {
                self.reused.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(mpsc::SendError(unsent)) => self.run(unsent),
        }
    }

    /// Notes that the calling thread is resetting an isolate for this shelf, until the
    /// returned guard parks it or is dropped.
    pub(crate) fn resetting(self: &Arc<Self>) -> Resetting {
        let mut state = lock(&self.state);
        state.resetting += 1;
        state.last_end = Some(Instant::now());
        drop(state);
        Resetting {
            shelf: Arc::clone(self),
            placed: false,
        }
    }
}

/// A thread resetting an isolate for a shelf: [`Resetting::park`] when the isolate is
/// ready; dropped unplaced when it is not reusable after all, which sends the cells that
/// waited for it (those the shelf's other resets cannot take) elsewhere.
#[derive(Debug)]
pub(crate) struct Resetting {
    shelf: Arc<IsolateShelf>,
    placed: bool,
}

/// What [`IsolateShelf::wait_for_reset`] did with a job.
pub(crate) enum Queued {
    /// Nothing to wait for: the job is given back.
    No(Job),
    /// Queued (or handed to an isolate parked meanwhile).
    Yes,
    /// Queued, and the shelf's spare isolate is to be prepared: the caller starts a
    /// thread for it (`thread::run_spare`), or drops the order when it cannot.
    WithSpare(Spare),
}

/// The order to prepare a shelf's spare isolate, held by its thread for as long as the
/// spare lives. Dropped unprepared (no thread could be started), the cells queued go to
/// the other resets or elsewhere, and the shelf may get a spare again.
#[derive(Debug)]
pub(crate) struct Spare {
    /// The spare counts as being reset until it is first placed: the cells queued may
    /// take it.
    preparing: Resetting,
    guard: SpareGuard,
    /// What it is prepared for: the cell whose wait ordered it.
    like: super::SpareLike,
}

impl Spare {
    /// What the spare is prepared for.
    pub(crate) fn like(&self) -> &super::SpareLike {
        &self.like
    }

    /// The spare is prepared: it is placed like a reset isolate, and from then on lives
    /// as one (`SpareGuard` keeps it the shelf's spare until it goes).
    pub(crate) fn prepared(self) -> (Resetting, SpareGuard) {
        (self.preparing, self.guard)
    }
}

/// Keeps an isolate its shelf's spare; dropped when the spare's thread ends. It does not
/// keep the shelf: a shelf dropped with its session releases the spare parked on it too.
#[derive(Debug)]
pub(crate) struct SpareGuard(Weak<IsolateShelf>);

impl Drop for SpareGuard {
    fn drop(&mut self) {
        if let Some(shelf) = self.0.upgrade() {
            lock(&shelf.state).spare = false;
        }
    }
}

/// Where a reset isolate goes.
pub(crate) enum Placed {
    /// A cell was waiting for it: run it now.
    Job(Box<Job>),
    /// On the shelf, waiting for the session's next cell.
    Parked(Parked),
}

impl Resetting {
    /// The isolate is ready: it takes the first waiting cell, or goes on the shelf.
    pub(crate) fn park(mut self) -> Placed {
        self.placed = true;
        let mut state = lock(&self.shelf.state);
        state.resetting -= 1;
        if let Some(job) = state.waiting.pop_front() {
            self.shelf.reused.fetch_add(1, Ordering::Relaxed);
            return Placed::Job(Box::new(job));
        }
        let (sender, jobs) = mpsc::channel();
        let number = state.next_parking;
        state.next_parking += 1;
        state.parked.push((number, sender));
        Placed::Parked(Parked {
            jobs,
            number,
            shelf: Arc::downgrade(&self.shelf),
        })
    }
}

impl Drop for Resetting {
    fn drop(&mut self) {
        if self.placed {
            return;
        }
        let stranded = {
            let mut state = lock(&self.shelf.state);
            state.resetting -= 1;
            let keep = state.resetting.min(state.waiting.len());
            state.waiting.split_off(keep)
        };
        for job in stranded {
            super::start_elsewhere(job);
        }
    }
}

/// A cell thread on a shelf. It does not keep the shelf: dropped (the session is gone),
/// the shelf releases its parked isolates.
pub(crate) struct Parked {
    jobs: mpsc::Receiver<Job>,
    /// What the shelf knows it by.
    number: u64,
    shelf: Weak<IsolateShelf>,
}

/// What a parked isolate waited for.
pub(crate) enum Waited {
    Job(Box<Job>),
    /// Nobody came within the time given.
    Idle,
    /// The shelf was cleared (or dropped): the isolate is released.
    Released,
}

impl Parked {
    /// Waits at most `patience` for the session's next cell.
    pub(crate) fn wait(&self, patience: Duration) -> Waited {
        match self.jobs.recv_timeout(patience) {
            Ok(job) => Waited::Job(Box::new(job)),
            Err(mpsc::RecvTimeoutError::Timeout) => Waited::Idle,
            Err(mpsc::RecvTimeoutError::Disconnected) => Waited::Released,
        }
    }

    /// Takes the isolate off the shelf for good, unless a cell took it first: then that
    /// cell (sent the moment it took it) is returned.
    pub(crate) fn leave(self) -> Option<Box<Job>> {
        if let Some(shelf) = self.shelf.upgrade() {
            let mut state = lock(&shelf.state);
            if let Some(at) = state.parked.iter().position(|(n, _)| *n == self.number) {
                state.parked.remove(at);
                return None;
            }
        }
        // Taken (its sender is on the way with the job), or the shelf was cleared or
        // dropped (then nothing comes).
        self.jobs.recv().ok().map(Box::new)
    }
}

/// One full collection, at once, on this thread (see the module documentation), and the
/// heap in use after it.
pub(crate) fn collect(isolate: &mut v8::OwnedIsolate) -> usize {
    // The critical level asks for one full collection now (a second only when the first
    // freed more than 8 MiB); back to none at once, so the next cell's heap grows as usual.
    isolate.memory_pressure_notification(v8::MemoryPressureLevel::Critical);
    isolate.memory_pressure_notification(v8::MemoryPressureLevel::None);
    used_heap_bytes(isolate)
}

/// The bytes of objects in the isolate's own heap: V8's `used_heap_size`, summed over its
/// spaces. The whole heap's statistics would count the native contexts too, walking a
/// list that holds every earlier cell's context until a collection frees it, so a reset
/// between cells back to back took longer with each cell.
pub(crate) fn used_heap_bytes(isolate: &mut v8::OwnedIsolate) -> usize {
    (0..isolate.number_of_heap_spaces())
        .filter_map(|index| isolate.get_heap_space_statistics(index))
        .map(|space| space.space_used_size())
        .sum()
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
    let mut used = used_heap_bytes(isolate);
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

#[cfg(test)]
mod tests {
    use super::super::{CellConfig, CellEvent, CellHandle, CellLimits, Job};
    use super::*;

    fn job(
        shelf: &Arc<IsolateShelf>,
        source: &str,
    ) -> (Job, CellHandle, tokio::sync::mpsc::Receiver<CellEvent>) {
        let (events, received) = tokio::sync::mpsc::channel(16);
        let config = CellConfig {
            source: source.to_owned(),
            tools: Arc::from([]),
            stored: Arc::default(),
            stored_bytes: 0,
            max_stored_bytes: None,
            limits: CellLimits::default(),
            surface: code_mode_protocol::Surface::Contract,
            seed: 0,
            clock: Arc::default(),
            span: tracing::Span::none(),
        };
        // Dropping the handle would stop the cell: the caller keeps it.
        let (job, handle) = Job::new(config, events, Some(Arc::clone(shelf)));
        (job, handle, received)
    }

    fn shelf() -> Arc<IsolateShelf> {
        Arc::new(IsolateShelf::new(CellLimits::default().heap_bytes))
    }

    /// The texts a cell printed, up to its end.
    fn texts_until_finished(events: &mut tokio::sync::mpsc::Receiver<CellEvent>) -> Vec<String> {
        let mut texts = Vec::new();
        while let Some(event) = events.blocking_recv() {
            match event {
                CellEvent::Output(item) => texts.extend(item.as_text().map(str::to_owned)),
                CellEvent::Finished(_) => break,
                _ => {}
            }
        }
        texts
    }

    /// The heap in use, summed over the isolate's spaces, is V8's own figure (taken before
    /// and after it, since V8 may sweep on its own threads meanwhile), with contexts of
    /// earlier cells still alive.
    #[test]
    fn the_heap_in_use_is_v8s_figure_summed_over_the_isolates_spaces() {
        crate::platform::init_v8();
        let mut isolate = v8::Isolate::new(v8::CreateParams::default());
        let mut contexts = Vec::new();
        for _ in 0..3 {
            v8::scope!(let scope, &mut isolate);
            let context = v8::Context::new(scope, Default::default());
            let scope = &mut v8::ContextScope::new(scope, context);
            let source = "globalThis.kept = Array.from({ length: 10000 }, (_, i) => ({ i }))";
            let source = v8::String::new(scope, source).expect("a source string");
            let script = v8::Script::compile(scope, source, None).expect("it compiles");
            script.run(scope).expect("it runs");
            contexts.push(v8::Global::new(scope, context));
        }
        let before = isolate.get_heap_statistics().used_heap_size();
        let summed = used_heap_bytes(&mut isolate);
        let after = isolate.get_heap_statistics().used_heap_size();
        assert!(
            (after..=before).contains(&summed),
            "{summed} bytes summed, V8 said {before} then {after}"
        );
        assert!(summed > 3 * 10_000 * 16, "the cells' objects are counted");
        drop(contexts);
    }

    #[test]
    fn a_cell_waits_for_an_isolate_being_reset_and_the_reset_isolate_runs_it() {
        let shelf = shelf();
        let (first, _first, _) = job(&shelf, "first");
        // Nothing being reset: nothing to wait for.
        let Queued::No(first) = shelf.wait_for_reset(first) else {
            panic!("queued with nothing to wait for");
        };
        let ended = Instant::now();
        let resetting = shelf.resetting();
        // Come the moment the cell before it ended: queued, and no spare ordered.
        assert!(
            matches!(shelf.wait_for_reset_at(first, ended), Queued::Yes),
            "not queued for the reset, or a spare ordered"
        );
        assert!(!shelf.has_spare());
        // One reset, spoken for: the next cell is given back.
        let (second, _second, _) = job(&shelf, "second");
        assert!(
            matches!(shelf.wait_for_reset(second), Queued::No(_)),
            "only one reset to wait for"
        );
        match resetting.park() {
            Placed::Job(job) => assert_eq!(job.config.source, "first"),
            Placed::Parked(_) => panic!("the waiting cell was not handed over"),
        }
        assert_eq!((shelf.parked(), shelf.reused()), (0, 1));
        // With nobody waiting, the next reset isolate goes on the shelf.
        assert!(matches!(shelf.resetting().park(), Placed::Parked(_)));
        assert_eq!(shelf.parked(), 1);
    }

    #[test]
    fn the_first_wait_for_a_reset_orders_the_one_spare_and_a_spare_gone_may_be_ordered_again() {
        let shelf = shelf();
        let resetting = shelf.resetting();
        // Come after a round trip outside the runtime.
        let later = Instant::now() + SPARE_AFTER;
        let (first, _first, _) = job(&shelf, "first");
        let Queued::WithSpare(spare) = shelf.wait_for_reset_at(first, later) else {
            panic!("the first wait ordered no spare");
        };
        assert!(shelf.has_spare());
        // The spare being prepared counts as a reset: a second cell may wait, and gets
        // no second spare.
        let (second, _second, _) = job(&shelf, "second");
        assert!(matches!(
            shelf.wait_for_reset_at(second, later),
            Queued::Yes
        ));
        // The spare is prepared and placed: it takes the first cell that waited.
        let (preparing, guard) = spare.prepared();
        assert!(shelf.has_spare(), "a spare in use is still the spare");
        match preparing.park() {
            Placed::Job(job) => assert_eq!(job.config.source, "first"),
            Placed::Parked(_) => panic!("the waiting cell was not handed to the spare"),
        }
        match resetting.park() {
            Placed::Job(job) => assert_eq!(job.config.source, "second"),
            Placed::Parked(_) => panic!("the second cell was not handed to the reset"),
        }
        // The spare's thread ends: the next wait orders another.
        drop(guard);
        assert!(!shelf.has_spare());
        let _resetting = shelf.resetting();
        let (third, _third, _) = job(&shelf, "third");
        assert!(matches!(
            shelf.wait_for_reset_at(third, Instant::now() + SPARE_AFTER),
            Queued::WithSpare(_)
        ));
    }

    #[test]
    fn a_spare_runs_the_cell_that_waited_and_leaves_once_cells_stop_coming() {
        crate::platform::init_v8();
        let shelf = shelf();
        // A reset that takes long: the spare is placed first.
        let resetting = shelf.resetting();
        let (waiting, handle, mut events) = job(&shelf, "text('ran on the spare')");
        let later = Instant::now() + SPARE_AFTER;
        let Queued::WithSpare(spare) = shelf.wait_for_reset_at(waiting, later) else {
            panic!("no spare ordered");
        };
        let spare_thread = crate::runtime::cell_thread()
            .spawn(move || crate::runtime::thread::run_spare(spare))
            .expect("a thread for the spare");
        let texts = texts_until_finished(&mut events);
        assert_eq!(texts, ["ran on the spare"]);
        // Released, the spare is reset and parked; no cell comes, so it leaves.
        drop(handle);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while shelf.parked() == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(shelf.parked(), 1, "the spare was parked after its cell");
        // It leaves after its first wait (tens of milliseconds), long before an isolate
        // that is not the spare would be released.
        let deadline = std::time::Instant::now() + IDLE_RELEASE / 3;
        while !spare_thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(spare_thread.is_finished(), "the idle spare did not leave");
        spare_thread.join().expect("the spare's thread");
        assert_eq!(
            (shelf.parked(), shelf.has_spare()),
            (0, false),
            "the spare left the shelf"
        );
        drop(resetting);
    }

    #[test]
    fn a_reset_that_fails_sends_the_cell_waiting_for_it_elsewhere() {
        crate::platform::init_v8();
        let shelf = shelf();
        let (waiting, _handle, mut events) = job(&shelf, "text('ran elsewhere')");
        let ended = Instant::now();
        let resetting = shelf.resetting();
        assert!(
            matches!(shelf.wait_for_reset_at(waiting, ended), Queued::Yes),
            "queued for the reset"
        );
        // The isolate was not reusable after all.
        drop(resetting);
        let texts = texts_until_finished(&mut events);
        assert_eq!(texts, ["ran elsewhere"]);
    }
}
