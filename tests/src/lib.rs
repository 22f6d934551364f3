//! The conformance suite: the contract's session rules (`docs/CONTRACT.md` sections 3 to 6),
//! written once against [`CodeModeSession`](code_mode_protocol::CodeModeSession) and run for every provider.
//!
//! `conformance_suite!(provider)` expands to one `#[tokio::test]` per scenario in
//! [`scenarios`] for any [`code_mode_protocol::CodeModeProvider`], the public trait every
//! provider implements. Every scenario asserts exact items,
//! statuses and error strings, and orders events rather than timing them; where real time
//! is involved the margins are generous.

#![forbid(unsafe_code)]

pub mod chaos;
pub mod delegate;
pub mod durable;
pub mod hostile;
pub mod loss;
pub mod phoenix;
pub mod postgres;
pub mod proxy;
pub mod remote;
pub mod scenarios;
pub mod scratch;

pub use delegate::{Record, TestDelegate};
pub use postgres::PgCluster;
pub use scratch::Scratch;

/// The README's Rust examples, compiled as doc tests so that they cannot rot. They live
/// here because this crate may use both providers (as dev-dependencies) without making
/// the host crate link V8.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;

/// The Rust examples of the documentation pages the README links to.
#[cfg(doctest)]
#[doc = include_str!("../../docs/EMBEDDING.md")]
pub struct EmbeddingExamples;

#[cfg(doctest)]
#[doc = include_str!("../../docs/REMOTE.md")]
pub struct RemoteExamples;

/// Expands to one test per conformance scenario for the provider expression given. With
/// `keeping`, the expression gives the provider and what must outlive it (a runtime it
/// reaches, say), as a pair.
#[macro_export]
macro_rules! conformance_suite {
    (keeping $provider_and_kept:expr) => {
        $crate::conformance_suite!(@tests $provider_and_kept;
            text_yield_text_then_wait,
            pending_frontier_with_a_blocking_tool,
            pending_frontier_with_two_parallel_tools,
            tool_started_by_a_timer_reported_at_the_next_frontier,
            terminate_after_an_unobserved_completion_returns_the_completion,
            terminate_waits_for_the_notification_to_be_cancelled,
            terminated_writes_are_discarded,
            second_terminate_during_cleanup_is_refused,
            an_exec_observing_a_terminated_cell_gets_terminated,
            a_wait_observing_a_terminated_cell_gets_terminated,
            cells_are_reported_closed_in_the_order_they_ended,
            second_concurrent_wait_is_refused,
            unawaited_tool_is_cancelled_when_the_cell_completes,
            stored_values_are_per_session,
            concurrent_cells_merge_writes_by_key,
            writes_before_a_script_error_are_committed,
            storing_undefined_keeps_the_old_value,
            shutdown_stops_cpu_bound_cells_and_refuses_new_ones,
            shutdown_racing_admission_closes_each_admitted_cell_once,
            exit_in_sixteen_places,
            yield_time_grace_and_session_cap,
            wait_on_an_unknown_cell_is_the_missing_outcome,
            yield_raced_with_creation_is_kept_for_the_first_observation,
            dropping_a_session_stops_its_cells,
            lone_surrogates_in_tool_arguments_become_replacement_characters,
            parallel_calls_reach_the_delegate_in_call_order,
            typescript_cells_run_with_their_own_positions,
            cells_on_a_reused_isolate_are_kept_apart,
            tool_payloads_reach_a_text_delegate_as_the_cell_wrote_them,
            many_large_tool_results_do_not_pile_up,
            answers_left_untaken_by_a_dropped_call_are_kept,
            an_answer_held_unpolled_by_a_slow_caller_is_kept,
            audio_items_cross_in_order,
            as_settled_reports_nested_calls_as_they_finish,
            deferred_tools_are_found_with_tool_search_and_called,
            preempt_returns_the_output_so_far_and_the_cell_goes_on,
            interrupt_terminates_every_running_cell_and_keeps_the_session,
            admission_exec_call_id_and_a_delegate_per_exec,
            the_global_object_holds_only_the_contract_names,
            responses_carry_the_providers_measured_time,
            stored_values_snapshot_and_restore,
            a_store_beyond_the_session_cap_throws,
            terminate_stops_an_output_flood,
            failures_carry_their_kind,
            a_hibernating_cell_ends_with_its_fault_free_output,
            a_hibernating_cell_is_terminated,
            a_woken_cell_exits,
        );
    };
    ($provider:expr) => {
        $crate::conformance_suite!(keeping ($provider, ()));
    };
    (@tests $provider:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (provider, _kept) = $provider;
                $crate::scenarios::run_with_deadline($crate::scenarios::$name(&provider)).await;
            }
        )*
    };
}
