//! The delegate of a served session, and the table of delegate calls a connection has in
//! flight: nested tool calls, notifications and cell-closed events go to the host through
//! the connection's outbox, and the host's answers come back through [`DelegateCalls`].
//!
//! The connection owns the table and hands each session's delegate a weak reference, so a
//! delegate that outlives its connection finds it gone instead of keeping it alive.

use crate::drain::Drain;
use crate::metrics::METRICS;
use code_mode_internal::sync::lock;
use code_mode_protocol::texts;
use code_mode_protocol::{
    BoxFuture, CellId, CodeModeSessionDelegate, JsonText, NestedToolCall, StoredValues, ToolError,
};
use code_mode_wire::convert::tool_result;
use code_mode_wire::{DelegateCall, DelegateId, DelegateReply, Outbox, ServerMessage, SessionId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The delegate calls of one connection that wait for the host's reply, and the outbox
/// that calls, cancellations and cell-closed events go out through.
pub(crate) struct DelegateCalls {
    outbox: Outbox<ServerMessage>,
    pending: Mutex<HashMap<DelegateId, PendingDelegateCall>>,
    last: AtomicU64,
}

impl DelegateCalls {
    pub(crate) fn new(outbox: Outbox<ServerMessage>) -> Arc<Self> {
        Arc::new(Self {
            outbox,
            pending: Mutex::new(HashMap::new()),
            last: AtomicU64::new(0),
        })
    }

    fn register(&self, call: PendingDelegateCall) -> DelegateId {
        let id = DelegateId(self.last.fetch_add(1, Ordering::SeqCst) + 1);
        lock(&self.pending).insert(id, call);
        id
    }

    fn forget(&self, id: DelegateId) {
        lock(&self.pending).remove(&id);
    }

    /// Hands the host's reply to the waiting call. A reply to a call never sent, or of the
    /// wrong kind, is a protocol violation (`Err`); a reply to a call cancelled meanwhile is
    /// dropped.
    pub(crate) fn complete(&self, id: DelegateId, reply: DelegateReply) -> Result<(), String> {
        if id.0 > self.last.load(Ordering::SeqCst) {
            return Err(format!("a reply to {id}, never sent"));
        }
        let pending = lock(&self.pending).remove(&id);
        match pending {
            Some(pending) => pending.complete(reply),
            None => Ok(()),
        }
    }

    /// Drops every waiting call: they fail with "connection closed" as their senders go.
    pub(crate) fn clear(&self) {
        lock(&self.pending).clear();
    }
}

/// A delegate call waiting for the host's reply, with the reply kind it expects.
enum PendingDelegateCall {
    Tool(oneshot::Sender<Result<JsonText, ToolError>>),
    Notify(oneshot::Sender<()>),
}

impl PendingDelegateCall {
    /// Hands the host's reply to the waiting call; a reply of the wrong kind is a protocol
    /// violation.
    fn complete(self, reply: DelegateReply) -> Result<(), String> {
        match (self, reply) {
            (PendingDelegateCall::Tool(sender), DelegateReply::ToolResult(result)) => {
                let _ = sender.send(tool_result(result));
                Ok(())
            }
            (PendingDelegateCall::Notify(sender), DelegateReply::Notified) => {
                let _ = sender.send(());
                Ok(())
            }
            // The acknowledgement of a cancellation: the waiting call only needs to wake.
            (pending, DelegateReply::Cancelled) => {
                drop(pending);
                Ok(())
            }
            (PendingDelegateCall::Tool(_), DelegateReply::Notified) => {
                Err("a notification reply to a tool call".to_owned())
            }
            (PendingDelegateCall::Notify(_), DelegateReply::ToolResult(_)) => {
                Err("a tool result in reply to a notification".to_owned())
            }
        }
    }
}

/// Forgets a delegate call when its waiter goes away (answered, cancelled or abandoned).
struct ForgetOnDrop {
    calls: Weak<DelegateCalls>,
    id: DelegateId,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if let Some(calls) = self.calls.upgrade() {
            calls.forget(self.id);
        }
    }
}

pub(crate) struct RemoteDelegate {
    calls: Weak<DelegateCalls>,
    session: SessionId,
    /// Told when a cell closes: the drain waits for running cells.
    drain: Drain,
}

impl RemoteDelegate {
    pub(crate) fn new(calls: Weak<DelegateCalls>, session: SessionId, drain: Drain) -> Self {
        Self {
            calls,
            session,
            drain,
        }
    }

    /// Sends a delegate call and waits for its reply or its cancellation (which is
    /// forwarded to the host).
    async fn call<T>(
        &self,
        call: DelegateCall,
        pending: impl FnOnce(oneshot::Sender<T>) -> PendingDelegateCall,
        cancel: CancellationToken,
    ) -> Result<T, String> {
        let calls = self.calls.upgrade().ok_or(texts::HOST_CONNECTION_CLOSED)?;
        let (sender, reply) = oneshot::channel();
        let id = calls.register(pending(sender));
        let message = ServerMessage::Delegate {
            id,
            session: self.session,
            call,
        };
        code_mode_internal::hop!("runtime sends the tool call");
        if let Err(error) = calls.outbox.send(&message) {
            calls.forget(id);
            return Err(texts::call_not_sent(&error));
        }
        drop(calls);
        let _forget = ForgetOnDrop {
            calls: self.calls.clone(),
            id,
        };
        tokio::pin!(reply);
        tokio::select! {
            reply = &mut reply => reply.map_err(|_| texts::HOST_CONNECTION_CLOSED.to_owned()),
            () = cancel.cancelled() => {
                if let Some(calls) = self.calls.upgrade() {
                    let _ = calls.outbox.send(&ServerMessage::CancelDelegate { id });
                }
                // The call counts as cancelled once the host confirms its delegate stopped;
                // the session bounds this wait with its grace period.
                let _ = reply.await;
                Err("cancelled".to_owned())
            }
        }
    }
}

impl CodeModeSessionDelegate for RemoteDelegate {
    /// The payloads cross as the text they are, both ways: the runtime process never
    /// parses them (the cell's `JSON.parse` checks the result).
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
        Box::pin(async move {
            METRICS.nested_call();
            let wire_call = DelegateCall::InvokeTool {
                cell_id: call.cell_id.into(),
                call_id: call.call_id.into(),
                tool_name: call.tool_name,
                kind: call.kind.into(),
                input: call.input.map(Into::into),
                exec_call_id: call.exec_call_id,
            };
            self.call(wire_call, PendingDelegateCall::Tool, cancel)
                .await
                .map_err(ToolError::new)?
        })
    }

    fn notify(
        &self,
        cell_id: CellId,
        text: String,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let call = DelegateCall::Notify {
                cell_id: cell_id.into(),
                text,
            };
            if let Err(error) = self.call(call, PendingDelegateCall::Notify, cancel).await {
                tracing::debug!("notification not delivered: {error}");
            }
        })
    }

    fn cell_closed(&self, cell_id: &CellId) {
        self.drain.cell_closed();
        let Some(calls) = self.calls.upgrade() else {
            return;
        };
        let message = ServerMessage::CellClosed {
            session: self.session,
            cell_id: cell_id.into(),
        };
        if let Err(error) = calls.outbox.send(&message) {
            tracing::error!(cell = %cell_id, "cell-closed event not sent: {error}");
        }
    }

    /// Sent at once, in the step that merged the writes: the frame is queued before the
    /// cell's final response, so the host has the values before it hands out the result.
    fn committed(&self, cell_id: &CellId, writes: &StoredValues) {
        let Some(calls) = self.calls.upgrade() else {
            return;
        };
        let message = ServerMessage::Committed {
            session: self.session,
            cell_id: cell_id.into(),
            writes: writes.clone(),
        };
        if let Err(error) = calls.outbox.send(&message) {
            tracing::error!(cell = %cell_id, "committed stored values not sent: {error}");
        }
    }

    /// The host keeps every running cell's journal, to rebuild the cell on a fresh
    /// runtime if this one is lost.
    fn keeps_journals(&self) -> bool {
        true
    }

    /// In order with the cell's calls, commits and responses. A cell's first entry
    /// (`Started`, made while its session admits it) rides ahead of the admission that
    /// follows it ([`Outbox::send_riding`]), in the same write: the host reads both at once,
    /// and the cell goes to its thread without waiting for a write of its own. Every other
    /// entry is sent at once.
    fn journal(&self, cell_id: &CellId, entry: code_mode_protocol::journal::JournalEntry) {
        let Some(calls) = self.calls.upgrade() else {
            return;
        };
        let rides = matches!(
            entry,
            code_mode_protocol::journal::JournalEntry::Started { .. }
        );
        let message = ServerMessage::Journal {
            session: self.session,
            cell_id: cell_id.into(),
            entry: entry.into(),
        };
        let sent = if rides {
            calls.outbox.send_riding(&message)
        } else {
            calls.outbox.send(&message)
        };
        if let Err(error) = sent {
            tracing::error!(cell = %cell_id, "journal entry not sent: {error}");
        }
    }
}
