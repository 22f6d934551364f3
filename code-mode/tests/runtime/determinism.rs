//! What a cell reads from outside is logged or seeded (CONTRACT §7, durable cells): the
//! clock gives replayed readings first and reports live ones, `Math.random()` follows the
//! cell's seed, and weak references do not depend on the collector.

use crate::harness::cell;
use code_mode::CellEvent;

/// Every live clock reading the cell reported, in order.
fn readings(events: &[CellEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            CellEvent::Clock(readings) => Some(readings.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn math_random_follows_the_cells_seed() {
    let source = r#"
        const values = [];
        for (let i = 0; i < 5; i++) values.push(Math.random());
        text(JSON.stringify(values));
        text(values.every((v) => v >= 0 && v < 1));
    "#;
    let first = cell(source).seed(7).run();
    let again = cell(source).seed(7).run();
    let other = cell(source).seed(8).run();
    assert_eq!(first.ok_texts(), again.ok_texts());
    assert_ne!(first.ok_texts()[0], other.ok_texts()[0]);
    assert_eq!(first.ok_texts()[1], "true");
}

#[test]
fn the_clock_gives_replayed_readings_first_then_reports_live_ones() {
    let run = cell(
        r#"
        text(Date.now());
        text(new Date().getTime());
        text(Date());
        const live = Date.now();
        text(live > 1700000000000);
        text(new Date(5).getTime());
        "#,
    )
    .clock(&[1_000, 86_400_000, 0])
    .run();
    let texts = run.ok_texts();
    assert_eq!(texts[0], "1000");
    assert_eq!(texts[1], "86400000");
    assert!(texts[2].starts_with("Thu Jan 01 1970"), "{}", texts[2]);
    assert_eq!(texts[3], "true");
    // A date of the cell's own making reads no clock.
    assert_eq!(texts[4], "5");
    // Only the live reading is reported, ahead of the output that followed it.
    let live = readings(&run.events);
    assert_eq!(live.len(), 1, "{live:?}");
    let clock_at = run
        .events
        .iter()
        .position(|event| matches!(event, CellEvent::Clock(_)))
        .unwrap();
    let fourth_output = run
        .events
        .iter()
        .enumerate()
        .filter(|(_, event)| matches!(event, CellEvent::Output(_)))
        .nth(3)
        .unwrap()
        .0;
    assert!(clock_at < fourth_output);
}

#[test]
fn every_way_to_read_the_time_goes_through_the_clock() {
    let run = cell(
        r#"
        const fixed = new Intl.DateTimeFormat("en-US", { timeZone: "UTC", year: "numeric" });
        text(fixed.format());
        text(fixed.formatToParts()[0].value);
        class Later extends Date {}
        const later = new Later();
        text(later instanceof Date && later instanceof Later && later.getTime());
        text(Date.length + " " + Date.name + " " + (new Date().constructor === Date));
        text(typeof Date.parse("2020-01-01") + " " + Date.UTC(1970, 0, 2));
        "#,
    )
    .clock(&[0, 86_400_000 * 366, 42, 0])
    .run();
    assert_eq!(
        run.ok_texts(),
        ["1970", "1971", "42", "7 Date true", "number 86400000"]
    );
    assert!(readings(&run.events).is_empty());
}

#[test]
fn weak_references_keep_their_targets_and_registries_never_call_back() {
    let run = cell(
        r#"
        let target = { big: new Array(1000).fill(1) };
        const ref = new WeakRef(target);
        let called = false;
        const registry = new FinalizationRegistry(() => { called = true; });
        registry.register(target, "held");
        target = null;
        // Past the job that made the reference, the collector may clear it: make it run.
        await new Promise((resolve) => setTimeout(resolve, 1));
        for (let round = 0; round < 40; round++) {
          let junk = [];
          for (let i = 0; i < 200; i++) junk.push(new Array(10000).fill(round));
          junk = null;
          await new Promise((resolve) => setTimeout(resolve, 0));
        }
        text(ref.deref().big.length + " " + called + " " + (ref instanceof WeakRef));
        try { new WeakRef(1); } catch (error) { text(error instanceof TypeError); }
        try { new FinalizationRegistry(1); } catch (error) { text(error instanceof TypeError); }
        "#,
    )
    .run();
    assert_eq!(run.ok_texts(), ["1000 false true", "true", "true"]);
}
