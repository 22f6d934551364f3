//! `code-mode serve --jsonl`: sessions driven by JSON lines on stdin/stdout, for hosts not
//! written in Rust. Every message and field is documented in `docs/jsonl.md`.
//!
//! Requests (`{"id": ..., "method": ..., "params": {...}}`) run concurrently and are each
//! answered by one line with the same `id` and either `result` or `error`. The server
//! also sends events (`{"event": ...}`): tool calls the client answers with a
//! `tool_result` message, their cancellations, notifications and closed cells.

use crate::Failure;
use crate::output::{pending_json, response_json};
use code_mode::{InProcessOptions, InProcessSession};
use code_mode_host::{HostConfig, IpcProvider};
use code_mode_protocol::{
    BoxFuture, CellLimits, CodeModeSession, CodeModeSessionDelegate, ExecRequest, NestedToolCall,
    SessionError, SessionOptions, ToolDefinition, ToolKind, WaitRequest,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lines on their way to stdout.
#[derive(Clone)]
struct Out(mpsc::UnboundedSender<String>);

impl Out {
    fn send(&self, value: Value) {
        let _ = self.0.send(value.to_string());
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
}

impl From<SessionError> for ErrorReply {
    fn from(error: SessionError) -> Self {
        let code = match &error {
            SessionError::ShuttingDown => "shutting_down",
            SessionError::BusyObserver(_) => "busy_observer",
            SessionError::AlreadyTerminating(_) => "already_terminating",
            SessionError::RuntimeLost(_) => "runtime_lost",
            SessionError::RuntimeReplaced => "runtime_replaced",
            SessionError::Runtime(_) => "runtime",
        };
        Self::new(code, error.to_string())
    }
}

/// Tool calls waiting for the client's answer, by call id (`c1`, `c2`, ...).
type PendingCalls = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Value, String>>>>>;

struct Server {
    out: Out,
    in_process: bool,
    provider: Option<IpcProvider>,
    sessions: Mutex<HashMap<String, Arc<dyn CodeModeSession>>>,
    last_session: AtomicU64,
    calls: PendingCalls,
    last_call: Arc<AtomicU64>,
}

/// The delegate of a served session: tool calls and notifications become events.
struct JsonlDelegate {
    session: String,
    out: Out,
    calls: PendingCalls,
    last_call: Arc<AtomicU64>,
}

impl CodeModeSessionDelegate for JsonlDelegate {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move {
            let id = format!("c{}", self.last_call.fetch_add(1, Ordering::SeqCst) + 1);
            let (reply, answer) = oneshot::channel();
            lock(&self.calls).insert(id.clone(), reply);
            self.out.send(json!({
                "event": "tool_call",
                "call": id,
                "session": self.session,
                "cell_id": call.cell_id,
                "call_id": call.call_id,
                "tool": call.tool_name,
                "kind": call.kind.as_str(),
                "input": call.input,
            }));
            tokio::select! {
                answer = answer => answer.unwrap_or_else(|_| Err("the client went away".to_owned())),
                () = cancel.cancelled() => {
                    lock(&self.calls).remove(&id);
                    self.out.send(json!({ "event": "tool_cancelled", "call": id }));
                    Err("cancelled".to_owned())
                }
            }
        })
    }

    fn notify(
        &self,
        cell_id: String,
        text: String,
        _cancel: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.out.send(json!({
                "event": "notify", "session": self.session, "cell_id": cell_id, "text": text,
            }));
        })
    }

    fn cell_closed(&self, cell_id: &str) {
        self.out
            .send(json!({ "event": "cell_closed", "session": self.session, "cell_id": cell_id }));
    }
}

fn string_param<'v>(params: &'v Value, name: &str) -> Result<&'v str, ErrorReply> {
    params.get(name).and_then(Value::as_str).ok_or_else(|| {
        ErrorReply::new("invalid_params", format!("`{name}` (a string) is required"))
    })
}

fn optional_u64(params: &Value, name: &str) -> Result<Option<u64>, ErrorReply> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            ErrorReply::new(
                "invalid_params",
                format!("`{name}` must be a non-negative integer"),
            )
        }),
    }
}

/// `limits: {"heap_bytes"?, "cpu_budget_ms"?, "output_bytes"?, "max_in_flight_tool_calls"?,
/// "max_tool_payload_bytes"?}`; absent fields keep their defaults.
fn cell_limits(params: &Value) -> Result<CellLimits, ErrorReply> {
    let mut limits = CellLimits::default();
    let Some(given) = params.get("limits") else {
        return Ok(limits);
    };
    if !given.is_object() {
        return Err(ErrorReply::new(
            "invalid_params",
            "`limits` must be an object",
        ));
    }
    for (name, slot) in [
        ("heap_bytes", &mut limits.heap_bytes),
        ("cpu_budget_ms", &mut limits.cpu_budget_ms),
        ("output_bytes", &mut limits.output_bytes),
        (
            "max_in_flight_tool_calls",
            &mut limits.max_in_flight_tool_calls,
        ),
        ("max_tool_payload_bytes", &mut limits.max_tool_payload_bytes),
    ] {
        if let Some(value) = optional_u64(given, name)? {
            *slot = value;
        }
    }
    Ok(limits)
}

/// `tools: [{"name", "description"?, "kind"?: "function" | "freeform"}]`.
fn tool_definitions(params: &Value) -> Result<Vec<ToolDefinition>, ErrorReply> {
    let Some(tools) = params.get("tools") else {
        return Ok(Vec::new());
    };
    let invalid = |message: &str| ErrorReply::new("invalid_params", message.to_owned());
    let tools = tools
        .as_array()
        .ok_or_else(|| invalid("`tools` must be an array"))?;
    tools
        .iter()
        .map(|tool| {
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("each tool needs a string `name`"))?;
            let description = tool
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let kind = match tool.get("kind").and_then(Value::as_str) {
                None | Some("function") => ToolKind::Function,
                Some("freeform") => ToolKind::Freeform,
                Some(_) => return Err(invalid("a tool's `kind` is `function` or `freeform`")),
            };
            Ok(ToolDefinition::new(name, description, kind))
        })
        .collect()
}

fn exec_request(params: &Value) -> Result<ExecRequest, ErrorReply> {
    let mut request =
        ExecRequest::new(string_param(params, "source")?).with_tools(tool_definitions(params)?);
    request.yield_time_ms = optional_u64(params, "yield_time_ms")?;
    Ok(request)
}

impl Server {
    fn session(&self, params: &Value) -> Result<Arc<dyn CodeModeSession>, ErrorReply> {
        let id = string_param(params, "session")?;
        lock(&self.sessions)
            .get(id)
            .cloned()
            .ok_or_else(|| ErrorReply::new("unknown_session", format!("no open session `{id}`")))
    }

    async fn handle(&self, method: &str, params: Value) -> Result<Value, ErrorReply> {
        match method {
            "open_session" => {
                let options = SessionOptions {
                    max_yield_time_ms: optional_u64(&params, "max_yield_time_ms")?,
                    limits: cell_limits(&params)?,
                };
                let id = format!("s{}", self.last_session.fetch_add(1, Ordering::SeqCst) + 1);
                let delegate = Arc::new(JsonlDelegate {
                    session: id.clone(),
                    out: self.out.clone(),
                    calls: Arc::clone(&self.calls),
                    last_call: Arc::clone(&self.last_call),
                });
                let session: Arc<dyn CodeModeSession> = match &self.provider {
                    Some(provider) if !self.in_process => {
                        Arc::new(provider.open_session(delegate, options))
                    }
                    _ => Arc::new(InProcessSession::new(
                        delegate,
                        InProcessOptions { session: options },
                    )),
                };
                lock(&self.sessions).insert(id.clone(), session);
                Ok(json!({ "session": id }))
            }
            "exec" => {
                let started = self
                    .session(&params)?
                    .execute(exec_request(&params)?)
                    .await?;
                Ok(
                    json!({ "cell_id": started.cell_id, "response": response_json(&started.initial_response) }),
                )
            }
            "wait" => {
                let mut request = WaitRequest::new(string_param(&params, "cell_id")?);
                request.yield_time_ms = optional_u64(&params, "yield_time_ms")?;
                Ok(response_json(&self.session(&params)?.wait(request).await?))
            }
            "terminate" => {
                let cell_id = string_param(&params, "cell_id")?.to_owned();
                Ok(response_json(
                    &self.session(&params)?.terminate(cell_id).await?,
                ))
            }
            "execute_to_pending" => {
                let started = self
                    .session(&params)?
                    .execute_to_pending(exec_request(&params)?)
                    .await?;
                Ok(json!({ "cell_id": started.cell_id, "outcome": pending_json(&started.outcome) }))
            }
            "wait_to_pending" => {
                let cell_id = string_param(&params, "cell_id")?.to_owned();
                Ok(pending_json(
                    &self.session(&params)?.wait_to_pending(cell_id).await?,
                ))
            }
            "shutdown" => {
                let session = self.session(&params)?;
                session.shutdown().await;
                lock(&self.sessions).retain(|_, open| !Arc::ptr_eq(open, &session));
                Ok(Value::Null)
            }
            other => Err(ErrorReply::new(
                "unknown_method",
                format!("unknown method `{other}`"),
            )),
        }
    }

    /// Hands a client's `tool_result` to the waiting call.
    fn tool_result(&self, params: &Value) -> Result<(), ErrorReply> {
        let call = string_param(params, "call")?;
        let result = match (params.get("result"), params.get("error")) {
            (_, Some(Value::String(error))) => Err(error.clone()),
            (Some(result), None) => Ok(result.clone()),
            (None, None) => Ok(Value::Null),
            (_, Some(_)) => {
                return Err(ErrorReply::new(
                    "invalid_params",
                    "`error` must be a string",
                ));
            }
        };
        // Unknown calls were cancelled meanwhile (a `tool_cancelled` event is on its way).
        if let Some(reply) = lock(&self.calls).remove(call) {
            let _ = reply.send(result);
        }
        Ok(())
    }
}

#[allow(
    clippy::print_stdout,
    reason = "the JSON-lines protocol is the CLI's stdout"
)]
pub async fn serve(in_process: bool, runtime_log: String) -> Result<(), Failure> {
    let provider = if in_process {
        None
    } else {
        Some(
            IpcProvider::new(HostConfig {
                log_filter: runtime_log,
                ..HostConfig::default()
            })
            .map_err(|error| Failure::runtime(error.to_string()))?,
        )
    };
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines_rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
            {
                return;
            }
            let _ = stdout.flush().await;
        }
    });
    let server = Arc::new(Server {
        out: Out(lines_tx),
        in_process,
        provider,
        sessions: Mutex::new(HashMap::new()),
        last_session: AtomicU64::new(0),
        calls: Arc::new(Mutex::new(HashMap::new())),
        last_call: Arc::new(AtomicU64::new(0)),
    });
    let tasks = TaskTracker::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|error| Failure::usage(format!("cannot read stdin: {error}")))?
    {
        if line.trim().is_empty() {
            continue;
        }
        // A client may send what JavaScript's `JSON.stringify` writes, lone surrogate
        // escapes included: those become U+FFFD, as in every tool result.
        let line = code_mode_protocol::model::replace_lone_surrogate_escapes(&line);
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(error) => {
                server.out.send(json!({ "id": null, "error": { "code": "invalid_json", "message": error.to_string() } }));
                continue;
            }
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            server.out.send(json!({ "id": id, "error": { "code": "invalid_request", "message": "a message needs a string `method`" } }));
            continue;
        };
        let params = message.get("params").cloned().unwrap_or_else(|| json!({}));
        if method == "tool_result" {
            if let Err(error) = server.tool_result(&params) {
                server.out.send(
                    json!({ "id": id, "error": { "code": error.code, "message": error.message } }),
                );
            }
            continue;
        }
        let server = Arc::clone(&server);
        tasks.spawn(async move {
            let reply = match server.handle(&method, params).await {
                Ok(result) => json!({ "id": id, "result": result }),
                Err(error) => {
                    json!({ "id": id, "error": { "code": error.code, "message": error.message } })
                }
            };
            server.out.send(reply);
        });
    }
    // End of input: shut every session down, then flush the last lines.
    let sessions: Vec<_> = lock(&server.sessions)
        .drain()
        .map(|(_, session)| session)
        .collect();
    for session in sessions {
        session.shutdown().await;
    }
    tasks.close();
    tasks.wait().await;
    drop(server);
    let _ = writer.await;
    Ok(())
}
