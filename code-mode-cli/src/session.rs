//! Opening a session for a CLI command: over the runtime process (the default) or in
//! process (`--in-process`).

use code_mode::{InProcessOptions, InProcessSession};
use code_mode_host::{HostConfig, IpcProvider};
use code_mode_protocol::{CodeModeSession, CodeModeSessionDelegate, SessionOptions};
use std::sync::Arc;

/// Opens a session; the error is one line for the user.
pub fn open(
    in_process: bool,
    delegate: Arc<dyn CodeModeSessionDelegate>,
    options: SessionOptions,
    runtime_log: &str,
) -> Result<Box<dyn CodeModeSession>, String> {
    if in_process {
        return Ok(Box::new(InProcessSession::new(
            delegate,
            InProcessOptions { session: options },
        )));
    }
    let provider = IpcProvider::new(HostConfig {
        log_filter: runtime_log.to_owned(),
        ..HostConfig::default()
    })
    .map_err(|error| error.to_string())?;
    Ok(Box::new(provider.open_session(delegate, options)))
}
