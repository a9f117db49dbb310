//! Spike propagation over 10M synapses: a `NeuralGraph` beside a CSR array baseline, in
//! one run.
//!
//! 100,000 neurons and 10M synapses drawn by the fixed-total-number rule (random pre and
//! post, in random order, as the microcircuit builds them). One propagation sends the
//! spikes of 1,000 random neurons (about 100,000 synaptic events) into a ring of future
//! input, exactly as `NeuralGraph::step` does: per event, the delay in steps, the ring
//! position, one add. Cases:
//! - `graph_random_order`: the graph as built, each neuron's synapses scattered over the
//!   synapse table (what a layout pass such as `compact_by_key` improves);
//! - `graph_pre_order`: the same synapses connected neuron by neuron, so each neuron's
//!   outgoing synapses sit together;
//! - `csr`: offsets per presynaptic neuron and arrays of post, weight and delay sorted by
//!   presynaptic neuron, the layout a hand-written simulator uses.
//!
//! A second group times a whole `step` of the graph (100,000 neuron updates and the
//! propagation of that step's spikes). The summary prints ns per synaptic event and the
//! ratio to CSR.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Rng, estimate};
use criterion::{Criterion, Throughput};
use neurostore::neural::{NeuralGraph, NeuronId, NeuronParams, Synapse};

const NEURONS: usize = 100_000;
const SYNAPSES: usize = 10_000_000;
const SOURCES: usize = 1_000;
const DT: f64 = 0.1;

/// The synapses, as (pre, post, weight, delay) over neuron indices.
fn draw_synapses() -> Vec<(u32, u32, f32, f32)> {
    let mut rng = Rng(0x5EED);
    (0..SYNAPSES)
        .map(|_| {
            let pre = rng.below(NEURONS) as u32;
            let post = rng.below(NEURONS) as u32;
            // 80 % excitatory, as in cortex.
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

fn build_graph(synapses: &[(u32, u32, f32, f32)]) -> (NeuralGraph, Vec<NeuronId>) {
    let mut graph = NeuralGraph::new();
    let params = NeuronParams {
        tau_syn_ex: 0.5,
        tau_syn_in: 0.5,
        // Slightly above threshold alone; inhibition (20 % of synapses, 4x stronger)
        // balances the excitation on average.
        i_e: 385.0,
        ..NeuronParams::default()
    };
    let neurons = graph.add_neurons(NEURONS, &params).unwrap();
    let mut rng = Rng(7);
    for (_, n) in graph.neurons_mut() {
        n.v_m = -70.0 + 15.0 * rng.unit() as f32;
    }
    for &(pre, post, w, d) in synapses {
        graph
            .connect(neurons[pre as usize], neurons[post as usize], w, d)
            .unwrap();
    }
    (graph, neurons)
}

struct Csr {
    offsets: Vec<u32>,
    post: Vec<u32>,
    weight: Vec<f32>,
    delay: Vec<f32>,
}

fn build_csr(synapses: &[(u32, u32, f32, f32)]) -> Csr {
    let mut sorted = synapses.to_vec();
    sorted.sort_by_key(|s| s.0);
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

/// Ring columns: the graph's neurons have slot indices 1..=NEURONS, the CSR's 0..NEURONS.
const STRIDE: usize = NEURONS + 1;

/// A ring of future input as the step keeps it: slot-major, excitatory and inhibitory.
struct Ring {
    ex: Vec<f32>,
    inh: Vec<f32>,
    slots: u64,
}

impl Ring {
    fn new() -> Self {
        let slots = 32;
        Ring {
            ex: vec![0.0; slots * STRIDE],
            inh: vec![0.0; slots * STRIDE],
            slots: slots as u64,
        }
    }

    #[inline]
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

fn propagate_graph(graph: &NeuralGraph, sources: &[NeuronId], ring: &mut Ring, now: u64) {
    let synapses = graph.synapses();
    for &n in sources {
        let out = graph.outgoing(n).unwrap_or(&[]);
        synapses.for_each_many(out, |s: Option<&Synapse>| {
            if let Some(s) = s {
                ring.deliver(now, s.post.index(), s.weight, s.delay);
            }
        });
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

fn bench(c: &mut Criterion) {
    let synapses = draw_synapses();
    let mut rng = Rng(42);
    let sources: Vec<u32> = (0..SOURCES).map(|_| rng.below(NEURONS) as u32).collect();
    let csr = build_csr(&synapses);
    let events: usize = sources
        .iter()
        .map(|&n| (csr.offsets[n as usize + 1] - csr.offsets[n as usize]) as usize)
        .sum();

    let (random_graph, random_ids) = build_graph(&synapses);
    let mut pre_ordered = synapses.clone();
    pre_ordered.sort_by_key(|s| s.0);
    let (pre_graph, pre_ids) = build_graph(&pre_ordered);
    drop(pre_ordered);

    let mut ring = Ring::new();
    let mut g = c.benchmark_group("propagate_10M");
    g.throughput(Throughput::Elements(events as u64))
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let random_sources: Vec<NeuronId> = sources.iter().map(|&n| random_ids[n as usize]).collect();
    let pre_sources: Vec<NeuronId> = sources.iter().map(|&n| pre_ids[n as usize]).collect();
    let mut now = 0u64;
    g.bench_function("graph_random_order", |b| {
        b.iter(|| {
            now += 1;
            propagate_graph(&random_graph, &random_sources, &mut ring, now)
        })
    });
    g.bench_function("graph_pre_order", |b| {
        b.iter(|| {
            now += 1;
            propagate_graph(&pre_graph, &pre_sources, &mut ring, now)
        })
    });
    g.bench_function("csr", |b| {
        b.iter(|| {
            now += 1;
            propagate_csr(&csr, &sources, &mut ring, now)
        })
    });
    g.finish();
    black_box(&ring.ex[..8]);
    drop(pre_graph);

    let mut g = c.benchmark_group("step_100k_neurons_10M_synapses");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    let mut graph = random_graph;
    // A settled, active network: spikes propagate in every step.
    for _ in 0..200 {
        graph.step(DT).unwrap();
    }
    g.bench_function("graph_step", |b| {
        b.iter(|| black_box(graph.step(DT).unwrap().len()))
    });
    g.finish();
    let mut spikes = 0;
    for _ in 0..100 {
        spikes += graph.step(DT).unwrap().len();
    }
    println!(
        "step: {:.1} spikes per step ({:.1} Hz per neuron)",
        spikes as f64 / 100.0,
        spikes as f64 / 100.0 / NEURONS as f64 / (DT / 1000.0)
    );
    println!("propagation: {events} synaptic events per iteration");
    summary(events);
}

fn summary(events: usize) {
    println!("\nsummary: ns per synaptic event (ratio to CSR)");
    let csr = estimate("propagate_10M", "csr").map(|ns| ns / events as f64);
    for id in ["graph_random_order", "graph_pre_order", "csr"] {
        if let Some(ns) = estimate("propagate_10M", id).map(|ns| ns / events as f64) {
            let ratio = csr.map_or(String::new(), |c| format!(" ({:.2}x)", ns / c));
            println!("{id:<22} {ns:>8.2}{ratio}");
        }
    }
    if let Some(ns) = estimate("step_100k_neurons_10M_synapses", "graph_step") {
        println!(
            "{:<22} {:>8.1} us per 0.1 ms step",
            "graph_step",
            ns / 1000.0
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    bench(&mut c);
    c.final_summary();
}
