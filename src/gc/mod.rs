//! Layer 5, **gc**: tracing garbage collection over handle graphs.
//!
//! This layer owns the collector's state (`GcState`), which a [`Store`] keeps and hands
//! its tables to: the roots ([`Store::add_root`], [`Root`]), the policies ([`GcPolicy`],
//! [`DanglingPolicy`]), the per-type tracing entry points a table gets when its type is
//! [registered], and an open incremental cycle. It never names the store:
//! the store's public collection methods live in `store/collect.rs`. Marking itself is
//! `levels.rs` (a full collection: level by level, each level's edges sorted into
//! cache-sized buckets of their targets) and `mark.rs` (the incremental collector's
//! bounded depth-first drains, and what both share).
//!
//! What lives: every object of a [manual](crate::Retention::Manual) table (a root), every
//! explicit root, and every object of a [traced](crate::Retention::Traced) table that
//! one of those reaches through the handles [`Trace`] visits. Everything else in a traced
//! table is freed by a collection.
//!
//! Invariants kept here:
//! - a collection frees exactly the traced objects unreachable from the roots, and drops
//!   each once (the sweep removes them from their tables);
//! - a handle that does not resolve (dangling) is never followed; it is counted and, per
//!   [`DanglingPolicy`], reported with its holder or has its holder removed;
//! - during an incremental cycle, an object inserted is marked and scanned, an object
//!   reached through [`Store::get_mut`] is scanned again if it was already scanned, and a
//!   table handed out mutably ([`Store::table_mut`]) has all of its objects kept and
//!   scanned at [`gc_finish`]: no object reachable at the finish is
//!   ever freed.
//!
//! Types stored without the derive (no [`Trace`]) are opaque: their objects live as
//! manual roots, but the handles they hold are not seen, so they keep nothing alive.
//!
//! Why no generational nursery: a nursery pays when most objects die young and old
//! objects rarely point at young ones. Neural graphs are the opposite (neurons and
//! synapses live for the whole run and point at each other); the short-lived objects
//! (spikes in flight) are usually removed by hand. The parallel and incremental
//! collectors mark at memory speed (see `benches/gc.rs`), and a nursery would add a
//! remembered set to every `get_mut`. We will add one only if a benchmark shows it pays.
//!
//! This layer has no unsafe code: `lib.rs` declares it `#[forbid(unsafe_code)]`.
//!
//! [`Store`]: crate::Store
//! [`Store::add_root`]: crate::Store::add_root
//! [`Store::get_mut`]: crate::Store::get_mut
//! [`Store::table_mut`]: crate::Store::table_mut
//! [registered]: crate::Store::register
//! [`gc_finish`]: crate::Store::gc_finish

mod levels;
mod mark;

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::erased::{ErasedTable, TableInternals, Tables, TypeMap};
use crate::error::Error;
use crate::pool::HierarchicalPool;
use crate::pooled::{AnyHandle, EdgeBuffer, Retention, Trace, Tracer};
use crate::table::{Handle, Table};
use mark::{GreyStack, MarkTable, Marker, Push, is_marked, set_mark};

/// Explicit roots a step visits between looks at the clock.
const ROOTS_PER_LOOK: usize = 1024;

/// The share of a step's budget kept for its own bookkeeping after marking stops
/// (1/16: about 62 µs of a 1 ms step), so that the whole step stays within the budget:
/// with 1/64, one step in a few hundred overran a 1 ms budget by 10-40 µs; with 1/32,
/// one in about a thousand by up to 9 µs (a batch slower than any before it). With
/// 1/16 the longest step of three cycles on the bench graph took 0.99 ms, apart from
/// one that the machine itself stalled.
const STEP_RESERVE_DIVISOR: u32 = 16;

/// What to do with a handle that names no live object (its object was removed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DanglingPolicy {
    /// Count them only.
    Ignore,
    /// Count them and list each with its holder in [`GcReport::dangling`] (the default).
    #[default]
    Report,
    /// As `Report`, and remove each holder object (for example a synapse whose neuron
    /// was removed). A dangling explicit root has no holder and is only reported.
    RemoveHolder,
}

/// A dangling handle and the object that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dangling {
    /// The object holding the handle; `None` for an explicit root.
    pub holder: Option<AnyHandle>,
    /// The handle that does not resolve.
    pub target: AnyHandle,
}

/// When the store collects on its own ([`Store::set_gc_policy`](crate::Store::set_gc_policy)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GcPolicy {
    /// Collect when the pool's reserved memory passes this fraction of its
    /// `total_memory` cap (pools without a cap never trigger it). Default 0.8.
    pub trigger_ratio: f64,
    /// Collect after this many inserts through the store; `None` (the default) for never.
    pub every_n_inserts: Option<usize>,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            trigger_ratio: 0.8,
            every_n_inserts: None,
        }
    }
}

/// What a collection did.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Traced objects found reachable.
    pub marked: usize,
    /// Objects whose handles were followed (roots and reachable traced objects).
    pub scanned: usize,
    /// Objects freed, per table (type name, count), sorted by type name; tables that
    /// lost nothing are left out.
    pub freed: Vec<(&'static str, usize)>,
    /// Objects freed in all tables.
    pub freed_total: usize,
    /// Bytes of objects freed (`size_of` each).
    pub bytes_freed: usize,
    /// Dangling handles seen.
    pub dangling_count: usize,
    /// The dangling handles with their holders, unless the policy is
    /// [`DanglingPolicy::Ignore`].
    pub dangling: Vec<Dangling>,
    /// Holders removed under [`DanglingPolicy::RemoveHolder`].
    pub holders_removed: usize,
    /// Wall time of the collection (for an incremental cycle: from `gc_begin` to the end
    /// of `gc_finish`).
    pub duration: Duration,
    /// Wall time the store was stopped: the whole collection, or for an incremental
    /// cycle the sum of its steps and finish.
    pub paused: Duration,
}

/// Where an incremental cycle stands after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcProgress {
    /// Objects scanned by this step.
    pub scanned: usize,
    /// Traced objects marked so far in the cycle.
    pub marked: usize,
    /// Objects waiting to be scanned.
    pub grey: usize,
    /// True when marking has nothing left; [`gc_finish`](crate::Store::gc_finish) is then short.
    pub done: bool,
    /// Wall time of this step.
    pub duration: Duration,
}

/// The roots of a store: handles with a count each, shared with [`Root`] guards.
#[derive(Debug, Default)]
pub(crate) struct RootSet {
    counts: Mutex<HashMap<AnyHandle, usize>>,
}

impl RootSet {
    fn add(&self, h: AnyHandle) {
        *self.counts.lock().entry(h).or_insert(0) += 1;
    }

    fn remove(&self, h: AnyHandle) -> bool {
        let mut counts = self.counts.lock();
        match counts.get_mut(&h) {
            Some(1) => {
                counts.remove(&h);
                true
            }
            Some(n) => {
                *n -= 1;
                true
            }
            None => false,
        }
    }

    fn list(&self) -> Vec<AnyHandle> {
        self.counts.lock().keys().copied().collect()
    }

    /// Every root with how many times it was added.
    pub(crate) fn counts(&self) -> Vec<(AnyHandle, usize)> {
        self.counts.lock().iter().map(|(h, n)| (*h, *n)).collect()
    }

    /// Adds `h` as a root `n` more times.
    pub(crate) fn add_n(&self, h: AnyHandle, n: usize) {
        *self.counts.lock().entry(h).or_insert(0) += n;
    }
}

/// A root that lasts as long as the guard: the object stays alive (if its table is
/// traced) until the guard is dropped. From [`Store::root`](crate::Store::root).
///
/// ```
/// use neurostore::{Handle, Pooled, Store};
///
/// #[derive(Pooled)]
/// #[pooled(retention = "traced")]
/// struct Blob(Vec<u8>);
///
/// let mut store = Store::new();
/// store.register::<Blob>()?;
/// let h = store.insert(Blob(vec![1, 2, 3]));
/// let guard = store.root(h);
/// store.collect();
/// assert!(store.contains(h));
/// drop(guard);
/// store.collect();
/// assert!(!store.contains(h));
/// # Ok::<(), neurostore::Error>(())
/// ```
#[must_use = "the root lasts only as long as the guard"]
pub struct Root<T: 'static> {
    handle: Handle<T>,
    roots: Arc<RootSet>,
}

impl<T: 'static> Root<T> {
    /// The rooted handle.
    pub fn handle(&self) -> Handle<T> {
        self.handle
    }
}

impl<T: 'static> std::fmt::Debug for Root<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Root").field(&self.handle).finish()
    }
}

impl<T: 'static> Drop for Root<T> {
    fn drop(&mut self) {
        self.roots.remove(AnyHandle::new(self.handle));
    }
}

/// What a sweep may assume of the mark bits it is given.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Marks {
    /// A bit is set only for a live object (a stop-the-world collection): as many bits
    /// as objects means that every object is marked.
    OfLiveObjectsOnly,
    /// A bit may name an object removed since it was marked (an incremental cycle).
    MayNameRemoved,
}

/// The tracing entry points of one type, made where `T: Trace` is known
/// ([`Store::register`]) and kept beside its erased table.
#[derive(Clone, Copy)]
pub(crate) struct GcOps {
    /// Traces the objects the bits name, in order, appending each handle they hold to
    /// the buffer with the object's position in the batch; a handle that is not live is
    /// skipped. The objects are resolved in a software pipeline
    /// ([`Table::for_each_many`]): their cache misses overlap.
    trace_many: fn(&dyn ErasedTable, &[u64], &mut EdgeBuffer),
    /// The erased handle of the bits.
    any_handle: fn(u64) -> AnyHandle,
}

impl GcOps {
    pub(crate) fn of<T: Trace + Send + Sync + 'static>() -> GcOps {
        fn table<T: Send + Sync + 'static>(t: &dyn ErasedTable) -> &Table<T> {
            t.as_any()
                .downcast_ref()
                .expect("GcOps of T are kept beside the table of T")
        }
        GcOps {
            trace_many: |t, bits, edges| {
                const GROUP: usize = 64;
                let table = table::<T>(t);
                let mut handles = [Handle::<T>::null(); GROUP];
                for (g, group) in bits.chunks(GROUP).enumerate() {
                    for (h, b) in handles.iter_mut().zip(group) {
                        *h = Handle::from_bits(*b);
                    }
                    edges.holder = (g * GROUP) as u32;
                    table.for_each_many(&handles[..group.len()], |v| {
                        if let Some(v) = v {
                            v.trace(&mut Tracer::edges(edges));
                        }
                        edges.holder += 1;
                    });
                }
            },
            any_handle: |bits| AnyHandle::new(Handle::<T>::from_bits(bits)),
        }
    }
}

/// The collector's part of a store.
#[derive(Default)]
pub(crate) struct GcState {
    pub(crate) ops: TypeMap<GcOps>,
    pub(crate) roots: Arc<RootSet>,
    cycle: Option<Box<Cycle>>,
    policy: Option<GcPolicy>,
    dangling_policy: DanglingPolicy,
    inserts: usize,
    /// The policy's `trigger_ratio` of the pool's `total_memory`, in bytes (`None` without
    /// a policy or a cap).
    pressure_bytes: Option<usize>,
    /// The pool's reserved bytes when the last collection ended: pressure starts another
    /// only once the pool has reserved more than that.
    reserved_after_collect: usize,
}

impl std::fmt::Debug for GcState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcState")
            .field("traceable_types", &self.ops.len())
            .field("cycle_open", &self.cycle.is_some())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// An open incremental cycle.
struct Cycle {
    /// The tables in marker order.
    types: Vec<TypeId>,
    marks: Vec<Vec<AtomicU64>>,
    grey: GreyStack,
    /// Manual tables still to be scanned as roots: marker index and where to go on from
    /// (global place), with the layout version the place belongs to.
    root_cursor: Vec<(u32, u64, u64)>,
    /// Whether the explicit roots have been listed (in the first step).
    explicit_roots_listed: bool,
    /// Explicit roots listed but not yet visited (a step visits them in blocks).
    explicit_roots: Vec<AnyHandle>,
    /// Tables handed out mutably during the cycle.
    touched: HashSet<TypeId>,
    dangling: Vec<Dangling>,
    marked: usize,
    scanned: usize,
    started: Instant,
    paused: Duration,
}

impl Cycle {
    /// Takes in the tables made since the cycle began, and grows the mark bitmaps with
    /// their tables.
    fn grow_with(&mut self, tables: &Tables) {
        for t in tables.keys() {
            self.index_of(*t);
        }
        for (i, t) in self.types.iter().enumerate() {
            let table = &tables[t];
            let m = &mut self.marks[i];
            if table.hints().retention == Retention::Traced && m.len() * 64 < table.slot_bound() {
                if m.is_empty() {
                    *m = bitmap(table.slot_bound());
                } else {
                    m.resize_with(table.slot_bound().div_ceil(64), || AtomicU64::new(0));
                }
            }
        }
    }

    fn index_of(&mut self, type_id: TypeId) -> u32 {
        match self.types.iter().position(|t| *t == type_id) {
            Some(i) => i as u32,
            None => {
                self.types.push(type_id);
                self.marks.push(Vec::new());
                (self.types.len() - 1) as u32
            }
        }
    }
}

/// A bitmap of `bits` zeroed bits. Zeroed allocation: the OS hands out fresh pages
/// already zero, so a bitmap for millions of objects costs no pass over its memory (a
/// first step that wrote 1.25 MB of zeros for 10M objects took 1.1 ms).
fn bitmap(bits: usize) -> Vec<AtomicU64> {
    bytemuck::allocation::zeroed_slice_box::<AtomicU64>(bits.div_ceil(64)).into_vec()
}

impl GcState {
    /// [`Store::add_root`](crate::Store::add_root).
    pub(crate) fn add_root(&mut self, tables: &Tables, h: AnyHandle) {
        self.roots.add(h);
        self.barrier(tables, h.type_id(), h.to_bits(), true);
    }

    /// [`Store::remove_root`](crate::Store::remove_root).
    pub(crate) fn remove_root(&mut self, h: AnyHandle) -> bool {
        self.roots.remove(h)
    }

    /// [`Store::root`](crate::Store::root).
    pub(crate) fn root<T: 'static>(&mut self, tables: &Tables, h: Handle<T>) -> Root<T> {
        self.add_root(tables, AnyHandle::new(h));
        Root {
            handle: h,
            roots: Arc::clone(&self.roots),
        }
    }

    /// [`Store::roots`](crate::Store::roots).
    pub(crate) fn roots(&self) -> Vec<AnyHandle> {
        self.roots.list()
    }

    /// [`Store::set_dangling_policy`](crate::Store::set_dangling_policy).
    pub(crate) fn set_dangling_policy(&mut self, policy: DanglingPolicy) {
        self.dangling_policy = policy;
    }

    /// [`Store::set_gc_policy`](crate::Store::set_gc_policy).
    pub(crate) fn set_policy(
        &mut self,
        policy: Option<GcPolicy>,
        pool: &HierarchicalPool,
    ) -> Result<(), Error> {
        if let Some(p) = policy {
            if !(0.0..=1.0).contains(&p.trigger_ratio) {
                return Err(Error::invalid_argument(
                    "trigger_ratio",
                    format!("{} is not a fraction in 0.0..=1.0", p.trigger_ratio),
                ));
            }
            if p.every_n_inserts == Some(0) {
                return Err(Error::invalid_argument(
                    "every_n_inserts",
                    "must be at least 1 (None collects on no insert count)",
                ));
            }
        }
        self.pressure_bytes = policy.and_then(|p| {
            let cap = pool.memory_cap()?;
            Some((cap as f64 * p.trigger_ratio) as usize)
        });
        self.policy = policy;
        Ok(())
    }

    /// [`Store::gc_policy`](crate::Store::gc_policy).
    pub(crate) fn policy(&self) -> Option<GcPolicy> {
        self.policy
    }

    /// [`Store::gc_in_progress`](crate::Store::gc_in_progress).
    #[inline]
    pub(crate) fn in_progress(&self) -> bool {
        self.cycle.is_some()
    }

    /// [`Store::collect`](crate::Store::collect).
    pub(crate) fn collect(&mut self, tables: &mut Tables, pool: &HierarchicalPool) -> GcReport {
        if self.cycle.is_some() {
            return self.finish(tables, pool);
        }
        let started = Instant::now();
        let types: Vec<TypeId> = tables.keys().copied().collect();
        let marks: Vec<Vec<AtomicU64>> = types
            .iter()
            .map(|t| {
                let table = &tables[t];
                if table.hints().retention == Retention::Traced {
                    bitmap(table.slot_bound())
                } else {
                    Vec::new()
                }
            })
            .collect();
        let policy = self.dangling_policy;
        let roots = self.roots.list();
        let (marked, scanned, dangling_count, dangling) = {
            let marker = self.marker(tables, &types, &marks, policy != DanglingPolicy::Ignore);
            marker.mark_in_levels(&roots);
            Self::marker_totals(marker)
        };
        let mut report = GcReport {
            marked,
            scanned,
            dangling_count,
            dangling,
            ..GcReport::default()
        };
        self.sweep(
            tables,
            &types,
            &marks,
            Marks::OfLiveObjectsOnly,
            &mut report,
        );
        report.duration = started.elapsed();
        report.paused = report.duration;
        self.inserts = 0;
        self.reserved_after_collect = pool.reserved_bytes();
        report
    }

    /// [`Store::gc_begin`](crate::Store::gc_begin).
    pub(crate) fn begin(&mut self, tables: &Tables) -> Result<(), Error> {
        if self.cycle.is_some() {
            return Err(Error::invalid_argument(
                "gc_begin",
                "a collection cycle is already open: step it or finish it first",
            ));
        }
        let types: Vec<TypeId> = tables.keys().copied().collect();
        let mut cycle = Cycle {
            marks: types.iter().map(|_| Vec::new()).collect(),
            root_cursor: Vec::new(),
            types,
            grey: GreyStack::default(),
            explicit_roots_listed: false,
            explicit_roots: Vec::new(),
            touched: HashSet::new(),
            dangling: Vec::new(),
            marked: 0,
            scanned: 0,
            started: Instant::now(),
            paused: Duration::ZERO,
        };
        for (i, t) in cycle.types.iter().enumerate() {
            let table = &tables[t];
            if table.hints().retention != Retention::Traced && self.ops.contains_key(t) {
                cycle
                    .root_cursor
                    .push((i as u32, 0, table.layout_version()));
            }
        }
        self.cycle = Some(Box::new(cycle));
        Ok(())
    }

    /// [`Store::gc_step`](crate::Store::gc_step).
    pub(crate) fn step(&mut self, tables: &Tables, budget: Duration) -> GcProgress {
        let started = Instant::now();
        let deadline = started + budget - budget / STEP_RESERVE_DIVISOR;
        let Some(mut cycle) = self.cycle.take() else {
            return GcProgress {
                scanned: 0,
                marked: 0,
                grey: 0,
                done: true,
                duration: Duration::ZERO,
            };
        };
        let scanned_before = cycle.scanned;
        let done = self.mark_some(tables, &mut cycle, Some(deadline));
        let progress = GcProgress {
            scanned: cycle.scanned - scanned_before,
            marked: cycle.marked,
            grey: cycle.grey.len(),
            done,
            duration: started.elapsed(),
        };
        cycle.paused += progress.duration;
        self.cycle = Some(cycle);
        progress
    }

    /// [`Store::gc_finish`](crate::Store::gc_finish).
    pub(crate) fn finish(&mut self, tables: &mut Tables, pool: &HierarchicalPool) -> GcReport {
        let Some(mut cycle) = self.cycle.take() else {
            return self.collect(tables, pool);
        };
        let started = Instant::now();
        // Tables handed out mutably: anything may have changed, so every object of them
        // is kept for this cycle and scanned.
        let touched: Vec<TypeId> = cycle.touched.drain().collect();
        for type_id in touched {
            let ti = cycle.index_of(type_id);
            let table = &tables[&type_id];
            let traced = table.hints().retention == Retention::Traced;
            if traced {
                cycle.marks[ti as usize] = bitmap(table.slot_bound());
            }
            let mut place = Some(0);
            let mut owners = Vec::new();
            while let Some(p) = place {
                owners.clear();
                place = table.owners_from_bits(p, 4096, &mut owners);
                for &bits in &owners {
                    if traced {
                        set_mark(&cycle.marks[ti as usize], bits as u32 as usize);
                        cycle.marked += 1;
                    }
                    cycle.grey.push((ti, bits));
                }
            }
        }
        // Everything else, as far as it goes, in parallel.
        self.mark_some(tables, &mut cycle, None);
        // A handle seen dangling during the cycle stays dangling (generations only grow);
        // the list is kept whole until here so that the policy applies once.
        let dangling = std::mem::take(&mut cycle.dangling);
        let types = cycle.types.clone();
        let marks = std::mem::take(&mut cycle.marks);
        let mut report = GcReport {
            marked: cycle.marked,
            scanned: cycle.scanned,
            dangling_count: dangling.len(),
            dangling,
            ..GcReport::default()
        };
        // Objects marked and then removed during the cycle leave their bits set.
        self.sweep(tables, &types, &marks, Marks::MayNameRemoved, &mut report);
        report.duration = cycle.started.elapsed();
        report.paused = cycle.paused + started.elapsed();
        self.inserts = 0;
        self.reserved_after_collect = pool.reserved_bytes();
        report
    }

    /// Marks the cycle's work until `deadline` (or all of it, in parallel, for `None`).
    /// True when nothing is left.
    fn mark_some(&mut self, tables: &Tables, cycle: &mut Cycle, deadline: Option<Instant>) -> bool {
        cycle.grow_with(tables);
        // A cycle keeps every dangling edge until its finish looks at them again.
        let record = true;
        if !cycle.explicit_roots_listed {
            cycle.explicit_roots_listed = true;
            cycle.explicit_roots = self.roots.list();
        }
        let marker = self.marker(tables, &cycle.types, &cycle.marks, record);
        let mut grey = std::mem::take(&mut cycle.grey);
        let roots_left =
            visit_explicit_roots(&marker, &mut cycle.explicit_roots, &mut grey, deadline);
        let done = match deadline {
            Some(_) if roots_left => false,
            None => {
                let cursors = std::mem::take(&mut cycle.root_cursor);
                mark_everything_in_parallel(&marker, cursors, std::mem::take(&mut grey));
                true
            }
            Some(deadline) => drain_until(&marker, &mut cycle.root_cursor, &mut grey, deadline),
        };
        let (marked, scanned, _, dangling) = Self::marker_totals(marker);
        cycle.grey = grey;
        cycle.marked += marked;
        cycle.scanned += scanned;
        cycle.dangling.extend(dangling);
        done && cycle.root_cursor.is_empty() && cycle.grey.is_empty()
    }

    /// A marker over the tables `types`, in that order.
    fn marker<'a>(
        &'a self,
        tables: &'a Tables,
        types: &[TypeId],
        marks: &'a [Vec<AtomicU64>],
        record_dangling: bool,
    ) -> Marker<'a> {
        let tables = types
            .iter()
            .zip(marks)
            .map(|(t, m)| {
                let table = &*tables[t];
                MarkTable {
                    type_id: *t,
                    table,
                    ops: self.ops.get(t).copied(),
                    traced: table.hints().retention == Retention::Traced,
                    marks: m,
                }
            })
            .collect();
        Marker::new(tables, record_dangling)
    }

    fn marker_totals(marker: Marker<'_>) -> (usize, usize, usize, Vec<Dangling>) {
        (
            marker.marked.into_inner(),
            marker.scanned.into_inner(),
            marker.dangling_count.into_inner(),
            marker.dangling.into_inner(),
        )
    }

    /// Frees the unmarked objects of every traced table, then applies the dangling
    /// policy.
    fn sweep(
        &mut self,
        tables: &mut Tables,
        types: &[TypeId],
        marks: &[Vec<AtomicU64>],
        exact: Marks,
        report: &mut GcReport,
    ) {
        for (t, m) in types.iter().zip(marks) {
            let table = tables.get_mut(t).expect("tables are never dropped");
            if table.hints().retention != Retention::Traced {
                continue;
            }
            if exact == Marks::OfLiveObjectsOnly
                && m.iter()
                    .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
                    .sum::<usize>()
                    == table.len()
            {
                // Every object is marked: nothing to free, no need to visit each one.
                continue;
            }
            let freed = table.sweep_unmarked(&|index| is_marked(m, index as usize));
            if freed > 0 {
                report.freed.push((table.type_name(), freed));
                report.freed_total += freed;
                report.bytes_freed += freed * table.element_size();
            }
        }
        report.freed.sort_by(|a, b| a.0.cmp(b.0));
        if self.dangling_policy == DanglingPolicy::RemoveHolder {
            let holders: HashSet<AnyHandle> =
                report.dangling.iter().filter_map(|d| d.holder).collect();
            for h in holders {
                if let Some(table) = tables.get_mut(&h.type_id())
                    && table.remove_bits(h.to_bits())
                {
                    report.holders_removed += 1;
                }
            }
        }
        if self.dangling_policy == DanglingPolicy::Ignore {
            report.dangling.clear();
        }
    }

    /// The write barrier of an open cycle, for the object `bits` of `T`: an inserted
    /// object (`fresh`) is marked; a marked or manual object is queued to be scanned
    /// (again).
    #[inline]
    pub(crate) fn barrier(&mut self, tables: &Tables, type_id: TypeId, bits: u64, fresh: bool) {
        let Some(cycle) = self.cycle.as_deref_mut() else {
            return;
        };
        let Some(table) = tables.get(&type_id) else {
            return;
        };
        if !table.contains_bits(bits) {
            return;
        }
        let ti = cycle.index_of(type_id);
        let index = bits as u32 as usize;
        let queue = if table.hints().retention == Retention::Traced {
            let m = &mut cycle.marks[ti as usize];
            if m.len() * 64 < table.slot_bound() {
                m.resize_with(table.slot_bound().div_ceil(64), || AtomicU64::new(0));
            }
            if fresh {
                if set_mark(m, index) {
                    cycle.marked += 1;
                }
                true
            } else {
                is_marked(m, index)
            }
        } else {
            true
        };
        if queue && self.ops.contains_key(&type_id) {
            cycle.grey.push((ti, bits));
        }
    }

    /// Notes that the table of the type `type_id` was handed out mutably during an open
    /// cycle.
    #[inline]
    pub(crate) fn touch(&mut self, type_id: TypeId) {
        if let Some(cycle) = self.cycle.as_deref_mut() {
            cycle.touched.insert(type_id);
        }
    }

    /// Counts an insert and collects if the policy says so.
    #[inline]
    pub(crate) fn after_insert(&mut self, tables: &mut Tables, pool: &HierarchicalPool) {
        let Some(policy) = self.policy else { return };
        self.inserts += 1;
        if self.cycle.is_some() {
            return;
        }
        let by_count = policy.every_n_inserts.is_some_and(|n| self.inserts >= n);
        let pressed = self.pressure_bytes.is_some_and(|at| {
            let reserved = pool.reserved_bytes();
            reserved >= at && reserved > self.reserved_after_collect
        });
        if by_count || pressed {
            self.collect(tables, pool);
        }
    }
}

/// Visits the explicit roots `roots` (all of them without a deadline, else blocks of
/// [`ROOTS_PER_LOOK`] between looks at the clock, at least one block): whether some are
/// left.
fn visit_explicit_roots(
    marker: &Marker<'_>,
    roots: &mut Vec<AnyHandle>,
    grey: &mut GreyStack,
    deadline: Option<Instant>,
) -> bool {
    let mut lookup = mark::Lookup::default();
    let mut root_marked = 0;
    while !roots.is_empty() {
        for r in roots.drain(roots.len().saturating_sub(ROOTS_PER_LOOK)..) {
            root_marked += usize::from(marker.visit(None, r, &mut lookup, grey));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    marker.marked.fetch_add(root_marked, Ordering::Relaxed);
    !roots.is_empty()
}

/// Where a scan of `table` saved at `place` under layout `version` goes on: there, or
/// from the start if objects have moved since.
fn resume_place(table: &dyn TableInternals, place: u64, version: u64) -> u64 {
    if table.layout_version() == version {
        place
    } else {
        0
    }
}

/// Scans every manual table's objects not yet scanned as roots, then marks everything
/// grey in parallel.
fn mark_everything_in_parallel(
    marker: &Marker<'_>,
    cursors: Vec<(u32, u64, u64)>,
    mut grey: GreyStack,
) {
    let mut owners = Vec::new();
    for (ti, place, version) in cursors {
        let table = marker.tables[ti as usize].table;
        let mut next = Some(resume_place(table, place, version));
        while let Some(p) = next {
            owners.clear();
            next = table.owners_from_bits(p, 4096, &mut owners);
            grey.extend(owners.iter().map(|&bits| (ti, bits)));
        }
    }
    let segments = grey.into_segments();
    rayon::scope(|s| {
        for segment in segments {
            s.spawn(|s| marker.drain_parallel(s, segment));
        }
    });
}

/// Drains grey objects and scans batches of manual roots until `deadline`: true when
/// nothing is left. A step that has done nothing yet always scans one batch, so every
/// step makes progress.
fn drain_until(
    marker: &Marker<'_>,
    root_cursor: &mut Vec<(u32, u64, u64)>,
    grey: &mut GreyStack,
    deadline: Instant,
) -> bool {
    loop {
        if !marker.drain_until(grey, deadline) {
            return false;
        }
        let Some(cursor) = root_cursor.last_mut() else {
            return true;
        };
        let idle = marker.scanned.load(Ordering::Relaxed) == 0;
        if Instant::now() >= deadline && !idle {
            return false;
        }
        let (ti, place, version) = *cursor;
        let table = marker.tables[ti as usize].table;
        let mut owners = Vec::new();
        match table.owners_from_bits(resume_place(table, place, version), 256, &mut owners) {
            Some(next) => *cursor = (ti, next, table.layout_version()),
            None => {
                root_cursor.pop();
            }
        }
        grey.extend(owners.iter().map(|&bits| (ti, bits)));
    }
}
