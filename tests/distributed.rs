//! A network shared out among ranks (threads, through `LocalExchange`) gives the spikes
//! and neuron states of one `NeuralGraph` built with the same calls, bit for bit: for 1 to
//! 4 ranks, with one exchange per step or per interval of the shortest delay, through
//! removals and through a checkpoint. Bad input fails on every rank alike.

use neurostore::distributed::{DistributedGraph, LocalExchange, SpikeExchange};
use neurostore::neural::{NeuralGraph, NeuronId, NeuronParams};
use neurostore::{Error, Neuron};
use proptest::prelude::*;

#[path = "common/recipe.rs"]
mod recipe;

use recipe::{DT, Recipe, single_run};

/// Every owned neuron's state on its rank equals the single graph's.
fn check_owned_states<X: SpikeExchange>(net: &DistributedGraph<X>, states: &[(NeuronId, Neuron)]) {
    for (n, state) in states {
        if net.owns(*n) {
            assert_eq!(
                net.graph().neuron(*n),
                Some(state),
                "neuron {n:?} on rank {}",
                net.rank()
            );
        }
    }
}

/// This rank's part of `recipe`'s network.
fn rank_of(exchange: LocalExchange, recipe: &Recipe) -> DistributedGraph<LocalExchange> {
    let mut net = DistributedGraph::new(exchange).unwrap();
    recipe.build(&mut net);
    net
}

/// Runs `steps` steps and returns every step's spikes (every rank's).
fn record(net: &mut DistributedGraph<LocalExchange>, steps: u64) -> Vec<Vec<NeuronId>> {
    let mut seen = Vec::new();
    net.run(steps, DT, |_, fired| seen.push(fired.to_vec()))
        .unwrap();
    seen
}

#[test]
fn ranks_see_the_spikes_of_one_process_exchanging_every_step() {
    let recipe = Recipe {
        neurons: 600,
        per_neuron: 60,
        shortest: 0.1,
        seed: 1,
    };
    let steps = 400;
    let (spikes, states) = single_run(&recipe, steps);
    for ranks in 1..=4 {
        let seen = LocalExchange::run(ranks, |x| {
            let mut net = rank_of(x, &recipe);
            let mut seen = Vec::new();
            net.run(steps, DT, |step, fired| seen.push((step, fired.to_vec())))
                .unwrap();
            check_owned_states(&net, &states);
            assert_eq!(
                net.exchange_stats().exchanges,
                steps,
                "shortest delay: one step"
            );
            seen
        });
        for per_rank in seen {
            let got: Vec<Vec<NeuronId>> = per_rank.iter().map(|(_, f)| f.clone()).collect();
            assert_eq!(got, spikes, "{ranks} ranks");
            assert!(
                per_rank
                    .iter()
                    .enumerate()
                    .all(|(k, (s, _))| *s == k as u64)
            );
        }
    }
}

#[test]
fn an_exchange_per_interval_of_the_shortest_delay_gives_the_same_spikes() {
    let recipe = Recipe {
        neurons: 500,
        per_neuron: 50,
        shortest: 0.75,
        seed: 2,
    };
    let steps = 503; // not a multiple of the interval: the last one is cut short
    let (spikes, states) = single_run(&recipe, steps);
    for ranks in [2, 3] {
        let seen = LocalExchange::run(ranks, |x| {
            let mut net = rank_of(x, &recipe);
            let seen = record(&mut net, steps);
            check_owned_states(&net, &states);
            let stats = net.exchange_stats();
            // 0.75 ms is 8 steps of 0.1 ms (rounded): 63 exchanges for 503 steps.
            assert_eq!((stats.exchanges, stats.steps), (63, steps));
            assert!(stats.words_received >= stats.words_sent);
            assert_eq!(net.graph().last_spikes(), &spikes[steps as usize - 1][..]);
            seen
        });
        for per_rank in seen {
            assert_eq!(per_rank, spikes, "{ranks} ranks");
        }
    }
}

#[test]
fn ranks_with_different_thread_counts_see_the_same_spikes() {
    // Enough neurons and events that every phase of the step runs in parallel.
    let recipe = Recipe {
        neurons: 9000,
        per_neuron: 100,
        shortest: 0.1,
        seed: 6,
    };
    let steps = 200;
    let (spikes, states) = single_run(&recipe, steps);
    let events: usize = spikes.iter().map(Vec::len).max().unwrap_or(0) * recipe.per_neuron;
    assert!(
        events > 8192,
        "a step's events ({events}) are sent in parallel"
    );
    for threads in [[1, 3], [4, 2]] {
        let seen = LocalExchange::run(2, |x| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads[x.rank()])
                .build()
                .unwrap();
            pool.install(|| {
                let mut net = rank_of(x, &recipe);
                let seen = record(&mut net, steps);
                check_owned_states(&net, &states);
                seen
            })
        });
        for per_rank in seen {
            assert_eq!(per_rank, spikes, "threads per rank {threads:?}");
        }
    }
}

#[test]
fn stepping_one_at_a_time_and_running_agree() {
    let recipe = Recipe {
        neurons: 300,
        per_neuron: 40,
        shortest: 1.0,
        seed: 3,
    };
    let (spikes, _) = single_run(&recipe, 300);
    let seen = LocalExchange::run(2, |x| {
        let mut net = rank_of(x, &recipe);
        let mut seen: Vec<Vec<NeuronId>> =
            (0..100).map(|_| net.step(DT).unwrap().to_vec()).collect();
        seen.extend(record(&mut net, 200));
        seen
    });
    for per_rank in seen {
        assert_eq!(per_rank, spikes);
    }
}

#[test]
fn removing_neurons_on_every_rank_matches_one_process() {
    let recipe = Recipe {
        neurons: 500,
        per_neuron: 40,
        shortest: 0.1,
        seed: 4,
    };
    let doomed = |ns: &[NeuronId]| -> Vec<NeuronId> { ns.iter().copied().step_by(7).collect() };
    let mut g = NeuralGraph::new();
    let ns = recipe.build(&mut g);
    let mut spikes: Vec<Vec<NeuronId>> = (0..150).map(|_| g.step(DT).unwrap().to_vec()).collect();
    g.remove_neurons(&doomed(&ns));
    spikes.extend((0..150).map(|_| g.step(DT).unwrap().to_vec()));
    let synapses = g.synapse_count() as u64;
    let seen = LocalExchange::run(3, |x| {
        let mut net = DistributedGraph::new(x).unwrap();
        let ns = recipe.build(&mut net);
        let mut seen = record(&mut net, 150);
        net.remove_neurons(&doomed(&ns));
        seen.extend(record(&mut net, 150));
        let local = net.graph().synapse_count() as u64;
        let all: u64 = net.all_gather_u64(local).unwrap().iter().sum();
        (seen, all)
    });
    for (per_rank, all) in seen {
        assert_eq!(per_rank, spikes);
        assert_eq!(
            all, synapses,
            "the ranks' synapses add up to the single graph's"
        );
    }
}

#[test]
fn a_checkpoint_of_every_rank_resumes_with_the_same_spikes() {
    let recipe = Recipe {
        neurons: 400,
        per_neuron: 40,
        shortest: 0.5,
        seed: 5,
    };
    let (spikes, _) = single_run(&recipe, 400);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint");
    LocalExchange::run(2, |x| {
        let mut net = rank_of(x, &recipe);
        net.run(150, DT, |_, _| ()).unwrap();
        net.save(&path).unwrap();
    });
    assert!(DistributedGraph::<LocalExchange>::checkpoint_path(&path, 1, 2).is_file());
    let resumed = LocalExchange::run(2, |x| {
        let mut net = DistributedGraph::load(x, &path).unwrap();
        assert_eq!(net.graph().current_step(), 150);
        assert_eq!(net.graph().last_spikes(), &spikes[149][..]);
        record(&mut net, 250)
    });
    for per_rank in resumed {
        assert_eq!(per_rank, spikes[150..]);
    }
    // Three ranks find no files of theirs: every rank says so.
    for result in LocalExchange::run(3, |x| DistributedGraph::load(x, &path).map(|_| ())) {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. } | Error::Exchange { .. }),
            "{err}"
        );
    }
}

#[test]
fn bad_input_fails_on_every_rank_and_changes_nothing() {
    let results = LocalExchange::run(3, |x| {
        let mut net = DistributedGraph::new(x).unwrap();
        let ns = net.add_neurons(10, &NeuronParams::default()).unwrap();
        let mut gone = net.add_neurons(1, &NeuronParams::default()).unwrap();
        net.remove_neurons(&gone);
        let stale = gone.pop().unwrap();
        // A stale neuron is refused on every rank, owner of the target or not.
        let one = net.connect(ns[0], stale, 1.0, 1.0);
        let many = net.connect_many(
            &[ns[1], ns[2]],
            &[ns[3], ns[4]],
            &[1.0, f32::NAN],
            &[1.0, 1.0],
        );
        let short = net.connect_many(&[ns[1]], &[ns[3], ns[4]], &[1.0], &[1.0]);
        let bad_dt = net.run(10, -0.1, |_, _| ());
        let synapses = net.graph().synapse_count();
        let step = net.graph().current_step();
        // Ranks asked for different `dt`s: an exchange error, and no step taken.
        let dt = if net.rank() == 1 { 0.2 } else { 0.1 };
        let disagree = net.run(10, dt, |_, _| ());
        (
            one.is_err(),
            many.is_err(),
            short.is_err(),
            bad_dt,
            synapses,
            step,
            disagree,
            net.graph().current_step(),
        )
    });
    for (one, many, short, bad_dt, synapses, step, disagree, after) in results {
        assert!(one && many && short);
        assert!(
            matches!(bad_dt, Err(Error::InvalidArgument { .. })),
            "{bad_dt:?}"
        );
        assert_eq!((synapses, step, after), (0, 0, 0));
        assert!(
            matches!(disagree, Err(Error::Exchange { .. })),
            "{disagree:?}"
        );
    }
}

#[test]
fn an_exchange_whose_rank_is_out_of_range_is_refused() {
    #[derive(Debug)]
    struct Broken;
    impl SpikeExchange for Broken {
        fn rank(&self) -> usize {
            2
        }
        fn ranks(&self) -> usize {
            2
        }
        fn all_gather(&mut self, _: &[u32]) -> Result<Vec<u32>, Error> {
            unreachable!("never called")
        }
    }
    let err = DistributedGraph::new(Broken).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

/// One operation of the model test, applied alike to one graph and to every rank.
#[derive(Clone, Debug)]
enum Op {
    /// Steps, through `run` (exchanging per interval) or through `step` one at a time.
    Run { steps: u64, one_at_a_time: bool },
    /// Connects a batch of `count` random synapses, delays from `shortest` ms.
    Connect {
        count: usize,
        shortest: f32,
        seed: u64,
    },
    /// Removes every neuron whose slot index is `residue` modulo `modulus`.
    Remove { modulus: u32, residue: u32 },
    /// Injects spikes from the neurons of slot index below `below`.
    Inject { below: u32 },
    /// Compacts the tables.
    Defragment,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..80, any::<bool>()).prop_map(|(steps, one_at_a_time)| Op::Run { steps, one_at_a_time }),
        2 => (1usize..400, prop_oneof![Just(0.1f32), Just(0.35), Just(1.0)], any::<u64>())
            .prop_map(|(count, shortest, seed)| Op::Connect { count, shortest, seed }),
        1 => (5u32..40, 0u32..5).prop_map(|(modulus, residue)| Op::Remove { modulus, residue }),
        1 => (1u32..20).prop_map(|below| Op::Inject { below }),
        1 => Just(Op::Defragment),
    ]
}

/// What the model test does to one graph or to one rank.
trait Network {
    fn graph(&self) -> &NeuralGraph;
    fn steps(&mut self, steps: u64, one_at_a_time: bool, spikes: &mut Vec<Vec<NeuronId>>);
    fn connect_many(&mut self, pre: &[NeuronId], post: &[NeuronId], w: &[f32], d: &[f32]);
    fn remove_neurons(&mut self, neurons: &[NeuronId]);
    fn inject_spikes(&mut self, sources: &[NeuronId]);
    fn defragment(&mut self);
}

impl Network for NeuralGraph {
    fn graph(&self) -> &NeuralGraph {
        self
    }
    fn steps(&mut self, steps: u64, _: bool, spikes: &mut Vec<Vec<NeuronId>>) {
        spikes.extend((0..steps).map(|_| self.step(DT).unwrap().to_vec()));
    }
    fn connect_many(&mut self, pre: &[NeuronId], post: &[NeuronId], w: &[f32], d: &[f32]) {
        NeuralGraph::connect_many(self, pre, post, w, d).unwrap();
    }
    fn remove_neurons(&mut self, neurons: &[NeuronId]) {
        NeuralGraph::remove_neurons(self, neurons);
    }
    fn inject_spikes(&mut self, sources: &[NeuronId]) {
        NeuralGraph::inject_spikes(self, sources, DT).unwrap();
    }
    fn defragment(&mut self) {
        NeuralGraph::defragment(self).unwrap();
    }
}

impl<X: SpikeExchange> Network for DistributedGraph<X> {
    fn graph(&self) -> &NeuralGraph {
        DistributedGraph::graph(self)
    }
    fn steps(&mut self, steps: u64, one_at_a_time: bool, spikes: &mut Vec<Vec<NeuronId>>) {
        if one_at_a_time {
            spikes.extend((0..steps).map(|_| self.step(DT).unwrap().to_vec()));
        } else {
            self.run(steps, DT, |_, fired| spikes.push(fired.to_vec()))
                .unwrap();
        }
    }
    fn connect_many(&mut self, pre: &[NeuronId], post: &[NeuronId], w: &[f32], d: &[f32]) {
        DistributedGraph::connect_many(self, pre, post, w, d).unwrap();
    }
    fn remove_neurons(&mut self, neurons: &[NeuronId]) {
        DistributedGraph::remove_neurons(self, neurons);
    }
    fn inject_spikes(&mut self, sources: &[NeuronId]) {
        DistributedGraph::inject_spikes(self, sources, DT).unwrap();
    }
    fn defragment(&mut self) {
        DistributedGraph::defragment(self).unwrap();
    }
}

/// Applies `op` to `net`, whose first neurons were `neurons`; each step's spikes go to
/// `spikes`.
fn apply(net: &mut impl Network, op: &Op, neurons: &[NeuronId], spikes: &mut Vec<Vec<NeuronId>>) {
    use rand::{Rng, SeedableRng};
    let live: Vec<NeuronId> = neurons
        .iter()
        .copied()
        .filter(|&n| net.graph().neuron(n).is_some())
        .collect();
    match *op {
        Op::Run {
            steps,
            one_at_a_time,
        } => net.steps(steps, one_at_a_time, spikes),
        Op::Connect {
            count,
            shortest,
            seed,
        } if !live.is_empty() => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut pick = || live[rng.random_range(0..live.len())];
            let (pre, post): (Vec<NeuronId>, Vec<NeuronId>) =
                (0..count).map(|_| (pick(), pick())).unzip();
            let mut rng = rand::rngs::StdRng::seed_from_u64(!seed);
            let w: Vec<f32> = (0..count)
                .map(|_| rng.random_range(-300.0..300.0f32))
                .collect();
            let d: Vec<f32> = (0..count)
                .map(|_| shortest + rng.random_range(0.0..1.5f32))
                .collect();
            net.connect_many(&pre, &post, &w, &d);
        }
        Op::Connect { .. } => {}
        Op::Remove { modulus, residue } => {
            let doomed: Vec<NeuronId> = live
                .iter()
                .copied()
                .filter(|n| n.index() % modulus == residue)
                .collect();
            net.remove_neurons(&doomed);
        }
        Op::Inject { below } => {
            let sources: Vec<NeuronId> =
                live.iter().copied().filter(|n| n.index() < below).collect();
            net.inject_spikes(&sources);
        }
        Op::Defragment => net.defragment(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random sequences of connections, runs, single steps, removals, injected spikes and
    /// compactions give, on every rank of 1 to 4, the spikes and owned neuron states of one
    /// graph; no rank keeps a synapse that ends elsewhere or names a removed neuron.
    #[test]
    fn random_operations_on_ranks_match_one_graph(ops in prop::collection::vec(op(), 1..14), ranks in 1usize..=4) {
        let driven = NeuronParams { i_e: 390.0, ..NeuronParams::default() };
        let mut g = NeuralGraph::new();
        let neurons = g.add_neurons(150, &driven).unwrap();
        let mut expected = Vec::new();
        for op in &ops {
            apply(&mut g, op, &neurons, &mut expected);
        }
        let states: Vec<(NeuronId, Neuron)> = g.neurons().iter().map(|(n, x)| (n, *x)).collect();
        let synapses = g.synapse_count() as u64;
        let results = LocalExchange::run(ranks, |x| {
            let mut net = DistributedGraph::new(x).unwrap();
            let neurons = net.add_neurons(150, &driven).unwrap();
            let mut spikes = Vec::new();
            for op in &ops {
                apply(&mut net, op, &neurons, &mut spikes);
            }
            check_owned_states(&net, &states);
            let graph = net.graph();
            let strays = graph
                .synapses()
                .values()
                .filter(|s| s.post_index() % ranks as u32 != net.rank() as u32)
                .count();
            let local = graph.synapse_count() as u64;
            let all: u64 = net.all_gather_u64(local).unwrap().iter().sum();
            (spikes, strays, all)
        });
        for (spikes, strays, all) in results {
            prop_assert_eq!(&spikes, &expected);
            prop_assert_eq!(strays, 0);
            prop_assert_eq!(all, synapses);
        }
    }
}
