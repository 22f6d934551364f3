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
    use std::sync::Arc;

    /// Runs one cell to its end and waits until it is closed (its isolate parked).
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
    ) -> (InProcessSession, Arc<TestDelegate>) {
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
        assert_eq!((first.isolates_reused(), first.isolates_parked()), (0, 1));
        run(&first, &first_delegate, "2").await;
        assert_eq!(
            (first.isolates_reused(), first.isolates_parked()),
            (1, 1),
            "the second cell runs on the isolate the first left parked"
        );

        let (second, second_delegate) = open(&provider, true);
        run(&second, &second_delegate, "1").await;
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
