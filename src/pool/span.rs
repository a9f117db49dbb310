//! Spans: runs of address space that grow in place, for the tables' objects and slots.
//!
//! A table keeps its objects at `base + place * size_of::<T>()` and its slots at
//! `base + index * 8`, so that a lookup is one multiply-add from the handle, with no
//! per-chunk pointer to load first. The address space of such a run is a [`Span`]: an
//! anonymous private mapping that grows by doubling (`mremap` on Linux, which moves page
//! tables instead of bytes), whose pages the owner commits and decommits in whole
//! stretches (a table's chunks). Committed bytes are the pool's: they count against its
//! `total_memory` cap and appear in its statistics with the large tier; decommitted
//! pages go back to the OS at once (`MADV_DONTNEED`).
//!
//! A span of at least [`HUGE_PAGES_FROM`] bytes asks for transparent huge pages: random
//! lookups in a large table are bound by TLB misses, which 2 MiB pages remove.
//!
//! A released span of that size is not unmapped at once: the pool keeps its mapping, and
//! the pages the table had in use, for the next span that asks for as much address space
//! ([`RetainedSpans`]), for up to `PoolConfig::retain_table_memory_ms`. Pages used before
//! cost nothing to touch again, where fresh ones cost the kernel's zeroing and, under a
//! hypervisor, the host's page faults: loading a snapshot into memory that the dropped
//! original had just given back runs several times faster. Such a span zeroes the old
//! bytes itself, lazily, as it commits them.
//!
//! Invariants: `base` is aligned to [`SPAN_ALIGN`] and `[base, base + mapped)` is one
//! readable and writable mapping owned by the span (none when `mapped` is 0); `committed`
//! is what the span has counted in its pool and gives back exactly once, in
//! [`Span::release`] or [`Span::decommit`]; every byte the span has not committed reads as
//! zero, except in `[dirty_from, dirty_to)`, which holds no committed byte.

use super::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, lock};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use super::HierarchicalPool;
use super::budget::Budget;
use super::os::round_up;
use crate::error::{Error, OomReason};

/// Alignment of a span's start: a huge page, so that huge pages line up with the span.
pub(crate) const SPAN_ALIGN: usize = 2 << 20;

/// Spans at least this long ask the OS for transparent huge pages.
pub(crate) const HUGE_PAGES_FROM: usize = 4 << 20;

/// The smallest mapping a span makes.
const MIN_MAPPING: usize = 64 << 10;

/// Bytes committed in the spans of one pool, and the spans holding some: each such span
/// counts as one live allocation of the pool (made when its first byte is committed,
/// freed when its last is given back).
#[derive(Debug, Default)]
pub(crate) struct SpanCounters {
    pub committed: AtomicUsize,
    pub spans: AtomicUsize,
    pub allocs: AtomicU64,
    pub frees: AtomicU64,
}

impl SpanCounters {
    /// Counts a span whose last committed byte went (back to the OS or to the pool's
    /// retained mappings) as one allocation freed.
    fn span_emptied(&self) {
        self.spans.fetch_sub(1, Ordering::Relaxed);
        self.frees.fetch_add(1, Ordering::Relaxed);
    }
}

/// A run of address space whose pages are committed on demand; see the module doc.
#[derive(Debug)]
pub(crate) struct Span {
    base: NonNull<u8>,
    mapped: usize,
    committed: usize,
    huge: bool,
    /// Bytes from `base` bound to the committing pool's NUMA placement (the whole
    /// mapping, or less after a growth, or none when the pool has no placement).
    bound: usize,
    /// Where bytes an earlier owner of the mapping left may still be (see the module
    /// doc); empty for a fresh mapping.
    dirty_from: usize,
    dirty_to: usize,
    /// The end of the highest range ever committed (or left dirty): what a later owner
    /// of the mapping must zero.
    high_water: usize,
}

// SAFETY: a span is a plain mapping owned by one owner; moving it to another thread moves
// nothing but the address.
unsafe impl Send for Span {}
// SAFETY: shared access to a span only reads its address and lengths.
unsafe impl Sync for Span {}

impl Default for Span {
    fn default() -> Self {
        Self::new()
    }
}

impl Span {
    /// A span with no address space yet.
    pub(crate) const fn new() -> Self {
        Span {
            base: NonNull::dangling(),
            mapped: 0,
            committed: 0,
            huge: false,
            bound: 0,
            dirty_from: 0,
            dirty_to: 0,
            high_water: 0,
        }
    }

    /// The start of the span (dangling, aligned to [`SPAN_ALIGN`] in spirit, while nothing
    /// is mapped: never read or written then).
    #[inline]
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Bytes of address space mapped.
    #[cfg(test)]
    pub(crate) fn mapped(&self) -> usize {
        self.mapped
    }

    /// Bytes counted in the pool.
    pub(crate) fn committed(&self) -> usize {
        self.committed
    }

    /// Makes sure at least `len` bytes are mapped, doubling the mapping (or more) when it
    /// grows. The span may move: every address taken from it before is void. A span's
    /// first mapping of [`HUGE_PAGES_FROM`] bytes or more is one that `pool` retained,
    /// when it has one large enough. On error nothing changes.
    pub(crate) fn reserve(&mut self, pool: &HierarchicalPool, len: usize) -> Result<(), Error> {
        if len <= self.mapped {
            return Ok(());
        }
        let oom = |reason| Error::OutOfMemory {
            requested: len,
            align: SPAN_ALIGN,
            reason,
        };
        let want = len
            .max(self.mapped.saturating_mul(2))
            .max(MIN_MAPPING)
            .checked_next_power_of_two()
            .and_then(|n| round_up(n, MIN_MAPPING))
            .ok_or(oom(OomReason::LayoutTooLarge))?;
        if self.mapped == 0
            && want >= HUGE_PAGES_FROM
            && let Some(retained) = pool.retained_spans().take(want, pool.budget())
        {
            self.adopt(retained, len);
            return Ok(());
        }
        let base = if self.mapped == 0 {
            sys::map(want)
        } else {
            // SAFETY: `[base, base + mapped)` is this span's own mapping (invariant), and
            // the exclusive borrow means no reference into it is alive.
            unsafe { sys::grow(self.base, self.mapped, want) }
        }
        .ok_or(oom(OomReason::OsRefused))?;
        self.base = base;
        self.mapped = want;
        // Every growth maps fresh address space for the part past the old pages, and the
        // advice is per mapping: it is given again over the whole span each time.
        if want >= HUGE_PAGES_FROM {
            sys::advise_huge(base, want);
            self.huge = true;
        }
        Ok(())
    }

    /// Takes `retained` as the span's mapping, for an owner that asked for `len` bytes:
    /// the pages past those go back to the OS, and the old bytes below are zeroed as they
    /// are committed.
    fn adopt(&mut self, retained: RetainedMapping, len: usize) {
        let keep = round_up(len, SPAN_ALIGN)
            .unwrap_or(retained.mapped)
            .min(retained.mapped);
        if retained.dirty > keep {
            // SAFETY: `[keep, dirty)` lies in the retained mapping, which is now this
            // span's, and nothing uses it.
            unsafe { sys::discard(retained.base.add(keep), retained.dirty - keep) };
        }
        self.base = retained.base;
        self.mapped = retained.mapped;
        self.huge = true;
        self.bound = retained.bound;
        self.dirty_from = 0;
        self.dirty_to = retained.dirty.min(keep);
        self.high_water = self.dirty_to;
    }

    /// Counts the `len` bytes from `offset` as committed in `pool` (the caller is about to
    /// use them; they read as zeros), or refuses under the pool's cap and changes nothing.
    /// Under the cap, the pool's retained mappings go back to the OS before a refusal.
    pub(crate) fn commit(
        &mut self,
        pool: &HierarchicalPool,
        offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        debug_assert!(offset + len <= self.mapped);
        self.count(pool, len)?;
        let end = offset + len;
        if end > self.dirty_from && offset < self.dirty_to {
            let to = end.min(self.dirty_to);
            // SAFETY: `[dirty_from, to)` lies in the mapping and holds no committed byte
            // (invariant), so nothing borrows it.
            unsafe {
                std::ptr::write_bytes(
                    self.base.as_ptr().add(self.dirty_from),
                    0,
                    to - self.dirty_from,
                )
            };
            self.dirty_from = to;
        }
        self.high_water = self.high_water.max(end);
        Ok(())
    }

    /// The accounting of [`commit`](Self::commit).
    fn count(&mut self, pool: &HierarchicalPool, len: usize) -> Result<(), Error> {
        let refused = |reason| Error::OutOfMemory {
            requested: len,
            align: SPAN_ALIGN,
            reason,
        };
        let numa = pool.numa_binding();
        if numa.is_some() && self.bound != self.mapped {
            // SAFETY: `[base, base + mapped)` is the span's own mapping (invariant); the
            // placement applies to the pages touched from now on.
            if !unsafe { numa.apply(self.base.as_ptr(), self.mapped) } {
                return Err(refused(OomReason::OsRefused));
            }
            self.bound = self.mapped;
        }
        if let Err(reason) = pool.span_account(len as isize) {
            if pool.retained_spans().purge(pool.budget(), Duration::ZERO) == 0 {
                return Err(refused(reason));
            }
            pool.span_account(len as isize).map_err(refused)?;
        }
        if self.committed == 0 && len > 0 {
            let counters = pool.span_counters();
            counters.spans.fetch_add(1, Ordering::Relaxed);
            counters.allocs.fetch_add(1, Ordering::Relaxed);
        }
        self.committed += len;
        Ok(())
    }

    /// Has the OS back the committed bytes `[offset, offset + len)` with memory now, as
    /// first writes would (pages already there keep their bytes), so that the writes
    /// that follow do not fault. Threads may populate disjoint ranges of one span at
    /// once, each paying its own pages' faults. Does nothing where the OS cannot (Linux
    /// before 5.14, other systems).
    pub(crate) fn populate(&self, offset: usize, len: usize) {
        debug_assert!(offset + len <= self.mapped);
        let start = offset & !(sys::PAGE - 1);
        let end = round_up(offset + len, sys::PAGE).map_or(self.mapped, |e| e.min(self.mapped));
        if start < end {
            // SAFETY: `[start, end)` lies in the span's mapping (checked above).
            unsafe { sys::populate(self.base.add(start), end - start) };
        }
    }

    /// Gives the pages wholly inside `[offset, offset + len)` back to the OS and `len`
    /// bytes back to `pool`'s account. Their contents are lost (they read as zeros later).
    ///
    /// # Safety
    /// The range lies in the mapping, nothing reads or writes it any more until it is
    /// written again, and `len` bytes of it were committed.
    pub(crate) unsafe fn decommit(&mut self, pool: &HierarchicalPool, offset: usize, len: usize) {
        debug_assert!(offset + len <= self.mapped && len <= self.committed);
        let page = sys::PAGE;
        let start = round_up(offset, page).unwrap_or(usize::MAX);
        let end = (offset + len) & !(page - 1);
        if start < end {
            // SAFETY: `[start, end)` lies in the mapping (per the contract) and nothing
            // uses it; the pages are whole.
            unsafe { sys::discard(self.base.add(start), end - start) };
        }
        self.uncount(pool, len);
    }

    /// Gives every committed byte back to `pool`'s account and the whole mapping back to
    /// the OS; the span is empty afterwards. A huge span's mapping stays with `pool` for
    /// a while instead, with the pages it had in use (see the module doc), when the pool
    /// retains table memory.
    ///
    /// # Safety
    /// Nothing reads or writes the span's memory any more.
    pub(crate) unsafe fn release(&mut self, pool: &HierarchicalPool) {
        let keep_for = pool.retain_spans_for();
        if self.huge && self.committed > 0 && !keep_for.is_zero() {
            self.hand_to_pool(pool, keep_for);
        } else {
            self.uncount(pool, self.committed);
            if self.mapped > 0 {
                // SAFETY: the mapping is the span's own and unused (per the contract).
                unsafe { sys::unmap(self.base, self.mapped) };
            }
        }
        // Field by field: assigning a new span would drop this one, unmapping again.
        self.base = NonNull::dangling();
        self.mapped = 0;
        self.huge = false;
        self.bound = 0;
        self.dirty_from = 0;
        self.dirty_to = 0;
        self.high_water = 0;
    }

    /// Gives the mapping to `pool`'s retained ones; its committed bytes stay in the
    /// pool's budget, counted as retained rather than as the span's.
    fn hand_to_pool(&mut self, pool: &HierarchicalPool, keep_for: Duration) {
        let retained = RetainedMapping {
            base: self.base,
            mapped: self.mapped,
            dirty: self.high_water,
            counted: self.committed,
            bound: self.bound,
            released: Instant::now(),
        };
        let counters = pool.span_counters();
        counters
            .committed
            .fetch_sub(self.committed, Ordering::Relaxed);
        counters.span_emptied();
        self.committed = 0;
        pool.retained_spans()
            .keep(retained, pool.budget(), keep_for);
    }

    fn uncount(&mut self, pool: &HierarchicalPool, len: usize) {
        if len == 0 {
            return;
        }
        pool.span_account(-(len as isize))
            .expect("giving bytes back never fails");
        self.committed -= len;
        if self.committed == 0 {
            pool.span_counters().span_emptied();
        }
    }
}

/// A released span's mapping, waiting in its pool for the next span.
#[derive(Debug)]
pub(crate) struct RetainedMapping {
    base: NonNull<u8>,
    mapped: usize,
    /// Bytes from `base` that may hold the last owner's data; the rest reads as zeros.
    dirty: usize,
    /// Bytes counted in the pool's budget for it: what the last owner had committed.
    counted: usize,
    bound: usize,
    released: Instant,
}

// SAFETY: a retained mapping is address space that no one uses; moving it to another
// thread moves nothing but the address.
unsafe impl Send for RetainedMapping {}

impl RetainedMapping {
    /// Unmaps it and gives its bytes back to `budget`.
    fn unmap(self, budget: &Budget) {
        budget.release(self.counted);
        // SAFETY: the mapping is retained, so no span owns it and nothing uses it.
        unsafe { sys::unmap(self.base, self.mapped) };
    }
}

/// At most this many mappings wait in a pool (the list never allocates: the pool may be
/// the global allocator).
const RETAINED_MAX: usize = 32;

/// The mappings of released huge spans that a pool keeps for reuse (see the module doc):
/// their pages stay resident and counted in the pool's budget until a span adopts one
/// ([`take`](Self::take)), they grow older than the pool's retention time (checked
/// whenever a mapping comes or goes), the pool is trimmed, reset or dropped, or a commit
/// would pass the pool's cap.
#[derive(Debug)]
pub(crate) struct RetainedSpans {
    mappings: Mutex<[Option<RetainedMapping>; RETAINED_MAX]>,
    /// Bytes counted for the retained mappings.
    bytes: AtomicUsize,
}

impl Default for RetainedSpans {
    fn default() -> Self {
        RetainedSpans {
            mappings: Mutex::new(std::array::from_fn(|_| None)),
            bytes: AtomicUsize::new(0),
        }
    }
}

impl RetainedSpans {
    /// Bytes counted for the retained mappings.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keeps `mapping` (whose bytes `budget` counts already), unmapping those older than
    /// `keep_for` and, when every place is taken, the oldest.
    fn keep(&self, mapping: RetainedMapping, budget: &Budget, keep_for: Duration) {
        let mut list = lock(&self.mappings);
        self.expire(&mut list, budget, keep_for);
        let place = match list.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                let oldest = (0..RETAINED_MAX)
                    .min_by_key(|&i| list[i].as_ref().map(|m| m.released))
                    .expect("the list is not empty");
                self.unmap_at(&mut list, oldest, budget);
                oldest
            }
        };
        self.bytes.fetch_add(mapping.counted, Ordering::Relaxed);
        list[place] = Some(mapping);
    }

    /// The smallest retained mapping of at least `len` bytes (the latest released among
    /// equals), its bytes given back to `budget`: the span that adopts it counts what it
    /// commits.
    fn take(&self, len: usize, budget: &Budget) -> Option<RetainedMapping> {
        if self.bytes() == 0 {
            return None;
        }
        let mut list = lock(&self.mappings);
        let best = (0..RETAINED_MAX)
            .filter(|&i| list[i].as_ref().is_some_and(|m| m.mapped >= len))
            .min_by_key(|&i| {
                let m = list[i].as_ref().expect("filtered");
                (m.mapped, std::cmp::Reverse(m.released))
            })?;
        let mapping = list[best].take().expect("filtered");
        self.bytes.fetch_sub(mapping.counted, Ordering::Relaxed);
        budget.release(mapping.counted);
        Some(mapping)
    }

    /// Unmaps the mappings released more than `age` ago (all of them for a zero age);
    /// returns the bytes given back.
    pub(crate) fn purge(&self, budget: &Budget, age: Duration) -> usize {
        if self.bytes() == 0 {
            return 0;
        }
        let mut list = lock(&self.mappings);
        self.expire(&mut list, budget, age)
    }

    fn expire(
        &self,
        list: &mut [Option<RetainedMapping>; RETAINED_MAX],
        budget: &Budget,
        age: Duration,
    ) -> usize {
        let mut freed = 0;
        for i in 0..RETAINED_MAX {
            if list[i]
                .as_ref()
                .is_some_and(|m| age.is_zero() || m.released.elapsed() > age)
            {
                freed += self.unmap_at(list, i, budget);
            }
        }
        freed
    }

    fn unmap_at(
        &self,
        list: &mut [Option<RetainedMapping>; RETAINED_MAX],
        i: usize,
        budget: &Budget,
    ) -> usize {
        let Some(mapping) = list[i].take() else {
            return 0;
        };
        let bytes = mapping.counted;
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        mapping.unmap(budget);
        bytes
    }
}

impl Drop for Span {
    /// Unmaps what is left. An owner gives its committed bytes back first
    /// ([`release`](Span::release)); a span dropped without that only loses the account.
    fn drop(&mut self) {
        if self.mapped > 0 {
            // SAFETY: the mapping is the span's own; it is being dropped, so nothing
            // borrows its memory any more.
            unsafe { sys::unmap(self.base, self.mapped) };
        }
    }
}

#[cfg(target_os = "linux")]
mod sys {
    //! Linux: `mmap`, `mremap` onto an aligned reservation, `madvise`.

    use std::ptr::NonNull;

    use super::SPAN_ALIGN;

    /// The smallest unit `madvise` discards.
    pub(super) const PAGE: usize = 4096;

    /// Maps `len` bytes (a multiple of 64 KiB), readable and writable, aligned to
    /// [`SPAN_ALIGN`], without reserving swap for them.
    pub(super) fn map(len: usize) -> Option<NonNull<u8>> {
        crate::pool::os::map(len, SPAN_ALIGN, false)
    }

    /// Moves the mapping `[base, base + old)` to a fresh aligned one of `new` bytes
    /// (page tables move, bytes are not copied). `None` leaves the old mapping as it was.
    ///
    /// # Safety
    /// `[base, base + old)` is a whole mapping from [`map`] or [`grow`], unborrowed.
    pub(super) unsafe fn grow(base: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
        let target = map(new)?;
        // SAFETY: both ranges are mappings this module made. MREMAP_FIXED puts the old
        // pages over the first `old` bytes of the fresh, aligned target (the kernel unmaps
        // those first, atomically); the rest of the target stays as mapped above. The
        // mapping is moved at its own length rather than grown by mremap, so that tools
        // that track mappings (valgrind) see every byte of the result mapped.
        let moved = unsafe {
            libc::mremap(
                base.as_ptr().cast(),
                old,
                old,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target.as_ptr().cast::<libc::c_void>(),
            )
        };
        if moved == libc::MAP_FAILED {
            // SAFETY: the target was mapped above and nothing uses it.
            unsafe { unmap(target, new) };
            return None;
        }
        NonNull::new(moved.cast())
    }

    /// Asks for transparent huge pages over `[base, base + len)`.
    pub(super) fn advise_huge(base: NonNull<u8>, len: usize) {
        // SAFETY: the range is a mapping of ours; madvise only changes paging policy.
        unsafe { libc::madvise(base.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
    }

    /// Faults the pages of `[ptr, ptr + len)` in for writing, keeping their bytes; an
    /// older kernel's refusal (`EINVAL`) leaves them to fault on first use.
    ///
    /// # Safety
    /// The range lies in a mapping of ours.
    pub(super) unsafe fn populate(ptr: NonNull<u8>, len: usize) {
        // SAFETY: per the contract; MADV_POPULATE_WRITE changes no byte of the range.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_POPULATE_WRITE) };
    }

    /// Gives the whole pages of `[ptr, ptr + len)` back to the OS; they read as zeros
    /// afterwards.
    ///
    /// # Safety
    /// The range lies in a mapping of ours and nothing uses its contents.
    pub(super) unsafe fn discard(ptr: NonNull<u8>, len: usize) {
        // SAFETY: per the contract; MADV_DONTNEED keeps the mapping.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) };
    }

    /// Unmaps `[base, base + len)`.
    ///
    /// # Safety
    /// The range is a whole mapping of ours that nothing uses.
    pub(super) unsafe fn unmap(base: NonNull<u8>, len: usize) {
        // SAFETY: per the contract, a whole mapping that `map` (`os::map`) or `grow` made.
        unsafe { crate::pool::os::unmap(base, len, SPAN_ALIGN) };
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    //! Elsewhere: zeroed blocks from the system allocator, grown by copying.

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::ptr::NonNull;

    use super::SPAN_ALIGN;

    /// The unit [`discard`] works in.
    pub(super) const PAGE: usize = 4096;

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, SPAN_ALIGN).expect("span lengths are bounded")
    }

    pub(super) fn map(len: usize) -> Option<NonNull<u8>> {
        // SAFETY: the layout has a non-zero size.
        NonNull::new(unsafe { System.alloc_zeroed(layout(len)) })
    }

    /// # Safety
    /// `[base, base + old)` is a whole block from [`map`] or [`grow`], unborrowed.
    pub(super) unsafe fn grow(base: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
        let target = map(new)?;
        // SAFETY: both blocks are ours, `old <= new`, and they do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(base.as_ptr(), target.as_ptr(), old);
            unmap(base, old);
        }
        Some(target)
    }

    pub(super) fn advise_huge(_base: NonNull<u8>, _len: usize) {}

    /// # Safety
    /// The range lies in a block of ours.
    pub(super) unsafe fn populate(_ptr: NonNull<u8>, _len: usize) {}

    /// # Safety
    /// The range lies in a block of ours and nothing uses its contents.
    pub(super) unsafe fn discard(ptr: NonNull<u8>, len: usize) {
        // SAFETY: per the contract; zeros keep the "reads as zeros" promise.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
    }

    /// # Safety
    /// The block is ours, from [`map`] or [`grow`], and nothing uses it.
    pub(super) unsafe fn unmap(base: NonNull<u8>, len: usize) {
        // SAFETY: per the contract, with the layout it was allocated with.
        unsafe { System.dealloc(base.as_ptr(), layout(len)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolConfig;

    #[test]
    fn a_span_grows_in_place_keeps_its_bytes_and_counts_what_is_committed() {
        let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
        let mut span = Span::new();
        span.reserve(&pool, 100).unwrap();
        assert_eq!(span.mapped(), MIN_MAPPING);
        assert_eq!(span.base().as_ptr() as usize % SPAN_ALIGN, 0);
        span.commit(&pool, 0, 64 << 10).unwrap();
        // SAFETY: the first 64 KiB are mapped and committed.
        unsafe { span.base().as_ptr().add(4095).write(7) };
        span.reserve(&pool, 5 << 20).unwrap();
        assert!(span.mapped() >= 5 << 20 && span.huge);
        assert_eq!(span.base().as_ptr() as usize % SPAN_ALIGN, 0);
        // SAFETY: still mapped; the byte moved with its page.
        assert_eq!(unsafe { span.base().as_ptr().add(4095).read() }, 7);
        let st = pool.stats();
        assert_eq!((st.reserved_bytes, st.large.regions), (64 << 10, 1));
        span.commit(&pool, 64 << 10, 64 << 10).unwrap();
        // SAFETY: the second 64 KiB are committed and unused.
        unsafe { span.decommit(&pool, 64 << 10, 64 << 10) };
        assert_eq!(pool.stats().in_use_bytes, 64 << 10);
        // SAFETY: nothing uses the span any more.
        unsafe { span.release(&pool) };
        assert_eq!(span.mapped(), 0);
        // The huge span's mapping waits in the pool, with the page it used, until trimmed.
        let st = pool.stats();
        assert_eq!((st.reserved_bytes, st.large.regions), (64 << 10, 0));
        assert_eq!(pool.trim(), 64 << 10);
        assert_eq!(pool.stats().reserved_bytes, 0);
    }

    /// The `VmFlags` of every mapping of this process that overlaps `[start, end)`.
    #[cfg(target_os = "linux")]
    fn vm_flags_over(start: usize, end: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut flags = Vec::new();
        let mut overlaps = false;
        for line in smaps.lines() {
            if let Some(rest) = line.strip_prefix("VmFlags:") {
                if overlaps {
                    flags.push(rest.trim().to_string());
                }
            } else if let Some((range, _)) = line.split_once(' ')
                && let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                overlaps = a < end && start < b;
            }
        }
        flags
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn every_growth_past_the_threshold_asks_for_huge_pages_over_the_whole_span() {
        let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
        let mut span = Span::new();
        for len in [HUGE_PAGES_FROM, 4 * HUGE_PAGES_FROM, 16 * HUGE_PAGES_FROM] {
            span.reserve(&pool, len).unwrap();
            let start = span.base().as_ptr() as usize;
            let flags = vm_flags_over(start, start + span.mapped());
            assert!(!flags.is_empty(), "the span's mapping is listed");
            assert!(
                flags.iter().all(|f| f.split(' ').any(|x| x == "hg")),
                "after growing to {len} bytes, a part of the span lacks the huge-page advice: {flags:?}"
            );
        }
        // SAFETY: nothing uses the span.
        unsafe { span.release(&pool) };
    }

    #[test]
    fn commits_past_the_cap_are_refused_and_change_nothing() {
        let config = PoolConfig {
            total_memory: Some(1 << 20),
            retain_table_memory_ms: 0,
            ..PoolConfig::default()
        };
        let pool = HierarchicalPool::new(config).unwrap();
        let mut span = Span::new();
        span.reserve(&pool, 4 << 20).unwrap();
        span.commit(&pool, 0, 1 << 20).unwrap();

        let err = span.commit(&pool, 1 << 20, 64 << 10).unwrap_err();
        assert!(matches!(
            err,
            Error::OutOfMemory {
                reason: OomReason::MemoryCap { .. },
                ..
            }
        ));
        assert_eq!(span.committed(), 1 << 20);
        // SAFETY: nothing uses the span.
        unsafe { span.release(&pool) };
        assert_eq!(pool.stats().reserved_bytes, 0);
    }

    #[test]
    fn populated_pages_keep_their_bytes_and_fresh_ones_read_as_zeros() {
        let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
        let mut span = filled(&pool, 4 << 20, 0x33);
        span.reserve(&pool, 8 << 20).unwrap();
        span.commit(&pool, 4 << 20, 4 << 20).unwrap();
        // Unaligned, across the written and the fresh half.
        span.populate(100, (8 << 20) - 200);
        // SAFETY: the 8 MiB are committed; nothing else uses them.
        let bytes = unsafe { std::slice::from_raw_parts(span.base().as_ptr(), 8 << 20) };
        assert!(bytes[..4 << 20].iter().all(|&b| b == 0x33));
        assert!(bytes[4 << 20..].iter().all(|&b| b == 0));
        // SAFETY: nothing uses the span any more.
        unsafe { span.release(&pool) };
    }

    #[test]
    fn decommitted_pages_read_as_zeros() {
        let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
        let mut span = Span::new();
        span.reserve(&pool, 3 * sys::PAGE).unwrap();
        span.commit(&pool, 0, 3 * sys::PAGE).unwrap();
        // SAFETY: three pages are mapped and committed.
        unsafe {
            std::ptr::write_bytes(span.base().as_ptr(), 0xAB, 3 * sys::PAGE);
            // Bytes 100 .. 2 pages + 100: only the second page is whole inside.
            span.decommit(&pool, 100, 2 * sys::PAGE);
            assert_eq!(span.base().as_ptr().add(sys::PAGE).read(), 0);
            assert_eq!(span.base().as_ptr().add(99).read(), 0xAB);
            assert_eq!(span.base().as_ptr().add(2 * sys::PAGE + 100).read(), 0xAB);
        }
        assert_eq!(span.committed(), sys::PAGE);
        // SAFETY: nothing uses the span.
        unsafe { span.release(&pool) };
    }

    /// A pool that keeps dropped large tables' memory for `ms` milliseconds.
    fn retaining(ms: u64) -> HierarchicalPool {
        HierarchicalPool::new(PoolConfig {
            retain_table_memory_ms: ms,
            ..PoolConfig::default()
        })
        .unwrap()
    }

    /// A huge span with `len` bytes committed from 0 and filled with `byte`.
    fn filled(pool: &HierarchicalPool, len: usize, byte: u8) -> Span {
        let mut span = Span::new();
        span.reserve(pool, len).unwrap();
        span.commit(pool, 0, len).unwrap();
        // SAFETY: `len` bytes are mapped and committed.
        unsafe { std::ptr::write_bytes(span.base().as_ptr(), byte, len) };
        span
    }

    /// Uses `len` bytes of a new span and releases it.
    fn fill_and_release(pool: &HierarchicalPool, len: usize) {
        let mut span = filled(pool, len, 0x5A);
        // SAFETY: nothing uses the span any more.
        unsafe { span.release(pool) };
    }

    #[test]
    fn a_released_huge_span_is_retained_and_the_next_one_adopts_it_zeroed() {
        let pool = retaining(60_000);
        let len = 8 << 20;
        let mut first = filled(&pool, len, 0xAB);
        let base = first.base();
        // SAFETY: nothing uses the span any more.
        unsafe { first.release(&pool) };
        let st = pool.stats();
        assert_eq!((st.in_use_bytes, st.reserved_bytes), (0, len));
        assert_eq!(pool.retained_spans().bytes(), len);

        let mut second = Span::new();
        second.reserve(&pool, 6 << 20).unwrap();
        assert_eq!(second.base(), base, "the retained mapping is reused");
        assert_eq!(pool.retained_spans().bytes(), 0);
        assert_eq!(pool.stats().reserved_bytes, 0);
        // Committed piecewise and out of order, every committed byte reads as zero.
        second.commit(&pool, 4 << 20, 64 << 10).unwrap();
        second.commit(&pool, 0, 64 << 10).unwrap();
        second.commit(&pool, 1 << 20, 3 << 20).unwrap();
        // SAFETY: these ranges are committed.
        unsafe {
            for (from, n) in [(4 << 20, 64 << 10), (0, 64 << 10), (1 << 20, 3 << 20)] {
                let bytes = std::slice::from_raw_parts(second.base().as_ptr().add(from), n);
                assert!(bytes.iter().all(|&b| b == 0), "old bytes at {from}");
            }
        }
        assert_eq!(pool.stats().in_use_bytes, (3 << 20) + (128 << 10));
        // SAFETY: nothing uses the span any more.
        unsafe { second.release(&pool) };
        assert_eq!(pool.trim(), (3 << 20) + (128 << 10));
        assert_eq!(pool.stats().reserved_bytes, 0);
    }

    #[test]
    fn small_spans_too_small_requests_and_pools_that_keep_nothing_retain_nothing() {
        let pool = retaining(60_000);
        fill_and_release(&pool, 1 << 20);
        assert_eq!(pool.stats().reserved_bytes, 0);

        fill_and_release(&pool, 8 << 20);
        let mut other = Span::new();
        other.reserve(&pool, 16 << 20).unwrap(); // larger than anything retained
        other.reserve(&pool, 64 << 20).unwrap();
        assert_eq!(pool.retained_spans().bytes(), 8 << 20);
        // SAFETY: nothing uses the span.
        unsafe { other.release(&pool) };

        let off = retaining(0);
        fill_and_release(&off, 8 << 20);
        assert_eq!(off.stats().reserved_bytes, 0);
    }

    #[test]
    fn retained_mappings_go_when_they_are_old_or_the_cap_needs_them() {
        let pool = retaining(1);
        fill_and_release(&pool, 8 << 20);
        std::thread::sleep(Duration::from_millis(5));
        fill_and_release(&pool, 4 << 20);
        assert_eq!(
            pool.retained_spans().bytes(),
            4 << 20,
            "the older one expired"
        );
        drop(pool);

        let capped = HierarchicalPool::new(PoolConfig {
            total_memory: Some(12 << 20),
            ..PoolConfig::default()
        })
        .unwrap();
        fill_and_release(&capped, 8 << 20);
        assert_eq!(capped.retained_spans().bytes(), 8 << 20);
        let mut other = Span::new();
        other.reserve(&capped, 1 << 20).unwrap(); // not huge: maps its own
        other.reserve(&capped, 16 << 20).unwrap(); // grows: adopts nothing
        other.commit(&capped, 0, 6 << 20).unwrap();
        assert_eq!(
            capped.retained_spans().bytes(),
            0,
            "given back for the commit"
        );
        let err = other.commit(&capped, 6 << 20, 7 << 20).unwrap_err();
        assert!(matches!(
            err,
            Error::OutOfMemory {
                reason: OomReason::MemoryCap { .. },
                ..
            }
        ));
        // SAFETY: nothing uses the span.
        unsafe { other.release(&capped) };
        capped.trim();
        assert_eq!(capped.stats().reserved_bytes, 0);
    }
}
