//! An agent core whose tool `pay` needs a person's approval, killed while its cells wait
//! and started again: the host crate's approvals test runs it twice
//! (`StoredProvider::with_approvals`).
//!
//! `approval_agent start --state DIR --log FILE` (or `--state-url URL` for Postgres): opens
//! sessions `p0` … `p9` on a runtime process, each running ten cells that call `pay` once
//! (`{ "n": <session * 10 + cell> }`). Each `exec` asks for a long observation, which ends
//! as soon as its call waits on a person, with the line the model reads; the agent prints
//! `{"waiting": <the line>}` for the first, then `waiting <count>` once the store lists
//! every call, and waits to be killed. `approval_agent resume …`: (on Postgres, as another
//! replica: it takes each session over once the killed one's lease ran out) resumes every
//! kept session (a call that may have been sent fails: `Interrupted::Fail`), prints `resumed`,
//! and prints each cell's output as a JSON line `{"session", "cell", "text"}` as it ends.
//!
//! The tool appends `pay <input>` to the log each time it runs, so the test counts what was
//! sent. `--sessions N` and `--cells N` change the ten and ten; `--slow-ms MS` makes the
//! tool wait that long before it pays (a process killed then was sent the call, which had
//! no effect yet).

use code_mode_host::state::{Keeper, StoreLocation, StoreOptions};
use code_mode_host::{
    Approvals, CodeModeSession, Interrupted, KeptSessions, ProcessConfig, ProcessProvider,
    Runtimes, StoredProvider,
};
use code_mode_protocol::{
    ApprovalNeed, BoxFuture, CellResponse, CodeModeSessionDelegate, ExecRequest, JsonText,
    NestedToolCall, SessionOptions, ToolDefinition, ToolError, ToolKind, WaitRequest,
};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many sessions, and cells in each.
#[derive(Clone, Copy)]
struct Shape {
    sessions: usize,
    cells: usize,
}

/// The tool: needs an approval, and logs each run (`slow` after it was sent).
struct Pay {
    log: PathBuf,
    slow: Duration,
}

impl CodeModeSessionDelegate for Pay {
    fn approval(&self, call: &NestedToolCall) -> Option<ApprovalNeed> {
        (call.tool_name == "pay").then(|| ApprovalNeed::because("it moves money"))
    }

    fn invoke_tool(
        &self,
        call: NestedToolCall,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        Box::pin(async move {
            tokio::time::sleep(self.slow).await;
            let input = call
                .input
                .map_or_else(|| "null".to_owned(), |text| text.as_str().to_owned());
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("the log opens");
            // One write per line: concurrent calls never interleave.
            file.write_all(format!("pay {input}\n").as_bytes())
                .expect("the log is written");
            Ok(JsonText::new(input))
        })
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .cloned()
}

fn source(n: usize) -> String {
    format!(
        "try {{ const paid = await tools.pay({{ n: {n} }}); text('paid ' + JSON.stringify(paid)); }} \
         catch (error) {{ text('failed ' + String(error)); }}"
    )
}

#[tokio::main]
async fn main() {
    let mode = std::env::args().nth(1).expect("start or resume");
    let log = PathBuf::from(arg("--log").expect("--log is required"));
    let (location, options) = match (arg("--state"), arg("--state-url")) {
        (Some(dir), None) => (StoreLocation::Dir(dir.into()), StoreOptions::default()),
        // Another replica resumes: it takes each session over once the killed one's
        // lease (short here) ran out.
        (None, Some(url)) => (
            StoreLocation::Url(url),
            StoreOptions {
                replica: Some(format!("approver-{mode}")),
                lease: Duration::from_secs(2),
                ..StoreOptions::default()
            },
        ),
        _ => panic!("--state DIR or --state-url URL is required"),
    };
    let (keeper, saved) =
        Keeper::open(&location, "agent", options.clone()).expect("the store opens");
    let kept = Arc::new(KeptSessions::over(Arc::new(keeper), saved));
    let approvals = Approvals::open(&location, &options).expect("the approvals open");
    let config = ProcessConfig {
        generations_before: kept.generations_before(),
        ..ProcessConfig::default()
    };
    let provider = ProcessProvider::new(config).expect("a runtime binary");
    let sessions = StoredProvider::new(Runtimes::Local(provider), Arc::clone(&kept))
        .with_approvals(Arc::clone(&approvals), "agent");
    let number = |name: &str, default: u64| {
        arg(name).map_or(default, |value| value.parse().expect("a number"))
    };
    let shape = Shape {
        sessions: usize::try_from(number("--sessions", 10)).expect("small"),
        cells: usize::try_from(number("--cells", 10)).expect("small"),
    };
    let pay: Arc<dyn CodeModeSessionDelegate> = Arc::new(Pay {
        log,
        slow: Duration::from_millis(number("--slow-ms", 0)),
    });
    let tools: Arc<[ToolDefinition]> =
        vec![ToolDefinition::new("pay", "Pays.", ToolKind::Function)].into();
    if mode == "start" {
        start(&sessions, &approvals, &pay, &tools, shape).await;
    }
    if arg("--state-url").is_some() {
        for s in 0..shape.sessions {
            let taken = kept.take_over(&format!("p{s}")).await.expect("taken over");
            assert!(taken, "session p{s} is not in the store");
        }
    }
    resume(&sessions, &pay, shape).await;
}

/// Opens the sessions, starts every cell, and waits to be killed once all are listed.
#[expect(clippy::print_stdout, reason = "its lines are what the test reads")]
async fn start(
    sessions: &StoredProvider,
    approvals: &Approvals,
    pay: &Arc<dyn CodeModeSessionDelegate>,
    tools: &Arc<[ToolDefinition]>,
    Shape {
        sessions: count,
        cells,
    }: Shape,
) {
    let mut open = Vec::new();
    for s in 0..count {
        let session = sessions
            .open(
                &format!("p{s}"),
                Arc::clone(pay),
                SessionOptions::default(),
                Default::default(),
            )
            .await
            .expect("the session opens");
        for c in 0..cells {
            let started = session
                .execute(
                    ExecRequest::new(source(s * cells + c))
                        .with_tools(Arc::clone(tools))
                        .with_yield_time_ms(3_600_000),
                )
                .await
                .expect("the cell starts");
            let CellResponse::Yielded { content_items, .. } = &started.initial_response else {
                panic!("the cell did not wait: {:?}", started.initial_response);
            };
            if s == 0 && c == 0 {
                let line = content_items
                    .iter()
                    .filter_map(|item| item.as_text())
                    .collect::<Vec<_>>()
                    .join("\n");
                println!("{}", serde_json::json!({ "waiting": line }));
            }
        }
        open.push(session);
    }
    loop {
        let listed = approvals
            .pending(Some("agent"), None)
            .await
            .expect("listed")
            .len();
        if listed == count * cells {
            println!("waiting {listed}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killed here.
    std::future::pending::<()>().await;
}

/// Resumes every kept session and prints each cell's output as it ends.
#[expect(clippy::print_stdout, reason = "its lines are what the test reads")]
async fn resume(
    sessions: &StoredProvider,
    pay: &Arc<dyn CodeModeSessionDelegate>,
    Shape { cells, .. }: Shape,
) {
    let mut resumed = Vec::new();
    for id in sessions.kept() {
        let session = sessions
            .resume(&id, Arc::clone(pay), SessionOptions::default(), |_| {
                Interrupted::Fail
            })
            .await
            .expect("the session resumes");
        resumed.push((id, session));
    }
    println!("resumed");
    let mut waits = tokio::task::JoinSet::new();
    for (id, session) in resumed {
        for c in 1..=cells {
            let (id, session) = (id.clone(), Arc::clone(&session));
            waits.spawn(async move {
                let mut text = String::new();
                loop {
                    let response = session
                        .wait(WaitRequest::new(c.to_string()).with_yield_time_ms(10_000))
                        .await
                        .expect("the cell is waited on");
                    // What the cell printed, without the lines that say its call waits.
                    for item in response.content_items() {
                        match item.as_text() {
                            Some(line) if !line.starts_with("Waiting for approval") => {
                                text.push_str(line);
                            }
                            _ => {}
                        }
                    }
                    if let CellResponse::Yielded { .. } = response {
                        // It still waits on a person: not too often.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    if let Some(error) = response.error_text() {
                        text.push_str(&format!("(cell error: {error})"));
                    }
                    println!(
                        "{}",
                        serde_json::json!({ "session": id, "cell": c, "text": text })
                    );
                    break;
                }
            });
        }
    }
    waits.join_all().await;
}
