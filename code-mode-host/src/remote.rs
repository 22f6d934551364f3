//! [`RemoteProvider`]: sessions on runtimes of other machines (`code-mode-bin --listen`),
//! reached over TCP with mutual TLS.
//!
//! The provider is configured with endpoints: a list of `host:port`, or one DNS name that
//! resolves to many addresses (a Kubernetes headless Service). Every resolved address is
//! one runtime. Each new session is placed on a healthy runtime (connected, not draining)
//! with the fewest sessions; names are resolved again every `resolve_interval`, and
//! runtimes that are not connected are dialled again with backoff. A lost runtime fails
//! its sessions' calls in flight with `RuntimeLost`, their next call once with
//! `RuntimeReplaced`, and the call after that places the session on another runtime.
//! Nothing is replayed. Connections of the pool share one generation sequence, so cell
//! ids never collide between runtimes (`1`, `g2:1`, `g3:1`, ...).

use crate::connection::{Connection, Liveness, Peer, Placed, Placement};
use crate::error::HandshakeError;
use crate::error::HostError;
pub use crate::error::RemoteError;
use crate::hosted::RuntimeSource;
use code_mode_internal::sync::lock;
use code_mode_protocol::BoxFuture;
use code_mode_protocol::{CodeModeProvider, CodeModeSessionDelegate, SessionOptions, StoredValues};
use code_mode_wire::FrameError;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The first delay before a runtime that failed is dialled again; doubled per failure.
pub const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// The longest delay between two attempts to reach one runtime.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);

/// The host's TLS settings: the CA that runtimes' certificates chain to, and the host's
/// own certificate and key (runtimes require one).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// From PEM text: the runtimes' CA, the host's certificate chain, its private key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, RemoteError> {
        let config = code_mode_tls::client_config(ca, cert, key)
            .map_err(|error| RemoteError::Tls(error.to_string()))?;
        Ok(Self {
            config,
            server_name: None,
        })
    }

    /// From PEM files (see [`Self::from_pem`]).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, RemoteError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|error| {
                RemoteError::Tls(format!("cannot read {}: {error}", path.display()))
            })
        };
        Self::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    /// The name every runtime's certificate is checked against; by default the host part
    /// of the endpoint it was reached through.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
}

/// How a [`RemoteProvider`] reaches its runtimes.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// `host:port` of each runtime, or of a DNS name that resolves to many.
    pub endpoints: Vec<String>,
    /// `None`: plaintext, allowed only to loopback addresses (runtimes started with
    /// `--insecure-loopback`).
    pub tls: Option<ClientTls>,
    /// How long placing a session may wait for a runtime (dialling, TLS, handshake).
    pub connect_timeout: Duration,
    /// How often names are resolved again.
    pub resolve_interval: Duration,
    /// Pings and the liveness timeout (always on over the network). The host's async
    /// runtime must keep running for its pings to go out.
    pub liveness: Liveness,
    /// Connection generations an earlier process of the same sessions used (what its
    /// [`RemoteProvider::generations_used`] said); 0 for a fresh start. As
    /// `ProcessConfig::generations_before`.
    pub generations_before: u64,
}

impl RemoteConfig {
    /// Endpoints reached with mutual TLS, default timings.
    pub fn new(endpoints: Vec<String>, tls: ClientTls) -> Self {
        Self {
            endpoints,
            tls: Some(tls),
            ..Self::insecure_loopback(Vec::new())
        }
    }

    /// What a command line gives (`--runtime-ca`, `--runtime-cert`, `--runtime-key` or
    /// their like): mutual TLS from the three PEM files, or plaintext to loopback with none.
    /// One or two of them is refused: they go together.
    pub fn from_pem_files(
        endpoints: Vec<String>,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, RemoteError> {
        match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => {
                Ok(Self::new(endpoints, ClientTls::from_files(ca, cert, key)?))
            }
            (None, None, None) => Ok(Self::insecure_loopback(endpoints)),
            _ => Err(RemoteError::PartialTls),
        }
    }

    /// Endpoints on loopback reached in plaintext (tests, a sidecar on the same machine).
    pub fn insecure_loopback(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            connect_timeout: Duration::from_secs(10),
            resolve_interval: Duration::from_secs(10),
            liveness: Liveness::default(),
            generations_before: 0,
        }
    }
}

/// One resolved address: one runtime.
struct Slot {
    address: SocketAddr,
    /// The host part of the endpoint it came from (the TLS server name by default).
    host: String,
    /// Still among the addresses the endpoints resolve to.
    resolved: bool,
    link: Link,
}

/// Where the pool's link to one runtime stands.
enum Link {
    /// Found and never dialled: due at once.
    New,
    /// An attempt is under way (the error of the one before it kept, to report
    /// meanwhile).
    Connecting { last_error: Option<String> },
    /// Connected (the connection may have been lost since the pool last looked).
    Up(Arc<Connection>),
    /// The last attempt failed, or the connection was lost: dialled again at `retry_at`.
    Backoff {
        failures: u32,
        retry_at: Instant,
        error: String,
        /// Dialling again cannot fix it (see [`DialFailure`]).
        hopeless: bool,
    },
}

impl Slot {
    fn live(&self) -> Option<&Arc<Connection>> {
        match &self.link {
            Link::Up(connection) if !connection.is_lost() => Some(connection),
            _ => None,
        }
    }

    /// The error the last attempt (or the lost connection) left, while no connection is up.
    fn last_error(&self) -> Option<&str> {
        match &self.link {
            Link::Connecting { last_error, .. } => last_error.as_deref(),
            Link::Backoff { error, .. } => Some(error),
            Link::New | Link::Up(_) => None,
        }
    }

    /// When this runtime should be looked at again while a placement waits: a connection
    /// up but not healthy at once (it may take sessions again), a backoff when it ends,
    /// an attempt under way never (its end wakes the waiters).
    fn next_look(&self, now: Instant) -> Option<Instant> {
        match &self.link {
            Link::New | Link::Up(_) => Some(now),
            Link::Backoff { retry_at, .. } => Some(*retry_at),
            Link::Connecting { .. } => None,
        }
    }
}

#[derive(Default)]
struct Pool {
    slots: Vec<Slot>,
    resolved_at: Option<Instant>,
    resolve_error: Option<String>,
}

struct RemoteInner {
    config: RemoteConfig,
    pool: Mutex<Pool>,
    /// Woken whenever a connection attempt ends.
    attempts: Notify,
    last_generation: AtomicU64,
    /// Serializes name resolution.
    resolving: tokio::sync::Mutex<()>,
    /// Itself, for the connection attempts it spawns.
    this: std::sync::Weak<RemoteInner>,
}

/// Creates [`RemoteSession`]s spread over runtimes on other machines.
#[derive(Clone)]
pub struct RemoteProvider {
    inner: Arc<RemoteInner>,
}

impl std::fmt::Debug for RemoteProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteProvider")
            .field("endpoints", &self.inner.config.endpoints)
            .finish_non_exhaustive()
    }
}

/// A runtime's state as the pool sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeStatus {
    pub address: SocketAddr,
    pub connected: bool,
    pub draining: bool,
    /// Sessions placed there by this provider.
    pub sessions: usize,
    pub last_error: Option<String>,
}

impl RemoteProvider {
    /// The generation of the latest connection this pool made (the one it was told came
    /// before, if none yet): what a restarted process passes as
    /// [`RemoteConfig::generations_before`].
    pub fn generations_used(&self) -> u64 {
        self.inner.last_generation.load(Ordering::SeqCst)
    }

    /// Checks the configuration; nothing is dialled until [`Self::start`] or a session's
    /// first call.
    pub fn new(config: RemoteConfig) -> Result<Self, HostError> {
        if config.endpoints.is_empty() {
            return Err(RemoteError::NoEndpoints.into());
        }
        let before = config.generations_before;
        Ok(Self {
            inner: Arc::new_cyclic(|this| RemoteInner {
                config,
                pool: Mutex::new(Pool::default()),
                attempts: Notify::new(),
                last_generation: AtomicU64::new(before),
                resolving: tokio::sync::Mutex::new(()),
                this: this.clone(),
            }),
        })
    }

    /// Resolves the endpoints and dials every runtime now, waiting until at least one is
    /// ready (or the connect timeout passed).
    pub async fn start(&self) -> Result<(), HostError> {
        self.inner.place().await.map(drop)
    }

    /// The runtimes known now.
    pub fn runtimes(&self) -> Vec<RuntimeStatus> {
        lock(&self.inner.pool)
            .slots
            .iter()
            .map(|slot| RuntimeStatus {
                address: slot.address,
                connected: slot.live().is_some(),
                draining: slot.live().is_some_and(|c| c.is_draining()),
                sessions: slot.live().map_or(0, |c| c.placed()),
                last_error: slot.last_error().map(str::to_owned),
            })
            .collect()
    }
}

/// The delay before attempt `failures + 1`.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    FIRST_RECONNECT_DELAY
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_RECONNECT_DELAY)
}

/// A session whose cells run on one of a [`RemoteProvider`]'s runtimes, chosen at its first
/// call. Dropping it starts its shutdown in that runtime.
pub type RemoteSession = crate::hosted::RuntimeSession;

impl CodeModeProvider for RemoteProvider {
    type Session = RemoteSession;

    fn open_session_with_values(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> RemoteSession {
        crate::hosted::open(self.source(), delegate, options, stored_values)
    }
}

impl RemoteProvider {
    /// Where its sessions get their runtime: the pool.
    pub(crate) fn source(&self) -> Arc<dyn crate::hosted::RuntimeSource> {
        self.inner.clone()
    }
}

impl RemoteInner {
    /// Resolves the endpoints again when it is due.
    async fn refresh(&self) -> Result<(), RemoteError> {
        let due = |pool: &Pool| {
            pool.resolved_at
                .is_none_or(|at| at.elapsed() >= self.config.resolve_interval)
        };
        if !due(&lock(&self.pool)) {
            return Ok(());
        }
        let _resolving = self.resolving.lock().await;
        if !due(&lock(&self.pool)) {
            return Ok(());
        }
        let mut found = Vec::new();
        let mut errors = Vec::new();
        for endpoint in &self.config.endpoints {
            let host = endpoint
                .rsplit_once(':')
                .map_or(endpoint.as_str(), |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            match tokio::net::lookup_host(endpoint.as_str()).await {
                Ok(addresses) => {
                    for address in addresses {
                        if self.config.tls.is_none() && !address.ip().is_loopback() {
                            return Err(RemoteError::PlaintextNotLoopback {
                                endpoint: endpoint.clone(),
                                address,
                            });
                        }
                        if !found.iter().any(|(known, _)| *known == address) {
                            found.push((address, host.clone()));
                        }
                    }
                }
                Err(error) => errors.push(format!("{endpoint}: {error}")),
            }
        }
        let mut pool = lock(&self.pool);
        pool.resolved_at = Some(Instant::now());
        pool.resolve_error = (!errors.is_empty()).then(|| errors.join("; "));
        if found.is_empty() {
            // Resolution failed outright: keep what was known rather than forget it.
            return Ok(());
        }
        for slot in &mut pool.slots {
            slot.resolved = found.iter().any(|(address, _)| *address == slot.address);
        }
        for (address, host) in found {
            if !pool.slots.iter().any(|slot| slot.address == address) {
                tracing::info!(%address, "code-mode runtime found");
                pool.slots.push(Slot {
                    address,
                    host,
                    resolved: true,
                    link: Link::New,
                });
            }
        }
        // Runtimes no longer resolved leave once nothing runs there.
        pool.slots
            .retain(|slot| slot.resolved || slot.live().is_some_and(|c| c.placed() > 0));
        Ok(())
    }

    /// Starts an attempt for every resolved runtime that is not connected and is due.
    fn dial_due(self: &Arc<Self>, pool: &mut Pool) {
        let now = Instant::now();
        for slot in &mut pool.slots {
            if let Link::Up(connection) = &slot.link
                && connection.is_lost()
            {
                // Lost since the last look: dial again after a backoff.
                slot.link = Link::Backoff {
                    failures: 1,
                    retry_at: now + backoff(1),
                    error: "the connection was lost".to_owned(),
                    hopeless: false,
                };
            }
            if !slot.resolved {
                continue;
            }
            let (failures, last_error) = match &slot.link {
                Link::New => (0, None),
                Link::Backoff {
                    failures,
                    retry_at,
                    error,
                    ..
                } if *retry_at <= now => (*failures, Some(error.clone())),
                Link::Backoff { .. } | Link::Connecting { .. } | Link::Up(_) => continue,
            };
            slot.link = Link::Connecting { last_error };
            let generation = self.last_generation.fetch_add(1, Ordering::SeqCst) + 1;
            let (address, host) = (slot.address, slot.host.clone());
            let inner = Arc::clone(self);
            tokio::spawn(async move {
                let result = inner.dial(address, &host, generation).await;
                {
                    let mut pool = lock(&inner.pool);
                    if let Some(slot) = pool.slots.iter_mut().find(|s| s.address == address) {
                        slot.link = match result {
                            Ok(connection) => Link::Up(connection),
                            Err(failure) => {
                                // Once per runtime as it becomes unreachable; the retries
                                // that follow say the same, so they log at debug.
                                if failures == 0 {
                                    tracing::warn!(%address, "cannot reach a code-mode runtime: {}", failure.text);
                                } else {
                                    tracing::debug!(%address, failures = failures + 1, "still cannot reach a code-mode runtime: {}", failure.text);
                                }
                                Link::Backoff {
                                    failures: failures + 1,
                                    retry_at: Instant::now() + backoff(failures + 1),
                                    error: failure.text,
                                    hopeless: failure.hopeless,
                                }
                            }
                        };
                    }
                }
                inner.attempts.notify_waiters();
            });
        }
    }

    /// Dials one runtime: TCP, TLS, the wire handshake.
    async fn dial(
        &self,
        address: SocketAddr,
        host: &str,
        generation: u64,
    ) -> Result<Arc<Connection>, DialFailure> {
        let timeout = self.config.connect_timeout;
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|error| {
                    let hint = if error.kind() == std::io::ErrorKind::ConnectionRefused {
                        " (is a runtime listening there? start one with code-mode-bin --listen)"
                    } else {
                        ""
                    };
                    DialFailure::retry(format!("cannot connect: {error}{hint}"))
                })?;
            let _ = tcp.set_nodelay(true);
            let ends = (
                Box::new(RemotePeer { address }) as Box<dyn Peer>,
                Box::new(self.this.clone()) as Box<dyn Placement>,
            );
            let liveness = Some(self.config.liveness);
            match &self.config.tls {
                None => Connection::establish(ends, tcp, generation, liveness)
                    .await
                    .map_err(|error| DialFailure::plaintext_handshake(&error)),
                Some(tls) => {
                    let name = tls.server_name.as_deref().unwrap_or(host).to_owned();
                    let name = ServerName::try_from(name).map_err(|error| {
                        DialFailure::hopeless(format!("invalid TLS server name: {error}"))
                    })?;
                    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
                        .connect(name, tcp)
                        .await
                        .map_err(|error| DialFailure::tls_handshake(&error))?;
                    Connection::establish(ends, stream, generation, liveness)
                        .await
                        .map_err(|error| DialFailure::tls_session(&error))
                }
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(DialFailure::retry(format!("no answer within {timeout:?}"))))
    }

    /// The healthy runtime with the fewest sessions, placed on.
    fn pick(pool: &Pool) -> Option<Placed> {
        pool.slots
            .iter()
            .filter(|slot| slot.resolved)
            .filter_map(Slot::live)
            .filter(|connection| connection.is_healthy())
            .min_by_key(|connection| connection.placed())
            .map(|connection| Placed::new(Arc::clone(connection)))
    }

    /// Whether every runtime failed in a way that dialling again cannot fix (none is
    /// connected, being dialled, or failed for a reason that may pass).
    fn hopeless(pool: &Pool) -> bool {
        let mut resolved = pool.slots.iter().filter(|slot| slot.resolved).peekable();
        resolved.peek().is_some()
            && resolved.all(|slot| matches!(slot.link, Link::Backoff { hopeless: true, .. }))
    }

    /// Why no runtime could take a session, runtime by runtime.
    fn details(pool: &Pool) -> String {
        let mut details: Vec<String> = pool
            .slots
            .iter()
            .map(|slot| match (&slot.link, slot.last_error()) {
                (Link::Up(connection), _) if connection.is_draining() => {
                    format!("{}: draining", slot.address)
                }
                (_, Some(error)) => format!("{}: {error}", slot.address),
                _ => format!("{}: not connected yet", slot.address),
            })
            .collect();
        if let Some(error) = &pool.resolve_error {
            details.push(format!("resolving: {error}"));
        }
        if details.is_empty() {
            details.push("the endpoints resolve to no address".to_owned());
        }
        details.join("; ")
    }
}

impl RuntimeSource for RemoteInner {
    fn place(&self) -> BoxFuture<'_, Result<Placed, HostError>> {
        Box::pin(async move {
            // Always there: the provider and its sessions hold the pool in an `Arc`.
            let Some(this) = self.this.upgrade() else {
                return Err(RemoteError::NoEndpoints.into());
            };
            let deadline = Instant::now() + self.config.connect_timeout;
            loop {
                self.refresh().await?;
                let attempts = self.attempts.notified();
                tokio::pin!(attempts);
                attempts.as_mut().enable();
                let next_retry = {
                    let mut pool = lock(&self.pool);
                    this.dial_due(&mut pool);
                    if let Some(placed) = Self::pick(&pool) {
                        return Ok(placed);
                    }
                    if Self::hopeless(&pool) {
                        return Err(RemoteError::Unusable {
                            details: Self::details(&pool),
                        }
                        .into());
                    }
                    if Instant::now() >= deadline {
                        return Err(RemoteError::NoRuntime {
                            timeout: self.config.connect_timeout,
                            details: Self::details(&pool),
                        }
                        .into());
                    }
                    let now = Instant::now();
                    pool.slots
                        .iter()
                        .filter(|slot| slot.resolved)
                        .filter_map(|slot| slot.next_look(now))
                        .min()
                };
                let wake = next_retry.map_or(deadline, |retry| retry.min(deadline));
                tokio::select! {
                    () = attempts => {}
                    () = tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(1))) => {}
                }
            }
        })
    }
}

/// A runtime reached over the network.
struct RemotePeer {
    address: SocketAddr,
}

impl Peer for RemotePeer {
    fn describe(&self) -> String {
        format!("runtime at {}", self.address)
    }

    fn noun(&self) -> String {
        format!("the runtime at {}", self.address)
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn kill(&self) {
        // The connection closes its stream when it stops its tasks; nothing else to stop.
    }

    fn exit_cause(&self, _patience: Duration) -> BoxFuture<'_, String> {
        Box::pin(async { "closed the connection".to_owned() })
    }
}

/// The pool, as one of its runtimes that drains asks it.
impl Placement for std::sync::Weak<RemoteInner> {
    /// Another runtime of the pool is up and takes sessions.
    fn elsewhere(&self, generation: u64) -> bool {
        self.upgrade().is_some_and(|inner| {
            lock(&inner.pool).slots.iter().any(|slot| {
                slot.resolved
                    && slot.live().is_some_and(|connection| {
                        connection.generation != generation && connection.is_healthy()
                    })
            })
        })
    }
}

/// Why dialling a runtime failed, and whether dialling again can help: a runtime that is
/// down or busy may come back, but one that speaks TLS to a plaintext host (or the other
/// way round), refuses this host's certificate, or offers a certificate this host does not
/// trust will do the same on every attempt. The text says what to change.
#[derive(Debug)]
struct DialFailure {
    text: String,
    hopeless: bool,
}

/// What to pass for mutual TLS, in the words of the two ways a host is configured.
const TLS_FLAGS: &str = "--runtime-ca, --runtime-cert and --runtime-key (code-mode), or \
    RemoteConfig::new with a ClientTls (Rust)";

impl DialFailure {
    fn retry(text: String) -> Self {
        Self {
            text,
            hopeless: false,
        }
    }

    fn hopeless(text: String) -> Self {
        Self {
            text,
            hopeless: true,
        }
    }

    /// A plaintext handshake that failed. A runtime that wants TLS answers the hello with
    /// a TLS alert and closes: bytes that are no frame, then the end of the stream.
    fn plaintext_handshake(error: &HandshakeError) -> Self {
        match error {
            HandshakeError::Frame(
                FrameError::Truncated { .. }
                | FrameError::TooLarge { .. }
                | FrameError::Decode(_)
                | FrameError::TrailingBytes { .. },
            ) => Self::hopeless(format!(
                "the runtime answered the handshake with something other than the code-mode \
                 protocol ({error}); it probably wants mutual TLS (it was started with \
                 --tls-cert, --tls-key and --client-ca): give its CA and this host's client \
                 certificate with {TLS_FLAGS}"
            )),
            other => Self::handshake(other),
        }
    }

    /// A TLS handshake that failed: rustls' own verdicts (a certificate not trusted, a
    /// peer that does not speak TLS, an alert) are final; a broken connection is not.
    fn tls_handshake(error: &std::io::Error) -> Self {
        match rustls_error(error) {
            Some(rustls::Error::InvalidCertificate(reason)) => Self::hopeless(format!(
                "TLS handshake failed: the runtime's certificate is not trusted ({reason:?}): \
                 --runtime-ca must be the CA that issued it, and it must name the host dialled"
            )),
            Some(rustls::Error::InvalidMessage(_)) => Self::hopeless(format!(
                "TLS handshake failed ({error}): the runtime does not speak TLS; a runtime \
                     started with --insecure-loopback is reached without {TLS_FLAGS}"
            )),
            Some(rustls::Error::AlertReceived(alert)) => Self::certificate_refused(*alert),
            Some(other) => Self::hopeless(format!("TLS handshake failed: {other}")),
            // A plaintext runtime reads the TLS hello as a frame too large to be one and
            // closes at once; a runtime that is merely busy or going away refuses the TCP
            // connection instead.
            None if error.kind() == std::io::ErrorKind::UnexpectedEof => Self::hopeless(format!(
                "TLS handshake failed: the runtime closed the connection ({error}); it probably \
                 does not speak TLS (started with --insecure-loopback): such a runtime is \
                 reached without {TLS_FLAGS}, on loopback only"
            )),
            None => Self::retry(format!("TLS handshake failed: {error}")),
        }
    }

    /// The wire handshake after TLS. With TLS 1.3 a runtime that refuses the client
    /// certificate says so with an alert here, after the TLS handshake seemed to succeed.
    fn tls_session(error: &HandshakeError) -> Self {
        if let HandshakeError::Frame(FrameError::Io(io)) = error
            && let Some(rustls::Error::AlertReceived(alert)) = rustls_error(io)
        {
            return Self::certificate_refused(*alert);
        }
        Self::handshake(error)
    }

    /// The runtime refused this host with a TLS alert: during the TLS handshake (TLS 1.2)
    /// or on the first read after it (TLS 1.3, where the client's certificate is checked
    /// after the client considers the handshake done).
    fn certificate_refused(alert: rustls::AlertDescription) -> Self {
        Self::hopeless(format!(
            "the runtime refused this host's client certificate (TLS alert {alert:?}): it \
             must be issued by the CA the runtime trusts (its --client-ca)"
        ))
    }

    /// The wire handshake's own failures: a refusal or a mismatch (version skew between
    /// host and runtime) is final; a timeout or a close may pass.
    fn handshake(error: &HandshakeError) -> Self {
        match error {
            HandshakeError::Refused(_)
            | HandshakeError::Mismatch(_)
            | HandshakeError::Unexpected(_) => Self::hopeless(error.to_string()),
            HandshakeError::Timeout(_) | HandshakeError::Closed(_) | HandshakeError::Frame(_) => {
                Self::retry(error.to_string())
            }
        }
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if that is what it is.
fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}
