//! What a caller can pass that the library must refuse with a typed error, changing
//! nothing: memory the pool will not give, hints and policies that cannot hold.

use std::sync::Arc;

use neurostore::store::{SharedStore, Store};
use neurostore::table::Table;
use neurostore::{Error, HierarchicalPool, PoolConfig};

/// A pool that refuses to reserve more than `bytes` from the OS.
fn capped_pool(bytes: usize) -> Arc<HierarchicalPool> {
    let config = PoolConfig {
        total_memory: Some(bytes),
        ..PoolConfig::default()
    };
    Arc::new(HierarchicalPool::new(config).expect("a valid config"))
}

type Row = [u64; 8];

/// Calls `insert` with 0, 1, 2, ... until it refuses: the handles it gave and its error.
fn fill_until_refused<H>(mut insert: impl FnMut(u64) -> Result<H, Error>) -> (Vec<H>, Error) {
    let mut handles = Vec::new();
    loop {
        match insert(handles.len() as u64) {
            Ok(h) => handles.push(h),
            Err(e) => return (handles, e),
        }
    }
}

#[test]
fn a_refused_table_insert_is_an_error_and_the_table_keeps_what_it_held() {
    let mut table: Table<Row> = Table::with_pool(capped_pool(1 << 20));
    let (handles, err) = fill_until_refused(|i| table.try_insert([i; 8]));
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
    assert!(!handles.is_empty());
    assert_eq!(table.len(), handles.len());
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(table.get(*h), Some(&[i as u64; 8]));
    }
    let before = table.len();
    let batch = table.try_insert_batch((0..100_000).map(|i| [i; 8]));
    assert!(matches!(batch, Err(Error::OutOfMemory { .. })));
    assert_eq!(
        table.len(),
        before,
        "a refused batch leaves no object behind"
    );
    let mut empty: Table<Row> = Table::with_pool(capped_pool(1 << 20));
    assert!(matches!(
        empty.try_reserve(1 << 20),
        Err(Error::OutOfMemory { .. })
    ));
    assert!(empty.is_empty());
    assert!(matches!(
        Table::<Row>::try_with_capacity(usize::MAX),
        Err(Error::OutOfMemory { .. } | Error::TableFull { .. })
    ));
}

#[test]
fn a_refused_store_insert_is_an_error_and_the_store_keeps_what_it_held() {
    let mut store = Store::with_pool(capped_pool(1 << 20));
    let (handles, err) = fill_until_refused(|i| store.try_insert([i; 8]));
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
    assert_eq!(store.table::<Row>().map(Table::len), Some(handles.len()));
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(
            store.get(*h),
            Some(&[i as u64; 8]),
            "intact after the refusal"
        );
    }
    // The store keeps working: what removals free, inserts take again.
    let (gone, kept) = handles.split_at(handles.len() / 2);
    for h in gone {
        assert!(store.remove(*h).is_some());
    }
    let again: Vec<_> = (0..gone.len())
        .map(|i| store.try_insert([u64::MAX - i as u64; 8]))
        .collect::<Result<_, _>>()
        .expect("room freed by removals is used again");
    for (i, h) in kept.iter().enumerate() {
        assert_eq!(store.get(*h), Some(&[(gone.len() + i) as u64; 8]));
    }
    assert!(again.iter().all(|h| store.contains(*h)) && gone.iter().all(|h| !store.contains(*h)));

    let shared = SharedStore::with_pool(capped_pool(1 << 20));
    let (made, err) = fill_until_refused(|_| shared.try_insert([7u64; 8]));
    let inserted = made.len();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
    assert_eq!(
        shared.table::<Row>().map(|t| t.read().len()),
        Some(inserted)
    );
}

#[test]
fn a_store_gc_policy_leaves_the_shared_pool_as_it_was() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use neurostore::{AlertKind, GcPolicy};

    let pool = capped_pool(64 << 20);
    pool.set_alert_threshold(AlertKind::MemoryPressure, 0.9)
        .unwrap();
    let alerts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&alerts);
    pool.on_alert(move |alert| {
        if alert.kind == AlertKind::MemoryPressure {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut store = Store::with_pool(Arc::clone(&pool));
    let policy = GcPolicy {
        trigger_ratio: 0.1,
        every_n_inserts: None,
    };
    store.set_gc_policy(Some(policy)).unwrap();
    // Half the cap: past the store's ratio, below the pool's own threshold.
    let layout = std::alloc::Layout::from_size_align(32 << 20, 4096).unwrap();
    let block = pool.allocate(layout).unwrap();
    assert_eq!(
        alerts.load(Ordering::Relaxed),
        0,
        "the pool's alert threshold is still its own"
    );
    // SAFETY: allocated above with this layout and not used since.
    unsafe { pool.deallocate(block.cast(), layout) };
    drop(store);
    assert_eq!(
        Arc::strong_count(&pool),
        1,
        "the store left nothing in the pool"
    );

    for bad in [f64::NAN, -0.5, 1.5] {
        let policy = GcPolicy {
            trigger_ratio: bad,
            every_n_inserts: None,
        };
        let mut store = Store::with_pool(Arc::clone(&pool));
        assert!(matches!(
            store.set_gc_policy(Some(policy)),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(store.gc_policy(), None, "a refused policy changes nothing");
    }
}

#[test]
fn a_defrag_policy_that_could_not_work_is_refused() {
    use neurostore::DefragPolicy;

    for bad in [f64::NAN, -0.01, 1.01, f64::INFINITY] {
        let err = DefragPolicy::new(bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    name: "threshold",
                    ..
                }
            ),
            "{err}"
        );
    }
    for good in [0.0, 0.3, 1.0] {
        assert_eq!(DefragPolicy::new(good).unwrap().threshold(), good);
    }
}

#[test]
fn alignment_hints_that_cannot_hold_are_errors() {
    use neurostore::PoolHints;
    use neurostore::pooled::{AlignHintError, hint_align};

    assert_eq!(
        hint_align::<[u8; 24]>(3),
        Err(AlignHintError::NotPowerOfTwo)
    );
    assert_eq!(
        hint_align::<[u8; 24]>(16),
        Err(AlignHintError::SizeNotMultiple)
    );
    assert_eq!(
        hint_align::<[u8; 1 << 14]>(1 << 13),
        Err(AlignHintError::TooLarge)
    );
    assert_eq!(hint_align::<[u8; 24]>(8), Ok(8));
    let bad = PoolHints {
        align: 16,
        ..PoolHints::of::<[u8; 24]>()
    };
    let err = Table::<[u8; 24]>::with_hints(neurostore::table::default_pool(), bad).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "align", .. }),
        "{err}"
    );
}

/// The buddy allocator's bookkeeping for 2^31 minimum blocks is 20 GiB: under an address
/// space limit its allocation fails, and `new` must say so instead of aborting. Run in a
/// child process, so that the limit binds only there.
#[test]
fn buddy_bookkeeping_the_system_refuses_is_an_error() {
    const CHILD: &str = "NEUROSTORE_BUDDY_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let limit = libc::rlimit {
            rlim_cur: 4 << 30,
            rlim_max: 4 << 30,
        };
        // SAFETY: setrlimit reads the struct we pass; it changes only this child process.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
        let refused = neurostore::pool::BuddyAllocator::new(1 << 40, 512).unwrap_err();
        assert!(matches!(
            refused,
            neurostore::pool::BuddyError::MetadataUnavailable { blocks, .. } if blocks == 1 << 31
        ));
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "buddy_bookkeeping_the_system_refuses_is_an_error",
        ])
        .env(CHILD, "1")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the child saw an error, not an abort: {status}"
    );
}
