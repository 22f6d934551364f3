//! `serve --jsonl --state-dir`: what the driver keeps of its sessions so that they outlive
//! it (docs/jsonl.md, "Restarts"). The sessions served, their stored values and running
//! cells (through [`DurableSession`]), the tool calls the client was told about and the
//! answers it gave go to the store through [`KeptSessions`], the host crate's one owner of
//! kept sessions: what changed before each batch of lines goes out, an answer before its
//! cell gets it. The store does not try a failed write again: the driver holds the lines
//! back and says why (`state_error`) instead. This module keeps only the front's own:
//! each session's `open_session` parameters with its resume token's digest, and the
//! restored calls that wait for the client.

use super::{Out, answer_text};
use code_mode_host::{DurableSession, HeldSession, KeptSessions, RestoredCall};
use code_mode_internal::sync::lock;
use code_mode_protocol::ApprovalNeed;
use code_mode_state::{
    AnswerRecord, CallRecord, SessionRecord, StateError, StoreLocation, StoreOptions,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The database's name in the state directory (`jsonl.sqlite3`).
const FRONT: &str = "jsonl";

/// A session kept in the state directory.
struct Kept {
    session: Arc<dyn DurableSession>,
    /// Its `open_session` parameters, stored values aside.
    options: String,
}

/// A call of a restored cell that waits for the client's answer.
struct Restored {
    session: String,
    call: RestoredCall,
}

/// What the driver keeps of its sessions. The sessions an earlier process kept wait, held
/// in [`KeptSessions`], for the client that holds the resume token (`resume_session`),
/// nothing of them announced.
pub(super) struct Durability {
    kept: Arc<KeptSessions>,
    sessions: Mutex<HashMap<String, Kept>>,
    /// Restored calls waiting for the client's answer, by the id the client knows.
    restored: Mutex<HashMap<String, Restored>>,
    /// Set once the driver stops: the last checkpoint was written, and what the shutdown
    /// does to the sessions is not.
    closed: AtomicBool,
    /// Why the last checkpoint could not be written, if it could not.
    unwritten: Mutex<Option<String>>,
}

/// The name of the resume token's digest in a kept session's options.
const TOKEN_DIGEST: &str = "resume_token_sha256";

/// What `open_session` gives a client to take its session back after a restart: 256
/// random bits. Only its SHA-256 digest is kept, with the session.
pub(super) struct ResumeToken(String);

impl ResumeToken {
    pub(super) fn fresh() -> Self {
        let mut bytes = [0_u8; 32];
        random(&mut bytes);
        Self(hex(&bytes))
    }

    pub(super) fn text(&self) -> &str {
        &self.0
    }
}

/// Fills `bytes` from the system's secure random generator (ring's, through rustls, the
/// process's one crypto library).
pub(super) fn random(bytes: &mut [u8]) {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(bytes)
        .expect("the system's secure random generator works");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// `open_session`'s parameters as kept: with the digest of the session's resume token.
pub(super) fn kept_options(options: &Value, token: &ResumeToken) -> String {
    let mut options = options.clone();
    if let Some(map) = options.as_object_mut() {
        map.insert(
            TOKEN_DIGEST.to_owned(),
            Value::String(hex(&digest(token.text()))),
        );
    }
    options.to_string()
}

/// Kept options back to `open_session`'s parameters.
pub(super) fn strip_token(options: &mut Value) {
    if let Some(map) = options.as_object_mut() {
        map.remove(TOKEN_DIGEST);
        map.remove(APPROVAL_TOOLS);
    }
}

/// The name, in a kept session's options, of the client's tools whose calls wait on a
/// person (tool → reason), as its `exec`s gave them: a restarted driver knows them before
/// the client's next `exec`.
const APPROVAL_TOOLS: &str = "approval_tools";

/// The client's tools that need an approval, as a session was kept with them.
pub(super) fn kept_needs(options: &str) -> Vec<(String, Option<ApprovalNeed>)> {
    let kept = serde_json::from_str::<Value>(options).unwrap_or_default();
    let Some(tools) = kept.get(APPROVAL_TOOLS).and_then(Value::as_object) else {
        return Vec::new();
    };
    tools
        .iter()
        .map(|(name, reason)| {
            let need = ApprovalNeed {
                reason: reason.as_str().map(str::to_owned),
            };
            (name.clone(), Some(need))
        })
        .collect()
}

/// Whether `token` is the resume token of the session kept with `options`, compared in
/// constant time by digest. A session kept without one (by a version before resume
/// tokens) matches none: it cannot be taken back, and expires.
pub(super) fn token_matches(options: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let kept = serde_json::from_str::<Value>(options)
        .ok()
        .and_then(|options| options.get(TOKEN_DIGEST)?.as_str().map(str::to_owned));
    let Some(kept) = kept else {
        return false;
    };
    kept.as_bytes().ct_eq(hex(&digest(token)).as_bytes()).into()
}

impl Durability {
    /// Opens the state directory and reads what it keeps, bounded by `options` (its size
    /// cap: new sessions are refused near it and a write past it fails as on a full disk;
    /// its time to live).
    pub(super) fn open(
        location: &StoreLocation,
        options: StoreOptions,
    ) -> Result<Self, StateError> {
        let kept = KeptSessions::open(
            location,
            FRONT,
            StoreOptions {
                patience: std::time::Duration::ZERO,
                ..options
            },
        )?;
        Ok(Self {
            kept: Arc::new(kept),
            sessions: Mutex::new(HashMap::new()),
            restored: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            unwritten: Mutex::new(None),
        })
    }

    /// The runtime generation the earlier process reached.
    pub(super) fn generations_before(&self) -> u64 {
        self.kept.generations_before()
    }

    /// Keeps session `id` from now on.
    pub(super) fn keep(&self, id: &str, session: Arc<dyn DurableSession>, options: String) {
        lock(&self.sessions).insert(id.to_owned(), Kept { session, options });
    }

    /// Session `id`'s client tools that need an approval are now `needs`: kept with it
    /// from its next write.
    pub(super) fn keep_needs(&self, id: &str, needs: &HashMap<String, ApprovalNeed>) {
        let mut sessions = lock(&self.sessions);
        let Some(kept) = sessions.get_mut(id) else {
            return;
        };
        let mut options = serde_json::from_str::<Value>(&kept.options).unwrap_or_default();
        if let Some(map) = options.as_object_mut() {
            let tools: serde_json::Map<String, Value> = needs
                .iter()
                .map(|(name, need)| (name.clone(), json!(need.reason)))
                .collect();
            map.insert(APPROVAL_TOOLS.to_owned(), Value::Object(tools));
            kept.options = options.to_string();
        }
    }

    /// Session `id` was shut down: it is deleted from the store (unless the driver is
    /// stopping: then it is kept for the next process).
    pub(super) fn forget(&self, id: &str) {
        lock(&self.sessions).remove(id);
        lock(&self.restored).retain(|_, restored| restored.session != id);
        if !self.is_closed() {
            self.kept.remove(id);
        }
    }

    /// What this process holds of kept session `id`, taken out to resume it (`None`: not
    /// held here, or expired meanwhile).
    pub(super) fn take(&self, id: &str) -> Option<HeldSession> {
        self.kept.take(id)
    }

    /// A held session whose resume was refused goes back to wait for its client.
    pub(super) fn put_back(&self, held: HeldSession) {
        self.kept.put_back(held);
    }

    /// A session taken over for a client that did not own it is let go at once.
    pub(super) async fn release(&self, id: &str) {
        self.kept.release(id).await;
    }

    /// Whether `token` is the resume token of open session `id`.
    pub(super) fn owns(&self, id: &str, token: &str) -> bool {
        lock(&self.sessions)
            .get(id)
            .is_some_and(|kept| token_matches(&kept.options, token))
    }

    /// Takes session `id` over from the server that kept it, once that one's lease ran out
    /// (a shared store); what it kept of it, or `None`.
    pub(super) async fn take_over(&self, id: &str) -> Result<Option<HeldSession>, String> {
        let held = self
            .kept
            .take_over(id)
            .await
            .map_err(|error| error.to_string())?;
        Ok(if held { self.kept.take(id) } else { None })
    }

    /// Whether a new session may be kept (refused near the store's size cap).
    pub(super) fn admit(&self) -> Result<(), String> {
        self.kept.admit().map_err(|error| error.to_string())
    }

    /// A restored call of session `session` waits for the client's answer to `id`.
    pub(super) fn await_client(&self, id: String, session: String, call: RestoredCall) {
        lock(&self.restored).insert(id, Restored { session, call });
    }

    /// Writes the kept sessions `named` accepts as they are now, with their calls waiting
    /// for the client (`calls`, and the restored ones) and the runtime generation the
    /// provider reached: the store writes what changed. The error as the client reads it.
    pub(super) async fn write(
        &self,
        generations: u64,
        mut calls: Vec<CallRecord>,
        named: &(dyn Fn(&String) -> bool + Sync),
    ) -> Result<(), String> {
        let sessions = lock(&self.sessions)
            .iter()
            .filter(|(id, _)| named(id))
            .map(|(id, kept)| SessionRecord {
                id: id.clone(),
                options: kept.options.clone(),
                state: kept.session.durable_state(),
            })
            .collect();
        calls.extend(
            lock(&self.restored)
                .iter()
                .filter(|(_, restored)| named(&restored.session))
                .map(|(id, restored)| CallRecord {
                    session: restored.session.clone(),
                    cell_id: restored.call.call.cell_id.clone(),
                    call: restored.call.call.call_id,
                    front_id: id.clone(),
                }),
        );
        self.kept
            .write(sessions, calls, generations)
            .await
            .map_err(|error| error.to_string())
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// No checkpoint after this one; `unwritten`, why it failed, if it did. The sessions
    /// it kept are let go (each holds the way to the client's lines, which the line
    /// writer, holding this, waits to see closed).
    pub(super) fn close(&self, unwritten: Option<String>) {
        *lock(&self.unwritten) = unwritten;
        self.closed.store(true, Ordering::SeqCst);
        lock(&self.sessions).clear();
    }

    /// After the last checkpoint: every session this server holds is let go (on a shared
    /// store the next server its client resumes it on takes it at once).
    pub(super) async fn let_go(&self) {
        self.kept.let_go_all().await;
    }

    /// Once closed: why the last checkpoint was not written, if it was not.
    pub(super) fn unwritten_at_close(&self) -> Option<String> {
        lock(&self.unwritten).clone()
    }

    /// Records the answer to call `call` (the client's id of it), then runs `then` with
    /// whether it is on disk: only a recorded answer may reach its cell. A failed write is
    /// told to the client (`state_error` naming the call); `then` puts the call back to
    /// wait for an answer, which the client may give again.
    pub(super) fn record_then(
        &self,
        out: &Out,
        call: &str,
        answer: AnswerRecord,
        then: impl FnOnce(bool) + Send + 'static,
    ) {
        let kept = Arc::clone(&self.kept);
        let out = out.clone();
        let call = call.to_owned();
        tokio::spawn(async move {
            let error = kept
                .record_answer(answer)
                .await
                .err()
                .map(|error| error.to_string());
            if let Some(message) = &error {
                tracing::error!(call, "{message}");
            }
            then(error.is_none());
            if let Some(message) = error {
                out.send(unrecorded_answer(&call, &message));
            }
        });
    }

    /// Records the answer to call `call` (the client's id of it), which its cell gets at
    /// once: the record joins the next write, and whatever the cell does with the answer
    /// goes out after a write (the answer is in its journal by then). A record that fails
    /// is told to the client (`state_error` naming the call); the lines behind it wait for
    /// a write that succeeds, as always.
    pub(super) fn record_soon(&self, out: &Out, call: &str, answer: AnswerRecord) {
        let out = out.clone();
        let call = call.to_owned();
        self.kept.record_answer_soon(answer, move |error| {
            let message = error.to_string();
            tracing::error!(call, "{message}");
            out.send(unrecorded_answer(&call, &message));
        });
    }

    /// The client answered `id`, a call of a restored cell (if it is one).
    pub(super) fn answer_restored(
        self: &Arc<Self>,
        out: &Out,
        id: &str,
        result: &Result<Value, String>,
    ) {
        let Some(restored) = lock(&self.restored).remove(id) else {
            return;
        };
        let answer = answer_text(result);
        let record = AnswerRecord {
            session: restored.session.clone(),
            cell_id: restored.call.call.cell_id.clone(),
            call: restored.call.call.call_id,
            result: answer.clone(),
        };
        let (state, key) = (Arc::clone(self), id.to_owned());
        self.record_then(out, id, record, move |recorded| {
            if recorded {
                restored.call.answer(answer);
            } else {
                lock(&state.restored).insert(key, restored);
            }
        });
    }
}

/// The event that tells the client the state directory could not be written.
pub(super) fn state_error(message: &str) -> Value {
    json!({ "event": "state_error", "message": message })
}

/// The event that tells the client its answer to `call` could not be recorded. For a
/// restored call the cell did not get it, and the call waits for an answer again; for
/// another, the lines that depend on it are held back until a write succeeds.
fn unrecorded_answer(call: &str, message: &str) -> Value {
    json!({ "event": "state_error", "call": call, "message": message })
}
