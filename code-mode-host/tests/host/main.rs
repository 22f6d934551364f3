//! Tests of the IPC provider against the real `code-mode-bin` and against fake runtimes:
//! the runtime's death, binary discovery, version skew, crash loops, shared processes,
//! the sandbox, and the hostile corpus.

mod approvals;
mod hostile;
mod load;
mod remote;
mod store_faults;
mod stored;
mod traces;

use code_mode_conformance::{Record, Scratch, TestDelegate};
use code_mode_host::CodeModeProvider;
use code_mode_host::{
    BINARY_NAME, CodeModeSession, ProcessConfig, ProcessProvider, binary::find_binary_in,
};
use code_mode_protocol::{
    CellResponse, ContentItem, ExecRequest, SessionError, SessionOptions, WaitRequest,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Example `name`, beside this test binary's directory (`cargo test -p code-mode-host`
/// builds it), told where the runtime binary is.
fn example(name: &str) -> std::process::Command {
    let exe = std::env::current_exe().expect("the test binary");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p code-mode-host` builds it",
        path.display()
    );
    let mut command = std::process::Command::new(path);
    command.env(
        code_mode_host::BINARY_ENV,
        profile.join(code_mode_host::BINARY_NAME),
    );
    command
}

fn provider() -> ProcessProvider {
    ProcessProvider::new(ProcessConfig::default()).unwrap_or_else(|error| {
        panic!("{error}\n(build the runtime first: cargo build -p code-mode-bin)")
    })
}

fn request(source: &str) -> ExecRequest {
    ExecRequest::new(source).with_tools(TestDelegate::tools())
}

/// A cell whose journal passed its cap (three 25 MB answers: more than
/// `MAX_JOURNAL_BYTES`) is no longer durable (contract §7): it dies with its runtime, as
/// every running cell did before journals. (A durable cell is rebuilt instead: the
/// conformance suite's loss scenarios.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_runtime_fails_a_cell_past_its_journal_cap_at_once_and_the_next_exec_works() {
    let provider = provider();
    let delegate = TestDelegate::new();
    let session = Arc::new(provider.open_session(delegate.clone(), SessionOptions::default()));
    let started = session
        .execute(
            request(
                "for (let i = 0; i < 3; i++) await tools.big(25000000); store('k', 1); text('before'); await tools.block();",
            )
            .with_yield_time_ms(10_000),
        )
        .await
        .unwrap();
    assert_eq!(started.cell_id, "1");
    delegate.wait_started("1", "tool-4").await;
    // The wait is the cell's observer before the kill.
    let waiting = code_mode_conformance::scenarios::observe_registered(&session, "1").await;

    let pid = provider.runtime_pid().await.expect("a runtime runs");
    let killed_at = Instant::now();
    // SAFETY: `kill` only sends a signal; `pid` is our own live child process.
    let killed = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(killed, 0);

    let error = waiting.await.unwrap().unwrap_err();
    let elapsed = killed_at.elapsed();
    // "At once" is the contract (the socket's end, not a liveness timeout); two seconds
    // allow for a loaded two-core machine, not for a timer.
    assert!(
        elapsed < Duration::from_secs(2),
        "the error took {elapsed:?}"
    );
    assert_eq!(
        error,
        SessionError::RuntimeLost("the runtime process was killed by signal 9 (SIGKILL)".into())
    );
    assert_eq!(
        error.to_string(),
        "the exec runtime was lost (the runtime process was killed by signal 9 (SIGKILL)). The cells running on it were lost; stored values committed by finished cells are kept."
    );
    delegate.wait_closed("1").await;
    assert_eq!(delegate.closed_count("1"), 1);

    // The session goes on in a fresh process at its next call, with no error. The cell
    // that died never completed, so its write was never committed.
    let fresh = session
        .execute(request("text(String(load('k')));"))
        .await
        .unwrap();
    assert_eq!(fresh.cell_id, "g2:1");
    assert_eq!(
        fresh.initial_response.timeless(),
        CellResponse::Result {
            cell_id: "g2:1".into(),
            content_items: vec![ContentItem::text("undefined")],
            failure: None,
            wall_time: Duration::ZERO,
        }
    );
    assert_ne!(provider.runtime_pid().await, Some(pid));
    // A later wait on the cell that died with its runtime gets the same error; nothing
    // was replayed.
    assert_eq!(
        session.wait(WaitRequest::new("1")).await.unwrap_err(),
        error
    );
    assert_eq!(delegate.closed_count("1"), 1);
    assert_eq!(
        delegate
            .records()
            .iter()
            .filter(|r| matches!(r, Record::ToolStarted { .. }))
            .count(),
        4,
        "no tool call was replayed"
    );
    session.shutdown().await;
    assert_eq!(delegate.closed_count("g2:1"), 1);
}

#[tokio::test]
async fn sessions_share_one_process_and_keep_separate_stored_values() {
    let provider = provider();
    let first = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let second = provider.open_session(TestDelegate::new(), SessionOptions::default());
    first.execute(request("store('k', 'first')")).await.unwrap();
    let pid = provider.runtime_pid().await;
    second
        .execute(request("store('k', 'second')"))
        .await
        .unwrap();
    assert_eq!(provider.runtime_pid().await, pid, "one process serves both");
    for (session, expected) in [(&first, "first"), (&second, "second")] {
        let started = session.execute(request("text(load('k'))")).await.unwrap();
        assert_eq!(
            started.initial_response.content_items(),
            [ContentItem::text(expected)]
        );
    }
}

#[tokio::test]
async fn a_missing_binary_names_every_place_searched() {
    let explicit = Path::new("/nonexistent/code-mode-bin");
    let error = ProcessProvider::new(ProcessConfig {
        binary: Some(explicit.to_path_buf()),
        ..ProcessConfig::default()
    })
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the code-mode runtime binary `code-mode-bin` was not found; searched: /nonexistent/code-mode-bin (explicit path)"
    );

    let scratch = Scratch::new();
    let exe = scratch.0.join("deps").join("agent");
    let error = find_binary_in(
        None,
        None,
        Some(exe),
        Some(std::env::join_paths([scratch.0.join("bin1"), scratch.0.join("bin2")]).unwrap()),
    )
    .unwrap_err();
    let dir = scratch.0.display();
    assert_eq!(
        error.searched,
        [
            format!("{dir}/deps/{BINARY_NAME} (next to the current executable)"),
            format!("{dir}/{BINARY_NAME} (the cargo profile directory)"),
            format!("{dir}/bin1/{BINARY_NAME} (PATH)"),
            format!("{dir}/bin2/{BINARY_NAME} (PATH)"),
        ]
    );

    let error = find_binary_in(None, Some("/nope/runtime".into()), None, None).unwrap_err();
    assert_eq!(error.searched, ["/nope/runtime (CODE_MODE_BIN)"]);
}

/// A runtime that cannot be made available fails the call with the contract's text, and
/// the host's typed error as its cause: a caller tells a runtime that never connected from
/// any other failure without reading the text.
#[tokio::test]
async fn a_runtime_failure_keeps_the_hosts_error_as_its_cause() {
    // A "runtime" that exits at once: spawned fine, but it never connects.
    let provider = ProcessProvider::new(ProcessConfig {
        binary: Some(PathBuf::from("/bin/true")),
        ..ProcessConfig::default()
    })
    .expect("the binary exists");
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let error = session
        .execute(ExecRequest::new("text(1)"))
        .await
        .expect_err("no runtime can run it");
    assert!(
        error.to_string().starts_with("exec runtime failure: "),
        "{error}"
    );
    let cause = error
        .runtime_cause()
        .and_then(|cause| cause.downcast_ref::<code_mode_host::HostError>())
        .unwrap_or_else(|| panic!("the cause is the host's error: {error:?}"));
    assert!(
        matches!(
            cause,
            code_mode_host::HostError::Spawn(code_mode_host::SpawnError::DiedAtStart { .. })
        ),
        "{cause:?}"
    );
    // It says how the runtime ended, not that it timed out.
    assert!(
        error
            .to_string()
            .ends_with("/bin/true exited with status 0 before it connected"),
        "{error}"
    );
    // The chain of sources reaches it too.
    let source = std::error::Error::source(&error).expect("a source");
    assert!(
        std::error::Error::source(source)
            .is_some_and(|cause| cause.is::<code_mode_host::HostError>())
    );
}

/// A wrapper "runtime" that counts its starts in `count` and kills itself with SIGKILL,
/// before it could connect, on each of its first `deaths` starts; later starts become the
/// real runtime.
fn dying_runtime(scratch: &Scratch, deaths: u32) -> (PathBuf, PathBuf) {
    let real = code_mode_host::find_binary(None).expect("the runtime is built");
    let count = scratch.0.join("starts");
    let script = scratch.script(
        "dying-runtime",
        &format!(
            "#!/bin/sh\necho started >> '{count}'\nif [ \"$(/usr/bin/wc -l < '{count}')\" -le {deaths} ]; then kill -9 $$; fi\nexec '{real}' \"$@\"\n",
            count = count.display(),
            real = real.display(),
        ),
    );
    (script, count)
}

fn starts(count: &Path) -> usize {
    std::fs::read_to_string(count).map_or(0, |text| text.lines().count())
}

/// A runtime killed before it connected is replaced at once, and the exec goes on with
/// no error; one that dies at every start fails the exec after [`BIRTH_TRIES`] starts,
/// saying how it died (not that it timed out).
#[tokio::test]
async fn a_runtime_that_dies_at_birth_is_replaced_and_the_exec_goes_on() {
    use code_mode_host::BIRTH_TRIES;
    let scratch = Scratch::new();
    let (script, count) = dying_runtime(&scratch, BIRTH_TRIES - 1);
    let provider = ProcessProvider::new(ProcessConfig {
        binary: Some(script),
        ..ProcessConfig::default()
    })
    .expect("the script exists");
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let started = Instant::now();
    let done = session
        .execute(ExecRequest::new("text('born')"))
        .await
        .expect("the exec runs on the runtime that lived");
    assert_eq!(
        done.initial_response.content_items(),
        &[ContentItem::text("born")],
        "{done:?}"
    );
    assert_eq!(starts(&count), BIRTH_TRIES as usize, "one start per try");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the deaths were noticed as they happened, not at the connect timeout: {:?}",
        started.elapsed()
    );
    session.shutdown().await;

    let scratch = Scratch::new();
    let (script, count) = dying_runtime(&scratch, u32::MAX);
    let provider = ProcessProvider::new(ProcessConfig {
        binary: Some(script),
        ..ProcessConfig::default()
    })
    .expect("the script exists");
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let error = session
        .execute(ExecRequest::new("text('never')"))
        .await
        .expect_err("no runtime lives");
    assert_eq!(starts(&count), BIRTH_TRIES as usize, "bounded tries");
    assert!(
        error
            .to_string()
            .ends_with("was killed by signal 9 (SIGKILL) before it connected"),
        "{error}"
    );
}

/// A runtime killed with SIGKILL at a moment in its first 20 ms (before it connects,
/// during its handshake, or as it runs the cell), 40 times with a fresh provider each:
/// every exec ends with its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_killed_in_its_first_20_ms_costs_no_exec_its_output() {
    let real = code_mode_host::find_binary(None).expect("the runtime is built");
    for round in 0..40_u32 {
        let scratch = Scratch::new();
        let marker = scratch.0.join("killed-once");
        // Spread over 0..20 ms, the same moments on every run.
        let delay_us = (round * 7919) % 20_000;
        let script = scratch.script(
            "killed-runtime",
            &format!(
                "#!/bin/sh\nif [ ! -e '{marker}' ]; then : > '{marker}'; ( /bin/sleep 0.{delay_us:06}; kill -9 $$ ) & fi\nexec '{real}' \"$@\"\n",
                marker = marker.display(),
                real = real.display(),
            ),
        );
        let provider = ProcessProvider::new(ProcessConfig {
            binary: Some(script),
            ..ProcessConfig::default()
        })
        .expect("the script exists");
        let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
        let source = format!("text('round {round}')");
        let started = session
            .execute(ExecRequest::new(source.as_str()).with_yield_time_ms(30_000))
            .await
            .unwrap_or_else(|error| panic!("round {round} ({delay_us} us): {error}"));
        let response = if matches!(started.initial_response, CellResponse::Yielded { .. }) {
            session
                .wait(WaitRequest::new(started.cell_id.clone()).with_yield_time_ms(30_000))
                .await
                .unwrap_or_else(|error| panic!("round {round} ({delay_us} us): {error}"))
        } else {
            started.initial_response
        };
        assert_eq!(
            response.content_items(),
            &[ContentItem::text(format!("round {round}"))],
            "round {round} ({delay_us} us): {response:?}"
        );
        session.shutdown().await;
    }
}

#[tokio::test]
async fn discovery_prefers_explicit_then_env_then_beside_then_path() {
    let scratch = Scratch::new();
    let explicit = scratch.script("explicit", "#!/bin/sh\n");
    let from_env = scratch.script("from-env", "#!/bin/sh\n");
    std::fs::create_dir_all(scratch.0.join("app")).unwrap();
    std::fs::create_dir_all(scratch.0.join("path")).unwrap();
    let beside = scratch.script(&format!("app/{BINARY_NAME}"), "#!/bin/sh\n");
    let on_path = scratch.script(&format!("path/{BINARY_NAME}"), "#!/bin/sh\n");
    let exe = Some(scratch.0.join("app").join("agent"));
    let path = Some(scratch.0.join("path").into_os_string());
    let find = |explicit: Option<&Path>, env: Option<&Path>, exe: Option<PathBuf>| {
        find_binary_in(
            explicit,
            env.map(|p| p.as_os_str().to_owned()),
            exe,
            path.clone(),
        )
        .unwrap()
    };
    assert_eq!(
        find(Some(&explicit), Some(&from_env), exe.clone()),
        explicit
    );
    assert_eq!(find(None, Some(&from_env), exe.clone()), from_env);
    assert_eq!(find(None, None, exe), beside);
    assert_eq!(find(None, None, None), on_path);
}

#[tokio::test]
async fn a_runtime_speaking_another_protocol_version_is_a_handshake_error() {
    // A fake runtime: connects, reads the hello, and answers Rejected(NoCommonVersion)
    // with the bincode bytes: variant 1 (Rejected), variant 0, client [1], server [2].
    let scratch = Scratch::new();
    let fake = scratch.script(
        "fake-runtime",
        r#"#!/usr/bin/python3
import socket, struct, sys
path = sys.argv[sys.argv.index("--socket") + 1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
length = struct.unpack("<I", s.recv(4, socket.MSG_WAITALL))[0]
s.recv(length, socket.MSG_WAITALL)
body = bytes([1, 0, 1, 1, 1, 2])
s.sendall(struct.pack("<I", len(body)) + body)
s.close()
"#,
    );
    let provider = ProcessProvider::new(ProcessConfig {
        binary: Some(fake),
        ..ProcessConfig::default()
    })
    .unwrap();
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let error = session.execute(request("text(1)")).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "exec runtime failure: the runtime refused the handshake: no common protocol version: the client speaks [1], the runtime speaks [2]"
    );
}

#[tokio::test]
async fn a_crash_loop_gives_up_with_a_clear_error() {
    let scratch = Scratch::new();
    let crashing = scratch.script("crashing-runtime", "#!/bin/sh\necho 'boom' >&2\nexit 3\n");
    let provider = ProcessProvider::new(ProcessConfig {
        binary: Some(crashing),
        ..ProcessConfig::default()
    })
    .unwrap();
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    for _ in 0..5 {
        let error = session.execute(request("1")).await.unwrap_err().to_string();
        // Each start tried it again (it died at birth) and says how it ended.
        assert!(
            error.ends_with("crashing-runtime exited with status 3 before it connected"),
            "{error}"
        );
    }
    let error = session.execute(request("1")).await.unwrap_err().to_string();
    assert!(
        error.starts_with("exec runtime failure: the code-mode runtime failed 5 times within 60s; not restarting it (last failure: "),
        "{error}"
    );
}

#[tokio::test]
async fn the_runtime_process_runs_sandboxed() {
    let provider = provider();
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    session.execute(request("text(1)")).await.unwrap();
    let pid = provider.runtime_pid().await.expect("a runtime runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_owned()
    };
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    assert_ne!(field("Seccomp_filters"), "0");
    // Cells keep working under it, timers and tools included.
    let started = session
        .execute(request(
            "await new Promise((r) => setTimeout(r, 10)); text(await tools.echo('ok'));",
        ))
        .await
        .unwrap();
    assert_eq!(
        started.initial_response.content_items(),
        [ContentItem::text("ok")]
    );
}

/// One caller holding its answers unpolled holds up nobody else: the runtime keeps an
/// answer until the host says it was taken, and the host's reader never waits for a
/// caller. Session A leaves four execs' answers untaken for 3 s, each cell then making a
/// tool call (which the runtime holds back behind A's answers); meanwhile session B, on
/// the same runtime and the same connection, runs execs with nested calls. A reader that
/// waited for A's callers (as it once did, a second per untaken answer) would hold B's
/// frames for the whole hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_holding_its_answers_unpolled_holds_up_no_other_session() {
    const HOLD: Duration = Duration::from_secs(3);
    const HELD: usize = 4;
    let provider = provider();
    let a = provider.open_session(TestDelegate::new(), SessionOptions::default());
    let b = provider.open_session(TestDelegate::new(), SessionOptions::default());
    // Both sessions are open on the runtime first, so each call below is sent in its
    // first poll.
    for session in [&a, &b] {
        session.execute(request("text('ready')")).await.unwrap();
    }
    // Each cell answers 50 ms after its exec was sent: a first poll that sends the exec
    // never lasts long enough to see the answer too (it did once in CI, its thread
    // preempted for the millisecond the cell took).
    let source = r#"await new Promise((r) => setTimeout(r, 50)); text("a"); yield_control(); text(await tools.echo("after"));"#;
    let mut held: Vec<_> = (0..HELD)
        .map(|_| Box::pin(a.execute(request(source))))
        .collect();
    for call in &mut held {
        let answered = tokio::select! {
            biased;
            _ = call.as_mut() => true,
            () = std::future::ready(()) => false,
        };
        assert!(!answered, "an exec is not answered in its first poll");
    }
    let started = Instant::now();
    let mut b_cells = 0;
    while started.elapsed() < HOLD {
        let round = b_cells + 1;
        let cell = b
            .execute(request(&format!("text(await tools.echo('b{round}'))")))
            .await
            .unwrap();
        assert_eq!(
            cell.initial_response.content_items(),
            [ContentItem::text(format!("b{round}"))]
        );
        b_cells += 1;
        // Paces B's own cells through the hold; not a wait for anything.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every one of A's answers is still there, and each cell then goes on.
    for call in held {
        let started = call.await.unwrap();
        assert_eq!(
            started.initial_response.content_items(),
            [ContentItem::text("a")]
        );
        let mut wait = WaitRequest::new(started.cell_id);
        wait.yield_time_ms = Some(10_000);
        let rest = a.wait(wait).await.unwrap();
        assert_eq!(rest.content_items(), [ContentItem::text("after")]);
        assert!(matches!(rest, CellResponse::Result { .. }), "{rest:?}");
    }
    // Not timed: with B held up for the whole hold, it would finish no cell at all in it.
    assert!(
        b_cells >= 10,
        "session B finished only {b_cells} cells while A held its answers"
    );
}

/// The runtime's startup snapshot kept on disk (`--snapshot-cache`): the first start makes
/// and writes it, the next reads it (the file is not written again), a corrupt file is
/// ignored and replaced, and two runtimes starting at once both run their cells and leave
/// one whole file.
#[tokio::test(flavor = "multi_thread")]
async fn the_startup_snapshot_cache_is_written_once_read_after_and_never_trusted_corrupt() {
    use std::os::unix::fs::MetadataExt;
    let scratch = Scratch::new();
    let dir = scratch.0.join("cache");
    let provider = || {
        ProcessProvider::new(ProcessConfig {
            runtime_args: vec!["--snapshot-cache".into(), dir.clone().into_os_string()],
            ..ProcessConfig::default()
        })
        .expect("the runtime cargo built")
    };
    let runs = |provider: ProcessProvider| async move {
        let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
        let started = session
            .execute(ExecRequest::new("text(typeof tools + ' ' + (1 + 1))"))
            .await
            .expect("exec");
        assert_eq!(
            started.initial_response.content_items(),
            [code_mode_protocol::ContentItem::text("object 2")]
        );
        session.shutdown().await;
    };
    let files = || -> Vec<PathBuf> {
        std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default()
    };
    runs(provider()).await;
    let written = files();
    assert_eq!(written.len(), 1, "one cache file: {written:?}");
    let file = written[0].clone();
    assert!(file.to_string_lossy().ends_with(".snapshot"), "{file:?}");
    let inode = std::fs::metadata(&file).unwrap().ino();

    runs(provider()).await;
    assert_eq!(files(), std::slice::from_ref(&file));
    assert_eq!(
        std::fs::metadata(&file).unwrap().ino(),
        inode,
        "the second start read the file and did not write it again"
    );

    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    runs(provider()).await;
    let rewritten = std::fs::read(&file).unwrap();
    assert_ne!(rewritten, bytes, "the corrupt file was replaced");
    assert_eq!(rewritten.len(), bytes.len());

    std::fs::remove_file(&file).unwrap();
    let (first, second) = (provider(), provider());
    tokio::join!(runs(first), runs(second));
    assert_eq!(files(), [file], "one whole file, no temporary left");
}

/// A `tracing` subscriber that tells its channel each time the host has a runtime's offer
/// (the hop mark `host has the offer`), and sees nothing else. Set as the default of a
/// current-thread test, it sees the marks of that test's runtime connections alone: their
/// reader runs on the test's thread.
struct OfferMarks(tokio::sync::mpsc::UnboundedSender<()>);

impl tracing::Subscriber for OfferMarks {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.is_event() && metadata.target() == "code_mode::hops"
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        struct Offer(bool);
        impl tracing::field::Visit for Offer {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0 |= field.name() == "hop" && value == "host has the offer";
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut offer = Offer(false);
        event.record(&mut offer);
        if offer.0 {
            let _ = self.0.send(());
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// A session of `provider` whose cell `source` yielded to its exec and has finished since,
/// and whose offer of its final answer the host has, with the cell and the runtime's pid.
/// For a current-thread test: the host's reader marks the offer on the test's thread just
/// before it keeps it, and the test goes on only once that task yields, the offer kept.
async fn finished_unobserved(
    provider: &ProcessProvider,
    delegate: &Arc<TestDelegate>,
    source: &str,
) -> (impl CodeModeSession, code_mode_protocol::StartedCell, u32) {
    let (marks, mut offers) = tokio::sync::mpsc::unbounded_channel();
    let watching = tracing::subscriber::set_default(OfferMarks(marks));
    let session = provider.open_session(delegate.clone(), SessionOptions::default());
    let started = session.execute(request(source)).await.unwrap();
    assert!(
        matches!(started.initial_response, CellResponse::Yielded { .. }),
        "{:?}",
        started.initial_response
    );
    // The cell finishes within milliseconds; its offer follows on the wire.
    tokio::time::timeout(Duration::from_secs(20), offers.recv())
        .await
        .unwrap_or_else(|_| panic!("the host had no offer of the finished cell within 20 s"))
        .expect("the subscriber is set");
    drop(watching);
    let pid = provider.runtime_pid().await.expect("a runtime runs");
    (session, started, pid)
}

/// A cell that finished with nobody observing it offers its final answer to the host, and
/// the host answers the next `wait` with it, without asking the runtime: here the runtime
/// is stopped (`SIGSTOP`) when the wait comes, and the wait still returns at once. The
/// cell then closes in the runtime as if the wait had gone there.
#[tokio::test]
async fn a_wait_on_a_finished_cell_is_answered_by_the_host_alone() {
    let provider = provider();
    let delegate = TestDelegate::new();
    let (session, started, pid) = finished_unobserved(
        &provider,
        &delegate,
        "text('first'); yield_control(); await tools.slow(5); text('rest');",
    )
    .await;
    // SAFETY: `kill` only sends a signal; `pid` is our own live child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    let waited = tokio::time::timeout(
        Duration::from_secs(3),
        session.wait(WaitRequest::new(started.cell_id.clone())),
    )
    .await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
    let response = waited
        .expect("the wait was answered while the runtime was stopped")
        .expect("the wait");
    assert_eq!(
        response.content_items(),
        &[ContentItem::text("rest")],
        "{response:?}"
    );
    assert!(matches!(
        response,
        CellResponse::Result { failure: None, .. }
    ));
    // Taken: the runtime closes the cell, and a second wait finds it gone.
    delegate
        .wait_for(|record| matches!(record, Record::CellClosed(cell_id) if cell_id == "1"))
        .await;
    let again = session.wait(WaitRequest::new("1")).await.unwrap();
    assert!(again.is_missing_cell(), "{again:?}");
    session.shutdown().await;
}

/// A cell that finished and offered its final answer is not lost with its runtime: the
/// host held the answer, so the wait after a `SIGKILL` gets it, where it used to fail
/// with the runtime-lost error.
#[tokio::test]
async fn a_finished_cell_outlives_its_runtime_through_its_offer() {
    let provider = provider();
    let delegate = TestDelegate::new();
    let (session, started, pid) = finished_unobserved(
        &provider,
        &delegate,
        "store('k', 1); yield_control(); text('done');",
    )
    .await;
    // SAFETY: `kill` only sends a signal; `pid` is our own live child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    // The wait comes once the host knows its runtime is lost (polled: the loss is told
    // to the calls it fails, and here none is in flight).
    let deadline = Instant::now() + Duration::from_secs(10);
    while provider.runtime_pid().await == Some(pid) {
        assert!(
            Instant::now() < deadline,
            "the host did not see its runtime's SIGKILL within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let response = session
        .wait(WaitRequest::new(started.cell_id.clone()))
        .await
        .expect("the wait after the kill");
    assert_eq!(
        response.content_items(),
        &[ContentItem::text("done")],
        "{response:?}"
    );
    assert!(matches!(
        response,
        CellResponse::Result { failure: None, .. }
    ));
    session.shutdown().await;
}
