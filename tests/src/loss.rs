//! Runtime loss (contract §7), for the providers whose cells run in a runtime process:
//! a kill between cells keeps every committed value and shows no error; a kill during a
//! cell fails that cell once, with the runtime-lost error (also for a later `wait`), and
//! keeps the values of earlier cells; a drain between cells moves the session without an
//! error. `runtime_loss_suite!(faults)` expands to one test per scenario for a
//! [`RuntimeFaults`], which knows how to kill or drain the runtime under a session.

use crate::{Record, TestDelegate};
use code_mode_protocol::{
    BoxFuture, CellId, CellResponse, CodeModeProvider, CodeModeSession, ExecRequest, SessionError,
    SessionOptions, WaitRequest,
};
use serde_json::json;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// What the loss scenarios need of a provider besides the provider trait.
pub trait RuntimeFaults: Send + Sync {
    type Provider: CodeModeProvider;

    fn provider(&self) -> &Self::Provider;

    /// Where the session's cells run now (e.g. `pid 1234`), once it has run something.
    fn runtime_of(&self, session: &<Self::Provider as CodeModeProvider>::Session) -> String;

    /// Kills the runtime under `session` with SIGKILL, and returns once it is dead.
    fn kill<'a>(
        &'a self,
        session: &'a <Self::Provider as CodeModeProvider>::Session,
    ) -> BoxFuture<'a, ()>;

    /// Sends SIGTERM to the runtime under `session`, and returns once the provider knows
    /// that it drains.
    fn drain<'a>(
        &'a self,
        session: &'a <Self::Provider as CodeModeProvider>::Session,
    ) -> BoxFuture<'a, ()>;

    /// Stops the runtime under `session` with SIGSTOP: it reads and answers nothing until
    /// killed.
    fn stop(&self, session: &<Self::Provider as CodeModeProvider>::Session);

    /// Whether an exec the lost runtime never admitted runs again on a fresh runtime (the
    /// local process) rather than reporting the loss (a remote runtime, which may be alive
    /// behind a broken network).
    fn reruns_unadmitted(&self) -> bool;

    /// How many times in a row a scenario may kill the session's runtime and still have
    /// one to go on with (the local provider's crash-loop bound; the remote pool's
    /// runtimes beyond the first).
    fn kills_to_spare(&self) -> usize;
}

/// Sends `signal` (`KILL`, `TERM`) to `pid` with the system's `kill` (this crate has no
/// unsafe code).
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// The process id in a runtime's description (`pid 1234`).
pub fn pid_in(description: &str) -> u32 {
    description
        .strip_prefix("pid ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {description:?}"))
}

/// Waits until process `pid` is gone (reaped), at most 10 s.
pub async fn until_gone(pid: u32) {
    let path = format!("/proc/{pid}");
    for _ in 0..500 {
        if !std::path::Path::new(&path).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("process {pid} is still there 10 s after it was killed");
}

fn request(source: &str) -> ExecRequest {
    ExecRequest::new(source).with_tools(TestDelegate::tools())
}

async fn texts_of<S: CodeModeSession>(session: &S, source: &str) -> Vec<String> {
    let started = session
        .execute(request(source))
        .await
        .unwrap_or_else(|error| panic!("exec failed: {error}"));
    match started.initial_response {
        CellResponse::Result {
            content_items,
            failure: None,
            ..
        } => content_items
            .iter()
            .map(|item| item.as_text().expect("a text item").to_owned())
            .collect(),
        other => panic!("the cell did not complete: {other:?}"),
    }
}

/// The values every scenario stores and checks, with their exact text.
const STORE: &str = r#"store("plain", 42); store("nested", { a: [1, "two", null], b: { c: "é" } }); text("stored");"#;
const LOAD: &str = r#"text(JSON.stringify([load("plain"), load("nested"), load("never")]));"#;
const LOADED: &str = r#"[42,{"a":[1,"two",null],"b":{"c":"é"}},null]"#;

fn tool_calls(delegate: &TestDelegate) -> usize {
    delegate
        .records()
        .iter()
        .filter(|record| matches!(record, Record::ToolStarted { .. }))
        .count()
}

/// A session of the provider (shared, for tasks) that has stored [`STORE`]'s values.
async fn stored_session<F: RuntimeFaults>(
    faults: &F,
) -> (
    Arc<<F::Provider as CodeModeProvider>::Session>,
    Arc<TestDelegate>,
) {
    let delegate = TestDelegate::new();
    let session = Arc::new(
        faults
            .provider()
            .open_session(delegate.clone(), SessionOptions::default()),
    );
    assert_eq!(texts_of(&*session, STORE).await, ["stored"]);
    (session, delegate)
}

/// Starts `source`, which calls `tools.block()` first thing it waits on, and returns once
/// the cell yielded and is inside that call; its id.
pub async fn start_blocked<S: CodeModeSession>(
    session: &S,
    delegate: &TestDelegate,
    source: &str,
) -> CellId {
    let started = session
        .execute(request(source).with_yield_time_ms(100))
        .await
        .expect("exec");
    assert!(
        matches!(started.initial_response, CellResponse::Yielded { .. }),
        "{:?}",
        started.initial_response
    );
    delegate
        .wait_started(&started.cell_id.to_string(), "tool-1")
        .await;
    started.cell_id
}

/// Kill between cells: the next exec runs on a fresh runtime without an error, and
/// `load` sees every committed value, also one a cell committed after a tool call.
pub async fn a_kill_between_cells_keeps_every_committed_value<F: RuntimeFaults>(faults: &F) {
    let delegate = TestDelegate::new();
    let session = faults
        .provider()
        .open_session(delegate.clone(), SessionOptions::default());
    assert_eq!(texts_of(&session, STORE).await, ["stored"]);
    assert_eq!(
        texts_of(
            &session,
            r#"store("after_tool", await tools.echo({ n: 1 })); text("ok");"#
        )
        .await,
        ["ok"]
    );
    let before = faults.runtime_of(&session);
    faults.kill(&session).await;
    assert_eq!(texts_of(&session, LOAD).await, [LOADED]);
    assert_ne!(
        faults.runtime_of(&session),
        before,
        "the session did not move"
    );
    assert_eq!(
        texts_of(&session, r#"text(JSON.stringify(load("after_tool")));"#).await,
        [r#"{"n":1}"#]
    );
    let stored = session.stored_values();
    assert_eq!(stored["plain"].as_ref(), "42");
    assert_eq!(stored["after_tool"].as_ref(), r#"{"n":1}"#);
    assert_eq!(tool_calls(&delegate), 1, "no tool call was sent twice");
    session.shutdown().await;
}

/// Kill during a cell (contract §7, durable cells): the cell is rebuilt from its journal on
/// a fresh runtime, and nobody sees the loss. The wait in flight goes on and gets the
/// cell's result; the nested call in flight at the kill keeps running on the host and its
/// answer, given after the kill, reaches the rebuilt cell; no call is sent twice, the
/// output delivered before the kill is not given again, the cell's writes are committed
/// once and it is closed once; the values of earlier cells are kept.
pub async fn a_kill_during_a_cell_rebuilds_it_from_its_journal<F: RuntimeFaults>(faults: &F) {
    let (session, delegate) = stored_session(faults).await;
    let started = session
        .execute(
            request(
                r#"store("plain", "overwritten"); store("kept", Math.random() < 1); text("before");
                const v = await tools.block(Date.now() > 0); text("after " + v);"#,
            )
            .with_yield_time_ms(100),
        )
        .await
        .expect("exec");
    let cell_id = started.cell_id.clone();
    assert_eq!(
        started.initial_response.content_items(),
        [code_mode_protocol::ContentItem::text("before")]
    );
    delegate.wait_started(&cell_id.to_string(), "tool-1").await;
    let before = faults.runtime_of(&*session);
    // The wait is the cell's observer before the kill (known, not slept on), and the
    // answer comes right after the kill, while the loss is being dealt with.
    let waiting = crate::scenarios::observe_registered(&session, &cell_id.to_string()).await;
    faults.kill(&session).await;
    delegate
        .release(
            &cell_id.to_string(),
            "tool-1",
            Ok(serde_json::json!("late")),
        )
        .await;
    let response = waiting
        .await
        .expect("the wait task")
        .expect("the wait goes on past the loss");
    assert_eq!(
        response,
        CellResponse::Result {
            cell_id: cell_id.clone(),
            content_items: vec![code_mode_protocol::ContentItem::text("after late")],
            failure: None,
            wall_time: Duration::ZERO,
        }
    );
    assert_ne!(
        faults.runtime_of(&*session),
        before,
        "the cell did not move"
    );
    delegate.wait_closed(&cell_id.to_string()).await;
    assert_eq!(
        texts_of(
            &*session,
            r#"text(JSON.stringify([load("plain"), load("kept")]));"#
        )
        .await,
        [r#"["overwritten",true]"#]
    );
    assert_eq!(tool_calls(&delegate), 1, "no tool call was sent twice");
    assert_eq!(delegate.closed_count(&cell_id), 1);
    session.shutdown().await;
}

/// The durable scenario's cell (sequential calls, `Promise.all` answered out of order,
/// `as_settled` with a failure, timers between calls, clock and random readings in
/// arguments, stored values before and after, a notification, an image, `yield_control`)
/// has its runtime killed at up to three of its waits (in `Promise.all`, between timers,
/// at its last call; as many as the provider has runtimes to spare), each time with calls
/// in flight that are answered after the kill: it ends with its fault-free output, every
/// call and notification reaches the delegate once, and its writes are committed once.
pub async fn the_durable_cell_is_rebuilt_at_each_of_its_waits<F: RuntimeFaults>(faults: &F) {
    let delegate = TestDelegate::new();
    let session = faults
        .provider()
        .open_session(delegate.clone(), crate::durable::options(None));
    let kills = std::sync::atomic::AtomicUsize::new(0);
    let points = ["tool-9", "tool-15", "tool-17"];
    let points = &points[..faults.kills_to_spare().min(points.len())];
    let outcome = crate::durable::run_source_with(&session, &delegate, points, || {
        kills.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        faults.kill(&session)
    })
    .await;
    crate::durable::check(&outcome);
    assert!(!points.is_empty());
    assert_eq!(
        kills.load(std::sync::atomic::Ordering::SeqCst),
        points.len()
    );
    session.shutdown().await;
}

/// An exec in flight when its runtime dies before admitting it: nothing of the cell ran,
/// so the local provider runs it once on a fresh runtime, and a remote one reports the
/// loss; either way no tool call is made twice, and earlier values are kept. The
/// runtime is stopped first, so the exec is surely sent and surely not admitted.
pub async fn an_exec_its_runtime_never_admitted_runs_once_or_reports_the_loss<F: RuntimeFaults>(
    faults: &F,
) {
    let (session, delegate) = stored_session(faults).await;
    faults.stop(&session);
    let exec = tokio::spawn({
        let session = Arc::clone(&session);
        async move {
            session
                .execute(request(
                    r#"store("after", 1); text(await tools.echo("ran"));"#,
                ))
                .await
        }
    });
    // However long the exec takes to reach the wire, the stopped runtime admits nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    faults.kill(&session).await;
    let outcome = exec.await.expect("the exec task");
    if faults.reruns_unadmitted() {
        let started = outcome.expect("the exec runs on a fresh runtime");
        assert_eq!(
            started.initial_response.content_items(),
            [code_mode_protocol::ContentItem::text("ran")]
        );
        assert_eq!(texts_of(&*session, r#"text(load("after"));"#).await, ["1"]);
        assert_eq!(tool_calls(&delegate), 1, "no tool call was sent twice");
    } else {
        let error = outcome.expect_err("the loss is reported");
        assert!(
            matches!(error, SessionError::RuntimeLost(_)),
            "not the runtime-lost error: {error}"
        );
        assert_eq!(
            texts_of(&*session, r#"text(String(load("after")));"#).await,
            ["undefined"]
        );
        assert_eq!(tool_calls(&delegate), 0, "nothing of the cell ran");
    }
    assert_eq!(texts_of(&*session, LOAD).await, [LOADED]);
    session.shutdown().await;
}

/// Drain between cells: an idle session moves at its next exec, values and all, without
/// an error. A busy session's running cell, waiting on a tool call, moves too when another
/// runtime can take it (CONTRACT §7: a drain waits for no long cell): it is rebuilt there
/// from its journal at once, and the answer given after the drain completes it, the call
/// sent once. With nowhere to go it finishes where it runs.
pub async fn a_drain_between_cells_moves_the_session_without_an_error<F: RuntimeFaults>(
    faults: &F,
) {
    let idle_delegate = TestDelegate::new();
    let idle = faults
        .provider()
        .open_session(idle_delegate.clone(), SessionOptions::default());
    assert_eq!(texts_of(&idle, STORE).await, ["stored"]);
    let before = faults.runtime_of(&idle);
    // Another session on the same runtime (a pool spreads sessions: open a few until one
    // lands there), whose running cell keeps the runtime draining for a while.
    let mut others = Vec::new();
    let (busy, busy_delegate) = loop {
        let delegate = TestDelegate::new();
        let session = faults
            .provider()
            .open_session(delegate.clone(), SessionOptions::default());
        assert_eq!(texts_of(&session, r#"text("placed")"#).await, ["placed"]);
        if faults.runtime_of(&session) == before {
            break (session, delegate);
        }
        others.push(session);
        assert!(others.len() < 8, "no session landed on {before}");
    };
    // A cell of another session keeps the runtime draining for a while.
    let running = busy
        .execute(
            request(r#"store("busy", true); text(await tools.block());"#).with_yield_time_ms(100),
        )
        .await
        .expect("exec");
    let busy_cell = running.cell_id;
    busy_delegate
        .wait_started(&busy_cell.to_string(), "tool-1")
        .await;
    faults.drain(&idle).await;

    assert_eq!(texts_of(&idle, LOAD).await, [LOADED]);
    assert_ne!(
        faults.runtime_of(&idle),
        before,
        "the idle session did not move"
    );

    // The busy cell finishes (moved, or on the draining runtime), and its values are kept.
    busy_delegate
        .release(&busy_cell.to_string(), "tool-1", Ok(json!("finished")))
        .await;
    let response = busy
        .wait(WaitRequest::new(busy_cell.clone()))
        .await
        .expect("the running cell finishes while its runtime drains");
    assert_eq!(
        response.content_items(),
        [code_mode_protocol::ContentItem::text("finished")]
    );
    if faults.kills_to_spare() > 0 {
        assert_ne!(
            faults.runtime_of(&busy),
            before,
            "the running cell did not move off the draining runtime"
        );
    }
    assert_eq!(
        texts_of(&busy, r#"text(String(load("busy")));"#).await,
        ["true"]
    );
    assert_eq!(tool_calls(&idle_delegate), 0);
    assert_eq!(tool_calls(&busy_delegate), 1, "no tool call was sent twice");
    idle.shutdown().await;
    busy.shutdown().await;
    for other in others {
        other.shutdown().await;
    }
}

/// Expands to one test per loss scenario for the [`RuntimeFaults`] expression given.
#[macro_export]
macro_rules! runtime_loss_suite {
    ($faults:expr) => {
        $crate::runtime_loss_suite!(@tests $faults;
            a_kill_between_cells_keeps_every_committed_value,
            a_kill_during_a_cell_rebuilds_it_from_its_journal,
            the_durable_cell_is_rebuilt_at_each_of_its_waits,
            an_exec_its_runtime_never_admitted_runs_once_or_reports_the_loss,
            a_drain_between_cells_moves_the_session_without_an_error,
        );
    };
    (@tests $faults:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let faults = $faults;
                $crate::scenarios::run_with_deadline($crate::loss::$name(&faults)).await;
            }
        )*
    };
}
