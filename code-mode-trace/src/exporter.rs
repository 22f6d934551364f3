//! The span exporter behind the SDK's batch processor: OTLP over HTTP or the WebSocket
//! stream, with every batch counted as delivered or dropped. The batch processor runs it
//! on a thread of its own, so nothing here ever holds up a cell.

use crate::settings::Protocol;
use crate::websocket::Stream;
use crate::{DROPPED_BATCHES, DROPPED_SPANS, EXPORTED_BATCHES, TraceError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long one batch may take to reach a collector before it is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a process that ends waits for its WebSocket clients to take their last
/// batches (a stalled client is given up on then).
const STREAM_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum Sink {
    Otlp(Box<opentelemetry_otlp::SpanExporter>),
    Stream(Stream),
}

impl Sink {
    pub fn otlp(endpoint: &str, protocol: Protocol) -> Result<Self, TraceError> {
        let protocol = match protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
            Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        };
        let failed = |reason: String| TraceError::Exporter {
            endpoint: endpoint.to_owned(),
            reason,
        };
        // The blocking HTTP client is made on a thread of its own (reqwest's may not be
        // made inside an async runtime, and fronts start tracing from one).
        code_mode_tls::use_ring();
        let client = std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
        })
        .join()
        .map_err(|_| failed("the HTTP client could not be made".to_owned()))?
        .map_err(|error| failed(error.to_string()))?;
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(BlockingHttp(client))
            .with_endpoint(endpoint)
            .with_protocol(protocol)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map(|exporter| Sink::Otlp(Box::new(exporter)))
            .map_err(|error| TraceError::Exporter {
                endpoint: endpoint.to_owned(),
                reason: error.to_string(),
            })
    }
}

/// OTLP over HTTP with reqwest's blocking client: the SDK's batch thread waits on it.
#[derive(Debug)]
struct BlockingHttp(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request: reqwest::blocking::Request = request.try_into()?;
        let mut response = self.0.execute(request)?.error_for_status()?;
        let headers = std::mem::take(response.headers_mut());
        let mut answer = http::Response::builder()
            .status(response.status())
            .body(response.bytes()?)?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// A [`Sink`] that counts what it delivered and what it dropped.
#[derive(Debug)]
pub struct Counted {
    sink: Sink,
    resource: opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema,
}

impl Counted {
    pub fn new(sink: Sink) -> Self {
        Self {
            sink,
            resource: Default::default(),
        }
    }
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = match &self.sink {
            Sink::Otlp(exporter) => exporter.export(batch).await,
            Sink::Stream(stream) => {
                stream.send(batch, &self.resource);
                Ok(())
            }
        };
        match &result {
            Ok(()) => {
                EXPORTED_BATCHES.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                DROPPED_BATCHES.fetch_add(1, Ordering::Relaxed);
                DROPPED_SPANS.fetch_add(spans, Ordering::Relaxed);
                tracing::debug!(%error, spans, "a trace batch was dropped");
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        match &mut self.sink {
            Sink::Otlp(exporter) => exporter.shutdown_with_timeout(timeout),
            Sink::Stream(stream) => {
                // The SDK may pass a timeout of nanoseconds; the clients get a fair time to
                // take the last batches, never more than STREAM_DRAIN_TIMEOUT.
                stream.shutdown(timeout.max(STREAM_DRAIN_TIMEOUT));
                Ok(())
            }
        }
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        match &mut self.sink {
            Sink::Otlp(exporter) => exporter.force_flush(),
            Sink::Stream(_) => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource.into();
        if let Sink::Otlp(exporter) = &mut self.sink {
            exporter.set_resource(resource);
        }
    }
}
