//! `exec_overhead`: what one `exec` of a trivial cell costs, cold and warm, in process and
//! over IPC, with 0, 32 and 128 tools enabled, or with deferred tools (`--tool-counts
//! 0,1000d,10000d`: `d` marks a count of deferred tools, with a `tool_search` row: one
//! `tools.tool_search` call as a cell sees it).
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
//! [`ROUND_TRIPS`] sequential calls to a tool that answers at once, per call. With more
//! than one `--tracing` mode, the samples alternate the modes, and each row's p50 in a
//! traced mode minus its p50 off is printed with a 95% interval: the children resampled
//! with replacement, in the pairs they ran in (runs of one build differ by more than the
//! 50 µs a traced exec may cost, so a lone difference of medians says little).
//!
//! `--transport` takes `in-process`, `ipc`, `both` (the default), their `-fresh` forms
//! (`in-process-fresh`, `ipc-fresh`: isolate reuse off, a new isolate for every cell),
//! `all`, or `tcp-tls` (a `code-mode-bin --listen` runtime on loopback reached through
//! `RemoteProvider` with mutual TLS; its `spawn+handshake` row is TCP + TLS + the wire
//! handshake to a runtime already listening), as a comma-separated list; one run with
//! `all` compares reuse on and off.
//!
//! Then two more tables (select with `--sections table,throughput,idle`):
//! - throughput: 1, 2, 8 and 32 sessions (`--sessions`) each running trivial cells back to
//!   back for `--throughput-secs` seconds; cells per second, per-exec p50/p99 latency, and
//!   the CPU time per cell of both processes (user + system of the host and, over IPC,
//!   the runtime, divided by cells), which shows the cost apart from the two-core limit;
//!   once per `--tracing` mode, and with `--throughput-rounds N` each of N rounds runs
//!   every mode in turn, each traced mode's p50 and mean minus the first mode's printed
//!   per round and as their median (back to back, a steadier comparison of tracing's cost
//!   than the table's 25 execs per sample);
//! - idle: RSS and thread growth per idle cell, with `--idle-cells` cells (100) parked on
//!   a nested tool call that never answers, once with hibernation off and once with it at
//!   0 ms (`--idle-modes off,0`), and the RSS 10 s after their session shut down (and its ratio to the RSS before
//!   they were parked).
//!
//! On request, `--sections wake` (`wake.rs`): how long a hibernated cell takes to answer,
//! against the length of its journal, beside the same cell kept live.
//!
//! On request, `--sections hops`: where one paced exec and one nested tool call spend
//! their time, in process and over IPC, from the runtime's hop marks (`code_mode::hops`
//! trace events): the p50 time from each mark to the next, over `--samples` execs and 200
//! calls, and for the exec each mark's p50 time since the caller's call. Once per
//! `--tracing` mode (`--tracing off,dead` shows where a traced exec's extra time builds
//! up).
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

mod children;
mod hops;
mod sources;
mod subject;
#[path = "../support.rs"]
mod support;
mod tables;
mod wake;

use children::*;
use hops::*;
use sources::*;
use subject::*;
use support::{EchoTools, tools, tools_for};
use tables::*;
use wake::{wake_child, wake_table};

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

pub(crate) struct Options {
    pub(crate) samples: usize,
    pub(crate) warm_iterations: usize,
    /// `128`, or `1000d` for deferred tools.
    pub(crate) tool_counts: Vec<String>,
    pub(crate) transports: Vec<&'static str>,
    pub(crate) sections: Vec<String>,
    pub(crate) sessions: Vec<usize>,
    pub(crate) throughput_secs: f64,
    /// Rounds of the throughput table, each running every `--tracing` mode once, in turn.
    pub(crate) throughput_rounds: usize,
    pub(crate) idle_cells: usize,
    /// The idle table's hibernation settings: `off`, or a delay in milliseconds.
    pub(crate) idle_modes: Vec<String>,
    /// The tracing modes of the exec, throughput and hops tables (`--tracing off,dead`): `off`, no exporter (what
    /// every user without one runs); `dead`, every span exported over OTLP to a collector
    /// that refuses connections (batches dropped and counted); `bare`, in process only,
    /// the session without the providers' tracing wrapper (the floor of `off`).
    pub(crate) tracing: Vec<String>,
}

fn parse_options(args: &[String]) -> Options {
    let mut options = Options {
        samples: 30,
        warm_iterations: 25,
        tool_counts: ["0", "32", "128"].map(str::to_owned).to_vec(),
        transports: vec!["in-process", "ipc"],
        sections: vec!["table".into(), "throughput".into(), "idle".into()],
        sessions: vec![1, 2, 8, 32],
        throughput_secs: 3.0,
        throughput_rounds: 1,
        idle_cells: 100,
        idle_modes: vec!["off".into(), "0".into()],
        tracing: vec!["off".into()],
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
                options.tool_counts = value()
                    .split(',')
                    .filter(|spec| {
                        let count = spec.strip_suffix('d').unwrap_or(spec);
                        count.parse::<usize>().is_ok()
                    })
                    .map(str::to_owned)
                    .collect();
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
            "--throughput-rounds" => {
                options.throughput_rounds = value().parse().unwrap_or(options.throughput_rounds);
            }
            "--idle-cells" => options.idle_cells = value().parse().unwrap_or(options.idle_cells),
            "--tracing" => {
                options.tracing = value()
                    .split(',')
                    .filter(|mode| matches!(*mode, "off" | "dead" | "bare"))
                    .map(str::to_owned)
                    .collect();
            }
            "--idle-modes" => {
                options.idle_modes = value().split(',').map(str::to_owned).collect();
            }
            // `cargo bench` passes `--bench`; other harness flags are ignored.
            _ => {}
        }
    }
    options
}

/// Runs this binary as a child with `args`; returns the last line it printed.
fn run_child(args: &[String]) -> String {
    run_child_traced(args, "off")
}

/// The environment variable that tells a child its tracing mode.
pub(crate) const TRACING_ENV: &str = "CODE_MODE_BENCH_TRACING";

/// [`run_child`] in a tracing mode (see [`Options::tracing`]).
fn run_child_traced(args: &[String], tracing: &str) -> String {
    let exe = std::env::current_exe().expect("this benchmark's path");
    let output = Command::new(exe)
        .args(args)
        .env(TRACING_ENV, tracing)
        .output()
        .expect("run a child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last() {
        Some(line) if output.status.success() => line.to_owned(),
        _ => panic!(
            "a child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// In the tracing mode `dead` (see [`Options::tracing`]), an exporter of every span to a
/// collector that refuses connections; `None` in the other modes.
fn dead_collector_telemetry() -> Option<code_mode_trace::Telemetry> {
    (std::env::var(TRACING_ENV).as_deref() == Ok("dead")).then(|| {
        code_mode_trace::Telemetry::start(code_mode_trace::TraceSettings::new(
            code_mode_trace::Destination::Otlp {
                endpoint: "http://127.0.0.1:9/v1/traces".to_owned(),
                protocol: code_mode_trace::Protocol::HttpProtobuf,
            },
            "bench",
            "0",
        ))
        .expect("an exporter")
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let child_mode = args.first().map(String::as_str);
    if let Some(mode @ ("--child" | "--child-throughput" | "--child-idle" | "--child-wake")) =
        child_mode
    {
        let telemetry = dead_collector_telemetry();
        if let Some(telemetry) = &telemetry {
            let logs = code_mode_trace::stderr_logs(tracing_subscriber::EnvFilter::new("off"));
            code_mode_trace::init_subscriber(logs, Some(telemetry));
        }
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
            "--child" => {
                let spec = args.get(2).cloned().unwrap_or_else(|| "0".to_owned());
                runtime.block_on(child(&transport, &spec, number(3, 25)));
            }
            "--child-throughput" => {
                let secs = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(3.0);
                runtime.block_on(throughput_child(&transport, number(2, 1), secs));
            }
            "--child-wake" => {
                let on = args.get(3).is_some_and(|value| value == "true");
                runtime.block_on(wake_child(&transport, number(2, 10), on, number(4, 30)));
            }
            _ => {
                let hibernate = args.get(3).and_then(|value| value.parse().ok());
                runtime.block_on(idle_child(&transport, number(2, 100), hibernate));
            }
        }
        return;
    }
    if child_mode == Some("--child-hops") {
        hops_child(
            args.get(1)
                .and_then(|value| value.parse().ok())
                .unwrap_or(30),
        );
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
    if wants("wake") {
        wake_table(&options);
    }
    if wants("sources") {
        sources_table(&options);
    }
    if wants("hops") {
        hops_table(&options);
    }
}
