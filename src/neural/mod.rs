//! Layer 8, **neural**: the built-in neural types, [`NeuralGraph`] and the reference step.
//!
//! This layer owns:
//! - the `#[repr(C)]` Pod types [`Neuron`] (leaky integrate-and-fire state and parameters),
//!   [`Synapse`], [`Weight`] and [`Signal`], with the handle aliases [`NeuronId`],
//!   [`SynapseId`], [`WeightId`] and [`SignalId`] (`types.rs`);
//! - [`NeuralGraph`], neurons and synapses in a [`Store`](crate::Store), each neuron's
//!   outgoing synapses found through runs of the synapse table's storage (`graph.rs`);
//! - the reference CPU step: exact integration of NEST's `iaf_psc_exp` (`lif.rs`) and spike
//!   propagation through queues of input in flight, one per arrival step (`ring.rs`);
//! - checkpoints: [`NeuralGraph::save`] and [`NeuralGraph::load`], after which the loaded
//!   graph steps exactly as the saved one would have (`graph/checkpoint.rs`).
//!
//! Invariants kept here:
//! - every live synapse lies in one of its presynaptic neuron's runs, and no run covers a
//!   place at or above where new synapses go; no synapse names a removed neuron;
//! - a spike emitted in step `t` through a synapse of delay `d` is added to its target's
//!   current in step `t + max(1, round(d / dt))`, and no input survives its target's
//!   removal;
//! - a step's result does not depend on the number of threads.
//!
//! This layer has no unsafe code: `lib.rs` declares it `#[forbid(unsafe_code)]`.
//!
//! ```
//! use neurostore::neural::{NeuralGraph, NeuronParams};
//!
//! let mut graph = NeuralGraph::new();
//! let population = graph.add_neurons(100, &NeuronParams { i_e: 500.0, ..Default::default() })?;
//! for pair in population.windows(2) {
//!     graph.connect(pair[0], pair[1], 50.0, 1.5)?;
//! }
//! let mut spikes = 0;
//! for _ in 0..1000 {
//!     spikes += graph.step(0.1)?.len();
//! }
//! assert!(spikes > 0);
//! assert_eq!(graph.synapse_count(), 99);
//! # Ok::<(), neurostore::Error>(())
//! ```

pub(crate) mod graph;
pub(crate) mod lif;
mod ring;
mod types;

pub use graph::{GraphMemory, NeuralGraph};
pub use types::{
    NEVER_SPIKED, Neuron, NeuronId, NeuronParams, Signal, SignalId, Synapse, SynapseId,
    SynapseView, Weight, WeightId,
};
