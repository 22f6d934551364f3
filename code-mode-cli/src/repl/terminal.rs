//! The REPL on a terminal: rustyline reads entries (editing, history, multi-line entries
//! that continue until they are complete), and Ctrl-C is a key at the prompt and a signal
//! while a cell runs (see [`super::interruptible`]).

use super::{HELP, Repl};
use crate::Failure;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{
    Cmd, ConditionalEventHandler, Editor, Event, EventContext, EventHandler, KeyEvent, Movement,
    RepeatCount,
};
use std::path::PathBuf;

/// History entries kept in the history file.
const HISTORY_SIZE: usize = 1000;

/// Completes entries: an incomplete one continues on the next line.
struct EntryHelper;

impl rustyline::completion::Completer for EntryHelper {
    type Candidate = String;
}

impl rustyline::hint::Hinter for EntryHelper {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for EntryHelper {}

impl Validator for EntryHelper {
    fn validate(&self, context: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if is_complete(context.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}

impl rustyline::Helper for EntryHelper {}

/// Ctrl-C at the prompt: clears an entry being typed; on an empty one, quits.
struct CtrlC;

impl ConditionalEventHandler for CtrlC {
    fn handle(
        &self,
        _event: &Event,
        _count: RepeatCount,
        _positive: bool,
        context: &EventContext<'_>,
    ) -> Option<Cmd> {
        Some(if context.line().is_empty() {
            Cmd::Interrupt
        } else {
            Cmd::Kill(Movement::WholeBuffer)
        })
    }
}

/// `~/.code_mode_history`, when there is a home directory.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(".code_mode_history"))
}

type LineEditor = Editor<EntryHelper, DefaultHistory>;

/// Reads and runs entries until Ctrl-C at an empty prompt, Ctrl-D or `:quit`.
#[expect(clippy::print_stderr, reason = "the REPL talks to its user on stderr")]
pub(super) async fn run(repl: &mut Repl) -> Result<(), Failure> {
    let config = rustyline::Config::builder()
        .max_history_size(HISTORY_SIZE)
        .map_err(|error| Failure::usage(error.to_string()))?
        .auto_add_history(true)
        .build();
    let mut editor: LineEditor =
        Editor::with_config(config).map_err(|error| Failure::usage(error.to_string()))?;
    editor.set_helper(Some(EntryHelper));
    editor.bind_sequence(
        KeyEvent::ctrl('C'),
        EventHandler::Conditional(Box::new(CtrlC)),
    );
    let history = history_file();
    if let Some(path) = &history {
        // A missing or unreadable history file just means no history yet.
        let _ = editor.load_history(path);
    }
    // From now on Ctrl-C is ours: while a cell runs it interrupts the session's cells.
    repl.interrupts = Some(
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|error| Failure::usage(format!("cannot handle Ctrl-C: {error}")))?,
    );
    eprintln!("code-mode repl: {HELP}");
    let mut editor = Some(editor);
    loop {
        let mut taken = editor.take().expect("the editor is back after each line");
        // rustyline blocks: read on a blocking thread, the session's tasks keep running.
        let (returned, line) = tokio::task::spawn_blocking(move || {
            let line = taken.readline("code-mode> ");
            (taken, line)
        })
        .await
        .map_err(|error| Failure::usage(format!("the line editor failed: {error}")))?;
        editor = Some(returned);
        let entry = match line {
            Ok(entry) => entry,
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
            Err(error) => return Err(Failure::usage(format!("cannot read input: {error}"))),
        };
        let trimmed = entry.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with(':') {
            if !repl.command(trimmed).await {
                break;
            }
        } else {
            repl.run_entry(&entry).await;
        }
    }
    if let (Some(path), Some(editor)) = (&history, editor.as_mut())
        && let Err(error) = editor.save_history(path)
    {
        tracing::debug!(
            "the REPL history was not saved to {}: {error}",
            path.display()
        );
    }
    Ok(())
}

/// Words after which a `/` begins a regular expression literal rather than a division.
const REGEX_AFTER_WORDS: [&str; 14] = [
    "return",
    "typeof",
    "instanceof",
    "case",
    "do",
    "else",
    "in",
    "of",
    "new",
    "delete",
    "void",
    "throw",
    "yield",
    "await",
];

/// Whether a `/` (not a comment) begins a regular expression literal, from what came
/// before it: the last significant character outside strings and comments, and the word
/// it ends, if any. At the start, after an operator or an opening bracket, and after a
/// keyword that takes an expression, it does; after an operand (a name, a number, a
/// closing bracket or parenthesis, a string) it is a division.
fn regex_can_start(last: Option<char>, word: &str) -> bool {
    match last {
        None => true,
        Some(character) if character.is_alphanumeric() || matches!(character, '_' | '$') => {
            REGEX_AFTER_WORDS.contains(&word)
        }
        Some(character) => "(,=:[!&|?{};+-*%<>~^".contains(character),
    }
}

/// Skips a regular expression literal after its opening `/`: its body (escapes and
/// character classes included, where a `/` does not end it) and its flags. `false` if the
/// line or the input ends first: V8 reports that better than a reader would.
fn skip_regex(characters: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    let mut in_class = false;
    while let Some(next) = characters.next() {
        match next {
            '\\' => match characters.next() {
                None | Some('\n') => return false,
                Some(_) => {}
            },
            '\n' => return false,
            '[' => in_class = true,
            ']' => in_class = false,
            '/' if !in_class => {
                while characters.next_if(|flag| flag.is_alphanumeric()).is_some() {}
                return true;
            }
            _ => {}
        }
    }
    false
}

/// The characters of an entry being read.
type Characters<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Skips a line comment after its `//`: to the end of its line.
fn skip_line_comment(characters: &mut Characters<'_>) {
    for next in characters.by_ref() {
        if next == '\n' {
            break;
        }
    }
}

/// Skips a block comment after its `/*`; `false` if the input ends first.
fn skip_block_comment(characters: &mut Characters<'_>) -> bool {
    let mut previous = '\0';
    for next in characters.by_ref() {
        if previous == '*' && next == '/' {
            return true;
        }
        previous = next;
    }
    false
}

/// Skips a string literal after its opening `quote`; `false` if its line or the input
/// ends first.
fn skip_string(characters: &mut Characters<'_>, quote: char) -> bool {
    while let Some(next) = characters.next() {
        match next {
            '\\' => {
                characters.next();
            }
            '\n' => return false,
            _ if next == quote => return true,
            _ => {}
        }
    }
    false
}

/// Inside a template literal: skips to its end (`Some('`')`) or to a `${`
/// (`Some('{')`, which opens a bracket); `None` if the input ends first.
fn skip_template(characters: &mut Characters<'_>) -> Option<char> {
    while let Some(next) = characters.next() {
        match next {
            '\\' => {
                characters.next();
            }
            '`' => return Some('`'),
            '$' if characters.peek() == Some(&'{') => {
                characters.next();
                return Some('{');
            }
            _ => {}
        }
    }
    None
}

/// The last significant character outside strings and comments, and the word it ends:
/// what tells a regular expression from a division.
#[derive(Default)]
struct Before {
    last: Option<char>,
    word: String,
}

impl Before {
    fn saw(&mut self, character: char) {
        if character.is_whitespace() {
            return;
        }
        let in_word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '$');
        if in_word(character) {
            if !self.last.is_some_and(in_word) {
                self.word.clear();
            }
            self.word.push(character);
        } else {
            self.word.clear();
        }
        self.last = Some(character);
    }
}

/// Whether the entry's last line asks for more: a line continuation, or a trailing
/// operator (`a +`, `x =`; not `i++`).
fn asks_for_more(trimmed: &str) -> bool {
    let last_line = trimmed.lines().last().unwrap_or_default().trim_end();
    if last_line.ends_with('\\') {
        return true;
    }
    let ends_with_operator = [
        '+', '-', '*', '/', '%', '=', '&', '|', '^', '!', '<', '>', '?', ':', ',', '.',
    ]
    .iter()
    .any(|operator| last_line.ends_with(*operator));
    ends_with_operator && !last_line.ends_with("++") && !last_line.ends_with("--")
}

/// Whether `source` is a complete entry: no bracket, string, template literal or block
/// comment left open, and no line continuation or trailing operator that asks for more.
/// Commands (`:wait 1`) are always complete. A heuristic, as node's REPL has one: whether
/// a `/` begins a regular expression literal is told from what comes before it
/// ([`regex_can_start`]), and an unterminated literal ends the entry (V8 reports it).
pub(super) fn is_complete(source: &str) -> bool {
    let trimmed = source.trim();
    if trimmed.is_empty() || trimmed.starts_with(':') {
        return true;
    }
    let mut open: Vec<char> = Vec::new();
    let mut characters = source.chars().peekable();
    let mut before = Before::default();
    while let Some(character) = characters.next() {
        match character {
            '/' if characters.peek() == Some(&'/') => {
                skip_line_comment(&mut characters);
                continue;
            }
            '/' if characters.peek() == Some(&'*') => {
                characters.next();
                if !skip_block_comment(&mut characters) {
                    return false;
                }
                continue;
            }
            '/' if regex_can_start(before.last, &before.word) => {
                if !skip_regex(&mut characters) {
                    return true;
                }
                // The literal is an operand, like a name: a `/` after it divides.
                before.saw('a');
                continue;
            }
            '"' | '\'' if !skip_string(&mut characters, character) => return false,
            '`' => open.push('`'),
            '(' | '[' | '{' => open.push(character),
            // A stray closer is a syntax error V8 reports better: the entry is done.
            ')' | ']' | '}' => drop(open.pop()),
            _ => {}
        }
        before.saw(character);
        // Inside a template literal, only its end and `${` matter.
        while open.last() == Some(&'`') {
            let Some(reached) = skip_template(&mut characters) else {
                return false;
            };
            if reached == '`' {
                open.pop();
            } else {
                open.push(reached);
            }
            before = Before::default();
            before.saw(reached);
        }
    }
    open.is_empty() && !asks_for_more(trimmed)
}

#[cfg(test)]
mod tests {
    use super::is_complete;

    #[test]
    fn complete_entries_run_and_open_ones_continue() {
        for complete in [
            "text(1)",
            "store('k', 42); text(load('k'))",
            "for (let i = 0; i < 3; i++) text(i)",
            "const s = `a ${1 + 2} b`; text(s)",
            "text('a // not a comment')",
            "text(1) // a comment (",
            "/* done */ text(2)",
            "i++",
            ":wait 1",
            "text(\"}\")",
            "text(/[\"(]/.test('a'))",
            "const r = /\\//; text(r.source)",
            "text('a/b'.split(/\\//g).length)",
            "const a = 4, b = 2; text(a / b / 1)",
            "text([4].map((x) => x / 2)[0] / 1)",
            "text((1) / 2)",
            "const s = 'x'; text(typeof /[{]/ === 'object')",
            "text(/unterminated",
        ] {
            assert!(is_complete(complete), "{complete:?} is complete");
        }
        for open in [
            "for (const x of [1, 2]) {",
            "text(",
            "const s = `a ${",
            "const s = `line",
            "/* still",
            "text('unterminated",
            "const x = 1 +",
            "const y =",
            "tools.echo({ a: 1 })\n  .then((r) =>",
            "text(1) \\",
            "[1, 2,",
            "if (/\\{/.test('{')) {",
            "text(/[)]/.source,",
            "const half = 4 / 2 + (",
        ] {
            assert!(!is_complete(open), "{open:?} is open");
        }
    }
}
