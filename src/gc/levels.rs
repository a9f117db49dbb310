//! Level-synchronous marking, for the stop-the-world collector ([`Store::collect`]).
//!
//! Marking a large random graph depth first is a chain of cache misses spread over the
//! whole slot table and the whole object storage. Here the edges found are not followed
//! at once: each is appended to the *bucket* of its target, a range of slot indices of
//! one table sized so that the range's slots and objects fit in the last-level cache
//! ([`BUCKET_BYTES`]). A *level* then takes one bucket at a time: it checks its edges'
//! slots (is the target live?), notes the targets whose mark bit is clear, sets the mark
//! bits a word at a time and traces the objects this marked in slot order (in storage
//! order for a table filled in order) ([`BucketMarks`]), with all of those reads inside
//! one cache-sized range; the edges the new objects hold go to the next level's
//! buckets. Buckets of one level are independent (disjoint slot ranges, so disjoint mark
//! words too) and run in parallel on rayon's threads.
//!
//! On large random graphs this halves a full collection against depth-first marking on
//! one thread, and scales better across threads, as no two threads ever work in one
//! bucket's range (`benches/gc.rs`; figures in BENCHMARKS.md).
//!
//! The price is memory while marking: a level's edges wait in buckets, 8 bytes each,
//! up to [`FLUSH_AT`] per bucket and producer; a fuller bucket is visited at once. A
//! bucket holds its edges in blocks of 32 KiB ([`Bucket`]) and grows by taking another
//! block, from those that the frontier's earlier levels emptied, never by copying its
//! edges into a larger buffer: vectors that doubled would copy every collection's edges
//! again into freshly faulted pages, while blocks freed by one collection are reused by
//! the next. The blocks are freed when marking ends.
//!
//! A dangling edge is found in its target's bucket, where its holder is no longer
//! known. Such targets are kept and, if the store records dangling handles, one pass
//! after marking traces the scanned objects again to name each one's holder
//! ([`Marker::name_holders`]): the rare case pays, the common case carries no holder.
//!
//! Deep, thin graphs (a list of a million objects) make a level of one edge: a level
//! walks only the buckets it touched, and a small one runs on the calling thread with
//! buffers kept from level to level. Such a list still costs somewhat more than depth
//! first; wide graphs, the common case, gain.
//!
//! [`Store::collect`]: crate::Store::collect

use std::collections::HashSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::Dangling;
use super::mark::{Lookup, MarkTable, Marker, is_marked, set_mark};
use crate::pooled::{AnyHandle, EdgeBuffer};

/// The bytes of slots and objects one bucket's range of slot indices should span: a few
/// MiB, well inside this machine class's last-level cache (measured on a 10M-object
/// graph of 32-byte objects: ranges of 2^16 slots, 2.5 MB, marked fastest; 2^13 and 2^20
/// were 15-25 % slower).
const BUCKET_BYTES: usize = 4 << 20;

/// A level with fewer edges than this runs on the calling thread.
const PARALLEL_EDGES: usize = 1 << 14;

/// A producer's bucket that gets more edges than this is visited at once instead of at
/// the next level (512 KiB of edges; whole blocks): many edges into a small table, such
/// as every synapse's two handles into the neuron table when the synapses are roots,
/// would otherwise all wait in memory for one level.
const FLUSH_AT: usize = 1 << 16;
const _: () = assert!(FLUSH_AT.is_multiple_of(BLOCK_EDGES));

/// Objects traced before their edges are routed.
const TRACE_BLOCK: usize = 256;

/// Manual objects traced per task while the first level is gathered.
const ROOT_BLOCK: usize = 4096;

/// Where each table's buckets lie among all of them.
struct Buckets {
    /// Per table: its first bucket, how many it has, and the shift from a slot index to
    /// its bucket.
    tables: Vec<(usize, usize, u32)>,
    /// The table of each bucket.
    owner: Vec<u32>,
}

impl Buckets {
    fn new(tables: &[MarkTable<'_>]) -> Buckets {
        let mut layout = Vec::with_capacity(tables.len());
        let mut owner = Vec::new();
        for (ti, t) in tables.iter().enumerate() {
            let per_slot = 8 + t.table.element_size();
            // Whole mark words (64 slots) per bucket, so that no two share one, and at
            // most 2^18 slots, so that a producer's scratch stays within 1.1 MiB.
            let shift = (BUCKET_BYTES / per_slot).max(1).ilog2().clamp(6, 18);
            let count = (t.table.slot_bound() >> shift) + 1;
            layout.push((owner.len(), count, shift));
            owner.resize(owner.len() + count, ti as u32);
        }
        Buckets {
            tables: layout,
            owner,
        }
    }

    /// The slot indices of bucket `k`: the first, and how many.
    fn range(&self, k: usize) -> (u32, usize) {
        let (first, _, shift) = self.tables[self.owner[k] as usize];
        (((k - first) << shift) as u32, 1 << shift)
    }

    fn len(&self) -> usize {
        self.owner.len()
    }
}

/// Edges in a whole block (32 KiB): a bucket's first block grows up to this, and every
/// further block has this capacity.
const BLOCK_EDGES: usize = 1 << 12;

/// The capacity a bucket's first block starts from (2 KiB), doubling up to
/// [`BLOCK_EDGES`]: a bucket that gets a few edges takes little memory.
const FIRST_BLOCK_EDGES: usize = 1 << 8;

/// One bucket's edges in one frontier: whole blocks of [`BLOCK_EDGES`] and a tail block
/// being filled. A bucket grows by taking another block, never by moving its edges to a
/// larger buffer: a vector doubling its way up copies every edge again at each step,
/// into freshly faulted pages.
#[derive(Default)]
struct Bucket {
    full: Vec<Vec<u64>>,
    tail: Vec<u64>,
}

impl Bucket {
    fn len(&self) -> usize {
        self.full.len() * BLOCK_EDGES + self.tail.len()
    }

    /// The edges, a block at a time.
    fn blocks(&self) -> impl Iterator<Item = &[u64]> {
        self.full
            .iter()
            .map(Vec::as_slice)
            .chain(std::iter::once(self.tail.as_slice()))
    }

    /// Empties it, putting its whole blocks in `free` for any bucket; a smaller tail
    /// stays, empty, for this bucket's next edges (a deep, thin graph makes a level of
    /// one edge after another, and must not allocate per level).
    fn recycle_into(&mut self, free: &mut Vec<Vec<u64>>) {
        for mut block in self.full.drain(..) {
            block.clear();
            free.push(block);
        }
        self.tail.clear();
        if self.tail.capacity() == BLOCK_EDGES {
            free.push(std::mem::take(&mut self.tail));
        }
    }
}

/// Edges waiting for their bucket's turn, as one producer appended them.
struct Frontier {
    buckets: Vec<Bucket>,
    /// Empty blocks of [`BLOCK_EDGES`] for any bucket of this frontier: a frontier is
    /// reused level after level, so after the first levels its buckets grow without
    /// allocating.
    free: Vec<Vec<u64>>,
    /// The buckets that hold an edge (one may be listed more than once: again after a
    /// flush, and once per whole block).
    touched: Vec<u32>,
    /// Buckets past [`FLUSH_AT`] edges, to be visited at once.
    full: Vec<u32>,
    edges: usize,
}

impl Frontier {
    fn new(buckets: usize) -> Frontier {
        Frontier {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            free: Vec::new(),
            touched: Vec::new(),
            full: Vec::new(),
            edges: 0,
        }
    }

    /// Appends the edges `bits` into table `ti` to their buckets, noting a bucket in
    /// `touched` when it gets its first edge and in `full` when it gets past [`FLUSH_AT`].
    /// An index past the table's slots at the start (none while the store is borrowed)
    /// goes to its last bucket.
    #[inline]
    fn push(&mut self, layout: &Buckets, ti: u32, bits: &[u64]) {
        let (first, count, shift) = layout.tables[ti as usize];
        let buckets = &mut self.buckets[first..first + count];
        for &b in bits {
            let k = ((b as u32 >> shift) as usize).min(count - 1);
            let v = &mut buckets[k];
            if v.tail.is_empty() {
                // (A bucket emptied by a flush, or whose tail just became a whole block,
                // may be listed twice: harmless.)
                self.touched.push((first + k) as u32);
            }
            if v.tail.len() == v.tail.capacity() {
                Self::make_room(v, (first + k) as u32, &mut self.free, &mut self.full);
            }
            v.tail.push(b);
        }
        self.edges += bits.len();
    }

    /// Gives bucket `k`'s full tail room for another edge: a larger tail while it is
    /// smaller than a block, else a block of its own (from `free` if there is one).
    #[cold]
    fn make_room(v: &mut Bucket, k: u32, free: &mut Vec<Vec<u64>>, full: &mut Vec<u32>) {
        if v.tail.capacity() == 0 {
            v.tail = free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(FIRST_BLOCK_EDGES));
        } else if v.tail.capacity() < BLOCK_EDGES {
            v.tail
                .reserve_exact(v.tail.capacity().min(BLOCK_EDGES - v.tail.capacity()));
        } else {
            let block = free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BLOCK_EDGES));
            v.full.push(std::mem::replace(&mut v.tail, block));
            if v.full.len() * BLOCK_EDGES == FLUSH_AT {
                full.push(k);
            }
        }
    }

    /// Empties it, keeping its blocks for the next level.
    fn clear(&mut self) {
        for &k in &self.touched {
            self.buckets[k as usize].recycle_into(&mut self.free);
        }
        self.touched.clear();
        self.full.clear();
        self.edges = 0;
    }
}

/// Frontiers emptied by one level, for the producers of the next (so that a level's
/// buckets reuse memory instead of faulting fresh pages in).
struct Spare {
    frontiers: Mutex<Vec<Frontier>>,
    buckets: usize,
}

impl Spare {
    fn take(&self) -> Frontier {
        self.frontiers
            .lock()
            .pop()
            .unwrap_or_else(|| Frontier::new(self.buckets))
    }

    fn give(&self, mut f: Frontier) {
        f.clear();
        self.frontiers.lock().push(f);
    }
}

/// A producer's state: where its edges go, and its reusable buffers.
struct Producer {
    out: Frontier,
    lookup: Lookup,
    edges: EdgeBuffer,
    live: Vec<bool>,
    newly: Vec<u64>,
    marks: BucketMarks,
    scanned: usize,
    marked: usize,
}

impl Producer {
    fn new(out: Frontier) -> Producer {
        Producer {
            out,
            lookup: Lookup::default(),
            edges: EdgeBuffer::default(),
            live: Vec::new(),
            newly: Vec::new(),
            marks: BucketMarks::default(),
            scanned: 0,
            marked: 0,
        }
    }
}

/// A producer's scratch for marking the live edges of one bucket visit. Each edge's
/// target gets its generation a place in an array over the bucket's range of slot
/// indices and, if its mark was not set when read, a bit in a bitmap over the range
/// ([`note`](Self::note)). The marks are then set a word (64 slots) at a time, and the
/// targets that this marked come out in slot order, as handles ([`claim`](Self::claim)).
///
/// Against marking edge by edge and sorting what was new, this has no unpredictable
/// branch per edge (three in four of the bench graph's edges find their target marked
/// already, at random) and no comparison sort. On the 10M-object graph of `benches/gc.rs` (one thread, best of
/// five collections) the sort took 10 % of the profile; a scatter in its place took the
/// collection from 0.90 s to 0.82 s, and marking a word at a time saved 4 % more.
#[derive(Default)]
struct BucketMarks {
    /// The first slot index of the range; a multiple of 64.
    lo: u32,
    /// The generation of each target noted, at `index - lo`.
    generation: Vec<u32>,
    /// A bit at `index - lo` for each target noted unmarked.
    seen: Vec<u64>,
    /// The words of `seen` that may hold a bit: `first..=last` (none when `first > last`).
    first: usize,
    last: usize,
}

impl BucketMarks {
    /// Starts a visit of the range of `span` slot indices from `lo` (multiples of 64).
    fn begin(&mut self, lo: u32, span: usize) {
        debug_assert!(
            lo.is_multiple_of(64) && span.is_multiple_of(64),
            "ranges are whole mark words"
        );
        self.lo = lo;
        if self.generation.len() < span {
            self.generation.resize(span, 0);
            self.seen.resize(span / 64, 0);
        }
        self.first = usize::MAX;
        self.last = 0;
    }

    /// Notes the live target `bits` of a traced table with marks `marks`. False if its
    /// index lies outside the scratch (or the marks): the caller marks it on its own.
    #[inline]
    fn note(&mut self, bits: u64, marks: &[AtomicU64]) -> bool {
        let index = bits as u32;
        let at = index.wrapping_sub(self.lo) as usize;
        let (Some(word), Some(generation)) =
            (marks.get(index as usize / 64), self.generation.get_mut(at))
        else {
            return false;
        };
        *generation = (bits >> 32) as u32;
        let unmarked = !(word.load(Ordering::Relaxed) >> (index % 64)) & 1;
        let w = at / 64;
        self.seen[w] |= unmarked << (at % 64);
        self.first = self.first.min(w);
        self.last = self.last.max(w);
        true
    }

    /// Sets the marks of the targets noted since [`begin`](Self::begin), appends those
    /// whose mark this set (not another visit's) to `newly` in slot order as handles,
    /// and clears the bitmap.
    fn claim(&mut self, marks: &[AtomicU64], newly: &mut Vec<u64>) {
        if self.first > self.last {
            return;
        }
        let base = self.lo as usize / 64;
        for w in self.first..=self.last {
            let noted = std::mem::take(&mut self.seen[w]);
            let Some(word) = marks.get(base + w).filter(|_| noted != 0) else {
                continue;
            };
            let mut new = noted & !word.fetch_or(noted, Ordering::Relaxed);
            while new != 0 {
                let at = w * 64 + new.trailing_zeros() as usize;
                let index = u64::from(self.lo) + at as u64;
                newly.push(u64::from(self.generation[at]) << 32 | index);
                new &= new - 1;
            }
        }
        self.first = usize::MAX;
        self.last = 0;
    }
}

/// One marking in levels over a [`Marker`]'s tables.
struct Levels<'m, 'a> {
    marker: &'m Marker<'a>,
    buckets: Buckets,
    /// A handle of each table's type (its `TypeId` and name), set by whoever first
    /// routes an edge into the table: a dangling target found in a bucket is reported
    /// as one of these with its own bits.
    like: Vec<OnceLock<AnyHandle>>,
    /// Dangling targets found in buckets, whose holders [`Marker::name_holders`] finds.
    unnamed: Mutex<Vec<AnyHandle>>,
    spare: Spare,
}

impl<'m, 'a> Levels<'m, 'a> {
    /// Traces the objects `batch` of table `ti` (live ones; their holders are known
    /// here) and routes every handle they hold to its target's bucket in `p.out`.
    fn trace_and_route(&self, ti: u32, batch: &[u64], p: &mut Producer) {
        // A few hundred objects at a time, so that the edges they hold are routed while
        // they are still in the nearest cache.
        for part in batch.chunks(TRACE_BLOCK) {
            self.trace_and_route_part(ti, part, p);
        }
    }

    fn trace_and_route_part(&self, ti: u32, batch: &[u64], p: &mut Producer) {
        let t = &self.marker.tables[ti as usize];
        let Some(ops) = t.ops else { return };
        p.edges.clear();
        (ops.trace_many)(t.table, batch, &mut p.edges);
        p.scanned += batch.len();
        for (run, like) in p.edges.runs() {
            let bits = &p.edges.bits[run.clone()];
            let Some(tj) = self.marker.index_of(like.type_id(), &mut p.lookup) else {
                // A handle of a type this store does not hold: dangling, holder known.
                for (&b, &at) in bits.iter().zip(&p.edges.holders[run]) {
                    let holder = (ops.any_handle)(batch[at as usize]);
                    self.marker.dangle(Some(holder), like.with_bits(b));
                }
                continue;
            };
            self.note_type(tj, like);
            p.out.push(&self.buckets, tj, bits);
        }
    }

    /// Takes bucket `k`'s edges from every frontier of the level: checks that each
    /// target is live, marks the new ones, and traces them.
    fn visit_bucket(&self, k: usize, level: &[Frontier], p: &mut Producer) {
        let tj = self.buckets.owner[k];
        p.newly.clear();
        let (lo, span) = self.buckets.range(k);
        p.marks.begin(lo, span);
        for f in level {
            for block in f.buckets[k].blocks() {
                self.check_edges(tj, block, p);
            }
        }
        self.trace_newly(tj, p);
        self.flush_full(p);
    }

    /// Checks the edges `bits` into table `tj`, within the range [`BucketMarks::begin`]
    /// started: dangling ones are counted, live ones of a traced table noted for
    /// marking (or, outside the range, marked and appended to `p.newly` at once).
    fn check_edges(&self, tj: u32, bits: &[u64], p: &mut Producer) {
        if bits.is_empty() {
            return;
        }
        let t = &self.marker.tables[tj as usize];
        t.table.live_many(bits, &mut p.live);
        for (&b, &live) in bits.iter().zip(&p.live) {
            if !live {
                self.unnamed_dangling(tj, b);
            } else if t.traced && !p.marks.note(b, t.marks) && set_mark(t.marks, b as u32 as usize)
            {
                p.newly.push(b);
            }
        }
    }

    /// Marks what [`check_edges`](Self::check_edges) noted and traces the objects newly
    /// marked, objects of table `tj`, routing what they hold.
    fn trace_newly(&self, tj: u32, p: &mut Producer) {
        let t = &self.marker.tables[tj as usize];
        // In slot order, the objects' reads walk the range forwards (a third less time
        // in tracing than in the order the edges came).
        p.marks.claim(t.marks, &mut p.newly);
        p.marked += p.newly.len();
        let newly = std::mem::take(&mut p.newly);
        self.trace_and_route(tj, &newly, p);
        p.newly = newly;
    }

    /// Visits now every bucket of `p.out` past [`FLUSH_AT`] edges (and those that the
    /// visits fill in turn), so that no producer holds more than that per bucket.
    fn flush_full(&self, p: &mut Producer) {
        while let Some(k) = p.out.full.pop() {
            let k = k as usize;
            if p.out.buckets[k].len() <= FLUSH_AT {
                continue;
            }
            let mut bucket = std::mem::take(&mut p.out.buckets[k]);
            p.out.edges -= bucket.len();
            let tj = self.buckets.owner[k];
            p.newly.clear();
            let (lo, span) = self.buckets.range(k);
            p.marks.begin(lo, span);
            for block in bucket.blocks() {
                self.check_edges(tj, block, p);
            }
            bucket.recycle_into(&mut p.out.free);
            self.trace_newly(tj, p);
        }
    }

    /// Keeps `like` as the handle type of table `ti`, if none is kept yet.
    #[inline]
    fn note_type(&self, ti: u32, like: AnyHandle) {
        if self.like[ti as usize].get().is_none() {
            let _ = self.like[ti as usize].set(like);
        }
    }

    fn unnamed_dangling(&self, tj: u32, bits: u64) {
        self.marker.dangling_count.fetch_add(1, Ordering::Relaxed);
        if self.marker.record_dangling {
            let like = self.like[tj as usize]
                .get()
                .expect("an edge in a table's bucket set the table's type first");
            self.unnamed.lock().push(like.with_bits(bits));
        }
    }

    /// The first level: the explicit roots, then the handles every manual object holds.
    fn first_level(&self, roots: &[AnyHandle], workers: &mut [Producer]) -> Vec<Frontier> {
        let p = &mut workers[0];
        for r in roots {
            let Some(ti) = self.marker.index_of(r.type_id(), &mut p.lookup) else {
                self.marker.dangle(None, *r);
                continue;
            };
            let t = &self.marker.tables[ti as usize];
            // Checked here, where a dangling root is known to be a root; a live one is
            // checked again in its bucket, like any edge.
            if !t.table.contains_bits(r.to_bits()) {
                self.marker.dangle(None, *r);
                continue;
            }
            self.note_type(ti, *r);
            p.out.push(&self.buckets, ti, &[r.to_bits()]);
        }
        self.flush_full(p);
        let mut blocks = Vec::new();
        for (ti, t) in self.marker.tables.iter().enumerate() {
            if t.traced || t.ops.is_none() {
                continue;
            }
            owner_blocks(t, |owners| blocks.push((ti as u32, owners.to_vec())));
        }
        self.in_parallel(&blocks, workers, |block, p| {
            self.trace_and_route(block.0, &block.1, p);
            self.flush_full(p);
        });
        self.take_outputs(workers)
    }

    /// Runs `work` over `items`, one task per producer on rayon's threads, each taking
    /// the next item not yet taken until none is left.
    fn in_parallel<I: Sync>(
        &self,
        items: &[I],
        workers: &mut [Producer],
        work: impl Fn(&I, &mut Producer) + Sync,
    ) {
        if let [only] = workers {
            items.iter().for_each(|item| work(item, only));
            return;
        }
        let next = AtomicUsize::new(0);
        rayon::scope(|s| {
            for p in workers.iter_mut() {
                let (next, work) = (&next, &work);
                s.spawn(move |_| {
                    while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                        work(item, p);
                    }
                });
            }
        });
    }

    /// The producers' frontiers, each replaced by an empty one.
    fn take_outputs(&self, workers: &mut [Producer]) -> Vec<Frontier> {
        workers
            .iter_mut()
            .map(|p| std::mem::replace(&mut p.out, self.spare.take()))
            .collect()
    }

    fn tally(&self, p: &Producer) {
        self.marker.scanned.fetch_add(p.scanned, Ordering::Relaxed);
        self.marker.marked.fetch_add(p.marked, Ordering::Relaxed);
    }

    /// Marks level after level until one finds no edge. One producer per thread lives
    /// across levels with its buffers: a deep, thin graph makes a level per object and
    /// must not allocate per level, and a wide one reuses each producer's warm scratch
    /// and bucket memory level after level.
    fn run(&self, mut level: Vec<Frontier>, workers: &mut [Producer]) {
        let mut in_level = vec![false; self.buckets.len()];
        let mut touched = Vec::new();
        loop {
            let mut i = 0;
            while i < level.len() {
                if level[i].edges == 0 {
                    self.spare.give(level.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            let edges: usize = level.iter().map(|f| f.edges).sum();
            if edges == 0 {
                break;
            }
            touched.clear();
            for f in &level {
                for &k in &f.touched {
                    if !std::mem::replace(&mut in_level[k as usize], true) {
                        touched.push(k as usize);
                    }
                }
            }
            for &k in &touched {
                in_level[k] = false;
            }
            if edges < PARALLEL_EDGES || workers.len() == 1 {
                let here = &mut workers[0];
                for &k in &touched {
                    self.visit_bucket(k, &level, here);
                }
                if let [only] = &mut level[..] {
                    // The usual case for a small level: swap, no lock.
                    std::mem::swap(only, &mut here.out);
                    here.out.clear();
                } else {
                    for f in level.drain(..) {
                        self.spare.give(f);
                    }
                    level.push(std::mem::replace(&mut here.out, self.spare.take()));
                }
            } else {
                // The largest buckets first, so that the last to start are short.
                touched.sort_unstable_by_key(|&k| {
                    std::cmp::Reverse(level.iter().map(|f| f.buckets[k].len()).sum::<usize>())
                });
                self.in_parallel(&touched, workers, |&k, p| self.visit_bucket(k, &level, p));
                for f in level.drain(..) {
                    self.spare.give(f);
                }
                level = self.take_outputs(workers);
            }
        }
    }
}

impl Marker<'_> {
    /// Marks everything reachable from `roots` (explicit roots, handles) and from every
    /// object of every manual table that can be traced, level by level (the module doc);
    /// then names the holders of the dangling edges found, if they are recorded.
    pub(crate) fn mark_in_levels(&self, roots: &[AnyHandle]) {
        let buckets = Buckets::new(&self.tables);
        let levels = Levels {
            marker: self,
            like: (0..self.tables.len()).map(|_| OnceLock::new()).collect(),
            unnamed: Mutex::new(Vec::new()),
            spare: Spare {
                frontiers: Mutex::new(Vec::new()),
                buckets: buckets.len(),
            },
            buckets,
        };
        let mut workers: Vec<Producer> = (0..rayon::current_num_threads().max(1))
            .map(|_| Producer::new(levels.spare.take()))
            .collect();
        let first = levels.first_level(roots, &mut workers);
        levels.run(first, &mut workers);
        for p in &workers {
            levels.tally(p);
        }
        let unnamed = levels.unnamed.into_inner();
        if !unnamed.is_empty() {
            self.name_holders(unnamed.into_iter().collect());
        }
    }

    /// Records, with its holder, every edge of every scanned object (each marked object
    /// of a traced table, each object of a manual one) whose target is in `targets`.
    fn name_holders(&self, targets: HashSet<AnyHandle>) {
        let mut edges = EdgeBuffer::default();
        let mut owners = Vec::new();
        let mut found = Vec::new();
        for t in &self.tables {
            let Some(ops) = t.ops else { continue };
            owner_blocks(t, |block| {
                owners.clear();
                owners.extend(
                    block
                        .iter()
                        .filter(|&&b| !t.traced || is_marked(t.marks, b as u32 as usize)),
                );
                edges.clear();
                (ops.trace_many)(t.table, &owners, &mut edges);
                for (run, like) in edges.runs() {
                    for (&b, &at) in edges.bits[run.clone()].iter().zip(&edges.holders[run]) {
                        let target = like.with_bits(b);
                        if targets.contains(&target) {
                            let holder = Some((ops.any_handle)(owners[at as usize]));
                            found.push(Dangling { holder, target });
                        }
                    }
                }
            });
        }
        self.dangling.lock().append(&mut found);
    }
}

/// Calls `f` with the owners of table `t`'s objects, in storage order, [`ROOT_BLOCK`]
/// at a time.
fn owner_blocks(t: &MarkTable<'_>, mut f: impl FnMut(&[u64])) {
    let mut owners = Vec::with_capacity(ROOT_BLOCK);
    let mut place = Some(0);
    while let Some(from) = place {
        owners.clear();
        place = t.table.owners_from_bits(from, ROOT_BLOCK, &mut owners);
        f(&owners);
    }
}

#[cfg(test)]
mod tests {
    use super::{BLOCK_EDGES, BucketMarks, Buckets, FLUSH_AT, Frontier};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Bits of the handle of slot `index` with generation `generation`.
    fn handle(index: u32, generation: u32) -> u64 {
        u64::from(generation) << 32 | u64::from(index)
    }

    proptest! {
        /// Visit after visit with one scratch: the targets noted come out marked, each
        /// once, in slot order, with their generations, except those marked before; the
        /// marks end up set for every target; the scratch's bitmap is left clear.
        #[test]
        fn bucket_marks_mark_each_new_target_once_in_slot_order(
            visits in prop::collection::vec(
                (
                    0usize..4,
                    prop::collection::vec((0u32..1024, any::<u32>()), 0..600),
                ),
                1..6,
            ),
            marked_before in prop::collection::vec(any::<u64>(), 64),
        ) {
            const SPAN: usize = 1024;
            let marks: Vec<AtomicU64> = marked_before.iter().map(|&w| AtomicU64::new(w)).collect();
            let is_marked = |i: u32| marks[i as usize / 64].load(Ordering::Relaxed) >> (i % 64) & 1 == 1;
            let mut scratch = BucketMarks::default();
            for (bucket, targets) in visits {
                let lo = (bucket * SPAN) as u32;
                // A slot has one generation while the store is borrowed.
                let generations: BTreeMap<u32, u32> = targets.iter().map(|&(o, g)| (lo + o, g)).collect();
                let expected: Vec<u64> = generations
                    .iter()
                    .filter(|&(&i, _)| !is_marked(i))
                    .map(|(&i, &g)| handle(i, g))
                    .collect();
                scratch.begin(lo, SPAN);
                for &(o, _) in &targets {
                    prop_assert!(scratch.note(handle(lo + o, generations[&(lo + o)]), &marks));
                }
                // Past the marks: refused, for the caller to mark.
                prop_assert!(!scratch.note(handle(4096 + 7, 1), &marks));
                let mut newly = vec![handle(3, 3)];
                scratch.claim(&marks, &mut newly);
                prop_assert_eq!(newly[0], handle(3, 3), "claim appends");
                prop_assert_eq!(&newly[1..], &expected[..]);
                prop_assert!(generations.keys().all(|&i| is_marked(i)));
                prop_assert!(scratch.seen.iter().all(|&w| w == 0), "the bitmap is left clear");
            }
        }
    }

    /// Two tables: the first with buckets 0, 1, 2 of 64 slots each, the second with 3, 4.
    fn two_tables() -> Buckets {
        Buckets {
            tables: vec![(0, 3, 6), (3, 2, 6)],
            owner: vec![0, 0, 0, 1, 1],
        }
    }

    /// Each bucket's edges, as the frontier holds them; and checks that every block but
    /// the last is whole.
    fn contents(f: &Frontier) -> Vec<Vec<u64>> {
        f.buckets
            .iter()
            .map(|b| {
                assert!(b.full.iter().all(|block| block.len() == BLOCK_EDGES));
                assert_eq!(b.len(), b.full.len() * BLOCK_EDGES + b.tail.len());
                b.blocks().flatten().copied().collect()
            })
            .collect()
    }

    proptest! {
        /// Runs of edges pushed level after level into one reused frontier: each bucket
        /// holds its edges in the order pushed (across blocks), `touched` names exactly
        /// the buckets that hold one, `edges` counts them, and clearing empties it.
        #[test]
        fn a_frontier_keeps_each_buckets_edges_in_order_level_after_level(
            levels in prop::collection::vec(
                prop::collection::vec((0u32..2, 0u32..256, 1u32..3_000), 0..12),
                1..4,
            ),
        ) {
            let layout = two_tables();
            let mut f = Frontier::new(5);
            for pushes in levels {
                let mut expected = vec![Vec::<u64>::new(); 5];
                for (ti, index, run) in pushes {
                    let bits: Vec<u64> = (0..run).map(|g| u64::from(g) << 32 | u64::from(index)).collect();
                    f.push(&layout, ti, &bits);
                    let (first, count, _) = layout.tables[ti as usize];
                    // An index past the table's buckets goes to its last one.
                    expected[first + (index as usize >> 6).min(count - 1)].extend(&bits);
                }
                prop_assert_eq!(contents(&f), expected.clone());
                prop_assert_eq!(f.edges, expected.iter().map(Vec::len).sum::<usize>());
                let touched: std::collections::BTreeSet<u32> = f.touched.iter().copied().collect();
                let holding: std::collections::BTreeSet<u32> =
                    (0..5).filter(|&k| !expected[k as usize].is_empty()).collect();
                prop_assert_eq!(touched, holding);
                prop_assert!(f.full.is_empty(), "no bucket got past FLUSH_AT");
                f.clear();
                prop_assert!(contents(&f).iter().all(Vec::is_empty));
                prop_assert!(f.touched.is_empty() && f.edges == 0);
                prop_assert!(f.free.iter().all(|b| b.is_empty() && b.capacity() == BLOCK_EDGES));
            }
        }
    }

    #[test]
    fn a_bucket_past_flush_at_is_listed_full_once() {
        let layout = two_tables();
        let mut f = Frontier::new(5);
        let bits: Vec<u64> = (0..FLUSH_AT as u64).map(|g| g << 32 | 70).collect();
        f.push(&layout, 0, &bits);
        assert!(f.full.is_empty(), "at FLUSH_AT edges");
        f.push(&layout, 0, &[1 << 32 | 64]);
        assert_eq!(f.full, [1], "past FLUSH_AT edges");
        f.push(&layout, 0, &bits[..BLOCK_EDGES]);
        assert_eq!(f.full, [1], "listed once");
        assert_eq!(f.buckets[1].len(), FLUSH_AT + 1 + BLOCK_EDGES);
        // Its whole blocks serve any bucket after a clear: none is allocated anew.
        let blocks = f.buckets[1].full.len() + 1;
        f.clear();
        assert_eq!(f.free.len(), blocks);
        f.push(&layout, 1, &bits[..3 * BLOCK_EDGES]);
        assert_eq!(f.free.len(), blocks - 3);
        assert_eq!(f.buckets[4].len(), 3 * BLOCK_EDGES);
    }

    #[test]
    fn bucket_marks_leave_targets_outside_the_range_to_the_caller() {
        let marks: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        let mut scratch = BucketMarks::default();
        scratch.begin(64, 64);
        assert!(!scratch.note(handle(10, 1), &marks), "below the range");
        assert!(scratch.note(handle(64 + 5, 2), &marks));
        let mut newly = Vec::new();
        scratch.claim(&marks, &mut newly);
        assert_eq!(newly, [handle(69, 2)]);
        assert_eq!(marks[1].load(Ordering::Relaxed), 1 << 5);
        assert_eq!(
            marks[0].load(Ordering::Relaxed),
            0,
            "slot 10 is left unmarked"
        );
        // A target that another visit marks between note and claim is that visit's.
        scratch.begin(128, 64);
        assert!(scratch.note(handle(130, 4), &marks));
        assert!(scratch.note(handle(131, 4), &marks));
        marks[2].fetch_or(1 << 2, Ordering::Relaxed);
        scratch.claim(&marks, &mut newly);
        assert_eq!(newly, [handle(69, 2), handle(131, 4)]);
        // A claim with nothing noted appends nothing.
        scratch.begin(0, 64);
        scratch.claim(&marks, &mut newly);
        assert_eq!(newly.len(), 2);
    }
}
