//! `Store` and `SharedStore`: one table per type, erased walking, threads.

use std::sync::Arc;

use neurostore::store::{SharedStore, Store};
use neurostore::table::Handle;
use neurostore::{HierarchicalPool, PoolConfig};

#[derive(Debug, PartialEq)]
struct Neuron {
    v: f32,
}

#[derive(Debug, PartialEq)]
struct Synapse {
    pre: Handle<Neuron>,
    post: Handle<Neuron>,
}

#[test]
fn one_table_per_type_routed_by_handle_type() {
    let pool = Arc::new(HierarchicalPool::new(PoolConfig::default()).unwrap());
    let mut store = Store::with_pool(pool.clone());
    let a = store.insert(Neuron { v: -65.0 });
    let b = store.insert(Neuron { v: -70.0 });
    let s = store.insert(Synapse { pre: a, post: b });
    assert_eq!(store.get(s).map(|s| s.pre), Some(a));
    assert_eq!(
        store.get(store.get(s).unwrap().post),
        Some(&Neuron { v: -70.0 })
    );
    store.get_mut(a).unwrap().v += 1.0;
    assert_eq!(store.get(a).unwrap().v, -64.0);
    assert_eq!(store.remove(b), Some(Neuron { v: -70.0 }));
    assert!(!store.contains(b));
    assert_eq!(store.remove(b), None);
    assert!(store.table::<u8>().is_none());
    assert_eq!(store.get(Handle::<u8>::null()), None);

    let names: Vec<&str> = store.stats().tables.iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), 2);
    assert!(
        names.iter().any(|n| n.ends_with("Neuron")) && names.iter().any(|n| n.ends_with("Synapse"))
    );
    assert_eq!(store.tables().map(|t| t.len()).sum::<usize>(), 2);
    assert!(
        pool.stats().live_allocations >= 2,
        "tables take chunks from the store's pool"
    );
    for t in store.tables_mut() {
        t.clear();
    }
    assert!(store.tables().all(|t| t.is_empty()));
    drop(store);
    assert_eq!(pool.stats().live_allocations, 0);
}

#[test]
fn ensure_table_is_idempotent() {
    let mut store = Store::new();
    store.ensure_table::<u32>().insert(7);
    let t = store.ensure_table::<u32>();
    assert_eq!(t.len(), 1, "registering again keeps the table");
}

#[test]
fn store_is_send_and_sync() {
    fn both<T: Send + Sync>() {}
    both::<Store>();
    both::<SharedStore>();
}

#[test]
fn shared_store_takes_many_writers() {
    let store = Arc::new(SharedStore::new());
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..500u32 {
                    mine.push(store.insert(t * 10_000 + i));
                    if i % 3 == 0 {
                        let h = mine.swap_remove(0);
                        assert!(store.remove(h).is_some());
                    }
                    let f = store.insert(i as f64);
                    store.with_mut(f, |x| *x += 0.5);
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<Handle<u32>> = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    let table = store.table::<u32>().unwrap();
    assert_eq!(table.read().len(), all.len());
    for h in &all {
        assert!(store.with(*h, |v| *v).is_some());
    }
    assert_eq!(store.table::<f64>().unwrap().read().len(), 2000);
}

/// The same spike twice: declared short-lived, and without the hint.
#[derive(neurostore::Pooled)]
#[pooled(kind = "signal", lifetime = "short")]
struct ShortSpike {
    at: u64,
}

#[derive(neurostore::Pooled)]
struct PlainSpike {
    at: u64,
}

/// Inserts `n` objects, then removes them all in a scattered order (every 7th first).
fn fill_and_empty<T: neurostore::Pooled + neurostore::Trace + Send + Sync>(
    store: &mut Store,
    n: u64,
    make: impl Fn(u64) -> T,
) {
    store.register::<T>().unwrap();
    let hs: Vec<_> = (0..n).map(|i| store.insert(make(i))).collect();
    for start in 0..7 {
        for h in hs.iter().skip(start).step_by(7) {
            assert!(store.remove(*h).is_some());
        }
    }
}

#[test]
fn a_short_lived_table_keeps_its_chunks_and_is_not_defragmented_on_its_own() {
    let mut store = Store::new();
    fill_and_empty(&mut store, 100_000, |at| ShortSpike { at });
    fill_and_empty(&mut store, 100_000, |at| PlainSpike { at });
    let short = store.table::<ShortSpike>().unwrap();
    let plain = store.table::<PlainSpike>().unwrap();
    assert_eq!(
        short.layout_version(),
        0,
        "the policy moved no short-lived object"
    );
    assert!(
        plain.layout_version() > 0,
        "the policy defragmented the other table"
    );
    let (short_stats, plain_stats) = (short.stats(), plain.stats());
    assert!(short_stats.chunks * short.chunk_capacity() as usize >= 100_000);
    assert!(
        plain_stats.chunks <= 1,
        "{} chunks kept",
        plain_stats.chunks
    );
    assert_eq!(
        (short_stats.kind, short_stats.lifetime),
        (
            Some(neurostore::ObjectKind::Signal),
            Some(neurostore::Lifetime::Short)
        )
    );
    // The next round fills the kept chunks; an explicit defragment gives them back.
    let hs: Vec<_> = (0..1000)
        .map(|at| store.insert(ShortSpike { at }))
        .collect();
    let report = store.defragment();
    assert!(report.chunks_released > 0);
    assert!(hs.iter().all(|h| store.contains(*h)));
}
