//! Deliberate faults, for proving that the chaos test catches what it claims to
//! (contract §7's promises broken on purpose, once each). The switch exists only with the
//! `fault-injection` feature in a build with debug assertions: a release build has no way
//! to arm it, whatever features it was built with, and every check below is a constant
//! `false` there.
//!
//! A fault is armed once ([`arm`]) and fires at its first opportunity, once; the host's
//! code asks [`fire`] at the one place each fault breaks.

/// A promise of the host broken on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// One `Committed` write is left out of the host's copy of the stored values.
    DropCommit,
    /// One nested tool call is handed to the delegate twice.
    DuplicateCall,
    /// One nested tool call's answer is also sent as the answer of the session's next call.
    DuplicateAnswer,
    /// One cell's final answer never reaches its caller.
    LoseAnswer,
    /// One rebuilt cell's journal loses its last issued call: the rebuilt cell sends that
    /// call (in flight when its runtime was lost) to the delegate again.
    ReplayedCall,
    /// One rebuilt cell's journal has its first two entered events swapped.
    ReorderedEntry,
    /// One rebuilt cell's journal counts one output item fewer than its caller took: the
    /// item is delivered twice.
    DuplicateOutput,
}

#[cfg(all(feature = "fault-injection", debug_assertions))]
mod armed {
    use super::Fault;
    use code_mode_internal::sync::lock;
    use code_mode_wire::{DelegateReply, SessionId};
    use std::sync::Mutex;

    /// The armed fault, until it fired.
    static ARMED: Mutex<Option<Fault>> = Mutex::new(None);

    /// A tool answer kept to be sent a second time, for the next call of the session on the
    /// same connection (named by its address).
    static REPLAY: Mutex<Option<(usize, SessionId, DelegateReply)>> = Mutex::new(None);

    /// Arms `fault`: the host breaks its promise once, at the first opportunity.
    pub fn arm(fault: Fault) {
        *lock(&ARMED) = Some(fault);
    }

    /// Whether `fault` fires now: once after [`arm`], at the first call whose `here`
    /// says this is its place (asked only while the fault is armed).
    pub(crate) fn fire(fault: Fault, here: impl FnOnce() -> bool) -> bool {
        let mut armed = lock(&ARMED);
        if *armed == Some(fault) && here() {
            *armed = None;
            return true;
        }
        false
    }

    /// Keeps a tool answer to send again as the answer of the next tool call of `session`
    /// on connection `owner`.
    pub(crate) fn keep_for_replay(owner: usize, session: SessionId, reply: DelegateReply) {
        *lock(&REPLAY) = Some((owner, session, reply));
    }

    /// The kept answer, once, for the next tool call of `session` on connection `owner`.
    pub(crate) fn replay(owner: usize, session: SessionId) -> Option<DelegateReply> {
        let mut kept = lock(&REPLAY);
        if kept
            .as_ref()
            .is_some_and(|(kept_owner, kept, _)| (*kept_owner, *kept) == (owner, session))
        {
            return kept.take().map(|(_, _, reply)| reply);
        }
        None
    }
}

#[cfg(all(feature = "fault-injection", debug_assertions))]
pub use armed::arm;
#[cfg(all(feature = "fault-injection", debug_assertions))]
pub(crate) use armed::{fire, keep_for_replay, replay};

/// Without the switch no fault ever fires, and its place is never even asked.
#[cfg(not(all(feature = "fault-injection", debug_assertions)))]
#[inline(always)]
pub(crate) fn fire(_fault: Fault, _here: impl FnOnce() -> bool) -> bool {
    false
}

#[cfg(not(all(feature = "fault-injection", debug_assertions)))]
#[inline(always)]
pub(crate) fn keep_for_replay(
    _owner: usize,
    _session: code_mode_wire::SessionId,
    _reply: code_mode_wire::DelegateReply,
) {
}

#[cfg(not(all(feature = "fault-injection", debug_assertions)))]
#[inline(always)]
pub(crate) fn replay(
    _owner: usize,
    _session: code_mode_wire::SessionId,
) -> Option<code_mode_wire::DelegateReply> {
    None
}
