//! The same corpus through codex's own `codex-code-mode-host` and ours, both over gRPC on
//! stdio, in host-truncation mode (what codex sends) and in client mode: every outcome
//! (status, content items, error text; stack positions aside), every tool invocation and
//! every session event must be the same. Where codex's host cannot run a cell (the heap
//! bomb kills it), the conformance tests say what ours does instead.

use crate::{corpus_tools, open, our_host, spawn};
use codex_code_mode_host::client::{Driver, exec_request, render_outcome};
use codex_code_mode_host::proto;

/// What to do after a cell's `Execute`.
#[derive(Clone, Copy)]
enum Then {
    Nothing,
    /// `Wait` on the cell with this yield time.
    Wait(u64),
    /// `Terminate` the cell.
    Terminate,
}

struct Case {
    name: &'static str,
    source: String,
    yield_ms: u64,
    max_tokens: Option<u64>,
    then: Then,
}

fn case(name: &'static str, source: &str) -> Case {
    Case {
        name,
        source: source.to_owned(),
        yield_ms: 30_000,
        max_tokens: None,
        then: Then::Nothing,
    }
}

impl Case {
    fn yielding(mut self, yield_ms: u64, then: Then) -> Self {
        self.yield_ms = yield_ms;
        self.then = then;
        self
    }

    fn tokens(mut self, max_tokens: u64) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }
}

fn corpus() -> Vec<Case> {
    vec![
        case("text values", r#"text("hello"); text({a: 1}); text(undefined); text([1, "x"]); text(null); text(3.5); text(true);"#),
        case("multi-byte text", r#"text("héllo 😀 世界");"#),
        case("images", r#"image("data:image/png;base64,iVBORw0KGgo="); image("data:image/png;base64,iVBORw0KGgo=", "low"); image({image_url: "data:image/png;base64,AA==", detail: "original"}); generatedImage({image_url: "data:image/png;base64,AA==", output_hint: "a hint"});"#),
        case("audio", r#"audio("data:audio/wav;base64,AA==");"#),
        case("empty text beside an image", r#"text(""); image("data:image/png;base64,AA=="); text("a"); text("");"#),
        case("empty text alone", r#"text(""); text("a"); text("");"#),
        case("no console", "console.log(1)"),
        case("the globals, in order", r#"text(Object.keys(globalThis).join(","));"#),
        case("ALL_TOOLS", r#"text(JSON.stringify(ALL_TOOLS));"#),
        case(
            "global descriptors",
            r#"for (const k of ["tools", "ALL_TOOLS", "text", "content", "setTimeout", "as_settled"]) text(k + " " + JSON.stringify(Object.getOwnPropertyDescriptor(globalThis, k), (key, v) => typeof v === "function" ? "fn" : v));"#,
        ),
        case("globals are writable", r#"text = 5; text === 5 ? exit() : 0;"#),
        case("content", r#"content({type: "text", text: "t1"}); content([{type: "text", text: "t2"}, {type: "image", data: "AA==", mimeType: "image/png"}]); content({type: "audio", data: "AA==", mimeType: "audio/wav"}); content({type: "image", data: "AA==", mimeType: "image/png", _meta: {"codex/imageDetail": "low"}}); content(new Set([{type: "text", text: "from a set"}]));"#),
        case("content defaults", r#"content({type: "image", data: "AA=="}); content({type: "audio", data: "AA=="}); content({type: "text", text: ""}); content({type: "text", text: "x", extra: 1});"#),
        case("content resources", r#"content({type: "resource", resource: {uri: "file:///x", text: "res"}}); content({type: "resource_link", uri: "file:///x", name: "n"});"#),
        case(
            "content refusals",
            r#"for (const v of [5, "plain", null, undefined, [1], {type: "bogus"}, {type: "text"}, {type: "text", text: 5}, {type: "input_text", text: "x"}, {type: "image", mimeType: "image/png"}, {type: "audio"}, {type: "resource", resource: 5}, {type: "resource_link"}]) { try { content(v); text("accepted " + JSON.stringify(v)); } catch (e) { text(typeof e + " " + String(e)); } }"#,
        ),
        case("content uncaught", r#"content({type: "bogus"});"#),
        case("content itself", r#"text(typeof content + " " + content.length + " " + content.name);"#),
        case("store", r#"store("k", {v: 42}); store("n", 7); text(load("k"));"#),
        case("load in a later cell", r#"text(load("k").v + load("n")); text(String(load("missing")));"#),
        case("nested tools", r#"const r = await tools.echo({x: 1}); text(r); const s = await tools.ns__search("q"); text(s);"#),
        case("parallel tools", r#"const [a, b] = await Promise.all([tools.echo({i: 1}), tools.echo({i: 2})]); text(a.echo.i + b.echo.i);"#),
        case("tool without argument", r#"text(await tools.echo());"#),
        case("failing tool caught", r#"try { await tools.echo({fail: true}); } catch (e) { text(typeof e); text(String(e)); text(e instanceof Error); }"#),
        case("failing tool uncaught", r#"text("before"); await tools.echo({fail: true});"#),
        case("script error", "text(\"about to throw\");\nthrow new Error(\"boom\");"),
        case("thrown string", r#"throw "plain string";"#),
        case("thrown object", r#"throw {a: 1};"#),
        case("reference error", "undefinedVar + 1;"),
        case("syntax error", "let x = ;"),
        case("top-level return", "return 1;"),
        case("exit", r#"text("a"); exit(); text("b");"#),
        case("timer not awaited", r#"setTimeout(() => text("never"), 1000); text("end");"#),
        case("timer awaited", r#"await new Promise(r => setTimeout(r, 50)); text("after timer");"#),
        case("notify", r#"notify("hello from notify"); text("done");"#),
        case("yield then wait", r#"text("before"); await new Promise(r => setTimeout(r, 1500)); text("after");"#)
            .yielding(300, Then::Wait(10_000)),
        case("yield_control then wait", r#"text("before"); yield_control(); await new Promise(r => setTimeout(r, 300)); text("after");"#)
            .yielding(10_000, Then::Wait(10_000)),
        case("yield then terminate", r#"text("t"); await new Promise(r => setTimeout(r, 20000)); text("never");"#)
            .yielding(300, Then::Terminate),
        case("terminate a completed cell", r#"text("done");"#).yielding(30_000, Then::Terminate),
        case("wait on a completed cell", r#"text("done");"#).yielding(30_000, Then::Wait(1000)),
        case("over the token budget", r#"text("x".repeat(100));"#).tokens(10),
        case("two items over the budget", r#"text("a".repeat(30)); text("b".repeat(30));"#).tokens(10),
        case("exactly the budget", r#"text("y".repeat(40));"#).tokens(10),
        case("one byte over", r#"text("y".repeat(41));"#).tokens(10),
        case("items within the budget", r#"text("y".repeat(20)); text("y".repeat(19));"#).tokens(10),
        case("mixed over the budget", r#"text("a\nb\nc".repeat(10)); image("data:image/png;base64,AA=="); text("z".repeat(50));"#).tokens(10),
        case("error over the budget", r#"text("x".repeat(100)); throw new Error("e".repeat(100));"#).tokens(10),
        case("default budget", r#"text("w".repeat(50000));"#),
        case("multi-byte cut", r#"text("😀".repeat(30));"#).tokens(10),
        case("over 1 MiB", r#"text("x".repeat(4 * 1024 * 1024));"#),
        case("two items over 1 MiB", r#"text("a".repeat(700 * 1024)); text("b".repeat(700 * 1024));"#),
        case("image inside 1 MiB", r#"text("a".repeat(700 * 1024)); image("data:image/png;base64,AA=="); text("b".repeat(700 * 1024));"#),
        case("many lines over 1 MiB", r#"for (let i = 0; i < 3000; i++) text("line " + i + " " + "q".repeat(500));"#),
        case("1 MiB with a large budget", r#"text("x".repeat(2 * 1024 * 1024));"#).tokens(300_000),
        case("1 MiB per observation", r#"text("x".repeat(2 * 1024 * 1024)); await new Promise(r => setTimeout(r, 1200)); text("y".repeat(2 * 1024 * 1024));"#)
            .yielding(300, Then::Wait(10_000)),
    ]
}

/// Stack positions aside (`exec_main.mjs:LINE:COL`), the text as the model sees it.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("exec_main.mjs:") {
        let after = at + "exec_main.mjs:".len();
        out.push_str(&rest[..after]);
        let digits = rest[after..]
            .find(|c: char| !(c.is_ascii_digit() || c == ':'))
            .unwrap_or(rest.len() - after);
        out.push_str("L:C");
        rest = &rest[after + digits..];
    }
    out.push_str(rest);
    out
}

fn observed(cell: Option<proto::wait_response::Cell>) -> String {
    match cell {
        Some(proto::wait_response::Cell::LiveCell(outcome)) => {
            format!("live {}", render_outcome(&outcome))
        }
        Some(proto::wait_response::Cell::MissingCell(outcome)) => {
            format!("missing {}", render_outcome(&outcome))
        }
        None => "no cell".to_owned(),
    }
}

/// How many `cell_closed` events the driver's session stream has given so far.
fn closed_count(driver: &Driver) -> usize {
    driver
        .events
        .lock()
        .map(|events| {
            events
                .iter()
                .filter(|event| {
                    matches!(
                        event.event,
                        Some(proto::session_event::Event::CellClosed(_))
                    )
                })
                .count()
        })
        .unwrap_or(0)
}

/// Runs the corpus on one host in one session and returns one line per observation,
/// then the tool invocations and session events.
async fn run_corpus(binary: &std::path::Path, truncation: i32) -> Vec<String> {
    let host = spawn(binary, &[]).await;
    let mut driver = open(&host, truncation).await;
    let mut lines = Vec::new();
    // Each execution id as `exec#N`, N its exec's place in the corpus: an id the host
    // echoes in the wrong place shows as another number (or `exec#?`).
    let mut executions: Vec<String> = Vec::new();
    let exec_label = |executions: &[String], id: &str| {
        executions
            .iter()
            .position(|known| known == id)
            .map_or_else(|| format!("exec#?{id}"), |n| format!("exec#{}", n + 1))
    };
    for case in corpus() {
        let mut request = exec_request(&case.source);
        request.execution_id = driver.execution_id();
        executions.push(request.execution_id.clone());
        request.enabled_tools = corpus_tools();
        request.yield_time_ms = case.yield_ms;
        request.max_output_tokens = case.max_tokens;
        let events = driver.execute(request).await;
        let mut cell_id = String::new();
        match events {
            Ok(events) => {
                for event in events {
                    match event.event {
                        Some(proto::execute_event::Event::Started(started)) => {
                            cell_id = started.cell_id.clone();
                            lines.push(format!(
                                "{}: started {} by {}",
                                case.name,
                                started.cell_id,
                                exec_label(&executions, &started.execution_id)
                            ));
                        }
                        Some(proto::execute_event::Event::Outcome(outcome)) => {
                            lines.push(format!("{}: {}", case.name, render_outcome(&outcome)));
                        }
                        None => lines.push(format!("{}: empty event", case.name)),
                    }
                }
            }
            Err(status) => lines.push(format!(
                "{}: status {:?} {}",
                case.name,
                status.code(),
                status.message()
            )),
        }
        match case.then {
            Then::Nothing => {}
            Then::Wait(yield_ms) => {
                let response = driver.wait(&cell_id, yield_ms, case.max_tokens).await;
                lines.push(match response {
                    Ok(response) => format!(
                        "{}: wait {}",
                        case.name,
                        observed(response.into_inner().cell)
                    ),
                    Err(status) => format!(
                        "{}: wait status {:?} {}",
                        case.name,
                        status.code(),
                        status.message()
                    ),
                });
            }
            Then::Terminate => {
                let response = driver.terminate(&cell_id).await;
                lines.push(match response {
                    Ok(response) => {
                        format!(
                            "{}: terminate {}",
                            case.name,
                            observed(terminate_cell(response))
                        )
                    }
                    Err(status) => format!(
                        "{}: terminate status {:?} {}",
                        case.name,
                        status.code(),
                        status.message()
                    ),
                });
            }
        }
    }
    lines.push(format!(
        "wait on an unknown cell: {}",
        observed(
            driver
                .wait("999", 100, None)
                .await
                .map(|r| r.into_inner().cell)
                .ok()
                .flatten()
        )
    ));
    // Every cell is closed by now; the events stream may still be delivering.
    let cells = lines
        .iter()
        .filter(|line| line.contains(": started "))
        .count();
    crate::eventually(10, || closed_count(&driver) >= cells).await;
    for call in driver
        .invocations
        .lock()
        .map(|calls| calls.clone())
        .unwrap_or_default()
    {
        assert!(
            uuid::Uuid::parse_str(&call.invocation_id).is_ok(),
            "invocation id {} is a UUID",
            call.invocation_id
        );
        lines.push(format!(
            "call {} cell {} {} {:?} kind {} input {:?} seq {}",
            exec_label(&executions, &call.execution_id),
            call.cell_id,
            call.runtime_tool_call_id,
            call.tool_name,
            call.kind,
            call.input_json,
            call.sequence
        ));
    }
    for event in driver
        .events
        .lock()
        .map(|events| events.clone())
        .unwrap_or_default()
    {
        lines.push(match event.event {
            Some(proto::session_event::Event::Heartbeat(_)) => "heartbeat".to_owned(),
            Some(proto::session_event::Event::Opened(opened)) => {
                format!("opened, truncation {}", opened.output_truncation)
            }
            Some(proto::session_event::Event::Notification(notification)) => {
                assert!(uuid::Uuid::parse_str(&notification.notification_id).is_ok());
                format!(
                    "notification {} cell {} call {} {:?}",
                    exec_label(&executions, &notification.execution_id),
                    notification.cell_id,
                    notification.call_id,
                    notification.text
                )
            }
            Some(proto::session_event::Event::CellClosed(closed)) => format!(
                "closed {} cell {} tools {}",
                exec_label(&executions, &closed.execution_id),
                closed.cell_id,
                closed.tool_call_count
            ),
            None => "empty event".to_owned(),
        });
    }
    let _ = driver.close().await;
    lines.into_iter().map(|line| normalize(&line)).collect()
}

async fn compare(truncation: i32) {
    for codex in crate::codex_hosts() {
        compare_with(&codex, truncation).await;
    }
}

/// The corpus on `codex`'s host and on ours, line for line.
async fn compare_with(codex: &std::path::Path, truncation: i32) {
    let our = our_host();
    let (theirs, ours) = tokio::join!(run_corpus(codex, truncation), run_corpus(&our, truncation));
    let mut differences = Vec::new();
    for index in 0..theirs.len().max(ours.len()) {
        let (a, b) = (theirs.get(index), ours.get(index));
        if a != b {
            let show = |line: Option<&String>| {
                line.map(|line| line.chars().take(600).collect::<String>())
                    .unwrap_or_default()
            };
            differences.push(format!("codex: {}\nours:  {}", show(a), show(b)));
        }
    }
    assert!(
        differences.is_empty(),
        "{} lines differ from {} (truncation mode {truncation}):\n{}",
        differences.len(),
        codex.display(),
        differences.join("\n\n")
    );
    assert!(theirs.len() > corpus().len(), "the corpus ran");
    let unknown: Vec<&String> = ours.iter().filter(|line| line.contains("exec#?")).collect();
    assert!(unknown.is_empty(), "execution ids never sent: {unknown:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_corpus_matches_codexs_host_when_the_host_truncates() {
    compare(2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_corpus_matches_codexs_host_when_the_client_truncates() {
    compare(0).await;
}

#[test]
fn stack_positions_are_normalized() {
    assert_eq!(
        normalize("Error: x\n    at exec_main.mjs:12:7\n"),
        "Error: x\n    at exec_main.mjs:L:C\n"
    );
    assert_eq!(normalize("no stack"), "no stack");
}

/// How a `Wait` or `Terminate` answered, as one line.
fn answered<T>(
    response: Result<T, tonic::Status>,
    cell: impl FnOnce(T) -> Option<proto::wait_response::Cell>,
) -> String {
    match response {
        Ok(response) => observed(cell(response)),
        Err(status) => format!("status {:?} {}", status.code(), status.message()),
    }
}

fn terminate_cell(response: proto::TerminateResponse) -> Option<proto::wait_response::Cell> {
    response.cell.map(|cell| match cell {
        proto::terminate_response::Cell::LiveCell(outcome) => {
            proto::wait_response::Cell::LiveCell(outcome)
        }
        proto::terminate_response::Cell::MissingCell(outcome) => {
            proto::wait_response::Cell::MissingCell(outcome)
        }
    })
}

/// A cell terminated while someone observes it (contract 3.7): an `Execute` still awaiting
/// its first answer, then a `Wait`. Each observer's answer, the terminate's and the
/// session's closes, one line each.
async fn terminate_while_observed(binary: &std::path::Path) -> Vec<String> {
    use futures_util::StreamExt;
    let host = spawn(binary, &[]).await;
    let mut driver = open(&host, 2).await;
    let mut lines = Vec::new();
    let deadline = std::time::Duration::from_secs(60);
    // 1. The exec observes from the start; the tool call says the cell wrote its text.
    let source = r#"text("t"); await tools.echo({x: 1}); await new Promise(r => setTimeout(r, 40000)); text("never");"#;
    let mut request = exec_request(source);
    request.enabled_tools = corpus_tools();
    request.session_id = driver.session_id.clone();
    request.execution_id = driver.execution_id();
    request.tool_call_id = "call_observed".to_owned();
    request.yield_time_ms = 60_000;
    let mut stream = driver
        .client
        .clone()
        .execute(request)
        .await
        .expect("execute")
        .into_inner();
    let first = tokio::time::timeout(deadline, stream.next())
        .await
        .expect("the exec's first event in time");
    match first.and_then(Result::ok).and_then(|event| event.event) {
        Some(proto::execute_event::Event::Started(started)) => {
            lines.push(format!("exec started {}", started.cell_id));
        }
        other => panic!("the exec's first event is not `started`: {other:?}"),
    }
    let called = crate::eventually(60, || {
        driver
            .invocations
            .lock()
            .is_ok_and(|calls| !calls.is_empty())
    })
    .await;
    assert!(called, "the cell never called its tool");
    let terminate = tokio::time::timeout(deadline, driver.terminate("1"))
        .await
        .expect("terminate answered in time");
    lines.push(format!(
        "terminate: {}",
        answered(terminate, terminate_cell)
    ));
    let rest = tokio::time::timeout(deadline, stream.collect::<Vec<_>>())
        .await
        .expect("the exec answered in time");
    for event in rest {
        lines.push(match event.map(|event| event.event) {
            Ok(Some(proto::execute_event::Event::Outcome(outcome))) => {
                format!("exec: {}", render_outcome(&outcome))
            }
            Ok(other) => format!("exec: event {other:?}"),
            Err(status) => format!("exec: status {:?} {}", status.code(), status.message()),
        });
    }

    // 2. A wait observes a yielded cell. It is registered once a second wait is refused as
    // a second observer (a probe that comes first returns at once, empty, and is retried).
    let source = r#"text("t"); yield_control(); await new Promise(r => setTimeout(r, 40000)); text("never");"#;
    let mut request = exec_request(source);
    request.yield_time_ms = 60_000;
    let outcome = tokio::time::timeout(deadline, driver.run(request))
        .await
        .expect("the second exec in time")
        .expect("the second exec");
    lines.push(format!("exec: {}", render_outcome(&outcome)));
    let waiting = {
        let mut client = driver.client.clone();
        let session_id = driver.session_id.clone();
        tokio::spawn(async move {
            loop {
                let answer = client
                    .wait(proto::WaitRequest {
                        session_id: session_id.clone(),
                        cell_id: "2".to_owned(),
                        wait_id: uuid::Uuid::new_v4().to_string(),
                        yield_time_ms: 60_000,
                        max_tokens: None,
                    })
                    .await;
                // Refused because a probe observed first: ask again.
                if let Err(status) = &answer
                    && status.message().contains("active observer")
                {
                    continue;
                }
                break answer;
            }
        })
    };
    let registered = tokio::time::timeout(deadline, async {
        loop {
            match driver.wait("2", 0, None).await {
                Err(status) if status.message().contains("active observer") => break,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert!(registered.is_ok(), "the wait never became the observer");
    let terminate = tokio::time::timeout(deadline, driver.terminate("2"))
        .await
        .expect("terminate answered in time");
    lines.push(format!(
        "terminate: {}",
        answered(terminate, terminate_cell)
    ));
    let wait = tokio::time::timeout(deadline, waiting)
        .await
        .expect("the wait answered in time")
        .expect("the waiting task");
    lines.push(format!(
        "wait: {}",
        answered(wait, |response| response.into_inner().cell)
    ));
    crate::eventually(10, || closed_count(&driver) >= 2).await;
    for event in driver.events.lock().map(|e| e.clone()).unwrap_or_default() {
        if let Some(proto::session_event::Event::CellClosed(closed)) = event.event {
            lines.push(format!("closed cell {}", closed.cell_id));
        }
    }
    let _ = driver.close().await;
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_cells_observer_gets_what_codexs_host_gives() {
    let our = our_host();
    let mut ours = Vec::new();
    for codex in crate::codex_hosts() {
        let theirs;
        (theirs, ours) = tokio::join!(
            terminate_while_observed(&codex),
            terminate_while_observed(&our)
        );
        assert_eq!(
            ours,
            theirs,
            "ours (left) against {} (right)",
            codex.display()
        );
    }
    // Whatever codex's host does, an observer of a terminated cell is told it was
    // terminated, never an error (contract 3.7).
    assert!(
        ours.iter()
            .any(|line| line.starts_with("exec: cell 1 terminated")),
        "{ours:?}"
    );
    assert!(
        ours.iter()
            .any(|line| line.starts_with("wait: live cell 2 terminated")),
        "{ours:?}"
    );
}
