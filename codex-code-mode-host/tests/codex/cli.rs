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
    layout_of(name, &crate::codex_package())
}

/// A layout of the codex in npm's `package` directory, with our host installed beside it.
fn layout_of(name: &str, package: &Path) -> Layout {
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

/// The config a layout's codex reads: the scripted model on `port`, code mode on.
fn write_config(layout: &Layout, port: u16) {
    write_config_with(layout, port, "");
}

/// [`write_config`] with `more` at its end (tables of codex's config).
fn write_config_with(layout: &Layout, port: u16, more: &str) {
    let mut config = format!(
        r#"model = "fake-model"
model_provider = "fake"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[model_providers.fake]
name = "fake"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
env_key = "FAKE_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[features]
code_mode = true

[analytics]
enabled = false
"#
    );
    config.push_str(more);
    std::fs::write(layout.root.join("home/config.toml"), config).unwrap();
}

/// Runs one `codex exec` turn against `steps` and returns every request the model got.
async fn run_turn(name: &str, steps: Vec<Step>) -> (Vec<Value>, String) {
    run_turn_in(&layout(name), steps, &[]).await
}

/// [`run_turn`] in a layout made (and perhaps changed) by the caller, with `env` added to
/// codex's environment (which its host inherits).
async fn run_turn_in(
    layout: &Layout,
    steps: Vec<Step>,
    env: &[(&str, &Path)],
) -> (Vec<Value>, String) {
    run_turn_with(layout, steps, env, "").await
}

/// [`run_turn_in`] with `more` at the end of codex's config.
async fn run_turn_with(
    layout: &Layout,
    steps: Vec<Step>,
    env: &[(&str, &Path)],
    more: &str,
) -> (Vec<Value>, String) {
    let server = model_server(steps).await;
    write_config_with(layout, server.port, more);
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(layout.root.join("pkg/bin/codex"))
            .args(["exec", "--json", "--skip-git-repo-check", "-C"])
            .arg(layout.root.join("work"))
            .arg("run the scenario")
            .env("CODEX_HOME", layout.root.join("home"))
            .env("FAKE_API_KEY", "test")
            .envs(env.iter().copied())
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

/// Kills the runtime processes under `root`: our host installed there, whose runtimes are
/// processes of the host's own executable started by a host (one file: the first is
/// forked from the host, a later one spawned from it in its runtime mode).
fn kill_runtimes_under(root: &Path) -> usize {
    // `/proc/PID/exe` names the file with every symbolic link resolved.
    let host = root.join("pkg/codex-resources/codex-code-mode-host");
    let host = std::fs::canonicalize(&host).unwrap_or(host);
    let is_host =
        |pid: &str| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == host);
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let parent = status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        if is_host(&pid.to_string()) && is_host(&parent) {
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
    let (requests, stdout) = run_turn("scenarios", scenarios()).await;
    check_scenarios(&requests, &stdout);
}

/// Codex 0.171.0 with heartbeats on (`[code_mode] heartbeat_interval_s = 1`): every
/// scenario as with 0.169, our host advertising catalog revisions, so that 0.171 tags each
/// exec with one and sends its tools only when they change (a later exec calls a tool
/// again through the kept catalog), and heartbeats flow on both streams throughout.
#[tokio::test(flavor = "multi_thread")]
async fn codex_0171_runs_every_scenario_with_revisions_and_heartbeats() {
    let package = crate::codex_host_0171()
        .parent()
        .and_then(Path::parent)
        .expect("the package directory")
        .to_path_buf();
    let layout = layout_of("scenarios-0171", &package);
    // Our host's log at debug, by a wrapper in its place that keeps its stderr (codex
    // keeps no host's): it says how each exec got its tools, and which streams beat.
    let log = layout.root.join("host.log");
    let host = layout.root.join("pkg/codex-resources/codex-code-mode-host");
    let real = layout.root.join("pkg/codex-resources/our-host");
    std::fs::rename(&host, &real).expect("the installed host");
    std::fs::write(
        &host,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\" 2>>'{}'\n",
            real.display(),
            log.display()
        ),
    )
    .expect("the wrapper");
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("the wrapper runs");
    let mut steps = scenarios();
    let done = steps.pop().expect("the last message");
    steps.push(exec_call(
        "call_12",
        r#"const r = await tools.exec_command({cmd: "echo again"}); text(JSON.stringify(r).includes("again"));"#,
    ));
    steps.push(done);
    let heartbeats = "\n[code_mode]\nheartbeat_interval_s = 1\n";
    let debug = [(
        "CODEX_CODE_MODE_HOST_LOG",
        Path::new("codex_code_mode_host=debug"),
    )];
    let (requests, stdout) = run_turn_with(&layout, steps, &debug, heartbeats).await;
    check_scenarios(&requests, &stdout);
    let again = output_for(&requests, "call_12");
    assert_eq!(
        again[1..],
        ["true"],
        "a tool through the kept catalog: {again:?}"
    );
    let log = std::fs::read_to_string(&log).expect("the host's log");
    let count = |what: &str| log.lines().filter(|line| line.contains(what)).count();
    assert_eq!(
        count("an exec's tools kept as the session's catalog"),
        1,
        "{log}"
    );
    assert_eq!(
        count("an exec's tools taken from the session's catalog"),
        9,
        "the nine execs after the first, under the kept catalog: {log}"
    );
    // Both streams (codex may subscribe again on a slow machine: at least both).
    assert!(
        count("a stream with heartbeats") >= 2,
        "both streams: {log}"
    );
}

/// The turn every scenario runs in: tools, stored values, yields and waits, termination,
/// notifications, images, a throw and truncation.
fn scenarios() -> Vec<Step> {
    vec![
        exec_call(
            "call_1",
            r#"const r = await tools.exec_command({cmd: "echo hi"}); text(JSON.parse(typeof r === "string" ? r : JSON.stringify(r)).output ?? r);"#,
        ),
        exec_call("call_2", r#"store("answer", {n: 41}); text("stored");"#),
        exec_call("call_3", r#"text(load("answer").n + 1);"#),
        exec_call(
            "call_4",
            "// @exec: {\"yield_time_ms\": 300}\ntext(\"before sleep\"); await new Promise(r => setTimeout(r, 1500)); text(\"after sleep\");",
        ),
        wait_call("call_5", json!({"cell_id": "4", "yield_time_ms": 10000})),
        exec_call(
            "call_6",
            "// @exec: {\"yield_time_ms\": 300}\ntext(\"long\"); await new Promise(r => setTimeout(r, 60000));",
        ),
        wait_call("call_7", json!({"cell_id": "5", "terminate": true})),
        exec_call(
            "call_8",
            r#"notify("hello from notify"); text("notified");"#,
        ),
        exec_call(
            "call_9",
            &format!(r#"image("data:image/png;base64,{PNG}");"#),
        ),
        exec_call(
            "call_10",
            "text(\"about to throw\");\nthrow new Error(\"boom\");",
        ),
        exec_call(
            "call_11",
            "// @exec: {\"max_output_tokens\": 10}\ntext(\"x\".repeat(100));",
        ),
        message("done"),
    ]
}

/// What [`scenarios`] must give the model.
fn check_scenarios(requests: &[Value], stdout: &str) {
    let out = |call: &str| output_for(requests, call);
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

/// Our runtime killed while a cell waits on a slow nested tool (a shell command codex runs):
/// the cell is rebuilt from its journal on a fresh runtime, codex's command goes on and its
/// answer reaches the rebuilt cell, and the model's next request shows the cell's normal
/// output, with no loss message (contract §7, durable cells).
#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_killed_during_a_nested_call_is_not_seen_by_the_model() {
    let killed = Arc::new(Mutex::new(0usize));
    let layout_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("codex-cli-midcall-{}", std::process::id()));
    let count = killed.clone();
    let mut waited = wait_call("call_2", json!({"cell_id": "1", "yield_time_ms": 20000}));
    waited.before = Some(Box::new(move || {
        *count.lock().unwrap() += kill_runtimes_under(&layout_root);
    }));
    let (requests, stdout) = run_turn(
        "midcall",
        vec![
            exec_call(
                "call_1",
                "// @exec: {\"yield_time_ms\": 500}\ntext(\"asking\");\nconst r = await tools.exec_command({cmd: \"sleep 3; echo slow done\"});\ntext(JSON.parse(typeof r === \"string\" ? r : JSON.stringify(r)).output ?? r);",
            ),
            waited,
            message("done"),
        ],
    )
    .await;
    assert_eq!(
        *killed.lock().unwrap(),
        1,
        "one runtime was killed mid-call"
    );
    let first = output_for(&requests, "call_1");
    assert_eq!(
        header(&first),
        "Script running with cell ID 1",
        "{first:?}\n{stdout}"
    );
    assert_eq!(first[1..], ["asking"]);
    let after = output_for(&requests, "call_2");
    assert_eq!(header(&after), "Script completed", "{after:?}\n{stdout}");
    assert_eq!(
        after.len(),
        2,
        "only the cell's own output, once: {after:?}"
    );
    assert!(after[1].contains("slow done"), "{after:?}");
    let everything = serde_json::to_string(&requests).unwrap();
    assert!(
        !everything.contains("was lost") && !everything.contains("was replaced"),
        "the model saw the loss"
    );
}

/// The runtime the host is told to use is not there (here `CODE_MODE_BIN` naming a file
/// that does not exist, as a build without the runtime in the host whose `code-mode-bin`
/// went missing would be): the model is told why the exec could not run and what fixes
/// it, rather than a broken pipe.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_runtime_missing_the_model_is_told_the_cause_and_the_fix() {
    let layout = layout("missing-runtime");
    let missing = layout.root.join("pkg/codex-resources/code-mode-bin");
    assert!(!missing.exists(), "one file was installed");
    let (requests, _) = run_turn_in(
        &layout,
        vec![
            exec_call("call_1", r#"text("never runs")"#),
            message("done"),
        ],
        &[("CODE_MODE_BIN", missing.as_path())],
    )
    .await;
    let seen = output_for(&requests, "call_1").join("\n");
    assert!(
        seen.contains("code-mode runtime unavailable: the `code-mode-bin` named by --runtime or CODE_MODE_BIN was not found. Fix: unset CODE_MODE_BIN (and drop --runtime) so that this host runs the runtime it carries"),
        "{seen}"
    );
    assert!(!seen.contains("BrokenPipe"), "{seen}");
}

/// `codex app-server` on stdio (JSON-RPC, one message a line), driven as an IDE drives it.
struct AppServer {
    child: tokio::process::Child,
    input: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
}

impl AppServer {
    fn start(layout: &Layout, args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut child = tokio::process::Command::new(layout.root.join("pkg/bin/codex"))
            .arg("app-server")
            .args(args)
            .envs(env.iter().copied())
            .current_dir(layout.root.join("work"))
            .env("CODEX_HOME", layout.root.join("home"))
            .env("FAKE_API_KEY", "test")
            .env_remove("OPENAI_API_KEY")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("codex app-server runs");
        let input = child.stdin.take().expect("stdin");
        let output = child.stdout.take().expect("stdout");
        use tokio::io::AsyncBufReadExt;
        Self {
            child,
            input,
            lines: tokio::io::BufReader::new(output).lines(),
            next_id: 0,
        }
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.input.write_all(line.as_bytes()).await.expect("write");
        self.input.flush().await.expect("flush");
    }

    /// A request; returns its result once the response comes (answering the server's own
    /// requests with an empty result meanwhile, and noting its notifications).
    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let message = self.next().await;
            if message["id"] == id && message.get("method").is_none() {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }

    /// Reads until the notification `method` comes; returns it.
    async fn until(&mut self, method: &str) -> Value {
        loop {
            let message = self.next().await;
            if message["method"] == method && message.get("id").is_none() {
                return message;
            }
        }
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("app-server answers within 60 s")
            .expect("read")
            .expect("app-server is still running");
        let message: Value = serde_json::from_str(&line).expect("a JSON-RPC line");
        if message.get("method").is_some() && message.get("id").is_some() {
            // A request of the server's (an approval, say): nothing to approve here.
            let id = message["id"].clone();
            self.send(json!({"jsonrpc": "2.0", "id": id, "result": {}}))
                .await;
        }
        message
    }

    /// One turn: the user's `text`, until the turn completes.
    async fn turn(&mut self, thread: &str, text: &str) {
        self.request(
            "turn/start",
            json!({"threadId": thread, "input": [{"type": "text", "text": text}]}),
        )
        .await;
        self.until("turn/completed").await;
    }
}

/// A host listening where app-server connects (`--listen grpc://127.0.0.1:0`): its URL.
struct RemoteHost {
    child: tokio::process::Child,
    url: String,
}

impl RemoteHost {
    async fn start(args: &[&str]) -> Self {
        Self::start_on("grpc://127.0.0.1:0", args).await
    }

    async fn start_on(listen: &str, args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(crate::our_host())
            .args(["--listen", listen])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("our host runs");
        let mut line = String::new();
        tokio::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .await
            .expect("the URL line");
        Self {
            child,
            url: line.trim().to_owned(),
        }
    }

    /// Kills the host's runtime processes (its children); how many.
    fn kill_runtime(&self) -> usize {
        let pid = self.child.id().expect("the host runs");
        let mut killed = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|pid| pid.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a runtime process our host started for this test.
                unsafe { libc::kill(child, libc::SIGKILL) };
                killed += 1;
            }
        }
        killed
    }
}

/// What happens to our host between the two turns of [`app_server_turns`].
enum Between {
    Nothing,
    /// Its runtime process is killed: the stored values live in the host.
    KillTheRuntime,
    /// The host process itself is killed and started again on the same port.
    RestartTheHost,
}

/// Two turns of `codex app-server --code-mode-host URL` against our host listening on
/// its own (`url` as codex dials it): a nested tool call and a stored value in the first,
/// with `between` done after it; a yield and a wait in the second, which reads the value.
/// Returns what the model got for the second turn's exec, wait and last exec.
async fn app_server_turns(
    host: &mut RemoteHost,
    url: &str,
    name: &str,
    extra_env: &[(&str, &Path)],
    between: Between,
) -> [Vec<String>; 3] {
    let layout = layout(name);
    let server = model_server(vec![
        exec_call(
            "call_1",
            r#"const r = await tools.exec_command({cmd: "echo nested"}); store("k", "kept"); text(String(JSON.stringify(r)).includes("nested") ? "nested ok" : JSON.stringify(r));"#,
        ),
        message("first turn done"),
        exec_call(
            "call_2",
            r#"// @exec: {"yield_time_ms": 100}
text(String(load("k"))); await new Promise((r) => setTimeout(r, 1000)); text("after the wait");"#,
        ),
        wait_call("call_3", json!({"cell_id": "2", "yield_time_ms": 10000})),
        exec_call("call_4", r#"text("and on")"#),
        message("second turn done"),
    ])
    .await;
    write_config(&layout, server.port);
    let mut app = AppServer::start(&layout, &["--code-mode-host", url], extra_env);
    app.request(
        "initialize",
        json!({"clientInfo": {"name": "code-mode-test", "version": "0.1.0"}}),
    )
    .await;
    app.send(json!({"jsonrpc": "2.0", "method": "initialized"}))
        .await;
    let thread = app.request("thread/start", json!({})).await;
    let thread = thread["thread"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a thread id: {thread}"))
        .to_owned();
    app.turn(&thread, "run the first part").await;
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(
        output_for(&requests, "call_1")[1..],
        ["nested ok"],
        "{requests:#?}"
    );
    match between {
        Between::Nothing => {}
        Between::KillTheRuntime => assert_eq!(host.kill_runtime(), 1, "one runtime killed"),
        Between::RestartTheHost => {
            let listen = host.url.replace("http://", "grpc://");
            let _ = host.child.kill().await;
            let args: Vec<String> = Vec::new();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            *host = RemoteHost::start_on(&listen, &args).await;
        }
    }
    app.turn(&thread, "run the second part").await;
    let requests = server.requests.lock().unwrap().clone();
    let _ = app.child.kill().await;
    ["call_2", "call_3", "call_4"].map(|call| output_for(&requests, call))
}

/// A turn that yields, then a wait that gets the rest: the second turn of a session that
/// kept its stored value.
fn assert_kept_and_waited([exec, waited, last]: &[Vec<String>; 3]) {
    assert!(
        header(exec).starts_with("Script running with cell ID 2"),
        "{exec:?}"
    );
    assert_eq!(exec[1..], ["kept"], "{exec:?}");
    assert_eq!(header(waited), "Script completed", "{waited:?}");
    assert_eq!(waited[1..], ["after the wait"], "{waited:?}");
    assert_eq!(last[1..], ["and on"], "{last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn app_server_runs_turns_on_our_host_over_http() {
    let mut host = RemoteHost::start(&[]).await;
    assert!(host.url.starts_with("http://127.0.0.1:"), "{}", host.url);
    let url = host.url.clone();
    let seen = app_server_turns(&mut host, &url, "app-server-http", &[], Between::Nothing).await;
    assert_kept_and_waited(&seen);
}

/// The same over `https://`: our host serves TLS with a certificate of a CA made here,
/// which codex is told to trust (`CODEX_CA_CERTIFICATE`; without it the turn fails).
#[tokio::test(flavor = "multi_thread")]
async fn app_server_runs_turns_on_our_host_over_https() {
    let pki = code_mode_conformance::remote::Pki::new("app-server test CA");
    let server = pki.server();
    let scratch = code_mode_conformance::Scratch::new();
    let cert = scratch.write("cert.pem", &server.cert_pem);
    let key = scratch.write("key.pem", &server.key_pem);
    let ca = scratch.write("ca.pem", &pki.ca_pem());
    let mut host = RemoteHost::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let url = host.url.replace("http://", "https://");
    let seen = app_server_turns(
        &mut host,
        &url,
        "app-server-https",
        &[("CODEX_CA_CERTIFICATE", ca.as_path())],
        Between::Nothing,
    )
    .await;
    assert_kept_and_waited(&seen);
}

/// Our runtime killed between two app-server turns: the session's stored value is there
/// in the next turn, and the model sees no loss.
#[tokio::test(flavor = "multi_thread")]
async fn app_server_keeps_stored_values_when_our_runtime_dies_between_turns() {
    let mut host = RemoteHost::start(&[]).await;
    let url = host.url.clone();
    let seen = app_server_turns(
        &mut host,
        &url,
        "app-server-runtime-killed",
        &[],
        Between::KillTheRuntime,
    )
    .await;
    assert_kept_and_waited(&seen);
}

/// The remote host process restarted between two turns: its sessions are gone with it,
/// and codex says so to the model once, then goes on on the new host.
#[tokio::test(flavor = "multi_thread")]
async fn app_server_reports_a_restarted_host_once_and_goes_on() {
    let mut host = RemoteHost::start(&[]).await;
    let url = host.url.clone();
    let seen = app_server_turns(
        &mut host,
        &url,
        "app-server-host-restarted",
        &[],
        Between::RestartTheHost,
    )
    .await;
    let [exec, waited, last] = seen;
    assert_eq!(
        exec,
        [
            "The exec runtime was replaced. Stored values and running cells were lost. Prior external tool operations may have completed; inspect their results before retrying. You may continue with a fresh exec call."
        ]
    );
    assert_eq!(
        waited,
        ["cell belongs to a stale code-mode host generation"]
    );
    assert_eq!(header(&last), "Script completed", "{last:?}");
    assert_eq!(last[1..], ["and on"], "the next exec runs on the new host");
}
