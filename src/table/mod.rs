//! Layer 3, **table**: objects in typed tables, named by generational handles.
//!
//! This layer owns the objects of each type and the mapping from a [`Handle<T>`] to the
//! place of its object. [`Table<T>`] (`typed.rs`) keeps objects in fixed-capacity chunks
//! laid end to end in one pool span (`chunk.rs`: occupancy bitmap and owning slot index
//! per place), and per handle index a 4-byte word (version, and whether the object is at
//! its home place `index - 1`) and a 4-byte place, in two more (`slots.rs`): a lookup
//! reads the word while it reads the object at its home place.
//!
//! Invariants kept here:
//! - a handle resolves to exactly the object it was returned for until that object is
//!   removed, and never again after; the null and the all-zero handle never resolve;
//! - a live slot's place is an occupied place whose back-reference is that slot's index;
//!   its word says whether that place is `index - 1`; a vacant slot has an even version
//!   and its group of 64 is marked in the table's vacant-slot bitmaps;
//! - `Drop` runs exactly once for every object;
//! - a handle's 64-bit form is slotmap's FFI encoding and converts to and from slotmap's
//!   `KeyData` exactly.
//!
//! Unsafe code of this layer is confined to `chunk.rs` (placing, moving and borrowing
//! objects in raw chunk memory), `slots.rs` (the slot array in its span) and `typed.rs`'s
//! lookups and iterators. `persist.rs` gives a table's
//! slot table as an image for snapshots and rebuilds a table from one (no unsafe code).

mod bulk;
mod chunk;
pub mod defrag;
mod generations;
mod iter;
mod persist;
mod slots;
mod typed;

pub use crate::handle::Handle;
pub use iter::{Drain, IntoIter, Iter, IterMut, Values, ValuesMut};
pub(crate) use persist::{GenerationImage, SlotImage, TableImage};
#[cfg(feature = "cuda")]
pub(crate) use slots::{word_is_live, word_version};
pub use typed::{DEFAULT_CHUNK_BYTES, Loc, Table, TableStats, default_pool};
