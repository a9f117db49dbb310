//! [`NeuroAlloc`]: the pool as the process's global allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, UnsafeCell};
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};

use super::config::{MAX_SMALL_CLASSES, ResolvedConfig};
use super::hierarchical::HierarchicalPool;
use super::lockfree::InitGate;
use super::medium::CacheGrid;
use super::thread_cache;

/// The global pool's config, known at compile time.
const CONFIG: ResolvedConfig = ResolvedConfig::global_default();
/// Its largest small class, and the alignment every small block has.
const SMALL_MAX: usize = CONFIG.small_sizes[CONFIG.small_count - 1];
const SMALL_ALIGN: usize = CONFIG.small_alignment;
/// `(size + 7) / 8` → small class, for sizes `1..=SMALL_MAX` (as the small tier's own
/// table for this config; a unit test compares them). A `const`, so that the fast path
/// indexes a copy placed beside the code: as a `static` in this crate it is reached
/// through the GOT, one more load (3.84 → 3.98 ns per 64 B pair).
const SMALL_LUT: [u8; SMALL_MAX / 8 + 1] = small_lut();
/// The medium cache classes of the global pool (as its own; a unit test compares them).
/// A `static`: its 4 KiB table should not be copied into every use.
static MEDIUM_GRID: CacheGrid = CacheGrid::new(&CONFIG);

const fn small_lut() -> [u8; SMALL_MAX / 8 + 1] {
    let mut lut = [0u8; SMALL_MAX / 8 + 1];
    let mut k = 1;
    while k < lut.len() {
        let mut ci = 0;
        while CONFIG.small_sizes[ci] < k * 8 {
            ci += 1;
        }
        assert!(ci < MAX_SMALL_CLASSES);
        lut[k] = ci as u8;
        k += 1;
    }
    lut
}

thread_local! {
    // Const-initialised and without a destructor, so reading it never allocates.
    static INITIALISING_HERE: Cell<bool> = const { Cell::new(false) };
}

/// A [`HierarchicalPool`] with the default configuration, usable as the global allocator.
///
/// The pool is built on first use. Building it allocates nothing through the global
/// allocator (the pool's own metadata comes from the system allocator), so there is no
/// recursion into itself while it initialises; other threads that allocate meanwhile
/// wait for it.
///
/// ```no_run
/// use neurostore::NeuroAlloc;
///
/// #[global_allocator]
/// static ALLOC: NeuroAlloc = NeuroAlloc::new();
///
/// fn main() {
///     let v: Vec<u64> = (0..1000).collect();
///     println!("{} live allocations", ALLOC.pool().stats().live_allocations);
///     drop(v);
/// }
/// ```
pub struct NeuroAlloc {
    /// What the pool is built from on first use: the default size classes (the fast paths'
    /// constant tables are made from them) with the knobs of the `with_` methods.
    config: ResolvedConfig,
    gate: InitGate,
    pool: UnsafeCell<MaybeUninit<HierarchicalPool>>,
    /// The pool's id once it is built, 0 before. The small fast paths use it with the
    /// constant class table, without looking at the gate or the pool: a thread's cache
    /// can only hold an entry for this id after that thread went through the gate, and
    /// with id 0 they find only empty entries (no blocks, no room) and fall through.
    pool_id: AtomicU64,
}

// SAFETY: `pool` is written once, by the one thread that wins the gate's `try_begin`,
// and read only after the gate is ready (release/acquire, checked with loom), after which
// it is never written again; HierarchicalPool itself is Sync.
unsafe impl Sync for NeuroAlloc {}

impl Default for NeuroAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl NeuroAlloc {
    /// A global allocator whose pool is built on first use, with the configuration of
    /// [`PoolConfig::default`](super::PoolConfig::default).
    pub const fn new() -> Self {
        NeuroAlloc {
            config: CONFIG,
            gate: InitGate::new(),
            pool: UnsafeCell::new(MaybeUninit::uninit()),
            pool_id: AtomicU64::new(0),
        }
    }

    /// Caps the bytes the pool reserves from the OS (`total_memory`): past it an
    /// allocation returns null and the program stops through
    /// [`handle_alloc_error`](std::alloc::handle_alloc_error), as with any refusing
    /// global allocator. A `const fn`, for the `static` that names the allocator:
    ///
    /// ```no_run
    /// use neurostore::NeuroAlloc;
    ///
    /// #[global_allocator]
    /// static ALLOC: NeuroAlloc = NeuroAlloc::new()
    ///     .with_total_memory(16 << 30)
    ///     .with_huge_pages(true)
    ///     .with_retain_empty(8);
    ///
    /// fn main() {
    ///     let v = vec![0u8; 1 << 20];
    ///     assert_eq!(ALLOC.total_memory(), Some(16 << 30));
    ///     drop(v);
    /// }
    /// ```
    ///
    /// The size classes stay the defaults: the allocator's fast paths index tables made
    /// from them when the crate compiles. A pool with other classes is a
    /// [`HierarchicalPool`] used as an allocator (`Vec::new_in(&pool)`).
    /// Set before the first allocation; the pool is built from it then.
    pub const fn with_total_memory(mut self, bytes: usize) -> Self {
        self.config.total_memory = bytes;
        self
    }

    /// Asks the OS for transparent huge pages on every region (`use_huge_pages`).
    pub const fn with_huge_pages(mut self, on: bool) -> Self {
        self.config.use_huge_pages = on;
        self
    }

    /// Keeps this many empty chunks (per small class), regions or arenas mapped for
    /// reuse; beyond it, empty ones go back to the OS (`retain_empty`, default 2).
    pub const fn with_retain_empty(mut self, count: usize) -> Self {
        self.config.retain_empty = count;
        self
    }

    /// The `total_memory` cap this allocator's pool has, if any.
    pub const fn total_memory(&self) -> Option<usize> {
        match self.config.total_memory {
            usize::MAX => None,
            bytes => Some(bytes),
        }
    }

    /// Whether this allocator's pool asks for transparent huge pages.
    pub const fn huge_pages(&self) -> bool {
        self.config.use_huge_pages
    }

    /// How many empty chunks, regions or arenas this allocator's pool keeps mapped.
    pub const fn retain_empty(&self) -> usize {
        self.config.retain_empty
    }

    /// The pool behind this allocator (built now if it was not yet).
    #[inline]
    pub fn pool(&self) -> &HierarchicalPool {
        if !self.gate.is_ready() {
            self.initialise();
        }
        // SAFETY: the gate is ready, so the pool was written and is never written again.
        unsafe { (*self.pool.get()).assume_init_ref() }
    }

    /// The slow path of `alloc`, out of line so that the fast path saves no registers
    /// and carries no error handling.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout) -> *mut u8 {
        self.pool()
            .allocate(layout)
            .map_or(ptr::null_mut(), |p| p.as_ptr().cast())
    }

    /// The slow path of `dealloc`.
    ///
    /// # Safety
    /// GlobalAlloc's contract for `dealloc`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_slow(&self, p: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.pool().deallocate_slow(p, layout) }
    }

    #[cold]
    #[inline(never)]
    fn initialise(&self) {
        if self.gate.try_begin() {
            INITIALISING_HERE.with(|f| f.set(true));
            let pool = HierarchicalPool::from_resolved(self.config);
            let id = pool.id();
            // SAFETY: we won the gate, so no one else writes or reads the cell until we
            // publish it with `finish`.
            unsafe { (*self.pool.get()).write(pool) };
            self.pool_id.store(id, Ordering::Release);
            INITIALISING_HERE.with(|f| f.set(false));
            self.gate.finish();
        } else if !self.gate.is_ready() {
            if INITIALISING_HERE.with(|f| f.get()) {
                // Building the pool allocated through the global allocator: a bug in the
                // pool. Waiting would deadlock; abort with a message instead.
                eprintln!("neurostore: NeuroAlloc allocated while initialising itself");
                std::process::abort();
            }
            self.gate.wait_ready();
        }
    }
}

// SAFETY: every method forwards to the pool, whose `allocate` returns blocks that fit
// the layout and whose `deallocate`/`reallocate` have the same contracts as these.
unsafe impl GlobalAlloc for NeuroAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        if size.wrapping_sub(1) < SMALL_MAX && layout.align() <= SMALL_ALIGN {
            // SAFETY: 1 <= size <= SMALL_MAX, so the index is within the table.
            let ci = unsafe { *SMALL_LUT.get_unchecked((size + 7) >> 3) } as usize;
            // Relaxed: see `pool_id`; a match means this thread already saw the pool built.
            if let Some(p) = thread_cache::pop(self.pool_id.load(Ordering::Relaxed), ci) {
                return p.as_ptr();
            }
        } else if MEDIUM_GRID.serves(size, layout.align()) {
            let j = MEDIUM_GRID.class_of(size);
            // As above, for the medium thread caches.
            if let Some(p) = thread_cache::pop_medium(self.pool_id.load(Ordering::Relaxed), j) {
                return p.as_ptr();
            }
        }
        self.alloc_slow(layout)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // SAFETY: `p` holds at least `layout.size()` bytes.
            unsafe { ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else { return };
        let size = layout.size();
        if size.wrapping_sub(1) < SMALL_MAX && layout.align() <= SMALL_ALIGN {
            // SAFETY: 1 <= size <= SMALL_MAX, so the index is within the table.
            let ci = unsafe { *SMALL_LUT.get_unchecked((size + 7) >> 3) } as usize;
            // SAFETY: GlobalAlloc's contract: `p` came from this allocator with `layout`,
            // hence from the global pool's small class `ci` (the class of its size), and
            // is not used afterwards. With id 0 (no pool yet) nothing is pushed.
            if unsafe { thread_cache::push(self.pool_id.load(Ordering::Relaxed), ci, p) } {
                return;
            }
        } else if MEDIUM_GRID.serves(size, layout.align()) {
            let j = MEDIUM_GRID.class_of(size);
            // SAFETY: as above: a cacheable medium block of the global pool was allocated
            // in the cache class of every length its caller may free it with.
            if unsafe { thread_cache::push_medium(self.pool_id.load(Ordering::Relaxed), j, p) } {
                return;
            }
        }
        // SAFETY: forwarded contract.
        unsafe { self.dealloc_slow(p, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(p) = NonNull::new(ptr) else {
            return ptr::null_mut();
        };
        // SAFETY: GlobalAlloc's contract is the one `reallocate` asks for.
        unsafe { self.pool().reallocate(p, layout, new_size) }
            .map_or(ptr::null_mut(), |p| p.as_ptr().cast())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constant_small_classes_match_the_global_pools_own() {
        let pool = HierarchicalPool::from_resolved(CONFIG);
        let small = &pool.shared().small;
        assert_eq!((SMALL_MAX, SMALL_ALIGN), (small.max_size, small.align));
        assert_eq!(SMALL_LUT[..], small.lut[..SMALL_LUT.len()]);
        for size in 1..=SMALL_MAX {
            let ci = SMALL_LUT[(size + 7) >> 3] as usize;
            assert_eq!(small.class_for(size, SMALL_ALIGN), Some(ci), "size {size}");
        }
    }

    #[test]
    fn the_constant_medium_classes_match_the_global_pools_own() {
        let pool = HierarchicalPool::from_resolved(CONFIG);
        assert_eq!(MEDIUM_GRID, pool.shared().medium.cache.grid);
        assert!(
            MEDIUM_GRID.count > 0,
            "the global pool caches medium blocks"
        );
    }

    #[test]
    fn a_configured_allocator_builds_its_pool_from_its_config() {
        let alloc = NeuroAlloc::new()
            .with_total_memory(8 << 20)
            .with_huge_pages(true)
            .with_retain_empty(5);
        assert_eq!(
            (
                alloc.total_memory(),
                alloc.huge_pages(),
                alloc.retain_empty()
            ),
            (Some(8 << 20), true, 5)
        );
        assert_eq!(NeuroAlloc::new().total_memory(), None);
        let cfg = alloc.pool().shared().cfg;
        assert_eq!(
            (cfg.total_memory, cfg.use_huge_pages, cfg.retain_empty),
            (8 << 20, true, 5)
        );
        // Past the cap: null, not an abort or a block the pool cannot account for.
        let big = Layout::from_size_align(16 << 20, 4096).unwrap();
        // SAFETY: a non-zero layout; a null result is not used.
        assert!(unsafe { alloc.alloc(big) }.is_null());
        let small = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a non-zero layout; the block is freed below with it.
        let p = unsafe { alloc.alloc(small) };
        assert!(!p.is_null());
        // SAFETY: allocated above with `small`, freed once.
        unsafe { alloc.dealloc(p, small) };
    }

    #[test]
    fn the_fast_paths_fall_through_before_the_pool_exists() {
        let alloc = NeuroAlloc::new();
        // No pool yet: id 0 names no thread cache entry with blocks or room.
        assert_eq!(
            thread_cache::pop(alloc.pool_id.load(Ordering::Relaxed), 3),
            None
        );
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a non-zero layout; the block is freed below with it.
        let p = unsafe { alloc.alloc(layout) };
        assert!(!p.is_null());
        assert_ne!(alloc.pool_id.load(Ordering::Relaxed), 0);
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { alloc.dealloc(p, layout) };
        assert_eq!(alloc.pool().stats().live_allocations, 0);
    }
}
