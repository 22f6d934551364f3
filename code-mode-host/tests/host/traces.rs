//! The host crate traces with no code of the agent core's: an exec runs inside the
//! caller's current `tracing` span, so an agent core that exports its own spans sees each
//! cell (and each of its nested calls) as their child. Checked in a real trace store
//! (Arize Phoenix).

use crate::{provider, request};
use code_mode_conformance::TestDelegate;
use code_mode_conformance::phoenix::{assert_cell_tree, caller, phoenix};
use code_mode_host::CodeModeProvider;
use code_mode_protocol::{CodeModeSession, SessionOptions};
use code_mode_trace::{Destination, Protocol, Telemetry, TraceSettings};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::test(flavor = "current_thread")]
async fn an_exec_runs_inside_the_callers_current_span() {
    let phoenix = tokio::task::spawn_blocking(phoenix).await.expect("Phoenix");
    let (trace_id, traceparent) = caller("host crate");
    // The agent core's own tracing: every span it makes goes to the trace store.
    let telemetry = Telemetry::start(TraceSettings::new(
        Destination::Otlp {
            endpoint: format!("{}/v1/traces", phoenix.endpoint()),
            protocol: Protocol::HttpProtobuf,
        },
        "agent-core",
        "1",
    ))
    .expect("an exporter");
    let subscriber = tracing_subscriber::registry().with(telemetry.layer_for_every_target());
    let guard = tracing::subscriber::set_default(subscriber);
    let turn = tracing::info_span!("agent.turn");
    code_mode_trace::adopt_traceparent(&turn, Some(&traceparent));
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
    drop(guard);
    // The last batch goes out as the exporter stops.
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .expect("the exporter stops");
    let spans = tokio::task::spawn_blocking(move || {
        phoenix.trace_when(&trace_id, |spans| {
            spans
                .iter()
                .filter(|span| span["name"] == "code_mode.tool_call")
                .count()
                >= 2
        })
    })
    .await
    .expect("the trace");
    assert_cell_tree(&spans, "agent.turn", ["echo", "text_echo"]);
}
