//! The actor's ordering gate: which of its answers were not taken yet, so that a cell's
//! next delegate callbacks start only after the answers before them were taken, and a
//! front end sees answers and later events in the order they happened. In process an
//! answer is taken when its caller takes it; over the wire, when the host says so.
//!
//! That wait, and only that wait, gives up after [`ACK_PATIENCE`]: past it ordering gives
//! way rather than stalling the cell; the answer itself still waits for its caller.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long the actor holds a cell's next delegate callback back for a caller that has
/// its answer but has not taken it yet (its future is not polled), so that callbacks follow
/// the answers they came after: past it, ordering gives way rather than stalling the cell.
/// Only ordering: an answer itself is never dropped on a timer; one its caller drops
/// untaken goes back to the cell's next observation.
pub(crate) const ACK_PATIENCE: Duration = Duration::from_secs(1);

/// The acknowledgement of one answer: dropped when the caller took it (or never will).
#[derive(Debug)]
pub(crate) struct Ack(
    #[expect(dead_code, reason = "signals by being dropped")] oneshot::Sender<()>,
);

/// The actor's end of an [`Ack`]: resolves once the answer was taken.
#[derive(Debug)]
struct Taken(oneshot::Receiver<()>);

impl Taken {
    /// Whether the answer was taken already (or its caller is gone).
    fn is_taken(&mut self) -> bool {
        !matches!(self.0.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    /// Waits until the answer was taken.
    async fn wait(self) {
        let _ = self.0.await;
    }
}

/// The answers the actor handed over and that were not taken yet, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Unacked(VecDeque<Taken>);

impl Unacked {
    /// The acknowledgement of an answer about to be handed over, remembered here. Answers
    /// already taken are forgotten first, so that answers taken at once do not pile up.
    pub(crate) fn ack(&mut self) -> Ack {
        self.forget_taken();
        let (ack, taken) = oneshot::channel();
        self.0.push_back(Taken(taken));
        Ack(ack)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every answer handed over was taken; forgets those that were.
    pub(crate) fn all_taken(&mut self) -> bool {
        self.forget_taken();
        self.0.is_empty()
    }

    fn forget_taken(&mut self) {
        self.0.retain_mut(|taken| !taken.is_taken());
    }

    /// Waits until the oldest answer was taken, or [`ACK_PATIENCE`] passed, and forgets
    /// it. Resolves at once when there is none.
    ///
    /// Cancel safety: dropping the future before it resolves forgets nothing.
    pub(crate) async fn oldest_taken(&mut self) {
        if let Some(oldest) = self.0.front_mut() {
            let _ = tokio::time::timeout(ACK_PATIENCE, &mut oldest.0).await;
            self.0.pop_front();
        }
    }

    /// Waits until every answer was taken, giving each at most [`ACK_PATIENCE`] (for
    /// ordering only: see the module's documentation).
    pub(crate) async fn all_taken_or_patience(self) {
        for taken in self.0 {
            let _ = tokio::time::timeout(ACK_PATIENCE, taken.wait()).await;
        }
    }

    /// Waits until every answer was taken, however long that takes, or `stop` is
    /// cancelled: for a final answer, which the cell waits for before it is closed.
    pub(crate) async fn all_taken_or_stopped(self, stop: &CancellationToken) {
        for taken in self.0 {
            tokio::select! {
                () = taken.wait() => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_taken_are_forgotten_when_the_next_is_handed_over() {
        let mut unacked = Unacked::default();
        let first = unacked.ack();
        assert!(!unacked.is_empty());
        let second = unacked.ack();
        assert!(!unacked.all_taken());
        drop(first);
        assert!(!unacked.all_taken(), "the second is not taken");
        assert_eq!(unacked.0.len(), 1, "the taken one is forgotten");
        drop(second);
        let _third = unacked.ack();
        assert_eq!(unacked.0.len(), 1, "forgotten when the next is handed over");
    }

    #[tokio::test(start_paused = true)]
    async fn ordering_waits_for_an_untaken_answer_only_as_long_as_its_patience() {
        let mut unacked = Unacked::default();
        let _held = unacked.ack();
        let started = tokio::time::Instant::now();
        unacked.oldest_taken().await;
        assert_eq!(started.elapsed(), ACK_PATIENCE);
        assert!(unacked.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_answer_is_waited_for_past_any_patience_until_stopped() {
        let mut unacked = Unacked::default();
        let held = unacked.ack();
        let stop = CancellationToken::new();
        let wait = tokio::spawn({
            let stop = stop.clone();
            async move { unacked.all_taken_or_stopped(&stop).await }
        });
        tokio::time::sleep(ACK_PATIENCE * 10).await;
        assert!(!wait.is_finished());
        drop(held);
        wait.await.unwrap();
        let mut unacked = Unacked::default();
        let _never = unacked.ack();
        stop.cancel();
        unacked.all_taken_or_stopped(&stop).await;
    }
}
