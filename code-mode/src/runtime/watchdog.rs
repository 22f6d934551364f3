//! The CPU-budget watchdog: one process-wide thread that reads each running cell thread's
//! CPU clock and terminates the cell's JS when it has used its budget.
//!
//! CPU time is the thread's own (`CLOCK_THREAD_CPUTIME_ID` through
//! `pthread_getcpuclockid`), so waiting for tools, timers or observers costs nothing, and
//! every entry into JS (module, microtasks, timers, getters the runtime calls) is covered
//! alike. Termination goes through the cell's own isolate handle, so it can never reach
//! another cell. If a terminated cell keeps burning CPU for [`ESCALATION_CPU`] more, V8
//! failed to stop it: the process exits with [`UNSTOPPABLE_EXIT_CODE`], and the host
//! reports the runtime lost and starts a fresh one.

use super::CellControl;
use code_mode_internal::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

/// How often the watchdog reads the clocks.
const CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// CPU time a terminated cell may still use before the process gives up on it.
pub const ESCALATION_CPU: Duration = Duration::from_secs(5);

/// The exit code of a runtime process that could not stop a cell.
pub const UNSTOPPABLE_EXIT_CODE: i32 = 70;

/// One watched cell thread. The cell thread holds it; dropping it unregisters the cell.
pub(crate) struct Watched {
    clock: libc::clockid_t,
    budget: Duration,
    control: Arc<CellControl>,
    exceeded: AtomicBool,
    exceeded_at: Mutex<Option<Duration>>,
    /// CPU time (ns) the thread spent not running JS but spinning for a tool answer
    /// (see `thread::SPIN_FOR_ANSWER`); it does not count against the budget.
    excused_nanos: AtomicU64,
}

impl Watched {
    /// Runs `wait` (which must not run JS) and excuses the CPU time it used.
    pub(crate) fn excused<T>(&self, wait: impl FnOnce() -> T) -> T {
        let before = self.thread_cpu_time();
        let result = wait();
        if let (Some(before), Some(after)) = (before, self.thread_cpu_time()) {
            let spent = u64::try_from(after.saturating_sub(before).as_nanos()).unwrap_or(u64::MAX);
            self.excused_nanos.fetch_add(spent, Ordering::Relaxed);
        }
        result
    }

    /// Whether the cell used its whole budget.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    pub(crate) fn budget(&self) -> Duration {
        self.budget
    }

    /// CPU time counted against the budget: the thread's, less what was excused.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        let excused = Duration::from_nanos(self.excused_nanos.load(Ordering::Relaxed));
        self.thread_cpu_time()
            .map(|used| used.saturating_sub(excused))
    }

    /// The thread's CPU clock.
    fn thread_cpu_time(&self) -> Option<Duration> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid out-pointer; `clock` came from `pthread_getcpuclockid`
        // of a thread that is still running (it unregisters before it exits).
        let result = unsafe { libc::clock_gettime(self.clock, &mut now) };
        (result == 0).then(|| {
            Duration::new(
                u64::try_from(now.tv_sec).unwrap_or(0),
                u32::try_from(now.tv_nsec).unwrap_or(0),
            )
        })
    }

    fn check(&self) {
        let Some(used) = self.cpu_time() else {
            return;
        };
        if used < self.budget {
            return;
        }
        let mut exceeded_at = lock(&self.exceeded_at);
        match *exceeded_at {
            None => {
                *exceeded_at = Some(used);
                self.exceeded.store(true, Ordering::SeqCst);
                self.control.terminate_isolate();
            }
            Some(at) if used.saturating_sub(at) > ESCALATION_CPU => {
                tracing::error!(
                    "a cell kept running {ESCALATION_CPU:?} of CPU after it was terminated; exiting"
                );
                std::process::exit(UNSTOPPABLE_EXIT_CODE);
            }
            Some(_) => {}
        }
    }
}

struct Registry {
    cells: Mutex<Vec<Weak<Watched>>>,
    wake: Condvar,
}

/// Starts the watchdog's thread ahead of the first cell (which would otherwise pay for
/// the thread's creation). Cheap to call again.
pub(crate) fn start() {
    registry();
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = Registry {
            cells: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        };
        let spawned = std::thread::Builder::new()
            .name("code-mode-watchdog".to_owned())
            .stack_size(256 * 1024)
            .spawn(watch);
        if let Err(error) = spawned {
            tracing::error!("the CPU watchdog could not start: {error}");
        }
        registry
    })
}

fn watch() {
    let registry = registry();
    loop {
        let cells: Vec<Arc<Watched>> = {
            let mut cells = lock(&registry.cells);
            cells.retain(|cell| cell.strong_count() > 0);
            while cells.is_empty() {
                cells = registry
                    .wake
                    .wait(cells)
                    .unwrap_or_else(PoisonError::into_inner);
                cells.retain(|cell| cell.strong_count() > 0);
            }
            cells.iter().filter_map(Weak::upgrade).collect()
        };
        for cell in &cells {
            cell.check();
        }
        drop(cells);
        std::thread::sleep(CHECK_INTERVAL);
    }
}

/// Watches the calling thread's CPU time against `budget`. Call it on the cell thread.
pub(crate) fn watch_current_thread(
    budget: Duration,
    control: Arc<CellControl>,
) -> Option<Arc<Watched>> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `pthread_self()` is the live calling thread and `clock` a valid out-pointer.
    let result = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if result != 0 {
        tracing::error!(
            "no CPU clock for the cell thread (error {result}); its CPU budget is not enforced"
        );
        return None;
    }
    let watched = Arc::new(Watched {
        clock,
        budget,
        control,
        exceeded: AtomicBool::new(false),
        exceeded_at: Mutex::new(None),
        excused_nanos: AtomicU64::new(0),
    });
    let registry = registry();
    lock(&registry.cells).push(Arc::downgrade(&watched));
    registry.wake.notify_one();
    Some(watched)
}

#[cfg(test)]
mod tests {
    use super::{CellControl, watch_current_thread};
    use std::sync::Arc;
    use std::time::Duration;

    /// Burns this thread's CPU until its clock has advanced by `amount`.
    fn burn(watched: &super::Watched, amount: Duration) {
        let start = watched.thread_cpu_time().expect("a thread CPU clock");
        while watched
            .thread_cpu_time()
            .expect("a thread CPU clock")
            .saturating_sub(start)
            < amount
        {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn excused_cpu_time_does_not_count_against_the_budget() {
        let watched =
            watch_current_thread(Duration::from_secs(3600), Arc::new(CellControl::default()))
                .expect("a watched thread");
        let counted = |watched: &super::Watched| watched.cpu_time().expect("a CPU reading");

        let before = counted(&watched);
        burn(&watched, Duration::from_millis(40));
        let spent = counted(&watched).saturating_sub(before);
        assert!(
            spent >= Duration::from_millis(40),
            "plain CPU time counts: {spent:?}"
        );

        let before = counted(&watched);
        watched.excused(|| burn(&watched, Duration::from_millis(40)));
        let spent = counted(&watched).saturating_sub(before);
        assert!(
            spent < Duration::from_millis(20),
            "excused CPU time must not count: {spent:?}"
        );
    }
}
