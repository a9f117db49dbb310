//! [`PoolStats`] and threshold alerts.

use std::alloc::System;
use std::sync::Arc;

use allocator_api2::vec::Vec as SysVec;

use super::sync::{AtomicBool, AtomicU64, Mutex, Ordering, lock};

/// The three tiers of a [`HierarchicalPool`](crate::HierarchicalPool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Fixed-size pools with per-thread caches.
    Small,
    /// Segregated fit with coalescing.
    Medium,
    /// Buddy arenas, single mappings, and the spans that hold tables' objects and slots.
    Large,
}

/// Figures of one tier.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TierStats {
    /// Bytes this tier has mapped from the OS.
    pub reserved_bytes: usize,
    /// Bytes in blocks handed out to callers (block sizes, not requested sizes).
    pub in_use_bytes: usize,
    /// Allocations served since the pool was made or last reset.
    pub allocations: u64,
    /// Deallocations since the pool was made or last reset.
    pub deallocations: u64,
    /// Chunks (small), regions (medium) or arenas and single mappings (large) held.
    pub regions: usize,
}

/// Figures of one size class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassStats {
    /// The tier the class belongs to.
    pub tier: Tier,
    /// The class size in bytes (for the medium tier, the upper bound of the class).
    pub size: usize,
    /// Allocations served from this class.
    pub allocations: u64,
    /// Deallocations into this class.
    pub deallocations: u64,
    /// Bytes in blocks of this class handed out to callers.
    pub in_use_bytes: usize,
    /// Bytes this class has mapped (small tier only; 0 for medium classes, which share regions).
    pub reserved_bytes: usize,
    /// Chunks held (small tier only).
    pub chunks: usize,
}

/// A snapshot of a pool's figures.
///
/// `in_use_bytes` counts whole blocks as handed out (a 40-byte request in the 64-byte class
/// counts 64; a medium block counts its payload, a large one its buddy block).
/// Blocks sitting in per-thread caches are free. `fragmentation` is
/// `1 - in_use_bytes / reserved_bytes` (0 when nothing is reserved).
/// `peak_in_use_bytes` is sampled whenever blocks move between a tier and the thread
/// caches, counting cached blocks as in use, so it may exceed the true peak by at most
/// the cached blocks.
///
/// ```
/// use std::alloc::Layout;
/// use neurostore::pool::Tier;
/// use neurostore::{HierarchicalPool, PoolConfig};
///
/// let pool = HierarchicalPool::new(PoolConfig::default())?;
/// let l = Layout::from_size_align(100, 8).unwrap();
/// let block = pool.allocate(l)?;
/// let st = pool.stats();
/// assert_eq!(st.live_allocations, 1);
/// assert_eq!(st.in_use_bytes, 128); // the 128-byte class
/// let class = st.classes.iter().find(|c| c.tier == Tier::Small && c.size == 128).unwrap();
/// assert_eq!(class.allocations, 1);
/// assert!(st.reserved_bytes >= st.in_use_bytes);
/// // SAFETY: allocated above with this layout.
/// unsafe { pool.deallocate(block.cast(), l) };
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStats {
    /// Bytes mapped from the OS by all tiers.
    pub reserved_bytes: usize,
    /// Bytes in blocks handed out to callers.
    pub in_use_bytes: usize,
    /// The highest `in_use_bytes` seen (see above).
    pub peak_in_use_bytes: usize,
    /// Allocations since the pool was made or last reset.
    pub allocations: u64,
    /// Deallocations since the pool was made or last reset.
    pub deallocations: u64,
    /// Blocks handed out and not yet freed.
    pub live_allocations: u64,
    /// `1 - in_use_bytes / reserved_bytes`.
    pub fragmentation: f64,
    /// Allocations per second since the pool was made or last reset.
    pub allocation_rate: f64,
    /// Deallocations refused in checked mode (double frees, foreign pointers, layout mismatches).
    pub invalid_frees: u64,
    /// Threads with a cache for this pool.
    pub cached_threads: usize,
    /// The small tier.
    pub small: TierStats,
    /// The medium tier.
    pub medium: TierStats,
    /// The large tier.
    pub large: TierStats,
    /// Per size class, small then medium.
    pub classes: Vec<ClassStats>,
}

/// What an alert watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// `1 - in_use / reserved`, once at least [`FRAGMENTATION_MIN_RESERVED`] is reserved.
    Fragmentation,
    /// `reserved / total_memory`; only pools with a `total_memory` cap raise it.
    MemoryPressure,
}

/// An alert raised when a watched figure rises above its threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// What crossed its threshold.
    pub kind: AlertKind,
    /// The figure when it was seen.
    pub value: f64,
    /// The threshold it passed.
    pub threshold: f64,
    /// Bytes reserved at that moment.
    pub reserved_bytes: usize,
}

/// A callback registered with [`on_alert`](crate::HierarchicalPool::on_alert).
pub(crate) type AlertCallback = Arc<dyn Fn(&Alert) + Send + Sync>;

/// Fragmentation alerts are considered only once a pool reserves this much: a young
/// pool with one fresh region is nearly all free space, which is not fragmentation.
pub const FRAGMENTATION_MIN_RESERVED: usize = 16 << 20;

/// How far below its threshold a figure must fall before its alert can fire again, so
/// that a figure hovering at the threshold raises one alert, not a stream of them.
pub const REARM_MARGIN: f64 = 0.05;

/// Thresholds, edge-trigger state and callbacks. An alert fires once when its figure
/// rises above the threshold and re-arms when the figure falls [`REARM_MARGIN`] below it.
pub(crate) struct Alerts {
    thresholds: [AtomicU64; 2],
    armed: [AtomicBool; 2],
    pub any: AtomicBool,
    callbacks: Mutex<SysVec<AlertCallback, System>>,
}

fn slot(kind: AlertKind) -> usize {
    match kind {
        AlertKind::Fragmentation => 0,
        AlertKind::MemoryPressure => 1,
    }
}

impl Alerts {
    pub(crate) fn new() -> Self {
        Alerts {
            thresholds: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            armed: [AtomicBool::new(true), AtomicBool::new(true)],
            any: AtomicBool::new(false),
            callbacks: Mutex::new(SysVec::new_in(System)),
        }
    }

    pub(crate) fn set_threshold(&self, kind: AlertKind, threshold: f64) {
        self.thresholds[slot(kind)].store(threshold.to_bits(), Ordering::Relaxed);
        self.armed[slot(kind)].store(true, Ordering::Relaxed);
        self.any.store(true, Ordering::Relaxed);
    }

    pub(crate) fn add_callback(&self, cb: AlertCallback) {
        lock(&self.callbacks).push(cb);
    }

    /// Looks at both figures and runs the callbacks of any alert that fires. Must be
    /// called with no pool lock held.
    pub(crate) fn check(&self, reserved: usize, approx_in_use: usize, limit: Option<usize>) {
        let figures = [
            (reserved >= FRAGMENTATION_MIN_RESERVED)
                .then(|| 1.0 - approx_in_use as f64 / reserved as f64),
            limit.map(|l| reserved as f64 / l as f64),
        ];
        for (i, kind) in [AlertKind::Fragmentation, AlertKind::MemoryPressure]
            .into_iter()
            .enumerate()
        {
            let bits = self.thresholds[i].load(Ordering::Relaxed);
            let Some(value) = figures[i] else { continue };
            if bits == u64::MAX {
                continue;
            }
            let threshold = f64::from_bits(bits);
            if value > threshold {
                if self.armed[i].swap(false, Ordering::Relaxed) {
                    self.fire(&Alert {
                        kind,
                        value,
                        threshold,
                        reserved_bytes: reserved,
                    });
                }
            } else if value <= threshold - REARM_MARGIN && !self.armed[i].load(Ordering::Relaxed) {
                self.armed[i].store(true, Ordering::Relaxed);
            }
        }
    }

    fn fire(&self, alert: &Alert) {
        // Copy the callbacks out so that they run outside the lock (a callback may
        // register another, or allocate from this very pool).
        let snapshot: SysVec<AlertCallback, System> = {
            let cbs = lock(&self.callbacks);
            let mut v = SysVec::with_capacity_in(cbs.len(), System);
            v.extend(cbs.iter().cloned());
            v
        };
        for cb in snapshot.iter() {
            cb(alert);
        }
    }
}
