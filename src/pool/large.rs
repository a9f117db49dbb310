//! The large tier: buddy arenas, page aligned, and single mappings beyond them.
//!
//! Requests above the medium tier go to arenas managed by the offset-based
//! [`BuddyAllocator`]: each arena is a power-of-two mapping aligned to its own size, so a
//! block's alignment relative to the arena is also its alignment in memory. Arenas grow by
//! `growth_factor` from 4 MiB up to `large.max_size`; an arena that becomes empty goes
//! back to the OS once more than `retain_empty` are empty. Requests above `max_size` get a
//! mapping of their own ("huge"), returned to the OS on free.
//!
//! Invariant, under the tier lock: every arena and huge mapping on the lists is
//! registered in the page map with its metadata, and nothing else of this tier is.

use std::alloc::System;
use std::ptr::{self, NonNull};

use allocator_api2::boxed::Box as SysBox;
use allocator_api2::vec::Vec as SysVec;

use super::buddy::BuddyAllocator;
use super::budget::Budget;
use super::config::ResolvedConfig;
use super::intrusive::unlink_node;
use super::numa::NumaBinding;
use super::os::{self, GRANULE};
use super::page_map::{self, RegionHeader, RegionKind};
use super::small::POISON;
use super::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, lock};
use crate::error::{Error, OomReason};

const FIRST_ARENA: usize = 4 << 20;
/// Arenas grow by `growth_factor` up to this size; a larger request gets an arena of its
/// own block size, so a few big blocks do not reserve a gigabyte each.
const GROWN_ARENA_LIMIT: usize = 64 << 20;

#[repr(C)]
struct Arena {
    header: RegionHeader,
    buddy: BuddyAllocator,
    /// Bit per minimum block: set once a block covering it was handed out, so that the
    /// bytes may no longer be the zeros the OS mapped.
    touched: SysVec<u64, System>,
    next: *mut Arena,
    prev: *mut Arena,
}

impl Arena {
    /// Marks the bytes `[offset, offset + len)` as handed out; true when none of them
    /// had been before (they still read as zeros).
    fn touch(&mut self, offset: u64, len: u64) -> bool {
        let shift = self.buddy.min_block().trailing_zeros();
        let (first, end) = (offset >> shift, (offset + len).div_ceil(1 << shift));
        let mut untouched = true;
        for unit in first..end {
            let (word, bit) = ((unit / 64) as usize, 1u64 << (unit % 64));
            untouched &= self.touched[word] & bit == 0;
            self.touched[word] |= bit;
        }
        untouched
    }
}

/// What a request asks of the large tier beyond its size and alignment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LargeRequest {
    /// The block must read as zeros.
    pub zeroed: bool,
    /// Back the block with transparent huge pages.
    pub huge_pages: bool,
}

#[repr(C)]
struct Huge {
    header: RegionHeader,
    align: usize,
    next: *mut Huge,
    prev: *mut Huge,
}

struct LargeState {
    arenas: *mut Arena,
    huge: *mut Huge,
    empty_arenas: usize,
    next_arena: usize,
    allocs: u64,
    frees: u64,
    in_use: usize,
}

// SAFETY: the raw pointers name arenas and mappings owned by this tier, only touched
// under the tier's mutex.
unsafe impl Send for LargeState {}

/// Counters of the large tier, readable without the lock.
#[derive(Default)]
pub(crate) struct LargeCounters {
    pub allocs: AtomicU64,
    pub frees: AtomicU64,
    pub in_use: AtomicUsize,
    pub reserved: AtomicUsize,
    pub regions: AtomicUsize,
}

/// The large tier of one pool.
pub(crate) struct LargeTier {
    pool_id: u64,
    state: Mutex<LargeState>,
    pub counters: LargeCounters,
    min_block: usize,
    max_size: usize,
    alignment: usize,
    checked: bool,
    huge_pages: bool,
    /// Where the tier's regions are placed (NUMA).
    numa: NumaBinding,
    retain_empty: usize,
    growth: usize,
}

impl LargeTier {
    pub(crate) fn new(pool_id: u64, cfg: &ResolvedConfig) -> Self {
        LargeTier {
            pool_id,
            state: Mutex::new(LargeState {
                arenas: ptr::null_mut(),
                huge: ptr::null_mut(),
                empty_arenas: 0,
                allocs: 0,
                frees: 0,
                in_use: 0,
                next_arena: FIRST_ARENA.clamp(cfg.large_min, cfg.large_max),
            }),
            counters: LargeCounters::default(),
            min_block: cfg.large_min,
            max_size: cfg.large_max,
            alignment: cfg.large_alignment,
            checked: cfg.checked,
            huge_pages: cfg.use_huge_pages,
            numa: cfg.numa,
            retain_empty: cfg.retain_empty,
            growth: cfg.growth_factor,
        }
    }

    /// The bytes a request occupies (its block or mapping size).
    pub(crate) fn block_size_for(&self, size: usize, align: usize) -> Option<usize> {
        let align = align.max(self.alignment);
        let need = size.max(align).max(1);
        if need <= self.max_size {
            Some(need.checked_next_power_of_two()?.max(self.min_block))
        } else {
            os::round_up(size, GRANULE)
        }
    }

    /// Allocates `size` bytes at `align`; returns the block and its length.
    pub(crate) fn allocate(
        &self,
        size: usize,
        align: usize,
        budget: &Budget,
    ) -> Result<(NonNull<u8>, usize), OomReason> {
        self.allocate_with(size, align, LargeRequest::default(), budget)
    }

    /// [`allocate`](Self::allocate), zeroed or backed by huge pages as `request` asks.
    /// Zeros are written (outside the lock) only over bytes that were handed out before.
    pub(crate) fn allocate_with(
        &self,
        size: usize,
        align: usize,
        request: LargeRequest,
        budget: &Budget,
    ) -> Result<(NonNull<u8>, usize), OomReason> {
        let align = align.max(self.alignment);
        let block = self
            .block_size_for(size, align)
            .ok_or(OomReason::LayoutTooLarge)?;
        let mut st = lock(&self.state);
        let (p, untouched) = if size.max(align) <= self.max_size {
            self.alloc_in_arena(&mut st, size, align, block, budget)?
        } else {
            let huge_pages = self.huge_pages || request.huge_pages;
            (
                self.alloc_huge(&mut st, block, align, huge_pages, budget)?,
                true,
            )
        };
        st.allocs += 1;
        st.in_use += block;
        self.publish(&st);
        drop(st);
        if request.huge_pages {
            // SAFETY: the block lies in a mapping of this tier and is the caller's now.
            unsafe { os::advise_huge(p, block) };
        }
        if request.zeroed && !untouched {
            // SAFETY: as above; the block is `block` bytes long.
            unsafe { ptr::write_bytes(p.as_ptr(), 0, block) };
        }
        Ok((p, block))
    }

    fn alloc_in_arena(
        &self,
        st: &mut LargeState,
        size: usize,
        align: usize,
        block: usize,
        budget: &Budget,
    ) -> Result<(NonNull<u8>, bool), OomReason> {
        if let Some(found) = Self::alloc_in_existing(st, size, align, block) {
            return Ok(found);
        }
        let len = Self::reserve_arena(st, block, budget)?;
        let Some(base) = os::map_placed(len, len.max(GRANULE), self.huge_pages, self.numa) else {
            budget.release(len);
            return Err(OomReason::OsRefused);
        };
        let (meta, off) = match self.new_arena(base, len, size, align, block) {
            Ok(made) => made,
            Err(e) => {
                // SAFETY: mapped just above and not handed out.
                unsafe { os::unmap(base, len, len.max(GRANULE)) };
                budget.release(len);
                return Err(e);
            }
        };
        self.link_arena(st, meta, len);
        // SAFETY: `off` is inside the fresh mapping.
        Ok((
            unsafe { NonNull::new_unchecked(base.as_ptr().add(off as usize)) },
            true,
        ))
    }

    /// A block from an arena the tier has, if one has room: its address and whether it
    /// was never handed out before.
    fn alloc_in_existing(
        st: &mut LargeState,
        size: usize,
        align: usize,
        block: usize,
    ) -> Option<(NonNull<u8>, bool)> {
        let mut a = st.arenas;
        // SAFETY: arenas on the list are live; we hold the lock.
        unsafe {
            while let Some(arena) = a.as_mut() {
                let was_empty = arena.buddy.is_empty();
                if let Some(off) = arena.buddy.allocate(size as u64, align as u64) {
                    if was_empty {
                        st.empty_arenas -= 1;
                    }
                    let untouched = arena.touch(off, block as u64);
                    let p = NonNull::new_unchecked((arena.header.base + off as usize) as *mut u8);
                    return Some((p, untouched));
                }
                a = arena.next;
            }
        }
        None
    }

    /// Reserves the length of the next arena in the budget: the next arena size, or under
    /// a memory cap the block alone.
    fn reserve_arena(st: &LargeState, block: usize, budget: &Budget) -> Result<usize, OomReason> {
        let len = st.next_arena.max(block);
        match budget.reserve(len) {
            Ok(()) => Ok(len),
            Err(e) if len == block => Err(e),
            Err(_) => budget.reserve(block).map(|()| block),
        }
    }

    /// The bookkeeping of a fresh arena over the mapping `base..base + len`, registered in
    /// the page map, with the request's block taken: the arena and the block's offset.
    /// On failure nothing is registered and the mapping is the caller's to release.
    fn new_arena(
        &self,
        base: NonNull<u8>,
        len: usize,
        size: usize,
        align: usize,
        block: usize,
    ) -> Result<(*mut Arena, u64), OomReason> {
        // The geometry is valid (powers of two, validated with the config); only the
        // bookkeeping's allocation can fail.
        let mut buddy = BuddyAllocator::new(len as u64, self.min_block as u64)
            .map_err(|_| OomReason::OsRefused)?;
        let off = buddy
            .allocate(size as u64, align as u64)
            .expect("a fresh arena holds the request");
        let words = (len / self.min_block).div_ceil(64);
        let mut touched = SysVec::new_in(System);
        touched
            .try_reserve_exact(words)
            .map_err(|_| OomReason::OsRefused)?;
        touched.resize(words, 0);
        let mut arena = Arena {
            header: RegionHeader {
                pool_id: self.pool_id,
                kind: RegionKind::LargeArena,
                base: base.as_ptr() as usize,
                len,
            },
            buddy,
            touched,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
        };
        arena.touch(off, block as u64);
        let meta = SysBox::into_raw(SysBox::new_in(arena, System));
        if !page_map::register(base.as_ptr() as usize, len, meta.cast()) {
            // SAFETY: made above, published nowhere.
            unsafe { drop(SysBox::from_raw_in(meta, System)) };
            return Err(OomReason::OsRefused);
        }
        Ok((meta, off))
    }

    /// Puts the registered arena `meta` of `len` bytes at the head of the list, grows the
    /// next arena's size and counts the region.
    fn link_arena(&self, st: &mut LargeState, meta: *mut Arena, len: usize) {
        // SAFETY: `meta` is a fresh arena no list holds; the old head, if any, is a live
        // arena; we hold the lock.
        unsafe {
            (*meta).next = st.arenas;
            if let Some(old) = st.arenas.as_mut() {
                old.prev = meta;
            }
        }
        st.arenas = meta;
        st.next_arena = (st.next_arena * self.growth).min(
            self.max_size
                .min(GROWN_ARENA_LIMIT)
                .max(FIRST_ARENA.min(self.max_size)),
        );
        self.counters.reserved.fetch_add(len, Ordering::Relaxed);
        self.counters.regions.fetch_add(1, Ordering::Relaxed);
    }

    fn alloc_huge(
        &self,
        st: &mut LargeState,
        len: usize,
        align: usize,
        huge_pages: bool,
        budget: &Budget,
    ) -> Result<NonNull<u8>, OomReason> {
        let map_align = align.max(GRANULE);
        budget.reserve(len)?;
        let Some(base) = os::map_placed(len, map_align, huge_pages, self.numa) else {
            budget.release(len);
            return Err(OomReason::OsRefused);
        };
        let meta = SysBox::into_raw(SysBox::new_in(
            Huge {
                header: RegionHeader {
                    pool_id: self.pool_id,
                    kind: RegionKind::Huge,
                    base: base.as_ptr() as usize,
                    len,
                },
                align: map_align,
                next: st.huge,
                prev: ptr::null_mut(),
            },
            System,
        ));
        if !page_map::register(base.as_ptr() as usize, len, meta.cast()) {
            // SAFETY: made above, published nowhere.
            unsafe {
                drop(SysBox::from_raw_in(meta, System));
                os::unmap(base, len, map_align);
            }
            budget.release(len);
            return Err(OomReason::OsRefused);
        }
        // SAFETY: the old head, if any, is a live mapping; we hold the lock.
        unsafe {
            if let Some(old) = st.huge.as_mut() {
                old.prev = meta;
            }
        }
        st.huge = meta;
        self.counters.reserved.fetch_add(len, Ordering::Relaxed);
        self.counters.regions.fetch_add(1, Ordering::Relaxed);
        Ok(base)
    }

    /// Frees a block. A pointer that is not a live block of this tier is reported and
    /// changes nothing (checked mode validates the layout as well).
    ///
    /// # Safety
    /// If `p` is a live block of this tier, it is not used after this call.
    pub(crate) unsafe fn deallocate(
        &self,
        p: NonNull<u8>,
        size: usize,
        align: usize,
        budget: &Budget,
    ) -> Result<(), Error> {
        let addr = p.as_ptr() as usize;
        let foreign = Error::ForeignPointer { address: addr };
        let mut st = lock(&self.state);
        let hp = page_map::lookup(addr).ok_or(Error::ForeignPointer { address: addr })?;
        // SAFETY: the page map names a live region; its header is only read here.
        let h = unsafe { hp.as_ref() };
        if h.pool_id != self.pool_id {
            return Err(foreign);
        }
        let expected = self.block_size_for(size, align).unwrap_or(0);
        let freed = match h.kind {
            // SAFETY: the page map names a live arena of ours; we hold the lock.
            RegionKind::LargeArena => unsafe {
                self.free_in_arena(&mut st, hp.as_ptr().cast(), p, size, expected, budget)?
            },
            // SAFETY: the page map names a live mapping of ours; we hold the lock.
            RegionKind::Huge => unsafe {
                self.free_huge(&mut st, hp.as_ptr().cast(), addr, size, expected, budget)?
            },
            _ => return Err(foreign),
        };
        st.frees += 1;
        st.in_use -= freed;
        self.publish(&st);
        Ok(())
    }

    /// Frees the block at `p` of `arena` (a `size`-byte layout whose block is `expected`
    /// bytes): its length.
    ///
    /// # Safety
    /// `arena` is a live arena of this tier and `st` its locked state.
    unsafe fn free_in_arena(
        &self,
        st: &mut LargeState,
        arena: *mut Arena,
        p: NonNull<u8>,
        size: usize,
        expected: usize,
        budget: &Budget,
    ) -> Result<usize, Error> {
        let addr = p.as_ptr() as usize;
        // SAFETY: live and ours (the caller's contract); the lock makes it unshared.
        let a = unsafe { &mut *arena };
        let off = (addr - a.header.base) as u64;
        let Some(block) = a.buddy.block_size(off) else {
            return Err(if off.is_multiple_of(a.buddy.min_block()) {
                Error::DoubleFree { address: addr }
            } else {
                Error::ForeignPointer { address: addr }
            });
        };
        if self.checked && block as usize != expected {
            return Err(Error::LayoutMismatch {
                address: addr,
                block_size: block as usize,
                layout_size: size,
            });
        }
        if self.checked {
            // SAFETY: the block is live and ours, `block` bytes long.
            unsafe { ptr::write_bytes(p.as_ptr(), POISON, block as usize) };
        }
        a.buddy
            .deallocate(off)
            .expect("block_size found it allocated");
        if a.buddy.is_empty() {
            // SAFETY: the arena is live, ours and empty; we hold the lock.
            unsafe { self.count_empty_arena(st, arena, budget) };
        }
        Ok(block as usize)
    }

    /// Unmaps the single mapping `huge`, which must start at `addr` (a `size`-byte
    /// layout whose block is `expected` bytes): its length.
    ///
    /// # Safety
    /// `huge` is a live mapping of this tier and `st` its locked state.
    unsafe fn free_huge(
        &self,
        st: &mut LargeState,
        huge: *mut Huge,
        addr: usize,
        size: usize,
        expected: usize,
        budget: &Budget,
    ) -> Result<usize, Error> {
        // SAFETY: live and ours (the caller's contract); the lock makes it unshared.
        let m = unsafe { &mut *huge };
        if addr != m.header.base {
            return Err(Error::ForeignPointer { address: addr });
        }
        if self.checked && m.header.len != expected {
            return Err(Error::LayoutMismatch {
                address: addr,
                block_size: m.header.len,
                layout_size: size,
            });
        }
        let len = m.header.len;
        // SAFETY: as above; the mapping is unregistered before it is unmapped.
        unsafe {
            unlink_node!(st.huge, huge);
            self.unmap_region(&m.header, m.align, budget);
            drop(SysBox::from_raw_in(huge, System));
        }
        Ok(len)
    }

    /// Counts `arena`, just emptied, as empty, and gives it back to the OS when that makes
    /// more than `retain_empty` empty arenas.
    ///
    /// # Safety
    /// `arena` is a live, empty arena of ours on the arena list; lock held (as `st`).
    unsafe fn count_empty_arena(&self, st: &mut LargeState, arena: *mut Arena, budget: &Budget) {
        st.empty_arenas += 1;
        if st.empty_arenas > self.retain_empty {
            st.empty_arenas -= 1;
            // SAFETY: per the contract; the arena is unregistered before it is unmapped.
            unsafe {
                unlink_node!(st.arenas, arena);
                self.unmap_region(&(*arena).header, (*arena).header.len.max(GRANULE), budget);
                drop(SysBox::from_raw_in(arena, System));
            }
        }
    }

    /// Frees every block, as if each had been given back: mappings of single blocks are
    /// unmapped, every arena becomes empty and those beyond `retain_empty` go back to the
    /// OS; the counters restart at zero. In checked mode the blocks that were allocated
    /// are filled with [`POISON`], as a free fills them.
    ///
    /// # Safety
    /// No block of this tier is used after this call.
    pub(crate) unsafe fn reset(&self, budget: &Budget) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        // SAFETY: mappings and arenas on the lists are live and ours; by the contract none
        // of their blocks is used any more; the lock is held.
        unsafe {
            self.unmap_every_huge(st, budget);
            st.empty_arenas = 0;
            let mut next = st.arenas;
            while let Some(a) = next.as_mut() {
                next = a.next;
                if self.checked {
                    let base = a.header.base as *mut u8;
                    a.buddy.for_each_allocated(|offset, len| {
                        ptr::write_bytes(base.add(offset as usize), POISON, len as usize);
                    });
                }
                a.buddy.clear();
                self.count_empty_arena(st, a, budget);
            }
        }
        st.in_use = 0;
        st.allocs = 0;
        st.frees = 0;
        self.publish(st);
    }

    /// Copies the counters to their lock-free mirrors (plain stores: the lock orders writers).
    fn publish(&self, st: &LargeState) {
        self.counters.in_use.store(st.in_use, Ordering::Relaxed);
        self.counters.allocs.store(st.allocs, Ordering::Relaxed);
        self.counters.frees.store(st.frees, Ordering::Relaxed);
    }

    /// # Safety
    /// `h` heads a live region of ours that nothing uses any more; lock held.
    unsafe fn unmap_region(&self, h: &RegionHeader, align: usize, budget: &Budget) {
        let (base, len) = (h.base, h.len);
        page_map::unregister(base, len);
        // SAFETY: per the contract; the region was mapped with this length and alignment.
        unsafe { os::unmap(NonNull::new_unchecked(base as *mut u8), len, align) };
        budget.release(len);
        self.counters.reserved.fetch_sub(len, Ordering::Relaxed);
        self.counters.regions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Checks this tier's invariants under its lock: every arena and mapping is
    /// registered, and the bytes in use are those of the allocated blocks.
    pub(crate) fn verify(&self) -> Result<(), String> {
        let st = lock(&self.state);
        let (mut in_use, mut empties) = (0usize, 0usize);
        let mut a = st.arenas;
        // SAFETY: arenas and mappings on the lists are live; we hold the lock.
        unsafe {
            while let Some(arena) = a.as_ref() {
                if page_map::lookup(arena.header.base).map(|p| p.as_ptr().cast::<Arena>())
                    != Some(a)
                {
                    return Err(format!(
                        "large arena {:#x}: the page map does not name it",
                        arena.header.base
                    ));
                }
                in_use += arena.buddy.allocated_bytes() as usize;
                empties += usize::from(arena.buddy.is_empty());
                a = arena.next;
            }
            let mut m = st.huge;
            while let Some(map) = m.as_ref() {
                if page_map::lookup(map.header.base).map(|p| p.as_ptr().cast::<Huge>()) != Some(m) {
                    return Err(format!(
                        "large mapping {:#x}: the page map does not name it",
                        map.header.base
                    ));
                }
                in_use += map.header.len;
                m = map.next;
            }
        }
        if in_use != st.in_use || empties != st.empty_arenas {
            return Err(format!(
                "large counters: in use {} (walked {in_use}), empty arenas {} ({empties})",
                st.in_use, st.empty_arenas
            ));
        }
        Ok(())
    }

    /// Unmaps every arena and mapping; used when the pool is dropped.
    ///
    /// # Safety
    /// No block of this tier is used after this call.
    pub(crate) unsafe fn release_all(&self, budget: &Budget) {
        let mut st = lock(&self.state);
        // SAFETY: per the contract nothing uses these regions; we hold the lock.
        unsafe {
            while let Some(a) = st.arenas.as_mut() {
                let arena: *mut Arena = a;
                unlink_node!(st.arenas, arena);
                self.unmap_region(&a.header, a.header.len.max(GRANULE), budget);
                drop(SysBox::from_raw_in(arena, System));
            }
            self.unmap_every_huge(&mut st, budget);
        }
        st.empty_arenas = 0;
    }

    /// Unmaps every mapping of a single block.
    ///
    /// # Safety
    /// None of those blocks is used any more; the lock is held (as `st`).
    unsafe fn unmap_every_huge(&self, st: &mut LargeState, budget: &Budget) {
        // SAFETY: mappings on the list are live and ours, unused per the contract; each is
        // unregistered (in `unmap_region`) before it is unmapped.
        unsafe {
            while let Some(m) = st.huge.as_mut() {
                let huge: *mut Huge = m;
                unlink_node!(st.huge, huge);
                self.unmap_region(&m.header, m.align, budget);
                drop(SysBox::from_raw_in(huge, System));
            }
        }
    }
}
