//! The session's delegate: a nested call of a tools file's tool runs here
//! (`code_mode_tools`); any other goes to the Python dispatcher, which runs a sync tool on
//! the calling thread, or starts an async one on its event loop and gives the answer back
//! through [`Answers::give`], by the call's token. A cancelled call tells the dispatcher
//! too, so that an async tool is cancelled rather than left running. Whether a call waits on
//! a person first ([`CodeModeSessionDelegate::approval`]) is the tool's own declaration: a
//! Python tool's `approval`, a tools file's `approval = "always"`.

use code_mode_internal::sync::lock;
use code_mode_protocol::{
    ApprovalNeed, BoxFuture, CodeModeSessionDelegate, JsonText, NestedToolCall, ToolError,
};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The answers nested calls wait for, by token.
#[derive(Default)]
pub(crate) struct Answers {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<JsonText, ToolError>>>>,
}

impl Answers {
    /// A fresh token and the receiver of its answer.
    fn open(&self) -> (u64, oneshot::Receiver<Result<JsonText, ToolError>>) {
        let token = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiting).insert(token, sender);
        (token, receiver)
    }

    /// Gives call `token` its answer; `false` when nothing waits for it any more (it was
    /// cancelled, or answered already).
    pub(crate) fn give(&self, token: u64, answer: Result<JsonText, ToolError>) -> bool {
        match lock(&self.waiting).remove(&token) {
            Some(sender) => sender.send(answer).is_ok(),
            None => false,
        }
    }

    fn forget(&self, token: u64) {
        lock(&self.waiting).remove(&token);
    }
}

/// A session's delegate over a Python dispatcher. A sync tool runs on a thread of the
/// runtime's blocking pool: `run_sync(name, input, cell_id)` returns `(ok, text)` (`input`
/// is the argument's JSON text or `None`). An async tool is started on its event loop:
/// `dispatch(token, name, input, cell_id)` returns at once, `cancel(token)` gives the call
/// up, and the answer comes through [`Answers::give`].
pub(crate) struct PyDelegate {
    pub(crate) dispatcher: Arc<Py<PyAny>>,
    pub(crate) answers: Arc<Answers>,
    /// The names of the tools that are coroutine functions.
    pub(crate) async_tools: std::collections::HashSet<String>,
    /// The tools of a tools file (commands, built-ins, MCP servers), answered here.
    pub(crate) file_tools: Option<Arc<code_mode_tools::ToolSet>>,
    /// The Python tools whose every call waits on a person's approval, and why.
    pub(crate) approvals: HashMap<String, ApprovalNeed>,
}

impl PyDelegate {
    /// Whether any of the session's tools waits on a person (it then needs a state store,
    /// where approvals are kept).
    pub(crate) fn needs_approvals(&self) -> bool {
        !self.approvals.is_empty()
            || self
                .file_tools
                .as_ref()
                .is_some_and(|tools| tools.needs_approvals())
    }
}

impl PyDelegate {
    fn start(&self, call: &NestedToolCall, token: u64) -> Result<(), ToolError> {
        Python::attach(|py| {
            let input = call.input.as_ref().map(|input| input.as_str().to_owned());
            self.dispatcher
                .call_method1(
                    py,
                    "dispatch",
                    (
                        token,
                        call.tool_name.as_str(),
                        input,
                        call.cell_id.to_string(),
                    ),
                )
                .map(drop)
                .map_err(|error| ToolError::new(format!("the tool could not be started: {error}")))
        })
    }

    fn cancel(&self, token: u64) {
        self.answers.forget(token);
        Python::attach(|py| {
            if let Err(error) = self.dispatcher.call_method1(py, "cancel", (token,)) {
                error.print(py);
            }
        });
    }
}

std::thread_local! {
    /// Whether this thread keeps a Python thread state for good ([`keep_thread_state`]).
    static KEEPS_THREAD_STATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Gives this thread (one of tokio's blocking pool, reused call after call) a Python
/// thread state that outlives each call: every later attach takes the GIL with it instead
/// of creating a thread state and destroying it again, which was most of what a nested
/// call from Python cost beyond the wire's own.
fn keep_thread_state() {
    KEEPS_THREAD_STATE.with(|keeps| {
        if keeps.replace(true) {
            return;
        }
        // SAFETY: the interpreter is initialised (this module was imported into it), and
        // both calls are the C API's way for a foreign thread to get a thread state:
        // `PyGILState_Ensure` makes one and takes the GIL, `PyEval_SaveThread` releases
        // the GIL and keeps the state. Nothing releases this `Ensure`, so the thread's
        // state count never drops to zero and the state is not destroyed after a call.
        unsafe {
            let _ = pyo3::ffi::PyGILState_Ensure();
            let _ = pyo3::ffi::PyEval_SaveThread();
        }
    });
}

/// Runs a sync tool on the calling thread (a blocking-pool thread), with the GIL.
fn run_sync(dispatcher: &Py<PyAny>, call: &NestedToolCall) -> Result<JsonText, ToolError> {
    keep_thread_state();
    Python::attach(|py| {
        let input = call.input.as_ref().map(|input| input.as_str().to_owned());
        let outcome = dispatcher
            .call_method1(
                py,
                "run_sync",
                (call.tool_name.as_str(), input, call.cell_id.to_string()),
            )
            .and_then(|outcome| outcome.extract::<(bool, String)>(py));
        match outcome {
            Ok((true, text)) => Ok(JsonText::new(text)),
            Ok((false, message)) => Err(ToolError::new(message)),
            Err(error) => Err(ToolError::new(format!("the tool failed: {error}"))),
        }
    })
}

impl CodeModeSessionDelegate for PyDelegate {
    fn approval(&self, call: &NestedToolCall) -> Option<ApprovalNeed> {
        // The tools file first, whether or not its tool is up: its names are never a
        // Python tool's.
        self.file_tools
            .as_ref()
            .and_then(|tools| tools.approval(&call.tool_name))
            .or_else(|| self.approvals.get(&call.tool_name).cloned())
    }

    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        if let Some(file_tools) = &self.file_tools
            && file_tools.has(&call.tool_name)
        {
            return file_tools.answer(call, cancel);
        }
        if !self.async_tools.contains(&call.tool_name) {
            let dispatcher = Arc::clone(&self.dispatcher);
            let run = tokio::task::spawn_blocking(move || run_sync(&dispatcher, &call));
            return Box::pin(async move {
                // A call given up leaves its thread to finish: a sync function cannot be
                // stopped, and its answer is dropped.
                tokio::select! {
                    answer = run => answer.unwrap_or_else(|error| Err(ToolError::new(format!("the tool failed: {error}")))),
                    () = cancel.cancelled() => Err(ToolError::cancelled()),
                }
            });
        }
        Box::pin(async move {
            let (token, answer) = self.answers.open();
            if let Err(error) = self.start(&call, token) {
                self.answers.forget(token);
                return Err(error);
            }
            tokio::select! {
                answer = answer => answer.unwrap_or_else(|_| Err(ToolError::cancelled())),
                () = cancel.cancelled() => {
                    self.cancel(token);
                    Err(ToolError::cancelled())
                }
            }
        })
    }
}
