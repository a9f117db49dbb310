//! [`Table<T>`]: a typed slab of objects in pool-backed chunks, named by handles.

use std::alloc::handle_alloc_error;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use super::chunk::Chunk;
use super::slots::{
    AWAY, PREFAULT_FROM_BYTES, SlotArray, VacantSlots, home_word, populate_in_parallel,
};
use crate::error::Error;
use crate::handle::Handle;
use crate::pool::span::Span;
use crate::pool::{HierarchicalPool, PoolConfig};
use crate::pooled::{CheckedHints, Lifetime, MAX_ALIGN, ObjectKind, PoolHints, Pooled, Retention};

/// Default bytes of object storage per chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 64 << 10;

/// Where an object lives: which chunk and which place in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Index of the chunk in the table.
    pub chunk: u32,
    /// Place within the chunk.
    pub pos: u32,
}

/// A fresh table identity: tables made separately never share one.
fn next_table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The process-wide default pool that tables use unless given one.
pub fn default_pool() -> Arc<HierarchicalPool> {
    static POOL: OnceLock<Arc<HierarchicalPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        Arc::new(HierarchicalPool::new(PoolConfig::default()).expect("the default config is valid"))
    })
    .clone()
}

/// Figures of one table.
#[derive(Clone, Debug, PartialEq)]
pub struct TableStats {
    /// Live objects.
    pub live: usize,
    /// Places in all chunks.
    pub capacity: usize,
    /// Chunks held.
    pub chunks: usize,
    /// Bytes of chunk storage taken from the pool.
    pub bytes_reserved: usize,
    /// Bytes of the slot array (pool memory) and the per-chunk metadata (occupancy bits,
    /// owner indices).
    pub metadata_bytes: usize,
    /// Bytes of the slot array alone (pool memory, part of `metadata_bytes`).
    pub slot_bytes: usize,
    /// Free places below the highest occupied place (places a dense table would not have).
    pub holes: usize,
    /// `holes / (live + holes)`: 0 for a dense table.
    pub fragmentation: f64,
    /// What the objects are, as declared with `#[pooled(kind = ...)]`: a label for
    /// reports.
    pub kind: Option<ObjectKind>,
    /// How long the objects are expected to live, as declared with
    /// `#[pooled(lifetime = ...)]` ([`Lifetime`] says what each changes).
    pub lifetime: Option<Lifetime>,
}

/// A typed table: objects of type `T` in fixed-capacity chunks whose memory comes from a
/// [`HierarchicalPool`], named by [`Handle<T>`].
///
/// Objects sit in one run of address space from the pool, chunk after chunk, so place `p`
/// is at `start + p * size_of::<T>()`; a slot array (8 bytes per handle index: version and
/// place) maps a handle to its place. A lookup therefore reads one slot and then the
/// object, and a removal is O(1). A new object takes the lowest free place, so a table
/// stays dense; iteration walks storage, chunk by chunk. `Drop` runs exactly once for
/// every object: on [`remove`](Self::remove), [`clear`](Self::clear),
/// [`retain`](Self::retain) or when the table is dropped. Every mutation stamps its chunk
/// with the table's current [epoch](Self::epoch), so device mirrors and incremental
/// snapshots can find what changed.
///
/// ```
/// use neurostore::table::Table;
///
/// let mut rates: Table<f32> = Table::new();
/// let a = rates.insert(4.5);
/// let b = rates.insert(7.25);
/// assert_eq!(rates.get(a), Some(&4.5));
/// *rates.get_mut(b).unwrap() += 1.0;
/// assert_eq!(rates.remove(a), Some(4.5));
/// assert_eq!(rates.get(a), None); // stale: never resolves again
/// assert_eq!(rates.remove(a), None);
/// assert_eq!(rates.iter().map(|(_, r)| *r).sum::<f32>(), 8.25);
/// ```
pub struct Table<T> {
    /// One slot per handle index: a live one holds its object's place, packed as
    /// `chunk << shift | pos`. The object at place `p` has slot `p + 1` whenever the
    /// table could give it that one (see [`take_slot`](Self::take_slot)).
    pub(super) slots: SlotArray,
    /// The vacant slots (the sentinel not counted).
    pub(super) vacant: VacantSlots,
    /// Live objects.
    pub(super) len: usize,
    /// The places of every chunk: chunk `i` at `i * per_chunk * size_of::<T>()`.
    pub(super) objects: Span,
    pub(super) chunks: Vec<Option<Chunk<T>>>,
    /// Bit `i` set iff chunk `i` exists and has a free place.
    pub(super) non_full: Vec<u64>,
    /// Every word of `non_full` below this index is zero: the search for the lowest free
    /// place starts here, so filling a large table in order costs O(1) per insert, not a
    /// scan over the full chunks below.
    pub(super) non_full_floor: usize,
    /// Every chunk index below this one holds a chunk (a lower bound of the first vacant
    /// index), so making chunks one after another does not rescan the ones made before.
    pub(super) chunk_floor: usize,
    /// The chunk emptied last, kept for the next inserts instead of going back to the
    /// pool (at most one empty chunk is kept).
    pub(super) spare: Option<u32>,
    pub(super) pool: Arc<HierarchicalPool>,
    pub(super) per_chunk: u32,
    /// `log2(per_chunk)`.
    pub(super) shift: u32,
    pub(super) epoch: AtomicU64,
    /// The epoch of the last change to the slot table (an insert, a removal, a move).
    pub(super) slots_changed: u64,
    /// This table's identity in the process, for consumers that follow one table.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) id: u64,
    /// Bumped by every pass that moves objects (defragmentation, `compact_by_key`).
    pub(super) layout_version: u64,
    /// Retention, chunk alignment and the other hints the table was built with.
    pub(super) hints: PoolHints,
    /// Removals since a store's defragmentation policy last looked at the table.
    pub(super) removals_unchecked: usize,
}

// SAFETY: a table owns its objects (like a Vec<T>); its raw parts (the spans and the
// chunks' pointers into them) are reached only through the table, so sending the table
// sends the objects.
unsafe impl<T: Send> Send for Table<T> {}
// SAFETY: `&Table<T>` only gives `&T` (and reads of plain bookkeeping).
unsafe impl<T: Sync> Sync for Table<T> {}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("type", &crate::handle::short_type_name::<T>())
            .field("len", &self.len())
            .field("chunks", &self.chunks.iter().flatten().count())
            .finish()
    }
}

impl<T> Table<T> {
    /// An empty table in the [default pool](default_pool), with 64 KiB chunks.
    pub fn new() -> Self {
        Self::with_pool(default_pool())
    }

    /// An empty table whose chunks come from `pool`.
    pub fn with_pool(pool: Arc<HierarchicalPool>) -> Self {
        Self::with_pool_and_chunk_bytes(pool, DEFAULT_CHUNK_BYTES)
    }

    /// An empty table whose chunks come from `pool` and hold at most `chunk_bytes` of
    /// objects each: the largest power of two of objects that fits (at least one, at
    /// most 2^24). Zero-sized objects take no memory; 4096 of them share a chunk.
    pub fn with_pool_and_chunk_bytes(pool: Arc<HierarchicalPool>, chunk_bytes: usize) -> Self {
        // The capacity is a power of two so that a place packs into a slot as
        // `chunk << shift | pos`.
        let per_chunk = chunk_bytes
            .checked_div(std::mem::size_of::<T>())
            .map_or(4096, |n| n.clamp(1, 1 << 24));
        let per_chunk = 1usize << per_chunk.ilog2();
        Table {
            slots: SlotArray::default(),
            vacant: VacantSlots::default(),
            len: 0,
            objects: Span::new(),
            chunks: Vec::new(),
            non_full: Vec::new(),
            non_full_floor: 0,
            chunk_floor: 0,
            spare: None,
            pool,
            per_chunk: per_chunk as u32,
            shift: per_chunk.ilog2(),
            epoch: AtomicU64::new(0),
            slots_changed: 0,
            id: next_table_id(),
            layout_version: 0,
            removals_unchecked: 0,
            hints: PoolHints::of::<T>(),
        }
    }

    /// An empty table in the [default pool](default_pool) built from `T`'s
    /// `#[pooled(...)]` hints: its [`Retention`] and the alignment of every object.
    ///
    /// ```
    /// use neurostore::{Pooled, Retention, table::Table};
    ///
    /// #[derive(Pooled)]
    /// #[pooled(align = 64, retention = "traced")]
    /// struct Row([f32; 16]);
    ///
    /// let mut rows: Table<Row> = Table::pooled();
    /// assert_eq!(rows.retention(), Retention::Traced);
    /// let h = rows.insert(Row([0.0; 16]));
    /// assert_eq!(rows.get(h).map(|r| r as *const Row as usize % 64), Some(0));
    /// ```
    ///
    /// The derive checks its hints where the type is declared. A hand-written [`Pooled`]
    /// impl whose alignment cannot hold (not a power of two, above 4096, or not dividing
    /// the size) fails to build where its table is made, instead of failing at run time:
    ///
    /// ```compile_fail,E0080
    /// use neurostore::{PoolHints, Pooled, table::Table};
    ///
    /// struct Odd([u8; 24]);
    ///
    /// impl Pooled for Odd {
    ///     const TYPE_NAME: &'static str = "Odd";
    ///     const SCHEMA: u64 = 1;
    ///     const HINTS: PoolHints = PoolHints { align: 16, ..PoolHints::of::<Odd>() };
    /// }
    ///
    /// let table: Table<Odd> = Table::pooled();
    /// ```
    pub fn pooled() -> Self
    where
        T: Pooled,
    {
        Self::pooled_in(default_pool())
    }

    /// As [`pooled`](Self::pooled), with chunks from `pool`.
    pub fn pooled_in(pool: Arc<HierarchicalPool>) -> Self
    where
        T: Pooled,
    {
        let mut table = Self::with_pool(pool);
        table.hints = CheckedHints::<T>::HINTS;
        table
    }

    /// An empty table whose chunks come from `pool`, built from `hints` (for types
    /// without the derive, or to override it). `hints.align` is raised to `T`'s own
    /// alignment; every object is aligned to the result.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `hints.align` is not a power of two, exceeds 4096,
    /// or does not divide `T`'s size (objects packed in a chunk could not all be aligned).
    ///
    /// ```
    /// use neurostore::{PoolHints, table::{Table, default_pool}};
    ///
    /// let hints = PoolHints { align: 64, ..PoolHints::of::<[u64; 8]>() };
    /// let t = Table::<[u64; 8]>::with_hints(default_pool(), hints)?;
    /// assert_eq!(t.hints().align, 64);
    /// let bad = PoolHints { align: 64, ..PoolHints::of::<[u64; 3]>() };
    /// assert!(Table::<[u64; 3]>::with_hints(default_pool(), bad).is_err());
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn with_hints(pool: Arc<HierarchicalPool>, hints: PoolHints) -> Result<Self, Error> {
        let size = std::mem::size_of::<T>();
        let align = hints.align.max(std::mem::align_of::<T>());
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(Error::invalid_argument(
                "align",
                format!(
                    "must be a power of two from 1 to {MAX_ALIGN}, got {}",
                    hints.align
                ),
            ));
        }
        if !size.is_multiple_of(align) {
            return Err(Error::invalid_argument(
                "align",
                format!(
                    "{} is {size} bytes, not a multiple of {align}: objects packed in a \
                     chunk could not all be aligned",
                    crate::handle::short_type_name::<T>()
                ),
            ));
        }
        let mut table = Self::with_pool(pool);
        table.hints = PoolHints { align, ..hints };
        Ok(table)
    }

    /// The hints the table was built with ([`pooled`](Self::pooled),
    /// [`with_hints`](Self::with_hints); [`PoolHints::of`] otherwise).
    pub fn hints(&self) -> PoolHints {
        self.hints
    }

    /// Makes this table one built from `hints`, if it already is or is empty (an empty
    /// table keeps its pool, chunk capacity and slots, so stale handles stay stale).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the table holds objects and was built with other
    /// hints, or `hints` are invalid ([`with_hints`](Self::with_hints)); nothing changes.
    pub(crate) fn adopt_hints(&mut self, hints: PoolHints) -> Result<(), Error> {
        let rebuilt = Self::with_hints(self.pool.clone(), hints)?;
        if rebuilt.hints == self.hints {
            return Ok(());
        }
        if !self.is_empty() {
            return Err(Error::invalid_argument(
                "hints",
                format!(
                    "the table of {} holds {} objects built with {:?}; it cannot take {:?} \
                     (register the type before its first insert)",
                    crate::handle::short_type_name::<T>(),
                    self.len(),
                    self.hints,
                    rebuilt.hints
                ),
            ));
        }
        // Empty: only a spare chunk may be left, and the slots; the objects' alignment
        // is all the hints change, and the span is aligned beyond any of them.
        self.hints = rebuilt.hints;
        Ok(())
    }

    /// Whether the garbage collector may free this table's objects.
    pub fn retention(&self) -> Retention {
        self.hints.retention
    }

    /// Bytes of one chunk's places.
    #[inline]
    pub(super) fn chunk_bytes(&self) -> usize {
        self.per_chunk as usize * std::mem::size_of::<T>()
    }

    /// Where place 0 is; every place follows at `size_of::<T>()` strides.
    #[inline]
    pub(super) fn objects_ptr(&self) -> *mut T {
        if std::mem::size_of::<T>() == 0 {
            NonNull::<T>::dangling().as_ptr()
        } else {
            self.objects.base().as_ptr().cast()
        }
    }

    /// The address of global place `place` (within the mapped places of a chunk the
    /// table holds, or any place for zero-sized `T`).
    #[inline]
    pub(super) fn place_ptr(&self, place: u32) -> *mut T {
        // `wrapping_add`: the address is computed, not read; callers pass places of
        // chunks the table holds, whose memory is mapped.
        self.objects_ptr().wrapping_add(place as usize)
    }

    /// Makes chunk `ci` (a vacant index, or one past the last): commits its memory in the
    /// span (which may move, and then every chunk follows it) and marks it non-full. On
    /// error nothing changes.
    pub(super) fn make_chunk_at(&mut self, ci: usize) -> Result<(), Error> {
        let bytes = self.chunk_bytes();
        if u64::try_from(ci).map_or(true, |c| c >= 1u64 << (32 - self.shift)) {
            return Err(Error::TableFull { places: 1u64 << 32 });
        }
        if bytes > 0 {
            let end = (ci + 1)
                .checked_mul(bytes)
                .ok_or(Error::TableFull { places: 1u64 << 32 })?;
            let before = self.objects.base();
            self.objects.reserve(&self.pool, end)?;
            if self.objects.base() != before {
                self.rebase_chunks();
            }
            self.objects.commit(&self.pool, ci * bytes, bytes)?;
        }
        if self.chunks.len() <= ci {
            self.chunks.resize_with(ci + 1, || None);
        }
        debug_assert!(self.chunks[ci].is_none(), "chunk {ci} exists already");
        let data = NonNull::new(self.place_ptr((ci as u32) << self.shift))
            .expect("the span's places are not at address 0");
        let home = ((ci as u32) << self.shift).wrapping_add(1);
        self.chunks[ci] = Some(Chunk::new(data, self.per_chunk, home, self.epoch()));
        self.set_non_full(ci, true);
        Ok(())
    }

    /// Points every chunk at its places after the span moved.
    fn rebase_chunks(&mut self) {
        let (objects, shift) = (self.objects_ptr(), self.shift);
        for (ci, c) in self.chunks.iter_mut().enumerate() {
            if let Some(c) = c {
                let data = objects.wrapping_add(ci << shift);
                c.rebase(NonNull::new(data).expect("the span's places are not at address 0"));
            }
        }
    }

    /// Drops chunk `ci`'s objects and gives its memory back to the pool.
    pub(super) fn free_chunk(&mut self, ci: usize) {
        let Some(chunk) = self.chunks.get_mut(ci).and_then(Option::take) else {
            return;
        };
        chunk.drop_objects();
        let bytes = self.chunk_bytes();
        if bytes > 0 {
            // SAFETY: the chunk's places were committed when it was made, and its objects
            // are gone (dropped above); nothing refers to them any more.
            unsafe { self.objects.decommit(&self.pool, ci * bytes, bytes) };
        }
        self.chunk_floor = self.chunk_floor.min(ci);
        self.set_non_full(ci, false);
        if self.spare == Some(ci as u32) {
            self.spare = None;
        }
        while matches!(self.chunks.last(), Some(None)) {
            self.chunks.pop();
        }
    }

    /// An empty table with chunks for `n` objects already taken from the default pool.
    /// Aborts through [`handle_alloc_error`] if the pool cannot give them, as `Vec` does;
    /// [`try_with_capacity`](Self::try_with_capacity) returns the error instead.
    pub fn with_capacity(n: usize) -> Self {
        match Self::try_with_capacity(n) {
            Ok(t) => t,
            Err(e) => handle_alloc_error(oom_layout(&e)),
        }
    }

    /// An empty table with chunks for `n` objects already taken from the default pool.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when the pool cannot give them; [`Error::TableFull`] past
    /// the places a table addresses.
    pub fn try_with_capacity(n: usize) -> Result<Self, Error> {
        let mut t = Self::new();
        t.try_reserve(n)?;
        Ok(t)
    }

    /// Makes sure `additional` more objects fit without taking another chunk or slot
    /// from the pool; on error nothing changes beyond the chunks already taken.
    pub fn try_reserve(&mut self, additional: usize) -> Result<(), Error> {
        let free: usize = self
            .chunks
            .iter()
            .flatten()
            .map(|c| (c.capacity() - c.live()) as usize)
            .sum();
        let missing = additional
            .saturating_sub(free)
            .div_ceil(self.per_chunk as usize);
        for _ in 0..missing {
            self.add_chunk()?;
        }
        let new_slots = additional.saturating_sub(self.vacant_count());
        self.slots.reserve(&self.pool, new_slots)
    }
}

/// Figures and change epochs.
impl<T> Table<T> {
    /// The pool the chunks come from.
    pub fn pool(&self) -> &Arc<HierarchicalPool> {
        &self.pool
    }

    /// Places per chunk.
    pub fn chunk_capacity(&self) -> u32 {
        self.per_chunk
    }

    /// Number of live objects.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the table holds no object.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The current epoch: every mutation stamps its chunk with it.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Starts a new epoch and returns the one that ended; a consumer that synced
    /// everything up to now later asks for [`chunks_changed_since`](Self::chunks_changed_since)
    /// that value plus one. It takes `&self`, so that several consumers (device mirrors,
    /// incremental snapshots) can each mark where they stand while the table is shared:
    /// only a mutation, which needs `&mut self`, stamps anything.
    pub fn advance_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::Relaxed)
    }

    /// The epoch of the last change to the slot table: an insert, a removal or a move
    /// (0 for a table whose slots never changed).
    pub fn slots_changed_epoch(&self) -> u64 {
        self.slots_changed
    }

    /// Records a change of the slot table in the current epoch.
    #[inline]
    pub(super) fn stamp_slots(&mut self) {
        self.slots_changed = *self.epoch.get_mut();
    }

    /// Indices of the chunks changed in or after `epoch`.
    pub fn chunks_changed_since(&self, epoch: u64) -> impl Iterator<Item = u32> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(move |(i, c)| c.as_ref().filter(|c| c.dirty >= epoch).map(|_| i as u32))
    }
}

/// Insertion, one object at a time.
impl<T> Table<T> {
    /// Inserts `value` at the lowest free place. Aborts through
    /// [`handle_alloc_error`] if the pool cannot give a new chunk, as `Vec` does; use
    /// [`try_insert`](Self::try_insert) to get the error instead.
    #[inline(always)]
    pub fn insert(&mut self, value: T) -> Handle<T> {
        match self.try_insert(value) {
            Ok(h) => h,
            Err(e) => handle_alloc_error(oom_layout(&e)),
        }
    }

    /// Inserts `value` at the lowest free place, or returns the pool's error (the value
    /// is dropped; the table keeps any chunk it took).
    #[inline(always)]
    pub fn try_insert(&mut self, value: T) -> Result<Handle<T>, Error> {
        match self.try_append(value) {
            Ok(h) => Ok(h),
            Err(value) => self.try_insert_anywhere(value),
        }
    }

    /// The insert of a table whose lowest free place is right after its objects and
    /// whose next slot is that place's home slot (a table filled in order): the same
    /// result as [`try_insert_anywhere`](Self::try_insert_anywhere), told from a few
    /// words instead of searched for. Gives `value` back when the table is not in that
    /// state or needs memory.
    #[inline(always)]
    fn try_append(&mut self, value: T) -> Result<Handle<T>, T> {
        let Ok(place) = u32::try_from(self.len) else {
            return Err(value);
        };
        let index = place.wrapping_add(1);
        let ci = (place >> self.shift) as usize;
        let pos = place & (self.per_chunk - 1);
        let lowest_non_full = self
            .non_full
            .get(self.non_full_floor)
            .map(|w| self.non_full_floor * 64 + w.trailing_zeros() as usize);
        if self.slots.len() != index as usize
            || lowest_non_full != Some(ci)
            || !self.slots.has_room_for_one()
        {
            return Err(value);
        }
        let epoch = *self.epoch.get_mut();
        let Some(Some(chunk)) = self.chunks.get_mut(ci) else {
            return Err(value);
        };
        chunk.try_put_lowest(pos, value, index)?;
        chunk.dirty = epoch;
        let full = chunk.live() == chunk.capacity();
        self.slots.push_home(place);
        self.len += 1;
        self.slots_changed = epoch;
        if full {
            self.set_non_full(ci, false);
        }
        Ok(Handle::from_bits(1 << 32 | u64::from(index)))
    }

    /// [`try_insert`](Self::try_insert) in any state: searches for the lowest free place.
    #[inline(never)]
    fn try_insert_anywhere(&mut self, value: T) -> Result<Handle<T>, Error> {
        let (ci, pos) = self.free_place()?;
        let epoch = self.epoch();
        self.put_new((ci << self.shift) | pos, value, epoch)
    }

    /// Puts `value` at the free `place` of a chunk the table holds, with a slot from
    /// [`take_slot`](Self::take_slot), stamping the chunk with `epoch`.
    fn put_new(&mut self, place: u32, value: T, epoch: u64) -> Result<Handle<T>, Error> {
        let Loc { chunk, pos } = self.unpack(place);
        let ci = chunk as usize;
        let h = self.take_slot(place)?;
        self.stamp_slots();
        let chunk = self.chunks[ci]
            .as_mut()
            .expect("a free place lies in a chunk the table holds");
        chunk.put(pos, value, h.index());
        chunk.dirty = epoch;
        if chunk.live() == chunk.capacity() {
            self.set_non_full(ci, false);
        }
        Ok(h)
    }

    /// Makes a slot live for an object at `place` and returns the object's handle. The
    /// slot is `place + 1` when that one is vacant or next to be made, so that the slot
    /// index names the place and a lookup can fetch the object without waiting for the
    /// slot (see [`object_ptr`](Self::object_ptr)); else the lowest vacant slot; else a
    /// new one.
    #[inline]
    fn take_slot(&mut self, place: u32) -> Result<Handle<T>, Error> {
        let matching = place as usize + 1;
        let next = self.slots.len().max(1);
        if matching == next || (matching > next && self.vacant_count() == 0) {
            // Appending: the new slot is `place + 1` or, when that one is further out,
            // the object is away from home.
            if matching != next {
                self.slots.list_places(&self.pool)?;
            }
            let index = self.slots.push(&self.pool, 1, place)?;
            self.len += 1;
            return Ok(Handle::from_bits(u64::from(1u32) << 32 | u64::from(index)));
        }
        let index = if self.slots.word(matching).is_some_and(|w| w & 1 == 0) {
            matching
        } else {
            // The object will be away from home: the slots need their place array.
            self.slots.list_places(&self.pool)?;
            match self.vacant.pop(&self.slots) {
                Some(index) => index as usize,
                None => self.slots.push(&self.pool, 1, place)? as usize,
            }
        };
        if !self.slots.is_live(index) {
            self.slots.occupy(index as u32, place);
        }
        self.len += 1;
        Ok(self.handle_at(index as u32))
    }

    /// Counts `count` more removals for a defragmentation policy; true (and the count
    /// starts again) once they reach the chunk slots, so that a policy looks at the
    /// table's fragmentation, O(chunks), once per about as many removals.
    pub(crate) fn tally_removals(&mut self, count: usize) -> bool {
        self.removals_unchecked += count;
        if self.removals_unchecked < self.chunk_slots().max(1) {
            return false;
        }
        self.removals_unchecked = 0;
        true
    }

    /// Whether the slots keep their place array (objects may be away from home).
    pub(crate) fn lists_places(&self) -> bool {
        self.slots.lists_places()
    }

    /// Writes at most `max_entries` more entries of the slots' place array; returns
    /// whether it is complete ([`SlotArray::list_places_step`]).
    pub(crate) fn list_places_step(&mut self, max_entries: usize) -> Result<bool, Error> {
        self.slots.list_places_step(&self.pool, max_entries)
    }

    /// Slots that are vacant (the sentinel not counted).
    #[inline]
    fn vacant_count(&self) -> usize {
        self.slots.len().saturating_sub(1) - self.len
    }

    /// The handle of the live slot `index`.
    #[inline]
    pub(super) fn handle_at(&self, index: u32) -> Handle<T> {
        handle_in(&self.slots, index)
    }

    pub(super) fn set_non_full(&mut self, ci: usize, non_full: bool) {
        if self.non_full.len() <= ci / 64 {
            grow_bits(&mut self.non_full, ci / 64 + 1);
        }
        if non_full {
            self.non_full[ci / 64] |= 1 << (ci % 64);
            self.non_full_floor = self.non_full_floor.min(ci / 64);
        } else {
            self.non_full[ci / 64] &= !(1 << (ci % 64));
        }
    }

    /// Makes a chunk at the lowest vacant chunk index and returns that index.
    fn add_chunk(&mut self) -> Result<usize, Error> {
        let floor = self.chunk_floor.min(self.chunks.len());
        let ci = self.chunks[floor..]
            .iter()
            .position(Option::is_none)
            .map_or(self.chunks.len(), |i| floor + i);
        self.make_chunk_at(ci)?;
        // Everything below `floor` held a chunk, and so does everything up to `ci` now.
        self.chunk_floor = ci + 1;
        Ok(ci)
    }
}

/// What the other modules of the table layer and the device mirror read.
impl<T> Table<T> {
    #[cfg(feature = "cuda")]
    /// This table's identity in the process: tables made separately never share one.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    #[cfg(feature = "cuda")]
    /// Places per chunk (a power of two): place `p` of the table is place
    /// `p % per_chunk` of chunk `p / per_chunk`, the packed form a slot holds.
    pub(crate) fn places_per_chunk(&self) -> u32 {
        self.per_chunk
    }

    #[cfg(feature = "cuda")]
    /// The slots, as the table keeps them.
    pub(crate) fn slot_array(&self) -> &SlotArray {
        &self.slots
    }

    #[cfg(feature = "cuda")]
    /// Chunk indices in use, vacant ones included: one more than the highest chunk.
    pub(crate) fn chunk_indices(&self) -> usize {
        self.chunks.len()
    }

    #[cfg(feature = "cuda")]
    /// The epoch of the last change to chunk `ci`; `None` for a vacant index.
    pub(crate) fn chunk_changed_epoch(&self, ci: usize) -> Option<u64> {
        self.chunks.get(ci)?.as_ref().map(|c| c.dirty)
    }

    #[cfg(feature = "cuda")]
    /// The first place of chunk `ci` (its places follow at `size_of::<T>()` strides);
    /// `None` for a vacant index. The pointer is for raw byte copies only: places that
    /// hold no object may hold uninitialised bytes.
    pub(crate) fn chunk_places_ptr(&self, ci: usize) -> Option<*const T> {
        self.chunks
            .get(ci)?
            .as_ref()
            .map(|c| c.place_ptr(0).cast_const())
    }

    #[cfg(feature = "cuda")]
    /// As [`chunk_places_ptr`](Self::chunk_places_ptr), for writing every place of chunk
    /// `ci` in place (device mirrors' downloads): stamps the chunk as changed. The caller
    /// may write any bytes only where `T` accepts any bytes (`T: Pod`).
    pub(crate) fn chunk_places_mut_ptr(&mut self, ci: usize) -> Option<*mut T> {
        let epoch = self.epoch();
        let c = self.chunks.get_mut(ci)?.as_mut()?;
        c.dirty = epoch;
        Some(c.place_ptr(0))
    }

    /// The slot value of a place; `Error::TableFull` past 2^32 places.
    #[inline]
    pub(super) fn pack(&self, loc: Loc) -> Result<u32, Error> {
        if u64::from(loc.chunk) >= 1u64 << (32 - self.shift) {
            return Err(Error::TableFull { places: 1u64 << 32 });
        }
        Ok((loc.chunk << self.shift) | loc.pos)
    }

    #[inline]
    pub(super) fn unpack(&self, place: u32) -> Loc {
        Loc {
            chunk: place >> self.shift,
            pos: place & (self.per_chunk - 1),
        }
    }

    /// The lowest free place, making a chunk if every chunk is full.
    #[inline]
    fn free_place(&mut self) -> Result<(u32, u32), Error> {
        let floor = self.non_full_floor.min(self.non_full.len());
        let found = self.non_full[floor..]
            .iter()
            .position(|w| *w != 0)
            .map(|w| floor + w);
        self.non_full_floor = found.unwrap_or(self.non_full.len());
        let ci = match found {
            Some(w) => w * 64 + self.non_full[w].trailing_zeros() as usize,
            None => self.add_chunk()?,
        };
        let pos = self.chunks[ci]
            .as_ref()
            .and_then(|c| c.first_free())
            .expect("a chunk marked non-full has a free place");
        Ok((ci as u32, pos))
    }
}

/// Lookups.
impl<T> Table<T> {
    /// The place of `h`'s object, if it is live. A handle's generation is read as odd
    /// (as [`Handle::from_bits`] makes it), so no vacant slot and no sentinel matches.
    #[inline]
    fn live_place(&self, h: Handle<T>) -> Option<u32> {
        let index = h.index() as usize;
        let word = self.slots.word(index)?;
        (word & !AWAY == home_word(h.generation())).then(|| self.slots.place(index))
    }

    /// The place and address of `h`'s object, if it is live.
    ///
    /// The object at place `p` usually has slot `p + 1` ([`take_slot`](Self::take_slot)),
    /// so the address is first computed from the handle alone and only checked against
    /// the slot: the CPU predicts the check and reads the object while the slot is still
    /// on its way, so a lookup in a large table costs about one cache miss instead of two
    /// in a row. The guess is passed through an empty `asm!` block so that the compiler
    /// cannot rewrite it in terms of the slot's place, which would make the read wait.
    #[inline]
    fn object_ptr(&self, h: Handle<T>) -> Option<(u32, NonNull<T>)> {
        let index = h.index();
        let word = self.slots.word(index as usize)?;
        let home = index.wrapping_sub(1);
        let guess = opaque(self.place_ptr(home));
        let want = home_word(h.generation());
        let (place, ptr) = if word == want {
            (home, guess)
        } else if word == want | AWAY {
            // Marked cold, so that the compiler keeps a branch: as a select it would
            // become a conditional move, whose result waits for the slot.
            cold_path();
            let place = self.slots.place(index as usize);
            (place, self.place_ptr(place))
        } else {
            return None;
        };
        // SAFETY: a live slot's place lies in a chunk the table holds, inside the span's
        // mapping (or is a zero-sized type's dangling address): never null.
        Some((place, unsafe { NonNull::new_unchecked(ptr) }))
    }

    /// The object `h` names, if it is live.
    #[inline]
    pub fn get(&self, h: Handle<T>) -> Option<&T> {
        let (_, ptr) = self.object_ptr(h)?;
        // SAFETY: a live slot names an occupied place of an existing chunk (module
        // invariant), which holds an initialised object; `&self` keeps it there.
        Some(unsafe { ptr.as_ref() })
    }

    /// The object `h` names, mutably, if it is live (stamps its chunk as changed).
    #[inline]
    pub fn get_mut(&mut self, h: Handle<T>) -> Option<&mut T> {
        let (place, mut ptr) = self.object_ptr(h)?;
        let epoch = self.epoch();
        if let Some(Some(c)) = self.chunks.get_mut((place >> self.shift) as usize) {
            c.dirty = epoch;
        }
        // SAFETY: as in `get`, with the exclusive borrow of the table.
        Some(unsafe { ptr.as_mut() })
    }

    /// Resolves a batch of handles, prefetching the objects before reading them so that
    /// their cache misses overlap. `None` for each stale or null handle.
    pub fn get_many(&self, handles: &[Handle<T>]) -> Vec<Option<&T>> {
        let mut out = Vec::with_capacity(handles.len());
        self.for_each_many(handles, |v| out.push(v));
        out
    }

    /// Calls `f` with the object of each handle in turn (`None` for a stale or null one),
    /// in a software pipeline: the slots of the next group of handles, and the places
    /// their indices name, are prefetched before the current group is resolved and handed
    /// to `f`, so that the cache misses of a whole group overlap.
    pub fn for_each_many<'a>(&'a self, handles: &[Handle<T>], mut f: impl FnMut(Option<&'a T>)) {
        const GROUP: usize = 16;
        let prefetch_group = |group: &[Handle<T>]| {
            for h in group {
                let index = h.index();
                if let Some(word) = self.slots.word_ptr(index as usize) {
                    prefetch(word);
                    prefetch(self.place_ptr(index.wrapping_sub(1)));
                }
            }
        };
        let mut groups = handles.chunks(GROUP).peekable();
        if let Some(first) = groups.peek() {
            prefetch_group(first);
        }
        while let Some(group) = groups.next() {
            if let Some(next) = groups.peek() {
                prefetch_group(next);
            }
            for h in group {
                // SAFETY: a live slot names an occupied place (module invariant), and
                // `&'a self` keeps the table unchanged while the references live.
                f(self.object_ptr(*h).map(|(_, p)| unsafe { p.as_ref() }));
            }
        }
    }

    /// Mutable references to `N` distinct live objects at once; `None` if any handle is
    /// stale or two name the same object. Stamps their chunks as changed.
    pub fn get_disjoint_mut<const N: usize>(
        &mut self,
        handles: [Handle<T>; N],
    ) -> Option<[&mut T; N]> {
        let mut places = [0u32; N];
        for (i, h) in handles.iter().enumerate() {
            places[i] = self.live_place(*h)?;
            if places[..i].contains(&places[i]) {
                return None;
            }
        }
        let epoch = self.epoch();
        for place in &places {
            if let Some(Some(c)) = self.chunks.get_mut((place >> self.shift) as usize) {
                c.dirty = epoch;
            }
        }
        Some(places.map(|place| {
            // SAFETY: every place is live (its slot resolved), so it holds an object; the
            // places are pairwise distinct (checked above), so the `&mut T`s are disjoint
            // (distinct places of a zero-sized type alias no bytes); the pointers come
            // from the span, not from references, and the table is borrowed exclusively
            // for as long as they live.
            unsafe { &mut *self.place_ptr(place) }
        }))
    }
}

/// Insertion of many objects at once.
impl<T> Table<T> {
    /// Inserts every value, placing them contiguously after the highest occupied place
    /// (taking new chunks as needed), and returns their handles in order. Aborts through
    /// [`handle_alloc_error`] if the pool cannot give a chunk, as `Vec` does;
    /// [`try_insert_batch`](Self::try_insert_batch) returns the error instead.
    pub fn insert_batch(&mut self, values: impl IntoIterator<Item = T>) -> Vec<Handle<T>> {
        match self.try_insert_batch(values) {
            Ok(hs) => hs,
            Err(e) => handle_alloc_error(oom_layout(&e)),
        }
    }

    /// As [`insert_batch`](Self::insert_batch), returning the pool's error instead of
    /// aborting. On error the objects of this call that were inserted are removed again
    /// (and dropped with the rest of `values`), so the table holds what it held before.
    ///
    /// ```
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<u32> = Table::new();
    /// let hs = t.try_insert_batch(0..1000)?;
    /// assert_eq!((t.len(), t.get(hs[999])), (1000, Some(&999)));
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn try_insert_batch(
        &mut self,
        values: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Handle<T>>, Error> {
        let mut out: Vec<Handle<T>> = Vec::new();
        self.try_extend_after_top(0, values, |h| out.push(h))?;
        Ok(out)
    }

    /// Inserts every value after the highest occupied place, and at `min_place` or
    /// later, in order, calling `made` with each handle; returns the place of the first
    /// and how many. On error the objects of this call are removed again (the rest of
    /// `values` is dropped), so the table holds what it held before.
    pub(crate) fn try_extend_after_top(
        &mut self,
        min_place: u64,
        values: impl IntoIterator<Item = T>,
        mut made: impl FnMut(Handle<T>),
    ) -> Result<(u64, usize), Error> {
        let first = self
            .highest_occupied()
            .map_or(0, |loc| self.global_place(loc) + 1)
            .max(min_place);
        let values = values.into_iter();
        self.prefault_places(first, values.size_hint().0)?;
        let epoch = self.epoch();
        let mut count = 0usize;
        for (place, value) in (first..).zip(values) {
            match self.put_after_top(place, value, epoch) {
                Ok(h) => {
                    made(h);
                    count += 1;
                }
                Err(e) => {
                    for p in first..place {
                        if let Some(h) = self.handle_at_place(p) {
                            drop(self.remove(h));
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok((first, count))
    }

    /// Makes the chunks of the `count` free places from `first` and has their memory
    /// faulted in on every thread, when it is large: the sequential puts that follow then
    /// write into pages the OS has given already. For fresh memory the kernel's zeroing
    /// (and, under a hypervisor, the host's faults) costs more than the writes, and it
    /// runs in parallel. On error the chunks made here are freed again.
    fn prefault_places(&mut self, first: u64, count: usize) -> Result<(), Error> {
        let size = size_of::<T>();
        if size == 0 || count.saturating_mul(size) < PREFAULT_FROM_BYTES {
            return Ok(());
        }
        let end = first.saturating_add(count as u64).min(1 << 32);
        let mut made = Vec::new();
        for ci in (first >> self.shift)..=((end - 1) >> self.shift) {
            let ci = ci as usize;
            if self.chunks.get(ci).is_none_or(Option::is_none) {
                if let Err(e) = self.make_chunk_at(ci) {
                    made.into_iter().for_each(|ci| self.free_chunk(ci));
                    return Err(e);
                }
                made.push(ci);
            }
        }
        self.populate_places(first, end);
        Ok(())
    }

    /// Has the memory of places `first..end`, whose chunks exist, faulted in on every
    /// thread (a huge page per task).
    pub(super) fn populate_places(&self, first: u64, end: u64) {
        let size = size_of::<T>();
        populate_in_parallel(&self.objects, first as usize * size, end as usize * size);
    }

    /// Puts `value` at the free global place `place` (making its chunk if needed).
    fn put_after_top(&mut self, place: u64, value: T, epoch: u64) -> Result<Handle<T>, Error> {
        let place = u32::try_from(place).map_err(|_| Error::TableFull { places: 1u64 << 32 })?;
        let ci = self.unpack(place).chunk as usize;
        if self.chunks.get(ci).is_none_or(Option::is_none) {
            self.make_chunk_at(ci)?;
        }
        self.put_new(place, value, epoch)
    }
}

/// Where an object is, and removal.
impl<T> Table<T> {
    /// Where `h`'s object lives, if it is live.
    pub fn location(&self, h: Handle<T>) -> Option<Loc> {
        self.live_place(h).map(|p| self.unpack(p))
    }

    /// True when `h` names a live object.
    #[inline]
    pub fn contains(&self, h: Handle<T>) -> bool {
        self.live_place(h).is_some()
    }

    /// Removes and returns the object `h` names. A stale or null handle returns `None`
    /// and changes nothing. O(1): the slot becomes vacant and the place free.
    #[inline]
    pub fn remove(&mut self, h: Handle<T>) -> Option<T> {
        // A removal is bound by the cache misses on the slot and the object; the less
        // else it touches and stores, the more removals the CPU keeps in flight at once.
        // The common case (a chunk neither full before nor empty after, a slot group
        // already marked as holding vacant slots) takes no call and stamps epochs only
        // when they change; the rest is in `remove_at_edge`.
        let (place, ptr) = self.object_ptr(h)?;
        // The object is read first: its cache miss then overlaps the bookkeeping below.
        // SAFETY: the slot was live, so its place held an initialised object; the place
        // is marked free below on every path, so the object is moved out exactly once
        // (and leaked, not dropped twice, should the bookkeeping unwind).
        let value = ManuallyDrop::new(unsafe { ptr.as_ptr().read() });
        let loc = self.unpack(place);
        // Unchecked: in a standalone loop of 1M shuffled removals this measured 1.71-1.86x
        // SlotMap's time against 1.82-2.02x with the checked lookup (7 interleaved runs).
        // SAFETY: a live slot names a place of a chunk the table holds (module invariant).
        let chunk = unsafe {
            self.chunks
                .get_unchecked_mut(loc.chunk as usize)
                .as_mut()
                .unwrap_unchecked()
        };
        let live_before = chunk.live();
        if live_before == chunk.capacity() || live_before == 1 || !self.vacant.covers(h.index()) {
            self.remove_at_edge(h, loc);
            return Some(ManuallyDrop::into_inner(value));
        }
        let epoch = *self.epoch.get_mut();
        chunk.forget(loc.pos);
        if chunk.dirty != epoch {
            chunk.dirty = epoch;
        }
        self.release_slot(h, epoch);
        Some(ManuallyDrop::into_inner(value))
    }

    /// Vacates the live slot of `h` (whose generation is the slot's) after its object was
    /// taken out; the caller has its group marked in the vacant-slot bitmaps.
    #[inline(always)]
    fn release_slot(&mut self, h: Handle<T>, epoch: u64) {
        self.slots.vacate_from(h.index(), home_word(h.generation()));
        self.len -= 1;
        if self.slots_changed != epoch {
            self.slots_changed = epoch;
        }
    }

    /// The bookkeeping of a [`remove`](Self::remove) that took the object out of `loc`,
    /// whose chunk was full or is left empty, or whose slot's group is not yet marked as
    /// holding vacant slots: frees the place and the slot.
    #[cold]
    #[inline(never)]
    fn remove_at_edge(&mut self, h: Handle<T>, loc: Loc) {
        let epoch = *self.epoch.get_mut();
        let chunk = self.chunks[loc.chunk as usize]
            .as_mut()
            .expect("a live slot names a live chunk");
        let was_full = chunk.live() == chunk.capacity();
        chunk.forget(loc.pos);
        chunk.dirty = epoch;
        let empty = chunk.live() == 0;
        self.vacant.push(h.index());
        self.release_slot(h, epoch);
        if was_full {
            self.set_non_full(loc.chunk as usize, true);
        }
        if empty {
            self.keep_emptied_chunk(loc.chunk);
        }
    }

    /// Keeps the chunk just emptied for reuse and gives the one kept before back to the
    /// pool if it is still empty: at most one empty chunk stays, in O(1). A table of
    /// short-lived objects ([`Lifetime::Short`]) keeps every emptied chunk, committed, for
    /// the objects that come next; [`defragment`](Self::defragment) gives them back.
    pub(super) fn keep_emptied_chunk(&mut self, ci: u32) {
        if self.hints.lifetime == Some(Lifetime::Short) {
            return;
        }
        if let Some(old) = self.spare.replace(ci)
            && old != ci
            && self
                .chunks
                .get(old as usize)
                .is_some_and(|c| c.as_ref().is_some_and(|c| c.live() == 0))
        {
            self.free_chunk(old as usize);
        }
    }
}

/// The whole table: parallel iteration, retain, clear, figures.
impl<T> Table<T> {
    /// Every live object with its handle, in parallel over chunks (rayon).
    pub fn par_iter(&self) -> impl ParallelIterator<Item = (Handle<T>, &T)> + '_
    where
        T: Sync,
    {
        let slots = &self.slots;
        self.chunks.par_iter().flatten().flat_map_iter(move |c| {
            c.occupied_places().map(move |pos| {
                // SAFETY: the place is occupied (from the bitmap), so it holds an object.
                (handle_in(slots, c.owner(pos)), unsafe {
                    c.get_unchecked(pos)
                })
            })
        })
    }

    /// Every live object with its handle, mutably, in parallel over chunks (rayon).
    /// Stamps every chunk as changed.
    pub fn par_iter_mut(&mut self) -> impl ParallelIterator<Item = (Handle<T>, &mut T)> + '_
    where
        T: Send + Sync,
    {
        let epoch = self.epoch();
        let slots = &self.slots;
        self.chunks
            .par_iter_mut()
            .flatten()
            .flat_map_iter(move |c| {
                c.dirty = epoch;
                let c: &Chunk<T> = c;
                c.occupied_places().map(move |pos| {
                    // SAFETY: as in `iter_mut`: each occupied place of this chunk is visited
                    // once by this one task, so the `&mut T`s are disjoint across all tasks.
                    (handle_in(slots, c.owner(pos)), unsafe {
                        &mut *c.place_ptr(pos)
                    })
                })
            })
    }

    /// Keeps the objects for which `keep` returns true, dropping the others.
    pub fn retain(&mut self, mut keep: impl FnMut(Handle<T>, &mut T) -> bool) {
        let doomed: Vec<Handle<T>> = self
            .iter_mut()
            .filter_map(|(h, v)| (!keep(h, v)).then_some(h))
            .collect();
        for h in doomed {
            drop(self.remove(h));
        }
    }

    /// Drops every object and returns every chunk to the pool. Handles given out before
    /// stay stale forever.
    pub fn clear(&mut self) {
        // Every live slot becomes vacant.
        for index in 1..self.slots.len() as u32 {
            if self.slots.is_live(index as usize) {
                self.slots.vacate(index);
                self.vacant.push(index);
            }
        }
        self.len = 0;
        self.stamp_slots();
        self.non_full.clear();
        self.non_full_floor = 0;
        self.chunk_floor = 0;
        self.spare = None;
        for c in self.chunks.drain(..).flatten() {
            c.drop_objects();
        }
        // SAFETY: every object was dropped and every chunk forgotten: nothing refers to
        // the places any more.
        unsafe { self.objects.release(&self.pool) };
    }

    /// The table's figures.
    pub fn stats(&self) -> TableStats {
        let live = self.len();
        let chunks = self.chunks.iter().flatten().count();
        // Holes: free places before the highest occupied place, in chunks that exist.
        let holes = match self.highest_occupied() {
            None => 0,
            Some(Loc {
                chunk: last_chunk,
                pos: last_pos,
            }) => self.chunks[..=last_chunk as usize]
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
                .map(|(i, c)| {
                    let span = if i == last_chunk as usize {
                        last_pos + 1
                    } else {
                        c.capacity()
                    };
                    (span - c.live()) as usize
                })
                .sum(),
        };
        TableStats {
            live,
            capacity: chunks * self.per_chunk as usize,
            chunks,
            bytes_reserved: chunks * self.chunk_bytes(),
            metadata_bytes: self.slots.committed()
                + self.vacant.bytes()
                + self
                    .chunks
                    .iter()
                    .flatten()
                    .map(Chunk::metadata_bytes)
                    .sum::<usize>()
                + self.chunks.capacity() * std::mem::size_of::<Option<Chunk<T>>>(),
            slot_bytes: self.slots.committed(),
            holes,
            fragmentation: if live + holes == 0 {
                0.0
            } else {
                holes as f64 / (live + holes) as f64
            },
            kind: self.hints.kind,
            lifetime: self.hints.lifetime,
        }
    }
}

/// The handle of live slot `index` of `slots`.
#[inline]
pub(super) fn handle_in<T>(slots: &SlotArray, index: u32) -> Handle<T> {
    let version = slots.version(index as usize);
    Handle::from_bits(u64::from(version) << 32 | u64::from(index))
}

/// Makes `bits` hold `words` words, new ones zero (off the hot paths that call it).
#[cold]
#[inline(never)]
fn grow_bits(bits: &mut Vec<u64>, words: usize) {
    bits.resize(words, 0);
}

/// Tells the compiler that the path calling it is rarely taken.
#[cold]
#[inline(always)]
fn cold_path() {}

/// `ptr`, hidden from the optimiser: it cannot tell that the value equals any other
/// expression, so it keeps computing it the way the source does.
#[inline(always)]
fn opaque<T>(ptr: *mut T) -> *mut T {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let mut ptr = ptr;
        // SAFETY: the block is empty: it reads and writes no memory, touches no flags and
        // leaves the register as it was; it only makes the value opaque to the compiler.
        // The pointer is passed as a number: nothing behind it is read or written.
        #[allow(clippy::pointers_in_nomem_asm_block)]
        unsafe {
            std::arch::asm!("/* {0} */", inout(reg) ptr, options(pure, nomem, nostack, preserves_flags));
        }
        ptr
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    ptr
}

/// Hints the CPU to bring the object at `ptr` into cache (no effect where unsupported).
#[inline]
fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint that never faults, whatever the address; SSE is part
    // of the x86-64 baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(ptr.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// The layout an allocation failure is reported with when a table aborts.
fn oom_layout(e: &Error) -> std::alloc::Layout {
    let (size, align) = match e {
        Error::OutOfMemory {
            requested, align, ..
        } => (*requested, *align),
        _ => (usize::MAX >> 1, 1),
    };
    std::alloc::Layout::from_size_align(size.min(isize::MAX as usize), align.max(1))
        .unwrap_or(std::alloc::Layout::new::<u8>())
}

/// Moving objects: the primitives the defragmentation layer (`crate::defrag`) builds on.
///
/// A move is `Chunk::take` then `Chunk::put`: a Rust move of the value (a bitwise copy
/// after which the source place counts as free and is never read or dropped), the owner
/// handle travels with it and the owner's slot is rewritten to the new place. Handles
/// therefore never change, and no object is dropped or duplicated.
impl<T> Table<T> {
    /// Bumped by every pass that moves objects: a [`Loc`] read before a bump may be out
    /// of date after it. Handles are never affected.
    pub fn layout_version(&self) -> u64 {
        self.layout_version
    }

    /// One more than the largest slot index a handle of this table can have: the size of
    /// a per-slot side table (the collector's mark bits).
    pub(crate) fn slot_bound(&self) -> usize {
        self.slots.len().max(1)
    }

    /// The owners of the occupied places from global place `start` on, in storage order,
    /// until `max` are in `out`. Returns the place to go on from, or `None` when every
    /// place has been looked at.
    pub(crate) fn owners_from(
        &self,
        start: u64,
        max: usize,
        out: &mut Vec<Handle<T>>,
    ) -> Option<u64> {
        let first = self.loc_of_global(start);
        for ci in first.chunk as usize..self.chunks.len() {
            let Some(c) = &self.chunks[ci] else { continue };
            let from = if ci == first.chunk as usize {
                first.pos
            } else {
                0
            };
            for pos in c.occupied_places().skip_while(|p| *p < from) {
                if out.len() == max {
                    return Some(self.global_place(Loc {
                        chunk: ci as u32,
                        pos,
                    }));
                }
                out.push(self.handle_at(c.owner(pos)));
            }
        }
        None
    }

    /// Chunk indices in use or free below the last chunk.
    pub fn chunk_slots(&self) -> usize {
        self.chunks.len()
    }

    /// The place number of `loc` in storage order (`chunk * chunk_capacity + pos`).
    #[inline]
    pub(crate) fn global_place(&self, loc: Loc) -> u64 {
        (u64::from(loc.chunk) << self.shift) | u64::from(loc.pos)
    }

    #[inline]
    pub(super) fn loc_of_global(&self, g: u64) -> Loc {
        Loc {
            chunk: (g >> self.shift) as u32,
            pos: (g & u64::from(self.per_chunk - 1)) as u32,
        }
    }

    /// The highest occupied place strictly below `below` in storage order.
    fn highest_occupied_below(&self, below: Loc) -> Option<Loc> {
        let mut ci = below.chunk as usize;
        let mut limit = below.pos;
        loop {
            if let Some(Some(c)) = self.chunks.get(ci)
                && c.live() > 0
                && let Some(pos) = c.last_occupied_below(limit)
            {
                return Some(Loc {
                    chunk: ci as u32,
                    pos,
                });
            }
            ci = ci.checked_sub(1)?;
            limit = self.per_chunk;
        }
    }

    /// The place just past the highest occupied one, as a `Loc` bound for
    /// [`highest_occupied_below`](Self::highest_occupied_below).
    fn end_of_storage(&self) -> Loc {
        Loc {
            chunk: self.chunks.len() as u32,
            pos: 0,
        }
    }

    /// Fills the lowest holes with the highest objects, at most `max_moves` of them.
    /// Returns the moves made and whether no hole is left below the highest object.
    ///
    /// Two cursors walk the occupancy bitmaps a word at a time: one up over the holes, one
    /// down over the objects. The free places of the hole word are paired with the taken
    /// places of the object word (lowest hole with highest object, while the hole is the
    /// lower), and each group moves at once: the objects are read out of their word, then
    /// written into the holes, and the bitmap words, counts and chunk marks change once
    /// per group; then the owners' slots are rewritten. Each cursor keeps a copy of its
    /// word, which stays right: a move fills a hole below every object still to move (the
    /// object cursor never needs to see it) and frees a place above every hole still to
    /// fill (the hole cursor never needs to see it either).
    pub(crate) fn fill_holes_from_top(&mut self, max_moves: usize) -> (usize, bool) {
        if self.slots.list_places(&self.pool).is_err() {
            // Moved objects need the place array and there is no memory for it: nothing
            // moves, and the pass counts as done so that a loop of steps ends.
            return (0, true);
        }
        let mut holes = HoleCursor::default();
        let mut objects = ObjectCursor::from_top(self);
        let mut carried: Vec<(T, u32)> = Vec::with_capacity(64);
        let mut moved = 0;
        loop {
            if !holes.fill(self) || !objects.fill(self) {
                return (moved, true);
            }
            let (hole_base, object_base) = (holes.base(self.shift), objects.base(self.shift));
            let (mut free, mut taken) = (holes.bits, objects.bits);
            let (mut fill, mut take) = (0u64, 0u64);
            let mut crossed = false;
            while free != 0 && taken != 0 && moved < max_moves {
                let (h, o) = (free.trailing_zeros(), 63 - taken.leading_zeros());
                if hole_base + u64::from(h) >= object_base + u64::from(o) {
                    crossed = true;
                    break;
                }
                fill |= 1 << h;
                take |= 1 << o;
                free &= free - 1;
                taken &= !(1 << o);
                moved += 1;
            }
            if take != 0 {
                if moved == take.count_ones() as usize {
                    self.layout_version += 1;
                }
                self.move_word(&objects, take, &holes, fill, &mut carried);
                holes.bits = free;
                objects.bits = taken;
            }
            if crossed {
                return (moved, true);
            }
            if moved == max_moves {
                // Is a pair left? The words still hold unpaired bits, or the next ones do.
                let more = (holes.bits != 0 || holes.fill(self))
                    && (objects.bits != 0 || objects.fill(self))
                    && holes.base(self.shift) + u64::from(holes.bits.trailing_zeros())
                        < objects.base(self.shift) + u64::from(63 - objects.bits.leading_zeros());
                return (moved, !more);
            }
        }
    }

    /// Moves the objects of the places `take` names in the object cursor's word into the
    /// places `fill` names in the hole cursor's word (as many), and rewrites their slots.
    fn move_word(
        &mut self,
        objects: &ObjectCursor,
        take: u64,
        holes: &HoleCursor,
        fill: u64,
        carried: &mut Vec<(T, u32)>,
    ) {
        let epoch = self.epoch();
        self.stamp_slots();
        // Both ends are checked before any object leaves its place (`put_word` checks its
        // end again, after the take, when a failure would strand the carried objects).
        let holes_free = self.chunks[holes.chunk].as_ref().is_some_and(|c| {
            holes.word < c.bitmap_words() && c.free_word(holes.word) & fill == fill
        });
        assert!(
            holes_free && take.count_ones() == fill.count_ones(),
            "a defragmentation group names places that are not free"
        );
        let source = self.chunks[objects.chunk]
            .as_mut()
            .expect("the object cursor is in an existing chunk");
        source.take_word(objects.word, take, carried);
        source.dirty = epoch;
        self.set_non_full(objects.chunk, true);
        let target = self.chunks[holes.chunk]
            .as_mut()
            .expect("the hole cursor is in an existing chunk");
        target.put_word(holes.word, fill, carried);
        target.dirty = epoch;
        let full = target.live() == target.capacity();
        let target = self.chunks[holes.chunk].as_ref().expect("just used");
        let mut bits = fill;
        while bits != 0 {
            let pos = 64 * holes.word as u32 + bits.trailing_zeros();
            bits &= bits - 1;
            let place = Loc {
                chunk: holes.chunk as u32,
                pos,
            };
            let packed = self.pack(place).expect("an existing chunk's place packs");
            self.slots.set_place(target.owner(pos), packed);
        }
        if full {
            self.set_non_full(holes.chunk, false);
        }
    }

    /// Returns every empty chunk to the pool (none is kept for reuse) and returns how many.
    pub(crate) fn release_all_empty_chunks(&mut self) -> usize {
        let empty: Vec<usize> = (0..self.chunks.len())
            .filter(|&i| self.chunks[i].as_ref().is_some_and(|c| c.live() == 0))
            .collect();
        for &i in &empty {
            self.free_chunk(i);
        }
        empty.len()
    }

    /// Every object with its place, in storage order.
    pub(crate) fn objects_with_locs(&self) -> impl Iterator<Item = (Loc, &T)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(ci, c)| {
            c.iter().flat_map(move |c| {
                c.occupied_places().map(move |pos| {
                    let loc = Loc {
                        chunk: ci as u32,
                        pos,
                    };
                    (loc, c.get(pos).expect("occupied places hold objects"))
                })
            })
        })
    }

    /// `(live, capacity)` of each chunk index, `None` where no chunk is held.
    pub(crate) fn chunk_occupancy(&self) -> impl Iterator<Item = Option<(u32, u32)>> + '_ {
        self.chunks
            .iter()
            .map(|c| c.as_ref().map(|c| (c.live(), c.capacity())))
    }

    /// The highest occupied place.
    pub(crate) fn highest_occupied(&self) -> Option<Loc> {
        self.highest_occupied_below(self.end_of_storage())
    }

    /// Moves the object at `order[k]` to storage place `k` for every `k`, so that the
    /// objects end up dense, in that order. `order` must list every object's place exactly
    /// once. Chunks missing below `order.len()` are taken from the pool first; if that
    /// fails nothing has moved. Returns the number of objects that changed place.
    pub(crate) fn permute(&mut self, order: &[Loc]) -> Result<usize, Error> {
        assert_eq!(order.len(), self.len(), "permute lists every object once");
        self.slots.list_places(&self.pool)?;
        let chunks_needed = (order.len() as u64).div_ceil(u64::from(self.per_chunk)) as usize;
        while self.chunks.len() < chunks_needed {
            self.chunks.push(None);
        }
        for ci in 0..chunks_needed {
            if self.chunks[ci].is_none() {
                self.make_chunk_at(ci)?;
            }
        }
        self.layout_version += 1;
        let places = (self.chunks.len() as u64) << self.shift;
        // dest[g]: where the object now at global place g goes; u32::MAX for none.
        let mut dest = vec![u32::MAX; places as usize];
        for (k, &loc) in order.iter().enumerate() {
            let g = self.global_place(loc) as usize;
            assert_eq!(dest[g], u32::MAX, "permute lists a place twice");
            dest[g] = k as u32;
        }
        let mut settled = vec![false; places as usize];
        let mut moved = 0;
        for &start in order {
            let g0 = self.global_place(start) as usize;
            if settled[g0] || !self.is_occupied_at(start) {
                continue; // holds its final object, or its object already left
            }
            if dest[g0] as usize == g0 {
                settled[g0] = true;
                continue;
            }
            moved += self.carry_chain(start, &dest, &mut settled);
        }
        for ci in 0..self.chunks.len() {
            let non_full = self.chunks[ci]
                .as_ref()
                .is_some_and(|c| c.live() < c.capacity());
            self.set_non_full(ci, non_full);
        }
        Ok(moved)
    }

    /// Follows one chain of `permute`'s moves from `start`: carries its object to its
    /// destination, picks up whoever waits there, and so on until a free place ends the
    /// chain. How many objects moved.
    fn carry_chain(&mut self, start: Loc, dest: &[u32], settled: &mut [bool]) -> usize {
        let (mut value, mut owner) = self.take_at(start);
        let mut d = dest[self.global_place(start) as usize] as usize;
        let mut moved = 0;
        loop {
            let to = self.loc_of_global(d as u64);
            let displaced = if self.is_occupied_at(to) {
                Some(self.take_at(to))
            } else {
                None
            };
            self.put_at(to, value, owner);
            settled[d] = true;
            moved += 1;
            match displaced {
                Some((v, o)) => {
                    value = v;
                    owner = o;
                    d = dest[d] as usize;
                }
                None => return moved,
            }
        }
    }

    fn is_occupied_at(&self, loc: Loc) -> bool {
        self.chunks[loc.chunk as usize]
            .as_ref()
            .is_some_and(|c| c.is_occupied(loc.pos))
    }

    /// Takes the object at `loc` out with its owner (its slot still names `loc` until
    /// `put_at` rewrites it).
    fn take_at(&mut self, loc: Loc) -> (T, u32) {
        let epoch = self.epoch();
        let c = self.chunks[loc.chunk as usize]
            .as_mut()
            .expect("existing chunk");
        let owner = c.owner(loc.pos);
        c.dirty = epoch;
        (c.take(loc.pos), owner)
    }

    /// Puts `value` at the free place `loc` and points its owner's slot there.
    fn put_at(&mut self, loc: Loc, value: T, owner: u32) {
        let packed = self.pack(loc).expect("an existing chunk's place packs");
        self.stamp_slots();
        let epoch = self.epoch();
        let c = self.chunks[loc.chunk as usize]
            .as_mut()
            .expect("existing chunk");
        c.put(loc.pos, value, owner);
        c.dirty = epoch;
        self.slots.set_place(owner, packed);
    }

    /// Calls `f` with each run of objects at consecutive occupied places within
    /// `start..start + len` (places past the table's chunks hold none), in storage order,
    /// each run as one slice: a caller's loop over a run's objects is its own, inlined.
    #[inline]
    pub(crate) fn for_each_run_in_places<'a>(
        &'a self,
        start: u64,
        len: u64,
        mut f: impl FnMut(&'a [T]),
    ) {
        let mut g = start;
        let end = start.saturating_add(len);
        while g < end {
            let loc = self.loc_of_global(g);
            let in_chunk = (u64::from(self.per_chunk - loc.pos)).min(end - g) as u32;
            if let Some(Some(c)) = self.chunks.get(loc.chunk as usize) {
                c.for_each_occupied_run_in(loc.pos, loc.pos + in_chunk, &mut f);
            }
            g += u64::from(in_chunk);
        }
    }
}

impl<T> Drop for Table<T> {
    /// Drops every object and returns every chunk to the pool. Unlike
    /// [`clear`](Table::clear) it keeps no free list for later inserts: a 32M-object
    /// table of a type without drop glue goes in the time it takes to free its chunks.
    fn drop(&mut self) {
        for c in self.chunks.drain(..).flatten() {
            c.drop_objects();
        }
        // SAFETY: every object was dropped and every chunk forgotten above.
        unsafe { self.objects.release(&self.pool) };
        self.slots.release(&self.pool);
    }
}

/// Walks the free places of a table's existing chunks upward, a bitmap word at a time
/// (the word's free bits are copied when the cursor enters it).
#[derive(Default)]
struct HoleCursor {
    /// The chunk of the current word.
    chunk: usize,
    /// The current word in that chunk.
    word: usize,
    /// Whether `word` has been read (not yet, when the cursor has just come to a chunk).
    entered: bool,
    /// Free places of the current word not yet paired.
    bits: u64,
}

/// Global place of bit 0 of bitmap word `word` of chunk `chunk`.
fn word_base(chunk: usize, word: usize, shift: u32) -> u64 {
    ((chunk as u64) << shift) + 64 * word as u64
}

impl HoleCursor {
    /// Global place of bit 0 of the current word.
    fn base(&self, shift: u32) -> u64 {
        word_base(self.chunk, self.word, shift)
    }

    /// Moves on until the current word has a free place not yet paired; false when none
    /// is left.
    fn fill<T>(&mut self, table: &Table<T>) -> bool {
        while self.bits == 0 {
            if self.entered {
                self.word += 1;
            }
            self.entered = true;
            match table.chunks.get(self.chunk) {
                None => return false,
                Some(Some(c)) if self.word < c.bitmap_words() && c.live() < c.capacity() => {
                    self.bits = c.free_word(self.word);
                }
                Some(_) => {
                    self.chunk += 1;
                    self.word = 0;
                    self.entered = false;
                }
            }
        }
        true
    }
}

/// Walks the occupied places of a table downward from its top, a bitmap word at a time
/// (the word's bits are copied when the cursor enters it).
struct ObjectCursor {
    /// The chunk of the current word (one past the last chunk before the first word).
    chunk: usize,
    /// The current word in that chunk; the words below it are still to read.
    word: usize,
    /// Taken places of the current word not yet paired.
    bits: u64,
}

impl ObjectCursor {
    fn from_top<T>(table: &Table<T>) -> Self {
        ObjectCursor {
            chunk: table.chunks.len(),
            word: 0,
            bits: 0,
        }
    }

    /// Global place of bit 0 of the current word.
    fn base(&self, shift: u32) -> u64 {
        word_base(self.chunk, self.word, shift)
    }

    /// Moves on until the current word has an object not yet paired; false when none is
    /// left.
    fn fill<T>(&mut self, table: &Table<T>) -> bool {
        while self.bits == 0 {
            while self.word == 0 {
                if self.chunk == 0 {
                    return false;
                }
                self.chunk -= 1;
                if let Some(Some(c)) = table.chunks.get(self.chunk)
                    && c.live() > 0
                {
                    self.word = c.bitmap_words();
                }
            }
            self.word -= 1;
            self.bits = match table.chunks.get(self.chunk) {
                Some(Some(c)) => c.occupied_word(self.word),
                _ => 0,
            };
        }
        true
    }
}
