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

use super::Shared;
use crate::runtime::{CellCommand, CellEvent, CellHandle, CellOutcome, ToolCallRequest};
use code_mode_protocol::delivery::{Ack, Delivery, Unacked};
use code_mode_protocol::session::{poll_once, until_cancelled};
use code_mode_protocol::{
    BoxFuture, CallId, CellId, CellResponse, ContentItem, JsonText, NestedToolCall, PendingOutcome,
    SessionError, ToolError,
};
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

/// An answer of the actor: a [`Delivery`] of the result, acknowledged when the caller
/// takes it, which lets the actor start the cell's next delegate callbacks. An answer
/// dropped before its caller took it (the caller's future was dropped while the answer
/// waited in its channel) goes back to the cell: a dropped observation consumes nothing.
pub(crate) type Answer<T> = Delivery<Result<T, SessionError>>;

/// A value an answer carries, as it goes back to the cell when nobody took it.
pub(crate) enum Returned {
    Response(CellResponse),
    Outcome(PendingOutcome),
}

/// What an answer of the actor can carry.
pub(crate) trait Returnable: Send + 'static {
    fn returned(self) -> Returned;
}

impl Returnable for CellResponse {
    fn returned(self) -> Returned {
        Returned::Response(self)
    }
}

impl Returnable for PendingOutcome {
    fn returned(self) -> Returned {
        Returned::Outcome(self)
    }
}

/// What giving an answer changed, to undo it if the answer comes back.
#[derive(Clone, Copy)]
struct Given {
    /// The actor's count of deliveries, this one included.
    number: u64,
    first_observation: bool,
    for_yield: bool,
}

/// An answer back from a caller that dropped it.
pub(crate) struct GivenBack {
    value: Returned,
    given: Given,
}

/// The acknowledgement and the way back of an answer about to be given.
struct Receipt {
    ack: Ack,
    returns: mpsc::UnboundedSender<GivenBack>,
    given: Given,
}

impl Receipt {
    /// `value` as an answer: acknowledged when taken, given back to the actor if dropped
    /// untaken.
    fn answer<T: Returnable>(self, value: T) -> Answer<T> {
        let Receipt {
            ack,
            returns,
            given,
        } = self;
        let give_back = Box::new(move |result: Result<T, SessionError>| {
            if let Ok(value) = result {
                let value = value.returned();
                let _ = returns.send(GivenBack { value, given });
            }
        });
        Delivery::new(Ok(value), Some(ack), Some(give_back))
    }
}

type YieldReply = oneshot::Sender<Answer<CellResponse>>;
type PendingReply = oneshot::Sender<Answer<PendingOutcome>>;
pub(crate) type TerminateReply = oneshot::Sender<Answer<CellResponse>>;

/// A delegate callback not started yet (an answer was not taken), with its tracker.
type Deferred = (TaskTracker, BoxFuture<'static, ()>);

/// Someone waiting on the cell.
pub(crate) enum Observer {
    /// `exec` / `wait`: returns at completion, yield, deadline or termination.
    Yielding {
        deadline: Instant,
        reply: YieldReply,
    },
    /// `execute_to_pending` / `wait_to_pending`: returns at a frontier or completion.
    Pending { reply: PendingReply },
}

impl Observer {
    pub(crate) fn yielding(deadline: Instant, reply: YieldReply) -> Self {
        Observer::Yielding { deadline, reply }
    }

    pub(crate) fn pending(reply: PendingReply) -> Self {
        Observer::Pending { reply }
    }

    /// Whether the caller stopped waiting (its future was dropped).
    fn is_gone(&self) -> bool {
        match self {
            Observer::Yielding { reply, .. } => reply.is_closed(),
            Observer::Pending { reply } => reply.is_closed(),
        }
    }

    fn refuse(self, error: SessionError) {
        match self {
            Observer::Yielding { reply, .. } => drop(Delivery::plain(Err(error)).send(reply)),
            Observer::Pending { reply } => drop(Delivery::plain(Err(error)).send(reply)),
        }
    }

    /// Delivers a response with its receipt; gives the response back if the caller is
    /// gone.
    fn deliver(self, response: CellResponse, receipt: Receipt) -> Result<(), Option<CellResponse>> {
        match self {
            Observer::Yielding { reply, .. } => send_answer(reply, response, receipt),
            Observer::Pending { reply } => {
                send_answer(reply, PendingOutcome::Completed(response), receipt).map_err(|echo| {
                    match echo {
                        Some(PendingOutcome::Completed(response)) => Some(response),
                        _ => None,
                    }
                })
            }
        }
    }
}

/// Sends a successful answer; gives the value back if the caller is gone.
fn send_answer<T: Returnable>(
    reply: oneshot::Sender<Answer<T>>,
    value: T,
    receipt: Receipt,
) -> Result<(), Option<T>> {
    receipt.answer(value).send(reply).map_err(|echo| echo.ok())
}

/// Requests from the session to a cell actor.
pub(crate) enum ActorRequest {
    Observe(Observer),
    Terminate { reply: TerminateReply },
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
    Completed(Option<String>),
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
    Finished(Final),
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

/// Armed timers, fired in (due time, id) order so equal delays keep creation order.
#[derive(Default)]
struct Timers {
    timers: BTreeSet<(Instant, u64)>,
    timer_due: HashMap<u64, Instant>,
}

/// The cell's callbacks (nested calls, notifications) and the answers they wait behind.
struct Callbacks {
    /// The cell's node in the token tree; every callback gets a child.
    token: CancellationToken,
    tool_tasks: TaskTracker,
    notify_tasks: TaskTracker,
    /// Answers given and not yet taken by their callers, oldest first.
    unacked: Unacked,
    /// Callbacks held back until every answer before them was taken, in call order.
    deferred: VecDeque<Deferred>,
}

/// Where the cell is in its life.
struct Life {
    phase: Phase,
    /// The JS thread reported its end (or went away).
    runtime_done: bool,
    shutting_down: bool,
    /// The actor is done; the cell is closed when the loop ends.
    closed: bool,
}

impl Timers {
    fn arm(&mut self, id: u64, delay: Duration) {
        let now = Instant::now();
        let due = now
            .checked_add(delay)
            .unwrap_or(now + Duration::from_secs(u32::MAX.into()));
        self.timers.insert((due, id));
        self.timer_due.insert(id, due);
    }

    fn cancel(&mut self, id: u64) {
        if let Some(due) = self.timer_due.remove(&id) {
            self.timers.remove(&(due, id));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.timers.first().map(|(due, _)| *due)
    }

    /// The next timer due at `now`, removed from the queue.
    fn pop_due(&mut self, now: Instant) -> Option<u64> {
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
enum Kind {
    Tool,
    Notification,
}

impl Callbacks {
    /// The oldest answer was taken (and forgotten): once all are, the held-back callbacks
    /// start in order.
    fn on_acked(&mut self) {
        if !self.unacked.is_empty() {
            return;
        }
        while let Some((tracker, task)) = self.deferred.pop_front() {
            start_now(&tracker, task);
        }
    }

    /// Starts a delegate callback now, or after the answers not yet taken.
    fn launch(&mut self, kind: Kind, task: BoxFuture<'static, ()>) {
        let tracker = match kind {
            Kind::Tool => self.tool_tasks.clone(),
            Kind::Notification => self.notify_tasks.clone(),
        };
        if self.unacked.is_empty() && self.deferred.is_empty() {
            start_now(&tracker, task);
        } else {
            self.deferred.push_back((tracker, task));
        }
    }
}

pub(crate) struct CellActor {
    cell_id: CellId,
    shared: Arc<Shared>,
    runtime: CellHandle,
    events: mpsc::Receiver<CellEvent>,
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
}

impl CellActor {
    pub(crate) fn new(
        cell_id: CellId,
        shared: Arc<Shared>,
        runtime: CellHandle,
        events: mpsc::Receiver<CellEvent>,
        requests: mpsc::Receiver<ActorRequest>,
        observer: Observer,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let (returns_tx, returns_rx) = mpsc::unbounded_channel();
        let token = shared.root().child_token();
        Self {
            cell_id,
            shared,
            runtime,
            events,
            requests,
            internal_tx,
            internal_rx,
            returns_tx,
            returns_rx,
            output: Output {
                items: Vec::new(),
                initial_yield: None,
                observed: false,
                deliveries: 0,
                observer: Some(observer),
                terminate_reply: None,
            },
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
                runtime_done: false,
                shutting_down: false,
                closed: false,
            },
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            while !self.life.closed {
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
                    Step::Acked => self.callbacks.on_acked(),
                }
            }
            // The final answer is taken before the cell is reported closed; one its
            // caller dropped untaken comes back and keeps the cell open for the next
            // observation. However long a caller holds it unpolled, the cell waits for
            // it (no timer ends the wait: it would close the cell under an answer that may
            // still come back); only the session's shutdown does.
            let root = self.shared.root().clone();
            std::mem::take(&mut self.callbacks.unacked)
                .all_taken_or_stopped(&root)
                .await;
            self.take_returns();
            if self.life.closed {
                break;
            }
        }
        self.close().await;
    }

    async fn next_step(&mut self) -> Step {
        let deadline = match &self.output.observer {
            Some(Observer::Yielding { deadline, .. }) => Some(*deadline),
            _ => None,
        };
        let next_timer = self.timers.next_due();
        let root = self.shared.root().clone();
        tokio::select! {
            biased;
            // The deadline first: once it has passed, later output belongs to the next
            // observation.
            () = sleep_until_some(deadline) => Step::Deadline,
            () = sleep_until_some(next_timer) => Step::TimersDue,
            event = self.events.recv(), if !self.life.runtime_done => Step::Event(event),
            Some(given) = self.returns_rx.recv() => Step::Returned(given),
            Some(request) = self.requests.recv() => Step::Request(request),
            Some(message) = self.internal_rx.recv() => Step::Internal(message),
            () = root.cancelled(), if !self.life.shutting_down => Step::Shutdown,
            () = self.callbacks.unacked.oldest_taken(), if !self.callbacks.unacked.is_empty() => Step::Acked,
        }
    }

    // -----------------------------------------------------------------------------------
    // Runtime events
    // -----------------------------------------------------------------------------------

    fn on_event(&mut self, event: CellEvent) {
        match event {
            CellEvent::Started => {}
            CellEvent::Output(item) => self.output.items.push(item),
            CellEvent::YieldRequested => self.on_yield_requested(),
            CellEvent::ToolCall(call) => self.start_tool_call(call),
            CellEvent::Notify(text) => self.start_notification(text),
            CellEvent::TimerSet { id, delay } => self.timers.arm(id, delay),
            CellEvent::TimerCleared { id } => {
                self.timers.cancel(id);
            }
            CellEvent::Idle { commands_applied } => {
                // An `Idle` sent before the cell received our latest commands is stale.
                if commands_applied == self.frontier.commands_sent {
                    self.frontier.at_frontier = true;
                    self.respond_at_frontier();
                }
            }
            CellEvent::Finished(outcome) => {
                code_mode_protocol::hop!("actor has the end");
                self.life.runtime_done = true;
                self.on_finished(outcome);
            }
        }
    }

    fn on_runtime_lost(&mut self) {
        self.life.runtime_done = true;
        tracing::error!(cell = %self.cell_id, "the cell thread stopped without reporting an outcome");
        let outcome = match self.life.phase {
            Phase::Running => CellOutcome::Completed {
                error_text: Some("exec cell stopped unexpectedly".to_owned()),
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
                    error_text,
                    stored_writes,
                },
            ) => {
                self.shared.commit(stored_writes);
                Final::Completed(error_text)
            }
            // Termination already won: the writes are discarded with the outcome.
            (Phase::Running | Phase::Terminating, _) => Final::Terminated,
            (Phase::CleaningUp(_) | Phase::Finished(_), _) => return,
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
        if let Some(reply) = self.output.terminate_reply.take() {
            let items = std::mem::take(&mut self.output.items);
            let response = self.final_response(decision, items);
            let receipt = self.receipt(false);
            match send_answer(reply, response, receipt) {
                Ok(()) => self.life.closed = true,
                Err(response) => self.restore(response),
            }
        }
        self.deliver_final();
        if self.life.shutting_down {
            self.life.closed = true;
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
            Phase::Terminating | Phase::CleaningUp(_) => {}
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
            Phase::Finished(decision) => {
                let items = std::mem::take(&mut self.output.items);
                let response = self.final_response(decision.clone(), items);
                let receipt = self.receipt(false);
                match send_answer(reply, response, receipt) {
                    Ok(()) => self.life.closed = true,
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
                self.runtime.terminate();
            }
        }
    }

    fn on_shutdown(&mut self) {
        self.life.shutting_down = true;
        match self.life.phase {
            Phase::Running => {
                self.life.phase = Phase::Terminating;
                self.runtime.terminate();
            }
            Phase::Terminating | Phase::CleaningUp(_) => {}
            Phase::Finished(_) => self.life.closed = true,
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
        while !self.life.runtime_done && matches!(self.life.phase, Phase::Running) {
            match self.events.try_recv() {
                Ok(event) => self.on_event(event),
                Err(_) => break,
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Answers
    // -----------------------------------------------------------------------------------

    /// Answers a yielding observer with the items so far (or the first `upto` of them).
    /// `for_yield`: the answer is due to a `yield_control()`, which is remembered for the
    /// next observation if this one was dropped before the first observation.
    fn respond_yielded(&mut self, upto: Option<usize>, for_yield: bool) {
        let Some(observer) = self.output.observer.take() else {
            return;
        };
        let upto = upto
            .unwrap_or(self.output.items.len())
            .min(self.output.items.len());
        let items: Vec<ContentItem> = self.output.items.drain(..upto).collect();
        let response = CellResponse::Yielded {
            cell_id: self.cell_id.clone(),
            content_items: items,
        };
        let receipt = self.receipt(for_yield);
        match observer.deliver(response, receipt) {
            Ok(()) => self.output.observed = true,
            Err(response) => {
                // A dropped observation consumes nothing, and a yield it missed before the
                // first observation is still remembered.
                self.restore(response);
                if for_yield && !self.output.observed {
                    self.output.initial_yield.get_or_insert(upto);
                }
            }
        }
    }

    /// Answers a pending-aware observer if the cell is at a frontier.
    fn respond_at_frontier(&mut self) {
        if !self.frontier.at_frontier || !matches!(self.life.phase, Phase::Running) {
            return;
        }
        let Some(Observer::Pending { .. }) = &self.output.observer else {
            return;
        };
        let Some(Observer::Pending { reply }) = self.output.observer.take() else {
            return;
        };
        let outcome = PendingOutcome::Pending {
            cell_id: self.cell_id.clone(),
            content_items: std::mem::take(&mut self.output.items),
            pending_tool_call_ids: std::mem::take(&mut self.frontier.calls_since_frontier),
        };
        let receipt = self.receipt(false);
        match send_answer(reply, outcome, receipt) {
            Ok(()) => {
                self.output.observed = true;
                self.frontier.frozen = true;
            }
            Err(Some(PendingOutcome::Pending {
                content_items,
                pending_tool_call_ids,
                ..
            })) => {
                self.restore_items(content_items);
                let mut ids = pending_tool_call_ids;
                ids.append(&mut self.frontier.calls_since_frontier);
                self.frontier.calls_since_frontier = ids;
            }
            Err(_) => {}
        }
    }

    /// Answers the observer (if any) with the final response once the cell has finished.
    fn deliver_final(&mut self) {
        let Phase::Finished(decision) = &self.life.phase else {
            return;
        };
        let decision = decision.clone();
        if matches!(self.output.observer, Some(Observer::Yielding { .. }))
            && !self.output.observed
            && let Some(mark) = self.output.initial_yield.take()
        {
            // The remembered yield comes first; the rest with the next observation.
            self.respond_yielded(Some(mark), true);
            return;
        }
        let Some(observer) = self.output.observer.take() else {
            return;
        };
        let items = std::mem::take(&mut self.output.items);
        let response = self.final_response(decision, items);
        let receipt = self.receipt(false);
        match observer.deliver(response, receipt) {
            Ok(()) => self.life.closed = true,
            Err(response) => self.restore(response),
        }
    }

    fn final_response(&self, decision: Final, items: Vec<ContentItem>) -> CellResponse {
        match decision {
            Final::Completed(error_text) => CellResponse::Result {
                cell_id: self.cell_id.clone(),
                content_items: items,
                error_text,
                missing_cell: false,
            },
            Final::Terminated => self.terminated(items),
        }
    }

    fn terminated(&self, items: Vec<ContentItem>) -> CellResponse {
        CellResponse::Terminated {
            cell_id: self.cell_id.clone(),
            content_items: items,
        }
    }

    /// The acknowledgement and the way back of an answer about to be given. `for_yield`:
    /// the answer is due to a `yield_control()`.
    fn receipt(&mut self, for_yield: bool) -> Receipt {
        self.output.deliveries += 1;
        Receipt {
            ack: self.callbacks.unacked.ack(),
            returns: self.returns_tx.clone(),
            given: Given {
                number: self.output.deliveries,
                first_observation: !self.output.observed,
                for_yield,
            },
        }
    }

    /// Takes back every answer dropped untaken so far.
    fn take_returns(&mut self) {
        while let Ok(given) = self.returns_rx.try_recv() {
            self.on_returned(given);
        }
    }

    /// An answer came back untaken: its output is the cell's again, first in line, and if
    /// nothing was answered since, the cell is as if it had not been given (a first
    /// observation is still to come, a finished cell stays open for its result).
    fn on_returned(&mut self, given: GivenBack) {
        let delivery = given.given;
        let latest = delivery.number == self.output.deliveries;
        let ended = match given.value {
            Returned::Response(response)
            | Returned::Outcome(PendingOutcome::Completed(response)) => {
                let ended = !matches!(response, CellResponse::Yielded { .. });
                let count = response.content_items().len();
                self.restore(Some(response));
                if latest && delivery.first_observation && delivery.for_yield {
                    self.output.initial_yield = Some(count);
                }
                ended
            }
            Returned::Outcome(PendingOutcome::Pending {
                content_items,
                pending_tool_call_ids,
                ..
            }) => {
                self.restore_items(content_items);
                let mut ids = pending_tool_call_ids;
                ids.append(&mut self.frontier.calls_since_frontier);
                self.frontier.calls_since_frontier = ids;
                self.frontier.returned_here = latest;
                false
            }
        };
        if latest && delivery.first_observation {
            self.output.observed = false;
        }
        if ended && matches!(self.life.phase, Phase::Finished(_)) && !self.life.shutting_down {
            self.life.closed = false;
        }
    }

    fn restore(&mut self, response: Option<CellResponse>) {
        let items = match response {
            Some(
                CellResponse::Yielded { content_items, .. }
                | CellResponse::Terminated { content_items, .. }
                | CellResponse::Result { content_items, .. },
            ) => content_items,
            None => return,
        };
        self.restore_items(items);
    }

    fn restore_items(&mut self, mut items: Vec<ContentItem>) {
        items.append(&mut self.output.items);
        self.output.items = items;
    }

    // -----------------------------------------------------------------------------------
    // Callbacks: nested tool calls, notifications, timers
    // -----------------------------------------------------------------------------------

    fn start_tool_call(&mut self, call: ToolCallRequest) {
        code_mode_protocol::hop!("actor has the tool call");
        let call_id = call.id;
        self.frontier.calls_since_frontier.push(call_id);
        // The argument stays the text V8 wrote; only a delegate that wants a value parses
        // it (see `NestedToolCall::answer_with`).
        let request = NestedToolCall {
            cell_id: self.cell_id.clone(),
            call_id,
            tool_name: call.name,
            kind: call.kind,
            input: call.input.map(JsonText::new),
        };
        let token = self.callbacks.token.child_token();
        let delegate = Arc::clone(self.shared.delegate());
        let internal = self.internal_tx.clone();
        let id = call.id;
        let task = Box::pin(async move {
            let answer =
                until_cancelled(&token, delegate.invoke_tool(request, token.clone())).await;
            if let Some(result) = answer {
                code_mode_protocol::hop!("delegate answered");
                let _ = internal.send(Internal::ToolDone { id, result });
            }
        });
        self.callbacks.launch(Kind::Tool, task);
    }

    fn start_notification(&mut self, text: String) {
        let token = self.callbacks.token.child_token();
        let delegate = Arc::clone(self.shared.delegate());
        let cell_id = self.cell_id.clone();
        let task = Box::pin(async move {
            until_cancelled(&token, delegate.notify(cell_id, text, token.clone())).await;
        });
        self.callbacks.launch(Kind::Notification, task);
    }

    /// Fires every timer that is due, in order; frozen cells get them later.
    fn fire_due_timers(&mut self) {
        while let Some(id) = self.timers.pop_due(Instant::now()) {
            self.route(CellCommand::TimerFired { id });
        }
    }

    fn on_internal(&mut self, message: Internal) {
        if let Internal::CleanupDone = message {
            self.on_cleanup_done();
            return;
        }
        // Answers are never applied after the cell ended or while it is being terminated.
        if !matches!(self.life.phase, Phase::Running) {
            return;
        }
        if let Internal::ToolDone { id, result } = message {
            code_mode_protocol::hop!("actor has the answer");
            self.route(CellCommand::ToolResult { id, result });
        }
    }

    /// Sends a command to the cell, or holds it back while the cell is frozen.
    fn route(&mut self, command: CellCommand) {
        if !matches!(self.life.phase, Phase::Running) {
            return;
        }
        if self.frontier.frozen {
            self.frontier.held_back.push(command);
        } else {
            self.send_to_cell(command);
        }
    }

    fn send_to_cell(&mut self, command: CellCommand) {
        self.frontier.commands_sent += 1;
        self.frontier.at_frontier = false;
        self.runtime.send(command);
    }

    /// Removes the cell from the session, waits for its thread, and reports it closed.
    async fn close(self) {
        // Only now may the thread spend CPU on the isolate: not while the answer is
        // still on its way to the caller. One yield first lets the caller's next step (in
        // the runtime process: writing the response) run before the thread wakes.
        tokio::task::yield_now().await;
        self.runtime.release();
        self.shared.forget(&self.cell_id);
        let runtime = self.runtime;
        let joined = tokio::task::spawn_blocking(move || runtime.join()).await;
        if joined.is_err() {
            tracing::error!(cell = %self.cell_id, "joining the cell thread failed");
        }
        self.shared.delegate().cell_closed(&self.cell_id);
    }
}

/// Polls a callback once on the actor (its delegate's code up to the first `.await` runs
/// now, in call order) and spawns it on `tracker` unless it is already done.
fn start_now(tracker: &TaskTracker, mut task: BoxFuture<'static, ()>) {
    if poll_once(&mut task).is_none() {
        tracker.spawn(task);
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
