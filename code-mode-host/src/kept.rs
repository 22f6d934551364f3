//! The one owner of sessions that outlive their process (issue 82, "one owner"):
//! [`KeptSessions`] is the only code outside `code-mode-state` that opens a store, writes
//! a kept session, holds what an earlier process kept until its client asks for it, takes
//! a session over from a dead replica, lets one go, restores a session's cells with their
//! recorded answers, records answers, and deletes a session. [`crate::StoredProvider`],
//! `serve --jsonl`, `mcp --http` and the Codex front all keep their sessions through it;
//! each front keeps only its own data in a session's `options` (an MCP session's
//! `initialize`, a resume token's digest, Codex's ids) and its own policy for the calls a
//! restart cut short.
//!
//! The store is `code-mode-state`'s keeper ([`KeptSessions::open`]) or an agent core's own
//! through [`SessionStore`] ([`KeptSessions::over`]).

use crate::durable::{DurableSession, RestoredCall};
use code_mode_internal::sync::lock;
use code_mode_protocol::{BoxFuture, CallId, CellId, JsonText, ToolError};
use code_mode_state::{
    AnswerRecord, CallRecord, Changes, Holder, Keeper, Saved, SessionRecord, StateError,
    StoreLocation, StoreOptions, StoreStats,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The counter of runtime generations in the store: a provider started after a restart
/// starts past it, so that a rebuilt cell's id never names a new one.
const GENERATIONS: &str = "generations";

/// Where sessions keep themselves. `code-mode-state`'s keeper implements it; an agent core
/// may bring its own, which then needs only [`Self::write`], [`Self::record_answer`] and
/// [`Self::remove`] (the rest is for a store that processes share).
pub trait SessionStore: Send + Sync + 'static {
    /// Writes `changes`, durable when the future resolves (or its error).
    fn write(&self, changes: Changes) -> BoxFuture<'_, Result<(), StateError>>;
    /// Records the answer to a nested call, durable when the future resolves.
    fn record_answer(&self, answer: AnswerRecord) -> BoxFuture<'_, Result<(), StateError>>;
    /// Deletes a session with everything it had.
    fn remove(&self, session: &str);
    /// Queues the record of an answer to join the next write (or be written alone soon);
    /// `None`: the store has no such queue, and the answer is recorded on its own.
    fn record_answer_soon(
        &self,
        _answer: AnswerRecord,
    ) -> Option<BoxFuture<'static, Result<(), StateError>>> {
        None
    }
    /// A store that processes share: takes session `id` over once the process that held
    /// it is gone (its lease ran out); what it kept of it, or `None`.
    fn take_over(&self, _id: &str) -> BoxFuture<'_, Result<Option<Saved>, StateError>> {
        Box::pin(async { Ok(None) })
    }
    /// [`Self::take_over`], except that a session whose holder is known to live is not
    /// waited for (`None` at once). By default, `take_over`.
    fn take_over_unless_live(&self, id: &str) -> BoxFuture<'_, Result<Option<Saved>, StateError>> {
        self.take_over(id)
    }
    /// A store that processes share: ends this process's lease on session `id` now.
    fn release(&self, _id: &str) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async { Ok(()) })
    }
    /// A store that processes share: ends this process's lease on every session it holds
    /// (a clean stop, after the last write).
    fn release_all(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async { Ok(()) })
    }
    /// A store that processes share: where the live process that holds `id` is reached.
    fn holder(&self, _id: &str) -> BoxFuture<'_, Result<Option<Holder>, StateError>> {
        Box::pin(async { Ok(None) })
    }
    /// A store that processes share: records where the others reach this process; its
    /// name in the leases.
    fn advertise(&self, _address: &str) -> BoxFuture<'_, Result<Option<String>, StateError>> {
        Box::pin(async { Ok(None) })
    }
    /// Whether a new session may be kept (refused near the store's size cap).
    fn admit(&self) -> Result<(), StateError> {
        Ok(())
    }
    /// Whether session `id` expired while this process ran.
    fn expired(&self, _id: &str) -> bool {
        false
    }
    /// Where the store is, for logs.
    fn describe(&self) -> &str {
        "the agent core's store"
    }
    /// The store's figures, for metrics (`None`: it keeps none).
    fn stats(&self) -> Option<StoreStats> {
        None
    }
}

impl SessionStore for Keeper {
    fn write(&self, changes: Changes) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(Keeper::write(self, changes))
    }

    fn record_answer(&self, answer: AnswerRecord) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(Keeper::record_answer(self, answer))
    }

    fn remove(&self, session: &str) {
        Keeper::remove(self, session);
    }

    fn record_answer_soon(
        &self,
        answer: AnswerRecord,
    ) -> Option<BoxFuture<'static, Result<(), StateError>>> {
        Some(Box::pin(Keeper::record_answer_soon(self, answer)))
    }

    fn take_over(&self, id: &str) -> BoxFuture<'_, Result<Option<Saved>, StateError>> {
        let id = id.to_owned();
        Box::pin(async move { Keeper::take_over(self, &id).await })
    }

    fn take_over_unless_live(&self, id: &str) -> BoxFuture<'_, Result<Option<Saved>, StateError>> {
        let id = id.to_owned();
        Box::pin(async move { Keeper::take_over_unless_live(self, &id).await })
    }

    fn release(&self, id: &str) -> BoxFuture<'_, Result<(), StateError>> {
        let id = id.to_owned();
        Box::pin(async move { Keeper::release(self, &id).await })
    }

    fn release_all(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(Keeper::release_all(self))
    }

    fn holder(&self, id: &str) -> BoxFuture<'_, Result<Option<Holder>, StateError>> {
        let id = id.to_owned();
        Box::pin(async move { Keeper::holder(self, &id).await })
    }

    fn advertise(&self, address: &str) -> BoxFuture<'_, Result<Option<String>, StateError>> {
        let address = address.to_owned();
        Box::pin(async move { Keeper::advertise(self, &address).await })
    }

    fn admit(&self) -> Result<(), StateError> {
        Keeper::admit(self)
    }

    fn expired(&self, id: &str) -> bool {
        Keeper::expired(self, id)
    }

    fn describe(&self) -> &str {
        Keeper::describe(self)
    }

    fn stats(&self) -> Option<StoreStats> {
        Some(Keeper::stats(self))
    }
}

/// A session an earlier process kept (or a dead replica held), waiting for the client
/// that owns it: its record, the calls its front named to its client, and the answers
/// that came.
#[derive(Debug, Clone)]
pub struct HeldSession {
    /// As it was last written: the front's options, stored values, running cells.
    pub record: SessionRecord,
    calls: Vec<CallRecord>,
    answers: Vec<AnswerRecord>,
}

impl HeldSession {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The answer that came for a call before the restart.
    pub fn answer(&self, cell_id: &CellId, call: CallId) -> Option<Result<JsonText, ToolError>> {
        self.answers
            .iter()
            .find(|answer| answer.cell_id == *cell_id && answer.call == call)
            .map(|answer| answer.result.clone())
    }

    /// The front's id of a call, if it named the call to its client.
    pub fn front_id(&self, cell_id: &CellId, call: CallId) -> Option<&str> {
        self.calls
            .iter()
            .find(|record| record.cell_id == *cell_id && record.call == call)
            .map(|record| record.front_id.as_str())
    }

    /// Rebuilds the session's running cells in `session` (each at the session's next
    /// call); every call they wait on whose answer came before the restart gets it. The
    /// calls that had none are returned: the front's policy says what each gets.
    pub fn restore(&self, session: &dyn DurableSession) -> Vec<RestoredCall> {
        let mut unanswered = Vec::new();
        for call in session.restore(self.record.state.cells.clone()) {
            match self.answer(&call.call.cell_id, call.call.call_id) {
                Some(result) => call.answer(result),
                None => unanswered.push(call),
            }
        }
        unanswered
    }
}

/// Splits what a store held into its sessions, each with its own calls and answers.
fn split(saved: Saved) -> HashMap<String, HeldSession> {
    let Saved {
        sessions,
        mut calls,
        mut answers,
        ..
    } = saved;
    let mut held = HashMap::new();
    for record in sessions {
        let (own_calls, rest): (Vec<_>, Vec<_>) = calls
            .into_iter()
            .partition(|call| call.session == record.id);
        calls = rest;
        let (own_answers, rest): (Vec<_>, Vec<_>) = answers
            .into_iter()
            .partition(|answer| answer.session == record.id);
        answers = rest;
        held.insert(
            record.id.clone(),
            HeldSession {
                record,
                calls: own_calls,
                answers: own_answers,
            },
        );
    }
    held
}

/// The sessions of a process that keeps them in a store: the one owner of the store.
pub struct KeptSessions {
    store: Arc<dyn SessionStore>,
    /// What an earlier process kept (or a dead replica held) that no client asked for yet.
    held: Mutex<HashMap<String, HeldSession>>,
    /// The runtime generation the earlier process reached, then this one's.
    generations: AtomicU64,
}

impl std::fmt::Debug for KeptSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptSessions")
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

impl KeptSessions {
    /// `front`'s store at `location` (`<dir>/<front>.sqlite3`, or its tables in a Postgres
    /// database), bounded by `options`, with what it holds.
    pub fn open(
        location: &StoreLocation,
        front: &str,
        options: StoreOptions,
    ) -> Result<Self, StateError> {
        let (keeper, saved) = Keeper::open(location, front, options)?;
        let kept = Self::over(Arc::new(keeper), saved);
        tracing::info!(
            store = kept.describe(),
            sessions = kept.held_count(),
            "state store opened"
        );
        Ok(kept)
    }

    /// Sessions kept in an agent core's own `store`, which held `saved` when it opened.
    pub fn over(store: Arc<dyn SessionStore>, saved: Saved) -> Self {
        Self {
            store,
            generations: AtomicU64::new(saved.counter(GENERATIONS)),
            held: Mutex::new(split(saved)),
        }
    }

    /// Where the store is.
    pub fn describe(&self) -> &str {
        self.store.describe()
    }

    /// The runtime generation the earlier process reached: start the provider past it
    /// (`ProcessConfig::generations_before`).
    pub fn generations_before(&self) -> u64 {
        self.generations.load(Ordering::SeqCst)
    }

    /// How many kept sessions wait for their clients.
    pub fn held_count(&self) -> usize {
        lock(&self.held).len()
    }

    /// The ids of the kept sessions that wait for their clients, sorted.
    pub fn held_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.held).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether kept session `id` waits here for its client (no new session may take its id).
    pub fn is_held(&self, id: &str) -> bool {
        lock(&self.held).contains_key(id)
    }

    /// Runs `look` on each held session (to check the front's options, for instance).
    pub fn each_held<E>(
        &self,
        mut look: impl FnMut(&HeldSession) -> Result<(), E>,
    ) -> Result<(), E> {
        lock(&self.held).values().try_for_each(&mut look)
    }

    /// Runs `look` on held session `id`, if it is held and did not expire.
    pub fn with_held<R>(&self, id: &str, look: impl FnOnce(&mut HeldSession) -> R) -> Option<R> {
        let mut held = lock(&self.held);
        if self.store.expired(id) {
            held.remove(id);
            return None;
        }
        held.get_mut(id).map(look)
    }

    /// Takes held session `id` out to resume it; `None` when it is not held here, or
    /// expired meanwhile (then it is dropped).
    pub fn take(&self, id: &str) -> Option<HeldSession> {
        self.take_if(id, |_| true)
    }

    /// Takes held session `id` out when `owns` accepts it, in one step under the lock (no
    /// moment in which it looks free to another client); `None` when it is not held here,
    /// expired, or `owns` refuses it (then it stays held for its owner).
    pub fn take_if(
        &self,
        id: &str,
        owns: impl FnOnce(&HeldSession) -> bool,
    ) -> Option<HeldSession> {
        let mut held = lock(&self.held);
        if self.store.expired(id) {
            held.remove(id);
            return None;
        }
        if !owns(held.get(id)?) {
            return None;
        }
        held.remove(id)
    }

    /// A held session whose client was refused goes back to wait for its owner.
    pub fn put_back(&self, held: HeldSession) {
        lock(&self.held).insert(held.record.id.clone(), held);
    }

    /// A store that processes share: takes session `id` over from the process that held
    /// it once that one's lease ran out (a live holder keeps renewing it); it then waits
    /// here, held, for its client. Whether it is held here now.
    pub async fn take_over(&self, id: &str) -> Result<bool, StateError> {
        self.take_over_waiting(id, true).await
    }

    /// [`Self::take_over`], except that a session whose holder is known to live is not
    /// waited for: `false` at once (a front whose sessions are their connection's).
    pub async fn take_over_unless_live(&self, id: &str) -> Result<bool, StateError> {
        self.take_over_waiting(id, false).await
    }

    async fn take_over_waiting(&self, id: &str, wait_for_live: bool) -> Result<bool, StateError> {
        if self.is_held(id) {
            return Ok(true);
        }
        let taken = if wait_for_live {
            self.store.take_over(id).await?
        } else {
            self.store.take_over_unless_live(id).await?
        };
        if let Some(saved) = taken {
            tracing::info!("a kept session taken over from another process");
            tracing::debug!(session = %id, "the session taken over");
            lock(&self.held).extend(split(saved));
        }
        Ok(self.is_held(id))
    }

    /// Gives up session `id`, taken over for a client that did not own it: its lease ends
    /// now, so that its owner's next request, on any replica, takes it. Nothing of it is
    /// deleted.
    pub async fn release(&self, id: &str) {
        lock(&self.held).remove(id);
        if let Err(error) = self.store.release(id).await {
            tracing::warn!(
                "letting a session go failed (it is taken over after its lease): {error}"
            );
        }
    }

    /// At a clean stop, after the last write: every session this process holds is let go
    /// (on a shared store its lease ends now, so that a rolling update hands each to the
    /// next replica at once, not after its lease). Nothing is deleted; a failure is
    /// logged (the sessions are then taken over after their leases).
    pub async fn let_go_all(&self) {
        if let Err(error) = self.store.release_all().await {
            tracing::warn!(
                "letting the sessions go at the stop failed (they are taken over after their leases): {error}"
            );
        }
    }

    /// Where the live replica that holds session `id` is reached, if another one does and
    /// said where (a failure to ask is logged, and is `None`).
    pub async fn holder(&self, id: &str) -> Option<Holder> {
        match self.store.holder(id).await {
            Ok(holder) => holder,
            Err(error) => {
                tracing::warn!(%error, "the state store could not say which replica holds a session");
                None
            }
        }
    }

    /// Records where the other replicas reach this one; this one's name in the leases.
    pub async fn advertise(&self, address: &str) -> Result<Option<String>, StateError> {
        self.store.advertise(address).await
    }

    /// Whether a new session may be kept (refused near the store's size cap, with the
    /// figures).
    pub fn admit(&self) -> Result<(), StateError> {
        self.store.admit()
    }

    /// The store's figures, if it keeps any.
    pub fn stats(&self) -> Option<StoreStats> {
        self.store.stats()
    }

    /// Writes `sessions` as they are now, with the calls their front named to its client,
    /// and `generations`, the runtime generation the provider reached. Durable when it
    /// returns; its error when it could not be written (what depends on it must not go
    /// out).
    pub async fn write(
        &self,
        sessions: Vec<SessionRecord>,
        calls: Vec<CallRecord>,
        generations: u64,
    ) -> Result<(), StateError> {
        let generations = self
            .generations
            .fetch_max(generations, Ordering::SeqCst)
            .max(generations);
        let changes = Changes {
            counters: vec![(GENERATIONS.to_owned(), generations)],
            sessions,
            calls,
            removed: Vec::new(),
        };
        self.store.write(changes).await
    }

    /// Records the answer that came for a nested call, durable when it returns: its cell
    /// gets it afterwards.
    pub async fn record_answer(&self, answer: AnswerRecord) -> Result<(), StateError> {
        self.store.record_answer(answer).await
    }

    /// Records the answer that came for a nested call, which its cell gets at once: the
    /// record joins the next write (or is written alone within milliseconds), and
    /// whatever the cell does with the answer goes out after a later write. A record that
    /// fails is handed to `failed`.
    pub fn record_answer_soon(
        self: &Arc<Self>,
        answer: AnswerRecord,
        failed: impl FnOnce(StateError) + Send + 'static,
    ) {
        let written = match self.store.record_answer_soon(answer.clone()) {
            Some(written) => written,
            None => {
                let kept = Arc::clone(self);
                Box::pin(async move { kept.store.record_answer(answer).await })
            }
        };
        tokio::spawn(async move {
            if let Err(error) = written.await {
                failed(error);
            }
        });
    }

    /// Deletes session `id` with all it had (a failure leaves it to expire).
    pub fn remove(&self, id: &str) {
        lock(&self.held).remove(id);
        self.store.remove(id);
    }
}
