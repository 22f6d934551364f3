//! The trace context a request carries to the runtime, and the runtime's spans exported
//! here (the sandboxed runtime cannot export; `code-mode-bin`'s `spans` hands them back).
//!
//! A request that starts or rebuilds a cell carries the context of the span it is sent
//! under, the cell's `code_mode.cell` span (or the `code_mode.rebuild` span of a rebuild),
//! when that span is exported and sampled. Spans the runtime hands back are exported
//! through the process's global OpenTelemetry tracer provider with their own ids, parents
//! and times, so they sit in the same trace under the same span. An agent core that
//! exports with `tracing-opentelemetry` sets that provider as it sets its layer
//! (`opentelemetry::global::set_tracer_provider`); without one, the runtime's spans are
//! dropped and the cell's own spans are still there.

use code_mode_wire::payload::{SpanRecord, SpanStatus, SpanValue, TraceContext};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{KeyValue, Value};
use std::time::{Duration, SystemTime};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The instrumentation scope the runtime's spans are exported with.
const RUNTIME_SCOPE: &str = "code-mode-bin";

/// The context to send with a request made under `span`: `None` unless the span is
/// exported and sampled.
pub(crate) fn trace_of(span: &tracing::Span) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    (span_context.is_valid() && span_context.is_sampled()).then(|| TraceContext {
        trace_id: span_context.trace_id().to_bytes(),
        span_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}

/// Exports spans a runtime handed back, each with its own ids and times.
pub(crate) fn export(records: Vec<SpanRecord>) {
    let tracer = opentelemetry::global::tracer(RUNTIME_SCOPE);
    for record in records {
        let parent = SpanContext::new(
            TraceId::from_bytes(record.trace_id),
            SpanId::from_bytes(record.parent_span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let span_id = SpanId::from_bytes(record.span_id);
        if !parent.is_valid() || span_id == SpanId::INVALID {
            tracing::debug!(name = %record.name, "a handed-back span without valid ids is dropped");
            continue;
        }
        let parent = opentelemetry::Context::new().with_remote_span_context(parent);
        let builder = tracer
            .span_builder(record.name)
            .with_span_id(span_id)
            .with_start_time(time(record.start_unix_nanos))
            .with_attributes(key_values(record.attributes))
            .with_events(
                record
                    .events
                    .into_iter()
                    .map(|event| {
                        opentelemetry::trace::Event::new(
                            event.name,
                            time(event.unix_nanos),
                            key_values(event.attributes),
                            0,
                        )
                    })
                    .collect(),
            )
            .with_status(match record.status {
                SpanStatus::Unset => opentelemetry::trace::Status::Unset,
                SpanStatus::Ok => opentelemetry::trace::Status::Ok,
                SpanStatus::Error(description) => opentelemetry::trace::Status::error(description),
            });
        let mut span = tracer.build_with_context(builder, &parent);
        span.end_with_timestamp(time(record.end_unix_nanos));
    }
}

fn time(unix_nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_nanos)
}

fn key_values(attributes: Vec<(String, SpanValue)>) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                SpanValue::Bool(value) => Value::Bool(value),
                SpanValue::I64(value) => Value::I64(value),
                SpanValue::F64(value) => Value::F64(value),
                SpanValue::Text(value) => Value::from(value),
            };
            KeyValue::new(key, value)
        })
        .collect()
}
