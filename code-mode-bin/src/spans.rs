//! The spans of traced work, handed back to the host. The sandbox allows no socket, so the
//! runtime cannot export; and an operator should configure one endpoint, not two. A
//! request that carries a trace context (the host's span of the cell it starts or
//! rebuilds) runs under a `code_mode.runtime` span, a child of that context, and what the
//! runtime traces of the cell (compile, evaluate, timers, hibernation, replay) hangs under
//! it. The spans that end go back on the connection that asked for them, batched: while
//! the request runs, at the flush once they waited [`BATCH_DELAY`] (a long cell's spans are
//! not held); when the request's own span ends, in one [`ServerMessage::Spans`] that rides
//! with the connection's next frame ([`Outbox::send_riding`]: ahead of it, in the same
//! write, or alone within [`code_mode_wire::RIDE_WITHIN`]). So cells back to back cost
//! neither process a wake-up more than untraced ones (a cell's spans go with the next
//! cell's admission), and the host never exports them between a response and its caller;
//! after a cell that no other follows at once, they go alone while the connection is
//! quiet, not with the next cell's admission, where the host's export would compete with
//! that cell. The host exports them with its own, with this process's id (`process.pid`).
//!
//! The `code_mode.runtime` span lives as long as its cell here and holds what the runtime
//! knows of the whole (the CPU time, the timers that fired). A runtime that is killed never
//! ends it, so its children are handed back as children of the host's span instead of its
//! own: none is left pointing at a span no receiver has.
//!
//! Work that carries no trace context makes no span: the cell's span is disabled, so its
//! children are never made. A span is routed by its trace id to the connection whose
//! request started that trace here; a route lives while the `code_mode.runtime` spans it
//! was made for do.
//!
//! The spans are made straight into the wire's [`SpanRecord`]s by a layer of our own
//! ([`HandBackLayer`]): the runtime keeps no OpenTelemetry SDK, and a span costs its
//! record's allocation and two clock reads on the cell's thread, not a tracer's builder,
//! sampler and processor. A cell's compile and evaluate are not even `tracing` spans here:
//! the cell's thread measures them and the layer makes their records straight from what
//! was measured ([`code_mode_trace::TakesMeasured`]), without a span's slot in the registry,
//! its extensions and its close.

use code_mode_internal::sync::lock;
use code_mode_trace::{MeasuredSpan, MeasuredValue, TakesMeasured, fresh_span_id};
use code_mode_wire::payload::{Name, SpanEvent, SpanRecord, SpanStatus, SpanValue, TraceContext};
use code_mode_wire::transport::Outbox;
use code_mode_wire::{ServerMessage, SessionId};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Instant, SystemTime};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The name of the span a traced request runs under.
pub(crate) const RUNTIME_SPAN: &str = "code_mode.runtime";

/// A trace id, as the wire carries it.
type TraceId = [u8; 16];
/// A span id, as the wire carries it.
type SpanId = [u8; 8];

/// Where the spans of one trace go: the connection that started it, the
/// `code_mode.runtime` spans still open on it (each with the host's span it stands for),
/// and the spans that ended and wait to go back together.
struct Route {
    outbox: Outbox<ServerMessage>,
    open: Vec<(SpanId, SpanId)>,
    /// Ended spans not sent yet: they go back in one message when the request's own span
    /// ends (riding with the next frame), when [`BATCH_SPANS`] wait, or at the first
    /// flush ([`FLUSHING`]) after they waited [`BATCH_DELAY`].
    pending: Vec<SpanRecord>,
    /// When the first of `pending` ended.
    pending_since: Option<Instant>,
    /// Where the flush runs (the connection's runtime); without one, each span goes back
    /// as it ends.
    runtime: Option<tokio::runtime::Handle>,
}

impl Route {
    /// Spans joined `pending`: they wait for the flush (started if stopped) while fewer
    /// than [`BATCH_SPANS`] wait and a runtime can run it, else go back now.
    fn batched(&mut self) {
        match &self.runtime {
            Some(runtime) if self.pending.len() < BATCH_SPANS => {
                self.pending_since.get_or_insert_with(Instant::now);
                keep_flushing(runtime);
            }
            _ => self.send_pending(),
        }
    }

    /// Sends what waits, if anything.
    fn send_pending(&mut self) {
        self.pending_since = None;
        if !self.pending.is_empty() {
            send(&self.outbox, std::mem::take(&mut self.pending));
        }
    }
}

/// The most ended spans a route holds before it sends them.
const BATCH_SPANS: usize = 64;

/// How long a route's ended spans wait before the flush sends them (a cell that runs for
/// hours still shows its compile, timers and hibernations as they happen). A cell shorter
/// than this sends its spans once, as it ends.
const BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether the flush runs: one task of the process, every [`BATCH_DELAY`], that sends each
/// route's spans that waited that long. Started by a route that opens (on its runtime's
/// thread, so that the cell's thread, where most spans end, rarely wakes that thread to
/// arm a timer) or by a span that joins a batch; it stops after a round that leaves no
/// span waiting, so an idle process costs no wake-ups. One task for every traced request
/// instead of one each. Read and written under the routes' lock only.
static FLUSHING: AtomicBool = AtomicBool::new(false);

/// The routes of every traced request of this process, by trace id.
static ROUTES: LazyLock<Mutex<HashMap<TraceId, Route>>> = LazyLock::new(Mutex::default);

thread_local! {
    /// The trace a `code_mode.runtime` span about to be made belongs to: the host's span
    /// (its parent) and the span's own id, set by [`runtime_span`] around the span's
    /// creation, which the layer sees on the same thread.
    static MAKING: Cell<Option<(TraceId, SpanId, SpanId)>> = const { Cell::new(None) };
}

/// The layer that turns the runtime's spans into records to hand back (only those of
/// `code_mode_trace::TRACED_TARGETS` at `INFO` or above, under a traced request).
pub(crate) fn layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let mut targets = tracing_subscriber::filter::Targets::new();
    for target in code_mode_trace::TRACED_TARGETS {
        targets = targets.with_target(target, tracing::Level::INFO);
    }
    HandBackLayer.with_filter(targets)
}

/// The route a traced request's spans need, opened once the request is under way
/// ([`open_route`]).
pub(crate) struct RouteToOpen {
    /// A handle on the request's span that keeps it from ending before its route is open.
    held: tracing::Span,
    trace_id: TraceId,
    /// The span's own id and the host's span it stands for.
    ids: (SpanId, SpanId),
}

/// The span a request traced by the host runs under, a child of the host's span; `None`
/// when `trace` is not sampled. Its spans go back once [`open_route`] opened their route:
/// the request's work is handed on first (its cell compiles meanwhile), since no span of
/// it ends that soon.
pub(crate) fn runtime_span(
    trace: TraceContext,
    session: Option<SessionId>,
) -> Option<(tracing::Span, RouteToOpen)> {
    const SAMPLED: u8 = 1;
    if trace.flags & SAMPLED == 0 || trace.trace_id == [0; 16] || trace.span_id == [0; 8] {
        return None;
    }
    let own = fresh_span_id();
    let ids = (trace.trace_id, trace.span_id, own);
    let span = claimed_spare(ids, session).or_else(|| made_span(ids, session))?;
    let route = RouteToOpen {
        held: span.clone(),
        trace_id: trace.trace_id,
        ids: (own, trace.span_id),
    };
    Some((span, route))
}

/// Opens `route` back through `outbox` (with its flush), then lets the request's span end
/// when the request does. Spans of its trace that ended before (its cell ran ahead of this
/// thread) join the route's batch.
pub(crate) fn open_route(route: RouteToOpen, outbox: &Outbox<ServerMessage>) {
    let RouteToOpen {
        held,
        trace_id,
        ids,
    } = route;
    {
        let mut routes = lock(&ROUTES);
        let route = routes.entry(trace_id).or_insert_with(|| Route {
            outbox: outbox.clone(),
            open: Vec::new(),
            pending: Vec::new(),
            pending_since: None,
            runtime: tokio::runtime::Handle::try_current().ok(),
        });
        if let Some(runtime) = &route.runtime {
            keep_flushing(runtime);
        }
        // The latest connection to trace here wins (one trace across two hosts is rare).
        route.outbox = outbox.clone();
        route.open.push(ids);
        let early = take_early(&mut lock(&EARLY), trace_id);
        if !early.is_empty() {
            route.pending.extend(early);
            route.batched();
        }
    }
    // Outside the routes' lock: the request's span may end here, and its end takes it.
    drop(held);
    // The next traced request's span, made while this one's cell runs.
    if lock(&SPARE).is_none() {
        make_spare();
    }
}

/// A `code_mode.runtime` span made ahead, with no ids yet: a traced request takes it
/// ([`claimed_spare`]) rather than make its span on its path, where a span's first making
/// since a pause costs some 20 µs of cold code (taking one, a few).
static SPARE: Mutex<Option<tracing::Span>> = Mutex::new(None);

/// Makes the spare span. Its record has no trace: ended unclaimed, it goes nowhere.
fn make_spare() {
    let spare = made_span(([0; 16], [0; 8], [0; 8]), None);
    *lock(&SPARE) = spare;
}

/// The spare span, given `ids` (its trace, the host's span it hangs under, its own id),
/// `session` and a start now; `None` when there is none, or it is not ours to give ids.
fn claimed_spare(
    ids: (TraceId, SpanId, SpanId),
    session: Option<SessionId>,
) -> Option<tracing::Span> {
    let spare = lock(&SPARE).take()?;
    let claimed = spare.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let span = registry.span(id)?;
        let mut extensions = span.extensions_mut();
        let Open(record) = extensions.get_mut::<Open>()?;
        (record.trace_id, record.parent_span_id, record.span_id) = ids;
        record.start_unix_nanos = unix_nanos(SystemTime::now());
        if let Some(session) = session {
            record.attributes.push((
                Name::from("runtime.session"),
                SpanValue::Text(session.0.to_string()),
            ));
        }
        Some(())
    });
    claimed.flatten().map(|()| spare)
}

/// The `code_mode.runtime` span of `ids` (its trace, the host's span it hangs under, its
/// own id), if the layer made it (a disabled span, or one no layer of ours saw, is none).
fn made_span(ids: (TraceId, SpanId, SpanId), session: Option<SessionId>) -> Option<tracing::Span> {
    MAKING.with(|making| making.set(Some(ids)));
    let span = tracing::info_span!(
        target: "code_mode_bin",
        RUNTIME_SPAN,
        // The runtime's own number of the session (not the id its agent core knows).
        runtime.session = session.map(|session| session.0.to_string()),
        process.pid = pid(),
        cpu.time_ms = tracing::field::Empty,
    );
    // Taken by the layer when it made the span; a span it did not make (no layer) leaves
    // it here.
    let made = MAKING.with(Cell::take).is_none();
    (made && !span.is_disabled()).then_some(span)
}

/// Makes the first traced request's `code_mode.runtime` span ahead ([`SPARE`]) and enters
/// it once, as that request will. The process does it as it starts, while its first
/// isolate is prepared, so that the first traced request pays neither for making its span
/// nor for what a span's first making costs: registering the call site, the layer's first
/// record, the thread's state. (A cell's compile and evaluate spans are made off the answer's
/// path; see `code_mode`'s cell thread.)
pub(crate) fn warm() {
    make_spare();
    if let Some(spare) = &*lock(&SPARE) {
        drop(spare.enter());
    }
}

/// This process's id, as its spans carry it: read once (each read is a system call, and
/// the sandbox lets this process fork no child whose id would differ).
fn pid() -> i64 {
    static PID: LazyLock<i64> = LazyLock::new(|| i64::from(std::process::id()));
    *PID
}

/// A span being made: its record so far (ended, it goes back as it is).
struct Open(SpanRecord);

/// Makes [`SpanRecord`]s of the spans under a traced request and hands each back as it
/// closes.
struct HandBackLayer;

impl<S> Layer<S> for HandBackLayer
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let ids = if span.name() == RUNTIME_SPAN {
            MAKING.with(Cell::take)
        } else {
            let parent = match attributes.parent() {
                Some(parent) => ctx.span(parent),
                None if attributes.is_contextual() => ctx.lookup_current(),
                None => None,
            };
            parent.and_then(|parent| {
                let (trace_id, under) = child_ids(&parent)?;
                Some((trace_id, under, fresh_span_id()))
            })
        };
        let Some((trace_id, parent_span_id, span_id)) = ids else {
            return;
        };
        let mut record = SpanRecord {
            trace_id,
            span_id,
            parent_span_id,
            name: Name::from(span.name()),
            start_unix_nanos: unix_nanos(code_mode_trace::span_start()),
            end_unix_nanos: 0,
            attributes: Vec::new(),
            events: Vec::new(),
            status: SpanStatus::Unset,
        };
        attributes.record(&mut Fields(&mut record.attributes));
        span.extensions_mut().insert(Open(record));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(Open(record)) = span.extensions_mut().get_mut::<Open>()
        {
            values.record(&mut Fields(&mut record.attributes));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(Open(record)) = extensions.get_mut::<Open>() else {
            return;
        };
        let mut attributes = Vec::new();
        event.record(&mut Fields(&mut attributes));
        let name = match attributes.iter().position(|(key, _)| key == "message") {
            Some(index) => match attributes.remove(index).1 {
                SpanValue::Text(text) => Name::from(text),
                other => Name::from(format!("{other:?}")),
            },
            None => Name::from(event.metadata().name()),
        };
        record.events.push(SpanEvent {
            name,
            unix_nanos: unix_nanos(SystemTime::now()),
            attributes,
        });
    }

    // SAFETY: the pointer returned is to a static of the type asked for.
    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<TakesMeasured>() {
            return Some(std::ptr::from_ref(&TAKES_MEASURED).cast());
        }
        code_mode_trace::takes_times_downcast(id)
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(Open(mut record)) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        record.end_unix_nanos = unix_nanos(code_mode_trace::span_end());
        status_from_fields(&mut record);
        hand_back(record);
    }
}

/// The trace a child of `parent` (a span the layer made) belongs to and the span it hangs
/// under: `parent` itself, or for a child of a `code_mode.runtime` span, the host's span
/// that one stands for (see the module docs). `None` when `parent` has no record.
fn child_ids<S>(parent: &SpanRef<'_, S>) -> Option<(TraceId, SpanId)>
where
    S: for<'span> LookupSpan<'span>,
{
    let extensions = parent.extensions();
    let Open(record) = extensions.get::<Open>()?;
    let under = if parent.name() == RUNTIME_SPAN {
        record.parent_span_id
    } else {
        record.span_id
    };
    Some((record.trace_id, under))
}

/// How the layer makes the spans of work a cell measured: straight into records.
static TAKES_MEASURED: TakesMeasured = TakesMeasured::new(take_measured);

/// Hands back the record of `measured`, a child of the layer's span `parent`, as its
/// span's close would have: the same ids, times, fields and `process.pid`.
fn take_measured(dispatch: &tracing::Dispatch, parent: &Id, measured: &MeasuredSpan<'_>) {
    let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>() else {
        return;
    };
    let Some((trace_id, parent_span_id)) =
        registry.span(parent).and_then(|parent| child_ids(&parent))
    else {
        return;
    };
    let attributes = measured
        .fields
        .iter()
        .map(|&(key, value)| {
            let value = match value {
                MeasuredValue::I64(value) => SpanValue::I64(value),
                MeasuredValue::Bool(value) => SpanValue::Bool(value),
            };
            (Name::from(key), value)
        })
        .collect();
    hand_back(SpanRecord {
        trace_id,
        span_id: fresh_span_id(),
        parent_span_id,
        name: Name::from(measured.name),
        start_unix_nanos: unix_nanos(measured.start),
        end_unix_nanos: unix_nanos(measured.end),
        attributes,
        events: Vec::new(),
        status: SpanStatus::Unset,
    });
}

/// The span's status from the `otel.status_code` and `otel.status_message` fields (as
/// the fronts' layer reads them), which are not attributes.
fn status_from_fields(record: &mut SpanRecord) {
    let mut code = None;
    let mut message = String::new();
    record
        .attributes
        .retain(|(key, value)| match (key.as_str(), value) {
            ("otel.status_code", SpanValue::Text(text)) => {
                code = Some(text.to_ascii_lowercase());
                false
            }
            ("otel.status_message", SpanValue::Text(text)) => {
                message = text.clone();
                false
            }
            _ => true,
        });
    record.status = match code.as_deref() {
        Some("ok") => SpanStatus::Ok,
        Some("error") => SpanStatus::Error(message),
        _ => SpanStatus::Unset,
    };
}

/// A span's fields as attributes: a field recorded again replaces its value.
struct Fields<'a>(&'a mut Vec<(Name, SpanValue)>);

impl Fields<'_> {
    fn set(&mut self, field: &Field, value: SpanValue) {
        match self.0.iter_mut().find(|(key, _)| *key == field.name()) {
            Some((_, old)) => *old = value,
            None => self.0.push((Name::from(field.name()), value)),
        }
    }
}

impl Visit for Fields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, SpanValue::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, SpanValue::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(
            field,
            SpanValue::I64(i64::try_from(value).unwrap_or(i64::MAX)),
        );
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, SpanValue::F64(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, SpanValue::Text(value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, SpanValue::Text(format!("{value:?}")));
    }
}

/// An ended span joins its route's batch, which goes back to the route's connection in
/// one message (one frame for a cell's spans instead of one per span); the last batch, at
/// the request's own span's end, rides with the next frame. Sent under the routes' lock (a
/// send only queues), so that a delayed flush and this one reach the connection in the
/// order they took their spans.
fn hand_back(mut record: SpanRecord) {
    let trace_id = record.trace_id;
    let ends_route = record.name == RUNTIME_SPAN;
    if !ends_route {
        // The request's own span has its pid already.
        record
            .attributes
            .push((Name::from("process.pid"), SpanValue::I64(pid())));
    }
    let mut routes = lock(&ROUTES);
    let Some(route) = routes.get_mut(&trace_id) else {
        let name = record.name.clone();
        if !keep_early(&mut lock(&EARLY), record) {
            tracing::debug!(%name, "a span with no route is dropped");
        }
        return;
    };
    if ends_route {
        // Its parent is the host's span.
        route.open.retain(|(open, _)| *open != record.span_id);
    }
    route.pending.push(record);
    if ends_route {
        route.pending_since = None;
        let last = ServerMessage::Spans(std::mem::take(&mut route.pending));
        // A connection that is gone or stalled loses its spans, never the cell's time.
        let _ = route.outbox.send_riding(&last);
    } else {
        route.batched();
    }
    if route.open.is_empty() {
        routes.remove(&trace_id);
    }
}

/// Spans that ended before their route was open: a request's cell runs on its own thread
/// as soon as the request is handed on, and the route opens after ([`open_route`]), so on
/// a busy machine the cell's first spans may end first. They wait here for it, under the
/// routes' lock (taken first).
static EARLY: Mutex<Vec<SpanRecord>> = Mutex::new(Vec::new());

/// The most spans [`EARLY`] holds; past it, a span with no route is dropped.
const MAX_EARLY_SPANS: usize = 16 * BATCH_SPANS;

/// Keeps `record`, which has no route yet, in `early`; `false` (dropped) when it belongs
/// to no trace (a span made ahead that no request took) or `early` is full.
fn keep_early(early: &mut Vec<SpanRecord>, record: SpanRecord) -> bool {
    if record.trace_id == [0; 16] || early.len() >= MAX_EARLY_SPANS {
        return false;
    }
    early.push(record);
    true
}

/// Takes the spans of `trace_id` out of `early`, in the order they ended.
fn take_early(early: &mut Vec<SpanRecord>, trace_id: TraceId) -> Vec<SpanRecord> {
    if early.is_empty() {
        return Vec::new();
    }
    let (taken, kept) = std::mem::take(early)
        .into_iter()
        .partition(|record| record.trace_id == trace_id);
    *early = kept;
    taken
}

/// Starts the flush on `runtime` unless it runs ([`FLUSHING`]). Called under the routes'
/// lock.
fn keep_flushing(runtime: &tokio::runtime::Handle) {
    if FLUSHING.swap(true, Ordering::SeqCst) {
        return;
    }
    runtime.spawn(async {
        let running = Flushing;
        loop {
            tokio::time::sleep(BATCH_DELAY).await;
            if !flush(&mut lock(&ROUTES), Instant::now()) {
                // `flush` said it stopped.
                std::mem::forget(running);
                return;
            }
        }
    });
}

/// The flush task while it runs: dropped with its runtime (the task never ends on its
/// own then), it lets the next route start another.
struct Flushing;

impl Drop for Flushing {
    fn drop(&mut self) {
        let _routes = lock(&ROUTES);
        FLUSHING.store(false, Ordering::SeqCst);
    }
}

/// A round of the flush at `now`: sends each route's spans that waited [`BATCH_DELAY`];
/// whether any span still waits (the flush goes on). Otherwise the flush stops, and the
/// next route or batched span starts it again.
fn flush(routes: &mut HashMap<TraceId, Route>, now: Instant) -> bool {
    let mut waiting = false;
    for route in routes.values_mut() {
        match route.pending_since {
            Some(since) if now.saturating_duration_since(since) >= BATCH_DELAY => {
                route.send_pending();
            }
            Some(_) => waiting = true,
            None => {}
        }
    }
    if !waiting {
        FLUSHING.store(false, Ordering::SeqCst);
    }
    waiting
}

/// Sends ended spans back. A connection that is gone or stalled loses its spans, never
/// the cell's time.
fn send(outbox: &Outbox<ServerMessage>, records: Vec<SpanRecord>) {
    let _ = outbox.send(&ServerMessage::Spans(records));
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(trace_id: TraceId, name: &str) -> SpanRecord {
        SpanRecord {
            trace_id,
            span_id: [1; 8],
            parent_span_id: [2; 8],
            name: Name::from(name.to_owned()),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Vec::new(),
            events: Vec::new(),
            status: SpanStatus::Unset,
        }
    }

    /// Spans that end before their route opens wait for it, each trace's for its own, in
    /// the order they ended; a span of no trace, or one past the bound, is dropped.
    #[test]
    fn spans_ended_before_their_route_wait_for_it() {
        let mut early = Vec::new();
        assert!(keep_early(&mut early, record([3; 16], "code_mode.compile")));
        assert!(keep_early(&mut early, record([4; 16], "code_mode.compile")));
        assert!(keep_early(
            &mut early,
            record([3; 16], "code_mode.evaluate")
        ));
        assert!(!keep_early(
            &mut early,
            record([0; 16], "code_mode.runtime")
        ));
        let names = |records: &[SpanRecord]| {
            records
                .iter()
                .map(|record| record.name.clone())
                .collect::<Vec<_>>()
        };
        let taken = take_early(&mut early, [3; 16]);
        assert_eq!(names(&taken), ["code_mode.compile", "code_mode.evaluate"]);
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].trace_id, [4; 16]);
        assert!(take_early(&mut early, [3; 16]).is_empty());
        while early.len() < MAX_EARLY_SPANS {
            assert!(keep_early(&mut early, record([5; 16], "code_mode.timer")));
        }
        assert!(!keep_early(&mut early, record([5; 16], "code_mode.timer")));
    }
}
