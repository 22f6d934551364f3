//! The tables: children's figures parsed, percentiles taken, and printed.

use super::*;

#[derive(Clone)]
pub(crate) struct Sample {
    pub(crate) cold: u128,
    pub(crate) spawn: u128,
    pub(crate) round_trip: u128,
    /// One `tools.tool_search` call; 0 without deferred tools.
    pub(crate) search: u128,
    pub(crate) rss_delta_kib: u64,
    pub(crate) warm: Vec<u128>,
    pub(crate) paced: Vec<u128>,
    pub(crate) typical_js: Vec<u128>,
    pub(crate) typical_ts: Vec<u128>,
}

/// Parses `key=value` pairs; lists are comma-separated.
pub(crate) fn parse_pairs(line: &str) -> std::collections::HashMap<&str, Vec<u128>> {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| {
            let values = value.split(',').filter_map(|v| v.parse().ok()).collect();
            (key, values)
        })
        .collect()
}

pub(crate) fn parse_sample(line: &str) -> Option<Sample> {
    let pairs = parse_pairs(line);
    let one = |key: &str| pairs.get(key).and_then(|values| values.first().copied());
    Some(Sample {
        cold: one("cold_ns")?,
        spawn: one("spawn_ns")?,
        round_trip: one("round_trip_ns")?,
        search: one("search_ns")?,
        rss_delta_kib: u64::try_from(one("rss_delta_kib")?).ok()?,
        warm: pairs.get("warm_ns")?.clone(),
        paced: pairs.get("paced_ns")?.clone(),
        typical_js: pairs.get("js_ns")?.clone(),
        typical_ts: pairs.get("ts_ns")?.clone(),
    })
}

pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], fraction: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

/// The mean of `times` (0 for none).
pub(crate) fn mean(times: &[u128]) -> u128 {
    times.iter().sum::<u128>() / times.len().max(1) as u128
}

pub(crate) fn format_duration(nanos: u128) -> String {
    if nanos >= 10_000_000 {
        format!("{:.1} ms", nanos as f64 / 1e6)
    } else {
        format!("{:.0} µs", nanos as f64 / 1e3)
    }
}

#[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
pub(crate) fn exec_table(options: &Options) {
    println!(
        "{:<16} {:<10} {:>6} {:>7} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
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
        for tool_count in &options.tool_counts {
            // With more than one tracing mode, their samples alternate, so that the
            // machine's drift falls on each alike.
            let mut by_mode: Vec<Vec<Sample>> = vec![Vec::new(); options.tracing.len()];
            for _ in 0..options.samples {
                for (mode, samples) in options.tracing.iter().zip(by_mode.iter_mut()) {
                    let line = run_child_traced(
                        &[
                            "--child".to_owned(),
                            (*transport).to_owned(),
                            tool_count.clone(),
                            options.warm_iterations.to_string(),
                        ],
                        mode,
                    );
                    samples.push(
                        parse_sample(&line).unwrap_or_else(|| {
                            panic!("a sample printed an unreadable line: {line}")
                        }),
                    );
                }
            }
            for (mode, samples) in options.tracing.iter().zip(&by_mode) {
                let label = if mode == "off" {
                    (*transport).to_owned()
                } else {
                    format!("{transport}+{mode}")
                };
                exec_rows(options, &label, transport, tool_count, samples);
            }
            if let Some(off) = options.tracing.iter().position(|mode| mode == "off") {
                for (mode, samples) in options.tracing.iter().zip(&by_mode) {
                    if mode != "off" {
                        mode_differences(
                            options,
                            (transport, tool_count),
                            (mode, &by_mode[off], samples),
                        );
                    }
                }
            }
        }
    }
}

/// A row of the exec table: its scenario, its times (unsorted), and its iterations and
/// warm-ups per sample.
type Row = (&'static str, Vec<u128>, usize, usize);

/// The rows of one transport and tool count, from `samples`.
fn rows_of(options: &Options, transport: &str, tool_count: &str, samples: &[Sample]) -> Vec<Row> {
    let each = |value: fn(&Sample) -> u128| samples.iter().map(value).collect::<Vec<_>>();
    let all = |values: fn(&Sample) -> &Vec<u128>| {
        samples
            .iter()
            .flat_map(|s| values(s).iter().copied())
            .collect::<Vec<_>>()
    };
    let warm = options.warm_iterations;
    let mut rows: Vec<Row> = vec![
        ("cold_exec", each(|s| s.cold), 1, 0),
        ("warm_exec", all(|s| &s.warm), warm, 1),
        ("warm_exec_paced", all(|s| &s.paced), warm, 1),
        ("warm_exec_js", all(|s| &s.typical_js), warm, 1),
        ("warm_exec_ts", all(|s| &s.typical_ts), warm, 1),
        (
            "tool_round_trip",
            each(|s| s.round_trip),
            ROUND_TRIPS as usize,
            0,
        ),
    ];
    if tool_count.ends_with('d') {
        rows.push(("tool_search", each(|s| s.search), ROUND_TRIPS as usize, 1));
    }
    if transport.starts_with("ipc") || transport == "tcp-tls" {
        rows.insert(0, ("spawn+handshake", each(|s| s.spawn), 1, 0));
        rows.insert(2, ("cold_exec+spawn", each(|s| s.cold + s.spawn), 1, 0));
    }
    rows
}

/// The rows of one transport, tool count and tracing mode.
#[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
fn exec_rows(
    options: &Options,
    label: &str,
    transport: &str,
    tool_count: &str,
    samples: &[Sample],
) {
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
    for (scenario, mut times, iterations, warmups) in
        rows_of(options, transport, tool_count, samples)
    {
        times.sort_unstable();
        let mean = mean(&times);
        println!(
            "{:<16} {:<10} {:>6} {:>7} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
            scenario,
            label,
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

/// How many times [`mode_differences`] resamples the children.
const RESAMPLES: usize = 2_000;

/// Each row's p50 in `mode` minus its p50 in `off`, with a 95% interval: the children
/// are resampled with replacement, in the pairs they ran in (the i-th child of each mode
/// ran back to back), so that the spread between children, and not only between the
/// execs of one child, shows in the interval. One line per row.
#[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
fn mode_differences(
    options: &Options,
    (transport, tool_count): (&str, &str),
    (mode, off, on): (&str, &[Sample], &[Sample]),
) {
    // Each row's name and p50.
    let p50s = |samples: &[Sample]| -> Vec<(&'static str, i128)> {
        rows_of(options, transport, tool_count, samples)
            .into_iter()
            .map(|(name, mut times, _, _)| {
                times.sort_unstable();
                (name, percentile(&times, 0.5) as i128)
            })
            .collect()
    };
    let difference = |off: &[Sample], on: &[Sample]| -> Vec<(&'static str, i128)> {
        p50s(on)
            .into_iter()
            .zip(p50s(off))
            .map(|((name, on), (_, off))| (name, on - off))
            .collect()
    };
    let pairs = off.len().min(on.len());
    if pairs == 0 {
        return;
    }
    let measured = difference(off, on);
    let mut resampled: Vec<Vec<i128>> = vec![Vec::with_capacity(RESAMPLES); measured.len()];
    for drawn in code_mode_benches::resamples(pairs, RESAMPLES) {
        let (mut off_drawn, mut on_drawn) = (Vec::new(), Vec::new());
        for index in drawn {
            off_drawn.push(off[index].clone());
            on_drawn.push(on[index].clone());
        }
        for (row, (_, value)) in resampled.iter_mut().zip(difference(&off_drawn, &on_drawn)) {
            row.push(value);
        }
    }
    println!("  {mode} minus off, p50 (95% interval, children resampled in pairs):");
    for ((name, value), mut spread) in measured.into_iter().zip(resampled) {
        spread.sort_unstable();
        println!(
            "    {name:<16} {:>+7.0} µs ({:+.0} to {:+.0})",
            value as f64 / 1e3,
            percentile(&spread, 0.025) as f64 / 1e3,
            percentile(&spread, 0.975) as f64 / 1e3
        );
    }
}

/// One throughput child's run: its cells' latencies (sorted), seconds and CPU time.
struct ThroughputRun {
    latencies: Vec<u128>,
    seconds: f64,
    cpu: u128,
}

impl ThroughputRun {
    fn of(transport: &str, sessions: usize, options: &Options, mode: &str) -> Self {
        let line = run_child_traced(
            &[
                "--child-throughput".to_owned(),
                transport.to_owned(),
                sessions.to_string(),
                options.throughput_secs.to_string(),
            ],
            mode,
        );
        let pairs = parse_pairs(&line);
        let first = |key: &str| pairs.get(key).and_then(|v| v.first().copied());
        let mut latencies = pairs.get("latencies_ns").cloned().unwrap_or_default();
        latencies.sort_unstable();
        Self {
            latencies,
            seconds: first("elapsed_ns").unwrap_or(1) as f64 / 1e9,
            cpu: first("cpu_ns").unwrap_or(0),
        }
    }

    fn mean(&self) -> u128 {
        mean(&self.latencies)
    }
}

/// Trivial cells back to back, per transport, session count and `--tracing` mode. With
/// `--throughput-rounds` above one, each round runs every mode once, in turn, and a traced
/// mode's rows end with its p50 and mean minus the first mode's, per round and their
/// median: back to back the two cores are busy, so a mode's cost shows in the same
/// round's figures, where the machine's speed from one minute to the next does not.
#[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
pub(crate) fn throughput_table(options: &Options) {
    println!();
    println!(
        "{:<16} {:<10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "throughput",
        "transport",
        "sessions",
        "seconds",
        "cells",
        "cells/s",
        "p50/exec",
        "mean/exec",
        "p99/exec",
        "cpu/cell"
    );
    for transport in &options.transports {
        for &sessions in &options.sessions {
            let mut by_mode: Vec<Vec<ThroughputRun>> =
                options.tracing.iter().map(|_| Vec::new()).collect();
            for _ in 0..options.throughput_rounds.max(1) {
                for (mode, runs) in options.tracing.iter().zip(&mut by_mode) {
                    runs.push(ThroughputRun::of(transport, sessions, options, mode));
                }
            }
            for (mode, runs) in options.tracing.iter().zip(&by_mode) {
                let label = if mode == "off" {
                    (*transport).to_owned()
                } else {
                    format!("{transport}+{mode}")
                };
                let mut latencies: Vec<u128> = runs
                    .iter()
                    .flat_map(|run| run.latencies.iter().copied())
                    .collect();
                latencies.sort_unstable();
                let seconds: f64 = runs.iter().map(|run| run.seconds).sum();
                let cpu: u128 = runs.iter().map(|run| run.cpu).sum();
                let cells = latencies.len();
                println!(
                    "{:<16} {:<10} {:>8} {:>8.1} {:>8} {:>10.0} {:>10} {:>10} {:>10} {:>10}",
                    "trivial_cells",
                    label,
                    sessions,
                    seconds,
                    cells,
                    cells as f64 / seconds,
                    format_duration(percentile(&latencies, 0.5)),
                    format_duration(mean(&latencies)),
                    format_duration(percentile(&latencies, 0.99)),
                    format_duration(cpu / cells.max(1) as u128),
                );
            }
            if options.throughput_rounds > 1 {
                round_differences(options, &by_mode);
            }
        }
    }
}

/// Each traced mode's p50 and mean minus the first mode's, round by round, and their
/// medians.
#[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
fn round_differences(options: &Options, by_mode: &[Vec<ThroughputRun>]) {
    let Some((first, traced)) = by_mode.split_first() else {
        return;
    };
    let signed = |after: u128, before: u128| after as i128 - before as i128;
    let median = |mut values: Vec<i128>| {
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    };
    let micros = |values: &[i128]| {
        values
            .iter()
            .map(|nanos| format!("{:+}", nanos / 1_000))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (mode, runs) in options.tracing.iter().skip(1).zip(traced) {
        let p50: Vec<i128> = runs
            .iter()
            .zip(first)
            .map(|(run, base)| {
                signed(
                    percentile(&run.latencies, 0.5),
                    percentile(&base.latencies, 0.5),
                )
            })
            .collect();
        let mean: Vec<i128> = runs
            .iter()
            .zip(first)
            .map(|(run, base)| signed(run.mean(), base.mean()))
            .collect();
        println!(
            "  {mode} minus {}, per round (µs): p50 {}; mean {}; medians: p50 {:+} µs, mean {:+} µs",
            options.tracing[0],
            micros(&p50),
            micros(&mean),
            median(p50.clone()) / 1_000,
            median(mean.clone()) / 1_000,
        );
    }
}

#[expect(clippy::print_stdout, reason = "the benchmark's tables are its output")]
pub(crate) fn idle_table(options: &Options) {
    println!();
    println!(
        "{:<16} {:<10} {:>6} {:>12} {:>12} {:>12} {:>9} {:>10} {:>16} {:>8}",
        "idle",
        "transport",
        "cells",
        "rss before",
        "rss after",
        "per cell",
        "threads",
        "park p.c.",
        "10 s after end",
        "/ before"
    );
    // Hibernation off (the cells keep their isolates), or after a delay.
    for hibernate in &options.idle_modes {
        let label = if hibernate == "off" {
            "parked_cells"
        } else {
            "hibernated_cells"
        };
        for transport in &options.transports {
            let line = run_child(&[
                "--child-idle".to_owned(),
                (*transport).to_owned(),
                options.idle_cells.to_string(),
                hibernate.clone(),
            ]);
            let pairs = parse_pairs(&line);
            let kib = |key: &str| pairs.get(key).and_then(|v| v.first().copied()).unwrap_or(0);
            let (before, after, idle) = (kib("before_kib"), kib("after_kib"), kib("idle_kib"));
            let per_cell = after.saturating_sub(before) as f64 / options.idle_cells.max(1) as f64;
            let parking_us = kib("parking_ms") as f64 * 1000.0 / options.idle_cells.max(1) as f64;
            println!(
                "{:<16} {:<10} {:>6} {:>8.1} MiB {:>8.1} MiB {:>8.3} MiB {:>4}→{:<4} {:>7.0} µs {:>12.1} MiB {:>7.2}x",
                label,
                transport,
                options.idle_cells,
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                per_cell / 1024.0,
                kib("threads_before"),
                kib("threads_after"),
                parking_us,
                idle as f64 / 1024.0,
                idle as f64 / before.max(1) as f64
            );
        }
    }
}
