//! [`NeuralGraph`]: neurons and synapses in a [`Store`], their connectivity, and the
//! reference simulation step.
//!
//! Synapses are 16-byte records in one table ([`Synapse`]: the slot indices of both
//! neurons, weight, delay). The outgoing synapses of a neuron need no list: they lie in
//! runs of the table's storage that the graph keeps per neuron, because the graph only
//! ever appends synapses after the highest occupied place (a batch from
//! [`NeuralGraph::connect_many`] sorted by neuron, so one run per neuron) and only moves
//! them with an order-keeping compaction, after which it finds the runs again. A run may
//! hold holes (removed synapses) and, after removals brought the storage's top down
//! below it, another neuron's synapses: every walk checks that a synapse's presynaptic
//! neuron is the one walked.

use std::sync::Arc;

use rayon::prelude::*;

use super::lif::{PropagatorCache, advance};
use super::ring::{MAX_RING_SLOTS, Sender, SpikeRing};
use super::types::{Neuron, NeuronId, NeuronParams, Synapse, SynapseId, SynapseView};
use crate::Error;
use crate::gc::{Dangling, GcReport};
use crate::pool::HierarchicalPool;
use crate::pooled::AnyHandle;
use crate::store::{Store, StoreDefragReport};
use crate::table::Table;
use crate::table::defrag::{DefragPolicy, DefragReport};

mod checkpoint;

/// Below this many neurons a step updates them on the calling thread: rayon's fork and
/// join would cost more than the work.
const PARALLEL_NEURONS: usize = 4096;
/// Below this many synaptic events a step propagates them on the calling thread.
const PARALLEL_EVENTS: usize = 8192;

/// A neuron's outgoing synapses: `owner` is the neuron the entry belongs to (null when
/// the slot index holds no neuron), so an entry is never read for a later neuron that
/// reuses the slot index.
#[derive(Clone, Debug, Default)]
struct Outgoing {
    owner: NeuronId,
    /// Runs `(first place, places)` of the synapse table's storage that hold this
    /// neuron's synapses, in the order a spike walks them.
    runs: Vec<(u64, u32)>,
    /// Live outgoing synapses.
    live: u32,
}

impl Outgoing {
    /// Notes a synapse at `place`: the last run grows when `place` follows it.
    fn note(&mut self, place: u64, count: u32) {
        match self.runs.last_mut() {
            Some((start, len)) if *start + u64::from(*len) == place => *len += count,
            _ => self.runs.push((place, count)),
        }
        self.live += count;
    }
}

/// The table of `T` in a graph's store: the graph registers `Neuron` and `Synapse` when it
/// is made and never unregisters them.
fn table_of<T: Send + Sync + 'static>(store: &Store) -> &Table<T> {
    store
        .table()
        .expect("NeuralGraph registers its tables when it is made")
}

/// [`table_of`], mutably.
fn table_of_mut<T: Send + Sync + 'static>(store: &mut Store) -> &mut Table<T> {
    store
        .table_mut()
        .expect("NeuralGraph registers its tables when it is made")
}

/// A delay in milliseconds as whole steps of `dt`: rounded to nearest (halves away from
/// zero, as `f64::round`), at least one. Written without `round`, which is a call into
/// libm on the baseline x86-64 target: the step's walk inlines this, and a call there
/// would make it keep its state on the stack.
pub(crate) fn delay_steps(delay_ms: f32, dt: f64) -> u64 {
    let x = f64::from(delay_ms) / dt;
    if x.is_nan() || x < 0.5 {
        // Below half a step (or not a number): it rounds below one step.
        return 1;
    }
    if x >= 4_503_599_627_370_496.0 {
        // 2^52 and above every float is whole. Saturating for absurd ratios; the ring's
        // size check refuses those first.
        return x.min(u64::MAX as f64) as u64;
    }
    // `as` truncates; both conversions and the subtraction are exact below 2^52.
    let whole = x as i64;
    (whole + i64::from(x - whole as f64 >= 0.5)) as u64
}

/// [`delay_steps`] for one `dt`, many delays, exactly: a table of the smallest delay of
/// each whole number of steps, up to the longest delay it was made for. A delay's steps
/// are first estimated with one `f32` multiplication (off by at most one), then
/// corrected by comparing the delay with the thresholds around the estimate (as
/// integers: non-negative floats order as their bits do). Delays past the table,
/// negative or not numbers take [`delay_steps`] itself. The thresholds also give each
/// number of steps its range of delays, so that a walk over synapses sorted by delay
/// converts only where the steps change ([`Walk::send`]).
#[derive(Clone, Debug, Default)]
struct DelaySteps {
    dt: f64,
    per_ms: f32,
    /// `thresholds[k]`: the bits of the smallest non-negative `f32` delay of at least `k`
    /// steps (0 for `k <= 1`: every delay is at least one step).
    thresholds: Vec<u32>,
    /// The table serves delays whose bits are below this (`thresholds` of its length
    /// less two): negative ones, infinities and NaNs are above it.
    limit: u32,
}

/// The most steps a [`DelaySteps`] table covers (256 KiB of thresholds); longer delays
/// are converted one at a time.
const DELAY_TABLE_STEPS: u64 = 1 << 16;

impl DelaySteps {
    /// The conversion for steps of `dt`, tabled up to `longest_ms`.
    fn new(dt: f64, longest_ms: f32) -> Self {
        let per_ms = (1.0 / dt) as f32;
        // A `dt` whose inverse is no normal `f32` gets no table: every delay is converted
        // one at a time.
        let longest = if per_ms.is_normal() {
            delay_steps(longest_ms, dt).min(DELAY_TABLE_STEPS)
        } else {
            0
        };
        // Up to `longest + 1` steps served, and room for an estimate one above.
        let thresholds: Vec<u32> = (0..longest + 4)
            .map(|k| if k <= 1 { 0 } else { first_delay_of(k, dt) })
            .collect();
        let limit = if per_ms.is_normal() {
            thresholds[thresholds.len() - 2]
        } else {
            0
        };
        DelaySteps {
            dt,
            per_ms,
            thresholds,
            limit,
        }
    }

    /// Whether this is the conversion for `dt`, tabled up to `longest_ms` at least.
    fn covers(&self, dt: f64, longest_ms: f32) -> bool {
        self.dt == dt
            && (!self.per_ms.is_normal()
                || delay_steps(longest_ms, dt).min(DELAY_TABLE_STEPS) + 4
                    <= self.thresholds.len() as u64)
    }

    /// The table borrowed for a walk: its address and length then stay in registers
    /// while the walk writes memory.
    fn view(&self) -> DelayView<'_> {
        DelayView {
            thresholds: &self.thresholds,
            per_ms: self.per_ms,
            dt: self.dt,
            limit: self.limit,
        }
    }
}

/// A [`DelaySteps`] borrowed for a walk.
#[derive(Clone, Copy)]
struct DelayView<'a> {
    thresholds: &'a [u32],
    per_ms: f32,
    dt: f64,
    limit: u32,
}

impl DelayView<'_> {
    /// The steps of `delay_ms`: [`delay_steps`]`(delay_ms, dt)`.
    #[inline]
    fn of(self, delay_ms: f32) -> u64 {
        // 1.5 x 2^23: added to a `q` in [0, 2^22) it rounds `q` to a whole number, which
        // then fills the low bits of the sum's mantissa (no conversion instruction, no
        // saturation checks).
        const ROUNDER: f32 = 12_582_912.0;
        let bits = delay_ms.to_bits();
        if bits >= self.limit {
            return delay_steps_cold(delay_ms, self.dt);
        }
        // Below the limit the delay is non-negative and its steps at most the table's
        // length less three, so the estimate (within one of them) and the one above it
        // are in the table.
        let k = ((delay_ms * self.per_ms + ROUNDER).to_bits() & 0x3f_ffff) as usize;
        match self.thresholds.get(k..k + 2) {
            Some(&[at, above]) => (k - usize::from(bits < at) + usize::from(bits >= above)) as u64,
            _ => delay_steps_cold(delay_ms, self.dt),
        }
    }

    /// The delays (as bits) of exactly `steps` steps, as [`of`](Self::of) returned it;
    /// empty when the table does not reach that far.
    #[inline]
    fn range_of(self, steps: u64) -> std::ops::Range<u32> {
        let k = steps as usize;
        match self.thresholds.get(k..k.wrapping_add(2)) {
            Some(&[at, above]) if k >= 1 => at..above,
            _ => 0..0,
        }
    }
}

/// [`delay_steps`], kept out of the walk that inlines [`DelayView::of`].
#[cold]
#[inline(never)]
fn delay_steps_cold(delay_ms: f32, dt: f64) -> u64 {
    delay_steps(delay_ms, dt)
}

/// The bits of the smallest non-negative `f32` delay of at least `k` steps of `dt`
/// (`k >= 2`): a binary search over the bits of the finite non-negative floats, which
/// [`delay_steps`] maps to steps in the same order.
fn first_delay_of(k: u64, dt: f64) -> u32 {
    // delay_steps(0) = 1 < k; infinity's is at least k (saturated).
    let (mut below, mut at_least) = (0u32, f32::INFINITY.to_bits());
    while at_least - below > 1 {
        let mid = below + (at_least - below) / 2;
        if delay_steps(f32::from_bits(mid), dt) >= k {
            at_least = mid;
        } else {
            below = mid;
        }
    }
    at_least
}

/// A duration (`dt`, a delay) must be a finite number of milliseconds above zero.
fn check_duration(name: &'static str, ms: f64) -> Result<(), Error> {
    if ms.is_finite() && ms > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            name,
            format!("{ms} ms: must be a finite number of milliseconds above zero"),
        ))
    }
}

fn check_dt(dt: f64) -> Result<(), Error> {
    check_duration("dt", dt)
}

fn check_delay(delay: f32) -> Result<(), Error> {
    check_duration("delay", f64::from(delay))
}

fn check_weight(weight: f32) -> Result<(), Error> {
    if weight.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            "weight",
            format!("{weight} is not a finite number of picoamperes"),
        ))
    }
}

/// What one chunk of the synapse table holds, for [`NeuralGraph::find_runs`].
#[derive(Default)]
struct ChunkRuns {
    /// `(presynaptic slot index, first place, places)`: consecutive places whose
    /// synapses leave one neuron, in storage order.
    segments: Vec<(u32, u64, u32)>,
    /// What the chunk's synapses showed.
    seen: RunsFound,
}

/// What [`NeuralGraph::find_runs`] saw in the synapse table (or one chunk of it).
#[derive(Debug, Default)]
struct RunsFound {
    /// The longest delay (ms).
    longest_delay: f32,
    /// The first synapse naming a slot index that holds no neuron of the graph, and its
    /// place (never, in a graph that keeps its invariants).
    stray: Option<(u64, Synapse)>,
}

impl RunsFound {
    /// Takes in what a later part of the table showed.
    fn merge(&mut self, later: RunsFound) {
        self.longest_delay = self.longest_delay.max(later.longest_delay);
        if self.stray.is_none() {
            self.stray = later.stray;
        }
    }
}

/// One bit per neuron slot index.
struct NeuronSet(Vec<u64>);

impl NeuronSet {
    fn new(slots: usize) -> Self {
        NeuronSet(vec![0; slots.div_ceil(64)])
    }

    fn insert(&mut self, index: u32) {
        if let Some(w) = self.0.get_mut(index as usize / 64) {
            *w |= 1 << (index % 64);
        }
    }

    #[inline]
    fn contains(&self, index: u32) -> bool {
        self.0
            .get(index as usize / 64)
            .is_some_and(|w| w >> (index % 64) & 1 == 1)
    }
}

/// A network of [`Neuron`]s and [`Synapse`]s kept in a [`Store`], and a reference CPU
/// simulation step.
///
/// Every synapse is a [`SynapseId`]: it resolves in O(1), survives compaction and
/// snapshots of the store, and is shown with its neurons as handles
/// ([`synapse`](Self::synapse)). A neuron's outgoing synapses are found through runs of
/// the synapse table's storage (see the module documentation), so they take no memory of
/// their own: a synapse costs its 16-byte record and the table's per-object bookkeeping.
/// [`connect_many`](Self::connect_many) builds many synapses at once, already laid out
/// for propagation; [`remove_neurons`](Self::remove_neurons) removes many neurons and
/// every synapse that touches them in one pass. No synapse ever names a removed neuron.
///
/// [`step`](Self::step) advances every neuron by `dt` milliseconds with NEST's exact
/// `iaf_psc_exp` integration and propagates the spikes of the step through their synapses,
/// each arriving `round(delay / dt)` steps later (at least one). Results are deterministic:
/// they do not depend on the number of threads.
///
/// [`save`](Self::save) writes a checkpoint of everything a step reads, and
/// [`load`](Self::load) gives back a graph that goes on exactly as this one would.
///
/// A graph is `Send + Sync` (checked when the crate compiles): it can move to a worker
/// thread, and `&NeuralGraph` can be read from many.
///
/// ```
/// use neurostore::neural::{NeuralGraph, NeuronParams};
///
/// let mut graph = NeuralGraph::new();
/// let driven = NeuronParams { i_e: 600.0, ..NeuronParams::default() };
/// let a = graph.add_neuron(&driven)?;
/// let b = graph.add_neuron(&NeuronParams::default())?;
/// let s = graph.connect(a, b, 2000.0, 1.0)?;
/// assert_eq!(graph.outgoing(a), Some(vec![s]));
/// assert_eq!(graph.incoming(b), Some(vec![s]));
///
/// let mut fired = Vec::new();
/// for _ in 0..1000 {
///     fired.extend_from_slice(graph.step(0.1)?);
/// }
/// assert!(fired.contains(&a) && fired.contains(&b), "a drives b over threshold");
///
/// graph.remove_neuron(a);
/// assert!(graph.synapse(s).is_none());
/// assert_eq!(graph.incoming(b), Some(vec![]));
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Debug)]
pub struct NeuralGraph {
    store: Store,
    out: Vec<Outgoing>,
    ring: SpikeRing,
    /// The step length of the last `step`, which the ring's pending input is timed in.
    dt: Option<f64>,
    /// The longest delay of any synapse (ms), or at least of any live one: it may stay
    /// above the live maximum after removals until `max_delay_stale` has it recomputed.
    max_delay_ms: f32,
    /// Set when the synapse with the longest delay was removed or shortened.
    max_delay_stale: bool,
    step: u64,
    time_ms: f64,
    spikes: Vec<NeuronId>,
    /// When removals compact the synapse table on their own.
    defrag_policy: Option<DefragPolicy>,
    /// Synapses removed since the table's holes were last looked at.
    removed_since_check: usize,
    /// No run of any neuron reaches this place: new synapses go here or above, so that
    /// no run ever covers a place twice.
    runs_end: u64,
    /// When this graph is one rank's part of a distributed network: the neurons it
    /// updates. `None`: all of them.
    share: Option<RankShare>,
    /// Delays to steps for the last `dt` spikes were sent with.
    delays: DelaySteps,
}

/// The neurons one rank of a distributed network updates: those whose slot index is
/// `rank` modulo `ranks`. Every rank holds every neuron (so that a [`NeuronId`] names the
/// same neuron everywhere), but only the owner's copy steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RankShare {
    pub(crate) rank: u32,
    pub(crate) ranks: u32,
}

impl RankShare {
    /// Whether the neuron of slot index `index` is this rank's.
    #[inline]
    pub(crate) fn owns(&self, index: u32) -> bool {
        index % self.ranks == self.rank
    }
}

const _: () = {
    const fn send_and_sync<G: Send + Sync>() {}
    send_and_sync::<NeuralGraph>();
};

impl Default for NeuralGraph {
    fn default() -> Self {
        Self::new()
    }
}

impl NeuralGraph {
    /// An empty graph whose tables take memory from the process-wide default pool.
    pub fn new() -> Self {
        Self::over(Store::new())
    }

    /// An empty graph whose tables take memory from `pool`.
    pub fn with_pool(pool: Arc<HierarchicalPool>) -> Self {
        Self::over(Store::with_pool(pool))
    }

    /// A graph over `store`, which holds no tables or (a loaded checkpoint's) the neuron
    /// and synapse tables.
    fn over(mut store: Store) -> Self {
        // The built-in types' hints: neurons one per cache line.
        if store.table::<Neuron>().is_none() {
            store
                .register::<Neuron>()
                .expect("a store without a table of neurons can register one");
        }
        if store.table::<Synapse>().is_none() {
            store
                .register::<Synapse>()
                .expect("a store without a table of synapses can register one");
        }
        // The graph compacts its synapses itself, keeping their order.
        store.set_defrag_policy(None);
        NeuralGraph {
            store,
            out: Vec::new(),
            ring: SpikeRing::default(),
            dt: None,
            max_delay_ms: 0.0,
            max_delay_stale: false,
            step: 0,
            time_ms: 0.0,
            spikes: Vec::new(),
            defrag_policy: Some(DefragPolicy::default()),
            removed_since_check: 0,
            runs_end: 0,
            share: None,
            delays: DelaySteps::default(),
        }
    }

    /// The store that holds the neuron and synapse tables, for statistics and for the
    /// layers that walk every table.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The neuron table.
    pub fn neurons(&self) -> &Table<Neuron> {
        table_of(&self.store)
    }

    pub(crate) fn neurons_table_mut(&mut self) -> &mut Table<Neuron> {
        table_of_mut(&mut self.store)
    }

    /// The synapse table (records keep their neurons as slot indices; see
    /// [`synapse`](Self::synapse) for them as handles).
    pub fn synapses(&self) -> &Table<Synapse> {
        table_of(&self.store)
    }

    fn synapses_table_mut(&mut self) -> &mut Table<Synapse> {
        table_of_mut(&mut self.store)
    }

    /// Every neuron with its handle, mutably, to set state or parameters. (Neurons are
    /// added and removed through the graph, so that synapses follow.)
    pub fn neurons_mut(&mut self) -> impl Iterator<Item = (NeuronId, &mut Neuron)> + '_ {
        self.neurons_table_mut().iter_mut()
    }

    /// Live neurons.
    pub fn neuron_count(&self) -> usize {
        self.neurons().len()
    }

    /// Live synapses.
    pub fn synapse_count(&self) -> usize {
        self.synapses().len()
    }

    /// The neuron `n` names, if it is live.
    pub fn neuron(&self, n: NeuronId) -> Option<&Neuron> {
        self.neurons().get(n)
    }

    /// The neuron `n` names, mutably, if it is live.
    pub fn neuron_mut(&mut self, n: NeuronId) -> Option<&mut Neuron> {
        self.neurons_table_mut().get_mut(n)
    }

    /// The synapse `s` names, with its neurons as handles, if it is live.
    pub fn synapse(&self, s: SynapseId) -> Option<SynapseView> {
        let record = self.synapses().get(s)?;
        Some(self.view(record))
    }

    /// A record of this graph with its neurons as handles (they are live: the graph
    /// removes a neuron's synapses with it).
    fn view(&self, record: &Synapse) -> SynapseView {
        let handle = |index| {
            self.neurons()
                .live_handle(index)
                .expect("a synapse of the graph names live neurons")
        };
        SynapseView {
            pre: handle(record.pre_index()),
            post: handle(record.post_index()),
            weight: record.weight,
            delay: record.delay,
        }
    }

    fn outgoing_of(&self, n: NeuronId) -> Option<&Outgoing> {
        self.out
            .get(n.index() as usize)
            .filter(|o| o.owner == n && !n.is_null())
    }

    /// The synapses leaving `n`, in the order a spike of `n` walks them (in storage
    /// order after [`optimize_layout`](Self::optimize_layout)), or `None` when `n` is
    /// stale. The list is made by walking `n`'s runs of storage: O(out-degree).
    pub fn outgoing(&self, n: NeuronId) -> Option<Vec<SynapseId>> {
        let out = self.outgoing_of(n)?;
        let synapses = self.synapses();
        let mut ids = Vec::with_capacity(out.live as usize);
        for &(start, len) in &out.runs {
            for place in start..start + u64::from(len) {
                if synapses
                    .get_at_place(place)
                    .is_some_and(|s| s.pre_index() == n.index())
                {
                    ids.extend(synapses.handle_at_place(place));
                }
            }
        }
        Some(ids)
    }

    /// How many synapses leave `n`, or `None` when `n` is stale. O(1).
    pub fn out_degree(&self, n: NeuronId) -> Option<usize> {
        self.outgoing_of(n).map(|o| o.live as usize)
    }

    /// The synapses entering `n`, in storage order, or `None` when `n` is stale. The
    /// graph keeps no incoming lists: this walks the whole synapse table (in parallel),
    /// so call it for a few neurons, not for every one.
    pub fn incoming(&self, n: NeuronId) -> Option<Vec<SynapseId>> {
        self.outgoing_of(n)?;
        let synapses = self.synapses();
        Some(
            synapses
                .par_iter()
                .filter(|(_, s)| s.post_index() == n.index())
                .map(|(h, _)| h)
                .collect(),
        )
    }

    fn track(&mut self, n: NeuronId) {
        let i = n.index() as usize;
        if self.out.len() <= i {
            self.out.resize_with(i + 1, Outgoing::default);
        }
        self.out[i] = Outgoing {
            owner: n,
            ..Outgoing::default()
        };
    }

    /// Adds one neuron made from `params`; an invalid parameter is an
    /// [`Error::InvalidArgument`] naming it.
    pub fn add_neuron(&mut self, params: &NeuronParams) -> Result<NeuronId, Error> {
        params.validate()?;
        let n = self.neurons_table_mut().try_insert(Neuron::new(params))?;
        self.track(n);
        Ok(n)
    }

    /// Adds `count` neurons made from `params`, placed contiguously, and returns their
    /// handles in order.
    pub fn add_neurons(
        &mut self,
        count: usize,
        params: &NeuronParams,
    ) -> Result<Vec<NeuronId>, Error> {
        params.validate()?;
        let table = self.neurons_table_mut();
        table.try_reserve(count)?;
        let handles = table.try_insert_batch(std::iter::repeat_n(Neuron::new(params), count))?;
        for &n in &handles {
            self.track(n);
        }
        Ok(handles)
    }

    /// Makes room in the synapse table for `additional` more synapses: chunks from the
    /// pool and slots, so that a network whose size is known ahead takes its table's
    /// memory once instead of growing it. Memory that cannot be had is an
    /// [`Error::OutOfMemory`].
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let ns = graph.add_neurons(2, &NeuronParams::default())?;
    /// graph.reserve_synapse_table(1000)?;
    /// let before = graph.memory();
    /// for _ in 0..1000 {
    ///     graph.connect(ns[0], ns[1], 1.0, 1.0)?;
    /// }
    /// assert_eq!(graph.memory().object_bytes, before.object_bytes);
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn reserve_synapse_table(&mut self, additional: usize) -> Result<(), Error> {
        self.synapses_table_mut().try_reserve(additional)
    }

    /// Runs the store's garbage collector over the graph ([`Store::collect`]) and audits
    /// the synapses: every one must name live neurons, which the graph's invariants say
    /// always holds. A synapse that does not is reported as a dangling handle held by the
    /// synapse ([`GcReport::dangling_count`], [`GcReport::dangling`]). Neurons and
    /// synapses are manual objects, so nothing of the graph is freed. The audit reads the
    /// synapse table once, in parallel.
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let ns = graph.add_neurons(3, &NeuronParams::default())?;
    /// graph.connect(ns[0], ns[1], 10.0, 1.0)?;
    /// graph.connect(ns[1], ns[2], 10.0, 1.0)?;
    /// graph.remove_neuron(ns[2]);
    /// let report = graph.collect();
    /// assert_eq!((report.dangling_count, report.freed_total), (0, 0));
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn collect(&mut self) -> GcReport {
        let started = std::time::Instant::now();
        let mut report = self.store.collect();
        let neurons = self.neurons();
        let live = |index: u32| neurons.live_handle(index).is_some();
        let dangling: Vec<Dangling> = self
            .synapses()
            .par_iter()
            .flat_map_iter(|(h, s)| {
                [s.pre_index(), s.post_index()]
                    .into_iter()
                    .filter(|&i| !live(i))
                    .map(move |i| Dangling {
                        holder: Some(AnyHandle::new(h)),
                        target: AnyHandle::new(NeuronId::from_bits(u64::from(i))),
                    })
            })
            .collect();
        report.dangling_count += dangling.len();
        report.dangling.extend(dangling);
        report.duration = started.elapsed();
        report.paused = report.duration;
        report
    }

    /// The bytes the graph holds: its tables (objects, slots and per-chunk bookkeeping),
    /// its per-neuron runs of outgoing synapses and the synaptic input in flight.
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let ns = graph.add_neurons(2, &NeuronParams::default())?;
    /// graph.connect(ns[0], ns[1], 10.0, 1.0)?;
    /// let memory = graph.memory();
    /// assert!(memory.object_bytes >= 2 * 64 + 16);
    /// assert_eq!(memory.input_bytes, 0); // nothing sent yet
    /// graph.step(0.1)?;
    /// assert!(graph.memory().input_bytes > 0); // the step's input, per neuron
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn memory(&self) -> GraphMemory {
        let (neurons, synapses) = (self.neurons().stats(), self.synapses().stats());
        let runs: usize = self
            .out
            .iter()
            .map(|o| o.runs.capacity() * size_of::<(u64, u32)>())
            .sum();
        GraphMemory {
            object_bytes: neurons.bytes_reserved + synapses.bytes_reserved,
            metadata_bytes: neurons.metadata_bytes + synapses.metadata_bytes,
            adjacency_bytes: runs + self.out.capacity() * size_of::<Outgoing>(),
            input_bytes: self.ring.bytes(),
        }
    }

    /// Connects `pre` to `post` with `weight` (pA, finite; negative inhibits) and `delay`
    /// (ms, finite, above zero). Multapses and self-connections are allowed. A stale neuron
    /// is an [`Error::InvalidHandle`]; on any error nothing changes. For many synapses at
    /// once, [`connect_many`](Self::connect_many) is much faster. The synapse goes after
    /// every other: a network made one synapse at a time steps faster once
    /// [`optimize_layout`](Self::optimize_layout) has sorted each neuron's synapses by
    /// delay.
    pub fn connect(
        &mut self,
        pre: NeuronId,
        post: NeuronId,
        weight: f32,
        delay: f32,
    ) -> Result<SynapseId, Error> {
        self.outgoing_of(pre)
            .ok_or_else(|| Error::invalid_handle(pre))?;
        self.outgoing_of(post)
            .ok_or_else(|| Error::invalid_handle(post))?;
        check_weight(weight)?;
        check_delay(delay)?;
        let mut made = SynapseId::null();
        let runs_end = self.runs_end;
        let (place, _) = self.synapses_table_mut().try_extend_after_top(
            runs_end,
            [Synapse::new(pre, post, weight, delay)],
            |h| made = h,
        )?;
        self.out[pre.index() as usize].note(place, 1);
        self.runs_end = place + 1;
        self.max_delay_ms = self.max_delay_ms.max(delay);
        Ok(made)
    }

    /// Connects many pairs at once: synapse `k` goes from `pre[k]` to `post[k]` with
    /// `weight[k]` and `delay[k]` (checked as in [`connect`](Self::connect)). The
    /// synapses are laid out sorted by presynaptic neuron, then delay to within 1 % (a
    /// stable sort: synapses of one neuron and about one delay keep the order given),
    /// after the table's highest occupied place, so each neuron's new synapses are one run of storage that
    /// a spike walks without a lookup, finding the arrival step once per delay. Returns how many were made (`pre.len()`); their handles are what
    /// [`outgoing`](Self::outgoing) lists.
    ///
    /// Slices of different lengths, a stale neuron (an [`Error::InvalidHandle`] naming
    /// the first), a weight or delay out of range, or memory that cannot be had are
    /// errors, and then nothing changes. The checks and the sort run in parallel.
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let ns = graph.add_neurons(3, &NeuronParams::default())?;
    /// let made = graph.connect_many(
    ///     &[ns[2], ns[0], ns[0]],
    ///     &[ns[0], ns[2], ns[1]],
    ///     &[10.0, 20.0, -30.0],
    ///     &[1.0, 1.5, 0.5],
    /// )?;
    /// assert_eq!((made, graph.synapse_count()), (3, 3));
    /// let out: Vec<_> = graph.outgoing(ns[0]).unwrap().iter().map(|&s| graph.synapse(s).unwrap().post).collect();
    /// assert_eq!(out, vec![ns[1], ns[2]]); // sorted by delay (0.5 ms, 1.5 ms)
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn connect_many(
        &mut self,
        pre: &[NeuronId],
        post: &[NeuronId],
        weight: &[f32],
        delay: &[f32],
    ) -> Result<usize, Error> {
        self.check_batch(pre, post, weight, delay)?;
        let order = sorted_for_walks(pre, delay, self.out.len());
        let records = order.iter().map(|&k| {
            Synapse::new(
                pre[k as usize],
                post[k as usize],
                weight[k as usize],
                delay[k as usize],
            )
        });
        let runs_end = self.runs_end;
        let (first, made) =
            self.synapses_table_mut()
                .try_extend_after_top(runs_end, records, |_| ())?;
        self.runs_end = first + made as u64;
        // The batch's runs: one per presynaptic neuron, in `order`.
        let mut k = 0;
        while k < order.len() {
            let p = pre[order[k] as usize].index();
            let len = order[k..]
                .iter()
                .take_while(|&&j| pre[j as usize].index() == p)
                .count();
            self.out[p as usize].note(first + k as u64, len as u32);
            k += len;
        }
        let longest = delay.par_iter().copied().reduce(|| 0.0, f32::max);
        self.max_delay_ms = self.max_delay_ms.max(longest);
        Ok(made)
    }

    /// The checks of [`connect_many`](Self::connect_many), in parallel: the slices'
    /// lengths, then each synapse's neurons, weight and delay; the first offending
    /// synapse (lowest index) is the one reported.
    pub(crate) fn check_batch(
        &self,
        pre: &[NeuronId],
        post: &[NeuronId],
        weight: &[f32],
        delay: &[f32],
    ) -> Result<(), Error> {
        let n = pre.len();
        if post.len() != n || weight.len() != n || delay.len() != n {
            return Err(Error::invalid_argument(
                "connect_many",
                format!(
                    "pre, post, weight and delay hold {n}, {}, {} and {} values: they must \
                     be as long as each other",
                    post.len(),
                    weight.len(),
                    delay.len()
                ),
            ));
        }
        let bad = (0..pre.len()).into_par_iter().position_first(|k| {
            self.outgoing_of(pre[k]).is_none()
                || self.outgoing_of(post[k]).is_none()
                || check_weight(weight[k]).is_err()
                || check_delay(delay[k]).is_err()
        });
        let Some(k) = bad else {
            return Ok(());
        };
        for n in [pre[k], post[k]] {
            self.outgoing_of(n)
                .ok_or_else(|| Error::invalid_handle(n))?;
        }
        check_weight(weight[k])?;
        check_delay(delay[k])
    }

    /// Sets the weight of `s`. A stale synapse or a weight that is not finite is an error
    /// and changes nothing.
    pub fn set_weight(&mut self, s: SynapseId, weight: f32) -> Result<(), Error> {
        check_weight(weight)?;
        let syn = self
            .synapses_table_mut()
            .get_mut(s)
            .ok_or_else(|| Error::invalid_handle(s))?;
        syn.weight = weight;
        Ok(())
    }

    /// Sets the delay of `s` (ms, finite, above zero). Spikes already in flight keep
    /// their arrival step. A stale synapse or a bad delay is an error and changes nothing.
    pub fn set_delay(&mut self, s: SynapseId, delay: f32) -> Result<(), Error> {
        check_delay(delay)?;
        let syn = self
            .synapses_table_mut()
            .get_mut(s)
            .ok_or_else(|| Error::invalid_handle(s))?;
        let old = std::mem::replace(&mut syn.delay, delay);
        self.note_delay_gone(old);
        self.max_delay_ms = self.max_delay_ms.max(delay);
        Ok(())
    }

    /// Records that a synapse of `delay` left (or changed its delay): if it may have been
    /// the longest, the maximum is recomputed before the next step.
    fn note_delay_gone(&mut self, delay: f32) {
        if delay >= self.max_delay_ms {
            self.max_delay_stale = true;
        }
    }

    /// Removes synapse `s` and returns it (with its neurons as handles), or `None` when
    /// `s` is stale.
    pub fn disconnect(&mut self, s: SynapseId) -> Option<SynapseView> {
        let record = *self.synapses().get(s)?;
        let view = self.view(&record);
        self.synapses_table_mut().remove(s);
        self.note_delay_gone(record.delay);
        if let Some(out) = self.out.get_mut(record.pre_index() as usize) {
            out.live -= 1;
        }
        self.note_removed(1);
        Some(view)
    }

    /// Removes neuron `n` and every synapse that leaves or enters it, and drops the input
    /// still in flight to it. Returns the neuron, or `None` when `n` is stale. Costs a
    /// pass over the synapse table, as [`remove_neurons`](Self::remove_neurons) does:
    /// remove many neurons with one call to that.
    pub fn remove_neuron(&mut self, n: NeuronId) -> Option<Neuron> {
        let neuron = *self.neuron(n)?;
        self.remove_neurons(&[n]);
        Some(neuron)
    }

    /// Removes every live neuron of `neurons` (stale ones are skipped) with every synapse
    /// that leaves or enters one of them, and drops the input still in flight to them.
    /// One pass over the synapse table, in parallel, however many neurons go. Returns the
    /// number of synapses removed.
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let ns = graph.add_neurons(4, &NeuronParams::default())?;
    /// for &a in &ns {
    ///     for &b in &ns {
    ///         graph.connect(a, b, 1.0, 1.0)?;
    ///     }
    /// }
    /// assert_eq!(graph.remove_neurons(&[ns[0], ns[3]]), 12);
    /// assert_eq!((graph.neuron_count(), graph.synapse_count()), (2, 4));
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn remove_neurons(&mut self, neurons: &[NeuronId]) -> usize {
        let mut dead = NeuronSet::new(self.out.len());
        let doomed: Vec<NeuronId> = neurons
            .iter()
            .copied()
            .filter(|&n| self.outgoing_of(n).is_some())
            .collect();
        if doomed.is_empty() {
            return 0;
        }
        for &n in &doomed {
            dead.insert(n.index());
        }
        // Live neurons lose the synapses they send to removed ones.
        let lost = self
            .synapses()
            .par_iter()
            .filter(|(_, s)| dead.contains(s.post_index()) && !dead.contains(s.pre_index()))
            .fold(Vec::new, |mut lost: Vec<u32>, (_, s)| {
                lost.push(s.pre_index());
                lost
            })
            .reduce(Vec::new, |mut a, b| {
                a.extend(b);
                a
            });
        for pre in lost {
            self.out[pre as usize].live -= 1;
        }
        let removed = self
            .synapses_table_mut()
            .remove_where(|s| dead.contains(s.pre_index()) || dead.contains(s.post_index()));
        for n in doomed {
            let i = n.index() as usize;
            self.out[i] = Outgoing::default();
            self.neurons_table_mut().remove(n);
        }
        self.ring.clear_columns(|c| dead.contains(c as u32));
        if removed > 0 {
            self.max_delay_stale = true;
        }
        self.note_removed(removed);
        removed
    }

    /// Counts removed synapses and, once there have been as many as the synapse table
    /// has chunks, compacts it if its holes pass the policy's threshold.
    fn note_removed(&mut self, count: usize) {
        self.removed_since_check += count;
        let Some(policy) = self.defrag_policy else {
            return;
        };
        if self.removed_since_check < self.synapses().chunk_slots().max(1) {
            return;
        }
        self.removed_since_check = 0;
        if self.synapses().fragmentation().ratio > policy.threshold() {
            // Compaction only fails to make a chunk below the top; the table is then
            // left as it was, still correct.
            let _ = self.compact_synapses();
        }
    }

    /// Compacts the synapse table keeping its order, and finds every neuron's runs again.
    fn compact_synapses(&mut self) -> Result<DefragReport, Error> {
        let report = self.synapses_table_mut().compact_in_order()?;
        self.find_runs();
        Ok(report)
    }

    /// Rebuilds every neuron's runs from the synapse table's storage order, in parallel
    /// over the table's chunks, and says what it saw.
    fn find_runs(&mut self) -> RunsFound {
        let mut live = NeuronSet::new(self.out.len());
        for (i, out) in self.out.iter_mut().enumerate() {
            out.runs.clear();
            out.live = 0;
            if !out.owner.is_null() {
                live.insert(i as u32);
            }
        }
        let per_chunk = self
            .synapses()
            .par_fold_chunks(ChunkRuns::default, |c, place, s| {
                c.seen.longest_delay = c.seen.longest_delay.max(s.delay);
                if !(live.contains(s.pre_index()) && live.contains(s.post_index())) {
                    c.seen.stray.get_or_insert((place, *s));
                    return;
                }
                match c.segments.last_mut() {
                    Some((pre, start, len))
                        if *pre == s.pre_index() && *start + u64::from(*len) == place =>
                    {
                        *len += 1
                    }
                    _ => c.segments.push((s.pre_index(), place, 1)),
                }
            });
        let mut found = RunsFound::default();
        self.runs_end = 0;
        for c in per_chunk {
            found.merge(c.seen);
            for (pre, start, len) in c.segments {
                self.out[pre as usize].note(start, len);
                self.runs_end = start + u64::from(len);
            }
        }
        for o in &mut self.out {
            o.runs.shrink_to_fit();
        }
        found
    }

    /// Defragments the neuron and synapse tables: neurons by moving the last into the
    /// first holes ([`Table::defragment`]), synapses by sliding them down in order
    /// ([`Table::compact_in_order`]), which keeps each neuron's synapses together for
    /// propagation. Handles stay valid.
    ///
    /// # Errors
    /// The pool's error when a chunk the compaction needs cannot be made; nothing of the
    /// synapse table has moved then.
    pub fn defragment(&mut self) -> Result<StoreDefragReport, Error> {
        let neurons = self.neurons_table_mut().defragment();
        let synapses = self.compact_synapses()?;
        Ok(StoreDefragReport {
            moved: neurons.moved + synapses.moved,
            bytes_moved: neurons.bytes_moved + synapses.bytes_moved,
            chunks_released: neurons.chunks_released + synapses.chunks_released,
            tables: vec![
                (std::any::type_name::<Neuron>(), neurons),
                (std::any::type_name::<Synapse>(), synapses),
            ],
        })
    }

    /// When removals compact the synapse table on their own: once the table's holes pass
    /// the policy's threshold. `None` turns it off. The default is
    /// `Some(DefragPolicy::default())` (threshold 0.3).
    pub fn set_defrag_policy(&mut self, policy: Option<DefragPolicy>) {
        self.defrag_policy = policy;
    }

    /// Lays the tables out for the step: synapses sorted by presynaptic neuron, then delay
    /// to within 1 % (stable), so each neuron's outgoing synapses are one run of storage,
    /// walked one delay after another;
    /// and neurons grouped by population. Handles do not change. A network built with
    /// [`connect_many`](Self::connect_many), one batch per group of presynaptic neurons
    /// in ascending order, is laid out this way already, and nothing moves.
    ///
    /// Returns the synapse table's compaction report. Fails, with nothing moved, only if
    /// the pool cannot give a chunk the compaction needs.
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let ns = graph.add_neurons(100, &NeuronParams::default())?;
    /// for k in 0..1000 {
    ///     graph.connect(ns[k * 37 % 100], ns[k % 100], 10.0, 1.0)?;
    /// }
    /// let report = graph.optimize_layout()?;
    /// assert!(report.moved > 0);
    /// assert_eq!(graph.outgoing(ns[0]).unwrap().len(), 10); // same synapses, same handles
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn optimize_layout(&mut self) -> Result<DefragReport, Error> {
        self.neurons_table_mut().compact_by_key(|n| n.population)?;
        let report = self
            .synapses_table_mut()
            .compact_by_key(|s| (s.pre_index(), walk_key(s.delay)))?;
        self.find_runs();
        Ok(report)
    }

    /// Sends a spike from each of `sources` through its outgoing synapses as if it fired
    /// in the current step: each arrives after its synapse's delay in steps of `dt`. For
    /// stimulation, replayed spike trains and input populations; the sources' own state
    /// does not change. Stale sources are skipped. Returns the number of synaptic events.
    /// A bad `dt` is an error, as for [`step`](Self::step), and changes nothing.
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let input = graph.add_neuron(&NeuronParams::default())?;
    /// let target = graph.add_neuron(&NeuronParams::default())?;
    /// graph.connect(input, target, 300.0, 0.5)?;
    /// assert_eq!(graph.inject_spikes(&[input], 0.1)?, 1);
    /// for _ in 0..5 {
    ///     graph.step(0.1)?;
    /// }
    /// assert_eq!(graph.neuron(target).unwrap().i_syn_ex, 0.0);
    /// graph.step(0.1)?; // the 5th step after the injection: the spike arrives
    /// assert_eq!(graph.neuron(target).unwrap().i_syn_ex, 300.0);
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn inject_spikes(&mut self, sources: &[NeuronId], dt: f64) -> Result<usize, Error> {
        check_dt(dt)?;
        self.shape_ring(dt)?;
        Ok(self.propagate(sources, dt, self.step))
    }

    /// Steps simulated so far.
    pub fn current_step(&self) -> u64 {
        self.step
    }

    /// Model time simulated so far (ms): the sum of every step's `dt`.
    pub fn time_ms(&self) -> f64 {
        self.time_ms
    }

    /// The step length (ms) of the last [`step`](Self::step); `None` before the first.
    pub fn resolution(&self) -> Option<f64> {
        self.dt
    }

    /// The neurons that fired in the last step, in ascending slot-index order.
    pub fn last_spikes(&self) -> &[NeuronId] {
        &self.spikes
    }

    /// Advances the network by `dt` milliseconds and returns the neurons that fired in
    /// this step, in ascending slot-index order.
    ///
    /// Each neuron is integrated exactly (NEST's `iaf_psc_exp`): its membrane relaxes
    /// under the synaptic currents it had at the start of the step and its constant input,
    /// then the currents decay and take up the spikes arriving in this step, then it fires
    /// if it reached threshold, and is clamped at reset for `round(t_ref / dt)` steps. A
    /// spike travels through each outgoing synapse and arrives `round(delay / dt)` steps
    /// later, at least one. Neurons are updated in parallel (rayon) when there are many;
    /// spikes are delivered in parallel when there are many events, each thread adding
    /// the input of its own share of the neurons in the order one thread would. The
    /// results are the same however many threads run.
    ///
    /// `dt` may change between steps: input already in flight keeps its arrival time,
    /// rounded to the new step. A `dt` that is not a finite positive number, or so small
    /// that the longest delay spans more than 2^20 steps, is an [`Error::InvalidArgument`]
    /// and changes nothing.
    ///
    /// Many steps in a row go faster through [`run`](Self::run), which keeps the loop on
    /// one of rayon's worker threads.
    pub fn step(&mut self, dt: f64) -> Result<&[NeuronId], Error> {
        let now = self.step;
        self.advance(dt)?;
        let spikes = std::mem::take(&mut self.spikes);
        self.propagate(&spikes, dt, now);
        self.spikes = spikes;
        Ok(&self.spikes)
    }

    /// Advances the network by `steps` steps of `dt` milliseconds, calling
    /// `on_step(graph, fired)` after each with the neurons that fired in it (as
    /// [`step`](Self::step) returns them). Returns the first error, the step's (an invalid
    /// `dt`, converted into `E`) or `on_step`'s, after which no further step is taken.
    ///
    /// The results are those of calling `step` `steps` times. What differs is where the
    /// loop runs: on a worker thread of the current rayon pool (the global one, unless
    /// this is called inside [`rayon::ThreadPool::install`]), so that the parallel parts
    /// of each step start on a thread that is already running instead of being handed
    /// over from the calling thread and back three times a step. For the full
    /// microcircuit on two cores that made the steps about 10 % faster. The calling thread
    /// waits meanwhile, and `on_step` runs on the worker, which is why it must be `Send`.
    ///
    /// ```
    /// use neurostore::Error;
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let driven = NeuronParams {
    ///     i_e: 500.0,
    ///     ..NeuronParams::default()
    /// };
    /// let a = graph.add_neuron(&driven)?;
    /// let b = graph.add_neuron(&NeuronParams::default())?;
    /// graph.connect(a, b, 100.0, 1.5)?;
    /// let mut spikes = 0;
    /// graph.run(1000, 0.1, |_, fired| {
    ///     spikes += fired.len();
    ///     Ok::<_, Error>(())
    /// })?;
    /// assert!(spikes > 0);
    /// assert_eq!(graph.current_step(), 1000);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn run<E, F>(&mut self, steps: u64, dt: f64, mut on_step: F) -> Result<(), E>
    where
        E: From<Error> + Send,
        F: FnMut(&NeuralGraph, &[NeuronId]) -> Result<(), E> + Send,
    {
        let mut steps_on_this_thread = || {
            for _ in 0..steps {
                self.step(dt)?;
                on_step(self, &self.spikes)?;
            }
            Ok(())
        };
        if rayon::current_thread_index().is_some() {
            steps_on_this_thread()
        } else {
            rayon::scope(|_| steps_on_this_thread())
        }
    }

    /// The first half of [`step`](Self::step): integrates the neurons (those of the
    /// graph's [`RankShare`] only, when it has one) over one step of `dt`, leaving the
    /// ones that fired in [`last_spikes`](Self::last_spikes), and counts the step done.
    /// Their spikes are not sent: [`deliver`](Self::deliver) does that, for this step or,
    /// when every delay spans more steps, later.
    pub(crate) fn advance(&mut self, dt: f64) -> Result<(), Error> {
        self.prepare(dt)?;
        let now = self.step;
        self.ring.gather(now);
        self.update_neurons(dt, now);
        self.step += 1;
        self.time_ms += dt;
        Ok(())
    }

    /// Checks `dt` and shapes the ring for steps of it, as every step does first: after
    /// this succeeds, steps of the same `dt` fail only if the graph changes.
    pub(crate) fn prepare(&mut self, dt: f64) -> Result<(), Error> {
        check_dt(dt)?;
        self.shape_ring(dt)
    }

    /// Sends the spikes that `sources` fired in step `emitted` through their outgoing
    /// synapses, as [`step`](Self::step) would have right after that step. Valid while no
    /// synapse's delay reaches past the steps advanced since: `emitted + delay` must be
    /// after the current step. Returns the number of synaptic events.
    pub(crate) fn deliver(&mut self, sources: &[NeuronId], dt: f64, emitted: u64) -> usize {
        debug_assert!(emitted < self.step);
        self.propagate(sources, dt, emitted)
    }

    /// Makes `spikes` (ascending slot-index order) what [`last_spikes`](Self::last_spikes)
    /// returns: for a distributed network, every rank's spikes of the last step.
    pub(crate) fn set_last_spikes(&mut self, spikes: &[NeuronId]) {
        self.spikes.clear();
        self.spikes.extend_from_slice(spikes);
    }

    /// The neurons this graph updates when it is one rank's part of a distributed
    /// network (`None`: all).
    pub(crate) fn set_share(&mut self, share: Option<RankShare>) {
        self.share = share;
    }

    /// The shortest delay of any live synapse (ms), `None` when there are none.
    pub(crate) fn shortest_delay_ms(&self) -> Option<f32> {
        self.synapses()
            .par_iter()
            .map(|(_, s)| s.delay)
            .reduce_with(f32::min)
    }

    /// For a device copy of the step: shapes the ring for steps of `dt` (as `step`
    /// would) and returns the input already in flight, row `k` for step
    /// `current_step() + k`, `columns` values a row (columns past the ring's get none).
    #[cfg(feature = "cuda")]
    pub(crate) fn input_in_flight(
        &mut self,
        dt: f64,
        columns: usize,
    ) -> Result<InputInFlight, Error> {
        check_dt(dt)?;
        self.shape_ring(dt)?;
        let (ex, inh) = self.ring.rows_from(self.step, columns)?;
        Ok(InputInFlight {
            rows: self.ring.slots(),
            ex,
            inh,
        })
    }

    /// For a device copy of the step: every live synapse's handle with its record, in
    /// the order the step walks them (neuron by neuron in slot-index order, each neuron's
    /// runs in order), and its rank in its neuron's walk.
    #[cfg(feature = "cuda")]
    pub(crate) fn walk_order(&self) -> Vec<(SynapseId, Synapse, u64)> {
        let synapses = self.synapses();
        let mut order = Vec::with_capacity(synapses.len());
        for out in self.out.iter().filter(|o| !o.owner.is_null()) {
            let mut rank = 0u64;
            for &(start, len) in &out.runs {
                for place in start..start + u64::from(len) {
                    if let Some(s) = synapses.get_at_place(place)
                        && s.pre_index() == out.owner.index()
                        && let Some(h) = synapses.handle_at_place(place)
                    {
                        order.push((h, *s, rank));
                        rank += 1;
                    }
                }
            }
        }
        order
    }

    /// Makes the ring span the longest delay in steps of `dt` and hold every neuron column,
    /// re-timing pending input when `dt` changed.
    fn shape_ring(&mut self, dt: f64) -> Result<(), Error> {
        if self.max_delay_stale {
            self.max_delay_ms = self
                .synapses()
                .par_iter()
                .map(|(_, s)| s.delay)
                .reduce(|| 0.0, f32::max);
            self.max_delay_stale = false;
        }
        let longest = delay_steps(self.max_delay_ms, dt);
        let slots = usize::try_from(longest)
            .ok()
            .and_then(|s| s.checked_add(1))
            .filter(|&s| s <= MAX_RING_SLOTS)
            .ok_or_else(|| {
                Error::invalid_argument(
                    "dt",
                    format!(
                        "the longest delay, {} ms, is {longest} steps of {dt} ms; \
                         the spike ring spans at most {} steps",
                        self.max_delay_ms,
                        MAX_RING_SLOTS - 1
                    ),
                )
            })?;
        let columns = self.out.len();
        let retimed = self.dt.is_some_and(|old| old != dt);
        if slots == self.ring.slots() && columns <= self.ring.stride() && !retimed {
            return Ok(());
        }
        let stride = if columns > self.ring.stride() {
            columns.max(self.ring.stride() + self.ring.stride() / 2)
        } else {
            self.ring.stride()
        };
        let scale = self.dt.map_or(1.0, |old| old / dt);
        let remap = |k: usize| (k as f64 * scale).round().min(usize::MAX as f64) as usize;
        // Input already in flight keeps its time even if the synapse that sent it is gone.
        let in_flight = self.ring.last_pending_offset(self.step).map_or(0, remap);
        let slots = slots.max(in_flight.saturating_add(1)).min(MAX_RING_SLOTS);
        let slots = if retimed {
            slots
        } else {
            slots.max(self.ring.slots())
        };
        self.ring.reshape(stride, slots, self.step, remap)?;
        self.dt = Some(dt);
        Ok(())
    }

    /// Integrates every neuron over one step, collecting the ones that fire into
    /// `self.spikes` in ascending slot-index order.
    fn update_neurons(&mut self, dt: f64, now: u64) {
        let NeuralGraph {
            store,
            ring,
            spikes,
            share,
            ..
        } = self;
        let inputs = ring.input_of_step();
        let table = table_of_mut::<Neuron>(store);
        // Each path has a closure of its own, so that each is called from one place and
        // inlined into the loop over the neurons.
        let mut fired: Vec<u32> = if let Some(share) = *share {
            table.par_update_indexed(
                || PropagatorCache::new(dt),
                move |cache, index, neuron| {
                    share.owns(index) && update_neuron(cache, inputs, index, neuron, now)
                },
            )
        } else if table.len() < PARALLEL_NEURONS {
            let mut cache = PropagatorCache::new(dt);
            table
                .iter_mut()
                .filter_map(|(n, neuron)| {
                    update_neuron(&mut cache, inputs, n.index(), neuron, now).then_some(n.index())
                })
                .collect()
        } else {
            table.par_update_indexed(
                || PropagatorCache::new(dt),
                move |cache, index, neuron| update_neuron(cache, inputs, index, neuron, now),
            )
        };
        fired.sort_unstable();
        spikes.clear();
        spikes.extend(fired.iter().filter_map(|&i| table.live_handle(i)));
    }

    /// Sends the spikes of `sources` through their outgoing synapses into the ring, in
    /// source order and storage order, so that each neuron's input is summed in the same
    /// order however many threads run. Many events are sent in parallel: the sources are
    /// cut into one contiguous share per thread, each with its own sender, and the ring
    /// then orders the senders' events share by share. Returns the number of synaptic
    /// events.
    fn propagate(&mut self, sources: &[NeuronId], dt: f64, now: u64) -> usize {
        if !self.delays.covers(dt, self.max_delay_ms) {
            self.delays = DelaySteps::new(dt, self.max_delay_ms);
        }
        let NeuralGraph {
            store,
            out,
            ring,
            delays,
            ..
        } = self;
        let walk = Walk {
            synapses: table_of::<Synapse>(store),
            steps: delays,
        };
        let walks: Vec<&Outgoing> = sources
            .iter()
            .filter_map(|n| out.get(n.index() as usize).filter(|o| o.owner == *n))
            .collect();
        let events: usize = walks.iter().map(|o| o.live as usize).sum();
        let threads = if events < PARALLEL_EVENTS {
            1
        } else {
            rayon::current_num_threads()
        };
        let shares = shares_by_events(&walks, threads);
        let mut senders = ring.senders(shares.len(), now);
        let send = |sender: &mut Sender<'_>, share: &std::ops::Range<usize>| {
            for o in &walks[share.clone()] {
                walk.send(o, sender);
            }
        };
        if let [sender] = &mut senders[..] {
            send(sender, &shares[0]);
        } else {
            senders
                .par_iter_mut()
                .zip(&shares)
                .for_each(|(s, share)| send(s, share));
        }
        ring.seal(shares.len());
        events
    }
}

/// Advances the neuron of slot index `index` by the step `now`, with the input `inputs`
/// holds for it; whether it fired.
#[inline(always)]
fn update_neuron(
    cache: &mut PropagatorCache,
    inputs: &[[f32; 2]],
    index: u32,
    neuron: &mut Neuron,
    now: u64,
) -> bool {
    let [ex, inh] = inputs.get(index as usize).copied().unwrap_or_default();
    let p = cache.get(neuron);
    advance(neuron, p, ex, inh, now)
}

/// What propagation reads: the synapses and the conversion of their delays to steps.
struct Walk<'a> {
    synapses: &'a Table<Synapse>,
    steps: &'a DelaySteps,
}

impl Walk<'_> {
    /// Queues the input of every synapse of `o` into `sender`, in walk order, each
    /// arriving after its delay in steps. The arrival slot is looked up again only where
    /// a synapse's delay leaves the range of the last one's steps: once per delay along a
    /// neuron's synapses when they are sorted by delay, as the graph lays them out.
    #[inline]
    fn send(&self, o: &Outgoing, sender: &mut Sender<'_>) {
        let pre = o.owner.index();
        let steps = self.steps.view();
        for &(start, len) in &o.runs {
            self.synapses
                .for_each_run_in_places(start, u64::from(len), |run| {
                    let mut same = 0..0;
                    let mut row = sender.row(0);
                    for s in run {
                        if s.pre_index() != pre {
                            continue;
                        }
                        let bits = s.delay.to_bits();
                        if !same.contains(&bits) {
                            let k = steps.of(s.delay);
                            same = steps.range_of(k);
                            row = sender.row(k);
                        }
                        row.push(s.post_index() as usize, s.weight);
                    }
                });
        }
    }
}

/// Where a synapse of `delay` (ms, above zero) goes among its presynaptic neuron's
/// synapses, in a stable sort: by the delay's top 16 bits (sign, exponent and 7 bits of
/// mantissa, whose order is the delays'), so by delay to within 1/128 of it, synapses
/// of one key in the order they were made. A spike's walk then finds its synapses'
/// arrival slots about once per delay in steps ([`Walk::send`]), and the sort is two
/// passes of a counting sort ([`DelaySort`]).
fn walk_key(delay: f32) -> u32 {
    delay.to_bits() >> 16
}

/// `walks` cut into at most `threads` contiguous shares of about equal events.
fn shares_by_events(walks: &[&Outgoing], threads: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = walks.iter().map(|o| o.live as usize).sum();
    let per = total.div_ceil(threads).max(1);
    let mut shares = Vec::with_capacity(threads);
    let (mut start, mut sum) = (0, 0);
    for (i, o) in walks.iter().enumerate() {
        sum += o.live as usize;
        if sum >= per && shares.len() + 1 < threads {
            shares.push(start..i + 1);
            start = i + 1;
            sum = 0;
        }
    }
    shares.push(start..walks.len());
    shares
}

/// The indices `0..pre.len()` in the order [`NeuralGraph::connect_many`] lays its
/// synapses out: by presynaptic neuron (a counting sort over slot indices below
/// `neurons`), then by delay within each ([`walk_key`]; a stable sort, in parallel).
fn sorted_for_walks(pre: &[NeuronId], delay: &[f32], neurons: usize) -> Vec<u32> {
    let mut starts = vec![0usize; neurons + 1];
    for p in pre {
        starts[p.index() as usize + 1] += 1;
    }
    for i in 0..neurons {
        starts[i + 1] += starts[i];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; pre.len()];
    for (k, p) in pre.iter().enumerate() {
        let at = &mut next[p.index() as usize];
        order[*at] = k as u32;
        *at += 1;
    }
    // One slice per presynaptic neuron, each sorted by delay on its own.
    let mut buckets: Vec<&mut [u32]> = Vec::with_capacity(neurons);
    let mut rest = &mut order[..];
    for i in 0..neurons {
        let (bucket, tail) = rest.split_at_mut(starts[i + 1] - starts[i]);
        buckets.push(bucket);
        rest = tail;
    }
    buckets
        .into_par_iter()
        .for_each_init(DelaySort::default, |sort, b| sort.sort(b, delay));
    order
}

/// A stable sort of synapse indices by [`walk_key`], their delays to within 1 %. The
/// batches of [`NeuralGraph::connect_many`] come in target order, which a comparison sort
/// would take `n log n` steps to undo: this is a counting sort over the range of keys a
/// neuron's delays span, two passes. A bucket whose delays span too many orders of
/// magnitude for the counts takes the standard library's stable sort. Its buffers are
/// kept for the next bucket.
#[derive(Default)]
struct DelaySort {
    keyed: Vec<(u32, u32)>,
    starts: Vec<u32>,
}

impl DelaySort {
    fn sort(&mut self, bucket: &mut [u32], delay: &[f32]) {
        let key = |k: u32| walk_key(delay[k as usize]);
        if bucket.len() < 64 {
            // Small buckets: the standard library's stable sort (an insertion sort here).
            bucket.sort_by_key(|&k| key(k));
            return;
        }
        let DelaySort { keyed, starts } = self;
        keyed.clear();
        keyed.extend(bucket.iter().map(|&k| (key(k), k)));
        let (low, high) = keyed
            .iter()
            .fold((u32::MAX, 0), |(lo, hi), &(d, _)| (lo.min(d), hi.max(d)));
        let span = (high - low) as usize + 1;
        if span > 4 * keyed.len().max(1024) {
            bucket.sort_by_key(|&k| key(k));
            return;
        }
        starts.clear();
        starts.resize(span + 1, 0);
        for &(d, _) in keyed.iter() {
            starts[(d - low) as usize + 1] += 1;
        }
        for c in 0..span {
            starts[c + 1] += starts[c];
        }
        for &(d, k) in keyed.iter() {
            let at = &mut starts[(d - low) as usize];
            bucket[*at as usize] = k;
            *at += 1;
        }
    }
}

/// Input in flight when a device copy of the step takes over: `rows` rows of
/// excitatory and inhibitory input (see [`NeuralGraph::input_in_flight`]).
#[cfg(feature = "cuda")]
pub(crate) struct InputInFlight {
    /// Steps the ring spans: the longest delay in steps, plus one, at least.
    pub(crate) rows: usize,
    pub(crate) ex: Vec<f32>,
    pub(crate) inh: Vec<f32>,
}

/// The bytes a [`NeuralGraph`] holds, from [`NeuralGraph::memory`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphMemory {
    /// Object storage of the neuron and synapse tables, taken from the pool.
    pub object_bytes: usize,
    /// The tables' slots and per-chunk bookkeeping (occupancy bits, owner indices).
    pub metadata_bytes: usize,
    /// The per-neuron runs of outgoing synapses.
    pub adjacency_bytes: usize,
    /// The synaptic input in flight: the queues of events by arrival step (their
    /// capacity) and the input of one step per neuron.
    pub input_bytes: usize,
}

impl GraphMemory {
    /// All of it.
    pub fn total(&self) -> usize {
        self.object_bytes + self.metadata_bytes + self.adjacency_bytes + self.input_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delays to check at step `dt`: whole and half steps (where the rounding is decided
    /// by the last bit) and the floats next to each half step on either side, random
    /// floats from far below a step to far above, random bit patterns (negative, not a
    /// number, infinite) and the edges.
    fn delays_to_check(dt: f64, seed: u64) -> Vec<f32> {
        let next = |d: f32, by: i32| f32::from_bits(d.to_bits().saturating_add_signed(by));
        let mut delays = Vec::new();
        for k in 0..2000 {
            let half = ((k as f64 + 0.5) * dt) as f32;
            delays.extend([(k as f64 * dt) as f32, half]);
            delays.extend([1, -1, 2, -2].map(|by| next(half, by)));
        }
        let mut x = seed;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            delays.push(f32::from_bits(0x3000_0000 + (x % 0x1800_0000) as u32));
            delays.push(f32::from_bits(x as u32));
        }
        delays.extend([0.0, -0.0, -1.0, f32::MIN_POSITIVE, 1e30, f32::MAX]);
        delays.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        delays
    }

    #[test]
    fn the_delay_sort_is_the_stable_sort_by_its_key() {
        let mut sort = DelaySort::default();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in [0, 1, 5, 63, 64, 65, 1000, 5000] {
            // Few delays, many, and (0) delays over 60 orders of magnitude.
            for distinct in [1u64, 3, 40, 1 << 20, 0] {
                let delay: Vec<f32> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if distinct == 0 {
                            10f32.powi((x % 61) as i32 - 30)
                        } else {
                            0.1 + (x % distinct) as f32 * 0.037
                        }
                    })
                    .collect();
                let mut bucket: Vec<u32> = (0..len as u32).rev().collect();
                let mut expected = bucket.clone();
                expected.sort_by_key(|&k| walk_key(delay[k as usize]));
                sort.sort(&mut bucket, &delay);
                assert_eq!(bucket, expected, "{len} delays, {distinct} distinct");
            }
        }
    }

    #[test]
    fn delay_steps_rounds_as_f64_round_does() {
        let reference = |delay: f32, dt: f64| {
            let steps = (f64::from(delay) / dt).round();
            if steps >= 1.0 {
                steps.min(u64::MAX as f64) as u64
            } else {
                1
            }
        };
        for dt in [0.1, 0.05, 1.0 / 3.0, 0.125, 1e-30] {
            for delay in delays_to_check(dt, 0x2545_f491_4f6c_dd1d) {
                assert_eq!(
                    delay_steps(delay, dt),
                    reference(delay, dt),
                    "{delay} / {dt}"
                );
            }
        }
    }

    #[test]
    fn delay_steps_for_many_delays_equal_the_one_at_a_time_rounding() {
        let dts = [0.1, 0.05, 0.01, 0.25, 1.0 / 3.0, 0.1 + 1e-12, 0.125, 2.0];
        for dt in dts.into_iter().chain([1e-30, 1e-300, 1e300]) {
            // Tables too short for most delays, as long as most, and capped.
            for longest in [0.0, 5.0, 1000.0, 1e9] {
                let table = DelaySteps::new(dt, longest);
                assert!(table.covers(dt, longest) && !table.covers(dt * 2.0, longest));
                let steps = table.view();
                for delay in delays_to_check(dt, 0x9e37_79b9_7f4a_7c15) {
                    let k = steps.of(delay);
                    assert_eq!(
                        k,
                        delay_steps(delay, dt),
                        "{delay} ms, dt {dt}, to {longest}"
                    );
                    let same = steps.range_of(k);
                    // Delays the table serves lie in their steps' range (others are
                    // converted one at a time).
                    assert!(
                        delay.to_bits() >= table.limit || same.contains(&delay.to_bits()),
                        "{delay} ms lies in its steps' range {same:?}, dt {dt}"
                    );
                    // A delay in the range has those steps.
                    for bits in [same.start, same.end.saturating_sub(1)] {
                        if !same.is_empty() {
                            assert_eq!(delay_steps(f32::from_bits(bits), dt), k);
                        }
                    }
                }
            }
        }
    }
}
