//! Traces of the CLI's fronts in a real trace store (Arize Phoenix, started by the test
//! binary): `serve --jsonl` with a request's `traceparent`, `mcp` over stdio with a call's
//! `_meta.traceparent`, and `run` with the `TRACEPARENT` environment variable. Each runs a
//! cell with two nested calls out of process and in process; the trace must hang the front's
//! span under the caller's, the cell under it and each call under the cell.

use super::{BIN, session_id};
use code_mode_conformance::Scratch;
use code_mode_conformance::phoenix::{
    Placement, assert_cell_tree, assert_cell_work, caller, children, has_cell_work, phoenix,
};
use serde_json::{Value, json};
use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};

/// The cell: two nested calls of two built-in tools.
const CELL: &str = r#"const listed = await tools.list_dir({path: "."}); const read = await tools.read_file({path: "cell.txt"}); text(typeof listed, typeof read);"#;

/// `code-mode` with `args`, exporting to Phoenix, in a scratch directory with `cell.txt`.
fn traced(args: &[&str], scratch: &Scratch) -> Command {
    scratch.write("cell.txt", "hello\n");
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(&scratch.0)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix().endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// The trace once it holds the front's span, a cell and both calls.
fn cell_trace(trace_id: &str, front: &str, placement: Placement) -> Vec<Value> {
    phoenix().trace_when(trace_id, |spans| {
        let named = |name: &str| spans.iter().filter(|span| span["name"] == name).count();
        named(front) >= 1
            && named("code_mode.cell") >= 1
            && named("code_mode.tool_call") >= 2
            && has_cell_work(spans, placement)
    })
}

fn modes() -> [(&'static [&'static str], Placement); 2] {
    [
        (&[], Placement::OutOfProcess),
        (&["--in-process"], Placement::InProcess),
    ]
}

#[test]
fn serve_jsonl_traces_a_cell_under_the_requests_traceparent() {
    for (mode, placement) in modes() {
        let scratch = Scratch::new();
        let (trace_id, traceparent) = caller("jsonl");
        let mut args = vec!["serve", "--jsonl", "--builtin", "fs"];
        args.extend_from_slice(mode);
        let mut child = traced(&args, &scratch)
            .spawn()
            .expect("spawn serve --jsonl");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut ask = |message: Value| -> Value {
            writeln!(stdin, "{message}").expect("write");
            stdin.flush().expect("flush");
            loop {
                let line = lines.next().expect("a reply").expect("a line");
                let reply: Value = serde_json::from_str(&line).expect("JSON");
                if reply.get("event").is_none() {
                    return reply;
                }
            }
        };
        let session = session_id(&ask(
            json!({"id": 0, "method": "open_session", "params": {}}),
        ));
        let reply = ask(json!({
            "id": 1, "method": "exec", "traceparent": traceparent,
            "params": {"session": session, "source": CELL, "yield_time_ms": 30000}
        }));
        assert_eq!(reply["result"]["response"]["type"], "result", "{reply}");
        // The pending-aware exec traces its cell too.
        let (pending_trace_id, pending_traceparent) = caller("jsonl pending");
        let reply = ask(json!({
            "id": 2, "method": "execute_to_pending", "traceparent": pending_traceparent,
            "params": {"session": session, "source": "text('p');"}
        }));
        assert!(reply.get("result").is_some(), "{reply}");
        drop(stdin);
        assert!(child.wait().expect("wait").success());
        let spans = cell_trace(&trace_id, "code_mode.jsonl.request", placement);
        let cell = assert_cell_tree(&spans, "code_mode.jsonl.request", ["list_dir", "read_file"]);
        assert_cell_work(&spans, cell, placement);
        let spans = phoenix().trace_when(&pending_trace_id, |spans| {
            spans.iter().any(|span| span["name"] == "code_mode.cell")
                && has_cell_work(spans, placement)
        });
        let request = spans
            .iter()
            .find(|span| span["name"] == "code_mode.jsonl.request")
            .expect("the pending exec's request span");
        let [cell] = children(&spans, request, "code_mode.cell")[..] else {
            panic!("one cell under the pending exec's request: {spans:#?}");
        };
        assert_eq!(cell["attributes"]["status"], "completed", "{cell}");
        assert_cell_work(&spans, cell, placement);
    }
}

#[test]
fn mcp_traces_a_cell_under_the_calls_meta_traceparent() {
    for (mode, placement) in modes() {
        let scratch = Scratch::new();
        let (trace_id, traceparent) = caller("mcp");
        let mut args = vec!["mcp", "--builtin", "fs"];
        args.extend_from_slice(mode);
        let mut child = traced(&args, &scratch).spawn().expect("spawn mcp");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut send = |message: Value| {
            writeln!(stdin, "{message}").expect("write");
            stdin.flush().expect("flush");
        };
        let mut answer = |id: u64| -> Value {
            loop {
                let line = lines.next().expect("an answer").expect("a line");
                let message: Value = serde_json::from_str(&line).expect("JSON");
                if message["id"] == id {
                    return message;
                }
            }
        };
        send(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "trace-test", "version": "1"}}}),
        );
        answer(1);
        send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        send(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "exec", "arguments": {"code": CELL},
            "_meta": {"traceparent": traceparent}}}),
        );
        let called = answer(2);
        assert!(
            called["result"]["content"].to_string().contains("object"),
            "{called}"
        );
        drop(stdin);
        assert!(child.wait().expect("wait").success());
        let spans = cell_trace(&trace_id, "tools/call exec", placement);
        let cell = assert_cell_tree(&spans, "tools/call exec", ["list_dir", "read_file"]);
        assert_cell_work(&spans, cell, placement);
    }
}

#[test]
fn run_traces_a_cell_under_the_traceparent_environment_variable() {
    for (mode, placement) in modes() {
        let scratch = Scratch::new();
        let (trace_id, traceparent) = caller("run");
        let cell = scratch.write("cell.js", CELL);
        let mut args = vec!["run", cell.to_str().expect("UTF-8"), "--builtin", "fs"];
        args.extend_from_slice(mode);
        let output = traced(&args, &scratch)
            .env("TRACEPARENT", &traceparent)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert!(output.status.success(), "{output:?}");
        let spans = cell_trace(&trace_id, "code_mode.run", placement);
        let cell = assert_cell_tree(&spans, "code_mode.run", ["list_dir", "read_file"]);
        assert_cell_work(&spans, cell, placement);
    }
}

#[test]
fn mcp_over_http_with_its_collector_down_serves_cells_and_counts_the_dropped_batches() {
    use super::mcp::{check_driven, drive, one_fixture};
    let scratch = Scratch::new();
    let tools = one_fixture(&scratch);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let server = super::mcp_http::HttpServer::start(
        &[
            "mcp",
            "--tools",
            tools.to_str().expect("UTF-8"),
            "--http",
            "127.0.0.1:0",
        ],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://127.0.0.1:{dead}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .expect("the server starts");
    // The Python SDK's whole session: every cell as without traces.
    check_driven(&drive(&["http", &server.url]));
    let metrics_url = server.url.replace("/mcp", "/metrics");
    let address = metrics_url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .expect("host:port")
        .to_owned();
    let dropped = || -> u64 {
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        write!(stream, "GET /metrics HTTP/1.0\r\nhost: {address}\r\n\r\n").expect("write");
        let mut page = String::new();
        std::io::Read::read_to_string(&mut stream, &mut page).expect("read");
        assert!(
            page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
            "{page}"
        );
        page.lines()
            .find_map(|line| line.strip_prefix("code_mode_trace_batches_dropped_total "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no dropped-batch counter: {page}"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dropped() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no dropped batch was counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
