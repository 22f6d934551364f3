//! Answers nobody took: what the runtime gave to a call whose caller had dropped it by
//! the time the answer crossed the wire (the cancellation and the answer passed each
//! other). In process such an observation consumes nothing (contract 3.3); over the wire
//! the runtime has already handed the output over, so the host keeps it here, per cell,
//! and the cell's next observation returns it.
//!
//! How the next observation uses it: an answer that already ends the cell, or one of the
//! kind the caller asks for, is returned as it is (it is what the dropped call would have
//! returned); otherwise the call goes to the runtime and the kept items come first in its
//! answer, so that no output is lost or reordered.

use code_mode_protocol::{CallId, CellId, CellResponse, PendingOutcome};

/// An answer the runtime gave for a cell and no caller took.
#[derive(Debug)]
pub(crate) enum Unclaimed {
    /// To `execute`, `wait` or `terminate`.
    Response(CellResponse),
    /// To `execute_to_pending` or `wait_to_pending`.
    Outcome(PendingOutcome),
}

impl Unclaimed {
    /// The runtime's cell id the answer is about.
    pub(crate) fn cell_id(&self) -> &CellId {
        match self {
            Unclaimed::Response(response)
            | Unclaimed::Outcome(PendingOutcome::Completed(response)) => response.cell_id(),
            Unclaimed::Outcome(PendingOutcome::Pending { cell_id, .. }) => cell_id,
        }
    }

    /// This answer followed by a `later` one for the same cell, as one.
    pub(crate) fn then(self, later: Unclaimed) -> Unclaimed {
        match later {
            Unclaimed::Response(response) => {
                Unclaimed::Response(CellResponse::after(self, response))
            }
            Unclaimed::Outcome(outcome) => Unclaimed::Outcome(PendingOutcome::after(self, outcome)),
        }
    }

    /// The output items, and the nested calls reported with them (pending-aware only).
    fn into_parts(self) -> (Vec<code_mode_protocol::ContentItem>, Vec<CallId>) {
        match self {
            Unclaimed::Response(response)
            | Unclaimed::Outcome(PendingOutcome::Completed(response)) => {
                (items_of(response), Vec::new())
            }
            Unclaimed::Outcome(PendingOutcome::Pending {
                content_items,
                pending_tool_call_ids,
                ..
            }) => (content_items, pending_tool_call_ids),
        }
    }
}

/// An observation's answer that can absorb an unclaimed one.
pub(crate) trait Reclaim: Sized {
    /// The unclaimed answer itself, when it can stand for this observation: it ends the
    /// cell, or (when `same_kind_settles`) it is of this observation's kind.
    fn settled_by(unclaimed: Unclaimed, same_kind_settles: bool) -> Result<Self, Unclaimed>;

    /// The runtime's `answer`, with the unclaimed output before its own.
    fn after(unclaimed: Unclaimed, answer: Self) -> Self;
}

impl Reclaim for CellResponse {
    fn settled_by(unclaimed: Unclaimed, same_kind_settles: bool) -> Result<Self, Unclaimed> {
        match unclaimed {
            Unclaimed::Response(response)
                if same_kind_settles || !matches!(response, CellResponse::Yielded { .. }) =>
            {
                Ok(response)
            }
            Unclaimed::Outcome(PendingOutcome::Completed(response)) => Ok(response),
            other => Err(other),
        }
    }

    fn after(unclaimed: Unclaimed, answer: Self) -> Self {
        if answer.is_missing_cell() {
            // The runtime no longer knows the cell: what was kept is all there is.
            let cell_id = unclaimed.cell_id().clone();
            return match unclaimed {
                Unclaimed::Response(response)
                | Unclaimed::Outcome(PendingOutcome::Completed(response)) => response,
                Unclaimed::Outcome(PendingOutcome::Pending { content_items, .. }) => {
                    CellResponse::Yielded {
                        cell_id,
                        content_items,
                        wall_time: answer.wall_time(),
                    }
                }
            };
        }
        let (earlier, _) = unclaimed.into_parts();
        answer.with_items_before(earlier)
    }
}

impl Reclaim for PendingOutcome {
    fn settled_by(unclaimed: Unclaimed, same_kind_settles: bool) -> Result<Self, Unclaimed> {
        match unclaimed {
            Unclaimed::Outcome(outcome)
                if same_kind_settles || matches!(outcome, PendingOutcome::Completed(_)) =>
            {
                Ok(outcome)
            }
            Unclaimed::Response(response) if !matches!(response, CellResponse::Yielded { .. }) => {
                Ok(PendingOutcome::Completed(response))
            }
            other => Err(other),
        }
    }

    fn after(unclaimed: Unclaimed, answer: Self) -> Self {
        match answer {
            PendingOutcome::Completed(response) => {
                PendingOutcome::Completed(CellResponse::after(unclaimed, response))
            }
            PendingOutcome::Pending {
                cell_id,
                content_items,
                pending_tool_call_ids,
                wall_time,
            } => {
                let (mut items, mut calls) = unclaimed.into_parts();
                items.extend(content_items);
                calls.extend(pending_tool_call_ids);
                PendingOutcome::Pending {
                    cell_id,
                    content_items: items,
                    pending_tool_call_ids: calls,
                    wall_time,
                }
            }
        }
    }
}

fn items_of(response: CellResponse) -> Vec<code_mode_protocol::ContentItem> {
    match response {
        CellResponse::Yielded { content_items, .. }
        | CellResponse::Terminated { content_items, .. }
        | CellResponse::Result { content_items, .. } => content_items,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use code_mode_protocol::ContentItem;

    fn text(value: &str) -> ContentItem {
        ContentItem::InputText {
            text: value.to_owned(),
        }
    }

    fn yielded(items: &[&str]) -> CellResponse {
        CellResponse::Yielded {
            cell_id: CellId::new(3),
            content_items: items.iter().map(|item| text(item)).collect(),
            wall_time: std::time::Duration::ZERO,
        }
    }

    fn result(items: &[&str]) -> CellResponse {
        CellResponse::Result {
            cell_id: CellId::new(3),
            content_items: items.iter().map(|item| text(item)).collect(),
            error_text: None,
            failure: None,
            missing_cell: false,
            wall_time: std::time::Duration::ZERO,
        }
    }

    fn pending(items: &[&str], calls: &[&str]) -> PendingOutcome {
        PendingOutcome::Pending {
            cell_id: CellId::new(3),
            content_items: items.iter().map(|item| text(item)).collect(),
            pending_tool_call_ids: calls.iter().map(|call| call.parse().unwrap()).collect(),
            wall_time: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn a_kept_yield_answers_the_next_wait_alone() {
        let kept = Unclaimed::Response(yielded(&["a"]));
        assert_eq!(kept.cell_id(), "3");
        assert_eq!(
            CellResponse::settled_by(kept, true).unwrap(),
            yielded(&["a"])
        );
    }

    #[test]
    fn a_kept_yield_goes_before_what_terminate_returns() {
        let kept = Unclaimed::Response(yielded(&["a"]));
        let kept = CellResponse::settled_by(kept, false).unwrap_err();
        let terminated = CellResponse::Terminated {
            cell_id: CellId::new(3),
            content_items: vec![text("b")],
            wall_time: std::time::Duration::ZERO,
        };
        assert_eq!(
            CellResponse::after(kept, terminated),
            CellResponse::Terminated {
                cell_id: CellId::new(3),
                content_items: vec![text("a"), text("b")],
                wall_time: std::time::Duration::ZERO,
            }
        );
    }

    #[test]
    fn a_kept_result_answers_any_observation() {
        let kept = Unclaimed::Response(result(&["a"]));
        assert_eq!(
            CellResponse::settled_by(kept, false).unwrap(),
            result(&["a"])
        );
        let kept = Unclaimed::Response(result(&["a"]));
        assert_eq!(
            PendingOutcome::settled_by(kept, true).unwrap(),
            PendingOutcome::Completed(result(&["a"]))
        );
    }

    #[test]
    fn a_kept_frontier_goes_before_a_wait_and_after_a_missing_cell_is_all_there_is() {
        let kept = Unclaimed::Outcome(pending(&["a"], &["tool-1"]));
        let kept = CellResponse::settled_by(kept, true).unwrap_err();
        assert_eq!(
            CellResponse::after(kept, result(&["b"])),
            result(&["a", "b"])
        );
        let kept = Unclaimed::Outcome(pending(&["a"], &["tool-1"]));
        assert_eq!(
            CellResponse::after(kept, CellResponse::missing("3")),
            yielded(&["a"])
        );
    }

    #[test]
    fn kept_output_and_calls_go_before_the_next_frontier() {
        let kept = Unclaimed::Outcome(pending(&["a"], &["tool-1"]));
        let kept = PendingOutcome::settled_by(kept, false).unwrap_err();
        assert_eq!(
            PendingOutcome::after(kept, pending(&["b"], &["tool-2"])),
            pending(&["a", "b"], &["tool-1", "tool-2"])
        );
        let kept = Unclaimed::Response(yielded(&["a"]));
        let kept = PendingOutcome::settled_by(kept, true).unwrap_err();
        assert_eq!(
            PendingOutcome::after(kept, PendingOutcome::Completed(result(&["b"]))),
            PendingOutcome::Completed(result(&["a", "b"]))
        );
    }
}
