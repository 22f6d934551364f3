//! Contexts from the startup snapshot against contexts built by hand: a cell
//! must not be able to tell them apart. Each probe runs once on each path, on isolates of
//! their own, and everything it reports (output, tool calls, timers, notifications, the
//! outcome with its stored writes) must be the same.

use crate::harness::{Run, cell};
use code_mode::{CellEvent, ContextSource};

/// Runs `source` on both paths and returns the snapshot path's run once both agree.
#[track_caller]
fn same_on_both_paths(source: &str) -> Run {
    let snapshot = cell(source).context_source(ContextSource::Snapshot).run();
    let built = cell(source).context_source(ContextSource::Built).run();
    // `Idle` tells the owner when the thread went to sleep, which depends on when the
    // answers came, and a timer's `armed_at` is when it was set: timing, not anything the
    // cell saw.
    let seen = |run: &Run| {
        let events = run
            .events
            .iter()
            .filter(|event| !matches!(event, CellEvent::Idle { .. }))
            .map(|event| match event {
                CellEvent::TimerSet { id, delay, .. } => format!("TimerSet {id} {delay:?}"),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>();
        format!("{events:?} {:?}", run.outcome)
    };
    assert_eq!(
        seen(&snapshot),
        seen(&built),
        "the cell saw a difference between a snapshot context and a built one:\n{source}"
    );
    snapshot
}

/// Every own property of the global object, of `console` and of each helper function,
/// with its attributes, and how the helpers relate to the intrinsics.
const GLOBAL_SHAPE: &str = r#"
const describe = (object, key) => {
  const d = Object.getOwnPropertyDescriptor(object, key);
  const value = "value" in d ? d.value : undefined;
  let shape = typeof value;
  if (typeof value === "function") {
    shape += ` name=${value.name} length=${value.length} proto=${Object.getPrototypeOf(value) === Function.prototype}`;
    shape += ` source=${Function.prototype.toString.call(value)}`;
    shape += ` own=${Reflect.ownKeys(value).map(String).join("|")}`;
    shape += ` constructor=${"prototype" in value}`;
  }
  return `${String(key)}: w=${d.writable} e=${d.enumerable} c=${d.configurable} get=${typeof d.get} ${shape}`;
};
for (const key of Reflect.ownKeys(globalThis)) text(describe(globalThis, key));
for (const key of Reflect.ownKeys(console)) text("console." + describe(console, key));
text(`console frozen=${Object.isFrozen(console)} proto=${Object.getPrototypeOf(console) === Object.prototype}`);
text(`global extensible=${Object.isExtensible(globalThis)} proto=${Object.getPrototypeOf(Object.getPrototypeOf(globalThis)) === Object.prototype}`);
text(`Promise.try=${typeof Promise.try} Error.isError=${typeof Error.isError} Math.sumPrecise=${typeof Math.sumPrecise}`);
text(`Atomics=${typeof Atomics} SharedArrayBuffer=${typeof SharedArrayBuffer} WebAssembly=${typeof WebAssembly}`);
try { new text("x"); } catch (error) { text(`new text: ${error.constructor.name}: ${error.message}`); }
"#;

#[test]
fn the_global_object_is_the_same_on_both_paths() {
    let run = same_on_both_paths(GLOBAL_SHAPE);
    let texts = run.ok_texts();
    // The probe did look: the helpers are there, the forbidden globals are not.
    for wanted in [
        "text: w=false e=true c=false get=undefined function name=text length=0",
        "as_settled: w=false e=true c=false",
        "console frozen=true",
        "Atomics=undefined SharedArrayBuffer=undefined WebAssembly=undefined",
        "new text: TypeError",
    ] {
        assert!(
            texts.iter().any(|line| line.contains(wanted)),
            "no line with {wanted:?} in {texts:#?}"
        );
    }
}

#[test]
fn the_helpers_behave_the_same_on_both_paths() {
    let run = same_on_both_paths(
        r#"
text("plain", 1);
console.log("log", { a: 1 }, [2]);
console.error(new Error("boom").message);
store("k", { deep: [1, 2, { x: null }] });
text(JSON.stringify(load("k")));
text(String(load("missing")));
try { store(Symbol("s"), 1); } catch (error) { text(String(error)); }
try { store("f", () => 1); } catch (error) { text(String(error)); }
const echoed = await tools.echo({ hello: "world" });
text(JSON.stringify(echoed));
try { await tools.fail({}); } catch (error) { text(`${error.constructor.name}: ${error.message}`); }
notify("note");
await new Promise((resolve) => setTimeout(resolve, 5));
clearTimeout(setTimeout(() => text("never"), 10_000));
const order = [];
for await (const settled of as_settled([Promise.resolve(1), Promise.reject(new Error("no"))])) {
  order.push(settled.status);
}
text(order.join(","));
await stream_settled([tools.echo(7)], (settled) => text(`streamed ${settled.status} ${settled.value}`));
text(`ALL_TOOLS=${ALL_TOOLS.map((tool) => tool.name).join(",")}`);
text(new Error("where").stack.split("\n").slice(0, 2).join(" | "));
exit();
text("after exit");
"#,
    );
    let texts = run.ok_texts();
    assert!(
        texts.contains(&r#"{"hello":"world"}"#.to_owned()),
        "{texts:#?}"
    );
    assert!(!texts.contains(&"after exit".to_owned()));
    assert_eq!(run.notifications(), ["note"]);
    assert_eq!(run.writes()["k"], r#"{"deep":[1,2,{"x":null}]}"#);
}

#[test]
fn errors_read_the_same_on_both_paths() {
    for source in [
        "throw new TypeError('typed');",
        "null.x;",
        "await Promise.reject(42);",
        "syntax error here",
        "let x: number = 'a' as any; text(typeof x);",
        "await new Promise(() => {});",
        "function deep(n) { return n === 0 ? undefined.x : deep(n - 1); } deep(20);",
        "import('./other.mjs');",
    ] {
        same_on_both_paths(source);
    }
}

#[test]
fn snapshot_contexts_share_nothing() {
    // A cell that changes everything it can reach: intrinsics, helpers' own properties, the
    // global object. The next snapshot context sees none of it.
    let first = cell(
        r#"
Array.prototype.leak = 1;
Object.prototype.polluted = true;
globalThis.leftover = 1;
try { text.extra = 1; } catch {}
try { Promise.prototype.then = () => "hijacked"; } catch {}
JSON.stringify = () => "hijacked";
text(String(Math.random()));
"#,
    )
    .context_source(ContextSource::Snapshot)
    .seed(1)
    .run();
    let first_random = first.ok_texts()[0].clone();
    let second = cell(
        r#"
text([typeof [].leak, typeof ({}).polluted, typeof globalThis.leftover, typeof text.extra].join(","));
text(JSON.stringify({ ok: 1 }));
text(String(await Promise.resolve("real")));
text(String(Math.random()));
"#,
    )
    .context_source(ContextSource::Snapshot)
    .seed(2)
    .run();
    let texts = second.ok_texts();
    assert_eq!(
        texts[..3],
        [
            "undefined,undefined,undefined,undefined",
            r#"{"ok":1}"#,
            "real"
        ]
    );
    // Each cell's random numbers follow its own seed: the snapshot does not fix them.
    assert_ne!(
        texts[3], first_random,
        "two snapshot contexts drew the same first number"
    );
}
