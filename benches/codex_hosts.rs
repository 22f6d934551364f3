//! Codex's own `codex-code-mode-host` against ours, through one gRPC client on stdio, as
//! codex drives them: interleaved round by round in one run.
//!
//! `scripts/dist.sh codex-code-mode-host` first (what users install: one static file,
//! link-time optimised, that carries the runtime, in `target/dist/`; without it, the
//! release build beside the bench is measured), and
//! `scripts/test-deps.sh` for codex's host; then
//! `cargo bench --bench codex_hosts -- [--rounds N] [--iterations M] [--delays 0,0.3,1]`.
//!
//! Per host and round: cold (spawn to the first result: process start, OpenSession,
//! SubscribeToToolCalls and one `text("bench")`; the previous host was waited for and the
//! machine given 30 ms, so no start shares the cores with a teardown), warm
//! `text("bench")` execs with 0 and with 128 enabled tools (the tool list sent whole on
//! every exec, as codex 0.169 does; and under a catalog revision the host knows, as 0.171
//! does, with no tool list), the cost of nested tool calls (a cell making one, or ten
//! sequential ones, less a cell making none) with the client's answers taking 0, 0.3 and
//! 1 ms (`--delays`; an agent core in Python, or a real tool, is not instant), a `wait`
//! sent at once on a cell that yielded to its exec and finishes a millisecond later (it
//! races the cell's end), and a `wait` on such a cell once it has finished.
//! Each figure is the client's wall time; the host's own `host_duration_ns` is given
//! beside the warm execs and the waits. Each ratio of the two hosts' p50s comes with a 95%
//! interval: the rounds resampled with replacement, both hosts' figures of a drawn round
//! together. Codex's host is 0.171.0's (`tests/codex-npm-0171`), which knows catalog
//! revisions; 0.169.0's when only it is installed.
//!
//! `-- --parked 300,1000` instead measures parked cells: per host, one session starts each
//! number of cells that await a nested call nobody answers, then (past our host's
//! hibernation delay) reads the RSS and threads of the host's processes (ours: the front
//! and its runtime).

use codex_code_mode_host::client::{Driver, Responder, StdioHost, exec_request, tool};
use codex_code_mode_host::proto;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Options {
    rounds: usize,
    iterations: usize,
    /// How long the client takes to answer a nested call, each in turn (ms).
    delays: Vec<f64>,
    hosts: Vec<(String, PathBuf)>,
    /// With `--parked`: the numbers of parked cells to measure instead.
    parked: Vec<usize>,
}

fn options() -> Options {
    let mut options = Options {
        rounds: 5,
        iterations: 60,
        delays: vec![0.0, 0.3, 1.0],
        hosts: Vec::new(),
        parked: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || {
            args.next()
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        match arg.as_str() {
            "--rounds" => options.rounds = number().max(1),
            "--iterations" => options.iterations = number().max(1),
            "--delays" => options.delays = list(args.next()),
            "--parked" => options.parked = list(args.next()),
            "--host" => {
                if let Some(path) = args.next() {
                    options.hosts.push((path.clone(), PathBuf::from(path)));
                }
            }
            _ => {} // cargo bench passes --bench
        }
    }
    if options.hosts.is_empty() {
        // What users install (`target/dist`, link-time optimised) when it was built, else
        // the release build beside this bench.
        let release = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(PathBuf::from))
            .unwrap_or_default();
        let dist = release.with_file_name("dist").join("codex-code-mode-host");
        let ours = if dist.is_file() {
            dist
        } else {
            release.join("codex-code-mode-host")
        };
        options.hosts.push(("ours".to_owned(), ours));
        let installed = |package: &str| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
                "../codex-code-mode-host/tests/{package}/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex-code-mode-host"
            ))
        };
        let newest = installed("codex-npm-0171");
        let codex = if newest.is_file() {
            newest
        } else {
            installed("codex-npm")
        };
        if codex.is_file() {
            options.hosts.push(("codex".to_owned(), codex));
        } else {
            eprintln!(
                "codex's host is not installed ({}); run scripts/test-deps.sh to compare",
                codex.display()
            );
        }
    }
    options
}

/// A comma-separated list of numbers; a value that is not one stops the run.
fn list<T: std::str::FromStr>(given: Option<String>) -> Vec<T> {
    given
        .unwrap_or_default()
        .split(',')
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("`{n}` is not a number in a list argument"))
        })
        .collect()
}

/// One host's figures of a round (or of all rounds, [`merged`]): each named series in
/// the order it was first measured.
#[derive(Default)]
struct Figures {
    series: Vec<(String, Vec<f64>)>,
}

impl Figures {
    fn push(&mut self, name: &str, value: f64) {
        self.extend(name, [value]);
    }

    fn extend(&mut self, name: &str, values: impl IntoIterator<Item = f64>) {
        match self.series.iter_mut().find(|(named, _)| named == name) {
            Some((_, series)) => series.extend(values),
            None => self
                .series
                .push((name.to_owned(), values.into_iter().collect())),
        }
    }

    fn get(&self, name: &str) -> &[f64] {
        self.series
            .iter()
            .find(|(named, _)| named == name)
            .map_or(&[], |(_, values)| values.as_slice())
    }
}

fn tools(count: usize) -> Vec<proto::ToolDefinition> {
    (0..count)
        .map(|index| {
            let mut definition = tool(&format!("t{index}"), &format!("t{index}"), Some("bench"));
            definition.description = format!(
                "Tool number {index} of the bench.\n\ndeclare const tools: {{ t{index}(args: {{ i?: number }}): Promise<unknown> }};"
            );
            definition
        })
        .collect()
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// How long the client's answers to nested calls take now (ns), read at every call.
type Delay = Arc<AtomicU64>;

/// Answers every call after the session's current [`Delay`], blocking the client's
/// answering task meanwhile as an agent core that computes the answer would.
fn delayed_responder(delay: &Delay) -> Responder {
    let delay = Arc::clone(delay);
    Arc::new(move |call| {
        let nanos = delay.load(Ordering::Relaxed);
        if nanos > 0 {
            std::thread::sleep(Duration::from_nanos(nanos));
        }
        Ok(format!("{{\"ok\":{}}}", call.sequence))
    })
}

/// One exec of `source` with `enabled` tools (under `revision`, when given): the client's
/// wall time and the host's `host_duration_ns`, in ms.
async fn exec(
    driver: &mut Driver,
    source: &str,
    enabled: &[proto::ToolDefinition],
    revision: Option<u64>,
) -> (f64, f64) {
    let mut request = exec_request(source);
    request.enabled_tools = enabled.to_vec();
    request.catalog_revision = revision;
    let started = Instant::now();
    let outcome = driver.run(request).await.expect("an outcome");
    let wall = millis(started.elapsed());
    match &outcome.status {
        Some(proto::cell_outcome::Status::Completed(completed))
            if completed.error_text.is_empty() => {}
        other => panic!("the bench cell failed: {other:?}"),
    }
    (wall, outcome.host_duration_ns as f64 / 1e6)
}

async fn round(path: &std::path::Path, options: &Options, figures: &mut Figures) {
    let delay = Delay::default();
    let started = Instant::now();
    let mut command = tokio::process::Command::new(path);
    command
        .args(["--listen", "grpc+stdio://"])
        .stderr(std::process::Stdio::null());
    let host = StdioHost::spawn(command).await.expect("spawn the host");
    let mut driver = Driver::open(
        host.client.clone(),
        proto::OpenSessionRequest {
            output_truncation: 2,
            max_pending_delegate_calls: 4096,
            ..Default::default()
        },
        delayed_responder(&delay),
    )
    .await
    .expect("open a session");
    exec(&mut driver, r#"text("bench")"#, &[], None).await;
    figures.push("cold: spawn → first result", millis(started.elapsed()));
    warm(&mut driver, options, figures).await;
    calls(&mut driver, options, &delay, figures).await;
    waits(&mut driver, options.iterations, figures).await;
    let _ = driver.close().await;
    settle(host, driver).await;
}

/// Warm execs of `text("bench")`: with no tools, with 128 sent whole, and with the 128
/// under a catalog revision the host was given once.
async fn warm(driver: &mut Driver, options: &Options, figures: &mut Figures) {
    let none = tools(0);
    let many = tools(128);
    let bench = r#"text("bench")"#;
    for _ in 0..3 {
        exec(driver, bench, &none, None).await;
        exec(driver, bench, &many, None).await;
    }
    let kinds: [(&str, &[proto::ToolDefinition], Option<u64>); 3] = [
        ("warm exec, 0 tools", &none, None),
        ("warm exec, 128 tools sent", &many, None),
        ("warm exec, 128 tools, known revision", &[], Some(1)),
    ];
    let revisions = driver.events.lock().is_ok_and(|events| {
        matches!(
            events.first().and_then(|first| first.event.as_ref()),
            Some(proto::session_event::Event::Opened(opened)) if opened.supports_catalog_revision
        )
    });
    // The catalog under that revision, given once (as codex's first exec does); an exec
    // without a revision leaves it kept.
    exec(driver, bench, &many, Some(1)).await;
    // The kinds alternate, so that the machine's moments fall on each alike.
    for _ in 0..options.iterations {
        for (name, enabled, revision) in kinds {
            if revision.is_some() && !revisions {
                continue; // a host before 0.171 knows no revisions
            }
            let (wall, host) = exec(driver, bench, enabled, revision).await;
            figures.push(name, wall);
            figures.push(&format!("  {name}: host_duration_ns"), host);
        }
    }
}

/// Nested calls at each of the client's answer delays: a cell making one call, and one
/// making ten in sequence, less the median of a cell making none (alternated with them).
async fn calls(driver: &mut Driver, options: &Options, delay: &Delay, figures: &mut Figures) {
    let caller = tools(1);
    let bench = r#"text("bench")"#;
    let one = r#"await tools.t0({i: 0}); text("bench")"#;
    let ten = r#"for (let i = 0; i < 10; i++) await tools.t0({i}); text("bench")"#;
    for &ms in &options.delays {
        delay.store((ms * 1e6) as u64, Ordering::Relaxed);
        let (mut base, mut with_one, mut with_ten) = (Vec::new(), Vec::new(), Vec::new());
        exec(driver, ten, &caller, None).await;
        for _ in 0..options.iterations.div_ceil(2) {
            base.push(exec(driver, bench, &caller, None).await.0);
            with_one.push(exec(driver, one, &caller, None).await.0);
            with_ten.push(exec(driver, ten, &caller, None).await.0);
        }
        let baseline = median(&base);
        let added = |totals: Vec<f64>| totals.into_iter().map(move |t| (t - baseline).max(0.0));
        figures.extend(&format!("one nested call, answer {ms} ms"), added(with_one));
        figures.extend(
            &format!("ten nested calls, answer {ms} ms"),
            added(with_ten),
        );
    }
    delay.store(0, Ordering::Relaxed);
}

/// Ends a round's host and lets the machine settle before the next host's cold start: the
/// host is disconnected as codex leaves it, waited for, and so are the processes it had
/// started (ours has its runtime), then it is given a moment for the kernel's teardown of
/// their memory, which would otherwise run on the same two cores as the next host's start
/// (whichever host came second in a round was slower by about half a millisecond).
async fn settle(mut host: StdioHost, driver: Driver) {
    let children = host.pid().map(descendants).unwrap_or_default();
    drop(driver);
    host.disconnect();
    if tokio::time::timeout(std::time::Duration::from_secs(5), host.child().wait())
        .await
        .is_err()
    {
        let _ = host.child().kill().await;
    }
    // A process that ended is gone, or a zombie once its memory is torn down.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while Instant::now() < deadline && children.iter().any(|pid| running(*pid)) {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
}

/// The processes `pid` started, and theirs (from `/proc`'s lists of each thread's
/// children; empty where the kernel keeps none).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let listed = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in listed.split_whitespace().filter_map(|pid| pid.parse().ok()) {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

/// Whether process `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// `wait`s on cells that yield their first text to the exec, then finish after a 1 ms
/// timer: one sent at once (it races the cell's end), one sent once the cell has finished.
async fn waits(driver: &mut Driver, iterations: usize, figures: &mut Figures) {
    let source = r#"text("first"); yield_control(); await new Promise((done) => setTimeout(done, 1)); text("rest")"#;
    for index in 0..2 * (iterations + 3) {
        let racing = index % 2 == 0;
        let outcome = driver.run(exec_request(source)).await.expect("an outcome");
        assert!(
            matches!(
                outcome.status,
                Some(proto::cell_outcome::Status::Yielded(_))
            ),
            "the wait bench's cell did not yield: {outcome:?}"
        );
        if !racing {
            // Past the cell's timer: it has finished by the time it is waited on.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let started = Instant::now();
        let response = driver
            .wait(&outcome.cell_id, 10_000, None)
            .await
            .expect("a wait response")
            .into_inner();
        let wall = millis(started.elapsed());
        let Some(proto::wait_response::Cell::LiveCell(waited)) = response.cell else {
            panic!("the wait bench's cell was missing: {response:?}");
        };
        match &waited.status {
            Some(proto::cell_outcome::Status::Completed(completed))
                if completed.error_text.is_empty() => {}
            other => panic!("the waited cell did not complete: {other:?}"),
        }
        if index >= 6 {
            let name = if racing {
                "wait racing its cell's end"
            } else {
                "wait on a finished cell"
            };
            figures.push(name, wall);
            figures.push(
                &format!("  {name}: host_duration_ns"),
                waited.host_duration_ns as f64 / 1e6,
            );
        }
    }
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

fn percentile(values: &[f64], fraction: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn show(milliseconds: f64) -> String {
    if milliseconds >= 10.0 {
        format!("{milliseconds:.1} ms")
    } else {
        format!("{:.0} µs", milliseconds * 1e3)
    }
}

/// The figures of `rounds`, one after the other.
fn merged(rounds: &[Figures]) -> Figures {
    let mut all = Figures::default();
    for round in rounds {
        for (name, values) in &round.series {
            all.extend(name, values.iter().copied());
        }
    }
    all
}

/// How many times [`ratio_interval`] resamples the rounds.
const RESAMPLES: usize = 2_000;

/// The 95% interval of Codex's p50 over ours for series `name`: the rounds resampled with
/// replacement, each drawn round bringing both hosts' figures of that round (they ran one
/// after the other), so that the spread between rounds shows, not only within them.
fn ratio_interval(ours: &[Figures], theirs: &[Figures], name: &str) -> (f64, f64) {
    let count = ours.len().min(theirs.len());
    if count == 0 {
        return (0.0, 0.0);
    }
    let mut ratios = Vec::with_capacity(RESAMPLES);
    for drawn in code_mode_benches::resamples(count, RESAMPLES) {
        let (mut ours_drawn, mut theirs_drawn) = (Vec::new(), Vec::new());
        for index in drawn {
            ours_drawn.extend_from_slice(ours[index].get(name));
            theirs_drawn.extend_from_slice(theirs[index].get(name));
        }
        ratios.push(median(&theirs_drawn) / median(&ours_drawn));
    }
    (percentile(&ratios, 0.025), percentile(&ratios, 0.975))
}

/// The RSS (KiB) and threads of `pid` and its descendants.
fn tree_usage(pid: u32) -> (u64, usize) {
    let mut pids = vec![pid];
    let mut index = 0;
    while index < pids.len() {
        let parent = pids[index];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if ppid == Some(parent) && !pids.contains(&child) {
                pids.push(child);
            }
        }
        index += 1;
    }
    let mut rss = 0;
    let mut threads = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(value) = line.strip_prefix("VmRSS:") {
                rss += value
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
            if let Some(value) = line.strip_prefix("Threads:") {
                threads += value.trim().parse::<usize>().unwrap_or(0);
            }
        }
    }
    (rss, threads)
}

/// Starts `cells` cells awaiting a call nobody answers in one session of the host at
/// `path`, waits past our host's hibernation delay, and returns the RSS growth (KiB) and
/// the threads of the host's processes before and after.
async fn parked(path: &std::path::Path, cells: usize) -> (u64, usize, usize) {
    let responder: Responder = Arc::new(|_| Err(codex_code_mode_host::client::UNANSWERED.into()));
    let mut command = tokio::process::Command::new(path);
    command
        .args(["--listen", "grpc+stdio://"])
        .stderr(std::process::Stdio::null());
    let host = StdioHost::spawn(command).await.expect("spawn the host");
    let pid = host.pid().expect("the host's pid");
    let mut driver = Driver::open(
        host.client.clone(),
        proto::OpenSessionRequest {
            output_truncation: 2,
            max_pending_delegate_calls: 1_000_000,
            ..Default::default()
        },
        responder,
    )
    .await
    .expect("open a session");
    exec(&mut driver, r#"text("bench")"#, &[], None).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (before, threads_before) = tree_usage(pid);
    let park = tools(1);
    for _ in 0..cells {
        let mut request = exec_request("await tools.t0({}); text('never');");
        request.enabled_tools = park.clone();
        // Codex's host takes 0 as "no yield time"; a few milliseconds park the cell.
        request.yield_time_ms = 10;
        driver.run(request).await.expect("a parked cell");
    }
    // Past our hibernation delay (5 s).
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let (after, threads_after) = tree_usage(pid);
    let _ = driver.close().await;
    (after.saturating_sub(before), threads_before, threads_after)
}

#[expect(clippy::print_stdout, reason = "the benchmark's table is its output")]
fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if !options.parked.is_empty() {
        println!(
            "{:<8} {:>7} {:>12} {:>12} {:>10}",
            "host", "cells", "RSS growth", "per cell", "threads"
        );
        for cells in &options.parked {
            for (host, path) in &options.hosts {
                let (grown, before, after) = runtime.block_on(parked(path, *cells));
                println!(
                    "{host:<8} {cells:>7} {:>8.1} MiB {:>8.3} MiB {:>4}→{:<5}",
                    grown as f64 / 1024.0,
                    grown as f64 / 1024.0 / *cells as f64,
                    before,
                    after
                );
            }
        }
        return;
    }
    // Each host's figures round by round (for the ratios' intervals), and all together.
    let mut rounds: Vec<Vec<Figures>> = options.hosts.iter().map(|_| Vec::new()).collect();
    for _ in 0..options.rounds {
        for ((_, path), host_rounds) in options.hosts.iter().zip(&mut rounds) {
            let mut figures = Figures::default();
            runtime.block_on(round(path, &options, &mut figures));
            host_rounds.push(figures);
        }
    }
    let figures: Vec<Figures> = rounds.iter().map(|host| merged(host)).collect();
    println!(
        "rounds {} (interleaved), {} execs per round and figure, client answer delays {:?} ms",
        options.rounds, options.iterations, options.delays
    );
    for (host, path) in &options.hosts {
        // What an install of the host weighs: the one file (ours carries its runtime).
        let bytes = std::fs::metadata(path).map_or(0, |metadata| metadata.len());
        println!(
            "{host}: {} ({:.1} MiB)",
            path.display(),
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    println!(
        "{:<42} {:<8} {:>8} {:>10} {:>10} {:>10}",
        "figure", "host", "samples", "p50", "p95", "mean"
    );
    let names: Vec<String> = figures
        .first()
        .map(|first| first.series.iter().map(|(name, _)| name.clone()).collect())
        .unwrap_or_default();
    for name in &names {
        for ((host, _), host_figures) in options.hosts.iter().zip(&figures) {
            let values = host_figures.get(name);
            println!(
                "{name:<42} {host:<8} {:>8} {:>10} {:>10} {:>10}",
                values.len(),
                show(median(values)),
                show(percentile(values, 0.95)),
                show(mean(values))
            );
        }
        if let [ours, theirs] = figures.as_slice() {
            let (ours, theirs) = (ours.get(name), theirs.get(name));
            let (low, high) = ratio_interval(&rounds[0], &rounds[1], name);
            println!(
                "{name:<42} {:<8} {:>8} {:>10} {:>10} {:>10}   p50 ratio's 95% interval {low:.2}–{high:.2}×",
                "ratio",
                "",
                format!("{:.2}×", median(theirs) / median(ours)),
                format!("{:.2}×", percentile(theirs, 0.95) / percentile(ours, 0.95)),
                format!("{:.2}×", mean(theirs) / mean(ours))
            );
        }
    }
}
