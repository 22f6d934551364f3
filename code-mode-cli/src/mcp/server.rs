//! `code-mode mcp`: code mode as an MCP server, over stdio (the default) or streamable HTTP
//! (`--http ADDR`). Two tools: `exec` (`{"code": string}`, the pragma allowed on its
//! first line) and `wait` (the contract's arguments), with the model-facing descriptions;
//! results are the formatter's text plus image content. Each MCP connection (an HTTP MCP
//! session) has one code-mode session, so stored values live as long as the connection.
//! Cell notifications become MCP progress notifications when the observing request asked
//! for progress, and log messages otherwise. A cancelled MCP request preempts its
//! observation (contract 8.4), never the cell; since MCP sends no response to a cancelled
//! request, the output the preempted observation returned is held and comes first in the
//! cell's next `wait`; so is the output of one whose HTTP stream nobody reads at its end
//! ([`super::observing`]).

use super::blocks::content;
use super::observing::{Begun, Observations};
use super::replay::Readers;
use super::state::{Attached, McpState};
use super::tasks::{self, Tasks};
use crate::Failure;
use crate::session::Sessions;
use crate::tools::{BeforeCall, CliDelegate, NotificationSink, ToolSet};
use code_mode_host::WaitingCalls;
use code_mode_internal::sync::lock;
use code_mode_protocol::{
    BoxFuture, CellId, CellResponse, CodeModeSession, CodeModeSessionDelegate, ExecHooks,
    ExecRequest, SessionOptions, WaitRequest,
};
use code_mode_surface::{
    Catalog, EXEC_TOOL_NAME, ToolSpec, WAIT_TOOL_NAME, exec_code_argument_description_of,
    format_response, parse_exec_source, parse_wait_arguments, wait_tool_spec,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock,
    CreateTaskResult, ElicitResult, ErrorData, GetTaskParams, GetTaskResult, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ProtocolVersion, ServerCapabilities, ServerConfig, Tool, UpdateTaskParams,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio_util::sync::CancellationToken;

/// What every connection shares: the nested tools, where sessions run, the options each
/// session is opened with, the connected clients (told when the tool list changes).
pub(super) struct Shared {
    tools: ToolSet,
    sessions: Sessions,
    session: SessionOptions,
    clients: Mutex<Vec<Weak<Connection>>>,
    /// With `--state-dir` (over HTTP): where the sessions are kept across restarts.
    pub(super) state: Option<Arc<McpState>>,
}

impl Shared {
    /// The two tools, `exec`'s description built from the nested tools as they are now.
    fn tool_list(&self) -> Vec<Tool> {
        let (tools, unavailable) = (self.tools.descriptions(), self.tools.unavailable());
        let description = exec_code_argument_description_of(Catalog {
            tools: &tools,
            unavailable: &unavailable,
        });
        let exec_schema = json!({
            "type": "object",
            "properties": {
                "code": {
                    "type": "string",
                    "description": "The JavaScript (or TypeScript) source of the script; its first line may be an `// @exec: {...}` pragma."
                }
            },
            "required": ["code"],
            "additionalProperties": false
        });
        let (wait_description, wait_schema) = match wait_tool_spec() {
            ToolSpec::Function {
                description,
                parameters,
                ..
            } => (description, parameters),
            ToolSpec::Freeform { description, .. } => (description, json!({"type": "object"})),
        };
        vec![
            Tool::new(EXEC_TOOL_NAME, description, object(exec_schema)),
            Tool::new(WAIT_TOOL_NAME, wait_description, object(wait_schema)),
        ]
    }

    /// Tells every connected client that `exec`'s description changed.
    fn tools_changed(&self) {
        let clients: Vec<Arc<Connection>> = lock(&self.clients)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for client in clients {
            if let Some(peer) = lock(&client.peer).clone() {
                tokio::spawn(async move {
                    let _ = peer.notify_tool_list_changed().await;
                });
            }
        }
    }
}

fn object(value: Value) -> Arc<serde_json::Map<String, Value>> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(serde_json::Map::new()),
    }
}

/// Where a connection's cell notifications go: its peer, and the progress token of the
/// request observing now (if it asked for progress).
#[derive(Default)]
struct Listener {
    progress: Option<(ProgressToken, u64)>,
}

/// One MCP connection: its session and its peer.
struct Connection {
    peer: Mutex<Option<Peer<RoleServer>>>,
    listener: Mutex<Listener>,
    /// The observations (`exec`, `wait`) in flight, and what unread ones took.
    observations: Observations,
}

/// Sends a cell's notification to the MCP client of `connection`: as progress of the
/// `exec` or `wait` call in flight when the client asked for progress, else as a log
/// message.
async fn notify_client(connection: Weak<Connection>, cell_id: CellId, text: String) {
    let Some(connection) = connection.upgrade() else {
        return;
    };
    let Some(peer) = lock(&connection.peer).clone() else {
        return;
    };
    let progress = {
        let mut listener = lock(&connection.listener);
        listener.progress.as_mut().map(|(token, count)| {
            *count += 1;
            (token.clone(), *count)
        })
    };
    match progress {
        Some((token, count)) => {
            let params = ProgressNotificationParam::new(token, count as f64)
                .with_message(format!("[cell {cell_id}] {text}"));
            let _ = peer.notify_progress(params).await;
        }
        None => {
            #[expect(
                deprecated,
                reason = "log messages are how clients of protocol versions before 2026-07-28 see notifications"
            )]
            let params = rmcp::model::LoggingMessageNotificationParam::new(
                rmcp::model::LoggingLevel::Info,
                json!({"cell_id": cell_id, "text": text}),
            )
            .with_logger("code-mode");
            #[expect(deprecated, reason = "see above")]
            let _ = peer.notify_logging_message(params).await;
        }
    }
}

/// Which write of an MCP session [`session_writer`] makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Before a call of the server's tools, written patiently, as before an answer, so
    /// that after a restart the call is known to have been made and is not made again;
    /// once the server stops, no such call is made.
    BeforeCall,
    /// As it is now (after a slice a task followed).
    Now,
}

/// With a state directory: a write of the MCP session as it is now (its cells' journals,
/// its MCP tasks), as `write` says.
fn session_writer(
    shared: &Arc<Shared>,
    mcp_id: &Arc<OnceLock<String>>,
    write: Write,
) -> Option<BeforeCall> {
    shared.state.as_ref()?;
    let (shared, mcp_id) = (Arc::downgrade(shared), Arc::clone(mcp_id));
    Some(Arc::new(move || {
        let (shared, mcp_id) = (Weak::clone(&shared), Arc::clone(&mcp_id));
        Box::pin(async move {
            let Some(shared) = shared.upgrade() else {
                return if write == Write::BeforeCall {
                    Err("the server is stopping".to_owned())
                } else {
                    Ok(())
                };
            };
            let (Some(state), Some(id)) = (&shared.state, mcp_id.get()) else {
                return Ok(());
            };
            let generations = shared.sessions.generations_used();
            if write == Write::BeforeCall {
                state.persist_call(id, generations).await
            } else {
                state.persist(id, generations).await
            }
        })
    }))
}

/// With a state directory: each answer of the server's tools is recorded as soon as it
/// comes (queued before its cell gets it, written within milliseconds), so that a cell
/// that finishes on it keeps its output through a crash before the client's next request.
fn after_answer(
    shared: &Arc<Shared>,
    mcp_id: &Arc<OnceLock<String>>,
) -> Option<crate::tools::AfterAnswer> {
    shared.state.as_ref()?;
    let (shared, mcp_id) = (Arc::downgrade(shared), Arc::clone(mcp_id));
    Some(Arc::new(move |cell_id, call, result| {
        let (Some(shared), Some(id)) = (shared.upgrade(), mcp_id.get()) else {
            return;
        };
        if let Some(state) = &shared.state {
            state.record_answer_soon(id, cell_id, call, result);
        }
    }))
}

/// rmcp's server handler: one per MCP connection (per HTTP session). Dropping it drops
/// its code-mode session, which shuts the session down.
pub(super) struct CodeModeServer {
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    delegate: Arc<dyn CodeModeSessionDelegate>,
    /// Its code-mode session: opened with the handler, or with a state directory at the
    /// first call, which names the MCP session (the one kept by an earlier process, if
    /// any, is taken back then).
    session: OnceLock<Arc<dyn CodeModeSession>>,
    /// The MCP session id it was opened under, with a state directory.
    mcp_id: Arc<OnceLock<String>>,
    /// Its calls that wait on a person, which end their cells' observations.
    waiting: Arc<WaitingCalls>,
    /// Its MCP tasks: cells the server follows for a client that declared the extension.
    tasks: Arc<Tasks>,
}

impl Drop for CodeModeServer {
    fn drop(&mut self) {
        self.tasks.stop.cancel();
        if let (Some(state), Some(id)) = (&self.shared.state, self.mcp_id.get()) {
            state.forget(id);
        }
    }
}

impl CodeModeServer {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        let connection = Arc::new(Connection {
            peer: Mutex::new(None),
            listener: Mutex::new(Listener::default()),
            observations: Observations::default(),
        });
        lock(&shared.clients).retain(|client| client.strong_count() > 0);
        lock(&shared.clients).push(Arc::downgrade(&connection));
        let client = Arc::downgrade(&connection);
        let notifications: NotificationSink = Arc::new(move |cell_id, text| {
            Box::pin(notify_client(Weak::clone(&client), cell_id, text))
        });
        let mcp_id = Arc::new(OnceLock::new());
        let delegate: Arc<dyn CodeModeSessionDelegate> = Arc::new(
            CliDelegate::new(shared.tools.clone(), notifications)
                .with_before_call(session_writer(shared, &mcp_id, Write::BeforeCall))
                .with_after_answer(after_answer(shared, &mcp_id)),
        );
        let server = Self {
            shared: Arc::clone(shared),
            connection,
            delegate,
            session: OnceLock::new(),
            mcp_id,
            waiting: Arc::new(WaitingCalls::default()),
            tasks: Arc::default(),
        };
        if shared.state.is_none() {
            let _ = server.session.set(server.open_plain());
        }
        server
    }

    fn open_plain(&self) -> Arc<dyn CodeModeSession> {
        Arc::from(
            self.shared
                .sessions
                .open(Arc::clone(&self.delegate), self.shared.session.clone()),
        )
    }

    /// The handler's code-mode session, opened by the first call that needs it.
    fn session(&self, context: &RequestContext<RoleServer>) -> &Arc<dyn CodeModeSession> {
        self.session.get_or_init(|| {
            let id = context
                .extensions
                .get::<http::request::Parts>()
                .and_then(|parts| parts.headers.get("mcp-session-id"))
                .and_then(|value| value.to_str().ok());
            if let (Some(state), Some(id)) = (&self.shared.state, id) {
                let _ = self.mcp_id.set(id.to_owned());
                let sessions = &self.shared.sessions;
                if let Some(session) = state.open_session(
                    id,
                    |delegate, options, stored| sessions.open_durable(delegate, options, stored),
                    Arc::clone(&self.delegate),
                    self.shared.session.clone(),
                    &self.shared.tools,
                    Attached {
                        watch: Arc::new(super::asking::Asking {
                            waiting: Arc::clone(&self.waiting),
                            peer: {
                                let connection = Arc::downgrade(&self.connection);
                                Box::new(move || lock(&connection.upgrade()?.peer).clone())
                            },
                            approvals: Arc::clone(state.approvals()),
                        }),
                        tasks: &self.tasks,
                    },
                ) {
                    // The cells of tasks kept with the session are followed on (and
                    // one whose cancel was kept is terminated).
                    for (cell, cancelling) in self.tasks.unfinished() {
                        if cancelling {
                            terminate(&session, cell.clone());
                        }
                        self.follow(&session, cell);
                    }
                    return session;
                }
            }
            self.open_plain()
        })
    }

    /// With a state directory: this MCP session as it is now goes to disk before an
    /// answer goes out. A write that fails is tried again for the keeper's patience (a disk
    /// that fills up for a moment loses nothing), then fails the request: an answer that a
    /// restart could not give back (and whose calls a restart would run again) does not
    /// go out.
    async fn persist(&self) -> Result<(), ErrorData> {
        let (Some(state), Some(id)) = (&self.shared.state, self.mcp_id.get()) else {
            return Ok(());
        };
        state
            .persist(id, self.shared.sessions.generations_used())
            .await
            .map_err(|error| {
                ErrorData::internal_error(
                    format!(
                        "code-mode state could not be written: {error}; this answer is withheld, since a restart could not give it back"
                    ),
                    None,
                )
            })
    }

    /// Runs one observation (`exec`, or a `wait` on `cell`, made with `preempt` as its
    /// preempt signal) and turns its response into a result.
    async fn observe(
        &self,
        observation: BoxFuture<'_, Result<CellResponse, code_mode_protocol::SessionError>>,
        observed: (CancellationToken, Option<&CellId>),
        max_tokens: u64,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(
            match self
                .observe_raw(observation, observed, context, false)
                .await?
            {
                Err(error) => CallToolResult::error(vec![ContentBlock::text(error.to_string())]),
                Ok(response) => {
                    CallToolResult::success(content(&format_response(&response, max_tokens)))
                }
            },
        )
    }

    /// Runs one observation, as [`Self::observe`], and returns its response, output held
    /// for the cell included. A cancelled request preempts it; what an observation whose
    /// answer nobody receives returned (its request cancelled, or over HTTP its stream
    /// unread) is held for the cell's next one ([`Observations`]). The response of a cell
    /// whose call waits on a person says which, and why, unless it goes to a task
    /// (`for_task`), whose input requests say it.
    async fn observe_raw(
        &self,
        observation: BoxFuture<'_, Result<CellResponse, code_mode_protocol::SessionError>>,
        (preempt, cell): (CancellationToken, Option<&CellId>),
        context: &RequestContext<RoleServer>,
        for_task: bool,
    ) -> Result<Result<CellResponse, code_mode_protocol::SessionError>, ErrorData> {
        let readers = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Readers>());
        let observations = &self.connection.observations;
        let observing = observations
            .begin(Begun {
                request: &context.ct,
                preempt: &preempt,
                cell,
                readers,
            })
            .await;
        let outcome = match cell.and_then(|cell| observations.take_end(cell)) {
            // An unread observation took the cell's end: this `wait` answers with it (and
            // holds it again if this answer is not read either).
            Some(ended) => Ok(ended),
            None => {
                lock(&self.connection.listener).progress =
                    context.meta.get_progress_token().map(|token| (token, 0));
                let mut observation = observation;
                let outcome = tokio::select! {
                    outcome = &mut observation => outcome,
                    () = context.ct.cancelled() => {
                        preempt.cancel();
                        observation.await
                    }
                };
                let outcome = outcome.map(|response| {
                    if for_task {
                        self.waiting.unobserve(response.cell_id());
                        response
                    } else {
                        self.waiting.ended(response)
                    }
                });
                lock(&self.connection.listener).progress = None;
                outcome
            }
        };
        observing.grace().await;
        if observing.unread() {
            if let Ok(response) = outcome {
                observations.hold(response);
            }
            let why = if context.ct.is_cancelled() {
                "the request was cancelled"
            } else {
                "nobody read this answer (the connection broke)"
            };
            return Err(ErrorData::internal_error(
                format!("{why}; the script keeps running (call `wait` for its output)"),
                None,
            ));
        }
        Ok(outcome.map(|response| observations.with_held_output(response)))
    }

    /// `exec` (to a client that declared MCP Tasks, a cell still running when the call
    /// would return becomes a task the server follows: [`super::tasks`]).
    async fn exec(
        &self,
        arguments: Option<serde_json::Map<String, Value>>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let parsed = match exec_source(arguments) {
            Ok(parsed) => parsed,
            Err(refused) => {
                return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                    ContentBlock::text(refused),
                ])));
            }
        };
        let max_tokens = parsed.max_output_tokens_or_default();
        self.shared.tools.settled().await;
        let mut request =
            ExecRequest::new(parsed.source).with_tools(self.shared.tools.definitions());
        request.yield_time_ms = parsed.yield_time_ms;
        // The MCP request's id is the exec call's id: nested calls carry it to the tools
        // (contract §8.5).
        request.tool_call_id = Some(context.id.to_string());
        let preempt = CancellationToken::new();
        // A call that waits on a person ends the observation through a token of its own:
        // the request's preempt signal also says the observation was let go.
        let ends = preempt.child_token();
        let (waiting, observed) = (Arc::clone(&self.waiting), ends.clone());
        let hooks = ExecHooks::default()
            .with_preempt(ends)
            .on_admitted(move |cell_id| waiting.observe(cell_id, observed.clone()));
        let session = self.session(context);
        let observation = Box::pin(async move {
            session
                .execute_with(request, hooks)
                .await
                .map(|started| started.initial_response)
        });
        let for_task = context
            .client_capabilities()
            .is_some_and(|capabilities| capabilities.supports_tasks());
        if !for_task {
            return self
                .observe(observation, (preempt, None), max_tokens, context)
                .await
                .map(CallToolResponse::Complete);
        }
        Ok(
            match self
                .observe_raw(observation, (preempt, None), context, true)
                .await?
            {
                Err(error) => {
                    CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(
                        error.to_string(),
                    )]))
                }
                Ok(CellResponse::Yielded {
                    cell_id,
                    content_items,
                    wall_time,
                }) => {
                    let task = self
                        .tasks
                        .begin(&cell_id, content_items, wall_time, max_tokens);
                    self.follow(self.session(context), cell_id);
                    CallToolResponse::Task(CreateTaskResult::new(task))
                }
                Ok(ended) => CallToolResponse::Complete(CallToolResult::success(content(
                    &format_response(&ended, max_tokens),
                ))),
            },
        )
    }

    /// Follows `cell` of `session` for its task, writing the session after each slice.
    fn follow(&self, session: &Arc<dyn CodeModeSession>, cell: CellId) {
        let persist: tasks::Persist = session_writer(&self.shared, &self.mcp_id, Write::Now)
            .unwrap_or_else(|| Arc::new(|| Box::pin(async { Ok(()) })));
        tokio::spawn(tasks::follow(
            Arc::clone(&self.tasks),
            Arc::clone(session),
            cell,
            persist,
        ));
    }

    async fn wait(
        &self,
        arguments: Option<serde_json::Map<String, Value>>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let text = Value::Object(arguments.unwrap_or_default()).to_string();
        let arguments = match parse_wait_arguments(&text) {
            Ok(arguments) => arguments,
            Err(error) => {
                return Ok(CallToolResult::error(vec![ContentBlock::text(
                    error.to_string(),
                )]));
            }
        };
        let preempt = CancellationToken::new();
        let session = self.session(context);
        let cell = arguments.cell_id.clone();
        // A cell a task follows is the task's: its output goes to the task's result.
        if self.tasks.follows(&cell) {
            return Ok(CallToolResult::error(vec![ContentBlock::text(
                tasks::followed(&cell),
            )]));
        }
        let observation: BoxFuture<'_, _> = if arguments.terminate {
            Box::pin(session.terminate(arguments.cell_id))
        } else {
            let ends = preempt.child_token();
            self.waiting.observe(&arguments.cell_id, ends.clone());
            let mut request = WaitRequest::new(arguments.cell_id);
            request.yield_time_ms = Some(arguments.yield_time_ms);
            Box::pin(session.wait_with(request, Some(ends)))
        };
        let observed = (preempt, Some(&cell));
        self.observe(observation, observed, arguments.max_tokens, context)
            .await
    }

    fn remember_peer(&self, peer: &Peer<RoleServer>) {
        let mut current = lock(&self.connection.peer);
        if current.is_none() {
            *current = Some(peer.clone());
        }
    }
}

/// Terminates `cell` of `session`, in the background (its task's follower sees it end).
fn terminate(session: &Arc<dyn CodeModeSession>, cell: CellId) {
    let session = Arc::clone(session);
    tokio::spawn(async move {
        if let Err(error) = session.terminate(cell).await {
            tracing::warn!(%error, "a task's cell could not be terminated");
        }
    });
}

/// `exec`'s arguments: its source, parsed, or the text that refuses them.
fn exec_source(
    arguments: Option<serde_json::Map<String, Value>>,
) -> Result<code_mode_surface::ParsedExec, String> {
    let code = match arguments
        .as_ref()
        .and_then(|arguments| arguments.get("code"))
    {
        Some(Value::String(code)) => code.clone(),
        _ => {
            return Err(
                "exec expects {\"code\": string}: the script's JavaScript source".to_owned(),
            );
        }
    };
    if let Some(extra) = arguments
        .iter()
        .flat_map(|arguments| arguments.keys())
        .find(|key| *key != "code")
    {
        return Err(format!("exec takes only `code`, not `{extra}`"));
    }
    parse_exec_source(&code).map_err(|error| error.to_string())
}

impl ServerHandler for CodeModeServer {
    #[expect(
        deprecated,
        reason = "logging is how clients before 2026-07-28 see notifications"
    )]
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_logging()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("code-mode", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Code mode: call `exec` with a JavaScript program that calls the nested tools (`await tools.<name>(args)`), filters, and prints only what matters; `wait` follows a script that is still running.",
        )
    }

    // Up to 2025-11-25: the versions with a connection (and so a session) of their own;
    // stored values live as long as it.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.remember_peer(&context.peer);
        self.shared.tools.settled().await;
        Ok(ListToolsResult::with_all_items(self.shared.tool_list()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.remember_peer(&context.peer);
        // The call's span (OpenTelemetry's MCP conventions), parented on the request's
        // `_meta.traceparent` (SEP-414) when it has a well-formed one.
        let span = match request.name.as_ref() {
            EXEC_TOOL_NAME => tracing::info_span!(
                "tools/call exec",
                mcp.method.name = "tools/call",
                gen_ai.tool.name = EXEC_TOOL_NAME,
            ),
            _ => tracing::info_span!(
                "tools/call wait",
                mcp.method.name = "tools/call",
                gen_ai.tool.name = %request.name,
            ),
        };
        code_mode_trace::adopt_traceparent(&span, context.meta.get_traceparent());
        let response = match request.name.as_ref() {
            EXEC_TOOL_NAME => {
                tracing::Instrument::instrument(self.exec(request.arguments, &context), span)
                    .await?
            }
            WAIT_TOOL_NAME => CallToolResponse::Complete(
                tracing::Instrument::instrument(self.wait(request.arguments, &context), span)
                    .await?,
            ),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool `{other}` (the tools are `exec` and `wait`)"),
                    None,
                ));
            }
        };
        // With a store, a task goes out once it is kept: a restart, or the replica that
        // takes the session over, follows its cell on. One that could not be kept is
        // dropped and its cell terminated: no client could ever reach it.
        if let Err(error) = self.persist().await {
            if let CallToolResponse::Task(created) = &response {
                let cell = CellId::parse(&created.task.task_id);
                self.tasks.drop_task(&cell);
                terminate(self.session(&context), cell);
            }
            return Err(error);
        }
        Ok(response)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        self.remember_peer(&context.peer);
        // A session kept by an earlier process comes back with its tasks.
        self.session(&context);
        self.tasks
            .get(&request.task_id, |cell| self.waiting.of(cell))
            .map(GetTaskResult::new)
            .map_err(|error| ErrorData::invalid_params(error.to_string(), None))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.remember_peer(&context.peer);
        self.session(&context);
        let refused = |error: String| ErrorData::invalid_params(error, None);
        let asked = self
            .tasks
            .asked(&request.task_id, request.input_responses.keys(), |cell| {
                self.waiting.of(cell)
            })
            .map_err(|error| refused(error.to_string()))?;
        // Every answer is read before any is taken: a malformed one decides nothing.
        let mut decisions = Vec::new();
        for approval in asked {
            let answer = request.input_responses[&approval.id].clone();
            let answer: ElicitResult = serde_json::from_value(answer).map_err(|error| {
                refused(format!(
                    "the answer to `{}` is not an elicitation result: {error}",
                    approval.id
                ))
            })?;
            // A dismissed question leaves the call waiting (the operator decides).
            if let Some(decision) = super::asking::decision(answer) {
                decisions.push((approval, decision));
            }
        }
        let Some(state) = &self.shared.state else {
            return Err(refused("no call waits on a person here".to_owned()));
        };
        let principal = super::principal::requester().map(|principal| principal.to_string());
        for (approval, decision) in decisions {
            let principal = principal.as_deref().or(approval.principal.as_deref());
            state
                .approvals()
                .decide(&approval.id, decision, principal)
                .await
                .map_err(|error| refused(error.to_string()))?;
        }
        Ok(())
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.remember_peer(&context.peer);
        let session = Arc::clone(self.session(&context));
        let cell = self
            .tasks
            .cancel(&request.task_id)
            .map_err(|error| ErrorData::invalid_params(error.to_string(), None))?;
        // The cancel is kept (a restart terminates the cell); the task's follower sees the
        // cell end, and the task is cancelled.
        let kept = self.persist().await;
        terminate(&session, cell);
        kept
    }
}

impl Shared {
    /// Starts the nested tools (MCP servers included) and shares them with every
    /// connection that `sessions` opens sessions for, with `session` as their options.
    pub(super) async fn start(
        mut tools: ToolSet,
        sessions: Sessions,
        session: SessionOptions,
        state: Option<Arc<McpState>>,
    ) -> Arc<Self> {
        // The tool list can change once servers start; `tools_changed` needs `Shared`,
        // which needs the started tools: the callback reaches it through a cell set
        // afterwards.
        let shared_slot: Arc<Mutex<Weak<Shared>>> = Arc::new(Mutex::new(Weak::new()));
        let slot = Arc::clone(&shared_slot);
        tools
            .start(Arc::new(move || {
                if let Some(shared) = lock(&slot).upgrade() {
                    shared.tools_changed();
                }
            }))
            .await;
        let shared = Arc::new(Shared {
            tools,
            sessions,
            session,
            clients: Mutex::new(Vec::new()),
            state,
        });
        *lock(&shared_slot) = Arc::downgrade(&shared);
        shared
    }

    /// Stops the nested tools (the MCP servers they started).
    pub(super) async fn stop(&self) {
        self.tools.stop().await;
    }
}

/// How long `mcp` waits for its session to shut down once its client went away.
const SHUTDOWN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves one MCP client on stdin and stdout until it goes away.
pub(super) async fn serve_stdio(shared: &Arc<Shared>) -> Result<(), Failure> {
    let server = CodeModeServer::new(shared);
    let session = Arc::clone(server.session.get().expect("opened with the handler"));
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|error| Failure::runtime(format!("MCP initialization failed: {error}")))?;
    let _ = running.waiting().await;
    // The client went away: the session is shut down, and waited for, before the process
    // ends, so that its cells end in order and what they hand back (their last spans)
    // arrives. Bounded: a runtime that does not answer does not hold the exit up.
    if tokio::time::timeout(SHUTDOWN_PATIENCE, session.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("the session did not shut down within {SHUTDOWN_PATIENCE:?}; exiting");
    }
    Ok(())
}
