//! The hostile corpus of HOSTILE.md, shared by every front that must survive it (the IPC
//! provider's test, the Codex front's): each case's source and its classified outcome.

use code_mode_protocol::CellResponse;

/// The CPU budget of the hostile session: short, so CPU-bound cases end quickly.
pub const CPU_BUDGET_MS: u64 = 1_500;

pub const CPU: &str = "CPU budget exceeded: the cell used its 1.5 s of CPU time and was stopped";
pub const HEAP: &str = "Out of memory: the cell reached its heap limit of 128 MiB and was stopped";
pub const STALLED: &str = "exec cell cannot finish: the script is awaiting a promise that nothing can settle (no nested tool calls or timers are pending)";
pub const CAP: &str = "tools.echo was not called: this cell already has 1024 nested tool calls in flight, the most allowed";
pub const DEPTH: &str = "tools.echo could not convert its argument to JSON: value is nested deeper than the limit of 128 levels";

/// A classified outcome.
pub enum Outcome {
    /// Completed successfully with exactly these text items.
    Texts(&'static [&'static str]),
    /// Completed with exactly this error text.
    Error(&'static str),
    /// Completed with an error text starting with this.
    ErrorStarting(&'static str),
    /// Completed successfully; the last item is this text (the count before it varies).
    LastText(&'static str),
    /// Completed with an error text starting with this, cut at the error-text cap of
    /// 64 KiB and ending with the truncation marker.
    ErrorCut(&'static str),
    /// Any one of these.
    AnyOf(&'static [Outcome]),
}

/// The most bytes of an error text the runtime copies out of V8.
pub const ERROR_TEXT_CAP: usize = 64 * 1024;

impl Outcome {
    pub fn matches(&self, response: &CellResponse) -> bool {
        let CellResponse::Result { content_items, .. } = response else {
            return false;
        };
        let error_text = response.error_text();
        match self {
            Outcome::Texts(expected) => {
                error_text.is_none()
                    && content_items
                        .iter()
                        .map(|item| item.as_text())
                        .collect::<Vec<_>>()
                        == expected.iter().map(|text| Some(*text)).collect::<Vec<_>>()
            }
            Outcome::Error(expected) => error_text == Some(*expected),
            Outcome::ErrorStarting(prefix) => {
                error_text.is_some_and(|text| text.starts_with(prefix))
            }
            Outcome::LastText(expected) => {
                error_text.is_none()
                    && content_items.last().and_then(|item| item.as_text()) == Some(*expected)
            }
            Outcome::ErrorCut(prefix) => error_text.is_some_and(|text| {
                let (cut, marker) = text.split_once('\u{2026}').unwrap_or((text, ""));
                text.starts_with(prefix)
                    && cut.len() == ERROR_TEXT_CAP
                    && marker.starts_with(" [truncated: the text has 1000000")
                    && marker.ends_with(" characters]")
            }),
            Outcome::AnyOf(options) => options.iter().any(|option| option.matches(response)),
        }
    }
}

use Outcome::*;

/// A generated source that lives as long as the corpus.
pub fn leak(source: String) -> &'static str {
    Box::leak(source.into_boxed_str())
}

/// Every case of HOSTILE.md: its name, its source and its classified outcome. The cells
/// call `tools.echo` (answers its argument) and `tools.big` (answers a string of as many
/// bytes as its argument), and run with a CPU budget of [`CPU_BUDGET_MS`].
pub fn corpus() -> Vec<(&'static str, &'static str, Outcome)> {
    vec![
        // CPU and termination
        ("1 while", "while (true) {}", Error(CPU)),
        ("1 for", "for (;;) {}", Error(CPU)),
        (
            "2 microtask loop",
            "await Promise.resolve().then(() => { while (true) {} });",
            Error(CPU),
        ),
        (
            "3 endless microtasks",
            "(function f() { Promise.resolve().then(f); })();",
            Error(CPU),
        ),
        (
            "3 queueMicrotask is absent",
            "(function f() { queueMicrotask(f); })();",
            ErrorStarting("ReferenceError: queueMicrotask is not defined"),
        ),
        (
            "4 nothing pending",
            "await new Promise(() => {});",
            Error(STALLED),
        ),
        (
            "5 exponential catch",
            "function f() { try { f() } catch { f() } } f();",
            Error(CPU),
        ),
        (
            "6 toJSON loop via text",
            "text({ toJSON() { for (;;) {} } });",
            Error(CPU),
        ),
        (
            "6 getter loop via a tool argument",
            "await tools.echo({ get x() { for (;;) {} } });",
            Error(CPU),
        ),
        (
            "7 stack getter loop",
            "throw { get stack() { for (;;); } };",
            Error(CPU),
        ),
        // Memory
        (
            "8 string growth",
            "let s = ''; while (true) s += 'Hello';",
            AnyOf(&[
                Error(HEAP),
                ErrorStarting("RangeError: Invalid string length"),
                Error(CPU),
            ]),
        ),
        (
            "9 arrays",
            "const a = []; for (;;) a.push(new Array(1e6).fill(0));",
            Error(HEAP),
        ),
        (
            "10 huge repeat",
            "try { 'x'.repeat(2 ** 30); } catch (e) { text(e.constructor.name); }",
            Texts(&["RangeError"]),
        ),
        (
            "11 array buffers",
            "const b = []; for (;;) b.push(new ArrayBuffer(256 * 2 ** 20));",
            ErrorStarting("RangeError: Array buffer allocation failed"),
        ),
        (
            "12 a 60 MiB tool result",
            "try { await tools.big(60 * 2 ** 20); text('delivered'); } catch (e) { text(e); }",
            Texts(&[
                "tool result rejected: 62914562 bytes is more than the limit of 33554432 bytes",
            ]),
        ),
        // Stack and depth
        (
            "13 recursion",
            "function f() { f() } try { f(); } catch (e) { text(e.message); } text('continues');",
            Texts(&["Maximum call stack size exceeded", "continues"]),
        ),
        (
            "13 uncaught recursion",
            "function f() { f() } f();",
            ErrorStarting("RangeError: Maximum call stack size exceeded"),
        ),
        (
            "14 text at depth",
            "let n = 0; function f() { n++; text('x'); f(); } try { f(); } catch (e) { text(e.constructor.name + ' ' + (n > 1000)); }",
            LastText("RangeError true"),
        ),
        (
            "14 tools at depth",
            "function f() { tools.echo(1); f() } try { f(); } catch (e) { text(e.constructor.name); }",
            Texts(&["RangeError"]),
        ),
        (
            "15 deep argument",
            "let o = {}; for (let i = 0; i < 1e6; i++) o = { o }; await tools.echo(o);",
            Error(DEPTH),
        ),
        // Attacks on the helpers
        (
            "16 Promise constructor getter",
            "Object.defineProperty(Promise.prototype, 'constructor', { get() { throw 'x' } }); const p = tools.echo(1); text(p instanceof Promise); Object.defineProperty(Promise.prototype, 'constructor', { value: Promise }); text(await p);",
            Texts(&["true", "1"]),
        ),
        (
            "17 Object.prototype.then",
            "Object.prototype.then = (r) => r('pwned'); const v = await tools.echo({ user: 'Ada' }); delete Object.prototype.then; text(v);",
            Texts(&[r#"{"user":"Ada"}"#]),
        ),
        (
            "18 JSON replaced",
            "JSON.stringify = () => '{}'; JSON.parse = () => ({ admin: true }); store('k', { a: 1 }); const v = await tools.echo({ b: 2 }); text(load('k')); text(v);",
            Texts(&[r#"{"a":1}"#, r#"{"b":2}"#]),
        ),
        (
            "19 __proto__ result",
            "const v = await tools.echo(JSON.parse('{\"__proto__\": {\"isAdmin\": true}}')); text(({}).isAdmin === undefined && v.isAdmin === undefined);",
            Texts(&["true"]),
        ),
        (
            "20 overwriting helpers",
            "for (const f of [() => { tools.echo = () => 'fake'; }, () => { globalThis.tools = {}; }, () => { delete globalThis.text; }]) { try { f(); } catch (e) { text(e.constructor.name); } } text(await tools.echo('real'));",
            Texts(&["TypeError", "TypeError", "TypeError", "real"]),
        ),
        (
            "21 throwing proxy",
            "try { await tools.echo(new Proxy({}, { ownKeys() { throw new Error('boom') } })); } catch (e) { text(e); }",
            Texts(&["tools.echo could not convert its argument to JSON: Error: boom"]),
        ),
        (
            "21 revoked proxy",
            "const p = Proxy.revocable({}, {}); p.revoke(); try { await tools.echo(p.proxy); } catch (e) { text(e); }",
            Texts(&[
                "tools.echo could not convert its argument to JSON: TypeError: Cannot perform 'get' on a proxy that has been revoked",
            ]),
        ),
        // Odd values
        ("22 null", "throw null", Error("null")),
        ("22 undefined", "throw undefined", Error("undefined")),
        ("22 bigint", "throw 10n", Error("10")),
        ("22 symbol", "throw Symbol('s')", Error("Symbol(s)")),
        (
            "22 null prototype",
            "throw Object.create(null)",
            Error("[object Object]"),
        ),
        (
            "22 throwing toString",
            "throw { toString() { throw new Error('inner') } }",
            Error("[object Object]"),
        ),
        (
            "23 cyclic cause",
            "const e = new Error('x'); e.cause = e; throw e;",
            ErrorStarting("Error: x\n    at exec_main.mjs:1:"),
        ),
        (
            "24 bigint argument",
            "try { await tools.echo({ n: 1n }); } catch (e) { text(e); }",
            Texts(&[
                "tools.echo could not convert its argument to JSON: TypeError: Do not know how to serialize a BigInt",
            ]),
        ),
        (
            "24 undefined argument",
            "text(await tools.echo(undefined));",
            Texts(&["null"]),
        ),
        (
            "24 JSON semantics",
            "text(await tools.echo({ u: undefined, f() {} }));",
            Texts(&["{}"]),
        ),
        (
            "25 circular argument",
            "const a = {}; a.self = a; try { await tools.echo(a); } catch (e) { text(e.split('\\n')[0]); }",
            Texts(&[
                "tools.echo could not convert its argument to JSON: TypeError: Converting circular structure to JSON",
            ]),
        ),
        // Output and code
        ("26 console flood", "for (;;) console.log('x');", Error(CPU)),
        (
            "26 huge text",
            "text('x'.repeat(2 ** 28)); text('after');",
            Texts(&[
                "[output truncated: this cell reached its output cap of 8388608 bytes; later output is dropped]",
            ]),
        ),
        (
            "27 file import",
            "try { await import('file:///etc/passwd'); } catch (e) { text(e); }",
            Texts(&["unsupported import in exec"]),
        ),
        (
            "27 remote import",
            "try { await import('https://example.com/x.js'); } catch (e) { text(e); }",
            Texts(&["unsupported import in exec"]),
        ),
        (
            "27 static import",
            "import x from 'file:///etc/passwd';",
            Error("Unsupported import in exec: file:///etc/passwd"),
        ),
        (
            "28 one character",
            "*",
            Error("SyntaxError: Unexpected token '*'"),
        ),
        ("28 BOM", "\u{feff}text('bom');", Texts(&["bom"])),
        (
            "28 line separator",
            "text('a')\u{2028}text('b')",
            Texts(&["a", "b"]),
        ),
        (
            "29 a million tool calls",
            "await Promise.all(Array.from({ length: 1e6 }, () => tools.echo(1)));",
            AnyOf(&[Error(CAP), Error(HEAP), Error(CPU)]),
        ),
        // Found after the corpus was written.
        (
            "31 exit() in a stack getter, toString loops",
            "text('before'); throw { get stack() { exit(); for (;;) {} }, toString() { for (;;) {} } };",
            Texts(&["before"]),
        ),
        (
            "32 a 1e8-character error message",
            "throw new Error('x'.repeat(1e8));",
            ErrorCut("Error: xxxx"),
        ),
        (
            "32 a 1e8-character stack",
            "const e = new Error('m'); e.stack = 's'.repeat(1e8); throw e;",
            ErrorCut("ssss"),
        ),
        (
            "32 a 1e8-character thrown string",
            "throw 't'.repeat(1e8);",
            ErrorCut("tttt"),
        ),
        (
            "33 a lone surrogate in a tool argument",
            "text(JSON.stringify(await tools.echo({ a: '😀😀'.slice(0, 3) })));",
            Texts(&["{\"a\":\"😀\u{fffd}\"}"]),
        ),
        (
            "34 terminal escapes reach the host as they are",
            "text('\\x1b]0;pwned\\x07\\x1b[2J');",
            Texts(&["\x1b]0;pwned\x07\x1b[2J"]),
        ),
        (
            "35 store and load convert keys with ToString",
            "store(42, 'v'); text(load('42') + load(42));",
            Texts(&["vv"]),
        ),
        // TypeScript stripping is on for every cell: hostile TypeScript too.
        (
            "36 TypeScript annotations",
            "const n: number = await tools.echo<number>(2); text(n satisfies number);",
            Texts(&["2"]),
        ),
        (
            "36 TypeScript nested too deep",
            leak(format!(
                "const x: number = {}1{};",
                "(".repeat(200_000),
                ")".repeat(200_000)
            )),
            ErrorStarting("SyntaxError: this script nests brackets more than 1000 levels deep"),
        ),
        (
            "36 a TypeScript enum",
            "enum E { A }",
            ErrorStarting("SyntaxError: a TypeScript `enum` at line 1, column 1 is not supported"),
        ),
        (
            "36 a 17 MiB TypeScript source",
            leak(format!("const s: string = '{}';", "x".repeat(17 << 20))),
            ErrorStarting("SyntaxError: the script is 17825813 bytes, more than the limit"),
        ),
        (
            "30 fresh context (write)",
            "globalThis.secret = 1; text('set');",
            Texts(&["set"]),
        ),
        (
            "30 fresh context (read)",
            "text(typeof globalThis.secret);",
            Texts(&["undefined"]),
        ),
    ]
}
