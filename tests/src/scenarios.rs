//! The conformance scenarios. Each is generic over the [`CodeModeProvider`] and asserts exact
//! items, statuses and error strings.

use crate::{Record, TestDelegate};
use code_mode_protocol::{
    CellId, CellResponse, CodeModeProvider, CodeModeSession, ContentItem, ExecRequest, FailureKind,
    PendingOutcome, SessionError, SessionOptions, StartedCell, WaitRequest,
};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// No scenario may take longer than this; a hang fails instead of blocking CI.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(120);

/// A yield time short enough to return quickly from a cell that blocks on a tool.
const SHORT_YIELD_MS: u64 = 100;

/// Runs a scenario under a deadline of two minutes (`SCENARIO_DEADLINE`).
pub use crate::durable::{
    a_hibernating_cell_ends_with_its_fault_free_output, a_hibernating_cell_is_terminated,
    a_woken_cell_exits,
};

pub async fn run_with_deadline(scenario: impl Future<Output = ()>) {
    tokio::time::timeout(SCENARIO_DEADLINE, scenario)
        .await
        .expect("the scenario did not finish within its deadline");
}

async fn open<P: CodeModeProvider>(provider: &P) -> (P::Session, Arc<TestDelegate>) {
    open_with(provider, SessionOptions::default()).await
}

async fn open_with<P: CodeModeProvider>(
    provider: &P,
    options: SessionOptions,
) -> (P::Session, Arc<TestDelegate>) {
    let delegate = TestDelegate::new();
    let session = provider.open_session(delegate.clone(), options);
    (session, delegate)
}

fn request(source: &str) -> ExecRequest {
    ExecRequest::new(source).with_tools(TestDelegate::tools())
}

/// A started cell without its measured time, to compare with what a scenario expects.
fn timeless(started: StartedCell) -> StartedCell {
    StartedCell {
        initial_response: started.initial_response.timeless(),
        ..started
    }
}

async fn exec(session: &impl CodeModeSession, source: &str) -> StartedCell {
    session
        .execute(request(source))
        .await
        .map(timeless)
        .unwrap_or_else(|error| panic!("exec failed: {error}"))
}

/// [`exec`], asserting its first response (times aside).
async fn exec_is(
    session: &impl CodeModeSession,
    source: &str,
    expected: CellResponse,
) -> StartedCell {
    let started = exec(session, source).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        expected,
        "{source}"
    );
    started
}

async fn exec_short(session: &impl CodeModeSession, source: &str) -> StartedCell {
    session
        .execute(request(source).with_yield_time_ms(SHORT_YIELD_MS))
        .await
        .map(timeless)
        .unwrap_or_else(|error| panic!("exec failed: {error}"))
}

async fn wait(session: &impl CodeModeSession, cell_id: impl Into<CellId>) -> CellResponse {
    session
        .wait(WaitRequest::new(cell_id))
        .await
        .map(CellResponse::timeless)
        .unwrap_or_else(|error| panic!("wait failed: {error}"))
}

fn texts(items: &[ContentItem]) -> Vec<&str> {
    items
        .iter()
        .map(|item| item.as_text().expect("a text item"))
        .collect()
}

fn yielded(cell_id: &str, items: &[&str]) -> CellResponse {
    CellResponse::Yielded {
        cell_id: cell_id.into(),
        content_items: items.iter().map(|text| ContentItem::text(*text)).collect(),
        wall_time: Duration::ZERO,
    }
}

/// A completed cell's result; with `error_text`, a script error.
fn result(cell_id: &str, items: &[&str], error_text: Option<&str>) -> CellResponse {
    match error_text {
        Some(text) => failed(cell_id, items, FailureKind::ScriptError, text),
        None => CellResponse::Result {
            cell_id: cell_id.into(),
            content_items: items.iter().map(|text| ContentItem::text(*text)).collect(),
            failure: None,
            wall_time: Duration::ZERO,
        },
    }
}

/// A failed cell's result, with its kind.
fn failed(cell_id: &str, items: &[&str], kind: FailureKind, error_text: &str) -> CellResponse {
    CellResponse::Result {
        cell_id: cell_id.into(),
        content_items: items.iter().map(|text| ContentItem::text(*text)).collect(),
        failure: Some(code_mode_protocol::CellFailure::new(
            kind,
            error_text.to_owned(),
        )),
        wall_time: Duration::ZERO,
    }
}

fn terminated(cell_id: &str, items: &[&str]) -> CellResponse {
    CellResponse::Terminated {
        cell_id: cell_id.into(),
        content_items: items.iter().map(|text| ContentItem::text(*text)).collect(),
        wall_time: Duration::ZERO,
    }
}

fn pending(cell_id: &str, items: &[&str], calls: &[&str]) -> PendingOutcome {
    PendingOutcome::Pending {
        cell_id: cell_id.into(),
        content_items: items.iter().map(|text| ContentItem::text(*text)).collect(),
        pending_tool_call_ids: calls
            .iter()
            .map(|id| id.parse().expect("a call id"))
            .collect(),
        wall_time: Duration::ZERO,
    }
}

/// Resumes a pending cell until it completes. Answers given while it was frozen may reach
/// it one by one, so intermediate frontiers are allowed, but they must report nothing new.
async fn resume_until_completed(session: &impl CodeModeSession, cell_id: &str) -> CellResponse {
    loop {
        match session
            .wait_to_pending(cell_id.into())
            .await
            .unwrap()
            .timeless()
        {
            PendingOutcome::Completed(response) => return response,
            intermediate => assert_eq!(intermediate, pending(cell_id, &[], &[])),
        }
    }
}

/// Runs `source` in a fresh cell and returns what `load` gives for each key afterwards.
async fn loads(session: &impl CodeModeSession, keys: &[&str]) -> Vec<String> {
    let source: String = keys
        .iter()
        .map(|key| format!("text(String(JSON.stringify(load({key:?}))));\n"))
        .collect();
    let started = exec(session, &source).await;
    let CellResponse::Result {
        content_items,
        failure: None,
        ..
    } = &started.initial_response
    else {
        panic!("load cell failed: {:?}", started.initial_response);
    };
    texts(content_items)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

// 1
pub async fn text_yield_text_then_wait<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    let started = exec(
        &session,
        r#"text("first"); yield_control(); text("second");"#,
    )
    .await;
    assert_eq!(started.cell_id, "1");
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("1", &["first"])
    );
    assert_eq!(wait(&session, "1").await, result("1", &["second"], None));
    // The cell is closed once its result was returned.
    assert!(wait(&session, "1").await.is_missing_cell());
}

// 2
pub async fn pending_frontier_with_a_blocking_tool<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    let started = session
        .execute_to_pending(request(
            r#"text("before"); const v = await tools.block({ q: 1 }); text("got " + v);"#,
        ))
        .await
        .unwrap();
    assert_eq!(
        started.outcome.clone().timeless(),
        pending("1", &["before"], &["tool-1"])
    );
    delegate.release("1", "tool-1", Ok(json!("answer"))).await;
    let outcome = session.wait_to_pending("1".into()).await.unwrap();
    let outcome = outcome.timeless();
    assert_eq!(
        outcome,
        PendingOutcome::Completed(result("1", &["got answer"], None))
    );
    assert_eq!(
        delegate.records()[0],
        Record::ToolStarted {
            cell_id: "1".into(),
            call_id: "tool-1".into(),
            tool: "block".into(),
            input: Some(json!({ "q": 1 })),
        }
    );
}

// 3
pub async fn pending_frontier_with_two_parallel_tools<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    let started = session
        .execute_to_pending(request(
            r#"const [a, b] = await Promise.all([tools.block(1), tools.block(2)]); text(a + b);"#,
        ))
        .await
        .unwrap();
    assert_eq!(
        started.outcome.clone().timeless(),
        pending("1", &[], &["tool-1", "tool-2"])
    );
    delegate.release("1", "tool-2", Ok(json!("B"))).await;
    delegate.release("1", "tool-1", Ok(json!("A"))).await;
    assert_eq!(
        resume_until_completed(&session, "1").await,
        result("1", &["AB"], None)
    );
}

// 4
pub async fn tool_started_by_a_timer_reported_at_the_next_frontier<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    let started = session
        .execute_to_pending(request(
            r#"
            const late = new Promise((resolve) => setTimeout(() => resolve(tools.block("late")), 200));
            const first = await tools.block("first");
            text(first + " " + await late);
            "#,
        ))
        .await
        .unwrap();
    assert_eq!(
        started.outcome.clone().timeless(),
        pending("1", &[], &["tool-1"])
    );
    // The frozen cell does not run the timer, even once it is due.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !delegate
            .records()
            .iter()
            .any(|r| matches!(r, Record::ToolStarted { call_id, .. } if call_id == "tool-2")),
        "a frozen cell started a tool"
    );
    let outcome = session.wait_to_pending("1".into()).await.unwrap();
    let outcome = outcome.timeless();
    assert_eq!(outcome, pending("1", &[], &["tool-2"]));
    delegate.release("1", "tool-1", Ok(json!("one"))).await;
    delegate.release("1", "tool-2", Ok(json!("two"))).await;
    assert_eq!(
        resume_until_completed(&session, "1").await,
        result("1", &["one two"], None)
    );
}

/// Starts a long `wait` on `cell_id` and returns once it is the cell's observer. A probe
/// `wait` that is refused as a second observer proves it; a probe that comes first returns
/// at once (yield time 0, nothing taken: the cell has no unreturned output), and the long
/// wait, refused meanwhile, asks again.
pub async fn observe_registered<S: CodeModeSession + 'static>(
    session: &Arc<S>,
    cell_id: &str,
) -> tokio::task::JoinHandle<Result<CellResponse, SessionError>> {
    let busy = SessionError::BusyObserver(cell_id.into());
    let observer = tokio::spawn({
        let (session, cell_id, busy) = (Arc::clone(session), cell_id.to_owned(), busy.clone());
        async move {
            loop {
                let answer = session
                    .wait(WaitRequest::new(cell_id.as_str()).with_yield_time_ms(60_000))
                    .await;
                if answer.as_ref().err() != Some(&busy) {
                    break answer.map(CellResponse::timeless);
                }
            }
        }
    });
    loop {
        let probe = session
            .wait(WaitRequest::new(cell_id).with_yield_time_ms(0))
            .await;
        match probe {
            Err(error) if error == busy => break,
            Ok(response) => assert_eq!(
                response.timeless(),
                yielded(cell_id, &[]),
                "a probe took output"
            ),
            Err(error) => panic!("probe wait: {error}"),
        }
        tokio::task::yield_now().await;
    }
    observer
}

// 5
pub async fn terminate_after_an_unobserved_completion_returns_the_completion<
    P: CodeModeProvider,
>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    exec_is(
        &session,
        r#"text("a"); yield_control(); await tools.slow(50); text("b");"#,
        yielded("1", &["a"]),
    )
    .await;
    // Let the cell complete with nobody observing.
    delegate
        .wait_for(|r| matches!(r, Record::ToolStarted { tool, .. } if tool == "slow"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let response = session.terminate("1".into()).await.unwrap();
    assert_eq!(response.timeless(), result("1", &["b"], None));
    delegate.wait_closed("1").await;
    assert_eq!(delegate.closed_count("1"), 1);
}

// 6
pub async fn terminate_waits_for_the_notification_to_be_cancelled<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    let started = exec_short(
        &session,
        r#"text("x"); notify("block me"); await tools.block();"#,
    )
    .await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("1", &["x"])
    );
    delegate
        .wait_for(|r| matches!(r, Record::NotifyStarted { .. }))
        .await;
    let response = session.terminate("1".into()).await.unwrap();
    assert_eq!(response.timeless(), terminated("1", &[]));
    let records = delegate.records();
    assert!(
        records.contains(&Record::NotifyCancelled {
            cell_id: "1".into(),
            text: "block me".into()
        }),
        "terminate returned before the notification was cancelled: {records:?}"
    );
    assert!(records.contains(&Record::ToolCancelled {
        cell_id: "1".into(),
        call_id: "tool-1".into()
    }));
    delegate.wait_closed("1").await;
    assert_eq!(delegate.closed_count("1"), 1);
    assert!(wait(&session, "1").await.is_missing_cell());
}

// 7
pub async fn terminated_writes_are_discarded<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    let started = exec_short(
        &session,
        r#"store("k", 1); text("stored"); await tools.block();"#,
    )
    .await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("1", &["stored"])
    );
    assert_eq!(
        session.terminate("1".into()).await.unwrap().timeless(),
        terminated("1", &[])
    );
    assert_eq!(loads(&session, &["k"]).await, ["undefined"]);
}

// 8
pub async fn second_terminate_during_cleanup_is_refused<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    let started = exec_short(&session, r#"await tools.stubborn();"#).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("1", &[])
    );
    delegate.wait_started("1", "tool-1").await;
    let session = Arc::new(session);
    let first = tokio::spawn({
        let session = Arc::clone(&session);
        async move { session.terminate("1".into()).await }
    });
    // The stubborn tool ignores its cancellation: cleanup now waits out the grace period.
    delegate
        .wait_for(|r| matches!(r, Record::ToolCancelled { .. }))
        .await;
    assert_eq!(
        session.terminate("1".into()).await,
        Err(SessionError::AlreadyTerminating("1".into()))
    );
    assert_eq!(
        first.await.unwrap().map(CellResponse::timeless),
        Ok(terminated("1", &[]))
    );
    delegate.wait_closed("1").await;
    assert_eq!(delegate.closed_count("1"), 1);
}

/// Contract 3.7: an exec still awaiting its first answer when its cell is terminated gets
/// the terminate's `Terminated`, with the same output not yet returned (as Codex's host).
pub async fn an_exec_observing_a_terminated_cell_gets_terminated<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    let session = Arc::new(session);
    let exec = tokio::spawn({
        let session = Arc::clone(&session);
        async move {
            session
                .execute(
                    request(r#"text("a"); await tools.block(); text("never");"#)
                        .with_yield_time_ms(60_000),
                )
                .await
                .map(timeless)
        }
    });
    // The exec observes its cell from the start; the tool call says the cell runs.
    delegate.wait_started("1", "tool-1").await;
    assert_eq!(
        session
            .terminate("1".into())
            .await
            .map(CellResponse::timeless),
        Ok(terminated("1", &["a"]))
    );
    let started = exec
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("exec: {error}"));
    assert_eq!(started.initial_response, terminated("1", &["a"]));
    delegate.wait_closed("1").await;
    assert_eq!(delegate.closed_count("1"), 1);
}

/// Contract 3.7: a wait observing a yielded cell when it is terminated gets `Terminated`,
/// never "not found".
pub async fn a_wait_observing_a_terminated_cell_gets_terminated<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    exec_is(
        &session,
        r#"text("a"); yield_control(); await tools.block(); text("never");"#,
        yielded("1", &["a"]),
    )
    .await;
    delegate.wait_started("1", "tool-1").await;
    let session = Arc::new(session);
    let observer = observe_registered(&session, "1").await;
    assert_eq!(
        session
            .terminate("1".into())
            .await
            .map(CellResponse::timeless),
        Ok(terminated("1", &[]))
    );
    assert_eq!(observer.await.unwrap(), Ok(terminated("1", &[])));
    delegate.wait_closed("1").await;
    assert_eq!(delegate.closed_count("1"), 1);
}

/// Cells that end one after the other are reported closed in that order, each once, even
/// when each leaves its isolate work to do (a large heap to reset) after its answer.
pub async fn cells_are_reported_closed_in_the_order_they_ended<P: CodeModeProvider>(provider: &P) {
    const CELLS: usize = 24;
    let (session, delegate) = open(provider).await;
    for n in 1..=CELLS {
        exec_is(
            &session,
            &format!(
                "const heap = Array.from({{length: 200000}}, (_, i) => ({{i}})); text('{n} ' + heap.length);"
            ),
            result(&n.to_string(), &[&format!("{n} 200000")], None),
        )
        .await;
    }
    delegate.wait_closed(&CELLS.to_string()).await;
    // Every earlier one too (the last may overtake none).
    for n in 1..CELLS {
        delegate.wait_closed(&n.to_string()).await;
    }
    let closed: Vec<String> = delegate
        .records()
        .into_iter()
        .filter_map(|record| match record {
            Record::CellClosed(cell) => Some(cell),
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (1..=CELLS).map(|n| n.to_string()).collect();
    assert_eq!(
        closed, expected,
        "closed in the order they ended, once each"
    );
}

// 9
pub async fn second_concurrent_wait_is_refused<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    let started = exec_short(&session, r#"const v = await tools.block(); text(v);"#).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("1", &[])
    );
    let session = Arc::new(session);
    let first = observe_registered(&session, "1").await;
    assert_eq!(
        session.wait(WaitRequest::new("1")).await,
        Err(SessionError::BusyObserver("1".into()))
    );
    delegate.release("1", "tool-1", Ok(json!("done"))).await;
    assert_eq!(
        first.await.unwrap().map(CellResponse::timeless),
        Ok(result("1", &["done"], None))
    );
}

// 10
pub async fn unawaited_tool_is_cancelled_when_the_cell_completes<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    exec_is(
        &session,
        r#"tools.block(); notify("progress"); text("done");"#,
        result("1", &["done"], None),
    )
    .await;
    let records = delegate.records();
    let delivered = records
        .iter()
        .position(|r| matches!(r, Record::NotifyDelivered { text, .. } if text == "progress"));
    let cancelled = records
        .iter()
        .position(|r| matches!(r, Record::ToolCancelled { call_id, .. } if call_id == "tool-1"));
    assert!(
        delivered.is_some() && cancelled.is_some() && delivered < cancelled,
        "the notification is delivered, then the tool cancelled, before the result: {records:?}"
    );
}

// 11
pub async fn stored_values_are_per_session<P: CodeModeProvider>(provider: &P) {
    let (first, _d1) = open(provider).await;
    let (second, _d2) = open(provider).await;
    let started = exec(&first, r#"store("shared", { n: 1 }); text("ok");"#).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        result("1", &["ok"], None)
    );
    assert_eq!(loads(&first, &["shared"]).await, [r#"{"n":1}"#]);
    assert_eq!(loads(&second, &["shared"]).await, ["undefined"]);
}

// 12
pub async fn concurrent_cells_merge_writes_by_key<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    let slow = exec_short(
        &session,
        r#"store("x", 1); store("same", "cell 1"); await tools.block(); text("cell 1 done");"#,
    )
    .await;
    assert_eq!(slow.initial_response, yielded("1", &[]));
    let fast = exec(
        &session,
        r#"text(String(load("x"))); store("y", 2); store("same", "cell 2");"#,
    )
    .await;
    // Concurrent cells never see each other's uncommitted writes.
    assert_eq!(fast.initial_response, result("2", &["undefined"], None));
    delegate.release("1", "tool-1", Ok(json!(null))).await;
    assert_eq!(
        wait(&session, "1").await,
        result("1", &["cell 1 done"], None)
    );
    assert_eq!(
        loads(&session, &["x", "y", "same"]).await,
        ["1", "2", r#""cell 1""#]
    );
}

// 13
pub async fn writes_before_a_script_error_are_committed<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    let started = exec(&session, r#"store("k", 5); throw "startup failed";"#).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        result("1", &[], Some("startup failed"))
    );
    assert_eq!(loads(&session, &["k"]).await, ["5"]);
}

// 14
pub async fn storing_undefined_keeps_the_old_value<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    exec(&session, r#"store("k", 1);"#).await;
    exec_is(
        &session,
        r#"try { store("k", undefined); } catch (e) { text(e); } text(String(load("k")));"#,
        result(
            "2",
            &[
                r#"Unable to store "k". Only plain serializable objects can be stored."#,
                "1",
            ],
            None,
        ),
    )
    .await;
    assert_eq!(loads(&session, &["k"]).await, ["1"]);
}

// 15
pub async fn shutdown_stops_cpu_bound_cells_and_refuses_new_ones<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    let started = exec_short(&session, r#"text("spinning"); while (true) {}"#).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("1", &["spinning"])
    );
    let begun = std::time::Instant::now();
    session.shutdown().await;
    // "About one second" is the contract; three allow for a loaded two-core machine, not
    // for a stop that waits on a timer or a hang.
    assert!(
        begun.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        begun.elapsed()
    );
    assert_eq!(delegate.closed_count("1"), 1);
    assert_eq!(
        session.execute(request("text(1)")).await.map(|_| ()),
        Err(SessionError::ShuttingDown)
    );
}

// 16
pub async fn shutdown_racing_admission_closes_each_admitted_cell_once<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    let session = Arc::new(session);
    let mut execs = Vec::new();
    for index in 0..12 {
        let cell_session = Arc::clone(&session);
        let source = if index % 2 == 0 {
            "while (true) {}"
        } else {
            "await tools.block();"
        };
        execs.push(tokio::spawn(async move {
            cell_session
                .execute(request(source).with_yield_time_ms(30_000))
                .await
        }));
        if index == 6 {
            // At least one cell is admitted for sure (it called its tool) before the
            // shutdown starts; the later execs race it.
            delegate
                .wait_for(|record| matches!(record, Record::ToolStarted { .. }))
                .await;
            let session = Arc::clone(&session);
            execs.push(tokio::spawn(async move {
                session.shutdown().await;
                Err(SessionError::Runtime("shutdown marker".into()))
            }));
        }
    }
    let mut admitted = Vec::new();
    for exec in execs {
        match exec.await.unwrap() {
            Ok(started) => {
                assert!(
                    matches!(started.initial_response, CellResponse::Terminated { .. }),
                    "an admitted cell is stopped by the shutdown: {started:?}"
                );
                admitted.push(started.cell_id);
            }
            Err(SessionError::ShuttingDown) => {}
            Err(SessionError::Runtime(marker)) if marker.message() == "shutdown marker" => {}
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(
        !admitted.is_empty(),
        "no cell was admitted before the shutdown"
    );
    session.shutdown().await;
    for cell_id in &admitted {
        assert_eq!(delegate.closed_count(cell_id), 1, "cell {cell_id}");
    }
    let closed = delegate
        .records()
        .iter()
        .filter(|r| matches!(r, Record::CellClosed(_)))
        .count();
    assert_eq!(closed, admitted.len(), "only admitted cells are closed");
    assert_eq!(
        session.execute(request("1")).await.map(|_| ()),
        Err(SessionError::ShuttingDown)
    );
}

// 17
pub async fn exit_in_sixteen_places<P: CodeModeProvider>(provider: &P) {
    let places = [
        r#"text("before"); store("a", 1); exit(); text("after"); store("b", 2);"#,
        r#"for (let i = 0; ; i++) { if (i === 2) { text("before"); store("a", 1); exit(); } }"#,
        r#"while (true) { text("before"); store("a", 1); exit(); }"#,
        r#"try { text("before"); store("a", 1); exit(); } catch { text("catch"); } finally { text("finally"); store("b", 2); }"#,
        r#"try { throw 1; } catch { text("before"); store("a", 1); exit(); } finally { store("b", 2); }"#,
        r#"try { text("before"); } finally { store("a", 1); exit(); text("after"); }"#,
        r#"text("before"); store("a", 1); await Promise.resolve().then(() => { exit(); store("b", 2); }); text("after");"#,
        r#"text("before"); setTimeout(() => { store("a", 1); exit(); store("b", 2); }, 0); setTimeout(() => text("second"), 0); await new Promise((r) => setTimeout(r, 1000));"#,
        r#"text("before"); store("a", await tools.echo(1)); exit(); text("after");"#,
        r#"text("before"); store("a", 1); text({ toJSON() { exit(); return "x"; } }); store("b", 2);"#,
        r#"text("before"); store("a", 1); store("b", { get v() { exit(); return 1; } });"#,
        r#"text("before"); store("a", 1); await tools.echo({ toJSON() { exit(); return 1; } }); store("b", 2);"#,
        r#"text("before"); store("a", 1); throw { get stack() { exit(); return "err"; } };"#,
        r#"function f(n) { if (n === 0) { text("before"); store("a", 1); exit(); } f(n - 1); store("b", 2); } f(20);"#,
        r#"text("before"); store("a", 1); const s = tools.echo(2).then(() => store("b", 2)); await Promise.all([s, Promise.resolve().then(() => exit())]);"#,
        r#"text("before"); store("a", 1); notify({ toJSON() { return undefined; }, toString() { exit(); return "n"; } }); store("b", 2);"#,
    ];
    for source in places {
        let (session, delegate) = open(provider).await;
        let started = exec(&session, source).await;
        assert_eq!(
            started.initial_response,
            result("1", &["before"], None),
            "exit in: {source}"
        );
        assert_eq!(
            loads(&session, &["a", "b"]).await,
            ["1", "undefined"],
            "exit in: {source}"
        );
        assert!(
            !delegate
                .records()
                .iter()
                .any(|r| matches!(r, Record::NotifyStarted { .. })),
            "a notification after exit in: {source}"
        );
    }
}

// 18
pub async fn yield_time_grace_and_session_cap<P: CodeModeProvider>(provider: &P) {
    // The tool is answered when the test says: just past the requested 10 s (within the
    // grace), or once the capped exec has yielded.
    let source = r#"text(await tools.block());"#;
    let with_grace = async {
        let (session, delegate) = open(provider).await;
        let begun = tokio::time::Instant::now();
        let exec = session.execute(request(source).with_yield_time_ms(10_000));
        let release = async {
            delegate.wait_started("1", "tool-1").await;
            // The only timed step: 100 ms past the yield time, 900 ms before the grace ends.
            tokio::time::sleep_until(begun + Duration::from_millis(10_100)).await;
            delegate.release("1", "tool-1", Ok(json!("late"))).await;
        };
        let (started, ()) = tokio::join!(exec, release);
        assert_eq!(
            started.unwrap().initial_response.timeless(),
            result("1", &["late"], None)
        );
    };
    let capped = async {
        let options = SessionOptions {
            max_yield_time_ms: Some(10_000),
            ..SessionOptions::default()
        };
        let (session, delegate) = open_with(provider, options).await;
        let started = session
            .execute(request(source).with_yield_time_ms(10_000))
            .await
            .unwrap();
        assert_eq!(
            started.initial_response.clone().timeless(),
            yielded("1", &[])
        );
        delegate.release("1", "tool-1", Ok(json!("capped"))).await;
        assert_eq!(wait(&session, "1").await, result("1", &["capped"], None));
    };
    let zero_cap_does_not_leak = async {
        let options = SessionOptions {
            max_yield_time_ms: Some(0),
            ..SessionOptions::default()
        };
        let (capped, _d1) = open_with(provider, options).await;
        let (free, _d2) = open(provider).await;
        let quick = r#"text(await tools.slow(300));"#;
        let started = capped.execute(request(quick)).await.unwrap();
        assert_eq!(
            started.initial_response.clone().timeless(),
            yielded("1", &[])
        );
        let started = free.execute(request(quick)).await.unwrap();
        assert_eq!(
            started.initial_response.clone().timeless(),
            result("1", &["slow done"], None)
        );
        // Every observation of the capped session yields at once, until the result is in;
        // the output comes exactly once, with the result or (when an observation falls
        // between the output and the cell's end) with a yield just before it.
        let mut seen = Vec::new();
        loop {
            match wait(&capped, "1").await {
                CellResponse::Yielded { content_items, .. } => {
                    seen.extend(content_items);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                CellResponse::Result {
                    cell_id,
                    content_items,
                    failure: None,
                    ..
                } => {
                    assert_eq!(cell_id, "1");
                    seen.extend(content_items);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(texts(&seen), ["slow done"]);
    };
    tokio::join!(with_grace, capped, zero_cap_does_not_leak);
}

// 19
pub async fn wait_on_an_unknown_cell_is_the_missing_outcome<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    let response = wait(&session, "42").await;
    assert_eq!(response, CellResponse::missing("42"));
    assert_eq!(response.error_text(), Some("exec cell 42 not found"));
    assert!(response.is_missing_cell());
    assert!(
        session
            .terminate("42".into())
            .await
            .unwrap()
            .is_missing_cell()
    );
    // A real cell that failed is not "missing".
    let failed = exec(&session, "throw 'boom'").await;
    assert!(!failed.initial_response.is_missing_cell());
}

// 20
pub async fn yield_raced_with_creation_is_kept_for_the_first_observation<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, _delegate) = open(provider).await;
    // A first cell makes the session ready (an out-of-process provider starts its runtime
    // on first use), so that the next call is sent during its first poll.
    let warm_up = exec(&session, "text('ready')").await;
    assert_eq!(warm_up.initial_response, result("1", &["ready"], None));
    let source = r#"text("a"); yield_control(); text("b"); await new Promise((r) => setTimeout(r, 100)); text("c");"#;
    // The exec call is polled once (which admits the cell) and dropped: nobody observes.
    // A fast runtime may answer within that first poll; then the exec call itself was the
    // first observation, and it must have returned the yield just the same.
    let answered_at_once = {
        let exec = session.execute(request(source));
        tokio::pin!(exec);
        tokio::select! {
            biased;
            started = &mut exec => Some(started.expect("exec")),
            () = std::future::ready(()) => None,
        }
    };
    let first_observation = match answered_at_once {
        Some(started) => started.initial_response.timeless(),
        None => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            wait(&session, "2").await
        }
    };
    assert_eq!(first_observation, yielded("2", &["a"]));
    assert_eq!(wait(&session, "2").await, result("2", &["b", "c"], None));
}

// Contract 5: dropping a session starts its shutdown.
pub async fn dropping_a_session_stops_its_cells<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    let started = exec_short(&session, "while (true) {}").await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("1", &[])
    );
    drop(session);
    delegate.wait_closed("1").await;
    assert_eq!(delegate.closed_count("1"), 1);
}

// Contract 6: a lone surrogate half in a tool argument (what `JSON.stringify` writes as
// `\ud83d`) reaches the delegate as U+FFFD, in values and in keys, and the answer that
// carries it back resolves the promise.
pub async fn lone_surrogates_in_tool_arguments_become_replacement_characters<
    P: CodeModeProvider,
>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    exec_is(
        &session,
        r#"
        const half = "😀😀".slice(0, 3);
        const low = "😀".slice(1);
        const answer = await tools.echo({ a: half, [low]: [low + "x"] });
        text(answer.a === "😀\uFFFD");
        text(JSON.stringify(answer));
        "#,
        result(
            "1",
            &[
                "true",
                "{\"a\":\"😀\u{fffd}\",\"\u{fffd}\":[\"\u{fffd}x\"]}",
            ],
            None,
        ),
    )
    .await;
    let inputs: Vec<Option<serde_json::Value>> = delegate
        .records()
        .into_iter()
        .filter_map(|record| match record {
            Record::ToolStarted { input, .. } => Some(input),
            _ => None,
        })
        .collect();
    assert_eq!(
        inputs,
        [Some(
            json!({ "a": "😀\u{fffd}", "\u{fffd}": ["\u{fffd}x"] })
        )]
    );
}

// Contract 6: nested tool calls and notifications reach the delegate in the order the cell
// made them, however many run in parallel.
pub async fn parallel_calls_reach_the_delegate_in_call_order<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    let started = exec(
        &session,
        r#"
        const calls = [];
        for (let i = 0; i < 20; i++) {
            calls.push(tools.echo(i));
            if (i % 4 === 3) notify("after " + i);
        }
        text((await Promise.all(calls)).join(","));
        "#,
    )
    .await;
    let expected_text = (0..20).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    assert_eq!(
        started.initial_response.clone().timeless(),
        result("1", &[expected_text.as_str()], None)
    );
    let started: Vec<String> = delegate
        .records()
        .into_iter()
        .filter_map(|record| match record {
            Record::ToolStarted { call_id, input, .. } => Some(format!(
                "{call_id}={}",
                input.map(|input| input.to_string()).unwrap_or_default()
            )),
            Record::NotifyStarted { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    let mut expected = Vec::new();
    for i in 0..20 {
        expected.push(format!("tool-{}={i}", i + 1));
        if i % 4 == 3 {
            expected.push(format!("after {i}"));
        }
    }
    assert_eq!(started, expected);
}

// TypeScript cells (`docs/CONTRACT.md` section 2): types are stripped, positions are the
// model's own, and constructs that need a transform are refused with their position.
pub async fn typescript_cells_run_with_their_own_positions<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    exec_is(&session, "import type { Anything } from \"anywhere\";\nexport type Label = string;\ndeclare const injected: number;\ninterface Row { id: number; label?: Label }\ntype Ids = number[];\nfunction first<T>(items: T[], fallback?: T): T | undefined { return items[0] ?? fallback; }\nconst rows: Row[] = [{ id: 1 }, { id: 2, label: \"two\" }];\nconst ids: Ids = rows.map((row: Row): number => row.id) satisfies number[];\nconst echoed = (await tools.echo({ ids })) as { ids: Ids };\ntext(echoed.ids.join(\"+\") + \"/\" + first<number>(ids)!);\nstore(\"last\", rows.at(-1)!.label!);", result("1", &["1+2/1"], None)).await;
    assert_eq!(loads(&session, &["last"]).await, [r#""two""#]);

    let started = exec(
        &session,
        "type Reason = string;\n\n\nfunction fail(reason: Reason): never {\n  throw new Error(reason);\n}\nfail(\"on line 7\");",
    )
    .await;
    let error = started.initial_response.error_text().unwrap_or_default();
    assert!(
        error.starts_with(
            "Error: on line 7\n    at fail (exec_main.mjs:5:9)\n    at exec_main.mjs:7:1"
        ),
        "{error}"
    );

    let started = exec(&session, "const ok = true;\nenum Mode { Fast }").await;
    let error = started.initial_response.error_text().unwrap_or_default();
    assert!(
        error.starts_with("SyntaxError: a TypeScript `enum` at line 2, column 1 is not supported"),
        "{error}"
    );
}

// Contract 7: a session's cells may share an isolate, one at a time, each with a fresh
// context; nothing an earlier cell did reaches a later one. Each cell is closed before the
// next starts, so the next runs on the parked isolate (when the session reuses them).
pub async fn cells_on_a_reused_isolate_are_kept_apart<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    exec_is(
        &session,
        r#"
        globalThis.leak = 1;
        Object.prototype.polluted = "yes";
        Array.prototype.map = () => "hacked";
        JSON.parse = () => "hacked";
        Promise.prototype.then = function () { return "hacked"; };
        Error.prepareStackTrace = () => "hacked";
        Error.stackTraceLimit = 0;
        const registry = new FinalizationRegistry(() => notify("a finalizer of cell 1 ran"));
        for (let i = 0; i < 1000; i++) registry.register({ payload: new Array(100).fill(i) }, i);
        globalThis.registry = registry;
        globalThis.ref = new WeakRef({ target: true });
        Symbol.for("cell-1-secret");
        Promise.resolve().then(() => exit());
        for (let i = 0; i < 5; i++) Promise.resolve().then(() => text("late " + i));
        text("cell 1");
        "#,
        result("1", &["cell 1"], None),
    )
    .await;
    delegate.wait_closed("1").await;
    exec_is(
        &session,
        r#"
        let junk = [];
        for (let i = 0; i < 300; i++) junk.push(new Array(20000).fill(i));
        junk = null;
        await new Promise((resolve) => setTimeout(resolve, 50));
        text([
            typeof globalThis.leak,
            String(({}).polluted),
            [1, 2].map((x) => x * 2).join(","),
            JSON.parse("[7]")[0],
            typeof Promise.resolve(1).then(() => 1),
            typeof Error.prepareStackTrace,
            Error.stackTraceLimit,
            new Error("e").stack.includes("exec_main.mjs"),
            typeof globalThis.registry,
            typeof globalThis.ref,
            new Intl.NumberFormat("en-US").format(1234.5),
        ].join(" "));
        "#,
        result(
            "2",
            &["undefined undefined 2,4 7 object undefined 10 true undefined undefined 1,234.5"],
            None,
        ),
    )
    .await;
    delegate.wait_closed("2").await;
    // A terminated cell leaves nothing behind for the next either.
    let started = exec_short(&session, "globalThis.spin = 1; while (true) {}").await;
    assert!(matches!(
        started.initial_response,
        CellResponse::Yielded { .. }
    ));
    session.terminate("3".into()).await.expect("terminate");
    delegate.wait_closed("3").await;
    let started = exec(&session, "text(typeof globalThis.spin);").await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        result("4", &["undefined"], None)
    );
    let notified = delegate
        .records()
        .into_iter()
        .any(|record| matches!(record, Record::NotifyStarted { .. }));
    assert!(!notified, "a finalizer of cell 1 ran later");

    // Nothing of another session's cell reaches this one. (A global is cleared by a fresh
    // context whether or not the isolate is shared: which isolate each cell ran on is
    // checked at the provider, in the in-process tests' `isolate_reuse`.)
    let (other, other_delegate) = open(provider).await;
    exec(&other, "globalThis.mine = 'other session'; text('set');").await;
    other_delegate.wait_closed("1").await;
    let started = exec(&session, "text(typeof globalThis.mine);").await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        result("5", &["undefined"], None)
    );
}

/// A delegate on the JSON-text path gets the argument exactly as V8 wrote it: nothing on
/// the way parses it (a parse would turn the escaped lone surrogate into U+FFFD, as the
/// value path does). Its answer is parsed by the cell, which rejects text that is not JSON.
pub async fn tool_payloads_reach_a_text_delegate_as_the_cell_wrote_them<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, _delegate) = open(provider).await;
    exec_is(
        &session,
        r#"
        const seen = await tools.text_echo({ b: 1, a: [1.50, "\ud800", "é"] });
        text(seen);
        try { await tools.bad_text(); text("resolved"); } catch (error) { text(error); }
        text(JSON.stringify(await tools.echo({ a: "\ud800" })));
        "#,
        result(
            "1",
            &[
                r#"{"b":1,"a":[1.5,"\ud800","é"]}"#,
                "tool result rejected: it is not valid JSON",
                "{\"a\":\"\u{fffd}\"}",
            ],
            None,
        ),
    )
    .await;
}

/// Each turn of a cell's event loop releases what it made: a cell taking 160 results of
/// 1 MB each, one after the other, never holds more than a few of them, far below its
/// 128 MiB heap (when the loop kept every turn's handles until the cell ended, the parsed
/// results piled up and the cell ran out of memory).
pub async fn many_large_tool_results_do_not_pile_up<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    let started = exec(
        &session,
        r#"
        let total = 0;
        for (let i = 0; i < 160; i++) total += (await tools.big(1000000)).length;
        text(total);
        "#,
    )
    .await;
    let mut response = started.initial_response;
    while let CellResponse::Yielded { cell_id, .. } = &response {
        let cell_id = cell_id.clone();
        response = wait(&session, &cell_id).await;
    }
    assert_eq!(response, result("1", &["160000000"], None));
}

/// Polls `call` once (which sends it, or admits its cell), leaves it unpolled long enough
/// for its answer to arrive, then drops it. `Some` if it was answered in that first poll.
async fn drop_untaken<T>(call: impl Future<Output = T>) -> Option<T> {
    hold_untaken(call, Duration::from_millis(300)).await
}

/// [`drop_untaken`], holding the call unpolled for `hold`.
async fn hold_untaken<T>(call: impl Future<Output = T>, hold: Duration) -> Option<T> {
    let mut call = std::pin::pin!(call);
    let answered = tokio::select! {
        biased;
        done = &mut call => Some(done),
        () = std::future::ready(()) => None,
    };
    if answered.is_none() {
        tokio::time::sleep(hold).await;
    }
    answered
}

// 28: Contract 3.3, a dropped observation consumes nothing: also when its answer had
// reached it, untaken, by the time it was dropped (over a wire: when the answer was on
// its way as the call was given up).
pub async fn answers_left_untaken_by_a_dropped_call_are_kept<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    // A first cell makes the session ready (an out-of-process provider starts its runtime
    // on first use), so that each call below is sent during its first poll.
    let warm_up = exec(&session, "text('ready')").await;
    assert_eq!(warm_up.initial_response, result("1", &["ready"], None));
    // A yield: the first observation still returns up to it, though the cell has
    // completed meanwhile; the rest comes with the next one.
    let source = r#"text("a"); yield_control(); text("b"); await new Promise((r) => setTimeout(r, 20)); text("c");"#;
    let first = match drop_untaken(session.execute(request(source))).await {
        Some(started) => started.expect("exec").initial_response.timeless(),
        None => wait(&session, "2").await,
    };
    assert_eq!(first, yielded("2", &["a"]));
    assert_eq!(wait(&session, "2").await, result("2", &["b", "c"], None));
    // A result: the cell stays until an observation takes it, then closes once.
    let first = match drop_untaken(session.execute(request(r#"text("x");"#))).await {
        Some(started) => started.expect("exec").initial_response.timeless(),
        None => wait(&session, "3").await,
    };
    assert_eq!(first, result("3", &["x"], None));
    delegate.wait_closed("3").await;
    assert_eq!(delegate.closed_count("3"), 1);
    assert!(wait(&session, "3").await.is_missing_cell());
    // A frontier: the next pending-aware observation returns it again, calls included.
    let source = r#"text("p"); text(await tools.block(1));"#;
    let first = match drop_untaken(session.execute_to_pending(request(source))).await {
        Some(started) => started.expect("execute_to_pending").outcome,
        None => session.wait_to_pending("4".into()).await.unwrap(),
    };
    assert_eq!(first.timeless(), pending("4", &["p"], &["tool-1"]));
    delegate.release("4", "tool-1", Ok(json!("q"))).await;
    assert_eq!(
        resume_until_completed(&session, "4").await,
        result("4", &["q"], None)
    );
}

// 29: Contract 3.3 for a slow caller: an answer its caller holds unpolled for seconds (far
// longer than the providers' patience for ordering callbacks) and then drops is not lost:
// a final result stays with the cell until an observation takes it, for `exec` and `wait`
// alike.
pub async fn an_answer_held_unpolled_by_a_slow_caller_is_kept<P: CodeModeProvider>(provider: &P) {
    const HOLD: Duration = Duration::from_secs(3);
    let (session, delegate) = open(provider).await;
    // Ready first, so that each call below is sent during its first poll.
    let warm_up = exec(&session, "text('ready')").await;
    assert_eq!(warm_up.initial_response, result("1", &["ready"], None));
    // An exec whose cell completes at once.
    let first = match hold_untaken(session.execute(request(r#"text("slow");"#)), HOLD).await {
        Some(started) => started.expect("exec").initial_response.timeless(),
        None => wait(&session, "2").await,
    };
    assert_eq!(first.timeless(), result("2", &["slow"], None));
    delegate.wait_closed("2").await;
    assert_eq!(delegate.closed_count("2"), 1);
    // A wait whose cell completes while its caller is away.
    let source =
        r#"text("a"); yield_control(); await new Promise((r) => setTimeout(r, 50)); text("b");"#;
    let started = exec(&session, source).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("3", &["a"])
    );
    let mut request = WaitRequest::new("3".to_owned());
    request.yield_time_ms = Some(10_000);
    let rest = match hold_untaken(session.wait(request), HOLD).await {
        Some(response) => response.expect("wait"),
        None => wait(&session, "3").await,
    };
    assert_eq!(rest, result("3", &["b"], None));
    delegate.wait_closed("3").await;
    assert_eq!(delegate.closed_count("3"), 1);
    assert!(wait(&session, "3").await.is_missing_cell());
}

// ---------------------------------------------------------------------------------------
// Contract section 8: the newer surface
// ---------------------------------------------------------------------------------------

/// A WAV clip of `data_bytes` bytes of silence at 16 000 bytes a second (16 bytes a
/// millisecond), as a `data:` URL.
fn wav(data_bytes: u32) -> String {
    use base64::Engine;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_bytes).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    for value in [16u32, 0x0001_0001, 8000, 16000, 0x0010_0002] {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_bytes.to_le_bytes());
    bytes.resize(bytes.len() + data_bytes as usize, 0);
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!("data:audio/wav;base64,{data}")
}

// 8.1
pub async fn audio_items_cross_in_order<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    // 25 ms is long enough; 1 ms is not.
    let clip = wav(400);
    let short = wav(16);
    let source = format!(
        r#"text("before"); audio("{clip}"); audio({{ type: "audio", data: "SUQz", mimeType: "audio/mpeg" }}); audio("{short}"); text("after");
        try {{ audio("https://example.com/a.wav"); }} catch (e) {{ text(e); }}"#
    );
    let started = exec(&session, &source).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        CellResponse::Result {
            cell_id: "1".into(),
            content_items: vec![
                ContentItem::text("before"),
                ContentItem::InputAudio { audio_url: clip },
                ContentItem::InputAudio {
                    audio_url: "data:audio/mpeg;base64,SUQz".into()
                },
                ContentItem::text(
                    "Audio output omitted because the clip is shorter than 25 ms; use a longer clip."
                ),
                ContentItem::text("after"),
                ContentItem::text(
                    "Tool call failed: invalid audio output. Pass a base64 data URI instead"
                ),
            ],
            failure: None,
            wall_time: Duration::ZERO,
        }
    );
}

// 8.2
pub async fn as_settled_reports_nested_calls_as_they_finish<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    let source = r#"
        const calls = new Map([["slow", tools.slow(150)], ["fast", tools.echo("quick")], ["broken", tools.fail()]]);
        for await (const r of as_settled(calls)) {
            text(r.index + " " + r.status + " " + (r.status === "fulfilled" ? r.value : r.reason.message ?? r.reason));
        }
        const seen = [];
        await stream_settled([tools.slow(60), tools.echo(2)], async (r) => { seen.push(r.index); });
        text(seen.join(","));
        try { await stream_settled([1]); } catch (e) { text(String(e)); }
    "#;
    let started = exec(&session, source).await;
    let CellResponse::Result {
        content_items,
        failure: None,
        ..
    } = &started.initial_response
    else {
        panic!("the cell failed: {:?}", started.initial_response);
    };
    let lines = texts(content_items);
    // The two quick answers may arrive in either order; the slow one comes last.
    let mut quick = lines[..2].to_vec();
    quick.sort_unstable();
    assert_eq!(
        quick,
        ["broken rejected tool exploded", "fast fulfilled quick"]
    );
    assert_eq!(
        lines[2..],
        [
            "slow fulfilled slow done",
            "1,0",
            "TypeError: stream_settled requires a callback"
        ]
    );
}

// 8.3
pub async fn deferred_tools_are_found_with_tool_search_and_called<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    let source = r#"
        const found = await tools.tool_search({ query: "what's the weather like in Paris?" });
        text(found.tools.map((tool) => tool.name).join(" "));
        text(found.tools[0].description.includes("city: string"));
        const answer = await tools[found.tools[0].name]({ city: "Paris" });
        text(JSON.stringify(answer));
        text((await tools.tool_search({ query: "task", limit: 3 })).tools.map((t) => t.name).join(" "));
        for (const args of [{ query: "  " }, { query: "x", limit: 0 }]) {
            try { await tools.tool_search(args); } catch (e) { text(e.message ?? e); }
        }
        const names = ALL_TOOLS.map((tool) => tool.name);
        text(names.includes("tool_search") + " " + names.includes("mcp__misc__task_199") + " " + ALL_TOOLS.length);
    "#;
    let started = session
        .execute(ExecRequest::new(source).with_tools(TestDelegate::deferred_tools()))
        .await
        .expect("exec");
    assert_eq!(
        started.initial_response.clone().timeless(),
        result(
            "1",
            &[
                "mcp__weather__get_weather mcp__weather__get_forecast",
                "true",
                r#"{"tool":"mcp__weather__get_weather","input":{"city":"Paris"}}"#,
                "mcp__misc__task_0 mcp__misc__task_1 mcp__misc__task_2",
                "query must not be empty",
                "limit must be greater than zero",
                // 9 tools of the delegate, 203 deferred, and tool_search.
                "true true 213",
            ],
            None
        )
    );
    // The provider answered the searches; the delegate saw only the deferred tool's call.
    let tools_called: Vec<String> = delegate
        .records()
        .into_iter()
        .filter_map(|record| match record {
            Record::ToolStarted { tool, .. } => Some(tool),
            _ => None,
        })
        .collect();
    assert_eq!(tools_called, ["mcp__weather__get_weather"]);
    // Without deferred tools there is no tool_search.
    let plain = exec(&session, "text(typeof tools.tool_search)").await;
    assert_eq!(plain.initial_response, result("2", &["undefined"], None));
}

// 8.4
pub async fn preempt_returns_the_output_so_far_and_the_cell_goes_on<P: CodeModeProvider>(
    provider: &P,
) {
    use code_mode_protocol::ExecHooks;
    use tokio_util::sync::CancellationToken;
    let (session, delegate) = open(provider).await;
    let source = r#"text("before"); const v = await tools.block(); text("got " + v); await tools.block(); text("done");"#;
    let preempt = CancellationToken::new();
    let hooks = ExecHooks::default().with_preempt(preempt.clone());
    let started_at = tokio::time::Instant::now();
    let execute = session.execute_with(request(source).with_yield_time_ms(60_000), hooks);
    let preempting = async {
        delegate.wait_started("1", "tool-1").await;
        preempt.cancel();
    };
    let (started, ()) = tokio::join!(execute, preempting);
    let started = started.expect("exec");
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("1", &["before"])
    );
    assert!(
        started_at.elapsed() < Duration::from_secs(30),
        "the preempt was not honoured"
    );
    // The cell kept running: its call is still in flight and answers reach it.
    delegate.release("1", "tool-1", Ok(json!(7))).await;
    let preempt = CancellationToken::new();
    let mut wait_request = WaitRequest::new("1");
    wait_request.yield_time_ms = Some(60_000);
    let waiting = session.wait_with(wait_request, Some(preempt.clone()));
    let preempting = async {
        delegate.wait_started("1", "tool-2").await;
        preempt.cancel();
    };
    let (waited, ()) = tokio::join!(waiting, preempting);
    assert_eq!(waited.expect("wait").timeless(), yielded("1", &["got 7"]));
    delegate.release("1", "tool-2", Ok(json!(null))).await;
    assert_eq!(wait(&session, "1").await, result("1", &["done"], None));
    // A preempt signal that fired before the call: the observation returns at once.
    let preempt = CancellationToken::new();
    preempt.cancel();
    let hooks = ExecHooks::default().with_preempt(preempt);
    let started = session
        .execute_with(
            request(r#"await tools.slow(300); text("late")"#).with_yield_time_ms(60_000),
            hooks,
        )
        .await
        .expect("exec");
    assert_eq!(
        started.initial_response.clone().timeless(),
        yielded("2", &[])
    );
    assert_eq!(wait(&session, "2").await, result("2", &["late"], None));
}

// 8.4
pub async fn interrupt_terminates_every_running_cell_and_keeps_the_session<P: CodeModeProvider>(
    provider: &P,
) {
    let (session, delegate) = open(provider).await;
    let done = exec(&session, r#"store("kept", 1); text("finished");"#).await;
    assert_eq!(done.initial_response, result("1", &["finished"], None));
    // Completed, not yet observed: not interrupted, its result stays.
    let unobserved = exec_short(
        &session,
        r#"yield_control(); await tools.slow(20); text("unobserved");"#,
    )
    .await;
    assert_eq!(unobserved.initial_response, yielded("2", &[]));
    let spinning = exec_short(&session, r#"text("spin"); while (true) {}"#).await;
    assert_eq!(spinning.initial_response, yielded("3", &["spin"]));
    let blocked = exec_short(&session, r#"store("lost", 1); await tools.block();"#).await;
    assert_eq!(blocked.initial_response, yielded("4", &[]));
    delegate.wait_started("4", "tool-1").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A cell with an observer waiting when the interrupt comes gets Terminated there.
    let observed = session.wait(WaitRequest {
        cell_id: "3".into(),
        yield_time_ms: Some(60_000),
    });
    let interrupting = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        session.interrupt().await
    };
    let (observed, interrupted) = tokio::join!(observed, interrupting);
    assert_eq!(
        interrupted.expect("interrupt"),
        vec![CellId::from("3"), CellId::from("4")]
    );
    assert_eq!(observed.expect("wait").timeless(), terminated("3", &[]));
    assert_eq!(wait(&session, "4").await, terminated("4", &[]));
    assert_eq!(
        wait(&session, "2").await,
        result("2", &["unobserved"], None)
    );
    delegate
        .wait_for(
            |record| matches!(record, Record::ToolCancelled { cell_id, .. } if cell_id == "4"),
        )
        .await;
    // The session stays open: its values are there, a terminated cell's writes are not.
    assert_eq!(loads(&session, &["kept", "lost"]).await, ["1", "undefined"]);
    // Nothing running: nothing to interrupt.
    assert_eq!(
        session.interrupt().await.expect("interrupt"),
        Vec::<CellId>::new()
    );
}

// 8.5
pub async fn admission_exec_call_id_and_a_delegate_per_exec<P: CodeModeProvider>(provider: &P) {
    use code_mode_protocol::ExecHooks;
    let (session, delegate) = open(provider).await;
    // The id is reported at admission, before the first observation returns.
    let (admitted_tx, admitted_rx) = std::sync::mpsc::channel::<CellId>();
    let hooks = ExecHooks::default().on_admitted(move |cell_id| {
        let _ = admitted_tx.send(cell_id.clone());
    });
    let execute = session.execute_with(
        request(r#"await tools.block(); text("released");"#).with_yield_time_ms(60_000),
        hooks,
    );
    let releasing = async {
        delegate.wait_started("1", "tool-1").await;
        let admitted = admitted_rx
            .try_recv()
            .expect("admitted before the first observation returned");
        delegate.release("1", "tool-1", Ok(json!(1))).await;
        admitted
    };
    let (started, admitted) = tokio::join!(execute, releasing);
    let started = started.expect("exec");
    assert_eq!(admitted, started.cell_id);
    assert_eq!(
        started.initial_response.clone().timeless(),
        result("1", &["released"], None)
    );
    // The model's call id reaches the delegate with each nested call.
    let with_id = session
        .execute(
            request(r#"text(JSON.stringify(await tools.whoami()))"#).with_tool_call_id("call_42"),
        )
        .await
        .expect("exec");
    assert_eq!(
        with_id.initial_response.clone().timeless(),
        result("2", &[r#"{"exec_call_id":"call_42"}"#], None)
    );
    let without = exec(&session, r#"text(JSON.stringify(await tools.whoami()))"#).await;
    assert_eq!(
        without.initial_response,
        result("3", &[r#"{"exec_call_id":null}"#], None)
    );
    // A delegate given to one exec takes that cell's calls, notifications and closing.
    let own = TestDelegate::new();
    let hooks = ExecHooks::default().with_delegate(own.clone());
    let routed = session
        .execute_with(
            request(r#"notify("hello"); text(await tools.echo("mine"));"#),
            hooks,
        )
        .await
        .expect("exec");
    assert_eq!(
        routed.initial_response.timeless(),
        result("4", &["mine"], None)
    );
    own.wait_closed("4").await;
    assert!(
        own.records()
            .iter()
            .any(|record| matches!(record, Record::ToolStarted { tool, .. } if tool == "echo")),
        "{:?}",
        own.records()
    );
    assert!(
        own.records().iter().any(
            |record| matches!(record, Record::NotifyDelivered { text, .. } if text == "hello")
        )
    );
    let session_saw_cell_4 = delegate.records().iter().any(|record| match record {
        Record::ToolStarted { cell_id, .. }
        | Record::NotifyStarted { cell_id, .. }
        | Record::CellClosed(cell_id) => cell_id == "4",
        _ => false,
    });
    assert!(!session_saw_cell_4, "{:?}", delegate.records());
}

// 8.6
pub async fn the_global_object_holds_only_the_contract_names<P: CodeModeProvider>(provider: &P) {
    let (session, _delegate) = open(provider).await;
    let helpers = [
        "ALL_TOOLS",
        "as_settled",
        "audio",
        "clearTimeout",
        "console",
        "exit",
        "generatedImage",
        "image",
        "load",
        "notify",
        "setTimeout",
        "store",
        "stream_settled",
        "text",
        "tools",
        "yield_control",
    ];
    let source = format!(
        r#"const helpers = new Set({helpers:?});
        const own = Reflect.ownKeys(globalThis).map(String);
        text(own.filter((name) => !helpers.has(name) && !/^[A-Z]|^(decodeURI|decodeURIComponent|encodeURI|encodeURIComponent|escape|eval|globalThis|isFinite|isNaN|parseFloat|parseInt|undefined|unescape)$/.test(name)).join(","));
        text([...helpers].filter((name) => !own.includes(name)).join(","));
        text(own.filter((name) => /^[A-Z]/.test(name) && typeof globalThis[name] !== "function" && typeof globalThis[name] !== "object" && !["Infinity", "NaN"].includes(name)).join(","));"#
    );
    let started = exec(&session, &source).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        result("1", &["", "", ""], None)
    );
}

/// A failed result says how it failed (`failure`), beside its text, and the kind crosses
/// every provider's wire: a script error, a stall, the heap limit, the CPU budget, and an
/// unknown cell.
pub async fn failures_carry_their_kind<P: CodeModeProvider>(provider: &P) {
    let options = SessionOptions {
        limits: code_mode_protocol::CellLimits {
            heap_bytes: 64 * 1024 * 1024,
            cpu_budget_ms: 300,
            ..code_mode_protocol::CellLimits::default()
        },
        ..SessionOptions::default()
    };
    let (session, _delegate) = open_with(provider, options).await;
    for (source, kind) in [
        ("throw new Error('boom');", FailureKind::ScriptError),
        ("await new Promise(() => {});", FailureKind::Stalled),
        (
            "const keep = []; for (;;) keep.push(new Array(1e6).fill(1));",
            FailureKind::OutOfMemory,
        ),
        ("for (;;) {}", FailureKind::CpuBudget),
    ] {
        let started = session
            .execute(request(source).with_yield_time_ms(30_000))
            .await
            .expect("exec");
        let response = &started.initial_response;
        assert!(response.error_text().is_some(), "{source}: {response:?}");
        assert_eq!(response.failure(), Some(kind), "{source}: {response:?}");
    }
    let started = session
        .execute(request("text('fine');"))
        .await
        .expect("exec");
    assert_eq!(started.initial_response.failure(), None);
    assert_eq!(
        wait(&session, "99").await.failure(),
        Some(FailureKind::NotFound)
    );
}

/// Contract 3.7: terminate works on an output flood. The cell writes without pause; the
/// terminate stops it and returns the output not yet returned, so that the yield's items
/// and the terminate's together are the flood's first items, in order, none twice.
pub async fn terminate_stops_an_output_flood<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    let started = exec_short(&session, "for (let i = 0; ; i++) text(String(i % 10));").await;
    let CellResponse::Yielded { content_items, .. } = started.initial_response else {
        panic!("the flood did not yield: {:?}", started.initial_response);
    };
    let mut seen = content_items;
    let stopped = session.terminate("1".into()).await.expect("terminate");
    let CellResponse::Terminated { content_items, .. } = stopped else {
        panic!("not terminated: {stopped:?}");
    };
    seen.extend(content_items);
    assert!(!seen.is_empty());
    for (index, item) in seen.iter().enumerate() {
        let expected = (index % 10).to_string();
        assert_eq!(item.as_text(), Some(expected.as_str()), "item {index}");
    }
    delegate.wait_closed("1").await;
    assert_eq!(delegate.closed_count("1"), 1);
    // The session goes on.
    let started = exec(&session, r#"text("after");"#).await;
    assert_eq!(
        started.initial_response.clone().timeless(),
        result("2", &["after"], None)
    );
}

/// Contract 8.5: every response carries the time the provider measured for its
/// observation, and the formatter's `Wall time` line shows it.
pub async fn responses_carry_the_providers_measured_time<P: CodeModeProvider>(provider: &P) {
    let (session, delegate) = open(provider).await;
    let slept = session
        .execute(request(
            r#"await new Promise((resolve) => setTimeout(resolve, 300)); text("done");"#,
        ))
        .await
        .expect("exec");
    let measured = slept.initial_response.wall_time();
    assert!(
        measured >= Duration::from_millis(300) && measured < Duration::from_secs(10),
        "{measured:?}"
    );
    let shown = code_mode_surface::format_response(&slept.initial_response, 1_000);
    let header = shown[0].as_text().expect("the header");
    assert_eq!(
        header,
        format!(
            "Script completed\n{}\nOutput:",
            code_mode_protocol::texts::wall_time(measured.as_secs_f64())
        )
    );

    // A yield at the yield time, a wait, a termination: each measured on its own.
    let blocked = session
        .execute(request(r#"text("a"); await tools.block();"#).with_yield_time_ms(150))
        .await
        .expect("exec");
    assert!(matches!(
        blocked.initial_response,
        CellResponse::Yielded { .. }
    ));
    assert!(blocked.initial_response.wall_time() >= Duration::from_millis(150));
    delegate.wait_started("2", "tool-1").await;
    let waited = session
        .wait(WaitRequest::new("2").with_yield_time_ms(200))
        .await
        .expect("wait");
    assert!(
        waited.wall_time() >= Duration::from_millis(200)
            && waited.wall_time() < Duration::from_secs(10),
        "{:?}",
        waited.wall_time()
    );
    let stopped = session.terminate("2".into()).await.expect("terminate");
    assert!(matches!(stopped, CellResponse::Terminated { .. }));
    assert!(stopped.wall_time() < Duration::from_secs(10));
}

/// Contract §7 and section 4: `stored_values()` is the committed map (not a running
/// cell's writes), and a session opened with it loads every value as it was.
pub async fn stored_values_snapshot_and_restore<P: CodeModeProvider>(provider: &P) {
    let (first, delegate) = open(provider).await;
    exec(
        &first,
        r#"store("plain", 42); store("nested", { a: [1, "two", null], b: { c: "é" } });"#,
    )
    .await;
    let running = exec_short(&first, r#"store("uncommitted", 1); await tools.block();"#).await;
    assert_eq!(running.initial_response, yielded("2", &[]));
    delegate.wait_started("2", "tool-1").await;
    let mut snapshot: Vec<(String, String)> = first
        .stored_values()
        .into_iter()
        .map(|(key, json)| (key, json.to_string()))
        .collect();
    snapshot.sort();
    assert_eq!(
        snapshot,
        [
            (
                "nested".to_owned(),
                r#"{"a":[1,"two",null],"b":{"c":"é"}}"#.to_owned()
            ),
            ("plain".to_owned(), "42".to_owned()),
        ]
    );
    first.terminate("2".into()).await.expect("terminate");

    // A new session (an agent core resumed after its restart) restores the map.
    let delegate = TestDelegate::new();
    let restored = provider.open_session_with_values(
        delegate,
        SessionOptions::default(),
        first.stored_values(),
    );
    assert_eq!(
        loads(&restored, &["plain", "nested", "uncommitted"]).await,
        ["42", r#"{"a":[1,"two",null],"b":{"c":"é"}}"#, "undefined"]
    );
    exec(&restored, r#"store("plain", "new");"#).await;
    assert_eq!(restored.stored_values()["plain"].as_ref(), r#""new""#);
    // The first session is not changed by the other's writes.
    assert_eq!(first.stored_values()["plain"].as_ref(), "42");
}

/// A session's stored values are capped: a `store` beyond the cap throws the exact text,
/// and what was stored before stays.
pub async fn a_store_beyond_the_session_cap_throws<P: CodeModeProvider>(provider: &P) {
    let options = SessionOptions {
        max_stored_bytes: 64,
        ..SessionOptions::default()
    };
    let (session, _delegate) = open_with(provider, options).await;
    exec_is(&session, r#"store("a", "x".repeat(20));
        try { store("b", "y".repeat(40)); } catch (e) { text(String(e)); }
        text(String(load("b")));"#, result(
            "1",
            &[
                r#"Unable to store "b": the session's stored values would take 66 bytes, more than their limit of 64 bytes. Store less, or store smaller values."#,
                "undefined"
            ],
            None
        )).await;
    assert_eq!(
        session.stored_values()["a"].as_ref(),
        format!("\"{}\"", "x".repeat(20))
    );
    assert_eq!(session.stored_values().len(), 1);
}
