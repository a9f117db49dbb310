//! [`MpiExchange`]: the ranks of a distributed network as MPI processes (the `mpi`
//! feature, through the `mpi` crate over the system's Open MPI or MPICH).

use mpi::Count;
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use super::exchange::SpikeExchange;
use crate::Error;

/// A [`SpikeExchange`] over an MPI communicator: [`all_gather`](SpikeExchange::all_gather)
/// is an `MPI_Allgather` of the word counts and an `MPI_Allgatherv` of the words.
///
/// MPI is initialised once per process, by the program (`neurostore::distributed::mpi`
/// re-exports the `mpi` crate, so no second dependency is needed); only the thread that
/// initialised it may call the exchange, which is where a `DistributedGraph` steps.
///
/// ```no_run
/// use neurostore::distributed::{DistributedGraph, MpiExchange, mpi};
///
/// let universe = mpi::initialize().expect("MPI initialises once");
/// let network = DistributedGraph::new(MpiExchange::new(universe.world()))?;
/// println!("rank {} of {}", network.rank(), network.ranks());
/// # Ok::<(), neurostore::Error>(())
/// ```
pub struct MpiExchange {
    comm: SimpleCommunicator,
}

impl MpiExchange {
    /// The exchange over `comm` (usually `universe.world()`).
    pub fn new(comm: SimpleCommunicator) -> Self {
        MpiExchange { comm }
    }

    /// The communicator.
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.comm
    }
}

impl std::fmt::Debug for MpiExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiExchange")
            .field("rank", &self.comm.rank())
            .field("ranks", &self.comm.size())
            .finish()
    }
}

impl SpikeExchange for MpiExchange {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn ranks(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_gather(&mut self, local: &[u32]) -> Result<Vec<u32>, Error> {
        // A count MPI cannot carry is sent as -1, so that every rank fails together
        // instead of the others waiting for words that never come.
        let count = Count::try_from(local.len()).unwrap_or(-1);
        let mut counts: Vec<Count> = vec![0; self.ranks()];
        self.comm.all_gather_into(&count, &mut counts[..]);
        let too_long = |what: String| Error::Exchange {
            rank: self.rank(),
            message: format!("{what}: more than an MPI count ({}) of words", Count::MAX),
        };
        if let Some(r) = counts.iter().position(|&c| c < 0) {
            return Err(too_long(format!("rank {r} sent too many spikes at once")));
        }
        let mut displs: Vec<Count> = Vec::with_capacity(counts.len());
        let mut total: Count = 0;
        for &c in &counts {
            displs.push(total);
            total = total
                .checked_add(c)
                .ok_or_else(|| too_long("the ranks' spikes together".to_owned()))?;
        }
        let mut words = vec![0u32; total as usize];
        let mut partition = PartitionMut::new(&mut words[..], &counts[..], &displs[..]);
        self.comm.all_gather_varcount_into(local, &mut partition);
        Ok(words)
    }
}
