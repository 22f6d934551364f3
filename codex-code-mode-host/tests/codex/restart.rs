//! `--listen grpc:// --state-dir`: the host killed with SIGKILL while a session's cell waits
//! on a tool call it streamed, started again on the same directory. A client that names
//! the session goes on: the invocation it was given is answered under its id (and not
//! streamed again), the cell's `Wait` gives the rest of its output once, the stored values
//! are there and the next cell takes the next of Codex's ids.
//!
//! Every call on a host is bounded ([`bounded`]): a host that hangs fails the test. The
//! client runs the tool for every invocation any host streams, and the tool counts its
//! runs; what a subscription streamed is counted up to its end (the session closed), so
//! that a call streamed twice, before or after the restart, shows as a second run.

use crate::tcp::Listening;
use code_mode_conformance::Scratch;
use codex_code_mode_host::client::{exec_request, render_outcome, tool};
use codex_code_mode_host::proto;
use futures_util::StreamExt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Client = proto::code_mode_host_client::CodeModeHostClient<tonic::transport::Channel>;

/// The longest any one call on a host may take (a state write that fails is tried again
/// for 10 s before the call that depends on it fails).
const STEP: Duration = Duration::from_secs(30);

/// `future`, a call on a host, within [`STEP`]; a host that does not answer in time fails
/// the test with `what`.
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {STEP:?} (the host hangs)"))
}

/// The tool the cells call, run by the client for every invocation a host streams to it:
/// it records each of its runs itself, so that a call streamed twice runs twice.
struct Tool {
    runs: Mutex<Vec<String>>,
    /// Its output for an input.
    output: fn(&str) -> String,
}

impl Tool {
    fn new(output: fn(&str) -> String) -> Arc<Self> {
        Arc::new(Self {
            runs: Mutex::default(),
            output,
        })
    }

    /// Runs for `invocation` of `session`: the answer to send.
    fn run(
        &self,
        session: &str,
        invocation: &proto::ToolInvocation,
    ) -> proto::CompleteToolCallRequest {
        self.runs
            .lock()
            .unwrap()
            .push(invocation.input_json.clone());
        proto::CompleteToolCallRequest {
            session_id: session.to_owned(),
            invocation_id: invocation.invocation_id.clone(),
            result: Some(proto::complete_tool_call_request::Result::Succeeded(
                proto::ToolCallSucceeded {
                    output_json: (self.output)(&invocation.input_json),
                },
            )),
        }
    }

    /// The inputs of its runs so far, in order.
    fn runs(&self) -> Vec<String> {
        self.runs.lock().unwrap().clone()
    }
}

/// What one subscription to a session's tool calls gave, read to its end.
#[derive(Debug, Default)]
struct Served {
    /// The inputs of the invocations it streamed, in order (each run by the tool).
    streamed: Vec<String>,
    /// The host's reply to each answer sent (`Err`: refused, with why).
    answers: Vec<Result<(), tonic::Status>>,
    /// How it ended: `None` for a clean end, else the status it ended with.
    end: Option<tonic::Status>,
}

/// The client's tool runner on one subscription, and what it served so far.
struct Runner {
    task: tokio::task::JoinHandle<()>,
    served: Arc<Mutex<Served>>,
}

impl Runner {
    /// Runs on `calls` until the stream ends: each invocation streamed is run by `tool`
    /// and answered at once.
    fn serve(
        mut client: Client,
        session: String,
        mut calls: tonic::Streaming<proto::ToolInvocation>,
        tool: Arc<Tool>,
    ) -> Self {
        let served = Arc::new(Mutex::new(Served::default()));
        let serving = served.clone();
        let task = tokio::spawn(async move {
            while let Some(item) = calls.next().await {
                let invocation = match item {
                    Ok(invocation) => invocation,
                    Err(status) => {
                        serving.lock().unwrap().end = Some(status);
                        break;
                    }
                };
                let input = invocation.input_json.clone();
                serving.lock().unwrap().streamed.push(input);
                let answer = tool.run(&session, &invocation);
                let reply = bounded("an answer", client.complete_tool_call(answer)).await;
                serving.lock().unwrap().answers.push(reply.map(drop));
            }
        });
        Self { task, served }
    }

    /// What it served, once its stream ended (within [`STEP`], else the test fails with
    /// `what` and what it served so far).
    async fn ended(self, what: &str) -> Served {
        let mut task = self.task;
        if let Ok(ran) = tokio::time::timeout(STEP, &mut task).await {
            ran.expect("the tool runner");
        } else {
            task.abort();
            let so_far = format!("{:?}", self.served.lock().unwrap());
            panic!("{what}: the stream did not end within {STEP:?}; so far {so_far}");
        }
        std::mem::take(&mut *self.served.lock().unwrap())
    }
}

/// A session opened on `client` (codex's request, server truncation) and its event stream,
/// kept open by the caller (a client that leaves closes its sessions).
async fn open(client: &mut Client) -> (String, tonic::Streaming<proto::SessionEvent>) {
    let mut events = bounded(
        "OpenSession",
        client.open_session(proto::OpenSessionRequest {
            output_truncation: proto::OutputTruncation::Server as i32,
            ..Default::default()
        }),
    )
    .await
    .expect("a session")
    .into_inner();
    let first = bounded("the opened event", events.next()).await;
    let Some(Ok(proto::SessionEvent {
        event: Some(proto::session_event::Event::Opened(opened)),
    })) = first
    else {
        panic!("no opened event: {first:?}");
    };
    (opened.session_id, events)
}

/// `SubscribeToToolCalls` for `session` (the call that takes a kept session back).
async fn subscribe(client: &mut Client, session: &str) -> tonic::Streaming<proto::ToolInvocation> {
    bounded(
        "SubscribeToToolCalls",
        client.subscribe_to_tool_calls(proto::SubscribeToToolCallsRequest {
            session_id: session.to_owned(),
            heartbeat_interval_s: 0,
            tool_names: vec![],
        }),
    )
    .await
    .expect("the session's tool calls")
    .into_inner()
}

/// Runs `request` in `session`: its events, read to the end of the stream.
async fn execute(
    client: &mut Client,
    session: &str,
    mut request: proto::ExecuteRequest,
) -> Vec<Result<proto::ExecuteEvent, tonic::Status>> {
    request.session_id = session.to_owned();
    request.execution_id = uuid::Uuid::new_v4().to_string();
    let events = bounded("Execute", client.execute(request))
        .await
        .expect("an exec")
        .into_inner();
    bounded("the exec's events", events.collect()).await
}

/// The outcome that ends `events`.
fn outcome(events: &[Result<proto::ExecuteEvent, tonic::Status>]) -> String {
    match events.last() {
        Some(Ok(proto::ExecuteEvent {
            event: Some(proto::execute_event::Event::Outcome(outcome)),
        })) => render_outcome(outcome),
        _ => panic!("the exec ends with an outcome: {events:?}"),
    }
}

/// `Wait` on `cell` of `session`: the live cell's outcome.
async fn wait(mut client: Client, session: String, cell: &str, wait_id: &str) -> String {
    let waited = bounded(
        "Wait",
        client.wait(proto::WaitRequest {
            session_id: session,
            cell_id: cell.to_owned(),
            wait_id: wait_id.to_owned(),
            yield_time_ms: 20_000,
            max_tokens: None,
        }),
    )
    .await
    .expect("a wait")
    .into_inner();
    let Some(proto::wait_response::Cell::LiveCell(outcome)) = waited.cell else {
        panic!("the cell is live: {waited:?}");
    };
    render_outcome(&outcome)
}

/// Closes `session`; then `runner`, serving its tool calls, sees its stream end: what it
/// served, in full.
async fn close(client: &mut Client, session: &str, runner: Runner) -> Served {
    bounded(
        "CloseSession",
        client.close_session(proto::CloseSessionRequest {
            session_id: session.to_owned(),
        }),
    )
    .await
    .expect("the session closed");
    runner
        .ended("the tool calls' stream ends once the session is closed")
        .await
}

/// No answer the client sent, before or after the restart, was refused.
fn every_answer_taken(before: &[Result<(), tonic::Status>], after: &[Result<(), tonic::Status>]) {
    let refused: Vec<_> = before
        .iter()
        .chain(after)
        .filter_map(|reply| reply.as_ref().err())
        .collect();
    assert!(refused.is_empty(), "every answer is taken: {refused:?}");
}

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

/// Two hosts on one Postgres: a session lives on its client's connection (as on Codex's
/// host, where another connection does not know it either), so a call naming it on
/// another host while its own lives is answered `NOT_FOUND` at once, not after the lease
/// (60 s here), and the session goes on where it is, its stored value its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_its_live_host_holds_is_unknown_at_once_to_another_host() {
    let cluster = code_mode_conformance::PgCluster::start();
    let store = ["--state-url", cluster.url.as_str(), "--state-lease", "60s"];
    let a = Listening::start_with(&crate::our_host(), &store, &[]).await;
    let b = Listening::start_with(&crate::our_host(), &store, &[]).await;
    let mut on_a = bounded("connecting", a.client()).await;
    let (session, _events) = open(&mut on_a).await;
    let mut request = exec_request(r#"store("k", "a's"); text("on a");"#);
    request.tool_call_id = "call_a".to_owned();
    let first = execute(&mut on_a, &session, request).await;
    assert_eq!(
        outcome(&first),
        r#"cell 1 completed{error_text: ""} [text "on a"]"#
    );
    let mut on_b = bounded("connecting", b.client()).await;
    let asked = std::time::Instant::now();
    let mut request = exec_request(r#"text(load("k"))"#);
    request.session_id = session.clone();
    request.execution_id = uuid::Uuid::new_v4().to_string();
    request.tool_call_id = "call_b".to_owned();
    let refused = bounded("an Execute on the other host", on_b.execute(request))
        .await
        .expect_err("another host does not serve a session its live host holds");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the refusal waited: {:?}",
        asked.elapsed()
    );
    let mut request = exec_request(r#"text(load("k"))"#);
    request.tool_call_id = "call_a2".to_owned();
    let again = execute(&mut on_a, &session, request).await;
    assert_eq!(
        outcome(&again),
        r#"cell 2 completed{error_text: ""} [text "a's"]"#
    );
}

/// A host with `store` (its state flags) killed while a cell waits on a streamed call; the
/// next host goes on with the session.
async fn kept_session_goes_on(store: &[&str]) {
    let lookup = Tool::new(|_| r#"{"v": 42}"#.to_owned());
    let host = Listening::start_with(&crate::our_host(), store, &[]).await;
    let mut client = bounded("connecting", host.client()).await;
    let (session, events) = open(&mut client).await;
    let mut calls = subscribe(&mut client, &session).await;
    let mut request = exec_request(
        r#"store("k", "v"); text("before");
const r = await tools.lookup({q: 1});
text("got " + r.v); store("k2", r.v);"#,
    );
    request.tool_call_id = "call_before".to_owned();
    request.enabled_tools = vec![tool("lookup", "lookup", None)];
    // Codex 0.171's catalog revision: the tools are kept under it, across the restart.
    request.catalog_revision = Some(3);
    request.yield_time_ms = 300;
    let first = execute(&mut client, &session, request).await;
    assert_eq!(outcome(&first), r#"cell 1 yielded [text "before"]"#);
    // The client is given the invocation and runs the tool; the host is killed, its client
    // still connected (a client that left first would have closed its session), before
    // the answer is sent.
    let given = bounded("the invocation", calls.next())
        .await
        .expect("the invocation")
        .expect("streamed");
    bounded("the host's kill", host.stop()).await;
    // Whatever else the killed host streamed is run too, up to the stream's end (the
    // connection is gone).
    let mut before = vec![given];
    let before_end = loop {
        match bounded("the stream's end with its host", calls.next()).await {
            Some(Ok(invocation)) => before.push(invocation),
            end => break end,
        }
    };
    let held: Vec<_> = before
        .iter()
        .map(|invocation| lookup.run(&session, invocation))
        .collect();
    drop((client, events, calls));

    let host = Listening::start_with(&crate::our_host(), store, &[]).await;
    let mut client = bounded("connecting", host.client()).await;
    // The session is taken back by the first call that names it; what it streams from now
    // on is run and answered, to the stream's end.
    let calls = subscribe(&mut client, &session).await;
    let runner = Runner::serve(client.clone(), session.clone(), calls, lookup.clone());
    // The invocation the client was given is answered under its id.
    let mut answers = Vec::new();
    for answer in held {
        let reply = bounded("the answer", client.complete_tool_call(answer)).await;
        answers.push(reply.map(drop));
    }
    // The rest of its output, once: not what the exec before the kill was given.
    assert_eq!(
        wait(client.clone(), session.clone(), "1", "w1").await,
        r#"cell 1 completed{error_text: ""} [text "got 42"]"#
    );
    let mut next = exec_request(r#"text(load("k") + load("k2") + typeof tools.lookup)"#);
    next.tool_call_id = "call_after".to_owned();
    next.catalog_revision = Some(3);
    let next = execute(&mut client, &session, next).await;
    assert_eq!(
        outcome(&next),
        r#"cell 2 completed{error_text: ""} [text "v42function"]"#
    );
    let after = close(&mut client, &session, runner).await;

    // The call ran once: the killed host streamed it once and the next host not again.
    let streamed_before: Vec<_> = before.iter().map(|i| i.input_json.as_str()).collect();
    assert_eq!(
        lookup.runs(),
        [r#"{"q":1}"#],
        "the tool's runs; streamed before the kill: {streamed_before:?} (ended {before_end:?}), \
         after: {after:?}"
    );
    assert!(
        after.streamed.is_empty() && after.end.is_none(),
        "nothing streamed after the restart, to the stream's clean end: {after:?}"
    );
    every_answer_taken(&answers, &after.answers);
    bounded("the host's stop", host.stop()).await;
}

/// A state store that fills up (`--state-max-bytes`: SQLite refuses the write as on a full
/// disk) while a cell runs: the invocation whose checkpoint did not fit is never streamed
/// (the stream ends with UNAVAILABLE and why); the host then dies. Started again with
/// room, it gives the recorded answer to the cell's first call and streams its second
/// once: each call runs exactly once, counted by the tool, which the client runs for every
/// invocation either host streams.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_store_sends_no_call_twice_across_a_crash() {
    const BIG: usize = 600 * 1024;
    let scratch = Scratch::new();
    let state = scratch.0.join("state");
    let state = state.to_str().expect("UTF-8");
    // The first call's answer is big: room for it, not for a checkpoint that holds it again.
    let lookup = Tool::new(|input| {
        if input == r#"{"n":1}"# {
            format!(r#"{{"size": {BIG}, "pad": "{}"}}"#, "x".repeat(BIG))
        } else {
            r#"{"n": 2}"#.to_owned()
        }
    });
    let capped = ["--state-dir", state, "--state-max-bytes", "1000000"];
    let host = Listening::start_with(&crate::our_host(), &capped, &[]).await;
    let mut client = bounded("connecting", host.client()).await;
    let (session, events) = open(&mut client).await;
    let calls = subscribe(&mut client, &session).await;
    let mut request = exec_request(
        r#"const a = await tools.lookup({n: 1});
const b = await tools.lookup({n: 2});
text(a.size + " " + b.n);"#,
    );
    request.tool_call_id = "call_full".to_owned();
    request.enabled_tools = vec![tool("lookup", "lookup", None)];
    request.yield_time_ms = 300;
    let started = execute(&mut client, &session, request).await;
    assert!(
        started.iter().all(Result::is_ok),
        "the exec yields: {started:?}"
    );
    // The client runs the tool from now on. The cell's second call needs a checkpoint with
    // the first answer in its journal, which does not fit: it is not streamed, and the
    // stream ends saying why.
    let runner = Runner::serve(client.clone(), session.clone(), calls, lookup.clone());
    let before = runner
        .ended("the second call's write tried again, then given up")
        .await;
    // The host dies with its client still connected.
    bounded("the host's kill", host.stop()).await;
    drop((client, events));

    let host = Listening::start_with(&crate::our_host(), &["--state-dir", state], &[]).await;
    let mut client = bounded("connecting", host.client()).await;
    let calls = subscribe(&mut client, &session).await;
    let runner = Runner::serve(client.clone(), session.clone(), calls, lookup.clone());
    // Rebuilt at the wait, the cell gets its recorded first answer and makes its second
    // call, streamed now for the first time.
    assert_eq!(
        wait(client.clone(), session.clone(), "1", "w-after").await,
        format!(r#"cell 1 completed{{error_text: ""}} [text "{BIG} 2"]"#)
    );
    let after = close(&mut client, &session, runner).await;

    // Each call ran once, and each host streamed what it should, to its stream's end.
    assert_eq!(
        lookup.runs(),
        [r#"{"n":1}"#, r#"{"n":2}"#],
        "the tool's runs; before the crash: {before:?}, after: {after:?}"
    );
    assert_eq!(before.streamed, [r#"{"n":1}"#], "{before:?}");
    match &before.end {
        Some(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with("code-mode state could not be written:"),
                "{status:?}"
            );
        }
        None => panic!("the stream ended with no reason: {before:?}"),
    }
    assert_eq!(after.streamed, [r#"{"n":2}"#], "{after:?}");
    assert!(after.end.is_none(), "the stream ended cleanly: {after:?}");
    every_answer_taken(&before.answers, &after.answers);
    bounded("the host's stop", host.stop()).await;
}
