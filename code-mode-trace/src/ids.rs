//! Fresh span and trace ids, made where a span starts without a tracer: the runtime's
//! records and the host's. Each thread draws from its own xorshift state, so a draw costs
//! a few instructions. A thread's seed mixes the process's random base (drawn once, from
//! the standard library's per-process random keys) with the thread's turn, so ids differ
//! across threads and processes, and a thread's first id asks the system for no
//! randomness of its own (in a sandboxed runtime every system call costs a filter's run).

use std::cell::Cell;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// This thread's state for fresh ids (xorshift, never zero).
    static STATE: Cell<u64> = Cell::new(seed());
}

/// The process's random base for the threads' seeds.
static BASE: LazyLock<u64> = LazyLock::new(|| {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish()
});

/// How many threads have seeded their state.
static SEEDED: AtomicU64 = AtomicU64::new(0);

/// A seed for a thread's ids: different for every thread and process, never zero. The
/// thread's turn goes through a `splitmix64` finaliser, so neighbouring turns give
/// unrelated states.
fn seed() -> u64 {
    let turn = SEEDED.fetch_add(1, Ordering::Relaxed);
    let mut z = BASE.wrapping_add(turn.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

fn next() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

/// A fresh span id, never all zeroes.
pub fn fresh_span_id() -> [u8; 8] {
    next().max(1).to_be_bytes()
}

/// A fresh trace id, never all zeroes.
pub fn fresh_trace_id() -> [u8; 16] {
    let high = next().to_be_bytes();
    let low = next().max(1).to_be_bytes();
    let mut id = [0; 16];
    id[..8].copy_from_slice(&high);
    id[8..].copy_from_slice(&low);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_and_never_zero() {
        let spans: std::collections::HashSet<[u8; 8]> =
            (0..10_000).map(|_| fresh_span_id()).collect();
        assert_eq!(spans.len(), 10_000);
        assert!(!spans.contains(&[0; 8]));
        let traces: std::collections::HashSet<[u8; 16]> =
            (0..10_000).map(|_| fresh_trace_id()).collect();
        assert_eq!(traces.len(), 10_000);
        let other = std::thread::spawn(fresh_span_id).join().unwrap();
        assert!(
            !spans.contains(&other),
            "another thread drew an id this one had"
        );
    }
}
