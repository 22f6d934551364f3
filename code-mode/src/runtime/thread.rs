//! The cell thread: creates the isolate, installs the globals, evaluates the module and runs
//! the cell's event loop until the cell completes or is terminated.
//!
//! The loop: drain microtasks, decide whether the cell has ended, otherwise apply the next
//! command (a tool answer or a timer firing), waiting on the inbound queue when it is
//! empty (`waiting.rs`). Every entry into JS is followed by the same end check, so
//! `exit()`, termination and the heap limit are noticed wherever JS was running.
//!
//! The compile and the evaluation are traced under the cell's span. When that span's
//! subscriber takes a span's times (`code_mode_trace::TakesTimes`: the runtime's layer, the
//! fronts' records) they are only measured as they run, and their spans are made once the
//! loop is idle or the end is reported, off the answer's path: straight into records under
//! a layer that takes measured spans (`code_mode_trace::TakesMeasured`: the runtime's),
//! else as `tracing` spans given the measured times.

use super::MODULE_NAME;
use super::callbacks::{self, CountingAllocator, HeapGuard};
use super::helpers::BuiltTools;
use super::snapshot::{self, ContextSource};
use super::state::{CellState, StateRef};
use super::typescript;
use super::values::{self, v8_str};
use super::waiting::Waiting;
use super::watchdog::{self, Watched};
use super::{CellCommand, CellEvent, CellOutcome, Inbound};
use code_mode_protocol::Surface;
use code_mode_protocol::ToolDefinition;
use code_mode_protocol::{CallId, CellFailure, FailureKind, JsonText, ToolError, texts};
use code_mode_trace::traced::under;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime};

/// `ArrayBuffer`s may use 1/`ARRAY_BUFFER_SHARE` of the heap limit. V8 counts their
/// external memory toward the heap limit too, so a smaller buffer budget makes an
/// oversized allocation a catchable `RangeError` rather than the end of the cell.
const ARRAY_BUFFER_SHARE: u64 = 2;

/// The largest cell source, in bytes, for the compiler and the TypeScript stripper alike.
/// Far beyond any script a model writes; it bounds what a hostile source costs to parse.
pub(crate) const MAX_SOURCE_BYTES: usize = 16 * 1024 * 1024;

/// An isolate and its context created ahead of the cell, with everything that does not
/// depend on the cell set up (the helpers, the removed globals). Used for exactly one cell,
/// on the thread that created it.
pub(crate) struct Prepared {
    /// The cell's context and what was built in it. Dropped first (field order).
    fresh: FreshContext,
    /// Dropped before `heap_guard` (field order), which V8 points at.
    isolate: v8::OwnedIsolate,
    heap_guard: Box<HeapGuard>,
    /// The heap limit it was created with.
    pub(crate) heap_bytes: u64,
    /// Where its contexts come from (the startup snapshot, or built by hand).
    source: ContextSource,
    /// The globals its context has.
    surface: Surface,
}

/// A context made for the next cell, never entered before it runs.
struct FreshContext {
    context: v8::Global<v8::Context>,
    /// Tool functions bound to indices 0, 1, ... (not reachable from JS until the cell's
    /// `tools` object is built from them).
    tool_functions: Vec<v8::Global<v8::Function>>,
    /// `tools` and `ALL_TOOLS` built ahead for the tools of the session's previous cell,
    /// used if this cell has the same (the usual case: an agent passes the same tools to
    /// each exec).
    built_tools: Option<(Arc<[ToolDefinition]>, BuiltTools)>,
}

/// Creates an isolate for a cell with `heap_bytes` of heap, its context with the helpers
/// (from `source`), `tool_functions` tool functions and (for `likely_tools`) the cell's
/// `tools` and `ALL_TOOLS` built ahead. Call it on the cell's thread.
pub(crate) fn prepare(
    heap_bytes: u64,
    tool_functions: usize,
    source: ContextSource,
    surface: Surface,
    likely_tools: Option<Arc<[ToolDefinition]>>,
) -> Prepared {
    let heap_guard = Box::new(HeapGuard::new());
    let source = snapshot::effective(source);
    let params = v8::CreateParams::default()
        .heap_limits(0, usize::try_from(heap_bytes).unwrap_or(usize::MAX))
        .array_buffer_allocator(
            CountingAllocator::new_v8(
                heap_bytes / ARRAY_BUFFER_SHARE,
                heap_guard.buffer_refusals(),
            )
            .make_shared(),
        );
    let mut isolate = v8::Isolate::new(snapshot::isolate_params(params, source));
    heap_guard.guard(isolate.thread_safe_handle());
    isolate.set_microtasks_policy(v8::MicrotasksPolicy::Explicit);
    isolate.set_host_import_module_dynamically_callback(callbacks::dynamic_import);
    isolate.add_near_heap_limit_callback(callbacks::near_heap_limit, heap_guard.as_callback_data());
    let prepared = Prepared {
        fresh: new_context(&mut isolate, source, surface, tool_functions, likely_tools),
        isolate,
        heap_guard,
        heap_bytes,
        source,
        surface,
    };
    snapshot::note_isolate_prepared();
    prepared
}

/// A fresh context on `isolate` with every cell-independent helper (the snapshot's, or
/// installed now), `tool_functions` tool functions bound to indices 0, 1, ..., and (for
/// `likely_tools`) the cell's `tools` and `ALL_TOOLS` built but not yet defined.
fn new_context(
    isolate: &mut v8::OwnedIsolate,
    source: ContextSource,
    surface: Surface,
    tool_functions: usize,
    likely_tools: Option<Arc<[ToolDefinition]>>,
) -> FreshContext {
    v8::scope!(let scope, isolate);
    let context = v8::Context::new(scope, Default::default());
    code_mode_internal::hop!("fresh context created");
    let scope = &mut v8::ContextScope::new(scope, context);
    snapshot::add_helpers(scope, source, surface);
    code_mode_internal::hop!("fresh context has its helpers");
    let tool_functions = (0..tool_functions)
        .map(|index| {
            let function = super::helpers::new_tool_function(scope, index);
            v8::Global::new(scope, function)
        })
        .collect::<Vec<_>>();
    let built_tools = likely_tools.map(|tools| {
        let built = super::helpers::build_tools(scope, &tools, &tool_functions);
        (tools, built)
    });
    FreshContext {
        context: v8::Global::new(scope, context),
        tool_functions,
        built_tools,
    }
}

/// The cell thread's entry point: runs the job's cell in `prepared` (or a fresh isolate if
/// it was prepared for another heap limit). With a shelf, an isolate whose cell ended
/// normally is reset, given a fresh context, and parked on the shelf for the session's
/// next cell (CONTRACT §7); the thread then runs that cell too, until the isolate is not
/// reusable, nobody takes it within [`super::reuse::IDLE_RELEASE`], or the shelf is gone.
pub(super) fn run(prepared: Option<Prepared>, job: super::Job) {
    let prepared = match prepared {
        Some(prepared)
            if prepared.heap_bytes == job.config.limits.heap_bytes
                && prepared.surface == job.config.surface =>
        {
            prepared
        }
        _ => prepare(
            job.config.limits.heap_bytes,
            0,
            ContextSource::preferred(),
            job.config.surface,
            None,
        ),
    };
    run_on_shelf(prepared, job, None);
}

/// The thread of a shelf's spare isolate (see [`super::reuse`]): prepares an isolate for
/// cells like the one that ordered it, places it like a reset one, and then lives as any
/// cell thread of the shelf, except that it leaves the shelf as soon as no cell took it
/// for [`super::reuse::IDLE_COLLECT`].
pub(super) fn run_spare(spare: super::reuse::Spare) {
    let like = spare.like();
    let mut prepared = prepare(
        like.heap_bytes,
        super::eager_tool_count(&like.tools),
        ContextSource::preferred(),
        like.surface,
        Some(Arc::clone(&like.tools)),
    );
    let (preparing, guard) = spare.prepared();
    if let Some(job) = place(&mut prepared, preparing, None, Some(&guard)) {
        run_on_shelf(prepared, *job, Some(guard));
    }
}

/// Runs `job` on `prepared`, then each next cell the session's shelf hands the isolate
/// (see [`run`]). `spare`: the isolate is the shelf's spare.
fn run_on_shelf(
    mut prepared: Prepared,
    mut job: super::Job,
    spare: Option<super::reuse::SpareGuard>,
) {
    loop {
        let tools = Arc::clone(&job.config.tools);
        let source = prepared.source;
        let surface = prepared.surface;
        let heap_bytes = prepared.heap_bytes;
        let (mut isolate, heap_guard, resetting, done) = run_cell(prepared, job);
        let reset = resetting.is_some() && super::reuse::reset(&mut isolate, &heap_guard);
        code_mode_internal::hop!("isolate reset");
        let resetting = match (reset, resetting) {
            (true, Some(resetting)) => resetting,
            (_, resetting) => {
                // Cells that waited for this isolate go elsewhere first. Then the isolate
                // goes, before the heap guard V8 points at. The owner's `join` returns
                // once both are gone.
                drop(resetting);
                drop(isolate);
                drop(heap_guard);
                drop(done);
                return;
            }
        };
        // Functions ahead only for the tools bound eagerly.
        let eager = super::eager_tool_count(&tools);
        let fresh = new_context(&mut isolate, source, surface, eager, Some(tools));
        prepared = Prepared {
            fresh,
            isolate,
            heap_guard,
            heap_bytes,
            source,
            surface,
        };
        match place(&mut prepared, resetting, Some(done), spare.as_ref()) {
            Some(next) => job = *next,
            None => return,
        }
    }
}

/// Places a ready isolate: it takes the cell that waited for it, else goes on the shelf
/// and waits for the session's next cell, which it returns. `None`: nobody came in time,
/// or the shelf let the isolate go (it is then disposed of). The owner of the cell that
/// ended (`done`) learns of the end once the isolate is placed. A spare leaves the shelf
/// after the first wait without a cell; another isolate collects the garbage then and
/// waits on.
fn place(
    prepared: &mut Prepared,
    resetting: super::reuse::Resetting,
    done: Option<mpsc::Sender<()>>,
    spare: Option<&super::reuse::SpareGuard>,
) -> Option<Box<super::Job>> {
    let parked = match resetting.park() {
        // A cell of the session waited for this isolate: it runs now.
        super::reuse::Placed::Job(next) => return Some(next),
        super::reuse::Placed::Parked(parked) => parked,
    };
    code_mode_internal::hop!("fresh context parked");
    // On the shelf: the owner's `join` returns, and the session's next cell can start.
    drop(done);
    // The earlier cells' garbage is collected once the session is idle a moment.
    let mut next = parked.wait(super::reuse::IDLE_COLLECT);
    if matches!(next, super::reuse::Waited::Idle) {
        if spare.is_some() {
            return parked.leave();
        }
        super::reuse::collect_idle(&mut prepared.isolate);
        next = parked.wait(super::reuse::IDLE_RELEASE);
    }
    match next {
        super::reuse::Waited::Job(next) => Some(next),
        super::reuse::Waited::Idle => parked.leave(),
        super::reuse::Waited::Released => None,
    }
}

/// Runs one cell on a prepared isolate; gives the isolate back, with its reset under way
/// for the session's shelf when it may serve the session's next cell (the cell ended
/// normally: not terminated, no limit hit).
fn run_cell(
    prepared: Prepared,
    job: super::Job,
) -> (
    v8::OwnedIsolate,
    Box<HeapGuard>,
    Option<super::reuse::Resetting>,
    mpsc::Sender<()>,
) {
    code_mode_internal::hop!("cell thread has the job");
    let super::Job {
        config,
        events,
        inbound,
        control,
        done,
        shelf,
    } = job;
    let source = prepared.source;
    let Prepared {
        fresh:
            FreshContext {
                context,
                tool_functions,
                built_tools,
            },
        mut isolate,
        heap_guard,
        ..
    } = prepared;
    control.attach(isolate.thread_safe_handle());
    let watched = watchdog::watch_current_thread(
        Duration::from_millis(config.limits.cpu_budget_ms),
        Arc::clone(&control),
    );

    let state: StateRef = Rc::new(RefCell::new(CellState::new(
        events.clone(),
        Arc::clone(&control),
        &config,
    )));
    isolate.set_slot(Rc::clone(&state));

    let outcome = {
        v8::scope!(let scope, &mut isolate);
        let context = v8::Local::new(scope, context);
        state.borrow_mut().context = Some(v8::Global::new(scope, context));
        let scope = &mut v8::ContextScope::new(scope, context);
        let driver = Driver {
            state: Rc::clone(&state),
            heap_guard: &heap_guard,
            watched: watched.as_deref(),
            waiting: Waiting::new(&inbound, watched.as_deref()),
            tool_functions,
            built_tools,
            surface: config.surface,
            span: config.span.clone(),
            measured: code_mode_trace::takes_times(&config.span),
        };
        let outcome = driver.run(scope, &config.source);
        state.borrow_mut().release_handles();
        outcome
    };
    // The cell is over: its owner and its watchdog can no longer stop this isolate (the
    // session's next cell may run on it); a stop requested before this is cancelled by
    // the reset.
    control.detach();
    let cpu_time = watched.as_deref().and_then(Watched::cpu_time);
    let exceeded = watched.as_deref().is_some_and(Watched::exceeded);
    drop(watched);
    let reusable = matches!(outcome, CellOutcome::Completed { .. })
        && !heap_guard.hit()
        && !exceeded
        && !state.borrow().stopped_by_owner();
    // From here on nothing the cell left behind may take effect.
    state.borrow_mut().request_exit();
    tracing::trace!(?outcome, reusable, "cell finished");
    // An isolate built by hand while the blob was being made is not kept once the blob
    // is there: the session's next cells get a pool isolate of the snapshot.
    let current =
        source == ContextSource::Snapshot || ContextSource::preferred() == ContextSource::Built;
    // Counted as being reset before the end is reported, so that the session's next cell,
    // which may follow the report at once, can wait for it.
    let resetting = shelf
        .filter(|_| reusable && current)
        .map(|shelf| shelf.resetting());
    report_end(&events, &inbound, &config.span, outcome, cpu_time);
    (isolate, heap_guard, resetting, done)
}

/// Reports the cell's end to its owner (who may be gone already; nothing else to tell
/// then), waits for the owner's release, then traces what the cell left to trace under
/// `span`.
fn report_end(
    events: &tokio::sync::mpsc::Sender<CellEvent>,
    inbound: &mpsc::Receiver<Inbound>,
    span: &tracing::Span,
    outcome: CellOutcome,
    cpu_time: Option<Duration>,
) {
    code_mode_internal::hop!("cell thread reports the end");
    if events.blocking_send(CellEvent::Finished(outcome)).is_ok() {
        await_release(inbound);
    }
    // Once the answer is on its way (on two cores, spans made while the owner delivers
    // it would compete with it for a core): the spans of the work measured, and the CPU
    // time this incarnation used on the cell's span (a field it declares; this thread
    // holds the span, so it is still open).
    trace_measured(span);
    if let Some(used) = cpu_time {
        span.record("cpu.time_ms", used.as_secs_f64() * 1_000.0);
    }
}

/// Waits until the owner released the finished cell ([`super::CellHandle::release`]),
/// went away, or [`super::RELEASE_PATIENCE`] passed. Commands that arrive meanwhile are
/// for a cell that is over and are dropped.
fn await_release(inbound: &mpsc::Receiver<Inbound>) {
    let deadline = std::time::Instant::now() + super::RELEASE_PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match inbound.recv_timeout(left) {
            Ok(Inbound::Release)
            | Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                return;
            }
            Ok(Inbound::Command(_) | Inbound::Wake) => {}
        }
    }
}

/// A piece of a cell's work traced under the cell's span.
#[derive(Clone, Copy)]
enum Work {
    Compile { bytes: usize, typescript: bool },
    Evaluate,
}

/// The names of the spans of a cell's [`Work`].
const COMPILE_SPAN: &str = "code_mode.compile";
const EVALUATE_SPAN: &str = "code_mode.evaluate";

/// The span of `work` under `parent` (none when `parent` is disabled).
fn work_span(parent: &tracing::Span, work: Work) -> tracing::Span {
    let span = under(parent, || match work {
        Work::Compile { bytes, typescript } => {
            let span = tracing::info_span!(
                parent: parent,
                COMPILE_SPAN,
                source.bytes = i64::try_from(bytes).unwrap_or(i64::MAX),
                typescript = tracing::field::Empty,
            );
            if typescript {
                span.record("typescript", true);
            }
            span
        }
        Work::Evaluate => tracing::info_span!(parent: parent, EVALUATE_SPAN),
    });
    span.unwrap_or_else(tracing::Span::none)
}

/// A piece of a cell's work being traced.
enum WorkTrace {
    /// Its span, entered: made as the work starts, ended as it ends.
    Live(tracing::span::EnteredSpan),
    /// Its times, kept for a span made later (ended: the work joins [`MEASURED`]).
    Measured(Measured),
}

impl WorkTrace {
    /// The source compiled is TypeScript, its types stripped.
    fn typescript(&mut self) {
        match self {
            Self::Live(span) => {
                span.record("typescript", true);
            }
            Self::Measured(Measured {
                work: Work::Compile { typescript, .. },
                ..
            }) => *typescript = true,
            Self::Measured(_) => {}
        }
    }
}

/// Work measured as it runs; dropped as it ends, it joins the thread's [`MEASURED`].
struct Measured {
    work: Work,
    start: SystemTime,
}

impl Drop for Measured {
    fn drop(&mut self) {
        let ended = (self.work, self.start, SystemTime::now());
        MEASURED.with(|measured| measured.borrow_mut().push(ended));
    }
}

thread_local! {
    /// The work this cell thread measured whose spans are not made yet.
    static MEASURED: RefCell<Vec<(Work, SystemTime, SystemTime)>> =
        const { RefCell::new(Vec::new()) };
}

/// Makes the spans of the work this thread measured, under `parent` and with the times
/// measured: once the cell is idle, or its owner released it after its end, so that the
/// cell's answer does not wait for its spans.
/// Under a layer that takes measured spans (the runtime's), each goes straight into its
/// record; under others, it is made as a `tracing` span with the times measured.
fn trace_measured(parent: &tracing::Span) {
    use code_mode_trace::{MeasuredSpan, MeasuredValue};
    let measured = MEASURED.with(|measured| std::mem::take(&mut *measured.borrow_mut()));
    for (work, start, end) in measured {
        let compile_fields;
        let (name, fields): (_, &[_]) = match work {
            Work::Compile { bytes, typescript } => {
                compile_fields = [
                    (
                        "source.bytes",
                        MeasuredValue::I64(i64::try_from(bytes).unwrap_or(i64::MAX)),
                    ),
                    ("typescript", MeasuredValue::Bool(true)),
                ];
                let kept = if typescript { 2 } else { 1 };
                (COMPILE_SPAN, &compile_fields[..kept])
            }
            Work::Evaluate => (EVALUATE_SPAN, &[]),
        };
        let span = MeasuredSpan {
            name,
            start,
            end,
            fields,
        };
        if !code_mode_trace::take_measured(parent, &span) {
            code_mode_trace::made_at(start, end, || drop(work_span(parent, work)));
        }
    }
}

/// Runs one cell's module and event loop.
struct Driver<'g> {
    state: StateRef,
    heap_guard: &'g HeapGuard,
    watched: Option<&'g Watched>,
    /// The inbound queue, and how the thread waits on it.
    waiting: Waiting<'g>,
    /// Tool functions prepared ahead of the cell, by index.
    tool_functions: Vec<v8::Global<v8::Function>>,
    /// `tools` and `ALL_TOOLS` built ahead, and for which tools.
    built_tools: Option<(Arc<[ToolDefinition]>, BuiltTools)>,
    /// The globals the cell sees (how `tools` and `ALL_TOOLS` are defined).
    surface: Surface,
    /// The span compile and evaluation are traced under ([`super::CellConfig::span`]).
    span: tracing::Span,
    /// Whether that span's subscriber takes times: compile and evaluation are then
    /// measured, and their spans made once the thread is idle ([`trace_measured`]).
    measured: bool,
}

impl Driver<'_> {
    /// `work` traced under the cell's span as it runs: live, or measured (see
    /// [`Self::measured`]).
    fn traced(&self, work: Work) -> WorkTrace {
        if self.measured {
            return WorkTrace::Measured(Measured {
                work,
                start: SystemTime::now(),
            });
        }
        WorkTrace::Live(work_span(&self.span, work).entered())
    }

    fn run(mut self, scope: &mut v8::PinScope<'_, '_>, source: &str) -> CellOutcome {
        if let Some(outcome) = self.ended_by_flags() {
            return outcome;
        }
        let tools = Arc::clone(&self.state.borrow().tools);
        let built = match self.built_tools.take() {
            Some((built_for, built)) if Arc::ptr_eq(&built_for, &tools) || built_for == tools => {
                built
            }
            _ => super::helpers::build_tools(scope, &tools, &self.tool_functions),
        };
        super::helpers::define_tools(scope, built, self.surface);
        if self.state.borrow_mut().owner_left() {
            return self.ended_by_flags().unwrap_or(CellOutcome::Terminated);
        }
        code_mode_internal::hop!("tools installed");
        let promise = match self.start_module(scope, source) {
            Ok(promise) => promise,
            Err(outcome) => return outcome,
        };
        code_mode_internal::hop!("module compiled and evaluated");
        let promise = v8::Global::new(scope, promise);
        let mut commands_applied = 0u64;
        loop {
            // A handle scope per turn: the handles a turn makes (a parsed tool result, a
            // resolver) are released with it instead of piling up until the cell ends.
            v8::scope!(let scope, scope);
            if let Some(outcome) = self.turn(scope, &promise, &mut commands_applied) {
                return outcome;
            }
        }
    }

    /// One turn of the event loop: run the microtasks, check whether the module settled,
    /// then apply the next command (waiting for one when there is nothing to do).
    fn turn(
        &mut self,
        scope: &mut v8::PinScope<'_, '_>,
        promise: &v8::Global<v8::Promise>,
        commands_applied: &mut u64,
    ) -> Option<CellOutcome> {
        scope.perform_microtask_checkpoint();
        let module_promise = v8::Local::new(scope, promise);
        if let Some(outcome) = self.settled(scope, module_promise) {
            return Some(outcome);
        }
        let answers_due = !self.state.borrow().pending_calls.is_empty();
        let message = match self.waiting.soon(answers_due) {
            Ok(message) => message,
            Err(mpsc::TryRecvError::Empty) => {
                pump_platform_tasks(scope);
                if !self.state.borrow_mut().emit(CellEvent::Idle {
                    commands_applied: *commands_applied,
                }) {
                    return None; // stopped: the end check of the next turn decides how
                }
                trace_measured(&self.span);
                match self.waiting.next() {
                    Ok(message) => message,
                    Err(mpsc::RecvError) => return Some(CellOutcome::Terminated),
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => return Some(CellOutcome::Terminated),
        };
        if let Inbound::Command(command) = message {
            *commands_applied += 1;
            self.apply(scope, command);
        }
        None
    }

    /// Compiles, instantiates and evaluates the module; returns its evaluation promise.
    fn start_module<'s>(
        &self,
        scope: &mut v8::PinScope<'s, '_>,
        source: &str,
    ) -> Result<v8::Local<'s, v8::Promise>, CellOutcome> {
        v8::tc_scope!(let tc, scope);
        if source.len() > MAX_SOURCE_BYTES {
            return Err(self.script_error(texts::source_too_large(source.len(), MAX_SOURCE_BYTES)));
        }
        let mut compiling = self.traced(Work::Compile {
            bytes: source.len(),
            typescript: false,
        });
        let module = match compile(tc, source) {
            Some(module) => module,
            None => {
                compiling.typescript();
                let stripped = self.typescript_source(tc, source)?;
                tc.reset();
                match compile(tc, &stripped) {
                    Some(module) => module,
                    None => return Err(self.exception_outcome(tc)),
                }
            }
        };
        drop(compiling);
        code_mode_internal::hop!("module compiled");
        // The module's synchronous part, up to its first wait.
        let _evaluating = self.traced(Work::Evaluate);
        if module.instantiate_module(tc, callbacks::resolve_module) != Some(true) {
            return Err(self.exception_outcome(tc));
        }
        code_mode_internal::hop!("module instantiated");
        let Some(result) = module.evaluate(tc) else {
            return Err(self.exception_outcome(tc));
        };
        match v8::Local::<v8::Promise>::try_from(result) {
            Ok(promise) => {
                // The cell observes the outcome itself; never report it as unhandled.
                promise.mark_as_handled();
                Ok(promise)
            }
            // Modules evaluate to a promise; anything else means it already completed.
            Err(_) => Err(self.completed(None)),
        }
    }

    /// The source to compile after V8 refused `source` as JavaScript: its TypeScript types
    /// stripped (`typescript.rs`). V8's own error stands when the source is no TypeScript
    /// either, unless the stripper found an error further on (V8 stopped at a type
    /// annotation before it).
    fn typescript_source(
        &self,
        tc: &mut v8::PinnedRef<'_, v8::TryCatch<'_, '_, v8::HandleScope<'_>>>,
        source: &str,
    ) -> Result<String, CellOutcome> {
        // Just past the token V8 stopped at: an error swc finds there or before is the
        // same error, and V8's words stand.
        let v8_position = tc.message().map(|message| typescript::Position {
            line: message.get_line_number(tc).unwrap_or(0),
            column: message.get_end_column() + 1,
        });
        let is_syntax_error = tc.exception().is_some_and(|exception| {
            values::exception_message(tc, exception).starts_with("SyntaxError")
        });
        if !is_syntax_error {
            return Err(self.exception_outcome(tc));
        }
        let v8_error = self.exception_outcome(tc);
        match typescript::strip(source) {
            Ok(stripped) if stripped != source => Ok(stripped),
            Ok(_) => Err(v8_error),
            Err(typescript::StripError::Refused(text)) => Err(self.script_error(text)),
            Err(typescript::StripError::Syntax { message, position })
                if position.is_some() && position > v8_position =>
            {
                let text = typescript::syntax_error_text(&message, position);
                Err(self.script_error(text))
            }
            Err(typescript::StripError::Syntax { .. }) => Err(v8_error),
        }
    }

    /// The outcome after an entry into JS failed with the exception caught by `tc`.
    fn exception_outcome(
        &self,
        tc: &mut v8::PinnedRef<'_, v8::TryCatch<'_, '_, v8::HandleScope<'_>>>,
    ) -> CellOutcome {
        if let Some(outcome) = self.ended_by_flags() {
            return outcome;
        }
        let Some(exception) = tc.exception() else {
            return self.script_error(texts::FAILED_WITHOUT_EXCEPTION.to_owned());
        };
        let text = values::error_text(tc, exception, &|| self.state.borrow().stopped());
        self.ended_by_flags()
            .unwrap_or_else(|| self.script_error(text))
    }

    /// A completed outcome carrying the cell's stored writes.
    fn completed(&self, failure: Option<CellFailure>) -> CellOutcome {
        CellOutcome::Completed {
            failure,
            stored_writes: std::mem::take(&mut self.state.borrow_mut().writes),
        }
    }

    /// The outcome of a cell that ended with an error of its script's (an exception, a
    /// syntax error, a rejected module promise).
    fn script_error(&self, text: String) -> CellOutcome {
        self.completed(Some(CellFailure::new(FailureKind::ScriptError, text)))
    }

    /// Ends decided by flags, in priority order: termination by the owner, the heap limit,
    /// the CPU budget, `exit()`, an exception in a timer callback.
    fn ended_by_flags(&self) -> Option<CellOutcome> {
        let (terminated, exited, timer_error) = self.state.borrow_mut().take_end_flags();
        if terminated {
            return Some(CellOutcome::Terminated);
        }
        if self.heap_guard.hit() {
            let limit_mib = self.state.borrow().limits.heap_bytes / (1024 * 1024);
            let text = texts::out_of_memory(limit_mib);
            return Some(self.completed(Some(CellFailure::new(FailureKind::OutOfMemory, text))));
        }
        if let Some(watched) = self.watched.filter(|watched| watched.exceeded()) {
            let budget = watched.budget().as_secs_f64();
            let text = texts::cpu_budget_exceeded(budget);
            return Some(self.completed(Some(CellFailure::new(FailureKind::CpuBudget, text))));
        }
        if exited {
            return Some(self.completed(None));
        }
        timer_error.map(|text| self.script_error(text))
    }

    /// Whether the cell has ended, after microtasks were drained.
    fn settled(
        &self,
        scope: &mut v8::PinScope<'_, '_>,
        module_promise: v8::Local<'_, v8::Promise>,
    ) -> Option<CellOutcome> {
        if let Some(outcome) = self.ended_by_flags() {
            return Some(outcome);
        }
        match module_promise.state() {
            v8::PromiseState::Fulfilled => Some(self.completed(None)),
            v8::PromiseState::Rejected => {
                let reason = module_promise.result(scope);
                let text = values::error_text(scope, reason, &|| self.state.borrow().stopped());
                // Extracting the text may have run user code that called `exit()` or was
                // terminated: those win.
                Some(
                    self.ended_by_flags()
                        .unwrap_or_else(|| self.script_error(text)),
                )
            }
            v8::PromiseState::Pending => {
                let state = self.state.borrow();
                let nothing_pending = state.pending_calls.is_empty() && state.timers.is_empty();
                drop(state);
                nothing_pending.then(|| {
                    self.completed(Some(CellFailure::new(FailureKind::Stalled, texts::STALLED)))
                })
            }
        }
    }

    /// Applies a command from the owner.
    fn apply(&self, scope: &mut v8::PinScope<'_, '_>, command: CellCommand) {
        if self.state.borrow().stopped() {
            return;
        }
        match command {
            CellCommand::ToolResult { id, result } => self.settle_tool_call(scope, id, result),
            CellCommand::TimerFired { id } => self.fire_timer(scope, id),
        }
    }

    fn settle_tool_call(
        &self,
        scope: &mut v8::PinScope<'_, '_>,
        id: CallId,
        result: Result<JsonText, ToolError>,
    ) {
        code_mode_internal::hop!("cell thread has the tool result");
        let Some(resolver) = self.state.borrow_mut().pending_calls.remove(&id.number()) else {
            tracing::debug!(%id, "answer for an unknown or settled tool call ignored");
            return;
        };
        let resolver = v8::Local::new(scope, resolver);
        let max_bytes = self.state.borrow().limits.max_tool_payload_bytes;
        let json = match result.map(JsonText::into_string) {
            Ok(json) if json.len() as u64 > max_bytes => Err(texts::tool_result_rejected(
                &texts::over_payload_limit(json.len(), max_bytes),
            )),
            Ok(json) if values::exceeds_depth_limit(&json) => {
                Err(texts::tool_result_rejected(&values::depth_error_detail()))
            }
            Ok(json) => Ok(json),
            Err(error) => Err(error.into_message()),
        };
        match json {
            Ok(json) => {
                v8::tc_scope!(let tc, scope);
                match values::parse(tc, &json) {
                    Some(value) => resolve_plain(tc, resolver, value),
                    None => {
                        tc.reset();
                        let reason =
                            v8_str(tc, &texts::tool_result_rejected(&texts::NOT_VALID_JSON));
                        resolver.reject(tc, reason.into());
                    }
                }
            }
            Err(message) => {
                let reason = v8_str(scope, &message);
                resolver.reject(scope, reason.into());
            }
        }
    }

    fn fire_timer(&self, scope: &mut v8::PinScope<'_, '_>, id: u64) {
        let Some(timer) = self.state.borrow_mut().timers.remove(&id) else {
            return;
        };
        v8::tc_scope!(let tc, scope);
        let callback = v8::Local::new(tc, timer.callback);
        let args: Vec<v8::Local<v8::Value>> = timer
            .args
            .iter()
            .map(|arg| v8::Local::new(tc, arg))
            .collect();
        let receiver = v8::undefined(tc).into();
        if callback.call(tc, receiver, &args).is_some() || tc.has_terminated() {
            return;
        }
        let Some(exception) = tc.exception() else {
            return;
        };
        if self.state.borrow().stopped() {
            return;
        }
        let text = values::error_text(tc, exception, &|| self.state.borrow().stopped());
        self.state.borrow_mut().record_timer_error(text);
    }
}

/// Resolves `resolver` with `value` as a plain value, never as a thenable: a cell that
/// installs `Object.prototype.then` must not be able to hijack a tool's answer. An own
/// `then: undefined` shadows any inherited `then` while the promise machinery looks it up
/// (synchronously), and is removed right after.
pub(crate) fn resolve_plain(
    scope: &v8::PinScope<'_, '_>,
    resolver: v8::Local<'_, v8::PromiseResolver>,
    value: v8::Local<'_, v8::Value>,
) {
    if let Ok(object) = v8::Local::<v8::Object>::try_from(value) {
        let then: v8::Local<v8::Name> = v8_str(scope, "then").into();
        if object.has_own_property(scope, then) == Some(false) {
            let undefined = v8::undefined(scope).into();
            if object.create_data_property(scope, then, undefined) == Some(true) {
                resolver.resolve(scope, value);
                object.delete(scope, then.into());
                return;
            }
        }
    }
    resolver.resolve(scope, value);
}

/// Compiles `source` as the cell's module; `None` with the exception in `tc`.
fn compile<'s>(scope: &v8::PinScope<'s, '_>, source: &str) -> Option<v8::Local<'s, v8::Module>> {
    let source = v8_str(scope, source);
    let name = v8_str(scope, MODULE_NAME);
    let origin = v8::ScriptOrigin::new(
        scope,
        name.into(),
        0,
        0,
        false,
        0,
        None,
        false,
        false,
        true,
        None,
    );
    let mut source = v8::script_compiler::Source::new(source, Some(&origin));
    v8::script_compiler::compile_module(scope, &mut source)
}

/// Runs V8's pending foreground tasks for this isolate (GC and compilation follow-ups).
fn pump_platform_tasks(scope: &mut v8::PinScope<'_, '_>) {
    let platform = crate::platform::platform();
    while v8::Platform::pump_message_loop(platform, scope, false) {}
}

/// An isolate that makes fresh cell contexts as a cell thread does, for the benchmarks
/// that compare the two sources (only with the `internals` feature).
#[cfg(feature = "internals")]
pub struct ContextBench {
    isolate: v8::OwnedIsolate,
    source: ContextSource,
}

#[cfg(feature = "internals")]
impl ContextBench {
    pub fn new(source: ContextSource) -> Self {
        crate::platform::init_v8();
        let source = snapshot::effective(source);
        let isolate = v8::Isolate::new(snapshot::isolate_params(
            v8::CreateParams::default(),
            source,
        ));
        Self { isolate, source }
    }

    /// Makes one fresh context with its helpers, and lets it go.
    pub fn fresh_context(&mut self) {
        v8::scope!(let scope, &mut self.isolate);
        let context = v8::Context::new(scope, Default::default());
        let scope = &mut v8::ContextScope::new(scope, context);
        snapshot::add_helpers(scope, self.source, code_mode_protocol::Surface::Contract);
    }

    /// Makes one fresh context with its helpers and `tools` built ahead, as a reset does
    /// (the cell thread's own `new_context`) for a session whose cells have those tools,
    /// and lets it go.
    pub fn fresh_context_with_tools(
        &mut self,
        tools: &std::sync::Arc<[code_mode_protocol::ToolDefinition]>,
    ) {
        std::hint::black_box(new_context(
            &mut self.isolate,
            self.source,
            code_mode_protocol::Surface::Contract,
            super::eager_tool_count(tools),
            Some(std::sync::Arc::clone(tools)),
        ));
    }
}
