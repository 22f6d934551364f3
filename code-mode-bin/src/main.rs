//! `code-mode-bin`: the standalone runtime process. It will serve sessions over a local
//! socket (the runtime-process issue); until then it only answers `--version` and `--help`
//! and refuses anything else with a clear error. It never writes to stdout except for
//! those two answers.

use std::process::ExitCode;

const USAGE: &str = "usage: code-mode-bin --version | --help\n\
    (serving sessions over IPC is not available in this build)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version"] => {
            #[allow(
                clippy::print_stdout,
                reason = "--version answers on stdout by convention"
            )]
            {
                println!("code-mode-bin {}", env!("CARGO_PKG_VERSION"));
            }
            ExitCode::SUCCESS
        }
        ["--help"] => {
            #[allow(
                clippy::print_stdout,
                reason = "--help answers on stdout by convention"
            )]
            {
                println!("{USAGE}");
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("code-mode-bin: unsupported arguments {args:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
