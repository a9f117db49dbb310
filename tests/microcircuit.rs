//! The main job at a tiny scale: the Potjans & Diesmann microcircuit built, simulated,
//! thinned, collected, defragmented and snapshotted, with the example's own code
//! (`examples/microcircuit/model.rs`). Also checks the model's derived parameters against
//! the reference implementation's numbers.

#[path = "../examples/microcircuit/model.rs"]
mod model;

use model::{Config, Digest, FULL_SIZES, POPULATIONS};
use neurostore::{Neuron, Synapse};

/// The reference's synapse counts at full scale, `[target][source]`
/// (`shared/data/potjans_diesmann_2014.json`, from `num_synapses_from_conn_probs`).
const REFERENCE_COUNTS: [[u64; 8]; 8] = [
    [
        45499805, 22323577, 20253647, 9670918, 3293578, 0, 2271404, 0,
    ],
    [17443694, 5018763, 4105338, 1690074, 2221213, 0, 353461, 0],
    [
        3503670, 756561, 24482849, 17413576, 714524, 7003, 14624432, 0,
    ],
    [8114254, 92832, 9933538, 5223272, 87836, 0, 8810905, 0],
    [
        10613575, 1817058, 5507804, 151900, 2040738, 2407889, 1438969, 0,
    ],
    [1241436, 169424, 607667, 12851, 319602, 430444, 132414, 0],
    [
        4681225, 556108, 6727570, 1320234, 4112225, 305029, 8372649, 10827677,
    ],
    [
        2260836, 17207, 220033, 8078, 401638, 25218, 2888426, 1354320,
    ],
];

#[test]
fn derived_parameters_match_the_reference_implementation() {
    let counts = model::synapse_counts(&FULL_SIZES);
    for t in 0..8 {
        for s in 0..8 {
            let (ours, theirs) = (counts[t][s] as f64, REFERENCE_COUNTS[t][s] as f64);
            assert!(
                (ours - theirs).abs() <= 1.0 + theirs * 1e-6,
                "{} -> {}: {ours} synapses, the reference has {theirs}",
                POPULATIONS[s],
                POPULATIONS[t]
            );
        }
    }
    let total: u64 = counts.iter().flatten().sum();
    assert!(
        total.abs_diff(298_880_968) < 64,
        "{total} synapses at full scale"
    );

    // DC equivalents of the background input (pA) and the PSC amplitudes.
    let dc = [
        561.97, 526.85, 737.59, 667.34, 702.47, 667.34, 1018.58, 737.59,
    ];
    for (p, want) in dc.into_iter().enumerate() {
        let got = model::background_current(p);
        assert!((got - want).abs() < 0.01, "{}: {got} pA", POPULATIONS[p]);
    }
    assert!((model::mean_weight(1, 0) - 87.808).abs() < 1e-3);
    assert!((model::mean_weight(1, 1) + 351.234).abs() < 1e-3);
    assert!(
        (model::mean_weight(0, 2) - 175.617).abs() < 1e-3,
        "L4E -> L2/3E is doubled"
    );
    assert_eq!(model::population_sizes(1.0), FULL_SIZES);
    assert_eq!(model::population_sizes(0.1)[0], 2068);
}

#[test]
fn construction_follows_the_model_and_is_deterministic() {
    let config = Config {
        scale: 0.002,
        ..Config::default()
    };
    let a = model::build(&config, &mut |_| {}).unwrap();
    let sizes = model::population_sizes(config.scale);
    for (p, population) in a.populations.iter().enumerate() {
        assert_eq!(population.len(), sizes[p] as usize);
        let neuron = a.graph.neuron(population[0]).unwrap();
        assert_eq!(neuron.population, p as u32);
        assert!((f64::from(neuron.i_e) - model::background_current(p)).abs() < 1e-3);
    }
    let want: u64 = model::synapse_counts(&sizes).iter().flatten().sum();
    assert_eq!(a.graph.synapse_count() as u64, want);
    // Each projection's in-degree is the full-scale one.
    let into = model::synapses_into(&a);
    let full = model::synapse_counts(&FULL_SIZES);
    for t in 0..8 {
        let indegree = into[t] as f64 / sizes[t] as f64;
        let reference = full[t].iter().sum::<u64>() as f64 / f64::from(FULL_SIZES[t]);
        assert!(
            (indegree - reference).abs() < 0.01 * reference + 1.0,
            "{}: in-degree {indegree}, reference {reference}",
            POPULATIONS[t]
        );
    }
    // Weights and delays as drawn: signs by source, means near the model's, delays at
    // least one step; and synapses laid out by presynaptic neuron.
    let (mut exc, mut n_exc, mut delay_sum) = (0.0, 0, 0.0);
    let mut previous_pre = 0;
    let population_of = |index: u32| {
        let n = a.graph.neurons().live_handle(index).unwrap();
        a.graph.neuron(n).unwrap().population as usize
    };
    for s in a.graph.synapses().values() {
        let source = population_of(s.pre_index());
        let target = population_of(s.post_index());
        if source.is_multiple_of(2) {
            assert!(s.weight >= 0.0);
            if !(target == 0 && source == 2) {
                exc += f64::from(s.weight);
                n_exc += 1;
                delay_sum += f64::from(s.delay);
            }
        } else {
            assert!(s.weight <= 0.0);
        }
        assert!(f64::from(s.delay) >= model::DT_MS);
        assert!(
            s.pre_index() >= previous_pre,
            "synapses are in presynaptic order"
        );
        previous_pre = s.pre_index();
    }
    let mean = exc / f64::from(n_exc);
    assert!((mean - 87.808).abs() < 0.5, "mean excitatory weight {mean}");
    let mean_delay = delay_sum / f64::from(n_exc);
    assert!(
        (1.45..1.6).contains(&mean_delay),
        "mean excitatory delay {mean_delay}"
    );

    let b = model::build(&config, &mut |_| {}).unwrap();
    assert_eq!(
        Digest::of::<Synapse>(a.graph.store()),
        Digest::of::<Synapse>(b.graph.store()),
        "the same seed builds the same network"
    );
    let c = model::build(&Config { seed: 56, ..config }, &mut |_| {}).unwrap();
    assert_ne!(
        Digest::of::<Synapse>(a.graph.store()),
        Digest::of::<Synapse>(c.graph.store())
    );
}

#[test]
fn tiny_microcircuit_fires_plausibly_and_survives_removal_gc_defrag_and_a_snapshot() {
    let config = Config {
        scale: 0.005,
        time_ms: 150.0,
        transient_ms: 50.0,
        seed: 7,
    };
    let mut network = model::build(&config, &mut |_| {}).unwrap();
    let (record, report) = model::simulate(&mut network, &config, &mut |_| {}).unwrap();
    assert_eq!(report.spikes as usize, record.spikes.len());
    assert!(report.events > 0);
    let sizes: [usize; 8] = std::array::from_fn(|p| network.populations[p].len());
    let rates = model::population_rates(&record, &sizes);
    for (p, rate) in rates.iter().enumerate() {
        assert!(*rate > 0.0, "{} never fired", POPULATIONS[p]);
        assert!(
            *rate < 100.0,
            "{} fires at an absurd {rate} Hz",
            POPULATIONS[p]
        );
    }

    let neurons_before = network.graph.neuron_count();
    let (removed, synapses_removed) = model::remove_random_neurons(&mut network, 0.1, 3);
    assert!(!removed.is_empty() && synapses_removed > 0);
    assert_eq!(network.graph.neuron_count(), neurons_before - removed.len());
    let gc = network.graph.collect();
    assert_eq!(gc.dangling_count, 0, "no synapse names a removed neuron");
    assert_eq!(gc.freed_total, 0, "neurons and synapses are manual");
    assert!(network.graph.synapses().fragmentation().ratio > 0.0);
    network.graph.defragment().unwrap();
    assert_eq!(network.graph.synapses().fragmentation().ratio, 0.0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.nsnap");
    let objects = (network.graph.neuron_count() + network.graph.synapse_count()) as u64;
    let mut slot = Some(network);
    let trip =
        model::snapshot_round_trip(&mut slot, &removed, &path, true, &mut |_| {}, &mut |_| {})
            .unwrap();
    assert!(trip.compared_directly);
    // Every object checked in the loaded store, then against the original.
    assert_eq!(trip.handles_checked, 2 * objects);
    assert_eq!(trip.stale_checked, removed.len() as u64);
    assert_eq!(trip.saved.objects as u64, objects);

    // The same with the original dropped before the load: digests carry the comparison.
    let trip =
        model::snapshot_round_trip(&mut slot, &removed, &path, false, &mut |_| {}, &mut |_| {})
            .unwrap();
    assert!(!trip.compared_directly && slot.is_none());
    assert_eq!(trip.handles_checked, objects);
}

#[test]
fn a_changed_object_fails_the_round_trip_verification() {
    // The digest must notice one flipped weight: compare a store with itself altered.
    let config = Config {
        scale: 0.001,
        ..Config::default()
    };
    let network = model::build(&config, &mut |_| {}).unwrap();
    let before = Digest::of::<Synapse>(network.graph.store());
    let mut graph = network.graph;
    let s = graph.synapses().iter().next().unwrap().0;
    let w = graph.synapse(s).unwrap().weight;
    graph.set_weight(s, w + 1.0).unwrap();
    assert_ne!(before, Digest::of::<Synapse>(graph.store()));
    assert_eq!(before.count, Digest::of::<Synapse>(graph.store()).count);
    assert_eq!(
        Digest::of::<Neuron>(graph.store()).count,
        graph.neuron_count() as u64
    );
}

#[test]
fn a_run_resumed_from_a_checkpoint_fires_the_spikes_of_the_uninterrupted_run() {
    let config = Config {
        scale: 0.005,
        time_ms: 100.0,
        transient_ms: 50.0,
        seed: 11,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut checkpoint = model::Checkpointing {
        step: 700,
        path: dir.path().join("t70.nsnap"),
        saved: None,
    };
    let mut network = model::build(&config, &mut |_| {}).unwrap();
    let (record, report) = model::simulate_with(
        &mut network,
        &config,
        None,
        Some(&mut checkpoint),
        &mut |_| {},
    )
    .unwrap();
    assert!(checkpoint.saved.is_some());
    assert_eq!(report.digests.first_step, 0);
    assert_eq!(report.digests.per_step.len(), 1500);
    let after = report.digests.since(700);
    let digests = dir.path().join("t70.nsnap.spikes");
    after.save(&digests).unwrap();

    let mut resumed = model::resume(&checkpoint.path, &mut |_| {}).unwrap();
    assert_eq!(resumed.graph.current_step(), 700);
    let sizes = |n: &model::Network| -> Vec<usize> { n.populations.iter().map(Vec::len).collect() };
    assert_eq!(sizes(&resumed), sizes(&network));
    assert_eq!(resumed.populations, network.populations);
    let (resumed_record, resumed_report) =
        model::simulate(&mut resumed, &config, &mut |_| {}).unwrap();
    let saved = model::SpikeDigests::load(&digests).unwrap();
    assert_eq!(saved, after);
    assert_eq!(resumed_report.digests.compare(&saved), Ok(800));
    // The resumed run measures from its first step (700), the original from the end of
    // the transient (500): the same spikes, in the same order, at the same steps.
    let at_steps = |spikes: &[(f32, u8, neurostore::neural::NeuronId)], first: u64| {
        spikes
            .iter()
            .map(|&(t, p, n)| (first + (f64::from(t) / model::DT_MS).round() as u64, p, n))
            .filter(|&(step, _, _)| step >= 700)
            .collect::<Vec<_>>()
    };
    let resumed_spikes = at_steps(&resumed_record.spikes, 700);
    assert!(!resumed_spikes.is_empty());
    assert_eq!(resumed_spikes, at_steps(&record.spikes, 500));
    for (n, neuron) in network.graph.neurons().iter() {
        assert_eq!(resumed.graph.neuron(n), Some(neuron));
    }

    // A digest that differs is found at its step.
    let mut changed = saved.clone();
    changed.per_step[123] ^= 1;
    assert_eq!(resumed_report.digests.compare(&changed), Err(823));
}
