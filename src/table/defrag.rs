//! Defragmentation: moving objects while every handle stays valid (part of the table
//! layer, re-exported as `neurostore::defrag`).
//!
//! What pointer-based pools cannot do safely: compact memory while users hold names for
//! objects. Because users hold [`Handle`](crate::Handle)s, not pointers, a table can move
//! an object to another place and rewrite the one slot that names it.
//!
//! This module owns the policies and reports:
//! - [`Table::fragmentation`] measures holes and classifies them ([`FragmentationReport`]);
//! - [`Table::defragment`] fills the lowest holes with the highest objects until the table
//!   is dense, then returns emptied chunks to the pool (the pool coalesces them);
//! - [`Table::defragment_step`] does the same under a [`DefragBudget`], resumably, with any
//!   mutation allowed between steps (each step starts from the table as it is);
//! - [`Table::compact_by_key`] reorders every object by a key (stable), for locality;
//! - [`Store::defragment`](crate::Store::defragment) walks every table, and a
//!   [`DefragPolicy`] starts a table's defragmentation after removals.
//!
//! The rest of the table layer supplies the move itself. Invariants kept:
//! - moving an object changes no handle and no object's bytes: the object is moved as a
//!   Rust value (a bitwise copy after which the source place is free and is never read or
//!   dropped), so `Drop` still runs exactly once, at removal;
//! - after a full [`defragment`](Table::defragment) no place below the highest object is
//!   free except in the last chunk, and the table holds no empty chunk;
//! - every move stamps both chunks with the table's epoch and bumps
//!   [`Table::layout_version`].
//!
//! Moving by bitwise copy is sound for every Rust type here: Rust values have no
//! address identity unless pinned, a table never hands out `Pin`, and a move needs
//! `&mut Table`, so no reference into the table survives it.
//!
//! This module has no unsafe code, and says so: `#![forbid(unsafe_code)]`.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use super::Table;
use crate::error::Error;

/// How a table's holes are spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FragmentationPattern {
    /// No hole: every place below the highest object is taken.
    Dense,
    /// Few holes in many chunks: most holes sit in chunks at least half full (e.g. after
    /// random removals). Defragmenting moves many objects per chunk freed.
    Scattered,
    /// Holes concentrated in sparse chunks (less than half full), e.g. after a whole
    /// population was removed. Defragmenting frees chunks cheaply.
    Holes,
    /// Between the two.
    Mixed,
}

/// What [`Table::fragmentation`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FragmentationReport {
    /// `holes / (live + holes)`: 0 for a dense table.
    pub ratio: f64,
    /// Free places below the highest object.
    pub holes: usize,
    /// Chunks less than half full, counting only places below the highest object.
    pub sparse_chunks: usize,
    /// How the holes are spread.
    pub pattern: FragmentationPattern,
}

/// What a full defragmentation or compaction did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DefragReport {
    /// Objects moved.
    pub moved: usize,
    /// Bytes of objects moved.
    pub bytes_moved: usize,
    /// Empty chunks returned to the pool.
    pub chunks_released: usize,
    /// The table's fragmentation ratio before.
    pub fragmentation_before: f64,
    /// The table's fragmentation ratio after.
    pub fragmentation_after: f64,
    /// The pool's fragmentation (`PoolStats::fragmentation`, `1 - in_use / reserved`)
    /// before.
    pub pool_fragmentation_before: f64,
    /// The pool's fragmentation after the emptied chunks went back and wholly free
    /// regions were returned to the OS. It can be higher than before: holes inside
    /// chunks count as in use for the pool, while chunks freed inside a region that
    /// still holds others count as reserved and free (coalesced into one block, ready
    /// for the next chunk).
    pub pool_fragmentation_after: f64,
    /// Wall time of the pass.
    pub duration: Duration,
}

/// The most one [`Table::defragment_step`] may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefragBudget {
    /// Bytes of objects moved at most.
    pub max_bytes: usize,
    /// Objects moved at most.
    pub max_moves: usize,
}

impl DefragBudget {
    /// At most `max_bytes` of objects moved.
    pub fn bytes(max_bytes: usize) -> Self {
        DefragBudget {
            max_bytes,
            max_moves: usize::MAX,
        }
    }

    /// At most `max_moves` objects moved.
    pub fn moves(max_moves: usize) -> Self {
        DefragBudget {
            max_bytes: usize::MAX,
            max_moves,
        }
    }

    /// The moves this budget allows for objects of `size` bytes.
    fn moves_for(&self, size: usize) -> usize {
        let by_bytes = self.max_bytes.checked_div(size).unwrap_or(usize::MAX);
        by_bytes.min(self.max_moves)
    }
}

/// What one [`Table::defragment_step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DefragProgress {
    /// Objects moved by this step.
    pub moved: usize,
    /// Bytes moved by this step.
    pub bytes_moved: usize,
    /// Empty chunks this step returned to the pool.
    pub chunks_released: usize,
    /// True when the table is dense: further steps have nothing to do (until the next
    /// removal).
    pub done: bool,
    /// The table's fragmentation ratio after the step.
    pub fragmentation: f64,
}

/// When a [`Store`](crate::Store) defragments a table on its own: after removals, once the
/// table's fragmentation ratio passes the policy's threshold. Made by
/// [`DefragPolicy::new`], which refuses a threshold that could not work.
///
/// ```
/// use neurostore::{DefragPolicy, Store};
///
/// let mut store = Store::new();
/// store.set_defrag_policy(Some(DefragPolicy::new(0.5)?));
/// assert_eq!(store.defrag_policy().map(|p| p.threshold()), Some(0.5));
/// assert!(DefragPolicy::new(f64::NAN).is_err());
/// assert!(DefragPolicy::new(-0.1).is_err());
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DefragPolicy {
    threshold: f64,
}

impl DefragPolicy {
    /// A policy that defragments a table once its fragmentation ratio is above
    /// `threshold` (0 defragments after any hole, 1 never).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `threshold` is not in `0.0..=1.0` (NaN included): a
    /// NaN threshold would never fire and a negative one would fire after every removal.
    pub fn new(threshold: f64) -> Result<Self, Error> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::invalid_argument(
                "threshold",
                format!("{threshold} is not a fragmentation ratio in 0.0..=1.0"),
            ));
        }
        Ok(DefragPolicy { threshold })
    }

    /// The fragmentation ratio above which a table is defragmented.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }
}

impl Default for DefragPolicy {
    /// Threshold 0.3.
    fn default() -> Self {
        DefragPolicy { threshold: 0.3 }
    }
}

impl<T> Table<T> {
    /// Applies a store's `policy` after `count` removals: looks at the table's
    /// fragmentation once per about as many removals as it has chunks (so O(1) per
    /// removal) and defragments it past the threshold. A table of short-lived objects
    /// ([`Lifetime::Short`](crate::Lifetime::Short)) is left alone: its holes fill with
    /// the next objects, and moving objects about to go is wasted work.
    pub(crate) fn apply_defrag_policy(&mut self, count: usize, policy: DefragPolicy) {
        if self.hints().lifetime == Some(crate::Lifetime::Short) || !self.tally_removals(count) {
            return;
        }
        if self.fragmentation().ratio > policy.threshold() {
            self.defragment();
        }
    }

    /// Measures the table's holes: how many, in how many sparse chunks, and their pattern.
    ///
    /// ```
    /// use neurostore::defrag::FragmentationPattern;
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<u64> = Table::new();
    /// let hs = t.insert_batch(0..100_000);
    /// assert_eq!(t.fragmentation().pattern, FragmentationPattern::Dense);
    /// for h in hs.iter().step_by(4) {
    ///     t.remove(*h);
    /// }
    /// let report = t.fragmentation();
    /// assert_eq!(report.pattern, FragmentationPattern::Scattered);
    /// assert!((report.ratio - 0.25).abs() < 0.01);
    /// ```
    pub fn fragmentation(&self) -> FragmentationReport {
        let Some(last) = self.highest_occupied() else {
            return FragmentationReport {
                ratio: 0.0,
                holes: 0,
                sparse_chunks: 0,
                pattern: FragmentationPattern::Dense,
            };
        };
        let (mut holes, mut sparse_chunks, mut holes_in_sparse) = (0usize, 0usize, 0usize);
        for (ci, occupancy) in self
            .chunk_occupancy()
            .enumerate()
            .take(last.chunk as usize + 1)
        {
            let Some((live, capacity)) = occupancy else {
                continue;
            };
            let span = if ci == last.chunk as usize {
                last.pos + 1
            } else {
                capacity
            };
            let chunk_holes = span.saturating_sub(live) as usize;
            holes += chunk_holes;
            // Sparse: less than half of the places up to the table's end are taken (so a
            // last chunk that is merely not filled yet is not sparse).
            if live * 2 < span {
                sparse_chunks += 1;
                holes_in_sparse += chunk_holes;
            }
        }
        let live = self.len();
        let pattern = if holes == 0 {
            FragmentationPattern::Dense
        } else {
            let share = holes_in_sparse as f64 / holes as f64;
            if share >= 0.75 {
                FragmentationPattern::Holes
            } else if share <= 0.25 {
                FragmentationPattern::Scattered
            } else {
                FragmentationPattern::Mixed
            }
        };
        FragmentationReport {
            ratio: holes as f64 / (live + holes) as f64,
            holes,
            sparse_chunks,
            pattern,
        }
    }

    /// Moves objects out of the highest places into the lowest holes until no hole is
    /// left below the highest object, then returns every empty chunk to the pool and has
    /// the pool give wholly free regions back to the OS ([`HierarchicalPool::trim`]), so
    /// that the pool's fragmentation falls as well. Handles and object bytes do not change.
    ///
    /// [`HierarchicalPool::trim`]: crate::HierarchicalPool::trim
    ///
    /// ```
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<[f32; 8]> = Table::new();
    /// let hs = t.insert_batch((0..20_000).map(|i| [i as f32; 8]));
    /// for h in hs.iter().filter(|h| h.index() % 2 == 0) {
    ///     t.remove(*h);
    /// }
    /// let report = t.defragment();
    /// assert!(report.fragmentation_before > 0.4);
    /// assert_eq!(report.fragmentation_after, 0.0);
    /// assert!(report.chunks_released > 0);
    /// for (i, h) in hs.iter().enumerate().filter(|(_, h)| h.index() % 2 == 1) {
    ///     assert_eq!(t.get(*h), Some(&[i as f32; 8])); // every survivor, same handle
    /// }
    /// ```
    pub fn defragment(&mut self) -> DefragReport {
        let before = Before::take(self);
        let (moved, _) = self.fill_holes_from_top(usize::MAX);
        before.report(self, moved)
    }

    /// Closes every hole by sliding the objects down, keeping their storage order (where
    /// [`defragment`](Self::defragment) moves the last objects into the first holes):
    /// afterwards the objects fill places `0..len()` in the order they had. Every object
    /// after the first hole moves, a run of neighbours with one copy; handles stay valid,
    /// and the emptied chunks go back to the pool.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`](crate::Error::OutOfMemory) when a chunk below the new top
    /// that the table no longer holds cannot be made again; nothing has moved then.
    ///
    /// ```
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<u32> = Table::new();
    /// let hs = t.insert_batch(0..10);
    /// for h in &hs[..5] {
    ///     t.remove(*h);
    /// }
    /// let report = t.compact_in_order()?;
    /// assert_eq!(report.moved, 5);
    /// assert_eq!(t.values().copied().collect::<Vec<_>>(), vec![5, 6, 7, 8, 9]);
    /// assert_eq!(t.get(hs[9]), Some(&9));
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn compact_in_order(&mut self) -> Result<DefragReport, crate::Error> {
        let before = Before::take(self);
        let moved = self.slide_down()?;
        Ok(before.report(self, moved))
    }

    /// One bounded piece of [`defragment`](Self::defragment): at most `budget`'s moves,
    /// then the chunks it emptied go back to the pool. Steps keep no state, so the table
    /// may be changed in any way between them; repeated steps reach the same dense state.
    ///
    /// ```
    /// use neurostore::defrag::DefragBudget;
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<u64> = Table::new();
    /// let hs = t.insert_batch(0..50_000);
    /// for h in hs.iter().step_by(2) {
    ///     t.remove(*h);
    /// }
    /// loop {
    ///     let step = t.defragment_step(DefragBudget::bytes(64 << 10));
    ///     assert!(step.bytes_moved <= 64 << 10);
    ///     if step.done {
    ///         break;
    ///     }
    /// }
    /// assert_eq!(t.fragmentation().holes, 0);
    /// ```
    pub fn defragment_step(&mut self, budget: DefragBudget) -> DefragProgress {
        // Moved objects are away from their home slots, which needs the slots' place
        // array (4 bytes a slot); a table without one makes it over as many steps as the
        // budget asks, counting an entry as 4 bytes moved, before anything moves.
        if !self.lists_places() && self.fragmentation().holes > 0 {
            let listed = self.list_places_step(budget.moves_for(4).max(1));
            return DefragProgress {
                moved: 0,
                bytes_moved: 0,
                chunks_released: 0,
                // Without memory for the array nothing can move: the pass is over.
                done: listed.is_err(),
                fragmentation: self.fragmentation().ratio,
            };
        }
        let (moved, done) = self.fill_holes_from_top(budget.moves_for(size_of::<T>()));
        let chunks_released = self.release_all_empty_chunks();
        DefragProgress {
            moved,
            bytes_moved: moved * size_of::<T>(),
            chunks_released,
            done,
            fragmentation: self.fragmentation().ratio,
        }
    }

    /// Reorders every object by `key` (stable: objects with equal keys keep their storage
    /// order) into a dense run from the first place, then returns emptied chunks to the
    /// pool. `key` is called before anything moves (at most twice per object), so a panic
    /// in it leaves the table unchanged. Fails, with nothing moved, only if a chunk
    /// missing below the new end cannot be taken from the pool.
    ///
    /// A table that is already dense and in key order (say, filled in that order) is
    /// recognised in one pass that allocates nothing, and nothing moves: the sort's
    /// working memory (16 bytes per object and more) is only taken when there is sorting
    /// to do.
    ///
    /// ```
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<(u32, char)> = Table::new();
    /// let hs: Vec<_> = [(3, 'a'), (1, 'b'), (3, 'c'), (2, 'd')].into_iter().map(|x| t.insert(x)).collect();
    /// t.compact_by_key(|&(k, _)| k)?;
    /// let order: String = t.values().map(|&(_, c)| c).collect();
    /// assert_eq!(order, "bdac");
    /// assert_eq!(t.get(hs[2]), Some(&(3, 'c'))); // handles still resolve
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn compact_by_key<K: Ord>(
        &mut self,
        mut key: impl FnMut(&T) -> K,
    ) -> Result<DefragReport, crate::Error> {
        let before = Before::take(self);
        if self.is_dense_and_sorted_by(&mut key) {
            return Ok(before.report(self, 0));
        }
        let mut keyed: Vec<(K, crate::table::Loc)> = self
            .objects_with_locs()
            .map(|(loc, value)| (key(value), loc))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let order: Vec<crate::table::Loc> = keyed.into_iter().map(|(_, loc)| loc).collect();
        let moved = self.permute(&order)?;
        drop(order);
        Ok(before.report(self, moved))
    }
}

impl<T> Table<T> {
    /// True when the objects fill places `0..len` and their keys never fall in storage
    /// order: the stable sort of [`compact_by_key`](Self::compact_by_key) would move
    /// nothing.
    fn is_dense_and_sorted_by<K: Ord>(&self, key: &mut impl FnMut(&T) -> K) -> bool {
        let mut previous: Option<K> = None;
        for (expected, (loc, value)) in self.objects_with_locs().enumerate() {
            if self.global_place(loc) != expected as u64 {
                return false;
            }
            let k = key(value);
            if previous.as_ref().is_some_and(|p| *p > k) {
                return false;
            }
            previous = Some(k);
        }
        true
    }
}

/// The figures a full pass reports as "before", taken when it starts.
struct Before {
    start: Instant,
    fragmentation: f64,
    pool_fragmentation: f64,
}

impl Before {
    fn take<T>(table: &Table<T>) -> Self {
        Before {
            start: Instant::now(),
            fragmentation: table.fragmentation().ratio,
            pool_fragmentation: table.pool().stats().fragmentation,
        }
    }

    /// Ends a full pass that moved `moved` objects: returns the emptied chunks to the
    /// pool, has the pool give wholly free regions back, and reports.
    fn report<T>(self, table: &mut Table<T>, moved: usize) -> DefragReport {
        let chunks_released = table.release_all_empty_chunks();
        if chunks_released > 0 {
            table.pool().trim();
        }
        DefragReport {
            moved,
            bytes_moved: moved * size_of::<T>(),
            chunks_released,
            fragmentation_before: self.fragmentation,
            fragmentation_after: table.fragmentation().ratio,
            pool_fragmentation_before: self.pool_fragmentation,
            pool_fragmentation_after: table.pool().stats().fragmentation,
            duration: self.start.elapsed(),
        }
    }
}
