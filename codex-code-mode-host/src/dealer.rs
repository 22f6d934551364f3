//! A session's tool invocations dealt to its subscriptions (`SubscribeToToolCalls`), as
//! Codex's hosts (0.169 and 0.171, observed) deal them: a session may have several
//! subscriptions, each with an optional filter of tool names (name and namespace, exactly);
//! each invocation goes to one subscription whose filter takes it, round-robin in the
//! order they subscribed, the turn passing to the one after the one that got it. An
//! invocation no subscription takes waits for one that does. A subscription that ends
//! (its client's stream dropped) gives back every invocation it was dealt and had not
//! sent, first in line again, for the others or the next to come: a client whose stream
//! broke misses nothing (Codex's hosts differ here: they fail at once a call no
//! subscription takes). An invocation whose call ended before any subscription sent it
//! is dealt to none: a subscription made after a cell was terminated gets none of its
//! calls.

use code_mode_internal::sync::lock;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What is dealt: an invocation, known by its tool's name.
pub trait Dealt: Send + 'static {
    /// A tool's name, as a filter names it.
    type Name: PartialEq + Send + 'static;
    fn name(&self) -> &Self::Name;

    /// Whether it is still to be dealt (its call has not ended).
    fn live(&self) -> bool {
        true
    }
}

/// A session's invocations and its subscriptions.
pub(crate) struct Dealer<T: Dealt> {
    state: Mutex<State<T>>,
}

impl<T: Dealt> Default for Dealer<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                subscribers: Vec::new(),
                turn: 0,
                next_id: 0,
            }),
        }
    }
}

struct State<T: Dealt> {
    /// Invocations no subscription took yet, oldest first.
    waiting: VecDeque<T>,
    /// In the order they subscribed.
    subscribers: Vec<Subscriber<T>>,
    /// Where the next turn starts among `subscribers`.
    turn: usize,
    next_id: u64,
}

struct Subscriber<T: Dealt> {
    id: u64,
    /// The tools it takes; empty: every tool.
    filter: Vec<T::Name>,
    sender: mpsc::UnboundedSender<T>,
}

impl<T: Dealt> Subscriber<T> {
    fn takes(&self, invocation: &T) -> bool {
        self.filter.is_empty() || self.filter.contains(invocation.name())
    }
}

impl<T: Dealt> State<T> {
    /// Gives `invocation` to the next subscriber in turn that takes it; back if none. One
    /// whose call ended is dropped.
    fn deal(&mut self, invocation: T) -> Option<T> {
        if !invocation.live() {
            return None;
        }
        let count = self.subscribers.len();
        let mut invocation = invocation;
        for step in 0..count {
            let at = (self.turn + step) % count;
            let subscriber = &self.subscribers[at];
            if !subscriber.takes(&invocation) {
                continue;
            }
            match subscriber.sender.send(invocation) {
                Ok(()) => {
                    self.turn = (at + 1) % count;
                    return None;
                }
                // Its subscription is ending: it gives its own back as it goes.
                Err(mpsc::error::SendError(back)) => invocation = back,
            }
        }
        Some(invocation)
    }

    /// Deals what waits to the subscribers there are, in order; the rest keeps waiting.
    fn deal_waiting(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        for invocation in waiting {
            if let Some(kept) = self.deal(invocation) {
                self.waiting.push_back(kept);
            }
        }
    }
}

impl<T: Dealt> Dealer<T> {
    /// A new invocation of the session's cells: dealt now, or kept for a subscription.
    pub(crate) fn deal(&self, invocation: T) {
        let mut state = lock(&self.state);
        if let Some(kept) = state.deal(invocation) {
            state.waiting.push_back(kept);
        }
    }

    /// Drops the waiting invocations whose calls ended.
    pub(crate) fn drop_ended(&self) {
        lock(&self.state).waiting.retain(Dealt::live);
    }

    /// A new subscription taking the tools `filter` names (every tool if it names none);
    /// it is dealt at once what waits for it.
    pub(crate) fn subscribe(self: &Arc<Self>, filter: Vec<T::Name>) -> Subscription<T> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut state = lock(&self.state);
        let id = state.next_id;
        state.next_id += 1;
        state.subscribers.push(Subscriber { id, filter, sender });
        state.deal_waiting();
        Subscription {
            dealer: Arc::clone(self),
            id,
            receiver,
            unsent: Mutex::default(),
        }
    }

    /// Subscription `id` ended: what it holds goes first in line again and is dealt anew.
    fn unsubscribe(&self, id: u64, left: Vec<T>) {
        let mut state = lock(&self.state);
        if let Some(at) = state.subscribers.iter().position(|s| s.id == id) {
            state.subscribers.remove(at);
            if state.turn > at {
                state.turn -= 1;
            }
            let count = state.subscribers.len();
            if state.turn >= count {
                state.turn = 0;
            }
        }
        for invocation in left.into_iter().rev() {
            state.waiting.push_front(invocation);
        }
        state.deal_waiting();
    }
}

/// One subscription's share of a session's invocations (`FrontSession::invocations`).
pub struct Subscription<T: Dealt> {
    dealer: Arc<Dealer<T>>,
    id: u64,
    receiver: mpsc::UnboundedReceiver<T>,
    /// Taken by `recv` but not sent ([`Subscription::give_back`]): next first.
    unsent: Mutex<VecDeque<T>>,
}

impl<T: Dealt> Subscription<T> {
    /// The next invocation dealt to it whose call has not ended.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let next = lock(&self.unsent).pop_front();
            let invocation = match next {
                Some(invocation) => invocation,
                None => self.receiver.recv().await?,
            };
            if invocation.live() {
                return Some(invocation);
            }
        }
    }

    /// `invocation`, taken by [`Subscription::recv`], was not sent: it comes first again
    /// (here, or to the others once this subscription ends).
    pub fn give_back(&self, invocation: T) {
        lock(&self.unsent).push_front(invocation);
    }
}

impl<T: Dealt> Drop for Subscription<T> {
    fn drop(&mut self) {
        let mut left: Vec<T> = lock(&self.unsent).drain(..).collect();
        self.receiver.close();
        while let Ok(invocation) = self.receiver.try_recv() {
            left.push(invocation);
        }
        self.dealer.unsubscribe(self.id, left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call: its sequence number and its tool's (name, namespace).
    struct Call(u64, (String, Option<String>));

    impl Dealt for Call {
        type Name = (String, Option<String>);
        fn name(&self) -> &Self::Name {
            &self.1
        }
    }

    fn name(name: &str, namespace: Option<&str>) -> (String, Option<String>) {
        (name.to_owned(), namespace.map(str::to_owned))
    }

    fn call(sequence: u64, tool: &str, namespace: Option<&str>) -> Call {
        Call(sequence, name(tool, namespace))
    }

    /// What `subscription` holds now, by sequence.
    fn drained(subscription: &mut Subscription<Call>) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Ok(invocation) = subscription.receiver.try_recv() {
            seen.push(invocation.0);
        }
        seen
    }

    /// Six calls alternating `echo` and `ns::other`, dealt to A (with `filter`) and B.
    fn dealt(filter: Vec<(String, Option<String>)>) -> (Vec<u64>, Vec<u64>) {
        let dealer = Arc::new(Dealer::default());
        let mut a = dealer.subscribe(filter);
        let mut b = dealer.subscribe(Vec::new());
        for sequence in 1..=6 {
            let invocation = if sequence % 2 == 1 {
                call(sequence, "echo", None)
            } else {
                call(sequence, "other", Some("ns"))
            };
            dealer.deal(invocation);
        }
        (drained(&mut a), drained(&mut b))
    }

    /// The deals Codex 0.171's host made in the same runs (seen with its binary).
    #[test]
    fn calls_are_dealt_round_robin_among_the_subscriptions_whose_filter_takes_them() {
        let odd = vec![1, 3, 5];
        let even = vec![2, 4, 6];
        assert_eq!(dealt(Vec::new()), (odd.clone(), even.clone()));
        assert_eq!(dealt(vec![name("echo", None)]), (odd.clone(), even.clone()));
        assert_eq!(
            dealt(vec![name("other", Some("ns"))]),
            (even.clone(), odd.clone())
        );
        assert_eq!(
            dealt(vec![name("echo", None), name("other", Some("ns"))]),
            (odd, even)
        );
        // Name and namespace must both match.
        let all = vec![1, 2, 3, 4, 5, 6];
        assert_eq!(dealt(vec![name("other", None)]), (vec![], all.clone()));
        assert_eq!(dealt(vec![name("nothing", Some("zz"))]), (vec![], all));
    }

    #[test]
    fn a_call_nobody_takes_waits_and_an_ended_subscription_gives_back_what_it_held() {
        let dealer = Arc::new(Dealer::default());
        let only_other = dealer.subscribe(vec![name("other", Some("ns"))]);
        dealer.deal(call(1, "echo", None));
        dealer.deal(call(2, "other", Some("ns")));
        let mut any = dealer.subscribe(Vec::new());
        assert_eq!(drained(&mut any), [1], "the waiting call, dealt at once");
        // A holds call 2, unsent, and one taken and given back: both go to the other.
        only_other.give_back(call(0, "other", Some("ns")));
        drop(only_other);
        assert_eq!(drained(&mut any), [0, 2]);
        drop(any);
        dealer.deal(call(3, "echo", None));
        let mut late = dealer.subscribe(Vec::new());
        assert_eq!(drained(&mut late), [3]);
    }

    /// A call that can end, to any tool.
    struct Ending(
        u64,
        Arc<std::sync::atomic::AtomicBool>,
        (String, Option<String>),
    );

    impl Dealt for Ending {
        type Name = (String, Option<String>);
        fn name(&self) -> &Self::Name {
            &self.2
        }
        fn live(&self) -> bool {
            !self.1.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_call_that_ended_before_it_was_sent_is_dealt_to_no_one() {
        let dealer = Arc::new(Dealer::default());
        let ended = |sequence| {
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
            (
                Ending(sequence, Arc::clone(&flag), name("echo", None)),
                flag,
            )
        };
        // Waiting for a subscription when its call ends: dropped at once.
        let (first, first_ended) = ended(1);
        dealer.deal(first);
        first_ended.store(true, std::sync::atomic::Ordering::SeqCst);
        dealer.drop_ended();
        assert!(lock(&dealer.state).waiting.is_empty());
        // Dealt to a subscription but not yet sent when its call ends: skipped.
        let mut subscription = dealer.subscribe(Vec::new());
        let (second, second_ended) = ended(2);
        let (third, _) = ended(3);
        dealer.deal(second);
        dealer.deal(third);
        second_ended.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(subscription.recv().await.map(|call| call.0), Some(3));
    }
}
