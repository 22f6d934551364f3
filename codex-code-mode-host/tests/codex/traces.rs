//! Traces: draft.

use crate::{codex_host, corpus_tools, open};
use codex_code_mode_host::client::exec_request;

/// One session as the differential runs it: open, an exec with a nested call, an exec
/// that yields, a wait on it, close.
pub async fn traced_session(host: &codex_code_mode_host::client::StdioHost) {
    let mut driver = open(host, 0).await;
    let mut first = exec_request(r#"text(JSON.stringify(await tools.echo({n: 1})));"#);
    first.enabled_tools = corpus_tools();
    driver.run(first).await.expect("the exec with a call");
    let mut second =
        exec_request(r#"text("a"); await new Promise((r) => setTimeout(r, 300)); text("b");"#);
    second.yield_time_ms = 50;
    let outcome = driver.run(second).await.expect("the yielding exec");
    driver
        .wait(&outcome.cell_id, 5_000, None)
        .await
        .expect("wait");
    driver.close().await.expect("close");
}

#[tokio::test]
async fn explore_codex_spans() {
    let Ok(args) = std::env::var("CAPTURE_ARGS") else {
        return;
    };
    let args: Vec<&str> = args.split(' ').collect();
    let binary = if std::env::var_os("CAPTURE_OURS").is_some() {
        crate::our_host()
    } else {
        codex_host()
    };
    let host = crate::spawn(&binary, &args).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut host = host;
    traced_session(&host).await;
    host.disconnect();
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(10), host.child().wait()).await;
    eprintln!("exit: {status:?}");
}
