//! 1M objects of a 32-byte Pod struct in a neurostore `Table`, beside `slotmap::SlotMap`,
//! `slotmap::DenseSlotMap` and a plain `Vec<T>` indexed by `u32`, in one run: insert,
//! get of every handle in shuffled order, `get_many` of the same, iterate (sum a field),
//! `iter_mut`, churn (remove a random 50 %, insert as many, iterate), remove a random
//! half, remove all (shuffled), and bytes per live object after churn (the table's chunks
//! and slot array are pool memory, counted). Keys are shuffled before the clock starts.
//! A summary with ratios to `SlotMap` follows criterion's output.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{Obj, estimate, shuffled};
use criterion::Criterion;
use neurostore::table::{Handle, Table};
use neurostore::{Pooled, Store};
use slotmap::{DefaultKey, DenseSlotMap, SlotMap};

const N: usize = 1_000_000;

fn obj(i: usize) -> Obj {
    Obj {
        v: i as f64,
        i: 0.5,
        w: 1.0,
        id: i as u64,
    }
}

/// Times `f` once per criterion iteration on fresh state from `setup`, per element.
fn per_element<S>(
    c: &mut Criterion,
    group: &str,
    name: &str,
    mut setup: impl FnMut() -> S,
    mut f: impl FnMut(&mut S),
) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut s = setup();
                let t = Instant::now();
                f(&mut s);
                total += t.elapsed();
                drop(black_box(s));
            }
            total
        })
    });
    g.finish();
}

fn table_full() -> (Table<Obj>, Vec<Handle<Obj>>) {
    let mut t = Table::new();
    let hs = (0..N).map(|i| t.insert(obj(i))).collect();
    (t, hs)
}
fn slotmap_full() -> (SlotMap<DefaultKey, Obj>, Vec<DefaultKey>) {
    let mut m = SlotMap::new();
    let ks = (0..N).map(|i| m.insert(obj(i))).collect();
    (m, ks)
}
fn dense_full() -> (DenseSlotMap<DefaultKey, Obj>, Vec<DefaultKey>) {
    let mut m = DenseSlotMap::new();
    let ks = (0..N).map(|i| m.insert(obj(i))).collect();
    (m, ks)
}
fn vec_full() -> (Vec<Obj>, Vec<u32>) {
    ((0..N).map(obj).collect(), (0..N as u32).collect())
}

/// What churn and removal need of a keyed container.
trait Keyed {
    type Key: Copy;
    fn remove_key(&mut self, k: Self::Key) -> Option<Obj>;
    fn insert_obj(&mut self, o: Obj);
    fn sum(&self) -> f64;
}

/// The three keyed containers share method names, so one body serves them all.
macro_rules! impl_keyed {
    ($container:ty, $key:ty) => {
        impl Keyed for $container {
            type Key = $key;
            fn remove_key(&mut self, k: $key) -> Option<Obj> {
                self.remove(k)
            }
            fn insert_obj(&mut self, o: Obj) {
                self.insert(o);
            }
            fn sum(&self) -> f64 {
                self.values().map(|o| o.v).sum()
            }
        }
    };
}

impl_keyed!(Table<Obj>, Handle<Obj>);
impl_keyed!(SlotMap<DefaultKey, Obj>, DefaultKey);
impl_keyed!(DenseSlotMap<DefaultKey, Obj>, DefaultKey);

/// Removes the first half of `order` (the keys shuffled), inserts as many, iterates.
fn churn<M: Keyed>(m: &mut M, order: &[M::Key]) {
    for k in &order[..N / 2] {
        black_box(m.remove_key(*k));
    }
    for i in 0..N / 2 {
        m.insert_obj(obj(i));
    }
    black_box(m.sum());
}

/// Removes every object, in the order of `order` (the keys shuffled).
fn remove_all<M: Keyed>(m: &mut M, order: &[M::Key]) {
    for k in order {
        black_box(m.remove_key(*k));
    }
}

/// Removes the first half of `order` (the keys shuffled).
fn remove_half<M: Keyed>(m: &mut M, order: &[M::Key]) {
    for k in &order[..N / 2] {
        black_box(m.remove_key(*k));
    }
}

/// A full container and its keys shuffled with `seed`, made outside the timed part.
fn shuffled_full<M, K: Copy>(full: fn() -> (M, Vec<K>), seed: u64) -> impl FnMut() -> (M, Vec<K>) {
    move || {
        let (m, keys) = full();
        (m, shuffled(&keys, seed))
    }
}

/// Runs `$f` (generic over [`Keyed`]) on a full table, `SlotMap` and `DenseSlotMap` in
/// group `$group`, with the keys shuffled by `$seed` beforehand (not timed).
macro_rules! for_each_keyed {
    ($c:expr, $group:expr, $f:ident, $seed:expr) => {
        per_element(
            $c,
            $group,
            "table",
            shuffled_full(table_full, $seed),
            |(t, q)| $f(t, q),
        );
        per_element(
            $c,
            $group,
            "slotmap",
            shuffled_full(slotmap_full, $seed),
            |(m, q)| $f(m, q),
        );
        per_element(
            $c,
            $group,
            "dense_slotmap",
            shuffled_full(dense_full, $seed),
            |(m, q)| $f(m, q),
        );
    };
}

fn bench(c: &mut Criterion) {
    // insert
    per_element(c, "insert", "table", Table::<Obj>::new, |t| {
        for i in 0..N {
            black_box(t.insert(obj(i)));
        }
    });
    per_element(
        c,
        "insert",
        "slotmap",
        SlotMap::<DefaultKey, Obj>::new,
        |m| {
            for i in 0..N {
                black_box(m.insert(obj(i)));
            }
        },
    );
    per_element(
        c,
        "insert",
        "dense_slotmap",
        DenseSlotMap::<DefaultKey, Obj>::new,
        |m| {
            for i in 0..N {
                black_box(m.insert(obj(i)));
            }
        },
    );
    per_element(c, "insert", "vec", Vec::<Obj>::new, |v| {
        for i in 0..N {
            v.push(obj(i));
        }
    });

    // shuffled get, get_many
    {
        let (t, hs) = table_full();
        let q = shuffled(&hs, 1);
        let (m, ks) = slotmap_full();
        let mq = shuffled(&ks, 1);
        let (d, dks) = dense_full();
        let dq = shuffled(&dks, 1);
        let (v, is) = vec_full();
        let vq = shuffled(&is, 1);
        let mut g = c.benchmark_group("get_shuffled");
        g.sample_size(10).measurement_time(Duration::from_secs(3));
        g.bench_function("table", |b| {
            b.iter(|| {
                q.iter()
                    .map(|h| t.get(*h).map_or(0.0, |o| o.v))
                    .sum::<f64>()
            })
        });
        g.bench_function("slotmap", |b| {
            b.iter(|| {
                mq.iter()
                    .map(|k| m.get(*k).map_or(0.0, |o| o.v))
                    .sum::<f64>()
            })
        });
        g.bench_function("dense_slotmap", |b| {
            b.iter(|| {
                dq.iter()
                    .map(|k| d.get(*k).map_or(0.0, |o| o.v))
                    .sum::<f64>()
            })
        });
        g.bench_function("vec", |b| {
            b.iter(|| {
                vq.iter()
                    .map(|i| v.get(*i as usize).map_or(0.0, |o| o.v))
                    .sum::<f64>()
            })
        });
        g.bench_function("table_get_many", |b| {
            b.iter(|| {
                let mut sum = 0.0;
                t.for_each_many(&q, |o| sum += o.map_or(0.0, |o| o.v));
                sum
            })
        });
        g.finish();

        let mut g = c.benchmark_group("iterate_sum");
        g.sample_size(20);
        g.bench_function("table", |b| b.iter(|| t.values().map(|o| o.v).sum::<f64>()));
        g.bench_function("table_iter_with_handles", |b| {
            b.iter(|| t.iter().map(|(_, o)| o.v).sum::<f64>())
        });
        g.bench_function("slotmap", |b| {
            b.iter(|| m.values().map(|o| o.v).sum::<f64>())
        });
        g.bench_function("dense_slotmap", |b| {
            b.iter(|| d.values().map(|o| o.v).sum::<f64>())
        });
        g.bench_function("vec", |b| b.iter(|| v.iter().map(|o| o.v).sum::<f64>()));
        g.finish();
    }

    // iter_mut
    {
        let (mut t, _) = table_full();
        let (mut m, _) = slotmap_full();
        let (mut d, _) = dense_full();
        let (mut v, _) = vec_full();
        let mut g = c.benchmark_group("iter_mut");
        g.sample_size(20);
        g.bench_function("table", |b| {
            b.iter(|| t.values_mut().for_each(|o| o.i += 1.0))
        });
        g.bench_function("slotmap", |b| {
            b.iter(|| m.values_mut().for_each(|o| o.i += 1.0))
        });
        g.bench_function("dense_slotmap", |b| {
            b.iter(|| d.values_mut().for_each(|o| o.i += 1.0))
        });
        g.bench_function("vec", |b| b.iter(|| v.iter_mut().for_each(|o| o.i += 1.0)));
        g.finish();
    }

    // churn: remove a random half, insert as many, iterate
    for_each_keyed!(c, "churn", churn, 2);
    per_element(c, "churn", "vec", shuffled_full(vec_full, 2), |(v, q)| {
        // A Vec has no stable names: swap_remove at random positions, then push.
        for i in &q[..N / 2] {
            let i = *i as usize % v.len();
            v.swap_remove(i);
        }
        for i in 0..N / 2 {
            v.push(obj(i));
        }
        black_box(v.iter().map(|o| o.v).sum::<f64>());
    });

    // remove a random half
    for_each_keyed!(c, "remove_half", remove_half, 4);

    // remove all
    for_each_keyed!(c, "remove_all", remove_all, 3);
    per_element(c, "remove_all", "vec", vec_full, |(v, _)| {
        while let Some(o) = v.pop() {
            black_box(o);
        }
    });
}

/// A spike in flight.
#[derive(Pooled, Clone, Copy)]
struct Spike {
    source: u64,
    time_ms: f64,
    weight: f64,
    target: u64,
}

/// The same spike, declared short-lived: made and removed within a few steps.
#[derive(Pooled, Clone, Copy)]
#[pooled(lifetime = "short")]
struct ShortSpike(Spike);

fn spike(i: usize) -> Spike {
    Spike {
        source: i as u64,
        time_ms: 1.0,
        weight: 2.0,
        target: i as u64 + 1,
    }
}

/// Spikes made per round of the short-lived workload, then all delivered (removed).
const SPIKES_PER_ROUND: usize = 100_000;
/// Rounds timed per sample.
const ROUNDS: usize = 20;

/// The spikes of a simulation in a `Store` under its default defragmentation policy: each
/// round inserts `SPIKES_PER_ROUND`, then removes them all in a shuffled order.
fn spike_rounds<S: Pooled + neurostore::Trace + Send + Sync>(make: impl Fn(usize) -> S) {
    let mut store = Store::new();
    store.register::<S>().expect("fresh store");
    let mut handles = Vec::with_capacity(SPIKES_PER_ROUND);
    for round in 0..ROUNDS {
        handles.clear();
        handles.extend((0..SPIKES_PER_ROUND).map(|i| store.insert(make(i))));
        for h in shuffled(&handles, round as u64 + 1) {
            black_box(store.remove(h));
        }
    }
}

fn bench_short_lived(c: &mut Criterion) {
    let mut g = c.benchmark_group("short_lived_rounds");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function("store_short", |b| {
        b.iter(|| spike_rounds(|i| ShortSpike(spike(i))))
    });
    g.bench_function("store_unhinted", |b| b.iter(|| spike_rounds(spike)));
    g.bench_function("slotmap", |b| {
        b.iter(|| {
            let mut m: SlotMap<DefaultKey, Obj> = SlotMap::new();
            let mut keys = Vec::with_capacity(SPIKES_PER_ROUND);
            for round in 0..ROUNDS {
                keys.clear();
                keys.extend((0..SPIKES_PER_ROUND).map(|i| m.insert(obj(i))));
                for k in shuffled(&keys, round as u64 + 1) {
                    black_box(m.remove(k));
                }
            }
        })
    });
    g.finish();
}

/// Removes a random half and inserts as many, without the final pass.
fn churn_only<M: Keyed>(m: &mut M, keys: &[M::Key]) {
    let q = shuffled(keys, 2);
    for k in &q[..N / 2] {
        m.remove_key(*k);
    }
    for i in 0..N / 2 {
        m.insert_obj(obj(i));
    }
}

fn bytes_after_churn() -> [f64; 4] {
    let (mut t, hs) = table_full();
    churn_only(&mut t, &hs);
    let st = t.stats();
    let table = (st.bytes_reserved + st.metadata_bytes) as f64 / t.len() as f64;
    let (mut m, ks) = slotmap_full();
    churn_only(&mut m, &ks);
    // SlotMap's slot: the value (or a free-list link) and a u32 version, padded.
    let slotmap = (m.capacity() * (std::mem::size_of::<Obj>() + 8)) as f64 / m.len() as f64;
    // DenseSlotMap: values and keys side by side, plus 8-byte slots.
    let (mut d, dks) = dense_full();
    churn_only(&mut d, &dks);
    let dense = (d.capacity() * (std::mem::size_of::<Obj>() + 8 + 8)) as f64 / d.len() as f64;
    [table, slotmap, dense, std::mem::size_of::<Obj>() as f64]
}

fn summary() {
    let peers = ["table", "slotmap", "dense_slotmap", "vec"];
    println!("\nsummary: ns per element (ratio to SlotMap; below 1 means faster than SlotMap)");
    println!(
        "{:<22} {:>16} {:>12} {:>16} {:>16}",
        "case", peers[0], peers[1], peers[2], peers[3]
    );
    // Every benchmark iteration touches N elements (churn: N/2 removes, N/2 inserts and
    // one pass over N), so per element is the estimate over N; removing half touches N/2.
    let per_elem = |group: &str, p: &str| {
        let n = if group == "remove_half" { N / 2 } else { N };
        estimate(group, p).map(|ns| ns / n as f64)
    };
    for group in [
        "insert",
        "get_shuffled",
        "iterate_sum",
        "iter_mut",
        "churn",
        "remove_half",
        "remove_all",
    ] {
        let base = per_elem(group, "slotmap");
        let cells: Vec<String> = peers
            .iter()
            .map(|p| match (per_elem(group, p), base) {
                (Some(t), Some(b)) => format!("{t:.2} ({:.2}x)", t / b),
                (Some(t), None) => format!("{t:.2}"),
                _ => "-".into(),
            })
            .collect();
        println!(
            "{:<22} {:>16} {:>12} {:>16} {:>16}",
            group, cells[0], cells[1], cells[2], cells[3]
        );
    }
    if let (Some(t), Some(b)) = (
        per_elem("get_shuffled", "table_get_many"),
        per_elem("get_shuffled", "slotmap"),
    ) {
        println!(
            "{:<22} {:>16}",
            "get_many (table)",
            format!("{t:.2} ({:.2}x)", t / b)
        );
    }
    if let (Some(t), Some(b)) = (
        per_elem("iterate_sum", "table_iter_with_handles"),
        per_elem("iterate_sum", "slotmap"),
    ) {
        println!(
            "{:<22} {:>16}",
            "iter with handles",
            format!("{t:.2} ({:.2}x)", t / b)
        );
    }
    let per_spike = |p: &str| {
        estimate("short_lived_rounds", p).map(|ns| ns / (SPIKES_PER_ROUND * ROUNDS) as f64)
    };
    if let (Some(short), Some(plain), Some(slotmap)) = (
        per_spike("store_short"),
        per_spike("store_unhinted"),
        per_spike("slotmap"),
    ) {
        println!(
            "spike rounds, ns per spike made and removed: store, lifetime = \"short\" {short:.2} \
             ({:.2}x SlotMap), store, no lifetime hint {plain:.2} ({:.2}x), slotmap {slotmap:.2}",
            short / slotmap,
            plain / slotmap
        );
    }
    let bytes = bytes_after_churn();
    println!(
        "bytes per live object after churn: table {:.1}, slotmap {:.1}, dense_slotmap {:.1}, vec {:.1}",
        bytes[0], bytes[1], bytes[2], bytes[3]
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    bench_short_lived(&mut c);
    c.final_summary();
    if !std::env::args().any(|a| a == "--list" || a == "--test") {
        summary();
    }
}
