//! How a cell thread waits for its owner's next message while tool answers are
//! outstanding.
//!
//! Waking a sleeping thread costs tens of microseconds on small virtual machines, about
//! as much as an in-process tool round trip, so a thread with answers due polls its queue
//! before it sleeps. It polls in two stretches:
//!
//! - for [`SPIN_FOR_ANSWER`] first: an in-process answer comes within it, and the cell
//!   never goes idle;
//! - then the cell is reported idle (its owner's frontier, hibernation and pending-aware
//!   observers go by that report, so it is not delayed by a longer poll), and the thread
//!   polls on until [`SPIN_FOR_FAST_ANSWERS`] after the wait began, but only while this
//!   cell's recent waits ended within that time ([`Pace`]). An answer that crosses two
//!   processes and a client (a front's nested call) comes in a few hundred microseconds:
//!   it is caught by a running thread instead of waking a sleeping one. A cell whose tools
//!   take longer stops polling after one such wait (two for a tool of a millisecond or
//!   two), so a slow tool costs its thread little CPU. At most half the cores' worth of
//!   threads poll this way at once ([`polling_slots`]): with many cells waiting, the
//!   rest sleep.
//!
//! Each poll yields the CPU, so a thread that delivers the answer on the same CPU runs at
//! once instead of waiting for the poll to end. Polling runs no JS, and its CPU time is
//! excused from the cell's budget.

use super::Inbound;
use super::watchdog::Watched;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, mpsc};
use std::time::{Duration, Instant};

/// How long a cell thread with tool answers outstanding polls its queue before it reports
/// the cell idle.
const SPIN_FOR_ANSWER: Duration = Duration::from_micros(60);

/// How long after a wait began the thread goes on polling once it reported the cell idle,
/// when the cell's recent waits ended within this time; then it sleeps.
const SPIN_FOR_FAST_ANSWERS: Duration = Duration::from_micros(500);

/// How soon a cell's waits with answers due have been ending: a moving average, each new
/// wait a quarter of it.
#[derive(Debug, Default)]
struct Pace {
    recent: Cell<Duration>,
}

impl Pace {
    /// Counts a wait that ended `waited` after it began.
    fn record(&self, waited: Duration) {
        let recent = self.recent.get();
        self.recent.set(recent - recent / 4 + waited / 4);
    }

    /// Whether the recent waits ended soon enough for the thread to poll on for the next.
    fn fast(&self) -> bool {
        self.recent.get() <= SPIN_FOR_FAST_ANSWERS
    }
}

/// The cell threads of this process polling past [`SPIN_FOR_ANSWER`].
static POLLING: Pollers = Pollers::new();

/// How many cell threads may poll past [`SPIN_FOR_ANSWER`] at once: half the cores, at
/// least one. Polling buys a lone cell's latency; when many cells wait at once, the
/// others sleep and leave the CPU to the threads that bring their answers.
fn polling_slots() -> usize {
    static SLOTS: LazyLock<usize> = LazyLock::new(|| {
        std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
    });
    *SLOTS
}

/// Threads polling now, counted against a number of places.
struct Pollers {
    polling: AtomicUsize,
}

impl Pollers {
    const fn new() -> Self {
        Self {
            polling: AtomicUsize::new(0),
        }
    }

    /// A place, if fewer than `slots` threads poll now; it is given back when dropped.
    fn take(&self, slots: usize) -> Option<PollingSlot<'_>> {
        self.polling
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |polling| {
                (polling < slots).then_some(polling + 1)
            })
            .ok()
            .map(|_| PollingSlot(&self.polling))
    }
}

/// A place among the polling threads.
struct PollingSlot<'p>(&'p AtomicUsize);

impl Drop for PollingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A cell thread's side of its inbound queue.
pub(super) struct Waiting<'g> {
    inbound: &'g mpsc::Receiver<Inbound>,
    /// The thread's CPU budget, which excuses the time spent polling.
    watched: Option<&'g Watched>,
    pace: Pace,
    /// When the wait that [`Self::soon`] left to [`Self::next`] began.
    began: Cell<Option<Instant>>,
    /// The places to poll past [`SPIN_FOR_ANSWER`] (the process's, [`POLLING`]).
    pollers: &'g Pollers,
}

impl<'g> Waiting<'g> {
    pub(super) fn new(inbound: &'g mpsc::Receiver<Inbound>, watched: Option<&'g Watched>) -> Self {
        Self {
            inbound,
            watched,
            pace: Pace::default(),
            began: Cell::new(None),
            pollers: &POLLING,
        }
    }

    /// The next message if one is queued; with tool answers due, polled for up to
    /// [`SPIN_FOR_ANSWER`]. `Empty` means the cell is idle: report it, then call
    /// [`Self::next`].
    pub(super) fn soon(&self, answers_due: bool) -> Result<Inbound, mpsc::TryRecvError> {
        self.began.set(None);
        let first = self.inbound.try_recv();
        if !matches!(first, Err(mpsc::TryRecvError::Empty)) || !answers_due {
            return first;
        }
        let began = Instant::now();
        let message = self.poll_until(began + SPIN_FOR_ANSWER);
        match message {
            Err(mpsc::TryRecvError::Empty) => self.began.set(Some(began)),
            _ => self.pace.record(began.elapsed()),
        }
        message
    }

    /// The next message, once the cell was reported idle: polled for until
    /// [`SPIN_FOR_FAST_ANSWERS`] after the wait began when answers are due and the cell's
    /// waits have been that short, else (and then) waited for asleep. `Err` once the
    /// owner is gone.
    pub(super) fn next(&self) -> Result<Inbound, mpsc::RecvError> {
        let Some(began) = self.began.take() else {
            return self.inbound.recv();
        };
        // The place is given back as the poll ends, before the thread sleeps.
        let polled = self
            .pace
            .fast()
            .then(|| self.pollers.take(polling_slots()))
            .flatten()
            .map(|_place| self.poll_until(began + SPIN_FOR_FAST_ANSWERS));
        let message = match polled {
            Some(Ok(message)) => Ok(message),
            Some(Err(mpsc::TryRecvError::Disconnected)) => Err(mpsc::RecvError),
            Some(Err(mpsc::TryRecvError::Empty)) | None => self.inbound.recv(),
        };
        self.pace.record(began.elapsed());
        message
    }

    /// Polls the queue until a message comes, the owner is gone, or `deadline`, yielding
    /// the CPU between polls; the CPU time is excused from the budget.
    fn poll_until(&self, deadline: Instant) -> Result<Inbound, mpsc::TryRecvError> {
        let poll = || {
            loop {
                match self.inbound.try_recv() {
                    Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                        std::thread::yield_now();
                    }
                    other => return other,
                }
            }
        };
        match self.watched {
            Some(watched) => watched.excused(poll),
            None => poll(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CellCommand;

    /// A command to send; which one does not matter here.
    fn command() -> Inbound {
        Inbound::Command(CellCommand::TimerFired { id: 1 })
    }

    #[test]
    fn a_cell_whose_waits_run_long_stops_polling_and_one_with_short_waits_goes_on() {
        let pace = Pace::default();
        assert!(pace.fast(), "a cell with no waits yet polls on");
        pace.record(Duration::from_millis(20));
        assert!(!pace.fast(), "one slow tool is enough to stop polling");
        for _ in 0..12 {
            pace.record(Duration::from_micros(200));
        }
        assert!(pace.fast(), "fast answers again: it polls on again");
        pace.record(Duration::from_micros(600));
        pace.record(Duration::from_micros(600));
        assert!(
            pace.fast(),
            "a few answers just over the time do not stop it at once"
        );
        for _ in 0..8 {
            pace.record(Duration::from_micros(900));
        }
        assert!(!pace.fast());
    }

    #[test]
    fn only_as_many_threads_poll_at_once_as_there_are_places() {
        let pollers = Pollers::new();
        let first = pollers.take(2).expect("a first place");
        let second = pollers.take(2).expect("a second place");
        assert!(pollers.take(2).is_none(), "two places, both taken");
        drop(first);
        let third = pollers.take(2).expect("a place given back is taken again");
        drop((second, third));
        assert_eq!(pollers.polling.load(Ordering::Acquire), 0);
        assert!(polling_slots() >= 1, "a machine of one core still polls");
    }

    /// A thread that polled in vain gives its place back before it sleeps: a cell parked
    /// on a slow call does not keep the others from polling.
    #[test]
    fn a_thread_that_goes_to_sleep_gives_its_place_back() {
        let pollers: &'static Pollers = Box::leak(Box::new(Pollers::new()));
        let (sender, receiver) = mpsc::channel();
        let waiting = Waiting {
            pollers,
            ..Waiting::new(&receiver, None)
        };
        assert!(matches!(waiting.soon(true), Err(mpsc::TryRecvError::Empty)));
        let watcher = std::thread::spawn(move || {
            // Well past the poll: the waiting thread sleeps by now.
            std::thread::sleep(Duration::from_millis(50));
            let polling = pollers.polling.load(Ordering::Acquire);
            sender.send(command()).expect("the receiver is there");
            polling
        });
        assert!(waiting.next().is_ok());
        assert_eq!(
            watcher.join().expect("the watcher"),
            0,
            "a sleeping thread holds no place"
        );
        assert_eq!(pollers.polling.load(Ordering::Acquire), 0);
    }

    /// An answer that comes after the first stretch, within the second, is taken by the
    /// polling thread; then one that comes late is still taken (asleep), and its wait
    /// counts in the pace.
    #[test]
    fn an_answer_after_the_idle_report_is_taken_and_the_wait_is_counted() {
        let (sender, receiver) = mpsc::channel();
        let waiting = Waiting::new(&receiver, None);
        assert!(matches!(waiting.soon(true), Err(mpsc::TryRecvError::Empty)));
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            sender.send(command()).expect("the receiver is there");
            sender
        });
        assert!(waiting.next().is_ok());
        assert!(
            waiting.pace.recent.get() >= Duration::from_millis(30) / 4,
            "the late answer's wait is counted: {:?}",
            waiting.pace.recent.get()
        );
        let sender = late.join().expect("the sender thread");
        // With nothing due, `soon` does not wait, and `next` sleeps until the owner goes.
        assert!(matches!(
            waiting.soon(false),
            Err(mpsc::TryRecvError::Empty)
        ));
        drop(sender);
        assert!(waiting.next().is_err(), "the owner is gone");
    }
}
