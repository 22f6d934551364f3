//! Opening sessions for a CLI command: over the runtime process (the default) or in
//! process (`--in-process`).

use code_mode::{InProcessOptions, InProcessSession};
use code_mode_host::{HostConfig, IpcProvider};
use code_mode_protocol::{CodeModeSession, CodeModeSessionDelegate, SessionOptions};
use std::sync::Arc;

/// Where a command's sessions run; one runtime process serves all of a command's sessions.
pub enum Sessions {
    InProcess,
    Ipc(IpcProvider),
}

impl Sessions {
    /// The provider for `--in-process` or the runtime process; the error is one line for
    /// the user.
    pub fn new(in_process: bool, runtime_log: &str) -> Result<Self, String> {
        if in_process {
            return Ok(Self::InProcess);
        }
        IpcProvider::new(HostConfig {
            log_filter: runtime_log.to_owned(),
            ..HostConfig::default()
        })
        .map(Self::Ipc)
        .map_err(|error| error.to_string())
    }

    /// Opens a session.
    pub fn open(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> Box<dyn CodeModeSession> {
        match self {
            Self::InProcess => Box::new(InProcessSession::new(
                delegate,
                InProcessOptions { session: options },
            )),
            Self::Ipc(provider) => Box::new(provider.open_session(delegate, options)),
        }
    }
}

/// Opens one session; the error is one line for the user.
pub fn open(
    in_process: bool,
    delegate: Arc<dyn CodeModeSessionDelegate>,
    options: SessionOptions,
    runtime_log: &str,
) -> Result<Box<dyn CodeModeSession>, String> {
    Ok(Sessions::new(in_process, runtime_log)?.open(delegate, options))
}
