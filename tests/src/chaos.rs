//! The chaos run (contract §7): sessions run cells that store, load and check values and
//! make nested tool calls, while runtimes are killed (SIGKILL, some while a cell waits on
//! a tool call), drained (SIGTERM), and the connections to remote runtimes are cut,
//! stalled and delayed by a [`FaultProxy`].
//!
//! Each session keeps a model of its committed map. What the run asserts, and fails on:
//! - **nothing committed is lost**: every cell loads every key the session used and the
//!   result must be what the model allows (the exact committed value; after a cell lost
//!   with its runtime, its value or the one before, and the next cell pins which); after
//!   every completed cell the host's copy must equal the model, key for key; a final cell
//!   per session checks every key again;
//! - **every `exec` and `wait` gets exactly one answer**, its own, within the answer
//!   deadline: each cell's result names its cell, and each tool answer its call;
//! - **no tool call is sent twice**: each call carries a token used once;
//! - **nothing is lost but what cannot be rebuilt**: a local session loses no cell (a
//!   running cell is rebuilt from its journal, an exec a dead local runtime never admitted
//!   runs again); a remote session may fail only an exec its runtime never admitted, never
//!   a `wait` and never an admitted cell, and then only within the window of a fault
//!   injected on the runtime it was on (cuts and stalls of the proxy included); a refusal
//!   is excused only while no remote runtime was up; any other error fails the run; at
//!   least 95 % of cells complete with their fault-free output;
//! - every fault kind happened, and cells were rebuilt mid-flight: a kill waits for a
//!   cell that is inside a tool call, the call is answered after the kill, and that cell
//!   must complete with its own result;
//! - no runtime process is left behind once the providers are gone;
//! - the host's RSS stays flat (at the end at most twice what it was once warm, plus
//!   32 MiB).
//!
//! A worker's panic ends the run at once, and the whole run has a time bound.
//!
//! The test suite runs it briefly ([`ChaosConfig::ci`]) through the `chaos` example, in a
//! process of its own so that the RSS it checks is the chaos host's alone, on a fixed seed
//! and on one that varies per run; it also runs it with each of the host's deliberate
//! faults armed (`--break`, `code_mode_host::arm_fault`) and checks that each is caught.
//! `cargo run --release -p code-mode-conformance --example chaos -- --soak 30` runs it for
//! 30 minutes and prints the RSS of the host and of every runtime each minute.

use crate::loss::signal;
use crate::proxy::FaultProxy;
use crate::remote::{ListeningRuntime, RuntimeOptions};
use code_mode_host::{
    Liveness, ProcessConfig, ProcessProvider, RemoteConfig, RemoteProvider, RuntimeSession,
    Runtimes,
};
use code_mode_internal::sync::lock;
use code_mode_protocol::{
    BoxFuture, CellResponse, CodeModeProvider, CodeModeSession, CodeModeSessionDelegate,
    ExecRequest, JsonText, NestedToolCall, SessionError, SessionOptions, StoredValues,
    ToolDefinition, ToolError, ToolKind, WaitRequest,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    /// Every cell (its exec and every wait) must end within this.
    pub answer_deadline: Duration,
    /// Print the RSS of the host and of each runtime this often (soak runs).
    pub rss_every: Option<Duration>,
    /// Whether the first fault is a kill mid-cell (a proof run: a cell is rebuilt from its
    /// journal early, for the faults that break a rebuild).
    pub rebuild_first: bool,
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
            answer_deadline: Duration::from_secs(20),
            rss_every: None,
            rebuild_first: false,
        }
    }

    /// A shorter, lighter run for proving that an armed fault is caught: it is expected to
    /// fail well before its end.
    pub fn proof(seed: u64) -> Self {
        Self {
            duration: Duration::from_secs(8),
            local_sessions: 2,
            remote_sessions: 2,
            remote_runtimes: 1,
            answer_deadline: Duration::from_secs(10),
            rebuild_first: true,
            ..Self::ci(seed)
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
            answer_deadline: Duration::from_secs(60),
            rss_every: Some(Duration::from_secs(60)),
            rebuild_first: false,
        }
    }
}

/// The faults a run injects. The first eight faults of a run are one of each, in an order
/// the seed shuffles; later ones are drawn at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL to the local runtime while one of its cells waits on a tool call.
    LocalKillMidCell,
    /// SIGKILL to the local runtime, whatever it is doing.
    LocalKill,
    /// SIGTERM to the local runtime (it drains).
    LocalDrain,
    /// SIGKILL to a remote runtime, replaced behind its proxy.
    RemoteKill,
    /// SIGTERM to a remote runtime, replaced once it exited.
    RemoteDrain,
    /// Every connection through a proxy closed at once.
    Cut,
    /// A proxy forwards nothing for 0.2 to 3.2 s (past the liveness timeout or not).
    Stall,
    /// A proxy holds each chunk 5 to 65 ms, for 2 s.
    Delay,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::LocalKillMidCell,
        FaultKind::LocalKill,
        FaultKind::LocalDrain,
        FaultKind::RemoteKill,
        FaultKind::RemoteDrain,
        FaultKind::Cut,
        FaultKind::Stall,
        FaultKind::Delay,
    ];

    /// The name the report prints.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LocalKillMidCell => "local kills mid-cell",
            FaultKind::LocalKill => "local kills",
            FaultKind::LocalDrain => "local drains",
            FaultKind::RemoteKill => "remote kills",
            FaultKind::RemoteDrain => "remote drains",
            FaultKind::Cut => "cuts",
            FaultKind::Stall => "stalls",
            FaultKind::Delay => "delays",
        }
    }

    /// Whether the fault takes the local runtime away.
    fn is_local(self) -> bool {
        matches!(
            self,
            FaultKind::LocalKillMidCell | FaultKind::LocalKill | FaultKind::LocalDrain
        )
    }
}

/// What happened during a run.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub cells: u64,
    pub completed: u64,
    /// Cells whose runtime was lost under them (the runtime-lost error, once), each within
    /// the window of a fault on that runtime.
    pub lost: u64,
    /// Cells the run killed while they waited on a tool call (each rebuilt and completed).
    pub rebuilt_mid_flight: u64,
    /// Execs refused while no remote runtime was up.
    pub refused: u64,
    /// Cells given up after their runtime was lost at each of the rebuilds one call makes
    /// (counted in `lost` too), each with as many faults within its time.
    pub gave_up: u64,
    /// How many faults of each kind were injected.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Keys checked against the model inside cells (every key, every cell).
    pub values_checked: u64,
    /// Times the host's copy of a session's map was compared with the model, whole.
    pub host_copies_checked: u64,
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
            "cells {} (completed {}, lost with their runtime {} of which {} gave up after {} losses in one call, rebuilt mid-flight {}, refused while no runtime was up {}), tool calls {}",
            self.cells,
            self.completed,
            self.lost,
            self.gave_up,
            code_mode_host::REBUILD_ATTEMPTS,
            self.rebuilt_mid_flight,
            self.refused,
            self.tool_calls,
        )?;
        for kind in FaultKind::ALL {
            let count = self.faults.get(&kind).copied().unwrap_or(0);
            write!(f, ", {} {count}", kind.name())?;
        }
        write!(
            f,
            ", values checked {}, host copies checked {}, host RSS {} KiB warm, {} KiB at the end",
            self.values_checked,
            self.host_copies_checked,
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

/// What the run found wrong outside a worker (in the delegate), reported by the main loop.
#[derive(Default)]
struct Violations(Mutex<Vec<String>>);

impl Violations {
    fn add(&self, violation: String) {
        lock(&self.0).push(violation);
    }

    /// Fails the run if anything was found.
    fn check(&self) {
        let found = lock(&self.0);
        assert!(found.is_empty(), "chaos: {}", found.join("; "));
    }
}

/// The delegate of every chaos session: `echo` answers its input after a short pause.
/// Each call's token is `<session>/<cell index>`, and a session's cells run one after the
/// other, each making one call: so each session's indexes must strictly increase, and
/// one that does not is a tool call sent twice (kept per session, so that memory stays
/// flat over a soak). A mid-cell kill catches the next call of a local session and holds
/// it until the runtime is gone.
#[derive(Default)]
struct ChaosDelegate {
    last_index: Mutex<HashMap<String, u64>>,
    calls: AtomicU64,
    violations: Arc<Violations>,
    /// Armed by a mid-cell kill: the next local call is held, and its token sent here.
    catch: Mutex<Option<oneshot::Sender<String>>>,
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
        let (session, index) = token.rsplit_once('/').unwrap_or((&token, ""));
        let index: u64 = index.parse().unwrap_or(0);
        let mut last = lock(&self.last_index);
        let previous = last.get(session).copied();
        if previous.is_some_and(|previous| index <= previous) {
            self.violations
                .add(format!("the tool call of cell {token} was sent twice"));
        }
        last.insert(session.to_owned(), previous.map_or(index, |p| p.max(index)));
        drop(last);
        let caught = if token.starts_with("local") {
            lock(&self.catch).take()
        } else {
            None
        };
        let held = caught.is_some_and(|catch| catch.send(token.clone()).is_ok());
        let pause = if held {
            // Past the kill, which does not cancel it: its answer reaches the cell rebuilt
            // on the next runtime.
            Duration::from_millis(500)
        } else {
            Duration::from_millis((token.len() % 7) as u64 * 3)
        };
        Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => {
                    if held {
                        return Err(ToolError::new("a call held for a kill was cancelled by it"));
                    }
                    return Err(ToolError::new("cancelled"));
                }
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

/// What a fault acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Local,
    Slot(usize),
}

/// One injected fault and the time it may cause failures in.
struct FaultRecord {
    target: Target,
    kind: FaultKind,
    from: Instant,
    /// When its effect ended (a replacement up, a stall over).
    until: Instant,
}

/// How long after a fault's effect ended a failure it caused may still be reported (the
/// liveness timeout, a process's exit noticed, a loaded machine).
const FAULT_SLACK: Duration = Duration::from_secs(5);

/// What a call says when it gave its cell up after the bound of rebuilds of one call.
const GAVE_UP: &str = "times during one call, so it is not rebuilt again";

/// A refusal of a remote session: no runtime could take it within the connect timeout.
const REFUSAL: &str = "no code-mode runtime could take the session";

/// Everything the faults act on.
struct Stage {
    binary: PathBuf,
    local: ProcessProvider,
    slots: Vec<Arc<Slot>>,
    options: RuntimeOptions,
    delegate: Arc<ChaosDelegate>,
    deadline: Duration,
    /// Every runtime process id seen, to check none is left at the end.
    pids: Mutex<BTreeSet<u32>>,
    faults: Mutex<Vec<FaultRecord>>,
    /// The tokens of cells killed while they waited on a tool call.
    held: Mutex<Vec<String>>,
    /// The tokens of cells that ended with their runtime lost.
    lost: Mutex<HashSet<String>>,
    /// Cells that completed, by name.
    completed: Mutex<HashSet<String>>,
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

    /// Records a fault about to be injected, its effect lasting `effect`; returns its index.
    fn record(&self, target: Target, kind: FaultKind, effect: Duration) -> usize {
        let now = Instant::now();
        let mut faults = lock(&self.faults);
        faults.push(FaultRecord {
            target,
            kind,
            from: now,
            until: now + effect,
        });
        faults.len() - 1
    }

    /// Whether a fault on `target` (any remote runtime when `None`) may have caused a
    /// failure seen between `started` and `ended`.
    fn fault_within(&self, target: Option<Target>, started: Instant, ended: Instant) -> bool {
        lock(&self.faults).iter().any(|fault| {
            let on_target = match target {
                Some(target) => fault.target == target,
                None => !fault.kind.is_local(),
            };
            on_target
                && fault.kind != FaultKind::Delay
                && fault.from <= ended
                && fault.until + FAULT_SLACK >= started
        })
    }

    /// How many faults on remote runtimes (delays aside) acted while a cell ran, between
    /// `started` and `ended`, with no slack: those alone can have made a remote cell's
    /// call lose one rebuilt runtime after another. Local faults never count: a local
    /// cell is never excused.
    fn remote_faults_within(&self, started: Instant, ended: Instant) -> usize {
        lock(&self.faults)
            .iter()
            .filter(|fault| {
                !fault.kind.is_local()
                    && fault.kind != FaultKind::Delay
                    && fault.from <= ended
                    && fault.until >= started
            })
            .count()
    }

    /// Whether every remote runtime was down (being replaced, or stalled) at some time
    /// between `started` and `ended`: a refusal is then what the provider owes.
    fn remote_all_down(&self, started: Instant, ended: Instant) -> bool {
        (0..self.slots.len()).all(|slot| {
            lock(&self.faults).iter().any(|fault| {
                fault.target == Target::Slot(slot)
                    && matches!(
                        fault.kind,
                        FaultKind::RemoteKill | FaultKind::RemoteDrain | FaultKind::Stall
                    )
                    && fault.from <= ended
                    && fault.until + FAULT_SLACK >= started
            })
        })
    }

    /// The slot whose proxy a remote session's runtime description names.
    fn slot_of(&self, runtime: &str) -> Option<Target> {
        self.slots
            .iter()
            .position(|slot| runtime.ends_with(&slot.proxy.address.to_string()))
            .map(Target::Slot)
    }

    /// Kills or drains slot `index`'s runtime, and puts a fresh one behind its proxy;
    /// `false` when that slot's runtime is being replaced already.
    fn replace(self: &Arc<Self>, index: usize, kind: FaultKind) -> bool {
        let slot = Arc::clone(&self.slots[index]);
        if slot.busy.swap(true, Ordering::SeqCst) {
            return false;
        }
        let record = self.record(Target::Slot(index), kind, Duration::ZERO);
        let stage = Arc::clone(self);
        tokio::spawn(async move {
            let old = lock(&slot.runtime).take();
            if let Some(mut old) = old {
                if kind == FaultKind::RemoteDrain {
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
            lock(&stage.faults)[record].until = Instant::now();
            slot.busy.store(false, Ordering::SeqCst);
        });
        true
    }

    /// Kills the local runtime while one of its cells waits on a tool call: the next
    /// local call is held, the runtime killed, and that cell must be rebuilt and complete.
    /// `false` when no local cell made a call within 3 s.
    async fn kill_mid_cell(&self) -> bool {
        // A drain just before would leave the held cell on the old, draining runtime
        // while the provider names its successor: let it end first.
        let last_drain = lock(&self.faults)
            .iter()
            .filter(|fault| fault.kind == FaultKind::LocalDrain)
            .map(|fault| fault.from)
            .max();
        if let Some(at) = last_drain {
            tokio::time::sleep_until(at + Duration::from_secs(3)).await;
        }
        let (catch, caught) = oneshot::channel();
        *lock(&self.delegate.catch) = Some(catch);
        let caught = tokio::time::timeout(Duration::from_secs(3), caught).await;
        lock(&self.delegate.catch).take();
        let Ok(Ok(token)) = caught else {
            return false;
        };
        let Some(pid) = self.local_pid().await else {
            panic!("chaos: a local cell ({token}) is in a tool call, but no local runtime is up");
        };
        self.record(Target::Local, FaultKind::LocalKillMidCell, Duration::ZERO);
        lock(&self.held).push(token);
        signal(pid, "KILL");
        true
    }

    /// One fault of `kind`, its target chosen at random. `false` when it could not be
    /// done now: the local runtime is being restarted, the remote one chosen is being
    /// replaced already, or no local cell reached a tool call to be killed in.
    async fn fault(self: &Arc<Self>, kind: FaultKind, rng: &mut Rng) -> bool {
        let slots = self.slots.len() as u64;
        let slot = rng.below(slots.max(1)) as usize;
        let done = match kind {
            FaultKind::LocalKillMidCell => self.kill_mid_cell().await,
            FaultKind::LocalKill | FaultKind::LocalDrain => match self.local_pid().await {
                Some(pid) => {
                    self.record(Target::Local, kind, Duration::ZERO);
                    let drain = kind == FaultKind::LocalDrain;
                    signal(pid, if drain { "TERM" } else { "KILL" });
                    true
                }
                None => false,
            },
            _ if slots == 0 => false,
            FaultKind::RemoteKill | FaultKind::RemoteDrain => self.replace(slot, kind),
            FaultKind::Cut => {
                self.record(Target::Slot(slot), kind, Duration::ZERO);
                self.slots[slot].proxy.cut();
                true
            }
            FaultKind::Stall => {
                // Some stalls outlast the liveness timeout (the connection is given up),
                // some do not (the bytes arrive late).
                let stall = Duration::from_millis(200 + rng.below(3_000));
                self.record(Target::Slot(slot), kind, stall);
                self.slots[slot].proxy.stall(stall);
                true
            }
            FaultKind::Delay => {
                let target = Arc::clone(&self.slots[slot]);
                let delay = Duration::from_millis(5 + rng.below(60));
                self.record(Target::Slot(slot), kind, Duration::from_secs(2));
                target.proxy.delay(delay);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    target.proxy.delay(Duration::ZERO);
                });
                true
            }
        };
        if done {
            *lock(&self.report).faults.entry(kind).or_default() += 1;
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
    /// The value committed last, exact JSON text (`None`: absent).
    committed: Option<String>,
    /// Values of later cells that died with their runtime: each may or may not have been
    /// committed, until a cell's `load` shows which.
    maybe: Vec<String>,
}

impl Known {
    /// Whether `found` (a `load`'s JSON text, `None` when absent) is a value this key may
    /// hold.
    fn allows(&self, found: Option<&str>) -> bool {
        self.committed.as_deref() == found || self.maybe.iter().any(|maybe| Some(&**maybe) == found)
    }
}

/// A session's model of its committed map.
#[derive(Default)]
struct Ledger {
    keys: BTreeMap<String, Known>,
}

impl Ledger {
    /// Checks what a cell loaded (key → JSON text or null) against the model, and pins
    /// each key to what was found: a value a lost cell may have committed is now known.
    fn check_and_pin(&mut self, name: &str, cell: &str, seen: &serde_json::Value) -> u64 {
        for (key, known) in &mut self.keys {
            let found = match &seen[key] {
                serde_json::Value::Null => None,
                serde_json::Value::String(json) => Some(json.as_str()),
                other => panic!("{name}: cell {cell} reported {key} as {other}"),
            };
            assert!(
                known.allows(found),
                "{name}: cell {cell} loaded {key} as {found:?}, but its committed value is {:?} (or one of {:?})",
                known.committed,
                known.maybe
            );
            *known = Known {
                committed: found.map(str::to_owned),
                maybe: Vec::new(),
            };
        }
        self.keys.len() as u64
    }

    /// Checks the host's copy of the session's map against the model, whole: every key
    /// committed with its exact value, and nothing else.
    fn check_host_copy(&self, name: &str, after: &str, host: &StoredValues) {
        let model: BTreeMap<&str, &str> = self
            .keys
            .iter()
            .filter_map(|(key, known)| Some((key.as_str(), known.committed.as_deref()?)))
            .collect();
        let copy: BTreeMap<&str, &str> = host
            .iter()
            .map(|(key, json)| (key.as_str(), json.as_ref()))
            .collect();
        if model != copy {
            let missing: Vec<&&str> = model
                .keys()
                .filter(|key| !copy.contains_key(*key))
                .collect();
            let extra: Vec<&&str> = copy
                .keys()
                .filter(|key| !model.contains_key(*key))
                .collect();
            let different: Vec<&&str> = model
                .iter()
                .filter(|(key, json)| copy.get(*key).is_some_and(|kept| kept != *json))
                .map(|(key, _)| key)
                .collect();
            panic!(
                "{name}: after {after}, the host's copy of the stored values is not the committed map: missing {missing:?}, extra {extra:?}, different {different:?}"
            );
        }
    }
}

/// How a cell ended, as the worker saw it.
enum Ended {
    /// Its text output.
    Completed(String),
    /// Its runtime was lost under it, within a fault's window.
    Lost,
    /// Refused while no remote runtime was up.
    Refused,
}

/// Follows a cell to its end, waiting while it yields: its final response, and the text
/// of every observation before it (where a cell's yields fall may move when it is rebuilt;
/// its whole output may not).
async fn follow<S: CodeModeSession>(
    session: &S,
    mut response: CellResponse,
) -> Result<(CellResponse, Vec<String>), SessionError> {
    let mut earlier = Vec::new();
    while let CellResponse::Yielded { cell_id, .. } = &response {
        let request = WaitRequest::new(cell_id.clone()).with_yield_time_ms(5_000);
        earlier.extend(
            response
                .content_items()
                .iter()
                .filter_map(|item| item.as_text())
                .map(str::to_owned),
        );
        response = session.wait(request).await?;
    }
    Ok((response, earlier))
}

/// Runs one cell to its end within the answer deadline and classifies how it ended;
/// panics on anything the faults do not explain.
async fn run_cell(
    stage: &Stage,
    name: &str,
    cell: &str,
    (session, local): (&RuntimeSession, bool),
    source: String,
) -> Ended {
    let started = Instant::now();
    // Whether the runtime admitted the cell: from then on it is rebuilt, never lost.
    let admitted = Arc::new(AtomicBool::new(false));
    let outcome = tokio::time::timeout(stage.deadline, async {
        let flag = Arc::clone(&admitted);
        let hooks = code_mode_protocol::ExecHooks::default()
            .on_admitted(move |_| flag.store(true, Ordering::SeqCst));
        let started = session
            .execute_with(ExecRequest::new(source).with_tools(tools()), hooks)
            .await
            .map_err(|error| (Phase::Exec, error))?;
        follow(session, started.initial_response)
            .await
            .map_err(|error| (Phase::Wait, error))
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{name}: cell {cell} got no answer within {:?}",
            stage.deadline
        )
    });
    let ended = Instant::now();
    match outcome {
        Ok((
            CellResponse::Result {
                content_items,
                failure: None,
                ..
            },
            earlier,
        )) => Ended::Completed(
            earlier
                .iter()
                .map(String::as_str)
                .chain(content_items.iter().filter_map(|item| item.as_text()))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Ok((other, _)) => panic!("{name}: cell {cell} ended unexpectedly: {other:?}"),
        // A cell is rebuilt at each loss of its runtime, up to the bound of one call: one
        // that gave up is a loss the run allows only when that many faults fell within it.
        Err((phase, SessionError::RuntimeLost(cause)))
            if !local
                && cause.contains(GAVE_UP)
                && stage.remote_faults_within(started, ended)
                    >= code_mode_host::REBUILD_ATTEMPTS =>
        {
            lock(&stage.report).gave_up += 1;
            if std::env::var_os("CODE_MODE_CHAOS_VERBOSE").is_some() {
                eprintln!("chaos: {name}: cell {cell} gave up at its {phase:?}: {cause}");
            }
            lock(&stage.lost).insert(cell.to_owned());
            Ended::Lost
        }
        // A local session loses nothing else: a cell of a dead local runtime is rebuilt,
        // and an exec it never admitted runs again.
        Err((phase, SessionError::RuntimeLost(cause))) if local => {
            panic!("{name}: cell {cell} of a local session was lost at its {phase:?}: {cause}")
        }
        // A remote session may fail only an exec its runtime never admitted (a pool never
        // runs one again); an admitted cell is rebuilt, and a wait is never lost.
        Err((phase, SessionError::RuntimeLost(cause)))
            if phase == Phase::Wait || admitted.load(Ordering::SeqCst) =>
        {
            panic!(
                "{name}: cell {cell} was lost after its runtime admitted it (at its {phase:?}): {cause}"
            )
        }
        Err((_, SessionError::RuntimeLost(cause))) => {
            let target = if local {
                Some(Target::Local)
            } else {
                session
                    .runtime()
                    .and_then(|runtime| stage.slot_of(&runtime))
            };
            assert!(
                stage.fault_within(target, started, ended),
                "{name}: cell {cell} lost its runtime ({target:?}) with no fault injected there: {cause}"
            );
            lock(&stage.lost).insert(cell.to_owned());
            Ended::Lost
        }
        Err((Phase::Exec, SessionError::Runtime(message)))
            if !local
                && message.message().starts_with(REFUSAL)
                && stage.remote_all_down(started, ended) =>
        {
            if std::env::var_os("CODE_MODE_CHAOS_VERBOSE").is_some() {
                eprintln!("chaos: {name}: cell {cell} refused: {message}");
            }
            Ended::Refused
        }
        Err((phase, other)) => {
            panic!("{name}: cell {cell} failed at its {phase:?}, and no fault explains it: {other}")
        }
    }
}

/// Where a cell's call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its `exec`.
    Exec,
    /// A `wait` on it after the exec yielded.
    Wait,
}

/// A JavaScript string literal of `text` (ASCII and JSON text only).
fn js_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// The source of a cell that loads every key in `keys` and reports them, then (for a
/// `store` of `(key, index, pad)`) says `calling` and yields it to its caller, waits for
/// two timers, calls `echo` with its token and stores a value. So a cell rebuilt at its
/// call has output its caller took and two timers in its journal: an output delivered
/// twice or events replayed out of order show in its result.
fn cell_source(token: &str, keys: &[&String], store: Option<(&str, u64, &str)>) -> String {
    let mut source = format!(
        "const seen = {{}};\nfor (const key of {}) seen[key] = JSON.stringify(load(key)) ?? null;\n",
        serde_json::to_string(keys).expect("keys as JSON")
    );
    match store {
        Some((key, index, pad)) => {
            let _ = write!(
                source,
                "text(\"calling\"); yield_control();\n\
                 for (let i = 0; i < 2; i++) await new Promise((done) => setTimeout(done, i));\n\
                 const answer = await tools.echo({{ token: {token} }});\n\
                 store({key}, {{ i: {index}, token: answer.token, pad: {pad} }});\n\
                 text(JSON.stringify({{ token: {token}, echoed: answer.token, seen }}));",
                token = js_string(token),
                key = js_string(key),
                pad = js_string(pad),
            );
        }
        None => {
            let _ = write!(
                source,
                "text(JSON.stringify({{ token: {token}, echoed: {token}, seen }}));",
                token = js_string(token)
            );
        }
    }
    source
}

/// Checks a completed cell's whole output (`calling` once, for a cell that makes a call,
/// then its report): its own result, its own tool answer, every key as the model allows
/// (then pinned).
fn check_report(
    stage: &Stage,
    name: &str,
    cell: &str,
    ledger: &mut Ledger,
    text: &str,
    calls: bool,
) {
    let text = if calls {
        text.strip_prefix("calling\n").unwrap_or_else(|| {
            panic!("{name}: cell {cell}'s output does not start with its one `calling`: {text:?}")
        })
    } else {
        text
    };
    let report: serde_json::Value = serde_json::from_str(text)
        .unwrap_or_else(|_| panic!("{name}: cell {cell} answered {text:?}"));
    assert_eq!(
        report["token"].as_str(),
        Some(cell),
        "{name}: cell {cell} was answered with another cell's result: {text}"
    );
    assert_eq!(
        report["echoed"].as_str(),
        Some(cell),
        "{name}: cell {cell}'s tool call was answered with another call's answer: {text}"
    );
    let checked = ledger.check_and_pin(name, cell, &report["seen"]);
    lock(&stage.report).values_checked += checked;
}

/// The cells of one session until `until`, then the final check of every value.
async fn worker(
    name: String,
    (session, local): (RuntimeSession, bool),
    until: Instant,
    stage: Arc<Stage>,
    mut rng: Rng,
) {
    let mut ledger = Ledger::default();
    let mut index = 0u64;
    while Instant::now() < until {
        index += 1;
        let key = format!("k{}", index % KEYS);
        let cell = format!("{name}/{index}");
        let pad = "x".repeat(rng.below(200) as usize);
        let expected = format!(r#"{{"i":{index},"token":"{cell}","pad":"{pad}"}}"#);
        let keys: Vec<&String> = ledger.keys.keys().collect();
        let source = cell_source(&cell, &keys, Some((&key, index, &pad)));
        lock(&stage.report).cells += 1;
        match run_cell(&stage, &name, &cell, (&session, local), source).await {
            Ended::Completed(text) => {
                check_report(&stage, &name, &cell, &mut ledger, &text, true);
                lock(&stage.completed).insert(cell.clone());
                ledger.keys.insert(
                    key,
                    Known {
                        committed: Some(expected),
                        maybe: Vec::new(),
                    },
                );
                ledger.check_host_copy(&name, &cell, &session.stored_values());
                let mut report = lock(&stage.report);
                report.completed += 1;
                report.host_copies_checked += 1;
            }
            Ended::Lost => {
                lock(&stage.report).lost += 1;
                ledger.keys.entry(key).or_default().maybe.push(expected);
            }
            Ended::Refused => {
                lock(&stage.report).refused += 1;
                ledger.keys.entry(key).or_default().maybe.push(expected);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
    }
    final_check(&name, (&session, local), &mut ledger, &stage).await;
    tokio::time::timeout(stage.deadline, session.shutdown())
        .await
        .unwrap_or_else(|_| panic!("{name}: shutdown got no answer within {:?}", stage.deadline));
}

/// Every key the session used, loaded in one cell (again while runtimes come back), and
/// compared with the model and with the host's copy.
async fn final_check(
    name: &str,
    (session, local): (&RuntimeSession, bool),
    ledger: &mut Ledger,
    stage: &Stage,
) {
    for attempt in 1..=20 {
        let cell = format!("{name}/final{attempt}");
        let keys: Vec<&String> = ledger.keys.keys().collect();
        let source = cell_source(&cell, &keys, None);
        match run_cell(stage, name, &cell, (session, local), source).await {
            Ended::Completed(text) => {
                check_report(stage, name, &cell, ledger, &text, false);
                ledger.check_host_copy(name, &cell, &session.stored_values());
                lock(&stage.report).host_copies_checked += 1;
                return;
            }
            Ended::Lost | Ended::Refused => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    panic!("{name}: the final check never ran");
}

fn host_rss() -> u64 {
    rss_kib("self").unwrap_or(0)
}

/// Waits `pause`, failing the run at once if a worker panicked or the delegate found a
/// violation meanwhile.
async fn watch(workers: &mut tokio::task::JoinSet<()>, violations: &Violations, pause: Duration) {
    let wake = Instant::now() + pause;
    loop {
        violations.check();
        let now = Instant::now();
        if now >= wake {
            return;
        }
        let tick = wake.min(now + Duration::from_millis(100));
        tokio::select! {
            () = tokio::time::sleep_until(tick) => {}
            Some(finished) = workers.join_next(), if !workers.is_empty() => {
                if let Err(error) = finished {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
    }
}

/// Opens `count` sessions of `provider` and starts a worker on each (`<name><index>`).
fn spawn_workers(
    workers: &mut tokio::task::JoinSet<()>,
    provider: Runtimes,
    name: &str,
    count: usize,
    (delegate, until, stage): (&Arc<ChaosDelegate>, Instant, &Arc<Stage>),
    rng: &mut Rng,
) {
    let local = matches!(provider, Runtimes::Local(_));
    for index in 0..count {
        let session = provider.open_session(delegate.clone(), SessionOptions::default());
        let worker_rng = Rng::new(rng.next());
        workers.spawn(worker(
            format!("{name}{index}"),
            (session, local),
            until,
            Arc::clone(stage),
            worker_rng,
        ));
    }
}

/// Runs the chaos test with the runtime `binary`; panics on any violation, returns the
/// counts. The whole run is bounded: past its duration and three answer deadlines more,
/// it fails.
pub async fn run(binary: &Path, config: ChaosConfig) -> ChaosReport {
    let bound = config.duration + config.answer_deadline * 3 + Duration::from_secs(60);
    tokio::time::timeout(bound, run_unbounded(binary, config))
        .await
        .unwrap_or_else(|_| panic!("the chaos run did not end within {bound:?}"))
}

async fn run_unbounded(binary: &Path, config: ChaosConfig) -> ChaosReport {
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
    let delegate = Arc::new(ChaosDelegate::default());
    let violations = Arc::clone(&delegate.violations);
    let stage = Arc::new(Stage {
        binary: binary.to_owned(),
        local,
        slots,
        options,
        delegate: Arc::clone(&delegate),
        deadline: config.answer_deadline,
        pids: Mutex::new(BTreeSet::new()),
        faults: Mutex::new(Vec::new()),
        held: Mutex::new(Vec::new()),
        lost: Mutex::new(HashSet::new()),
        completed: Mutex::new(HashSet::new()),
        report: Mutex::new(ChaosReport::default()),
    });
    for slot in &stage.slots {
        if let Some(runtime) = &*lock(&slot.runtime) {
            lock(&stage.pids).insert(runtime.pid());
        }
    }
    let started = Instant::now();
    let until = started + config.duration;
    let mut rng = Rng::new(config.seed);
    let mut workers = tokio::task::JoinSet::new();
    let shared = (&delegate, until, &stage);
    spawn_workers(
        &mut workers,
        Runtimes::Local(stage.local.clone()),
        "local",
        config.local_sessions,
        shared,
        &mut rng,
    );
    spawn_workers(
        &mut workers,
        Runtimes::Remote(remote.clone()),
        "remote",
        config.remote_sessions,
        shared,
        &mut rng,
    );

    // Faults until the end, and RSS samples. The first faults are one of each kind, in an
    // order the seed shuffles (a kind that cannot be done at its turn comes again next),
    // so that even a short run meets every kind; later ones are drawn at random.
    let mut next_sample = config.rss_every.map(|every| started + every);
    let warm_at = started + config.duration / 5;
    let mut first_kinds: Vec<FaultKind> = FaultKind::ALL.to_vec();
    for index in (1..first_kinds.len()).rev() {
        first_kinds.swap(index, rng.below(index as u64 + 1) as usize);
    }
    first_kinds.reverse();
    if config.rebuild_first {
        // Popped first.
        first_kinds.retain(|kind| *kind != FaultKind::LocalKillMidCell);
        first_kinds.push(FaultKind::LocalKillMidCell);
    }
    while Instant::now() < until {
        let mean = config.fault_every.as_millis() as u64;
        let pause = Duration::from_millis(mean / 2 + rng.below(mean.max(1)));
        let pause = pause.min(until.saturating_duration_since(Instant::now()));
        watch(&mut workers, &violations, pause).await;
        if Instant::now() >= until {
            break;
        }
        let kind = match first_kinds.pop() {
            Some(kind) => kind,
            None => FaultKind::ALL[rng.below(FaultKind::ALL.len() as u64) as usize],
        };
        let done = stage.fault(kind, &mut rng).await;
        if !done && !lock(&stage.report).faults.contains_key(&kind) {
            first_kinds.push(kind);
        }
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
    // No more faults: stop any delay, then let the workers finish and check.
    for slot in &stage.slots {
        slot.proxy.delay(Duration::ZERO);
    }
    while !workers.is_empty() {
        watch(&mut workers, &violations, Duration::from_millis(200)).await;
    }
    violations.check();
    let held = lock(&stage.held).clone();
    let not_rebuilt: Vec<&String> = held
        .iter()
        .filter(|cell| !lock(&stage.completed).contains(*cell))
        .collect();
    assert!(
        not_rebuilt.is_empty(),
        "cells killed while in a tool call did not complete on a rebuilt runtime: {not_rebuilt:?}"
    );
    {
        let mut report = lock(&stage.report);
        report.rebuilt_mid_flight = held.len() as u64;
        report.tool_calls = delegate.calls.load(Ordering::Relaxed);
        report.host_rss_end_kib = host_rss();
    }

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
    // Every kind of fault happened, and cells were lost mid-flight: a run that never
    // exercised the loss path proves nothing.
    for kind in FaultKind::ALL {
        if kind.is_local() || config.remote_runtimes > 0 {
            assert!(
                report.faults.get(&kind).is_some_and(|count| *count > 0),
                "no fault of kind {:?} happened: {report}",
                kind.name()
            );
        }
    }
    assert!(
        report.rebuilt_mid_flight > 0,
        "no cell was rebuilt mid-flight: {report}"
    );
    // Only faults on remote runtimes excuse a loss: with none, nothing is lost.
    let remote_faults: u64 = report
        .faults
        .iter()
        .filter(|(kind, _)| !kind.is_local() && **kind != FaultKind::Delay)
        .map(|(_, count)| *count)
        .sum();
    if remote_faults == 0 {
        assert_eq!(
            (report.lost, report.gave_up),
            (0, 0),
            "cells lost with no remote fault: {report}"
        );
    }
    assert!(report.gave_up <= report.lost, "{report}");
    // At least 95 % of cells complete with their fault-free output (every local cell
    // does, or the run has failed already; a remote exec never admitted may fail). A run
    // whose runtimes could not be reached (a stale binary of another protocol version,
    // say) fails here, if not before.
    assert!(
        report.completed * 100 >= report.cells * 95,
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
