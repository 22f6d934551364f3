//! The cell's callbacks: nested tool calls and notifications started in the order the
//! cell made them (held back behind answers not yet taken), their cancellation, and the
//! cell's timers.

use super::*;
use code_mode_protocol::search::TOOL_SEARCH_NAME;
use code_mode_trace::traced::under;

/// A delegate callback not started yet (an answer was not taken), with its tracker.
pub(super) type Deferred = (TaskTracker, BoxFuture<'static, ()>);

/// Armed timers, fired in (due time, id) order so equal delays keep creation order.
#[derive(Default)]
pub(super) struct Timers {
    pub(super) timers: BTreeSet<(Instant, u64)>,
    pub(super) timer_due: HashMap<u64, Instant>,
}

/// The cell's callbacks (nested calls, notifications) and the answers they wait behind.
pub(super) struct Callbacks {
    /// The cell's node in the token tree; every callback gets a child.
    pub(super) token: CancellationToken,
    pub(super) tool_tasks: TaskTracker,
    pub(super) notify_tasks: TaskTracker,
    /// Answers given and not yet taken by their callers, oldest first.
    pub(super) unacked: Unacked,
    /// Callbacks held back until every answer before them was taken, in call order.
    pub(super) deferred: VecDeque<Deferred>,
}

impl Timers {
    /// Arms timer `id`, due `delay` after the cell set it (`armed_at`, on the cell
    /// thread's clock: how long ago that was is taken off this clock's now).
    pub(super) fn arm(&mut self, id: u64, armed_at: std::time::Instant, delay: Duration) {
        let now = Instant::now();
        let ago = std::time::Instant::now().saturating_duration_since(armed_at);
        let armed_at = now.checked_sub(ago).unwrap_or(now);
        let due = armed_at
            .checked_add(delay)
            .unwrap_or(now + Duration::from_secs(u32::MAX.into()));
        self.timers.insert((due, id));
        self.timer_due.insert(id, due);
    }

    pub(super) fn cancel(&mut self, id: u64) {
        if let Some(due) = self.timer_due.remove(&id) {
            self.timers.remove(&(due, id));
        }
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.timers.first().map(|(due, _)| *due)
    }

    /// The next timer due at `now`, removed from the queue.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<u64> {
        let &(due, id) = self.timers.first()?;
        if due > now {
            return None;
        }
        self.timers.pop_first();
        self.timer_due.remove(&id);
        Some(id)
    }
}

/// Which tracker a callback belongs to.
pub(super) enum Kind {
    Tool,
    Notification,
}

impl Callbacks {
    /// The oldest answer was taken (and forgotten): once all are, the held-back callbacks
    /// start in order.
    pub(super) fn on_acked(&mut self) {
        if !self.unacked.is_empty() {
            return;
        }
        while let Some((tracker, task)) = self.deferred.pop_front() {
            start_now(&tracker, task);
        }
    }

    /// Starts a delegate callback now, or after the answers not yet taken.
    pub(super) fn launch(&mut self, kind: Kind, task: BoxFuture<'static, ()>) {
        let tracker = match kind {
            Kind::Tool => self.tool_tasks.clone(),
            Kind::Notification => self.notify_tasks.clone(),
        };
        if self.deferred.is_empty() && self.unacked.all_taken() {
            start_now(&tracker, task);
        } else {
            self.deferred.push_back((tracker, task));
        }
    }
}

impl CellActor {
    pub(super) fn start_tool_call(&mut self, call: ToolCallRequest) {
        code_mode_internal::hop!("actor has the tool call");
        let call_id = call.id;
        self.frontier.calls_since_frontier.push(call_id);
        if call.name == TOOL_SEARCH_NAME
            && let Some(searchable) = &self.routing.searchable
        {
            let input = call.input.map(JsonText::new);
            let indexed = searchable.is_indexed();
            let (searchable, internal) = (Arc::clone(searchable), self.internal_tx.clone());
            let search = move || {
                let result = searchable.answer(input.as_ref());
                let _ = internal.send(Internal::ToolDone {
                    id: call_id,
                    result,
                });
            };
            if indexed {
                search();
            } else {
                // The set's first search builds its index: off the actor's task.
                tokio::task::spawn_blocking(search);
            }
            return;
        }
        // The argument stays the text V8 wrote; only a delegate that wants a value parses
        // it (see `NestedToolCall::answer_with`).
        let request = NestedToolCall {
            cell_id: self.cell_id.clone(),
            call_id,
            tool_name: call.name,
            kind: call.kind,
            input: call.input.map(JsonText::new),
            exec_call_id: self.routing.exec_call_id.clone(),
        };
        let token = self.callbacks.token.child_token();
        let delegate = Arc::clone(&self.routing.delegate);
        let internal = self.internal_tx.clone();
        let id = call.id;
        let task = Box::pin(async move {
            // A call that needs an approval nothing here keeps is refused, never run.
            let answer = match code_mode_protocol::session::refused_unapproved(&*delegate, &request)
            {
                Some(refused) => Some(Err(refused)),
                None => until_cancelled(&token, delegate.invoke_tool(request, token.clone())).await,
            };
            if let Some(result) = answer {
                code_mode_internal::hop!("delegate answered");
                let _ = internal.send(Internal::ToolDone { id, result });
            }
        });
        self.callbacks.launch(Kind::Tool, task);
    }

    pub(super) fn start_notification(&mut self, text: String) {
        let token = self.callbacks.token.child_token();
        let delegate = Arc::clone(&self.routing.delegate);
        let cell_id = self.cell_id.clone();
        let task = Box::pin(async move {
            until_cancelled(&token, delegate.notify(cell_id, text, token.clone())).await;
        });
        self.callbacks.launch(Kind::Notification, task);
    }

    /// Fires every timer that is due, in order; frozen cells get them later.
    pub(super) fn fire_due_timers(&mut self) {
        while let Some(id) = self.timers.pop_due(Instant::now()) {
            let span = &self.routing.span;
            under(
                span,
                || tracing::info!(parent: span, timer.id = i64::try_from(id).unwrap_or(i64::MAX), "timer fired"),
            );
            self.route(CellCommand::TimerFired { id });
        }
    }

    pub(super) fn on_internal(&mut self, message: Internal) {
        if let Internal::CleanupDone = message {
            self.on_cleanup_done();
            return;
        }
        // Answers are never applied after the cell ended or while it is being terminated.
        if !matches!(self.life.phase, Phase::Running) {
            return;
        }
        if let Internal::ToolDone { id, result } = message {
            code_mode_internal::hop!("actor has the answer");
            self.route(CellCommand::ToolResult { id, result });
        }
    }

    /// Sends a command to the cell, or holds it back while the cell is frozen.
    pub(super) fn route(&mut self, command: CellCommand) {
        if !matches!(self.life.phase, Phase::Running) {
            return;
        }
        if self.frontier.frozen {
            self.frontier.held_back.push(command);
        } else {
            self.send_to_cell(command);
        }
    }

    /// Journals a command and sends it (a hibernating cell is rebuilt for it first).
    pub(super) fn send_to_cell(&mut self, command: CellCommand) {
        self.hibernate_at = None;
        self.journal.enter(&self.cell_id, command);
        if self.runtime.is_none() {
            self.wake();
        } else {
            self.pump();
        }
    }

    /// Removes the cell from the session, reports it closed, then waits for its thread.
    /// Closed is reported before the join: the thread's own end (an isolate reset and
    /// parked, or disposed of) takes its time, and a cell started after this one ended
    /// must not be reported closed first (contract 8.5: in the order cells ended).
    pub(super) async fn close(mut self) {
        self.shared.forget(&self.cell_id);
        self.set_asleep(false);
        self.routing.delegate.cell_closed(&self.cell_id);
        if let Some(runtime) = self.runtime {
            let joined = tokio::task::spawn_blocking(move || runtime.join()).await;
            if joined.is_err() {
                tracing::error!(cell = %self.cell_id, "joining the cell thread failed");
            }
        }
    }
}

/// Polls a callback once on the actor (its delegate's code up to the first `.await` runs
/// now, in call order) and spawns it on `tracker` unless it is already done.
pub(super) fn start_now(tracker: &TaskTracker, mut task: BoxFuture<'static, ()>) {
    if poll_once(&mut task).is_none() {
        tracker.spawn(task);
    }
}

/// Waits until `token` is cancelled, or forever without one.
pub(super) async fn cancelled_some(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timer is due its delay after the cell set it, not after the owner read it: a
    /// 10 ms timer set 20 ms ago fires before a 5 ms one set now.
    #[test]
    fn timers_are_due_from_when_the_cell_set_them() {
        let mut timers = Timers::default();
        let now = std::time::Instant::now();
        let earlier = now
            .checked_sub(Duration::from_millis(20))
            .expect("the clock is past 20 ms");
        timers.arm(2, now, Duration::from_millis(5));
        timers.arm(1, earlier, Duration::from_millis(10));
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(timers.pop_due(later), Some(1));
        assert_eq!(timers.pop_due(later), Some(2));
        assert_eq!(timers.pop_due(later), None);
        // Set now with 10 ms, it is not due yet.
        timers.arm(3, std::time::Instant::now(), Duration::from_millis(10));
        assert_eq!(timers.pop_due(Instant::now()), None);
    }
}
