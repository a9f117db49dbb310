//! # neurostore
//!
//! An object store for neural graphs. Objects live in typed tables and are named by
//! generational handles instead of pointers, so the store can move, collect, mirror and
//! snapshot them while every handle stays valid or is reliably reported stale.
//!
//! The crate is built in layers, each importing only the ones listed before it
//! ([`architecture`] draws them and says why; `tests/layers.rs` checks it):
//!
//! - [`handle`]: typed generational handles ([`Handle`]).
//! - [`pool`]: the hierarchical size-class memory pool ([`HierarchicalPool`]), also usable
//!   as the global allocator ([`NeuroAlloc`]).
//! - [`pooled`]: what `#[derive(Pooled)]` implements: stable names, schema fingerprints,
//!   table hints and snapshot encodings ([`Pooled`](trait@Pooled)) and the handles a value
//!   holds ([`Trace`]).
//! - [`table`]: pool-backed tables ([`Table`]), and moving their objects to close holes or
//!   to reorder them with handles unchanged ([`defrag`]).
//! - `erased`: tables without their type ([`ErasedTable`](store::ErasedTable)).
//! - [`gc`]: tracing garbage collection over handles: parallel, or incremental in
//!   bounded steps.
//! - [`snapshot`]: stores and tables to disk and back, checked on every byte.
//! - [`store`]: one table per type ([`Store`], and [`SharedStore`] for many threads).
//! - [`neural`]: the built-in neuron and synapse types, [`NeuralGraph`] and the reference
//!   simulation step.
//! - `cuda` (feature `cuda`, on by default): device mirrors of tables on NVIDIA GPUs,
//!   synced by changed chunk, with handles resolved on the device.
//! - [`distributed`]: a network shared out among ranks (threads, or MPI processes with
//!   the `mpi` feature) that exchange only spikes, with the spikes of one process.
//!
//! ```
//! use std::alloc::Layout;
//! use neurostore::{HierarchicalPool, PoolConfig};
//!
//! let pool = HierarchicalPool::new(PoolConfig::high_performance())?;
//! let layout = Layout::new::<[f32; 16]>();
//! let block = pool.allocate(layout)?;
//! // SAFETY: allocated above with this layout, not used afterwards.
//! unsafe { pool.deallocate(block.cast(), layout) };
//! # Ok::<(), neurostore::Error>(())
//! ```

// Under `--cfg loom` only the pool is built, and parts of it serve the layers left out.
#![cfg_attr(loom, allow(dead_code))]

// The derive's generated code names `::neurostore::...`; this makes those paths work
// inside the crate too, where the built-in types use the derive.
#[cfg(not(loom))]
extern crate self as neurostore;

#[cfg(all(feature = "cuda", not(loom)))]
pub mod cuda;
#[cfg(not(loom))]
pub use table::defrag;
#[cfg(not(loom))]
#[forbid(unsafe_code)]
pub mod distributed;
#[cfg(not(loom))]
#[forbid(unsafe_code)]
mod erased;
#[forbid(unsafe_code)]
pub mod error;
#[cfg(not(loom))]
#[forbid(unsafe_code)]
pub mod gc;
#[cfg(not(loom))]
#[deny(unsafe_code)]
pub mod handle;
#[cfg(not(loom))]
#[forbid(unsafe_code)]
pub mod neural;
pub mod pool;
#[cfg(not(loom))]
#[forbid(unsafe_code)]
pub mod pooled;
#[cfg(not(loom))]
#[forbid(unsafe_code)]
pub mod snapshot;
#[cfg(not(loom))]
#[forbid(unsafe_code)]
pub mod store;
#[cfg(not(loom))]
pub mod table;

#[cfg(not(loom))]
pub use defrag::{DefragBudget, DefragPolicy, DefragReport, FragmentationReport};
#[cfg(not(loom))]
pub use error::{ConfigError, Error, OomReason, SnapshotError};
#[cfg(not(loom))]
pub use gc::{Dangling, DanglingPolicy, GcPolicy, GcProgress, GcReport, Root};
#[cfg(not(loom))]
pub use neural::{NeuralGraph, Neuron, NeuronId, Synapse, SynapseId};
/// `#[derive(Pooled)]`: implements [`Pooled`](trait@Pooled) and [`Trace`] (see the trait
/// for the attributes).
#[cfg(not(loom))]
pub use neurostore_derive::Pooled;
#[cfg(not(loom))]
pub use pool::{
    Alert, AlertKind, AllocFlags, HierarchicalPool, LeakReport, NeuroAlloc, NumaPlacement,
    PoolConfig, PoolCorruption, PoolRegistry, PoolStats,
};
#[cfg(not(loom))]
pub use pooled::{
    AnyHandle, Lifetime, ObjectKind, PoolHints, Pooled, Retention, Trace, Tracer, trace_handles,
};
#[cfg(not(loom))]
pub use snapshot::{SnapshotReport, TypeRegistry};
#[cfg(not(loom))]
pub use store::{SharedStore, Store, StoreDefragReport};
#[cfg(not(loom))]
pub use table::{Handle, Table};

/// Under `--cfg loom` the crate is only its pool (less the global allocator and the
/// registry) and the error types, built over loom's locks and atomics for `tests/loom.rs`.
#[cfg(loom)]
pub use pool::{HierarchicalPool, PoolConfig, PoolStats, lockfree};

/// How the crate is laid out: its layers and the one way their imports run, where each
/// part lives, and the tests and benches (`docs/ARCHITECTURE.md`, shown here).
#[cfg(not(loom))]
pub mod architecture {
    #![doc = include_str!("../docs/ARCHITECTURE.md")]
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
