//! The host's bounds, as Codex's host words them: active cells and requests in flight
//! across the host (`RESOURCE_EXHAUSTED`), and a session's pending delegate calls (the
//! limit codex sends in `OpenSession`; the call over it fails in the cell).

use codex_code_mode_host::client::{Driver, exec_request, render_outcome};
use codex_code_mode_host::proto;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

async fn session(host: &codex_code_mode_host::client::StdioHost, pending: u64) -> Driver {
    // A call whose input holds "slow" holds the client's answering loop for a second, so
    // that the calls after it stay pending in the host meanwhile.
    let responder: codex_code_mode_host::client::Responder =
        Arc::new(|call: &proto::ToolInvocation| {
            if call.input_json.contains("slow") {
                // Off the worker's other tasks, so that the client's streams go on.
                tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(1)));
            }
            Ok(call.input_json.clone())
        });
    Driver::open(
        host.client.clone(),
        proto::OpenSessionRequest {
            output_truncation: 2,
            max_pending_delegate_calls: pending,
            ..Default::default()
        },
        responder,
    )
    .await
    .expect("open a session")
}

fn yielding(source: &str) -> proto::ExecuteRequest {
    let mut request = exec_request(source);
    request.yield_time_ms = 100;
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn an_execute_over_the_active_cell_cap_is_refused_until_a_cell_closes() {
    let host = crate::spawn(&crate::our_host(), &["--max-active-cells", "2"]).await;
    let mut driver = session(&host, 4096).await;
    let parked = "text('parked'); await new Promise((r) => setTimeout(r, 60000));";
    for cell in ["1", "2"] {
        let outcome = driver.run(yielding(parked)).await.expect("a parked cell");
        assert_eq!(
            render_outcome(&outcome),
            format!(r#"cell {cell} yielded [text "parked"]"#)
        );
    }
    crate::refused(
        driver.run(exec_request("text('third')")).await,
        Code::ResourceExhausted,
        "code-mode host has too many active cells",
    );
    driver.terminate("1").await.expect("terminate cell 1");
    assert_eq!(
        crate::rendered(&mut driver, "text('room again')").await,
        r#"cell 3 completed{error_text: ""} [text "room again"]"#
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_in_flight_bound_is_refused() {
    let host = crate::spawn(&crate::our_host(), &["--max-in-flight-requests", "1"]).await;
    let mut first = session(&host, 4096).await;
    let mut second = session(&host, 4096).await;
    let mut long = exec_request(
        "await tools.echo({n: 1}); await new Promise((r) => setTimeout(r, 1500)); text('first')",
    );
    long.yield_time_ms = 20_000;
    long.enabled_tools = crate::corpus_tools();
    let calls = first.invocations.clone();
    let running = tokio::spawn(async move { first.run(long).await });
    // The first Execute is in flight once its cell called its tool.
    assert!(
        crate::eventually(10, || !calls.lock().unwrap().is_empty()).await,
        "the first cell never called its tool"
    );
    crate::refused(
        second.run(exec_request("text('second')")).await,
        Code::ResourceExhausted,
        "code-mode host has too many in-flight requests",
    );
    let outcome = running.await.expect("join").expect("the first runs on");
    assert_eq!(
        render_outcome(&outcome),
        r#"cell 1 completed{error_text: ""} [text "first"]"#
    );
    assert_eq!(
        crate::rendered(&mut second, "text('second')").await,
        r#"cell 1 completed{error_text: ""} [text "second"]"#
    );
}

/// The limit is the session's, over all of its cells: a cell's call that would pass it
/// fails with Codex's text while another cell's call waits on the client. (One cell's
/// own calls are bounded by the same number inside the runtime, with its own text.)
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_over_the_sessions_pending_limit_fails_in_the_cell() {
    let host = crate::spawn(&crate::our_host(), &[]).await;
    let mut driver = session(&host, 2).await;
    let mut waiting = yielding("text(await tools.echo({slow: 1}));");
    waiting.enabled_tools = crate::corpus_tools();
    let outcome = driver
        .run(waiting)
        .await
        .expect("a cell waiting on its call");
    assert_eq!(render_outcome(&outcome), "cell 1 yielded []");
    let mut request = exec_request(
        r#"const settled = await Promise.allSettled([tools.echo({n: 2}), tools.echo({n: 3})]);
        text(JSON.stringify(settled.map((s) => s.status === "fulfilled" ? "ok" : String(s.reason?.message ?? s.reason))));"#,
    );
    request.enabled_tools = crate::corpus_tools();
    let outcome = driver.run(request).await.expect("execute");
    assert_eq!(
        render_outcome(&outcome),
        r#"cell 2 completed{error_text: ""} [text "[\"ok\",\"code-mode session has too many pending delegate calls\"]"]"#
    );
}
