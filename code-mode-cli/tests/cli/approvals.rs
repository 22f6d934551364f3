//! Calls that wait on a person through `code-mode serve --jsonl --state-dir` and `code-mode
//! approvals` (issue 86): a call of the driver's own tool (`approval = "always"` in its
//! tools file) and of a client's tool (`"approval": "always"`) is announced as
//! `approval_required`, never made before an approval (the tool's own log and the client's
//! `tool_call`s show it), approved with an edited input over JSON lines, approved from the
//! command line while the server is down (killed with -9), and denied; a decision is
//! taken once, and only for the client's own sessions.

use super::{BIN, JsonlServer};
use code_mode_conformance::Scratch;
use serde_json::{Value, json};
use std::process::Command;

/// The driver's tool: appends its input to a log and answers `true`.
fn tools_file(dir: &std::path::Path) -> std::path::PathBuf {
    let log = dir.join("mail.log");
    let path = dir.join("tools.toml");
    std::fs::write(
        &path,
        format!(
            "[[tool]]\nname = \"send_mail\"\ncommand = [\"sh\", \"-c\", \"cat >> {log}; echo >> {log}; echo true\"]\napproval = \"always\"\napproval_reason = \"it sends mail\"\n",
            log = log.display()
        ),
    )
    .expect("written");
    path
}

fn start_server(dir: &std::path::Path, tools: &std::path::Path) -> JsonlServer {
    JsonlServer::start_with(&[
        "serve",
        "--jsonl",
        "--state-dir",
        dir.join("state").to_str().expect("UTF-8"),
        "--tools",
        tools.to_str().expect("UTF-8"),
    ])
}

/// What the client saw: events by name, and the reply to each request.
#[derive(Default)]
struct Seen {
    events: Vec<Value>,
}

impl Seen {
    /// Sends request `id` and reads until its reply, keeping the events on the way.
    fn ask(&mut self, server: &mut JsonlServer, id: u64, method: &str, params: &Value) -> Value {
        server.send(&json!({"id": id, "method": method, "params": params}).to_string());
        loop {
            let line = server.next();
            if line.get("event").is_some() {
                self.events.push(line);
            } else if line["id"] == id {
                return line;
            }
        }
    }

    /// Reads until an event `name` comes whose `tool` is `tool`; it, taken out.
    fn until_event(&mut self, server: &mut JsonlServer, name: &str, tool: &str) -> Value {
        loop {
            if let Some(at) = self
                .events
                .iter()
                .position(|event| event["event"] == name && event["tool"] == tool)
            {
                return self.events.remove(at);
            }
            let line = server.next();
            assert!(
                line.get("event").is_some(),
                "a reply nobody asked for: {line}"
            );
            self.events.push(line);
        }
    }

    fn count(&self, name: &str, tool: &str) -> usize {
        self.events
            .iter()
            .filter(|event| event["event"] == name && event["tool"] == tool)
            .count()
    }
}

/// The texts of an observation's reply.
fn texts(reply: &Value) -> Vec<String> {
    let result = &reply["result"];
    let response = result.get("response").unwrap_or(result);
    response["content_items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn approvals_command(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("approvals")
        .args(args)
        .args(["--state-dir", dir.join("state").to_str().expect("UTF-8")])
        .output()
        .expect("code-mode approvals runs")
}

/// Ends the server's input and waits for it to exit, within 30 s (else kills it and fails).
fn finish_within(mut server: JsonlServer) -> std::process::ExitStatus {
    drop(server.child.stdin.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait().expect("waited") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = server.child.kill();
            panic!("the server did not stop within 30 s of the end of its input");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

const CELL: &str = "const mail = await tools.send_mail({ to: 'a' }); text('mail ' + JSON.stringify(mail)); \
     try { text('pay ' + JSON.stringify(await tools.pay({ n: 1 }))); } catch (error) { text('pay failed ' + String(error)); } \
     try { await tools.pay({ n: 3 }); } catch (error) { text('second ' + String(error)); }";

#[test]
fn serve_jsonl_holds_calls_for_approval_across_a_kill_and_code_mode_approvals_decides_them() {
    let scratch = Scratch::new();
    let tools = tools_file(&scratch.0);
    let log = scratch.0.join("mail.log");
    let mut server = start_server(&scratch.0, &tools);
    let mut seen = Seen::default();
    let opened = seen.ask(&mut server, 1, "open_session", &json!({}));
    let session = opened["result"]["session"]
        .as_str()
        .expect("a session")
        .to_owned();
    let token = opened["result"]["resume_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let pay = json!([{"name": "pay", "approval": "always", "approval_reason": "it moves money"}]);
    // An hour's observation, ended by the call that waits, with the line the model reads.
    let started = seen.ask(
        &mut server,
        2,
        "exec",
        &json!({"session": session, "source": CELL, "tools": pay, "yield_time_ms": 3_600_000}),
    );
    assert_eq!(
        texts(&started),
        [
            "Waiting for approval: `send_mail` (call tool-1), because: it sends mail. The cell goes on when a person decides."
        ],
        "{started}"
    );
    let required = seen.until_event(&mut server, "approval_required", "send_mail");
    assert_eq!(required["input"], json!({"to": "a"}));
    assert_eq!(required["reason"], "it sends mail");
    assert!(!log.exists(), "the tool ran before its approval");
    let listed = seen.ask(&mut server, 3, "list_approvals", &json!({}));
    let approvals = listed["result"]["approvals"]
        .as_array()
        .expect("a list")
        .clone();
    assert_eq!(approvals.len(), 1, "{listed}");
    let mail_id = approvals[0]["approval"].as_str().expect("an id").to_owned();
    assert_eq!(required["approval"], mail_id);

    let approved = seen.ask(
        &mut server,
        4,
        "approve",
        &json!({"approval": mail_id, "input": {"to": "b"}}),
    );
    assert_eq!(approved["result"]["decision"], "approved", "{approved}");
    let again = seen.ask(&mut server, 5, "approve", &json!({"approval": mail_id}));
    assert_eq!(again["error"]["code"], "unknown_approval", "{again}");
    // The client's tool waits next: never announced as a call before its approval.
    let pay_required = seen.until_event(&mut server, "approval_required", "pay");
    assert_eq!(pay_required["input"], json!({"n": 1}));
    assert_eq!(
        std::fs::read_to_string(&log).expect("the tool ran"),
        "{\"to\":\"b\"}\n",
        "the input approved, once"
    );
    assert_eq!(seen.count("tool_call", "pay"), 0);
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");

    // While no server runs: listed and approved from the command line.
    let listed = approvals_command(&scratch.0, &["list"]);
    assert!(listed.status.success(), "{listed:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (&lines[0]["tool"], &lines[0]["session"], &lines[0]["front"]),
        (&json!("pay"), &json!(session), &json!("jsonl"))
    );
    let pay_id = lines[0]["approval"].as_str().expect("an id").to_owned();

    // Restarted: the call still waits (its restored announcement is an approval's, not a
    // call's), until the command line approves it while the server runs.
    let mut server = start_server(&scratch.0, &tools);
    let mut seen = Seen::default();
    let resumed = seen.ask(
        &mut server,
        1,
        "resume_session",
        &json!({"session": session, "resume_token": token}),
    );
    assert_eq!(resumed["result"]["session"], json!(session), "{resumed}");
    assert_eq!(
        seen.count("tool_call", "pay"),
        0,
        "sent without its approval"
    );
    let announced = seen.until_event(&mut server, "approval_required", "pay");
    assert_eq!(
        announced["approval"],
        json!(pay_id),
        "announced again as it waits"
    );
    let decided = approvals_command(&scratch.0, &["approve", &pay_id]);
    assert!(decided.status.success(), "{decided:?}");
    let twice = approvals_command(&scratch.0, &["deny", &pay_id, "--message", "late"]);
    assert_eq!(twice.status.code(), Some(2), "{twice:?}");
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("is waiting"),
        "{twice:?}"
    );
    let call = seen.until_event(&mut server, "tool_call", "pay");
    assert_eq!(call["input"], json!({"n": 1}));
    server.send(
        &json!({"method": "tool_result", "params": {"call": call["call"], "result": "paid"}})
            .to_string(),
    );
    // The cell's next call of the client's tool, after the restart and before any new
    // `exec` that names the tool: it waits too (the tool's approval was kept). The `wait`
    // rebuilds the cell and ends when that call waits.
    let waited = seen.ask(
        &mut server,
        20,
        "wait",
        &json!({"session": session, "cell_id": "1", "yield_time_ms": 3_600_000}),
    );
    let mut output = texts(&waited);
    let second = seen.until_event(&mut server, "approval_required", "pay");
    assert_eq!(second["input"], json!({"n": 3}));
    let denied = seen.ask(
        &mut server,
        2,
        "deny",
        &json!({"approval": second["approval"], "message": "one is enough"}),
    );
    assert_eq!(denied["result"]["decision"], "denied", "{denied}");
    for id in 3.. {
        let reply = seen.ask(
            &mut server,
            id,
            "wait",
            &json!({"session": session, "cell_id": "1", "yield_time_ms": 10_000}),
        );
        output.extend(texts(&reply));
        if reply["result"]["type"] == "result" {
            break;
        }
    }
    assert!(output.contains(&"pay \"paid\"".to_owned()), "{output:?}");
    assert!(
        output.contains(
            &"second denied: the call of `pay` was not approved, so it did not run: one is enough"
                .to_owned()
        ),
        "{output:?}"
    );
    assert_eq!(seen.count("tool_call", "pay"), 0, "announced once");

    // Denied over JSON lines: the tool never runs.
    let started = seen.ask(
        &mut server,
        100,
        "exec",
        &json!({"session": session, "source": "try { await tools.pay({ n: 2 }); } catch (error) { text(String(error)); }", "tools": pay, "yield_time_ms": 3_600_000}),
    );
    assert_eq!(
        started["result"]["response"]["type"], "yielded",
        "{started}"
    );
    let cell = started["result"]["cell_id"].clone();
    let required = seen.until_event(&mut server, "approval_required", "pay");
    let denied = seen.ask(
        &mut server,
        101,
        "deny",
        &json!({"approval": required["approval"], "message": "over budget"}),
    );
    assert_eq!(denied["result"]["decision"], "denied", "{denied}");
    let done = seen.ask(
        &mut server,
        102,
        "wait",
        &json!({"session": session, "cell_id": cell, "yield_time_ms": 10_000}),
    );
    assert_eq!(
        texts(&done),
        ["denied: the call of `pay` was not approved, so it did not run: over budget"],
        "{done}"
    );
    assert_eq!(
        seen.count("tool_call", "pay"),
        0,
        "a denied call is never announced"
    );
    assert!(finish_within(server).success());
    assert_eq!(
        std::fs::read_to_string(&log).expect("the log"),
        "{\"to\":\"b\"}\n"
    );
}

#[test]
fn a_tool_that_needs_approval_without_a_state_store_is_refused_at_start() {
    let scratch = Scratch::new();
    let tools = tools_file(&scratch.0);
    let output = Command::new(BIN)
        .args([
            "serve",
            "--jsonl",
            "--tools",
            tools.to_str().expect("UTF-8"),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("needs approvals"),
        "{output:?}"
    );
}

/// `code-mode run` keeps no approvals: a call that needs one is refused, never made (the
/// tool's own log stays empty), and the model reads why.
#[test]
fn run_refuses_a_call_that_needs_approval_and_never_makes_it() {
    let scratch = Scratch::new();
    let tools = tools_file(&scratch.0);
    let cell = scratch.0.join("cell.js");
    std::fs::write(
        &cell,
        "try { await tools.send_mail({ to: 'a' }); } catch (error) { text(String(error)); }",
    )
    .expect("written");
    let output = Command::new(BIN)
        .args(["run", cell.to_str().expect("UTF-8"), "--json", "--tools"])
        .arg(&tools)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("refused: the call of `send_mail` needs a person's approval, and this session keeps no approvals (they need a state store), so it did not run"),
        "{output:?}"
    );
    assert!(!scratch.0.join("mail.log").exists(), "the tool ran");
}

/// A clean stop (end of input) keeps the session and the approval its cell waits on: the
/// command line lists it while no server runs, and the restarted server announces the same
/// approval again when the session is resumed, and stops cleanly again while it waits.
#[test]
fn a_clean_stop_keeps_the_approvals_its_kept_cells_wait_on() {
    let scratch = Scratch::new();
    let tools = tools_file(&scratch.0);
    let mut server = start_server(&scratch.0, &tools);
    let mut seen = Seen::default();
    let opened = seen.ask(&mut server, 1, "open_session", &json!({}));
    let session = opened["result"]["session"]
        .as_str()
        .expect("a session")
        .to_owned();
    let token = opened["result"]["resume_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    seen.ask(
        &mut server,
        2,
        "exec",
        &json!({"session": session, "source": "await tools.send_mail({ to: 'a' });", "yield_time_ms": 3_600_000}),
    );
    let required = seen.until_event(&mut server, "approval_required", "send_mail");
    assert!(finish_within(server).success());

    let listed = approvals_command(&scratch.0, &["list"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{listed:?}");
    assert_eq!(lines[0]["approval"], required["approval"]);

    for _ in 0..2 {
        let mut server = start_server(&scratch.0, &tools);
        let mut seen = Seen::default();
        let resumed = seen.ask(
            &mut server,
            1,
            "resume_session",
            &json!({"session": session, "resume_token": token}),
        );
        assert_eq!(resumed["result"]["session"], json!(session), "{resumed}");
        let again = seen.until_event(&mut server, "approval_required", "send_mail");
        assert_eq!(again["approval"], required["approval"], "the same approval");
        assert!(finish_within(server).success());
    }
    assert!(!scratch.0.join("mail.log").exists(), "the tool ran");
}
