//! Codex's JSON host protocol on stdio (`code_mode_host_grpc = false`): frames of a `u32`
//! little-endian length and UTF-8 JSON both ways. `connection/hello` → `connection/ready`,
//! then `operation/request`s (`session/open`, `session/execute`, `session/wait`,
//! `session/terminate`, `session/shutdown`) with `operation/yield` and `operation/cancel`;
//! the host asks for tool calls and delivers notifications with `delegate/request`, and
//! reports closed cells with `cell/closed`. Messages are translated to [`Front`] calls.
//!
//! Frames are read into the types of the `messages` module. A frame that is not JSON, or not a known
//! message, is logged and skipped (codex's own host exits on it); an operation whose
//! request is malformed is answered with an error that names the field; a frame over
//! [`MAX_FRAME_BYTES`] cannot be skipped safely and ends the connection with an error.

mod messages;

use crate::front::{
    ClientLimits, EnabledTool, Execution, Front, FrontError, FrontSession, Observed, Outcome,
    RESULT_BUFFERED_FOR, SessionEvent, Settings, Status, ToolName, Truncation,
};

/// The pending-delegate-calls limit of a JSON session (its `session/open` has no such
/// field; gRPC's `OpenSession` sends its own).
const JSON_MAX_PENDING_DELEGATE_CALLS: u64 = 4096;
use code_mode_host::protocol::{JsonText, ToolError, ToolKind};
use code_mode_internal::sync::lock;
use code_mode_surface::json::item_json;
use messages::{DelegateResult, Hello, Incoming};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The largest frame either way (64 MiB, as gRPC's message limit).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The protocol versions this host speaks.
pub const VERSIONS: [u64; 1] = [1];

/// The capabilities this host offers.
pub const CAPABILITIES: [&str; 5] = [
    "bounded-output-v1",
    "delegate-capacity-4096",
    "session-cell-execution-resource-limits",
    "tool-catalog-revision-v1",
    "yield-observation",
];

/// Why the JSON connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("reading the JSON protocol failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a frame of {0} bytes is over the limit of {MAX_FRAME_BYTES} bytes")]
    FrameTooLarge(usize),
    #[error("the client's hello was refused: {0}")]
    Rejected(String),
}

/// An operation in flight: what `operation/yield` and `operation/cancel` reach.
#[derive(Clone)]
struct InFlight {
    cancel: CancellationToken,
    /// The execution id (for an execute) or wait id (for a wait) to preempt.
    observation: Option<(Arc<FrontSession>, String)>,
}

struct Connection {
    front: Arc<Front>,
    out: mpsc::UnboundedSender<Value>,
    operations: Mutex<HashMap<u64, InFlight>>,
    /// Delegate request id → (session, invocation id).
    delegates: Mutex<HashMap<u64, (Arc<FrontSession>, String)>>,
    next_delegate: std::sync::atomic::AtomicU64,
    /// Each session's forwarding task, awaited at shutdown so that the cells it closes
    /// are reported before `session/closed`.
    forwarders: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

async fn read_frame<R: AsyncRead + Unpin>(input: &mut R) -> Result<Option<Vec<u8>>, JsonError> {
    let mut length = [0u8; 4];
    match input.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(JsonError::FrameTooLarge(length));
    }
    let mut frame = vec![0u8; length];
    input.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

/// Serves the JSON protocol on one byte stream until the client closes it.
pub async fn serve_json<R, W>(
    settings: Settings,
    mut input: R,
    mut output: W,
) -> Result<(), JsonError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, mut outgoing) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            let bytes = message.to_string().into_bytes();
            let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes();
            if output.write_all(&length).await.is_err() || output.write_all(&bytes).await.is_err() {
                return;
            }
            let _ = output.flush().await;
        }
    });
    let result = async {
        let Some(hello) = read_frame(&mut input).await? else {
            return Ok(());
        };
        match handshake(&hello) {
            Ok(ready) => {
                let _ = out.send(ready);
            }
            Err((rejection, reason)) => {
                let _ = out.send(rejection);
                return Err(JsonError::Rejected(reason));
            }
        }
        let connection = Arc::new(Connection {
            front: Arc::new(Front::new(settings)),
            out: out.clone(),
            operations: Mutex::new(HashMap::new()),
            delegates: Mutex::new(HashMap::new()),
            next_delegate: std::sync::atomic::AtomicU64::new(1),
            forwarders: Mutex::new(HashMap::new()),
        });
        let ended = loop {
            let frame = match read_frame(&mut input).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            };
            match serde_json::from_slice::<Incoming>(&frame) {
                Ok(message) => connection.clone().handle(message),
                Err(error) => tracing::warn!(%error, "skipped a frame that is no known message"),
            }
        };
        connection.front.close_all().await;
        ended
    }
    .await;
    drop(out);
    let _ = writer.await;
    result
}

/// The answer to `connection/hello`: ready, or a rejection with its reason.
fn handshake(frame: &[u8]) -> Result<Value, (Value, String)> {
    let reject = |reason: Value| {
        let text = reason.to_string();
        (
            json!({"type": "connection/rejected", "reason": reason}),
            text,
        )
    };
    let hello = match serde_path_to_error::deserialize::<_, Hello>(
        &mut serde_json::Deserializer::from_slice(frame),
    ) {
        Ok(hello) if hello.kind == "connection/hello" => hello,
        Ok(_) => {
            return Err(reject(
                json!({"type": "invalidHello", "message": "the first message must be connection/hello"}),
            ));
        }
        Err(error) => {
            return Err(reject(
                json!({"type": "invalidHello", "message": format!("the hello is malformed: {error}")}),
            ));
        }
    };
    let Some(version) = VERSIONS
        .iter()
        .copied()
        .filter(|version| hello.supported_versions.contains(version))
        .max()
    else {
        return Err(reject(
            json!({"type": "noCompatibleVersion", "supportedVersions": VERSIONS}),
        ));
    };
    let required = &hello.required_capabilities;
    if let Some(missing) = required
        .iter()
        .find(|name| !CAPABILITIES.contains(&name.as_str()))
    {
        return Err(reject(
            json!({"type": "missingRequiredCapability", "capability": missing}),
        ));
    }
    let granted: Vec<&str> = CAPABILITIES
        .iter()
        .copied()
        .filter(|name| {
            required
                .iter()
                .chain(&hello.optional_capabilities)
                .any(|asked| asked == name)
        })
        .collect();
    Ok(json!({"type": "connection/ready", "selectedVersion": version, "capabilities": granted}))
}

fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// An outcome as the JSON protocol writes it (`Result`, `Yielded` or `Terminated`).
fn outcome_json(outcome: &Outcome) -> Value {
    let items: Vec<Value> = outcome.items.iter().map(item_json).collect();
    let duration = nanos(outcome.host_duration);
    match &outcome.status {
        Status::Completed { error_text } => json!({"Result": {
            "cell_id": outcome.cell_id, "content_items": items, "error_text": error_text,
            "result_buffered_for_ns": nanos(RESULT_BUFFERED_FOR), "code_mode_host_duration_ns": duration}}),
        Status::Yielded => {
            json!({"Yielded": {"cell_id": outcome.cell_id, "content_items": items, "code_mode_host_duration_ns": duration}})
        }
        Status::Terminated => {
            json!({"Terminated": {"cell_id": outcome.cell_id, "content_items": items, "code_mode_host_duration_ns": duration}})
        }
    }
}

fn observed_json(observed: &Observed) -> Value {
    match observed {
        Observed::Live(outcome) => {
            json!({"type": "wait/completed", "outcome": {"LiveCell": outcome_json(outcome)}})
        }
        Observed::Missing(outcome) => {
            json!({"type": "wait/completed", "outcome": {"MissingCell": outcome_json(outcome)}})
        }
    }
}

fn ok(value: Value) -> Value {
    json!({"status": "ok", "value": value})
}

fn error(message: impl std::fmt::Display) -> Value {
    json!({"status": "error", "message": message.to_string()})
}

/// The text of a failed operation: the front's error, or what a cancel says.
const CANCELLED: &str = "code-mode request cancelled";

fn enabled_tool(tool: messages::Tool) -> EnabledTool {
    let (name, namespace) = match tool.tool_name {
        Some(qualified) => (qualified.name, qualified.namespace),
        None => (tool.name.clone(), None),
    };
    EnabledTool {
        tool_name: ToolName {
            name,
            namespace: namespace.filter(|namespace| !namespace.is_empty()),
        },
        description: tool.description,
        kind: match tool.kind {
            messages::Kind::Function => ToolKind::Function,
            messages::Kind::Freeform => ToolKind::Freeform,
        },
        js_name: tool.name,
    }
}

impl Connection {
    fn send(&self, message: Value) {
        let _ = self.out.send(message);
    }

    fn respond(&self, id: u64, result: Value) {
        self.send(json!({"type": "operation/response", "id": id, "result": result}));
    }

    fn handle(self: Arc<Self>, message: Incoming) {
        match message {
            Incoming::Request { id, request } => {
                tokio::spawn(self.operation(id, request));
            }
            Incoming::Yield { id } => {
                let operation = lock(&self.operations).get(&id).cloned();
                if let Some(InFlight {
                    observation: Some((session, observation)),
                    ..
                }) = operation
                {
                    let _ = self.front.yield_observation(&session, &observation);
                }
            }
            Incoming::Cancel { id } => {
                if let Some(operation) = lock(&self.operations).get(&id).cloned() {
                    operation.cancel.cancel();
                }
            }
            Incoming::DelegateResponse { id, result } => {
                let Some((session, invocation)) = lock(&self.delegates).remove(&id) else {
                    return;
                };
                let answer = match result {
                    DelegateResult::Ok { value } => Ok(JsonText::new(value.result.to_string())),
                    DelegateResult::Error { message } => Err(ToolError::new(message)),
                };
                let _ = self
                    .front
                    .complete_tool_call_now(&session, &invocation, answer);
            }
        }
    }

    /// Streams a session's tool calls, notifications and closed cells as frames.
    fn forward(self: &Arc<Self>, session: &Arc<FrontSession>) {
        let Some(mut events) = session.events() else {
            return;
        };
        let mut invocations = session.invocations(Vec::new());
        let connection = self.clone();
        let closed = session.closed();
        let id = session.id().to_owned();
        let session = session.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    invocation = invocations.recv() => {
                        let Some(invocation) = invocation else { return };
                        let id = connection.next_delegate.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        lock(&connection.delegates).insert(id, (session.clone(), invocation.invocation_id.clone()));
                        let input = if invocation.input_json.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_str(&invocation.input_json).unwrap_or(Value::String(invocation.input_json.clone()))
                        };
                        connection.send(json!({"type": "delegate/request", "id": id, "sessionId": session.id(), "request": {
                            "type": "tool/invoke", "invocation": {
                                "cell_id": invocation.cell_id, "runtime_tool_call_id": invocation.runtime_tool_call_id,
                                "tool_name": {"name": invocation.tool_name.name, "namespace": invocation.tool_name.namespace},
                                "tool_kind": invocation.kind.as_str(), "input": input}}}));
                    }
                    event = events.recv() => {
                        match event {
                            Some(SessionEvent::Notification { cell_id, call_id, text, .. }) => {
                                let id = connection.next_delegate.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                connection.send(json!({"type": "delegate/request", "id": id, "sessionId": session.id(), "request": {
                                    "type": "notification/send", "callId": call_id, "cellId": cell_id, "text": text}}));
                            }
                            Some(SessionEvent::CellClosed { cell_id, .. }) => {
                                connection.send(json!({"type": "cell/closed", "sessionId": session.id(), "cellId": cell_id}));
                            }
                            None => return,
                        }
                    }
                    () = closed.cancelled() => return,
                }
            }
        });
        lock(&self.forwarders).insert(id, task);
    }

    async fn operation(self: Arc<Self>, id: u64, request: Value) {
        let cancel = CancellationToken::new();
        lock(&self.operations).insert(
            id,
            InFlight {
                cancel: cancel.clone(),
                observation: None,
            },
        );
        let work = self.clone().run(id, request);
        let result = tokio::select! {
            result = work => result,
            () = cancel.cancelled() => Err(CANCELLED.to_owned()),
        };
        lock(&self.operations).remove(&id);
        match result {
            Ok(Some(value)) => self.respond(id, ok(value)),
            Ok(None) => {}
            Err(message) => self.respond(id, error(message)),
        }
    }

    fn observe(&self, id: u64, session: &Arc<FrontSession>, observation: String) {
        if let Some(operation) = lock(&self.operations).get_mut(&id) {
            operation.observation = Some((session.clone(), observation));
        }
    }

    /// Runs one operation; `Ok(None)` when it already answered (an execute).
    async fn run(self: Arc<Self>, id: u64, request: Value) -> Result<Option<Value>, String> {
        let text = |error: FrontError| error.to_string();
        let operation = messages::Operation::read(request).map_err(|error| error.to_string())?;
        match operation {
            messages::Operation::Open(open) => self.open(open).await.map(Some),
            messages::Operation::Execute(execute) => {
                self.execute(id, execute).await?;
                Ok(None)
            }
            messages::Operation::Wait(messages::Wait {
                session_id,
                request: body,
                max_output_tokens,
            }) => {
                let session = self.front.session(&session_id).map_err(text)?;
                let wait_id = format!("json-wait-{id}");
                self.observe(id, &session, wait_id.clone());
                let observed = self
                    .front
                    .wait(
                        &session,
                        &body.cell_id,
                        Some(wait_id),
                        body.yield_time_ms,
                        max_output_tokens,
                    )
                    .await
                    .map_err(text)?;
                Ok(Some(observed_json(&observed)))
            }
            messages::Operation::Terminate(messages::Terminate {
                session_id,
                cell_id,
            }) => {
                let session = self.front.session(&session_id).map_err(text)?;
                let observed = self
                    .front
                    .terminate(&session, &cell_id)
                    .await
                    .map_err(text)?;
                Ok(Some(observed_json(&observed)))
            }
            messages::Operation::Shutdown(messages::Shutdown { session_id }) => {
                let session = self.front.session(&session_id).map_err(text)?;
                self.front.close_session(&session).await;
                // Its streams drain before they end: every `cell/closed` goes out first.
                let forwarder = lock(&self.forwarders).remove(&session_id);
                if let Some(forwarder) = forwarder {
                    let _ = forwarder.await;
                }
                Ok(Some(
                    json!({"type": "session/closed", "sessionId": session_id}),
                ))
            }
        }
    }

    /// `session/open`: a session under the client's id, its events forwarded.
    async fn open(self: &Arc<Self>, open: messages::Open) -> Result<Value, String> {
        let messages::Open {
            session_id,
            output_truncation,
            cell_execution_limits,
        } = open;
        let truncation = match output_truncation.as_deref() {
            Some("client") => Truncation::Client,
            None | Some("server") => Truncation::Server,
            Some(_) => return Err(FrontError::UnknownTruncation.to_string()),
        };
        let limits = cell_execution_limits.unwrap_or_default();
        let limits = ClientLimits {
            max_yield_time_ms: limits.max_yield_time_ms,
            max_heap_size_bytes: limits.max_heap_size_bytes,
        };
        let session = self
            .front
            .open_session(
                session_id.clone(),
                truncation,
                limits,
                JSON_MAX_PENDING_DELEGATE_CALLS,
            )
            .await
            .map_err(|error| error.to_string())?;
        self.forward(&session);
        Ok(json!({"type": "session/ready", "sessionId": session_id}))
    }

    /// `session/execute`: `execution/started` as soon as the cell is admitted, then the
    /// initial response, both sent here (the request's own answer is nothing).
    async fn execute(self: &Arc<Self>, id: u64, execute: messages::Execute) -> Result<(), String> {
        let messages::Execute {
            session_id,
            request: body,
        } = execute;
        let session = self
            .front
            .session(&session_id)
            .map_err(|error| error.to_string())?;
        let mut execution = Execution {
            execution_id: format!("json-{id}-{}", uuid::Uuid::new_v4()),
            tool_call_id: body.tool_call_id,
            source: body.source,
            tools: body.enabled_tools.into_iter().map(enabled_tool).collect(),
            catalog_revision: body.catalog_revision,
            yield_time_ms: body.yield_time_ms,
            max_output_tokens: body.max_output_tokens,
            resolved: None,
        };
        self.front
            .claim_execution(&session, &mut execution)
            .map_err(|error| error.to_string())?;
        self.observe(id, &session, execution.execution_id.clone());
        let connection = Arc::clone(self);
        let started = move |cell_id: &str| {
            connection.respond(
                id,
                ok(json!({"type": "execution/started", "cellId": cell_id})),
            );
        };
        let outcome = self.front.execute(&session, execution, started).await;
        let result = match outcome {
            Ok(outcome) => ok(outcome_json(&outcome)),
            Err(failure) => error(failure),
        };
        self.send(json!({"type": "execute/initialResponse", "id": id, "result": result}));
        Ok(())
    }
}
