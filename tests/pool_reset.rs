//! `HierarchicalPool::reset`: every block ends at once, memory is kept for reuse within
//! `retain_empty`, statistics restart, and blocks that thread caches (of this thread or
//! others) held never come back.

use std::alloc::Layout;
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::mpsc;

use neurostore::{Error, HierarchicalPool, OomReason, PoolConfig};

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// One request per tier: small, medium through a thread cache, medium straight from the
/// tier, a large arena block and a mapping of its own.
fn every_tier() -> [Layout; 5] {
    [
        layout(64, 8),
        layout(3000, 16),
        layout(100 << 10, 16),
        layout(1 << 20, 4096),
        layout(48 << 20, 4096),
    ]
}

/// Allocates `n` blocks of `l` and checks that no two of them (nor any in `seen`) share
/// an address.
fn allocate_distinct(
    pool: &HierarchicalPool,
    l: Layout,
    n: usize,
    seen: &mut HashSet<usize>,
) -> Vec<NonNull<u8>> {
    (0..n)
        .map(|_| {
            let b = pool.allocate(l).unwrap().cast::<u8>();
            assert!(
                seen.insert(b.as_ptr() as usize),
                "a block of {l:?} was handed out twice: {b:?}"
            );
            b
        })
        .collect()
}

#[test]
fn reset_ends_every_block_of_every_tier_and_restarts_the_figures() {
    let mut pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let mut bytes = 0;
    for l in every_tier() {
        for _ in 0..3 {
            bytes += pool.allocate(l).unwrap().len();
        }
    }
    let before = pool.stats();
    assert_eq!(before.live_allocations, 15);
    let ended = pool.reset();
    assert_eq!((ended.count, ended.bytes), (15, bytes));
    let st = pool.stats();
    assert_eq!(
        (st.allocations, st.deallocations, st.live_allocations),
        (0, 0, 0)
    );
    assert_eq!((st.in_use_bytes, st.peak_in_use_bytes), (0, 0));
    assert!(
        st.reserved_bytes < before.reserved_bytes,
        "the huge mapping went back"
    );
    assert_eq!(pool.verify(), Ok(()));
    // The pool is usable afterwards, in every tier.
    let mut seen = HashSet::new();
    let again: Vec<_> = every_tier()
        .into_iter()
        .map(|l| (l, allocate_distinct(&pool, l, 3, &mut seen)))
        .collect();
    for (l, blocks) in again {
        for b in blocks {
            // SAFETY: allocated just above with this layout.
            unsafe { pool.deallocate(b, l) };
        }
    }
    assert_eq!(pool.stats().live_allocations, 0);
    assert_eq!(pool.verify(), Ok(()));
}

#[test]
fn reset_keeps_memory_for_the_next_round_within_retain_empty() {
    let config = PoolConfig {
        retain_empty: 1,
        ..PoolConfig::default()
    };
    let mut pool = HierarchicalPool::new(config).unwrap();
    let small = layout(64, 8);
    let before: HashSet<_> = (0..50_000)
        .map(|_| pool.allocate(small).unwrap().cast::<u8>())
        .collect();
    let chunks_before = pool.stats().small.regions;
    assert!(chunks_before > 1);
    pool.reset();
    let st = pool.stats();
    assert_eq!(st.small.regions, 1, "one empty chunk is retained");
    assert!(st.reserved_bytes > 0);
    // The next round takes its blocks from the retained chunk: memory that is mapped
    // and touched already.
    for _ in 0..100 {
        assert!(before.contains(&pool.allocate(small).unwrap().cast::<u8>()));
    }
}

#[test]
fn a_capped_pool_fills_to_the_same_count_after_every_reset() {
    let config = PoolConfig {
        total_memory: Some(24 << 20),
        ..PoolConfig::default()
    };
    let mut pool = HierarchicalPool::new(config).unwrap();
    let l = layout(1 << 20, 4096);
    let mut counts = Vec::new();
    for _ in 0..3 {
        let mut n = 0;
        loop {
            match pool.allocate(l) {
                Ok(_) => n += 1,
                Err(Error::OutOfMemory {
                    reason: OomReason::MemoryCap { .. },
                    ..
                }) => break,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(pool.reset().count, n);
        counts.push(n);
    }
    assert!(counts[0] >= 16, "{counts:?}");
    assert!(counts.iter().all(|&n| n == counts[0]), "{counts:?}");
}

#[test]
fn blocks_another_thread_cached_are_never_handed_out_again() {
    let mut pool = Arc::new(HierarchicalPool::new(PoolConfig::default()).unwrap());
    let sizes = [layout(64, 8), layout(2048, 16)];
    let (done_tx, done_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<Arc<HierarchicalPool>>();
    let worker = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            // Fill this thread's caches with free blocks of the pool, then let go of it.
            for l in sizes {
                let blocks: Vec<_> = (0..200).map(|_| pool.allocate(l).unwrap()).collect();
                for b in blocks {
                    // SAFETY: allocated above with this layout.
                    unsafe { pool.deallocate(b.cast(), l) };
                }
            }
            drop(pool);
            done_tx.send(()).unwrap();
            // After the reset: use the pool again, then exit (the old cache entry is
            // recycled without giving its blocks back).
            let pool = go_rx.recv().unwrap();
            for l in sizes {
                let b = pool.allocate(l).unwrap();
                // SAFETY: allocated above with this layout.
                unsafe { pool.deallocate(b.cast(), l) };
            }
        })
    };
    done_rx.recv().unwrap();
    let st = pool.stats();
    assert_eq!((st.allocations, st.cached_threads), (400, 1));
    Arc::get_mut(&mut pool)
        .expect("nothing else holds the pool")
        .reset();
    assert_eq!(pool.stats().cached_threads, 0);
    let mut seen = HashSet::new();
    let mine: Vec<_> = sizes
        .iter()
        .map(|&l| (l, allocate_distinct(&pool, l, 1000, &mut seen)))
        .collect();
    go_tx.send(Arc::clone(&pool)).unwrap();
    worker.join().unwrap();
    assert_eq!(pool.verify(), Ok(()));
    let st = pool.stats();
    assert_eq!((st.allocations, st.deallocations), (2002, 2));
    for (l, blocks) in mine {
        for b in blocks {
            // SAFETY: allocated above with this layout, after the reset.
            unsafe { pool.deallocate(b, l) };
        }
    }
    let st = pool.stats();
    assert_eq!((st.live_allocations, st.invalid_frees), (0, 0));
    assert_eq!(pool.verify(), Ok(()));
}

#[test]
fn in_checked_mode_a_block_freed_after_the_reset_is_refused() {
    for retain_empty in [0, 1] {
        let mut config = PoolConfig::debug();
        config.retain_empty = retain_empty;
        let mut pool = HierarchicalPool::new(config).unwrap();
        let blocks: Vec<_> = every_tier()
            .into_iter()
            .map(|l| (l, pool.allocate(l).unwrap().cast::<u8>()))
            .collect();
        assert_eq!(pool.reset().count, 5);
        for &(l, b) in &blocks {
            // SAFETY: checked mode refuses the pointer before touching the block; the
            // block ended with the reset, so nothing else uses it.
            let refused = unsafe { pool.try_deallocate(b, l) };
            assert!(
                matches!(
                    refused,
                    Err(Error::DoubleFree { .. } | Error::ForeignPointer { .. })
                ),
                "{l:?} (retain_empty {retain_empty}): {refused:?}"
            );
        }
        assert_eq!(pool.stats().invalid_frees, 5);
        assert_eq!(pool.verify(), Ok(()));
    }
}

#[test]
fn in_checked_mode_memory_kept_by_a_reset_reads_as_poison() {
    let mut config = PoolConfig::debug();
    config.retain_empty = 1;
    let mut pool = HierarchicalPool::new(config).unwrap();
    for l in [layout(64, 8), layout(3000, 16), layout(1 << 20, 4096)] {
        let b = pool.allocate(l).unwrap().cast::<u8>();
        // SAFETY: `b` is live and at least `l.size()` bytes long.
        unsafe { std::ptr::write_bytes(b.as_ptr(), 0x11, l.size()) };
        pool.reset();
        // SAFETY: with `retain_empty = 1` the block's chunk, region or arena stays mapped
        // and owned by the pool after the reset, so this reads mapped pool memory. The
        // first 16 bytes are left out: a free medium block holds the tier's links there.
        let bytes = unsafe { std::slice::from_raw_parts(b.as_ptr().add(16), l.size() - 16) };
        assert!(bytes.iter().all(|&x| x == 0xDD), "{l:?} is not poisoned");
    }
}
