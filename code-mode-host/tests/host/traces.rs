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
            && has_cell_work(spans)
    })
    .await;
    let cell = assert_cell_tree(&spans, "agent.turn", ["echo", "text_echo"]);
    // The runtime process's spans, handed back and exported by the host crate through the
    // agent core's exporter.
    assert_cell_work(&spans, cell, Placement::OutOfProcess);
}
