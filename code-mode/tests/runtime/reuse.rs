//! Isolate reuse within a session (CONTRACT §7): which cells leave their isolate for the
//! next, and what the next cell can see of the earlier one.

use crate::harness::cell;
use code_mode::{CellLimits, CellOutcome, IsolateShelf};
use std::sync::Arc;
use std::time::Duration;

/// Runs one case's cell on a shelf.
type RunOnShelf = Box<dyn Fn(&Arc<IsolateShelf>) -> CellOutcome>;

fn shelf() -> Arc<IsolateShelf> {
    // An isolate whose context was built by hand before the blob was made is not parked:
    // these tests count parked isolates from their first cell.
    code_mode::runtime::wait_for_startup_snapshot();
    Arc::new(IsolateShelf::new(CellLimits::default().heap_bytes))
}

#[test]
fn a_normal_end_parks_the_isolate_and_the_next_cell_takes_it() {
    let shelf = shelf();
    // A large heap is the cell's own: its context goes with it, and the collection before
    // parking frees it.
    let r = cell("globalThis.big = Array.from({ length: 4e6 }, (_, i) => i); text('one');")
        .on_shelf(&shelf)
        .run();
    assert_eq!(r.ok_texts(), ["one"]);
    assert_eq!(shelf.parked(), 1, "the isolate is parked");
    let r = cell("text(typeof globalThis.leak);").on_shelf(&shelf).run();
    assert_eq!(r.ok_texts(), ["undefined"]);
    assert_eq!(shelf.parked(), 1, "taken and parked again");
    // A script error is a normal end too.
    let r = cell("throw new Error('x');").on_shelf(&shelf).run();
    assert!(r.error().is_some());
    assert_eq!(shelf.parked(), 1);
    shelf.clear();
    assert_eq!(shelf.parked(), 0);
}

#[test]
fn terminated_cells_and_limit_hits_leave_no_isolate_behind() {
    let cases: Vec<(&str, RunOnShelf)> = vec![
        (
            "terminated",
            Box::new(|shelf| {
                cell("while (true) {}")
                    .on_shelf(shelf)
                    .terminate_after(Duration::from_millis(50))
                    .run()
                    .outcome
            }),
        ),
        (
            "CPU budget",
            Box::new(|shelf| {
                cell("while (true) {}")
                    .on_shelf(shelf)
                    .limits(CellLimits {
                        cpu_budget_ms: 200,
                        ..CellLimits::default()
                    })
                    .run()
                    .outcome
            }),
        ),
        (
            "heap limit",
            Box::new(|shelf| {
                cell("const a = []; for (;;) a.push(new Array(1e6).fill(0));")
                    .on_shelf(shelf)
                    .run()
                    .outcome
            }),
        ),
    ];
    for (name, run) in cases {
        let shelf = shelf();
        // One isolate parked first: the case's cell takes it.
        cell("text('warm');").on_shelf(&shelf).run();
        assert_eq!(shelf.parked(), 1, "{name}: warmed");
        let outcome = run(&shelf);
        assert_eq!(shelf.parked(), 0, "{name}: {outcome:?} left its isolate");
    }
}

#[test]
fn nothing_of_an_earlier_cell_reaches_a_later_one() {
    let shelf = shelf();
    let r = cell(
        r#"
        globalThis.leak = 1;
        Object.prototype.polluted = "yes";
        Array.prototype.map = () => "hacked";
        JSON.parse = () => "hacked";
        Promise.prototype.then = function () { return "hacked"; };
        Error.prepareStackTrace = () => "hacked";
        Error.stackTraceLimit = 0;
        const registry = new FinalizationRegistry(() => text("a finalizer of cell 1 ran"));
        for (let i = 0; i < 1000; i++) registry.register({ payload: new Array(100).fill(i) }, i);
        globalThis.registry = registry;
        globalThis.ref = new WeakRef({ target: true });
        Symbol.for("cell-1-secret");
        // Microtasks queued behind exit() never run, here or later.
        Promise.resolve().then(() => exit());
        for (let i = 0; i < 5; i++) Promise.resolve().then(() => text("late " + i));
        text("cell 1");
        "#,
    )
    .on_shelf(&shelf)
    .run();
    assert_eq!(r.ok_texts(), ["cell 1"]);
    assert_eq!(shelf.parked(), 1);
    let r = cell(
        r#"
        let junk = [];
        for (let i = 0; i < 300; i++) junk.push(new Array(20000).fill(i));
        junk = null;
        await new Promise((resolve) => setTimeout(resolve, 50));
        text([
            typeof globalThis.leak,
            String(({}).polluted),
            [1, 2].map((x) => x * 2).join(","),
            JSON.parse("[7]")[0],
            typeof Promise.resolve(1).then(() => 1),
            typeof Error.prepareStackTrace,
            Error.stackTraceLimit,
            new Error("e").stack.includes("exec_main.mjs"),
            typeof globalThis.registry,
            typeof globalThis.ref,
        ].join(" "));
        "#,
    )
    .on_shelf(&shelf)
    .run();
    assert_eq!(
        r.ok_texts(),
        ["undefined undefined 2,4 7 object undefined 10 true undefined undefined"]
    );
}

#[test]
fn each_cell_on_a_reused_isolate_gets_its_own_tools() {
    use code_mode::ToolDefinition;
    use code_mode::protocol::ToolKind;
    let shelf = shelf();
    let tool =
        |name: &str, description: &str| ToolDefinition::new(name, description, ToolKind::Function);
    let source = r#"
        text(JSON.stringify(Object.keys(tools)));
        text(JSON.stringify(ALL_TOOLS.map((t) => t.name + ": " + t.description)));
        text(Object.isFrozen(tools) && Object.isFrozen(ALL_TOOLS));
        text(await tools[Object.keys(tools)[0]]?.(1) ?? "none");
    "#;
    // The same tools twice (the second cell's are built ahead, after the first ended),
    // then others with one name kept but described differently, then none.
    let cases: [(Vec<ToolDefinition>, [&str; 4]); 4] = [
        (
            vec![tool("a", "first a"), tool("b", "first b")],
            [
                r#"["a","b"]"#,
                r#"["a: first a","b: first b"]"#,
                "true",
                "a",
            ],
        ),
        (
            vec![tool("a", "first a"), tool("b", "first b")],
            [
                r#"["a","b"]"#,
                r#"["a: first a","b: first b"]"#,
                "true",
                "a",
            ],
        ),
        (
            vec![tool("b", "other b")],
            [r#"["b"]"#, r#"["b: other b"]"#, "true", "b"],
        ),
        (Vec::new(), ["[]", "[]", "true", "none"]),
    ];
    for (tools, expected) in cases {
        let r = cell(source)
            .tools(tools)
            .answer(|call| Some(Ok(format!(r#""{}""#, call.name))))
            .on_shelf(&shelf)
            .run();
        assert_eq!(r.ok_texts(), expected);
        assert_eq!(shelf.parked(), 1, "the isolate serves the next cell");
    }
}

#[test]
fn a_tool_function_one_cell_changed_is_a_fresh_one_in_the_next() {
    use code_mode::ToolDefinition;
    use code_mode::protocol::ToolKind;
    let shelf = shelf();
    let tools = vec![ToolDefinition::new("a", "the a tool", ToolKind::Function)];
    // The isolate makes every cell's tool functions from the same template: what a cell
    // does to its function stays with that cell's context.
    let r = cell(
        r#"
        tools.a.mark = "cell 1";
        Object.defineProperty(tools.a, "name", { value: "changed" });
        Object.setPrototypeOf(tools.a, null);
        text(tools.a.name);
        "#,
    )
    .tools(tools.clone())
    .on_shelf(&shelf)
    .run();
    assert_eq!(r.ok_texts(), ["changed"]);
    assert_eq!(shelf.parked(), 1);
    let r = cell(
        r#"text([String(tools.a.mark), tools.a.name, Object.getPrototypeOf(tools.a) === Function.prototype].join(" "));"#,
    )
    .tools(tools)
    .on_shelf(&shelf)
    .run();
    assert_eq!(r.ok_texts(), ["undefined a true"]);
}
