//! A random network built with the same calls on one `NeuralGraph` or on every rank of a
//! `DistributedGraph`, for the tests that compare the two (`tests/distributed.rs` with
//! ranks as threads, `tests/mpi.rs` with ranks as MPI processes).
#![allow(dead_code)]

use neurostore::Neuron;
use neurostore::distributed::{DistributedGraph, SpikeExchange};
use neurostore::neural::{NeuralGraph, NeuronId, NeuronParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const DT: f64 = 0.1;

/// A random network: `neurons` neurons (a fifth inhibitory), DC-driven near threshold,
/// `per_neuron` synapses from each, delays from `shortest` ms up, built in batches by
/// presynaptic group plus a few single connections.
pub struct Recipe {
    pub neurons: usize,
    pub per_neuron: usize,
    pub shortest: f32,
    pub seed: u64,
}

/// The calls that build a network, made the same way on one graph or on every rank.
pub trait Builder {
    fn add(&mut self, count: usize, params: &NeuronParams) -> Vec<NeuronId>;
    fn batch(&mut self, pre: &[NeuronId], post: &[NeuronId], w: &[f32], d: &[f32]);
    fn one(&mut self, pre: NeuronId, post: NeuronId, w: f32, d: f32);
    fn init(&mut self, f: &dyn Fn(NeuronId, &mut Neuron));
}

impl Builder for NeuralGraph {
    fn add(&mut self, count: usize, params: &NeuronParams) -> Vec<NeuronId> {
        self.add_neurons(count, params).unwrap()
    }
    fn batch(&mut self, pre: &[NeuronId], post: &[NeuronId], w: &[f32], d: &[f32]) {
        assert_eq!(self.connect_many(pre, post, w, d).unwrap(), pre.len());
    }
    fn one(&mut self, pre: NeuronId, post: NeuronId, w: f32, d: f32) {
        self.connect(pre, post, w, d).unwrap();
    }
    fn init(&mut self, f: &dyn Fn(NeuronId, &mut Neuron)) {
        for (n, neuron) in self.neurons_mut() {
            f(n, neuron);
        }
    }
}

impl<X: SpikeExchange> Builder for DistributedGraph<X> {
    fn add(&mut self, count: usize, params: &NeuronParams) -> Vec<NeuronId> {
        self.add_neurons(count, params).unwrap()
    }
    fn batch(&mut self, pre: &[NeuronId], post: &[NeuronId], w: &[f32], d: &[f32]) {
        let made = self.connect_many(pre, post, w, d).unwrap();
        let mine = post.iter().filter(|&&p| self.owns(p)).count();
        assert_eq!(
            made, mine,
            "a rank keeps exactly the synapses that end on its neurons"
        );
    }
    fn one(&mut self, pre: NeuronId, post: NeuronId, w: f32, d: f32) {
        let made = self.connect(pre, post, w, d).unwrap();
        assert_eq!(made.is_some(), self.owns(post));
    }
    fn init(&mut self, f: &dyn Fn(NeuronId, &mut Neuron)) {
        for (n, neuron) in self.neurons_mut() {
            f(n, neuron);
        }
    }
}

impl Recipe {
    pub fn build(&self, b: &mut dyn Builder) -> Vec<NeuronId> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let driven = NeuronParams {
            i_e: 385.0,
            ..NeuronParams::default()
        };
        let ns = b.add(self.neurons, &driven);
        let inhibitory = self.neurons / 5;
        let delay = |rng: &mut StdRng| self.shortest + rng.random_range(0.0..2.0f32);
        // Batches by groups of 64 presynaptic neurons, targets in random order.
        for group in ns.chunks(64) {
            let (mut pre, mut post, mut w, mut d) = (vec![], vec![], vec![], vec![]);
            for (k, &a) in group.iter().enumerate() {
                let inh = (a.index() as usize) < inhibitory;
                for _ in 0..self.per_neuron {
                    pre.push(a);
                    post.push(ns[rng.random_range(0..ns.len())]);
                    w.push(if inh { -4.0 * 87.8 } else { 87.8 } * rng.random_range(0.5..1.5f32));
                    d.push(delay(&mut rng));
                }
                let _ = k;
            }
            b.batch(&pre, &post, &w, &d);
        }
        for _ in 0..self.neurons / 10 {
            let (a, z) = (
                ns[rng.random_range(0..ns.len())],
                ns[rng.random_range(0..ns.len())],
            );
            b.one(a, z, 150.0, delay(&mut rng));
        }
        let seed = self.seed;
        b.init(&move |n, neuron| {
            let mut r = StdRng::seed_from_u64(seed ^ u64::from(n.index()));
            neuron.v_m = -65.0 + r.random_range(0.0..10.0f32);
        });
        ns
    }
}

/// The spikes of every step and the final states of a single graph.
pub fn single_run(recipe: &Recipe, steps: u64) -> (Vec<Vec<NeuronId>>, Vec<(NeuronId, Neuron)>) {
    let mut g = NeuralGraph::new();
    recipe.build(&mut g);
    let spikes: Vec<Vec<NeuronId>> = (0..steps).map(|_| g.step(DT).unwrap().to_vec()).collect();
    let total: usize = spikes.iter().map(Vec::len).sum();
    assert!(
        total > recipe.neurons / 2,
        "the network is active: {total} spikes"
    );
    (spikes, g.neurons().iter().map(|(n, x)| (n, *x)).collect())
}
