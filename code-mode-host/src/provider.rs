//! [`ProcessProvider`] and [`ProcessSession`]: sessions over a `code-mode-bin` process.
//!
//! One provider owns one runtime process at a time, spawned on first use and shared by all
//! of its sessions. A session opens its remote session lazily, on its first call. When the
//! process dies, calls in flight fail with `SessionError::RuntimeLost` (the cause named),
//! each live cell is reported closed, and each session's next call runs in a fresh process
//! (the next *generation*, whose cell ids read `g2:1`, `g3:1`, ...) with the session's
//! committed stored values, which the host keeps (contract §7). Nothing is replayed.
//! A runtime that drains (SIGTERM) finishes its cells while a fresh one takes new sessions,
//! and sessions move to it at their next exec. A runtime that dies at birth is replaced
//! at once, up to [`BIRTH_TRIES`] times per start; restarts back off, and a crash loop
//! gives up with a clear error.

use crate::binary::find_binary;
use crate::connection::{Connection, Liveness, Placed, Placement};
pub use crate::error::HostError;
use crate::hosted::RuntimeSource;
use crate::process;
use code_mode_protocol::BoxFuture;
use code_mode_protocol::{CodeModeProvider, CodeModeSessionDelegate, SessionOptions, StoredValues};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Crashes within [`CRASH_WINDOW`] after which the provider stops restarting.
pub const MAX_CRASHES: usize = 5;

/// The window in which crashes are counted.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// The first restart delay after a crash; doubled for each further recent crash.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);

/// The longest restart delay.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(2);

/// How many times one start tries a runtime that dies at birth (a signal ends it before
/// it connects, or its socket drops during the handshake) before the start fails.
pub const BIRTH_TRIES: u32 = 4;

/// The pause before the second try of a start; doubled before each further one (20, 40,
/// 80 ms: at most 140 ms of pauses in all).
pub const BIRTH_BACKOFF: Duration = Duration::from_millis(20);

/// How the provider finds and starts its runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// The runtime binary; `None` to search (see [`find_binary`]).
    pub binary: Option<PathBuf>,
    /// Arguments the binary is given before the runtime's own (`--socket`, `--log`): for
    /// an executable that carries the runtime and becomes it when told so (the Codex
    /// front's one file). Empty for `code-mode-bin`.
    pub runtime_args: Vec<std::ffi::OsString>,
    /// The runtime's stderr log filter (`tracing` env-filter syntax).
    pub log_filter: String,
    /// How long a fresh runtime gets to connect.
    pub connect_timeout: Duration,
    /// Pings and a liveness timeout on the connection to the local runtime; off by
    /// default (its death is seen at once as the end of its socket, and a host that drives
    /// its async runtime only now and then would take its own pause for a dead runtime).
    pub liveness: Option<Liveness>,
    /// Runtime losses (crashes, failed starts) within `CRASH_WINDOW` after which the
    /// provider stops starting runtimes and every call fails with the last cause.
    /// Default `MAX_CRASHES`.
    pub max_crashes: usize,
    /// Runtime generations an earlier process of the same sessions used (what its
    /// [`ProcessProvider::generations_used`] said): this provider's first runtime is the
    /// next one, so that the ids of new cells never repeat those of cells that process
    /// gave. 0 for a fresh start.
    pub generations_before: u64,
}

/// Where a runtime finds its connection to the host, as its command line says.
#[derive(Debug, Clone, Copy)]
pub enum RuntimeSocket<'a> {
    /// A spawned runtime dials the host's private socket (`--socket PATH`).
    Path(&'a std::path::Path),
    /// A forked runtime holds its end already (`--socket-fd N`).
    Fd(std::os::fd::RawFd),
}

impl ProcessConfig {
    /// The runtime's arguments after its program name: [`Self::runtime_args`], where its
    /// socket is, and its log filter. The one place they are built, for a spawned runtime
    /// and a forked one alike.
    pub fn runtime_argv(&self, socket: RuntimeSocket<'_>) -> Vec<std::ffi::OsString> {
        let mut argv = self.runtime_args.clone();
        match socket {
            RuntimeSocket::Path(path) => {
                argv.push("--socket".into());
                argv.push(path.as_os_str().to_owned());
            }
            RuntimeSocket::Fd(fd) => {
                argv.push("--socket-fd".into());
                argv.push(fd.to_string().into());
            }
        }
        argv.push("--log".into());
        argv.push(self.log_filter.clone().into());
        argv
    }
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            binary: None,
            runtime_args: Vec::new(),
            log_filter: "warn".to_owned(),
            connect_timeout: Duration::from_secs(10),
            liveness: None,
            max_crashes: MAX_CRASHES,
            generations_before: 0,
        }
    }
}

struct Runtime {
    current: Option<Arc<Connection>>,
    last_generation: u64,
    /// When recent runtimes died or failed to start, oldest first.
    failures: VecDeque<Instant>,
    last_failure: String,
}

struct ProviderInner {
    /// Where the runtime binary is: found once when the provider was made ([`ProcessProvider::new`]),
    /// or looked for at every start ([`ProcessProvider::deferred`]), the latest found kept.
    binary: std::sync::Mutex<Option<PathBuf>>,
    /// Whether the binary is looked for at every start.
    deferred: bool,
    config: ProcessConfig,
    /// Serializes spawning; holds the current runtime.
    runtime: tokio::sync::Mutex<Runtime>,
    /// The generation of the latest runtime started (the earlier process's last before
    /// the first).
    generations: std::sync::atomic::AtomicU64,
    /// A runtime forked at the process's start ([`ProcessProvider::adopt`]): the next
    /// start takes it instead of spawning one.
    prelaunched: std::sync::Mutex<Option<crate::Prelaunched>>,
}

/// Creates [`ProcessSession`]s that share one runtime process.
#[derive(Clone)]
pub struct ProcessProvider {
    inner: Arc<ProviderInner>,
}

impl std::fmt::Debug for ProcessProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessProvider")
            .field("binary", &self.binary())
            .field("deferred", &self.inner.deferred)
            .finish_non_exhaustive()
    }
}

impl ProcessProvider {
    /// Finds the runtime binary now, so that a misconfiguration surfaces at once; the
    /// process itself starts on first use.
    pub fn new(config: ProcessConfig) -> Result<Self, HostError> {
        let binary = find_binary(config.binary.as_deref())?;
        Ok(Self::with(config, Some(binary), false))
    }

    /// A provider that looks for its runtime binary at every start of a runtime instead of
    /// once: it is made whether or not the binary is there, a call made while it is missing
    /// fails with [`HostError::BinaryNotFound`] (every place searched named), and a binary
    /// put in place later is found by the next call, with no new provider. A binary that is
    /// missing counts as no crash, so finding it later is never held back by the restart
    /// backoff. For a long-running front that must come up whatever the install looks like.
    pub fn deferred(config: ProcessConfig) -> Self {
        Self::with(config, None, true)
    }

    fn with(config: ProcessConfig, binary: Option<PathBuf>, deferred: bool) -> Self {
        let before = config.generations_before;
        Self {
            inner: Arc::new(ProviderInner {
                binary: std::sync::Mutex::new(binary),
                deferred,
                config,
                generations: std::sync::atomic::AtomicU64::new(before),
                prelaunched: std::sync::Mutex::new(None),
                runtime: tokio::sync::Mutex::new(Runtime {
                    current: None,
                    last_generation: before,
                    failures: VecDeque::new(),
                    last_failure: String::new(),
                }),
            }),
        }
    }

    /// The generation of the latest runtime this provider started (the one it was told
    /// came before, if none yet): what a restarted process passes as
    /// [`ProcessConfig::generations_before`].
    pub fn generations_used(&self) -> u64 {
        self.inner
            .generations
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The runtime binary in use: the one found (for a deferred provider, at its latest
    /// start; `None` before any was found).
    pub fn binary(&self) -> Option<PathBuf> {
        code_mode_internal::sync::lock(&self.inner.binary).clone()
    }

    /// Takes `runtime`, forked from this process at its start ([`crate::fork_runtime`]),
    /// as the runtime its next start uses instead of spawning one. The handshake is then
    /// that start's, as for a spawned runtime; a runtime that replaces it is spawned.
    pub fn adopt(&self, runtime: crate::Prelaunched) {
        *code_mode_internal::sync::lock(&self.inner.prelaunched) = Some(runtime);
    }

    /// Starts the runtime process now (spawn and handshake) unless one is running, so that
    /// the first call does not pay for it.
    pub async fn start(&self) -> Result<(), HostError> {
        self.inner.connection().await.map(drop)
    }

    /// Whether a call now could find a runtime, without waiting for one to start: `Err`
    /// when the latest start failed (the runtime's binary missing, a crash at start) and
    /// none runs, or when a deferred provider finds no binary now. A start under way, a
    /// runtime running, or none tried yet is `Ok`: the call itself waits for its runtime.
    /// For a front that refuses a session early when no runtime can run it, without
    /// making a session that could wait on the start it.
    pub fn check(&self) -> Result<(), RuntimeUnavailable> {
        if let Ok(runtime) = self.inner.runtime.try_lock() {
            let running = runtime.current.as_ref().is_some_and(|c| !c.is_lost());
            if !running && !runtime.last_failure.is_empty() {
                return Err(RuntimeUnavailable::LastStartFailed);
            }
        }
        if self.inner.deferred {
            find_binary(self.inner.config.binary.as_deref())
                .map_err(RuntimeUnavailable::BinaryNotFound)?;
        }
        Ok(())
    }

    /// The pid of the current runtime process, if one is running.
    pub async fn runtime_pid(&self) -> Option<u32> {
        let runtime = self.inner.runtime.lock().await;
        runtime
            .current
            .as_ref()
            .filter(|connection| !connection.is_lost())
            .and_then(|connection| connection.pid())
    }
}

impl ProcessProvider {
    /// Whether the current runtime announced that it drains (it got SIGTERM): the next
    /// session, and every idle session at its next exec, goes to a fresh process. Still
    /// `true` once the host left it to move its running cells to a fresh process, until
    /// that process starts.
    pub async fn runtime_draining(&self) -> bool {
        let runtime = self.inner.runtime.lock().await;
        runtime
            .current
            .as_ref()
            .is_some_and(|connection| connection.is_draining())
    }
}

/// Why [`ProcessProvider::check`] expects no runtime now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeUnavailable {
    /// The latest start failed and none runs: starting again may tell more.
    LastStartFailed,
    /// The runtime's binary is not where it is looked for.
    BinaryNotFound(crate::BinaryNotFound),
}

/// A session whose cells run in the [`ProcessProvider`]'s runtime process, which starts at
/// its first call. Dropping it starts its shutdown in the runtime.
pub type ProcessSession = crate::hosted::RuntimeSession;

impl CodeModeProvider for ProcessProvider {
    type Session = ProcessSession;

    fn open_session_with_values(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> ProcessSession {
        crate::hosted::open(self.source(), delegate, options, stored_values)
    }
}

impl ProcessProvider {
    /// Where its sessions get their runtime: the supervised process.
    pub(crate) fn source(&self) -> Arc<dyn crate::hosted::RuntimeSource> {
        self.inner.clone()
    }
}

impl ProviderInner {
    /// The live runtime, starting one if needed.
    async fn connection(&self) -> Result<Arc<Connection>, HostError> {
        let mut runtime = self.runtime.lock().await;
        if let Some(current) = &runtime.current {
            if current.is_healthy() {
                return Ok(Arc::clone(current));
            }
            if current.is_lost() {
                runtime.failures.push_back(Instant::now());
                runtime.last_failure = "the previous runtime was lost".to_owned();
            } else {
                // Draining (it got SIGTERM): it finishes its cells for the sessions still
                // on it, and a fresh one takes new sessions and those that move.
                tracing::info!(peer = %current.describe(), "the code-mode runtime drains; starting a fresh one");
            }
            runtime.current = None;
        }
        let now = Instant::now();
        while runtime
            .failures
            .front()
            .is_some_and(|failed| now.duration_since(*failed) > CRASH_WINDOW)
        {
            runtime.failures.pop_front();
        }
        let recent = runtime.failures.len();
        if recent >= self.config.max_crashes {
            return Err(HostError::CrashLoop {
                crashes: recent,
                window: CRASH_WINDOW,
                last: runtime.last_failure.clone(),
            });
        }
        if recent > 0 {
            let exponent = u32::try_from(recent - 1).unwrap_or(u32::MAX).min(16);
            let delay = FIRST_RESTART_DELAY
                .saturating_mul(2u32.saturating_pow(exponent))
                .min(MAX_RESTART_DELAY);
            tracing::warn!(
                ?delay,
                recent,
                "restarting the code-mode runtime after a failure"
            );
            tokio::time::sleep(delay).await;
        }
        let generation = runtime.last_generation + 1;
        match self.start_retrying(generation).await {
            Ok(connection) => {
                runtime.last_generation = generation;
                self.generations
                    .store(generation, std::sync::atomic::Ordering::SeqCst);
                runtime.current = Some(Arc::clone(&connection));
                // `check` reads a failure as the latest start's; this one succeeded.
                runtime.last_failure.clear();
                Ok(connection)
            }
            // Nothing was started: no crash to back off from.
            Err(error @ HostError::BinaryNotFound(_)) => Err(error),
            Err(error) => {
                runtime.failures.push_back(Instant::now());
                runtime.last_failure = error.to_string();
                Err(error)
            }
        }
    }

    /// The binary to start: the one found when the provider was made, or for a deferred
    /// provider, looked for now.
    fn binary(&self) -> Result<PathBuf, HostError> {
        let mut known = code_mode_internal::sync::lock(&self.binary);
        match (&*known, self.deferred) {
            (Some(binary), false) => Ok(binary.clone()),
            _ => {
                let found = find_binary(self.config.binary.as_deref())?;
                *known = Some(found.clone());
                Ok(found)
            }
        }
    }

    /// [`Self::start`], again while the runtime dies at birth: a process killed in its
    /// first milliseconds (the OOM killer, an operator's `kill`, a socket it lost) costs
    /// the call a fresh start, not an error. At most [`BIRTH_TRIES`] starts, paused
    /// [`BIRTH_BACKOFF`] and then twice as long each time; a binary that cannot start at
    /// all fails with the last try's cause (how it exited, or that it timed out).
    async fn start_retrying(&self, generation: u64) -> Result<Arc<Connection>, HostError> {
        let mut pause = BIRTH_BACKOFF;
        let mut tries = 1;
        loop {
            match self.start(generation).await {
                Err(error) if tries < BIRTH_TRIES && died_at_birth(&error) => {
                    tracing::warn!(
                        tries,
                        ?pause,
                        "the code-mode runtime died as it started ({error}); starting another"
                    );
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    async fn start(&self, generation: u64) -> Result<Arc<Connection>, HostError> {
        let prelaunched = code_mode_internal::sync::lock(&self.prelaunched).take();
        let (process, stream) = match prelaunched {
            Some(runtime) => crate::prelaunch::adopt(runtime)?,
            None => {
                let binary = self.binary()?;
                let argv = |socket: &std::path::Path| {
                    self.config.runtime_argv(RuntimeSocket::Path(socket))
                };
                process::spawn(&binary, argv, self.config.connect_timeout).await?
            }
        };
        let liveness = self.config.liveness;
        let ends = (Box::new(process) as _, Box::new(FreshProcess) as _);
        Ok(Connection::establish(ends, stream, generation, liveness).await?)
    }
}

/// Whether a start failed because its runtime died at birth: a signal ended it before it
/// connected (the OOM killer, an operator's `kill`), its connection broke before or during
/// the handshake, or the runtime forked at start was gone. Not a runtime that exited with
/// a status (a flag it refuses, a library it lacks: it would exit again), a binary that is
/// missing, one that stayed silent past the timeout, or one that refused the handshake:
/// trying again changes none of those, and the crash-loop count deals with them.
fn died_at_birth(error: &HostError) -> bool {
    use crate::error::{HandshakeError, SpawnError};
    matches!(
        error,
        HostError::Spawn(
            SpawnError::DiedAtStart { killed: true, .. }
                | SpawnError::Accept(_)
                | SpawnError::Adopt(_)
        ) | HostError::Handshake(HandshakeError::Closed(_) | HandshakeError::Frame(_))
    )
}

/// Where the local runtime's cells go when it drains: the provider starts a fresh runtime
/// process for the next call.
struct FreshProcess;

impl Placement for FreshProcess {
    fn elsewhere(&self, _generation: u64) -> bool {
        true
    }
}

impl RuntimeSource for ProviderInner {
    fn place(&self) -> BoxFuture<'_, Result<Placed, HostError>> {
        Box::pin(async move { self.connection().await.map(Placed::new) })
    }

    /// A lost local runtime is a process that ended; the next one is spawned at once.
    fn reruns_unadmitted(&self) -> bool {
        true
    }
}
