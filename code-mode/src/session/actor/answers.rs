//! How the actor answers its observers: who waits on a cell ([`Observer`]), the answer
//! it is given (a [`Delivery`] whose [`Receipt`] is the actor's [`ReturnPath`]), the responses the actor
//! builds (yielded, at a frontier, final), and taking back an answer its caller dropped
//! untaken (contract 3.3: a dropped observation consumes nothing).

use super::acks::Ack;
use super::*;
use code_mode_internal::delivery::{Delivery, Receipt};

/// An answer of the actor: a [`Delivery`] of the result, acknowledged when the caller
/// takes it, which lets the actor start the cell's next delegate callbacks. An answer
/// dropped before its caller took it (the caller's future was dropped while the answer
/// waited in its channel, or the host said it was given back) goes back to the cell: a
/// dropped observation consumes nothing.
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
pub(super) struct Given {
    /// The actor's count of deliveries, this one included.
    pub(super) number: u64,
    pub(super) first_observation: bool,
    pub(super) for_yield: bool,
    /// A copy of an answer given to someone else too (a terminated cell's observer gets
    /// the terminate's answer): given back, it changes nothing.
    pub(super) copy: bool,
}

/// An answer back from a caller that dropped it.
pub(crate) struct GivenBack {
    pub(super) value: Returned,
    pub(super) given: Given,
}

/// An answer's way back to the actor, the actor's [`Receipt`]: the acknowledgement that
/// lets the cell's next callbacks start when the answer is taken, and the channel that
/// brings its value back when it is given back.
pub(super) struct ReturnPath {
    pub(super) ack: Ack,
    pub(super) returns: mpsc::UnboundedSender<GivenBack>,
    pub(super) given: Given,
    /// For a final answer: the cell's thread, released once the answer is on its way (not
    /// before: the isolate's reset must not compete with the answer's delivery).
    pub(super) release: Option<Releaser>,
}

impl ReturnPath {
    /// `value` as an answer: acknowledged when taken, given back to the actor if dropped
    /// untaken.
    pub(super) fn answer<T: Returnable>(self, value: T) -> Answer<T> {
        Delivery::new(Ok(value), Box::new(self))
    }

    fn release_thread(&self) {
        if let Some(release) = &self.release {
            release.release();
        }
    }
}

impl<T: Returnable> Receipt<Result<T, SessionError>> for ReturnPath {
    fn sent(&self) {
        self.release_thread();
    }

    fn taken(self: Box<Self>) {
        // In process nothing says `sent`; the acknowledgement signals as it drops.
        self.release_thread();
    }

    fn given_back(self: Box<Self>, result: Result<T, SessionError>) {
        let ReturnPath {
            ack,
            returns,
            given,
            ..
        } = *self;
        if let Ok(value) = result {
            let value = value.returned();
            let _ = returns.send(GivenBack { value, given });
        }
        // Given back before the acknowledgement signals, so the actor, once it sees the
        // acknowledgement, finds the value back already.
        drop(ack);
    }
}

pub(super) type YieldReply = oneshot::Sender<Answer<CellResponse>>;
pub(super) type PendingReply = oneshot::Sender<Answer<PendingOutcome>>;
pub(crate) type TerminateReply = oneshot::Sender<Answer<CellResponse>>;

/// Someone waiting on the cell.
pub(crate) enum Observer {
    /// `exec` / `wait`: returns at completion, yield, deadline or termination.
    Yielding {
        deadline: Instant,
        /// Fires: return `Yielded` at once (contract 8.4).
        preempt: Option<CancellationToken>,
        reply: YieldReply,
    },
    /// `execute_to_pending` / `wait_to_pending`: returns at a frontier or completion.
    Pending { reply: PendingReply },
}

impl Observer {
    pub(crate) fn yielding(
        deadline: Instant,
        preempt: Option<CancellationToken>,
        reply: YieldReply,
    ) -> Self {
        Observer::Yielding {
            deadline,
            preempt,
            reply,
        }
    }

    pub(crate) fn pending(reply: PendingReply) -> Self {
        Observer::Pending { reply }
    }

    /// Whether the caller stopped waiting (its future was dropped).
    pub(super) fn is_gone(&self) -> bool {
        match self {
            Observer::Yielding { reply, .. } => reply.is_closed(),
            Observer::Pending { reply } => reply.is_closed(),
        }
    }

    pub(super) fn refuse(self, error: SessionError) {
        match self {
            Observer::Yielding { reply, .. } => drop(Delivery::plain(Err(error)).send(reply)),
            Observer::Pending { reply } => drop(Delivery::plain(Err(error)).send(reply)),
        }
    }

    /// Delivers a response with its way back; gives the response back if the caller is
    /// gone.
    pub(super) fn deliver(
        self,
        response: CellResponse,
        path: ReturnPath,
    ) -> Result<(), Option<CellResponse>> {
        match self {
            Observer::Yielding { reply, .. } => send_answer(reply, response, path),
            Observer::Pending { reply } => {
                send_answer(reply, PendingOutcome::Completed(response), path).map_err(|echo| {
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
pub(super) fn send_answer<T: Returnable>(
    reply: oneshot::Sender<Answer<T>>,
    value: T,
    path: ReturnPath,
) -> Result<(), Option<T>> {
    path.answer(value).send(reply).map_err(|echo| echo.ok())
}

impl CellActor {
    /// Answers a yielding observer with the items so far (or the first `upto` of them).
    /// `for_yield`: the answer is due to a `yield_control()`, which is remembered for the
    /// next observation if this one was dropped before the first observation.
    pub(super) fn respond_yielded(&mut self, upto: Option<usize>, for_yield: bool) {
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
            wall_time: Duration::ZERO,
        };
        let path = self.return_path(for_yield);
        match observer.deliver(response, path) {
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
    pub(super) fn respond_at_frontier(&mut self) {
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
            wall_time: Duration::ZERO,
        };
        let path = self.return_path(false);
        match send_answer(reply, outcome, path) {
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

    /// Gives a terminated cell's observer (an exec awaiting its first answer, a wait) a
    /// copy of the terminate's answer, the same items included (contract 3.7, as Codex's
    /// host does); the copy comes back to nobody if dropped.
    pub(super) fn deliver_copy_to_observer(&mut self, response: &CellResponse) {
        let Some(observer) = self.output.observer.take() else {
            return;
        };
        let mut path = self.return_path(false);
        path.given.copy = true;
        let _ = observer.deliver(response.clone(), path);
    }

    /// Answers the observer (if any) with the final response once the cell has finished.
    pub(super) fn deliver_final(&mut self) {
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
            self.offer_final();
            return;
        };
        let items = std::mem::take(&mut self.output.items);
        let response = self.final_response(decision, items);
        let path = self.return_path(false);
        match observer.deliver(response, path) {
            Ok(()) => self.life.close(),
            Err(response) => self.restore(response),
        }
    }

    /// Offers the final answer of a cell that finished with nobody observing it to the
    /// session's driver ([`crate::session::Offer`]): once, and only after every answer
    /// given before was taken, so the driver has seen those first. Not while a yield before
    /// the first observation is remembered (that observation returns the items up to it),
    /// nor at shutdown. The offer is an answer like any other: taken, the cell closes;
    /// given back, its next observation returns it.
    pub(super) fn offer_final(&mut self) {
        let Phase::Finished(decision) = &self.life.phase else {
            return;
        };
        if self.output.offered
            || self.output.observer.is_some()
            || self.life.shutting_down
            || (!self.output.observed && self.output.initial_yield.is_some())
            || !self.callbacks.unacked.all_taken()
        {
            return;
        }
        let Some(sink) = self.shared.offer_sink().cloned() else {
            return;
        };
        let decision = decision.clone();
        self.output.offered = true;
        let items = std::mem::take(&mut self.output.items);
        let response = self.final_response(decision, items);
        let answer = self.return_path(false).answer(response.clone());
        self.life.close();
        sink(crate::session::Offer {
            cell_id: self.cell_id.clone(),
            response,
            held: crate::session::Held(Some(Box::new(answer))),
        });
    }

    pub(super) fn final_response(&self, decision: Final, items: Vec<ContentItem>) -> CellResponse {
        match decision {
            Final::Completed(failure) => CellResponse::result(self.cell_id.clone(), items, failure),
            Final::Terminated => self.terminated(items),
        }
    }

    pub(super) fn terminated(&self, items: Vec<ContentItem>) -> CellResponse {
        CellResponse::Terminated {
            cell_id: self.cell_id.clone(),
            content_items: items,
            wall_time: Duration::ZERO,
        }
    }

    /// The acknowledgement and the way back of an answer about to be given. `for_yield`:
    /// the answer is due to a `yield_control()`.
    pub(super) fn return_path(&mut self, for_yield: bool) -> ReturnPath {
        self.output.deliveries += 1;
        ReturnPath {
            ack: self.callbacks.unacked.ack(),
            returns: self.returns_tx.clone(),
            release: self
                .runtime
                .as_ref()
                .filter(|_| matches!(self.life.phase, Phase::Finished(_)))
                .map(CellHandle::releaser),
            given: Given {
                number: self.output.deliveries,
                first_observation: !self.output.observed,
                for_yield,
                copy: false,
            },
        }
    }

    /// Takes back every answer dropped untaken so far.
    pub(super) fn take_returns(&mut self) {
        while let Ok(given) = self.returns_rx.try_recv() {
            self.on_returned(given);
        }
    }

    /// An answer came back untaken: its output is the cell's again, first in line, and if
    /// nothing was answered since, the cell is as if it had not been given (a first
    /// observation is still to come, a finished cell stays open for its result).
    pub(super) fn on_returned(&mut self, given: GivenBack) {
        let delivery = given.given;
        if delivery.copy {
            return;
        }
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
        if ended && !self.life.shutting_down {
            self.life.reopen();
        }
    }

    pub(super) fn restore(&mut self, response: Option<CellResponse>) {
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

    pub(super) fn restore_items(&mut self, mut items: Vec<ContentItem>) {
        items.append(&mut self.output.items);
        self.output.items = items;
    }
}
