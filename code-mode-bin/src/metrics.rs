//! The runtime's operational figures and the small HTTP server that shows them
//! (`--metrics <addr>`): `/metrics` in the OpenMetrics text format (encoded by
//! `prometheus-client`), `/healthz` (liveness: the process serves) and `/readyz`
//! (readiness: 503 once draining).
//!
//! The figures are process-wide counters and gauges in one static ([`METRICS`]): the
//! connection code counts sessions, cells and their outcomes from the replies it sends
//! (an outcome is counted when the host is told the cell's final response), the remote
//! delegate counts nested calls and closed cells, the listener counts connections.
//!
//! The server takes connections through the workspace's door (`code_mode_tls::gate`), as
//! `--listen` does: at most [`METRICS_MAX_CONNECTIONS`], a share of them per peer, each
//! showing its first byte within the opening timeout.

use crate::drain::Drain;
use bytes::Bytes;
use code_mode_internal::SessionReply;
use code_mode_protocol::{CellResponse, FailureKind, PendingOutcome};
use code_mode_tls::gate::Gate;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the exec latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How a cell ended, as its final response told the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Terminated,
}

/// A limit that stopped a cell, by its failure kind (the output cap, which stops no
/// cell, is counted by the runtime where it is reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Heap,
    Cpu,
}

/// Every figure of the process.
pub struct Metrics {
    connections: AtomicU64,
    connections_total: AtomicU64,
    sessions: AtomicU64,
    outcomes: [AtomicU64; 3],
    limits: [AtomicU64; 2],
    nested_calls: AtomicU64,
    /// Sessions opened with stored values (moved here from a lost or draining runtime, or
    /// restored by an agent core).
    sessions_seeded: AtomicU64,
    cells_resumed: AtomicU64,
    /// Sessions their host closed here while this runtime drained (moved elsewhere).
    sessions_moved_off: AtomicU64,
    /// Observations per bucket (the first whose bound they are within), plus one for those
    /// above every bound.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
}

/// The process's figures.
pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    const fn new() -> Self {
        Self {
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            outcomes: [const { AtomicU64::new(0) }; 3],
            limits: [const { AtomicU64::new(0) }; 2],
            nested_calls: AtomicU64::new(0),
            sessions_seeded: AtomicU64::new(0),
            cells_resumed: AtomicU64::new(0),
            sessions_moved_off: AtomicU64::new(0),
            latency_buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            latency_sum_micros: AtomicU64::new(0),
        }
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn sessions_opened(&self, count: u64) {
        self.sessions.fetch_add(count, Ordering::Relaxed);
    }

    pub fn sessions_closed(&self, count: u64) {
        self.sessions.fetch_sub(count, Ordering::Relaxed);
    }

    pub fn session_seeded(&self) {
        self.sessions_seeded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cell_resumed(&self) {
        self.cells_resumed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_moved_off(&self) {
        self.sessions_moved_off.fetch_add(1, Ordering::Relaxed);
    }

    pub fn nested_call(&self) {
        self.nested_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what a reply tells: a final response's outcome and limit (cells started are
    /// the drain's count). `latency` is the time an `execute` took to answer.
    pub fn reply(&self, reply: &SessionReply, latency: Option<Duration>) {
        let last = match reply {
            SessionReply::Started(started) => Some(&started.initial_response),
            SessionReply::StartedPending(started) => match &started.outcome {
                PendingOutcome::Completed(response) => Some(response),
                PendingOutcome::Pending { .. } => None,
            },
            SessionReply::Cell(response) => Some(response),
            SessionReply::Pending(PendingOutcome::Completed(response)) => Some(response),
            SessionReply::Pending(PendingOutcome::Pending { .. })
            | SessionReply::Interrupted(_)
            | SessionReply::ShutDown => None,
        };
        if let Some(latency) = latency {
            self.observe_latency(latency);
        }
        if let Some((outcome, limit)) = last.and_then(classify) {
            self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
            if let Some(limit) = limit {
                self.limits[limit as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn observe_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The figures in the OpenMetrics text format, which Prometheus scrapes, with the
    /// drain's state as `drain` reports it.
    pub fn render(&self, drain: &Drain) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Figures(drain.clone())));
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!("metrics could not be encoded: {error}");
        }
        out
    }
}

/// [`METRICS`] and the drain's state as the metric families of a scrape, read when it
/// happens.
#[derive(Debug)]
struct Figures(Drain);

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let metrics = &METRICS;
        let drain = &self.0;
        let get = |value: &AtomicU64| value.load(Ordering::Relaxed);
        let encoder = &mut encoder;
        // `code_mode_connections` is the counter (its sample `code_mode_connections_total`):
        // OpenMetrics allows one family of a name, so the gauge is `_open`.
        gauge(
            encoder,
            "code_mode_connections_open",
            "Host connections open now.",
            get(&metrics.connections),
        )?;
        counter(
            encoder,
            "code_mode_connections",
            "Host connections accepted.",
            get(&metrics.connections_total),
        )?;
        gauge(
            encoder,
            "code_mode_sessions",
            "Sessions open now.",
            get(&metrics.sessions),
        )?;
        counter(
            encoder,
            "code_mode_cells_started",
            "Cells started.",
            drain.cells_started(),
        )?;
        gauge(
            encoder,
            "code_mode_cells_active",
            "Cells started and not yet closed.",
            drain.active_cells(),
        )?;
        cell_ends(encoder, metrics)?;
        counter(
            encoder,
            "code_mode_nested_calls",
            "Nested tool calls forwarded to hosts.",
            get(&metrics.nested_calls),
        )?;
        counter(
            encoder,
            "code_mode_sessions_seeded",
            "Sessions opened with stored values: moved here from a lost or draining runtime, or restored.",
            get(&metrics.sessions_seeded),
        )?;
        counter(
            encoder,
            "code_mode_cells_resumed",
            "Cells rebuilt here from the journal their host kept of a runtime that was lost.",
            get(&metrics.cells_resumed),
        )?;
        counter(
            encoder,
            "code_mode_sessions_moved_off",
            "Sessions their host closed while this runtime drained, to move them elsewhere.",
            get(&metrics.sessions_moved_off),
        )?;
        gauge(
            encoder,
            "code_mode_draining",
            "1 once the runtime is draining.",
            u64::from(drain.is_draining()),
        )?;
        exec_latency(encoder, metrics)
    }
}

/// How cells ended: by outcome, and by the limit that stopped or cut them.
fn cell_ends(encoder: &mut DescriptorEncoder, metrics: &Metrics) -> fmt::Result {
    let get = |value: &AtomicU64| value.load(Ordering::Relaxed);
    let outcome = |outcome: Outcome| get(&metrics.outcomes[outcome as usize]);
    counters(
        encoder,
        "code_mode_cells_finished",
        "Cells whose final response reached the host, by outcome.",
        "outcome",
        &[
            ("ok", outcome(Outcome::Ok)),
            ("error", outcome(Outcome::Error)),
            ("terminated", outcome(Outcome::Terminated)),
        ],
    )?;
    let limit = |limit: Limit| get(&metrics.limits[limit as usize]);
    counters(
        encoder,
        "code_mode_limit_hits",
        "Cells stopped or cut by a limit, by kind.",
        "kind",
        &[
            ("heap", limit(Limit::Heap)),
            ("cpu", limit(Limit::Cpu)),
            // Counted where the cap is reached, in the runtime (a cell goes on after).
            ("output", code_mode::runtime::output_caps_reached()),
        ],
    )
}

/// The histogram of the time execs took to give their first response.
fn exec_latency(encoder: &mut DescriptorEncoder, metrics: &Metrics) -> fmt::Result {
    let get = |value: &AtomicU64| value.load(Ordering::Relaxed);
    let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(metrics.latency_buckets.iter().map(get))
        .collect();
    let count = buckets.iter().map(|(_, count)| count).sum();
    let sum = get(&metrics.latency_sum_micros) as f64 / 1e6;
    encoder
        .encode_descriptor(
            "code_mode_exec_seconds",
            "Time an exec took to give its first response.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter family with one label, a sample per value of it.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(&str, u64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for &(value_of_label, value) in samples {
        let labels = [(label, value_of_label)];
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A final response's outcome and the limit it reports, if any; `None` for a response
/// that is not final or names an unknown cell.
fn classify(response: &CellResponse) -> Option<(Outcome, Option<Limit>)> {
    match response {
        CellResponse::Yielded { .. } => None,
        CellResponse::Terminated { .. } => Some((Outcome::Terminated, None)),
        CellResponse::Result { failure: None, .. } => Some((Outcome::Ok, None)),
        CellResponse::Result {
            failure: Some(failure),
            ..
        } => match failure.kind {
            FailureKind::NotFound => None,
            FailureKind::OutOfMemory => Some((Outcome::Error, Some(Limit::Heap))),
            FailureKind::CpuBudget => Some((Outcome::Error, Some(Limit::Cpu))),
            _ => Some((Outcome::Error, None)),
        },
    }
}

/// Answers one request of the metrics server.
fn answer(path: &str, drain: &Drain) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => (StatusCode::OK, METRICS.render(drain)),
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if drain.is_draining() => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
        }
        "/readyz" => (StatusCode::OK, "ready\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let content_type = if path == "/metrics" {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// Connections the metrics server serves at once: a scraper or two and the kubelet's
/// probes, each done in milliseconds; a hundredth of the host connections' default.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

/// How long a metrics request has to send its headers once it spoke.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` (bound before the sandbox)
/// until the process ends, through `gate` (the workspace's door: a cap, a share per peer,
/// the first byte in time, accept errors backed off).
pub async fn serve(listener: tokio::net::TcpListener, drain: Drain, gate: Gate) {
    gate.serve(&listener, move |stream, peer| {
        let drain = drain.clone();
        async move {
            let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| {
                let response = answer(request.uri().path(), &drain);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, "metrics connection ended: {error}");
            }
        }
    })
    .await;
}
