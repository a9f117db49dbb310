//! A tour of the hierarchical pool: configure it, allocate across its three tiers from
//! several threads, watch an alert fire, and print its statistics.
//!
//! Run with `cargo run --release --example pool_tour`.

use std::alloc::Layout;
use std::sync::Arc;
use std::time::Instant;

use allocator_api2::vec::Vec as PoolVec;
use neurostore::pool::{ClassStats, Tier};
use neurostore::{AlertKind, HierarchicalPool, PoolConfig, PoolRegistry, PoolStats};

const CONFIG: &str = r#"
[memory_pools]
total_memory = 2147483648   # 2 GiB cap: past it, allocation is an error, not an abort

[memory_pools.small]
sizes = [8, 16, 32, 64, 128, 256]
blocks_per_chunk = 1024
thread_cache_size = 64

[memory_pools.medium]
sizes = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
segregated_fit = true
coalescing = true

[memory_pools.large]
strategy = "buddy_allocator"
min_size = 65536
max_size = 1073741824
alignment = 4096
"#;

fn main() -> Result<(), neurostore::Error> {
    let config = PoolConfig::from_toml_str(CONFIG)?;
    let pool = PoolRegistry::global().create("tour", config)?;
    pool.set_alert_threshold(AlertKind::Fragmentation, 0.6)?;
    pool.on_alert(|a| {
        println!(
            "  alert: {:?} at {:.1} % (threshold {:.0} %), {} MiB reserved",
            a.kind,
            a.value * 100.0,
            a.threshold * 100.0,
            a.reserved_bytes >> 20
        )
    });

    println!("neurostore pool tour\n");
    println!("1. neuron-sized objects (64 B) from four threads, freed by their neighbours");
    let t = Instant::now();
    cross_thread_churn(&pool, 4, 250_000);
    println!(
        "   {} allocations in {:.1} ms",
        4 * 250_000,
        t.elapsed().as_secs_f64() * 1e3
    );

    println!("2. a mixed live set across the tiers: 8 B .. 128 KiB");
    let mut live = Vec::new();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..10_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let size = 8usize << (seed % 15); // log-uniform, 8 B .. 128 KiB
        let size = size - (seed >> 40) as usize % (size / 2).max(1);
        let l = Layout::from_size_align(size, 8).expect("valid layout");
        live.push((pool.allocate(l)?, l));
    }
    print_stats(&pool.stats());

    println!("\n3. free three blocks in four: holes open up and the alert fires once");
    let mut kept = Vec::new();
    for (i, (b, l)) in live.into_iter().enumerate() {
        if i % 4 == 0 {
            kept.push((b, l));
        } else {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { pool.deallocate(b.cast(), l) };
        }
    }
    let st = pool.stats();
    println!(
        "   in use {:.1} MiB of {:.1} MiB reserved, fragmentation {:.1} %",
        mib(st.in_use_bytes),
        mib(st.reserved_bytes),
        st.fragmentation * 100.0
    );

    println!("\n4. a Vec whose buffer lives in the pool (allocator_api2)");
    let mut potentials: PoolVec<f32, &HierarchicalPool> = PoolVec::new_in(&*pool);
    potentials.extend((0..1_000_000).map(|i| -65.0 + (i % 100) as f32 * 0.1));
    println!(
        "   1M membrane potentials, mean {:.3} mV, buffer of {:.1} MiB from the large tier",
        potentials.iter().sum::<f32>() / potentials.len() as f32,
        mib(potentials.capacity() * 4)
    );
    drop(potentials);

    for (b, l) in kept {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { pool.deallocate(b.cast(), l) };
    }
    pool.flush_thread_cache();
    println!("\n5. everything freed");
    print_stats(&pool.stats());
    PoolRegistry::global().remove("tour");
    Ok(())
}

fn cross_thread_churn(pool: &Arc<HierarchicalPool>, threads: usize, per_thread: usize) {
    struct Block(std::ptr::NonNull<u8>);
    // SAFETY: a block is owned by whoever holds it; the pool is Sync.
    unsafe impl Send for Block {}
    let l = Layout::from_size_align(64, 8).expect("valid layout");
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| std::sync::mpsc::channel::<Vec<Block>>())
        .unzip();
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let tx = txs[(i + 1) % threads].clone();
            let pool = Arc::clone(pool);
            std::thread::spawn(move || {
                for _ in 0..per_thread / 1000 {
                    let batch: Vec<Block> = (0..1000)
                        .map(|_| Block(pool.allocate(l).expect("64 B fits").cast()))
                        .collect();
                    tx.send(batch).expect("neighbour is alive");
                }
                drop(tx);
                for batch in rx {
                    for Block(p) in batch {
                        // SAFETY: allocated by a neighbour with `l`, freed once here.
                        unsafe { pool.deallocate(p, l) };
                    }
                }
            })
        })
        .collect();
    drop(txs);
    for h in handles {
        h.join().expect("worker finished");
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn print_stats(st: &PoolStats) {
    println!(
        "   reserved {:.1} MiB, in use {:.1} MiB (peak {:.1} MiB), fragmentation {:.1} %",
        mib(st.reserved_bytes),
        mib(st.in_use_bytes),
        mib(st.peak_in_use_bytes),
        st.fragmentation * 100.0
    );
    println!(
        "   {} allocations, {} frees, {} live, {:.1} M allocations/s",
        st.allocations,
        st.deallocations,
        st.live_allocations,
        st.allocation_rate / 1e6
    );
    println!(
        "   {:<7} {:>9} {:>12} {:>12} {:>12}",
        "tier", "regions", "reserved", "in use", "allocs"
    );
    for (name, t) in [
        ("small", &st.small),
        ("medium", &st.medium),
        ("large", &st.large),
    ] {
        println!(
            "   {:<7} {:>9} {:>10.1}Mi {:>10.1}Mi {:>12}",
            name,
            t.regions,
            mib(t.reserved_bytes),
            mib(t.in_use_bytes),
            t.allocations
        );
    }
    let busy: Vec<&ClassStats> = st.classes.iter().filter(|c| c.allocations > 0).collect();
    println!(
        "   {:<7} {:>9} {:>12} {:>12}",
        "class", "size", "allocs", "in use"
    );
    for c in busy {
        let tier = if c.tier == Tier::Small {
            "small"
        } else {
            "medium"
        };
        println!(
            "   {:<7} {:>9} {:>12} {:>10.2}Mi",
            tier,
            c.size,
            c.allocations,
            mib(c.in_use_bytes)
        );
    }
}
