//! This test binary runs with the pool as its global allocator: collections, strings,
//! several threads and cross-thread frees, all served by `NeuroAlloc`.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::thread;

use neurostore::NeuroAlloc;

#[global_allocator]
static ALLOC: NeuroAlloc = NeuroAlloc::new();

#[test]
fn a_real_workload_runs_on_the_pool() {
    let before = ALLOC.pool().stats().allocations;
    let mut words: HashMap<String, usize> = HashMap::new();
    let text = "the quick brown fox jumps over the lazy dog ".repeat(2000);
    for w in text.split_whitespace() {
        *words.entry(w.to_string()).or_default() += 1;
    }
    assert_eq!(words["the"], 4000);
    let mut tree = BTreeMap::new();
    for i in 0..50_000u64 {
        tree.insert(i.wrapping_mul(0x9E37_79B9), vec![i; (i % 7) as usize]);
    }
    assert_eq!(tree.len(), 50_000);
    let big: Vec<u8> = vec![3; 10 << 20];
    assert_eq!(big.iter().map(|&x| x as usize).sum::<usize>(), 30 << 20);
    let st = ALLOC.pool().stats();
    assert!(
        st.allocations > before + 50_000,
        "allocations went through the pool"
    );
    assert!(st.small.allocations > 0 && st.medium.allocations > 0 && st.large.allocations > 0);
}

#[test]
fn threads_allocate_and_free_each_others_memory() {
    let (tx, rx) = mpsc::channel::<Vec<String>>();
    let producers: Vec<_> = (0..4)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                for round in 0..200 {
                    let batch: Vec<String> = (0..100)
                        .map(|i| format!("thread {t} round {round} item {i}"))
                        .collect();
                    tx.send(batch).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let consumer = thread::spawn(move || {
        let mut n = 0usize;
        for batch in rx {
            for s in &batch {
                assert!(s.starts_with("thread "));
            }
            n += batch.len();
            // `batch` and its strings are freed here, on another thread.
        }
        n
    });
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 4 * 200 * 100);
    assert_eq!(ALLOC.pool().stats().invalid_frees, 0);
}
