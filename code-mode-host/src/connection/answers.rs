//! How a runtime's response reaches the call that waits for it: typed once on arrival
//! ([`Answer`]), handed over as a [`Delivery`] (acknowledged when taken, kept when dropped
//! untaken), a call dropped before its answer came cancelled on the wire, and the answers
//! nobody took kept for the cell's next observation (`crate::unclaimed`).

use super::*;

/// A typed answer to a request: the response of the one kind the request is answered
/// with. The reader converts each response once, on arrival; a response of another kind is
/// a protocol violation, so callers never match on the kind again.
pub(crate) trait Answer: Sized + Send + 'static {
    /// The answer, or the response back (boxed: it is large) when it is of another kind.
    fn from_response(response: Response) -> Result<Self, Box<Response>>;

    /// The response this answer came in.
    fn into_response(self) -> Response;
}

impl Answer for SessionId {
    fn from_response(response: Response) -> Result<Self, Box<Response>> {
        match response {
            Response::SessionOpened(session) => Ok(session),
            other => Err(Box::new(other)),
        }
    }

    fn into_response(self) -> Response {
        Response::SessionOpened(self)
    }
}

macro_rules! reply_answer {
    ($($ty:ty),* $(,)?) => {
        $(
            impl Answer for $ty {
                fn from_response(response: Response) -> Result<Self, Box<Response>> {
                    match response {
                        Response::Reply(reply) => {
                            <$ty as FromReply>::from_reply(reply)
                                .map_err(|reply| Box::new(Response::Reply(reply)))
                        }
                        other => Err(Box::new(other)),
                    }
                }

                fn into_response(self) -> Response {
                    Response::Reply(self.into_reply())
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

/// What a caller receives: the answer with its acknowledgement (until it is taken, the
/// reader holds the session's next delegate events back, so a front end sees answers and
/// later events in the order the runtime sent them) and its way back (an answer its caller
/// drops untaken is kept for the cell's next observation).
pub(super) type Delivered<T> = Delivery<Result<T, SessionError>>;

/// Hands a request's outcome (with its acknowledgement) to its caller, converted to the
/// caller's type; gives the response back when it is of another kind.
pub(super) type Deliver = Box<
    dyn FnOnce(
            &Weak<Connection>,
            Result<Response, SessionError>,
            Option<Ack>,
        ) -> Result<(), Box<Response>>
        + Send,
>;

/// The [`Deliver`] of a caller of `session` waiting for a `T` on `reply`.
pub(super) fn deliver_to<T: Answer>(
    reply: oneshot::Sender<Delivered<T>>,
    session: Option<SessionId>,
) -> Deliver {
    Box::new(move |connection, result, ack| {
        let answer = match result {
            Ok(response) => Ok(T::from_response(response)?),
            Err(error) => Err(error),
        };
        let connection = Weak::clone(connection);
        let give_back = Box::new(move |result: Result<T, SessionError>| {
            if let (Ok(answer), Some(connection)) = (result, connection.upgrade()) {
                let state = lock(&connection.state);
                let kept = connection.keep_unclaimed(state, session, Ok(answer.into_response()));
                if let Err(error) = kept {
                    tracing::warn!("an answer nobody took could not be kept: {error}");
                }
            }
        });
        // A caller gone already drops the delivery, which gives the answer back.
        let _ = reply.send(Delivery::new(answer, ack, Some(give_back)));
        Ok(())
    })
}

/// Cancels an abandoned request on drop, or keeps its answer when it had arrived and
/// was not taken: a dropped call consumes nothing.
pub(super) struct AbandonOnDrop<'a, T: Answer> {
    pub(super) connection: &'a Arc<Connection>,
    pub(super) id: RequestId,
    pub(super) answer: oneshot::Receiver<Delivered<T>>,
    pub(super) armed: bool,
}

impl<T: Answer> Drop for AbandonOnDrop<'_, T> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let removed = {
            let mut state = lock(&self.connection.state);
            let removed = state.pending.remove(&self.id);
            if let Some(pending) = &removed {
                state.abandoned.insert(self.id, pending.session);
                if let Some(delegate) = &pending.hooks.cell_delegate {
                    state
                        .abandoned_delegates
                        .insert(self.id, Arc::clone(delegate));
                }
            }
            removed.is_some()
        };
        // Otherwise it was answered already: the answer waits in the channel (or is about
        // to be sent to it), untaken. Dropping the receiver drops its delivery, which keeps
        // the answer for the cell's next observation.
        if removed {
            let _ = self
                .connection
                .outbox
                .send(&ClientMessage::CancelRequest { id: self.id });
        }
    }
}

impl Connection {
    /// Keeps what the response to an abandoned request carries: the output of a cell for
    /// its next observation, or a session nobody will use (which is shut down).
    pub(super) fn keep_unclaimed(
        self: &Arc<Self>,
        mut state: MutexGuard<'_, State>,
        session: Option<SessionId>,
        result: Result<Response, WireError>,
    ) -> Result<(), String> {
        let unclaimed = match result {
            Ok(Response::SessionOpened(opened)) => {
                drop(state);
                self.send_detached(Request::Session {
                    session: opened,
                    call: SessionCall::Shutdown,
                });
                return Ok(());
            }
            Ok(Response::Reply(SessionReply::Started(started))) => {
                mark_alive(&mut state, session, &started.cell_id)?;
                Unclaimed::Response(started.initial_response)
            }
            Ok(Response::Reply(SessionReply::StartedPending(started))) => {
                mark_alive(&mut state, session, &started.cell_id)?;
                Unclaimed::Outcome(started.outcome)
            }
            Ok(Response::Reply(SessionReply::Cell(response))) if !response.is_missing_cell() => {
                Unclaimed::Response(response)
            }
            Ok(Response::Reply(SessionReply::Pending(outcome))) => Unclaimed::Outcome(outcome),
            // Nothing to keep: a refusal, a missing cell, a shutdown.
            _ => return Ok(()),
        };
        let cell_id = unclaimed.cell_id();
        if !is_runtime_cell_id(cell_id) {
            return Err(format!("a response names an invalid cell id {cell_id:?}"));
        }
        if let Some(entry) = session.and_then(|session| state.sessions.get_mut(&session)) {
            let cell_id = cell_id.clone();
            // Two dropped observations of one cell in a row: both answers are kept, in
            // the order the runtime gave them.
            let kept = match entry.unclaimed.remove(&cell_id) {
                Some(earlier) => earlier.then(unclaimed),
                None => unclaimed,
            };
            entry.unclaimed.insert(cell_id, kept);
        }
        Ok(())
    }

    /// Takes the answer kept for a cell whose caller had gone, if any.
    pub(crate) fn take_unclaimed(&self, session: SessionId, cell_id: &CellId) -> Option<Unclaimed> {
        lock(&self.state)
            .sessions
            .get_mut(&session)?
            .unclaimed
            .remove(cell_id)
    }

    /// Puts back an answer taken with [`Connection::take_unclaimed`] and not returned (its
    /// observation failed or was dropped), before any kept since.
    pub(crate) fn restore_unclaimed(&self, session: SessionId, unclaimed: Unclaimed) {
        let mut state = lock(&self.state);
        let Some(entry) = state.sessions.get_mut(&session) else {
            return;
        };
        let cell_id = unclaimed.cell_id().clone();
        let kept = match entry.unclaimed.remove(&cell_id) {
            Some(later) => unclaimed.then(later),
            None => unclaimed,
        };
        entry.unclaimed.insert(cell_id, kept);
    }
}
