//! Snapshot save and load of a 1 GB Pod store: 32M 32-byte neurons in one table, written
//! to a temporary file (fsync and rename included) and read back into a new store; of
//! the same table after a random third of its objects was removed (its slots and places
//! no longer in runs), and after that compacted in order (every object away from its
//! home place); and a checkpoint of a running `NeuralGraph` of the same object
//! bytes (64M 16-byte synapses, laid out for the step, with input in flight).
//!
//! Beside it, from the same run: the same 32M objects in a `slotmap::SlotMap` through
//! serde + bincode 2 (buffered file, fsync included), and the raw rate of the same disk
//! (one 1 GB buffer written with `write_all` + fsync, and read back with `read_exact`;
//! and written as a save writes, in 4 MiB pieces with an fdatasync every 64 MiB on a
//! second thread).
//!
//! Loads read a file that the save just wrote, so it is in the page cache: the figures
//! are of the software path (parsing, checking, building), not of the disk's read rate.
//! The file lives next to the build output (`target/snapshot-bench/`), on the disk the
//! project is on. `NEUROSTORE_SNAPSHOT_OBJECTS` overrides the object count.

mod common;

use std::fs::File;
use std::hint::black_box;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::estimate;
use criterion::{Criterion, SamplingMode, Throughput};
use neurostore::neural::{NeuralGraph, NeuronParams};
use neurostore::snapshot::TypeRegistry;
use neurostore::{Pooled, Store};
use serde::{Deserialize, Serialize};

/// A 32-byte neuron: membrane state and parameters.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    bytemuck::Pod,
    bytemuck::Zeroable,
    Pooled,
    Serialize,
    Deserialize,
)]
#[pooled(pod, kind = "neuron")]
struct Cell {
    v_m: f32,
    i_syn: f32,
    v_th: f32,
    tau: f32,
    c_m: f32,
    refractory: u32,
    last_spike: u64,
}

fn objects() -> usize {
    std::env::var("NEUROSTORE_SNAPSHOT_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32 << 20)
}

fn cell(i: usize) -> Cell {
    Cell {
        v_m: -65.0 + (i % 15) as f32,
        i_syn: i as f32 * 1e-6,
        v_th: -50.0,
        tau: 10.0,
        c_m: 250.0,
        refractory: (i % 20) as u32,
        last_spike: i as u64,
    }
}

fn dir() -> PathBuf {
    let d = PathBuf::from("target/snapshot-bench");
    std::fs::create_dir_all(&d).expect("a bench directory under target/");
    d
}

fn fsync_dir(path: &Path) {
    File::open(path.parent().expect("a file in a directory"))
        .and_then(|d| d.sync_all())
        .expect("fsync of the directory");
}

/// The bench's table with a random third of its objects removed (xorshift, fixed seed).
fn churned_store(n: usize) -> Store {
    let mut store = Store::new();
    store.set_defrag_policy(None);
    store.register::<Cell>().expect("Cell registers");
    let table = store.table_mut::<Cell>().expect("registered");
    let handles = table.insert_batch((0..n).map(cell));
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for h in handles {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            table.remove(h);
        }
    }
    store
}

/// A graph of `synapses` synapses (2,000 from each neuron, to neurons drawn by xorshift,
/// delays 0.5 to 3 ms), built with `connect_many` a thousand neurons at a time and stepped
/// 50 times so that its ring holds input in flight.
fn running_graph(synapses: usize) -> NeuralGraph {
    const FAN_OUT: usize = 2000;
    let neurons = synapses.div_ceil(FAN_OUT);
    let mut graph = NeuralGraph::new();
    let driven = NeuronParams {
        i_e: 450.0,
        ..NeuronParams::default()
    };
    let ns = graph.add_neurons(neurons, &driven).expect("neurons");
    graph.reserve_synapse_table(synapses).expect("memory");
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for sources in ns.chunks(1000) {
        let (mut pre, mut post, mut weight, mut delay) = (vec![], vec![], vec![], vec![]);
        for &a in sources {
            for _ in 0..FAN_OUT {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                pre.push(a);
                post.push(ns[(x % neurons as u64) as usize]);
                weight.push(if x & 1 == 0 { 5.0 } else { -20.0 });
                delay.push(0.5 + (x >> 40) as f32 % 26.0 / 10.0);
            }
        }
        graph
            .connect_many(&pre, &post, &weight, &delay)
            .expect("connect");
    }
    for _ in 0..50 {
        graph.step(0.1).expect("step");
    }
    graph
}

/// Writes `data` to `path` in 4 MiB pieces while a second thread fdatasyncs the file
/// every 64 MiB, then fsyncs it and its directory: the raw form of what a save does.
fn write_with_early_writeback(path: &Path, data: &[u8]) {
    let mut f = File::create(path).expect("create");
    let syncer = f.try_clone().expect("a second handle");
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let thread = std::thread::spawn(move || {
        for () in rx {
            syncer.sync_data().expect("fdatasync");
        }
    });
    for (k, piece) in data.chunks(4 << 20).enumerate() {
        f.write_all(piece).expect("write");
        if k % 16 == 15 {
            let _ = tx.try_send(());
        }
    }
    drop(tx);
    thread.join().expect("the syncing thread");
    f.sync_all().expect("fsync");
    fsync_dir(path);
}

/// Runs `f` once per iteration and sums its own timings.
fn timed<F: FnMut() -> Duration>(mut f: F) -> impl FnMut(u64) -> Duration {
    move |iters| (0..iters).map(|_| f()).sum()
}

/// A group of one save or load per sample (at 1 GB each is a second or so), rated in
/// `bytes` of objects.
fn one_second_group<'c>(
    c: &'c mut Criterion,
    name: &str,
    bytes: u64,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(bytes));
    g
}

/// Benches `save` (which returns the file's size) and then `load` as `{what}_save` and
/// `{what}_load` in group `name`, one call per iteration; `check` looks at what each load
/// gave (outside the timing). Returns the file's size.
fn bench_save_then_load<T>(
    c: &mut Criterion,
    name: &str,
    what: &str,
    bytes: u64,
    save: impl Fn() -> u64,
    load: impl Fn() -> T,
    check: impl Fn(&T),
) -> u64 {
    let mut file_bytes = 0;
    let mut g = one_second_group(c, name, bytes);
    g.bench_function(format!("{what}_save"), |b| {
        b.iter_custom(timed(|| {
            let t = Instant::now();
            file_bytes = save();
            t.elapsed()
        }))
    });
    g.bench_function(format!("{what}_load"), |b| {
        b.iter_custom(timed(|| {
            let t = Instant::now();
            let loaded = load();
            let took = t.elapsed();
            check(&loaded);
            drop(black_box(loaded));
            took
        }))
    });
    g.finish();
    file_bytes
}

/// `neurostore_save` and `neurostore_load` of `store` through the file at `path`, in
/// group `name`; returns the file's size.
fn bench_save_and_load(
    c: &mut Criterion,
    name: &str,
    store: &Store,
    path: &Path,
    registry: &TypeRegistry,
    bytes: u64,
) -> u64 {
    let objects = store.table::<Cell>().map(|t| t.len());
    bench_save_then_load(
        c,
        name,
        "neurostore",
        bytes,
        || store.save(path).expect("save").bytes,
        || Store::load(path, registry).expect("load"),
        |loaded| assert_eq!(loaded.table::<Cell>().map(|t| t.len()), objects),
    )
}

fn main() {
    let n = objects();
    let bytes = (n * size_of::<Cell>()) as u64;
    let mut c = Criterion::default().configure_from_args();
    let path = dir().join("store.nsnap");
    let peer_path = dir().join("slotmap.bincode");
    let raw_path = dir().join("raw.bin");

    eprintln!("building {n} cells ({:.2} GB)...", bytes as f64 / 1e9);
    let mut store = Store::new();
    store.register::<Cell>().expect("Cell registers");
    store
        .table_mut::<Cell>()
        .expect("registered")
        .insert_batch((0..n).map(cell));
    let churned = churned_store(n);
    let churned_path = dir().join("churned.nsnap");
    let churned_bytes = (churned.table::<Cell>().map_or(0, |t| t.len()) * size_of::<Cell>()) as u64;
    // The same removals, then every object moved in order to close the holes: every live
    // slot is away from home, as in the main job's snapshot after its defragmentation.
    let mut compacted = churned_store(n);
    compacted
        .table_mut::<Cell>()
        .expect("registered")
        .compact_in_order()
        .expect("the pool gives the place array");
    let compacted_path = dir().join("compacted.nsnap");
    let registry = TypeRegistry::new().with::<Cell>().expect("Cell is Pod");
    let mut peer: slotmap::SlotMap<slotmap::DefaultKey, Cell> = slotmap::SlotMap::with_capacity(n);
    for i in 0..n {
        peer.insert(cell(i));
    }
    let raw: Vec<u8> = store
        .table::<Cell>()
        .expect("registered")
        .values()
        .flat_map(|c| bytemuck::bytes_of(c).to_vec())
        .collect();

    let file_bytes = bench_save_and_load(&mut c, "snapshot_1GB", &store, &path, &registry, bytes);
    bench_save_and_load(
        &mut c,
        "snapshot_churned",
        &churned,
        &churned_path,
        &registry,
        churned_bytes,
    );
    bench_save_and_load(
        &mut c,
        "snapshot_compacted",
        &compacted,
        &compacted_path,
        &registry,
        churned_bytes,
    );
    drop(compacted);
    let graph = running_graph(n * size_of::<Cell>() / 16);
    let graph_bytes = (graph.synapse_count() * 16 + graph.neuron_count() * 64) as u64;
    let graph_path = dir().join("graph.nsnap");
    bench_save_then_load(
        &mut c,
        "snapshot_graph",
        "graph",
        graph_bytes,
        || graph.save(&graph_path).expect("save").bytes,
        || NeuralGraph::load(&graph_path).expect("load"),
        |loaded| assert_eq!(loaded.current_step(), graph.current_step()),
    );
    drop(graph);
    let mut g = one_second_group(&mut c, "snapshot_1GB", bytes);
    g.bench_function("slotmap_bincode_save", |b| {
        b.iter_custom(timed(|| {
            let t = Instant::now();
            let file = File::create(&peer_path).expect("create");
            let mut w = BufWriter::with_capacity(1 << 20, file);
            bincode::serde::encode_into_std_write(&peer, &mut w, bincode::config::standard())
                .expect("encode");
            let file = w.into_inner().expect("flush");
            file.sync_all().expect("fsync");
            fsync_dir(&peer_path);
            t.elapsed()
        }))
    });
    g.bench_function("slotmap_bincode_load", |b| {
        b.iter_custom(timed(|| {
            let t = Instant::now();
            let mut r = BufReader::with_capacity(1 << 20, File::open(&peer_path).expect("open"));
            let loaded: slotmap::SlotMap<slotmap::DefaultKey, Cell> =
                bincode::serde::decode_from_std_read(&mut r, bincode::config::standard())
                    .expect("decode");
            let took = t.elapsed();
            assert_eq!(loaded.len(), n);
            drop(black_box(loaded));
            took
        }))
    });
    g.bench_function("raw_disk_write", |b| {
        b.iter_custom(timed(|| {
            let t = Instant::now();
            let mut f = File::create(&raw_path).expect("create");
            f.write_all(&raw).expect("write");
            f.sync_all().expect("fsync");
            fsync_dir(&raw_path);
            t.elapsed()
        }))
    });
    g.bench_function("raw_disk_write_early_writeback", |b| {
        b.iter_custom(timed(|| {
            let t = Instant::now();
            write_with_early_writeback(&raw_path, &raw);
            t.elapsed()
        }))
    });
    g.bench_function("raw_disk_read", |b| {
        let mut buf = vec![0u8; raw.len()];
        b.iter_custom(timed(|| {
            let t = Instant::now();
            File::open(&raw_path)
                .and_then(|mut f| f.read_exact(&mut buf))
                .expect("read");
            let took = t.elapsed();
            black_box(&buf);
            took
        }))
    });
    g.finish();

    let peer_bytes = std::fs::metadata(&peer_path).map_or(0, |m| m.len());
    let rate = |id: &str| estimate("snapshot_1GB", id).map(|ns| bytes as f64 / ns);
    let show = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2} GB/s"));
    let ratio = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .map_or_else(|| "n/a".to_owned(), |(a, b)| format!("{:.1}x", a / b))
    };
    let (save, load) = (rate("neurostore_save"), rate("neurostore_load"));
    let (psave, pload) = (rate("slotmap_bincode_save"), rate("slotmap_bincode_load"));
    let (wr, rd) = (rate("raw_disk_write"), rate("raw_disk_read"));
    let early = rate("raw_disk_write_early_writeback");
    println!();
    println!(
        "snapshot of {n} 32-byte Pod objects ({:.2} GB of objects; rates are object bytes per second)",
        bytes as f64 / 1e9
    );
    println!("  file: neurostore {file_bytes} bytes, slotmap+bincode {peer_bytes} bytes");
    println!("  {:<26} {:>12} {:>12}", "", "save", "load");
    println!(
        "  {:<26} {:>12} {:>12}",
        "neurostore (load >= 1)",
        show(save),
        show(load)
    );
    let churned_rate =
        |id: &str| estimate("snapshot_churned", id).map(|ns| churned_bytes as f64 / ns);
    let (csave, cload) = (
        churned_rate("neurostore_save"),
        churned_rate("neurostore_load"),
    );
    println!(
        "  {:<26} {:>12} {:>12}",
        "neurostore, a third removed",
        show(csave),
        show(cload)
    );
    let compacted_rate =
        |id: &str| estimate("snapshot_compacted", id).map(|ns| churned_bytes as f64 / ns);
    println!(
        "  {:<26} {:>12} {:>12}",
        "  the same, compacted",
        show(compacted_rate("neurostore_save")),
        show(compacted_rate("neurostore_load"))
    );
    let graph_rate = |id: &str| estimate("snapshot_graph", id).map(|ns| graph_bytes as f64 / ns);
    let (gsave, gload) = (graph_rate("graph_save"), graph_rate("graph_load"));
    println!(
        "  {:<26} {:>12} {:>12}",
        "neurostore graph checkpoint",
        show(gsave),
        show(gload)
    );
    println!(
        "  {:<26} {:>12} {:>12}",
        "slotmap + serde + bincode",
        show(psave),
        show(pload)
    );
    println!(
        "  {:<26} {:>12} {:>12}",
        "raw disk write/read",
        show(wr),
        show(rd)
    );
    println!("  {:<26} {:>12}", "raw write, early writeback", show(early));
    println!(
        "  neurostore vs slotmap+bincode: save {}, load {}",
        ratio(save, psave),
        ratio(load, pload)
    );
    let share = |a: Option<f64>, b: Option<f64>| {
        a.zip(b).map_or_else(
            || "n/a".to_owned(),
            |(a, b)| format!("{:.0} %", 100.0 * a / b),
        )
    };
    println!(
        "  save as a share of the raw write rate (target >= 80 %): filled {}, a third \
         removed {}, graph checkpoint {}",
        share(save, wr),
        share(csave, wr),
        share(gsave, wr)
    );
    println!(
        "  against a raw write with the same early writeback: filled {}, a third removed {}, \
         graph checkpoint {}",
        share(save, early),
        share(csave, early),
        share(gsave, early)
    );
    for p in [&path, &peer_path, &raw_path, &churned_path, &graph_path] {
        let _ = std::fs::remove_file(p);
    }
}
