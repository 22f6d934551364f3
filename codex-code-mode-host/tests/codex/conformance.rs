//! Our gRPC front alone: every RPC, event order, error codes, preempts, cancelled waits,
//! closing, real process metrics, and what codex's own host cannot do (a runtime killed
//! under a session, a heap bomb beside a bystander, bytes on stdout that are not HTTP/2).

use crate::refused;
use crate::{corpus_tools, eventually, open, our_host, spawn};
use codex_code_mode_host::client::{exec_request, render_outcome};
use codex_code_mode_host::proto;
use std::time::{Duration, Instant};
use tonic::Code;

fn outcome_of(events: &[proto::ExecuteEvent]) -> proto::CellOutcome {
    events
        .iter()
        .find_map(|event| match &event.event {
            Some(proto::execute_event::Event::Outcome(outcome)) => Some(outcome.clone()),
            _ => None,
        })
        .expect("an outcome")
}

fn live(response: proto::WaitResponse) -> proto::CellOutcome {
    match response.cell {
        Some(proto::wait_response::Cell::LiveCell(outcome)) => outcome,
        other => panic!("expected a live cell, got {other:?}"),
    }
}

fn status_of(outcome: &proto::CellOutcome) -> String {
    render_outcome(outcome)
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_streams_started_then_one_outcome_and_numbers_cells() {
    let host = spawn(&our_host(), &[]).await;
    let mut driver = open(&host, 2).await;
    for expected in ["1", "2", "3"] {
        let mut request = exec_request(r#"text(await tools.echo({n: 1}));"#);
        request.enabled_tools = corpus_tools();
        let events = driver.execute(request).await.expect("execute");
        assert_eq!(events.len(), 2, "started, then one outcome: {events:?}");
        match &events[0].event {
            Some(proto::execute_event::Event::Started(started)) => {
                assert_eq!(started.cell_id, expected);
                assert!(!started.execution_id.is_empty());
            }
            other => panic!("the first event is not `started`: {other:?}"),
        }
        let outcome = outcome_of(&events);
        assert_eq!(outcome.cell_id, expected);
        assert!(outcome.host_duration_ns > 0, "host_duration_ns is measured");
        assert_eq!(
            status_of(&outcome),
            format!(
                r#"cell {expected} completed{{error_text: ""}} [text "{{\"echo\":{{\"n\":1}}}}"]"#
            )
        );
    }
    // Each cell was closed with its tool-call count, before or with its outcome.
    assert!(eventually(5, || driver.events.lock().unwrap().len() == 4).await);
    let events = driver.events.lock().unwrap().clone();
    for (index, event) in events[1..].iter().enumerate() {
        match &event.event {
            Some(proto::session_event::Event::CellClosed(closed)) => {
                assert_eq!(closed.cell_id, (index + 1).to_string());
                assert_eq!(closed.tool_call_count, 1);
            }
            other => panic!("expected cell_closed, got {other:?}"),
        }
    }
    let calls = driver.invocations.lock().unwrap().clone();
    assert_eq!(calls.len(), 3);
    for call in &calls {
        assert!(uuid::Uuid::parse_str(&call.invocation_id).is_ok());
        assert_eq!(call.runtime_tool_call_id, "tool-1");
        assert_eq!(call.sequence, 1);
        assert_eq!(call.session_id, driver.session_id);
    }
}

/// Each exec's cell gets the tools that exec enabled: the same list again (the front then
/// passes on the list it built last time), another list, then the first one again.
#[tokio::test(flavor = "multi_thread")]
async fn each_exec_gets_the_tools_it_enabled_whether_the_list_changed_or_not() {
    use codex_code_mode_host::client::tool;
    let host = spawn(&our_host(), &[]).await;
    let mut driver = open(&host, 2).await;
    let one = corpus_tools();
    let mut other = vec![tool("other", "other_tool", Some("ns"))];
    other.extend(corpus_tools().into_iter().take(1));
    let source = r#"text(ALL_TOOLS.map((t) => t.name).join(",")); text(await tools.echo({n: 1}));"#;
    for (tools, names) in [
        (&one, "echo,ns__search"),
        (&one, "echo,ns__search"),
        (&other, "other,echo"),
        (&one, "echo,ns__search"),
    ] {
        let mut request = exec_request(source);
        request.enabled_tools = tools.clone();
        let events = driver.execute(request).await.expect("execute");
        let outcome = outcome_of(&events);
        let cell = &outcome.cell_id;
        assert_eq!(
            status_of(&outcome),
            format!(
                r#"cell {cell} completed{{error_text: ""}} [text "{names}", text "{{\"echo\":{{\"n\":1}}}}"]"#
            )
        );
    }
    let calls = driver.invocations.lock().unwrap().clone();
    assert_eq!(calls.len(), 4);
    for call in &calls {
        assert_eq!(
            call.tool_name.as_ref().map(|name| name.name.as_str()),
            Some("echo")
        );
    }
}

/// Codex 0.171's tool-catalog revisions, on our host and on 0.171's own alike: the
/// session says it keeps catalogs; an exec with a revision and tools makes them the
/// session's catalog under it (only the latest is kept); one with a revision and no tools
/// uses that catalog if it is the latest; revision 0, an unknown revision without tools,
/// and the latest with other tools are refused with status 9 and Codex's texts; an exec
/// without a revision uses its own tools and leaves the catalog as it was.
#[tokio::test(flavor = "multi_thread")]
async fn catalog_revisions_are_kept_reused_and_refused_as_codexs_host_does() {
    for host in [our_host(), crate::codex_host_0171()] {
        catalog_revisions_on(&host).await;
    }
}

async fn catalog_revisions_on(binary: &std::path::Path) {
    use codex_code_mode_host::client::tool;
    let host = spawn(binary, &[]).await;
    let mut driver = open(&host, 2).await;
    let opened = driver.events.lock().unwrap()[0].event.clone();
    let Some(proto::session_event::Event::Opened(opened)) = opened else {
        panic!("the first event is `opened`: {opened:?}");
    };
    assert!(opened.supports_catalog_revision);
    let names = r#"text(ALL_TOOLS.map((t) => t.name).join(",") || "none")"#;
    let mut run = async |revision: Option<u64>, tools: Vec<proto::ToolDefinition>| {
        let mut request = exec_request(names);
        request.tool_call_id = "call".to_owned();
        request.catalog_revision = revision;
        request.enabled_tools = tools;
        match driver.execute(request).await {
            Ok(events) => {
                let outcome = outcome_of(&events);
                match outcome
                    .content_items
                    .first()
                    .and_then(|item| item.item.clone())
                {
                    Some(proto::content_item::Item::InputText(text)) => text.text,
                    other => panic!("no text: {other:?}"),
                }
            }
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        }
    };
    let echo = || corpus_tools();
    let other = || vec![tool("other", "other_tool", Some("ns"))];
    let refused = |what: &str| format!("FailedPrecondition: {what} code-mode catalog revision");
    assert_eq!(run(Some(0), echo()).await, refused("invalid"));
    assert_eq!(run(Some(5), vec![]).await, refused("unknown"));
    assert_eq!(run(Some(5), echo()).await, "echo,ns__search");
    assert_eq!(
        run(Some(5), vec![]).await,
        "echo,ns__search",
        "the catalog reused"
    );
    assert_eq!(
        run(Some(5), echo()).await,
        "echo,ns__search",
        "sent again alike"
    );
    // Tools that differ from the kept ones only in their schemas are the same catalog to
    // both hosts; another description is not.
    let reschemed = || {
        let mut tools = echo();
        tools[0].input_schema_json =
            r#"{"type":"object","properties":{"x":{"type":"number"}}}"#.to_owned();
        tools
    };
    assert_eq!(
        run(Some(5), reschemed()).await,
        "echo,ns__search",
        "schemas are not compared"
    );
    let redescribed = || {
        let mut tools = echo();
        tools[0].description = "another description".to_owned();
        tools
    };
    assert_eq!(run(Some(5), redescribed()).await, refused("conflicting"));
    assert_eq!(run(Some(5), other()).await, refused("conflicting"));
    assert_eq!(
        run(None, other()).await,
        "other",
        "no revision: its own tools"
    );
    assert_eq!(
        run(Some(5), vec![]).await,
        "echo,ns__search",
        "the catalog as it was"
    );
    assert_eq!(run(Some(6), other()).await, "other");
    assert_eq!(
        run(Some(5), vec![]).await,
        refused("unknown"),
        "only the latest"
    );
    assert_eq!(run(Some(6), vec![]).await, "other");
    assert_eq!(run(None, vec![]).await, "none");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_carry_codexs_status_codes_and_texts() {
    let host = spawn(&our_host(), &[]).await;
    let mut client = host.client.clone();
    let mut driver = open(&host, 2).await;

    refused(
        client
            .execute(proto::ExecuteRequest {
                session_id: "session-1".into(),
                tool_call_id: "c".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "code-mode session ID must be a UUID",
    );

    let unknown = uuid::Uuid::new_v4().to_string();
    refused(
        client
            .close_session(proto::CloseSessionRequest {
                session_id: unknown.clone(),
            })
            .await,
        Code::NotFound,
        &format!("unknown code-mode session {unknown}"),
    );

    let mut request = exec_request("text(1)");
    request.tool_call_id = String::new();
    request.session_id = driver.session_id.clone();
    request.execution_id = uuid::Uuid::new_v4().to_string();
    refused(
        client.execute(request).await,
        Code::InvalidArgument,
        "code-mode tool call ID must not be empty",
    );

    let execution_id = uuid::Uuid::new_v4().to_string();
    let mut request = exec_request("text(1)");
    request.execution_id = execution_id.clone();
    driver
        .execute(request.clone())
        .await
        .expect("the first use of an execution id");
    refused(
        driver.execute(request).await,
        Code::AlreadyExists,
        &format!("code-mode execution ID `{execution_id}` was reused"),
    );

    refused(
        client
            .open_session(proto::OpenSessionRequest {
                output_truncation: 3,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "unknown code-mode output truncation mode",
    );

    refused(
        client
            .yield_observation(proto::YieldObservationRequest {
                session_id: driver.session_id.clone(),
                observation_id: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "missing code-mode observation ID",
    );

    let bogus = uuid::Uuid::new_v4().to_string();
    refused(
        client
            .complete_tool_call(proto::CompleteToolCallRequest {
                session_id: driver.session_id.clone(),
                invocation_id: bogus.clone(),
                result: Some(proto::complete_tool_call_request::Result::Succeeded(
                    proto::ToolCallSucceeded {
                        output_json: "1".into(),
                    },
                )),
            })
            .await,
        Code::NotFound,
        &format!("unknown code-mode tool invocation {bogus}"),
    );

    // An answered invocation cannot be answered again.
    let mut request = exec_request("text(await tools.echo({a: 1}))");
    request.enabled_tools = corpus_tools();
    driver
        .execute(request)
        .await
        .expect("a cell with a tool call");
    let answered = driver
        .invocations
        .lock()
        .unwrap()
        .last()
        .expect("a call")
        .invocation_id
        .clone();
    let status = client
        .complete_tool_call(proto::CompleteToolCallRequest {
            session_id: driver.session_id.clone(),
            invocation_id: answered,
            result: Some(proto::complete_tool_call_request::Result::Failed(
                proto::ToolCallFailed {
                    message: "late".into(),
                },
            )),
        })
        .await
        .expect_err("a second answer");
    assert_eq!(status.code(), Code::NotFound);

    // Acknowledging any notification id is fine (codex's host accepts any).
    client
        .acknowledge_notification(proto::AcknowledgeNotificationRequest {
            session_id: driver.session_id.clone(),
            notification_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect("acknowledge");

    // A method the service does not have.
    let mut grpc = tonic::client::Grpc::new(client_channel(&host));
    grpc.ready().await.expect("ready");
    let status = grpc
        .unary::<proto::Empty, proto::Empty, _>(
            tonic::Request::new(proto::Empty {}),
            http::uri::PathAndQuery::from_static("/codex.code_mode.v1.CodeModeHost/NoSuchMethod"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("an unknown method");
    assert_eq!(status.code(), Code::Unimplemented);

    // A message over 64 MiB.
    let mut big = exec_request(&"x".repeat(65 * 1024 * 1024));
    big.session_id = driver.session_id.clone();
    big.execution_id = uuid::Uuid::new_v4().to_string();
    big.tool_call_id = "call_big".into();
    let status = client
        .clone()
        .max_encoding_message_size(128 * 1024 * 1024)
        .execute(big)
        .await
        .expect_err("a message over 64 MiB");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("the limit is: 67108864 bytes"),
        "{status:?}"
    );

    // Malformed protobuf: bytes that do not decode as an ExecuteRequest.
    grpc.ready().await.expect("ready");
    let status = grpc
        .unary::<RawBytes, proto::Empty, _>(
            tonic::Request::new(RawBytes(vec![0x0a, 0xff, 0xff, 0xff])),
            http::uri::PathAndQuery::from_static("/codex.code_mode.v1.CodeModeHost/CloseSession"),
            RawCodec,
        )
        .await
        .expect_err("malformed protobuf");
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    // After all of that, the host still works.
    let outcome = driver
        .run(exec_request(r#"text("still here")"#))
        .await
        .expect("execute");
    assert!(status_of(&outcome).contains(r#"text "still here""#));
}

fn client_channel(host: &codex_code_mode_host::client::StdioHost) -> tonic::transport::Channel {
    host.channel()
}

/// Bytes sent as they are, for malformed messages.
#[derive(Debug, Clone)]
struct RawBytes(Vec<u8>);

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = RawBytes;
    type Decode = proto::Empty;
    type Encoder = RawEncoder;
    type Decoder =
        <tonic_prost::ProstCodec<proto::Empty, proto::Empty> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(
            &mut tonic_prost::ProstCodec::<proto::Empty, proto::Empty>::default(),
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = RawBytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: RawBytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item.0);
        Ok(())
    }
}

type WaitTask =
    tokio::task::JoinHandle<Result<tonic::Response<proto::WaitResponse>, tonic::Status>>;

/// A 20 s `Wait` on `cell_id`, running in the background: its wait id and its task. It is
/// given 300 ms to reach the host (nothing outside the host can see it arrive).
async fn background_wait(
    host: &codex_code_mode_host::client::StdioHost,
    session_id: &str,
    cell_id: &str,
) -> (String, WaitTask) {
    let wait_id = uuid::Uuid::new_v4().to_string();
    let mut client = host.client.clone();
    let request = proto::WaitRequest {
        session_id: session_id.to_owned(),
        cell_id: cell_id.to_owned(),
        wait_id: wait_id.clone(),
        yield_time_ms: 20_000,
        max_tokens: None,
    };
    let wait = tokio::spawn(async move { client.wait(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    (wait_id, wait)
}

#[tokio::test(flavor = "multi_thread")]
async fn yield_observation_preempts_an_execution_and_cancel_wait_ends_a_wait() {
    let host = spawn(&our_host(), &[]).await;
    let mut driver = open(&host, 2).await;
    let mut request =
        exec_request(r#"text("early"); await new Promise(r => setTimeout(r, 20000));"#);
    request.session_id = driver.session_id.clone();
    request.execution_id = uuid::Uuid::new_v4().to_string();
    request.tool_call_id = "call_1".into();
    let execution_id = request.execution_id.clone();
    let mut client = host.client.clone();
    let started = Instant::now();
    let execution = tokio::spawn(async move {
        let mut stream = client.execute(request).await.expect("execute").into_inner();
        let mut events = Vec::new();
        while let Some(event) = stream.message().await.expect("an event") {
            events.push(event);
        }
        events
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.client
        .clone()
        .yield_observation(proto::YieldObservationRequest {
            session_id: driver.session_id.clone(),
            observation_id: execution_id,
        })
        .await
        .expect("yield");
    let events = execution.await.expect("the execution");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the preempt returned the execution at once"
    );
    let outcome = outcome_of(&events);
    assert_eq!(status_of(&outcome), r#"cell 1 yielded [text "early"]"#);

    // A wait that is cancelled ends CANCELLED; the cell keeps running.
    let session_id = driver.session_id.clone();
    let (wait_id, wait) = background_wait(&host, &session_id, "1").await;
    host.client
        .clone()
        .cancel_wait(proto::CancelWaitRequest {
            session_id: session_id.clone(),
            wait_id,
        })
        .await
        .expect("cancel");
    let status = wait.await.expect("the wait").expect_err("a cancelled wait");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Cancelled, "code-mode wait was cancelled")
    );

    // A wait can be preempted by its wait id too.
    let (wait_id, wait) = background_wait(&host, &session_id, "1").await;
    host.client
        .clone()
        .yield_observation(proto::YieldObservationRequest {
            session_id: session_id.clone(),
            observation_id: wait_id,
        })
        .await
        .expect("yield");
    let response = wait.await.expect("the wait").expect("a preempted wait");
    assert!(
        response
            .metadata()
            .get(codex_code_mode_host::grpc::BUFFERED_FOR_HEADER)
            .is_some()
    );
    assert_eq!(status_of(&live(response.into_inner())), "cell 1 yielded []");

    // Terminate, then the cell is gone.
    let terminated = driver.terminate("1").await.expect("terminate");
    match terminated.cell {
        Some(proto::terminate_response::Cell::LiveCell(outcome)) => {
            assert_eq!(status_of(&outcome), "cell 1 terminated []")
        }
        other => panic!("expected a live cell, got {other:?}"),
    }
    let missing = driver
        .wait("1", 100, None)
        .await
        .expect("wait")
        .into_inner();
    match missing.cell {
        Some(proto::wait_response::Cell::MissingCell(outcome)) => assert_eq!(
            status_of(&outcome),
            r#"cell 1 completed{error_text: "exec cell 1 not found"} [text "Script error:\nexec cell 1 not found"]"#
        ),
        other => panic!("expected a missing cell, got {other:?}"),
    }
}

/// `OpenSession` by hand: its stream and its `opened` event.
async fn open_raw(
    client: &mut proto::code_mode_host_client::CodeModeHostClient<tonic::transport::Channel>,
    truncation: i32,
) -> (tonic::Streaming<proto::SessionEvent>, proto::SessionOpened) {
    let mut stream = client
        .open_session(proto::OpenSessionRequest {
            output_truncation: truncation,
            ..Default::default()
        })
        .await
        .expect("open")
        .into_inner();
    let event = stream
        .message()
        .await
        .expect("opened")
        .and_then(|event| event.event);
    let Some(proto::session_event::Event::Opened(opened)) = event else {
        panic!("the first event is `opened`: {event:?}");
    };
    (stream, opened)
}

#[tokio::test(flavor = "multi_thread")]
async fn close_session_ends_its_streams_and_forgets_it() {
    let host = spawn(&our_host(), &[]).await;
    let mut client = host.client.clone();
    let (mut stream, opened) = open_raw(&mut client, 2).await;
    assert!(
        uuid::Uuid::parse_str(&opened.session_id).is_ok(),
        "session ids are UUIDs"
    );
    assert_eq!(opened.output_truncation, 2);
    let mut calls = client
        .subscribe_to_tool_calls(proto::SubscribeToToolCallsRequest {
            session_id: opened.session_id.clone(),
            heartbeat_interval_s: 0,
            tool_names: vec![],
        })
        .await
        .expect("subscribe")
        .into_inner();
    client
        .close_session(proto::CloseSessionRequest {
            session_id: opened.session_id.clone(),
        })
        .await
        .expect("close");
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the session stream ends");
    assert!(matches!(ended, Ok(None)), "ended with status 0: {ended:?}");
    let ended = tokio::time::timeout(Duration::from_secs(5), calls.message())
        .await
        .expect("the tool-call stream ends");
    assert!(matches!(ended, Ok(None)), "ended with status 0: {ended:?}");
    let status = client
        .close_session(proto::CloseSessionRequest {
            session_id: opened.session_id.clone(),
        })
        .await
        .expect_err("a closed session is unknown");
    assert_eq!(status.code(), Code::NotFound);

    // A client's own truncation: the reply omits the mode.
    let (_stream, opened) = open_raw(&mut client, 1).await;
    assert_eq!(opened.output_truncation, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_tool_call_subscription_is_made_again_and_loses_no_call() {
    let host = spawn(&our_host(), &[]).await;
    let mut client = host.client.clone();
    let (_stream, opened) = open_raw(&mut client, 2).await;
    let subscribe = proto::SubscribeToToolCallsRequest {
        session_id: opened.session_id.clone(),
        heartbeat_interval_s: 0,
        tool_names: vec![],
    };
    let first = client
        .subscribe_to_tool_calls(subscribe.clone())
        .await
        .expect("subscribe")
        .into_inner();
    drop(first);
    // A call made while nobody is subscribed waits in the session for the next
    // subscription: the exec yields with its call in flight.
    lookup_in_flight(&mut client, &opened.session_id).await;
    // A second subscription is taken at once (a session may have several); the call the
    // dropped one was dealt, or that waited, reaches it once the host hears of the drop.
    let mut second = client
        .subscribe_to_tool_calls(subscribe.clone())
        .await
        .expect("a second subscription")
        .into_inner();
    let invocation = tokio::time::timeout(Duration::from_secs(10), second.message())
        .await
        .expect("the call reaches the second subscription")
        .expect("a call, not an error")
        .expect("a call, not the end");
    assert_eq!(
        invocation.tool_name.map(|name| name.name),
        Some("lookup".to_owned())
    );
    assert_eq!(invocation.input_json, r#"{"q":1}"#);
}

/// Runs in session `session_id` a cell that calls `lookup` and yields (200 ms) with the
/// call in flight; its cell id.
async fn lookup_in_flight(
    client: &mut proto::code_mode_host_client::CodeModeHostClient<tonic::transport::Channel>,
    session_id: &str,
) -> String {
    use codex_code_mode_host::client::tool;
    let mut request = exec_request("await tools.lookup({ q: 1 }); text('done')");
    request.session_id = session_id.to_owned();
    request.execution_id = uuid::Uuid::new_v4().to_string();
    request.tool_call_id = "call_1".to_owned();
    request.yield_time_ms = 200;
    request.enabled_tools = vec![tool("lookup", "lookup", None)];
    let mut events = client
        .execute(request)
        .await
        .expect("the execute call")
        .into_inner();
    let (mut cell_id, mut yielded) = (String::new(), false);
    while let Some(event) = events.message().await.expect("the execute stream") {
        match event.event {
            Some(proto::execute_event::Event::Started(started)) => cell_id = started.cell_id,
            Some(proto::execute_event::Event::Outcome(outcome)) => {
                yielded = matches!(
                    outcome.status,
                    Some(proto::cell_outcome::Status::Yielded(_))
                );
            }
            None => {}
        }
    }
    assert!(
        !cell_id.is_empty() && yielded,
        "the cell yields with its call in flight"
    );
    cell_id
}

/// A call no subscription took, whose cell was terminated meanwhile, reaches no
/// subscription made afterwards: its invocation is stale by then. (Our host keeps a call
/// nobody is subscribed for until a subscription comes; Codex's hosts, 0.169 and 0.171,
/// fail such a call at once, `no code-mode tool subscription matches the requested tool`,
/// so they have nothing to compare here.)
#[tokio::test(flavor = "multi_thread")]
async fn a_call_whose_cell_was_terminated_before_anyone_subscribed_reaches_no_one() {
    assert_eq!(stale_call_after_terminate(&our_host()).await, None);
}

/// The tool name of the first invocation a subscription made after the terminate gets
/// within a second, if any. Checked beside it: the terminate answers the cell as
/// terminated, and the same subscription gets the call of a cell started afterwards (so
/// that nothing else kept calls from it).
async fn stale_call_after_terminate(binary: &std::path::Path) -> Option<String> {
    let host = spawn(binary, &[]).await;
    let mut client = host.client.clone();
    let (_stream, opened) = open_raw(&mut client, 2).await;
    let cell_id = lookup_in_flight(&mut client, &opened.session_id).await;
    let terminated = client
        .terminate(proto::TerminateRequest {
            session_id: opened.session_id.clone(),
            cell_id,
        })
        .await
        .expect("terminate")
        .into_inner();
    assert!(
        matches!(
            terminated.cell,
            Some(proto::terminate_response::Cell::LiveCell(
                proto::CellOutcome {
                    status: Some(proto::cell_outcome::Status::Terminated(_)),
                    ..
                }
            ))
        ),
        "{terminated:?}"
    );
    let mut calls = client
        .subscribe_to_tool_calls(proto::SubscribeToToolCallsRequest {
            session_id: opened.session_id.clone(),
            heartbeat_interval_s: 0,
            tool_names: vec![],
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first = match tokio::time::timeout(Duration::from_secs(1), calls.message()).await {
        Err(_) => None,
        Ok(Ok(Some(invocation))) => invocation.tool_name.map(|name| name.name),
        Ok(other) => panic!("the subscription ended: {other:?}"),
    };
    lookup_in_flight(&mut client, &opened.session_id).await;
    let next = tokio::time::timeout(Duration::from_secs(10), calls.message())
        .await
        .expect("a later cell's call reaches the subscription")
        .expect("a call, not an error")
        .expect("a call, not the end");
    assert_eq!(
        next.tool_name.map(|name| name.name).as_deref(),
        Some("lookup")
    );
    first
}

/// Heartbeats as Codex 0.171's host sends them, only when asked, on our host and on
/// 0.171's own alike: a session opened with `heartbeat_interval_s` gets an empty
/// `heartbeat` event on its stream that often, and a subscription that asks gets
/// invocations carrying only the session id and `heartbeat`; a session and a subscription
/// that did not ask get none (Codex 0.169 drops a session on one), counted over the same
/// time up to their streams' end.
#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_come_when_asked_and_never_unasked() {
    for host in [our_host(), crate::codex_host_0171()] {
        heartbeats_on(&host).await;
    }
}

async fn heartbeats_on(binary: &std::path::Path) {
    let host = spawn(binary, &[]).await;
    let mut client = host.client.clone();
    let open = |heartbeat_interval_s| proto::OpenSessionRequest {
        output_truncation: 2,
        heartbeat_interval_s,
        ..Default::default()
    };
    // Before the asked session opens: its second beat is two seconds after it, at least.
    let started = Instant::now();
    let mut asked = client
        .open_session(open(1))
        .await
        .expect("open")
        .into_inner();
    let mut unasked = client
        .open_session(open(0))
        .await
        .expect("open")
        .into_inner();
    let mut ids = Vec::new();
    for stream in [&mut asked, &mut unasked] {
        let event = stream
            .message()
            .await
            .expect("opened")
            .and_then(|e| e.event);
        let Some(proto::session_event::Event::Opened(opened)) = event else {
            panic!("the first event is `opened`: {event:?}");
        };
        ids.push(opened.session_id);
    }
    let subscribe = |session: &str, heartbeat_interval_s| proto::SubscribeToToolCallsRequest {
        session_id: session.to_owned(),
        heartbeat_interval_s,
        tool_names: vec![],
    };
    let mut asked_calls = client
        .subscribe_to_tool_calls(subscribe(&ids[0], 1))
        .await
        .expect("subscribe")
        .into_inner();
    let mut unasked_calls = client
        .subscribe_to_tool_calls(subscribe(&ids[1], 0))
        .await
        .expect("subscribe")
        .into_inner();
    // Two heartbeats on each asked stream, a second apart.
    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(5), asked.message())
            .await
            .expect("a heartbeat within 5 s")
            .expect("the session's stream")
            .expect("an event");
        assert_eq!(
            event.event,
            Some(proto::session_event::Event::Heartbeat(proto::Heartbeat {}))
        );
        let beat = tokio::time::timeout(Duration::from_secs(5), asked_calls.message())
            .await
            .expect("a heartbeat within 5 s")
            .expect("the calls' stream")
            .expect("an invocation");
        assert_eq!(
            beat,
            proto::ToolInvocation {
                session_id: ids[0].clone(),
                heartbeat: Some(proto::Heartbeat {}),
                ..Default::default()
            }
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    // The unasked streams, over the same time and to their end: nothing.
    client
        .close_session(proto::CloseSessionRequest {
            session_id: ids[1].clone(),
        })
        .await
        .expect("closed");
    let events = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = Vec::new();
        while let Some(event) = unasked.message().await.expect("the stream") {
            seen.push(event);
        }
        seen
    })
    .await
    .expect("the session's stream ends once it is closed");
    assert_eq!(events, [], "an unasked session's stream");
    let calls = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = Vec::new();
        while let Some(call) = unasked_calls.message().await.expect("the stream") {
            seen.push(call);
        }
        seen
    })
    .await
    .expect("the calls' stream ends once the session is closed");
    assert_eq!(calls, [], "an unasked subscription");
    drop((asked, asked_calls));
}

/// Several subscriptions to one session's tool calls, on our host and on Codex's (0.169
/// and 0.171) alike: each call goes to one subscription whose `tool_names` filter takes it
/// (name and namespace, exactly; none: every tool), round-robin in subscription order; a
/// filter naming a tool without a name is refused.
#[tokio::test(flavor = "multi_thread")]
async fn several_subscriptions_share_a_sessions_calls_as_codexs_hosts_do() {
    for host in [our_host(), crate::codex_host(), crate::codex_host_0171()] {
        let name = |name: &str, namespace: &str| proto::ToolName {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        };
        let (odd, even, all) = (vec![1, 3, 5], vec![2, 4, 6], vec![1, 2, 3, 4, 5, 6]);
        for (filter, a, b) in [
            (vec![], odd.clone(), even.clone()),
            (vec![name("echo", "")], odd.clone(), even.clone()),
            (vec![name("other_name", "ns")], even.clone(), odd.clone()),
            (vec![name("other_name", "")], vec![], all.clone()),
            (vec![name("other_js", "ns")], vec![], all.clone()),
        ] {
            let dealt = deal(&host, filter.clone()).await;
            assert_eq!(dealt, Ok((a, b)), "{} with {filter:?}", host.display());
        }
        let refused = deal(&host, vec![name("", "")]).await;
        assert_eq!(
            refused,
            Err("InvalidArgument: code-mode tool name must not be empty".to_owned()),
            "{}",
            host.display()
        );
    }
}

/// On a fresh session of `binary`: subscription A with `filter`, then B with none, and a
/// cell making six calls at once (`echo` and `ns::other_name`, alternating); the sequence
/// numbers each subscription got.
async fn deal(
    binary: &std::path::Path,
    filter: Vec<proto::ToolName>,
) -> Result<(Vec<u64>, Vec<u64>), String> {
    use codex_code_mode_host::client::tool;
    let host = spawn(binary, &[]).await;
    let mut client = host.client.clone();
    let (_events, opened) = open_raw(&mut client, 2).await;
    let subscribe = |tool_names| proto::SubscribeToToolCallsRequest {
        session_id: opened.session_id.clone(),
        tool_names,
        heartbeat_interval_s: 0,
    };
    let mut a = client
        .subscribe_to_tool_calls(subscribe(filter))
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    let mut b = client
        .subscribe_to_tool_calls(subscribe(vec![]))
        .await
        .expect("a second subscription")
        .into_inner();
    let mut request = exec_request(
        "await Promise.all([0, 1, 2].flatMap((i) => [tools.echo({i}), tools.other_js({i})]));",
    );
    request.session_id = opened.session_id.clone();
    request.execution_id = uuid::Uuid::new_v4().to_string();
    request.tool_call_id = "call".to_owned();
    request.yield_time_ms = 100;
    request.enabled_tools = vec![
        tool("echo", "echo", None),
        tool("other_js", "other_name", Some("ns")),
    ];
    let _execution = client.execute(request).await.expect("the exec");
    let mut got = (Vec::new(), Vec::new());
    while got.0.len() + got.1.len() < 6 {
        let (from_a, call) = tokio::select! {
            call = a.message() => (true, call),
            call = b.message() => (false, call),
            () = tokio::time::sleep(Duration::from_secs(10)) => {
                panic!("{}: six calls not dealt within 10 s: {got:?}", binary.display())
            }
        };
        let call = call.expect("a call").expect("a call, not the end");
        if from_a {
            got.0.push(call.sequence);
        } else {
            got.1.push(call.sequence);
        }
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread")]
async fn process_metrics_are_answered_for_real() {
    let host = spawn(&our_host(), &[]).await;
    let mut driver = open(&host, 2).await;
    driver
        .run(exec_request("text(1)"))
        .await
        .expect("a cell starts the runtime");
    let metrics = crate::process_metrics(&host).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        metrics.process_start_time_seconds > now - 600.0
            && metrics.process_start_time_seconds <= now + 1.0,
        "{metrics:?}"
    );
    assert!(metrics.runtime_pid > 0, "{metrics:?}");
    assert!(
        metrics.runtime_resident_memory_bytes > 1024 * 1024,
        "{metrics:?}"
    );
    assert!(
        metrics.resident_memory_bytes > metrics.runtime_resident_memory_bytes,
        "{metrics:?}"
    );
    assert!(
        metrics.cpu_seconds_total >= metrics.runtime_cpu_seconds_total
            && metrics.cpu_seconds_total > 0.0,
        "{metrics:?}"
    );
}

async fn runtime_pid(host: &codex_code_mode_host::client::StdioHost) -> i32 {
    let metrics = crate::process_metrics(host).await;
    i32::try_from(metrics.runtime_pid).expect("a pid")
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A cell running when the runtime is killed is rebuilt from its journal on a fresh
/// runtime (contract §7, durable cells): its wait goes on and ends with its own output,
/// once, and no loss message; the session keeps its stored value.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runtime_rebuilds_its_running_cell_and_keeps_every_stored_value() {
    let host = spawn(&our_host(), &[]).await;
    let mut driver = open(&host, 2).await;
    let outcome = driver
        .run(exec_request(r#"store("kept", {n: 41}); text("stored");"#))
        .await
        .expect("store");
    assert!(status_of(&outcome).contains("stored"));
    // A cell waits on a timer when its runtime is killed.
    let mut request = exec_request(
        r#"const r = Math.random(); text("waiting"); await new Promise(r => setTimeout(r, 1500)); text("done " + (r < 1));"#,
    );
    request.yield_time_ms = 200;
    let yielded = driver.run(request).await.expect("a running cell");
    assert_eq!(status_of(&yielded), r#"cell 2 yielded [text "waiting"]"#);
    let pid = runtime_pid(&host).await;
    // SAFETY: kill(2) on the runtime process this host started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let rebuilt = live(
        driver
            .wait("2", 10_000, None)
            .await
            .expect("wait on the cell")
            .into_inner(),
    );
    assert_eq!(
        status_of(&rebuilt),
        r#"cell 2 completed{error_text: ""} [text "done true"]"#
    );
    // The session goes on, on the fresh runtime, with its stored value.
    let outcome = driver
        .run(exec_request(r#"text(load("kept").n + 1);"#))
        .await
        .expect("the next exec");
    assert_eq!(
        status_of(&outcome),
        r#"cell 3 completed{error_text: ""} [text "42"]"#
    );
    assert_ne!(runtime_pid(&host).await, pid, "a fresh runtime");
}

/// A process's field from `/proc/PID/status` (`PPid`, `State`), if it still exists.
fn proc_status(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    })
}

/// The first runtime is forked from the front (one file, no exec on the cold start's
/// path), so it must be cleaned as a spawned one is: none of the front's environment,
/// whether in its table or in its memory (codex's environment holds credentials); neither
/// of the protocol's standard streams; and it dies with a front that is killed.
#[tokio::test(flavor = "multi_thread")]
async fn the_forked_runtime_keeps_no_environment_no_stdio_and_dies_with_its_front() {
    const SECRET: &str = "forked-runtime-secret-4e1d9b";
    const ARGUMENT_SECRET: &str = "argument-secret-77c2a0";
    let mut command = tokio::process::Command::new(our_host());
    // An exporter URL with credentials on the command line (nothing listens there: its
    // batches are dropped), and a signal blocked as the front starts (masks are inherited).
    let exporter = format!("http://user:{ARGUMENT_SECRET}@127.0.0.1:9/v1/traces");
    command
        .args([
            "--listen",
            "grpc+stdio://",
            "--otel-trace-exporter",
            &exporter,
        ])
        .env("CODE_MODE_TEST_SECRET", SECRET)
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec, only async-signal-safe calls on this process's own
    // signal mask.
    unsafe {
        command.pre_exec(|| {
            let mut blocked: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut blocked);
            libc::sigaddset(&mut blocked, libc::SIGUSR2);
            libc::sigprocmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
            Ok(())
        });
    }
    let host = codex_code_mode_host::client::StdioHost::spawn(command)
        .await
        .expect("spawn");
    let mut driver = open(&host, 2).await;
    let outcome = driver
        .run(exec_request(r#"text("up");"#))
        .await
        .expect("an exec");
    assert!(status_of(&outcome).contains("up"));
    let runtime = runtime_pid(&host).await;
    let front = i32::try_from(host.pid().expect("a pid")).expect("a pid");
    // Forked: a child of the front, of the same executable, never started again.
    assert_eq!(
        proc_status(runtime, "PPid"),
        Some(front.to_string()),
        "the runtime is the front's child"
    );
    // Forked, not spawned: a spawned runtime is named after its file (code-mode-bin or the
    // front's own), only the fork renames itself.
    assert_eq!(
        proc_status(runtime, "Name").as_deref(),
        Some("code-mode-rt")
    );
    // The front's blocked signal is not the runtime's.
    let blocked = |pid: i32| {
        u64::from_str_radix(&proc_status(pid, "SigBlk").expect("SigBlk"), 16).expect("a mask")
    };
    let usr2 = 1u64 << (libc::SIGUSR2 - 1);
    assert_ne!(blocked(front) & usr2, 0, "the probe sees the front's mask");
    assert_eq!(blocked(runtime), 0, "the runtime blocks no signal");
    // Nor is its command line, in the table or in memory.
    let has_argument = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .expect("cmdline")
            .windows(ARGUMENT_SECRET.len())
            .any(|window| window == ARGUMENT_SECRET.as_bytes())
    };
    assert!(has_argument(front), "the probe sees the front's arguments");
    assert!(
        !has_argument(runtime),
        "the runtime keeps the front's arguments"
    );
    let cmdline = std::fs::read(format!("/proc/{runtime}/cmdline")).expect("cmdline");
    let (name, rest) = cmdline.split_at(
        cmdline
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(cmdline.len()),
    );
    assert_eq!(name, b"code-mode-rt", "{cmdline:?}");
    assert!(rest.iter().all(|byte| *byte == 0), "{cmdline:?}");
    let contains = |bytes: &[u8]| bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
    // The front has the variable where the kernel put it; the runtime's copy of that
    // memory holds none of it.
    let front_environ = std::fs::read(format!("/proc/{front}/environ")).expect("front environ");
    assert!(
        contains(&front_environ),
        "the probe sees the front's variable"
    );
    let runtime_environ =
        std::fs::read(format!("/proc/{runtime}/environ")).expect("runtime environ");
    assert!(
        !contains(&runtime_environ),
        "the runtime's environment memory still holds the front's variable"
    );
    for fd in [0, 1] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{runtime}/fd/{fd}")).expect("a descriptor"),
            std::path::PathBuf::from("/dev/null"),
            "descriptor {fd} of the runtime"
        );
    }
    // SAFETY: kill(2) on the front process this test started.
    assert_eq!(unsafe { libc::kill(front, libc::SIGKILL) }, 0);
    assert!(
        eventually(10, || proc_status(runtime, "State")
            .is_none_or(|state| state.starts_with('Z')))
        .await,
        "the runtime {runtime} died with its front"
    );
}

/// The front forks its runtime before it has parsed its arguments, and only then learns
/// whether it wants it: a front told to use another runtime (here `CODE_MODE_BIN` naming a
/// file that is not there) kills and reaps the one it forked, leaving no child behind,
/// and still answers (each session is told the runtime is missing).
#[tokio::test(flavor = "multi_thread")]
async fn a_front_told_to_use_another_runtime_leaves_no_forked_one_behind() {
    let scratch = code_mode_conformance::Scratch::new();
    let missing = scratch.0.join("code-mode-bin");
    let mut command = tokio::process::Command::new(our_host());
    command
        .args(["--listen", "grpc+stdio://"])
        .env("CODE_MODE_BIN", &missing)
        .stderr(std::process::Stdio::null());
    let host = codex_code_mode_host::client::StdioHost::spawn(command)
        .await
        .expect("spawn");
    let refused = host
        .client
        .clone()
        .open_session(proto::OpenSessionRequest::default())
        .await
        .expect_err("no runtime to open a session on");
    assert!(
        refused.message().contains("code-mode runtime unavailable"),
        "{refused:?}"
    );
    let front = i32::try_from(host.pid().expect("a pid")).expect("a pid");
    let children = || {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| proc_status(*pid, "PPid") == Some(front.to_string()))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(10, || children().is_empty()).await,
        "the front {front} keeps children {:?}",
        children()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_heap_bomb_fails_its_cell_and_a_bystander_keeps_working() {
    let host = spawn(&our_host(), &[]).await;
    let mut bystander = open(&host, 2).await;
    bystander
        .run(exec_request(r#"store("mine", "safe");"#))
        .await
        .expect("store");
    let mut bomber = open(&host, 2).await;
    let mut request = exec_request("const a = []; while (true) a.push(new Array(1e5).fill(1));");
    request.yield_time_ms = 60_000;
    let started = Instant::now();
    let outcome = bomber.run(request).await.expect("the bomb's outcome");
    let rendered = status_of(&outcome);
    assert!(
        rendered.contains("Out of memory: the cell reached its heap limit"),
        "{rendered}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let outcome = bystander
        .run(exec_request(r#"text(load("mine"));"#))
        .await
        .expect("the bystander");
    assert_eq!(
        status_of(&outcome),
        r#"cell 2 completed{error_text: ""} [text "safe"]"#
    );
    // The limit codex can send is applied: 16 MiB stops a cell that 128 MiB would not.
    let mut small = crate::Driver::open(
        host.client.clone(),
        proto::OpenSessionRequest {
            output_truncation: 2,
            cell_execution_limits: Some(proto::SessionCellExecutionLimits {
                max_yield_time_ms: 0,
                max_heap_size_bytes: 16 * 1024 * 1024,
            }),
            ..Default::default()
        },
        crate::responder(),
    )
    .await
    .expect("open");
    let outcome = small.run(exec_request("const a = []; for (let i = 0; i < 60; i++) a.push(new Array(1e5).fill(1)); text('fits');")).await.expect("run");
    assert!(
        status_of(&outcome).contains("Out of memory"),
        "{}",
        status_of(&outcome)
    );
    let outcome = bystander.run(exec_request("const a = []; for (let i = 0; i < 60; i++) a.push(new Array(1e5).fill(1)); text('fits');")).await.expect("run");
    assert!(
        status_of(&outcome).contains(r#"text "fits""#),
        "{}",
        status_of(&outcome)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_yield_time_caps_every_observation() {
    let host = spawn(&our_host(), &[]).await;
    let mut driver = crate::Driver::open(
        host.client.clone(),
        proto::OpenSessionRequest {
            output_truncation: 2,
            cell_execution_limits: Some(proto::SessionCellExecutionLimits {
                max_yield_time_ms: 200,
                max_heap_size_bytes: 0,
            }),
            ..Default::default()
        },
        crate::responder(),
    )
    .await
    .expect("open");
    let started = Instant::now();
    let outcome = driver
        .run(exec_request(
            r#"text("a"); await new Promise(r => setTimeout(r, 5000));"#,
        ))
        .await
        .expect("run");
    assert_eq!(status_of(&outcome), r#"cell 1 yielded [text "a"]"#);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_carries_protocol_bytes_only_whatever_a_cell_throws() {
    let host = spawn(&our_host(), &[]).await;
    let mut driver = open(&host, 2).await;
    for source in [
        r#"throw new Proxy(new Error("x"), { get() { throw 1 } });"#,
        r#"throw { toString() { throw new Error("inner") } };"#,
        r#"Promise.reject(new Proxy({}, { get() { throw 2 } })); text("after");"#,
    ] {
        let outcome = driver
            .run(exec_request(source))
            .await
            .expect("the host answers");
        assert!(!outcome.cell_id.is_empty());
    }
    // Another session on the same connection still works: the stream is intact.
    let mut other = open(&host, 2).await;
    let outcome = other
        .run(exec_request(r#"text("intact")"#))
        .await
        .expect("execute");
    assert_eq!(
        status_of(&outcome),
        r#"cell 1 completed{error_text: ""} [text "intact"]"#
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_vanishes_ends_every_cell_and_leaves_no_runtime() {
    let mut host = spawn(&our_host(), &[]).await;
    let mut driver = open(&host, 2).await;
    let mut request = exec_request(r#"await new Promise(r => setTimeout(r, 60000));"#);
    request.yield_time_ms = 100;
    driver.run(request).await.expect("a running cell");
    let runtime = runtime_pid(&host).await;
    let pid = host.pid().expect("a pid") as i32;
    drop(driver);
    host.disconnect();
    let status = tokio::time::timeout(Duration::from_secs(10), host.child().wait())
        .await
        .expect("the host exits")
        .expect("wait");
    assert!(
        status.success(),
        "a client going away is a clean end: {status:?}"
    );
    assert!(!alive(pid));
    assert!(
        eventually(10, || !alive(runtime)).await,
        "the runtime process {runtime} is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_instead_of_http2_gets_an_error_and_nothing_else_on_stdout() {
    use std::process::Stdio;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut child = crate::spawn_child(
        &our_host(),
        &["--listen", "grpc+stdio://"],
        [Stdio::piped(), Stdio::piped(), Stdio::piped()],
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nthis is not HTTP/2 at all\r\n")
        .await
        .unwrap();
    let mut stdout = Vec::new();
    let mut out = child.stdout.take().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = out.read_to_end(&mut stdout).await;
        child.wait().await
    })
    .await
    .expect("the host ends the connection")
    .expect("wait");
    assert!(!status.success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.contains("the gRPC connection on stdio failed"),
        "{stderr}"
    );
    // Only HTTP/2 frames went out: a SETTINGS frame first, then frames of known types.
    let mut at = 0;
    let mut kinds = Vec::new();
    while at + 9 <= stdout.len() {
        let length = u32::from_be_bytes([0, stdout[at], stdout[at + 1], stdout[at + 2]]) as usize;
        kinds.push(stdout[at + 3]);
        at += 9 + length;
    }
    assert_eq!(
        at,
        stdout.len(),
        "stdout is a whole number of frames: {stdout:?}"
    );
    assert_eq!(kinds.first(), Some(&4), "SETTINGS first: {kinds:?}");
    assert!(kinds.iter().all(|kind| *kind <= 9), "{kinds:?}");
}
