//! Sessions that take time to open, opened off the event loop: a session with a tools
//! file or built-ins (its MCP servers start), and a session kept in a state directory
//! (taken back with its running cells, or opened and kept from now on).

use crate::delegate::Dispatcher;
use crate::options::{NativeOptions, invalid};
use crate::session::{NativeSession, parts};
use code_mode_host::Interrupted;
use code_mode_protocol::CodeModeProvider;
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;
use std::path::PathBuf;
use std::sync::Arc;

/// A session kept in a state directory: it outlives the process.
#[napi(object)]
pub struct KeptState {
    /// The state directory (SQLite).
    pub dir: String,
    /// The session's id in it.
    pub session_id: String,
    /// A call in flight at a crash runs again (`true`) or fails (the default).
    pub retry: Option<bool>,
}

/// What a session is opened with beyond its JS tools and options.
#[napi(object)]
pub struct Opening {
    /// The JSON object of the stored values to start from (a kept session taken back has
    /// its own).
    pub stored: Option<String>,
    /// Keep the session in a state directory.
    pub state: Option<KeptState>,
    /// A `code-mode` tools file (TOML): its command tools and MCP servers.
    pub tools_file: Option<String>,
    /// Built-ins: `fs` (`read_file`, `list_dir`, `write_file`), `shell` (`exec_command`).
    pub builtins: Option<Vec<String>>,
}

/// Opens a session on the runtime executable `runtime` as `opening` says; the promise
/// settles with it, or rejects with why it could not be opened (a tools file that does not
/// read, a name both the JS tools and the file have: `InvalidArg`).
#[napi(ts_return_type = "Promise<NativeSession>")]
pub fn open_session<'env>(
    env: &'env Env,
    tools: String,
    options: NativeOptions,
    runtime: String,
    #[napi(ts_arg_type = "(call: ToolCall) => void")] dispatcher: Dispatcher,
    opening: Opening,
) -> napi::Result<Object<'env>> {
    // What JS passed is checked here, at once; the tools file's tools are added after.
    crate::options::session_options(&options)?;
    crate::options::tools(&tools)?;
    crate::runtime::settled(env, async move {
        open(tools, options, PathBuf::from(runtime), dispatcher, opening).await
    })
}

async fn open(
    tools: String,
    options: NativeOptions,
    runtime: PathBuf,
    dispatcher: Dispatcher,
    opening: Opening,
) -> napi::Result<NativeSession> {
    let builtins = opening.builtins.unwrap_or_default();
    let file_tools = match (&opening.tools_file, builtins.is_empty()) {
        (None, true) => None,
        (file, _) => {
            let path = file.as_ref().map(PathBuf::from);
            let set = code_mode_tools::ToolSet::load(path.as_deref(), &builtins)
                .await
                .map_err(|error| invalid("toolsFile", error))?;
            Some(Arc::new(set))
        }
    };
    let parts = parts(
        &tools,
        &options,
        opening.stored.as_deref(),
        dispatcher,
        file_tools,
    )?;
    parts.need_store(opening.state.is_some())?;
    let Some(state) = opening.state else {
        let provider = crate::runtime::provider(runtime);
        let session = Arc::new(provider.open_session_with_values(
            parts.delegate.clone(),
            parts.options.clone(),
            parts.stored.clone(),
        ));
        return Ok(NativeSession::of(parts, session.clone(), session, None));
    };
    let provider = crate::runtime::stored(&state.dir, runtime).map_err(napi::Error::from_reason)?;
    let delegate: Arc<dyn code_mode_protocol::CodeModeSessionDelegate> = parts.delegate.clone();
    let id = state.session_id.clone();
    let opened = if provider.kept().contains(&id) {
        let outcome = if state.retry.unwrap_or(false) {
            Interrupted::Retry
        } else {
            Interrupted::Fail
        };
        let resume = provider.resume(&id, delegate, parts.options.clone(), move |_| {
            outcome.clone()
        });
        resume.await
    } else {
        let values = parts.stored.clone();
        provider
            .open(&id, delegate, parts.options.clone(), values)
            .await
    };
    let kept = opened.map_err(|error| napi::Error::from_reason(error.to_string()))?;
    let runtime_session = Arc::clone(kept.runtime_session());
    Ok(NativeSession::of(
        parts,
        kept.clone(),
        runtime_session,
        Some(kept),
    ))
}
