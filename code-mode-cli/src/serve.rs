//! `code-mode serve --jsonl`: sessions driven by JSON lines on stdin/stdout, for hosts not
//! written in Rust. Every message and field is documented in `docs/jsonl.md`.
//!
//! Requests (`{"id": ..., "method": ..., "params": {...}}`) run concurrently and are each
//! answered by one line with the same `id` and either `result` or `error`. The server
//! also sends events (`{"event": ...}`): tool calls the client answers with a
//! `tool_result` message, their cancellations, notifications and closed cells.
//!
//! With `--tools FILE`/`--builtin SETS`, the file's command tools, the built-ins and the
//! file's MCP servers' tools are added to every `exec` and answered by the driver itself;
//! only the client's own tools become `tool_call` events.
//!
//! Parameters are parsed into typed structs (an error names the field); session calls run
//! through the protocol crate's one adapter ([`SessionCall::run`]) and are answered in the
//! shared JSON forms ([`code_mode_surface::json`]). The driver runs on a
//! current-thread runtime, so a session's answers and its later events reach stdout in the
//! order the session produced them (see [`serve`]).

mod approvals;
mod state;

use crate::Failure;
use crate::session::{RuntimeArgs, Sessions};
use crate::tools::{BeforeCall, OnInterrupt, ToolSet};
use approvals::JsonlApprovals;
use code_mode_host::{DurableSession, HeldSession, RestoredCall};
use code_mode_internal::sync::lock;
use code_mode_internal::{CallHooks, SessionCall, SessionReply};
use code_mode_protocol::ApprovalNeed;
use code_mode_protocol::CallId;
use code_mode_protocol::{
    AdmittedHook, BoxFuture, CellId, CellLimits, CodeModeSession, CodeModeSessionDelegate,
    ExecRequest, JsonText, NestedToolCall, SessionError, SessionOptions, StoredValues,
    ToolDefinition, ToolError, ToolKind, WaitRequest,
};
use code_mode_state::{AnswerRecord, CallRecord, StoreLocation, StoreOptions};
use code_mode_surface::json::reply_json;
use code_mode_surface::{
    Catalog, ToolDescription, exec_description_of, exec_tool_spec_of, wait_tool_spec,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use state::{Durability, ResumeToken, state_error};
use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A line on its way to stdout, with the session whose state it depends on (with a state
/// directory, that session is written before the line goes out).
type Line = (Option<String>, String);

/// Lines on their way to stdout, in the order they are sent.
#[derive(Clone)]
struct Out(mpsc::UnboundedSender<Line>);

impl Out {
    /// Sends a line that depends on the session it names (`"session"`), if any.
    fn send(&self, value: Value) {
        let session = value
            .get("session")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.send_for(session, &value);
    }

    /// Sends a line that depends on `session`'s state.
    fn send_for(&self, session: Option<String>, value: &Value) {
        let _ = self.0.send((session, value.to_string()));
    }
}

/// A request error: a stable code and a message.
struct ErrorReply {
    code: &'static str,
    message: String,
}

impl ErrorReply {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn to_json(&self, id: Value) -> Value {
        json!({ "id": id, "error": { "code": self.code, "message": self.message } })
    }
}

impl From<SessionError> for ErrorReply {
    fn from(error: SessionError) -> Self {
        let code = match &error {
            SessionError::ShuttingDown => "shutting_down",
            SessionError::BusyObserver(_) => "busy_observer",
            SessionError::AlreadyTerminating(_) => "already_terminating",
            SessionError::RuntimeLost(_) => "runtime_lost",
            SessionError::Runtime(_) => "runtime",
        };
        Self::new(code, error.to_string())
    }
}

/// Parses a method's parameters; the error names the field at fault (`limits.heap_bytes`).
fn params<T: DeserializeOwned>(params: Value) -> Result<T, ErrorReply> {
    serde_path_to_error::deserialize(params).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("`{path}`: {inner}")
        };
        ErrorReply::new("invalid_params", message)
    })
}

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenSessionParams {
    max_yield_time_ms: Option<u64>,
    #[serde(default)]
    limits: LimitsParams,
    /// Whether cells hand their isolates to the session's next cells (default true).
    reuse_isolates: Option<bool>,
    /// The session's cap on stored values, in bytes of keys and JSON text.
    max_stored_bytes: Option<u64>,
    /// How long a cell waits on nothing but its nested calls before it hibernates.
    hibernate_after_ms: Option<u64>,
    /// `false`: the session's cells never hibernate (default true).
    hibernate: Option<bool>,
    /// The committed stored values to open the session with (as `stored_values` returned
    /// them): key → any JSON value.
    #[serde(default)]
    stored_values: serde_json::Map<String, Value>,
}

/// Each field is optional; an absent one keeps its default.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsParams {
    heap_bytes: Option<u64>,
    cpu_budget_ms: Option<u64>,
    output_bytes: Option<u64>,
    max_in_flight_tool_calls: Option<u64>,
    max_tool_payload_bytes: Option<u64>,
}

impl LimitsParams {
    fn into_limits(self) -> CellLimits {
        let defaults = CellLimits::default();
        CellLimits {
            heap_bytes: self.heap_bytes.unwrap_or(defaults.heap_bytes),
            cpu_budget_ms: self.cpu_budget_ms.unwrap_or(defaults.cpu_budget_ms),
            output_bytes: self.output_bytes.unwrap_or(defaults.output_bytes),
            max_in_flight_tool_calls: self
                .max_in_flight_tool_calls
                .unwrap_or(defaults.max_in_flight_tool_calls),
            max_tool_payload_bytes: self
                .max_tool_payload_bytes
                .unwrap_or(defaults.max_tool_payload_bytes),
        }
    }
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
enum KindParam {
    #[default]
    Function,
    Freeform,
}

/// `{"name", "description"?, "kind"?, "input_schema"?, "output_schema"?, "deferred"?,
/// "approval"?, "approval_reason"?}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolParams {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    kind: KindParam,
    input_schema: Option<Value>,
    output_schema: Option<Value>,
    #[serde(default)]
    deferred: bool,
    /// `"always"`: each call waits on a person's approval (with a state store).
    #[serde(default)]
    approval: ApprovalParam,
    approval_reason: Option<String>,
}

/// Whether a client's tool's calls wait on a person.
#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ApprovalParam {
    #[default]
    Never,
    Always,
}

impl ToolParams {
    fn kind(&self) -> ToolKind {
        match self.kind {
            KindParam::Function => ToolKind::Function,
            KindParam::Freeform => ToolKind::Freeform,
        }
    }

    fn definition(&self) -> ToolDefinition {
        self.description().definition()
    }

    fn description(&self) -> ToolDescription {
        ToolDescription {
            name: self.name.clone(),
            description: self.description.clone(),
            kind: self.kind(),
            input_schema: self.input_schema.clone(),
            output_schema: self.output_schema.clone(),
            deferred: self.deferred,
            ..ToolDescription::default()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescribeParams {
    #[serde(default)]
    tools: Vec<ToolParams>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecParams {
    session: String,
    source: String,
    #[serde(default)]
    tools: Vec<ToolParams>,
    yield_time_ms: Option<u64>,
    /// The model's id of the exec tool call; every `tool_call` event of the cell carries
    /// it as `exec_call_id`.
    tool_call_id: Option<String>,
}

impl ExecParams {
    /// The request, with the client's tools and then the driver's own (`--tools`).
    fn request(&self, own: &ToolSet) -> ExecRequest {
        let mut tools: Vec<ToolDefinition> =
            self.tools.iter().map(ToolParams::definition).collect();
        tools.extend(own.definitions());
        let mut request = ExecRequest::new(self.source.clone()).with_tools(tools);
        request.yield_time_ms = self.yield_time_ms;
        request.tool_call_id = self.tool_call_id.clone();
        request
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    session: String,
    cell_id: CellId,
    yield_time_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CellParams {
    session: String,
    cell_id: CellId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionParams {
    session: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeParams {
    session: String,
    resume_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolResultParams {
    call: String,
    result: Option<Value>,
    error: Option<String>,
}

/// A session method's parameters as the session it names and the call to run on it.
fn session_call(
    method: &str,
    given: Value,
    own: &ToolSet,
) -> Result<Option<(String, SessionCall)>, ErrorReply> {
    Ok(Some(match method {
        "exec" => {
            let exec: ExecParams = params(given)?;
            let request = exec.request(own);
            (exec.session, SessionCall::Execute(request))
        }
        "execute_to_pending" => {
            let exec: ExecParams = params(given)?;
            let request = exec.request(own);
            (exec.session, SessionCall::ExecuteToPending(request))
        }
        "wait" => {
            let wait: WaitParams = params(given)?;
            let mut request = WaitRequest::new(wait.cell_id);
            request.yield_time_ms = wait.yield_time_ms;
            (wait.session, SessionCall::Wait(request))
        }
        "terminate" => {
            let cell: CellParams = params(given)?;
            let call = SessionCall::Terminate {
                cell_id: cell.cell_id,
            };
            (cell.session, call)
        }
        "wait_to_pending" => {
            let cell: CellParams = params(given)?;
            let call = SessionCall::WaitToPending {
                cell_id: cell.cell_id,
            };
            (cell.session, call)
        }
        "interrupt" => {
            let session: SessionParams = params(given)?;
            (session.session, SessionCall::Interrupt)
        }
        "shutdown" => {
            let session: SessionParams = params(given)?;
            (session.session, SessionCall::Shutdown)
        }
        _ => return Ok(None),
    }))
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// A tool call waiting for the client's answer: whose it is, and where the answer goes.
struct PendingCall {
    session: String,
    cell_id: CellId,
    call: CallId,
    reply: oneshot::Sender<Result<Value, String>>,
}

/// Tool calls waiting for the client's answer, by call id (`c1`, `c2`, ...).
type PendingCalls = Arc<Mutex<HashMap<String, PendingCall>>>;

/// The observations (`exec`, `wait`) in flight, by session and cell: what `preempt`
/// cancels. An `exec`'s is registered when its cell is admitted.
type Observations = Arc<Mutex<HashMap<(String, CellId), Arc<CancellationToken>>>>;

struct Server {
    out: Out,
    observations: Observations,
    /// Where sessions run.
    provider: Sessions,
    sessions: Mutex<HashMap<String, Arc<dyn CodeModeSession>>>,
    calls: PendingCalls,
    /// The driver's own tools (`--tools`, `--builtin`).
    tools: ToolSet,
    /// One `resume_session` at a time: two for one session (a right and a wrong token, or
    /// the same twice) never both take it, and a release never ends a lease a right
    /// token just took.
    resuming: tokio::sync::Mutex<()>,
    /// With `--state-dir`: where the sessions are kept across restarts.
    state: Option<Arc<Durability>>,
    /// With a state store: the calls that wait on a person.
    approvals: Option<Arc<JsonlApprovals>>,
    /// Itself, for its sessions' delegates (their own tools' calls are written first).
    me: Weak<Server>,
}

/// The delegate of a served session: tool calls and notifications become events, written
/// before the delegate's first `.await`, so they come out in the order the session starts
/// them.
struct JsonlDelegate {
    session: String,
    out: Out,
    calls: PendingCalls,
    tools: ToolSet,
    /// With a state directory: the write before a call of the driver's own tools.
    before_call: Option<BeforeCall>,
    /// The client's tools whose calls wait on a person, as its `exec`s gave them.
    needs: Arc<Mutex<HashMap<String, ApprovalNeed>>>,
}

impl CodeModeSessionDelegate for JsonlDelegate {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        if self.tools.has(&call.tool_name) {
            return self
                .tools
                .answer_after(self.before_call.as_ref(), call, cancel);
        }
        call.answer_with(|call| async move {
            let id = fresh_id('c');
            let (reply, answer) = oneshot::channel();
            let pending = PendingCall {
                session: self.session.clone(),
                cell_id: call.cell_id.clone(),
                call: call.call_id,
                reply,
            };
            lock(&self.calls).insert(id.clone(), pending);
            self.out
                .send(tool_call_event(&id, &self.session, &call, false));
            tokio::select! {
                answer = answer => answer
                    .unwrap_or_else(|_| Err("the client went away".to_owned()))
                    .map_err(ToolError::new),
                () = cancel.cancelled() => {
                    lock(&self.calls).remove(&id);
                    self.out.send_for(
                        Some(self.session.clone()),
                        &json!({ "event": "tool_cancelled", "call": id }),
                    );
                    Err(ToolError::cancelled())
                }
            }
        })
    }

    fn notify(
        &self,
        cell_id: CellId,
        text: String,
        _cancel: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.out.send(json!({
                "event": "notify", "session": self.session, "cell_id": cell_id, "text": text,
            }));
        })
    }

    fn cell_closed(&self, cell_id: &CellId) {
        self.out
            .send(json!({ "event": "cell_closed", "session": self.session, "cell_id": cell_id }));
    }

    fn approval(&self, call: &NestedToolCall) -> Option<ApprovalNeed> {
        if self.tools.has(&call.tool_name) {
            return self.tools.approval(&call.tool_name);
        }
        lock(&self.needs).get(&call.tool_name).cloned()
    }
}

impl Server {
    fn session(&self, id: &str) -> Result<Arc<dyn CodeModeSession>, ErrorReply> {
        lock(&self.sessions).get(id).cloned().ok_or_else(|| {
            let hint = if self.state.is_some() {
                " (a kept session is taken back with `resume_session` and its `resume_token`)"
            } else {
                ""
            };
            ErrorReply::new("unknown_session", format!("no open session `{id}`{hint}"))
        })
    }

    fn open_session(&self, given: Value) -> Result<Value, ErrorReply> {
        // What a restarted server opens the session again with: the options without the
        // stored values (those are kept as they change).
        let mut options_text = given.clone();
        if let Some(map) = options_text.as_object_mut() {
            map.remove("stored_values");
        }
        let given: OpenSessionParams = params(given)?;
        let stored_values: StoredValues = given
            .stored_values
            .iter()
            .map(|(key, value)| (key.clone(), Arc::from(value.to_string())))
            .collect();
        let options = session_options(given);
        if let Some(state) = &self.state {
            state
                .admit()
                .map_err(|error| ErrorReply::new("state_full", error))?;
        }
        let id = fresh_id('s');
        let token = ResumeToken::fresh();
        let kept = state::kept_options(&options_text, &token);
        self.start_session(&id, options, stored_values, kept);
        Ok(match &self.state {
            Some(_) => json!({ "session": id, "resume_token": token.text() }),
            None => json!({ "session": id }),
        })
    }

    /// Opens session `id` (new, or kept by an earlier process); with a state directory the
    /// session is kept there from now on. Returns it, for its restored cells.
    fn start_session(
        &self,
        id: &str,
        options: SessionOptions,
        stored_values: StoredValues,
        options_text: String,
    ) -> Option<Arc<dyn DurableSession>> {
        let needs = Arc::new(Mutex::new(HashMap::new()));
        let jsonl = Arc::new(JsonlDelegate {
            session: id.to_owned(),
            out: self.out.clone(),
            calls: Arc::clone(&self.calls),
            tools: self.tools.clone(),
            before_call: self.state.as_ref().map(|_| self.before_call(id)),
            needs: Arc::clone(&needs),
        });
        let delegate: Arc<dyn CodeModeSessionDelegate> = match &self.approvals {
            Some(approvals) => approvals.gate(id, jsonl, needs, &self.out),
            None => jsonl,
        };
        if let Some(state) = &self.state
            && let Some(durable) =
                self.provider
                    .open_durable(delegate.clone(), options.clone(), stored_values.clone())
        {
            state.keep(id, Arc::clone(&durable), options_text);
            let session: Arc<dyn CodeModeSession> = durable.clone();
            lock(&self.sessions).insert(id.to_owned(), session);
            return Some(durable);
        }
        let session: Arc<dyn CodeModeSession> = Arc::from(self.provider.open_with_values(
            delegate,
            options,
            stored_values,
        ));
        lock(&self.sessions).insert(id.to_owned(), session);
        None
    }
}

/// A session's options from `open_session`'s parameters.
fn session_options(given: OpenSessionParams) -> SessionOptions {
    SessionOptions {
        max_yield_time_ms: given.max_yield_time_ms,
        limits: given.limits.into_limits(),
        reuse_isolates: given.reuse_isolates.unwrap_or(true),
        max_stored_bytes: given
            .max_stored_bytes
            .unwrap_or(code_mode_protocol::stored::DEFAULT_MAX_STORED_BYTES),
        surface: code_mode_protocol::Surface::Contract,
        hibernate_after_ms: given.hibernate.unwrap_or(true).then(|| {
            given
                .hibernate_after_ms
                .unwrap_or(code_mode_protocol::session::DEFAULT_HIBERNATE_AFTER_MS)
        }),
    }
}

impl Server {
    /// The `exec` description and both tool specs for the given tools, as a model would
    /// see them (`code-mode describe`), their input schemas rendered as declarations.
    fn describe(&self, given: Value) -> Result<Value, ErrorReply> {
        let given: DescribeParams = params(given)?;
        let mut tools: Vec<ToolDescription> =
            given.tools.iter().map(ToolParams::description).collect();
        tools.extend(self.tools.descriptions());
        let unavailable = self.tools.unavailable();
        let catalog = Catalog {
            tools: &tools,
            unavailable: &unavailable,
        };
        Ok(json!({
            "description": exec_description_of(catalog),
            "tools": [exec_tool_spec_of(catalog).to_json(), wait_tool_spec().to_json()],
        }))
    }

    /// `stored_values`: the session's committed stored values, key → JSON value (what
    /// `open_session` takes back as `stored_values`).
    fn stored_values(&self, given: Value) -> Result<Value, ErrorReply> {
        let given: SessionParams = params(given)?;
        let session = self.session(&given.session)?;
        let values: serde_json::Map<String, Value> = session
            .stored_values()
            .into_iter()
            .map(|(key, json)| {
                // Values are JSON text from V8 or a restored map; text that is not JSON
                // (only a Rust caller can restore such) is given as a string.
                let value = JsonText::new(json.as_ref())
                    .to_value()
                    .unwrap_or_else(|_| Value::String(json.as_ref().to_owned()));
                (key, value)
            })
            .collect();
        Ok(json!({ "stored_values": values }))
    }

    /// `preempt`: the observation in flight on the cell returns `yielded` at once.
    fn preempt(&self, given: Value) -> Result<Value, ErrorReply> {
        let cell: CellParams = params(given)?;
        self.session(&cell.session)?;
        let token = lock(&self.observations)
            .get(&(cell.session, cell.cell_id))
            .cloned();
        let preempted = token.is_some_and(|token| {
            token.cancel();
            true
        });
        Ok(json!({ "preempted": preempted }))
    }

    async fn handle(&self, id: &Value, method: &str, given: Value) -> Result<Value, ErrorReply> {
        if matches!(method, "describe" | "exec" | "execute_to_pending") {
            self.tools.settled().await;
        }
        match method {
            "open_session" => return self.open_session(given),
            "describe" => return self.describe(given),
            "preempt" => return self.preempt(given),
            "stored_values" => return self.stored_values(given),
            "resume_session" => return self.resume_session(given).await,
            "list_approvals" => return self.jsonl_approvals()?.list(given).await,
            "approve" | "deny" => return self.jsonl_approvals()?.decide(method, given).await,
            "exec" | "execute_to_pending" => self.note_tools(&given),
            _ => {}
        }
        let Some((session_id, call)) = session_call(method, given, &self.tools)? else {
            return Err(ErrorReply::new(
                "unknown_method",
                format!("unknown method `{method}`"),
            ));
        };
        let session = self.session(&session_id)?;
        let shutdown = matches!(call, SessionCall::Shutdown);
        let preempt = Arc::new(CancellationToken::new());
        let waited = match &call {
            SessionCall::Wait(request) => Some(request.cell_id.clone()),
            _ => None,
        };
        let hooks = self.observation_hooks(id, &session_id, &call, &preempt);
        let reply = call.run_with(&*session, hooks).await;
        let reply = match &self.approvals {
            Some(approvals) => reply.map(|reply| match reply {
                SessionReply::Started(mut started) => {
                    started.initial_response =
                        approvals.ended(&session_id, started.initial_response);
                    SessionReply::Started(started)
                }
                SessionReply::Cell(response) => {
                    SessionReply::Cell(approvals.ended(&session_id, response))
                }
                other => other,
            }),
            None => reply,
        };
        let observed = match &reply {
            Ok(SessionReply::Started(started)) => Some(started.cell_id.clone()),
            _ => waited,
        };
        if let Some(cell_id) = observed {
            let key = (session_id.clone(), cell_id);
            let mut observations = lock(&self.observations);
            // Only this call's own entry: a later observation of the cell may have
            // registered its own since.
            if observations
                .get(&key)
                .is_some_and(|token| Arc::ptr_eq(token, &preempt))
            {
                observations.remove(&key);
            }
        }
        let reply = reply?;
        if shutdown {
            lock(&self.sessions).remove(&session_id);
            if let Some(state) = &self.state {
                state.forget(&session_id);
            }
            if let Some(approvals) = &self.approvals {
                let stopping = self.state.as_ref().is_some_and(|state| state.is_closed());
                approvals.closed(&session_id, !stopping).await;
            }
        }
        Ok(reply_json(&reply))
    }

    /// The hooks of an observation: its preempt signal, registered under its cell (for an
    /// `exec`, by the admission hook, which also announces the cell with an `admitted`
    /// event).
    fn observation_hooks(
        &self,
        id: &Value,
        session_id: &str,
        call: &SessionCall,
        preempt: &Arc<CancellationToken>,
    ) -> CallHooks {
        match call {
            SessionCall::Execute(_) => {
                let out = self.out.clone();
                let observations = Arc::clone(&self.observations);
                let (request, session) = (id.clone(), session_id.to_owned());
                let token = Arc::clone(preempt);
                let approvals = self.approvals.clone();
                let admitted: AdmittedHook = Arc::new(move |cell_id: &CellId| {
                    lock(&observations)
                        .insert((session.clone(), cell_id.clone()), Arc::clone(&token));
                    if let Some(approvals) = &approvals {
                        approvals.observe(&session, cell_id, (*token).clone());
                    }
                    // It depends on nothing kept: a cell is written only once a line that
                    // depends on it goes out (a call, a yield, the answer), so an exec whose
                    // cell calls nothing and stores nothing waits for no disk write.
                    let event = json!({
                        "event": "admitted", "request": request, "session": session, "cell_id": cell_id,
                    });
                    out.send_for(None, &event);
                });
                CallHooks {
                    preempt: Some((**preempt).clone()),
                    admitted: Some(admitted),
                }
            }
            SessionCall::Wait(request) => {
                lock(&self.observations).insert(
                    (session_id.to_owned(), request.cell_id.clone()),
                    Arc::clone(preempt),
                );
                if let Some(approvals) = &self.approvals {
                    approvals.observe(session_id, &request.cell_id, (**preempt).clone());
                }
                CallHooks {
                    preempt: Some((**preempt).clone()),
                    admitted: None,
                }
            }
            _ => CallHooks::default(),
        }
    }

    /// Hands a client's `tool_result` to the waiting call. With a state directory the
    /// answer is recorded with the next write, before anything the cell does with it goes
    /// out (a restored call's answer: before the cell gets it).
    fn tool_result(&self, given: Value) -> Result<(), ErrorReply> {
        let given: ToolResultParams = params(given)?;
        let result = match (given.result, given.error) {
            (_, Some(error)) => Err(error),
            (result, None) => Ok(result.unwrap_or(Value::Null)),
        };
        // Unknown calls were cancelled meanwhile (a `tool_cancelled` event is on its way).
        let pending = lock(&self.calls).remove(&given.call);
        match (&self.state, pending) {
            (None, Some(pending)) => {
                let _ = pending.reply.send(result);
            }
            (Some(state), Some(pending)) => {
                let record = AnswerRecord {
                    session: pending.session.clone(),
                    cell_id: pending.cell_id.clone(),
                    call: pending.call,
                    result: answer_text(&result),
                };
                // Queued before the cell gets the answer: the write behind the next line
                // the cell causes commits it too, or after it.
                state.record_soon(&self.out, &given.call, record);
                let _ = pending.reply.send(result);
            }
            (Some(state), None) => state.answer_restored(&self.out, &given.call, &result),
            (None, None) => {}
        }
        Ok(())
    }

    /// Writes the sessions `only` names (all when `None`) as they are now, with the calls
    /// they wait on the client for and the runtime generation reached.
    async fn checkpoint(
        &self,
        state: &Durability,
        only: Option<&HashSet<String>>,
    ) -> Result<(), String> {
        let named = |session: &String| only.is_none_or(|only| only.contains(session));
        let calls = lock(&self.calls)
            .iter()
            .filter(|(_, pending)| named(&pending.session))
            .map(|(id, pending)| CallRecord {
                session: pending.session.clone(),
                cell_id: pending.cell_id.clone(),
                call: pending.call,
                front_id: id.clone(),
            })
            .collect();
        state
            .write(self.provider.generations_used(), calls, &named)
            .await
    }

    /// With a state directory: writes the sessions `only` names (all when `None`) as they
    /// are now, before the lines that depend on them go out (a line depends on its own
    /// session's state, and on the counters). `Some` error text when it could not be
    /// written.
    async fn persist(&self, only: Option<&HashSet<String>>) -> Option<String> {
        let state = self.state.as_ref()?;
        if state.is_closed() {
            // The last checkpoint was written, or failed for good: a line that depends on a
            // session it did not write never goes out.
            return state.unwritten_at_close();
        }
        self.checkpoint(state, only).await.err()
    }

    /// The write before a call of the driver's own tools: everything served, the call in
    /// its cell's journal, goes to the state directory first, so that a restart does not
    /// make the call again. A write that fails is tried again (the call waits, as the
    /// lines do) until it succeeds; once the driver stops, no call is made.
    fn before_call(&self, session: &str) -> BeforeCall {
        let me = Weak::clone(&self.me);
        let session: Arc<HashSet<String>> = Arc::new(HashSet::from([session.to_owned()]));
        Arc::new(move || {
            let (me, session) = (Weak::clone(&me), Arc::clone(&session));
            Box::pin(async move {
                let mut pause = PERSIST_RETRY_MIN;
                loop {
                    let server = me.upgrade().ok_or_else(|| STOPPING.to_owned())?;
                    if server.state.as_ref().is_some_and(|state| state.is_closed()) {
                        return Err(STOPPING.to_owned());
                    }
                    let Some(message) = server.persist(Some(&session)).await else {
                        return Ok(());
                    };
                    tracing::error!("{message}; a call of the driver's tools waits for it");
                    drop(server);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(PERSIST_RETRY_MAX);
                }
            })
        })
    }

    /// Opens again one session an earlier process kept (`held`, with its calls and
    /// answers) and deals with the calls its cells wait on: an answer that came is given,
    /// a call of the driver's own tools (which died with that process) fails or, for a
    /// tool with `on_interrupt = "retry"`, runs again, and every other is the client's to
    /// answer: announced again with its id, marked `restored`. The error names what did
    /// not read.
    async fn reopen_one(&self, state: &Arc<Durability>, held: &HeldSession) -> Result<(), String> {
        let record = &held.record;
        let mut given: Value = serde_json::from_str(&record.options)
            .map_err(|error| format!("the kept options of session {}: {error}", record.id))?;
        state::strip_token(&mut given);
        let given: OpenSessionParams = params(given).map_err(|error| {
            format!(
                "the kept options of session {}: {}",
                record.id, error.message
            )
        })?;
        let Some(session) = self.start_session(
            &record.id,
            session_options(given),
            record.state.stored.clone(),
            record.options.clone(),
        ) else {
            return Ok(());
        };
        // The client's tools that need an approval, known before its next `exec`: a
        // restored call of one goes back behind the gate, never out unasked.
        if let Some(approvals) = &self.approvals {
            approvals.note_tools(&record.id, state::kept_needs(&record.options));
        }
        let cells = record.state.cells.len();
        let calls = held.restore(session.as_ref());
        tracing::debug!(session = %record.id, cells, unanswered = calls.len(), "session restored from the state directory");
        for restored in calls {
            let restored = match &self.approvals {
                Some(approvals) => match approvals.restore(&record.id, restored).await {
                    Some(restored) => restored,
                    None => continue,
                },
                None => restored,
            };
            let call = &restored.call;
            if self.tools.has(&call.tool_name) {
                // A call that needed an approval (taken to be sent, it may have run) is
                // never sent again, whatever its tool says.
                let approved = self.tools.approval(&call.tool_name).is_some();
                match self.tools.on_interrupt(&call.tool_name) {
                    OnInterrupt::Retry if !approved => {
                        self.run_again(state, &record.id, restored);
                    }
                    _ => restored.answer(Err(ToolError::new(
                        code_mode_protocol::texts::TOOL_LOST_IN_RESTART,
                    ))),
                }
            } else {
                let id = held
                    .front_id(&call.cell_id, call.call_id)
                    .map_or_else(|| fresh_id('c'), str::to_owned);
                // The argument as the client first saw it: parsed (it was checked then).
                let event = match call.clone().parsed() {
                    Ok(parsed) => tool_call_event(&id, &record.id, &parsed, true),
                    Err(_) => tool_call_event(&id, &record.id, call, true),
                };
                self.out.send(event);
                state.await_client(id, record.id.clone(), restored);
            }
        }
        Ok(())
    }

    /// `resume_session`: takes back a session an earlier server kept (`--state-dir`), or
    /// one a server sharing the store kept and that died (`--state-url`, once its lease
    /// ran out), for the client that holds its resume token: it is opened again here, and
    /// each call its cells still wait on is announced again (`restored`), before this
    /// answer. A wrong token, or no such session, gets the same `unknown_session` answer;
    /// a session taken over for a wrong token is let go at once, untouched.
    async fn resume_session(&self, given: Value) -> Result<Value, ErrorReply> {
        let given: ResumeParams = params(given)?;
        let unknown = || {
            ErrorReply::new(
                "unknown_session",
                format!("no kept session `{}` with that resume token", given.session),
            )
        };
        let Some(state) = &self.state else {
            return Err(ErrorReply::new(
                "unknown_session",
                "this server keeps no sessions (start it with --state-dir or --state-url)",
            ));
        };
        let _one_at_a_time = self.resuming.lock().await;
        if lock(&self.sessions).contains_key(&given.session) {
            return if state.owns(&given.session, &given.resume_token) {
                Ok(json!({ "session": given.session }))
            } else {
                Err(unknown())
            };
        }
        let (held, taken_over) = match state.take(&given.session) {
            Some(held) => (held, false),
            None => {
                let taken = state
                    .take_over(&given.session)
                    .await
                    .map_err(|error| ErrorReply::new("state_error", error))?;
                (taken.ok_or_else(unknown)?, true)
            }
        };
        if !state::token_matches(&held.record.options, &given.resume_token) {
            tracing::debug!(session = %given.session, "resume_session with a wrong token refused");
            if taken_over {
                state.release(&given.session).await;
            } else {
                state.put_back(held);
            }
            return Err(unknown());
        }
        self.reopen_one(state, &held)
            .await
            .map_err(|error| ErrorReply::new("state_error", error))?;
        Ok(json!({ "session": given.session }))
    }
}

impl Server {
    /// The approvals, or the error of a server that keeps none.
    fn jsonl_approvals(&self) -> Result<&JsonlApprovals, ErrorReply> {
        self.approvals.as_deref().ok_or_else(|| {
            ErrorReply::new(
                "no_approvals",
                "this server keeps no approvals (start it with --state-dir or --state-url)",
            )
        })
    }

    /// An `exec`'s tools: which of the client's need an approval (read leniently here;
    /// the request itself is checked as it runs).
    fn note_tools(&self, given: &Value) {
        let (Some(approvals), Some(session)) = (
            &self.approvals,
            given.get("session").and_then(Value::as_str),
        ) else {
            return;
        };
        let Some(Ok(tools)) = given
            .get("tools")
            .map(|tools| serde_json::from_value::<Vec<ToolParams>>(tools.clone()))
        else {
            return;
        };
        let needs = tools.into_iter().map(|tool| {
            let need = (tool.approval == ApprovalParam::Always).then_some(ApprovalNeed {
                reason: tool.approval_reason,
            });
            (tool.name, need)
        });
        let all = approvals.note_tools(session, needs);
        if let (Some(state), Some(all)) = (&self.state, all) {
            state.keep_needs(session, &all);
        }
    }
}

impl Server {
    /// Runs again a call of the driver's own tools that a restart cut short (its tool says
    /// `on_interrupt = "retry"`); its answer is recorded before the cell gets it.
    fn run_again(&self, state: &Arc<Durability>, session: &str, restored: RestoredCall) {
        let (tools, state, out) = (self.tools.clone(), Arc::clone(state), self.out.clone());
        let session = session.to_owned();
        tokio::spawn(async move {
            let call = restored.call.clone();
            tracing::info!(tool = %call.tool_name, cell = %call.cell_id, "a call cut short by the restart runs again");
            let result = tools.answer(call.clone(), CancellationToken::new()).await;
            let label = format!("{}/{}", call.cell_id, call.call_id);
            let record = AnswerRecord {
                session,
                cell_id: call.cell_id.clone(),
                call: call.call_id,
                result: result.clone(),
            };
            state.record_then(&out, &label, record, move |recorded| {
                restored.answer(if recorded {
                    result
                } else {
                    Err(ToolError::new(
                        "the tool ran again after the restart, and its answer could not be kept",
                    ))
                });
            });
        });
    }
}

/// A client's answer as the cell gets it.
fn answer_text(result: &Result<Value, String>) -> Result<JsonText, ToolError> {
    match result {
        Ok(value) => Ok(JsonText::from_value(value)),
        Err(error) => Err(ToolError::new(error.clone())),
    }
}

/// The `tool_call` event of a call (`restored`: announced again after a restart).
fn tool_call_event<T: serde::Serialize>(
    id: &str,
    session: &str,
    call: &NestedToolCall<T>,
    restored: bool,
) -> Value {
    let mut event = json!({
        "event": "tool_call",
        "call": id,
        "session": session,
        "cell_id": call.cell_id,
        "call_id": call.call_id,
        "tool": call.tool_name,
        "kind": call.kind.as_str(),
        "input": call.input,
        "exec_call_id": call.exec_call_id,
    });
    if restored && let Some(map) = event.as_object_mut() {
        map.insert("restored".to_owned(), Value::Bool(true));
    }
    event
}

/// How long the writer waits before it tries again a checkpoint that failed, at first and
/// at most (doubling in between).
const PERSIST_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const PERSIST_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the lines to stdout in order, a batch at a time: with a state directory, the
/// checkpoint of everything served goes to disk before a batch goes out, so nothing the
/// client reads is lost to a restart, and no call it is told of is told again after one.
/// A write that fails holds the batch back (a `state_error` event says why, once per
/// cause) and is tried again until it succeeds: nothing goes out that the disk lacks.
async fn write_lines(
    mut lines: mpsc::UnboundedReceiver<Line>,
    server: Weak<Server>,
    state: Option<Arc<Durability>>,
) {
    let mut stdout = tokio::io::stdout();
    let mut batch = Vec::new();
    let mut sessions = HashSet::new();
    while let Some(line) = lines.recv().await {
        batch.push(line);
        let mut pause = PERSIST_RETRY_MIN;
        let mut said = None;
        loop {
            while let Ok(line) = lines.try_recv() {
                batch.push(line);
            }
            let Some(server) = server.upgrade() else {
                // The server stopped: its last checkpoint decides, as below.
                if let Some(message) = state.as_ref().and_then(|state| state.unwritten_at_close()) {
                    drop_unwritten(&mut batch, &message);
                }
                break;
            };
            sessions.clear();
            sessions.extend(batch.iter().filter_map(|(session, _)| session.clone()));
            let Some(message) = server.persist(Some(&sessions)).await else {
                break;
            };
            if server.state.as_ref().is_some_and(|state| state.is_closed()) {
                drop_unwritten(&mut batch, &message);
                break;
            }
            if said.as_ref() != Some(&message) {
                tracing::error!("{message}; the lines that depend on it are held back");
                let event = state_error(&message).to_string();
                if stdout.write_all(event.as_bytes()).await.is_err()
                    || stdout.write_all(b"\n").await.is_err()
                    || stdout.flush().await.is_err()
                {
                    return;
                }
                said = Some(message);
            }
            drop(server);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(PERSIST_RETRY_MAX);
        }
        for (_, line) in batch.drain(..) {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
            {
                return;
            }
        }
        let _ = stdout.flush().await;
    }
}

/// At end of input, after the last checkpoint failed (`message`) and none follows: what
/// depends on a session is dropped, never sent unwritten.
fn drop_unwritten(batch: &mut Vec<Line>, message: &str) {
    let before = batch.len();
    batch.retain(|(session, _)| session.is_none());
    tracing::error!(
        lines = before - batch.len(),
        "{message}; at end of input, the lines that depend on it are not sent"
    );
}

/// Why a call of the driver's own tools is not made while the driver stops.
const STOPPING: &str = "the driver is stopping";

/// A fresh id of 128 random bits from the system's secure generator, in hex after
/// `prefix` (`s` a session, `c` a call; `m` an MCP session): unguessable, and never the
/// same on two servers that share a store.
pub(crate) fn fresh_id(prefix: char) -> String {
    let mut bytes = [0_u8; 16];
    state::random(&mut bytes);
    let mut id = String::with_capacity(33);
    id.push(prefix);
    for byte in bytes {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// Serves JSON lines until end of input.
///
/// Ordering: run this on a current-thread runtime. A session hands an answer to its caller
/// and starts the cell's later delegate events only once the caller took the answer; on
/// one thread the request task then writes the answer before the session runs again, so a
/// `notify` made right after `yield_control()` comes out after the `exec` answer that
/// yielded.
pub async fn serve(
    runtime: &RuntimeArgs,
    tools: ToolSet,
    runtime_log: String,
    state_dir: Option<(StoreLocation, StoreOptions)>,
) -> Result<(), Failure> {
    let (server, lines_rx) = Server::start(runtime, tools, runtime_log, state_dir)?;
    let writer = tokio::spawn(write_lines(
        lines_rx,
        Arc::downgrade(&server),
        server.state.clone(),
    ));
    let tasks = TaskTracker::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|error| Failure::usage(format!("cannot read stdin: {error}")))?
    {
        if !line.trim().is_empty() {
            server.take_line(&line, &tasks);
        }
    }
    server.finish(tasks).await;
    let _ = writer.await;
    Ok(())
}

impl Server {
    /// The server over the providers `runtime` names, with the sessions a state directory
    /// kept (held until their clients resume them), and the receiver of the lines it writes.
    fn start(
        runtime: &RuntimeArgs,
        tools: ToolSet,
        runtime_log: String,
        state_dir: Option<(StoreLocation, StoreOptions)>,
    ) -> Result<(Arc<Server>, mpsc::UnboundedReceiver<Line>), Failure> {
        let state = match state_dir {
            Some(_) if runtime.in_process => {
                return Err(Failure::usage(
                    "--state-dir keeps each running cell's journal on the host's side of the runtime process; it cannot be used with --in-process",
                ));
            }
            Some((dir, options)) => {
                let approvals = code_mode_host::Approvals::open(&dir, &options)
                    .map_err(|error| Failure::runtime(error.to_string()))?;
                let state = Durability::open(&dir, options)
                    .map_err(|error| Failure::runtime(error.to_string()))?;
                Some((Arc::new(state), Arc::new(JsonlApprovals::new(approvals))))
            }
            None if tools.needs_approvals() => {
                return Err(Failure::usage(
                    "a tool of the tools file needs approvals (`approval = \"always\"`): they are kept in a state store, so give --state-dir or --state-url",
                ));
            }
            None => None,
        };
        let (state, approvals) = state.unzip();
        let generations = state.as_ref().map_or(0, |state| state.generations_before());
        let provider =
            Sessions::after(runtime, &runtime_log, generations).map_err(Failure::runtime)?;
        let (lines_tx, lines_rx) = mpsc::unbounded_channel::<Line>();
        let server = Arc::new_cyclic(|me| Server {
            me: Weak::clone(me),
            out: Out(lines_tx),
            observations: Arc::new(Mutex::new(HashMap::new())),
            provider,
            sessions: Mutex::new(HashMap::new()),
            calls: Arc::new(Mutex::new(HashMap::new())),
            tools,
            resuming: tokio::sync::Mutex::new(()),
            state,
            approvals,
        });
        Ok((server, lines_rx))
    }

    /// One line of input: a `tool_result` is taken at once, in order; any other request
    /// runs on a task of its own (`tasks`) under its span, and answers when it is done.
    fn take_line(self: &Arc<Self>, line: &str, tasks: &TaskTracker) {
        // A client may send what JavaScript's `JSON.stringify` writes, lone surrogate
        // escapes included: those become U+FFFD, as in every tool result.
        let line = code_mode_protocol::model::replace_lone_surrogate_escapes(line);
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(error) => {
                self.out
                    .send(ErrorReply::new("invalid_json", error.to_string()).to_json(Value::Null));
                return;
            }
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            self.out.send(
                ErrorReply::new("invalid_request", "a message needs a string `method`").to_json(id),
            );
            return;
        };
        let given = message.get("params").cloned().unwrap_or_else(|| json!({}));
        if method == "tool_result" {
            if let Err(error) = self.tool_result(given) {
                self.out.send(error.to_json(id));
            }
            return;
        }
        // A request's span, parented on its `traceparent` field when it has a
        // well-formed one (a malformed value is ignored).
        let span = tracing::info_span!(
            "code_mode.jsonl.request",
            rpc.method = %method,
            session.id = tracing::field::Empty,
        );
        // A session id is half of what takes a session back: named only when debug
        // logging is on (never in info lines or an info-level export).
        if tracing::enabled!(tracing::Level::DEBUG)
            && let Some(session) = given.get("session").and_then(Value::as_str)
        {
            span.record("session.id", session);
        }
        code_mode_trace::adopt_traceparent(
            &span,
            message.get("traceparent").and_then(Value::as_str),
        );
        let server = Arc::clone(self);
        let session = given
            .get("session")
            .and_then(Value::as_str)
            .map(str::to_owned);
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                let reply = match server.handle(&id, &method, given).await {
                    Ok(result) => json!({ "id": id, "result": result }),
                    Err(error) => error.to_json(id),
                };
                // The request's session, or the one it opened.
                let session =
                    session.or_else(|| reply["result"]["session"].as_str().map(str::to_owned));
                server.out.send_for(session, &reply);
            },
            span,
        ));
    }

    /// End of input. With a state directory the sessions are kept as they are now (the
    /// next process goes on with them), and what the shutdown does to them is not; then
    /// every session is shut down and the requests still running end.
    async fn finish(self: Arc<Self>, tasks: TaskTracker) {
        if let Some(state) = &self.state {
            let unwritten = self.persist(None).await;
            if let Some(message) = &unwritten {
                self.out.send(state_error(message));
            }
            state.close(unwritten);
            if let Some(approvals) = &self.approvals {
                approvals.stop();
            }
            // Kept, not held: on a shared store another server takes each at once.
            state.let_go().await;
        }
        let sessions: Vec<_> = lock(&self.sessions)
            .drain()
            .map(|(_, session)| session)
            .collect();
        for session in sessions {
            session.shutdown().await;
        }
        tasks.close();
        tasks.wait().await;
        self.tools.stop().await;
    }
}
