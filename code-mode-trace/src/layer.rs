//! What is traced, and how: the one list of our crates whose spans become OpenTelemetry
//! spans (for the fronts' exporter and for the spans the runtime hands back to its host
//! alike), and the layer that turns them for the fronts.

use opentelemetry::trace::Tracer;
use tracing_subscriber::Layer as _;

/// The crates whose spans are traced: every target that starts with one of these (the
/// runtime's, the host's, the protocol's and the fronts').
pub const TRACED_TARGETS: [&str; 2] = ["code_mode", "codex_code_mode_host"];

/// The Codex front's crate, whose spans are Codex's host's, attribute for attribute.
const CODEX_FRONT: &str = "codex_code_mode_host";

/// The layer that turns the spans of [`TRACED_TARGETS`] at `INFO` or above into
/// OpenTelemetry spans made by `tracer`.
///
/// The Codex front's spans carry everything `tracing-opentelemetry` adds, as Codex's own
/// host's do (a test compares the two). The spans of cells (the `code_mode` crates) carry
/// their own fields and events only, without the layer's extras (the source file and line
/// in our crates, the thread that happened to poll, busy and idle times measured at each
/// enter and exit), which say nothing about a cell and cost every span attributes and
/// clock reads on the exec's path. Nor is a cell span's OpenTelemetry context made
/// current each time the span is entered (a cell's span is entered at every poll of its
/// exec): the one place where an agent core's own code runs under those spans, a nested
/// tool call, is given its call's context (`traced`).
pub fn layer<S, T>(tracer: T) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    T: Tracer + Clone + Send + Sync + 'static,
    T::Span: Send + Sync,
{
    let mut cells = tracing_subscriber::filter::Targets::new();
    for target in TRACED_TARGETS
        .into_iter()
        .filter(|target| *target != CODEX_FRONT)
    {
        cells = cells.with_target(target, tracing::Level::INFO);
    }
    let front =
        tracing_subscriber::filter::Targets::new().with_target(CODEX_FRONT, tracing::Level::INFO);
    let lean = tracing_opentelemetry::layer()
        .with_tracer(tracer.clone())
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(cells);
    let as_codex = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(front);
    lean.and_then(as_codex)
}
