//! `code-mode mcp --http` as a service, with real parts: the official Python SDK and raw
//! HTTP requests (`code-mode-cli/tests/mcp/http_service.py`) against the real binary, over
//! HTTPS with a test CA where TLS is the point. Credentials, start-up refusals, `Origin`,
//! the session cap, idle expiry of abandoned sessions (runtime threads, the server's
//! session count and memory checked from `/proc`).

use super::mcp::{assert_result, check_driven, dep, deps, drive, one_fixture};
use super::{BIN, Scratch, text};
use code_mode_conformance::remote::Pki;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bearer token of these tests.
const TOKEN: &str = "test-token-0123456789abcdef";

/// A `code-mode mcp --http` process, killed on drop; its stderr is kept.
pub(super) struct HttpServer {
    child: std::process::Child,
    pub(super) url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    /// Starts the server and waits for its `serving ... on <url>` line; the error is
    /// everything it printed before it exited.
    pub(super) fn start(args: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("CODE_MODE_MCP_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn code-mode mcp --http");
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut before = Vec::new();
        let url = loop {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait().unwrap();
                return Err(format!("{} ({status})", before.join("\n")));
            };
            if let Some(url) = line.strip_prefix("code-mode mcp: serving streamable HTTP on ") {
                break url.to_owned();
            }
            before.push(line);
        };
        let log = Arc::new(Mutex::new(before));
        let kept = Arc::clone(&log);
        // Keep draining stderr so that the server never blocks on it.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Ok(Self { child, url, log })
    }

    /// The URL to connect to: a server on 0.0.0.0 is reached through loopback.
    fn local_url(&self) -> String {
        self.url.replace("0.0.0.0", "127.0.0.1")
    }

    pub(super) fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (up to `limit`) for a log line containing `needle` after line `from`.
    fn wait_for_log(&self, from: usize, needle: &str, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            let log = self.log.lock().unwrap();
            if log[from.min(log.len())..]
                .iter()
                .any(|line| line.contains(needle))
            {
                return true;
            }
            drop(log);
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub(super) fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The runtime process the server started (its one child).
    fn runtime_pid(&self) -> u32 {
        super::hibernation::runtime_of(self.child.id())
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many threads a process has.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// A process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Runs `http_service.py <mode> <url> <args>` and returns its JSON.
pub(super) fn service(mode: &str, url: &str, args: &[&str]) -> Value {
    let output = Command::new(dep(".venv/bin/python"))
        .arg(deps().join("http_service.py"))
        .args([mode, url])
        .args(args)
        .output()
        .expect("run http_service.py");
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{mode}: stdout: {stdout}\nstderr: {}",
        text(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{mode}: not JSON: {stdout}"))
}

/// Certificates for `localhost` and `127.0.0.1`, and the token file.
struct Files {
    scratch: Scratch,
    ca: String,
    cert: String,
    key: String,
    token: String,
}

fn files() -> Files {
    let scratch = Scratch::new();
    let pki = Pki::default();
    let server = pki.server();
    let path = |name: &str, contents: &str| scratch.write(name, contents).display().to_string();
    Files {
        ca: path("ca.pem", &pki.ca_pem()),
        cert: path("server.pem", &server.cert_pem),
        key: path("server.key", &server.key_pem),
        token: path("token", &format!("{TOKEN}\n")),
        scratch,
    }
}

#[test]
fn off_loopback_it_needs_a_token_and_tls_and_then_serves_the_sdk_over_https() {
    let files = files();
    let refused = |args: &[&str], env: &[(&str, &str)]| {
        HttpServer::start(args, env)
            .err()
            .expect("refused to start")
    };
    // Each refusal says what to add.
    let no_flag = refused(&["mcp", "--http", "0.0.0.0:0"], &[]);
    assert!(no_flag.contains("--allow-remote"), "{no_flag}");
    let no_token = refused(&["mcp", "--http", "0.0.0.0:0", "--allow-remote"], &[]);
    assert!(
        no_token.contains("needs a credential")
            && no_token.contains("--auth-token-file")
            && no_token.contains("CODE_MODE_MCP_TOKEN")
            && no_token.contains("exit status: 2"),
        "{no_token}"
    );
    let no_tls = refused(
        &["mcp", "--http", "0.0.0.0:0", "--allow-remote"],
        &[("CODE_MODE_MCP_TOKEN", TOKEN)],
    );
    assert!(
        no_tls.contains("--tls-cert") && no_tls.contains("--allow-plaintext-remote"),
        "{no_tls}"
    );
    let weak = refused(
        &["mcp", "--http", "127.0.0.1:0"],
        &[("CODE_MODE_MCP_TOKEN", "guessable")],
    );
    assert!(weak.contains("at least 16"), "{weak}");
    let forever = refused(
        &[
            "mcp",
            "--http",
            "127.0.0.1:0",
            "--session-idle-timeout-secs",
            "0",
        ],
        &[],
    );
    assert!(forever.contains("at least 1"), "{forever}");
    let unreadable = refused(
        &[
            "mcp",
            "--http",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            &files.key,
        ],
        &[],
    );
    assert!(unreadable.contains("/nonexistent.pem"), "{unreadable}");

    // Plaintext off loopback only when asked, with a warning.
    let plaintext = HttpServer::start(
        &[
            "mcp",
            "--http",
            "0.0.0.0:0",
            "--allow-remote",
            "--allow-plaintext-remote",
            "--auth-token-file",
            &files.token,
        ],
        &[],
    )
    .expect("starts");
    assert!(
        plaintext.url.starts_with("http://0.0.0.0:"),
        "{}",
        plaintext.url
    );
    assert!(
        plaintext.wait_for_log(0, "without TLS", Duration::from_secs(10)),
        "{}",
        plaintext.log()
    );
    drop(plaintext);

    // Remote with a token over HTTPS: the official SDK works unchanged given the token
    // and the CA, and is refused without the token.
    let scratch = Scratch::new();
    let tools = one_fixture(&scratch);
    let server = HttpServer::start(
        &[
            "mcp",
            "--tools",
            tools.to_str().unwrap(),
            "--http",
            "0.0.0.0:0",
            "--allow-remote",
            "--auth-token-file",
            &files.token,
            "--tls-cert",
            &files.cert,
            "--tls-key",
            &files.key,
        ],
        &[],
    )
    .expect("starts with a token and TLS");
    assert!(server.url.starts_with("https://0.0.0.0:"), "{}", server.url);
    let url = server.local_url();
    check_driven(&drive(&["http", &url, TOKEN, &files.ca]));

    let without = service("sdk", &url, &["--ca", &files.ca]);
    assert!(
        without["error"].as_str().is_some(),
        "the SDK fails without the token: {without}"
    );
    let missing = service("probe", &url, &["--ca", &files.ca]);
    assert_eq!(missing["status"], 401, "{missing}");
    assert_eq!(missing["www_authenticate"], r#"Bearer realm="code-mode""#);
    let wrong = service(
        "probe",
        &url,
        &["--ca", &files.ca, "--token", "test-token-0123456789abcdeg"],
    );
    assert_eq!(wrong["status"], 401, "{wrong}");
    assert!(
        wrong["www_authenticate"]
            .as_str()
            .unwrap()
            .contains(r#"error="invalid_token""#),
        "{wrong}"
    );
    // Credentials are checked before anything else: no path is revealed either.
    let elsewhere = service(
        "probe",
        &url.replace("/mcp", "/other"),
        &["--ca", &files.ca],
    );
    assert_eq!(elsewhere["status"], 401, "{elsewhere}");
    let right = service("sdk", &url, &["--ca", &files.ca, "--token", TOKEN]);
    assert_result(&right["exec"], "Script completed", &["42"]);
    // The session DELETE the SDK sends on close is answered as it expects.
    assert_eq!(right["warnings"], serde_json::json!([]), "{right}");
    // A client that does not trust the server's CA does not get through the handshake.
    let untrusted = service("sdk", &url, &["--token", TOKEN]);
    assert!(untrusted["error"].as_str().is_some(), "{untrusted}");
    drop(files.scratch);
}

#[test]
fn a_foreign_origin_is_refused() {
    let files = files();
    let server = HttpServer::start(
        &[
            "mcp",
            "--http",
            "127.0.0.1:0",
            "--auth-token-file",
            &files.token,
            "--allowed-origin",
            "https://app.example:8443",
        ],
        &[],
    )
    .expect("starts");
    let url = server.url.clone();
    let status = |origin: Option<&str>| {
        let mut args = vec!["--token", TOKEN];
        let header;
        if let Some(origin) = origin {
            header = format!("Origin:{origin}");
            args.extend(["--header", header.as_str()]);
        }
        service("probe", &url, &args)["status"].as_u64().unwrap()
    };
    assert_eq!(status(Some("http://evil.example")), 403);
    assert_eq!(status(Some("https://app.example:9999")), 403);
    assert_eq!(status(Some("null")), 403);
    assert_eq!(status(Some("https://app.example:8443")), 200);
    // Pages of this machine, on a loopback server; and non-browser clients (no Origin).
    assert_eq!(status(Some("http://localhost:5173")), 200);
    assert_eq!(status(None), 200);
    // On loopback a configured token is required too.
    let missing = service("probe", &url, &[]);
    assert_eq!(missing["status"], 401, "{missing}");
}

#[test]
fn the_session_cap_refuses_new_sessions_and_keeps_the_open_ones() {
    let server = HttpServer::start(
        &["mcp", "--http", "127.0.0.1:0", "--max-sessions", "2"],
        &[],
    )
    .expect("starts");
    let seen = service("cap", &server.url, &[]);
    let third = &seen["third"];
    assert_eq!(third["status"], 503, "{seen}");
    assert_eq!(third["retry_after"], "30", "{seen}");
    let body: Value = serde_json::from_str(third["body"].as_str().unwrap()).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("2 sessions open") && message.contains("--max-sessions"),
        "{message}"
    );
    // The sessions that were open kept working, each with its own stored value.
    assert_result(&seen["first_after"], "Script completed", &["first"]);
    assert_result(&seen["second_after"], "Script completed", &["second"]);
    // Closing one freed its place.
    assert_eq!(seen["fourth"]["status"], 200, "{seen}");
    assert_eq!(seen["warnings"], serde_json::json!([]), "{seen}");
}

#[test]
fn a_session_busy_longer_than_the_idle_timeout_is_kept() {
    let server = HttpServer::start(
        &[
            "mcp",
            "--http",
            "127.0.0.1:0",
            "--session-idle-timeout-secs",
            "1",
        ],
        &[],
    )
    .expect("starts");
    // One `exec` runs 2.5 s, with no message in between; the session outlives it.
    let long = service("long", &server.url, &["2500"]);
    assert_result(&long["slept"], "Script completed", &["slept"]);
    assert_result(&long["after"], "Script completed", &["1"]);
}

#[test]
fn abandoned_sessions_are_shut_down_after_the_idle_timeout() {
    const SESSIONS: usize = 300;
    // Long enough that most of the 300 are still open when the last one has run its cell
    // (opening them takes seconds in a debug build), short enough for a test.
    const IDLE_SECS: u64 = 12;
    let server = HttpServer::start(
        &[
            "-v",
            "mcp",
            "--http",
            "127.0.0.1:0",
            "--session-idle-timeout-secs",
            &IDLE_SECS.to_string(),
            "--max-sessions",
            &SESSIONS.to_string(),
        ],
        &[],
    )
    .expect("starts");
    let url = server.url.clone();
    let scratch = Scratch::new();

    // The baseline: the runtime (started by the first cell) with no session open.
    let mut mark = server.log_len();
    let first = service("sdk", &url, &[]);
    assert_eq!(
        first["tools"],
        serde_json::json!(["exec", "wait"]),
        "{first}"
    );
    assert!(
        server.wait_for_log(mark, "open=0", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    let runtime = server.runtime_pid();
    let base_threads = threads(runtime);
    let host = server.child.id();

    let mut host_rss = Vec::new();
    let mut runtime_rss = Vec::new();
    for round in 0..2 {
        mark = server.log_len();
        let opened = service("abandon", &url, &[&SESSIONS.to_string()]);
        let ids: Vec<String> = serde_json::from_value(opened["sessions"].clone()).unwrap();
        assert_eq!(ids.len(), SESSIONS);
        // Each holds a parked isolate on a thread of its own, so the count below can tell
        // sessions that are gone from sessions that are not.
        let peak = threads(runtime);
        assert!(
            peak >= base_threads + SESSIONS / 2,
            "round {round}: {peak} threads, {base_threads} at rest"
        );

        // Abandoned: after the idle timeout each is shut down.
        assert!(
            server.wait_for_log(mark, "open=0", Duration::from_secs(IDLE_SECS * 5)),
            "round {round}: {}",
            server.log()
        );
        let list = scratch.write("ids.json", &serde_json::to_string(&ids).unwrap());
        let gone = service("gone", &url, &[list.to_str().unwrap()]);
        assert_eq!(
            gone["statuses"],
            serde_json::json!({"404": SESSIONS}),
            "round {round}"
        );
        // Their threads and isolates went with them.
        let started = Instant::now();
        while threads(runtime) > base_threads + 4 && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let after = threads(runtime);
        assert!(
            after <= base_threads + 4,
            "round {round}: {after} threads, {base_threads} at rest"
        );
        host_rss.push(rss_kib(host));
        runtime_rss.push(rss_kib(runtime));
        eprintln!(
            "round {round}: runtime threads {base_threads} at rest, {peak} with {SESSIONS} sessions, \
             {after} after expiry; RSS server {} KiB, runtime {} KiB",
            host_rss[round], runtime_rss[round]
        );
    }
    // Memory is bounded: a second round of abandoned sessions leaves no more behind than
    // the first (what the allocator kept after round one is reused, not added to).
    let grown = |figures: &[u64]| figures[1].saturating_sub(figures[0]);
    assert!(grown(&host_rss) < 16 * 1024, "server RSS {host_rss:?} KiB");
    assert!(
        grown(&runtime_rss) < 64 * 1024,
        "runtime RSS {runtime_rss:?} KiB"
    );
    // Every place is free again.
    assert_eq!(service("probe", &url, &[])["status"], 200);
}

/// Checks what a session taken back after its server was killed gives: the `wait` rebuilds
/// the cell (its tool call, cut short, fails with the text that says so; the output the
/// first answer gave is not given again), the stored value is there, and the tool ran once.
fn assert_resumed(resumed: &Value, ran: &std::path::Path) {
    let waited: Vec<String> = serde_json::from_value(resumed["wait"].clone())
        .unwrap_or_else(|_| panic!("a result: {resumed}"));
    assert!(waited[0].starts_with("Script completed"), "{waited:?}");
    let output = &waited[1..];
    assert_eq!(output.len(), 2, "{waited:?}");
    assert!(
        output[0].starts_with("slow failed: ")
            && output[0].contains("cut short by a restart of the server"),
        "{waited:?}"
    );
    assert_eq!(output[1], "after v", "{waited:?}");
    assert_result(&resumed["after"], "Script completed", &["v"]);
    assert_eq!(
        std::fs::read_to_string(ran).expect("the tool's log"),
        "ran\n",
        "the tool ran once, and never again after the restart"
    );
}

/// A tools file whose tool `slow` logs each run to `ran` and then takes 20 s.
fn slow_tool(scratch: &Scratch, ran: &std::path::Path) -> std::path::PathBuf {
    logging_tool(scratch, ran, "Takes its time.", "sleep 20")
}

/// A tools file whose tool `slow` (`description`) logs each run to `ran` and then runs the
/// shell command `then`, whose output is its answer.
fn logging_tool(
    scratch: &Scratch,
    ran: &std::path::Path,
    description: &str,
    then: &str,
) -> std::path::PathBuf {
    scratch.write(
        "tools.toml",
        &format!(
            "[[tool]]\nname = \"slow\"\ndescription = \"{description}\"\ncommand = [\"sh\", \"-c\", \"echo ran >> {}; {then}\"]\n",
            ran.display()
        ),
    )
}

/// Waits until the tool's log shows it ran.
fn until_ran(ran: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(ran).unwrap_or_default().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the tool never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The client's next requests on `session` go to the replica at `url`: it rebuilds the
/// cell ([`assert_resumed`]) and answers within `bound`.
fn resumed_within(url: &str, session: &str, ran: &std::path::Path, bound: Duration) {
    let started = std::time::Instant::now();
    let resumed = service("resume", url, &["--session", session]);
    assert_resumed(&resumed, ran);
    assert!(
        started.elapsed() < bound,
        "{:?} (at most {bound:?})",
        started.elapsed()
    );
}

/// `args` as `HttpServer::start` takes them.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The arguments of `mcp --http` replicas on `cluster` with `slow_tool` (logging to `ran`)
/// and a lease of `lease`; the first replica, started, with a session whose cell waits on
/// the tool, which ran.
fn replicas_on_postgres(
    scratch: &Scratch,
    cluster: &code_mode_conformance::PgCluster,
    ran: &std::path::Path,
    lease: &str,
) -> (Vec<String>, String, HttpServer) {
    let args = replica_args(scratch, cluster, ran, lease);
    let first = HttpServer::start(&strs(&args), &[]).expect("the first replica starts");
    let begun = service("begin", &first.url, &[]);
    let session = begun["session"].as_str().expect("a session id").to_owned();
    assert_result(&begun["exec"], "Script running with cell ID 1", &["before"]);
    until_ran(ran);
    (args, session, first)
}

/// The arguments of `mcp --http` replicas on `cluster` with `slow_tool` (logging to `ran`)
/// and a lease of `lease`.
fn replica_args(
    scratch: &Scratch,
    cluster: &code_mode_conformance::PgCluster,
    ran: &std::path::Path,
    lease: &str,
) -> Vec<String> {
    replica_args_with(&slow_tool(scratch, ran), cluster, lease)
}

/// The arguments of `mcp --http` replicas on `cluster` with the tools file `tools` and a
/// lease of `lease`.
pub(super) fn replica_args_with(
    tools: &std::path::Path,
    cluster: &code_mode_conformance::PgCluster,
    lease: &str,
) -> Vec<String> {
    [
        "mcp",
        "--http",
        "127.0.0.1:0",
        "--tools",
        tools.to_str().unwrap(),
        "--state-url",
        &cluster.url,
        "--state-lease",
        lease,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Two replicas of `mcp --http` on one Postgres (`--state-url`): a session opened on A,
/// its cell waiting on a call of the server's own tool, A killed with SIGKILL; the
/// client's next requests with the same session id go to B, which takes the session over
/// once A's lease ran out, rebuilds the cell and has its stored value.
#[test]
fn a_replica_takes_over_the_session_of_a_killed_one_through_postgres() {
    let scratch = Scratch::new();
    let cluster = code_mode_conformance::PgCluster::start();
    let ran = scratch.0.join("ran.log");
    let (args, session, mut a) = replicas_on_postgres(&scratch, &cluster, &ran, "2s");
    let mut b = HttpServer::start(&strs(&args), &[]).expect("B starts");
    assert_ne!(a.url, b.url);
    a.child.kill().expect("SIGKILL");
    a.child.wait().expect("reaped");
    // B waits for A's lease (2 s) to run out, no longer.
    resumed_within(&b.url, &session, &ran, Duration::from_secs(20));
    // A rolling update: B is replaced by C (stopped as Kubernetes stops it) while the
    // session is idle; the client's next call, on C, finds it whole.
    let c = HttpServer::start(&strs(&args), &[]).expect("C starts");
    let stopped = Command::new("kill")
        .args(["-TERM", &b.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(stopped.success());
    b.child.wait().expect("B stopped");
    let again = service("again", &c.url, &["--session", &session]);
    assert_result(&again["after"], "Script completed", &["v"]);
    assert_eq!(
        std::fs::read_to_string(&ran).expect("the tool's log"),
        "ran\n",
        "nothing ran again on C"
    );
}

/// `--state-dir` with `tools`: a server whose session `begin`s its durable cell, killed
/// with SIGKILL `after` the tool first ran (its log `ran` shows it), and started again on
/// the same port and directory. The restarted server and the session's id.
fn killed_after_the_tool_ran(
    tools: &std::path::Path,
    state: &std::path::Path,
    ran: &std::path::Path,
    after: Duration,
) -> (HttpServer, String) {
    let args = |address: &str| -> Vec<String> {
        [
            "mcp",
            "--http",
            address,
            "--tools",
            tools.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let first_args = args("127.0.0.1:0");
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut server = HttpServer::start(&first_args, &[]).expect("starts");
    let begun = service("begin", &server.url, &[]);
    let session = begun["session"].as_str().expect("a session id").to_owned();
    assert_result(&begun["exec"], "Script running with cell ID 1", &["before"]);
    let url = server.url.clone();
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned();
    until_ran(ran);
    std::thread::sleep(after);
    server.kill();
    let again_args = args(&address);
    let again_args: Vec<&str> = again_args.iter().map(String::as_str).collect();
    let server = HttpServer::start(&again_args, &[]).expect("starts again");
    assert_eq!(server.url, url);
    (server, session)
}

/// `--state-dir`: the server killed with SIGKILL while a session's cell waits on a call of
/// the server's own tool and a timer, started again on the same port and directory. The
/// client's next request names its session: rmcp takes it back, the `wait` rebuilds the
/// cell (its tool call, cut short, fails with the text that says so; nothing is run
/// twice; the output the first answer gave is not given again) and the stored value is
/// there.
#[test]
fn a_session_outlives_a_killed_server_with_a_state_dir() {
    let scratch = Scratch::new();
    // The tool writes a line each time it runs: what it did is counted by its own side
    // effect, not read from a text.
    let ran = scratch.0.join("ran.log");
    let tools = slow_tool(&scratch, &ran);
    // Killed once the tool runs.
    let (server, session) =
        killed_after_the_tool_ran(&tools, &scratch.0.join("state"), &ran, Duration::ZERO);
    let resumed = service("resume", &server.url, &["--session", &session]);
    assert_resumed(&resumed, &ran);
}

/// `--state-dir`: a cell whose call of the server's tool was answered, and which then ran
/// to its end, with no request of the client since; the server killed with SIGKILL a
/// second after. After the restart the client's `wait` gets the cell's whole output: the
/// answer was recorded when it came, so the rebuilt cell gets it again and the tool is not
/// run again (before, the journal ended at the call in flight: `cut short`).
#[test]
fn a_cell_that_finished_just_before_a_kill_gives_its_output_after_the_restart() {
    let scratch = Scratch::new();
    let ran = scratch.0.join("ran.log");
    let tools = logging_tool(&scratch, &ran, "Answers at once.", "echo quick");
    // The tool answered; the cell ends 0.2 s later; the kill comes a second after that.
    let (server, session) = killed_after_the_tool_ran(
        &tools,
        &scratch.0.join("state"),
        &ran,
        Duration::from_millis(1200),
    );
    // A client resuming the event stream it had before the kill is told at once that it
    // is gone (an empty stream would have it reconnect until its timeout).
    let stream = service(
        "request",
        &server.url,
        &[
            "GET",
            "--session",
            &session,
            "--header",
            "Last-Event-ID:0/2",
        ],
    );
    assert_eq!(stream["status"], 410, "{stream}");
    let resumed = service("resume", &server.url, &["--session", &session]);
    assert_result(&resumed["wait"], "Script completed", &["quick", "after v"]);
    assert_eq!(
        std::fs::read_to_string(&ran).expect("the tool's log"),
        "ran\n",
        "the tool ran once"
    );
}

/// A TCP balancer with no affinity: each new connection goes to the next backend in turn.
/// Which backend each connection went to is kept.
struct RoundRobin {
    url: String,
    chosen: Arc<Mutex<Vec<usize>>>,
    backends: Arc<Mutex<Vec<String>>>,
}

impl RoundRobin {
    /// Each new connection goes to the next backend; one that refuses the connection (a
    /// replica gone) is passed over for the one after it, as a balancer's health check
    /// takes a dead backend out.
    fn start(backends: Vec<String>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let url = format!("http://{}/mcp", listener.local_addr().expect("bound"));
        let chosen = Arc::new(Mutex::new(Vec::new()));
        let backends = Arc::new(Mutex::new(backends));
        let (kept, listed) = (Arc::clone(&chosen), Arc::clone(&backends));
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { continue };
                let backends = listed.lock().unwrap().clone();
                let reached = (0..backends.len()).find_map(|step| {
                    let which = (n + step) % backends.len();
                    let backend = std::net::TcpStream::connect(&backends[which]).ok()?;
                    Some((which, backend))
                });
                if let Some((which, backend)) = reached {
                    kept.lock().unwrap().push(which);
                    pipe(client, backend);
                }
            }
        });
        Self {
            url,
            chosen,
            backends,
        }
    }

    /// A replica added behind the balancer (`http://HOST:PORT/mcp`).
    fn add(&self, url: &str) {
        let backend = url.trim_start_matches("http://").trim_end_matches("/mcp");
        self.backends.lock().unwrap().push(backend.to_owned());
    }
}

/// The lines of a child's stdout, read on a thread of their own so that each read has a
/// deadline ([`next_line`]).
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// The next line of `lines` within two minutes, else the test fails naming `what`.
fn next_line(lines: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    lines
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|error| panic!("{what}: no line within 120 s ({error})"))
}

/// Copies each way between `a` and `b` until each side ends.
fn pipe(a: std::net::TcpStream, b: std::net::TcpStream) {
    let (a2, b2) = (
        a.try_clone().expect("a clone"),
        b.try_clone().expect("a clone"),
    );
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut &a, &mut &b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut &b2, &mut &a2);
        let _ = a2.shutdown(std::net::Shutdown::Write);
    });
}

/// Three replicas on one Postgres behind a round-robin balancer with no affinity, the
/// official SDK opening a new connection for every request: most requests reach a
/// replica that does not hold the session, and each is served at once (forwarded to the
/// holder), never after a wait for a lease (60 s here) nor with a 404. The cell yields,
/// is waited on to its end, and later calls see its stored value.
#[test]
fn any_replica_serves_any_session_at_once_behind_a_balancer_with_no_affinity() {
    let cluster = code_mode_conformance::PgCluster::start();
    let args = [
        "mcp",
        "--http",
        "127.0.0.1:0",
        "--state-url",
        &cluster.url,
        "--state-lease",
        "60s",
    ];
    let replicas: Vec<HttpServer> = (0..3)
        .map(|_| HttpServer::start(&args, &[]).expect("a replica starts"))
        .collect();
    let backends = replicas
        .iter()
        .map(|replica| {
            replica
                .url
                .trim_start_matches("http://")
                .trim_end_matches("/mcp")
                .to_owned()
        })
        .collect();
    let balancer = RoundRobin::start(backends);
    let started = Instant::now();
    let spread = service("spread", &balancer.url, &[]);
    assert!(spread.get("error").is_none(), "{spread}");
    let calls = spread["calls"].as_array().expect("calls");
    let texts: Vec<Value> = calls.iter().map(|call| call["texts"].clone()).collect();
    assert_eq!(texts[0][1], "started", "{spread}");
    assert!(
        texts
            .iter()
            .any(|texts| texts.to_string().contains("finished kept")),
        "the cell ran to its end: {spread}"
    );
    let last: Vec<&Value> = texts[texts.len() - 4..].iter().map(|t| &t[1]).collect();
    assert_eq!(last, ["kept 0", "kept 1", "kept 2", "kept 3"], "{spread}");
    // Every replica took connections: the session was served from each.
    let chosen = balancer.chosen.lock().unwrap().clone();
    for replica in 0..3 {
        assert!(chosen.contains(&replica), "{chosen:?}");
    }
    // A request that claims to be forwarded, but names another replica than the one it
    // reaches (an address reused, or a client's own header), is refused, not served.
    let spoofed = service(
        "probe",
        &replicas[0].url,
        &["--header", "x-code-mode-forwarded:another-replica"],
    );
    assert_eq!(spoofed["status"], 421, "{spoofed}");
    // No request waited for a lease: the whole run is shorter than one.
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "a request waited for the holder's lease: {spread}"
    );
}

/// A rolling update while a cell waits, as the official SDK sees it through a balancer
/// (every request on a new connection): two replicas of `mcp --http` on one Postgres with
/// a lease of 90 s; the SDK's session, opened on B, has a cell waiting on a call of the
/// server's own tool when C is added and B is stopped as Kubernetes stops it (SIGTERM). B
/// lets its sessions go as it stops, so C takes the session at the SDK's next request, at
/// once (not after the 90 s lease), rebuilds the cell, and the cut call fails as
/// documented, the tool having run once.
#[test]
fn a_rolling_update_hands_a_waiting_cell_to_the_next_replica_at_once() {
    let scratch = Scratch::new();
    let cluster = code_mode_conformance::PgCluster::start();
    let ran = scratch.0.join("ran.log");
    let args = replica_args(&scratch, &cluster, &ran, "90s");
    let mut b = HttpServer::start(&strs(&args), &[]).expect("B starts");
    let balancer = RoundRobin::start(Vec::new());
    balancer.add(&b.url);
    let mut client = Command::new(dep(".venv/bin/python"))
        .arg(deps().join("http_service.py"))
        .args(["rolling", &balancer.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run http_service.py");
    let lines = lines_of(client.stdout.take().expect("stdout"));
    let first = next_line(&lines, "the first half");
    let first: Value = serde_json::from_str(&first).unwrap_or_else(|_| panic!("{first}"));
    assert_result(&first["exec"], "Script running with cell ID 1", &["before"]);
    until_ran(&ran);
    let c = HttpServer::start(&strs(&args), &[]).expect("C starts");
    balancer.add(&c.url);
    let stopped = Command::new("kill")
        .args(["-TERM", &b.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(stopped.success());
    b.child.wait().expect("B stopped");
    let started = Instant::now();
    let mut go = client.stdin.take().expect("stdin");
    go.write_all(b"go\n").expect("the second half begins");
    let rest = next_line(&lines, "the second half");
    let resumed: Value = serde_json::from_str(&rest).unwrap_or_else(|_| panic!("{rest}"));
    assert!(resumed.get("error").is_none(), "{resumed}");
    // Without the lease let go, C would wait out B's 90 s lease and not find the session.
    assert_resumed(&resumed, &ran);
    let bound = Duration::from_secs(45);
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    assert!(client.wait().expect("the client ends").success());
    let _ = c;
}

/// `--state-dir` with a size cap: the server's tool answers with more than the store has
/// room for, so the answer's record fails (as on a full disk); the server is killed with
/// SIGKILL and started again on the same directory with room. The call, whose answer was
/// never kept, fails as cut short by the restart: the tool ran once, counted by its log.
#[test]
fn an_answer_the_full_store_did_not_take_is_never_got_by_running_the_tool_again() {
    let scratch = Scratch::new();
    let ran = scratch.0.join("ran.log");
    let tools = logging_tool(
        &scratch,
        &ran,
        "Answers at length.",
        "head -c 1200000 /dev/zero | tr '\\\\000' x",
    );
    let state = scratch.0.join("state");
    let args = |cap: bool| -> Vec<String> {
        let mut args: Vec<String> = [
            "mcp",
            "--http",
            "127.0.0.1:0",
            "--tools",
            tools.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        if cap {
            args.extend(["--state-max-bytes".to_owned(), "1000000".to_owned()]);
        }
        args
    };
    let mut full = HttpServer::start(&strs(&args(true)), &[]).expect("starts with a cap");
    let begun = service("begin", &full.url, &[]);
    let session = begun["session"].as_str().expect("a session id").to_owned();
    assert_result(&begun["exec"], "Script running with cell ID 1", &["before"]);
    until_ran(&ran);
    // The answer's record is tried within milliseconds of the answer; the log says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !full
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|line| line.contains("recording a tool's answer failed"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the record never failed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    full.kill();
    let roomy = HttpServer::start(&strs(&args(false)), &[]).expect("starts with room");
    let resumed = service("resume", &roomy.url, &["--session", &session]);
    assert_resumed(&resumed, &ran);
}

/// The fleet under a kill: 3 replicas on one Postgres (lease 5 s) behind a round-robin
/// balancer with no affinity, `FLEET_CLIENTS` (default 30) official-SDK clients at once,
/// each with a cell that yields and calls the server's `count` tool, which holds every
/// call until the test lets it go. Once every call runs, one replica is killed with
/// SIGKILL and another started in its place, and the calls are let go. Every cell ends
/// with its own output, or, where the kill cut its call short (at least one), the
/// documented failure; every call ran at most once (the tool's own log), once where its
/// answer came. The longest request any client saw is printed. A `wait` the killed
/// replica forwarded and that was cut before its answer's first byte (its client has no
/// event id) is sent again and takes the cell over on its holder, with the output the cut
/// one took (about one run in ten lost it before).
#[test]
fn a_replica_killed_under_many_sdk_clients_loses_no_cell_and_runs_no_call_twice() {
    let scratch = Scratch::new();
    let cluster = code_mode_conformance::PgCluster::start();
    let ran = scratch.0.join("ran.log");
    let release = scratch.0.join("release");
    let script = scratch.write(
        "count.sh",
        &format!(
            "input=$(cat)\necho \"$input\" >> '{}'\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho \"counted $input\"\n",
            ran.display(),
            release.display()
        ),
    );
    let tools = scratch.write(
        "tools.toml",
        &format!(
            "[[tool]]\nname = \"count\"\ndescription = \"Counts.\"\ncommand = [\"sh\", \"{}\"]\n",
            script.display()
        ),
    );
    let owned = replica_args_with(&tools, &cluster, "5s");
    let args = strs(&owned);
    let mut replicas: Vec<HttpServer> = (0..3)
        .map(|_| HttpServer::start(&args, &[]).expect("a replica starts"))
        .collect();
    let balancer = RoundRobin::start(Vec::new());
    for replica in &replicas {
        balancer.add(&replica.url);
    }
    let clients: usize = std::env::var("FLEET_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let mut fleet = Command::new(dep(".venv/bin/python"))
        .arg(deps().join("http_service.py"))
        .args(["fleet", &balancer.url, &clients.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run http_service.py");
    let lines = lines_of(fleet.stdout.take().expect("stdout"));
    assert_eq!(next_line(&lines, "every cell running"), "started");
    // Every call runs (each cell calls the tool 300 ms after it started), held by the
    // tool: the kill falls while the killed replica's calls are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&ran)
        .unwrap_or_default()
        .lines()
        .count()
        < clients
    {
        assert!(Instant::now() < deadline, "not every call ran within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    replicas[1].kill();
    let restarted = HttpServer::start(&args, &[]).expect("a replica starts again");
    balancer.add(&restarted.url);
    std::fs::write(&release, "").expect("the calls let go");
    let last = next_line(&lines, "the clients' outcomes");
    let result: Value = serde_json::from_str(&last).unwrap_or_else(|_| panic!("{last}"));
    assert!(fleet.wait().expect("the clients end").success());
    let log = std::fs::read_to_string(&ran).expect("the tool's log");
    let runs = |n: usize| {
        log.lines()
            .filter(|line| line.trim() == format!("{{\"n\":{n}}}"))
            .count()
    };
    let (mut cut, mut longest, mut sent_again) = (0, 0, 0);
    let outcomes = result["clients"].as_array().expect("clients");
    assert_eq!(outcomes.len(), clients, "{result}");
    for outcome in outcomes {
        let n = usize::try_from(outcome["n"].as_u64().expect("n")).unwrap();
        assert!(outcome.get("error").is_none(), "client {n}: {outcome}");
        let texts: Vec<&str> = outcome["texts"]
            .as_array()
            .expect("texts")
            .iter()
            .filter_map(Value::as_str)
            .filter(|text| !text.starts_with("Script "))
            .collect();
        assert_eq!(texts.len(), 3, "client {n}: {outcome}");
        assert_eq!(texts[0], format!("started {n}"), "client {n}: {outcome}");
        assert_eq!(texts[2], format!("end v{n}"), "client {n}: {outcome}");
        if texts[1].starts_with("count failed: ") {
            assert!(
                texts[1].contains("cut short by a restart of the server"),
                "client {n}: {outcome}"
            );
            assert!(runs(n) <= 1, "client {n}'s call ran {} times", runs(n));
            cut += 1;
        } else {
            assert_eq!(
                texts[1],
                format!("counted {{\"n\":{n}}}"),
                "client {n}: {outcome}"
            );
            assert_eq!(runs(n), 1, "client {n}'s call ran {} times", runs(n));
        }
        longest = longest.max(outcome["longest_ms"].as_u64().expect("longest_ms"));
        for failure in outcome["sent_again"].as_array().expect("sent_again") {
            // Only a request whose replica died under it fails, in the SDK's words: its
            // stream gone (410 when resumed), its connection closed before any answer, or
            // the forwarder's 502 "try again" for a holder that died mid-request (any
            // status but 404: a session lost would be "Session terminated").
            let failure = failure.as_str().expect("a message");
            assert!(
                failure.contains("SSE stream")
                    || failure.contains("410")
                    || failure.starts_with("RemoteProtocolError: Server disconnected")
                    || failure == "MCPError: Server returned an error response",
                "client {n}: {failure}"
            );
            sent_again += 1;
        }
    }
    eprintln!(
        "fleet under a kill: {clients} clients, {cut} calls cut short by the kill, {sent_again} requests sent again, longest request {longest} ms"
    );
    assert!(
        cut > 0,
        "the kill cut no call: the test shows nothing of a takeover"
    );
    let _ = restarted;
}

/// A `wait` whose connection breaks before the first byte of its answer (its client saw no
/// event id, so it cannot resume: the replica that forwarded it died, say) is sent again:
/// the output the cut observation took comes first in the answer to the one sent again,
/// which takes the cell over rather than being refused as a second observer; a cell that
/// ended under a cut observation answers the next `wait` with its end.
#[test]
fn a_wait_cut_before_its_answer_loses_no_output_to_the_wait_sent_again() {
    let server = HttpServer::start(&["mcp", "--http", "127.0.0.1:0"], &[]).expect("starts");
    let cut = service("cut", &server.url, &[]);
    let texts = |at: &str, which: usize| -> Vec<String> {
        cut[at][which]
            .as_array()
            .unwrap_or_else(|| panic!("{cut}"))
            .iter()
            .map(|text| text.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(texts("running", 0)[1..], ["begun"], "{cut}");
    let running = texts("running", 1);
    assert!(running[0].starts_with("Script completed"), "{cut}");
    assert_eq!(running[1..], ["during", "late"], "{cut}");
    assert_eq!(texts("ended", 0)[1..], ["a"], "{cut}");
    let ended = texts("ended", 1);
    assert!(ended[0].starts_with("Script completed"), "{cut}");
    assert_eq!(ended[1..], ["b"], "{cut}");
}

/// A client whose connection broke while its request was answered (its network, or the
/// replica that forwarded it dying) resumes the request's stream with `Last-Event-ID` and
/// gets the result with the cell's output: the output a `wait` or `exec` took is never
/// lost with the connection.
#[test]
fn a_request_whose_connection_broke_is_resumed_with_its_result() {
    let server = HttpServer::start(&["mcp", "--http", "127.0.0.1:0"], &[]).expect("starts");
    let broken = service("broken", &server.url, &[]);
    // The SDKs try to resume a second after a break (rmcp's default is 3 s).
    assert_eq!(broken["retry"], 1000, "{broken}");
    assert_eq!(broken["status"], 200, "{broken}");
    let texts = broken["texts"].as_array().expect("a result");
    assert!(
        texts[0]
            .as_str()
            .is_some_and(|status| status.starts_with("Script completed")),
        "{broken}"
    );
    assert_eq!(texts[1..], [Value::from("late")], "{broken}");
}

/// A tools file with the tool `send`, which needs an approval ("it sends mail") and logs
/// each run (its input) to the file returned beside it.
pub(super) fn approval_tools(scratch: &Scratch) -> (std::path::PathBuf, std::path::PathBuf) {
    let ran = scratch.0.join("sent.log");
    let tools = scratch.write(
        "tools.toml",
        &format!(
            "[[tool]]\nname = \"send\"\ncommand = [\"sh\", \"-c\", \"cat >> {log}; echo >> {log}; echo true\"]\napproval = \"always\"\napproval_reason = \"it sends mail\"\n",
            log = ran.display()
        ),
    );
    (tools, ran)
}

/// `mcp --http` with a state directory and [`approval_tools`]: the server, the tool's log
/// and the state directory.
pub(super) fn approval_server(
    scratch: &Scratch,
) -> (HttpServer, std::path::PathBuf, std::path::PathBuf) {
    let (tools, ran) = approval_tools(scratch);
    let state = scratch.0.join("state");
    let server = HttpServer::start(
        &[
            "mcp",
            "--http",
            "127.0.0.1:0",
            "--tools",
            tools.to_str().expect("UTF-8"),
            "--state-dir",
            state.to_str().expect("UTF-8"),
        ],
        &[],
    )
    .expect("starts");
    (server, ran, state)
}

/// A tool with `approval = "always"` over MCP (the official Python SDK as the client): each
/// `exec` ends as soon as its call waits, saying which call waits and why; the operator
/// lists the call with `code-mode approvals` and approves
/// it with an edited input, or denies it; the tool's own log shows it ran once, with the
/// input approved, and never for the denied call.
#[test]
fn mcp_calls_wait_for_approval_and_the_operator_decides_them_from_the_command_line() {
    let scratch = Scratch::new();
    let (server, ran, state) = approval_server(&scratch);
    let seen = service(
        "approval",
        &server.url,
        &[BIN, state.to_str().expect("UTF-8")],
    );
    let line = "Waiting for approval: `send` (call tool-1), because: it sends mail. The cell goes on when a person decides.";
    for n in 0..2 {
        let started: Vec<String> =
            serde_json::from_value(seen[format!("exec{n}")].clone()).expect("texts");
        assert!(
            started
                .first()
                .is_some_and(|header| header.starts_with("Script running")),
            "{seen}"
        );
        assert!(started.iter().any(|text| text == line), "{seen}");
        let listed = seen[format!("listed{n}")].as_array().expect("listed");
        assert_eq!(listed.len(), 1, "{seen}");
        assert_eq!(listed[0]["input"], serde_json::json!({"to": "a"}), "{seen}");
        assert_eq!(listed[0]["tool"], "send", "{seen}");
    }
    let approved = seen["wait0"].to_string();
    assert!(approved.contains("sent true"), "{seen}");
    let denied = seen["wait1"].to_string();
    assert!(
        denied.contains(
            "failed denied: the call of `send` was not approved, so it did not run: not now"
        ),
        "{seen}"
    );
    assert_eq!(
        std::fs::read_to_string(&ran).expect("the tool ran"),
        "{\"to\":\"b\"}\n",
        "the input approved, once; the denied call never"
    );
}

/// Without a state store, a tools file whose tool needs approvals is refused at start.
#[test]
fn mcp_with_a_tool_that_needs_approval_and_no_store_is_refused() {
    let scratch = Scratch::new();
    let tools = scratch.write(
        "tools.toml",
        "[[tool]]\nname = \"send\"\ncommand = \"true\"\napproval = \"always\"\n",
    );
    let output = Command::new(BIN)
        .args(["mcp", "--tools", tools.to_str().expect("UTF-8")])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        text(&output.stderr).contains("needs approvals"),
        "{output:?}"
    );
}

/// A client that can ask its user (the official Python SDK with an elicitation callback) is
/// asked about each call that waits: the user's approval with an edited input sends the
/// call once with that input, their denial never sends it and the model reads the message.
#[test]
fn an_mcp_client_that_can_ask_its_user_approves_and_denies_through_elicitation() {
    let scratch = Scratch::new();
    let (server, ran, _) = approval_server(&scratch);
    let seen = service("elicited", &server.url, &[]);
    let asked = seen["asked"].as_array().expect("asked");
    assert_eq!(asked.len(), 2, "{seen}");
    assert_eq!(
        asked[0],
        "A script wants to call `send` (it sends mail) with this input: {\"to\":\"a\"}. Approve it? (You may give an edited input as JSON; a denial may say why.)",
        "{seen}"
    );
    assert!(seen["wait0"].to_string().contains("sent true"), "{seen}");
    assert!(
        seen["wait1"].to_string().contains(
            "failed denied: the call of `send` was not approved, so it did not run: not this one"
        ),
        "{seen}"
    );
    assert_eq!(
        std::fs::read_to_string(&ran).expect("the tool ran"),
        "{\"to\":\"b\"}\n",
        "the input the user gave, once; the denied call never"
    );
}
