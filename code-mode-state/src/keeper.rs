//! The keeper: the one writer of a store. Every front and provider that keeps state hands
//! it changes ([`Keeper::write`]) and answers ([`Keeper::record_answer`]) and awaits them.
//! A caller that finds the store free writes at once on its own thread; everything queued
//! while a commit runs goes in the next transaction, with one sync (group commit, see
//! `line.rs`); a thread of the keeper's writes what callers leave to it and does the
//! periodic work. A change is planned against what the
//! keeper remembers writing ([`crate::written`]), so only what changed is encoded. A
//! write that fails is tried again for the keeper's patience (a disk that fills for a
//! moment loses nothing), then is the caller's error: what depends on it must not go out.
//!
//! The keeper also bounds the store: sessions no process wrote for the time to live
//! expire (checked at open and every minute), and past seven eighths of the size cap new
//! sessions are refused ([`Keeper::admit`]); the cap itself fails writes as a full disk.

use crate::line::{Commits, Enqueue, Line};
use crate::store::{Backend, Claim, Durability, Holder, Loaded};
use crate::written::{Op, Undo, Written};
use crate::{AnswerRecord, Changes, Saved, StateError};
use code_mode_internal::sync::lock;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a session nobody wrote is kept by default: a day.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a failed write is tried again by default before the caller gets its error.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(10);

/// How often the keeper looks for expired sessions.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// How long an answer recorded with [`Keeper::record_answer_soon`] waits for a write to
/// share a commit with before it is written alone.
const SOON: Duration = Duration::from_millis(5);

/// Where a keeper's store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A state directory: SQLite, one process at a time (`--state-dir`).
    Dir(std::path::PathBuf),
    /// A Postgres database that replicas share (`--state-url`).
    Url(String),
}

/// How a keeper bounds and waits for its store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The store's size cap: past seven eighths of it new sessions are refused, and a
    /// write past it fails as on a full disk.
    pub max_bytes: Option<u64>,
    /// Sessions no process wrote for this long are deleted (`None`: kept for ever).
    pub ttl: Option<Duration>,
    /// How long a failed write is tried again before the caller gets its error.
    pub patience: Duration,
    /// What a committed write survives.
    pub durability: Durability,
    /// A store that processes share (Postgres): the name this process leases sessions
    /// under. A process started again under the same name (a restarted container of the
    /// same pod) takes its sessions back at once; another waits for their leases to run
    /// out. `None`: a name of this process alone.
    pub replica: Option<String>,
    /// A shared store: how long a lease lasts unless its owner renews it (every third of
    /// it); a session whose owner died is taken over after at most this long.
    pub lease: Duration,
    /// A shared store reached over TLS: a file of PEM certificates the server's chain is
    /// checked against (`--state-ca`; else the URL's `sslrootcert`, else the system's
    /// roots).
    pub ca: Option<std::path::PathBuf>,
    /// A shared store: the deployment whose sessions these are. Two deployments on one
    /// database keep their sessions apart (a schema each); `None`, the front's own.
    pub deployment: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_bytes: None,
            ttl: Some(DEFAULT_TTL),
            patience: DEFAULT_PATIENCE,
            durability: Durability::Disk,
            replica: None,
            lease: crate::LEASE,
            ca: None,
            deployment: None,
        }
    }
}

/// A time to live as the command lines give it (`--state-ttl`); `None`: never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Option<Duration>);

/// A time to live as the command lines take it (`--state-ttl`): a number with `s`, `m`,
/// `h` or `d` (`90m`, `24h`, `7d`; a bare number is seconds), or `never`.
pub fn parse_ttl(text: &str) -> Result<Ttl, String> {
    let text = text.trim();
    if text == "never" {
        return Ok(Ttl(None));
    }
    let (number, unit) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3600),
        Some((at, 'd')) => (&text[..at], 86_400),
        _ => (text, 1),
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(unit))
        .filter(|seconds| *seconds > 0)
        .ok_or_else(|| {
            format!("`{text}` is not a time to live: write e.g. 90m, 24h, 7d or never")
        })?;
    Ok(Ttl(Some(Duration::from_secs(seconds))))
}

/// A store's size and contents, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes its data takes.
    pub bytes: u64,
    /// Sessions it holds (this process's and orphans).
    pub sessions: u64,
    /// Transactions committed by this process.
    pub commits: u64,
    /// Sessions that expired in this process.
    pub expired: u64,
}

impl StoreStats {
    /// The figures in Prometheus' text format, for the `/metrics` pages.
    pub fn render_metrics(&self) -> String {
        let mut text = String::new();
        for (name, kind, help, value) in [
            (
                "code_mode_state_bytes",
                "gauge",
                "Bytes the state store's data takes.",
                self.bytes,
            ),
            (
                "code_mode_state_sessions",
                "gauge",
                "Sessions the state store holds, orphans of earlier processes included.",
                self.sessions,
            ),
            (
                "code_mode_state_commits_total",
                "counter",
                "Transactions this process committed to the state store.",
                self.commits,
            ),
            (
                "code_mode_state_sessions_expired_total",
                "counter",
                "Kept sessions deleted past their time to live by this process.",
                self.expired,
            ),
        ] {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        text
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<(), StateError>>;

/// What asking for a session another process may hold gave ([`Keeper::claim`]).
#[derive(Debug)]
pub enum Claimed {
    /// Taken over: this process writes it from now on. Its record, calls and answers.
    Taken(Saved),
    /// Another process, not known to live, holds it for this many more milliseconds
    /// unless it renews.
    Held { for_ms: u64 },
    /// Another process that lives holds it (on Postgres: its connection holds its
    /// liveness lock), and keeps it.
    Live,
    /// The store has no such session.
    Absent,
}

enum Job {
    Write(Arc<Changes>, Option<Reply>),
    Answer(Arc<AnswerRecord>, Reply),
    Claim(
        String,
        tokio::sync::oneshot::Sender<Result<Claimed, StateError>>,
    ),
    Release(String, Reply),
    /// Every lease this process holds ends now (a clean stop).
    ReleaseAll(Reply),
    Holder(
        String,
        tokio::sync::oneshot::Sender<Result<Option<Holder>, StateError>>,
    ),
    Advertise(
        String,
        tokio::sync::oneshot::Sender<Result<Option<String>, StateError>>,
    ),
}

#[derive(Default)]
struct Shared {
    bytes: AtomicU64,
    sessions: AtomicU64,
    commits: AtomicU64,
    expired_count: AtomicU64,
    /// Sessions that expired while this process ran: a front must not take one back.
    expired: Mutex<HashSet<String>>,
}

/// The one writer of a store.
pub struct Keeper {
    line: Arc<dyn Enqueue<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    options: StoreOptions,
    describe: String,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("store", &self.describe)
            .finish_non_exhaustive()
    }
}

/// Refuses a front end's name that the approvals book's database or schema would share
/// (`approvals.sqlite3`; `code_mode_approvals[_<deployment>]` on Postgres).
fn not_reserved(front: &str) -> Result<(), StateError> {
    if front == "approvals" || front.starts_with("approvals_") {
        return Err(StateError::ReservedFront {
            front: front.to_owned(),
        });
    }
    Ok(())
}

impl Keeper {
    /// The keeper of `front`'s SQLite database in `dir` (`<dir>/<front>.sqlite3`), with
    /// what it holds. Refused when another process holds it, when it is not whole, or when
    /// another version or front end wrote it; sessions past their time to live are gone
    /// before it is read.
    pub fn open_sqlite(
        dir: &std::path::Path,
        front: &str,
        options: StoreOptions,
    ) -> Result<(Self, Saved), StateError> {
        not_reserved(front)?;
        let (dir, front) = (dir.to_owned(), front.to_owned());
        let (durability, max_bytes) = (options.durability, options.max_bytes);
        Self::start(
            move || {
                let (mut store, loaded) = crate::sqlite::Sqlite::open(&dir, &front, durability)?;
                if let Some(bytes) = max_bytes {
                    let page_size = store.page_size()?;
                    store.cap_pages(bytes / page_size)?;
                }
                Ok((store, loaded))
            },
            options,
        )
    }

    /// The keeper of `front`'s store at `location`: [`Self::open_sqlite`] or
    /// [`Self::open_postgres`].
    pub fn open(
        location: &StoreLocation,
        front: &str,
        options: StoreOptions,
    ) -> Result<(Self, Saved), StateError> {
        match location {
            StoreLocation::Dir(dir) => Self::open_sqlite(dir, front, options),
            StoreLocation::Url(url) => Self::open_postgres(url, front, options),
        }
    }

    /// The keeper of `front`'s tables in the Postgres database at `url` (a URL or a
    /// `key=value` connection string; its `sslmode` as libpq reads it, but off loopback
    /// never plaintext unless `disable`: `pg_connect.rs`), which other processes may
    /// share. What it gives back are the sessions leased under its own replica name (an
    /// earlier incarnation of it), now this process's; [`Self::claim`] takes over one
    /// whose holder died when a client asks for it. A size cap is checked
    /// against the rows every session takes. A lost connection is made again at the
    /// next write.
    pub fn open_postgres(
        url: &str,
        front: &str,
        options: StoreOptions,
    ) -> Result<(Self, Saved), StateError> {
        not_reserved(front)?;
        let (url, front) = (url.to_owned(), front.to_owned());
        let settings = crate::postgres::Settings {
            replica: options.replica.clone(),
            lease: options.lease,
            durability: options.durability,
            max_bytes: options.max_bytes,
            ca: options.ca.clone(),
            deployment: options.deployment.clone(),
        };
        Self::start(
            move || crate::postgres::Postgres::open(&url, &front, settings),
            options,
        )
    }

    /// Takes over session `id` when the process that owned it is gone (its lease ran
    /// out): from now on this process writes it, and the earlier owner's writes are
    /// refused. A store one process holds whole (SQLite) has none to take over.
    pub async fn claim(&self, id: &str) -> Result<Claimed, StateError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self.send(Job::Claim(id.to_owned(), reply)) {
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Gives up session `id`, which this process took over ([`Self::claim`]) and will not
    /// serve (the client that asked for it did not own it): its lease ends now, so that
    /// the next process asked for it takes it at once; nothing of it is deleted.
    pub async fn release(&self, id: &str) -> Result<(), StateError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self.send(Job::Release(id.to_owned(), reply)) {
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Ends this process's lease on every session it holds, at a clean stop after its last
    /// write: the next process asked for one takes it at once (a rolling update stalls no
    /// client for a lease), and this one writes none of them again. Nothing is deleted.
    pub async fn release_all(&self) -> Result<(), StateError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self.send(Job::ReleaseAll(reply)) {
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Where the live process that holds session `id` can be reached (a shared store,
    /// when that process advertised an address): a request for it is forwarded there, not
    /// made to wait for its lease. `None`: no live process holds it, this one does, or its
    /// holder gave no address.
    pub async fn holder(&self, id: &str) -> Result<Option<Holder>, StateError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self.send(Job::Holder(id.to_owned(), reply)) {
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Records `address` (e.g. `http://10.0.3.7:3000`) as where the other processes of a
    /// shared store reach this one, for [`Self::holder`]; this process's name in the
    /// leases, which a request forwarded to it names (`None` for a store it holds whole).
    pub async fn advertise(&self, address: &str) -> Result<Option<String>, StateError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self.send(Job::Advertise(address.to_owned(), reply)) {
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// [`Self::claim`], waiting while another process holds the session: for up to the
    /// lease's length, so that a session whose owner died is served once its lease runs
    /// out (a live owner renews it, and keeps it). `None`: no such session, or its owner
    /// lives. An owner that looks alive is waited for too: its liveness lock outlives it
    /// for as long as its database connection does (until TCP keepalives end one whose
    /// machine is gone), and its lease decides.
    pub async fn take_over(&self, id: &str) -> Result<Option<Saved>, StateError> {
        self.take_over_waiting(id, true).await
    }

    /// [`Self::take_over`], except that a session whose owner is known to live
    /// ([`Claimed::Live`]) is not waited for: `None` at once. For a front whose sessions
    /// belong to their client's connection, where another host asking means the client is
    /// not that connection.
    pub async fn take_over_unless_live(&self, id: &str) -> Result<Option<Saved>, StateError> {
        self.take_over_waiting(id, false).await
    }

    async fn take_over_waiting(
        &self,
        id: &str,
        wait_for_live: bool,
    ) -> Result<Option<Saved>, StateError> {
        let deadline = tokio::time::Instant::now() + self.options.lease + Duration::from_secs(1);
        loop {
            let for_ms = match self.claim(id).await? {
                Claimed::Taken(saved) => return Ok(Some(saved)),
                Claimed::Absent => return Ok(None),
                Claimed::Live if !wait_for_live => return Ok(None),
                Claimed::Live => 500,
                Claimed::Held { for_ms } => for_ms,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let pause = Duration::from_millis(for_ms.clamp(20, 500));
            tokio::time::sleep(pause.min(deadline - now)).await;
        }
    }

    /// Starts the keeper's thread, which opens the store with `open` (a blocking client
    /// may not run on an async runtime's thread, and the caller may be on one), reads it
    /// and then serves the keeper's jobs.
    fn start<B: Backend>(
        open: impl FnOnce() -> Result<(B, Loaded), StateError> + Send + 'static,
        options: StoreOptions,
    ) -> Result<(Self, Saved), StateError> {
        let shared = Arc::new(Shared::default());
        let (opened, outcome) = mpsc::channel();
        let ttl = options.ttl;
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("code-mode-state".to_owned())
            .spawn(move || {
                let line = match Writer::open(open, thread_shared, ttl) {
                    Ok((writer, saved)) => {
                        let describe = writer.store.describe();
                        let inline = writer.store.commits_inline();
                        let line = Arc::new(Line::new(writer, inline));
                        let queue: Arc<dyn Enqueue<Job>> = line.clone();
                        let _ = opened.send(Ok((saved, describe, queue)));
                        line
                    }
                    Err(error) => {
                        let _ = opened.send(Err(error));
                        return;
                    }
                };
                line.serve();
            })
            .map_err(|error| StateError::Write {
                path: "the state store".into(),
                detail: format!("the state writer thread did not start: {error}"),
            })?;
        let (saved, describe, line) = outcome.recv().map_err(|_| StateError::Write {
            path: "the state store".into(),
            detail: "the state writer thread stopped while opening the store".to_owned(),
        })??;
        Ok((
            Self {
                line,
                writer: Some(writer),
                shared,
                options,
                describe,
            },
            saved,
        ))
    }

    /// Where the store is.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Writes `changes`, durable when it returns; tried again for the keeper's patience
    /// when it fails, then its error.
    pub async fn write(&self, changes: Changes) -> Result<(), StateError> {
        let changes = Arc::new(changes);
        self.patiently(|reply| Job::Write(Arc::clone(&changes), Some(reply)))
            .await
    }

    /// Records the answer that came for a nested call, durable when it returns: the
    /// caller hands it to the cell afterwards, so a restart between the two still
    /// delivers it. Tried again for the keeper's patience when it fails.
    pub async fn record_answer(&self, answer: AnswerRecord) -> Result<(), StateError> {
        let answer = Arc::new(answer);
        self.patiently(|reply| Job::Answer(Arc::clone(&answer), reply))
            .await
    }

    /// Records the answer that came for a nested call with the next write (or alone within
    /// a few milliseconds when none comes): queued now, durable when the future returns.
    /// For a caller that hands the answer to its cell at once: everything the cell does
    /// with it that anyone can see goes out after a later write, which makes the answer
    /// durable first (its cell's journal holds it, and this record shares or precedes
    /// that commit). A restart before then asks for the answer again, as when it came a
    /// moment later. Not tried again.
    pub fn record_answer_soon(
        &self,
        answer: AnswerRecord,
    ) -> impl std::future::Future<Output = Result<(), StateError>> + Send + 'static {
        let (reply, mut outcome) = tokio::sync::oneshot::channel();
        let queued = self.line.push(Job::Answer(Arc::new(answer), reply), false);
        let (line, stopped) = (Arc::clone(&self.line), self.stopped());
        async move {
            if !queued {
                return Err(stopped);
            }
            tokio::select! {
                written = &mut outcome => return written.unwrap_or(Err(stopped)),
                () = tokio::time::sleep(SOON) => {}
            }
            line.flush();
            outcome.await.unwrap_or(Err(stopped))
        }
    }

    /// Deletes session `id` with all it had, without waiting (a failure leaves it to
    /// expire).
    pub fn remove(&self, id: &str) {
        let changes = Changes {
            removed: vec![id.to_owned()],
            ..Changes::default()
        };
        self.send(Job::Write(Arc::new(changes), None));
    }

    async fn patiently(&self, job: impl Fn(Reply) -> Job) -> Result<(), StateError> {
        let deadline = tokio::time::Instant::now() + self.options.patience;
        let mut pause = Duration::from_millis(50);
        loop {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let error = if !self.line.push(job(reply), false) {
                self.stopped()
            } else {
                // The writes of every task ready now join the line before it is written:
                // they share this commit.
                yield_once().await;
                self.line.flush();
                match answer.await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(error)) => error,
                    Err(_) => self.stopped(),
                }
            };
            if tokio::time::Instant::now() + pause > deadline {
                tracing::error!(store = %self.describe, "{error}");
                return Err(error);
            }
            tracing::warn!(store = %self.describe, "{error}; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Queues `job` to be written at once; false when the writer stopped.
    fn send(&self, job: Job) -> bool {
        self.line.push(job, true)
    }

    fn stopped(&self) -> StateError {
        StateError::Write {
            path: self.describe.clone().into(),
            detail: "the state writer stopped".to_owned(),
        }
    }

    /// Whether a new session may be kept: refused past seven eighths of the size cap,
    /// with the figures and what frees room.
    pub fn admit(&self) -> Result<(), StateError> {
        let Some(max) = self.options.max_bytes else {
            return Ok(());
        };
        let bytes = self.shared.bytes.load(Ordering::Relaxed);
        if bytes >= max / 8 * 7 {
            return Err(StateError::Full {
                store: self.describe.clone(),
                bytes,
                max,
            });
        }
        Ok(())
    }

    /// Whether session `id` expired while this process ran (its orphan must not be taken
    /// back).
    pub fn expired(&self, id: &str) -> bool {
        lock(&self.shared.expired).contains(id)
    }

    /// The store's size and contents now.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            sessions: self.shared.sessions.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
            expired: self.shared.expired_count.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Keeper {
    /// Waits for the writes queued before: the store is free for the next keeper when the
    /// drop returns.
    fn drop(&mut self) {
        self.line.close();
        // The thread writes what is queued and drops the store before it ends.
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Lets every other task that is ready run once before the caller goes on.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|context| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        context.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

/// Seconds since the epoch, `ttl` ago.
fn cutoff(ttl: Duration) -> i64 {
    crate::store::now().saturating_sub(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

/// The keeper's thread.
struct Writer<B> {
    store: B,
    written: Written,
    shared: Arc<Shared>,
    ttl: Option<Duration>,
}

impl<B: Backend> Writer<B> {
    /// Opens the store, deletes the sessions past their time to live, and remembers what
    /// is left.
    fn open(
        open: impl FnOnce() -> Result<(B, Loaded), StateError>,
        shared: Arc<Shared>,
        ttl: Option<Duration>,
    ) -> Result<(Self, Saved), StateError> {
        let (mut store, loaded) = open()?;
        let mut saved = loaded.saved;
        if let Some(ttl) = ttl {
            let gone = store.expire(cutoff(ttl), &HashSet::new())?;
            if !gone.is_empty() {
                tracing::info!(store = %store.describe(), sessions = gone.len(), "expired sessions deleted");
                let gone: HashSet<String> = gone.into_iter().collect();
                saved.sessions.retain(|record| !gone.contains(&record.id));
                saved.calls.retain(|call| !gone.contains(&call.session));
                saved
                    .answers
                    .retain(|answer| !gone.contains(&answer.session));
                shared
                    .expired_count
                    .fetch_add(gone.len() as u64, Ordering::Relaxed);
            }
        }
        let written = Written::loaded(
            &saved.sessions,
            &saved.calls,
            &saved.counters,
            &loaded.next_seq,
        );
        let mut writer = Self {
            store,
            written,
            shared,
            ttl,
        };
        writer.measure();
        Ok((writer, saved))
    }

    /// Brings the figures of [`Keeper::stats`] up to the store (before the callers of a
    /// commit learn of it).
    fn measure(&mut self) {
        if let Ok(bytes) = self.store.bytes() {
            self.shared.bytes.store(bytes, Ordering::Relaxed);
        }
        self.shared
            .sessions
            .store(self.written.sessions.len() as u64, Ordering::Relaxed);
    }

    /// A transaction was committed: the figures are brought up to it when the store
    /// measures itself cheaply (SQLite's page count), else at the next tick.
    fn committed(&mut self) {
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        if self.store.measures_cheaply() {
            self.measure();
        } else {
            self.shared
                .sessions
                .store(self.written.sessions.len() as u64, Ordering::Relaxed);
        }
    }

    /// Takes over session `id` and remembers what it read.
    fn claim(&mut self, id: &str) -> Result<Claimed, StateError> {
        let claimed = match self.store.claim(id)? {
            Claim::Taken(claimed) => claimed,
            Claim::Held { for_ms } => return Ok(Claimed::Held { for_ms }),
            Claim::Live => return Ok(Claimed::Live),
            Claim::Absent => return Ok(Claimed::Absent),
        };
        let loaded = claimed.loaded;
        let read = Written::loaded(
            &loaded.saved.sessions,
            &loaded.saved.calls,
            &HashMap::new(),
            &loaded.next_seq,
        );
        self.written.adopt(read);
        self.measure();
        Ok(Claimed::Taken(loaded.saved))
    }

    /// The writes of one job, the memory updated (`undo` takes it back).
    fn plan(&mut self, job: &Job, undo: &mut Undo) -> Result<Vec<Op>, StateError> {
        let planned = match job {
            Job::Write(changes, _) => self.written.plan(changes, undo),
            Job::Answer(answer, _) => crate::written::answer_op(answer).map(|op| vec![op]),
            Job::Claim(..)
            | Job::Release(..)
            | Job::ReleaseAll(..)
            | Job::Holder(..)
            | Job::Advertise(..) => Ok(Vec::new()),
        };
        planned.map_err(|detail| StateError::Write {
            path: self.store.describe().into(),
            detail,
        })
    }
}

impl<B: Backend> Commits for Writer<B> {
    type Job = Job;

    fn interval(&self) -> Duration {
        self.store.tick().min(EXPIRY_EVERY)
    }

    /// Renews the leases whatever the time to live (a session a live process holds is
    /// never taken over), then expires and measures.
    fn tick(&mut self) {
        match self.store.renew() {
            Ok(lost) => {
                if !lost.is_empty() {
                    tracing::warn!(store = %self.store.describe(), sessions = lost.len(), "sessions this process held were expired or taken over by another");
                }
                self.forget(lost);
            }
            Err(error) => tracing::warn!("renewing the leases failed: {error}"),
        }
        self.expire();
        self.measure();
    }

    /// Writes every job in one transaction; if that fails, each alone, so that each
    /// caller gets its own outcome.
    fn commit(&mut self, jobs: Vec<Job>) {
        // A claim reads and takes a lease in its own transaction, before the writes queued
        // behind it.
        let (claims, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| {
            matches!(
                job,
                Job::Claim(..)
                    | Job::Release(..)
                    | Job::ReleaseAll(..)
                    | Job::Holder(..)
                    | Job::Advertise(..)
            )
        });
        for job in claims {
            match job {
                Job::Claim(id, reply) => {
                    let _ = reply.send(self.claim(&id));
                }
                Job::Release(id, reply) => {
                    let released = self.store.release(&id);
                    if released.is_ok() {
                        self.written.expired(&id);
                    }
                    let _ = reply.send(released);
                }
                Job::ReleaseAll(reply) => {
                    let _ = reply.send(self.store.release_all());
                }
                Job::Holder(id, reply) => {
                    let _ = reply.send(self.store.holder(&id));
                }
                Job::Advertise(address, reply) => {
                    let _ = reply.send(self.store.advertise(&address));
                }
                _ => {}
            }
        }
        let mut undo = Undo::default();
        let mut ops = Vec::new();
        let mut planned = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut own = Undo::default();
            match self.plan(&job, &mut own) {
                Ok(more) => {
                    ops.extend(more);
                    undo.extend(own);
                    planned.push(job);
                }
                Err(error) => {
                    self.written.undo(own);
                    reply(job, Err(error));
                }
            }
        }
        if planned.is_empty() {
            return;
        }
        if ops.is_empty() {
            // Nothing changed: nothing to make durable.
            for job in planned {
                reply(job, Ok(()));
            }
            return;
        }
        tracing::debug!(writes = planned.len(), ops = ops.len(), "state commit");
        match self.store.apply(&ops) {
            Ok(()) => {
                self.committed();
                for job in planned {
                    reply(job, Ok(()));
                }
            }
            Err(error) if planned.len() == 1 => {
                self.written.undo(undo);
                if let Some(job) = planned.pop() {
                    reply(job, Err(error));
                }
            }
            Err(_) => {
                self.written.undo(undo);
                for job in planned {
                    let mut own = Undo::default();
                    let outcome = self.plan(&job, &mut own).and_then(|ops| {
                        let applied = self.store.apply(&ops);
                        if applied.is_ok() {
                            self.committed();
                        }
                        applied
                    });
                    if outcome.is_err() {
                        self.written.undo(own);
                    }
                    reply(job, outcome);
                }
            }
        }
    }
}

impl<B: Backend> Writer<B> {
    /// Deletes the sessions past their time to live, keeping this process's own.
    fn expire(&mut self) {
        let Some(ttl) = self.ttl else {
            return;
        };
        let live: HashSet<String> = self
            .written
            .sessions
            .iter()
            .filter(|(_, memory)| memory.live)
            .map(|(id, _)| id.clone())
            .collect();
        match self.store.expire(cutoff(ttl), &live) {
            Ok(gone) => {
                if gone.is_empty() {
                    return;
                }
                tracing::info!(store = %self.store.describe(), sessions = gone.len(), "expired sessions deleted");
                self.shared
                    .expired_count
                    .fetch_add(gone.len() as u64, Ordering::Relaxed);
                self.forget(gone);
            }
            Err(error) => tracing::warn!("expiring old sessions failed: {error}"),
        }
    }

    /// Sessions that are gone from the store for this process: a front must not take
    /// one back, and a later write of one makes it anew.
    fn forget(&mut self, gone: Vec<String>) {
        if gone.is_empty() {
            return;
        }
        let mut expired = lock(&self.shared.expired);
        for id in gone {
            self.written.expired(&id);
            expired.insert(id);
        }
    }
}

fn reply(job: Job, outcome: Result<(), StateError>) {
    let reply = match job {
        Job::Write(_, reply) => reply,
        Job::Answer(_, reply) => Some(reply),
        Job::Claim(_, reply) => {
            let _ = reply.send(outcome.map(|()| Claimed::Absent));
            return;
        }
        Job::Release(_, reply) | Job::ReleaseAll(reply) => Some(reply),
        Job::Holder(_, reply) => {
            let _ = reply.send(outcome.map(|()| None));
            return;
        }
        Job::Advertise(_, reply) => {
            let _ = reply.send(outcome.map(|()| None));
            return;
        }
    };
    if let Some(reply) = reply {
        let _ = reply.send(outcome);
    }
}
