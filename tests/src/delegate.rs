//! A scriptable delegate that records everything the session asks of it, in order.
//!
//! Tools: `echo` returns its input (or `null`); `fail` rejects with `tool exploded`;
//! `block` waits until the test calls [`TestDelegate::release`] or the call is cancelled;
//! `stubborn` ignores cancellation and never answers; `slow` answers `"slow done"` after
//! the number of milliseconds given as input; `big` answers a string of as many bytes as
//! its input says; these take their argument as a value
//! ([`NestedToolCall::answer_with`]). `text_echo` and `bad_text` are answered as text: the
//! first with the exact text of its argument, as a JSON string; the second with text that
//! is not JSON. `whoami` answers `{ exec_call_id }`, the model's id of the exec call the
//! cell runs for. The deferred tools of [`TestDelegate::deferred_tools`] answer
//! `{ tool, input }`. Records hold ids as their text. A notification whose
//! text starts with `block` waits until cancelled; any other is delivered at once.

use code_mode_internal::sync::lock;
use code_mode_protocol::{
    BoxFuture, CellId, CodeModeSessionDelegate, JsonText, NestedToolCall, ToolDefinition,
    ToolError, ToolKind,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// How long [`TestDelegate::wait_for`] waits before failing the test.
const RECORD_WAIT: Duration = Duration::from_secs(20);

/// One thing the session did to the delegate.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    ToolStarted {
        cell_id: String,
        call_id: String,
        tool: String,
        input: Option<Value>,
    },
    ToolCancelled {
        cell_id: String,
        call_id: String,
    },
    NotifyStarted {
        cell_id: String,
        text: String,
    },
    NotifyDelivered {
        cell_id: String,
        text: String,
    },
    NotifyCancelled {
        cell_id: String,
        text: String,
    },
    CellClosed(String),
}

type Release = oneshot::Sender<Result<Value, String>>;

#[derive(Default)]
pub struct TestDelegate {
    records: Mutex<Vec<Record>>,
    blocked: Mutex<HashMap<(String, String), Release>>,
    changed: Notify,
}

impl TestDelegate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The tools the delegate implements, as a cell enables them.
    pub fn tools() -> Arc<[ToolDefinition]> {
        [
            "echo",
            "fail",
            "block",
            "stubborn",
            "slow",
            "big",
            "text_echo",
            "bad_text",
            "whoami",
        ]
        .into_iter()
        .map(|name| ToolDefinition::new(name, format!("the {name} test tool"), ToolKind::Function))
        .collect()
    }

    /// [`TestDelegate::tools`] plus deferred tools shaped like MCP servers' (contract 8.3):
    /// a weather server's and a files server's, and 200 more of a `misc` server.
    pub fn deferred_tools() -> Arc<[ToolDefinition]> {
        let deferred = [
            ("mcp__weather__get_weather", "Current weather for a city.\n```ts\ndeclare const tools: {\n  mcp__weather__get_weather(args: { city: string }): Promise<unknown>;\n};\n```"),
            ("mcp__weather__get_forecast", "Forecast for the next days.\n```ts\ndeclare const tools: {\n  mcp__weather__get_forecast(args: { city: string; days?: number }): Promise<unknown>;\n};\n```"),
            ("mcp__files__read_file", "Reads a file.\n```ts\ndeclare const tools: {\n  mcp__files__read_file(args: { path: string }): Promise<unknown>;\n};\n```"),
        ]
        .into_iter()
        .map(|(name, description)| (name.to_owned(), description.to_owned()))
        .chain((0..200).map(|n| (format!("mcp__misc__task_{n}"), format!("Does task number {n}."))));
        Self::tools()
            .iter()
            .cloned()
            .chain(deferred.map(|(name, description)| {
                ToolDefinition::new(name, description, ToolKind::Function).with_deferred(true)
            }))
            .collect()
    }

    fn record(&self, record: Record) {
        lock(&self.records).push(record);
        self.changed.notify_waiters();
    }

    /// Everything recorded so far.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.records).clone()
    }

    /// How many times `cell_closed` was called for `cell_id`.
    pub fn closed_count(&self, cell_id: &(impl std::fmt::Display + ?Sized)) -> usize {
        let cell_id = cell_id.to_string();
        self.records()
            .iter()
            .filter(|record| matches!(record, Record::CellClosed(id) if *id == cell_id))
            .count()
    }

    /// Waits until a record satisfies `predicate` and returns it.
    ///
    /// # Panics
    /// If none does within 20 seconds.
    pub async fn wait_for(&self, predicate: impl Fn(&Record) -> bool) -> Record {
        let deadline = tokio::time::Instant::now() + RECORD_WAIT;
        loop {
            let changed = self.changed.notified();
            if let Some(record) = self.records().into_iter().find(|record| predicate(record)) {
                return record;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "no matching record within {RECORD_WAIT:?}; records: {:?}",
                    self.records()
                );
            }
        }
    }

    /// Waits until `cell_closed` was called for `cell_id`.
    pub async fn wait_closed(&self, cell_id: &str) {
        self.wait_for(|record| matches!(record, Record::CellClosed(id) if id == cell_id))
            .await;
    }

    /// Waits until `tool-N` of a cell has started.
    pub async fn wait_started(&self, cell_id: &str, call_id: &str) {
        self.wait_for(|record| {
            matches!(record, Record::ToolStarted { cell_id: c, call_id: t, .. } if c == cell_id && t == call_id)
        })
        .await;
    }

    /// Answers a blocked `block` call once it has started.
    pub async fn release(&self, cell_id: &str, call_id: &str, result: Result<Value, String>) {
        self.wait_started(cell_id, call_id).await;
        let sender = lock(&self.blocked).remove(&(cell_id.to_owned(), call_id.to_owned()));
        let sender = sender.unwrap_or_else(|| panic!("{cell_id}/{call_id} is not blocked"));
        let _ = sender.send(result);
    }

    /// Registers a `block` call so that [`TestDelegate::release`] can answer it; done before
    /// the call is recorded as started, so a test that saw it started can release it.
    fn register_block(
        &self,
        call: &NestedToolCall<Value>,
    ) -> oneshot::Receiver<Result<Value, String>> {
        let (release, released) = oneshot::channel();
        let key = (call.cell_id.to_string(), call.call_id.to_string());
        lock(&self.blocked).insert(key, release);
        released
    }

    async fn block(
        &self,
        call: &NestedToolCall<Value>,
        released: oneshot::Receiver<Result<Value, String>>,
        cancel: CancellationToken,
    ) -> Result<Value, ToolError> {
        tokio::select! {
            answer = released => answer
                .unwrap_or_else(|_| Err("release dropped".to_owned()))
                .map_err(ToolError::new),
            () = cancel.cancelled() => {
                self.record(Record::ToolCancelled {
                    cell_id: call.cell_id.to_string(),
                    call_id: call.call_id.to_string(),
                });
                Err(ToolError::cancelled())
            }
        }
    }
}

impl TestDelegate {
    /// The tools that take their argument as a value.
    async fn answer_value(
        &self,
        call: NestedToolCall<Value>,
        cancel: CancellationToken,
    ) -> Result<Value, ToolError> {
        let released = (call.tool_name == "block").then(|| self.register_block(&call));
        self.record(Record::ToolStarted {
            cell_id: call.cell_id.to_string(),
            call_id: call.call_id.to_string(),
            tool: call.tool_name.clone(),
            input: call.input.clone(),
        });
        match call.tool_name.as_str() {
            "echo" => Ok(call.input.clone().unwrap_or(Value::Null)),
            "fail" => Err(ToolError::new("tool exploded")),
            "block" => match released {
                Some(released) => self.block(&call, released, cancel).await,
                None => Err(ToolError::new("block was not registered")),
            },
            "stubborn" => {
                cancel.cancelled().await;
                self.record(Record::ToolCancelled {
                    cell_id: call.cell_id.to_string(),
                    call_id: call.call_id.to_string(),
                });
                std::future::pending().await
            }
            "big" => {
                let bytes = call.input.as_ref().and_then(Value::as_u64).unwrap_or(0);
                Ok(Value::String(
                    "x".repeat(usize::try_from(bytes).unwrap_or(0)),
                ))
            }
            "slow" => {
                let millis = call.input.as_ref().and_then(Value::as_u64).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(Value::from("slow done"))
            }
            deferred if deferred.starts_with("mcp__") => Ok(serde_json::json!({
                "tool": deferred,
                "input": call.input.clone().unwrap_or(Value::Null),
            })),
            other => Err(ToolError::new(format!("unknown tool {other}"))),
        }
    }
}

impl CodeModeSessionDelegate for TestDelegate {
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        // The tools that answer with text are recorded as the others are: every call that
        // reaches the delegate is counted.
        if matches!(call.tool_name.as_str(), "text_echo" | "bad_text" | "whoami") {
            self.record(Record::ToolStarted {
                cell_id: call.cell_id.to_string(),
                call_id: call.call_id.to_string(),
                tool: call.tool_name.clone(),
                input: call
                    .input
                    .as_ref()
                    .and_then(|input| serde_json::from_str(input.as_str()).ok()),
            });
        }
        match call.tool_name.as_str() {
            "text_echo" => {
                let text = call.input.map(JsonText::into_string).unwrap_or_default();
                Box::pin(async move { Ok(JsonText::from_value(&Value::String(text))) })
            }
            "bad_text" => Box::pin(async { Ok(JsonText::new("{not json")) }),
            "whoami" => {
                let answer = serde_json::json!({ "exec_call_id": call.exec_call_id });
                Box::pin(async move { Ok(JsonText::from_value(&answer)) })
            }
            _ => call.answer_with(|call| self.answer_value(call, cancel)),
        }
    }

    fn notify(
        &self,
        cell_id: CellId,
        text: String,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        let cell_id = cell_id.to_string();
        Box::pin(async move {
            self.record(Record::NotifyStarted {
                cell_id: cell_id.clone(),
                text: text.clone(),
            });
            if text.starts_with("block") {
                cancel.cancelled().await;
                self.record(Record::NotifyCancelled { cell_id, text });
            } else {
                self.record(Record::NotifyDelivered { cell_id, text });
            }
        })
    }

    fn cell_closed(&self, cell_id: &CellId) {
        self.record(Record::CellClosed(cell_id.to_string()));
    }
}
