//! The gRPC service `codex.code_mode.v1.CodeModeHost` over [`Front`]: message conversions
//! and status codes only; what happens is the front's.

use crate::front::{
    ClientLimits, EnabledTool, Execution, Front, FrontError, FrontSession, Invocation, Observed,
    Outcome, RESULT_BUFFERED_FOR, SessionEvent, Source, Status, ToolName, Truncation,
};
use crate::metrics;
use crate::proto::{self, code_mode_host_server::CodeModeHost};
use code_mode_host::protocol::{
    BoxFuture, ContentItem, ImageDetail, JsonText, SessionError, ToolError, ToolKind,
};
use futures_util::{Stream, StreamExt as _};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};
use tracing::Instrument as _;

/// The header a `Wait` response carries: how long its result was buffered, in ns.
pub const BUFFERED_FOR_HEADER: &str = "codex-code-mode-result-buffered-for-ns";

/// The largest message either way (as Codex's own host: 64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// The service: one per client connection, so that a client's sessions end with it.
#[derive(Clone)]
pub struct Service {
    front: Arc<Front>,
}

impl Service {
    pub fn new(front: Arc<Front>) -> Self {
        Self { front }
    }

    /// The tonic server of this service, with the message limits set.
    pub fn into_server(self) -> proto::code_mode_host_server::CodeModeHostServer<Self> {
        proto::code_mode_host_server::CodeModeHostServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Session `id`: this host's, one a restart kept, or one taken over from a host that
    /// shares the store and died.
    async fn session(&self, id: &str) -> Result<Arc<FrontSession>, tonic::Status> {
        if uuid::Uuid::parse_str(id).is_ok() {
            self.front.take_over(id).await.map_err(status)?;
        }
        self.front.session_by_uuid(id).map_err(status)
    }
}

/// The gRPC status of a front error, with the codes Codex's host uses.
pub fn status(error: FrontError) -> tonic::Status {
    let message = error.to_string();
    match error {
        FrontError::InvalidSessionId
        | FrontError::EmptyToolCallId
        | FrontError::UnknownTruncation
        | FrontError::MissingObservationId
        | FrontError::MissingResult(_)
        | FrontError::InvalidTools(_) => tonic::Status::invalid_argument(message),
        FrontError::UnknownSession(_) | FrontError::UnknownInvocation(_) => {
            tonic::Status::not_found(message)
        }
        FrontError::SessionAlreadyOpen(_) | FrontError::ExecutionReused(_) => {
            tonic::Status::already_exists(message)
        }
        FrontError::WaitCancelled => tonic::Status::cancelled(message),
        FrontError::RuntimeUnavailable { .. }
        | FrontError::InvalidCatalogRevision
        | FrontError::UnknownCatalogRevision
        | FrontError::ConflictingCatalogRevision => tonic::Status::failed_precondition(message),
        FrontError::TooManyInFlightRequests
        | FrontError::TooManyActiveCells
        | FrontError::TooManySessions(_)
        | FrontError::StateFull(_) => tonic::Status::resource_exhausted(message),
        FrontError::StateUnavailable(_) => tonic::Status::unavailable(message),
        FrontError::Session(error) => match error {
            SessionError::ShuttingDown
            | SessionError::BusyObserver(_)
            | SessionError::AlreadyTerminating(_) => tonic::Status::failed_precondition(message),
            SessionError::Runtime(_) | SessionError::RuntimeLost(_) => {
                tonic::Status::unavailable(message)
            }
        },
    }
}

fn truncation_mode(value: i32) -> Result<Truncation, FrontError> {
    match value {
        0 | 1 => Ok(Truncation::Client),
        2 => Ok(Truncation::Server),
        _ => Err(FrontError::UnknownTruncation),
    }
}

fn tool_kind(kind: i32) -> ToolKind {
    if kind == proto::ToolKind::Freeform as i32 {
        ToolKind::Freeform
    } else {
        ToolKind::Function
    }
}

fn proto_kind(kind: ToolKind) -> i32 {
    match kind {
        ToolKind::Function => proto::ToolKind::Function as i32,
        ToolKind::Freeform => proto::ToolKind::Freeform as i32,
    }
}

fn proto_detail(detail: ImageDetail) -> i32 {
    (match detail {
        ImageDetail::Auto => proto::ImageDetail::Auto,
        ImageDetail::Low => proto::ImageDetail::Low,
        ImageDetail::High => proto::ImageDetail::High,
        ImageDetail::Original => proto::ImageDetail::Original,
    }) as i32
}

/// A content item as the wire carries it.
pub fn proto_item(item: ContentItem) -> proto::ContentItem {
    use proto::content_item::Item;
    let item = match item {
        ContentItem::InputText { text } => Item::InputText(proto::InputText { text }),
        ContentItem::InputImage { image_url, detail } => Item::InputImage(proto::InputImage {
            image_url,
            detail: proto_detail(detail),
        }),
        ContentItem::InputAudio { audio_url } => Item::InputAudio(proto::InputAudio { audio_url }),
    };
    proto::ContentItem { item: Some(item) }
}

/// An outcome as the wire carries it.
pub fn proto_outcome(outcome: Outcome) -> proto::CellOutcome {
    use proto::cell_outcome::Status as Wire;
    let status = match outcome.status {
        Status::Yielded => Wire::Yielded(proto::Empty {}),
        Status::Terminated => Wire::Terminated(proto::Empty {}),
        Status::Completed { error_text } => Wire::Completed(proto::Completed {
            error_text: error_text.unwrap_or_default(),
        }),
    };
    proto::CellOutcome {
        cell_id: outcome.cell_id,
        content_items: outcome.items.into_iter().map(proto_item).collect(),
        status: Some(status),
        host_duration_ns: u64::try_from(outcome.host_duration.as_nanos()).unwrap_or(u64::MAX),
    }
}

fn enabled_tool(definition: proto::ToolDefinition) -> EnabledTool {
    let tool_name = definition
        .tool_name
        .map(|name| ToolName {
            name: name.name,
            namespace: Some(name.namespace).filter(|namespace| !namespace.is_empty()),
        })
        .unwrap_or_else(|| ToolName {
            name: definition.name.clone(),
            namespace: None,
        });
    EnabledTool {
        js_name: definition.name,
        tool_name,
        description: definition.description,
        kind: tool_kind(definition.kind),
    }
}

fn proto_event(event: SessionEvent) -> proto::SessionEvent {
    use proto::session_event::Event;
    let event = match event {
        SessionEvent::Notification {
            notification_id,
            execution_id,
            cell_id,
            call_id,
            text,
        } => Event::Notification(proto::Notification {
            notification_id,
            execution_id,
            cell_id,
            call_id,
            text,
        }),
        SessionEvent::CellClosed {
            execution_id,
            cell_id,
            tool_call_count,
        } => Event::CellClosed(proto::CellClosed {
            execution_id,
            cell_id,
            tool_call_count,
        }),
    };
    proto::SessionEvent { event: Some(event) }
}

fn observed(observed: Observed) -> (Option<proto::wait_response::Cell>, u64) {
    match observed {
        Observed::Live(outcome) => {
            let buffered = u64::try_from(RESULT_BUFFERED_FOR.as_nanos()).unwrap_or(u64::MAX);
            (
                Some(proto::wait_response::Cell::LiveCell(proto_outcome(outcome))),
                buffered,
            )
        }
        Observed::Missing(outcome) => (
            Some(proto::wait_response::Cell::MissingCell(proto_outcome(
                outcome,
            ))),
            0,
        ),
    }
}

/// The handlers' bodies, run inside their request's span.
impl Service {
    async fn open_session_traced(
        &self,
        request: proto::OpenSessionRequest,
    ) -> Result<Response<EventStream<proto::SessionEvent>>, tonic::Status> {
        let truncation = truncation_mode(request.output_truncation).map_err(status)?;
        let limits = request
            .cell_execution_limits
            .map(|limits| ClientLimits {
                max_yield_time_ms: Some(limits.max_yield_time_ms),
                max_heap_size_bytes: Some(limits.max_heap_size_bytes),
            })
            .unwrap_or_default();
        let session = self
            .front
            .open_session_with_uuid(truncation, limits, request.max_pending_delegate_calls)
            .await
            .map_err(status)?;
        let events = session.events().ok_or_else(|| {
            tonic::Status::failed_precondition("session events already streaming")
        })?;
        let opened = proto::SessionEvent {
            event: Some(proto::session_event::Event::Opened(proto::SessionOpened {
                session_id: session.id().to_owned(),
                output_truncation: match truncation {
                    Truncation::Server => proto::OutputTruncation::Server as i32,
                    Truncation::Client => 0,
                },
                supports_catalog_revision: true,
            })),
        };
        // The session is on disk before its client learns its id.
        if let Err(error) = self.front.flush(&session).await {
            self.front.close_session(&session).await;
            return Err(status(error));
        }
        let stream = lease_stream(events, session.closed(), Some(opened), proto_event, None);
        let beat = || proto::SessionEvent {
            event: Some(proto::session_event::Event::Heartbeat(proto::Heartbeat {})),
        };
        Ok(Response::new(with_heartbeats(
            stream,
            request.heartbeat_interval_s,
            beat,
        )))
    }

    async fn wait_traced(
        &self,
        request: proto::WaitRequest,
    ) -> Result<Response<proto::WaitResponse>, tonic::Status> {
        let session = self.session(&request.session_id).await?;
        let wait_id = Some(request.wait_id).filter(|id| !id.is_empty());
        let yield_time_ms = Some(request.yield_time_ms).filter(|ms| *ms > 0);
        let result = self
            .front
            .wait(
                &session,
                &request.cell_id,
                wait_id,
                yield_time_ms,
                request.max_tokens,
            )
            .await
            .map_err(status)?;
        self.front.flush(&session).await.map_err(status)?;
        let (cell, buffered) = observed(result);
        let mut response = Response::new(proto::WaitResponse { cell });
        if let Ok(value) = buffered.to_string().parse() {
            response.metadata_mut().insert(BUFFERED_FOR_HEADER, value);
        }
        Ok(response)
    }

    async fn execute_traced(
        &self,
        request: proto::ExecuteRequest,
        span: tracing::Span,
    ) -> Result<Response<EventStream<proto::ExecuteEvent>>, tonic::Status> {
        let session = self.session(&request.session_id).await?;
        let mut execution = Execution {
            execution_id: request.execution_id.clone(),
            tool_call_id: request.tool_call_id,
            source: request.source,
            tools: request
                .enabled_tools
                .into_iter()
                .map(enabled_tool)
                .collect(),
            catalog_revision: request.catalog_revision,
            yield_time_ms: Some(request.yield_time_ms),
            max_output_tokens: request.max_output_tokens,
            resolved: None,
        };
        self.front
            .claim_execution(&session, &mut execution)
            .map_err(status)?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let front = self.front.clone();
        let started_sender = sender.clone();
        let execution_id = request.execution_id;
        let flushed = Arc::clone(&session);
        // The cell outlives a client that drops the call: its output waits for `Wait`. The
        // execute span lasts until the outcome is sent, as on Codex's host.
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let started = move |cell_id: &str| {
                    let event = proto::ExecuteEvent {
                        event: Some(proto::execute_event::Event::Started(
                            proto::ExecutionStarted {
                                execution_id: execution_id.clone(),
                                cell_id: cell_id.to_owned(),
                            },
                        )),
                    };
                    let _ = started_sender.send(Ok(event));
                };
                let message = match front.execute(&session, execution, started).await {
                    Ok(outcome) => Ok(proto::ExecuteEvent {
                        event: Some(proto::execute_event::Event::Outcome(proto_outcome(outcome))),
                    }),
                    Err(error) => Err(status(error)),
                };
                let _ = sender.send(message);
            },
            span,
        ));
        if !self.front.keeps_state() {
            return Ok(Response::new(Box::pin(
                tokio_stream::wrappers::UnboundedReceiverStream::new(receiver),
            )));
        }
        // With a state directory, the cell's start and its outcome are on disk before the
        // client sees them.
        let front = self.front.clone();
        Ok(Response::new(async_stream(move |out| async move {
            let mut receiver = receiver;
            while let Some(message) = receiver.recv().await {
                // What the disk does not have does not go out; the stream ends with why.
                if let Err(error) = front.flush(&flushed).await {
                    let _ = out.send(Err(status(error))).await;
                    return;
                }
                if out.send(message).await.is_err() {
                    return;
                }
            }
        })))
    }
}

/// `span`, parented on the request's W3C `traceparent` metadata when it has a well-formed
/// one (a malformed value is ignored).
fn request_span<T>(request: &Request<T>, span: tracing::Span) -> tracing::Span {
    let traceparent = request
        .metadata()
        .get(code_mode_trace::TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    code_mode_trace::adopt_traceparent(&span, traceparent);
    span
}

#[tonic::async_trait]
impl CodeModeHost for Service {
    type OpenSessionStream = EventStream<proto::SessionEvent>;
    type SubscribeToToolCallsStream = EventStream<proto::ToolInvocation>;
    type ExecuteStream = EventStream<proto::ExecuteEvent>;

    async fn open_session(
        &self,
        request: Request<proto::OpenSessionRequest>,
    ) -> Result<Response<Self::OpenSessionStream>, tonic::Status> {
        let span = request_span(
            &request,
            tracing::info_span!(parent: None, "code_mode_host.grpc.open_session"),
        );
        self.open_session_traced(request.into_inner())
            .instrument(span)
            .await
    }

    async fn subscribe_to_tool_calls(
        &self,
        request: Request<proto::SubscribeToToolCallsRequest>,
    ) -> Result<Response<Self::SubscribeToToolCallsStream>, tonic::Status> {
        let request = request.into_inner();
        let session = self.session(&request.session_id).await?;
        // Several subscriptions share the session's calls, each taking the tools it names
        // (all if none), as on Codex's hosts.
        let mut filter = Vec::with_capacity(request.tool_names.len());
        for name in request.tool_names {
            if name.name.is_empty() {
                return Err(tonic::Status::invalid_argument(
                    "code-mode tool name must not be empty",
                ));
            }
            filter.push(ToolName {
                name: name.name,
                namespace: Some(name.namespace).filter(|namespace| !namespace.is_empty()),
            });
        }
        let invocations = session.invocations(filter);
        // With a state directory, each invocation is on disk before the client sees it.
        let flush = self.front.keeps_state().then(|| {
            let (front, session) = (self.front.clone(), Arc::clone(&session));
            Box::new(move || -> BoxFuture<'static, Result<(), FrontError>> {
                let (front, session) = (Arc::clone(&front), Arc::clone(&session));
                Box::pin(async move { front.flush(&session).await })
            }) as Flush
        });
        let stream = lease_stream(invocations, session.closed(), None, proto_invocation, flush);
        let session_id = session.id().to_owned();
        let beat = move || proto::ToolInvocation {
            session_id: session_id.clone(),
            heartbeat: Some(proto::Heartbeat {}),
            ..proto::ToolInvocation::default()
        };
        Ok(Response::new(with_heartbeats(
            stream,
            request.heartbeat_interval_s,
            beat,
        )))
    }

    async fn execute(
        &self,
        request: Request<proto::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, tonic::Status> {
        let span = request_span(
            &request,
            tracing::info_span!(
                parent: None,
                "code_mode_host.grpc.execute",
                session.id = %request.get_ref().session_id,
                execution.id = %request.get_ref().execution_id,
                call_id = %request.get_ref().tool_call_id,
                cell.source = tracing::field::Empty,
            ),
        );
        if code_mode_trace::capture().source {
            span.record(
                "cell.source",
                code_mode_trace::captured(&request.get_ref().source),
            );
        }
        let entered = span.clone();
        self.execute_traced(request.into_inner(), span)
            .instrument(entered)
            .await
    }

    async fn complete_tool_call(
        &self,
        request: Request<proto::CompleteToolCallRequest>,
    ) -> Result<Response<proto::Empty>, tonic::Status> {
        let request = request.into_inner();
        let session = self.session(&request.session_id).await?;
        use proto::complete_tool_call_request::Result as Answer;
        let result = match request.result {
            Some(Answer::Succeeded(succeeded)) => Ok(JsonText::new(succeeded.output_json)),
            Some(Answer::Failed(failed)) => Err(ToolError::new(failed.message)),
            None => return Err(status(FrontError::MissingResult(request.invocation_id))),
        };
        self.front
            .complete_tool_call(&session, &request.invocation_id, result)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn wait(
        &self,
        request: Request<proto::WaitRequest>,
    ) -> Result<Response<proto::WaitResponse>, tonic::Status> {
        let request = request.into_inner();
        let span = tracing::info_span!(
            parent: None,
            "code_mode_host.grpc.wait",
            session.id = %request.session_id,
            cell.id = %request.cell_id,
            wait.id = %request.wait_id,
        );
        self.wait_traced(request).instrument(span).await
    }

    async fn terminate(
        &self,
        request: Request<proto::TerminateRequest>,
    ) -> Result<Response<proto::TerminateResponse>, tonic::Status> {
        let request = request.into_inner();
        let session = self.session(&request.session_id).await?;
        let result = self
            .front
            .terminate(&session, &request.cell_id)
            .await
            .map_err(status)?;
        self.front.flush(&session).await.map_err(status)?;
        let cell = match result {
            Observed::Live(outcome) => {
                proto::terminate_response::Cell::LiveCell(proto_outcome(outcome))
            }
            Observed::Missing(outcome) => {
                proto::terminate_response::Cell::MissingCell(proto_outcome(outcome))
            }
        };
        Ok(Response::new(proto::TerminateResponse { cell: Some(cell) }))
    }

    async fn close_session(
        &self,
        request: Request<proto::CloseSessionRequest>,
    ) -> Result<Response<proto::Empty>, tonic::Status> {
        let session_id = request.into_inner().session_id;
        let span = tracing::info_span!(
            parent: None,
            "code_mode_host.grpc.close_session",
            session.id = %session_id,
        );
        async move {
            let session = self.session(&session_id).await?;
            self.front.close_session(&session).await;
            Ok(Response::new(proto::Empty {}))
        }
        .instrument(span)
        .await
    }

    async fn yield_observation(
        &self,
        request: Request<proto::YieldObservationRequest>,
    ) -> Result<Response<proto::Empty>, tonic::Status> {
        let request = request.into_inner();
        let session = self.session(&request.session_id).await?;
        self.front
            .yield_observation(&session, &request.observation_id)
            .map_err(status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn cancel_wait(
        &self,
        request: Request<proto::CancelWaitRequest>,
    ) -> Result<Response<proto::Empty>, tonic::Status> {
        let request = request.into_inner();
        let session = self.session(&request.session_id).await?;
        self.front.cancel_wait(&session, &request.wait_id);
        Ok(Response::new(proto::Empty {}))
    }

    async fn acknowledge_notification(
        &self,
        request: Request<proto::AcknowledgeNotificationRequest>,
    ) -> Result<Response<proto::Empty>, tonic::Status> {
        // Notifications are delivered when they are sent; an acknowledgement changes
        // nothing, as with Codex's own host (which accepts any id).
        self.session(&request.into_inner().session_id).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn get_process_metrics(
        &self,
        _: Request<proto::GetProcessMetricsRequest>,
    ) -> Result<Response<proto::GetProcessMetricsResponse>, tonic::Status> {
        let runtime_pid = self.front.provider().runtime_pid().await;
        let snapshot = metrics::snapshot(runtime_pid)
            .map_err(|error| tonic::Status::internal(format!("process metrics: {error}")))?;
        Ok(Response::new(snapshot))
    }
}

/// A session stream: `first` (if any), then what `lease` gives, converted by `convert`,
/// until the session is closed. What the lease holds when it closes still goes out first:
/// the session's last events (cells its shutdown closed) come before the end.
///
/// The stream takes each item from the lease as the client's connection asks for it: no
/// task and no channel stand between (one task wake-up less on every tool call), and a
/// client that drops the stream gives the lease back at once, with every item it had not
/// taken, for its next subscription.
fn lease_stream<T, U, S>(
    lease: S,
    closed: CancellationToken,
    first: Option<U>,
    convert: fn(T) -> U,
    flush: Option<Flush>,
) -> EventStream<U>
where
    T: Send + 'static,
    U: Send + 'static,
    S: Source<T>,
{
    let leased = Leasing {
        lease,
        closed,
        first,
        flush,
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(
        leased,
        move |mut leased| async move {
            if leased.ended {
                return None;
            }
            if let Some(first) = leased.first.take() {
                return Some((Ok(first), leased));
            }
            let item = tokio::select! {
                biased;
                item = leased.lease.recv() => item?,
                () = leased.closed.cancelled() => return None,
            };
            // An invocation is streamed only once the checkpoint that holds it is on disk:
            // else a restart would replay its call and stream it again. A failed write ends
            // the stream with why; the invocation is streamed after a restart, from what the
            // disk has. A client that drops the stream meanwhile leaves the invocation for
            // its next subscription.
            let item = match &leased.flush {
                Some(flush) => {
                    let unsent = Unsent {
                        lease: &leased.lease,
                        item: Some(item),
                    };
                    let flushed = flush().await;
                    let item = unsent.taken()?;
                    if let Err(error) = flushed {
                        leased.lease.give_back(item);
                        leased.ended = true;
                        return Some((Err(status(error)), leased));
                    }
                    item
                }
                None => item,
            };
            Some((Ok(convert(item)), leased))
        },
    ))
}

/// Makes the session's checkpoint durable before an invocation is streamed.
type Flush = Box<dyn Fn() -> BoxFuture<'static, Result<(), FrontError>> + Send + Sync>;

/// An item taken from a lease and not streamed yet: given back if dropped with it.
struct Unsent<'a, T, S: Source<T>> {
    lease: &'a S,
    item: Option<T>,
}

impl<T, S: Source<T>> Unsent<'_, T, S> {
    /// The item, no longer given back when this goes.
    fn taken(mut self) -> Option<T> {
        self.item.take()
    }
}

impl<T, S: Source<T>> Drop for Unsent<'_, T, S> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.lease.give_back(item);
        }
    }
}

/// What a [`lease_stream`] holds between two items.
struct Leasing<S, U> {
    lease: S,
    closed: CancellationToken,
    first: Option<U>,
    flush: Option<Flush>,
    /// It ended with an error: the next poll ends it.
    ended: bool,
}

fn proto_invocation(invocation: Invocation) -> proto::ToolInvocation {
    proto::ToolInvocation {
        session_id: invocation.session_id,
        execution_id: invocation.execution_id,
        cell_id: invocation.cell_id,
        invocation_id: invocation.invocation_id,
        runtime_tool_call_id: invocation.runtime_tool_call_id,
        tool_name: Some(proto::ToolName {
            name: invocation.tool_name.name,
            namespace: invocation.tool_name.namespace.unwrap_or_default(),
        }),
        kind: proto_kind(invocation.kind),
        input_json: invocation.input_json,
        sequence: invocation.sequence,
        traceparent: invocation.traceparent,
        heartbeat: None,
    }
}

/// `stream`, with a heartbeat from `beat` every `every_s` seconds when its request asked
/// for them (Codex 0.171's `heartbeat_interval_s`; 0 asks for none, and none is ever sent
/// unasked: Codex 0.169 reads one as an empty event and drops the session). The
/// heartbeats end with the stream.
fn with_heartbeats<U>(
    stream: EventStream<U>,
    every_s: u64,
    beat: impl Fn() -> U + Send + 'static,
) -> EventStream<U>
where
    U: Send + 'static,
{
    if every_s == 0 {
        return stream;
    }
    tracing::debug!(every_s, "a stream with heartbeats");
    let every = Duration::from_secs(every_s.min(MAX_HEARTBEAT_INTERVAL_S));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Box::pin(futures_util::stream::unfold(
        (stream, ticks, beat),
        |(mut stream, mut ticks, beat)| async move {
            // The stream's own future lives in it: a tick that wins drops nothing of it.
            let item = tokio::select! {
                biased;
                item = stream.next() => item?,
                _ = ticks.tick() => Ok(beat()),
            };
            Some((item, (stream, ticks, beat)))
        },
    ))
}

/// The longest heartbeat interval honoured (a day): a larger one is taken as this.
const MAX_HEARTBEAT_INTERVAL_S: u64 = 86_400;

/// A stream fed by `body` through a bounded channel (one message in flight: a slow client
/// holds the producer, not memory).
fn async_stream<T, F, Fut>(body: F) -> EventStream<T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<Result<T, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(body(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::Leased;
    use futures_util::FutureExt as _;

    /// A flush that never ends (a checkpoint stuck on a slow disk).
    fn stuck() -> Flush {
        let gate = Arc::new(tokio::sync::Notify::new());
        Box::new(move || -> BoxFuture<'static, Result<(), FrontError>> {
            let gate = Arc::clone(&gate);
            Box::pin(async move {
                gate.notified().await;
                Ok(())
            })
        })
    }

    #[tokio::test]
    async fn an_item_taken_while_its_checkpoint_is_flushed_is_kept_when_the_stream_is_dropped() {
        let leased = Leased::<u32>::new();
        leased.sender.send(7).expect("sent");
        let lease = leased.lease().expect("the first lease");
        let mut stream = lease_stream(lease, CancellationToken::new(), None, |n| n, Some(stuck()));
        // The stream takes the item, then waits for its checkpoint.
        assert!(
            stream.next().now_or_never().is_none(),
            "it waits on the flush"
        );
        assert!(leased.lease().is_none(), "still leased");
        drop(stream);
        let mut again = leased.lease().expect("the lease is back");
        assert_eq!(
            again.recv().now_or_never(),
            Some(Some(7)),
            "the item comes first"
        );
    }
}
