//! The chaos run, short (contract §7): runtimes killed and drained and connections cut,
//! stalled and delayed under load; nothing committed is lost, nothing runs twice, nothing
//! is left behind. It runs as the `chaos` example in a process of its own, so that the
//! host's RSS it checks is the chaos host's alone (this binary runs V8 sessions of its
//! own in parallel); `--example chaos -- --soak 30` is the long form.

use code_mode_host::find_binary;
use std::process::Command;

#[test]
fn chaos_loses_no_committed_value_and_runs_no_tool_twice() {
    let runtime = find_binary(None).unwrap_or_else(|error| {
        panic!("{error}\n(build the runtime first: cargo build -p code-mode-bin)")
    });
    // `cargo test` builds the package's examples next to its test binaries' directory.
    let example = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples").join("chaos")))
        .filter(|path| path.exists())
        .expect("the chaos example, built by cargo test (target/<profile>/examples/chaos)");
    // A fixed seed unless one is given, so a failure can be run again.
    let seed = std::env::var("CODE_MODE_CHAOS_SEED").unwrap_or_else(|_| "20261123".to_owned());
    let output = Command::new(&example)
        .args(["--seed", &seed])
        .env("CODE_MODE_BIN", &runtime)
        .output()
        .expect("run the chaos example");
    let report = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the chaos run failed (seed {seed}): {}\n{report}\n{log}",
        output.status
    );
    // The counts, for `--nocapture` and for a failing run.
    eprintln!("chaos (seed {seed}): {report}");
    let count = |name: &str| -> u64 {
        report
            .split(&format!("{name} "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("no {name} count in {report:?}"))
    };
    assert!(count("cells") > 0, "{report}");
    assert!(count("values checked") > 0, "{report}");
    assert!(
        count("kills") + count("drains") + count("cuts") > 0,
        "{report}"
    );
}
