//! Spawning and supervising one `code-mode-bin` process.
//!
//! The socket lives in a fresh 0700 directory that only this user can enter, and is
//! removed as soon as the runtime connected. The child gets a cleared environment, no
//! stdin or stdout, its stderr forwarded to `tracing`, kill-on-drop, and a parent-death
//! signal (which the runtime asks for itself, first thing: the child is started with
//! `posix_spawn`, cheaper than a fork of this process). The child is started from a
//! dedicated thread that lives until the child has been reaped: Linux delivers the
//! parent-death signal when the *thread* that started it exits, so starting it from a
//! short-lived pool thread could kill a healthy runtime.

use crate::error::SpawnError;
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How long a killed process gets to be reaped.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// A running runtime process.
pub(crate) struct RuntimeProcess {
    pid: u32,
    /// `Some(cause)` once the process has exited, e.g. `was killed by signal 9 (SIGKILL)`.
    exit: watch::Receiver<Option<String>>,
    kill: CancellationToken,
}

impl RuntimeProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the process (idempotent).
    pub(crate) fn kill(&self) {
        self.kill.cancel();
    }

    /// Waits up to `patience` for the process to exit and describes how it did; kills it
    /// if it is still running then.
    pub(crate) async fn exit_cause(&self, patience: Duration) -> String {
        if let Some(cause) = self.wait_exit(patience).await {
            return cause;
        }
        self.kill();
        match self.wait_exit(KILL_PATIENCE).await {
            Some(cause) => format!("stopped answering and was killed; it {cause}"),
            None => "stopped answering and could not be killed".to_owned(),
        }
    }

    /// How the process exited, if it does within `patience`.
    async fn wait_exit(&self, patience: Duration) -> Option<String> {
        let mut exit = self.exit.clone();
        let cause = async move {
            exit.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|cause| cause.clone())
        };
        tokio::time::timeout(patience, cause).await.ok().flatten()
    }
}

impl crate::connection::Peer for RuntimeProcess {
    fn describe(&self) -> String {
        format!("pid {}", RuntimeProcess::pid(self))
    }

    fn noun(&self) -> String {
        "the runtime process".to_owned()
    }

    fn pid(&self) -> Option<u32> {
        Some(RuntimeProcess::pid(self))
    }

    fn kill(&self) {
        RuntimeProcess::kill(self);
    }

    fn exit_cause(&self, patience: Duration) -> code_mode_protocol::BoxFuture<'_, String> {
        Box::pin(RuntimeProcess::exit_cause(self, patience))
    }
}

impl Drop for RuntimeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a process ended, in words.
pub(crate) fn describe_exit(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("{KILLED_BY_SIGNAL} {signal}{}", signal_name(signal)),
            (None, None) => format!("ended ({status})"),
        },
        Err(error) => format!("could not be waited for ({error})"),
    }
}

/// How [`describe_exit`] begins for a process a signal ended.
const KILLED_BY_SIGNAL: &str = "was killed by signal";

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGSYS => " (SIGSYS)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGILL => " (SIGILL)",
        libc::SIGINT => " (SIGINT)",
        _ => "",
    }
}

/// A directory only this user can enter, removed on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> Result<Self, SpawnError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "code-mode-{}-{nanos:x}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| SpawnError::SocketDir {
                path: path.clone(),
                source,
            })?;
        Ok(Self(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the runtime and waits for it to connect. The handshake is the caller's.
/// `argv`: the runtime's arguments, given the path of the socket it dials.
pub(crate) async fn spawn(
    binary: &Path,
    argv: impl FnOnce(&Path) -> Vec<std::ffi::OsString>,
    connect_timeout: Duration,
) -> Result<(RuntimeProcess, Stream), SpawnError> {
    let dir = PrivateDir::create()?;
    let socket = dir.0.join("runtime.sock");
    let name = socket
        .clone()
        .to_fs_name::<GenericFilePath>()
        .map_err(|source| SpawnError::Listen {
            path: socket.clone(),
            source,
        })?;
    let listener = ListenerOptions::new()
        .name(name)
        .create_tokio()
        .map_err(|source| SpawnError::Listen {
            path: socket.clone(),
            source,
        })?;

    let mut command = tokio::process::Command::new(binary);
    command
        .args(argv(&socket))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // A process group of its own: a Ctrl-C typed at the agent core's terminal goes to
        // the terminal's foreground group, and must not kill the runtime under the
        // sessions (the agent core decides what Ctrl-C means, e.g. `interrupt`). It still
        // dies with its host (it asks for that itself) and ends at the end of its socket.
        .process_group(0);
    // No `pre_exec`: without one the child is started with `posix_spawn`, which does not
    // copy this process's page tables as a fork does (a cold start waits for it). The
    // runtime asks to die with the thread that started it itself, first thing
    // (`code_mode_bin::run`); one whose host died before that finds no socket to connect to.
    let (child, reaped) =
        spawn_from_dedicated_thread(command).map_err(|source| SpawnError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    let mut child = child
        .await
        .map_err(|_| SpawnError::Spawn {
            binary: binary.to_path_buf(),
            source: std::io::Error::other("the spawning thread stopped"),
        })?
        .map_err(|source| SpawnError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_stderr(stderr, pid));
    }
    let process = supervise(
        pid,
        SpawnedChild {
            child,
            _reaped: reaped,
        },
    );

    // A runtime that dies before it connects is noticed when it dies, not at the timeout.
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(connect_timeout, listener.accept()) => accepted,
        Some(cause) = process.wait_exit(connect_timeout) => {
            return Err(SpawnError::DiedAtStart {
                binary: binary.to_path_buf(),
                killed: cause.starts_with(KILLED_BY_SIGNAL),
                cause,
            });
        }
    };
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(SpawnError::Accept(error)),
        Err(_) => {
            return Err(SpawnError::NoConnection {
                binary: binary.to_path_buf(),
                timeout: connect_timeout,
            });
        }
    };
    // Connected: nobody else needs to find the socket any more.
    drop(listener);
    drop(dir);
    Ok((process, stream))
}

type SpawnResult = std::io::Result<tokio::process::Child>;

/// Starts the child from a thread that stays alive until `reaped` is dropped.
fn spawn_from_dedicated_thread(
    mut command: tokio::process::Command,
) -> std::io::Result<(oneshot::Receiver<SpawnResult>, std::sync::mpsc::Sender<()>)> {
    let runtime = tokio::runtime::Handle::current();
    let (child_tx, child_rx) = oneshot::channel();
    let (reaped, wait_reaped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("code-mode-host-spawner".to_owned())
        .stack_size(256 * 1024)
        .spawn(move || {
            let _entered = runtime.enter();
            let _ = child_tx.send(command.spawn());
            // Returns once the supervisor dropped its sender: the child has been reaped.
            let _ = wait_reaped.recv();
        })?;
    Ok((child_rx, reaped))
}

/// A child process as the supervisor sees it: waited for, killed.
pub(crate) trait Child: Send + 'static {
    /// Waits until the child has exited and been reaped.
    fn wait(&mut self) -> impl std::future::Future<Output = std::io::Result<ExitStatus>> + Send;
    /// Sends the child SIGKILL, unless it is already reaped.
    fn start_kill(&mut self);
}

/// A child of `tokio::process`, started from its spawner thread.
struct SpawnedChild {
    child: tokio::process::Child,
    /// Dropped once the child is reaped: the spawner thread may end then.
    _reaped: std::sync::mpsc::Sender<()>,
}

impl Child for SpawnedChild {
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    fn start_kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Watches `child` until it exits: its exit, in words, goes to the process's `exit`, and
/// [`RuntimeProcess::kill`] (or dropping it) kills it.
pub(crate) fn supervise(pid: u32, mut child: impl Child) -> RuntimeProcess {
    let (exit_tx, exit) = watch::channel(None);
    let kill = CancellationToken::new();
    let supervisor_kill = kill.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            () = supervisor_kill.cancelled() => {
                child.start_kill();
                child.wait().await
            }
        };
        let cause = describe_exit(status);
        tracing::debug!(pid, "code-mode-bin {cause}");
        let _ = exit_tx.send(Some(cause));
        drop(child);
    });
    RuntimeProcess { pid, exit, kill }
}

/// Forwards the runtime's stderr lines to `tracing`.
pub(crate) async fn forward_stderr(stderr: impl tokio::io::AsyncRead + Unpin, pid: u32) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "code_mode_bin", pid, "{line}");
    }
}
