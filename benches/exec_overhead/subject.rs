//! What a run measures: sessions of one transport (in process, IPC, TCP with TLS; with
//! isolate reuse on or off), the delegates that answer them, and the RSS readings.

use super::*;

/// Never answers a tool call (until it is cancelled): parks every cell that calls a tool.
pub(crate) struct ParkingTools;

impl CodeModeSessionDelegate for ParkingTools {
    fn invoke_tool(
        &self,
        _: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        Box::pin(async move {
            cancel.cancelled().await;
            Err(ToolError::cancelled())
        })
    }
}

/// Peak RSS of this process, in KiB (`getrusage`).
pub(crate) fn own_peak_rss_kib() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid out-pointer for `getrusage`.
    let result = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if result != 0 {
        return 0;
    }
    // SAFETY: `getrusage` succeeded, so it initialised `usage`.
    let usage = unsafe { usage.assume_init() };
    u64::try_from(usage.ru_maxrss).unwrap_or(0)
}

/// Peak RSS of another process, in KiB (`VmHWM` in `/proc/<pid>/status`).
pub(crate) fn peak_rss_kib_of(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// Current RSS of a process, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub(crate) fn rss_kib_of(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What a child measures: its sessions, the runtime's spawn and handshake time (IPC), and
/// the process whose RSS counts (the runtime process over IPC, this one in process).
pub(crate) struct Subject {
    pub(crate) sessions: Vec<Arc<dyn CodeModeSession>>,
    pub(crate) spawn: Option<Duration>,
    /// The runtime process, over IPC.
    pub(crate) runtime_pid: Option<u32>,
    /// Keeps the runtime process alive.
    pub(crate) _provider: Option<ProcessProvider>,
    /// Over TCP+TLS: the listening runtime and the provider connected to it.
    pub(crate) _remote: Option<(ListeningRuntime, RemoteProvider)>,
}

/// Any provider, opening sessions behind `Arc<dyn CodeModeSession>`.
pub(crate) trait OpenSession {
    fn open_arc(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> Arc<dyn CodeModeSession>;
}

impl<P: CodeModeProvider> OpenSession for P {
    fn open_arc(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> Arc<dyn CodeModeSession> {
        Arc::new(self.open_session(delegate, options))
    }
}

impl Subject {
    pub(crate) async fn open(
        transport: &str,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        sessions: usize,
    ) -> Subject {
        Self::open_with(transport, delegate, sessions, SessionOptions::default()).await
    }

    /// [`Subject::open`] with `options` (reuse turned off for `-fresh` transports).
    pub(crate) async fn open_with(
        transport: &str,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        sessions: usize,
        options: SessionOptions,
    ) -> Subject {
        // `-fresh` transports turn isolate reuse off: every cell gets a new isolate.
        let options = SessionOptions {
            reuse_isolates: !transport.ends_with("-fresh"),
            ..options
        };
        let open_many = |provider: &dyn OpenSession| {
            (0..sessions)
                .map(|_| provider.open_arc(Arc::clone(&delegate), options.clone()))
                .collect::<Vec<_>>()
        };
        match transport {
            "ipc" | "ipc-fresh" => {
                let mut config = ProcessConfig::default();
                if TRACE_RUNTIME_HOPS.load(std::sync::atomic::Ordering::SeqCst) {
                    config.log_filter = "warn,code_mode::hops=trace".to_owned();
                }
                let provider = ProcessProvider::new(config)
                    .expect("code-mode-bin (build it with cargo build --release -p code-mode-bin)");
                let started = Instant::now();
                provider.start().await.expect("start the runtime");
                let spawn = started.elapsed();
                let pid = provider.runtime_pid().await.expect("a runtime pid");
                Subject {
                    sessions: open_many(&provider),
                    spawn: Some(spawn),
                    runtime_pid: Some(pid),
                    _provider: Some(provider),
                    _remote: None,
                }
            }
            "tcp-tls" => {
                let binary = code_mode_host::find_binary(None)
                    .expect("code-mode-bin (build it with cargo build --release -p code-mode-bin)");
                let pki = Pki::default();
                let runtime = ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki));
                let [ca, cert, key] = pki.client_pems("bench host");
                let tls = ClientTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes())
                    .expect("client TLS settings");
                let provider =
                    RemoteProvider::new(RemoteConfig::new(vec![runtime.endpoint()], tls))
                        .expect("a remote provider");
                let started = Instant::now();
                provider.start().await.expect("connect to the runtime");
                let spawn = started.elapsed();
                let pid = runtime.pid();
                Subject {
                    sessions: open_many(&provider),
                    spawn: Some(spawn),
                    runtime_pid: Some(pid),
                    _provider: None,
                    _remote: Some((runtime, provider)),
                }
            }
            _ => {
                code_mode::platform::init_v8();
                let provider = InProcessProvider::new(InProcessConfig::default());
                // `--tracing bare`: the session without the provider's tracing wrapper,
                // the floor the `off` figures are compared with.
                let sessions = if std::env::var(crate::TRACING_ENV).as_deref() == Ok("bare") {
                    (0..sessions)
                        .map(|_| {
                            Arc::new(code_mode::InProcessSession::new(
                                Arc::clone(&delegate),
                                options.clone(),
                            )) as Arc<dyn CodeModeSession>
                        })
                        .collect()
                } else {
                    open_many(&provider)
                };
                Subject {
                    sessions,
                    spawn: None,
                    runtime_pid: None,
                    _provider: None,
                    _remote: None,
                }
            }
        }
        .opened()
        .await
    }

    /// Opens every remote session with a first no-op call: that is not part of an exec.
    pub(crate) async fn opened(self) -> Subject {
        for session in &self.sessions {
            let _ = session
                .wait(code_mode_protocol::WaitRequest::new("0"))
                .await;
        }
        self
    }

    /// Peak RSS in KiB: `getrusage` in process, `VmHWM` of the runtime process over IPC.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        self.runtime_pid
            .map_or_else(own_peak_rss_kib, peak_rss_kib_of)
    }

    /// Current RSS in KiB of the process that runs the cells.
    pub(crate) fn rss_kib(&self) -> u64 {
        rss_kib_of(self.runtime_pid.unwrap_or_else(std::process::id))
    }

    /// Threads of the process that runs the cells.
    pub(crate) fn threads(&self) -> usize {
        let pid = self.runtime_pid.unwrap_or_else(std::process::id);
        std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
    }

    pub(crate) async fn shutdown(&self) {
        for session in &self.sessions {
            session.shutdown().await;
        }
    }
}
