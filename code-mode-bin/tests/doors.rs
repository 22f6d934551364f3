//! The runtime's TCP listeners behind the workspace's door (`code_mode_tls::gate`): the
//! real `code-mode-bin --listen … --metrics …`, with a short opening timeout, and clients
//! that say nothing, say too little, or come too many from one address.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_code-mode-bin");

/// The opening timeout the runtime is started with: short, so that the test waits little.
const OPENING: Duration = Duration::from_millis(300);

/// Well past [`OPENING`], and short of the metrics server's header timeout (5 s): a
/// connection closed within it was closed by the door.
const CLOSED_WITHIN: Duration = Duration::from_secs(3);

/// The metrics server's cap (`METRICS_MAX_CONNECTIONS`) and its share per peer.
const METRICS_CAP: usize = 16;
const METRICS_PER_PEER: usize = 4;

/// A runtime listening on loopback, with metrics; killed when dropped.
struct Runtime {
    _child: Child,
    listen: SocketAddr,
    metrics: SocketAddr,
}

impl Runtime {
    async fn start() -> Self {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--insecure-loopback"])
            .args(["--metrics", "127.0.0.1:0", "--log", "info"])
            .args(["--opening-timeout-ms", &OPENING.as_millis().to_string()])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn code-mode-bin");
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let (mut listen, mut metrics) = (None, None);
        let found = async {
            while listen.is_none() || metrics.is_none() {
                let Some(line) = lines.next_line().await.expect("stderr") else {
                    panic!("the runtime ended before it listened");
                };
                if let Some(rest) = line.split("metrics on http://").nth(1) {
                    metrics = rest.split('/').next().and_then(|a| a.parse().ok());
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    listen = rest.split(' ').next().and_then(|a| a.parse().ok());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), found)
            .await
            .expect("the runtime listens in time");
        // Keep reading its log, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            listen: listen.expect("the --listen address"),
            metrics: metrics.expect("the --metrics address"),
        }
    }
}

/// A connection to `to` from the loopback address `ip`.
async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Whether the runtime closed `stream` (end of stream or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buffer)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// `GET /healthz` from `ip`: the status line.
async fn healthz_from(ip: [u8; 4], to: SocketAddr) -> String {
    let mut stream = connect_from(ip, to).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(CLOSED_WITHIN, stream.read_to_string(&mut response))
        .await
        .expect("an answer in time")
        .expect("read");
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_connection_that_says_nothing_is_closed_after_the_opening_timeout() {
    let runtime = Runtime::start().await;
    for (what, address) in [("metrics", runtime.metrics), ("listen", runtime.listen)] {
        let mut silent = TcpStream::connect(address).await.unwrap();
        assert!(
            closed_within(&mut silent, CLOSED_WITHIN).await,
            "a silent connection to --{what} was kept"
        );
    }
    assert_eq!(
        healthz_from([127, 0, 0, 1], runtime.metrics).await,
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test]
async fn the_metrics_server_holds_its_cap_and_each_peers_share() {
    let runtime = Runtime::start().await;
    // Connections that spoke (a request begun) hold their slots until the header timeout.
    let mut held = Vec::new();
    let metrics = runtime.metrics;
    let begin = move |ip: [u8; 4]| async move {
        let mut stream = connect_from(ip, metrics).await;
        stream.write_all(b"G").await.unwrap();
        stream
    };
    for _ in 0..METRICS_PER_PEER {
        held.push(begin([127, 0, 0, 1]).await);
    }
    // One more from that address is closed at once (it spoke: only the door closes it
    // before the header timeout); another address still gets in.
    let mut over_share = begin([127, 0, 0, 1]).await;
    assert!(
        closed_within(&mut over_share, CLOSED_WITHIN).await,
        "a peer got past its share"
    );
    assert_eq!(
        healthz_from([127, 0, 0, 2], runtime.metrics).await,
        "HTTP/1.1 200 OK"
    );
    // Every slot taken, by four peers: a fifth peer is closed at once too.
    for peer in 2..=(METRICS_CAP / METRICS_PER_PEER) as u8 {
        for _ in 0..METRICS_PER_PEER {
            held.push(begin([127, 0, 0, peer]).await);
        }
    }
    let mut over_cap = begin([127, 0, 0, 9]).await;
    assert!(
        closed_within(&mut over_cap, CLOSED_WITHIN).await,
        "a connection over the cap was kept"
    );
    for stream in &mut held {
        assert!(
            !closed_within(stream, Duration::from_millis(1)).await,
            "a connection within the cap was closed"
        );
    }
}
