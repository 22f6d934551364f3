//! `NativeSession`: one host session with its tools, driven from Python. Every method of a
//! cell has a blocking form, which releases the GIL while the runtime works, and an
//! `_async` form, which runs on the extension's tokio runtime and reports to a Python
//! callback once (`done(ok, payload)`); the Python layer makes an asyncio future of it.
//! The session's calls that wait on a person (`pending_approvals`, `decide`) block on the
//! state directory's approvals with the GIL released (`AsyncSession` runs them in an
//! executor).
//!
//! A cell's answer crosses typed: a `_native.Response` ([`NativeResponse`]), which holds the
//! text a model reads of it too (the formatter's, within the exec's `max_output_tokens`);
//! a call that fails raises (to the callback: passes) the exception of its error. The
//! stored values, the tool specs and the approvals still cross as JSON text.

use crate::delegate::{Answers, PyDelegate};
use crate::errors::raise;
use crate::response::NativeResponse;
use crate::tracing_setup::call_span;
use code_mode_host::state::ApprovalError;
use code_mode_host::{HostedSession, Interrupted, RuntimeSession, StoredSession};
use code_mode_protocol::{
    CellId, CellResponse, CodeModeProvider, CodeModeSession, ExecHooks, ExecRequest, JsonText,
    SessionError, ToolDefinition, ToolError, WaitRequest,
};
use code_mode_surface::{
    Catalog, DEFAULT_MAX_OUTPUT_TOKENS, ToolDescription, UnavailableSource, exec_tool_spec_of,
    parse_exec_source, wait_tool_spec,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// A session of `code_mode`, with the tools every cell of it may call.
#[pyclass(module = "code_mode._native", frozen, weakref)]
pub struct NativeSession {
    session: Arc<dyn CodeModeSession>,
    /// The runtime session underneath (the same one, or the one a kept session wraps);
    /// `None` in process.
    runtime_session: Option<Arc<RuntimeSession>>,
    /// With a state directory: the kept session, which `delete` removes from it.
    stored: Option<Arc<StoredSession>>,
    answers: Arc<Answers>,
    descriptions: Vec<ToolDescription>,
    /// The tools file's MCP servers that are down, as `exec`'s description names them.
    unavailable: Vec<UnavailableSource>,
    tools: Arc<[ToolDefinition]>,
    closed: AtomicBool,
}

/// Why a session whose tools wait on a person cannot open without a state directory.
const NO_STORE: &str = "a tool needs a person's approval (approval= on a Python tool, approval = \"always\" in the tools file): approvals are kept in a state store, so give state_dir= and session_id=";

/// Session `id` of state directory `dir`: taken back with its running cells if an
/// earlier process kept it (a call that was in flight then runs again if `retry`, else
/// fails with the text that says it may have run), else opened and kept from now on.
#[expect(
    clippy::too_many_arguments,
    reason = "what a kept session is opened with, passed through"
)]
fn open_kept(
    py: Python<'_>,
    dir: &str,
    id: &str,
    retry: bool,
    runtime: Option<String>,
    delegate: Arc<PyDelegate>,
    options: code_mode_protocol::SessionOptions,
    stored: code_mode_protocol::StoredValues,
) -> PyResult<Arc<StoredSession>> {
    let provider = crate::runtime::stored(dir, runtime)?;
    let id = id.to_owned();
    let opened = py.detach(|| {
        crate::runtime::tokio().block_on(async move {
            if provider.kept().contains(&id) {
                let outcome = if retry {
                    Interrupted::Retry
                } else {
                    Interrupted::Fail
                };
                provider
                    .resume(&id, delegate, options, move |_| outcome.clone())
                    .await
            } else {
                provider.open(&id, delegate, options, stored).await
            }
        })
    });
    opened.map_err(|error| crate::errors::CodeModeError::new_err(error.to_string()))
}

/// A running `exec_async`: cancelling it terminates its cell (at once if the cell was
/// admitted, else as soon as it is).
#[pyclass(module = "code_mode._native", frozen)]
pub struct ExecHandle {
    cancel: CancellationToken,
}

#[pymethods]
impl ExecHandle {
    /// Terminates the cell this exec started (once it is admitted).
    fn cancel(&self) {
        self.cancel.cancel();
    }
}

#[pymethods]
impl NativeSession {
    /// Opens a session on the runtime `runtime` names (the executable the package ships,
    /// by default); `tools` is a JSON list of `{name, description, input_schema, deferred}`,
    /// `options` the session's `Options`, `stored` the JSON object of the
    /// stored values to start from.
    #[new]
    #[pyo3(signature = (dispatcher, tools, options, stored=None, runtime=None, tools_file=None, builtins=Vec::new(), state=None, in_process=false))]
    #[expect(
        clippy::too_many_arguments,
        reason = "the Python constructor's keyword arguments, each optional"
    )]
    fn new(
        py: Python<'_>,
        dispatcher: Py<PyAny>,
        tools: &str,
        options: PyRef<'_, crate::options::NativeOptions>,
        stored: Option<&str>,
        runtime: Option<String>,
        tools_file: Option<String>,
        builtins: Vec<String>,
        state: Option<(String, String, bool)>,
        in_process: bool,
    ) -> PyResult<Self> {
        let crate::options::PythonTools {
            mut descriptions,
            async_tools,
            approvals,
        } = crate::options::tools(tools)?;
        let options = crate::options::session_options(&options);
        let stored = crate::options::stored_values(stored)?;
        let file_tools = load_tools_file(py, tools_file, &builtins)?;
        let mut unavailable = Vec::new();
        if let Some(file_tools) = &file_tools {
            for tool in file_tools.descriptions() {
                if descriptions.iter().any(|known| known.name == tool.name) {
                    return Err(PyValueError::new_err(format!(
                        "the tool {} is both a Python tool and one of the tools file's",
                        tool.name
                    )));
                }
                descriptions.push(tool);
            }
            unavailable = file_tools.unavailable();
        }
        let answers = Arc::new(Answers::default());
        let delegate = Arc::new(PyDelegate {
            dispatcher: Arc::new(dispatcher),
            answers: Arc::clone(&answers),
            async_tools,
            file_tools,
            approvals,
        });
        if delegate.needs_approvals() && state.is_none() {
            return Err(PyValueError::new_err(NO_STORE));
        }
        let (session, runtime_session, stored): (Arc<dyn CodeModeSession>, _, _) = match state {
            _ if in_process => {
                let session =
                    crate::runtime::open_in_process(delegate, options, stored, state.is_some())?;
                (session, None, None)
            }
            Some((dir, id, retry)) => {
                let kept = open_kept(py, &dir, &id, retry, runtime, delegate, options, stored)?;
                let runtime_session = Arc::clone(kept.runtime_session());
                (kept.clone(), Some(runtime_session), Some(kept))
            }
            None => {
                let provider = crate::runtime::provider(runtime)?;
                let _entered = crate::runtime::tokio().enter();
                let session =
                    Arc::new(provider.open_session_with_values(delegate, options, stored));
                (session.clone(), Some(session), None)
            }
        };
        let tools: Arc<[ToolDefinition]> = descriptions
            .iter()
            .map(ToolDescription::definition)
            .collect();
        Ok(Self {
            session,
            runtime_session,
            stored,
            answers,
            descriptions,
            unavailable,
            tools,
            closed: AtomicBool::new(false),
        })
    }

    /// Runs a cell (its first line may be the `// @exec:` pragma) until it completes or
    /// yields; returns its response. `traceparent`: the span the call hangs under.
    #[pyo3(signature = (source, yield_time_ms=None, traceparent=None))]
    fn exec(
        &self,
        py: Python<'_>,
        source: &str,
        yield_time_ms: Option<u64>,
        traceparent: Option<&str>,
    ) -> PyResult<NativeResponse> {
        let run = self.exec_future(source, yield_time_ms, CancellationToken::new())?;
        block(py, run, call_span("exec", traceparent))
    }

    /// [`Self::exec`], reporting to `done(ok, payload)`.
    #[pyo3(signature = (source, yield_time_ms, done, traceparent=None))]
    fn exec_async(
        &self,
        source: &str,
        yield_time_ms: Option<u64>,
        done: Py<PyAny>,
        traceparent: Option<&str>,
    ) -> PyResult<ExecHandle> {
        let cancel = CancellationToken::new();
        let run = self.exec_future(source, yield_time_ms, cancel.clone())?;
        spawn(run, done, call_span("exec", traceparent));
        Ok(ExecHandle { cancel })
    }

    /// Waits on a running cell until it completes or yields again.
    #[pyo3(signature = (cell_id, yield_time_ms=None, traceparent=None))]
    fn wait(
        &self,
        py: Python<'_>,
        cell_id: &str,
        yield_time_ms: Option<u64>,
        traceparent: Option<&str>,
    ) -> PyResult<NativeResponse> {
        let run = self.wait_future(cell_id, yield_time_ms)?;
        block(py, run, call_span("wait", traceparent))
    }

    #[pyo3(signature = (cell_id, yield_time_ms, done, traceparent=None))]
    fn wait_async(
        &self,
        cell_id: &str,
        yield_time_ms: Option<u64>,
        done: Py<PyAny>,
        traceparent: Option<&str>,
    ) -> PyResult<()> {
        let run = self.wait_future(cell_id, yield_time_ms)?;
        spawn(run, done, call_span("wait", traceparent));
        Ok(())
    }

    /// Stops a running cell; returns what it produced and had not returned.
    #[pyo3(signature = (cell_id, traceparent=None))]
    fn terminate(
        &self,
        py: Python<'_>,
        cell_id: &str,
        traceparent: Option<&str>,
    ) -> PyResult<NativeResponse> {
        let run = self.terminate_future(cell_id)?;
        block(py, run, call_span("terminate", traceparent))
    }

    #[pyo3(signature = (cell_id, done, traceparent=None))]
    fn terminate_async(
        &self,
        cell_id: &str,
        done: Py<PyAny>,
        traceparent: Option<&str>,
    ) -> PyResult<()> {
        let run = self.terminate_future(cell_id)?;
        spawn(run, done, call_span("terminate", traceparent));
        Ok(())
    }

    /// The committed stored values, as a JSON object.
    fn stored_values(&self) -> String {
        let values: serde_json::Map<String, Value> = self
            .session
            .stored_values()
            .iter()
            .map(|(key, value)| {
                let value = serde_json::from_str(value).unwrap_or(Value::Null);
                (key.clone(), value)
            })
            .collect();
        Value::Object(values).to_string()
    }

    /// Gives nested call `token` its answer: the result's JSON text when `ok`, else the
    /// error message the cell's call rejects with. `False` when nothing waits for it.
    fn answer(&self, token: u64, ok: bool, text: String) -> bool {
        let answer = if ok {
            Ok(JsonText::new(text))
        } else {
            Err(ToolError::new(text))
        };
        self.answers.give(token, answer)
    }

    /// The `exec` and `wait` tool specs a model is given, as a JSON list: `exec`'s
    /// description declares this session's tools in TypeScript.
    fn tool_specs(&self) -> String {
        let catalog = Catalog {
            tools: &self.descriptions,
            unavailable: &self.unavailable,
        };
        let specs = [exec_tool_spec_of(catalog), wait_tool_spec()];
        Value::Array(specs.iter().map(|spec| spec.to_json()).collect()).to_string()
    }

    /// Where the session's cells run now (e.g. `pid 1234`, or `in process`), once it has
    /// run one.
    fn runtime(&self) -> Option<String> {
        match &self.runtime_session {
            Some(session) => HostedSession::runtime(session),
            None => Some("in process".to_owned()),
        }
    }

    /// This session's calls that wait on a person, oldest first, as a JSON list (empty for
    /// a session without a state directory: it has none).
    fn pending_approvals(&self, py: Python<'_>) -> PyResult<String> {
        self.check_open()?;
        let Some(kept) = self.stored.clone() else {
            return Ok("[]".to_owned());
        };
        let listed = crate::approvals::block(py, async move { kept.pending_approvals().await });
        listed
            .map(|listed| crate::approvals::list_json(&listed))
            .map_err(|error| crate::approvals::unread(&error))
    }

    /// Decides this session's waiting call `id`, once: approves it (with `input`, the
    /// edited input's JSON text, sent instead of the cell's) or, given `deny`, denies it
    /// with that message. Returns the approval as decided (JSON).
    #[pyo3(signature = (id, input=None, deny=None))]
    fn decide(
        &self,
        py: Python<'_>,
        id: String,
        input: Option<String>,
        deny: Option<String>,
    ) -> PyResult<String> {
        self.check_open()?;
        let Some(kept) = self.stored.clone() else {
            return Err(crate::approvals::refused(&ApprovalError::NotWaiting(id)));
        };
        let decided = crate::approvals::block(py, async move {
            match deny {
                Some(message) => kept.deny(&id, &message).await,
                None => kept.approve(&id, input).await,
            }
        });
        decided
            .map(|decided| crate::approvals::approval_json(&decided).to_string())
            .map_err(|error| crate::approvals::refused(&error))
    }

    /// Shuts the session down and deletes it from its state directory (a session without
    /// one is only shut down).
    fn delete(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::SeqCst);
        match &self.stored {
            Some(kept) => {
                let kept = Arc::clone(kept);
                py.detach(|| crate::runtime::tokio().block_on(kept.close()));
            }
            None => {
                let session = Arc::clone(&self.session);
                py.detach(|| crate::runtime::tokio().block_on(session.shutdown()));
            }
        }
    }

    /// Shuts the session down: running cells are stopped. Idempotent.
    fn close(&self, py: Python<'_>) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let session = Arc::clone(&self.session);
        py.detach(|| crate::runtime::tokio().block_on(session.shutdown()));
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// What a call answers: a response and the output budget its model text is cut to.
type Answer = Result<(CellResponse, u64), SessionError>;

impl NativeSession {
    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(crate::errors::SessionClosed::new_err(
                "the session is closed",
            ));
        }
        Ok(())
    }

    fn exec_future(
        &self,
        source: &str,
        yield_time_ms: Option<u64>,
        cancel: CancellationToken,
    ) -> PyResult<impl Future<Output = Answer> + Send + 'static> {
        self.check_open()?;
        let parsed = parse_exec_source(source)
            .map_err(|error| crate::errors::CodeModeError::new_err(error.to_string()))?;
        let budget = parsed
            .max_output_tokens
            .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
        let mut request = ExecRequest::new(parsed.source).with_tools(Arc::clone(&self.tools));
        request.yield_time_ms = yield_time_ms.or(parsed.yield_time_ms);
        let session = Arc::clone(&self.session);
        // The cell is terminated when the caller gives up: at once if it was admitted,
        // else as soon as it is. The exec's own observation then ends with the terminated
        // response (contract 3.7), so that the caller's next call finds the cell gone.
        let admitted: Arc<(Mutex<Option<CellId>>, tokio::sync::Notify)> = Arc::default();
        let seen = Arc::clone(&admitted);
        let hooks = ExecHooks::default().on_admitted(move |cell_id| {
            *code_mode_internal::sync::lock(&seen.0) = Some(cell_id.clone());
            seen.1.notify_one();
        });
        Ok(async move {
            let run = session.execute_with(request, hooks);
            tokio::pin!(run);
            tokio::select! {
                started = &mut run => return started.map(|started| (started.initial_response, budget)),
                () = cancel.cancelled() => {}
            }
            let cell_id = loop {
                if let Some(cell_id) = code_mode_internal::sync::lock(&admitted.0).clone() {
                    break cell_id;
                }
                tokio::select! {
                    started = &mut run => return started.map(|started| (started.initial_response, budget)),
                    () = admitted.1.notified() => {}
                }
            };
            let (started, _) = tokio::join!(run, session.terminate(cell_id));
            started.map(|started| (started.initial_response, budget))
        })
    }

    fn wait_future(
        &self,
        cell_id: &str,
        yield_time_ms: Option<u64>,
    ) -> PyResult<impl Future<Output = Answer> + Send + 'static> {
        self.check_open()?;
        let session = Arc::clone(&self.session);
        let request = WaitRequest {
            cell_id: CellId::from(cell_id),
            yield_time_ms,
        };
        Ok(async move {
            session
                .wait(request)
                .await
                .map(|response| (response, DEFAULT_MAX_OUTPUT_TOKENS))
        })
    }

    fn terminate_future(
        &self,
        cell_id: &str,
    ) -> PyResult<impl Future<Output = Answer> + Send + 'static> {
        self.check_open()?;
        let session = Arc::clone(&self.session);
        let cell_id = CellId::from(cell_id);
        Ok(async move {
            session
                .terminate(cell_id)
                .await
                .map(|response| (response, DEFAULT_MAX_OUTPUT_TOKENS))
        })
    }
}

/// Runs `run` to its end under `span`, with the GIL released.
fn block(
    py: Python<'_>,
    run: impl Future<Output = Answer> + Send + 'static,
    span: tracing::Span,
) -> PyResult<NativeResponse> {
    let run = tracing::Instrument::instrument(run, span);
    match py.detach(|| crate::runtime::tokio().block_on(run)) {
        Ok((response, budget)) => Ok(NativeResponse::new(&response, budget)),
        Err(error) => Err(raise(&error)),
    }
}

/// Runs `run` on the runtime and calls `done(True, response)` (a `_native.Response`) or
/// `done(False, exception)` (the exception the blocking form raises) once, with the GIL.
fn spawn(run: impl Future<Output = Answer> + Send + 'static, done: Py<PyAny>, span: tracing::Span) {
    let run = tracing::Instrument::instrument(run, span);
    crate::runtime::tokio().spawn(async move {
        let answer = run
            .await
            .map(|(response, budget)| NativeResponse::new(&response, budget));
        Python::attach(|py| {
            // An answer that cannot be made a Python object is reported as that error:
            // the caller's future settles either way.
            let called = match answer.map(|response| Py::new(py, response)) {
                Ok(Ok(response)) => done.call1(py, (true, response)),
                Ok(Err(error)) => done.call1(py, (false, error.into_value(py))),
                Err(error) => done.call1(py, (false, raise(&error).into_value(py))),
            };
            if let Err(error) = called {
                error.print(py);
            }
        });
    });
}

/// The tools of `tools_file` and the `builtins` asked for (`fs`, `shell`), their MCP
/// servers started (a server that fails is named in `exec`'s description); `None` when
/// there are neither. A tools file that does not read is a `ValueError` naming the line.
fn load_tools_file(
    py: Python<'_>,
    tools_file: Option<String>,
    builtins: &[String],
) -> PyResult<Option<Arc<code_mode_tools::ToolSet>>> {
    if tools_file.is_none() && builtins.is_empty() {
        return Ok(None);
    }
    let path = tools_file.map(std::path::PathBuf::from);
    let load = code_mode_tools::ToolSet::load(path.as_deref(), builtins);
    let loaded = py.detach(|| crate::runtime::tokio().block_on(load));
    loaded
        .map(|set| Some(Arc::new(set)))
        .map_err(|error| PyValueError::new_err(error.to_string()))
}
