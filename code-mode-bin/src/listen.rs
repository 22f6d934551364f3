//! `--listen`: the runtime serves hosts over TCP, with mutual TLS (or plaintext on
//! loopback with `--insecure-loopback`). Connections come in through the workspace's one
//! door (`code_mode_tls::gate`: accept errors backed off, a connection cap and a share of
//! it per peer, the opening bounded in time); each gets the TLS handshake, then the wire
//! protocol's handshake, then its own sessions; a connection that fails either step is
//! refused and logged, and the others carry on.
//!
//! Drain: on SIGTERM or SIGINT the runtime stops accepting, marks itself not ready, tells
//! every host it is draining (no new sessions), lets running cells finish until the drain
//! deadline, then stops every connection (their sessions shut down, their cells end) and
//! returns.

use crate::connection::{self, ServeSettings};
use crate::metrics::METRICS;
use code_mode_tls::gate::{self, Gate};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

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
    /// How long a connection has for its first byte, and for its TLS handshake.
    pub opening_timeout: Duration,
}

/// Accepts and serves connections until a termination signal has been handled.
pub async fn run(listener: TcpListener, settings: ListenSettings) {
    let drain = settings.serve.drain.clone();
    let acceptor = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let connections = TaskTracker::new();
    let gate = Gate::new("runtime", settings.max_connections)
        .with_opening_timeout(settings.opening_timeout);
    loop {
        let admitted = tokio::select! {
            biased;
            () = drain.started() => break,
            admitted = gate.accept(&listener) => admitted,
        };
        let acceptor = acceptor.clone();
        let serve = settings.serve.clone();
        let gate = gate.clone();
        connections.spawn(async move {
            METRICS.connection_opened();
            let gate::Admitted { stream, peer, slot } = admitted;
            serve_one(&gate, stream, peer, acceptor, serve).await;
            drop(slot);
            METRICS.connection_closed();
        });
    }
    drop(listener);
    wind_down(&settings, &connections).await;
}

/// The TLS handshake, then the connection.
async fn serve_one(
    gate: &Gate,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    settings: ServeSettings,
) {
    if !gate.first_byte(&stream, peer).await {
        return;
    }
    let outcome = match acceptor {
        None => connection::serve(stream, settings).await,
        Some(acceptor) => match gate.handshake(&acceptor, stream, peer).await {
            Some(stream) => connection::serve(stream, settings).await,
            None => return,
        },
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
