//! `code-mode mcp --http --state-dir`: MCP sessions that outlive the server (docs/MCP.md,
//! "Restarts"). Each MCP session's `initialize` parameters, its code-mode session's stored
//! values and running cells go to `code-mode-state`'s database (`mcp.sqlite3`); a
//! checkpoint is written before each `tools/call` answer goes out. A client that comes
//! back to a restarted server with its `Mcp-Session-Id` finds the session again: rmcp
//! replays its `initialize` from what is kept here ([`SessionStore`]), and the session's
//! first call takes its code-mode session back, running cells rebuilt at their next
//! `wait`.

use code_mode_host::DurableSession;
use code_mode_protocol::sync::lock;
use code_mode_protocol::{CodeModeSession, CodeModeSessionDelegate, SessionOptions, ToolError};
use code_mode_state::{Checkpoint, SessionRecord, StateError, StateStore};
use rmcp::model::InitializeRequestParams;
use rmcp::transport::streamable_http_server::session::{SessionState, SessionStore};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The database's name in the state directory (`mcp.sqlite3`).
const FRONT: &str = "mcp";

/// The counter of runtime generations in the database.
const GENERATIONS: &str = "generations";

/// An MCP session of this process.
struct Live {
    /// Its `initialize` parameters, as JSON.
    init: String,
    /// Its code-mode session, once its first call opened it.
    session: Option<Arc<dyn DurableSession>>,
}

/// What the state directory keeps of the server's MCP sessions.
pub(crate) struct McpState {
    store: Arc<StateStore>,
    /// Sessions an earlier process kept that no client took back yet, by MCP session id.
    saved: Mutex<HashMap<String, SessionRecord>>,
    live: Mutex<HashMap<String, Live>>,
    /// The runtime generation the earlier process reached, then this one's.
    generations: AtomicU64,
    /// Set when the server stops: what the stop does to the sessions is not kept.
    closed: AtomicBool,
    /// One checkpoint at a time.
    writing: tokio::sync::Mutex<()>,
}

impl McpState {
    /// Opens the state directory and reads what it keeps.
    pub(crate) fn open(dir: &Path) -> Result<Self, StateError> {
        let store = StateStore::open(dir, FRONT)?;
        let saved = store.load()?;
        tracing::info!(path = %store.path().display(), sessions = saved.sessions.len(), "state directory opened");
        Ok(Self {
            store: Arc::new(store),
            generations: AtomicU64::new(saved.counter(GENERATIONS)),
            saved: Mutex::new(
                saved
                    .sessions
                    .into_iter()
                    .map(|record| (record.id.clone(), record))
                    .collect(),
            ),
            live: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// The runtime generation the earlier process reached.
    pub(crate) fn generations_before(&self) -> u64 {
        self.generations.load(Ordering::SeqCst)
    }

    /// The code-mode session of MCP session `id`: the one an earlier process kept (its
    /// running cells rebuilt at their next call; a call of the server's tools they were
    /// waiting on fails, since it died with that process), else a new one. `None` when
    /// the provider keeps no durable sessions (in process).
    pub(crate) fn open_session(
        &self,
        id: &str,
        open: impl FnOnce(
            Arc<dyn CodeModeSessionDelegate>,
            SessionOptions,
            code_mode_protocol::StoredValues,
        ) -> Option<Arc<dyn DurableSession>>,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> Option<Arc<dyn CodeModeSession>> {
        let record = lock(&self.saved).remove(id);
        let stored = record
            .as_ref()
            .map(|record| record.state.stored.clone())
            .unwrap_or_default();
        let session = open(delegate, options, stored)?;
        if let Some(record) = &record {
            let calls = session.restore(record.state.cells.clone());
            tracing::info!(session = %id, cells = record.state.cells.len(), "MCP session taken back from the state directory");
            for call in calls {
                call.answer(Err(ToolError::new(
                    code_mode_protocol::texts::TOOL_LOST_IN_RESTART,
                )));
            }
        }
        let init = record.map(|record| record.options).unwrap_or_default();
        let mut live = lock(&self.live);
        let entry = live.entry(id.to_owned()).or_insert(Live {
            init,
            session: None,
        });
        entry.session = Some(Arc::clone(&session));
        Some(session)
    }

    /// MCP session `id` ended (closed by its client, or idle past its timeout).
    pub(crate) fn forget(&self, id: &str) {
        if !self.closed.load(Ordering::SeqCst) {
            lock(&self.live).remove(id);
        }
    }

    /// No checkpoint after this one.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Writes the checkpoint of every MCP session as it is now; `generations` is the
    /// runtime generation the provider reached. A failure is returned (and logged), and
    /// the database keeps the state before it: what depends on the write must not go out.
    pub(crate) async fn persist(&self, generations: u64) -> Result<(), String> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _writing = self.writing.lock().await;
        self.generations.fetch_max(generations, Ordering::SeqCst);
        let mut sessions: Vec<SessionRecord> = lock(&self.saved).values().cloned().collect();
        sessions.extend(lock(&self.live).iter().map(|(id, live)| {
            SessionRecord {
                id: id.clone(),
                options: live.init.clone(),
                state: live
                    .session
                    .as_ref()
                    .map(|session| session.durable_state())
                    .unwrap_or_default(),
            }
        }));
        let checkpoint = Checkpoint {
            counters: vec![(
                GENERATIONS.to_owned(),
                self.generations.load(Ordering::SeqCst),
            )],
            sessions,
            calls: Vec::new(),
        };
        let store = Arc::clone(&self.store);
        let error = match tokio::task::spawn_blocking(move || store.checkpoint(&checkpoint)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error.to_string(),
            Err(error) => format!("the state writer failed: {error}"),
        };
        tracing::error!("{error}");
        Err(error)
    }
}

/// rmcp's store of MCP sessions: it keeps each session's `initialize` parameters here
/// after the handshake, and asks for them when a request names a session this process
/// does not know.
#[async_trait::async_trait]
impl SessionStore for McpState {
    async fn load(
        &self,
        session_id: &str,
    ) -> Result<Option<SessionState>, Box<dyn std::error::Error + Send + Sync>> {
        let init = lock(&self.saved)
            .get(session_id)
            .map(|record| record.options.clone());
        let Some(init) = init else {
            return Ok(None);
        };
        let params: InitializeRequestParams = serde_json::from_str(&init)?;
        Ok(Some(SessionState::new(params)))
    }

    async fn store(
        &self,
        session_id: &str,
        state: &SessionState,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let init = serde_json::to_string(&state.initialize_params)?;
        lock(&self.live)
            .entry(session_id.to_owned())
            .or_insert(Live {
                init: String::new(),
                session: None,
            })
            .init = init;
        self.persist(0).await?;
        Ok(())
    }

    async fn delete(
        &self,
        session_id: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.forget(session_id);
        lock(&self.saved).remove(session_id);
        self.persist(0).await?;
        Ok(())
    }
}
