//! NeuralGraph: connectivity stays exact under connect, connect_many, disconnect,
//! remove_neuron, remove_neurons, defragment, optimize_layout and a checkpoint saved and
//! loaded (a proptest against a HashMap reference), and the reference step integrates
//! NEST's `iaf_psc_exp` exactly: firing rates and PSPs match closed-form solutions,
//! delays and refractoriness are exact to the step, results do not depend on the thread
//! count.

use std::collections::{BTreeMap, HashMap};

use neurostore::Error;
use neurostore::neural::{NeuralGraph, Neuron, NeuronId, NeuronParams, SynapseId};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    AddNeuron,
    AddNeurons(usize),
    Connect(usize, usize, bool),
    Disconnect(usize),
    DisconnectStale(usize),
    RemoveNeuron(usize),
    RemoveStaleNeuron(usize),
    ConnectStale(usize),
    ConnectMany(Vec<(usize, usize, bool)>),
    ConnectManyStale(usize, usize),
    RemoveNeurons(Vec<usize>),
    Step,
    OptimizeLayout,
    Defragment,
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::AddNeuron),
        1 => (1usize..6).prop_map(Op::AddNeurons),
        12 => (any::<usize>(), any::<usize>(), any::<bool>()).prop_map(|(a, b, i)| Op::Connect(a, b, i)),
        4 => any::<usize>().prop_map(Op::Disconnect),
        1 => any::<usize>().prop_map(Op::DisconnectStale),
        3 => any::<usize>().prop_map(Op::RemoveNeuron),
        1 => any::<usize>().prop_map(Op::RemoveStaleNeuron),
        1 => any::<usize>().prop_map(Op::ConnectStale),
        2 => Just(Op::Step),
        1 => Just(Op::OptimizeLayout),
        3 => prop::collection::vec((any::<usize>(), any::<usize>(), any::<bool>()), 0..40)
            .prop_map(Op::ConnectMany),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::ConnectManyStale(a, b)),
        1 => prop::collection::vec(any::<usize>(), 0..5).prop_map(Op::RemoveNeurons),
        1 => Just(Op::Defragment),
        2 => Just(Op::Checkpoint),
    ]
}

/// The reference: live neurons, and each live synapse's (pre, post).
#[derive(Default)]
struct Model {
    neurons: Vec<NeuronId>,
    synapses: HashMap<SynapseId, (NeuronId, NeuronId)>,
    dead_neurons: Vec<NeuronId>,
    dead_synapses: Vec<SynapseId>,
}

impl Model {
    /// Forgets the neurons `gone` (already out of `neurons`) and every synapse touching
    /// one of them; returns how many synapses went.
    fn forget(&mut self, gone: &[NeuronId]) -> usize {
        let dead: Vec<SynapseId> = self
            .synapses
            .iter()
            .filter(|(_, (pre, post))| gone.contains(pre) || gone.contains(post))
            .map(|(&s, _)| s)
            .collect();
        for &s in &dead {
            self.synapses.remove(&s);
            self.dead_synapses.push(s);
        }
        for &n in gone {
            if !self.dead_neurons.contains(&n) {
                self.dead_neurons.push(n);
            }
        }
        dead.len()
    }
}

/// Synapses of a graph naming a neuron that is not live.
trait Audit {
    fn dangling_synapses(&self) -> usize;
}

impl Audit for NeuralGraph {
    fn dangling_synapses(&self) -> usize {
        self.synapses()
            .values()
            .filter(|s| {
                self.neurons().live_handle(s.pre_index()).is_none()
                    || self.neurons().live_handle(s.post_index()).is_none()
            })
            .count()
    }
}

fn sorted(mut ids: Vec<SynapseId>) -> Vec<SynapseId> {
    ids.sort();
    ids
}

fn check(graph: &NeuralGraph, model: &Model) {
    assert_eq!(graph.neuron_count(), model.neurons.len());
    assert_eq!(graph.synapse_count(), model.synapses.len());
    let mut out: BTreeMap<NeuronId, Vec<SynapseId>> = BTreeMap::new();
    let mut inc: BTreeMap<NeuronId, Vec<SynapseId>> = BTreeMap::new();
    for (&s, &(pre, post)) in &model.synapses {
        out.entry(pre).or_default().push(s);
        inc.entry(post).or_default().push(s);
        let syn = graph.synapse(s).expect("live synapse resolves");
        assert_eq!((syn.pre, syn.post), (pre, post));
    }
    for &n in &model.neurons {
        assert!(graph.neuron(n).is_some());
        let mut want_out = out.remove(&n).unwrap_or_default();
        let mut want_in = inc.remove(&n).unwrap_or_default();
        want_out.sort();
        want_in.sort();
        assert_eq!(
            graph.out_degree(n),
            Some(want_out.len()),
            "out-degree of {n:?}"
        );
        assert_eq!(
            sorted(graph.outgoing(n).unwrap()),
            want_out,
            "outgoing of {n:?}"
        );
        assert_eq!(
            sorted(graph.incoming(n).unwrap()),
            want_in,
            "incoming of {n:?}"
        );
    }
    assert!(
        out.is_empty() && inc.is_empty(),
        "a synapse names a removed neuron"
    );
    for &n in &model.dead_neurons {
        assert!(graph.neuron(n).is_none());
        assert!(graph.outgoing(n).is_none() && graph.incoming(n).is_none());
    }
    for &s in &model.dead_synapses {
        assert!(graph.synapse(s).is_none());
    }
    // Every synapse in the table is one the model knows.
    for (s, _) in graph.synapses().iter() {
        let view = graph.synapse(s).unwrap();
        assert_eq!(model.synapses.get(&s), Some(&(view.pre, view.post)));
    }
    assert_eq!(
        graph.dangling_synapses(),
        0,
        "no synapse names a removed neuron"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn connectivity_matches_a_hashmap(ops in prop::collection::vec(op(), 1..250)) {
        let mut graph = NeuralGraph::new();
        let mut model = Model::default();
        let params = NeuronParams { i_e: 380.0, ..NeuronParams::default() };
        for op in ops {
            match op {
                Op::AddNeuron => model.neurons.push(graph.add_neuron(&params).unwrap()),
                Op::AddNeurons(k) => model.neurons.extend(graph.add_neurons(k, &params).unwrap()),
                Op::Connect(a, b, inhibitory) => {
                    if model.neurons.is_empty() {
                        continue;
                    }
                    let pre = model.neurons[a % model.neurons.len()];
                    let post = model.neurons[b % model.neurons.len()];
                    let w = if inhibitory { -300.0 } else { 300.0 };
                    let s = graph.connect(pre, post, w, 0.1 + (a % 30) as f32 * 0.1).unwrap();
                    prop_assert!(model.synapses.insert(s, (pre, post)).is_none());
                }
                Op::Disconnect(i) => {
                    if model.synapses.is_empty() {
                        continue;
                    }
                    let mut keys: Vec<_> = model.synapses.keys().copied().collect();
                    keys.sort();
                    let s = keys[i % keys.len()];
                    let (pre, post) = model.synapses.remove(&s).unwrap();
                    let syn = graph.disconnect(s).unwrap();
                    prop_assert_eq!((syn.pre, syn.post), (pre, post));
                    model.dead_synapses.push(s);
                }
                Op::DisconnectStale(i) => {
                    if model.dead_synapses.is_empty() {
                        continue;
                    }
                    let s = model.dead_synapses[i % model.dead_synapses.len()];
                    prop_assert!(graph.disconnect(s).is_none());
                }
                Op::RemoveNeuron(i) => {
                    if model.neurons.is_empty() {
                        continue;
                    }
                    let n = model.neurons.swap_remove(i % model.neurons.len());
                    prop_assert!(graph.remove_neuron(n).is_some());
                    model.forget(&[n]);
                }
                Op::RemoveNeurons(picks) => {
                    let mut doomed: Vec<NeuronId> = Vec::new();
                    for i in picks {
                        if model.neurons.is_empty() {
                            break;
                        }
                        doomed.push(model.neurons.swap_remove(i % model.neurons.len()));
                    }
                    // A stale neuron among them is skipped.
                    doomed.extend(model.dead_neurons.first().copied());
                    let want = model.forget(&doomed);
                    prop_assert_eq!(graph.remove_neurons(&doomed), want);
                }
                Op::ConnectMany(pairs) => {
                    if model.neurons.is_empty() {
                        continue;
                    }
                    let pick = |k: usize| model.neurons[k % model.neurons.len()];
                    let pre: Vec<NeuronId> = pairs.iter().map(|p| pick(p.0)).collect();
                    let post: Vec<NeuronId> = pairs.iter().map(|p| pick(p.1)).collect();
                    let weight: Vec<f32> = pairs.iter().map(|p| if p.2 { -200.0 } else { 250.0 }).collect();
                    let delay: Vec<f32> = pairs.iter().map(|p| 0.1 + (p.0.wrapping_add(p.1) % 20) as f32 * 0.1).collect();
                    let before: Vec<(NeuronId, Vec<SynapseId>)> = model
                        .neurons
                        .iter()
                        .map(|&n| (n, graph.outgoing(n).unwrap()))
                        .collect();
                    prop_assert_eq!(graph.connect_many(&pre, &post, &weight, &delay).unwrap(), pairs.len());
                    // The new synapses: each neuron's outgoing list grew by its own, sorted
                    // by delay, synapses of about one delay in the order given.
                    for (n, old) in before {
                        let now = graph.outgoing(n).unwrap();
                        prop_assert_eq!(&now[..old.len()], &old[..]);
                        let added = &now[old.len()..];
                        let mut want: Vec<(u32, usize)> = (0..pairs.len())
                            .filter(|&k| pre[k] == n)
                            // By delay to within 1/128 (its top 16 bits), stably.
                            .map(|k| (delay[k].to_bits() >> 16, k))
                            .collect();
                        want.sort_by_key(|w| w.0);
                        prop_assert_eq!(added.len(), want.len());
                        for (&s, &(_, k)) in added.iter().zip(&want) {
                            let view = graph.synapse(s).unwrap();
                            prop_assert_eq!((view.pre, view.post, view.weight, view.delay), (pre[k], post[k], weight[k], delay[k]));
                            prop_assert!(model.synapses.insert(s, (pre[k], post[k])).is_none());
                        }
                    }
                }
                Op::ConnectManyStale(a, b) => {
                    if model.neurons.is_empty() || model.dead_neurons.is_empty() {
                        continue;
                    }
                    let live = model.neurons[a % model.neurons.len()];
                    let dead = model.dead_neurons[b % model.dead_neurons.len()];
                    let before = graph.synapse_count();
                    let stale = graph.connect_many(&[live, live, dead], &[live, dead, live], &[1.0; 3], &[1.0; 3]);
                    let stale_is_invalid_handle =
                        matches!(stale, Err(Error::InvalidHandle { type_name: "Neuron", .. }));
                    prop_assert!(stale_is_invalid_handle);
                    let bad_delay = graph.connect_many(&[live], &[live], &[1.0], &[0.0]);
                    prop_assert!(bad_delay.is_err());
                    let short = graph.connect_many(&[live, live], &[live], &[1.0], &[1.0]);
                    prop_assert!(short.is_err());
                    prop_assert_eq!(graph.synapse_count(), before, "a refused batch changes nothing");
                }
                Op::Defragment => {
                    graph.defragment().unwrap();
                }
                Op::Checkpoint => {
                    let mut file = Vec::new();
                    graph.save_to(&mut file).unwrap();
                    let mut loaded = NeuralGraph::load_from(&file[..]).unwrap();
                    // The loaded graph and the original go on alike.
                    prop_assert_eq!(loaded.step(0.1).unwrap(), graph.step(0.1).unwrap());
                    for (n, neuron) in graph.neurons().iter() {
                        prop_assert_eq!(loaded.neuron(n), Some(neuron));
                    }
                    graph = loaded;
                }
                Op::RemoveStaleNeuron(i) => {
                    if model.dead_neurons.is_empty() {
                        continue;
                    }
                    let n = model.dead_neurons[i % model.dead_neurons.len()];
                    prop_assert!(graph.remove_neuron(n).is_none());
                }
                Op::ConnectStale(i) => {
                    if model.dead_neurons.is_empty() || model.neurons.is_empty() {
                        continue;
                    }
                    let dead = model.dead_neurons[i % model.dead_neurons.len()];
                    let live = model.neurons[i % model.neurons.len()];
                    let before = graph.synapse_count();
                    let is_invalid_handle = matches!(
                        graph.connect(live, dead, 1.0, 1.0),
                        Err(Error::InvalidHandle { type_name: "Neuron", .. })
                    );
                    prop_assert!(is_invalid_handle);
                    prop_assert!(graph.connect(dead, live, 1.0, 1.0).is_err());
                    prop_assert_eq!(graph.synapse_count(), before);
                }
                Op::OptimizeLayout => {
                    graph.optimize_layout().unwrap();
                }
                Op::Step => {
                    let spikes = graph.step(0.1).unwrap().to_vec();
                    for n in spikes {
                        prop_assert!(model.neurons.contains(&n));
                    }
                }
            }
            check(&graph, &model);
        }
    }
}

/// The closed-form interspike interval (ms) of a LIF neuron driven by a constant current
/// from reset: `t_ref + tau_m ln((I R - (V_reset - E_L)) / (I R - (V_th - E_L)))`.
fn closed_form_isi(p: &NeuronParams) -> f64 {
    let r = f64::from(p.tau_m) / f64::from(p.c_m);
    let drive = f64::from(p.i_e) * r;
    let from = f64::from(p.v_reset - p.e_l);
    let to = f64::from(p.v_th - p.e_l);
    f64::from(p.t_ref) + f64::from(p.tau_m) * ((drive - from) / (drive - to)).ln()
}

#[test]
fn constant_current_fires_at_the_closed_form_rate() {
    let dt = 0.1;
    for i_e in [400.0f32, 500.0, 800.0, 1500.0, 3000.0] {
        let params = NeuronParams {
            i_e,
            ..NeuronParams::default()
        };
        let mut graph = NeuralGraph::new();
        let n = graph.add_neuron(&params).unwrap();
        let mut spike_steps = Vec::new();
        let steps = 100_000; // 10 s of model time
        for _ in 0..steps {
            let t = graph.current_step();
            if graph.step(dt).unwrap().contains(&n) {
                spike_steps.push(t);
            }
        }
        let isi = closed_form_isi(&params);
        let expected_rate = 1000.0 / isi;
        // On the grid: the membrane integrates ceil((isi - t_ref) / dt) steps after the
        // t_ref / dt steps it is clamped.
        let integrating = ((isi - f64::from(params.t_ref)) / dt).ceil() as u64;
        let grid_isi = 20 + integrating;
        for w in spike_steps.windows(2) {
            assert_eq!(w[1] - w[0], grid_isi, "i_e = {i_e}: interspike steps");
        }
        let rate = spike_steps.len() as f64 / (steps as f64 * dt / 1000.0);
        // The grid delays each spike by less than one step.
        let tolerance = expected_rate * dt / isi + 1000.0 / (steps as f64 * dt);
        assert!(
            (rate - expected_rate).abs() <= tolerance,
            "i_e = {i_e}: {rate} Hz, closed form {expected_rate} Hz (± {tolerance})"
        );
    }
}

#[test]
fn subthreshold_current_never_fires_and_settles_at_i_times_r() {
    let params = NeuronParams {
        i_e: 350.0, // I R = 14 mV < 15 mV to threshold
        ..NeuronParams::default()
    };
    let mut graph = NeuralGraph::new();
    let n = graph.add_neuron(&params).unwrap();
    for _ in 0..20_000 {
        assert!(graph.step(0.1).unwrap().is_empty());
    }
    let v = graph.neuron(n).unwrap().v_m;
    assert!((v - (-56.0)).abs() < 1e-3, "{v}");
}

/// One spike through a synapse of `delay` ms into a resting neuron: returns the step the
/// spike was emitted and the receiving neuron's (step, v_m, i_syn_ex, i_syn_in) trace.
fn single_spike(weight: f32, delay: f32, steps: u64) -> (u64, Vec<(u64, Neuron)>) {
    let mut graph = NeuralGraph::new();
    let sender = graph.add_neuron(&NeuronParams::default()).unwrap();
    let params = NeuronParams {
        tau_syn_ex: 0.5,
        tau_syn_in: 0.8,
        ..NeuronParams::default()
    };
    let receiver = graph.add_neuron(&params).unwrap();
    graph.connect(sender, receiver, weight, delay).unwrap();
    // Put the sender at threshold so it fires in step 3, and only then.
    let mut trace = Vec::new();
    let mut fired_at = None;
    for _ in 0..steps {
        let t = graph.current_step();
        if t == 3 {
            graph.neuron_mut(sender).unwrap().v_m = -54.0;
        }
        let spikes = graph.step(0.1).unwrap().to_vec();
        if spikes.contains(&sender) {
            assert!(fired_at.is_none(), "the sender fires once");
            fired_at = Some(t);
        }
        assert!(!spikes.contains(&receiver));
        trace.push((t, *graph.neuron(receiver).unwrap()));
    }
    (fired_at.expect("the sender fired"), trace)
}

#[test]
fn a_spike_arrives_after_its_delay_rounded_to_steps() {
    for (delay, steps) in [(1.5f32, 15u64), (0.1, 1), (0.04, 1), (0.76, 8), (2.26, 23)] {
        let (fired, trace) = single_spike(100.0, delay, 40);
        assert_eq!(fired, 3);
        for (t, n) in &trace {
            if *t < fired + steps {
                assert_eq!(
                    n.i_syn_ex,
                    0.0,
                    "delay {delay}: input before step {}",
                    fired + steps
                );
                assert_eq!(n.v_m, -70.0);
            } else if *t == fired + steps {
                assert_eq!(
                    n.i_syn_ex, 100.0,
                    "delay {delay}: arrives whole in its step"
                );
            }
        }
    }
    let (fired, trace) = single_spike(-80.0, 1.0, 20);
    let (_, n) = trace[(fired + 10) as usize];
    assert_eq!(
        (n.i_syn_ex, n.i_syn_in),
        (0.0, -80.0),
        "negative weights inhibit"
    );
}

#[test]
fn postsynaptic_potential_matches_the_analytic_solution() {
    let weight = 100.0f32;
    let (fired, trace) = single_spike(weight, 1.0, 600);
    let arrival = fired + 10;
    let (tau_m, tau_s, c_m) = (10.0f64, 0.5f64, 250.0f64);
    let mut peak = 0.0f64;
    for (t, n) in &trace {
        if *t <= arrival {
            continue;
        }
        // The current jumps at the end of the arrival step; v_m follows it from there.
        let s = (*t - arrival) as f64 * 0.1;
        let psp = f64::from(weight) / c_m * tau_m * tau_s / (tau_s - tau_m)
            * ((-s / tau_s).exp() - (-s / tau_m).exp());
        let v = f64::from(n.v_m) + 70.0;
        assert!(
            (v - psp).abs() < 1e-4 + 1e-4 * psp.abs(),
            "t = {s} ms: {v} vs analytic {psp}"
        );
        let current = f64::from(weight) * (-s / tau_s).exp();
        assert!((f64::from(n.i_syn_ex) - current).abs() < 1e-3 * f64::from(weight));
        peak = peak.max(v);
    }
    assert!(peak > 0.1, "the PSP is visible: peak {peak} mV");
}

#[test]
fn refractory_neurons_stay_at_reset() {
    let params = NeuronParams {
        i_e: 5000.0,
        t_ref: 2.0,
        ..NeuronParams::default()
    };
    let mut graph = NeuralGraph::new();
    let n = graph.add_neuron(&params).unwrap();
    let mut since_spike: Option<u64> = None;
    for _ in 0..2000 {
        let fired = graph.step(0.1).unwrap().contains(&n);
        let neuron = *graph.neuron(n).unwrap();
        if fired {
            if let Some(k) = since_spike {
                assert!(k > 20, "fired {k} steps after the last spike, within t_ref");
            }
            since_spike = Some(0);
            assert_eq!(neuron.refractory_steps, 20);
        } else if let Some(k) = since_spike.as_mut() {
            *k += 1;
            if *k <= 20 {
                assert_eq!(neuron.v_m, -70.0, "clamped during the refractory period");
                assert_eq!(neuron.refractory_steps as u64, 20 - *k);
            }
        }
        if fired {
            assert_eq!(neuron.last_spike(), Some(graph.current_step() - 1));
        }
    }
    assert!(since_spike.is_some());
}

#[test]
fn removing_a_target_drops_its_input_in_flight() {
    let mut graph = NeuralGraph::new();
    let a = graph.add_neuron(&NeuronParams::default()).unwrap();
    let b = graph.add_neuron(&NeuronParams::default()).unwrap();
    graph.connect(a, b, 500.0, 5.0).unwrap();
    graph.neuron_mut(a).unwrap().v_m = -50.0;
    assert_eq!(graph.step(0.1).unwrap(), &[a]);
    graph.remove_neuron(b).unwrap();
    // The new neuron takes b's slot index (slotmap reuses it) and must not see the spike.
    let c = graph.add_neuron(&NeuronParams::default()).unwrap();
    assert_eq!(c.index(), b.index());
    for _ in 0..100 {
        graph.step(0.1).unwrap();
        assert_eq!(graph.neuron(c).unwrap().i_syn_ex, 0.0);
    }
}

#[test]
fn changing_dt_keeps_input_in_flight_on_time() {
    let mut graph = NeuralGraph::new();
    let a = graph.add_neuron(&NeuronParams::default()).unwrap();
    let b = graph.add_neuron(&NeuronParams::default()).unwrap();
    graph.connect(a, b, 100.0, 2.0).unwrap();
    graph.neuron_mut(a).unwrap().v_m = -50.0;
    // Emitted in step 0; at 0.1 ms steps it arrives in step 20, which starts at 2.0 ms.
    assert_eq!(graph.step(0.1).unwrap(), &[a]);
    graph.step(0.1).unwrap();
    assert_eq!(graph.resolution(), Some(0.1));
    // 1.8 ms to go from 0.2 ms: the 36 steps of 0.05 ms before the one starting at 2.0 ms.
    for k in 0..40 {
        graph.step(0.05).unwrap();
        let arrived = graph.neuron(b).unwrap().i_syn_ex > 0.0;
        assert_eq!(arrived, k >= 36, "step {k} of 0.05 ms");
    }
    assert!((graph.time_ms() - 2.2).abs() < 1e-9);
}

#[test]
fn bad_input_is_a_typed_error_that_changes_nothing() {
    let mut graph = NeuralGraph::new();
    let bad = NeuronParams {
        c_m: -1.0,
        ..NeuronParams::default()
    };
    assert!(matches!(
        graph.add_neuron(&bad),
        Err(Error::InvalidArgument { name: "c_m", .. })
    ));
    let nan = NeuronParams {
        v_th: f32::NAN,
        ..NeuronParams::default()
    };
    assert!(graph.add_neurons(10, &nan).is_err());
    assert_eq!(graph.neuron_count(), 0);

    let a = graph.add_neuron(&NeuronParams::default()).unwrap();
    let b = graph.add_neuron(&NeuronParams::default()).unwrap();
    for (w, d) in [
        (f32::NAN, 1.0),
        (f32::INFINITY, 1.0),
        (1.0, 0.0),
        (1.0, -1.0),
        (1.0, f32::NAN),
    ] {
        assert!(matches!(
            graph.connect(a, b, w, d),
            Err(Error::InvalidArgument { .. })
        ));
    }
    assert!(matches!(
        graph.connect(a, NeuronId::null(), 1.0, 1.0),
        Err(Error::InvalidHandle { .. })
    ));
    assert!(
        graph
            .connect(a, bytemuck::Zeroable::zeroed(), 1.0, 1.0)
            .is_err()
    );
    assert_eq!(graph.synapse_count(), 0);

    for dt in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            graph.step(dt),
            Err(Error::InvalidArgument { name: "dt", .. })
        ));
    }
    let s = graph.connect(a, b, 1.0, 1.0e6).unwrap();
    assert!(
        graph.step(0.0001).is_err(),
        "a ring of 10^10 steps is refused"
    );
    assert_eq!(graph.current_step(), 0);
    assert!(graph.set_weight(s, f32::NAN).is_err());
    assert!(graph.set_delay(s, -3.0).is_err());
    assert_eq!(graph.synapse(s).unwrap().weight, 1.0);
    graph.disconnect(s).unwrap();
    assert!(graph.set_weight(s, 2.0).is_err());
    assert!(graph.step(0.1).is_ok());
}

/// A random recurrent network big enough for the parallel paths of the step.
fn random_network(seed: u64) -> (NeuralGraph, Vec<NeuronId>) {
    let mut graph = NeuralGraph::new();
    let ex = NeuronParams {
        i_e: 380.0,
        tau_syn_ex: 0.5,
        tau_syn_in: 0.5,
        population: 0,
        ..NeuronParams::default()
    };
    let inh = NeuronParams {
        population: 1,
        tau_m: 8.0,
        ..ex
    };
    let mut neurons = graph.add_neurons(4000, &ex).unwrap();
    neurons.extend(graph.add_neurons(1000, &inh).unwrap());
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (i, &n) in neurons.iter().enumerate() {
        graph.neuron_mut(n).unwrap().v_m = -70.0 + (next() % 1500) as f32 / 100.0;
        for _ in 0..100 {
            let post = neurons[(next() % neurons.len() as u64) as usize];
            let (w, d) = if i < 4000 { (90.0, 1.5) } else { (-400.0, 0.8) };
            let d = d + (next() % 10) as f32 * 0.1;
            graph.connect(n, post, w, d).unwrap();
        }
    }
    (graph, neurons)
}

#[test]
fn the_step_does_not_depend_on_the_thread_count() {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (mut graph, _) = random_network(7);
            let mut spikes = Vec::new();
            for _ in 0..1500 {
                let t = graph.current_step();
                spikes.extend(graph.step(0.1).unwrap().iter().map(|n| (t, *n)));
            }
            let states: Vec<Neuron> = graph.neurons().values().copied().collect();
            (spikes, states)
        })
    };
    let (spikes_1, states_1) = run(1);
    let (spikes_4, states_4) = run(4);
    let mut per_step = std::collections::HashMap::new();
    for (t, _) in &spikes_1 {
        *per_step.entry(*t).or_insert(0usize) += 1;
    }
    let busiest = per_step.values().copied().max().unwrap_or(0);
    eprintln!("{} spikes, busiest step {busiest}", spikes_1.len());
    assert!(
        spikes_1.len() > 5000,
        "the network is active: {} spikes",
        spikes_1.len()
    );
    // Above 82 spikes of 100 synapses a step propagates in parallel.
    assert!(
        busiest > 82,
        "some step takes the parallel propagation path"
    );
    assert_eq!(spikes_1, spikes_4);
    assert_eq!(states_1, states_4);
}

#[test]
fn run_fires_what_steps_one_at_a_time_fire_and_calls_back_on_a_worker() {
    let (mut stepped, _) = random_network(11);
    let (mut ran, _) = random_network(11);
    let by_step = spike_train(&mut stepped, 600);
    let mut by_run = Vec::new();
    let mut on_workers = 0;
    ran.run(600, 0.1, |graph, fired| {
        let t = graph.current_step() - 1;
        by_run.extend(fired.iter().map(|n| (t, n.index())));
        on_workers += usize::from(rayon::current_thread_index().is_some());
        Ok::<_, Error>(())
    })
    .unwrap();
    assert!(by_step.len() > 1000, "the network is active");
    assert_eq!(by_step, by_run);
    assert_eq!(
        on_workers, 600,
        "every step ran on a worker of rayon's pool"
    );
    assert_eq!(ran.current_step(), 600);
    let states = |g: &NeuralGraph| g.neurons().values().copied().collect::<Vec<Neuron>>();
    assert_eq!(states(&stepped), states(&ran));
    // Inside a pool it runs on the calling worker of that pool.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let (caller, mut callbacks) = pool.install(|| {
        let caller = std::thread::current().id();
        let mut threads = Vec::new();
        ran.run(5, 0.1, |_, _| {
            threads.push(std::thread::current().id());
            Ok::<_, Error>(())
        })
        .unwrap();
        (caller, threads)
    });
    callbacks.dedup();
    assert_eq!(callbacks, [caller]);
}

#[test]
fn run_stops_at_the_first_error_of_the_step_or_the_callback() {
    let (mut graph, _) = random_network(3);
    let refused = graph.run(10, f64::NAN, |_, _| Ok::<_, Error>(()));
    assert!(matches!(refused, Err(Error::InvalidArgument { .. })));
    assert_eq!(graph.current_step(), 0, "an invalid dt takes no step");
    #[derive(Debug, PartialEq)]
    enum Stop {
        Enough(u64),
        Graph,
    }
    impl From<Error> for Stop {
        fn from(_: Error) -> Self {
            Stop::Graph
        }
    }
    let mut calls = 0;
    let stopped = graph.run(100, 0.1, |g, _| {
        calls += 1;
        if g.current_step() == 7 {
            return Err(Stop::Enough(g.current_step()));
        }
        Ok(())
    });
    assert_eq!(stopped, Err(Stop::Enough(7)));
    assert_eq!(
        (calls, graph.current_step()),
        (7, 7),
        "no step after the error"
    );
}

/// Runs `steps` steps and returns every (step, neuron slot index) spike.
fn spike_train(graph: &mut NeuralGraph, steps: usize) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    for _ in 0..steps {
        let t = graph.current_step();
        out.extend(graph.step(0.1).unwrap().iter().map(|n| (t, n.index())));
    }
    out
}

#[test]
fn optimize_layout_changes_no_result_even_after_later_mutations() {
    // Integer weights: input sums are exact in any order, so the walk order (sorted by
    // delay after the layout, as connected before) cannot change a single bit.
    let (mut plain, neurons) = random_network(11);
    let (mut laid_out, same) = random_network(11);
    assert_eq!(neurons, same);
    let report = laid_out.optimize_layout().unwrap();
    assert!(report.moved > 0);
    assert_eq!(
        spike_train(&mut plain, 300),
        spike_train(&mut laid_out, 300)
    );
    // Mutate both the same way: some neurons' ranges go stale, the rest stay exact.
    for graph in [&mut plain, &mut laid_out] {
        for &n in neurons.iter().step_by(97) {
            graph.remove_neuron(n).unwrap();
        }
        for k in 0..500 {
            let pre = neurons[(k * 31 + 5) % neurons.len()];
            let post = neurons[(k * 17 + 3) % neurons.len()];
            if graph.neuron(pre).is_some() && graph.neuron(post).is_some() {
                graph.connect(pre, post, 120.0, 1.0).unwrap();
            }
        }
        // The same 20 in both graphs (their outgoing lists are in different orders).
        let mut victims: Vec<SynapseId> = graph.outgoing(neurons[1]).unwrap();
        victims.sort();
        victims.truncate(20);
        for s in victims {
            graph.disconnect(s).unwrap();
        }
    }
    let trains = (
        spike_train(&mut plain, 300),
        spike_train(&mut laid_out, 300),
    );
    assert!(!trains.0.is_empty());
    assert_eq!(trains.0, trains.1);
    // A defragmentation slides synapses down in order (the runs are found again), and a
    // new layout sorts them again: neither changes a spike.
    assert!(laid_out.defragment().unwrap().moved > 0);
    assert_eq!(
        spike_train(&mut plain, 200),
        spike_train(&mut laid_out, 200)
    );
    laid_out.optimize_layout().unwrap();
    assert_eq!(
        spike_train(&mut plain, 200),
        spike_train(&mut laid_out, 200)
    );
}
