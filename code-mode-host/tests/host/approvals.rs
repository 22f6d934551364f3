//! Calls that wait on a person (issue 86), on a real store: a call that needs an approval
//! never reaches its delegate before one is recorded; it is listed with its exact input;
//! approved (edited or not) it runs once with the input approved, denied it never runs and
//! its promise rejects with the approver's message; a decision is taken once, and only on
//! the session's own calls. An agent killed with -9 while 100 cells wait is started again
//! (on Postgres, as another replica would): every approval is still listed, each
//! approved call is sent once, each denied one never, and one taken to be sent before the
//! kill is not sent again; an agent killed for real while an approved call is being sent
//! sends it at most once.

use code_mode_conformance::Scratch;
use code_mode_host::state::{
    ApprovalBook, ApprovalError, ApprovalState, StoreLocation, StoreOptions,
};
use code_mode_host::{
    ApprovalGate, Approvals, CodeModeSession, GateSite, KeptSessions, ProcessConfig,
    ProcessProvider, Runtimes, StoredProvider, WaitingCalls,
};
use code_mode_internal::sync::lock;
use code_mode_protocol::approval::Decision;
use code_mode_protocol::{
    ApprovalNeed, BoxFuture, CallId, CellId, CellResponse, CodeModeSessionDelegate, ContentItem,
    ExecRequest, JsonText, NestedToolCall, SessionOptions, ToolDefinition, ToolError, ToolKind,
    WaitRequest,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Tools `send` (needs an approval) and `free` (does not): every input each ran with.
#[derive(Default)]
struct Mail(Mutex<Vec<(String, String)>>);

impl Mail {
    fn sent(&self, tool: &str) -> Vec<String> {
        lock(&self.0)
            .iter()
            .filter(|(name, _)| name == tool)
            .map(|(_, input)| input.clone())
            .collect()
    }
}

impl CodeModeSessionDelegate for Mail {
    fn approval(&self, call: &NestedToolCall) -> Option<ApprovalNeed> {
        (call.tool_name == "send").then(|| ApprovalNeed::because("it sends mail"))
    }

    fn invoke_tool(
        &self,
        call: NestedToolCall,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        let input = call
            .input
            .map_or_else(|| "null".to_owned(), |text| text.as_str().to_owned());
        lock(&self.0).push((call.tool_name, input.clone()));
        Box::pin(std::future::ready(Ok(JsonText::new(input))))
    }
}

fn mail_tools() -> Arc<[ToolDefinition]> {
    ["send", "free"]
        .map(|name| ToolDefinition::new(name, "A tool of the test.", ToolKind::Function))
        .into()
}

fn texts(response: &CellResponse) -> Vec<String> {
    response
        .content_items()
        .iter()
        .filter_map(ContentItem::as_text)
        .map(str::to_owned)
        .collect()
}

/// Waits on cell `id` until it ends: the texts of every observation on the way, but the
/// lines that say a call waits.
async fn finished(session: &dyn CodeModeSession, id: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let response = session
            .wait(WaitRequest::new(id).with_yield_time_ms(10_000))
            .await
            .expect("waited");
        seen.extend(
            texts(&response)
                .into_iter()
                .filter(|text| text != WAITING_LINE),
        );
        if !matches!(response, CellResponse::Yielded { .. }) {
            assert!(response.error_text().is_none(), "{response:?}");
            return seen;
        }
        assert!(Instant::now() < deadline, "cell {id} did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An agent core's sessions kept at `location` under the front `agent`, with its approvals
/// (started past the store's runtime generations, as after a restart).
fn agent(location: &StoreLocation, options: &StoreOptions) -> (StoredProvider, Arc<Approvals>) {
    let kept = Arc::new(KeptSessions::open(location, "agent", options.clone()).expect("opens"));
    let approvals = Approvals::open(location, options).expect("the approvals open");
    let provider = ProcessProvider::new(ProcessConfig {
        generations_before: kept.generations_before(),
        ..ProcessConfig::default()
    })
    .expect("the runtime is built");
    let sessions = StoredProvider::new(Runtimes::Local(provider), kept)
        .with_approvals(Arc::clone(&approvals), "agent");
    (sessions, approvals)
}

const WAITING_LINE: &str = "Waiting for approval: `send` (call tool-2), because: it sends mail. The cell goes on when a person decides.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_its_approval_and_runs_once_approved_as_edited_or_never_when_denied() {
    let scratch = Scratch::new();
    let location = StoreLocation::Dir(scratch.0.join("state"));
    let options = StoreOptions::default();
    let (sessions, _) = agent(&location, &options);
    let mail = Arc::new(Mail::default());
    let session = sessions
        .open(
            "one",
            mail.clone(),
            SessionOptions::default(),
            Default::default(),
        )
        .await
        .expect("opens");
    let source = "const free = await tools.free({ a: 1 }); text('free ' + JSON.stringify(free)); \
                  try { text('sent ' + JSON.stringify(await tools.send({ to: 'x' }))); } \
                  catch (error) { text('failed ' + String(error)); }";
    // An hour's observation: it ends because the call waits, with the line the model reads.
    let started = session
        .execute(
            ExecRequest::new(source)
                .with_tools(mail_tools())
                .with_yield_time_ms(3_600_000),
        )
        .await
        .expect("starts");
    assert!(
        matches!(started.initial_response, CellResponse::Yielded { .. }),
        "{:?}",
        started.initial_response
    );
    assert_eq!(
        texts(&started.initial_response),
        ["free {\"a\":1}", WAITING_LINE]
    );
    assert!(mail.sent("send").is_empty(), "sent before an approval");
    assert_eq!(mail.sent("free"), ["{\"a\":1}"]);

    let pending = session.pending_approvals().await.expect("listed");
    assert_eq!(pending.len(), 1, "{pending:?}");
    let waiting = &pending[0];
    assert_eq!(
        (
            waiting.tool.as_str(),
            waiting.input.as_ref().map(JsonText::as_str),
            waiting.reason.as_deref(),
            waiting.session.as_str(),
        ),
        ("send", Some("{\"to\":\"x\"}"), Some("it sends mail"), "one")
    );
    // A wait while it still waits returns at once, with the line again.
    let again = session
        .wait(WaitRequest::new("1").with_yield_time_ms(3_600_000))
        .await
        .expect("waited");
    assert_eq!(texts(&again), [WAITING_LINE]);

    // Edited input that is not JSON is refused, and the call still waits.
    let refused = session.approve(&waiting.id, Some("{to".to_owned())).await;
    assert!(
        matches!(refused, Err(ApprovalError::BadInput { .. })),
        "{refused:?}"
    );
    // Another session cannot decide it.
    let other = sessions
        .open(
            "two",
            mail.clone(),
            SessionOptions::default(),
            Default::default(),
        )
        .await
        .expect("opens");
    let foreign = other.approve(&waiting.id, None).await;
    assert!(
        matches!(foreign, Err(ApprovalError::NotWaiting(_))),
        "{foreign:?}"
    );
    assert!(mail.sent("send").is_empty());

    session
        .approve(&waiting.id, Some("{\"to\":\"y\"}".to_owned()))
        .await
        .expect("approved");
    let done = finished(session.as_ref(), "1").await;
    assert_eq!(done, ["sent {\"to\":\"y\"}"]);
    assert_eq!(
        mail.sent("send"),
        ["{\"to\":\"y\"}"],
        "the input approved, once"
    );
    let twice = session.approve(&waiting.id, None).await;
    assert!(
        matches!(twice, Err(ApprovalError::NotWaiting(_))),
        "{twice:?}"
    );

    // Denied: the tool never runs, the model reads the message.
    let second_start = session
        .execute(
            ExecRequest::new(source)
                .with_tools(mail_tools())
                .with_yield_time_ms(0),
        )
        .await
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let pending = session.pending_approvals().await.expect("listed");
        if let Some(found) = pending.into_iter().next() {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the second call was never listed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    session.deny(&second.id, "not today").await.expect("denied");
    let done = finished(session.as_ref(), "2").await;
    let mut seen = texts(&second_start.initial_response);
    seen.extend(done);
    assert_eq!(
        seen,
        [
            "free {\"a\":1}",
            "failed denied: the call of `send` was not approved, so it did not run: not today"
        ]
    );
    assert_eq!(
        mail.sent("send"),
        ["{\"to\":\"y\"}"],
        "nothing sent when denied"
    );
    session.close().await;
    other.close().await;
}

/// The approvals test's agent, run on `store`'s arguments: killed with -9 while 100 cells
/// wait, started again, every call decided from this process.
fn killed_while_a_hundred_wait(store: &[&str], location: &StoreLocation) {
    let scratch = Scratch::new();
    let log = scratch.0.join("pay.log");
    let mut first = crate::example("approval_agent")
        .arg("start")
        .args(store)
        .arg("--log")
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the agent starts");
    let mut lines = BufReader::new(first.stdout.take().expect("stdout")).lines();
    let waiting: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    assert_eq!(
        waiting["waiting"],
        "Waiting for approval: `pay` (call tool-1), because: it moves money. The cell goes on when a person decides."
    );
    assert_eq!(lines.next().expect("a line").expect("read"), "waiting 100");
    assert!(!log.exists(), "a call was sent before its approval");
    first.kill().expect("kill -9");
    first.wait().expect("reaped");

    let options = StoreOptions {
        replica: Some("approver-2".to_owned()),
        ..StoreOptions::default()
    };
    let book = ApprovalBook::open(location, &options).expect("the book opens");
    let pending = book.pending(Some("agent"), None).expect("listed");
    assert_eq!(pending.len(), 100, "every approval listed after the kill");
    let by_n: HashMap<u64, String> = pending
        .iter()
        .map(|approval| {
            assert_eq!(approval.tool, "pay");
            assert_eq!(approval.reason.as_deref(), Some("it moves money"));
            let input: serde_json::Value =
                serde_json::from_str(approval.input.as_ref().expect("input").as_str())
                    .expect("JSON");
            (input["n"].as_u64().expect("n"), approval.id.clone())
        })
        .collect();
    assert_eq!(by_n.len(), 100);
    // Decided while no agent runs: n % 4 == 0 approved (0 with an edited input), 1 denied;
    // n = 4 approved and taken to be sent, as a process killed right after would leave it.
    for (n, id) in &by_n {
        let decision = match n % 4 {
            0 if *n == 0 => Decision::Approve {
                input: Some("{\"n\":0,\"edited\":true}".to_owned()),
            },
            0 => Decision::Approve { input: None },
            1 => Decision::Deny {
                message: "no".to_owned(),
            },
            _ => continue,
        };
        book.decide(id, &decision, None).expect("decided");
    }
    assert!(book.take_to_send(&by_n[&4]).expect("taken"));
    assert!(!book.take_to_send(&by_n[&4]).expect("asked"), "taken once");

    let mut second = crate::example("approval_agent")
        .arg("resume")
        .args(store)
        .arg("--log")
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the agent starts again");
    let mut lines = BufReader::new(second.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("read"), "resumed");
    // Decided from this process while the agent runs: it learns by looking.
    for (n, id) in &by_n {
        let decision = match n % 4 {
            2 => Decision::Approve { input: None },
            3 => Decision::Deny {
                message: "later".to_owned(),
            },
            _ => continue,
        };
        book.decide(id, &decision, None).expect("decided");
    }
    let mut outputs = HashMap::new();
    for line in lines.by_ref().take(100) {
        let line: serde_json::Value = serde_json::from_str(&line.expect("read")).expect("JSON");
        let session: u64 = line["session"].as_str().expect("session")[1..]
            .parse()
            .expect("p<number>");
        let n = session * 10 + line["cell"].as_u64().expect("cell") - 1;
        outputs.insert(n, line["text"].as_str().expect("text").to_owned());
    }
    assert!(second.wait().expect("ended").success());
    assert_eq!(outputs.len(), 100, "every cell ended");
    let sent = std::fs::read_to_string(&log).unwrap_or_default();
    for n in 0..100_u64 {
        let expected = match n % 4 {
            _ if n == 0 => "paid {\"n\":0,\"edited\":true}".to_owned(),
            _ if n == 4 => format!(
                "failed {}",
                code_mode_protocol::texts::interrupted_call("pay")
            ),
            0 | 2 => format!("paid {{\"n\":{n}}}"),
            1 => "failed denied: the call of `pay` was not approved, so it did not run: no"
                .to_owned(),
            _ => "failed denied: the call of `pay` was not approved, so it did not run: later"
                .to_owned(),
        };
        assert_eq!(outputs[&n], expected, "cell of n = {n}");
        let input = if n == 0 {
            "{\"n\":0,\"edited\":true}".to_owned()
        } else {
            format!("{{\"n\":{n}}}")
        };
        let runs = sent
            .lines()
            .filter(|line| *line == format!("pay {input}"))
            .count();
        let expected_runs = usize::from(n % 4 == 0 || n % 4 == 2) - usize::from(n == 4);
        assert_eq!(runs, expected_runs, "runs of n = {n}");
    }
    let left = book.pending(Some("agent"), None).expect("listed");
    assert!(left.is_empty(), "{left:?}");
    let decided_again = book.decide(&by_n[&2], &Decision::Approve { input: None }, None);
    assert!(
        matches!(decided_again, Err(ApprovalError::NotWaiting(_))),
        "{decided_again:?}"
    );
    // The denied ones were told, the approved ones sent: none is left to deliver.
    for (n, id) in &by_n {
        if let Some(row) = book.get(id).expect("read") {
            assert!(
                matches!(
                    row.state,
                    ApprovalState::Sending { .. } | ApprovalState::Told { .. }
                ),
                "n = {n}: {row:?}"
            );
        }
    }
}

#[test]
fn an_agent_killed_while_a_hundred_cells_wait_on_approvals_sends_each_approved_call_once() {
    let scratch = Scratch::new();
    let state = scratch.0.join("state");
    let location = StoreLocation::Dir(state.clone());
    killed_while_a_hundred_wait(&["--state", state.to_str().expect("UTF-8")], &location);
}

#[test]
fn on_postgres_a_hundred_waiting_approvals_outlive_the_agent_and_another_process_decides_them() {
    let cluster = code_mode_conformance::PgCluster::start();
    let location = StoreLocation::Url(cluster.url.clone());
    killed_while_a_hundred_wait(&["--state-url", &cluster.url], &location);
}

/// A Postgres book dropped by an async task closes its connection without a panic (its
/// blocking client's close runs an async runtime of its own, which an async runtime's
/// thread refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_on_postgres_dropped_by_an_async_task_close_quietly() {
    let cluster = code_mode_conformance::PgCluster::start();
    let location = StoreLocation::Url(cluster.url.clone());
    let approvals = Approvals::open(&location, &StoreOptions::default()).expect("opens");
    let listed = approvals.pending(None, None).await.expect("listed");
    assert!(listed.is_empty());
    let dropped = tokio::spawn(async move { drop(approvals) }).await;
    assert!(dropped.is_ok(), "the drop panicked: {dropped:?}");
}

/// A stored session shut down (not closed) while its call waits on a person keeps the call
/// waiting for the next process: its approval stays listed, the call is not answered with
/// the shutdown's cancellation, and once approved there it runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_session_shut_down_while_its_call_waits_keeps_it_for_the_next_process() {
    use code_mode_host::Interrupted;
    let scratch = Scratch::new();
    let location = StoreLocation::Dir(scratch.0.join("state"));
    let options = StoreOptions::default();
    let open = || agent(&location, &options).0;
    let first = Arc::new(Mail::default());
    let sessions = open();
    let session = sessions
        .open(
            "kept",
            first.clone(),
            SessionOptions::default(),
            Default::default(),
        )
        .await
        .expect("opens");
    let source = "text('sent ' + JSON.stringify(await tools.send({ to: 'x' })));";
    let started = session
        .execute(
            ExecRequest::new(source)
                .with_tools(mail_tools())
                .with_yield_time_ms(3_600_000),
        )
        .await
        .expect("starts");
    assert_eq!(
        texts(&started.initial_response),
        [WAITING_LINE.replace("tool-2", "tool-1")]
    );
    let waiting = session.pending_approvals().await.expect("listed");
    assert_eq!(waiting.len(), 1);
    session.shutdown().await;
    drop(session);
    drop(sessions);

    let second = Arc::new(Mail::default());
    let sessions = open();
    let resumed = sessions
        .resume("kept", second.clone(), SessionOptions::default(), |_| {
            Interrupted::Fail
        })
        .await
        .expect("resumes");
    let still = resumed.pending_approvals().await.expect("listed");
    assert_eq!(
        still
            .iter()
            .map(|approval| &approval.id)
            .collect::<Vec<_>>(),
        [&waiting[0].id],
        "the same call still waits"
    );
    resumed
        .approve(&waiting[0].id, None)
        .await
        .expect("approved");
    assert_eq!(
        finished(resumed.as_ref(), "1").await,
        ["sent {\"to\":\"x\"}"]
    );
    assert_eq!(second.sent("send"), ["{\"to\":\"x\"}"]);
    assert!(first.sent("send").is_empty());
    resumed.close().await;
}

/// A row the book keeps under a call's number for another call (a rebuilt cell that went
/// another way, say) is not that call's: it is refused, never sent on that approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_kept_for_another_call_under_the_same_number_is_not_used() {
    use code_mode_host::state::ApprovalRequest;
    let scratch = Scratch::new();
    let location = StoreLocation::Dir(scratch.0.join("state"));
    let options = StoreOptions::default();
    let (sessions, _) = agent(&location, &options);
    // Approved already, for a call of another tool with this session's cell 1, call 1.
    let book = ApprovalBook::open(&location, &options).expect("opens");
    let other = book
        .request(&ApprovalRequest {
            front: "agent".to_owned(),
            session: "m".to_owned(),
            cell_id: code_mode_protocol::CellId::new(1),
            call: code_mode_protocol::CallId::new(1),
            tool: "free".to_owned(),
            input: None,
            reason: None,
            principal: None,
        })
        .expect("kept");
    book.decide(&other.id, &Decision::Approve { input: None }, None)
        .expect("approved");
    let mail = Arc::new(Mail::default());
    let session = sessions
        .open(
            "m",
            mail.clone(),
            SessionOptions::default(),
            Default::default(),
        )
        .await
        .expect("opens");
    session
        .execute(
            ExecRequest::new(
                "try { await tools.send({ to: 'x' }); } catch (error) { text(String(error)); }",
            )
            .with_tools(mail_tools())
            .with_yield_time_ms(0),
        )
        .await
        .expect("starts");
    assert_eq!(
        finished(session.as_ref(), "1").await,
        [
            "refused: the call of `send` does not match the approval kept for it (another call's, or an input other than the one approved), so it did not run"
        ]
    );
    assert!(
        mail.sent("send").is_empty(),
        "sent on another call's approval"
    );
    session.close().await;
}

/// A call whose cell stops waiting (terminated while its call waits on a person) is
/// settled for the gate's watch: a front's list of waiting calls (the lines the model
/// reads, an MCP task's input requests) does not keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_cell_stops_waiting_leaves_the_watch() {
    let scratch = Scratch::new();
    let location = StoreLocation::Dir(scratch.0.join("state"));
    let approvals = Approvals::open(&location, &StoreOptions::default()).expect("opens");
    let watch = Arc::new(WaitingCalls::default());
    let mail = Arc::new(Mail::default());
    let gate = Arc::new(ApprovalGate::new(
        mail.clone(),
        GateSite {
            approvals,
            front: "agent".to_owned(),
            session: "one".to_owned(),
            principal: None,
            watch: watch.clone(),
            stopping: Arc::default(),
            ended: CancellationToken::new(),
        },
    ));
    let cell = CellId::new(1);
    let call = NestedToolCall {
        cell_id: cell.clone(),
        call_id: CallId::new(1),
        tool_name: "send".to_owned(),
        kind: ToolKind::Function,
        input: Some(JsonText::new("{\"to\":\"x\"}")),
        exec_call_id: None,
    };
    let stop = CancellationToken::new();
    let through = tokio::spawn({
        let (gate, stop) = (Arc::clone(&gate), stop.clone());
        async move {
            gate.through(call, ApprovalNeed::because("it sends mail"), stop)
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while watch.of(&cell).is_empty() {
        assert!(Instant::now() < deadline, "the call never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let answer = through.await.expect("the call ended");
    assert!(answer.is_err(), "{answer:?}");
    assert!(watch.of(&cell).is_empty(), "{:?}", watch.of(&cell));
}

/// A kill between an approval's record and the call's effect, for real: the agent killed
/// with -9 while a cell waits; the call approved from this process; the agent resumed with
/// a tool that takes a minute after it is sent, and killed with -9 once the store says the
/// call was taken to be sent; resumed again. The call was sent at most once: the tool's own
/// log shows no payment, and the cell reads that its call was cut short (it is not sent
/// again, whatever happened in the window).
#[test]
fn a_kill_between_an_approval_and_the_send_sends_the_call_at_most_once() {
    let scratch = Scratch::new();
    let state = scratch.0.join("state");
    let log = scratch.0.join("pay.log");
    let agent = |mode: &str, extra: &[&str]| {
        crate::example("approval_agent")
            .arg(mode)
            .args(["--state", state.to_str().expect("UTF-8")])
            .args(["--sessions", "1", "--cells", "1", "--log"])
            .arg(&log)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the agent starts")
    };
    let mut first = agent("start", &[]);
    let mut lines = BufReader::new(first.stdout.take().expect("stdout")).lines();
    lines.next().expect("the waiting line").expect("read");
    assert_eq!(lines.next().expect("a line").expect("read"), "waiting 1");
    first.kill().expect("kill -9");
    first.wait().expect("reaped");

    let book = ApprovalBook::open(&StoreLocation::Dir(state.clone()), &StoreOptions::default())
        .expect("the book opens");
    let pending = book.pending(Some("agent"), None).expect("listed");
    let id = pending[0].id.clone();
    book.decide(&id, &Decision::Approve { input: None }, None)
        .expect("approved");

    let mut slow = agent("resume", &["--slow-ms", "60000"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = book.get(&id).expect("read").expect("the row");
        if matches!(row.state, ApprovalState::Sending { .. }) {
            break;
        }
        assert!(Instant::now() < deadline, "never sent: {row:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    slow.kill().expect("kill -9 while the call is sent");
    slow.wait().expect("reaped");

    let mut last = agent("resume", &[]);
    let mut lines = BufReader::new(last.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("read"), "resumed");
    let ended: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    assert!(last.wait().expect("ended").success());
    assert_eq!(
        ended["text"],
        format!(
            "failed {}",
            code_mode_protocol::texts::interrupted_call("pay")
        ),
        "{ended}"
    );
    assert!(
        std::fs::read_to_string(&log).unwrap_or_default().is_empty(),
        "the call was not sent again"
    );
}
