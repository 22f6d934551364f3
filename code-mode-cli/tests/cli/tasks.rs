//! `code-mode mcp` and MCP Tasks (SEP-2663, `io.modelcontextprotocol/tasks`): a client
//! that declares the extension gets a task for an `exec` whose cell still runs, polls it,
//! answers the approvals its cell waits on through `tasks/update`, cancels it, and fetches
//! it from the replica that took its session over after its first one was killed.

use super::Scratch;
use super::mcp_http::{HttpServer, approval_server, approval_tools, replica_args_with};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, ClientCapabilities, ClientConfig,
    DetailedTask, ElicitRequestParams, GetTaskParams, Implementation, InputRequest, TaskPayload,
    TaskStatus, UpdateTaskParams,
};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How long a task may take to reach the status a step waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// The client: the official Rust SDK's, declaring MCP Tasks and form elicitation. Asked
/// through elicitation, it would decline (the SDK's default), which would deny the call:
/// a client that declared tasks must be asked through its task's input requests only.
#[derive(Clone)]
struct TasksClient;

impl ClientHandler for TasksClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder()
                .enable_elicitation()
                .enable_tasks()
                .build(),
            Implementation::new("code-mode-tasks-test", "1.0.0"),
        )
    }
}

async fn connect(url: &str) -> RunningService<RoleClient, TasksClient> {
    code_mode_tls::use_ring();
    TasksClient
        .serve(StreamableHttpClientTransport::from_uri(url))
        .await
        .expect("the client connects")
}

/// `exec` of `code` (its first line may be a pragma).
async fn exec(client: &RunningService<RoleClient, TasksClient>, code: &str) -> CallToolResponse {
    let arguments = json!({ "code": code });
    let Value::Object(arguments) = arguments else {
        unreachable!()
    };
    client
        .call_tool_once(CallToolRequestParams::new("exec").with_arguments(arguments))
        .await
        .expect("exec answers")
}

/// Polls task `id` until `done` says it reached the state a step waits for.
async fn until(
    client: &RunningService<RoleClient, TasksClient>,
    id: &str,
    done: impl Fn(&DetailedTask) -> bool,
) -> DetailedTask {
    let started = Instant::now();
    loop {
        let task = client
            .get_task(GetTaskParams::new(id))
            .await
            .expect("tasks/get answers")
            .task;
        if done(&task) {
            return task;
        }
        assert!(started.elapsed() < PATIENCE, "task {id} stuck at {task:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The texts of a completed task's result.
fn result_texts(task: &DetailedTask) -> Vec<String> {
    let TaskPayload::Completed { result } = &task.payload else {
        panic!("not completed: {task:?}");
    };
    result["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter_map(|block| block["text"].as_str().map(str::to_owned))
        .collect()
}

/// `tasks/update` of task `id`: the approval form of input request `key` answered (accepted)
/// with `content`.
async fn answer(
    client: &RunningService<RoleClient, TasksClient>,
    id: &str,
    key: &str,
    content: Value,
) -> Result<(), rmcp::ServiceError> {
    let response = json!({"action": "accept", "content": content});
    client
        .update_task(UpdateTaskParams::new(
            id,
            [(key.to_owned(), response)].into(),
        ))
        .await
}

/// The one input request of an `input_required` task: its key and its question.
fn asked(task: &DetailedTask) -> (String, String) {
    let TaskPayload::InputRequired { input_requests } = &task.payload else {
        panic!("not input_required: {task:?}");
    };
    assert_eq!(input_requests.len(), 1, "{task:?}");
    let (key, request) = input_requests.iter().next().expect("one");
    let InputRequest::Elicitation(request) = request else {
        panic!("not an elicitation: {request:?}");
    };
    let ElicitRequestParams::FormElicitationParams { message, .. } = &request.params else {
        panic!("not a form: {request:?}");
    };
    (key.clone(), message.clone())
}

/// The task of an `exec` answered with one.
fn task_id(response: CallToolResponse) -> String {
    match response {
        CallToolResponse::Task(created) => {
            assert_eq!(created.task.status, TaskStatus::Working, "{created:?}");
            created.task.task_id
        }
        other => panic!("no task: {other:?}"),
    }
}

/// Through the official Rust SDK: an `exec` that ends within its yield time is answered
/// at once; one whose cell must wait becomes a task whose result is the cell's whole
/// output; an approval waits as the task's input request, answered with an edited input
/// (sent once, with that input) or a denial (never sent; the cell reads the message);
/// `wait` refuses a cell a task follows; `tasks/cancel` terminates the cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tasks_follow_cells_and_take_approvals_as_input_requests() {
    let scratch = Scratch::new();
    let (server, ran, _) = approval_server(&scratch);
    let client = connect(&server.url).await;

    match exec(&client, "console.log('quick');").await {
        CallToolResponse::Complete(result) => {
            let texts: Vec<String> = result
                .content
                .iter()
                .filter_map(|block| block.as_text().map(|text| text.text.clone()))
                .collect();
            assert!(texts[0].starts_with("Script completed"), "{texts:?}");
            assert_eq!(texts[1..], ["quick"]);
        }
        other => panic!("a cell that ends at once is no task: {other:?}"),
    }

    let id = task_id(
        exec(
            &client,
            "console.log('before');\nconst sent = await tools.send({to: 'a'});\nconsole.log('sent', sent);",
        )
        .await,
    );
    let waiting = until(&client, &id, |task| {
        task.status() == TaskStatus::InputRequired
    })
    .await;
    let (key, question) = asked(&waiting);
    assert_eq!(
        question,
        "A script wants to call `send` (it sends mail) with this input: {\"to\":\"a\"}. Approve it? (You may give an edited input as JSON; a denial may say why.)"
    );
    assert_eq!(
        waiting.task.status_message.as_deref(),
        Some(
            "Waiting for approval: `send` (call tool-1), because: it sends mail. The cell goes on when a person decides."
        )
    );
    // The model's `wait` does not compete with the task for the cell's output.
    let arguments = json!({ "cell_id": id });
    let Value::Object(arguments) = arguments else {
        unreachable!()
    };
    let refused = client
        .call_tool(CallToolRequestParams::new("wait").with_arguments(arguments))
        .await
        .expect("wait answers");
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    assert_eq!(
        refused.content[0].as_text().map(|text| text.text.as_str()),
        Some(
            format!(
                "cell {id} is followed by MCP task `{id}`: its output and result come from `tasks/get`"
            )
            .as_str()
        )
    );
    // An answer to a request the task did not make is refused, and decides nothing.
    let stray = answer(&client, &id, "not-asked", json!({"approve": true})).await;
    assert!(stray.is_err(), "{stray:?}");
    answer(
        &client,
        &id,
        &key,
        json!({"approve": true, "input": "{\"to\":\"b\"}"}),
    )
    .await
    .expect("tasks/update answers");
    let done = until(&client, &id, |task| task.status() == TaskStatus::Completed).await;
    let texts = result_texts(&done);
    assert!(texts[0].starts_with("Script completed"), "{texts:?}");
    assert_eq!(
        texts[1..],
        ["before", "sent true"],
        "the whole output, once"
    );
    // An ended task takes no more answers; another session does not see it.
    let late = client
        .update_task(UpdateTaskParams::new(&id, Default::default()))
        .await;
    assert!(late.is_err(), "{late:?}");
    let other = connect(&server.url).await;
    let foreign = other.get_task(GetTaskParams::new(&id)).await;
    assert!(foreign.is_err(), "{foreign:?}");
    other.cancel().await.expect("the other client closes");

    let denied = task_id(
        exec(
            &client,
            "try { await tools.send({to: 'c'}); } catch (error) { console.log('refused:', String(error)); }",
        )
        .await,
    );
    let (key, _) = asked(
        &until(&client, &denied, |task| {
            task.status() == TaskStatus::InputRequired
        })
        .await,
    );
    answer(
        &client,
        &denied,
        &key,
        json!({"approve": false, "message": "not now"}),
    )
    .await
    .expect("tasks/update answers");
    let done = until(&client, &denied, |task| {
        task.status() == TaskStatus::Completed
    })
    .await;
    assert_eq!(
        result_texts(&done)[1..],
        ["refused: denied: the call of `send` was not approved, so it did not run: not now"]
    );

    let sleeping = task_id(
        exec(
            &client,
            "// @exec: {\"yield_time_ms\": 100}\nconsole.log('asleep');\nawait new Promise((resolve) => setTimeout(resolve, 600000));",
        )
        .await,
    );
    client
        .cancel_task(CancelTaskParams::new(&sleeping))
        .await
        .expect("tasks/cancel answers");
    until(&client, &sleeping, |task| {
        task.status() == TaskStatus::Cancelled
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&ran).expect("the tool ran"),
        "{\"to\":\"b\"}\n",
        "the input approved, once; the denied call never"
    );
    client.cancel().await.expect("the client closes");
}

/// One JSON-RPC request over streamable HTTP, as any client sends it: the response's
/// JSON-RPC message (from a JSON body or the SSE event that carries it) and the session id
/// the server named.
async fn post(url: &str, session: Option<&str>, message: &Value) -> (Option<Value>, String) {
    code_mode_tls::use_ring();
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(message.to_string());
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await.expect("the server answers");
    let named = response
        .headers()
        .get("mcp-session-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let status = response.status();
    let body = response.text().await.expect("a body");
    assert!(status.is_success(), "{status}: {body}");
    let answer = body
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .chain(std::iter::once(body.as_str()))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .find(|message| message.get("id").is_some());
    (
        answer,
        named.or(session.map(str::to_owned)).unwrap_or_default(),
    )
}

/// A request's result (its error fails the test).
async fn call(url: &str, session: &str, method: &str, params: Value) -> Value {
    let message = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (answer, _) = post(url, Some(session), &message).await;
    let answer = answer.expect("a response");
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

/// Two replicas on one Postgres: a task whose cell waits on an approval, opened on A; A
/// killed with SIGKILL. The client polls the same session on B, which takes it over once
/// A's lease ran out, finds the task as it was kept and still waiting, takes the approval
/// through `tasks/update`, follows the cell on and gives its result: the call sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_task_outlives_its_replica_and_another_one_finishes_it() {
    let scratch = Scratch::new();
    let cluster = code_mode_conformance::PgCluster::start();
    let (tools, ran) = approval_tools(&scratch);
    let args = replica_args_with(&tools, &cluster, "2s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut a = HttpServer::start(&args, &[]).expect("A starts");
    let b = HttpServer::start(&args, &[]).expect("B starts");
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
        "clientInfo": {"name": "raw", "version": "1"},
    }});
    let (_, session) = post(&a.url, None, &initialize).await;
    assert!(!session.is_empty(), "a session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(&a.url, Some(&session), &initialized).await;
    let created = call(
        &a.url,
        &session,
        "tools/call",
        json!({"name": "exec", "arguments": {"code": "console.log('before');\nconsole.log('sent', await tools.send({to: 'a'}));"}}),
    )
    .await;
    assert_eq!(created["resultType"], "task", "{created}");
    let id = created["taskId"].as_str().expect("a task id").to_owned();
    let started = Instant::now();
    let on = |url: &str, wanted: &'static str| {
        let (url, session, id) = (url.to_owned(), session.clone(), id.clone());
        async move {
            loop {
                let task = call(&url, &session, "tasks/get", json!({"taskId": id})).await;
                if task["status"] == wanted {
                    return task;
                }
                assert!(started.elapsed() < PATIENCE * 2, "stuck at {task}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    on(&a.url, "input_required").await;
    a.kill();
    let waiting = on(&b.url, "input_required").await;
    let key = waiting["inputRequests"]
        .as_object()
        .and_then(|requests| requests.keys().next())
        .expect("an input request")
        .clone();
    call(
        &b.url,
        &session,
        "tasks/update",
        json!({"taskId": id, "inputResponses": {key: {"action": "accept", "content": {"approve": true}}}}),
    )
    .await;
    let done = on(&b.url, "completed").await;
    let texts: Vec<&str> = done["result"]["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter_map(|block| block["text"].as_str())
        .collect();
    assert!(texts[0].starts_with("Script completed"), "{done}");
    assert_eq!(texts[1..], ["before", "sent true"], "{done}");
    assert_eq!(
        std::fs::read_to_string(&ran).expect("the tool ran"),
        "{\"to\":\"a\"}\n",
        "sent once, by B\n{}",
        b.log()
    );
}
