//! Serving the protocol: gRPC over stdio (`grpc+stdio://`, codex's default), gRPC over TCP
//! (`grpc://IP:PORT`, for `codex app-server --code-mode-host` and launchers, with Codex's
//! HTTP/1 `GET /healthz` on the same port), and the JSON protocol on stdio. Each client connection gets a [`Front`] of its own over the shared runtime
//! provider, so that when a client goes away every cell of its sessions ends.

use crate::front::{Front, Owner, Settings};
use crate::grpc::Service;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// HTTP/2 streams one connection may have open at once. Codex keeps one session stream,
/// one tool-call stream and its calls in flight per session; the front's own bounds
/// (requests in flight, sessions per connection) come first, this keeps a client from
/// opening streams without end.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// How often an idle HTTP/2 connection is pinged, and how long the client has to answer:
/// a half-open connection (the client's machine gone) ends, and with it its sessions and
/// their cells, instead of holding them for ever.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long an HTTP/1 request (`/healthz`, `/metrics`) has to send its headers.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where to listen, as `--listen` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `stdio`: the JSON protocol with `u32` little-endian length prefixes.
    JsonStdio,
    /// `grpc+stdio://`: gRPC, HTTP/2 with prior knowledge, on stdin and stdout.
    GrpcStdio,
    /// `grpc://IP:PORT`.
    GrpcTcp(SocketAddr),
}

/// `--listen` that names no known transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported --listen `{0}`: expected `stdio`, `grpc+stdio://` or `grpc://IP:PORT` (an IP address and a port)"
)]
pub struct BadListen(pub String);

impl std::str::FromStr for Listen {
    type Err = BadListen;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "stdio" | "stdio://" => Ok(Listen::JsonStdio),
            "grpc+stdio://" | "grpc+stdio" => Ok(Listen::GrpcStdio),
            _ => text
                .strip_prefix("grpc://")
                .map(|rest| rest.trim_end_matches('/'))
                .and_then(|address| address.parse().ok())
                .map(Listen::GrpcTcp)
                .ok_or_else(|| BadListen(text.to_owned())),
        }
    }
}

impl Listen {
    /// Whether this transport is on the process's stdin and stdout.
    pub fn is_stdio(&self) -> bool {
        !matches!(self, Listen::GrpcTcp(_))
    }
}

/// Serves one gRPC connection (HTTP/2 with prior knowledge, as codex speaks it on stdio)
/// with a front of its own; returns when the connection ends, after every session of the
/// connection was closed.
pub async fn serve_grpc_connection<I>(settings: Settings, io: I) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_connection(settings, io, Protocols::Grpc).await
}

/// [`serve_grpc_connection`] for a connection to the TCP port, where Codex's host also
/// answers launchers' HTTP/1 requests (`GET /healthz`, see [`http1_answer`]); the two are
/// told apart by the connection's preface.
pub async fn serve_tcp_connection<I>(settings: Settings, io: I) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_connection(settings, io, Protocols::GrpcAndHealth).await
}

/// What a connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocols {
    /// gRPC only: anything else is an HTTP/2 protocol error.
    Grpc,
    /// gRPC, or HTTP/1 for the health check.
    GrpcAndHealth,
}

async fn serve_connection<I>(
    settings: Settings,
    io: I,
    protocols: Protocols,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let front = Arc::new(Front::new(settings));
    let routes = tonic::service::Routes::new(Service::new(front.clone()).into_server());
    let grpc = TowerToHyperService::new(routes);
    let health = front.clone();
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let grpc = grpc.clone();
        let front = health.clone();
        async move {
            let response: Result<_, std::convert::Infallible> =
                if request.version() == http::Version::HTTP_2 {
                    grpc.call(request).await
                } else {
                    Ok(http1_answer(&front, request.method(), request.uri().path()).await)
                };
            response
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if protocols == Protocols::Grpc {
        builder = builder.http2_only();
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(2 * 1024 * 1024)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(16 * 1024);
    if protocols == Protocols::GrpcAndHealth {
        // On TCP only: on stdio the client is the parent process, and its end is the pipe's.
        builder
            .http2()
            .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
    }
    let result = builder.serve_connection(TokioIo::new(io), service).await;
    front.close_all().await;
    match result {
        Err(error) if client_went_away(error.as_ref()) => {
            tracing::info!(%error, "the client went away");
            Ok(())
        }
        other => other,
    }
}

/// An error of a connection or a request.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What an HTTP/1 request gets, as Codex's host answers it: `GET /healthz` is `200` with
/// an empty body while a runtime runs or can be started, else `503` with the cause and its
/// fix as text; every other request is `505` (gRPC needs HTTP/2), with `allow: GET,HEAD`
/// for another method on `/healthz`. Beyond Codex's host, `GET /metrics` gives the trace
/// exporter's counters (batches exported and dropped) and, with a state directory, the
/// store's size and sessions, in Prometheus' text format.
pub async fn http1_answer(
    front: &Front,
    method: &http::Method,
    path: &str,
) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::empty());
    match (method, path) {
        (&http::Method::GET, "/healthz") => {
            if let Err(error) = front.runtime_ready().await {
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                *response.body_mut() = tonic::body::Body::new(http_body_util::Full::new(
                    bytes::Bytes::from(format!("{error}\n")),
                ));
            }
        }
        (&http::Method::GET, "/metrics") => {
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            *response.body_mut() = tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from(front.render_metrics()),
            ));
        }
        (method, "/healthz") if method != http::Method::HEAD => {
            *response.status_mut() = http::StatusCode::HTTP_VERSION_NOT_SUPPORTED;
            response.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET,HEAD"),
            );
        }
        _ => *response.status_mut() = http::StatusCode::HTTP_VERSION_NOT_SUPPORTED,
    }
    response
}

/// Whether a connection error is only the client's end of the byte stream (codex exiting,
/// killed, or dropping its channel): a normal end, not a failure of the host.
fn client_went_away(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
            );
        }
        source = current.source();
    }
    false
}

/// Serves gRPC on TCP, plaintext (loopback only, checked by the caller) or TLS. Connections
/// come in through the workspace's door (`code_mode_tls::gate`): an accept error is backed
/// off, never fatal; at most `max_connections` are served at once; a connection must send
/// its first byte and finish its TLS handshake in time. Returns only if it cannot bind.
pub async fn serve_grpc_tcp(
    settings: Settings,
    address: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    use code_mode_tls::gate::{self, Gate};
    let listener = tokio::net::TcpListener::bind(address).await?;
    bound(listener.local_addr()?);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let gate = Gate::new("codex front", max_connections);
    loop {
        let gate::Admitted { stream, peer, slot } = gate.accept(&listener).await;
        let mut settings = settings.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if !gate::first_byte(&stream, peer).await {
                return;
            }
            let result = match acceptor {
                Some(acceptor) => match gate::handshake(&acceptor, stream, peer).await {
                    Some(stream) => {
                        // Sessions kept across a restart belong to this certificate.
                        settings.owner = gate::peer_identity(&stream).map(Owner::Certificate);
                        serve_tcp_connection(settings, stream).await
                    }
                    None => return,
                },
                None => serve_tcp_connection(settings, stream).await,
            };
            if let Err(error) = result {
                tracing::warn!(%peer, %error, "gRPC connection ended with an error");
            }
        });
    }
}

/// Connections the health port serves at once: it is for the kubelet's probes.
const HEALTH_MAX_CONNECTIONS: usize = 16;

/// All the health port's `503` says: the port answers whoever reaches it, off the pod too,
/// and the cause (paths searched, runtime addresses, settings) is for the log.
pub const NO_RUNTIME: &str = "no runtime can start\n";

/// `--health-listen IP:PORT` on `listener`: plain HTTP/1 that answers `GET /healthz` (200,
/// or 503 with [`NO_RUNTIME`] only: see [`health_probe`]) and another method there as the
/// gRPC port does, and nothing else (404), so that a probe from off the pod needs no port
/// that opens sessions. Connections come through the workspace's door
/// (`code_mode_tls::gate`): at most 16, a share of them per peer,
/// the first byte in time.
pub async fn serve_health(settings: Settings, listener: tokio::net::TcpListener) {
    let front = Arc::new(Front::new(settings));
    let gate = code_mode_tls::gate::Gate::new("health", HEALTH_MAX_CONNECTIONS);
    gate.serve(&listener, move |stream, peer| {
        let front = front.clone();
        async move {
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let front = front.clone();
                async move {
                    let response = match (request.method(), request.uri().path()) {
                        (&http::Method::GET, "/healthz") => health_probe(&front).await,
                        (method, "/healthz") => http1_answer(&front, method, "/healthz").await,
                        _ => {
                            let mut response = http::Response::new(tonic::body::Body::empty());
                            *response.status_mut() = http::StatusCode::NOT_FOUND;
                            response
                        }
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "health connection ended with an error");
            }
        }
    })
    .await;
}

/// `GET /healthz` on the health port: `200` with an empty body while a runtime runs or can
/// be started, else `503` with [`NO_RUNTIME`], the cause logged at debug. The probe costs
/// what the gRPC port's does: nothing while a runtime runs; else a start of the one shared
/// provider, one at a time, backed off after a failure and refused outright in a crash loop.
pub async fn health_probe(front: &Front) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::empty());
    if let Err(error) = front.runtime_ready().await {
        tracing::debug!(%error, "health probe: no runtime can start");
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        *response.body_mut() =
            tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(NO_RUNTIME)));
    }
    response
}
