//! The chaos run from the command line: `--soak MINUTES` for a long run that prints the
//! RSS of the host and of every runtime each minute (`docs/BENCHMARKS.md` has one);
//! without it, the short run of the test suite. `--seed N` repeats a run.
//!
//! `--break FAULT` (debug builds only) arms one of the host's deliberate faults
//! (`drop-commit`, `duplicate-call`, `duplicate-answer`, `lose-answer`) and runs the short
//! proof configuration: the run must fail, naming what broke.
//!
//! Any panic, in any task, ends the process with status 101: a failure can never turn
//! into a hang or pass unseen.
//!
//! `cargo run --release -p code-mode-conformance --example chaos -- --soak 30`

use code_mode_conformance::chaos::{ChaosConfig, run};
use code_mode_host::find_binary;

#[expect(clippy::print_stdout, reason = "the run's counts are its output")]
fn main() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        // No destructor runs after `exit`: the runtimes the run started go first.
        code_mode_conformance::remote::kill_listening_runtimes();
        std::process::exit(101);
    }));
    let mut args = std::env::args().skip(1);
    let mut soak = None;
    let mut fault = None;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |now| now.as_nanos() as u64);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage(&arg));
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage(&arg));
        match arg.as_str() {
            "--soak" => soak = Some(number()),
            "--seed" => seed = number(),
            "--break" => fault = Some(value.clone()),
            _ => usage(&arg),
        }
    }
    let config = match (soak, &fault) {
        (Some(minutes), None) => ChaosConfig::soak(minutes, seed),
        (None, None) => ChaosConfig::ci(seed),
        (None, Some(fault)) => {
            arm(fault);
            ChaosConfig::proof(seed)
        }
        (Some(_), Some(_)) => usage("--break"),
    };
    let binary = find_binary(None).unwrap_or_else(|error| {
        eprintln!("{error}\n(build the runtime first: cargo build --release -p code-mode-bin)");
        std::process::exit(2);
    });
    eprintln!("chaos: seed {seed}, {config:?}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(run(&binary, config));
    println!("{report}");
}

/// Arms the host's deliberate fault named `name`.
#[cfg(debug_assertions)]
fn arm(name: &str) {
    use code_mode_host::{Fault, arm_fault};
    let fault = match name {
        "drop-commit" => Fault::DropCommit,
        "duplicate-call" => Fault::DuplicateCall,
        "duplicate-answer" => Fault::DuplicateAnswer,
        "lose-answer" => Fault::LoseAnswer,
        "replayed-call" => Fault::ReplayedCall,
        "reordered-entry" => Fault::ReorderedEntry,
        "duplicate-output" => Fault::DuplicateOutput,
        _ => usage("--break"),
    };
    eprintln!("chaos: {fault:?} armed");
    arm_fault(fault);
}

#[cfg(not(debug_assertions))]
fn arm(_name: &str) {
    eprintln!("chaos: --break needs a debug build (release builds carry no faults)");
    std::process::exit(2);
}

fn usage(arg: &str) -> ! {
    eprintln!(
        "chaos: unexpected argument {arg:?}; usage: chaos [--soak MINUTES | --break drop-commit|duplicate-call|duplicate-answer|lose-answer] [--seed N]"
    );
    std::process::exit(2);
}
