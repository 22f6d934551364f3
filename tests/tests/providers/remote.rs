//! The conformance suite against a runtime on TCP with mutual TLS (`code-mode-bin
//! --listen`), reached through [`RemoteProvider`]: certificates made for each test, one
//! listening runtime per test, every session of the test placed on it.

use code_mode_conformance::remote::{ListeningRuntime, Pki, RuntimeOptions};
use code_mode_host::{ClientTls, RemoteConfig, RemoteProvider, RemoteSession, find_binary};
use code_mode_protocol::{CodeModeProvider, CodeModeSessionDelegate, SessionOptions};
use std::sync::Arc;

/// The provider with the runtime it reaches, which lives as long as the test.
struct Remote {
    provider: RemoteProvider,
    _runtime: ListeningRuntime,
}

impl Remote {
    fn new() -> Self {
        let binary = find_binary(None).unwrap_or_else(|error| {
            panic!("{error}\n(build the runtime first: cargo build -p code-mode-bin)")
        });
        let pki = Pki::default();
        let runtime = ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki));
        let client = pki.client("conformance host");
        let tls = ClientTls::from_pem(
            pki.ca_pem().as_bytes(),
            client.cert_pem.as_bytes(),
            client.key_pem.as_bytes(),
        )
        .expect("client TLS settings");
        let provider = RemoteProvider::new(RemoteConfig::new(vec![runtime.endpoint()], tls))
            .expect("a remote provider");
        Self {
            provider,
            _runtime: runtime,
        }
    }
}

impl CodeModeProvider for Remote {
    type Session = RemoteSession;

    fn open_session(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> RemoteSession {
        self.provider.open_session(delegate, options)
    }
}

code_mode_conformance::conformance_suite!(Remote::new());
