//! The front's doors (`--listen grpc://`): off loopback only clients with a certificate
//! from `--client-ca` are served; a session kept by `--state-dir` is taken back only by
//! the certificate that opened it; idle connections under a low open-file limit do not
//! stop the listener; a connection's sessions are capped; the health port answers
//! `/healthz` and nothing else.

use code_mode_conformance::Scratch;
use code_mode_conformance::remote::Pki;
use codex_code_mode_host::client::{Driver, UNANSWERED, exec_request, render_outcome};
use codex_code_mode_host::proto;
use codex_code_mode_host::proto::code_mode_host_client::CodeModeHostClient;
use futures_util::StreamExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// How long any one step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(30);

/// The files of a front with mutual TLS: its certificate, key and the clients' CA.
struct Certificates {
    pki: Pki,
    scratch: Scratch,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Certificates {
    fn new() -> Self {
        let pki = Pki::new("front doors test CA");
        let server = pki.server();
        let scratch = Scratch::new();
        let cert = scratch.write("cert.pem", &server.cert_pem);
        let key = scratch.write("key.pem", &server.key_pem);
        let ca = scratch.write("ca.pem", &pki.ca_pem());
        Self {
            pki,
            scratch,
            cert,
            key,
            ca,
        }
    }

    /// `--tls-cert`, `--tls-key` and, with `client_ca`, `--client-ca`.
    fn args(&self, client_ca: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.key.display().to_string(),
        ];
        if client_ca {
            args.extend(["--client-ca".to_owned(), self.ca.display().to_string()]);
        }
        args
    }

    /// A client's TLS settings: trusting the CA, presenting a new certificate named `name`
    /// (none with `None`).
    fn client(&self, name: Option<&str>) -> Arc<rustls::ClientConfig> {
        self.presenting(name.map(|name| self.pki.client_pems(name)).as_ref())
    }

    /// A client's TLS settings presenting `pems` (the CA, a certificate and its key).
    fn presenting(&self, pems: Option<&[String; 3]>) -> Arc<rustls::ClientConfig> {
        let mut config = match pems {
            Some([ca, cert, key]) => {
                let config =
                    code_mode_tls::client_config(ca.as_bytes(), cert.as_bytes(), key.as_bytes())
                        .expect("client settings");
                Arc::unwrap_or_clone(config)
            }
            None => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for ca in CertificateDer::pem_slice_iter(self.pki.ca_pem().as_bytes()) {
                    roots.add(ca.expect("the CA")).expect("a root");
                }
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

/// A front started with `args`, and the port its stdout line named.
struct Front {
    child: tokio::process::Child,
    port: u16,
}

impl Front {
    async fn start(listen: &str, args: &[String], limit_files: Option<u32>) -> Self {
        let host = crate::our_host();
        let mut command = match limit_files {
            // The open-file limit is lowered by the shell that then becomes the front.
            Some(limit) => {
                let mut command = tokio::process::Command::new("sh");
                command
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(&host);
                command
            }
            None => tokio::process::Command::new(&host),
        };
        command
            .args(["--listen", listen])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the front runs");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        tokio::time::timeout(STEP, stdout.read_line(&mut line))
            .await
            .expect("the URL line in time")
            .expect("read stdout");
        let port = line
            .trim()
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Self { child, port }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A gRPC client over TLS with `config`; the error of the first call tells whether the
    /// front took it.
    async fn tls_client(
        &self,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<CodeModeHostClient<Channel>> {
        let tcp = tokio::net::TcpStream::connect(self.address()).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let channel = codex_code_mode_host::client::connect(tls).await?;
        Ok(CodeModeHostClient::new(channel))
    }

    async fn plain_client(&self) -> CodeModeHostClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address()))
            .expect("an endpoint")
            .connect()
            .await
            .expect("connect");
        CodeModeHostClient::new(channel)
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

async fn open(client: CodeModeHostClient<Channel>) -> Result<Driver, tonic::Status> {
    tokio::time::timeout(
        STEP,
        Driver::open(
            client,
            proto::OpenSessionRequest::default(),
            Arc::new(|_| Err(UNANSWERED.to_owned())),
        ),
    )
    .await
    .expect("an answer in time")
}

/// What the front says on stderr when it refuses to start with `args`.
async fn refusal(args: &[String]) -> String {
    let output = tokio::time::timeout(
        STEP,
        tokio::process::Command::new(crate::our_host())
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("runs");
    assert!(!output.status.success(), "the front started with {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn off_loopback_only_clients_with_a_certificate_are_served() {
    let certificates = Certificates::new();
    let listen = ["--listen".to_owned(), "grpc://0.0.0.0:0".to_owned()];
    // Plaintext, and TLS without client certificates, are refused off loopback.
    for client_ca in [None, Some(false)] {
        let mut args = listen.to_vec();
        if let Some(client_ca) = client_ca {
            args.extend(certificates.args(client_ca));
        }
        let said = refusal(&args).await;
        assert!(
            said.contains("off loopback") && said.contains("--client-ca"),
            "{said}"
        );
    }
    // With them, it serves a client with a certificate of the CA, and no other.
    let front = Front::start("grpc://0.0.0.0:0", &certificates.args(true), None).await;
    let anonymous = match front.tls_client(certificates.client(None)).await {
        Ok(client) => open(client).await.err().map(|status| status.code()),
        Err(_) => Some(tonic::Code::Unavailable),
    };
    assert!(
        anonymous.is_some(),
        "a client without a certificate opened a session"
    );
    let client = front
        .tls_client(certificates.client(Some("alice")))
        .await
        .expect("a client with a certificate connects");
    let mut driver = open(client).await.expect("a session for alice");
    let outcome = driver
        .run(exec_request(r#"text("in")"#))
        .await
        .expect("run");
    assert_eq!(
        render_outcome(&outcome),
        r#"cell 1 completed{error_text: ""} [text "in"]"#
    );
    // Loopback stays as on Codex's host: plaintext, no client certificate.
    let front = Front::start("grpc://127.0.0.1:0", &[], None).await;
    open(front.plain_client().await)
        .await
        .expect("a plaintext session on loopback");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_session_is_taken_back_only_by_the_certificate_that_opened_it() {
    let certificates = Certificates::new();
    let state = certificates.scratch.0.join("state");
    let mut args = certificates.args(true);
    args.extend(["--state-dir".to_owned(), state.display().to_string()]);
    let mut front = Front::start("grpc://127.0.0.1:0", &args, None).await;
    let alices = certificates.pki.client_pems("alice");
    let alice = front
        .tls_client(certificates.presenting(Some(&alices)))
        .await
        .expect("alice connects");
    let mut driver = open(alice).await.expect("alice's session");
    let session = driver.session_id.clone();
    let stored = driver
        .run(exec_request(r#"store("secret", "alice's"); text("kept")"#))
        .await
        .expect("run");
    assert_eq!(
        render_outcome(&stored),
        r#"cell 1 completed{error_text: ""} [text "kept"]"#
    );
    // The host dies while alice is still connected.
    front.child.kill().await.expect("kill the front");
    drop(driver);

    let front = Front::start("grpc://127.0.0.1:0", &args, None).await;
    let wait_on = |mut client: CodeModeHostClient<Channel>, session: String| async move {
        tokio::time::timeout(
            STEP,
            client.wait(proto::WaitRequest {
                session_id: session,
                cell_id: "1".to_owned(),
                wait_id: uuid::Uuid::new_v4().to_string(),
                yield_time_ms: 100,
                max_tokens: None,
            }),
        )
        .await
        .expect("an answer in time")
    };
    // Another certificate of the same CA, even under alice's name, is another client.
    let mallory = front
        .tls_client(certificates.client(Some("alice")))
        .await
        .expect("mallory connects: the CA issued her certificate too");
    let refused = wait_on(mallory, session.clone())
        .await
        .expect_err("another certificate takes nothing back");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    assert_eq!(
        refused.message(),
        format!("unknown code-mode session {session}")
    );
    let alice = front
        .tls_client(certificates.presenting(Some(&alices)))
        .await
        .expect("alice connects again");
    // Alice's session, after mallory's try, with its stored value and its next cell id.
    wait_on(alice.clone(), session.clone())
        .await
        .expect("alice takes her session back");
    let mut request = exec_request(r#"text(load("secret"))"#);
    request.session_id = session.clone();
    request.execution_id = uuid::Uuid::new_v4().to_string();
    request.tool_call_id = "call_again".to_owned();
    let mut alice = alice;
    let events: Vec<_> = alice
        .execute(request)
        .await
        .expect("an exec")
        .into_inner()
        .collect()
        .await;
    let outcome = events
        .into_iter()
        .filter_map(|event| match event.expect("an event").event {
            Some(proto::execute_event::Event::Outcome(outcome)) => Some(outcome),
            _ => None,
        })
        .next_back()
        .expect("an outcome");
    assert_eq!(
        render_outcome(&outcome),
        r#"cell 2 completed{error_text: ""} [text "alice's"]"#
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_under_a_low_file_limit_do_not_stop_the_listener() {
    const IDLE: usize = 600;
    let mut front = Front::start("grpc://127.0.0.1:0", &[], Some(256)).await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        // Connections the kernel takes while the front cannot (its descriptors used up)
        // wait in the backlog or are refused: either way, the front must live.
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(front.address()),
        )
        .await
        {
            idle.push(stream);
        }
    }
    assert!(
        idle.len() > 256,
        "only {} idle connections made",
        idle.len()
    );
    assert!(front.running(), "the front died under idle connections");
    // A new session is served once the idle ones have been dropped for saying nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let driver = loop {
        let attempt = async {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{}", front.address()))
                    .expect("an endpoint")
                    .connect_timeout(Duration::from_secs(2))
                    .connect()
                    .await
                    .map_err(|error| error.to_string())?;
            open(CodeModeHostClient::new(channel))
                .await
                .map_err(|status| status.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(driver)) => break driver,
            Ok(Err(error)) => assert!(
                tokio::time::Instant::now() < deadline,
                "no session within 60 s: {error}"
            ),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "no session within 60 s"
            ),
        }
    };
    assert!(front.running());
    drop(driver);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_opens_at_most_its_cap_of_sessions() {
    let args = ["--max-sessions-per-connection".to_owned(), "2".to_owned()];
    let front = Front::start("grpc://127.0.0.1:0", &args, None).await;
    let client = front.plain_client().await;
    let _first = open(client.clone()).await.expect("the first session");
    let _second = open(client.clone()).await.expect("the second session");
    let Err(third) = open(client.clone()).await else {
        panic!("a third session on one connection");
    };
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    assert!(
        third.message().contains("2 open code-mode sessions"),
        "{third:?}"
    );
    // Another connection has its own cap.
    open(front.plain_client().await)
        .await
        .expect("a session on another connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_port_answers_healthz_and_nothing_else() {
    let port = code_mode_conformance::remote::free_port();
    let health = format!("127.0.0.1:{port}");
    let front = Front::start(
        "grpc://127.0.0.1:0",
        &["--health-listen".to_owned(), health.clone()],
        None,
    )
    .await;
    let get = |path: &'static str| {
        let health = health.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&health)
                .await
                .expect("connect");
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            tokio::time::timeout(STEP, stream.read_to_string(&mut response))
                .await
                .expect("an answer in time")
                .expect("read");
            response
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/metrics").await.starts_with("HTTP/1.1 404"));
    // No gRPC there: a client's session fails, while the front's own port serves it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health}"))
        .expect("an endpoint")
        .connect()
        .await;
    if let Ok(channel) = channel {
        assert!(open(CodeModeHostClient::new(channel)).await.is_err());
    }
    open(front.plain_client().await)
        .await
        .expect("a session on the front's port");
}

/// Over TLS, a client that does not trust the front's certificate (another CA's), or one
/// that speaks plaintext, opens nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_front_serves_no_client_that_distrusts_it_or_speaks_plaintext() {
    let certificates = Certificates::new();
    let front = Front::start("grpc://127.0.0.1:0", &certificates.args(false), None).await;
    // The front's own CA: served (no client certificate needed on loopback).
    let client = front
        .tls_client(certificates.client(None))
        .await
        .expect("a client that trusts the front");
    open(client).await.expect("a session over TLS");
    // Another CA: the handshake fails.
    let stranger = Certificates::new();
    assert!(
        front.tls_client(stranger.client(None)).await.is_err(),
        "a client trusting another CA connected"
    );
    // Plaintext to the TLS port: no session.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", front.address()))
        .expect("an endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert!(
            open(CodeModeHostClient::new(channel)).await.is_err(),
            "a plaintext client opened a session on the TLS port"
        );
    }
}
