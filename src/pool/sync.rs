//! The pool's synchronisation primitives, in one place so that loom can stand in for them.
//!
//! Every lock and every atomic that threads share through a pool (the tiers' locks, the
//! thread caches' registry of live pools, the per-thread counters, the budget) comes from
//! here. Under `--cfg loom` they are loom's models, so `tests/loom.rs` explores every
//! interleaving of the thread caches, the transfer caches and cross-thread frees
//! (`RUSTFLAGS="--cfg loom" cargo test --release --test loom`). Two kinds of state keep
//! the standard atomics on purpose: the process-wide page map (its leaves are zeroed
//! mappings read as atomics, which loom's cannot be) and the counter that numbers pools.
//!
//! The pool may be the process's global allocator, so its locks must never allocate:
//! `std::sync::Mutex` is a futex on Linux and allocates nothing. A panic while a pool
//! lock is held is a bug in the pool; the data it guards is still consistent at every
//! point where the pool code can panic, so poisoning is ignored.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning (see the module doc).
#[inline]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `N` atomics at zero (loom's atomics have no `const` constructor, so no array repeat).
pub(crate) fn zeroed_counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}
