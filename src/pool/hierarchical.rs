//! [`HierarchicalPool`]: routes each layout to the small, medium or large tier.

use std::alloc::{Layout, System};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allocator_api2::boxed::Box as SysBox;

use super::budget::Budget;
use super::config::{MAX_SMALL_CLASSES, PoolConfig, ResolvedConfig};
use super::flags::AllocFlags;
use super::large::{LargeRequest, LargeTier};
use super::medium::MAX_CACHE_CLASSES;
use super::medium::MediumTier;
use super::numa::NumaBinding;
use super::page_map::{self, RegionKind};
use super::small::{self, SmallTier};
use super::span::{RetainedSpans, SpanCounters};
use super::stats::{Alert, AlertKind, Alerts, ClassStats, PoolStats, Tier, TierStats};
use super::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, lock};
use super::thread_cache::{self, ThreadList};
use crate::error::{ConfigError, Error, OomReason};

/// Numbers pools; a plain std atomic even under loom (ids need no ordering, only uniqueness).
static NEXT_POOL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Where a layout is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Zero,
    Small(usize),
    Medium,
    Large,
}

/// The state of one pool, shared with the thread caches.
pub(crate) struct PoolShared {
    /// The key of the pool's entries in the thread caches and in their list of live
    /// pools; [`HierarchicalPool::reset`] changes it.
    pub id: u64,
    /// The id written into the headers of the pool's regions; fixed for the pool's life.
    owner: u64,
    pub cfg: ResolvedConfig,
    pub budget: Budget,
    pub small: SmallTier,
    pub medium: MediumTier,
    pub large: LargeTier,
    /// Bytes committed in the tables' spans (counted with the large tier).
    pub spans: SpanCounters,
    /// Mappings of dropped large tables kept for the next one (counted in `budget`).
    pub retained: RetainedSpans,
    pub threads: Mutex<ThreadList>,
    alerts: Alerts,
    peak: AtomicUsize,
    invalid_frees: AtomicU64,
    created: Instant,
}

impl PoolShared {
    fn approx_in_use(&self) -> usize {
        self.small.outstanding_bytes()
            + self.medium.counters.in_use.load(Ordering::Relaxed)
            + self.large.counters.in_use.load(Ordering::Relaxed)
            + self.spans.committed.load(Ordering::Relaxed)
    }

    /// Samples the peak and looks at the alerts; called with no pool lock held.
    #[cold]
    fn after_slow_path(&self) {
        let in_use = self.approx_in_use();
        if in_use > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(in_use, Ordering::Relaxed);
        }
        if self.alerts.any.load(Ordering::Relaxed) {
            self.alerts
                .check(self.budget.reserved(), in_use, self.budget.limit());
        }
    }
}

/// The per-class counters of every thread's caches for one pool, summed at one moment.
struct ThreadCounts {
    allocs: [u64; MAX_SMALL_CLASSES],
    frees: [u64; MAX_SMALL_CLASSES],
    medium_allocs: [u64; MAX_CACHE_CLASSES],
    medium_frees: [u64; MAX_CACHE_CLASSES],
    /// Threads with a cache for the pool.
    threads: usize,
}

impl PoolShared {
    /// The threads' counters, from one look at the thread list (so that small and
    /// medium counts come from one moment).
    fn thread_counts(&self) -> ThreadCounts {
        let mut counts = ThreadCounts {
            allocs: [0; MAX_SMALL_CLASSES],
            frees: [0; MAX_SMALL_CLASSES],
            medium_allocs: [0; MAX_CACHE_CLASSES],
            medium_frees: [0; MAX_CACHE_CLASSES],
            threads: 0,
        };
        let list = lock(&self.threads);
        list.sum(&mut counts.allocs, &mut counts.frees);
        list.sum_medium(&mut counts.medium_allocs, &mut counts.medium_frees);
        counts.threads = list.threads();
        counts
    }

    /// The small tier's figures, each class's appended to `classes`.
    fn small_stats(&self, counts: &ThreadCounts, classes: &mut Vec<ClassStats>) -> TierStats {
        let mut small = TierStats::default();
        for (ci, class) in self.small.classes[..self.small.count].iter().enumerate() {
            let a = counts.allocs[ci].wrapping_add(class.shared_allocs.load(Ordering::Relaxed));
            let f = counts.frees[ci].wrapping_add(class.shared_frees.load(Ordering::Relaxed));
            let live = a.saturating_sub(f);
            let c = ClassStats {
                tier: Tier::Small,
                size: class.size,
                allocations: a,
                deallocations: f,
                in_use_bytes: live as usize * class.size,
                reserved_bytes: self.small.reserved_bytes(ci),
                chunks: self.small.chunks(ci),
            };
            small.reserved_bytes += c.reserved_bytes;
            small.in_use_bytes += c.in_use_bytes;
            small.allocations += a;
            small.deallocations += f;
            small.regions += c.chunks;
            classes.push(c);
        }
        small
    }

    /// The medium tier's figures, each class's appended to `classes`.
    fn medium_stats(&self, counts: &ThreadCounts, classes: &mut Vec<ClassStats>) -> TierStats {
        let mut medium = TierStats {
            reserved_bytes: self.medium.counters.reserved.load(Ordering::Relaxed),
            regions: self.medium.counters.regions.load(Ordering::Relaxed),
            ..TierStats::default()
        };
        let cache = &self.medium.cache;
        for (k, &(size, a, f, in_use)) in self.medium.class_figures().iter().enumerate() {
            // The tier counts what it handed straight to callers; the threads count what
            // their caches handed out and took back (a block may leave through one thread
            // and come back through another, so only the sums mean something).
            let (mut a, mut f, mut bytes) = (a, f, in_use as i128);
            for j in (0..cache.count).filter(|&j| cache.stat_class[j] as usize == k) {
                a = a.wrapping_add(counts.medium_allocs[j]);
                f = f.wrapping_add(counts.medium_frees[j]);
                bytes += (i128::from(counts.medium_allocs[j]) - i128::from(counts.medium_frees[j]))
                    * cache.sizes[j] as i128;
            }
            let in_use = bytes.max(0) as usize;
            medium.allocations += a;
            medium.deallocations += f;
            medium.in_use_bytes += in_use;
            classes.push(ClassStats {
                tier: Tier::Medium,
                size,
                allocations: a,
                deallocations: f,
                in_use_bytes: in_use,
                reserved_bytes: 0,
                chunks: 0,
            });
        }
        medium
    }

    /// The large tier's figures, the tables' spans counted with it.
    fn large_stats(&self) -> TierStats {
        let lc = &self.large.counters;
        let spans = &self.spans;
        let span_bytes = spans.committed.load(Ordering::Relaxed);
        TierStats {
            reserved_bytes: lc.reserved.load(Ordering::Relaxed)
                + span_bytes
                + self.retained.bytes(),
            in_use_bytes: lc.in_use.load(Ordering::Relaxed) + span_bytes,
            allocations: lc.allocs.load(Ordering::Relaxed) + spans.allocs.load(Ordering::Relaxed),
            deallocations: lc.frees.load(Ordering::Relaxed) + spans.frees.load(Ordering::Relaxed),
            regions: lc.regions.load(Ordering::Relaxed) + spans.spans.load(Ordering::Relaxed),
        }
    }
}

/// A hierarchical size-class memory pool.
///
/// Small requests (default up to 256 B) come from fixed-size pools with per-thread caches,
/// medium ones (up to 64 KiB) from a segregated-fit allocator that splits and coalesces,
/// large ones from page-aligned buddy arenas, and anything above the largest buddy block
/// from a mapping of its own. All memory comes from the OS in large regions. The pool is
/// `Send + Sync` and every method takes `&self`.
///
/// ```
/// use std::alloc::Layout;
/// use neurostore::{HierarchicalPool, PoolConfig};
///
/// let pool = HierarchicalPool::new(PoolConfig::default())?;
/// let layout = Layout::from_size_align(48, 8).unwrap();
/// let block = pool.allocate(layout)?;
/// assert_eq!(block.len(), 64); // the 64-byte size class
/// // SAFETY: allocated above with this layout, not used afterwards.
/// unsafe { pool.deallocate(block.cast(), layout) };
/// assert_eq!(pool.stats().live_allocations, 0);
/// # Ok::<(), neurostore::Error>(())
/// ```
pub struct HierarchicalPool {
    shared: SysBox<PoolShared, System>,
}

impl std::fmt::Debug for HierarchicalPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.stats();
        f.debug_struct("HierarchicalPool")
            .field("id", &self.shared.id)
            .field("reserved_bytes", &s.reserved_bytes)
            .field("in_use_bytes", &s.in_use_bytes)
            .field("live_allocations", &s.live_allocations)
            .finish()
    }
}

/// What [`HierarchicalPool::verify`] found wrong: the tier whose metadata breaks one of
/// its invariants, and the inconsistency in words (which list, block or counter, and the
/// values that disagree). A pool that fails `verify` has been corrupted, by a bug in the
/// pool or by memory written through a pointer after it was freed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the pool's {tier:?} tier is inconsistent: {detail}")]
pub struct PoolCorruption {
    /// The tier whose metadata is wrong.
    pub tier: Tier,
    /// What is wrong, in words.
    pub detail: String,
}

/// Live allocations found when a pool is dropped (or asked with
/// [`HierarchicalPool::leaks`]).
///
/// ```
/// use std::alloc::Layout;
/// use neurostore::{HierarchicalPool, LeakReport, PoolConfig};
///
/// let pool = HierarchicalPool::new(PoolConfig::debug())?;
/// let l = Layout::from_size_align(24, 8).unwrap();
/// let block = pool.allocate(l)?;
/// assert_eq!(pool.leaks(), LeakReport { count: 1, bytes: 32 });
/// // SAFETY: allocated above with this layout.
/// unsafe { pool.deallocate(block.cast(), l) };
/// assert_eq!(pool.leaks().count, 0);
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakReport {
    /// Blocks handed out and never freed.
    pub count: u64,
    /// Their bytes (block sizes).
    pub bytes: usize,
}

impl HierarchicalPool {
    /// Makes a pool after checking `config`; an impossible config is `Error::Config`
    /// naming its key. No memory is mapped until the first allocation.
    pub fn new(config: PoolConfig) -> Result<Self, Error> {
        let resolved = config.resolve()?;
        Ok(Self::from_resolved(resolved))
    }

    /// Makes a pool from a resolved config without allocating through the global
    /// allocator (all of the pool's own metadata comes from `System`).
    pub(crate) fn from_resolved(cfg: ResolvedConfig) -> Self {
        let id = NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = SysBox::new_in(
            PoolShared {
                id,
                owner: id,
                cfg,
                budget: Budget::new(cfg.total_memory),
                small: SmallTier::new(id, &cfg),
                medium: MediumTier::new(id, &cfg),
                large: LargeTier::new(id, &cfg),
                spans: SpanCounters::default(),
                retained: RetainedSpans::default(),
                threads: Mutex::new(ThreadList::new()),
                alerts: Alerts::new(),
                peak: AtomicUsize::new(0),
                invalid_frees: AtomicU64::new(0),
                created: Instant::now(),
            },
            System,
        );
        thread_cache::pool_created(id);
        HierarchicalPool { shared }
    }

    #[inline]
    fn route(&self, size: usize, align: usize) -> Route {
        let s = &*self.shared;
        if size == 0 {
            Route::Zero
        } else if let Some(ci) = s.small.class_for(size, align) {
            Route::Small(ci)
        } else if s.medium.serves(size, align) {
            Route::Medium
        } else {
            Route::Large
        }
    }

    /// The process-unique id of this pool (never 0), which names it in the thread caches.
    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.shared.id
    }

    /// Where the pool's memory is placed (NUMA); the spans of its tables follow it.
    pub(crate) fn numa_binding(&self) -> NumaBinding {
        self.shared.cfg.numa
    }

    /// The pool's state (for tests inside the crate).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &PoolShared {
        &self.shared
    }

    /// Allocates a block for `layout`. The returned slice is the whole block, which may
    /// be longer than asked; any length between the layout's size and the slice's may be
    /// passed back to [`deallocate`](Self::deallocate). A zero-sized layout gets a
    /// dangling, aligned pointer and takes no memory.
    #[inline]
    pub fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, Error> {
        if let Some((p, len)) = self.allocate_fast(layout) {
            return Ok(NonNull::slice_from_raw_parts(p, len));
        }
        self.allocate_slow(layout)
    }

    /// The fast path: a small request served from this thread's cache, with the block's
    /// length. `None` sends the caller to [`allocate`](Self::allocate)'s slow path.
    #[inline(always)]
    pub(crate) fn allocate_fast(&self, layout: Layout) -> Option<(NonNull<u8>, usize)> {
        let s = &*self.shared;
        let size = layout.size();
        if size.wrapping_sub(1) < s.small.max_size && layout.align() <= s.small.align {
            // SAFETY: 1 <= size <= max_size <= MAX_SMALL_CLASS_SIZE, so the index is
            // within the table, whose entries for such sizes are class indices (< 16).
            let ci = unsafe { *s.small.lut.get_unchecked((size + 7) >> 3) } as usize;
            let p = thread_cache::pop(s.id, ci)?;
            // SAFETY: `ci` is a class index, below MAX_SMALL_CLASSES.
            let len = unsafe { *s.small.sizes.get_unchecked(ci) } as usize;
            return Some((p, len));
        }
        let cache = &s.medium.cache;
        if cache.serves(size, layout.align()) {
            let j = cache.class_of(size);
            let p = thread_cache::pop_medium(s.id, j)?;
            // SAFETY: `j` is a cache class index, below MAX_CACHE_CLASSES.
            return Some((p, unsafe { *cache.sizes.get_unchecked(j) }));
        }
        None
    }

    /// The fast path of [`deallocate`](Self::deallocate): true when the block went onto
    /// this thread's cache.
    ///
    /// # Safety
    /// As [`deallocate`](Self::deallocate).
    #[inline(always)]
    pub(crate) unsafe fn deallocate_fast(&self, ptr: NonNull<u8>, layout: Layout) -> bool {
        let s = &*self.shared;
        let size = layout.size();
        if size.wrapping_sub(1) < s.small.max_size && layout.align() <= s.small.align {
            // SAFETY: as in `allocate_fast`.
            let ci = unsafe { *s.small.lut.get_unchecked((size + 7) >> 3) } as usize;
            // SAFETY: forwarded contract; `ci` is the class the block was allocated in.
            return unsafe { thread_cache::push(s.id, ci, ptr) };
        }
        let cache = &s.medium.cache;
        if cache.serves(size, layout.align()) {
            // SAFETY: forwarded contract; a cacheable block was allocated in the cache
            // class of every size its caller may pass back.
            return unsafe { thread_cache::push_medium(s.id, cache.class_of(size), ptr) };
        }
        false
    }

    #[inline(never)]
    fn allocate_slow(&self, layout: Layout) -> Result<NonNull<[u8]>, Error> {
        let (size, align) = (layout.size(), layout.align());
        let s = &*self.shared;
        let oom = |reason| Error::OutOfMemory {
            requested: size,
            align,
            reason,
        };
        match self.route(size, align) {
            Route::Small(ci) => {
                let p = self.alloc_small(ci).map_err(oom)?;
                Ok(NonNull::slice_from_raw_parts(p, s.small.classes[ci].size))
            }
            Route::Zero => {
                // A dangling pointer aligned to `align`, as `Layout::dangling` gives.
                let p = NonNull::new(std::ptr::without_provenance_mut::<u8>(align))
                    .expect("align is non-zero");
                Ok(NonNull::slice_from_raw_parts(p, 0))
            }
            Route::Medium if s.medium.cache.serves(size, align) => {
                let j = s.medium.cache.class_of(size);
                let r = thread_cache::alloc_medium(s, j)
                    .unwrap_or_else(|| s.medium.allocate_class(j, &s.budget));
                s.after_slow_path();
                let p = r.map_err(oom)?;
                Ok(NonNull::slice_from_raw_parts(p, s.medium.cache.sizes[j]))
            }
            Route::Medium => {
                let r = s.medium.allocate(size, align, &s.budget);
                s.after_slow_path();
                let (p, len) = r.map_err(oom)?;
                Ok(NonNull::slice_from_raw_parts(p, len))
            }
            Route::Large => {
                let r = s.large.allocate(size, align, &s.budget);
                s.after_slow_path();
                let (p, len) = r.map_err(oom)?;
                Ok(NonNull::slice_from_raw_parts(p, len))
            }
        }
    }

    /// [`allocate`](Self::allocate), with `flags` asking for more: a block that reads as
    /// zeros ([`AllocFlags::ZEROED`], which writes zeros only where the memory may hold
    /// old bytes: never over a fresh mapping or the untouched part of a large arena), a
    /// block taken from the shared tier rather than this thread's cache
    /// ([`AllocFlags::BYPASS_THREAD_CACHE`]), or transparent huge pages under a large block
    /// ([`AllocFlags::HUGE_PAGES`]). The block is freed with
    /// [`deallocate`](Self::deallocate) as any other.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `HUGE_PAGES` is asked for a layout the large tier
    /// does not serve (nothing is allocated); otherwise as [`allocate`](Self::allocate).
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use neurostore::{AllocFlags, Error, HierarchicalPool, PoolConfig};
    ///
    /// let pool = HierarchicalPool::new(PoolConfig::default())?;
    /// let layout = Layout::from_size_align(200, 8).unwrap();
    /// let block = pool.allocate_with(layout, AllocFlags::ZEROED | AllocFlags::BYPASS_THREAD_CACHE)?;
    /// // SAFETY: the block is at least 200 bytes long and zeroed.
    /// assert!(unsafe { block.as_ref() }.iter().all(|&b| b == 0));
    /// // SAFETY: allocated above with this layout.
    /// unsafe { pool.deallocate(block.cast(), layout) };
    ///
    /// let refused = pool.allocate_with(layout, AllocFlags::HUGE_PAGES);
    /// assert!(matches!(refused, Err(Error::InvalidArgument { name: "flags", .. })));
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn allocate_with(&self, layout: Layout, flags: AllocFlags) -> Result<NonNull<[u8]>, Error> {
        let (size, align) = (layout.size(), layout.align());
        let route = self.route(size, align);
        if flags.contains(AllocFlags::HUGE_PAGES) && route != Route::Large {
            let served = match route {
                Route::Zero => "takes no memory".to_string(),
                Route::Small(_) => "is served by the small tier".to_string(),
                _ => "is served by the medium tier".to_string(),
            };
            return Err(Error::invalid_argument(
                "flags",
                format!(
                    "HUGE_PAGES applies to blocks of the large tier, and a layout of \
                     {size} bytes at alignment {align} {served}"
                ),
            ));
        }
        let block = match route {
            Route::Large => self.allocate_large(layout, flags)?,
            _ if flags.contains(AllocFlags::BYPASS_THREAD_CACHE) => self.allocate_shared(layout)?,
            _ => self.allocate(layout)?,
        };
        if flags.contains(AllocFlags::ZEROED) && route != Route::Large {
            // SAFETY: the block was just allocated and is `block.len()` bytes long.
            unsafe { std::ptr::write_bytes(block.cast::<u8>().as_ptr(), 0, block.len()) };
        }
        Ok(block)
    }

    /// A large block, zeroed or on huge pages as `flags` ask.
    fn allocate_large(&self, layout: Layout, flags: AllocFlags) -> Result<NonNull<[u8]>, Error> {
        let s = &*self.shared;
        let request = LargeRequest {
            zeroed: flags.contains(AllocFlags::ZEROED),
            huge_pages: flags.contains(AllocFlags::HUGE_PAGES),
        };
        let r = s
            .large
            .allocate_with(layout.size(), layout.align(), request, &s.budget);
        s.after_slow_path();
        let (p, len) = r.map_err(|reason| Error::OutOfMemory {
            requested: layout.size(),
            align: layout.align(),
            reason,
        })?;
        Ok(NonNull::slice_from_raw_parts(p, len))
    }

    /// A small or medium block taken under the tier's lock, past this thread's cache (a
    /// cacheable medium request still gets its cache class's size, so that freeing it
    /// through the cache stays exact).
    fn allocate_shared(&self, layout: Layout) -> Result<NonNull<[u8]>, Error> {
        let s = &*self.shared;
        let (size, align) = (layout.size(), layout.align());
        let (r, len) = match self.route(size, align) {
            Route::Small(ci) => (
                s.small.alloc_locked(ci, &s.budget),
                s.small.classes[ci].size,
            ),
            Route::Medium if s.medium.cache.serves(size, align) => {
                let j = s.medium.cache.class_of(size);
                (
                    s.medium.allocate_class(j, &s.budget),
                    s.medium.cache.sizes[j],
                )
            }
            _ => return self.allocate(layout),
        };
        s.after_slow_path();
        let p = r.map_err(|reason| Error::OutOfMemory {
            requested: size,
            align,
            reason,
        })?;
        Ok(NonNull::slice_from_raw_parts(p, len))
    }

    #[inline]
    fn alloc_small(&self, ci: usize) -> Result<NonNull<u8>, OomReason> {
        let s = &*self.shared;
        if s.cfg.thread_cache_size > 0
            && let Some(r) = thread_cache::alloc(s, ci)
        {
            s.after_slow_path();
            return r;
        }
        let r = s.small.alloc_locked(ci, &s.budget);
        s.after_slow_path();
        r
    }

    /// Frees a block.
    ///
    /// In checked mode a double free, foreign pointer or wrong layout is detected: it is
    /// reported on stderr, counted in [`PoolStats::invalid_frees`], and changes nothing.
    /// Use [`try_deallocate`](Self::try_deallocate) to get it as an error.
    ///
    /// # Safety
    /// The same contract as [`GlobalAlloc::dealloc`](std::alloc::GlobalAlloc::dealloc):
    /// `ptr` was returned by [`allocate`](Self::allocate) of this pool for a layout with
    /// the same alignment and a size between the requested size and the returned length,
    /// and it is not used afterwards.
    #[inline]
    pub unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        if unsafe { self.deallocate_fast(ptr, layout) } {
            return;
        }
        // SAFETY: forwarded contract.
        unsafe { self.deallocate_slow(ptr, layout) }
    }

    /// # Safety
    /// As [`deallocate`](Self::deallocate).
    #[inline(never)]
    pub(crate) unsafe fn deallocate_slow(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        if let Err(e) = unsafe { self.free_routed(ptr, layout) } {
            self.shared.invalid_frees.fetch_add(1, Ordering::Relaxed);
            eprintln!("neurostore: refused deallocation: {e}");
        }
    }

    /// Frees a block, returning what is wrong instead of freeing when the pool can tell.
    ///
    /// Every mode checks that `ptr` lies in memory of this pool, at the tier and size
    /// class that `layout` names (`Error::ForeignPointer`, `Error::LayoutMismatch`). In
    /// checked mode (the [`PoolConfig::debug`] preset) it also detects double frees
    /// (`Error::DoubleFree`) and pointers inside blocks. An error changes nothing.
    ///
    /// # Safety
    /// In checked mode, none beyond this: a block freed here must not be used afterwards
    /// by whoever allocated it. Outside checked mode a double free cannot be detected, so
    /// the contract of [`deallocate`](Self::deallocate) applies to pointers of this pool.
    pub unsafe fn try_deallocate(&self, ptr: NonNull<u8>, layout: Layout) -> Result<(), Error> {
        // SAFETY: forwarded contract.
        let r = unsafe { self.checked_free(ptr, layout) };
        if r.is_err() {
            self.shared.invalid_frees.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// # Safety
    /// As [`try_deallocate`](Self::try_deallocate).
    unsafe fn checked_free(&self, ptr: NonNull<u8>, layout: Layout) -> Result<(), Error> {
        let addr = ptr.as_ptr() as usize;
        let route = self.route(layout.size(), layout.align());
        if route != Route::Zero {
            let hp = page_map::lookup(addr).ok_or(Error::ForeignPointer { address: addr })?;
            let h = page_map::lookup_ref(addr).ok_or(Error::ForeignPointer { address: addr })?;
            if h.pool_id != self.shared.owner {
                return Err(Error::ForeignPointer { address: addr });
            }
            let tier_matches = match (route, h.kind) {
                (Route::Small(ci), RegionKind::SmallChunk) => {
                    // SAFETY: the page map names a live small chunk of this pool.
                    let have = unsafe { small::chunk_class(hp) };
                    if have != ci {
                        return Err(Error::LayoutMismatch {
                            address: addr,
                            block_size: self.shared.small.classes[have].size,
                            layout_size: layout.size(),
                        });
                    }
                    if !(addr - h.base).is_multiple_of(self.shared.small.classes[ci].size) {
                        return Err(Error::ForeignPointer { address: addr });
                    }
                    true
                }
                (Route::Medium, RegionKind::MediumRegion) => addr.is_multiple_of(16),
                (Route::Large, RegionKind::LargeArena | RegionKind::Huge) => true,
                _ => false,
            };
            if !tier_matches {
                return Err(Error::ForeignPointer { address: addr });
            }
        }
        // SAFETY: forwarded contract; the pointer lies in this pool's tier for the layout.
        unsafe { self.free_routed(ptr, layout) }
    }

    /// # Safety
    /// As [`deallocate`](Self::deallocate); in checked mode any pointer.
    #[inline]
    unsafe fn free_routed(&self, ptr: NonNull<u8>, layout: Layout) -> Result<(), Error> {
        let s = &*self.shared;
        match self.route(layout.size(), layout.align()) {
            Route::Zero => Ok(()),
            Route::Small(ci) => {
                // SAFETY: forwarded contract.
                if s.cfg.thread_cache_size > 0 && unsafe { thread_cache::free(s, ci, ptr) } {
                    s.after_slow_path();
                    return Ok(());
                }
                // SAFETY: forwarded contract.
                let r = unsafe { s.small.free_locked(ci, ptr, &s.budget) };
                s.after_slow_path();
                r
            }
            Route::Medium if s.medium.cache.serves(layout.size(), layout.align()) => {
                let j = s.medium.cache.class_of(layout.size());
                // SAFETY: forwarded contract; the block was allocated in cache class `j`.
                if !unsafe { thread_cache::free_medium(s, j, ptr) } {
                    // SAFETY: as above.
                    unsafe { s.medium.deallocate_class(ptr, j, &s.budget) };
                }
                s.after_slow_path();
                Ok(())
            }
            Route::Medium => {
                // SAFETY: forwarded contract.
                let r = unsafe { s.medium.deallocate(ptr, layout.size(), &s.budget) };
                s.after_slow_path();
                r
            }
            Route::Large => {
                // SAFETY: forwarded contract.
                let r = unsafe {
                    s.large
                        .deallocate(ptr, layout.size(), layout.align(), &s.budget)
                };
                s.after_slow_path();
                r
            }
        }
    }

    /// Resizes a block to `new_size` bytes, in place when the block already fits (same
    /// small class, or a medium or large block of the right size), else by allocating,
    /// copying and freeing. On error the old block is untouched and still owned.
    ///
    /// # Safety
    /// `ptr` and `old` satisfy the contract of [`deallocate`](Self::deallocate); on
    /// success the old pointer must not be used again (use the returned one).
    pub unsafe fn reallocate(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Result<NonNull<[u8]>, Error> {
        let align = old.align();
        let new = Layout::from_size_align(new_size, align).map_err(|_| Error::OutOfMemory {
            requested: new_size,
            align,
            reason: OomReason::LayoutTooLarge,
        })?;
        let (r_old, r_new) = (self.route(old.size(), align), self.route(new_size, align));
        let s = &*self.shared;
        if r_old == r_new {
            match r_new {
                Route::Small(ci) => {
                    return Ok(NonNull::slice_from_raw_parts(ptr, s.small.classes[ci].size));
                }
                Route::Medium
                    if s.medium.cache.serves(old.size(), align)
                        && s.medium.cache.serves(new_size, align)
                        && s.medium.cache.class_of(old.size())
                            == s.medium.cache.class_of(new_size) =>
                {
                    let len = s.medium.cache.sizes[s.medium.cache.class_of(new_size)];
                    return Ok(NonNull::slice_from_raw_parts(ptr, len));
                }
                Route::Large
                    if s.large.block_size_for(old.size(), align)
                        == s.large.block_size_for(new_size, align)
                        && new_size <= s.cfg.large_max =>
                {
                    let len = s.large.block_size_for(new_size, align).expect("served");
                    return Ok(NonNull::slice_from_raw_parts(ptr, len));
                }
                _ => {}
            }
        }
        let fresh = self.allocate(new)?;
        // SAFETY: both blocks are live and distinct; we copy the bytes both hold.
        unsafe {
            std::ptr::copy_nonoverlapping(
                ptr.as_ptr(),
                fresh.cast::<u8>().as_ptr(),
                old.size().min(new_size),
            );
            self.deallocate(ptr, old);
        }
        Ok(fresh)
    }

    /// Returns the blocks this thread caches for this pool to the shared lists, so that
    /// empty chunks can go back to the OS.
    pub fn flush_thread_cache(&self) {
        if self.shared.cfg.thread_cache_size > 0 || self.shared.cfg.medium_cache_bytes > 0 {
            thread_cache::flush(&self.shared);
        }
    }

    /// Returns the medium tier's wholly free regions to the OS, including the ones that
    /// `retain_empty` keeps for reuse, and returns the bytes released. The calling
    /// thread's cached medium blocks go back to the tier first (other threads keep
    /// theirs; [`flush_thread_cache`](Self::flush_thread_cache) on each returns them). Their pages are
    /// decommitted and they no longer count as reserved, so after a defragmentation gave
    /// chunks back, the pool's fragmentation falls too. The memory of dropped large
    /// tables that the pool keeps for reuse
    /// ([`retain_table_memory_ms`](super::PoolConfig::retain_table_memory_ms)) goes back
    /// too.
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use neurostore::{HierarchicalPool, PoolConfig};
    ///
    /// let pool = HierarchicalPool::new(PoolConfig::default())?;
    /// let layout = Layout::from_size_align(32 << 10, 16).unwrap();
    /// let block = pool.allocate(layout)?;
    /// // SAFETY: allocated above with this layout, not used afterwards.
    /// unsafe { pool.deallocate(block.cast(), layout) };
    /// assert!(pool.stats().medium.reserved_bytes > 0); // an empty region is retained
    /// assert!(pool.trim() > 0);
    /// assert_eq!(pool.stats().medium.reserved_bytes, 0);
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn trim(&self) -> usize {
        let s = &*self.shared;
        let mut released = 0;
        if s.cfg.medium_cache_bytes > 0 {
            // Blocks coming home may empty regions that go at once (beyond `retain_empty`).
            let before = s.medium.counters.reserved.load(Ordering::Relaxed);
            thread_cache::flush_medium(s);
            let after = s.medium.counters.reserved.load(Ordering::Relaxed);
            released += before.saturating_sub(after);
        }
        released += s.retained.purge(&s.budget, Duration::ZERO);
        released + s.medium.trim(&s.budget)
    }

    /// Frees every block of the pool at once, arena style, and returns what was still
    /// handed out when it did. For per-step scratch (spikes in flight, temporary
    /// buffers): allocate freely during a step, then end all of it in one call instead of
    /// freeing block by block. The pool is usable afterwards, with the same configuration,
    /// alert thresholds and callbacks, and its statistics start again at zero
    /// (allocations, frees, bytes in use, peak, invalid frees, cached threads).
    ///
    /// Memory is kept as if every block had been freed: each size class keeps up to
    /// `retain_empty` empty chunks, the medium and large tiers as many empty regions
    /// and arenas, so the next step reuses memory that is already mapped and touched;
    /// the rest is given back to the OS, and mappings of single huge blocks are unmapped.
    /// The call costs one pass over the pool's chunk and region metadata, never over its
    /// blocks (except in checked mode, below).
    ///
    /// Taking `&mut self` makes the reset safe for everything that borrows the pool: a
    /// collection allocating through `&pool` (`Vec::new_in(&pool)`) cannot be alive
    /// across it, and a pool shared through an `Arc` (as tables share theirs) can only be
    /// reset once nothing else holds it ([`Arc::get_mut`]). Raw blocks from
    /// [`allocate`](Self::allocate) are not borrows: they end with the reset, and using
    /// or deallocating one afterwards breaks [`deallocate`](Self::deallocate)'s contract.
    /// The returned [`LeakReport`] counts them. In checked mode
    /// ([`PoolConfig::debug`](super::PoolConfig::debug)) the reset also prints that count,
    /// fills the memory it keeps with the poison byte and unmaps what it does not keep, so
    /// that a use after the reset reads poison or faults, and a late
    /// [`try_deallocate`](Self::try_deallocate) of such a block is refused.
    ///
    /// Blocks that other threads cache for this pool are dropped from their caches, not
    /// given back: the pool answers to a new id in the thread caches from now on.
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use neurostore::{HierarchicalPool, PoolConfig};
    ///
    /// let mut pool = HierarchicalPool::new(PoolConfig::default())?;
    /// let event = Layout::from_size_align(64, 8).unwrap();
    /// for _step in 0..3 {
    ///     for _ in 0..10_000 {
    ///         pool.allocate(event)?; // scratch, never freed one by one
    ///     }
    ///     assert_eq!(pool.stats().live_allocations, 10_000);
    ///     let ended = pool.reset();
    ///     assert_eq!(ended.count, 10_000);
    ///     assert_eq!(pool.stats().allocations, 0);
    ///     assert!(pool.stats().reserved_bytes > 0); // kept for the next step
    /// }
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    ///
    /// A collection that allocates through the pool keeps it borrowed:
    ///
    /// ```compile_fail
    /// use neurostore::{HierarchicalPool, PoolConfig};
    ///
    /// let mut pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    /// let mut spikes = allocator_api2::vec::Vec::new_in(&pool);
    /// spikes.push(7u32);
    /// pool.reset(); // error: `pool` is borrowed by `spikes`
    /// spikes.push(8);
    /// ```
    pub fn reset(&mut self) -> LeakReport {
        let ended = self.leaks();
        if self.shared.cfg.checked && ended.count > 0 {
            eprintln!(
                "neurostore: pool reset with {} live allocations ({} bytes) still handed out",
                ended.count, ended.bytes
            );
        }
        let s = &mut *self.shared;
        let fresh = NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        thread_cache::pool_reset(s.id, fresh, &s.threads);
        s.id = fresh;
        // SAFETY: the exclusive borrow means no caller holds a borrow of a block; raw
        // blocks end here by this method's contract; and no thread cache gives a block
        // back any more, since the caches know the pool by its old id only.
        unsafe {
            s.small.reset(&s.budget);
            s.medium.reset(&s.budget);
            s.large.reset(&s.budget);
        }
        s.retained.purge(&s.budget, Duration::ZERO);
        s.peak.store(0, Ordering::Relaxed);
        s.invalid_frees.store(0, Ordering::Relaxed);
        s.created = Instant::now();
        ended
    }

    /// Checks the pool's internal invariants, tier by tier, taking each tier's locks in
    /// turn: every chunk is on the right list with consistent counts, medium blocks tile
    /// their regions with agreeing boundary tags and no two free neighbours, every free
    /// block is binned exactly once, and the counters equal what a walk finds. For tests
    /// and debugging: it walks all metadata, so it is slow on a large pool.
    ///
    /// # Errors
    /// [`PoolCorruption`] naming the first tier whose metadata is inconsistent and what
    /// was found; the pool is not changed.
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use neurostore::{HierarchicalPool, PoolConfig};
    ///
    /// let pool = HierarchicalPool::new(PoolConfig::default())?;
    /// let l = Layout::from_size_align(3000, 8).unwrap();
    /// let b = pool.allocate(l)?;
    /// assert_eq!(pool.verify(), Ok(()));
    /// // SAFETY: allocated above with this layout.
    /// unsafe { pool.deallocate(b.cast(), l) };
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn verify(&self) -> Result<(), PoolCorruption> {
        let s = &*self.shared;
        let in_tier = |tier| move |detail| PoolCorruption { tier, detail };
        s.small.verify().map_err(in_tier(Tier::Small))?;
        s.medium.verify().map_err(in_tier(Tier::Medium))?;
        s.large.verify().map_err(in_tier(Tier::Large))
    }

    /// Counts `delta` bytes more (or fewer, when negative) as committed in the tables'
    /// spans ([`Span`](super::span::Span)), against the `total_memory` cap; a refusal
    /// changes nothing.
    pub(crate) fn span_account(&self, delta: isize) -> Result<(), OomReason> {
        let s = &*self.shared;
        let bytes = delta.unsigned_abs();
        if delta >= 0 {
            s.budget.reserve(bytes)?;
            s.spans.committed.fetch_add(bytes, Ordering::Relaxed);
            s.after_slow_path();
        } else {
            s.spans.committed.fetch_sub(bytes, Ordering::Relaxed);
            s.budget.release(bytes);
        }
        Ok(())
    }

    /// Bytes reserved from the OS by all tiers (one relaxed load).
    pub(crate) fn reserved_bytes(&self) -> usize {
        self.shared.budget.reserved()
    }

    /// The `total_memory` cap, if the pool has one.
    pub(crate) fn memory_cap(&self) -> Option<usize> {
        self.shared.budget.limit()
    }

    /// The span figures of this pool.
    pub(crate) fn span_counters(&self) -> &SpanCounters {
        &self.shared.spans
    }

    /// The mappings of dropped large tables that the pool keeps for reuse.
    pub(crate) fn retained_spans(&self) -> &RetainedSpans {
        &self.shared.retained
    }

    /// The account of bytes reserved from the OS, with its cap.
    pub(crate) fn budget(&self) -> &Budget {
        &self.shared.budget
    }

    /// How long a dropped large table's mapping waits for reuse (zero: not at all).
    pub(crate) fn retain_spans_for(&self) -> Duration {
        Duration::from_millis(self.shared.cfg.retain_table_memory_ms)
    }

    /// Whether this pool runs in checked mode.
    pub fn is_checked(&self) -> bool {
        self.shared.cfg.checked
    }

    /// The pool's figures. Takes the pool's thread-list lock (to sum per-thread
    /// counters), never a lock of the allocation path.
    pub fn stats(&self) -> PoolStats {
        let s = &*self.shared;
        let counts = s.thread_counts();
        let mut classes = Vec::with_capacity(s.small.count + s.cfg.medium_count);
        let small = s.small_stats(&counts, &mut classes);
        let medium = s.medium_stats(&counts, &mut classes);
        let large = s.large_stats();
        let cached_threads = counts.threads;
        let reserved = small.reserved_bytes + medium.reserved_bytes + large.reserved_bytes;
        let in_use = small.in_use_bytes + medium.in_use_bytes + large.in_use_bytes;
        let allocations = small.allocations + medium.allocations + large.allocations;
        let deallocations = small.deallocations + medium.deallocations + large.deallocations;
        let peak = s.peak.fetch_max(in_use, Ordering::Relaxed).max(in_use);
        let secs = s.created.elapsed().as_secs_f64();
        PoolStats {
            reserved_bytes: reserved,
            in_use_bytes: in_use,
            peak_in_use_bytes: peak,
            allocations,
            deallocations,
            live_allocations: allocations.saturating_sub(deallocations),
            fragmentation: if reserved == 0 {
                0.0
            } else {
                1.0 - in_use as f64 / reserved as f64
            },
            allocation_rate: if secs > 0.0 {
                allocations as f64 / secs
            } else {
                0.0
            },
            invalid_frees: s.invalid_frees.load(Ordering::Relaxed),
            cached_threads,
            small,
            medium,
            large,
            classes,
        }
    }

    /// Blocks handed out and not freed, with their bytes.
    pub fn leaks(&self) -> LeakReport {
        let st = self.stats();
        LeakReport {
            count: st.live_allocations,
            bytes: st.in_use_bytes,
        }
    }

    /// Sets the threshold (a fraction in `0.0..=1.0`) above which `kind` raises an alert.
    /// An alert fires once per crossing and re-arms when the figure falls
    /// [`REARM_MARGIN`](crate::pool::stats::REARM_MARGIN) below the threshold. Figures
    /// are looked at whenever memory moves between a tier and the OS or the thread caches.
    pub fn set_alert_threshold(&self, kind: AlertKind, threshold: f64) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&threshold) {
            let key = match kind {
                AlertKind::Fragmentation => "alerts.fragmentation",
                AlertKind::MemoryPressure => "alerts.memory_pressure",
            };
            return Err(ConfigError::new(
                key,
                format!("{threshold} is not a fraction in 0.0..=1.0"),
            )
            .into());
        }
        self.shared.alerts.set_threshold(kind, threshold);
        Ok(())
    }

    /// Registers a callback for alerts. Callbacks run on the thread whose allocation or
    /// free raised the alert, outside every pool lock, so they may use the pool.
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use neurostore::{AlertKind, HierarchicalPool, PoolConfig};
    ///
    /// let mut config = PoolConfig::default();
    /// config.total_memory = Some(64 << 20);
    /// let pool = HierarchicalPool::new(config)?;
    /// pool.set_alert_threshold(AlertKind::MemoryPressure, 0.5)?;
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let counter = seen.clone();
    /// pool.on_alert(move |alert| {
    ///     assert_eq!(alert.kind, AlertKind::MemoryPressure);
    ///     counter.fetch_add(1, Ordering::Relaxed);
    /// });
    /// let layout = Layout::from_size_align(40 << 20, 4096).unwrap();
    /// let block = pool.allocate(layout)?;
    /// assert_eq!(seen.load(Ordering::Relaxed), 1);
    /// // SAFETY: allocated above with this layout.
    /// unsafe { pool.deallocate(block.cast(), layout) };
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn on_alert(&self, callback: impl Fn(&Alert) + Send + Sync + 'static) {
        self.shared.alerts.add_callback(Arc::new(callback));
    }
}

impl Drop for HierarchicalPool {
    fn drop(&mut self) {
        let s = &*self.shared;
        thread_cache::pool_dropped(s.id);
        if s.cfg.checked {
            let leaks = self.leaks();
            if leaks.count > 0 {
                eprintln!(
                    "neurostore: pool dropped with {} live allocations ({} bytes) leaked",
                    leaks.count, leaks.bytes
                );
            }
        }
        // SAFETY: we are being dropped, so no caller holds a block it may still use
        // (blocks outliving their pool break `deallocate`'s contract).
        unsafe {
            s.small.release_all();
            s.medium.release_all(&s.budget);
            s.large.release_all(&s.budget);
        }
        s.retained.purge(&s.budget, Duration::ZERO);
    }
}

// SAFETY: the pool hands out memory it owns exclusively until it is freed; `allocate`
// returns blocks that fit the layout (size and alignment), `deallocate` accepts exactly
// what `allocate` returned (any length between the request and the returned length, as
// the trait allows), and blocks stay valid until freed or the pool is dropped, which the
// `&HierarchicalPool` borrow prevents while blocks are in use.
unsafe impl allocator_api2::alloc::Allocator for &HierarchicalPool {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        HierarchicalPool::allocate(self, layout).map_err(|_| allocator_api2::alloc::AllocError)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the trait's contract is the one `deallocate` asks for.
        unsafe { HierarchicalPool::deallocate(self, ptr, layout) }
    }
}
