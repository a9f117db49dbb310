//! Ranks that are MPI processes give the spikes of one process, bit for bit. Built only
//! with the `mpi` feature and run under `mpirun` (it is its own `main`: MPI is
//! initialised once per process):
//!
//! ```sh
//! cargo test --release --features mpi --test mpi --no-run
//! mpirun -np 2 target/release/deps/mpi-<hash>     # --allow-run-as-root as root,
//!                                                 # --oversubscribe for more ranks than cores
//! ```
//!
//! Each rank builds a random network (`tests/common/recipe.rs`) as its part of a
//! `DistributedGraph` and, beside it, whole in one `NeuralGraph`; it runs both, exchanging
//! once per step and once per interval of the shortest delay, through a per-rank
//! checkpoint, and fails (exit code 1) if any step's spikes or any owned neuron's state
//! differ, or if the ranks do not all agree. Run alone (`cargo test --features mpi`) it
//! is one rank.

#[path = "common/recipe.rs"]
mod recipe;

use neurostore::distributed::mpi::traits::Communicator;
use neurostore::distributed::{DistributedGraph, MpiExchange, mpi};
use neurostore::neural::NeuronId;
use recipe::{DT, Recipe, single_run};

type Net = DistributedGraph<MpiExchange>;

/// Runs `recipe` distributed for `steps` steps, with a checkpoint round trip after
/// `steps / 3`; compares with one process. Returns the exchange and the failures seen.
fn check(
    exchange: MpiExchange,
    recipe: &Recipe,
    steps: u64,
    dir: &std::path::Path,
) -> (MpiExchange, Vec<String>) {
    let (spikes, states) = single_run(recipe, steps);
    let mut failures = Vec::new();
    let mut net = Net::new(exchange).expect("a valid rank");
    recipe.build(&mut net);
    let mut seen: Vec<Vec<NeuronId>> = Vec::new();
    let first = steps / 3;
    for _ in 0..10 {
        seen.push(net.step(DT).expect("a step").to_vec());
    }
    net.run(first - 10, DT, |_, fired| seen.push(fired.to_vec()))
        .expect("a run");
    net.save(dir).expect("every rank saves");
    let mut net = Net::load(net.into_exchange(), dir).expect("every rank loads");
    net.run(steps - first, DT, |_, fired| seen.push(fired.to_vec()))
        .expect("a run");
    if let Some(k) = (0..spikes.len()).find(|&k| seen.get(k) != Some(&spikes[k])) {
        failures.push(format!(
            "step {k}: {:?} here, {:?} in one process",
            seen.get(k),
            spikes[k]
        ));
    }
    for (n, state) in &states {
        if net.owns(*n) && net.graph().neuron(*n) != Some(state) {
            failures.push(format!("neuron {n:?} differs from one process's"));
        }
    }
    let total: usize = spikes.iter().map(Vec::len).sum();
    println!(
        "rank {} of {}: shortest delay {} ms, {steps} steps, {total} spikes, {} exchanges: {}",
        net.rank(),
        net.ranks(),
        recipe.shortest,
        net.exchange_stats().exchanges,
        if failures.is_empty() {
            "same spikes as one process"
        } else {
            "DIFFERENT"
        }
    );
    (net.into_exchange(), failures)
}

fn main() {
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let (rank, ranks) = (world.rank(), world.size());
    let dir = std::env::temp_dir().join(format!("neurostore-mpi-test-{}", std::process::id()));
    // Rank 0's process id names the directory every rank uses.
    let mut id = if rank == 0 { std::process::id() } else { 0 };
    {
        use neurostore::distributed::mpi::traits::Root;
        world.process_at_rank(0).broadcast_into(&mut id);
    }
    let dir = dir.with_file_name(format!("neurostore-mpi-test-{id}"));
    let mut exchange = MpiExchange::new(world);
    let mut failures = Vec::new();
    for recipe in [
        Recipe {
            neurons: 600,
            per_neuron: 60,
            shortest: 0.1,
            seed: 11,
        },
        Recipe {
            neurons: 500,
            per_neuron: 50,
            shortest: 0.75,
            seed: 12,
        },
    ] {
        let (back, failed) = check(
            exchange,
            &recipe,
            450,
            &dir.join(format!("seed-{}", recipe.seed)),
        );
        exchange = back;
        failures.extend(failed);
    }
    let mut net = Net::new(exchange).expect("a valid rank");
    let failed_ranks: u64 = net
        .all_gather_u64(u64::from(!failures.is_empty()))
        .expect("a gather")
        .iter()
        .sum();
    if rank == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
    for f in &failures {
        eprintln!("rank {rank}: {f}");
    }
    if failed_ranks > 0 {
        eprintln!("{failed_ranks} of {ranks} ranks saw spikes that differ from one process's");
        std::process::exit(1);
    }
    if rank == 0 {
        println!("mpi: {ranks} ranks, same spikes as one process");
    }
}
