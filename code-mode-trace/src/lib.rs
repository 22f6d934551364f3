//! OpenTelemetry traces for every front: this crate owns turning the `tracing` spans the
//! fronts, the host and the runtime make into OpenTelemetry spans, and sending them out.
//!
//! - [`TraceSettings`] says where spans go: OTLP over HTTP (protobuf or JSON) to a
//!   collector, or raw OTLP JSON batches streamed to WebSocket clients (`--otel-trace-listen`,
//!   as Codex's host does). [`TraceSettings::from_env`] reads the standard
//!   `OTEL_EXPORTER_OTLP_*` and `OTEL_SERVICE_NAME` variables; `OTEL_TRACES_SAMPLER` is read
//!   by the SDK's configuration and shared with the cells' record layer.
//! - [`Telemetry`] is the running exporter: the cells' spans are records until they end,
//!   turned into SDK spans on a thread of its own (`records`), and batches go out on the
//!   SDK's own thread, so a cell never waits on a collector. A batch that cannot be
//!   delivered is dropped and counted ([`stats`]).
//! - [`context_of`] and [`adopt`] read and set a span's OpenTelemetry context whichever
//!   layer made it.
//! - [`init_subscriber`] installs the process's `tracing` subscriber: the log lines on
//!   stderr as before, plus the spans of our crates when a [`Telemetry`] is given. With none,
//!   spans are disabled at their call site and cost what a disabled `tracing` span costs.
//! - [`Parent`] carries W3C trace context (`traceparent`) in and out: from gRPC metadata,
//!   JSON-lines requests and MCP `_meta`, and onto Codex's `ToolInvocation.traceparent`.
//! - [`capture`] says whether spans may hold what a model wrote (source, arguments): off
//!   unless an operator turns it on, and capped ([`captured`]) when on. It is the one
//!   switch [`traced`] reads too.

mod ids;
mod layer;
pub mod traced;
pub use ids::{fresh_span_id, fresh_trace_id};
pub use layer::{
    MeasuredSpan, MeasuredValue, TRACED_TARGETS, TakesMeasured, TakesTimes, adopt, context_of,
    made_at, span_end, span_start, take_measured, takes_times, takes_times_downcast,
};

#[cfg(feature = "export")]
mod counts;
#[cfg(feature = "export")]
mod error;
#[cfg(feature = "export")]
mod exporter;
#[cfg(feature = "export")]
mod propagation;
#[cfg(feature = "export")]
mod records;
#[cfg(feature = "export")]
mod settings;
#[cfg(feature = "export")]
mod telemetry;
#[cfg(feature = "export")]
mod websocket;

#[cfg(feature = "export")]
pub use counts::*;
#[cfg(feature = "export")]
pub use error::TraceError;
#[cfg(feature = "export")]
pub use propagation::{Parent, TRACEPARENT, adopt_traceparent};
#[cfg(feature = "export")]
pub use settings::{Capture, Destination, Protocol, TraceSettings};
#[cfg(feature = "export")]
pub use telemetry::*;
