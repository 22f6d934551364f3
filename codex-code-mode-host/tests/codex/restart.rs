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
    let host = Listening::start_with(&crate::our_host(), &["--state-dir", state], &[]).await;
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
    let invocation = loop {
        if let Some(invocation) = driver.invocations.lock().unwrap().first().cloned() {
            break invocation;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(driver);
    host.stop().await;

    let host = Listening::start_with(&crate::our_host(), &["--state-dir", state], &[]).await;
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
    let rendered = render_outcome(&outcome);
    assert!(
        rendered.starts_with("cell 1 completed{error_text: \"\"}")
            && rendered.ends_with(r#"text "got 42"]"#)
            && !rendered.contains("before"),
        "{rendered}"
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
    let rendered = render_outcome(&outcome);
    assert!(
        rendered.starts_with("cell 2 completed{error_text: \"\"}")
            && rendered.ends_with(r#"text "v42"]"#),
        "{rendered}"
    );
    host.stop().await;
}
