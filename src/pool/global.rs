//! [`NeuroAlloc`]: the pool as the process's global allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, UnsafeCell};
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};

use super::config::ResolvedConfig;
use super::hierarchical::HierarchicalPool;
use super::lockfree::InitGate;

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
    gate: InitGate,
    pool: UnsafeCell<MaybeUninit<HierarchicalPool>>,
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
    /// A global allocator whose pool is built on first use.
    pub const fn new() -> Self {
        NeuroAlloc {
            gate: InitGate::new(),
            pool: UnsafeCell::new(MaybeUninit::uninit()),
        }
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
            let pool = HierarchicalPool::from_resolved(ResolvedConfig::global_default());
            // SAFETY: we won the gate, so no one else writes or reads the cell until we
            // publish it with `finish`.
            unsafe { (*self.pool.get()).write(pool) };
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
        if self.gate.is_ready() {
            // SAFETY: the gate is ready, so the pool was written and is never written again.
            let pool = unsafe { (*self.pool.get()).assume_init_ref() };
            if let Some((p, _)) = pool.allocate_fast(layout) {
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
        if self.gate.is_ready() {
            // SAFETY: the gate is ready, so the pool was written and is never written again.
            let pool = unsafe { (*self.pool.get()).assume_init_ref() };
            // SAFETY: GlobalAlloc's contract is the one `deallocate` asks for.
            if unsafe { pool.deallocate_fast(p, layout) } {
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
