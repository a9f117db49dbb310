//! The small tier: one fixed-size pool per size class.
//!
//! Each class cuts its blocks from chunks: regions of a whole number of 64 KiB granules,
//! each registered in the [page map](super::page_map) with its [`ChunkMeta`]. A chunk
//! keeps a bitmap of its free blocks outside the blocks themselves, so the pool never
//! reads or writes a block's memory: handing out and taking back blocks touches only the
//! bitmaps (a few cache lines per chunk), and blocks come out of a chunk in address order.
//!
//! Shared state per class (the chunk lists and a transfer cache) sits behind one mutex.
//! The common path does not touch it: per-thread caches ([`super::thread_cache`]) are
//! arrays of block pointers that take and give back blocks in batches. A batch a cache
//! gives back goes into the class's transfer cache and comes out whole at the next refill,
//! so blocks that travel between threads (one allocates, another frees) cost a copy of
//! pointers, not a bitmap update each; when the transfer cache is full, blocks go back to
//! their chunks' bitmaps.
//!
//! Invariants, under the class lock:
//! - every chunk is on exactly one list: partial iff `0 < available < capacity`, empty
//!   iff `available == capacity`, full iff `available == 0`, or decommitted (its pages
//!   given back to the OS, its mapping kept for reuse, not counted as reserved);
//! - `available` is the number of set bits of the chunk's bitmap, all below `capacity`,
//!   and every word before `cursor` is zero;
//! - a block's bit is clear iff the block is handed out: to a caller, a thread cache or
//!   the transfer cache (`outstanding` counts them);
//! - empty chunks beyond `retain_empty` are decommitted (checked mode: unmapped, so that
//!   a use after free faults).

use std::alloc::System;
use std::ptr::{self, NonNull};

use allocator_api2::boxed::Box as SysBox;
use allocator_api2::vec::Vec as SysVec;

use super::budget::Budget;
use super::config::{MAX_SMALL_CLASSES, ResolvedConfig};
use super::intrusive::unlink_node;
use super::numa::NumaBinding;
use super::os::{self, GRANULE};
use super::page_map::{self, RegionHeader, RegionKind};
use super::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, lock};
use crate::error::{Error, OomReason};

/// Blocks a class's transfer cache holds before blocks go back to their chunks.
const TRANSFER_BLOCKS: usize = 512;

/// Byte written over freed blocks in checked mode.
pub(crate) const POISON: u8 = 0xDD;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ListId {
    None,
    Partial,
    Empty,
    Full,
    /// Given back to the OS (its pages decommitted) but still mapped, for cheap reuse.
    Decommitted,
}

/// Metadata of one chunk; starts with the region header the page map points to.
#[repr(C)]
pub(crate) struct ChunkMeta {
    header: RegionHeader,
    class: usize,
    /// Bit `i` set: block `i` is free.
    free_bits: SysVec<u64, System>,
    available: u32,
    capacity: u32,
    /// Words before this one are all zero.
    cursor: u32,
    list: ListId,
    next: *mut ChunkMeta,
    prev: *mut ChunkMeta,
}

impl ChunkMeta {
    fn reset_bits(&mut self) {
        let cap = self.capacity as usize;
        for (w, word) in self.free_bits.iter_mut().enumerate() {
            let bits = (cap - w * 64).min(64);
            *word = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
        }
        self.available = self.capacity;
        self.cursor = 0;
    }
}

#[derive(Default)]
struct ChunkList {
    head: *mut ChunkMeta,
    len: usize,
}

impl ChunkList {
    /// # Safety
    /// `c` is a live chunk of this class, on no list; the class lock is held.
    unsafe fn push(&mut self, c: *mut ChunkMeta, id: ListId) {
        // SAFETY: the caller guarantees `c` and the head (if any) are live chunks under our lock.
        unsafe {
            (*c).next = self.head;
            (*c).prev = ptr::null_mut();
            (*c).list = id;
            if let Some(h) = self.head.as_mut() {
                h.prev = c;
            }
        }
        self.head = c;
        self.len += 1;
    }

    /// # Safety
    /// `c` is a live chunk on this list; the class lock is held.
    unsafe fn unlink(&mut self, c: *mut ChunkMeta) {
        // SAFETY: the caller guarantees `c` and its neighbours are live chunks on this list.
        unsafe {
            unlink_node!(self.head, c);
            (*c).list = ListId::None;
            (*c).next = ptr::null_mut();
            (*c).prev = ptr::null_mut();
        }
        self.len -= 1;
    }
}

struct ClassState {
    partial: ChunkList,
    empty: ChunkList,
    full: ChunkList,
    decommitted: ChunkList,
    chunks: usize,
    /// Free blocks that thread caches gave back, handed out again as they are.
    transfer: SysVec<*mut u8, System>,
}

// SAFETY: the raw chunk and block pointers in ClassState are only used under the class
// mutex, and the chunks they name belong to the pool that owns this state.
unsafe impl Send for ClassState {}

impl ClassState {
    fn list_mut(&mut self, id: ListId) -> &mut ChunkList {
        match id {
            ListId::Partial => &mut self.partial,
            ListId::Empty => &mut self.empty,
            ListId::Full => &mut self.full,
            ListId::Decommitted => &mut self.decommitted,
            ListId::None => unreachable!("a listed chunk has a list id"),
        }
    }

    /// # Safety
    /// `c` is a live chunk of this class on list `from`; lock held.
    unsafe fn relist(&mut self, c: *mut ChunkMeta, from: ListId, to: ListId) {
        if from != to {
            // SAFETY: per the contract.
            unsafe {
                self.list_mut(from).unlink(c);
                self.list_mut(to).push(c, to);
            }
        }
    }
}

/// One size class.
pub(crate) struct SmallClass {
    pub size: usize,
    /// `log2(size)` when the size is a power of two, so block indices need no division.
    shift: u32,
    chunk_span: usize,
    capacity: u32,
    state: Mutex<ClassState>,
    /// Blocks handed out of chunks (to callers, thread caches or the transfer cache).
    outstanding: AtomicUsize,
    /// Chunks held, readable without the lock.
    chunks: AtomicUsize,
    /// Allocations and frees that took the locked path (no thread cache).
    pub shared_allocs: AtomicU64,
    pub shared_frees: AtomicU64,
}

impl SmallClass {
    #[inline]
    fn index(&self, offset: usize) -> usize {
        if self.shift != u32::MAX {
            offset >> self.shift
        } else {
            offset / self.size
        }
    }

    fn list_state(available: u32, capacity: u32) -> ListId {
        if available == 0 {
            ListId::Full
        } else if available == capacity {
            ListId::Empty
        } else {
            ListId::Partial
        }
    }
}

/// The small tier of one pool.
pub(crate) struct SmallTier {
    pool_id: u64,
    pub classes: [SmallClass; MAX_SMALL_CLASSES],
    pub count: usize,
    /// `(size + 7) / 8` → class index, for requests aligned to at most `small_alignment`.
    pub lut: [u8; super::config::MAX_SMALL_CLASS_SIZE / 8 + 1],
    /// Class sizes, compact, for the fast path.
    pub sizes: [u32; MAX_SMALL_CLASSES],
    /// The largest class.
    pub max_size: usize,
    /// Requests aligned to at most this use `lut`.
    pub align: usize,
    max_chunks: usize,
    retain_empty: usize,
    huge_pages: bool,
    /// Where the tier's regions are placed (NUMA).
    numa: NumaBinding,
    checked: bool,
}

/// The size class of the chunk behind `h`.
///
/// # Safety
/// `h` is the header of a live small chunk (its kind is `SmallChunk`).
pub(crate) unsafe fn chunk_class(h: NonNull<RegionHeader>) -> usize {
    // SAFETY: small chunk headers are the first field of a ChunkMeta (repr(C)); `class`
    // never changes after the chunk is made, so reading it races with nothing.
    unsafe { (*h.as_ptr().cast::<ChunkMeta>()).class }
}

impl SmallTier {
    pub(crate) fn new(pool_id: u64, cfg: &ResolvedConfig) -> Self {
        let sizes = cfg.small_sizes();
        let classes = std::array::from_fn(|i| {
            let size = sizes.get(i).copied().unwrap_or(8);
            let span =
                os::round_up(size * cfg.blocks_per_chunk, GRANULE).expect("validated sizes fit");
            SmallClass {
                size,
                shift: if size.is_power_of_two() {
                    size.trailing_zeros()
                } else {
                    u32::MAX
                },
                chunk_span: span,
                capacity: (span / size).min(u32::MAX as usize) as u32,
                state: Mutex::new(ClassState {
                    partial: ChunkList::default(),
                    empty: ChunkList::default(),
                    full: ChunkList::default(),
                    decommitted: ChunkList::default(),
                    chunks: 0,
                    transfer: SysVec::new_in(System),
                }),
                outstanding: AtomicUsize::new(0),
                chunks: AtomicUsize::new(0),
                shared_allocs: AtomicU64::new(0),
                shared_frees: AtomicU64::new(0),
            }
        });
        let mut lut = [u8::MAX; super::config::MAX_SMALL_CLASS_SIZE / 8 + 1];
        for (slot, entry) in lut.iter_mut().enumerate() {
            let need = slot * 8;
            if let Some(i) = sizes.iter().position(|&c| c >= need) {
                *entry = i as u8;
            }
        }
        SmallTier {
            pool_id,
            classes,
            count: sizes.len(),
            lut,
            sizes: std::array::from_fn(|i| sizes.get(i).copied().unwrap_or(8) as u32),
            max_size: *sizes.last().expect("validated non-empty"),
            align: cfg.small_alignment,
            max_chunks: cfg.max_chunks,
            retain_empty: cfg.retain_empty,
            huge_pages: cfg.use_huge_pages,
            numa: cfg.numa,
            checked: cfg.checked,
        }
    }

    /// The class serving `size` bytes at `align`, if the small tier serves it.
    #[inline]
    pub(crate) fn class_for(&self, size: usize, align: usize) -> Option<usize> {
        if size > self.max_size {
            return None;
        }
        if align <= self.align {
            let c = self.lut[(size + 7) >> 3];
            return (c != u8::MAX).then_some(c as usize);
        }
        // Blocks sit at multiples of the class size from a 64 KiB aligned base, so a class
        // that is a multiple of `align` gives aligned blocks.
        (0..self.count).find(|&i| {
            let c = self.classes[i].size;
            c >= size && c.is_multiple_of(align)
        })
    }

    /// Blocks handed out of chunks, in bytes (cached blocks count as handed out).
    pub(crate) fn outstanding_bytes(&self) -> usize {
        self.classes[..self.count]
            .iter()
            .map(|c| c.outstanding.load(Ordering::Relaxed) * c.size)
            .sum()
    }

    /// Chunks held by class `i`.
    pub(crate) fn chunks(&self, i: usize) -> usize {
        self.classes[i].chunks.load(Ordering::Relaxed)
    }

    /// Bytes reserved by class `i`.
    pub(crate) fn reserved_bytes(&self, i: usize) -> usize {
        self.chunks(i) * self.classes[i].chunk_span
    }

    /// Fills `out` (at least its first slot) with free blocks of class `ci` and returns
    /// how many: from the transfer cache if it has any, else from the chunks' bitmaps,
    /// mapping a new chunk when none has a free block.
    pub(crate) fn take(
        &self,
        ci: usize,
        out: &mut [*mut u8],
        budget: &Budget,
    ) -> Result<usize, OomReason> {
        debug_assert!(!out.is_empty());
        let class = &self.classes[ci];
        let mut guard = lock(&class.state);
        let st = &mut *guard;
        if !st.transfer.is_empty() {
            // Blocks in the transfer cache are already counted as handed out.
            let n = out.len().min(st.transfer.len());
            let from = st.transfer.len() - n;
            out[..n].copy_from_slice(&st.transfer[from..]);
            st.transfer.truncate(from);
            return Ok(n);
        }
        let mut got = 0;
        while got < out.len() {
            let chunk = if !st.partial.head.is_null() {
                st.partial.head
            } else if !st.empty.head.is_null() {
                st.empty.head
            } else if got > 0 {
                break; // serve what we have rather than map a chunk for a partial batch
            } else {
                let c = self.new_chunk(ci, st, budget)?;
                // SAFETY: `c` is a fresh chunk on no list; lock held.
                unsafe { st.empty.push(c, ListId::Empty) };
                c
            };
            // SAFETY: `chunk` is a live chunk of this class on one of our lists, and we
            // hold the class lock, so we have exclusive access to its metadata.
            let c = unsafe { &mut *chunk };
            let was = c.list;
            let mut w = c.cursor as usize;
            while got < out.len() && c.available > 0 {
                let word = c.free_bits[w];
                if word == 0 {
                    w += 1;
                    continue;
                }
                let i = w * 64 + word.trailing_zeros() as usize;
                c.free_bits[w] = word & (word - 1);
                out[got] = (c.header.base + i * class.size) as *mut u8;
                got += 1;
                c.available -= 1;
            }
            c.cursor = w as u32;
            let now = SmallClass::list_state(c.available, c.capacity);
            // SAFETY: `chunk` is on list `was`; lock held.
            unsafe { st.relist(chunk, was, now) };
        }
        class.outstanding.fetch_add(got, Ordering::Relaxed);
        Ok(got)
    }

    /// Returns blocks of class `ci` to their chunks, and gives empty chunks beyond the
    /// retention threshold back to the OS.
    ///
    /// # Safety
    /// Each pointer is a block of class `ci` of this pool, handed out by
    /// [`take`](Self::take), not freed since, and not used after this call.
    pub(crate) unsafe fn give(&self, ci: usize, blocks: &[*mut u8], budget: &Budget) {
        let mut st = lock(&self.classes[ci].state);
        // SAFETY: forwarded contract; we hold the class lock.
        unsafe { self.give_locked(ci, &mut st, blocks, budget) }
    }

    /// Gives a batch from a thread cache back: into the transfer cache while it has room
    /// (to be handed out whole by the next refill), else to the chunks.
    ///
    /// # Safety
    /// As [`give`](Self::give).
    pub(crate) unsafe fn give_batch(&self, ci: usize, blocks: &[*mut u8], budget: &Budget) {
        let mut st = lock(&self.classes[ci].state);
        if st.transfer.capacity() == 0 {
            st.transfer.reserve_exact(TRANSFER_BLOCKS);
        }
        if st.transfer.len() + blocks.len() <= TRANSFER_BLOCKS {
            st.transfer.extend_from_slice(blocks);
            return;
        }
        // SAFETY: forwarded contract; we hold the class lock.
        unsafe { self.give_locked(ci, &mut st, blocks, budget) }
    }

    /// Returns every block of the transfer caches to the chunks, so that empty chunks can
    /// go back to the OS.
    pub(crate) fn drain_transfer(&self, budget: &Budget) {
        for ci in 0..self.count {
            let mut st = lock(&self.classes[ci].state);
            let blocks = std::mem::replace(&mut st.transfer, SysVec::new_in(System));
            // SAFETY: the transfer cache holds free, handed-out blocks of this class.
            unsafe { self.give_locked(ci, &mut st, &blocks, budget) };
        }
    }

    /// # Safety
    /// As [`give`](Self::give); `st` is the guard of class `ci`'s lock.
    unsafe fn give_locked(
        &self,
        ci: usize,
        st: &mut ClassState,
        blocks: &[*mut u8],
        budget: &Budget,
    ) {
        let class = &self.classes[ci];
        for &b in blocks {
            // SAFETY: by the caller's contract `b` is one of our blocks; the page map names
            // its chunk (a live chunk of this pool, the invariant of page_map), and the
            // class lock gives us exclusive access to that chunk's metadata.
            let chunk = unsafe { self.chunk_of(b as usize) };
            // SAFETY: as above.
            let c = unsafe { &mut *chunk };
            let i = class.index(b as usize - c.header.base);
            let w = i / 64;
            debug_assert!(
                c.free_bits[w] & (1 << (i % 64)) == 0,
                "block given back twice"
            );
            c.free_bits[w] |= 1 << (i % 64);
            c.cursor = c.cursor.min(w as u32);
            let was = c.list;
            c.available += 1;
            let now = SmallClass::list_state(c.available, c.capacity);
            // SAFETY: `chunk` is on list `was`; lock held.
            unsafe { st.relist(chunk, was, now) };
        }
        class.outstanding.fetch_sub(blocks.len(), Ordering::Relaxed);
        self.free_empty_beyond_retained(ci, st, budget);
    }

    /// Gives back the empty chunks of class `ci` beyond `retain_empty`.
    fn free_empty_beyond_retained(&self, ci: usize, st: &mut ClassState, budget: &Budget) {
        while st.empty.len > self.retain_empty {
            let c = st.empty.head;
            // SAFETY: `c` heads the empty list: a live chunk with every block free, so no
            // caller holds a block of it; we hold the lock.
            unsafe {
                st.empty.unlink(c);
                self.free_chunk(ci, c, st, budget);
            }
        }
    }

    /// One block on the locked path (no thread cache).
    pub(crate) fn alloc_locked(
        &self,
        ci: usize,
        budget: &Budget,
    ) -> Result<NonNull<u8>, OomReason> {
        let mut out = [ptr::null_mut(); 1];
        self.take(ci, &mut out, budget)?;
        self.classes[ci]
            .shared_allocs
            .fetch_add(1, Ordering::Relaxed);
        Ok(NonNull::new(out[0]).expect("take fills at least one slot"))
    }

    /// Frees one block on the locked path. In checked mode the pointer is validated first
    /// and a bad one changes nothing.
    ///
    /// # Safety
    /// Outside checked mode: `p` was returned by this tier for class `ci` and is not used
    /// after this call. In checked mode any pointer may be passed.
    pub(crate) unsafe fn free_locked(
        &self,
        ci: usize,
        p: NonNull<u8>,
        budget: &Budget,
    ) -> Result<(), Error> {
        let class = &self.classes[ci];
        let addr = p.as_ptr() as usize;
        let mut st = lock(&class.state);
        if self.checked {
            let chunk = self
                .validate(addr)
                .ok_or(Error::ForeignPointer { address: addr })?;
            // SAFETY: `validate` found a live chunk of this pool holding `addr`; we hold
            // the lock of class `ci`, and read only its immutable class before checking it.
            let c = unsafe { &*chunk };
            if c.class != ci {
                return Err(Error::LayoutMismatch {
                    address: addr,
                    block_size: self.classes[c.class].size,
                    layout_size: class.size,
                });
            }
            let off = addr - c.header.base;
            let i = off / class.size;
            if !off.is_multiple_of(class.size) || i >= c.capacity as usize {
                return Err(Error::ForeignPointer { address: addr });
            }
            if c.free_bits[i / 64] & (1 << (i % 64)) != 0 {
                return Err(Error::DoubleFree { address: addr });
            }
            // SAFETY: the block is ours and handed out; the caller gives it up.
            unsafe { ptr::write_bytes(p.as_ptr(), POISON, class.size) };
        }
        class.shared_frees.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `p` is one of our handed-out blocks of class `ci` (validated in checked
        // mode, the caller's contract otherwise); we hold the lock.
        unsafe { self.give_locked(ci, &mut st, &[p.as_ptr()], budget) };
        Ok(())
    }

    /// The chunk of this pool's small tier that holds `addr`, if any (the lock of the
    /// chunk's class must be held to use the result).
    fn validate(&self, addr: usize) -> Option<*mut ChunkMeta> {
        let h = page_map::lookup_ref(addr)?;
        (h.pool_id == self.pool_id && h.kind == RegionKind::SmallChunk)
            .then(|| page_map::lookup(addr).expect("just found").as_ptr().cast())
    }

    /// # Safety
    /// `addr` lies in a live chunk of this pool.
    unsafe fn chunk_of(&self, addr: usize) -> *mut ChunkMeta {
        let h = page_map::lookup(addr).expect("block lies in a registered chunk");
        // SAFETY: the caller guarantees a live chunk of ours holds `addr`.
        debug_assert!(unsafe {
            h.as_ref().pool_id == self.pool_id && h.as_ref().kind == RegionKind::SmallChunk
        });
        h.as_ptr().cast()
    }

    /// The bookkeeping of a fresh chunk of class `ci` at `base`: every block free.
    fn chunk_meta(&self, ci: usize, base: NonNull<u8>) -> ChunkMeta {
        let class = &self.classes[ci];
        let mut free_bits = SysVec::new_in(System);
        free_bits.resize((class.capacity as usize).div_ceil(64), 0);
        let mut meta = ChunkMeta {
            header: RegionHeader {
                pool_id: self.pool_id,
                kind: RegionKind::SmallChunk,
                base: base.as_ptr() as usize,
                len: class.chunk_span,
            },
            class: ci,
            free_bits,
            available: 0,
            capacity: class.capacity,
            cursor: 0,
            list: ListId::None,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
        };
        meta.reset_bits();
        meta
    }

    fn new_chunk(
        &self,
        ci: usize,
        st: &mut ClassState,
        budget: &Budget,
    ) -> Result<*mut ChunkMeta, OomReason> {
        let class = &self.classes[ci];
        if st.chunks >= self.max_chunks {
            return Err(OomReason::ChunkLimit {
                class_size: class.size,
                max_chunks: self.max_chunks,
            });
        }
        budget.reserve(class.chunk_span)?;
        if !st.decommitted.head.is_null() {
            // Reuse a decommitted chunk: its mapping and page-map entries are still ours.
            let c = st.decommitted.head;
            // SAFETY: `c` heads the decommitted list, a chunk of this class with no block
            // in use; we hold the lock.
            unsafe {
                st.decommitted.unlink(c);
                (*c).reset_bits();
            }
            st.chunks += 1;
            class.chunks.store(st.chunks, Ordering::Relaxed);
            return Ok(c);
        }
        let Some(base) = os::map_placed(class.chunk_span, GRANULE, self.huge_pages, self.numa)
        else {
            budget.release(class.chunk_span);
            return Err(OomReason::OsRefused);
        };
        let meta = SysBox::into_raw(SysBox::new_in(self.chunk_meta(ci, base), System));
        if !page_map::register(base.as_ptr() as usize, class.chunk_span, meta.cast()) {
            // SAFETY: `meta` and `base` were made above and published nowhere.
            unsafe {
                drop(SysBox::from_raw_in(meta, System));
                os::unmap(base, class.chunk_span, GRANULE);
            }
            budget.release(class.chunk_span);
            return Err(OomReason::OsRefused);
        }
        st.chunks += 1;
        class.chunks.store(st.chunks, Ordering::Relaxed);
        Ok(meta)
    }

    /// # Safety
    /// `c` is a live chunk of class `ci` on no list, none of whose blocks is in use; the
    /// class lock is held (as `st`).
    unsafe fn free_chunk(
        &self,
        ci: usize,
        c: *mut ChunkMeta,
        st: &mut ClassState,
        budget: &Budget,
    ) {
        let class = &self.classes[ci];
        if self.checked {
            // Unmap, so that a use after free faults.
            // SAFETY: the caller guarantees `c` is live and unused.
            unsafe { self.unmap_chunk(c) };
        } else {
            // Decommit but keep the mapping: the OS takes the pages back when it needs
            // them, and reusing the chunk later costs no new mapping.
            // SAFETY: the caller guarantees `c` is live, unused and on no list; we hold the lock.
            unsafe {
                os::decommit(
                    NonNull::new_unchecked((*c).header.base as *mut u8),
                    (*c).header.len,
                );
                st.decommitted.push(c, ListId::Decommitted);
            }
        }
        budget.release(class.chunk_span);
        st.chunks -= 1;
        class.chunks.store(st.chunks, Ordering::Relaxed);
    }

    /// # Safety
    /// `c` is a chunk of this tier on no list, none of whose blocks is in use.
    unsafe fn unmap_chunk(&self, c: *mut ChunkMeta) {
        // SAFETY: per the contract; after unregistering it no lookup can reach the chunk,
        // so it can be unmapped and its metadata freed.
        unsafe {
            let (base, len) = ((*c).header.base, (*c).header.len);
            page_map::unregister(base, len);
            os::unmap(NonNull::new_unchecked(base as *mut u8), len, GRANULE);
            drop(SysBox::from_raw_in(c, System));
        }
    }

    /// Checks this tier's invariants (module doc), class by class under each class lock.
    pub(crate) fn verify(&self) -> Result<(), String> {
        for ci in 0..self.count {
            let class = &self.classes[ci];
            let st = lock(&class.state);
            let lists = [
                (&st.partial, ListId::Partial),
                (&st.empty, ListId::Empty),
                (&st.full, ListId::Full),
                (&st.decommitted, ListId::Decommitted),
            ];
            let (mut live_chunks, mut handed_out) = (0, 0);
            for (list, id) in lists {
                let (live, handed) = self.verify_list(ci, list, id)?;
                live_chunks += live;
                handed_out += handed;
            }
            if live_chunks != st.chunks {
                return Err(format!(
                    "class {}: {live_chunks} chunks listed, {} counted",
                    class.size, st.chunks
                ));
            }
            Self::verify_transfer(ci, class, &st)?;
            let outstanding = class.outstanding.load(Ordering::Relaxed);
            if handed_out != outstanding {
                return Err(format!(
                    "class {}: {handed_out} blocks handed out, {outstanding} counted",
                    class.size
                ));
            }
        }
        Ok(())
    }

    /// Checks the chunks of class `ci`'s list `id` (the caller holds the class lock): the
    /// live chunks on it and the blocks they have handed out.
    fn verify_list(
        &self,
        ci: usize,
        list: &ChunkList,
        id: ListId,
    ) -> Result<(usize, usize), String> {
        let size = self.classes[ci].size;
        let (mut n, mut live_chunks, mut handed_out) = (0, 0, 0);
        let mut c = list.head;
        while !c.is_null() {
            // SAFETY: chunks on a class list are live; the caller holds the class lock.
            let m = unsafe { &*c };
            let at = format!("class {size} chunk {:#x}", m.header.base);
            if m.list != id || m.class != ci || m.header.pool_id != self.pool_id {
                return Err(format!("{at}: on the {id:?} list but marked {:?}", m.list));
            }
            if page_map::lookup(m.header.base).map(|p| p.as_ptr().cast::<ChunkMeta>()) != Some(c) {
                return Err(format!("{at}: the page map does not name it"));
            }
            n += 1;
            c = m.next;
            if id == ListId::Decommitted {
                continue;
            }
            Self::verify_chunk_bits(m, id, &at)?;
            live_chunks += 1;
            handed_out += (m.capacity - m.available) as usize;
        }
        if n != list.len {
            return Err(format!(
                "class {size}: {id:?} list holds {n} chunks, counts {}",
                list.len
            ));
        }
        Ok((live_chunks, handed_out))
    }

    /// Checks a committed chunk's free count against its list and its bitmap.
    fn verify_chunk_bits(m: &ChunkMeta, id: ListId, at: &str) -> Result<(), String> {
        if SmallClass::list_state(m.available, m.capacity) != id {
            return Err(format!(
                "{at}: {} of {} blocks free on the {id:?} list",
                m.available, m.capacity
            ));
        }
        let set: u32 = m.free_bits.iter().map(|w| w.count_ones()).sum();
        let beyond = m.free_bits.len() * 64 - m.capacity as usize;
        let tail_clear = beyond == 0 || m.free_bits.last().is_some_and(|w| w >> (64 - beyond) == 0);
        let before_cursor_clear = m.free_bits[..m.cursor as usize].iter().all(|&w| w == 0);
        if set != m.available || !tail_clear || !before_cursor_clear {
            return Err(format!(
                "{at}: bitmap holds {set} free blocks, {} counted",
                m.available
            ));
        }
        Ok(())
    }

    /// Checks that every block in class `ci`'s transfer cache is a handed-out block of it
    /// (the caller holds the class lock, `st`).
    fn verify_transfer(ci: usize, class: &SmallClass, st: &ClassState) -> Result<(), String> {
        for &b in st.transfer.iter() {
            let owner = page_map::lookup(b as usize).map(|p| p.as_ptr().cast::<ChunkMeta>());
            // SAFETY: the page map names live chunks; the caller holds this class's lock,
            // and the chunk is read only if it is of this class.
            let handed = owner.is_some_and(|c| unsafe {
                let m = &*c;
                if m.header.kind != RegionKind::SmallChunk || m.class != ci {
                    return false;
                }
                let i = class.index(b as usize - m.header.base);
                m.free_bits[i / 64] & (1 << (i % 64)) == 0
            });
            if !handed {
                return Err(format!(
                    "class {}: transfer cache holds {b:p}, not a handed-out block of it",
                    class.size
                ));
            }
        }
        Ok(())
    }

    /// Makes every block of every class free, as if each had been given back: the
    /// transfer caches are emptied, every chunk becomes empty (in checked mode filled
    /// with [`POISON`]) and the empty chunks beyond `retain_empty` go back to the OS;
    /// the class counters restart at zero.
    ///
    /// # Safety
    /// No block of this tier is used after this call, and no thread cache gives one back
    /// to the tier (the pool's thread-cache id has changed).
    pub(crate) unsafe fn reset(&self, budget: &Budget) {
        for ci in 0..self.count {
            let class = &self.classes[ci];
            let mut guard = lock(&class.state);
            let st = &mut *guard;
            st.transfer.clear();
            for id in [ListId::Partial, ListId::Full] {
                while !st.list_mut(id).head.is_null() {
                    let c = st.list_mut(id).head;
                    // SAFETY: `c` heads one of this class's lists, so it is live; the lock
                    // is held, and by the contract none of its blocks is used any more.
                    unsafe {
                        st.list_mut(id).unlink(c);
                        (*c).reset_bits();
                        st.empty.push(c, ListId::Empty);
                    }
                }
            }
            self.free_empty_beyond_retained(ci, st, budget);
            if self.checked {
                // Only the chunks kept: the others are unmapped already.
                let mut c = st.empty.head;
                // SAFETY: chunks on the empty list are live and ours, none of their blocks
                // is used (per the contract); the lock is held.
                while let Some(chunk) = unsafe { c.as_ref() } {
                    let (base, len) = (chunk.header.base, chunk.header.len);
                    // SAFETY: as above; the chunk's mapping is `len` bytes from `base`.
                    unsafe { ptr::write_bytes(base as *mut u8, POISON, len) };
                    c = chunk.next;
                }
            }
            class.outstanding.store(0, Ordering::Relaxed);
            class.shared_allocs.store(0, Ordering::Relaxed);
            class.shared_frees.store(0, Ordering::Relaxed);
        }
    }

    /// Unmaps every chunk of every class; used when the pool is dropped.
    ///
    /// # Safety
    /// No block of this tier is used after this call.
    pub(crate) unsafe fn release_all(&self) {
        for ci in 0..self.count {
            let mut guard = lock(&self.classes[ci].state);
            let st = &mut *guard;
            st.transfer = SysVec::new_in(System);
            for id in [
                ListId::Partial,
                ListId::Empty,
                ListId::Full,
                ListId::Decommitted,
            ] {
                let list = st.list_mut(id);
                while !list.head.is_null() {
                    let c = list.head;
                    // SAFETY: `c` heads one of this class's lists, so it is live; the lock
                    // is held, and by the caller's contract none of its blocks is used.
                    unsafe {
                        list.unlink(c);
                        self.unmap_chunk(c);
                    }
                }
            }
            st.chunks = 0;
            self.classes[ci].chunks.store(0, Ordering::Relaxed);
        }
    }
}
