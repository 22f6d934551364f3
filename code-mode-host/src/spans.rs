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
//! A runtime's spans are checked before they are exported ([`SentTraces`]), since a cell
//! that escaped V8 controls what its runtime sends:
//! - only spans of traces the host sent that runtime are exported (others are dropped);
//! - a span hangs under the span the host sent, or under a span this runtime handed back
//!   in that trace; spans end before their parents, so one whose parent has not come yet
//!   waits for it (a bounded number; one whose parent never comes is dropped);
//! - a span id that is the host's own, or one the runtime already used, is refused;
//! - a span's name, attributes and events are bounded in count and length;
//! - a span is bounded in bytes too ([`MAX_SPAN_BYTES`]: the count and length bounds alone
//!   let one hold some 64 MiB), and so are the spans waiting for a parent on one connection
//!   ([`MAX_WAITING_BYTES`]); a span past either is dropped and counted, never kept;
//! - at most [`MAX_SPANS_PER_SECOND`] spans a second per connection (more are dropped).
//!
//! A refused span is a protocol violation that drops the runtime; a dropped one is logged.

use code_mode_wire::payload::{Name, SpanRecord, SpanStatus, SpanValue, TraceContext};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{KeyValue, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

/// The instrumentation scope the runtime's spans are exported with.
const RUNTIME_SCOPE: &str = "code-mode-bin";

/// How many trace ids a connection remembers having sent (the oldest is forgotten first).
const SENT_TRACES_KEPT: usize = 4096;

/// Span ids a connection remembers (handed back, or waiting for their parent), across its
/// traces: past it, new spans are dropped until old traces are forgotten.
const SPANS_KEPT: usize = 1 << 18;

/// Spans that wait for their parent at once, per connection.
const WAITING_KEPT: usize = 4096;

/// The spans a connection may hand back in one second; more are dropped.
pub(crate) const MAX_SPANS_PER_SECOND: u32 = 20_000;

/// Bounds of one span, far above what the runtime's own spans hold (its longest text is a
/// capture of 4 KiB).
const MAX_NAME_BYTES: usize = 256;
const MAX_ATTRIBUTES: usize = 64;
const MAX_KEY_BYTES: usize = 256;
const MAX_TEXT_BYTES: usize = 16 * 1024;
const MAX_EVENTS: usize = 128;

/// The bytes of text and values one handed-back span may carry ([`span_bytes`]): the
/// runtime's own spans carry a few captured texts of 4 KiB at most, so this is some 250 of
/// them, while the count and length bounds above alone would let a span hold 128 events of
/// 64 attributes of 16 KiB (about 64 MiB) for the host to copy and export.
const MAX_SPAN_BYTES: usize = 1024 * 1024;

/// The bytes the spans waiting for their parent may hold at once, per connection (as
/// [`span_bytes`] counts them): sixteen spans at [`MAX_SPAN_BYTES`], thousands of the
/// runtime's real ones, where [`WAITING_KEPT`] spans at that budget would be 4 GiB.
const MAX_WAITING_BYTES: usize = 16 * 1024 * 1024;

/// A span the host refuses: the runtime that sent it is dropped.
#[derive(Debug, thiserror::Error)]
pub enum SpanRefusal {
    #[error("a span whose {what} is over its bound of {bound}")]
    OverBound { what: &'static str, bound: usize },
    #[error("a span {span} whose id is one the host sent")]
    HostsId { span: String },
    #[error("a span {span} whose id was handed back before")]
    IdAgain { span: String },
}

/// What a connection knows of one trace it sent: the host's spans, and the runtime's.
#[derive(Debug, Default)]
struct TraceSpans {
    /// The host's spans the runtime was sent under.
    sent: HashSet<[u8; 8]>,
    /// The runtime's spans handed back and exported.
    returned: HashSet<[u8; 8]>,
    /// Spans handed back whose parent has not come yet, by that parent.
    waiting: HashMap<[u8; 8], Vec<SpanRecord>>,
}

/// The traces a connection's requests carried (the latest [`SENT_TRACES_KEPT`]), and
/// what the runtime handed back in each.
#[derive(Debug)]
pub(crate) struct SentTraces {
    order: VecDeque<[u8; 16]>,
    traces: HashMap<[u8; 16], TraceSpans>,
    /// Span ids kept across the traces, and spans waiting (and their bytes).
    spans: usize,
    waiting: usize,
    waiting_bytes: usize,
    /// Spans dropped for their bytes, their own or the waiting spans' (the connection's
    /// whole life).
    over_budget: u64,
    /// The current second and the spans handed back in it.
    window: Instant,
    in_window: u32,
    dropped: u64,
}

impl Default for SentTraces {
    fn default() -> Self {
        Self {
            order: VecDeque::new(),
            traces: HashMap::new(),
            spans: 0,
            waiting: 0,
            waiting_bytes: 0,
            over_budget: 0,
            window: Instant::now(),
            in_window: 0,
            dropped: 0,
        }
    }
}

impl SentTraces {
    /// A request goes out under the host's span `span_id` of trace `trace_id`.
    pub(crate) fn remember(&mut self, trace_id: [u8; 16], span_id: [u8; 8]) {
        if !self.traces.contains_key(&trace_id) {
            self.order.push_back(trace_id);
            if self.order.len() > SENT_TRACES_KEPT
                && let Some(oldest) = self.order.pop_front()
                && let Some(forgotten) = self.traces.remove(&oldest)
            {
                self.spans -= forgotten.returned.len();
                let waiting: usize = forgotten.waiting.values().map(Vec::len).sum();
                self.spans -= waiting;
                self.waiting -= waiting;
                self.waiting_bytes -= forgotten
                    .waiting
                    .values()
                    .flatten()
                    .map(span_bytes)
                    .sum::<usize>();
            }
        }
        self.traces
            .entry(trace_id)
            .or_default()
            .sent
            .insert(span_id);
    }

    fn knows(&self, trace_id: &[u8; 16]) -> bool {
        self.traces.contains_key(trace_id)
    }

    /// Whether one more span fits this second.
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            if self.dropped > 0 {
                tracing::warn!(
                    dropped = self.dropped,
                    "handed-back spans over the rate were dropped"
                );
            }
            self.window = now;
            self.in_window = 0;
            self.dropped = 0;
        }
        self.in_window += 1;
        let admitted = self.in_window <= MAX_SPANS_PER_SECOND && self.spans < SPANS_KEPT;
        if !admitted {
            self.dropped += 1;
        }
        admitted
    }

    /// Checks spans a runtime handed back, each within its bounds already
    /// ([`within_bounds`]): those to export now ([`emit_all`]), in order, each whose parent
    /// is known; one whose parent is the runtime's and has not come yet waits for it.
    /// Spans of traces never sent, or over the rate, are dropped. A span that reuses an id
    /// ends the check with its refusal, beside what was ready before it.
    pub(crate) fn admit_batch(
        &mut self,
        records: Vec<SpanRecord>,
    ) -> (Vec<SpanRecord>, Option<SpanRefusal>) {
        let mut out = Vec::new();
        for record in records {
            let bytes = span_bytes(&record);
            if bytes > MAX_SPAN_BYTES {
                self.over_budget += 1;
                tracing::debug!(name = %record.name, bytes, dropped = self.over_budget, "a handed-back span over its byte budget is dropped");
                continue;
            }
            if !self.knows(&record.trace_id) {
                tracing::debug!(name = %record.name, "a handed-back span of a trace never sent is dropped");
                continue;
            }
            if record.span_id == [0; 8] || record.parent_span_id == [0; 8] {
                tracing::debug!(name = %record.name, "a handed-back span without valid ids is dropped");
                continue;
            }
            if !self.admit() {
                continue;
            }
            let trace = self.traces.get_mut(&record.trace_id).expect("known above");
            if trace.sent.contains(&record.span_id) {
                let refusal = SpanRefusal::HostsId {
                    span: hex(&record.span_id),
                };
                return (out, Some(refusal));
            }
            let waits = trace
                .waiting
                .values()
                .flatten()
                .any(|w| w.span_id == record.span_id);
            if trace.returned.contains(&record.span_id) || waits {
                let refusal = SpanRefusal::IdAgain {
                    span: hex(&record.span_id),
                };
                return (out, Some(refusal));
            }
            let parent_known = trace.sent.contains(&record.parent_span_id)
                || trace.returned.contains(&record.parent_span_id);
            if !parent_known {
                if self.waiting >= WAITING_KEPT {
                    tracing::debug!(name = %record.name, "a handed-back span whose parent has not come is dropped: too many wait");
                    continue;
                }
                if self.waiting_bytes + bytes > MAX_WAITING_BYTES {
                    self.over_budget += 1;
                    tracing::debug!(name = %record.name, bytes, dropped = self.over_budget, "a handed-back span whose parent has not come is dropped: the waiting spans hold their budget of bytes");
                    continue;
                }
                trace
                    .waiting
                    .entry(record.parent_span_id)
                    .or_default()
                    .push(record);
                self.waiting += 1;
                self.waiting_bytes += bytes;
                self.spans += 1;
                continue;
            }
            // This span, then every span that waited for it (and for those), in turn.
            let trace_id = record.trace_id;
            let mut ready = vec![record];
            while let Some(record) = ready.pop() {
                let trace = self.traces.get_mut(&trace_id).expect("known above");
                trace.returned.insert(record.span_id);
                if let Some(children) = trace.waiting.remove(&record.span_id) {
                    self.waiting -= children.len();
                    self.waiting_bytes -= children.iter().map(span_bytes).sum::<usize>();
                    self.spans -= children.len();
                    ready.extend(children);
                }
                self.spans += 1;
                out.push(record);
            }
        }
        (out, None)
    }

    /// [`within_bounds`], [`Self::admit_batch`], then [`emit_all`], as the connection
    /// runs them; the ids of the spans exported, in order.
    #[cfg(test)]
    fn export(&mut self, records: Vec<SpanRecord>) -> Result<Vec<[u8; 8]>, SpanRefusal> {
        let (records, out_of_bounds) = within_bounds(records);
        let (ready, refused) = self.admit_batch(records);
        let ids = ready.iter().map(|record| record.span_id).collect();
        emit_all(ready);
        refused.or(out_of_bounds).map_or(Ok(ids), Err)
    }
}

/// The spans of a hand-back up to the first one out of its bounds, and that one's refusal:
/// checked before the connection's lock is taken, since the check reads every byte.
pub(crate) fn within_bounds(
    mut records: Vec<SpanRecord>,
) -> (Vec<SpanRecord>, Option<SpanRefusal>) {
    let refused = records
        .iter()
        .enumerate()
        .find_map(|(index, record)| check_bounds(record).err().map(|refusal| (index, refusal)));
    match refused {
        Some((index, refusal)) => {
            records.truncate(index);
            (records, Some(refusal))
        }
        None => (records, None),
    }
}

/// Exports spans [`SentTraces::admit_batch`] found ready, with their own ids and times.
pub(crate) fn emit_all(records: Vec<SpanRecord>) {
    if records.is_empty() {
        return;
    }
    // One tracer for the whole batch: each take locks the global provider and makes a
    // boxed tracer.
    let tracer = opentelemetry::global::tracer(RUNTIME_SCOPE);
    for record in records {
        emit(&tracer, record);
    }
}

/// The bytes of text and values a span carries: its name, status text, attributes (keys
/// and values, a number or a flag as 8) and events (names, times, attributes). What the
/// host copies and exports of it, give or take the containers.
fn span_bytes(record: &SpanRecord) -> usize {
    const SCALAR_BYTES: usize = 8;
    let attributes = |attributes: &[(Name, SpanValue)]| -> usize {
        attributes
            .iter()
            .map(|(key, value)| {
                key.len()
                    + match value {
                        SpanValue::Text(text) => text.len(),
                        SpanValue::Bool(_) | SpanValue::I64(_) | SpanValue::F64(_) => SCALAR_BYTES,
                    }
            })
            .sum()
    };
    let events: usize = record
        .events
        .iter()
        .map(|event| event.name.len() + SCALAR_BYTES + attributes(&event.attributes))
        .sum();
    let status = match &record.status {
        SpanStatus::Error(text) => text.len(),
        SpanStatus::Unset | SpanStatus::Ok => 0,
    };
    record.name.len() + status + attributes(&record.attributes) + events
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A span within its bounds (name, attributes, events, and the text of each).
fn check_bounds(record: &SpanRecord) -> Result<(), SpanRefusal> {
    let over = |what, bound| Err(SpanRefusal::OverBound { what, bound });
    let attributes_fit = |attributes: &[(Name, SpanValue)]| {
        if attributes.len() > MAX_ATTRIBUTES {
            return over("attribute count", MAX_ATTRIBUTES);
        }
        for (key, value) in attributes {
            if key.len() > MAX_KEY_BYTES {
                return over("attribute key length", MAX_KEY_BYTES);
            }
            if let SpanValue::Text(text) = value
                && text.len() > MAX_TEXT_BYTES
            {
                return over("attribute text length", MAX_TEXT_BYTES);
            }
        }
        Ok(())
    };
    if record.name.len() > MAX_NAME_BYTES {
        return over("name length", MAX_NAME_BYTES);
    }
    attributes_fit(&record.attributes)?;
    if record.events.len() > MAX_EVENTS {
        return over("event count", MAX_EVENTS);
    }
    for event in &record.events {
        if event.name.len() > MAX_NAME_BYTES {
            return over("event name length", MAX_NAME_BYTES);
        }
        attributes_fit(&event.attributes)?;
    }
    if let SpanStatus::Error(text) = &record.status
        && text.len() > MAX_TEXT_BYTES
    {
        return over("status text length", MAX_TEXT_BYTES);
    }
    Ok(())
}

/// The context to send with a request made under `span`: `None` unless the span is
/// exported and sampled.
pub(crate) fn trace_of(span: &tracing::Span) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    let context = code_mode_trace::context_of(span);
    let span_context = context.span().span_context().clone();
    (span_context.is_valid() && span_context.is_sampled()).then(|| TraceContext {
        trace_id: span_context.trace_id().to_bytes(),
        span_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}

/// Exports one checked span with its own ids, parent and times, through `tracer`.
fn emit(tracer: &opentelemetry::global::BoxedTracer, record: SpanRecord) {
    let parent = SpanContext::new(
        TraceId::from_bytes(record.trace_id),
        SpanId::from_bytes(record.parent_span_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let parent = opentelemetry::Context::new().with_remote_span_context(parent);
    let builder = tracer
        .span_builder(record.name.into_cow())
        .with_span_id(SpanId::from_bytes(record.span_id))
        .with_start_time(time(record.start_unix_nanos))
        .with_attributes(key_values(record.attributes))
        .with_events(
            record
                .events
                .into_iter()
                .map(|event| {
                    opentelemetry::trace::Event::new(
                        event.name.into_cow(),
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

fn time(unix_nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_nanos)
}

/// The attributes as OpenTelemetry's: a name that is static text (the runtime's own) is
/// taken as such, not copied.
fn key_values(attributes: Vec<(Name, SpanValue)>) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                SpanValue::Bool(value) => Value::Bool(value),
                SpanValue::I64(value) => Value::I64(value),
                SpanValue::F64(value) => Value::F64(value),
                SpanValue::Text(value) => Value::from(value),
            };
            KeyValue::new(key.into_cow(), value)
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

    const HOST_SPAN: [u8; 8] = [9; 8];

    fn span(trace: [u8; 16], span: u8, parent: [u8; 8]) -> SpanRecord {
        SpanRecord {
            trace_id: trace,
            span_id: [span; 8],
            parent_span_id: parent,
            name: Name::from(format!("span {span}")),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Vec::new(),
            events: Vec::new(),
            status: SpanStatus::Unset,
        }
    }

    #[test]
    fn a_connection_remembers_the_latest_traces_it_sent_and_forgets_the_oldest() {
        let mut sent = SentTraces::default();
        sent.remember(id(0), HOST_SPAN);
        // Sent again: still one entry, so it is not forgotten twice as early.
        sent.remember(id(0), HOST_SPAN);
        for n in 1..SENT_TRACES_KEPT {
            sent.remember(id(n), HOST_SPAN);
        }
        assert!(sent.knows(&id(0)), "exactly as many as are kept");
        sent.remember(id(SENT_TRACES_KEPT), HOST_SPAN);
        assert!(!sent.knows(&id(0)), "the oldest is forgotten");
        assert!(sent.knows(&id(1)) && sent.knows(&id(SENT_TRACES_KEPT)));
        assert!(!sent.knows(&id(SENT_TRACES_KEPT + 1)), "never sent");
        assert_eq!(sent.order.len(), SENT_TRACES_KEPT);
        assert_eq!(sent.traces.len(), SENT_TRACES_KEPT);
    }

    #[test]
    fn spans_hang_under_the_hosts_span_or_one_handed_back_and_children_wait_for_parents() {
        let mut sent = SentTraces::default();
        sent.remember(id(1), HOST_SPAN);
        // A grandchild and a child end before their parent, which hangs under the host's.
        let exported = sent
            .export(vec![span(id(1), 3, [2; 8]), span(id(1), 2, [1; 8])])
            .unwrap();
        assert!(exported.is_empty(), "nothing known yet");
        assert!(sent.traces[&id(1)].returned.is_empty());
        let exported = sent.export(vec![span(id(1), 1, HOST_SPAN)]).unwrap();
        assert_eq!(
            exported,
            [[1; 8], [2; 8], [3; 8]],
            "each parent exported before its children"
        );
        let returned = &sent.traces[&id(1)].returned;
        assert_eq!(
            returned.len(),
            3,
            "the parent brings its waiting descendants"
        );
        assert_eq!(sent.waiting, 0);
        // Under a span of another trace, or of none: it waits, and is never exported.
        sent.remember(id(2), [7; 8]);
        sent.export(vec![span(id(1), 4, [7; 8])]).unwrap();
        assert!(!sent.traces[&id(1)].returned.contains(&[4; 8]));
        // A trace never sent: dropped.
        sent.export(vec![span(id(3), 5, HOST_SPAN)]).unwrap();
        assert!(!sent.knows(&id(3)));
    }

    #[test]
    fn a_span_with_the_hosts_id_an_id_again_or_over_its_bounds_is_refused() {
        let mut sent = SentTraces::default();
        sent.remember(id(1), HOST_SPAN);
        let mut hosts = span(id(1), 9, HOST_SPAN);
        hosts.span_id = HOST_SPAN;
        assert!(matches!(
            sent.export(vec![hosts]),
            Err(SpanRefusal::HostsId { .. })
        ));
        sent.export(vec![span(id(1), 1, HOST_SPAN)]).unwrap();
        assert!(matches!(
            sent.export(vec![span(id(1), 1, HOST_SPAN)]),
            Err(SpanRefusal::IdAgain { .. })
        ));
        let mut long = span(id(1), 2, HOST_SPAN);
        long.name = "n".repeat(MAX_NAME_BYTES + 1).into();
        // The spans before the one out of bounds are still exported; none after it.
        assert!(matches!(
            sent.export(vec![
                span(id(1), 5, HOST_SPAN),
                long,
                span(id(1), 6, HOST_SPAN)
            ]),
            Err(SpanRefusal::OverBound { .. })
        ));
        assert!(sent.traces[&id(1)].returned.contains(&[5; 8]));
        assert!(!sent.traces[&id(1)].returned.contains(&[6; 8]));
        let mut many = span(id(1), 3, HOST_SPAN);
        many.attributes = (0..=MAX_ATTRIBUTES)
            .map(|n| (n.to_string().into(), SpanValue::I64(0)))
            .collect();
        assert!(sent.export(vec![many]).is_err());
        let mut text = span(id(1), 4, HOST_SPAN);
        text.attributes = vec![("k".into(), SpanValue::Text("x".repeat(MAX_TEXT_BYTES + 1)))];
        assert!(sent.export(vec![text]).is_err());
    }

    /// A span of `trace` under `parent` carrying `attributes` texts of the longest length.
    fn heavy(trace: [u8; 16], span_id: [u8; 8], parent: [u8; 8], attributes: usize) -> SpanRecord {
        let mut record = span(trace, 0, parent);
        record.span_id = span_id;
        record.attributes = (0..attributes)
            .map(|n| {
                (
                    n.to_string().into(),
                    SpanValue::Text("x".repeat(MAX_TEXT_BYTES)),
                )
            })
            .collect();
        record
    }

    #[test]
    fn a_span_over_its_byte_budget_is_dropped_and_counted() {
        let mut sent = SentTraces::default();
        sent.remember(id(1), HOST_SPAN);
        // Within every count and length bound, but its texts alone fill the budget.
        let over = heavy(id(1), [1; 8], HOST_SPAN, MAX_ATTRIBUTES);
        assert!(check_bounds(&over).is_ok());
        assert!(span_bytes(&over) > MAX_SPAN_BYTES);
        sent.export(vec![over]).unwrap();
        assert!(sent.traces[&id(1)].returned.is_empty(), "exported");
        assert_eq!(sent.over_budget, 1);
        // Just under it: exported.
        let under = heavy(id(1), [2; 8], HOST_SPAN, MAX_ATTRIBUTES - 1);
        assert!(span_bytes(&under) <= MAX_SPAN_BYTES);
        sent.export(vec![under]).unwrap();
        assert!(sent.traces[&id(1)].returned.contains(&[2; 8]));
        assert_eq!(sent.over_budget, 1);
    }

    #[test]
    fn waiting_spans_past_their_byte_budget_are_dropped_and_a_parent_frees_theirs() {
        let mut sent = SentTraces::default();
        sent.remember(id(1), HOST_SPAN);
        let each = span_bytes(&heavy(id(1), [1; 8], [0xaa; 8], MAX_ATTRIBUTES - 1));
        let fit = MAX_WAITING_BYTES / each;
        assert!(fit < WAITING_KEPT, "the byte budget binds before the count");
        // Each waits for a parent of its own that has not come.
        let waiting = |n: usize| {
            let parent = (0x1000 + n as u64).to_le_bytes();
            heavy(
                id(1),
                (n as u64 + 1).to_le_bytes(),
                parent,
                MAX_ATTRIBUTES - 1,
            )
        };
        sent.export((0..=fit).map(waiting).collect()).unwrap();
        assert_eq!(sent.waiting, fit, "the one past the budget waits");
        assert_eq!(sent.waiting_bytes, fit * each);
        assert_eq!(sent.over_budget, 1);
        // The first one's parent comes: both go out, and their bytes are free again.
        let mut parent = span(id(1), 0, HOST_SPAN);
        parent.span_id = 0x1000u64.to_le_bytes();
        sent.export(vec![parent]).unwrap();
        assert_eq!(sent.waiting, fit - 1);
        assert_eq!(sent.waiting_bytes, (fit - 1) * each);
        sent.export(vec![waiting(fit + 1)]).unwrap();
        assert_eq!(sent.waiting, fit, "room for one more");
        assert_eq!(sent.over_budget, 1);
    }

    #[test]
    fn a_forgotten_traces_waiting_spans_give_their_bytes_back() {
        let mut sent = SentTraces::default();
        sent.remember(id(0), HOST_SPAN);
        sent.export(vec![heavy(id(0), [1; 8], [0xaa; 8], 2)])
            .unwrap();
        assert_eq!((sent.waiting, sent.spans), (1, 1));
        assert!(sent.waiting_bytes > 0);
        for n in 1..=SENT_TRACES_KEPT {
            sent.remember(id(n), HOST_SPAN);
        }
        assert!(!sent.knows(&id(0)), "forgotten");
        assert_eq!((sent.waiting, sent.waiting_bytes, sent.spans), (0, 0, 0));
    }

    #[test]
    fn each_bound_on_events_keys_and_status_refuses_a_span() {
        let mut sent = SentTraces::default();
        sent.remember(id(1), HOST_SPAN);
        let event =
            |name: String, attributes: Vec<(Name, SpanValue)>| code_mode_wire::payload::SpanEvent {
                name: name.into(),
                unix_nanos: 1,
                attributes,
            };
        let refused = |sent: &mut SentTraces, record: SpanRecord| match sent.export(vec![record]) {
            Err(SpanRefusal::OverBound { what, .. }) => what,
            other => panic!("not refused for a bound: {other:?}"),
        };
        let mut events = span(id(1), 1, HOST_SPAN);
        events.events = (0..=MAX_EVENTS)
            .map(|_| event("e".into(), Vec::new()))
            .collect();
        assert_eq!(refused(&mut sent, events), "event count");
        let mut event_name = span(id(1), 2, HOST_SPAN);
        event_name.events = vec![event("e".repeat(MAX_NAME_BYTES + 1), Vec::new())];
        assert_eq!(refused(&mut sent, event_name), "event name length");
        let mut event_text = span(id(1), 3, HOST_SPAN);
        let long = SpanValue::Text("x".repeat(MAX_TEXT_BYTES + 1));
        event_text.events = vec![event("e".into(), vec![("k".into(), long)])];
        assert_eq!(refused(&mut sent, event_text), "attribute text length");
        let mut key = span(id(1), 4, HOST_SPAN);
        key.attributes = vec![("k".repeat(MAX_KEY_BYTES + 1).into(), SpanValue::Bool(true))];
        assert_eq!(refused(&mut sent, key), "attribute key length");
        let mut event_key = span(id(1), 5, HOST_SPAN);
        let attributes = vec![("k".repeat(MAX_KEY_BYTES + 1).into(), SpanValue::I64(1))];
        event_key.events = vec![event("e".into(), attributes)];
        assert_eq!(refused(&mut sent, event_key), "attribute key length");
        let mut status = span(id(1), 6, HOST_SPAN);
        status.status = SpanStatus::Error("x".repeat(MAX_TEXT_BYTES + 1));
        assert_eq!(refused(&mut sent, status), "status text length");
        // At each bound exactly: exported.
        let mut full = span(id(1), 7, HOST_SPAN);
        full.events = (0..MAX_EVENTS)
            .map(|_| event("e".repeat(MAX_NAME_BYTES), Vec::new()))
            .collect();
        full.attributes = vec![("k".repeat(MAX_KEY_BYTES).into(), SpanValue::Bool(true))];
        sent.export(vec![full]).unwrap();
        assert!(sent.traces[&id(1)].returned.contains(&[7; 8]));
    }

    #[test]
    fn spans_over_the_rate_are_dropped() {
        let mut sent = SentTraces::default();
        sent.remember(id(1), HOST_SPAN);
        let over = MAX_SPANS_PER_SECOND as usize + 10;
        let records = (0..over)
            .map(|n| {
                let mut record = span(id(1), 0, HOST_SPAN);
                record.span_id = (n as u64 + 1).to_le_bytes();
                record
            })
            .collect();
        sent.export(records).unwrap();
        assert_eq!(
            sent.traces[&id(1)].returned.len(),
            MAX_SPANS_PER_SECOND as usize
        );
    }
}
