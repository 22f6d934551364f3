//! `--otel-trace-listen ws://IP:PORT`: every exported batch, as raw OTLP JSON, goes to
//! every WebSocket client connected then, as Codex's host streams it (one binary frame a
//! batch). A request with an `Origin` header (a browser page) is refused with 403. A slow
//! client misses batches (counted) and never holds up the exporter or a cell.

use crate::{STREAM_BATCHES_MISSED, TraceError};
use futures_util::{SinkExt as _, StreamExt as _};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::SpanData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

/// Batches a client may fall behind by before it misses some.
const CLIENT_BACKLOG: usize = 64;

/// The sending end: the exporter hands each batch here.
#[derive(Debug)]
pub struct Stream {
    batches: broadcast::Sender<Arc<Vec<u8>>>,
}

impl Stream {
    /// Encodes `batch` once and offers it to every client (none connected: it is gone).
    pub fn send(&self, batch: Vec<SpanData>, resource: &ResourceAttributesWithSchema) {
        if self.batches.receiver_count() == 0 {
            return;
        }
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, resource),
        };
        match serde_json::to_vec_pretty(&request) {
            Ok(bytes) => {
                let _ = self.batches.send(Arc::new(bytes));
            }
            Err(error) => tracing::debug!(%error, "a trace batch did not encode"),
        }
    }
}

/// Binds `address` and serves the stream from a thread of its own.
pub fn listen(address: SocketAddr) -> Result<(Stream, SocketAddr), TraceError> {
    let failed = |source| TraceError::Listen { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    let (batches, _) = broadcast::channel(CLIENT_BACKLOG);
    let clients = batches.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(failed)?;
    std::thread::Builder::new()
        .name("trace-stream".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%error, "the trace stream cannot listen");
                        return;
                    }
                };
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve_client(socket, clients.subscribe()));
                }
            });
        })
        .map_err(failed)?;
    tracing::info!("trace stream listening on ws://{bound}");
    Ok((Stream { batches }, bound))
}

/// Refuses browser pages: any request that carries an `Origin` header.
#[expect(
    clippy::result_large_err,
    reason = "the handshake callback's signature is tungstenite's"
)]
fn refuse_origins(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.headers().contains_key("origin") {
        let mut refusal = ErrorResponse::new(None);
        *refusal.status_mut() = StatusCode::FORBIDDEN;
        return Err(refusal);
    }
    Ok(response)
}

async fn serve_client(
    socket: tokio::net::TcpStream,
    mut batches: broadcast::Receiver<Arc<Vec<u8>>>,
) {
    let Ok(socket) = tokio_tungstenite::accept_hdr_async(socket, refuse_origins).await else {
        return;
    };
    let (mut sender, mut receiver) = socket.split();
    loop {
        tokio::select! {
            batch = batches.recv() => match batch {
                Ok(bytes) => {
                    if sender.send(Message::Binary(bytes.as_ref().clone().into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    STREAM_BATCHES_MISSED.fetch_add(missed, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            message = receiver.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}
