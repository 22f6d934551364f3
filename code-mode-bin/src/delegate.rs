//! The delegate of a served session: forwards nested tool calls, notifications and
//! cell-closed events to the host over the connection, and waits (cancellably) for the
//! host's answers.

use crate::connection::Connection;
use code_mode_protocol::model::parse_json;
use code_mode_protocol::wire::{DelegateCall, DelegateReply, ServerMessage, SessionId};
use code_mode_protocol::{BoxFuture, CodeModeSessionDelegate, NestedToolCall};
use std::sync::Weak;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A delegate call waiting for the host's reply, with the reply kind it expects.
pub(crate) enum PendingDelegateCall {
    Tool(oneshot::Sender<Result<String, String>>),
    Notify(oneshot::Sender<()>),
}

impl PendingDelegateCall {
    /// Hands the host's reply to the waiting call; a reply of the wrong kind is a protocol
    /// violation.
    pub(crate) fn complete(self, reply: DelegateReply) -> Result<(), String> {
        match (self, reply) {
            (PendingDelegateCall::Tool(sender), DelegateReply::ToolResult(result)) => {
                let _ = sender.send(result);
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

const CONNECTION_CLOSED: &str = "the host connection closed";

/// Forgets a delegate call when its waiter goes away (answered, cancelled or abandoned).
struct ForgetOnDrop {
    connection: Weak<Connection>,
    id: code_mode_protocol::wire::DelegateId,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.upgrade() {
            connection.forget_delegate_call(self.id);
        }
    }
}

pub(crate) struct RemoteDelegate {
    connection: Weak<Connection>,
    session: SessionId,
}

impl RemoteDelegate {
    pub(crate) fn new(connection: Weak<Connection>, session: SessionId) -> Self {
        Self {
            connection,
            session,
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
        let connection = self.connection.upgrade().ok_or(CONNECTION_CLOSED)?;
        let (sender, reply) = oneshot::channel();
        let id = connection.register_delegate_call(pending(sender));
        let message = ServerMessage::Delegate {
            id,
            session: self.session,
            call,
        };
        if let Err(error) = connection.outbox.send(&message) {
            connection.forget_delegate_call(id);
            return Err(format!("the call could not be sent to the host: {error}"));
        }
        drop(connection);
        let _forget = ForgetOnDrop {
            connection: self.connection.clone(),
            id,
        };
        tokio::pin!(reply);
        tokio::select! {
            reply = &mut reply => reply.map_err(|_| CONNECTION_CLOSED.to_owned()),
            () = cancel.cancelled() => {
                if let Some(connection) = self.connection.upgrade() {
                    let _ = connection.outbox.send(&ServerMessage::CancelDelegate { id });
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
    fn invoke_tool(
        &self,
        call: NestedToolCall,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let wire_call = DelegateCall::InvokeTool {
                cell_id: call.cell_id,
                call_id: call.call_id,
                tool_name: call.tool_name,
                kind: call.kind,
                input: call.input.map(|input| input.to_string()),
            };
            let json = self
                .call(wire_call, PendingDelegateCall::Tool, cancel)
                .await??;
            parse_json(&json).map_err(|error| format!("tool result rejected: {error}"))
        })
    }

    fn notify(
        &self,
        cell_id: String,
        text: String,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let call = DelegateCall::Notify { cell_id, text };
            if let Err(error) = self.call(call, PendingDelegateCall::Notify, cancel).await {
                tracing::debug!("notification not delivered: {error}");
            }
        })
    }

    fn cell_closed(&self, cell_id: &str) {
        let Some(connection) = self.connection.upgrade() else {
            return;
        };
        let message = ServerMessage::CellClosed {
            session: self.session,
            cell_id: cell_id.to_owned(),
        };
        if let Err(error) = connection.outbox.send(&message) {
            tracing::error!(cell = cell_id, "cell-closed event not sent: {error}");
        }
    }
}
