//! Device mirrors on a GPU: full upload and incremental sync of a 1 GB table (32M 32-byte
//! objects), each beside a raw cudarc copy of the same bytes from pinned host memory in
//! the same run.
//!
//! - full: `DeviceMirror::new` (every chunk and the slot table) vs one pinned copy of the
//!   table's object bytes;
//! - incremental: 1 % of the chunks changed (every hundredth), then `sync`, vs the same
//!   number of chunk-sized pinned copies.
//!
//! - the neural step: `GpuNetwork::step` beside `NeuralGraph::step` (rayon, every core)
//!   on the same random network of 20k neurons with 500 synapses each, after a warm-up,
//!   each checked to give the same spikes.
//!
//! Without a CUDA driver or device it prints `skipped: <reason>` and exits 0. Each
//! transfer figure is the best of `NEUROSTORE_CUDA_BENCH_ROUNDS` rounds (default 5).
//! `NEUROSTORE_CUDA_BENCH_OBJECTS` overrides the object count.

mod common;

#[cfg(feature = "cuda")]
mod bench {
    use std::time::{Duration, Instant};

    use crate::common::Obj;
    use neurostore::cuda::cudarc::driver::CudaSlice;
    use neurostore::cuda::{Device, DeviceMirror, GpuNetwork};
    use neurostore::neural::{NeuralGraph, NeuronParams};
    use neurostore::table::Table;
    use neurostore::{Error, Handle};

    fn env(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn best(
        rounds: usize,
        mut f: impl FnMut() -> Result<Duration, Error>,
    ) -> Result<Duration, Error> {
        let mut best = Duration::MAX;
        for _ in 0..rounds {
            best = best.min(f()?);
        }
        Ok(best)
    }

    fn gbps(bytes: u64, d: Duration) -> f64 {
        bytes as f64 / d.as_secs_f64() / 1e9
    }

    fn driver(e: impl std::fmt::Display) -> Error {
        Error::Cuda {
            operation: "bench",
            message: e.to_string(),
        }
    }

    /// One pinned host buffer copied to the device in `pieces` copies of `piece` bytes.
    fn raw_copy(gpu: &Device, piece: usize, pieces: usize) -> Result<Duration, Error> {
        let ctx = gpu.context();
        let stream = gpu.stream();
        // SAFETY: the pinned buffer is written below before the copies read it.
        let mut host =
            unsafe { ctx.alloc_pinned_with_flags::<u8>(piece * pieces, 0) }.map_err(driver)?;
        host.as_mut_slice().map_err(driver)?.fill(1);
        let mut device: CudaSlice<u8> = stream.alloc_zeros(piece * pieces).map_err(driver)?;
        stream.synchronize().map_err(driver)?;
        let t = Instant::now();
        for k in 0..pieces {
            let src = host.as_slice().map_err(driver)?;
            let mut dst = device.slice_mut(k * piece..(k + 1) * piece);
            stream
                .memcpy_htod(&src[k * piece..(k + 1) * piece], &mut dst)
                .map_err(driver)?;
        }
        stream.synchronize().map_err(driver)?;
        Ok(t.elapsed())
    }

    pub fn run() -> Result<(), Error> {
        let gpu = match Device::open(0) {
            Ok(d) => d,
            Err(Error::CudaUnavailable { reason }) => {
                println!("skipped: {reason}");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let objects = env("NEUROSTORE_CUDA_BENCH_OBJECTS", 32 << 20);
        let rounds = env("NEUROSTORE_CUDA_BENCH_ROUNDS", 5).max(1);
        let t = Instant::now();
        let mut table: Table<Obj> = Table::new();
        let handles: Vec<Handle<Obj>> = table.insert_batch((0..objects).map(|i| Obj {
            id: i as u64,
            ..Obj::default()
        }));
        println!(
            "cuda: {} on {}, {objects} objects of 32 B in {} chunks, built in {:.1} s",
            gpu.name(),
            gpu.ordinal(),
            table.stats().chunks,
            t.elapsed().as_secs_f64()
        );
        let object_bytes = (objects * 32) as u64;

        let mut full_bytes = 0;
        let full = best(rounds, || {
            let t = Instant::now();
            let mirror = DeviceMirror::new(&table, &gpu)?;
            let d = t.elapsed();
            full_bytes = mirror.device_bytes();
            Ok(d)
        })?;
        let raw_full = best(rounds, || raw_copy(&gpu, objects * 32, 1))?;
        println!(
            "  full upload      {:>8.1} ms  {:>6.2} GB/s (objects + slot table, {} MB on the device)  \
             raw pinned copy {:>6.2} GB/s  ratio {:.0} %",
            full.as_secs_f64() * 1e3,
            gbps(object_bytes, full),
            full_bytes >> 20,
            gbps(object_bytes, raw_full),
            100.0 * raw_full.as_secs_f64() / full.as_secs_f64()
        );

        let mut mirror = DeviceMirror::new(&table, &gpu)?;
        let per_chunk = objects.div_ceil(table.stats().chunks.max(1));
        let mut report = None;
        let incremental = best(rounds, || {
            for h in handles.iter().step_by(per_chunk * 100) {
                table.get_mut(*h).expect("live").v += 1.0;
            }
            let r = mirror.sync(&table)?;
            let d = r.duration;
            report = Some(r);
            Ok(d)
        })?;
        let r = report.expect("at least one round");
        let chunk_bytes = per_chunk * 32;
        let raw_incremental = best(rounds, || raw_copy(&gpu, chunk_bytes, r.chunks as usize))?;
        println!(
            "  incremental 1 %  {:>8.3} ms  {:>6.2} GB/s ({} chunks, {} copies)  \
             raw pinned copies {:>6.2} GB/s  ratio {:.0} %",
            incremental.as_secs_f64() * 1e3,
            gbps(r.bytes_up, incremental),
            r.chunks,
            r.copies,
            gbps(r.bytes_up, raw_incremental),
            100.0 * raw_incremental.as_secs_f64() / incremental.as_secs_f64()
        );
        let pulled = mirror.pull(&mut table)?;
        println!(
            "  pull (download)  {:>8.1} ms  {:>6.2} GB/s",
            pulled.duration.as_secs_f64() * 1e3,
            gbps(pulled.bytes_down, pulled.duration)
        );
        drop(mirror);
        drop(table);
        step(&gpu)
    }

    /// A random recurrent network of `n` neurons with `k` synapses each (seeded).
    fn network(n: usize, k: usize) -> Result<NeuralGraph, Error> {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut graph = NeuralGraph::new();
        let ns = graph.add_neurons(n, &NeuronParams::default())?;
        for &id in &ns {
            let cell = graph.neuron_mut(id).expect("live");
            cell.v_m = -70.0 + (next() % 140) as f32 / 10.0;
            cell.i_e = 360.0 + (next() % 60) as f32;
        }
        graph.reserve_synapse_table(n * k)?;
        for &pre in &ns {
            for _ in 0..k {
                let post = ns[(next() % n as u64) as usize];
                let w = if next() % 5 == 0 { -160.0 } else { 12.0 };
                let d = (1 + next() % 30) as f32 / 10.0;
                graph.connect(pre, post, w, d)?;
            }
        }
        graph.optimize_layout()?;
        Ok(graph)
    }

    fn step(gpu: &Device) -> Result<(), Error> {
        const NEURONS: usize = 20_000;
        const PER_NEURON: usize = 500;
        const WARM: usize = 100;
        const STEPS: usize = 500;
        let t = Instant::now();
        let mut cpu = network(NEURONS, PER_NEURON)?;
        let mut on_gpu = network(NEURONS, PER_NEURON)?;
        let built = t.elapsed();
        let mut net = GpuNetwork::new(&mut on_gpu, gpu, 0.1)?;
        let (mut cpu_time, mut gpu_time, mut spikes) = (Duration::ZERO, Duration::ZERO, 0);
        for k in 0..WARM + STEPS {
            let t = Instant::now();
            let expected = cpu.step(0.1)?.to_vec();
            let c = t.elapsed();
            let t = Instant::now();
            let got = net.step()?;
            let g = t.elapsed();
            if got != &expected[..] {
                return Err(Error::Cuda {
                    operation: "bench",
                    message: format!("the GPU step's spikes differ from the CPU's in step {k}"),
                });
            }
            if k >= WARM {
                cpu_time += c;
                gpu_time += g;
                spikes += expected.len();
            }
        }
        let per = |d: Duration| d.as_secs_f64() * 1e3 / STEPS as f64;
        println!(
            "  neural step      {NEURONS} neurons x {PER_NEURON} synapses (built in {:.1} s), \
             {spikes} spikes in {STEPS} steps, same spikes on both",
            built.as_secs_f64()
        );
        println!(
            "    GPU step {:>8.3} ms    CPU step ({} threads) {:>8.3} ms    CPU / GPU {:.1}x",
            per(gpu_time),
            rayon::current_num_threads(),
            per(cpu_time),
            cpu_time.as_secs_f64() / gpu_time.as_secs_f64()
        );
        Ok(())
    }
}

fn main() {
    // `cargo test --benches` runs this with `--test`; there is nothing to check quickly.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    #[cfg(feature = "cuda")]
    if let Err(e) = bench::run() {
        eprintln!("cuda bench failed: {e}");
        std::process::exit(1);
    }
    #[cfg(not(feature = "cuda"))]
    println!("skipped: built without the `cuda` feature");
}
