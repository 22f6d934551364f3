//! The line of writes waiting for a store, and who writes them: group commit with a
//! leader. A caller that finds the store free writes what is queued itself, on its own
//! thread, so a write that waits for nobody costs no switch to another thread and back; a
//! caller that finds it busy leaves its write to the keeper's thread, which writes
//! everything queued, in one transaction, as soon as the store is free again. Writes
//! leave the line only under the store's lock and in the order they joined it, so none
//! overtakes an earlier one.
//!
//! A store whose commits wait on a network (Postgres) is written by the thread alone: a
//! caller on an async runtime must not block on a round trip.

use code_mode_internal::sync::lock;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, TryLockError};
use std::time::{Duration, Instant};

/// At most this many queued writes go in one transaction.
const MAX_GROUP: usize = 256;

/// What writes a store: the keeper's writer.
pub(crate) trait Commits: Send + 'static {
    type Job: Send;
    /// Writes `jobs` in one transaction (or each alone when that fails) and answers each.
    fn commit(&mut self, jobs: Vec<Self::Job>);
    /// The periodic work (expiry, leases, figures), every [`Self::interval`].
    fn tick(&mut self);
    fn interval(&self) -> Duration;
}

/// A keeper's end of a line, whatever its store.
pub(crate) trait Enqueue<J>: Send + Sync {
    /// Queues `job`, and with `now` has it written at once (here when the store is free,
    /// else by the thread); without, it waits for the next write or [`Self::flush`]. False
    /// once the line closed.
    fn push(&self, job: J, now: bool) -> bool;
    /// Has everything queued written at once.
    fn flush(&self);
    /// No more jobs: the thread writes what is queued and ends.
    fn close(&self);
}

struct Queue<J> {
    jobs: VecDeque<J>,
    closed: bool,
}

/// The queue and the store it feeds.
pub(crate) struct Line<C: Commits> {
    queue: Mutex<Queue<C::Job>>,
    /// Wakes the thread: there is work it must do.
    wake: Condvar,
    /// The store, until the thread ends: it is dropped there, whoever holds the line last
    /// (a blocking client must not be dropped on an async runtime's thread).
    store: Mutex<Option<C>>,
    /// Whether callers write themselves when the store is free.
    inline: bool,
}

impl<C: Commits> Line<C> {
    pub(crate) fn new(store: C, inline: bool) -> Self {
        Self {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            store: Mutex::new(Some(store)),
            inline,
        }
    }

    /// The next group of queued jobs, in order (taken under the store's lock).
    fn take(&self) -> Vec<C::Job> {
        let mut queue = lock(&self.queue);
        let count = queue.jobs.len().min(MAX_GROUP);
        queue.jobs.drain(..count).collect()
    }

    /// Writes the next group of queued jobs, with the store held; whether there was one.
    fn commit_group(&self, store: &mut C) -> bool {
        let jobs = self.take();
        let any = !jobs.is_empty();
        if any {
            store.commit(jobs);
        }
        any
    }

    /// Writes every queued job, a group at a time, with the store held (the thread's
    /// way: a caller writes one group at most, in `flush`).
    fn drain(&self, store: &mut C) {
        while self.commit_group(store) {}
    }

    /// The keeper's thread: writes what callers leave to it, and ticks, until the line
    /// closes and is empty.
    pub(crate) fn serve(&self) {
        let Some(interval) = lock(&self.store).as_ref().map(C::interval) else {
            return;
        };
        let mut ticked = Instant::now();
        loop {
            let closed = {
                let mut queue = lock(&self.queue);
                let due = ticked + interval;
                while queue.jobs.is_empty() && !queue.closed {
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    queue = match self.wake.wait_timeout(queue, due - now) {
                        Ok((queue, _)) => queue,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
                queue.closed
            };
            let mut guard = lock(&self.store);
            let Some(store) = guard.as_mut() else {
                return;
            };
            self.drain(store);
            if ticked.elapsed() >= interval {
                ticked = Instant::now();
                store.tick();
            }
            if closed && lock(&self.queue).jobs.is_empty() {
                // The store goes here, on this thread.
                let store = guard.take();
                drop(guard);
                drop(store);
                return;
            }
            drop(guard);
        }
    }
}

impl<C: Commits> Enqueue<C::Job> for Line<C>
where
    C::Job: Send,
{
    fn push(&self, job: C::Job, now: bool) -> bool {
        {
            let mut queue = lock(&self.queue);
            if queue.closed {
                return false;
            }
            queue.jobs.push_back(job);
        }
        if now {
            self.flush();
        }
        true
    }

    fn flush(&self) {
        if self.inline {
            // One group at most: a caller does not stay to write others' jobs. Those
            // queued meanwhile found the store busy and woke the thread.
            let group = |store: &mut Option<C>| {
                if let Some(store) = store.as_mut() {
                    self.commit_group(store);
                }
            };
            match self.store.try_lock() {
                Ok(mut store) => group(&mut store),
                Err(TryLockError::Poisoned(poisoned)) => group(&mut poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
            if lock(&self.queue).jobs.is_empty() {
                return;
            }
        }
        self.wake.notify_one();
    }

    fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
    }
}
