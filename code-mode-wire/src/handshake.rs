//! The handshake: the client names the protocol versions it speaks and the capabilities it
//! requires or would use; the server picks the highest common version or refuses with a
//! reason. Version skew between host and binary is a real failure, so every refusal says
//! exactly what did not match.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this build speaks best. 2: every session error has a wire kind
/// of its own (version 1 repeated the runtime-failure prefix and had unused kinds).
/// 3: both sides ping each other (liveness), and a runtime can be draining.
/// 4: audio items, deferred tools, preempt and interrupt, admission and the exec call id.
/// 5: responses carry the provider's time, sessions open with stored values, and the
/// runtime reports every commit (`Committed`) so the host keeps the values.
/// 6: sessions choose their surface (the contract's, or Codex's).
/// 7: a failed result carries its kind (`FailureKind`) beside its text, and a call in
/// flight when a draining runtime's timeout passes is answered with the runtime-lost error.
/// 8: the runtime holds each answer to a cell observation until the host says it was taken
/// or given back (`Taken`, `GivenBack`).
/// 9: the wire has payload types of its own (`payload`); a failed result carries one
/// optional failure (kind and text) instead of a text, a kind and a missing-cell flag
/// that had to agree.
/// 10: sessions choose when their waiting cells hibernate, and a cell can fail because
/// its rebuild from its journal diverged.
/// 11: a request carries the trace context it runs under, and the runtime hands the spans
/// of that work back (`Spans`).
/// 12: a cell that finished with nobody observing it offers its final answer to the host
/// (`Offer`, `OfferTaken`, `OfferGivenBack`), which answers the next `wait` itself; a
/// `Resume` says whether the cell's writes were committed already.
/// 13: trace and span ids (a request's trace context, a handed-back span's) cross as one
/// byte string each, not as a tuple of bytes.
/// 14: ids, JSON payloads and tool errors cross as the wire's own types: a call id as its
/// number, not its `tool-N` text.
pub const PROTOCOL_VERSION: u32 = 14;

/// Every protocol version this build can speak, oldest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[PROTOCOL_VERSION];

/// Capabilities of this build's runtime: sessions with observations, the pending frontier,
/// and notifications.
pub const CAPABILITIES: &[&str] = &["sessions", "pending-frontier", "notifications"];

/// The capability a runtime adds when it serves hosts over the network (`--listen`):
/// many connections, each with its own sessions, behind TLS.
pub const REMOTE_CAPABILITY: &str = "remote";

/// The client's first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Protocol versions the client speaks.
    pub versions: Vec<u32>,
    /// Capabilities the client cannot work without.
    pub required_capabilities: Vec<String>,
    /// Capabilities the client uses when present.
    pub optional_capabilities: Vec<String>,
    /// Free text for logs, e.g. `code-mode-host 0.1.0`.
    pub client: String,
}

impl ClientHello {
    /// The hello of a client built from this crate.
    pub fn current(client: impl Into<String>) -> Self {
        Self {
            versions: SUPPORTED_VERSIONS.to_vec(),
            required_capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
            optional_capabilities: Vec::new(),
            client: client.into(),
        }
    }
}

/// Why a client cannot use the server's [`Ready`]: the client's half of the rules
/// [`ServerOffer::negotiate`] applies on the server's side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadyMismatch {
    #[error(
        "the runtime chose protocol version {chosen}, which this host does not speak (it speaks {ours:?})"
    )]
    UnsupportedVersion { chosen: u32, ours: Vec<u32> },
    #[error("the runtime lacks the required capability `{0}`")]
    MissingCapability(String),
}

impl ClientHello {
    /// Checks the server's answer against this hello: the chosen version must be one the
    /// client offered, and every required capability must be there.
    pub fn accept(&self, ready: &Ready) -> Result<(), ReadyMismatch> {
        if !self.versions.contains(&ready.version) {
            return Err(ReadyMismatch::UnsupportedVersion {
                chosen: ready.version,
                ours: self.versions.clone(),
            });
        }
        match missing_capability(&self.required_capabilities, &ready.capabilities) {
            Some(missing) => Err(ReadyMismatch::MissingCapability(missing.clone())),
            None => Ok(()),
        }
    }
}

/// The first required capability the other side lacks.
fn missing_capability<'r>(required: &'r [String], offered: &[String]) -> Option<&'r String> {
    required
        .iter()
        .find(|capability| !offered.contains(capability))
}

/// The server accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub version: u32,
    /// Every capability the server has (required ones included).
    pub capabilities: Vec<String>,
    /// Free text for logs, e.g. `code-mode-bin 0.1.0`.
    pub server: String,
    /// The sandbox level the runtime reached, in words (e.g. `no_new_privs, ...`).
    pub sandbox: String,
}

/// Why the server refused a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HandshakeRejection {
    #[error(
        "no common protocol version: the client speaks {client:?}, the runtime speaks {server:?}"
    )]
    NoCommonVersion { client: Vec<u32>, server: Vec<u32> },
    #[error("the runtime lacks the required capability `{0}`")]
    MissingCapability(String),
    #[error("invalid hello: {0}")]
    InvalidHello(String),
}

/// What a server offers in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOffer {
    pub versions: Vec<u32>,
    pub capabilities: Vec<String>,
    pub server: String,
    pub sandbox: String,
}

impl ServerOffer {
    /// The offer of a server built from this crate.
    pub fn current(server: impl Into<String>, sandbox: impl Into<String>) -> Self {
        Self {
            versions: SUPPORTED_VERSIONS.to_vec(),
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
            server: server.into(),
            sandbox: sandbox.into(),
        }
    }

    /// The same offer with one more capability (e.g. [`REMOTE_CAPABILITY`]).
    pub fn with_capability(mut self, capability: &str) -> Self {
        self.capabilities.push(capability.to_owned());
        self
    }

    /// Answers a hello: the highest common version, or the reason there is none.
    pub fn negotiate(&self, hello: &ClientHello) -> Result<Ready, HandshakeRejection> {
        if hello.versions.is_empty() {
            return Err(HandshakeRejection::InvalidHello(
                "it lists no protocol version".to_owned(),
            ));
        }
        let version = hello
            .versions
            .iter()
            .filter(|version| self.versions.contains(version))
            .max()
            .copied()
            .ok_or_else(|| HandshakeRejection::NoCommonVersion {
                client: hello.versions.clone(),
                server: self.versions.clone(),
            })?;
        if let Some(missing) = missing_capability(&hello.required_capabilities, &self.capabilities)
        {
            return Err(HandshakeRejection::MissingCapability(missing.clone()));
        }
        Ok(Ready {
            version,
            capabilities: self.capabilities.clone(),
            server: self.server.clone(),
            sandbox: self.sandbox.clone(),
        })
    }
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (protocol {}; sandbox: {})",
            self.server, self.version, self.sandbox
        )
    }
}
