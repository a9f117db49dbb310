//! The pool's tiers through the public API: routing, alignment, splitting and
//! coalescing, arenas, checked mode, limits, stats and alerts.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use neurostore::pool::{Tier, TierStats};
use neurostore::{AlertKind, Error, HierarchicalPool, OomReason, PoolConfig, PoolRegistry};

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Allocates, checks alignment and length, and fills the block with `tag`.
fn alloc_filled(pool: &HierarchicalPool, l: Layout, tag: u8) -> NonNull<[u8]> {
    let b = pool.allocate(l).unwrap();
    assert!(b.len() >= l.size());
    assert_eq!(
        b.cast::<u8>().as_ptr() as usize % l.align(),
        0,
        "{l:?} misaligned"
    );
    // SAFETY: the block is ours and `b.len()` bytes long.
    unsafe { std::ptr::write_bytes(b.cast::<u8>().as_ptr(), tag, b.len()) };
    b
}

fn all_bytes(b: NonNull<[u8]>, tag: u8) -> bool {
    // SAFETY: the block is live and `b.len()` bytes long.
    unsafe { std::slice::from_raw_parts(b.cast::<u8>().as_ptr(), b.len()) }
        .iter()
        .all(|&x| x == tag)
}

fn no_retention() -> PoolConfig {
    PoolConfig {
        retain_empty: 0,
        ..PoolConfig::default()
    }
}

#[test]
fn pool_is_send_and_sync() {
    fn both<T: Send + Sync>() {}
    both::<HierarchicalPool>();
    both::<PoolRegistry>();
}

#[test]
fn every_small_size_gets_the_smallest_fitting_class() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let classes = [8, 16, 32, 64, 128, 256];
    let mut blocks = Vec::new();
    for size in 1..=256 {
        let l = layout(size, 1);
        let b = alloc_filled(&pool, l, size as u8);
        let want = *classes.iter().find(|&&c| c >= size).unwrap();
        assert_eq!(b.len(), want, "size {size}");
        blocks.push((b, l));
    }
    let st = pool.stats();
    assert_eq!(st.small.allocations, 256);
    assert_eq!(st.live_allocations, 256);
    assert_eq!(
        st.in_use_bytes,
        blocks.iter().map(|(b, _)| b.len()).sum::<usize>()
    );
    for (i, (b, l)) in blocks.into_iter().enumerate() {
        assert!(all_bytes(b, (i + 1) as u8), "block {i} was overwritten");
        // SAFETY: allocated above with `l`.
        unsafe { pool.deallocate(b.cast(), l) };
    }
    let st = pool.stats();
    assert_eq!(st.live_allocations, 0);
    assert_eq!(st.in_use_bytes, 0);
}

#[test]
fn routing_by_size_and_alignment() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let cases: &[(usize, usize, Tier)] = &[
        (48, 64, Tier::Small),
        (24, 16, Tier::Small),
        (100, 512, Tier::Medium),
        (300, 8, Tier::Medium),
        (65536, 8, Tier::Medium),
        (65537, 8, Tier::Large),
        (10, 1 << 16, Tier::Large),
        (3 << 20, 8, Tier::Large),
    ];
    for &(size, align, tier) in cases {
        let before = pool.stats();
        let l = layout(size, align);
        let b = alloc_filled(&pool, l, 0xAB);
        let after = pool.stats();
        let tier_of = |s: &neurostore::PoolStats| -> TierStats {
            match tier {
                Tier::Small => s.small.clone(),
                Tier::Medium => s.medium.clone(),
                Tier::Large => s.large.clone(),
            }
        };
        assert_eq!(
            tier_of(&after).allocations,
            tier_of(&before).allocations + 1,
            "{size}/{align} -> {tier:?}"
        );
        // SAFETY: allocated above with `l`.
        unsafe { pool.deallocate(b.cast(), l) };
    }
    assert_eq!(pool.stats().live_allocations, 0);
}

#[test]
fn zero_sized_layouts_take_no_memory() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let l = layout(0, 64);
    let b = pool.allocate(l).unwrap();
    assert_eq!(b.len(), 0);
    assert_eq!(b.cast::<u8>().as_ptr() as usize % 64, 0);
    // SAFETY: a zero-sized block from this pool.
    unsafe { pool.deallocate(b.cast(), l) };
    assert_eq!(pool.stats().reserved_bytes, 0);
    assert_eq!(pool.stats().allocations, 0);
}

#[test]
fn medium_blocks_split_coalesce_and_regions_go_back() {
    let pool = HierarchicalPool::new(no_retention()).unwrap();
    let mut blocks = Vec::new();
    // Many sizes so that splitting leaves odd remainders, more than one region's worth.
    for i in 0..2000usize {
        let l = layout(300 + (i * 7919) % 20000, 16);
        blocks.push((alloc_filled(&pool, l, i as u8), l, i as u8));
    }
    let st = pool.stats();
    assert!(
        st.medium.regions >= 2,
        "expected several regions, got {}",
        st.medium.regions
    );
    // Free every other block, then the rest: every free coalesces with its neighbours.
    for pass in 0..2 {
        for (i, &(b, l, tag)) in blocks.iter().enumerate() {
            if i % 2 == pass {
                assert!(all_bytes(b, tag), "block {i} was overwritten");
                // SAFETY: allocated above with `l`, freed once.
                unsafe { pool.deallocate(b.cast(), l) };
            }
        }
    }
    let st = pool.stats();
    assert_eq!(st.medium.in_use_bytes, 0);
    assert!(
        st.medium.regions > 0,
        "this thread's medium cache still holds freed blocks"
    );
    pool.flush_thread_cache();
    let st = pool.stats();
    assert_eq!(
        st.medium.regions, 0,
        "fully coalesced regions go back to the OS"
    );
    assert_eq!(st.medium.reserved_bytes, 0);
}

#[test]
fn medium_thread_cache_hands_back_freed_blocks_and_counts_them_exactly() {
    let pool = HierarchicalPool::new(no_retention()).unwrap();
    let l = layout(3000, 8);
    let a = alloc_filled(&pool, l, 1);
    // Rounded up to the cache class (8 per doubling): 3072 B, at most 12.5 % more.
    assert_eq!(a.len(), 3072);
    let st = pool.stats();
    assert_eq!((st.medium.in_use_bytes, st.medium.allocations), (3072, 1));
    // SAFETY: allocated above with `l`, freed once.
    unsafe { pool.deallocate(a.cast(), l) };
    let st = pool.stats();
    assert_eq!(
        (st.medium.in_use_bytes, st.medium.deallocations),
        (0, 1),
        "a cached block is not in use"
    );
    assert!(st.medium.reserved_bytes > 0, "the cache keeps its region");
    // Any length between the request and the block's may be passed back: 3001..=3072
    // all name the same class, so the same block comes back.
    let l2 = layout(3001, 8);
    let b = alloc_filled(&pool, l2, 2);
    assert_eq!(b.cast::<u8>(), a.cast::<u8>(), "the cached block is reused");
    // SAFETY: allocated above; freed with its full length, which the contract allows.
    unsafe { pool.deallocate(b.cast(), layout(b.len(), 8)) };
    assert_eq!(pool.stats().medium.in_use_bytes, 0);
    pool.verify().unwrap();
    assert_eq!(pool.stats().medium.regions, 1);
    assert!(pool.trim() > 0, "trim gives back this thread's cache first");
    assert_eq!(pool.stats().medium.reserved_bytes, 0);
    pool.verify().unwrap();
}

#[test]
fn medium_cache_classes_fit_every_size_closely() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let mut last_len = 0;
    for size in 257..=65536usize {
        let l = layout(size, 16);
        let b = pool.allocate(l).unwrap();
        assert!(b.len() >= size, "size {size}");
        assert!(
            b.len() * 8 <= size * 9 + 8 * 16,
            "size {size}: a block of {} wastes more than 1/8",
            b.len()
        );
        assert!(b.len() >= last_len, "classes grow with the size");
        last_len = b.len();
        // SAFETY: allocated above; any length from `size` to `b.len()` may be passed.
        unsafe { pool.deallocate(b.cast(), layout(size + (b.len() - size) / 2, 16)) };
    }
    let st = pool.stats();
    assert_eq!((st.in_use_bytes, st.live_allocations), (0, 0));
    pool.verify().unwrap();
}

#[test]
fn medium_requests_keep_their_exact_size_with_the_cache_off() {
    let mut config = no_retention();
    config.medium.thread_cache_bytes = 0;
    let pool = HierarchicalPool::new(config).unwrap();
    let l = layout(3000, 8);
    let a = alloc_filled(&pool, l, 1);
    assert!(a.len() < 3000 + 32, "exact fit, got {}", a.len());
    // SAFETY: allocated above with `l`, freed once.
    unsafe { pool.deallocate(a.cast(), l) };
    let st = pool.stats();
    assert_eq!((st.medium.in_use_bytes, st.medium.regions), (0, 0));
}

#[test]
fn medium_blocks_freed_on_other_threads_go_back_when_the_threads_end() {
    let pool = Arc::new(HierarchicalPool::new(no_retention()).unwrap());
    let sizes = [300usize, 1000, 5000, 20000, 65536];
    let blocks: Vec<(usize, usize)> = (0..500)
        .map(|i| {
            let l = layout(sizes[i % sizes.len()], 8);
            (
                alloc_filled(&pool, l, i as u8).cast::<u8>().as_ptr() as usize,
                i,
            )
        })
        .collect();
    let in_use = pool.stats().medium.in_use_bytes;
    assert!(in_use > 0);
    let workers: Vec<_> = blocks
        .chunks(125)
        .map(|part| {
            let (pool, part) = (pool.clone(), part.to_vec());
            std::thread::spawn(move || {
                for (addr, i) in part {
                    let l = layout(sizes[i % sizes.len()], 8);
                    let p = NonNull::new(addr as *mut u8).unwrap();
                    // SAFETY: allocated on the main thread with `l`, freed once here.
                    unsafe { pool.deallocate(p, l) };
                }
                // Blocks this thread keeps are returned when it exits.
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let st = pool.stats();
    assert_eq!((st.medium.in_use_bytes, st.live_allocations), (0, 0));
    assert_eq!(st.medium.allocations, 500);
    assert_eq!(st.medium.deallocations, 500);
    pool.verify().unwrap();
    pool.trim();
    assert_eq!(
        pool.stats().medium.reserved_bytes,
        0,
        "every block came home"
    );
}

#[test]
fn a_request_the_cap_refuses_succeeds_once_the_thread_cache_gives_its_blocks_back() {
    // One 192 KiB region is all the cap allows; every cache class is 4 deep.
    let mut config = PoolConfig::default();
    config.medium.thread_cache_bytes = 1;
    config.medium.region_size = 192 << 10;
    config.total_memory = Some(192 << 10);
    let pool = HierarchicalPool::new(config).unwrap();
    let l = layout(16 << 10, 8);
    let mut blocks: Vec<_> = (0..11).map(|i| alloc_filled(&pool, l, i)).collect();
    blocks.sort_by_key(|b| b.cast::<u8>().as_ptr() as usize);
    assert!(
        matches!(
            pool.allocate(l),
            Err(Error::OutOfMemory {
                reason: OomReason::MemoryCap { .. },
                ..
            })
        ),
        "the region is full"
    );
    // Freed in this order (of addresses), a cache 4 deep keeps blocks 2, 5 and 8, so the tier's free
    // runs are at most 48 KiB long: a 64 KiB block fits only if those come back.
    for i in [0, 1, 3, 4, 6, 7, 9, 10, 2, 5, 8] {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { pool.deallocate(blocks[i].cast(), l) };
    }
    assert_eq!(pool.stats().in_use_bytes, 0);
    let big = layout(64 << 10, 8);
    let b = alloc_filled(&pool, big, 9);
    assert_eq!(pool.stats().medium.regions, 1);
    // SAFETY: allocated above with `big`, freed once.
    unsafe { pool.deallocate(b.cast(), big) };
    pool.verify().unwrap();
}

#[test]
fn medium_alignment_up_to_a_page() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let mut blocks = Vec::new();
    for (i, align) in [32, 64, 256, 1024, 4096]
        .into_iter()
        .cycle()
        .take(200)
        .enumerate()
    {
        let l = layout(257 + i * 13, align);
        blocks.push((alloc_filled(&pool, l, i as u8), l, i as u8));
    }
    for (b, l, tag) in blocks {
        assert!(all_bytes(b, tag));
        // SAFETY: allocated above with `l`.
        unsafe { pool.deallocate(b.cast(), l) };
    }
    assert_eq!(pool.stats().medium.in_use_bytes, 0);
}

#[test]
fn large_blocks_use_buddy_arenas_and_huge_mappings() {
    let mut c = no_retention();
    c.large.max_size = 16 << 20;
    let pool = HierarchicalPool::new(c).unwrap();
    let sizes = [
        65537,
        100_000,
        1 << 20,
        3 << 20,
        16 << 20,
        (16 << 20) + 1,
        40 << 20,
    ];
    let mut blocks = Vec::new();
    for (i, &s) in sizes.iter().enumerate() {
        let l = layout(s, 4096);
        let b = alloc_filled(&pool, l, i as u8);
        assert!(
            b.len().is_power_of_two() || s > 16 << 20,
            "buddy blocks are powers of two"
        );
        blocks.push((b, l, i as u8));
    }
    let st = pool.stats();
    assert_eq!(st.large.allocations, sizes.len() as u64);
    assert_eq!(
        st.large.in_use_bytes,
        blocks.iter().map(|(b, _, _)| b.len()).sum::<usize>()
    );
    for (b, l, tag) in blocks {
        assert!(all_bytes(b, tag));
        // SAFETY: allocated above with `l`.
        unsafe { pool.deallocate(b.cast(), l) };
    }
    let st = pool.stats();
    assert_eq!(st.large.in_use_bytes, 0);
    assert_eq!(
        st.large.reserved_bytes, 0,
        "empty arenas and huge mappings go back"
    );
}

#[test]
fn large_alignment_beyond_a_page() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    for align in [1 << 13, 1 << 16, 1 << 21] {
        let l = layout(1000, align);
        let b = alloc_filled(&pool, l, 1);
        // SAFETY: allocated above with `l`.
        unsafe { pool.deallocate(b.cast(), l) };
    }
}

#[test]
fn checked_mode_reports_bad_frees_and_changes_nothing() {
    let pool = HierarchicalPool::new(PoolConfig::debug()).unwrap();
    let other = HierarchicalPool::new(PoolConfig::debug()).unwrap();
    for &(size, align) in &[(40, 8), (3000, 16), (1 << 20, 4096)] {
        let l = layout(size, align);
        let keep = pool.allocate(l).unwrap(); // keeps the chunk/region/arena mapped
        let b = pool.allocate(l).unwrap().cast::<u8>();
        let addr = b.as_ptr() as usize;
        // SAFETY: the pool is in checked mode, so any pointer may be passed to the calls
        // below; `b` is freed exactly once successfully.
        unsafe {
            pool.try_deallocate(b, l).unwrap();
            assert!(
                matches!(pool.try_deallocate(b, l), Err(Error::DoubleFree { address }) if address == addr),
                "double free of {size}"
            );
            let inner = NonNull::new(b.as_ptr().wrapping_add(8)).unwrap();
            assert!(matches!(
                pool.try_deallocate(inner, l),
                Err(Error::ForeignPointer { .. } | Error::DoubleFree { .. })
            ));
            let theirs = other.allocate(l).unwrap().cast::<u8>();
            assert!(matches!(
                pool.try_deallocate(theirs, l),
                Err(Error::ForeignPointer { .. })
            ));
            other.deallocate(theirs, l);
            let mut local = 0u64;
            let stack = NonNull::from(&mut local).cast::<u8>();
            assert!(matches!(
                pool.try_deallocate(stack, l),
                Err(Error::ForeignPointer { .. })
            ));
            // The refused frees changed nothing: the live block is intact and freeable.
            assert_eq!(pool.stats().live_allocations, 1);
            pool.try_deallocate(keep.cast(), l).unwrap();
        }
    }
    let st = pool.stats();
    assert_eq!(st.live_allocations, 0);
    assert!(st.invalid_frees >= 12);
}

#[test]
fn checked_mode_catches_layout_mismatch_and_poisons() {
    let pool = HierarchicalPool::new(PoolConfig::debug()).unwrap();
    let l = layout(64, 8);
    let keep = pool.allocate(l).unwrap();
    let b = pool.allocate(l).unwrap().cast::<u8>();
    // SAFETY: checked mode; `b` is live until the successful free below, and its chunk
    // stays mapped because `keep` lives in it, so reading it after the free is reading
    // pool-owned, mapped memory.
    unsafe {
        std::ptr::write_bytes(b.as_ptr(), 0x11, 64);
        assert!(matches!(
            pool.try_deallocate(b, layout(16, 8)),
            Err(Error::LayoutMismatch { .. })
        ));
        pool.try_deallocate(b, l).unwrap();
        let bytes = std::slice::from_raw_parts(b.as_ptr().add(8), 56);
        assert!(bytes.iter().all(|&x| x == 0xDD), "freed memory is poisoned");
        pool.deallocate(keep.cast(), l);
    }
}

#[test]
fn unchecked_try_deallocate_still_catches_foreign_pointers() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let l = layout(32, 8);
    let b = pool.allocate(l).unwrap();
    let mut local = [0u8; 32];
    // SAFETY: the stack pointer is refused before anything is touched; `b` is ours.
    unsafe {
        let stack = NonNull::new(local.as_mut_ptr()).unwrap();
        assert!(matches!(
            pool.try_deallocate(stack, l),
            Err(Error::ForeignPointer { .. })
        ));
        assert!(matches!(
            pool.try_deallocate(b.cast(), layout(8, 8)),
            Err(Error::LayoutMismatch { .. })
        ));
        pool.try_deallocate(b.cast(), l).unwrap();
    }
}

#[test]
fn leaks_are_counted() {
    let pool = HierarchicalPool::new(PoolConfig::debug()).unwrap();
    let _a = pool.allocate(layout(10, 1)).unwrap();
    let _b = pool.allocate(layout(5000, 8)).unwrap();
    let leaks = pool.leaks();
    assert_eq!(leaks.count, 2);
    assert!(leaks.bytes >= 5000 + 16);
    // Dropping the pool reports them on stderr and unmaps everything.
}

#[test]
fn memory_cap_and_chunk_limit_are_errors_not_aborts() {
    let c = PoolConfig {
        total_memory: Some(8 << 20),
        ..PoolConfig::default()
    };
    let pool = HierarchicalPool::new(c).unwrap();
    let big = layout(16 << 20, 4096);
    match pool.allocate(big) {
        Err(Error::OutOfMemory {
            requested,
            reason: OomReason::MemoryCap { limit, .. },
            ..
        }) => {
            assert_eq!(requested, 16 << 20);
            assert_eq!(limit, 8 << 20);
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert_eq!(
        pool.stats().reserved_bytes,
        0,
        "a refused request reserves nothing"
    );

    let mut c = PoolConfig::default();
    c.small.max_chunks = 1;
    c.small.blocks_per_chunk = 16;
    let pool = HierarchicalPool::new(c).unwrap();
    let l = layout(256, 8);
    let per_chunk = (64 << 10) / 256;
    let mut blocks = Vec::new();
    let err = loop {
        match pool.allocate(l) {
            Ok(b) => blocks.push(b),
            Err(e) => break e,
        }
        assert!(blocks.len() <= per_chunk);
    };
    assert_eq!(blocks.len(), per_chunk);
    assert!(matches!(
        err,
        Error::OutOfMemory {
            reason: OomReason::ChunkLimit { max_chunks: 1, .. },
            ..
        }
    ));
    for b in blocks {
        // SAFETY: allocated above with `l`.
        unsafe { pool.deallocate(b.cast(), l) };
    }
}

#[test]
fn reallocate_keeps_contents_and_grows_in_place_within_a_class() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let l = layout(20, 8);
    let b = alloc_filled(&pool, l, 7);
    // SAFETY: `b` is live with layout `l`; each step frees only through reallocate.
    unsafe {
        let same = pool.reallocate(b.cast(), l, 32).unwrap();
        assert_eq!(
            same.cast::<u8>(),
            b.cast::<u8>(),
            "20 -> 32 stays in the 32-byte class"
        );
        let mut cur = same;
        let mut cur_l = layout(32, 8);
        for new_size in [100, 3000, 70_000, 5 << 20, 64, 8] {
            let next = pool.reallocate(cur.cast(), cur_l, new_size).unwrap();
            let keep = cur_l.size().min(new_size).min(20);
            let bytes = std::slice::from_raw_parts(next.cast::<u8>().as_ptr(), keep);
            assert!(
                bytes.iter().all(|&x| x == 7),
                "contents survive {} -> {new_size}",
                cur_l.size()
            );
            cur = next;
            cur_l = layout(new_size, 8);
        }
        pool.deallocate(cur.cast(), cur_l);
        // A medium block stays in place within its cache class (2900 and 3000 both
        // round to 3072 B) and moves when the class changes.
        let m = pool.allocate(layout(2900, 8)).unwrap();
        let grown = pool.reallocate(m.cast(), layout(2900, 8), 3000).unwrap();
        assert_eq!(grown.cast::<u8>(), m.cast::<u8>());
        assert_eq!(grown.len(), 3072);
        let moved = pool
            .reallocate(grown.cast(), layout(3000, 8), 3500)
            .unwrap();
        assert_ne!(moved.cast::<u8>(), m.cast::<u8>());
        pool.deallocate(moved.cast(), layout(3500, 8));
    }
    assert_eq!(pool.stats().live_allocations, 0);
}

#[test]
fn stats_per_class_and_fragmentation() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let l = layout(64, 8);
    let blocks: Vec<_> = (0..1000).map(|_| pool.allocate(l).unwrap()).collect();
    let st = pool.stats();
    let c64 = st
        .classes
        .iter()
        .find(|c| c.tier == Tier::Small && c.size == 64)
        .unwrap();
    assert_eq!(c64.allocations, 1000);
    assert_eq!(c64.in_use_bytes, 64_000);
    assert_eq!(c64.chunks, 1);
    assert_eq!(st.reserved_bytes, 64 << 10);
    assert!((st.fragmentation - (1.0 - 64_000.0 / 65_536.0)).abs() < 1e-9);
    assert!(st.peak_in_use_bytes >= 64_000);
    assert!(st.allocation_rate > 0.0);
    for b in blocks {
        // SAFETY: allocated above with `l`.
        unsafe { pool.deallocate(b.cast(), l) };
    }
    let st = pool.stats();
    assert_eq!(st.in_use_bytes, 0);
    assert!(st.peak_in_use_bytes >= 64_000);
}

#[test]
fn fragmentation_alert_fires_once_per_crossing() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    // Fill about five 4 MiB medium regions, so that fragmentation is low.
    let l = layout(4000, 16);
    let blocks: Vec<_> = (0..5000).map(|_| pool.allocate(l).unwrap()).collect();
    assert!(pool.stats().fragmentation < 0.1);
    pool.set_alert_threshold(AlertKind::Fragmentation, 0.5)
        .unwrap();
    assert!(
        pool.set_alert_threshold(AlertKind::Fragmentation, 1.5)
            .is_err()
    );
    let fired = Arc::new(AtomicUsize::new(0));
    let f = fired.clone();
    pool.on_alert(move |a| {
        assert_eq!(a.kind, AlertKind::Fragmentation);
        assert!(a.value > a.threshold);
        f.fetch_add(1, Ordering::Relaxed);
    });
    // Free 3 of every 4: the region stays mapped while three quarters of it are holes.
    assert_eq!(fired.load(Ordering::Relaxed), 0);
    for (i, b) in blocks.iter().enumerate() {
        if i % 4 != 0 {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { pool.deallocate(b.cast(), l) };
        }
    }
    assert_eq!(
        fired.load(Ordering::Relaxed),
        1,
        "fires once, not on every free"
    );
    for (i, b) in blocks.iter().enumerate() {
        if i % 4 == 0 {
            // SAFETY: as above.
            unsafe { pool.deallocate(b.cast(), l) };
        }
    }
}

#[test]
fn allocator_api2_collections_live_in_the_pool() {
    use allocator_api2::boxed::Box;
    use allocator_api2::vec::Vec;
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    {
        let mut v: Vec<u64, &HierarchicalPool> = Vec::new_in(&pool);
        for i in 0..100_000u64 {
            v.push(i);
        }
        assert_eq!(v.iter().sum::<u64>(), 100_000 * 99_999 / 2);
        let b = Box::new_in([1.5f32; 8], &pool);
        assert_eq!(b.iter().sum::<f32>(), 12.0);
        assert_eq!(pool.stats().live_allocations, 2);
    }
    assert_eq!(pool.stats().live_allocations, 0);
}

#[test]
fn registry_names_pools() {
    let r = PoolRegistry::global();
    let a = r.create("tiers-test", PoolConfig::default()).unwrap();
    assert!(matches!(
        r.create("tiers-test", PoolConfig::default()),
        Err(Error::PoolExists { .. })
    ));
    let b = r.get_or_create("tiers-test", PoolConfig::debug).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(r.names().contains(&"tiers-test".to_string()));
    let mut bad = PoolConfig::default();
    bad.large.min_size = 3;
    assert!(matches!(r.create("tiers-bad", bad), Err(Error::Config(_))));
    assert!(r.get("tiers-bad").is_none());
    assert!(r.remove("tiers-test").is_some());
    assert!(r.get("tiers-test").is_none());
}

#[test]
fn a_freed_small_block_comes_back_first_and_a_flush_returns_every_cached_one() {
    let pool = HierarchicalPool::new(no_retention()).unwrap();
    let l = layout(64, 8);
    let a = alloc_filled(&pool, l, 1);
    let b = alloc_filled(&pool, l, 2);
    // SAFETY: allocated above with `l`, freed once.
    unsafe { pool.deallocate(a.cast(), l) };
    let c = alloc_filled(&pool, l, 3);
    assert_eq!(
        c.cast::<u8>(),
        a.cast::<u8>(),
        "the last block freed is reused first"
    );
    // SAFETY: allocated above with `l`, each freed once.
    unsafe {
        pool.deallocate(b.cast(), l);
        pool.deallocate(c.cast(), l);
    }
    let st = pool.stats();
    assert_eq!((st.small.in_use_bytes, st.small.regions), (0, 1));
    pool.flush_thread_cache();
    assert_eq!(
        pool.stats().small.regions,
        0,
        "every cached block, the one in front of the stack too, went back"
    );
}

#[test]
fn empty_small_chunks_are_given_back_and_reused() {
    let pool = HierarchicalPool::new(PoolConfig {
        retain_empty: 1,
        ..PoolConfig::default()
    })
    .unwrap();
    let l = layout(128, 8);
    for round in 0..3u8 {
        let blocks: Vec<_> = (0..5000).map(|_| alloc_filled(&pool, l, round)).collect();
        let chunks = pool.stats().small.regions;
        // A chunk holds blocks_per_chunk (1024) blocks: 128 KiB for this class.
        assert_eq!(chunks, 5, "5000 x 128 B span five chunks");
        for b in blocks {
            assert!(all_bytes(b, round));
            // SAFETY: allocated above with `l`.
            unsafe { pool.deallocate(b.cast(), l) };
        }
        pool.flush_thread_cache();
        let st = pool.stats();
        assert_eq!(
            st.small.regions, 1,
            "round {round}: all but retain_empty chunks given back"
        );
        assert_eq!(st.small.reserved_bytes, 128 << 10);
        assert_eq!(st.reserved_bytes, st.small.reserved_bytes);
    }
}

#[test]
fn absurd_layouts_are_errors_that_change_nothing() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    for (size, align) in [
        (isize::MAX as usize - 4095, 4096),
        (1 << 62, 8),
        (1 << 47, 1 << 20),
    ] {
        let l = layout(size, align);
        match pool.allocate(l) {
            Err(Error::OutOfMemory { requested, .. }) => assert_eq!(requested, size),
            other => panic!("{size} bytes: expected OutOfMemory, got {other:?}"),
        }
    }
    let st = pool.stats();
    assert_eq!(st.reserved_bytes, 0);
    assert_eq!(st.allocations, 0);
    pool.verify().unwrap();
}
