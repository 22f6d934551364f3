//! The front on a pool of remote runtimes (`--runtimes`), with mutual TLS: sessions spread
//! over the runtimes, a runtime killed or drained takes no session's stored values with
//! it, and its sessions go on elsewhere.

use code_mode_conformance::Scratch;
use code_mode_conformance::remote::{ListeningRuntime, Pki, RuntimeOptions};
use codex_code_mode_host::client::{Driver, exec_request, render_outcome};
use codex_code_mode_host::proto;
use std::time::Duration;

/// Runs `source` and renders its outcome: no loss is tolerated (a loss the host has seen
/// is rebuilt or moved before the next call, and a drain moves idle sessions at their next
/// exec without an error).
async fn run(driver: &mut Driver, source: &str) -> String {
    render_outcome(&driver.run(exec_request(source)).await.expect("execute"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_front_runs_on_remote_runtimes_and_a_killed_or_drained_one_keeps_every_value() {
    let pki = Pki::new("codex front runtimes CA");
    let binary = code_mode_host::find_binary(None).expect("the runtime cargo built");
    let mut runtimes: Vec<ListeningRuntime> = (0..3)
        .map(|_| ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki)))
        .collect();
    let scratch = Scratch::new();
    let [ca, cert, key] = pki.client_pems("codex front");
    let (ca, cert, key) = (
        scratch.write("ca.pem", &ca),
        scratch.write("cert.pem", &cert),
        scratch.write("key.pem", &key),
    );
    let endpoints = runtimes
        .iter()
        .map(ListeningRuntime::endpoint)
        .collect::<Vec<_>>()
        .join(",");
    let host = crate::spawn(
        &crate::our_host(),
        &[
            "--runtimes",
            &endpoints,
            "--runtimes-ca",
            ca.to_str().unwrap(),
            "--runtimes-cert",
            cert.to_str().unwrap(),
            "--runtimes-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let mut sessions = Vec::new();
    for index in 0..3 {
        let mut driver = crate::open(&host, 2).await;
        let outcome = driver
            .run(exec_request(&format!(
                "store('k', 'v{index}'); text('stored')"
            )))
            .await
            .expect("execute");
        assert_eq!(
            render_outcome(&outcome),
            r#"cell 1 completed{error_text: ""} [text "stored"]"#
        );
        sessions.push(driver);
    }
    // A cell parked in each session, on whichever runtime its session is on.
    for driver in &mut sessions {
        let mut parked =
            exec_request("text('parked'); await new Promise((r) => setTimeout(r, 60000));");
        parked.yield_time_ms = 100;
        let outcome = driver.run(parked).await.expect("a parked cell");
        assert_eq!(
            render_outcome(&outcome),
            r#"cell 2 yielded [text "parked"]"#
        );
    }
    runtimes[0].kill();
    assert!(runtimes[0].wait_exit(Duration::from_secs(10)).is_some());
    // The cells of the killed runtime are rebuilt from their journals on the others
    // (contract §7, durable cells): every session's parked cell goes on, none is lost, and
    // none gives its output again.
    for driver in &mut sessions {
        let response = driver
            .wait("2", 300, None)
            .await
            .expect("wait")
            .into_inner();
        let Some(proto::wait_response::Cell::LiveCell(outcome)) = response.cell else {
            panic!("cell 2 is known: {response:?}");
        };
        let seen = render_outcome(&outcome);
        assert_eq!(seen, "cell 2 yielded []", "{seen}");
        driver
            .terminate("2")
            .await
            .expect("terminate the parked cell");
    }
    for (index, driver) in sessions.iter_mut().enumerate() {
        assert_eq!(
            run(driver, "text(load('k'))").await,
            format!(r#"cell 3 completed{{error_text: ""}} [text "v{index}"]"#),
            "session {index}"
        );
    }
    // A drained runtime's idle sessions move at their next exec, values and all, and the
    // runtime, left with nothing, stops.
    runtimes[1].terminate();
    for (index, driver) in sessions.iter_mut().enumerate() {
        assert_eq!(
            run(driver, "text(load('k'))").await,
            format!(r#"cell 4 completed{{error_text: ""}} [text "v{index}"]"#),
            "session {index} after the drain"
        );
    }
    assert!(
        runtimes[1].wait_exit(Duration::from_secs(20)).is_some(),
        "the drained runtime kept a session"
    );
    assert!(runtimes[2].is_running());
    let metrics = crate::process_metrics(&host).await;
    assert_eq!(
        metrics.runtime_resident_memory_bytes, 0,
        "no local runtime: {metrics:?}"
    );
}
