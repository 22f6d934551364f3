//! An agent core that keeps its sessions in a store (`StoredProvider`) is killed with
//! `kill -9` while three sessions' cells wait on a call and a fourth's waits on a timer
//! after its call was answered, and started again: it resumes the sessions and every cell
//! ends as it would have without the kill, the interrupted call as the agent core chose,
//! and no call whose answer was recorded runs twice. The agent is the `stored_agent`
//! example.

use code_mode_conformance::Scratch;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The example, beside this test binary's directory (`cargo test -p code-mode-host`
/// builds it), told where the runtime binary is.
fn agent() -> Command {
    let exe = std::env::current_exe().expect("the test binary");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile.join("examples").join("stored_agent");
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p code-mode-host` builds it",
        path.display()
    );
    let mut command = Command::new(path);
    command.env(
        code_mode_host::BINARY_ENV,
        profile.join(code_mode_host::BINARY_NAME),
    );
    command
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|logged| *logged == line).count()
}

#[test]
fn an_agent_core_killed_mid_call_resumes_its_sessions_and_runs_no_answered_call_twice() {
    let scratch = Scratch::new();
    let state = scratch.0.join("state");
    killed_and_resumed(&scratch, &["--state", state.to_str().expect("UTF-8")]);
}

/// The same, with the sessions in Postgres.
#[test]
fn an_agent_core_on_postgres_killed_mid_call_resumes_its_sessions() {
    let scratch = Scratch::new();
    let cluster = code_mode_conformance::PgCluster::start();
    killed_and_resumed(&scratch, &["--state-url", &cluster.url]);
}

/// Runs the agent with `store` (its store arguments), kills it mid-call, runs it again,
/// and checks every cell's output and every tool's runs.
fn killed_and_resumed(scratch: &Scratch, store: &[&str]) {
    let log = scratch.0.join("tools.log");
    let mut first = agent()
        .arg("start")
        .args(store)
        .arg("--log")
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the agent starts");
    let mut started = String::new();
    BufReader::new(first.stdout.take().expect("stdout"))
        .read_line(&mut started)
        .expect("read");
    assert_eq!(started.trim(), "started");
    // Killed once every session's second call is in flight, and `d`'s first answer is
    // durable (its tool ends before the store has it: a kill between the two leaves that
    // call interrupted).
    let deadline = Instant::now() + Duration::from_secs(60);
    let in_flight = ["start a 1", "start b 1", "start c 1", "recorded d 0"];
    while !in_flight
        .iter()
        .all(|line| count(&log_lines(&log), line) == 1)
    {
        assert!(Instant::now() < deadline, "{:?}", log_lines(&log));
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().expect("kill -9");
    first.wait().expect("reaped");

    let mut second = agent()
        .arg("resume")
        .args(store)
        .arg("--log")
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the agent starts again");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = second.try_wait().expect("waited") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the resumed agent did not finish: {:?}", log_lines(&log));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut second.stdout.take().expect("stdout"), &mut stdout)
        .expect("read");
    assert!(status.success(), "{status:?}: {stdout}");
    let outputs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let interrupted = code_mode_protocol::texts::interrupted_call("slow");
    let expected = [
        ("a", serde_json::json!([0, interrupted, 2])),
        ("b", serde_json::json!([0, 1, 2])),
        ("c", serde_json::json!([0, "known", 2])),
        ("d", serde_json::json!([0, 2])),
    ];
    assert_eq!(outputs.len(), expected.len(), "{outputs:?}");
    for ((session, cell), output) in expected.iter().zip(&outputs) {
        assert_eq!(output["session"], *session);
        let text: serde_json::Value =
            serde_json::from_str(output["text"].as_str().expect("text")).expect("JSON");
        assert_eq!(text, *cell, "session {session}");
    }
    let lines = log_lines(&log);
    for session in ["a", "b", "c", "d"] {
        // The first call's answer was recorded before the kill: it never runs again.
        assert_eq!(count(&lines, &format!("start {session} 0")), 1, "{lines:?}");
        assert_eq!(count(&lines, &format!("start {session} 2")), 1, "{lines:?}");
        assert_eq!(count(&lines, &format!("end {session} 2")), 1, "{lines:?}");
    }
    // The interrupted call: failed, sent again, or answered by the agent core.
    assert_eq!(count(&lines, "start a 1"), 1, "{lines:?}");
    assert_eq!(count(&lines, "start b 1"), 2, "{lines:?}");
    assert_eq!(count(&lines, "end b 1"), 1, "{lines:?}");
    assert_eq!(count(&lines, "start c 1"), 1, "{lines:?}");
}

/// Runs `statement` on the cluster and gives its first row's first column as text, on a
/// thread of its own (the blocking client does not run on the test's async runtime).
pub(crate) fn sql(url: &str, statement: &str) -> Option<String> {
    let (url, statement) = (url.to_owned(), statement.to_owned());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connects");
        let rows = client.simple_query(&statement).expect("runs");
        rows.into_iter().find_map(|message| match message {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
    })
    .join()
    .expect("the SQL thread")
}

/// One session as a front writes it: a stored value.
pub(crate) fn one_session(id: &str, value: &str) -> code_mode_host::state::Changes {
    code_mode_host::state::Changes {
        sessions: vec![code_mode_host::state::SessionRecord {
            id: id.to_owned(),
            options: "{}".to_owned(),
            state: code_mode_host::DurableState {
                stored: [("k".to_owned(), std::sync::Arc::from(value))].into(),
                cells: Vec::new(),
            },
        }],
        ..Default::default()
    }
}

/// A process started again under the same replica name (a restarted container) while
/// the earlier one still lives: it takes that name's sessions back at once, and the
/// earlier one's late write is refused by the epoch alone (the owner column names both
/// alike), so the newer value stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_replica_name_started_again_fences_the_earlier_process_by_its_epoch() {
    use code_mode_host::state::{Keeper, StateError, StoreOptions};
    let cluster = code_mode_conformance::PgCluster::start();
    let options = StoreOptions {
        patience: Duration::ZERO,
        replica: Some("pod-0".to_owned()),
        ..StoreOptions::default()
    };
    let (earlier, _) =
        Keeper::open_postgres(&cluster.url, "mcp", options.clone()).expect("the first opens");
    earlier
        .write(one_session("s1", "\"first\""))
        .await
        .expect("the first writes");
    let (later, saved) =
        Keeper::open_postgres(&cluster.url, "mcp", options).expect("the second opens");
    assert_eq!(
        saved
            .sessions
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["s1"],
        "its own name's session, back at once"
    );
    later
        .write(one_session("s1", "\"second\""))
        .await
        .expect("the second writes");
    let late = earlier
        .write(one_session("s1", "\"late first\""))
        .await
        .expect_err("fenced");
    assert!(matches!(late, StateError::Fenced { .. }), "{late}");
    let value = sql(
        &cluster.url,
        "SELECT json FROM code_mode_mcp.stored WHERE session = 's1' AND key = 'k'",
    );
    assert_eq!(value.as_deref(), Some("\"second\""));
    let owner = sql(
        &cluster.url,
        "SELECT owner || ' ' || epoch FROM code_mode_mcp.sessions WHERE id = 's1'",
    );
    assert_eq!(owner.as_deref(), Some("pod-0 2"), "one name, a new epoch");
}

/// Two processes on one Postgres database: a session belongs to the one that wrote it
/// while its lease runs; once the lease ran out (the owner died), the other takes it over
/// whole, and the earlier owner's late write is refused by the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_take_over_a_session_whose_lease_ran_out_and_fence_the_old_owner() {
    use code_mode_host::state::{Claimed, Keeper, StateError, StoreOptions};
    let cluster = code_mode_conformance::PgCluster::start();
    let options = StoreOptions {
        patience: Duration::ZERO,
        ..StoreOptions::default()
    };
    let (a, saved) = Keeper::open_postgres(&cluster.url, "mcp", options.clone()).expect("A opens");
    assert!(saved.sessions.is_empty());
    a.write(one_session("s1", "\"from A\""))
        .await
        .expect("A writes");
    let (b, saved) = Keeper::open_postgres(&cluster.url, "mcp", options.clone()).expect("B opens");
    assert!(
        saved.sessions.is_empty(),
        "A's session is A's while its lease runs"
    );
    let held = b.claim("s1").await.expect("asked");
    assert!(matches!(held, Claimed::Held { .. }), "held by A: {held:?}");
    let absent = b.claim("nobody").await.expect("asked");
    assert!(matches!(absent, Claimed::Absent), "{absent:?}");
    let refused = b
        .write(one_session("s1", "\"from B\""))
        .await
        .expect_err("not B's");
    assert!(matches!(refused, StateError::Fenced { .. }), "{refused}");
    // A dies: its lease runs out.
    sql(
        &cluster.url,
        "UPDATE code_mode_mcp.sessions SET lease_until = 0",
    );
    // A process that starts now takes no session in bulk: a session goes to whoever a
    // client asks for it.
    let (_c, saved) = Keeper::open_postgres(&cluster.url, "mcp", options).expect("C opens");
    assert!(
        saved.sessions.is_empty(),
        "a process took a dead one's sessions at its start: {:?}",
        saved.sessions.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
    let Claimed::Taken(taken) = b.claim("s1").await.expect("asked") else {
        panic!("taken over");
    };
    assert_eq!(&*taken.sessions[0].state.stored["k"], "\"from A\"");
    b.write(one_session("s1", "\"from B\""))
        .await
        .expect("B writes");
    // A, alive after all, writes late: the database refuses it, and B's value stays.
    let late = a
        .write(one_session("s1", "\"late A\""))
        .await
        .expect_err("fenced");
    assert!(matches!(late, StateError::Fenced { .. }), "{late}");
    let value = sql(
        &cluster.url,
        "SELECT json FROM code_mode_mcp.stored WHERE session = 's1' AND key = 'k'",
    );
    assert_eq!(value.as_deref(), Some("\"from B\""));
    let epoch = sql(
        &cluster.url,
        "SELECT epoch FROM code_mode_mcp.sessions WHERE id = 's1'",
    );
    assert_eq!(epoch.as_deref(), Some("2"), "one takeover, one epoch more");
}
