//! Cell threads prepared ahead of demand: each has already created its isolate and its
//! context with the helpers installed (about two milliseconds of work, most of it V8
//! deserialising its heap and context snapshots) and waits for the one cell it will run.
//! Every cell still gets a fresh isolate and a fresh, unshared context of its own; the
//! pool only moves their creation off the critical path.
//!
//! A keeper thread tops the pool up once cells stop starting for a moment after a
//! prepared thread was taken, so `spawn_cell` itself neither spawns a thread nor creates
//! an isolate, and the preparing does not compete with a burst of cells for the cores.
//! Cells take a ready thread first; one still being prepared only when their session has
//! no isolate being reset to wait for. Cells wake the keeper only when the pool is short
//! and it does not know yet; otherwise they record when they started. The keeper is
//! started by `prewarm` or the first cell, and prepared threads are its children, so they
//! inherit the restrictions of the thread that started it (the runtime process's sandbox).
//! The one exception is a sandboxing process's first thread ([`FirstCellThread`]), started
//! before the sandbox: it restricts itself, and joins the pool only once released.

use super::Job;
use super::snapshot::ContextSource;
use super::thread::{self, Prepared};
use code_mode_internal::sync::lock;
use code_mode_protocol::Surface;
use code_mode_protocol::session::DEFAULT_HEAP_LIMIT_BYTES;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Prepared threads kept waiting. Each holds an idle isolate and context (about what a
/// parked cell costs: `exec_overhead --sections idle` measures it).
const POOL_SIZE: usize = 3;

/// The heap limit prepared isolates are created with; cells with other limits get a fresh
/// thread.
pub(crate) const POOLED_HEAP_BYTES: u64 = DEFAULT_HEAP_LIMIT_BYTES;

/// A prepared (or preparing) cell thread.
pub(crate) struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Set once its isolate and context are made.
    ready: Arc<AtomicBool>,
    /// Where its context comes from: built by hand while the process's snapshot was being
    /// made, or from the snapshot.
    source: ContextSource,
    /// The surface its context has helpers for: a cell of another surface cannot use it.
    surface: Surface,
}

static POOL: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

/// Most tool functions a prepared thread creates ahead of its cell.
const MAX_PREPARED_TOOL_FUNCTIONS: usize = 512;

/// How many tool functions new prepared threads create ahead: as many as the latest cell
/// had tools (agents usually enable the same tools exec after exec). Creating a native
/// function costs a couple of microseconds, a noticeable share of a cell's start with
/// a hundred tools.
static PREPARED_TOOL_FUNCTIONS: AtomicUsize = AtomicUsize::new(0);

/// Records the tool count of a cell being started, for the threads prepared next.
pub(crate) fn note_tool_count(count: usize) {
    PREPARED_TOOL_FUNCTIONS.store(count.min(MAX_PREPARED_TOOL_FUNCTIONS), Ordering::Relaxed);
}

/// The surface new prepared threads are made for ([`SURFACE_CONTRACT`] or
/// [`SURFACE_CODEX`]): that of the sessions the process serves, as the latest session
/// opened (or the process's start, [`prepare_for`]) said.
static SURFACE: AtomicU8 = AtomicU8::new(SURFACE_CONTRACT);
const SURFACE_CONTRACT: u8 = 0;
const SURFACE_CODEX: u8 = 1;

fn surface_code(surface: Surface) -> u8 {
    match surface {
        Surface::Contract => SURFACE_CONTRACT,
        Surface::Codex => SURFACE_CODEX,
    }
}

/// The surface new prepared threads are made for.
fn current_surface() -> Surface {
    match SURFACE.load(Ordering::Relaxed) {
        SURFACE_CODEX => Surface::Codex,
        _ => Surface::Contract,
    }
}

/// Makes prepared threads for `surface` from now on; the keeper replaces those of another
/// surface at its next refill. A process whose sessions all have one surface (the Codex
/// front's runtime) says so before its first fill ([`super::prewarm_for`]), so that its
/// first cell finds a thread prepared for it; a session opened with another one says so
/// too ([`note_surface`]).
pub(crate) fn prepare_for(surface: Surface) {
    SURFACE.store(surface_code(surface), Ordering::Relaxed);
}

/// Notes the surface of a session being opened: when it is not the one prepared threads
/// are made for, they are made for it from now on, and the keeper is told.
pub(crate) fn note_surface(surface: Surface) {
    let code = surface_code(surface);
    // Told only when there is a keeper to tell: a flag set with nobody told would keep
    // every later cell from telling it that the pool is short. (A keeper started later
    // makes its threads for the surface set here.)
    if SURFACE.swap(code, Ordering::Relaxed) != code
        && let Some(Some(keeper)) = KEEPER.get()
        && !SHORT_TOLD.swap(true, Ordering::AcqRel)
    {
        let _ = keeper.send(Short);
    }
}

/// Which pool threads a job may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Only a thread whose isolate and context are made.
    Ready,
    /// Any, the one still being prepared included (the job waits for the preparation).
    Any,
}

/// Hands `job` to a pool thread of `readiness` (the most recently made of them); gives
/// the job back when there is none.
pub(crate) fn run_prepared(job: Job, readiness: Readiness) -> Option<Job> {
    let surface = job.config.surface;
    let worker = {
        let mut pool = lock(&POOL);
        let found = pool.iter().rposition(|worker| {
            worker.surface == surface
                && (readiness == Readiness::Any || worker.ready.load(Ordering::Acquire))
        });
        found.map(|index| pool.remove(index))
    };
    let Some(worker) = worker else {
        return Some(job);
    };
    // An error: the thread died (it could not create its isolate); the job goes elsewhere.
    worker.jobs.send(job).err().map(|mpsc::SendError(job)| job)
}

/// How long no cell must have started before the keeper replaces taken threads.
/// Preparing a thread takes one and a half to two milliseconds of CPU; done while cells
/// keep coming (the pool is taken from when they come back to back, and by new sessions),
/// it held the cores the cells needed, and on two cores a burst's cells waited on the
/// refill for milliseconds. Meanwhile a cell that finds the pool empty waits for its
/// session's isolate being reset, or gets a thread of its own.
const REFILL_QUIET: Duration = Duration::from_millis(20);

/// The longest the keeper puts a refill off while cells keep starting.
const REFILL_PATIENCE: Duration = Duration::from_millis(250);

/// What the keeper hears about: the pool is short of threads.
struct Short;

/// The keeper's inbox, once it is started.
static KEEPER: OnceLock<Option<mpsc::Sender<Short>>> = OnceLock::new();

/// Set while the keeper knows the pool is short (so that one message, not one per cell,
/// wakes it).
static SHORT_TOLD: AtomicBool = AtomicBool::new(false);

/// When the latest cell that could use the pool started, in nanoseconds since [`epoch`].
static LAST_START: AtomicU64 = AtomicU64::new(0);

/// The reference point of [`LAST_START`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Starts the keeper, which fills the pool to [`POOL_SIZE`] prepared threads. Cheap to
/// call again.
pub(crate) fn start() {
    // The thread that started V8 ends if it was not made the first cell thread.
    drop(lock(&V8_THREAD).take());
    // The first thread is started from here rather than by the keeper: one thread start
    // fewer before the first isolate is prepared.
    if KEEPER.get().is_none() {
        top_up_to(1);
    }
    keeper();
}

/// Notes that a cell that could use the pool was started. Tells the keeper when the pool
/// is short and it does not know yet; otherwise only records the time (no wake-up: cells
/// start thousands of times a second).
pub(crate) fn note_start() {
    LAST_START.store(nanos_since_epoch(), Ordering::Relaxed);
    if pool_len() < POOL_SIZE
        && !SHORT_TOLD.swap(true, Ordering::AcqRel)
        && let Some(keeper) = keeper()
    {
        let _ = keeper.send(Short);
    }
}

/// The keeper's inbox, starting the keeper on first use.
fn keeper() -> Option<&'static mpsc::Sender<Short>> {
    KEEPER
        .get_or_init(|| {
            let (inbox, events) = mpsc::channel::<Short>();
            let started = std::thread::Builder::new()
                .name("code-mode-pool".to_owned())
                .spawn(move || keep(&events));
            match started {
                Ok(_) => Some(inbox),
                Err(error) => {
                    tracing::warn!("cannot start the cell pool's keeper: {error}");
                    None
                }
            }
        })
        .as_ref()
}

fn pool_len() -> usize {
    lock(&POOL).len()
}

/// The keeper's loop: fills the pool, then refills it once cells stop starting for a
/// moment (see [`REFILL_QUIET`]).
///
/// The first fill, one thread, comes before the process's startup snapshot is made (a
/// cell that arrives meanwhile is not kept waiting for it), so it builds its context by
/// hand, and a session does not park such an isolate once the blob exists. Once the blob
/// is made, the keeper replaces it with threads of the snapshot, off the cells' path:
/// otherwise the session's first cells would take such threads and throw them away after,
/// leaving the pool to be refilled while the next cells wait on it.
fn keep(events: &mpsc::Receiver<Short>) {
    // One thread until the blob is made: the first cell needs one, and more would only
    // compete with it and with the blob for the cores.
    top_up_to(1);
    super::snapshot::wait_made();
    if !replace_outdated() {
        // The blob was there from the start (read from the disk cache): the one thread
        // waits for the first cell alone, and the rest of the fill comes once cells pause,
        // so that it does not take the cores from that cell.
        let _ = events.recv_timeout(FIRST_CELL_PATIENCE);
        refill_when_quiet();
    }
    while events.recv().is_ok() {
        refill_when_quiet();
    }
}

/// How long a pool whose first thread was of the snapshot waits for the first cell before
/// it fills up anyway.
const FIRST_CELL_PATIENCE: Duration = Duration::from_millis(100);

/// Sleeps until no cell has started for the quiet time, or patience runs out; then fills
/// the pool.
fn refill_when_quiet() {
    let deadline = Instant::now() + REFILL_PATIENCE;
    loop {
        let since = Duration::from_nanos(
            nanos_since_epoch().saturating_sub(LAST_START.load(Ordering::Relaxed)),
        );
        let left = deadline.saturating_duration_since(Instant::now());
        if since >= REFILL_QUIET || left.is_zero() {
            break;
        }
        std::thread::sleep((REFILL_QUIET - since).min(left));
    }
    // A take from here on tells the keeper again.
    SHORT_TOLD.store(false, Ordering::Release);
    // Threads of a surface the sessions no longer use go; their isolates would be made
    // again at each cell's start.
    let surface = current_surface();
    lock(&POOL).retain(|worker| worker.surface == surface);
    top_up();
}

/// Spawns prepared threads until the pool holds [`POOL_SIZE`]. Runs on the keeper thread.
fn top_up() {
    top_up_to(POOL_SIZE);
}

fn top_up_to(size: usize) {
    while pool_len() < size {
        match spawn_worker() {
            Ok(worker) => lock(&POOL).push(worker),
            Err(error) => {
                tracing::warn!("cannot prepare a cell thread: {error}");
                return;
            }
        }
    }
}

/// Lets go of prepared threads whose contexts do not come from where new ones would (they
/// were built by hand before the snapshot was made), and tops the pool up again.
/// Replaces the prepared threads of another context source than the current one, and
/// fills the pool then; whether any was replaced.
fn replace_outdated() -> bool {
    let current = ContextSource::preferred();
    // Dropping a worker's sender ends its thread once it is prepared.
    let replaced = {
        let mut pool = lock(&POOL);
        let before = pool.len();
        let surface = current_surface();
        pool.retain(|worker| worker.source == current && worker.surface == surface);
        before != pool.len()
    };
    if replaced {
        top_up();
    }
    replaced
}

fn spawn_worker() -> std::io::Result<Worker> {
    spawn_worker_after(|| {})
}

/// A prepared thread that runs `first` before anything else.
fn spawn_worker_after(first: impl FnOnce() + Send + 'static) -> std::io::Result<Worker> {
    let (worker, life) = worker_after(first);
    super::cell_thread().spawn(life)?;
    Ok(worker)
}

/// A prepared thread's [`Worker`], and the life its thread is to live: `first`, then its
/// isolate prepared, then the cell it is given.
fn worker_after(first: impl FnOnce() + Send + 'static) -> (Worker, impl FnOnce() + Send + 'static) {
    let (jobs, waiting) = mpsc::channel::<Job>();
    let source = ContextSource::preferred();
    let surface = current_surface();
    let ready = Arc::new(AtomicBool::new(false));
    let prepared_flag = Arc::clone(&ready);
    let life = move || {
        first();
        let tool_functions = PREPARED_TOOL_FUNCTIONS.load(Ordering::Relaxed);
        let prepared: Prepared =
            thread::prepare(POOLED_HEAP_BYTES, tool_functions, source, surface, None);
        prepared_flag.store(true, Ordering::Release);
        if let Ok(job) = waiting.recv() {
            thread::run(Some(prepared), job);
        }
    };
    let worker = Worker {
        jobs,
        ready,
        source,
        surface,
    };
    (worker, life)
}

/// A life for the cell thread that started V8 ([`start_v8_on_cell_thread`]).
type Life = Box<dyn FnOnce() + Send>;

/// The cell thread that is starting (or started) V8 and waits to become the first cell
/// thread ([`start_first`]); `None` once it was given its life or let go.
static V8_THREAD: Mutex<Option<mpsc::Sender<Life>>> = Mutex::new(None);

/// Starts V8 on a cell thread that then waits to become the first cell thread of a
/// sandboxing process ([`start_first`]): on a cold start, that thread's isolate is then
/// prepared as soon as V8 is up, without a thread start between. Unused by the time the
/// pool starts ([`start`]), it ends. Falls back to [`crate::platform::start_v8`] when no
/// thread can start. Does nothing once V8 is started or starting.
pub(crate) fn start_v8_on_cell_thread() {
    crate::platform::start_v8_with(|| {
        let (lives, waiting) = mpsc::channel::<Life>();
        let spawned = super::cell_thread().spawn(move || {
            crate::platform::init_v8();
            if let Ok(life) = waiting.recv() {
                life();
            }
        });
        match spawned {
            Ok(_) => {
                *lock(&V8_THREAD) = Some(lives);
                // The new thread is queued on this core, and its chain (V8, then the first
                // isolate) is a cold start's longest: this thread moves to another core,
                // where its own later wake-ups then tend to go too.
                code_mode_cores::step_aside();
            }
            Err(error) => {
                tracing::debug!("cannot start V8 on a cell thread: {error}");
                crate::platform::spawn_v8_thread();
            }
        }
    });
}

/// Gives `life` to the thread that started V8 if it waits for one; gives it back
/// otherwise.
fn give_to_v8_thread(life: Life) -> Result<(), Life> {
    let waiting = lock(&V8_THREAD).take();
    match waiting {
        Some(thread) => thread.send(life).map_err(|refused| refused.0),
        None => Err(life),
    }
}

/// The first prepared thread of a process that sandboxes itself, started before the
/// sandbox so that its isolate is prepared while the sandbox is applied
/// ([`super::start_first_cell_thread`]). It restricts itself first thing, since it does not
/// inherit the restrictions the process applies later, and joins the pool only once
/// released ([`FirstCellThread::release`]): until then no cell can reach it.
pub struct FirstCellThread<R> {
    worker: Worker,
    restricted: mpsc::Receiver<R>,
}

impl<R> FirstCellThread<R> {
    /// Hands the thread to the pool if `accept` takes what its restriction gave (waiting
    /// for it: the thread reports it before preparing its isolate); otherwise lets it end
    /// without ever running a cell. Call it once the process is sandboxed. Whether the
    /// thread joined the pool.
    pub fn release(self, accept: impl FnOnce(&R) -> bool) -> bool {
        let joined = self
            .restricted
            .recv()
            .is_ok_and(|restricted| accept(&restricted));
        if joined {
            lock(&POOL).push(self.worker);
        }
        joined
    }
}

/// Starts the thread of [`FirstCellThread`], which runs `restrict` first.
pub(crate) fn start_first<R: Send + 'static>(
    restrict: impl FnOnce() -> R + Send + 'static,
) -> std::io::Result<FirstCellThread<R>> {
    let (report, restricted) = mpsc::channel();
    let (worker, life) = worker_after(move || {
        // V8 first (its platform's threads are made by whoever starts it, unrestricted as
        // before the sandbox): usually started already, by this very thread.
        crate::platform::init_v8();
        // A receiver gone means the thread was not released: it then ends unused.
        let _ = report.send(restrict());
    });
    // The thread that started V8, if it waits, else a new one.
    if let Err(life) = give_to_v8_thread(Box::new(life)) {
        super::cell_thread().spawn(life)?;
    }
    Ok(FirstCellThread { worker, restricted })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is the process's: its tests take turns.
    static TURN: Mutex<()> = Mutex::new(());

    /// Waits (up to a minute) until the pool holds [`POOL_SIZE`] threads (`ready` ones
    /// only, if asked) whose `field` is `wanted`; `after` says what should have made it so.
    fn wait_for_full_pool<T: PartialEq + std::fmt::Debug>(
        field: impl Fn(&Worker) -> T,
        wanted: &T,
        ready: bool,
        after: &str,
    ) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let held: Vec<T> = lock(&POOL)
                .iter()
                .filter(|worker| !ready || worker.ready.load(Ordering::Acquire))
                .map(&field)
                .collect();
            if held.len() == POOL_SIZE && held.iter().all(|value| value == wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "a minute after {after}, the pool still holds {held:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_for_full_pool_of(surface: Surface) {
        let after = format!("a session of {surface:?} opened");
        wait_for_full_pool(|worker| worker.surface, &surface, true, &after);
    }

    /// A cell of the Codex surface finds a thread prepared for it once such a session was
    /// opened: the pool's threads follow the sessions' surface, and a cell never takes a
    /// thread of another surface (its isolate would be made again as it starts).
    #[test]
    fn prepared_threads_follow_the_surface_of_the_sessions() {
        let _turn = lock(&TURN);
        crate::platform::init_v8();
        start();
        note_surface(Surface::Codex);
        wait_for_full_pool_of(Surface::Codex);
        let job = |surface| {
            let (events, _) = tokio::sync::mpsc::channel(1);
            let config = super::super::CellConfig {
                surface,
                ..super::super::CellConfig::default()
            };
            Job::new(config, events, None)
        };
        let (contract, _contract) = job(Surface::Contract);
        assert!(
            run_prepared(contract, Readiness::Any).is_some(),
            "a cell of the contract's surface took a thread prepared for Codex's"
        );
        let (codex, _codex) = job(Surface::Codex);
        assert!(
            run_prepared(codex, Readiness::Ready).is_none(),
            "the cell of the Codex surface found no thread prepared for it"
        );
        // As `spawn_cell` does after a take: the keeper hears that the pool is short.
        note_start();
        note_surface(Surface::Contract);
        wait_for_full_pool_of(Surface::Contract);
    }

    /// A first cell thread reports what its restriction gave, and joins the pool only when
    /// released with that report accepted: until then, and after a refusal, no cell can
    /// be handed to it.
    #[test]
    fn a_first_cell_thread_joins_the_pool_only_when_its_restriction_is_accepted() {
        let _turn = lock(&TURN);
        crate::platform::init_v8();
        let in_pool = |ready: &Arc<AtomicBool>| {
            lock(&POOL)
                .iter()
                .any(|worker| Arc::ptr_eq(&worker.ready, ready))
        };
        for (given, accepted) in [(6, false), (7, true)] {
            let first = start_first(move || given).expect("start a first cell thread");
            let ready = Arc::clone(&first.worker.ready);
            assert!(!in_pool(&ready), "in the pool before its release");
            let mut reported = None;
            let joined = first.release(|restricted| {
                reported = Some(*restricted);
                *restricted == 7
            });
            assert_eq!(reported, Some(given));
            assert_eq!(joined, accepted);
            assert_eq!(in_pool(&ready), accepted, "released with {given}");
        }
    }

    #[test]
    fn once_the_snapshot_is_made_every_prepared_thread_is_of_it() {
        let _turn = lock(&TURN);
        crate::platform::init_v8();
        // The first fill starts before the blob is made, so its threads build by hand.
        start();
        super::super::snapshot::wait_made();
        let current = ContextSource::preferred();
        wait_for_full_pool(
            |worker| worker.source,
            &current,
            false,
            "the snapshot was made",
        );
    }
}
