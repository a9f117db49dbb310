//! The medium tier: segregated fit with splitting and coalescing.
//!
//! Memory comes in regions (64 KiB-aligned mappings, registered in the page map) cut into
//! blocks with in-band boundary tags. Every block starts with a 16-byte header: the size
//! of the previous block (0 for a region's first block) and the block's own size with a
//! `USED` bit. The payload follows, 16-byte aligned; a free block keeps its free-list
//! links in its payload, so the smallest block is 32 bytes. A `USED` sentinel header of
//! size 0 closes each region.
//!
//! **Fit policy.** Free blocks sit in bins: the configured size classes split the sizes
//! into intervals (below the first class, between each pair, above the last), and each
//! interval into 8 equal sub-bins. A request of `need` bytes (payload + header, rounded to
//! 16) looks at the first few entries of its own sub-bin and takes the smallest that fits
//! (lowest address on ties); failing that, the next non-empty larger sub-bin, found in
//! O(1) from a bitmap, where every block fits, and takes the best of its first few. The
//! remainder of a larger block, if at least 32 bytes, becomes a free block again. This is
//! a good fit: the block used is at most about one sub-bin larger than the request, and
//! the split keeps only what was asked for. With `segregated_fit = false` all free blocks
//! share one list, searched in full for the best fit.
//!
//! **Coalescing.** A freed block merges with a free successor and a free predecessor
//! (found through the previous-size tag), so no two free blocks are ever adjacent. A
//! region that becomes wholly free goes back to the OS when more than `retain_empty`
//! regions are empty: its pages are decommitted and the mapping kept for the next region
//! the tier needs (checked mode unmaps it, so that a use after free faults). Regions have a fixed size (`medium.region_size`): geometric growth
//! would leave the newest, largest region mostly empty and reserved.
//!
//! **Thread caches.** In front of the tier, each thread caches free blocks per cache class
//! ([`CacheClasses`]; `medium.thread_cache_bytes`, 8 MiB by default, 0 for off). A request
//! above the largest small class, up to 64 KiB, aligned to at most 16, is rounded up to
//! its class (8 per doubling, so at most 12.5 % larger) and accounted at that size; a
//! thread's stack hands it out and takes it back without the lock, and the tier sees
//! batches. Other requests keep their exact size and come straight from the tier.
//!
//! Invariants, under the tier lock: the blocks of a region tile it exactly; each
//! header's previous-size equals the size of the block before it; a block is on a bin
//! iff it is free; with coalescing on, no two free blocks are adjacent; the usable bytes
//! of the used blocks equal `in_use + slack` (blocks outside the tier, thread caches
//! included, as accounted when they left, plus what cache-class blocks hold beyond
//! their class).

use std::alloc::System;
use std::ptr::{self, NonNull};

use allocator_api2::boxed::Box as SysBox;
use allocator_api2::vec::Vec as SysVec;

use super::budget::Budget;
use super::config::{MAX_MEDIUM_CLASSES, MEDIUM_QUANTUM, ResolvedConfig};
use super::intrusive::unlink_node;
use super::numa::NumaBinding;
use super::os::{self, GRANULE};
use super::page_map::{self, RegionHeader, RegionKind};
use super::small::POISON;
use super::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, lock};
use crate::error::{Error, OomReason};

const HEADER: usize = 16;
const MIN_BLOCK: usize = 32;
const USED: usize = 1;
const SUB_BINS: usize = 8;
const MAX_BINS: usize = (MAX_MEDIUM_CLASSES + 1) * SUB_BINS;
/// Entries of a sub-bin scanned for the best fit (bounded: each is a likely cache miss).
const SCAN_LIMIT: usize = 4;
/// Entries of the bin and class lookup tables: one per 16 bytes up to the largest medium
/// class the config accepts (`MAX_SMALL_CLASS_SIZE`..65536 in practice; larger classes
/// fall back to computing).
const LUT_LEN: usize = (1 << 16) / MEDIUM_QUANTUM + 1;
/// The most size classes of the per-thread medium caches: 16..=128 B by 16, then 8 per
/// doubling up to 64 KiB.
pub(crate) const MAX_CACHE_CLASSES: usize = 80;
/// Requests above this are never cached.
const CACHE_MAX_REQUEST: usize = 1 << 16;
/// The shallowest a thread's stack of one cache class is, whatever its share of the
/// cache's bytes: with fewer, the largest classes go to the tier on about every other
/// operation (measured with a 2 MiB cache: 79 ns per replace in `benches/pool.rs` (c)
/// with a depth of 1 for the classes above 32 KiB, 65 ns with 4, at the same reserved /
/// in-use ratio).
const MIN_CACHE_DEPTH: usize = 4;
/// The deepest a thread's stack of one cache class may be.
const MAX_CACHE_DEPTH: usize = 64;

#[repr(C)]
struct Header {
    prev_size: usize,
    size_flags: usize,
}

#[repr(C)]
struct FreeLinks {
    next: *mut Header,
    prev: *mut Header,
}

/// # Safety (for the helpers below)
/// `h` points to a block header inside a live region of this tier, under the tier lock.
#[inline]
unsafe fn size_of_block(h: *mut Header) -> usize {
    // SAFETY: see the helpers' contract.
    unsafe { (*h).size_flags & !USED }
}

#[inline]
unsafe fn is_used(h: *mut Header) -> bool {
    // SAFETY: see the helpers' contract.
    unsafe { (*h).size_flags & USED != 0 }
}

#[inline]
unsafe fn links(h: *mut Header) -> *mut FreeLinks {
    // SAFETY: a free block has at least MIN_BLOCK bytes, so its links fit after the header.
    unsafe { h.cast::<u8>().add(HEADER).cast() }
}

#[inline]
unsafe fn next_block(h: *mut Header) -> *mut Header {
    // SAFETY: blocks tile their region and a sentinel closes it, so the next header exists.
    unsafe { h.cast::<u8>().add(size_of_block(h)).cast() }
}

/// Metadata of one region; starts with the header the page map points to.
#[repr(C)]
struct RegionMeta {
    header: RegionHeader,
    next: *mut RegionMeta,
    prev: *mut RegionMeta,
    /// Checked mode: bit per 16 bytes, set where a live block's payload starts.
    live: SysVec<u64, System>,
    /// Checked mode: bit per 16 bytes, set where a freed payload started.
    freed: SysVec<u64, System>,
}

struct MediumState {
    bins: [*mut Header; MAX_BINS],
    nonempty: u128,
    regions: *mut RegionMeta,
    /// Regions given back to the OS (pages decommitted) but still mapped and registered,
    /// singly linked through `next`, for cheap reuse.
    decommitted: *mut RegionMeta,
    region_count: usize,
    empty_regions: usize,
    next_region_size: usize,
    /// Usable bytes of every block outside the tier, as accounted when it left: callers'
    /// blocks and the thread caches' blocks (at their cache class's size).
    in_use: usize,
    /// Bytes by which blocks that left at a cache class's size exceed it (a block is
    /// split only when the rest can be a block of its own).
    slack: usize,
    /// Usable bytes of blocks handed out by this tier straight to callers (the thread
    /// caches' blocks are counted by the threads).
    direct_in_use: usize,
    allocs: u64,
    frees: u64,
    class_allocs: [u64; MAX_MEDIUM_CLASSES],
    class_frees: [u64; MAX_MEDIUM_CLASSES],
    class_in_use: [usize; MAX_MEDIUM_CLASSES],
}

impl MediumState {
    /// No region yet; the first will be `region_size` bytes.
    fn new(region_size: usize) -> Self {
        MediumState {
            bins: [ptr::null_mut(); MAX_BINS],
            nonempty: 0,
            regions: ptr::null_mut(),
            decommitted: ptr::null_mut(),
            region_count: 0,
            empty_regions: 0,
            next_region_size: region_size,
            in_use: 0,
            slack: 0,
            direct_in_use: 0,
            allocs: 0,
            frees: 0,
            class_allocs: [0; MAX_MEDIUM_CLASSES],
            class_frees: [0; MAX_MEDIUM_CLASSES],
            class_in_use: [0; MAX_MEDIUM_CLASSES],
        }
    }
}

// SAFETY: the raw pointers name regions and blocks owned by this tier, only touched
// under the tier's mutex.
unsafe impl Send for MediumState {}

/// Counters of the medium tier, readable without the lock.
#[derive(Default)]
pub(crate) struct MediumCounters {
    pub allocs: AtomicU64,
    pub frees: AtomicU64,
    /// Bytes outside the tier, thread caches included (an upper bound of bytes in use).
    pub in_use: AtomicUsize,
    /// Bytes handed straight to callers (not through a thread cache).
    pub direct_in_use: AtomicUsize,
    pub reserved: AtomicUsize,
    pub regions: AtomicUsize,
}

/// The size classes of the per-thread medium caches (`thread_cache`). A cacheable request
/// (above the largest small class, at most `max` bytes, alignment at most 16) is rounded
/// up to its class, handed out with the class's size as its length, and accounted at that
/// size, whether it comes from a thread's cache or straight from the tier; so a block
/// freed with any length its caller may pass finds its class again without reading the
/// block. Built in a `const` context too: the global allocator's fast paths read its
/// grid as a constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CacheGrid {
    /// The smallest cacheable request: one byte above the largest small class, so that no
    /// request the small tier would take is ever cached here (`usize::MAX` when off).
    pub min: usize,
    /// The largest cacheable request (0 when off).
    pub max: usize,
    /// `max - min` (0 when off: no layout's size is `usize::MAX`).
    span: usize,
    pub count: usize,
    pub sizes: [usize; MAX_CACHE_CLASSES],
    /// `ceil(size / 16)` → cache class, for sizes up to `max`.
    pub lut: [u8; LUT_LEN],
}

impl CacheGrid {
    /// No cacheable request.
    pub(crate) const OFF: CacheGrid = CacheGrid {
        min: usize::MAX,
        max: 0,
        span: 0,
        count: 0,
        sizes: [0; MAX_CACHE_CLASSES],
        lut: [0; LUT_LEN],
    };

    /// The grid of a config: 16..=128 by 16, then 8 steps per doubling, up to the largest
    /// medium class or 64 KiB (the last class is exactly that), leaving out the classes
    /// at or below the largest small class. Off when `cfg` turns the caches off.
    pub(crate) const fn new(cfg: &ResolvedConfig) -> Self {
        let mut c = CacheGrid::OFF;
        if cfg.medium_cache_bytes == 0 || cfg.small_count == 0 || cfg.medium_count == 0 {
            return c;
        }
        let medium_max = cfg.medium_sizes[cfg.medium_count - 1];
        let max = if medium_max < CACHE_MAX_REQUEST {
            medium_max
        } else {
            CACHE_MAX_REQUEST
        };
        let min = cfg.small_sizes[cfg.small_count - 1] + 1;
        let mut size = 0;
        while size < max {
            let step = if size < 128 {
                16
            } else {
                (1 << (usize::BITS - 1 - size.leading_zeros())) / 8
            };
            size = if size + step < max { size + step } else { max };
            if size >= min {
                c.sizes[c.count] = size;
                c.count += 1;
            }
        }
        if c.count == 0 {
            return c;
        }
        let (mut i, mut j) = (0, 0);
        while i <= max / MEDIUM_QUANTUM {
            while c.sizes[j] < i * MEDIUM_QUANTUM {
                j += 1;
            }
            c.lut[i] = j as u8;
            i += 1;
        }
        c.min = min;
        c.max = max;
        c.span = max - min;
        c
    }

    /// The cache class of a cacheable request of `size` bytes (`min..=max`).
    #[inline(always)]
    pub(crate) fn class_of(&self, size: usize) -> usize {
        debug_assert!(size >= self.min && size <= self.max);
        // SAFETY: `size <= max <= 65536`, so the index is within the table.
        (unsafe { *self.lut.get_unchecked(size.div_ceil(MEDIUM_QUANTUM)) }) as usize
    }

    /// Whether a request goes through the cache classes.
    #[inline(always)]
    pub(crate) fn serves(&self, size: usize, align: usize) -> bool {
        size.wrapping_sub(self.min) <= self.span && align <= MEDIUM_QUANTUM
    }
}

/// The cache classes of one pool: the grid, and per class the depth of a thread's stack
/// and the configured medium class it counts under.
pub(crate) struct CacheClasses {
    pub grid: CacheGrid,
    /// How many blocks a thread keeps at most per class.
    pub depths: [usize; MAX_CACHE_CLASSES],
    /// The configured medium class (for the statistics) of each cache class.
    pub stat_class: [u8; MAX_CACHE_CLASSES],
}

impl std::ops::Deref for CacheClasses {
    type Target = CacheGrid;

    fn deref(&self) -> &CacheGrid {
        &self.grid
    }
}

impl CacheClasses {
    fn new(cfg: &ResolvedConfig, class_lut: &[u8; LUT_LEN]) -> Self {
        let grid = CacheGrid::new(cfg);
        let mut c = CacheClasses {
            grid,
            depths: [0; MAX_CACHE_CLASSES],
            stat_class: [0; MAX_CACHE_CLASSES],
        };
        if let Some(per_class) = cfg.medium_cache_bytes.checked_div(grid.count) {
            for j in 0..grid.count {
                c.depths[j] = (per_class / grid.sizes[j]).clamp(MIN_CACHE_DEPTH, MAX_CACHE_DEPTH);
                c.stat_class[j] = class_lut[grid.sizes[j] / MEDIUM_QUANTUM];
            }
        }
        c
    }
}

/// What [`MediumTier::verify`] counted in one region.
#[derive(Default)]
struct RegionWalk {
    free_blocks: usize,
    /// Usable bytes of the blocks in use.
    in_use: usize,
    /// Whether the region is one free block.
    empty: bool,
}

/// The medium tier of one pool.
pub(crate) struct MediumTier {
    pool_id: u64,
    /// The size classes of the per-thread caches.
    pub cache: CacheClasses,
    state: Mutex<MediumState>,
    pub counters: MediumCounters,
    /// `size / 16` → bin, for sizes below the largest class.
    bin_lut: [u8; LUT_LEN],
    bin_lut_len: usize,
    /// `ceil(usable / 16)` → class index.
    class_lut: [u8; LUT_LEN],
    /// Bin boundaries: MIN_BLOCK, the classes, then the largest possible block.
    bounds: [usize; MAX_MEDIUM_CLASSES + 2],
    bound_count: usize,
    classes: [usize; MAX_MEDIUM_CLASSES],
    class_count: usize,
    pub max_size: usize,
    segregated: bool,
    coalescing: bool,
    checked: bool,
    huge_pages: bool,
    /// Where the tier's regions are placed (NUMA).
    numa: NumaBinding,
    retain_empty: usize,
}

impl MediumTier {
    pub(crate) fn new(pool_id: u64, cfg: &ResolvedConfig) -> Self {
        let classes_in = cfg.medium_sizes();
        let (bounds, n) = Self::bin_bounds(classes_in, cfg.region_size);
        let mut classes = [0; MAX_MEDIUM_CLASSES];
        classes[..classes_in.len()].copy_from_slice(classes_in);
        let max_size = *classes_in.last().expect("validated non-empty");
        let lut_sizes = (max_size / MEDIUM_QUANTUM).min(LUT_LEN);
        let mut bin_lut = [0u8; LUT_LEN];
        for (i, b) in bin_lut.iter_mut().enumerate().take(lut_sizes) {
            *b = Self::compute_bin(&bounds[..n], cfg.segregated_fit, i * MEDIUM_QUANTUM) as u8;
        }
        let mut class_lut = [0u8; LUT_LEN];
        for (i, c) in class_lut.iter_mut().enumerate() {
            let usable = i * MEDIUM_QUANTUM;
            *c = classes_in
                .iter()
                .position(|&c| c >= usable)
                .unwrap_or(classes_in.len() - 1) as u8;
        }
        MediumTier {
            cache: CacheClasses::new(cfg, &class_lut),
            bin_lut,
            bin_lut_len: lut_sizes,
            class_lut,
            pool_id,
            state: Mutex::new(MediumState::new(cfg.region_size)),
            counters: MediumCounters::default(),
            bounds,
            bound_count: n,
            classes,
            class_count: classes_in.len(),
            max_size,
            segregated: cfg.segregated_fit,
            coalescing: cfg.coalescing,
            checked: cfg.checked,
            huge_pages: cfg.use_huge_pages,
            numa: cfg.numa,
            retain_empty: cfg.retain_empty,
        }
    }

    /// The bins' lower bounds: the minimum block, each distinct class size, and one past
    /// the largest region; with how many there are. Regions are `region_size` bytes; one
    /// may be larger only to hold a single oversized aligned request, and no block is ever
    /// larger than its region.
    fn bin_bounds(
        classes: &[usize],
        region_size: usize,
    ) -> ([usize; MAX_MEDIUM_CLASSES + 2], usize) {
        let max_region = region_size.max(2 * (classes.last().copied().unwrap_or(0) + 4096 + 64));
        let mut bounds = [0; MAX_MEDIUM_CLASSES + 2];
        bounds[0] = MIN_BLOCK;
        let mut n = 1;
        for &c in classes {
            if c > bounds[n - 1] {
                bounds[n] = c;
                n += 1;
            }
        }
        bounds[n] = max_region + 1;
        (bounds, n + 1)
    }

    /// Whether this tier serves `size` bytes at `align`.
    #[inline]
    pub(crate) fn serves(&self, size: usize, align: usize) -> bool {
        size <= self.max_size && align <= 4096
    }

    /// The bin of a free block of `size` bytes (a multiple of 16).
    #[inline]
    fn bin_of(&self, size: usize) -> usize {
        let i = size / MEDIUM_QUANTUM;
        if i < self.bin_lut_len {
            return self.bin_lut[i] as usize;
        }
        Self::compute_bin(&self.bounds[..self.bound_count], self.segregated, size)
    }

    fn compute_bin(bounds: &[usize], segregated: bool, size: usize) -> usize {
        if !segregated {
            return 0;
        }
        let mut i = 0;
        while i + 2 < bounds.len() && size >= bounds[i + 1] {
            i += 1;
        }
        let (lo, hi) = (bounds[i], bounds[i + 1]);
        let sub = ((size.saturating_sub(lo)) * SUB_BINS / (hi - lo)).min(SUB_BINS - 1);
        i * SUB_BINS + sub
    }

    /// The size class of a block whose caller sees `usable` bytes (at most `max_size`).
    #[inline]
    fn class_of(&self, usable: usize) -> usize {
        self.class_lut[usable.div_ceil(MEDIUM_QUANTUM).min(LUT_LEN - 1)] as usize
    }

    /// The bytes of a block handed to the caller: its payload, capped at the largest
    /// medium request (so that any length up to it routes back to this tier).
    fn usable(&self, block: usize) -> usize {
        (block - HEADER).min(self.max_size)
    }

    /// The block size (header included) a request of `size` bytes uses.
    fn need_for(size: usize) -> Option<usize> {
        Some(os::round_up(size.checked_add(HEADER)?, MEDIUM_QUANTUM)?.max(MIN_BLOCK))
    }

    /// # Safety
    /// `h` is a free block not on any bin; lock held (`st`).
    unsafe fn insert(&self, st: &mut MediumState, h: *mut Header) {
        // SAFETY: per the contract, `h` is a free block of at least MIN_BLOCK bytes.
        unsafe {
            let b = self.bin_of(size_of_block(h));
            let l = links(h);
            (*l).next = st.bins[b];
            (*l).prev = ptr::null_mut();
            if let Some(head) = st.bins[b].as_mut() {
                (*links(head)).prev = h;
            }
            st.bins[b] = h;
            st.nonempty |= 1 << b;
        }
    }

    /// # Safety
    /// `h` is a free block on its bin; lock held (`st`).
    unsafe fn unlink(&self, st: &mut MediumState, h: *mut Header) {
        // SAFETY: per the contract, `h` and its list neighbours are free blocks on one bin.
        unsafe {
            let b = self.bin_of(size_of_block(h));
            let l = links(h);
            let (n, p) = ((*l).next, (*l).prev);
            match p.as_mut() {
                Some(p) => (*links(p)).next = n,
                None => st.bins[b] = n,
            }
            if let Some(n) = n.as_mut() {
                (*links(n)).prev = p;
            }
            if st.bins[b].is_null() {
                st.nonempty &= !(1 << b);
            }
        }
    }

    /// A free block of at least `need` bytes, unlinked from its bin.
    fn find(&self, st: &mut MediumState, need: usize) -> Option<*mut Header> {
        let b = self.bin_of(need);
        if let Some(h) = self.best_in_bin(st, b, need) {
            return Some(h);
        }
        let above = if b + 1 >= MAX_BINS {
            0
        } else {
            st.nonempty & !((1u128 << (b + 1)) - 1)
        };
        if above == 0 {
            return None;
        }
        let h = self.best_in_bin(st, above.trailing_zeros() as usize, need);
        debug_assert!(h.is_some(), "every block of a larger bin fits");
        h
    }

    /// The best of the first `SCAN_LIMIT` blocks of bin `b` that hold `need` bytes (the
    /// smallest, then the lowest address), unlinked.
    fn best_in_bin(&self, st: &mut MediumState, b: usize, need: usize) -> Option<*mut Header> {
        let limit = if self.segregated {
            SCAN_LIMIT
        } else {
            usize::MAX
        };
        let mut h = st.bins[b];
        let mut best: Option<(usize, *mut Header)> = None;
        let mut scanned = 0;
        // SAFETY: bin entries are free blocks of live regions; we hold the lock.
        unsafe {
            while !h.is_null() && scanned < limit {
                let size = size_of_block(h);
                if size >= need && best.is_none_or(|(bs, bh)| size < bs || (size == bs && h < bh)) {
                    best = Some((size, h));
                    if size == need {
                        break;
                    }
                }
                h = (*links(h)).next;
                scanned += 1;
            }
            let (_, h) = best?;
            self.unlink(st, h);
            Some(h)
        }
    }

    /// Takes a free block for `size` bytes at `align` (growing the tier if needed), splits
    /// off what it does not need and marks it used. Counts nothing.
    fn carve(
        &self,
        st: &mut MediumState,
        size: usize,
        align: usize,
        budget: &Budget,
    ) -> Result<*mut Header, OomReason> {
        let need = Self::need_for(size).ok_or(OomReason::LayoutTooLarge)?;
        let search = if align <= MEDIUM_QUANTUM {
            need
        } else {
            need + align + MIN_BLOCK
        };
        let h = match self.find(st, search) {
            Some(h) => h,
            None => {
                self.grow(st, search, budget)?;
                self.find(st, search)
                    .expect("a fresh region holds the request")
            }
        };
        // SAFETY: `h` is a free block of at least `search` bytes, unlinked, in a live
        // region of ours; we hold the lock.
        unsafe {
            if (*h).prev_size == 0 && is_used(next_block(h)) && size_of_block(next_block(h)) == 0 {
                st.empty_regions -= 1;
            }
            let h = if align > MEDIUM_QUANTUM {
                self.align_block(st, h, align)
            } else {
                h
            };
            let total = size_of_block(h);
            debug_assert!(total >= need);
            let block = if total - need >= MIN_BLOCK {
                let rest = h.cast::<u8>().add(need).cast::<Header>();
                (*rest).prev_size = need;
                (*rest).size_flags = total - need;
                (*next_block(rest)).prev_size = total - need;
                self.insert(st, rest);
                need
            } else {
                total
            };
            (*h).size_flags = block | USED;
            Ok(h)
        }
    }

    /// The part of the free, unlinked block `h` whose payload is aligned to `align`: a
    /// gap in front of it (at least a minimum block) goes back to the bins.
    ///
    /// # Safety
    /// `h` is a free block of ours, unlinked and large enough for the alignment gap and
    /// the request (`carve` searched for `need + align + MIN_BLOCK`); the lock is held.
    unsafe fn align_block(
        &self,
        st: &mut MediumState,
        h: *mut Header,
        align: usize,
    ) -> *mut Header {
        let start = h as usize;
        let mut payload = os::round_up(start + HEADER, align).expect("inside a region");
        if payload - HEADER != start && payload - HEADER - start < MIN_BLOCK {
            payload += align;
        }
        let gap = payload - HEADER - start;
        if gap == 0 {
            return h;
        }
        // SAFETY: the gap and the rest lie inside the block (the caller's contract), so
        // the headers written are inside it and its successor's.
        unsafe {
            let total = size_of_block(h);
            let rest = (payload - HEADER) as *mut Header;
            (*h).size_flags = gap;
            (*rest).prev_size = gap;
            (*rest).size_flags = total - gap;
            (*next_block(rest)).prev_size = total - gap;
            self.insert(st, h);
            rest
        }
    }

    /// Gives a used block back: merges it with free neighbours, and returns its region to
    /// the OS if that leaves the region empty beyond `retain_empty`. Counts nothing.
    ///
    /// # Safety
    /// `h` is the header of a used block of ours that nothing uses any more; lock held.
    unsafe fn release(&self, st: &mut MediumState, h: *mut Header, budget: &Budget) {
        // SAFETY: per the contract; neighbours are found through the boundary tags.
        unsafe {
            let mut h = h;
            let mut total = size_of_block(h);
            (*h).size_flags = total;
            if self.coalescing {
                let n = next_block(h);
                if !is_used(n) {
                    self.unlink(st, n);
                    total += size_of_block(n);
                }
                if (*h).prev_size != 0 {
                    let prev = h.cast::<u8>().sub((*h).prev_size).cast::<Header>();
                    if !is_used(prev) {
                        self.unlink(st, prev);
                        total += size_of_block(prev);
                        h = prev;
                    }
                }
                (*h).size_flags = total;
                (*next_block(h)).prev_size = total;
            }
            let n = next_block(h);
            if (*h).prev_size == 0 && is_used(n) && size_of_block(n) == 0 {
                st.empty_regions += 1;
                if st.empty_regions > self.retain_empty {
                    st.empty_regions -= 1;
                    let r = self.region_of(h as usize).expect("our block");
                    self.free_region(st, r, budget);
                    return;
                }
            }
            self.insert(st, h);
        }
    }

    /// Counts a block handed straight to a caller with `usable` bytes accounted (the
    /// caller adds them to `in_use`).
    fn count_alloc(&self, st: &mut MediumState, usable: usize) {
        st.direct_in_use += usable;
        let ci = self.class_of(usable);
        st.class_allocs[ci] += 1;
        st.class_in_use[ci] += usable;
        st.allocs += 1;
    }

    /// Counts a block given back straight by a caller with `usable` bytes accounted (the
    /// caller takes them off `in_use`).
    fn count_free(&self, st: &mut MediumState, usable: usize) {
        st.direct_in_use -= usable;
        let ci = self.class_of(usable);
        st.class_frees[ci] += 1;
        st.class_in_use[ci] -= usable;
        st.frees += 1;
    }

    /// Allocates `size` bytes at `align` at their exact size (no cache class); returns
    /// the payload and its usable length.
    pub(crate) fn allocate(
        &self,
        size: usize,
        align: usize,
        budget: &Budget,
    ) -> Result<(NonNull<u8>, usize), OomReason> {
        let mut st = lock(&self.state);
        let h = self.carve(&mut st, size, align, budget)?;
        // SAFETY: `h` is a used block of ours just carved; we hold the lock.
        unsafe {
            let payload = h.cast::<u8>().add(HEADER);
            let usable = self.usable(size_of_block(h));
            st.in_use += usable;
            self.count_alloc(&mut st, usable);
            if self.checked {
                let r = &mut *self.region_of(payload as usize).expect("our block");
                let bit = (payload as usize - r.header.base) / MEDIUM_QUANTUM;
                r.live[bit / 64] |= 1 << (bit % 64);
                r.freed[bit / 64] &= !(1 << (bit % 64));
            }
            self.publish(&st);
            Ok((NonNull::new_unchecked(payload), usable))
        }
    }

    /// Frees a block allocated by [`allocate`](Self::allocate). In checked mode the
    /// pointer and layout are validated first and a bad one changes nothing.
    ///
    /// # Safety
    /// Outside checked mode: `p` was returned by [`allocate`](Self::allocate) with this
    /// `size` and is not used afterwards. In checked mode any pointer may be passed.
    pub(crate) unsafe fn deallocate(
        &self,
        p: NonNull<u8>,
        size: usize,
        budget: &Budget,
    ) -> Result<(), Error> {
        let addr = p.as_ptr() as usize;
        let mut st = lock(&self.state);
        if self.checked {
            self.validate(addr, size)?;
        }
        // SAFETY: `p` is the payload of a live block of ours (validated in checked mode,
        // the caller's contract otherwise); we hold the lock.
        unsafe {
            let h = p.as_ptr().sub(HEADER).cast::<Header>();
            let block = size_of_block(h);
            if self.checked {
                let r = &mut *self.region_of(addr).expect("validated");
                let bit = (addr - r.header.base) / MEDIUM_QUANTUM;
                r.live[bit / 64] &= !(1 << (bit % 64));
                r.freed[bit / 64] |= 1 << (bit % 64);
                ptr::write_bytes(p.as_ptr(), POISON, block - HEADER);
            }
            let usable = self.usable(block);
            st.in_use -= usable;
            self.count_free(&mut st, usable);
            self.release(&mut st, h, budget);
        }
        self.publish(&st);
        Ok(())
    }

    /// Carves a block of cache class `j`, accounting it at the class's size.
    fn carve_class(
        &self,
        st: &mut MediumState,
        j: usize,
        budget: &Budget,
    ) -> Result<*mut u8, OomReason> {
        let c = self.cache.sizes[j];
        let h = self.carve(st, c, MEDIUM_QUANTUM, budget)?;
        // SAFETY: `h` is a used block just carved for `c` bytes, so it holds them.
        let usable = self.usable(unsafe { size_of_block(h) });
        st.in_use += c;
        st.slack += usable - c;
        // SAFETY: the payload follows the header inside the block.
        Ok(unsafe { h.cast::<u8>().add(HEADER) })
    }

    /// Gives back a block of cache class `j` accounted at the class's size.
    ///
    /// # Safety
    /// `p` is the payload of a block carved by `carve_class(j)`, not used any more; lock held.
    unsafe fn release_class(&self, st: &mut MediumState, p: *mut u8, j: usize, budget: &Budget) {
        // SAFETY: per the contract.
        unsafe {
            let h = p.sub(HEADER).cast::<Header>();
            let c = self.cache.sizes[j];
            st.in_use -= c;
            st.slack -= self.usable(size_of_block(h)) - c;
            self.release(st, h, budget);
        }
    }

    /// Fills `out` (at least its first slot) with free blocks of cache class `j` for a
    /// thread's cache, under one lock; returns how many. They count as outside the tier
    /// but not as allocations (the thread counts those when it hands them out).
    pub(crate) fn take_for_cache(
        &self,
        j: usize,
        out: &mut [*mut u8],
        budget: &Budget,
    ) -> Result<usize, OomReason> {
        let mut st = lock(&self.state);
        let mut n = 0;
        for slot in out.iter_mut() {
            match self.carve_class(&mut st, j, budget) {
                Ok(p) => *slot = p,
                Err(e) if n == 0 => {
                    self.publish(&st);
                    return Err(e);
                }
                Err(_) => break,
            }
            n += 1;
        }
        self.publish(&st);
        Ok(n)
    }

    /// Takes back free blocks of cache class `j` from a thread's cache, under one lock.
    ///
    /// # Safety
    /// Each block was filled in by [`take_for_cache`](Self::take_for_cache) or
    /// [`allocate_class`](Self::allocate_class) for class `j` of this tier and is not
    /// used any more.
    pub(crate) unsafe fn give_from_cache(&self, j: usize, blocks: &[*mut u8], budget: &Budget) {
        let mut st = lock(&self.state);
        for &p in blocks {
            // SAFETY: per the contract; we hold the lock.
            unsafe { self.release_class(&mut st, p, j, budget) };
        }
        self.publish(&st);
    }

    /// Allocates a block of cache class `j` straight to a caller (a thread without a
    /// cache), counted as an allocation of the class's size.
    pub(crate) fn allocate_class(
        &self,
        j: usize,
        budget: &Budget,
    ) -> Result<NonNull<u8>, OomReason> {
        let mut st = lock(&self.state);
        let p = self.carve_class(&mut st, j, budget)?;
        self.count_alloc(&mut st, self.cache.sizes[j]);
        self.publish(&st);
        // SAFETY: a payload inside a mapped region is never null.
        Ok(unsafe { NonNull::new_unchecked(p) })
    }

    /// Frees a block of cache class `j` given back straight by a caller.
    ///
    /// # Safety
    /// `p` came from this tier for a cacheable request of class `j` and is not used any more.
    pub(crate) unsafe fn deallocate_class(&self, p: NonNull<u8>, j: usize, budget: &Budget) {
        let mut st = lock(&self.state);
        self.count_free(&mut st, self.cache.sizes[j]);
        // SAFETY: per the contract; we hold the lock.
        unsafe { self.release_class(&mut st, p.as_ptr(), j, budget) };
        self.publish(&st);
    }

    /// Returns every wholly free region to the OS, however many `retain_empty` would keep
    /// (decommitted with the mapping kept for reuse; unmapped in checked mode). Returns the
    /// bytes released.
    pub(crate) fn trim(&self, budget: &Budget) -> usize {
        let mut st = lock(&self.state);
        let mut released = 0;
        let mut r = st.regions;
        while !r.is_null() {
            // SAFETY: `r` is a live region on our list and we hold the lock; its first
            // block starts at the region base and the sentinel closes it.
            unsafe {
                let next = (*r).next;
                let first = ((*r).header.base as *mut u8).cast::<Header>();
                let after = next_block(first);
                if !is_used(first) && is_used(after) && size_of_block(after) == 0 {
                    // Wholly free: take its one block off its bin, then the region goes.
                    self.unlink(&mut st, first);
                    st.empty_regions -= 1;
                    released += (*r).header.len;
                    self.free_region(&mut st, r, budget);
                }
                r = next;
            }
        }
        self.publish(&st);
        released
    }

    /// Checked mode: `addr` must start a live block of ours whose size fits `size`.
    fn validate(&self, addr: usize, size: usize) -> Result<(), Error> {
        let foreign = Error::ForeignPointer { address: addr };
        let r = self
            .region_of(addr)
            .ok_or(Error::ForeignPointer { address: addr })?;
        // SAFETY: `region_of` found a live region of ours; we hold the tier lock.
        let r = unsafe { &*r };
        let off = addr - r.header.base;
        if !off.is_multiple_of(MEDIUM_QUANTUM) || off < HEADER {
            return Err(foreign);
        }
        let bit = off / MEDIUM_QUANTUM;
        if r.live[bit / 64] & (1 << (bit % 64)) == 0 {
            return Err(if r.freed[bit / 64] & (1 << (bit % 64)) != 0 {
                Error::DoubleFree { address: addr }
            } else {
                foreign
            });
        }
        // SAFETY: a live payload start has its header 16 bytes before it.
        let block = unsafe { size_of_block((addr - HEADER) as *mut Header) };
        let need = Self::need_for(size).unwrap_or(usize::MAX);
        if need > block || block >= need + MIN_BLOCK {
            return Err(Error::LayoutMismatch {
                address: addr,
                block_size: block - HEADER,
                layout_size: size,
            });
        }
        Ok(())
    }

    fn region_of(&self, addr: usize) -> Option<*mut RegionMeta> {
        let h = page_map::lookup_ref(addr)?;
        (h.pool_id == self.pool_id && h.kind == RegionKind::MediumRegion)
            .then(|| page_map::lookup(addr).expect("just found").as_ptr().cast())
    }

    fn grow(&self, st: &mut MediumState, need: usize, budget: &Budget) -> Result<(), OomReason> {
        let len = os::round_up(need + HEADER, GRANULE)
            .ok_or(OomReason::LayoutTooLarge)?
            .max(st.next_region_size);
        // SAFETY: decommitted regions are live metadata of ours, owned by this list; we
        // hold the lock.
        if let Some(r) = unsafe { st.decommitted.as_mut() }.filter(|r| r.header.len >= len) {
            budget.reserve(r.header.len)?;
            let meta: *mut RegionMeta = r;
            st.decommitted = r.next;
            // SAFETY: the region is mapped, registered and wholly ours.
            unsafe { self.install_region(st, meta) };
            return Ok(());
        }
        budget.reserve(len)?;
        let Some(base) = os::map_placed(len, GRANULE, self.huge_pages, self.numa) else {
            budget.release(len);
            return Err(OomReason::OsRefused);
        };
        let bits = if self.checked {
            (len / MEDIUM_QUANTUM).div_ceil(64)
        } else {
            0
        };
        let mut live = SysVec::new_in(System);
        live.resize(bits, 0);
        let mut freed = SysVec::new_in(System);
        freed.resize(bits, 0);
        let meta = SysBox::into_raw(SysBox::new_in(
            RegionMeta {
                header: RegionHeader {
                    pool_id: self.pool_id,
                    kind: RegionKind::MediumRegion,
                    base: base.as_ptr() as usize,
                    len,
                },
                next: st.regions,
                prev: ptr::null_mut(),
                live,
                freed,
            },
            System,
        ));
        if !page_map::register(base.as_ptr() as usize, len, meta.cast()) {
            // SAFETY: `meta` and `base` were made above and published nowhere.
            unsafe {
                drop(SysBox::from_raw_in(meta, System));
                os::unmap(base, len, GRANULE);
            }
            budget.release(len);
            return Err(OomReason::OsRefused);
        }
        // SAFETY: the region is fresh, mapped, registered and ours.
        unsafe { self.install_region(st, meta) };
        Ok(())
    }

    /// Links a region into the live list as one free block closed by a sentinel.
    ///
    /// # Safety
    /// `meta` names a mapped, registered region of ours on no list, whose budget is
    /// reserved; lock held.
    unsafe fn install_region(&self, st: &mut MediumState, meta: *mut RegionMeta) {
        // SAFETY: per the contract the region and its metadata are ours alone.
        unsafe {
            let (base, len) = ((*meta).header.base as *mut u8, (*meta).header.len);
            (*meta).prev = ptr::null_mut();
            (*meta).next = st.regions;
            if let Some(old) = st.regions.as_mut() {
                old.prev = meta;
            }
            st.regions = meta;
            let first = base.cast::<Header>();
            let body = len - HEADER;
            (*first).prev_size = 0;
            (*first).size_flags = body;
            let sentinel = base.add(body).cast::<Header>();
            (*sentinel).prev_size = body;
            (*sentinel).size_flags = USED;
            self.insert(st, first);
            st.region_count += 1;
            st.empty_regions += 1;
            self.counters.reserved.fetch_add(len, Ordering::Relaxed);
            self.counters
                .regions
                .store(st.region_count, Ordering::Relaxed);
        }
    }

    /// # Safety
    /// `r` is a live, wholly free region of ours whose free block is on no bin; lock held.
    unsafe fn free_region(&self, st: &mut MediumState, r: *mut RegionMeta, budget: &Budget) {
        // SAFETY: per the contract; after unregistering, no lookup reaches the region.
        unsafe {
            unlink_node!(st.regions, r);
            let (base, len) = ((*r).header.base, (*r).header.len);
            if self.checked {
                // Unmap, so that a use after free faults.
                page_map::unregister(base, len);
                os::unmap(NonNull::new_unchecked(base as *mut u8), len, GRANULE);
                drop(SysBox::from_raw_in(r, System));
            } else {
                // Decommit but keep the mapping for reuse by `grow`.
                os::decommit(NonNull::new_unchecked(base as *mut u8), len);
                (*r).prev = ptr::null_mut();
                (*r).next = st.decommitted;
                st.decommitted = r;
            }
            budget.release(len);
            st.region_count -= 1;
            self.counters.reserved.fetch_sub(len, Ordering::Relaxed);
            self.counters
                .regions
                .store(st.region_count, Ordering::Relaxed);
        }
    }

    /// Copies the counters to their lock-free mirrors (plain stores: the lock orders writers).
    fn publish(&self, st: &MediumState) {
        self.counters.in_use.store(st.in_use, Ordering::Relaxed);
        self.counters
            .direct_in_use
            .store(st.direct_in_use, Ordering::Relaxed);
        self.counters.allocs.store(st.allocs, Ordering::Relaxed);
        self.counters.frees.store(st.frees, Ordering::Relaxed);
    }

    /// Per-class figures: (class size, allocations, frees, bytes in use).
    pub(crate) fn class_figures(&self) -> SysVec<(usize, u64, u64, usize), System> {
        let st = lock(&self.state);
        let mut v = SysVec::new_in(System);
        for i in 0..self.class_count {
            v.push((
                self.classes[i],
                st.class_allocs[i],
                st.class_frees[i],
                st.class_in_use[i],
            ));
        }
        v
    }

    /// Checks this tier's invariants (module doc) under the tier lock: blocks tile each
    /// region, tags agree, free blocks are exactly the binned ones, counters match.
    pub(crate) fn verify(&self) -> Result<(), String> {
        let st = lock(&self.state);
        let (mut free_blocks, mut in_use, mut empties, mut regions) =
            (0usize, 0usize, 0usize, 0usize);
        let mut r = st.regions;
        while !r.is_null() {
            // SAFETY: regions on the list are live; we hold the lock.
            let meta = unsafe { &*r };
            let walked = self.verify_region(meta)?;
            free_blocks += walked.free_blocks;
            in_use += walked.in_use;
            empties += usize::from(walked.empty);
            regions += 1;
            r = meta.next;
        }
        let binned = self.verify_bins(&st, free_blocks)?;
        if binned != free_blocks {
            return Err(format!(
                "medium: {free_blocks} free blocks, {binned} binned"
            ));
        }
        if in_use != st.in_use + st.slack
            || empties != st.empty_regions
            || regions != st.region_count
        {
            return Err(format!(
                "medium counters: in use {} + slack {} (walked {in_use}), empty regions {} ({empties}), regions {} ({regions})",
                st.in_use, st.slack, st.empty_regions, st.region_count
            ));
        }
        Ok(())
    }

    /// Walks the blocks of one live region (the caller holds the lock), checking the
    /// boundary tags, the sentinel and, with coalescing, that no two free blocks touch.
    fn verify_region(&self, meta: &RegionMeta) -> Result<RegionWalk, String> {
        let (base, len) = (meta.header.base, meta.header.len);
        let end = base + len - HEADER;
        let mut walk = RegionWalk::default();
        let (mut h, mut prev_size, mut prev_free, mut blocks) = (base, 0usize, false, 0usize);
        while h < end {
            // SAFETY: `h` is a block header inside the region (checked against `end`).
            let (ps, size, used) = unsafe {
                let hp = h as *mut Header;
                ((*hp).prev_size, size_of_block(hp), is_used(hp))
            };
            if ps != prev_size || size < MIN_BLOCK || size % MEDIUM_QUANTUM != 0 || h + size > end {
                return Err(format!(
                    "medium block {h:#x}: prev {ps} (want {prev_size}), size {size}"
                ));
            }
            if used {
                walk.in_use += self.usable(size);
            } else {
                if prev_free && self.coalescing {
                    return Err(format!("medium block {h:#x}: two free neighbours"));
                }
                walk.free_blocks += 1;
            }
            prev_free = !used;
            prev_size = size;
            blocks += 1;
            h += size;
        }
        // SAFETY: `end` is the sentinel's address inside the region.
        let sentinel_ok = h == end
            && unsafe {
                (*(end as *mut Header)).size_flags == USED
                    && (*(end as *mut Header)).prev_size == prev_size
            };
        if !sentinel_ok {
            return Err(format!(
                "medium region {base:#x}: blocks do not end at the sentinel"
            ));
        }
        walk.empty = blocks == 1 && prev_free;
        Ok(walk)
    }

    /// Checks every bin's list (the caller holds the lock, `st`): free blocks of the bin's
    /// sizes, linked both ways, no more of them than the `free_blocks` the regions hold.
    /// How many blocks are binned.
    fn verify_bins(&self, st: &MediumState, free_blocks: usize) -> Result<usize, String> {
        let mut binned = 0;
        for (b, &head) in st.bins.iter().enumerate() {
            if head.is_null() != (st.nonempty & (1 << b) == 0) {
                return Err(format!("medium bin {b}: bitmap disagrees with the list"));
            }
            let (mut h, mut prev) = (head, ptr::null_mut());
            while !h.is_null() {
                // SAFETY: binned blocks are free blocks of live regions; we hold the lock.
                let (size, used, back, next) = unsafe {
                    (
                        size_of_block(h),
                        is_used(h),
                        (*links(h)).prev,
                        (*links(h)).next,
                    )
                };
                if used || self.bin_of(size) != b || back != prev || binned > free_blocks {
                    return Err(format!(
                        "medium bin {b}: bad entry {h:p} (size {size}, used {used})"
                    ));
                }
                binned += 1;
                prev = h;
                h = next;
            }
        }
        Ok(binned)
    }

    /// Makes every region one free block again, as if every block had been given back:
    /// the empty regions beyond `retain_empty` go back to the OS, and the counters
    /// restart at zero. In checked mode the regions kept are filled with [`POISON`], and
    /// the blocks that were live are marked freed, so that a late free of one is a
    /// double free.
    ///
    /// # Safety
    /// No block of this tier is used after this call, and no thread cache gives one back
    /// to the tier (the pool's thread-cache id has changed).
    pub(crate) unsafe fn reset(&self, budget: &Budget) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.bins = [ptr::null_mut(); MAX_BINS];
        st.nonempty = 0;
        let mut next = std::mem::replace(&mut st.regions, ptr::null_mut());
        st.region_count = 0;
        st.empty_regions = 0;
        // SAFETY: every region on the list is live metadata of ours, and by the contract
        // none of its blocks is used any more; the lock is held.
        while let Some(r) = unsafe { next.as_mut() } {
            next = r.next;
            for (live, freed) in r.live.iter_mut().zip(r.freed.iter_mut()) {
                *freed |= std::mem::take(live);
            }
            let (base, len) = (r.header.base, r.header.len);
            // `install_region` counts the region as reserved again.
            self.counters.reserved.fetch_sub(len, Ordering::Relaxed);
            // SAFETY: as above; the region is off every list and its bytes are ours.
            unsafe {
                if self.checked && st.empty_regions < self.retain_empty {
                    ptr::write_bytes(base as *mut u8, POISON, len);
                }
                self.install_region(st, r);
                if st.empty_regions > self.retain_empty {
                    st.empty_regions -= 1;
                    self.unlink(st, base as *mut Header);
                    self.free_region(st, r, budget);
                }
            }
        }
        st.in_use = 0;
        st.slack = 0;
        st.direct_in_use = 0;
        st.allocs = 0;
        st.frees = 0;
        st.class_allocs = [0; MAX_MEDIUM_CLASSES];
        st.class_frees = [0; MAX_MEDIUM_CLASSES];
        st.class_in_use = [0; MAX_MEDIUM_CLASSES];
        self.publish(st);
    }

    /// Unmaps every region; used when the pool is dropped.
    ///
    /// # Safety
    /// No block of this tier is used after this call.
    pub(crate) unsafe fn release_all(&self, budget: &Budget) {
        let mut st = lock(&self.state);
        while !st.regions.is_null() {
            let r = st.regions;
            // SAFETY: `r` heads the region list; per the contract nothing uses it.
            unsafe { self.free_region(&mut st, r, budget) };
        }
        while !st.decommitted.is_null() {
            let r = st.decommitted;
            // SAFETY: `r` heads the decommitted list: registered, mapped, unused metadata
            // of ours; after unregistering, no lookup reaches it.
            unsafe {
                st.decommitted = (*r).next;
                let (base, len) = ((*r).header.base, (*r).header.len);
                page_map::unregister(base, len);
                os::unmap(NonNull::new_unchecked(base as *mut u8), len, GRANULE);
                drop(SysBox::from_raw_in(r, System));
            }
        }
        st.bins = [ptr::null_mut(); MAX_BINS];
        st.nonempty = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolConfig;

    #[test]
    fn lookup_tables_agree_with_the_computed_bins_and_classes() {
        for cfg in [PoolConfig::default(), {
            let mut c = PoolConfig::default();
            c.medium.sizes = vec![272, 400, 1008, 3000 / 16 * 16, 20000];
            c.medium.segregated_fit = false;
            c
        }] {
            let r = cfg.resolve().unwrap();
            let tier = MediumTier::new(0, &r);
            for size in (MIN_BLOCK..=r.region_size).step_by(MEDIUM_QUANTUM) {
                let want = MediumTier::compute_bin(
                    &tier.bounds[..tier.bound_count],
                    r.segregated_fit,
                    size,
                );
                assert_eq!(tier.bin_of(size), want, "bin of {size}");
                assert!(want < MAX_BINS);
            }
            for usable in 1..=tier.max_size {
                let want = r.medium_sizes().iter().position(|&c| c >= usable).unwrap();
                assert_eq!(tier.class_of(usable), want, "class of {usable}");
            }
        }
    }

    #[test]
    fn cache_classes_cover_the_medium_sizes_above_the_small_tier() {
        let r = PoolConfig::default().resolve().unwrap();
        let c = MediumTier::new(0, &r).cache;
        assert_eq!((c.min, c.max), (257, 65536));
        assert_eq!(c.count, 64, "8 classes per doubling from 256 B to 64 KiB");
        assert!(c.sizes[..c.count].windows(2).all(|w| w[0] < w[1]));
        for size in c.min..=c.max {
            let j = c.class_of(size);
            assert!(
                c.sizes[j] >= size && (j == 0 || c.sizes[j - 1] < size),
                "{size}"
            );
            assert!(c.serves(size, 16) && !c.serves(size, 32));
        }
        assert!(!c.serves(256, 8) && !c.serves(65537, 8) && !c.serves(0, 8));
        for j in 0..c.count {
            assert!((MIN_CACHE_DEPTH..=MAX_CACHE_DEPTH).contains(&c.depths[j]));
            assert_eq!(
                r.medium_sizes()[c.stat_class[j] as usize],
                *r.medium_sizes().iter().find(|&&k| k >= c.sizes[j]).unwrap()
            );
        }
        // Off: nothing is cacheable, not even the zero size.
        let mut off = PoolConfig::default();
        off.medium.thread_cache_bytes = 0;
        let c = MediumTier::new(0, &off.resolve().unwrap()).cache;
        assert!((0..=70000).all(|size| !c.serves(size, 8)));
        assert!(!c.serves(usize::MAX - 1, 8));
    }

    #[test]
    fn bins_grow_with_size() {
        let tier = MediumTier::new(0, &PoolConfig::default().resolve().unwrap());
        let mut last = 0;
        for size in (MIN_BLOCK..=4 << 20).step_by(MEDIUM_QUANTUM) {
            let b = tier.bin_of(size);
            assert!(b >= last, "bin of {size} went down");
            last = b;
        }
    }
}
