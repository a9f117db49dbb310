//! Layer 7, **store**: one owner for a table per type.
//!
//! [`Store`] holds one [`Table<T>`] per registered type, behind the object-safe erased
//! interface of the `erased` layer ([`ErasedTable`]), so that defragmentation, the
//! collector, snapshots and device mirrors walk every table without knowing its type. The
//! store's collection and snapshot methods (`collect.rs`, `persist.rs`) hand its tables
//! to those layers, which know nothing of the store. [`SharedStore`] puts
//! each table behind its own `parking_lot::RwLock` for many threads mutating at once.
//!
//! Invariants: at most one table per type; a handle of type `T` is only ever looked up
//! in the table of `T` (the type system routes it), so it resolves exactly as in
//! [`Table`]. This layer has no unsafe code: `lib.rs` declares it `#[forbid(unsafe_code)]`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::Error;
use crate::gc::GcState;
use crate::pool::{HierarchicalPool, PoolStats};
use crate::pooled::{Pooled, Trace};
use crate::snapshot::{LoadedTable, TypeOps};
use crate::table::defrag::{DefragPolicy, DefragReport};
use crate::table::{Handle, Table, TableStats, default_pool};

mod collect;
mod linked;
mod persist;

pub use crate::erased::ErasedTable;
pub(crate) use crate::erased::{TableInternals, TypeMap};

#[doc(hidden)]
pub use linked::__private;

/// Figures of a whole store.
#[derive(Clone, Debug)]
pub struct StoreStats {
    /// Each table's type name and figures, sorted by type name.
    pub tables: Vec<(&'static str, TableStats)>,
    /// The figures of the pool the tables take their chunks from.
    pub pool: PoolStats,
}

/// One table per type, owned together so they can be traced, defragmented, mirrored and
/// snapshotted as a whole. `Send + Sync`.
///
/// ```
/// use neurostore::store::Store;
///
/// struct Spike { time_ms: f32 }
///
/// let mut store = Store::new();
/// let a = store.insert(1.5f64);
/// let s = store.insert(Spike { time_ms: 12.5 });
/// assert_eq!(store.get(a), Some(&1.5));
/// store.get_mut(s).unwrap().time_ms += 0.1;
/// assert_eq!(store.table::<Spike>().unwrap().len(), 1);
/// assert_eq!(store.remove(a), Some(1.5));
/// assert_eq!(store.get(a), None);
/// assert_eq!(store.stats().tables.len(), 2);
/// ```
pub struct Store {
    pub(crate) tables: TypeMap<Box<dyn TableInternals>>,
    pub(crate) pool: Arc<HierarchicalPool>,
    /// Roots, tracing entry points, policies and an open cycle (the gc layer).
    pub(crate) gc: GcState,
    /// How to save each registered type's table (filled by `register`).
    pub(crate) persist: TypeMap<crate::snapshot::StoreTableOps>,
    defrag_policy: Option<DefragPolicy>,
}

/// What [`Store::defragment`] did, table by table.
#[derive(Clone, Debug)]
pub struct StoreDefragReport {
    /// Each table's type name and report, sorted by type name.
    pub tables: Vec<(&'static str, DefragReport)>,
    /// Objects moved in all tables.
    pub moved: usize,
    /// Bytes moved in all tables.
    pub bytes_moved: usize,
    /// Chunks returned to the pool by all tables.
    pub chunks_released: usize,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self
            .tables
            .values()
            .map(|t| (t.type_name(), t.len()))
            .collect();
        names.sort();
        f.debug_struct("Store").field("tables", &names).finish()
    }
}

impl Store {
    /// An empty store whose tables take chunks from the default pool.
    pub fn new() -> Self {
        Self::with_pool(default_pool())
    }

    /// An empty store whose tables take chunks from `pool`.
    pub fn with_pool(pool: Arc<HierarchicalPool>) -> Self {
        Store {
            tables: TypeMap::default(),
            pool,
            defrag_policy: Some(DefragPolicy::default()),
            gc: GcState::default(),
            persist: TypeMap::default(),
        }
    }

    /// When tables are defragmented on their own: after removals, once a table's
    /// fragmentation ratio passes the policy's threshold. `None` turns it off. The default
    /// is `Some(DefragPolicy::default())` (threshold 0.3).
    pub fn set_defrag_policy(&mut self, policy: Option<DefragPolicy>) {
        self.defrag_policy = policy;
    }

    /// The current defragmentation policy.
    pub fn defrag_policy(&self) -> Option<DefragPolicy> {
        self.defrag_policy
    }

    /// Defragments every table ([`Table::defragment`]).
    ///
    /// ```
    /// use neurostore::Store;
    ///
    /// let mut store = Store::new();
    /// store.set_defrag_policy(None);
    /// let hs: Vec<_> = (0..50_000u64).map(|i| store.insert(i)).collect();
    /// for h in hs.iter().step_by(2) {
    ///     store.remove(*h);
    /// }
    /// let report = store.defragment();
    /// assert_eq!(report.moved, 12_500);
    /// assert_eq!(store.get(hs[1]), Some(&1));
    /// ```
    pub fn defragment(&mut self) -> StoreDefragReport {
        let mut tables: Vec<_> = self
            .tables
            .values_mut()
            .map(|t| (t.type_name(), t.defragment()))
            .collect();
        tables.sort_by(|a, b| a.0.cmp(b.0));
        StoreDefragReport {
            moved: tables.iter().map(|(_, r)| r.moved).sum(),
            bytes_moved: tables.iter().map(|(_, r)| r.bytes_moved).sum(),
            chunks_released: tables.iter().map(|(_, r)| r.chunks_released).sum(),
            tables,
        }
    }

    /// The pool the tables take chunks from.
    pub fn pool(&self) -> &Arc<HierarchicalPool> {
        &self.pool
    }

    /// The table of a [`Pooled`] type, built from its hints ([`Table::pooled`]): its
    /// [`Retention`](crate::Retention), object alignment, tracing and snapshot encoding.
    ///
    /// A `#[derive(Pooled)]` type without generic parameters needs no call: the derive
    /// registers it when the program links, and the store builds its table this way on
    /// the type's first insert. Call it for a generic derived type (`Pair<u32>`) or a
    /// hand-written impl, before the type's first insert; [`insert`](Self::insert) alone
    /// makes their table with the defaults (manual, natural alignment), as for any type
    /// without the derive.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the table of `T` already holds objects and was built
    /// with other hints; nothing changes. Registering again is a no-op.
    ///
    /// ```
    /// use neurostore::{Handle, Pooled, Retention, Store};
    ///
    /// #[derive(Pooled)]
    /// #[pooled(retention = "traced")]
    /// struct Spike { source: Handle<Spike>, time_ms: f32 }
    ///
    /// let mut store = Store::new();
    /// assert_eq!(store.register::<Spike>()?.retention(), Retention::Traced);
    /// store.insert(Spike { source: Handle::null(), time_ms: 1.0 });
    /// store.register::<Spike>()?; // again: nothing changes
    /// assert_eq!(store.table::<Spike>().unwrap().len(), 1);
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn register<T: Pooled + Trace + Send + Sync>(&mut self) -> Result<&mut Table<T>, Error> {
        self.table_as_made::<T>().adopt_hints(T::HINTS)?;
        self.keep_ops(TypeId::of::<T>(), TypeOps::of::<T>());
        self.gc_touch::<T>();
        Ok(self.table_as_made::<T>())
    }

    /// Puts a loaded table into this (new) store as `register` would have made it.
    pub(crate) fn install_table<T: Pooled + Trace + Send + Sync>(&mut self, table: Table<T>) {
        self.install_loaded(LoadedTable {
            type_id: TypeId::of::<T>(),
            table: Box::new(table),
            ops: TypeOps::of::<T>(),
        });
    }

    /// Puts a table read from a snapshot into this (new) store, with its entry points.
    pub(crate) fn install_loaded(&mut self, loaded: LoadedTable) {
        self.tables.insert(loaded.type_id, loaded.table);
        self.keep_ops(loaded.type_id, loaded.ops);
    }

    /// Keeps the entry points of the registered type `id`.
    fn keep_ops(&mut self, id: TypeId, ops: TypeOps) {
        if let Some(gc) = ops.gc {
            self.gc.ops.insert(id, gc);
        }
        self.persist.insert(id, ops.persist);
    }

    /// The table of `T`, made empty (with the default hints) if there is none yet.
    pub fn ensure_table<T: Send + Sync + 'static>(&mut self) -> &mut Table<T> {
        self.gc_touch::<T>();
        self.table_entry::<T>()
    }

    /// As [`ensure_table`](Self::ensure_table), without telling an open collection cycle.
    /// A `#[derive(Pooled)]` type's new table is made as [`register`](Self::register)
    /// makes it, from the registration the derive links into the program.
    fn table_entry<T: Send + Sync + 'static>(&mut self) -> &mut Table<T> {
        let id = TypeId::of::<T>();
        if !self.tables.contains_key(&id) {
            linked::register_linked(self, id);
        }
        self.table_as_made::<T>()
    }

    /// The table of `T`, made with the default hints if there is none.
    fn table_as_made<T: Send + Sync + 'static>(&mut self) -> &mut Table<T> {
        let pool = &self.pool;
        self.tables
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(Table::<T>::with_pool(pool.clone())))
            .as_any_mut()
            .downcast_mut()
            .expect("the table under TypeId::of::<T>() is a Table<T>")
    }

    /// Inserts `value` into the table of `T` (making the table if needed, from the
    /// declared hints of a derived type: see [`register`](Self::register)). Aborts
    /// through [`handle_alloc_error`](std::alloc::handle_alloc_error) if the pool refuses
    /// memory, as `Vec` does; [`try_insert`](Self::try_insert) returns the error instead.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Handle<T> {
        let h = self.table_entry::<T>().insert(value);
        self.after_insert(h);
        h
    }

    /// Inserts `value` into the table of `T` (making the table if needed), or returns
    /// the pool's refusal.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when the pool cannot give the table a chunk (a
    /// `total_memory` cap, for one), [`Error::TableFull`] when the table has used every
    /// handle index; `value` is dropped and no object is added.
    ///
    /// ```
    /// use neurostore::{Error, HierarchicalPool, PoolConfig, Store};
    ///
    /// let mut config = PoolConfig::default();
    /// config.total_memory = Some(1 << 20);
    /// let mut store = Store::with_pool(HierarchicalPool::new(config)?.into());
    /// let refused = (0..1_000_000u64).map(|i| store.try_insert([i; 8])).find_map(Result::err);
    /// assert!(matches!(refused, Some(Error::OutOfMemory { .. })));
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn try_insert<T: Send + Sync + 'static>(&mut self, value: T) -> Result<Handle<T>, Error> {
        let h = self.table_entry::<T>().try_insert(value)?;
        self.after_insert(h);
        Ok(h)
    }

    /// What an open collection cycle and the collection policy learn of a new object.
    fn after_insert<T: Send + Sync + 'static>(&mut self, h: Handle<T>) {
        self.gc_barrier::<T>(h.to_bits(), true);
        self.gc_after_insert();
    }

    /// The object `h` names.
    pub fn get<T: Send + Sync + 'static>(&self, h: Handle<T>) -> Option<&T> {
        self.table::<T>()?.get(h)
    }

    /// The object `h` names, mutably.
    pub fn get_mut<T: Send + Sync + 'static>(&mut self, h: Handle<T>) -> Option<&mut T> {
        self.gc_barrier::<T>(h.to_bits(), false);
        self.table_mut_untouched::<T>()?.get_mut(h)
    }

    /// True when `h` names a live object.
    pub fn contains<T: Send + Sync + 'static>(&self, h: Handle<T>) -> bool {
        self.table::<T>().is_some_and(|t| t.contains(h))
    }

    /// Removes and returns the object `h` names; a stale handle changes nothing. The
    /// store's [`DefragPolicy`] may defragment the table afterwards (handles stay valid).
    pub fn remove<T: Send + Sync + 'static>(&mut self, h: Handle<T>) -> Option<T> {
        let policy = self.defrag_policy;
        let table = self.table_mut_untouched::<T>()?;
        let value = table.remove(h)?;
        if let Some(policy) = policy {
            table.apply_defrag_policy(1, policy);
        }
        Some(value)
    }

    /// The table of `T`, if registered.
    pub fn table<T: Send + Sync + 'static>(&self) -> Option<&Table<T>> {
        self.tables.get(&TypeId::of::<T>())?.as_any().downcast_ref()
    }

    /// The table of `T`, mutably, if registered. During an incremental collection cycle
    /// every object of the table is kept and scanned again at its finish, since anything
    /// in the table may change.
    pub fn table_mut<T: Send + Sync + 'static>(&mut self) -> Option<&mut Table<T>> {
        self.gc_touch::<T>();
        self.table_mut_untouched()
    }

    /// As [`table_mut`](Self::table_mut), without telling an open collection cycle.
    pub(crate) fn table_mut_untouched<T: Send + Sync + 'static>(
        &mut self,
    ) -> Option<&mut Table<T>> {
        self.tables
            .get_mut(&TypeId::of::<T>())?
            .as_any_mut()
            .downcast_mut()
    }

    /// Every table, erased (for tools that walk them all).
    pub fn tables(&self) -> impl Iterator<Item = &dyn ErasedTable> {
        self.tables.values().map(|t| t.view())
    }

    /// Every table, erased and mutable. During an incremental collection cycle every
    /// table is then kept whole and scanned again at the cycle's finish, as for
    /// [`table_mut`](Self::table_mut): whatever is done to a table reached this way, the
    /// collector frees no object that is reachable at the finish.
    pub fn tables_mut(&mut self) -> impl Iterator<Item = &mut dyn ErasedTable> {
        let types: Vec<TypeId> = self.tables.keys().copied().collect();
        for type_id in types {
            self.gc_touch_type(type_id);
        }
        self.tables.values_mut().map(|t| t.view_mut())
    }

    /// The figures of every table and of the pool.
    pub fn stats(&self) -> StoreStats {
        let mut tables: Vec<_> = self
            .tables
            .values()
            .map(|t| (t.type_name(), t.stats()))
            .collect();
        tables.sort_by(|a, b| a.0.cmp(b.0));
        StoreStats {
            tables,
            pool: self.pool.stats(),
        }
    }
}

/// A store for many threads mutating at once: each table sits behind its own
/// `parking_lot::RwLock`, so threads working on different types never wait for each
/// other, and readers of one type share it.
///
/// ```
/// use std::sync::Arc;
/// use neurostore::store::SharedStore;
///
/// let store = Arc::new(SharedStore::new());
/// let workers: Vec<_> = (0..4u64)
///     .map(|t| {
///         let store = store.clone();
///         std::thread::spawn(move || (0..100).map(|i| store.insert(t * 1000 + i)).collect::<Vec<_>>())
///     })
///     .collect();
/// let handles: Vec<_> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
/// assert_eq!(store.table::<u64>().unwrap().read().len(), 400);
/// assert_eq!(store.with(handles[0], |v| *v), Some(0));
/// ```
pub struct SharedStore {
    tables: RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    pool: Arc<HierarchicalPool>,
}

impl Default for SharedStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("tables", &self.tables.read().len())
            .finish()
    }
}

impl SharedStore {
    /// An empty shared store whose tables take chunks from the default pool.
    pub fn new() -> Self {
        Self::with_pool(default_pool())
    }

    /// An empty shared store whose tables take chunks from `pool`.
    pub fn with_pool(pool: Arc<HierarchicalPool>) -> Self {
        SharedStore {
            tables: RwLock::new(HashMap::new()),
            pool,
        }
    }

    /// The lock-guarded table of a `#[derive(Pooled)]` type, built from its hints, as
    /// [`Store::register`].
    ///
    /// # Errors
    /// As [`Store::register`].
    pub fn register<T: Pooled + Trace + Send + Sync>(
        &self,
    ) -> Result<Arc<RwLock<Table<T>>>, Error> {
        let table = self.ensure_table::<T>();
        table.write().adopt_hints(T::HINTS)?;
        Ok(table)
    }

    /// The lock-guarded table of `T`, made empty (with the default hints) if there is
    /// none yet.
    pub fn ensure_table<T: Send + Sync + 'static>(&self) -> Arc<RwLock<Table<T>>> {
        if let Some(t) = self.table::<T>() {
            return t;
        }
        let mut tables = self.tables.write();
        let entry = tables.entry(TypeId::of::<T>()).or_insert_with(|| {
            // A derived type's table is built from its declared hints (already checked
            // when the type compiled).
            let declared = linked::linked_hints(TypeId::of::<T>())
                .and_then(|hints| Table::<T>::with_hints(self.pool.clone(), hints).ok());
            let table = declared.unwrap_or_else(|| Table::<T>::with_pool(self.pool.clone()));
            Arc::new(RwLock::new(table))
        });
        Arc::clone(entry)
            .downcast()
            .expect("the table under TypeId::of::<T>() is a RwLock<Table<T>>")
    }

    /// The lock-guarded table of `T`, if registered.
    pub fn table<T: Send + Sync + 'static>(&self) -> Option<Arc<RwLock<Table<T>>>> {
        let any = Arc::clone(self.tables.read().get(&TypeId::of::<T>())?);
        any.downcast().ok()
    }

    /// Inserts `value` into the table of `T` (making the table if needed). Aborts as
    /// [`Store::insert`] does if the pool refuses memory; [`try_insert`](Self::try_insert)
    /// returns the error instead.
    pub fn insert<T: Send + Sync + 'static>(&self, value: T) -> Handle<T> {
        self.ensure_table::<T>().write().insert(value)
    }

    /// Inserts `value` into the table of `T` (making the table if needed), or returns
    /// the pool's refusal.
    ///
    /// # Errors
    /// As [`Store::try_insert`].
    pub fn try_insert<T: Send + Sync + 'static>(&self, value: T) -> Result<Handle<T>, Error> {
        self.ensure_table::<T>().write().try_insert(value)
    }

    /// Runs `f` on the object `h` names, under the table's read lock.
    pub fn with<T: Send + Sync + 'static, R>(
        &self,
        h: Handle<T>,
        f: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        let table = self.table::<T>()?;
        let guard = table.read();
        guard.get(h).map(f)
    }

    /// Runs `f` on the object `h` names, mutably, under the table's write lock.
    pub fn with_mut<T: Send + Sync + 'static, R>(
        &self,
        h: Handle<T>,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let table = self.table::<T>()?;
        let mut guard = table.write();
        guard.get_mut(h).map(f)
    }

    /// Removes and returns the object `h` names; a stale handle changes nothing.
    pub fn remove<T: Send + Sync + 'static>(&self, h: Handle<T>) -> Option<T> {
        self.table::<T>()?.write().remove(h)
    }
}

// Both stores cross threads: `Store` moves to a worker or is read from many (`&Store`
// gives only `&T`), and `SharedStore` is shared behind an `Arc`.
const _: () = {
    const fn send_and_sync<S: Send + Sync>() {}
    send_and_sync::<Store>();
    send_and_sync::<SharedStore>();
};
