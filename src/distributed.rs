//! Layer 10, **distributed**: a network shared out among ranks that exchange only spikes.
//!
//! A [`DistributedGraph`] is one rank's part of a network: every rank holds every neuron
//! (so a [`NeuronId`](crate::NeuronId) means the same neuron on every rank), owns the
//! neurons whose slot index is its rank modulo the number of ranks, updates only those,
//! and holds the synapses that end on them. After each interval of the shortest delay,
//! the ranks gather which neurons fired in which step with one collective, and each
//! delivers those spikes through its synapses. The spikes of a run are those of one
//! [`NeuralGraph`](crate::NeuralGraph) built with the same calls, bit for bit, for any
//! number of ranks and threads.
//!
//! The ranks talk through a [`SpikeExchange`]: [`LocalExchange`] runs them as threads of
//! one process (tests, and programs tried without MPI), and with the crate's `mpi`
//! feature `MpiExchange` runs them as MPI processes (`mpirun -np 4 ...`) through the
//! `mpi` crate over the system's Open MPI or MPICH, re-exported here as
//! `distributed::mpi`.
//!
//! This layer has no unsafe code: `lib.rs` declares it `#[forbid(unsafe_code)]`.

mod exchange;
#[cfg(feature = "mpi")]
mod mpi_exchange;
mod network;

pub use exchange::{LocalExchange, SpikeExchange};
#[cfg(feature = "mpi")]
pub use mpi_exchange::MpiExchange;
pub use network::{DistributedGraph, ExchangeStats};

/// The `mpi` crate (rsmpi) this layer is built with: initialise MPI through it
/// (`mpi::initialize()`), so that the program needs no second copy.
#[cfg(feature = "mpi")]
pub use ::mpi;
