//! What `--state-dir` costs a JSON-lines client: `code-mode serve --jsonl` without it,
//! with it, and both again beside 100 other sessions that each hold 1 MiB of stored
//! values, interleaved round by round in one run.
//!
//! `cargo build --release -p code-mode-cli -p code-mode-bin` first; then
//! `cargo bench --bench state_dir -- [--rounds N] [--iterations M] [--calls K]
//! [--others N] [--binary PATH] [--durability disk|process] [--state-url URL]`
//! (`--binary`: another build's `code-mode`, to compare; `--state-url`: two more servers,
//! their state in that Postgres database).
//!
//! Per server and round, in one session: `exec` of `text(1)` (request to answer: with a
//! state directory, the session's changes are written before the answer goes out), and a
//! cell making K sequential nested calls the client answers at once, over K (each call's
//! `tool_call` event waits for a write, and each answer is recorded before its cell gets
//! it). Measured in the same rounds, the floors physics sets: one `fdatasync` of a 4 KiB
//! write in the state directory's file system, and with `--state-url` one round trip to
//! the database (`SELECT 1` on a connection of its own). Printed: samples, p50, p95 and
//! mean per figure and server, the ratios of medians to the server without state, and
//! what a durable exec and nested call add, in `fdatasync`s and round trips.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

struct Options {
    rounds: usize,
    iterations: usize,
    calls: usize,
    others: usize,
    binary: Option<PathBuf>,
    /// `--state-durability` for the servers with state (the default's when absent).
    durability: Option<String>,
    /// A Postgres database: two more servers keep their state there.
    state_url: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        rounds: 5,
        iterations: 40,
        calls: 20,
        others: 100,
        binary: None,
        durability: None,
        state_url: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => options.rounds = number(args.next()),
            "--iterations" => options.iterations = number(args.next()),
            "--calls" => options.calls = number(args.next()),
            "--others" => options.others = number(args.next()),
            "--binary" => options.binary = args.next().map(PathBuf::from),
            "--durability" => options.durability = args.next(),
            "--state-url" => options.state_url = args.next(),
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

fn number(arg: Option<String>) -> usize {
    arg.and_then(|value| value.parse().ok())
        .filter(|value| *value > 0)
        .unwrap_or_else(|| panic!("a positive number is expected"))
}

/// Where a server keeps its state.
enum Store {
    None,
    Dir(PathBuf),
    Url(String),
}

/// One `serve --jsonl` process and its measured session.
struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    session: String,
}

impl Server {
    fn start(binary: &PathBuf, store: &Store, durability: Option<&str>) -> Self {
        let mut command = Command::new(binary);
        command.args(["serve", "--jsonl"]);
        match store {
            Store::None => {}
            Store::Dir(dir) => {
                command.arg("--state-dir").arg(dir);
            }
            Store::Url(url) => {
                command.arg("--state-url").arg(url);
            }
        }
        if let (Some(durability), Store::Dir(_) | Store::Url(_)) = (durability, store) {
            command.args(["--state-durability", durability]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("spawning {}: {error}", binary.display()));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut server = Self {
            child,
            stdin,
            stdout,
            next_id: 0,
            session: String::new(),
        };
        let opened = server.request("open_session", &serde_json::json!({}));
        server.session = opened["result"]["session"]
            .as_str()
            .expect("a session id")
            .to_owned();
        server
    }

    fn send(&mut self, message: &serde_json::Value) {
        writeln!(self.stdin, "{message}").expect("write");
        self.stdin.flush().expect("flush");
    }

    fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line:?}"))
    }

    /// Sends a request and answers every tool call at once until its answer comes.
    fn request(&mut self, method: &str, params: &serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&serde_json::json!({"id": id, "method": method, "params": params}));
        loop {
            let line = self.line();
            if line.get("event").and_then(|event| event.as_str()) == Some("tool_call") {
                let call = line["call"].clone();
                self.send(&serde_json::json!({"method": "tool_result", "params": {"call": call, "result": 1}}));
                continue;
            }
            if line.get("id").and_then(serde_json::Value::as_u64) == Some(id) {
                assert!(line.get("error").is_none(), "{line}");
                return line;
            }
        }
    }

    /// The wall time of one `exec` of `source`, in microseconds.
    fn exec(&mut self, source: &str) -> f64 {
        let params = serde_json::json!({"session": self.session, "source": source, "tools": [{"name": "t"}]});
        let started = Instant::now();
        let answer = self.request("exec", &params);
        let elapsed = started.elapsed().as_secs_f64() * 1e6;
        assert_eq!(answer["result"]["response"]["type"], "result", "{answer}");
        elapsed
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The wall time of one 4 KiB write and `fdatasync` of `file`, in microseconds.
fn fdatasync(file: &mut std::fs::File) -> f64 {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0)).expect("seek");
    let started = Instant::now();
    file.write_all(&[7_u8; 4096]).expect("write");
    file.sync_data().expect("fdatasync");
    started.elapsed().as_secs_f64() * 1e6
}

/// The wall time of one `SELECT 1` on `client`, in microseconds.
fn round_trip(client: &mut postgres::Client) -> f64 {
    let started = Instant::now();
    client.simple_query("SELECT 1").expect("SELECT 1");
    started.elapsed().as_secs_f64() * 1e6
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (percentile(values, 0.5), percentile(values, 0.95), mean)
}

#[expect(clippy::print_stdout, reason = "the benchmark's table is its output")]
fn main() {
    let options = options();
    let binary = options.binary.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join("code-mode")))
            .unwrap_or_default()
    });
    // 1 MiB of JSON text: a string of that many bytes.
    let big = serde_json::Value::String("x".repeat(1 << 20));
    let scratch =
        std::env::temp_dir().join(format!("code-mode-state-bench-{}", std::process::id()));
    let calls_source = format!(
        "for (let i = 0; i < {}; i++) await tools.t({{i}});",
        options.calls
    );
    let mut names = vec!["plain", "state-dir", "plain+busy", "state+busy"];
    if options.state_url.is_some() {
        names.extend(["postgres", "pg+busy"]);
    }
    // [server][figure] samples: exec, per nested call.
    let mut samples: Vec<[Vec<f64>; 2]> = names.iter().map(|_| Default::default()).collect();
    std::fs::create_dir_all(&scratch).expect("the scratch directory");
    let mut synced = std::fs::File::create(scratch.join("fdatasync")).expect("a file to sync");
    let mut database = options.state_url.as_ref().map(|url| {
        postgres::Client::connect(url, postgres::NoTls).expect("the bench connects to Postgres")
    });
    let (mut syncs, mut trips) = (Vec::new(), Vec::new());
    for round in 0..options.rounds {
        for _ in 0..options.iterations {
            syncs.push(fdatasync(&mut synced));
            if let Some(client) = database.as_mut() {
                trips.push(round_trip(client));
            }
        }
        for (which, name) in names.iter().enumerate() {
            let store = match (which, &options.state_url) {
                (0 | 2, _) => Store::None,
                (1 | 3, _) => Store::Dir(scratch.join(format!("round-{round}-{which}"))),
                (_, Some(url)) => Store::Url(url.clone()),
                (_, None) => unreachable!("the Postgres servers come with --state-url"),
            };
            let mut server = Server::start(&binary, &store, options.durability.as_deref());
            if name.ends_with("busy") {
                // Other sessions, each holding 1 MiB, opened before the measured one is
                // used: what the state keeper must not write again on its behalf.
                for _ in 0..options.others {
                    server.request(
                        "open_session",
                        &serde_json::json!({"stored_values": {"big": big}}),
                    );
                }
            }
            // Warm up: the runtime process, the session's isolate.
            for _ in 0..3 {
                server.exec("text(1)");
            }
            for _ in 0..options.iterations {
                samples[which][0].push(server.exec("text(1)"));
            }
            for _ in 0..(options.iterations / 4).max(1) {
                let with_calls = server.exec(&calls_source);
                let without = server.exec("text(1)");
                samples[which][1].push((with_calls - without) / options.calls as f64);
            }
            eprintln!("round {round}: {name} done");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "{:<22} {:<10} {:>8} {:>10} {:>10} {:>10}",
        "figure", "server", "samples", "p50 µs", "p95 µs", "mean µs"
    );
    let figures = ["exec text(1)", "nested call"];
    let mut medians = vec![[0.0; 2]; names.len()];
    for (figure, label) in figures.iter().enumerate() {
        for (which, name) in names.iter().enumerate() {
            let values = &mut samples[which][figure];
            let count = values.len();
            let (p50, p95, mean) = summary(values);
            medians[which][figure] = p50;
            println!("{label:<22} {name:<10} {count:>8} {p50:>10.0} {p95:>10.0} {mean:>10.0}");
        }
    }
    let floors = [("fdatasync 4 KiB", &mut syncs), ("SELECT 1", &mut trips)];
    let mut floor = [0.0; 2];
    for (which, (label, values)) in floors.into_iter().enumerate() {
        if values.is_empty() {
            continue;
        }
        let count = values.len();
        let (p50, p95, mean) = summary(values);
        floor[which] = p50;
        println!(
            "{label:<22} {:<10} {count:>8} {p50:>10.0} {p95:>10.0} {mean:>10.0}",
            "-"
        );
    }
    for (figure, label) in figures.iter().enumerate() {
        let added = medians[1][figure] - medians[0][figure];
        print!(
            "{label}: state-dir adds {added:.0} µs p50 = {:.2} fdatasyncs",
            added / floor[0]
        );
        if names.len() > 4 {
            let added = medians[4][figure] - medians[0][figure];
            print!(
                "; postgres adds {added:.0} µs p50 = {:.2} round trips",
                added / floor[1]
            );
        }
        println!();
    }
    for (figure, label) in figures.iter().enumerate() {
        println!(
            "{label}: p50 ratios: state-dir / plain = {:.2}; state+busy / plain+busy = {:.2}; state+busy / state-dir = {:.2}",
            medians[1][figure] / medians[0][figure],
            medians[3][figure] / medians[2][figure],
            medians[3][figure] / medians[1][figure]
        );
        if names.len() > 4 {
            println!(
                "{label}: p50 ratios: postgres / plain = {:.2}; pg+busy / plain+busy = {:.2}",
                medians[4][figure] / medians[0][figure],
                medians[5][figure] / medians[2][figure]
            );
        }
    }
}
