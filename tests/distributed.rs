//! A network shared out among ranks (threads, through `LocalExchange`) gives the spikes
//! and neuron states of one `NeuralGraph` built with the same calls, bit for bit: for 1 to
//! 4 ranks, with one exchange per step or per interval of the shortest delay, through
//! removals and through a checkpoint. Bad input fails on every rank alike.

use neurostore::distributed::{DistributedGraph, LocalExchange, SpikeExchange};
use neurostore::neural::{NeuralGraph, NeuronId, NeuronParams};
use neurostore::{Error, Neuron};

#[path = "common/recipe.rs"]
mod recipe;

use recipe::{DT, Recipe, single_run};

/// Runs `f` on `ranks` threads, each with its rank's exchange.
fn on_ranks<R: Send>(ranks: usize, f: impl Fn(LocalExchange) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = LocalExchange::group(ranks)
            .into_iter()
            .map(|x| s.spawn(move || f(x)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

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
        let seen = on_ranks(ranks, |x| {
            let mut net = DistributedGraph::new(x).unwrap();
            recipe.build(&mut net);
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
        let seen = on_ranks(ranks, |x| {
            let mut net = DistributedGraph::new(x).unwrap();
            recipe.build(&mut net);
            let mut seen = Vec::new();
            net.run(steps, DT, |_, fired| seen.push(fired.to_vec()))
                .unwrap();
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
fn stepping_one_at_a_time_and_running_agree() {
    let recipe = Recipe {
        neurons: 300,
        per_neuron: 40,
        shortest: 1.0,
        seed: 3,
    };
    let (spikes, _) = single_run(&recipe, 300);
    let seen = on_ranks(2, |x| {
        let mut net = DistributedGraph::new(x).unwrap();
        recipe.build(&mut net);
        let mut seen: Vec<Vec<NeuronId>> =
            (0..100).map(|_| net.step(DT).unwrap().to_vec()).collect();
        net.run(200, DT, |_, fired| seen.push(fired.to_vec()))
            .unwrap();
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
    let seen = on_ranks(3, |x| {
        let mut net = DistributedGraph::new(x).unwrap();
        let ns = recipe.build(&mut net);
        let mut seen = Vec::new();
        net.run(150, DT, |_, fired| seen.push(fired.to_vec()))
            .unwrap();
        net.remove_neurons(&doomed(&ns));
        net.run(150, DT, |_, fired| seen.push(fired.to_vec()))
            .unwrap();
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
    on_ranks(2, |x| {
        let mut net = DistributedGraph::new(x).unwrap();
        recipe.build(&mut net);
        net.run(150, DT, |_, _| ()).unwrap();
        net.save(&path).unwrap();
    });
    assert!(DistributedGraph::<LocalExchange>::checkpoint_path(&path, 1, 2).is_file());
    let resumed = on_ranks(2, |x| {
        let mut net = DistributedGraph::load(x, &path).unwrap();
        assert_eq!(net.graph().current_step(), 150);
        assert_eq!(net.graph().last_spikes(), &spikes[149][..]);
        let mut seen = Vec::new();
        net.run(250, DT, |_, fired| seen.push(fired.to_vec()))
            .unwrap();
        seen
    });
    for per_rank in resumed {
        assert_eq!(per_rank, spikes[150..]);
    }
    // Three ranks find no files of theirs: every rank says so.
    for result in on_ranks(3, |x| DistributedGraph::load(x, &path).map(|_| ())) {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. } | Error::Exchange { .. }),
            "{err}"
        );
    }
}

#[test]
fn bad_input_fails_on_every_rank_and_changes_nothing() {
    let results = on_ranks(3, |x| {
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
