//! What became of a session's cells that were lost with their runtime (contract §7), under
//! one owner and one lock: the cells waiting to be rebuilt on the session's next runtime
//! (and those rebuilt since, whose calls that fail with a loss go again), the cells that had
//! finished when their runtime went (their final answer held for the next observation),
//! and the cells that died (their cause kept for a later call that names them).
//!
//! The connection pushes a loss here when it happens ([`LostCells::runtime_lost`], under
//! its state's lock and before any caller learns of the loss), for each session it served;
//! the session ([`crate::hosted::HostedSession`]) owns it, decides here when a call gives a
//! cell up, and asks here before it asks a runtime. Nothing is pulled later.

use super::{LostCell, Resumable};
use code_mode_internal::sync::lock;
use code_mode_protocol::{CellId, CellResponse};
use code_mode_trace::traced::under;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// How many cells that died with a runtime (and, apart, how many finished ones' answers) a
/// session remembers: the oldest go first.
const KEPT: usize = 1024;

/// A session's lost cells, by what became of them; `T` is what rebuilds a cell (its
/// journal and the rest: [`Resumable`]).
struct Fates<T> {
    /// Died with their runtime, with its cause, oldest first.
    dead: VecDeque<(CellId, String)>,
    /// Had finished when their runtime was lost: the final answer they offered.
    finished: VecDeque<(CellId, CellResponse)>,
    /// To rebuild from their journals on the session's next runtime, in the order lost.
    to_rebuild: Vec<(CellId, Arc<T>)>,
    /// Every lost cell that is not dead: waiting to be rebuilt, being rebuilt, or rebuilt.
    rebuilding: HashSet<CellId>,
}

impl<T> Default for Fates<T> {
    fn default() -> Self {
        Self {
            dead: VecDeque::new(),
            finished: VecDeque::new(),
            to_rebuild: Vec::new(),
            rebuilding: HashSet::new(),
        }
    }
}

/// Appends `entry` to a list of the last [`KEPT`] cells of a kind.
fn keep_last<T>(cells: &mut VecDeque<T>, entry: T) {
    if cells.len() >= KEPT {
        cells.pop_front();
    }
    cells.push_back(entry);
}

/// The fate of a session's lost cells (see the module's documentation).
pub(crate) struct LostCells<T = Resumable> {
    fates: Mutex<Fates<T>>,
}

impl<T> Default for LostCells<T> {
    fn default() -> Self {
        Self {
            fates: Mutex::new(Fates::default()),
        }
    }
}

impl<T> LostCells<T> {
    /// `cell_id` had finished when its runtime was lost, with `answer`.
    pub(crate) fn finished(&self, cell_id: CellId, answer: CellResponse) {
        keep_last(&mut lock(&self.fates).finished, (cell_id, answer));
    }

    /// `cell_id` is rebuilt from `resumable` on the session's next runtime.
    pub(crate) fn to_rebuild(&self, cell_id: CellId, resumable: Arc<T>) {
        let mut fates = lock(&self.fates);
        fates.rebuilding.insert(cell_id.clone());
        fates.to_rebuild.push((cell_id, resumable));
    }

    /// `cell_id` died (with its runtime, or in its rebuild): later calls that name it fail
    /// with `cause`.
    pub(crate) fn bury(&self, cell_id: CellId, cause: String) {
        let mut fates = lock(&self.fates);
        fates.rebuilding.remove(&cell_id);
        keep_last(&mut fates.dead, (cell_id, cause));
    }

    /// A call on `cell_id` gave up (its runtimes kept being lost): it dies with `cause`, and
    /// is never rebuilt later behind its caller's back.
    pub(crate) fn give_up(&self, cell_id: &CellId, cause: &str) {
        let mut fates = lock(&self.fates);
        fates.to_rebuild.retain(|(lost, _)| lost != cell_id);
        fates.rebuilding.remove(cell_id);
        keep_last(&mut fates.dead, (cell_id.clone(), cause.to_owned()));
    }

    /// Whether `cell_id` was lost and is to be rebuilt, or was rebuilt since: a call on it
    /// that failed with a loss goes again.
    pub(crate) fn rebuilds(&self, cell_id: &CellId) -> bool {
        lock(&self.fates).rebuilding.contains(cell_id)
    }

    /// Whether `cell_id` waits to be rebuilt (an earlier rebuild was cut short).
    pub(crate) fn awaits_rebuild(&self, cell_id: &CellId) -> bool {
        lock(&self.fates)
            .to_rebuild
            .iter()
            .any(|(lost, _)| lost == cell_id)
    }

    /// The cells waiting to be rebuilt, in the order they were lost.
    pub(crate) fn waiting(&self) -> Vec<(CellId, Arc<T>)> {
        lock(&self.fates).to_rebuild.clone()
    }

    /// The cell `resumable` rebuilds no longer waits: the runtime took it (or it died).
    pub(crate) fn taken(&self, resumable: &Arc<T>) {
        lock(&self.fates)
            .to_rebuild
            .retain(|(_, kept)| !Arc::ptr_eq(kept, resumable));
    }

    /// The answer of `cell_id`, which had finished when its runtime was lost, taken.
    pub(crate) fn take_finished(&self, cell_id: &CellId) -> Option<CellResponse> {
        let mut fates = lock(&self.fates);
        let index = fates
            .finished
            .iter()
            .position(|(finished, _)| finished == cell_id)?;
        fates.finished.remove(index).map(|(_, answer)| answer)
    }

    /// Why `cell_id` died, if it died with its runtime (or in its rebuild).
    pub(crate) fn dead(&self, cell_id: &CellId) -> Option<String> {
        lock(&self.fates)
            .dead
            .iter()
            .find(|(dead, _)| dead == cell_id)
            .map(|(_, cause)| cause.clone())
    }
}

/// A cell a loss cut short, to log once the connection's lock is let go (a subscriber is
/// the agent core's code): its span, and whether it is rebuilt.
pub(crate) struct CutShort {
    span: tracing::Span,
    rebuildable: bool,
}

impl CutShort {
    /// Logs it under its cell's span; called with no lock held.
    pub(crate) fn log(self, cause: &str) {
        let CutShort { span, rebuildable } = self;
        under(&span, || {
            tracing::warn!(parent: &span, cause = %cause, rebuildable, "runtime lost");
        });
    }
}

impl LostCells<Resumable> {
    /// The session's runtime was lost with `cause`, and `cells` were running on it: each
    /// had finished (its answer is held), can be rebuilt from its journal, or died. Only
    /// records: what to log is returned, for after the caller's lock.
    pub(crate) fn runtime_lost(&self, cause: &str, cells: Vec<LostCell>) -> Vec<CutShort> {
        let mut cut_short = Vec::new();
        for LostCell {
            cell_id,
            resumable,
            answer,
            span,
        } in cells
        {
            if let Some(answer) = answer {
                self.finished(cell_id, answer);
                continue;
            }
            cut_short.push(CutShort {
                span,
                rebuildable: resumable.is_some(),
            });
            match resumable {
                Some(resumable) => self.to_rebuild(cell_id, Arc::new(resumable)),
                None => self.bury(cell_id, cause.to_owned()),
            }
        }
        cut_short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session remembers the last [`KEPT`] dead cells, and a cell that dies is no longer
    /// rebuilt: its calls fail with its cause instead of going again.
    #[test]
    fn the_dead_are_remembered_within_a_bound_and_never_rebuilt() {
        let lost = LostCells::<()>::default();
        for number in 0..(KEPT as u64 + 10) {
            lost.bury(CellId::new(number), format!("lost {number}"));
        }
        assert_eq!(lost.dead(&CellId::new(9)), None, "the oldest went first");
        assert_eq!(lost.dead(&CellId::new(10)).as_deref(), Some("lost 10"));
        assert_eq!(lock(&lost.fates).dead.len(), KEPT);

        let cell = CellId::new(5000);
        let first = Arc::new(());
        lost.to_rebuild(cell.clone(), Arc::clone(&first));
        let other = CellId::new(5001);
        let second = Arc::new(());
        lost.to_rebuild(other.clone(), Arc::clone(&second));
        lost.taken(&second);
        assert!(!lost.awaits_rebuild(&other), "taken by the runtime");
        assert!(
            lost.rebuilds(&other),
            "rebuilt: a call that fails with a loss goes again"
        );
        assert!(lost.rebuilds(&cell) && lost.awaits_rebuild(&cell));
        lost.give_up(&cell, "lost four times");
        assert!(!lost.rebuilds(&cell) && !lost.awaits_rebuild(&cell));
        assert!(lost.waiting().is_empty());
        assert_eq!(lost.dead(&cell).as_deref(), Some("lost four times"));
    }

    /// A finished cell's answer is taken once.
    #[test]
    fn a_finished_answer_is_taken_once() {
        let lost = LostCells::<()>::default();
        let cell = CellId::new(1);
        let answer = CellResponse::missing(cell.clone());
        lost.finished(cell.clone(), answer.clone());
        assert_eq!(lost.take_finished(&cell), Some(answer));
        assert_eq!(lost.take_finished(&cell), None);
    }
}
