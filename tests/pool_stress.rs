//! Many threads at once, with blocks freed by threads other than the ones that
//! allocated them: contents stay intact and the statistics balance at the end.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use neurostore::{HierarchicalPool, PoolConfig};

struct Sent(NonNull<u8>, Layout, u8);
// SAFETY: the block is owned by whoever holds the message; the pool is Sync.
unsafe impl Send for Sent {}

fn sizes(seed: &mut u64) -> usize {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    match *seed % 10 {
        0..=6 => 1 + (*seed >> 8) as usize % 256,
        7 | 8 => 257 + (*seed >> 8) as usize % 20_000,
        _ => 65_537 + (*seed >> 8) as usize % 300_000,
    }
}

fn run(config: PoolConfig) {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 10_000;
    let pool = Arc::new(HierarchicalPool::new(config).unwrap());
    // Thread i sends everything it allocates to thread (i + 1) % THREADS, which checks
    // and frees it.
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Sent>()).unzip();
    let mut handles = Vec::new();
    for (i, rx) in rxs.into_iter().enumerate() {
        let tx = txs[(i + 1) % THREADS].clone();
        let pool = Arc::clone(&pool);
        handles.push(thread::spawn(move || {
            let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
            let mut own = Vec::new();
            for n in 0..PER_THREAD {
                let l = Layout::from_size_align(sizes(&mut seed), 8).unwrap();
                let b = pool.allocate(l).unwrap().cast::<u8>();
                let tag = (n % 251) as u8;
                // SAFETY: a fresh block of at least `l.size()` bytes.
                unsafe { std::ptr::write_bytes(b.as_ptr(), tag, l.size()) };
                if n % 3 == 0 {
                    own.push(Sent(b, l, tag));
                } else {
                    tx.send(Sent(b, l, tag)).unwrap();
                }
                if n % 64 == 0 {
                    // Interleave local frees with the cross-thread ones.
                    for Sent(p, l, t) in own.drain(..) {
                        check_and_free(&pool, p, l, t);
                    }
                }
            }
            drop(tx);
            for Sent(p, l, t) in rx {
                check_and_free(&pool, p, l, t);
            }
            for Sent(p, l, t) in own {
                check_and_free(&pool, p, l, t);
            }
        }));
    }
    drop(txs);
    for h in handles {
        h.join().unwrap();
    }
    let st = pool.stats();
    assert_eq!(st.allocations, (THREADS * PER_THREAD) as u64);
    assert_eq!(st.deallocations, st.allocations);
    assert_eq!(st.live_allocations, 0);
    assert_eq!(st.in_use_bytes, 0);
    assert_eq!(st.invalid_frees, 0);
    assert_eq!(
        st.cached_threads, 0,
        "exited threads hand their caches back"
    );
    pool.verify().unwrap();
}

fn check_and_free(pool: &HierarchicalPool, p: NonNull<u8>, l: Layout, tag: u8) {
    // SAFETY: the block is live and `l.size()` bytes long; freed once here.
    unsafe {
        let bytes = std::slice::from_raw_parts(p.as_ptr(), l.size());
        assert!(bytes.iter().all(|&x| x == tag), "block corrupted in flight");
        pool.deallocate(p, l);
    }
}

#[test]
fn cross_thread_frees_with_thread_caches() {
    run(PoolConfig::default());
}

#[test]
fn cross_thread_frees_with_tiny_caches() {
    let mut c = PoolConfig::default();
    c.small.thread_cache_size = 2;
    c.retain_empty = 0;
    run(c);
}

#[test]
fn cross_thread_frees_in_checked_mode() {
    run(PoolConfig::debug());
}

#[test]
fn many_pools_per_thread_fall_back_to_the_locked_path() {
    // More pools than a thread has cache entries: the extra ones must still work.
    let pools: Vec<_> = (0..20)
        .map(|_| HierarchicalPool::new(PoolConfig::default()).unwrap())
        .collect();
    let l = Layout::from_size_align(64, 8).unwrap();
    let blocks: Vec<_> = pools
        .iter()
        .map(|p| (0..100).map(|_| p.allocate(l).unwrap()).collect::<Vec<_>>())
        .collect();
    for (p, bs) in pools.iter().zip(blocks) {
        for b in bs {
            // SAFETY: allocated from `p` with `l`.
            unsafe { p.deallocate(b.cast(), l) };
        }
        assert_eq!(p.stats().live_allocations, 0);
    }
    drop(pools);
    // Cache entries of dropped pools are recycled for new ones.
    let p = HierarchicalPool::new(PoolConfig::default()).unwrap();
    let b = p.allocate(l).unwrap();
    // SAFETY: allocated from `p` with `l`.
    unsafe { p.deallocate(b.cast(), l) };
    assert_eq!(p.stats().cached_threads, 1);
}
