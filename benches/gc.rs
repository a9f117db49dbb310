//! Tracing garbage collection, in one run.
//!
//! 10M traced objects in a random graph (out-degree 4: each object holds four handles to
//! objects drawn uniformly), 1M roots (objects of a manual table, each holding one handle
//! drawn uniformly). Measured: a full `Store::collect` on 1 and 2 threads (handles marked
//! per second: every handle a scanned object holds is looked at once), the pauses of
//! incremental cycles of `gc_step(1 ms)` (three, each reported, beside the longest
//! stall the machine gives a thread that only reads the clock), and the floor: a
//! hand-written breadth-first search over the same graph as `Vec<u32>` adjacency with a
//! visited bitmap, on one thread (and a depth-first one beside it).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{Rng, estimate};
use criterion::{Criterion, SamplingMode};
use neurostore::{Handle, Pooled, Store};

const OBJECTS: usize = 10_000_000;
const ROOTS: usize = 1_000_000;
const DEGREE: usize = 4;

#[derive(Pooled, Clone, Copy)]
#[pooled(retention = "traced")]
struct Vertex {
    edges: [Handle<Vertex>; DEGREE],
}

/// A manual object: a root.
#[derive(Pooled, Clone, Copy)]
struct Anchor {
    target: Handle<Vertex>,
}

struct Graph {
    adjacency: Vec<u32>,
    roots: Vec<u32>,
}

fn draw() -> Graph {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    Graph {
        adjacency: (0..OBJECTS * DEGREE)
            .map(|_| rng.below(OBJECTS) as u32)
            .collect(),
        roots: (0..ROOTS).map(|_| rng.below(OBJECTS) as u32).collect(),
    }
}

fn build(g: &Graph) -> Store {
    let mut store = Store::new();
    store.set_defrag_policy(None);
    let vertices = store.register::<Vertex>().expect("a new store");
    let hs = vertices.insert_batch((0..OBJECTS).map(|_| Vertex {
        edges: [Handle::null(); DEGREE],
    }));
    // insert_batch places objects in order, so storage order is insertion order.
    for (i, v) in vertices.values_mut().enumerate() {
        for (k, e) in v.edges.iter_mut().enumerate() {
            *e = hs[g.adjacency[i * DEGREE + k] as usize];
        }
    }
    store.register::<Anchor>().expect("a new store");
    let anchors = store.table_mut::<Anchor>().expect("registered");
    anchors.insert_batch(g.roots.iter().map(|&r| Anchor {
        target: hs[r as usize],
    }));
    store
}

/// Marks vertex `v` in `visited` and appends it to `out` if it was not marked; true then.
#[inline]
fn visit(visited: &mut [u64], v: u32, out: &mut Vec<u32>) -> bool {
    let (w, b) = (v as usize / 64, 1u64 << (v % 64));
    let new = visited[w] & b == 0;
    if new {
        visited[w] |= b;
        out.push(v);
    }
    new
}

/// Depth-first search over `Vec<u32>` adjacency with a visited bitmap. Returns how many
/// vertices were reached.
fn dfs(g: &Graph) -> usize {
    let mut visited = vec![0u64; OBJECTS.div_ceil(64)];
    let mut stack: Vec<u32> = Vec::with_capacity(1 << 16);
    let mut reached = 0;
    for &r in &g.roots {
        reached += usize::from(visit(&mut visited, r, &mut stack));
        while let Some(v) = stack.pop() {
            let at = v as usize * DEGREE;
            for &e in &g.adjacency[at..at + DEGREE] {
                reached += usize::from(visit(&mut visited, e, &mut stack));
            }
        }
    }
    reached
}

/// Breadth-first search over `Vec<u32>` adjacency with a visited bitmap and a FIFO queue
/// (the floor the issue names). Returns how many vertices were reached.
fn bfs(g: &Graph) -> usize {
    let mut visited = vec![0u64; OBJECTS.div_ceil(64)];
    let mut queue: Vec<u32> = Vec::with_capacity(OBJECTS);
    for &r in &g.roots {
        visit(&mut visited, r, &mut queue);
    }
    let mut head = 0;
    while let Some(&v) = queue.get(head) {
        head += 1;
        let at = v as usize * DEGREE;
        for &e in &g.adjacency[at..at + DEGREE] {
            visit(&mut visited, e, &mut queue);
        }
    }
    queue.len()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
}

/// Incremental cycles timed after the full collections.
const INCREMENTAL_CYCLES: usize = 3;

/// The pauses of one incremental cycle.
struct Cycle {
    steps: usize,
    longest: Duration,
    longest_at: usize,
    p99: Duration,
    mean: Duration,
    finish: Duration,
    /// From `gc_begin` to the end of `gc_finish`.
    took: Duration,
}

/// Runs one incremental cycle of `gc_step(1 ms)` to its end; its pauses.
fn incremental_cycle(store: &mut Store) -> Cycle {
    let began = Instant::now();
    store.gc_begin().expect("no cycle open");
    let mut pauses = Vec::new();
    loop {
        let p = store.gc_step(Duration::from_millis(1));
        pauses.push(p.duration);
        if p.done {
            break;
        }
    }
    let t = Instant::now();
    black_box(store.gc_finish());
    let finish = t.elapsed();
    let mean = pauses.iter().sum::<Duration>() / pauses.len() as u32;
    let (longest_at, longest) = pauses
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|(_, p)| *p)
        .unwrap_or_default();
    let steps = pauses.len();
    pauses.sort();
    Cycle {
        steps,
        longest,
        longest_at,
        p99: pauses[steps * 99 / 100],
        mean,
        finish,
        took: began.elapsed(),
    }
}

/// What a thread that only reads the clock for `span` sees of the machine stopping it:
/// the longest gap between two reads, and how many gaps were longer than 0.5 ms. A
/// `gc_step` that such a gap falls in lasts that much longer, whatever its work.
struct Stalls {
    span: Duration,
    longest: Duration,
    over_half_ms: usize,
}

fn machine_stalls(span: Duration) -> Stalls {
    let start = Instant::now();
    let mut last = start;
    let mut longest = Duration::ZERO;
    let mut over_half_ms = 0;
    while last - start < span {
        let now = Instant::now();
        let gap = now - last;
        longest = longest.max(gap);
        over_half_ms += usize::from(gap > Duration::from_micros(500));
        last = now;
    }
    Stalls {
        span,
        longest,
        over_half_ms,
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let graph = draw();
    let t = Instant::now();
    let mut store = build(&graph);
    let build_s = t.elapsed().as_secs_f64();
    // The first collection frees what no root reaches; later ones mark the same set.
    let first = store.collect();
    let reached = dfs(&graph);
    assert_eq!(first.marked, reached, "the collector and the DFS agree");
    assert_eq!(bfs(&graph), reached, "the BFS and the DFS agree");
    let handles = (first.marked * DEGREE + ROOTS) as f64;

    let mut g = c.benchmark_group("gc_10M");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for threads in [1, 2] {
        let workers = pool(threads);
        g.bench_function(format!("collect_{threads}_thread"), |b| {
            b.iter(|| workers.install(|| black_box(store.collect())))
        });
    }
    g.bench_function("bfs_vec_u32_1_thread", |b| {
        b.iter(|| black_box(bfs(&graph)))
    });
    g.bench_function("dfs_vec_u32_1_thread", |b| {
        b.iter(|| black_box(dfs(&graph)))
    });
    g.finish();

    // Incremental: pauses of 1 ms steps, and of the finish (the rest of marking and the
    // sweep), on one thread, over a few cycles: one cycle's longest step can be a stall
    // of this machine, the same step in every cycle is ours.
    let workers = pool(1);
    let cycles: Vec<Cycle> = (0..INCREMENTAL_CYCLES)
        .map(|_| workers.install(|| incremental_cycle(&mut store)))
        .collect();
    // The peer of the pauses: how long this machine itself stops a thread that only
    // reads the clock, over as long as the cycles took.
    let cycles_took: Duration = cycles.iter().map(|c| c.took).sum();
    let stalls = machine_stalls(cycles_took);
    c.final_summary();

    let mut out = format!(
        "gc: {OBJECTS} traced objects, out-degree {DEGREE}, {ROOTS} roots; {} reachable, \
         {} freed by the first collection; build {build_s:.1} s\n",
        first.marked, first.freed_total
    );
    let bfs_ns = estimate("gc_10M", "bfs_vec_u32_1_thread").unwrap_or(f64::NAN);
    for id in [
        "collect_1_thread",
        "collect_2_thread",
        "bfs_vec_u32_1_thread",
        "dfs_vec_u32_1_thread",
    ] {
        if let Some(ns) = estimate("gc_10M", id) {
            out += &format!(
                "  {id:<24} {:>8.1} ms  {:>6.1} M handles/s  {:.2}x the BFS\n",
                ns / 1e6,
                handles / ns * 1e3,
                ns / bfs_ns
            );
        }
    }
    for (k, cycle) in cycles.iter().enumerate() {
        out += &format!(
            "  incremental cycle {k}, 1 thread: {} steps of gc_step(1 ms), longest pause \
             {:.3} ms (step {}), 99th percentile {:.3} ms, mean {:.3} ms; gc_finish (rest of \
             marking + sweep) {:.1} ms\n",
            cycle.steps,
            cycle.longest.as_secs_f64() * 1e3,
            cycle.longest_at,
            cycle.p99.as_secs_f64() * 1e3,
            cycle.mean.as_secs_f64() * 1e3,
            cycle.finish.as_secs_f64() * 1e3
        );
    }
    out += &format!(
        "  this machine, a thread only reading the clock for {:.1} s: longest gap {:.3} ms, \
         {} gaps over 0.5 ms\n",
        stalls.span.as_secs_f64(),
        stalls.longest.as_secs_f64() * 1e3,
        stalls.over_half_ms
    );
    println!("\nsummary\n{out}");
}
