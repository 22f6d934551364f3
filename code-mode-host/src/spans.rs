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
//!
//! A runtime's spans are exported only in traces the host sent it ([`SentTraces`]): a
//! runtime cannot put spans into another trace of the host's collector.

use code_mode_wire::payload::{SpanRecord, SpanStatus, SpanValue, TraceContext};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{KeyValue, Value};
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The instrumentation scope the runtime's spans are exported with.
const RUNTIME_SCOPE: &str = "code-mode-bin";

/// How many trace ids a connection remembers having sent (the oldest is forgotten first).
const SENT_TRACES_KEPT: usize = 4096;

/// The trace ids a connection's requests carried, the latest [`SENT_TRACES_KEPT`].
#[derive(Debug, Default)]
pub(crate) struct SentTraces {
    order: VecDeque<[u8; 16]>,
    known: HashSet<[u8; 16]>,
}

impl SentTraces {
    pub(crate) fn remember(&mut self, trace_id: [u8; 16]) {
        if !self.known.insert(trace_id) {
            return;
        }
        self.order.push_back(trace_id);
        if self.order.len() > SENT_TRACES_KEPT
            && let Some(oldest) = self.order.pop_front()
        {
            self.known.remove(&oldest);
        }
    }

    fn knows(&self, trace_id: &[u8; 16]) -> bool {
        self.known.contains(trace_id)
    }
}

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

/// Exports spans a runtime handed back, each with its own ids and times: those of traces
/// the host sent it (`sent`); the others are dropped.
pub(crate) fn export(records: Vec<SpanRecord>, sent: &SentTraces) {
    let tracer = opentelemetry::global::tracer(RUNTIME_SCOPE);
    for record in records {
        if !sent.knows(&record.trace_id) {
            tracing::debug!(name = %record.name, "a handed-back span of a trace never sent is dropped");
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> [u8; 16] {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&(n as u64).to_le_bytes());
        id
    }

    #[test]
    fn a_connection_remembers_the_latest_traces_it_sent_and_forgets_the_oldest() {
        let mut sent = SentTraces::default();
        sent.remember(id(0));
        // Sent again: still one entry, so it is not forgotten twice as early.
        sent.remember(id(0));
        for n in 1..SENT_TRACES_KEPT {
            sent.remember(id(n));
        }
        assert!(sent.knows(&id(0)), "exactly as many as are kept");
        sent.remember(id(SENT_TRACES_KEPT));
        assert!(!sent.knows(&id(0)), "the oldest is forgotten");
        assert!(sent.knows(&id(1)) && sent.knows(&id(SENT_TRACES_KEPT)));
        assert!(!sent.knows(&id(SENT_TRACES_KEPT + 1)), "never sent");
        assert_eq!(sent.order.len(), SENT_TRACES_KEPT);
        assert_eq!(sent.known.len(), SENT_TRACES_KEPT);
    }
}
