//! The approvals book (issue 86): calls that wait on a person, kept where every process
//! that opens the same store can list and answer them, days later and after any number of
//! restarts. SQLite keeps them in `approvals.sqlite3` beside the fronts' databases (in WAL
//! mode and shared: an approver's process writes while the server runs), Postgres in a
//! schema of their own (`code_mode_approvals`, or `code_mode_approvals_<deployment>`).
//!
//! A row's life: `pending` (asked, with the call's exact input) → `approved` (with the
//! input to send and its digest) → `sending` (taken by the one process that sends it, in
//! one conditional update: an approval is used once; the `message` column of a row being
//! sent holds the token of the take, nothing an approver wrote) → deleted with its cell; or
//! `pending` → `denied` (with the approver's message) → `told` (the cell got it). A
//! decision is taken once: only a `pending` row is decided. A `pending` row past the time
//! to live of the process that asked it (kept with the row) is denied as expired. Every method blocks: call it off an
//! async runtime's threads (`spawn_blocking`).

use crate::pg_connect::{Target, explain};
use crate::{StateError, StoreLocation, StoreOptions};
use code_mode_internal::sync::lock;
use code_mode_protocol::approval::{Decision, input_digest};
use code_mode_protocol::{CallId, CellId, JsonText};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The table, the same in both stores.
const TABLE: &str = "
    CREATE TABLE IF NOT EXISTS approvals (
        id TEXT PRIMARY KEY,
        front TEXT NOT NULL,
        session TEXT NOT NULL,
        cell TEXT NOT NULL,
        call BIGINT NOT NULL,
        tool TEXT NOT NULL,
        input TEXT,
        reason TEXT,
        principal TEXT,
        requested_at BIGINT NOT NULL,
        state TEXT NOT NULL,
        sent_input TEXT,
        digest TEXT,
        message TEXT,
        decided_at BIGINT,
        expires_at BIGINT,
        UNIQUE (front, session, cell, call)
    );
    CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals (state, front);
    CREATE INDEX IF NOT EXISTS approvals_by_decision ON approvals (decided_at);";

/// The columns an [`Approval`] is read from, in order.
const COLUMNS: &str = "id, front, session, cell, call, tool, input, reason, principal, \
     requested_at, state, sent_input, digest, message";

/// Where a waiting call is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalState {
    /// No one decided yet.
    Pending,
    /// Approved: `input` is what is sent, `digest` its digest.
    Approved {
        input: Option<String>,
        digest: String,
    },
    /// Taken by the process that sends it (it is never sent by another).
    Sending {
        input: Option<String>,
        digest: String,
    },
    /// Denied with the approver's message, which the cell has not got yet.
    Denied { message: String },
    /// Denied, and the cell got it.
    Told { message: String },
}

/// A call that waits (or waited) on a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Its id, what an approver names.
    pub id: String,
    /// The front that keeps its session (`serve`, `mcp`, a stored provider's).
    pub front: String,
    pub session: String,
    pub cell_id: CellId,
    pub call: CallId,
    pub tool: String,
    /// The call's exact input (JSON text), `None` when the cell passed none.
    pub input: Option<JsonText>,
    pub reason: Option<String>,
    /// Who opened the session, when its front knows (an MCP client's principal): only
    /// they, or an operator of the store, may decide.
    pub principal: Option<String>,
    /// When it was asked, in milliseconds since the Unix epoch.
    pub requested_at_ms: i64,
    pub state: ApprovalState,
}

impl Approval {
    /// How long it has waited.
    pub fn age(&self) -> Duration {
        Duration::from_millis(
            now_ms()
                .saturating_sub(self.requested_at_ms)
                .cast_unsigned(),
        )
    }
}

/// A call to be kept as waiting on a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    pub front: String,
    pub session: String,
    pub cell_id: CellId,
    pub call: CallId,
    pub tool: String,
    pub input: Option<JsonText>,
    pub reason: Option<String>,
    pub principal: Option<String>,
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No such approval waits (answered already, its cell ended, never asked, or another
    /// principal's: which is not said).
    #[error(
        "no approval `{0}` is waiting (it was decided already, its cell ended, or it is not yours)"
    )]
    NotWaiting(String),
    /// It waited past the store's time to live, and is now denied as expired.
    #[error(
        "approval `{0}` expired (no one decided within the store's time to live); it is denied"
    )]
    Expired(String),
    /// The edited input is not JSON.
    #[error("the edited input of approval `{id}` is not JSON: {detail}")]
    BadInput { id: String, detail: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A parameter of a statement, in either store.
#[derive(Debug, Clone)]
enum Param {
    Text(String),
    Maybe(Option<String>),
    Int(i64),
    MaybeInt(Option<i64>),
}

/// A row as read, before it is an [`Approval`].
type RawRow = (
    [String; 6],
    i64,
    [Option<String>; 3],
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
);

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

/// A Postgres book: where it connects, its schema, its connection (when it has one).
struct Pg {
    target: Target,
    schema: String,
    client: Option<postgres::Client>,
}

impl Drop for Pg {
    /// The blocking client closes its connection by running an async runtime of its own,
    /// which panics on an async runtime's thread (a book dropped by an async task): it is
    /// closed on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = std::thread::Builder::new()
                .name("code-mode-approvals-close".to_owned())
                .spawn(move || drop(client));
        }
    }
}

/// The approvals of a store: one connection, used by one call at a time.
pub struct ApprovalBook {
    backend: Mutex<Backend>,
    describe: String,
    ttl: Option<Duration>,
}

impl std::fmt::Debug for ApprovalBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalBook")
            .field("describe", &self.describe)
            .finish_non_exhaustive()
    }
}

impl ApprovalBook {
    /// The approvals of the store at `location` (made if need be); `options` gives the
    /// time to live, the CA and the deployment of a Postgres store.
    pub fn open(location: &StoreLocation, options: &StoreOptions) -> Result<Self, StateError> {
        let (backend, describe) = match location {
            StoreLocation::Dir(dir) => open_sqlite(dir)?,
            StoreLocation::Url(url) => open_postgres(url, options)?,
        };
        Ok(Self {
            backend: Mutex::new(backend),
            describe,
            ttl: options.ttl,
        })
    }

    /// Where the book is, for logs and errors.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Keeps `request` as waiting; the row as it is (one asked before, with whatever was
    /// decided since, when the call was asked already: a rebuilt cell asks again).
    pub fn request(&self, request: &ApprovalRequest) -> Result<Approval, StateError> {
        let id = fresh_id().map_err(|detail| self.write_error(detail))?;
        let now = now_ms();
        let expires = self
            .ttl
            .map(|ttl| now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        self.execute(
            "INSERT INTO approvals (id, front, session, cell, call, tool, input, reason, \
             principal, requested_at, state, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11) \
             ON CONFLICT (front, session, cell, call) DO NOTHING",
            vec![
                Param::Text(id),
                Param::Text(request.front.clone()),
                Param::Text(request.session.clone()),
                Param::Text(request.cell_id.to_string()),
                Param::Int(call_number(request.call)),
                Param::Text(request.tool.clone()),
                Param::Maybe(request.input.as_ref().map(|text| text.as_str().to_owned())),
                Param::Maybe(request.reason.clone()),
                Param::Maybe(request.principal.clone()),
                Param::Int(now),
                Param::MaybeInt(expires),
            ],
        )?;
        self.find(
            &request.front,
            &request.session,
            &request.cell_id,
            request.call,
        )?
        .ok_or_else(|| self.read_error("the approval just kept is not there".to_owned()))
    }

    /// The approval of one call, if it was asked.
    pub fn find(
        &self,
        front: &str,
        session: &str,
        cell_id: &CellId,
        call: CallId,
    ) -> Result<Option<Approval>, StateError> {
        let mut found = self.select(
            "front = $1 AND session = $2 AND cell = $3 AND call = $4",
            vec![
                Param::Text(front.to_owned()),
                Param::Text(session.to_owned()),
                Param::Text(cell_id.to_string()),
                Param::Int(call_number(call)),
            ],
        )?;
        Ok(found.pop())
    }

    /// The approval `id`, in whatever state.
    pub fn get(&self, id: &str) -> Result<Option<Approval>, StateError> {
        Ok(self
            .select("id = $1", vec![Param::Text(id.to_owned())])?
            .pop())
    }

    /// The calls waiting on a person, oldest first: all of them, or one front's, or one
    /// session's of it. Those past the time to live are denied as expired first.
    pub fn pending(
        &self,
        front: Option<&str>,
        session: Option<&str>,
    ) -> Result<Vec<Approval>, StateError> {
        self.expire()?;
        let mut filter = "state = 'pending'".to_owned();
        let mut params = Vec::new();
        if let Some(front) = front {
            params.push(Param::Text(front.to_owned()));
            filter.push_str(&format!(" AND front = ${}", params.len()));
        }
        if let Some(session) = session {
            params.push(Param::Text(session.to_owned()));
            filter.push_str(&format!(" AND session = ${}", params.len()));
        }
        self.select(&filter, params)
    }

    /// The decided calls no process took yet (approved, or denied and not told) that were
    /// decided at or after `since_ms`: what a process that waits on some of them looks for.
    pub fn decided_since(&self, since_ms: i64) -> Result<Vec<Approval>, StateError> {
        self.select(
            "state IN ('approved', 'denied') AND decided_at >= $1",
            vec![Param::Int(since_ms)],
        )
    }

    /// Decides approval `id`, once: approved (with the input to send: the edited one, or
    /// the call's) or denied. Refused when it is not pending, or (with `principal`) when
    /// its session is another principal's; one past the time to live is denied as
    /// expired instead.
    pub fn decide(
        &self,
        id: &str,
        decision: &Decision,
        principal: Option<&str>,
    ) -> Result<Approval, ApprovalError> {
        let not_waiting = || ApprovalError::NotWaiting(id.to_owned());
        let found = self.get(id)?.ok_or_else(not_waiting)?;
        if found.state != ApprovalState::Pending
            || principal.is_some_and(|principal| found.principal.as_deref() != Some(principal))
        {
            return Err(not_waiting());
        }
        if self.expire()? > 0
            && self
                .get(id)?
                .is_some_and(|row| row.state != ApprovalState::Pending)
        {
            return Err(ApprovalError::Expired(id.to_owned()));
        }
        let input = match decision {
            Decision::Approve {
                input: Some(edited),
            } => Some(checked_input(id, edited)?),
            _ => found.input.as_ref().map(|text| text.as_str().to_owned()),
        };
        self.record(id, decision, input, now_ms())
    }

    /// Records `decision` on pending approval `id` at `decided_at` (`input`: what an
    /// approval sends). When the connection is lost after the update committed, the
    /// update runs again and changes nothing: the row then says whether the decision it
    /// holds is this one (its time, and its digest or message), which is then reported as
    /// taken, not as another's.
    fn record(
        &self,
        id: &str,
        decision: &Decision,
        input: Option<String>,
        decided_at: i64,
    ) -> Result<Approval, ApprovalError> {
        let not_waiting = || ApprovalError::NotWaiting(id.to_owned());
        let digest = input_digest(input.as_deref());
        let changed = match decision {
            Decision::Approve { .. } => self.execute(
                "UPDATE approvals SET state = 'approved', sent_input = $2, digest = $3, \
                 decided_at = $4 WHERE id = $1 AND state = 'pending'",
                vec![
                    Param::Text(id.to_owned()),
                    Param::Maybe(input),
                    Param::Text(digest.clone()),
                    Param::Int(decided_at),
                ],
            )?,
            Decision::Deny { message } => self.execute(
                "UPDATE approvals SET state = 'denied', message = $2, decided_at = $3 \
                 WHERE id = $1 AND state = 'pending'",
                vec![
                    Param::Text(id.to_owned()),
                    Param::Text(message.clone()),
                    Param::Int(decided_at),
                ],
            )?,
        };
        // Whether a row's state holds this decision.
        let ours = |state: &ApprovalState| match (decision, state) {
            (
                Decision::Approve { .. },
                ApprovalState::Approved { digest: kept, .. }
                | ApprovalState::Sending { digest: kept, .. },
            ) => *kept == digest,
            (
                Decision::Deny { message },
                ApprovalState::Denied { message: kept } | ApprovalState::Told { message: kept },
            ) => kept == message,
            _ => false,
        };
        let row = self.get(id)?.ok_or_else(not_waiting)?;
        if changed != 1 {
            let at_ours = !self
                .select(
                    "id = $1 AND decided_at = $2",
                    vec![Param::Text(id.to_owned()), Param::Int(decided_at)],
                )?
                .is_empty();
            if !(at_ours && ours(&row.state)) {
                return Err(not_waiting());
            }
        }
        Ok(row)
    }

    /// Takes approved call `id` to send it: `true` for the one process whose update made
    /// it `sending`, `false` for any other (or when it is not approved).
    pub fn take_to_send(&self, id: &str) -> Result<bool, StateError> {
        let token = fresh_id().map_err(|error| self.write_error(error))?;
        self.take_as(id, &token)
    }

    /// [`Self::take_to_send`] by the taker `token`, kept in the row's `message` (which a
    /// row being sent has no other use for): when the connection is lost after the update
    /// committed, the update runs again and changes nothing, and the token says the take
    /// was this one.
    fn take_as(&self, id: &str, token: &str) -> Result<bool, StateError> {
        let changed = self.execute(
            "UPDATE approvals SET state = 'sending', message = $2 \
             WHERE id = $1 AND state = 'approved'",
            vec![Param::Text(id.to_owned()), Param::Text(token.to_owned())],
        )?;
        if changed == 1 {
            return Ok(true);
        }
        let taken = self.select(
            "id = $1 AND state = 'sending' AND message = $2",
            vec![Param::Text(id.to_owned()), Param::Text(token.to_owned())],
        )?;
        Ok(!taken.is_empty())
    }

    /// Denied call `id` was told to its cell.
    pub fn told(&self, id: &str) -> Result<(), StateError> {
        self.execute(
            "UPDATE approvals SET state = 'told' WHERE id = $1 AND state = 'denied'",
            vec![Param::Text(id.to_owned())],
        )
        .map(drop)
    }

    /// A cell ended: its approvals go.
    pub fn remove_cell(
        &self,
        front: &str,
        session: &str,
        cell_id: &CellId,
    ) -> Result<(), StateError> {
        self.execute(
            "DELETE FROM approvals WHERE front = $1 AND session = $2 AND cell = $3",
            vec![
                Param::Text(front.to_owned()),
                Param::Text(session.to_owned()),
                Param::Text(cell_id.to_string()),
            ],
        )
        .map(drop)
    }

    /// A session closed: its approvals go.
    pub fn remove_session(&self, front: &str, session: &str) -> Result<(), StateError> {
        self.execute(
            "DELETE FROM approvals WHERE front = $1 AND session = $2",
            vec![
                Param::Text(front.to_owned()),
                Param::Text(session.to_owned()),
            ],
        )
        .map(drop)
    }

    /// Denies, as expired, every pending approval past the time to live it was asked
    /// with; how many.
    pub fn expire(&self) -> Result<u64, StateError> {
        self.execute(
            "UPDATE approvals SET state = 'denied', message = $1, decided_at = $2 \
             WHERE state = 'pending' AND expires_at IS NOT NULL AND expires_at < $2",
            vec![
                Param::Text(code_mode_protocol::texts::APPROVAL_EXPIRED.to_owned()),
                Param::Int(now_ms()),
            ],
        )
    }

    fn read_error(&self, detail: String) -> StateError {
        StateError::Read {
            path: PathBuf::from(&self.describe),
            detail,
        }
    }

    fn write_error(&self, detail: String) -> StateError {
        StateError::Write {
            path: PathBuf::from(&self.describe),
            detail,
        }
    }

    /// Runs a statement; the rows it changed.
    fn execute(&self, sql: &str, params: Vec<Param>) -> Result<u64, StateError> {
        let mut backend = lock(&self.backend);
        match &mut *backend {
            Backend::Sqlite(db) => db
                .execute(
                    &sqlite_sql(sql),
                    rusqlite::params_from_iter(params.iter().map(sqlite_value)),
                )
                .map(|rows| rows as u64)
                .map_err(|error| self.write_error(error.to_string())),
            Backend::Postgres(pg) => with_client(pg, |client| {
                let boxed = pg_params(&params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    boxed.iter().map(|param| &**param as _).collect();
                client.execute(sql, &refs)
            })
            .map_err(|error| self.write_error(error)),
        }
    }

    /// The approvals `filter` selects, oldest first.
    fn select(&self, filter: &str, params: Vec<Param>) -> Result<Vec<Approval>, StateError> {
        let sql =
            format!("SELECT {COLUMNS} FROM approvals WHERE {filter} ORDER BY requested_at, id");
        let raw = {
            let mut backend = lock(&self.backend);
            match &mut *backend {
                Backend::Sqlite(db) => sqlite_rows(db, &sqlite_sql(&sql), &params)
                    .map_err(|error| self.read_error(error.to_string()))?,
                Backend::Postgres(pg) => with_client(pg, |client| {
                    let boxed = pg_params(&params);
                    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                        boxed.iter().map(|param| &**param as _).collect();
                    let rows = client.query(&sql, &refs)?;
                    Ok(rows.iter().map(pg_row).collect())
                })
                .map_err(|error| self.read_error(error))?,
            }
        };
        raw.into_iter()
            .map(|row| approval(row).map_err(|error| self.read_error(error)))
            .collect()
    }
}

/// A fresh approval id: `a` and 128 random bits in hex.
fn fresh_id() -> Result<String, String> {
    let mut bytes = [0_u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "the system's secure random generator failed".to_owned())?;
    let mut id = String::from("a");
    for byte in bytes {
        id.push_str(&format!("{byte:02x}"));
    }
    Ok(id)
}

fn call_number(call: CallId) -> i64 {
    i64::try_from(call.number()).unwrap_or(i64::MAX)
}

/// The edited input, checked to be JSON (bounded as every input is).
fn checked_input(id: &str, edited: &str) -> Result<String, ApprovalError> {
    JsonText::new(edited)
        .to_value()
        .map_err(|error| ApprovalError::BadInput {
            id: id.to_owned(),
            detail: error.to_string(),
        })?;
    Ok(edited.to_owned())
}

/// An [`Approval`] from its row.
fn approval(row: RawRow) -> Result<Approval, String> {
    let (
        [id, front, session, cell, tool, state],
        call,
        [input, reason, principal],
        at,
        sent,
        digest,
        message,
    ) = row;
    let Ok(cell_id) = cell.parse::<CellId>();
    let bad = |what: &str| format!("approval {id}: {what}");
    let state = match state.as_str() {
        "pending" => ApprovalState::Pending,
        "approved" | "sending" => {
            let digest = digest.ok_or_else(|| bad("approved without a digest"))?;
            if state == "approved" {
                ApprovalState::Approved {
                    input: sent,
                    digest,
                }
            } else {
                ApprovalState::Sending {
                    input: sent,
                    digest,
                }
            }
        }
        "denied" | "told" => {
            let message = message.ok_or_else(|| bad("denied without a message"))?;
            if state == "denied" {
                ApprovalState::Denied { message }
            } else {
                ApprovalState::Told { message }
            }
        }
        other => return Err(bad(&format!("unknown state `{other}`"))),
    };
    Ok(Approval {
        call: CallId::new(u64::try_from(call).map_err(|_| bad("a negative call number"))?),
        id,
        front,
        session,
        cell_id,
        tool,
        input: input.map(JsonText::new),
        reason,
        principal,
        requested_at_ms: at,
        state,
    })
}

/// SQLite numbers its parameters `?N`.
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn sqlite_value(param: &Param) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match param {
        Param::Text(text) => Value::Text(text.clone()),
        Param::Maybe(Some(text)) => Value::Text(text.clone()),
        Param::Maybe(None) => Value::Null,
        Param::Int(number) => Value::Integer(*number),
        Param::MaybeInt(Some(number)) => Value::Integer(*number),
        Param::MaybeInt(None) => Value::Null,
    }
}

fn sqlite_rows(
    db: &rusqlite::Connection,
    sql: &str,
    params: &[Param],
) -> rusqlite::Result<Vec<RawRow>> {
    let mut statement = db.prepare_cached(sql)?;
    let rows = statement.query_map(
        rusqlite::params_from_iter(params.iter().map(sqlite_value)),
        |row| {
            Ok((
                [
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(5)?,
                    row.get(10)?,
                ],
                row.get(4)?,
                [row.get(6)?, row.get(7)?, row.get(8)?],
                row.get(9)?,
                row.get(11)?,
                row.get(12)?,
                row.get(13)?,
            ))
        },
    )?;
    rows.collect()
}

fn pg_params(params: &[Param]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|param| -> Box<dyn postgres::types::ToSql + Sync> {
            match param {
                Param::Text(text) => Box::new(text.clone()),
                Param::Maybe(text) => Box::new(text.clone()),
                Param::Int(number) => Box::new(*number),
                Param::MaybeInt(number) => Box::new(*number),
            }
        })
        .collect()
}

fn pg_row(row: &postgres::Row) -> RawRow {
    (
        [
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(5),
            row.get(10),
        ],
        row.get(4),
        [row.get(6), row.get(7), row.get(8)],
        row.get(9),
        row.get(11),
        row.get(12),
        row.get(13),
    )
}

/// Runs `work` on the book's connection (made if there is none), connecting again once
/// when the connection was lost (a restarted server).
fn with_client<T>(
    pg: &mut Pg,
    work: impl Fn(&mut postgres::Client) -> Result<T, postgres::Error>,
) -> Result<T, String> {
    let Pg {
        target,
        schema,
        client,
    } = pg;
    for attempt in 0..2 {
        if client.is_none() {
            *client = Some(connect(target, schema).map_err(|error| error.to_string())?);
        }
        let Some(connected) = client.as_mut() else {
            continue;
        };
        match work(connected) {
            Ok(value) => return Ok(value),
            Err(error) if attempt == 0 && (error.is_closed() || connected.is_closed()) => {
                if let Some(lost) = client.take() {
                    // Closed off this thread, as a dropped book's is (see `Pg`'s drop).
                    let _ = std::thread::Builder::new()
                        .name("code-mode-approvals-close".to_owned())
                        .spawn(move || drop(lost));
                }
            }
            Err(error) => return Err(explain(&error)),
        }
    }
    Err("the connection was lost twice".to_owned())
}

/// A connection whose statements reach the book's schema.
fn connect(target: &Target, schema: &str) -> Result<postgres::Client, StateError> {
    let mut client = target.connect()?;
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .map_err(|error| StateError::Connect {
            store: schema.to_owned(),
            detail: explain(&error),
        })?;
    Ok(client)
}

fn open_sqlite(dir: &Path) -> Result<(Backend, String), StateError> {
    code_mode_files::private_dir("the state directory", dir)?;
    let path = dir.join("approvals.sqlite3");
    code_mode_files::private_file("the approvals database", &path)?;
    for suffix in ["-wal", "-shm"] {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        code_mode_files::check_if_present("the approvals database", Path::new(&name))?;
    }
    let failed = |error: rusqlite::Error| StateError::Corrupt {
        path: path.clone(),
        detail: error.to_string(),
    };
    let db = rusqlite::Connection::open(&path).map_err(failed)?;
    // Shared: the server and an approver's process take turns, each waiting a while.
    db.busy_timeout(Duration::from_secs(10)).map_err(failed)?;
    db.pragma_update(None, "journal_mode", "WAL")
        .map_err(failed)?;
    db.pragma_update(None, "synchronous", "FULL")
        .map_err(failed)?;
    db.execute_batch(TABLE).map_err(failed)?;
    Ok((Backend::Sqlite(db), format!("{}", path.display())))
}

fn open_postgres(url: &str, options: &StoreOptions) -> Result<(Backend, String), StateError> {
    let target = Target::new(url, options.ca.as_deref())?;
    let schema = crate::postgres::schema_name("approvals", options.deployment.as_deref()).map_err(
        |detail| StateError::Connect {
            store: "a postgres database".to_owned(),
            detail,
        },
    )?;
    let describe = format!("the approvals of {}", target.describe);
    let mut client = target.connect()?;
    let failed = |error: postgres::Error| StateError::Connect {
        store: describe.clone(),
        detail: explain(&error),
    };
    // Replicas that start together take turns making it, as they do their own schemas.
    let mut tx = client.transaction().map_err(failed)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&crate::postgres::SCHEMA_LOCK],
    )
    .map_err(failed)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema}; {TABLE}"
    ))
    .map_err(failed)?;
    tx.commit().map_err(failed)?;
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .map_err(failed)?;
    Ok((
        Backend::Postgres(Box::new(Pg {
            target,
            schema,
            client: Some(client),
        })),
        describe,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(dir: &Path, ttl: Option<Duration>) -> ApprovalBook {
        let options = StoreOptions {
            ttl,
            ..StoreOptions::default()
        };
        ApprovalBook::open(&StoreLocation::Dir(dir.to_owned()), &options).expect("opens")
    }

    fn request(call: u64) -> ApprovalRequest {
        ApprovalRequest {
            front: "test".to_owned(),
            session: "s".to_owned(),
            cell_id: CellId::new(1),
            call: CallId::new(call),
            tool: "send".to_owned(),
            input: Some(JsonText::new("{\"to\":\"a\"}")),
            reason: None,
            principal: Some("alice".to_owned()),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("code-mode-approvals-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_call_waiting_past_the_ttl_it_was_asked_with_is_denied_as_expired_whoever_lists() {
        let dir = scratch("expiry");
        let asker = book(&dir, Some(Duration::from_millis(50)));
        let waiting = asker.request(&request(1)).expect("kept");
        // A lister with a far longer time to live does not keep it alive, nor end it early.
        let lister = book(&dir, Some(Duration::from_secs(3600)));
        assert_eq!(lister.pending(None, None).expect("listed").len(), 1);
        std::thread::sleep(Duration::from_millis(120));
        assert!(lister.pending(None, None).expect("listed").is_empty());
        let row = lister.get(&waiting.id).expect("read").expect("kept");
        assert_eq!(
            row.state,
            ApprovalState::Denied {
                message: code_mode_protocol::texts::APPROVAL_EXPIRED.to_owned()
            }
        );
        let late = lister.decide(&waiting.id, &Decision::Approve { input: None }, None);
        assert!(
            matches!(late, Err(ApprovalError::NotWaiting(_))),
            "{late:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A decision or a take whose update committed but whose answer was lost runs again
    /// (the connection's one retry): the second run changes nothing, and is still reported
    /// as taken when the row holds this decision or this take; never when it holds
    /// another's.
    #[test]
    fn an_update_run_again_after_its_commit_is_taken_as_this_one() {
        let dir = scratch("again");
        let book = book(&dir, None);
        let input = Some("{\"to\":\"a\"}".to_owned());
        let approve = Decision::Approve { input: None };
        let first = book.request(&request(1)).expect("kept");
        book.record(&first.id, &approve, input.clone(), 1000)
            .expect("decided");
        let again = book.record(&first.id, &approve, input.clone(), 1000);
        assert!(again.is_ok(), "the same decision, run again: {again:?}");
        let other = book.record(&first.id, &approve, input.clone(), 1001);
        assert!(
            matches!(other, Err(ApprovalError::NotWaiting(_))),
            "another approver's, a moment later: {other:?}"
        );
        let deny = Decision::Deny {
            message: "no".to_owned(),
        };
        let late = book.record(&first.id, &deny, None, 1000);
        assert!(
            matches!(late, Err(ApprovalError::NotWaiting(_))),
            "a denial at the same moment is not this approval: {late:?}"
        );
        let second = book.request(&request(2)).expect("kept");
        book.record(&second.id, &deny, None, 2000).expect("denied");
        assert!(book.record(&second.id, &deny, None, 2000).is_ok());

        assert!(book.take_as(&first.id, "me").expect("taken"));
        assert!(
            book.take_as(&first.id, "me").expect("asked"),
            "the same take, run again"
        );
        assert!(
            !book.take_as(&first.id, "another").expect("asked"),
            "another process's take"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_decision_is_taken_once_and_only_for_the_principal_of_the_session() {
        let dir = scratch("once");
        let book = book(&dir, None);
        let waiting = book.request(&request(1)).expect("kept");
        let approve = Decision::Approve { input: None };
        let other = book.decide(&waiting.id, &approve, Some("mallory"));
        assert!(
            matches!(other, Err(ApprovalError::NotWaiting(_))),
            "{other:?}"
        );
        let edited = Decision::Approve {
            input: Some("{\"to\":\"b\"}".to_owned()),
        };
        let decided = book
            .decide(&waiting.id, &edited, Some("alice"))
            .expect("decided");
        assert_eq!(
            decided.state,
            ApprovalState::Approved {
                input: Some("{\"to\":\"b\"}".to_owned()),
                digest: input_digest(Some("{\"to\":\"b\"}")),
            }
        );
        let again = book.decide(
            &waiting.id,
            &Decision::Deny {
                message: "no".into(),
            },
            None,
        );
        assert!(
            matches!(again, Err(ApprovalError::NotWaiting(_))),
            "{again:?}"
        );
        assert!(book.take_to_send(&waiting.id).expect("taken"));
        assert!(
            !book.take_to_send(&waiting.id).expect("asked"),
            "taken once"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
