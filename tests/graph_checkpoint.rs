//! Checkpoints of a `NeuralGraph`: a graph saved in the middle of a run and loaded goes on
//! exactly as the original does (every later step's spikes, every neuron's bytes, the
//! next handles), whether it was built, edited, defragmented or laid out before the save;
//! a corrupted, truncated or foreign file is a typed error.

mod common;

use neurostore::neural::{NeuralGraph, Neuron, NeuronId, NeuronParams};
use neurostore::snapshot::{self, Content, Options};
use neurostore::{Error, SnapshotError, Store};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const DT: f64 = 0.1;

/// `n` neurons, a third driven above threshold, each sending `fan_out` synapses of
/// random weight and of delays from 0.1 to 6 ms (one to 60 steps).
fn random_network(n: usize, fan_out: usize, seed: u64) -> (NeuralGraph, Vec<NeuronId>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut graph = NeuralGraph::new();
    let mut ns = Vec::new();
    for k in 0..n {
        let i_e = if k % 3 == 0 { 420.0 } else { 300.0 };
        let params = NeuronParams {
            i_e,
            v_init: -70.0 + rng.random_range(0.0..15.0),
            ..NeuronParams::default()
        };
        ns.push(graph.add_neuron(&params).unwrap());
    }
    let (mut pre, mut post, mut weight, mut delay) = (vec![], vec![], vec![], vec![]);
    for &a in &ns {
        for _ in 0..fan_out {
            pre.push(a);
            post.push(ns[rng.random_range(0..n)]);
            weight.push(rng.random_range(-60.0..90.0));
            delay.push(f32::from(rng.random_range(1u8..=60)) * 0.1);
        }
    }
    graph.connect_many(&pre, &post, &weight, &delay).unwrap();
    (graph, ns)
}

fn reload(graph: &NeuralGraph) -> NeuralGraph {
    let mut file = Vec::new();
    graph.save_to(&mut file).unwrap();
    NeuralGraph::load_from(&file[..]).unwrap()
}

/// Steps both graphs `steps` times, asserting equal spikes every step and equal neurons
/// (bit for bit) every 25 steps and at the end; returns the spikes seen.
fn step_alike(original: &mut NeuralGraph, loaded: &mut NeuralGraph, steps: usize) -> usize {
    let mut spikes = 0;
    for k in 0..steps {
        let a = original.step(DT).unwrap().to_vec();
        let b = loaded.step(DT).unwrap().to_vec();
        assert_eq!(a, b, "step {k} after the load");
        spikes += a.len();
        if k % 25 == 24 || k + 1 == steps {
            same_neurons(original, loaded);
        }
    }
    spikes
}

fn same_neurons(a: &NeuralGraph, b: &NeuralGraph) {
    assert_eq!(a.neuron_count(), b.neuron_count());
    for (n, x) in a.neurons().iter() {
        let y = b.neuron(n).expect("every neuron is in the loaded graph");
        assert_eq!(
            bytemuck::bytes_of::<Neuron>(x),
            bytemuck::bytes_of::<Neuron>(y),
            "{n:?}"
        );
    }
    assert_eq!(
        (a.current_step(), a.time_ms().to_bits(), a.resolution()),
        (b.current_step(), b.time_ms().to_bits(), b.resolution())
    );
}

/// Builds, runs 150 steps, applies `edit`, runs 20 more, checkpoints, and checks that the
/// loaded graph goes on exactly as the original for 400 steps.
fn resumes_exactly(edit: impl FnOnce(&mut NeuralGraph, &[NeuronId])) {
    let (mut graph, ns) = random_network(400, 30, 7);
    for _ in 0..150 {
        graph.step(DT).unwrap();
    }
    edit(&mut graph, &ns);
    for _ in 0..20 {
        graph.step(DT).unwrap();
    }
    let mut loaded = reload(&graph);
    assert_eq!(loaded.last_spikes(), graph.last_spikes());
    assert_eq!(loaded.synapse_count(), graph.synapse_count());
    for &n in &ns {
        assert_eq!(loaded.outgoing(n), graph.outgoing(n), "walk order of {n:?}");
    }
    let spikes = step_alike(&mut graph, &mut loaded, 400);
    assert!(
        spikes > 100,
        "only {spikes} spikes: the test network is too quiet"
    );
    // The next handles are the same.
    let params = NeuronParams::default();
    let (a, b) = (
        graph.add_neuron(&params).unwrap(),
        loaded.add_neuron(&params).unwrap(),
    );
    assert_eq!(a, b);
    let from = *ns.iter().find(|&&n| graph.neuron(n).is_some()).unwrap();
    assert_eq!(
        graph.connect(from, a, 5.0, 1.0).unwrap(),
        loaded.connect(from, b, 5.0, 1.0).unwrap()
    );
    step_alike(&mut graph, &mut loaded, 50);
}

#[test]
fn a_built_graph_resumes_exactly() {
    resumes_exactly(|_, _| {});
}

#[test]
fn an_edited_graph_resumes_exactly() {
    resumes_exactly(|graph, ns| {
        graph.set_defrag_policy(None);
        graph.remove_neurons(&ns[10..40]);
        graph.remove_neuron(ns[77]);
        let out = graph.outgoing(ns[5]).unwrap();
        graph.set_weight(out[0], 123.0).unwrap();
        graph.set_delay(out[1], 0.3).unwrap();
        graph.disconnect(out[2]).unwrap();
        graph.connect(ns[6], ns[7], 80.0, 4.4).unwrap();
    });
}

#[test]
fn a_defragmented_graph_resumes_exactly() {
    resumes_exactly(|graph, ns| {
        graph.set_defrag_policy(None);
        graph.remove_neurons(&ns[100..200]);
        assert!(graph.defragment().unwrap().moved > 0);
    });
}

#[test]
fn a_laid_out_graph_resumes_exactly() {
    resumes_exactly(|graph, ns| {
        for k in 0..300 {
            graph
                .connect(ns[k * 7 % 400], ns[k % 400], 30.0, 2.0)
                .unwrap();
        }
        assert!(graph.optimize_layout().unwrap().moved > 0);
    });
}

#[test]
fn a_graph_saved_before_its_first_step_resumes_exactly() {
    let (mut graph, _) = random_network(50, 10, 3);
    graph
        .inject_spikes(&[graph.neurons().iter().next().unwrap().0], DT)
        .unwrap();
    let mut loaded = reload(&graph);
    step_alike(&mut graph, &mut loaded, 100);
    let (mut fresh, _) = random_network(50, 10, 3);
    let mut loaded = reload(&fresh);
    assert_eq!(loaded.resolution(), None);
    step_alike(&mut fresh, &mut loaded, 100);
}

#[test]
fn saving_to_a_path_is_atomic_and_reports_progress() {
    let (mut graph, _) = random_network(100, 10, 5);
    for _ in 0..30 {
        graph.step(DT).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.nsnap");
    let mut seen = Vec::new();
    let report = graph
        .save_with(&path, &mut Options::new().progress(|p| seen.push(p)))
        .unwrap();
    assert_eq!(report.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(seen.last().map(|p| p.done), Some(report.bytes));
    assert!(!dir.path().join("net.nsnap.tmp").exists());
    let mut loads = 0;
    let mut loaded =
        NeuralGraph::load_with(&path, &mut Options::new().progress(|_| loads += 1)).unwrap();
    assert!(loads > 0);
    step_alike(&mut graph, &mut loaded, 50);

    let info = snapshot::inspect_file(&path).unwrap();
    assert_eq!(info.content, Content::Graph);
    let g = info.graph.expect("a graph checkpoint has graph info");
    assert_eq!((g.step, g.resolution), (30, Some(DT)));
    assert_eq!(g.last_spikes, 0);
    assert_eq!(info.tables.len(), 2);
}

#[test]
fn inspect_counts_the_input_in_flight() {
    let mut graph = NeuralGraph::new();
    let ns = graph.add_neurons(3, &NeuronParams::default()).unwrap();
    graph.connect(ns[0], ns[1], 10.0, 0.5).unwrap();
    graph.connect(ns[0], ns[2], -10.0, 2.0).unwrap();
    graph.step(DT).unwrap();
    graph.inject_spikes(&[ns[0]], DT).unwrap();
    let mut file = Vec::new();
    graph.save_to(&mut file).unwrap();
    let g = snapshot::inspect(&file[..]).unwrap().graph.unwrap();
    assert_eq!((g.pending_inputs, g.pending_span), (2, 20));
    assert_eq!(g.ring_steps, 21);
}

/// A small checkpoint: few neurons, delays of at most 3 steps of 0.5 ms, so the ring (a
/// block of 1024 columns per slot) stays small.
fn small_checkpoint() -> Vec<u8> {
    let mut graph = NeuralGraph::new();
    let driven = NeuronParams {
        i_e: 600.0,
        ..NeuronParams::default()
    };
    let ns = graph.add_neurons(4, &driven).unwrap();
    graph.connect(ns[0], ns[1], 300.0, 1.0).unwrap();
    graph.connect(ns[1], ns[2], -30.0, 1.5).unwrap();
    graph.connect(ns[2], ns[3], 50.0, 0.5).unwrap();
    graph.remove_neuron(ns[3]);
    for _ in 0..40 {
        graph.step(0.5).unwrap();
    }
    let mut file = Vec::new();
    graph.save_to(&mut file).unwrap();
    file
}

#[test]
fn every_flipped_byte_and_every_truncation_of_a_checkpoint_is_refused() {
    let file = small_checkpoint();
    assert!(file.len() < 40_000, "{} bytes", file.len());
    NeuralGraph::load_from(&file[..]).unwrap();
    for i in 0..file.len() {
        for bit in [0x01, 0x80, 0xff] {
            let mut bad = file.clone();
            bad[i] ^= bit;
            assert!(
                NeuralGraph::load_from(&bad[..]).is_err(),
                "flipping {bit:#x} at byte {i} of {} went unnoticed",
                file.len()
            );
        }
    }
    common::every_truncation_is_refused(&file, |bytes| NeuralGraph::load_from(bytes));
}

#[test]
fn stores_and_graph_checkpoints_are_not_mistaken_for_each_other() {
    let file = small_checkpoint();
    let wrong = |e: Error| matches!(e, Error::Snapshot(SnapshotError::WrongContent { .. }));
    let registry = snapshot::TypeRegistry::new();
    assert!(wrong(Store::load_from(&file[..], &registry).unwrap_err()));
    assert!(wrong(
        snapshot::load_table_from::<Neuron>(&file[..]).unwrap_err()
    ));
    let graph = NeuralGraph::load_from(&file[..]).unwrap();
    let mut store_file = Vec::new();
    graph.store().save_to(&mut store_file).unwrap();
    assert!(wrong(NeuralGraph::load_from(&store_file[..]).unwrap_err()));
    let mut table_file = Vec::new();
    snapshot::save_table_to(graph.neurons(), &mut table_file).unwrap();
    assert!(wrong(NeuralGraph::load_from(&table_file[..]).unwrap_err()));
}
