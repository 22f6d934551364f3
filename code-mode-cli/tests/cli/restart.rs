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
    /// The session the client opened, and the token that takes it back after a restart.
    session: String,
    token: String,
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

/// Opens a session (request `id`) and keeps its id and resume token in `client`.
fn open(server: &mut JsonlServer, client: &mut Client, id: u64, params: &Value) {
    request(server, id, "open_session", params);
    let opened = client.until_reply(server, id);
    let session = opened["session"].as_str().expect("a session id");
    let token = opened["resume_token"].as_str().expect("a resume token");
    assert!(
        session.len() == 33
            && session.starts_with('s')
            && session[1..].chars().all(|c| c.is_ascii_hexdigit()),
        "a session id of 128 random bits: {opened}"
    );
    assert_eq!(
        token.len(),
        64,
        "a resume token of 256 random bits: {opened}"
    );
    client.session = session.to_owned();
    client.token = token.to_owned();
}

/// Takes the client's session back on a restarted server (request `id`); the calls its
/// cells still wait on are announced again, marked restored, before the answer.
fn resume(server: &mut JsonlServer, client: &mut Client, id: u64) {
    let params = json!({"session": client.session, "resume_token": client.token});
    request(server, id, "resume_session", &params);
    let resumed = client.until_reply(server, id);
    assert_eq!(resumed["session"], client.session, "{resumed}");
}

/// Opens the session and starts the three cells; their exec answers are read.
fn start_cells(server: &mut JsonlServer, client: &mut Client) {
    open(server, client, 1, &json!({"stored_values": {"base": 1}}));
    for (n, source) in CELLS.iter().enumerate() {
        let id = 2 + n as u64;
        let params = json!({"session": client.session, "source": source, "tools": [{"name": "work"}], "yield_time_ms": 100});
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
            let params = json!({"session": client.session, "cell_id": cell, "yield_time_ms": 200});
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
    request(
        server,
        id,
        "stored_values",
        &json!({"session": client.session}),
    );
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

    // Started again: the session is not served until its client takes it back with its
    // token; then the calls still waiting are announced again, before any answer.
    let mut server = state_server(&dir);
    client.waiting.clear();
    request(
        &mut server,
        19,
        "stored_values",
        &json!({"session": client.session}),
    );
    let refused = server.next();
    assert_eq!(refused["error"]["code"], "unknown_session", "{refused}");
    // A wrong token gets what an id nobody has gets, announces nothing, and leaves the
    // session for its client.
    let mut answers = Vec::new();
    for (id, session, token) in [
        (16, client.session.clone(), "0".repeat(64)),
        (17, format!("s{}", "0".repeat(32)), "0".repeat(64)),
    ] {
        let params = json!({"session": session, "resume_token": token});
        request(&mut server, id, "resume_session", &params);
        let reply = server.next();
        assert_eq!(reply["id"], id, "nothing before the refusal: {reply}");
        let message = reply["error"]["message"].as_str().expect("a message");
        answers.push((
            reply["error"]["code"].clone(),
            message.replace(&session, "<id>"),
        ));
    }
    assert_eq!(answers[0], answers[1], "a wrong token and an unknown id");
    assert_eq!(answers[0].0, "unknown_session");
    resume(&mut server, &mut client, 18);
    request(
        &mut server,
        20,
        "stored_values",
        &json!({"session": client.session}),
    );
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
        &json!({"session": client.session, "cell_id": "1", "yield_time_ms": 100}),
    );
    client.until_reply(&mut server, 21);
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");

    let mut server = state_server(&dir);
    client.waiting.clear();
    resume(&mut server, &mut client, 29);
    request(
        &mut server,
        30,
        "stored_values",
        &json!({"session": client.session}),
    );
    client.until_reply(&mut server, 30);
    let stored = finish_cells(&mut server, &mut client, 40);
    // A new cell after the restarts never takes the id of one before them.
    request(
        &mut server,
        99,
        "exec",
        &json!({"session": client.session, "source": "text('after')"}),
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
    let mut client = Client::default();
    open(&mut server, &mut client, 1, &json!({}));
    let source = "const a = await tools.work({n: 1}); const b = await tools.work({n: 2}); text(a.length + ' ' + b);";
    request(
        &mut server,
        2,
        "exec",
        &json!({"session": client.session, "source": source, "tools": [{"name": "work"}], "yield_time_ms": 100}),
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
    resume(&mut server, &mut client, 9);
    assert!(
        client.restored.is_empty() && client.announced.is_empty(),
        "nothing announced again at the resume: {:?}",
        client.restored
    );
    request(
        &mut server,
        3,
        "wait",
        &json!({"session": client.session, "cell_id": "1", "yield_time_ms": 30000}),
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
    open(&mut server, &mut client, 1, &json!({}));
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
        &json!({"session": client.session, "source": source, "yield_time_ms": 100}),
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
    resume(&mut server, &mut client, 9);
    request(
        &mut server,
        3,
        "wait",
        &json!({"session": client.session, "cell_id": "1", "yield_time_ms": 30000}),
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
/// over when the client resumes it with its token, once the dead one's lease ran out,
/// announces the call again (marked restored), and the cell completes with the client's
/// answer.
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
    open(&mut server, &mut client, 1, &json!({}));
    let session = client.session.clone();
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
    resume(&mut server, &mut client, 9);
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

/// Reads every line the server writes within `quiet` of the one before.
fn drain(server: &mut JsonlServer, quiet: std::time::Duration) -> Vec<Value> {
    let mut lines = Vec::new();
    while let Some(line) = server.line_within(quiet) {
        lines.push(line);
    }
    lines
}

/// Two clients, each with its own server on one Postgres database. Client A's cell waits
/// on a call whose input is confidential and A stored a private value; A's server dies.
/// B's server, started later for another client, announces nothing of A's session, and
/// B's client can read none of it: not by naming it, not with a wrong resume token
/// (which lets the session go at once, untouched). A's client, on a third server, takes
/// it back with its token: its call is announced again there, and its cell completes.
/// Ids from servers started together never meet.
#[test]
fn serve_jsonl_servers_on_one_store_keep_each_clients_sessions_its_own() {
    let cluster = code_mode_conformance::PgCluster::start();
    let args = [
        "serve",
        "--jsonl",
        "--state-url",
        &cluster.url,
        "--state-lease",
        "1s",
    ];
    let mut server_a = JsonlServer::start_with(&args);
    let mut a = Client::default();
    open(&mut server_a, &mut a, 1, &json!({}));
    request(
        &mut server_a,
        2,
        "exec",
        &json!({"session": a.session, "source": "store('secret', 'A-private-token');"}),
    );
    a.until_reply(&mut server_a, 2);
    let source = "const sent = await tools.send_email({body: 'Q3 numbers: confidential'}); text('sent ' + sent);";
    request(
        &mut server_a,
        3,
        "exec",
        &json!({"session": a.session, "source": source, "tools": [{"name": "send_email"}], "yield_time_ms": 100}),
    );
    a.until_call(&mut server_a, &json!({"body": "Q3 numbers: confidential"}));
    a.until_reply(&mut server_a, 3);
    let cell = a.replies[&3]["cell_id"]
        .as_str()
        .expect("a cell")
        .to_owned();
    server_a.child.kill().expect("SIGKILL");
    server_a.child.wait().expect("reaped");
    a.waiting.clear();
    let row_of_a = format!(
        "SELECT lease_until > 0, touched FROM code_mode_jsonl.sessions WHERE id = '{}'",
        a.session
    );
    let before = cluster.query(&row_of_a).expect("A's session is kept");

    // Two servers start together, for B and for A; A's lease runs out meanwhile.
    let mut server_b = JsonlServer::start_with(&args);
    let mut server_c = JsonlServer::start_with(&args);
    let mut b = Client::default();
    open(&mut server_b, &mut b, 1, &json!({}));
    let mut c_probe = Client::default();
    open(&mut server_c, &mut c_probe, 1, &json!({}));
    assert_ne!(
        b.session, c_probe.session,
        "ids of two servers started together"
    );
    assert_ne!(b.session, a.session);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let seen = drain(&mut server_b, std::time::Duration::from_millis(500));
    assert!(
        seen.is_empty(),
        "B's server announced something of another client's: {seen:?}"
    );

    let named = [
        ("stored_values", json!({"session": a.session})),
        (
            "wait",
            json!({"session": a.session, "cell_id": cell, "yield_time_ms": 100}),
        ),
        (
            "exec",
            json!({"session": a.session, "source": "text(load('secret'))"}),
        ),
        (
            "resume_session",
            json!({"session": a.session, "resume_token": b.token}),
        ),
        (
            "resume_session",
            json!({"session": a.session, "resume_token": "0".repeat(64)}),
        ),
    ];
    for (n, (method, params)) in named.iter().enumerate() {
        request(&mut server_b, 10 + n as u64, method, params);
        let reply = server_b.next();
        assert_eq!(
            reply["error"]["code"], "unknown_session",
            "{method} of another client's session: {reply}"
        );
        let text = reply.to_string();
        assert!(
            !text.contains("A-private-token") && !text.contains("confidential"),
            "{text}"
        );
    }
    let seen = drain(&mut server_b, std::time::Duration::from_millis(300));
    assert!(seen.is_empty(), "{seen:?}");
    // The wrong tokens took the session only to let it go: no lease left, and its last
    // use as A left it (a guess does not lengthen its time to live).
    let after = cluster.query(&row_of_a).expect("A's session is kept");
    let touched = |row: &str| row.split('|').nth(1).map(str::to_owned);
    assert_eq!(
        after.split('|').next(),
        Some("f"),
        "the lease taken for a wrong token is let go: {after}"
    );
    assert_eq!(touched(&after), touched(&before), "{before} -> {after}");
    assert!(server_b.finish().success());

    // A's client, on the third server, takes its session back at once (the wrong token
    // let it go) and finishes its cell.
    let mut a_again = Client {
        session: a.session.clone(),
        token: a.token.clone(),
        ..Client::default()
    };
    resume(&mut server_c, &mut a_again, 20);
    let call = a_again.until_call(&mut server_c, &json!({"body": "Q3 numbers: confidential"}));
    server_c.send(
        &json!({"method": "tool_result", "params": {"call": call, "result": "yes"}}).to_string(),
    );
    request(
        &mut server_c,
        21,
        "wait",
        &json!({"session": a.session, "cell_id": cell, "yield_time_ms": 30000}),
    );
    let reply = a_again.until_reply(&mut server_c, 21);
    let response = reply.get("response").unwrap_or(&reply);
    assert_eq!(response["content_items"][0]["text"], "sent yes", "{reply}");
    request(
        &mut server_c,
        22,
        "stored_values",
        &json!({"session": a.session}),
    );
    let stored = a_again.until_reply(&mut server_c, 22);
    assert_eq!(
        stored["stored_values"]["secret"], "A-private-token",
        "{stored}"
    );
    assert!(server_c.finish().success());
}

/// End of input while the store cannot take a write (past `--state-max-bytes`): the
/// lines held back behind the failed write are not sent at the end either (before, the
/// store was closed first and the held lines then went out as if written). The
/// `state_error` says why.
#[test]
fn serve_jsonl_at_end_of_input_sends_no_line_its_store_did_not_take() {
    let scratch = Scratch::new();
    let dir = scratch.0.join("full");
    let mut server = JsonlServer::start_with(&[
        "serve",
        "--jsonl",
        "--state-dir",
        dir.to_str().expect("a UTF-8 path"),
        "--state-max-bytes",
        "1000000",
    ]);
    let mut client = Client::default();
    open(&mut server, &mut client, 1, &json!({}));
    let source = "const a = await tools.work({n: 1}); const b = await tools.work({n: 2}); text(a.length + ' ' + b);";
    request(
        &mut server,
        2,
        "exec",
        &json!({"session": client.session, "source": source, "tools": [{"name": "work"}], "yield_time_ms": 100}),
    );
    let first = loop {
        let line = server.next();
        if line["event"] == "tool_call" {
            break line;
        }
    };
    let big = "x".repeat(600 * 1024);
    server.send(
        &json!({"method": "tool_result", "params": {"call": first["call"], "result": big}})
            .to_string(),
    );
    loop {
        let line = server.next();
        assert_ne!(line["event"], "tool_call", "{line}");
        if line["event"] == "state_error" {
            break;
        }
    }
    drop(server.child.stdin.take());
    let rest = drain(&mut server, std::time::Duration::from_secs(5));
    assert!(server.child.wait().expect("exits").success());
    for line in &rest {
        assert!(
            line.get("event").is_none_or(|event| event == "state_error"),
            "a line the store did not take went out at the end: {line}"
        );
        assert!(line.get("session").is_none(), "{line}");
    }
}

/// The frames (a page and its header each) in the current run of the state directory's
/// write-ahead log: every commit adds its pages, so an unchanged count means nothing was
/// committed, and nothing synced. The log is kept at its full size and written over from
/// its start after a checkpoint, so its length says nothing; a run's frames are those
/// from the start that carry the salts of the log's header.
fn log_frames(dir: &std::path::Path) -> usize {
    let log = std::fs::read(dir.join("jsonl.sqlite3-wal")).expect("the database's write-ahead log");
    let word = |at: usize| u32::from_be_bytes(log[at..at + 4].try_into().expect("4 bytes"));
    let frame = 24 + usize::try_from(word(8)).expect("a page size");
    let mut count = 0;
    while 32 + (count + 1) * frame <= log.len() {
        let at = 32 + count * frame;
        if log[at + 8..at + 16] != log[16..24] {
            break;
        }
        count += 1;
    }
    count
}

#[test]
fn serve_jsonl_commits_nothing_for_an_exec_whose_cell_changes_nothing_kept() {
    let scratch = Scratch::new();
    let dir = scratch.0.join("state");
    let mut server = state_server(&dir);
    let mut client = Client::default();
    open(&mut server, &mut client, 1, &json!({}));
    let exec = |server: &mut JsonlServer, client: &mut Client, id: u64, source: &str| {
        let params = json!({"session": client.session, "source": source});
        request(server, id, "exec", &params);
        let answer = client.until_reply(server, id);
        assert_eq!(answer["response"]["type"], "result", "{answer}");
        // One exec at a time: its `cell_closed` (a line that waits for its session's
        // write) comes before the next cell runs, so no write catches a cell mid-run.
        let cell = answer["cell_id"].clone();
        loop {
            let line = server.next();
            if line["event"] == "cell_closed" && line["cell_id"] == cell {
                break;
            }
        }
    };
    // The first cell starts the runtime: its generation is kept.
    exec(&mut server, &mut client, 2, "text(1)");
    let before = log_frames(&dir);
    for id in 3..8 {
        exec(
            &mut server,
            &mut client,
            id,
            "text(1); await Promise.resolve(2)",
        );
    }
    // The cells, written at admission and deleted at their answers, took eight frames
    // for these five before.
    let frames = log_frames(&dir) - before;
    assert_eq!(
        frames, 0,
        "cells that called nothing and stored nothing were committed"
    );
    // The measure sees a commit: a cell that stores a value is kept before its answer.
    exec(&mut server, &mut client, 8, "store('k', 1); text(1)");
    assert!(log_frames(&dir) > before, "a stored value made no commit");
    assert!(server.finish().success());
}
