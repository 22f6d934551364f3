//! The Postgres store (`--state-url postgres://...`): the one that replicas share. The
//! tables are SQLite's, in a schema per front (`code_mode_<front>`), and each session row
//! carries a lease: the process that owns it (`owner`), an `epoch` that grows at every
//! takeover, and `lease_until`, renewed while the owner lives.
//!
//! Every transaction first renews the lease of each session it writes, on the condition
//! that the row still names this process and the epoch it took: a process that lost a
//! session (its lease ran out and another took it over) has its writes refused by the
//! database, and writes nothing. At open, and when asked for one session
//! ([`Postgres::claim`]), a process takes over sessions whose lease ran out, and those
//! leased under its own replica name (an earlier incarnation of it): it bumps their
//! epoch, so that the earlier owner's late writes are refused.
//!
//! Each process takes a block of runtime generations of its own at open (the counter
//! grows by [`GENERATION_BLOCK`]), so that cells of a session that moves between replicas
//! never share an id.

use crate::StateError;
use crate::format::FORMAT;
use crate::store::{Backend, Claim, Claimed, Durability, Loaded, Rows};
use crate::written::Op;
use postgres::types::ToSql;
use postgres::{Client, Transaction};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long a lease lasts without renewal, by default.
pub const LEASE: Duration = Duration::from_secs(15);

/// The runtime generations a process reserves at open.
pub const GENERATION_BLOCK: u64 = 1000;

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
        result BYTEA NOT NULL, PRIMARY KEY (session, cell, call));";

/// An open Postgres store.
pub(crate) struct Postgres {
    client: Client,
    leases: Leases,
}

/// What this process holds: the sessions it owns, at the epoch it took each.
struct Leases {
    describe: String,
    /// How long a lease lasts, in milliseconds.
    lease_ms: i64,
    /// This process, as the lease rows name it.
    owner: String,
    epochs: HashMap<String, i64>,
    /// The statements of writes, prepared once on the connection.
    statements: Statements,
}

/// Statements prepared once per connection, by their text: a write then costs one round
/// trip, not a prepare and an execute.
#[derive(Default)]
struct Statements(HashMap<String, postgres::Statement>);

impl Statements {
    /// Runs `sql` in `tx` with `params`, preparing it the first time; the rows it changed.
    fn run(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = match self.0.get(sql) {
            Some(statement) => statement.clone(),
            None => {
                let statement = tx.prepare(sql)?;
                self.0.insert(sql.to_owned(), statement.clone());
                statement
            }
        };
        tx.execute(&statement, params)
    }
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

/// The store's address without its password, for messages.
fn redacted(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(config) => format!(
            "postgres database {} on {:?}",
            config.get_dbname().unwrap_or("(default)"),
            config.get_hosts()
        ),
        Err(_) => "a postgres database".to_owned(),
    }
}

impl Postgres {
    /// Connects to `url`, makes `front`'s schema if needed, takes a block of runtime
    /// generations and takes over every session whose lease ran out.
    pub(crate) fn open(
        url: &str,
        front: &str,
        replica: Option<String>,
        lease: Duration,
        durability: Durability,
    ) -> Result<(Self, Loaded), StateError> {
        let describe = redacted(url);
        let failed = |detail: String| StateError::Connect {
            store: describe.clone(),
            detail,
        };
        if !front.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(failed(format!("`{front}` is not a front's name")));
        }
        let config: postgres::Config = url
            .parse()
            .map_err(|error| failed(format!("the URL does not read: {error}")))?;
        let client = match config.get_ssl_mode() {
            postgres::config::SslMode::Disable => config.connect(postgres::NoTls),
            _ => config.connect(tls()?),
        }
        .map_err(|error| failed(error.to_string()))?;
        let mut store = Self {
            client,
            leases: Leases {
                describe,
                lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1),
                owner: replica.unwrap_or_else(process_name),
                epochs: HashMap::new(),
                statements: Statements::default(),
            },
        };
        store.schema(front)?;
        if durability == Durability::Process {
            // A commit returns before the server syncs it: it survives this process, not a
            // crash of the database's machine.
            store
                .client
                .batch_execute("SET synchronous_commit TO off")
                .map_err(|e| store.error(e))?;
        }
        let loaded = store.take_over(None)?;
        Ok((store, loaded.loaded))
    }

    fn error(&self, error: impl std::fmt::Display) -> StateError {
        self.leases.error(error)
    }

    /// Makes the schema and its tables, checks the format and the front, and reserves a
    /// block of runtime generations.
    fn schema(&mut self, front: &str) -> Result<(), StateError> {
        let schema = format!("code_mode_{front}");
        let leases = &self.leases;
        let mut tx = self.client.transaction().map_err(|e| leases.error(e))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}; {SCHEMA}"
        ))
        .map_err(|e| leases.error(e))?;
        let found: Option<String> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'format'", &[])
            .map_err(|e| leases.error(e))?
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
                .map_err(|e| leases.error(e))?;
            }
        }
        tx.execute(
            "INSERT INTO counters (name, value) VALUES ('generations', $1)
             ON CONFLICT (name) DO UPDATE SET value = counters.value + $1",
            &[&GENERATION_BLOCK.cast_signed()],
        )
        .map_err(|e| leases.error(e))?;
        tx.commit().map_err(|e| leases.error(e))?;
        self.client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .map_err(|e| self.error(e))
    }

    /// Takes over the sessions whose lease ran out (`only`: that one session, if so) and
    /// reads them. The counters come with every read; the generations counter is where
    /// this process's block ends, so the block starts [`GENERATION_BLOCK`] below it.
    fn take_over(&mut self, only: Option<&str>) -> Result<Claimed, StateError> {
        let now = now_ms();
        let leases = &mut self.leases;
        let mut tx = self.client.transaction().map_err(|e| leases.error(e))?;
        let rows = match only {
            None => tx.query(
                "UPDATE sessions SET owner = $1, epoch = epoch + 1, lease_until = $2
                 WHERE lease_until < $3 OR owner = $1 RETURNING id, epoch",
                &[&leases.owner, &(now + leases.lease_ms), &now],
            ),
            Some(id) => tx.query(
                "UPDATE sessions SET owner = $1, epoch = epoch + 1, lease_until = $2
                 WHERE id = $4 AND (lease_until < $3 OR owner = $1) RETURNING id, epoch",
                &[&leases.owner, &(now + leases.lease_ms), &now, &id],
            ),
        }
        .map_err(|e| leases.error(e))?;
        let taken: Vec<(String, i64)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        let ids: Vec<String> = taken.iter().map(|(id, _)| id.clone()).collect();
        let rows = read_rows(&mut tx, &ids).map_err(|e| leases.error(e))?;
        tx.commit().map_err(|e| leases.error(e))?;
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
        for (id, epoch) in taken {
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

    /// Renews this process's lease on `session` inside `tx`, on the condition that it
    /// still owns it at the epoch it took; refused otherwise.
    fn renew(
        &mut self,
        tx: &mut Transaction<'_>,
        session: &str,
        now: i64,
    ) -> Result<(), StateError> {
        let Some(&epoch) = self.epochs.get(session) else {
            return Err(self.fenced(session));
        };
        let renewed = self
            .statements
            .run(
                tx,
                "UPDATE sessions SET lease_until = $1, touched = $2
                 WHERE id = $3 AND owner = $4 AND epoch = $5",
                &[
                    &(now + self.lease_ms),
                    &(now / 1000),
                    &session,
                    &self.owner,
                    &epoch,
                ],
            )
            .map_err(|e| self.error(e))?;
        if renewed == 1 {
            Ok(())
        } else {
            Err(self.fenced(session))
        }
    }

    fn fenced(&self, session: &str) -> StateError {
        StateError::Fenced {
            store: self.describe.clone(),
            session: session.to_owned(),
        }
    }

    /// Does `ops` in `tx`: first the leases of the sessions they write, then the writes.
    fn apply_in(&mut self, tx: &mut Transaction<'_>, ops: &[Op]) -> Result<(), StateError> {
        let now = now_ms();
        let mut renewed: HashSet<&str> = HashSet::new();
        for op in ops {
            let Some(session) = session_of(op) else {
                continue;
            };
            if renewed.contains(session) {
                continue;
            }
            if let Op::Session { id, options } = op
                && !self.epochs.contains_key(id.as_str())
            {
                // A session new to the store: this process owns it from epoch 1; one
                // another process made under the same id is not taken.
                let made = self
                    .statements
                    .run(
                        tx,
                        "INSERT INTO sessions (id, options, touched, owner, epoch, lease_until)
                         VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (id) DO NOTHING",
                        &[
                            id,
                            options,
                            &(now / 1000),
                            &self.owner,
                            &(now + self.lease_ms),
                        ],
                    )
                    .map_err(|e| self.error(e))?;
                if made == 0 {
                    return Err(self.fenced(id));
                }
                self.epochs.insert(id.clone(), 1);
            } else {
                self.renew(tx, session, now)?;
            }
            renewed.insert(session);
        }
        for op in ops {
            write(tx, &mut self.statements, op, now).map_err(|e| self.error(e))?;
        }
        Ok(())
    }
}

/// The session an op writes.
fn session_of(op: &Op) -> Option<&str> {
    match op {
        Op::Counter { .. } => None,
        Op::Session { id, .. } | Op::Touch { id } | Op::SessionGone { id } => Some(id),
        Op::Value { session, .. }
        | Op::CellStart { session, .. }
        | Op::CellGrowth { session, .. }
        | Op::CellTail { session, .. }
        | Op::CellGone { session, .. }
        | Op::Calls { session, .. }
        | Op::Answer { session, .. } => Some(session),
    }
}

/// One op's statements.
fn write(
    tx: &mut Transaction<'_>,
    statements: &mut Statements,
    op: &Op,
    now: i64,
) -> Result<(), postgres::Error> {
    let mut run = |tx: &mut Transaction<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]| {
        statements.run(tx, sql, params).map(|_| ())
    };
    match op {
        Op::Counter { name, value } => run(
            tx,
            "INSERT INTO counters (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = GREATEST(counters.value, $2)",
            &[name, &value.cast_signed()],
        ),
        Op::Session { id, options } => run(
            tx,
            "UPDATE sessions SET options = $2, touched = $3 WHERE id = $1",
            &[id, options, &(now / 1000)],
        ),
        Op::Touch { .. } => Ok(()),
        Op::Value { session, key, json } => match json {
            Some(json) => run(
                tx,
                "INSERT INTO stored (session, key, json) VALUES ($1, $2, $3)
                 ON CONFLICT (session, key) DO UPDATE SET json = $3",
                &[session, key, &&**json],
            ),
            None => run(
                tx,
                "DELETE FROM stored WHERE session = $1 AND key = $2",
                &[session, key],
            ),
        },
        Op::CellStart { .. }
        | Op::CellGrowth { .. }
        | Op::CellTail { .. }
        | Op::CellGone { .. } => write_cell(tx, statements, op),
        Op::Calls { session, calls } => {
            run(tx, "DELETE FROM calls WHERE session = $1", &[session])?;
            for call in calls {
                run(
                    tx,
                    "INSERT INTO calls (session, cell, call, front_id) VALUES ($1, $2, $3, $4)",
                    &[
                        session,
                        &call.cell_id.to_string(),
                        &call.call.number().cast_signed(),
                        &call.front_id,
                    ],
                )?;
            }
            Ok(())
        }
        Op::Answer {
            session,
            cell,
            call,
            result,
        } => run(
            tx,
            "INSERT INTO answers (session, cell, call, result) VALUES ($1, $2, $3, $4)
             ON CONFLICT (session, cell, call) DO UPDATE SET result = $4",
            &[session, cell, &call.cast_signed(), result],
        ),
        Op::SessionGone { id } => {
            for table in ["stored", "cells", "growth", "calls", "answers"] {
                run(
                    tx,
                    &format!("DELETE FROM {table} WHERE session = $1"),
                    &[id],
                )?;
            }
            run(tx, "DELETE FROM sessions WHERE id = $1", &[id])
        }
    }
}

/// One cell op's statements.
fn write_cell(
    tx: &mut Transaction<'_>,
    statements: &mut Statements,
    op: &Op,
) -> Result<(), postgres::Error> {
    let mut run = |tx: &mut Transaction<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]| {
        statements.run(tx, sql, params).map(|_| ())
    };
    match op {
        Op::CellStart {
            session,
            cell,
            header,
            tail,
        } => {
            for table in ["cells", "growth"] {
                run(
                    tx,
                    &format!("DELETE FROM {table} WHERE session = $1 AND cell = $2"),
                    &[session, cell],
                )?;
            }
            run(
                tx,
                "INSERT INTO cells (session, cell, header, tail) VALUES ($1, $2, $3, $4)",
                &[session, cell, header, tail],
            )
        }
        Op::CellGrowth {
            session,
            cell,
            seq,
            growth,
        } => run(
            tx,
            "INSERT INTO growth (session, cell, seq, body) VALUES ($1, $2, $3, $4)",
            &[session, cell, &seq.cast_signed(), growth],
        ),
        Op::CellTail {
            session,
            cell,
            tail,
        } => run(
            tx,
            "UPDATE cells SET tail = $3 WHERE session = $1 AND cell = $2",
            &[session, cell, tail],
        ),
        Op::CellGone { session, cell } => {
            for table in ["cells", "growth", "answers"] {
                run(
                    tx,
                    &format!("DELETE FROM {table} WHERE session = $1 AND cell = $2"),
                    &[session, cell],
                )?;
            }
            Ok(())
        }
        _ => Ok(()),
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

/// TLS for a store that asks for it: rustls (ring), verified against the system's roots.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StateError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for certificate in found.certs {
        let _ = roots.add(certificate);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| StateError::Connect {
            store: "a postgres database".to_owned(),
            detail: error.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl Backend for Postgres {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StateError> {
        let leases = &mut self.leases;
        let mut tx = self.client.transaction().map_err(|e| leases.error(e))?;
        leases.apply_in(&mut tx, ops)?;
        tx.commit().map_err(|e| leases.error(e))?;
        // A session that is gone is no longer held (its id may be made again).
        for op in ops {
            if let Op::SessionGone { id } = op {
                leases.epochs.remove(id);
            }
        }
        Ok(())
    }

    fn bytes(&mut self) -> Result<u64, StateError> {
        let row = self
            .client
            .query_one(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema() AND c.relkind = 'r'",
                &[],
            )
            .map_err(|e| self.error(e))?;
        Ok(row.get::<_, i64>(0).max(0).cast_unsigned())
    }

    fn expire(&mut self, before: i64, live: &HashSet<String>) -> Result<Vec<String>, StateError> {
        // Renew this process's leases, then delete what nobody wrote since `before` and
        // nobody holds.
        let now = now_ms();
        self.client
            .execute(
                "UPDATE sessions SET lease_until = $1 WHERE owner = $2",
                &[&(now + self.leases.lease_ms), &self.leases.owner],
            )
            .map_err(|e| self.error(e))?;
        let old: Vec<String> = self
            .client
            .query(
                "SELECT id FROM sessions WHERE touched < $1 AND lease_until < $2",
                &[&before, &now],
            )
            .map_err(|e| self.error(e))?
            .iter()
            .map(|row| row.get(0))
            .filter(|id: &String| !live.contains(id))
            .collect();
        let leases = &mut self.leases;
        let mut tx = self.client.transaction().map_err(|e| leases.error(e))?;
        for id in &old {
            write(
                &mut tx,
                &mut leases.statements,
                &Op::SessionGone { id: id.clone() },
                now,
            )
            .map_err(|e| leases.error(e))?;
        }
        tx.commit().map_err(|e| leases.error(e))?;
        Ok(old)
    }

    fn claim(&mut self, id: &str) -> Result<Claim, StateError> {
        let claimed = self.take_over(Some(id))?;
        if !claimed.loaded.saved.sessions.is_empty() {
            return Ok(Claim::Taken(claimed));
        }
        let until: Option<i64> = self
            .client
            .query_opt("SELECT lease_until FROM sessions WHERE id = $1", &[&id])
            .map_err(|e| self.error(e))?
            .map(|row| row.get(0));
        Ok(match until {
            Some(until) => Claim::Held {
                for_ms: until.saturating_sub(now_ms()).max(0).cast_unsigned(),
            },
            None => Claim::Absent,
        })
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
