//! [`RemoteProvider`] against real `code-mode-bin --listen` runtimes on loopback:
//! placement over three runtimes and the death of one, TLS refusals, half-open
//! connections caught by the liveness timeout, metrics, and the drain on SIGTERM.

use crate::request;
use code_mode_conformance::TestDelegate;
use code_mode_conformance::remote::{Identity, ListeningRuntime, Pki, RuntimeOptions, free_port};
use code_mode_host::CodeModeProvider;
use code_mode_host::{
    ClientTls, CodeModeSession, Liveness, RemoteConfig, RemoteProvider, RemoteSession, find_binary,
};
use code_mode_protocol::{CellResponse, SessionError, SessionOptions};
use openmetrics_parser::OpenMetricsValue;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Waits (up to 10 s) until the runtime's log satisfies `check`: a runtime may close a
/// socket a moment before it logs why. Polled: a log file tells nobody it grew.
async fn log_shows(runtime: &ListeningRuntime, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check(&runtime.log()) {
        assert!(
            Instant::now() < deadline,
            "the runtime's log did not show it within 10 s:\n{}",
            runtime.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn binary() -> PathBuf {
    find_binary(None).unwrap_or_else(|error| {
        panic!("{error}\n(build the runtime first: cargo build -p code-mode-bin)")
    })
}

/// TLS settings trusting `ca`'s runtimes and presenting `client`.
fn client_tls(ca: &Pki, client: &Identity) -> ClientTls {
    ClientTls::from_pem(
        ca.ca_pem().as_bytes(),
        client.cert_pem.as_bytes(),
        client.key_pem.as_bytes(),
    )
    .expect("client TLS settings")
}

/// A provider that gives up placing a session after `connect_timeout`.
fn remote_within(
    endpoints: Vec<String>,
    tls: Option<ClientTls>,
    connect_timeout: Duration,
) -> RemoteProvider {
    let mut config = RemoteConfig::insecure_loopback(endpoints);
    config.tls = tls;
    config.connect_timeout = connect_timeout;
    RemoteProvider::new(config).expect("a remote provider")
}

fn remote(endpoints: Vec<String>, tls: Option<ClientTls>) -> RemoteProvider {
    remote_within(endpoints, tls, Duration::from_secs(2))
}

fn texts(response: &CellResponse) -> Vec<String> {
    response
        .content_items()
        .iter()
        .filter_map(|item| item.as_text().map(str::to_owned))
        .collect()
}

/// Runs a quick cell with a nested call and checks its output.
async fn echo_cell(session: &RemoteSession, tag: &str) -> Result<(), SessionError> {
    let started = session
        .execute(request(&format!(
            "text(await tools.echo({}))",
            serde_json::to_string(tag).unwrap()
        )))
        .await?;
    assert_eq!(texts(&started.initial_response), [tag.to_owned()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_three_runtimes_and_the_dead_ones_cells_go_on_elsewhere() {
    let pki = Pki::default();
    let binary = binary();
    let mut runtimes: Vec<ListeningRuntime> = (0..3)
        .map(|_| ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki)))
        .collect();
    let endpoints = runtimes.iter().map(ListeningRuntime::endpoint).collect();
    let provider = remote(endpoints, Some(client_tls(&pki, &pki.client("host"))));
    // Each session's delegate is kept: it counts the calls that reach it.
    let delegates: Vec<Arc<TestDelegate>> = (0..24).map(|_| TestDelegate::new()).collect();
    let sessions: Vec<Arc<RemoteSession>> = delegates
        .iter()
        .map(|delegate| {
            Arc::new(provider.open_session(delegate.clone(), SessionOptions::default()))
        })
        .collect();

    // Placement: least sessions first, so 24 sessions make 8 per runtime.
    let warmups = sessions.iter().enumerate().map(|(index, session)| {
        let session = Arc::clone(session);
        tokio::spawn(async move {
            for cell in 0..3 {
                echo_cell(&session, &format!("s{index} warm {cell}"))
                    .await
                    .unwrap();
            }
        })
    });
    for task in warmups {
        task.await.unwrap();
    }
    let placed: Vec<String> = sessions
        .iter()
        .map(|session| session.runtime().expect("placed"))
        .collect();
    let mut per_runtime: HashMap<&str, usize> = HashMap::new();
    for runtime in &placed {
        *per_runtime.entry(runtime.as_str()).or_default() += 1;
    }
    assert_eq!(per_runtime.len(), 3, "{per_runtime:?}");
    assert!(
        per_runtime.values().all(|count| *count == 8),
        "{per_runtime:?}"
    );

    // Every session has a slow cell in flight when runtime 1 dies.
    let victim = format!("runtime at {}", runtimes[1].address);
    let slow = sessions.iter().map(|session| {
        let session = Arc::clone(session);
        tokio::spawn(async move {
            session
                .execute(request("text(await tools.slow(1500))").with_yield_time_ms(30_000))
                .await
        })
    });
    let slow: Vec<_> = slow.collect();
    // Killed once every session's slow call is in flight (its delegate has it).
    let slow_calls = |delegate: &TestDelegate| {
        delegate
            .records()
            .iter()
            .filter(|record| {
                matches!(record, code_mode_conformance::Record::ToolStarted { tool, .. } if tool == "slow")
            })
            .count()
    };
    for delegate in &delegates {
        delegate
            .wait_for(|record| {
                matches!(record, code_mode_conformance::Record::ToolStarted { tool, .. } if tool == "slow")
            })
            .await;
    }
    runtimes[1].kill();
    // The slow cells of the dead runtime are rebuilt from their journals on the others,
    // where the answers of their calls (which outlived the runtime) reach them: every
    // cell completes (contract §7, durable cells).
    for (index, task) in slow.into_iter().enumerate() {
        let started = task
            .await
            .unwrap()
            .unwrap_or_else(|error| panic!("session {index} (on {}): {error}", placed[index]));
        assert_eq!(texts(&started.initial_response), ["slow done"]);
    }
    // Each session's slow call reached its delegate once: a rebuilt cell sends none of
    // its calls again.
    for (index, delegate) in delegates.iter().enumerate() {
        assert_eq!(
            slow_calls(delegate),
            1,
            "session {index} (on {})",
            placed[index]
        );
    }

    // The dead runtime's sessions run elsewhere, without an error; the others never
    // notice.
    for (index, session) in sessions.iter().enumerate() {
        for cell in 0..3 {
            echo_cell(session, &format!("s{index} after {cell}"))
                .await
                .unwrap_or_else(|error| panic!("session {index} cell {cell}: {error}"));
        }
        let now = session.runtime().expect("placed");
        assert_ne!(now, victim);
        if placed[index] != victim {
            assert_eq!(now, placed[index], "session {index} moved for nothing");
        }
    }
    let status = provider.runtimes();
    assert_eq!(status.len(), 3);
    assert_eq!(status.iter().filter(|runtime| runtime.connected).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_that_comes_up_later_is_dialled_again_and_takes_new_sessions() {
    let pki = Pki::default();
    let binary = binary();
    let first = ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki));
    let later_port = free_port();
    let later_endpoint = format!("127.0.0.1:{later_port}");
    let provider = remote(
        vec![first.endpoint(), later_endpoint.clone()],
        Some(client_tls(&pki, &pki.client("host"))),
    );
    let early: Vec<RemoteSession> = (0..4)
        .map(|_| provider.open_session(TestDelegate::new(), SessionOptions::default()))
        .collect();
    for (index, session) in early.iter().enumerate() {
        echo_cell(session, &format!("early {index}")).await.unwrap();
        assert_eq!(
            session.runtime().unwrap(),
            format!("runtime at {}", first.address)
        );
    }
    let down = provider
        .runtimes()
        .into_iter()
        .find(|runtime| runtime.address.port() == later_port)
        .expect("the second endpoint is known");
    assert!(!down.connected);
    assert!(down.last_error.unwrap().contains("cannot connect"));

    let _later = ListeningRuntime::start(
        &binary,
        &RuntimeOptions {
            listen: later_endpoint.clone(),
            ..RuntimeOptions::tls(&pki)
        },
    );
    // Backoff: the provider dials it again at a placement once its retry is due; the
    // newcomer has no sessions, so the next sessions go there. Polled by placing sessions
    // (dialling happens only at a placement), up to a bound.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
        echo_cell(&session, "late").await.unwrap();
        if session.runtime().unwrap() == format!("runtime at {later_endpoint}") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runtime that came up later took no session within 15 s: {:?}",
            provider.runtimes()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(provider.runtimes().iter().all(|runtime| runtime.connected));
}

/// A session on `endpoint` with `tls` (a 60 s connect timeout): its first cell fails, at
/// once (a refusal that retrying cannot fix is not waited out), naming the runtime.
async fn refused_by(endpoint: &str, tls: Option<ClientTls>) -> String {
    let provider = remote_within(vec![endpoint.to_owned()], tls, Duration::from_secs(60));
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let started = Instant::now();
    let error = echo_cell(&session, "x").await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited {:?} for a refusal that retrying cannot fix: {error}",
        started.elapsed()
    );
    assert!(
        error.contains("no code-mode runtime can take the session") && error.contains(endpoint),
        "{error}"
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_without_a_valid_certificate_are_refused_and_the_runtime_keeps_serving() {
    let pki = Pki::default();
    let mut runtime = ListeningRuntime::start(&binary(), &RuntimeOptions::tls(&pki));
    let good = remote(
        vec![runtime.endpoint()],
        Some(client_tls(&pki, &pki.client("good host"))),
    );
    let session = good.open_session(TestDelegate::new(), SessionOptions::default());
    echo_cell(&session, "before").await.unwrap();

    // Each refusal is final: the host gives up at once (long before its connect timeout)
    // and says what to change.
    let endpoint = runtime.endpoint();

    // Plaintext to a TLS runtime: the runtime answers the hello with a TLS alert.
    let error = refused_by(&endpoint, None).await;
    assert!(
        error.contains("probably wants mutual TLS") && error.contains("--runtime-ca"),
        "{error}"
    );

    // A client certificate from another CA.
    let other = Pki::new("another CA");
    let stranger = other.client("foreign");
    let error = refused_by(&endpoint, Some(client_tls(&pki, &stranger))).await;
    assert!(
        error.contains("client certificate") && error.contains("--client-ca"),
        "{error}"
    );

    // A host that does not trust the runtime's CA refuses the runtime.
    let member = pki.client("h");
    let error = refused_by(&endpoint, Some(client_tls(&other, &member))).await;
    assert!(
        error.contains("TLS handshake failed")
            && error.contains("not trusted")
            && error.contains("--runtime-ca"),
        "{error}"
    );

    // TLS to a plaintext runtime.
    let plain = ListeningRuntime::start(&binary(), &RuntimeOptions::insecure());
    let provider = remote_within(
        vec![plain.endpoint()],
        Some(client_tls(&pki, &member)),
        Duration::from_secs(60),
    );
    let plain_session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let started = Instant::now();
    let error = echo_cell(&plain_session, "x")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(30)
            && error.contains("no code-mode runtime can take the session")
            && error.contains("--insecure-loopback"),
        "{:?}: {error}",
        started.elapsed()
    );

    // No client certificate at all, through rustls directly: the runtime ends the
    // connection before any frame of the protocol.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(pki.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(runtime.address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let outcome = async {
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        stream.write_all(&[1, 0, 0, 0, 0]).await?;
        stream.flush().await?;
        let mut buffer = [0u8; 16];
        stream.read(&mut buffer).await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .expect("the runtime answers a client without a certificate");
    assert!(
        !matches!(outcome, Ok(read) if read > 0),
        "a host without a certificate got an answer: {outcome:?}"
    );

    // The good host is still served, by the same process.
    echo_cell(&session, "after").await.unwrap();
    assert!(runtime.is_running());
    log_shows(&runtime, |log| {
        log.matches("connection refused: TLS handshake failed")
            .count()
            >= 3
    })
    .await;
}

/// A TCP relay that can freeze: it stops moving bytes both ways and keeps both sockets
/// open, as a peer whose machine vanished would. Reports when the runtime's side closes.
struct Relay {
    address: std::net::SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    upstream_closed: tokio::sync::watch::Receiver<bool>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (closed_tx, upstream_closed) = tokio::sync::watch::channel(false);
        let flag = Arc::clone(&frozen);
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let upstream = TcpStream::connect(target).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut upstream_read, mut upstream_write) = upstream.into_split();
            let to_runtime = {
                let flag = Arc::clone(&flag);
                async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let read = client_read.read(&mut buffer).await.unwrap_or(0);
                        if read == 0 {
                            break;
                        }
                        if flag.load(std::sync::atomic::Ordering::SeqCst) {
                            continue; // Swallowed: the host's bytes go nowhere.
                        }
                        if upstream_write.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                    // Keep the write half open (no FIN) while frozen.
                    std::future::pending::<()>().await;
                }
            };
            let to_host = async move {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let read = upstream_read.read(&mut buffer).await.unwrap_or(0);
                    if read == 0 {
                        let _ = closed_tx.send(true);
                        std::future::pending::<()>().await;
                    }
                    if flag.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    if client_write.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                }
            };
            tokio::join!(to_runtime, to_host);
        });
        Self {
            address,
            frozen,
            upstream_closed,
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_found_by_the_liveness_timeout_on_both_sides() {
    let pki = Pki::default();
    let options = RuntimeOptions {
        ping_interval_ms: 200,
        liveness_timeout_ms: 1500,
        ..RuntimeOptions::tls(&pki)
    };
    let runtime = ListeningRuntime::start(&binary(), &options);
    let mut relay = Relay::start(runtime.address).await;
    let mut config = RemoteConfig::new(
        vec![relay.address.to_string()],
        client_tls(&pki, &pki.client("host")),
    );
    config.liveness = Liveness {
        ping_interval: Duration::from_millis(200),
        timeout: Duration::from_millis(1500),
    };
    let provider = RemoteProvider::new(config).unwrap();
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    echo_cell(&session, "through the relay").await.unwrap();
    // Quiet for longer than the timeout: pings keep a healthy connection alive. (The
    // sleep is the claim: a quiet stretch, not a wait for anything.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    echo_cell(&session, "still alive").await.unwrap();

    relay.freeze();
    let frozen_at = Instant::now();
    let error = session
        .execute(request("text(1)").with_yield_time_ms(60_000))
        .await
        .unwrap_err();
    let elapsed = frozen_at.elapsed();
    let SessionError::RuntimeLost(cause) = &error else {
        panic!("expected RuntimeLost, got {error}");
    };
    assert!(cause.contains("liveness timeout"), "{cause}");
    assert!(cause.contains(&relay.address.to_string()), "{cause}");
    assert!(
        elapsed < Duration::from_secs(10),
        "noticed after {elapsed:?}"
    );
    // The runtime noticed too and closed its side.
    tokio::time::timeout(
        Duration::from_secs(10),
        relay.upstream_closed.wait_for(|closed| *closed),
    )
    .await
    .expect("the runtime closes a silent connection")
    .unwrap();
    log_shows(&runtime, |log| log.contains("liveness timeout")).await;
}

/// `GET path` on the metrics server: (status code, body).
async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The sample of `family` with `labels` in a `/metrics` body, which must parse as
/// OpenMetrics (one family per name, types, `_total` counters, `# EOF`), checked to be of
/// `kind`: a counter's or gauge's value, a histogram's count (after checking that its
/// `+Inf` bucket holds every observation).
fn sample(metrics: &str, family: &str, kind: &str, labels: &[(&str, &str)]) -> u64 {
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(metrics)
        .unwrap_or_else(|error| panic!("not OpenMetrics ({error:?}):\n{metrics}"));
    let family = exposition
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family} in\n{metrics}"));
    assert_eq!(
        family.family_type.to_string(),
        kind,
        "{}",
        family.family_name
    );
    let values: Vec<String> = family
        .get_label_names()
        .iter()
        .map(|name| {
            let (_, value) = labels
                .iter()
                .find(|(label, _)| label == name)
                .unwrap_or_else(|| panic!("{} has label {name}", family.family_name));
            (*value).to_owned()
        })
        .collect();
    let sample = family
        .get_sample_by_label_values(&values)
        .unwrap_or_else(|| panic!("no sample {labels:?} of {}", family.family_name));
    let value = match &sample.value {
        OpenMetricsValue::Counter(counter) => counter.value.as_f64(),
        OpenMetricsValue::Gauge(gauge) => gauge.as_f64(),
        OpenMetricsValue::Histogram(histogram) => {
            let count = histogram.count.expect("a histogram count");
            let last = histogram.buckets.last().expect("histogram buckets");
            assert_eq!(last.upper_bound, f64::INFINITY);
            assert_eq!(last.count.as_f64(), count as f64);
            count as f64
        }
        other => panic!("unexpected value {other:?}"),
    };
    value as u64
}

/// Waits (up to 20 s) until a `slow` call reached `delegate`: its cell runs.
async fn slow_started(delegate: &TestDelegate) {
    delegate
        .wait_for(|record| {
            matches!(record, code_mode_conformance::Record::ToolStarted { tool, .. } if tool == "slow")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_ran_and_sigterm_drains_running_cells_first() {
    let options = RuntimeOptions {
        metrics: true,
        ..RuntimeOptions::insecure()
    };
    let mut runtime = ListeningRuntime::start(&binary(), &options);
    // Listening keeps the sandbox: no new privileges, the seccomp filter in force.
    let status = std::fs::read_to_string(format!("/proc/{}/status", runtime.pid())).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(
        runtime.log().contains("accepting connections"),
        "{}",
        runtime.log()
    );
    let metrics = runtime.metrics.expect("a metrics address");
    let provider = remote_within(vec![runtime.endpoint()], None, Duration::from_secs(1));
    let delegate = TestDelegate::new();
    let session = Arc::new(provider.open_session(delegate.clone(), SessionOptions::default()));
    echo_cell(&session, "one").await.unwrap();
    let failed = session
        .execute(request("throw new Error('no')"))
        .await
        .unwrap();
    assert!(matches!(
        failed.initial_response,
        CellResponse::Result {
            failure: Some(_),
            ..
        }
    ));

    // One cell at each limit, counted by kind (no text is read): the heap and the CPU
    // budget stop their cells; the output cap cuts a cell that then completes.
    let limited = provider.open_session(
        TestDelegate::new(),
        SessionOptions {
            limits: code_mode_protocol::CellLimits {
                heap_bytes: 64 * 1024 * 1024,
                cpu_budget_ms: 300,
                output_bytes: 1024,
                ..code_mode_protocol::CellLimits::default()
            },
            ..SessionOptions::default()
        },
    );
    for source in [
        "const keep = []; for (;;) keep.push(new Array(1e6).fill(1));",
        "for (;;) {}",
        "text('x'.repeat(2000)); text('after the cap');",
    ] {
        limited
            .execute(request(source).with_yield_time_ms(30_000))
            .await
            .unwrap();
    }
    limited.shutdown().await;

    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    assert_eq!(http_get(metrics, "/readyz").await.0, 200);
    assert_eq!(http_get(metrics, "/nowhere").await.0, 404);
    let (status, body) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&body, "code_mode_connections_open", "gauge", &[]), 1);
    assert_eq!(sample(&body, "code_mode_connections", "counter", &[]), 1);
    assert_eq!(sample(&body, "code_mode_sessions", "gauge", &[]), 1);
    assert_eq!(sample(&body, "code_mode_cells_started", "counter", &[]), 5);
    let finished = |outcome| {
        sample(
            &body,
            "code_mode_cells_finished",
            "counter",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(finished("ok"), 2);
    assert_eq!(finished("error"), 3);
    assert_eq!(finished("terminated"), 0);
    let limit = |kind| sample(&body, "code_mode_limit_hits", "counter", &[("kind", kind)]);
    assert_eq!([limit("heap"), limit("cpu"), limit("output")], [1, 1, 1]);
    assert_eq!(sample(&body, "code_mode_nested_calls", "counter", &[]), 1);
    assert_eq!(sample(&body, "code_mode_exec_seconds", "histogram", &[]), 5);
    assert_eq!(sample(&body, "code_mode_draining", "gauge", &[]), 0);

    // A cell is running when SIGTERM comes: it finishes; new sessions go nowhere.
    let running = tokio::spawn({
        let session = Arc::clone(&session);
        async move {
            session
                .execute(request("text(await tools.slow(3000))").with_yield_time_ms(30_000))
                .await
        }
    });
    // Running: its call reached the delegate.
    slow_started(&delegate).await;
    runtime.terminate();
    // Polled: the runtime's readiness has no notification.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(metrics, "/readyz").await.0 != 503 {
        assert!(Instant::now() < deadline, "never reported not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let newcomer = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let error = echo_cell(&newcomer, "late").await.unwrap_err();
    assert!(error.to_string().contains("draining"), "{error}");
    let finished = running.await.unwrap().expect("the running cell finishes");
    assert_eq!(texts(&finished.initial_response), ["slow done"]);
    let status = runtime
        .wait_exit(Duration::from_secs(10))
        .expect("the runtime exits once drained");
    assert!(status.success(), "{status:?}\n{}", runtime.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_moves_off_a_draining_runtime_and_both_count_it() {
    let options = RuntimeOptions {
        metrics: true,
        ..RuntimeOptions::insecure()
    };
    let mut first = ListeningRuntime::start(&binary(), &options);
    let second = ListeningRuntime::start(&binary(), &options);
    let provider = remote(vec![first.endpoint(), second.endpoint()], None);
    // Two sessions on the first runtime: one idle with a value, one with a running cell
    // that keeps the runtime draining.
    // (Sessions placed on the second stay open, so placement by load reaches the first.)
    let (mut on_first, mut elsewhere) = (Vec::new(), Vec::new());
    while on_first.len() < 2 {
        let delegate = TestDelegate::new();
        let session = provider.open_session(delegate.clone(), SessionOptions::default());
        echo_cell(&session, "placed").await.unwrap();
        if session
            .runtime()
            .is_some_and(|at| at.ends_with(&first.endpoint()))
        {
            on_first.push((session, delegate));
        } else {
            elsewhere.push(session);
        }
        assert!(elsewhere.len() < 8, "no session lands on the first runtime");
    }
    let (busy, busy_delegate) = on_first.pop().expect("a busy session");
    let (idle, _) = on_first.pop().expect("an idle session");
    idle.execute(request("store('kept', [1, 2])"))
        .await
        .unwrap();
    let running = tokio::spawn(async move {
        let started = busy
            .execute(request("text(await tools.slow(2000))").with_yield_time_ms(30_000))
            .await;
        (busy, started)
    });
    // Running: its call reached the delegate.
    slow_started(&busy_delegate).await;
    first.terminate();
    // Polled: the provider's view of its runtimes has no notification.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !provider.runtimes().iter().any(|runtime| runtime.draining) {
        assert!(Instant::now() < deadline, "the host never saw the drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The idle session moves at its next exec, without an error, its value with it.
    let moved = idle
        .execute(request("text(JSON.stringify(load('kept')))"))
        .await
        .expect("the idle session moves without an error");
    assert_eq!(texts(&moved.initial_response), ["[1,2]"]);
    assert!(
        idle.runtime()
            .is_some_and(|at| at.ends_with(&second.endpoint()))
    );
    let counted = |runtime: &ListeningRuntime, family: &'static str| {
        let metrics = runtime.metrics.expect("a metrics address");
        async move {
            sample(
                &http_get(metrics, "/metrics").await.1,
                family,
                "counter",
                &[],
            )
        }
    };
    assert_eq!(counted(&second, "code_mode_sessions_seeded").await, 1);
    assert_eq!(counted(&first, "code_mode_sessions_moved_off").await, 1);

    // The running cell finished where it ran; the draining runtime then exits.
    let (_busy, started) = running.await.unwrap();
    assert_eq!(
        texts(&started.expect("the running cell finishes").initial_response),
        ["slow done"]
    );
    let status = first
        .wait_exit(Duration::from_secs(10))
        .expect("the runtime exits once drained");
    assert!(status.success(), "{status:?}");
}

/// A fake runtime on a loopback port: after the handshake (see [`fake_handshake`]),
/// `body` runs with the connection's reader and outbox; once it returns (its outbox
/// dropped), what is queued is written. Returns its address and its task.
async fn fake_runtime<T, F, Fut>(
    version: &'static str,
    body: F,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<T>)
where
    F: FnOnce(FakeReader, code_mode_wire::transport::Outbox<code_mode_wire::ServerMessage>) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let code_mode_wire::transport::Transport {
            reader,
            outbox,
            writer,
        } = fake_handshake(&listener, version).await;
        let result = body(reader, outbox).await;
        let _ = writer.await;
        result
    });
    (address, task)
}

/// What a fake runtime's task returned, once the host closed its connection (in 20 s).
async fn fake_ended<T>(fake: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fake)
        .await
        .expect("the host closed the connection")
        .unwrap()
}

/// A `wait` on `cell_id`, which must be answered within 20 s.
async fn answered_wait(
    session: &impl code_mode_protocol::CodeModeSession,
    cell_id: &code_mode_protocol::CellId,
) -> Result<CellResponse, SessionError> {
    tokio::time::timeout(
        Duration::from_secs(20),
        session.wait(code_mode_protocol::WaitRequest::new(cell_id.clone())),
    )
    .await
    .expect("the wait is answered")
}

/// A fake runtime's reader of the host's messages.
type FakeReader = code_mode_wire::transport::FrameReader<
    TcpStream,
    code_mode_wire::ClientMessage,
    code_mode_wire::ServerMessage,
>;

/// A fake runtime's side of the handshake on the first connection `listener` takes: the
/// host's hello read, `Ready` sent (the remote capability, no sandbox).
async fn fake_handshake(
    listener: &TcpListener,
    version: &str,
) -> code_mode_wire::transport::Transport<
    TcpStream,
    code_mode_wire::ClientMessage,
    code_mode_wire::ServerMessage,
> {
    use code_mode_wire::handshake::ServerOffer;
    use code_mode_wire::{ClientMessage, REMOTE_CAPABILITY, ServerMessage};
    use futures_util::StreamExt;
    let (stream, _) = listener.accept().await.unwrap();
    let mut transport = code_mode_wire::transport::split::<_, ClientMessage, ServerMessage>(stream);
    let Some(Ok(ClientMessage::Hello(hello))) = transport.reader.next().await else {
        panic!("no hello");
    };
    let ready = ServerOffer::current(version, "none")
        .with_capability(REMOTE_CAPABILITY)
        .negotiate(&hello)
        .expect("the host's hello");
    transport.outbox.send(&ServerMessage::Ready(ready)).unwrap();
    transport
}

/// A runtime that breaks the protocol is dropped, and the call in flight fails with the
/// violation named in its cause: here a close event for a session that is not open.
#[tokio::test]
async fn a_runtime_that_breaks_the_protocol_is_dropped_with_the_violation_named() {
    use code_mode_wire::{ClientMessage, Request, Response, ServerMessage, SessionId};
    use futures_util::StreamExt;

    let (address, fake) = fake_runtime(
        "a runtime that breaks the protocol",
        |mut reader, outbox| async move {
            while let Some(Ok(message)) = reader.next().await {
                let ClientMessage::Request { id, request, .. } = message else {
                    continue;
                };
                match request {
                    Request::OpenSession { .. } => outbox
                        .send(&ServerMessage::Response {
                            id,
                            result: Ok(Response::SessionOpened(SessionId(1))),
                        })
                        .unwrap(),
                    _ => outbox
                        .send(&ServerMessage::CellClosed {
                            session: SessionId(9),
                            cell_id: "1".into(),
                        })
                        .unwrap(),
                }
            }
        },
    )
    .await;
    let provider = remote(vec![format!("127.0.0.1:{}", address.port())], None);
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let error = tokio::time::timeout(
        Duration::from_secs(20),
        session.execute(code_mode_protocol::ExecRequest::new("text(1)")),
    )
    .await
    .expect("the call ends")
    .expect_err("the runtime was dropped");
    let SessionError::RuntimeLost(cause) = &error else {
        panic!("expected RuntimeLost, got {error}");
    };
    assert!(
        cause.contains(
            "protocol violation by the runtime: a close event for session 9, which is not open"
        ),
        "{cause}"
    );
    drop(session);
    drop(provider);
    tokio::time::timeout(Duration::from_secs(20), fake)
        .await
        .expect("the host closed the connection")
        .unwrap();
}

/// What a fake runtime that escaped its cells asks of the host, after admitting cell 1 in
/// the first session.
#[derive(Clone, Copy, Debug)]
enum Escape {
    /// A nested call of a cell that was admitted in the first session, sent for the
    /// second (also open on the connection).
    CallForAnotherSession,
    /// A call of a tool its exec did not enable.
    ToolNotEnabled,
    /// A call answered once, sent again under its id.
    CallIdAgain,
}

/// A runtime that speaks the protocol. The first exec it gets stays unanswered (its
/// session is then open on the connection), and `queued` is told; at the second it admits
/// cell 1 in that exec's session, then does `escape`. Returns the delegate replies it got.
async fn escaping_runtime(
    escape: Escape,
    queued: tokio::sync::oneshot::Sender<()>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
    use code_mode_protocol::CallId;
    use code_mode_wire::{
        ClientMessage, DelegateCall, DelegateId, Request, Response, ServerMessage, SessionId,
    };
    use futures_util::StreamExt;

    let (address, fake) = fake_runtime(
        "a runtime that escaped its cells",
        move |mut reader, outbox| async move {
            let mut sessions = 0;
            let mut replies = Vec::new();
            let mut queued = Some(queued);
            let mut waiting_session = None;
            let call =
                |id: u64, session: SessionId, tool: &str, call: u64| ServerMessage::Delegate {
                    id: DelegateId(id),
                    session,
                    call: DelegateCall::InvokeTool {
                        cell_id: "1".into(),
                        call_id: CallId::new(call).into(),
                        tool_name: tool.to_owned(),
                        kind: code_mode_wire::payload::ToolKind::Function,
                        input: None,
                        exec_call_id: None,
                    },
                };
            let mut admitted_in = None;
            while let Some(Ok(message)) = reader.next().await {
                match message {
                    ClientMessage::Request { id, request, .. } => match request {
                        Request::OpenSession { .. } => {
                            sessions += 1;
                            outbox
                                .send(&ServerMessage::Response {
                                    id,
                                    result: Ok(Response::SessionOpened(SessionId(sessions))),
                                })
                                .unwrap();
                        }
                        Request::RegisterTools { .. } => outbox
                            .send(&ServerMessage::Response {
                                id,
                                result: Ok(Response::ToolsRegistered),
                            })
                            .unwrap(),
                        Request::Session { session, .. }
                        | Request::SessionWithTools { session, .. } => {
                            if let Some(queued) = queued.take() {
                                waiting_session = Some(session);
                                let _ = queued.send(());
                                continue;
                            }
                            outbox
                                .send(&ServerMessage::Admitted {
                                    id,
                                    cell_id: "1".into(),
                                })
                                .unwrap();
                            admitted_in = Some(session);
                            let other = waiting_session.expect("the first exec's session");
                            let first = match escape {
                                Escape::CallForAnotherSession => call(1, other, "echo", 1),
                                Escape::ToolNotEnabled => call(1, session, "rm_rf", 1),
                                Escape::CallIdAgain => call(1, session, "echo", 1),
                            };
                            outbox.send(&first).unwrap();
                        }
                        _ => {}
                    },
                    ClientMessage::DelegateReply { id, reply } => {
                        replies.push(format!("{id} {reply:?}"));
                        if let (Escape::CallIdAgain, Some(session)) = (escape, admitted_in)
                            && id == DelegateId(1)
                        {
                            // The same call again, as a new delegate request.
                            outbox.send(&call(2, session, "echo", 1)).unwrap();
                        }
                    }
                    _ => {}
                }
            }
            replies
        },
    )
    .await;
    (address, fake)
}

/// The host is the second wall against a runtime that escaped its cells: a delegate call
/// for a cell not admitted in its session, for a tool the exec did not enable, or under a
/// call id already issued is a protocol violation that drops the runtime, and the delegate
/// never sees it.
#[tokio::test]
async fn a_runtime_that_escaped_its_cells_is_dropped_before_the_delegate_sees_its_call() {
    let cases = [
        (
            Escape::CallForAnotherSession,
            "delegate call 1 is for cell 1 of session 1, which was not admitted or resumed there",
            0,
        ),
        (
            Escape::ToolNotEnabled,
            "delegate call 1 calls tool \"rm_rf\", which the exec of cell 1 did not enable",
            0,
        ),
        (
            Escape::CallIdAgain,
            "delegate call 2 issues call 1 of cell 1 again (its calls are numbered above 1): a call is never sent twice",
            1,
        ),
    ];
    for (escape, violation, calls_seen) in cases {
        let (queued, exec_queued) = tokio::sync::oneshot::channel();
        let (address, fake) = escaping_runtime(escape, queued).await;
        let provider = Arc::new(remote(vec![format!("127.0.0.1:{}", address.port())], None));
        // The other session's exec waits on the runtime: that session is open there.
        let other_delegate = TestDelegate::new();
        let other =
            Arc::new(provider.open_session(other_delegate.clone(), SessionOptions::default()));
        let waiting = tokio::spawn({
            let other = Arc::clone(&other);
            async move { other.execute(request("text(1)")).await }
        });
        tokio::time::timeout(Duration::from_secs(20), exec_queued)
            .await
            .expect("the other exec reached the runtime")
            .unwrap();
        let delegate = TestDelegate::new();
        let session = provider.open_session(delegate.clone(), SessionOptions::default());
        let error = tokio::time::timeout(
            Duration::from_secs(20),
            session.execute(request("await tools.echo()")),
        )
        .await
        .expect("the call ends")
        .expect_err("the runtime was dropped");
        let SessionError::RuntimeLost(cause) = &error else {
            panic!("{escape:?}: expected RuntimeLost, got {error}");
        };
        assert!(
            cause.contains(&format!("protocol violation by the runtime: {violation}")),
            "{escape:?}: {cause}"
        );
        let started = |delegate: &TestDelegate| {
            delegate
                .records()
                .iter()
                .filter(|record| {
                    matches!(record, code_mode_conformance::Record::ToolStarted { .. })
                })
                .count()
        };
        assert_eq!(started(&delegate), calls_seen, "{escape:?}");
        assert_eq!(started(&other_delegate), 0, "{escape:?}");
        let _ = waiting.await;
        drop((session, other, provider));
        let replies = tokio::time::timeout(Duration::from_secs(20), fake)
            .await
            .expect("the host closed the connection")
            .unwrap();
        assert_eq!(replies.len(), calls_seen, "{escape:?}: {replies:?}");
    }
}

/// What [`offering_runtime`] gives the test.
struct OfferingRuntime {
    address: std::net::SocketAddr,
    /// Its task: the host's words and requests it saw after the exec, in order.
    task: tokio::task::JoinHandle<Vec<String>>,
    /// Without `crossing`: told once the host has the offer (it answered the `Ping` the
    /// fake sent right behind the offer, and the host's reader handles a connection's
    /// messages in order).
    offer_held: tokio::sync::oneshot::Receiver<()>,
    /// Each of those words and requests, as the fake sees it.
    seen: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// The number of the `Ping` an [`offering_runtime`] sends right behind its offer.
const BEHIND_THE_OFFER: u64 = 0x00ff_e4ed;

/// A fake runtime whose cell 1 (of session 1) yields to its exec and then finishes with
/// `done`. With `crossing`, it offers that answer only once the host's `Wait` for the cell
/// arrived (the two crossed on the wire), and answers the wait once the offer came back;
/// otherwise it offers the answer as soon as the exec's answer was taken, with a `Ping`
/// behind it whose `Pong` says the host has the offer.
async fn offering_runtime(crossing: bool) -> OfferingRuntime {
    use code_mode_wire::payload::{
        CellId, CellResponse as WireResponse, ContentItem, SessionReply,
    };
    use code_mode_wire::{ClientMessage, Request, Response, ServerMessage, SessionId};
    use futures_util::StreamExt;

    let (held_tx, offer_held) = tokio::sync::oneshot::channel();
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let (address, task) = fake_runtime(
        "a runtime that offers",
        move |mut reader, outbox| async move {
            let mut held_tx = Some(held_tx);
            let see = |seen: &mut Vec<String>, word: String| {
                let _ = seen_tx.send(word.clone());
                seen.push(word);
            };
            let cell = CellId::from("1");
            let done = WireResponse::Result {
                cell_id: cell.clone(),
                content_items: vec![ContentItem::InputText {
                    text: "done".into(),
                }],
                failure: None,
                wall_time: Duration::ZERO,
            };
            let offer = ServerMessage::Offer {
                session: SessionId(1),
                cell_id: cell.clone(),
                response: done.clone(),
            };
            let mut seen = Vec::new();
            let mut exec = None;
            let mut wait = None;
            while let Some(Ok(message)) = reader.next().await {
                match message {
                    ClientMessage::Ping(nonce) => outbox.send(&ServerMessage::Pong(nonce)).unwrap(),
                    ClientMessage::Request { id, request, .. } => match request {
                        Request::OpenSession { .. } => outbox
                            .send(&ServerMessage::Response {
                                id,
                                result: Ok(Response::SessionOpened(SessionId(1))),
                            })
                            .unwrap(),
                        Request::Session { call, .. } if exec.is_none() => {
                            assert!(matches!(
                                call,
                                code_mode_wire::payload::SessionCall::Execute(_)
                            ));
                            exec = Some(id);
                            outbox
                                .send(&ServerMessage::Admitted {
                                    id,
                                    cell_id: cell.clone(),
                                })
                                .unwrap();
                            let started = SessionReply::Started {
                                cell_id: cell.clone(),
                                initial_response: WireResponse::Yielded {
                                    cell_id: cell.clone(),
                                    content_items: vec![],
                                    wall_time: Duration::ZERO,
                                },
                            };
                            outbox
                                .send(&ServerMessage::Response {
                                    id,
                                    result: Ok(Response::Reply(started)),
                                })
                                .unwrap();
                        }
                        // The session's shutdown when the test drops it.
                        Request::Session {
                            call: code_mode_wire::payload::SessionCall::Shutdown,
                            ..
                        } => {}
                        Request::Session { call, .. } => {
                            see(&mut seen, format!("request {call:?}"));
                            wait = Some(id);
                            if crossing {
                                outbox.send(&offer).unwrap();
                            }
                        }
                        other => see(&mut seen, format!("request {other:?}")),
                    },
                    ClientMessage::Taken { id } if Some(id) == exec && !crossing => {
                        outbox.send(&offer).unwrap();
                        outbox.send(&ServerMessage::Ping(BEHIND_THE_OFFER)).unwrap();
                    }
                    ClientMessage::Taken { id } if Some(id) == exec => {}
                    ClientMessage::Pong(BEHIND_THE_OFFER) => {
                        if let Some(held) = held_tx.take() {
                            let _ = held.send(());
                        }
                    }
                    ClientMessage::OfferGivenBack { .. } => {
                        see(&mut seen, "offer given back".to_owned());
                        // The answer goes to the wait that crossed it.
                        let id = wait.expect("a wait crossed the offer");
                        outbox
                            .send(&ServerMessage::Response {
                                id,
                                result: Ok(Response::Reply(SessionReply::Cell(done.clone()))),
                            })
                            .unwrap();
                    }
                    other @ (ClientMessage::OfferTaken { .. } | ClientMessage::Taken { .. }) => {
                        see(&mut seen, format!("{other:?}"));
                    }
                    _ => {}
                }
            }
            seen
        },
    )
    .await;
    OfferingRuntime {
        address,
        task,
        offer_held,
        seen: seen_rx,
    }
}

/// A cell's final answer offered by its runtime answers the next `wait` on the host, with
/// no request to the runtime (the runtime hears `OfferTaken`); an offer that crosses the
/// host's own `Wait` for the cell goes back (`OfferGivenBack`), and that wait gets the
/// answer from the runtime.
#[tokio::test]
async fn an_offered_answer_answers_the_next_wait_and_goes_back_when_a_wait_crossed_it() {
    for crossing in [false, true] {
        let OfferingRuntime {
            address,
            task: fake,
            offer_held,
            mut seen,
        } = offering_runtime(crossing).await;
        let provider = remote(vec![format!("127.0.0.1:{}", address.port())], None);
        let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
        let started = session
            .execute(code_mode_protocol::ExecRequest::new("text(1)"))
            .await
            .expect("the exec");
        assert!(matches!(
            started.initial_response,
            CellResponse::Yielded { .. }
        ));
        if !crossing {
            // The offer follows the exec's answer on the wire: the wait comes once the
            // host has it.
            tokio::time::timeout(Duration::from_secs(20), offer_held)
                .await
                .unwrap_or_else(|_| {
                    panic!("the host did not answer the ping behind the offer within 20 s")
                })
                .expect("the fake runs");
        }
        let response = answered_wait(&session, &started.cell_id)
            .await
            .expect("the wait");
        assert_eq!(texts(&response), ["done"], "crossing {crossing}");
        // The host's last word (that the answer was taken) reached the fake before the
        // connection ends.
        let last = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let word = seen.recv().await.expect("the fake runs");
                if word.starts_with("Taken {") || word.starts_with("OfferTaken {") {
                    break word;
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("crossing {crossing}: the host never said the answer was taken")
        });
        drop(session);
        drop(provider);
        let seen = fake_ended(fake).await;
        assert_eq!(seen.last(), Some(&last), "{seen:?}");
        if crossing {
            assert_eq!(seen.len(), 3, "{seen:?}");
            assert!(seen[0].starts_with("request Wait("), "{seen:?}");
            assert_eq!(seen[1], "offer given back", "{seen:?}");
            assert!(seen[2].starts_with("Taken {"), "{seen:?}");
        } else {
            assert_eq!(
                seen,
                [r#"OfferTaken { session: SessionId(1), cell_id: CellId("1") }"#],
                "no request reached the runtime"
            );
        }
    }
}

/// A cell whose writes were committed but whose runtime was lost before its final answer is
/// rebuilt on the next runtime, told that it committed already (so it merges nothing
/// again), and its wait gets the final answer. The fake's first connection admits the cell,
/// commits `k = 1` and ends; its second takes the rebuild. Returns what the second saw.
async fn runtime_lost_after_a_commit()
-> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
    use code_mode_wire::payload::{
        CellId, CellResponse as WireResponse, ContentItem, SessionReply,
    };
    use code_mode_wire::{ClientMessage, Request, Response, ServerMessage, SessionId};
    use futures_util::StreamExt;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let cell = CellId::from("1");
        let mut first = fake_handshake(&listener, "a runtime lost after a commit").await;
        while let Some(Ok(message)) = first.reader.next().await {
            let ClientMessage::Request { id, request, .. } = message else {
                continue;
            };
            match request {
                Request::OpenSession { .. } => first
                    .outbox
                    .send(&ServerMessage::Response {
                        id,
                        result: Ok(Response::SessionOpened(SessionId(1))),
                    })
                    .unwrap(),
                Request::Session { .. } => {
                    let session = SessionId(1);
                    // As a runtime does: the journal starts before the admission.
                    let messages = [
                        ServerMessage::Journal {
                            session,
                            cell_id: cell.clone(),
                            entry: code_mode_wire::payload::JournalEntry::Started { seed: 7 },
                        },
                        ServerMessage::Admitted {
                            id,
                            cell_id: cell.clone(),
                        },
                        ServerMessage::Response {
                            id,
                            result: Ok(Response::Reply(SessionReply::Started {
                                cell_id: cell.clone(),
                                initial_response: WireResponse::Yielded {
                                    cell_id: cell.clone(),
                                    content_items: vec![],
                                    wall_time: Duration::ZERO,
                                },
                            })),
                        },
                        ServerMessage::Committed {
                            session,
                            cell_id: cell.clone(),
                            writes: [("k".to_owned(), "1".into())].into_iter().collect(),
                        },
                    ];
                    for message in &messages {
                        first.outbox.send(message).unwrap();
                    }
                    break;
                }
                _ => {}
            }
        }
        // Lost before the final answer: the connection ends.
        drop(first);
        let mut second = fake_handshake(&listener, "the next runtime").await;
        let mut seen = Vec::new();
        let mut resumed_session = None;
        while let Some(Ok(message)) = second.reader.next().await {
            match message {
                ClientMessage::Ping(nonce) => {
                    second.outbox.send(&ServerMessage::Pong(nonce)).unwrap();
                }
                ClientMessage::Request { id, request, .. } => {
                    let response = match request {
                        Request::OpenSession { stored_values, .. } => {
                            let values: Vec<String> = stored_values
                                .iter()
                                .map(|(key, value)| format!("{key}={value}"))
                                .collect();
                            seen.push(format!("open with {values:?}"));
                            Response::SessionOpened(SessionId(1))
                        }
                        Request::Resume {
                            session,
                            journal,
                            committed,
                            ..
                        } => {
                            seen.push(format!("resume {:?} committed {committed}", journal.source));
                            resumed_session = Some(session);
                            Response::Resumed(cell.clone())
                        }
                        Request::Session { call, .. } => {
                            if matches!(call, code_mode_wire::payload::SessionCall::Shutdown) {
                                continue;
                            }
                            seen.push("wait".to_owned());
                            Response::Reply(SessionReply::Cell(WireResponse::Result {
                                cell_id: cell.clone(),
                                content_items: vec![ContentItem::InputText {
                                    text: "done".into(),
                                }],
                                failure: None,
                                wall_time: Duration::ZERO,
                            }))
                        }
                        _ => continue,
                    };
                    second
                        .outbox
                        .send(&ServerMessage::Response {
                            id,
                            result: Ok(response),
                        })
                        .unwrap();
                }
                _ => {}
            }
        }
        let _ = resumed_session;
        seen
    });
    (address, fake)
}

/// A runtime lost between a cell's commit and its final answer loses neither: the cell is
/// rebuilt on the next runtime as one that committed already, the wait gets its answer,
/// and the stored value is the committed one, merged once.
#[tokio::test]
async fn a_cell_lost_between_its_commit_and_its_answer_is_rebuilt_without_a_second_commit() {
    let (address, fake) = runtime_lost_after_a_commit().await;
    let provider = remote(vec![format!("127.0.0.1:{}", address.port())], None);
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let started = session
        .execute(code_mode_protocol::ExecRequest::new(
            "store('k', 1); text('done')",
        ))
        .await
        .expect("the exec");
    let response = answered_wait(&session, &started.cell_id)
        .await
        .expect("the wait goes on past the loss");
    assert_eq!(texts(&response), ["done"]);
    let stored: Vec<(String, String)> = session
        .stored_values()
        .iter()
        .map(|(key, value)| (key.clone(), value.to_string()))
        .collect();
    assert_eq!(stored, [("k".to_owned(), "1".to_owned())]);
    drop(session);
    drop(provider);
    let seen = fake_ended(fake).await;
    assert_eq!(
        seen,
        [
            r#"open with ["k=1"]"#.to_owned(),
            r#"resume "store('k', 1); text('done')" committed true"#.to_owned(),
            "wait".to_owned(),
        ]
    );
}
