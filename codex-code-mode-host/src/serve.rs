//! Serving the protocol: gRPC over stdio (`grpc+stdio://`, codex's default), gRPC over TCP
//! (`grpc://IP:PORT`, for `codex app-server --code-mode-host`), and the JSON protocol on
//! stdio. Each client connection gets a [`Front`] of its own over the shared runtime
//! provider, so that when a client goes away every cell of its sessions ends.

use crate::front::{Front, Settings};
use crate::grpc::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

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

/// Serves one HTTP/2 connection with a front of its own; returns when the connection ends,
/// after every session of the connection was closed.
pub async fn serve_grpc_connection<I>(settings: Settings, io: I) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let front = Arc::new(Front::new(settings));
    let routes = tonic::service::Routes::new(Service::new(front.clone()).into_server());
    let service = TowerToHyperService::new(routes);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(2 * 1024 * 1024)
        .max_concurrent_streams(None)
        .max_header_list_size(16 * 1024);
    let result = builder.serve_connection(TokioIo::new(io), service).await;
    front.close_all().await;
    match result {
        Err(error) if client_went_away(&error) => {
            tracing::info!(%error, "the client went away");
            Ok(())
        }
        other => other,
    }
}

/// Whether a connection error is only the client's end of the byte stream (codex exiting,
/// killed, or dropping its channel): a normal end, not a failure of the host.
fn client_went_away(error: &hyper::Error) -> bool {
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

/// Serves gRPC on TCP, plaintext (loopback only, checked by the caller) or TLS.
pub async fn serve_grpc_tcp(
    settings: Settings,
    address: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    bound(listener.local_addr()?);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let settings = settings.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_grpc_connection(settings, stream).await,
                    Err(error) => {
                        tracing::warn!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                },
                None => serve_grpc_connection(settings, stream).await,
            };
            if let Err(error) = result {
                tracing::warn!(%peer, %error, "gRPC connection ended with an error");
            }
        });
    }
}
