//! The process-wide parts: one tokio runtime for every session, and one provider per
//! runtime executable, so that all of a Python process's sessions share one sandboxed
//! runtime process (started at the first call, restarted after a crash); one provider of
//! kept sessions per state directory; and one set of approvals per state directory, which
//! that provider's sessions and the store-level functions share (so that a decision taken
//! in this process reaches the call waiting here at once).

use code_mode_host::state::{StoreLocation, StoreOptions};
use code_mode_host::{Approvals, KeptSessions};
use code_mode_host::{ProcessConfig, ProcessProvider, Runtimes, StoredProvider};
use code_mode_internal::sync::lock;
use pyo3::PyResult;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The front name this package's sessions keep their approvals under.
pub(crate) const FRONT: &str = "python";

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

/// The provider whose sessions run their cells in this process (one per process, V8
/// started at the first such session).
#[cfg(feature = "in-process")]
pub(crate) fn in_process() -> &'static code_mode::InProcessProvider {
    static PROVIDER: OnceLock<code_mode::InProcessProvider> = OnceLock::new();
    PROVIDER
        .get_or_init(|| code_mode::InProcessProvider::new(code_mode::InProcessConfig::default()))
}

/// Whether this build can run cells in the Python process (`in_process=True`).
pub(crate) const IN_PROCESS: bool = cfg!(feature = "in-process");

/// A session of the in-process provider, or why there is none: this build has no V8 of
/// its own, or the session would keep state (a state directory needs the runtime process:
/// the cells' journals are kept on the host's side of it).
pub(crate) fn open_in_process(
    delegate: Arc<dyn code_mode_protocol::CodeModeSessionDelegate>,
    options: code_mode_protocol::SessionOptions,
    stored: code_mode_protocol::StoredValues,
    keeps_state: bool,
) -> PyResult<Arc<dyn code_mode_protocol::CodeModeSession>> {
    if keeps_state {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "in_process=True cannot keep a session in a state_dir: its cells' journals are kept on the host's side of the runtime process",
        ));
    }
    #[cfg(feature = "in-process")]
    {
        use code_mode_protocol::CodeModeProvider as _;
        let _entered = tokio().enter();
        Ok(Arc::new(
            in_process().open_session_with_values(delegate, options, stored),
        ))
    }
    #[cfg(not(feature = "in-process"))]
    {
        let _ = (delegate, options, stored);
        Err(crate::errors::RuntimeUnavailable::new_err(
            "this build of code_mode has no in-process runtime: cells run in the runtime process it ships (drop in_process=True), or build the package with `maturin build --features in-process`",
        ))
    }
}

/// The approvals of state directory `dir` (its `approvals.sqlite3`, shared with every
/// process that opens the directory), opened once per directory and process. Blocks while
/// it opens: call it without the GIL.
pub(crate) fn approvals(dir: &Path) -> PyResult<Arc<Approvals>> {
    static APPROVALS: OnceLock<Mutex<HashMap<PathBuf, Arc<Approvals>>>> = OnceLock::new();
    let dir = dir.to_path_buf();
    let mut opened = lock(APPROVALS.get_or_init(Mutex::default));
    if let Some(approvals) = opened.get(&dir) {
        return Ok(Arc::clone(approvals));
    }
    let approvals = Approvals::open(&StoreLocation::Dir(dir.clone()), &StoreOptions::default())
        .map_err(|error| crate::errors::CodeModeError::new_err(error.to_string()))?;
    opened.insert(dir, Arc::clone(&approvals));
    Ok(approvals)
}

/// The provider of the sessions kept in state directory `dir` (one per directory and
/// process: its database is held by one keeper), with its own runtime process, started at
/// the runtime generation after the one the directory's last process reached. Calls that
/// need a person's approval wait in the directory's approvals, under the front `python`.
pub(crate) fn stored(dir: &str, binary: Option<String>) -> PyResult<Arc<StoredProvider>> {
    static STORED: OnceLock<Mutex<HashMap<PathBuf, Arc<StoredProvider>>>> = OnceLock::new();
    let dir = PathBuf::from(dir);
    let mut providers = lock(STORED.get_or_init(Mutex::default));
    if let Some(provider) = providers.get(&dir) {
        return Ok(Arc::clone(provider));
    }
    let location = StoreLocation::Dir(dir.clone());
    let kept = KeptSessions::open(&location, "python", StoreOptions::default())
        .map_err(|error| crate::errors::CodeModeError::new_err(error.to_string()))?;
    let _entered = tokio().enter();
    let runtimes = Runtimes::Local(ProcessProvider::deferred(ProcessConfig {
        binary: binary.map(PathBuf::from),
        generations_before: kept.generations_before(),
        ..ProcessConfig::default()
    }));
    let approvals = approvals(&dir)?;
    let provider =
        Arc::new(StoredProvider::new(runtimes, Arc::new(kept)).with_approvals(approvals, FRONT));
    providers.insert(dir, Arc::clone(&provider));
    Ok(provider)
}

/// The ids of the sessions an earlier process kept in state directory `dir` that no
/// session of this process took back yet.
#[pyo3::pyfunction]
#[pyo3(signature = (dir, runtime=None))]
pub(crate) fn kept_sessions(dir: &str, runtime: Option<String>) -> PyResult<Vec<String>> {
    Ok(stored(dir, runtime)?.kept())
}
