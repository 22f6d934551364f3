//! TypeScript cells: type syntax is stripped before V8 compiles the module.
//!
//! Models read every tool as a TypeScript declaration, so they answer in TypeScript:
//! annotations, interfaces, `as`, `satisfies`, `x!`, generics. The cell thread compiles
//! the source as JavaScript first; only when V8 refuses it with a `SyntaxError` does it
//! come here. So plain JavaScript reaches V8 byte for byte, and only TypeScript pays for
//! stripping. swc's type stripper (strip-only mode) replaces types with whitespace, so
//! every line and column V8 later reports (errors, stacks) is the model's own.
//!
//! Constructs that would need a real transform (`enum`, `namespace` with values,
//! parameter properties, `import x = ...`, `export =`, `<T>expr` assertions, decorators,
//! JSX) are refused with a `SyntaxError` that names the construct, its position and what
//! to write instead. A syntax error swc finds reads like V8's own, with the position.
//!
//! Hostile input: the source is at most the cell's source size (the caller's cap); a
//! cheap linear scan refuses nesting deeper than [`MAX_NESTING`] before the recursive
//! parser sees it, and the stripper runs on a long-lived thread of its own with a large
//! stack, catching panics, so neither deep input nor a panic can take the runtime process
//! down.

use code_mode_protocol::texts;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};
use swc_common::errors::{DiagnosticBuilder, Emitter, Handler};
use swc_common::sync::Lrc;
use swc_common::{BytePos, SourceMap};
use swc_ts_fast_strip::{Mode, Options, TsError};

/// The deepest nesting of brackets, braces and parentheses a TypeScript cell may have.
/// Far above what any real cell uses; low enough that the parser's recursion stays within
/// [`STRIP_STACK_BYTES`].
pub(crate) const MAX_NESTING: usize = 1_000;

/// The stack of the thread that strips a cell, in bytes. Only the pages it touches are
/// used; the size bounds the recursion of the parser and of the tree walks.
const STRIP_STACK_BYTES: usize = 256 * 1024 * 1024;

/// A position in the cell's source: 1-based line and column, as V8 reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// Why a TypeScript cell could not be stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StripError {
    /// A syntax error (as neither JavaScript nor TypeScript), at a position when known.
    Syntax {
        message: String,
        position: Option<Position>,
    },
    /// Valid TypeScript that needs a transform, not just stripping: the error text.
    Refused(String),
}

/// A strip job for the stripper thread: the source and where to send the result.
type Job = (String, mpsc::Sender<Result<String, StripError>>);

/// The stripper thread's queue, started on first use (and again if it ever went away).
static STRIPPER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

/// Strips the types from `source`, on the stripper thread (see the module docs). One
/// long-lived thread, because swc sets up per-thread state that a fresh thread per cell
/// would pay for every time.
pub(crate) fn strip(source: &str) -> Result<String, StripError> {
    if let Some(position) = nesting_beyond_limit(source) {
        return Err(StripError::Refused(texts::typescript_too_deep(
            MAX_NESTING,
            position.line,
            position.column,
        )));
    }
    let internal = |what: &str| StripError::Syntax {
        message: format!("the TypeScript stripper {what}"),
        position: None,
    };
    let (reply, result) = mpsc::channel();
    let sent = {
        let mut stripper = code_mode_internal::sync::lock(&STRIPPER);
        let job = (source.to_owned(), reply);
        let unsent = match stripper.as_ref() {
            Some(queue) => queue.send(job).err().map(|mpsc::SendError(job)| job),
            None => Some(job),
        };
        match unsent {
            None => true,
            Some(job) => match start_stripper() {
                Ok(queue) => {
                    let sent = queue.send(job).is_ok();
                    *stripper = Some(queue);
                    sent
                }
                Err(error) => {
                    tracing::error!("the TypeScript stripper's thread could not start: {error}");
                    false
                }
            },
        }
    };
    if !sent {
        return Err(internal("could not start"));
    }
    result.recv().unwrap_or_else(|_| Err(internal("failed")))
}

/// Starts the stripper thread. A panic in swc fails that one job; the thread goes on.
fn start_stripper() -> std::io::Result<mpsc::Sender<Job>> {
    let (queue, jobs) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("code-mode-ts-strip".to_owned())
        .stack_size(STRIP_STACK_BYTES)
        .spawn(move || {
            for (source, reply) in jobs {
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| strip_here(source)))
                    .unwrap_or_else(|_| {
                        tracing::error!("the TypeScript stripper panicked");
                        Err(StripError::Syntax {
                            message: "the TypeScript stripper failed".to_owned(),
                            position: None,
                        })
                    });
                let _ = reply.send(result);
            }
        })?;
    Ok(queue)
}

/// Diagnostics swc reports, with their start.
type Reports = Arc<Mutex<Vec<(String, Option<BytePos>)>>>;

struct Collect(Reports);

impl Emitter for Collect {
    fn emit(&mut self, db: &mut DiagnosticBuilder<'_>) {
        let start = db.span.primary_span().map(|span| span.lo);
        code_mode_internal::sync::lock(&self.0).push((db.message(), start));
    }
}

/// Runs swc's stripper on this thread and turns its diagnostics into [`StripError`]s.
fn strip_here(source: String) -> Result<String, StripError> {
    let run = |source: String, tsx: bool| {
        let reports: Reports = Arc::default();
        let map: Lrc<SourceMap> = Lrc::default();
        let handler = Handler::with_emitter(false, false, Box::new(Collect(Arc::clone(&reports))));
        let mut options = Options {
            module: Some(true),
            filename: Some(super::MODULE_NAME.to_owned()),
            mode: Mode::StripOnly,
            ..Options::default()
        };
        options.parser.tsx = tsx;
        options.parser.decorators = true;
        let result = swc_ts_fast_strip::operate(&map, &handler, source, options);
        let reports = std::mem::take(&mut *code_mode_internal::sync::lock(&reports));
        let located: Vec<(String, Option<Position>)> = reports
            .into_iter()
            .map(|(message, start)| (message, start.map(|start| position(&map, start))))
            .collect();
        (result, located)
    };
    let (result, reports) = run(source.clone(), false);
    let first = reports.first().cloned();
    match result {
        Ok(output) => {
            if let Some(position) = decorator_position(&output.code, &source) {
                return Err(refused(Construct::Decorator, Some(position)));
            }
            Ok(output.code)
        }
        Err(TsError { code, .. }) => {
            let (message, position) = first.unwrap_or_else(|| (code.to_string(), None));
            if let Some(construct) = Construct::of(&message) {
                return Err(refused(construct, position));
            }
            // A script that parses only as TSX holds JSX.
            if run(source, true).0.is_ok() {
                return Err(refused(Construct::Jsx, position));
            }
            Err(StripError::Syntax { message, position })
        }
    }
}

/// The 1-based position of a byte position swc reported.
fn position(map: &SourceMap, at: BytePos) -> Position {
    let loc = map.lookup_char_pos(at);
    Position {
        line: loc.line,
        column: loc.col.0 + 1,
    }
}

/// TypeScript that needs a transform, not just stripping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Construct {
    Enum,
    Namespace,
    ImportEquals,
    ExportAssignment,
    ParameterProperty,
    AngleAssertion,
    Decorator,
    Jsx,
}

impl Construct {
    /// The construct a diagnostic of swc's stripper names, if any.
    fn of(message: &str) -> Option<Self> {
        let table = [
            ("enum is not supported", Construct::Enum),
            (
                "namespace declaration is not supported",
                Construct::Namespace,
            ),
            ("import equals declaration", Construct::ImportEquals),
            ("export assignment", Construct::ExportAssignment),
            ("parameter property", Construct::ParameterProperty),
            ("`<T>expr`", Construct::AngleAssertion),
        ];
        table
            .into_iter()
            .find(|(words, _)| message.contains(words))
            .map(|(_, construct)| construct)
    }

    /// What it is and what to write instead.
    fn advice(self) -> (&'static str, &'static str) {
        match self {
            Construct::Enum => texts::TYPESCRIPT_ENUM,
            Construct::Namespace => texts::TYPESCRIPT_NAMESPACE,
            Construct::ImportEquals => texts::TYPESCRIPT_IMPORT_EQUALS,
            Construct::ExportAssignment => texts::TYPESCRIPT_EXPORT_ASSIGNMENT,
            Construct::ParameterProperty => texts::TYPESCRIPT_PARAMETER_PROPERTY,
            Construct::AngleAssertion => texts::TYPESCRIPT_ANGLE_ASSERTION,
            Construct::Decorator => texts::TYPESCRIPT_DECORATOR,
            Construct::Jsx => texts::TYPESCRIPT_JSX,
        }
    }
}

/// The refusal of a construct: a `SyntaxError` text naming it, where it is and what to
/// write instead.
fn refused(construct: Construct, position: Option<Position>) -> StripError {
    let (what, instead) = construct.advice();
    let at = position.map_or_else(String::new, |position| {
        format!(" at line {}, column {}", position.line, position.column)
    });
    let location = format!(
        "{}{}",
        super::MODULE_NAME,
        position.map_or_else(String::new, |position| format!(
            ":{}:{}",
            position.line, position.column
        ))
    );
    StripError::Refused(texts::typescript_refused(what, &at, instead, &location))
}

/// The error text of a syntax error swc found, in V8's manner.
pub(crate) fn syntax_error_text(message: &str, position: Option<Position>) -> String {
    let message = message.trim_end_matches('.');
    match position {
        Some(position) => format!(
            "SyntaxError: {message}\n    at {}:{}:{}",
            super::MODULE_NAME,
            position.line,
            position.column
        ),
        None => format!("SyntaxError: {message}"),
    }
}

/// Where a decorator survived stripping: swc keeps decorators (they are JavaScript
/// syntax V8 does not have), so an `@` that is code in the output and was code in the
/// source marks one.
fn decorator_position(stripped: &str, source: &str) -> Option<Position> {
    let at = code_positions(stripped)
        .into_iter()
        .find(|&index| stripped.as_bytes()[index] == b'@')?;
    // Stripping keeps every byte offset, so the position is the source's.
    let before = &source[..at.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |line| line.chars().count())
        + 1;
    Some(Position { line, column })
}

/// Byte offsets of characters outside strings, template text and comments (a lexical
/// approximation: regular expression literals count as code).
fn code_positions(source: &str) -> Vec<usize> {
    let bytes = source.as_bytes();
    let mut code = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            quote @ (b'"' | b'\'' | b'`') => {
                index += 1;
                while index < bytes.len() && bytes[index] != quote {
                    index += if bytes[index] == b'\\' { 2 } else { 1 };
                }
                index += 1;
            }
            b'/' if bytes.get(index + 1) == Some(&b'/') => {
                while index < bytes.len() && bytes[index] != b'\n' {
                    index += 1;
                }
            }
            b'/' if bytes.get(index + 1) == Some(&b'*') => {
                index += 2;
                while index + 1 < bytes.len() && !(bytes[index] == b'*' && bytes[index + 1] == b'/')
                {
                    index += 1;
                }
                index += 2;
            }
            _ => {
                code.push(index);
                index += 1;
            }
        }
    }
    code
}

/// Where the nesting of `(`, `[` and `{` outside strings and comments first goes beyond
/// [`MAX_NESTING`], if it does. Linear and without recursion.
fn nesting_beyond_limit(source: &str) -> Option<Position> {
    let bytes = source.as_bytes();
    let mut depth = 0usize;
    for index in code_positions(source) {
        match bytes[index] {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    let before = &source[..index];
                    return Some(Position {
                        line: before.matches('\n').count() + 1,
                        column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
                    });
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_become_whitespace_and_positions_stay() {
        let source = "const n: number = 1;\nlet s = n as unknown as string;\n";
        let stripped = strip(source).unwrap();
        assert_eq!(stripped.len(), source.len());
        assert_eq!(stripped.lines().count(), source.lines().count());
        assert!(stripped.starts_with("const n         = 1;"), "{stripped}");
    }

    #[test]
    fn constructs_that_need_a_transform_are_refused_with_their_position() {
        let cases = [
            (
                "let a = 1;\nenum Color { Red }\n",
                "a TypeScript `enum` at line 2, column 1",
            ),
            (
                "namespace N { export const x = 1; }",
                "a TypeScript `namespace` with values at line 1",
            ),
            (
                "class A { constructor(private x: number) {} }",
                "parameter property",
            ),
            (
                "const x = <number>y;",
                "a `<T>expr` type assertion at line 1, column 11",
            ),
            ("@dec class A {}", "a decorator at line 1, column 1"),
            ("const el = <div>hi</div>;", "JSX"),
        ];
        for (source, expected) in cases {
            match strip(source) {
                Err(StripError::Refused(text)) => {
                    assert!(text.starts_with("SyntaxError: "), "{text}");
                    assert!(text.contains(expected), "{source}: {text}");
                }
                other => panic!("{source}: {other:?}"),
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!(
            "let x: number = {}1{};",
            "(".repeat(5_000),
            ")".repeat(5_000)
        );
        match strip(&deep) {
            Err(StripError::Refused(text)) => assert!(text.contains("too deep"), "{text}"),
            other => panic!("{other:?}"),
        }
        // Brackets inside strings and comments do not count.
        let quoted = format!(
            "let s: string = \"{}\"; // {}",
            "(".repeat(5_000),
            "[".repeat(5_000)
        );
        assert!(strip(&quoted).is_ok());
    }
}
