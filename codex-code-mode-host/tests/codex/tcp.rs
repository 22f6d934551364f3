//! `--listen grpc://IP:PORT`, the form `codex app-server --code-mode-host` connects to and
//! launchers start: the bound URL is the one line on stdout, `GET /healthz` answers on the
//! same port as Codex's host answers it, plaintext serves on loopback only, and a front
//! whose runtime is missing or broken comes up all the same and says why.

use code_mode_conformance::Scratch;
use codex_code_mode_host::client::Driver;
use codex_code_mode_host::proto;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// A host listening on `grpc://127.0.0.1:0`, and the address its stdout line named.
pub struct Listening {
    child: tokio::process::Child,
    address: String,
    stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl Listening {
    /// Starts `binary --listen grpc://127.0.0.1:0` with `env` added; reads the URL line.
    async fn start(binary: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        Self::start_with(binary, &[], env).await
    }

    /// [`Self::start`] with more arguments.
    pub async fn start_with(
        binary: &Path,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        use std::process::Stdio;
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["--listen", "grpc://127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("spawning {}: {error}", binary.display()));
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
            .await
            .expect("the URL line within 10 s")
            .expect("read stdout");
        let address = line
            .strip_suffix('\n')
            .and_then(|line| line.strip_prefix("http://127.0.0.1:"))
            .filter(|port| port.parse::<u16>().is_ok_and(|port| port > 0))
            .unwrap_or_else(|| panic!("the stdout line is not http://127.0.0.1:PORT: {line:?}"));
        let address = format!("127.0.0.1:{address}");
        Self {
            child,
            address,
            stdout,
        }
    }

    /// One HTTP/1.1 request on a connection of its own: the status code, the headers
    /// (names lowercased) and the body.
    pub async fn http1(&self, method: &str, target: &str) -> (u16, Vec<(String, String)>, String) {
        let mut stream = tokio::net::TcpStream::connect(&self.address)
            .await
            .expect("connect");
        let request =
            format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
            .await
            .expect("an answer within 20 s")
            .expect("read");
        let response = String::from_utf8(response).expect("UTF-8");
        let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head}"));
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
            .collect();
        (status, headers, body.to_owned())
    }

    pub async fn client(
        &self,
    ) -> proto::code_mode_host_client::CodeModeHostClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))
            .expect("an endpoint")
            .connect()
            .await
            .expect("connect over TCP");
        proto::code_mode_host_client::CodeModeHostClient::new(channel)
    }

    /// Stops the host; what it wrote on stdout after the URL line (nothing, for a host
    /// that keeps stdout for that line).
    pub async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest).await;
        rest
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// What a launcher sees of a host started with `grpc://127.0.0.1:0`, for any host binary.
async fn launch_conventions(binary: &Path) -> Listening {
    let host = Listening::start(binary, &[]).await;
    for target in ["/healthz", "/healthz?probe=1"] {
        let (status, headers, body) = host.http1("GET", target).await;
        assert_eq!(status, 200, "GET {target}");
        assert_eq!(header(&headers, "content-length"), Some("0"));
        assert_eq!(body, "");
    }
    for (method, target) in [
        ("GET", "/"),
        ("GET", "/healthz/"),
        ("HEAD", "/healthz"),
        ("PUT", "/other"),
    ] {
        let (status, headers, _) = host.http1(method, target).await;
        assert_eq!(status, 505, "{method} {target}");
        assert_eq!(header(&headers, "allow"), None, "{method} {target}");
    }
    let (status, headers, _) = host.http1("POST", "/healthz").await;
    assert_eq!(status, 505, "POST /healthz");
    assert_eq!(header(&headers, "allow"), Some("GET,HEAD"));
    host
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_tcp_prints_its_url_answers_healthz_and_serves_sessions() {
    let host = launch_conventions(&crate::our_host()).await;
    let request = proto::OpenSessionRequest {
        output_truncation: 2,
        ..Default::default()
    };
    let mut driver = Driver::open(host.client().await, request, crate::responder())
        .await
        .expect("open");
    assert_eq!(
        crate::rendered(&mut driver, r#"store("k", 1); text("over tcp")"#).await,
        r#"cell 1 completed{error_text: ""} [text "over tcp"]"#
    );
    assert_eq!(host.stop().await, "", "nothing else on stdout");
}

/// The same launcher checks against Codex's own host: the conventions are its.
#[tokio::test(flavor = "multi_thread")]
async fn codexs_host_keeps_the_same_launch_conventions() {
    let host = launch_conventions(&crate::codex_host()).await;
    assert_eq!(host.stop().await, "", "nothing else on stdout");
}

/// A front whose runtime is missing comes up, answers `/healthz` with 503 and every
/// session with `FAILED_PRECONDITION`, each naming the cause and the fix; its process
/// metrics answer throughout; once the runtime is put where it was looked for, the next
/// session runs with no restart of the front.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_runtime_is_said_with_its_fix_and_found_once_installed() {
    let scratch = Scratch::new();
    let runtime = scratch.0.join("code-mode-bin");
    let host = Listening::start(
        &crate::our_host(),
        &[("CODE_MODE_BIN", runtime.as_os_str())],
    )
    .await;
    let (status, _, body) = host.http1("GET", "/healthz").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("code-mode runtime unavailable: the `code-mode-bin` named by --runtime or CODE_MODE_BIN was not found. Fix: "),
        "{body}"
    );
    assert!(
        body.contains(
            "Details: the code-mode runtime binary `code-mode-bin` was not found; searched: "
        ),
        "{body}"
    );
    assert!(body.contains(&runtime.display().to_string()), "{body}");
    assert!(body.contains("unset CODE_MODE_BIN"), "{body}");
    let mut client = host.client().await;
    let status = client
        .open_session(proto::OpenSessionRequest {
            output_truncation: 2,
            max_pending_delegate_calls: 4096,
            ..Default::default()
        })
        .await
        .expect_err("no runtime to open a session on");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .starts_with("code-mode runtime unavailable: "),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("the runtime it carries"),
        "{}",
        status.message()
    );
    let metrics = client
        .get_process_metrics(proto::GetProcessMetricsRequest {})
        .await
        .expect("process metrics answer without a runtime")
        .into_inner();
    assert!(metrics.resident_memory_bytes > 0, "{metrics:?}");

    // Installed now: the next session finds it.
    let built = code_mode_host::find_binary(None).expect("the runtime cargo built");
    std::os::unix::fs::symlink(&built, &runtime).expect("install the runtime");
    let (status, _, body) = host.http1("GET", "/healthz").await;
    assert_eq!((status, body.as_str()), (200, ""));
    let mut driver = Driver::open(
        client,
        proto::OpenSessionRequest {
            output_truncation: 2,
            ..Default::default()
        },
        crate::responder(),
    )
    .await
    .expect("open once the runtime is there");
    assert_eq!(
        crate::rendered(&mut driver, r#"text("found")"#).await,
        r#"cell 1 completed{error_text: ""} [text "found"]"#
    );
    host.stop().await;
}

/// A runtime that dies at every start: sessions are refused with the cause, and the
/// front backs off instead of spawning in a loop (it gives up on the runtime for a while
/// after a few failures).
#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_that_crashes_at_start_is_refused_without_a_hot_loop() {
    let scratch = Scratch::new();
    let starts = scratch.0.join("starts");
    let runtime = scratch.script(
        "code-mode-bin",
        &format!(
            "#!/bin/sh\necho started >> '{}'\nexit 3\n",
            starts.display()
        ),
    );
    let host = Listening::start(
        &crate::our_host(),
        &[("CODE_MODE_BIN", runtime.as_os_str())],
    )
    .await;
    let client = host.client().await;
    let mut refusals = Vec::new();
    for _ in 0..12 {
        // A session opened while the runtime was still being started is refused at its
        // first exec instead (the open does not wait for the start); either way with the
        // same status and text.
        let opened = Driver::open(
            client.clone(),
            proto::OpenSessionRequest {
                output_truncation: 2,
                ..Default::default()
            },
            crate::responder(),
        )
        .await;
        let status = match opened {
            Err(status) => status,
            Ok(mut driver) => driver
                .run(codex_code_mode_host::client::exec_request("text(1)"))
                .await
                .expect_err("the runtime never comes up"),
        };
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        refusals.push(status.message().to_owned());
    }
    assert!(
        refusals[0].starts_with("code-mode runtime unavailable: the runtime fails at start. Fix: ")
            && refusals[0].contains("exited"),
        "{}",
        refusals[0]
    );
    let last = refusals.last().expect("twelve refusals");
    assert!(
        last.contains("failed 5 times within 60s; not restarting it"),
        "{last}"
    );
    assert!(last.contains("tries again after a pause"), "{last}");
    let started = std::fs::read_to_string(&starts)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        (1..=code_mode_host::MAX_CRASHES).contains(&started),
        "{started} starts for 12 sessions and the prestart"
    );
    host.stop().await;
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
        stderr.contains("is off loopback: clients there must be authenticated"),
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

/// `stdio://` is the JSON protocol, as `stdio` is (Codex's host takes both).
#[tokio::test(flavor = "multi_thread")]
async fn stdio_with_a_scheme_is_the_json_protocol() {
    for listen in ["stdio", "stdio://"] {
        let mut child = crate::spawn_child(
            &crate::our_host(),
            &["--listen", listen],
            [
                std::process::Stdio::piped(),
                std::process::Stdio::piped(),
                std::process::Stdio::null(),
            ],
        );
        // A frame that is not a hello: the JSON protocol answers it with its rejection.
        let body = br#"{"type":"nonsense"}"#;
        let mut stdin = child.stdin.take().expect("stdin");
        let length = u32::try_from(body.len()).expect("short").to_le_bytes();
        stdin.write_all(&length).await.expect("write");
        stdin.write_all(body).await.expect("write");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut length = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), stdout.read_exact(&mut length))
            .await
            .expect("an answer")
            .expect("a length prefix");
        let mut answer = vec![0u8; u32::from_le_bytes(length) as usize];
        stdout.read_exact(&mut answer).await.expect("the frame");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains("connection/rejected"), "{listen}: {answer}");
    }
}

/// The health port (`--health-listen`) answers whoever reaches it, off the pod too: its
/// `503` says only that no runtime can start, never where the runtime was looked for or
/// how the front is set up (the gRPC port, which serves only trusted clients off
/// loopback, says the cause and its fix).
#[tokio::test(flavor = "multi_thread")]
async fn the_health_ports_503_says_no_more_than_a_prober_needs() {
    let scratch = Scratch::new();
    let runtime = scratch.0.join("code-mode-bin");
    let health = format!("127.0.0.1:{}", code_mode_conformance::remote::free_port());
    let host = Listening::start_with(
        &crate::our_host(),
        &["--health-listen", &health],
        &[("CODE_MODE_BIN", runtime.as_os_str())],
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(&health)
        .await
        .expect("connect to the health port");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("an answer within 20 s")
    .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(body, codex_code_mode_host::serve::NO_RUNTIME);
    let (status, _, detailed) = host.http1("GET", "/healthz").await;
    assert_eq!(status, 503);
    assert!(
        detailed.contains(&runtime.display().to_string()),
        "{detailed}"
    );
    host.stop().await;
}
