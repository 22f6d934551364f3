//! Command tools: running the program with the JSON input on stdin under its timeout and
//! the call's cancellation, in the environment the tools file gives it (`environment`),
//! and the result (stdout as JSON or text; a non-zero exit rejects with the end of stderr).

use crate::environment::ToolEnv;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// How much of a failed command's stderr is quoted in the rejection, in bytes.
const STDERR_TAIL_BYTES: usize = 2_000;

/// The last `STDERR_TAIL_BYTES` of a command's stderr, trimmed.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let mut start = text.len().saturating_sub(STDERR_TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// A `[[tool]]` of the tools file, checked: what runs when it is called.
#[derive(Debug, Clone)]
pub(super) struct CommandTool {
    /// Found when the file was read (`program::resolve_program`).
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) cwd: PathBuf,
    pub(super) timeout: Duration,
    /// Its environment beyond the inherited few.
    pub(super) env: ToolEnv,
}

pub(super) async fn run_command(
    name: &str,
    tool: &CommandTool,
    input: Option<Value>,
    cancel: &CancellationToken,
) -> Result<Value, String> {
    let CommandTool {
        program,
        args,
        cwd,
        timeout,
        env,
    } = tool;
    let timeout = *timeout;
    let mut command = tokio::process::Command::new(program);
    env.apply(&mut command);
    let mut child = command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            format!(
                "tool `{name}` could not start {}: {error}",
                program.display()
            )
        })?;
    // The input is written while the output is read, under the same timeout: a command
    // that answers as it reads (`cat`) fills its stdout pipe long before a large input is
    // written, and writing first would wait for it forever.
    let stdin = child.stdin.take();
    let input = input.map(|value| value.to_string()).unwrap_or_default();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input is fine.
            let _ = stdin.write_all(input.as_bytes()).await;
        } // Dropped here: the command sees the end of its input.
    };
    let run = async move { tokio::join!(feed, child.wait_with_output()).1 };
    let output = tokio::select! {
        output = tokio::time::timeout(timeout, run) => output,
        () = cancel.cancelled() => return Err(format!("tool `{name}` was cancelled")),
    };
    let output = match output {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("tool `{name}` failed: {error}")),
        Err(_) => {
            return Err(format!(
                "tool `{name}` timed out after {} ms",
                timeout.as_millis()
            ));
        }
    };
    if !output.status.success() {
        let tail = stderr_tail(&output.stderr);
        let status = output.status.code().map_or_else(
            || "was killed".to_owned(),
            |code| format!("exited with status {code}"),
        );
        return Err(if tail.is_empty() {
            format!("tool `{name}` {status}")
        } else {
            format!("tool `{name}` {status}: {tail}")
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    // JSON output (escaped lone surrogate halves become U+FFFD, as everywhere), else the
    // text itself.
    Ok(code_mode_protocol::model::parse_json(stdout.trim())
        .unwrap_or_else(|_| Value::String(stdout.trim_end_matches(['\n', '\r']).to_owned())))
}
