//! The host's errors: why a runtime could not be made available ([`HostError`]), and why a
//! process did not start ([`SpawnError`]), a handshake failed ([`HandshakeError`]) or a
//! remote runtime could not be used ([`RemoteError`]). Their own module, so that the
//! providers depend on it and not on each other.

use crate::binary::BinaryNotFound;
use code_mode_wire::{FrameError, HandshakeRejection, ReadyMismatch};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why a runtime could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    BinaryNotFound(#[from] BinaryNotFound),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(
        "the code-mode runtime failed {crashes} times within {window:?}; not restarting it (last failure: {last})"
    )]
    CrashLoop {
        crashes: usize,
        window: Duration,
        last: String,
    },
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// Why a remote runtime could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("the TLS settings are not usable: {0}")]
    Tls(String),
    #[error("no endpoint was given")]
    NoEndpoints,
    #[error(
        "mutual TLS needs the runtimes' CA, this host's certificate and its key together: give the three, or none for plaintext to loopback"
    )]
    PartialTls,
    #[error(
        "plaintext is only allowed to loopback addresses, but {endpoint} resolved to {address}; give TLS settings"
    )]
    PlaintextNotLoopback {
        endpoint: String,
        address: SocketAddr,
    },
    #[error("no code-mode runtime could take the session within {timeout:?}: {details}")]
    NoRuntime { timeout: Duration, details: String },
    /// Every runtime failed in a way that dialling again cannot fix (a TLS or protocol
    /// mismatch, a certificate refused): no point waiting out the connect timeout.
    #[error("no code-mode runtime can take the session: {details}")]
    Unusable { details: String },
}

/// Why a runtime process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the private socket directory {path}: {source}")]
    SocketDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    /// The runtime process lived, but did not connect in time.
    #[error("the runtime {binary} did not connect within {timeout:?}")]
    NoConnection { binary: PathBuf, timeout: Duration },
    /// The runtime process ended before it connected; `cause` says how (`exited with
    /// status 1`, `was killed by signal 9 (SIGKILL)`), `killed` whether a signal ended it.
    #[error("the runtime {binary} {cause} before it connected")]
    DiedAtStart {
        binary: PathBuf,
        cause: String,
        killed: bool,
    },
    #[error("accepting the runtime's connection failed: {0}")]
    Accept(std::io::Error),
    #[error("cannot take over the runtime forked at start: {0}")]
    Adopt(std::io::Error),
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the runtime refused the handshake: {0}")]
    Refused(HandshakeRejection),
    #[error(transparent)]
    Mismatch(#[from] ReadyMismatch),
    #[error("the runtime did not answer the handshake within {0:?}")]
    Timeout(Duration),
    #[error("the runtime closed the connection during the handshake ({0})")]
    Closed(String),
    #[error("unexpected first message from the runtime: {0}")]
    Unexpected(String),
    #[error("the handshake failed: {0}")]
    Frame(#[from] FrameError),
}
