//! The Codex front's tests: conformance of the gRPC front, the differential corpus against
//! codex's own `codex-code-mode-host`, and the real codex CLI end to end.
//!
//! Codex 0.169.0 comes from npm (`scripts/test-deps.sh` installs it from the committed lock
//! file under `tests/codex-npm`, and 0.171.0's host under `tests/codex-npm-0171`); the tests
//! that need it fail with that instruction when it is missing.

mod admission;
mod cli;
mod conformance;
mod differential;
mod doors;
mod hostile;
mod install;
mod json;
mod remote;
mod restart;
mod stdio;
mod tcp;
mod traces;

use codex_code_mode_host::client::{Driver, Responder, StdioHost};
use codex_code_mode_host::proto;
use std::path::PathBuf;
use std::sync::Arc;

/// Our host binary, as cargo built it.
pub fn our_host() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_codex-code-mode-host"))
}

/// Starts `binary` with `args` and the given standard streams, killed when dropped.
pub fn spawn_child(
    binary: &std::path::Path,
    args: &[&str],
    [stdin, stdout, stderr]: [std::process::Stdio; 3],
) -> tokio::process::Child {
    tokio::process::Command::new(binary)
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("spawning {}: {error}", binary.display()))
}

/// The npm package directory of codex's Linux binaries: 0.169.0's, or the one
/// `CODE_MODE_CODEX_PACKAGE` names (`scripts/codex-latest.sh`: npm's newest).
pub fn codex_package() -> PathBuf {
    let package = std::env::var_os("CODE_MODE_CODEX_PACKAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
                "tests/codex-npm/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl",
            )
        });
    assert!(
        package.join("bin/codex").is_file(),
        "codex (0.169.0, or CODE_MODE_CODEX_PACKAGE's) is not installed at {}: run scripts/test-deps.sh",
        package.display()
    );
    package
}

/// Codex's own host binary.
pub fn codex_host() -> PathBuf {
    codex_package().join("bin/codex-code-mode-host")
}

/// Both of Codex's own hosts the differential runs against: 0.169.0's and 0.171.0's.
pub fn codex_hosts() -> [PathBuf; 2] {
    [codex_host(), codex_host_0171()]
}

/// Codex 0.171.0's own host binary: the oracle of what 0.171 added (or the host of the
/// package `CODE_MODE_CODEX_LATEST_PACKAGE` names: `scripts/codex-latest.sh`).
pub fn codex_host_0171() -> PathBuf {
    let host = std::env::var_os("CODE_MODE_CODEX_LATEST_PACKAGE")
        .map(|package| PathBuf::from(package).join("bin/codex-code-mode-host"))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
                "tests/codex-npm-0171/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex-code-mode-host",
            )
        });
    assert!(
        host.is_file(),
        "codex 0.171.0's host is not installed at {}: run scripts/test-deps.sh",
        host.display()
    );
    host
}

/// Spawns a host binary over gRPC on stdio, its stderr discarded unless asked for.
pub async fn spawn(binary: &std::path::Path, extra_args: &[&str]) -> StdioHost {
    let mut command = tokio::process::Command::new(binary);
    command.args(["--listen", "grpc+stdio://"]).args(extra_args);
    if std::env::var_os("CODEX_FRONT_TEST_STDERR").is_none() {
        command.stderr(std::process::Stdio::null());
    }
    StdioHost::spawn(command)
        .await
        .unwrap_or_else(|error| panic!("spawn {}: {error}", binary.display()))
}

/// Our host with a client that pings every `interval` and gives up on a PING that is not
/// answered within `timeout`.
pub async fn spawn_with_keepalive(
    interval: std::time::Duration,
    timeout: std::time::Duration,
) -> StdioHost {
    let mut command = tokio::process::Command::new(our_host());
    command
        .args(["--listen", "grpc+stdio://"])
        .stderr(std::process::Stdio::null());
    StdioHost::spawn_with(command, |endpoint| {
        endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true)
    })
    .await
    .expect("spawn")
}

/// The tools of the corpus: `echo` answers its input, `ns__search` (tool `search` in
/// namespace `ns`) too; an input holding `fail` fails with `tool failed: boom`.
pub fn responder() -> Responder {
    Arc::new(|call: &proto::ToolInvocation| {
        if call.input_json.contains("fail") {
            Err("tool failed: boom".to_owned())
        } else if call.input_json.is_empty() {
            Ok("\"no input\"".to_owned())
        } else {
            Ok(format!("{{\"echo\":{}}}", call.input_json))
        }
    })
}

/// The corpus's enabled tools.
pub fn corpus_tools() -> Vec<proto::ToolDefinition> {
    use codex_code_mode_host::client::tool;
    vec![
        tool("echo", "echo", None),
        tool("ns__search", "search", Some("ns")),
    ]
}

/// Opens a session with codex's usual request and the given truncation mode.
pub async fn open(host: &StdioHost, truncation: i32) -> Driver {
    Driver::open(
        host.client.clone(),
        proto::OpenSessionRequest {
            output_truncation: truncation,
            max_pending_delegate_calls: 4096,
            ..Default::default()
        },
        responder(),
    )
    .await
    .expect("open a session")
}

/// Waits until `condition` holds, polling, for at most `seconds`.
pub async fn eventually(seconds: u64, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    condition()
}

/// The host's `GetProcessMetrics` answer.
pub async fn process_metrics(host: &StdioHost) -> proto::GetProcessMetricsResponse {
    host.client
        .clone()
        .get_process_metrics(proto::GetProcessMetricsRequest {})
        .await
        .expect("process metrics")
        .into_inner()
}

/// Runs `source` in `driver`'s session and renders the outcome.
pub async fn rendered(driver: &mut Driver, source: &str) -> String {
    let outcome = driver
        .run(codex_code_mode_host::client::exec_request(source))
        .await
        .expect("execute");
    codex_code_mode_host::client::render_outcome(&outcome)
}

/// A call the host refuses: it fails with exactly this code and text.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    message: &str,
) {
    let status = result.expect_err(message);
    assert_eq!((status.code(), status.message()), (code, message));
}
