//! What the store holds, as the keeper remembers writing it, and the writes a change
//! needs against that: only what changed is encoded and written. A stored value is
//! rewritten when its text changed (the same shared text is recognised without reading
//! it); a cell's header is written once, its journal grows by appended batches, and its
//! tail is rewritten when it changed.

use crate::format::{self, Growth, Header, Tail};
use crate::{AnswerRecord, CallRecord, Changes, SessionRecord};
use code_mode_protocol::durable::DurableCell;
use code_mode_protocol::journal::CellJournal;
use code_mode_protocol::{CellId, StoredValues, ToolDefinition};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One write to the store. A batch of them is one transaction.
#[derive(Debug)]
pub(crate) enum Op {
    Counter {
        name: String,
        value: u64,
    },
    /// The session's row (made, or its options rewritten), touched now.
    Session {
        id: String,
        options: String,
    },
    /// A stored value set (`Some`) or deleted.
    Value {
        session: String,
        key: String,
        json: Option<Arc<str>>,
    },
    /// A cell the store did not have (any row it had under the id goes first).
    CellStart {
        session: String,
        cell: String,
        header: Vec<u8>,
        tail: Vec<u8>,
    },
    /// A batch the cell's journal grew by; a second write of one `seq` fails (on
    /// Postgres, one with the same body is kept: a commit whose outcome was not learned,
    /// written again).
    CellGrowth {
        session: String,
        cell: String,
        seq: u64,
        growth: Vec<u8>,
    },
    CellTail {
        session: String,
        cell: String,
        tail: Vec<u8>,
    },
    /// A cell that ended: it goes with its growth and its answers.
    CellGone {
        session: String,
        cell: String,
    },
    /// The session's calls waiting for the client, all of them.
    Calls {
        session: String,
        calls: Vec<CallRecord>,
    },
    Answer {
        session: String,
        cell: String,
        call: u64,
        result: Vec<u8>,
    },
    /// A session this process serves is still in use (it does not expire).
    Touch {
        id: String,
    },
    /// A session that closed (or expired): it goes with everything it had.
    SessionGone {
        id: String,
    },
}

impl Op {
    /// Whether the op may make the store bigger (refused past its size cap).
    pub(crate) fn adds_data(&self) -> bool {
        match self {
            Op::Session { .. }
            | Op::CellStart { .. }
            | Op::CellGrowth { .. }
            | Op::CellTail { .. }
            | Op::Answer { .. } => true,
            Op::Value { json, .. } => json.is_some(),
            Op::Calls { calls, .. } => !calls.is_empty(),
            Op::Counter { .. }
            | Op::Touch { .. }
            | Op::CellGone { .. }
            | Op::SessionGone { .. } => false,
        }
    }
}

/// A cell as last written.
#[derive(Debug, Clone)]
struct CellMemory {
    source: String,
    seed: u64,
    exec_call_id: Option<String>,
    tools: Arc<[ToolDefinition]>,
    stored: Arc<StoredValues>,
    clock: usize,
    issued: usize,
    entered: usize,
    next_seq: u64,
    tail: Tail,
}

impl CellMemory {
    /// Whether `journal` starts as this cell did (else it is another cell under its id).
    fn same_start(&self, journal: &CellJournal, exec_call_id: Option<&String>) -> bool {
        self.seed == journal.seed
            && self.exec_call_id.as_ref() == exec_call_id
            && self.source == journal.source
            && (Arc::ptr_eq(&self.tools, &journal.tools) || self.tools == journal.tools)
            && (Arc::ptr_eq(&self.stored, &journal.stored) || self.stored == journal.stored)
            && journal.clock.len() >= self.clock
            && journal.issued.len() >= self.issued
            && journal.entered.len() >= self.entered
    }
}

/// A session as last written.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionMemory {
    options: String,
    values: HashMap<String, Arc<str>>,
    cells: HashMap<CellId, CellMemory>,
    calls: Vec<CallRecord>,
    /// Written by this process (an orphan of an earlier one is not, until it is).
    pub(crate) live: bool,
}

/// What the keeper remembers of the store.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub(crate) sessions: HashMap<String, SessionMemory>,
    counters: HashMap<String, u64>,
    /// Sessions removed by this process: a checkpoint that still names one (taken before
    /// the removal) does not bring it back.
    gone: HashSet<String>,
}

/// How to undo what planning did to the memory when its writes fail.
#[derive(Debug, Default)]
pub(crate) struct Undo {
    sessions: Vec<(String, Option<SessionMemory>)>,
    counters: Vec<(String, Option<u64>)>,
    gone: Vec<String>,
}

impl Undo {
    /// Adds `later`'s undoing (undone before this one's).
    pub(crate) fn extend(&mut self, later: Undo) {
        self.sessions.extend(later.sessions);
        self.counters.extend(later.counters);
        self.gone.extend(later.gone);
    }
}

impl Written {
    /// The memory of what a store gave back at open.
    pub(crate) fn loaded(
        sessions: &[SessionRecord],
        calls: &[CallRecord],
        counters: &HashMap<String, u64>,
        next_seq: &HashMap<(String, String), u64>,
    ) -> Self {
        let mut written = Self {
            counters: counters.clone(),
            ..Self::default()
        };
        for record in sessions {
            let mut memory = SessionMemory {
                options: record.options.clone(),
                values: record.state.stored.clone(),
                calls: calls
                    .iter()
                    .filter(|call| call.session == record.id)
                    .cloned()
                    .collect(),
                ..SessionMemory::default()
            };
            sort_calls(&mut memory.calls);
            for cell in &record.state.cells {
                let tail = Tail::of(&cell.journal, &cell.in_flight);
                let seq = next_seq
                    .get(&(record.id.clone(), cell.cell_id.to_string()))
                    .copied()
                    .unwrap_or(0);
                memory
                    .cells
                    .insert(cell.cell_id.clone(), remembered(cell, tail, seq));
            }
            written.sessions.insert(record.id.clone(), memory);
        }
        written
    }

    /// Takes in the memory of sessions read after open (taken over from another process).
    pub(crate) fn adopt(&mut self, other: Written) {
        for (id, mut memory) in other.sessions {
            memory.live = false;
            self.gone.remove(&id);
            self.sessions.insert(id, memory);
        }
    }

    /// Undoes a plan whose writes failed, latest first.
    pub(crate) fn undo(&mut self, undo: Undo) {
        for (id, before) in undo.sessions.into_iter().rev() {
            match before {
                Some(memory) => self.sessions.insert(id, memory),
                None => self.sessions.remove(&id),
            };
        }
        for (name, before) in undo.counters.into_iter().rev() {
            match before {
                Some(value) => self.counters.insert(name, value),
                None => self.counters.remove(&name),
            };
        }
        for id in undo.gone {
            self.gone.remove(&id);
        }
    }

    /// Forgets a session the store no longer has (it expired).
    pub(crate) fn expired(&mut self, id: &str) {
        self.sessions.remove(id);
    }

    /// The writes `changes` needs, the memory updated as if they were done (`undo` takes
    /// it back).
    pub(crate) fn plan(&mut self, changes: &Changes, undo: &mut Undo) -> Result<Vec<Op>, String> {
        let mut ops = Vec::new();
        for (name, value) in &changes.counters {
            if self.counters.get(name) != Some(value) {
                undo.counters
                    .push((name.clone(), self.counters.insert(name.clone(), *value)));
                ops.push(Op::Counter {
                    name: name.clone(),
                    value: *value,
                });
            }
        }
        for id in &changes.removed {
            if self.gone.insert(id.clone()) {
                undo.gone.push(id.clone());
            }
            undo.sessions.push((id.clone(), self.sessions.remove(id)));
            ops.push(Op::SessionGone { id: id.clone() });
        }
        let mut calls: HashMap<&str, Vec<CallRecord>> = HashMap::new();
        for record in &changes.sessions {
            calls.entry(record.id.as_str()).or_default();
        }
        for call in &changes.calls {
            calls
                .entry(call.session.as_str())
                .or_default()
                .push(call.clone());
        }
        for record in &changes.sessions {
            if self.gone.contains(&record.id) {
                continue;
            }
            let before = self.sessions.get(&record.id).cloned();
            let mut memory = before.clone().unwrap_or_default();
            plan_session(record, &mut memory, before.is_none(), &mut ops)?;
            undo.sessions.push((record.id.clone(), before));
            self.sessions.insert(record.id.clone(), memory);
        }
        for (session, mut now) in calls {
            if self.gone.contains(session) {
                continue;
            }
            let Some(memory) = self.sessions.get_mut(session) else {
                continue;
            };
            sort_calls(&mut now);
            if memory.calls != now {
                if !undo.sessions.iter().any(|(id, _)| id == session) {
                    undo.sessions
                        .push((session.to_owned(), Some(memory.clone())));
                }
                memory.calls.clone_from(&now);
                ops.push(Op::Calls {
                    session: session.to_owned(),
                    calls: now,
                });
            }
        }
        Ok(ops)
    }
}

/// Calls in one order, so that two lists of the same calls compare equal.
fn sort_calls(calls: &mut [CallRecord]) {
    calls.sort_by_cached_key(|call| (call.cell_id.to_string(), call.call));
}

fn remembered(cell: &DurableCell, tail: Tail, next_seq: u64) -> CellMemory {
    CellMemory {
        source: cell.journal.source.clone(),
        seed: cell.journal.seed,
        exec_call_id: cell.exec_call_id.clone(),
        tools: Arc::clone(&cell.journal.tools),
        stored: Arc::clone(&cell.journal.stored),
        clock: cell.journal.clock.len(),
        issued: cell.journal.issued.len(),
        entered: cell.journal.entered.len(),
        next_seq,
        tail,
    }
}

/// The writes one session's record needs against `memory`, which is brought up to it.
fn plan_session(
    record: &SessionRecord,
    memory: &mut SessionMemory,
    new: bool,
    ops: &mut Vec<Op>,
) -> Result<(), String> {
    let id = &record.id;
    if new || memory.options != record.options || !memory.live {
        memory.options.clone_from(&record.options);
        ops.push(Op::Session {
            id: id.clone(),
            options: record.options.clone(),
        });
    }
    memory.live = true;
    plan_values(record, memory, ops);
    plan_cells(record, memory, ops)
}

/// The writes of a session's stored values: each value that changed, each key gone.
fn plan_values(record: &SessionRecord, memory: &mut SessionMemory, ops: &mut Vec<Op>) {
    let id = &record.id;
    let stored = &record.state.stored;
    for (key, json) in stored {
        let same = memory
            .values
            .get(key)
            .is_some_and(|old| Arc::ptr_eq(old, json) || old == json);
        if !same {
            ops.push(Op::Value {
                session: id.clone(),
                key: key.clone(),
                json: Some(Arc::clone(json)),
            });
        }
        memory.values.insert(key.clone(), Arc::clone(json));
    }
    let dropped: Vec<String> = memory
        .values
        .keys()
        .filter(|key| !stored.contains_key(*key))
        .cloned()
        .collect();
    for key in dropped {
        memory.values.remove(&key);
        ops.push(Op::Value {
            session: id.clone(),
            key,
            json: None,
        });
    }
}

/// The writes of a session's running cells: a new cell whole, a known one's growth and
/// tail, an ended one's removal.
fn plan_cells(
    record: &SessionRecord,
    memory: &mut SessionMemory,
    ops: &mut Vec<Op>,
) -> Result<(), String> {
    let id = &record.id;
    let mut seen: HashSet<&CellId> = HashSet::new();
    for cell in &record.state.cells {
        seen.insert(&cell.cell_id);
        let name = cell.cell_id.to_string();
        let tail = Tail::of(&cell.journal, &cell.in_flight);
        match memory.cells.get_mut(&cell.cell_id) {
            Some(known) if known.same_start(&cell.journal, cell.exec_call_id.as_ref()) => {
                let growth = Growth::past(&cell.journal, known.clock, known.issued, known.entered);
                if !growth.is_empty() {
                    ops.push(Op::CellGrowth {
                        session: id.clone(),
                        cell: name.clone(),
                        seq: known.next_seq,
                        growth: format::encode(&growth)?,
                    });
                    known.next_seq += 1;
                    known.clock = cell.journal.clock.len();
                    known.issued = cell.journal.issued.len();
                    known.entered = cell.journal.entered.len();
                }
                if known.tail != tail {
                    ops.push(Op::CellTail {
                        session: id.clone(),
                        cell: name,
                        tail: format::encode(&tail)?,
                    });
                    known.tail = tail;
                }
            }
            _ => {
                let header = Header::of(&cell.journal, cell.exec_call_id.as_ref());
                ops.push(Op::CellStart {
                    session: id.clone(),
                    cell: name.clone(),
                    header: format::encode(&header)?,
                    tail: format::encode(&tail)?,
                });
                let growth = Growth::past(&cell.journal, 0, 0, 0);
                let next_seq = if growth.is_empty() {
                    0
                } else {
                    ops.push(Op::CellGrowth {
                        session: id.clone(),
                        cell: name,
                        seq: 0,
                        growth: format::encode(&growth)?,
                    });
                    1
                };
                memory
                    .cells
                    .insert(cell.cell_id.clone(), remembered(cell, tail, next_seq));
            }
        }
    }
    let ended: Vec<CellId> = memory
        .cells
        .keys()
        .filter(|cell| !seen.contains(cell))
        .cloned()
        .collect();
    for cell in ended {
        memory.cells.remove(&cell);
        ops.push(Op::CellGone {
            session: id.clone(),
            cell: cell.to_string(),
        });
    }
    Ok(())
}

/// The write that records `answer`.
pub(crate) fn answer_op(answer: &AnswerRecord) -> Result<Op, String> {
    Ok(Op::Answer {
        session: answer.session.clone(),
        cell: answer.cell_id.to_string(),
        call: answer.call.number(),
        result: format::encode(&format::result_out(&answer.result))?,
    })
}
