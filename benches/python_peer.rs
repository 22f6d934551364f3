//! `python_peer`: the Rust API's side of the Python package's benchmark
//! (`benches/python/bench.py`, run by `scripts/python-bench.sh`). One invocation runs
//! `--iterations N` execs of one cell after five warm-up execs, through the Rust API,
//! `--transport ipc` (the process provider, as the Python package runs cells) or
//! `in-process`, `--cell trivial` (`text(1)`), `tool` (one nested call to a tool that
//! answers at once) or `fifty` (fifty such calls in one `Promise.all`), and prints each
//! exec's wall time in microseconds as one JSON array. The Python script and the Node
//! package's (`code-mode-node/bench/binding.mjs`) run it between their own rounds, so the
//! two interleave in one run.

#[expect(
    dead_code,
    reason = "only the shared delegate is used here, not the synthetic tools"
)]
mod support;

use code_mode_host::protocol::{
    CodeModeProvider, CodeModeSession, ExecRequest, SessionOptions, ToolDefinition, ToolKind,
};
// The tool answers with its argument, parsed and serialised as a typical agent core does
// (the Python side parses and checks it too).
use std::sync::Arc;
use std::time::Instant;
use support::EchoTools;

/// The cells, the same text the Python side runs.
fn source(cell: &str) -> &'static str {
    match cell {
        "tool" => "text(await tools.echo({n: 1}))",
        "fifty" => {
            "const all = await Promise.all(Array.from({length: 50}, (_, n) => tools.echo({n}))); \
             text(all.length)"
        }
        _ => "text(1)",
    }
}

async fn run(provider: &impl CodeModeProvider, cell: &str, iterations: usize) -> Vec<u128> {
    let session = provider.open_session(Arc::new(EchoTools), SessionOptions::default());
    let tools: Arc<[ToolDefinition]> = Arc::from([ToolDefinition::new(
        "echo",
        "Answers with its argument.",
        ToolKind::Function,
    )]);
    let mut times = Vec::with_capacity(iterations);
    for index in 0..iterations + 5 {
        let request = ExecRequest::new(source(cell)).with_tools(Arc::clone(&tools));
        let started = Instant::now();
        let response = session.execute(request).await.expect("the exec runs");
        let elapsed = started.elapsed().as_micros();
        assert!(
            response.initial_response.failure().is_none(),
            "{response:?}"
        );
        if index >= 5 {
            times.push(elapsed);
        }
    }
    session.shutdown().await;
    times
}

#[expect(
    clippy::print_stdout,
    reason = "the figures are the benchmark's output"
)]
fn main() {
    let mut transport = "ipc".to_owned();
    let mut cell = "trivial".to_owned();
    let mut iterations = 100;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--transport" => transport = value(),
            "--cell" => cell = value(),
            "--iterations" => iterations = value().parse().unwrap_or(iterations),
            _ => {} // cargo bench passes --bench
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let times = runtime.block_on(async {
        if transport == "in-process" {
            let provider = code_mode::InProcessProvider::new(code_mode::InProcessConfig::default());
            run(&provider, &cell, iterations).await
        } else {
            let provider =
                code_mode_host::ProcessProvider::new(code_mode_host::ProcessConfig::default())
                    .expect("the runtime binary is found");
            run(&provider, &cell, iterations).await
        }
    });
    let list: Vec<String> = times.iter().map(u128::to_string).collect();
    println!("[{}]", list.join(","));
}
