//! A minimal owner for one cell: answers tool calls with a handler, fires timers after
//! their delay, optionally terminates, and collects every event until the cell finishes.

use code_mode::protocol::{ContentItem, JsonText, ToolError, ToolKind};
use code_mode::{
    CellCommand, CellConfig, CellEvent, CellLimits, CellOutcome, ContextSource, IsolateShelf,
    StoredValues, ToolCallRequest, ToolDefinition, spawn_cell_from, spawn_cell_on,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// No test cell may run longer than this; a hang fails the test instead of blocking CI.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// How a tool call is answered: `None` leaves it pending forever.
pub type Answer = Option<Result<String, String>>;
type Handler = Arc<dyn Fn(&ToolCallRequest) -> Answer + Send + Sync>;

/// The default tools: `echo` returns its input (or `null`), `get_user` a user object,
/// `fail` rejects, `block` never answers, `proto` returns a `__proto__` key, `freeform_tool`
/// is freeform, and `mcp__srv__do-thing` has a name that needs normalising.
pub fn default_tools() -> Vec<ToolDefinition> {
    vec![
        ToolDefinition::new("echo", "Returns its input.", ToolKind::Function),
        ToolDefinition::new("get_user", "Returns a user.", ToolKind::Function),
        ToolDefinition::new("fail", "Always fails.", ToolKind::Function),
        ToolDefinition::new("block", "Never answers.", ToolKind::Function),
        ToolDefinition::new("proto", "Returns a __proto__ key.", ToolKind::Function),
        ToolDefinition::new("freeform_tool", "Takes raw text.", ToolKind::Freeform),
        ToolDefinition::new("mcp__srv__do-thing", "Namespaced.", ToolKind::Function),
    ]
}

pub fn default_answer(call: &ToolCallRequest) -> Answer {
    match call.name.as_str() {
        "echo" | "freeform_tool" | "mcp__srv__do-thing" => {
            Some(Ok(call.input.clone().unwrap_or_else(|| "null".to_owned())))
        }
        "get_user" => Some(Ok(r#"{"name":"Ada","id":1}"#.to_owned())),
        "fail" => Some(Err("tool exploded".to_owned())),
        "proto" => Some(Ok(r#"{"__proto__":{"isAdmin":true},"ok":1}"#.to_owned())),
        _ => None,
    }
}

/// Everything a cell reported.
#[derive(Debug)]
pub struct Run {
    pub events: Vec<CellEvent>,
    pub outcome: CellOutcome,
}

impl Run {
    pub fn items(&self) -> Vec<ContentItem> {
        self.events
            .iter()
            .filter_map(|event| match event {
                CellEvent::Output(item) => Some(item.clone()),
                _ => None,
            })
            .collect()
    }

    /// The text items; panics on an image.
    pub fn texts(&self) -> Vec<String> {
        self.items()
            .into_iter()
            .map(|item| match item {
                ContentItem::InputText { text } => text,
                other => panic!("expected only text items, got {other:?}"),
            })
            .collect()
    }

    pub fn notifications(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|event| match event {
                CellEvent::Notify(text) => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn tool_calls(&self) -> Vec<ToolCallRequest> {
        self.events
            .iter()
            .filter_map(|event| match event {
                CellEvent::ToolCall(call) => Some(call.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, wanted: &CellEvent) -> usize {
        self.events.iter().filter(|event| *event == wanted).count()
    }

    /// The error text of a completed cell; panics if it was terminated.
    pub fn error(&self) -> Option<&str> {
        match &self.outcome {
            CellOutcome::Completed { failure, .. } => {
                failure.as_ref().map(|failure| failure.text.as_str())
            }
            CellOutcome::Terminated => panic!("cell was terminated, not completed"),
        }
    }

    /// How a completed cell failed; panics if it was terminated.
    pub fn failure(&self) -> Option<code_mode_protocol::FailureKind> {
        match &self.outcome {
            CellOutcome::Completed { failure, .. } => failure.as_ref().map(|failure| failure.kind),
            CellOutcome::Terminated => panic!("cell was terminated, not completed"),
        }
    }

    /// Asserts a successful completion and returns the text items.
    #[track_caller]
    pub fn ok_texts(&self) -> Vec<String> {
        assert_eq!(self.error(), None, "cell failed; events: {:?}", self.events);
        self.texts()
    }

    /// The committed stored writes as `key → JSON text`.
    pub fn writes(&self) -> HashMap<String, String> {
        match &self.outcome {
            CellOutcome::Completed { stored_writes, .. } => stored_writes
                .iter()
                .map(|(key, value)| (key.clone(), value.to_string()))
                .collect(),
            CellOutcome::Terminated => panic!("cell was terminated, not completed"),
        }
    }
}

/// Builder for one cell run.
pub struct Cell {
    source: String,
    tools: Vec<ToolDefinition>,
    stored: StoredValues,
    max_stored_bytes: Option<u64>,
    limits: CellLimits,
    handler: Handler,
    terminate_after: Option<Duration>,
    shelf: Option<Arc<IsolateShelf>>,
    context: Option<ContextSource>,
    /// Answer the first this many calls in reverse order.
    reversed: Option<usize>,
    seed: u64,
    clock: Vec<u64>,
}

pub fn cell(source: &str) -> Cell {
    Cell {
        source: source.to_owned(),
        tools: default_tools(),
        stored: StoredValues::new(),
        max_stored_bytes: None,
        limits: CellLimits::default(),
        handler: Arc::new(default_answer),
        terminate_after: None,
        shelf: None,
        context: None,
        reversed: None,
        seed: 0,
        clock: Vec::new(),
    }
}

/// Runs `source` with the default tools and answers.
pub fn run(source: &str) -> Run {
    cell(source).run()
}

impl Cell {
    pub fn stored(mut self, key: &str, json: &str) -> Self {
        self.stored.insert(key.to_owned(), json.into());
        self
    }

    /// The session's cap on stored values (none by default).
    pub fn max_stored_bytes(mut self, max_bytes: u64) -> Self {
        self.max_stored_bytes = Some(max_bytes);
        self
    }

    /// The seed of the cell's `Math.random()`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Clock readings the cell gets before real time (a replayed cell's).
    pub fn clock(mut self, readings: &[u64]) -> Self {
        self.clock = readings.to_vec();
        self
    }

    pub fn limits(mut self, limits: CellLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn tools(mut self, tools: Vec<ToolDefinition>) -> Self {
        self.tools = tools;
        self
    }

    pub fn answer(
        mut self,
        handler: impl Fn(&ToolCallRequest) -> Answer + Send + Sync + 'static,
    ) -> Self {
        self.handler = Arc::new(handler);
        self
    }

    /// Holds the answers of the first `count` tool calls and sends them in reverse order
    /// once all have been made.
    pub fn answer_in_reverse(mut self, count: usize) -> Self {
        self.reversed = Some(count);
        self
    }

    /// Runs on an isolate parked on `shelf` if there is one, and parks it there after a
    /// normal end (a session's isolate reuse).
    pub fn on_shelf(mut self, shelf: &Arc<IsolateShelf>) -> Self {
        self.shelf = Some(Arc::clone(shelf));
        self
    }

    /// Runs on a new isolate whose context comes from `source` (no shelf, no pool).
    pub fn context_source(mut self, source: ContextSource) -> Self {
        self.context = Some(source);
        self
    }

    /// Terminates the cell this long after it was spawned.
    pub fn terminate_after(mut self, delay: Duration) -> Self {
        self.terminate_after = Some(delay);
        self
    }

    pub fn run(self) -> Run {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async move {
            tokio::time::timeout(TEST_DEADLINE, self.drive())
                .await
                .expect("the cell did not finish within the test deadline")
        })
    }

    async fn drive(self) -> Run {
        let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(16);
        let config = CellConfig {
            source: self.source,
            tools: self.tools.into(),
            stored_bytes: code_mode_protocol::stored::map_bytes(&self.stored),
            stored: Arc::new(self.stored),
            max_stored_bytes: self.max_stored_bytes,
            limits: self.limits,
            surface: code_mode_protocol::Surface::Contract,
            seed: self.seed,
            clock: Arc::from(self.clock.as_slice()),
            span: tracing::Span::none(),
        };
        let handle = match self.context {
            Some(source) => spawn_cell_from(config, events_tx, source),
            None => spawn_cell_on(config, events_tx, self.shelf.clone()),
        };
        let handle = Arc::new(handle.expect("spawn a cell"));
        if let Some(delay) = self.terminate_after {
            let handle = Arc::clone(&handle);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                handle.terminate();
            });
        }
        let mut timers = HashMap::new();
        let mut events = Vec::new();
        // Answers held back to be sent in reverse order (`answer_in_reverse`).
        let mut held = Vec::new();
        loop {
            let event = events_rx
                .recv()
                .await
                .expect("the cell stopped without a Finished event");
            match &event {
                CellEvent::ToolCall(call) => {
                    if let Some(result) = (self.handler)(call) {
                        let command = CellCommand::ToolResult {
                            id: call.id,
                            result: result.map(JsonText::new).map_err(ToolError::new),
                        };
                        match self.reversed {
                            Some(count) => {
                                held.push(command);
                                if held.len() == count {
                                    for command in held.drain(..).rev() {
                                        handle.send(command);
                                    }
                                }
                            }
                            None => {
                                handle.send(command);
                            }
                        }
                    }
                }
                CellEvent::TimerSet {
                    id,
                    delay,
                    armed_at,
                } => {
                    // Due `delay` after the cell set it, however late this reads it: timers
                    // set one after the other fire in the order of their due times.
                    let ago = std::time::Instant::now().saturating_duration_since(*armed_at);
                    let (id, delay) = (*id, delay.saturating_sub(ago));
                    let handle = Arc::clone(&handle);
                    let task = tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        handle.send(CellCommand::TimerFired { id });
                    });
                    timers.insert(id, task);
                }
                CellEvent::TimerCleared { id } => {
                    if let Some(task) = timers.remove(id) {
                        task.abort();
                    }
                }
                CellEvent::Finished(outcome) => {
                    let outcome = outcome.clone();
                    for task in timers.values() {
                        task.abort();
                    }
                    let handle = Arc::clone(&handle);
                    tokio::task::spawn_blocking(move || handle.join())
                        .await
                        .expect("join the cell thread");
                    return Run { events, outcome };
                }
                _ => {}
            }
            events.push(event);
        }
    }
}
