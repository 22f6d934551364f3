//! Durable cells (CONTRACT §7): a cell that waits on nothing but its nested calls
//! hibernates, and is rebuilt from its journal when an answer comes. Each scenario runs
//! the same cell twice, once in a session whose cells never hibernate (the fault-free run)
//! and once in a session whose cells hibernate at every frontier, answering the same calls
//! in the same order with a pause before each answer; the two must give the same output,
//! send every call to the delegate once, deliver every notification once and commit the
//! same stored values.

use crate::delegate::{Record, TestDelegate};
use code_mode_protocol::{
    CellId, CellResponse, CodeModeProvider, CodeModeSession, ContentItem, ExecRequest,
    SessionOptions, WaitRequest,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// How long a scenario pauses before each answer: far beyond a hibernation delay of 0.
pub const PAUSE: Duration = Duration::from_millis(80);

/// Session options whose cells hibernate at once (`Some(0)`) or never (`None`).
pub fn options(hibernate_after_ms: Option<u64>) -> SessionOptions {
    SessionOptions {
        hibernate_after_ms,
        ..SessionOptions::default()
    }
}

/// The cell: every kind of thing that enters a cell, around blocked calls. (`r` goes to
/// `echo` as text: the test delegate's JSON values need not give a double back to the
/// last bit.)
pub const SOURCE: &str = r#"
const t0 = Date.now();
const r = Math.random();
text("start");
notify("noted");
const first = await tools.block({ t0, r });
text("first " + first);
store("before", first);
const many = await Promise.all(Array.from({ length: 10 }, (_, i) => tools.block(i)));
text("all " + many.join(","));
const settled = [];
for await (const s of as_settled([tools.block("s0"), tools.fail("s1"), tools.block("s2")])) {
  settled.push(s.index + ":" + s.status);
}
text("settled " + settled.join(","));
const ticks = [];
setTimeout(() => ticks.push("t1"), 1);
const mid = await tools.block("mid");
setTimeout(() => ticks.push("t2"), 1);
await new Promise((resolve) => setTimeout(resolve, 20));
text("ticks " + ticks.join(",") + " " + mid);
image("data:image/png;base64,iVBORw0KGgo=");
yield_control();
const t1 = Date.now();
const echoed = await tools.echo({ t0, r: String(r), t1 });
const last = await tools.block({ r2: Math.random() });
store("after", last);
text(JSON.stringify({ sameT0: echoed.t0 === t0, sameR: echoed.r === String(r), ordered: t1 >= t0, last }));
"#;

/// The answers, in the order they are given: (call id, answer). The ten calls of
/// `Promise.all` are answered out of order.
pub fn answers() -> Vec<(String, Value)> {
    let mut answers = vec![("tool-1".to_owned(), json!("one"))];
    for i in [7, 2, 9, 0, 5, 1, 8, 3, 6, 4] {
        answers.push((format!("tool-{}", i + 2), json!(i * 10)));
    }
    answers.push(("tool-14".to_owned(), json!("S2")));
    answers.push(("tool-12".to_owned(), json!("S0")));
    answers.push(("tool-15".to_owned(), json!("M")));
    answers.push(("tool-17".to_owned(), json!("L")));
    answers
}

/// What one run of [`SOURCE`] gave.
#[derive(Debug)]
pub struct Outcome {
    pub items: Vec<ContentItem>,
    pub failure: Option<String>,
    pub stored: Vec<(String, String)>,
    pub records: Vec<Record>,
}

/// Runs [`SOURCE`] on `session`, answering [`answers`] in order with a [`PAUSE`] before
/// each, and collects every item of every observation until the result.
pub async fn run_source(session: &impl CodeModeSession, delegate: &TestDelegate) -> Outcome {
    run_source_with(session, delegate, &[], || Box::pin(async {})).await
}

/// [`run_source`], running `fault` (a kill of the runtime, say) before each answer to a
/// call of `fault_before`, in the pause before it.
pub async fn run_source_with<'a>(
    session: &impl CodeModeSession,
    delegate: &TestDelegate,
    fault_before: &[&str],
    fault: impl Fn() -> code_mode_protocol::BoxFuture<'a, ()>,
) -> Outcome {
    let started = session
        .execute(
            ExecRequest::new(SOURCE)
                .with_tools(TestDelegate::tools())
                .with_yield_time_ms(20),
        )
        .await
        .expect("exec");
    let cell: CellId = started.cell_id.clone();
    let answering = async {
        for (call, answer) in answers() {
            delegate.wait_started(&cell.to_string(), &call).await;
            tokio::time::sleep(PAUSE).await;
            if fault_before.contains(&call.as_str()) {
                fault().await;
                tokio::time::sleep(PAUSE).await;
            }
            delegate.release(&cell.to_string(), &call, Ok(answer)).await;
        }
    };
    let observing = async {
        let mut items = Vec::new();
        let mut response = started.initial_response;
        loop {
            match response {
                CellResponse::Yielded { content_items, .. } => items.extend(content_items),
                CellResponse::Result {
                    content_items,
                    failure,
                    ..
                } => {
                    items.extend(content_items);
                    return (items, failure.map(|failure| failure.text));
                }
                CellResponse::Terminated { .. } => panic!("the cell was terminated"),
            }
            response = session
                .wait(WaitRequest::new(cell.clone()).with_yield_time_ms(200))
                .await
                .expect("wait");
        }
    };
    let ((items, failure), ()) = tokio::join!(observing, answering);
    let mut stored: Vec<(String, String)> = session
        .stored_values()
        .into_iter()
        .map(|(key, value)| (key, value.to_string()))
        .collect();
    stored.sort();
    Outcome {
        items,
        failure,
        stored,
        records: delegate.records(),
    }
}

/// How many times each nested call reached the delegate, by call id.
pub fn calls_started(records: &[Record]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in records {
        if let Record::ToolStarted { call_id, .. } = record {
            *counts.entry(call_id.clone()).or_insert(0) += 1;
        }
    }
    counts
}

/// Checks a run of [`SOURCE`]: its output, its stored values, and that every call and
/// notification reached the delegate exactly once.
pub fn check(outcome: &Outcome) {
    assert_eq!(outcome.failure, None, "the cell failed: {outcome:?}");
    let texts: Vec<&str> = outcome
        .items
        .iter()
        .filter_map(|item| match item {
            ContentItem::InputText { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        texts[..5],
        [
            "start",
            "first one",
            "all 0,10,20,30,40,50,60,70,80,90",
            "settled 1:rejected,2:fulfilled,0:fulfilled",
            "ticks t1,t2 M",
        ],
        "{outcome:?}"
    );
    assert_eq!(
        texts[5],
        r#"{"sameT0":true,"sameR":true,"ordered":true,"last":"L"}"#
    );
    assert_eq!(outcome.items.len(), 7, "{outcome:?}");
    assert!(matches!(outcome.items[5], ContentItem::InputImage { .. }));
    assert_eq!(
        outcome.stored,
        [
            ("after".to_owned(), "\"L\"".to_owned()),
            ("before".to_owned(), "\"one\"".to_owned())
        ]
    );
    let calls = calls_started(&outcome.records);
    assert_eq!(calls.len(), 17, "{calls:?}");
    assert!(
        calls.values().all(|count| *count == 1),
        "a call reached the delegate twice: {calls:?}"
    );
    let delivered = outcome
        .records
        .iter()
        .filter(|record| matches!(record, Record::NotifyDelivered { text, .. } if text == "noted"))
        .count();
    assert_eq!(delivered, 1, "{:?}", outcome.records);
}

// Scenarios ---------------------------------------------------------------------------

/// A cell that hibernates at each of its waits ends with its fault-free output, and no
/// call or notification reaches the delegate twice.
pub async fn a_hibernating_cell_ends_with_its_fault_free_output<P: CodeModeProvider>(provider: &P) {
    let delegate = TestDelegate::new();
    let session = provider.open_session(delegate.clone(), options(None));
    let fault_free = run_source(&session, &delegate).await;
    check(&fault_free);

    let delegate = TestDelegate::new();
    let session = provider.open_session(delegate.clone(), options(Some(0)));
    let hibernating = run_source(&session, &delegate).await;
    check(&hibernating);
    assert_eq!(hibernating.items, fault_free.items);
}

/// Starts `source` as cell 1 of `session` (cells hibernating at once), and returns once
/// its `tools.block` call started and it had time to hibernate: the output of its first
/// observation.
async fn start_hibernating(
    session: &impl CodeModeSession,
    delegate: &TestDelegate,
    source: &str,
) -> Vec<ContentItem> {
    let started = session
        .execute(
            ExecRequest::new(source)
                .with_tools(TestDelegate::tools())
                .with_yield_time_ms(20),
        )
        .await
        .expect("exec");
    delegate.wait_started("1", "tool-1").await;
    tokio::time::sleep(PAUSE).await;
    match started.initial_response {
        CellResponse::Yielded { content_items, .. } => content_items,
        other => panic!("the cell did not yield: {other:?}"),
    }
}

/// A hibernating cell is terminated without being rebuilt: its writes are discarded and
/// its call in flight is cancelled.
pub async fn a_hibernating_cell_is_terminated<P: CodeModeProvider>(provider: &P) {
    let delegate = TestDelegate::new();
    let session = provider.open_session(delegate.clone(), options(Some(0)));
    let mut items = start_hibernating(
        &session,
        &delegate,
        r#"store("k", 1); text("a"); await tools.block(1); text("b");"#,
    )
    .await;
    let response = session.terminate("1".into()).await.expect("terminate");
    let CellResponse::Terminated { content_items, .. } = response else {
        panic!("not terminated: {response:?}");
    };
    items.extend(content_items);
    assert_eq!(items, [ContentItem::text("a")]);
    delegate
        .wait_for(
            |record| matches!(record, Record::ToolCancelled { call_id, .. } if call_id == "tool-1"),
        )
        .await;
    assert!(session.stored_values().is_empty());
}

/// `exit()` after a wake-up ends the cell there, with the output of both incarnations once.
pub async fn a_woken_cell_exits<P: CodeModeProvider>(provider: &P) {
    let delegate = TestDelegate::new();
    let session = provider.open_session(delegate.clone(), options(Some(0)));
    let mut items = start_hibernating(
        &session,
        &delegate,
        r#"text("a"); const v = await tools.block(1); text("b " + v); exit(); text("never");"#,
    )
    .await;
    delegate.release("1", "tool-1", Ok(json!("x"))).await;
    let response = session
        .wait(WaitRequest::new("1").with_yield_time_ms(10_000))
        .await
        .expect("wait");
    let CellResponse::Result {
        content_items,
        failure: None,
        ..
    } = response
    else {
        panic!("not a clean result: {response:?}");
    };
    items.extend(content_items);
    assert_eq!(items, [ContentItem::text("a"), ContentItem::text("b x")]);
    assert_eq!(calls_started(&delegate.records()).len(), 1);
}
