//! The conformance suite against a runtime on TCP with mutual TLS (`code-mode-bin
//! --listen`), reached through [`RemoteProvider`]: certificates made for each test, one
//! listening runtime per test, every session of the test placed on it.

use code_mode_conformance::remote::{ListeningRuntime, Pki, RuntimeOptions};
use code_mode_host::{ClientTls, RemoteConfig, RemoteProvider, find_binary};

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
