//! Per-thread caches in front of the small tier's shared state and the medium tier.
//!
//! Each thread keeps, for up to [`ENTRIES`] pools, one stack of free block pointers per
//! small size class (`thread_cache_size` deep, with one more block in a `hot` slot in
//! front of it), and one per medium cache class (see
//! `medium::CacheClasses`: 8 classes per doubling from the largest small class to 64 KiB,
//! each `medium.thread_cache_bytes / classes / size` deep, at least 4 and at most 64). Allocating pops a pointer and freeing
//! pushes one, with no lock, no atomic read-modify-write and no access to the block's
//! memory: the thread's allocation and free counters are atomics written only by their
//! own thread (a relaxed load and store), which [`stats`](super::HierarchicalPool::stats)
//! sums under the pool's thread-list lock. An empty stack is refilled with a batch from
//! the class (its transfer cache or chunk bitmaps) under the class lock; a full one gives
//! its older half back as a batch.
//!
//! A block freed by a thread other than the one that allocated it lands on the freeing
//! thread's stack for the same pool and class, and from there goes back to the class,
//! whose page-map lookup finds its chunk.
//!
//! Medium stacks work the same way: an empty stack takes half its depth from the medium
//! tier under one lock, a full one gives its older half back under one lock (where the
//! blocks coalesce). The fast paths never read a block: a medium block's class follows
//! from the length its caller frees it with, because cacheable requests are rounded up
//! to their class. Counting: the tier counts blocks handed straight to callers, and each
//! thread counts the blocks its caches hand out and take back, per cache class, so
//! `stats` gives exact figures (a cached block is free, not in use).
//!
//! Lifetimes: a cache entry names its pool by a process-unique id and a raw pointer.
//! [`LIVE`] lists the ids of pools that exist; a pool removes its id before it tears
//! down, and a thread flushes an entry into its pool only while holding `LIVE` and
//! finding the id there, so it never touches a dropped pool. Entries of dropped pools are
//! recycled. A pool that is reset takes a fresh id (under `LIVE`), so that the entries of
//! its old id are recycled the same way and never give back blocks that the reset made
//! free already. Lock order: `LIVE`, then a pool's thread list, then a class lock.

use std::alloc::System;
use std::cell::{Cell, UnsafeCell};
use std::ptr::{self, NonNull};

use allocator_api2::boxed::Box as SysBox;
use allocator_api2::vec::Vec as SysVec;

use super::config::MAX_SMALL_CLASSES;
use super::hierarchical::PoolShared;
use super::intrusive::unlink_node;
use super::medium::MAX_CACHE_CLASSES;
use super::sync::{AtomicU64, Mutex, Ordering, lock, zeroed_counters};
use crate::error::OomReason;

/// How many pools one thread caches at once; further pools take the locked path.
pub(crate) const ENTRIES: usize = 8;

/// Ids of the pools that exist.
type PoolIds = Mutex<SysVec<u64, System>>;

#[cfg(not(loom))]
static LIVE: PoolIds = Mutex::new(SysVec::new_in(System));
#[cfg(loom)]
loom::lazy_static! {
    static ref LIVE: PoolIds = Mutex::new(SysVec::new_in(System));
}

/// The ids of the pools that exist ([`LIVE`]), locked.
fn live_ids() -> super::sync::MutexGuard<'static, SysVec<u64, System>> {
    lock(&LIVE)
}

pub(crate) fn pool_created(id: u64) {
    live_ids().push(id);
}

pub(crate) fn pool_dropped(id: u64) {
    let mut live = live_ids();
    if let Some(i) = live.iter().position(|&x| x == id) {
        live.swap_remove(i);
    }
    drop(live);
    forget_entries_of(id);
}

/// A pool that is being reset (`HierarchicalPool::reset`) stops answering to `old` and
/// answers to `fresh` from now on: every thread's cache entry for `old` is then a dead
/// entry, recycled without giving its blocks back, exactly as for a dropped pool. The
/// pool's thread list forgets the threads' counters (each thread still owns its node and
/// frees it when it recycles the entry), so that the pool's figures start again at zero.
pub(crate) fn pool_reset(old: u64, fresh: u64, threads: &Mutex<ThreadList>) {
    let mut live = live_ids();
    *lock(threads) = ThreadList::new();
    match live.iter_mut().find(|x| **x == old) {
        Some(id) => *id = fresh,
        None => live.push(fresh),
    }
    drop(live);
    forget_entries_of(old);
}

/// Recycles this thread's cache entries for the pool id `id`, which no longer names a
/// live pool, now rather than at the thread's next claim or exit.
fn forget_entries_of(id: u64) {
    let _ = CACHES.try_with(|c| {
        if c.busy.replace(true) {
            return;
        }
        // SAFETY: `busy` was false and is now true, so no other borrow of the entries
        // exists on this thread (the only place they are borrowed checks the same flag).
        let entries = unsafe { &mut *c.entries.get() };
        for e in entries.iter_mut().filter(|e| e.pool_id == id) {
            e.forget();
        }
        c.busy.set(false);
    });
}

/// A thread's allocation and free counters for one pool, per small class. Written only
/// by the owning thread; linked into the pool's thread list.
pub(crate) struct ThreadStats {
    pub allocs: [AtomicU64; MAX_SMALL_CLASSES],
    pub frees: [AtomicU64; MAX_SMALL_CLASSES],
    /// Medium blocks handed to callers from this thread's cache, per cache class.
    pub medium_allocs: [AtomicU64; MAX_CACHE_CLASSES],
    /// Medium blocks freed by callers into this thread's cache, per cache class.
    pub medium_frees: [AtomicU64; MAX_CACHE_CLASSES],
    next: *mut ThreadStats,
    prev: *mut ThreadStats,
}

/// Adds `from` into `into`, element by element (wrapping).
fn add_totals<const N: usize>(into: &mut [u64; N], from: &[u64; N]) {
    for (i, f) in into.iter_mut().zip(from) {
        *i = i.wrapping_add(*f);
    }
}

/// Adds the counters `from` into `into`, element by element (wrapping).
fn add_counters<const N: usize>(into: &mut [u64; N], from: &[AtomicU64; N]) {
    for (i, f) in into.iter_mut().zip(from) {
        *i = i.wrapping_add(f.load(Ordering::Relaxed));
    }
}

/// A pool's registered threads, and the counters of threads that have exited.
pub(crate) struct ThreadList {
    head: *mut ThreadStats,
    pub retired_allocs: [u64; MAX_SMALL_CLASSES],
    pub retired_frees: [u64; MAX_SMALL_CLASSES],
    pub retired_medium_allocs: [u64; MAX_CACHE_CLASSES],
    pub retired_medium_frees: [u64; MAX_CACHE_CLASSES],
}

// SAFETY: the raw pointers name ThreadStats blocks that are only linked, unlinked or read
// under the mutex that holds this list.
unsafe impl Send for ThreadList {}

impl ThreadList {
    pub(crate) const fn new() -> Self {
        ThreadList {
            head: ptr::null_mut(),
            retired_allocs: [0; MAX_SMALL_CLASSES],
            retired_frees: [0; MAX_SMALL_CLASSES],
            retired_medium_allocs: [0; MAX_CACHE_CLASSES],
            retired_medium_frees: [0; MAX_CACHE_CLASSES],
        }
    }

    /// Adds every registered thread's and every retired thread's small-class counters
    /// into `allocs` and `frees`.
    pub(crate) fn sum(
        &self,
        allocs: &mut [u64; MAX_SMALL_CLASSES],
        frees: &mut [u64; MAX_SMALL_CLASSES],
    ) {
        let retired = (&self.retired_allocs, &self.retired_frees);
        self.sum_counters(retired, |t| (&t.allocs, &t.frees), allocs, frees);
    }

    /// The same for the medium cache counters, per cache class.
    pub(crate) fn sum_medium(
        &self,
        allocs: &mut [u64; MAX_CACHE_CLASSES],
        frees: &mut [u64; MAX_CACHE_CLASSES],
    ) {
        let retired = (&self.retired_medium_allocs, &self.retired_medium_frees);
        self.sum_counters(
            retired,
            |t| (&t.medium_allocs, &t.medium_frees),
            allocs,
            frees,
        );
    }

    fn sum_counters<const N: usize>(
        &self,
        retired: (&[u64; N], &[u64; N]),
        pick: impl Fn(&ThreadStats) -> (&[AtomicU64; N], &[AtomicU64; N]),
        allocs: &mut [u64; N],
        frees: &mut [u64; N],
    ) {
        add_totals(allocs, retired.0);
        add_totals(frees, retired.1);
        let mut p = self.head;
        // SAFETY: every block on the list is live while linked, and we hold the list's lock.
        while let Some(t) = unsafe { p.as_ref() } {
            let (a, f) = pick(t);
            add_counters(allocs, a);
            add_counters(frees, f);
            p = t.next;
        }
    }

    /// Number of threads registered.
    pub(crate) fn threads(&self) -> usize {
        let mut n = 0;
        let mut p = self.head;
        // SAFETY: as in `sum`.
        while let Some(t) = unsafe { p.as_ref() } {
            n += 1;
            p = t.next;
        }
        n
    }
}

/// A thread's cache for one pool: per small class, a stack of free block pointers.
struct Entry {
    pool_id: u64,
    pool: *const PoolShared,
    stats: *mut ThreadStats,
    /// `classes * cap` block pointers (from `System`); class `ci` owns `[ci * cap, ci * cap + counts[ci])`.
    slots: *mut *mut u8,
    slots_len: usize,
    cap: usize,
    counts: [usize; MAX_SMALL_CLASSES],
    /// `slots + ci * cap` for each class, so the fast paths need no multiplication.
    bases: [*mut *mut u8; MAX_SMALL_CLASSES],
    /// Per small class, one more cached block in front of the stack (null when none): the
    /// last one freed, handed out first. A block freed and allocated again at once then
    /// costs one load and one store each way, not two dependent loads.
    hot: [*mut u8; MAX_SMALL_CLASSES],
    /// Medium cache: block pointers (from `System`); cache class `j` owns
    /// `medium_depths[j]` of them from `medium_bases[j]`, the first `medium_counts[j]` full.
    medium_slots: *mut *mut u8,
    medium_slots_len: usize,
    medium_counts: [u32; MAX_CACHE_CLASSES],
    medium_depths: [u32; MAX_CACHE_CLASSES],
    medium_bases: [*mut *mut u8; MAX_CACHE_CLASSES],
}

impl Entry {
    const EMPTY: Entry = Entry {
        pool_id: 0,
        pool: ptr::null(),
        stats: ptr::null_mut(),
        slots: ptr::null_mut(),
        slots_len: 0,
        cap: 0,
        counts: [0; MAX_SMALL_CLASSES],
        bases: [ptr::null_mut(); MAX_SMALL_CLASSES],
        hot: [ptr::null_mut(); MAX_SMALL_CLASSES],
        medium_slots: ptr::null_mut(),
        medium_slots_len: 0,
        medium_counts: [0; MAX_CACHE_CLASSES],
        medium_depths: [0; MAX_CACHE_CLASSES],
        medium_bases: [ptr::null_mut(); MAX_CACHE_CLASSES],
    };

    /// The cached blocks of class `ci`.
    fn bin(&mut self, ci: usize) -> &mut [*mut u8] {
        // SAFETY: `slots` holds `slots_len` = classes * cap pointers made by `claim`, and
        // `ci * cap + counts[ci]` never passes it (counts stay <= cap).
        unsafe { std::slice::from_raw_parts_mut(self.slots.add(ci * self.cap), self.counts[ci]) }
    }

    /// Room for `n` blocks of class `ci` after the cached ones.
    fn room(&mut self, ci: usize, n: usize) -> &mut [*mut u8] {
        debug_assert!(self.counts[ci] + n <= self.cap);
        // SAFETY: as in `bin`; the caller asks for no more than the free capacity.
        unsafe {
            std::slice::from_raw_parts_mut(self.slots.add(ci * self.cap + self.counts[ci]), n)
        }
    }

    /// The cached blocks of medium cache class `j`.
    fn medium_bin(&mut self, j: usize) -> &mut [*mut u8] {
        // SAFETY: `medium_bases[j]` starts class `j`'s `medium_depths[j]` slots inside
        // `medium_slots` (made by `claim`), and counts stay <= depths.
        unsafe {
            std::slice::from_raw_parts_mut(self.medium_bases[j], self.medium_counts[j] as usize)
        }
    }

    /// Room for `n` blocks of medium cache class `j` after the cached ones.
    fn medium_room(&mut self, j: usize, n: usize) -> &mut [*mut u8] {
        let have = self.medium_counts[j] as usize;
        assert!(have + n <= self.medium_depths[j] as usize);
        // SAFETY: as in `medium_bin`; the range stays within class `j`'s slots.
        unsafe { std::slice::from_raw_parts_mut(self.medium_bases[j].add(have), n) }
    }

    /// Gives every cached medium block back to the medium tier.
    fn flush_medium(&mut self, pool: &PoolShared) {
        for j in 0..pool.medium.cache.count {
            if self.medium_counts[j] > 0 {
                // SAFETY: the bin holds free blocks of cache class `j` taken from this
                // pool's medium tier.
                unsafe {
                    pool.medium
                        .give_from_cache(j, self.medium_bin(j), &pool.budget)
                };
                self.medium_counts[j] = 0;
            }
        }
    }

    /// Drops the entry without touching its pool (which is gone or going).
    fn forget(&mut self) {
        if !self.stats.is_null() {
            // SAFETY: `stats` was made by `claim` with SysBox and no live pool's list
            // links it: its pool is gone, was reset (which empties the list) or `retire`
            // unlinked it.
            drop(unsafe { SysBox::from_raw_in(self.stats, System) });
        }
        if !self.slots.is_null() {
            // SAFETY: `slots` was made by `claim` as a boxed slice of `slots_len` pointers.
            drop(unsafe {
                SysBox::from_raw_in(
                    ptr::slice_from_raw_parts_mut(self.slots, self.slots_len),
                    System,
                )
            });
        }
        if !self.medium_slots.is_null() {
            // SAFETY: made by `claim` as a boxed slice of `medium_slots_len` pointers.
            drop(unsafe {
                SysBox::from_raw_in(
                    ptr::slice_from_raw_parts_mut(self.medium_slots, self.medium_slots_len),
                    System,
                )
            });
        }
        *self = Entry::EMPTY;
    }

    /// Returns the cached blocks and counters to the pool, if it still exists, then
    /// forgets the entry.
    fn retire(&mut self) {
        if self.pool_id == 0 {
            return;
        }
        let live = live_ids();
        if live.contains(&self.pool_id) {
            // SAFETY: the id is in LIVE and we hold LIVE, so the pool has not started to
            // drop and cannot until we release it.
            let pool = unsafe { &*self.pool };
            self.flush_all(pool);
            let mut list = lock(&pool.threads);
            // SAFETY: `stats` is linked in this pool's list, which we hold.
            unsafe {
                let t = &*self.stats;
                add_counters(&mut list.retired_allocs, &t.allocs);
                add_counters(&mut list.retired_frees, &t.frees);
                add_counters(&mut list.retired_medium_allocs, &t.medium_allocs);
                add_counters(&mut list.retired_medium_frees, &t.medium_frees);
                unlink_node!(list.head, self.stats);
            }
        }
        drop(live);
        self.forget();
    }

    /// Gives every cached block back to its chunk or tier.
    fn flush_all(&mut self, pool: &PoolShared) {
        self.flush_medium(pool);
        for ci in 0..pool.small.count {
            let hot = std::mem::replace(&mut self.hot[ci], ptr::null_mut());
            if !hot.is_null() {
                // SAFETY: a free block of class `ci` taken from this pool.
                unsafe { pool.small.give(ci, &[hot], &pool.budget) };
            }
            if self.counts[ci] > 0 {
                // SAFETY: the bin holds blocks of class `ci` of this pool, each taken from
                // it and not in use.
                unsafe { pool.small.give(ci, self.bin(ci), &pool.budget) };
                self.counts[ci] = 0;
            }
        }
    }
}

/// A thread's caches. No destructor, so reaching it costs no registration check on the
/// fast path; [`ExitGuard`] returns its blocks when the thread exits.
struct ThreadCaches {
    /// Set while a slow path borrows the entries, and for good once the thread's exit
    /// guard has run (later frees on the thread take the locked path).
    busy: Cell<bool>,
    /// Byte offset of the entry used last (an index times the entry size, so the fast
    /// paths add instead of multiply).
    last: Cell<usize>,
    entries: UnsafeCell<[Entry; ENTRIES]>,
}

/// Registered on a thread's first claim; its destructor retires every entry. (`CACHES`
/// itself has no destructor, so that its fast-path accesses need no registration check,
/// and it stays readable while thread-local destructors run.)
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        retire_this_thread();
    }
}

/// What a thread's exit does to its caches: every entry gives its blocks back to its pool
/// (if the pool still exists) and is forgotten. Loom runs thread-local destructors after a
/// join has returned, where std runs them before, so loom models call this as the last
/// step of each thread they spawn, to model the exit in the order std keeps.
pub(crate) fn retire_this_thread() {
    let _ = CACHES.try_with(|c| {
        if c.busy.replace(true) {
            return;
        }
        // SAFETY: `busy` was false and stays true from now on, so this is the last
        // borrow of the entries on this thread (its later allocations take the locked
        // path).
        for e in unsafe { &mut *c.entries.get() }.iter_mut() {
            e.retire();
        }
    });
}

/// A thread's caches before their first use.
const fn no_caches() -> ThreadCaches {
    ThreadCaches {
        busy: Cell::new(false),
        last: Cell::new(0),
        entries: UnsafeCell::new([Entry::EMPTY; ENTRIES]),
    }
}

#[cfg(not(loom))]
thread_local! {
    static CACHES: ThreadCaches = const { no_caches() };
    static EXIT_GUARD: ExitGuard = const { ExitGuard };
}
#[cfg(loom)]
loom::thread_local! {
    static CACHES: ThreadCaches = no_caches();
    static EXIT_GUARD: ExitGuard = ExitGuard;
}

/// Runs `f` on this thread's entry for `pool`, claiming one if needed. `None` when the
/// thread has no cache for it (caches full of live pools, thread-local storage being torn
/// down, or a re-entrant call), and the caller takes the locked path.
#[inline]
fn with_entry<R>(pool: &PoolShared, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
    CACHES
        .try_with(|c| {
            if c.busy.replace(true) {
                return None;
            }
            // SAFETY: `busy` was false and is now true, so this is the only borrow of the
            // entries on this thread until we reset it below.
            let entries = unsafe { &mut *c.entries.get() };
            let last = c.last.get() / std::mem::size_of::<Entry>();
            let idx = if entries[last].pool_id == pool.id {
                Some(last)
            } else {
                let found = entries
                    .iter()
                    .position(|e| e.pool_id == pool.id)
                    .or_else(|| claim(entries, pool));
                if let Some(i) = found {
                    c.last.set(i * std::mem::size_of::<Entry>());
                }
                found
            };
            let r = idx.map(|i| f(&mut entries[i]));
            c.busy.set(false);
            r
        })
        .ok()
        .flatten()
}

#[cold]
fn claim(entries: &mut [Entry; ENTRIES], pool: &PoolShared) -> Option<usize> {
    // Make sure the exit guard is registered; a thread that is already exiting gets no
    // new entry, since nothing would hand its blocks back.
    EXIT_GUARD.try_with(|_| ()).ok()?;
    let live = live_ids();
    let slot = entries.iter().position(|e| e.pool_id == 0).or_else(|| {
        let i = entries.iter().position(|e| !live.contains(&e.pool_id))?;
        entries[i].forget();
        Some(i)
    })?;
    drop(live);
    let stats = link_thread_stats(pool);
    let cap = pool.cfg.thread_cache_size;
    let slots_len = cap * pool.small.count;
    let slots = null_slots(slots_len);
    let cache = &pool.medium.cache;
    let medium_slots_len: usize = cache.depths[..cache.count].iter().sum();
    let medium_slots = null_slots(medium_slots_len);
    let mut medium_bases = [ptr::null_mut(); MAX_CACHE_CLASSES];
    let mut medium_depths = [0; MAX_CACHE_CLASSES];
    let mut offset = 0;
    for j in 0..cache.count {
        // SAFETY: the offsets add up the depths, so each class starts inside (or at the
        // end of) the medium slots.
        medium_bases[j] = unsafe { medium_slots.add(offset) };
        medium_depths[j] = cache.depths[j] as u32;
        offset += cache.depths[j];
    }
    entries[slot] = Entry {
        pool_id: pool.id,
        pool,
        stats,
        slots,
        slots_len,
        cap,
        counts: [0; MAX_SMALL_CLASSES],
        // SAFETY: each class's region starts inside (or at the end of) the slots allocation.
        bases: std::array::from_fn(|ci| unsafe { slots.add(ci.min(pool.small.count) * cap) }),
        hot: [ptr::null_mut(); MAX_SMALL_CLASSES],
        medium_slots,
        medium_slots_len,
        medium_counts: [0; MAX_CACHE_CLASSES],
        medium_depths,
        medium_bases,
    };
    Some(slot)
}

/// This thread's counters for `pool`, fresh and linked at the head of the pool's thread
/// list (which [`stats`](super::HierarchicalPool::stats) sums).
fn link_thread_stats(pool: &PoolShared) -> *mut ThreadStats {
    let stats = SysBox::into_raw(SysBox::new_in(
        ThreadStats {
            allocs: zeroed_counters(),
            frees: zeroed_counters(),
            medium_allocs: zeroed_counters(),
            medium_frees: zeroed_counters(),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
        },
        System,
    ));
    let mut list = lock(&pool.threads);
    // SAFETY: `stats` is fresh and ours; the head (if any) is linked and we hold the list.
    unsafe {
        (*stats).next = list.head;
        if let Some(h) = list.head.as_mut() {
            h.prev = stats;
        }
    }
    list.head = stats;
    stats
}

/// `len` null block pointers in a fresh allocation from the system allocator (the pool
/// may be the global allocator), given up as a raw pointer: the entry frees it.
fn null_slots(len: usize) -> *mut *mut u8 {
    let mut slots = SysVec::with_capacity_in(len, System);
    slots.resize(len, ptr::null_mut::<u8>());
    SysBox::into_raw(slots.into_boxed_slice()).cast::<*mut u8>()
}

#[inline]
fn bump(counter: &AtomicU64) {
    // Single writer: a plain load and store, no read-modify-write.
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// The entry this thread used last, for the fast paths.
///
/// # Safety
/// The caller holds no other borrow of the entries, and drops the result before anything
/// could borrow them again (the fast paths make no call while they hold it).
#[inline(always)]
#[allow(clippy::mut_from_ref)] // the entries live in an UnsafeCell; the contract rules out aliasing
unsafe fn last_entry(c: &ThreadCaches) -> &mut Entry {
    // SAFETY: no other borrow of the entries is alive: the only other one is held by
    // `with_entry`'s closures, and nothing they run allocates through the global allocator
    // (their metadata comes from `System`), so the fast paths cannot run inside them.
    // `last` is always the byte offset of an entry (only `with_entry` sets it). After the
    // exit guard ran, every entry is empty, so the callers' id checks send them to the
    // slow (locked) path.
    unsafe {
        &mut *c
            .entries
            .get()
            .cast::<u8>()
            .add(c.last.get())
            .cast::<Entry>()
    }
}

/// The fast path: pops a cached block of class `ci` of pool `id` from the entry this
/// thread used last. `None` sends the caller to the slow path (empty bin, another pool's
/// entry, or thread-local storage unavailable).
#[inline(always)]
pub(crate) fn pop(id: u64, ci: usize) -> Option<NonNull<u8>> {
    CACHES
        .try_with(|c| {
            // SAFETY: this closure holds the entry only for the straight-line code below.
            let e = unsafe { last_entry(c) };
            if e.pool_id != id {
                return None;
            }
            // SAFETY: callers pass a class index below the pool's class count <= MAX_SMALL_CLASSES.
            let hot = unsafe { e.hot.get_unchecked_mut(ci) };
            if let Some(b) = NonNull::new(*hot) {
                *hot = ptr::null_mut();
                // SAFETY: `stats` is this entry's live counter block; `ci` is in range.
                bump(unsafe { (*e.stats).allocs.get_unchecked(ci) });
                return Some(b);
            }
            // SAFETY: as above.
            let n = unsafe { e.counts.get_unchecked_mut(ci) };
            if *n == 0 {
                return None;
            }
            *n -= 1;
            // SAFETY: slot `n` of class `ci` lies in the entry's slots and holds a cached block.
            let b = unsafe { *(*e.bases.get_unchecked(ci)).add(*n) };
            // SAFETY: `stats` is this entry's live counter block; `ci` is in range (above).
            bump(unsafe { (*e.stats).allocs.get_unchecked(ci) });
            // SAFETY: cached pointers are blocks, never null.
            Some(unsafe { NonNull::new_unchecked(b) })
        })
        .ok()
        .flatten()
}

/// The fast path: pushes a freed block of class `ci` of pool `id` onto this thread's bin
/// if it has room. False sends the caller to the slow path.
///
/// # Safety
/// `p` was allocated from pool `id`'s small tier in class `ci` and is not used afterwards.
#[inline(always)]
pub(crate) unsafe fn push(id: u64, ci: usize, p: NonNull<u8>) -> bool {
    CACHES
        .try_with(|c| {
            // SAFETY: this closure holds the entry only for the straight-line code below.
            let e = unsafe { last_entry(c) };
            if e.pool_id != id || e.cap == 0 {
                return false;
            }
            // SAFETY: as in `pop`.
            let hot = unsafe { e.hot.get_unchecked_mut(ci) };
            if hot.is_null() {
                *hot = p.as_ptr();
                // SAFETY: `stats` is this entry's live counter block; `ci` is in range.
                bump(unsafe { (*e.stats).frees.get_unchecked(ci) });
                return true;
            }
            // SAFETY: as in `pop`.
            let n = unsafe { *e.counts.get_unchecked(ci) };
            if n >= e.cap {
                return false;
            }
            // SAFETY: slot `n` of class `ci` lies in the entry's slots (n < cap).
            unsafe { *(*e.bases.get_unchecked(ci)).add(n) = p.as_ptr() };
            // SAFETY: `ci` is in range (as in `pop`).
            unsafe { *e.counts.get_unchecked_mut(ci) = n + 1 };
            // SAFETY: `stats` is this entry's live counter block; `ci` is in range.
            bump(unsafe { (*e.stats).frees.get_unchecked(ci) });
            true
        })
        .unwrap_or(false)
}

/// The fast path of a cacheable medium request: pops a cached block of cache class `j`
/// of pool `id`. `None` sends the caller to the slow path.
#[inline(always)]
pub(crate) fn pop_medium(id: u64, j: usize) -> Option<NonNull<u8>> {
    CACHES
        .try_with(|c| {
            // SAFETY: this closure holds the entry only for the straight-line code below.
            let e = unsafe { last_entry(c) };
            if e.pool_id != id {
                return None;
            }
            // SAFETY: callers pass a cache class index below MAX_CACHE_CLASSES.
            let n = unsafe { e.medium_counts.get_unchecked_mut(j) };
            if *n == 0 {
                return None;
            }
            *n -= 1;
            // SAFETY: slot `n` of class `j` lies in the entry's medium slots and holds a
            // cached block.
            let b = unsafe { *(*e.medium_bases.get_unchecked(j)).add(*n as usize) };
            // SAFETY: `stats` is this entry's live counter block; `j` is in range.
            bump(unsafe { (*e.stats).medium_allocs.get_unchecked(j) });
            // SAFETY: cached pointers are blocks, never null.
            Some(unsafe { NonNull::new_unchecked(b) })
        })
        .ok()
        .flatten()
}

/// The fast path of freeing a cacheable medium block: pushes it onto this thread's stack
/// of cache class `j` if it has room. False sends the caller to the slow path.
///
/// # Safety
/// `p` was allocated from pool `id`'s medium tier in cache class `j` and is not used
/// afterwards.
#[inline(always)]
pub(crate) unsafe fn push_medium(id: u64, j: usize, p: NonNull<u8>) -> bool {
    CACHES
        .try_with(|c| {
            // SAFETY: this closure holds the entry only for the straight-line code below.
            let e = unsafe { last_entry(c) };
            // SAFETY: as in `pop_medium`.
            let n = unsafe { *e.medium_counts.get_unchecked(j) };
            // SAFETY: as above.
            if e.pool_id != id || n >= unsafe { *e.medium_depths.get_unchecked(j) } {
                return false;
            }
            // SAFETY: slot `n` of class `j` lies in the entry's medium slots (n < depth).
            unsafe { *(*e.medium_bases.get_unchecked(j)).add(n as usize) = p.as_ptr() };
            // SAFETY: `j` is in range (as above).
            unsafe { *e.medium_counts.get_unchecked_mut(j) = n + 1 };
            // SAFETY: `stats` is this entry's live counter block; `j` is in range.
            bump(unsafe { (*e.stats).medium_frees.get_unchecked(j) });
            true
        })
        .unwrap_or(false)
}

/// The slow path of a cacheable medium request: refills the stack of cache class `j`
/// with a batch from the medium tier if it is empty (after an out-of-memory, once more
/// after giving back everything the thread caches for the pool). `None` when the
/// thread has no cache for this pool.
pub(crate) fn alloc_medium(pool: &PoolShared, j: usize) -> Option<Result<NonNull<u8>, OomReason>> {
    with_entry(pool, |e| {
        if e.medium_counts[j] == 0 {
            let batch = (e.medium_depths[j] as usize / 2).max(1);
            let n = match pool
                .medium
                .take_for_cache(j, e.medium_room(j, batch), &pool.budget)
            {
                Ok(n) => n,
                Err(_) => {
                    e.flush_medium(pool);
                    match pool
                        .medium
                        .take_for_cache(j, e.medium_room(j, 1), &pool.budget)
                    {
                        Ok(n) => n,
                        Err(reason) => return Err(reason),
                    }
                }
            };
            e.medium_counts[j] = n as u32;
        }
        e.medium_counts[j] -= 1;
        let b = e.medium_room(j, 1)[0];
        // SAFETY: `stats` is this entry's live counter block.
        bump(unsafe { &(*e.stats).medium_allocs[j] });
        // SAFETY: cached pointers are blocks, never null.
        Ok(unsafe { NonNull::new_unchecked(b) })
    })
}

/// The slow path of freeing a cacheable medium block: gives the older half of a full
/// stack back to the tier, then pushes. False when the thread has no cache for this pool.
///
/// # Safety
/// `p` was allocated from `pool`'s medium tier in cache class `j` and is not used
/// afterwards.
pub(crate) unsafe fn free_medium(pool: &PoolShared, j: usize, p: NonNull<u8>) -> bool {
    with_entry(pool, |e| {
        let depth = e.medium_depths[j];
        if e.medium_counts[j] >= depth {
            let give = (depth as usize / 2).max(1);
            let bin = e.medium_bin(j);
            // SAFETY: the bottom `give` entries are free blocks of cache class `j` of
            // this pool's medium tier.
            unsafe { pool.medium.give_from_cache(j, &bin[..give], &pool.budget) };
            bin.copy_within(give.., 0);
            e.medium_counts[j] -= give as u32;
        }
        e.medium_room(j, 1)[0] = p.as_ptr();
        e.medium_counts[j] += 1;
        // SAFETY: `stats` is this entry's live counter block.
        bump(unsafe { &(*e.stats).medium_frees[j] });
    })
    .is_some()
}

/// The slow path of allocation: refills the bin if needed (claiming an entry first if
/// the thread has none for this pool). `None` when the thread has no cache for this pool.
#[inline]
pub(crate) fn alloc(pool: &PoolShared, ci: usize) -> Option<Result<NonNull<u8>, OomReason>> {
    with_entry(pool, |e| {
        if e.counts[ci] == 0 {
            let batch = (e.cap / 2).max(1);
            match pool.small.take(ci, e.room(ci, batch), &pool.budget) {
                Ok(n) => e.counts[ci] = n,
                Err(reason) => return Err(reason),
            }
        }
        e.counts[ci] -= 1;
        let b = e.room(ci, 1)[0];
        // SAFETY: `stats` is this entry's live counter block.
        bump(unsafe { &(*e.stats).allocs[ci] });
        // SAFETY: cached pointers are blocks, never null.
        Ok(unsafe { NonNull::new_unchecked(b) })
    })
}

/// Frees a block of class `ci` into this thread's cache, first giving the older half of
/// a full cache back to the pool; false when the thread has no cache for this pool (the
/// caller takes the locked path).
///
/// # Safety
/// `p` was allocated from `pool`'s small tier in class `ci` and is not used afterwards.
#[inline]
pub(crate) unsafe fn free(pool: &PoolShared, ci: usize, p: NonNull<u8>) -> bool {
    with_entry(pool, |e| {
        if e.counts[ci] >= e.cap {
            // Give back the older half (the bottom of the stack), keeping the most
            // recently freed, cache-hot blocks.
            let give = (e.cap / 2).max(1);
            let bin = e.bin(ci);
            // SAFETY: the bottom `give` entries are cached blocks of class `ci` of this pool.
            unsafe { pool.small.give_batch(ci, &bin[..give], &pool.budget) };
            bin.copy_within(give.., 0);
            e.counts[ci] -= give;
        }
        e.room(ci, 1)[0] = p.as_ptr();
        e.counts[ci] += 1;
        // SAFETY: `stats` is this entry's live counter block.
        bump(unsafe { &(*e.stats).frees[ci] });
    })
    .is_some()
}

/// Returns every block this thread caches for `pool`, and the pool's transfer caches, to
/// the pool's chunks.
pub(crate) fn flush(pool: &PoolShared) {
    with_entry(pool, |e| e.flush_all(pool));
    pool.small.drain_transfer(&pool.budget);
}

/// Returns the medium blocks this thread caches for `pool` to the medium tier.
pub(crate) fn flush_medium(pool: &PoolShared) {
    with_entry(pool, |e| e.flush_medium(pool));
}
