//! `--listen grpc://IP:PORT`, the form `codex app-server --code-mode-host` connects to:
//! plaintext serves on loopback, and is refused anywhere else without TLS.

use codex_code_mode_host::client::{Driver, exec_request, render_outcome};
use codex_code_mode_host::proto;
use tokio::io::AsyncBufReadExt;

#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_tcp_serves_sessions_on_loopback() {
    use std::process::Stdio;
    let mut child = crate::spawn_child(
        &crate::our_host(),
        &["--listen", "grpc://127.0.0.1:0"],
        [Stdio::null(), Stdio::null(), Stdio::piped()],
    );
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let address = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = line.split("listening on grpc://").nth(1) {
                return address.trim().to_owned();
            }
        }
        panic!("the host never said where it listens");
    })
    .await
    .expect("the host listens");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("connect over TCP");
    let client = proto::code_mode_host_client::CodeModeHostClient::new(channel);
    let request = proto::OpenSessionRequest {
        output_truncation: 2,
        ..Default::default()
    };
    let mut driver = Driver::open(client, request, crate::responder())
        .await
        .expect("open");
    let outcome = driver
        .run(exec_request(r#"store("k", 1); text("over tcp")"#))
        .await
        .expect("execute");
    assert_eq!(
        render_outcome(&outcome),
        r#"cell 1 completed{error_text: ""} [text "over tcp"]"#
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_is_refused_off_loopback() {
    let output = tokio::process::Command::new(crate::our_host())
        .args(["--listen", "grpc://0.0.0.0:0"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("serves plaintext only on a loopback address"),
        "{stderr}"
    );
    let output = tokio::process::Command::new(crate::our_host())
        .args(["--listen", "carrier-pigeon://nowhere"])
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unsupported --listen"));
}
