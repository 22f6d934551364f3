//! The JSON protocol (`code_mode_host_grpc = false`, no arguments): one scripted
//! conversation through codex's own host and ours, compared message by message
//! (durations aside): handshake, open, a duplicate open, execute with a tool call and a
//! notification, yield then wait, terminate, `operation/yield`, a missing cell, a script
//! error, `operation/cancel`, an unknown session, shutdown, and rejected hellos.

use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};

struct JsonHost {
    child: Child,
    input: ChildStdin,
    output: ChildStdout,
    transcript: Vec<String>,
}

impl JsonHost {
    fn spawn(binary: &std::path::Path) -> Self {
        use std::process::Stdio;
        Self::of(crate::spawn_child(
            binary,
            &[],
            [Stdio::piped(), Stdio::piped(), Stdio::null()],
        ))
    }

    fn of(mut child: Child) -> Self {
        let input = child.stdin.take().unwrap();
        let output = child.stdout.take().unwrap();
        Self {
            child,
            input,
            output,
            transcript: Vec::new(),
        }
    }

    async fn send(&mut self, message: Value) {
        let bytes = message.to_string().into_bytes();
        self.input
            .write_all(&(bytes.len() as u32).to_le_bytes())
            .await
            .unwrap();
        self.input.write_all(&bytes).await.unwrap();
        self.input.flush().await.unwrap();
    }

    /// The next message within `wait`, recorded with durations blanked.
    async fn recv(&mut self, wait: Duration) -> Option<Value> {
        let mut length = [0u8; 4];
        tokio::time::timeout(wait, self.output.read_exact(&mut length))
            .await
            .ok()?
            .ok()?;
        let mut frame = vec![0u8; u32::from_le_bytes(length) as usize];
        self.output.read_exact(&mut frame).await.ok()?;
        let message: Value = serde_json::from_slice(&frame).expect("a JSON frame");
        let mut shown = message.to_string();
        for key in ["code_mode_host_duration_ns"] {
            while let Some(at) = shown.find(&format!("\"{key}\":")) {
                let start = at + key.len() + 3;
                let end = start
                    + shown[start..]
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(0);
                shown.replace_range(at..end, "\"duration\":\"D\"");
            }
        }
        self.transcript.push(shown);
        Some(message)
    }

    /// Reads until nothing comes for `quiet`, answering tool calls and notifications.
    async fn settle(&mut self, quiet: Duration) {
        while let Some(message) = self.recv(quiet).await {
            if message["type"] == "delegate/request" {
                let id = message["id"].clone();
                let result = match message["request"]["type"].as_str() {
                    Some("tool/invoke") => {
                        json!({"status": "ok", "value": {"type": "tool/result", "result": {"echo": message["request"]["invocation"]["input"]}}})
                    }
                    _ => json!({"status": "ok", "value": {"type": "notification/delivered"}}),
                };
                self.send(json!({"type": "delegate/response", "id": id, "result": result}))
                    .await;
            }
        }
    }
}

fn request(id: u64, body: Value) -> Value {
    json!({"type": "operation/request", "id": id, "request": body})
}

fn execute(id: u64, call: &str, source: &str, yield_ms: u64, tools: Value) -> Value {
    request(
        id,
        json!({"method": "session/execute", "sessionId": "session-1", "request": {
        "tool_call_id": call, "enabled_tools": tools, "source": source, "yield_time_ms": yield_ms}}),
    )
}

async fn conversation(binary: &std::path::Path) -> Vec<String> {
    let mut host = JsonHost::spawn(binary);
    let short = Duration::from_millis(400);
    host.send(json!({"type": "connection/hello", "supportedVersions": [1], "requiredCapabilities": [],
        "optionalCapabilities": ["bounded-output-v1", "delegate-capacity-4096", "session-cell-execution-resource-limits", "yield-observation"]})).await;
    host.settle(short).await;
    let open =
        json!({"method": "session/open", "sessionId": "session-1", "outputTruncation": "server"});
    host.send(request(1, open.clone())).await;
    host.settle(short).await;
    host.send(request(2, open)).await;
    host.settle(short).await;
    let tools = json!([{"name": "echo", "tool_name": {"name": "echo", "namespace": null}, "description": "d", "kind": "function", "input_schema": null, "output_schema": null}]);
    host.send(execute(3, "call_1", "text(await tools.echo({a: 1})); notify('hi'); store('k', 1); image('data:image/png;base64,AA==')", 30_000, tools)).await;
    host.settle(Duration::from_millis(800)).await;
    host.send(execute(
        4,
        "call_2",
        "text(load('k')); await new Promise(r => setTimeout(r, 1200)); text('after')",
        200,
        json!([]),
    ))
    .await;
    host.settle(short).await;
    host.send(request(5, json!({"method": "session/wait", "sessionId": "session-1", "request": {"cell_id": "2", "yield_time_ms": 5000}, "maxOutputTokens": null}))).await;
    host.settle(Duration::from_millis(1500)).await;
    host.send(execute(
        6,
        "call_3",
        "text('t'); await new Promise(r => setTimeout(r, 8000))",
        200,
        json!([]),
    ))
    .await;
    host.settle(short).await;
    host.send(request(
        7,
        json!({"method": "session/terminate", "sessionId": "session-1", "cellId": "3"}),
    ))
    .await;
    host.settle(short).await;
    host.send(execute(
        8,
        "call_4",
        "text('y'); await new Promise(r => setTimeout(r, 8000))",
        30_000,
        json!([]),
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.send(json!({"type": "operation/yield", "id": 8})).await;
    host.settle(short).await;
    host.send(request(9, json!({"method": "session/wait", "sessionId": "session-1", "request": {"cell_id": "99", "yield_time_ms": 100}, "maxOutputTokens": null}))).await;
    host.settle(short).await;
    host.send(execute(
        10,
        "call_5",
        "throw new Error('boom')",
        1000,
        json!([]),
    ))
    .await;
    host.settle(short).await;
    host.send(request(11, json!({"method": "session/wait", "sessionId": "session-1", "request": {"cell_id": "4", "yield_time_ms": 20000}, "maxOutputTokens": null}))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    host.send(json!({"type": "operation/cancel", "id": 11}))
        .await;
    host.settle(short).await;
    host.send(
        execute(12, "c", "1", 1000, json!([]))
            .as_object()
            .cloned()
            .map(|mut message| {
                message["request"]["sessionId"] = json!("nope");
                Value::Object(message)
            })
            .unwrap(),
    )
    .await;
    host.settle(short).await;
    host.send(request(
        13,
        json!({"method": "session/shutdown", "sessionId": "session-1"}),
    ))
    .await;
    host.settle(Duration::from_millis(800)).await;
    drop(host.input);
    let status = tokio::time::timeout(Duration::from_secs(10), host.child.wait())
        .await
        .expect("the host exits")
        .expect("wait");
    host.transcript
        .push(format!("exit success: {}", status.success()));
    host.transcript
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_protocol_matches_codexs_host() {
    for codex in crate::codex_hosts() {
        let ours = crate::our_host();
        let (theirs, mine) = tokio::join!(conversation(&codex), conversation(&ours));
        assert!(theirs.len() > 20, "{theirs:#?}");
        assert_eq!(theirs, mine, "against {}", codex.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hello_we_cannot_serve_is_rejected() {
    for (hello, reason) in [
        (
            json!({"type": "connection/hello", "supportedVersions": [7], "requiredCapabilities": [], "optionalCapabilities": []}),
            "noCompatibleVersion",
        ),
        (
            json!({"type": "connection/hello", "supportedVersions": [1], "requiredCapabilities": ["nope"], "optionalCapabilities": []}),
            "missingRequiredCapability",
        ),
    ] {
        let mut host = JsonHost::spawn(&crate::our_host());
        host.send(hello).await;
        let answer = host.recv(Duration::from_secs(5)).await.expect("an answer");
        assert_eq!(answer["type"], "connection/rejected");
        assert_eq!(answer["reason"]["type"], reason);
    }
}

/// A request with a field missing or of the wrong type is refused with the field's path,
/// never run with a default (an execute without `source` once ran an empty cell); the
/// session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_operation_is_refused_with_the_field_it_names() {
    let mut host = JsonHost::spawn(&crate::our_host());
    let wait = Duration::from_secs(10);
    host.send(json!({"type": "connection/hello", "supportedVersions": [1], "requiredCapabilities": [], "optionalCapabilities": []})).await;
    assert_eq!(host.recv(wait).await.unwrap()["type"], "connection/ready");
    host.send(request(
        1,
        json!({"method": "session/open", "sessionId": "session-1"}),
    ))
    .await;
    assert_eq!(host.recv(wait).await.unwrap()["result"]["status"], "ok");

    let refusals = [
        (
            json!({"method": "session/execute", "sessionId": "session-1", "request": {"tool_call_id": "c", "enabled_tools": []}}),
            "invalid session/execute request: request: missing field `source`",
        ),
        (
            json!({"method": "session/execute", "sessionId": "session-1", "request": {"tool_call_id": "c", "source": "text(1)", "enabled_tools": [{"name": "t", "kind": "other"}]}}),
            "invalid session/execute request: request.enabled_tools[0].kind: unknown variant `other`, expected `function` or `freeform`",
        ),
        (
            json!({"method": "session/wait", "sessionId": "session-1", "request": {"cell_id": 1}}),
            "invalid session/wait request: request.cell_id: invalid type: integer `1`, expected a string",
        ),
        (
            json!({"method": "session/terminate", "cellId": "1"}),
            "invalid session/terminate request: missing field `sessionId`",
        ),
        (
            json!({"method": "session/fly", "sessionId": "session-1"}),
            "unknown code-mode method `session/fly`",
        ),
    ];
    for (id, (body, expected)) in (2..).zip(refusals) {
        host.send(request(id, body)).await;
        let answer = host.recv(wait).await.expect("an answer");
        assert_eq!(answer["type"], "operation/response", "{answer}");
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["result"]["status"], "error", "{answer}");
        let message = answer["result"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(expected), "{message}");
    }

    host.send(execute(
        9,
        "call_9",
        "text('still here')",
        10_000,
        json!([]),
    ))
    .await;
    let mut seen = Vec::new();
    while let Some(message) = host.recv(wait).await {
        let done = message["type"] == "execute/initialResponse";
        seen.push(message);
        if done {
            break;
        }
    }
    let last = seen.last().expect("the execute was answered");
    assert_eq!(
        last["result"]["value"]["Result"]["content_items"][0]["text"], "still here",
        "{seen:#?}"
    );
}

/// `tool-catalog-revision-v1`, on our host and on Codex 0.171's alike: granted when asked;
/// an execute with `catalog_revision` and tools keeps them under it, one with the revision
/// and `"enabled_tools": []` uses them, and an unknown revision is refused with Codex's
/// text. A client that did not ask for the capability is answered the same way (0.171's
/// host reads the field whatever was negotiated).
#[tokio::test(flavor = "multi_thread")]
async fn catalog_revisions_over_the_json_protocol() {
    for binary in [crate::our_host(), crate::codex_host_0171()] {
        for asked in [true, false] {
            catalog_revisions_over_json_on(&binary, asked).await;
        }
    }
}

async fn catalog_revisions_over_json_on(binary: &std::path::Path, asked: bool) {
    let mut host = JsonHost::spawn(binary);
    let wait = Duration::from_secs(10);
    let capabilities = if asked {
        json!(["tool-catalog-revision-v1", "yield-observation"])
    } else {
        json!(["yield-observation"])
    };
    host.send(
        json!({"type": "connection/hello", "supportedVersions": [1], "requiredCapabilities": [],
        "optionalCapabilities": capabilities}),
    )
    .await;
    let ready = host.recv(wait).await.expect("ready");
    assert_eq!(ready["capabilities"], capabilities, "{ready}");
    host.send(request(
        1,
        json!({"method": "session/open", "sessionId": "session-1"}),
    ))
    .await;
    assert_eq!(host.recv(wait).await.unwrap()["result"]["status"], "ok");
    let tools = json!([{"name": "echo", "tool_name": {"name": "echo", "namespace": null}, "description": "d", "kind": "function", "input_schema": null, "output_schema": null}]);
    let names = "text(ALL_TOOLS.map((t) => t.name).join(',') || 'none')";
    let mut answers = Vec::new();
    for (id, revision, tools) in [
        (2, 4, json!([])),
        (3, 4, tools),
        (4, 4, json!([])),
        (5, 5, json!([])),
    ] {
        host.send(request(
            id,
            json!({"method": "session/execute", "sessionId": "session-1", "request": {
                "tool_call_id": format!("call_{id}"), "enabled_tools": tools, "source": names,
                "yield_time_ms": 10_000, "catalog_revision": revision}}),
        ))
        .await;
        let answer = loop {
            let message = host.recv(wait).await.expect("an answer");
            if message["id"] == id
                && (message["type"] == "execute/initialResponse"
                    || message["result"]["status"] == "error")
            {
                break message;
            }
        };
        answers.push(match answer["result"]["status"].as_str() {
            Some("error") => answer["result"]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            _ => answer["result"]["value"]["Result"]["content_items"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        });
    }
    assert_eq!(
        answers,
        [
            "unknown code-mode catalog revision",
            "echo",
            "echo",
            "unknown code-mode catalog revision"
        ],
        "{} (capability asked: {asked})",
        binary.display()
    );
}

/// With its runtime missing the JSON front still speaks its protocol: `session/open` is
/// refused with the cause and the fix, and once the runtime is where it was looked for,
/// the next `session/open` works with no restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_runtime_refuses_session_open_until_it_is_installed() {
    let scratch = code_mode_conformance::Scratch::new();
    let runtime = scratch.0.join("code-mode-bin");
    let child = tokio::process::Command::new(crate::our_host())
        .env("CODE_MODE_BIN", &runtime)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn our host");
    let mut host = JsonHost::of(child);
    let wait = Duration::from_secs(20);
    host.send(json!({"type": "connection/hello", "supportedVersions": [1], "requiredCapabilities": [], "optionalCapabilities": []})).await;
    assert_eq!(host.recv(wait).await.unwrap()["type"], "connection/ready");
    let open = json!({"method": "session/open", "sessionId": "session-1"});
    host.send(request(1, open.clone())).await;
    let answer = host.recv(wait).await.expect("an answer");
    assert_eq!(answer["result"]["status"], "error", "{answer}");
    let message = answer["result"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("code-mode runtime unavailable: the `code-mode-bin` named by --runtime or CODE_MODE_BIN was not found. Fix: "),
        "{message}"
    );
    assert!(message.contains("CODE_MODE_BIN"), "{message}");

    let built = code_mode_host::find_binary(None).expect("the runtime cargo built");
    std::os::unix::fs::symlink(&built, &runtime).expect("install the runtime");
    host.send(request(2, open)).await;
    let answer = host.recv(wait).await.expect("an answer");
    assert_eq!(answer["result"]["status"], "ok", "{answer}");
    host.send(execute(3, "call_1", "text('found')", 30_000, json!([])))
        .await;
    let mut seen = Vec::new();
    while let Some(message) = host.recv(wait).await {
        let text = message.to_string();
        seen.push(text.clone());
        if text.contains(r#""text":"found""#) {
            return;
        }
    }
    panic!("the cell's output never came: {seen:?}");
}
