//! The cell actor: one tokio task per cell, the single writer of that cell's lifecycle.
//!
//! It owns the output not yet returned, the current observer and its yield deadline, the
//! remembered initial yield, the pending frontier (freezing and the queue of held-back
//! commands), the timers, the in-flight nested calls and notifications, and the one
//! terminal decision "completed or terminated" that also decides whether the cell's stored
//! writes are committed. Everyone else talks to it through [`ActorRequest`]s.
//!
//! Rules implemented here (contract 3.3, 3.4, 3.7, 4, 6):
//! - An observation returns at the first of: completion, `yield_control()`, its deadline,
//!   termination. One observer at a time; a dropped observer consumes nothing.
//! - A yield before the first observation is remembered for it.
//! - Pending-aware observers return at a frontier (an `Idle` with every sent command
//!   applied); the cell then stays frozen: tool answers and timer firings are queued until
//!   the next observation.
//! - Natural completion commits the stored writes, delivers pending notifications, then
//!   cancels in-flight calls. Termination discards the writes and cancels everything.
//! - The cell is closed (removed, `cell_closed` called once) when its final response was
//!   delivered, or at shutdown.
//! - Delegate callbacks start in the order the cell made them (each is polled once on the
//!   actor before it is spawned), and none starts while an answer the actor gave is not yet
//!   taken by its caller ([`Answer`]'s acknowledgement): a front end sees a cell's answers
//!   and later events in the order the cell produced them.
//!
//! - A cell waiting on nothing but its nested calls hibernates after the session's
//!   `hibernate_after_ms`: its thread and isolate are given back, and it is rebuilt from
//!   its journal on a fresh isolate when a command is due or an observation needs a new
//!   frontier (CONTRACT §7).
//!
//! `answers` holds who waits on the cell and the answers they get (and take back when
//! dropped untaken); `acks` which answers were not taken yet; `callbacks` the delegate
//! callbacks, their order and the timers; `journal` what entered the cell and its replay.

mod acks;
mod answers;
mod callbacks;
mod journal;

#[cfg(feature = "test-hooks")]
pub use journal::perturb_replayed_calls;

use super::Shared;
use crate::runtime::{CellCommand, CellEvent, CellHandle, CellOutcome, Releaser, ToolCallRequest};
use crate::session::search::SearchableTools;
use acks::Unacked;
pub(crate) use answers::{Answer, Observer, Returnable, TerminateReply};
use answers::{GivenBack, send_answer};
use callbacks::{Callbacks, Timers, cancelled_some, sleep_until_some, start_now};
use code_mode_internal::delivery::Delivery;
use code_mode_internal::futures::{poll_once, until_cancelled};
use code_mode_protocol::{
    BoxFuture, CallId, CellFailure, CellId, CellResponse, CodeModeSessionDelegate, ContentItem,
    FailureKind, JsonText, NestedToolCall, PendingOutcome, SessionError, ToolError,
};
pub(crate) use journal::Journal;
use journal::{Cursor, Seen};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long natural completion waits for in-flight notifications to be delivered before
/// cancelling them.
const NOTIFY_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests from the session to a cell actor.
pub(crate) enum ActorRequest {
    Observe(Observer),
    Terminate {
        reply: TerminateReply,
    },
    /// Terminate the cell if it is still running (contract 8.4). The reply is `true` once
    /// a termination this request started is over, `false` at once when the cell was not
    /// running.
    Interrupt {
        reply: oneshot::Sender<bool>,
    },
    /// The answer to a nested call the cell made on an earlier runtime, whose delegate
    /// call outlived that runtime.
    Answer {
        call: CallId,
        result: Result<JsonText, ToolError>,
    },
}

/// Where a cell's callbacks go (contract 8.3, 8.5).
pub(crate) struct Routing {
    /// The exec's own delegate, or the session's.
    pub(crate) delegate: Arc<dyn CodeModeSessionDelegate>,
    /// The model's id of the exec call, given to every nested tool call.
    pub(crate) exec_call_id: Option<String>,
    /// The cell's deferred tools and their index: `tools.tool_search` is answered here,
    /// never by the delegate.
    pub(crate) searchable: Option<Arc<SearchableTools>>,
    /// The span current when the cell started (the provider's `code_mode.cell`): what
    /// happens inside the cell (timers firing, hibernation, replay) is traced under it.
    pub(crate) span: tracing::Span,
    /// The cell's writes were merged already: it is rebuilt after its completion, before
    /// its final answer reached anyone, and its completion merges nothing again.
    pub(crate) committed: bool,
}

/// Messages from the actor's own helper tasks.
enum Internal {
    ToolDone {
        id: CallId,
        result: Result<JsonText, ToolError>,
    },
    /// The callbacks of a finished cell are cleaned up.
    CleanupDone,
}

/// The terminal decision.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Final {
    Completed(Option<CellFailure>),
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Running,
    /// Termination was decided; waiting for the JS thread to stop.
    Terminating,
    /// The JS thread stopped and the decision is made; notifications are being drained
    /// (natural completion) and callbacks cancelled. Requests are still answered.
    CleaningUp(Final),
    /// Over, with its final answer still to be taken (or given back to it).
    Finished(Final),
    /// Over and its final answer taken (or the session shut down): the actor ends, and
    /// the cell is closed, unless that answer is given back first (`Finished` again).
    Closed(Final),
}

/// What woke the actor.
enum Step {
    Deadline,
    TimersDue,
    Event(Option<CellEvent>),
    Request(ActorRequest),
    Returned(GivenBack),
    Internal(Internal),
    Shutdown,
    /// The oldest answer not yet taken was taken.
    Acked,
    /// The cell waited on nothing but nested calls for the session's hibernation delay.
    Hibernate,
}

/// Output not yet returned and who waits for it (contract 3.3).
struct Output {
    /// Output produced and not yet returned.
    items: Vec<ContentItem>,
    /// A `yield_control()` before the first observation: the items it covers.
    initial_yield: Option<usize>,
    /// Whether an observation has returned output.
    observed: bool,
    /// Answers given so far (an answer given back restores the state before it only if
    /// none was given after it).
    deliveries: u64,
    observer: Option<Observer>,
    terminate_reply: Option<TerminateReply>,
    /// The final answer was offered to the session's driver (once per cell).
    offered: bool,
}

/// The pending frontier (contract 3.4): whether the cell is frozen, the commands held back
/// meanwhile, the calls started since the last frontier, and whether the cell is at one.
struct Frontier {
    frozen: bool,
    held_back: Vec<CellCommand>,
    calls_since_frontier: Vec<CallId>,
    commands_sent: u64,
    at_frontier: bool,
    /// A frontier answer came back untaken: the next pending-aware observation returns at
    /// this frontier again.
    returned_here: bool,
}

/// Where the cell is in its life.
struct Life {
    phase: Phase,
    /// The session is shutting down: the cell is terminated and closes once finished.
    shutting_down: bool,
}

impl Life {
    /// The JS thread reported its end (or went away): nothing more comes from it.
    fn runtime_done(&self) -> bool {
        matches!(
            self.phase,
            Phase::CleaningUp(_) | Phase::Finished(_) | Phase::Closed(_)
        )
    }

    fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed(_))
    }

    /// The final answer was taken, or nobody will take it: a finished cell closes.
    fn close(&mut self) {
        if let Phase::Finished(decision) = &self.phase {
            self.phase = Phase::Closed(decision.clone());
        }
    }

    /// The final answer came back untaken: the cell stays open for the next observation.
    fn reopen(&mut self) {
        if let Phase::Closed(decision) = &self.phase {
            self.phase = Phase::Finished(decision.clone());
        }
    }
}

pub(crate) struct CellActor {
    cell_id: CellId,
    shared: Arc<Shared>,
    /// The cell's current incarnation; `None` while it hibernates.
    runtime: Option<CellHandle>,
    events: mpsc::Receiver<CellEvent>,
    /// What entered the cell, and where its current incarnation is in it.
    journal: Journal,
    cursor: Cursor,
    /// When the cell hibernates, unless something happens first.
    hibernate_at: Option<Instant>,
    /// Whether it hibernates now (counted in the session).
    asleep: bool,
    /// While it hibernates: the `code_mode.hibernated` span; while a woken cell replays
    /// its journal: the `code_mode.replay` span.
    sleep_span: Option<tracing::Span>,
    replay_span: Option<tracing::Span>,
    requests: mpsc::Receiver<ActorRequest>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    /// Answers whose callers dropped them untaken.
    returns_tx: mpsc::UnboundedSender<GivenBack>,
    returns_rx: mpsc::UnboundedReceiver<GivenBack>,
    output: Output,
    frontier: Frontier,
    timers: Timers,
    callbacks: Callbacks,
    life: Life,
    routing: Routing,
    /// Interrupt requests waiting for the termination they started to be over.
    interrupted: Vec<oneshot::Sender<bool>>,
}

impl CellActor {
    /// The actor of a cell whose first incarnation is `runtime` (none: a cell resumed from
    /// another runtime's journal, which [`CellActor::run`] rebuilds first).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cell_id: CellId,
        shared: Arc<Shared>,
        journal: Journal,
        runtime: Option<CellHandle>,
        events: mpsc::Receiver<CellEvent>,
        requests: mpsc::Receiver<ActorRequest>,
        observer: Option<Observer>,
        routing: Routing,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let (returns_tx, returns_rx) = mpsc::unbounded_channel();
        let token = shared.root().child_token();
        Self {
            cell_id,
            shared,
            output: Output {
                items: Vec::new(),
                initial_yield: None,
                // A resumed cell was observed on its first runtime.
                observed: observer.is_none(),
                deliveries: 0,
                observer,
                terminate_reply: None,
                offered: false,
            },
            runtime,
            events,
            journal,
            cursor: Cursor::default(),
            hibernate_at: None,
            asleep: false,
            sleep_span: None,
            replay_span: None,
            requests,
            internal_tx,
            internal_rx,
            returns_tx,
            returns_rx,
            frontier: Frontier {
                frozen: false,
                held_back: Vec::new(),
                calls_since_frontier: Vec::new(),
                commands_sent: 0,
                at_frontier: false,
                returned_here: false,
            },
            timers: Timers::default(),
            callbacks: Callbacks {
                token,
                tool_tasks: TaskTracker::new(),
                notify_tasks: TaskTracker::new(),
                unacked: Unacked::default(),
                deferred: VecDeque::new(),
            },
            life: Life {
                phase: Phase::Running,
                shutting_down: false,
            },
            routing,
            interrupted: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        if self.runtime.is_none() {
            // Resumed from another runtime's journal: rebuilt before anything else.
            self.wake();
        }
        loop {
            while !self.life.is_closed() {
                let step = self.next_step().await;
                match step {
                    Step::Deadline => self.on_deadline(),
                    Step::TimersDue => self.fire_due_timers(),
                    Step::Event(Some(event)) => self.on_event(event),
                    Step::Event(None) => self.on_runtime_lost(),
                    Step::Request(request) => self.on_request(request),
                    Step::Returned(given) => self.on_returned(given),
                    Step::Internal(message) => self.on_internal(message),
                    Step::Shutdown => self.on_shutdown(),
                    Step::Acked => {
                        self.callbacks.on_acked();
                        self.offer_final();
                    }
                    Step::Hibernate => self.hibernate(),
                }
            }
            // The final answer is taken before the cell is reported closed; one its
            // caller dropped untaken comes back and keeps the cell open for the next
            // observation. However long a caller holds it unpolled, the cell waits for
            // it (no timer ends the wait: it would close the cell under an answer that may
            // still come back); only the session's shutdown does.
            // Meanwhile an interrupt finds nothing running here (a final answer offered to
            // the host may be held for long); other requests wait for the outcome.
            let root = self.shared.root().clone();
            let acks = std::mem::take(&mut self.callbacks.unacked).all_taken_or_stopped(&root);
            tokio::pin!(acks);
            let mut later = Vec::new();
            loop {
                tokio::select! {
                    biased;
                    () = &mut acks => break,
                    Some(request) = self.requests.recv() => match request {
                        ActorRequest::Interrupt { reply } => drop(reply.send(false)),
                        other => later.push(other),
                    },
                }
            }
            self.take_returns();
            if self.life.is_closed() {
                break;
            }
            for request in later {
                self.on_request(request);
            }
        }
        self.close().await;
    }

    async fn next_step(&mut self) -> Step {
        let (deadline, preempt) = match &self.output.observer {
            Some(Observer::Yielding {
                deadline, preempt, ..
            }) => (Some(*deadline), preempt.clone()),
            _ => (None, None),
        };
        // Timers the journal fires are not fired by the clock while the cell replays.
        let next_timer = if self.journal.caught_up(&self.cursor) {
            self.timers.next_due()
        } else {
            None
        };
        let awake = self.runtime.is_some();
        let root = self.shared.root().clone();
        tokio::select! {
            biased;
            // The deadline first: once it has passed, later output belongs to the next
            // observation.
            () = sleep_until_some(deadline) => Step::Deadline,
            // A preempted observation returns like one whose deadline passed.
            () = cancelled_some(preempt.as_ref()) => Step::Deadline,
            // The shutdown before anything the cell or its callbacks sent: cancelling the
            // root also cancels the cell's tool calls, and a delegate that answers its
            // cancellation at once (`cancelled`) must not have that answer reach a cell the
            // shutdown is about to terminate (it could end the cell with that error first).
            () = root.cancelled(), if !self.life.shutting_down => Step::Shutdown,
            () = sleep_until_some(next_timer) => Step::TimersDue,
            event = self.events.recv(), if awake && !self.life.runtime_done() => Step::Event(event),
            Some(given) = self.returns_rx.recv() => Step::Returned(given),
            Some(request) = self.requests.recv() => Step::Request(request),
            Some(message) = self.internal_rx.recv() => Step::Internal(message),
            () = self.callbacks.unacked.oldest_taken(), if !self.callbacks.unacked.is_empty() => Step::Acked,
            () = sleep_until_some(self.hibernate_at) => Step::Hibernate,
        }
    }

    // -----------------------------------------------------------------------------------
    // Runtime events
    // -----------------------------------------------------------------------------------

    fn on_event(&mut self, event: CellEvent) {
        self.hibernate_at = None;
        match event {
            CellEvent::Output(item) => {
                if let Seen::Live = self.journal.output(&mut self.cursor) {
                    self.output.items.push(item);
                }
            }
            CellEvent::YieldRequested => {
                if let Seen::Live = self.journal.yielded(&self.cell_id, &mut self.cursor) {
                    self.on_yield_requested();
                }
            }
            CellEvent::ToolCall(call) => {
                let internal = call.name == code_mode_protocol::search::TOOL_SEARCH_NAME
                    && self.routing.searchable.is_some();
                match self
                    .journal
                    .call(&self.cell_id, &mut self.cursor, &call, internal)
                {
                    Ok(Seen::Live) => self.start_tool_call(call),
                    Ok(Seen::Replayed) => {}
                    Err(text) => return self.diverge(text),
                }
                self.pump();
            }
            CellEvent::Notify(text) => {
                if let Seen::Live = self.journal.notification(&mut self.cursor) {
                    self.start_notification(text);
                }
            }
            CellEvent::Clock(readings) => self.journal.clock_read(&self.cell_id, readings),
            CellEvent::TimerSet {
                id,
                delay,
                armed_at,
            } => {
                Journal::timer_set(&mut self.cursor, id);
                self.timers.arm(id, armed_at, delay);
                self.pump();
            }
            CellEvent::TimerCleared { id } => {
                self.timers.cancel(id);
            }
            CellEvent::Idle { commands_applied } => {
                // An `Idle` sent before the cell received our latest commands is stale.
                if commands_applied != self.frontier.commands_sent {
                    return;
                }
                if !self.journal.caught_up(&self.cursor) {
                    // Replaying, every command sent applied, and the next one answers
                    // something the cell did not make again.
                    let awaited = self.journal.awaited(&self.cursor).unwrap_or_default();
                    return self.diverge(code_mode_protocol::texts::replay_stalled(&awaited));
                }
                // Caught up with its journal: a woken cell is live again.
                self.replay_span = None;
                self.frontier.at_frontier = true;
                self.respond_at_frontier();
                self.consider_hibernation();
            }
            CellEvent::Finished(outcome) => {
                code_mode_internal::hop!("actor has the end");
                self.on_finished(outcome);
            }
        }
    }

    fn on_runtime_lost(&mut self) {
        tracing::error!(cell = %self.cell_id, "the cell thread stopped without reporting an outcome");
        let outcome = match self.life.phase {
            Phase::Running => CellOutcome::Completed {
                failure: Some(CellFailure::new(
                    FailureKind::StoppedUnexpectedly,
                    code_mode_protocol::texts::CELL_STOPPED_UNEXPECTEDLY,
                )),
                stored_writes: Default::default(),
            },
            _ => CellOutcome::Terminated,
        };
        self.on_finished(outcome);
    }

    fn on_yield_requested(&mut self) {
        match &self.output.observer {
            Some(Observer::Yielding { .. }) => self.respond_yielded(None, true),
            // Pending-aware observations run to the frontier; they ignore yields.
            Some(Observer::Pending { .. }) => {}
            None => {
                if !self.output.observed && self.output.initial_yield.is_none() {
                    self.output.initial_yield = Some(self.output.items.len());
                }
            }
        }
    }

    /// The JS thread stopped for good: make the terminal decision (if termination has not
    /// made it already) and start cleaning up the callbacks.
    fn on_finished(&mut self, outcome: CellOutcome) {
        self.timers = Timers::default();
        self.frontier.frozen = false;
        self.frontier.held_back.clear();
        let decision = match (&self.life.phase, outcome) {
            // Natural completion: the writes are committed in the same step as the decision.
            (
                Phase::Running,
                CellOutcome::Completed {
                    failure,
                    stored_writes,
                },
            ) => {
                if !self.routing.committed {
                    self.shared.commit(&self.cell_id, stored_writes);
                }
                Final::Completed(failure)
            }
            // Termination already won: the writes are discarded with the outcome.
            (Phase::Running | Phase::Terminating, _) => Final::Terminated,
            (Phase::CleaningUp(_) | Phase::Finished(_) | Phase::Closed(_), _) => return,
        };
        let natural = matches!(decision, Final::Completed(_));
        self.life.phase = Phase::CleaningUp(decision);
        self.spawn_cleanup(natural);
    }

    /// Natural completion delivers pending notifications first, then cancels in-flight
    /// nested calls; termination cancels both at once. Runs beside the actor so that it
    /// keeps answering requests (`already terminating`) meanwhile.
    /// Callbacks held back behind an answer not yet taken start first, in order, once it
    /// is taken.
    fn spawn_cleanup(&mut self, deliver_notifications_first: bool) {
        let (tools, notifications) = (
            self.callbacks.tool_tasks.clone(),
            self.callbacks.notify_tasks.clone(),
        );
        let token = self.callbacks.token.clone();
        if self.callbacks.unacked.is_empty()
            && self.callbacks.deferred.is_empty()
            && tools.is_empty()
            && notifications.is_empty()
        {
            // Nothing in flight (the usual end of a cell): done at once, without a task
            // and a message back.
            tools.close();
            notifications.close();
            token.cancel();
            self.on_cleanup_done();
            return;
        }
        let internal = self.internal_tx.clone();
        let cell_id = self.cell_id.clone();
        let unacked = std::mem::take(&mut self.callbacks.unacked);
        let deferred = std::mem::take(&mut self.callbacks.deferred);
        tokio::spawn(async move {
            unacked.all_taken_or_patience().await;
            for (tracker, task) in deferred {
                start_now(&tracker, task);
            }
            tools.close();
            notifications.close();
            if deliver_notifications_first
                && tokio::time::timeout(NOTIFY_DRAIN_TIMEOUT, notifications.wait())
                    .await
                    .is_err()
            {
                tracing::warn!(cell = %cell_id, "notifications not delivered in time; cancelling them");
            }
            token.cancel();
            tools.wait().await;
            notifications.wait().await;
            let _ = internal.send(Internal::CleanupDone);
        });
    }

    /// Cleanup is over: the cell is finished; answer the terminate call and the observer.
    fn on_cleanup_done(&mut self) {
        let Phase::CleaningUp(decision) = self.life.phase.clone() else {
            return;
        };
        self.life.phase = Phase::Finished(decision.clone());
        for interrupted in self.interrupted.drain(..) {
            let _ = interrupted.send(true);
        }
        // The terminate call gets the output not yet returned, and an observer waiting on
        // the cell (an exec awaiting its first answer, a wait) the same answer (contract
        // 3.7); the observer is answered before the cell closes.
        if let Some(reply) = self.output.terminate_reply.take() {
            let items = std::mem::take(&mut self.output.items);
            let response = self.final_response(decision, items);
            self.deliver_copy_to_observer(&response);
            let path = self.return_path(false);
            match send_answer(reply, response, path) {
                Ok(()) => self.life.close(),
                Err(response) => self.restore(response),
            }
        }
        self.deliver_final();
        if self.life.shutting_down {
            self.life.close();
        }
    }

    // -----------------------------------------------------------------------------------
    // Requests
    // -----------------------------------------------------------------------------------

    fn on_request(&mut self, request: ActorRequest) {
        // An answer dropped before this request was made comes back first.
        self.take_returns();
        match request {
            ActorRequest::Observe(observer) => self.on_observe(observer),
            ActorRequest::Terminate { reply } => self.on_terminate(reply),
            ActorRequest::Interrupt { reply } => self.on_interrupt(reply),
            ActorRequest::Answer { call, result } => {
                self.route(CellCommand::ToolResult { id: call, result });
            }
        }
    }

    fn on_interrupt(&mut self, reply: oneshot::Sender<bool>) {
        // As for terminate, a completion the cell already reported wins.
        self.take_in_reported_events();
        if matches!(self.life.phase, Phase::Running) {
            self.life.phase = Phase::Terminating;
            self.interrupted.push(reply);
            self.terminate_runtime();
        } else {
            let _ = reply.send(false);
        }
    }

    fn on_observe(&mut self, observer: Observer) {
        if let Some(current) = &self.output.observer
            && !current.is_gone()
        {
            observer.refuse(SessionError::BusyObserver(self.cell_id.clone()));
            return;
        }
        let pending_mode = matches!(observer, Observer::Pending { .. });
        self.output.observer = Some(observer);
        let returned_here = std::mem::take(&mut self.frontier.returned_here);
        if pending_mode && self.output.observed && !returned_here {
            // A pending-aware observation resumes the cell and returns at its *next*
            // frontier, never at the one it resumes from: an answer the delegate just gave
            // may still be on its way.
            self.frontier.at_frontier = false;
        }
        // Any observation unfreezes the cell: held-back answers and timers apply now.
        if self.frontier.frozen {
            self.frontier.frozen = false;
            for command in std::mem::take(&mut self.frontier.held_back) {
                self.send_to_cell(command);
            }
        }
        match self.life.phase {
            Phase::Finished(_) => self.deliver_final(),
            Phase::Terminating | Phase::CleaningUp(_) | Phase::Closed(_) => {}
            // A hibernating cell is rebuilt to reach its next frontier.
            Phase::Running
                if pending_mode && !self.frontier.at_frontier && self.runtime.is_none() =>
            {
                self.wake();
            }
            Phase::Running if pending_mode => self.respond_at_frontier(),
            Phase::Running => {
                if !self.output.observed
                    && let Some(mark) = self.output.initial_yield.take()
                {
                    self.respond_yielded(Some(mark), true);
                }
            }
        }
    }

    fn on_terminate(&mut self, reply: TerminateReply) {
        // Natural completion wins: take in what the cell already reported.
        self.take_in_reported_events();
        match &self.life.phase {
            Phase::Finished(decision) | Phase::Closed(decision) => {
                let items = std::mem::take(&mut self.output.items);
                let response = self.final_response(decision.clone(), items);
                let path = self.return_path(false);
                match send_answer(reply, response, path) {
                    Ok(()) => self.life.close(),
                    Err(response) => self.restore(response),
                }
            }
            Phase::Terminating | Phase::CleaningUp(Final::Terminated) => {
                let error = SessionError::AlreadyTerminating(self.cell_id.clone());
                let _ = Delivery::plain(Err(error)).send(reply);
            }
            // Completed naturally, still cleaning up: the completion wins, answered when
            // the cleanup is over.
            Phase::CleaningUp(Final::Completed(_)) => self.output.terminate_reply = Some(reply),
            Phase::Running => {
                self.life.phase = Phase::Terminating;
                self.output.terminate_reply = Some(reply);
                self.terminate_runtime();
            }
        }
    }

    fn on_shutdown(&mut self) {
        self.life.shutting_down = true;
        // As for a terminate, a completion the cell already reported wins; an answer its
        // callbacks sent after the cancellation has not reached it (see `next_step`).
        self.take_in_reported_events();
        match self.life.phase {
            Phase::Running => {
                self.life.phase = Phase::Terminating;
                self.terminate_runtime();
            }
            Phase::Terminating | Phase::CleaningUp(_) | Phase::Closed(_) => {}
            Phase::Finished(_) => self.life.close(),
        }
    }

    fn on_deadline(&mut self) {
        // What the cell already reported comes first: a completion it sent before the
        // deadline was checked wins over the yield.
        self.take_in_reported_events();
        self.respond_yielded(None, false);
    }

    /// Handles the events the cell has already sent, while it runs.
    fn take_in_reported_events(&mut self) {
        while matches!(self.life.phase, Phase::Running) {
            match self.events.try_recv() {
                Ok(event) => self.on_event(event),
                Err(_) => break,
            }
        }
    }
}
