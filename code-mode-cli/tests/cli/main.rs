//! Drives the real `code-mode` binary: `run` with command tools and built-ins, `repl` over
//! a pipe, `describe`, `serve --jsonl` through the Python example, and the error cases.

use code_mode_conformance::Scratch;
use code_mode_conformance::remote::{ListeningRuntime, Pki, RuntimeOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod approvals;
mod hibernation;
mod mcp;
mod mcp_http;
mod principals;
mod restart;
mod tasks;
mod traces;

const BIN: &str = env!("CARGO_BIN_EXE_code-mode");

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the project root")
}

/// Runs `code-mode` with `args` in `dir`, feeding `stdin`.
fn code_mode(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn code-mode");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for code-mode")
}

/// Runs an example cell from the project root as the README shows it; its stdout.
fn run_example(cell: &str, tools: &str) -> String {
    let output = code_mode(&project_root(), &["run", cell, "--tools", tools], "");
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&output.stderr)
    );
    stdout
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The README's quickstart: the example cell on the fixed sample project prints what the
/// README shows, line for line (the wall time aside).
#[test]
fn run_the_example_with_command_tools() {
    let stdout = run_example("examples/top_rust_files.js", "examples/tools.toml");
    let readme = std::fs::read_to_string(project_root().join("README.md")).expect("the README");
    let shown = readme
        .split("```text\n[notify] counting the lines of ")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .map(|block| format!("[notify] counting the lines of {block}"))
        .expect("the README shows the quickstart's output");
    let without_time = |text: &str| -> Vec<String> {
        text.lines()
            .map(|line| {
                if line.starts_with("Wall time ") && line.ends_with(" seconds") {
                    "Wall time …".to_owned()
                } else {
                    line.to_owned()
                }
            })
            .collect()
    };
    assert_eq!(without_time(&stdout), without_time(&shown));
}

#[test]
fn run_with_the_builtins_in_and_out_of_process() {
    let scratch = Scratch::new();
    scratch.write(
        "cell.js",
        r#"
        const written = await tools.write_file({ path: "note.txt", content: "one\ntwo\nthree" });
        text(`wrote ${written.bytes_written} bytes`);
        text(await tools.read_file({ path: "note.txt", offset: 1, limit: 1 }));
        const names = (await tools.list_dir({ path: "." })).map((entry) => `${entry.name}:${entry.type}`);
        text(names.join(" "));
        const shell = await tools.exec_command({ command: "echo out; echo err >&2; exit 3" });
        text(JSON.stringify(shell));
        try { await tools.read_file({ path: "missing.txt" }); } catch (e) { text(e.split(":")[0]); }
        "#,
    );
    // And on a runtime elsewhere, over mutual TLS (`code-mode-bin --listen`).
    let pki = Pki::default();
    let binary = code_mode_host::find_binary(None).expect("code-mode-bin");
    let runtime = ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki));
    let host = pki.client("cli");
    let certificates = Scratch::new();
    let pem = |name: &str, contents: &str| {
        certificates.write(name, contents);
        certificates.0.join(name).display().to_string()
    };
    let (ca, cert, key) = (
        pem("ca.pem", &pki.ca_pem()),
        pem("host.pem", &host.cert_pem),
        pem("host.key", &host.key_pem),
    );
    let endpoint = runtime.endpoint();
    let remote = [
        "--runtime",
        endpoint.as_str(),
        "--runtime-ca",
        &ca,
        "--runtime-cert",
        &cert,
        "--runtime-key",
        &key,
    ];
    for mode in [&[][..], &["--in-process"][..], &remote[..]] {
        let mut args = vec!["run", "cell.js", "--builtin", "fs,shell"];
        args.extend(mode);
        let output = code_mode(&scratch.0, &args, "");
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?}: {stdout}{}",
            text(&output.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "wrote 13 bytes",
                "two",
                "cell.js:file note.txt:file",
                r#"{"exit_code":3,"stdout":"out\n","stderr":"err\n"}"#,
                "cannot read missing.txt",
            ],
            "{args:?}"
        );
        assert_eq!(lines[5], "Script completed");
    }
    // Without the TLS files, a newcomer is told at once what the runtime wants.
    let started = std::time::Instant::now();
    let output = code_mode(&scratch.0, &["run", "cell.js", "--runtime", &endpoint], "");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("probably wants mutual TLS") && stderr.contains("--runtime-cert"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "gave up only after {:?} (the connect timeout is 10 s): {stderr}",
        started.elapsed()
    );
}

#[test]
fn run_reports_failures_with_json_and_exit_codes() {
    let scratch = Scratch::new();
    scratch.write(
        "fail.js",
        "// @exec: {\"max_output_tokens\": 5}\nnotify('n'); text('x'.repeat(100)); throw new Error('boom');",
    );
    let output = code_mode(&scratch.0, &["run", "fail.js", "--json"], "");
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["status"], "Script failed");
    assert_eq!(report["cell_id"], "1");
    assert_eq!(report["notifications"], serde_json::json!(["n"]));
    assert_eq!(report["response"]["type"], "result");
    assert!(
        report["response"]["error_text"]
            .as_str()
            .unwrap()
            .starts_with("Error: boom")
    );
    assert_eq!(report["response"]["failure"], "script_error");
    let items = report["response"]["content_items"].as_array().unwrap();
    assert_eq!(
        items[0]["text"],
        "x".repeat(20),
        "the pragma's budget of 5 tokens applies"
    );
    assert!(
        items[1]["text"]
            .as_str()
            .unwrap()
            .starts_with("[... output truncated")
    );
}

#[test]
fn repl_on_a_terminal_interrupts_with_ctrl_c_and_keeps_the_session() {
    // Through a pseudo-terminal, in process and with a runtime process.
    for flags in [&["--in-process"][..], &[][..]] {
        let home = Scratch::new();
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drive_repl.py");
        let output = Command::new("python3")
            .arg(&driver)
            .arg(BIN)
            .arg(&home.0)
            .args(flags)
            .output()
            .expect("python3 runs the pty driver");
        assert!(
            output.status.success(),
            "{flags:?}: {}\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        let seen: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("a JSON report");
        let step = |name: &str| seen[name].as_str().unwrap_or_default().replace('\r', "");
        assert!(step("store").contains("stored\nScript completed"), "{seen}");
        // Ctrl-C stopped the spinning cell and the prompt came back.
        assert!(
            step("interrupt").contains("spinning\nScript terminated"),
            "{flags:?}: {seen}"
        );
        assert!(step("load").contains("k is 42\nScript completed"), "{seen}");
        assert!(
            step("multiline").contains("x1\nx2\nScript completed"),
            "{seen}"
        );
        // The cleared line never ran; the next one did.
        let cleared = step("cleared");
        assert!(
            cleared.contains("fresh\nScript completed") && !cleared.contains("\nnever run"),
            "{seen}"
        );
        assert_eq!(seen["exit_code"], 0, "{seen}");
        let history = seen["history"].as_str().unwrap_or_default();
        assert!(history.contains(r#"text("k is " + load("k"))"#), "{seen}");
    }
}

#[test]
fn repl_over_a_pipe_keeps_stored_values_and_follows_cells() {
    let input = "store('k', 41)\n\ntext(load('k') + 1)\n\n\
        text('a'); yield_control(); await new Promise((r) => setTimeout(r, 300)); text('b')\n\n\
        :wait 3 10000\n\
        while (true) {}\n\n\
        :terminate 4\n\
        :wait 99\n";
    let output = code_mode(&project_root(), &["repl", "--yield-ms", "200"], input);
    let stdout = text(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "Script completed",
            "42",
            "Script completed",
            "a",
            "Script running with cell ID 3",
            "(cell 3 is still running: `:wait 3` for more output, `:terminate 3` to stop it)",
            "b",
            "Script completed",
            "Script running with cell ID 4",
            "(cell 4 is still running: `:wait 4` for more output, `:terminate 4` to stop it)",
            "Script terminated",
            "code-mode: exec cell 99 not found",
        ],
        "stderr: {}",
        text(&output.stderr)
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "an unknown cell id is an error"
    );
}

#[test]
fn describe_prints_the_exec_description() {
    let output = code_mode(
        &project_root(),
        &["describe", "--tools", "examples/tools.toml"],
        "",
    );
    assert!(output.status.success());
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("Runs JavaScript in a sandboxed code-mode runtime"));
    assert!(stdout.contains("### `find_files`\nLists the files under a directory"));
    assert!(stdout.contains(
        "  find_files(args: {\n    // The directory to search, relative to the examples directory.\n    root: string;"
    ));
    assert!(
        stdout.contains("  count_lines(args: {\n    paths: string[];\n  }): Promise<unknown>;")
    );

    let output = code_mode(
        &project_root(),
        &["describe", "--builtin", "fs", "--json"],
        "",
    );
    let specs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(specs[0]["name"], "exec");
    assert_eq!(specs[0]["type"], "custom");
    assert!(
        specs[0]["description"]
            .as_str()
            .unwrap()
            .contains("### `read_file`")
    );
    assert_eq!(specs[1]["name"], "wait");
}

#[test]
fn serve_jsonl_through_the_python_example() {
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|candidate| Command::new(candidate).arg("--version").output().is_ok())
        .expect("python3 is needed for the JSON-lines example");
    let output = Command::new(python)
        .arg("examples/python_client.py")
        .arg(BIN)
        .current_dir(project_root())
        .output()
        .expect("run the Python client");
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout).lines().collect::<Vec<_>>(),
        [
            "[notify] adding in Python",
            "2 + 3 = 5",
            "status: result, error: None",
            "50"
        ]
    );
}

/// A `serve --jsonl` process driven line by line.
struct JsonlServer {
    child: std::process::Child,
    /// Its stdout, line by line, read on a thread of its own so that every read has a
    /// deadline.
    stdout: std::sync::mpsc::Receiver<String>,
}

/// How long a read of the JSON-lines server may wait for its next line before the test
/// fails instead of hanging.
const LINE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

impl JsonlServer {
    fn start() -> Self {
        Self::start_with(&["serve", "--jsonl", "--in-process"])
    }

    fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn code-mode serve");
        let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let (sender, stdout) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, stdout }
    }

    /// The next line of stdout if one comes within `within`.
    fn line_within(&mut self, within: std::time::Duration) -> Option<serde_json::Value> {
        let line = self.stdout.recv_timeout(within).ok()?;
        Some(serde_json::from_str(&line).unwrap())
    }

    /// The next line of stdout, within [`LINE_DEADLINE`].
    fn line(&mut self) -> String {
        self.stdout
            .recv_timeout(LINE_DEADLINE)
            .unwrap_or_else(|error| {
                panic!("no line from the server within {LINE_DEADLINE:?}: {error}")
            })
    }

    /// Sends one line and returns the next reply (events, e.g. `cell_closed`, are skipped).
    fn ask(&mut self, line: &str) -> serde_json::Value {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        loop {
            let reply = self.line();
            let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
            if reply.get("event").is_none() {
                return reply;
            }
        }
    }

    /// Sends one line without waiting for anything.
    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next line, whatever it is.
    fn next(&mut self) -> serde_json::Value {
        let line = self.line();
        serde_json::from_str(&line).unwrap()
    }

    fn finish(mut self) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        self.child.wait().unwrap()
    }
}

/// The session id in an `open_session` reply.
fn session_id(reply: &serde_json::Value) -> String {
    reply["result"]["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session id in {reply}"))
        .to_owned()
}

/// Asserts that `id` is a session id as `open_session` makes one: `s` and 32 lowercase
/// hex digits (128 random bits).
fn assert_session_id(id: &str) {
    let hex = id.strip_prefix('s').unwrap_or_default();
    assert!(
        hex.len() == 32
            && hex
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')),
        "not `s` and 32 lowercase hex digits: {id:?}"
    );
}

#[test]
fn run_shows_terminal_control_characters_as_escapes_and_json_keeps_them() {
    let scratch = Scratch::new();
    scratch.write(
        "cell.js",
        r#"console.log("\x1b]0;pwned\x07\x1b[2J"); notify("\x1b[31mred\u009b"); text("tab\tand\nnewline"); throw "bye\x1b[0m";"#,
    );
    let output = code_mode(&scratch.0, &["run", "cell.js"], "");
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(
        !stdout.contains('\x1b') && !stdout.contains('\x07'),
        "{stdout:?}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], r"[notify] \x1b[31mred\x9b", "{stdout}");
    assert_eq!(lines[1], r"\x1b]0;pwned\x07\x1b[2J", "{stdout}");
    assert_eq!(lines[2..4], ["tab\tand", "newline"], "{stdout}");
    assert_eq!(lines[6..8], ["Script error:", r"bye\x1b[0m"], "{stdout}");

    // JSON output keeps the exact text.
    let output = code_mode(&scratch.0, &["run", "cell.js", "--json"], "");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["notifications"][0], "\x1b[31mred\u{9b}");
    assert_eq!(
        report["response"]["content_items"][0]["text"],
        "\x1b]0;pwned\x07\x1b[2J"
    );
    assert_eq!(report["response"]["error_text"], "bye\x1b[0m");
}

#[test]
fn lone_surrogates_in_tool_arguments_and_results_become_replacement_characters() {
    let scratch = Scratch::new();
    // The command tool answers with what JavaScript's JSON.stringify writes for a lone
    // half: an escape that strict JSON parsers refuse.
    scratch.write(
        "tools.toml",
        r#"
[[tool]]
name = "half"
description = "Answers with a lone surrogate half, escaped."
command = ["sh", "-c", "cat > /dev/null; cat half.json"]

[[tool]]
name = "echo_input"
description = "Answers with its input."
command = ["cat"]
"#,
    );
    scratch.write("half.json", r#"{"s": "ok\ud83d"}"#);
    scratch.write(
        "cell.js",
        r#"
        const half = await tools.half();
        text(JSON.stringify(half.s));
        const echoed = await tools.echo_input({ a: "😀😀".slice(0, 3) });
        text(JSON.stringify(echoed.a));
        "#,
    );
    let output = code_mode(
        &scratch.0,
        &["run", "cell.js", "--tools", "tools.toml", "--json"],
        "",
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("one JSON object: {}", text(&output.stderr)));
    assert_eq!(report["status"], "Script completed", "{report}");
    let items = &report["response"]["content_items"];
    assert_eq!(items[0]["text"], "\"ok\u{fffd}\"", "{report}");
    assert_eq!(items[1]["text"], "\"😀\u{fffd}\"", "{report}");
}

#[test]
fn serve_jsonl_accepts_lone_surrogate_escapes_in_tool_results() {
    let mut server = JsonlServer::start();
    let session = session_id(&server.ask(r#"{"id": 1, "method": "open_session", "params": {}}"#));
    let stdin = server.child.stdin.as_mut().unwrap();
    writeln!(
        stdin,
        r#"{{"id": 2, "method": "exec", "params": {{"session": "{session}", "tools": [{{"name": "half"}}], "source": "const r = await tools.half({{ a: '😀😀'.slice(0, 3) }}); text(JSON.stringify(r));"}}}}"#
    )
    .unwrap();
    stdin.flush().unwrap();
    let call = loop {
        let line = server.line();
        let message: serde_json::Value = serde_json::from_str(&line).unwrap();
        if message["event"] == "tool_call" {
            break message;
        }
    };
    // The argument's cut half arrives as U+FFFD.
    assert_eq!(call["input"]["a"], "😀\u{fffd}", "{call}");
    // The client answers as JavaScript's JSON.stringify would write a lone half.
    let reply = server.ask(&format!(
        r#"{{"method": "tool_result", "params": {{"call": {}, "result": {{"s": "x\ud800y"}}}}}}"#,
        call["call"]
    ));
    assert_eq!(reply["id"], 2, "{reply}");
    assert_eq!(
        reply["result"]["response"]["content_items"][0]["text"], "{\"s\":\"x\u{fffd}y\"}",
        "{reply}"
    );
    assert!(server.finish().success());
}

#[test]
fn serve_jsonl_writes_answers_and_events_in_the_order_the_session_produced_them() {
    for args in [
        &["serve", "--jsonl", "--in-process"][..],
        &["serve", "--jsonl"][..],
    ] {
        let mut server = JsonlServer::start_with(args);
        let session =
            session_id(&server.ask(r#"{"id": 0, "method": "open_session", "params": {}}"#));
        for round in 1..=15 {
            server.send(&format!(
                r#"{{"id": {round}, "method": "exec", "params": {{"session": "{session}", "source": "text('before'); yield_control(); notify('after yield {round}');"}}}}"#
            ));
            // The answer that yielded, then the notification made after the yield.
            let mut order = Vec::new();
            while order.len() < 2 {
                let line = server.next();
                if line["id"] == round {
                    assert_eq!(line["result"]["response"]["type"], "yielded", "{line}");
                    order.push("answer".to_owned());
                } else if line["event"] == "notify" {
                    order.push(line["text"].as_str().unwrap_or_default().to_owned());
                }
            }
            assert_eq!(
                order,
                ["answer".to_owned(), format!("after yield {round}")],
                "{args:?}, round {round}"
            );
            let cell_id = round.to_string();
            let reply = server.ask(&format!(
                r#"{{"id": "w{round}", "method": "wait", "params": {{"session": "{session}", "cell_id": "{cell_id}"}}}}"#
            ));
            assert_eq!(reply["result"]["type"], "result", "{reply}");
        }
        assert!(server.finish().success());
    }
}

#[test]
fn serve_jsonl_describes_tools_with_their_input_schemas() {
    let mut server = JsonlServer::start();
    let reply = server.ask(
        r#"{"id": 1, "method": "describe", "params": {"tools": [{"name": "add", "description": "Adds two numbers.", "input_schema": {"type": "object", "required": ["a"], "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}]}}"#,
    );
    let description = reply["result"]["description"]
        .as_str()
        .expect("a description");
    assert!(
        description
            .contains("  add(args: {\n    a: number;\n    b?: number;\n  }): Promise<unknown>;"),
        "{description}"
    );
    assert_eq!(reply["result"]["tools"][0]["name"], "exec");
    assert_eq!(reply["result"]["tools"][1]["name"], "wait");
    assert!(server.finish().success());
}

#[test]
fn serve_jsonl_answers_errors_and_keeps_going() {
    let mut server = JsonlServer::start();
    let reply = server.ask("not json");
    assert_eq!(
        (reply["id"].clone(), reply["error"]["code"].clone()),
        (serde_json::Value::Null, "invalid_json".into())
    );
    assert_eq!(
        server.ask(r#"{"id": 1}"#)["error"]["code"],
        "invalid_request"
    );
    assert_eq!(
        server.ask(r#"{"id": 2, "method": "frobnicate"}"#)["error"]["code"],
        "unknown_method"
    );
    let reply =
        server.ask(r#"{"id": 3, "method": "exec", "params": {"session": "s9", "source": "1"}}"#);
    assert_eq!(reply["error"]["code"], "unknown_session");
    assert_eq!(reply["error"]["message"], "no open session `s9`");
    let session = session_id(&server.ask(r#"{"id": 4, "method": "open_session", "params": {}}"#));
    assert_session_id(&session);
    let reply = server.ask(
        &serde_json::json!({"id": 5, "method": "wait", "params": {"session": session, "cell_id": "7"}})
            .to_string(),
    );
    assert_eq!(reply["id"], 5);
    assert_eq!(reply["result"]["missing_cell"], true);
    assert_eq!(reply["result"]["error_text"], "exec cell 7 not found");
    assert_eq!(reply["result"]["failure"], "not_found");
    let reply = server.ask(
        &serde_json::json!({"id": 6, "method": "exec", "params": {"session": session}}).to_string(),
    );
    assert_eq!(reply["error"]["code"], "invalid_params");
    assert_eq!(reply["error"]["message"], "missing field `source`");
    // Typed parameters: an error names the field at fault.
    let reply = server.ask(
        r#"{"id": 61, "method": "open_session", "params": {"limits": {"heap_bytes": "big"}}}"#,
    );
    assert_eq!(reply["error"]["code"], "invalid_params");
    assert_eq!(
        reply["error"]["message"],
        "`limits.heap_bytes`: invalid type: string \"big\", expected u64"
    );
    let reply = server.ask(
        &serde_json::json!({"id": 62, "method": "exec", "params": {"session": session, "source": "1", "tools": [{"name": "t", "kind": "magic"}]}})
            .to_string(),
    );
    assert_eq!(reply["error"]["code"], "invalid_params");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("`tools[0].kind`: unknown variant `magic`"),
        "{reply}"
    );
    let reply = server.ask(
        &serde_json::json!({"id": 63, "method": "wait", "params": {"session": session, "cell": "1"}})
            .to_string(),
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("`cell`: unknown field `cell`, expected one of `session`, `cell_id`"),
        "{reply}"
    );
    let reply = server.ask(
        &serde_json::json!({"id": "seven", "method": "exec", "params": {"session": session, "source": "text('ok')"}})
            .to_string(),
    );
    assert_eq!(reply["id"], "seven");
    assert_eq!(
        reply["result"]["response"]["content_items"][0]["text"],
        "ok"
    );
    assert!(server.finish().success());
}

#[test]
fn errors_are_one_clear_line_and_a_non_zero_exit() {
    let scratch = Scratch::new();
    scratch.write("ok.js", "text(1)");
    scratch.write("pragma.js", "// @exec: {\"timeout\": 5}\ntext(1)");
    scratch.write(
        "unknown_field.toml",
        "[[tool]]\nname = \"x\"\ncomand = \"true\"\n",
    );
    scratch.write(
        "wrong_type.toml",
        "[[tool]]\nname = \"x\"\ncommand = \"true\"\ntimeout_ms = \"soon\"\n",
    );
    scratch.write(
        "missing_command.toml",
        "[[tool]]\nname = \"x\"\ncommand = [\"surely-not-a-command-xyz\"]\n",
    );
    let dir = scratch.0.display().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["run", "nope.js"],
            "code-mode: cannot read nope.js: No such file or directory (os error 2)".into(),
        ),
        (
            vec!["run", "pragma.js"],
            "code-mode: exec pragma only supports `yield_time_ms` and `max_output_tokens`; got `timeout`".into(),
        ),
        (
            vec!["run", "ok.js", "--tools", "missing.toml"],
            "code-mode: cannot read the tools file missing.toml: No such file or directory (os error 2)".into(),
        ),
        (
            vec!["run", "ok.js", "--tools", "unknown_field.toml"],
            "code-mode: bad tools file unknown_field.toml: line 3, column 1: unknown field `comand`, expected one of `name`, `description`, `command`, `timeout_ms`, `cwd`, `env`, `env_vars`, `kind`, `input_schema`, `output_schema`, `deferred`, `on_interrupt`, `approval`, `approval_reason`".into(),
        ),
        (
            vec!["run", "ok.js", "--tools", "wrong_type.toml"],
            "code-mode: bad tools file wrong_type.toml: line 4, column 14: invalid type: string \"soon\", expected u64".into(),
        ),
        (
            vec!["describe", "--tools", "missing_command.toml"],
            "code-mode: bad tools file missing_command.toml: tool `x`: command `surely-not-a-command-xyz` was not found".into(),
        ),
        (
            vec!["run", "ok.js", "--builtin", "net"],
            "code-mode: unknown built-in tool set `net` (known: fs, shell)".into(),
        ),
        (
            vec!["run", "ok.js", "--runtime", "127.0.0.1:9", "--runtime-ca", "ca.pem"],
            "code-mode: --runtime-ca, --runtime-cert and --runtime-key go together (mutual TLS)"
                .into(),
        ),
    ];
    for (args, expected) in cases {
        let output = code_mode(&scratch.0, &args, "");
        assert_eq!(output.status.code(), Some(2), "{args:?} in {dir}");
        assert_eq!(text(&output.stderr).trim_end(), expected, "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for subcommand in ["run", "repl", "describe", "serve"] {
        let output = code_mode(&project_root(), &[subcommand, "--help"], "");
        assert!(output.status.success(), "{subcommand}");
        assert!(
            text(&output.stdout).contains(&format!("Usage: code-mode {subcommand}")),
            "{subcommand}"
        );
    }
    let output = code_mode(&project_root(), &["run"], "");
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("<FILE>"));
}

#[test]
fn a_command_tool_that_answers_as_it_reads_takes_a_large_input() {
    // `cat` writes its output while it reads: an input larger than the pipes between us
    // must be written while the output is read, or both sides wait for each other.
    let scratch = Scratch::new();
    scratch.write(
        "tools.toml",
        "[[tool]]\nname = \"cat\"\ncommand = [\"cat\"]\ntimeout_ms = 60000\n",
    );
    scratch.write(
        "cell.js",
        "const back = await tools.cat({ big: \"x\".repeat(3000000) }); text(back.big.length);",
    );
    let output = code_mode(
        &scratch.0,
        &["run", "cell.js", "--tools", "tools.toml", "--json"],
        "",
    );
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(r#"{"type":"input_text","text":"3000000"}"#),
        "{stdout}"
    );
}

#[test]
fn serve_jsonl_admits_preempts_interrupts_and_searches_deferred_tools() {
    for args in [
        &["serve", "--jsonl", "--in-process"][..],
        &["serve", "--jsonl"][..],
    ] {
        let mut server = JsonlServer::start_with(args);
        let session =
            session_id(&server.ask(r#"{"id": 0, "method": "open_session", "params": {}}"#));
        // An exec that waits on the client's tool: admitted first, then the tool call,
        // carrying the exec's tool call id.
        server.send(
            &serde_json::json!({"id": 1, "method": "exec", "params": {"session": session, "tool_call_id": "call_9", "yield_time_ms": 60000, "tools": [{"name": "ask"}], "source": "text('asked'); const a = await tools.ask(); text('answer ' + a);"}})
                .to_string(),
        );
        let admitted = server.next();
        assert_eq!(
            (
                &admitted["event"],
                &admitted["request"],
                &admitted["cell_id"]
            ),
            (&"admitted".into(), &1.into(), &"1".into()),
            "{admitted}"
        );
        let call = loop {
            let line = server.next();
            if line["event"] == "tool_call" {
                break line;
            }
        };
        assert_eq!(call["exec_call_id"], "call_9", "{call}");
        // Preempting the cell's observation answers the exec at once; the cell goes on.
        server.send(
            &serde_json::json!({"id": 2, "method": "preempt", "params": {"session": session, "cell_id": "1"}})
                .to_string(),
        );
        let mut replies = std::collections::HashMap::new();
        while replies.len() < 2 {
            let line = server.next();
            if let Some(id) = line.get("id").and_then(serde_json::Value::as_u64) {
                replies.insert(id, line);
            }
        }
        assert_eq!(
            replies[&2]["result"]["preempted"], true,
            "{:?}",
            replies[&2]
        );
        let response = &replies[&1]["result"]["response"];
        assert_eq!(response["type"], "yielded", "{response}");
        assert_eq!(response["content_items"][0]["text"], "asked", "{response}");
        server.send(&format!(
            r#"{{"method": "tool_result", "params": {{"call": {}, "result": 5}}}}"#,
            call["call"]
        ));
        let rest = server.ask(
            &serde_json::json!({"id": 3, "method": "wait", "params": {"session": session, "cell_id": "1"}})
                .to_string(),
        );
        assert_eq!(rest["result"]["type"], "result", "{rest}");
        assert_eq!(
            rest["result"]["content_items"][0]["text"], "answer 5",
            "{rest}"
        );
        // Nothing observes the cell any more: a preempt finds nothing.
        let idle = server.ask(
            &serde_json::json!({"id": 4, "method": "preempt", "params": {"session": session, "cell_id": "1"}})
                .to_string(),
        );
        assert_eq!(idle["result"]["preempted"], false, "{idle}");
        assert!(server.finish().success());
        // Interrupt and deferred tools on a fresh server.
        let mut server = JsonlServer::start_with(args);
        let session =
            session_id(&server.ask(r#"{"id": 0, "method": "open_session", "params": {}}"#));
        let spinning = server.ask(
            &serde_json::json!({"id": 1, "method": "exec", "params": {"session": session, "yield_time_ms": 50, "source": "while (true) {}"}})
                .to_string(),
        );
        assert_eq!(
            spinning["result"]["response"]["type"], "yielded",
            "{spinning}"
        );
        let interrupted = server.ask(
            &serde_json::json!({"id": 2, "method": "interrupt", "params": {"session": session}})
                .to_string(),
        );
        assert_eq!(
            interrupted["result"],
            serde_json::json!({ "cell_ids": ["1"] }),
            "{interrupted}"
        );
        let waited = server.ask(
            &serde_json::json!({"id": 3, "method": "wait", "params": {"session": session, "cell_id": "1"}})
                .to_string(),
        );
        assert_eq!(waited["result"]["type"], "terminated", "{waited}");
        let found = server.ask(
            &serde_json::json!({"id": 4, "method": "exec", "params": {"session": session, "tools": [{"name": "get_weather", "description": "Current weather for a city.", "deferred": true}, {"name": "read_file", "description": "Reads a file.", "deferred": true}], "source": "const r = await tools.tool_search({ query: 'weather' }); text(r.tools.map((t) => t.name).join(','));"}})
                .to_string(),
        );
        assert_eq!(
            found["result"]["response"]["content_items"][0]["text"], "get_weather",
            "{found}"
        );
        assert!(server.finish().success());
    }
}

#[test]
fn serve_jsonl_gives_stored_values_and_opens_a_session_with_them() {
    // Over the runtime process: the host's copy answers `stored_values`.
    let mut server = JsonlServer::start_with(&["serve", "--jsonl"]);
    let session = session_id(&server.ask(r#"{"id": 1, "method": "open_session", "params": {}}"#));
    let reply = server.ask(
        &serde_json::json!({"id": 2, "method": "exec", "params": {"session": session, "source": "store('n', 1); store('o', {a: [true, null], s: 'é'});"}})
            .to_string(),
    );
    let wall_time_ms = &reply["result"]["response"]["wall_time_ms"];
    assert!(wall_time_ms.as_f64().is_some_and(|ms| ms > 0.0), "{reply}");
    let stored = server.ask(
        &serde_json::json!({"id": 3, "method": "stored_values", "params": {"session": session}})
            .to_string(),
    );
    assert_eq!(
        stored["result"],
        serde_json::json!({"stored_values": {"n": 1, "o": {"a": [true, null], "s": "é"}}})
    );
    // What it gave opens another session with the same values.
    let values = stored["result"]["stored_values"].to_string();
    let second = session_id(&server.ask(&format!(
        r#"{{"id": 4, "method": "open_session", "params": {{"stored_values": {values}, "max_stored_bytes": 100}}}}"#
    )));
    let reply = server.ask(
        &serde_json::json!({"id": 5, "method": "exec", "params": {"session": second, "source": "text(JSON.stringify([load('n'), load('o')])); try { store('big', 'x'.repeat(100)); } catch (e) { text(String(e)); }"}})
            .to_string(),
    );
    let texts: Vec<&str> = reply["result"]["response"]["content_items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["text"].as_str().expect("a text"))
        .collect();
    assert_eq!(
        texts,
        [
            r#"[1,{"a":[true,null],"s":"é"}]"#,
            r#"Unable to store "big": the session's stored values would take 134 bytes, more than their limit of 100 bytes. Store less, or store smaller values."#
        ],
        "{reply}"
    );
    let unknown =
        server.ask(r#"{"id": 6, "method": "stored_values", "params": {"session": "s9"}}"#);
    assert_eq!(unknown["error"]["code"], "unknown_session");
    assert!(server.finish().success());
}

/// The flags that had no test: `run --max-output-tokens` (the observation's budget),
/// `run --save-media DIR` (each image and clip written with its bytes), and
/// `serve --jsonl --max-stored-bytes` (the cap of every session it opens).
#[test]
fn output_budget_saved_media_and_stored_value_cap_flags() {
    let scratch = Scratch::new();
    scratch.write("long.js", "text('x'.repeat(100));");
    let output = code_mode(
        &scratch.0,
        &["run", "long.js", "--json", "--max-output-tokens", "5"],
        "",
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    let items = report["response"]["content_items"].as_array().unwrap();
    assert_eq!(items[0]["text"], "x".repeat(20), "5 tokens of output");
    assert!(
        items[1]["text"]
            .as_str()
            .unwrap()
            .starts_with("[... output truncated"),
        "{report}"
    );

    // A 1×1 PNG and a 50 ms WAV (8 kHz, 8-bit mono), as data URLs.
    use base64::Engine;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let decode = |data: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap()
    };
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let samples = 400u32;
    let mut clip = Vec::new();
    clip.extend_from_slice(b"RIFF");
    clip.extend_from_slice(&(36 + samples).to_le_bytes());
    clip.extend_from_slice(b"WAVEfmt ");
    clip.extend_from_slice(&16u32.to_le_bytes());
    clip.extend_from_slice(&1u16.to_le_bytes()); // PCM
    clip.extend_from_slice(&1u16.to_le_bytes()); // mono
    clip.extend_from_slice(&8000u32.to_le_bytes()); // samples per second
    clip.extend_from_slice(&8000u32.to_le_bytes()); // bytes per second
    clip.extend_from_slice(&1u16.to_le_bytes()); // block alignment
    clip.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    clip.extend_from_slice(b"data");
    clip.extend_from_slice(&samples.to_le_bytes());
    clip.extend((0..samples).map(|index| (index % 256) as u8));
    let wav = encode(&clip);
    scratch.write(
        "media.js",
        &format!(
            "image('data:image/png;base64,{png}'); audio('data:audio/wav;base64,{wav}'); text('done');"
        ),
    );
    let media = scratch.0.join("media");
    let output = code_mode(
        &scratch.0,
        &["run", "media.js", "--save-media", media.to_str().unwrap()],
        "",
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert_eq!(
        std::fs::read(media.join("image-1.png")).expect("the saved image"),
        decode(png)
    );
    assert_eq!(
        std::fs::read(media.join("audio-2.wav")).expect("the saved clip"),
        clip
    );
    assert!(
        stdout.contains(&format!("saved to {}", media.join("image-1.png").display())),
        "{stdout}"
    );

    // The MCP server over stdio, one exec: its session has the cap given.
    let requests = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"exec","arguments":{"code":"store('a', 12345); try { store('b', 'xy'); } catch (e) { text(String(e)); }"}}}"#,
    ];
    let output = code_mode(
        &scratch.0,
        &["mcp", "--max-stored-bytes", "10"],
        &(requests.join("\n") + "\n"),
    );
    let stdout = text(&output.stdout);
    let answer: serde_json::Value = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|message| message["id"] == 2)
        .unwrap_or_else(|| panic!("no answer to the exec: {stdout}{}", text(&output.stderr)));
    let shown = answer["result"]["content"].to_string();
    assert!(
        shown.contains(r#"Unable to store \"b\": the session's stored values would take 11 bytes, more than their limit of 10 bytes."#),
        "{answer}"
    );
}
