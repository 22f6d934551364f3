//! The conformance suite against a runtime on TCP with mutual TLS (`code-mode-bin
//! --listen`), reached through [`RemoteProvider`]: certificates made for each test, one
//! listening runtime per test, every session of the test placed on it.

use code_mode_conformance::loss::RuntimeFaults;
use code_mode_conformance::remote::{ListeningRuntime, Pki, RuntimeOptions};
use code_mode_host::{
    ClientTls, RemoteConfig, RemoteProvider, RemoteSession, RuntimeStatus, find_binary,
};
use code_mode_protocol::BoxFuture;
use std::sync::Mutex;
use std::time::Duration;

/// The provider, with the runtime it reaches, which must live as long as the test.
fn provider() -> (RemoteProvider, ListeningRuntime) {
    let binary = find_binary(None).unwrap_or_else(|error| {
        panic!("{error}\n(build the runtime first: cargo build -p code-mode-bin)")
    });
    let pki = Pki::default();
    let runtime = ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki));
    let [ca, cert, key] = pki.client_pems("conformance host");
    let tls = ClientTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes())
        .expect("client TLS settings");
    let provider = RemoteProvider::new(RemoteConfig::new(vec![runtime.endpoint()], tls))
        .expect("a remote provider");
    (provider, runtime)
}

code_mode_conformance::conformance_suite!(keeping provider());

/// Two listening runtimes in one pool: the one under a session is killed or drained, and
/// the session goes on on the other (contract §7).
struct RemoteFaults {
    provider: RemoteProvider,
    runtimes: Mutex<Vec<ListeningRuntime>>,
}

fn faults() -> RemoteFaults {
    let binary = find_binary(None).expect("the runtime binary");
    let pki = Pki::default();
    let runtimes: Vec<ListeningRuntime> = (0..2)
        .map(|_| ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki)))
        .collect();
    let [ca, cert, key] = pki.client_pems("conformance host");
    let tls = ClientTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes())
        .expect("client TLS settings");
    let endpoints = runtimes.iter().map(ListeningRuntime::endpoint).collect();
    let provider =
        RemoteProvider::new(RemoteConfig::new(endpoints, tls)).expect("a remote provider");
    RemoteFaults {
        provider,
        runtimes: Mutex::new(runtimes),
    }
}

impl RemoteFaults {
    /// The index of the runtime under `session`, and its address.
    fn runtime_under(&self, session: &RemoteSession) -> (usize, String) {
        let described = self.runtime_of(session);
        let runtimes = self.runtimes.lock().unwrap();
        let index = runtimes
            .iter()
            .position(|runtime| described.ends_with(&runtime.endpoint()))
            .unwrap_or_else(|| panic!("{described} is none of the test's runtimes"));
        (index, runtimes[index].endpoint())
    }

    /// Waits until the provider sees the runtime at `endpoint` as `state` says.
    async fn until(&self, endpoint: &str, state: impl Fn(&RuntimeStatus) -> bool) {
        for _ in 0..500 {
            let status = self.provider.runtimes();
            if status
                .iter()
                .any(|runtime| runtime.address.to_string() == endpoint && state(runtime))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the provider never saw the change of {endpoint}");
    }
}

impl RuntimeFaults for RemoteFaults {
    type Provider = RemoteProvider;

    fn provider(&self) -> &RemoteProvider {
        &self.provider
    }

    fn runtime_of(&self, session: &RemoteSession) -> String {
        session.runtime().expect("the session has run a cell")
    }

    fn kill<'a>(&'a self, session: &'a RemoteSession) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (index, endpoint) = self.runtime_under(session);
            self.runtimes.lock().unwrap()[index].kill();
            self.until(&endpoint, |runtime| !runtime.connected).await;
        })
    }

    fn drain<'a>(&'a self, session: &'a RemoteSession) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (index, endpoint) = self.runtime_under(session);
            self.runtimes.lock().unwrap()[index].terminate();
            // Draining, or already left: with another runtime up, the host moves the
            // running cells off a draining runtime and disconnects at once.
            self.until(&endpoint, |runtime| runtime.draining || !runtime.connected)
                .await;
        })
    }

    fn stop(&self, session: &RemoteSession) {
        let (index, _) = self.runtime_under(session);
        let pid = self.runtimes.lock().unwrap()[index].pid();
        code_mode_conformance::loss::signal(pid, "STOP");
    }

    fn reruns_unadmitted(&self) -> bool {
        false
    }

    fn kills_to_spare(&self) -> usize {
        self.runtimes.lock().unwrap().len() - 1
    }
}

mod loss {
    code_mode_conformance::runtime_loss_suite!(super::faults());
}

/// The drain timeout (contract §7): a runtime told to drain lets its running cell go on
/// until the timeout, then stops it and exits; the cell's caller gets the runtime-lost
/// error and its tool call is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_cuts_a_running_cell_off() {
    use code_mode_conformance::remote::ListeningRuntime;
    use code_mode_conformance::{Record, TestDelegate};
    use code_mode_protocol::{
        CodeModeProvider, CodeModeSession, SessionError, SessionOptions, WaitRequest,
    };

    let binary = find_binary(None).expect("the runtime binary");
    let mut runtime = ListeningRuntime::start(
        &binary,
        &RuntimeOptions {
            drain_timeout_secs: 1,
            ..RuntimeOptions::insecure()
        },
    );
    let provider = RemoteProvider::new(RemoteConfig::insecure_loopback(vec![runtime.endpoint()]))
        .expect("a remote provider");
    let delegate = TestDelegate::new();
    let session = provider.open_session(delegate.clone(), SessionOptions::default());
    code_mode_conformance::loss::start_blocked(
        &session,
        &delegate,
        r#"store("k", 1); text(await tools.block());"#,
    )
    .await;
    let drained_at = std::time::Instant::now();
    runtime.terminate();
    let error = session
        .wait(WaitRequest::new("1").with_yield_time_ms(30_000))
        .await
        .expect_err("the cell is cut off with its runtime");
    assert!(
        matches!(error, SessionError::RuntimeLost(_)),
        "not the runtime-lost error: {error}"
    );
    // It ran until the drain timeout, not less.
    assert!(
        drained_at.elapsed() >= Duration::from_millis(900),
        "cut off after {:?}",
        drained_at.elapsed()
    );
    let status = tokio::task::spawn_blocking(move || runtime.wait_exit(Duration::from_secs(10)))
        .await
        .expect("wait for the exit");
    assert!(status.is_some(), "the runtime did not exit after its drain");
    delegate.wait_closed("1").await;
    assert!(
        delegate
            .records()
            .iter()
            .any(|record| matches!(record, Record::ToolCancelled { .. })),
        "the cut-off cell's tool call was not cancelled"
    );
}
