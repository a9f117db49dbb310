//! The store's roots and collections: the public face of the collector (the `gc` layer),
//! which works on the store's tables and its [`GcState`](crate::gc::GcState) without
//! knowing the store.

use std::any::TypeId;
use std::time::Duration;

use super::Store;
use crate::error::Error;
use crate::gc::{DanglingPolicy, GcPolicy, GcProgress, GcReport, Root};
use crate::pooled::AnyHandle;
use crate::table::Handle;

impl Store {
    /// Makes `h` a root: its object stays alive while the root is held (counted: as
    /// many [`remove_root`](Self::remove_root) calls as `add_root` calls end it). A root
    /// that does not resolve is reported as dangling by collections.
    pub fn add_root<T: 'static>(&mut self, h: Handle<T>) {
        self.gc.add_root(&self.tables, AnyHandle::new(h));
    }

    /// Drops one count of the root `h`; false if `h` was not a root.
    pub fn remove_root<T: 'static>(&mut self, h: Handle<T>) -> bool {
        self.gc.remove_root(AnyHandle::new(h))
    }

    /// Roots `h` until the returned guard is dropped.
    pub fn root<T: 'static>(&mut self, h: Handle<T>) -> Root<T> {
        self.gc.root(&self.tables, h)
    }

    /// The explicit roots, each once.
    pub fn roots(&self) -> Vec<AnyHandle> {
        self.gc.roots()
    }

    /// What to do with dangling handles ([`DanglingPolicy::Report`] by default).
    pub fn set_dangling_policy(&mut self, policy: DanglingPolicy) {
        self.gc.set_dangling_policy(policy);
    }

    /// When the store collects on its own: `None` (the default) for never. With a
    /// policy, a collection runs on insert once `every_n_inserts` inserts have happened
    /// since the last, or once the pool's reserved memory is past `trigger_ratio` of its
    /// `total_memory` cap and has grown since the last collection (pools without a cap
    /// never trigger it). Never during an open incremental cycle. The policy belongs to
    /// this store: the pool, which other stores may share, is not changed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `trigger_ratio` is not in `0.0..=1.0` (NaN
    /// included) or `every_n_inserts` is `Some(0)`; nothing changes.
    ///
    /// ```
    /// use neurostore::{Error, GcPolicy, Store};
    ///
    /// let mut store = Store::new();
    /// let bad = GcPolicy { trigger_ratio: f64::NAN, ..GcPolicy::default() };
    /// assert!(matches!(store.set_gc_policy(Some(bad)), Err(Error::InvalidArgument { .. })));
    /// store.set_gc_policy(Some(GcPolicy { every_n_inserts: Some(1000), ..GcPolicy::default() }))?;
    /// # Ok::<(), Error>(())
    /// ```
    pub fn set_gc_policy(&mut self, policy: Option<GcPolicy>) -> Result<(), Error> {
        self.gc.set_policy(policy, &self.pool)
    }

    /// The current collection policy.
    pub fn gc_policy(&self) -> Option<GcPolicy> {
        self.gc.policy()
    }

    /// True while an incremental cycle is open.
    pub fn gc_in_progress(&self) -> bool {
        self.gc.in_progress()
    }

    /// Frees every object of a traced table that no root reaches: stop the world, mark
    /// in parallel (rayon), sweep. An open incremental cycle is finished instead.
    ///
    /// ```
    /// use neurostore::{Handle, Pooled, Store};
    ///
    /// #[derive(Pooled)]
    /// #[pooled(retention = "traced")]
    /// struct Node { next: Option<Handle<Node>> }
    ///
    /// #[derive(Pooled)]
    /// struct Owner { first: Handle<Node> } // manual: a root
    ///
    /// let mut store = Store::new();
    /// store.register::<Node>()?;
    /// store.register::<Owner>()?;
    /// let b = store.insert(Node { next: None });
    /// let a = store.insert(Node { next: Some(b) });
    /// let lost = store.insert(Node { next: None });
    /// store.insert(Owner { first: a });
    /// let report = store.collect();
    /// assert_eq!((report.marked, report.freed_total), (2, 1));
    /// assert!(store.contains(b) && !store.contains(lost));
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn collect(&mut self) -> GcReport {
        self.gc.collect(&mut self.tables, &self.pool)
    }

    /// Opens an incremental cycle: marking then proceeds in [`gc_step`](Self::gc_step)s
    /// of bounded length while the program goes on using the store, and
    /// [`gc_finish`](Self::gc_finish) sweeps. Taking no time itself.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a cycle is already open; nothing changes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use neurostore::{Handle, Pooled, Store};
    ///
    /// #[derive(Pooled)]
    /// #[pooled(retention = "traced")]
    /// struct Node { next: Option<Handle<Node>> }
    ///
    /// let mut store = Store::new();
    /// store.register::<Node>()?;
    /// let kept = store.insert(Node { next: None });
    /// store.add_root(kept);
    /// let lost = store.insert(Node { next: None });
    /// store.gc_begin()?;
    /// while !store.gc_step(Duration::from_micros(500)).done {
    ///     // the program runs between steps
    /// }
    /// let late = store.insert(Node { next: Some(kept) }); // made during the cycle: kept
    /// let report = store.gc_finish();
    /// assert_eq!(report.freed_total, 1);
    /// assert!(store.contains(kept) && store.contains(late) && !store.contains(lost));
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn gc_begin(&mut self) -> Result<(), Error> {
        self.gc.begin(&self.tables)
    }

    /// Marks for at most about `budget`, then returns so the program can go on. The clock
    /// is read every 16 objects scanned (and every 1024 explicit roots); marking stops
    /// when the time left is less than the longest batch of the step so far, and 1/64 of
    /// the budget is kept for the step's own bookkeeping, so that a step ends within its
    /// budget unless the thread is held up. A step always does some work (at least one
    /// batch of objects or roots), so a zero budget scans 16 objects at most. Without an
    /// open cycle, reports done.
    pub fn gc_step(&mut self, budget: Duration) -> GcProgress {
        self.gc.step(&self.tables, budget)
    }

    /// Ends the open cycle: marks what is left (in parallel), keeps and scans every
    /// object of the tables handed out mutably during the cycle, and sweeps. Without an
    /// open cycle, runs a whole [`collect`](Self::collect).
    pub fn gc_finish(&mut self) -> GcReport {
        self.gc.finish(&mut self.tables, &self.pool)
    }

    /// The write barrier of an open cycle, for the object `bits` of `T`: an inserted
    /// object (`fresh`) is marked; a marked or manual object is queued to be scanned
    /// (again).
    #[inline]
    pub(crate) fn gc_barrier<T: 'static>(&mut self, bits: u64, fresh: bool) {
        // Checked here, so that a store with no open cycle makes no call per insert.
        if self.gc.in_progress() {
            self.gc
                .barrier(&self.tables, TypeId::of::<T>(), bits, fresh);
        }
    }

    /// Notes that the table of `T` was handed out mutably during an open cycle.
    pub(crate) fn gc_touch<T: 'static>(&mut self) {
        self.gc_touch_type(TypeId::of::<T>());
    }

    /// As [`gc_touch`](Self::gc_touch), for the table of the type `type_id`.
    pub(crate) fn gc_touch_type(&mut self, type_id: TypeId) {
        self.gc.touch(type_id);
    }

    /// Counts an insert and collects if the policy says so.
    pub(crate) fn gc_after_insert(&mut self) {
        self.gc.after_insert(&mut self.tables, &self.pool);
    }
}
