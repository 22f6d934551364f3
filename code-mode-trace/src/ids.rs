//! Fresh span and trace ids, made where a span starts without a tracer: the runtime's
//! records and the host's. Each thread draws from its own xorshift state, seeded once from
//! the standard library's per-process random keys, so ids differ across threads and
//! processes and a draw costs a few instructions.

use std::cell::Cell;

thread_local! {
    /// This thread's state for fresh ids (xorshift, never zero).
    static STATE: Cell<u64> = Cell::new(seed());
}

/// A seed for a thread's ids: different for every thread and process.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish() | 1
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
