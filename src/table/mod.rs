//! Layer 2, **table**: objects in typed tables, named by generational handles.
//!
//! This layer owns the mapping from a [`Handle<T>`] to the place of its object. For now it
//! holds the handle type itself; `Table<T>` (chunked, pool-backed storage with a slotmap
//! slot table) follows in the tables issue.
//!
//! Invariants kept here: a handle's 64-bit form is slotmap's FFI encoding and converts to
//! and from slotmap's `KeyData` exactly; the null handle and the all-zero handle never
//! resolve.

mod handle;

pub use handle::Handle;
