//! The runtime's calls to a session's delegate: nested tool calls and notifications run
//! in the order the runtime sent them (the runtime sends a cell's calls only after the
//! answers before them were taken), cancelled when the runtime asks, and the cell-closed
//! events.

use super::*;

impl Connection {
    pub(super) fn on_delegate_call(
        self: &Arc<Self>,
        id: DelegateId,
        session: SessionId,
        call: DelegateCall,
    ) -> Result<(), Violation> {
        let cell_id = match &call {
            DelegateCall::InvokeTool { cell_id, .. } | DelegateCall::Notify { cell_id, .. } => {
                CellId::from(cell_id)
            }
        };
        let cell_id = &cell_id;
        if !is_runtime_cell_id(cell_id) {
            return Err(Violation::DelegateCellInvalid {
                id,
                cell_id: cell_id.clone(),
            });
        }
        let token = CancellationToken::new();
        let delegate = {
            let mut state = lock(&self.state);
            if state.delegate_calls.contains_key(&id) {
                return Err(Violation::DelegateInFlight(id));
            }
            let Some(entry) = state.sessions.get_mut(&session) else {
                return Err(Violation::DelegateSessionNotOpen { id, session });
            };
            entry.guard(id, session, cell_id, &call)?;
            entry.call_started(cell_id, id, &call);
            let delegate = Arc::clone(entry.cell_delegates.get(cell_id).unwrap_or(&entry.delegate));
            state
                .delegate_calls
                .insert(id, (token.clone(), session, cell_id.clone()));
            delegate
        };
        let connection = Arc::clone(self);
        let owner = Arc::as_ptr(self) as usize;
        // Polled once here, in the order the runtime sent the calls, then spawned.
        let mut task = Box::pin(async move {
            let is_tool_call = matches!(call, DelegateCall::InvokeTool { .. });
            // Proof that the chaos test sees an answer given twice (a test-only switch):
            // a tool answer kept below answers this call instead of the delegate.
            let replayed = is_tool_call
                .then(|| faults::replay(owner, session))
                .flatten();
            let reply = match replayed {
                Some(reply) => Some(reply),
                None => {
                    connection
                        .run_delegate_call(&*delegate, session, call, &token)
                        .await
                }
            };
            let reply = reply.unwrap_or(DelegateReply::Cancelled);
            if faults::fire(Fault::DuplicateAnswer, || is_tool_call) {
                faults::keep_for_replay(owner, session, reply.clone());
            }
            // Sent under the state lock, so that a cell's answers join its journal in the
            // order they are sent.
            let mut state = lock(&connection.state);
            let Some((_, session, cell_id)) = state.delegate_calls.remove(&id) else {
                // A call of a lost connection: its answer goes to the cell's next
                // incarnation, if the cell can be rebuilt; otherwise nobody needs it.
                drop(state);
                connection.deliver_late(id, &reply);
                return;
            };
            let message = ClientMessage::DelegateReply { id, reply };
            code_mode_internal::hop!("host sends the tool result");
            let sent = connection.outbox.send(&message);
            let ClientMessage::DelegateReply { reply, .. } = message else {
                unreachable!("the message was built above");
            };
            if let Some(entry) = state.sessions.get_mut(&session) {
                entry.call_ended(&cell_id, id, reply);
            }
            drop(state);
            if let Err(error) = sent {
                let reply = DelegateReply::ToolResult(Err(payload::ToolError(format!(
                    "the tool result could not be sent to the runtime: {error}"
                ))));
                let _ = connection
                    .outbox
                    .send(&ClientMessage::DelegateReply { id, reply });
            }
        });
        if poll_once(&mut task).is_none() {
            tokio::spawn(task);
        }
        Ok(())
    }

    /// Runs the delegate for one call; `None` when the runtime cancelled it and the delegate
    /// did not answer within its grace period.
    pub(super) async fn run_delegate_call(
        &self,
        delegate: &dyn CodeModeSessionDelegate,
        session: SessionId,
        call: DelegateCall,
        token: &CancellationToken,
    ) -> Option<DelegateReply> {
        match call {
            DelegateCall::InvokeTool {
                cell_id,
                call_id,
                tool_name,
                kind,
                input,
                exec_call_id,
            } => {
                // The argument is parsed only if the agent core's delegate wants a value
                // (`NestedToolCall::answer_with`); the result goes back as its text.
                let call = NestedToolCall {
                    cell_id: self.external_cell_id(session, &cell_id.into()),
                    call_id: call_id.into(),
                    tool_name,
                    kind: kind.into(),
                    input: input.map(JsonText::from),
                    exec_call_id,
                };
                // A call that needs an approval nothing here keeps is refused, never run.
                if let Some(refused) =
                    code_mode_protocol::session::refused_unapproved(delegate, &call)
                {
                    return Some(DelegateReply::ToolResult(Err(refused.into())));
                }
                if faults::fire(Fault::DuplicateCall, || true) {
                    // Proof that the chaos test sees a call made twice (a test-only
                    // switch): the delegate runs it once more first, its answer unused.
                    let _ =
                        until_cancelled(token, delegate.invoke_tool(call.clone(), token.clone()))
                            .await;
                }
                let result =
                    until_cancelled(token, delegate.invoke_tool(call, token.clone())).await?;
                Some(DelegateReply::ToolResult(tool_result(result)))
            }
            DelegateCall::Notify { cell_id, text } => {
                let cell_id = self.external_cell_id(session, &cell_id.into());
                until_cancelled(token, delegate.notify(cell_id, text, token.clone())).await?;
                Some(DelegateReply::Notified)
            }
        }
    }

    /// An `Execute` admitted its cell: its own delegate takes the cell's calls from now
    /// on (the runtime sends this before any of them), and the caller learns the id.
    pub(super) fn on_admitted(&self, id: RequestId, cell_id: CellId) -> Result<(), Violation> {
        if !is_runtime_cell_id(&cell_id) {
            return Err(Violation::AdmittedCellInvalid { id, cell_id });
        }
        let admitted = {
            let mut state = lock(&self.state);
            let (session, delegate, admitted, exec, tools) = match state.pending.get(&id) {
                Some(pending) => (
                    pending.session,
                    pending.hooks.cell_delegate.clone(),
                    pending.hooks.admitted.clone(),
                    pending.hooks.exec.clone(),
                    pending.hooks.exec.as_ref().map(|exec| exec.tools.clone()),
                ),
                None => match state.abandoned.get(&id).cloned() {
                    Some(abandoned) => (
                        abandoned.session,
                        state.abandoned_delegates.remove(&id),
                        None,
                        None,
                        abandoned.tools,
                    ),
                    // Answered already and then abandoned: nothing waits for it.
                    None => return Err(Violation::AdmittedNotInFlight(id)),
                },
            };
            let Some((session, entry)) =
                session.and_then(|session| Some((session, state.sessions.get_mut(&session)?)))
            else {
                return Err(Violation::AdmittedOutsideSession(id));
            };
            // Only an exec admits a cell, and every exec names its tools.
            let Some(tools) = tools else {
                return Err(Violation::AdmittedNotAnExec(id));
            };
            // A delegate not kept (the cell closed already, or one it replaces) goes after
            // the lock: its drop is the agent core's code.
            let mut leftover = delegate;
            if !entry.closed(&cell_id) {
                entry.live_cells.insert(cell_id.clone());
                if let Some(delegate) = leftover.take() {
                    leftover = entry.cell_delegates.insert(cell_id.clone(), delegate);
                }
                entry
                    .guards
                    .insert(cell_id.clone(), CellGuard::new(&tools, 0));
            }
            entry.admit_journal(&cell_id, exec);
            (admitted.map(|admitted| (admitted, session)), leftover)
        };
        let (admitted, leftover) = admitted;
        drop(leftover);
        if let Some((admitted, session)) = admitted {
            admitted(&self.external_cell_id(session, &cell_id));
        }
        Ok(())
    }

    pub(super) fn on_cell_closed(
        &self,
        session: SessionId,
        cell_id: CellId,
    ) -> Result<(), Violation> {
        if !is_runtime_cell_id(&cell_id) {
            return Err(Violation::ClosedCellInvalid(cell_id));
        }
        let delegate = {
            let mut state = lock(&self.state);
            let Some(entry) = state.sessions.get_mut(&session) else {
                return Err(Violation::ClosedSessionNotOpen(session));
            };
            if entry.closed(&cell_id) || !entry.closed_cells.insert(cell_id.clone()) {
                return Err(Violation::ClosedTwice { session, cell_id });
            }
            entry.live_cells.remove(&cell_id);
            entry.journals.remove(&cell_id);
            entry.guards.remove(&cell_id);
            entry.offers.remove(&cell_id);
            entry
                .cell_delegates
                .remove(&cell_id)
                .unwrap_or_else(|| Arc::clone(&entry.delegate))
        };
        delegate.cell_closed(&self.external_cell_id(session, &cell_id));
        Ok(())
    }
}

impl SessionEntry {
    /// Whether `cell_id` closed: it is not open here (no guard) and is one of the cells
    /// closed lately, or at or below the highest number forgotten ([`RecentlyClosed`]).
    pub(super) fn closed(&self, cell_id: &CellId) -> bool {
        !self.guards.contains_key(cell_id) && self.closed_cells.contains(cell_id)
    }

    /// The host's wall: a delegate call of `cell_id` is let through only for a cell
    /// admitted or resumed in this session on this connection and not closed, a nested call
    /// only for a tool its exec enabled and under a call number above every one before.
    fn guard(
        &mut self,
        id: DelegateId,
        session: SessionId,
        cell_id: &CellId,
        call: &DelegateCall,
    ) -> Result<(), Violation> {
        if self.closed(cell_id) {
            return Err(Violation::DelegateCellClosed {
                id,
                cell_id: cell_id.clone(),
            });
        }
        let Some(guard) = self.guards.get_mut(cell_id) else {
            return Err(Violation::DelegateCellUnknown {
                id,
                session,
                cell_id: cell_id.clone(),
            });
        };
        if let DelegateCall::InvokeTool {
            call_id, tool_name, ..
        } = call
        {
            if !guard.tools.contains(tool_name) {
                return Err(Violation::ToolNotEnabled {
                    id,
                    cell_id: cell_id.clone(),
                    tool: tool_name.clone(),
                });
            }
            let number = call_id.0;
            if number <= guard.last_call {
                return Err(Violation::CallIdReused {
                    id,
                    cell_id: cell_id.clone(),
                    call: number,
                    last: guard.last_call,
                });
            }
            guard.last_call = number;
        }
        Ok(())
    }
}
