//! The main job: the Potjans & Diesmann (2014) cortical microcircuit, end to end.
//!
//! Builds the network in a `NeuralGraph` (at full scale by default: 77,169 neurons and
//! about 299M synapses, 8 GiB), simulates a 500 ms transient and one measured second with
//! exact integration at 0.1 ms, reports per-population rates beside the published ones,
//! then removes a random tenth of the neurons, collects, defragments, saves a snapshot,
//! loads it into a new store and verifies every handle, and plots a raster and the rates.
//!
//! With `--checkpoint-at MS PATH` it saves the running network at model time `MS` and
//! goes on; `--resume PATH` starts from such a checkpoint instead of building, and reports
//! whether every later step fires exactly the spikes of the run that saved it.
//!
//! ```sh
//! cargo run --release --example microcircuit                       # full scale, ~299M synapses
//! cargo run --release --example microcircuit -- --scale 0.1        # a tenth, ~30M synapses
//! cargo run --release --example microcircuit -- --checkpoint-at 500 target/t500.nsnap
//! cargo run --release --example microcircuit -- --resume target/t500.nsnap
//! cargo run --release --example microcircuit -- --help
//! ```
//!
//! Built with the `mpi` feature and started by `mpirun` with more than one rank, it shares
//! the network out among the ranks (`distributed.rs`): every rank sees every spike, and
//! the rates are those of one process, bit for bit.
//!
//! ```sh
//! cargo build --release --features mpi --example microcircuit
//! mpirun -np 2 target/release/examples/microcircuit --scale 0.1 --threads 1
//! ```

#[cfg(feature = "mpi")]
mod distributed;
mod model;
mod plots;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use model::{
    Checkpointing, Config, POPULATIONS, PUBLISHED_RATES_HZ, SimulationReport, SpikeDigests,
    SpikeRecord,
};
use neurostore::neural::{GraphMemory, NeuronId};
use neurostore::snapshot::Progress;

const USAGE: &str = "\
usage: microcircuit [OPTIONS]

  --scale S          population sizes times S, in-degrees kept (default 1, the full
                     model: 77,169 neurons, 299M synapses, about 8 GiB)
  --time-ms T        measured model time after the transient (default 1000)
  --transient-ms T   model time simulated and discarded first (default 500)
  --seed N           seed of every random draw (default 55)
  --threads N        worker threads (default: one per core)
  --gpu              run the step on the GPU through device mirrors when available
  --checkpoint-at MS PATH
                     save the network as a checkpoint at model time MS and go on; the
                     digests of every later step's spikes go to PATH.spikes
  --resume PATH      start from a checkpoint instead of building (the scale is the
                     checkpoint's); when PATH.spikes is there, the spikes after the
                     checkpoint are compared with those of the run that saved it
  --snapshot PATH    where the snapshot goes (default OUT/microcircuit.nsnap)
  --out DIR          where plots and the snapshot go (default target/microcircuit)
  --keep-original    compare the loaded store with the original object by object, both
                     in memory at once (default: only for tables under 1 GiB)
  -h, --help         this text

Built with --features mpi and run by `mpirun -np N` (N > 1), the ranks share the network
out; --gpu, --checkpoint-at and --resume then do not apply.";

/// Tables up to this size are compared object by object with the loaded copy.
const SMALL_TABLES_BYTES: usize = 1 << 30;

struct Args {
    config: Config,
    threads: Option<usize>,
    gpu: bool,
    checkpoint: Option<(f64, PathBuf)>,
    resume: Option<PathBuf>,
    snapshot: Option<PathBuf>,
    out: PathBuf,
    keep_original: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: Config::default(),
        threads: None,
        gpu: false,
        checkpoint: None,
        resume: None,
        snapshot: None,
        out: PathBuf::from("target/microcircuit"),
        keep_original: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        fn number<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{name}: `{v}` is not a valid number"))
        }
        match flag.as_str() {
            "--scale" => args.config.scale = number("--scale", value("--scale")?)?,
            "--time-ms" => args.config.time_ms = number("--time-ms", value("--time-ms")?)?,
            "--transient-ms" => {
                args.config.transient_ms = number("--transient-ms", value("--transient-ms")?)?
            }
            "--seed" => args.config.seed = number("--seed", value("--seed")?)?,
            "--threads" => args.threads = Some(number("--threads", value("--threads")?)?),
            "--gpu" => args.gpu = true,
            "--checkpoint-at" => {
                let ms = number("--checkpoint-at", value("--checkpoint-at")?)?;
                args.checkpoint = Some((ms, PathBuf::from(value("--checkpoint-at")?)));
            }
            "--resume" => args.resume = Some(PathBuf::from(value("--resume")?)),
            "--snapshot" => args.snapshot = Some(PathBuf::from(value("--snapshot")?)),
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--keep-original" => args.keep_original = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    let c = &args.config;
    if !(c.scale.is_finite() && c.scale > 0.0 && c.scale <= 10.0) {
        return Err(format!("--scale {} must lie in (0, 10]", c.scale));
    }
    for (name, ms) in [("--time-ms", c.time_ms), ("--transient-ms", c.transient_ms)] {
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(format!("{name} {ms} must be a finite, non-negative time"));
        }
    }
    if c.time_ms < model::DT_MS {
        return Err(format!(
            "--time-ms {} must cover at least one step of 0.1 ms",
            c.time_ms
        ));
    }
    if let Some((ms, _)) = args.checkpoint {
        let end = c.transient_ms + c.time_ms;
        if !(ms.is_finite() && (0.0..end).contains(&ms)) {
            return Err(format!(
                "--checkpoint-at {ms} must lie in the run's model time, [0, {end}) ms"
            ));
        }
    }
    if args.gpu && (args.checkpoint.is_some() || args.resume.is_some()) {
        return Err(
            "--checkpoint-at and --resume need the CPU step: the GPU step keeps \
                    its state on the device"
                .into(),
        );
    }
    if args.threads == Some(0) {
        return Err("--threads must be at least 1".into());
    }
    Ok(args)
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

fn bytes_bar(what: &str) -> ProgressBar {
    bar(
        0,
        "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .with_message(what.to_owned())
}

fn follow(bar: &ProgressBar) -> impl FnMut(Progress) + '_ {
    move |p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn gib(bytes: usize) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory the system can still give (Linux), in bytes.
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    // Under `mpirun -np N` with N > 1, the network is shared out among the ranks.
    #[cfg(feature = "mpi")]
    let _universe = {
        use neurostore::distributed::{MpiExchange, mpi, mpi::traits::Communicator};
        let universe = mpi::initialize().ok_or("MPI was initialised already")?;
        if universe.world().size() > 1 {
            return distributed::run(&args, MpiExchange::new(universe.world()));
        }
        universe
    };
    let config = &args.config;
    std::fs::create_dir_all(&args.out)?;
    let scale = match args.resume {
        Some(_) => "the checkpoint's".to_owned(),
        None => config.scale.to_string(),
    };
    println!(
        "Potjans & Diesmann (2014) microcircuit: scale {scale}, {} ms after a {} ms \
         transient, dt {} ms, seed {}, {} threads",
        config.time_ms,
        config.transient_ms,
        model::DT_MS,
        config.seed,
        rayon::current_num_threads()
    );
    let gpu = if args.gpu { open_gpu() } else { None };
    let mut network = build_or_resume(&args)?;
    let memory = network.graph.memory();
    let mut checkpoint = args.checkpoint.as_ref().map(|(ms, path)| Checkpointing {
        step: (ms / model::DT_MS).round() as u64,
        path: path.clone(),
        saved: None,
    });
    let simulating = bar(
        0,
        "  simulate [{bar:40}] {pos}/{len} steps ({per_sec}, eta {eta})",
    );
    let (record, sim) = model::simulate_with(
        &mut network,
        config,
        gpu.as_ref(),
        checkpoint.as_mut(),
        &mut |p| {
            simulating.set_length(p.total);
            simulating.set_position(p.steps);
        },
    )?;
    simulating.finish_and_clear();
    let rates = report_rates(&network, &record, &sim);
    report_figures(&network, &memory, &record, &sim);
    report_checkpoint(&args, checkpoint.as_ref(), &sim)?;

    // Plots (before the network may be dropped for the snapshot check).
    let raster = args.out.join("raster.png");
    let rates_png = args.out.join("rates.png");
    let font = plots::load_font();
    plots::raster(&raster, &record, &network.populations, font)?;
    plots::rates(&rates_png, &rates, font)?;

    let removed = remove_collect_defragment(&mut network, config.seed)?;
    snapshot_round_trip(network, &removed, &args)?;
    if let Some(rss) = peak_rss() {
        println!("{:<40} {}", "peak resident memory", gib(rss));
    }
    println!();
    println!("wrote {}", raster.display());
    println!("wrote {}", rates_png.display());
    Ok(())
}

/// Builds the network, or loads it from the checkpoint `--resume` names.
fn build_or_resume(args: &Args) -> Result<model::Network, Box<dyn std::error::Error>> {
    if let Some(path) = &args.resume {
        let loading = bytes_bar("resume");
        let network = model::resume(path, &mut follow(&loading))?;
        loading.finish_and_clear();
        let graph = &network.graph;
        println!(
            "resumed {} neurons and {} synapses at step {} ({:.1} ms) from {} in {}",
            graph.neuron_count(),
            graph.synapse_count(),
            graph.current_step(),
            graph.time_ms(),
            path.display(),
            secs(network.build_time)
        );
        return Ok(network);
    }
    let building = bar(0, "     build [{bar:40}] {pos}/{len} synapses ({per_sec})");
    let network = model::build(&args.config, &mut |p| {
        building.set_length(p.total);
        building.set_position(p.synapses);
    })?;
    building.finish_and_clear();
    println!(
        "built {} neurons and {} synapses in {} (optimize_layout {})",
        network.graph.neuron_count(),
        network.graph.synapse_count(),
        secs(network.build_time),
        secs(network.layout_time)
    );
    Ok(network)
}

/// Prints each population's rate beside the published one; returns the rates.
fn report_rates(
    network: &model::Network,
    record: &SpikeRecord,
    sim: &SimulationReport,
) -> [f64; 8] {
    let sizes: [usize; 8] = std::array::from_fn(|p| network.populations[p].len());
    let rates = model::population_rates(record, &sizes);
    let into = model::synapses_into(network);
    println!();
    println!(
        "{:<6} {:>8} {:>12} {:>10} {:>14} {:>7}",
        "pop", "neurons", "synapses in", "rate (Hz)", "published (Hz)", "ratio"
    );
    for p in 0..8 {
        println!(
            "{:<6} {:>8} {:>12} {:>10.3} {:>14.3} {:>7.2}",
            POPULATIONS[p],
            sizes[p],
            into[p],
            rates[p],
            PUBLISHED_RATES_HZ[p],
            rates[p] / PUBLISHED_RATES_HZ[p]
        );
    }
    let neurons = network.graph.neuron_count();
    let mean_rate = sim.spikes as f64 / (neurons as f64 * record.time_ms / 1000.0);
    let published_mean = (0..8)
        .map(|p| PUBLISHED_RATES_HZ[p] * sizes[p] as f64)
        .sum::<f64>()
        / neurons as f64;
    println!(
        "{:<6} {:>8} {:>12} {:>10.3} {:>14.3} {:>7.2}",
        "all",
        neurons,
        network.graph.synapse_count(),
        mean_rate,
        published_mean,
        mean_rate / published_mean
    );
    rates
}

/// Prints the memory, build and simulation figures.
fn report_figures(
    network: &model::Network,
    memory: &GraphMemory,
    record: &SpikeRecord,
    sim: &SimulationReport,
) {
    println!();
    let neurons = network.graph.neuron_count();
    let synapses = network.graph.synapse_count();
    println!("{:<40} {}", "neurons", neurons);
    println!("{:<40} {}", "synapses", synapses);
    println!(
        "{:<40} {:.1} B ({} in all: objects {}, slots and chunk metadata {}, adjacency {}, \
         input in flight {})",
        "bytes per synapse, store-wide",
        memory.total() as f64 / synapses as f64,
        gib(memory.total()),
        gib(memory.object_bytes),
        gib(memory.metadata_bytes),
        gib(memory.adjacency_bytes),
        gib(memory.input_bytes)
    );
    let pool = network.graph.store().pool().stats();
    println!(
        "{:<40} {} reserved, {} in use (the tables' chunks)",
        "pool",
        gib(pool.reserved_bytes),
        gib(pool.in_use_bytes)
    );
    if let Some(rss) = peak_rss() {
        println!(
            "{:<40} {:.1} B ({} peak resident)",
            "bytes per synapse, whole process",
            rss as f64 / synapses as f64,
            gib(rss)
        );
    }
    println!("{:<40} {}", "build time", secs(network.build_time));
    println!(
        "{:<40} {:.2} (wall s per model s; transient {})",
        "real-time factor",
        sim.real_time_factor(record.time_ms),
        secs(sim.transient_wall)
    );
    println!(
        "{:<40} {:.3e} ({} events in {})",
        "synaptic events per second",
        sim.events_per_second(),
        sim.events,
        secs(sim.measured_wall)
    );
    println!(
        "{:<40} {:.2} % (neurons {:.2} %)",
        "synapse table fragmentation",
        network.graph.synapses().fragmentation().ratio * 100.0,
        network.graph.neurons().fragmentation().ratio * 100.0
    );
}

/// Where the spike digests of the steps after a checkpoint go: beside it.
fn digests_path(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.as_os_str().to_owned();
    name.push(".spikes");
    PathBuf::from(name)
}

/// Reports the checkpoint taken (and writes the digests of the steps after it beside
/// it), and, for a resumed run, compares its spikes with those of the run that saved the
/// checkpoint.
fn report_checkpoint(
    args: &Args,
    checkpoint: Option<&Checkpointing>,
    sim: &SimulationReport,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(cp) = checkpoint {
        let saved = cp.saved.as_ref().ok_or_else(|| {
            format!(
                "the run never reached the checkpoint's step {}: it started at step {}",
                cp.step, sim.digests.first_step
            )
        })?;
        let after = sim.digests.since(cp.step);
        let digests = digests_path(&cp.path);
        after.save(&digests)?;
        println!(
            "{:<40} {} ({:.2} GB, {:.2} GB/s) at step {} to {}; spike digests of the {} \
             steps after it in {}",
            "checkpoint",
            secs(saved.duration),
            saved.bytes as f64 / 1e9,
            saved.bytes_per_second() / 1e9,
            cp.step,
            cp.path.display(),
            after.per_step.len(),
            digests.display()
        );
    }
    let Some(path) = &args.resume else {
        return Ok(());
    };
    let digests = digests_path(path);
    if !digests.exists() {
        println!(
            "{:<40} no {} to compare the spikes with",
            "resumed run",
            digests.display()
        );
        return Ok(());
    }
    let original = SpikeDigests::load(&digests)?;
    match sim.digests.compare(&original) {
        Ok(steps) => {
            println!(
                "{:<40} the {steps} steps after the checkpoint fire exactly the spikes of \
                 the run that saved it ({})",
                "resumed run",
                digests.display()
            );
            Ok(())
        }
        Err(step) => Err(format!(
            "the resumed run's spikes differ from those of the run that saved the \
             checkpoint at step {step} ({})",
            digests.display()
        )
        .into()),
    }
}

/// Removes a random tenth of the neurons, collects and defragments, printing each;
/// returns the removed neurons.
fn remove_collect_defragment(
    network: &mut model::Network,
    seed: u64,
) -> Result<Vec<NeuronId>, Box<dyn std::error::Error>> {
    println!();
    let started = Instant::now();
    let (removed, synapses_removed) = model::remove_random_neurons(network, 0.1, seed);
    println!(
        "{:<40} {} ({} neurons, {} synapses with them)",
        "removed a random 10 % of neurons",
        secs(started.elapsed()),
        removed.len(),
        synapses_removed
    );
    let gc = network.graph.collect();
    println!(
        "{:<40} {} ({} objects scanned, {} dangling handles, {} freed)",
        "garbage collection",
        secs(gc.duration),
        gc.scanned,
        gc.dangling_count,
        gc.freed_total
    );
    if gc.dangling_count > 0 {
        return Err(format!("{} synapses name removed neurons", gc.dangling_count).into());
    }
    let frag_removed = network.graph.synapses().fragmentation().ratio;
    let started = Instant::now();
    let defrag = network.graph.defragment()?;
    let defrag_time = started.elapsed();
    println!(
        "{:<40} {} ({} objects, {:.1} MB moved, {:.2} GB/s; synapse fragmentation \
         {:.2} % -> {:.2} %)",
        "defragmentation",
        secs(defrag_time),
        defrag.moved,
        defrag.bytes_moved as f64 / 1e6,
        defrag.bytes_moved as f64 / defrag_time.as_secs_f64().max(1e-9) / 1e9,
        frag_removed * 100.0,
        network.graph.synapses().fragmentation().ratio * 100.0
    );
    Ok(removed)
}

/// Saves the store, loads it into a new one and verifies every handle, printing each.
fn snapshot_round_trip(
    network: model::Network,
    removed: &[NeuronId],
    args: &Args,
) -> Result<(), Box<dyn std::error::Error>> {
    let snapshot_path = args
        .snapshot
        .clone()
        .unwrap_or_else(|| args.out.join("microcircuit.nsnap"));
    let table_bytes = {
        let m = network.graph.memory();
        m.object_bytes + m.metadata_bytes
    };
    // Two copies of a large network would double the memory the job needs: the loaded
    // copy is checked against digests of the original unless the tables are small (or
    // --keep-original asks for the object-by-object comparison and the memory fits).
    let fits = available_memory().is_none_or(|avail| table_bytes * 2 < avail);
    let keep = (table_bytes < SMALL_TABLES_BYTES && fits) || args.keep_original;
    if !keep {
        println!(
            "the original ({} of tables) is dropped after the save; the loaded copy is \
             compared through digests of every (handle, object) pair",
            gib(table_bytes),
        );
    }
    let saving = bytes_bar("save");
    let loading = bytes_bar("load");
    let mut slot = Some(network);
    let trip = model::snapshot_round_trip(
        &mut slot,
        removed,
        &snapshot_path,
        keep,
        &mut follow(&saving),
        &mut follow(&loading),
    );
    saving.finish_and_clear();
    loading.finish_and_clear();
    let trip = trip?;
    println!(
        "{:<40} {} ({:.2} GB, {:.2} GB/s) to {}",
        "snapshot save",
        secs(trip.saved.duration),
        trip.saved.bytes as f64 / 1e9,
        trip.saved.bytes as f64 / trip.saved.duration.as_secs_f64().max(1e-9) / 1e9,
        snapshot_path.display()
    );
    println!(
        "{:<40} {} ({:.2} GB/s)",
        "snapshot load into a new store",
        secs(trip.load_time),
        trip.saved.bytes as f64 / trip.load_time.as_secs_f64().max(1e-9) / 1e9
    );
    println!(
        "{:<40} {} ({} handles resolve to equal objects, {} removed handles stay stale, {})",
        "snapshot verified",
        secs(trip.verify_time),
        trip.handles_checked,
        trip.stale_checked,
        if trip.compared_directly {
            "compared object by object with the original"
        } else {
            "compared through digests of every (handle, object) pair"
        }
    );
    Ok(())
}

/// The GPU for `--gpu`, or `None` (the step then runs on the CPU) after saying why.
fn open_gpu() -> Option<model::Gpu> {
    #[cfg(feature = "cuda")]
    match neurostore::cuda::Device::open(0) {
        Ok(d) => {
            println!("--gpu: the step runs on {} (device mirrors)", d.name());
            Some(d)
        }
        Err(e) => {
            println!("--gpu: {e}; the step runs on the CPU");
            None
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        println!("--gpu: this build has no `cuda` feature; the step runs on the CPU");
        None
    }
}
