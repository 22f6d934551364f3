//! The Postgres store (`--state-url postgres://...`): the one that replicas share. The
//! tables are SQLite's, in a schema per front (`code_mode_<front>`), and each session row
//! carries a lease: the process that owns it (`owner`), an `epoch` that grows at every
//! takeover, and `lease_until`, renewed while the owner lives.
//!
//! Every transaction first renews the lease of each session it writes, on the condition
//! that the row still names this process and the epoch it took: a process that lost a
//! session (its lease ran out and another took it over) has its writes refused by the
//! database, and writes nothing. When asked for one session ([`Postgres::claim`]), a
//! process takes it over if its lease ran out or it was leased under this process's own
//! replica name (an earlier incarnation of it); at open it takes only the latter, never
//! another process's sessions in bulk. A takeover bumps the epoch, so that the earlier
//! owner's late writes are refused. Each process holds a liveness lock on its connection
//! (an advisory lock the server lets go when the connection ends): a session whose holder
//! holds it is not waited for, so that a request for it elsewhere is answered at once; a
//! dead holder's is taken over once its lease ran out.
//!
//! Each process takes a block of runtime generations of its own at open (the counter
//! grows by [`GENERATION_BLOCK`]), so that cells of a session that moves between replicas
//! never share an id.

use crate::StateError;
use crate::format::FORMAT;
use crate::pg_batch;
use crate::pg_connect::{Target, explain};
use crate::store::{Backend, Claim, Claimed, Durability, Holder, Loaded, Rows};
use crate::written::Op;
use postgres::{Client, Transaction};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long a lease lasts without renewal, by default.
pub const LEASE: Duration = Duration::from_secs(15);

/// The runtime generations a process reserves at open.
pub const GENERATION_BLOCK: u64 = 1000;

/// The advisory lock replicas take while they make or check a schema (an arbitrary key,
/// this crate's own: "code-mode" in ASCII).
pub(crate) const SCHEMA_LOCK: i64 = 0x636f_6465_6d6f_6465;

/// The longest schema name Postgres keeps whole (`NAMEDATALEN` - 1).
const MAX_SCHEMA_CHARS: usize = 63;

/// How a Postgres store is opened.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) replica: Option<String>,
    pub(crate) lease: Duration,
    pub(crate) durability: Durability,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) ca: Option<std::path::PathBuf>,
    pub(crate) deployment: Option<String>,
}

/// The schema of `front`'s tables for `deployment`: lower-case ASCII letters, digits and
/// `_` only, since it is written into statements.
pub(crate) fn schema_name(front: &str, deployment: Option<&str>) -> Result<String, String> {
    let plain = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if !plain(front) {
        return Err(format!("`{front}` is not a front's name"));
    }
    let schema = match deployment {
        None => format!("code_mode_{front}"),
        Some(name) if plain(name) => format!("code_mode_{front}_{name}"),
        Some(name) => {
            return Err(format!(
                "`{name}` is not a deployment name: use lower-case letters, digits and `_`"
            ));
        }
    };
    if schema.len() > MAX_SCHEMA_CHARS {
        return Err(format!(
            "the schema name `{schema}` is longer than Postgres keeps ({MAX_SCHEMA_CHARS} characters): use a shorter deployment name"
        ));
    }
    Ok(schema)
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, options TEXT NOT NULL, touched BIGINT NOT NULL,
        owner TEXT NOT NULL, epoch BIGINT NOT NULL, lease_until BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS stored (
        session TEXT NOT NULL, key TEXT NOT NULL, json TEXT NOT NULL,
        PRIMARY KEY (session, key));
    CREATE TABLE IF NOT EXISTS cells (
        session TEXT NOT NULL, cell TEXT NOT NULL, header BYTEA NOT NULL, tail BYTEA NOT NULL,
        PRIMARY KEY (session, cell));
    CREATE TABLE IF NOT EXISTS growth (
        session TEXT NOT NULL, cell TEXT NOT NULL, seq BIGINT NOT NULL, body BYTEA NOT NULL,
        PRIMARY KEY (session, cell, seq));
    CREATE TABLE IF NOT EXISTS calls (
        session TEXT NOT NULL, cell TEXT NOT NULL, call BIGINT NOT NULL,
        front_id TEXT NOT NULL, PRIMARY KEY (session, cell, call));
    CREATE TABLE IF NOT EXISTS answers (
        session TEXT NOT NULL, cell TEXT NOT NULL, call BIGINT NOT NULL,
        result BYTEA NOT NULL, PRIMARY KEY (session, cell, call));
    CREATE TABLE IF NOT EXISTS replicas (owner TEXT PRIMARY KEY, address TEXT NOT NULL);";

/// An open Postgres store.
pub(crate) struct Postgres {
    client: Client,
    leases: Leases,
    /// Where the server is and how to reach it again.
    target: Target,
    /// The front's schema (`code_mode_<front>`, or `code_mode_<front>_<deployment>`).
    schema: String,
    durability: Durability,
    /// The size cap (`--state-max-bytes`): past it, a write that adds data fails as on a
    /// full disk.
    max_bytes: Option<u64>,
    /// The data's size at the last measure.
    measured: u64,
    /// Whether the connection was set up ([`Self::session_settings`]): one whose set-up
    /// failed is made again at the next write, never used half set up.
    ready: bool,
    /// Whether this connection holds the process's liveness lock ([`Self::stay_alive`]).
    alive: bool,
    /// Where the other replicas reach this one, once it said ([`Backend::advertise`]).
    advertised: Option<String>,
}

/// What this process holds: the sessions it owns, at the epoch it took each.
struct Leases {
    describe: String,
    /// How long a lease lasts, in milliseconds.
    lease_ms: i64,
    /// This process, as the lease rows name it.
    owner: String,
    epochs: HashMap<String, i64>,
    /// Of each session a client asked for: when it was last used before that (the claim
    /// counts as a use), so that one let go unserved ([`Backend::release`]) is left as it
    /// was found, its time to live not lengthened.
    touched_before: HashMap<String, i64>,
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A name that identifies this process among the replicas.
fn process_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    format!("{host}:{}:{}", std::process::id(), now_ms())
}

impl Postgres {
    /// Connects to `url`, makes `front`'s schema if needed (`deployment` keeps another
    /// deployment's sessions on the same database apart), takes a block of runtime
    /// generations and takes back the sessions leased under its own replica name.
    pub(crate) fn open(
        url: &str,
        front: &str,
        settings: Settings,
    ) -> Result<(Self, Loaded), StateError> {
        let target = Target::new(url, settings.ca.as_deref())?;
        let describe = target.describe.clone();
        let failed = |detail: String| StateError::Connect {
            store: describe.clone(),
            detail,
        };
        let schema = schema_name(front, settings.deployment.as_deref()).map_err(failed)?;
        let client = target.connect()?;
        let mut store = Self {
            client,
            leases: Leases {
                describe,
                lease_ms: i64::try_from(settings.lease.as_millis())
                    .unwrap_or(i64::MAX)
                    .max(1),
                owner: settings.replica.unwrap_or_else(process_name),
                epochs: HashMap::new(),
                touched_before: HashMap::new(),
            },
            target,
            schema,
            durability: settings.durability,
            max_bytes: settings.max_bytes,
            measured: 0,
            ready: false,
            alive: false,
            advertised: None,
        };
        store.make_schema(front)?;
        store.session_settings()?;
        let loaded = store.take_over(None)?;
        Ok((store, loaded.loaded))
    }

    /// What this connection needs set: the schema, the statements commits use (prepared;
    /// their values are escape-string literals, exact whatever the server's
    /// `standard_conforming_strings`), and with `process` durability commits that
    /// return before the server syncs (they survive this process, not a crash of the
    /// database's machine).
    fn session_settings(&mut self) -> Result<(), StateError> {
        // The server notices a connection whose machine is gone within a third of the
        // lease and a few probes (else its liveness lock would outlive it for the
        // system's two hours); a Unix socket ignores these.
        let idle_s = (self.leases.lease_ms / 3000).max(1);
        let mut settings = format!(
            "SET search_path TO {}; SET tcp_keepalives_idle TO {idle_s}; \
             SET tcp_keepalives_interval TO 1; SET tcp_keepalives_count TO 3",
            self.schema
        );
        if self.durability == Durability::Process {
            settings.push_str("; SET synchronous_commit TO off");
        }
        // The statements commits use, planned once (after the search path names the
        // schema their tables are in).
        settings.push(';');
        settings.push_str(pg_batch::PREPARED);
        let leases = &self.leases;
        self.ready = false;
        self.client
            .batch_execute(&settings)
            .map_err(|e| leases.pg_error("setting up the connection", &e))?;
        self.ready = true;
        self.alive = false;
        self.stay_alive()
    }

    /// Takes this process's liveness lock on its connection, if it does not hold it yet: a
    /// session-level advisory lock keyed by the schema and the owner name, which the
    /// server lets go when the connection ends (the process died, or lost the server).
    /// Another process asking for a session this one holds ([`Backend::claim`]) reads it:
    /// held means the holder lives, and the session is not waited for. Taken at every
    /// connection and tried again at each renewal (one that failed, because a claim was
    /// reading it at that moment, is taken the next time).
    fn stay_alive(&mut self) -> Result<(), StateError> {
        if self.alive {
            return Ok(());
        }
        let key = format!("{}:{}", self.schema, self.leases.owner);
        self.alive = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .map_err(|e| self.leases.pg_error("taking the liveness lock", &e))?
            .get(0);
        // Without the lock, another replica may have taken this one's row for a dead one's.
        if self.alive
            && let Some(address) = self.advertised.clone()
        {
            self.upsert_replica(&address)?;
        }
        Ok(())
    }

    /// This replica's row in `replicas`: where it is reached.
    fn upsert_replica(&mut self, address: &str) -> Result<(), StateError> {
        self.client
            .execute(
                "INSERT INTO replicas (owner, address) VALUES ($1, $2)
                 ON CONFLICT (owner) DO UPDATE SET address = EXCLUDED.address",
                &[&self.leases.owner, &address],
            )
            .map_err(|e| self.leases.pg(&e))?;
        Ok(())
    }

    /// Connects again when the connection was lost (the server restarted, a network
    /// fault): the keeper's patience tries a failed write again, and this makes the next
    /// try reach the server.
    fn reconnect_if_lost(&mut self) -> Result<(), StateError> {
        if self.ready && !self.client.is_closed() {
            return Ok(());
        }
        tracing::warn!(store = %self.leases.describe, "the connection to the state store was lost (or not set up); connecting again");
        self.client = self.target.connect()?;
        self.session_settings()?;
        tracing::info!(store = %self.leases.describe, "connected to the state store again");
        Ok(())
    }

    /// Makes the schema and its tables, checks the format and the front, and reserves a
    /// block of runtime generations. Replicas that start together on an empty database
    /// take turns here (a transaction-scoped advisory lock): two `CREATE SCHEMA IF NOT
    /// EXISTS` at once would otherwise race on the catalog.
    fn make_schema(&mut self, front: &str) -> Result<(), StateError> {
        let schema = self.schema.clone();
        let leases = &self.leases;
        let step = |what: &str| {
            let what = format!("{what} of the schema {schema}");
            move |e: postgres::Error| leases.pg_error(&what, &e)
        };
        let mut tx = self
            .client
            .transaction()
            .map_err(step("starting the set-up"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(step("taking the lock"))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema}; {SCHEMA}"
        ))
        .map_err(step("the making"))?;
        let found: Option<String> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'format'", &[])
            .map_err(step("reading the format"))?
            .map(|row| row.get(0));
        match found {
            Some(found) if found != FORMAT => {
                return Err(StateError::Foreign {
                    path: leases.describe.clone().into(),
                    found,
                    expected: FORMAT.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('format', $1), ('front', $2)
                     ON CONFLICT (key) DO NOTHING",
                    &[&FORMAT, &front],
                )
                .map_err(step("writing the format"))?;
            }
        }
        tx.execute(
            "INSERT INTO counters (name, value) VALUES ('generations', $1)
             ON CONFLICT (name) DO UPDATE SET value = counters.value + $1",
            &[&GENERATION_BLOCK.cast_signed()],
        )
        .map_err(step("reserving runtime generations"))?;
        tx.commit().map_err(step("the commit"))
    }

    /// Takes over session `only` if its lease ran out, or (`None`) the sessions leased
    /// under this process's own name, and reads them. The counters come with every read;
    /// the generations counter is where this process's block ends, so the block starts
    /// [`GENERATION_BLOCK`] below it.
    fn take_over(&mut self, only: Option<&str>) -> Result<Claimed, StateError> {
        let now = now_ms();
        let leases = &mut self.leases;
        let mut tx = self.client.transaction().map_err(|e| leases.pg(&e))?;
        let rows = match only {
            // At open, only what was leased under this process's own name (an earlier
            // incarnation of it, `--state-replica`): a session whose holder died is taken
            // when a client that owns it asks for it, never in bulk.
            None => tx.query(
                "UPDATE sessions SET owner = $1, epoch = epoch + 1, lease_until = $2
                 WHERE owner = $1 RETURNING id, epoch, touched",
                &[&leases.owner, &(now + leases.lease_ms)],
            ),
            // A client asked for it: that counts as its use (its time to live starts
            // again), in the statement that takes it, so an expiry cannot come between.
            // The use before it comes back too, for a release.
            Some(id) => tx.query(
                "WITH before AS (SELECT id, touched FROM sessions WHERE id = $4 FOR UPDATE)
                 UPDATE sessions SET owner = $1, epoch = epoch + 1, lease_until = $2,
                 touched = $5
                 FROM before WHERE sessions.id = before.id
                 AND (sessions.lease_until < $3 OR sessions.owner = $1)
                 RETURNING sessions.id, sessions.epoch, before.touched",
                &[
                    &leases.owner,
                    &(now + leases.lease_ms),
                    &now,
                    &id,
                    &(now / 1000),
                ],
            ),
        }
        .map_err(|e| leases.pg(&e))?;
        let taken: Vec<(String, i64, i64)> = rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        let ids: Vec<String> = taken.iter().map(|(id, ..)| id.clone()).collect();
        let rows = read_rows(&mut tx, &ids).map_err(|e| leases.pg(&e))?;
        tx.commit().map_err(|e| leases.pg(&e))?;
        let mut loaded = rows
            .assemble()
            .map_err(|detail| leases.error(format!("reading: {detail}")))?;
        if only.is_none() {
            let end = loaded.saved.counter("generations");
            loaded.saved.counters.insert(
                "generations".to_owned(),
                end.saturating_sub(GENERATION_BLOCK),
            );
        }
        for (id, epoch, touched) in taken {
            if only.is_some() {
                leases.touched_before.insert(id.clone(), touched);
            }
            leases.epochs.insert(id, epoch);
        }
        Ok(Claimed { loaded })
    }
}

impl Leases {
    fn error(&self, error: impl std::fmt::Display) -> StateError {
        StateError::Write {
            path: self.describe.clone().into(),
            detail: error.to_string(),
        }
    }

    /// A Postgres error, whole (the server's message, not the client's "db error").
    fn pg(&self, error: &postgres::Error) -> StateError {
        self.error(explain(error))
    }

    /// A Postgres error met while doing `what`.
    fn pg_error(&self, what: &str, error: &postgres::Error) -> StateError {
        self.error(format!("{what} failed: {}", explain(error)))
    }

    /// A write refused: this process no longer holds `session`'s lease.
    fn fenced(&self, session: &str) -> StateError {
        StateError::Fenced {
            store: self.describe.clone(),
            session: session.to_owned(),
        }
    }

    /// The error of a commit that failed: a lease this process no longer holds (of
    /// `sessions`, by the index the marker names), a journal that forked, or what the
    /// server said.
    fn commit_failed(&self, error: &postgres::Error, sessions: &[String]) -> StateError {
        let message = error
            .as_db_error()
            .map(|db| db.message().to_owned())
            .unwrap_or_default();
        if let Some(at) = message.find(pg_batch::FENCED) {
            let index = message[at + pg_batch::FENCED.len()..]
                .split(':')
                .next()
                .and_then(|index| index.parse::<usize>().ok());
            if let Some(session) = index.and_then(|index| sessions.get(index)) {
                return self.fenced(session);
            }
        }
        if message.contains(pg_batch::DIVERGED) {
            return self.error(
                "a journal step is in the store with another content than the one written (the cell's journal forked)",
            );
        }
        self.pg(error)
    }
}

/// The rows of sessions `ids`, and every counter.
fn read_rows(tx: &mut Transaction<'_>, ids: &[String]) -> Result<Rows, postgres::Error> {
    let mut rows = Rows::default();
    for row in tx.query("SELECT name, value FROM counters", &[])? {
        rows.counters.push((row.get(0), row.get(1)));
    }
    for row in tx.query(
        "SELECT id, options FROM sessions WHERE id = ANY($1) ORDER BY id",
        &[&ids],
    )? {
        rows.sessions.push((row.get(0), row.get(1)));
    }
    for row in tx.query(
        "SELECT session, key, json FROM stored WHERE session = ANY($1)",
        &[&ids],
    )? {
        rows.stored.push((row.get(0), row.get(1), row.get(2)));
    }
    for row in tx.query(
        "SELECT session, cell, seq, body FROM growth WHERE session = ANY($1)
         ORDER BY session, cell, seq",
        &[&ids],
    )? {
        rows.growth
            .push((row.get(0), row.get(1), row.get(2), row.get(3)));
    }
    for row in tx.query(
        "SELECT session, cell, header, tail FROM cells WHERE session = ANY($1)
         ORDER BY session, cell",
        &[&ids],
    )? {
        rows.cells
            .push((row.get(0), row.get(1), row.get(2), row.get(3)));
    }
    for row in tx.query(
        "SELECT session, cell, call, front_id FROM calls WHERE session = ANY($1)
         ORDER BY session, cell, call",
        &[&ids],
    )? {
        rows.calls
            .push((row.get(0), row.get(1), row.get(2), row.get(3)));
    }
    for row in tx.query(
        "SELECT session, cell, call, result FROM answers WHERE session = ANY($1)
         ORDER BY session, cell, call",
        &[&ids],
    )? {
        rows.answers
            .push((row.get(0), row.get(1), row.get(2), row.get(3)));
    }
    Ok(rows)
}

impl Backend for Postgres {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StateError> {
        self.reconnect_if_lost()?;
        if let Some(max) = self.max_bytes
            && self.measured >= max
            && ops.iter().any(Op::adds_data)
        {
            return Err(StateError::Full {
                store: self.leases.describe.clone(),
                bytes: self.measured,
                max,
            });
        }
        let leases = &mut self.leases;
        let holding = pg_batch::Holding {
            owner: &leases.owner,
            epochs: &leases.epochs,
            lease_ms: leases.lease_ms,
            now_ms: now_ms(),
        };
        let batch = pg_batch::commit(&holding, ops).map_err(|unwritable| match unwritable {
            pg_batch::Unwritable::NotHeld(id) => leases.fenced(&id),
            pg_batch::Unwritable::Nul => {
                leases.error("text with a NUL character cannot be stored in Postgres")
            }
        })?;
        // One round trip: the whole transaction is one query.
        if let Err(error) = self.client.batch_execute(&batch.sql) {
            // The server skipped what followed the failure; the transaction it left open
            // is rolled back (a lost connection has none).
            let _ = self.client.batch_execute("ROLLBACK");
            return Err(leases.commit_failed(&error, &batch.sessions));
        }
        for id in batch.made {
            leases.epochs.insert(id, 1);
        }
        // A session that is gone is no longer held (its id may be made again).
        for op in ops {
            if let Op::SessionGone { id } = op {
                leases.epochs.remove(id);
                leases.touched_before.remove(id);
            }
        }
        Ok(())
    }

    /// With a size cap, the bytes the rows of every session take (what expiry and
    /// closing sessions give back); without, the tables' size on disk, cheaper to ask.
    fn bytes(&mut self) -> Result<u64, StateError> {
        self.reconnect_if_lost()?;
        let sql = if self.max_bytes.is_some() {
            "SELECT (
                (SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM sessions t)
              + (SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM stored t)
              + (SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM cells t)
              + (SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM growth t)
              + (SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM calls t)
              + (SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM answers t))::BIGINT"
        } else {
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        };
        let row = self
            .client
            .query_one(sql, &[])
            .map_err(|e| self.leases.pg(&e))?;
        self.measured = row.get::<_, i64>(0).max(0).cast_unsigned();
        Ok(self.measured)
    }

    /// Renews the lease of every session this process holds, at the epoch it took each;
    /// those it no longer holds (expired, or taken over) come back.
    fn renew(&mut self) -> Result<Vec<String>, StateError> {
        self.reconnect_if_lost()?;
        self.stay_alive()?;
        if self.leases.epochs.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, epochs): (Vec<String>, Vec<i64>) = self
            .leases
            .epochs
            .iter()
            .map(|(id, epoch)| (id.clone(), *epoch))
            .unzip();
        let now = now_ms();
        let kept: HashSet<String> = self
            .client
            .query(
                "UPDATE sessions s SET lease_until = $1
                 FROM unnest($2::TEXT[], $3::BIGINT[]) AS held(id, epoch)
                 WHERE s.id = held.id AND s.epoch = held.epoch AND s.owner = $4
                 RETURNING s.id",
                &[
                    &(now + self.leases.lease_ms),
                    &ids,
                    &epochs,
                    &self.leases.owner,
                ],
            )
            .map_err(|e| self.leases.pg(&e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let lost: Vec<String> = ids.into_iter().filter(|id| !kept.contains(id)).collect();
        for id in &lost {
            self.leases.epochs.remove(id);
            self.leases.touched_before.remove(id);
        }
        Ok(lost)
    }

    /// Deletes every session no process wrote since `before`, whoever holds it, in one
    /// statement: a session a replica took or wrote meanwhile (its `touched` moved) is
    /// not deleted, since the statement re-reads each row it would delete.
    fn expire(&mut self, before: i64, _live: &HashSet<String>) -> Result<Vec<String>, StateError> {
        self.reconnect_if_lost()?;
        let gone: Vec<String> = self
            .client
            .query(
                "WITH gone AS (DELETE FROM sessions WHERE touched < $1 RETURNING id),
                 stored_gone AS (DELETE FROM stored WHERE session IN (SELECT id FROM gone)),
                 cells_gone AS (DELETE FROM cells WHERE session IN (SELECT id FROM gone)),
                 growth_gone AS (DELETE FROM growth WHERE session IN (SELECT id FROM gone)),
                 calls_gone AS (DELETE FROM calls WHERE session IN (SELECT id FROM gone)),
                 answers_gone AS (DELETE FROM answers WHERE session IN (SELECT id FROM gone))
                 SELECT id FROM gone",
                &[&before],
            )
            .map_err(|e| self.leases.pg(&e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for id in &gone {
            self.leases.epochs.remove(id);
            self.leases.touched_before.remove(id);
        }
        Ok(gone)
    }

    fn claim(&mut self, id: &str) -> Result<Claim, StateError> {
        self.reconnect_if_lost()?;
        if self.leases.epochs.contains_key(id) {
            // This process holds it already (a front serves it on another connection):
            // taking it again would make two live sessions of one id, both writing.
            return Ok(Claim::Absent);
        }
        let claimed = self.take_over(Some(id))?;
        if !claimed.loaded.saved.sessions.is_empty() {
            return Ok(Claim::Taken(claimed));
        }
        // Held by another process: whether that one lives is its liveness lock (taken here
        // and let go at once when it is free). A live holder keeps the session, so it is
        // not waited for; a dead one's lease is waited out, then the session is taken
        // over.
        let prefix = format!("{}:", self.schema);
        let held: Option<(i64, bool)> = self
            .client
            .query_opt(
                "SELECT lease_until, CASE
                     WHEN pg_try_advisory_lock(hashtextextended($2 || owner, 0))
                     THEN NOT pg_advisory_unlock(hashtextextended($2 || owner, 0))
                     ELSE true END
                 FROM sessions WHERE id = $1",
                &[&id, &prefix],
            )
            .map_err(|e| self.leases.pg(&e))?
            .map(|row| (row.get(0), row.get(1)));
        Ok(match held {
            Some((_, true)) => Claim::Live,
            Some((until, false)) => Claim::Held {
                for_ms: until.saturating_sub(now_ms()).max(0).cast_unsigned(),
            },
            None => Claim::Absent,
        })
    }

    fn holder(&mut self, id: &str) -> Result<Option<Holder>, StateError> {
        self.reconnect_if_lost()?;
        let row = self
            .client
            .query_opt(
                "SELECT sessions.owner, replicas.address FROM sessions JOIN replicas
                 ON replicas.owner = sessions.owner
                 WHERE sessions.id = $1 AND sessions.lease_until > $2 AND sessions.owner <> $3",
                &[&id, &now_ms(), &self.leases.owner],
            )
            .map_err(|e| self.leases.pg(&e))?;
        Ok(row.map(|row| Holder {
            name: row.get(0),
            address: row.get(1),
        }))
    }

    fn advertise(&mut self, address: &str) -> Result<Option<String>, StateError> {
        self.reconnect_if_lost()?;
        // The rows of replicas that died go as this one comes: each process adds one, and
        // a fleet's rolling updates would pile them up. Dead: no lease of it runs (a live
        // replica renews its own) and its liveness lock is free.
        let prefix = format!("{}:", self.schema);
        self.client
            .execute(
                "DELETE FROM replicas WHERE owner <> $1
                 AND NOT EXISTS (SELECT 1 FROM sessions
                     WHERE sessions.owner = replicas.owner AND sessions.lease_until > $3)
                 AND CASE
                     WHEN pg_try_advisory_lock(hashtextextended($2 || owner, 0))
                     THEN pg_advisory_unlock(hashtextextended($2 || owner, 0))
                     ELSE false END",
                &[&self.leases.owner, &prefix, &now_ms()],
            )
            .map_err(|e| self.leases.pg(&e))?;
        self.upsert_replica(address)?;
        self.advertised = Some(address.to_owned());
        Ok(Some(self.leases.owner.clone()))
    }

    fn release(&mut self, id: &str) -> Result<(), StateError> {
        self.reconnect_if_lost()?;
        let touched = self.leases.touched_before.remove(id);
        let Some(epoch) = self.leases.epochs.remove(id) else {
            return Ok(());
        };
        // Unserved: its lease ends now and its last use is the one before the claim.
        self.client
            .execute(
                "UPDATE sessions SET lease_until = 0, touched = COALESCE($4, touched)
                 WHERE id = $1 AND owner = $2 AND epoch = $3",
                &[&id, &self.leases.owner, &epoch, &touched],
            )
            .map_err(|e| self.leases.pg(&e))?;
        Ok(())
    }

    fn release_all(&mut self) -> Result<(), StateError> {
        self.reconnect_if_lost()?;
        // No request is forwarded here any more.
        self.advertised = None;
        self.client
            .execute(
                "DELETE FROM replicas WHERE owner = $1",
                &[&self.leases.owner],
            )
            .map_err(|e| self.leases.pg(&e))?;
        let (ids, epochs): (Vec<String>, Vec<i64>) = self.leases.epochs.drain().unzip();
        self.leases.touched_before.clear();
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .execute(
                "UPDATE sessions SET lease_until = 0
                 FROM unnest($2::text[], $3::bigint[]) AS held(id, epoch)
                 WHERE sessions.id = held.id AND sessions.epoch = held.epoch
                 AND sessions.owner = $1",
                &[&self.leases.owner, &ids, &epochs],
            )
            .map_err(|e| self.leases.pg(&e))?;
        Ok(())
    }

    /// The tables' size is a catalog query: asked at each tick, not after each commit.
    fn measures_cheaply(&self) -> bool {
        false
    }

    fn commits_inline(&self) -> bool {
        false
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.leases.lease_ms / 3).unwrap_or(1).max(1))
    }

    fn describe(&self) -> String {
        self.leases.describe.clone()
    }
}
