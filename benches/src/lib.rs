//! The code-mode benchmarks live in this package's `[[bench]]` targets:
//! `exec_overhead` (see `exec_overhead.rs`).
