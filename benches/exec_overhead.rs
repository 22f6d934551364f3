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
//! (`VmHWM`) over IPC. `cold_exec` is the first exec after the session exists; over IPC
//! the runtime's spawn and handshake are measured apart (`spawn+handshake`), and
//! `cold_exec+spawn` adds them. `warm_exec` is every exec after one warm-up.
//! `tool_round_trip` is one nested tool call (JS → delegate → JS), timed as a cell making
//! [`ROUND_TRIPS`] sequential calls to a tool that answers at once, per call.

use code_mode::{InProcessOptions, InProcessSession};
use code_mode_host::{HostConfig, IpcProvider};
use code_mode_protocol::{
    BoxFuture, CodeModeSession, CodeModeSessionDelegate, ExecRequest, NestedToolCall,
    SessionOptions, ToolDefinition, ToolKind,
};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The benchmarked cell.
const SCRIPT: &str = r#"text("bench");"#;

/// Sequential nested calls in the round-trip cell.
const ROUND_TRIPS: u32 = 200;

/// Answers every tool call at once with its input.
struct EchoTools;

impl CodeModeSessionDelegate for EchoTools {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move { Ok(call.input.unwrap_or(serde_json::Value::Null)) })
    }
    fn notify(&self, _: String, _: String, _: CancellationToken) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn cell_closed(&self, _: &str) {}
}

fn tools(count: usize) -> Arc<[ToolDefinition]> {
    (0..count)
        .map(|index| {
            ToolDefinition::new(
                format!("mcp__bench__tool_{index}"),
                format!("Synthetic tool number {index}, for the benchmark."),
                ToolKind::Function,
            )
        })
        .collect()
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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What a sample measures: the session, the runtime's spawn and handshake time (IPC), and
/// how to read the relevant peak RSS.
type Subject = (
    Box<dyn CodeModeSession>,
    Option<Duration>,
    Box<dyn Fn() -> u64>,
);

/// One sample, run in a child process; prints `key=value` pairs on stdout.
async fn child(transport: &str, tool_count: usize, warm_iterations: usize) {
    let tools = tools(tool_count);
    let request = || ExecRequest::new(SCRIPT).with_tools(Arc::clone(&tools));
    let (session, spawn, rss): Subject = match transport {
        "ipc" => {
            let provider = IpcProvider::new(HostConfig::default())
                .expect("code-mode-bin (build it with cargo build --release -p code-mode-bin)");
            let started = Instant::now();
            provider.start().await.expect("start the runtime");
            let spawn = started.elapsed();
            let pid = provider.runtime_pid().await.expect("a runtime pid");
            let session = provider.open_session(Arc::new(EchoTools), SessionOptions::default());
            (
                Box::new(session),
                Some(spawn),
                Box::new(move || peak_rss_kib_of(pid)),
            )
        }
        _ => {
            code_mode::platform::init_v8();
            let session = InProcessSession::new(Arc::new(EchoTools), InProcessOptions::default());
            (Box::new(session), None, Box::new(own_peak_rss_kib))
        }
    };
    // Opening the remote session is not part of an exec: do it with a first no-op call.
    let _ = session
        .wait(code_mode_protocol::WaitRequest::new("0"))
        .await;
    let rss_before = rss();
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
    // Nested tool calls: one cell, many sequential round trips.
    let round_trips = ExecRequest::new(format!(
        "for (let i = 0; i < {ROUND_TRIPS}; i++) await tools.mcp__bench__tool_0(i); text('done');"
    ))
    .with_tools(self::tools(1));
    let started = Instant::now();
    session.execute(round_trips).await.expect("round-trip exec");
    let round_trip = started.elapsed().as_nanos() / u128::from(ROUND_TRIPS);
    session.shutdown().await;
    let warm: Vec<String> = warm.iter().map(u128::to_string).collect();
    #[allow(
        clippy::print_stdout,
        reason = "the child reports to its parent on stdout"
    )]
    {
        println!(
            "cold_ns={} spawn_ns={} rss_delta_kib={} round_trip_ns={round_trip} warm_ns={}",
            cold.as_nanos(),
            spawn.map_or(0, |spawn| spawn.as_nanos()),
            rss_after_cold.saturating_sub(rss_before),
            warm.join(",")
        );
    }
}

struct Sample {
    cold: u128,
    spawn: u128,
    round_trip: u128,
    rss_delta_kib: u64,
    warm: Vec<u128>,
}

fn parse_sample(line: &str) -> Option<Sample> {
    let mut sample = Sample {
        cold: 0,
        spawn: 0,
        round_trip: 0,
        rss_delta_kib: 0,
        warm: Vec::new(),
    };
    for pair in line.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        match key {
            "cold_ns" => sample.cold = value.parse().ok()?,
            "spawn_ns" => sample.spawn = value.parse().ok()?,
            "round_trip_ns" => sample.round_trip = value.parse().ok()?,
            "rss_delta_kib" => sample.rss_delta_kib = value.parse().ok()?,
            "warm_ns" => {
                sample.warm = value
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?
            }
            _ => {}
        }
    }
    Some(sample)
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
}

fn parse_options(args: &[String]) -> Options {
    let mut options = Options {
        samples: 30,
        warm_iterations: 25,
        tool_counts: vec![0, 32, 128],
        transports: vec!["in-process", "ipc"],
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
                options.transports = match value().as_str() {
                    "in-process" => vec!["in-process"],
                    "ipc" => vec!["ipc"],
                    _ => vec!["in-process", "ipc"],
                };
            }
            // `cargo bench` passes `--bench`; other harness flags are ignored.
            _ => {}
        }
    }
    options
}

#[allow(clippy::print_stdout, reason = "the benchmark's table is its output")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let transport = args[1].clone();
        let tool_count = args[2].parse().unwrap_or(0);
        let warm_iterations = args[3].parse().unwrap_or(25);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(child(&transport, tool_count, warm_iterations));
        return;
    }
    let options = parse_options(&args);
    let exe = std::env::current_exe().expect("this benchmark's path");
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
            let mut samples = Vec::new();
            for _ in 0..options.samples {
                let output = Command::new(&exe)
                    .args([
                        "--child",
                        transport,
                        &tool_count.to_string(),
                        &options.warm_iterations.to_string(),
                    ])
                    .output()
                    .expect("run a sample");
                let stdout = String::from_utf8_lossy(&output.stdout);
                match stdout.lines().last().and_then(parse_sample) {
                    Some(sample) if output.status.success() => samples.push(sample),
                    _ => panic!(
                        "a sample failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    ),
                }
            }
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
            let mut rows: Vec<(&str, Vec<u128>, usize)> = vec![
                ("cold_exec", samples.iter().map(|s| s.cold).collect(), 1),
                (
                    "warm_exec",
                    samples.iter().flat_map(|s| s.warm.clone()).collect(),
                    options.warm_iterations,
                ),
                (
                    "tool_round_trip",
                    samples.iter().map(|s| s.round_trip).collect(),
                    ROUND_TRIPS as usize,
                ),
            ];
            if *transport == "ipc" {
                rows.insert(
                    0,
                    (
                        "spawn+handshake",
                        samples.iter().map(|s| s.spawn).collect(),
                        1,
                    ),
                );
                rows.insert(
                    2,
                    (
                        "cold_exec+spawn",
                        samples.iter().map(|s| s.cold + s.spawn).collect(),
                        1,
                    ),
                );
            }
            for (scenario, mut times, iterations) in rows {
                times.sort_unstable();
                let mean = times.iter().sum::<u128>() / times.len().max(1) as u128;
                let warmups = if scenario == "warm_exec" { 1 } else { 0 };
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
