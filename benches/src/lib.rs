//! The code-mode benchmarks live in this package's `[[bench]]` targets; this library is
//! empty. `exec_overhead` (`exec_overhead/main.rs`): an exec's cost through every
//! provider and transport, cold and warm, paced and back to back, throughput, nested
//! calls, idle memory and the hop marks. `codex_hosts` (`codex_hosts.rs`): Codex's own
//! host against ours through one gRPC client. `criterion` (`criterion.rs`): the
//! micro-benchmarks (wire frames, tool round trips and payloads, yield and wait,
//! sessions, TypeScript stripping, tool search, context creation).
