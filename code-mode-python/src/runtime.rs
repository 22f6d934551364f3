//! The process-wide parts: one tokio runtime for every session, and one provider per
//! runtime executable, so that all of a Python process's sessions share one sandboxed
//! runtime process (started at the first call, restarted after a crash).

use code_mode_host::{ProcessConfig, ProcessProvider, Runtimes};
use code_mode_protocol::sync::lock;
use pyo3::PyResult;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The runtime every session's work runs on.
pub(crate) fn tokio() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("code-mode")
            .enable_all()
            .build()
            .expect("the tokio runtime of code_mode starts")
    })
}

/// The provider of the runtime executable `binary` (`None`: found as the host crate finds
/// it, `$CODE_MODE_BIN` first), made once per executable.
pub(crate) fn provider(binary: Option<String>) -> PyResult<Runtimes> {
    static PROVIDERS: OnceLock<Mutex<HashMap<Option<PathBuf>, Runtimes>>> = OnceLock::new();
    let binary = binary.map(PathBuf::from);
    let mut providers = lock(PROVIDERS.get_or_init(Mutex::default));
    if let Some(provider) = providers.get(&binary) {
        return Ok(provider.clone());
    }
    let _entered = tokio().enter();
    // A missing executable is told at the first call, with where it was looked for and
    // how to fix it (RuntimeUnavailable), as in every front.
    let provider = Runtimes::Local(ProcessProvider::deferred(ProcessConfig {
        binary: binary.clone(),
        ..ProcessConfig::default()
    }));
    providers.insert(binary, provider.clone());
    Ok(provider)
}
