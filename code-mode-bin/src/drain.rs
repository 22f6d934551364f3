//! The runtime's drain, owned by one handle: `main` makes a [`Drain`], a termination signal
//! starts it, and what acts on it gets a clone: connections refuse new sessions once it
//! started and end when it stops, the listener stops accepting, and the runtime counts
//! the work a drain waits for here (executes answering, cells running). The metrics only
//! observe it (the draining gauge, `/readyz`, the active-cells gauge).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The drain of one runtime process. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    /// Cancelled when the drain starts: no new sessions, no new connections.
    started: CancellationToken,
    /// Cancelled when connections must end now (the drain is over).
    stop: CancellationToken,
    work: Arc<Work>,
}

/// What a drain waits for.
#[derive(Debug, Default)]
struct Work {
    /// `execute` calls still answering (a cell is counted started only with the answer).
    executes: AtomicU64,
    cells_started: AtomicU64,
    cells_closed: AtomicU64,
}

/// An `execute` being answered, until dropped.
pub struct ExecuteRunning(Arc<Work>);

impl Drop for ExecuteRunning {
    fn drop(&mut self) {
        self.0.executes.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    /// Starts draining (once; later calls do nothing).
    pub fn start(&self) {
        self.started.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    /// Resolves once the drain started.
    pub async fn started(&self) {
        self.started.cancelled().await;
    }

    /// Ends every connection now.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the drain stopped the connections.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Counts an `execute` call until the guard drops.
    pub fn execute_running(&self) -> ExecuteRunning {
        self.work.executes.fetch_add(1, Ordering::SeqCst);
        ExecuteRunning(Arc::clone(&self.work))
    }

    /// A cell started (its `execute` answered).
    pub fn cell_started(&self) {
        self.work.cells_started.fetch_add(1, Ordering::SeqCst);
    }

    /// A cell was closed.
    pub fn cell_closed(&self) {
        self.work.cells_closed.fetch_add(1, Ordering::SeqCst);
    }

    /// How many cells were started so far.
    pub fn cells_started(&self) -> u64 {
        self.work.cells_started.load(Ordering::SeqCst)
    }

    /// How many cells were closed so far.
    pub fn cells_closed(&self) -> u64 {
        self.work.cells_closed.load(Ordering::SeqCst)
    }

    /// Cells started and not yet closed.
    pub fn active_cells(&self) -> u64 {
        let started = self.work.cells_started.load(Ordering::SeqCst);
        started.saturating_sub(self.work.cells_closed.load(Ordering::SeqCst))
    }

    /// Whether any cell may be running: one started and not closed, or an `execute` still
    /// answering.
    pub fn busy(&self) -> bool {
        self.active_cells() > 0 || self.work.executes.load(Ordering::SeqCst) > 0
    }

    /// Waits until no cell runs and no `execute` is answering (or `gone()` says nobody is
    /// left to serve), at most `timeout`; logs which it was.
    pub async fn until_idle(&self, timeout: Duration, gone: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::warn!(
            active_cells = self.active_cells(),
            ?timeout,
            "draining: no new connections or sessions; waiting for running cells"
        );
        while self.busy() && !gone() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.busy() && !gone() {
            tracing::warn!(
                cells = self.active_cells(),
                "drain deadline passed; stopping the cells still running"
            );
        } else {
            tracing::info!("drained: no cell running");
        }
    }

    /// Starts the drain on SIGTERM or SIGINT.
    pub fn start_on_signals(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let (term, int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!("cannot watch for termination signals: {error}");
                return;
            }
        };
        let drain = self.clone();
        tokio::spawn(async move {
            let (mut term, mut int) = (term, int);
            tokio::select! {
                _ = term.recv() => tracing::warn!("SIGTERM: draining"),
                _ = int.recv() => tracing::warn!("SIGINT: draining"),
            }
            drain.start();
        });
    }
}
