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

/// The `stored_agent` example.
fn agent() -> Command {
    crate::example("stored_agent")
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

/// The environment that makes this test binary the agent side of
/// [`an_answer_the_full_store_did_not_take_reaches_no_cell_and_its_call_runs_once`]:
/// `start` or `resume`.
const AGENT_ROLE: &str = "CODE_MODE_TEST_UNKEPT_AGENT";
/// The agent's state directory, and the file its tools log their runs to (outside the
/// agent, so that the runs of a killed agent are counted).
const AGENT_STATE: &str = "CODE_MODE_TEST_UNKEPT_STATE";
const AGENT_RUNS: &str = "CODE_MODE_TEST_UNKEPT_RUNS";

/// The first agent's store cap, and the length of the `big` tool's answer: more than the
/// store has room for, so recording it fails as on a full disk.
const UNKEPT_CAP: u64 = 1_000_000;
const UNKEPT_ANSWER: usize = 1_200_000;

/// The cell: the call of `big`, whose answer the store cannot take, and then the call of
/// `after`, told whether the cell got the answer. The cell's output says what each call
/// gave.
const UNKEPT_SOURCE: &str = r#"
let got = "an error";
try { await tools.big({}); got = "the answer"; } catch (error) { text(String(error)); }
try { text(await tools.after({ got })); } catch (error) { text(String(error)); }
"#;

/// What the agent tells the test, one line each on its stdout.
const SAID: &str = "agent said: ";

#[expect(
    clippy::print_stdout,
    reason = "the agent's lines are what the test reads"
)]
fn say(line: &str) {
    println!("{SAID}{line}");
}

/// The agent's tools: each run is appended to the runs file. `after` never ends in the
/// first agent (it is killed with that call in flight).
struct UnkeptTools {
    runs: std::path::PathBuf,
    first: bool,
}

impl code_mode_protocol::CodeModeSessionDelegate for UnkeptTools {
    fn invoke_tool(
        &self,
        call: code_mode_protocol::NestedToolCall,
        cancel: tokio_util::sync::CancellationToken,
    ) -> code_mode_protocol::BoxFuture<
        '_,
        Result<code_mode_protocol::JsonText, code_mode_protocol::ToolError>,
    > {
        Box::pin(async move {
            let input = call.input.as_ref().map_or("", |input| input.as_str());
            let run = match call.tool_name.as_str() {
                "big" => "big".to_owned(),
                _ => format!("{} {input}", call.tool_name),
            };
            let mut runs = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.runs)
                .expect("the runs file opens");
            std::io::Write::write_all(&mut runs, format!("{run}\n").as_bytes())
                .expect("the run is logged");
            match call.tool_name.as_str() {
                "big" => {
                    let answer = serde_json::to_string(&"x".repeat(UNKEPT_ANSWER)).expect("JSON");
                    Ok(code_mode_protocol::JsonText::new(answer))
                }
                _ if self.first => {
                    say(&format!("ran {run}"));
                    cancel.cancelled().await;
                    Err(code_mode_protocol::ToolError::cancelled())
                }
                _ => Ok(code_mode_protocol::JsonText::new("\"answered again\"")),
            }
        })
    }
}

/// The agent's store: the keeper, telling the test when a write or an answer's record
/// failed.
struct Watched(code_mode_host::state::Keeper);

impl code_mode_host::SessionStore for Watched {
    fn write(
        &self,
        changes: code_mode_host::state::Changes,
    ) -> code_mode_protocol::BoxFuture<'_, Result<(), code_mode_host::state::StateError>> {
        Box::pin(async move {
            let written = self.0.write(changes).await;
            if let Err(error) = &written {
                say(&format!("write failed: {error}"));
            }
            written
        })
    }

    fn record_answer(
        &self,
        answer: code_mode_host::state::AnswerRecord,
    ) -> code_mode_protocol::BoxFuture<'_, Result<(), code_mode_host::state::StateError>> {
        Box::pin(async move {
            let recorded = self.0.record_answer(answer).await;
            if let Err(error) = &recorded {
                say(&format!("record failed: {error}"));
            }
            recorded
        })
    }

    fn remove(&self, session: &str) {
        self.0.remove(session);
    }
}

/// The agent side (in a child process, `role` from [`AGENT_ROLE`]): `start` opens session
/// `s` on a store capped at [`UNKEPT_CAP`] and starts [`UNKEPT_SOURCE`] in it, then waits
/// to be killed; `resume` opens the store with room, resumes `s` failing every call a
/// restart cut short (as the Python package does unless told to retry), and says the
/// cell's outcome.
fn unkept_agent(role: &str) {
    use code_mode_host::{
        CodeModeSession, Interrupted, KeptSessions, ProcessConfig, ProcessProvider, Runtimes,
        StoredProvider,
    };
    use code_mode_protocol::{CellResponse, ExecRequest, SessionOptions, WaitRequest};
    let state = std::path::PathBuf::from(std::env::var_os(AGENT_STATE).expect("the state"));
    let runs = std::path::PathBuf::from(std::env::var_os(AGENT_RUNS).expect("the runs file"));
    let first = role == "start";
    let options = code_mode_host::state::StoreOptions {
        max_bytes: first.then_some(UNKEPT_CAP),
        // Not the 10 s default: the write past the cap fails sooner, as it would later.
        patience: Duration::from_millis(500),
        ..code_mode_host::state::StoreOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async move {
        let (keeper, saved) =
            code_mode_host::state::Keeper::open_sqlite(&state, "agent", options).expect("opens");
        let kept = std::sync::Arc::new(KeptSessions::over(
            std::sync::Arc::new(Watched(keeper)),
            saved,
        ));
        let config = ProcessConfig {
            generations_before: kept.generations_before(),
            ..ProcessConfig::default()
        };
        let provider = ProcessProvider::new(config).expect("the runtime is built");
        let sessions = StoredProvider::new(Runtimes::Local(provider), kept);
        let tools = std::sync::Arc::new(UnkeptTools { runs, first });
        if first {
            let session = sessions
                .open(
                    "s",
                    tools.clone(),
                    SessionOptions::default(),
                    Default::default(),
                )
                .await
                .expect("the session opens");
            let definitions: std::sync::Arc<[code_mode_protocol::ToolDefinition]> =
                ["big", "after"]
                    .map(|name| {
                        code_mode_protocol::ToolDefinition::new(
                            name,
                            "a tool of the test",
                            code_mode_protocol::ToolKind::Function,
                        )
                    })
                    .into();
            let started = session
                .execute(
                    ExecRequest::new(UNKEPT_SOURCE)
                        .with_tools(definitions)
                        .with_yield_time_ms(0),
                )
                .await
                .expect("the cell starts");
            assert!(
                matches!(started.initial_response, CellResponse::Yielded { .. }),
                "{:?}",
                started.initial_response
            );
            // Killed here, `after` in flight.
            std::future::pending::<()>().await;
        }
        assert_eq!(sessions.kept(), ["s"]);
        let session = sessions
            .resume("s", tools, SessionOptions::default(), |call| {
                say(&format!("interrupted {}", call.tool_name));
                Interrupted::Fail
            })
            .await
            .expect("the session resumes");
        let outcome = loop {
            let response = session
                .wait(WaitRequest::new("1").with_yield_time_ms(10_000))
                .await
                .expect("the cell is waited on");
            if !matches!(response, CellResponse::Yielded { .. }) {
                break response;
            }
        };
        let texts: Vec<&str> = outcome
            .content_items()
            .iter()
            .filter_map(code_mode_protocol::ContentItem::as_text)
            .collect();
        let outcome = serde_json::json!({ "texts": texts, "error": outcome.error_text() });
        say(&format!("outcome {outcome}"));
        session.close().await;
    });
}

/// An agent process, killed (SIGKILL) and reaped when dropped: a test that fails leaves
/// none behind.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This test binary, running this test alone as the agent side (`role`), its stdout
/// piped (its lines come on the channel) and its stderr in `stderr`.
fn spawn_unkept_agent(
    role: &str,
    state: &Path,
    runs: &Path,
    stderr: &Path,
) -> (Agent, std::sync::mpsc::Receiver<String>) {
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, module)| module);
    let name = format!(
        "{module}::an_answer_the_full_store_did_not_take_reaches_no_cell_and_its_call_runs_once"
    );
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(AGENT_ROLE, role)
        .env(AGENT_STATE, state)
        .env(AGENT_RUNS, runs)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).expect("the stderr file"))
        .spawn()
        .expect("the agent starts");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (Agent(child), said)
}

/// The next line the agent said (up to `deadline`), or `None` once its stdout ended.
fn next_said(
    said: &std::sync::mpsc::Receiver<String>,
    deadline: Instant,
    waiting_for: &str,
    stderr: &Path,
) -> Option<String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match said.recv_timeout(left) {
            // (The harness may have begun the line: `test <name> ... `.)
            Ok(line) => {
                if let Some((_, said)) = line.split_once(SAID) {
                    return Some(said.to_owned());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                "the agent did not say {waiting_for} in time; its stderr:\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            ),
        }
    }
}

/// An agent core on `StoredProvider` whose tool answers with more than its store has
/// room for: recording the answer fails (as on a full disk), so the cell gets no answer
/// but the call's error (`code-mode state could not be written (the tool ran, its answer
/// was not kept): <the store's error>`), and goes on to its next call. The agent is
/// killed with SIGKILL there and started again on the same store with room: the rebuilt
/// cell gets the same error for the first call (its journal, written before the next
/// call went out, has it) and the restart's error for the call that was in flight
/// (`interrupted: ...`: the agent fails such calls, as the Python package does unless
/// told to retry), and neither call runs again. Counted by the tools themselves, in a
/// file outside the killed process.
#[test]
fn an_answer_the_full_store_did_not_take_reaches_no_cell_and_its_call_runs_once() {
    if let Ok(role) = std::env::var(AGENT_ROLE) {
        unkept_agent(&role);
        return;
    }
    let scratch = Scratch::new();
    let state = scratch.0.join("state");
    std::fs::create_dir_all(&state).expect("the state directory");
    let runs = scratch.0.join("runs.log");
    let stderr = scratch.0.join("start.stderr");
    let (mut first, said) = spawn_unkept_agent("start", &state, &runs, &stderr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = next_said(&said, deadline, "that the answer's record failed", &stderr)
        .expect("the agent runs");
    let store_error = failed
        .strip_prefix("record failed: ")
        .unwrap_or_else(|| panic!("said {failed:?} before any record failed"))
        .to_owned();
    assert!(
        store_error.contains("database or disk is full"),
        "{store_error}"
    );
    // Killed once the cell made its next call: it is past the answer it could not have.
    let next = next_said(&said, deadline, "that `after` ran", &stderr).expect("the agent runs");
    assert_eq!(
        next, r#"ran after {"got":"an error"}"#,
        "the cell went on with the error and its next call was kept"
    );
    first.0.kill().expect("kill -9");
    first.0.wait().expect("reaped");
    let runs_now = || -> Vec<String> {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(runs_now(), ["big", r#"after {"got":"an error"}"#]);

    let stderr = scratch.0.join("resume.stderr");
    let (mut second, said) = spawn_unkept_agent("resume", &state, &runs, &stderr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while let Some(line) = next_said(&said, deadline, "the cell's outcome", &stderr) {
        lines.push(line);
    }
    let status = second.0.wait().expect("reaped");
    assert!(
        status.success(),
        "{status:?}: {lines:?}\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    let (outcome, asked): (Vec<&String>, Vec<&String>) =
        lines.iter().partition(|line| line.starts_with("outcome "));
    assert_eq!(
        asked,
        ["interrupted after"],
        "only the call in flight at the kill is one the restart cut short: the cell's \
         journal has the error `big` gave it"
    );
    let outcome: serde_json::Value = serde_json::from_str(
        outcome
            .first()
            .and_then(|line| line.strip_prefix("outcome "))
            .unwrap_or_else(|| panic!("no outcome: {lines:?}")),
    )
    .expect("JSON");
    assert_eq!(
        runs_now(),
        ["big", r#"after {"got":"an error"}"#],
        "a call ran again"
    );
    let unkept = code_mode_protocol::texts::state_unwritten(
        "the tool ran, its answer was not kept",
        &store_error,
    );
    assert_eq!(
        outcome,
        serde_json::json!({
            "texts": [unkept, code_mode_protocol::texts::interrupted_call("after")],
            "error": null,
        })
    );
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

/// `max_bytes` bounds a provider's store as the CLI's fronts': past seven eighths of it a
/// new session is refused with the store's figures, the sessions opened before it keep
/// working, and nothing of the refused one is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_is_refused_near_the_stores_cap_and_the_others_go_on() {
    use code_mode_conformance::TestDelegate;
    use code_mode_host::state::{Keeper, StateError, StoreOptions};
    use code_mode_host::{
        CodeModeSession, KeptSessions, ProcessConfig, ProcessProvider, Runtimes, StoredError,
        StoredProvider,
    };
    use code_mode_protocol::{ExecRequest, SessionOptions};
    let scratch = Scratch::new();
    let options = StoreOptions {
        max_bytes: Some(400_000),
        ..StoreOptions::default()
    };
    let (keeper, saved) = Keeper::open_sqlite(&scratch.0, "agent", options).expect("opens");
    let kept = std::sync::Arc::new(KeptSessions::over(std::sync::Arc::new(keeper), saved));
    let provider = ProcessProvider::new(ProcessConfig::default()).expect("the runtime is built");
    let sessions = StoredProvider::new(Runtimes::Local(provider), kept);
    let value: std::sync::Arc<str> = format!("\"{}\"", "x".repeat(50_000)).into();
    let mut opened = Vec::new();
    let refusal = loop {
        let values = [("k".to_owned(), value.clone())].into_iter().collect();
        let id = format!("s{}", opened.len());
        match sessions
            .open(&id, TestDelegate::new(), SessionOptions::default(), values)
            .await
        {
            Ok(session) => opened.push(session),
            Err(refused) => break refused,
        }
        assert!(opened.len() < 20, "20 sessions of 50 kB each fit in 400 kB");
    };
    assert!(
        matches!(
            refusal,
            StoredError::State(StateError::Full { max: 400_000, .. })
        ),
        "{refusal}"
    );
    assert!(opened.len() >= 4, "refused too soon: {}", opened.len());
    // Nothing of the refused session was written: the store holds the others only.
    let stats = sessions.stats().expect("a store's figures");
    assert_eq!(stats.sessions, opened.len() as u64, "{stats:?}");
    let first = opened[0]
        .execute(ExecRequest::new("text(load('k').length)"))
        .await
        .expect("the first session goes on");
    assert_eq!(
        first.initial_response.content_items(),
        &[code_mode_protocol::ContentItem::text("50000")],
        "{first:?}"
    );
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
    assert!(matches!(held, Claimed::Live), "held by A, alive: {held:?}");
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
