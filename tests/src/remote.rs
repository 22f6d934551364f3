//! Runtimes listening on TCP, for tests: certificates made at test time with rcgen (a CA,
//! server and client certificates), and `code-mode-bin --listen` processes whose address
//! is read from their log. Used by the conformance suite's TCP+TLS provider and by the
//! host's remote tests.

use crate::Scratch;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A certificate and its private key, in PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority made for one test.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new("code-mode test CA")
    }
}

impl Pki {
    /// A fresh self-signed CA.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("the CA certificate");
        Self { ca }
    }

    /// The CA certificate.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Identity {
        self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> Identity {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// What a host presents, as PEM: this CA, and a new client certificate and its key.
    pub fn client_pems(&self, name: &str) -> [String; 3] {
        let client = self.client(name);
        [self.ca_pem(), client.cert_pem, client.key_pem]
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Identity {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("a leaf certificate");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// How a [`ListeningRuntime`] is started.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Mutual TLS with these: the server identity and the CA clients must chain to.
    /// `None`: `--insecure-loopback`.
    pub tls: Option<(Identity, String)>,
    pub ping_interval_ms: u64,
    pub liveness_timeout_ms: u64,
    pub metrics: bool,
    pub drain_timeout_secs: u64,
    /// The address to listen on; an ephemeral loopback port by default.
    pub listen: String,
}

impl RuntimeOptions {
    /// Mutual TLS with a server certificate of `pki`, which also signs the clients.
    pub fn tls(pki: &Pki) -> Self {
        Self {
            tls: Some((pki.server(), pki.ca_pem())),
            ping_interval_ms: 2000,
            liveness_timeout_ms: 6000,
            metrics: false,
            drain_timeout_secs: 30,
            listen: "127.0.0.1:0".to_owned(),
        }
    }

    /// Plaintext on loopback.
    pub fn insecure() -> Self {
        Self {
            tls: None,
            ..Self::tls(&Pki::default())
        }
    }
}

/// A loopback port free now (bound and released: a runtime started soon after can take it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// The listening runtimes of this process not dropped yet, by pid.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills every listening runtime this process started and has not dropped: for a process
/// about to exit without running destructors (a panic hook that exits), which would leave
/// them running after it.
pub fn kill_listening_runtimes() {
    let pids = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// A `code-mode-bin --listen` process on an ephemeral loopback port; killed on drop.
pub struct ListeningRuntime {
    child: Child,
    pub address: SocketAddr,
    pub metrics: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    _files: Scratch,
}

impl ListeningRuntime {
    /// Starts `binary` and waits (up to 30 s) until it listens.
    pub fn start(binary: &Path, options: &RuntimeOptions) -> Self {
        let files = Scratch::new();
        let mut command = Command::new(binary);
        command
            .args(["--listen", &options.listen, "--log", "info"])
            .args(["--ping-interval-ms", &options.ping_interval_ms.to_string()])
            .args([
                "--liveness-timeout-ms",
                &options.liveness_timeout_ms.to_string(),
            ])
            .args([
                "--drain-timeout-secs",
                &options.drain_timeout_secs.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match &options.tls {
            Some((server, ca)) => {
                command
                    .arg("--tls-cert")
                    .arg(files.write("server.pem", &server.cert_pem))
                    .arg("--tls-key")
                    .arg(files.write("server.key", &server.key_pem))
                    .arg("--client-ca")
                    .arg(files.write("ca.pem", ca));
            }
            None => {
                command.arg("--insecure-loopback");
            }
        }
        if options.metrics {
            command.args(["--metrics", "127.0.0.1:0"]);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (found, addresses) = mpsc::channel();
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged first, so that the log holds a line once its address is known.
                {
                    let mut log = shared.lock().unwrap_or_else(|p| p.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(rest) = line.split("metrics on http://").nth(1) {
                    let address = rest.split('/').next().unwrap_or_default();
                    let _ = found.send(("metrics", address.to_owned()));
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let address = rest.split(' ').next().unwrap_or_default();
                    let _ = found.send(("listen", address.to_owned()));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut address, mut metrics) = (None, None);
        while address.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match addresses.recv_timeout(left) {
                Ok(("listen", found)) => address = found.parse().ok(),
                Ok((_, found)) => metrics = found.parse().ok(),
                Err(_) => {
                    let _ = child.kill();
                    let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    panic!("the runtime did not start listening:\n{log}");
                }
            }
        }
        // The metrics line comes first; take it if it is there.
        while let Ok((kind, found)) = addresses.try_recv() {
            if kind == "metrics" {
                metrics = found.parse().ok();
            }
        }
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child.id());
        Self {
            child,
            address: address.expect("an address"),
            metrics,
            log,
            _files: files,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.address.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the runtime logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|live| *live != pid);
    }

    /// Sends SIGTERM (the runtime drains), with the system's `kill` (this crate has no
    /// unsafe code).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ListeningRuntime {
    fn drop(&mut self) {
        self.kill();
    }
}
