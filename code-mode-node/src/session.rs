//! `NativeSession`: one host session with its tools, driven from JS. Every call returns a
//! promise at once and runs on the extension's tokio runtime, so the JS event loop never
//! waits on a cell; the promise settles with an [`Outcome`] (a result, or the error class
//! and message the JS layer throws).

use crate::approvals;
use crate::delegate::{Answers, Dispatcher, JsDelegate};
use crate::options::NativeOptions;
use crate::outcome::{Outcome, failed};
use crate::runtime::promise;
use crate::tracing_setup::call_span;
use code_mode_host::state::ApprovalError;
use code_mode_host::{HostedSession, RuntimeSession, StoredSession};
use code_mode_internal::sync::lock;
use code_mode_protocol::approval::Decision;
use code_mode_protocol::{
    CellId, CellResponse, CodeModeProvider, CodeModeSession, ExecHooks, ExecRequest, JsonText,
    SessionError, ToolDefinition, ToolError, WaitRequest,
};
use code_mode_surface::{
    Catalog, DEFAULT_MAX_OUTPUT_TOKENS, ToolDescription, UnavailableSource, exec_tool_spec_of,
    parse_exec_source, wait_tool_spec,
};
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A session of code mode, with the tools every cell of it may call.
#[napi]
pub struct NativeSession {
    session: Arc<dyn CodeModeSession>,
    runtime_session: Arc<RuntimeSession>,
    /// With a state directory: the kept session, which `delete` removes from it.
    stored: Option<Arc<StoredSession>>,
    answers: Arc<Answers>,
    descriptions: Vec<ToolDescription>,
    unavailable: Vec<UnavailableSource>,
    tools: Arc<[ToolDefinition]>,
    closed: Arc<AtomicBool>,
    /// The cancellation of each exec started with a cancel token, by token.
    cancels: Arc<Mutex<HashMap<u32, CancellationToken>>>,
    /// Its delegate, whose hold on the JS dispatcher `close` lets go.
    delegate: Arc<JsDelegate>,
}

/// What a call of a closed session is told.
const CLOSED: &str = "the session is closed";

/// What a session is opened with.
pub(crate) struct Parts {
    descriptions: Vec<ToolDescription>,
    /// The tools file's MCP servers that are down, as `exec`'s description names them.
    unavailable: Vec<UnavailableSource>,
    answers: Arc<Answers>,
    pub(crate) delegate: Arc<JsDelegate>,
    pub(crate) options: code_mode_protocol::SessionOptions,
    pub(crate) stored: code_mode_protocol::StoredValues,
}

/// The parts of a session of JS tools `tools` (a JSON list) and, beside them, the tools of
/// a tools file (`file_tools`); a name both have is refused.
pub(crate) fn parts(
    tools: &str,
    options: &NativeOptions,
    stored: Option<&str>,
    dispatcher: Dispatcher,
    file_tools: Option<Arc<code_mode_tools::ToolSet>>,
) -> napi::Result<Parts> {
    let crate::options::JsTools {
        mut descriptions,
        approvals,
    } = crate::options::tools(tools)?;
    let mut unavailable = Vec::new();
    if let Some(file_tools) = &file_tools {
        for tool in file_tools.descriptions() {
            if descriptions.iter().any(|known| known.name == tool.name) {
                return Err(crate::options::invalid(
                    "toolsFile",
                    format!(
                        "the tool {} is both a JS tool and one of the tools file's",
                        tool.name
                    ),
                ));
            }
            descriptions.push(tool);
        }
        unavailable = file_tools.unavailable();
    }
    let answers = Arc::new(Answers::default());
    Ok(Parts {
        descriptions,
        unavailable,
        options: crate::options::session_options(options)?,
        stored: crate::options::stored_values(stored)?,
        delegate: Arc::new(JsDelegate {
            dispatcher: Mutex::new(Some(dispatcher)),
            answers: Arc::clone(&answers),
            file_tools,
            approvals,
        }),
        answers,
    })
}

/// Why a session whose tools wait on a person cannot open without a state directory.
const NO_STORE: &str = "a tool needs a person's approval (needsApproval on a JS tool, approval = \"always\" in the tools file): approvals are kept in a state store, so give stateDir and sessionId";

impl Parts {
    /// Refuses a session whose tools wait on a person when it has no state directory
    /// (`kept`): its approvals would have nowhere to wait, and the calls would never run.
    pub(crate) fn need_store(&self, kept: bool) -> napi::Result<()> {
        if self.delegate.needs_approvals() && !kept {
            return Err(crate::options::invalid("tools", NO_STORE));
        }
        Ok(())
    }
}

impl NativeSession {
    pub(crate) fn of(
        parts: Parts,
        session: Arc<dyn CodeModeSession>,
        runtime_session: Arc<RuntimeSession>,
        stored: Option<Arc<StoredSession>>,
    ) -> Self {
        let tools = parts
            .descriptions
            .iter()
            .map(ToolDescription::definition)
            .collect();
        Self {
            session,
            runtime_session,
            stored,
            answers: parts.answers,
            descriptions: parts.descriptions,
            unavailable: parts.unavailable,
            tools,
            closed: Arc::default(),
            cancels: Arc::default(),
            delegate: parts.delegate,
        }
    }
}

/// The outcome of a call that answered `answer`, its model text cut to `budget` tokens.
fn settle(answer: Result<CellResponse, SessionError>, budget: u64) -> Outcome {
    match answer {
        Ok(response) => Outcome {
            result: Some(crate::outcome::result(&response, budget)),
            error: None,
        },
        Err(error) => Outcome {
            result: None,
            error: Some(crate::outcome::error(&error)),
        },
    }
}

/// The `exec` and `wait` tool specs a model is given for `tools` (the JSON list a session
/// takes), as JSON: `exec`'s description declares the tools in TypeScript.
#[napi]
pub fn tool_specs(tools: String) -> napi::Result<String> {
    Ok(specs_json(
        &crate::options::tools(&tools)?.descriptions,
        &[],
    ))
}

fn specs_json(descriptions: &[ToolDescription], unavailable: &[UnavailableSource]) -> String {
    let catalog = Catalog {
        tools: descriptions,
        unavailable,
    };
    let specs = [exec_tool_spec_of(catalog), wait_tool_spec()];
    Value::Array(specs.iter().map(|spec| spec.to_json()).collect()).to_string()
}

#[napi]
impl NativeSession {
    /// Opens a session on the runtime executable `runtime` (nothing starts until its first
    /// cell); `tools` is a JSON list of `{name, description, inputSchema, outputSchema,
    /// deferred}`, `stored` the JSON object of the stored values to start from.
    /// `dispatcher` runs the tools of nested calls.
    #[napi(constructor)]
    pub fn new(
        tools: String,
        options: NativeOptions,
        runtime: String,
        #[napi(ts_arg_type = "(call: ToolCall) => void")] dispatcher: Dispatcher,
        stored: Option<String>,
    ) -> napi::Result<Self> {
        let parts = parts(&tools, &options, stored.as_deref(), dispatcher, None)?;
        parts.need_store(false)?;
        let provider = crate::runtime::provider(PathBuf::from(runtime));
        let _entered = crate::runtime::tokio().enter();
        let session = Arc::new(provider.open_session_with_values(
            parts.delegate.clone(),
            parts.options.clone(),
            parts.stored.clone(),
        ));
        Ok(Self::of(parts, session.clone(), session, None))
    }

    /// Runs a cell (its first line may be the `// @exec:` pragma) until it completes or
    /// yields. `cancel`: a token for `cancel()`, which terminates the cell.
    #[napi(ts_return_type = "Promise<Outcome>")]
    pub fn exec<'env>(
        &self,
        env: &'env Env,
        source: String,
        yield_time_ms: Option<u32>,
        cancel: Option<u32>,
        traceparent: Option<String>,
    ) -> napi::Result<Object<'env>> {
        if let Some(closed) = self.closed_outcome() {
            return promise(env, async move { closed });
        }
        let parsed = match parse_exec_source(&source) {
            Ok(parsed) => parsed,
            Err(error) => {
                let failed = failed("CodeModeError", error.to_string());
                return promise(env, async move { failed });
            }
        };
        let budget = parsed
            .max_output_tokens
            .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
        let mut request = ExecRequest::new(parsed.source).with_tools(Arc::clone(&self.tools));
        request.yield_time_ms = yield_time_ms.map(u64::from).or(parsed.yield_time_ms);
        let token = CancellationToken::new();
        if let Some(id) = cancel {
            lock(&self.cancels).insert(id, token.clone());
        }
        let run = exec_until(Arc::clone(&self.session), request, token);
        let cancels = Arc::clone(&self.cancels);
        let span = call_span("exec", traceparent.as_deref());
        let run = async move {
            let answer = run.await;
            if let Some(id) = cancel {
                lock(&cancels).remove(&id);
            }
            match answer {
                Ok(Some(response)) => settle(Ok(response), budget),
                Ok(None) => failed("Aborted", "the exec was aborted".to_owned()),
                Err(error) => settle(Err(error), budget),
            }
        };
        promise(env, run.instrument(span))
    }

    /// Terminates the cell of the exec started with cancel token `token` (once it is
    /// admitted), or ends the wait started with it; `false` when no such call is running.
    #[napi]
    pub fn cancel(&self, token: u32) -> bool {
        match lock(&self.cancels).remove(&token) {
            Some(cancel) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Waits on a running cell until it completes or yields again.
    #[napi(ts_return_type = "Promise<Outcome>")]
    /// `cancel`: a token for `cancel()`, which ends the observation (the cell goes on, and
    /// what it output is kept for the next one): the promise then settles with an
    /// `Aborted` error.
    pub fn wait<'env>(
        &self,
        env: &'env Env,
        cell_id: String,
        yield_time_ms: Option<u32>,
        cancel: Option<u32>,
        traceparent: Option<String>,
    ) -> napi::Result<Object<'env>> {
        if let Some(closed) = self.closed_outcome() {
            return promise(env, async move { closed });
        }
        let session = Arc::clone(&self.session);
        let request = WaitRequest {
            cell_id: CellId::from(cell_id.as_str()),
            yield_time_ms: yield_time_ms.map(u64::from),
        };
        let token = CancellationToken::new();
        if let Some(id) = cancel {
            lock(&self.cancels).insert(id, token.clone());
        }
        let cancels = Arc::clone(&self.cancels);
        let span = call_span("wait", traceparent.as_deref());
        let run = async move {
            let outcome = tokio::select! {
                answer = session.wait(request) => settle(answer, DEFAULT_MAX_OUTPUT_TOKENS),
                () = token.cancelled() => failed("Aborted", "the wait was aborted".to_owned()),
            };
            if let Some(id) = cancel {
                lock(&cancels).remove(&id);
            }
            outcome
        };
        promise(env, run.instrument(span))
    }

    /// Stops a running cell; the result holds what it output and had not returned.
    #[napi(ts_return_type = "Promise<Outcome>")]
    pub fn terminate<'env>(
        &self,
        env: &'env Env,
        cell_id: String,
        traceparent: Option<String>,
    ) -> napi::Result<Object<'env>> {
        if let Some(closed) = self.closed_outcome() {
            return promise(env, async move { closed });
        }
        let session = Arc::clone(&self.session);
        let cell_id = CellId::from(cell_id.as_str());
        let span = call_span("terminate", traceparent.as_deref());
        let run =
            async move { settle(session.terminate(cell_id).await, DEFAULT_MAX_OUTPUT_TOKENS) };
        promise(env, run.instrument(span))
    }

    /// Gives nested call `token` its answer: the result's JSON text when `ok`, else the
    /// message the cell's call rejects with. `false` when nothing waits for it.
    #[napi]
    pub fn answer(&self, token: u32, ok: bool, text: String) -> bool {
        let answer = if ok {
            Ok(JsonText::new(text))
        } else {
            Err(ToolError::new(text))
        };
        self.answers.give(token, answer)
    }

    /// Whether any of the session's tools waits on a person's approval (a JS tool's
    /// `needsApproval`, a tools file's `approval = "always"`).
    #[napi]
    pub fn needs_approvals(&self) -> bool {
        self.delegate.needs_approvals()
    }

    /// This session's calls that wait on a person, oldest first (none for a session
    /// without a state directory: it keeps no approvals).
    #[napi(ts_return_type = "Promise<ApprovalsOutcome>")]
    pub fn pending_approvals<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        if self.closed.load(Ordering::SeqCst) {
            return promise(env, async {
                approvals::failed("SessionClosed", CLOSED.to_owned())
            });
        }
        let kept = self.stored.clone();
        promise(env, async move {
            match kept {
                Some(kept) => approvals::listed(kept.pending_approvals().await),
                None => approvals::listed(Ok(Vec::new())),
            }
        })
    }

    /// Decides this session's waiting call `id`, once: approves it (with `input`, the
    /// edited input's JSON text, sent instead of the cell's) or, given `deny`, denies it
    /// with that message. The promise settles with the approval as decided.
    #[napi(ts_return_type = "Promise<ApprovalsOutcome>")]
    pub fn decide<'env>(
        &self,
        env: &'env Env,
        id: String,
        input: Option<String>,
        deny: Option<String>,
    ) -> napi::Result<Object<'env>> {
        if self.closed.load(Ordering::SeqCst) {
            return promise(env, async {
                approvals::failed("SessionClosed", CLOSED.to_owned())
            });
        }
        let kept = self.stored.clone();
        promise(env, async move {
            let Some(kept) = kept else {
                return approvals::decided(Err(ApprovalError::NotWaiting(id)));
            };
            approvals::decided(match approvals::decision(input, deny) {
                Decision::Approve { input } => kept.approve(&id, input).await,
                Decision::Deny { message } => kept.deny(&id, &message).await,
            })
        })
    }

    /// The committed stored values, as a JSON object.
    #[napi]
    pub fn stored_values(&self) -> String {
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

    /// The `exec` and `wait` tool specs of this session's tools, as JSON.
    #[napi]
    pub fn tool_specs(&self) -> String {
        specs_json(&self.descriptions, &self.unavailable)
    }

    /// Where the session's cells run now (e.g. `pid 1234`), once it has run one.
    #[napi]
    pub fn runtime(&self) -> Option<String> {
        HostedSession::runtime(&self.runtime_session)
    }

    /// Whether the session is closed.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Shuts the session down (running cells stop); with `delete`, a kept session is also
    /// deleted from its state directory (`remove`). Idempotent.
    #[napi(ts_return_type = "Promise<Outcome>")]
    pub fn close<'env>(&self, env: &'env Env, remove: Option<bool>) -> napi::Result<Object<'env>> {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        let session = Arc::clone(&self.session);
        let kept = self.stored.clone().filter(|_| remove == Some(true));
        let delegate = Arc::clone(&self.delegate);
        promise(env, async move {
            match kept {
                Some(kept) => kept.close().await,
                None if first => session.shutdown().await,
                None => {}
            }
            // The cells are stopped: the JS dispatcher (and the tools it holds, and this
            // session's JS object through it) is let go, or it would live as long as Node.
            delegate.release();
            Outcome {
                result: None,
                error: None,
            }
        })
    }
}

impl NativeSession {
    fn closed_outcome(&self) -> Option<Outcome> {
        self.closed
            .load(Ordering::SeqCst)
            .then(|| failed("SessionClosed", CLOSED.to_owned()))
    }
}

/// Runs `request` until its cell completes or yields. The cell is terminated when
/// `cancel` fires: at once if it was admitted, else as soon as it is; the exec is then
/// `None`, aborted. A cancel that lands after the cell completed terminates nothing, and
/// the cell's answer stands, as a `wait`'s does.
async fn exec_until(
    session: Arc<dyn CodeModeSession>,
    request: ExecRequest,
    cancel: CancellationToken,
) -> Result<Option<CellResponse>, SessionError> {
    let admitted: Arc<(Mutex<Option<CellId>>, tokio::sync::Notify)> = Arc::default();
    let seen = Arc::clone(&admitted);
    let hooks = ExecHooks::default().on_admitted(move |cell_id| {
        *lock(&seen.0) = Some(cell_id.clone());
        seen.1.notify_one();
    });
    let run = session.execute_with(request, hooks);
    tokio::pin!(run);
    tokio::select! {
        started = &mut run => return started.map(|started| Some(started.initial_response)),
        () = cancel.cancelled() => {}
    }
    let cell_id = loop {
        if let Some(cell_id) = lock(&admitted.0).clone() {
            break cell_id;
        }
        tokio::select! {
            started = &mut run => return started.map(|started| Some(started.initial_response)),
            () = admitted.1.notified() => {}
        }
    };
    let (started, terminated) = tokio::join!(run, session.terminate(cell_id));
    let response = started?.initial_response;
    // The cell was still running for the terminate to end: the abort ended it.
    let aborted = matches!(terminated, Ok(CellResponse::Terminated { .. }));
    Ok((!aborted).then_some(response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use code_mode_protocol::{
        BoxFuture, PendingOutcome, StartedCell, StartedPendingCell, StoredValues, WaitRequest,
    };

    /// A session whose one cell is admitted at once and completes when it is terminated,
    /// and whose `terminate` answers `stopped`: how the cell had ended when the terminate
    /// reached it.
    struct Scripted {
        finish: tokio::sync::Notify,
        stopped: CellResponse,
    }

    impl CodeModeSession for Scripted {
        fn execute_with(
            &self,
            _: ExecRequest,
            hooks: ExecHooks,
        ) -> BoxFuture<'_, Result<StartedCell, SessionError>> {
            Box::pin(async move {
                let cell_id = CellId::new(1);
                hooks.admit(&cell_id);
                self.finish.notified().await;
                let initial_response = CellResponse::result(cell_id.clone(), Vec::new(), None);
                Ok(StartedCell {
                    cell_id,
                    initial_response,
                })
            })
        }

        fn terminate(&self, _: CellId) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
            Box::pin(async move {
                self.finish.notify_one();
                Ok(self.stopped.clone())
            })
        }

        fn wait_with(
            &self,
            _: WaitRequest,
            _: Option<CancellationToken>,
        ) -> BoxFuture<'_, Result<CellResponse, SessionError>> {
            unreachable!("exec_until never waits")
        }

        fn interrupt(&self) -> BoxFuture<'_, Result<Vec<CellId>, SessionError>> {
            unreachable!("exec_until never interrupts")
        }

        fn execute_to_pending(
            &self,
            _: ExecRequest,
        ) -> BoxFuture<'_, Result<StartedPendingCell, SessionError>> {
            unreachable!("exec_until never runs to pending")
        }

        fn wait_to_pending(
            &self,
            _: CellId,
        ) -> BoxFuture<'_, Result<PendingOutcome, SessionError>> {
            unreachable!("exec_until never runs to pending")
        }

        fn shutdown(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }

        fn stored_values(&self) -> StoredValues {
            StoredValues::default()
        }
    }

    /// `exec_until` with its cancel fired before it starts, on a session whose terminate
    /// answers `stopped`.
    fn cancelled_exec(stopped: CellResponse) -> Option<CellResponse> {
        let session = Arc::new(Scripted {
            finish: tokio::sync::Notify::new(),
            stopped,
        });
        let cancel = CancellationToken::new();
        cancel.cancel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime
            .block_on(exec_until(session, ExecRequest::new("text(1)"), cancel))
            .expect("the exec answers")
    }

    /// An abort is an abort only when the terminate found the cell running; one that
    /// found it completed leaves the exec its result.
    #[test]
    fn an_abort_ends_the_exec_only_when_it_terminated_the_cell() {
        let cell = CellId::new(1);
        let terminated = CellResponse::Terminated {
            cell_id: cell.clone(),
            content_items: Vec::new(),
            wall_time: std::time::Duration::ZERO,
        };
        assert_eq!(cancelled_exec(terminated), None, "terminated by the abort");
        let completed = CellResponse::result(cell.clone(), Vec::new(), None);
        assert_eq!(
            cancelled_exec(completed.clone()),
            Some(completed),
            "completed before the abort reached it"
        );
        assert_eq!(
            cancelled_exec(CellResponse::missing(cell)),
            Some(CellResponse::result(CellId::new(1), Vec::new(), None)),
            "gone before the abort reached it"
        );
    }
}
