//! The observations (`exec`, `wait`) one MCP connection has in flight, and the output of
//! those whose answer nobody received, kept for the cell's next `wait`.
//!
//! An observation's answer is not received when its request was cancelled (MCP sends no
//! response to a cancelled request; contract 8.4), or when, over HTTP, its stream has
//! no reader at its end and gets none back within [`RESUME_GRACE`] (the client's
//! connection broke and it did not resume: a client that saw no event id cannot, and
//! sends its `wait` again). Either way the
//! cell keeps running; what the observation took goes to the cell's next observation:
//! output first in the next answer, an end (the cell completed meanwhile) as the next
//! `wait`'s answer. A `wait` for a cell whose observation is unread preempts that
//! observation instead of being refused as a second observer. What is held is bounded:
//! [`HELD_FOR`], and per connection [`HELD_CELLS`] cells and [`HELD_BYTES`] (the oldest
//! go first, with a warning).

use super::replay::Readers;
use code_mode_internal::sync::lock;
use code_mode_protocol::{CellId, CellResponse, ContentItem};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long an observation whose stream lost its reader waits at its end for the client
/// to resume it (the SDKs resume [`super::expiry::SSE_RETRY`] after a break, through any
/// replica) before its output is held for the cell's next `wait`. A `wait` sent again for
/// the cell ends the grace at once.
pub(super) const RESUME_GRACE: Duration = Duration::from_secs(5);

/// How long output no client received is kept for the cell's next `wait`.
pub(super) const HELD_FOR: Duration = Duration::from_secs(600);
/// The most cells a connection keeps such output for.
pub(super) const HELD_CELLS: usize = 64;
/// The most bytes of such output a connection keeps (text and data URLs).
pub(super) const HELD_BYTES: usize = 64 * 1024 * 1024;

/// One connection's observations in flight and what unread ones took.
#[derive(Default)]
pub(super) struct Observations {
    running: Mutex<Vec<Observation>>,
    /// Signalled whenever an observation ends.
    ended: Notify,
    held: Mutex<HashMap<CellId, Kept>>,
    next: AtomicU64,
}

struct Observation {
    number: u64,
    /// The MCP request's own token (cancelled with the request).
    request: CancellationToken,
    /// Preempts the observation (never the cell).
    preempt: CancellationToken,
    /// The cell a `wait` observes (an `exec`'s is not known before its answer).
    cell: Option<CellId>,
    /// Who reads the request's stream, over HTTP.
    readers: Option<Readers>,
}

impl Observation {
    /// Whether it was let go: its request cancelled, or preempted for a later `wait`.
    fn abandoned(&self) -> bool {
        self.request.is_cancelled() || self.preempt.is_cancelled()
    }
}

/// What unread observations took from a cell, since when, and its size.
struct Kept {
    held: Held,
    since: Instant,
    bytes: usize,
}

impl Kept {
    fn new(held: Held) -> Self {
        let items = match &held {
            Held::Output(items) => items.as_slice(),
            Held::Ended(response) => response.content_items(),
        };
        let bytes = items.iter().map(item_bytes).sum();
        Self {
            held,
            since: Instant::now(),
            bytes,
        }
    }
}

fn item_bytes(item: &ContentItem) -> usize {
    match item {
        ContentItem::InputText { text } => text.len(),
        ContentItem::InputImage { image_url, .. } => image_url.len(),
        ContentItem::InputAudio { audio_url } => audio_url.len(),
    }
}

/// Drops what was held past [`HELD_FOR`], then the oldest past the count and byte bounds.
fn prune(held: &mut HashMap<CellId, Kept>) {
    let now = Instant::now();
    held.retain(|cell, kept| {
        let keep = now.duration_since(kept.since) < HELD_FOR;
        if !keep {
            tracing::warn!(%cell, "output no client received, kept for 10 minutes, dropped");
        }
        keep
    });
    let mut bytes: usize = held.values().map(|kept| kept.bytes).sum();
    while held.len() > HELD_CELLS || bytes > HELD_BYTES {
        let Some(oldest) = held
            .iter()
            .min_by_key(|(_, kept)| kept.since)
            .map(|(cell, _)| cell.clone())
        else {
            break;
        };
        if let Some(kept) = held.remove(&oldest) {
            bytes -= kept.bytes;
        }
        tracing::warn!(cell = %oldest, "output no client received dropped: the connection holds too much");
    }
}

/// What an unread observation took from a cell.
enum Held {
    /// Output of a cell still running, for the first items of its next answer.
    Output(Vec<ContentItem>),
    /// The cell's end (its output before it), the answer to its next `wait`.
    Ended(CellResponse),
}

/// What an observation is, for [`Observations::begin`].
pub(super) struct Begun<'a> {
    pub(super) request: &'a CancellationToken,
    pub(super) preempt: &'a CancellationToken,
    pub(super) cell: Option<&'a CellId>,
    pub(super) readers: Option<&'a Readers>,
}

impl Observations {
    /// Registers an observation once the ones it must not overlap have let go: a `wait`
    /// preempts an earlier observation of its cell that nobody reads, then every
    /// abandoned observation (rmcp lets a cancelled request's handler end on its own
    /// task, so the `wait` that follows a cancelled `exec` can arrive first) ends.
    pub(super) async fn begin<'a>(&'a self, begun: Begun<'_>) -> Observing<'a> {
        if let Some(cell) = begun.cell {
            for running in lock(&self.running).iter() {
                let unread = running.readers.as_ref().is_some_and(Readers::orphaned);
                if unread && running.cell.as_ref() == Some(cell) {
                    tracing::debug!(%cell, "a wait takes over an observation nobody reads");
                    running.preempt.cancel();
                }
            }
        }
        loop {
            let ended = self.ended.notified();
            if !lock(&self.running).iter().any(Observation::abandoned) {
                break;
            }
            ended.await;
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.running).push(Observation {
            number,
            request: begun.request.clone(),
            preempt: begun.preempt.clone(),
            cell: begun.cell.cloned(),
            readers: begun.readers.cloned(),
        });
        Observing {
            observations: self,
            number,
        }
    }

    /// Keeps what an unread observation returned for the cell's next observation.
    pub(super) fn hold(&self, response: CellResponse) {
        let mut held = lock(&self.held);
        let cell = response.cell_id().clone();
        let before = match held.remove(&cell).map(|kept| kept.held) {
            Some(Held::Output(items)) => items,
            Some(ended @ Held::Ended(_)) => {
                // A cell ends once; an end already kept stays the answer.
                held.insert(cell, Kept::new(ended));
                return;
            }
            None => Vec::new(),
        };
        let kept = match response {
            CellResponse::Yielded { content_items, .. } => {
                let mut items = before;
                items.extend(content_items);
                Held::Output(items)
            }
            // An unknown cell's answer adds nothing to what was kept.
            ended if ended.is_missing_cell() => Held::Output(before),
            ended => Held::Ended(ended.with_items_before(before)),
        };
        if !matches!(&kept, Held::Output(items) if items.is_empty()) {
            held.insert(cell, Kept::new(kept));
        }
        prune(&mut held);
    }

    /// The end of `cell` an unread observation took, if one did: the answer to the
    /// cell's next `wait`, given once.
    pub(super) fn take_end(&self, cell: &CellId) -> Option<CellResponse> {
        let mut held = lock(&self.held);
        let kept = held.remove(cell)?;
        match kept.held {
            Held::Ended(response) => Some(response),
            Held::Output(_) => {
                held.insert(cell.clone(), kept);
                None
            }
        }
    }

    /// `response` with the output unread observations took from its cell first.
    pub(super) fn with_held_output(&self, response: CellResponse) -> CellResponse {
        let mut held = lock(&self.held);
        let Some(kept) = held.remove(response.cell_id()) else {
            return response;
        };
        match kept.held {
            Held::Output(items) => response.with_items_before(items),
            Held::Ended(_) => {
                held.insert(response.cell_id().clone(), kept);
                response
            }
        }
    }
}

/// An observation registered in [`Observations`] while it runs.
pub(super) struct Observing<'a> {
    observations: &'a Observations,
    number: u64,
}

impl Observing<'_> {
    /// At an observation's end: when its stream lost its reader, waits (at most
    /// [`RESUME_GRACE`]) for a resumption, a `wait` that takes the cell over, or the
    /// request's cancellation.
    pub(super) async fn grace(&self) {
        let (readers, preempt, request) = {
            let running = lock(&self.observations.running);
            let Some(this) = running.iter().find(|r| r.number == self.number) else {
                return;
            };
            match &this.readers {
                Some(readers) if readers.orphaned() => {
                    (readers.clone(), this.preempt.clone(), this.request.clone())
                }
                _ => return,
            }
        };
        tracing::debug!("an observation's stream lost its reader; waiting for a resumption");
        let _ = tokio::time::timeout(RESUME_GRACE, async {
            tokio::select! {
                () = readers.read_again() => {}
                () = preempt.cancelled() => {}
                () = request.cancelled() => {}
            }
        })
        .await;
    }

    /// Whether its answer will be received: its request was not cancelled, it was not
    /// preempted for a later `wait`, and over HTTP someone reads its stream.
    pub(super) fn unread(&self) -> bool {
        lock(&self.observations.running)
            .iter()
            .find(|running| running.number == self.number)
            .is_some_and(|running| {
                running.abandoned() || running.readers.as_ref().is_some_and(Readers::orphaned)
            })
    }
}

impl Drop for Observing<'_> {
    fn drop(&mut self) {
        let mut running = lock(&self.observations.running);
        if let Some(at) = running.iter().position(|r| r.number == self.number) {
            running.swap_remove(at);
        }
        drop(running);
        self.observations.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> ContentItem {
        ContentItem::InputText {
            text: text.to_owned(),
        }
    }

    fn yielded(cell: u64, items: &[&str]) -> CellResponse {
        CellResponse::Yielded {
            cell_id: CellId::new(cell),
            content_items: items.iter().map(|item| text(item)).collect(),
            wall_time: Duration::ZERO,
        }
    }

    fn texts(response: &CellResponse) -> Vec<String> {
        response
            .content_items()
            .iter()
            .map(|item| match item {
                ContentItem::InputText { text } => text.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn held_output_comes_first_once_and_a_held_end_answers_the_next_wait() {
        let observations = Observations::default();
        observations.hold(yielded(1, &["a"]));
        observations.hold(yielded(1, &["b"]));
        // An unknown cell's answer keeps what was held.
        observations.hold(CellResponse::missing(CellId::new(1)));
        let next = observations.with_held_output(yielded(1, &["c"]));
        assert_eq!(texts(&next), ["a", "b", "c"]);
        let again = observations.with_held_output(yielded(1, &["d"]));
        assert_eq!(texts(&again), ["d"], "given once");
        observations.hold(yielded(2, &["x"]));
        observations.hold(CellResponse::result(CellId::new(2), vec![text("y")], None));
        assert!(observations.take_end(&CellId::new(1)).is_none());
        let end = observations.take_end(&CellId::new(2)).expect("the end");
        assert_eq!(texts(&end), ["x", "y"]);
        assert!(observations.take_end(&CellId::new(2)).is_none(), "once");
    }

    #[test]
    fn held_output_is_bounded_the_oldest_going_first() {
        let observations = Observations::default();
        for cell in 0..(HELD_CELLS as u64 + 6) {
            observations.hold(yielded(cell, &["out"]));
        }
        let held = lock(&observations.held);
        assert_eq!(held.len(), HELD_CELLS);
        assert!(!held.contains_key(&CellId::new(5)), "the oldest went");
        assert!(held.contains_key(&CellId::new(6)));
        drop(held);
        let big = "x".repeat(HELD_BYTES / 2 + 1);
        observations.hold(yielded(1000, &[&big]));
        observations.hold(yielded(1001, &[&big]));
        let held = lock(&observations.held);
        assert!(
            !held.contains_key(&CellId::new(1000)),
            "past the byte bound"
        );
        assert!(held.contains_key(&CellId::new(1001)));
    }
}
