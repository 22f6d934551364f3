//! The session's delegate: a nested call of a tools file's tool runs here
//! (`code_mode_tools`); any other goes to the JS dispatcher through a
//! threadsafe function, so a tool runs on the Node event loop, in order with the app's
//! other work; its answer comes back through `Answers::give`, by the call's token. A
//! call the cell gives up tells the dispatcher too, so that the tool's `AbortSignal` fires.
//! Whether a call waits on a person first ([`CodeModeSessionDelegate::approval`]) is the
//! tool's own declaration: a JS tool's `needsApproval`, a tools file's `approval =
//! "always"`; it is answered here, off the event loop, never by running JS.

use code_mode_internal::sync::lock;
use code_mode_protocol::{
    ApprovalNeed, BoxFuture, CodeModeSessionDelegate, JsonText, NestedToolCall, ToolError,
};
use napi::Status;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A nested call handed to JS: a tool to run (`cancelled` false), or a call given up.
#[napi(object)]
pub struct ToolCall {
    /// The call's token: `answer` takes it.
    pub token: u32,
    /// The tool's name.
    pub name: String,
    /// The argument's JSON text, if the cell passed one.
    pub input: Option<String>,
    /// The cell that made the call.
    pub cell_id: String,
    /// The cell gave the call up (it was terminated): abort the tool.
    pub cancelled: bool,
}

/// The JS dispatcher: weak, so an idle session never keeps Node's event loop alive (a
/// call in flight does: its exec's promise is pending).
pub(crate) type Dispatcher =
    ThreadsafeFunction<ToolCall, napi::Unknown<'static>, ToolCall, Status, false, true>;

/// The answers nested calls wait for, by token.
#[derive(Default)]
pub(crate) struct Answers {
    next: AtomicU32,
    waiting: Mutex<HashMap<u32, oneshot::Sender<Result<JsonText, ToolError>>>>,
}

impl Answers {
    /// A fresh token and the receiver of its answer.
    fn open(&self) -> (u32, oneshot::Receiver<Result<JsonText, ToolError>>) {
        let token = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiting).insert(token, sender);
        (token, receiver)
    }

    /// Gives call `token` its answer; `false` when nothing waits for it any more (it was
    /// cancelled, or answered already).
    pub(crate) fn give(&self, token: u32, answer: Result<JsonText, ToolError>) -> bool {
        match lock(&self.waiting).remove(&token) {
            Some(sender) => sender.send(answer).is_ok(),
            None => false,
        }
    }

    fn forget(&self, token: u32) -> bool {
        lock(&self.waiting).remove(&token).is_some()
    }
}

/// A session's delegate over the JS dispatcher.
pub(crate) struct JsDelegate {
    /// Taken when the session closes ([`JsDelegate::release`]): a threadsafe function
    /// holds its JS function as a root, and that function (the dispatcher's) holds the
    /// session's JS object, so while it lives nothing of the session is ever collected.
    pub(crate) dispatcher: Mutex<Option<Dispatcher>>,
    pub(crate) answers: std::sync::Arc<Answers>,
    /// The tools of a tools file and the built-ins (commands, MCP servers), answered here.
    pub(crate) file_tools: Option<std::sync::Arc<code_mode_tools::ToolSet>>,
    /// The JS tools whose every call waits on a person's approval, and why.
    pub(crate) approvals: HashMap<String, ApprovalNeed>,
}

impl JsDelegate {
    /// Whether any of the session's tools waits on a person (it then needs a state store,
    /// where approvals are kept).
    pub(crate) fn needs_approvals(&self) -> bool {
        !self.approvals.is_empty()
            || self
                .file_tools
                .as_ref()
                .is_some_and(|tools| tools.needs_approvals())
    }

    /// Lets the JS dispatcher go (the session closed); later calls fail.
    pub(crate) fn release(&self) {
        drop(lock(&self.dispatcher).take());
    }

    fn send(&self, call: ToolCall) -> Result<(), ToolError> {
        let dispatcher = lock(&self.dispatcher);
        let Some(dispatcher) = dispatcher.as_ref() else {
            return Err(ToolError::new("the session is closed"));
        };
        match dispatcher.call(call, ThreadsafeFunctionCallMode::NonBlocking) {
            Status::Ok => Ok(()),
            status => Err(ToolError::new(format!(
                "the tool could not be started: the Node environment refused the call ({status})"
            ))),
        }
    }
}

impl CodeModeSessionDelegate for JsDelegate {
    fn approval(&self, call: &NestedToolCall) -> Option<ApprovalNeed> {
        // The tools file first, whether or not its tool is up: a name both have is
        // refused at open.
        self.file_tools
            .as_ref()
            .and_then(|tools| tools.approval(&call.tool_name))
            .or_else(|| self.approvals.get(call.tool_name.as_str()).cloned())
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
        Box::pin(async move {
            let (token, answer) = self.answers.open();
            let name = call.tool_name.as_str().to_owned();
            let cell_id = call.cell_id.to_string();
            let started = self.send(ToolCall {
                token,
                name: name.clone(),
                input: call.input.as_ref().map(|input| input.as_str().to_owned()),
                cell_id: cell_id.clone(),
                cancelled: false,
            });
            if let Err(error) = started {
                self.answers.forget(token);
                return Err(error);
            }
            tokio::select! {
                answer = answer => answer.unwrap_or_else(|_| Err(ToolError::cancelled())),
                () = cancel.cancelled() => {
                    if self.answers.forget(token) {
                        tracing::debug!(token, tool = %name, "nested call given up; aborting its tool");
                        let _ = self.send(ToolCall { token, name, input: None, cell_id, cancelled: true });
                    }
                    Err(ToolError::cancelled())
                }
            }
        })
    }
}
