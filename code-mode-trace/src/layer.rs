//! What is traced, and how a span's OpenTelemetry context is reached: the one list of our
//! crates whose spans become OpenTelemetry spans (for the fronts' exporter and for the
//! spans the runtime hands back to its host alike), and [`context_of`] and [`adopt`],
//! which read and set a span's context whichever layer made it: the cells' own records
//! (`records`, in a process that exports with [`crate::Telemetry`]) or
//! `tracing-opentelemetry` (the Codex front's spans, an agent core's).

use opentelemetry::trace::{SpanContext, TraceContextExt as _};
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
