//! Loom checks of the pool's concurrency, over every interleaving (up to a bound on
//! preemptions for the whole-pool models): the lock-free pieces, and the thread caches,
//! transfer caches and cross-thread frees of a real `HierarchicalPool` built over loom's
//! locks and atomics. `RUSTFLAGS="--cfg loom" cargo test --release --test loom`.
#![cfg(loom)]

use std::alloc::Layout;
use std::collections::HashSet;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use neurostore::lockfree::{InitGate, get_or_install};
use neurostore::{HierarchicalPool, PoolConfig};

#[test]
fn init_gate_initialises_once_and_publishes_the_writes() {
    loom::model(|| {
        let gate = Arc::new(InitGate::new());
        let value = Arc::new(UnsafeCell::new(0u32));
        let inits = Arc::new(AtomicUsize::new(0));
        let run = {
            let (gate, value, inits) = (gate.clone(), value.clone(), inits.clone());
            move || {
                if !gate.is_ready() {
                    if gate.try_begin() {
                        // SAFETY: only the thread that won the gate writes, before `finish`.
                        value.with_mut(|v| unsafe { *v = 42 });
                        inits.fetch_add(1, Ordering::Relaxed);
                        gate.finish();
                    } else {
                        gate.wait_ready();
                    }
                }
                // SAFETY: the gate is ready, so the write happened-before this read.
                assert_eq!(value.with(|v| unsafe { *v }), 42);
            }
        };
        let other = loom::thread::spawn(run.clone());
        run();
        other.join().unwrap();
        assert_eq!(inits.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn get_or_install_publishes_exactly_one_object() {
    loom::model(|| {
        let slot = Arc::new(AtomicPtr::<u64>::new(std::ptr::null_mut()));
        let made = Arc::new(AtomicUsize::new(0));
        let discarded = Arc::new(AtomicUsize::new(0));
        let race = {
            let (slot, made, discarded) = (slot.clone(), made.clone(), discarded.clone());
            move |tag: u64| {
                let p = get_or_install(
                    &*slot,
                    || {
                        made.fetch_add(1, Ordering::Relaxed);
                        Some(Box::into_raw(Box::new(tag)))
                    },
                    |lost| {
                        // SAFETY: the losing object was made by `Box::into_raw` above and
                        // never published.
                        drop(unsafe { Box::from_raw(lost) });
                        discarded.fetch_add(1, Ordering::Relaxed);
                    },
                )
                .unwrap();
                // SAFETY: the published object is never freed while the slot is in use.
                let v = unsafe { *p };
                assert!(v == 1 || v == 2);
                p as usize
            }
        };
        let r2 = race.clone();
        let other = loom::thread::spawn(move || r2(2));
        let mine = race(1);
        let theirs = other.join().unwrap();
        assert_eq!(mine, theirs, "both threads see the one installed object");
        let installs = made.load(Ordering::Relaxed) - discarded.load(Ordering::Relaxed);
        assert_eq!(installs, 1, "every object made but one was discarded");
        // SAFETY: the winner was made by `Box::into_raw` and is freed once, here.
        drop(unsafe { Box::from_raw(slot.load(Ordering::Relaxed)) });
    });
}

/// Runs a whole-pool model over every interleaving (`LOOM_MAX_PREEMPTIONS` may bound
/// them) and prints how many there were.
fn check_pool_model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    // Every lock and counter operation is a branch; a pool model makes thousands.
    builder.max_branches = builder.max_branches.max(1 << 20);
    let f = std::sync::Arc::new(f);
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    // The model's first thread has a small stack; the pool's config and tiers are built
    // on the stack, so the model runs in a thread of its own.
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = f.clone();
        spawn(move || f()).join().expect("no panic");
    });
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    println!("{runs} interleavings explored");
    assert!(runs > 1, "the model has more than one interleaving");
}

/// A loom thread with a stack large enough for the pool's code, whose last step is what a
/// thread's exit does to its pool caches (loom would run the thread-local destructor that
/// does it after `join` returns; std runs it before).
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> loom::thread::JoinHandle<T> {
    loom::thread::Builder::new()
        .stack_size(4 << 20)
        .spawn(move || {
            let result = f();
            neurostore::pool::retire_thread_caches();
            result
        })
        .expect("a loom thread")
}

/// 64-byte blocks: the small tier, through the thread caches.
const BLOCK: Layout = match Layout::from_size_align(64, 8) {
    Ok(l) => l,
    Err(_) => panic!("a valid layout"),
};

/// 1 KiB blocks: the medium tier, through its per-thread caches.
const MEDIUM_BLOCK: Layout = match Layout::from_size_align(1024, 8) {
    Ok(l) => l,
    Err(_) => panic!("a valid layout"),
};

/// A pool whose small caches hold two blocks (plus the hot one), so that a few frees
/// already give a batch back to the class's transfer cache and a few allocations take
/// one, whose chunks hold eight blocks, and whose medium caches hold four blocks a class
/// (the least they hold).
fn tiny_pool() -> Arc<HierarchicalPool> {
    let mut config = PoolConfig::default();
    config.small.blocks_per_chunk = 8;
    config.small.thread_cache_size = 2;
    config.medium.thread_cache_bytes = 1;
    Arc::new(HierarchicalPool::new(config).expect("a valid config"))
}

fn allocate(pool: &HierarchicalPool, n: usize) -> Vec<usize> {
    allocate_blocks(pool, n, BLOCK)
}

fn free(pool: &HierarchicalPool, blocks: &[usize]) {
    free_blocks(pool, blocks, BLOCK);
}

fn allocate_blocks(pool: &HierarchicalPool, n: usize, layout: Layout) -> Vec<usize> {
    (0..n)
        .map(|_| pool.allocate(layout).expect("memory").cast::<u8>().as_ptr() as usize)
        .collect()
}

fn free_blocks(pool: &HierarchicalPool, blocks: &[usize], layout: Layout) {
    for &b in blocks {
        let p = std::ptr::NonNull::new(b as *mut u8).expect("a block");
        // SAFETY: every address here came from `allocate_blocks` on this pool with
        // `layout` and is freed once.
        unsafe { pool.deallocate(p, layout) };
    }
}

fn assert_distinct(blocks: impl IntoIterator<Item = usize>) {
    let mut seen = HashSet::new();
    for b in blocks {
        assert!(seen.insert(b), "block {b:#x} handed out twice");
    }
}

#[test]
fn blocks_freed_by_another_thread_come_back_once() {
    check_pool_model(|| {
        let pool = tiny_pool();
        let given = allocate(&pool, 3);
        let other = {
            let pool = pool.clone();
            spawn(move || {
                // Frees of blocks another thread allocated, past this thread's cache.
                free(&pool, &given);
                allocate(&pool, 3)
            })
        };
        let mine = allocate(&pool, 3);
        let theirs = other.join().expect("no panic");
        assert_distinct(mine.iter().chain(&theirs).copied());
        free(&pool, &mine);
        free(&pool, &theirs);
        pool.flush_thread_cache();
        let stats = pool.stats();
        assert_eq!(stats.small.in_use_bytes, 0, "{stats:?}");
        assert_eq!(stats.live_allocations, 0, "{stats:?}");
        pool.verify().expect("a consistent pool");
        // Everything the two caches held went back once: the chunks hand out distinct
        // blocks until they are exhausted.
        assert_distinct(allocate(&pool, 16));
    });
}

#[test]
fn a_thread_exiting_with_cached_blocks_races_the_pool_being_dropped() {
    check_pool_model(|| {
        let pool = tiny_pool();
        let freed = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let other = {
            let (pool, freed) = (pool.clone(), freed.clone());
            spawn(move || {
                let blocks = allocate(&pool, 3);
                free(&pool, &blocks);
                freed.store(true, Ordering::Release);
                // The blocks stay in this thread's cache; its exit gives them back
                // unless the pool is gone by then.
            })
        };
        while !freed.load(Ordering::Acquire) {
            loom::thread::yield_now();
        }
        // Blocks in another thread's cache are free, whether or not it has exited.
        let stats = pool.stats();
        assert_eq!(stats.small.in_use_bytes, 0, "{stats:?}");
        assert_eq!(stats.live_allocations, 0, "{stats:?}");
        drop(pool);
        other.join().expect("no panic");
        // A pool made afterwards gets none of the old pool's blocks from the cache.
        let fresh = tiny_pool();
        assert_distinct(allocate(&fresh, 16));
        assert_eq!(fresh.stats().live_allocations, 16);
    });
}

#[test]
fn a_reset_races_a_thread_giving_back_its_cached_blocks() {
    check_pool_model(|| {
        let mut pool = tiny_pool();
        let other = {
            let pool = pool.clone();
            spawn(move || {
                let blocks = allocate(&pool, 3);
                free(&pool, &blocks[..2]);
                // One block leaks into the reset; two stay cached by this thread, which
                // exits after dropping its reference.
                drop(pool);
            })
        };
        let report = loop {
            if let Some(p) = Arc::get_mut(&mut pool) {
                break p.reset();
            }
            loom::thread::yield_now();
        };
        assert_eq!(report.count, 1, "{report:?}");
        other.join().expect("no panic");
        // The exiting thread's cached blocks were free already after the reset: had it
        // given them back, the chunk would hand them out twice.
        assert_distinct(allocate(&pool, 16));
        pool.verify().expect("a consistent pool");
    });
}

#[test]
fn medium_blocks_freed_across_threads_while_the_pool_trims() {
    check_pool_model(|| {
        let pool = tiny_pool();
        let given = allocate_blocks(&pool, 5, MEDIUM_BLOCK);
        let other = {
            let pool = pool.clone();
            spawn(move || {
                // Past the cache's four blocks: the oldest half goes back to the tier.
                free_blocks(&pool, &given, MEDIUM_BLOCK);
                allocate_blocks(&pool, 2, MEDIUM_BLOCK)
            })
        };
        pool.trim();
        let mine = allocate_blocks(&pool, 2, MEDIUM_BLOCK);
        let theirs = other.join().expect("no panic");
        assert_distinct(mine.iter().chain(&theirs).copied());
        free_blocks(&pool, &mine, MEDIUM_BLOCK);
        free_blocks(&pool, &theirs, MEDIUM_BLOCK);
        pool.flush_thread_cache();
        let stats = pool.stats();
        assert_eq!(stats.medium.in_use_bytes, 0, "{stats:?}");
        assert_eq!(stats.live_allocations, 0, "{stats:?}");
        pool.verify().expect("a consistent pool");
    });
}
