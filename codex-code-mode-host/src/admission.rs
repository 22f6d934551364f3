//! What the host admits, where a bound protects it, as Codex's host bounds it and with its
//! texts: requests in flight (an `Execute`, `Wait` or `Terminate` waiting on a cell) across
//! every connection, active cells (admitted and not yet closed) across every connection,
//! and a session's pending delegate calls (the limit codex sends in `OpenSession`).
//!
//! Unlike Codex's host, active cells have no fixed cap of 128: a cell that waits costs
//! little here, so the cap is an option ([`DEFAULT_MAX_ACTIVE_CELLS`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Requests in flight at once across the host, by default.
pub const DEFAULT_MAX_IN_FLIGHT_REQUESTS: usize = 4096;

/// Active cells at once across the host, by default.
pub const DEFAULT_MAX_ACTIVE_CELLS: usize = 1024;

/// Codex's host's text for a request over the in-flight bound.
pub const TOO_MANY_IN_FLIGHT_REQUESTS: &str = "code-mode host has too many in-flight requests";

/// Codex's host's text for an `Execute` over the active-cell cap.
pub const TOO_MANY_ACTIVE_CELLS: &str = "code-mode host has too many active cells";

/// Codex's host's text for a tool call over its session's pending-delegate-call limit.
pub const TOO_MANY_PENDING_DELEGATE_CALLS: &str =
    "code-mode session has too many pending delegate calls";

/// The host's bounds, shared by every connection's front.
#[derive(Debug)]
pub struct Admission {
    max_in_flight_requests: usize,
    max_active_cells: usize,
    in_flight: Arc<AtomicUsize>,
    active_cells: Arc<AtomicUsize>,
}

impl Admission {
    pub fn new(max_in_flight_requests: usize, max_active_cells: usize) -> Self {
        Self {
            max_in_flight_requests,
            max_active_cells,
            in_flight: Arc::default(),
            active_cells: Arc::default(),
        }
    }

    /// A request in flight until the returned guard drops; `None` when the host has
    /// its bound of requests in flight already.
    pub fn request(&self) -> Option<Counted> {
        Counted::within(&self.in_flight, self.max_in_flight_requests)
    }

    /// A cell counted as active until the returned guard drops; `None` when the host has
    /// its cap of active cells already.
    pub fn cell(&self) -> Option<Counted> {
        Counted::within(&self.active_cells, self.max_active_cells)
    }

    /// Cells counted as active now.
    pub fn active_cells(&self) -> usize {
        self.active_cells.load(Ordering::SeqCst)
    }

    /// Requests in flight now.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_IN_FLIGHT_REQUESTS, DEFAULT_MAX_ACTIVE_CELLS)
    }
}

/// One unit of a bounded count, given back when dropped.
#[derive(Debug)]
pub struct Counted(Arc<AtomicUsize>);

impl Counted {
    /// Takes one unit of `count` if it stays within `max`.
    fn within(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(count)))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_admits_up_to_its_max_and_frees_a_unit_when_its_guard_drops() {
        let admission = Admission::new(2, 1);
        let first = admission.request().expect("one");
        let second = admission.request().expect("two");
        assert!(admission.request().is_none(), "a third is over the bound");
        assert_eq!(admission.requests_in_flight(), 2);
        drop(first);
        let third = admission.request().expect("room again");
        drop((second, third));
        assert_eq!(admission.requests_in_flight(), 0);

        let cell = admission.cell().expect("one cell");
        assert!(admission.cell().is_none());
        drop(cell);
        assert_eq!(admission.active_cells(), 0);
        assert!(admission.cell().is_some());
    }
}
