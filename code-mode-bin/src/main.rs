//! `code-mode-bin`, the standalone runtime process: the library's `run` over this
//! process's arguments (see the library's docs for what it does, in what order).

fn main() -> std::process::ExitCode {
    code_mode_bin::run(std::env::args_os())
}
