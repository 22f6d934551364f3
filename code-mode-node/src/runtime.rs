//! The process-wide parts: one tokio runtime for every session, one provider per runtime
//! executable, so that all of a Node process's sessions share one sandboxed runtime
//! process (started at the first cell, restarted after a crash); one provider of kept
//! sessions per state directory; and one set of approvals per state directory, which that
//! provider's sessions and the store-level functions share (so that a decision taken in
//! this process reaches the call waiting here at once).

use code_mode_host::state::{StoreLocation, StoreOptions};
use code_mode_host::{Approvals, KeptSessions};
use code_mode_host::{ProcessConfig, ProcessProvider, Runtimes, StoredProvider};
use code_mode_internal::sync::lock;
use futures_util::FutureExt as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The front name this package's sessions keep their approvals under.
pub(crate) const FRONT: &str = "node";

/// The runtime every session's work runs on (two workers: the work is waiting on the
/// runtime process and on JS, never computing).
pub(crate) fn tokio() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("code-mode")
            .enable_all()
            .build()
            .expect("the tokio runtime of code-mode-runtime starts")
    })
}

/// The provider of the runtime executable `binary`, made once per executable. The JS side
/// always names the executable (never `PATH`); a missing one is told at the first cell.
pub(crate) fn provider(binary: PathBuf) -> Runtimes {
    static PROVIDERS: OnceLock<Mutex<HashMap<PathBuf, Runtimes>>> = OnceLock::new();
    let mut providers = lock(PROVIDERS.get_or_init(Mutex::default));
    if let Some(provider) = providers.get(&binary) {
        return provider.clone();
    }
    let _entered = tokio().enter();
    let provider = Runtimes::Local(ProcessProvider::deferred(ProcessConfig {
        binary: Some(binary.clone()),
        ..ProcessConfig::default()
    }));
    providers.insert(binary, provider.clone());
    provider
}

/// The approvals of state directory `dir` (its `approvals.sqlite3`, shared with every
/// process that opens the directory), opened once per directory and process. Blocks while
/// it opens (on a thread of its own).
pub(crate) fn approvals(dir: &Path) -> Result<Arc<Approvals>, String> {
    static APPROVALS: OnceLock<Mutex<HashMap<PathBuf, Arc<Approvals>>>> = OnceLock::new();
    let mut opened = lock(APPROVALS.get_or_init(Mutex::default));
    if let Some(approvals) = opened.get(dir) {
        return Ok(Arc::clone(approvals));
    }
    let location = StoreLocation::Dir(dir.to_path_buf());
    let approvals =
        Approvals::open(&location, &StoreOptions::default()).map_err(|error| error.to_string())?;
    opened.insert(dir.to_path_buf(), Arc::clone(&approvals));
    Ok(approvals)
}

/// The provider of the sessions kept in state directory `dir` (one per directory and
/// process: its database is held by one keeper), with its own runtime process, started at
/// the runtime generation after the one the directory's last process reached. Calls that
/// need a person's approval wait in the directory's approvals, under the front `node`.
pub(crate) fn stored(dir: &str, binary: PathBuf) -> Result<Arc<StoredProvider>, String> {
    static STORED: OnceLock<Mutex<HashMap<PathBuf, Arc<StoredProvider>>>> = OnceLock::new();
    let dir = PathBuf::from(dir);
    let mut providers = lock(STORED.get_or_init(Mutex::default));
    if let Some(provider) = providers.get(&dir) {
        return Ok(Arc::clone(provider));
    }
    let location = StoreLocation::Dir(dir.clone());
    let kept = KeptSessions::open(&location, "node", StoreOptions::default())
        .map_err(|error| error.to_string())?;
    let _entered = tokio().enter();
    let runtimes = Runtimes::Local(ProcessProvider::deferred(ProcessConfig {
        binary: Some(binary),
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
#[napi_derive::napi]
pub fn kept_sessions(dir: String, runtime: String) -> napi::Result<Vec<String>> {
    stored(&dir, PathBuf::from(runtime))
        .map(|provider| provider.kept())
        .map_err(napi::Error::from_reason)
}

/// A promise of `run`'s outcome, settled from the tokio runtime.
pub(crate) fn promise<'env, T: napi::bindgen_prelude::ToNapiValue + Send + 'static>(
    env: &'env napi::Env,
    run: impl std::future::Future<Output = T> + Send + 'static,
) -> napi::Result<napi::bindgen_prelude::Object<'env>> {
    settled(env, async move { Ok(run.await) })
}

/// A promise settled from the tokio runtime with what `run` gives: its value, or its
/// error as a rejection. A panic in `run` rejects it too, with what the panic said: a
/// promise never settled would hang the app's `await` for good (a dropped deferred is
/// never settled by napi). One task per promise, the panic caught where it unwinds: a
/// task of its own to run `run` cost each call a second task and its wake-up.
pub(crate) fn settled<'env, T: napi::bindgen_prelude::ToNapiValue + Send + 'static>(
    env: &'env napi::Env,
    run: impl std::future::Future<Output = napi::Result<T>> + Send + 'static,
) -> napi::Result<napi::bindgen_prelude::Object<'env>> {
    type Resolve<T> = Box<dyn FnOnce(napi::Env) -> napi::Result<T> + Send>;
    let (deferred, promise) = env.create_deferred::<T, Resolve<T>>()?;
    tokio().spawn(async move {
        match std::panic::AssertUnwindSafe(run).catch_unwind().await {
            Ok(Ok(value)) => deferred.resolve(Box::new(move |_| Ok(value))),
            Ok(Err(error)) => deferred.reject(error),
            Err(panic) => deferred.reject(napi::Error::from_reason(internal_failure(&*panic))),
        }
    });
    Ok(promise)
}

/// The text of a panic caught in a promise's work.
fn internal_failure(panic: &(dyn std::any::Any + Send)) -> String {
    let said = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("code-mode-runtime: an internal error ({said}); please report it")
}
