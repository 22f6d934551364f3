//! Hop marks: a `trace` event (target `code_mode::hops`, field `hop`) at each hand-off of
//! an exec and of a nested tool call, in the host, on the wire and in the runtime, from
//! the session call to the cell thread and back. Off, they cost a level check;
//! `exec_overhead --sections hops` turns them on (in the runtime process too, through its
//! `--log` filter) and prints the time between consecutive marks.

/// The `tracing` crate, for [`hop!`]'s expansion in crates that do not depend on it.
#[doc(hidden)]
pub use tracing as __tracing;

/// Marks that the exec or tool call being traced reached `$name` (for the workspace's
/// crates and the benchmark, not for agent cores).
#[doc(hidden)]
#[macro_export]
macro_rules! hop {
    ($name:literal) => {
        $crate::hops::__tracing::trace!(target: "code_mode::hops", hop = $name)
    };
}
