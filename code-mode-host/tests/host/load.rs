//! A load test over IPC and over TCP with mutual TLS: many sessions, each running many
//! cells with nested tool calls and stored writes, concurrently on one runtime process.
//! Nothing may be lost. CI runs a small size; `CODE_MODE_LOAD=32x500` (sessions x cells)
//! runs the full one.

use code_mode_conformance::TestDelegate;
use code_mode_conformance::remote::{ListeningRuntime, Pki, RuntimeOptions};
use code_mode_host::CodeModeProvider;
use code_mode_host::{ClientTls, RemoteConfig, RemoteProvider, find_binary};
use code_mode_protocol::{CellResponse, CodeModeSession, ContentItem, SessionOptions};
use std::sync::Arc;
use std::time::Instant;

/// Sessions and cells per session in CI.
const CI_SIZE: (usize, usize) = (8, 40);

fn size() -> (usize, usize) {
    std::env::var("CODE_MODE_LOAD")
        .ok()
        .and_then(|value| {
            let (sessions, cells) = value.split_once('x')?;
            Some((sessions.parse().ok()?, cells.parse().ok()?))
        })
        .unwrap_or(CI_SIZE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_of_many_cells_lose_nothing() {
    let provider = crate::provider();
    run_load("ipc", || {
        provider.open_session(TestDelegate::new(), SessionOptions::default())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_of_many_cells_lose_nothing_over_tcp_and_tls() {
    let binary = find_binary(None).expect("the runtime binary");
    let pki = Pki::default();
    let runtime = ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki));
    let [ca, cert, key] = pki.client_pems("load host");
    let tls = ClientTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
    let provider = RemoteProvider::new(RemoteConfig::new(vec![runtime.endpoint()], tls)).unwrap();
    run_load("tcp+tls", || {
        provider.open_session(TestDelegate::new(), SessionOptions::default())
    })
    .await;
}

/// Runs the load on sessions from `open`; `label` names the transport in the report.
async fn run_load<S: CodeModeSession + 'static>(label: &str, open: impl Fn() -> S) {
    let (sessions, cells) = size();
    let started_at = Instant::now();
    let mut tasks = Vec::new();
    for session_index in 0..sessions {
        let session = Arc::new(open());
        tasks.push(tokio::spawn(async move {
            for cell in 0..cells {
                let source = format!(
                    "const v = await tools.echo({cell}); store('c{cell}', v); text('s{session_index} c' + v);"
                );
                let started = session.execute(crate::request(&source)).await.unwrap();
                let CellResponse::Result { content_items, failure: None, .. } = started.initial_response else {
                    panic!("session {session_index} cell {cell}: {:?}", started.initial_response);
                };
                assert_eq!(content_items, [ContentItem::text(format!("s{session_index} c{cell}"))]);
            }
            let check = format!(
                "let lost = 0; for (let i = 0; i < {cells}; i++) if (load('c' + i) !== i) lost++; text(lost);"
            );
            let started = session.execute(crate::request(&check)).await.unwrap();
            assert_eq!(started.initial_response.content_items(), [ContentItem::text("0")], "session {session_index}");
        }));
    }
    for task in tasks {
        task.await.expect("a session task");
    }
    let elapsed = started_at.elapsed();
    let total = sessions * (cells + 1);
    eprintln!(
        "load ({label}): {sessions} sessions x {cells} cells ({total} cells, {} tool calls) in {elapsed:?}: {:.0} cells/s",
        sessions * cells,
        total as f64 / elapsed.as_secs_f64()
    );
}
