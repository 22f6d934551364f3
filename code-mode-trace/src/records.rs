//! The spans of cells where this process exports them ([`crate::Telemetry`]): made as
//! records by a layer of our own, and turned into OpenTelemetry spans off the cells' path.
//!
//! A span of [`crate::TRACED_TARGETS`] (but the Codex front's, which keeps every extra of
//! `tracing-opentelemetry`, as Codex's own host's spans do) costs, on the thread that makes
//! it, one record: its name, ids and start time, its fields as attributes as they are
//! recorded, its events, and its end time when it closes. Its ids and its sampling are
//! decided as it starts, by the provider's own sampler ([`SharedSampler`]), so its context
//! can be handed to a child, a request or a tool at once. An ended span that is sampled
//! goes to the [`CellExport`] queue; a thread of its own builds the SDK span from it a
//! moment later ([`EXPORT_DELAY`]), with the record's ids, times and parent, and the SDK's
//! batch processor sends it as before. So an exec pays neither the SDK's span builder,
//! sampler call on a cache-cold tracer, nor its processor, and the cell's span still ends
//! exactly when the cell closes.
//!
//! The records live in the span's extensions; [`crate::context_of`] and [`crate::adopt`]
//! reach them through a downcast the layer answers ([`RecordAccess`]). A child made by
//! `tracing-opentelemetry` under one of these spans finds its parent through
//! OpenTelemetry's current context (a nested tool call runs in its call span's context),
//! and these spans find a `tracing-opentelemetry` parent the same way (that layer makes its
//! span's context current while the span is entered).

use crate::ids::{fresh_span_id, fresh_trace_id};
use crate::layer::RecordAccess;
use code_mode_internal::sync::lock;
use opentelemetry::trace::{
    Event, Link, SamplingDecision, SamplingResult, Span as _, SpanContext, SpanId, SpanKind,
    Status, TraceContextExt as _, TraceId, Tracer as _,
};
use opentelemetry::{Context as OtelContext, KeyValue, Value};
use opentelemetry_sdk::trace::ShouldSample;
use std::any::TypeId;
use std::borrow::Cow;
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tracing::Dispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// How long ended spans gather before the export thread turns them into SDK spans: the
/// cell whose span ended is still answering its caller, and spans that end together go in
/// one round. The SDK's batch processor waits far longer before it sends.
const EXPORT_DELAY: Duration = Duration::from_millis(20);

/// The sampler the tracer provider and the record layer share (the one the standard
/// `OTEL_TRACES_SAMPLER` variables name): a span's decision is made once, as it starts,
/// and handed to the SDK with the record.
#[derive(Clone, Debug)]
pub(crate) struct SharedSampler(Arc<dyn ShouldSample>);

impl SharedSampler {
    pub(crate) fn new(sampler: Box<dyn ShouldSample>) -> Self {
        Self(Arc::from(sampler))
    }
}

impl ShouldSample for SharedSampler {
    fn should_sample(
        &self,
        parent_context: Option<&OtelContext>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        self.0
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// The ended spans waiting for the export thread, and whether it was told to stop.
#[derive(Default)]
struct Queue {
    ended: Vec<Ended>,
    closed: bool,
}

/// Where ended records go: a queue, and the thread that turns them into SDK spans.
pub(crate) struct CellExport {
    tracer: opentelemetry_sdk::trace::Tracer,
    sampler: SharedSampler,
    queue: Mutex<Queue>,
    ready: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for CellExport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CellExport")
            .field("waiting", &lock(&self.queue).ended.len())
            .finish_non_exhaustive()
    }
}

impl CellExport {
    /// Starts the export thread for spans made by `tracer`'s provider, sampled by
    /// `sampler` (the provider's own).
    pub(crate) fn start(
        tracer: opentelemetry_sdk::trace::Tracer,
        sampler: SharedSampler,
    ) -> std::io::Result<Arc<Self>> {
        let export = Arc::new(Self {
            tracer,
            sampler,
            queue: Mutex::default(),
            ready: Condvar::new(),
            thread: Mutex::new(None),
        });
        let worker = Arc::clone(&export);
        let thread = std::thread::Builder::new()
            .name("code-mode-spans".to_owned())
            .spawn(move || worker.run())?;
        *lock(&export.thread) = Some(thread);
        Ok(export)
    }

    /// Queues an ended span; the first of a round wakes the export thread.
    fn push(&self, ended: Ended) {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return;
        }
        let first = queue.ended.is_empty();
        queue.ended.push(ended);
        drop(queue);
        if first {
            self.ready.notify_one();
        }
    }

    /// The export thread: waits for a span, lets the round gather for [`EXPORT_DELAY`]
    /// (or until told to stop), then exports the round. It stops once told to and the
    /// queue is empty.
    fn run(&self) {
        let mut queue = lock(&self.queue);
        loop {
            while queue.ended.is_empty() && !queue.closed {
                queue = self
                    .ready
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let gathered = Instant::now() + EXPORT_DELAY;
            while !queue.closed {
                let left = gathered.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                queue = self
                    .ready
                    .wait_timeout(queue, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let round = std::mem::take(&mut queue.ended);
            let stop = queue.closed;
            drop(queue);
            for ended in round {
                ended.export(&self.tracer);
            }
            if stop {
                return;
            }
            queue = lock(&self.queue);
        }
    }

    /// Exports every span that ended and stops the export thread; spans that end later
    /// are dropped. Called before the provider shuts down.
    pub(crate) fn close(&self) {
        lock(&self.queue).closed = true;
        self.ready.notify_all();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

/// A span being made: what it will be exported with.
struct Open {
    name: Cow<'static, str>,
    kind: SpanKind,
    /// Its own context (ids, sampled or not), decided as it starts.
    context: SpanContext,
    /// Its parent's context (not valid for a root span).
    parent: SpanContext,
    /// What the sampler added.
    sampler_attributes: Vec<KeyValue>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    links: Vec<Link>,
    /// `otel.status_code` and `otel.status_message`, as `tracing-opentelemetry` reads them.
    status_code: Option<StatusCode>,
    status_message: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StatusCode {
    Unset,
    Ok,
    Error,
}

impl Open {
    fn new(name: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            kind: SpanKind::Internal,
            context: SpanContext::empty_context(),
            parent: SpanContext::empty_context(),
            sampler_attributes: Vec::new(),
            start: crate::span_start(),
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            status_code: None,
            status_message: None,
        }
    }

    /// Places the span under `parent` (or at the root of a new trace) and decides its
    /// sampling; its span id, once drawn, stays.
    fn sample(&mut self, sampler: &SharedSampler, parent: &OtelContext) {
        let parent_span = parent.span().span_context().clone();
        let trace_id = if parent_span.is_valid() {
            parent_span.trace_id()
        } else {
            TraceId::from_bytes(fresh_trace_id())
        };
        let span_id = if self.context.is_valid() {
            self.context.span_id()
        } else {
            SpanId::from_bytes(fresh_span_id())
        };
        let result = sampler.should_sample(
            Some(parent),
            trace_id,
            &self.name,
            &self.kind,
            &self.attributes,
            &self.links,
        );
        let sampled = result.decision == SamplingDecision::RecordAndSample;
        self.context = SpanContext::new(
            trace_id,
            span_id,
            parent_span.trace_flags().with_sampled(sampled),
            false,
            result.trace_state,
        );
        self.parent = parent_span;
        self.sampler_attributes = result.attributes;
    }

    /// Keeps the span's ids, but not sampled.
    fn unsample(&mut self) {
        let context = &self.context;
        self.context = SpanContext::new(
            context.trace_id(),
            context.span_id(),
            context.trace_flags().with_sampled(false),
            false,
            context.trace_state().clone(),
        );
    }

    fn status(&mut self) -> Status {
        match self.status_code {
            Some(StatusCode::Ok) => Status::Ok,
            Some(StatusCode::Error) => {
                Status::error(self.status_message.take().unwrap_or_default())
            }
            Some(StatusCode::Unset) | None => Status::Unset,
        }
    }
}

thread_local! {
    /// Set while this thread makes spans that must not be exported ([`muted`]).
    static MUTED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `make` with every span this layer starts on this thread meanwhile unsampled (so
/// never exported, and its children not sampled by a parent-based sampler): for spans made
/// only to warm their paths (see `Telemetry`'s subscriber).
pub(crate) fn muted<T>(make: impl FnOnce() -> T) -> T {
    crate::layer::with_set(&MUTED, true, make)
}

/// A span's record in its extensions. Dropped, the span ends: when it closes, and also
/// when the subscriber lets go of a span that never closed (its holder was leaked, or the
/// registry itself is dropped), as an SDK span ends when it is dropped.
struct Recorded {
    open: Option<Open>,
    export: Arc<CellExport>,
}

impl Recorded {
    fn open(&self) -> Option<&Open> {
        self.open.as_ref()
    }

    fn open_mut(&mut self) -> Option<&mut Open> {
        self.open.as_mut()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(open) = self.open.take()
            && open.context.is_sampled()
        {
            self.export.push(Ended {
                open,
                end: crate::span_end(),
            });
        }
    }
}

/// A sampled span that ended, waiting to be exported.
struct Ended {
    open: Open,
    end: SystemTime,
}

impl Ended {
    /// Builds the SDK span with the record's ids, parent and times, and ends it (its
    /// provider's processor takes it from there).
    fn export(self, tracer: &opentelemetry_sdk::trace::Tracer) {
        let Self { mut open, end } = self;
        let status = open.status();
        let mut builder = tracer
            .span_builder(open.name)
            .with_kind(open.kind)
            .with_trace_id(open.context.trace_id())
            .with_span_id(open.context.span_id())
            .with_start_time(open.start)
            .with_attributes(open.attributes)
            .with_events(open.events)
            .with_links(open.links)
            .with_status(status);
        builder.sampling_result = Some(SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            attributes: open.sampler_attributes,
            trace_state: open.context.trace_state().clone(),
        });
        let parent = if open.parent.is_valid() {
            OtelContext::new().with_remote_span_context(open.parent)
        } else {
            OtelContext::new()
        };
        let mut span = tracer.build_with_context(builder, &parent);
        span.end_with_timestamp(end);
    }
}

/// The layer that makes records of the cells' spans (filtered by its caller) and queues
/// them to `export` as they end.
pub(crate) struct RecordLayer<S> {
    export: Arc<CellExport>,
    access: RecordAccess,
    _subscriber: PhantomData<fn(S)>,
}

/// The record layer of `export`'s spans.
pub(crate) fn layer<S>(export: Arc<CellExport>) -> RecordLayer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    RecordLayer {
        export,
        access: RecordAccess {
            context: context_of_record::<S>,
            adopt: adopt_record::<S>,
        },
        _subscriber: PhantomData,
    }
}

/// The context of span `id` if the record layer made it ([`RecordAccess::context`]).
fn context_of_record<S>(dispatch: &Dispatch, id: &Id) -> Option<SpanContext>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let subscriber = dispatch.downcast_ref::<S>()?;
    let span = subscriber.span(id)?;
    let extensions = span.extensions();
    extensions
        .get::<Recorded>()
        .and_then(Recorded::open)
        .map(|open| open.context.clone())
}

/// Puts span `id` under `parent` if the record layer made it ([`RecordAccess::adopt`]).
fn adopt_record<S>(dispatch: &Dispatch, id: &Id, parent: &OtelContext) -> bool
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let (Some(layer), Some(subscriber)) = (
        dispatch.downcast_ref::<RecordLayer<S>>(),
        dispatch.downcast_ref::<S>(),
    ) else {
        return false;
    };
    let Some(span) = subscriber.span(id) else {
        return false;
    };
    let mut extensions = span.extensions_mut();
    let Some(open) = extensions
        .get_mut::<Recorded>()
        .and_then(Recorded::open_mut)
    else {
        return false;
    };
    open.sample(&layer.export.sampler, parent);
    true
}

/// The context a new span hangs under: its parent's record if the layer made the parent,
/// else OpenTelemetry's current context (a `tracing-opentelemetry` span that is entered,
/// or the context a tool call runs in); an explicit root has none.
fn parent_context<S>(attributes: &Attributes<'_>, ctx: &Context<'_, S>) -> OtelContext
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let parent = match attributes.parent() {
        Some(parent) => ctx.span(parent),
        None if attributes.is_contextual() => ctx.lookup_current(),
        None => return OtelContext::new(),
    };
    if let Some(parent) = parent
        && let Some(open) = parent
            .extensions()
            .get::<Recorded>()
            .and_then(Recorded::open)
    {
        return OtelContext::new().with_remote_span_context(open.context.clone());
    }
    OtelContext::current()
}

impl<S> Layer<S> for RecordLayer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let parent = parent_context(attributes, &ctx);
        let mut open = Open::new(span.name());
        attributes.record(&mut Visiting(&mut open));
        open.sample(&self.export.sampler, &parent);
        if MUTED.with(Cell::get) {
            open.unsample();
        }
        span.extensions_mut().insert(Recorded {
            open: Some(open),
            export: Arc::clone(&self.export),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(open) = span
                .extensions_mut()
                .get_mut::<Recorded>()
                .and_then(Recorded::open_mut)
        {
            values.record(&mut Visiting(open));
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        let Some(cause) = ctx.span(follows).and_then(|span| {
            span.extensions()
                .get::<Recorded>()
                .and_then(Recorded::open)
                .map(|open| open.context.clone())
        }) else {
            return;
        };
        if let Some(span) = ctx.span(id)
            && let Some(open) = span
                .extensions_mut()
                .get_mut::<Recorded>()
                .and_then(Recorded::open_mut)
        {
            open.links.push(Link::new(cause, Vec::new(), 0));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let metadata = event.metadata();
        let mut fields = EventFields {
            attributes: vec![
                KeyValue::new("level", metadata.level().as_str()),
                KeyValue::new("target", metadata.target()),
            ],
            message: None,
        };
        event.record(&mut Visiting(&mut fields));
        let EventFields {
            attributes,
            message,
        } = fields;
        let name = message.map_or(Cow::Borrowed(metadata.name()), Cow::Owned);
        let mut extensions = span.extensions_mut();
        let Some(open) = extensions
            .get_mut::<Recorded>()
            .and_then(Recorded::open_mut)
        else {
            return;
        };
        if *metadata.level() == tracing::Level::ERROR && open.status_code.is_none() {
            open.status_code = Some(StatusCode::Error);
        }
        open.events
            .push(Event::new(name, SystemTime::now(), attributes, 0));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            // Dropped, it ends (`Recorded`).
            drop(span.extensions_mut().remove::<Recorded>());
        }
    }

    // SAFETY: each pointer returned is to `self` or one of its fields, of the type asked
    // for, and lives as long as the subscriber that holds this layer (which is what a
    // downcast through a `Dispatch` borrows).
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(std::ptr::from_ref(self).cast())
        } else if id == TypeId::of::<RecordAccess>() {
            Some(std::ptr::from_ref(&self.access).cast())
        } else {
            crate::takes_times_downcast(id)
        }
    }
}

/// Where a span's or an event's fields go, value by value ([`Visiting`] reads them).
trait FieldSink {
    fn set(&mut self, field: &Field, value: Value);

    /// A text field.
    fn text(&mut self, field: &Field, text: Cow<'_, str>) {
        self.set(field, Value::from(text.into_owned()));
    }
}

/// Reads fields into a [`FieldSink`], as `tracing-opentelemetry` turns them into values
/// (an unsigned number past `i64` becomes text).
struct Visiting<'a, T>(&'a mut T);

impl<T: FieldSink> Visit for Visiting<'_, T> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.set(field, Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.set(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(value) => self.0.set(field, Value::I64(value)),
            Err(_) => self.0.set(field, Value::from(value.to_string())),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.set(field, Value::F64(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.text(field, Cow::Borrowed(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.text(field, Cow::Owned(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.text(field, Cow::Owned(format!("{value:?}")));
    }
}

/// A span's fields into its record: `otel.name`, `otel.kind`, `otel.status_code` and
/// `otel.status_message` as `tracing-opentelemetry` reads them, every other field an
/// attribute (a field recorded again replaces its value).
impl FieldSink for Open {
    fn set(&mut self, field: &Field, value: Value) {
        let key = field.name();
        match self.attributes.iter_mut().find(|kv| kv.key.as_str() == key) {
            Some(old) => old.value = value,
            None => self.attributes.push(KeyValue::new(key, value)),
        }
    }

    fn text(&mut self, field: &Field, text: Cow<'_, str>) {
        match field.name() {
            "otel.name" => self.name = Cow::Owned(text.into_owned()),
            "otel.kind" => {
                self.kind = match text.to_ascii_lowercase().as_str() {
                    "client" => SpanKind::Client,
                    "server" => SpanKind::Server,
                    "producer" => SpanKind::Producer,
                    "consumer" => SpanKind::Consumer,
                    _ => SpanKind::Internal,
                };
            }
            "otel.status_code" => {
                self.status_code = match text.to_ascii_lowercase().as_str() {
                    "ok" => Some(StatusCode::Ok),
                    "error" => Some(StatusCode::Error),
                    _ => Some(StatusCode::Unset),
                };
            }
            "otel.status_message" => self.status_message = Some(text.into_owned()),
            _ => self.set(field, Value::from(text.into_owned())),
        }
    }
}

/// An event's fields: its `message` is the event's name, the rest attributes.
struct EventFields {
    attributes: Vec<KeyValue>,
    message: Option<String>,
}

impl FieldSink for EventFields {
    fn set(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(value.as_str().into_owned());
        } else {
            self.attributes.push(KeyValue::new(field.name(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Keeps every span the SDK exports.
    #[derive(Clone, Debug, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            lock(&self.0).extend(batch);
            Ok(())
        }
    }

    fn exporting(sampler: opentelemetry_sdk::trace::Sampler) -> (Kept, Arc<CellExport>) {
        let kept = Kept::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let export = CellExport::start(
            provider.tracer("test"),
            SharedSampler::new(Box::new(sampler)),
        )
        .expect("the export thread");
        (kept, export)
    }

    /// An ended span reaches the SDK with the ids its children and callers saw, its
    /// parent, times, fields (recorded again: replaced), events and status; only once the
    /// export thread's round comes, or at close.
    #[test]
    fn an_ended_span_is_exported_as_it_was_recorded() {
        let (kept, export) = exporting(opentelemetry_sdk::trace::Sampler::AlwaysOn);
        let subscriber = tracing_subscriber::registry().with(layer(Arc::clone(&export)));
        let (cell_context, call_context) = tracing::subscriber::with_default(subscriber, || {
            let cell = tracing::info_span!(
                "code_mode.cell",
                output.bytes = 1_u64,
                otel.status_code = tracing::field::Empty,
            );
            let call = tracing::info_span!(parent: &cell, "code_mode.tool_call", tool.name = "t");
            let contexts = (
                crate::context_of(&cell).span().span_context().clone(),
                crate::context_of(&call).span().span_context().clone(),
            );
            cell.record("output.bytes", 7_u64);
            cell.record("otel.status_code", "error");
            tracing::info!(parent: &cell, reason = "asked", "yielded");
            drop(call);
            drop(cell);
            contexts
        });
        assert!(lock(&kept.0).is_empty(), "exported on the span's own path");
        export.close();
        let spans = lock(&kept.0).clone();
        let [call, cell] = &spans[..] else {
            panic!("two spans: {spans:#?}")
        };
        assert_eq!(cell.name, "code_mode.cell");
        assert_eq!(cell.span_context, cell_context);
        assert_eq!(call.span_context, call_context);
        assert_eq!(call.parent_span_id, cell_context.span_id());
        assert_eq!(call.span_context.trace_id(), cell_context.trace_id());
        assert_eq!(cell.parent_span_id, SpanId::INVALID);
        assert!(cell.start_time <= call.start_time && call.end_time <= cell.end_time);
        assert_eq!(
            cell.attributes,
            [KeyValue::new("output.bytes", 7_i64)],
            "a field recorded again replaces its value; otel.* are not attributes"
        );
        assert_eq!(cell.status, Status::error(""));
        let [event] = &cell.events.events[..] else {
            panic!("one event: {:?}", cell.events)
        };
        assert_eq!(event.name, "yielded");
        assert!(event.attributes.contains(&KeyValue::new("reason", "asked")));
        assert!(event.attributes.contains(&KeyValue::new("level", "INFO")));
    }

    /// A span the sampler drops is not exported, and its children inherit the decision
    /// through its context.
    #[test]
    fn a_span_the_sampler_drops_is_not_exported() {
        let (kept, export) = exporting(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::AlwaysOff,
        )));
        let subscriber = tracing_subscriber::registry().with(layer(Arc::clone(&export)));
        tracing::subscriber::with_default(subscriber, || {
            let cell = tracing::info_span!("code_mode.cell");
            let call = tracing::info_span!(parent: &cell, "code_mode.tool_call");
            assert!(!crate::context_of(&call).span().span_context().is_sampled());
            assert!(crate::context_of(&call).span().span_context().is_valid());
        });
        export.close();
        assert!(lock(&kept.0).is_empty());
    }

    /// A span made inside `made_at` has the times it was given, and the layer says it
    /// takes them; a span made after it has its own.
    #[test]
    fn a_span_made_at_given_times_keeps_them() {
        let (kept, export) = exporting(opentelemetry_sdk::trace::Sampler::AlwaysOn);
        let subscriber = tracing_subscriber::registry().with(layer(Arc::clone(&export)));
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let end = start + Duration::from_millis(40);
        let before = SystemTime::now();
        tracing::subscriber::with_default(subscriber, || {
            let cell = tracing::info_span!("code_mode.cell");
            assert!(crate::takes_times(&cell));
            crate::made_at(start, end, || {
                drop(tracing::info_span!(parent: &cell, "code_mode.compile"));
            });
        });
        export.close();
        let spans = lock(&kept.0).clone();
        let [compile, cell] = &spans[..] else {
            panic!("two spans: {spans:#?}")
        };
        assert_eq!(compile.name, "code_mode.compile");
        assert_eq!((compile.start_time, compile.end_time), (start, end));
        assert!(cell.start_time >= before && cell.end_time >= cell.start_time);
    }

    /// What is made muted is not exported, whatever the sampler says, and the spans made
    /// after it are.
    #[test]
    fn a_muted_span_is_not_exported() {
        let (kept, export) = exporting(opentelemetry_sdk::trace::Sampler::AlwaysOn);
        let subscriber = tracing_subscriber::registry().with(layer(Arc::clone(&export)));
        tracing::subscriber::with_default(subscriber, || {
            muted(|| {
                let cell = tracing::info_span!("code_mode.cell");
                let call = tracing::info_span!(parent: &cell, "code_mode.tool_call");
                assert!(crate::context_of(&call).span().span_context().is_valid());
            });
            drop(tracing::info_span!("code_mode.wait"));
        });
        export.close();
        let names: Vec<String> = lock(&kept.0)
            .iter()
            .map(|span| span.name.to_string())
            .collect();
        assert_eq!(names, ["code_mode.wait"]);
    }
}
