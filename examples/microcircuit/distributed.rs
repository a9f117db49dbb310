//! The main job shared out among MPI ranks (the `mpi` feature), when launched with more
//! than one: `mpirun -np 2 target/release/examples/microcircuit --scale 0.1`.
//!
//! Every rank builds the network with the same calls (each keeping the synapses that end
//! on its neurons), simulates with one spike exchange per interval of the shortest delay,
//! and rank 0 prints the rates (every rank sees every spike), the figures per rank, what
//! the exchange cost, a removal with its audit and compaction, and a per-rank checkpoint
//! whose resumed steps are compared with the steps that followed the save.

use std::time::{Duration, Instant};

use neurostore::distributed::{DistributedGraph, MpiExchange, SpikeExchange};
use neurostore::neural::{NeuronId, NeuronParams};

use super::model::{self, Builds, Config, DT_MS, POPULATIONS, PUBLISHED_RATES_HZ, SpikeRecord};
use super::{Args, gib, peak_rss, plots, secs};

type Net = DistributedGraph<MpiExchange>;
type Failure = Box<dyn std::error::Error>;

impl<X: SpikeExchange> Builds for DistributedGraph<X> {
    fn add_neurons(
        &mut self,
        count: usize,
        params: &NeuronParams,
    ) -> Result<Vec<NeuronId>, neurostore::Error> {
        DistributedGraph::add_neurons(self, count, params)
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
    ) -> Result<usize, neurostore::Error> {
        DistributedGraph::connect_many(self, pre, post, weight, delay)
    }
}

/// Prints on rank 0 only.
macro_rules! say {
    ($net:expr, $($arg:tt)*) => {
        if $net.rank() == 0 {
            println!($($arg)*);
        }
    };
}

/// Runs the main job as this rank of `exchange`'s ranks.
pub fn run(args: &Args, exchange: MpiExchange) -> Result<(), Failure> {
    let config = &args.config;
    if args.gpu || args.checkpoint.is_some() || args.resume.is_some() {
        return Err("--gpu, --checkpoint-at and --resume run in one process only".into());
    }
    let mut net = Net::new(exchange)?;
    say!(
        net,
        "Potjans & Diesmann (2014) microcircuit over {} MPI ranks: scale {}, {} ms after a {} ms \
         transient, dt {DT_MS} ms, seed {}, {} threads per rank",
        net.ranks(),
        config.scale,
        config.time_ms,
        config.transient_ms,
        config.seed,
        rayon::current_num_threads()
    );
    let started = Instant::now();
    let total = model::total_synapses(config)?;
    let share = total / net.ranks() as u64;
    net.reserve_synapse_table(usize::try_from(share + share / 20).unwrap_or(usize::MAX))?;
    let mut populations = model::build_into(&mut net, config, &mut |_| ())?;
    let build_time = started.elapsed();
    let synapses = net.all_gather_u64(net.graph().synapse_count() as u64)?;
    let builds = net.all_gather_u64(build_time.as_nanos() as u64)?;
    say!(
        net,
        "built {} neurons and {} synapses in {} (slowest rank; per rank: {})",
        net.graph().neuron_count(),
        synapses.iter().sum::<u64>(),
        secs(Duration::from_nanos(
            builds.iter().copied().max().unwrap_or(0)
        )),
        synapses
            .iter()
            .map(|s| format!("{s} synapses"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (record, walls, events) = simulate(&mut net, config, &populations)?;
    let rates = report_rates(&mut net, &populations, &record)?;
    report_figures(&mut net, &record, walls, events)?;
    if net.rank() == 0 {
        plot(args, &record, &populations, &rates)?;
    }
    remove_and_compact(&mut net, &mut populations, config.seed)?;
    let mut net = checkpoint_round_trip(net, args)?;
    let rss = net.all_gather_u64(peak_rss().unwrap_or(0) as u64)?;
    say!(
        net,
        "{:<40} {}",
        "peak resident memory per rank",
        rss.iter()
            .map(|&b| gib(b as usize))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The raster and the rates, as one process draws them.
fn plot(
    args: &Args,
    record: &SpikeRecord,
    populations: &[Vec<NeuronId>],
    rates: &[f64; 8],
) -> Result<(), Failure> {
    std::fs::create_dir_all(&args.out)?;
    let font = plots::load_font();
    let (raster, rates_png) = (args.out.join("raster.png"), args.out.join("rates.png"));
    plots::raster(&raster, record, populations, font)?;
    plots::rates(&rates_png, rates, font)?;
    println!("wrote {} and {}", raster.display(), rates_png.display());
    Ok(())
}

/// The transient, then the measured window with its spikes recorded: the record, the
/// two wall times, and this rank's synaptic events in the window.
fn simulate(
    net: &mut Net,
    config: &Config,
    populations: &[Vec<NeuronId>],
) -> Result<(SpikeRecord, [Duration; 2], u64), Failure> {
    let transient = (config.transient_ms / DT_MS).round() as u64;
    let measured = (config.time_ms / DT_MS).round() as u64;
    // Per slot index: the population, and this rank's synapses leaving the neuron.
    let mut population = vec![0u8; net.graph().neurons().slot_count()];
    let mut out_degree = vec![0u64; population.len()];
    for (p, ns) in populations.iter().enumerate() {
        for &n in ns {
            population[n.index() as usize] = p as u8;
            out_degree[n.index() as usize] = net.graph().out_degree(n).unwrap_or(0) as u64;
        }
    }
    let started = Instant::now();
    net.run(transient, DT_MS, |_, _| ())?;
    let transient_wall = started.elapsed();
    let mut record = SpikeRecord {
        spikes: Vec::new(),
        time_ms: measured as f64 * DT_MS,
    };
    let mut events = 0;
    let started = Instant::now();
    net.run(measured, DT_MS, |step, fired| {
        let t = ((step - transient) as f64 * DT_MS) as f32;
        for &n in fired {
            let i = n.index() as usize;
            record.spikes.push((t, population[i], n));
            events += out_degree[i];
        }
    })?;
    Ok((record, [transient_wall, started.elapsed()], events))
}

/// Prints each population's rate beside the published one (rank 0); returns the rates.
fn report_rates(
    net: &mut Net,
    populations: &[Vec<NeuronId>],
    record: &SpikeRecord,
) -> Result<[f64; 8], Failure> {
    let sizes: [usize; 8] = std::array::from_fn(|p| populations[p].len());
    let rates = model::population_rates(record, &sizes);
    say!(net, "");
    say!(
        net,
        "{:<6} {:>8} {:>10} {:>14} {:>7}",
        "pop",
        "neurons",
        "rate (Hz)",
        "published (Hz)",
        "ratio"
    );
    for p in 0..8 {
        say!(
            net,
            "{:<6} {:>8} {:>10.3} {:>14.3} {:>7.2}",
            POPULATIONS[p],
            sizes[p],
            rates[p],
            PUBLISHED_RATES_HZ[p],
            rates[p] / PUBLISHED_RATES_HZ[p]
        );
    }
    Ok(rates)
}

fn report_figures(
    net: &mut Net,
    record: &SpikeRecord,
    [transient, measured]: [Duration; 2],
    events: u64,
) -> Result<(), Failure> {
    let memory = net.graph().memory();
    let synapses = net.graph().synapse_count().max(1);
    let bytes = net.all_gather_u64(memory.total() as u64)?;
    let per_synapse =
        net.all_gather_u64((memory.total() as f64 / synapses as f64 * 10.0) as u64)?;
    let events_all: u64 = net.all_gather_u64(events)?.iter().sum();
    let walls = net.all_gather_u64(measured.as_nanos() as u64)?;
    let wall = Duration::from_nanos(walls.iter().copied().max().unwrap_or(0));
    let stats = net.exchange_stats();
    let cores = (net.ranks() * rayon::current_num_threads()) as f64;
    say!(net, "");
    say!(
        net,
        "{:<40} {} ({:.1} B per synapse; per rank)",
        "store memory",
        bytes
            .iter()
            .map(|&b| gib(b as usize))
            .collect::<Vec<_>>()
            .join(", "),
        per_synapse.iter().map(|&b| b as f64 / 10.0).sum::<f64>() / net.ranks() as f64
    );
    say!(net, "{:<40} {}", "transient (rank 0)", secs(transient));
    say!(
        net,
        "{:<40} {} for {} ms: real-time factor {:.2}",
        "simulation (slowest rank)",
        secs(wall),
        record.time_ms,
        wall.as_secs_f64() * 1000.0 / record.time_ms
    );
    say!(
        net,
        "{:<40} {:.3e} ({:.3e} per core, {} cores in all)",
        "synaptic events per second",
        events_all as f64 / wall.as_secs_f64(),
        events_all as f64 / wall.as_secs_f64() / cores,
        cores
    );
    say!(
        net,
        "{:<40} {} exchanges of {:.1} steps, {:.1} us each, {:.1} words sent and {:.1} received \
         each (rank 0)",
        "spike exchange",
        stats.exchanges,
        stats.steps as f64 / stats.exchanges.max(1) as f64,
        stats.time.as_secs_f64() * 1e6 / stats.exchanges.max(1) as f64,
        stats.words_sent as f64 / stats.exchanges.max(1) as f64,
        stats.words_received as f64 / stats.exchanges.max(1) as f64
    );
    Ok(())
}

fn remove_and_compact(
    net: &mut Net,
    populations: &mut [Vec<NeuronId>],
    seed: u64,
) -> Result<(), Failure> {
    say!(net, "");
    let removed = model::pick_random_neurons(populations, 0.1, seed);
    let started = Instant::now();
    let synapses = net.remove_neurons(&removed) as u64;
    let took = started.elapsed();
    let synapses: u64 = net.all_gather_u64(synapses)?.iter().sum();
    say!(
        net,
        "{:<40} {} ({} neurons, {} synapses with them; rank 0)",
        "removed a random 10 % of neurons",
        secs(took),
        removed.len(),
        synapses
    );
    let gc = net.collect();
    let dangling: u64 = net.all_gather_u64(gc.dangling_count as u64)?.iter().sum();
    say!(
        net,
        "{:<40} {} (rank 0), {} dangling handles on all ranks",
        "garbage collection",
        secs(gc.duration),
        dangling
    );
    if dangling > 0 {
        return Err(format!("{dangling} synapses name removed neurons").into());
    }
    let started = Instant::now();
    let defrag = net.defragment()?;
    say!(
        net,
        "{:<40} {} ({} objects, {:.1} MB moved; rank 0)",
        "defragmentation",
        secs(started.elapsed()),
        defrag.moved,
        defrag.bytes_moved as f64 / 1e6
    );
    Ok(())
}

/// Saves every rank's part, runs on, loads the checkpoint and runs the same steps again:
/// the spikes must be the same.
fn checkpoint_round_trip(mut net: Net, args: &Args) -> Result<Net, Failure> {
    const STEPS: u64 = 200;
    let dir = args.out.join("distributed-checkpoint");
    let started = Instant::now();
    let saved = net.save(&dir)?;
    let save_time = started.elapsed();
    let mut after = Vec::new();
    net.run(STEPS, DT_MS, |_, fired| after.push(fired.to_vec()))?;
    let started = Instant::now();
    let mut net = Net::load(net.into_exchange(), &dir)?;
    let load_time = started.elapsed();
    let mut again = Vec::new();
    net.run(STEPS, DT_MS, |_, fired| again.push(fired.to_vec()))?;
    let same = net.all_gather_u64(u64::from(after == again))?;
    say!(
        net,
        "{:<40} save {} ({:.1} MB, rank 0), load {}: the {STEPS} steps after it {}",
        "checkpoint per rank",
        secs(save_time),
        saved.bytes as f64 / 1e6,
        secs(load_time),
        if same.iter().all(|&s| s == 1) {
            "fire the same spikes on every rank"
        } else {
            "DIFFER"
        }
    );
    if same.iter().any(|&s| s != 1) {
        return Err("the resumed run's spikes differ".into());
    }
    Ok(net)
}
