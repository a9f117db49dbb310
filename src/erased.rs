//! Layer 4, **erased**: tables without their type.
//!
//! [`ErasedTable`] is what every table of a [`Store`](crate::Store) offers without its
//! type (figures, whole-table maintenance, a way back to the typed table), and the
//! crate-private `TableInternals` adds what the collector and snapshots need (liveness of
//! many handles, sweeping, walking owners in storage order). The store keeps its tables as
//! `Box<dyn TableInternals>` in a [`TypeMap`]; the collector and the snapshot layer work
//! on that map without knowing the store. Only [`Table<T>`](crate::Table) implements
//! these traits (sealed).
//!
//! This module has no unsafe code: `lib.rs` declares it `#[forbid(unsafe_code)]`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::handle::Handle;
use crate::pooled::PoolHints;
use crate::table::defrag::{DefragReport, FragmentationReport};
use crate::table::{Table, TableStats};

mod sealed {
    /// Keeps [`ErasedTable`](super::ErasedTable) implemented by [`Table`](crate::Table)
    /// alone, so that methods can be added to it without breaking anyone.
    pub trait Sealed {}
}

/// What every table of a [`Store`](crate::Store) offers without its type: figures, whole-table
/// maintenance, and a way back to the typed table. Sealed: only [`Table<T>`] implements
/// it.
///
/// ```
/// use neurostore::Store;
///
/// let mut store = Store::new();
/// store.insert(1u32);
/// store.insert(2.5f64);
/// let mut names: Vec<_> = store.tables().map(|t| (t.type_name(), t.len())).collect();
/// names.sort();
/// assert_eq!(names, [("f64", 1), ("u32", 1)]);
/// ```
pub trait ErasedTable: sealed::Sealed + Send + Sync {
    /// The stored type's name (`std::any::type_name`).
    fn type_name(&self) -> &'static str;
    /// Live objects.
    fn len(&self) -> usize;
    /// True when the table holds no object.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The table's figures.
    fn stats(&self) -> TableStats;
    /// Drops every object.
    fn clear(&mut self);
    /// The table's current epoch.
    fn epoch(&self) -> u64;
    /// The table's holes ([`Table::fragmentation`]).
    fn fragmentation(&self) -> FragmentationReport;
    /// Closes the table's holes ([`Table::defragment`]).
    fn defragment(&mut self) -> DefragReport;
    /// Chunk indices in use or free below the last chunk (bounds the cost of
    /// [`fragmentation`](Self::fragmentation)).
    fn chunk_slots(&self) -> usize;
    /// The hints the table was built with ([`Table::hints`]).
    fn hints(&self) -> PoolHints;
    /// Bytes of one object (`size_of`).
    fn element_size(&self) -> usize;
    /// How many moving passes ran over the table ([`Table::layout_version`]).
    fn layout_version(&self) -> u64;
    /// True when the handle with these bits ([`Handle::to_bits`]) names a live object.
    fn contains_bits(&self, bits: u64) -> bool;
    /// The table as `Any`, to get the typed table back.
    fn as_any(&self) -> &dyn Any;
    /// The table as `Any`, mutably. [`Store::tables_mut`](crate::Store::tables_mut) tells an open incremental
    /// collection cycle that every table it hands out may change, so a typed table
    /// reached this way needs no write barrier of its own.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The erased operations the collector and snapshots need beyond the public view:
/// crate-private, so that no caller can change a table's objects behind the write barrier
/// or read its slot layout.
pub(crate) trait TableInternals: ErasedTable {
    /// For each handle (as bits) in `bits`, whether it names a live object, into `live`
    /// (cleared first). One call for a batch: the slot reads do not depend on one
    /// another, so their cache misses overlap.
    fn live_many(&self, bits: &[u64], live: &mut Vec<bool>);
    /// Removes (and drops) the object the bits name; false if none.
    fn remove_bits(&mut self, bits: u64) -> bool;
    /// One more than the largest slot index of a handle of this table.
    fn slot_bound(&self) -> usize;
    /// Slots the slot table holds, live and vacant, its sentinel included: 1 for a table
    /// that never held an object.
    fn slot_count(&self) -> usize;
    /// The handles (as bits) of the objects from global place `start` on, in storage
    /// order, at most `max` into `out`; the place to go on from, or `None` at the end.
    fn owners_from_bits(&self, start: u64, max: usize, out: &mut Vec<u64>) -> Option<u64>;
    /// Removes (and drops) every object whose slot index `keep` refuses; how many.
    fn sweep_unmarked(&mut self, keep: &dyn Fn(u32) -> bool) -> usize;
    /// The public view of this table.
    fn view(&self) -> &dyn ErasedTable;
    /// The public view of this table, mutably.
    fn view_mut(&mut self) -> &mut dyn ErasedTable;
}

impl<T> sealed::Sealed for Table<T> {}

impl<T: Send + Sync + 'static> ErasedTable for Table<T> {
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn len(&self) -> usize {
        Table::len(self)
    }
    fn stats(&self) -> TableStats {
        Table::stats(self)
    }
    fn clear(&mut self) {
        Table::clear(self)
    }
    fn epoch(&self) -> u64 {
        Table::epoch(self)
    }
    fn fragmentation(&self) -> FragmentationReport {
        Table::fragmentation(self)
    }
    fn defragment(&mut self) -> DefragReport {
        Table::defragment(self)
    }
    fn chunk_slots(&self) -> usize {
        Table::chunk_slots(self)
    }
    fn hints(&self) -> PoolHints {
        Table::hints(self)
    }
    fn element_size(&self) -> usize {
        std::mem::size_of::<T>()
    }
    fn layout_version(&self) -> u64 {
        Table::layout_version(self)
    }
    fn contains_bits(&self, bits: u64) -> bool {
        self.contains(Handle::from_bits(bits))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl<T: Send + Sync + 'static> TableInternals for Table<T> {
    fn live_many(&self, bits: &[u64], live: &mut Vec<bool>) {
        live.clear();
        live.extend(bits.iter().map(|&b| self.contains(Handle::from_bits(b))));
    }
    fn remove_bits(&mut self, bits: u64) -> bool {
        self.remove(Handle::from_bits(bits)).is_some()
    }
    fn slot_bound(&self) -> usize {
        Table::slot_bound(self)
    }
    fn slot_count(&self) -> usize {
        Table::slot_count(self)
    }
    fn owners_from_bits(&self, start: u64, max: usize, out: &mut Vec<u64>) -> Option<u64> {
        let mut handles = Vec::with_capacity(max.min(4096));
        let next = self.owners_from(start, max, &mut handles);
        out.extend(handles.iter().map(Handle::to_bits));
        next
    }
    fn sweep_unmarked(&mut self, keep: &dyn Fn(u32) -> bool) -> usize {
        let before = self.len();
        self.retain(|h, _| keep(h.index()));
        before - self.len()
    }
    fn view(&self) -> &dyn ErasedTable {
        self
    }
    fn view_mut(&mut self) -> &mut dyn ErasedTable {
        self
    }
}

/// Hashes a [`TypeId`] by the 64 bits it hands to `Hasher::write_u64`: those are already
/// a hash of the type, so SipHash's work on them is wasted, and the store looks a table up
/// on every call (`NeuralGraph::connect` spent 14 % of its time in SipHash). Other input
/// goes through FNV-1a.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A map keyed by type, hashed with [`TypeIdHasher`].
pub(crate) type TypeMap<V> = HashMap<TypeId, V, BuildHasherDefault<TypeIdHasher>>;

/// The tables of a store, by type.
pub(crate) type Tables = TypeMap<Box<dyn TableInternals>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hasher;

    #[test]
    fn type_map_keeps_types_apart() {
        let mut m: TypeMap<&str> = TypeMap::default();
        m.insert(TypeId::of::<u8>(), "u8");
        m.insert(TypeId::of::<u16>(), "u16");
        m.insert(TypeId::of::<Vec<u8>>(), "Vec<u8>");
        m.insert(TypeId::of::<crate::Neuron>(), "Neuron");
        assert_eq!(m.len(), 4);
        assert_eq!(m[&TypeId::of::<u16>()], "u16");
        assert_eq!(m[&TypeId::of::<crate::Neuron>()], "Neuron");
        assert_eq!(m.get(&TypeId::of::<u32>()), None);
        // Bytes written through `write` are mixed, not dropped.
        let (mut a, mut b) = (TypeIdHasher::default(), TypeIdHasher::default());
        a.write(&[1, 2, 3]);
        b.write(&[1, 2, 4]);
        assert_ne!(a.finish(), b.finish());
    }
}
