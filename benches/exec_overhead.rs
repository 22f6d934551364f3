//! `exec_overhead`: what one `exec` of a trivial cell costs, cold and warm, in process and
//! over IPC, with 0, 32 and 128 tools enabled.
//!
//! ```text
//! cargo bench --bench exec_overhead -- --samples 30 --warm-iterations 25 --tool-counts 0,32,128 --transport both
//! ```
//!
//! Each sample runs in a fresh child process (this binary re-run with `--child`), so the
//! cold figure is a real first exec and RSS growth is measured cleanly: with `getrusage`
//! (peak RSS of the process) in process, and with the runtime process's peak RSS
//! (`VmHWM`) over IPC. `cold_exec` is the session's first exec, made [`COLD_PAUSE`] after
//! the session (and over IPC the runtime process) started, the way a user meets it: a
//! model takes at least that long to write its first cell, and by then the cell pool's
//! first fill is done instead of competing with the exec for the cores. Over IPC the
//! runtime's spawn and handshake are measured apart (`spawn+handshake`), and
//! `cold_exec+spawn` adds them. `warm_exec` is every exec after one warm-up.
//! `warm_exec_paced` is the same with a [`PACE`] pause before each exec, the way an
//! agent's execs arrive (between model turns): the pool of prepared isolates is full when
//! each exec starts, where back-to-back execs drain it and wait on isolate creation.
//! `warm_exec_js` and `warm_exec_ts` are a typical small cell in JavaScript and the same
//! cell in TypeScript, alternating (the TypeScript one is refused by V8 as JavaScript, then
//! stripped and compiled). `tool_round_trip` is one nested tool call (JS → delegate → JS), timed as a cell making
//! [`ROUND_TRIPS`] sequential calls to a tool that answers at once, per call.
//!
//! `--transport` takes `in-process`, `ipc`, `both` (the default), their `-fresh` forms
//! (`in-process-fresh`, `ipc-fresh`: isolate reuse off, a new isolate for every cell),
//! `all`, or `tcp-tls` (a `code-mode-bin --listen` runtime on loopback reached through
//! `RemoteProvider` with mutual TLS; its `spawn+handshake` row is TCP + TLS + the wire
//! handshake to a runtime already listening), as a comma-separated list; one run with
//! `all` compares reuse on and off.
//!
//! Then two more tables (select with `--sections table,throughput,idle`):
//! - throughput: 1 and 8 sessions (`--sessions`) each running trivial cells back to back
//!   for `--throughput-secs` seconds; cells per second and per-exec p50/p99 latency;
//! - idle: RSS growth per live idle cell, with `--idle-cells` cells (100) parked on a
//!   nested tool call that never answers.
//!
//! On request, `--sections hops`: where one paced in-process exec and one nested tool call
//! spend their time, from the runtime's hop marks (`code_mode::hops` trace events): the
//! p50 time from each mark to the next, over `--samples` execs and 200 calls.
//!
//! And one table only on request, `--sections sources`: a nested call through the real
//! `code-mode` CLI to each kind of tool source, timed inside the cell over sequential calls
//! after a warm-up (a command tool runs `cat` once per call; an MCP tool is the `echo` of
//! the rmcp fixture server over stdio). It runs the release CLI and the fixture, so build
//! them first:
//!
//! ```text
//! cargo build --release -p code-mode-cli -p code-mode-bin --bins --examples
//! cargo bench --bench exec_overhead -- --sections sources --samples 15
//! ```

mod support;
use support::{EchoTools, tools};

use code_mode::{InProcessConfig, InProcessProvider};
use code_mode_conformance::remote::{ListeningRuntime, Pki, RuntimeOptions};
use code_mode_host::CodeModeProvider;
use code_mode_host::{ClientTls, ProcessConfig, ProcessProvider, RemoteConfig, RemoteProvider};
use code_mode_protocol::{
    BoxFuture, CodeModeSession, CodeModeSessionDelegate, ExecRequest, JsonText, NestedToolCall,
    SessionOptions, ToolDefinition, ToolError, ToolKind,
};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The benchmarked cell, `text("bench");`, made unique (see [`unique`]).
fn trivial_source() -> String {
    unique(r#"text("bench");"#)
}

/// `source` with a comment that makes every benchmarked source unique, as a model's cells
/// are, so that V8's compilation cache (which lives as long as a session's isolate) never
/// serves a benchmarked exec.
fn unique(source: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{source}\n// {n}")
}

/// A typical small cell in JavaScript, and the same cell as a model writes it in
/// TypeScript: `warm_exec_js` and `warm_exec_ts` compare them (the TypeScript one pays for
/// V8 refusing it as JavaScript and for stripping its types).
const TYPICAL_JS: &str = r#"const rows = [{ id: 1, name: "a" }, { id: 2, name: "b" }, { id: 3, name: "c" }];
function pick(items, key) { return items.map((item) => item[key]); }
const names = pick(rows, "name");
const total = rows.reduce((sum, row) => sum + row.id, 0);
text(names.join(",") + " " + total);"#;
const TYPICAL_TS: &str = r#"interface Row { id: number; name: string }
const rows: Row[] = [{ id: 1, name: "a" }, { id: 2, name: "b" }, { id: 3, name: "c" }];
function pick<T, K extends keyof T>(items: T[], key: K): T[K][] { return items.map((item: T) => item[key]); }
const names: string[] = pick<Row, "name">(rows, "name");
const total: number = rows.reduce((sum: number, row: Row) => sum + row.id, 0);
text(names.join(",") + " " + total);"#;

/// Sequential nested calls in the round-trip cell.
const ROUND_TRIPS: u32 = 200;

/// The pause before each `warm_exec_paced` exec.
const PACE: Duration = Duration::from_millis(5);

/// The pause between the session's start and its first (`cold_exec`) exec.
const COLD_PAUSE: Duration = Duration::from_millis(250);

/// Never answers a tool call (until it is cancelled): parks every cell that calls a tool.
struct ParkingTools;

impl CodeModeSessionDelegate for ParkingTools {
    fn invoke_tool(
        &self,
        _: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        Box::pin(async move {
            cancel.cancelled().await;
            Err(ToolError::cancelled())
        })
    }
}

/// Peak RSS of this process, in KiB (`getrusage`).
fn own_peak_rss_kib() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid out-pointer for `getrusage`.
    let result = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if result != 0 {
        return 0;
    }
    // SAFETY: `getrusage` succeeded, so it initialised `usage`.
    let usage = unsafe { usage.assume_init() };
    u64::try_from(usage.ru_maxrss).unwrap_or(0)
}

/// Peak RSS of another process, in KiB (`VmHWM` in `/proc/<pid>/status`).
fn peak_rss_kib_of(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// Current RSS of a process, in KiB (`VmRSS` in `/proc/<pid>/status`).
fn rss_kib_of(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What a child measures: its sessions, the runtime's spawn and handshake time (IPC), and
/// the process whose RSS counts (the runtime process over IPC, this one in process).
struct Subject {
    sessions: Vec<Arc<dyn CodeModeSession>>,
    spawn: Option<Duration>,
    /// The runtime process, over IPC.
    runtime_pid: Option<u32>,
    /// Keeps the runtime process alive.
    _provider: Option<ProcessProvider>,
    /// Over TCP+TLS: the listening runtime and the provider connected to it.
    _remote: Option<(ListeningRuntime, RemoteProvider)>,
}

/// Any provider, opening sessions behind `Arc<dyn CodeModeSession>`.
trait OpenSession {
    fn open_arc(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> Arc<dyn CodeModeSession>;
}

impl<P: CodeModeProvider> OpenSession for P {
    fn open_arc(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> Arc<dyn CodeModeSession> {
        Arc::new(self.open_session(delegate, options))
    }
}

impl Subject {
    async fn open(
        transport: &str,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        sessions: usize,
    ) -> Subject {
        // `-fresh` transports turn isolate reuse off: every cell gets a new isolate.
        let options = SessionOptions {
            reuse_isolates: !transport.ends_with("-fresh"),
            ..SessionOptions::default()
        };
        let open_many = |provider: &dyn OpenSession| {
            (0..sessions)
                .map(|_| provider.open_arc(Arc::clone(&delegate), options.clone()))
                .collect::<Vec<_>>()
        };
        match transport {
            "ipc" | "ipc-fresh" => {
                let mut config = ProcessConfig::default();
                if TRACE_RUNTIME_HOPS.load(std::sync::atomic::Ordering::SeqCst) {
                    config.log_filter = "warn,code_mode::hops=trace".to_owned();
                }
                let provider = ProcessProvider::new(config)
                    .expect("code-mode-bin (build it with cargo build --release -p code-mode-bin)");
                let started = Instant::now();
                provider.start().await.expect("start the runtime");
                let spawn = started.elapsed();
                let pid = provider.runtime_pid().await.expect("a runtime pid");
                Subject {
                    sessions: open_many(&provider),
                    spawn: Some(spawn),
                    runtime_pid: Some(pid),
                    _provider: Some(provider),
                    _remote: None,
                }
            }
            "tcp-tls" => {
                let binary = code_mode_host::find_binary(None)
                    .expect("code-mode-bin (build it with cargo build --release -p code-mode-bin)");
                let pki = Pki::default();
                let runtime = ListeningRuntime::start(&binary, &RuntimeOptions::tls(&pki));
                let client = pki.client("bench host");
                let tls = ClientTls::from_pem(
                    pki.ca_pem().as_bytes(),
                    client.cert_pem.as_bytes(),
                    client.key_pem.as_bytes(),
                )
                .expect("client TLS settings");
                let provider =
                    RemoteProvider::new(RemoteConfig::new(vec![runtime.endpoint()], tls))
                        .expect("a remote provider");
                let started = Instant::now();
                provider.start().await.expect("connect to the runtime");
                let spawn = started.elapsed();
                let pid = runtime.pid();
                Subject {
                    sessions: open_many(&provider),
                    spawn: Some(spawn),
                    runtime_pid: Some(pid),
                    _provider: None,
                    _remote: Some((runtime, provider)),
                }
            }
            _ => {
                code_mode::platform::init_v8();
                Subject {
                    sessions: open_many(&InProcessProvider::new(InProcessConfig::default())),
                    spawn: None,
                    runtime_pid: None,
                    _provider: None,
                    _remote: None,
                }
            }
        }
        .opened()
        .await
    }

    /// Opens every remote session with a first no-op call: that is not part of an exec.
    async fn opened(self) -> Subject {
        for session in &self.sessions {
            let _ = session
                .wait(code_mode_protocol::WaitRequest::new("0"))
                .await;
        }
        self
    }

    /// Peak RSS in KiB: `getrusage` in process, `VmHWM` of the runtime process over IPC.
    fn peak_rss_kib(&self) -> u64 {
        self.runtime_pid
            .map_or_else(own_peak_rss_kib, peak_rss_kib_of)
    }

    /// Current RSS in KiB of the process that runs the cells.
    fn rss_kib(&self) -> u64 {
        rss_kib_of(self.runtime_pid.unwrap_or_else(std::process::id))
    }

    async fn shutdown(&self) {
        for session in &self.sessions {
            session.shutdown().await;
        }
    }
}

/// One sample, run in a child process; prints `key=value` pairs on stdout.
async fn child(transport: &str, tool_count: usize, warm_iterations: usize) {
    let tools = tools(tool_count);
    let request = || ExecRequest::new(trivial_source()).with_tools(Arc::clone(&tools));
    let subject = Subject::open(transport, Arc::new(EchoTools), 1).await;
    let session = &subject.sessions[0];
    let spawn = subject.spawn;
    let rss = || subject.peak_rss_kib();
    let rss_before = rss();
    tokio::time::sleep(COLD_PAUSE).await;
    let started = Instant::now();
    let response = session.execute(request()).await.expect("cold exec");
    let cold = started.elapsed();
    assert_eq!(
        response.initial_response.content_items().len(),
        1,
        "the cell printed"
    );
    let rss_after_cold = rss();
    // One warm-up, then the measured iterations.
    session.execute(request()).await.expect("warm-up exec");
    let mut warm = Vec::with_capacity(warm_iterations);
    for _ in 0..warm_iterations {
        let started = Instant::now();
        session.execute(request()).await.expect("warm exec");
        warm.push(started.elapsed().as_nanos());
    }
    let mut paced = Vec::with_capacity(warm_iterations);
    for _ in 0..warm_iterations {
        tokio::time::sleep(PACE).await;
        let started = Instant::now();
        session.execute(request()).await.expect("paced exec");
        paced.push(started.elapsed().as_nanos());
    }
    // The typical cell in JavaScript and in TypeScript, alternating.
    let (mut typical_js, mut typical_ts) = (Vec::new(), Vec::new());
    for _ in 0..warm_iterations {
        for (source, times) in [(TYPICAL_JS, &mut typical_js), (TYPICAL_TS, &mut typical_ts)] {
            let started = Instant::now();
            let response = session
                .execute(ExecRequest::new(unique(source)))
                .await
                .expect("typical exec");
            times.push(started.elapsed().as_nanos());
            assert_eq!(
                response.initial_response.content_items()[0].as_text(),
                Some("a,b,c 6"),
                "the typical cell ran"
            );
        }
    }
    // Nested tool calls: one cell, many sequential round trips.
    let round_trips = ExecRequest::new(format!(
        "for (let i = 0; i < {ROUND_TRIPS}; i++) await tools.mcp__bench__tool_0(i); text('done');"
    ))
    .with_tools(self::tools(1));
    let started = Instant::now();
    session.execute(round_trips).await.expect("round-trip exec");
    let round_trip = started.elapsed().as_nanos() / u128::from(ROUND_TRIPS);
    subject.shutdown().await;
    let join = |times: &[u128]| {
        times
            .iter()
            .map(u128::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    #[allow(
        clippy::print_stdout,
        reason = "the child reports to its parent on stdout"
    )]
    {
        println!(
            "cold_ns={} spawn_ns={} rss_delta_kib={} round_trip_ns={round_trip} warm_ns={} paced_ns={} js_ns={} ts_ns={}",
            cold.as_nanos(),
            spawn.map_or(0, |spawn| spawn.as_nanos()),
            rss_after_cold.saturating_sub(rss_before),
            join(&warm),
            join(&paced),
            join(&typical_js),
            join(&typical_ts)
        );
    }
}

/// Throughput: `sessions` sessions each running trivial cells back to back for `secs`;
/// prints the number of cells and every exec's latency.
async fn throughput_child(transport: &str, sessions: usize, secs: f64) {
    let subject = Subject::open(transport, Arc::new(EchoTools), sessions).await;
    // One exec per session first, so the pool and the connection are warm.
    for session in &subject.sessions {
        session
            .execute(ExecRequest::new(trivial_source()))
            .await
            .expect("warm-up exec");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let runs: Vec<_> = subject
        .sessions
        .iter()
        .map(|session| {
            let session = Arc::clone(session);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    session
                        .execute(ExecRequest::new(trivial_source()))
                        .await
                        .expect("throughput exec");
                    latencies.push(started.elapsed().as_nanos());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for run in runs {
        latencies.extend(run.await.expect("a throughput session"));
    }
    let elapsed = started.elapsed();
    subject.shutdown().await;
    #[allow(
        clippy::print_stdout,
        reason = "the child reports to its parent on stdout"
    )]
    {
        println!(
            "elapsed_ns={} latencies_ns={}",
            elapsed.as_nanos(),
            latencies
                .iter()
                .map(u128::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
}

/// Idle cells: RSS before and after parking `cells` cells on a tool call that never
/// answers.
async fn idle_child(transport: &str, cells: usize) {
    let subject = Subject::open(transport, Arc::new(ParkingTools), 1).await;
    let session = &subject.sessions[0];
    let park =
        || ExecRequest::new("await tools.park(); text('never');").with_tools(tools_named("park"));
    // One parked cell first, so one-time costs (code, first isolate) are not counted.
    park_one(session.as_ref(), park()).await;
    let settle = Duration::from_millis(300);
    tokio::time::sleep(settle).await;
    let before = subject.rss_kib();
    for _ in 0..cells {
        park_one(session.as_ref(), park()).await;
    }
    tokio::time::sleep(settle).await;
    let after = subject.rss_kib();
    subject.shutdown().await;
    #[allow(
        clippy::print_stdout,
        reason = "the child reports to its parent on stdout"
    )]
    {
        println!("before_kib={before} after_kib={after}");
    }
}

fn tools_named(name: &str) -> Arc<[ToolDefinition]> {
    Arc::from(vec![ToolDefinition::new(
        name,
        "Never answers.",
        ToolKind::Function,
    )])
}

/// Starts a cell and returns once it is parked on its tool call.
async fn park_one(session: &dyn CodeModeSession, request: ExecRequest) {
    match session
        .execute_to_pending(request)
        .await
        .expect("park a cell")
        .outcome
    {
        code_mode_protocol::PendingOutcome::Pending { .. } => {}
        code_mode_protocol::PendingOutcome::Completed(response) => {
            panic!("the parked cell completed: {response:?}")
        }
    }
}

struct Sample {
    cold: u128,
    spawn: u128,
    round_trip: u128,
    rss_delta_kib: u64,
    warm: Vec<u128>,
    paced: Vec<u128>,
    typical_js: Vec<u128>,
    typical_ts: Vec<u128>,
}

/// Parses `key=value` pairs; lists are comma-separated.
fn parse_pairs(line: &str) -> std::collections::HashMap<&str, Vec<u128>> {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| {
            let values = value.split(',').filter_map(|v| v.parse().ok()).collect();
            (key, values)
        })
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let pairs = parse_pairs(line);
    let one = |key: &str| pairs.get(key).and_then(|values| values.first().copied());
    Some(Sample {
        cold: one("cold_ns")?,
        spawn: one("spawn_ns")?,
        round_trip: one("round_trip_ns")?,
        rss_delta_kib: u64::try_from(one("rss_delta_kib")?).ok()?,
        warm: pairs.get("warm_ns")?.clone(),
        paced: pairs.get("paced_ns")?.clone(),
        typical_js: pairs.get("js_ns")?.clone(),
        typical_ts: pairs.get("ts_ns")?.clone(),
    })
}

fn percentile(sorted: &[u128], fraction: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

fn format_duration(nanos: u128) -> String {
    if nanos >= 10_000_000 {
        format!("{:.1} ms", nanos as f64 / 1e6)
    } else {
        format!("{:.0} µs", nanos as f64 / 1e3)
    }
}

struct Options {
    samples: usize,
    warm_iterations: usize,
    tool_counts: Vec<usize>,
    transports: Vec<&'static str>,
    sections: Vec<String>,
    sessions: Vec<usize>,
    throughput_secs: f64,
    idle_cells: usize,
}

fn parse_options(args: &[String]) -> Options {
    let mut options = Options {
        samples: 30,
        warm_iterations: 25,
        tool_counts: vec![0, 32, 128],
        transports: vec!["in-process", "ipc"],
        sections: vec!["table".into(), "throughput".into(), "idle".into()],
        sessions: vec![1, 8],
        throughput_secs: 3.0,
        idle_cells: 100,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().cloned().unwrap_or_default();
        match arg.as_str() {
            "--samples" => options.samples = value().parse().unwrap_or(options.samples),
            "--warm-iterations" => {
                options.warm_iterations = value().parse().unwrap_or(options.warm_iterations);
            }
            "--tool-counts" => {
                options.tool_counts = value().split(',').filter_map(|n| n.parse().ok()).collect();
            }
            "--transport" => {
                // A comma-separated list; `both` is in-process and ipc, `all` adds their
                // `-fresh` forms (isolate reuse off).
                let known = [
                    "in-process",
                    "ipc",
                    "in-process-fresh",
                    "ipc-fresh",
                    "tcp-tls",
                ];
                options.transports = value()
                    .split(',')
                    .flat_map(|name| match name {
                        "all" => known[..4].to_vec(),
                        "both" => vec!["in-process", "ipc"],
                        name => known
                            .iter()
                            .copied()
                            .filter(|known| *known == name)
                            .collect(),
                    })
                    .collect();
            }
            "--sections" => {
                options.sections = value().split(',').map(str::to_owned).collect();
            }
            "--sessions" => {
                options.sessions = value().split(',').filter_map(|n| n.parse().ok()).collect();
            }
            "--throughput-secs" => {
                options.throughput_secs = value().parse().unwrap_or(options.throughput_secs);
            }
            "--idle-cells" => options.idle_cells = value().parse().unwrap_or(options.idle_cells),
            // `cargo bench` passes `--bench`; other harness flags are ignored.
            _ => {}
        }
    }
    options
}

/// Runs this binary as a child with `args`; returns the last line it printed.
fn run_child(args: &[String]) -> String {
    let exe = std::env::current_exe().expect("this benchmark's path");
    let output = Command::new(exe).args(args).output().expect("run a child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last() {
        Some(line) if output.status.success() => line.to_owned(),
        _ => panic!(
            "a child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[allow(clippy::print_stdout, reason = "the benchmark's tables are its output")]
fn exec_table(options: &Options) {
    println!(
        "{:<16} {:<10} {:>5} {:>7} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "scenario",
        "transport",
        "tools",
        "samples",
        "warmups",
        "iters",
        "mean/exec",
        "p50/exec",
        "p95/exec",
        "rssΔ p50",
        "rssΔ max"
    );
    for transport in &options.transports {
        for &tool_count in &options.tool_counts {
            let samples: Vec<Sample> = (0..options.samples)
                .map(|_| {
                    let line = run_child(&[
                        "--child".to_owned(),
                        (*transport).to_owned(),
                        tool_count.to_string(),
                        options.warm_iterations.to_string(),
                    ]);
                    parse_sample(&line)
                        .unwrap_or_else(|| panic!("a sample printed an unreadable line: {line}"))
                })
                .collect();
            let mut rss: Vec<u128> = samples
                .iter()
                .map(|s| u128::from(s.rss_delta_kib))
                .collect();
            rss.sort_unstable();
            let rss_p50 = format!("{:.1} MiB", percentile(&rss, 0.5) as f64 / 1024.0);
            let rss_max = format!(
                "{:.1} MiB",
                rss.last().copied().unwrap_or(0) as f64 / 1024.0
            );
            let mut rows: Vec<(&str, Vec<u128>, usize, usize)> = vec![
                ("cold_exec", samples.iter().map(|s| s.cold).collect(), 1, 0),
                (
                    "warm_exec",
                    samples.iter().flat_map(|s| s.warm.clone()).collect(),
                    options.warm_iterations,
                    1,
                ),
                (
                    "warm_exec_paced",
                    samples.iter().flat_map(|s| s.paced.clone()).collect(),
                    options.warm_iterations,
                    1,
                ),
                (
                    "warm_exec_js",
                    samples.iter().flat_map(|s| s.typical_js.clone()).collect(),
                    options.warm_iterations,
                    1,
                ),
                (
                    "warm_exec_ts",
                    samples.iter().flat_map(|s| s.typical_ts.clone()).collect(),
                    options.warm_iterations,
                    1,
                ),
                (
                    "tool_round_trip",
                    samples.iter().map(|s| s.round_trip).collect(),
                    ROUND_TRIPS as usize,
                    0,
                ),
            ];
            if transport.starts_with("ipc") || *transport == "tcp-tls" {
                rows.insert(
                    0,
                    (
                        "spawn+handshake",
                        samples.iter().map(|s| s.spawn).collect(),
                        1,
                        0,
                    ),
                );
                rows.insert(
                    2,
                    (
                        "cold_exec+spawn",
                        samples.iter().map(|s| s.cold + s.spawn).collect(),
                        1,
                        0,
                    ),
                );
            }
            for (scenario, mut times, iterations, warmups) in rows {
                times.sort_unstable();
                let mean = times.iter().sum::<u128>() / times.len().max(1) as u128;
                println!(
                    "{:<16} {:<10} {:>5} {:>7} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    scenario,
                    transport,
                    tool_count,
                    options.samples,
                    warmups,
                    iterations,
                    format_duration(mean),
                    format_duration(percentile(&times, 0.5)),
                    format_duration(percentile(&times, 0.95)),
                    rss_p50,
                    rss_max
                );
            }
        }
    }
}

#[allow(clippy::print_stdout, reason = "the benchmark's tables are its output")]
fn throughput_table(options: &Options) {
    println!();
    println!(
        "{:<16} {:<10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10}",
        "throughput",
        "transport",
        "sessions",
        "seconds",
        "cells",
        "cells/s",
        "p50/exec",
        "p99/exec"
    );
    for transport in &options.transports {
        for &sessions in &options.sessions {
            let line = run_child(&[
                "--child-throughput".to_owned(),
                (*transport).to_owned(),
                sessions.to_string(),
                options.throughput_secs.to_string(),
            ]);
            let pairs = parse_pairs(&line);
            let elapsed = pairs
                .get("elapsed_ns")
                .and_then(|v| v.first().copied())
                .unwrap_or(1);
            let mut latencies = pairs.get("latencies_ns").cloned().unwrap_or_default();
            latencies.sort_unstable();
            let seconds = elapsed as f64 / 1e9;
            println!(
                "{:<16} {:<10} {:>8} {:>8.1} {:>8} {:>10.0} {:>10} {:>10}",
                "trivial_cells",
                transport,
                sessions,
                seconds,
                latencies.len(),
                latencies.len() as f64 / seconds,
                format_duration(percentile(&latencies, 0.5)),
                format_duration(percentile(&latencies, 0.99)),
            );
        }
    }
}

#[allow(clippy::print_stdout, reason = "the benchmark's tables are its output")]
fn idle_table(options: &Options) {
    println!();
    println!(
        "{:<16} {:<10} {:>6} {:>12} {:>12} {:>12}",
        "idle", "transport", "cells", "rss before", "rss after", "per cell"
    );
    for transport in &options.transports {
        let line = run_child(&[
            "--child-idle".to_owned(),
            (*transport).to_owned(),
            options.idle_cells.to_string(),
        ]);
        let pairs = parse_pairs(&line);
        let kib = |key: &str| pairs.get(key).and_then(|v| v.first().copied()).unwrap_or(0);
        let (before, after) = (kib("before_kib"), kib("after_kib"));
        let per_cell = after.saturating_sub(before) as f64 / options.idle_cells.max(1) as f64;
        println!(
            "{:<16} {:<10} {:>6} {:>8.1} MiB {:>8.1} MiB {:>8.2} MiB",
            "parked_cells",
            transport,
            options.idle_cells,
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            per_cell / 1024.0
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let child_mode = args.first().map(String::as_str);
    if let Some(mode @ ("--child" | "--child-throughput" | "--child-idle")) = child_mode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let transport = args[1].clone();
        let number = |index: usize, default: usize| {
            args.get(index)
                .and_then(|value| value.parse().ok())
                .unwrap_or(default)
        };
        match mode {
            "--child" => runtime.block_on(child(&transport, number(2, 0), number(3, 25))),
            "--child-throughput" => {
                let secs = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(3.0);
                runtime.block_on(throughput_child(&transport, number(2, 1), secs));
            }
            _ => runtime.block_on(idle_child(&transport, number(2, 100))),
        }
        return;
    }
    let options = parse_options(&args);
    let wants = |section: &str| options.sections.iter().any(|s| s == section);
    if wants("table") {
        exec_table(&options);
    }
    if wants("throughput") {
        throughput_table(&options);
    }
    if wants("idle") {
        idle_table(&options);
    }
    if wants("sources") {
        sources_table(&options);
    }
    if wants("hops") {
        hops_table(&options);
    }
}

/// The hop marks seen since the last [`take_marks`], with when they were made (wall
/// clock, so that the runtime process's marks line up with this process's).
static MARKS: std::sync::Mutex<Vec<(&'static str, Duration)>> = std::sync::Mutex::new(Vec::new());

/// Set while the hops table runs: IPC runtimes are started with their hop marks on.
static TRACE_RUNTIME_HOPS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn take_marks() -> Vec<(&'static str, Duration)> {
    std::mem::take(
        &mut *MARKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// Keeps one copy of each mark name (there are a few dozen).
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.iter().find(|known| **known == name) {
        return known;
    }
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(name);
    name
}

/// A runtime process's hop mark, from one of its log lines as the host forwards them
/// (`2026-11-22T00:06:33.123456Z TRACE ... hop="name"`): the mark and when it was made.
fn runtime_mark(line: &str) -> Option<(&'static str, Duration)> {
    let (_, rest) = line.split_once("hop=\"")?;
    let (name, _) = rest.split_once('"')?;
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.trim_end_matches('Z').split_once('T')?;
    let mut date = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.split(':');
    let (hours, minutes) = (
        time.next()?.parse::<u64>().ok()?,
        time.next()?.parse::<u64>().ok()?,
    );
    let seconds: f64 = time.next()?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = u64::try_from(era * 146_097 + day_of_era - 719_468).ok()?;
    let whole = days * 86_400 + hours * 3_600 + minutes * 60;
    Some((
        intern(&format!("{name} (runtime)")),
        Duration::from_secs(whole) + Duration::from_secs_f64(seconds),
    ))
}

/// Records every `code_mode::hops` event, and the runtime process's marks among the log
/// lines the host forwards.
struct HopLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for HopLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(Option<String>, Option<String>);
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "hop" {
                    self.0 = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.1 = Some(format!("{value:?}"));
                }
            }
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut fields = Fields(None, None);
        event.record(&mut fields);
        let mark = match fields {
            Fields(Some(name), _) => Some((intern(&name), at)),
            Fields(None, Some(line)) if event.metadata().target() == "code_mode_bin" => {
                runtime_mark(&line)
            }
            _ => None,
        };
        if let Some(mark) = mark {
            MARKS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(mark);
        }
    }
}

/// Adds the time between consecutive marks to `spans`, keyed `from → to`.
fn add_spans(marks: &mut [(&'static str, Duration)], spans: &mut Vec<(String, Vec<u128>)>) {
    marks.sort_by_key(|(_, at)| *at);
    for pair in marks.windows(2) {
        let key = format!("{} → {}", pair[0].0, pair[1].0);
        let nanos = pair[1].1.saturating_sub(pair[0].1).as_nanos();
        match spans.iter_mut().find(|(known, _)| *known == key) {
            Some((_, times)) => times.push(nanos),
            None => spans.push((key, vec![nanos])),
        }
    }
}

#[allow(clippy::print_stdout, reason = "the benchmark's tables are its output")]
fn print_spans(title: &str, spans: &mut [(String, Vec<u128>)]) {
    println!("{title:<72} {:>7} {:>10}", "count", "p50");
    for (key, times) in spans.iter_mut() {
        times.sort_unstable();
        println!(
            "  {key:<70} {:>7} {:>10}",
            times.len(),
            format_duration(percentile(times, 0.5))
        );
    }
}

/// Per-hop times of paced execs and of sequential nested calls, in process and over IPC
/// (the runtime process's marks merged in by wall clock).
fn hops_table(options: &Options) {
    use tracing_subscriber::layer::SubscriberExt;
    TRACE_RUNTIME_HOPS.store(true, std::sync::atomic::Ordering::SeqCst);
    let subscriber = tracing_subscriber::registry().with(HopLayer).with(
        tracing_subscriber::filter::Targets::new()
            .with_target("code_mode::hops", tracing::Level::TRACE)
            .with_target("code_mode_bin", tracing::Level::INFO),
    );
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    for transport in ["in-process", "ipc"] {
        runtime.block_on(hops_of(transport, options));
    }
}

/// The hops table of one transport.
async fn hops_of(transport: &str, options: &Options) {
    let subject = Subject::open(transport, Arc::new(EchoTools), 1).await;
    let session = &subject.sessions[0];
    tokio::time::sleep(COLD_PAUSE).await;
    session
        .execute(ExecRequest::new(trivial_source()))
        .await
        .expect("warm-up exec");
    let mut spans = Vec::new();
    tokio::time::sleep(PACE).await;
    take_marks();
    for _ in 0..options.samples.max(1) {
        session
            .execute(ExecRequest::new(trivial_source()))
            .await
            .expect("paced exec");
        // The isolate is reset for the next cell meanwhile, off the exec's path; its
        // marks belong to this sample (and the runtime's log lines arrive).
        tokio::time::sleep(PACE).await;
        add_spans(&mut take_marks(), &mut spans);
    }
    print_spans(
        &format!("paced exec, {transport} (mark → next mark)"),
        &mut spans,
    );
    tokio::time::sleep(PACE).await;
    let calls = ExecRequest::new(format!(
        "for (let i = 0; i < {ROUND_TRIPS}; i++) await tools.mcp__bench__tool_0(i);"
    ))
    .with_tools(tools(1));
    take_marks();
    session.execute(calls).await.expect("round-trip exec");
    tokio::time::sleep(PACE * 4).await;
    let mut marks = take_marks();
    marks.sort_by_key(|(_, at)| *at);
    // Only the calls' own marks, from the first call's emission to the last answer.
    let is = |name: &str, wanted: &str| name.starts_with(wanted);
    let first = marks
        .iter()
        .position(|(name, _)| is(name, "cell thread emits the tool call"))
        .unwrap_or(0);
    let last = marks
        .iter()
        .rposition(|(name, _)| is(name, "cell thread has the tool result"))
        .unwrap_or(marks.len().saturating_sub(1));
    let mut calls_marks = marks[first..=last].to_vec();
    let mut spans = Vec::new();
    add_spans(&mut calls_marks, &mut spans);
    print_spans(
        &format!("nested tool call, {transport} (mark → next mark)"),
        &mut spans,
    );
    subject.shutdown().await;
}

/// A file built beside this benchmark in the same target directory (`release/<relative>`).
fn built(relative: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("this benchmark's path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile.join(relative);
    assert!(
        path.exists(),
        "{} is missing; build it with `cargo build --release -p code-mode-cli -p code-mode-bin --bins --examples`",
        path.display()
    );
    path
}

/// Per-call time of nested calls through the `code-mode` CLI, per tool source.
#[allow(clippy::print_stdout, reason = "the benchmark's tables are its output")]
fn sources_table(options: &Options) {
    let cli = built("code-mode");
    let fixture = built("examples/mcp-fixture");
    let dir = std::env::temp_dir().join(format!("code-mode-bench-sources-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let tools = dir.join("tools.toml");
    std::fs::write(
        &tools,
        format!(
            "[[tool]]\nname = \"cat\"\ndescription = \"Answers with its input.\"\ncommand = [\"cat\"]\n\n\
             [[mcp_server]]\nname = \"fx\"\ncommand = [{:?}]\n",
            fixture.display().to_string()
        ),
    )
    .expect("write the tools file");
    println!(
        "{:<28} {:>7} {:>6} {:>10} {:>10} {:>10}",
        "nested call (code-mode CLI)", "samples", "calls", "mean/call", "p50/call", "p95/call"
    );
    for (label, tool, calls) in [
        ("command tool (cat)", "cat", 50),
        ("MCP tool, stdio (rmcp)", "mcp__fx__echo", 400),
    ] {
        let cell = format!(
            "for (let i = 0; i < 5; i++) await tools.{tool}({{ text: \"x\" }});\n\
             const start = Date.now();\n\
             for (let i = 0; i < {calls}; i++) await tools.{tool}({{ text: \"x\" }});\n\
             text(String((Date.now() - start) * 1e6 / {calls}));"
        );
        let cell_path = dir.join("cell.js");
        std::fs::write(&cell_path, cell).expect("write the cell");
        let mut per_call: Vec<u128> = (0..options.samples)
            .map(|_| {
                let output = Command::new(&cli)
                    .args(["run", "--json", "--tools"])
                    .arg(&tools)
                    .arg(&cell_path)
                    .output()
                    .expect("run code-mode");
                let result: serde_json::Value = serde_json::from_slice(&output.stdout)
                    .unwrap_or_else(|error| {
                        panic!(
                            "code-mode run: {error}: {}",
                            String::from_utf8_lossy(&output.stderr)
                        )
                    });
                let text = result["response"]["content_items"][0]["text"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no figure in {result}"));
                text.parse::<f64>().expect("nanoseconds per call") as u128
            })
            .collect();
        per_call.sort_unstable();
        let mean = per_call.iter().sum::<u128>() / per_call.len().max(1) as u128;
        println!(
            "{:<28} {:>7} {:>6} {:>10} {:>10} {:>10}",
            label,
            per_call.len(),
            calls,
            format_duration(mean),
            format_duration(percentile(&per_call, 0.5)),
            format_duration(percentile(&per_call, 0.95))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
