//! `code-mode serve --jsonl --state-dir`: a server killed with SIGKILL while its cells wait
//! on calls, started again on the same directory, goes on with them. Each cell's whole
//! output, across both processes, is what a run without the kill gives; no call is
//! announced twice (only announced again, marked `restored`, while it waits for its
//! answer); the stored values are whole.

use super::JsonlServer;
use code_mode_conformance::Scratch;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// Three cells: parallel calls, a timer, the clock and the random numbers in arguments, a
/// yield, and stored values written before and after the kill.
const CELLS: [&str; 3] = [
    r"store('a_before', 1); text('A start');
      const t = Date.now();
      const [x, y] = await Promise.all([tools.work({cell: 'A', n: 1, t}), tools.work({cell: 'A', n: 2})]);
      text('A got ' + x + ' ' + y);
      await new Promise((resolve) => setTimeout(resolve, 5));
      const z = await tools.work({cell: 'A', n: 3});
      store('a_after', z);
      text('A t=' + t + ' z=' + z);",
    r"const r = String(Math.random()); text('B start');
      const v = await tools.work({cell: 'B', n: 1, r});
      text('B got ' + v + ' r=' + r);",
    r"text('C'); yield_control();
      const v = await tools.work({cell: 'C', n: 1});
      text('C got ' + v);",
];

/// The client's side: it answers each call from its argument, and keeps what it saw.
#[derive(Default)]
struct Client {
    /// Output texts by cell, in the order they came.
    output: BTreeMap<String, Vec<String>>,
    /// Announcements of each call (cell, call id) that were not marked restored.
    announced: HashMap<(String, String), usize>,
    /// Announcements of each call marked restored (at most one per restart).
    restored: HashMap<(String, String), usize>,
    /// Calls announced (first or again) and not answered yet: client id → (cell, input).
    waiting: BTreeMap<String, (String, Value)>,
    /// Each call's first argument, by (cell, call id).
    inputs: HashMap<(String, String), Value>,
    /// Answers to requests, by id.
    replies: HashMap<u64, Value>,
}

impl Client {
    /// Takes one line in.
    fn take(&mut self, line: Value) {
        match line.get("event").and_then(Value::as_str) {
            Some("tool_call") => {
                let cell = line["cell_id"].as_str().expect("a cell").to_owned();
                let call_id = line["call_id"].as_str().expect("a call id").to_owned();
                let key = (cell.clone(), call_id);
                let counted = if line.get("restored") == Some(&Value::Bool(true)) {
                    &mut self.restored
                } else {
                    &mut self.announced
                };
                *counted.entry(key.clone()).or_default() += 1;
                let input = line["input"].clone();
                if let Some(first) = self.inputs.get(&key) {
                    assert_eq!(
                        first, &input,
                        "a call announced again with another argument"
                    );
                }
                self.inputs.insert(key, input.clone());
                let id = line["call"].as_str().expect("an id").to_owned();
                self.waiting.insert(id, (cell, input));
            }
            Some(_) => {}
            None => {
                let id = line["id"].as_u64().expect("a request id");
                let result = line.get("result").cloned().unwrap_or_else(|| {
                    panic!("request {id} failed: {line}");
                });
                let response = result.get("response").unwrap_or(&result);
                if let Some(items) = response.get("content_items").and_then(Value::as_array) {
                    let cell = response["cell_id"].as_str().expect("a cell").to_owned();
                    let texts = self.output.entry(cell).or_default();
                    texts.extend(
                        items
                            .iter()
                            .map(|item| item["text"].as_str().unwrap_or_default().to_owned()),
                    );
                }
                self.replies.insert(id, result);
            }
        }
    }

    /// Reads lines until request `id` is answered; its result.
    fn until_reply(&mut self, server: &mut JsonlServer, id: u64) -> Value {
        while !self.replies.contains_key(&id) {
            let line = server.next();
            self.take(line);
        }
        self.replies[&id].clone()
    }

    /// Reads lines until a call whose argument matches `wanted` waits.
    fn until_call(&mut self, server: &mut JsonlServer, wanted: &Value) -> String {
        loop {
            if let Some((id, _)) = self.waiting.iter().find(|(_, (_, input))| {
                wanted
                    .as_object()
                    .expect("an object")
                    .iter()
                    .all(|(key, value)| input.get(key) == Some(value))
            }) {
                return id.clone();
            }
            let line = server.next();
            self.take(line);
        }
    }

    /// Answers call `id` from its argument.
    fn answer(&mut self, server: &mut JsonlServer, id: &str) {
        let (_, input) = self.waiting.remove(id).expect("a waiting call");
        let answer = format!(
            "{}{}",
            input["cell"].as_str().expect("a cell"),
            input["n"].as_u64().expect("a number")
        );
        server.send(
            &json!({"method": "tool_result", "params": {"call": id, "result": answer}}).to_string(),
        );
    }

    fn answer_all(&mut self, server: &mut JsonlServer) {
        let ids: Vec<String> = self.waiting.keys().cloned().collect();
        for id in ids {
            self.answer(server, &id);
        }
    }
}

fn request(server: &mut JsonlServer, id: u64, method: &str, params: &Value) {
    server.send(&json!({"id": id, "method": method, "params": params}).to_string());
}

/// Opens the session and starts the three cells; their exec answers are read.
fn start_cells(server: &mut JsonlServer, client: &mut Client) {
    request(
        server,
        1,
        "open_session",
        &json!({"stored_values": {"base": 1}}),
    );
    assert_eq!(client.until_reply(server, 1), json!({"session": "s1"}));
    for (n, source) in CELLS.iter().enumerate() {
        let id = 2 + n as u64;
        let params = json!({"session": "s1", "source": source, "tools": [{"name": "work"}], "yield_time_ms": 100});
        request(server, id, "exec", &params);
        client.until_reply(server, id);
    }
}

/// Waits on every cell until it completed, answering calls as they come; then the stored
/// values.
fn finish_cells(server: &mut JsonlServer, client: &mut Client, first_id: u64) -> Value {
    let mut id = first_id;
    for cell in ["1", "2", "3"] {
        loop {
            client.answer_all(server);
            id += 1;
            let params = json!({"session": "s1", "cell_id": cell, "yield_time_ms": 200});
            request(server, id, "wait", &params);
            let response = client.until_reply(server, id);
            if response["type"] == "result" {
                assert_eq!(response["error_text"], Value::Null, "{response}");
                break;
            }
            assert_eq!(response["type"], "yielded", "{response}");
        }
    }
    id += 1;
    request(server, id, "stored_values", &json!({"session": "s1"}));
    client.until_reply(server, id)["stored_values"].clone()
}

/// Each cell's whole output, with its clock reading and random number checked against
/// the arguments the client was given and then left out.
fn outputs(client: &Client) -> BTreeMap<String, String> {
    let t = client.inputs[&("1".to_owned(), "tool-1".to_owned())]["t"].clone();
    let r = client.inputs[&("2".to_owned(), "tool-1".to_owned())]["r"]
        .as_str()
        .expect("the random number, as text")
        .to_owned();
    client
        .output
        .iter()
        .map(|(cell, texts)| {
            let whole = texts
                .join("\n")
                .replace(&format!("t={t}"), "t=T")
                .replace(&format!("r={r}"), "r=R");
            (cell.clone(), whole)
        })
        .collect()
}

fn state_server(dir: &std::path::Path) -> JsonlServer {
    let dir = dir.to_str().expect("a UTF-8 path");
    JsonlServer::start_with(&["serve", "--jsonl", "--state-dir", dir])
}

#[test]
fn serve_jsonl_with_a_state_dir_goes_on_with_its_cells_after_a_kill() {
    // Without a kill: what each cell gives.
    let scratch = Scratch::new();
    let mut server = state_server(&scratch.0.join("plain"));
    let mut plain = Client::default();
    start_cells(&mut server, &mut plain);
    let plain_stored = finish_cells(&mut server, &mut plain, 10);
    assert!(server.finish().success());
    let expected = outputs(&plain);
    assert!(expected["1"].contains("A t=T z=A3"), "{expected:?}");
    assert!(expected["2"].contains("B got B1 r=R"), "{expected:?}");

    // The same cells, the server killed twice while they wait on calls.
    let dir = scratch.0.join("killed");
    let mut server = state_server(&dir);
    let mut client = Client::default();
    start_cells(&mut server, &mut client);
    let a1 = client.until_call(&mut server, &json!({"cell": "A", "n": 1}));
    client.answer(&mut server, &a1);
    let a2 = client.until_call(&mut server, &json!({"cell": "A", "n": 2}));
    client.answer(&mut server, &a2);
    // A got its answers and called again, after its timer.
    client.until_call(&mut server, &json!({"cell": "A", "n": 3}));
    // B's answer is sent right before the kill: it reaches the cell or not, and the
    // client's record of it on disk or not. Either way it is delivered once.
    let b1 = client.until_call(&mut server, &json!({"cell": "B", "n": 1}));
    client.answer(&mut server, &b1);
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");

    // Started again: the calls still waiting are announced again, before any answer.
    let mut server = state_server(&dir);
    client.waiting.clear();
    request(&mut server, 20, "stored_values", &json!({"session": "s1"}));
    let stored = client.until_reply(&mut server, 20)["stored_values"].clone();
    assert_eq!(stored["base"], 1, "{stored}");
    // Exactly the calls still waiting: A's third and C's, and B's only if its answer did
    // not reach the disk before the kill.
    let mut still: Vec<(String, u64)> = client
        .waiting
        .values()
        .map(|(_, input)| {
            let cell = input["cell"].as_str().expect("a cell").to_owned();
            (cell, input["n"].as_u64().expect("a number"))
        })
        .collect();
    still.sort();
    let calls = |names: &[(&str, u64)]| -> Vec<(String, u64)> {
        names
            .iter()
            .map(|(cell, n)| ((*cell).to_owned(), *n))
            .collect()
    };
    assert!(
        still == calls(&[("A", 3), ("C", 1)]) || still == calls(&[("A", 3), ("B", 1), ("C", 1)]),
        "the restarted server announces exactly the calls still waiting: {still:?}"
    );
    assert!(
        client.restored.values().all(|count| *count == 1),
        "each waiting call announced again once: {:?}",
        client.restored
    );
    // Killed again while A's rebuilt cell waits (its wait made it run once more).
    request(
        &mut server,
        21,
        "wait",
        &json!({"session": "s1", "cell_id": "1", "yield_time_ms": 100}),
    );
    client.until_reply(&mut server, 21);
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");

    let mut server = state_server(&dir);
    client.waiting.clear();
    request(&mut server, 30, "stored_values", &json!({"session": "s1"}));
    client.until_reply(&mut server, 30);
    let stored = finish_cells(&mut server, &mut client, 40);
    // A new cell after the restarts never takes the id of one before them.
    request(
        &mut server,
        99,
        "exec",
        &json!({"session": "s1", "source": "text('after')"}),
    );
    let started = client.until_reply(&mut server, 99);
    assert!(server.finish().success());

    let new_cell = started["cell_id"].as_str().expect("a cell id");
    let mut got = outputs(&client);
    assert_eq!(got.remove(new_cell).as_deref(), Some("after"));
    assert_eq!(got, expected, "each cell's output, once");
    assert_eq!(stored, plain_stored, "the stored values, whole");
    let announced: Vec<_> = client.announced.values().copied().collect();
    assert_eq!(
        announced, [1; 5],
        "each call announced once: {:?}",
        client.announced
    );
    // Announced again only while waiting, at most once per restart: A's third and C's
    // call at each of the two restarts they waited through at most, B's at most once.
    assert!(
        client.restored.len() <= 3
            && client
                .restored
                .values()
                .all(|count| (1..=2).contains(count)),
        "restored announcements: {:?}",
        client.restored
    );
    assert!(
        client
            .restored
            .contains_key(&("1".to_owned(), "tool-3".to_owned()))
            && client
                .restored
                .contains_key(&("3".to_owned(), "tool-1".to_owned())),
        "the calls waiting through the first restart were announced again: {:?}",
        client.restored
    );
    assert!(
        !["1", "2", "3"].contains(&new_cell) && new_cell.starts_with('g'),
        "{started}"
    );
}

#[test]
fn serve_jsonl_refuses_a_state_dir_it_cannot_use() {
    let scratch = Scratch::new();
    // In process there is no host side to keep a cell's journal on.
    let dir = scratch.0.join("state");
    let dir = dir.to_str().expect("a UTF-8 path");
    let output = std::process::Command::new(super::BIN)
        .args(["serve", "--jsonl", "--in-process", "--state-dir", dir])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot be used with --in-process"),
        "{stderr}"
    );
    // A file that is not a database is refused, named, and left as it was.
    std::fs::create_dir_all(scratch.0.join("bad")).expect("a directory");
    let file = scratch.write("bad/jsonl.sqlite3", &"not a database ".repeat(200));
    let bad = scratch.0.join("bad");
    let output = std::process::Command::new(super::BIN)
        .args([
            "serve",
            "--jsonl",
            "--state-dir",
            bad.to_str().expect("UTF-8"),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("jsonl.sqlite3") && stderr.contains("not whole"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(file).expect("kept"),
        "not a database ".repeat(200)
    );
}

/// A state store that fills up (`--state-max-bytes`) while a cell runs: the line that
/// announces its second call is held back (a `state_error` event says why) since the
/// checkpoint behind it does not fit; the server then dies. Started again with room, it
/// gives the recorded answer to the first call and announces the second once: each call
/// runs exactly once, counted by the client's own log of what it ran.
#[test]
fn serve_jsonl_on_a_full_store_announces_no_call_twice_across_a_crash() {
    const BIG: usize = 600 * 1024;
    let scratch = Scratch::new();
    let dir = scratch.0.join("full");
    let dir_text = dir.to_str().expect("a UTF-8 path").to_owned();
    let mut ran: Vec<Value> = Vec::new();
    let mut server = JsonlServer::start_with(&[
        "serve",
        "--jsonl",
        "--state-dir",
        &dir_text,
        "--state-max-bytes",
        "1000000",
    ]);
    request(&mut server, 1, "open_session", &json!({}));
    let source = "const a = await tools.work({n: 1}); const b = await tools.work({n: 2}); text(a.length + ' ' + b);";
    request(
        &mut server,
        2,
        "exec",
        &json!({"session": "s1", "source": source, "tools": [{"name": "work"}], "yield_time_ms": 100}),
    );
    // The first call: run (logged) and answered with more than half the cap.
    let first = loop {
        let line = server.next();
        if line["event"] == "tool_call" {
            break line;
        }
    };
    assert_eq!(first["input"], json!({"n": 1}), "{first}");
    ran.push(first["input"].clone());
    let big = "x".repeat(BIG);
    server.send(
        &json!({"method": "tool_result", "params": {"call": first["call"], "result": big}})
            .to_string(),
    );
    // The second call's announcement needs a checkpoint that holds the first answer: it
    // does not fit, so a state_error comes, and no announcement before it.
    let said = loop {
        let line = server.next();
        assert_ne!(
            line["event"], "tool_call",
            "a call announced with no checkpoint behind it: {line}"
        );
        if line["event"] == "state_error" {
            break line;
        }
    };
    assert!(
        said["message"]
            .as_str()
            .is_some_and(|text| text.contains("full")),
        "{said}"
    );
    // Nothing that depends on the write goes out after it either (a client runs what it
    // is told of: an announcement here would run again after the restart).
    while let Some(line) = server.line_within(std::time::Duration::from_secs(2)) {
        if line["event"] == "tool_call" {
            ran.push(line["input"].clone());
        }
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");

    let mut server = JsonlServer::start_with(&["serve", "--jsonl", "--state-dir", &dir_text]);
    // Rebuilt at its wait, the cell gets its recorded first answer and makes its second
    // call, announced now for the first time (the first is not announced again).
    request(
        &mut server,
        3,
        "wait",
        &json!({"session": "s1", "cell_id": "1", "yield_time_ms": 30000}),
    );
    let second = loop {
        let line = server.next();
        if line["event"] == "tool_call" {
            break line;
        }
        assert!(line.get("id").is_none(), "the wait ended first: {line}");
    };
    assert_eq!(second["input"], json!({"n": 2}), "{second}");
    assert_ne!(second.get("restored"), Some(&Value::Bool(true)), "{second}");
    ran.push(second["input"].clone());
    server.send(
        &json!({"method": "tool_result", "params": {"call": second["call"], "result": 2}})
            .to_string(),
    );
    let waited = loop {
        let line = server.next();
        assert_ne!(line["event"], "tool_call", "a call announced again: {line}");
        if line["id"] == 3 {
            break line;
        }
    };
    assert_eq!(waited["result"]["type"], "result", "{waited}");
    assert_eq!(
        waited["result"]["content_items"],
        json!([{"type": "input_text", "text": format!("{BIG} 2")}]),
        "{waited}"
    );
    assert!(server.finish().success());
    assert_eq!(
        ran,
        [json!({"n": 1}), json!({"n": 2})],
        "each call ran once"
    );
}

/// The driver's own tools cut short by a kill, called after the cell's `exec` answered:
/// after the restart, the one whose tools file entry says `on_interrupt = "retry"` runs
/// again, the other fails with the text that says it may have run, and is not run again
/// by the rebuilt cell. Each logs its start to a file, so the runs are counted.
#[test]
fn serve_jsonl_runs_again_only_the_driver_tools_marked_retry_after_a_kill() {
    let scratch = Scratch::new();
    let log = scratch.0.join("runs.log");
    let hold = scratch.0.join("hold");
    std::fs::write(&hold, b"").expect("written");
    // Each tool logs its start, then waits while the hold file exists (the first
    // process is killed meanwhile), then answers its name.
    let tool = |name: &str| {
        format!(
            "echo 'start {name}' >> '{log}'; while [ -e '{hold}' ]; do sleep 0.05; done; echo '\"{name} done\"'",
            log = log.display(),
            hold = hold.display()
        )
    };
    let tools = scratch.write(
        "tools.toml",
        &format!(
            "[[tool]]\nname = \"again\"\ncommand = \"{}\"\non_interrupt = \"retry\"\n\n\
             [[tool]]\nname = \"once\"\ncommand = \"{}\"\n",
            tool("again").replace('"', "\\\""),
            tool("once").replace('"', "\\\"")
        ),
    );
    let dir = scratch.0.join("state");
    let args = [
        "serve",
        "--jsonl",
        "--state-dir",
        dir.to_str().expect("UTF-8"),
        "--tools",
        tools.to_str().expect("UTF-8"),
    ];
    let runs = |name: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|line| *line == format!("start {name}"))
            .count()
    };
    let mut server = JsonlServer::start_with(&args);
    let mut client = Client::default();
    request(&mut server, 1, "open_session", &json!({}));
    client.until_reply(&mut server, 1);
    // The calls start after the `exec` answered (and its checkpoint was written): only
    // the write before each call tells the next process they were made.
    let source = "await new Promise((resolve) => setTimeout(resolve, 400));
        const [a, b] = await Promise.allSettled([tools.again({}), tools.once({})]);
        const told = (settled) => settled.value ?? String(settled.reason?.message ?? settled.reason);
        text(JSON.stringify([told(a), told(b)]));";
    request(
        &mut server,
        2,
        "exec",
        &json!({"session": "s1", "source": source, "yield_time_ms": 100}),
    );
    client.until_reply(&mut server, 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while runs("again") < 1 || runs("once") < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tools did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    std::fs::remove_file(&hold).expect("released");

    let mut server = JsonlServer::start_with(&args);
    request(
        &mut server,
        3,
        "wait",
        &json!({"session": "s1", "cell_id": "1", "yield_time_ms": 30000}),
    );
    let reply = client.until_reply(&mut server, 3);
    let response = reply.get("response").unwrap_or(&reply);
    let text = response["content_items"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"));
    let got: Vec<String> = serde_json::from_str(text).expect("JSON");
    assert_eq!(
        got,
        [
            "again done".to_owned(),
            code_mode_protocol::texts::TOOL_LOST_IN_RESTART.to_owned()
        ]
    );
    assert_eq!(runs("again"), 2, "the retried tool ran again");
    assert_eq!(runs("once"), 1, "the other did not");
    assert!(server.finish().success());
}

/// `--state-url`: a server on Postgres killed while a cell waits on the client's call; a
/// new server on the same database (another process, another name) takes the session
/// over when the client names it, once the dead one's lease ran out, announces the call
/// again (marked restored), and the cell completes with the client's answer.
#[test]
fn serve_jsonl_on_postgres_takes_a_killed_servers_session_over_when_named() {
    let cluster = code_mode_conformance::PgCluster::start();
    let args = [
        "serve",
        "--jsonl",
        "--state-url",
        &cluster.url,
        "--state-lease",
        "1s",
    ];
    let mut server = JsonlServer::start_with(&args);
    let mut client = Client::default();
    request(&mut server, 1, "open_session", &json!({}));
    let opened = client.until_reply(&mut server, 1);
    let session = opened["session"].as_str().expect("a session").to_owned();
    let source = "const v = await tools.work({cell: 'P', n: 1}); text('P got ' + v);";
    request(
        &mut server,
        2,
        "exec",
        &json!({"session": session, "source": source, "tools": [{"name": "work"}], "yield_time_ms": 100}),
    );
    client.until_call(&mut server, &json!({"cell": "P", "n": 1}));
    client.until_reply(&mut server, 2);
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    client.waiting.clear();

    let mut server = JsonlServer::start_with(&args);
    request(
        &mut server,
        3,
        "wait",
        &json!({"session": session, "cell_id": "1", "yield_time_ms": 30000}),
    );
    let call = client.until_call(&mut server, &json!({"cell": "P", "n": 1}));
    client.answer(&mut server, &call);
    let reply = client.until_reply(&mut server, 3);
    let response = reply.get("response").unwrap_or(&reply);
    assert_eq!(response["content_items"][0]["text"], "P got P1", "{reply}");
    let key = ("1".to_owned(), "tool-1".to_owned());
    assert_eq!(client.announced.get(&key), Some(&1), "announced once");
    assert_eq!(
        client.restored.get(&key),
        Some(&1),
        "and again, marked restored"
    );
    assert!(server.finish().success());
}
