//! A gRPC client for any `codex-code-mode-host` binary, over the child's stdin and stdout
//! as codex drives it (`--listen grpc+stdio://`). The conformance and differential tests
//! and the bench drive both hosts, ours and codex's own, through it.

use crate::proto::code_mode_host_client::CodeModeHostClient;
use hyper_util::rt::TokioIo;
use std::io;
use std::sync::{Arc, Mutex};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint, Uri};

/// A host process and a client connected to it.
pub struct StdioHost {
    pub client: CodeModeHostClient<Channel>,
    channel: Option<Channel>,
    child: Child,
}

impl StdioHost {
    /// Spawns `command` with piped stdin and stdout (stderr as the command says) and
    /// connects to it over HTTP/2 with prior knowledge, as codex does.
    pub async fn spawn(command: Command) -> io::Result<Self> {
        Self::spawn_with(command, |endpoint| endpoint).await
    }

    /// [`Self::spawn`] with the client's endpoint set up by `configure` (keepalive, ...).
    pub async fn spawn_with(
        mut command: Command,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> io::Result<Self> {
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let channel = connect_with(tokio::io::join(stdout, stdin), configure).await?;
        let client = CodeModeHostClient::new(channel.clone())
            .max_decoding_message_size(crate::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::grpc::MAX_MESSAGE_BYTES);
        Ok(Self {
            client,
            channel: Some(channel),
            child,
        })
    }

    /// The channel, for calls the generated client does not make.
    pub fn channel(&self) -> Channel {
        self.channel
            .clone()
            .unwrap_or_else(|| Endpoint::from_static("http://gone").connect_lazy())
    }

    /// Drops this handle's channel and client: once no clone of them is left, the
    /// connection closes, as when codex goes away.
    pub fn disconnect(&mut self) {
        self.channel = None;
        self.client = CodeModeHostClient::new(Endpoint::from_static("http://gone").connect_lazy());
    }

    /// The host's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The child process, to wait for it or kill it.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// A channel over one byte stream (the only connection it will ever make).
pub async fn connect<I>(io: I) -> io::Result<Channel>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    connect_with(io, |endpoint| endpoint).await
}

/// [`connect`] with the endpoint set up by `configure`.
pub async fn connect_with<I>(
    io: I,
    configure: impl FnOnce(Endpoint) -> Endpoint,
) -> io::Result<Channel>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let slot = Arc::new(Mutex::new(Some(io)));
    let connector = tower::service_fn(move |_: Uri| {
        let io = slot.lock().ok().and_then(|mut slot| slot.take());
        async move {
            io.map(TokioIo::new)
                .ok_or_else(|| io::Error::other("the stdio connection was already used"))
        }
    });
    configure(Endpoint::from_static("http://code-mode-host"))
        .connect_with_connector(connector)
        .await
        .map_err(io::Error::other)
}

/// A tool's answer in a [`Driver`]: the output JSON, or a failure message.
pub type ToolAnswer = Result<String, String>;

/// The failure message a [`Responder`] gives to leave a call unanswered, as a slow tool or
/// a person would: the cell waits on it until the session ends.
pub const UNANSWERED: &str = "\u{0}unanswered";

/// Answers the nested tool calls of a [`Driver`]'s session.
pub type Responder = Arc<dyn Fn(&crate::proto::ToolInvocation) -> ToolAnswer + Send + Sync>;

/// One session on a host, driven as codex drives it: `OpenSession`, then
/// `SubscribeToToolCalls` answered by a [`Responder`]; what the session streams is
/// recorded in order.
pub struct Driver {
    pub client: CodeModeHostClient<Channel>,
    pub session_id: String,
    /// Every session event so far (`opened` first).
    pub events: Arc<Mutex<Vec<crate::proto::SessionEvent>>>,
    /// Every tool invocation so far.
    pub invocations: Arc<Mutex<Vec<crate::proto::ToolInvocation>>>,
    next_execution: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Driver {
    /// The tasks that read the session's streams and answer its calls end with it.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Driver {
    /// Opens a session with `request` and subscribes to its tool calls.
    pub async fn open(
        mut client: CodeModeHostClient<Channel>,
        request: crate::proto::OpenSessionRequest,
        responder: Responder,
    ) -> Result<Self, tonic::Status> {
        use futures_util::StreamExt;
        let mut stream = client.open_session(request).await?.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| tonic::Status::internal("the session stream ended at once"))??;
        let Some(crate::proto::session_event::Event::Opened(opened)) = &first.event else {
            return Err(tonic::Status::internal(
                "the first session event is not `opened`",
            ));
        };
        let session_id = opened.session_id.clone();
        let events = Arc::new(Mutex::new(vec![first]));
        let recorded = events.clone();
        let reading = tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                if let Ok(mut events) = recorded.lock() {
                    events.push(event);
                }
            }
        });
        let mut calls = client
            .subscribe_to_tool_calls(crate::proto::SubscribeToToolCallsRequest {
                session_id: session_id.clone(),
                heartbeat_interval_s: 0,
                tool_names: vec![],
            })
            .await?
            .into_inner();
        let invocations = Arc::new(Mutex::new(Vec::new()));
        let recorded = invocations.clone();
        let mut answering = client.clone();
        let answer_session = session_id.clone();
        let answering_task = tokio::spawn(async move {
            while let Some(Ok(invocation)) = calls.next().await {
                if let Ok(mut invocations) = recorded.lock() {
                    invocations.push(invocation.clone());
                }
                use crate::proto::complete_tool_call_request::Result as Answer;
                let answer = responder(&invocation);
                if answer.as_ref().is_err_and(|message| message == UNANSWERED) {
                    continue;
                }
                let result = match answer {
                    Ok(output_json) => {
                        Answer::Succeeded(crate::proto::ToolCallSucceeded { output_json })
                    }
                    Err(message) => Answer::Failed(crate::proto::ToolCallFailed { message }),
                };
                let request = crate::proto::CompleteToolCallRequest {
                    session_id: answer_session.clone(),
                    invocation_id: invocation.invocation_id.clone(),
                    result: Some(result),
                };
                let mut client = answering.clone();
                tokio::spawn(async move {
                    let _ = client.complete_tool_call(request).await;
                });
                let _ = &mut answering;
            }
        });
        Ok(Self {
            client,
            session_id,
            events,
            invocations,
            next_execution: 0,
            tasks: vec![reading, answering_task],
        })
    }

    /// A fresh execution id (a UUID, as codex makes them).
    pub fn execution_id(&mut self) -> String {
        self.next_execution += 1;
        uuid::Uuid::new_v4().to_string()
    }

    /// Runs `Execute` and returns its events (`started`, then the outcome), or the status
    /// it ended with.
    pub async fn execute(
        &mut self,
        mut request: crate::proto::ExecuteRequest,
    ) -> Result<Vec<crate::proto::ExecuteEvent>, tonic::Status> {
        use futures_util::StreamExt;
        request.session_id = self.session_id.clone();
        if request.execution_id.is_empty() {
            request.execution_id = self.execution_id();
        }
        if request.tool_call_id.is_empty() {
            request.tool_call_id = format!("call_{}", self.next_execution);
        }
        let mut stream = self.client.execute(request).await?.into_inner();
        let mut events = Vec::new();
        while let Some(event) = stream.next().await {
            events.push(event?);
        }
        Ok(events)
    }

    /// The outcome of an `Execute` (its last event).
    pub async fn run(
        &mut self,
        request: crate::proto::ExecuteRequest,
    ) -> Result<crate::proto::CellOutcome, tonic::Status> {
        let events = self.execute(request).await?;
        events
            .into_iter()
            .find_map(|event| match event.event {
                Some(crate::proto::execute_event::Event::Outcome(outcome)) => Some(outcome),
                _ => None,
            })
            .ok_or_else(|| tonic::Status::internal("the execution omitted its outcome"))
    }

    /// `Wait` on a cell.
    pub async fn wait(
        &mut self,
        cell_id: &str,
        yield_time_ms: u64,
        max_tokens: Option<u64>,
    ) -> Result<tonic::Response<crate::proto::WaitResponse>, tonic::Status> {
        self.client
            .wait(crate::proto::WaitRequest {
                session_id: self.session_id.clone(),
                cell_id: cell_id.to_owned(),
                wait_id: uuid::Uuid::new_v4().to_string(),
                yield_time_ms,
                max_tokens,
            })
            .await
    }

    /// `Terminate` a cell.
    pub async fn terminate(
        &mut self,
        cell_id: &str,
    ) -> Result<crate::proto::TerminateResponse, tonic::Status> {
        Ok(self
            .client
            .terminate(crate::proto::TerminateRequest {
                session_id: self.session_id.clone(),
                cell_id: cell_id.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// `CloseSession`.
    pub async fn close(&mut self) -> Result<(), tonic::Status> {
        self.client
            .close_session(crate::proto::CloseSessionRequest {
                session_id: self.session_id.clone(),
            })
            .await
            .map(drop)
    }
}

/// An `Execute` request for `source` with codex's default yield time and no tools.
pub fn exec_request(source: &str) -> crate::proto::ExecuteRequest {
    crate::proto::ExecuteRequest {
        source: source.to_owned(),
        yield_time_ms: 30_000,
        ..Default::default()
    }
}

/// A function tool as codex enables it: `js_name` on `tools`, its real name and namespace.
pub fn tool(js_name: &str, name: &str, namespace: Option<&str>) -> crate::proto::ToolDefinition {
    crate::proto::ToolDefinition {
        name: js_name.to_owned(),
        tool_name: Some(crate::proto::ToolName {
            name: name.to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
        }),
        description: format!(
            "declare const tools: {{ {js_name}(args: object): Promise<unknown> }};"
        ),
        kind: crate::proto::ToolKind::Function as i32,
        input_schema_json: String::new(),
        output_schema_json: String::new(),
    }
}

/// A one-line rendering of an outcome, for logs and comparisons: status, error text and
/// each item (text in full, images by URL and detail).
pub fn render_outcome(outcome: &crate::proto::CellOutcome) -> String {
    use crate::proto::{cell_outcome::Status, content_item::Item};
    let status = match &outcome.status {
        Some(Status::Yielded(_)) => "yielded".to_owned(),
        Some(Status::Terminated(_)) => "terminated".to_owned(),
        Some(Status::Completed(completed)) => {
            format!("completed{{error_text: {:?}}}", completed.error_text)
        }
        None => "no status".to_owned(),
    };
    let items: Vec<String> = outcome
        .content_items
        .iter()
        .map(|item| match &item.item {
            Some(Item::InputText(text)) => format!("text {:?}", text.text),
            Some(Item::InputImage(image)) => {
                format!("image {:?} detail {}", image.image_url, image.detail)
            }
            Some(Item::InputAudio(audio)) => format!("audio {:?}", audio.audio_url),
            None => "empty item".to_owned(),
        })
        .collect();
    format!("cell {} {status} [{}]", outcome.cell_id, items.join(", "))
}
