//! The sessions of `code-mode mcp --http`: rmcp's local session manager, with a cap on how
//! many are open at once and an idle timeout after which a session is shut down.
//!
//! rmcp's own keep-alive is off: it counts only messages, so it would end a session in the
//! middle of a long `exec` that sends nothing, and leave an abandoned one for minutes. Here a
//! session is idle when none of its HTTP requests is in flight (the HTTP front calls
//! [`ExpiringSessions::begin`] for each and holds the guard until the response body ends)
//! and the last one ended longer ago than the timeout; an open `GET` stream alone does not
//! keep a session (a client that crashed may leave one open). The reaper closes such a
//! session as a `DELETE` would: its MCP handler is dropped, which shuts down its code-mode
//! session (cells stopped, stored values gone), and a later request naming its id gets
//! rmcp's `404 Session not found`.
//!
//! Each session is tracked with the principal that opened (or took back) it: rmcp creates
//! and restores a session inline in that request, whose principal is
//! [`super::principal::REQUESTER`]. The HTTP front asks [`ExpiringSessions::owner`] before
//! a request reaches the session.

use futures_util::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::WorkerTransport;
use rmcp::transport::streamable_http_server::session::RestoreOutcome;
use rmcp::transport::streamable_http_server::session::ServerSseMessage;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError, LocalSessionWorker, create_local_session,
};
use rmcp::transport::streamable_http_server::{SessionId, SessionManager};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::principal::{Principal, requester};
use code_mode_internal::sync::lock;

/// Why a session could not be created or reached.
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    #[error("too many MCP sessions: {max} are open (--max-sessions)")]
    Full { max: usize },
    #[error(transparent)]
    Local(#[from] LocalSessionManagerError),
}

/// When a session was last busy, and whose it is.
struct Activity {
    in_flight: usize,
    last: Instant,
    /// The principal of the request that opened or took it back (`None` only if that was
    /// outside of a request: nobody may use it then).
    owner: Option<Principal>,
}

/// Whose an open session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// No session of that id is open here.
    NotOpen,
    /// Open, and this principal's (`None`: nobody's).
    Of(Option<Principal>),
}

/// The session manager of `code-mode mcp --http` (see the module docs).
pub struct ExpiringSessions {
    local: LocalSessionManager,
    max_sessions: usize,
    idle_timeout: Duration,
    activity: Mutex<HashMap<SessionId, Activity>>,
    /// Held while a session is created, so that two `initialize` requests at once cannot
    /// both take the last place.
    creating: tokio::sync::Mutex<()>,
}

/// How long the SDKs wait before they resume a broken event stream (the `retry` of each
/// stream's first event; rmcp's default is 3 s): a request whose replica died fails after
/// two tries, 2 s rather than 6 s, and one kept by [`super::replay`] resumes sooner.
pub(super) const SSE_RETRY: Duration = Duration::from_secs(1);

impl ExpiringSessions {
    pub fn new(max_sessions: usize, idle_timeout: Duration) -> Self {
        let mut local = LocalSessionManager::default();
        local.session_config.keep_alive = None;
        local.session_config.sse_retry = Some(SSE_RETRY);
        Self {
            local,
            max_sessions,
            idle_timeout,
            activity: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
        }
    }

    /// How many sessions are open.
    pub fn open(&self) -> usize {
        lock(&self.activity).len()
    }

    /// Starts tracking the activity of session `id` (new or restored); the sessions open
    /// now.
    fn track(&self, id: &SessionId) -> usize {
        let mut activity = lock(&self.activity);
        activity.insert(
            id.clone(),
            Activity {
                in_flight: 0,
                last: Instant::now(),
                owner: requester(),
            },
        );
        activity.len()
    }

    /// Whose session `id` is, if it is open.
    pub fn owner(&self, id: &str) -> Owner {
        match lock(&self.activity).get(id) {
            None => Owner::NotOpen,
            Some(entry) => Owner::Of(entry.owner.clone()),
        }
    }

    /// Whether another session would be refused.
    pub fn full(&self) -> bool {
        self.open() >= self.max_sessions
    }

    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// Marks a request of session `id` in flight until the guard drops; `None` for an id
    /// that is not open (rmcp answers that request with 404).
    pub fn begin(self: &Arc<Self>, id: &str) -> Option<InFlight> {
        let mut activity = lock(&self.activity);
        let id = activity.get_key_value(id)?.0.clone();
        let entry = activity.get_mut(&id)?;
        entry.in_flight += 1;
        entry.last = Instant::now();
        Some(InFlight {
            sessions: Arc::clone(self),
            id,
        })
    }

    /// Notes a request of session `id` that stays open as a stream (the `GET` stream):
    /// activity now, nothing in flight.
    pub fn touch(&self, id: &str) {
        if let Some(entry) = lock(&self.activity).get_mut(id) {
            entry.last = Instant::now();
        }
    }

    /// The sessions idle for longer than the timeout.
    fn expired(&self) -> Vec<SessionId> {
        let now = Instant::now();
        lock(&self.activity)
            .iter()
            .filter(|(_, entry)| {
                entry.in_flight == 0 && now.duration_since(entry.last) > self.idle_timeout
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Closes idle sessions until `stop` fires; checks four times per timeout (at most
    /// every 30 s, at least every 50 ms).
    pub async fn reap(self: Arc<Self>, stop: CancellationToken) {
        let period =
            (self.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            for id in self.expired() {
                tracing::info!(
                    idle_secs = self.idle_timeout.as_secs_f64(),
                    "MCP session idle past its timeout: shutting it down"
                );
                tracing::debug!(session = %id, "the idle MCP session");
                if let Err(error) = self.close_session(&id).await {
                    tracing::warn!(%error, "closing an idle MCP session failed");
                }
            }
        }
    }
}

/// A request of a session in flight (see [`ExpiringSessions::begin`]).
pub struct InFlight {
    sessions: Arc<ExpiringSessions>,
    id: SessionId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(entry) = lock(&self.sessions.activity).get_mut(&self.id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.last = Instant::now();
        }
    }
}

impl SessionManager for ExpiringSessions {
    type Error = ExpiryError;
    type Transport = WorkerTransport<LocalSessionWorker>;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let _creating = self.creating.lock().await;
        if self.full() {
            return Err(ExpiryError::Full {
                max: self.max_sessions,
            });
        }
        // rmcp's own ids are UUIDs (122 random bits); ours have 128, as every front's.
        let id: SessionId = crate::serve::fresh_id('m').into();
        let (handle, worker) = create_local_session(id.clone(), self.local.session_config.clone());
        self.local.sessions.write().await.insert(id.clone(), handle);
        let transport = WorkerTransport::spawn(worker);
        let open = self.track(&id);
        tracing::info!(open, max = self.max_sessions, "MCP session opened");
        tracing::debug!(session = %id, "the MCP session opened");
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.local.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        Ok(self.local.has_session(id).await?)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        let removed = lock(&self.activity).remove(id).is_some();
        if removed {
            tracing::info!(open = self.open(), "MCP session closed");
            tracing::debug!(session = %id, "the MCP session closed");
        }
        Ok(self.local.close_session(id).await?)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.local.create_stream(id, message).await?)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        Ok(self.local.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.local.create_standalone_stream(id).await?)
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        let _creating = self.creating.lock().await;
        if self.full() {
            return Err(ExpiryError::Full {
                max: self.max_sessions,
            });
        }
        let outcome = self.local.restore_session(id.clone()).await?;
        if matches!(outcome, RestoreOutcome::Restored(_)) {
            let open = self.track(&id);
            tracing::info!(open, max = self.max_sessions, "MCP session restored");
            tracing::debug!(session = %id, "the MCP session restored");
        }
        Ok(outcome)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.local.resume(id, last_event_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session as the reaper sees it, without a worker behind it.
    fn insert(sessions: &ExpiringSessions, id: &str, last: Instant) {
        lock(&sessions.activity).insert(
            id.into(),
            Activity {
                in_flight: 0,
                last,
                owner: None,
            },
        );
    }

    #[test]
    fn a_session_with_a_request_in_flight_never_expires() {
        let sessions = Arc::new(ExpiringSessions::new(4, Duration::from_secs(30)));
        let long_ago = Instant::now() - Duration::from_secs(60);
        insert(&sessions, "busy", long_ago);
        insert(&sessions, "idle", long_ago);
        let guard = sessions.begin("busy").expect("open");
        lock(&sessions.activity).get_mut("busy").unwrap().last = long_ago;
        assert_eq!(sessions.expired(), vec![SessionId::from("idle")]);
        drop(guard);
        // Its request just ended: activity now, so not yet idle.
        assert_eq!(sessions.expired(), vec![SessionId::from("idle")]);
        // Once its last activity is longer ago than the idle timeout, it expires too.
        lock(&sessions.activity).get_mut("busy").unwrap().last = long_ago;
        let mut expired = sessions.expired();
        expired.sort();
        assert_eq!(
            expired,
            vec![SessionId::from("busy"), SessionId::from("idle")]
        );
    }

    #[test]
    fn unknown_sessions_are_not_tracked_and_the_cap_counts_open_ones() {
        let sessions = Arc::new(ExpiringSessions::new(2, Duration::from_secs(1)));
        assert!(sessions.begin("nobody").is_none());
        insert(&sessions, "a", Instant::now());
        assert!(!sessions.full());
        insert(&sessions, "b", Instant::now());
        assert!(sessions.full());
        assert_eq!(sessions.open(), 2);
    }
}
