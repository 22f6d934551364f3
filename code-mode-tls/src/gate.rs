//! The door of every TCP listener in the workspace (the runtime's `--listen` and
//! `--metrics`, the Codex front's `grpc://` and `--health-listen`, `code-mode mcp --http`,
//! the trace stream's `--otel-trace-listen`): nothing a client does at the door can stop
//! the listener.
//!
//! - An accept error (out of descriptors, say: `EMFILE` after about a thousand idle
//!   connections under the usual limit) is logged and backed off, never returned.
//! - At most [`Gate::max_connections`] connections are served at once; one over the cap is
//!   closed at once and logged. The cap never exceeds what the descriptor limit leaves (the
//!   soft `RLIMIT_NOFILE` less a reserve for the process's own files and runtimes).
//! - At most [`Gate::max_per_peer`] of them come from one peer (one IPv4 address, or one
//!   IPv6 /64, what one machine is given): one over its share is closed at once, logged at
//!   debug and counted, while other peers still get in. The share is held for the whole
//!   connection, as the global slot is, and not only while it opens: a peer that opened
//!   its connections and then idles in them holds slots as surely as one that never
//!   speaks. A listener behind a proxy sees the proxy as one peer, and must be given a
//!   share that fits ([`Gate::with_max_per_peer`]).
//! - A connection must show its first byte, then finish its TLS handshake, within the
//!   gate's opening timeout ([`OPENING_TIMEOUT`] unless told otherwise): a client that
//!   connects and says nothing holds no slot for long.
//!
//! What a connection may do once open (header timeouts, streams, keepalive, sessions) is the
//! protocol's to bound; each listener does that itself.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

/// One peer's default share of the cap, as a divisor (connections, one eighth): a peer
/// flooding the door leaves seven eighths of the slots to everybody else, while a host
/// with many connections of its own (a pool, a few processes on one machine) still has
/// room.
const PEER_SHARE_DIVISOR: usize = 8;

/// The least default share of one peer (connections), however small the cap: a client and
/// its retry, a probe and a scrape from one machine, fit.
const MIN_PEER_SHARE: usize = 4;

/// The bytes of an IPv6 address that name one peer: the /64 prefix, which is what one
/// machine or one subscriber is given and can take any address of.
const IPV6_PEER_PREFIX_BYTES: usize = 8;

/// A listener's door: its connection cap, its share per peer, its opening timeout and the
/// accept loop's backoff.
#[derive(Debug, Clone)]
pub struct Gate {
    what: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
    peers: Arc<Peers>,
    opening: Duration,
}

/// The connections each peer holds now, and the refusals so far.
#[derive(Debug)]
struct Peers {
    per_peer: usize,
    held: Mutex<HashMap<PeerKey, usize>>,
    refused: AtomicU64,
}

/// One peer as the per-peer share counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey {
    V4(std::net::Ipv4Addr),
    /// The /64 prefix.
    V6([u8; IPV6_PEER_PREFIX_BYTES]),
}

impl PeerKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(address) => Self::V4(address),
            IpAddr::V6(address) => {
                let mut prefix = [0u8; IPV6_PEER_PREFIX_BYTES];
                prefix.copy_from_slice(&address.octets()[..IPV6_PEER_PREFIX_BYTES]);
                Self::V6(prefix)
            }
        }
    }
}

/// A connection let in: it holds its slot until dropped.
#[derive(Debug)]
pub struct Admitted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: Slot,
}

/// A connection's place under the cap and in its peer's share, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _share: PeerShare,
}

/// A connection's place in its peer's share.
#[derive(Debug)]
struct PeerShare {
    peers: Arc<Peers>,
    key: PeerKey,
}

impl Drop for PeerShare {
    fn drop(&mut self) {
        let mut held = lock(&self.peers.held);
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One peer's default share of a cap of `max`: an eighth, at least 4,
/// never more than the cap.
pub fn default_max_per_peer(max: usize) -> usize {
    (max / PEER_SHARE_DIVISOR).max(MIN_PEER_SHARE).min(max)
}

impl Gate {
    /// A door for the listener named `what` in logs, serving at most `max_connections` at
    /// once (lowered to what the descriptor limit leaves), [`default_max_per_peer`] of them
    /// from one peer, each opening within [`OPENING_TIMEOUT`].
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
            peers: Arc::new(Peers {
                per_peer: default_max_per_peer(max),
                held: Mutex::default(),
                refused: AtomicU64::new(0),
            }),
            opening: OPENING_TIMEOUT,
        }
    }

    /// The same door with a share of `per_peer` connections per peer (1 to the cap). To be
    /// called before the first connection: the gate's clones made before keep the old one.
    pub fn with_max_per_peer(mut self, per_peer: usize) -> Self {
        self.peers = Arc::new(Peers {
            per_peer: per_peer.clamp(1, self.max),
            held: Mutex::default(),
            refused: AtomicU64::new(0),
        });
        self
    }

    /// The same door with `timeout` for the first byte and for the TLS handshake (each).
    pub fn with_opening_timeout(mut self, timeout: Duration) -> Self {
        self.opening = timeout;
        self
    }

    /// The connections served at once, at most.
    pub fn max_connections(&self) -> usize {
        self.max
    }

    /// The connections served at once from one peer, at most.
    pub fn max_per_peer(&self) -> usize {
        self.peers.per_peer
    }

    /// How long a connection has for its first byte, and for its TLS handshake.
    pub fn opening_timeout(&self) -> Duration {
        self.opening
    }

    /// Connections being served now.
    pub fn open_connections(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Connections closed at the door so far: over the cap or over their peer's share.
    pub fn refused_connections(&self) -> u64 {
        self.peers.refused.load(Ordering::Relaxed)
    }

    /// The next connection with a slot. Accept errors are logged and backed off; a
    /// connection over the cap or over its peer's share is closed at once. Cancel-safe: a
    /// connection is taken from the listener only in the step that returns it.
    pub async fn accept(&self, listener: &TcpListener) -> Admitted {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let Some(slot) = self.admit(peer) else {
                        self.peers.refused.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return Admitted { stream, peer, slot };
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

    /// A slot for a connection from `peer`, if its share and the cap leave one (logged
    /// when not).
    fn admit(&self, peer: SocketAddr) -> Option<Slot> {
        let key = PeerKey::of(peer.ip());
        let mut held = lock(&self.peers.held);
        let holding = held.get(&key).copied().unwrap_or(0);
        if holding >= self.peers.per_peer {
            // At debug: a peer flooding the door must not flood the log too.
            tracing::debug!(
                listener = self.what,
                %peer,
                per_peer = self.peers.per_peer,
                "connection refused: its peer holds its share of connections"
            );
            return None;
        }
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            tracing::warn!(
                listener = self.what,
                %peer,
                max = self.max,
                "connection refused: the listener serves its maximum of connections"
            );
            return None;
        };
        *held.entry(key).or_default() += 1;
        Some(Slot {
            _permit: permit,
            _share: PeerShare {
                peers: Arc::clone(&self.peers),
                key,
            },
        })
    }

    /// [`first_byte`] within this gate's opening timeout.
    pub async fn first_byte(&self, stream: &TcpStream, peer: SocketAddr) -> bool {
        first_byte_within(self.opening, stream, peer).await
    }

    /// [`handshake`] within this gate's opening timeout.
    pub async fn handshake(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        handshake_within(self.opening, acceptor, stream, peer).await
    }

    /// Serves `listener` for ever, for a plaintext listener with nothing to do between
    /// its door and its protocol: each connection let in that shows its first byte in time
    /// is given to `serve` on a task of its own, and holds its slot until that ends.
    pub async fn serve<F, S>(&self, listener: &TcpListener, serve: F)
    where
        F: Fn(TcpStream, SocketAddr) -> S + Send + Sync + 'static,
        S: Future<Output = ()> + Send + 'static,
    {
        let serve = Arc::new(serve);
        loop {
            let Admitted { stream, peer, slot } = self.accept(listener).await;
            let opening = self.opening;
            let serve = Arc::clone(&serve);
            tokio::spawn(async move {
                let _slot = slot;
                if first_byte_within(opening, &stream, peer).await {
                    serve(stream, peer).await;
                }
            });
        }
    }
}

/// Waits until the client has sent its first byte, for at most [`OPENING_TIMEOUT`]: a
/// connection that says nothing is closed instead of holding its slot.
pub async fn first_byte(stream: &TcpStream, peer: SocketAddr) -> bool {
    first_byte_within(OPENING_TIMEOUT, stream, peer).await
}

async fn first_byte_within(timeout: Duration, stream: &TcpStream, peer: SocketAddr) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut byte)).await {
        Ok(Ok(n)) if n > 0 => true,
        Ok(Ok(_)) => false,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "connection closed before its first byte");
            false
        }
        Err(_) => {
            tracing::info!(%peer, "connection closed: nothing sent within {timeout:?}");
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
    handshake_within(OPENING_TIMEOUT, acceptor, stream, peer).await
}

async fn handshake_within(
    timeout: Duration,
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "connection refused: TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "connection refused: no TLS handshake within {timeout:?}");
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
        let third = tokio::time::timeout(Duration::from_secs(5), gate.accept(&listener))
            .await
            .expect("a freed slot was not given back");
        assert_eq!(gate.open_connections(), 1);
        drop(third);
    }

    /// A client socket from `ip` (any address of 127/8 is the loopback interface's).
    async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from((ip, 0)))
            .expect("bind a loopback address");
        socket.connect(to).await.unwrap()
    }

    /// Whether the server closed `stream` (end of stream or reset) within a second.
    async fn closed(stream: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buffer = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    #[tokio::test]
    async fn one_peer_is_refused_past_its_share_while_another_still_gets_in() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let gate = Gate::new("test", 16);
        assert_eq!(gate.max_per_peer(), 4);
        let mut held = Vec::new();
        for _ in 0..4 {
            let client = connect_from([127, 0, 0, 1], address).await;
            held.push((client, gate.accept(&listener).await));
        }
        // The fifth from that peer is closed at once; the accept goes on waiting.
        let mut over = connect_from([127, 0, 0, 1], address).await;
        let waiting = tokio::time::timeout(Duration::from_millis(300), gate.accept(&listener));
        assert!(waiting.await.is_err(), "a peer got past its share");
        assert!(
            closed(&mut over).await,
            "the connection over the share was left open"
        );
        assert_eq!(gate.refused_connections(), 1);
        // Another peer is let in, with slots to spare under the cap.
        let _other_client = connect_from([127, 0, 0, 2], address).await;
        let other = gate.accept(&listener).await;
        assert_eq!(other.peer.ip(), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(gate.open_connections(), 5);
        // A connection that ends gives its peer's share back.
        held.pop();
        let _again_client = connect_from([127, 0, 0, 1], address).await;
        let again = tokio::time::timeout(Duration::from_secs(5), gate.accept(&listener)).await;
        assert!(again.is_ok(), "a freed share was not given back");
    }

    #[test]
    fn a_peer_is_an_ipv4_address_or_an_ipv6_64() {
        let key = |text: &str| PeerKey::of(text.parse().unwrap());
        assert_eq!(key("192.0.2.1"), key("::ffff:192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("2001:db8:0:1::1"), key("2001:db8:0:1:ffff::2"));
        assert_ne!(key("2001:db8:0:1::1"), key("2001:db8:0:2::1"));
        assert_eq!(default_max_per_peer(1024), 128);
        assert_eq!(default_max_per_peer(16), 4);
        assert_eq!(default_max_per_peer(2), 2);
        let gate = Gate::new("test", 16).with_max_per_peer(100);
        assert_eq!(gate.max_per_peer(), 16);
    }

    #[tokio::test]
    async fn a_served_listener_closes_a_silent_connection_and_serves_one_that_speaks() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let gate = Gate::new("test", 16).with_opening_timeout(Duration::from_millis(200));
        let door = gate.clone();
        tokio::spawn(async move {
            door.serve(&listener, |mut stream, _| async move {
                // Read what was sent first: a socket closed with unread bytes is reset.
                let mut byte = [0u8; 1];
                let _ = stream.read_exact(&mut byte).await;
                let _ = stream.write_all(b"served").await;
            })
            .await;
        });
        let mut silent = TcpStream::connect(address).await.unwrap();
        assert!(closed(&mut silent).await, "a silent connection was kept");
        let mut speaking = TcpStream::connect(address).await.unwrap();
        speaking.write_all(b"x").await.unwrap();
        let mut answer = Vec::new();
        speaking.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"served");
        // Both slots are given back once their connections end.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gate.open_connections(), 0);
    }

    #[test]
    fn the_cap_is_within_the_descriptor_limit() {
        let gate = Gate::new("test", usize::MAX);
        assert!(gate.max_connections() <= descriptor_budget());
    }
}
