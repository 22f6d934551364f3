//! The exporter's counters: what the exporter, the WebSocket stream and the cells'
//! export count as they go, read by [`stats`] and the `/metrics` pages.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of what the exporter did since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Batches delivered to the collector (or handed to the WebSocket stream).
    pub exported_batches: u64,
    /// Batches the collector did not take (down, slow past the timeout, refusing): dropped.
    pub dropped_batches: u64,
    /// Spans in those batches.
    pub dropped_spans: u64,
    /// Batches a slow WebSocket client missed (summed over clients).
    pub stream_batches_missed: u64,
}

pub(crate) static EXPORTED_BATCHES: AtomicU64 = AtomicU64::new(0);
pub(crate) static DROPPED_BATCHES: AtomicU64 = AtomicU64::new(0);
pub(crate) static DROPPED_SPANS: AtomicU64 = AtomicU64::new(0);
pub(crate) static STREAM_BATCHES_MISSED: AtomicU64 = AtomicU64::new(0);

/// What the exporter did so far.
pub fn stats() -> Stats {
    Stats {
        exported_batches: EXPORTED_BATCHES.load(Ordering::Relaxed),
        dropped_batches: DROPPED_BATCHES.load(Ordering::Relaxed),
        dropped_spans: DROPPED_SPANS.load(Ordering::Relaxed),
        stream_batches_missed: STREAM_BATCHES_MISSED.load(Ordering::Relaxed),
    }
}

/// The counters in Prometheus' text format, for the `/metrics` pages.
pub fn render_metrics() -> String {
    let stats = stats();
    let mut text = String::new();
    for (name, help, value) in [
        (
            "code_mode_trace_batches_exported_total",
            "Trace batches delivered to the collector or the WebSocket stream.",
            stats.exported_batches,
        ),
        (
            "code_mode_trace_batches_dropped_total",
            "Trace batches dropped because the collector did not take them.",
            stats.dropped_batches,
        ),
        (
            "code_mode_trace_spans_dropped_total",
            "Spans in the dropped trace batches.",
            stats.dropped_spans,
        ),
        (
            "code_mode_trace_stream_batches_missed_total",
            "Trace batches slow WebSocket clients missed.",
            stats.stream_batches_missed,
        ),
    ] {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    text
}
