//! The one mutex helper of the workspace.
//!
//! Every mutex in code-mode guards state whose invariants hold between statements (maps of
//! calls, sessions, records), and no critical section calls user code, so a panic elsewhere
//! that poisoned a lock leaves the data usable: the lock is taken anyway rather than
//! spreading the panic to every later caller.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning (see the module documentation).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
