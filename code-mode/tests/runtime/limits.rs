//! Per-cell limits: CPU budget, output cap, `ArrayBuffer` budget, tool payload sizes.

use crate::harness::{cell, run};
use code_mode::CellLimits;
use std::time::{Duration, Instant};

fn limits() -> CellLimits {
    CellLimits::default()
}

#[test]
fn the_cpu_budget_stops_busy_code_wherever_it_runs() {
    let budget = CellLimits {
        cpu_budget_ms: 300,
        ..limits()
    };
    for source in [
        "text('before'); while (true) {}",
        "text('before'); for (;;) {}",
        "text('before'); await Promise.resolve().then(() => { while (true) {} });",
        "text('before'); (function f() { Promise.resolve().then(f); })(); await new Promise(() => setTimeout(() => {}, 1e9));",
        "text('before'); text({ toJSON() { for (;;) {} } });",
        "text('before'); throw { get stack() { for (;;) {} } };",
        "text('before'); function f() { try { f() } catch { f() } } f();",
        "text('before'); setTimeout(() => { for (;;) {} }, 0); await new Promise((r) => setTimeout(r, 1e9));",
    ] {
        let r = cell(source).limits(budget).run();
        assert_eq!(r.texts(), ["before"], "{source}");
        assert_eq!(
            r.error(),
            Some("CPU budget exceeded: the cell used its 0.3 s of CPU time and was stopped"),
            "{source}"
        );
        assert_eq!(
            r.failure(),
            Some(code_mode_protocol::FailureKind::CpuBudget),
            "{source}"
        );
    }
}

/// `source` under a CPU budget of `budget_ms`, each tool call answered `late`.
fn answered_late(source: &str, budget_ms: u64, late: Duration) -> crate::harness::Run {
    cell(source)
        .limits(CellLimits {
            cpu_budget_ms: budget_ms,
            ..limits()
        })
        .answer(move |call| {
            std::thread::sleep(late);
            crate::harness::default_answer(call)
        })
        .run()
}

#[test]
fn waiting_does_not_count_against_the_cpu_budget() {
    let started = Instant::now();
    let r = answered_late(
        "await tools.echo(1); await new Promise((r) => setTimeout(r, 700)); text('done');",
        200,
        Duration::from_millis(500),
    );
    assert_eq!(r.ok_texts(), ["done"]);
    assert!(
        started.elapsed() > Duration::from_millis(1000),
        "the cell really waited"
    );
}

/// A thread polls for answers that come within a fraction of a millisecond instead of
/// sleeping: 250 answers 250 µs late keep it polling about 60 ms in all, far past a 40 ms
/// budget that the cell's own work stays well within.
#[test]
fn polling_for_fast_answers_does_not_count_against_the_cpu_budget() {
    let r = answered_late(
        "for (let i = 0; i < 250; i++) await tools.echo(i); text('done');",
        40,
        Duration::from_micros(250),
    );
    assert_eq!(r.ok_texts(), ["done"]);
    assert_eq!(r.tool_calls().len(), 250);
}

#[test]
fn the_output_cap_drops_later_output_behind_a_marker() {
    let r = cell(
        "for (let i = 0; i < 1000; i++) console.log('line ' + i); notify('late'); text('done');",
    )
    .limits(CellLimits {
        output_bytes: 50,
        ..limits()
    })
    .run();
    assert_eq!(r.error(), None);
    assert_eq!(
        r.texts(),
        [
            "line 0",
            "line 1",
            "line 2",
            "line 3",
            "line 4",
            "line 5",
            "line 6",
            "line 7",
            "[output truncated: this cell reached its output cap of 50 bytes; later output is dropped]",
        ]
    );
    assert!(r.notifications().is_empty());
}

#[test]
fn a_huge_text_hits_the_output_cap_not_the_process() {
    let r = run("text('x'.repeat(2 ** 24)); text('after');");
    assert_eq!(r.error(), None);
    assert_eq!(
        r.texts(),
        [
            "[output truncated: this cell reached its output cap of 8388608 bytes; later output is dropped]"
        ]
    );
}

#[test]
fn array_buffers_count_against_a_budget() {
    let r = cell(
        r#"
        const kept = [];
        try {
            for (;;) kept.push(new ArrayBuffer(16 * 2 ** 20));
        } catch (e) {
            text(e.constructor.name + ": " + e.message);
        }
        text(kept.length);
        "#,
    )
    .limits(CellLimits {
        heap_bytes: 64 * 1024 * 1024,
        ..limits()
    })
    .run();
    assert_eq!(
        r.ok_texts(),
        ["RangeError: Array buffer allocation failed", "2"]
    );
    // Freed buffers give their budget back.
    let r = cell("for (let i = 0; i < 50; i++) { new Uint8Array(16 * 2 ** 20); } text('ok');")
        .limits(CellLimits {
            heap_bytes: 64 * 1024 * 1024,
            ..limits()
        })
        .run();
    assert_eq!(r.ok_texts(), ["ok"]);
}

#[test]
fn tool_payloads_are_size_checked_before_they_cross() {
    let small = CellLimits {
        max_tool_payload_bytes: 1000,
        ..limits()
    };
    let r = cell(
        r#"
        try { await tools.echo("x".repeat(2000)); } catch (e) { text(e); }
        try { await tools.get_user(); } catch (e) { text(e); }
        "#,
    )
    .limits(small)
    .answer(|call| match call.name.as_str() {
        "get_user" => Some(Ok(format!("\"{}\"", "y".repeat(5000)))),
        _ => crate::harness::default_answer(call),
    })
    .run();
    assert_eq!(
        r.ok_texts(),
        [
            "tools.echo was not called: its argument is 2002 bytes of JSON, more than the limit of 1000 bytes",
            "tool result rejected: 5002 bytes is more than the limit of 1000 bytes",
        ]
    );
    assert_eq!(
        r.tool_calls().len(),
        1,
        "the oversized argument never left the cell"
    );
}
