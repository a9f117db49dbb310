//! Layer 1, **pool**: raw memory.
//!
//! This layer owns every byte neurostore stores. [`HierarchicalPool`] routes a
//! [`Layout`](std::alloc::Layout) to one of three tiers, by the size-class table of its
//! [`PoolConfig`]:
//!
//! | tier | default sizes | how | where |
//! | --- | --- | --- | --- |
//! | small | 8, 16, 32, 64, 128, 256 B | fixed-size pools carved from chunks, per-thread caches | `small.rs`, `thread_cache.rs` |
//! | medium | up to 64 KiB | segregated fit over size classes, splitting and coalescing, per-thread caches in front | `medium.rs`, `thread_cache.rs` |
//! | large | 64 KiB .. 1 GiB, then single mappings | buddy arenas over offsets, page aligned | `large.rs`, `buddy.rs` |
//! | spans | a table's objects and slots | address space grown in place, committed chunk by chunk | `span.rs` |
//!
//! All memory comes from the OS in regions (`os.rs`, `mmap`, huge pages on request) that
//! the process-wide page map (`page_map.rs`) registers, so `deallocate` finds the owning
//! tier from the layout and the owning chunk or region from the pointer in O(1). Empty
//! regions beyond `retain_empty` go back to the OS. A [`NumaPlacement`] binds every region
//! (and the tables' spans) to a node or interleaves them (`numa.rs`). [`HierarchicalPool::reset`] frees
//! every block at once (arena style), keeping that many empty regions per tier and class.
//!
//! The pool is also the global allocator ([`NeuroAlloc`]), an `allocator_api2`
//! [`Allocator`](allocator_api2::alloc::Allocator) (for `&HierarchicalPool`), and can be
//! shared by name through [`PoolRegistry`].
//!
//! Invariants this layer keeps (each tier's module states its own in detail):
//! - no two live blocks overlap, and each is aligned to its layout and lies wholly in a
//!   region of the pool that handed it out;
//! - a page-map entry is non-null exactly while its granule belongs to a live region;
//! - the pool's own metadata never comes from the global allocator, so the pool can be it;
//! - no lock is held while an alert callback runs, and the common paths of the small tier
//!   and of cacheable medium requests take no lock and no atomic read-modify-write;
//! - `PoolStats` equals the sum of what was allocated and not freed, whenever no
//!   allocation is in flight.
//!
//! `unsafe` code of the crate lives here (and later in table internals and cuda); each
//! block names the invariant it relies on.

pub mod buddy;
mod budget;
pub mod config;
mod flags;
#[cfg(not(loom))]
mod global;
mod hierarchical;
mod intrusive;
mod large;
#[cfg(not(loom))]
pub(crate) mod lockfree;
#[cfg(loom)]
pub mod lockfree;
mod medium;
mod numa;
mod os;
mod page_map;
#[cfg(not(loom))]
mod registry;
mod small;
pub(crate) mod span;
pub mod stats;
mod sync;
mod thread_cache;

pub use buddy::{BuddyAllocator, BuddyError};
pub use config::{LargeConfig, LargeStrategy, MediumConfig, PoolConfig, SmallConfig};
pub use flags::AllocFlags;
#[cfg(not(loom))]
pub use global::NeuroAlloc;
pub use hierarchical::{HierarchicalPool, LeakReport, PoolCorruption};
pub use numa::NumaPlacement;
#[cfg(not(loom))]
pub use registry::PoolRegistry;

/// Ends this thread's use of every pool's cache, as the thread's exit does (loom models
/// call it last in each thread they spawn; see `thread_cache::retire_this_thread`).
#[cfg(loom)]
pub fn retire_thread_caches() {
    thread_cache::retire_this_thread();
}
pub use stats::{Alert, AlertKind, ClassStats, PoolStats, Tier, TierStats};
