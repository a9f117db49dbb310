//! `HierarchicalPool::allocate_with`: zeroed blocks in every tier (also where memory is
//! reused), blocks that bypass the thread cache, huge pages under large blocks, and the
//! combinations that are refused.

use std::alloc::Layout;
use std::ptr::NonNull;

use neurostore::{AllocFlags, Error, HierarchicalPool, PoolConfig};

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Small, medium through a cache class, medium at its exact size, a large arena block.
fn every_tier() -> [Layout; 4] {
    [
        layout(48, 8),
        layout(3000, 16),
        layout(100 << 10, 16),
        layout(1 << 20, 4096),
    ]
}

fn bytes(b: NonNull<[u8]>) -> &'static [u8] {
    // SAFETY: the tests read blocks they hold, `b.len()` bytes long.
    unsafe { std::slice::from_raw_parts(b.cast::<u8>().as_ptr(), b.len()) }
}

#[test]
fn zeroed_blocks_read_as_zeros_even_where_memory_is_reused() {
    // Checked mode, but keeping empty memory, so that it is reused (and poisoned).
    let checked = PoolConfig {
        retain_empty: 2,
        ..PoolConfig::debug()
    };
    for config in [PoolConfig::default(), checked] {
        let pool = HierarchicalPool::new(config).unwrap();
        for l in every_tier() {
            for flags in [
                AllocFlags::ZEROED,
                AllocFlags::ZEROED | AllocFlags::BYPASS_THREAD_CACHE,
            ] {
                // Dirty the memory the next blocks will come from, then ask for zeros.
                let dirty: Vec<_> = (0..20).map(|_| pool.allocate(l).unwrap()).collect();
                for &b in &dirty {
                    // SAFETY: each block is ours and `b.len()` bytes long.
                    unsafe { std::ptr::write_bytes(b.cast::<u8>().as_ptr(), 0xAB, b.len()) };
                }
                let was_dirty: Vec<_> = dirty.iter().map(|b| b.cast::<u8>()).collect();
                for b in dirty {
                    // SAFETY: allocated above with this layout.
                    unsafe { pool.deallocate(b.cast(), l) };
                }
                // Back to the shared tier too, where a bypassing request looks.
                pool.flush_thread_cache();
                let zeroed: Vec<_> = (0..20)
                    .map(|_| pool.allocate_with(l, flags).unwrap())
                    .collect();
                assert!(
                    zeroed.iter().any(|b| was_dirty.contains(&b.cast::<u8>())),
                    "{l:?}: the dirty memory was not reused, so the test proves nothing"
                );
                for &b in &zeroed {
                    assert!(b.len() >= l.size());
                    assert!(bytes(b).iter().all(|&x| x == 0), "{l:?} {flags:?}");
                }
                for b in zeroed {
                    // SAFETY: allocated above with this layout.
                    unsafe { pool.deallocate(b.cast(), l) };
                }
            }
        }
        assert_eq!(pool.stats().live_allocations, 0);
        assert_eq!(pool.verify(), Ok(()));
    }
}

#[test]
fn a_fresh_large_block_is_zero_without_being_written() {
    // The untouched part of an arena is what the OS mapped: zeros. Mapped pages that were
    // never written are not resident; a zeroed allocation must not make them resident.
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let l = layout(16 << 20, 4096);
    let b = pool.allocate_with(l, AllocFlags::ZEROED).unwrap();
    #[cfg(target_os = "linux")]
    {
        let start = b.cast::<u8>().as_ptr() as usize;
        let resident = resident_kib_over(start, start + b.len());
        assert!(resident < 4096, "{resident} KiB of the block were written");
    }
    assert!(bytes(b).iter().all(|&x| x == 0));
    // SAFETY: allocated above with this layout.
    unsafe { pool.deallocate(b.cast(), l) };
}

#[test]
fn bypassing_the_thread_cache_takes_blocks_from_the_shared_tier() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let small = layout(64, 8);
    let medium = layout(2000, 16);
    let blocks: Vec<_> = [small, medium]
        .into_iter()
        .map(|l| {
            (
                l,
                pool.allocate_with(l, AllocFlags::BYPASS_THREAD_CACHE)
                    .unwrap(),
            )
        })
        .collect();
    let st = pool.stats();
    assert_eq!(st.cached_threads, 0, "no thread cache was made");
    assert_eq!(st.live_allocations, 2);
    // A cacheable medium request still gets its cache class's length.
    let cached = pool.allocate(medium).unwrap();
    assert_eq!(blocks[1].1.len(), cached.len());
    // Freed the ordinary way, through the cache.
    for (l, b) in blocks {
        // SAFETY: allocated above with this layout.
        unsafe { pool.deallocate(b.cast(), l) };
    }
    // SAFETY: allocated above with this layout.
    unsafe { pool.deallocate(cached.cast(), medium) };
    pool.flush_thread_cache();
    let st = pool.stats();
    assert_eq!((st.live_allocations, st.in_use_bytes), (0, 0));
    assert_eq!(pool.verify(), Ok(()));
}

#[test]
fn huge_pages_are_refused_below_the_large_tier_and_nothing_is_allocated() {
    let pool = HierarchicalPool::new(PoolConfig::default()).unwrap();
    for l in [
        layout(0, 1),
        layout(64, 8),
        layout(3000, 16),
        layout(40 << 10, 16),
    ] {
        let refused = pool.allocate_with(l, AllocFlags::HUGE_PAGES | AllocFlags::ZEROED);
        assert!(
            matches!(refused, Err(Error::InvalidArgument { name: "flags", ref message }) if message.contains("HUGE_PAGES")),
            "{l:?}: {refused:?}"
        );
    }
    let st = pool.stats();
    assert_eq!((st.allocations, st.reserved_bytes), (0, 0));
}

#[cfg(target_os = "linux")]
#[test]
fn huge_pages_are_asked_for_over_large_blocks_and_single_mappings() {
    let config = PoolConfig {
        large: neurostore::pool::LargeConfig {
            max_size: 4 << 20,
            ..PoolConfig::default().large
        },
        ..PoolConfig::default()
    };
    let pool = HierarchicalPool::new(config).unwrap();
    // 2 MiB from an arena; 8 MiB beyond `max_size`, a mapping of its own.
    for l in [layout(2 << 20, 4096), layout(8 << 20, 4096)] {
        let b = pool.allocate_with(l, AllocFlags::HUGE_PAGES).unwrap();
        let start = b.cast::<u8>().as_ptr() as usize;
        let flags = vm_flags_over(start, start + b.len());
        assert!(!flags.is_empty(), "the block's mapping is listed");
        assert!(
            flags.iter().all(|f| f.split(' ').any(|x| x == "hg")),
            "{l:?}: a part of the block lacks the huge-page advice: {flags:?}"
        );
        // SAFETY: allocated above with this layout.
        unsafe { pool.deallocate(b.cast(), l) };
    }
}

/// The `VmFlags` of every mapping of this process that overlaps `[start, end)`.
#[cfg(target_os = "linux")]
fn vm_flags_over(start: usize, end: usize) -> Vec<String> {
    smaps_field_over(start, end, "VmFlags:")
}

/// Kilobytes resident in the mappings that overlap `[start, end)`.
#[cfg(target_os = "linux")]
fn resident_kib_over(start: usize, end: usize) -> usize {
    smaps_field_over(start, end, "Rss:")
        .iter()
        .map(|v| v.trim_end_matches(" kB").trim().parse::<usize>().unwrap())
        .sum()
}

/// The value of `field` for every mapping of this process that overlaps `[start, end)`.
#[cfg(target_os = "linux")]
fn smaps_field_over(start: usize, end: usize, field: &str) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut values = Vec::new();
    let mut overlaps = false;
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            if overlaps {
                values.push(rest.trim().to_string());
            }
        } else if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            overlaps = a < end && start < b;
        }
    }
    values
}
