//! The Potjans & Diesmann (2014) cortical microcircuit on neurostore: the model's
//! parameters, the network's construction, the simulation with spike recording, and the
//! snapshot round trip with its verification. `main.rs` wraps this in a command line with
//! progress bars, a report and plots; `tests/microcircuit.rs` runs it at a tiny scale.
//!
//! The numbers are those of the current reference implementation (INM-6
//! `microcircuit-PD14-model`, PyNEST, `network_params.py` and `helpers.py`; copied from
//! `shared/data/potjans_diesmann_2014.json`, which names the sources and commits):
//! 8 populations, 77,169 neurons at full scale, connection probabilities turned into
//! synapse counts with the fixed-total-number rule (multapses and autapses allowed),
//! normally distributed weights (87.8 pA excitatory, -4 times that inhibitory, L4E to
//! L2/3E doubled, 10 % relative spread, redrawn when of the wrong sign) and delays (1.5 ms
//! from excitatory, 0.75 ms from inhibitory sources, 50 % spread, redrawn below one step),
//! DC background input equivalent to 8 Hz Poisson input through the external in-degrees,
//! `iaf_psc_exp` neurons, and the "optimized" per-population initial potentials.
//! Scaling the network keeps the in-degrees (as the reference's `N_scaling` with
//! `K_scaling = 1`), so synapse counts scale with the neuron counts.

// This file is compiled into both the example and the integration test, each of which
// uses a different part of it.
#![allow(dead_code)]

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use neurostore::neural::{NeuralGraph, NeuronId, NeuronParams};
use neurostore::snapshot::{Options, Progress, SnapshotReport, TypeRegistry};
use neurostore::{Error, Neuron, Store, Synapse};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Binomial, Distribution, Normal};
use rayon::prelude::*;

/// Population names, in the model's order (rows and columns of the tables below).
pub const POPULATIONS: [&str; 8] = ["L2/3E", "L2/3I", "L4E", "L4I", "L5E", "L5I", "L6E", "L6I"];

/// Neurons per population at full scale.
pub const FULL_SIZES: [u32; 8] = [20683, 5834, 21915, 5479, 4850, 1065, 14395, 2948];

/// Connection probabilities, `[target][source]`.
pub const CONNECTION_PROBABILITY: [[f64; 8]; 8] = [
    [0.1009, 0.1689, 0.0437, 0.0818, 0.0323, 0.0, 0.0076, 0.0],
    [0.1346, 0.1371, 0.0316, 0.0515, 0.0755, 0.0, 0.0042, 0.0],
    [0.0077, 0.0059, 0.0497, 0.135, 0.0067, 0.0003, 0.0453, 0.0],
    [0.0691, 0.0029, 0.0794, 0.1597, 0.0033, 0.0, 0.1057, 0.0],
    [0.1004, 0.0622, 0.0505, 0.0057, 0.0831, 0.3726, 0.0204, 0.0],
    [0.0548, 0.0269, 0.0257, 0.0022, 0.06, 0.3158, 0.0086, 0.0],
    [
        0.0156, 0.0066, 0.0211, 0.0166, 0.0572, 0.0197, 0.0396, 0.2252,
    ],
    [0.0364, 0.001, 0.0034, 0.0005, 0.0277, 0.008, 0.0658, 0.1443],
];

/// External (background) in-degree per population.
pub const EXTERNAL_INDEGREE: [f64; 8] = [
    1600.0, 1500.0, 2100.0, 1900.0, 2000.0, 1900.0, 2900.0, 2100.0,
];

/// Published mean rates (Hz) of the reference implementation (`full_mean_rates`).
pub const PUBLISHED_RATES_HZ: [f64; 8] = [0.903, 2.965, 4.414, 5.876, 7.569, 8.633, 1.105, 7.829];

/// Mean and standard deviation of the initial membrane potential (mV), "optimized".
const V0_MEAN_MV: [f64; 8] = [
    -68.28, -63.16, -63.33, -63.45, -63.11, -61.66, -66.72, -61.43,
];
const V0_STD_MV: [f64; 8] = [5.36, 4.57, 4.74, 4.94, 4.94, 4.55, 5.46, 4.48];

/// Rate of each background input (Hz).
const BACKGROUND_RATE_HZ: f64 = 8.0;
/// Mean excitatory postsynaptic potential (mV) and the inhibitory factor.
const PSP_EXCITATORY_MV: f64 = 0.15;
const INHIBITORY_FACTOR: f64 = -4.0;
/// L4E to L2/3E synapses are twice as strong.
const L4E_TO_L23E_FACTOR: f64 = 2.0;
const WEIGHT_RELATIVE_SD: f64 = 0.1;
const DELAY_EXCITATORY_MS: f64 = 1.5;
const DELAY_INHIBITORY_MS: f64 = 0.75;
const DELAY_RELATIVE_SD: f64 = 0.5;

/// Neuron parameters (NEST `iaf_psc_exp`).
const TAU_M_MS: f64 = 10.0;
const C_M_PF: f64 = 250.0;
const TAU_SYN_MS: f64 = 0.5;

/// The simulation's step (ms).
pub const DT_MS: f64 = 0.1;

/// What to build and how long to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Population sizes times this; in-degrees are kept.
    pub scale: f64,
    /// Model time measured after the transient (ms).
    pub time_ms: f64,
    /// Model time simulated and discarded first (ms).
    pub transient_ms: f64,
    /// Seed of every random draw.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scale: 1.0,
            time_ms: 1000.0,
            transient_ms: 500.0,
            seed: 55,
        }
    }
}

fn is_excitatory(population: usize) -> bool {
    population.is_multiple_of(2)
}

/// PSC amplitude (pA) per mV of PSP amplitude for `iaf_psc_exp` (the reference's
/// `postsynaptic_potential_to_current`).
fn psc_per_psp() -> f64 {
    let sub = 1.0 / (TAU_SYN_MS - TAU_M_MS);
    let pre = TAU_M_MS * TAU_SYN_MS / C_M_PF * sub;
    let frac = (TAU_M_MS / TAU_SYN_MS).powf(sub);
    1.0 / (pre * (frac.powf(TAU_M_MS) - frac.powf(TAU_SYN_MS)))
}

/// Mean weight (pA) of synapses from `source` to `target`.
pub fn mean_weight(target: usize, source: usize) -> f64 {
    let excitatory = PSP_EXCITATORY_MV * psc_per_psp();
    let mut w = if is_excitatory(source) {
        excitatory
    } else {
        excitatory * INHIBITORY_FACTOR
    };
    if target == 0 && source == 2 {
        w *= L4E_TO_L23E_FACTOR;
    }
    w
}

/// The DC current (pA) that stands in for the background Poisson input of `population`:
/// rate times in-degree times the charge of one PSC.
pub fn background_current(population: usize) -> f64 {
    let excitatory = PSP_EXCITATORY_MV * psc_per_psp();
    BACKGROUND_RATE_HZ * EXTERNAL_INDEGREE[population] * excitatory * TAU_SYN_MS * 1e-3
}

/// Neurons per population at `scale` (at least one each).
pub fn population_sizes(scale: f64) -> [u32; 8] {
    FULL_SIZES.map(|n| ((f64::from(n) * scale).round() as u32).max(1))
}

/// Synapses per projection, `[target][source]`: the full-scale count
/// `ln(1 - C) / ln(1 - 1 / (N_source N_target))` as a mean in-degree, times the target's
/// size at this scale.
pub fn synapse_counts(sizes: &[u32; 8]) -> [[u64; 8]; 8] {
    let mut counts = [[0; 8]; 8];
    for (t, row) in counts.iter_mut().enumerate() {
        for (s, count) in row.iter_mut().enumerate() {
            let p = CONNECTION_PROBABILITY[t][s];
            if p == 0.0 {
                continue;
            }
            let pairs = f64::from(FULL_SIZES[s]) * f64::from(FULL_SIZES[t]);
            let full = (1.0 - p).ln() / (1.0 - 1.0 / pairs).ln();
            let indegree = full / f64::from(FULL_SIZES[t]);
            *count = (indegree * f64::from(sizes[t])).round() as u64;
        }
    }
    counts
}

/// A random stream for one purpose, independent of every other one of the same seed.
fn stream(seed: u64, purpose: u64) -> SmallRng {
    // SplitMix64's finaliser spreads (seed, purpose) over the whole seed space.
    let mut z = seed ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    SmallRng::seed_from_u64(z ^ (z >> 31))
}

/// Synapses handed to `connect_many` at once, at most (about 0.4 GB of arrays), unless
/// one source alone has more.
const BATCH_SYNAPSES: u64 = 16 << 20;

/// How many of projection `(target, source)`'s `count` synapses each of the `sources`
/// source neurons sends: the out-degrees of the fixed-total-number rule (each synapse's
/// source drawn uniformly), a multinomial draw made by binomial splitting from the
/// projection's own random stream.
fn out_degrees(seed: u64, target: usize, source: usize, count: u64, sources: u32) -> Vec<u32> {
    let mut rng = stream(seed, 1 + (target * 8 + source) as u64);
    let mut left = count;
    (0..sources)
        .map(|k| {
            let share = if k + 1 == sources {
                left
            } else {
                let p = 1.0 / f64::from(sources - k);
                Binomial::new(left, p)
                    .expect("p lies in (0, 1]")
                    .sample(&mut rng)
            };
            left -= share;
            share as u32
        })
        .collect()
}

/// `values` cut at `starts` (ascending, from 0 to `values.len()`): one slice a source.
fn split_by<'a, T>(mut values: &'a mut [T], starts: &[usize]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(starts.len().saturating_sub(1));
    for w in starts.windows(2) {
        let (head, tail) = values.split_at_mut(w[1] - w[0]);
        out.push(head);
        values = tail;
    }
    out
}

/// The synapses of a run of source neurons, as the parallel arrays `connect_many` takes.
/// One batch's arrays serve every batch of a build: the pages they grew into stay mapped,
/// where arrays made afresh for each batch would be new memory that the system must map
/// and zero again (about 7 GB over the full model, at well under 1 GB/s on a small VM).
#[derive(Default)]
struct Batch {
    pre: Vec<NeuronId>,
    post: Vec<NeuronId>,
    weight: Vec<f32>,
    delay: Vec<f32>,
}

impl Batch {
    /// The synapses of the neurons `sources` (indices within population `source`), each
    /// source drawing its targets (uniformly within each target population, as many as
    /// `degrees[target]` says), weights and delays from its own random stream, so that
    /// the network does not depend on the number of threads. The arrays are overwritten.
    #[allow(clippy::too_many_arguments)]
    fn draw(
        &mut self,
        seed: u64,
        source: usize,
        sources: Range<usize>,
        degrees: &[Vec<u32>],
        sizes: &[u32; 8],
        offsets: &[usize],
        all: &[NeuronId],
    ) {
        let mut starts = vec![0usize];
        for k in sources.clone() {
            let out: usize = degrees.iter().map(|d| d[k] as usize).sum();
            starts.push(starts.last().expect("starts with 0") + out);
        }
        let n = *starts.last().expect("starts with 0");
        let delay_mean = if is_excitatory(source) {
            DELAY_EXCITATORY_MS
        } else {
            DELAY_INHIBITORY_MS
        };
        let delay_draw = Normal::new(delay_mean, delay_mean * DELAY_RELATIVE_SD).expect("positive");
        let weights: Vec<Normal<f64>> = (0..8)
            .map(|t| {
                let mean = mean_weight(t, source);
                Normal::new(mean, mean.abs() * WEIGHT_RELATIVE_SD).expect("positive")
            })
            .collect();
        for v in [&mut self.pre, &mut self.post] {
            v.clear();
            v.resize(n, NeuronId::null());
        }
        for v in [&mut self.weight, &mut self.delay] {
            v.clear();
            v.resize(n, 0.0);
        }
        let parts = split_by(&mut self.pre, &starts)
            .into_par_iter()
            .zip(split_by(&mut self.post, &starts))
            .zip(split_by(&mut self.weight, &starts))
            .zip(split_by(&mut self.delay, &starts))
            .zip(sources);
        parts.for_each(|((((pre, post), weight), delay), k)| {
            let global = offsets[source] + k;
            let mut rng = stream(seed, 1 << 40 | global as u64);
            let mut targets: Vec<(u32, u8)> = Vec::with_capacity(pre.len());
            for (t, d) in degrees.iter().enumerate() {
                for _ in 0..d[k] {
                    let tgt = offsets[t] + rng.random_range(0..sizes[t]) as usize;
                    targets.push((tgt as u32, t as u8));
                }
            }
            targets.sort_unstable();
            pre.fill(all[global]);
            for (j, &(tgt, t)) in targets.iter().enumerate() {
                post[j] = all[tgt as usize];
                weight[j] = if is_excitatory(source) {
                    redraw(&weights[t as usize], &mut rng, |w| w >= 0.0)
                } else {
                    redraw(&weights[t as usize], &mut rng, |w| w <= 0.0)
                } as f32;
                delay[j] = redraw(&delay_draw, &mut rng, |d| d >= DT_MS) as f32;
            }
        });
    }
}

/// A draw from `normal`, redrawn until `accept` takes it.
fn redraw(normal: &Normal<f64>, rng: &mut SmallRng, accept: impl Fn(f64) -> bool) -> f64 {
    loop {
        let x = normal.sample(rng);
        if accept(x) {
            return x;
        }
    }
}

/// How far the construction has come.
#[derive(Clone, Copy, Debug)]
pub struct BuildProgress {
    /// Synapses made so far.
    pub synapses: u64,
    /// Synapses to make.
    pub total: u64,
}

/// The network: the graph and where each population's neurons are.
pub struct Network {
    /// Neurons and synapses.
    pub graph: NeuralGraph,
    /// Each population's neurons, in order.
    pub populations: Vec<Vec<NeuronId>>,
    /// Wall time of the construction, `optimize_layout` included.
    pub build_time: Duration,
    /// Wall time of `optimize_layout` alone.
    pub layout_time: Duration,
}

/// What building the network asks of a graph: a `NeuralGraph`, or one rank's part of a
/// distributed network (which keeps the synapses that end on its own neurons).
pub trait Builds {
    /// Adds `count` neurons with `params`.
    fn add_neurons(&mut self, count: usize, params: &NeuronParams) -> Result<Vec<NeuronId>, Error>;
    /// Sets the membrane potential of `n`.
    fn set_v_m(&mut self, n: NeuronId, v_m: f32);
    /// Connects a batch; returns the synapses made here.
    fn connect_many(
        &mut self,
        pre: &[NeuronId],
        post: &[NeuronId],
        weight: &[f32],
        delay: &[f32],
    ) -> Result<usize, Error>;
}

impl Builds for NeuralGraph {
    fn add_neurons(&mut self, count: usize, params: &NeuronParams) -> Result<Vec<NeuronId>, Error> {
        NeuralGraph::add_neurons(self, count, params)
    }
    fn set_v_m(&mut self, n: NeuronId, v_m: f32) {
        self.neuron_mut(n).expect("just added").v_m = v_m;
    }
    fn connect_many(
        &mut self,
        pre: &[NeuronId],
        post: &[NeuronId],
        weight: &[f32],
        delay: &[f32],
    ) -> Result<usize, Error> {
        NeuralGraph::connect_many(self, pre, post, weight, delay)
    }
}

/// Builds the network at `config.scale`. `progress` is called every million synapses
/// and at the end.
pub fn build(config: &Config, progress: &mut dyn FnMut(BuildProgress)) -> Result<Network, Error> {
    let started = Instant::now();
    let mut graph = NeuralGraph::new();
    let total = total_synapses(config)?;
    graph.reserve_synapse_table(usize::try_from(total).unwrap_or(usize::MAX))?;
    let populations = build_into(&mut graph, config, progress)?;
    let layout_started = Instant::now();
    graph.optimize_layout()?;
    let layout_time = layout_started.elapsed();
    Ok(Network {
        graph,
        populations,
        build_time: started.elapsed(),
        layout_time,
    })
}

/// The synapses of the network at `config.scale`.
pub fn total_synapses(config: &Config) -> Result<u64, Error> {
    if !(config.scale.is_finite() && config.scale > 0.0) {
        return Err(Error::InvalidArgument {
            name: "scale",
            message: format!("{} must be a finite number above zero", config.scale),
        });
    }
    Ok(synapse_counts(&population_sizes(config.scale))
        .iter()
        .flatten()
        .sum())
}

/// Adds the neurons and connects the synapses of the network at `config.scale` to
/// `graph`, in an order that needs no `optimize_layout`; returns each population's
/// neurons.
pub fn build_into(
    graph: &mut impl Builds,
    config: &Config,
    progress: &mut dyn FnMut(BuildProgress),
) -> Result<Vec<Vec<NeuronId>>, Error> {
    let total = total_synapses(config)?;
    let sizes = population_sizes(config.scale);
    let populations = add_populations(graph, &sizes, config.seed)?;
    let mut made = 0u64;
    let mut batch = Batch::default();
    for s in 0..8 {
        connect_from(
            graph,
            config.seed,
            s,
            &sizes,
            &populations,
            &mut batch,
            &mut |n| {
                made += n;
                progress(BuildProgress {
                    synapses: made,
                    total,
                });
            },
        )?;
    }
    Ok(populations)
}

/// The neurons, population by population (so handle indices grow with the population),
/// with their initial membrane potentials drawn per population.
fn add_populations(
    graph: &mut impl Builds,
    sizes: &[u32; 8],
    seed: u64,
) -> Result<Vec<Vec<NeuronId>>, Error> {
    let mut populations = Vec::with_capacity(8);
    let mut rng = stream(seed, 0);
    for (p, &size) in sizes.iter().enumerate() {
        let params = NeuronParams {
            c_m: C_M_PF as f32,
            tau_m: TAU_M_MS as f32,
            tau_syn_ex: TAU_SYN_MS as f32,
            tau_syn_in: TAU_SYN_MS as f32,
            t_ref: 2.0,
            e_l: -65.0,
            v_reset: -65.0,
            v_th: -50.0,
            i_e: background_current(p) as f32,
            v_init: V0_MEAN_MV[p] as f32,
            population: p as u32,
        };
        let ids = graph.add_neurons(size as usize, &params)?;
        let v0 = Normal::new(V0_MEAN_MV[p], V0_STD_MV[p]).expect("a positive deviation");
        for &n in &ids {
            graph.set_v_m(n, v0.sample(&mut rng) as f32);
        }
        populations.push(ids);
    }
    Ok(populations)
}

/// Connects every synapse from population `s`: source neurons in ascending order, a
/// batch of whole sources at a time. Each batch's synapses are drawn in parallel and
/// connected with one `connect_many`, so they enter the table sorted by source as
/// `optimize_layout` wants them (it then moves nothing), and the arrays of only one batch
/// (`batch`'s) are ever in memory. `made(n)` is told each batch's count.
fn connect_from(
    graph: &mut impl Builds,
    seed: u64,
    s: usize,
    sizes: &[u32; 8],
    populations: &[Vec<NeuronId>],
    batch: &mut Batch,
    made: &mut dyn FnMut(u64),
) -> Result<(), Error> {
    let counts = synapse_counts(sizes);
    let offsets: Vec<usize> = sizes
        .iter()
        .scan(0usize, |acc, &n| {
            let start = *acc;
            *acc += n as usize;
            Some(start)
        })
        .collect();
    let all: Vec<NeuronId> = populations.iter().flatten().copied().collect();
    let degrees: Vec<Vec<u32>> = (0..8)
        .into_par_iter()
        .map(|t| out_degrees(seed, t, s, counts[t][s], sizes[s]))
        .collect();
    let per_source: Vec<u64> = (0..sizes[s] as usize)
        .map(|k| degrees.iter().map(|d| u64::from(d[k])).sum())
        .collect();
    let mut first = 0;
    while first < per_source.len() {
        let mut last = first;
        let mut size = 0u64;
        while last < per_source.len() && (size == 0 || size + per_source[last] <= BATCH_SYNAPSES) {
            size += per_source[last];
            last += 1;
        }
        batch.draw(seed, s, first..last, &degrees, sizes, &offsets, &all);
        made(graph.connect_many(&batch.pre, &batch.post, &batch.weight, &batch.delay)? as u64);
        first = last;
    }
    Ok(())
}

/// Spikes recorded in the measured window.
#[derive(Clone, Debug, Default)]
pub struct SpikeRecord {
    /// `(time since the window opened (ms), population, neuron)`, in time order.
    pub spikes: Vec<(f32, u8, NeuronId)>,
    /// Measured model time (ms).
    pub time_ms: f64,
}

/// The simulation's figures.
#[derive(Clone, Debug, Default)]
pub struct SimulationReport {
    /// Wall time of the transient.
    pub transient_wall: Duration,
    /// Wall time of the measured window (a checkpoint's save not included).
    pub measured_wall: Duration,
    /// Synaptic events delivered in the measured window.
    pub events: u64,
    /// Spikes in the measured window.
    pub spikes: u64,
    /// A digest of every simulated step's spikes, from the step the run started at.
    pub digests: SpikeDigests,
}

impl SimulationReport {
    /// Wall seconds per model second in the measured window.
    pub fn real_time_factor(&self, time_ms: f64) -> f64 {
        self.measured_wall.as_secs_f64() / (time_ms / 1000.0)
    }

    /// Synaptic events per wall second in the measured window.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.measured_wall.as_secs_f64().max(1e-12)
    }
}

/// How far the simulation has come, in steps.
#[derive(Clone, Copy, Debug)]
pub struct SimulationProgress {
    /// Steps done.
    pub steps: u64,
    /// Steps to do.
    pub total: u64,
}

/// A GPU to run the step on: a CUDA device with the `cuda` feature; without it there is
/// none (the type has no value).
#[cfg(feature = "cuda")]
pub type Gpu = neurostore::cuda::Device;
/// A GPU to run the step on: without the `cuda` feature there is none.
#[cfg(not(feature = "cuda"))]
pub enum Gpu {}

/// A checkpoint to take during [`simulate_with`]: the graph is saved to `path` just
/// before step `step`.
#[derive(Debug)]
pub struct Checkpointing {
    /// The step before which the graph is saved.
    pub step: u64,
    /// Where the checkpoint goes.
    pub path: PathBuf,
    /// The save's report, once it is taken.
    pub saved: Option<SnapshotReport>,
}

/// A digest of each of consecutive steps' spikes (which neurons fired, in order): a run
/// resumed from a checkpoint fires exactly the spikes of the run that saved it when its
/// digests equal that run's from the checkpoint on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpikeDigests {
    /// The step of the first digest.
    pub first_step: u64,
    /// One digest per step.
    pub per_step: Vec<u64>,
}

impl SpikeDigests {
    /// Adds the digest of the next step's spikes (FNV-1a over the handles).
    pub fn push(&mut self, fired: &[NeuronId]) {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for n in fired {
            h = (h ^ n.to_bits()).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.per_step.push(h ^ fired.len() as u64);
    }

    /// The digests of `step` and the steps after it.
    pub fn since(&self, step: u64) -> SpikeDigests {
        let skip = step.saturating_sub(self.first_step) as usize;
        SpikeDigests {
            first_step: self.first_step.max(step),
            per_step: self.per_step.get(skip..).unwrap_or_default().to_vec(),
        }
    }

    /// Writes the digests as text: the first step, then one digest a line.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut text = format!("first step {}\n", self.first_step);
        for d in &self.per_step {
            text.push_str(&format!("{d:016x}\n"));
        }
        std::fs::write(path, text)
    }

    /// Reads digests written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<SpikeDigests, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = |line: usize| format!("{}: line {line} is not a spike digest", path.display());
        let mut lines = text.lines();
        let first_step = lines
            .next()
            .and_then(|l| l.strip_prefix("first step "))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad(1))?;
        let per_step = lines
            .enumerate()
            .map(|(k, l)| u64::from_str_radix(l, 16).map_err(|_| bad(k + 2)))
            .collect::<Result<_, _>>()?;
        Ok(SpikeDigests {
            first_step,
            per_step,
        })
    }

    /// Compares the steps both cover: their number when every one is equal, else the
    /// first step that differs.
    pub fn compare(&self, other: &SpikeDigests) -> Result<u64, u64> {
        let first = self.first_step.max(other.first_step);
        let ours = self.since(first).per_step;
        let theirs = other.since(first).per_step;
        match ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            Some(k) => Err(first + k as u64),
            None => Ok(ours.len().min(theirs.len()) as u64),
        }
    }
}

/// Simulates the transient, then the measured window, recording its spikes, on the CPU.
/// `progress` is called every 100 steps and at the end.
pub fn simulate(
    network: &mut Network,
    config: &Config,
    progress: &mut (dyn FnMut(SimulationProgress) + Send),
) -> Result<(SpikeRecord, SimulationReport), Error> {
    simulate_with(network, config, None, None, progress)
}

/// As [`simulate`], with the step on `gpu` when one is given (`GpuNetwork`: the same
/// spikes as the CPU step; the neurons' final state is then pulled back into the graph),
/// and `checkpoint` taken on the way (CPU step only). A graph that has simulated some
/// steps already (one resumed from a checkpoint) goes on from its current step: only the
/// part of the measured window after it is measured. The CPU steps run through
/// [`NeuralGraph::run`], on a worker of rayon's pool.
pub fn simulate_with(
    network: &mut Network,
    config: &Config,
    gpu: Option<&Gpu>,
    checkpoint: Option<&mut Checkpointing>,
    progress: &mut (dyn FnMut(SimulationProgress) + Send),
) -> Result<(SpikeRecord, SimulationReport), Error> {
    let transient_steps = (config.transient_ms / DT_MS).round() as u64;
    let total = transient_steps + (config.time_ms / DT_MS).round() as u64;
    let graph = &mut network.graph;
    let start = graph.current_step();
    if start > total || (gpu.is_some() && checkpoint.is_some()) {
        return Err(Error::InvalidArgument {
            name: "simulate",
            message: format!(
                "a run of {total} steps cannot start at step {start}, and checkpoints come \
                 from the CPU step"
            ),
        });
    }
    let mut steps = StepRecorder::new(
        start,
        start.max(transient_steps),
        total,
        checkpoint,
        progress,
    );
    steps.before_step(graph, start)?;
    #[cfg(feature = "cuda")]
    if let Some(d) = gpu {
        let mut net = neurostore::cuda::GpuNetwork::new(graph, d, DT_MS)?;
        let mut fired = Vec::new();
        for k in start..total {
            fired.clear();
            fired.extend_from_slice(net.step()?);
            steps.after_step(graph, k, &fired)?;
        }
        net.pull_neurons(graph)?;
        return Ok(steps.finish());
    }
    #[cfg(not(feature = "cuda"))]
    let _ = gpu;
    graph.run(total - start, DT_MS, |graph, fired| {
        steps.after_step(graph, graph.current_step() - 1, fired)
    })?;
    Ok(steps.finish())
}

/// What [`simulate_with`] does around each step: the checkpoint, the wall-clock split
/// between transient and measured window, the digests, the spike record and progress.
struct StepRecorder<'a> {
    measured_from: u64,
    total: u64,
    checkpoint: Option<&'a mut Checkpointing>,
    progress: &'a mut (dyn FnMut(SimulationProgress) + Send),
    report: SimulationReport,
    record: SpikeRecord,
    started: Instant,
    /// Wall time spent saving the checkpoint, which counts as neither window's.
    paused: Duration,
}

impl<'a> StepRecorder<'a> {
    fn new(
        start: u64,
        measured_from: u64,
        total: u64,
        checkpoint: Option<&'a mut Checkpointing>,
        progress: &'a mut (dyn FnMut(SimulationProgress) + Send),
    ) -> Self {
        StepRecorder {
            measured_from,
            total,
            checkpoint,
            progress,
            report: SimulationReport {
                digests: SpikeDigests {
                    first_step: start,
                    per_step: Vec::new(),
                },
                ..SimulationReport::default()
            },
            record: SpikeRecord {
                spikes: Vec::new(),
                time_ms: (total - measured_from) as f64 * DT_MS,
            },
            started: Instant::now(),
            paused: Duration::ZERO,
        }
    }

    /// Before step `k` (or at the end, `k == total`): the transient's end and the
    /// checkpoint.
    fn before_step(&mut self, graph: &NeuralGraph, k: u64) -> Result<(), Error> {
        if k == self.measured_from {
            self.report.transient_wall = self.started.elapsed() - self.paused;
        }
        if let Some(cp) = self.checkpoint.as_deref_mut().filter(|cp| cp.step == k) {
            let saving = Instant::now();
            cp.saved = Some(graph.save(&cp.path)?);
            self.paused += saving.elapsed();
        }
        Ok(())
    }

    /// After step `k`, which fired `fired`; then before the next.
    fn after_step(&mut self, graph: &NeuralGraph, k: u64, fired: &[NeuronId]) -> Result<(), Error> {
        self.report.digests.push(fired);
        if k >= self.measured_from {
            let t = ((k - self.measured_from) as f64 * DT_MS) as f32;
            self.report.events += record_spikes(graph, t, fired, &mut self.record);
        }
        if k % 100 == 99 || k + 1 == self.total {
            (self.progress)(SimulationProgress {
                steps: k + 1,
                total: self.total,
            });
        }
        self.before_step(graph, k + 1)
    }

    fn finish(mut self) -> (SpikeRecord, SimulationReport) {
        self.report.measured_wall =
            self.started.elapsed() - self.paused - self.report.transient_wall;
        self.report.spikes = self.record.spikes.len() as u64;
        (self.record, self.report)
    }
}

/// Records the spikes `fired` at time `t` of the measured window; returns the synaptic
/// events they cause.
pub fn record_spikes(
    graph: &NeuralGraph,
    t: f32,
    fired: &[NeuronId],
    record: &mut SpikeRecord,
) -> u64 {
    let mut events = 0;
    for &n in fired {
        let population = graph.neuron(n).map_or(0, |x| x.population) as u8;
        events += graph.out_degree(n).unwrap_or(0) as u64;
        record.spikes.push((t, population, n));
    }
    events
}

/// The network saved in the checkpoint at `path`: the graph, and its populations read
/// from the neurons (each in handle order, as [`build`] made them). `build_time` is the
/// load's wall time.
pub fn resume(path: &Path, progress: &mut dyn FnMut(Progress)) -> Result<Network, Error> {
    let started = Instant::now();
    let graph = NeuralGraph::load_with(path, &mut Options::new().progress(progress))?;
    let mut populations = vec![Vec::new(); 8];
    for (n, neuron) in graph.neurons().iter() {
        let p = populations
            .get_mut(neuron.population as usize)
            .ok_or_else(|| Error::InvalidArgument {
                name: "resume",
                message: format!(
                    "neuron {n:?} belongs to population {}: the model has 8",
                    neuron.population
                ),
            })?;
        p.push(n);
    }
    for p in &mut populations {
        p.sort_by_key(|n| n.index());
    }
    Ok(Network {
        graph,
        populations,
        build_time: started.elapsed(),
        layout_time: Duration::ZERO,
    })
}

/// Mean rate (Hz) of each population over the measured window.
pub fn population_rates(record: &SpikeRecord, sizes: &[usize; 8]) -> [f64; 8] {
    let mut counts = [0u64; 8];
    for &(_, p, _) in &record.spikes {
        counts[p as usize] += 1;
    }
    let seconds = record.time_ms / 1000.0;
    std::array::from_fn(|p| {
        if sizes[p] == 0 || seconds <= 0.0 {
            0.0
        } else {
            counts[p] as f64 / (sizes[p] as f64 * seconds)
        }
    })
}

/// Removes `fraction` of the neurons, chosen at random, with their synapses. Returns
/// the removed handles and the number of synapses that went with them.
pub fn remove_random_neurons(
    network: &mut Network,
    fraction: f64,
    seed: u64,
) -> (Vec<NeuronId>, usize) {
    let before = network.graph.synapse_count();
    let removed = pick_random_neurons(&mut network.populations, fraction, seed);
    network.graph.remove_neurons(&removed);
    (removed, before - network.graph.synapse_count())
}

/// Takes `fraction` of the neurons, chosen at random, out of `populations`; returns them.
pub fn pick_random_neurons(
    populations: &mut [Vec<NeuronId>],
    fraction: f64,
    seed: u64,
) -> Vec<NeuronId> {
    let mut rng = stream(seed, 1000);
    let mut removed = Vec::new();
    for population in populations {
        population.retain(|&n| {
            if rng.random_bool(fraction) {
                removed.push(n);
                false
            } else {
                true
            }
        });
    }
    removed
}

/// An order-independent digest of a table's `(handle, object bytes)` pairs: equal
/// digests (and counts) mean, but for a 2^-128 chance, equal sets of pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    /// Pairs seen.
    pub count: u64,
    sum: u64,
    xor: u64,
}

impl Digest {
    fn add(&mut self, handle_bits: u64, bytes: &[u8]) {
        // FNV-1a over the bytes, then two different finalisers for the two lanes.
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ handle_bits.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
            h ^= h >> 29;
        }
        let a = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let b = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.count += 1;
        self.sum = self.sum.wrapping_add(a ^ (a >> 32));
        self.xor ^= b ^ (b >> 29);
    }

    /// The digest of every object of `T` in `store`.
    pub fn of<T: bytemuck::Pod + Send + Sync>(store: &Store) -> Digest {
        let mut d = Digest::default();
        if let Some(table) = store.table::<T>() {
            for (h, x) in table.iter() {
                d.add(h.to_bits(), bytemuck::bytes_of(x));
            }
        }
        d
    }
}

/// What the snapshot step did and found.
#[derive(Clone, Debug)]
pub struct RoundTrip {
    /// The save's report.
    pub saved: SnapshotReport,
    /// Wall time of the load.
    pub load_time: Duration,
    /// Wall time of the verification.
    pub verify_time: Duration,
    /// Handles checked to resolve to equal objects in the loaded store.
    pub handles_checked: u64,
    /// Removed handles checked to stay stale.
    pub stale_checked: u64,
    /// True when the original stayed in memory and was compared object by object; false
    /// when it was dropped before the load to make room, and the comparison went through
    /// digests of every (handle, object) pair.
    pub compared_directly: bool,
}

/// The round trip failed to verify.
#[derive(Debug)]
pub struct VerifyError(pub String);

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "snapshot round trip: {}", self.0)
    }
}

impl std::error::Error for VerifyError {}

/// Saves the network's store to `path`, loads it into a new store and verifies that
/// every handle resolves to an equal object there and every removed handle stays stale.
///
/// When `keep_original` is false the network is dropped before the load (for runs whose
/// network and its copy do not fit in memory together), and the objects are compared
/// through [`Digest`]s taken before the save; `network` is `None` afterwards.
pub fn snapshot_round_trip(
    network: &mut Option<Network>,
    removed: &[NeuronId],
    path: &Path,
    keep_original: bool,
    save_progress: &mut dyn FnMut(Progress),
    load_progress: &mut dyn FnMut(Progress),
) -> Result<RoundTrip, Box<dyn std::error::Error>> {
    let store = network.as_ref().ok_or("no network to save")?.graph.store();
    let neuron_digest = Digest::of::<Neuron>(store);
    let synapse_digest = Digest::of::<Synapse>(store);
    let saved = store.save_with(path, &mut Options::new().progress(&mut *save_progress))?;
    if !keep_original {
        *network = None;
    }
    let registry = TypeRegistry::new().with::<Neuron>()?.with::<Synapse>()?;
    let started = Instant::now();
    let loaded = Store::load_with(
        path,
        &registry,
        &mut Options::new().progress(&mut *load_progress),
    )?;
    let load_time = started.elapsed();

    let started = Instant::now();
    let mut handles_checked = 0u64;
    // In the loaded store every object's handle resolves to it...
    handles_checked += check_resolves::<Neuron>(&loaded)?;
    handles_checked += check_resolves::<Synapse>(&loaded)?;
    // ...and the (handle, object) pairs are the saved ones.
    for (what, before, after) in [
        ("neurons", neuron_digest, Digest::of::<Neuron>(&loaded)),
        ("synapses", synapse_digest, Digest::of::<Synapse>(&loaded)),
    ] {
        if before != after {
            return Err(VerifyError(format!(
                "the {what} differ: {} saved, {} loaded, digests {before:?} and {after:?}",
                before.count, after.count
            ))
            .into());
        }
    }
    let compared_directly = network.is_some();
    if let Some(network) = network {
        let original = network.graph.store();
        handles_checked += compare::<Neuron>(original, &loaded)?;
        handles_checked += compare::<Synapse>(original, &loaded)?;
    }
    let mut stale_checked = 0;
    for &n in removed {
        if loaded.get(n).is_some() {
            return Err(
                VerifyError(format!("removed neuron {n:?} resolves after the load")).into(),
            );
        }
        stale_checked += 1;
    }
    Ok(RoundTrip {
        saved,
        load_time,
        verify_time: started.elapsed(),
        handles_checked,
        stale_checked,
        compared_directly,
    })
}

/// Every object of `T` in `store` is what its own handle resolves to.
fn check_resolves<T: PartialEq + std::fmt::Debug + Send + Sync + 'static>(
    store: &Store,
) -> Result<u64, VerifyError> {
    let Some(table) = store.table::<T>() else {
        return Ok(0);
    };
    let mut n = 0;
    for (h, x) in table.iter() {
        if table.get(h) != Some(x) {
            return Err(VerifyError(format!(
                "{h:?} does not resolve to its own object"
            )));
        }
        n += 1;
    }
    Ok(n)
}

/// Every handle of `T` in `original` resolves in `loaded` to an equal object, and the
/// two hold as many.
fn compare<T: PartialEq + std::fmt::Debug + Send + Sync + 'static>(
    original: &Store,
    loaded: &Store,
) -> Result<u64, VerifyError> {
    let (Some(a), Some(b)) = (original.table::<T>(), loaded.table::<T>()) else {
        return Err(VerifyError(format!(
            "a table of {} is missing",
            std::any::type_name::<T>()
        )));
    };
    if a.len() != b.len() {
        return Err(VerifyError(format!(
            "{} objects saved, {} loaded",
            a.len(),
            b.len()
        )));
    }
    let mut n = 0;
    for (h, x) in a.iter() {
        match b.get(h) {
            Some(y) if y == x => n += 1,
            other => {
                return Err(VerifyError(format!(
                    "{h:?} was {x:?}, after the load {other:?}"
                )));
            }
        }
    }
    Ok(n)
}

/// Synapses entering each population's live neurons: one pass over the synapse table.
pub fn synapses_into(network: &Network) -> [u64; 8] {
    let graph = &network.graph;
    let mut population = vec![u8::MAX; graph.neurons().slot_count()];
    for (n, neuron) in graph.neurons().iter() {
        population[n.index() as usize] = neuron.population as u8;
    }
    let mut into = [0u64; 8];
    for s in graph.synapses().values() {
        if let Some(count) = into.get_mut(population[s.post_index() as usize] as usize) {
            *count += 1;
        }
    }
    into
}
