//! The spans of traced work, handed back to the host. The sandbox allows no socket, so the
//! runtime cannot export; and an operator should configure one endpoint, not two. A
//! request that carries a trace context (the host's span of the cell it starts or
//! rebuilds) runs under a `code_mode.runtime` span, a child of that context, and what the
//! runtime traces of the cell (compile, evaluate, timers, hibernation, replay) hangs under
//! it. The spans that end go back on the connection that asked for them, batched: in one
//! [`ServerMessage::Spans`] when the request's own span ends, or a moment after the first
//! of them (a long cell's spans are not held), and the host exports them with its own,
//! with this process's id (`process.pid`).
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

use code_mode_protocol::sync::lock;
use code_mode_wire::payload::{SpanEvent, SpanRecord, SpanStatus, SpanValue, TraceContext};
use code_mode_wire::transport::Outbox;
use code_mode_wire::{ServerMessage, SessionId};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The name of the span a traced request runs under.
pub(crate) const RUNTIME_SPAN: &str = "code_mode.runtime";

/// Where the spans of one trace go: the connection that started it, the
/// `code_mode.runtime` spans still open on it (each with the host's span it stands for),
/// and the spans that ended and wait to go back together.
struct Route {
    outbox: Outbox<ServerMessage>,
    open: Vec<(SpanId, SpanId)>,
    /// Ended spans not sent yet: they go back in one message when the request's own span
    /// ends, when [`BATCH_SPANS`] wait, or [`BATCH_DELAY`] after the first of them.
    pending: Vec<SpanRecord>,
    /// Where the delayed flush runs (the connection's runtime); without one, each span
    /// goes back as it ends.
    runtime: Option<tokio::runtime::Handle>,
}

/// The most ended spans a route holds before it sends them.
const BATCH_SPANS: usize = 64;

/// How long an ended span waits for others before it goes back anyway (a cell that runs
/// for hours still shows its compile, timers and hibernations as they happen).
const BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// The routes of every traced request of this process, by trace id.
static ROUTES: LazyLock<Mutex<HashMap<TraceId, Route>>> = LazyLock::new(Mutex::default);

/// The tracer provider the layer makes spans with: it samples only children of a sampled
/// host span (a root here is never exported) and hands each span back as it ends.
static PROVIDER: LazyLock<SdkTracerProvider> = LazyLock::new(|| {
    SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::AlwaysOff,
        )))
        .with_simple_exporter(HandBack)
        .build()
});

/// The layer that turns the runtime's spans into OpenTelemetry spans to hand back.
pub(crate) fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    code_mode_trace::layer(PROVIDER.tracer("code-mode-bin"))
}

/// The span a request traced by the host runs under (disabled when `trace` is not
/// sampled): a child of the host's span, its spans routed back through `outbox`.
pub(crate) fn runtime_span(
    trace: TraceContext,
    session: Option<SessionId>,
    outbox: &Outbox<ServerMessage>,
) -> tracing::Span {
    let flags = TraceFlags::new(trace.flags);
    let parent = SpanContext::new(
        TraceId::from_bytes(trace.trace_id),
        SpanId::from_bytes(trace.span_id),
        flags,
        true,
        TraceState::default(),
    );
    if !flags.is_sampled() || !parent.is_valid() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: "code_mode_bin",
        RUNTIME_SPAN,
        // The runtime's own number of the session (not the id its agent core knows).
        runtime.session = session.map(|session| session.0.to_string()),
        process.pid = i64::from(std::process::id()),
        cpu.time_ms = tracing::field::Empty,
    );
    if span
        .set_parent(opentelemetry::Context::new().with_remote_span_context(parent.clone()))
        .is_err()
    {
        return tracing::Span::none();
    }
    let own = span.context().span().span_context().span_id();
    if own == SpanId::INVALID {
        return tracing::Span::none();
    }
    let mut routes = lock(&ROUTES);
    let route = routes.entry(parent.trace_id()).or_insert_with(|| Route {
        outbox: outbox.clone(),
        open: Vec::new(),
        pending: Vec::new(),
        runtime: tokio::runtime::Handle::try_current().ok(),
    });
    // The latest connection to trace here wins (one trace across two hosts is rare).
    route.outbox = outbox.clone();
    route.open.push((own, parent.span_id()));
    span
}

/// The span exporter: each span joins its route's batch, which goes back to the route's
/// connection in one message (one frame for a cell's spans instead of one per span).
#[derive(Debug)]
struct HandBack;

impl SpanExporter for HandBack {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // Sent under the routes' lock (a send only queues), so that a delayed flush and
        // this one reach the connection in the order they took their spans.
        {
            let mut routes = lock(&ROUTES);
            for span in batch {
                let trace_id = span.span_context.trace_id();
                let Some(route) = routes.get_mut(&trace_id) else {
                    tracing::debug!(name = %span.name, "a span with no route is dropped");
                    continue;
                };
                let ends_route = span.name == RUNTIME_SPAN;
                let mut record = record(span);
                if ends_route {
                    // It has its pid already, and its parent is the host's span.
                    route
                        .open
                        .retain(|(open, _)| open.to_bytes() != record.span_id);
                } else {
                    let parent = SpanId::from_bytes(record.parent_span_id);
                    if let Some((_, host)) = route.open.iter().find(|(open, _)| *open == parent) {
                        record.parent_span_id = host.to_bytes();
                    }
                    record.attributes.push((
                        "process.pid".to_owned(),
                        SpanValue::I64(i64::from(std::process::id())),
                    ));
                }
                route.pending.push(record);
                match &route.runtime {
                    Some(runtime) if !ends_route && route.pending.len() < BATCH_SPANS => {
                        if route.pending.len() == 1 {
                            // The first of a batch goes back soon even if nothing follows.
                            runtime.spawn(async move {
                                tokio::time::sleep(BATCH_DELAY).await;
                                flush(trace_id);
                            });
                        }
                    }
                    _ => send(&route.outbox, std::mem::take(&mut route.pending)),
                }
                if route.open.is_empty() {
                    routes.remove(&trace_id);
                }
            }
        }
        Ok(())
    }
}

/// Sends what the route of `trace_id` holds (the delayed flush).
fn flush(trace_id: TraceId) {
    if let Some(route) = lock(&ROUTES).get_mut(&trace_id)
        && !route.pending.is_empty()
    {
        send(&route.outbox, std::mem::take(&mut route.pending));
    }
}

/// Sends ended spans back. A connection that is gone or stalled loses its spans, never
/// the cell's time.
fn send(outbox: &Outbox<ServerMessage>, records: Vec<SpanRecord>) {
    let _ = outbox.send(&ServerMessage::Spans(records));
}

/// A span as the wire carries it.
fn record(span: SpanData) -> SpanRecord {
    SpanRecord {
        trace_id: span.span_context.trace_id().to_bytes(),
        span_id: span.span_context.span_id().to_bytes(),
        parent_span_id: span.parent_span_id.to_bytes(),
        name: span.name.into_owned(),
        start_unix_nanos: unix_nanos(span.start_time),
        end_unix_nanos: unix_nanos(span.end_time),
        attributes: attributes(span.attributes),
        events: span
            .events
            .events
            .into_iter()
            .map(|event| SpanEvent {
                name: event.name.into_owned(),
                unix_nanos: unix_nanos(event.timestamp),
                attributes: attributes(event.attributes),
            })
            .collect(),
        status: match span.status {
            opentelemetry::trace::Status::Unset => SpanStatus::Unset,
            opentelemetry::trace::Status::Ok => SpanStatus::Ok,
            opentelemetry::trace::Status::Error { description } => {
                SpanStatus::Error(description.into_owned())
            }
        },
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn attributes(values: Vec<opentelemetry::KeyValue>) -> Vec<(String, SpanValue)> {
    values
        .into_iter()
        .map(|pair| {
            let value = match pair.value {
                opentelemetry::Value::Bool(value) => SpanValue::Bool(value),
                opentelemetry::Value::I64(value) => SpanValue::I64(value),
                opentelemetry::Value::F64(value) => SpanValue::F64(value),
                other => SpanValue::Text(other.to_string()),
            };
            (pair.key.as_str().to_owned(), value)
        })
        .collect()
}
