//! A wheel carries the runtime executable (`python/code_mode/bin/code-mode-bin`, copied in
//! by `scripts/python-package.sh`), or it is not built: a wheel without it would install
//! and then fail at its first cell. maturin (its own CLI, or `pip install` through it) sets
//! `PYO3_ENVIRONMENT_SIGNATURE` for the extension it builds; a plain `cargo build` of the
//! workspace does not, and builds the crate without the check.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

const RUNTIME: &str = "python/code_mode/bin/code-mode-bin";

fn main() {
    println!("cargo::rerun-if-env-changed=PYO3_ENVIRONMENT_SIGNATURE");
    println!("cargo::rerun-if-changed={RUNTIME}");
    if std::env::var_os("PYO3_ENVIRONMENT_SIGNATURE").is_none() {
        return;
    }
    let runtime = Path::new(RUNTIME);
    let present = std::fs::metadata(runtime).is_ok_and(|meta| {
        meta.is_file() && meta.len() > 0 && meta.permissions().mode() & 0o111 != 0
    });
    if !present {
        println!(
            "cargo::error=the wheel would not carry the runtime ({RUNTIME} is missing), and would fail at its first cell: build it with scripts/python-package.sh from the repository's root (it builds the runtime and copies it in), or copy a built `code-mode-bin` there first"
        );
    }
}
