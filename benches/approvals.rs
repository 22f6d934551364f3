//! Calls that wait on a person (issue 86): what many waiting calls cost, and how long an
//! approval takes to reach the delegate.
//!
//! `cargo build --release -p code-mode-bin` first; then
//! `cargo bench --bench approvals -- [--cells N] [--samples M] [--state-url URL]`.
//!
//! 1. **Waiting.** N cells (100 per session), each waiting on an approval, on one agent
//!    (`StoredProvider` with a state directory, a runtime process): the time until every
//!    call is listed, the memory and threads of the runtime and of the agent once the
//!    cells hibernated, the time to list them all (p50, p95, mean of 10), and after the
//!    agent is gone, whether a new connection to the store (as a new process would open)
//!    lists them all, and in how long.
//! 2. **Approval to delegate.** M cells one after another, each approved the moment it
//!    waits: the time from the approval (this process's `decide`, and another process's,
//!    which the agent finds by looking every `POLL_EVERY`) to the call reaching its
//!    delegate, on SQLite and (with `--state-url`) Postgres. p50, p95 and mean.

use code_mode_host::state::{ApprovalBook, StoreLocation, StoreOptions};
use code_mode_host::{
    Approvals, CodeModeSession, KeptSessions, ProcessConfig, ProcessProvider, Runtimes,
    StoredProvider,
};
use code_mode_internal::sync::lock;
use code_mode_protocol::approval::Decision;
use code_mode_protocol::{
    ApprovalNeed, BoxFuture, CellResponse, CodeModeSessionDelegate, ExecRequest, JsonText,
    NestedToolCall, SessionOptions, ToolDefinition, ToolError, ToolKind,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Options {
    cells: usize,
    samples: usize,
    state_url: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        cells: 10_000,
        samples: 200,
        state_url: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || {
            args.next()
                .and_then(|value| value.parse().ok())
                .expect("a number")
        };
        match arg.as_str() {
            "--cells" => options.cells = number(),
            "--samples" => options.samples = number(),
            "--state-url" => options.state_url = args.next(),
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

/// `pay` needs an approval; each run is stamped, for the latency figure.
#[derive(Default)]
struct Pay {
    reached: Mutex<Option<Instant>>,
}

impl CodeModeSessionDelegate for Pay {
    fn approval(&self, _: &NestedToolCall) -> Option<ApprovalNeed> {
        Some(ApprovalNeed::because("it moves money"))
    }

    fn invoke_tool(
        &self,
        _: NestedToolCall,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        *lock(&self.reached) = Some(Instant::now());
        Box::pin(std::future::ready(Ok(JsonText::new("true"))))
    }
}

fn tools() -> Arc<[ToolDefinition]> {
    vec![ToolDefinition::new("pay", "Pays.", ToolKind::Function)].into()
}

/// An agent on the store at `location`: its sessions' provider, its approvals, and the
/// runtime process's provider (for its pid).
fn agent(
    location: &StoreLocation,
    options: &StoreOptions,
) -> (StoredProvider, Arc<Approvals>, ProcessProvider) {
    let kept =
        Arc::new(KeptSessions::open(location, "bench", options.clone()).expect("the store opens"));
    let approvals = Approvals::open(location, options).expect("the approvals open");
    let provider = ProcessProvider::new(ProcessConfig {
        generations_before: kept.generations_before(),
        ..ProcessConfig::default()
    })
    .expect("the runtime is built (cargo build --release -p code-mode-bin)");
    let sessions = StoredProvider::new(Runtimes::Local(provider.clone()), kept)
        .with_approvals(Arc::clone(&approvals), "bench");
    (sessions, approvals, provider)
}

/// A process's resident memory (MiB) and threads, from /proc.
fn memory_and_threads(pid: u32) -> (f64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:") as f64 / 1024.0, field("Threads:"))
}

fn figures(samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    format!(
        "n={} p50 {:.2} p95 {:.2} mean {:.2}",
        samples.len(),
        at(0.5),
        at(0.95),
        mean
    )
}

#[expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
async fn waiting(cells: usize, location: &StoreLocation, options: &StoreOptions) {
    let (sessions, approvals, provider) = agent(location, options);
    let pid = std::process::id();
    let (agent_before, _) = memory_and_threads(pid);
    let started = Instant::now();
    let mut open = Vec::new();
    for s in 0..cells.div_ceil(100) {
        let session = sessions
            .open(
                &format!("w{s}"),
                Arc::new(Pay::default()),
                SessionOptions::default(),
                Default::default(),
            )
            .await
            .expect("opens");
        for c in 0..100.min(cells - s * 100) {
            let started = session
                .execute(
                    ExecRequest::new(format!("await tools.pay({{ n: {} }});", s * 100 + c))
                        .with_tools(tools())
                        .with_yield_time_ms(3_600_000),
                )
                .await
                .expect("starts");
            assert!(matches!(
                started.initial_response,
                CellResponse::Yielded { .. }
            ));
        }
        open.push(session);
    }
    let all_waiting = started.elapsed();
    // Parked: every cell hibernates once it waits only on its call.
    let hibernate = code_mode_protocol::session::DEFAULT_HIBERNATE_AFTER_MS;
    tokio::time::sleep(Duration::from_millis(hibernate + 2_000)).await;
    let runtime = provider.runtime_pid().await.expect("a runtime runs");
    let (runtime_mib, runtime_threads) = memory_and_threads(runtime);
    let (agent_mib, agent_threads) = memory_and_threads(pid);
    let mut listing = Vec::new();
    for _ in 0..10 {
        let at = Instant::now();
        let listed = approvals
            .pending(Some("bench"), None)
            .await
            .expect("listed");
        listing.push(at.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(listed.len(), cells);
    }
    println!(
        "waiting: {cells} cells each waiting on an approval ({} sessions)",
        open.len()
    );
    println!(
        "  all listed after {:.1} s ({:.2} ms per cell, each kept durably before its exec answered)",
        all_waiting.as_secs_f64(),
        all_waiting.as_secs_f64() * 1000.0 / cells as f64
    );
    println!("  runtime process: {runtime_mib:.0} MiB resident, {runtime_threads} threads");
    println!(
        "  agent process: {agent_mib:.0} MiB resident ({:.0} MiB more than before the cells), {agent_threads} threads",
        agent_mib - agent_before
    );
    println!("  listing all (ms): {}", figures(&mut listing));
    drop(open);
    drop(sessions);
    drop(approvals);
    // A new process: the same store, opened afresh.
    let at = Instant::now();
    let book = std::thread::scope(|scope| {
        scope
            .spawn(|| ApprovalBook::open(location, options).expect("opens"))
            .join()
            .expect("opened")
    });
    let listed = tokio::task::spawn_blocking(move || book.pending(Some("bench"), None))
        .await
        .expect("ran")
        .expect("listed");
    println!(
        "  after the agent is gone, a new connection to the store lists {} of {cells} in {:.0} ms (open and list)",
        listed.len(),
        at.elapsed().as_secs_f64() * 1000.0
    );
}

/// M cells one after another, each approved as it waits: approval to delegate, in ms.
async fn latency(
    samples: usize,
    location: &StoreLocation,
    options: &StoreOptions,
    elsewhere: bool,
) -> Vec<f64> {
    let (sessions, approvals, _provider) = agent(location, options);
    let other = std::thread::scope(|scope| {
        scope
            .spawn(|| Arc::new(ApprovalBook::open(location, options).expect("opens")))
            .join()
            .expect("opened")
    });
    let pay = Arc::new(Pay::default());
    let id = format!("l{}", u8::from(elsewhere));
    let session = sessions
        .open(
            &id,
            pay.clone(),
            SessionOptions::default(),
            Default::default(),
        )
        .await
        .expect("opens");
    let mut times = Vec::new();
    for n in 0..samples {
        *lock(&pay.reached) = None;
        let started = session
            .execute(
                ExecRequest::new(format!("await tools.pay({{ n: {n} }});"))
                    .with_tools(tools())
                    .with_yield_time_ms(3_600_000),
            )
            .await
            .expect("starts");
        let pending = session.pending_approvals().await.expect("listed");
        let waiting = pending.into_iter().next().expect("its call waits");
        let at = Instant::now();
        if elsewhere {
            let (other, key) = (Arc::clone(&other), waiting.id.clone());
            tokio::task::spawn_blocking(move || {
                other
                    .decide(&key, &Decision::Approve { input: None }, None)
                    .expect("decided")
            })
            .await
            .expect("ran");
        } else {
            approvals
                .decide(&waiting.id, Decision::Approve { input: None }, None)
                .await
                .expect("decided");
        }
        let reached = loop {
            if let Some(reached) = *lock(&pay.reached) {
                break reached;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        times.push(reached.duration_since(at).as_secs_f64() * 1000.0);
        let _ = session
            .wait(code_mode_protocol::WaitRequest::new(started.cell_id).with_yield_time_ms(10_000))
            .await;
    }
    session.close().await;
    times
}

#[tokio::main]
#[expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
async fn main() {
    let options = options();
    let scratch = code_mode_conformance::Scratch::new();
    let dir = StoreLocation::Dir(scratch.0.join("waiting"));
    let store = StoreOptions::default();
    waiting(options.cells, &dir, &store).await;
    let mut stores = vec![(
        "SQLite",
        StoreLocation::Dir(scratch.0.join("latency")),
        store.clone(),
    )];
    if let Some(url) = &options.state_url {
        let shared = StoreOptions {
            replica: Some("bench".to_owned()),
            ..store.clone()
        };
        stores.push(("Postgres", StoreLocation::Url(url.clone()), shared));
    }
    println!("approval to delegate ({} cells each, ms):", options.samples);
    for (name, location, store) in &stores {
        for elsewhere in [false, true] {
            let mut times = latency(options.samples, location, store, elsewhere).await;
            let by = if elsewhere {
                "decided through another connection to the store (as another process)"
            } else {
                "decided by the agent's own Approvals"
            };
            println!("  {name}, {by}: {}", figures(&mut times));
        }
    }
}
