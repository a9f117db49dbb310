//! `Table<T>` behaviour that the model test does not pin: placement, order, stale and
//! null handles, epochs, stats, zero-sized types.

use std::sync::Arc;

use neurostore::table::{Handle, Table};
use neurostore::{HierarchicalPool, PoolConfig};

fn pool() -> Arc<HierarchicalPool> {
    Arc::new(HierarchicalPool::new(PoolConfig::default()).unwrap())
}

#[test]
fn new_objects_take_the_lowest_free_place() {
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(pool(), 8 * 4);
    assert_eq!(t.chunk_capacity(), 4);
    let hs: Vec<_> = (0..10u64).map(|i| t.insert(i)).collect();
    assert_eq!(t.stats().chunks, 3);
    t.remove(hs[1]);
    t.remove(hs[6]);
    let a = t.insert(100);
    let b = t.insert(101);
    assert_eq!(
        (t.location(a).unwrap().chunk, t.location(a).unwrap().pos),
        (0, 1)
    );
    assert_eq!(
        (t.location(b).unwrap().chunk, t.location(b).unwrap().pos),
        (1, 2)
    );
    let order: Vec<u64> = t.iter().map(|(_, v)| *v).collect();
    assert_eq!(
        order,
        vec![0, 100, 2, 3, 4, 5, 101, 7, 8, 9],
        "iteration is storage order"
    );
}

#[test]
fn holes_and_released_chunks_far_below_the_end_are_filled_first() {
    // 100 chunks of 4: the free-place and vacant-chunk searches span several bitmap words.
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(pool(), 8 * 4);
    let hs: Vec<_> = (0..400u64).map(|i| t.insert(i)).collect();
    let chunk_of = |t: &Table<u64>, h| t.location(h).unwrap().chunk;
    for i in [90 * 4 + 2, 70 * 4 + 1, 10 * 4 + 3] {
        t.remove(hs[i]);
    }
    let refill: Vec<_> = (0..3).map(|i| t.insert(1000 + i)).collect();
    let chunks: Vec<u32> = refill.iter().map(|&h| chunk_of(&t, h)).collect();
    assert_eq!(chunks, [10, 70, 90], "lowest holes first");

    // Empty chunks 20 and 30 entirely: the table keeps one empty chunk (30, the last to
    // empty) and gives the other back to the pool. The kept one fills first, then a new
    // chunk takes the lowest vacant index.
    for i in (20 * 4..21 * 4).chain(30 * 4..31 * 4) {
        t.remove(hs[i]);
    }
    let refill: Vec<_> = (0..9).map(|i| t.insert(2000 + i)).collect();
    let chunks: Vec<u32> = refill.iter().map(|&h| chunk_of(&t, h)).collect();
    assert_eq!(chunks, [30, 30, 30, 30, 20, 20, 20, 20, 100]);
    assert_eq!(t.fragmentation().holes, 0);
    assert_eq!(
        t.stats().capacity - t.len(),
        3,
        "only the new last chunk has room"
    );
}

#[test]
fn null_zero_and_stale_handles_never_resolve() {
    let mut t: Table<u32> = Table::new();
    let hs: Vec<_> = (0..100).map(|i| t.insert(i)).collect();
    let zero: Handle<u32> = bytemuck::Zeroable::zeroed();
    for h in [
        Handle::null(),
        zero,
        Handle::from_bits(0),
        Handle::from_bits(u64::MAX),
    ] {
        assert_eq!(t.get(h), None);
        assert_eq!(t.get_mut(h), None);
        assert_eq!(t.remove(h), None);
        assert!(!t.contains(h));
    }
    assert_eq!(t.remove(hs[5]), Some(5));
    let again = t.insert(555);
    assert_ne!(again, hs[5], "the reused slot has a new generation");
    assert_eq!(again.index(), hs[5].index());
    assert_eq!(t.get(hs[5]), None);
    assert_eq!(t.get(again), Some(&555));
    assert_eq!(t.len(), 100);
}

#[test]
fn epochs_name_the_changed_chunks() {
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(pool(), 8 * 16);
    let hs: Vec<_> = (0..64u64).map(|i| t.insert(i)).collect();
    let synced = t.advance_epoch();
    assert_eq!(t.chunks_changed_since(synced + 1).count(), 0);
    *t.get_mut(hs[20]).unwrap() += 1; // chunk 1
    t.remove(hs[50]); // chunk 3
    let changed: Vec<u32> = t.chunks_changed_since(synced + 1).collect();
    assert_eq!(changed, vec![1, 3]);
    assert_eq!(t.chunks_changed_since(0).count(), 4);
}

#[test]
fn stats_count_holes_and_chunks() {
    let p = pool();
    let mut t: Table<[u8; 32]> = Table::with_pool_and_chunk_bytes(p.clone(), 32 * 8);
    let hs: Vec<_> = (0..32u8).map(|i| t.insert([i; 32])).collect();
    let st = t.stats();
    assert_eq!((st.live, st.chunks, st.capacity, st.holes), (32, 4, 32, 0));
    assert_eq!(st.bytes_reserved, 4 * 256);
    for h in hs.iter().step_by(2) {
        t.remove(*h);
    }
    let st = t.stats();
    // Places 0, 2, .., 30 are free below the last object (place 31).
    assert_eq!((st.live, st.holes), (16, 16));
    assert!((st.fragmentation - 0.5).abs() < 1e-12);
    let in_use = p.stats().in_use_bytes;
    t.clear();
    assert_eq!(t.stats().chunks, 0);
    assert_eq!(
        p.stats().in_use_bytes,
        in_use - 4 * 256,
        "chunks went back to the pool"
    );
    drop(t);
    assert_eq!(p.stats().in_use_bytes, 0, "and the slots with the table");
    assert_eq!(p.stats().live_allocations, 0);
}

#[test]
fn emptied_chunks_go_back_to_the_pool() {
    let p = pool();
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(p.clone(), 8 * 4);
    let hs: Vec<_> = (0..40u64).map(|i| t.insert(i)).collect();
    let objects =
        |p: &HierarchicalPool, t: &Table<u64>| p.stats().in_use_bytes - t.stats().slot_bytes;
    assert_eq!(objects(&p, &t), 10 * 32);
    for h in &hs[..36] {
        t.remove(*h);
    }
    // One emptied chunk is kept for reuse; the rest went back.
    assert_eq!(t.stats().chunks, 2);
    assert_eq!(objects(&p, &t), 2 * 32);
    // The objects and the slot words: one run of memory each (every object is at its
    // home place, so the slots keep no place array).
    assert_eq!(p.stats().live_allocations, 2);
    assert_eq!(
        t.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        vec![36, 37, 38, 39]
    );
}

#[test]
fn iter_mut_retain_and_drain() {
    let mut t: Table<String> = Table::new();
    let hs: Vec<_> = (0..50).map(|i| t.insert(format!("n{i}"))).collect();
    for (_, s) in t.iter_mut() {
        s.push('!');
    }
    assert_eq!(t.get(hs[7]).map(String::as_str), Some("n7!"));
    t.retain(|_, s| s.len() == 3);
    assert_eq!(t.len(), 10);
    let drained: Vec<(Handle<String>, String)> = t.drain().collect();
    assert_eq!(drained.len(), 10);
    assert!(drained.iter().all(|(h, s)| hs.contains(h) && s.len() == 3));
    assert!(t.is_empty());
}

#[test]
fn zero_sized_types_work() {
    let mut t: Table<()> = Table::new();
    let hs: Vec<_> = (0..10_000).map(|_| t.insert(())).collect();
    assert_eq!(t.len(), 10_000);
    assert_eq!(t.get(hs[9_999]), Some(&()));
    assert_eq!(t.stats().bytes_reserved, 0);
    for h in hs {
        assert_eq!(t.remove(h), Some(()));
    }
    assert!(t.is_empty());
}

#[test]
fn tables_are_send_and_sync_when_their_objects_are() {
    fn both<T: Send + Sync>() {}
    both::<Table<u64>>();
    both::<Table<String>>();
}

#[test]
fn try_reserve_takes_chunks_up_front() {
    let p = pool();
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(p.clone(), 8 * 100);
    assert_eq!(t.chunk_capacity(), 64, "rounded down to a power of two");
    t.try_reserve(250).unwrap();
    assert_eq!(t.stats().chunks, 4);
    let before = p.stats().allocations;
    for i in 0..250 {
        t.insert(i);
    }
    assert_eq!(p.stats().allocations, before, "no chunk was needed");
}

#[test]
fn get_many_agrees_with_get() {
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(pool(), 8 * 50);
    let hs: Vec<_> = (0..1000u64).map(|i| t.insert(i * 3)).collect();
    for h in hs.iter().step_by(7) {
        t.remove(*h);
    }
    let mut query: Vec<Handle<u64>> = hs.iter().rev().copied().collect();
    query.push(Handle::null());
    let many = t.get_many(&query);
    assert_eq!(many.len(), query.len());
    for (h, got) in query.iter().zip(&many) {
        assert_eq!(*got, t.get(*h));
    }
    assert_eq!(
        many.iter().filter(|x| x.is_none()).count(),
        1000 / 7 + 1 + 1
    );
}

#[test]
fn get_disjoint_mut_refuses_duplicates_and_stale_handles() {
    let mut t: Table<u32> = Table::new();
    let a = t.insert(1);
    let b = t.insert(2);
    let c = t.insert(3);
    if let Some([x, y, z]) = t.get_disjoint_mut([a, b, c]) {
        std::mem::swap(x, z);
        *y *= 10;
    } else {
        panic!("three live distinct handles");
    }
    assert_eq!(
        (t.get(a), t.get(b), t.get(c)),
        (Some(&3), Some(&20), Some(&1))
    );
    assert!(t.get_disjoint_mut([a, a]).is_none());
    t.remove(b);
    assert!(t.get_disjoint_mut([a, b]).is_none());
}

#[test]
fn insert_batch_places_contiguously_after_the_last_object() {
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(pool(), 8 * 8);
    let first: Vec<_> = (0..5u64).map(|i| t.insert(i)).collect();
    t.remove(first[1]); // a hole the batch must not use
    let batch = t.insert_batch(100..120u64);
    let places: Vec<(u32, u32)> = batch
        .iter()
        .map(|h| t.location(*h).map(|l| (l.chunk, l.pos)).unwrap())
        .collect();
    let want: Vec<(u32, u32)> = (5..25u32).map(|i| (i / 8, i % 8)).collect();
    assert_eq!(places, want);
    assert_eq!(
        batch
            .iter()
            .map(|h| *t.get(*h).unwrap())
            .collect::<Vec<_>>(),
        (100..120).collect::<Vec<_>>()
    );
    assert_eq!(t.len(), 24);
}

#[test]
fn parallel_iteration_sees_every_object_once() {
    use rayon::prelude::*;
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(pool(), 8 * 64);
    let hs = t.insert_batch(0..10_000u64);
    for h in hs.iter().step_by(3) {
        t.remove(*h);
    }
    let serial: u64 = t.iter().map(|(_, v)| *v).sum();
    let parallel: u64 = t.par_iter().map(|(_, v)| *v).sum();
    assert_eq!(serial, parallel);
    t.par_iter_mut().for_each(|(_, v)| *v += 1);
    assert_eq!(
        t.iter().map(|(_, v)| *v).sum::<u64>(),
        serial + t.len() as u64
    );
    let handles: Vec<Handle<u64>> = t.par_iter().map(|(h, _)| h).collect();
    assert!(handles.iter().all(|h| t.contains(*h)));
    assert_eq!(handles.len(), t.len());
}

#[test]
fn values_walk_sparse_and_full_chunks_like_iter() {
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(pool(), 8 * 128);
    let hs = t.insert_batch(0..1000u64);
    for h in hs.iter().skip(130).step_by(3) {
        t.remove(*h); // chunk 0 stays full, the rest become sparse
    }
    let by_iter: Vec<u64> = t.iter().map(|(_, v)| *v).collect();
    let by_values: Vec<u64> = t.values().copied().collect();
    assert_eq!(by_values, by_iter);
    for v in t.values_mut() {
        *v += 1;
    }
    let after: Vec<u64> = t.values().copied().collect();
    assert_eq!(after, by_iter.iter().map(|v| v + 1).collect::<Vec<_>>());
    // Internal iteration (fold, for_each, sum) walks full chunks as slices: same objects,
    // same order.
    let mut folded = Vec::new();
    t.values().for_each(|v| folded.push(*v));
    assert_eq!(folded, after);
    assert_eq!(t.values().sum::<u64>(), after.iter().sum::<u64>());
    t.values_mut().for_each(|v| *v *= 2);
    let doubled = t.values().fold(Vec::new(), |mut acc, v| {
        acc.push(*v);
        acc
    });
    assert_eq!(doubled, after.iter().map(|v| v * 2).collect::<Vec<_>>());
}

/// A batch of more than 8 MiB of objects has its chunks made and faulted in before the
/// objects go in: the objects land where a smaller batch would put them, and a batch the
/// pool's cap refuses leaves the table and the pool as they were.
#[test]
fn large_batches_fill_their_places_in_order_and_a_refused_one_changes_nothing() {
    let capped = Arc::new(
        HierarchicalPool::new(PoolConfig {
            total_memory: Some(24 << 20),
            ..PoolConfig::default()
        })
        .unwrap(),
    );
    let mut t: Table<u64> = Table::with_pool(capped.clone());
    let small = t.try_insert_batch(0..1000u64).unwrap();
    t.remove(small[10]).unwrap();
    let large = t.try_insert_batch(1000..1_501_000u64).unwrap();
    let values: Vec<u64> = t.values().copied().collect();
    let expected: Vec<u64> = (0..1_501_000u64).filter(|&v| v != 10).collect();
    assert_eq!(values, expected, "after the highest object, in order");
    assert!(
        large
            .iter()
            .zip(1000u64..)
            .all(|(&h, v)| t.get(h) == Some(&v))
    );

    let in_use = capped.stats().in_use_bytes;
    let err = t.try_insert_batch(0..2_000_000u64).unwrap_err();
    assert!(
        matches!(err, neurostore::Error::OutOfMemory { .. }),
        "{err}"
    );
    assert_eq!(capped.stats().in_use_bytes, in_use);
    assert_eq!(t.len(), 1_500_999);
    assert!(t.values().copied().eq(expected.iter().copied()));
    // What fits still goes in, after the same highest object.
    let more = t.try_insert_batch([7u64; 100]).unwrap();
    assert_eq!(t.get(more[99]), Some(&7));
    assert_eq!(t.len(), 1_501_099);
}
