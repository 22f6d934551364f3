//! Traces of the Codex front, against codex's own host as the oracle: the same session
//! gives the same span names, parent-child shape, attribute keys and resource on both
//! (read from each host's `--otel-trace-listen` stream); W3C `traceparent` from gRPC
//! metadata parents the execute span and comes back on each `ToolInvocation`; the
//! WebSocket stream serves every client, refuses browser pages and never waits on a
//! stalled client; an exporter that is down costs cells nothing and is counted; spans
//! hold no source or arguments unless asked.

use crate::tcp::Listening;
use crate::{codex_host, corpus_tools, open, our_host, responder};
use codex_code_mode_host::client::{Driver, StdioHost, exec_request};
use codex_code_mode_host::proto;
use futures_util::StreamExt as _;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One span of a batch, as the tests look at it.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: String,
    pub attributes: BTreeMap<String, Value>,
}

impl Span {
    pub fn text(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
}

/// The spans and resource attributes of OTLP JSON batches.
pub fn spans_of(batches: &[Value]) -> (Vec<Span>, BTreeMap<String, Value>) {
    let mut spans = Vec::new();
    let mut resource = BTreeMap::new();
    let values = |attributes: &Value| -> BTreeMap<String, Value> {
        attributes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|attribute| {
                let key = attribute["key"].as_str()?.to_owned();
                let value = attribute["value"].as_object()?.values().next()?.clone();
                Some((key, value))
            })
            .collect()
    };
    for batch in batches {
        for resource_spans in batch["resourceSpans"].as_array().into_iter().flatten() {
            resource.extend(values(&resource_spans["resource"]["attributes"]));
            for scope in resource_spans["scopeSpans"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                    spans.push(Span {
                        name: text("name"),
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent_id: text("parentSpanId"),
                        attributes: values(&span["attributes"]),
                    });
                }
            }
        }
    }
    (spans, resource)
}

/// A free loopback port (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A client of a host's trace stream: every batch it is sent, in order.
struct StreamClient {
    batches: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StreamClient {
    /// Connects to `ws://127.0.0.1:port`, trying until the host listens.
    async fn connect(port: u16) -> Self {
        let url = format!("ws://127.0.0.1:{port}");
        let mut attempts = 0;
        let socket = loop {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((socket, _)) => break socket,
                Err(error) => {
                    attempts += 1;
                    assert!(
                        attempts < 500,
                        "the trace stream at {url} never answered: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let batches = Arc::new(Mutex::new(Vec::new()));
        let recorded = batches.clone();
        let task = tokio::spawn(async move {
            let mut socket = socket;
            while let Some(Ok(message)) = socket.next().await {
                if let tokio_tungstenite::tungstenite::Message::Binary(bytes) = message {
                    let batch = serde_json::from_slice(&bytes).expect("a batch is OTLP JSON");
                    recorded.lock().expect("batches").push(batch);
                }
            }
        });
        Self { batches, task }
    }

    /// The batches received until the host closed the stream (it exits).
    async fn finish(self) -> Vec<Value> {
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the stream ends when the host exits")
            .expect("the stream reader");
        self.batches.lock().expect("batches").clone()
    }
}

/// A host over gRPC on stdio streaming its traces on a port of its own, with a client
/// of that stream connected.
async fn traced_host(binary: &std::path::Path, extra: &[&str]) -> (StdioHost, StreamClient) {
    let port = free_port();
    let listen = format!("ws://127.0.0.1:{port}");
    let mut args = vec!["--otel-trace-listen", listen.as_str()];
    args.extend_from_slice(extra);
    let host = crate::spawn(binary, &args).await;
    let stream = StreamClient::connect(port).await;
    (host, stream)
}

/// Ends the host as codex does (the connection goes) and returns every batch it sent.
async fn finish(mut host: StdioHost, stream: StreamClient) -> Vec<Value> {
    host.disconnect();
    let status = tokio::time::timeout(Duration::from_secs(20), host.child().wait())
        .await
        .expect("the host exits when its client goes")
        .expect("wait");
    assert!(status.success(), "the host exited with {status}");
    stream.finish().await
}

/// The differential's session: open, an exec with a nested call, an exec that yields, a
/// wait on it, close.
async fn traced_session(host: &StdioHost) {
    let mut driver = open(host, 0).await;
    let mut first = exec_request(r#"text(JSON.stringify(await tools.echo({n: 1})));"#);
    first.enabled_tools = corpus_tools();
    driver.run(first).await.expect("the exec with a call");
    let mut second =
        exec_request(r#"text("a"); await new Promise((r) => setTimeout(r, 300)); text("b");"#);
    second.yield_time_ms = 50;
    let outcome = driver.run(second).await.expect("the yielding exec");
    driver
        .wait(&outcome.cell_id, 5_000, None)
        .await
        .expect("wait");
    driver.close().await.expect("close");
}

/// Each span's name with its parent's name (empty for a root), sorted: the shape of a trace.
fn shape(spans: &[Span]) -> Vec<(String, String)> {
    let names: BTreeMap<&str, &str> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span.name.as_str()))
        .collect();
    let mut shape: Vec<(String, String)> = spans
        .iter()
        .map(|span| {
            let parent = names
                .get(span.parent_id.as_str())
                .copied()
                .unwrap_or_default();
            (span.name.clone(), parent.to_owned())
        })
        .collect();
    shape.sort();
    shape
}

#[tokio::test]
async fn the_same_session_gives_codexs_span_names_shape_and_attribute_keys() {
    let mut seen = Vec::new();
    for binary in [codex_host(), our_host()] {
        let (host, stream) = traced_host(&binary, &[]).await;
        traced_session(&host).await;
        seen.push(spans_of(&finish(host, stream).await));
    }
    let [(codex, codex_resource), (ours, our_resource)] = <[_; 2]>::try_from(seen).unwrap();
    let codex_shape = shape(&codex);
    assert!(
        codex_shape.len() >= 8,
        "codex's host sent fewer spans than the session makes: {codex_shape:?}"
    );
    // Ours may add spans; it may not lose one or hang one elsewhere.
    let mut missing = codex_shape.clone();
    for entry in shape(&ours) {
        if let Some(at) = missing.iter().position(|codex| *codex == entry) {
            missing.remove(at);
        }
    }
    assert!(
        missing.is_empty(),
        "spans of codex's host that ours lacks: {missing:?}"
    );
    // The attribute keys of each span codex's host has.
    let keys = |spans: &[Span], name: &str| -> Vec<Vec<String>> {
        let mut keys: Vec<Vec<String>> = spans
            .iter()
            .filter(|span| span.name == name)
            .map(|span| span.attributes.keys().cloned().collect())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    };
    for (name, _) in &codex_shape {
        assert_eq!(
            keys(&ours, name),
            keys(&codex, name),
            "attribute keys of {name}"
        );
    }
    let resource_keys =
        |resource: &BTreeMap<String, Value>| -> Vec<String> { resource.keys().cloned().collect() };
    assert_eq!(resource_keys(&our_resource), resource_keys(&codex_resource));
    for key in ["service.name", "env"] {
        assert_eq!(our_resource[key], codex_resource[key], "resource {key}");
    }
    // The values operators filter by, on ours.
    let execute = ours
        .iter()
        .find(|span| span.name == "code_mode_host.grpc.execute")
        .expect("an execute span");
    assert!(execute.text("session.id").is_some_and(|id| id.len() == 36));
    let call = ours
        .iter()
        .find(|span| span.name == "code_mode.runtime.invoke_tool")
        .expect("a tool call span");
    assert_eq!(call.text("tool_name"), Some("echo"));
    assert_eq!(call.text("cell.id"), Some("1"));
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An `Execute` of `source` (with the corpus's tools) carrying `traceparent` metadata.
async fn execute_with_traceparent(driver: &mut Driver, source: &str, traceparent: &str) {
    let mut request = exec_request(source);
    request.session_id = driver.session_id.clone();
    request.execution_id = driver.execution_id();
    request.tool_call_id = format!("call_{}", request.execution_id);
    request.enabled_tools = corpus_tools();
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ASCII metadata"));
    let mut stream = driver
        .client
        .execute(request)
        .await
        .expect("execute")
        .into_inner();
    while let Some(event) = stream.next().await {
        event.expect("an execute event");
    }
}

#[tokio::test]
async fn traceparent_metadata_parents_the_execute_span_and_comes_back_on_each_tool_call() {
    let (host, stream) = traced_host(&our_host(), &[]).await;
    let mut driver = open(&host, 0).await;
    let given = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    execute_with_traceparent(
        &mut driver,
        "await tools.echo({a: 1}); await tools.echo({b: 2});",
        &given,
    )
    .await;
    // A malformed value is ignored: the cell runs, its span is a root.
    execute_with_traceparent(&mut driver, "await tools.echo({c: 3});", "00-nonsense-01").await;
    let invocations = driver.invocations.lock().expect("invocations").clone();
    drop(driver);
    let (spans, _) = spans_of(&finish(host, stream).await);
    let executes: Vec<&Span> = spans
        .iter()
        .filter(|span| span.name == "code_mode_host.grpc.execute")
        .collect();
    assert_eq!(executes.len(), 2, "{spans:#?}");
    let (parented, root): (Vec<&Span>, Vec<&Span>) = executes
        .into_iter()
        .partition(|span| span.trace_id == CALLER_TRACE);
    let [parented] = parented[..] else {
        panic!("one execute in the caller's trace")
    };
    let [root] = root[..] else {
        panic!("one execute in a trace of its own")
    };
    assert_eq!(parented.parent_id, CALLER_SPAN);
    assert_eq!(root.parent_id, "", "a malformed traceparent is ignored");
    assert_eq!(invocations.len(), 3);
    for invocation in &invocations {
        let execute = if invocation.input_json.contains('c') {
            root
        } else {
            parented
        };
        assert_eq!(
            invocation.traceparent.as_deref(),
            Some(format!("00-{}-{}-01", execute.trace_id, execute.span_id).as_str()),
            "ToolInvocation.traceparent is the execute span's context"
        );
        let call = spans
            .iter()
            .find(|span| {
                span.name == "code_mode.runtime.invoke_tool"
                    && span.text("runtime_tool_call_id") == Some(&invocation.runtime_tool_call_id)
                    && span.trace_id == execute.trace_id
            })
            .expect("a span for each tool call");
        assert_eq!(call.parent_id, execute.span_id);
    }
}

/// A session on a host listening on TCP, answered by the corpus's responder.
async fn open_over_tcp(host: &Listening) -> Driver {
    Driver::open(
        host.client().await,
        proto::OpenSessionRequest {
            max_pending_delegate_calls: 16,
            ..Default::default()
        },
        responder(),
    )
    .await
    .expect("open")
}

/// The count in a `/metrics` page of the counter `name`.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// The execute spans among `client`'s batches so far.
fn executes_seen(client: &StreamClient) -> usize {
    let batches = client.batches.lock().expect("batches").clone();
    spans_of(&batches)
        .0
        .iter()
        .filter(|span| span.name == "code_mode_host.grpc.execute")
        .count()
}

#[tokio::test]
async fn every_stream_client_gets_every_batch_browsers_are_refused_and_a_stalled_client_holds_nothing_up()
 {
    let port = free_port();
    let listen = format!("ws://127.0.0.1:{port}");
    // Big spans (captured source and arguments), sent every 10 ms: a client that does not
    // read soon has a full socket.
    let host = Listening::start_with(
        &our_host(),
        &[
            "--otel-trace-listen",
            &listen,
            "--trace-capture",
            "source,arguments",
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", std::ffi::OsStr::new("10"))],
    )
    .await;
    let first = StreamClient::connect(port).await;
    let second = StreamClient::connect(port).await;
    // A page in a browser sends its Origin: refused.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            listen.as_str(),
        )
        .expect("a request");
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().expect("a header"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!(
            "a request with an Origin was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    // A client that connects and never reads, with a small receive buffer so that the
    // host's side of it is soon full.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let (stalled, _) = tokio_tungstenite::client_async(listen.as_str(), stream)
        .await
        .expect("the stalled client connects");
    let mut driver = open_over_tcp(&host).await;
    let pad = "x".repeat(4000);
    let cells = 400;
    for n in 0..cells {
        let mut request = exec_request(&format!(
            "// {pad}\nawait tools.echo({{n: {n}, pad: {pad:?}}});"
        ));
        request.enabled_tools = corpus_tools();
        let outcome = tokio::time::timeout(Duration::from_secs(30), driver.run(request))
            .await
            .expect("a cell is not held up by a stalled trace client")
            .expect("execute");
        assert!(matches!(
            outcome.status,
            Some(proto::cell_outcome::Status::Completed(_))
        ));
    }
    assert!(
        crate::eventually(30, || executes_seen(&first) == cells
            && executes_seen(&second) == cells)
        .await,
        "every cell's span reached both reading clients: {} and {} of {cells}",
        executes_seen(&first),
        executes_seen(&second)
    );
    let (_, _, metrics) = host.http1("GET", "/metrics").await;
    assert!(
        counter(&metrics, "code_mode_trace_stream_batches_missed_total") > 0,
        "the stalled client never fell behind, so this test proved nothing: {metrics}"
    );
    drop((driver, stalled));
    host.stop().await;
}

#[tokio::test]
async fn an_exporter_that_is_down_costs_cells_nothing_and_its_dropped_batches_are_counted() {
    let dead = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let host = Listening::start_with(
        &our_host(),
        &["--otel-trace-exporter", &dead],
        &[("OTEL_BSP_SCHEDULE_DELAY", std::ffi::OsStr::new("50"))],
    )
    .await;
    let mut driver = open_over_tcp(&host).await;
    for n in 0..20 {
        let mut request = exec_request(&format!("text(await tools.echo({{n: {n}}}));"));
        request.enabled_tools = corpus_tools();
        let outcome = driver.run(request).await.expect("execute");
        assert!(matches!(
            outcome.status,
            Some(proto::cell_outcome::Status::Completed(_))
        ));
    }
    let mut counted = 0;
    for _ in 0..100 {
        let (status, _, metrics) = host.http1("GET", "/metrics").await;
        assert_eq!(status, 200);
        counted = counter(&metrics, "code_mode_trace_batches_dropped_total");
        if counted > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted > 0, "no dropped batch was counted");
    drop(driver);
    host.stop().await;
}

/// Model-written text that must stay out of spans unless capture is on.
const SECRET_SOURCE: &str = "source-secret-7d1f";
const SECRET_ARGUMENT: &str = "argument-secret-93ab";

async fn spans_of_a_secret_cell(extra: &[&str]) -> String {
    let (host, stream) = traced_host(&our_host(), extra).await;
    let mut driver = open(&host, 0).await;
    let mut request = exec_request(&format!(
        "// {SECRET_SOURCE}\ntext(JSON.stringify(await tools.echo({{s: {SECRET_ARGUMENT:?}}})));"
    ));
    request.enabled_tools = corpus_tools();
    driver.run(request).await.expect("execute");
    drop(driver);
    serde_json::to_string(&finish(host, stream).await).expect("JSON")
}

#[tokio::test]
async fn spans_hold_no_source_or_arguments_unless_asked() {
    let private = spans_of_a_secret_cell(&[]).await;
    assert!(
        private.contains("code_mode.runtime.invoke_tool"),
        "{private}"
    );
    assert!(
        !private.contains(SECRET_SOURCE),
        "the source leaked into a span"
    );
    assert!(
        !private.contains(SECRET_ARGUMENT),
        "an argument leaked into a span"
    );
    let captured = spans_of_a_secret_cell(&["--trace-capture", "source,arguments"]).await;
    assert!(
        captured.contains(SECRET_SOURCE),
        "capture on: the source is in a span"
    );
    assert!(
        captured.contains(SECRET_ARGUMENT),
        "capture on: the arguments are in a span"
    );
}

#[tokio::test]
async fn a_real_trace_store_shows_the_cell_under_the_callers_span() {
    use code_mode_conformance::phoenix::{
        Placement, assert_cell_tree, assert_cell_work, caller, children, has_cell_work, phoenix,
    };
    let phoenix = tokio::task::spawn_blocking(phoenix).await.expect("Phoenix");
    let (trace_id, traceparent) = caller("codex front");
    let mut command = tokio::process::Command::new(our_host());
    command
        .args(["--listen", "grpc+stdio://"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stderr(std::process::Stdio::null());
    let mut host = StdioHost::spawn(command).await.expect("spawn our host");
    let mut driver = open(&host, 0).await;
    execute_with_traceparent(
        &mut driver,
        "await tools.echo({a: 1}); await tools.ns__search({b: 2});",
        &traceparent,
    )
    .await;
    drop(driver);
    host.disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(20), host.child().wait()).await;
    let spans = tokio::task::spawn_blocking(move || {
        phoenix.trace_when(&trace_id, |spans| {
            spans
                .iter()
                .filter(|span| span["name"] == "code_mode.runtime.invoke_tool")
                .count()
                >= 2
                && spans.iter().any(|span| span["name"] == "code_mode.cell")
                && has_cell_work(spans, Placement::OutOfProcess)
        })
    })
    .await
    .expect("the trace");
    let cell = assert_cell_tree(
        &spans,
        "code_mode_host.grpc.execute",
        ["echo", "ns__search"],
    );
    // The runtime (this executable in its runtime mode) handed its spans back to the front.
    assert_cell_work(&spans, cell, Placement::OutOfProcess);
    let execute = spans
        .iter()
        .find(|span| span["name"] == "code_mode_host.grpc.execute")
        .expect("the execute span");
    assert_eq!(
        children(&spans, execute, "code_mode.runtime.invoke_tool").len(),
        2,
        "Codex's span for each nested call, under the execute span"
    );
}
