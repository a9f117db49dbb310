//! Defragmentation and layout, in one run.
//!
//! Part 1: 1M objects of a 32-byte struct, a random 50 % removed, then `defragment`: bytes
//! moved per second, fragmentation and utilization before and after, iteration speed
//! before and after, and the pauses of `defragment_step` with a 256 KiB budget.
//!
//! Part 2: spike propagation over 100,000 neurons and 10M synapses with random pre and post
//! (built in random order, as the fixed-total-number rule draws them), 10 % of neurons
//! spiking per step: the graph as built, the graph after `optimize_layout`, and a CSR
//! baseline (u32 offsets and post indices sorted by presynaptic neuron, only the rows of
//! spiking neurons visited). Each iteration is one step with the same 10 % of neurons
//! injected: the graph sends every event into its queues of input in flight
//! (`inject_spikes`) and steps (adding the arriving events into each neuron's input and
//! updating the 100,000 neurons); CSR adds every event into a dense ring buffer of future
//! input (the delay in steps, the ring position, one add) and clears the row of the step
//! it leaves. The graph is timed on all threads and on one; CSR runs on one.
//!
//! Part 3: a loop of 100 steps of a recurrent network whose steps are short (20,000
//! driven neurons, 100 random targets each, a few hundred events a step), through
//! `NeuralGraph::step` called 100 times from the bench's thread against one
//! `NeuralGraph::run` of 100 steps, which keeps the loop on a worker of rayon's pool.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{Obj, Rng, estimate, shuffled};
use criterion::{BatchSize, Criterion, Throughput};
use neurostore::defrag::DefragBudget;
use neurostore::neural::{NeuralGraph, NeuronId, NeuronParams};
use neurostore::table::{Handle, Table};

const OBJECTS: usize = 1_000_000;
const NEURONS: usize = 100_000;
const SYNAPSES: usize = 10_000_000;
const DT: f64 = 0.1;

/// 1M objects with a random half removed, and the survivors' handles.
fn fragmented() -> (Table<Obj>, Vec<Handle<Obj>>) {
    let mut t = Table::new();
    let hs = t.insert_batch((0..OBJECTS).map(|i| Obj {
        v: i as f64,
        id: i as u64,
        ..Obj::default()
    }));
    let order = shuffled(&hs, 3);
    for h in &order[..OBJECTS / 2] {
        t.remove(*h);
    }
    (t, order[OBJECTS / 2..].to_vec())
}

fn utilization(t: &Table<Obj>) -> f64 {
    let st = t.stats();
    (st.live * size_of::<Obj>()) as f64 / st.bytes_reserved as f64
}

fn sum(t: &Table<Obj>) -> f64 {
    t.values().map(|o| o.v).sum()
}

fn bench_defragment(c: &mut Criterion) -> String {
    let mut g = c.benchmark_group("defragment_1M");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("defragment", |b| {
        b.iter_batched(
            fragmented,
            |(mut t, hs)| {
                black_box(t.defragment());
                (t, hs)
            },
            BatchSize::PerIteration,
        )
    });
    let (before, _) = fragmented();
    g.bench_function("iterate_before", |b| b.iter(|| black_box(sum(&before))));
    let (mut after, survivors) = fragmented();
    let report = after.defragment();
    g.bench_function("iterate_after", |b| b.iter(|| black_box(sum(&after))));
    g.finish();
    assert!(survivors.iter().all(|h| after.contains(*h)));

    // Pauses of 256 KiB steps over a fresh fragmented table, until it is dense.
    let (mut stepped, _) = fragmented();
    let mut pauses = Vec::new();
    loop {
        let t = Instant::now();
        let step = stepped.defragment_step(DefragBudget::bytes(256 << 10));
        pauses.push(t.elapsed());
        if step.done {
            break;
        }
    }
    let max_pause = pauses.iter().max().copied().unwrap_or_default();
    let mean_pause = pauses.iter().sum::<Duration>() / pauses.len() as u32;

    let defrag_ns = estimate("defragment_1M", "defragment").unwrap_or(f64::NAN);
    let it_before = estimate("defragment_1M", "iterate_before").unwrap_or(f64::NAN);
    let it_after = estimate("defragment_1M", "iterate_after").unwrap_or(f64::NAN);
    format!(
        "defragment, 1M x 32 B, random 50 % removed:\n\
         \x20 moved {} objects ({:.1} MB) in {:.2} ms: {:.2} GB/s\n\
         \x20 fragmentation {:.1} % -> {:.2} %, utilization {:.1} % -> {:.2} %, chunks released {}\n\
         \x20 pool fragmentation {:.3} -> {:.3}\n\
         \x20 iterate (sum a field): {:.2} -> {:.2} ns per object\n\
         \x20 defragment_step(256 KiB): {} steps, pause max {:.0} us, mean {:.0} us",
        report.moved,
        report.bytes_moved as f64 / 1e6,
        defrag_ns / 1e6,
        report.bytes_moved as f64 / defrag_ns,
        report.fragmentation_before * 100.0,
        report.fragmentation_after * 100.0,
        utilization(&before) * 100.0,
        utilization(&after) * 100.0,
        report.chunks_released,
        report.pool_fragmentation_before,
        report.pool_fragmentation_after,
        it_before / (OBJECTS / 2) as f64,
        it_after / (OBJECTS / 2) as f64,
        pauses.len(),
        max_pause.as_secs_f64() * 1e6,
        mean_pause.as_secs_f64() * 1e6,
    )
}

/// The synapses, as (pre, post, weight, delay) over neuron indices, in random order.
fn draw_synapses() -> Vec<(u32, u32, f32, f32)> {
    let mut rng = Rng(0x5EED);
    (0..SYNAPSES)
        .map(|_| {
            let pre = rng.below(NEURONS) as u32;
            let post = rng.below(NEURONS) as u32;
            // 80 % excitatory; inhibitory synapses 4x stronger, as in cortex models.
            let (w, d) = if pre.is_multiple_of(5) {
                (-351.2, 0.75)
            } else {
                (87.8, 1.5)
            };
            let delay = (d + (rng.unit() as f32 - 0.5) * d).max(0.1);
            (pre, post, w, delay)
        })
        .collect()
}

struct Csr {
    offsets: Vec<u32>,
    post: Vec<u32>,
    weight: Vec<f32>,
    delay: Vec<f32>,
}

fn build_csr(synapses: &[(u32, u32, f32, f32)]) -> Csr {
    let mut sorted = synapses.to_vec();
    sorted.sort_by_key(|s| (s.0, s.1));
    let mut offsets = vec![0u32; NEURONS + 1];
    for s in &sorted {
        offsets[s.0 as usize + 1] += 1;
    }
    for i in 0..NEURONS {
        offsets[i + 1] += offsets[i];
    }
    Csr {
        offsets,
        post: sorted.iter().map(|s| s.1).collect(),
        weight: sorted.iter().map(|s| s.2).collect(),
        delay: sorted.iter().map(|s| s.3).collect(),
    }
}

/// A ring of future input shaped as the graph's: slot-major, excitatory and inhibitory,
/// one column per neuron (the graph's slot indices are 1..=NEURONS, so NEURONS + 1).
struct Ring {
    ex: Vec<f32>,
    inh: Vec<f32>,
    slots: u64,
}

const STRIDE: usize = NEURONS + 1;

impl Ring {
    fn new() -> Self {
        let slots = 24;
        Ring {
            ex: vec![0.0; slots * STRIDE],
            inh: vec![0.0; slots * STRIDE],
            slots: slots as u64,
        }
    }

    #[inline]
    /// Zeroes the row of `now`, which the step has read.
    fn clear(&mut self, now: u64) {
        let at = (now % self.slots) as usize * STRIDE;
        self.ex[at..at + STRIDE].fill(0.0);
        self.inh[at..at + STRIDE].fill(0.0);
    }

    fn deliver(&mut self, now: u64, post: u32, weight: f32, delay: f32) {
        let steps = ((f64::from(delay) / DT).round() as u64).clamp(1, self.slots - 1);
        let at = ((now + steps) % self.slots) as usize * STRIDE + post as usize;
        if weight >= 0.0 {
            self.ex[at] += weight;
        } else {
            self.inh[at] += weight;
        }
    }
}

fn propagate_csr(csr: &Csr, sources: &[u32], ring: &mut Ring, now: u64) {
    for &n in sources {
        let range = csr.offsets[n as usize] as usize..csr.offsets[n as usize + 1] as usize;
        for i in range {
            ring.deliver(now, csr.post[i], csr.weight[i], csr.delay[i]);
        }
    }
}

fn bench_propagation(c: &mut Criterion) -> String {
    let synapses = draw_synapses();
    let csr = build_csr(&synapses);
    let mut graph = NeuralGraph::new();
    // Out of reach of the threshold, so that only the injected spikes travel.
    let params = NeuronParams {
        tau_syn_ex: 0.5,
        tau_syn_in: 0.5,
        v_th: 1e9,
        ..NeuronParams::default()
    };
    let t = Instant::now();
    let neurons = graph.add_neurons(NEURONS, &params).unwrap();
    for &(pre, post, w, d) in &synapses {
        graph
            .connect(neurons[pre as usize], neurons[post as usize], w, d)
            .unwrap();
    }
    let build = t.elapsed();
    drop(synapses);

    // 10 % of the neurons spike in a step.
    let mut rng = Rng(42);
    let mut picked: Vec<u32> = (0..NEURONS as u32).filter(|_| rng.below(10) == 0).collect();
    picked.sort_unstable();
    let sources: Vec<NeuronId> = picked.iter().map(|&n| neurons[n as usize]).collect();
    let events: usize = picked
        .iter()
        .map(|&n| (csr.offsets[n as usize + 1] - csr.offsets[n as usize]) as usize)
        .sum();
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();

    let mut g = c.benchmark_group("propagate_10M_10pct");
    g.throughput(Throughput::Elements(events as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let step = |graph: &mut NeuralGraph| {
        graph.inject_spikes(&sources, DT).unwrap();
        assert!(graph.step(DT).unwrap().is_empty());
    };
    g.bench_function("graph_as_built", |b| b.iter(|| step(&mut graph)));
    g.bench_function("graph_as_built_1_thread", |b| {
        b.iter(|| one_thread.install(|| step(&mut graph)))
    });
    let t = Instant::now();
    let layout = graph.optimize_layout().unwrap();
    let layout_time = t.elapsed();
    g.bench_function("graph_after_layout", |b| b.iter(|| step(&mut graph)));
    g.bench_function("graph_after_layout_1_thread", |b| {
        b.iter(|| one_thread.install(|| step(&mut graph)))
    });
    let mut ring = Ring::new();
    let mut now = 0u64;
    g.bench_function("csr_1_thread", |b| {
        b.iter(|| {
            ring.clear(now);
            propagate_csr(&csr, &picked, &mut ring, now);
            now += 1;
        })
    });
    g.finish();
    black_box(&ring.ex[..8]);

    let group = "propagate_10M_10pct";
    let csr_ns = estimate(group, "csr_1_thread").unwrap_or(f64::NAN);
    let mut out = format!(
        "spike propagation, {NEURONS} neurons, {SYNAPSES} synapses, 10 % spiking ({events} events per step):\n\
         \x20 graph built in {:.1} s; optimize_layout {:.2} s (moved {} synapses)\n",
        build.as_secs_f64(),
        layout_time.as_secs_f64(),
        layout.moved
    );
    for id in [
        "graph_as_built",
        "graph_as_built_1_thread",
        "graph_after_layout",
        "graph_after_layout_1_thread",
        "csr_1_thread",
    ] {
        if let Some(ns) = estimate(group, id) {
            out += &format!(
                "  {id:<30} {:>8.2} ms per step {:>7.2} ns per event  {:.2}x CSR\n",
                ns / 1e6,
                ns / events as f64,
                ns / csr_ns
            );
        }
    }
    out
}

/// A recurrent network of 20,000 neurons driven above threshold, 100 random targets each
/// (excitatory and, for the last fifth, inhibitory), built with `connect_many`.
fn driven_network() -> NeuralGraph {
    const N: usize = 20_000;
    let mut graph = NeuralGraph::new();
    let params = NeuronParams {
        i_e: 380.0,
        tau_syn_ex: 0.5,
        tau_syn_in: 0.5,
        ..NeuronParams::default()
    };
    let neurons = graph.add_neurons(N, &params).unwrap();
    let mut rng = Rng(7);
    for &n in &neurons {
        graph.neuron_mut(n).unwrap().v_m = -70.0 + rng.below(1500) as f32 / 100.0;
    }
    let (mut pre, mut post, mut weight, mut delay) = (vec![], vec![], vec![], vec![]);
    for (i, &n) in neurons.iter().enumerate() {
        for _ in 0..100 {
            pre.push(n);
            post.push(neurons[rng.below(N)]);
            weight.push(if i < N * 4 / 5 { 90.0 } else { -400.0 });
            delay.push(0.8 + rng.below(10) as f32 * 0.1);
        }
    }
    graph.connect_many(&pre, &post, &weight, &delay).unwrap();
    graph
}

fn bench_step_loop(c: &mut Criterion) -> String {
    const STEPS: u64 = 100;
    let mut graph = driven_network();
    graph
        .run(500, DT, |_, _| Ok::<_, neurostore::Error>(()))
        .unwrap();
    let mut g = c.benchmark_group("step_loop_20k");
    g.throughput(Throughput::Elements(STEPS))
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let (mut spikes, mut steps) = (0usize, 0u64);
    g.bench_function("step_in_a_loop", |b| {
        b.iter(|| {
            steps += STEPS;
            for _ in 0..STEPS {
                spikes += graph.step(DT).unwrap().len();
            }
        })
    });
    g.bench_function("run", |b| {
        b.iter(|| {
            steps += STEPS;
            graph
                .run(STEPS, DT, |_, fired| {
                    spikes += fired.len();
                    Ok::<_, neurostore::Error>(())
                })
                .unwrap()
        })
    });
    g.finish();
    let group = "step_loop_20k";
    let looped = estimate(group, "step_in_a_loop").unwrap_or(f64::NAN);
    let ran = estimate(group, "run").unwrap_or(f64::NAN);
    format!(
        "a loop of {STEPS} steps, 20,000 driven neurons, 2M synapses, {:.0} spikes a step, {} threads:\n\
         \x20 step in a loop {:>8.1} us per step\n\
         \x20 run            {:>8.1} us per step  {:.2}x the loop\n",
        spikes as f64 / steps.max(1) as f64,
        rayon::current_num_threads(),
        looped / STEPS as f64 / 1e3,
        ran / STEPS as f64 / 1e3,
        ran / looped
    )
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let defrag = bench_defragment(&mut c);
    let propagation = bench_propagation(&mut c);
    let step_loop = bench_step_loop(&mut c);
    c.final_summary();
    println!("\nsummary\n{defrag}\n{propagation}\n{step_loop}");
}
