//! A TCP proxy for fault injection: hosts dial the proxy, the proxy dials the runtime it
//! currently points at, and the test cuts, stalls or delays what flows through it.
//!
//! - **Cut**: every connection through the proxy is closed at once (both sides see the
//!   stream end, as when a network path dies with a reset).
//! - **Stall**: nothing is forwarded until the stall ends; bytes wait in the proxy (a
//!   stall longer than the liveness timeout makes both ends give up on the connection).
//! - **Delay**: each chunk is held for the delay before it is forwarded, in order.
//! - **Retarget**: new connections go to another runtime (one started to replace a runtime
//!   that was killed or drained); connections already open stay where they are.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does to the bytes it forwards now.
#[derive(Debug, Clone, Copy)]
struct Conditions {
    /// Forward nothing before this instant.
    stalled_until: Option<Instant>,
    /// Hold each chunk this long.
    delay: Duration,
}

struct Shared {
    target: Mutex<SocketAddr>,
    conditions: watch::Sender<Conditions>,
    /// Incremented by each cut; connections opened under an older value close.
    cuts: watch::Sender<u64>,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends every connection.
        self.shared.cuts.send_modify(|cuts| *cuts += 1);
    }
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            conditions: watch::Sender::new(Conditions {
                stalled_until: None,
                delay: Duration::ZERO,
            }),
            cuts: watch::Sender::new(0),
        });
        let accepting = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let shared = Arc::clone(&accepting);
                tokio::spawn(async move { forward(inbound, shared).await });
            }
        });
        Self {
            address,
            shared,
            accept,
        }
    }

    /// Closes every connection through the proxy now.
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// Forwards nothing for `duration`.
    pub fn stall(&self, duration: Duration) {
        self.shared
            .conditions
            .send_modify(|conditions| conditions.stalled_until = Some(Instant::now() + duration));
    }

    /// Holds each chunk for `delay` from now on (`Duration::ZERO` to stop).
    pub fn delay(&self, delay: Duration) {
        self.shared
            .conditions
            .send_modify(|conditions| conditions.delay = delay);
    }

    /// New connections go to `target`.
    pub fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

/// One connection: dials the target and copies both ways until either side ends or the
/// proxy cuts it.
async fn forward(inbound: TcpStream, shared: Arc<Shared>) {
    let mut cuts = shared.cuts.subscribe();
    cuts.mark_unchanged();
    let target = *shared.target.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(outbound) = TcpStream::connect(target).await else {
        return; // The host sees its connection close, as with a refused dial.
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = pump(in_read, out_write, shared.conditions.subscribe());
    let down = pump(out_read, in_write, shared.conditions.subscribe());
    tokio::select! {
        _ = cuts.changed() => {}
        () = async { tokio::join!(up, down); } => {}
    }
    // Dropping both halves closes both connections.
}

/// Copies `from` to `to` under the proxy's conditions; shuts `to` down at end of input.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    conditions: watch::Receiver<Conditions>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let now = *conditions.borrow();
        if let Some(until) = now.stalled_until {
            tokio::time::sleep_until(until).await;
        }
        if !now.delay.is_zero() {
            tokio::time::sleep(now.delay).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each chunk with `tag` and the chunk, so that a reply names the
    /// server it came from.
    async fn echo_server(tag: u8) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(read) = stream.read(&mut buffer).await {
                        let mut reply = vec![tag];
                        reply.extend_from_slice(&buffer[..read]);
                        if read == 0 || stream.write_all(&reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    /// Sends `text` and reads the server's tag and its echo.
    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        stream.write_all(text).await.unwrap();
        let mut back = vec![0u8; text.len() + 1];
        stream.read_exact(&mut back).await.unwrap();
        back
    }

    #[tokio::test]
    async fn forwards_stalls_delays_and_cuts() {
        let proxy = FaultProxy::start(echo_server(b'A').await).await;
        let mut stream = TcpStream::connect(proxy.address).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hello").await, b"Ahello");

        proxy.stall(Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(round_trip(&mut stream, b"stalled").await, b"Astalled");
        assert!(started.elapsed() >= Duration::from_millis(250));

        proxy.delay(Duration::from_millis(100));
        let started = Instant::now();
        assert_eq!(round_trip(&mut stream, b"late").await, b"Alate");
        // Both directions wait.
        assert!(started.elapsed() >= Duration::from_millis(200));
        proxy.delay(Duration::ZERO);

        proxy.cut();
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the cut closes the connection");
        assert!(ended.is_err() || rest.is_empty());

        // New connections go through again, and to a new target once retargeted.
        let mut again = TcpStream::connect(proxy.address).await.unwrap();
        assert_eq!(round_trip(&mut again, b"again").await, b"Aagain");
        proxy.retarget(echo_server(b'B').await);
        let mut moved = TcpStream::connect(proxy.address).await.unwrap();
        assert_eq!(round_trip(&mut moved, b"moved").await, b"Bmoved");
        // A connection opened before the retarget stays with the old server.
        assert_eq!(round_trip(&mut again, b"stays").await, b"Astays");
    }
}
