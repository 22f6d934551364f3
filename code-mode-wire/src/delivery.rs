//! How an answer travels to the caller waiting for it, written once for both sides of the
//! wire: the in-process cell actor answering an observation, and the host's connection
//! handing a runtime's response to its caller.
//!
//! An answer is *delivered* as a [`Delivery`]: the value, its acknowledgement ([`Ack`]) and
//! the way back for when nobody takes it. The caller *takes* it ([`Delivery::take`]), which
//! acknowledges it. A caller that goes away with the answer untaken (its future dropped
//! while the answer waited in its channel) drops the delivery, and the value is *given
//! back* to the cell's next observation: a dropped observation consumes nothing, and no
//! answer is ever lost to a slow caller, because nothing here runs on a timer.
//!
//! The producer keeps the other end of each acknowledgement in [`Unacked`] and holds the
//! cell's next delegate callbacks back until the answers before them were taken, so that a
//! front end sees answers and later events in the order they happened. That wait, and only
//! that wait, gives up after [`ACK_PATIENCE`]: past it ordering gives way rather than
//! stalling the cell; the answer itself still waits for its caller.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long a provider holds a cell's next delegate callback back for a caller that has
/// its answer but has not taken it yet (its future is not polled), so that callbacks follow
/// the answers they came after: past it, ordering gives way rather than stalling the cell.
/// Only ordering: an answer itself is never dropped on a timer; one its caller drops
/// untaken goes back to the cell's next observation.
pub const ACK_PATIENCE: Duration = Duration::from_secs(1);

/// The acknowledgement of one answer: dropped when the caller took it (or never will).
#[derive(Debug)]
pub struct Ack(#[expect(dead_code, reason = "signals by being dropped")] oneshot::Sender<()>);

/// The producer's end of an [`Ack`]: resolves once the answer was taken.
#[derive(Debug)]
pub struct Taken(oneshot::Receiver<()>);

impl Taken {
    /// Whether the answer was taken already (or its caller is gone).
    pub fn is_taken(&mut self) -> bool {
        !matches!(self.0.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    /// Waits until the answer was taken.
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

/// A new acknowledgement: the [`Ack`] goes with the answer, the [`Taken`] stays.
pub fn acknowledgement() -> (Ack, Taken) {
    let (ack, taken) = oneshot::channel();
    (Ack(ack), Taken(taken))
}

/// The answers a producer handed over and that were not taken yet, oldest first.
#[derive(Debug, Default)]
pub struct Unacked(VecDeque<Taken>);

impl Unacked {
    /// The acknowledgement of an answer about to be handed over, remembered here.
    pub fn ack(&mut self) -> Ack {
        let (ack, taken) = acknowledgement();
        self.0.push_back(taken);
        ack
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets the answers already taken, so that a producer whose answers are taken at
    /// once does not pile them up.
    pub fn forget_taken(&mut self) {
        self.0.retain_mut(|taken| !taken.is_taken());
    }

    /// Waits until the oldest answer was taken, or [`ACK_PATIENCE`] passed, and forgets
    /// it. Resolves at once when there is none.
    ///
    /// Cancel safety: dropping the future before it resolves forgets nothing.
    pub async fn oldest_taken(&mut self) {
        if let Some(oldest) = self.0.front_mut() {
            let _ = tokio::time::timeout(ACK_PATIENCE, &mut oldest.0).await;
            self.0.pop_front();
        }
    }

    /// Waits until every answer was taken, giving each at most [`ACK_PATIENCE`] (for
    /// ordering only: see the module's documentation).
    pub async fn all_taken_or_patience(self) {
        for taken in self.0 {
            let _ = tokio::time::timeout(ACK_PATIENCE, taken.wait()).await;
        }
    }

    /// Waits until every answer was taken, however long that takes, or `stop` is
    /// cancelled: for a final answer, which the cell waits for before it is closed.
    pub async fn all_taken_or_stopped(self, stop: &CancellationToken) {
        for taken in self.0 {
            tokio::select! {
                () = taken.wait() => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// The way an untaken answer goes back to its cell.
type GiveBack<T> = Box<dyn FnOnce(T) + Send>;

/// An answer on its way to a caller: the value, its acknowledgement, and the way back for
/// when the caller drops it untaken.
pub struct Delivery<T> {
    /// Present until taken.
    value: Option<T>,
    ack: Option<Ack>,
    give_back: Option<GiveBack<T>>,
}

impl<T> std::fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("acknowledged", &self.ack.is_none())
            .field("given_back", &self.give_back.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Delivery<T> {
    /// An answer nothing waits on and nothing gives back (a refusal, a failure).
    pub fn plain(value: T) -> Self {
        Self {
            value: Some(value),
            ack: None,
            give_back: None,
        }
    }

    /// An answer acknowledged by `ack` and, if `give_back` is given, handed to it when
    /// the caller drops it untaken.
    pub fn new(value: T, ack: Option<Ack>, give_back: Option<GiveBack<T>>) -> Self {
        Self {
            value: Some(value),
            ack,
            give_back,
        }
    }

    /// Takes the answer; it is acknowledged as this returns, and nothing is given back.
    pub fn take(mut self) -> T {
        self.give_back = None;
        drop(self.ack.take());
        self.value
            .take()
            .expect("a delivery holds its value until taken")
    }

    /// Sends the answer to its caller. When the caller is gone already, the value comes
    /// back here instead of being given back (the producer still has it in hand).
    pub fn send(self, reply: oneshot::Sender<Self>) -> Result<(), T> {
        reply.send(self).map_err(|mut undelivered| {
            undelivered.give_back = None;
            undelivered
                .value
                .take()
                .expect("a delivery holds its value until taken")
        })
    }
}

impl<T> Drop for Delivery<T> {
    fn drop(&mut self) {
        // Given back before the acknowledgement (a field, dropped after this) signals, so
        // a producer that sees the acknowledgement finds the value back already.
        if let (Some(value), Some(give_back)) = (self.value.take(), self.give_back.take()) {
            give_back(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Found missing by cargo-mutants: a delivery's debug form shows its state, never
    /// its value (an answer may be large).
    #[test]
    fn a_delivery_shows_its_state_and_never_its_value() {
        let (_, give_back) = returned();
        let (ack, _taken) = acknowledgement();
        let delivery = Delivery::new(7u32, Some(ack), Some(give_back));
        assert_eq!(
            format!("{delivery:?}"),
            "Delivery { acknowledged: false, given_back: true, .. }"
        );
        assert_eq!(
            format!("{:?}", Delivery::plain(7u32)),
            "Delivery { acknowledged: true, given_back: false, .. }"
        );
    }

    fn returned() -> (Arc<Mutex<Vec<u32>>>, GiveBack<u32>) {
        let back = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&back);
        let give_back: GiveBack<u32> = Box::new(move |value| sink.lock().unwrap().push(value));
        (back, give_back)
    }

    #[test]
    fn a_taken_answer_is_acknowledged_and_not_given_back() {
        let mut unacked = Unacked::default();
        let (back, give_back) = returned();
        let delivery = Delivery::new(7, Some(unacked.ack()), Some(give_back));
        assert!(!unacked.is_empty());
        unacked.forget_taken();
        assert!(!unacked.is_empty(), "not taken yet");
        assert_eq!(delivery.take(), 7);
        unacked.forget_taken();
        assert!(unacked.is_empty());
        assert!(back.lock().unwrap().is_empty());
    }

    #[test]
    fn an_answer_dropped_untaken_is_given_back_before_its_acknowledgement() {
        let (ack, mut taken) = acknowledgement();
        let (back, give_back) = returned();
        let delivery = Delivery::new(7, Some(ack), Some(give_back));
        assert!(!taken.is_taken());
        drop(delivery);
        assert!(taken.is_taken());
        assert_eq!(*back.lock().unwrap(), [7]);
    }

    #[test]
    fn an_answer_whose_caller_is_gone_comes_back_to_the_sender() {
        let (back, give_back) = returned();
        let (reply, gone) = oneshot::channel();
        drop(gone);
        let delivery = Delivery::new(7, None, Some(give_back));
        assert_eq!(delivery.send(reply), Err(7));
        assert!(back.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ordering_waits_for_an_untaken_answer_only_as_long_as_its_patience() {
        let mut unacked = Unacked::default();
        let _held = Delivery::new(1, Some(unacked.ack()), None);
        let started = tokio::time::Instant::now();
        unacked.oldest_taken().await;
        assert_eq!(started.elapsed(), ACK_PATIENCE);
        assert!(unacked.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_answer_is_waited_for_past_any_patience_until_stopped() {
        let mut unacked = Unacked::default();
        let held = Delivery::new(1, Some(unacked.ack()), None);
        let stop = CancellationToken::new();
        let wait = tokio::spawn({
            let stop = stop.clone();
            async move { unacked.all_taken_or_stopped(&stop).await }
        });
        tokio::time::sleep(ACK_PATIENCE * 10).await;
        assert!(!wait.is_finished());
        assert_eq!(held.take(), 1);
        wait.await.unwrap();
        let mut unacked = Unacked::default();
        let _never = unacked.ack();
        stop.cancel();
        unacked.all_taken_or_stopped(&stop).await;
    }
}
