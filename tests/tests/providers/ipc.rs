//! The conformance suite against [`ProcessProvider`]: cells run in a `code-mode-bin`
//! process, found like an agent core would find it (next to the test executable's profile
//! dir when the workspace was built with `cargo test --workspace`, or `CODE_MODE_BIN`). One
//! runtime process per test; every session of the test shares it.

use code_mode_conformance::loss::{RuntimeFaults, pid_in, signal, until_gone};
use code_mode_host::{ProcessConfig, ProcessProvider, ProcessSession};
use code_mode_protocol::BoxFuture;
use std::time::Duration;

fn provider() -> ProcessProvider {
    ProcessProvider::new(ProcessConfig::default()).unwrap_or_else(|error| {
        panic!("{error}\n(build the runtime first: cargo build -p code-mode-bin)")
    })
}

code_mode_conformance::conformance_suite!(provider());

/// Kills or drains the provider's runtime process (contract §7).
struct IpcFaults {
    provider: ProcessProvider,
}

impl RuntimeFaults for IpcFaults {
    type Provider = ProcessProvider;

    fn provider(&self) -> &ProcessProvider {
        &self.provider
    }

    fn runtime_of(&self, session: &ProcessSession) -> String {
        session.runtime().expect("the session has run a cell")
    }

    fn kill<'a>(&'a self, session: &'a ProcessSession) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let pid = pid_in(&self.runtime_of(session));
            signal(pid, "KILL");
            until_gone(pid).await;
        })
    }

    fn drain<'a>(&'a self, session: &'a ProcessSession) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            signal(pid_in(&self.runtime_of(session)), "TERM");
            for _ in 0..500 {
                if self.provider.runtime_draining().await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the host never learnt that its runtime drains");
        })
    }

    fn stop(&self, session: &ProcessSession) {
        signal(pid_in(&self.runtime_of(session)), "STOP");
    }

    fn reruns_unadmitted(&self) -> bool {
        true
    }

    /// The provider stops restarting a runtime that failed five times within a minute.
    fn kills_to_spare(&self) -> usize {
        3
    }
}

mod loss {
    code_mode_conformance::runtime_loss_suite!(super::IpcFaults {
        provider: super::provider()
    });
}
