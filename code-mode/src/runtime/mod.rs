//! The cell runtime: one cell = one OS thread owning one fresh V8 isolate and context.
//!
//! The owner (the cell actor) calls [`spawn_cell`] with a [`CellConfig`] and an event
//! channel, then talks to the running cell only through the returned [`CellHandle`]:
//! [`CellCommand`]s go in (tool answers, timer firings), [`CellEvent`]s come out (output,
//! tool calls, yields, notifications, timers to arm, idleness, the final outcome).
//!
//! The runtime keeps no clock: `setTimeout` reports [`CellEvent::TimerSet`] and the owner
//! answers with [`CellCommand::TimerFired`] when it sees fit, so a pending timer never keeps
//! a finished cell alive and a frozen cell (pending frontier) sees no time pass.
//!
//! Submodules: `thread` runs the cell's event loop, `state` holds what the loop and the
//! helpers share about the running cell, `helpers` implements the JS globals,
//! `values` converts between JS values, JSON text and error text, `callbacks` gathers
//! every V8 callback (imports, heap limit), `snapshot` makes the startup snapshot fresh
//! contexts come from, and `pool` and `reuse` keep isolates ready ahead of cells.

mod callbacks;
mod helpers;
mod pool;
mod reuse;
mod snapshot;
mod snapshot_cache;
mod state;
mod thread;
mod tool_table;
mod typescript;
mod values;
mod waiting;
pub mod watchdog;

use code_mode_protocol::{
    CallId, CellFailure, ContentItem, JsonText, ToolDefinition, ToolError, ToolKind,
};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// How many cells of this process reached their output cap (read by the runtime
/// process's metrics; a cell goes on after its cap, so no response says it).
static OUTPUT_CAPS_REACHED: AtomicU64 = AtomicU64::new(0);

/// How many cells of this process reached their output cap so far (the runtime
/// process's metrics; only with the `internals` feature).
#[cfg(feature = "internals")]
#[doc(hidden)]
pub fn output_caps_reached() -> u64 {
    OUTPUT_CAPS_REACHED.load(Ordering::Relaxed)
}

/// Counts a cell that reached its output cap.
pub(crate) fn output_cap_reached() {
    OUTPUT_CAPS_REACHED.fetch_add(1, Ordering::Relaxed);
}

/// Strips the TypeScript types from a cell's source, as the cell thread does for a source
/// V8 refuses as JavaScript: the stripped JavaScript (same length, same positions), or the
/// error the cell would fail with. Exposed for benchmarks and tools.
pub fn strip_typescript(source: &str) -> Result<String, TypeScriptRefused> {
    typescript::strip(source).map_err(|error| {
        TypeScriptRefused(match error {
            typescript::StripError::Refused(text) => text,
            typescript::StripError::Syntax { message, position } => {
                typescript::syntax_error_text(&message, position)
            }
        })
    })
}

/// A source [`strip_typescript`] refused; it displays the error text the cell would fail
/// with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TypeScriptRefused(pub String);

pub use pool::FirstCellThread;
pub use reuse::IsolateShelf;
pub use snapshot::{CONTEXT_SNAPSHOT_ENV, CacheOutcome, ContextSource, use_disk_cache};
#[cfg(feature = "internals")]
#[doc(hidden)]
pub use thread::ContextBench;

/// Waits until the process's startup snapshot is made (starting it if need be): from then
/// on cells' contexts come from it, and a session's isolates are parked for its next
/// cells (one built by hand before it is not). For tests that need that from their first
/// cell.
#[doc(hidden)]
pub fn wait_for_startup_snapshot() {
    crate::platform::init_v8();
    snapshot::wait_made();
}

/// The stack of a cell thread, in bytes. V8 keeps its own JS stack limit (about 1 MiB) well
/// inside it, so the runtime's native callbacks still have room when JS is at its deepest.
pub const CELL_THREAD_STACK_BYTES: usize = 8 * 1024 * 1024;

pub use code_mode_protocol::model::JSON_DEPTH_LIMIT;

/// Capacity of the event channel from a cell thread to its owner. A cell that produces
/// events faster than the owner drains them blocks (backpressure) instead of queueing
/// without bound.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;

/// Stored values visible to a cell: key → JSON text. Values are shared, never mutated.
pub use code_mode_protocol::StoredValues;

pub use code_mode_protocol::CellLimits;

/// Everything a cell needs to start.
#[derive(Debug, Clone)]
pub struct CellConfig {
    /// The JavaScript source, pragma already removed. Runs as the module `exec_main.mjs`.
    pub source: String,
    /// Every enabled tool, deferred ones included. A tool's position is its index:
    /// `tools.<js name>` is bound to the index, never looked up by name.
    pub tools: Arc<[ToolDefinition]>,
    /// The session's stored values when the cell starts (the cell's snapshot).
    pub stored: Arc<StoredValues>,
    /// The size of `stored` as the session's cap counts it
    /// ([`code_mode_protocol::stored::map_bytes`]).
    pub stored_bytes: u64,
    /// The session's cap on stored values: a `store` that would take the cell's view
    /// (`stored` plus its own writes) beyond it throws. `None`: no cap.
    pub max_stored_bytes: Option<u64>,
    pub limits: CellLimits,
    /// The globals the cell sees.
    pub surface: code_mode_protocol::Surface,
    /// The seed of the cell's `Math.random()`.
    pub seed: u64,
    /// Readings the cell's clock gives before real time: a replayed cell's, in the order
    /// its first run read them ([`CellEvent::Clock`]).
    pub clock: Arc<[u64]>,
    /// The span the cell's compile and evaluation are traced under (its session's span of
    /// the cell, or of the replay that rebuilds it); disabled when nothing traces.
    pub span: tracing::Span,
}

impl Default for CellConfig {
    /// An empty cell with default limits, traced under nothing.
    fn default() -> Self {
        Self {
            source: String::new(),
            tools: Arc::from([]),
            stored: Arc::default(),
            stored_bytes: 0,
            max_stored_bytes: None,
            limits: CellLimits::default(),
            surface: code_mode_protocol::Surface::default(),
            seed: 0,
            clock: Arc::default(),
            span: tracing::Span::none(),
        }
    }
}

/// A nested tool call the cell started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallRequest {
    pub id: CallId,
    /// Index into [`CellConfig::tools`].
    pub tool_index: usize,
    /// The tool's original name.
    pub name: String,
    pub kind: ToolKind,
    /// The argument as JSON text; `None` when the cell passed no argument (or `undefined`).
    pub input: Option<String>,
}

/// What a cell reports to its owner, in order. Nothing is reported when a cell starts: an
/// event there would wake the owner for nothing on every cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellEvent {
    /// An output item (`text`, `image`, `console.*`, `generatedImage`).
    Output(ContentItem),
    /// `yield_control()` ran.
    YieldRequested,
    /// A nested tool call; answer with [`CellCommand::ToolResult`].
    ToolCall(ToolCallRequest),
    /// `notify(...)` ran with this text.
    Notify(String),
    /// The cell read its clock (`Date.now()`, `new Date()`, ...): these live readings, in
    /// order, reported ahead of the next event. Replayed readings are not reported.
    Clock(Vec<u64>),
    /// `setTimeout` armed timer `id` at `armed_at`; answer with [`CellCommand::TimerFired`]
    /// once `delay` has passed since then (not since the owner heard of it: timers set one
    /// after the other fire in the order of their due times, however late the owner reads
    /// them).
    TimerSet {
        id: u64,
        delay: Duration,
        armed_at: std::time::Instant,
    },
    /// `clearTimeout` disarmed timer `id`; the owner may forget it.
    TimerCleared { id: u64 },
    /// The cell has nothing runnable: microtasks are drained and it waits on tool answers
    /// or timers. Reported each time the thread goes to sleep on an empty command queue.
    /// `commands_applied` counts every command the cell has received so far: an owner that
    /// sent more knows the cell is about to wake, so this is not a frontier.
    Idle { commands_applied: u64 },
    /// The last event: the JS thread has stopped running JavaScript for good.
    Finished(CellOutcome),
}

/// How a cell ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellOutcome {
    /// The module settled, `exit()` ran, or an error ended the cell. `stored_writes` are the
    /// cell's own `store` calls (last write per key), to be merged into the session.
    Completed {
        failure: Option<CellFailure>,
        stored_writes: StoredValues,
    },
    /// The owner terminated the cell (or dropped its handle). Its writes are discarded.
    Terminated,
}

/// What an owner tells a running cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellCommand {
    /// The answer to a nested tool call: JSON text, or an error string that rejects the
    /// promise. Answers to unknown or already answered calls are ignored.
    ToolResult {
        id: CallId,
        result: Result<JsonText, ToolError>,
    },
    /// Timer `id` is due. Ignored if it was cleared.
    TimerFired { id: u64 },
}

/// What travels on a cell thread's inbound queue.
#[derive(Debug)]
pub(crate) enum Inbound {
    Command(CellCommand),
    /// No-op that wakes a sleeping thread so it re-checks its flags.
    Wake,
    /// The owner has what it needs of the cell's end: the thread may now spend CPU on the
    /// isolate (reset it for the session's next cell, or dispose of it).
    Release,
}

/// How long the thread of a finished cell waits for its owner's
/// [`CellHandle::release`] before it resets or disposes of the isolate anyway (an owner
/// that has nobody to deliver the end to does not hold the isolate up longer than this).
pub const RELEASE_PATIENCE: Duration = Duration::from_millis(20);

/// Why a cell could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("failed to spawn the cell thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// State shared between a [`CellHandle`] and its cell thread.
#[derive(Debug, Default)]
pub(crate) struct CellControl {
    /// Set once by [`CellHandle::terminate`]; the thread checks it after every entry into JS.
    terminate_requested: AtomicBool,
    /// The isolate's thread-safe handle while it runs this cell: published by the thread
    /// as soon as the isolate exists, withdrawn when the cell is over (the isolate may go
    /// on to the session's next cell, which this cell's owner must never stop).
    isolate: Mutex<Option<v8::IsolateHandle>>,
}

impl CellControl {
    pub(crate) fn terminate_requested(&self) -> bool {
        self.terminate_requested.load(Ordering::SeqCst)
    }

    /// Publishes the isolate running this cell.
    pub(crate) fn attach(&self, isolate: v8::IsolateHandle) {
        *code_mode_internal::sync::lock(&self.isolate) = Some(isolate);
    }

    /// Withdraws the isolate: the cell is over. After this returns, no termination
    /// requested through this control reaches the isolate.
    pub(crate) fn detach(&self) {
        *code_mode_internal::sync::lock(&self.isolate) = None;
    }

    /// Stops the JavaScript running for this cell, if the cell still runs.
    pub(crate) fn terminate_isolate(&self) {
        if let Some(isolate) = code_mode_internal::sync::lock(&self.isolate).as_ref() {
            isolate.terminate_execution();
        }
    }
}

/// Releases a finished cell's thread ([`CellHandle::release`]); cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Releaser(mpsc::Sender<Inbound>);

impl Releaser {
    pub(crate) fn release(&self) {
        let _ = self.0.send(Inbound::Release);
    }
}

/// The owner's side of a running cell. Dropping it terminates the cell.
pub struct CellHandle {
    commands: mpsc::Sender<Inbound>,
    control: Arc<CellControl>,
    /// Disconnects when the thread is done with the cell.
    done: Mutex<Option<mpsc::Receiver<()>>>,
}

impl fmt::Debug for CellHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CellHandle")
            .field("terminate_requested", &self.control.terminate_requested())
            .finish_non_exhaustive()
    }
}

impl CellHandle {
    /// Sends a command to the cell. Returns `false` if the cell thread has already gone.
    pub fn send(&self, command: CellCommand) -> bool {
        self.commands.send(Inbound::Command(command)).is_ok()
    }

    /// Stops the cell: JavaScript stops at once, even in `while (true) {}`, with no
    /// `catch`/`finally` running. The cell then reports [`CellOutcome::Terminated`], unless it
    /// had already finished. Idempotent.
    pub fn terminate(&self) {
        // Flag first, then interrupt: the thread publishes the isolate handle before it
        // checks the flag, so one of the two sides always sees the other (both SeqCst).
        self.control
            .terminate_requested
            .store(true, Ordering::SeqCst);
        self.control.terminate_isolate();
        // Wake the thread if it sleeps on an empty command queue.
        let _ = self.commands.send(Inbound::Wake);
    }

    /// Tells the thread of a finished cell that its owner has delivered the end: the
    /// thread starts resetting (or disposing of) the isolate now instead of after
    /// [`RELEASE_PATIENCE`]. Until then it stays off the CPU, so the collection and the
    /// fresh context do not compete with the owner's delivery of the answer. Cheap;
    /// idempotent; harmless before the end (the thread looks for it only after the end).
    pub fn release(&self) {
        let _ = self.commands.send(Inbound::Release);
    }

    /// A handle that does [`CellHandle::release`] from elsewhere (where the cell's final
    /// answer goes: it releases the thread once the answer is on its way).
    pub(crate) fn releaser(&self) -> Releaser {
        Releaser(self.commands.clone())
    }

    /// Waits until the cell thread is done with the cell: its isolate disposed, or reset
    /// and parked for the session's next cell. Releases the thread first (see
    /// [`CellHandle::release`]). Blocking; call it from a blocking context. Returns at once
    /// if already joined.
    pub fn join(&self) {
        self.release();
        let done = code_mode_internal::sync::lock(&self.done).take();
        if let Some(done) = done {
            // Only ever disconnects: the thread drops its sender when done (or panicked).
            let _ = done.recv();
        }
    }
}

impl Drop for CellHandle {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Prepares cell threads ahead of demand (V8 initialised, isolates created, the CPU
/// watchdog's thread started), so that the first cells do not pay for it. Call it from the
/// thread whose restrictions cells should inherit (e.g. after sandboxing). Cheap to call
/// again.
pub fn prewarm() {
    crate::platform::init_v8();
    // The pool first: a cold start's first cell waits for its first isolate.
    pool::start();
    snapshot::start_making();
    watchdog::start();
}

/// [`prewarm`] for a process whose sessions have `surface`: the cell threads prepared
/// ahead have that surface's helpers, so the first cell of such a session finds one ready
/// (a cell of another surface cannot use them and makes its own isolate as it starts).
/// Sessions opened later with another surface turn the preparing to theirs.
pub fn prewarm_for(surface: code_mode_protocol::Surface) {
    pool::prepare_for(surface);
    prewarm();
}

/// Starts the first cell thread prepared ahead, for a process about to sandbox itself
/// (the runtime process): its isolate is made while the process applies its sandbox and
/// reaches its host, rather than after. The thread is the one that started V8 when
/// [`start_v8_on_cell_thread`] started it and it waits, else a new one that waits for V8.
/// It then runs `restrict`, which must apply to the calling thread every restriction that
/// does not reach threads already running (Landlock's), and reports what it returned
/// before it makes its isolate. Once the process is sandboxed,
/// [`FirstCellThread::release`] hands the thread to the pool if that report is
/// right, and [`prewarm_for`] starts the rest as usual. `None` if no thread could start.
pub fn start_first_cell_thread<R: Send + 'static>(
    surface: code_mode_protocol::Surface,
    restrict: impl FnOnce() -> R + Send + 'static,
) -> Option<FirstCellThread<R>> {
    pool::prepare_for(surface);
    pool::start_first(restrict)
        .inspect_err(|error| tracing::warn!("cannot start the first cell thread: {error}"))
        .ok()
}

/// Starts V8 on a thread of its own, as [`crate::platform::start_v8`] does, for a process
/// that will then start its first cell thread ([`start_first_cell_thread`]): that thread
/// is then the one that started V8, and prepares its isolate as soon as V8 is up. The
/// calling thread then moves to another core (`code_mode_cores::step_aside`), leaving its
/// own to the new thread, which the kernel queued there.
pub fn start_v8_on_cell_thread() {
    pool::start_v8_on_cell_thread();
}

/// Notes the surface of a session being opened, for the cell threads prepared ahead.
pub(crate) fn note_session_surface(surface: code_mode_protocol::Surface) {
    pool::note_surface(surface);
}

/// Starts a cell on a thread of its own (prepared ahead of demand when possible). Events
/// arrive on `events` until [`CellEvent::Finished`]; if the receiver is dropped, the cell
/// terminates.
pub fn spawn_cell(
    config: CellConfig,
    events: tokio::sync::mpsc::Sender<CellEvent>,
) -> Result<CellHandle, SpawnError> {
    spawn_cell_on(config, events, None)
}

/// [`spawn_cell`] for a session that reuses isolates: the cell starts on an isolate parked
/// on `shelf` when there is one, and its isolate goes back there if the cell ends normally
/// (CONTRACT §7). A shelf belongs to one session.
pub fn spawn_cell_on(
    config: CellConfig,
    events: tokio::sync::mpsc::Sender<CellEvent>,
    shelf: Option<Arc<IsolateShelf>>,
) -> Result<CellHandle, SpawnError> {
    crate::platform::init_v8();
    // A shelf only takes isolates of its own heap limit.
    let shelf = shelf.filter(|shelf| shelf.heap_bytes() == config.limits.heap_bytes);
    let (job, handle) = Job::new(config, events, shelf.clone());
    let pooled = job.pooled();
    let tool_count = eager_tool_count(&job.config.tools);
    // A parked isolate of the session, else a prepared pool thread, else the session's
    // isolate being reset (about half a millisecond away), else a pool thread still being
    // prepared, else a new thread.
    let mut job = Some(job);
    if let Some(shelf) = &shelf {
        job = job.and_then(|job| shelf.run(job));
    }
    if pooled {
        job = job.and_then(|job| pool::run_prepared(job, pool::Readiness::Ready));
    }
    if let Some(shelf) = &shelf
        && let Some(unplaced) = job.take()
    {
        job = match shelf.wait_for_reset(unplaced) {
            reuse::Queued::No(job) => Some(job),
            reuse::Queued::Yes => None,
            reuse::Queued::WithSpare(spare) => {
                start_spare(spare);
                None
            }
        };
    }
    if let Some(job) = job {
        start_unshelved(job)?;
    }
    if pooled {
        pool::note_tool_count(tool_count);
        pool::note_start();
    }
    Ok(handle)
}

/// What a shelf's spare isolate is prepared for: the cell whose wait ordered it.
#[derive(Debug)]
pub(crate) struct SpareLike {
    pub(crate) heap_bytes: u64,
    pub(crate) surface: code_mode_protocol::Surface,
    /// Its tools, whose `tools` and `ALL_TOOLS` the spare builds ahead.
    pub(crate) tools: Arc<[ToolDefinition]>,
}

/// Starts the thread of a shelf's spare isolate; without a thread, the order lapses (the
/// cells queued wait for the other resets, or go elsewhere).
fn start_spare(spare: reuse::Spare) {
    if let Err(error) = cell_thread().spawn(move || thread::run_spare(spare)) {
        tracing::debug!("cannot start a thread for a spare isolate: {error}");
    }
}

/// Starts a job that waited for an isolate being reset which was not reusable after all:
/// on a pool thread, else a new thread (where a thread cannot be started, the cell ends
/// as its owner sees a thread that is gone).
pub(crate) fn start_elsewhere(job: Job) {
    let pooled = job.pooled();
    if let Err(error) = start_unshelved(job) {
        tracing::warn!("cannot start a thread for a cell: {error}");
    }
    // As after any start: the keeper hears if the pool is short now.
    if pooled {
        pool::note_start();
    }
}

/// The last resorts for a job: a pool thread even if it is still being prepared (for the
/// pool's heap limit), else a new thread.
fn start_unshelved(job: Job) -> std::io::Result<()> {
    let job = if job.pooled() {
        pool::run_prepared(job, pool::Readiness::Any)
    } else {
        Some(job)
    };
    if let Some(job) = job {
        cell_thread().spawn(move || thread::run(None, job))?;
    }
    Ok(())
}

/// [`spawn_cell`] on a new isolate whose contexts come from `source`, never a prepared or
/// parked one: for tests and benchmarks that compare a context from the startup snapshot
/// with one built by hand.
#[doc(hidden)]
pub fn spawn_cell_from(
    config: CellConfig,
    events: tokio::sync::mpsc::Sender<CellEvent>,
    source: ContextSource,
) -> Result<CellHandle, SpawnError> {
    crate::platform::init_v8();
    let heap_bytes = config.limits.heap_bytes;
    let surface = config.surface;
    let (job, handle) = Job::new(config, events, None);
    cell_thread().spawn(move || {
        thread::run(
            Some(thread::prepare(heap_bytes, 0, source, surface, None)),
            job,
        )
    })?;
    Ok(handle)
}

/// A builder for a cell thread (`code-mode-cell`, [`CELL_THREAD_STACK_BYTES`] of stack),
/// however the thread gets its isolate.
pub(crate) fn cell_thread() -> std::thread::Builder {
    std::thread::Builder::new()
        .name("code-mode-cell".to_owned())
        .stack_size(CELL_THREAD_STACK_BYTES)
}

/// The name of every cell's module, in stack traces and error positions.
pub(crate) const MODULE_NAME: &str = "exec_main.mjs";

/// What a cell thread needs to run its cell (handed to a prepared thread by the pool, or
/// to a parked isolate's thread by its session's shelf).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) config: CellConfig,
    pub(crate) events: tokio::sync::mpsc::Sender<CellEvent>,
    pub(crate) inbound: std::sync::mpsc::Receiver<Inbound>,
    pub(crate) control: Arc<CellControl>,
    /// Dropped when the thread is done with the cell (isolate disposed, or reset and
    /// parked): what the owner's `join` waits for.
    pub(crate) done: std::sync::mpsc::Sender<()>,
    /// The session's shelf, where the isolate goes after a normal end.
    pub(crate) shelf: Option<Arc<IsolateShelf>>,
}

impl Job {
    /// A job for `config` and the handle its owner drives it with.
    fn new(
        config: CellConfig,
        events: tokio::sync::mpsc::Sender<CellEvent>,
        shelf: Option<Arc<IsolateShelf>>,
    ) -> (Self, CellHandle) {
        let (commands, inbound) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let control = Arc::new(CellControl::default());
        let job = Job {
            config,
            events,
            inbound,
            control: Arc::clone(&control),
            done,
            shelf,
        };
        let handle = CellHandle {
            commands,
            control,
            done: Mutex::new(Some(finished)),
        };
        (job, handle)
    }

    /// Whether the job's heap limit is the one pool threads are prepared with.
    fn pooled(&self) -> bool {
        self.config.limits.heap_bytes == pool::POOLED_HEAP_BYTES
    }
}

/// How many tool functions a cell of `tools` binds eagerly (functions prepared ahead are
/// bound by index): up to the last tool that is not deferred. Deferred tools, of which
/// there may be thousands, get their functions when a cell first uses one.
pub(crate) fn eager_tool_count(tools: &[ToolDefinition]) -> usize {
    tools
        .iter()
        .rposition(|tool| !tool.deferred)
        .map_or(0, |last| last + 1)
}
