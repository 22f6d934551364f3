//! The host's errors: why a runtime could not be made available ([`HostError`]), and the
//! remote provider's own reasons ([`RemoteError`]). Their own module, so that the
//! providers depend on it and not on each other.

use crate::binary::BinaryNotFound;
use crate::connection::HandshakeError;
use crate::process::SpawnError;
use std::net::SocketAddr;
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
