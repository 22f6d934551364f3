//! One commit on Postgres in one round trip: the transaction's statements go to the server
//! as one simple query (`BEGIN; …; COMMIT`), their values written in as literals, and the
//! conditions a write depends on are checked by the statements themselves. A lease this
//! process no longer holds, or a journal step already there with another body, makes its
//! statement fail with a marker ([`FENCED`], [`DIVERGED`]); the server then skips the rest,
//! and the caller rolls back. A round trip per statement (and a `BEGIN` and a `COMMIT`)
//! was what a durable nested call cost before (issue 82, "a durable call at physics'
//! cost").
//!
//! The statements a commit uses most are prepared once per connection ([`PREPARED`], run
//! when the connection is set up): the query then names them (`EXECUTE cm_growth(…)`),
//! and the server plans none of them again.
//!
//! Literals: text is an escape-string literal (`E'…'`) with its quotes and backslashes
//! doubled, exact whatever `standard_conforming_strings` says; text with a NUL is refused,
//! as Postgres refuses it in any `text` (and a query is NUL-terminated); bytes are written
//! in `bytea`'s hex form (`E'\\x…'`); numbers as decimal integers. Nothing else is
//! written into the query. The prepared statements live in the connection's session, so
//! a pooler that hands one connection to several clients per transaction cannot stand
//! between the keeper and Postgres.

use crate::written::Op;
use std::collections::HashMap;
use std::fmt::Write as _;

/// The marker of a lease this process no longer holds, followed by the session's index in
/// [`Batch::sessions`].
pub(crate) const FENCED: &str = "code-mode-fenced:";

/// The marker of a journal step in the store with another body than the one written.
pub(crate) const DIVERGED: &str = "code-mode-diverged";

/// The statements prepared on each connection, after its `search_path` is set: a lease
/// renewed or a session made (each failing with [`FENCED`] and the index it is given
/// unless exactly one row changed), and the writes of a nested call and of stored values.
pub(crate) const PREPARED: &str = "
PREPARE cm_renew(bigint, bigint, text, text, bigint, text) AS
  WITH changed AS (UPDATE sessions SET lease_until = $1, touched = $2
                   WHERE id = $3 AND owner = $4 AND epoch = $5 RETURNING 1)
  SELECT CASE WHEN count(*) = 1 THEN 0
         ELSE CAST(concat('code-mode-fenced:', $6, ':', count(*)) AS integer) END FROM changed;
PREPARE cm_make(text, text, bigint, text, bigint, text) AS
  WITH changed AS (INSERT INTO sessions (id, options, touched, owner, epoch, lease_until)
                   VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (id) DO UPDATE
                   SET lease_until = EXCLUDED.lease_until
                   WHERE sessions.owner = EXCLUDED.owner AND sessions.epoch = 1 RETURNING 1)
  SELECT CASE WHEN count(*) = 1 THEN 0
         ELSE CAST(concat('code-mode-fenced:', $6, ':', count(*)) AS integer) END FROM changed;
PREPARE cm_growth(text, text, bigint, bytea) AS
  WITH changed AS (INSERT INTO growth (session, cell, seq, body) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (session, cell, seq) DO UPDATE SET body = EXCLUDED.body
                   WHERE growth.body = EXCLUDED.body RETURNING 1)
  SELECT CASE WHEN count(*) = 1 THEN 0
         ELSE CAST(concat('code-mode-diverged:', count(*)) AS integer) END FROM changed;
PREPARE cm_tail(text, text, bytea) AS
  UPDATE cells SET tail = $3 WHERE session = $1 AND cell = $2;
PREPARE cm_cell(text, text, bytea, bytea) AS
  INSERT INTO cells (session, cell, header, tail) VALUES ($1, $2, $3, $4);
PREPARE cm_calls_gone(text) AS DELETE FROM calls WHERE session = $1;
PREPARE cm_call(text, text, bigint, text) AS
  INSERT INTO calls (session, cell, call, front_id) VALUES ($1, $2, $3, $4);
PREPARE cm_answer(text, text, bigint, bytea) AS
  INSERT INTO answers (session, cell, call, result) VALUES ($1, $2, $3, $4)
  ON CONFLICT (session, cell, call) DO UPDATE SET result = EXCLUDED.result;
PREPARE cm_counter(text, bigint) AS
  INSERT INTO counters (name, value) VALUES ($1, $2)
  ON CONFLICT (name) DO UPDATE SET value = GREATEST(counters.value, EXCLUDED.value);
PREPARE cm_options(text, text, bigint) AS
  UPDATE sessions SET options = $2, touched = $3 WHERE id = $1;
PREPARE cm_value(text, text, text) AS
  INSERT INTO stored (session, key, json) VALUES ($1, $2, $3)
  ON CONFLICT (session, key) DO UPDATE SET json = EXCLUDED.json;
PREPARE cm_value_gone(text, text) AS DELETE FROM stored WHERE session = $1 AND key = $2;
";

/// A commit's text, and the sessions its lease checks name, by index.
pub(crate) struct Batch {
    pub(crate) sql: String,
    pub(crate) sessions: Vec<String>,
    /// Sessions the commit makes: this process holds them at epoch 1 once it committed.
    pub(crate) made: Vec<String>,
}

/// What the commit's lease checks need of this process.
pub(crate) struct Holding<'a> {
    pub(crate) owner: &'a str,
    pub(crate) epochs: &'a HashMap<String, i64>,
    pub(crate) lease_ms: i64,
    pub(crate) now_ms: i64,
}

/// Why a commit could not be written as text.
#[derive(Debug)]
pub(crate) enum Unwritable {
    /// A session this process holds no lease on.
    NotHeld(String),
    /// Text with a NUL character.
    Nul,
}

/// `text` as an escape-string literal (`E'…'`): quotes and backslashes doubled, exact
/// whatever `standard_conforming_strings` says.
fn text(text: &str) -> Result<String, Unwritable> {
    if text.contains('\0') {
        return Err(Unwritable::Nul);
    }
    let mut literal = String::with_capacity(text.len() + 3);
    literal.push_str("E'");
    for c in text.chars() {
        if c == '\'' || c == '\\' {
            literal.push(c);
        }
        literal.push(c);
    }
    literal.push('\'');
    Ok(literal)
}

/// `bytes` as a `bytea` literal (hex form, in an escape string: exact whatever
/// `standard_conforming_strings` says).
fn bytes(bytes: &[u8]) -> String {
    let mut literal = String::with_capacity(bytes.len() * 2 + 14);
    literal.push_str("E'\\\\x");
    for byte in bytes {
        let _ = write!(literal, "{byte:02x}");
    }
    literal.push_str("'::bytea");
    literal
}

/// The session an op writes.
pub(crate) fn session_of(op: &Op) -> Option<&str> {
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

/// The text of one commit of `ops`: first the lease of each session they write (renewed
/// on the condition that this process still holds it at its epoch; a session new to the
/// store made at epoch 1), then the writes.
pub(crate) fn commit(holding: &Holding<'_>, ops: &[Op]) -> Result<Batch, Unwritable> {
    let mut batch = Batch {
        sql: String::from("BEGIN;\n"),
        sessions: Vec::new(),
        made: Vec::new(),
    };
    let (now_s, until) = (holding.now_ms / 1000, holding.now_ms + holding.lease_ms);
    let owner = text(holding.owner)?;
    for op in ops {
        let Some(session) = session_of(op) else {
            continue;
        };
        if batch.sessions.iter().any(|known| known == session) {
            continue;
        }
        let index = batch.sessions.len();
        batch.sessions.push(session.to_owned());
        let id = text(session)?;
        let _ = match (op, holding.epochs.get(session)) {
            // A session new to the store: this process owns it from epoch 1; one another
            // process made under the same id is not taken. One this process made in a
            // commit whose outcome it did not learn is its own still.
            (Op::Session { options, .. }, None) => {
                batch.made.push(session.to_owned());
                writeln!(
                    batch.sql,
                    "EXECUTE cm_make({id}, {}, {now_s}, {owner}, {until}, '{index}');",
                    text(options)?
                )
            }
            (_, Some(epoch)) => writeln!(
                batch.sql,
                "EXECUTE cm_renew({until}, {now_s}, {id}, {owner}, {epoch}, '{index}');"
            ),
            (_, None) => return Err(Unwritable::NotHeld(session.to_owned())),
        };
    }
    for op in ops {
        write(&mut batch.sql, op, now_s)?;
    }
    batch.sql.push_str("COMMIT;\n");
    Ok(batch)
}

/// One op's statements.
fn write(sql: &mut String, op: &Op, now_s: i64) -> Result<(), Unwritable> {
    match op {
        Op::Counter { name, value } => {
            let _ = writeln!(
                sql,
                "EXECUTE cm_counter({}, {});",
                text(name)?,
                value.cast_signed()
            );
        }
        Op::Session { id, options } => {
            let _ = writeln!(
                sql,
                "EXECUTE cm_options({}, {}, {now_s});",
                text(id)?,
                text(options)?
            );
        }
        Op::Touch { .. } => {}
        Op::Value { session, key, json } => {
            let (session, key) = (text(session)?, text(key)?);
            let _ = match json {
                Some(json) => writeln!(sql, "EXECUTE cm_value({session}, {key}, {});", text(json)?),
                None => writeln!(sql, "EXECUTE cm_value_gone({session}, {key});"),
            };
        }
        Op::Calls { session, calls } => {
            let session = text(session)?;
            let _ = writeln!(sql, "EXECUTE cm_calls_gone({session});");
            for call in calls {
                let _ = writeln!(
                    sql,
                    "EXECUTE cm_call({session}, {}, {}, {});",
                    text(&call.cell_id.to_string())?,
                    call.call.number().cast_signed(),
                    text(&call.front_id)?
                );
            }
        }
        Op::Answer {
            session,
            cell,
            call,
            result,
        } => {
            let _ = writeln!(
                sql,
                "EXECUTE cm_answer({}, {}, {}, {});",
                text(session)?,
                text(cell)?,
                call.cast_signed(),
                bytes(result)
            );
        }
        Op::SessionGone { id } => {
            let id = text(id)?;
            for table in ["stored", "cells", "growth", "calls", "answers"] {
                let _ = writeln!(sql, "DELETE FROM {table} WHERE session = {id};");
            }
            let _ = writeln!(sql, "DELETE FROM sessions WHERE id = {id};");
        }
        Op::CellStart { .. }
        | Op::CellGrowth { .. }
        | Op::CellTail { .. }
        | Op::CellGone { .. } => write_cell(sql, op)?,
    }
    Ok(())
}

/// One cell op's statements.
fn write_cell(sql: &mut String, op: &Op) -> Result<(), Unwritable> {
    match op {
        Op::CellStart {
            session,
            cell,
            header,
            tail,
        } => {
            let (session, cell) = (text(session)?, text(cell)?);
            for table in ["cells", "growth"] {
                let _ = writeln!(
                    sql,
                    "DELETE FROM {table} WHERE session = {session} AND cell = {cell};"
                );
            }
            let _ = writeln!(
                sql,
                "EXECUTE cm_cell({session}, {cell}, {}, {});",
                bytes(header),
                bytes(tail)
            );
        }
        Op::CellGrowth {
            session,
            cell,
            seq,
            growth,
        } => {
            // Written again after a commit whose outcome was not learned, a step that is
            // there with the same body is kept; with another body, the journal forked and
            // the commit fails.
            let _ = writeln!(
                sql,
                "EXECUTE cm_growth({}, {}, {}, {});",
                text(session)?,
                text(cell)?,
                seq.cast_signed(),
                bytes(growth)
            );
        }
        Op::CellTail {
            session,
            cell,
            tail,
        } => {
            let _ = writeln!(
                sql,
                "EXECUTE cm_tail({}, {}, {});",
                text(session)?,
                text(cell)?,
                bytes(tail)
            );
        }
        Op::CellGone { session, cell } => {
            let (session, cell) = (text(session)?, text(cell)?);
            for table in ["cells", "growth", "answers"] {
                let _ = writeln!(
                    sql,
                    "DELETE FROM {table} WHERE session = {session} AND cell = {cell};"
                );
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_and_backslashes_and_refuse_nul() {
        assert_eq!(text("it's").unwrap(), "E'it''s'");
        assert_eq!(text("a\\'; DROP").unwrap(), "E'a\\\\''; DROP'");
        assert!(matches!(text("a\0b"), Err(Unwritable::Nul)));
        assert_eq!(bytes(&[0, 255, 16]), "E'\\\\x00ff10'::bytea");
    }

    #[test]
    fn a_session_held_by_no_lease_is_not_written() {
        let epochs = HashMap::new();
        let holding = Holding {
            owner: "me",
            epochs: &epochs,
            lease_ms: 1000,
            now_ms: 5000,
        };
        let touch = Op::Touch { id: "s1".into() };
        assert!(matches!(
            commit(&holding, &[touch]),
            Err(Unwritable::NotHeld(id)) if id == "s1"
        ));
    }
}
