//! Model test of `Table<T>` against a `HashMap` reference: random insert / get /
//! get_mut / remove / retain / clear sequences with drop counting, checking after every
//! step that every live handle resolves to its value, stale handles stay stale, iteration
//! yields exactly the live set, every object is dropped exactly once, and a
//! `slotmap::SecondaryMap` keyed by the table's handles agrees with the table; and that a
//! new object takes a place no higher than the lowest free place of a chunk in use.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use neurostore::table::{Handle, Table};
use neurostore::{HierarchicalPool, PoolConfig};
use proptest::prelude::*;
use slotmap::SecondaryMap;

mod common;
use common::Counted;

#[derive(Clone, Debug)]
enum Op {
    Insert,
    Get(usize),
    GetMut(usize),
    Remove(usize),
    RemoveStale(usize),
    RetainEven,
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => Just(Op::Insert),
        3 => any::<usize>().prop_map(Op::Get),
        2 => any::<usize>().prop_map(Op::GetMut),
        5 => any::<usize>().prop_map(Op::Remove),
        1 => any::<usize>().prop_map(Op::RemoveStale),
        1 => Just(Op::RetainEven),
        1 => Just(Op::Clear),
    ]
}

/// The table's place of `h`'s object, counting every chunk's places.
fn global_place<T>(table: &Table<T>, h: Handle<T>) -> u64 {
    let loc = table.location(h).expect("live handle");
    u64::from(loc.chunk) * u64::from(table.chunk_capacity()) + u64::from(loc.pos)
}

/// The places of the table's objects, in order.
fn occupied_places<T>(table: &Table<T>) -> Vec<u64> {
    let mut places: Vec<u64> = table.iter().map(|(h, _)| global_place(table, h)).collect();
    places.sort_unstable();
    places
}

/// The lowest free place of a chunk of `per_chunk` places that holds an object, if any.
fn lowest_free_in_a_used_chunk(sorted_places: &[u64], per_chunk: u64) -> Option<u64> {
    let mut chunks: Vec<u64> = sorted_places.iter().map(|p| p / per_chunk).collect();
    chunks.dedup();
    chunks
        .iter()
        .flat_map(|c| c * per_chunk..(c + 1) * per_chunk)
        .find(|p| sorted_places.binary_search(p).is_err())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn table_matches_a_hashmap(chunk_bytes in prop_oneof![Just(64usize), Just(1024), Just(65536)], ops in prop::collection::vec(op(), 1..300)) {
        let pool = Arc::new(HierarchicalPool::new(PoolConfig::default()).unwrap());
        let drops = Rc::new(Cell::new(0u64));
        let mut table: Table<Counted> = Table::with_pool_and_chunk_bytes(pool.clone(), chunk_bytes);
        let mut model: HashMap<Handle<Counted>, u64> = HashMap::new();
        let mut side: SecondaryMap<Handle<Counted>, u64> = SecondaryMap::new();
        let mut live: Vec<Handle<Counted>> = Vec::new();
        let mut stale: Vec<Handle<Counted>> = Vec::new();
        let (mut made, mut next_id) = (0u64, 0u64);
        for op in ops {
            match op {
                Op::Insert => {
                    next_id += 1;
                    made += 1;
                    let places = occupied_places(&table);
                    let h = table.insert(Counted { id: next_id, drops: drops.clone() });
                    let place = global_place(&table, h);
                    prop_assert!(places.binary_search(&place).is_err(), "place {} was taken", place);
                    if let Some(free) = lowest_free_in_a_used_chunk(&places, u64::from(table.chunk_capacity())) {
                        // A kept empty chunk below it may come first.
                        prop_assert!(place <= free, "place {} past the free place {}", place, free);
                    }
                    prop_assert!(!model.contains_key(&h), "a live handle was handed out twice");
                    prop_assert!(!stale.contains(&h), "a stale handle was handed out again");
                    model.insert(h, next_id);
                    prop_assert_eq!(side.insert(h, next_id), None, "no older value under a fresh handle");
                    live.push(h);
                }
                Op::Get(i) if !live.is_empty() => {
                    let h = live[i % live.len()];
                    prop_assert_eq!(table.get(h).map(|c| c.id), Some(model[&h]));
                }
                Op::GetMut(i) if !live.is_empty() => {
                    let h = live[i % live.len()];
                    next_id += 1;
                    table.get_mut(h).unwrap().id = next_id;
                    model.insert(h, next_id);
                    side[h] = next_id;
                }
                Op::Remove(i) if !live.is_empty() => {
                    let h = live.swap_remove(i % live.len());
                    let before = drops.get();
                    let v = table.remove(h).expect("live handle");
                    prop_assert_eq!(v.id, model.remove(&h).unwrap());
                    prop_assert_eq!(side.remove(h), Some(v.id));
                    drop(v);
                    prop_assert_eq!(drops.get(), before + 1);
                    stale.push(h);
                }
                Op::RemoveStale(i) if !stale.is_empty() => {
                    let h = stale[i % stale.len()];
                    let before = (drops.get(), table.len());
                    prop_assert!(table.remove(h).is_none());
                    prop_assert_eq!((drops.get(), table.len()), before, "a stale remove changed something");
                }
                Op::RetainEven => {
                    table.retain(|_, c| c.id % 2 == 0);
                    let gone: Vec<_> = model.iter().filter(|(_, id)| **id % 2 != 0).map(|(h, _)| *h).collect();
                    for h in gone {
                        model.remove(&h);
                        side.remove(h);
                        live.retain(|x| *x != h);
                        stale.push(h);
                    }
                }
                Op::Clear => {
                    table.clear();
                    stale.append(&mut live);
                    model.clear();
                    side.clear();
                }
                _ => {}
            }
            // Invariants after every step.
            prop_assert_eq!(table.len(), model.len());
            prop_assert_eq!(drops.get(), made - model.len() as u64, "drops are exact");
            for (h, id) in &model {
                prop_assert_eq!(table.get(*h).map(|c| c.id), Some(*id));
            }
            for h in &stale {
                prop_assert!(table.get(*h).is_none() && !table.contains(*h), "{h:?} came back");
                prop_assert!(!side.contains_key(*h), "{h:?} is stale in the secondary map too");
            }
            prop_assert_eq!(side.len(), model.len());
            for (h, id) in &side {
                prop_assert_eq!(table.get(h).map(|c| c.id), Some(*id), "keys come back as live handles");
            }
            let mut seen: Vec<(Handle<Counted>, u64)> = table.iter().map(|(h, c)| (h, c.id)).collect();
            let mut want: Vec<(Handle<Counted>, u64)> = model.iter().map(|(h, id)| (*h, *id)).collect();
            seen.sort();
            want.sort();
            prop_assert_eq!(seen, want);
            for (h, _) in table.iter() {
                let loc = table.location(h).unwrap();
                prop_assert!(loc.pos < table.chunk_capacity());
            }
            let st = table.stats();
            prop_assert_eq!(st.live, model.len());
            prop_assert!(st.capacity >= st.live);
            prop_assert_eq!(
                pool.stats().in_use_bytes,
                st.bytes_reserved + st.slot_bytes,
                "the chunks and the slots are the table's pool memory"
            );
        }
        drop(table);
        prop_assert_eq!(drops.get(), made, "dropping the table drops every object once");
        prop_assert_eq!(pool.stats().live_allocations, 0, "every chunk went back to the pool");
    }
}
