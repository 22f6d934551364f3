//! The chaos run from the command line: `--soak MINUTES` for a long run that prints the
//! RSS of the host and of every runtime each minute (`docs/BENCHMARKS.md` has one);
//! without it, the short run of the test suite. `--seed N` repeats a run.
//!
//! `cargo run --release -p code-mode-conformance --example chaos -- --soak 30`

use code_mode_conformance::chaos::{ChaosConfig, run};
use code_mode_host::find_binary;

#[allow(clippy::print_stdout, reason = "the run's counts are its output")]
fn main() {
    let mut args = std::env::args().skip(1);
    let mut soak = None;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |now| now.as_nanos() as u64);
    while let Some(arg) = args.next() {
        let value = args.next();
        let number = value
            .as_deref()
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or_else(|| usage(&arg));
        match arg.as_str() {
            "--soak" => soak = Some(number),
            "--seed" => seed = number,
            _ => usage(&arg),
        }
    }
    let config = match soak {
        Some(minutes) => ChaosConfig::soak(minutes, seed),
        None => ChaosConfig::ci(seed),
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

fn usage(arg: &str) -> ! {
    eprintln!("chaos: unexpected argument {arg:?}; usage: chaos [--soak MINUTES] [--seed N]");
    std::process::exit(2);
}
