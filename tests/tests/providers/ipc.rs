//! The conformance suite against [`ProcessProvider`]: cells run in a `code-mode-bin`
//! process, found like an agent core would find it (next to the test executable's profile
//! dir when the workspace was built with `cargo test --workspace`, or `CODE_MODE_BIN`). One
//! runtime process per test; every session of the test shares it.

use code_mode_host::{ProcessConfig, ProcessProvider};

fn provider() -> ProcessProvider {
    ProcessProvider::new(ProcessConfig::default()).unwrap_or_else(|error| {
        panic!("{error}\n(build the runtime first: cargo build -p code-mode-bin)")
    })
}

code_mode_conformance::conformance_suite!(provider());
