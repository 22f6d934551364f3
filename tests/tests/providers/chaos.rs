//! The chaos run, short (contract §7): runtimes killed and drained and connections cut,
//! stalled and delayed under load; nothing committed is lost, nothing runs twice, nothing
//! is left behind. `--example chaos -- --soak 30` is the long form.

use code_mode_conformance::chaos::{ChaosConfig, run};
use code_mode_host::find_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_no_committed_value_and_runs_no_tool_twice() {
    let binary = find_binary(None).unwrap_or_else(|error| {
        panic!("{error}\n(build the runtime first: cargo build -p code-mode-bin)")
    });
    // A fixed seed unless one is given, so a failure can be run again.
    let seed = std::env::var("CODE_MODE_CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(20_261_123);
    let report = run(&binary, ChaosConfig::ci(seed)).await;
    // The counts, for `--nocapture` and for a failing run (the test harness shows stderr).
    eprintln!("chaos (seed {seed}): {report}");
    assert!(
        report.completed > 0 && report.values_checked > 0,
        "{report}"
    );
    assert!(report.kills + report.drains + report.cuts > 0, "{report}");
}
