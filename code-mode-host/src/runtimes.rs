//! [`Runtimes`]: the one provider type an agent core, the CLI or the Codex front holds when
//! its cells may run in a local runtime process or on a pool of remote runtimes, chosen at
//! start. Both hand out the same [`RuntimeSession`], so nothing past the choice matches on
//! it.

use crate::error::HostError;
use crate::hosted::RuntimeSession;
use crate::provider::{ProcessProvider, RuntimeUnavailable};
use crate::remote::RemoteProvider;
use code_mode_protocol::{CodeModeProvider, CodeModeSessionDelegate, SessionOptions, StoredValues};
use std::sync::Arc;

/// Where a host's cells run.
#[derive(Debug, Clone)]
pub enum Runtimes {
    /// One local runtime process, started and supervised here.
    Local(ProcessProvider),
    /// A pool of runtimes listening elsewhere (`code-mode-bin --listen`), with its
    /// placement, backoff and drain.
    Remote(RemoteProvider),
}

impl CodeModeProvider for Runtimes {
    type Session = RuntimeSession;

    fn open_session_with_values(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> RuntimeSession {
        let source = match self {
            Self::Local(provider) => provider.source(),
            Self::Remote(provider) => provider.source(),
        };
        crate::hosted::open(source, delegate, options, stored_values)
    }
}

impl Runtimes {
    /// The runtime generation the provider reached (what a process that goes on with its
    /// sessions passes as `generations_before`).
    pub fn generations_used(&self) -> u64 {
        match self {
            Self::Local(provider) => provider.generations_used(),
            Self::Remote(provider) => provider.generations_used(),
        }
    }

    /// A runtime runs, or one starts (or is reached) now.
    pub async fn start(&self) -> Result<(), HostError> {
        match self {
            Self::Local(provider) => provider.start().await,
            Self::Remote(provider) => provider.start().await,
        }
    }

    /// Whether a session opened now can run cells, without waiting for a runtime that is
    /// starting: a local runtime whose latest start failed is started again now (the
    /// install may have been fixed), one whose binary is missing is refused at once, one
    /// starting or running is taken as able (the session's first call waits for it); a
    /// remote pool is reached now.
    pub async fn able(&self) -> Result<(), HostError> {
        match self {
            Self::Local(provider) => match provider.check() {
                Ok(()) => Ok(()),
                Err(RuntimeUnavailable::BinaryNotFound(missing)) => {
                    Err(HostError::BinaryNotFound(missing))
                }
                Err(RuntimeUnavailable::LastStartFailed) => provider.start().await,
            },
            Self::Remote(provider) => provider.start().await,
        }
    }

    /// The local runtime process's pid, while it runs (`None` for a remote pool).
    pub async fn runtime_pid(&self) -> Option<u32> {
        match self {
            Self::Local(provider) => provider.runtime_pid().await,
            Self::Remote(_) => None,
        }
    }
}
