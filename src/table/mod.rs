//! Layer 2, **table**: objects in typed tables, named by generational handles.
//!
//! This layer owns the objects of each type and the mapping from a [`Handle<T>`] to the
//! place of its object. [`Table<T>`] keeps objects in fixed-capacity chunks whose memory
//! comes from the pool (`chunk.rs`: occupancy bitmap and back-reference per place) and a
//! `slotmap::SlotMap<Handle<T>, Loc>` slot table (`typed.rs`).
//!
//! Invariants kept here:
//! - a handle resolves to exactly the object it was returned for until that object is
//!   removed, and never again after; the null and the all-zero handle never resolve;
//! - a live slot's `Loc` names an occupied place whose back-reference is that slot's handle;
//! - `Drop` runs exactly once for every object;
//! - a handle's 64-bit form is slotmap's FFI encoding and converts to and from slotmap's
//!   `KeyData` exactly.
//!
//! Unsafe code of this layer is confined to `chunk.rs` (placing, moving and borrowing
//! objects in raw chunk memory) and `typed.rs`'s `iter_mut`. `persist.rs` gives a table's
//! slot table as an image for snapshots and rebuilds a table from one (no unsafe code).

mod chunk;
mod handle;
mod persist;
mod typed;

pub use handle::Handle;
pub(crate) use handle::short_type_name;
pub(crate) use persist::{SlotImage, TableImage};
pub use typed::{DEFAULT_CHUNK_BYTES, Loc, Table, TableStats, default_pool};
