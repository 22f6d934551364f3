//! What is traced, and how a span's OpenTelemetry context is reached: the one list of our
//! crates whose spans become OpenTelemetry spans (for the fronts' exporter and for the
//! spans the runtime hands back to its host alike), and [`context_of`] and [`adopt`],
//! which read and set a span's context whichever layer made it: the cells' own records
//! (`records`, in a process that exports with [`crate::Telemetry`]) or
//! `tracing-opentelemetry` (the Codex front's spans, an agent core's). Also how a span is
//! made after its work ran, with the times it ran at, under a layer of ours that takes
//! them ([`TakesTimes`], [`made_at`]), or straight from what was measured, with no
//! `tracing` span made at all, under a layer that makes its records itself
//! ([`TakesMeasured`], [`take_measured`]).

use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use std::any::TypeId;
use std::cell::Cell;
use std::time::SystemTime;
use tracing::Dispatch;
use tracing::span::Id;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The crates whose spans are traced: every target that starts with one of these (the
/// runtime's, the host's, the protocol's and the fronts').
pub const TRACED_TARGETS: [&str; 2] = ["code_mode", "codex_code_mode_host"];

/// How a span made by the cells' record layer is reached from a [`tracing::Span`]: the
/// layer answers a downcast to this type with its own functions, as `tracing-opentelemetry`
/// does for its spans.
#[derive(Clone, Copy)]
pub(crate) struct RecordAccess {
    /// The span's context, if the layer made the span.
    pub(crate) context: fn(&Dispatch, &Id) -> Option<SpanContext>,
    /// Makes the context the span's parent; whether the layer made the span.
    pub(crate) adopt: fn(&Dispatch, &Id, &opentelemetry::Context) -> bool,
}

/// The OpenTelemetry context of `span`: empty when the span is disabled or not exported.
/// A child made in it, by any layer or by OpenTelemetry itself, hangs under the span.
pub fn context_of(span: &tracing::Span) -> opentelemetry::Context {
    let ours = span
        .with_subscriber(|(id, dispatch)| {
            let access = dispatch.downcast_ref::<RecordAccess>()?;
            (access.context)(dispatch, id)
        })
        .flatten();
    match ours {
        Some(context) => opentelemetry::Context::new().with_remote_span_context(context),
        None => span.context(),
    }
}

/// Makes `parent` the parent of `span` (a span that is not exported ignores it). Done
/// before the span's context is handed out (to a child, a request, a tool), as a request's
/// span adopts its caller's `traceparent` as it is made.
pub fn adopt(span: &tracing::Span, parent: &opentelemetry::Context) {
    let ours = span
        .with_subscriber(|(id, dispatch)| {
            dispatch
                .downcast_ref::<RecordAccess>()
                .is_some_and(|access| (access.adopt)(dispatch, id, parent))
        })
        .unwrap_or(false);
    if !ours {
        let _ = span.set_parent(parent.clone());
    }
}

/// What a layer of ours answers a downcast to when it takes a span's times from
/// [`made_at`] (the cells' record layer, the runtime's): a span measured as work ran can
/// then be made afterwards, off that work's path, with the times it was measured at.
/// `tracing-opentelemetry` and other layers stamp a span when it is made and closed, so
/// under them a span is made as its work runs.
pub struct TakesTimes(());

/// The one [`TakesTimes`] the layers point a downcast at.
static TAKES_TIMES: TakesTimes = TakesTimes(());

/// A layer's `downcast_raw` answer for `id` if `id` asks for [`TakesTimes`].
pub fn takes_times_downcast(id: TypeId) -> Option<*const ()> {
    (id == TypeId::of::<TakesTimes>()).then(|| std::ptr::from_ref(&TAKES_TIMES).cast())
}

/// Whether the subscriber of `span` takes a span's times from [`made_at`] (a disabled span
/// has none).
pub fn takes_times(span: &tracing::Span) -> bool {
    span.with_subscriber(|(_, dispatch)| dispatch.is::<TakesTimes>())
        .unwrap_or(false)
}

/// A field of a [`MeasuredSpan`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MeasuredValue {
    I64(i64),
    Bool(bool),
}

/// A piece of work measured as it ran, whose span is made once it ended: its name, times
/// and fields.
#[derive(Clone, Copy, Debug)]
pub struct MeasuredSpan<'a> {
    pub name: &'static str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub fields: &'a [(&'static str, MeasuredValue)],
}

/// What a layer of ours answers a downcast to when it makes a [`MeasuredSpan`]'s record
/// itself, under a span it made: no `tracing` span is made for the work, whose making
/// through the registry (its slot, its extensions, its close) costs several times the
/// record's. The runtime's layer does so; under any other, [`take_measured`] declines and
/// the span is made through `tracing` with [`made_at`].
pub struct TakesMeasured {
    /// Makes the record of a measured span under the layer's span `parent`.
    take: fn(&Dispatch, &Id, &MeasuredSpan<'_>),
}

impl TakesMeasured {
    /// The capability, with the layer's function that makes the records.
    pub const fn new(take: fn(&Dispatch, &Id, &MeasuredSpan<'_>)) -> Self {
        Self { take }
    }
}

/// Makes the span of `measured` under `parent` straight into the record of the layer
/// that takes measured spans ([`TakesMeasured`]); `false` when `parent`'s subscriber has
/// none (or `parent` is disabled), and nothing was made.
pub fn take_measured(parent: &tracing::Span, measured: &MeasuredSpan<'_>) -> bool {
    parent
        .with_subscriber(|(id, dispatch)| {
            let takes = dispatch.downcast_ref::<TakesMeasured>()?;
            (takes.take)(dispatch, id, measured);
            Some(())
        })
        .flatten()
        .is_some()
}

thread_local! {
    /// The start and end a span made on this thread now is given ([`made_at`]).
    static MADE_AT: Cell<Option<(SystemTime, SystemTime)>> = const { Cell::new(None) };
}

/// Runs `make`, which makes a span and ends it, with `start` and `end` as that span's
/// times for the layers that take them ([`TakesTimes`]; see [`span_start`] and
/// [`span_end`]). For one span only: a span made inside it gets the same times.
pub fn made_at<T>(start: SystemTime, end: SystemTime, make: impl FnOnce() -> T) -> T {
    with_set(&MADE_AT, Some((start, end)), make)
}

/// Runs `run` with this thread's `key` set to `value`, and its value before back after.
pub(crate) fn with_set<V: Copy + 'static, T>(
    key: &'static std::thread::LocalKey<Cell<V>>,
    value: V,
    run: impl FnOnce() -> T,
) -> T {
    struct Restore<V: Copy + 'static>(&'static std::thread::LocalKey<Cell<V>>, V);
    impl<V: Copy + 'static> Drop for Restore<V> {
        fn drop(&mut self) {
            self.0.with(|cell| cell.set(self.1));
        }
    }
    let _restore = Restore(key, key.with(|cell| cell.replace(value)));
    run()
}

/// When a span made now starts: its [`made_at`] start, or now.
pub fn span_start() -> SystemTime {
    MADE_AT
        .with(Cell::get)
        .map_or_else(SystemTime::now, |(start, _)| start)
}

/// When a span that ends now ends: its [`made_at`] end, or now.
pub fn span_end() -> SystemTime {
    MADE_AT
        .with(Cell::get)
        .map_or_else(SystemTime::now, |(_, end)| end)
}
