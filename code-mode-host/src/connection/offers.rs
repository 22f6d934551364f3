//! The final answers runtimes offer ([`ServerMessage::Offer`]): a cell that finished with
//! nobody observing it sends its final answer at once, and the host answers the cell's next
//! `wait`, `wait_to_pending` or `terminate` (natural completion wins, contract 3.7) with it,
//! with no round trip to the runtime. The runtime holds each offered answer as it holds a
//! request's, until the host says, once, that it was taken ([`ClientMessage::OfferTaken`],
//! the cell then closes) or is given back ([`ClientMessage::OfferGivenBack`]).
//!
//! An offer is given back at once when a request of the host already observes the cell
//! (it crossed the offer on the wire, and the runtime answers it once the answer is back),
//! when its session is not open here any more, or when the cell is not one of the session's
//! live cells: what a host keeps is bounded by the cells it knows.

use super::*;

impl Connection {
    /// A cell's final answer offered by the runtime: kept for the cell's next observation,
    /// or given back (see the module docs). A response that is not final, or names another
    /// cell, is a violation.
    pub(super) fn on_offer(
        &self,
        session: SessionId,
        cell_id: CellId,
        response: payload::CellResponse,
    ) -> Result<(), Violation> {
        let response = CellResponse::from(response);
        if !is_runtime_cell_id(&cell_id)
            || *response.cell_id() != cell_id
            || matches!(response, CellResponse::Yielded { .. })
        {
            return Err(Violation::OfferInvalid(cell_id));
        }
        // The word that will say it was taken, made now rather than when a `wait` takes
        // it: the answer then waits on nothing but the queueing.
        let taken = Outbox::encode(&ClientMessage::OfferTaken {
            session,
            cell_id: (&cell_id).into(),
        });
        let mut state = lock(&self.state);
        let observed = state.pending.values().any(|pending| {
            pending.session == Some(session) && pending.cell.as_ref() == Some(&cell_id)
        });
        let kept = match (state.sessions.get_mut(&session), taken) {
            (Some(entry), Ok(taken)) if !observed && entry.live_cells.contains(&cell_id) => {
                entry
                    .offers
                    .insert(cell_id.clone(), Offer { response, taken });
                true
            }
            _ => false,
        };
        drop(state);
        if !kept {
            let word = ClientMessage::OfferGivenBack {
                session,
                cell_id: cell_id.into(),
            };
            if let Err(error) = self.outbox.send(&word) {
                tracing::debug!(%session, "an offer's word not sent: {error}");
            }
        }
        Ok(())
    }

    /// The final answer runtime cell `cell_id` of `session` offered, taken: the caller
    /// observes the cell and needs no round trip. The host's first resort for a `wait`,
    /// `wait_to_pending` or `terminate` ([`crate::hosted`]); [`Self::call`] looks again
    /// under the lock it registers a request with, for an offer that arrived in between.
    pub(crate) fn take_offer(&self, session: SessionId, cell_id: &CellId) -> Option<CellResponse> {
        let mut state = lock(&self.state);
        self.take_offer_locked(&mut state, session, cell_id)
    }

    /// The answer to `request` from an offer, when it observes a cell whose final answer
    /// the host holds (see [`Self::take_offer`]).
    pub(super) fn answer_from_offer(
        &self,
        state: &mut State,
        request: &Request,
    ) -> Option<Response> {
        let session = request.session()?;
        let cell_id = observed_cell(request)?;
        let response = self.take_offer_locked(state, session, &cell_id)?;
        let pending_aware = matches!(
            request,
            Request::Session {
                call: payload::SessionCall::WaitToPending { .. },
                ..
            }
        );
        let reply = if pending_aware {
            code_mode_internal::SessionReply::Pending(PendingOutcome::Completed(response))
        } else {
            code_mode_internal::SessionReply::Cell(response)
        };
        Some(Response::Reply(reply.into()))
    }

    /// Takes the offer of `cell_id`: the runtime hears it, and the cell's journal goes, as
    /// for any final answer.
    fn take_offer_locked(
        &self,
        state: &mut State,
        session: SessionId,
        cell_id: &CellId,
    ) -> Option<CellResponse> {
        let entry = state.sessions.get_mut(&session)?;
        let Offer { response, taken } = entry.offers.remove(cell_id)?;
        entry.journals.remove(cell_id);
        // Behind the answer: the caller does not wait for the write, nor for the runtime
        // it wakes to close the cell.
        if let Err(error) = self.outbox.send_behind(taken) {
            tracing::debug!(%session, "an offer's word not sent: {error}");
        }
        Some(response)
    }
}

/// A final answer the runtime offered, kept with the word that will say it was taken.
pub(super) struct Offer {
    pub(super) response: CellResponse,
    taken: EncodedFrame<ClientMessage>,
}

/// The cell a request observes (a wait, a pending-aware wait, a terminate), if any.
pub(super) fn observed_cell(request: &Request) -> Option<CellId> {
    match request {
        Request::Session { call, .. } => match call {
            payload::SessionCall::Wait(wait) => Some((&wait.cell_id).into()),
            payload::SessionCall::Terminate { cell_id }
            | payload::SessionCall::WaitToPending { cell_id } => Some(cell_id.into()),
            _ => None,
        },
        _ => None,
    }
}
