//! [`NeuralGraph`]: neurons and synapses in a [`Store`], their connectivity, and the
//! reference simulation step.

use std::sync::Arc;

use rayon::prelude::*;

use super::lif::{PropagatorCache, advance};
use super::ring::{MAX_RING_SLOTS, SpikeRing};
use super::types::{Neuron, NeuronId, NeuronParams, Synapse, SynapseId};
use crate::Error;
use crate::defrag::{DefragPolicy, DefragReport};
use crate::pool::HierarchicalPool;
use crate::store::{Store, StoreDefragReport};
use crate::table::Table;

/// Below this many neurons a step updates them on the calling thread: rayon's fork and
/// join would cost more than the work.
const PARALLEL_NEURONS: usize = 4096;
/// Below this many synaptic events a step propagates them on the calling thread.
const PARALLEL_EVENTS: usize = 8192;

/// The synapses leaving and entering one neuron. `owner` is the neuron the entry belongs
/// to (null when the slot index holds no neuron), so an entry is never read for a later
/// neuron that reuses the slot index.
#[derive(Debug, Default)]
struct Adjacency {
    owner: NeuronId,
    outgoing: Vec<SynapseId>,
    incoming: Vec<SynapseId>,
}

/// Where each neuron's outgoing synapses lie in the synapse table's storage, as made by
/// [`NeuralGraph::optimize_layout`]: valid while the table's layout version is `version`,
/// and per neuron until its outgoing synapses change.
#[derive(Debug)]
struct OutgoingLayout {
    version: u64,
    /// Per neuron slot index: the first storage place and the count of its synapses.
    ranges: Vec<Option<(u64, u32)>>,
}

impl OutgoingLayout {
    /// The per-neuron ranges of `layout`, while no synapse moved since it was made.
    fn current<'a>(
        layout: &'a Option<OutgoingLayout>,
        synapses: &Table<Synapse>,
    ) -> Option<&'a [Option<(u64, u32)>]> {
        layout
            .as_ref()
            .filter(|l| l.version == synapses.layout_version())
            .map(|l| &l.ranges[..])
    }
}

/// The run of storage a step walks for `n`'s outgoing synapses, if the layout's `ranges`
/// hold one for it (else the step walks its outgoing list).
fn storage_range(ranges: Option<&[Option<(u64, u32)>]>, n: NeuronId) -> Option<(u64, u32)> {
    ranges
        .and_then(|r| r.get(n.index() as usize))
        .copied()
        .flatten()
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

/// A delay in milliseconds as whole steps of `dt`: rounded to nearest, at least one.
pub(crate) fn delay_steps(delay_ms: f32, dt: f64) -> u64 {
    let steps = (f64::from(delay_ms) / dt).round();
    if steps >= 1.0 {
        // Saturating for absurd ratios; the ring's size check refuses those first.
        steps.min(u64::MAX as f64) as u64
    } else {
        1
    }
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

/// Converts a list length to the `u32` position kept in a synapse.
fn position(len: usize) -> Result<u32, Error> {
    u32::try_from(len).map_err(|_| {
        Error::invalid_argument(
            "pre/post",
            "a neuron can have at most 2^32 - 1 outgoing and incoming synapses",
        )
    })
}

/// A network of [`Neuron`]s and [`Synapse`]s kept in a [`Store`], with exact outgoing and
/// incoming synapse lists per neuron and a reference CPU simulation step.
///
/// Every synapse knows where it sits in its neurons' lists, so [`connect`](Self::connect),
/// [`disconnect`](Self::disconnect) and each synapse removed by
/// [`remove_neuron`](Self::remove_neuron) cost O(1). Removing a neuron removes every
/// synapse that touches it: no synapse ever names a removed neuron.
///
/// [`step`](Self::step) advances every neuron by `dt` milliseconds with NEST's exact
/// `iaf_psc_exp` integration and propagates the spikes of the step through their synapses,
/// each arriving `round(delay / dt)` steps later (at least one). Results are deterministic:
/// they do not depend on the number of threads.
///
/// ```
/// use neurostore::neural::{NeuralGraph, NeuronParams};
///
/// let mut graph = NeuralGraph::new();
/// let driven = NeuronParams { i_e: 600.0, ..NeuronParams::default() };
/// let a = graph.add_neuron(&driven)?;
/// let b = graph.add_neuron(&NeuronParams::default())?;
/// let s = graph.connect(a, b, 2000.0, 1.0)?;
/// assert_eq!(graph.outgoing(a), Some(&[s][..]));
/// assert_eq!(graph.incoming(b), Some(&[s][..]));
///
/// let mut fired = Vec::new();
/// for _ in 0..1000 {
///     fired.extend_from_slice(graph.step(0.1)?);
/// }
/// assert!(fired.contains(&a) && fired.contains(&b), "a drives b over threshold");
///
/// graph.remove_neuron(a);
/// assert!(graph.synapse(s).is_none());
/// assert_eq!(graph.incoming(b), Some(&[][..]));
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Debug)]
pub struct NeuralGraph {
    store: Store,
    adjacency: Vec<Adjacency>,
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
    layout: Option<OutgoingLayout>,
}

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

    fn over(mut store: Store) -> Self {
        // The built-in types' hints: neurons one per cache line.
        store
            .register::<Neuron>()
            .expect("a new store has no table of neurons yet");
        store
            .register::<Synapse>()
            .expect("a new store has no table of synapses yet");
        NeuralGraph {
            store,
            adjacency: Vec::new(),
            ring: SpikeRing::default(),
            dt: None,
            max_delay_ms: 0.0,
            max_delay_stale: false,
            step: 0,
            time_ms: 0.0,
            spikes: Vec::new(),
            layout: None,
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

    /// The synapse table.
    pub fn synapses(&self) -> &Table<Synapse> {
        table_of(&self.store)
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

    /// The synapse `s` names, if it is live.
    pub fn synapse(&self, s: SynapseId) -> Option<&Synapse> {
        self.synapses().get(s)
    }

    fn adjacency_of(&self, n: NeuronId) -> Option<&Adjacency> {
        self.adjacency
            .get(n.index() as usize)
            .filter(|a| a.owner == n && !n.is_null())
    }

    /// The synapses leaving `n` (in no particular order), or `None` when `n` is stale.
    pub fn outgoing(&self, n: NeuronId) -> Option<&[SynapseId]> {
        self.adjacency_of(n).map(|a| &a.outgoing[..])
    }

    /// The synapses entering `n` (in no particular order), or `None` when `n` is stale.
    pub fn incoming(&self, n: NeuronId) -> Option<&[SynapseId]> {
        self.adjacency_of(n).map(|a| &a.incoming[..])
    }

    fn track(&mut self, n: NeuronId) {
        let i = n.index() as usize;
        if self.adjacency.len() <= i {
            self.adjacency.resize_with(i + 1, Adjacency::default);
        }
        self.adjacency[i] = Adjacency {
            owner: n,
            outgoing: Vec::new(),
            incoming: Vec::new(),
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
        let handles = table.insert_batch(std::iter::repeat_n(Neuron::new(params), count));
        for &n in &handles {
            self.track(n);
        }
        Ok(handles)
    }

    /// Makes room for `outgoing` more synapses leaving `n` and `incoming` more entering
    /// it, exactly: a network built by [`connect`](Self::connect) after its neurons'
    /// degrees were reserved holds no spare list capacity (a list grown one `connect` at
    /// a time keeps up to half of its memory unused). A stale `n` is an
    /// [`Error::InvalidHandle`]; memory that cannot be had is an [`Error::OutOfMemory`];
    /// either way nothing changes.
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let ns = graph.add_neurons(3, &NeuronParams::default())?;
    /// graph.reserve_synapses(ns[0], 2, 0)?;
    /// graph.reserve_synapses(ns[1], 0, 1)?;
    /// graph.reserve_synapses(ns[2], 0, 1)?;
    /// let before = graph.memory().adjacency_bytes;
    /// graph.connect(ns[0], ns[1], 10.0, 1.0)?;
    /// graph.connect(ns[0], ns[2], 10.0, 1.0)?;
    /// assert_eq!(graph.memory().adjacency_bytes, before); // no list grew
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn reserve_synapses(
        &mut self,
        n: NeuronId,
        outgoing: usize,
        incoming: usize,
    ) -> Result<(), Error> {
        self.adjacency_of(n)
            .ok_or_else(|| Error::invalid_handle(n))?;
        let oom = |count: usize| Error::OutOfMemory {
            requested: count.saturating_mul(size_of::<SynapseId>()),
            align: align_of::<SynapseId>(),
            reason: crate::error::OomReason::OsRefused,
        };
        let a = &mut self.adjacency[n.index() as usize];
        // Incoming first: if outgoing then fails, the extra incoming capacity changes no
        // observable state.
        a.incoming
            .try_reserve_exact(incoming)
            .map_err(|_| oom(incoming))?;
        a.outgoing
            .try_reserve_exact(outgoing)
            .map_err(|_| oom(outgoing))
    }

    /// Makes room in the synapse table for `additional` more synapses: chunks from the
    /// pool and slots, so that a network whose size is known ahead takes its table's
    /// memory once instead of growing it (a slot table grown by doubling may hold up to
    /// twice the slots it needs). Memory that cannot be had is an
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

    /// Runs the store's garbage collector over the graph ([`Store::collect`]). Neurons
    /// and synapses are manual objects, so nothing of the graph is freed; the collection
    /// follows every synapse's handles and reports any that dangle
    /// ([`GcReport::dangling_count`](crate::gc::GcReport::dangling_count)), which the
    /// graph's invariants say never happens: a consistency audit of the whole network.
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
    /// assert_eq!((report.scanned, report.dangling_count, report.freed_total), (3, 0, 0));
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn collect(&mut self) -> crate::gc::GcReport {
        self.store.collect()
    }

    /// The bytes the graph holds: its tables (object chunks from the pool, slot tables
    /// and per-chunk metadata) and its adjacency lists.
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let ns = graph.add_neurons(2, &NeuronParams::default())?;
    /// graph.connect(ns[0], ns[1], 10.0, 1.0)?;
    /// let memory = graph.memory();
    /// assert!(memory.object_bytes >= 2 * 64 + 32);
    /// assert_eq!(memory.total(), memory.object_bytes + memory.metadata_bytes + memory.adjacency_bytes);
    /// # Ok::<(), neurostore::Error>(())
    /// ```
    pub fn memory(&self) -> GraphMemory {
        let (neurons, synapses) = (self.neurons().stats(), self.synapses().stats());
        let lists: usize = self
            .adjacency
            .iter()
            .map(|a| (a.outgoing.capacity() + a.incoming.capacity()) * size_of::<SynapseId>())
            .sum();
        GraphMemory {
            object_bytes: neurons.bytes_reserved + synapses.bytes_reserved,
            metadata_bytes: neurons.metadata_bytes + synapses.metadata_bytes,
            adjacency_bytes: lists + self.adjacency.capacity() * size_of::<Adjacency>(),
        }
    }

    /// Connects `pre` to `post` with `weight` (pA, finite; negative inhibits) and `delay`
    /// (ms, finite, above zero). Multapses and self-connections are allowed. A stale neuron
    /// is an [`Error::InvalidHandle`]; on any error nothing changes.
    pub fn connect(
        &mut self,
        pre: NeuronId,
        post: NeuronId,
        weight: f32,
        delay: f32,
    ) -> Result<SynapseId, Error> {
        let out_pos = position(
            self.adjacency_of(pre)
                .ok_or_else(|| Error::invalid_handle(pre))?
                .outgoing
                .len(),
        )?;
        let in_pos = position(
            self.adjacency_of(post)
                .ok_or_else(|| Error::invalid_handle(post))?
                .incoming
                .len(),
        )?;
        check_weight(weight)?;
        check_delay(delay)?;
        let synapse = Synapse {
            out_pos,
            in_pos,
            ..Synapse::new(pre, post, weight, delay)
        };
        let s = self.synapses_table_mut().try_insert(synapse)?;
        self.adjacency[pre.index() as usize].outgoing.push(s);
        self.forget_range(pre);
        self.adjacency[post.index() as usize].incoming.push(s);
        self.max_delay_ms = self.max_delay_ms.max(delay);
        Ok(s)
    }

    fn synapses_table_mut(&mut self) -> &mut Table<Synapse> {
        table_of_mut(&mut self.store)
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

    /// Removes synapse `s` and returns it, or `None` when `s` is stale.
    pub fn disconnect(&mut self, s: SynapseId) -> Option<Synapse> {
        let syn = self.synapses_table_mut().remove(s)?;
        self.note_delay_gone(syn.delay);
        self.unlist(s, &syn, List::Outgoing);
        self.unlist(s, &syn, List::Incoming);
        self.store.note_removals::<Synapse>(1);
        Some(syn)
    }

    /// Takes removed synapse `s` out of one of its neurons' lists in O(1): the list's last
    /// entry moves into its place and that synapse's position is updated.
    fn unlist(&mut self, s: SynapseId, syn: &Synapse, which: List) {
        let (neuron, pos) = match which {
            List::Outgoing => (syn.pre, syn.out_pos as usize),
            List::Incoming => (syn.post, syn.in_pos as usize),
        };
        if let List::Outgoing = which {
            self.forget_range(neuron);
        }
        let Some(adjacency) = self
            .adjacency
            .get_mut(neuron.index() as usize)
            .filter(|a| a.owner == neuron)
        else {
            return;
        };
        let list = match which {
            List::Outgoing => &mut adjacency.outgoing,
            List::Incoming => &mut adjacency.incoming,
        };
        // The position is exact by construction; the search is a guard, never the path.
        let pos = if list.get(pos) == Some(&s) {
            pos
        } else {
            debug_assert!(false, "synapse {s:?} not at its recorded position");
            match list.iter().position(|&x| x == s) {
                Some(p) => p,
                None => return,
            }
        };
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos)
            && let Some(m) = table_of_mut::<Synapse>(&mut self.store).get_mut(moved)
        {
            match which {
                List::Outgoing => m.out_pos = pos as u32,
                List::Incoming => m.in_pos = pos as u32,
            }
        }
    }

    /// Removes neuron `n` and every synapse that leaves or enters it, and drops the input
    /// still in flight to it. Returns the neuron, or `None` when `n` is stale.
    pub fn remove_neuron(&mut self, n: NeuronId) -> Option<Neuron> {
        self.adjacency_of(n)?;
        let i = n.index() as usize;
        let outgoing = std::mem::take(&mut self.adjacency[i].outgoing);
        self.forget_range(n);
        let mut removed = outgoing.len();
        for s in outgoing {
            if let Some(syn) = self.synapses_table_mut().remove(s) {
                self.note_delay_gone(syn.delay);
                // A self-connection is also in n's own incoming list, still in place.
                self.unlist(s, &syn, List::Incoming);
            }
        }
        let incoming = std::mem::take(&mut self.adjacency[i].incoming);
        removed += incoming.len();
        for s in incoming {
            if let Some(syn) = self.synapses_table_mut().remove(s) {
                self.note_delay_gone(syn.delay);
                self.unlist(s, &syn, List::Outgoing);
            }
        }
        self.adjacency[i] = Adjacency::default();
        self.ring.clear_column(i);
        let neuron = self.neurons_table_mut().remove(n);
        self.store.note_removals::<Synapse>(removed);
        self.store.note_removals::<Neuron>(1);
        neuron
    }

    /// Defragments the neuron and synapse tables ([`Store::defragment`]). Handles stay
    /// valid; the layout of [`optimize_layout`](Self::optimize_layout) is out of date
    /// afterwards if synapses moved (propagation stays correct, and the next
    /// `optimize_layout` restores it).
    pub fn defragment(&mut self) -> StoreDefragReport {
        self.store.defragment()
    }

    /// The store's automatic defragmentation after removals ([`Store::set_defrag_policy`]).
    pub fn set_defrag_policy(&mut self, policy: Option<DefragPolicy>) {
        self.store.set_defrag_policy(policy);
    }

    /// Marks `n`'s outgoing range of the layout as out of date.
    fn forget_range(&mut self, n: NeuronId) {
        if let Some(range) = self
            .layout
            .as_mut()
            .and_then(|l| l.ranges.get_mut(n.index() as usize))
        {
            *range = None;
        }
    }

    /// Lays the synapse table out for spike propagation: synapses sorted by presynaptic
    /// neuron (then postsynaptic), so each neuron's outgoing synapses sit together and a
    /// step walks them as one run of storage, without slot lookups; and neurons grouped by
    /// population. Handles do not change. The layout stays exact for every neuron whose
    /// outgoing synapses are not changed afterwards; a neuron that gains or loses one, or
    /// any later move of synapses (a defragmentation), falls back to its handle list:
    /// still correct, only slower, until the next `optimize_layout`.
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
        let synapses = self.synapses_table_mut();
        let report = synapses.compact_by_key(|s| (s.pre.index(), s.post.index()))?;
        let mut ranges: Vec<Option<(u64, u32)>> = vec![None; self.adjacency.len()];
        // After the compaction the table is dense from place 0 in this order.
        for (place, s) in self.synapses().values().enumerate() {
            if let Some(range) = ranges.get_mut(s.pre.index() as usize) {
                match range {
                    Some((_, len)) => *len += 1,
                    None => *range = Some((place as u64, 1)),
                }
            }
        }
        self.layout = Some(OutgoingLayout {
            version: self.synapses().layout_version(),
            ranges,
        });
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
    /// later, at least one. Neurons are updated in parallel (rayon) when there are many,
    /// and spikes propagated in parallel when there are many events; the results are the
    /// same either way.
    ///
    /// `dt` may change between steps: input already in flight keeps its arrival time,
    /// rounded to the new step. A `dt` that is not a finite positive number, or so small
    /// that the longest delay spans more than 2^20 steps, is an [`Error::InvalidArgument`]
    /// and changes nothing.
    pub fn step(&mut self, dt: f64) -> Result<&[NeuronId], Error> {
        check_dt(dt)?;
        self.shape_ring(dt)?;
        let now = self.step;
        self.update_neurons(dt, now);
        self.ring.clear_slot(now);
        let spikes = std::mem::take(&mut self.spikes);
        self.propagate(&spikes, dt, now);
        self.spikes = spikes;
        self.step += 1;
        self.time_ms += dt;
        Ok(&self.spikes)
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
        let rows = self.ring.slots();
        let mut ex = vec![0.0; rows * columns];
        let mut inh = vec![0.0; rows * columns];
        for k in 0..rows {
            let (row_ex, row_in) = self.ring.slot(self.step + k as u64);
            let n = columns.min(row_ex.len());
            ex[k * columns..k * columns + n].copy_from_slice(&row_ex[..n]);
            inh[k * columns..k * columns + n].copy_from_slice(&row_in[..n]);
        }
        Ok(InputInFlight { rows, ex, inh })
    }

    /// Whether `step` walks `n`'s outgoing synapses as a run of storage (after
    /// [`optimize_layout`](Self::optimize_layout), in storage order) rather than through
    /// its outgoing list (in list order): the order its spikes' inputs are summed in.
    #[cfg(feature = "cuda")]
    pub(crate) fn walks_storage_range(&self, n: NeuronId) -> bool {
        storage_range(OutgoingLayout::current(&self.layout, self.synapses()), n).is_some()
    }

    /// Makes the ring span the longest delay in steps of `dt` and hold every neuron column,
    /// re-timing pending input when `dt` changed.
    fn shape_ring(&mut self, dt: f64) -> Result<(), Error> {
        if self.max_delay_stale {
            self.max_delay_ms = self
                .synapses()
                .values()
                .map(|s| s.delay)
                .fold(0.0, f32::max);
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
        let columns = self.adjacency.len();
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
            ..
        } = self;
        let (input_ex, input_in) = ring.slot(now);
        let update = |cache: &mut PropagatorCache, n: NeuronId, neuron: &mut Neuron| {
            let column = n.index() as usize;
            let ex = input_ex.get(column).copied().unwrap_or(0.0);
            let inh = input_in.get(column).copied().unwrap_or(0.0);
            let p = cache.get(neuron);
            advance(neuron, &p, ex, inh, now).then_some(n)
        };
        let table = table_of_mut::<Neuron>(store);
        spikes.clear();
        if table.len() < PARALLEL_NEURONS {
            let mut cache = PropagatorCache::new(dt);
            spikes.extend(
                table
                    .iter_mut()
                    .filter_map(|(n, neuron)| update(&mut cache, n, neuron)),
            );
        } else {
            spikes.par_extend(
                table
                    .par_iter_mut()
                    .map_init(
                        || PropagatorCache::new(dt),
                        |cache, (n, neuron)| update(cache, n, neuron),
                    )
                    .flatten_iter(),
            );
        }
        spikes.sort_unstable_by_key(|n| n.index());
    }

    /// Sends the spikes of `sources` through their outgoing synapses into the ring, in
    /// source order and synapse order, so that sums of inputs are the same however many
    /// threads ran. Returns the number of synaptic events.
    fn propagate(&mut self, sources: &[NeuronId], dt: f64, now: u64) -> usize {
        let NeuralGraph {
            store,
            adjacency,
            ring,
            layout,
            ..
        } = self;
        let synapses = table_of::<Synapse>(store);
        let ranges = OutgoingLayout::current(layout, synapses);
        let geometry = ring.geometry();
        let event = move |s: &Synapse| -> Option<(usize, f32)> {
            geometry
                .position(now, delay_steps(s.delay, dt), s.post.index() as usize)
                .map(|p| (p, s.weight))
        };
        // Walks one source's outgoing synapses: a storage range after `optimize_layout`
        // (no slot lookups), else the handle list (slot lookups, prefetched).
        let walk = |n: &NeuronId, sink: &mut dyn FnMut((usize, f32))| {
            let Some(a) = adjacency.get(n.index() as usize).filter(|a| a.owner == *n) else {
                return;
            };
            match storage_range(ranges, *n) {
                Some((start, len)) => {
                    synapses.for_each_in_places(start, u64::from(len), |s| {
                        if let Some(e) = event(s) {
                            sink(e);
                        }
                    });
                }
                None => synapses.for_each_many(&a.outgoing, |s| {
                    if let Some(e) = s.and_then(event) {
                        sink(e);
                    }
                }),
            }
        };
        let events: usize = sources
            .iter()
            .filter_map(|n| adjacency.get(n.index() as usize).filter(|a| a.owner == *n))
            .map(|a| a.outgoing.len())
            .sum();
        if events < PARALLEL_EVENTS {
            let mut deliver = |(p, w): (usize, f32)| ring.add(p, w);
            for n in sources {
                walk(n, &mut deliver);
            }
        } else {
            let batches: Vec<Vec<(usize, f32)>> = sources
                .par_iter()
                .fold(Vec::new, |mut batch, n| {
                    walk(n, &mut |e| batch.push(e));
                    batch
                })
                .collect();
            for (p, w) in batches.into_iter().flatten() {
                ring.add(p, w);
            }
        }
        events
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
    /// Chunk storage of the neuron and synapse tables, taken from the pool.
    pub object_bytes: usize,
    /// The tables' slot tables and per-chunk metadata (owner handles, occupancy bits).
    pub metadata_bytes: usize,
    /// The outgoing and incoming synapse lists, by capacity.
    pub adjacency_bytes: usize,
}

impl GraphMemory {
    /// All of it.
    pub fn total(&self) -> usize {
        self.object_bytes + self.metadata_bytes + self.adjacency_bytes
    }
}

#[derive(Clone, Copy)]
enum List {
    Outgoing,
    Incoming,
}
