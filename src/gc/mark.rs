//! The marking engine: the incremental collector's depth-first drains, and the table
//! view, mark bits and dangling records that the stop-the-world collector's levels
//! (`levels.rs`) share.
//!
//! A [`Marker`] sees every table of a store in a fixed order, with one atomic mark bit
//! per slot index for each traced table. An edge (a handle some object holds) is
//! checked against its target table first: a handle that does not resolve is dangling,
//! recorded and never followed. A live target in a traced table is marked with one
//! `fetch_or`; the thread that set the bit owns the object and pushes it on its grey
//! stack. Stacks that grow past [`SPLIT_AT`] give half of their work to a new rayon task,
//! so idle threads steal from busy ones.
//!
//! Marking a large random graph is a chain of cache misses: the slot of every edge's
//! target, its mark bit, then the object of every grey one. The drains work in batches
//! so that the misses overlap instead of following one another. A drain pops up to
//! [`BATCH`] grey objects of one table and traces them together: the table reads every
//! slot and prefetches every object before tracing any
//! ([`Table::for_each_many`](crate::table::Table::for_each_many)), and the tracer
//! appends each handle to an [`EdgeBuffer`] (no call and no `AnyHandle` per handle).
//! Then, for each run of edges into one table, one call reads all their slots
//! ([`TableInternals::live_many`]) and a branch-free pass loads all their mark bits, so
//! that only the last, branchy pass (dangling or newly marked?) runs over cached data.
//! On the 10M-object graph of `benches/gc.rs` this marks about 31M handles per second
//! on one thread; the stop-the-world collector's levels, which keep each step's misses
//! inside one cache-sized range, mark about 66M.

use std::any::TypeId;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Dangling, GcOps};
use crate::erased::TableInternals;
use crate::pooled::{AnyHandle, EdgeBuffer};

/// A grey object: its table's position in the marker, and its handle's bits.
pub(crate) type Grey = (u32, u64);

/// A grey stack longer than this hands half of itself to another task.
const SPLIT_AT: usize = 1024;

/// Grey objects scanned together by the parallel drain.
const BATCH: usize = 256;

/// A budgeted drain scans batches of this many objects and reads the clock after each
/// (a few microseconds apart, so the clock costs well under 1 % of the scanning); it
/// stops before a batch that would likely end past its deadline.
pub(crate) const CLOCK_EVERY: usize = 16;

/// Where a scan puts the objects it greys.
pub(crate) trait Push {
    fn push(&mut self, g: Grey);
}

impl Push for Vec<Grey> {
    #[inline]
    fn push(&mut self, g: Grey) {
        Vec::push(self, g);
    }
}

/// A stack the drains take their batches from.
trait Pop: Push {
    fn pop(&mut self) -> Option<Grey>;
    /// The table of the top entry.
    fn top_table(&self) -> Option<u32>;

    /// Pops up to `max` entries of the top entry's table into `out` (cleared first);
    /// that table, or `None` when the stack is empty.
    fn pop_batch(&mut self, max: usize, out: &mut Vec<u64>) -> Option<u32> {
        out.clear();
        let ti = self.top_table()?;
        while out.len() < max && self.top_table() == Some(ti) {
            out.push(self.pop()?.1);
        }
        Some(ti)
    }
}

impl Pop for Vec<Grey> {
    #[inline]
    fn pop(&mut self) -> Option<Grey> {
        Vec::pop(self)
    }
    #[inline]
    fn top_table(&self) -> Option<u32> {
        self.last().map(|g| g.0)
    }
}

/// Entries per segment of a [`GreyStack`].
const SEGMENT: usize = 1 << 14;

/// The grey stack of an incremental cycle, in fixed-size segments: it can hold millions
/// of objects without ever copying them all to grow, which would stall one step.
#[derive(Default)]
pub(crate) struct GreyStack {
    full: Vec<Vec<Grey>>,
    top: Vec<Grey>,
    /// Emptied segments, kept for pushes past a full one until the cycle ends. A stack
    /// that goes up and down across a segment boundary would otherwise map and unmap a
    /// segment (256 KiB) each time; and a shrinking stack that freed its segments would
    /// let the allocator give memory back to the OS in whole steps of it: glibc's heap
    /// shrank 16 MiB at a time on the bench graph, 1.5 ms in one `gc_step(1 ms)`. So a
    /// cycle holds its grey stack's peak (16 bytes per grey object) until it finishes.
    spare: Vec<Vec<Grey>>,
}

impl GreyStack {
    pub(crate) fn len(&self) -> usize {
        self.full.len() * SEGMENT + self.top.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.top.is_empty() && self.full.is_empty()
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Grey> {
        if self.top.is_empty() {
            let below = self.full.pop()?;
            self.spare.push(std::mem::replace(&mut self.top, below));
        }
        self.top.pop()
    }

    /// Every entry, as segments (each a task's worth for the parallel drain).
    pub(crate) fn into_segments(self) -> Vec<Vec<Grey>> {
        let mut all = self.full;
        all.push(self.top);
        all
    }
}

impl Pop for GreyStack {
    #[inline]
    fn pop(&mut self) -> Option<Grey> {
        GreyStack::pop(self)
    }
    #[inline]
    fn top_table(&self) -> Option<u32> {
        self.top
            .last()
            .or_else(|| self.full.last().and_then(|s| s.last()))
            .map(|g| g.0)
    }
}

impl Push for GreyStack {
    #[inline]
    fn push(&mut self, g: Grey) {
        if self.top.len() == SEGMENT {
            let fresh = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(SEGMENT));
            let full = std::mem::replace(&mut self.top, fresh);
            self.full.push(full);
        } else if self.top.capacity() == 0 {
            self.top.reserve_exact(SEGMENT);
        }
        self.top.push(g);
    }
}

impl Extend<Grey> for GreyStack {
    fn extend<I: IntoIterator<Item = Grey>>(&mut self, iter: I) {
        for g in iter {
            self.push(g);
        }
    }
}

/// One table as the marker sees it.
pub(crate) struct MarkTable<'a> {
    pub type_id: TypeId,
    pub table: &'a dyn TableInternals,
    pub ops: Option<GcOps>,
    /// True for a traced table: its objects are marked; a manual table's are all roots.
    pub traced: bool,
    /// One bit per slot index (traced tables; empty otherwise).
    pub marks: &'a [AtomicU64],
}

/// Counters a drain adds to the marker's totals when it ends.
#[derive(Default)]
struct Tally {
    scanned: usize,
    marked: usize,
}

/// The last table a handle's type was found in: the common case is a run of handles of
/// one type.
#[derive(Default)]
pub(crate) struct Lookup {
    last: Option<(TypeId, u32)>,
}

/// Marks what is reachable, over the tables of one store.
pub(crate) struct Marker<'a> {
    pub tables: Vec<MarkTable<'a>>,
    /// Keep each dangling edge (else only count them).
    pub record_dangling: bool,
    pub dangling: Mutex<Vec<Dangling>>,
    pub dangling_count: AtomicUsize,
    pub marked: AtomicUsize,
    pub scanned: AtomicUsize,
}

/// Sets bit `index`; true if this call set it. An index past the bitmap (a slot made
/// after the bitmap was sized) counts as newly marked, and the sweep keeps such slots.
#[inline]
pub(crate) fn set_mark(marks: &[AtomicU64], index: usize) -> bool {
    let Some(word) = marks.get(index / 64) else {
        return true;
    };
    let bit = 1u64 << (index % 64);
    // A plain load first: most edges of a dense graph find their target marked already,
    // and a load does not take the cache line exclusively.
    if word.load(Ordering::Relaxed) & bit != 0 {
        return false;
    }
    word.fetch_or(bit, Ordering::Relaxed) & bit == 0
}

/// True if bit `index` is set, or lies past the bitmap (kept: see [`set_mark`]).
#[inline]
pub(crate) fn is_marked(marks: &[AtomicU64], index: usize) -> bool {
    marks
        .get(index / 64)
        .is_none_or(|w| w.load(Ordering::Relaxed) & (1u64 << (index % 64)) != 0)
}

impl<'a> Marker<'a> {
    pub(crate) fn new(tables: Vec<MarkTable<'a>>, record_dangling: bool) -> Self {
        Marker {
            tables,
            record_dangling,
            dangling: Mutex::new(Vec::new()),
            dangling_count: AtomicUsize::new(0),
            marked: AtomicUsize::new(0),
            scanned: AtomicUsize::new(0),
        }
    }

    pub(super) fn index_of(&self, type_id: TypeId, lookup: &mut Lookup) -> Option<u32> {
        if let Some((t, i)) = lookup.last
            && t == type_id
        {
            return Some(i);
        }
        let i = self.tables.iter().position(|t| t.type_id == type_id)? as u32;
        lookup.last = Some((type_id, i));
        Some(i)
    }

    pub(super) fn dangle(&self, holder: Option<AnyHandle>, target: AnyHandle) {
        self.dangling_count.fetch_add(1, Ordering::Relaxed);
        if self.record_dangling {
            self.dangling.lock().push(Dangling { holder, target });
        }
    }

    /// One edge from `holder` to `target`: recorded if dangling; marked and pushed on
    /// `grey` if it is a live, unmarked object of a traced table. True if it was marked.
    #[inline]
    pub(crate) fn visit(
        &self,
        holder: Option<AnyHandle>,
        target: AnyHandle,
        lookup: &mut Lookup,
        grey: &mut impl Push,
    ) -> bool {
        let Some(ti) = self.index_of(target.type_id(), lookup) else {
            self.dangle(holder, target);
            return false;
        };
        let t = &self.tables[ti as usize];
        let bits = target.to_bits();
        if !t.table.contains_bits(bits) {
            self.dangle(holder, target);
            return false;
        }
        if t.traced && set_mark(t.marks, bits as u32 as usize) {
            grey.push((ti, bits));
            return true;
        }
        false
    }

    /// Scans the objects `batch` of table `ti`: traces them all, then checks their
    /// edges one target table at a time, and marks and greys what is new. Returns how
    /// many it newly marked.
    fn scan_batch(
        &self,
        ti: u32,
        batch: &[u64],
        lookup: &mut Lookup,
        scratch: &mut Scratch,
        grey: &mut impl Push,
    ) -> usize {
        let t = &self.tables[ti as usize];
        let Some(ops) = t.ops else { return 0 };
        let Scratch { edges, live, seen } = scratch;
        edges.clear();
        (ops.trace_many)(t.table, batch, edges);
        let holder = |at: u32| Some((ops.any_handle)(batch[at as usize]));
        let mut marked = 0;
        // One run of edges into one table at a time (most objects hold handles of one
        // type, so most batches are one run).
        for (run, like) in edges.runs() {
            let bits = &edges.bits[run.clone()];
            let holders = &edges.holders[run];
            let Some(tj) = self.index_of(like.type_id(), lookup) else {
                for (&b, &at) in bits.iter().zip(holders) {
                    self.dangle(holder(at), like.with_bits(b));
                }
                continue;
            };
            let target = &self.tables[tj as usize];
            target.table.live_many(bits, live);
            if target.traced {
                // The targets' mark bits first, in a loop with no branch on them, so
                // that their loads overlap; then the branchy pass, over cached words.
                seen.clear();
                seen.extend(
                    bits.iter()
                        .map(|&b| is_marked(target.marks, b as u32 as usize)),
                );
            }
            for (k, ((&b, &at), &is_live)) in bits.iter().zip(holders).zip(live.iter()).enumerate()
            {
                if !is_live {
                    self.dangle(holder(at), like.with_bits(b));
                } else if target.traced && !seen[k] && set_mark(target.marks, b as u32 as usize) {
                    grey.push((tj, b));
                    marked += 1;
                }
            }
        }
        marked
    }

    fn add(&self, tally: Tally) {
        self.scanned.fetch_add(tally.scanned, Ordering::Relaxed);
        self.marked.fetch_add(tally.marked, Ordering::Relaxed);
    }

    /// Scans `grey` and everything it leads to, splitting off work for other threads.
    pub(crate) fn drain_parallel<'s>(&'s self, scope: &rayon::Scope<'s>, mut grey: Vec<Grey>) {
        let mut lookup = Lookup::default();
        let mut tally = Tally::default();
        let mut scratch = Scratch::default();
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(ti) = grey.pop_batch(BATCH, &mut batch) {
            tally.scanned += batch.len();
            tally.marked += self.scan_batch(ti, &batch, &mut lookup, &mut scratch, &mut grey);
            if grey.len() >= SPLIT_AT {
                let half = grey.split_off(grey.len() / 2);
                scope.spawn(move |s| self.drain_parallel(s, half));
            }
        }
        self.add(tally);
    }

    /// Scans from `grey` on this thread until it is empty or `deadline` is too close;
    /// true when it emptied. Scans [`CLOCK_EVERY`] objects between looks at the clock,
    /// and stops when the time left is less than the longest such batch so far (so that
    /// the next batch would not likely end past the deadline).
    pub(crate) fn drain_until(&self, grey: &mut GreyStack, deadline: Instant) -> bool {
        let mut lookup = Lookup::default();
        let mut tally = Tally::default();
        let mut scratch = Scratch::default();
        let mut batch = Vec::with_capacity(CLOCK_EVERY);
        let mut done = true;
        let mut batch_start = Instant::now();
        let mut longest = Duration::ZERO;
        while let Some(ti) = grey.pop_batch(CLOCK_EVERY, &mut batch) {
            tally.scanned += batch.len();
            tally.marked += self.scan_batch(ti, &batch, &mut lookup, &mut scratch, grey);
            let now = Instant::now();
            longest = longest.max(now - batch_start);
            batch_start = now;
            if now + longest >= deadline {
                done = grey.is_empty();
                break;
            }
        }
        self.add(tally);
        done
    }
}

/// Buffers a drain reuses from batch to batch.
#[derive(Default)]
struct Scratch {
    /// The batch's edges.
    edges: EdgeBuffer,
    /// Whether each handle of one run of edges is live.
    live: Vec<bool>,
    /// Whether each handle of one run of edges was marked before the run.
    seen: Vec<bool>,
}

#[cfg(test)]
mod tests {
    use super::{GreyStack, Pop, Push, SEGMENT};

    /// A stack that grows over several segments, shrinks and grows again gives its
    /// entries back last in, first out, keeps its emptied segments instead of freeing
    /// them, and takes them again before allocating.
    #[test]
    fn grey_stack_is_lifo_across_segments_and_keeps_emptied_ones() {
        let mut grey = GreyStack::default();
        let n = 3 * SEGMENT + 5;
        for i in 0..n as u64 {
            grey.push(((i % 3) as u32, i));
        }
        assert_eq!(grey.len(), n);
        for i in (2 * SEGMENT as u64..n as u64).rev() {
            assert_eq!(grey.pop(), Some(((i % 3) as u32, i)));
        }
        assert_eq!(grey.spare.len(), 1, "the emptied top segment is kept");
        for i in 2 * SEGMENT as u64..n as u64 {
            grey.push(((i % 3) as u32, i));
        }
        assert!(
            grey.spare.is_empty(),
            "a kept segment is taken before a new one"
        );
        let mut batch = Vec::new();
        let mut popped = 0;
        while let Some(ti) = grey.pop_batch(7, &mut batch) {
            assert!(
                batch.iter().all(|&b| (b % 3) as u32 == ti),
                "one table per batch"
            );
            popped += batch.len();
        }
        assert_eq!(popped, n);
        assert!(grey.is_empty());
        assert_eq!(grey.spare.len(), 3, "every emptied segment is kept");
        let segments = grey.into_segments();
        assert!(segments.iter().all(Vec::is_empty));
    }
}
