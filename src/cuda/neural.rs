//! The neural step on the GPU: [`NeuralGraph::step`]'s leaky integrate-and-fire update
//! and spike propagation as one kernel over mirrored `Neuron` and `Synapse` tables.
//!
//! The CPU step queues each synaptic event for the step it arrives in and adds the events
//! into each neuron's input in the order they were sent; summing in float, the order of
//! the additions into each input cell decides the last bits of the result. A
//! GPU that pushed with atomic additions would sum in a random order, and after a few
//! hundred steps of a recurrent network a neuron near threshold would fire one step
//! earlier or later. So the kernel *pulls*: each neuron (one thread, its column being its
//! handle's slot index) walks its incoming synapses in the order in which the CPU adds
//! their spikes into its cell — the spike's step first (the longest delay first), then
//! the sending neuron's index, then the synapse's place in the sender's walk — and adds
//! the weight of each whose sender fired `delay` steps ago, found in a bitmap of the
//! last `rows` steps' spikes. Input that was already in flight when the device took over
//! starts each sum, as it was the first added on the CPU. Then the neuron advances
//! exactly as `lif::advance` does, with every multiply and add rounded on its own (no
//! fused multiply-add), and a warp vote writes the step's spike bits.
//!
//! [`StepPlan`] builds the kernel's arrays on the host; its twin in this module's tests
//! runs the same pull algorithm on the CPU and is checked bit for bit against
//! `NeuralGraph::step`, so the kernel only has to transliterate it.

use bytemuck::{Pod, Zeroable};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use super::device::Device;
use super::device_pool::DeviceBuffer;
use super::mirror::{DeviceMirror, PullReport};
use crate::error::Error;
use crate::neural::graph::delay_steps;
use crate::neural::lif::Propagators;
use crate::neural::{NeuralGraph, Neuron, NeuronId, Synapse};

/// The arrays of the device step, built from a graph for steps of `dt`.
pub(crate) struct StepPlan {
    /// Neuron columns: the neuron table's slot count (column 0 is the sentinel).
    pub(crate) columns: usize,
    /// Per column: the handle of its neuron (null for a vacant column).
    pub(crate) column_handles: Vec<NeuronId>,
    /// Per column: the step constants of its neuron (the kernel's `ns_props`).
    pub(crate) props: Vec<Propagators>,
    /// Column `c`'s incoming synapses are entries `in_offsets[c] .. in_offsets[c + 1]`.
    pub(crate) in_offsets: Vec<u32>,
    /// Per entry, in summing order: the synapse's handle bits, its sender's column and
    /// its delay in steps.
    pub(crate) in_synapse: Vec<u64>,
    pub(crate) in_pre: Vec<u32>,
    pub(crate) in_delay: Vec<u32>,
    /// Steps of spike history kept: at least the longest delay plus one.
    pub(crate) rows: usize,
    /// `u32` words per history row: `columns / 32`, rounded up.
    pub(crate) words: usize,
    /// Input in flight at the start: row `k` for step `start + k`, `columns` a row.
    pub(crate) pending_ex: Vec<f32>,
    pub(crate) pending_in: Vec<f32>,
    /// The graph's step when the plan was made.
    pub(crate) start: u64,
}

impl StepPlan {
    /// The plan of `graph` for steps of `dt` (shaping the graph's spike ring for `dt`,
    /// as its own step would).
    pub(crate) fn build(graph: &mut NeuralGraph, dt: f64) -> Result<StepPlan, Error> {
        let columns = graph.neurons().slot_count();
        let too_many = || {
            Error::invalid_argument(
                "graph",
                "the device step handles at most 2^32 - 1 synapses and neurons",
            )
        };
        u32::try_from(columns).map_err(|_| too_many())?;
        let pending = graph.input_in_flight(dt, columns)?;
        let mut column_handles = vec![NeuronId::null(); columns];
        let mut props = vec![Propagators::zeroed(); columns];
        for (h, n) in graph.neurons().iter() {
            column_handles[h.index() as usize] = h;
            props[h.index() as usize] = Propagators::new(n, dt);
        }
        // (post column, delay, pre column, rank in the sender's walk, synapse bits)
        let mut entries: Vec<(u32, u32, u32, u64, u64)> = Vec::with_capacity(graph.synapse_count());
        for (h, s, rank) in graph.walk_order() {
            let delay = delay_steps(s.delay, dt);
            let delay =
                u32::try_from(delay.min(pending.rows as u64 - 1)).map_err(|_| too_many())?;
            entries.push((s.post_index(), delay, s.pre_index(), rank, h.to_bits()));
        }
        u32::try_from(entries.len()).map_err(|_| too_many())?;
        // Per post: the spike's step ascending (delay descending), then the sender's
        // index, then its walk.
        entries.sort_unstable_by(|a, b| {
            (a.0, std::cmp::Reverse(a.1), a.2, a.3).cmp(&(b.0, std::cmp::Reverse(b.1), b.2, b.3))
        });
        let mut in_offsets = vec![0u32; columns + 1];
        for e in &entries {
            in_offsets[e.0 as usize + 1] += 1;
        }
        for c in 0..columns {
            in_offsets[c + 1] += in_offsets[c];
        }
        Ok(StepPlan {
            columns,
            column_handles,
            props,
            in_offsets,
            in_synapse: entries.iter().map(|e| e.4).collect(),
            in_pre: entries.iter().map(|e| e.2).collect(),
            in_delay: entries.iter().map(|e| e.1).collect(),
            rows: pending.rows,
            words: columns.div_ceil(32),
            pending_ex: pending.ex,
            pending_in: pending.inh,
            start: graph.current_step(),
        })
    }
}

/// The kernel: one thread per column; the header's `ns_table` and `ns_resolve` are
/// prepended by [`Device::compile`](super::Device::compile).
pub(crate) const STEP_KERNEL: &str = r#"
struct ns_neuron {
    float v_m, i_syn_ex, i_syn_in, i_e, v_th, v_reset, e_l, c_m, tau_m, tau_syn_ex,
        tau_syn_in, t_ref;
    ns_u32 refractory_steps, population;
    ns_u64 last_spike_step;
};
struct ns_synapse {
    ns_u32 pre, post;
    float weight, delay;
};
struct ns_props {
    float p22, p20, p21_ex, p21_in, p11_ex, p11_in;
    ns_u32 refractory_steps;
};

extern "C" __global__ void neurostore_lif_step(
    ns_table neurons, ns_table synapses, const ns_props* props, const ns_u32* in_offsets,
    const ns_u64* in_synapse, const ns_u32* in_pre, const ns_u32* in_delay,
    ns_u32* history, ns_u32 rows, ns_u32 words, const float* pending_ex,
    const float* pending_in, ns_u32 pending_rows, ns_u32 columns, ns_u64 now, ns_u64 start)
{
    ns_u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    bool fired = false;
    if (c > 0u && c < columns && (neurons.slots[c].version & 1u) == 1u) {
        ns_neuron* n = (ns_neuron*)(neurons.storage
            + (ns_u64)neurons.slots[c].place * neurons.elem_size);
        float ex = 0.0f, in = 0.0f;
        if (now - start < (ns_u64)pending_rows) {
            ns_u64 at = (now - start) * columns + c;
            ex = pending_ex[at];
            in = pending_in[at];
        }
        for (ns_u32 k = in_offsets[c]; k < in_offsets[c + 1]; ++k) {
            ns_u32 d = in_delay[k];
            if (now < start + d) continue;
            ns_u64 t = now - d;
            ns_u32 pre = in_pre[k];
            if ((history[(t % rows) * words + pre / 32u] >> (pre % 32u)) & 1u) {
                const ns_synapse* s = (const ns_synapse*)ns_resolve(synapses, in_synapse[k]);
                if (s) {
                    float w = s->weight;
                    if (w >= 0.0f) ex = __fadd_rn(ex, w); else in = __fadd_rn(in, w);
                }
            }
        }
        ns_props p = props[c];
        if (n->refractory_steps == 0u) {
            float y = __fsub_rn(n->v_m, n->e_l);
            y = __fadd_rn(__fadd_rn(__fadd_rn(__fmul_rn(y, p.p22), __fmul_rn(n->i_e, p.p20)),
                                    __fmul_rn(n->i_syn_ex, p.p21_ex)),
                          __fmul_rn(n->i_syn_in, p.p21_in));
            n->v_m = __fadd_rn(y, n->e_l);
        } else {
            n->refractory_steps -= 1u;
        }
        n->i_syn_ex = __fadd_rn(__fmul_rn(n->i_syn_ex, p.p11_ex), ex);
        n->i_syn_in = __fadd_rn(__fmul_rn(n->i_syn_in, p.p11_in), in);
        if (n->v_m >= n->v_th) {
            n->refractory_steps = p.refractory_steps;
            n->v_m = n->v_reset;
            n->last_spike_step = now;
            fired = true;
        }
    }
    // Every thread of the warp votes, so the whole 32-column word is written at once.
    ns_u32 bits = __ballot_sync(0xffffffffu, fired);
    if ((threadIdx.x & 31u) == 0u && c / 32u < words) {
        history[(now % rows) * words + c / 32u] = bits;
    }
}
"#;

/// [`NeuralGraph`]'s simulation step on a GPU: the neuron and synapse tables mirrored
/// on the device, and one kernel a step that gives the same spikes and the same neuron
/// state as [`NeuralGraph::step`], bit for bit (see the module documentation for how).
///
/// The network is taken as it is when this is made (neurons, synapses, their parameters
/// and the input already in flight); change the graph afterwards and make a new one.
/// [`pull_neurons`](Self::pull_neurons) writes the device's neuron state back into the
/// graph.
///
/// ```no_run
/// use neurostore::cuda::{Device, GpuNetwork};
/// use neurostore::neural::{NeuralGraph, NeuronParams};
///
/// let mut graph = NeuralGraph::new();
/// let ns = graph.add_neurons(1000, &NeuronParams { i_e: 400.0, ..Default::default() })?;
/// for w in ns.windows(2) {
///     graph.connect(w[0], w[1], 50.0, 1.5)?;
/// }
/// let gpu = Device::open(0)?;
/// let mut net = GpuNetwork::new(&mut graph, &gpu, 0.1)?;
/// let mut spikes = 0;
/// for _ in 0..1000 {
///     spikes += net.step()?.len();
/// }
/// net.pull_neurons(&mut graph)?;
/// # Ok::<(), neurostore::Error>(())
/// ```
pub struct GpuNetwork {
    device: Device,
    neurons: DeviceMirror<Neuron>,
    synapses: DeviceMirror<Synapse>,
    kernel: CudaFunction,
    buffers: StepBuffers,
    columns: u32,
    words: u32,
    rows: u32,
    column_handles: Vec<NeuronId>,
    start: u64,
    now: u64,
    row: Vec<u32>,
    spikes: Vec<NeuronId>,
}

/// The plan's arrays on the device.
struct StepBuffers {
    props: DeviceBuffer,
    in_offsets: DeviceBuffer,
    in_synapse: DeviceBuffer,
    in_pre: DeviceBuffer,
    in_delay: DeviceBuffer,
    history: DeviceBuffer,
    pending_ex: DeviceBuffer,
    pending_in: DeviceBuffer,
}

/// A device buffer holding `values` (at least 4 bytes, so that empty arrays get one).
fn upload<T: Pod>(device: &Device, values: &[T]) -> Result<DeviceBuffer, Error> {
    let bytes = std::mem::size_of_val(values) as u64;
    let buffer = device.pool().allocate(bytes.max(4))?;
    if bytes > 0 {
        device.pool().upload(&buffer, 0, values)?;
    }
    Ok(buffer)
}

impl std::fmt::Debug for GpuNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuNetwork")
            .field("device", &self.device)
            .field("columns", &self.columns)
            .field("step", &self.now)
            .finish_non_exhaustive()
    }
}

/// Threads per block of the step kernel (a multiple of the warp size).
const BLOCK: u32 = 256;

impl GpuNetwork {
    /// Mirrors `graph` on `device` for steps of `dt` milliseconds and compiles the step
    /// kernel. A bad `dt` is an error, as for `NeuralGraph::step`.
    pub fn new(graph: &mut NeuralGraph, device: &Device, dt: f64) -> Result<GpuNetwork, Error> {
        let plan = StepPlan::build(graph, dt)?;
        let module = device.compile("neurostore_lif_step", STEP_KERNEL)?;
        let kernel = module
            .load_function("neurostore_lif_step")
            .map_err(|e| super::device::driver_error("cuModuleGetFunction", e))?;
        let neurons = DeviceMirror::new(graph.neurons(), device)?;
        let synapses = DeviceMirror::new(graph.synapses(), device)?;
        let history = vec![0u32; plan.rows * plan.words];
        let buffers = StepBuffers {
            props: upload(device, &plan.props)?,
            in_offsets: upload(device, &plan.in_offsets)?,
            in_synapse: upload(device, &plan.in_synapse)?,
            in_pre: upload(device, &plan.in_pre)?,
            in_delay: upload(device, &plan.in_delay)?,
            history: upload(device, &history)?,
            pending_ex: upload(device, &plan.pending_ex)?,
            pending_in: upload(device, &plan.pending_in)?,
        };
        let narrow = |n: usize, what: &str| {
            u32::try_from(n).map_err(|_| {
                Error::invalid_argument("graph", format!("{what} {n} do not fit the device step"))
            })
        };
        Ok(GpuNetwork {
            device: device.clone(),
            neurons,
            synapses,
            kernel,
            buffers,
            columns: narrow(plan.columns, "columns")?,
            words: narrow(plan.words, "history words")?,
            rows: narrow(plan.rows, "history rows")?,
            column_handles: plan.column_handles,
            start: plan.start,
            now: plan.start,
            row: vec![0; plan.words],
            spikes: Vec::new(),
        })
    }

    /// Advances the network by one step on the device and returns the neurons that
    /// fired, in ascending slot-index order (as `NeuralGraph::step`).
    pub fn step(&mut self) -> Result<&[NeuronId], Error> {
        let b = &self.buffers;
        let (neurons, synapses) = (self.neurons.view(), self.synapses.view());
        let args = (
            b.props.address(),
            b.in_offsets.address(),
            b.in_synapse.address(),
            b.in_pre.address(),
            b.in_delay.address(),
            b.history.address(),
            b.pending_ex.address(),
            b.pending_in.address(),
        );
        let stream = self.device.stream();
        let mut launch = stream.launch_builder(&self.kernel);
        launch
            .arg(&neurons)
            .arg(&synapses)
            .arg(&args.0)
            .arg(&args.1)
            .arg(&args.2)
            .arg(&args.3)
            .arg(&args.4)
            .arg(&args.5)
            .arg(&self.rows)
            .arg(&self.words)
            .arg(&args.6)
            .arg(&args.7)
            .arg(&self.rows)
            .arg(&self.columns)
            .arg(&self.now)
            .arg(&self.start);
        let threads = self.words * 32;
        let config = LaunchConfig {
            grid_dim: (threads.div_ceil(BLOCK), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's parameters one for one (two
        // `ns_table`s, eight device pointers as `u64`, then the `u32` and `u64` scalars);
        // every pointer names a live buffer of this network or its mirrors, sized by the
        // plan the kernel indexes with; the kernel writes only the neuron storage and
        // the history row of `now`.
        unsafe { launch.launch(config) }
            .map_err(|e| super::device::driver_error("cuLaunchKernel", e))?;
        let row = self.now % u64::from(self.rows) * u64::from(self.words) * 4;
        self.device
            .pool()
            .download(&self.buffers.history, row, &mut self.row)?;
        self.spikes.clear();
        for (w, &bits) in self.row.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let c = w * 32 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                self.spikes.push(self.column_handles[c]);
            }
        }
        self.now += 1;
        Ok(&self.spikes)
    }

    /// The steps simulated, counted as the graph counts them (the graph's step when this
    /// was made, plus the steps on the device).
    pub fn current_step(&self) -> u64 {
        self.now
    }

    /// Writes the device's neuron state (potentials, currents, refractory counts, last
    /// spikes) into `graph`'s neurons. `graph` must be the graph this was made from, with
    /// its neurons unchanged since.
    pub fn pull_neurons(&mut self, graph: &mut NeuralGraph) -> Result<PullReport, Error> {
        self.neurons.pull(graph.neurons_table_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neural::NeuronParams;
    use crate::neural::lif::advance;
    use crate::{Handle, Table};

    /// The pull algorithm on the CPU, exactly as the kernel runs it.
    struct Twin {
        plan: StepPlan,
        /// The twin's own neuron state, and which of its handles holds each column.
        neurons: Table<Neuron>,
        by_column: Vec<Option<Handle<Neuron>>>,
        history: Vec<u32>,
        now: u64,
    }

    impl Twin {
        fn new(graph: &mut NeuralGraph, dt: f64) -> Twin {
            let plan = StepPlan::build(graph, dt).unwrap();
            let mut neurons = Table::new();
            let mut by_column = vec![None; plan.columns];
            for (h, n) in graph.neurons().iter() {
                by_column[h.index() as usize] = Some(neurons.insert(*n));
            }
            Twin {
                history: vec![0; plan.rows * plan.words],
                now: plan.start,
                plan,
                neurons,
                by_column,
            }
        }

        fn step(&mut self, synapses: &Table<Synapse>) -> Vec<NeuronId> {
            let Twin {
                plan: p,
                neurons,
                by_column,
                history,
                now,
            } = self;
            let (now, words, rows) = (*now, p.words, p.rows as u64);
            let mut bits = vec![0u32; words];
            let mut fired = Vec::new();
            for c in 1..p.columns {
                let Some(h) = by_column[c] else { continue };
                let (mut ex, mut inh) = (0.0f32, 0.0f32);
                if now - p.start < rows {
                    let at = (now - p.start) as usize * p.columns + c;
                    ex = p.pending_ex[at];
                    inh = p.pending_in[at];
                }
                for k in p.in_offsets[c] as usize..p.in_offsets[c + 1] as usize {
                    let d = u64::from(p.in_delay[k]);
                    if now < p.start + d {
                        continue;
                    }
                    let t = now - d;
                    let pre = p.in_pre[k] as usize;
                    let word = history[(t % rows) as usize * words + pre / 32];
                    if (word >> (pre % 32)) & 1 == 1
                        && let Some(s) = synapses.get(Handle::from_bits(p.in_synapse[k]))
                    {
                        if s.weight >= 0.0 {
                            ex += s.weight;
                        } else {
                            inh += s.weight;
                        }
                    }
                }
                let n = neurons.get_mut(h).unwrap();
                if advance(n, &p.props[c], ex, inh, now) {
                    bits[c / 32] |= 1 << (c % 32);
                    fired.push(p.column_handles[c]);
                }
            }
            let row = (now % rows) as usize * words;
            history[row..row + words].copy_from_slice(&bits);
            self.now += 1;
            fired
        }

        fn neuron(&self, column: usize) -> Neuron {
            *self.neurons.get(self.by_column[column].unwrap()).unwrap()
        }
    }

    /// A random recurrent network: excitatory and inhibitory neurons, multapses,
    /// delays from 0.1 to 3 ms, a few removed neurons (vacant columns).
    fn network(seed: u64, n: usize, per_neuron: usize) -> NeuralGraph {
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut graph = NeuralGraph::new();
        let params = NeuronParams {
            i_e: 360.0,
            ..NeuronParams::default()
        };
        let mut ns = graph.add_neurons(n, &params).unwrap();
        for (i, id) in ns.clone().into_iter().enumerate() {
            let v = -70.0 + (next() % 150) as f32 / 10.0;
            graph.neuron_mut(id).unwrap().v_m = v;
            graph.neuron_mut(id).unwrap().i_e = 370.0 + (next() % 50) as f32;
            if i % 7 == 0 {
                graph.neuron_mut(id).unwrap().tau_m = 20.0;
            }
        }
        for &pre in &ns {
            for _ in 0..per_neuron {
                let post = ns[(next() % n as u64) as usize];
                // Weights with many significant bits, so that the order of the
                // additions shows in the sums' last bits.
                let frac = (next() % 100_000) as f32 / 99_991.0;
                let w = if next() % 5 == 0 {
                    -170.0 - 20.0 * frac
                } else {
                    40.0 + 15.0 * frac
                };
                let d = 0.1 + (next() % 30) as f32 / 10.0;
                graph.connect(pre, post, w, d).unwrap();
            }
        }
        for _ in 0..n / 50 {
            let k = (next() % ns.len() as u64) as usize;
            graph.remove_neuron(ns.swap_remove(k));
        }
        graph
    }

    fn assert_twin_matches_cpu(graph: &mut NeuralGraph, steps: usize, dt: f64) {
        let mut twin = Twin::new(graph, dt);
        let mut spikes = 0;
        for step in 0..steps {
            let expected = graph.step(dt).unwrap().to_vec();
            let got = twin.step(graph.synapses());
            assert_eq!(got, expected, "step {step}");
            spikes += got.len();
        }
        assert!(spikes > 0, "the network is active");
        for (h, n) in graph.neurons().iter() {
            let t = twin.neuron(h.index() as usize);
            assert_eq!(
                bytemuck::bytes_of(&t),
                bytemuck::bytes_of(n),
                "{h:?} bit for bit"
            );
        }
    }

    #[test]
    fn the_pull_step_equals_the_cpu_step_bit_for_bit() {
        let mut graph = network(3, 600, 150);
        assert_twin_matches_cpu(&mut graph, 400, 0.1);
    }

    #[test]
    fn it_takes_over_input_in_flight_and_a_compacted_layout() {
        let mut graph = network(5, 400, 150);
        for _ in 0..37 {
            graph.step(0.1).unwrap();
        }
        let some: Vec<NeuronId> = graph.neurons().iter().map(|(h, _)| h).take(20).collect();
        graph.inject_spikes(&some, 0.1).unwrap();
        graph.optimize_layout().unwrap();
        assert_twin_matches_cpu(&mut graph, 300, 0.1);
    }

    #[test]
    fn multapses_are_summed_in_the_order_the_cpu_walks_them() {
        // A sends four synapses to B with one delay. A removal and a reinsertion make
        // the outgoing list's order differ from storage order; after `optimize_layout`
        // the CPU walks storage order, before it the list.
        for optimize in [false, true] {
            let mut graph = NeuralGraph::new();
            let a = graph
                .add_neuron(&NeuronParams {
                    i_e: 1000.0,
                    ..NeuronParams::default()
                })
                .unwrap();
            let b = graph
                .add_neuron(&NeuronParams {
                    v_th: 1e9, // B only integrates, so its current shows every sum
                    ..NeuronParams::default()
                })
                .unwrap();
            // Found by search: summed in list order (25.333, 13.004, 1.752, 13.309) and
            // in storage order (1.752, 13.004, 25.333, 13.309) these differ in f32.
            let weights = [0.5f32, 13.004, -7.5, 25.333, 1.752, 13.309];
            let ss: Vec<_> = weights[..4]
                .iter()
                .map(|&w| graph.connect(a, b, w, 1.0).unwrap())
                .collect();
            graph.disconnect(ss[0]);
            graph.connect(a, b, weights[4], 1.0).unwrap();
            graph.connect(a, b, weights[5], 1.0).unwrap();
            if optimize {
                graph.optimize_layout().unwrap();
            }
            assert_twin_matches_cpu(&mut graph, 200, 0.1);
        }
    }

    #[test]
    fn synapse_rows_are_summed_in_the_cpus_order() {
        let mut graph = network(9, 50, 8);
        let plan = StepPlan::build(&mut graph, 0.1).unwrap();
        assert_eq!(
            plan.in_offsets[plan.columns] as usize,
            graph.synapse_count()
        );
        for c in 0..plan.columns {
            let range = plan.in_offsets[c] as usize..plan.in_offsets[c + 1] as usize;
            for k in range.clone().skip(1) {
                let a = (std::cmp::Reverse(plan.in_delay[k - 1]), plan.in_pre[k - 1]);
                let b = (std::cmp::Reverse(plan.in_delay[k]), plan.in_pre[k]);
                assert!(a <= b, "column {c}");
            }
            for k in range {
                let s = graph
                    .synapses()
                    .get(Handle::from_bits(plan.in_synapse[k]))
                    .unwrap();
                assert_eq!(s.post_index() as usize, c);
            }
        }
        assert!(plan.rows as u32 > *plan.in_delay.iter().max().unwrap());
    }
}
