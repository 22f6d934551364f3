//! `--listen`: the runtime serves hosts over TCP, with mutual TLS (or plaintext on
//! loopback with `--insecure-loopback`). Each accepted connection gets the TLS handshake
//! (bounded in time), then the wire protocol's handshake, then its own sessions; a
//! connection that fails either step is refused and logged, and the others carry on.
//!
//! Drain: on SIGTERM or SIGINT the runtime stops accepting, marks itself not ready, tells
//! every host it is draining (no new sessions), lets running cells finish until the drain
//! deadline, then stops every connection (their sessions shut down, their cells end) and
//! returns.

use crate::connection::{self, ServeSettings};
use crate::metrics::METRICS;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

/// How long a connection gets to complete its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connections get to close after the drain deadline stopped them.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// How the listener runs.
pub struct ListenSettings {
    /// `None`: plaintext (`--insecure-loopback`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The settings of every connection (the drain included).
    pub serve: ServeSettings,
    pub drain_timeout: Duration,
    pub max_connections: usize,
}

/// Accepts and serves connections until a termination signal has been handled.
pub async fn run(listener: TcpListener, settings: ListenSettings) {
    let drain = settings.serve.drain.clone();
    let acceptor = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = drain.started() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. out of file descriptors: wait instead of spinning.
                tracing::warn!("accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= settings.max_connections {
            tracing::warn!(
                %peer,
                max = settings.max_connections,
                "connection refused: the runtime serves its maximum of connections"
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let serve = settings.serve.clone();
        connections.spawn(async move {
            METRICS.connection_opened();
            serve_one(stream, peer, acceptor, serve).await;
            METRICS.connection_closed();
        });
    }
    drop(listener);
    wind_down(&settings, &connections).await;
}

/// The TLS handshake, then the connection.
async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    settings: ServeSettings,
) {
    let outcome = match acceptor {
        None => connection::serve(stream, settings).await,
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Err(_) => {
                    tracing::warn!(%peer, "connection refused: no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%peer, "connection refused: TLS handshake failed: {error}");
                    return;
                }
                Ok(Ok(stream)) => connection::serve(stream, settings).await,
            }
        }
    };
    match outcome {
        Ok(()) => tracing::info!(%peer, "connection ended"),
        Err(error) => tracing::warn!(%peer, "connection ended: {error}"),
    }
}

/// Waits for running cells to finish (up to the deadline), then stops every connection.
async fn wind_down(settings: &ListenSettings, connections: &TaskTracker) {
    let drain = &settings.serve.drain;
    drain
        .until_idle(settings.drain_timeout, || connections.is_empty())
        .await;
    drain.stop();
    connections.close();
    if tokio::time::timeout(STOP_PATIENCE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not close within {STOP_PATIENCE:?}; exiting anyway");
    }
}
