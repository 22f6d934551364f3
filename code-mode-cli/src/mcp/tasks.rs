//! MCP Tasks (SEP-2663, the `io.modelcontextprotocol/tasks` extension) for `code-mode mcp`
//! (issue 86). To a client that declares the extension, an `exec` whose cell still runs
//! when the call would return answers with a task instead of a result: the server follows
//! the cell to its end, the client (not the model) polls `tasks/get`, and the task's
//! result is what one `exec` would have returned had it waited that long: what the cell
//! wrote, within the `exec`'s output budget, its status, its whole wall time. A call of the cell that waits on a person puts
//! the task in `input_required`, its input request the `elicitation/create` form of
//! [`super::asking`], answered through `tasks/update`; `tasks/cancel` terminates the cell.
//!
//! With a state store a session's tasks are kept with it (in its kept options, written
//! after each slice the server followed, and a task's result before any client sees it),
//! so a client fetches its task after a restart, or from the replica that takes its
//! session over, which follows the cell on from where the store left it.

use code_mode_internal::sync::lock;
use code_mode_protocol::{
    CellFailure, CellId, CellResponse, CodeModeSession, FailureKind, SessionError, WaitRequest,
};
use code_mode_state::Approval;
use code_mode_surface::json::{item_from_json, item_json};
use code_mode_surface::{BYTES_PER_TOKEN, format_response_omitting};
use rmcp::model::{
    CallToolResult, DetailedTask, ElicitRequest, InputRequest, InputRequests, JsonObject, Task,
    TaskPayload, TaskStatus,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How long each `wait` of a followed cell lasts: the output it took is kept after each.
const SLICE_MS: u64 = 10_000;

/// How often a client is asked to poll (`pollIntervalMs`).
const POLL_INTERVAL_MS: u64 = 500;

/// The most bytes of images and audio a task keeps; later ones count as left out.
const MEDIA_KEPT: u64 = 1 << 20;

/// How long a result that could not be kept, or a `wait` that failed, waits before the
/// next try.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How many `wait`s in a row may fail (a runtime lost is rebuilt at the next one) before
/// the task ends with the failure.
const FOLLOW_ATTEMPTS: u32 = 5;

/// How long a task is kept once it ended (its `ttlMs` then counts to it).
const KEPT_AFTER_END_MS: i64 = 60 * 60 * 1000;

/// The most ended tasks a session keeps, and the most bytes of results among them (all are
/// written with the session): the oldest go first.
const ENDED_KEPT: usize = 32;
const ENDED_BYTES: usize = 4 << 20;

/// The longest pause between two tries to keep a task's result.
const KEEP_PAUSE_MAX: Duration = Duration::from_secs(30);

/// Writes the MCP session as it is now (its tasks with it).
pub(super) type Persist =
    Arc<dyn Fn() -> code_mode_protocol::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The answer to a `wait` on a cell a task follows.
pub(super) fn followed(cell: &CellId) -> String {
    format!(
        "cell {cell} is followed by MCP task `{cell}`: its output and result come from `tasks/get`"
    )
}

/// How a followed cell stands.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// Still running.
    Running,
    /// `tasks/cancel` asked for it; its termination is on the way.
    Cancelling,
    /// It ended, with the result of the call (a `CallToolResult`); `shown` once the result
    /// is kept, when clients may see it.
    Done {
        result: JsonObject,
        /// The size of `result` as JSON.
        bytes: usize,
        cancelled: bool,
        shown: bool,
    },
}

/// One task: a cell the server follows for its client.
struct Followed {
    created_at_ms: i64,
    updated_at_ms: i64,
    /// The `exec`'s output budget, for the result.
    max_tokens: u64,
    /// What the cell wrote so far, as far as the result can show it: text up to the
    /// `exec`'s budget (the item that crosses it cut at it), images
    /// and audio up to [`MEDIA_KEPT`].
    items: Vec<code_mode_protocol::ContentItem>,
    /// The bytes the cell wrote past those, which the result says were left out.
    omitted: u64,
    end: End,
}

impl Followed {
    /// The cell wrote `items`: kept within the bounds of [`Followed::items`] (the text
    /// that crosses the budget cut at it), the rest counted as left out: a cell that
    /// writes for hours costs a bounded task.
    fn take(&mut self, items: Vec<code_mode_protocol::ContentItem>) {
        let budget = self.max_tokens.saturating_mul(BYTES_PER_TOKEN);
        let (mut text, mut media) = (0u64, 0u64);
        for item in &self.items {
            match item.as_text() {
                Some(written) => text += written.len() as u64,
                None => media += size(item),
            }
        }
        for item in items {
            let Some(written) = item.as_text() else {
                media += size(&item);
                if media <= MEDIA_KEPT {
                    self.items.push(item);
                } else {
                    self.omitted += size(&item);
                }
                continue;
            };
            let room = usize::try_from(budget.saturating_sub(text)).unwrap_or(usize::MAX);
            if written.len() <= room {
                text += written.len() as u64;
                self.items.push(item);
                continue;
            }
            let mut end = room;
            while !written.is_char_boundary(end) {
                end -= 1;
            }
            if end > 0 {
                self.items
                    .push(code_mode_protocol::ContentItem::text(&written[..end]));
            }
            text = budget;
            self.omitted += (written.len() - end) as u64;
        }
    }
}

/// The bytes of an item: its text, or its data URL.
fn size(item: &code_mode_protocol::ContentItem) -> u64 {
    use code_mode_protocol::ContentItem;
    match item {
        ContentItem::InputText { text } => text.len() as u64,
        ContentItem::InputImage { image_url, .. } => image_url.len() as u64,
        ContentItem::InputAudio { audio_url } => audio_url.len() as u64,
    }
}

/// A task as the store keeps it (as JSON in the session's kept options, each task read
/// alone: one this version cannot read is left out, never the session's owner).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct KeptTask {
    cell: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    max_tokens: u64,
    items: Vec<Value>,
    #[serde(default)]
    omitted: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<JsonObject>,
    #[serde(default)]
    cancelled: bool,
    #[serde(default)]
    cancelling: bool,
}

/// Why a task request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum TaskError {
    #[error("no task `{0}` in this session")]
    Unknown(String),
    #[error("task `{0}` has ended already")]
    Ended(String),
    #[error("task `{0}` is being cancelled")]
    Cancelling(String),
    #[error(
        "task `{task}` does not wait for `{key}`: the input requests it has now are {outstanding:?}"
    )]
    NotAsked {
        task: String,
        key: String,
        outstanding: Vec<String>,
    },
}

/// An MCP session's tasks, by cell.
#[derive(Default)]
pub(super) struct Tasks {
    table: Mutex<HashMap<CellId, Followed>>,
    /// Cancelled when the MCP session ends: its followers stop.
    pub(super) stop: CancellationToken,
}

impl Tasks {
    /// A task for `cell`, which wrote `items` in the `wall_time` of its first observation;
    /// its seed state.
    pub(super) fn begin(
        &self,
        cell: &CellId,
        items: Vec<code_mode_protocol::ContentItem>,
        wall_time: Duration,
        max_tokens: u64,
    ) -> Task {
        let now = now_ms();
        let started = now.saturating_sub(i64::try_from(wall_time.as_millis()).unwrap_or(0));
        let mut followed = Followed {
            created_at_ms: started,
            updated_at_ms: now,
            max_tokens,
            items: Vec::new(),
            omitted: 0,
            end: End::Running,
        };
        followed.take(items);
        let mut table = lock(&self.table);
        table.insert(cell.clone(), followed);
        prune(&mut table, now);
        task(&cell.to_string(), started, now, TaskStatus::Working)
    }

    /// Task `cell`, which could not be kept, is dropped (its client never learns of it).
    pub(super) fn drop_task(&self, cell: &CellId) {
        lock(&self.table).remove(cell);
    }

    /// Whether the server follows `cell` for a task that has not ended.
    pub(super) fn follows(&self, cell: &CellId) -> bool {
        lock(&self.table)
            .get(cell)
            .is_some_and(|followed| !matches!(followed.end, End::Done { .. }))
    }

    /// The cells whose tasks have not ended, and whether each is being cancelled.
    pub(super) fn unfinished(&self) -> Vec<(CellId, bool)> {
        lock(&self.table)
            .iter()
            .filter(|(_, followed)| !matches!(followed.end, End::Done { .. }))
            .map(|(cell, followed)| (cell.clone(), followed.end == End::Cancelling))
            .collect()
    }

    /// The tasks as the store keeps them (a result not shown yet included: it is kept
    /// before it is shown).
    pub(super) fn kept(&self) -> Vec<Value> {
        let mut kept: Vec<KeptTask> = lock(&self.table)
            .iter()
            .map(|(cell, followed)| {
                let (result, cancelled) = match &followed.end {
                    End::Done {
                        result, cancelled, ..
                    } => (Some(result.clone()), *cancelled),
                    End::Running | End::Cancelling => (None, false),
                };
                KeptTask {
                    cell: cell.to_string(),
                    created_at_ms: followed.created_at_ms,
                    updated_at_ms: followed.updated_at_ms,
                    max_tokens: followed.max_tokens,
                    items: followed.items.iter().map(item_json).collect(),
                    omitted: followed.omitted,
                    result,
                    cancelled,
                    cancelling: followed.end == End::Cancelling,
                }
            })
            .collect();
        kept.sort_by_key(|task| task.created_at_ms);
        kept.iter()
            .filter_map(|task| serde_json::to_value(task).ok())
            .collect()
    }

    /// Takes back the tasks a store kept (an earlier process's); one this version cannot
    /// read is left out.
    pub(super) fn restore(&self, kept: Vec<Value>) {
        let mut table = lock(&self.table);
        for task in kept {
            let task: KeptTask = match serde_json::from_value(task) {
                Ok(task) => task,
                Err(error) => {
                    tracing::warn!(%error, "a kept MCP task could not be read; it is left out");
                    continue;
                }
            };
            let end = match task.result {
                Some(result) => End::Done {
                    bytes: json_size(&result),
                    result,
                    cancelled: task.cancelled,
                    shown: true,
                },
                None if task.cancelling => End::Cancelling,
                None => End::Running,
            };
            table.insert(
                CellId::parse(&task.cell),
                Followed {
                    created_at_ms: task.created_at_ms,
                    updated_at_ms: task.updated_at_ms,
                    max_tokens: task.max_tokens,
                    items: task.items.iter().filter_map(item_from_json).collect(),
                    omitted: task.omitted,
                    end,
                },
            );
        }
        prune(&mut table, now_ms());
    }

    /// Task `id` as `tasks/get` shows it; `waiting` are its cell's calls that wait on a
    /// person now.
    pub(super) fn get(
        &self,
        id: &str,
        waiting: impl FnOnce(&CellId) -> Vec<Approval>,
    ) -> Result<DetailedTask, TaskError> {
        let cell = CellId::parse(id);
        let (created, updated, end) = {
            let mut table = lock(&self.table);
            prune(&mut table, now_ms());
            let followed = table
                .get(&cell)
                .ok_or_else(|| TaskError::Unknown(id.to_owned()))?;
            (
                followed.created_at_ms,
                followed.updated_at_ms,
                followed.end.clone(),
            )
        };
        let base = |status| task(id, created, updated, status);
        let working = |message: String| {
            DetailedTask::new(
                base(TaskStatus::Working).with_status_message(message),
                TaskPayload::Working,
            )
        };
        Ok(match end {
            End::Done {
                result,
                cancelled,
                shown: true,
                ..
            } => {
                // Kept until an hour after it ended.
                let ttl = updated
                    .saturating_add(KEPT_AFTER_END_MS)
                    .saturating_sub(created);
                let ended = |status| base(status).with_ttl_ms(ttl.max(0).cast_unsigned());
                if cancelled {
                    DetailedTask::new(ended(TaskStatus::Cancelled), TaskPayload::Cancelled)
                } else {
                    DetailedTask::new(
                        ended(TaskStatus::Completed),
                        TaskPayload::Completed { result },
                    )
                }
            }
            End::Cancelling => working(format!("cell {cell} is being terminated")),
            End::Running | End::Done { .. } => {
                let waiting = waiting(&cell);
                if waiting.is_empty() {
                    working(code_mode_protocol::texts::script_running(&cell))
                } else {
                    let message = waiting
                        .iter()
                        .map(|call| {
                            code_mode_protocol::texts::approval_waiting(
                                &call.tool,
                                &call.call,
                                call.reason.as_deref(),
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    DetailedTask::new(
                        base(TaskStatus::InputRequired).with_status_message(message),
                        TaskPayload::InputRequired {
                            input_requests: input_requests(&waiting),
                        },
                    )
                }
            }
        })
    }

    /// Checks that task `id` still runs (not ended, not being cancelled) and asks, now,
    /// for each key of `keys`: the approvals they name (of `waiting`, its cell's calls
    /// that wait on a person).
    pub(super) fn asked<'a>(
        &self,
        id: &str,
        keys: impl IntoIterator<Item = &'a String>,
        waiting: impl FnOnce(&CellId) -> Vec<Approval>,
    ) -> Result<Vec<Approval>, TaskError> {
        let cell = CellId::parse(id);
        match lock(&self.table).get(&cell).map(|followed| &followed.end) {
            None => return Err(TaskError::Unknown(id.to_owned())),
            Some(End::Done { .. }) => return Err(TaskError::Ended(id.to_owned())),
            Some(End::Cancelling) => return Err(TaskError::Cancelling(id.to_owned())),
            Some(End::Running) => {}
        }
        let waiting = waiting(&cell);
        keys.into_iter()
            .map(|key| {
                waiting
                    .iter()
                    .find(|call| call.id == *key)
                    .cloned()
                    .ok_or_else(|| TaskError::NotAsked {
                        task: id.to_owned(),
                        key: key.clone(),
                        outstanding: waiting.iter().map(|call| call.id.clone()).collect(),
                    })
            })
            .collect()
    }

    /// `tasks/cancel` of task `id`: its cell, to terminate, unless it ended already.
    pub(super) fn cancel(&self, id: &str) -> Result<CellId, TaskError> {
        let cell = CellId::parse(id);
        let mut table = lock(&self.table);
        let followed = table
            .get_mut(&cell)
            .ok_or_else(|| TaskError::Unknown(id.to_owned()))?;
        if matches!(followed.end, End::Done { .. }) {
            return Err(TaskError::Ended(id.to_owned()));
        }
        followed.end = End::Cancelling;
        followed.updated_at_ms = now_ms();
        Ok(cell)
    }

    /// The cell wrote `items`.
    fn append(&self, cell: &CellId, items: Vec<code_mode_protocol::ContentItem>) {
        if let Some(followed) = lock(&self.table).get_mut(cell) {
            followed.take(items);
            followed.updated_at_ms = now_ms();
        }
    }

    /// The cell ended with `outcome` (or following it failed, with that text): the task's
    /// result, everything it wrote included, not shown until [`Self::show`]. What it wrote
    /// is dropped then: the result holds it.
    fn finish(&self, cell: &CellId, outcome: Result<CellResponse, String>) -> bool {
        let mut table = lock(&self.table);
        let Some(followed) = table.get_mut(cell) else {
            return false;
        };
        let now = now_ms();
        let cancelled = followed.end == End::Cancelling;
        let wall_time =
            Duration::from_millis(now.saturating_sub(followed.created_at_ms).cast_unsigned());
        let (cell_id, failure) = match outcome {
            Ok(response) => {
                followed.take(response.content_items().to_vec());
                match response {
                    CellResponse::Result {
                        cell_id, failure, ..
                    } => (cell_id, Ok(failure)),
                    CellResponse::Terminated { cell_id, .. }
                    | CellResponse::Yielded { cell_id, .. } => (cell_id, Err(())),
                }
            }
            Err(text) => (
                cell.clone(),
                Ok(Some(CellFailure::new(
                    FailureKind::StoppedUnexpectedly,
                    text,
                ))),
            ),
        };
        let content_items = std::mem::take(&mut followed.items);
        let whole = match failure {
            Ok(failure) => CellResponse::Result {
                cell_id,
                content_items,
                failure,
                wall_time,
            },
            Err(()) => CellResponse::Terminated {
                cell_id,
                content_items,
                wall_time,
            },
        };
        let result = CallToolResult::success(super::blocks::content(&format_response_omitting(
            &whole,
            followed.max_tokens,
            followed.omitted,
        )));
        let result = match serde_json::to_value(result) {
            Ok(Value::Object(result)) => result,
            _ => JsonObject::new(),
        };
        followed.end = End::Done {
            bytes: json_size(&result),
            result,
            cancelled,
            shown: false,
        };
        followed.updated_at_ms = now;
        prune(&mut table, now);
        true
    }

    /// The task's result is kept: clients may see it.
    fn show(&self, cell: &CellId) {
        if let Some(End::Done { shown, .. }) = lock(&self.table)
            .get_mut(cell)
            .map(|followed| &mut followed.end)
        {
            *shown = true;
        }
    }
}

/// Drops the tasks that ended over [`KEPT_AFTER_END_MS`] ago, then the oldest ended ones
/// past [`ENDED_KEPT`] or [`ENDED_BYTES`].
fn prune(table: &mut HashMap<CellId, Followed>, now: i64) {
    table.retain(|_, followed| {
        !matches!(followed.end, End::Done { shown: true, .. })
            || now.saturating_sub(followed.updated_at_ms) < KEPT_AFTER_END_MS
    });
    let mut ended: Vec<(i64, usize, CellId)> = table
        .iter()
        .filter_map(|(cell, followed)| match followed.end {
            End::Done {
                shown: true, bytes, ..
            } => Some((followed.updated_at_ms, bytes, cell.clone())),
            _ => None,
        })
        .collect();
    // Newest first: each is kept while the count and the bytes of those newer allow.
    ended.sort_by_key(|(ended_at, _, _)| std::cmp::Reverse(*ended_at));
    let mut total = 0usize;
    for (kept, (_, bytes, cell)) in ended.iter().enumerate() {
        total = total.saturating_add(*bytes);
        if kept >= ENDED_KEPT || total > ENDED_BYTES {
            table.remove(cell);
        }
    }
}

/// The size of a result as JSON.
fn json_size(result: &JsonObject) -> usize {
    serde_json::to_string(result).map_or(0, |text| text.len())
}

/// Follows `cell` of `session` to its end for its task: each slice's output joins the
/// task and the session is written; the result is kept, then shown. A `wait` that fails
/// is tried again (a runtime lost is rebuilt at the next one) up to [`FOLLOW_ATTEMPTS`]
/// times in a row. Ends early when the MCP session ends ([`Tasks::stop`]) or its session
/// shuts down: the task stays as kept, for the process that takes the session back.
pub(super) async fn follow(
    tasks: Arc<Tasks>,
    session: Arc<dyn CodeModeSession>,
    cell: CellId,
    persist: Persist,
) {
    let mut failures = 0;
    loop {
        let request = WaitRequest::new(cell.clone()).with_yield_time_ms(SLICE_MS);
        let outcome = tokio::select! {
            outcome = session.wait(request) => outcome,
            () = tasks.stop.cancelled() => return,
        };
        match outcome {
            Ok(CellResponse::Yielded { content_items, .. }) => {
                failures = 0;
                if !content_items.is_empty() {
                    tasks.append(&cell, content_items);
                    if let Err(error) = persist().await {
                        tracing::warn!(%error, "a task's output could not be kept; it is kept with the next write");
                    }
                }
            }
            Ok(ended) => {
                if !tasks.finish(&cell, Ok(ended)) {
                    // The task was dropped meanwhile: nothing to keep.
                    return;
                }
                break;
            }
            Err(SessionError::ShuttingDown) => return,
            Err(error) => {
                failures += 1;
                if failures >= FOLLOW_ATTEMPTS {
                    if !tasks.finish(&cell, Err(error.to_string())) {
                        return;
                    }
                    break;
                }
                tracing::debug!(%error, "following a task's cell failed; trying again");
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    () = tasks.stop.cancelled() => return,
                }
            }
        }
    }
    // A result a client saw is one a restart gives back: it is kept first (tried again
    // at growing pauses while the store refuses it; the task shows `working` meanwhile).
    let mut pause = RETRY_PAUSE;
    loop {
        match persist().await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, "a task's result could not be kept yet; trying again in {pause:?}");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = tasks.stop.cancelled() => return,
                }
                pause = (pause * 2).min(KEEP_PAUSE_MAX);
            }
        }
    }
    tasks.show(&cell);
}

/// The input requests of a task whose cell's calls in `waiting` wait on a person: the
/// form of each, by approval id.
fn input_requests(waiting: &[Approval]) -> InputRequests {
    waiting
        .iter()
        .filter_map(|call| {
            let form = super::asking::form(call)?;
            Some((
                call.id.clone(),
                InputRequest::Elicitation(ElicitRequest::new(form)),
            ))
        })
        .collect()
}

/// A task's base fields.
fn task(id: &str, created_ms: i64, updated_ms: i64, status: TaskStatus) -> Task {
    Task::new(id, status, iso8601(created_ms), iso8601(updated_ms))
        .with_poll_interval_ms(POLL_INTERVAL_MS)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// `ms` since the Unix epoch as an ISO 8601 UTC time, to the millisecond
/// (`2026-11-29T14:30:21.000Z`).
fn iso8601(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // The civil date of a day count (the proleptic Gregorian calendar, in 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hours, minutes) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (seconds, millis) = (in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_iso_8601_in_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_795_962_621_123), "2026-11-29T14:30:21.123Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59.999Z");
    }

    /// A cell that writes past the `exec`'s budget costs the task the budget, and its
    /// result says how much was left out, as one `exec` over the whole output would.
    #[test]
    fn a_task_keeps_its_budget_of_text_and_counts_the_rest() {
        use code_mode_protocol::ContentItem;
        let tasks = Tasks::default();
        let cell = CellId::new(1);
        tasks.begin(
            &cell,
            vec![ContentItem::text("a".repeat(30))],
            Duration::ZERO,
            10,
        );
        for _ in 0..1000 {
            tasks.append(&cell, vec![ContentItem::text("b".repeat(30))]);
        }
        let kept: usize = lock(&tasks.table)[&cell]
            .items
            .iter()
            .filter_map(ContentItem::as_text)
            .map(str::len)
            .sum();
        assert_eq!(kept, 40, "the budget: 10 tokens");
        let whole: Vec<ContentItem> = std::iter::once("a".repeat(30))
            .chain(std::iter::repeat_n("b".repeat(30), 1001))
            .map(ContentItem::text)
            .collect();
        let last = ContentItem::text("b".repeat(30));
        tasks.finish(
            &cell,
            Ok(CellResponse::Result {
                cell_id: cell.clone(),
                content_items: vec![last],
                failure: None,
                wall_time: Duration::ZERO,
            }),
        );
        tasks.show(&cell);
        let TaskPayload::Completed { result } =
            tasks.get("1", |_| Vec::new()).expect("the task").payload
        else {
            panic!("a result");
        };
        let texts: Vec<String> = result["content"]
            .as_array()
            .expect("content")
            .iter()
            .filter_map(|block| block["text"].as_str().map(str::to_owned))
            .collect();
        let expected = format_response_omitting(
            &CellResponse::Result {
                cell_id: cell.clone(),
                content_items: whole,
                failure: None,
                wall_time: Duration::ZERO,
            },
            10,
            0,
        );
        assert_eq!(
            texts[1..],
            expected[1..]
                .iter()
                .filter_map(ContentItem::as_text)
                .collect::<Vec<_>>()[..]
        );
    }

    /// Ended tasks are kept an hour after they ended, and at most [`ENDED_KEPT`] of them,
    /// the oldest dropped first; tasks that run are never dropped.
    #[test]
    fn ended_tasks_are_dropped_oldest_first() {
        let tasks = Tasks::default();
        let running = CellId::new(1000);
        tasks.begin(&running, Vec::new(), Duration::ZERO, 10);
        for number in 0..(ENDED_KEPT as u64 + 3) {
            let cell = CellId::new(number);
            tasks.begin(&cell, Vec::new(), Duration::ZERO, 10);
            tasks.finish(&cell, Err("gone".to_owned()));
            tasks.show(&cell);
            // Each ended a millisecond after the one before.
            if let Some(followed) = lock(&tasks.table).get_mut(&cell) {
                followed.updated_at_ms = i64::try_from(number).expect("small") + now_ms();
            }
        }
        let now = now_ms() + 1000;
        prune(&mut lock(&tasks.table), now);
        let table = lock(&tasks.table);
        assert!(table.contains_key(&running));
        assert_eq!(table.len(), ENDED_KEPT + 1);
        for number in 0..3 {
            assert!(!table.contains_key(&CellId::new(number)), "{number}");
        }
        drop(table);
        prune(&mut lock(&tasks.table), now + KEPT_AFTER_END_MS + 100);
        assert_eq!(lock(&tasks.table).len(), 1, "only the one that runs");
    }

    /// The ended tasks a session keeps hold at most [`ENDED_BYTES`] of results (they are
    /// written with the session): the newest that fit.
    #[test]
    fn ended_tasks_keep_at_most_their_bytes() {
        use code_mode_protocol::ContentItem;
        let tasks = Tasks::default();
        for number in 0..6_u64 {
            let cell = CellId::new(number);
            let written = vec![ContentItem::text("x".repeat(1 << 20))];
            tasks.begin(&cell, written, Duration::ZERO, 1 << 20);
            tasks.finish(&cell, Err("gone".to_owned()));
            tasks.show(&cell);
            if let Some(followed) = lock(&tasks.table).get_mut(&cell) {
                followed.updated_at_ms = i64::try_from(number).expect("small") + now_ms();
            }
        }
        prune(&mut lock(&tasks.table), now_ms() + 1000);
        let mut kept: Vec<u64> = lock(&tasks.table)
            .keys()
            .filter_map(CellId::number)
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, [3, 4, 5], "each result a little over 1 MiB");
    }

    #[test]
    fn a_kept_task_comes_back_as_it_was_kept() {
        let tasks = Tasks::default();
        let cell = CellId::new(3);
        tasks.begin(
            &cell,
            vec![code_mode_protocol::ContentItem::text("one")],
            Duration::ZERO,
            100,
        );
        tasks.append(&cell, vec![code_mode_protocol::ContentItem::text("two")]);
        let kept = tasks.kept();
        let again = Tasks::default();
        // A task this version cannot read is left out; the others come back.
        again.restore(
            kept.iter()
                .cloned()
                .chain([serde_json::json!({"cell": 7})])
                .collect(),
        );
        assert_eq!(again.kept(), kept);
        assert_eq!(again.unfinished(), vec![(cell.clone(), false)]);
        // A cancel is kept: after a restart the cell is terminated.
        again.cancel("3").expect("cancelled");
        let cancelled = Tasks::default();
        cancelled.restore(again.kept());
        assert_eq!(cancelled.unfinished(), vec![(cell.clone(), true)]);
        assert_eq!(
            cancelled.asked("3", &[], |_| Vec::new()),
            Err(TaskError::Cancelling("3".to_owned())),
            "a task being cancelled takes no more answers"
        );
        // A result kept but not shown before the restart is shown after it.
        tasks.finish(
            &cell,
            Ok(CellResponse::Result {
                cell_id: cell.clone(),
                content_items: vec![code_mode_protocol::ContentItem::text("three")],
                failure: None,
                wall_time: Duration::ZERO,
            }),
        );
        assert_eq!(
            tasks.get("3", |_| Vec::new()).map(|task| task.status()),
            Ok(TaskStatus::Working),
            "not shown until kept"
        );
        let restored = Tasks::default();
        restored.restore(tasks.kept());
        let shown = restored.get("3", |_| Vec::new()).expect("the task");
        assert_eq!(shown.status(), TaskStatus::Completed);
        let TaskPayload::Completed { result } = shown.payload else {
            panic!("a result");
        };
        let texts: Vec<&str> = result["content"]
            .as_array()
            .expect("content")
            .iter()
            .filter_map(|block| block["text"].as_str())
            .collect();
        assert_eq!(texts[1..], ["one", "two", "three"], "{result:?}");
        assert!(restored.unfinished().is_empty());
    }
}
