//! An agent core that keeps its sessions in a store and goes on with them after it is
//! killed: the host crate's restart test runs it twice (`code_mode_host::StoredProvider`).
//!
//! `stored_agent start --state DIR --log FILE` (or `--state-url URL` for Postgres): opens sessions `a`, `b` and `c` on a
//! runtime process, each running a cell that makes three calls of the slow tool `slow`;
//! the second call of each never ends in this process (it sleeps), so the agent is killed
//! with that call in flight. Session `d`'s cell is killed in a timer after its first call
//! was answered. `stored_agent resume --state DIR --log FILE`: lists the kept sessions
//! and resumes them: the interrupted call of `a` fails, that of `b` is sent again, that
//! of `c` is answered with what the agent core knows (`"known"`); `d` has none. Prints
//! each cell's output as a JSON line `{"session", "text"}`.
//!
//! The tool appends `start <session> <n>` to the log when it starts and `end <session>
//! <n>` when it ends, so the test counts how often each call ran. The store appends
//! `recorded <session> <answer>` once an answer is durable, so the test knows when a kill
//! can no longer lose it.
//!
//! The runtime binary is found as the host crate finds it (`CODE_MODE_BIN`, beside the
//! executable, or on the PATH).

use code_mode_host::state::{AnswerRecord, Changes, Keeper, StateError, StoreOptions};
use code_mode_host::{
    CodeModeSession, Interrupted, KeptSessions, ProcessConfig, ProcessProvider, Runtimes,
    SessionStore, StoredProvider,
};
use code_mode_protocol::{
    BoxFuture, CellResponse, CodeModeSessionDelegate, ExecRequest, JsonText, NestedToolCall,
    SessionOptions, ToolDefinition, ToolError, ToolKind, WaitRequest,
};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The cell every session runs: three calls, each caught, so that a failed one shows its
/// error in the output instead of ending the cell.
const SOURCE: &str = r#"
const out = [];
for (let n = 0; n < 3; n++) {
  try { out.push(await tools.slow({ n })); } catch (error) { out.push(String(error.message ?? error)); }
}
text(JSON.stringify(out));
"#;

/// Session `d`'s cell: its call is answered, then it waits on a timer, which the kill cuts
/// short: what it got is only in the answers the store recorded.
const TIMER_SOURCE: &str = r#"
const out = [];
out.push(await tools.slow({ n: 0 }));
await new Promise((resolve) => setTimeout(resolve, 3000));
out.push(await tools.slow({ n: 2 }));
text(JSON.stringify(out));
"#;

const SESSIONS: [&str; 4] = ["a", "b", "c", "d"];

/// The tool: logs its start and end; the call `n = 1` never ends in the first process.
struct Slow {
    session: String,
    log: PathBuf,
    first_process: bool,
}

/// Appends `line` to the log in one write, so appends of concurrent calls never interleave.
fn append(log: &std::path::Path, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the log opens");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("the log is written");
}

impl Slow {
    fn log(&self, line: &str) {
        append(&self.log, line);
    }
}

/// The keeper, logging each answer once the store has made it durable: an agent core may
/// bring its own store, and this one only watches.
struct Logged {
    keeper: Keeper,
    log: PathBuf,
}

impl SessionStore for Logged {
    fn write(&self, changes: Changes) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.keeper.write(changes))
    }

    fn record_answer(&self, answer: AnswerRecord) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let line = match &answer.result {
                Ok(value) => format!("recorded {} {}", answer.session, value.as_str()),
                Err(_) => format!("recorded {} error", answer.session),
            };
            self.keeper.record_answer(answer).await?;
            append(&self.log, &line);
            Ok(())
        })
    }

    fn remove(&self, session: &str) {
        self.keeper.remove(session);
    }
}

impl CodeModeSessionDelegate for Slow {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        Box::pin(async move {
            let input: serde_json::Value = call
                .input
                .as_ref()
                .and_then(|input| serde_json::from_str(input.as_str()).ok())
                .unwrap_or_default();
            let n = input["n"].as_u64().unwrap_or(99);
            self.log(&format!("start {} {n}", self.session));
            if self.first_process && n == 1 {
                cancel.cancelled().await;
                return Err(ToolError::new("cancelled"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.log(&format!("end {} {n}", self.session));
            Ok(JsonText::new(n.to_string()))
        })
    }
}

fn tools() -> Vec<ToolDefinition> {
    vec![ToolDefinition::new(
        "slow",
        "A slow tool.",
        ToolKind::Function,
    )]
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .cloned()
}

/// The store the command line names: a state directory (SQLite), or a Postgres database
/// (`--state-url`), with what it held.
fn open_store() -> (Keeper, code_mode_host::state::Saved) {
    match (arg("--state"), arg("--state-url")) {
        (Some(dir), None) => Keeper::open_sqlite(dir.as_ref(), "agent", StoreOptions::default()),
        // The same replica name in both runs: the restarted agent takes its sessions back
        // at once, without waiting for the killed one's leases to run out.
        (None, Some(url)) => Keeper::open_postgres(
            &url,
            "agent",
            StoreOptions {
                replica: Some("agent-1".to_owned()),
                ..StoreOptions::default()
            },
        ),
        _ => panic!("--state DIR or --state-url URL is required"),
    }
    .expect("the store opens")
}

#[tokio::main]
#[expect(clippy::print_stdout, reason = "its lines are what the test reads")]
async fn main() {
    let mode = std::env::args().nth(1).expect("start or resume");
    let log = PathBuf::from(arg("--log").expect("--log is required"));
    let (keeper, saved) = open_store();
    let store = Logged {
        keeper,
        log: log.clone(),
    };
    let kept = Arc::new(KeptSessions::over(Arc::new(store), saved));
    let config = ProcessConfig {
        generations_before: kept.generations_before(),
        ..ProcessConfig::default()
    };
    let provider = ProcessProvider::new(config).expect("a runtime binary");
    let sessions = StoredProvider::new(Runtimes::Local(provider), kept);
    let first_process = mode == "start";
    let delegate = |session: &str| -> Arc<dyn CodeModeSessionDelegate> {
        Arc::new(Slow {
            session: session.to_owned(),
            log: log.clone(),
            first_process,
        })
    };
    if first_process {
        let mut kept = Vec::new();
        for id in SESSIONS {
            let session = sessions
                .open(
                    id,
                    delegate(id),
                    SessionOptions::default(),
                    Default::default(),
                )
                .await
                .expect("the session opens");
            let source = if id == "d" { TIMER_SOURCE } else { SOURCE };
            // Returns at once: what the store has of the calls after this is what the
            // session wrote by itself.
            let started = session
                .execute(
                    ExecRequest::new(source)
                        .with_tools(tools())
                        .with_yield_time_ms(0),
                )
                .await
                .expect("the cell starts");
            assert!(
                matches!(started.initial_response, CellResponse::Yielded { .. }),
                "{:?}",
                started.initial_response
            );
            kept.push(session);
        }
        println!("started");
        // Killed here, with each session's second call in flight.
        std::future::pending::<()>().await;
    }
    let kept = sessions.kept();
    assert_eq!(kept, SESSIONS, "the kept sessions");
    for id in SESSIONS {
        let session = sessions
            .resume(id, delegate(id), SessionOptions::default(), |call| {
                assert_eq!(call.tool_name, "slow");
                match id {
                    "a" | "d" => Interrupted::Fail,
                    "b" => Interrupted::Retry,
                    _ => Interrupted::Answer(Ok(JsonText::new("\"known\""))),
                }
            })
            .await
            .expect("the session resumes");
        let text = loop {
            let response = session
                .wait(WaitRequest::new("1").with_yield_time_ms(10_000))
                .await
                .expect("the cell is waited on");
            if let CellResponse::Yielded { .. } = response {
                continue;
            }
            assert!(response.error_text().is_none(), "{response:?}");
            break response
                .content_items()
                .iter()
                .filter_map(code_mode_protocol::ContentItem::as_text)
                .collect::<String>();
        };
        println!("{}", serde_json::json!({ "session": id, "text": text }));
        session.close().await;
    }
}
