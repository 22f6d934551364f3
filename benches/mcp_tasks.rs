//! MCP Tasks against `wait` polling (issue 86): what a long cell costs the model through
//! `code-mode mcp`, with a client that declares MCP Tasks (the official Rust SDK's) and
//! with one that does not, whose model polls with `wait`.
//!
//! `cargo build --release -p code-mode-cli -p code-mode-bin` first; then
//! `cargo bench --bench mcp_tasks -- [--seconds S]`.
//!
//! The cell writes a line a second for S seconds (30 by default). Each way, one run: the
//! model's tool calls (each a turn of the model), the text the model reads (bytes, and
//! tokens at the formatter's 4 bytes a token), the client's own requests (its `tasks/get`
//! polls, which no model sees) and the time from `exec` to the result. Without tasks the
//! model polls with the contract's default yield time (10 s), and with 1 s, as models
//! that poll often do.

use code_mode_surface::BYTES_PER_TOKEN;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, GetTaskParams,
    Implementation, TaskPayload, TaskStatus,
};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A client of `code-mode mcp`: with MCP Tasks declared, or without.
#[derive(Clone)]
struct Client {
    tasks: bool,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        let capabilities = if self.tasks {
            ClientCapabilities::builder().enable_tasks().build()
        } else {
            ClientCapabilities::default()
        };
        ClientConfig::new(
            capabilities,
            Implementation::new("code-mode-bench", "1.0.0"),
        )
    }
}

/// What one way of following the cell cost.
struct Cost {
    model_calls: usize,
    model_bytes: usize,
    client_requests: usize,
    elapsed: Duration,
}

/// `code-mode mcp --http` from the release build beside this bench; its URL.
fn start_server() -> (Child, String) {
    let release = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(PathBuf::from))
        .unwrap_or_default();
    let mut child = Command::new(release.join("code-mode"))
        .args(["mcp", "--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("code-mode is built (cargo build --release -p code-mode-cli -p code-mode-bin)");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let url = loop {
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("code-mode mcp says where it serves");
        if let Some(url) = line.strip_prefix("code-mode mcp: serving streamable HTTP on ") {
            break url.to_owned();
        }
    };
    // Drained, so that the server never blocks on its log.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (child, url)
}

/// The text blocks of a result, in bytes.
fn text_bytes(result: &Value) -> usize {
    result["content"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|block| block["text"].as_str())
                .map(str::len)
                .sum()
        })
        .unwrap_or(0)
}

fn arguments(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The cell: a line a second for `seconds` seconds; `yield_ms`, its `exec`'s yield time.
fn cell(seconds: u64, yield_ms: u64) -> String {
    format!(
        "// @exec: {{\"yield_time_ms\": {yield_ms}}}\nfor (let i = 1; i <= {seconds}; i++) {{\n  await new Promise((resolve) => setTimeout(resolve, 1000));\n  console.log(`step ${{i}}`);\n}}"
    )
}

/// With MCP Tasks: one `exec`, then the client polls `tasks/get` as the server asks.
async fn with_tasks(client: &RunningService<RoleClient, Client>, seconds: u64) -> Cost {
    let started = Instant::now();
    let request = CallToolRequestParams::new("exec")
        .with_arguments(arguments(json!({"code": cell(seconds, 10_000)})));
    let created = match client.call_tool_once(request).await.expect("exec") {
        CallToolResponse::Task(created) => created,
        other => panic!("no task: {other:?}"),
    };
    let mut polls = 0;
    loop {
        let interval = created.task.poll_interval_ms.unwrap_or(500);
        tokio::time::sleep(Duration::from_millis(interval)).await;
        polls += 1;
        let task = client
            .get_task(GetTaskParams::new(&created.task.task_id))
            .await
            .expect("tasks/get")
            .task;
        if task.status() == TaskStatus::Completed {
            let TaskPayload::Completed { result } = task.payload else {
                unreachable!("completed")
            };
            return Cost {
                model_calls: 1,
                model_bytes: text_bytes(&Value::Object(result)),
                client_requests: polls,
                elapsed: started.elapsed(),
            };
        }
    }
}

/// Without tasks: `exec`, then the model's `wait`s (each with `yield_ms`) until the cell ends.
async fn with_waits(
    client: &RunningService<RoleClient, Client>,
    seconds: u64,
    yield_ms: u64,
) -> Cost {
    let started = Instant::now();
    let call = |name: &str, value: Value| {
        let request = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments(value));
        async move {
            let result = client.call_tool(request).await.expect("a call");
            serde_json::to_value(result).expect("JSON")
        }
    };
    let mut result = call("exec", json!({"code": cell(seconds, yield_ms)})).await;
    let (mut calls, mut bytes) = (1, text_bytes(&result));
    let running = |result: &Value| {
        result["content"][0]["text"]
            .as_str()
            .and_then(|header| header.strip_prefix("Script running with cell ID "))
            .and_then(|rest| rest.lines().next())
            .map(str::to_owned)
    };
    while let Some(cell) = running(&result) {
        result = call("wait", json!({"cell_id": cell, "yield_time_ms": yield_ms})).await;
        calls += 1;
        bytes += text_bytes(&result);
    }
    Cost {
        model_calls: calls,
        model_bytes: bytes,
        client_requests: 0,
        elapsed: started.elapsed(),
    }
}

#[expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
fn report(name: &str, cost: &Cost) {
    println!(
        "{name:<28} model calls {:>3}   model reads {:>5} B (~{:>4} tokens)   client polls {:>3}   result after {:>5.1} s",
        cost.model_calls,
        cost.model_bytes,
        cost.model_bytes as u64 / BYTES_PER_TOKEN,
        cost.client_requests,
        cost.elapsed.as_secs_f64()
    );
}

#[tokio::main]
#[expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
async fn main() {
    let mut seconds = 30;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args
                .next()
                .and_then(|value| value.parse().ok())
                .expect("--seconds N");
        }
    }
    code_mode_tls::use_ring();
    let (mut server, url) = start_server();
    println!("a cell that writes a line a second for {seconds} s, through code-mode mcp --http");
    let tasks = Client { tasks: true }
        .serve(StreamableHttpClientTransport::from_uri(url.as_str()))
        .await
        .expect("connects");
    report("MCP Tasks", &with_tasks(&tasks, seconds).await);
    let plain = Client { tasks: false }
        .serve(StreamableHttpClientTransport::from_uri(url.as_str()))
        .await
        .expect("connects");
    report(
        "wait polling, 10 s yields",
        &with_waits(&plain, seconds, 10_000).await,
    );
    report(
        "wait polling, 1 s yields",
        &with_waits(&plain, seconds, 1_000).await,
    );
    let _ = server.kill();
    let _ = server.wait();
}
