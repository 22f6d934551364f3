//! The opt-in built-in tools: `fs` (`read_file`, `list_dir`, `write_file`) and `shell`
//! (`exec_command`, whose commands get the inherited few variables and what the tools
//! file's `[builtin.shell]` names: `environment`).

use crate::DEFAULT_TOOL_TIMEOUT_MS;
use crate::environment::ToolEnv;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Largest file `read_file` returns whole, in bytes; longer files need `offset`/`limit`,
/// and the lines they select may come to no more.
const READ_FILE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The most of a file `read_file` reads looking for the lines asked for: past it (a huge
/// file, or an endless one such as `/dev/zero`) the call fails rather than the process
/// reading for ever or filling its memory.
const READ_FILE_SCAN_BYTES: u64 = 256 * 1024 * 1024;

/// Why the tools could not be set up. Each message is one line a person can act on.
fn string_field<'v>(input: &'v Value, field: &str) -> Result<&'v str, String> {
    input
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{field}` (a string) is required"))
}

pub(super) async fn read_file(input: &Value) -> Result<Value, String> {
    use tokio::io::AsyncReadExt as _;
    let path = string_field(input, "path")?;
    let cannot = |error: std::io::Error| format!("cannot read {path}: {error}");
    let file = tokio::fs::File::open(path).await.map_err(cannot)?;
    let offset = input.get("offset").and_then(Value::as_u64);
    let limit = input.get("limit").and_then(Value::as_u64);
    if offset.is_none() && limit.is_none() {
        // No more than one byte past the bound is read, whatever the file.
        let mut bytes = Vec::new();
        file.take(READ_FILE_MAX_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(cannot)?;
        if bytes.len() > READ_FILE_MAX_BYTES {
            return Err(format!(
                "{path} has more than {READ_FILE_MAX_BYTES} bytes; read it in parts with `offset` and `limit` (lines)"
            ));
        }
        return Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    }
    let first = offset.unwrap_or(0);
    let end = first.saturating_add(limit.unwrap_or(u64::MAX));
    let selected = selected_lines(file, path, first, end).await?;
    let text = String::from_utf8_lossy(&selected);
    Ok(Value::String(text.lines().collect::<Vec<_>>().join("\n")))
}

/// The bytes of lines `first..end` (0-based) of `file`, each with its line end, read in
/// chunks: a line before them is skipped without being kept, and the reading stops at
/// [`READ_FILE_SCAN_BYTES`], or once what they come to passes [`READ_FILE_MAX_BYTES`].
async fn selected_lines(
    file: tokio::fs::File,
    path: &str,
    first: u64,
    end: u64,
) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt as _;
    let mut reader = file.take(READ_FILE_SCAN_BYTES + 1);
    let mut chunk = vec![0_u8; 64 * 1024];
    let (mut line, mut scanned, mut selected) = (0_u64, 0_u64, Vec::new());
    while line < end {
        let read = reader
            .read(&mut chunk)
            .await
            .map_err(|error| format!("cannot read {path}: {error}"))?;
        if read == 0 {
            return Ok(selected);
        }
        scanned += read as u64;
        if scanned > READ_FILE_SCAN_BYTES {
            return Err(format!(
                "{path}: the lines asked for are not within its first {READ_FILE_SCAN_BYTES} bytes"
            ));
        }
        for &byte in &chunk[..read] {
            if line >= end {
                break;
            }
            if line >= first {
                selected.push(byte);
            }
            if byte == b'\n' {
                line += 1;
            }
        }
        if selected.len() > READ_FILE_MAX_BYTES {
            return Err(format!(
                "{path}: the lines asked for come to more than {READ_FILE_MAX_BYTES} bytes; ask for fewer with `limit`"
            ));
        }
    }
    Ok(selected)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("code-mode-builtins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("written");
        path
    }

    async fn read(path: &std::path::Path, extra: Value) -> Result<Value, String> {
        let mut input = json!({"path": path.to_str().expect("a UTF-8 path")});
        if let (Some(input), Some(extra)) = (input.as_object_mut(), extra.as_object()) {
            input.extend(extra.clone());
        }
        tokio::time::timeout(Duration::from_secs(20), read_file(&input))
            .await
            .expect("read_file ends")
    }

    #[tokio::test]
    async fn read_file_gives_a_file_whole_or_the_lines_asked_for() {
        let path = scratch_file("lines.txt", b"a\r\nb\nc");
        assert_eq!(read(&path, json!({})).await, Ok(json!("a\r\nb\nc")));
        let middle = json!({"offset": 1, "limit": 1});
        assert_eq!(read(&path, middle).await, Ok(json!("b")));
        assert_eq!(read(&path, json!({"offset": 1})).await, Ok(json!("b\nc")));
        assert_eq!(read(&path, json!({"limit": 1})).await, Ok(json!("a")));
        assert_eq!(read(&path, json!({"offset": 9})).await, Ok(json!("")));
    }

    /// The error of a read that must be refused (a text read instead is shown by size).
    fn refused(result: Result<Value, String>) -> String {
        match result {
            Err(error) => error,
            Ok(text) => panic!(
                "not refused: {} bytes read",
                text.as_str().map_or(0, str::len)
            ),
        }
    }

    #[tokio::test]
    async fn read_file_reads_no_more_than_its_bounds_even_of_an_endless_file() {
        // An endless file: refused once past the bound, not read until memory runs out.
        let endless = std::path::Path::new("/dev/zero");
        let error = refused(read(endless, json!({})).await);
        assert!(error.contains("more than 4194304 bytes"), "{error}");
        let long_line = scratch_file("long.txt", &vec![b'x'; READ_FILE_MAX_BYTES + 10]);
        let error = refused(read(&long_line, json!({"limit": 1})).await);
        assert!(error.contains("come to more than"), "{error}");
        let error = refused(read(&long_line, json!({})).await);
        assert!(error.contains("read it in parts"), "{error}");
    }
}
