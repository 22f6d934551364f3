//! Cell threads prepared ahead of demand: each has already created its isolate and its
//! context with the helpers installed (about two milliseconds of work, most of it V8
//! deserialising its heap and context snapshots) and waits for the one cell it will run.
//! Every cell still gets a fresh isolate and a fresh, unshared context of its own; the
//! pool only moves their creation off the critical path.
//!
//! A keeper thread tops the pool up whenever a prepared thread is taken, so `spawn_cell`
//! itself neither spawns a thread nor creates an isolate. The keeper is started by the
//! first `refill` (from `prewarm`, or the first cell), and prepared threads are its
//! children, so they inherit the restrictions of the thread that started it (the runtime
//! process's sandbox).

use super::Job;
use super::snapshot::ContextSource;
use super::thread::{self, Prepared};
use code_mode_protocol::session::DEFAULT_HEAP_LIMIT_BYTES;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// Prepared threads kept waiting. Each holds an idle isolate and context (a little over
/// 1 MiB of RSS; the benchmark's idle table measures a parked cell at ~1.2 MiB).
const POOL_SIZE: usize = 3;

/// The heap limit prepared isolates are created with; cells with other limits get a fresh
/// thread.
pub(crate) const POOLED_HEAP_BYTES: u64 = DEFAULT_HEAP_LIMIT_BYTES;

/// A prepared (or preparing) cell thread.
pub(crate) struct Worker {
    jobs: mpsc::Sender<Job>,
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

/// Hands `job` to a prepared thread; gives the job back when none is ready.
pub(crate) fn run_prepared(job: Job) -> Option<Job> {
    let worker = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let Some(worker) = worker else {
        return Some(job);
    };
    // An error: the thread died (it could not create its isolate); the job goes elsewhere.
    worker.jobs.send(job).err().map(|mpsc::SendError(job)| job)
}

/// How long the keeper waits before replacing a taken thread while others are still
/// prepared: preparing takes two milliseconds of CPU, and on a small machine doing it at
/// once competes with the very cell that was just started. It starts earlier when that
/// cell finishes, and at once when the pool is empty.
const REFILL_DELAY: Duration = Duration::from_millis(5);

/// What the keeper hears about.
enum KeeperEvent {
    /// A prepared thread was taken (or the pool should be filled).
    Taken,
    /// A cell thread has finished (its isolate is gone).
    CellDone,
}

/// The keeper's inbox, once it is started.
static KEEPER: OnceLock<Option<mpsc::Sender<KeeperEvent>>> = OnceLock::new();

/// Asks the keeper to top the pool up to [`POOL_SIZE`] prepared threads, starting the
/// keeper on first use. Returns at once.
pub(crate) fn refill() {
    let keeper = KEEPER.get_or_init(|| {
        let (inbox, events) = mpsc::channel::<KeeperEvent>();
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
    });
    tell_keeper(keeper.as_ref(), KeeperEvent::Taken);
}

fn tell_keeper(keeper: Option<&mpsc::Sender<KeeperEvent>>, event: KeeperEvent) {
    if let Some(keeper) = keeper {
        let _ = keeper.send(event);
    }
}

fn pool_len() -> usize {
    POOL.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// The keeper's loop: fills the pool, then refills it after each take (see
/// [`REFILL_DELAY`]).
///
/// The first fill comes before the process's startup snapshot is made (a cell that
/// arrives meanwhile is not kept waiting for it), so its threads build their contexts by
/// hand, and a session does not park such an isolate once the blob exists. Once the blob
/// is made, the keeper replaces them with threads of the snapshot, off the cells' path:
/// otherwise each of the session's first cells would take one and throw it away after,
/// leaving the pool to be refilled while the next cells wait on it.
fn keep(events: &mpsc::Receiver<KeeperEvent>) {
    top_up();
    super::snapshot::wait_made();
    replace_outdated();
    while let Ok(event) = events.recv() {
        if matches!(event, KeeperEvent::Taken) && pool_len() > 0 {
            // Wait for the delay to pass, a cell to finish, or the pool to run empty.
            let deadline = Instant::now() + REFILL_DELAY;
            loop {
                match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(KeeperEvent::Taken) if pool_len() > 0 => {}
                    Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        top_up();
    }
}

/// Spawns prepared threads until the pool holds [`POOL_SIZE`]. Runs on the keeper thread.
fn top_up() {
    while pool_len() < POOL_SIZE {
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
fn replace_outdated() {
    let current = ContextSource::preferred();
    // Dropping a worker's sender ends its thread once it is prepared.
    POOL.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|worker| worker.source == current);
    top_up();
}

fn spawn_worker() -> std::io::Result<Worker> {
    let (jobs, waiting) = mpsc::channel::<Job>();
    let source = ContextSource::preferred();
    super::cell_thread().spawn(move || {
        let tool_functions = PREPARED_TOOL_FUNCTIONS.load(Ordering::Relaxed);
        let prepared: Prepared = thread::prepare(
            POOLED_HEAP_BYTES,
            tool_functions,
            source,
            code_mode_protocol::Surface::Contract,
        );
        if let Ok(job) = waiting.recv() {
            thread::run(Some(prepared), job);
            tell_keeper(KEEPER.get().and_then(Option::as_ref), KeeperEvent::CellDone);
        }
    })?;
    Ok(Worker { jobs, source })
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
        refill();
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
