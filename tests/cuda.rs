//! Device mirrors on a real GPU. Without a CUDA driver (or without a device) every GPU
//! test prints `skipped: <reason>` and passes; one test checks that opening a device then
//! is `Error::CudaUnavailable`, not a panic. The sync logic itself is tested against
//! host memory in the crate's unit tests (`cuda::mirror::tests`), everywhere.
#![cfg(feature = "cuda")]

use bytemuck::{Pod, Zeroable};
use neurostore::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use neurostore::cuda::{
    Device, DeviceMemory, DeviceMirror, DevicePoolConfig, DevicePoolRegistry, resolve_place,
};
use neurostore::table::{Table, default_pool};
use neurostore::{Error, Handle, PoolConfig, PoolRegistry};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
struct Particle {
    id: u64,
    x: f32,
    y: f32,
}

/// The GPU, or `None` after printing why the test is skipped.
fn gpu() -> Option<Device> {
    match Device::open(0) {
        Ok(d) => Some(d),
        Err(Error::CudaUnavailable { reason }) => {
            println!("skipped: {reason}");
            None
        }
        Err(e) => panic!("opening device 0 failed on a machine with CUDA: {e}"),
    }
}

#[test]
fn without_a_driver_opening_a_device_is_cuda_unavailable() {
    match neurostore::cuda::probe() {
        Err(Error::CudaUnavailable { reason }) => {
            assert!(!reason.is_empty());
            match Device::open(0) {
                Err(Error::CudaUnavailable { reason: again }) => assert_eq!(again, reason),
                other => panic!("expected CudaUnavailable, got {other:?}"),
            }
            assert!(matches!(
                Device::count(),
                Err(Error::CudaUnavailable { .. })
            ));
        }
        Err(other) => panic!("probe returned {other:?}"),
        Ok(()) => println!("skipped: CUDA is present here; checked by the GPU tests"),
    }
    // Either way an ordinal no machine has is refused without a panic.
    assert!(matches!(
        Device::open(1 << 20),
        Err(Error::CudaUnavailable { .. })
    ));
}

#[test]
fn a_bad_pool_config_is_refused_before_any_driver_call() {
    let config = DevicePoolConfig {
        arena_bytes: 1000,
        ..DevicePoolConfig::default()
    };
    assert!(matches!(
        Device::open_with(0, config),
        Err(Error::InvalidArgument {
            name: "arena_bytes",
            ..
        })
    ));
}

/// A table of particles in small chunks (many chunks), mutated at random: inserts,
/// removals, edits, a defragmentation.
fn churned_table(rng: &mut StdRng) -> (Table<Particle>, Vec<Handle<Particle>>) {
    let mut t: Table<Particle> = Table::with_pool_and_chunk_bytes(default_pool(), 4096);
    let mut issued: Vec<Handle<Particle>> = (0..20_000)
        .map(|i| {
            t.insert(Particle {
                id: i,
                x: i as f32,
                y: 0.0,
            })
        })
        .collect();
    for _ in 0..8000 {
        let h = issued[rng.random_range(0..issued.len())];
        match rng.random_range(0..3) {
            0 => {
                t.remove(h);
            }
            1 => {
                if let Some(p) = t.get_mut(h) {
                    p.y += 1.0;
                }
            }
            _ => issued.push(t.insert(Particle {
                id: rng.random(),
                x: -1.0,
                y: 2.0,
            })),
        }
    }
    (t, issued)
}

fn assert_device_equals_host(
    mirror: &neurostore::cuda::DeviceMirror<Particle>,
    t: &Table<Particle>,
    issued: &[Handle<Particle>],
) {
    for h in issued {
        assert_eq!(
            mirror.read_object(*h).unwrap(),
            t.get(*h).copied(),
            "{h:?} on the device"
        );
    }
}

#[test]
fn after_random_mutations_and_a_defragmentation_sync_makes_the_device_equal_the_host() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(7);
    let (mut t, issued) = churned_table(&mut rng);
    let mut mirror = DeviceMirror::new(&t, &gpu).unwrap();
    assert_device_equals_host(&mirror, &t, &issued);
    t.defragment();
    let report = mirror.sync(&t).unwrap();
    assert!(report.slot_bytes > 0, "moves change the slot table");
    assert_device_equals_host(&mirror, &t, &issued);
    let image = mirror.read_slots().unwrap();
    for h in &issued {
        assert_eq!(resolve_place(&image, h.to_bits()).is_some(), t.contains(*h));
    }
}

#[test]
fn an_incremental_sync_uploads_exactly_the_dirty_chunks() {
    let Some(gpu) = gpu() else { return };
    let mut t: Table<Particle> = Table::with_pool_and_chunk_bytes(default_pool(), 4096);
    let hs: Vec<Handle<Particle>> = (0..25_600)
        .map(|i| {
            t.insert(Particle {
                id: i,
                x: 0.0,
                y: 0.0,
            })
        })
        .collect(); // 256 objects per chunk: 100 chunks
    let mut mirror = DeviceMirror::new(&t, &gpu).unwrap();
    assert_eq!(mirror.sync(&t).unwrap().bytes_up, 0);
    // Chunks 10, 11, 12 (one copy) and 50 (another).
    for i in [2600, 2900, 3100, 12_800] {
        t.get_mut(hs[i]).unwrap().x = 1.0;
    }
    let r = mirror.sync(&t).unwrap();
    assert_eq!((r.chunks, r.copies, r.slot_bytes), (4, 2, 0));
    assert_eq!(r.bytes_up, 4 * 4096);
    assert_device_equals_host(&mirror, &t, &hs);
}

const RESOLVE: &str = r#"
extern "C" __global__ void resolve_many(ns_table t, const unsigned long long* handles,
                                        unsigned int* places, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int place;
    places[i] = ns_resolve_place(t, handles[i], &place) ? place : 0xffffffffu;
    Particle_like* p = (Particle_like*)ns_resolve(t, handles[i]);
    if (p) p->y += 1.0f;
}
"#;

#[test]
fn device_side_resolution_agrees_with_the_host() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(11);
    let (mut t, mut issued) = churned_table(&mut rng);
    issued.extend([
        Handle::null(),
        Handle::from_bits(0),
        Handle::from_bits(u64::MAX),
    ]);
    let mut mirror = DeviceMirror::new(&t, &gpu).unwrap();
    let source =
        format!("struct Particle_like {{ unsigned long long id; float x; float y; }};\n{RESOLVE}");
    let module = gpu.compile("resolve", &source).unwrap();
    let f = module.load_function("resolve_many").unwrap();
    let stream = gpu.stream();
    let bits: Vec<u64> = issued.iter().map(|h| h.to_bits()).collect();
    let handles = stream.clone_htod(&bits).unwrap();
    let mut places = stream.alloc_zeros::<u32>(bits.len()).unwrap();
    let view = mirror.view();
    let n = bits.len() as u32;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&view).arg(&handles).arg(&mut places).arg(&n);
    // SAFETY: the kernel's parameters are (ns_table, const u64*, u32*, u32), as pushed;
    // it writes `places[..n]` and the objects the mirror's view names.
    unsafe { launch.launch(LaunchConfig::for_num_elems(n)) }.unwrap();
    let places = stream.clone_dtoh(&places).unwrap();
    let before: Vec<Option<Particle>> = issued.iter().map(|h| t.get(*h).copied()).collect();
    mirror.pull(&mut t).unwrap();
    for (k, h) in issued.iter().enumerate() {
        let host = t.get(*h).copied();
        match before[k] {
            Some(p) => {
                assert_ne!(places[k], u32::MAX, "{h:?} resolves on the host");
                assert_eq!(host.unwrap().y, p.y + 1.0, "the kernel wrote {h:?}");
            }
            None => assert_eq!(places[k], u32::MAX, "{h:?} is stale on the host"),
        }
    }
}

/// A recurrent network of `n` LIF neurons, each sending `k` synapses to random targets
/// (a fifth inhibitory), with weights of many significant bits and delays of 0.1 to 3 ms;
/// the same network for the same seed.
fn random_network(seed: u64, n: usize, k: usize) -> neurostore::NeuralGraph {
    use neurostore::neural::NeuronParams;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut graph = neurostore::NeuralGraph::new();
    let ns = graph.add_neurons(n, &NeuronParams::default()).unwrap();
    for &id in &ns {
        let cell = graph.neuron_mut(id).unwrap();
        cell.v_m = rng.random_range(-70.0..-56.0);
        cell.i_e = rng.random_range(360.0..420.0);
    }
    for &pre in &ns {
        for _ in 0..k {
            let post = ns[rng.random_range(0..n)];
            let w = if rng.random_range(0..5) == 0 {
                rng.random_range(-190.0..-150.0)
            } else {
                rng.random_range(30.0..60.0)
            };
            let d = rng.random_range(1..=30) as f32 / 10.0;
            graph.connect(pre, post, w, d).unwrap();
        }
    }
    graph
}

#[test]
fn the_gpu_step_gives_the_cpu_steps_spikes_and_potentials() {
    let Some(gpu) = gpu() else { return };
    let mut cpu = random_network(21, 10_000, 100);
    let mut on_gpu = random_network(21, 10_000, 100);
    let mut net = neurostore::cuda::GpuNetwork::new(&mut on_gpu, &gpu, 0.1).unwrap();
    let mut spikes = 0;
    for step in 0..1000 {
        let expected = cpu.step(0.1).unwrap().to_vec();
        let got = net.step().unwrap().to_vec();
        assert_eq!(got, expected, "step {step}");
        spikes += got.len();
    }
    assert!(spikes > 1000, "the network is active ({spikes} spikes)");
    net.pull_neurons(&mut on_gpu).unwrap();
    for (h, n) in cpu.neurons().iter() {
        let g = on_gpu.neuron(h).unwrap();
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0);
        assert!(close(n.v_m, g.v_m), "{h:?}: {} vs {}", n.v_m, g.v_m);
        assert!(
            close(n.i_syn_ex, g.i_syn_ex) && close(n.i_syn_in, g.i_syn_in),
            "{h:?}"
        );
        assert_eq!(n.last_spike_step, g.last_spike_step, "{h:?}");
        // The device sums in the CPU's order without fused multiply-adds: bit for bit.
        assert_eq!(bytemuck::bytes_of(n), bytemuck::bytes_of(g), "{h:?}");
    }
}

#[test]
fn the_device_pool_round_trips_bytes_and_counts_its_blocks() {
    let Some(gpu) = gpu() else { return };
    let pool = gpu.pool();
    assert_eq!(pool.ordinal(), gpu.ordinal());
    let before = pool.stats();
    let data: Vec<u32> = (0..100_000).collect();
    let small = pool.allocate(1000).unwrap();
    let buffer = pool.allocate(400_000).unwrap();
    assert_eq!(buffer.address() % 256, 0);
    pool.upload(&buffer, 0, &data).unwrap();
    let mut back = vec![0u32; data.len()];
    pool.download(&buffer, 0, &mut back).unwrap();
    assert_eq!(back, data);
    // Out of range: refused, nothing copied.
    assert!(matches!(
        pool.upload(&buffer, 399_000, &data[..1000]),
        Err(Error::InvalidArgument { .. })
    ));
    let during = pool.stats();
    assert_eq!(during.allocations, before.allocations + 2);
    assert!(during.in_use_bytes >= before.in_use_bytes + 401_000);
    drop((small, buffer));
    assert_eq!(pool.stats().in_use_bytes, before.in_use_bytes);
}

#[test]
fn a_managed_pool_is_read_and_written_in_place_by_the_host() {
    let config = DevicePoolConfig {
        memory: DeviceMemory::Managed,
        arena_bytes: 16 << 20,
        ..DevicePoolConfig::default()
    };
    let device = match Device::open_with(0, config) {
        Ok(d) => d,
        Err(Error::CudaUnavailable { reason }) => return println!("skipped: {reason}"),
        Err(e) => panic!("opening device 0 with a managed pool failed: {e}"),
    };
    let pool = device.pool();
    assert_eq!(pool.memory(), DeviceMemory::Managed);
    let data: Vec<u32> = (0..100_000).collect();
    let mut buffer = pool.allocate(400_000).unwrap();
    pool.upload(&buffer, 0, &data).unwrap();
    let host = buffer.host_bytes().unwrap();
    assert_eq!(host.len(), 400_000);
    assert_eq!(host[..400_000], *bytemuck::cast_slice::<u32, u8>(&data));
    host[..4].copy_from_slice(&7u32.to_ne_bytes());
    let mut back = vec![0u32; 4];
    pool.download(&buffer, 0, &mut back).unwrap();
    assert_eq!(back, [7, 1, 2, 3]);
    let stats = pool.stats();
    assert_eq!(stats.allocations, 1);
    assert!(stats.reserved_bytes >= 16 << 20);
    // A buffer of device memory is not used in place.
    let mut plain = gpu()
        .expect("the device opened above")
        .pool()
        .allocate(64)
        .unwrap();
    assert!(matches!(
        plain.host_bytes(),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn device_pools_are_registered_by_name_beside_host_pools() {
    let registry = PoolRegistry::new();
    registry.create("host", PoolConfig::default()).unwrap();
    let made = match registry.create_gpu("weights", 0, DevicePoolConfig::default()) {
        Ok(p) => p,
        Err(Error::CudaUnavailable { reason }) => {
            assert_eq!(registry.names(), ["host"]);
            return println!("skipped: {reason}");
        }
        Err(e) => panic!("creating a device pool failed on a machine with CUDA: {e}"),
    };
    assert_eq!(registry.names(), ["host", "weights"]);
    let found = registry.get_gpu("weights").unwrap();
    let buffer = found.allocate(1000).unwrap();
    assert_eq!(made.stats().allocations, 1, "clones share the pool");
    assert!(matches!(
        registry.create_gpu("weights", 0, DevicePoolConfig::default()),
        Err(Error::PoolExists { .. })
    ));
    assert!(registry.get("weights").is_none(), "not a host pool");
    drop(buffer);
    assert!(registry.remove_gpu("weights").is_some());
    assert_eq!(registry.names(), ["host"]);
}

#[test]
fn the_device_types_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Device>();
    send_sync::<neurostore::cuda::DevicePool>();
    send_sync::<neurostore::cuda::DeviceBuffer>();
    send_sync::<neurostore::cuda::DeviceMirror<Particle>>();
    send_sync::<neurostore::cuda::GpuNetwork>();
}
