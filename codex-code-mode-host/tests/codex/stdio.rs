//! Stdout is the protocol's alone: after the host takes its stdio, a `println!`, a child
//! that inherits descriptor 1, and a panic all land on stderr. And the host answers the
//! HTTP/2 PINGs codex sends every 30 s.

use std::path::PathBuf;
use std::time::Duration;

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    profile.join("examples").join(name)
}

#[test]
fn prints_children_and_panics_never_reach_the_protocol_stream() {
    let output = std::process::Command::new(example("stdout_guard"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the stdout_guard example (`cargo test -p codex-code-mode-host` or `--examples` builds it)");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "PROTOCOL");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "a stray println",
        "a child writes to its stdout",
        "a panic in a worker",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} went to stderr: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_answers_http2_pings() {
    // A client that pings every 100 ms and drops the connection when a PING is not
    // answered within 500 ms; after 2 s of silence the session still answers.
    let host =
        crate::spawn_with_keepalive(Duration::from_millis(100), Duration::from_millis(500)).await;
    let mut driver = crate::open(&host, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = driver
        .run(codex_code_mode_host::client::exec_request(
            r#"text("alive")"#,
        ))
        .await
        .expect("the connection lived");
    assert!(codex_code_mode_host::client::render_outcome(&outcome).ends_with(r#"[text "alive"]"#));
}
