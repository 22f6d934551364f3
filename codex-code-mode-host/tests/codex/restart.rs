//! `--listen grpc:// --state-dir`: the host killed with SIGKILL while a session's cell waits
//! on a tool call it streamed, started again on the same directory. A client that names
//! the session goes on: the invocation it was given is answered under its id (and not
//! streamed again), the cell's `Wait` gives the rest of its output once, the stored values
//! are there and the next cell takes the next of Codex's ids.

use crate::tcp::Listening;
use code_mode_conformance::Scratch;
use codex_code_mode_host::client::{Driver, UNANSWERED, exec_request, render_outcome, tool};
use codex_code_mode_host::proto;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_session_goes_on_after_the_host_was_killed() {
    let scratch = Scratch::new();
    let state = scratch.0.join("state");
    let state = state.to_str().expect("UTF-8");
    kept_session_goes_on(&["--state-dir", state]).await;
}

/// The same with the sessions in Postgres (`--state-url`): the host started after the
/// kill is another process under another name, and takes the session over when a call
/// names it, once the killed host's lease ran out.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_kept_in_postgres_is_taken_over_by_the_next_host() {
    let cluster = code_mode_conformance::PgCluster::start();
    kept_session_goes_on(&["--state-url", &cluster.url, "--state-lease", "1s"]).await;
}

/// A host with `store` (its state flags) killed while a cell waits on a streamed call; the
/// next host goes on with the session.
async fn kept_session_goes_on(store: &[&str]) {
    let host = Listening::start_with(&crate::our_host(), store, &[]).await;
    let mut driver = Driver::open(
        host.client().await,
        proto::OpenSessionRequest {
            output_truncation: proto::OutputTruncation::Server as i32,
            ..Default::default()
        },
        Arc::new(|_| Err(UNANSWERED.to_owned())),
    )
    .await
    .expect("a session");
    let session = driver.session_id.clone();
    let mut request = exec_request(
        r#"store("k", "v"); text("before");
const r = await tools.lookup({q: 1});
text("got " + r.v); store("k2", r.v);"#,
    );
    request.enabled_tools = vec![tool("lookup", "lookup", None)];
    request.yield_time_ms = 300;
    let first = driver.run(request).await.expect("an outcome");
    assert_eq!(render_outcome(&first), r#"cell 1 yielded [text "before"]"#);
    let invocation = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(invocation) = driver.invocations.lock().unwrap().first().cloned() {
                break invocation;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the invocation is streamed in time");
    // Killed with its client still connected (a client that left first would have
    // closed its session).
    host.stop().await;
    drop(driver);

    let host = Listening::start_with(&crate::our_host(), store, &[]).await;
    let mut client = host.client().await;
    // The session is taken back by the first call that names it; the invocation the client
    // was given is not streamed again.
    let mut calls = client
        .subscribe_to_tool_calls(proto::SubscribeToToolCallsRequest {
            session_id: session.clone(),
        })
        .await
        .expect("the kept session")
        .into_inner();
    client
        .complete_tool_call(proto::CompleteToolCallRequest {
            session_id: session.clone(),
            invocation_id: invocation.invocation_id.clone(),
            result: Some(proto::complete_tool_call_request::Result::Succeeded(
                proto::ToolCallSucceeded {
                    output_json: r#"{"v": 42}"#.to_owned(),
                },
            )),
        })
        .await
        .expect("the answer to the invocation given before the restart");
    let waited = client
        .wait(proto::WaitRequest {
            session_id: session.clone(),
            cell_id: "1".to_owned(),
            wait_id: "w1".to_owned(),
            yield_time_ms: 10_000,
            max_tokens: None,
        })
        .await
        .expect("a wait")
        .into_inner();
    let Some(proto::wait_response::Cell::LiveCell(outcome)) = waited.cell else {
        panic!("the cell is live: {waited:?}");
    };
    // The rest of its output, once: not what the exec before the kill was given.
    assert_eq!(
        render_outcome(&outcome),
        r#"cell 1 completed{error_text: ""} [text "got 42"]"#
    );
    let again = tokio::time::timeout(Duration::from_millis(300), calls.next()).await;
    assert!(again.is_err(), "nothing streamed again: {again:?}");

    let mut next = exec_request(r#"text(load("k") + load("k2"))"#);
    next.session_id = session.clone();
    next.execution_id = uuid::Uuid::new_v4().to_string();
    next.tool_call_id = "call_after".to_owned();
    let mut events = client.execute(next).await.expect("an exec").into_inner();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event.expect("an event"));
    }
    let Some(proto::execute_event::Event::Outcome(outcome)) = last.and_then(|event| event.event)
    else {
        panic!("an outcome");
    };
    assert_eq!(
        render_outcome(&outcome),
        r#"cell 2 completed{error_text: ""} [text "v42"]"#
    );
    host.stop().await;
}

/// A state store that fills up (`--state-max-bytes`: SQLite refuses the write as on a full
/// disk) while a cell runs: the invocation whose checkpoint did not fit is never streamed
/// (the stream ends with UNAVAILABLE and why); the host then dies. Started again with
/// room, it gives the recorded answer to the cell's first call and streams its second
/// once: each call runs exactly once, counted by what the tool itself wrote.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_store_sends_no_call_twice_across_a_crash() {
    const BIG: usize = 600 * 1024;
    const STEP: Duration = Duration::from_secs(60);
    let scratch = Scratch::new();
    let state = scratch.0.join("state");
    let state = state.to_str().expect("UTF-8");
    let ran = scratch.0.join("ran.log");
    // The tool: each run appends its input to the log.
    let run = |invocation: &proto::ToolInvocation| {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ran)
            .expect("the tool's log");
        writeln!(log, "{}", invocation.input_json).expect("a line");
    };
    let answer = |session: &str, invocation: &proto::ToolInvocation, output_json: String| {
        proto::CompleteToolCallRequest {
            session_id: session.to_owned(),
            invocation_id: invocation.invocation_id.clone(),
            result: Some(proto::complete_tool_call_request::Result::Succeeded(
                proto::ToolCallSucceeded { output_json },
            )),
        }
    };
    // Room for the first answer, not for a checkpoint that holds it again.
    let capped = ["--state-dir", state, "--state-max-bytes", "1000000"];
    let host = Listening::start_with(&crate::our_host(), &capped, &[]).await;
    let mut client = host.client().await;
    let mut events = client
        .open_session(proto::OpenSessionRequest {
            output_truncation: proto::OutputTruncation::Server as i32,
            ..Default::default()
        })
        .await
        .expect("a session")
        .into_inner();
    let Some(Ok(proto::SessionEvent {
        event: Some(proto::session_event::Event::Opened(opened)),
    })) = events.next().await
    else {
        panic!("no opened event");
    };
    let session = opened.session_id;
    let mut calls = client
        .subscribe_to_tool_calls(proto::SubscribeToToolCallsRequest {
            session_id: session.clone(),
        })
        .await
        .expect("the tool calls")
        .into_inner();
    let mut request = exec_request(
        r#"const a = await tools.lookup({n: 1});
const b = await tools.lookup({n: 2});
text(a.size + " " + b.n);"#,
    );
    request.session_id = session.clone();
    request.execution_id = uuid::Uuid::new_v4().to_string();
    request.tool_call_id = "call_full".to_owned();
    request.enabled_tools = vec![tool("lookup", "lookup", None)];
    request.yield_time_ms = 300;
    let started: Vec<_> = client
        .execute(request)
        .await
        .expect("an exec")
        .into_inner()
        .collect()
        .await;
    assert!(
        started.iter().all(Result::is_ok),
        "the exec yields: {started:?}"
    );
    let first = tokio::time::timeout(STEP, calls.next())
        .await
        .expect("the first call in time")
        .expect("the first call")
        .expect("streamed");
    assert_eq!(first.input_json, r#"{"n":1}"#);
    run(&first);
    let big = format!(r#"{{"size": {BIG}, "pad": "{}"}}"#, "x".repeat(BIG));
    client
        .complete_tool_call(answer(&session, &first, big))
        .await
        .expect("the answer fits: it is recorded, then given to the cell");
    // The cell's second call needs a checkpoint with the first answer in its journal,
    // which does not fit: it is not streamed, and the stream says why.
    let second = tokio::time::timeout(STEP, calls.next())
        .await
        .expect("the stream ends in time (the write is tried again, then given up)");
    match second {
        Some(Err(status)) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with("code-mode state could not be written:"),
                "{status:?}"
            );
        }
        other => panic!("a call streamed with no checkpoint behind it: {other:?}"),
    }
    // The host dies with its client still connected.
    host.stop().await;
    drop((client, calls, events));

    let host = Listening::start_with(&crate::our_host(), &["--state-dir", state], &[]).await;
    let mut client = host.client().await;
    let mut calls = client
        .subscribe_to_tool_calls(proto::SubscribeToToolCallsRequest {
            session_id: session.clone(),
        })
        .await
        .expect("the kept session")
        .into_inner();
    let waited = tokio::spawn({
        let mut client = client.clone();
        let session = session.clone();
        async move {
            client
                .wait(proto::WaitRequest {
                    session_id: session,
                    cell_id: "1".to_owned(),
                    wait_id: "w-after".to_owned(),
                    yield_time_ms: 30_000,
                    max_tokens: None,
                })
                .await
        }
    });
    // Rebuilt at the wait, the cell gets its recorded first answer and makes its second
    // call, streamed now for the first time.
    let second = tokio::time::timeout(STEP, calls.next())
        .await
        .expect("the second call in time")
        .expect("the second call")
        .expect("streamed");
    assert_eq!(second.input_json, r#"{"n":2}"#);
    run(&second);
    client
        .complete_tool_call(answer(&session, &second, r#"{"n": 2}"#.to_owned()))
        .await
        .expect("the second answer");
    let waited = tokio::time::timeout(STEP, waited)
        .await
        .expect("the wait in time")
        .expect("the waiting task")
        .expect("the wait")
        .into_inner();
    let Some(proto::wait_response::Cell::LiveCell(outcome)) = waited.cell else {
        panic!("the cell is live: {waited:?}");
    };
    assert_eq!(
        render_outcome(&outcome),
        format!(r#"cell 1 completed{{error_text: ""}} [text "{BIG} 2"]"#)
    );
    // Nothing else is streamed, and each call ran once.
    let again = tokio::time::timeout(Duration::from_millis(300), calls.next()).await;
    assert!(again.is_err(), "nothing streamed again: {again:?}");
    assert_eq!(
        std::fs::read_to_string(&ran).expect("the tool's log"),
        "{\"n\":1}\n{\"n\":2}\n"
    );
    host.stop().await;
}
