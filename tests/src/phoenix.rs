//! Arize Phoenix, a real trace store that takes OTLP, for the trace tests of every front.
//!
//! `scripts/test-deps.sh` installs it (pinned) in the virtualenv the MCP tests use. One
//! Phoenix serves a whole test binary: it starts on free loopback ports the first time a
//! test asks, keeps its data in a scratch directory, and stops when the test binary exits
//! (a small Python parent ends it when our end of its stdin closes). Tests look spans up
//! by trace id through Phoenix's REST API.

use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running Phoenix.
pub struct Phoenix {
    /// The HTTP port: the UI, the REST API and OTLP/HTTP (`/v1/traces`, protobuf).
    pub port: u16,
    _parent: std::process::Child,
    _dir: crate::Scratch,
}

impl std::fmt::Debug for Phoenix {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Phoenix")
            .field("port", &self.port)
            .finish()
    }
}

/// The virtualenv `scripts/test-deps.sh` makes.
fn virtualenv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../code-mode-cli/tests/mcp/.venv")
}

/// Two free ports, and never the same one twice: both are held while the second is
/// found (a port freed at once may be handed out again by the next bind, and Phoenix's
/// HTTP and gRPC servers once got the same port, so the second failed to start).
fn two_free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port =
        |listener: &std::net::TcpListener| listener.local_addr().expect("a bound address").port();
    let (first, second) = (bind(), bind());
    (port(&first), port(&second))
}

/// The test binary's Phoenix, started on first use (it takes some seconds).
pub fn phoenix() -> &'static Phoenix {
    static PHOENIX: OnceLock<Phoenix> = OnceLock::new();
    PHOENIX.get_or_init(Phoenix::start)
}

/// How a start of Phoenix ended when it did not come up.
enum Failed {
    /// A port it was given was taken meanwhile (the ports are found free, then given).
    PortTaken,
    /// Anything else, with Phoenix's log.
    Otherwise(String),
}

impl Phoenix {
    /// Starts Phoenix, on other ports again if one it was given was taken before it bound
    /// it (by any other process of a machine running tests in parallel).
    fn start() -> Self {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match Self::start_once() {
                Ok(phoenix) => return phoenix,
                Err(Failed::PortTaken) if attempt < ATTEMPTS => attempt += 1,
                Err(Failed::PortTaken) => panic!("Phoenix found its ports taken {ATTEMPTS} times"),
                Err(Failed::Otherwise(log)) => panic!("Phoenix did not come up:\n{log}"),
            }
        }
    }

    fn start_once() -> Result<Self, Failed> {
        let python = virtualenv().join("bin/python");
        let phoenix = virtualenv().join("bin/phoenix");
        assert!(
            phoenix.is_file(),
            "Arize Phoenix is not installed at {}: run scripts/test-deps.sh",
            phoenix.display()
        );
        let dir = crate::Scratch::new();
        let (port, grpc_port) = two_free_ports();
        // Phoenix as the child of a Python parent that ends it when its stdin (our pipe)
        // closes: when this test binary exits, however it exits (or this attempt fails).
        let parent_script = "import subprocess, sys\n\
             child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)\n\
             sys.stdin.read()\n\
             child.terminate()\n\
             try:\n    child.wait(10)\n\
             except subprocess.TimeoutExpired:\n    child.kill()\n";
        let log_path = dir.0.join("phoenix.log");
        let log = std::fs::File::create(&log_path).expect("a log file");
        let parent = std::process::Command::new(&python)
            .arg("-c")
            .arg(parent_script)
            .arg(&phoenix)
            .arg("serve")
            .env("PHOENIX_WORKING_DIR", &dir.0)
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", port.to_string())
            .env("PHOENIX_GRPC_PORT", grpc_port.to_string())
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .env("DO_NOT_TRACK", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", python.display()));
        let phoenix = Self {
            port,
            _parent: parent,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if phoenix
                .get("/healthz")
                .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(phoenix);
            }
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("address already in use") {
                return Err(Failed::PortTaken);
            }
            if Instant::now() > deadline {
                return Err(Failed::Otherwise(format!("not within 120 s:\n{log}")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The base URL an OTLP exporter is given (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP/1.0 GET (no chunked answers): the status and the body.
    fn get(&self, target: &str) -> std::io::Result<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "GET {target} HTTP/1.0\r\nhost: 127.0.0.1\r\naccept: application/json\r\n\r\n"
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no header block"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        Ok((status, body.to_owned()))
    }

    /// Every span Phoenix holds of the trace `trace_id` (its default project).
    pub fn trace(&self, trace_id: &str) -> Vec<Value> {
        let (status, body) = self
            .get("/v1/projects/default/spans?limit=1000")
            .expect("Phoenix's span API");
        assert_eq!(status, 200, "Phoenix's span API: {body}");
        let page: Value = serde_json::from_str(&body).expect("JSON from Phoenix");
        page["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|span| span["context"]["trace_id"] == trace_id)
            .cloned()
            .collect()
    }

    /// The spans of `trace_id` once `complete` holds of them and their count is stable
    /// (the same over `STABLE_FOR`, so that a span sent twice, or one more batch, is
    /// seen before a test counts), waiting for the batches to arrive (at most 60 s); the
    /// last spans seen when that never happens.
    pub fn trace_when(&self, trace_id: &str, complete: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut complete_since: Option<(Instant, usize)> = None;
        loop {
            let spans = self.trace(trace_id);
            if Instant::now() > deadline {
                return spans;
            }
            complete_since = match complete_since {
                _ if !complete(&spans) => None,
                Some((since, count)) if count == spans.len() => {
                    if since.elapsed() >= STABLE_FOR {
                        return spans;
                    }
                    Some((since, count))
                }
                _ => Some((Instant::now(), spans.len())),
            };
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How long a trace's span count must stay the same before a test reads it as whole.
const STABLE_FOR: Duration = Duration::from_secs(1);

/// A trace id of its own for one test, and the `traceparent` of a caller's span in it.
pub fn caller(test: &str) -> (String, String) {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    test.hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    Instant::now().hash(&mut hasher);
    let high = hasher.finish();
    (high ^ 0x5bd1_e995).hash(&mut hasher);
    let low = hasher.finish();
    let trace_id = format!("{high:016x}{low:016x}");
    let traceparent = format!("00-{trace_id}-{CALLER_SPAN_ID}-01");
    (trace_id, traceparent)
}

/// The span id of the callers' spans of [`caller`].
pub const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// One span as the assertions read it: name, ids and string attributes.
pub fn name(span: &Value) -> &str {
    span["name"].as_str().unwrap_or_default()
}

pub fn span_id(span: &Value) -> &str {
    span["context"]["span_id"].as_str().unwrap_or_default()
}

pub fn parent_id(span: &Value) -> &str {
    span["parent_id"].as_str().unwrap_or_default()
}

pub fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].get(key)
}

/// The children of `parent` named `child_name`.
pub fn children<'a>(spans: &'a [Value], parent: &Value, child_name: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|span| parent_id(span) == span_id(parent) && name(span) == child_name)
        .collect()
}

/// Asserts the tree every front must give a cell with two nested calls (`first`, then
/// `second`): `front` (the front's request span) is a child of the caller's span, the
/// `code_mode.cell` its child with the outcome `completed`, and one `code_mode.tool_call`
/// for each tool under the cell, each answered `ok`. Returns the cell's span.
pub fn assert_cell_tree<'a>(spans: &'a [Value], front: &str, tools: [&str; 2]) -> &'a Value {
    let rendered = || {
        spans
            .iter()
            .map(|span| {
                format!(
                    "{} {} <- {} {}",
                    name(span),
                    span_id(span),
                    parent_id(span),
                    span["attributes"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let request = spans
        .iter()
        .find(|span| name(span) == front)
        .unwrap_or_else(|| panic!("no {front} span in the trace:\n{}", rendered()));
    assert_eq!(
        parent_id(request),
        CALLER_SPAN_ID,
        "the front's span is the caller's child"
    );
    let cells = children(spans, request, "code_mode.cell");
    let [cell] = cells[..] else {
        panic!("one cell span under {front}:\n{}", rendered());
    };
    assert_eq!(
        attribute(cell, "status").and_then(Value::as_str),
        Some("completed"),
        "the cell's outcome:\n{}",
        rendered()
    );
    let calls = children(spans, cell, "code_mode.tool_call");
    let mut names: Vec<&str> = calls
        .iter()
        .filter_map(|call| attribute(call, "tool.name").and_then(Value::as_str))
        .collect();
    names.sort_unstable();
    let mut expected = tools.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "the cell's tool calls:\n{}", rendered());
    for call in calls {
        assert_eq!(
            attribute(call, "status").and_then(Value::as_str),
            Some("ok"),
            "each call's outcome"
        );
    }
    cell
}

/// Where a cell ran, for [`assert_cell_work`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    InProcess,
    /// In a runtime process, whose spans the host exported for it.
    OutOfProcess,
}

/// Whether `spans` hold the cell's inner work yet: its compile and its evaluate, and out of
/// process the runtime's span of the cell (a runtime process's spans come in batches of
/// their own, that one at the cell's close).
pub fn has_cell_work(spans: &[Value], placement: Placement) -> bool {
    let mut wanted = vec!["code_mode.compile", "code_mode.evaluate"];
    if placement == Placement::OutOfProcess {
        wanted.push("code_mode.runtime");
    }
    wanted
        .iter()
        .all(|wanted| spans.iter().any(|span| name(span) == *wanted))
}

/// Asserts the cell's inner work is in its trace: one `code_mode.compile` and one
/// `code_mode.evaluate`, children of the cell's span; out of process, each names the
/// runtime process it ran in (`process.pid`, not this process), in process none does. The
/// CPU time the cell used (`cpu.time_ms`) is on the cell's span in process, and on the
/// runtime's span of the cell (one `code_mode.runtime`, the cell's child, with the same
/// pid) out of process.
pub fn assert_cell_work(spans: &[Value], cell: &Value, placement: Placement) {
    let rendered = || {
        spans
            .iter()
            .map(|span| format!("{} {} <- {}", name(span), span_id(span), parent_id(span)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for work in ["code_mode.compile", "code_mode.evaluate"] {
        let [span] = children(spans, cell, work)[..] else {
            panic!("one {work} under the cell:\n{}", rendered());
        };
        let pid = attribute(span, "process.pid").and_then(Value::as_i64);
        match placement {
            Placement::InProcess => assert_eq!(pid, None, "{work} names no process"),
            Placement::OutOfProcess => assert!(
                pid.is_some_and(|pid| pid > 0 && pid != i64::from(std::process::id())),
                "{work} names the runtime process: {}",
                span["attributes"]
            ),
        }
    }
    let cpu_holder = match placement {
        Placement::InProcess => cell,
        Placement::OutOfProcess => {
            let [runtime] = children(spans, cell, "code_mode.runtime")[..] else {
                panic!("one code_mode.runtime under the cell:\n{}", rendered());
            };
            let compile = children(spans, cell, "code_mode.compile")[0];
            assert_eq!(
                attribute(runtime, "process.pid"),
                attribute(compile, "process.pid"),
                "the runtime span and the compile ran in one process"
            );
            runtime
        }
    };
    let cpu = attribute(cpu_holder, "cpu.time_ms").and_then(Value::as_f64);
    assert!(
        cpu.is_some_and(|cpu| cpu > 0.0),
        "the cell's CPU time on {}: {}",
        name(cpu_holder),
        cpu_holder["attributes"]
    );
}

/// An agent core's own tracing, on this thread: every span it makes (`INFO` and above)
/// goes to `phoenix` as service `agent-core`. Dropping the telemetry (off the async
/// runtime: its shutdown blocks) sends what is left.
///
/// Its exporter is also the process's global tracer provider, through which the host
/// crate exports the spans its runtimes hand back; so one test at a time traces this way
/// in a test binary (another's start would take its runtime spans, and its end drop them).
/// The lock is held until [`flushed_trace`] has the trace.
pub fn agent_core_tracing(phoenix: &Phoenix) -> AgentCoreTracing {
    use tracing_subscriber::layer::SubscriberExt as _;
    let exclusive = Turn::take();
    let telemetry = code_mode_trace::Telemetry::start(code_mode_trace::TraceSettings::new(
        code_mode_trace::Destination::Otlp {
            endpoint: format!("{}/v1/traces", phoenix.endpoint()),
            protocol: code_mode_trace::Protocol::HttpProtobuf,
        },
        "agent-core",
        "1",
    ))
    .expect("an exporter");
    let guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(telemetry.layer_for_every_target()),
    );
    AgentCoreTracing {
        telemetry,
        guard,
        exclusive,
    }
}

/// What [`agent_core_tracing`] set up, until [`flushed_trace`] ends it.
pub struct AgentCoreTracing {
    telemetry: code_mode_trace::Telemetry,
    guard: tracing::subscriber::DefaultGuard,
    exclusive: Turn,
}

/// One test's turn at the global tracer provider, given back when dropped. (Not a mutex
/// guard: it is held across awaits and handed to the blocking task that flushes.)
pub struct Turn(());

static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Turn {
    /// Waits (on this test's own thread) until no other test has the turn.
    fn take() -> Self {
        while TAKEN
            .compare_exchange(
                false,
                true,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            )
            .is_err()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        TAKEN.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The agent core's span of one turn, a child of the caller's span `traceparent` names.
pub fn agent_turn(traceparent: &str) -> tracing::Span {
    let turn = tracing::info_span!("agent.turn");
    code_mode_trace::adopt_traceparent(&turn, Some(traceparent));
    turn
}

/// Ends [`agent_core_tracing`] (what is left goes out), then waits for the trace
/// `trace_id` to hold what `complete` asks, off the async runtime.
pub async fn flushed_trace(
    exporting: AgentCoreTracing,
    trace_id: String,
    complete: impl Fn(&[Value]) -> bool + Send + 'static,
) -> Vec<Value> {
    let AgentCoreTracing {
        telemetry,
        guard,
        exclusive,
    } = exporting;
    drop(guard);
    tokio::task::spawn_blocking(move || {
        drop(telemetry);
        let spans = phoenix().trace_when(&trace_id, complete);
        drop(exclusive);
        spans
    })
    .await
    .expect("the trace")
}
