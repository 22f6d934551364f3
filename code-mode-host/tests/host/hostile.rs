//! Every case of HOSTILE.md, over IPC: the cell's source and its classified outcome, each
//! followed by a check that the next cell of the same session works.

use code_mode_conformance::TestDelegate;
use code_mode_host::CodeModeProvider;
use code_mode_host::{CodeModeSession, ProcessProvider};
use code_mode_protocol::{CellLimits, CellResponse, ExecRequest, SessionOptions};

use code_mode_conformance::hostile::{CPU_BUDGET_MS, ERROR_TEXT_CAP, HEAP, corpus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_corpus_over_ipc() {
    let provider = crate::provider();
    let options = SessionOptions {
        limits: CellLimits {
            cpu_budget_ms: CPU_BUDGET_MS,
            ..CellLimits::default()
        },
        ..SessionOptions::default()
    };
    let session = provider.open_session(TestDelegate::new(), options);
    let pid = {
        session
            .execute(crate::request("text('warm')"))
            .await
            .unwrap();
        provider.runtime_pid().await
    };
    let mut failures = Vec::new();
    for (name, source, expected) in corpus() {
        let request = ExecRequest::new(source)
            .with_tools(TestDelegate::tools())
            .with_yield_time_ms(60_000);
        match session.execute(request).await {
            Ok(started) if expected.matches(&started.initial_response) => {}
            Ok(started) => failures.push(format!("{name}: {:?}", started.initial_response)),
            Err(error) => failures.push(format!("{name}: {error}")),
        }
        let next = session.execute(crate::request("text('next')")).await;
        let next_works = next.is_ok_and(|started| {
            matches!(
                started.initial_response,
                CellResponse::Result { failure: None, .. }
            )
        });
        if !next_works {
            failures.push(format!("{name}: the next cell did not work"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        provider.runtime_pid().await,
        pid,
        "the runtime process survived every case"
    );
}

/// The resident set of a process, in bytes (Linux `/proc/<pid>/status`).
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_error_texts_leave_the_runtime_small() {
    /// Copying the texts whole, as the runtime once did, grew it by about 900 MiB.
    const MAX_GROWTH: u64 = 400 * 1024 * 1024;
    let provider = crate::provider();
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    session
        .execute(crate::request("text('warm')"))
        .await
        .unwrap();
    let pid = provider.runtime_pid().await.expect("a runtime runs");
    let before = resident_bytes(pid);
    let mut peak = before;
    for source in [
        "throw new Error('x'.repeat(1e8));",
        "const e = new Error('m'); e.stack = 's'.repeat(1e8); throw e;",
        "throw 't'.repeat(1e8);",
        "throw { toString() { return 'u'.repeat(1e8); } };",
    ] {
        for _ in 0..3 {
            let started = session.execute(crate::request(source)).await.unwrap();
            let error = started
                .initial_response
                .error_text()
                .unwrap_or_default()
                .to_owned();
            assert!(
                error.len() < ERROR_TEXT_CAP + 100 && error.contains(" [truncated: "),
                "{source}: {} bytes",
                error.len()
            );
            peak = peak.max(resident_bytes(pid));
        }
    }
    let next = session
        .execute(crate::request("text('next')"))
        .await
        .unwrap();
    assert_eq!(
        next.initial_response.content_items()[0].as_text(),
        Some("next")
    );
    assert!(
        peak.saturating_sub(before) < MAX_GROWTH,
        "the runtime grew from {} MiB to {} MiB",
        before >> 20,
        peak >> 20
    );
    eprintln!(
        "runtime RSS: {} MiB before, {} MiB at most",
        before >> 20,
        peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heap_bomb_in_one_session_leaves_another_unharmed() {
    let provider: ProcessProvider = crate::provider();
    let bomb = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let worker = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let exploding = bomb.execute(
        ExecRequest::new("const a = []; for (;;) a.push(new Array(1e6).fill(0));")
            .with_yield_time_ms(60_000),
    );
    let working = async {
        let mut results = Vec::new();
        for round in 0..20 {
            let started = worker
                .execute(crate::request(&format!(
                    "store('r', {round}); text(await tools.echo({round}) + load('r'));"
                )))
                .await
                .unwrap();
            results.push(started.initial_response);
        }
        results
    };
    let (exploded, results) = tokio::join!(exploding, working);
    assert_eq!(exploded.unwrap().initial_response.error_text(), Some(HEAP));
    for (round, response) in results.iter().enumerate() {
        assert_eq!(
            response.content_items()[0].as_text(),
            Some((round * 2).to_string().as_str()),
            "{response:?}"
        );
    }
}
