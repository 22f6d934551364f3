//! The host crate traces with no code of the agent core's: an exec runs inside the
//! caller's current `tracing` span, so an agent core that exports its own spans sees each
//! cell (and each of its nested calls) as their child. Checked in a real trace store
//! (Arize Phoenix).

use crate::{provider, request};
use code_mode_conformance::TestDelegate;
use code_mode_conformance::phoenix::{
    Placement, agent_core_tracing, agent_turn, assert_cell_tree, assert_cell_work, caller,
    flushed_trace, has_cell_work, phoenix,
};
use code_mode_host::CodeModeProvider;
use code_mode_protocol::{CodeModeSession, SessionOptions};
use tracing::Instrument as _;

#[tokio::test(flavor = "current_thread")]
async fn an_exec_runs_inside_the_callers_current_span() {
    let phoenix = tokio::task::spawn_blocking(phoenix).await.expect("Phoenix");
    let (trace_id, traceparent) = caller("host crate");
    // The agent core's own tracing: every span it makes goes to the trace store.
    let exporting = agent_core_tracing(phoenix);
    let turn = agent_turn(&traceparent);
    async {
        let delegate = TestDelegate::new();
        let session = provider().open_session(delegate, SessionOptions::default());
        let started = session
            .execute(request(
                r#"await tools.echo({n: 1}); await tools.text_echo("two"); text("done");"#,
            ))
            .await
            .expect("execute");
        assert!(
            started.initial_response.cell_failure().is_none(),
            "{started:?}"
        );
        session.shutdown().await;
    }
    .instrument(turn)
    .await;
    let spans = flushed_trace(exporting, trace_id, |spans| {
        spans
            .iter()
            .filter(|span| span["name"] == "code_mode.tool_call")
            .count()
            >= 2
            && has_cell_work(spans, Placement::OutOfProcess)
    })
    .await;
    let cell = assert_cell_tree(&spans, "agent.turn", ["echo", "text_echo"]);
    // The runtime process's spans, handed back and exported by the host crate through the
    // agent core's exporter.
    assert_cell_work(&spans, cell, Placement::OutOfProcess);
}

/// A runtime killed under a waiting cell is in the cell's trace: an event `runtime lost`
/// with its cause on the cell's span, then a `code_mode.rebuild` span under the cell with
/// the fresh runtime's spans under it (another process: the replay that answers the
/// rebuilt cell from its journal, and the compile under it).
#[tokio::test(flavor = "current_thread")]
async fn a_runtime_loss_and_the_cells_rebuild_are_in_its_trace() {
    use code_mode_conformance::loss::{signal, until_gone};
    use code_mode_conformance::phoenix::children;
    use code_mode_protocol::{ContentItem, WaitRequest};
    let phoenix = tokio::task::spawn_blocking(phoenix).await.expect("Phoenix");
    let (trace_id, traceparent) = caller("host crate loss");
    let exporting = agent_core_tracing(phoenix);
    let turn = agent_turn(&traceparent);
    async {
        let delegate = TestDelegate::new();
        let provider = provider();
        let session = provider.open_session(delegate.clone(), SessionOptions::default());
        let started = session
            .execute(
                request(r#"text("before"); const v = await tools.block(); text("after " + v);"#)
                    .with_yield_time_ms(100),
            )
            .await
            .expect("execute");
        let cell_id = started.cell_id.to_string();
        delegate.wait_started(&cell_id, "tool-1").await;
        let pid = provider.runtime_pid().await.expect("a runtime");
        signal(pid, "KILL");
        until_gone(pid).await;
        delegate
            .release(&cell_id, "tool-1", Ok(serde_json::json!("late")))
            .await;
        let response = session
            .wait(WaitRequest::new(started.cell_id.clone()).with_yield_time_ms(60_000))
            .await
            .expect("the cell goes on past the loss");
        assert_eq!(response.content_items(), [ContentItem::text("after late")]);
        session.shutdown().await;
    }
    .instrument(turn)
    .await;
    let spans = flushed_trace(exporting, trace_id, |spans| {
        spans.iter().any(|span| span["name"] == "code_mode.rebuild")
            && spans
                .iter()
                .filter(|span| span["name"] == "code_mode.compile")
                .count()
                >= 2
            && spans.iter().any(|span| span["name"] == "code_mode.replay")
    })
    .await;
    let rendered = || {
        spans
            .iter()
            .map(|span| {
                format!(
                    "{} {} <- {}",
                    span["name"], span["context"]["span_id"], span["parent_id"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let turn = spans
        .iter()
        .find(|span| span["name"] == "agent.turn")
        .expect("the agent's span");
    let [cell] = children(&spans, turn, "code_mode.cell")[..] else {
        panic!("one cell under the agent's span:\n{}", rendered());
    };
    let lost: Vec<&serde_json::Value> = cell["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["name"] == "runtime lost")
        .collect();
    let [lost] = lost[..] else {
        panic!("one `runtime lost` event on the cell: {}", cell["events"]);
    };
    assert!(
        lost["attributes"]["cause"]
            .as_str()
            .is_some_and(|cause| cause.contains("SIGKILL")),
        "the loss's cause: {lost}"
    );
    // The first runtime's work under the cell; the rebuild's under the rebuild span, from
    // another process.
    let pid = |span: &serde_json::Value| span["attributes"]["process.pid"].as_i64();
    let [first] = children(&spans, cell, "code_mode.compile")[..] else {
        panic!(
            "the first runtime's compile under the cell:\n{}",
            rendered()
        );
    };
    let [rebuild] = children(&spans, cell, "code_mode.rebuild")[..] else {
        panic!("one rebuild under the cell:\n{}", rendered());
    };
    let [replay] = children(&spans, rebuild, "code_mode.replay")[..] else {
        panic!(
            "the fresh runtime's replay under the rebuild:\n{}",
            rendered()
        );
    };
    // The rebuilt incarnation compiles and evaluates under its replay.
    let [second] = children(&spans, replay, "code_mode.compile")[..] else {
        panic!(
            "the fresh runtime's compile under its replay:\n{}",
            rendered()
        );
    };
    assert!(
        pid(first).is_some() && pid(second).is_some(),
        "{}",
        rendered()
    );
    assert_ne!(pid(first), pid(second), "two runtime processes");
    assert_eq!(pid(replay), pid(second));
}
