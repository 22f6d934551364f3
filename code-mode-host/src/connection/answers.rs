//! How a runtime's response reaches the call that waits for it: typed once on arrival
//! ([`FromResponse`]) and handed over as a [`Delivery`]. For a call that observes a cell
//! the runtime holds the answer itself, and the delivery's receipt ([`Word`]) tells it,
//! once, whether the caller took the answer or dropped it; the cell's actor in the runtime
//! does the rest. A call dropped before its answer came is cancelled on the wire, and an
//! answer that crossed the cancellation is given back.

use super::*;
use code_mode_internal::delivery::Receipt;

/// A typed answer to a request: the response of the one kind the request is answered
/// with. The reader converts each response once, on arrival; a response of another kind is
/// a protocol violation, so callers never match on the kind again.
pub(crate) trait FromResponse: Sized + Send + 'static {
    /// The answer, or the response back (boxed: it is large) when it is of another kind.
    fn from_response(response: Response) -> Result<Self, Box<Response>>;
}

impl FromResponse for SessionId {
    fn from_response(response: Response) -> Result<Self, Box<Response>> {
        match response {
            Response::SessionOpened(session) => Ok(session),
            other => Err(Box::new(other)),
        }
    }
}

macro_rules! reply_answer {
    ($($ty:ty),* $(,)?) => {
        $(
            impl FromResponse for $ty {
                fn from_response(response: Response) -> Result<Self, Box<Response>> {
                    match response {
                        Response::Reply(reply) => {
                            <$ty as FromReply>::from_reply(reply.into())
                                .map_err(|reply| Box::new(Response::Reply(reply.into())))
                        }
                        other => Err(Box::new(other)),
                    }
                }
            }
        )*
    };
}

reply_answer!(
    StartedCell,
    CellResponse,
    StartedPendingCell,
    PendingOutcome,
    Vec<CellId>,
    (),
);

/// What a caller receives: the answer, with the host's word to the runtime as its receipt
/// when the runtime holds it.
pub(super) type Delivered<T> = Delivery<Result<T, SessionError>>;

/// The host's word to the runtime about an answer it holds: taken, or given back.
pub(super) struct Word {
    pub(super) outbox: Outbox<ClientMessage>,
    pub(super) id: RequestId,
    /// The count of output items taken of the cell the answer observes, and how many the
    /// answer carries: once taken, they count as delivered in the cell's journal (a
    /// rebuilt cell gives them no more, even when the runtime was lost in between).
    pub(super) took: Option<(Arc<std::sync::atomic::AtomicU64>, u64)>,
}

impl Word {
    fn say(&self, message: ClientMessage) {
        // A connection that is gone took the held answer with it.
        if let Err(error) = self.outbox.send(&message) {
            tracing::debug!(id = %self.id, "{} not sent: {error}", message.kind());
        }
    }
}

impl<T> Receipt<T> for Word {
    fn taken(self: Box<Self>) {
        if let Some((taken, items)) = &self.took {
            taken.fetch_add(*items, std::sync::atomic::Ordering::SeqCst);
        }
        self.say(ClientMessage::Taken { id: self.id });
    }

    fn given_back(self: Box<Self>, _: T) {
        self.say(ClientMessage::GivenBack { id: self.id });
    }
}

/// Hands a request's outcome to its caller, converted to the caller's type, with the
/// word the runtime waits for when it holds the answer; gives the response back when it
/// is of another kind.
pub(super) type Deliver = Box<
    dyn FnOnce(Result<Response, SessionError>, Option<Word>) -> Result<(), Box<Response>> + Send,
>;

/// The [`Deliver`] of a caller waiting for a `T` on `reply`.
pub(super) fn deliver_to<T: FromResponse>(reply: oneshot::Sender<Delivered<T>>) -> Deliver {
    Box::new(move |result, word| {
        let answer = match result {
            Ok(response) => Ok(T::from_response(response)?),
            Err(error) => Err(error),
        };
        let delivery = match word {
            Some(word) => Delivery::new(answer, Box::new(word)),
            None => Delivery::plain(answer),
        };
        // A caller gone already drops the delivery, which gives the answer back.
        let _ = reply.send(delivery);
        Ok(())
    })
}

/// Cancels an abandoned request on drop. When its answer had arrived already, it waits in
/// the channel untaken, and dropping the channel gives it back.
pub(super) struct AbandonOnDrop<'a, T: FromResponse> {
    pub(super) connection: &'a Arc<Connection>,
    pub(super) id: RequestId,
    pub(super) answer: oneshot::Receiver<Delivered<T>>,
    pub(super) armed: bool,
}

impl<T: FromResponse> Drop for AbandonOnDrop<'_, T> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let removed = {
            let mut state = lock(&self.connection.state);
            let removed = state.pending.remove(&self.id);
            if let Some(pending) = &removed {
                let abandoned = Abandoned {
                    session: pending.session,
                    holds_answer: pending.holds_answer,
                    tools: pending.hooks.exec.as_ref().map(|exec| exec.tools.clone()),
                };
                state.abandoned.insert(self.id, abandoned);
                if let Some(delegate) = &pending.hooks.cell_delegate {
                    state
                        .abandoned_delegates
                        .insert(self.id, Arc::clone(delegate));
                }
            }
            // Returned, to be dropped once the lock is let go: its hooks are the agent
            // core's code.
            removed
        };
        if removed.is_some() {
            let _ = self
                .connection
                .outbox
                .send(&ClientMessage::CancelRequest { id: self.id });
        }
    }
}

/// A request whose caller gave up before its answer came.
#[derive(Clone)]
pub(super) struct Abandoned {
    pub(super) session: Option<SessionId>,
    pub(super) holds_answer: bool,
    /// An exec's tools: the cell it may still admit calls only these.
    pub(super) tools: Option<Arc<[ToolDefinition]>>,
}

impl Connection {
    /// The answer to an abandoned request came (the cancellation crossed it): an answer
    /// the runtime holds is given back to its cell, a started cell is known alive, and a
    /// session nobody will use is shut down.
    pub(super) fn on_abandoned_response(
        self: &Arc<Self>,
        mut state: MutexGuard<'_, State>,
        id: RequestId,
        abandoned: Abandoned,
        result: Result<Response, WireError>,
    ) -> Result<(), Violation> {
        let Ok(response) = result else {
            return Ok(());
        };
        match &response {
            Response::SessionOpened(opened) => {
                let opened = *opened;
                drop(state);
                self.send_detached(Request::shutdown(opened));
                return Ok(());
            }
            Response::Reply(
                payload::SessionReply::Started { cell_id, .. }
                | payload::SessionReply::StartedPending { cell_id, .. },
            ) => {
                mark_alive(&mut state, abandoned.session, &cell_id.into())?;
            }
            _ => {}
        }
        drop(state);
        if abandoned.holds_answer {
            let _ = self.outbox.send(&ClientMessage::GivenBack { id });
        }
        Ok(())
    }
}
