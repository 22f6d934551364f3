//! Gives memory back once the runtime is idle. A burst of cells (hundreds of threads,
//! isolates and their heaps) leaves the C allocator holding what they freed, in many
//! arenas, so an idle runtime would keep its burst's size for ever. When cells ended and
//! none runs, or cells hibernated (their isolates disposed of while the cells live on),
//! this asks the allocator to return its free pages to the system (`malloc_trim`), a few
//! times over the next seconds while isolates finish disposing.

use crate::drain::Drain;
use std::time::Duration;

/// How often the runtime looks whether it went idle.
const TICK: Duration = Duration::from_secs(1);

/// How many idle ticks in a row trim after cells ended (isolates of ended cells are
/// disposed of on their own threads, a little after their cells closed).
const TRIMS_AFTER_ACTIVITY: u32 = 3;

/// Starts the task, for the life of the process.
pub fn spawn(drain: Drain) {
    tokio::spawn(async move {
        let mut closed_seen = drain.cells_closed();
        let mut hibernated_seen = code_mode::session::hibernations_total();
        let mut trims_due = 0;
        let mut after_hibernation = false;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let closed = drain.cells_closed();
            if closed != closed_seen {
                closed_seen = closed;
                trims_due = TRIMS_AFTER_ACTIVITY;
            }
            // Cells that hibernated gave their isolates back while their cells still run:
            // their memory goes back too, busy or not.
            let hibernated = code_mode::session::hibernations_total();
            if hibernated != hibernated_seen {
                hibernated_seen = hibernated;
                trims_due = TRIMS_AFTER_ACTIVITY;
                after_hibernation = true;
            }
            if trims_due == 0 || (drain.busy() && !after_hibernation) {
                continue;
            }
            if trims_due == 1 {
                after_hibernation = false;
            }
            trims_due -= 1;
            let _ = tokio::task::spawn_blocking(give_back).await;
        }
    });
}

/// Returns the allocator's free memory to the system.
fn give_back() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: `malloc_trim` only walks the allocator's own arenas, under their locks;
        // it takes no pointer and is safe to call from any thread at any time.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released, "idle: free memory returned to the system");
    }
}
