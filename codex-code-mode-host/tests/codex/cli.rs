//! The real codex CLI (0.169.0) runs whole turns on our host: `codex exec` against a
//! scripted Responses-API model server on 127.0.0.1, with our `codex-code-mode-host`
//! placed in a copy of codex's package layout. Each scenario asserts what the model
//! received in the model server's next request.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One model turn: what the scripted model answers to each request, in order. An action
/// may run before the answer (e.g. kill the runtime).
struct Step {
    item: Value,
    before: Option<Box<dyn Fn() + Send + Sync>>,
}

fn exec_call(call_id: &str, source: &str) -> Step {
    Step {
        item: json!({"type": "custom_tool_call", "id": format!("ctc_{call_id}"), "status": "completed", "call_id": call_id, "name": "exec", "input": source}),
        before: None,
    }
}

fn wait_call(call_id: &str, arguments: Value) -> Step {
    Step {
        item: json!({"type": "function_call", "id": format!("fc_{call_id}"), "status": "completed", "call_id": call_id, "name": "wait", "arguments": arguments.to_string()}),
        before: None,
    }
}

fn message(text: &str) -> Step {
    Step {
        item: json!({"type": "message", "role": "assistant", "id": "msg_final", "status": "completed", "content": [{"type": "output_text", "text": text, "annotations": []}]}),
        before: None,
    }
}

/// A scripted Responses-API server: answers each `POST /v1/responses` with the next step,
/// streamed as codex expects, and records every request body.
struct ModelServer {
    port: u16,
    requests: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn model_server(steps: Vec<Step>) -> ModelServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = requests.clone();
    let steps = Arc::new(Mutex::new(steps.into_iter()));
    let task = tokio::spawn(async move {
        let mut counter = 0u64;
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let Some(body) = read_request(&mut socket).await else {
                continue;
            };
            let Ok(request) = serde_json::from_slice::<Value>(&body) else {
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                continue;
            };
            recorded.lock().unwrap().push(request);
            let step = steps.lock().unwrap().next();
            let step = step.unwrap_or_else(|| message("(script ended)"));
            if let Some(before) = &step.before {
                before();
            }
            counter += 1;
            let response_id = format!("resp_{counter}");
            let mut stream = String::new();
            let mut event = |kind: &str, data: Value| {
                stream.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
            };
            event(
                "response.created",
                json!({"type": "response.created", "response": {"id": response_id, "object": "response", "status": "in_progress", "output": []}}),
            );
            event(
                "response.output_item.added",
                json!({"type": "response.output_item.added", "output_index": 0, "item": step.item}),
            );
            event(
                "response.output_item.done",
                json!({"type": "response.output_item.done", "output_index": 0, "item": step.item}),
            );
            event(
                "response.completed",
                json!({"type": "response.completed", "response": {"id": response_id, "object": "response", "status": "completed", "output": [step.item],
                "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}}}),
            );
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                stream.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(stream.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    ModelServer {
        port,
        requests,
        task,
    }
}

/// The body of one HTTP/1.1 request (Content-Length or chunked).
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 65536];
    let header_end = loop {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let mut body = buffer[header_end..].to_vec();
    loop {
        if let Some(length) = length
            && body.len() >= length
        {
            body.truncate(length);
            return Some(body);
        }
        if chunked && body.ends_with(b"0\r\n\r\n") {
            return Some(dechunk(&body));
        }
        if length.is_none() && !chunked {
            return Some(body);
        }
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..read]);
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|window| window == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// A copy of codex's package layout with our host (and its runtime) in `codex-resources`.
struct Layout {
    root: PathBuf,
}

impl Drop for Layout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .unwrap_or_else(|error| panic!("copy {} to {}: {error}", from.display(), to.display()));
    }
}

fn layout(name: &str) -> Layout {
    let package = crate::codex_package();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("codex-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["pkg/bin", "pkg/codex-resources", "home", "work"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    link_or_copy(&package.join("bin/codex"), &root.join("pkg/bin/codex"));
    link_or_copy(
        &package.join("codex-package.json"),
        &root.join("pkg/codex-package.json"),
    );
    // Our host goes in with its own `install`, as a user puts it in place.
    let installed = std::process::Command::new(crate::our_host())
        .args(["install", "--codex"])
        .arg(root.join("pkg/bin/codex"))
        .output()
        .expect("run install");
    assert!(
        installed.status.success(),
        "install: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    Layout { root }
}

/// Runs one `codex exec` turn against `steps` and returns every request the model got.
async fn run_turn(name: &str, steps: Vec<Step>) -> (Vec<Value>, String) {
    run_turn_in(&layout(name), steps).await
}

/// [`run_turn`] in a layout made (and perhaps changed) by the caller.
async fn run_turn_in(layout: &Layout, steps: Vec<Step>) -> (Vec<Value>, String) {
    let server = model_server(steps).await;
    let config = format!(
        r#"model = "fake-model"
model_provider = "fake"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[model_providers.fake]
name = "fake"
base_url = "http://127.0.0.1:{}/v1"
wire_api = "responses"
env_key = "FAKE_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[features]
code_mode = true

[analytics]
enabled = false
"#,
        server.port
    );
    std::fs::write(layout.root.join("home/config.toml"), config).unwrap();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(layout.root.join("pkg/bin/codex"))
            .args(["exec", "--json", "--skip-git-repo-check", "-C"])
            .arg(layout.root.join("work"))
            .arg("run the scenario")
            .env("CODEX_HOME", layout.root.join("home"))
            .env("FAKE_API_KEY", "test")
            .env_remove("OPENAI_API_KEY")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("codex exec finishes")
    .expect("codex exec runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let requests = server.requests.lock().unwrap().clone();
    (requests, stdout)
}

/// The output the model received for `call_id` in the request after it: the texts of its
/// items (or the plain string).
fn output_for(requests: &[Value], call_id: &str) -> Vec<String> {
    for request in requests {
        let Some(input) = request["input"].as_array() else {
            continue;
        };
        for item in input {
            let kind = item["type"].as_str().unwrap_or_default();
            if (kind == "custom_tool_call_output" || kind == "function_call_output")
                && item["call_id"] == call_id
            {
                return match &item["output"] {
                    Value::String(text) => vec![text.clone()],
                    Value::Array(items) => items
                        .iter()
                        .map(|part| match part["type"].as_str() {
                            Some("input_text") => {
                                part["text"].as_str().unwrap_or_default().to_owned()
                            }
                            Some("input_image") => format!(
                                "<image {}>",
                                part["image_url"].as_str().unwrap_or_default()
                            ),
                            other => format!("<{other:?}>"),
                        })
                        .collect(),
                    other => vec![other.to_string()],
                };
            }
        }
    }
    panic!("the model never received an output for {call_id}: {requests:#?}");
}

/// The first line of codex's header (`Script completed`, ...), wall time aside.
fn header(output: &[String]) -> String {
    output
        .first()
        .map(|text| text.lines().next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// Kills the runtime processes under `root` (our host's `code-mode-bin` link there).
fn kill_runtimes_under(root: &Path) -> usize {
    let target = root.join("pkg/codex-resources/code-mode-bin");
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if exe == target {
            // SAFETY: kill(2) on a runtime process this test's codex started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
    }
    killed
}

/// A valid 1×1 PNG (codex decodes images before the model sees them).
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

#[tokio::test(flavor = "multi_thread")]
async fn codex_runs_every_scenario_on_our_host() {
    let (requests, stdout) = run_turn(
        "scenarios",
        vec![
            exec_call("call_1", r#"const r = await tools.exec_command({cmd: "echo hi"}); text(JSON.parse(typeof r === "string" ? r : JSON.stringify(r)).output ?? r);"#),
            exec_call("call_2", r#"store("answer", {n: 41}); text("stored");"#),
            exec_call("call_3", r#"text(load("answer").n + 1);"#),
            exec_call("call_4", "// @exec: {\"yield_time_ms\": 300}\ntext(\"before sleep\"); await new Promise(r => setTimeout(r, 1500)); text(\"after sleep\");"),
            wait_call("call_5", json!({"cell_id": "4", "yield_time_ms": 10000})),
            exec_call("call_6", "// @exec: {\"yield_time_ms\": 300}\ntext(\"long\"); await new Promise(r => setTimeout(r, 60000));"),
            wait_call("call_7", json!({"cell_id": "5", "terminate": true})),
            exec_call("call_8", r#"notify("hello from notify"); text("notified");"#),
            exec_call("call_9", &format!(r#"image("data:image/png;base64,{PNG}");"#)),
            exec_call("call_10", "text(\"about to throw\");\nthrow new Error(\"boom\");"),
            exec_call("call_11", "// @exec: {\"max_output_tokens\": 10}\ntext(\"x\".repeat(100));"),
            message("done"),
        ],
    )
    .await;
    let out = |call: &str| output_for(&requests, call);
    let first = out("call_1");
    assert_eq!(header(&first), "Script completed", "{first:?}\n{stdout}");
    assert!(
        first.iter().skip(1).any(|text| text.contains("hi")),
        "{first:?}"
    );
    assert_eq!(out("call_2")[1..], ["stored"]);
    assert_eq!(out("call_3")[1..], ["42"], "stored values across two execs");
    let yielded = out("call_4");
    assert_eq!(header(&yielded), "Script running with cell ID 4");
    assert_eq!(yielded[1..], ["before sleep"]);
    let waited = out("call_5");
    assert_eq!(header(&waited), "Script completed");
    assert_eq!(waited[1..], ["after sleep"]);
    assert_eq!(header(&out("call_6")), "Script running with cell ID 5");
    assert_eq!(header(&out("call_7")), "Script terminated");
    let notified = out("call_8");
    assert!(
        requests
            .iter()
            .any(|request| request["input"].to_string().contains("hello from notify")),
        "the notification reached the model"
    );
    assert_eq!(notified.last().map(String::as_str), Some("notified"));
    let image = out("call_9");
    assert_eq!(image.len(), 2, "{image:?}");
    assert!(
        image[1].starts_with("<image data:image/png;base64,"),
        "{image:?}"
    );
    let failed = out("call_10");
    assert_eq!(header(&failed), "Script failed");
    assert_eq!(
        failed[1..],
        [
            "about to throw",
            "Script error:\nError: boom\n    at exec_main.mjs:2:7"
        ]
    );
    let truncated = out("call_11");
    assert_eq!(
        truncated[1..],
        [
            "Warning: truncated output (original token count: 25)\nTotal output lines: 1\n\nxxxxxxxxxxxxxxxxxxxx…15 tokens truncated…xxxxxxxxxxxxxxxxxxxx"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_killed_between_two_execs_loses_no_stored_value() {
    let root = Arc::new(Mutex::new(None::<PathBuf>));
    let killed = Arc::new(Mutex::new(0usize));
    let layout_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("codex-cli-kill-{}", std::process::id()));
    *root.lock().unwrap() = Some(layout_root.clone());
    let count = killed.clone();
    let mut second = exec_call("call_2", r#"text(load("survivor").v);"#);
    second.before = Some(Box::new(move || {
        *count.lock().unwrap() += kill_runtimes_under(&layout_root);
    }));
    let (requests, stdout) = run_turn(
        "kill",
        vec![
            exec_call(
                "call_1",
                r#"store("survivor", {v: "still here"}); text("stored");"#,
            ),
            second,
            message("done"),
        ],
    )
    .await;
    assert_eq!(
        *killed.lock().unwrap(),
        1,
        "one runtime was killed between the execs"
    );
    assert_eq!(output_for(&requests, "call_1")[1..], ["stored"]);
    let after = output_for(&requests, "call_2");
    assert_eq!(header(&after), "Script completed", "{after:?}\n{stdout}");
    assert_eq!(
        after[1..],
        ["still here"],
        "the stored value outlived the runtime"
    );
}

/// The install lost its runtime (one file copied by hand, a packaging slip): the model
/// is told why the exec could not run and what fixes it, rather than a broken pipe.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_runtime_missing_the_model_is_told_the_cause_and_the_fix() {
    let layout = layout("missing-runtime");
    std::fs::remove_file(layout.root.join("pkg/codex-resources/code-mode-bin"))
        .expect("remove the installed runtime");
    let (requests, _) = run_turn_in(
        &layout,
        vec![
            exec_call("call_1", r#"text("never runs")"#),
            message("done"),
        ],
    )
    .await;
    let seen = output_for(&requests, "call_1").join("\n");
    assert!(
        seen.contains("code-mode runtime unavailable: `code-mode-bin` was not found. Fix: put `code-mode-bin` (it ships with codex-code-mode-host) next to "),
        "{seen}"
    );
    assert!(seen.contains("`codex-code-mode-host install`"), "{seen}");
    assert!(!seen.contains("BrokenPipe"), "{seen}");
}
