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

use super::Job;
use super::snapshot::ContextSource;
use super::thread::{self, Prepared};
use code_mode_protocol::session::DEFAULT_HEAP_LIMIT_BYTES;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
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
    let worker = {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        let found = match readiness {
            Readiness::Ready => pool
                .iter()
                .rposition(|worker| worker.ready.load(Ordering::Acquire)),
            Readiness::Any => pool.len().checked_sub(1),
        };
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
    POOL.lock().unwrap_or_else(PoisonError::into_inner).len()
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
    top_up();
}

/// Spawns prepared threads until the pool holds [`POOL_SIZE`]. Runs on the keeper thread.
fn top_up() {
    top_up_to(POOL_SIZE);
}

fn top_up_to(size: usize) {
    while pool_len() < size {
        match spawn_worker() {
            Ok(worker) => POOL
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(worker),
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
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        let before = pool.len();
        pool.retain(|worker| worker.source == current);
        before != pool.len()
    };
    if replaced {
        top_up();
    }
    replaced
}

fn spawn_worker() -> std::io::Result<Worker> {
    let (jobs, waiting) = mpsc::channel::<Job>();
    let source = ContextSource::preferred();
    let ready = Arc::new(AtomicBool::new(false));
    let prepared_flag = Arc::clone(&ready);
    super::cell_thread().spawn(move || {
        let tool_functions = PREPARED_TOOL_FUNCTIONS.load(Ordering::Relaxed);
        let prepared: Prepared = thread::prepare(
            POOLED_HEAP_BYTES,
            tool_functions,
            source,
            code_mode_protocol::Surface::Contract,
        );
        prepared_flag.store(true, Ordering::Release);
        if let Ok(job) = waiting.recv() {
            thread::run(Some(prepared), job);
        }
    })?;
    Ok(Worker {
        jobs,
        ready,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<ContextSource> {
        POOL.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|worker| worker.source)
            .collect()
    }

    #[test]
    fn once_the_snapshot_is_made_every_prepared_thread_is_of_it() {
        crate::platform::init_v8();
        // The first fill starts before the blob is made, so its threads build by hand.
        start();
        super::super::snapshot::wait_made();
        let current = ContextSource::preferred();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sources = sources();
            if sources.len() == POOL_SIZE && sources.iter().all(|source| *source == current) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "a minute after the snapshot was made, the pool still holds {sources:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
