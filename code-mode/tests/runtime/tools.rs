//! `tools.*`, `ALL_TOOLS`, and the hostile attacks on the helpers (HOSTILE.md 16-21, 24,
//! 25, 29).

use crate::harness::{cell, run};
use code_mode::protocol::CallId;
use code_mode::protocol::ToolKind;
use code_mode::{CellLimits, ToolDefinition};

#[test]
fn tool_calls_carry_ids_names_kinds_and_json_input() {
    let r = run(r#"
        text(await tools.echo({ b: [1, "two"], a: null, u: undefined, f() {} }));
        text(await tools.echo());
        text(await tools.echo(undefined));
        text(await tools.freeform_tool("raw *text*"));
        text(await tools.mcp__srv__do_thing(7));
        text(await tools.echo(() => 1));
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            r#"{"b":[1,"two"],"a":null}"#,
            "null",
            "null",
            "raw *text*",
            "7",
            "null"
        ]
    );
    let calls = r.tool_calls();
    let summary: Vec<(String, usize, &str, ToolKind, Option<&str>)> = calls
        .iter()
        .map(|c| {
            (
                c.id.to_string(),
                c.tool_index,
                c.name.as_str(),
                c.kind,
                c.input.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "tool-1".into(),
                0,
                "echo",
                ToolKind::Function,
                Some(r#"{"b":[1,"two"],"a":null}"#)
            ),
            ("tool-2".into(), 0, "echo", ToolKind::Function, None),
            ("tool-3".into(), 0, "echo", ToolKind::Function, None),
            (
                "tool-4".into(),
                5,
                "freeform_tool",
                ToolKind::Freeform,
                Some(r#""raw *text*""#)
            ),
            (
                "tool-5".into(),
                6,
                "mcp__srv__do-thing",
                ToolKind::Function,
                Some("7")
            ),
            ("tool-6".into(), 0, "echo", ToolKind::Function, None),
        ]
    );
}

#[test]
fn tool_errors_reject_with_the_error_string() {
    let r = run(r#"
        try { await tools.fail({}); } catch (e) { text(typeof e + ": " + e); }
        await tools.fail();
    "#);
    assert_eq!(r.texts(), ["string: tool exploded"]);
    assert_eq!(r.error(), Some("tool exploded"));
}

#[test]
fn parallel_tool_calls_resolve_independently() {
    let r = cell(
        r#"
            const results = await Promise.all([tools.echo(1), tools.echo(2), tools.get_user()]);
            text(results);
        "#,
    )
    // The answers arrive in reverse order of the calls: results are matched by id.
    .answer_in_reverse(3)
    .run();
    assert_eq!(r.ok_texts(), [r#"[1,2,{"name":"Ada","id":1}]"#]);
    assert_eq!(
        r.tool_calls().iter().map(|c| c.id).collect::<Vec<_>>(),
        [CallId::new(1), CallId::new(2), CallId::new(3)]
    );
}

#[test]
fn all_tools_lists_every_tool_with_its_js_name() {
    let r = run(r#"
        text(ALL_TOOLS);
        text(Object.keys(tools));
        text(Object.isFrozen(tools) && Object.isFrozen(ALL_TOOLS) && Object.isFrozen(ALL_TOOLS[0]));
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            concat!(
                r#"[{"name":"echo","description":"Returns its input."},"#,
                r#"{"name":"get_user","description":"Returns a user."},"#,
                r#"{"name":"fail","description":"Always fails."},"#,
                r#"{"name":"block","description":"Never answers."},"#,
                r#"{"name":"proto","description":"Returns a __proto__ key."},"#,
                r#"{"name":"freeform_tool","description":"Takes raw text."},"#,
                r#"{"name":"mcp__srv__do_thing","description":"Namespaced."}]"#
            ),
            r#"["echo","get_user","fail","block","proto","freeform_tool","mcp__srv__do_thing"]"#,
            "true",
        ]
    );
}

#[test]
fn tools_whose_js_names_collide_keep_the_first() {
    let r = cell(r#"text(Object.keys(tools)); text(await tools.a_b(1));"#)
        .tools(vec![
            ToolDefinition::new("a-b", "first", ToolKind::Function),
            ToolDefinition::new("a_b", "second", ToolKind::Function),
        ])
        .answer(|call| Some(Ok(format!(r#""{}""#, call.name))))
        .run();
    assert_eq!(r.ok_texts(), [r#"["a_b"]"#, "a-b"]);
}

#[test]
fn unserializable_arguments_reject_with_a_clear_message() {
    let r = run(r#"
        const attempts = {
            bigint: () => tools.echo({ n: 1n }),
            cycle: () => { const a = {}; a.self = a; return tools.echo(a); },
            proxy: () => tools.echo(new Proxy({}, { ownKeys() { throw new Error("boom"); } })),
            revoked: () => { const p = Proxy.revocable({}, {}); p.revoke(); return tools.echo(p.proxy); },
            deep: () => { let o = {}; for (let i = 0; i < 1e6; i++) o = { o }; return tools.echo(o); },
            deep129: () => { let o = 0; for (let i = 0; i < 129; i++) o = [o]; return tools.echo(o); },
        };
        for (const [name, attempt] of Object.entries(attempts)) {
            const promise = attempt();
            try { await promise; text(name + ": resolved"); }
            catch (e) { text(name + ": " + typeof e + ": " + e.split("\n")[0]); }
        }
    "#);
    let prefix = "string: tools.echo could not convert its argument to JSON: ";
    let depth = "value is nested deeper than the limit of 128 levels";
    assert_eq!(
        r.ok_texts(),
        [
            format!("bigint: {prefix}TypeError: Do not know how to serialize a BigInt"),
            format!("cycle: {prefix}TypeError: Converting circular structure to JSON"),
            format!("proxy: {prefix}Error: boom"),
            format!(
                "revoked: {prefix}TypeError: Cannot perform 'get' on a proxy that has been revoked"
            ),
            format!("deep: {prefix}{depth}"),
            format!("deep129: {prefix}{depth}"),
        ]
    );
    assert!(r.tool_calls().is_empty(), "no call reaches the owner");
}

#[test]
fn in_flight_tool_calls_are_capped() {
    let r = cell(
        r#"
            const calls = Array.from({ length: 5 }, () => tools.block());
            text(await calls[3].catch((e) => "rejected: " + e));
            text(await calls[4].catch((e) => "rejected too"));
        "#,
    )
    .limits(CellLimits {
        max_in_flight_tool_calls: 3,
        ..CellLimits::default()
    })
    .run();
    assert_eq!(
        r.ok_texts(),
        [
            "rejected: tools.block was not called: this cell already has 3 nested tool calls in flight, the most allowed",
            "rejected too"
        ]
    );
    assert_eq!(r.tool_calls().len(), 3);
}

#[test]
fn tool_results_are_checked_before_they_reach_js() {
    let r = cell(
        r#"
            for (const n of [1, 2, 3]) {
                try { text(await tools.echo(n)); } catch (e) { text(typeof e + ": " + e); }
            }
        "#,
    )
    .answer(|call| {
        Some(Ok(match call.input.as_deref() {
            Some("1") => "not json".to_owned(),
            Some("2") => format!("{}{}", "[".repeat(129), "]".repeat(129)),
            _ => "[[1]]".to_owned(),
        }))
    })
    .run();
    assert_eq!(
        r.ok_texts(),
        [
            "string: tool result rejected: it is not valid JSON",
            "string: tool result rejected: value is nested deeper than the limit of 128 levels",
            "[[1]]",
        ]
    );
}

// HOSTILE 16
#[test]
fn a_throwing_promise_constructor_getter_does_not_break_tool_calls() {
    let r = run(r#"
        Object.defineProperty(Promise.prototype, "constructor", { get() { throw "x"; } });
        const p = tools.echo({ v: 1 });
        text(p instanceof Promise);
        let result;
        try { result = await p; } catch (e) { result = "await threw " + e; }
        text(result);
    "#);
    assert_eq!(r.error(), None);
    assert_eq!(r.tool_calls().len(), 1);
    assert_eq!(r.tool_calls()[0].input.as_deref(), Some(r#"{"v":1}"#));
    let texts = r.texts();
    assert_eq!(texts[0], "true");
    // V8's `await` looks up `constructor` on a promise whose species protector is gone, so
    // the cell's own sabotage may surface at its own `await`; the helper itself worked.
    assert!(
        texts[1] == r#"{"v":1}"# || texts[1] == "await threw x",
        "unexpected: {texts:?}"
    );
}

// HOSTILE 17
#[test]
fn object_prototype_then_cannot_hijack_tool_results() {
    let r = run(r#"
        Object.prototype.then = (resolve) => resolve("pwned");
        const user = await tools.get_user();
        delete Object.prototype.then;
        text(user);
        text(Object.hasOwn(user, "then"));
        text(await tools.echo([1, 2]));
    "#);
    assert_eq!(r.ok_texts(), [r#"{"name":"Ada","id":1}"#, "false", "[1,2]"]);
}

// HOSTILE 18
#[test]
fn replacing_json_does_not_change_the_helpers() {
    let r = run(r#"
        JSON.stringify = () => "{}";
        JSON.parse = () => ({ admin: true });
        text({ a: 1 });
        store("k", { b: 2 });
        text(load("k"));
        const echoed = await tools.echo({ c: 3 });
        console.log(echoed.c, echoed.admin);
    "#);
    assert_eq!(r.ok_texts(), [r#"{"a":1}"#, r#"{"b":2}"#, "3 undefined"]);
    assert_eq!(r.tool_calls()[0].input.as_deref(), Some(r#"{"c":3}"#));
}

// HOSTILE 19
#[test]
fn proto_keys_in_tool_results_never_become_prototypes() {
    let r = run(r#"
        const result = await tools.proto();
        text(({}).isAdmin === undefined);
        text(result.isAdmin === undefined);
        text(Object.getPrototypeOf(result) === Object.prototype);
        text(Object.hasOwn(result, "__proto__"));
        text(result.ok);
    "#);
    assert_eq!(r.ok_texts(), ["true", "true", "true", "true", "1"]);
}

// HOSTILE 20
#[test]
fn overwriting_tools_and_helpers_is_refused_or_harmless() {
    let r = run(r#"
        const attempts = [
            () => { tools.echo = () => "fake"; },
            () => { globalThis.tools = {}; },
            () => { delete globalThis.text; },
            () => { text = () => {}; },
            () => { console.log = () => {}; },
        ];
        for (const attempt of attempts) {
            try { attempt(); text("allowed"); } catch (e) { text(e.constructor.name); }
        }
        text(await tools.echo("real"));
        console.log("console still works");
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            "TypeError",
            "TypeError",
            "TypeError",
            "TypeError",
            "TypeError",
            "real",
            "console still works"
        ]
    );
    assert_eq!(r.tool_calls()[0].name, "echo");
}

// HOSTILE 29 (bounded in-flight calls) with the default cap
#[test]
fn a_flood_of_tool_calls_is_bounded_by_the_default_cap() {
    let r = run(r#"
        const calls = Array.from({ length: 5000 }, () => tools.block().then(() => "ok", (e) => e));
        const last = await Promise.race([calls[4999], new Promise((r) => setTimeout(() => r("pending"), 50))]);
        text(last);
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            "tools.block was not called: this cell already has 1024 nested tool calls in flight, the most allowed"
        ]
    );
    assert_eq!(r.tool_calls().len(), 1024);
}

#[test]
fn tool_functions_are_named_and_bound_by_index_however_many_were_prepared() {
    // Prepared threads create as many tool functions ahead as the latest cell had tools;
    // cells with fewer or more tools than that must see the same thing.
    for count in [3usize, 1, 12, 5, 12] {
        let tools: Vec<ToolDefinition> = (0..count)
            .map(|index| ToolDefinition::new(format!("t-{index}"), "numbered", ToolKind::Function))
            .collect();
        let r = cell(
            r#"
            const names = Object.keys(tools);
            text(names.map((name) => tools[name].name).join(","));
            for (const name of names) text(await tools[name]());
            "#,
        )
        .tools(tools)
        .answer(|call| Some(Ok(format!(r#""called {}""#, call.name))))
        .run();
        let mut expected = vec![
            (0..count)
                .map(|index| format!("t_{index}"))
                .collect::<Vec<_>>()
                .join(","),
        ];
        expected.extend((0..count).map(|index| format!("called t-{index}")));
        assert_eq!(r.ok_texts(), expected, "with {count} tools");
    }
}
