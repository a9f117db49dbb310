//! The pool beside glibc malloc (`System`), mimalloc and jemalloc, in one run:
//!
//! - (a) a hot allocate + free pair of 16, 64 and 256 B;
//! - (b) 1M blocks of 64 B, then freed in random order;
//! - (c) log-uniform random sizes 8 B .. 64 KiB around a live set of 10k blocks;
//! - (d) two threads, one allocating 64 B blocks and the other freeing them.
//!
//! Every allocator is driven through `GlobalAlloc` (the pool through `NeuroAlloc`), so
//! all pay the same call overhead. After criterion's output, a summary table prints each
//! peer's time beside ours with the ratio, the pool's reserved / in-use ratio in the
//! steady state of (c), and each allocator's resident memory per byte requested after the
//! churn of (c) with every page of every block written (each allocator in a child process
//! of this binary, since resident memory is the whole process's; Linux only).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Rng, estimate};
use criterion::{BenchmarkId, Criterion, Throughput};
use mimalloc::MiMalloc;
use neurostore::NeuroAlloc;
use tikv_jemallocator::Jemalloc;

static NEURO: NeuroAlloc = NeuroAlloc::new();

const PEERS: [&str; 4] = ["neurostore", "glibc", "mimalloc", "jemalloc"];

fn with_alloc<R>(name: &str, f: impl FnOnce(&'static (dyn GlobalAlloc + Sync)) -> R) -> R {
    match name {
        "neurostore" => f(&NEURO),
        "glibc" => f(&System),
        "mimalloc" => f(&MiMalloc),
        "jemalloc" => f(&Jemalloc),
        _ => unreachable!(),
    }
}

/// Sizes for the log-uniform cases.
trait LogUniform {
    /// Log-uniform over 8 B ..= 64 KiB.
    fn log_uniform_size(&mut self) -> usize;
}

impl LogUniform for Rng {
    fn log_uniform_size(&mut self) -> usize {
        let lo = 8f64.ln();
        let hi = 65536f64.ln();
        ((lo + self.unit() * (hi - lo)).exp() as usize).clamp(8, 65536)
    }
}

fn hot_pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("a_hot_pair");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for size in [16usize, 64, 256] {
        let l = Layout::from_size_align(size, 8).unwrap();
        for name in PEERS {
            with_alloc(name, |a| {
                g.bench_with_input(BenchmarkId::new(name, size), &l, |b, &l| {
                    b.iter(|| {
                        // SAFETY: a non-zero layout; the block is freed with the same layout.
                        unsafe {
                            let p = a.alloc(black_box(l));
                            a.dealloc(black_box(p), l);
                        }
                    })
                });
            });
        }
    }
    g.finish();
}

fn million_then_random_free(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let l = Layout::from_size_align(64, 8).unwrap();
    let mut order: Vec<usize> = (0..N).collect();
    let mut rng = Rng(42);
    for i in (1..N).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut g = c.benchmark_group("b_1M_64B_random_free");
    g.sample_size(10).throughput(Throughput::Elements(N as u64));
    for name in PEERS {
        with_alloc(name, |a| {
            let mut ptrs = vec![std::ptr::null_mut::<u8>(); N];
            g.bench_function(name, |b| {
                b.iter(|| {
                    for p in ptrs.iter_mut() {
                        // SAFETY: a non-zero layout.
                        *p = unsafe { a.alloc(l) };
                    }
                    for &i in &order {
                        // SAFETY: each block is freed once, with its layout.
                        unsafe { a.dealloc(ptrs[i], l) };
                    }
                })
            });
        });
    }
    g.finish();
}

/// Runs `ops` replace operations on a live set of `live` log-uniform blocks.
fn churn(a: &dyn GlobalAlloc, slots: &mut [(usize, *mut u8)], rng: &mut Rng, ops: usize) {
    for _ in 0..ops {
        let i = rng.below(slots.len());
        let (old, p) = slots[i];
        // SAFETY: the slot holds a live block of size `old` (align 8).
        unsafe { a.dealloc(p, Layout::from_size_align_unchecked(old, 8)) };
        let size = rng.log_uniform_size();
        // SAFETY: a non-zero layout.
        let q = unsafe { a.alloc(Layout::from_size_align_unchecked(size, 8)) };
        // SAFETY: the block holds `size` >= 8 bytes.
        unsafe { q.write(1) };
        slots[i] = (size, q);
    }
}

fn log_uniform_live_set(c: &mut Criterion) {
    const LIVE: usize = 10_000;
    const OPS: usize = 10_000;
    let mut g = c.benchmark_group("c_log_uniform_live_10k");
    g.throughput(Throughput::Elements(OPS as u64))
        .measurement_time(Duration::from_secs(3));
    for name in PEERS {
        with_alloc(name, |a| {
            let mut rng = Rng(7);
            let mut slots: Vec<(usize, *mut u8)> = (0..LIVE)
                .map(|_| {
                    let s = rng.log_uniform_size();
                    // SAFETY: a non-zero layout.
                    (s, unsafe {
                        a.alloc(Layout::from_size_align_unchecked(s, 8))
                    })
                })
                .collect();
            churn(a, &mut slots, &mut rng, 200_000); // reach the steady state
            g.bench_function(name, |b| b.iter(|| churn(a, &mut slots, &mut rng, OPS)));
            for (s, p) in slots {
                // SAFETY: each live block freed once with its layout.
                unsafe { a.dealloc(p, Layout::from_size_align_unchecked(s, 8)) };
            }
        });
    }
    g.finish();
}

/// Reserved bytes of the pool in (c)'s steady state, measured on a fresh pool, over: the
/// bytes of the blocks in use, the bytes requested, and the most bytes ever requested at
/// once (no allocator that keeps its memory mapped can reserve less than that peak).
fn steady_state_ratio() -> (f64, f64, f64) {
    let pool = neurostore::HierarchicalPool::new(neurostore::PoolConfig::default()).unwrap();
    let mut rng = Rng(7);
    let mut slots: Vec<(usize, std::ptr::NonNull<u8>)> = (0..10_000)
        .map(|_| {
            let s = rng.log_uniform_size();
            (
                s,
                pool.allocate(Layout::from_size_align(s, 8).unwrap())
                    .unwrap()
                    .cast(),
            )
        })
        .collect();
    let mut requested: usize = slots.iter().map(|s| s.0).sum();
    let mut peak = requested;
    for _ in 0..500_000 {
        let i = rng.below(slots.len());
        let (old, p) = slots[i];
        // SAFETY: a live block of this pool with this layout.
        unsafe { pool.deallocate(p, Layout::from_size_align(old, 8).unwrap()) };
        let s = rng.log_uniform_size();
        slots[i] = (
            s,
            pool.allocate(Layout::from_size_align(s, 8).unwrap())
                .unwrap()
                .cast(),
        );
        requested = requested + s - old;
        peak = peak.max(requested);
    }
    let st = pool.stats();
    let ratios = (
        st.reserved_bytes as f64 / st.in_use_bytes as f64,
        st.reserved_bytes as f64 / requested as f64,
        st.reserved_bytes as f64 / peak as f64,
    );
    for (s, p) in slots {
        // SAFETY: as above.
        unsafe { pool.deallocate(p, Layout::from_size_align(s, 8).unwrap()) };
    }
    ratios
}

fn producer_consumer(c: &mut Criterion) {
    const N: usize = 1_000_000;
    const BATCH: usize = 1024;
    let l = Layout::from_size_align(64, 8).unwrap();
    let mut g = c.benchmark_group("d_two_threads_alloc_free");
    g.sample_size(10).throughput(Throughput::Elements(N as u64));
    for name in PEERS {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += with_alloc(name, |a| {
                        // Batches travel in reused buffers, so the channel costs no allocation
                        // per block; `usize` stands for the pointer to keep the buffers Send.
                        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<usize>>(8);
                        let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<usize>>(8);
                        for _ in 0..8 {
                            empty_tx.send(Vec::with_capacity(BATCH)).unwrap();
                        }
                        let start = Instant::now();
                        std::thread::scope(|s| {
                            s.spawn(|| {
                                for batch in full_rx {
                                    for &p in &batch {
                                        // SAFETY: allocated by the producer with `l`, freed once.
                                        unsafe { a.dealloc(p as *mut u8, l) };
                                    }
                                    let mut batch = batch;
                                    batch.clear();
                                    if empty_tx.send(batch).is_err() {
                                        break;
                                    }
                                }
                            });
                            for _ in 0..N / BATCH {
                                let mut batch = empty_rx.recv().unwrap();
                                for _ in 0..BATCH {
                                    // SAFETY: a non-zero layout.
                                    batch.push(unsafe { a.alloc(l) } as usize);
                                }
                                full_tx.send(batch).unwrap();
                            }
                            drop(full_tx);
                        });
                        start.elapsed()
                    });
                }
                total
            })
        });
    }
    g.finish();
}

fn summary() {
    println!(
        "\nsummary (mean time; ratio = peer / neurostore, above 1 means neurostore is faster)"
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>12}",
        "case", PEERS[0], PEERS[1], PEERS[2], PEERS[3]
    );
    let mut rows: Vec<(String, String, f64)> = Vec::new();
    for size in [16, 64, 256] {
        rows.push((
            format!("(a) alloc+free {size} B"),
            format!("a_hot_pair/{{}}/{size}"),
            1.0,
        ));
    }
    rows.push((
        "(b) 1M x 64 B, random free, per op".into(),
        "b_1M_64B_random_free/{}".into(),
        2e6,
    ));
    rows.push((
        "(c) log-uniform, live 10k, per op".into(),
        "c_log_uniform_live_10k/{}".into(),
        1e4,
    ));
    rows.push((
        "(d) 2 threads 64 B, per block".into(),
        "d_two_threads_alloc_free/{}".into(),
        1e6,
    ));
    for (label, pattern, per) in rows {
        let (group, rest) = pattern.split_once('/').unwrap();
        let times: Vec<Option<f64>> = PEERS
            .iter()
            .map(|p| estimate(group, &rest.replace("{}", p)).map(|ns| ns / per))
            .collect();
        let Some(ours) = times[0] else { continue };
        let cell = |t: Option<f64>| match t {
            Some(t) if t == ours => format!("{t:.2} ns"),
            Some(t) => format!("{t:.2} ({:.2}x)", t / ours),
            None => "-".into(),
        };
        println!(
            "{:<34} {:>12} {:>12} {:>12} {:>12}",
            label,
            cell(times[0]),
            cell(times[1]),
            cell(times[2]),
            cell(times[3])
        );
    }
    let (vs_blocks, vs_requested, vs_peak) = steady_state_ratio();
    println!(
        "(c) steady state: reserved / in-use blocks = {vs_blocks:.3}, reserved / requested bytes = {vs_requested:.3}, reserved / peak requested bytes = {vs_peak:.3}"
    );
}

/// Set in a child process of this bench: the allocator whose memory it measures.
const MEMORY_CHILD: &str = "NEUROSTORE_POOL_BENCH_MEMORY_CHILD";

/// The process's resident bytes (Linux), from `/proc/self/statm` in 4 KiB pages.
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// In a child: (c)'s churn writing every page of every block, then resident bytes gained
/// over the bytes the live blocks requested.
fn memory_child(name: &str) {
    const LIVE: usize = 10_000;
    let before = resident_bytes().unwrap_or(0);
    let touch = |p: *mut u8, size: usize| {
        for offset in (0..size).step_by(4096).chain([size - 1]) {
            // SAFETY: `offset < size`, within the block.
            unsafe { p.add(offset).write(1) };
        }
    };
    with_alloc(name, |a| {
        let mut rng = Rng(7);
        let mut slots: Vec<(usize, *mut u8)> = (0..LIVE)
            .map(|_| {
                let s = rng.log_uniform_size();
                // SAFETY: a non-zero layout.
                let p = unsafe { a.alloc(Layout::from_size_align_unchecked(s, 8)) };
                touch(p, s);
                (s, p)
            })
            .collect();
        for _ in 0..500_000 {
            let i = rng.below(LIVE);
            let (old, p) = slots[i];
            // SAFETY: the slot holds a live block of size `old` (align 8).
            unsafe { a.dealloc(p, Layout::from_size_align_unchecked(old, 8)) };
            let s = rng.log_uniform_size();
            // SAFETY: a non-zero layout.
            let q = unsafe { a.alloc(Layout::from_size_align_unchecked(s, 8)) };
            touch(q, s);
            slots[i] = (s, q);
        }
        let requested: usize = slots.iter().map(|s| s.0).sum();
        let gained = resident_bytes().unwrap_or(0).saturating_sub(before);
        println!("resident/requested {:.3}", gained as f64 / requested as f64);
    });
}

/// Runs [`memory_child`] for every allocator in a child process and prints the figures.
fn memory_summary() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if resident_bytes().is_none() {
        println!("(c) resident memory: skipped (no /proc/self/statm on this system)");
        return;
    }
    let figures: Vec<String> = PEERS
        .iter()
        .map(|name| {
            let out = std::process::Command::new(&exe)
                .env(MEMORY_CHILD, name)
                .output()
                .ok()
                .filter(|o| o.status.success());
            out.and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.lines()
                    .find_map(|l| l.strip_prefix("resident/requested ").map(str::to_owned))
            })
            .map_or_else(|| format!("{name} -"), |r| format!("{name} {r}"))
        })
        .collect();
    println!(
        "(c) with every page written, resident bytes per byte requested: {}",
        figures.join(", ")
    );
}

fn main() {
    if let Ok(name) = std::env::var(MEMORY_CHILD) {
        memory_child(&name);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    hot_pair(&mut c);
    million_then_random_free(&mut c);
    log_uniform_live_set(&mut c);
    producer_consumer(&mut c);
    c.final_summary();
    if !std::env::args().any(|a| a == "--list" || a == "--test") {
        summary();
        memory_summary();
    }
}
