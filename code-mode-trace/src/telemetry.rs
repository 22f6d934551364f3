//! The running exporter ([`Telemetry`]) and the process's subscriber.

use crate::TraceError;
use crate::records::{CellExport, SharedSampler};
use crate::settings::{Capture, Destination, TraceSettings};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::Arc;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The Codex front's crate, whose spans are Codex's host's, attribute for attribute.
const CODEX_FRONT: &str = "codex_code_mode_host";

/// The targets of [`crate::TRACED_TARGETS`] whose spans are the cells' (all but the Codex
/// front's).
const CELL_TARGETS: [&str; 1] = ["code_mode"];

/// Whether spans may hold the model's source and arguments (never unless set on).
pub fn capture() -> Capture {
    Capture {
        source: crate::traced::capturing_source(),
        arguments: crate::traced::capturing_arguments(),
    }
}

/// `text` as a span may hold it: at most `crate::traced::SPAN_TEXT_LIMIT_BYTES`,
/// cut on a character boundary.
pub fn captured(text: &str) -> &str {
    crate::traced::capped(text)
}

/// The running exporter. Dropping it sends what is left.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::Tracer,
    /// Where the cells' spans go once they end (`crate::records`).
    cells: Arc<CellExport>,
    /// The bound address of the WebSocket stream, if that is the destination.
    stream_address: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Telemetry")
            .field("stream_address", &self.stream_address)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts exporting as `settings` say, and makes this exporter the process's global
    /// tracer provider (the host crate exports the runtime's spans through it). A
    /// WebSocket destination is bound here, so a port in use is an error at start.
    pub fn start(settings: TraceSettings) -> Result<Self, TraceError> {
        crate::traced::set_capture(settings.capture.source, settings.capture.arguments);
        let mut resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                settings.service_version.clone(),
            ));
        for (key, value) in &settings.resource {
            resource =
                resource.with_attribute(opentelemetry::KeyValue::new(key.clone(), value.clone()));
        }
        let (sink, stream_address) = match &settings.destination {
            Destination::Otlp { endpoint, protocol } => {
                (crate::exporter::Sink::otlp(endpoint, *protocol)?, None)
            }
            Destination::WebSocket(address) => {
                let (stream, bound) = crate::websocket::listen(*address)?;
                (crate::exporter::Sink::Stream(stream), Some(bound))
            }
        };
        // The sampler the standard variables name, shared with the cells' record layer,
        // which decides a span's sampling as it starts.
        let sampler = SharedSampler::new(opentelemetry_sdk::trace::Config::default().sampler);
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_sampler(sampler.clone())
            .with_batch_exporter(crate::exporter::Counted::new(sink))
            .build();
        let tracer = provider.tracer(settings.scope.clone());
        let cells = CellExport::start(tracer.clone(), sampler).map_err(TraceError::Thread)?;
        // The global provider too: the host crate exports the spans its runtimes hand
        // back through it.
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Self {
            provider,
            tracer,
            cells,
            stream_address,
        })
    }

    /// Where the WebSocket stream listens (its port when 0 was asked for).
    pub fn stream_address(&self) -> Option<std::net::SocketAddr> {
        self.stream_address
    }

    /// The layer that turns our crates' spans at `INFO` or above into OpenTelemetry spans:
    /// the cells' (the `code_mode` crates') as records exported off their path
    /// (`crate::records`), the Codex front's with every extra `tracing-opentelemetry` adds,
    /// as Codex's own host's spans have them (a test compares the two).
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        self.cells_and(
            tracing_subscriber::filter::Targets::new()
                .with_target(CODEX_FRONT, tracing::Level::INFO),
        )
    }

    /// A layer for every span of the process at `INFO` or above, whatever its target: for
    /// an agent core that exports its own spans through this exporter, so that cells hang
    /// under them. The cells' spans are records as in [`Self::layer`]; every other span is
    /// `tracing-opentelemetry`'s.
    pub fn layer_for_every_target<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let mut others =
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO);
        for target in CELL_TARGETS {
            others = others.with_target(target, tracing_subscriber::filter::LevelFilter::OFF);
        }
        self.cells_and(others)
    }

    /// The cells' spans (of [`CELL_TARGETS`], at `INFO` or above) as records, and the
    /// spans `others` lets through as `tracing-opentelemetry` makes them.
    fn cells_and<S>(
        &self,
        others: tracing_subscriber::filter::Targets,
    ) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let mut cells = tracing_subscriber::filter::Targets::new();
        for target in CELL_TARGETS {
            cells = cells.with_target(target, tracing::Level::INFO);
        }
        crate::records::layer(Arc::clone(&self.cells))
            .with_filter(cells)
            .and_then(
                tracing_opentelemetry::layer()
                    .with_tracer(self.tracer.clone())
                    .with_filter(others),
            )
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // The cells' ended spans reach the provider first.
        self.cells.close();
        if let Err(error) = self.provider.shutdown() {
            tracing::debug!(%error, "trace exporter shutdown");
        }
    }
}

/// Installs the process's subscriber: `logs` (the log lines on stderr, with their own
/// filter), and our spans exported through `telemetry` when given. Also makes W3C trace
/// context the process's propagator, and applies the settings' capture to the spans every
/// provider makes (`crate::traced`).
pub fn init_subscriber<L>(logs: L, telemetry: Option<&Telemetry>)
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let traces = telemetry.map(Telemetry::layer);
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if installed && telemetry.is_some() {
        // The first cell's span finds its paths made once already (its call site
        // registered, the layers' first record made): made here muted, it is not exported.
        crate::records::muted(crate::traced::warm_cell_span);
    }
}

/// The usual log layer: lines on stderr, filtered by `filter`.
pub fn stderr_logs<S>(filter: tracing_subscriber::EnvFilter) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    /// Through the layers a front installs, a cell's span has a sampled context that a
    /// request can carry, and a span adopts its caller's `traceparent`.
    #[test]
    fn a_cells_span_has_a_context_through_the_fronts_layers() {
        let telemetry = Telemetry::start(TraceSettings::new(
            Destination::Otlp {
                endpoint: "http://127.0.0.1:9/v1/traces".to_owned(),
                protocol: crate::Protocol::HttpProtobuf,
            },
            "test",
            "0",
        ))
        .expect("an exporter");
        let logs = stderr_logs(tracing_subscriber::EnvFilter::new("off"));
        let subscriber = tracing_subscriber::registry()
            .with(logs)
            .with(Some(telemetry.layer()));
        tracing::subscriber::with_default(subscriber, || {
            let cell = tracing::info_span!(target: "code_mode_host", "code_mode.cell");
            let context = crate::context_of(&cell);
            let span = context.span();
            assert!(
                span.span_context().is_valid(),
                "no context for a cell's span"
            );
            assert!(span.span_context().is_sampled());
            let request = tracing::info_span!(target: "code_mode_cli", "request");
            let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            crate::adopt_traceparent(&request, Some(caller));
            let child = tracing::info_span!(target: "code_mode", parent: &request, "child");
            assert_eq!(
                crate::Parent::of(&child).traceparent().unwrap()[3..35],
                caller[3..35],
                "the child is not in its caller's trace"
            );
        });
    }
}
