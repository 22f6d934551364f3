//! The SQLite store (`--state-dir`): one database per front (`<front>.sqlite3`, `rusqlite`
//! bundled). WAL with `synchronous=FULL` (or `NORMAL` for [`Durability::Process`]),
//! so a transaction is durable when it commits and a torn one is rolled back at the next
//! open; one process at a time holds the file
//! (`locking_mode=EXCLUSIVE`); a file that is not whole is refused at open and left as it
//! is. A database of format 1 (journals in the wire's encoding) is rewritten in this
//! crate's format at open, in one transaction.

use crate::StateError;
use crate::format::FORMAT;
use crate::store::{Backend, Durability, Loaded, Rows, now};
use crate::written::{Op, answer_op};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// An open SQLite store.
pub(crate) struct Sqlite {
    path: PathBuf,
    db: Connection,
    /// Its page size, once read (it does not change once the database exists).
    page_size: Option<u64>,
}

/// The data tables: name and columns. Each is clustered on its primary key (`WITHOUT
/// ROWID`): one B-tree, where a rowid table keeps its key in a second one, so a commit
/// writes (and syncs) about half the pages. An earlier version's rowid tables are rebuilt
/// at open ([`cluster_tables`]).
const TABLES: [(&str, &str); 7] = [
    ("counters", "name TEXT PRIMARY KEY, value INTEGER NOT NULL"),
    (
        "sessions",
        "id TEXT PRIMARY KEY, options TEXT NOT NULL, touched INTEGER NOT NULL",
    ),
    (
        "stored",
        "session TEXT NOT NULL, key TEXT NOT NULL, json TEXT NOT NULL, PRIMARY KEY (session, key)",
    ),
    (
        "cells",
        "session TEXT NOT NULL, cell TEXT NOT NULL, header BLOB NOT NULL, tail BLOB NOT NULL, \
         PRIMARY KEY (session, cell)",
    ),
    (
        "growth",
        "session TEXT NOT NULL, cell TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL, \
         PRIMARY KEY (session, cell, seq)",
    ),
    (
        "calls",
        "session TEXT NOT NULL, cell TEXT NOT NULL, call INTEGER NOT NULL, \
         front_id TEXT NOT NULL, PRIMARY KEY (session, cell, call)",
    ),
    (
        "answers",
        "session TEXT NOT NULL, cell TEXT NOT NULL, call INTEGER NOT NULL, \
         result BLOB NOT NULL, PRIMARY KEY (session, cell, call)",
    ),
];

/// Makes the tables that are missing, clustered.
fn create_tables(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )?;
    for (name, columns) in TABLES {
        db.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {name} ({columns}) WITHOUT ROWID;"
        ))?;
    }
    Ok(())
}

/// Rebuilds clustered each data table an earlier version made with a rowid (same columns,
/// same rows); whether any was.
fn cluster_tables(db: &Connection) -> rusqlite::Result<bool> {
    let mut rebuilt = false;
    for (name, columns) in TABLES {
        let sql: Option<String> = db
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()?;
        if sql.is_some_and(|sql| !sql.contains("WITHOUT ROWID")) {
            db.execute_batch(&format!(
                "ALTER TABLE {name} RENAME TO {name}_rowid;
                 CREATE TABLE {name} ({columns}) WITHOUT ROWID;
                 INSERT INTO {name} SELECT * FROM {name}_rowid;
                 DROP TABLE {name}_rowid;"
            ))?;
            rebuilt = true;
        }
    }
    Ok(rebuilt)
}

/// `front`'s database file in `dir`, made (or checked) private to this user: it holds
/// tool inputs and results, stored values and session ids, so `0700` and `0600`, no link
/// followed (`code_mode_files`). SQLite makes the `-wal` and `-shm` files with the
/// database's mode; ones left by an earlier process are checked the same way.
fn private_database(dir: &Path, front: &str) -> Result<PathBuf, StateError> {
    code_mode_files::private_dir("the state directory", dir)?;
    let path = dir.join(format!("{front}.sqlite3"));
    code_mode_files::private_file("the state database", &path)?;
    for suffix in ["-wal", "-shm"] {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        code_mode_files::check_if_present("the state database", Path::new(&name))?;
    }
    Ok(path)
}

impl Sqlite {
    /// Opens (or creates) `front`'s database in `dir`. Refused when another process holds
    /// it, when it is not whole, or when another version or front end wrote it.
    pub(crate) fn open(
        dir: &Path,
        front: &str,
        durability: Durability,
    ) -> Result<(Self, Loaded), StateError> {
        let path = private_database(dir, front)?;
        let corrupt = |error: rusqlite::Error| StateError::Corrupt {
            path: path.clone(),
            detail: error.to_string(),
        };
        let db = Connection::open(&path).map_err(corrupt)?;
        // A database another process holds is refused at once, not after a wait.
        db.busy_timeout(std::time::Duration::ZERO)
            .map_err(corrupt)?;
        // One process at a time: the lock is taken by the first read below and held.
        db.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(corrupt)?;
        let busy = |error: rusqlite::Error| match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StateError::InUse { path: path.clone() }
            }
            _ => StateError::Corrupt {
                path: path.clone(),
                detail: error.to_string(),
            },
        };
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(busy)?;
        // FULL syncs the log at every commit; NORMAL leaves the sync to checkpoints, so a
        // commit survives the process but not the machine.
        let synchronous = match durability {
            Durability::Disk => "FULL",
            Durability::Process => "NORMAL",
        };
        db.pragma_update(None, "synchronous", synchronous)
            .map_err(busy)?;
        let check: String = db
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(busy)?;
        if check != "ok" {
            return Err(StateError::Corrupt {
                path,
                detail: check,
            });
        }
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(busy)?;
        let mut store = Self {
            path,
            db,
            page_size: None,
        };
        let meta = |store: &Self, key: &str| -> Result<Option<String>, StateError> {
            store
                .db
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(|error| store.read_error(error))
        };
        if let Some(found) = meta(&store, "front")?
            && found != front
        {
            return Err(StateError::OtherFront {
                path: store.path,
                found,
                expected: front.to_owned(),
            });
        }
        let found = meta(&store, "format")?;
        let loaded = store.load_format(front, found.as_deref())?;
        if durability == Durability::Disk {
            store.warm_log();
        }
        Ok((store, loaded))
    }

    /// The database's rows in format `found`: a new database made, an earlier version's
    /// rewritten, a foreign one refused.
    fn load_format(&mut self, front: &str, found: Option<&str>) -> Result<Loaded, StateError> {
        match found {
            None => {
                self.create(front)?;
                Ok(Loaded::default())
            }
            Some(FORMAT) => {
                self.cluster()?;
                self.load()
            }
            Some(older) if crate::legacy::reads(older) => {
                let saved = crate::legacy::read(&self.db)
                    .map_err(|detail| self.read_error(format!("format 1: {detail}")))?;
                self.migrate(front, &saved)?;
                tracing::info!(path = %self.path.display(), "state database rewritten from format 1");
                self.load()
            }
            Some(other) => Err(StateError::Foreign {
                path: self.path.clone(),
                found: other.to_owned(),
                expected: FORMAT.to_owned(),
            }),
        }
    }

    /// Grows the write-ahead log to the size it keeps between checkpoints, with blocks
    /// written, before the first commit needs it. A commit that appends to the log makes
    /// the file longer, and its sync then also commits the file system's journal: on this
    /// machine a 4 KiB append with `fdatasync` costs about 2.7 times an overwrite, and
    /// until the log first wraps (a thousand pages, some 300 nested calls) every commit is
    /// such an append. The log is filled by small transactions that are not synced
    /// (`synchronous=NORMAL`: checkpoints still are), on a scratch table dropped at the
    /// end (the database grows by a few pages, which stay free for data), then synced
    /// once; SQLite starts the log over from its beginning after the checkpoint, so
    /// commits overwrite written blocks from then on. Earlier commits were checkpointed
    /// (and synced) first. Best effort: a failure (a full disk) is logged, and the store
    /// opens with `synchronous=FULL` as without it.
    fn warm_log(&mut self) {
        let outcome = self.fill_log();
        let restored = self.db.pragma_update(None, "synchronous", "FULL");
        if let Err(error) = outcome.and(restored) {
            tracing::warn!(path = %self.path.display(), "the state log was not written ahead: {error}");
        }
    }

    fn fill_log(&mut self) -> rusqlite::Result<()> {
        let db = &self.db;
        // A scratch table a crash in an earlier fill left goes first.
        db.execute_batch("DROP TABLE IF EXISTS log_warmup;")?;
        let page_size: i64 = db.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let pages: i64 = db.query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))?;
        let target = u64::try_from(page_size.saturating_mul(pages)).unwrap_or(0);
        let log = {
            let mut name = self.path.clone().into_os_string();
            name.push("-wal");
            PathBuf::from(name)
        };
        let length = || std::fs::metadata(&log).map_or(0, |metadata| metadata.len());
        if length() >= target {
            return Ok(());
        }
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch("CREATE TABLE log_warmup (k INTEGER PRIMARY KEY, v BLOB) WITHOUT ROWID;")?;
        // A row nearly a page long, rewritten in turn: each commit adds a few pages. Each
        // time it differs (SQLite writes nothing for a row rewritten as it was).
        let mut filler = vec![0x5a_u8; usize::try_from(page_size * 3 / 4).unwrap_or(3072)];
        let mut round: i64 = 0;
        while length() < target && round < pages.saturating_mul(2) {
            filler[..8].copy_from_slice(&round.to_le_bytes());
            db.execute(
                "INSERT OR REPLACE INTO log_warmup (k, v) VALUES (?1, ?2)",
                params![round % 3, filler],
            )?;
            round += 1;
        }
        db.pragma_update(None, "synchronous", "FULL")?;
        // This commit syncs the log, and with it every block written above.
        db.execute_batch("DROP TABLE log_warmup;")?;
        db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Rebuilds clustered the tables an earlier version of this format made with a rowid:
    /// one transaction.
    fn cluster(&mut self) -> Result<(), StateError> {
        let tx = self.db.transaction().map_err(write_error(&self.path))?;
        if cluster_tables(&tx).map_err(write_error(&self.path))? {
            tx.commit().map_err(write_error(&self.path))?;
            tracing::info!(path = %self.path.display(), "state tables rebuilt clustered on their keys");
        }
        Ok(())
    }

    /// Makes the tables of a new database.
    fn create(&mut self, front: &str) -> Result<(), StateError> {
        let tx = self.db.transaction().map_err(write_error(&self.path))?;
        create_tables(&tx).map_err(write_error(&self.path))?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('format', ?1), ('front', ?2)",
            params![FORMAT, front],
        )
        .map_err(write_error(&self.path))?;
        tx.commit().map_err(write_error(&self.path))
    }

    /// Rewrites a format-1 database, read as `saved`, in this format: one transaction.
    fn migrate(&mut self, front: &str, saved: &crate::Saved) -> Result<(), StateError> {
        let mut written = crate::written::Written::default();
        let changes = crate::Changes {
            counters: Vec::new(),
            sessions: saved.sessions.clone(),
            calls: saved.calls.clone(),
            removed: Vec::new(),
        };
        let mut ops = written
            .plan(&changes, &mut crate::written::Undo::default())
            .map_err(|detail| self.write_error(detail))?;
        for answer in &saved.answers {
            ops.push(answer_op(answer).map_err(|detail| self.write_error(detail))?);
        }
        let path = self.path.clone();
        let tx = self.db.transaction().map_err(write_error(&path))?;
        tx.execute_batch(
            "DROP TABLE IF EXISTS sessions; DROP TABLE IF EXISTS cells;
             DROP TABLE IF EXISTS answers; DROP TABLE IF EXISTS calls;",
        )
        .map_err(write_error(&path))?;
        create_tables(&tx).map_err(write_error(&path))?;
        cluster_tables(&tx).map_err(write_error(&path))?;
        apply_in(&tx, &ops).map_err(write_error(&path))?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('format', ?1), ('front', ?2)",
            params![FORMAT, front],
        )
        .map_err(write_error(&path))?;
        tx.commit().map_err(write_error(&path))
    }

    fn read_error(&self, error: impl std::fmt::Display) -> StateError {
        StateError::Read {
            path: self.path.clone(),
            detail: error.to_string(),
        }
    }

    fn write_error(&self, error: impl std::fmt::Display) -> StateError {
        StateError::Write {
            path: self.path.clone(),
            detail: error.to_string(),
        }
    }

    /// Every row `sql` selects, made by `row`; a failure is a read error.
    fn rows<R>(
        &self,
        sql: &str,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    ) -> Result<Vec<R>, StateError> {
        let mut statement = self
            .db
            .prepare(sql)
            .map_err(|error| self.read_error(error))?;
        let rows = statement
            .query_map([], row)
            .map_err(|error| self.read_error(error))?;
        rows.collect::<rusqlite::Result<Vec<R>>>()
            .map_err(|error| self.read_error(error))
    }

    /// Everything the database holds. A row that does not decode is an error that names
    /// it (nothing is dropped quietly).
    fn load(&self) -> Result<Loaded, StateError> {
        let text = |row: &rusqlite::Row<'_>, at: usize| row.get::<_, String>(at);
        let rows = Rows {
            counters: self.rows("SELECT name, value FROM counters", |row| {
                Ok((text(row, 0)?, row.get(1)?))
            })?,
            sessions: self.rows("SELECT id, options FROM sessions ORDER BY id", |row| {
                Ok((text(row, 0)?, text(row, 1)?))
            })?,
            stored: self.rows("SELECT session, key, json FROM stored", |row| {
                Ok((text(row, 0)?, text(row, 1)?, text(row, 2)?))
            })?,
            growth: self.rows(
                "SELECT session, cell, seq, body FROM growth ORDER BY session, cell, seq",
                |row| Ok((text(row, 0)?, text(row, 1)?, row.get(2)?, row.get(3)?)),
            )?,
            cells: self.rows(
                "SELECT session, cell, header, tail FROM cells ORDER BY session, cell",
                |row| Ok((text(row, 0)?, text(row, 1)?, row.get(2)?, row.get(3)?)),
            )?,
            calls: self.rows(
                "SELECT session, cell, call, front_id FROM calls ORDER BY session, cell, call",
                |row| Ok((text(row, 0)?, text(row, 1)?, row.get(2)?, text(row, 3)?)),
            )?,
            answers: self.rows(
                "SELECT session, cell, call, result FROM answers ORDER BY session, cell, call",
                |row| Ok((text(row, 0)?, text(row, 1)?, row.get(2)?, row.get(3)?)),
            )?,
        };
        rows.assemble().map_err(|detail| self.read_error(detail))
    }

    /// Caps the database at `pages` pages of its page size: a write past the cap fails as
    /// a full disk does, and keeps what was written before.
    pub(crate) fn cap_pages(&self, pages: u64) -> Result<(), StateError> {
        self.db
            .pragma_update(None, "max_page_count", pages.cast_signed())
            .map_err(|error| self.write_error(error))
    }

    /// The database's page size.
    pub(crate) fn page_size(&mut self) -> Result<u64, StateError> {
        if let Some(size) = self.page_size {
            return Ok(size);
        }
        let size: i64 = self
            .db
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(|error| self.read_error(error))?;
        let size = size.max(512).cast_unsigned();
        self.page_size = Some(size);
        Ok(size)
    }

    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.db
    }
}

fn write_error(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |error| StateError::Write {
        path: path.to_owned(),
        detail: error.to_string(),
    }
}

/// Does `ops` inside `tx`.
fn apply_in(tx: &Connection, ops: &[Op]) -> rusqlite::Result<()> {
    let touched = now();
    for op in ops {
        match op {
            Op::Counter { name, value } => {
                tx.prepare_cached(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = ?2",
                )?
                .execute(params![name, value.cast_signed()])?;
            }
            Op::Session { id, options } => {
                tx.prepare_cached(
                    "INSERT INTO sessions (id, options, touched) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET options = ?2, touched = ?3",
                )?
                .execute(params![id, options, touched])?;
            }
            Op::Value { session, key, json } => match json {
                Some(json) => {
                    tx.prepare_cached(
                        "INSERT INTO stored (session, key, json) VALUES (?1, ?2, ?3)
                         ON CONFLICT (session, key) DO UPDATE SET json = ?3",
                    )?
                    .execute(params![session, key, &**json])?;
                }
                None => {
                    tx.prepare_cached("DELETE FROM stored WHERE session = ?1 AND key = ?2")?
                        .execute(params![session, key])?;
                }
            },
            Op::CellStart { .. }
            | Op::CellGrowth { .. }
            | Op::CellTail { .. }
            | Op::CellGone { .. } => apply_cell(tx, op)?,
            Op::Calls { session, calls } => {
                tx.prepare_cached("DELETE FROM calls WHERE session = ?1")?
                    .execute([session])?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO calls (session, cell, call, front_id) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for call in calls {
                    insert.execute(params![
                        session,
                        call.cell_id.to_string(),
                        call.call.number().cast_signed(),
                        call.front_id
                    ])?;
                }
            }
            Op::Answer {
                session,
                cell,
                call,
                result,
            } => {
                tx.prepare_cached(
                    "INSERT INTO answers (session, cell, call, result) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (session, cell, call) DO UPDATE SET result = ?4",
                )?
                .execute(params![session, cell, call.cast_signed(), result])?;
            }
            Op::Touch { id } => {
                tx.prepare_cached("UPDATE sessions SET touched = ?2 WHERE id = ?1")?
                    .execute(params![id, touched])?;
            }
            Op::SessionGone { id } => {
                for table in ["sessions", "stored", "cells", "growth", "calls", "answers"] {
                    let column = if table == "sessions" { "id" } else { "session" };
                    tx.prepare_cached(&format!("DELETE FROM {table} WHERE {column} = ?1"))?
                        .execute([id])?;
                }
            }
        }
    }
    Ok(())
}

/// Does one of the cell writes inside `tx`.
fn apply_cell(tx: &Connection, op: &Op) -> rusqlite::Result<()> {
    match op {
        Op::CellStart {
            session,
            cell,
            header,
            tail,
        } => {
            delete_cell(tx, session, cell, false)?;
            tx.prepare_cached(
                "INSERT INTO cells (session, cell, header, tail) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![session, cell, header, tail])?;
        }
        Op::CellGrowth {
            session,
            cell,
            seq,
            growth,
        } => {
            tx.prepare_cached(
                "INSERT INTO growth (session, cell, seq, body) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![session, cell, seq.cast_signed(), growth])?;
        }
        Op::CellTail {
            session,
            cell,
            tail,
        } => {
            tx.prepare_cached("UPDATE cells SET tail = ?3 WHERE session = ?1 AND cell = ?2")?
                .execute(params![session, cell, tail])?;
        }
        Op::CellGone { session, cell } => delete_cell(tx, session, cell, true)?,
        _ => {}
    }
    Ok(())
}

/// Deletes a cell's rows (its answers too when it ended, not when it starts again).
fn delete_cell(
    tx: &Connection,
    session: &str,
    cell: &str,
    with_answers: bool,
) -> rusqlite::Result<()> {
    let tables: &[&str] = if with_answers {
        &["cells", "growth", "answers"]
    } else {
        &["cells", "growth"]
    };
    for table in tables {
        tx.prepare_cached(&format!(
            "DELETE FROM {table} WHERE session = ?1 AND cell = ?2"
        ))?
        .execute(params![session, cell])?;
    }
    Ok(())
}

impl Backend for Sqlite {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StateError> {
        // BEGIN and COMMIT as cached statements (a `Transaction` prepares both each time).
        let statement = |sql: &str| {
            self.db
                .prepare_cached(sql)
                .and_then(|mut statement| statement.execute([]))
        };
        statement("BEGIN").map_err(write_error(&self.path))?;
        let applied = apply_in(&self.db, ops).and_then(|()| statement("COMMIT"));
        if let Err(error) = applied {
            // What the failed statement left is undone; a failed COMMIT already was.
            if !self.db.is_autocommit() {
                let _ = self.db.execute_batch("ROLLBACK");
            }
            return Err(write_error(&self.path)(error));
        }
        Ok(())
    }

    fn bytes(&mut self) -> Result<u64, StateError> {
        let pages: i64 = self
            .db
            .prepare_cached(
                "SELECT page_count - freelist_count FROM pragma_page_count(), pragma_freelist_count()",
            )
            .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
            .map_err(|error| self.read_error(error))?;
        Ok(pages.max(0).cast_unsigned() * self.page_size()?)
    }

    fn expire(&mut self, before: i64, live: &HashSet<String>) -> Result<Vec<String>, StateError> {
        let old: Vec<String> = {
            let mut statement = self
                .db
                .prepare_cached("SELECT id FROM sessions WHERE touched < ?1")
                .map_err(|error| self.read_error(error))?;
            let rows = statement
                .query_map([before], |row| row.get::<_, String>(0))
                .map_err(|error| self.read_error(error))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
                .map_err(|error| self.read_error(error))?
        };
        let gone: Vec<String> = old.into_iter().filter(|id| !live.contains(id)).collect();
        let mut ops: Vec<Op> = gone
            .iter()
            .map(|id| Op::SessionGone { id: id.clone() })
            .collect();
        ops.extend(live.iter().map(|id| Op::Touch { id: id.clone() }));
        self.apply(&ops)?;
        Ok(gone)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
