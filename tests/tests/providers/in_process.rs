//! The conformance suite against [`InProcessSession`].

use code_mode::{InProcessOptions, InProcessSession};
use code_mode_conformance::{Provider, TestDelegate};
use code_mode_protocol::SessionOptions;
use std::sync::Arc;

struct InProcess;

impl Provider for InProcess {
    type Session = InProcessSession;

    async fn open(&self, delegate: Arc<TestDelegate>, options: SessionOptions) -> Self::Session {
        InProcessSession::new(delegate, InProcessOptions { session: options })
    }
}

code_mode_conformance::conformance_suite!(InProcess);
