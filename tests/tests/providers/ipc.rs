//! The conformance suite against [`IpcSession`]: cells run in a `code-mode-bin` process,
//! found like an agent core would find it (next to the test executable's profile dir when
//! the workspace was built with `cargo test --workspace`, or `CODE_MODE_BIN`).

use code_mode_conformance::{Provider, TestDelegate};
use code_mode_host::{HostConfig, IpcProvider, IpcSession};
use code_mode_protocol::SessionOptions;
use std::sync::Arc;

/// One runtime process per test; every session of the test shares it.
struct Ipc(IpcProvider);

impl Ipc {
    fn new() -> Self {
        let provider = IpcProvider::new(HostConfig::default()).unwrap_or_else(|error| {
            panic!("{error}\n(build the runtime first: cargo build -p code-mode-bin)")
        });
        Self(provider)
    }
}

impl Provider for Ipc {
    type Session = IpcSession;

    async fn open(&self, delegate: Arc<TestDelegate>, options: SessionOptions) -> Self::Session {
        self.0.open_session(delegate, options)
    }
}

code_mode_conformance::conformance_suite!(Ipc::new());
