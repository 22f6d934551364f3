//! Criterion benchmarks of the hot paths:
//!
//! - `frame`: encoding and decoding typical wire messages (an exec request with 32 tools,
//!   a nested tool call, its reply, a completed cell response);
//! - `tool_round_trip`: one nested tool call, JS → delegate → JS, in process and over IPC;
//! - `tool_payload`: the same with a ~1 MiB argument that the delegate echoes back as its
//!   result, so that every pass over the payload between V8 and the delegate shows; with
//!   `CODE_MODE_BIN_BASELINE=<another code-mode-bin>` also over IPC to that runtime, to
//!   compare two builds of the runtime process in one run;
//! - `yield_wait`: an exec whose cell yields (`yield_control()`) followed by the `wait`
//!   that collects its result, next to the same cell without the yield (`exec_plain`);
//! - `baseline`: a round trip over a Unix socket pair between two blocked threads, the
//!   floor any cross-process hop pays on the machine;
//! - `typescript`: stripping the types of a 2 KB and a 50 KB TypeScript cell;
//! - `tool_search`: the BM25 index behind `tools.tool_search` over 10 000 deferred tools:
//!   building it (once per tool set) and answering one query.
//!
//! ```text
//! cargo build --release -p code-mode-bin && cargo bench --bench criterion
//! ```

mod support;
use support::{EchoTools, tools, tools_for};

use bytes::BytesMut;
use code_mode::InProcessSession;
use code_mode_host::{ProcessConfig, ProcessProvider};
use code_mode_internal::{SessionCall, SessionReply};
use code_mode_protocol::{
    BoxFuture, CallId, CellId, CellResponse, CodeModeProvider, CodeModeSession,
    CodeModeSessionDelegate, ContentItem, ExecRequest, JsonText, NestedToolCall, SessionOptions,
    StartedCell, ToolError, ToolKind, WaitRequest,
};
use code_mode_wire::codec::{decode_body, encode_frame};
use code_mode_wire::{
    ClientMessage, DelegateCall, DelegateId, DelegateReply, Request, RequestId, Response,
    ServerMessage, SessionId,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

fn client_messages() -> Vec<(&'static str, ClientMessage)> {
    vec![
        (
            "exec_request_32_tools",
            ClientMessage::Request {
                id: RequestId(7),
                request: Request::Session {
                    session: SessionId(1),
                    call: SessionCall::Execute(ExecRequest::new(
                        "const files = await tools.mcp__bench__tool_0({ path: '.' });\ntext(files.length);",
                    )
                    .with_tools(tools(32)))
                    .into(),
                },
                trace: None,
            },
        ),
        (
            "tool_reply",
            ClientMessage::DelegateReply {
                id: DelegateId(42),
                reply: DelegateReply::ToolResult(Ok(code_mode_wire::payload::JsonText::from(
                    r#"{"files":["src/main.rs","src/lib.rs","Cargo.toml"],"truncated":false}"#,
                ))),
            },
        ),
    ]
}

fn server_messages() -> Vec<(&'static str, ServerMessage)> {
    vec![
        (
            "tool_call",
            ServerMessage::Delegate {
                id: DelegateId(42),
                session: SessionId(1),
                call: DelegateCall::InvokeTool {
                    cell_id: (&CellId::new(12)).into(),
                    call_id: CallId::new(3).into(),
                    tool_name: "mcp__bench__tool_0".to_owned(),
                    kind: ToolKind::Function.into(),
                    input: Some(r#"{"path":"."}"#.into()),
                    exec_call_id: Some("call_8f2a".to_owned()),
                },
            },
        ),
        (
            "completed_cell",
            ServerMessage::Response {
                id: RequestId(7),
                result: Ok(Response::Reply(
                    SessionReply::Started(StartedCell {
                        cell_id: CellId::new(12),
                        initial_response: CellResponse::Result {
                            cell_id: CellId::new(12),
                            content_items: vec![ContentItem::text("3 files\nsrc/main.rs")],
                            failure: None,
                            wall_time: std::time::Duration::from_micros(412),
                        },
                    })
                    .into(),
                )),
            },
        ),
    ]
}

fn bench_frame<T>(c: &mut Criterion, name: &str, message: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut group = c.benchmark_group("frame");
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    group.bench_function(BenchmarkId::new("encode", name), |b| {
        b.iter(|| {
            buffer.clear();
            encode_frame(black_box(message), &mut buffer).expect("encodable");
            black_box(buffer.len())
        });
    });
    buffer.clear();
    encode_frame(message, &mut buffer).expect("encodable");
    let body = buffer[4..].to_vec();
    group.bench_function(BenchmarkId::new("decode", name), |b| {
        b.iter(|| black_box(decode_body::<T>(black_box(&body)).expect("decodable")));
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    for (name, message) in client_messages() {
        bench_frame(c, name, &message);
    }
    for (name, message) in server_messages() {
        bench_frame(c, name, &message);
    }
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

/// A session on each transport, with what keeps it alive.
struct Transports {
    runtime: tokio::runtime::Runtime,
    in_process: Arc<dyn CodeModeSession>,
    ipc: Arc<dyn CodeModeSession>,
    /// The same two with a delegate that answers with the argument's JSON text.
    in_process_text: Arc<dyn CodeModeSession>,
    ipc_text: Arc<dyn CodeModeSession>,
    /// Over IPC to the runtime binary `CODE_MODE_BIN_BASELINE` names, when it does.
    ipc_baseline: Option<(Arc<dyn CodeModeSession>, ProcessProvider)>,
    _provider: ProcessProvider,
}

/// Echoes the argument as the text it arrived as: a delegate that never parses a payload.
struct EchoText;

impl CodeModeSessionDelegate for EchoText {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        Box::pin(async move { Ok(call.input.unwrap_or_else(|| JsonText::new("null"))) })
    }
}

impl Transports {
    fn open() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let provider = runtime.block_on(async {
            let provider = ProcessProvider::new(ProcessConfig::default())
                .expect("code-mode-bin (build it with cargo build --release -p code-mode-bin)");
            provider.start().await.expect("start the runtime");
            provider
        });
        let local = |delegate: Arc<dyn CodeModeSessionDelegate>| -> Arc<dyn CodeModeSession> {
            Arc::new(InProcessSession::new(delegate, SessionOptions::default()))
        };
        let remote = |delegate: Arc<dyn CodeModeSessionDelegate>| -> Arc<dyn CodeModeSession> {
            Arc::new(provider.open_session(delegate, SessionOptions::default()))
        };
        let ipc_baseline = std::env::var_os("CODE_MODE_BIN_BASELINE").map(|binary| {
            let config = ProcessConfig {
                binary: Some(binary.into()),
                ..ProcessConfig::default()
            };
            let provider = ProcessProvider::new(config).expect("the baseline code-mode-bin");
            runtime
                .block_on(provider.start())
                .expect("start the baseline runtime");
            let session: Arc<dyn CodeModeSession> =
                Arc::new(provider.open_session(Arc::new(EchoTools), SessionOptions::default()));
            (session, provider)
        });
        Self {
            ipc_baseline,
            in_process: local(Arc::new(EchoTools)),
            ipc: remote(Arc::new(EchoTools)),
            in_process_text: local(Arc::new(EchoText)),
            ipc_text: remote(Arc::new(EchoText)),
            runtime,
            _provider: provider,
        }
    }

    fn each(&self) -> [(&'static str, &Arc<dyn CodeModeSession>); 2] {
        [("in-process", &self.in_process), ("ipc", &self.ipc)]
    }
}

/// Runs `source` to completion (through a `wait` if it yields); returns the elapsed time.
async fn run_cell(session: &dyn CodeModeSession, request: ExecRequest) -> Duration {
    let started = Instant::now();
    let mut response = session
        .execute(request)
        .await
        .expect("exec")
        .initial_response;
    while let CellResponse::Yielded { cell_id, .. } = &response {
        let cell_id = cell_id.clone();
        response = session.wait(WaitRequest::new(cell_id)).await.expect("wait");
    }
    let elapsed = started.elapsed();
    if let Some(error) = response.error_text() {
        panic!("the benchmarked cell failed: {error}");
    }
    elapsed
}

/// A cell making `calls` sequential nested tool calls.
fn round_trip_cell(calls: u64) -> ExecRequest {
    ExecRequest::new(format!(
        "for (let i = 0; i < {calls}; i++) await tools.mcp__bench__tool_0(i);"
    ))
    .with_tools(tools(1))
}

/// Benchmarks `cell(iters)` on `session`, less the median cost of `cell(0)` (the cell
/// around the calls) over `overhead_runs` runs.
fn bench_calls(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    transports: &Transports,
    name: &str,
    session: &Arc<dyn CodeModeSession>,
    cell: fn(u64) -> ExecRequest,
    overhead_runs: usize,
) {
    let overhead = transports.runtime.block_on(async {
        let mut runs = Vec::new();
        for _ in 0..overhead_runs {
            runs.push(run_cell(session.as_ref(), cell(0)).await);
        }
        runs.sort_unstable();
        runs[runs.len() / 2]
    });
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            transports.runtime.block_on(async {
                run_cell(session.as_ref(), cell(iters))
                    .await
                    .saturating_sub(overhead)
            })
        });
    });
}

fn tool_round_trip(c: &mut Criterion, transports: &Transports) {
    let mut group = c.benchmark_group("tool_round_trip");
    for (name, session) in transports.each() {
        bench_calls(&mut group, transports, name, session, round_trip_cell, 15);
    }
    group.finish();
}

/// A cell making `calls` sequential calls that pass ~1 MiB of JSON each way.
fn payload_cell(calls: u64) -> ExecRequest {
    ExecRequest::new(format!(
        "const payload = Array.from({{ length: 16000 }}, (_, i) => ({{ id: i, name: `item ${{i}}`, tags: [\"a\", \"b\"], score: i * 1.5 }}));\n\
         for (let i = 0; i < {calls}; i++) {{ const back = await tools.mcp__bench__tool_0(payload); if (back.length !== 16000) throw new Error(\"lost\"); }}"
    ))
    .with_tools(tools(1))
}

fn tool_payload(c: &mut Criterion, transports: &Transports) {
    let mut group = c.benchmark_group("tool_payload");
    group.sample_size(20);
    let text = [
        ("in-process-text-delegate", &transports.in_process_text),
        ("ipc-text-delegate", &transports.ipc_text),
    ];
    let baseline = transports
        .ipc_baseline
        .as_ref()
        .map(|(session, _)| ("ipc-baseline-runtime", session));
    for (name, session) in transports.each().into_iter().chain(text).chain(baseline) {
        bench_calls(&mut group, transports, name, session, payload_cell, 9);
    }
    group.finish();
}

fn yield_wait(c: &mut Criterion, transports: &Transports) {
    let mut group = c.benchmark_group("yield_wait");
    for (name, session) in transports.each() {
        group.bench_function(BenchmarkId::new("exec_plain", name), |b| {
            b.iter_custom(|iters| {
                transports.runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += run_cell(session.as_ref(), ExecRequest::new("text('x');")).await;
                    }
                    total
                })
            });
        });
        group.bench_function(BenchmarkId::new("exec_yield_wait", name), |b| {
            b.iter_custom(|iters| {
                transports.runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let request = ExecRequest::new("yield_control(); text('x');");
                        total += run_cell(session.as_ref(), request).await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

fn sessions(c: &mut Criterion) {
    let transports = Transports::open();
    tool_round_trip(c, &transports);
    tool_payload(c, &transports);
    yield_wait(c, &transports);
    transports.runtime.block_on(async {
        transports.in_process.shutdown().await;
        transports.ipc.shutdown().await;
        transports.in_process_text.shutdown().await;
        transports.ipc_text.shutdown().await;
        if let Some((session, _)) = &transports.ipc_baseline {
            session.shutdown().await;
        }
    });
}

// ---------------------------------------------------------------------------------------
// Baseline
// ---------------------------------------------------------------------------------------

fn baseline(c: &mut Criterion) {
    let (mut near, mut far) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 64];
        while let Ok(read) = far.read(&mut byte) {
            if read == 0 || far.write_all(&byte[..read]).is_err() {
                return;
            }
        }
    });
    let message = [7u8; 48];
    let mut answer = [0u8; 64];
    c.bench_function("baseline/unix_socket_round_trip", |b| {
        b.iter(|| {
            near.write_all(&message).expect("write");
            let mut got = 0;
            while got < message.len() {
                got += near.read(&mut answer[got..]).expect("read");
            }
        });
    });
    drop(near);
    let _ = echo.join();
}

/// A TypeScript cell of about `bytes` bytes: the same typed block repeated, each copy with
/// names of its own.
fn typescript_cell(bytes: usize) -> String {
    let mut source = String::new();
    let mut copy = 0;
    while source.len() < bytes {
        copy += 1;
        source.push_str(&format!(
            "interface Row{copy} {{ id: number; name: string; tags?: string[] }}\n\
             const rows{copy}: Row{copy}[] = await tools.list_rows({{ page: {copy} }}) as Row{copy}[];\n\
             function pick{copy}<T, K extends keyof T>(items: T[], key: K): T[K][] {{ return items.map((item: T) => item[key]); }}\n\
             const names{copy}: string[] = pick{copy}<Row{copy}, \"name\">(rows{copy}, \"name\");\n\
             text(names{copy}.join(\",\") satisfies string);\n"
        ));
    }
    source
}

fn typescript(c: &mut Criterion) {
    for (label, bytes) in [("2KB", 2 * 1024), ("50KB", 50 * 1024)] {
        let source = typescript_cell(bytes);
        let stripped = code_mode::strip_typescript(&source).expect("the cell strips");
        assert_eq!(stripped.len(), source.len());
        c.bench_function(&format!("typescript/strip_{label}"), |b| {
            b.iter(|| code_mode::strip_typescript(&source).expect("strip"));
        });
    }
}

// ---------------------------------------------------------------------------------------
// tool_search
// ---------------------------------------------------------------------------------------

fn tool_search(c: &mut Criterion) {
    use code_mode::session::search::{SearchableTools, ToolIndex};
    let set = tools_for("10000d");
    let mut group = c.benchmark_group("tool_search");
    group.bench_function("build_index_10000_deferred", |b| {
        b.iter(|| black_box(ToolIndex::build(black_box(&set))));
    });
    let searchable = SearchableTools::build(&set).expect("deferred tools");
    searchable.index();
    let queries = [
        r#"{"query":"what is the weather in paris"}"#,
        r#"{"query":"create an invoice"}"#,
        r#"{"query":"list calendar events","limit":3}"#,
        r#"{"query":"send a message to a user"}"#,
        r#"{"query":"update ticket"}"#,
    ]
    .map(|query| JsonText::new(query.to_owned()));
    let mut next = 0;
    group.bench_function("query_10000_deferred", |b| {
        b.iter(|| {
            next = (next + 1) % queries.len();
            black_box(searchable.answer(Some(&queries[next])).expect("an answer"))
        });
    });
    group.finish();
}

/// A fresh context per cell (contract §7). `v8_context_new` is the floor: V8's own
/// `Context::New` on a warm isolate, which deserialises a native context from V8's startup
/// snapshot, with nothing of ours in it. `cell_context_built` adds our helpers by hand, as
/// cells did before the startup snapshot; `cell_context_snapshot` is what a cell thread does now, on an isolate
/// made from the runtime's startup snapshot. `exec_overhead --sections hops` shows the
/// same steps inside a cell's reset ("fresh context created", "... has its helpers").
fn context(c: &mut Criterion) {
    code_mode::platform::init_v8();
    let mut group = c.benchmark_group("context");
    // One isolate at a time: V8 enters each on this thread when it is made.
    for (name, source) in [
        ("cell_context_built", code_mode::ContextSource::Built),
        ("cell_context_snapshot", code_mode::ContextSource::Snapshot),
    ] {
        let mut maker = code_mode::runtime::ContextBench::new(source);
        group.bench_function(name, |b| b.iter(|| maker.fresh_context()));
    }
    // With 128 tools built ahead, as the reset of a session whose cells have them.
    let tools = tools(128);
    let mut maker = code_mode::runtime::ContextBench::new(code_mode::ContextSource::Snapshot);
    group.bench_function("cell_context_snapshot_128_tools", |b| {
        b.iter(|| maker.fresh_context_with_tools(&tools));
    });
    let mut isolate = v8::Isolate::new(v8::CreateParams::default());
    group.bench_function("v8_context_new", |b| {
        b.iter(|| {
            v8::scope!(let scope, &mut isolate);
            let context = v8::Context::new(scope, Default::default());
            black_box(context);
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4));
    targets = frames, sessions, baseline, typescript, tool_search, context
}
criterion_main!(benches);
