//! The conformance suite against [`InProcessProvider`].

use code_mode::{InProcessConfig, InProcessProvider};

code_mode_conformance::conformance_suite!(InProcessProvider::new(InProcessConfig::default()));

/// Contract §7 at the provider: a session's cells run on the isolate its earlier cell left
/// parked; another session never gets that isolate; without reuse every cell gets a new
/// one. (The conformance scenario `cells_on_a_reused_isolate_are_kept_apart` checks that
/// nothing crosses between cells; this checks which isolate they ran on.)
mod isolate_reuse {
    use code_mode::{InProcessConfig, InProcessProvider, InProcessSession};
    use code_mode_conformance::TestDelegate;
    use code_mode_protocol::{CodeModeProvider, CodeModeSession, ExecRequest, SessionOptions};
    use code_mode_trace::traced::Traced;
    use std::sync::Arc;

    /// Waits (at most 20 s) until `session` has `count` isolates parked: a cell is
    /// reported closed before its thread has reset and parked its isolate.
    async fn until_parked(session: &InProcessSession, count: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while session.isolates_parked() != count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} isolates parked, not {count}",
                session.isolates_parked()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Runs one cell to its end and waits until it is closed.
    async fn run(session: &InProcessSession, delegate: &TestDelegate, cell: &str) {
        let started = session
            .execute(ExecRequest::new(format!("text({cell:?});")))
            .await
            .expect("exec");
        assert_eq!(started.cell_id.to_string(), cell);
        assert_eq!(started.initial_response.error_text(), None);
        delegate.wait_closed(cell).await;
    }

    fn open(
        provider: &InProcessProvider,
        reuse_isolates: bool,
    ) -> (Traced<InProcessSession>, Arc<TestDelegate>) {
        let delegate = TestDelegate::new();
        let options = SessionOptions {
            reuse_isolates,
            ..SessionOptions::default()
        };
        (provider.open_session(delegate.clone(), options), delegate)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn isolates_are_reused_within_a_session_and_never_across_sessions() {
        let provider = InProcessProvider::new(InProcessConfig::default());
        let (first, first_delegate) = open(&provider, true);
        run(&first, &first_delegate, "1").await;
        until_parked(&first, 1).await;
        assert_eq!((first.isolates_reused(), first.isolates_parked()), (0, 1));
        run(&first, &first_delegate, "2").await;
        until_parked(&first, 1).await;
        assert_eq!(
            (first.isolates_reused(), first.isolates_parked()),
            (1, 1),
            "the second cell runs on the isolate the first left parked"
        );

        let (second, second_delegate) = open(&provider, true);
        run(&second, &second_delegate, "1").await;
        until_parked(&second, 1).await;
        assert_eq!(
            (second.isolates_reused(), first.isolates_parked()),
            (0, 1),
            "another session's cell never takes the first session's parked isolate"
        );
        assert_eq!(second.isolates_parked(), 1);
        run(&first, &first_delegate, "3").await;
        assert_eq!(first.isolates_reused(), 2);

        let (fresh, fresh_delegate) = open(&provider, false);
        run(&fresh, &fresh_delegate, "1").await;
        run(&fresh, &fresh_delegate, "2").await;
        assert_eq!(
            (fresh.isolates_reused(), fresh.isolates_parked()),
            (0, 0),
            "without reuse no isolate is parked or reused"
        );
    }
}

/// The default cap on a session's stored values is 64 MiB of keys and JSON text: a
/// session with default options fills it to the byte, and one byte more is refused.
/// (In process only: the values would not fit a wire frame, which has the same 64 MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_stored_value_cap_is_64_mib() {
    use code_mode::{InProcessConfig, InProcessProvider};
    use code_mode_conformance::TestDelegate;
    use code_mode_protocol::{CodeModeProvider, CodeModeSession, ExecRequest, SessionOptions};

    const MIB: u64 = 1024 * 1024;
    let provider = InProcessProvider::new(InProcessConfig::default());
    let session = provider.open_session(TestDelegate::new(), SessionOptions::default());
    // "a", "b" and "c" take 1 + (16 MiB + 2) bytes each (one value's JSON may not pass
    // 32 MiB); "d" then fills the cap exactly.
    let third = 16 * MIB;
    let rest = 64 * MIB - 3 * (1 + third + 2) - (1 + 2);
    let started = session
        .execute(ExecRequest::new(format!(
            r#"for (const key of ["a", "b", "c"]) store(key, "x".repeat({third}));
            store("d", "y".repeat({rest}));
            text("full");
            try {{ store("e", 1); }} catch (e) {{ text(String(e)); }}"#
        )))
        .await
        .expect("exec");
    assert_eq!(started.initial_response.error_text(), None);
    let texts: Vec<&str> = started
        .initial_response
        .content_items()
        .iter()
        .filter_map(|item| item.as_text())
        .collect();
    assert_eq!(
        texts,
        [
            "full",
            &format!(
                r#"Unable to store "e": the session's stored values would take {} bytes, more than their limit of {} bytes. Store less, or store smaller values."#,
                64 * MIB + 2,
                64 * MIB
            ),
        ]
    );
    assert_eq!(session.stored_values().len(), 4);
}

/// Durable cells in process (CONTRACT §7): the cell of the durable scenario hibernates at
/// its waits (its thread and isolate given back) and is woken for each answer; 1 000 cells
/// parked on unanswered calls hibernate and each completes correctly once answered, in a
/// random order; a rebuilt cell that makes another call fails with the named divergence
/// and sends nothing.
mod hibernation {
    use code_mode::{InProcessConfig, InProcessProvider, InProcessSession};
    use code_mode_conformance::durable;
    use code_mode_conformance::{Record, TestDelegate};
    use code_mode_protocol::{
        CellResponse, CodeModeProvider, CodeModeSession, ContentItem, ExecRequest, FailureKind,
        WaitRequest,
    };
    use code_mode_trace::traced::Traced;
    use serde_json::json;
    use std::sync::Arc;
    use std::time::Duration;

    fn open(after_ms: Option<u64>) -> (Traced<InProcessSession>, Arc<TestDelegate>) {
        let provider = InProcessProvider::new(InProcessConfig::default());
        let delegate = TestDelegate::new();
        let session = provider.open_session(delegate.clone(), durable::options(after_ms));
        (session, delegate)
    }

    /// Waits until `count` cells of `session` hibernate.
    async fn until_hibernating(session: &InProcessSession, count: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while session.cells_hibernating() != count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} cells hibernate, not {count}",
                session.cells_hibernating()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Threads of this process now.
    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.count())
    }

    /// In process, the cell's inner life is in its trace: its compile and evaluation, a
    /// timer that fired (an event of the cell's span), a hibernation and the replay that
    /// woke the cell (with the rebuilt incarnation's compile under it); checked in
    /// Phoenix, under an agent core's own span.
    #[tokio::test(flavor = "current_thread")]
    async fn a_hibernated_cell_shows_its_sleep_and_its_replay_in_its_trace() {
        use code_mode_conformance::phoenix::{
            agent_core_tracing, agent_turn, caller, children, flushed_trace, phoenix, span_id,
        };
        use tracing::Instrument as _;
        let phoenix = tokio::task::spawn_blocking(phoenix).await.expect("Phoenix");
        let (trace_id, traceparent) = caller("in-process hibernation");
        let exporting = agent_core_tracing(phoenix);
        let turn = agent_turn(&traceparent);
        async {
            let (session, delegate) = open(Some(0));
            session
                .execute(
                    ExecRequest::new(
                        "await new Promise((r) => setTimeout(r, 5)); const v = await tools.block(1); text('got ' + v);",
                    )
                    .with_tools(TestDelegate::tools())
                    .with_yield_time_ms(0),
                )
                .await
                .expect("exec");
            until_hibernating(&session, 1).await;
            delegate.release("1", "tool-1", Ok(json!("x"))).await;
            let response = session
                .wait(WaitRequest::new("1").with_yield_time_ms(30_000))
                .await
                .expect("wait");
            assert_eq!(response.content_items(), [ContentItem::text("got x")]);
            session.shutdown().await;
        }
        .instrument(turn)
        .await;
        // Phoenix stores what it receives in batches of its own: wait until every kind of
        // span checked below is there (or a minute passed).
        let spans = flushed_trace(exporting, trace_id, |spans| {
            [
                "code_mode.replay",
                "code_mode.cell",
                "code_mode.hibernated",
                "code_mode.tool_call",
            ]
            .iter()
            .all(|name| spans.iter().any(|span| span["name"] == *name))
        })
        .await;
        let turn = spans
            .iter()
            .find(|span| span["name"] == "agent.turn")
            .expect("the agent's span");
        let cells = children(&spans, turn, "code_mode.cell");
        let [cell] = cells[..] else {
            panic!("one cell under the agent's span: {spans:#?}")
        };
        assert_eq!(
            children(&spans, cell, "code_mode.hibernated").len(),
            1,
            "{spans:#?}"
        );
        assert_eq!(
            children(&spans, cell, "code_mode.replay").len(),
            1,
            "{spans:#?}"
        );
        assert_eq!(children(&spans, cell, "code_mode.tool_call").len(), 1);
        // The first incarnation's compile and evaluation under the cell; the rebuilt one's
        // under its replay.
        assert_eq!(
            children(&spans, cell, "code_mode.compile").len(),
            1,
            "{spans:#?}"
        );
        assert_eq!(
            children(&spans, cell, "code_mode.evaluate").len(),
            1,
            "{spans:#?}"
        );
        let replay = children(&spans, cell, "code_mode.replay")[0];
        assert_eq!(
            children(&spans, replay, "code_mode.compile").len(),
            1,
            "{spans:#?}"
        );
        let events: Vec<&str> = cell["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|event| event["name"].as_str())
            .collect();
        assert!(
            events.contains(&"timer fired"),
            "{events:?} of {}",
            span_id(cell)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_durable_cell_hibernates_at_its_waits_and_wakes_for_each_answer() {
        let (session, delegate) = open(Some(0));
        let outcome = durable::run_source(&session, &delegate).await;
        durable::check(&outcome);
        let (hibernations, wakes) = session.hibernation_counts();
        // One hibernation per answered wait (the echo's is answered at once): 14 waits.
        assert!(hibernations >= 10, "{hibernations} hibernations");
        assert_eq!(hibernations, wakes);
        assert_eq!(session.cells_hibernating(), 0);

        // Off, the same cell never hibernates.
        let (session, delegate) = open(None);
        durable::check(&durable::run_source(&session, &delegate).await);
        assert_eq!(session.hibernation_counts(), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_parked_cells_hibernate_and_each_completes_once_answered() {
        const CELLS: usize = 1_000;
        let (session, delegate) = open(Some(0));
        let before = threads();
        for n in 0..CELLS {
            let source = format!(
                "const r = Math.random(); const v = await tools.block({{ n: {n}, r }}); text(v + ' ' + (r < 1));"
            );
            let started = session
                .execute(
                    ExecRequest::new(source)
                        .with_tools(TestDelegate::tools())
                        .with_yield_time_ms(0),
                )
                .await
                .expect("exec");
            assert!(matches!(
                started.initial_response,
                CellResponse::Yielded { .. }
            ));
        }
        until_hibernating(&session, CELLS as u64).await;
        let parked_threads = threads();
        assert!(
            parked_threads < before + 64,
            "{parked_threads} threads with {CELLS} cells hibernating ({before} before)"
        );
        // Answered in a scrambled order.
        let mut order: Vec<usize> = (1..=CELLS).collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for i in (1..order.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, usize::try_from(state % (i as u64 + 1)).unwrap());
        }
        for cell in &order {
            delegate
                .release(&cell.to_string(), "tool-1", Ok(json!(format!("v{cell}"))))
                .await;
        }
        for cell in 1..=CELLS {
            let response = session
                .wait(WaitRequest::new(cell.to_string()).with_yield_time_ms(30_000))
                .await
                .expect("wait");
            assert_eq!(
                response.timeless(),
                CellResponse::Result {
                    cell_id: cell.to_string().into(),
                    content_items: vec![code_mode_protocol::ContentItem::text(format!(
                        "v{cell} true"
                    ))],
                    failure: None,
                    wall_time: Duration::ZERO,
                }
            );
        }
        let calls = durable::calls_started(&delegate.records());
        assert_eq!(calls.get("tool-1"), Some(&CELLS));
        assert_eq!(calls.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuilt_cell_that_makes_another_call_fails_and_sends_nothing() {
        let (session, delegate) = open(Some(0));
        session
            .execute(
                ExecRequest::new(
                    r#"const a = await tools.block("divergent"); text(a); await tools.echo(a);"#,
                )
                .with_tools(TestDelegate::tools())
                .with_yield_time_ms(0),
            )
            .await
            .expect("exec");
        delegate.wait_started("1", "tool-1").await;
        until_hibernating(&session, 1).await;
        code_mode::session::perturb_replayed_calls(Some("divergent"));
        delegate.release("1", "tool-1", Ok(json!("x"))).await;
        let response = session
            .wait(WaitRequest::new("1").with_yield_time_ms(10_000))
            .await
            .expect("wait");
        code_mode::session::perturb_replayed_calls(None);
        let CellResponse::Result {
            failure: Some(failure),
            ..
        } = &response
        else {
            panic!("the cell did not fail: {response:?}");
        };
        assert_eq!(failure.kind, FailureKind::ReplayDiverged);
        assert_eq!(
            failure.text,
            code_mode_protocol::texts::replay_diverged(1, "block")
        );
        let started = delegate
            .records()
            .into_iter()
            .filter(|record| matches!(record, Record::ToolStarted { .. }))
            .count();
        assert_eq!(started, 1, "a call was sent after the divergence");
    }
}

/// A cell rebuilt in another session from the journal its first session reported
/// (CONTRACT §7), as a host rebuilds a cell whose runtime was lost: it replays without
/// sending a call again or giving delivered output twice, takes the answer to the call
/// that was in flight, and ends as it would have.
mod resume {
    use code_mode::{InProcessConfig, InProcessProvider};
    use code_mode_conformance::{Record, TestDelegate};
    use code_mode_internal::sync::lock;
    use code_mode_protocol::journal::{CellJournal, JournalBuilder, JournalEntry};
    use code_mode_protocol::{
        BoxFuture, CallId, CellId, CellResponse, CodeModeProvider, CodeModeSession,
        CodeModeSessionDelegate, ContentItem, ExecRequest, JsonText, NestedToolCall,
        SessionOptions, StoredValues, ToolError, WaitRequest,
    };
    use std::sync::{Arc, Mutex};
    use tokio_util::sync::CancellationToken;

    /// The test delegate, keeping the journal of its session's cell as a host does: the
    /// session's entries, and its own calls and answers.
    struct Journaling {
        inner: Arc<TestDelegate>,
        entries: Mutex<Vec<(CellId, JournalEntry)>>,
        builder: Mutex<Option<JournalBuilder>>,
    }

    impl CodeModeSessionDelegate for Journaling {
        fn invoke_tool(
            &self,
            call: NestedToolCall,
            cancel: CancellationToken,
        ) -> BoxFuture<'_, Result<JsonText, ToolError>> {
            let call_id = call.call_id;
            if let Some(builder) = lock(&self.builder).as_mut() {
                builder.asked(
                    call_id,
                    &call.tool_name,
                    call.input.as_ref().map(JsonText::as_str),
                );
            }
            Box::pin(async move {
                let result = self.inner.invoke_tool(call, cancel).await;
                if let Some(builder) = lock(&self.builder).as_mut() {
                    builder.answered(call_id, result.clone());
                }
                result
            })
        }

        fn committed(&self, cell_id: &CellId, writes: &StoredValues) {
            self.inner.committed(cell_id, writes);
        }

        fn keeps_journals(&self) -> bool {
            true
        }

        fn journal(&self, cell_id: &CellId, entry: JournalEntry) {
            let mut builder = lock(&self.builder);
            match (&entry, builder.as_mut()) {
                (JournalEntry::Started { seed }, _) => {
                    *builder = Some(JournalBuilder::new(CellJournal::start(
                        SOURCE.to_owned(),
                        TestDelegate::tools(),
                        Arc::new(StoredValues::new()),
                        *seed,
                    )));
                }
                (_, Some(builder)) => builder.apply(entry.clone()),
                (_, None) => panic!("an entry before the start: {entry:?}"),
            }
            lock(&self.entries).push((cell_id.clone(), entry));
        }
    }

    const SOURCE: &str = r#"
        const r = Math.random(); const t0 = Date.now();
        text("a " + typeof r);
        const x = await tools.echo({ r: String(r), t0 });
        text("b");
        const y = await tools.block(1);
        text("c " + y + " " + (x.t0 === t0) + " " + (x.r === String(r)));
    "#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cell_is_rebuilt_in_another_session_from_its_journal() {
        let provider = InProcessProvider::new(InProcessConfig::default());
        let first = Arc::new(Journaling {
            inner: TestDelegate::new(),
            entries: Mutex::new(Vec::new()),
            builder: Mutex::new(None),
        });
        let options = SessionOptions {
            hibernate_after_ms: None,
            ..SessionOptions::default()
        };
        let lost = provider.open_session(first.clone(), options.clone());
        let started = lost
            .execute(
                ExecRequest::new(SOURCE)
                    .with_tools(TestDelegate::tools())
                    .with_yield_time_ms(0),
            )
            .await
            .expect("exec");
        first.inner.wait_started("1", "tool-2").await;
        let mut delivered = started.initial_response.content_items().len();
        let response = lost
            .wait(WaitRequest::new("1").with_yield_time_ms(0))
            .await
            .expect("wait");
        delivered += response.content_items().len();
        let seen: Vec<ContentItem> = [started.initial_response, response]
            .iter()
            .flat_map(|response| response.content_items().to_vec())
            .collect();
        assert_eq!(
            seen,
            [ContentItem::text("a number"), ContentItem::text("b")]
        );

        // What a host keeps of the cell: the session reported its start and its clock
        // readings, and nothing of the calls the delegate saw itself.
        let entries = lock(&first.entries).clone();
        assert!(entries.iter().all(|(cell, _)| *cell == "1"), "{entries:?}");
        assert!(
            entries.iter().all(|(_, entry)| matches!(
                entry,
                JournalEntry::Started { .. } | JournalEntry::Clock(_)
            )),
            "{entries:?}"
        );
        let mut journal = lock(&first.builder)
            .as_ref()
            .expect("started")
            .build()
            .expect("a whole journal");
        assert_eq!(journal.issued.len(), 2, "{journal:?}");
        assert_eq!(journal.entered.len(), 1, "{journal:?}");
        assert!(!journal.clock.is_empty());
        journal.outputs = delivered as u64;

        // The first session is gone; another takes the cell.
        drop(lost);
        let second = TestDelegate::new();
        let session = provider.open_session(second.clone(), options);
        let cell = session.resume(journal, None, None, false).expect("resume");
        assert!(
            session
                .answer_call(&cell, CallId::new(2), Ok(JsonText::new("\"Y\"")))
                .await
        );
        let response = session
            .wait(WaitRequest::new(cell.clone()).with_yield_time_ms(10_000))
            .await
            .expect("wait");
        assert_eq!(
            response.timeless(),
            CellResponse::Result {
                cell_id: cell,
                content_items: vec![ContentItem::text("c Y true true")],
                failure: None,
                wall_time: std::time::Duration::ZERO,
            }
        );
        let calls: Vec<Record> = second
            .records()
            .into_iter()
            .filter(|record| matches!(record, Record::ToolStarted { .. }))
            .collect();
        assert!(
            calls.is_empty(),
            "the rebuilt cell sent calls again: {calls:?}"
        );
    }
}
