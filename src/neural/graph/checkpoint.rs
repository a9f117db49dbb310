//! Checkpoints of a [`NeuralGraph`]: everything a step reads, saved so that a loaded
//! graph goes on exactly as the original would have.
//!
//! A checkpoint is a snapshot file (`docs/FORMAT.md`, content code `2`): the neuron and
//! synapse tables as a store snapshot writes them (every object at its place, every slot
//! with its version), then a `GRPH` section with the state the tables do not hold (step,
//! model time, resolution, the last step's spikes, the longest delay, the columns, the
//! compaction policy and where new synapses go) and a `RING` section with the input in
//! flight, as a dense ring of future steps. The neurons' runs of outgoing synapses are not
//! saved: they are found again from the synapse table's storage order, in the order a
//! spike walks them, which is also the check that every synapse names live neurons.

use std::io::{Read, Write};
use std::path::Path;

use super::{NeuralGraph, Outgoing, check_dt};
use crate::Error;
use crate::error::SnapshotError;
use crate::neural::ring::SpikeRing;
use crate::neural::{Neuron, NeuronId, Synapse};
use crate::snapshot::{
    GraphParts, GraphSections, GraphState, Options, SnapshotReport, save_to_path,
};
use crate::store::Store;
use crate::table::defrag::DefragPolicy;

/// A [`SnapshotError::InconsistentGraph`].
fn inconsistent(message: impl Into<String>) -> Error {
    SnapshotError::InconsistentGraph {
        message: message.into(),
    }
    .into()
}

impl NeuralGraph {
    /// Saves the graph to `path` as a checkpoint, atomically and durably (written to
    /// `<path>.tmp`, fsynced, renamed, the directory fsynced), with every section
    /// checksummed. [`load`](Self::load) gives back a graph whose steps equal this one's
    /// bit for bit: neurons, synapses and handles, the input in flight, the step count,
    /// the model time and the resolution. `neurostore inspect` shows what it holds.
    ///
    /// ```
    /// use neurostore::neural::{NeuralGraph, NeuronParams};
    ///
    /// let mut graph = NeuralGraph::new();
    /// let driven = NeuronParams { i_e: 600.0, ..NeuronParams::default() };
    /// let ns = graph.add_neurons(2, &driven)?;
    /// graph.connect(ns[0], ns[1], 300.0, 2.0)?;
    /// for _ in 0..200 {
    ///     graph.step(0.1)?;
    /// }
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("net.nsnap");
    /// graph.save(&path)?;
    ///
    /// let mut resumed = NeuralGraph::load(&path)?;
    /// assert_eq!(resumed.current_step(), 200);
    /// for _ in 0..500 {
    ///     assert_eq!(resumed.step(0.1)?, graph.step(0.1)?);
    /// }
    /// assert_eq!(resumed.neuron(ns[1]), graph.neuron(ns[1]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] (the file at `path` is then as it was).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<SnapshotReport, Error> {
        self.save_with(path, &mut Options::new())
    }

    /// [`save`](Self::save) with a progress callback ([`Options::progress`]).
    ///
    /// # Errors
    /// As [`save`](Self::save).
    pub fn save_with(
        &self,
        path: impl AsRef<Path>,
        options: &mut Options<'_>,
    ) -> Result<SnapshotReport, Error> {
        save_to_path(path, |file| self.save_to_with(file, options))
    }

    /// Writes the graph as a checkpoint to `out` (streaming; no atomicity of its own).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn save_to(&self, out: impl Write) -> Result<SnapshotReport, Error> {
        self.save_to_with(out, &mut Options::new())
    }

    /// [`save_to`](Self::save_to) with a progress callback.
    ///
    /// # Errors
    /// As [`save_to`](Self::save_to).
    pub fn save_to_with(
        &self,
        out: impl Write,
        options: &mut Options<'_>,
    ) -> Result<SnapshotReport, Error> {
        let state = GraphState {
            columns: self.out.len() as u64,
            step: self.step,
            time_ms: self.time_ms,
            resolution: self.dt,
            max_delay_ms: self.max_delay_ms,
            max_delay_stale: self.max_delay_stale,
            defrag_threshold: self.defrag_policy.map(|p| p.threshold()),
            removed_since_check: self.removed_since_check as u64,
            runs_end: self.runs_end,
            spikes: self.spikes.iter().map(|n| n.to_bits()).collect(),
        };
        let ring = self.ring.image()?;
        let sections = GraphSections {
            state: &state,
            ring: &ring.borrowed(),
        };
        options.save_graph_to((self.neurons(), self.synapses()), &sections, out)
    }

    /// Loads a graph saved by [`save`](Self::save), its tables in the default pool. The
    /// graph goes on as the saved one would have: same spikes, same neuron state, same
    /// handles from the next inserts.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::SchemaMismatch`], or the [`SnapshotError`] that says what
    /// is wrong with the file: [`SnapshotError::WrongContent`] for a store's or a table's
    /// snapshot, [`SnapshotError::InconsistentGraph`] for sections that contradict each
    /// other. Nothing is built then.
    pub fn load(path: impl AsRef<Path>) -> Result<NeuralGraph, Error> {
        Self::load_with(path, &mut Options::new())
    }

    /// [`load`](Self::load) with a progress callback and the pool the tables take their
    /// memory from ([`Options::pool`]).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_with(
        path: impl AsRef<Path>,
        options: &mut Options<'_>,
    ) -> Result<NeuralGraph, Error> {
        let parts = options.load_graph_at::<Neuron, Synapse>(path.as_ref())?;
        Self::from_parts(parts, options)
    }

    /// Loads a graph from a stream written by [`save_to`](Self::save_to).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_from(input: impl Read) -> Result<NeuralGraph, Error> {
        Self::load_from_with(input, &mut Options::new())
    }

    /// [`load_from`](Self::load_from) with a progress callback and a pool.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_from_with(
        input: impl Read,
        options: &mut Options<'_>,
    ) -> Result<NeuralGraph, Error> {
        let parts = options.load_graph_from::<Neuron, Synapse>(input)?;
        Self::from_parts(parts, options)
    }

    /// The graph a checkpoint's parts make, its tables in `options`' pool.
    fn from_parts(
        parts: GraphParts<Neuron, Synapse>,
        options: &mut Options<'_>,
    ) -> Result<NeuralGraph, Error> {
        let (neurons, synapses) = parts.tables;
        let mut store = Store::with_pool(options.pool_or_default());
        store.install_table(neurons);
        store.install_table(synapses);
        store.set_defrag_policy(None);
        let ring = SpikeRing::from_image(parts.ring).map_err(inconsistent)?;
        Self::restore(store, &parts.state, ring)
    }

    /// The graph over `store` (holding both tables) in the saved `state`, once every
    /// field is checked against the tables.
    fn restore(store: Store, state: &GraphState, ring: SpikeRing) -> Result<NeuralGraph, Error> {
        let defrag_policy = state
            .defrag_threshold
            .map(DefragPolicy::new)
            .transpose()
            .map_err(|e| inconsistent(format!("the compaction policy: {e}")))?;
        check_scalars(state, &ring)?;
        let mut graph = NeuralGraph {
            dt: state.resolution,
            max_delay_ms: state.max_delay_ms,
            max_delay_stale: state.max_delay_stale,
            step: state.step,
            time_ms: state.time_ms,
            spikes: state
                .spikes
                .iter()
                .map(|&b| NeuronId::from_bits(b))
                .collect(),
            defrag_policy,
            removed_since_check: usize::try_from(state.removed_since_check)
                .map_err(|_| inconsistent("the removals since the last check overflow"))?,
            ring,
            ..NeuralGraph::over(store)
        };
        graph.track_loaded_neurons(state.columns)?;
        let found = graph.find_runs();
        if let Some((place, s)) = found.stray {
            return Err(inconsistent(format!(
                "the synapse at place {place} goes from slot {} to slot {}, and one of them \
                 holds no neuron of the graph",
                s.pre_index(),
                s.post_index()
            )));
        }
        if graph.runs_end > state.runs_end {
            return Err(inconsistent(format!(
                "synapses lie up to place {}, above where new ones go ({})",
                graph.runs_end, state.runs_end
            )));
        }
        graph.runs_end = state.runs_end;
        // Unless marked stale, the graph's longest delay is its synapses' longest: every
        // change that could lower it marks it stale.
        if !state.max_delay_stale && found.longest_delay != state.max_delay_ms {
            return Err(inconsistent(format!(
                "the longest delay is recorded as {} ms, but the synapses' longest is {} ms",
                state.max_delay_ms, found.longest_delay
            )));
        }
        Ok(graph)
    }

    /// Gives every live neuron its (empty) outgoing entry, over `columns` entries, which
    /// must cover every live neuron and no more than the neuron table's slots.
    fn track_loaded_neurons(&mut self, columns: u64) -> Result<(), Error> {
        let neurons = self.neurons();
        let slots = neurons.slot_count() as u64;
        let highest = neurons.iter().map(|(n, _)| n.index()).max();
        if columns > slots.max(1) || highest.is_some_and(|i| u64::from(i) >= columns) {
            return Err(inconsistent(format!(
                "the graph keeps {columns} neuron columns; its neuron table has {slots} \
                 slots, the highest live at index {highest:?}"
            )));
        }
        let mut owners: Vec<Outgoing> = Vec::new();
        owners
            .try_reserve_exact(columns as usize)
            .map_err(|_| Error::OutOfMemory {
                requested: (columns as usize).saturating_mul(size_of::<Outgoing>()),
                align: align_of::<Outgoing>(),
                reason: crate::error::OomReason::OsRefused,
            })?;
        owners.extend((0..columns as u32).map(|i| Outgoing {
            owner: neurons.live_handle(i).unwrap_or_else(NeuronId::null),
            ..Outgoing::default()
        }));
        self.out = owners;
        Ok(())
    }
}

/// Checks the fields of `state` that stand alone, and that the ring is shaped exactly
/// when the graph has a resolution.
fn check_scalars(state: &GraphState, ring: &SpikeRing) -> Result<(), Error> {
    if let Some(dt) = state.resolution {
        check_dt(dt).map_err(|e| inconsistent(format!("the resolution: {e}")))?;
    }
    if state.resolution.is_some() != (ring.slots() > 0) {
        return Err(inconsistent(format!(
            "a ring of {} slots with resolution {:?}: the ring is shaped by the first step",
            ring.slots(),
            state.resolution
        )));
    }
    if !(state.time_ms.is_finite() && state.time_ms >= 0.0) {
        return Err(inconsistent(format!(
            "the model time, {} ms, is not a finite time",
            state.time_ms
        )));
    }
    if !(state.max_delay_ms.is_finite() && state.max_delay_ms >= 0.0) {
        return Err(inconsistent(format!(
            "the longest delay, {} ms, is not a finite delay",
            state.max_delay_ms
        )));
    }
    if state.runs_end > 1 << 32 {
        return Err(inconsistent(format!(
            "new synapses would go at place {}, past the 2^32 places a table has",
            state.runs_end
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neural::NeuronParams;

    /// Three driven neurons in a chain, stepped a little.
    fn graph() -> (NeuralGraph, Vec<NeuronId>) {
        let mut graph = NeuralGraph::new();
        let driven = NeuronParams {
            i_e: 600.0,
            ..NeuronParams::default()
        };
        let ns = graph.add_neurons(3, &driven).unwrap();
        graph.connect(ns[0], ns[1], 200.0, 1.0).unwrap();
        graph.connect(ns[1], ns[2], -100.0, 2.5).unwrap();
        for _ in 0..150 {
            graph.step(0.1).unwrap();
        }
        (graph, ns)
    }

    fn reload(graph: &NeuralGraph) -> Result<NeuralGraph, Error> {
        let mut file = Vec::new();
        graph.save_to(&mut file).unwrap();
        NeuralGraph::load_from(&file[..])
    }

    fn refused(graph: &NeuralGraph, says: &str) {
        match reload(graph) {
            Err(Error::Snapshot(SnapshotError::InconsistentGraph { message })) => {
                assert!(message.contains(says), "{message}")
            }
            other => panic!("expected an inconsistent graph, got {other:?}"),
        }
    }

    #[test]
    fn a_loaded_graph_has_the_state_it_was_saved_with() {
        let (graph, _) = graph();
        let back = reload(&graph).unwrap();
        assert_eq!(back.out.len(), graph.out.len());
        for (a, b) in back.out.iter().zip(&graph.out) {
            assert_eq!((a.owner, &a.runs, a.live), (b.owner, &b.runs, b.live));
        }
        assert_eq!(
            (back.step, back.time_ms, back.dt, back.runs_end),
            (graph.step, graph.time_ms, graph.dt, graph.runs_end)
        );
        assert_eq!(back.max_delay_ms, graph.max_delay_ms);
        assert_eq!(back.ring.image().unwrap(), graph.ring.image().unwrap());
    }

    #[test]
    fn a_synapse_naming_a_slot_without_a_neuron_is_refused() {
        let (mut graph, ns) = graph();
        // Behind the graph's back: its synapse into ns[2] now names an empty slot.
        graph.neurons_table_mut().remove(ns[2]);
        graph.out[ns[2].index() as usize].owner = NeuronId::null();
        refused(&graph, "holds no neuron");
    }

    #[test]
    fn columns_that_miss_a_live_neuron_are_refused() {
        let (mut graph, _) = graph();
        graph.out.truncate(1);
        refused(&graph, "neuron columns");
    }

    #[test]
    fn a_longest_delay_that_is_not_the_synapses_longest_is_refused() {
        let (mut graph, _) = graph();
        graph.max_delay_ms = 1.0;
        refused(&graph, "the synapses' longest is 2.5 ms");
        graph.max_delay_ms = 1e6;
        refused(&graph, "recorded as 1000000 ms");
        graph.max_delay_stale = true;
        assert!(
            reload(&graph).is_ok(),
            "a stale bound is recomputed, not trusted"
        );
    }

    #[test]
    fn synapses_above_where_new_ones_go_are_refused() {
        let (mut graph, _) = graph();
        graph.runs_end = 1;
        refused(&graph, "above where new ones go");
    }

    #[test]
    fn a_resolution_without_a_shaped_ring_is_refused() {
        let mut graph = NeuralGraph::new();
        graph.add_neuron(&NeuronParams::default()).unwrap();
        graph.dt = Some(0.1);
        refused(&graph, "shaped by the first step");
        graph.dt = Some(f64::NAN);
        refused(&graph, "the resolution");
    }
}
