//! Cell threads prepared ahead of demand: each has already created its isolate (the most
//! expensive step of starting a cell, about a millisecond) and waits for the one cell it
//! will run. Every cell still gets a fresh isolate and context of its own; the pool only
//! moves their creation off the critical path.
//!
//! The pool is filled on first use and refilled after each take, from the caller's thread,
//! so prepared threads inherit its restrictions (the runtime process's sandbox).

use super::thread::{self, Prepared};
use super::{CELL_THREAD_STACK_BYTES, CellConfig, CellControl, CellEvent, Inbound};
use code_mode_protocol::session::DEFAULT_HEAP_LIMIT_BYTES;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

/// Prepared threads kept waiting. Each holds an idle isolate (a few MiB).
const POOL_SIZE: usize = 2;

/// The heap limit prepared isolates are created with; cells with other limits get a fresh
/// thread.
pub(crate) const POOLED_HEAP_BYTES: u64 = DEFAULT_HEAP_LIMIT_BYTES;

/// What a prepared thread needs to run its cell.
pub(crate) struct Job {
    pub(crate) config: CellConfig,
    pub(crate) events: tokio::sync::mpsc::Sender<CellEvent>,
    pub(crate) inbound: mpsc::Receiver<Inbound>,
    pub(crate) control: Arc<CellControl>,
}

/// A prepared (or preparing) cell thread.
pub(crate) struct Worker {
    jobs: mpsc::Sender<Job>,
    thread: JoinHandle<()>,
}

static POOL: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

/// Hands `job` to a prepared thread; gives the job back when none is ready.
pub(crate) fn run_prepared(job: Job) -> Result<JoinHandle<()>, Job> {
    let worker = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let Some(worker) = worker else {
        return Err(job);
    };
    match worker.jobs.send(job) {
        Ok(()) => Ok(worker.thread),
        // The thread died (it could not create its isolate): the job goes elsewhere.
        Err(mpsc::SendError(job)) => Err(job),
    }
}

/// Tops the pool up to [`POOL_SIZE`] prepared threads.
pub(crate) fn refill() {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    while pool.len() < POOL_SIZE {
        match spawn_worker() {
            Ok(worker) => pool.push(worker),
            Err(error) => {
                tracing::warn!("cannot prepare a cell thread: {error}");
                return;
            }
        }
    }
}

fn spawn_worker() -> std::io::Result<Worker> {
    let (jobs, waiting) = mpsc::channel::<Job>();
    let thread = std::thread::Builder::new()
        .name("code-mode-cell".to_owned())
        .stack_size(CELL_THREAD_STACK_BYTES)
        .spawn(move || {
            let prepared: Prepared = thread::prepare(POOLED_HEAP_BYTES);
            if let Ok(job) = waiting.recv() {
                thread::run(
                    Some(prepared),
                    job.config,
                    job.events,
                    job.inbound,
                    job.control,
                );
            }
        })?;
    Ok(Worker { jobs, thread })
}
