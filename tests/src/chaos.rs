//! The chaos run (contract §7): sessions run cells that store, load and check values and
//! make nested tool calls, while runtimes are killed (SIGKILL), drained (SIGTERM), and
//! the connections to remote runtimes are cut, stalled and delayed by a [`FaultProxy`].
//!
//! What it asserts, and panics on:
//! - every `exec` and `wait` gets exactly one answer within [`ANSWER_DEADLINE`];
//! - every value a finished cell committed is loadable afterwards with its exact content
//!   (checked inside later cells, in a final cell per session, and in the host's copy),
//!   unless a later cell overwrote it; a value of a cell that died with its runtime may be
//!   there, exact, or not (sessions cycle through 32 keys, so memory stays bounded);
//! - no tool call ran twice (each call carries a token used once);
//! - no runtime process is left behind once the providers are gone;
//! - the host's RSS stays flat (at the end at most twice what it was once warm, plus
//!   32 MiB).
//!
//! The test suite runs it briefly ([`ChaosConfig::ci`]) through the `chaos` example, in a
//! process of its own so that the RSS it checks is the chaos host's alone; `cargo run --release -p
//! code-mode-conformance --example chaos -- --soak 30` runs it for 30 minutes and prints
//! the RSS of the host and of every runtime each minute.

use crate::loss::signal;
use crate::proxy::FaultProxy;
use crate::remote::{ListeningRuntime, RuntimeOptions};
use code_mode_host::{Liveness, ProcessConfig, ProcessProvider, RemoteConfig, RemoteProvider};
use code_mode_protocol::sync::lock;
use code_mode_protocol::{
    BoxFuture, CellResponse, CodeModeProvider, CodeModeSession, CodeModeSessionDelegate,
    ExecRequest, JsonText, NestedToolCall, SessionError, SessionOptions, ToolDefinition, ToolError,
    ToolKind, WaitRequest,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Every `exec` and `wait` must answer within this.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// How a chaos run is shaped.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// How long cells run under faults.
    pub duration: Duration,
    /// Sessions on the local runtime process (`ProcessProvider`).
    pub local_sessions: usize,
    /// Sessions on the pool of remote runtimes (`RemoteProvider`), each behind a proxy.
    pub remote_sessions: usize,
    pub remote_runtimes: usize,
    /// The mean time between two faults.
    pub fault_every: Duration,
    pub seed: u64,
    /// Print the RSS of the host and of each runtime this often (soak runs).
    pub rss_every: Option<Duration>,
}

impl ChaosConfig {
    /// The short run of the test suite.
    pub fn ci(seed: u64) -> Self {
        Self {
            duration: Duration::from_secs(20),
            local_sessions: 3,
            remote_sessions: 3,
            remote_runtimes: 2,
            fault_every: Duration::from_millis(1500),
            seed,
            rss_every: None,
        }
    }

    /// A long run: the same shape for `minutes`, with RSS samples every minute.
    pub fn soak(minutes: u64, seed: u64) -> Self {
        Self {
            duration: Duration::from_secs(minutes * 60),
            local_sessions: 4,
            remote_sessions: 4,
            remote_runtimes: 2,
            fault_every: Duration::from_secs(3),
            seed,
            rss_every: Some(Duration::from_secs(60)),
        }
    }
}

/// What happened during a run.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub cells: u64,
    pub completed: u64,
    /// Cells whose runtime was lost under them (the runtime-lost error, once).
    pub lost: u64,
    /// Execs refused because no runtime could take the session at that moment.
    pub unavailable: u64,
    pub kills: u64,
    pub drains: u64,
    pub cuts: u64,
    pub stalls: u64,
    pub delays: u64,
    pub values_checked: u64,
    pub tool_calls: u64,
    /// RSS samples (soak runs).
    pub rss: Vec<RssSample>,
    pub host_rss_warm_kib: u64,
    pub host_rss_end_kib: u64,
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cells {} (completed {}, lost with their runtime {}, refused while no runtime was up {}), tool calls {}, kills {}, drains {}, cuts {}, stalls {}, delays {}, values checked {}, host RSS {} KiB warm, {} KiB at the end",
            self.cells,
            self.completed,
            self.lost,
            self.unavailable,
            self.tool_calls,
            self.kills,
            self.drains,
            self.cuts,
            self.stalls,
            self.delays,
            self.values_checked,
            self.host_rss_warm_kib,
            self.host_rss_end_kib
        )
    }
}

/// The RSS of the host and of every runtime at one moment of a run, in KiB.
#[derive(Debug, Clone)]
pub struct RssSample {
    /// Seconds into the run.
    pub seconds: u64,
    pub host_kib: u64,
    /// Each runtime (named with its pid) and its RSS.
    pub runtimes: Vec<(String, u64)>,
}

impl std::fmt::Display for RssSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>5} s: host {} KiB", self.seconds, self.host_kib)?;
        for (name, rss) in &self.runtimes {
            write!(f, ", {name} {rss} KiB")?;
        }
        Ok(())
    }
}

/// A small deterministic generator (xorshift64*), so a failing seed can be run again.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// Whether `pid` is a runtime process now (process ids are reused: one that ended may
/// name another program later).
fn is_runtime(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|byte| *byte == 0)
            .next()
            .is_some_and(|program| program.ends_with(b"code-mode-bin"))
    })
}

/// Resident set size of a process, in KiB (`None` once it is gone).
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// The delegate of every chaos session: `echo` answers its input after a short pause.
/// Each call's token is `<session>/<cell index>`; a session runs its cells one after the
/// other and nothing is replayed, so each session's indexes must strictly increase: one
/// that does not is a tool call that ran twice (or out of its cell's turn).
#[derive(Default)]
struct ChaosDelegate {
    last_index: Mutex<HashMap<String, u64>>,
    duplicates: Mutex<Vec<String>>,
    calls: AtomicU64,
}

impl CodeModeSessionDelegate for ChaosDelegate {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let token = call
            .input
            .as_ref()
            .and_then(|input| input.to_value().ok())
            .and_then(|value| value["token"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let pause = Duration::from_millis((token.len() % 7) as u64 * 3);
        let (session, index) = token.rsplit_once('/').unwrap_or((&token, ""));
        let index: u64 = index.parse().unwrap_or(0);
        let mut last = lock(&self.last_index);
        let previous = last.entry(session.to_owned()).or_insert(0);
        if index <= *previous {
            lock(&self.duplicates).push(token.clone());
        }
        *previous = (*previous).max(index);
        drop(last);
        Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => return Err(ToolError::new("cancelled")),
            }
            call.input
                .ok_or_else(|| ToolError::new("echo needs an argument"))
        })
    }
}

fn tools() -> Arc<[ToolDefinition]> {
    Arc::from(vec![ToolDefinition::new(
        "echo",
        "Returns its input.",
        ToolKind::Function,
    )])
}

/// One remote runtime behind its proxy; replaced when killed or drained.
struct Slot {
    proxy: FaultProxy,
    runtime: Mutex<Option<ListeningRuntime>>,
    /// A kill or drain of this slot is being handled (its replacement starting).
    busy: AtomicBool,
}

/// Everything the faults act on.
struct Stage {
    binary: PathBuf,
    local: ProcessProvider,
    slots: Vec<Arc<Slot>>,
    options: RuntimeOptions,
    /// Every runtime process id seen, to check none is left at the end.
    pids: Mutex<BTreeSet<u32>>,
    report: Mutex<ChaosReport>,
}

impl Stage {
    async fn local_pid(&self) -> Option<u32> {
        let pid = self.local.runtime_pid().await;
        if let Some(pid) = pid {
            lock(&self.pids).insert(pid);
        }
        pid
    }

    fn start_runtime(
        binary: PathBuf,
        options: RuntimeOptions,
    ) -> BoxFuture<'static, ListeningRuntime> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || ListeningRuntime::start(&binary, &options))
                .await
                .expect("start a runtime")
        })
    }

    /// Kills or drains slot `index`'s runtime, and puts a fresh one behind its proxy;
    /// `false` when that slot's runtime is being replaced already.
    fn replace(self: &Arc<Self>, index: usize, drain: bool) -> bool {
        let slot = Arc::clone(&self.slots[index]);
        if slot.busy.swap(true, Ordering::SeqCst) {
            return false;
        }
        let stage = Arc::clone(self);
        tokio::spawn(async move {
            let old = lock(&slot.runtime).take();
            if let Some(mut old) = old {
                if drain {
                    old.terminate();
                    // Cells here are short: the drain ends well within its timeout.
                    let exited = tokio::task::spawn_blocking(move || {
                        let status = old.wait_exit(Duration::from_secs(20));
                        (old, status)
                    })
                    .await
                    .expect("wait for the drain");
                    let (mut old, status) = exited;
                    assert!(
                        status.is_some(),
                        "a draining runtime did not exit within 20 s"
                    );
                    old.kill();
                } else {
                    old.kill();
                }
            }
            let fresh = Stage::start_runtime(stage.binary.clone(), stage.options.clone()).await;
            lock(&stage.pids).insert(fresh.pid());
            slot.proxy.retarget(fresh.address);
            *lock(&slot.runtime) = Some(fresh);
            slot.busy.store(false, Ordering::SeqCst);
        });
        true
    }

    /// One fault of `kind` (0 to 7; 0 and 1 both kill the local runtime), its target
    /// chosen at random. `false` when it could not be done now: the local runtime is
    /// being restarted, or the remote one chosen is being replaced already.
    async fn fault(self: &Arc<Self>, kind: u64, rng: &mut Rng) -> bool {
        let slots = self.slots.len() as u64;
        let slot = rng.below(slots.max(1)) as usize;
        let done = match kind {
            0..=2 => match self.local_pid().await {
                Some(pid) => {
                    signal(pid, if kind == 2 { "TERM" } else { "KILL" });
                    true
                }
                None => false,
            },
            _ if slots == 0 => false,
            3 => self.replace(slot, false),
            4 => self.replace(slot, true),
            5 => {
                self.slots[slot].proxy.cut();
                true
            }
            6 => {
                // Some stalls outlast the liveness timeout (the connection is given up),
                // some do not (the bytes arrive late).
                let stall = Duration::from_millis(200 + rng.below(3_000));
                self.slots[slot].proxy.stall(stall);
                true
            }
            _ => {
                let target = Arc::clone(&self.slots[slot]);
                let delay = Duration::from_millis(5 + rng.below(60));
                target.proxy.delay(delay);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    target.proxy.delay(Duration::ZERO);
                });
                true
            }
        };
        if done {
            let mut report = lock(&self.report);
            match kind {
                0 | 1 | 3 => report.kills += 1,
                2 | 4 => report.drains += 1,
                5 => report.cuts += 1,
                6 => report.stalls += 1,
                _ => report.delays += 1,
            }
        }
        done
    }
}

/// How many keys a session cycles through: its stored values stay bounded, so the host's
/// RSS can stay flat over a long run.
const KEYS: u64 = 32;

/// What one session knows of one key.
#[derive(Default)]
struct Known {
    /// The value the latest completed cell stored, exact JSON text.
    committed: Option<String>,
    /// Values of later cells that died with their runtime (or were refused): each may or
    /// may not have been committed.
    maybe: Vec<String>,
}

impl Known {
    /// Whether `found` (a `load`'s JSON text, `None` when absent) is a value this key may
    /// hold.
    fn allows(&self, found: Option<&str>) -> bool {
        match found {
            None => self.committed.is_none(),
            Some(found) => {
                self.committed.as_deref() == Some(found)
                    || self.maybe.iter().any(|maybe| maybe == found)
            }
        }
    }
}

/// What one session knows of its values.
#[derive(Default)]
struct Ledger {
    keys: BTreeMap<String, Known>,
}

/// How a cell ended, as the worker saw it.
enum Ended {
    Completed(String),
    Lost,
    Unavailable,
}

/// Runs `call` under the answer deadline; a missing answer fails the run.
async fn answered<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER_DEADLINE, call)
        .await
        .unwrap_or_else(|_| panic!("{what} got no answer within {ANSWER_DEADLINE:?}"))
}

/// Follows a cell to its end: waits while it yields.
async fn follow<S: CodeModeSession>(
    session: &S,
    mut response: CellResponse,
) -> Result<CellResponse, SessionError> {
    while let CellResponse::Yielded { cell_id, .. } = &response {
        let request = WaitRequest::new(cell_id.clone()).with_yield_time_ms(30_000);
        response = answered("wait", session.wait(request)).await?;
    }
    Ok(response)
}

async fn run_cell<S: CodeModeSession>(session: &S, source: String) -> Ended {
    let started = answered(
        "exec",
        session.execute(ExecRequest::new(source).with_tools(tools())),
    )
    .await;
    let outcome = match started {
        Ok(started) => follow(session, started.initial_response).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(CellResponse::Result {
            content_items,
            error_text: None,
            ..
        }) => Ended::Completed(
            content_items
                .iter()
                .filter_map(|item| item.as_text())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Ok(other) => panic!("a chaos cell ended unexpectedly: {other:?}"),
        Err(SessionError::RuntimeLost(_)) => Ended::Lost,
        Err(SessionError::Runtime(message)) => {
            tracing_free_note(&message);
            Ended::Unavailable
        }
        Err(other) => panic!("a chaos cell failed unexpectedly: {other}"),
    }
}

/// Where a refused exec's reason goes: stderr, only in soak runs' logs.
fn tracing_free_note(message: &str) {
    if std::env::var_os("CODE_MODE_CHAOS_VERBOSE").is_some() {
        eprintln!("chaos: exec refused: {message}");
    }
}

/// A JavaScript string literal of `text` (ASCII and JSON text only).
fn js_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// The cells of one session until `until`, then the final check of every value.
async fn worker<S: CodeModeSession>(
    name: String,
    session: S,
    until: Instant,
    stage: Arc<Stage>,
    mut rng: Rng,
) {
    let mut ledger = Ledger::default();
    let mut index = 0u64;
    while Instant::now() < until {
        index += 1;
        let key = format!("k{}", index % KEYS);
        let token = format!("{name}/{index}");
        let pad = "x".repeat(rng.below(200) as usize);
        let expected = format!(r#"{{"i":{index},"token":"{token}","pad":"{pad}"}}"#);
        // Check three keys whose value is known exactly: the previous one and two others.
        let exact: Vec<(&String, &String)> = ledger
            .keys
            .iter()
            .filter(|(_, known)| known.maybe.is_empty())
            .filter_map(|(key, known)| Some((key, known.committed.as_ref()?)))
            .collect();
        let mut checks: BTreeMap<&String, &String> = BTreeMap::new();
        let previous = format!("k{}", (index - 1) % KEYS);
        if let Some((key, json)) = exact.iter().find(|(key, _)| **key == previous) {
            checks.insert(key, json);
        }
        for _ in 0..2 {
            if !exact.is_empty() {
                let (key, json) = exact[rng.below(exact.len() as u64) as usize];
                checks.insert(key, json);
            }
        }
        let mut source = String::from("const bad = [];\n");
        for (key, json) in &checks {
            let _ = writeln!(
                source,
                "if (JSON.stringify(load({})) !== {}) bad.push({});",
                js_string(key),
                js_string(json),
                js_string(key)
            );
        }
        let _ = write!(
            source,
            "const answer = await tools.echo({{ token: {} }});\n\
             store({}, {{ i: {index}, token: answer.token, pad: {} }});\n\
             text(bad.length ? \"BAD \" + bad.join(\",\") : \"ok\");",
            js_string(&token),
            js_string(&key),
            js_string(&pad)
        );
        let checked = checks.len() as u64;
        lock(&stage.report).cells += 1;
        let known = ledger.keys.entry(key).or_default();
        match run_cell(&session, source).await {
            Ended::Completed(text) => {
                assert_eq!(text, "ok", "{name}: a committed value was not as stored");
                lock(&stage.report).values_checked += checked;
                lock(&stage.report).completed += 1;
                *known = Known {
                    committed: Some(expected),
                    maybe: Vec::new(),
                };
            }
            Ended::Lost => {
                lock(&stage.report).lost += 1;
                known.maybe.push(expected);
            }
            Ended::Unavailable => {
                lock(&stage.report).unavailable += 1;
                known.maybe.push(expected);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
    }
    final_check(&name, &session, &ledger, &stage).await;
    answered("shutdown", session.shutdown()).await;
}

/// Every key the session used, loaded in one cell (retried while runtimes come back), and
/// compared with what the session knows and with the host's copy.
async fn final_check<S: CodeModeSession>(name: &str, session: &S, ledger: &Ledger, stage: &Stage) {
    let keys: Vec<&String> = ledger.keys.keys().collect();
    let source = format!(
        "const keys = {};\nconst seen = {{}};\nfor (const key of keys) seen[key] = JSON.stringify(load(key)) ?? null;\ntext(JSON.stringify(seen));",
        serde_json::to_string(&keys).expect("keys as JSON")
    );
    let mut seen = None;
    for _ in 0..20 {
        match run_cell(session, source.clone()).await {
            Ended::Completed(text) => {
                seen = Some(text);
                break;
            }
            Ended::Lost | Ended::Unavailable => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let seen = seen.unwrap_or_else(|| panic!("{name}: the final check never ran"));
    let seen: BTreeMap<String, Option<String>> =
        serde_json::from_str(&seen).expect("the final check's JSON");
    let host = session.stored_values();
    for (key, known) in &ledger.keys {
        let found = seen[key].as_deref();
        assert!(
            known.allows(found),
            "{name}: {key} holds {found:?}, not its committed value {:?} (or one of {:?})",
            known.committed,
            known.maybe
        );
        let kept = host.get(key).map(|text| text.as_ref());
        assert!(
            known.allows(kept),
            "{name}: the host's copy of {key} is {kept:?}, not {:?}",
            known.committed
        );
    }
    lock(&stage.report).values_checked += ledger.keys.len() as u64;
}

fn host_rss() -> u64 {
    rss_kib("self").unwrap_or(0)
}

/// Runs the chaos test with the runtime `binary`; panics on any violation, returns the
/// counts.
pub async fn run(binary: &Path, config: ChaosConfig) -> ChaosReport {
    let liveness = Liveness {
        ping_interval: Duration::from_millis(300),
        timeout: Duration::from_millis(1500),
    };
    let options = RuntimeOptions {
        ping_interval_ms: 300,
        liveness_timeout_ms: 1500,
        drain_timeout_secs: 10,
        ..RuntimeOptions::insecure()
    };
    let local = ProcessProvider::new(ProcessConfig {
        binary: Some(binary.to_owned()),
        max_crashes: usize::MAX,
        ..ProcessConfig::default()
    })
    .expect("a process provider");
    let mut slots = Vec::new();
    for _ in 0..config.remote_runtimes {
        let runtime = Stage::start_runtime(binary.to_owned(), options.clone()).await;
        let proxy = FaultProxy::start(runtime.address).await;
        slots.push(Arc::new(Slot {
            proxy,
            runtime: Mutex::new(Some(runtime)),
            busy: AtomicBool::new(false),
        }));
    }
    let endpoints = slots
        .iter()
        .map(|slot| slot.proxy.address.to_string())
        .collect();
    let remote = RemoteProvider::new(RemoteConfig {
        liveness,
        connect_timeout: Duration::from_secs(5),
        ..RemoteConfig::insecure_loopback(endpoints)
    })
    .expect("a remote provider");
    let stage = Arc::new(Stage {
        binary: binary.to_owned(),
        local,
        slots,
        options,
        pids: Mutex::new(BTreeSet::new()),
        report: Mutex::new(ChaosReport::default()),
    });
    for slot in &stage.slots {
        if let Some(runtime) = &*lock(&slot.runtime) {
            lock(&stage.pids).insert(runtime.pid());
        }
    }
    let delegate = Arc::new(ChaosDelegate::default());
    let started = Instant::now();
    let until = started + config.duration;
    let mut rng = Rng::new(config.seed);
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..config.local_sessions {
        let session = stage
            .local
            .open_session(delegate.clone(), SessionOptions::default());
        let worker_rng = Rng::new(rng.next());
        workers.spawn(worker(
            format!("local{index}"),
            session,
            until,
            Arc::clone(&stage),
            worker_rng,
        ));
    }
    for index in 0..config.remote_sessions {
        let session = remote.open_session(delegate.clone(), SessionOptions::default());
        let worker_rng = Rng::new(rng.next());
        workers.spawn(worker(
            format!("remote{index}"),
            session,
            until,
            Arc::clone(&stage),
            worker_rng,
        ));
    }

    // Faults until the end, and RSS samples.
    let mut next_sample = config.rss_every.map(|every| started + every);
    let warm_at = started + config.duration / 5;
    let mut faults = 0usize;
    let mut first_kinds: Vec<u64> = (0..8).collect();
    for index in (1..first_kinds.len()).rev() {
        first_kinds.swap(index, rng.below(index as u64 + 1) as usize);
    }
    while Instant::now() < until {
        let mean = config.fault_every.as_millis() as u64;
        let pause = Duration::from_millis(mean / 2 + rng.below(mean.max(1)));
        tokio::time::sleep(pause.min(until.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= until {
            break;
        }
        // The first eight faults are one of each kind, in an order the seed shuffles, so
        // that even a short run meets every kind; later ones are chosen at random.
        let kind = first_kinds
            .get(faults)
            .copied()
            .unwrap_or_else(|| rng.below(8));
        stage.fault(kind, &mut rng).await;
        faults += 1;
        if lock(&stage.report).host_rss_warm_kib == 0 && Instant::now() >= warm_at {
            lock(&stage.report).host_rss_warm_kib = host_rss();
        }
        if let Some(at) = next_sample
            && Instant::now() >= at
        {
            let sample = rss_sample(&stage, started).await;
            eprintln!("chaos: {sample}");
            lock(&stage.report).rss.push(sample);
            next_sample = config.rss_every.map(|every| at + every);
        }
    }
    // No more faults: let the replacements come up, stop any delay, then let the
    // workers finish and check.
    for slot in &stage.slots {
        slot.proxy.delay(Duration::ZERO);
    }
    while let Some(finished) = workers.join_next().await {
        if let Err(error) = finished {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    let duplicates = lock(&delegate.duplicates).clone();
    assert!(
        duplicates.is_empty(),
        "tool calls ran twice: {duplicates:?}"
    );
    lock(&stage.report).tool_calls = delegate.calls.load(Ordering::Relaxed);
    lock(&stage.report).host_rss_end_kib = host_rss();

    // Nothing left behind: the providers and runtimes go, and so do their processes.
    let _ = stage.local_pid().await;
    drop(remote);
    let stage = wait_unique(stage).await;
    let Stage {
        local,
        slots,
        pids,
        report,
        ..
    } = stage;
    drop(local);
    for slot in slots {
        let slot = Arc::try_unwrap(slot).unwrap_or_else(|_| panic!("a slot is still shared"));
        if let Some(mut runtime) = lock(&slot.runtime).take() {
            runtime.kill();
        }
    }
    let pids = pids.into_inner().unwrap_or_else(|p| p.into_inner());
    for pid in &pids {
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_runtime(*pid) {
            assert!(
                Instant::now() < deadline,
                "runtime process {pid} was left behind"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let report = report.into_inner().unwrap_or_else(|p| p.into_inner());
    // Faults come every second or so: most cells still complete. A run whose runtimes
    // could not be reached (a stale binary of another protocol version, say) proves
    // nothing and fails here.
    assert!(
        report.completed * 2 >= report.cells,
        "only {} of {} cells completed",
        report.completed,
        report.cells
    );
    let warm = report.host_rss_warm_kib.max(1);
    assert!(
        report.host_rss_end_kib <= warm * 2 + 32 * 1024,
        "the host's RSS grew from {warm} KiB to {} KiB",
        report.host_rss_end_kib
    );
    report
}

/// The stage once no replacement task holds it any more.
async fn wait_unique(mut stage: Arc<Stage>) -> Stage {
    for _ in 0..3000 {
        match Arc::try_unwrap(stage) {
            Ok(stage) => {
                // Replacement tasks hold slots, not the stage; wait for them too.
                while stage
                    .slots
                    .iter()
                    .any(|slot| slot.busy.load(Ordering::SeqCst) || Arc::strong_count(slot) > 1)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return stage;
            }
            Err(shared) => stage = shared,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("a replacement of a runtime never finished");
}

async fn rss_sample(stage: &Stage, started: Instant) -> RssSample {
    let _ = stage.local_pid().await;
    let remote: BTreeSet<u32> = stage
        .slots
        .iter()
        .filter_map(|slot| lock(&slot.runtime).as_ref().map(ListeningRuntime::pid))
        .collect();
    // Every runtime process alive now, the local one included.
    let pids: Vec<u32> = lock(&stage.pids).iter().copied().collect();
    let runtimes = pids
        .into_iter()
        .filter(|pid| is_runtime(*pid))
        .filter_map(|pid| {
            let rss = rss_kib(&pid.to_string())?;
            let kind = if remote.contains(&pid) {
                "remote"
            } else {
                "local"
            };
            Some((format!("{kind} pid {pid}"), rss))
        })
        .collect();
    RssSample {
        seconds: started.elapsed().as_secs(),
        host_kib: host_rss(),
        runtimes,
    }
}
