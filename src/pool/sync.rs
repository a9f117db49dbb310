//! Locks used inside the pool.
//!
//! The pool may be the process's global allocator, so its locks must never allocate:
//! `std::sync::Mutex` is a futex on Linux and allocates nothing. A panic while a pool
//! lock is held is a bug in the pool; the data it guards is still consistent at every
//! point where the pool code can panic, so poisoning is ignored.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning (see the module doc).
#[inline]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
