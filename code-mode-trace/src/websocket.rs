//! `--otel-trace-listen ws://IP:PORT`: every exported batch, as raw OTLP JSON, goes to
//! every WebSocket client connected then, as Codex's host streams it (one binary frame a
//! batch). A request with an `Origin` header (a browser page) is refused with 403. A slow
//! client misses batches (counted) and never holds up the exporter or a cell. Clients come
//! in through the workspace's door (`code_mode_tls::gate`), as every listener's do.

use crate::{STREAM_BATCHES_MISSED, TraceError};
use code_mode_internal::sync::lock;
use code_mode_tls::gate::Gate;
use futures_util::{SinkExt as _, StreamExt as _};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::SpanData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

/// Batches a client may fall behind by before it misses some.
const CLIENT_BACKLOG: usize = 64;

/// One client's queue of batches.
type Queue = tokio::sync::mpsc::Sender<Arc<Vec<u8>>>;

/// The sending end: the exporter hands each batch here.
#[derive(Debug)]
pub struct Stream {
    /// The connected clients' queues; emptied at shutdown, which tells each client to
    /// send what it has queued and close.
    clients: Arc<Mutex<Vec<Queue>>>,
    /// Clients still connected (counted off when their task ends).
    connected: Arc<AtomicUsize>,
}

impl Stream {
    /// Encodes `batch` once and offers it to every client: a client whose queue is full
    /// misses it (counted); nobody waits.
    pub fn send(&self, batch: Vec<SpanData>, resource: &ResourceAttributesWithSchema) {
        let mut clients = lock(&self.clients);
        clients.retain(|queue| !queue.is_closed());
        if clients.is_empty() {
            return;
        }
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, resource),
        };
        let bytes = match serde_json::to_vec_pretty(&request) {
            Ok(bytes) => Arc::new(bytes),
            Err(error) => {
                tracing::debug!(%error, "a trace batch did not encode");
                return;
            }
        };
        for queue in clients.iter() {
            if queue.try_send(bytes.clone()).is_err() {
                STREAM_BATCHES_MISSED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lets every client take what is queued for it and closes it, waiting at most
    /// `timeout` (the process is about to end: its last batches must not be lost).
    pub fn shutdown(&self, timeout: std::time::Duration) {
        lock(&self.clients).clear();
        let deadline = std::time::Instant::now() + timeout;
        while self.connected.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Clients the stream serves at once: a few people or tools watching one front's traces
/// (each gets every batch, so each costs the front a copy of the traffic).
const MAX_CLIENTS: usize = 16;

/// Binds `address` and serves the stream from a thread of its own, through the workspace's
/// door (`code_mode_tls::gate`: at most [`MAX_CLIENTS`], a share of them per peer, the first
/// byte and the WebSocket handshake each within the opening timeout, accept errors backed
/// off).
pub fn listen(address: SocketAddr) -> Result<(Stream, SocketAddr), TraceError> {
    listen_through(address, Gate::new("trace stream", MAX_CLIENTS))
}

/// [`listen`] through `gate`.
fn listen_through(address: SocketAddr, gate: Gate) -> Result<(Stream, SocketAddr), TraceError> {
    let failed = |source| TraceError::Listen { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    let clients: Arc<Mutex<Vec<Queue>>> = Arc::default();
    let connected = Arc::new(AtomicUsize::new(0));
    let stream = Stream {
        clients: clients.clone(),
        connected: connected.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
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
                let opening = gate.opening_timeout();
                gate.serve(&listener, move |socket, peer| {
                    connected.fetch_add(1, Ordering::AcqRel);
                    let clients = clients.clone();
                    let connected = connected.clone();
                    async move {
                        serve_client(socket, peer, opening, clients).await;
                        connected.fetch_sub(1, Ordering::AcqRel);
                    }
                })
                .await;
            });
        })
        .map_err(failed)?;
    tracing::info!("trace stream listening on ws://{bound}");
    Ok((stream, bound))
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

/// One client: its WebSocket handshake within `opening`, then every batch until either end
/// closes.
async fn serve_client(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    opening: Duration,
    clients: Arc<Mutex<Vec<Queue>>>,
) {
    let handshake = tokio_tungstenite::accept_hdr_async(socket, refuse_origins);
    let socket = match tokio::time::timeout(opening, handshake).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "a trace stream client was refused");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "a trace stream client did not finish its handshake within {opening:?}");
            return;
        }
    };
    let (queue, mut batches) = tokio::sync::mpsc::channel(CLIENT_BACKLOG);
    lock(&clients).push(queue);
    drop(clients);
    let (mut sender, mut receiver) = socket.split();
    loop {
        tokio::select! {
            batch = batches.recv() => match batch {
                Some(bytes) => {
                    if sender.send(Message::Binary(bytes.as_ref().clone().into())).await.is_err() {
                        return;
                    }
                }
                // The process is ending and everything queued went out.
                None => {
                    let _ = sender.send(Message::Close(None)).await;
                    return;
                }
            },
            message = receiver.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Whether the server closed `stream` (end of stream or reset) within `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buffer = [0u8; 1];
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_closed_after_the_opening_timeout() {
        let opening = Duration::from_millis(200);
        let gate = Gate::new("test", MAX_CLIENTS).with_opening_timeout(opening);
        let (_stream, bound) = listen_through("127.0.0.1:0".parse().unwrap(), gate).unwrap();
        let mut silent = tokio::net::TcpStream::connect(bound).await.unwrap();
        assert!(
            closed_within(&mut silent, Duration::from_secs(3)).await,
            "a silent client kept its connection"
        );
        // One that starts its handshake and stalls is closed too.
        let mut stalled = tokio::net::TcpStream::connect(bound).await.unwrap();
        stalled.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(
            closed_within(&mut stalled, Duration::from_secs(3)).await,
            "a stalled handshake kept its connection"
        );
    }

    #[tokio::test]
    async fn a_client_over_the_cap_is_closed_at_once() {
        // Long enough that only the cap can close the third connection within the test.
        let opening = Duration::from_secs(30);
        let gate = Gate::new("test", 2).with_opening_timeout(opening);
        let (_stream, bound) = listen_through("127.0.0.1:0".parse().unwrap(), gate).unwrap();
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut client = tokio::net::TcpStream::connect(bound).await.unwrap();
            client.write_all(b"G").await.unwrap();
            held.push(client);
        }
        let mut over = tokio::net::TcpStream::connect(bound).await.unwrap();
        assert!(
            closed_within(&mut over, Duration::from_secs(3)).await,
            "a client over the cap was kept"
        );
        for client in &mut held {
            assert!(
                !closed_within(client, Duration::from_millis(100)).await,
                "a client within the cap was closed"
            );
        }
    }
}
