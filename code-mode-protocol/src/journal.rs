//! A cell's journal as data (CONTRACT §7, "Durable cells"): what a session that runs cells
//! reports of each one ([`JournalEntry`], as it happens, to its delegate's
//! [`crate::CodeModeSessionDelegate::journal`]), the whole journal a cell is rebuilt from
//! on another runtime ([`CellJournal`]), and how a delegate puts the one together from the
//! other and from its own traffic ([`JournalBuilder`]).
//!
//! The session reports only what its delegate cannot see: a nested call the delegate
//! answers is known to the delegate (its tool and argument, so its hash, and its answer),
//! so the session reports neither; it reports the calls it answers itself
//! (`tools.tool_search`), the timers that fired, and where each of those entered the cell
//! among the delegate's answers. A runtime process forwards the entries to its host, which
//! keeps each running cell's journal that way; when the runtime is lost, the host rebuilds
//! the cell from it on a fresh one. Nothing more crosses the wire for a nested call than
//! the call and its answer.

use crate::ids::{CallId, ToolError};
use crate::json_text::JsonText;
use crate::model::ToolDefinition;
use crate::stored::StoredValues;
use std::sync::Arc;

/// A command that entered a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalCommand {
    /// The answer to the cell's nested call `call`.
    ToolResult {
        call: CallId,
        result: Result<JsonText, ToolError>,
    },
    /// Timer `id` fired.
    TimerFired { id: u64 },
}

/// One thing a cell's journal gained that its delegate does not see, in the order the
/// cell's session saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// The cell started: the seed of its `Math.random()`. Reported while the session's
    /// committed values are exactly the cell's snapshot (before any later commit), so a
    /// host that applies commits in order has the cell's stored values at this entry.
    Started { seed: u64 },
    /// Live readings of the cell's clock, in order.
    Clock(Vec<u64>),
    /// The cell made nested call `call`, which its session answers itself: the hash of
    /// its tool name and argument ([`call_hash`]) and the tool's name.
    Issued {
        call: CallId,
        hash: u64,
        tool: String,
    },
    /// A command that did not come from the delegate (a timer, an answer of the session's
    /// own) entered the cell as its `index`-th command (from 0). Every other command is an
    /// answer of the delegate's, in the order the delegate gave them.
    Entered { index: u64, command: JournalCommand },
    /// The cell ran `yield_control()`.
    Yielded,
    /// The journal passed its cap: the cell can no longer be rebuilt.
    NotDurable,
}

/// Everything a cell is rebuilt from.
#[derive(Debug, Clone, PartialEq)]
pub struct CellJournal {
    /// The cell's source, as its exec sent it.
    pub source: String,
    /// Its tools.
    pub tools: Arc<[ToolDefinition]>,
    /// The stored values it started from.
    pub stored: Arc<StoredValues>,
    pub seed: u64,
    /// Its clock readings, in order.
    pub clock: Vec<u64>,
    /// Its nested calls in the order it made them (call `n` at `n - 1`): hash and tool.
    pub issued: Vec<(u64, String)>,
    /// The commands that entered it, in order.
    pub entered: Vec<JournalCommand>,
    /// Output items, notifications and yields it gave that were delivered: a rebuilt cell
    /// drops as many.
    pub outputs: u64,
    pub notifications: u64,
    pub yields: u64,
}

/// A nested call's identity as a journal checks it: FNV-1a over the tool's name and its
/// argument's JSON text (`None`: no argument). Stable across processes and builds.
pub fn call_hash(name: &str, input: Option<&str>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(name.as_bytes());
    match input {
        Some(input) => {
            eat(&[1]);
            eat(input.as_bytes());
        }
        None => eat(&[0]),
    }
    hash
}

impl CellJournal {
    /// The journal of a cell that started from `source`, `tools` and `stored` with the
    /// random seed `seed` (its [`JournalEntry::Started`]).
    pub fn start(
        source: String,
        tools: Arc<[ToolDefinition]>,
        stored: Arc<StoredValues>,
        seed: u64,
    ) -> Self {
        Self {
            source,
            tools,
            stored,
            seed,
            clock: Vec::new(),
            issued: Vec::new(),
            entered: Vec::new(),
            outputs: 0,
            notifications: 0,
            yields: 0,
        }
    }
}

/// What a delegate that keeps a cell's journal knows of it: the session's entries, the
/// calls it was asked and the answers it gave, in order. [`JournalBuilder::build`] puts
/// them together.
#[derive(Debug, Clone)]
pub struct JournalBuilder {
    /// The start, the clock, the counts; `issued` and `entered` of a journal it was
    /// resumed from.
    journal: CellJournal,
    /// Calls made since, by number.
    issued: std::collections::BTreeMap<u64, (u64, String)>,
    /// Commands the session reported, by their place.
    reported: std::collections::BTreeMap<u64, JournalCommand>,
    /// The delegate's answers since, in the order it gave them.
    answers: Vec<JournalCommand>,
    durable: bool,
}

impl JournalBuilder {
    /// The builder of a cell's journal from `journal` on (a new cell's, or the one it was
    /// rebuilt from).
    pub fn new(journal: CellJournal) -> Self {
        Self {
            journal,
            issued: std::collections::BTreeMap::new(),
            reported: std::collections::BTreeMap::new(),
            answers: Vec::new(),
            durable: true,
        }
    }

    /// The journal it was started from, to fill in (its source and tools, its counts).
    pub fn journal_mut(&mut self) -> &mut CellJournal {
        &mut self.journal
    }

    /// An entry the session reported.
    pub fn apply(&mut self, entry: JournalEntry) {
        match entry {
            JournalEntry::Started { .. } => {}
            JournalEntry::Clock(readings) => self.journal.clock.extend(readings),
            JournalEntry::Issued { call, hash, tool } => {
                self.issued.insert(call.number(), (hash, tool));
            }
            JournalEntry::Entered { index, command } => {
                self.reported.insert(index, command);
            }
            JournalEntry::Yielded => self.journal.yields += 1,
            JournalEntry::NotDurable => self.durable = false,
        }
    }

    /// The delegate was asked nested call `call` (`tool` with `input`).
    pub fn asked(&mut self, call: CallId, tool: &str, input: Option<&str>) {
        self.issued
            .insert(call.number(), (call_hash(tool, input), tool.to_owned()));
    }

    /// The delegate answered nested call `call`: the answer enters the cell after those
    /// given before it.
    pub fn answered(&mut self, call: CallId, result: Result<crate::JsonText, ToolError>) {
        self.answers
            .push(JournalCommand::ToolResult { call, result });
    }

    /// The whole journal, or `None` when it is not whole (past its cap, or a call or a
    /// command missing from it).
    pub fn build(&self) -> Option<CellJournal> {
        let mut journal = self.journal.clone();
        self.walk(|step| match step {
            Step::Issued(index, call) if index < journal.issued.len() => {
                journal.issued[index] = call.clone();
            }
            Step::Issued(_, call) => journal.issued.push(call.clone()),
            Step::Entered(command) => journal.entered.push(command.clone()),
        })?;
        Some(journal)
    }

    /// Whether [`Self::build`] would give a journal, without making it.
    pub fn is_whole(&self) -> bool {
        self.walk(|_| {}).is_some()
    }

    /// Goes through what is added to the journal it started from, in order: each call made
    /// since at its place (replacing one there, or next), then each command after those
    /// already entered (the session's reports at their places, the delegate's answers in
    /// between). `None` as soon as something is missing.
    fn walk<'a>(&'a self, mut step: impl FnMut(Step<'a>)) -> Option<()> {
        if !self.durable {
            return None;
        }
        let mut issued = self.journal.issued.len();
        for (number, call) in &self.issued {
            let index = usize::try_from(number.checked_sub(1)?).ok()?;
            match index.cmp(&issued) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => issued += 1,
                std::cmp::Ordering::Greater => return None,
            }
            step(Step::Issued(index, call));
        }
        let mut answers = self.answers.iter();
        let mut reported = self.reported.iter().peekable();
        let entered = self.journal.entered.len();
        for index in entered..entered + self.reported.len() + self.answers.len() {
            let index = index as u64;
            let command = match reported.peek() {
                Some((at, _)) if **at == index => reported.next().map(|(_, command)| command),
                _ => answers.next(),
            };
            step(Step::Entered(command?));
        }
        Some(())
    }
}

/// One thing [`JournalBuilder::walk`] adds to a journal.
enum Step<'a> {
    /// A call, at its index in `issued`.
    Issued(usize, &'a (u64, String)),
    /// The next command entered.
    Entered(&'a JournalCommand),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(call: u64) -> JournalCommand {
        JournalCommand::ToolResult {
            call: CallId::new(call),
            result: Ok(crate::JsonText::new(call.to_string())),
        }
    }

    #[test]
    fn a_call_hash_tells_names_arguments_and_no_argument_apart() {
        let hashes = [
            call_hash("read", Some("{}")),
            call_hash("read", Some("{} ")),
            call_hash("reads", Some("{}")),
            call_hash("read", None),
            call_hash("read", Some("")),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(call_hash("read", Some("{}")), hashes[0]);
    }

    #[test]
    fn reported_commands_keep_their_places_among_the_delegates_answers() {
        let start = CellJournal::start(String::new(), Arc::from([]), Arc::default(), 1);
        let mut builder = JournalBuilder::new(start);
        builder.asked(CallId::new(1), "a", None);
        builder.apply(JournalEntry::Issued {
            call: CallId::new(3),
            hash: 9,
            tool: "tool_search".into(),
        });
        builder.asked(CallId::new(2), "b", Some("1"));
        builder.answered(CallId::new(2), answer(2).result_of());
        builder.apply(JournalEntry::Entered {
            index: 1,
            command: JournalCommand::TimerFired { id: 1 },
        });
        builder.answered(CallId::new(1), answer(1).result_of());
        builder.apply(JournalEntry::Entered {
            index: 3,
            command: answer(3),
        });
        assert!(builder.is_whole());
        let journal = builder.build().expect("whole");
        assert_eq!(
            journal.entered,
            [
                answer(2),
                JournalCommand::TimerFired { id: 1 },
                answer(1),
                answer(3)
            ]
        );
        assert_eq!(
            journal
                .issued
                .iter()
                .map(|(_, tool)| tool.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "tool_search"]
        );
        assert_eq!(journal.issued[1].0, call_hash("b", Some("1")));
        // A call missing from the middle, or a cap passed, leaves no journal.
        let mut gap = JournalBuilder::new(journal.clone());
        gap.asked(CallId::new(6), "c", None);
        assert!(gap.build().is_none() && !gap.is_whole());
        // A command missing: the session reported the one after the next.
        let mut hole = JournalBuilder::new(journal.clone());
        hole.apply(JournalEntry::Entered {
            index: 5,
            command: JournalCommand::TimerFired { id: 2 },
        });
        assert!(hole.build().is_none() && !hole.is_whole());
        let mut capped = JournalBuilder::new(journal);
        capped.apply(JournalEntry::NotDurable);
        assert!(capped.build().is_none() && !capped.is_whole());
    }

    impl JournalCommand {
        fn result_of(self) -> Result<crate::JsonText, ToolError> {
            match self {
                JournalCommand::ToolResult { result, .. } => result,
                JournalCommand::TimerFired { .. } => unreachable!(),
            }
        }
    }
}
