//! The small tier: one fixed-size pool per size class.
//!
//! Each class carves its blocks from chunks: regions of a whole number of 64 KiB
//! granules, each registered in the [page map](super::page_map) with its [`ChunkMeta`].
//! A chunk keeps its own free list (blocks linked through their first word) and carves
//! fresh blocks lazily with a bump counter, so a new chunk costs no writes.
//!
//! Shared state per class (the chunk lists and a transfer cache of whole batches) sits
//! behind one mutex. The common path does not touch it: per-thread caches
//! ([`super::thread_cache`]) take and return blocks in batches. A batch a cache gives back
//! goes into the class's transfer cache and comes out whole at the next refill, so blocks
//! that travel between threads (one allocates, another frees) cost O(1) per batch; only
//! when the transfer cache is full do blocks go back to their chunks one by one.
//!
//! Invariants, under the class lock:
//! - every chunk is on exactly one list: partial iff `0 < available < capacity`, empty
//!   iff `available == capacity`, full iff `available == 0`, or decommitted (its pages
//!   given back to the OS, its mapping kept for reuse, not counted as reserved);
//! - empty chunks beyond `retain_empty` are decommitted (checked mode: unmapped, so that
//!   a use after free faults);
//! - `available` = blocks on the chunk's free list + blocks not yet carved;
//! - every block on a chunk's free list lies in that chunk, at a multiple of the class
//!   size from its base, and is on no other list;
//! - in checked mode, a block's live bit is set iff it is handed out to a caller.

use std::alloc::System;
use std::ptr::{self, NonNull};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use allocator_api2::boxed::Box as SysBox;
use allocator_api2::vec::Vec as SysVec;

use super::budget::Budget;
use super::config::{MAX_SMALL_CLASSES, ResolvedConfig};
use super::os::{self, GRANULE};
use super::page_map::{self, RegionHeader, RegionKind};
use super::sync::lock;
use crate::error::{Error, OomReason};

/// Batches a class's transfer cache holds before batches go back to their chunks.
const TRANSFER_SLOTS: usize = 16;

/// Byte written over freed blocks in checked mode.
pub(crate) const POISON: u8 = 0xDD;

/// A free block, linked through its first word.
#[repr(C)]
pub(crate) struct FreeBlock {
    pub next: *mut FreeBlock,
}

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
    free: *mut FreeBlock,
    available: u32,
    carved: u32,
    capacity: u32,
    list: ListId,
    next: *mut ChunkMeta,
    prev: *mut ChunkMeta,
    /// Checked mode only: one bit per block, set while the block is handed out.
    live: SysVec<u64, System>,
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
            let (n, p) = ((*c).next, (*c).prev);
            match p.as_mut() {
                Some(p) => p.next = n,
                None => self.head = n,
            }
            if let Some(n) = n.as_mut() {
                n.prev = p;
            }
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
    /// Whole batches of free blocks that thread caches gave back, handed out again as
    /// they are (the transfer cache): a refill or overflow costs O(1), not a chunk
    /// update per block.
    transfer: [(*mut FreeBlock, usize); TRANSFER_SLOTS],
    transfer_len: usize,
}

// SAFETY: the raw chunk pointers in ClassState are only dereferenced under the class
// mutex, and the chunks they name belong to the pool that owns this state.
unsafe impl Send for ClassState {}

/// One size class.
pub(crate) struct SmallClass {
    pub size: usize,
    chunk_span: usize,
    capacity: u32,
    state: Mutex<ClassState>,
    /// Blocks handed out of chunks (to thread caches or callers).
    outstanding: AtomicUsize,
    /// Chunks held, readable without the lock.
    chunks: AtomicUsize,
    /// Allocations and frees that took the locked path (no thread cache).
    pub shared_allocs: AtomicU64,
    pub shared_frees: AtomicU64,
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
                chunk_span: span,
                capacity: (span / size).min(u32::MAX as usize) as u32,
                state: Mutex::new(ClassState {
                    partial: ChunkList::default(),
                    empty: ChunkList::default(),
                    full: ChunkList::default(),
                    decommitted: ChunkList::default(),
                    chunks: 0,
                    transfer: [(ptr::null_mut(), 0); TRANSFER_SLOTS],
                    transfer_len: 0,
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

    /// Blocks handed out of chunks, in bytes (thread caches count as handed out).
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

    /// Takes up to `n` (at least one) blocks of class `ci` as a linked list; returns the
    /// head and the count. Maps a new chunk when none has a free block.
    pub(crate) fn take(
        &self,
        ci: usize,
        n: usize,
        budget: &Budget,
    ) -> Result<(NonNull<FreeBlock>, usize), OomReason> {
        let class = &self.classes[ci];
        let mut st = lock(&class.state);
        if st.transfer_len > 0 {
            // Blocks in the transfer cache are already counted as handed out.
            st.transfer_len -= 1;
            let (head, count) = st.transfer[st.transfer_len];
            return Ok((NonNull::new(head).expect("batches are non-empty"), count));
        }
        let mut head: *mut FreeBlock = ptr::null_mut();
        let mut got = 0;
        while got < n {
            let chunk = if !st.partial.head.is_null() {
                st.partial.head
            } else if !st.empty.head.is_null() {
                let c = st.empty.head;
                // SAFETY: `c` is the head of the empty list, a live chunk of this class; lock held.
                unsafe {
                    st.empty.unlink(c);
                    st.partial.push(c, ListId::Partial);
                }
                c
            } else if got > 0 {
                break; // serve what we have rather than map a chunk for a partial batch
            } else {
                let c = self.new_chunk(ci, &mut st, budget)?;
                // SAFETY: `c` is a fresh chunk on no list; lock held.
                unsafe { st.partial.push(c, ListId::Partial) };
                c
            };
            // SAFETY: `chunk` is a live chunk of this class on the partial list, and we hold
            // the class lock, so we have exclusive access to its metadata and free blocks.
            unsafe {
                let c = &mut *chunk;
                while got < n && c.available > 0 {
                    let b = if !c.free.is_null() {
                        let b = c.free;
                        c.free = (*b).next;
                        b
                    } else {
                        let b = (c.header.base + c.carved as usize * class.size) as *mut FreeBlock;
                        c.carved += 1;
                        b
                    };
                    (*b).next = head;
                    head = b;
                    c.available -= 1;
                    got += 1;
                }
                if c.available == 0 {
                    st.partial.unlink(chunk);
                    st.full.push(chunk, ListId::Full);
                }
            }
        }
        class.outstanding.fetch_add(got, Ordering::Relaxed);
        Ok((NonNull::new(head).expect("at least one block taken"), got))
    }

    /// Returns a linked list of `count` blocks of class `ci` to their chunks, and gives
    /// empty chunks beyond the retention threshold back to the OS.
    ///
    /// # Safety
    /// `head` starts a list of exactly `count` blocks of class `ci` of this pool, each
    /// handed out by [`take`](Self::take) and not on any other list or in use.
    pub(crate) unsafe fn give(
        &self,
        ci: usize,
        head: *mut FreeBlock,
        count: usize,
        budget: &Budget,
    ) {
        let mut st = lock(&self.classes[ci].state);
        // SAFETY: forwarded contract; we hold the class lock.
        unsafe { self.give_locked(ci, &mut st, head, count, budget) }
    }

    /// Gives a batch from a thread cache back: into the transfer cache while it has room
    /// (to be handed out whole by the next refill), else to the chunks.
    ///
    /// # Safety
    /// As [`give`](Self::give), with `count >= 1`.
    pub(crate) unsafe fn give_batch(
        &self,
        ci: usize,
        head: *mut FreeBlock,
        count: usize,
        budget: &Budget,
    ) {
        let mut st = lock(&self.classes[ci].state);
        if st.transfer_len < TRANSFER_SLOTS {
            let i = st.transfer_len;
            st.transfer[i] = (head, count);
            st.transfer_len += 1;
            return;
        }
        // SAFETY: forwarded contract; we hold the class lock.
        unsafe { self.give_locked(ci, &mut st, head, count, budget) }
    }

    /// Returns every batch of the transfer caches to the chunks, so that empty chunks can
    /// go back to the OS.
    pub(crate) fn drain_transfer(&self, budget: &Budget) {
        for ci in 0..self.count {
            let mut st = lock(&self.classes[ci].state);
            while st.transfer_len > 0 {
                st.transfer_len -= 1;
                let (head, count) = st.transfer[st.transfer_len];
                // SAFETY: a transfer batch is a list of `count` free blocks of this class.
                unsafe { self.give_locked(ci, &mut st, head, count, budget) };
            }
        }
    }

    /// # Safety
    /// As [`give`](Self::give); `st` is the guard of class `ci`'s lock.
    unsafe fn give_locked(
        &self,
        ci: usize,
        st: &mut ClassState,
        head: *mut FreeBlock,
        count: usize,
        budget: &Budget,
    ) {
        let class = &self.classes[ci];
        let mut b = head;
        for _ in 0..count {
            // SAFETY: by the caller's contract `b` is one of our blocks; the page map names
            // its chunk (a live chunk of this pool, the invariant of page_map), and the
            // class lock gives us exclusive access to that chunk's metadata.
            unsafe {
                let next = (*b).next;
                let chunk = self.chunk_of(b as usize);
                let c = &mut *chunk;
                (*b).next = c.free;
                c.free = b;
                c.available += 1;
                if c.available == c.capacity {
                    // Every block is free: forget the (scattered) free list and carve
                    // afresh, so the next blocks handed out are contiguous.
                    c.free = ptr::null_mut();
                    c.carved = 0;
                    match c.list {
                        ListId::Partial => st.partial.unlink(chunk),
                        ListId::Full => st.full.unlink(chunk),
                        ListId::Empty | ListId::None | ListId::Decommitted => {
                            unreachable!("a chunk with a handed-out block is partial or full")
                        }
                    }
                    st.empty.push(chunk, ListId::Empty);
                } else if c.list == ListId::Full {
                    st.full.unlink(chunk);
                    st.partial.push(chunk, ListId::Partial);
                }
                b = next;
            }
        }
        class.outstanding.fetch_sub(count, Ordering::Relaxed);
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

    /// One block on the locked path (no thread cache), with checked-mode bookkeeping.
    pub(crate) fn alloc_locked(
        &self,
        ci: usize,
        budget: &Budget,
    ) -> Result<NonNull<u8>, OomReason> {
        let (b, _) = self.take(ci, 1, budget)?;
        let class = &self.classes[ci];
        class.shared_allocs.fetch_add(1, Ordering::Relaxed);
        if self.checked {
            let _st = lock(&class.state);
            // SAFETY: `b` is a block we just took; its chunk is live and we hold the lock.
            unsafe {
                let c = &mut *self.chunk_of(b.as_ptr() as usize);
                let i = (b.as_ptr() as usize - c.header.base) / class.size;
                c.live[i / 64] |= 1 << (i % 64);
            }
        }
        Ok(b.cast())
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
        if self.checked {
            let addr = p.as_ptr() as usize;
            let st = lock(&class.state);
            let chunk = self
                .validate(addr)
                .ok_or(Error::ForeignPointer { address: addr })?;
            // SAFETY: `validate` found a live chunk of this pool holding `addr`; lock held...
            let c = unsafe { &mut *chunk };
            if c.class != ci {
                drop(st);
                return Err(Error::LayoutMismatch {
                    address: addr,
                    block_size: self.classes[c.class].size,
                    layout_size: class.size,
                });
            }
            let off = addr - c.header.base;
            let i = off / class.size;
            if !off.is_multiple_of(class.size) || i >= c.carved as usize {
                return Err(Error::ForeignPointer { address: addr });
            }
            if c.live[i / 64] & (1 << (i % 64)) == 0 {
                return Err(Error::DoubleFree { address: addr });
            }
            c.live[i / 64] &= !(1 << (i % 64));
            drop(st);
            // SAFETY: the block is ours, was live, and is now owned by the pool alone.
            unsafe { ptr::write_bytes(p.as_ptr(), POISON, class.size) };
        }
        class.shared_frees.fetch_add(1, Ordering::Relaxed);
        let b = p.as_ptr().cast::<FreeBlock>();
        // SAFETY: `b` is one of our blocks of class `ci` (validated in checked mode, the
        // caller's contract otherwise); a one-element list.
        unsafe {
            (*b).next = ptr::null_mut();
            self.give(ci, b, 1, budget);
        }
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
                let m = &mut *c;
                m.free = ptr::null_mut();
                m.available = m.capacity;
                m.carved = 0;
                m.live.fill(0);
            }
            st.chunks += 1;
            class.chunks.store(st.chunks, Ordering::Relaxed);
            return Ok(c);
        }
        let Some(base) = os::map(class.chunk_span, GRANULE, self.huge_pages) else {
            budget.release(class.chunk_span);
            return Err(OomReason::OsRefused);
        };
        let live = if self.checked {
            let mut v = SysVec::new_in(System);
            v.resize((class.capacity as usize).div_ceil(64), 0);
            v
        } else {
            SysVec::new_in(System)
        };
        let meta = SysBox::into_raw(SysBox::new_in(
            ChunkMeta {
                header: RegionHeader {
                    pool_id: self.pool_id,
                    kind: RegionKind::SmallChunk,
                    base: base.as_ptr() as usize,
                    len: class.chunk_span,
                },
                class: ci,
                free: ptr::null_mut(),
                available: class.capacity,
                carved: 0,
                capacity: class.capacity,
                list: ListId::None,
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                live,
            },
            System,
        ));
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
                let mut c = list.head;
                let mut n = 0;
                while !c.is_null() {
                    // SAFETY: chunks on a class list are live; we hold the class lock.
                    let m = unsafe { &*c };
                    let at = format!("class {} chunk {:#x}", class.size, m.header.base);
                    if m.list != id || m.class != ci || m.header.pool_id != self.pool_id {
                        return Err(format!("{at}: on the {id:?} list but marked {:?}", m.list));
                    }
                    if page_map::lookup(m.header.base).map(|p| p.as_ptr().cast::<ChunkMeta>())
                        != Some(c)
                    {
                        return Err(format!("{at}: the page map does not name it"));
                    }
                    n += 1;
                    if id == ListId::Decommitted {
                        c = m.next;
                        continue;
                    }
                    let (a, cap) = (m.available, m.capacity);
                    let fits = match id {
                        ListId::Partial => 0 < a && a < cap,
                        ListId::Empty => a == cap,
                        _ => a == 0,
                    };
                    if !fits {
                        return Err(format!(
                            "{at}: {a} of {cap} blocks available on the {id:?} list"
                        ));
                    }
                    let mut free = 0u32;
                    let mut b = m.free;
                    while !b.is_null() {
                        let off = (b as usize).wrapping_sub(m.header.base);
                        if off % class.size != 0
                            || off / class.size >= m.carved as usize
                            || free >= cap
                        {
                            return Err(format!(
                                "{at}: free block {b:p} is not a carved block of it"
                            ));
                        }
                        free += 1;
                        // SAFETY: a block on the chunk's free list is free and linked.
                        b = unsafe { (*b).next };
                    }
                    if free + (cap - m.carved) != a {
                        return Err(format!(
                            "{at}: {free} free + {} uncarved != {a} available",
                            cap - m.carved
                        ));
                    }
                    live_chunks += 1;
                    handed_out += (cap - a) as usize;
                    c = m.next;
                }
                if n != list.len {
                    return Err(format!(
                        "class {}: {id:?} list holds {n} chunks, counts {}",
                        class.size, list.len
                    ));
                }
            }
            if live_chunks != st.chunks {
                return Err(format!(
                    "class {}: {live_chunks} chunks listed, {} counted",
                    class.size, st.chunks
                ));
            }
            for &(head, count) in &st.transfer[..st.transfer_len] {
                let (mut b, mut n) = (head, 0);
                while !b.is_null() && n <= count {
                    let owner =
                        page_map::lookup(b as usize).map(|p| p.as_ptr().cast::<ChunkMeta>());
                    // SAFETY: the page map names live chunks; `class` never changes.
                    if owner.is_none_or(|c| unsafe { (*c).class } != ci) {
                        return Err(format!(
                            "class {}: transfer batch holds foreign block {b:p}",
                            class.size
                        ));
                    }
                    n += 1;
                    // SAFETY: blocks of a transfer batch are free and linked.
                    b = unsafe { (*b).next };
                }
                if n != count {
                    return Err(format!(
                        "class {}: transfer batch of {count} holds {n}",
                        class.size
                    ));
                }
            }
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

    /// Unmaps every chunk of every class; used when the pool is dropped.
    ///
    /// # Safety
    /// No block of this tier is used after this call.
    pub(crate) unsafe fn release_all(&self, budget: &Budget) {
        for ci in 0..self.count {
            let mut guard = lock(&self.classes[ci].state);
            let st = &mut *guard;
            loop {
                let c = [st.partial.head, st.empty.head, st.full.head]
                    .into_iter()
                    .find(|c| !c.is_null());
                let Some(c) = c else { break };
                // SAFETY: `c` heads one of this class's lists, so it is live; the lock is
                // held, and by the caller's contract none of its blocks is used any more.
                unsafe {
                    match (*c).list {
                        ListId::Partial => st.partial.unlink(c),
                        ListId::Empty => st.empty.unlink(c),
                        ListId::Full => st.full.unlink(c),
                        ListId::None | ListId::Decommitted => {
                            unreachable!("only live lists are drained here")
                        }
                    }
                    self.free_chunk(ci, c, st, budget);
                }
            }
            while !st.decommitted.head.is_null() {
                let c = st.decommitted.head;
                // SAFETY: `c` heads the decommitted list; no block of it is in use.
                unsafe {
                    st.decommitted.unlink(c);
                    self.unmap_chunk(c);
                }
            }
        }
    }
}
