//! `store`, `load`, `notify`, `yield_control`, `setTimeout` and `clearTimeout`.

use crate::harness::{cell, run};
use code_mode::protocol::ContentItem;
use code_mode::{CellEvent, CellLimits};
use std::collections::HashMap;
use std::time::Duration;

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

#[test]
fn store_and_load_round_trip_within_a_cell() {
    let r = run(r#"
        store("obj", { b: 1, a: [1, 2], s: "x", n: null, u: undefined });
        const first = load("obj");
        first.b = 99;
        text(load("obj"));
        text(load("obj") === load("obj"));
        store("num", 5); store("num", 6);
        text(load("num"));
        text(load("missing") === undefined);
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            r#"{"b":1,"a":[1,2],"s":"x","n":null}"#,
            "false",
            "6",
            "true"
        ]
    );
    assert_eq!(
        r.writes(),
        map(&[
            ("obj", r#"{"b":1,"a":[1,2],"s":"x","n":null}"#),
            ("num", "6")
        ])
    );
}

#[test]
fn load_sees_the_snapshot_and_own_writes_first() {
    let r = cell(
        r#"
            text(load("a")); text(load("b"));
            store("a", "mine");
            text(load("a")); text(load("b"));
        "#,
    )
    .stored("a", r#""from session""#)
    .stored("b", r#"{"x":[1]}"#)
    .run();
    assert_eq!(
        r.ok_texts(),
        ["from session", r#"{"x":[1]}"#, "mine", r#"{"x":[1]}"#]
    );
    assert_eq!(r.writes(), map(&[("a", r#""mine""#)]));
}

#[test]
fn store_errors_are_the_contract_strings_and_keep_the_old_value() {
    let r = run(r#"
        const attempts = [
            () => store(Symbol("k"), "x"),
            () => store("x".repeat(65537), "x"),
            () => load(Symbol("k")),
            () => load("x".repeat(65537)),
            () => store("k", undefined),
            () => store("k", () => 1),
            () => store("k", Symbol("s")),
        ];
        store("k", "old");
        for (const attempt of attempts) {
            try { attempt(); text("no error"); } catch (e) { text(typeof e + ": " + e); }
        }
        text(load("k"));
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            "string: store key must be a string",
            "string: store key is 65537 characters long, more than the limit of 65536",
            "string: load key must be a string",
            "string: load key is 65537 characters long, more than the limit of 65536",
            r#"string: Unable to store "k". Only plain serializable objects can be stored."#,
            r#"string: Unable to store "k". Only plain serializable objects can be stored."#,
            r#"string: Unable to store "k". Only plain serializable objects can be stored."#,
            "old",
        ]
    );
    assert_eq!(r.writes(), map(&[("k", r#""old""#)]));
}

#[test]
fn store_and_load_convert_keys_with_to_string() {
    let r = run(r#"
        store(42, "number");
        store(undefined, "undefined");
        store({ toString() { return "object"; } }, "object");
        store("x".repeat(65536), "longest");
        text(load("42"));
        text(load(42));
        text(load("undefined"));
        text(load({ toString: () => "object" }));
        text(load("x".repeat(65536)));
        try { store({ toString() { throw "no key"; } }, 1); } catch (e) { text("threw " + e); }
    "#);
    assert_eq!(
        r.ok_texts(),
        [
            "number",
            "number",
            "undefined",
            "object",
            "longest",
            "threw no key"
        ]
    );
    let writes = r.writes();
    assert_eq!(writes.get("42").map(String::as_str), Some(r#""number""#));
    assert_eq!(
        writes.get("object").map(String::as_str),
        Some(r#""object""#)
    );
    assert_eq!(writes.len(), 4);
}

#[test]
fn store_refuses_values_larger_than_the_payload_limit() {
    let r = cell(
        r#"
        store("k", "old");
        try { store("k", "x".repeat(2000)); } catch (e) { text(e); }
        store("small", "x".repeat(100));
        text(load("k"));
    "#,
    )
    .limits(CellLimits {
        max_tool_payload_bytes: 1000,
        ..CellLimits::default()
    })
    .run();
    assert_eq!(
        r.ok_texts(),
        [
            "failed to serialize JavaScript value: the value is 2002 bytes of JSON, more than the limit of 1000 bytes",
            "old",
        ]
    );
}

#[test]
fn store_refuses_values_nested_deeper_than_128() {
    let r = run(r#"
        const nest = (n) => { let v = 0; for (let i = 0; i < n; i++) v = [v]; return v; };
        store("ok", nest(128));
        text("stored 128");
        for (const depth of [129, 100000]) {
            try { store("deep", nest(depth)); text("stored " + depth); } catch (e) { text(e); }
        }
        const cyclic = {}; cyclic.self = cyclic;
        try { store("cyclic", cyclic); } catch (e) { text(e.split("\n")[0]); }
        try { store("big", { n: 1n }); } catch (e) { text(e); }
    "#);
    let depth_error =
        "failed to serialize JavaScript value: value is nested deeper than the limit of 128 levels";
    assert_eq!(
        r.ok_texts(),
        [
            "stored 128",
            depth_error,
            depth_error,
            "failed to serialize JavaScript value: TypeError: Converting circular structure to JSON",
            "failed to serialize JavaScript value: TypeError: Do not know how to serialize a BigInt",
        ]
    );
    assert_eq!(r.writes().keys().collect::<Vec<_>>(), ["ok"]);
}

#[test]
fn writes_before_a_script_error_are_reported() {
    let r = run(r#"store("k", 1); text("out"); throw new Error("boom");"#);
    assert!(r.error().unwrap().starts_with("Error: boom"));
    assert_eq!(r.texts(), ["out"]);
    assert_eq!(r.writes(), map(&[("k", "1")]));
}

#[test]
fn notify_sends_text_outside_the_output() {
    let r = run(r#"
        notify("working"); notify({ step: 2 }); notify(3);
        for (const bad of ["", "   \n\t", undefined === 1 ? 0 : " "]) {
            try { notify(bad); } catch (e) { text(typeof e + ": " + e); }
        }
    "#);
    assert_eq!(r.notifications(), ["working", r#"{"step":2}"#, "3"]);
    assert_eq!(r.ok_texts(), ["string: notify expects non-empty text"; 3]);
}

#[test]
fn yield_control_is_reported_in_order_with_output() {
    let r = run(r#"text("a"); yield_control(); text("b");"#);
    assert_eq!(r.error(), None);
    let relevant: Vec<&CellEvent> = r
        .events
        .iter()
        .filter(|event| matches!(event, CellEvent::Output(_) | CellEvent::YieldRequested))
        .collect();
    assert_eq!(
        relevant,
        [
            &CellEvent::Output(ContentItem::text("a")),
            &CellEvent::YieldRequested,
            &CellEvent::Output(ContentItem::text("b")),
        ]
    );
}

#[test]
fn timers_fire_in_delay_order_with_arguments_and_numeric_ids() {
    let r = run(r#"
        const ids = [];
        await new Promise((resolve) => {
            ids.push(setTimeout(() => text("late"), 30));
            ids.push(setTimeout((a, b) => text("early " + a + b), 0, "x", "y"));
            ids.push(setTimeout(resolve, 60));
            ids.push(setTimeout(() => text("negative"), -5));
            ids.push(setTimeout(() => text("nan"), NaN));
        });
        text(ids.join(","));
    "#);
    let texts = r.ok_texts();
    assert_eq!(texts.last().map(String::as_str), Some("1,2,3,4,5"));
    assert_eq!(
        texts[..4].iter().filter(|t| t.as_str() == "late").count(),
        1
    );
    assert_eq!(
        texts[3], "late",
        "the 30 ms timer fires after the 0 ms ones: {texts:?}"
    );
    let sets: Vec<(u64, Duration)> = r
        .events
        .iter()
        .filter_map(|event| match event {
            CellEvent::TimerSet { id, delay, .. } => Some((*id, *delay)),
            _ => None,
        })
        .collect();
    assert_eq!(
        sets,
        [
            (1, Duration::from_millis(30)),
            (2, Duration::ZERO),
            (3, Duration::from_millis(60)),
            (4, Duration::ZERO),
            (5, Duration::ZERO),
        ]
    );
}

#[test]
fn clear_timeout_cancels_and_validates() {
    let r = run(r#"
        const id = setTimeout(() => text("must not run"), 10);
        clearTimeout(id);
        clearTimeout(12345);
        for (const bad of [Symbol("1"), 1n]) {
            try { clearTimeout(bad); } catch (e) { text(typeof e + ": " + e); }
        }
        // Anything else goes through ToNumber, as upstream does: "2" clears timer 2,
        // values that are no timer id do nothing.
        const second = setTimeout(() => text("must not run either"), 10);
        clearTimeout(String(second));
        const third = setTimeout(() => text("must not run, third"), 10);
        clearTimeout({ valueOf: () => third });
        for (const other of [undefined, null, {}, "x", 1.5, -1, NaN]) clearTimeout(other);
        try { setTimeout("text(1)", 1); } catch (e) { text(typeof e + ": " + e); }
        try { setTimeout(); } catch (e) { text(typeof e + ": " + e); }
        await new Promise((resolve) => setTimeout(resolve, 40));
        text("done");
    "#);
    let mut expected = vec!["string: clearTimeout expects a numeric timeout id"; 2];
    expected.extend(["string: setTimeout expects a function callback"; 2]);
    expected.push("done");
    assert_eq!(r.ok_texts(), expected);
    for id in 1..=3 {
        assert_eq!(r.count(&CellEvent::TimerCleared { id }), 1, "timer {id}");
    }
}

#[test]
fn a_pending_timer_does_not_keep_a_finished_cell_alive() {
    let r = run(r#"setTimeout(() => text("never"), 60000); text("done");"#);
    assert_eq!(r.ok_texts(), ["done"]);
}

#[test]
fn an_exception_in_a_timer_callback_ends_the_cell() {
    let r = run(r#"
        setTimeout(() => { throw new Error("timer boom"); }, 0);
        await new Promise((resolve) => setTimeout(resolve, 5000));
        text("not reached");
    "#);
    assert!(r.texts().is_empty());
    let error = r.error().expect("the timer error ends the cell");
    assert!(error.starts_with("Error: timer boom"), "{error}");
}

#[test]
fn a_store_beyond_the_sessions_cap_throws_and_keeps_the_earlier_writes() {
    // The snapshot holds "a" (1 + 12 bytes); the cap is 40 bytes of keys and JSON text.
    let r = cell(
        r#"
            store("b", "0123456789");           // 1 + 12: 26 in all
            try { store("c", "0123456789"); }   // 1 + 12: 39, still within
            catch (e) { text("c: " + e); }
            try { store("d", "0123456789"); }   // 1 + 12: 52, beyond
            catch (e) { text("d: " + e); }
            store("c", 1);                      // replacing "c" shrinks the view: allowed
            text(JSON.stringify([load("b"), load("c"), load("d")]));
        "#,
    )
    .stored("a", r#""0123456789""#)
    .max_stored_bytes(40)
    .run();
    assert_eq!(
        r.ok_texts(),
        [
            r#"d: Unable to store "d": the session's stored values would take 52 bytes, more than their limit of 40 bytes. Store less, or store smaller values."#,
            r#"["0123456789",1,null]"#,
        ]
    );
    assert_eq!(r.writes(), map(&[("b", r#""0123456789""#), ("c", "1")]));
}

#[test]
fn a_map_already_beyond_the_cap_still_takes_writes_that_shrink_it() {
    // 13 bytes against a cap of 10: a write that makes the view smaller (12 bytes) is
    // taken; one that makes it larger again (14 bytes) is not.
    let r =
        cell(r#"store("a", "012345678"); try { store("b", 1); } catch (e) { text("refused"); }"#)
            .stored("a", r#""0123456789""#)
            .max_stored_bytes(10)
            .run();
    assert_eq!(r.ok_texts(), ["refused"]);
    assert_eq!(r.writes(), map(&[("a", r#""012345678""#)]));
}
