//! The code-mode benchmarks live in this package's `[[bench]]` targets; this library
//! holds only what two of them share ([`resamples`]). `exec_overhead`
//! (`exec_overhead/main.rs`): an exec's cost through every provider and transport, cold
//! and warm, paced and back to back, throughput, nested calls, idle memory and the hop
//! marks. `codex_hosts` (`codex_hosts.rs`): Codex's own host against ours through one
//! gRPC client. `criterion` (`criterion.rs`): the micro-benchmarks (wire frames, tool
//! round trips and payloads, yield and wait, sessions, TypeScript stripping, tool search,
//! context creation).

/// `count` resamples of `0..size` drawn with replacement (a fixed xorshift stream, so a
/// run's intervals can be recomputed): the indices of the samples each bootstrap
/// resample takes, for a ratio or a difference measured in pairs.
pub fn resamples(size: usize, count: usize) -> impl Iterator<Item = Vec<usize>> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut draw = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count).map(move |_| {
        (0..size)
            .map(|_| (draw() % size.max(1) as u64) as usize)
            .collect()
    })
}
