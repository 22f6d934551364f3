//! Traces out of the Python process: `configure_tracing` starts the exporter every front
//! uses (OTLP over HTTP, from the arguments or the standard `OTEL_*` variables) and
//! installs the process's subscriber; `shutdown_tracing` sends what is left. Each call then
//! runs under a span parented on the `traceparent` Python passes (the OpenTelemetry span
//! current there), so the cell's spans hang under the agent's own.

use code_mode_internal::sync::lock;
use code_mode_trace::{Telemetry, TraceSettings};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::Mutex;

/// The running exporter, until `shutdown_tracing`.
static TELEMETRY: Mutex<Option<Telemetry>> = Mutex::new(None);

/// The span every call runs under (its target is one of the traced crates').
pub(crate) fn call_span(name: &'static str, traceparent: Option<&str>) -> tracing::Span {
    let span =
        tracing::info_span!(target: "code_mode_python", "code_mode.python.call", call = name);
    code_mode_trace::adopt_traceparent(&span, traceparent);
    span
}

/// Starts exporting spans: to `endpoint` (an OTLP/HTTP base URL) with `protocol`
/// (`http/protobuf` or `http/json`), else as the `OTEL_EXPORTER_OTLP_*` variables say.
/// Returns `False` when there is nowhere to send them. Once per process.
#[pyfunction]
#[pyo3(signature = (endpoint=None, protocol=None, service_name=None))]
pub(crate) fn configure_tracing(
    endpoint: Option<String>,
    protocol: Option<String>,
    service_name: Option<String>,
) -> PyResult<bool> {
    let mut telemetry = lock(&TELEMETRY);
    if telemetry.is_some() {
        return Err(PyValueError::new_err("tracing is configured already"));
    }
    let service = service_name.as_deref().unwrap_or("code-mode-python");
    let settings = TraceSettings::from_lookup(service, env!("CARGO_PKG_VERSION"), |name| {
        let given = match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => endpoint.clone(),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => protocol.clone(),
            _ => None,
        };
        given.or_else(|| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        })
    })
    .map_err(|error| PyValueError::new_err(error.to_string()))?;
    let Some(settings) = settings else {
        return Ok(false);
    };
    let _entered = crate::runtime::tokio().enter();
    let started =
        Telemetry::start(settings).map_err(|error| PyValueError::new_err(error.to_string()))?;
    let logs = code_mode_trace::stderr_logs(tracing_subscriber::EnvFilter::new("warn"));
    code_mode_trace::init_subscriber(logs, Some(&started));
    *telemetry = Some(started);
    Ok(true)
}

/// Sends the spans not sent yet and stops the exporter (at exit).
#[pyfunction]
pub(crate) fn shutdown_tracing(py: Python<'_>) {
    let telemetry = lock(&TELEMETRY).take();
    py.detach(|| drop(telemetry));
}
