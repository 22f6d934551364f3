//! Module evaluation, `exit()`, termination, error text, imports, globals and limits.

use crate::harness::{cell, run};
use code_mode::{CellEvent, CellLimits, CellOutcome};
use std::time::Duration;

/// `exit()` placed in many spots: each cell ends successfully with only the output and the
/// stored writes made before `exit()`; no `catch`, `finally`, microtask, timer, sibling
/// promise or runtime-called getter runs after it.
#[test]
fn exit_ends_the_cell_at_once_wherever_it_is_called() {
    let cases: &[(&str, &str)] = &[
        (
            "top level",
            r#"text("before"); store("a", 1); exit(); text("after"); store("b", 2);"#,
        ),
        (
            "inside a for loop",
            r#"for (let i = 0; i < 10; i++) { if (i === 3) { text("before"); store("a", 1); exit(); } if (i > 3) text("loop " + i); }"#,
        ),
        (
            "inside while (true)",
            r#"while (true) { text("before"); store("a", 1); exit(); }"#,
        ),
        (
            "inside try",
            r#"try { text("before"); store("a", 1); exit(); } catch (e) { text("catch"); } finally { text("finally"); store("b", 2); }"#,
        ),
        (
            "inside catch",
            r#"try { throw new Error("x"); } catch (e) { text("before"); store("a", 1); exit(); } finally { text("finally"); }"#,
        ),
        (
            "inside finally",
            r#"try { text("before"); } finally { store("a", 1); exit(); text("after"); }"#,
        ),
        (
            "in a then callback",
            r#"text("before"); store("a", 1); await Promise.resolve().then(() => { exit(); text("after"); }); text("after await");"#,
        ),
        (
            "in a queued microtask",
            r#"const queue = (f) => Promise.resolve().then(f); queue(() => text("queued first")); queue(() => { store("a", 1); exit(); }); queue(() => text("queued after")); await new Promise(() => setTimeout(() => text("timer"), 0)); "#,
        ),
        (
            "in a timer callback",
            r#"text("before"); setTimeout(() => { store("a", 1); exit(); text("after"); }, 0); setTimeout(() => text("second timer"), 0); await new Promise((r) => setTimeout(r, 1000));"#,
        ),
        (
            "after awaiting a tool",
            r#"text("before"); store("a", await tools.echo(1)); exit(); text("after");"#,
        ),
        (
            "in toJSON called by text",
            r#"text("before"); store("a", 1); text({ toJSON() { exit(); return "x"; } }); text("after");"#,
        ),
        (
            "in a getter called by store",
            r#"text("before"); store("a", 1); store("b", { get v() { exit(); return 1; } }); text("after");"#,
        ),
        (
            "in toJSON of a tool argument",
            r#"text("before"); store("a", 1); await tools.echo({ toJSON() { exit(); return 1; } }); text("after");"#,
        ),
        (
            "in a getter called by image",
            r#"text("before"); store("a", 1); image({ get image_url() { exit(); return "data:image/png;base64,AA=="; } });"#,
        ),
        (
            "in toString called by notify",
            r#"text("before"); store("a", 1); notify({ toJSON() { return undefined; }, toString() { exit(); return "note"; } });"#,
        ),
        (
            "in a stack getter of a thrown value",
            r#"text("before"); store("a", 1); throw { get stack() { exit(); return "err"; } };"#,
        ),
        (
            "in a stack getter of a thrown value with a looping toString",
            r#"text("before"); store("a", 1); throw { get stack() { exit(); for (;;) {} }, toString() { for (;;) {} } };"#,
        ),
        (
            "in a stack getter of a rejection with a looping toString",
            r#"text("before"); store("a", 1); await null; throw { get stack() { exit(); return 5; }, toString() { for (;;) {} } };"#,
        ),
        (
            "in a toString of a thrown value",
            r#"text("before"); store("a", 1); throw { toString() { exit(); for (;;) {} } };"#,
        ),
        (
            "in a stack getter of a timer's exception",
            r#"text("before"); store("a", 1); setTimeout(() => { throw { get stack() { exit(); for (;;) {} }, toString() { for (;;) {} } }; }, 0); await new Promise((r) => setTimeout(r, 1000));"#,
        ),
        (
            "in a store key's toString",
            r#"text("before"); store("a", 1); store({ toString() { exit(); return "b"; } }, 2); text("after");"#,
        ),
        (
            "in a clearTimeout id's valueOf",
            r#"text("before"); store("a", 1); clearTimeout({ valueOf() { exit(); return 1; } }); text("after");"#,
        ),
        (
            "deep in the call stack",
            r#"function f(n) { if (n === 0) { text("before"); store("a", 1); exit(); } f(n - 1); text("unwound"); } f(50);"#,
        ),
        (
            "with sibling promises pending",
            r#"text("before"); store("a", 1); const sibling = tools.echo(2).then(() => text("sibling")); await Promise.all([sibling, Promise.resolve().then(() => exit())]); text("after");"#,
        ),
    ];
    for (place, source) in cases {
        let r = run(source);
        let outcome = &r.outcome;
        assert!(
            matches!(outcome, CellOutcome::Completed { failure: None, .. }),
            "exit {place}: expected success, got {outcome:?}"
        );
        let texts = r.texts();
        let expected: &[&str] = if *place == "in a queued microtask" {
            &["queued first"]
        } else {
            &["before"]
        };
        assert_eq!(texts, expected, "exit {place}: output");
        let writes = r.writes();
        assert_eq!(writes.len(), 1, "exit {place}: writes {writes:?}");
        assert!(writes.contains_key("a"), "exit {place}: writes {writes:?}");
        assert!(
            r.notifications().is_empty(),
            "exit {place}: notifications after exit"
        );
    }
}

#[test]
fn terminate_stops_cpu_bound_code() {
    let sources = [
        "while (true) {}",
        "for (;;) {}",
        "text('before'); await Promise.resolve().then(() => { while (true) {} });",
        "(function f() { Promise.resolve().then(f); })(); await new Promise(() => setTimeout(() => {}, 1e9));",
        "text({ toJSON() { for (;;) {} } });",
        "throw { get stack() { for (;;) {} } };",
        "try { while (true) {} } finally { text('finally must not run'); }",
        "store('k', 1); await tools.block();",
    ];
    for source in sources {
        let r = cell(source)
            .terminate_after(Duration::from_millis(100))
            .run();
        assert_eq!(r.outcome, CellOutcome::Terminated, "{source}");
        assert!(
            r.texts().iter().all(|text| text == "before"),
            "{source}: {:?}",
            r.texts()
        );
    }
}

#[test]
fn error_text_is_the_stack_or_the_string_conversion() {
    let cases: &[(&str, &str)] = &[
        ("throw 'startup failed'", "startup failed"),
        ("throw null", "null"),
        ("throw undefined", "undefined"),
        ("throw 10n", "10"),
        ("throw 42", "42"),
        ("throw Symbol('s')", "Symbol(s)"),
        ("throw Object.create(null)", "[object Object]"),
        (
            "throw { toString() { throw new Error('inner') } }",
            "[object Object]",
        ),
        ("throw { toString() { return 'custom' } }", "custom"),
        (
            "throw { stack: 'custom stack', message: 'm' }",
            "custom stack",
        ),
        (
            "throw { stack: 5, toString() { return 'fallback' } }",
            "fallback",
        ),
        (
            "throw { get stack() { throw 'nope' }, toString() { return 'after getter' } }",
            "after getter",
        ),
        (
            "throw new Proxy({}, { get() { throw 'trap' } })",
            "#<Object>",
        ),
        (
            "const e = new Error('x'); delete e.stack; e.stack = undefined; throw e",
            "Error: x",
        ),
        ("await Promise.reject('async failure')", "async failure"),
    ];
    for (source, expected) in cases {
        assert_eq!(run(source).error(), Some(*expected), "{source}");
    }
}

/// The marker a text cut at the error-text cap ends with.
fn cut_marker(characters: usize) -> String {
    format!("\u{2026} [truncated: the text has {characters} characters]")
}

#[test]
fn huge_error_texts_are_cut_at_the_cap_with_a_marker() {
    const CAP: usize = 64 * 1024;
    let hundred_million = 100_000_000;
    let cases: &[(&str, &str, usize)] = &[
        ("throw 'x'.repeat(1e8)", "xxxx", hundred_million),
        (
            "throw new Error('x'.repeat(1e8))",
            "Error: xxxx",
            // "Error: " + the message + V8's stack lines: more than the message.
            0,
        ),
        (
            "const e = new Error('m'); e.stack = 'y'.repeat(1e8); throw e",
            "yyyy",
            hundred_million,
        ),
        (
            "throw { toString() { return 'z'.repeat(1e8); } }",
            "zzzz",
            hundred_million,
        ),
        (
            "await Promise.reject('w'.repeat(1e8))",
            "wwww",
            hundred_million,
        ),
    ];
    for (source, start, characters) in cases {
        let r = run(source);
        let error = r.error().unwrap_or_else(|| panic!("{source}: no error"));
        assert!(error.starts_with(start), "{source}: {}", &error[..40]);
        let (text, marker) = error
            .split_once('\u{2026}')
            .unwrap_or_else(|| panic!("{source}: no marker"));
        assert_eq!(text.len(), CAP, "{source}");
        if *characters > 0 {
            assert_eq!(
                format!("\u{2026}{marker}"),
                cut_marker(*characters),
                "{source}"
            );
        } else {
            assert!(
                marker.starts_with(" [truncated: the text has 1000000"),
                "{source}: {marker}"
            );
        }
    }
    // A text just at the cap is whole, one character more is cut.
    let r = run(&format!("throw 'a'.repeat({CAP})"));
    assert_eq!(r.error(), Some("a".repeat(CAP).as_str()));
    let r = run(&format!("throw 'é'.repeat({CAP})"));
    let error = r.error().unwrap();
    assert!(
        error.ends_with(&cut_marker(CAP)),
        "{}",
        &error[error.len() - 60..]
    );
    assert!(error.starts_with("é"));
}

#[test]
fn error_stacks_name_the_module() {
    let r = run("function inner() { throw new TypeError('bad'); }\ninner();");
    let error = r.error().unwrap();
    assert!(
        error.starts_with("TypeError: bad\n    at inner (exec_main.mjs:1:"),
        "{error}"
    );

    let r = run("const e = new Error('x'); e.cause = e; throw e;");
    assert!(
        r.error()
            .unwrap()
            .starts_with("Error: x\n    at exec_main.mjs:1:")
    );
}

#[test]
fn syntax_errors_and_odd_sources() {
    let r = run("*");
    assert_eq!(r.error(), Some("SyntaxError: Unexpected token '*'"));

    let r = run("text('a'\n");
    assert!(r.error().unwrap().starts_with("SyntaxError:"));

    assert_eq!(run("\u{feff}text('bom ok');").ok_texts(), ["bom ok"]);
    assert_eq!(
        run("text('a')\u{2028}text('b\u{2028}c')").ok_texts(),
        ["a", "b\u{2028}c"]
    );
    assert_eq!(run("").ok_texts(), Vec::<String>::new());
}

#[test]
fn imports_are_refused() {
    assert_eq!(
        run("import fs from 'fs'; text('never');").error(),
        Some("Unsupported import in exec: fs")
    );
    assert_eq!(
        run("export * from './other.mjs';").error(),
        Some("Unsupported import in exec: ./other.mjs")
    );
    let r = run(r#"
        for (const specifier of ["file:///etc/passwd", "https://example.com/x.js", "fs"]) {
            try { await import(specifier); text("imported"); } catch (e) { text(typeof e + ": " + e); }
        }
    "#);
    assert_eq!(r.ok_texts(), ["string: unsupported import in exec"; 3]);
}

#[test]
fn top_level_await_and_module_semantics() {
    let r = run(r#"
        const value = await new Promise((resolve) => setTimeout(() => resolve("later"), 5));
        text(value);
        text(typeof require + " " + typeof process + " " + typeof fetch + " " + typeof Deno);
        text(this === undefined);
        text(import.meta !== undefined);
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            "later",
            "undefined undefined undefined undefined",
            "true",
            "true"
        ]
    );
}

#[test]
fn globals_are_standard_ecmascript_plus_the_helpers() {
    let r = run(r#"text(Object.getOwnPropertyNames(globalThis).sort().join(" "));"#);
    let names = r.ok_texts().remove(0);
    let names: Vec<&str> = names.split(' ').collect();
    let helpers = [
        "ALL_TOOLS",
        "as_settled",
        "audio",
        "clearTimeout",
        "console",
        "exit",
        "generatedImage",
        "image",
        "load",
        "notify",
        "setTimeout",
        "store",
        "stream_settled",
        "text",
        "tools",
        "yield_control",
    ];
    for helper in helpers {
        assert!(names.contains(&helper), "missing helper {helper}");
    }
    let absent = [
        "Atomics",
        "SharedArrayBuffer",
        "WebAssembly",
        "require",
        "process",
        "fetch",
        "Deno",
        "gc",
        "queueMicrotask",
        "setInterval",
        "__code_mode_internal_gc",
    ];
    for absent in absent {
        assert!(!names.contains(&absent), "{absent} must be absent");
    }
    let standard = [
        "AggregateError",
        "Array",
        "ArrayBuffer",
        "AsyncDisposableStack",
        "BigInt",
        "BigInt64Array",
        "BigUint64Array",
        "Boolean",
        "DataView",
        "Date",
        "DisposableStack",
        "Error",
        "EvalError",
        "FinalizationRegistry",
        "Float16Array",
        "Float32Array",
        "Float64Array",
        "Function",
        "Infinity",
        "Int16Array",
        "Int32Array",
        "Int8Array",
        "Intl",
        "Iterator",
        "JSON",
        "Map",
        "Math",
        "NaN",
        "Number",
        "Object",
        "Promise",
        "Proxy",
        "RangeError",
        "ReferenceError",
        "Reflect",
        "RegExp",
        "Set",
        "String",
        "SuppressedError",
        "Symbol",
        "SyntaxError",
        "TypeError",
        "URIError",
        "Uint16Array",
        "Uint32Array",
        "Uint8Array",
        "Uint8ClampedArray",
        "WeakMap",
        "WeakRef",
        "WeakSet",
        "decodeURI",
        "decodeURIComponent",
        "encodeURI",
        "encodeURIComponent",
        "escape",
        "eval",
        "globalThis",
        "isFinite",
        "isNaN",
        "parseFloat",
        "parseInt",
        "undefined",
        "unescape",
    ];
    // Contract section 8.6: exactly the built-ins and the helpers, nothing of the runtime.
    let unexpected: Vec<&&str> = names
        .iter()
        .filter(|name| !helpers.contains(name) && !standard.contains(name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "globals outside the allow-list: {unexpected:?}"
    );
}

#[test]
fn nothing_of_the_runtime_is_reachable_from_the_global_object() {
    // Own properties, symbols included, and what the prototype chain adds: only the
    // contract's names, and no function V8 would offer a test harness.
    let r = run(r#"
        const seen = new Set();
        for (let object = globalThis; object !== null; object = Object.getPrototypeOf(object)) {
            for (const key of Reflect.ownKeys(object)) seen.add(String(key));
        }
        const internal = [...seen].filter((key) => /code_mode|^gc$|^%|internal/i.test(key));
        text(JSON.stringify(internal));
        text(typeof __code_mode_internal_gc);
        text(Object.getOwnPropertySymbols(globalThis).map(String).join(","));
    "#);
    assert_eq!(r.ok_texts(), ["[]", "undefined", ""]);
}

#[test]
fn intl_formats_with_real_icu_data() {
    let r = run(r#"
        const date = new Date(Date.UTC(2025, 0, 2, 3, 4, 5));
        text(date.toLocaleString("fr-FR", { timeZone: "UTC" }));
        text(date.toLocaleDateString("de-DE", { timeZone: "UTC", dateStyle: "full" }));
        text(new Intl.NumberFormat("en-IN").format(1234567.891));
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            "02/01/2025 03:04:05",
            "Donnerstag, 2. Januar 2025",
            "12,34,567.891"
        ]
    );
}

#[test]
fn every_cell_gets_a_fresh_context() {
    assert_eq!(
        run("globalThis.secret = 1; Object.prototype.polluted = 1;").error(),
        None
    );
    assert_eq!(
        run("text(typeof globalThis.secret); text(({}).polluted);").ok_texts(),
        ["undefined", "undefined"]
    );
}

#[test]
fn unawaited_rejections_and_work_are_discarded_at_the_end() {
    let r = run(r#"
        Promise.reject(new Error("ignored"));
        tools.fail();
        tools.block();
        setTimeout(() => text("never"), 0);
        text("done");
    "#);
    assert_eq!(r.ok_texts(), ["done"]);
}

#[test]
fn a_cell_awaiting_what_nothing_can_settle_fails_at_once() {
    let r = run(r#"text("waiting"); await new Promise(() => {});"#);
    assert_eq!(r.texts(), ["waiting"]);
    assert_eq!(
        r.error(),
        Some(
            "exec cell cannot finish: the script is awaiting a promise that nothing can settle (no nested tool calls or timers are pending)"
        )
    );
    assert_eq!(r.failure(), Some(code_mode_protocol::FailureKind::Stalled));
}

#[test]
fn idle_is_reported_while_waiting_on_tools_or_timers() {
    let r = run(r#"await tools.echo(1); await new Promise((r) => setTimeout(r, 1));"#);
    assert_eq!(r.error(), None);
    // Nothing is reported before the cell's own first event.
    assert!(
        matches!(r.events.first(), Some(CellEvent::ToolCall(_))),
        "{:?}",
        r.events
    );
    // The tool may be answered before the thread sleeps; the timer wait is always idle.
    let timer_set = r
        .events
        .iter()
        .position(|event| matches!(event, CellEvent::TimerSet { .. }))
        .expect("a timer was set");
    // One command (the tool's answer) was applied before the timer wait.
    assert_eq!(
        r.events.get(timer_set + 1),
        Some(&CellEvent::Idle {
            commands_applied: 1
        }),
        "{:?}",
        r.events
    );
}

#[test]
fn stack_overflow_is_a_catchable_range_error() {
    let r = run(r#"
        function f() { f(); }
        try { f(); } catch (e) { text(e instanceof RangeError ? e.message : "other"); }
        text("continues");
    "#);
    assert_eq!(
        r.ok_texts(),
        ["Maximum call stack size exceeded", "continues"]
    );
}

#[test]
fn helpers_at_maximum_depth_work_or_fail_cleanly() {
    let r = run(
        "let n = 0; function f() { text(1); n++; f(); } try { f(); } catch (e) { text(e.constructor.name + ' ' + (n > 100)); }",
    );
    let texts = r.ok_texts();
    assert_eq!(texts.last().map(String::as_str), Some("RangeError true"));
    assert!(texts[..texts.len() - 1].iter().all(|t| t == "1"));

    let r = run(
        "function f() { tools.echo(1); f(); } try { f(); } catch (e) { text(e.constructor.name); }",
    );
    assert_eq!(r.ok_texts(), ["RangeError"]);
}

#[test]
fn heap_exhaustion_ends_only_the_cell() {
    let limits = CellLimits {
        heap_bytes: 64 * 1024 * 1024,
        ..CellLimits::default()
    };
    for source in [
        "const a = []; for (;;) a.push(new Array(1e6).fill(0));",
        "let s = ''; const keep = []; while (true) { s += 'Hello'; keep.push(s + '!'); }",
    ] {
        let r = cell(&format!("text('before'); store('k', 1); {source}"))
            .limits(limits)
            .run();
        assert_eq!(r.texts(), ["before"], "{source}");
        assert_eq!(
            r.error(),
            Some("Out of memory: the cell reached its heap limit of 64 MiB and was stopped"),
            "{source}"
        );
        assert_eq!(
            r.failure(),
            Some(code_mode_protocol::FailureKind::OutOfMemory),
            "{source}"
        );
    }
    assert_eq!(
        run("text('next cell works')").ok_texts(),
        ["next cell works"]
    );
}

#[test]
fn huge_strings_are_a_catchable_range_error() {
    let r = run(r#"try { "x".repeat(2 ** 30); } catch (e) { text(e.constructor.name); }"#);
    assert_eq!(r.ok_texts(), ["RangeError"]);
}
