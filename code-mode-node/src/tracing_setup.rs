//! Traces out of the Node process: `configureTracing` starts the exporter every front uses
//! (OTLP over HTTP, from the arguments or the standard `OTEL_*` variables) and installs the
//! process's subscriber; `shutdownTracing` sends what is left. Each call then runs under a
//! span parented on the `traceparent` JS passes (its OpenTelemetry span), so the cell's
//! spans hang under the agent's own.

use code_mode_internal::sync::lock;
use code_mode_trace::{Telemetry, TraceSettings};
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;
use std::sync::Mutex;

/// The running exporter, until `shutdownTracing`.
static TELEMETRY: Mutex<Option<Telemetry>> = Mutex::new(None);

/// The span every call runs under (its target is one of the traced crates').
pub(crate) fn call_span(name: &'static str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(target: "code_mode_node", "code_mode.node.call", call = name);
    code_mode_trace::adopt_traceparent(&span, traceparent);
    span
}

/// Starts exporting spans: to `endpoint` (an OTLP/HTTP base URL) with `protocol`
/// (`http/protobuf` or `http/json`), else as the `OTEL_EXPORTER_OTLP_*` variables say.
/// `false` when there is nowhere to send them. Once per process.
#[napi]
pub fn configure_tracing(
    endpoint: Option<String>,
    protocol: Option<String>,
    service_name: Option<String>,
) -> napi::Result<bool> {
    let mut telemetry = lock(&TELEMETRY);
    if telemetry.is_some() {
        return Err(crate::options::invalid(
            "tracing",
            "it is configured already",
        ));
    }
    let service = service_name.as_deref().unwrap_or("code-mode-node");
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
    .map_err(|error| crate::options::invalid("tracing", error))?;
    let Some(settings) = settings else {
        return Ok(false);
    };
    let _entered = crate::runtime::tokio().enter();
    let started =
        Telemetry::start(settings).map_err(|error| crate::options::invalid("tracing", error))?;
    let logs = code_mode_trace::stderr_logs(tracing_subscriber::EnvFilter::new("warn"));
    code_mode_trace::init_subscriber(logs, Some(&started));
    *telemetry = Some(started);
    Ok(true)
}

/// Sends the spans not sent yet and stops the exporter, off the event loop.
#[napi(ts_return_type = "Promise<void>")]
pub fn shutdown_tracing(env: &Env) -> napi::Result<Object<'_>> {
    let telemetry = lock(&TELEMETRY).take();
    crate::runtime::settled(env, async move {
        tokio::task::spawn_blocking(move || drop(telemetry))
            .await
            .map_err(|error| napi::Error::from_reason(error.to_string()))
    })
}
