//! The door of every TCP listener in the workspace (the runtime's `--listen`, the Codex
//! front's `grpc://`, `code-mode mcp --http`): nothing a client does at the door can stop
//! the listener.
//!
//! - An accept error (out of descriptors, say: `EMFILE` after about a thousand idle
//!   connections under the usual limit) is logged and backed off, never returned.
//! - At most [`Gate::max_connections`] connections are served at once; one over the cap is
//!   closed at once and logged. The cap never exceeds what the descriptor limit leaves (the
//!   soft `RLIMIT_NOFILE` less a reserve for the process's own files and runtimes).
//! - A connection must show its first byte, then finish its TLS handshake, within
//!   [`OPENING_TIMEOUT`]: a client that connects and says nothing holds no slot for long.
//!
//! What a connection may do once open (header timeouts, streams, keepalive, sessions) is the
//! protocol's to bound; each listener does that itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a new connection gets to send its first byte and to finish its TLS handshake
/// (each): a real client does both in milliseconds; a stalled one is dropped.
pub const OPENING_TIMEOUT: Duration = Duration::from_secs(10);

/// The first pause after a failed accept, doubled at each failure in a row up to
/// [`ACCEPT_BACKOFF_MAX`]: the failure is usually a full descriptor table, which only a
/// closed connection frees.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Descriptors kept back from the connection cap: the process's own files, logs, sockets
/// to its runtimes and whatever a connection opens besides its socket.
const DESCRIPTOR_RESERVE: u64 = 64;

/// Connections a listener serves at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// A listener's door: its connection cap and the accept loop's backoff.
#[derive(Debug, Clone)]
pub struct Gate {
    what: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
}

/// A connection let in: it holds its slot until dropped.
#[derive(Debug)]
pub struct Admitted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: Slot,
}

/// A connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code, reason = "held for its drop")] OwnedSemaphorePermit);

impl Gate {
    /// A door for the listener named `what` in logs, serving at most `max_connections` at
    /// once (lowered to what the descriptor limit leaves).
    pub fn new(what: &'static str, max_connections: usize) -> Self {
        let max = max_connections.clamp(1, descriptor_budget());
        if max < max_connections {
            tracing::warn!(
                listener = what,
                asked = max_connections,
                max,
                "connection cap lowered to what the open-file limit (ulimit -n) leaves"
            );
        }
        Self {
            what,
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The connections served at once, at most.
    pub fn max_connections(&self) -> usize {
        self.max
    }

    /// Connections being served now.
    pub fn open_connections(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// The next connection with a slot. Accept errors are logged and backed off; a
    /// connection over the cap is closed at once. Cancel-safe: a connection is taken from
    /// the listener only in the step that returns it.
    pub async fn accept(&self, listener: &TcpListener) -> Admitted {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                        tracing::warn!(
                            listener = self.what,
                            %peer,
                            max = self.max,
                            "connection refused: the listener serves its maximum of connections"
                        );
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return Admitted {
                        stream,
                        peer,
                        slot: Slot(permit),
                    };
                }
                Err(error) => {
                    tracing::warn!(
                        listener = self.what,
                        %error,
                        pause_ms = backoff.as_millis() as u64,
                        "accepting a connection failed; trying again"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Waits until the client has sent its first byte, for at most [`OPENING_TIMEOUT`]: a
/// connection that says nothing is closed instead of holding its slot.
pub async fn first_byte(stream: &TcpStream, peer: SocketAddr) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(OPENING_TIMEOUT, stream.peek(&mut byte)).await {
        Ok(Ok(n)) if n > 0 => true,
        Ok(Ok(_)) => false,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "connection closed before its first byte");
            false
        }
        Err(_) => {
            tracing::info!(%peer, "connection closed: nothing sent within {OPENING_TIMEOUT:?}");
            false
        }
    }
}

/// The TLS handshake of an admitted connection, bounded by [`OPENING_TIMEOUT`]; `None`
/// (logged) when it fails or takes too long.
pub async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(OPENING_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "connection refused: TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "connection refused: no TLS handshake within {OPENING_TIMEOUT:?}");
            None
        }
    }
}

/// The client certificate a TLS connection presented, as the hex SHA-256 of its DER: the
/// identity a listener with client certificates knows its client by.
pub fn peer_identity(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<String> {
    let (_, connection) = stream.get_ref();
    let leaf = connection.peer_certificates()?.first()?;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(leaf.as_ref());
    Some(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Connections the open-file limit leaves room for.
fn descriptor_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct we own and reads nothing else.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !known || limit.rlim_cur == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    let budget = limit.rlim_cur.saturating_sub(DESCRIPTOR_RESERVE).max(1);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_and_a_freed_slot_is_reused() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let gate = Gate::new("test", 1);
        assert_eq!(gate.max_connections(), 1);
        let _first_client = TcpStream::connect(address).await.unwrap();
        let first = gate.accept(&listener).await;
        assert_eq!(gate.open_connections(), 1);
        // The second is over the cap: closed at once, the accept goes on waiting.
        let mut second = TcpStream::connect(address).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), gate.accept(&listener));
        assert!(
            waiting.await.is_err(),
            "a connection over the cap was let in"
        );
        let mut buffer = [0u8; 1];
        assert_eq!(second.read(&mut buffer).await.unwrap(), 0, "closed");
        drop(first);
        assert_eq!(gate.open_connections(), 0);
        let _third_client = TcpStream::connect(address).await.unwrap();
        let third = gate.accept(&listener).await;
        assert_eq!(gate.open_connections(), 1);
        drop(third);
    }

    #[test]
    fn the_cap_is_within_the_descriptor_limit() {
        let gate = Gate::new("test", usize::MAX);
        assert!(gate.max_connections() <= descriptor_budget());
    }
}
