//! Spans of cells and their nested calls, made the same way by every provider: a
//! [`Traced`] session wraps a provider's own session and a [`CellTraces`] wraps its
//! delegate.
//!
//! - `code_mode.cell` starts when `execute` is called, as a child of the caller's current
//!   `tracing` span, so an agent core that exports its own traces sees each cell under
//!   its own span with no extra code. It ends when the cell is closed. It holds the cell's
//!   id, its outcome (`status`: completed, error, terminated; `error.kind` as
//!   [`code_mode_protocol::FailureKind::as_str`]; `error.text`, capped), the text bytes it output, its nested
//!   calls and observations, and in process the CPU time its (last) incarnation used
//!   (`cpu.time_ms`). A yield is an event on it.
//! - `code_mode.tool_call` is a child of its cell's span, from the call to its answer:
//!   tool name, call id, kind and `status` (ok, error).
//! - `code_mode.wait` and `code_mode.terminate` are the caller's observations, with the
//!   cell's id.
//! - The provider's own session runs inside the cell's span, so what it traces of the
//!   cell's inner life hangs under it: in process, `code_mode.compile` and
//!   `code_mode.evaluate`, each timer that fires (an event of the cell's span), and
//!   `code_mode.hibernated` and `code_mode.replay` spans for a hibernation and the rebuild
//!   that woke the cell ([`under`] makes them with the cell span's subscriber).
//!
//! Nothing the model wrote is in a span (no source, arguments or output text) unless the
//! process turned capture on ([`set_capture`]). With no subscriber interested, spans are
//! disabled at their call site and nothing else is done.

use code_mode_internal::sync::lock;
use code_mode_protocol::session::{
    BoxFuture, CellResponse, CodeModeSession, CodeModeSessionDelegate, DelegateLayer, ExecHooks,
    ExecRequest, NestedToolCall, PendingOutcome, SessionError, StartedCell, StartedPendingCell,
    WaitRequest,
};
use code_mode_protocol::stored::StoredValues;
use code_mode_protocol::{CellId, JsonText, ToolError};
use opentelemetry::trace::FutureExt as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// The most bytes of text a span attribute holds (error texts; captured source and
/// arguments).
pub const SPAN_TEXT_LIMIT_BYTES: usize = 4096;

const CAPTURE_SOURCE: u8 = 1;
const CAPTURE_ARGUMENTS: u8 = 2;
static CAPTURE: AtomicU8 = AtomicU8::new(0);

/// Lets spans hold the cells' source and the nested calls' arguments (each capped at
/// [`SPAN_TEXT_LIMIT_BYTES`]). Off unless a process turns it on.
pub fn set_capture(source: bool, arguments: bool) {
    let mut bits = 0;
    if source {
        bits |= CAPTURE_SOURCE;
    }
    if arguments {
        bits |= CAPTURE_ARGUMENTS;
    }
    CAPTURE.store(bits, Ordering::Relaxed);
}

fn capturing(bit: u8) -> bool {
    CAPTURE.load(Ordering::Relaxed) & bit != 0
}

/// Whether spans may hold the cells' source ([`set_capture`]).
pub fn capturing_source() -> bool {
    capturing(CAPTURE_SOURCE)
}

/// Whether spans may hold the nested calls' arguments ([`set_capture`]).
pub fn capturing_arguments() -> bool {
    capturing(CAPTURE_ARGUMENTS)
}

/// `text` cut to at most [`SPAN_TEXT_LIMIT_BYTES`] on a character boundary.
pub fn capped(text: &str) -> &str {
    if text.len() <= SPAN_TEXT_LIMIT_BYTES {
        return text;
    }
    let mut end = SPAN_TEXT_LIMIT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Runs `make` with `parent`'s own subscriber as the thread's, or not at all when `parent`
/// is disabled: a child span (or event) made on a thread of the cell's (its V8 thread, a
/// runtime worker) reaches the subscriber of the span it belongs under, even one the
/// caller set for its own thread only.
pub fn under<T>(parent: &tracing::Span, make: impl FnOnce() -> T) -> Option<T> {
    parent.with_subscriber(|(_, dispatch)| tracing::dispatcher::with_default(dispatch, make))
}

/// Records several fields of `span` in one pass through its subscriber's layers (each
/// `Span::record` makes a pass of its own); a field with a `None` value is left as it is.
/// A span that lacks any of the fields gets none of them: callers name only fields their
/// span declares.
fn record_fields<const N: usize>(
    span: &tracing::Span,
    values: [(&str, Option<&dyn tracing::Value>); N],
) {
    let Some(metadata) = span.metadata() else {
        return;
    };
    let fields = metadata.fields();
    let named = values.map(|(name, value)| (fields.field(name), value));
    if named.iter().any(|(field, _)| field.is_none()) {
        return;
    }
    let present = named
        .each_ref()
        .map(|(field, value)| (field.as_ref().expect("checked above"), *value));
    span.record_all(&fields.value_set(&present));
}

/// One traced cell: its span (with the cell's id), and what is summed over its life,
/// recorded on the span in one pass as its trace ends (dropped: when the cell closed and
/// its final outcome was recorded, or when it is forgotten without one).
struct CellTrace {
    span: tracing::Span,
    output_bytes: u64,
    tool_calls: u64,
    /// Its final outcome, once observed.
    outcome: Option<Outcome>,
}

/// A cell's final outcome, as its span holds it.
enum Outcome {
    Completed,
    Terminated,
    Failed { kind: &'static str, text: String },
}

impl CellTrace {
    fn ended(&self) -> bool {
        self.outcome.is_some()
    }
}

/// A text field's value, if it has one.
fn text_value<'a>(text: &'a Option<&'a str>) -> Option<&'a dyn tracing::Value> {
    text.as_ref().map(|text| text as &dyn tracing::Value)
}

impl Drop for CellTrace {
    fn drop(&mut self) {
        let (status, code, kind, text) = match &self.outcome {
            None => (None, None, None, None),
            Some(Outcome::Completed) => (Some("completed"), Some("ok"), None, None),
            Some(Outcome::Terminated) => (Some("terminated"), None, None, None),
            Some(Outcome::Failed { kind, text }) => (
                Some("error"),
                Some("error"),
                Some(*kind),
                Some(text.as_str()),
            ),
        };
        record_fields(
            &self.span,
            [
                ("output.bytes", Some(&self.output_bytes)),
                (
                    "tool_calls",
                    (self.tool_calls > 0).then_some(&self.tool_calls as &dyn tracing::Value),
                ),
                ("status", text_value(&status)),
                ("otel.status_code", text_value(&code)),
                ("error.kind", text_value(&kind)),
                ("error.text", text_value(&text)),
            ],
        );
    }
}

/// Most closed cells whose final outcome has not reached their span yet (see
/// [`CellTraces::closed`]); past it the oldest span ends without its outcome.
const CLOSING_LIMIT: usize = 256;

/// The spans of a session's live cells, by id. A span ends when its cell is closed and
/// its final outcome is recorded.
#[derive(Default)]
pub struct CellTraces {
    cells: Mutex<HashMap<CellId, CellTrace>>,
    /// Cells closed before their caller recorded the final answer it took: a cell is
    /// closed once its answer is taken, which can come before the taker records it.
    closing: Mutex<std::collections::VecDeque<(CellId, CellTrace)>>,
}

impl std::fmt::Debug for CellTraces {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CellTraces")
            .field("cells", &lock(&self.cells).len())
            .finish()
    }
}

impl CellTraces {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// `delegate` with each nested call traced under its cell's span, and each cell's
    /// span ended when the cell closes.
    pub fn delegate(
        self: &Arc<Self>,
        delegate: Arc<dyn CodeModeSessionDelegate>,
    ) -> Arc<dyn CodeModeSessionDelegate> {
        Arc::new(TracedDelegate {
            inner: delegate,
            traces: self.clone(),
        })
    }

    fn admit(&self, cell_id: &CellId, span: tracing::Span) {
        // At once, unlike what the cell sums up: log lines made inside the span show it.
        span.record("cell.id", tracing::field::display(cell_id));
        lock(&self.cells).insert(
            cell_id.clone(),
            CellTrace {
                span,
                output_bytes: 0,
                tool_calls: 0,
                outcome: None,
            },
        );
    }

    /// Records an observation of a cell on its span; a final one of a cell closed already
    /// ends the span.
    fn observed(&self, response: &CellResponse) {
        let mut cells = lock(&self.cells);
        if let Some(cell) = cells.get_mut(response.cell_id()) {
            Self::record(cell, response);
            return;
        }
        // Under the cells' lock, as `closed` moves a cell: none is between the two.
        let mut closing = lock(&self.closing);
        if let Some(index) = closing
            .iter()
            .position(|(cell_id, _)| cell_id == response.cell_id())
        {
            let cell = &mut closing[index].1;
            Self::record(cell, response);
            if cell.ended() {
                closing.remove(index);
            }
        }
    }

    /// Sums what `response` shows of the cell; a final one is its outcome. The span gets
    /// them as the cell's trace ends (a yield is an event at once).
    fn record(cell: &mut CellTrace, response: &CellResponse) {
        cell.output_bytes += response
            .content_items()
            .iter()
            .filter_map(|item| item.as_text())
            .map(|text| text.len() as u64)
            .sum::<u64>();
        cell.outcome = match response {
            CellResponse::Yielded { .. } => {
                tracing::info!(parent: &cell.span, "yielded");
                return;
            }
            CellResponse::Terminated { .. } => Some(Outcome::Terminated),
            CellResponse::Result { failure: None, .. } => Some(Outcome::Completed),
            CellResponse::Result {
                failure: Some(failure),
                ..
            } => Some(Outcome::Failed {
                kind: failure.kind.as_str(),
                text: capped(&failure.text).to_owned(),
            }),
        };
    }

    fn pending(&self, outcome: &PendingOutcome) {
        match outcome {
            PendingOutcome::Completed(response) => self.observed(response),
            PendingOutcome::Pending { cell_id, .. } => {
                if let Some(cell) = lock(&self.cells).get(cell_id) {
                    tracing::info!(parent: &cell.span, "pending");
                }
            }
        }
    }

    /// The cell is closed: its span ends now if its final outcome is recorded, else once
    /// the caller that took the final answer records it (dropping the last handle ends
    /// the span).
    fn closed(&self, cell_id: &CellId) {
        let mut cells = lock(&self.cells);
        let Some(cell) = cells.remove(cell_id) else {
            return;
        };
        if cell.ended() {
            return;
        }
        let mut closing = lock(&self.closing);
        if closing.len() == CLOSING_LIMIT {
            closing.pop_front();
        }
        closing.push_back((cell_id.clone(), cell));
    }

    /// A span for a nested call of a traced cell, or `None` when the cell is not traced.
    fn call_span(&self, call: &NestedToolCall) -> Option<tracing::Span> {
        let mut cells = lock(&self.cells);
        let cell = cells.get_mut(&call.cell_id)?;
        cell.tool_calls += 1;
        let span = tracing::info_span!(
            parent: &cell.span,
            "code_mode.tool_call",
            cell.id = %call.cell_id,
            tool.name = %call.tool_name,
            tool.call_id = %call.call_id,
            tool.kind = call.kind.as_str(),
            status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            tool.arguments = tracing::field::Empty,
        );
        if capturing(CAPTURE_ARGUMENTS)
            && let Some(input) = &call.input
        {
            span.record("tool.arguments", capped(input.as_str()));
        }
        Some(span)
    }
}

/// A delegate whose nested calls are traced under their cells' spans.
struct TracedDelegate {
    inner: Arc<dyn CodeModeSessionDelegate>,
    traces: Arc<CellTraces>,
}

impl DelegateLayer for TracedDelegate {
    fn inner(&self) -> &dyn CodeModeSessionDelegate {
        &*self.inner
    }

    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        let Some(span) = self.traces.call_span(&call) else {
            return self.inner.invoke_tool(call, cancel);
        };
        // The tool runs in the call span's OpenTelemetry context as well, so that what an
        // agent core instruments with OpenTelemetry itself (not `tracing`) hangs under the
        // call: our layer does not make a span's context current on each enter (`layer`).
        let answer = self
            .inner
            .invoke_tool(call, cancel)
            .with_context(crate::context_of(&span));
        let recorded = span.clone();
        Box::pin(
            async move {
                let result = answer.await;
                let status = if result.is_ok() { "ok" } else { "error" };
                record_fields(
                    &recorded,
                    [
                        ("status", Some(&status)),
                        ("otel.status_code", Some(&status)),
                    ],
                );
                result
            }
            .instrument(span),
        )
    }

    fn cell_closed(&self, cell_id: &CellId) {
        self.traces.closed(cell_id);
        self.inner.cell_closed(cell_id);
    }
}

/// A provider's session with its cells traced (see the module's documentation). It
/// dereferences to the provider's own session for what only that session has.
pub struct Traced<S> {
    inner: S,
    traces: Arc<CellTraces>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Traced<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(formatter)
    }
}

impl<S> Traced<S> {
    /// `inner`, whose delegate must be `traces.delegate(...)` (for the cells' ends and
    /// the nested calls).
    pub fn new(inner: S, traces: Arc<CellTraces>) -> Self {
        Self { inner, traces }
    }

    /// The provider's own session.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S> std::ops::Deref for Traced<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.inner
    }
}

impl<S: CodeModeSession> Traced<S> {
    /// Runs the observation `call` makes inside `span`, recording what it observed with
    /// `record`; with `span` disabled, just runs it.
    fn observe<'a, T: Send + 'a>(
        &'a self,
        span: tracing::Span,
        record: fn(&CellTraces, &T),
        call: impl FnOnce(&'a S) -> BoxFuture<'a, Result<T, SessionError>>,
    ) -> BoxFuture<'a, Result<T, SessionError>> {
        if span.is_disabled() {
            return call(&self.inner);
        }
        let observed = call(&self.inner);
        Box::pin(
            async move {
                let observed = observed.await;
                if let Ok(observed) = &observed {
                    record(&self.traces, observed);
                }
                observed
            }
            .instrument(span),
        )
    }
}

/// The span of a cell `request` starts (disabled when no subscriber wants it).
fn cell_span(request: &ExecRequest) -> tracing::Span {
    let span = tracing::info_span!(
        "code_mode.cell",
        cell.id = tracing::field::Empty,
        status = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        error.kind = tracing::field::Empty,
        error.text = tracing::field::Empty,
        output.bytes = tracing::field::Empty,
        tool_calls = tracing::field::Empty,
        cpu.time_ms = tracing::field::Empty,
        cell.source = tracing::field::Empty,
    );
    if !span.is_disabled() && capturing(CAPTURE_SOURCE) {
        span.record("cell.source", capped(&request.source));
    }
    span
}

/// Makes a cell's span as an exec does (its context taken for the request, entered, a
/// field recorded) and ends it: done once, muted, as the fronts' subscriber is installed.
#[cfg(feature = "export")]
pub(crate) fn warm_cell_span() {
    let span = cell_span(&ExecRequest::new(String::new()));
    drop(crate::context_of(&span));
    span.in_scope(|| span.record("status", "completed"));
}

/// Records on a cell's span that its exec failed with `error`.
fn failed(span: &tracing::Span, error: &SessionError) {
    span.record("status", "error");
    span.record("otel.status_code", "error");
    span.record("error.text", capped(&error.to_string()));
}

impl<S: CodeModeSession> CodeModeSession for Traced<S> {
    fn execute_with(
        &self,
        request: ExecRequest,
        mut hooks: ExecHooks,
    ) -> BoxFuture<'_, Result<StartedCell, SessionError>> {
        let span = cell_span(&request);
        if span.is_disabled() {
            return self.inner.execute_with(request, hooks);
        }
        if let Some(delegate) = hooks.delegate.take() {
            hooks.delegate = Some(self.traces.delegate(delegate));
        }
        let earlier = hooks.admitted.take();
        let traces = self.traces.clone();
        let admitted_span = span.clone();
        hooks.admitted = Some(Arc::new(move |cell_id: &CellId| {
            traces.admit(cell_id, admitted_span.clone());
            if let Some(earlier) = &earlier {
                earlier(cell_id);
            }
        }));
        // Inside the cell's span: a provider that traces the cell's inner life (timers,
        // hibernation, replay) hangs it under this span.
        let started = span.in_scope(|| self.inner.execute_with(request, hooks));
        let traces = self.traces.clone();
        Box::pin(
            async move {
                let started = started.await;
                match &started {
                    Ok(started) => traces.observed(&started.initial_response),
                    Err(error) => failed(&tracing::Span::current(), error),
                }
                started
            }
            .instrument(span),
        )
    }

    fn wait_with(
        &self,
        request: WaitRequest,
        preempt: Option<CancellationToken>,
    ) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        let span = tracing::info_span!("code_mode.wait", cell.id = %request.cell_id);
        self.observe(span, CellTraces::observed, |inner| {
            inner.wait_with(request, preempt)
        })
    }

    fn interrupt(&self) -> BoxFuture<'_, Result<Vec<CellId>, SessionError>> {
        self.inner.interrupt()
    }

    fn terminate(&self, cell_id: CellId) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
        let span = tracing::info_span!("code_mode.terminate", cell.id = %cell_id);
        self.observe(span, CellTraces::observed, |inner| inner.terminate(cell_id))
    }

    fn execute_to_pending(
        &self,
        request: ExecRequest,
    ) -> BoxFuture<'_, Result<StartedPendingCell, SessionError>> {
        let span = cell_span(&request);
        if span.is_disabled() {
            return self.inner.execute_to_pending(request);
        }
        let started = span.in_scope(|| self.inner.execute_to_pending(request));
        let traces = self.traces.clone();
        let admitted = span.clone();
        Box::pin(
            async move {
                let started = started.await;
                match &started {
                    Ok(started) => {
                        // Known by its id from here on (its later observations and close).
                        traces.admit(&started.cell_id, admitted);
                        traces.pending(&started.outcome);
                        if let PendingOutcome::Completed(_) = started.outcome {
                            traces.closed(&started.cell_id);
                        }
                    }
                    Err(error) => failed(&tracing::Span::current(), error),
                }
                started
            }
            .instrument(span),
        )
    }

    fn wait_to_pending(
        &self,
        cell_id: CellId,
    ) -> BoxFuture<'_, Result<PendingOutcome, SessionError>> {
        let span = tracing::info_span!("code_mode.wait", cell.id = %cell_id);
        self.observe(span, CellTraces::pending, |inner| {
            inner.wait_to_pending(cell_id)
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.inner.shutdown()
    }

    fn stored_values(&self) -> StoredValues {
        self.inner.stored_values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    /// Keeps the fields each span had when it closed, by name, as text.
    #[derive(Clone, Default)]
    struct Closed(Arc<Mutex<Vec<HashMap<String, String>>>>);

    impl Closed {
        fn statuses(&self) -> Vec<Option<String>> {
            lock(&self.0)
                .iter()
                .map(|fields| fields.get("status").cloned())
                .collect()
        }
    }

    #[derive(Default)]
    struct Fields(HashMap<String, String>);

    impl tracing::field::Visit for Fields {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
    }

    impl<S> tracing_subscriber::Layer<S> for Closed
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            _: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            context: Context<'_, S>,
        ) {
            if let Some(span) = context.span(id) {
                span.extensions_mut().insert(Fields::default());
            }
        }
        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            context: Context<'_, S>,
        ) {
            if let Some(span) = context.span(id)
                && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
            {
                values.record(fields);
            }
        }
        fn on_close(&self, id: tracing::span::Id, context: Context<'_, S>) {
            if let Some(span) = context.span(&id)
                && span.name() == "code_mode.cell"
            {
                let fields = span.extensions().get::<Fields>().map(|f| f.0.clone());
                lock(&self.0).push(fields.unwrap_or_default());
            }
        }
    }

    fn completed(cell_id: &CellId) -> CellResponse {
        CellResponse::Result {
            cell_id: cell_id.clone(),
            content_items: Vec::new(),
            failure: None,
            wall_time: std::time::Duration::ZERO,
        }
    }

    /// Runs `test` with fresh cell traces, under a subscriber that keeps the fields of each
    /// cell span that closes.
    fn with_closed_spans(test: impl FnOnce(&Closed, &Arc<CellTraces>)) {
        let closed = Closed::default();
        let subscriber = tracing_subscriber::registry().with(closed.clone());
        tracing::subscriber::with_default(subscriber, || test(&closed, &CellTraces::new()));
    }

    #[test]
    fn a_cell_closed_before_its_taker_records_the_final_answer_ends_with_its_outcome() {
        with_closed_spans(|closed, traces| {
            let early = CellId::new(1);
            traces.admit(&early, cell_span(&ExecRequest::new("text(1)")));
            // The answer was taken, so the cell closed; its taker records it after.
            traces.closed(&early);
            assert!(
                closed.statuses().is_empty(),
                "the span ended without its outcome"
            );
            traces.observed(&completed(&early));
            assert_eq!(closed.statuses(), [Some("completed".to_owned())]);
            // The usual order: recorded, then closed.
            let usual = CellId::new(2);
            traces.admit(&usual, cell_span(&ExecRequest::new("text(2)")));
            traces.observed(&completed(&usual));
            traces.closed(&usual);
            assert_eq!(closed.statuses().len(), 2);
            assert_eq!(closed.statuses()[1].as_deref(), Some("completed"));
        });
    }

    /// A delegate whose tools answer at once.
    struct Answers;

    impl CodeModeSessionDelegate for Answers {
        fn invoke_tool(
            &self,
            _: NestedToolCall,
            _: CancellationToken,
        ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
            Box::pin(async { Ok(JsonText::from_value(&serde_json::json!(1))) })
        }
    }

    /// What a cell's life sums up reaches its span by the time it ends: its id, the text
    /// bytes of every observation, its nested calls, and its final outcome.
    #[test]
    fn a_cells_span_ends_with_its_id_output_calls_and_outcome() {
        with_closed_spans(|closed, traces| {
            let cell_id = CellId::new(7);
            traces.admit(&cell_id, cell_span(&ExecRequest::new("")));
            let delegate = traces.delegate(Arc::new(Answers));
            for call in 1..=2 {
                let call = NestedToolCall {
                    cell_id: cell_id.clone(),
                    call_id: code_mode_protocol::CallId::new(call),
                    tool_name: "t".to_owned(),
                    kind: code_mode_protocol::ToolKind::Function,
                    input: None,
                    exec_call_id: None,
                };
                let mut answer = delegate.invoke_tool(call, CancellationToken::new());
                let waker = std::task::Waker::noop();
                let polled = answer
                    .as_mut()
                    .poll(&mut std::task::Context::from_waker(waker));
                assert!(polled.is_ready());
            }
            let text = |text: &str| code_mode_protocol::ContentItem::InputText {
                text: text.to_owned(),
            };
            traces.observed(&CellResponse::Yielded {
                cell_id: cell_id.clone(),
                content_items: vec![text("abc")],
                wall_time: std::time::Duration::ZERO,
            });
            traces.observed(&CellResponse::Result {
                cell_id: cell_id.clone(),
                content_items: vec![text("de")],
                failure: Some(code_mode_protocol::session::CellFailure::new(
                    code_mode_protocol::FailureKind::ScriptError,
                    "boom",
                )),
                wall_time: std::time::Duration::ZERO,
            });
            assert!(closed.statuses().is_empty(), "ended before it closed");
            traces.closed(&cell_id);
            let ended = lock(&closed.0).clone();
            let [fields] = &ended[..] else {
                panic!("one cell span ended: {ended:?}");
            };
            let field = |name: &str| fields.get(name).map(String::as_str);
            assert_eq!(field("cell.id"), Some("7"));
            assert_eq!(field("output.bytes"), Some("5"));
            assert_eq!(field("tool_calls"), Some("2"));
            assert_eq!(field("status"), Some("error"));
            assert_eq!(field("otel.status_code"), Some("error"));
            assert_eq!(field("error.kind"), Some("script_error"));
            assert_eq!(field("error.text"), Some("boom"));
        });
    }

    /// A delegate whose tool notes the OpenTelemetry span that is current while it runs.
    #[cfg(feature = "export")]
    struct SeesContext(Arc<Mutex<Option<opentelemetry::trace::SpanContext>>>);

    #[cfg(feature = "export")]
    impl CodeModeSessionDelegate for SeesContext {
        fn invoke_tool(
            &self,
            _: NestedToolCall,
            _: CancellationToken,
        ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
            Box::pin(async move {
                use opentelemetry::trace::TraceContextExt as _;
                let current = opentelemetry::Context::current();
                *lock(&self.0) = Some(current.span().span_context().clone());
                Ok(JsonText::from_value(&serde_json::json!(1)))
            })
        }
    }

    /// A tool runs in its call span's OpenTelemetry context, under its cell's trace,
    /// though the layer makes no span's context current on enter.
    #[cfg(feature = "export")]
    #[test]
    fn a_tool_runs_in_its_calls_opentelemetry_context() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let export = crate::records::CellExport::start(
            provider.tracer("test"),
            crate::records::SharedSampler::new(Box::new(
                opentelemetry_sdk::trace::Sampler::AlwaysOn,
            )),
        )
        .expect("the export thread");
        let subscriber = tracing_subscriber::registry().with(crate::records::layer(export));
        tracing::subscriber::with_default(subscriber, || {
            let traces = CellTraces::new();
            let cell_id = CellId::new(1);
            let cell = cell_span(&ExecRequest::new("await tools.t()"));
            let cell_context = {
                use opentelemetry::trace::TraceContextExt as _;
                crate::context_of(&cell).span().span_context().clone()
            };
            traces.admit(&cell_id, cell);
            let seen = Arc::default();
            let delegate = traces.delegate(Arc::new(SeesContext(Arc::clone(&seen))));
            let call = NestedToolCall {
                cell_id,
                call_id: code_mode_protocol::CallId::new(1),
                tool_name: "t".to_owned(),
                kind: code_mode_protocol::ToolKind::Function,
                input: None,
                exec_call_id: None,
            };
            let mut answer = delegate.invoke_tool(call, CancellationToken::new());
            let polled = answer
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
            assert!(polled.is_ready());
            let seen = lock(&seen).clone().expect("the tool ran");
            assert!(seen.is_valid(), "the tool ran in no span's context");
            assert_eq!(seen.trace_id(), cell_context.trace_id());
            assert_ne!(
                seen.span_id(),
                cell_context.span_id(),
                "the cell's, not the call's"
            );
        });
    }
}
