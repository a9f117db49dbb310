//! Model test of defragmentation: random table operations interleaved with `defragment`,
//! `defragment_step` under random budgets, `compact_by_key` and `compact_in_order`, against a `HashMap`
//! reference. After every step: every live handle resolves to its value, stale handles stay
//! stale, iteration yields exactly the live multiset, drops are exact; after a full
//! defragment the table has no hole and holds no empty chunk; after a compaction storage
//! order is sorted by the key, stably (or, compacted in order, is the order it was).

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use neurostore::defrag::{DefragBudget, FragmentationPattern};
use neurostore::table::{Handle, Table};
use neurostore::{HierarchicalPool, PoolConfig};
use proptest::prelude::*;

mod common;
use common::Counted;

#[derive(Clone, Debug)]
enum Op {
    Insert(u8),
    InsertBatch(u8),
    Remove(usize),
    RemoveRun(usize, u8),
    GetMut(usize),
    Defragment,
    Step(usize, usize),
    Compact(u8),
    CompactInOrder,
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<u8>().prop_map(Op::Insert),
        2 => any::<u8>().prop_map(Op::InsertBatch),
        6 => any::<usize>().prop_map(Op::Remove),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(a, n)| Op::RemoveRun(a, n)),
        2 => any::<usize>().prop_map(Op::GetMut),
        2 => Just(Op::Defragment),
        3 => (0usize..40, 0usize..600).prop_map(|(m, b)| Op::Step(m, b)),
        2 => (1u8..8).prop_map(Op::Compact),
        2 => Just(Op::CompactInOrder),
        1 => Just(Op::Clear),
    ]
}

struct Harness {
    table: Table<Counted>,
    model: HashMap<Handle<Counted>, u64>,
    live: Vec<Handle<Counted>>,
    stale: Vec<Handle<Counted>>,
    drops: Rc<Cell<u64>>,
    created: u64,
    next_id: u64,
}

impl Harness {
    fn value(&mut self) -> Counted {
        self.created += 1;
        self.next_id += 1;
        Counted {
            id: self.next_id,
            drops: self.drops.clone(),
        }
    }

    fn forget(&mut self, i: usize) -> Handle<Counted> {
        let h = self.live.swap_remove(i);
        self.model.remove(&h);
        self.stale.push(h);
        h
    }

    fn check(&self) {
        assert_eq!(self.table.len(), self.model.len());
        for (&h, &id) in &self.model {
            assert_eq!(self.table.get(h).map(|c| c.id), Some(id), "{h:?}");
        }
        for &h in &self.stale {
            assert!(self.table.get(h).is_none(), "stale {h:?} resolves");
        }
        let mut seen: Vec<(Handle<Counted>, u64)> =
            self.table.iter().map(|(h, c)| (h, c.id)).collect();
        seen.sort();
        let mut want: Vec<(Handle<Counted>, u64)> =
            self.model.iter().map(|(&h, &id)| (h, id)).collect();
        want.sort();
        assert_eq!(seen, want, "iteration yields the live set");
        assert_eq!(
            self.drops.get(),
            self.created - self.model.len() as u64,
            "every removed object dropped once, no live one dropped"
        );
    }

    /// No hole below the highest object and no empty chunk.
    fn check_dense(&self) {
        let report = self.table.fragmentation();
        assert_eq!(report.holes, 0, "{report:?}");
        assert_eq!(report.pattern, FragmentationPattern::Dense);
        let stats = self.table.stats();
        let per = self.table.chunk_capacity() as usize;
        assert_eq!(stats.chunks, self.table.len().div_ceil(per), "{stats:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn defragmentation_keeps_every_handle(
        chunk_bytes in prop_oneof![Just(16usize), Just(256), Just(4096)],
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let pool = Arc::new(HierarchicalPool::new(PoolConfig::default()).unwrap());
        let mut h = Harness {
            table: Table::with_pool_and_chunk_bytes(pool, chunk_bytes),
            model: HashMap::new(),
            live: Vec::new(),
            stale: Vec::new(),
            drops: Rc::new(Cell::new(0)),
            created: 0,
            next_id: 0,
        };
        for op in ops {
            match op {
                Op::Insert(n) => {
                    for _ in 0..(n % 8) + 1 {
                        let v = h.value();
                        let id = v.id;
                        let handle = h.table.insert(v);
                        h.model.insert(handle, id);
                        h.live.push(handle);
                    }
                }
                Op::InsertBatch(n) => {
                    let values: Vec<Counted> = (0..n % 40).map(|_| h.value()).collect();
                    let ids: Vec<u64> = values.iter().map(|v| v.id).collect();
                    for (handle, id) in h.table.insert_batch(values).into_iter().zip(ids) {
                        h.model.insert(handle, id);
                        h.live.push(handle);
                    }
                }
                Op::Remove(i) => {
                    if !h.live.is_empty() {
                        let handle = h.forget(i % h.live.len());
                        prop_assert!(h.table.remove(handle).is_some());
                    }
                }
                Op::RemoveRun(i, n) => {
                    for k in 0..n % 30 {
                        if h.live.is_empty() {
                            break;
                        }
                        let handle = h.forget((i + k as usize) % h.live.len());
                        prop_assert!(h.table.remove(handle).is_some());
                    }
                }
                Op::GetMut(i) => {
                    if !h.live.is_empty() {
                        let handle = h.live[i % h.live.len()];
                        h.next_id += 1;
                        let id = h.next_id;
                        h.table.get_mut(handle).unwrap().id = id;
                        h.model.insert(handle, id);
                    }
                }
                Op::Defragment => {
                    let before = h.table.fragmentation();
                    let report = h.table.defragment();
                    prop_assert_eq!(report.fragmentation_before, before.ratio);
                    prop_assert_eq!(report.fragmentation_after, 0.0);
                    prop_assert!(report.moved <= before.holes);
                    prop_assert_eq!(report.bytes_moved, report.moved * size_of::<Counted>());
                    h.check_dense();
                }
                Op::Step(max_moves, max_bytes) => {
                    let budget = DefragBudget { max_bytes, max_moves };
                    let step = h.table.defragment_step(budget);
                    prop_assert!(step.moved <= max_moves);
                    prop_assert!(step.bytes_moved <= max_bytes);
                    if step.done {
                        h.check_dense();
                    }
                }
                Op::Compact(m) => {
                    let m = u64::from(m);
                    let before: Vec<u64> = h.table.values().map(|c| c.id).collect();
                    h.table.compact_by_key(|c| c.id % m).unwrap();
                    let after: Vec<u64> = h.table.values().map(|c| c.id).collect();
                    let mut want = before.clone();
                    want.sort_by_key(|id| id % m); // stable, as compact_by_key is
                    prop_assert_eq!(after, want);
                    h.check_dense();
                }
                Op::CompactInOrder => {
                    let before: Vec<u64> = h.table.values().map(|c| c.id).collect();
                    let report = h.table.compact_in_order().unwrap();
                    let after: Vec<u64> = h.table.values().map(|c| c.id).collect();
                    prop_assert_eq!(after, before, "storage order is kept");
                    prop_assert!(report.moved <= h.model.len());
                    prop_assert_eq!(report.bytes_moved, report.moved * size_of::<Counted>());
                    h.check_dense();
                }
                Op::Clear => {
                    h.table.clear();
                    let all: Vec<_> = h.live.drain(..).collect();
                    for handle in all {
                        h.model.remove(&handle);
                        h.stale.push(handle);
                    }
                }
            }
            h.check();
        }
        drop(h.table);
        prop_assert_eq!(h.drops.get(), h.created);
    }
}

#[test]
fn patterns_tell_scattered_from_concentrated_holes() {
    let mut t: Table<u64> = Table::new();
    let hs = t.insert_batch(0..100_000u64);
    // Remove most of a contiguous region: the chunks in the middle turn sparse.
    for h in hs[20_000..60_000].iter().filter(|h| h.index() % 8 != 0) {
        t.remove(*h);
    }
    let report = t.fragmentation();
    assert_eq!(report.pattern, FragmentationPattern::Holes, "{report:?}");
    assert!(report.sparse_chunks >= 4);
    let mut t: Table<u64> = Table::new();
    let hs = t.insert_batch(0..100_000u64);
    for h in hs.iter().step_by(3) {
        t.remove(*h);
    }
    let report = t.fragmentation();
    assert_eq!(
        report.pattern,
        FragmentationPattern::Scattered,
        "{report:?}"
    );
    assert_eq!(report.sparse_chunks, 0);
    assert!((report.ratio - 1.0 / 3.0).abs() < 0.01, "{report:?}");
}

#[test]
fn defragmentation_returns_chunks_and_the_pool_gives_them_back() {
    let pool = Arc::new(HierarchicalPool::new(PoolConfig::default()).unwrap());
    let mut t: Table<[u64; 4]> = Table::with_pool(pool.clone());
    let hs = t.insert_batch((0..200_000u64).map(|i| [i; 4]));
    for h in hs.iter().filter(|h| h.index() % 3 != 0) {
        t.remove(*h);
    }
    let chunks_before = t.stats().chunks;
    let reserved_before = pool.stats().reserved_bytes;
    let report = t.defragment();
    assert!(report.chunks_released >= chunks_before / 2, "{report:?}");
    assert_eq!(
        t.stats().chunks,
        t.len().div_ceil(t.chunk_capacity() as usize)
    );
    // Wholly emptied pool regions went back to the OS. (The pool's ratio
    // 1 - in_use / reserved may still rise: freed chunks that share a region with kept
    // ones stay reserved, coalesced into one free block.)
    assert!(
        pool.stats().reserved_bytes < reserved_before,
        "the pool gives the emptied regions back: {report:?}"
    );
    for (i, h) in hs.iter().enumerate().filter(|(_, h)| h.index() % 3 == 0) {
        assert_eq!(t.get(*h), Some(&[i as u64; 4]));
    }
    // Locations changed, handles did not; the layout version says so.
    assert!(t.layout_version() > 0);
}

#[test]
fn the_store_policy_defragments_after_removals() {
    let mut store = neurostore::Store::new();
    assert_eq!(store.defrag_policy().map(|p| p.threshold()), Some(0.3));
    let hs: Vec<_> = (0..100_000u64).map(|i| store.insert(i)).collect();
    // Remove a random 60 %: without the policy the ratio would reach about 0.6.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut kept = Vec::new();
    for (i, &h) in hs.iter().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 10 < 6 {
            assert_eq!(store.remove(h), Some(i as u64));
        } else {
            kept.push((i as u64, h));
        }
    }
    let ratio = store.table::<u64>().unwrap().fragmentation().ratio;
    assert!(
        ratio < 0.35,
        "the policy kept fragmentation near its threshold: {ratio}"
    );
    assert!(
        store.table::<u64>().unwrap().layout_version() > 0,
        "it defragmented"
    );
    for (i, h) in kept {
        assert_eq!(store.get(h), Some(&i));
    }

    store.set_defrag_policy(None);
    let hs: Vec<_> = (0..10_000u32).map(|i| store.insert(i)).collect();
    for h in hs.iter().filter(|h| h.index() % 4 != 0) {
        store.remove(*h);
    }
    let version = store.table::<u32>().unwrap().layout_version();
    assert_eq!(version, 0, "no policy, no moves");
}

#[test]
fn moves_mark_both_chunks_changed() {
    let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(
        Arc::new(HierarchicalPool::new(PoolConfig::default()).unwrap()),
        8 * 64,
    );
    let hs = t.insert_batch(0..640u64); // ten chunks of 64
    t.remove(hs[3]); // a hole in chunk 0
    let synced = t.advance_epoch() + 1;
    assert_eq!(t.chunks_changed_since(synced).count(), 0);
    let report = t.defragment();
    assert_eq!(report.moved, 1);
    let changed: Vec<u32> = t.chunks_changed_since(synced).collect();
    assert_eq!(
        changed,
        vec![0, 9],
        "the hole's chunk and the moved object's chunk"
    );
    assert_eq!(t.get(hs[639]), Some(&639));
    assert_eq!(t.location(hs[639]).map(|l| (l.chunk, l.pos)), Some((0, 3)));
}

#[test]
fn compaction_of_a_dense_sorted_table_moves_nothing_and_a_hole_is_still_closed() {
    let mut t: Table<(u32, u32)> = Table::new();
    let hs = t.insert_batch((0..10_000u32).map(|i| (i / 100, i)));
    let layout_before = t.layout_version();
    let report = t.compact_by_key(|&(k, _)| k).unwrap();
    assert_eq!(report.moved, 0, "already dense and in key order");
    assert_eq!(t.layout_version(), layout_before, "nothing moved");
    assert_eq!(t.get(hs[1234]), Some(&(12, 1234)));

    // In key order but with a hole: the objects after it must move down.
    t.remove(hs[10]);
    let report = t.compact_by_key(|&(k, _)| k).unwrap();
    assert_eq!(report.moved, 10_000 - 1 - 10);
    assert_eq!(t.fragmentation().holes, 0);
    assert_eq!(t.get(hs[9999]), Some(&(99, 9999)));

    // Dense but out of order: sorted.
    let mut u: Table<u32> = Table::new();
    u.insert_batch([3, 1, 2]);
    assert!(u.compact_by_key(|&v| v).unwrap().moved > 0);
    assert_eq!(u.values().copied().collect::<Vec<_>>(), [1, 2, 3]);
}
