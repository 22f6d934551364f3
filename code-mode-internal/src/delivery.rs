//! How an answer travels to the caller waiting for it: the cell actor's contract with
//! whoever observes a cell, written once for both sides of the wire (the in-process cell
//! actor answering an observation, and the host's connection handing a runtime's response
//! to its caller), so the runtime needs no wire code for it.
//!
//! An answer is *delivered* as a [`Delivery`]: the value and its [`Receipt`], which tells
//! the producer what became of it. The caller *takes* it ([`Delivery::take`]). A caller
//! that goes away with the answer untaken (its future dropped while the answer waited in
//! its channel) drops the delivery, and the value is *given back*: a dropped observation
//! consumes nothing, and no answer is ever lost to a slow caller, because nothing here runs
//! on a timer.
//!
//! The cell actor is the one owner of an answer's life. In process its receipt reaches it
//! directly. Over the wire the runtime holds the actor's delivery while the response
//! travels, and the host's delivery carries a receipt that only says, in one message,
//! which of the two happened (`Taken` or `GivenBack`); the runtime then takes or drops the
//! actor's delivery, and the actor's own receipt does the rest.

use tokio::sync::oneshot;

/// What becomes of a delivered answer, told to its producer exactly once: taken, or given
/// back with its value.
pub trait Receipt<T>: Send {
    /// The answer left for its caller: over the wire, its copy was queued for the host.
    /// Told at most once, before `taken` or `given_back`; nothing by default.
    fn sent(&self) {}

    /// The caller took the answer.
    fn taken(self: Box<Self>);

    /// The caller dropped the answer untaken; `value` goes back to its producer.
    fn given_back(self: Box<Self>, value: T);
}

/// An answer on its way to a caller: the value and, unless nobody cares what becomes of
/// it, its receipt.
pub struct Delivery<T> {
    /// Present until taken or given back.
    value: Option<T>,
    receipt: Option<Box<dyn Receipt<T>>>,
}

impl<T> std::fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("with_receipt", &self.receipt.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Delivery<T> {
    /// An answer nothing waits on and nothing gives back (a refusal, a failure).
    pub fn plain(value: T) -> Self {
        Self {
            value: Some(value),
            receipt: None,
        }
    }

    /// An answer whose producer learns from `receipt` whether it was taken or given back.
    pub fn new(value: T, receipt: Box<dyn Receipt<T>>) -> Self {
        Self {
            value: Some(value),
            receipt: Some(receipt),
        }
    }

    /// The answer, still untaken (to send a copy of it on).
    pub fn value(&self) -> &T {
        self.value
            .as_ref()
            .expect("a delivery holds its value until taken")
    }

    /// Tells the producer that the answer left for its caller (see [`Receipt::sent`]).
    pub fn sent(&self) {
        if let Some(receipt) = &self.receipt {
            receipt.sent();
        }
    }

    /// Takes the answer; its producer is told as this returns.
    pub fn take(mut self) -> T {
        if let Some(receipt) = self.receipt.take() {
            receipt.taken();
        }
        self.value
            .take()
            .expect("a delivery holds its value until taken")
    }

    /// Sends the answer to its caller. When the caller is gone already, the value comes
    /// back here instead of being given back (the producer still has it in hand), and the
    /// receipt is dropped unused.
    pub fn send(self, reply: oneshot::Sender<Self>) -> Result<(), T> {
        reply.send(self).map_err(|mut undelivered| {
            undelivered.receipt = None;
            undelivered
                .value
                .take()
                .expect("a delivery holds its value until taken")
        })
    }
}

impl<T> Drop for Delivery<T> {
    fn drop(&mut self) {
        if let (Some(value), Some(receipt)) = (self.value.take(), self.receipt.take()) {
            receipt.given_back(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What a test receipt was told.
    #[derive(Debug, PartialEq)]
    enum Told {
        Taken,
        GivenBack(u32),
    }

    struct Recorder(Arc<Mutex<Vec<Told>>>);

    impl Receipt<u32> for Recorder {
        fn taken(self: Box<Self>) {
            self.0.lock().unwrap().push(Told::Taken);
        }

        fn given_back(self: Box<Self>, value: u32) {
            self.0.lock().unwrap().push(Told::GivenBack(value));
        }
    }

    fn recorded(value: u32) -> (Delivery<u32>, Arc<Mutex<Vec<Told>>>) {
        let told = Arc::new(Mutex::new(Vec::new()));
        let delivery = Delivery::new(value, Box::new(Recorder(Arc::clone(&told))));
        (delivery, told)
    }

    /// Found missing by cargo-mutants: a delivery's debug form shows its state, never
    /// its value (an answer may be large).
    #[test]
    fn a_delivery_shows_its_state_and_never_its_value() {
        let (delivery, _) = recorded(7);
        assert_eq!(
            format!("{delivery:?}"),
            "Delivery { with_receipt: true, .. }"
        );
        assert_eq!(
            format!("{:?}", Delivery::plain(7u32)),
            "Delivery { with_receipt: false, .. }"
        );
    }

    #[test]
    fn a_taken_answer_is_told_taken_once_and_not_given_back() {
        let (delivery, told) = recorded(7);
        assert_eq!(*delivery.value(), 7);
        assert!(told.lock().unwrap().is_empty(), "nothing before the take");
        assert_eq!(delivery.take(), 7);
        assert_eq!(*told.lock().unwrap(), [Told::Taken]);
    }

    #[test]
    fn an_answer_dropped_untaken_is_given_back_with_its_value() {
        let (delivery, told) = recorded(7);
        drop(delivery);
        assert_eq!(*told.lock().unwrap(), [Told::GivenBack(7)]);
        // A plain answer has nobody to tell.
        drop(Delivery::plain(8u32));
    }

    #[test]
    fn an_answer_whose_caller_is_gone_comes_back_to_the_sender_untold() {
        let (delivery, told) = recorded(7);
        let (reply, gone) = oneshot::channel();
        drop(gone);
        assert_eq!(delivery.send(reply), Err(7));
        assert!(told.lock().unwrap().is_empty());
    }

    #[test]
    fn an_answer_left_in_its_channel_is_given_back_when_the_caller_drops_it() {
        let (delivery, told) = recorded(7);
        let (reply, answer) = oneshot::channel();
        assert!(delivery.send(reply).is_ok());
        drop(answer);
        assert_eq!(*told.lock().unwrap(), [Told::GivenBack(7)]);
    }
}
