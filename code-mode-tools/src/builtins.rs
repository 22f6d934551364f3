//! The opt-in built-in tools: `fs` (`read_file`, `list_dir`, `write_file`) and `shell`
//! (`exec_command`, whose commands get the inherited few variables and what the tools
//! file's `[builtin.shell]` names: `environment`).

use crate::DEFAULT_TOOL_TIMEOUT_MS;
use crate::environment::ToolEnv;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Largest file `read_file` returns whole, in bytes; longer files need `offset`/`limit`.
const READ_FILE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Why the tools could not be set up. Each message is one line a person can act on.
fn string_field<'v>(input: &'v Value, field: &str) -> Result<&'v str, String> {
    input
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{field}` (a string) is required"))
}

pub(super) async fn read_file(input: &Value) -> Result<Value, String> {
    let path = string_field(input, "path")?;
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|error| format!("cannot read {path}: {error}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let offset = input.get("offset").and_then(Value::as_u64);
    let limit = input.get("limit").and_then(Value::as_u64);
    if offset.is_none() && limit.is_none() {
        if text.len() > READ_FILE_MAX_BYTES {
            return Err(format!(
                "{path} has {} bytes, more than {READ_FILE_MAX_BYTES}; read it in parts with `offset` and `limit` (lines)",
                text.len()
            ));
        }
        return Ok(Value::String(text.into_owned()));
    }
    let lines = text
        .lines()
        .skip(usize::try_from(offset.unwrap_or(0)).unwrap_or(usize::MAX))
        .take(usize::try_from(limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX));
    Ok(Value::String(lines.collect::<Vec<_>>().join("\n")))
}

pub(super) async fn list_dir(input: &Value) -> Result<Value, String> {
    let path = string_field(input, "path")?;
    let mut entries = tokio::fs::read_dir(path)
        .await
        .map_err(|error| format!("cannot list {path}: {error}"))?;
    let mut listed = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|error| format!("cannot list {path}: {error}"))?
    {
        let kind = match entry.file_type().await {
            Ok(kind) if kind.is_symlink() => "symlink",
            Ok(kind) if kind.is_dir() => "dir",
            Ok(kind) if kind.is_file() => "file",
            _ => "other",
        };
        let size = entry.metadata().await.map(|meta| meta.len()).unwrap_or(0);
        listed.push(json!({
            "name": entry.file_name().to_string_lossy(),
            "type": kind,
            "size": size,
        }));
    }
    listed.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Value::Array(listed))
}

pub(super) async fn write_file(input: &Value) -> Result<Value, String> {
    let path = string_field(input, "path")?;
    let content = string_field(input, "content")?;
    tokio::fs::write(path, content)
        .await
        .map_err(|error| format!("cannot write {path}: {error}"))?;
    Ok(json!({ "bytes_written": content.len() }))
}

pub(super) async fn exec_command(
    input: &Value,
    env: &ToolEnv,
    cancel: &CancellationToken,
) -> Result<Value, String> {
    let command = string_field(input, "command")?;
    let cwd = input.get("cwd").and_then(Value::as_str).unwrap_or(".");
    let timeout = Duration::from_millis(
        input
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_TOOL_TIMEOUT_MS),
    );
    let mut shell = tokio::process::Command::new("sh");
    env.apply(&mut shell);
    let child = shell
        .args(["-c", command])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot run the command in {cwd}: {error}"))?;
    let output = tokio::select! {
        output = tokio::time::timeout(timeout, child.wait_with_output()) => output,
        () = cancel.cancelled() => return Err("exec_command was cancelled".to_owned()),
    };
    match output {
        Ok(Ok(output)) => Ok(json!({
            "exit_code": output.status.code(),
            "stdout": String::from_utf8_lossy(&output.stdout),
            "stderr": String::from_utf8_lossy(&output.stderr),
        })),
        Ok(Err(error)) => Err(format!("the command failed: {error}")),
        Err(_) => Err(format!(
            "the command timed out after {} ms",
            timeout.as_millis()
        )),
    }
}
