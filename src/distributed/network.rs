//! [`DistributedGraph`]: one rank's part of a network whose neurons are shared out
//! among ranks, stepping in lockstep with the others through a [`SpikeExchange`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::exchange::SpikeExchange;
use crate::Error;
use crate::neural::graph::{RankShare, delay_steps};
use crate::neural::{NeuralGraph, Neuron, NeuronId, NeuronParams, SynapseId};
use crate::pool::HierarchicalPool;
use crate::snapshot::SnapshotReport;

/// What the spike exchange of a [`DistributedGraph`] has cost so far, on this rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExchangeStats {
    /// Spike exchanges made: one per interval of the shortest delay (or less, at the
    /// end of a [`run`](DistributedGraph::run)).
    pub exchanges: u64,
    /// Steps whose spikes those exchanges carried.
    pub steps: u64,
    /// 4-byte words this rank sent: one per spike of its neurons, one per step.
    pub words_sent: u64,
    /// Words this rank received, every rank's (its own included).
    pub words_received: u64,
    /// Time spent in the exchange, waiting for the other ranks included.
    pub time: Duration,
}

/// One rank's part of a network shared out among ranks that step in lockstep (MPI
/// processes through `MpiExchange`, or threads through
/// [`LocalExchange`](super::LocalExchange)).
///
/// **Who holds what.** Every rank holds every neuron, so a [`NeuronId`] names the same
/// neuron on every rank; the neuron of slot index `i` is *owned* by rank `i % ranks`
/// ([`owns`](Self::owns)), which alone updates it, and holds every synapse that ends on
/// it, with the input in flight to it. Ranks exchange only spikes: which neurons fired
/// in which step. A neuron's state is current on its owner only; the other ranks keep
/// the copy they were given (its parameters, and its population for the user).
///
/// **Same calls on every rank.** A program builds the network with the same calls on
/// every rank, in the same order: `add_neurons` makes the same neurons (same handles)
/// everywhere, and [`connect`](Self::connect) / [`connect_many`](Self::connect_many)
/// keep the synapses whose target the rank owns and skip the others (after checking all
/// of them, so that every rank returns the same errors). Synapses are local: a
/// [`SynapseId`] is valid on the rank that made it.
///
/// **Same spikes.** [`run`](Self::run) and [`step`](Self::step) give, on every rank,
/// exactly the spikes a single [`NeuralGraph`] built with the same calls gives (bit for
/// bit, same steps, same neurons), for any number of ranks and threads: a neuron's
/// input is summed in the same order, by source step, source and synapse order. `run`
/// exchanges once per interval of the shortest delay (spikes fired in that interval
/// arrive after it), `step` once per step.
///
/// **Checkpoints.** [`save`](Self::save) writes one file per rank into a directory and
/// [`load`](Self::load) reads them back with the same number of ranks.
///
/// **Costs.** A rank holds its share of the synapses (the graph's 16-byte records and
/// their handle machinery) and, for every neuron of the network, its 64-byte record, its
/// entry in the graph's outgoing runs and a column of the step's input: about 120 bytes
/// a neuron on every rank, whatever the number of ranks (9 MB for the full microcircuit's
/// 77,169 neurons, 0.5 GB for 4 million). Building with the same calls means each rank
/// checks every synapse of a batch and keeps its own. Each exchange sends one word per
/// spike of the rank's neurons and one per step of the interval.
///
/// ```
/// use neurostore::distributed::{DistributedGraph, LocalExchange};
/// use neurostore::neural::{NeuralGraph, NeuronParams};
///
/// let driven = NeuronParams { i_e: 500.0, ..NeuronParams::default() };
/// // One process...
/// let mut single = NeuralGraph::new();
/// let ns = single.add_neurons(30, &driven)?;
/// for (k, &a) in ns.iter().enumerate() {
///     single.connect(a, ns[(k * 7 + 1) % 30], 200.0, 1.0)?;
/// }
/// let mut spikes = Vec::new();
/// for _ in 0..300 {
///     spikes.push(single.step(0.1)?.to_vec());
/// }
/// // ...and three ranks (threads here, MPI processes with `MpiExchange`), same calls.
/// std::thread::scope(|s| {
///     for exchange in LocalExchange::group(3) {
///         let spikes = &spikes;
///         s.spawn(move || {
///             let mut net = DistributedGraph::new(exchange).unwrap();
///             let ns = net.add_neurons(30, &driven).unwrap();
///             for (k, &a) in ns.iter().enumerate() {
///                 net.connect(a, ns[(k * 7 + 1) % 30], 200.0, 1.0).unwrap();
///             }
///             let mut seen = Vec::new();
///             net.run(300, 0.1, |_, fired| seen.push(fired.to_vec())).unwrap();
///             assert_eq!(&seen, spikes); // every rank sees every spike, as one process
///         });
///     }
/// });
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Debug)]
pub struct DistributedGraph<X: SpikeExchange> {
    graph: NeuralGraph,
    exchange: X,
    share: RankShare,
    /// The shortest delay of this rank's synapses (ms; `None` for none), once computed:
    /// forgotten by every change to the synapses.
    shortest_delay: Option<Option<f32>>,
    stats: ExchangeStats,
}

/// The words of a `u64`, low first, for the exchange.
fn words_of(value: u64) -> [u32; 2] {
    [value as u32, (value >> 32) as u32]
}

fn u64_of(words: &[u32]) -> u64 {
    u64::from(words[0]) | u64::from(words[1]) << 32
}

/// The neurons the exchange's rank owns.
fn share_of(exchange: &impl SpikeExchange) -> Result<RankShare, Error> {
    let (rank, ranks) = (exchange.rank(), exchange.ranks());
    match (u32::try_from(rank), u32::try_from(ranks)) {
        (Ok(rank), Ok(ranks)) if rank < ranks => Ok(RankShare { rank, ranks }),
        _ => Err(Error::invalid_argument(
            "exchange",
            format!(
                "rank {rank} of {ranks}: a rank must be below the number of ranks, at most 2^32"
            ),
        )),
    }
}

/// Every rank's `values` (the same number from each), in rank order.
fn gather_u64s(exchange: &mut impl SpikeExchange, values: &[u64]) -> Result<Vec<Vec<u64>>, Error> {
    let local: Vec<u32> = values.iter().flat_map(|&v| words_of(v)).collect();
    let words = exchange.all_gather(&local)?;
    if words.len() != local.len() * exchange.ranks() {
        return Err(Error::Exchange {
            rank: exchange.rank(),
            message: format!(
                "expected {} words from each of {} ranks, got {} in all",
                local.len(),
                exchange.ranks(),
                words.len()
            ),
        });
    }
    Ok(words
        .chunks(local.len().max(1))
        .take(exchange.ranks())
        .map(|rank| rank.chunks(2).map(u64_of).collect())
        .collect())
}

/// After a step every rank tried: `Ok` on every rank when `local` is `Ok` everywhere;
/// else this rank's own error, or one naming the first rank that failed.
fn agree<T>(
    exchange: &mut impl SpikeExchange,
    local: Result<T, Error>,
    what: &str,
) -> Result<T, Error> {
    let failed = gather_u64s(exchange, &[u64::from(local.is_err())])?;
    let value = local?;
    match failed.iter().position(|f| f[0] != 0) {
        None => Ok(value),
        Some(rank) => Err(Error::Exchange {
            rank: exchange.rank(),
            message: format!("rank {rank} could not {what}"),
        }),
    }
}

impl<X: SpikeExchange> DistributedGraph<X> {
    /// This rank's part of an empty network, its tables in the process-wide default
    /// pool. Not a collective: ranks may make theirs at different times.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the exchange's rank is not below its rank count.
    pub fn new(exchange: X) -> Result<Self, Error> {
        Self::over(NeuralGraph::new(), exchange)
    }

    /// [`new`](Self::new), the tables taking memory from `pool`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_pool(exchange: X, pool: Arc<HierarchicalPool>) -> Result<Self, Error> {
        Self::over(NeuralGraph::with_pool(pool), exchange)
    }

    fn over(mut graph: NeuralGraph, exchange: X) -> Result<Self, Error> {
        let share = share_of(&exchange)?;
        graph.set_share(Some(share));
        Ok(DistributedGraph {
            graph,
            exchange,
            share,
            shortest_delay: None,
            stats: ExchangeStats::default(),
        })
    }

    /// This rank, `0..ranks()`.
    pub fn rank(&self) -> usize {
        self.share.rank as usize
    }

    /// How many ranks share the network.
    pub fn ranks(&self) -> usize {
        self.share.ranks as usize
    }

    /// Whether this rank owns `n` (updates it and holds the synapses that end on it).
    /// Every neuron has exactly one owner: the rank of its slot index modulo the ranks.
    pub fn owns(&self, n: NeuronId) -> bool {
        self.share.owns(n.index())
    }

    /// This rank's part: every neuron (current on their owners only), the synapses that
    /// end on this rank's neurons, the step count and the last step's spikes (every
    /// rank's).
    pub fn graph(&self) -> &NeuralGraph {
        &self.graph
    }

    /// The exchange, for a program's own collectives between steps.
    pub fn exchange_mut(&mut self) -> &mut X {
        &mut self.exchange
    }

    /// Gives back the exchange, this rank's part dropped: to
    /// [`load`](Self::load) a checkpoint with it, or to make a new network.
    pub fn into_exchange(self) -> X {
        self.exchange
    }

    /// What the spike exchange has cost this rank so far.
    pub fn exchange_stats(&self) -> ExchangeStats {
        self.stats
    }

    /// Adds a neuron, on every rank (call it on every rank). See
    /// [`NeuralGraph::add_neuron`].
    ///
    /// # Errors
    /// As [`NeuralGraph::add_neuron`].
    pub fn add_neuron(&mut self, params: &NeuronParams) -> Result<NeuronId, Error> {
        self.graph.add_neuron(params)
    }

    /// Adds `count` neurons, on every rank (call it on every rank). See
    /// [`NeuralGraph::add_neurons`].
    ///
    /// # Errors
    /// As [`NeuralGraph::add_neurons`].
    pub fn add_neurons(
        &mut self,
        count: usize,
        params: &NeuronParams,
    ) -> Result<Vec<NeuronId>, Error> {
        self.graph.add_neurons(count, params)
    }

    /// Every neuron with its state, to set initial conditions: set them alike on every
    /// rank (the owner's copy is the one that steps).
    pub fn neurons_mut(&mut self) -> impl Iterator<Item = (NeuronId, &mut Neuron)> + '_ {
        self.graph.neurons_mut()
    }

    /// The state of `n` to set an initial condition: set it alike on every rank (the
    /// owner's copy is the one that steps). `None` when `n` is stale.
    pub fn neuron_mut(&mut self, n: NeuronId) -> Option<&mut Neuron> {
        self.graph.neuron_mut(n)
    }

    /// Makes room for `additional` more synapses on this rank (see
    /// [`NeuralGraph::reserve_synapse_table`]).
    ///
    /// # Errors
    /// As [`NeuralGraph::reserve_synapse_table`].
    pub fn reserve_synapse_table(&mut self, additional: usize) -> Result<(), Error> {
        self.graph.reserve_synapse_table(additional)
    }

    /// Collects this rank's store (see [`NeuralGraph::collect`]): an audit that no
    /// synapse names a removed neuron.
    pub fn collect(&mut self) -> crate::gc::GcReport {
        self.graph.collect()
    }

    /// Connects `pre` to `post` on the rank that owns `post`, returning the synapse
    /// there and `None` on the others. Checked as [`NeuralGraph::connect`] on every rank.
    ///
    /// # Errors
    /// As [`NeuralGraph::connect`], on every rank alike; nothing changes then.
    pub fn connect(
        &mut self,
        pre: NeuronId,
        post: NeuronId,
        weight: f32,
        delay: f32,
    ) -> Result<Option<SynapseId>, Error> {
        self.graph
            .check_batch(&[pre], &[post], &[weight], &[delay])?;
        if !self.owns(post) {
            return Ok(None);
        }
        self.shortest_delay = None;
        self.graph.connect(pre, post, weight, delay).map(Some)
    }

    /// Connects many pairs at once (see [`NeuralGraph::connect_many`]): this rank keeps
    /// the synapses whose target it owns, in the order given. Returns how many it made.
    ///
    /// # Errors
    /// As [`NeuralGraph::connect_many`], for the whole batch on every rank alike;
    /// nothing changes then.
    pub fn connect_many(
        &mut self,
        pre: &[NeuronId],
        post: &[NeuronId],
        weight: &[f32],
        delay: &[f32],
    ) -> Result<usize, Error> {
        self.graph.check_batch(pre, post, weight, delay)?;
        self.shortest_delay = None;
        if self.ranks() == 1 {
            return self.graph.connect_many(pre, post, weight, delay);
        }
        let share = self.share;
        let mine: Vec<usize> = (0..post.len())
            .into_par_iter()
            .filter(|&k| share.owns(post[k].index()))
            .collect();
        let pick = |k: &usize| (pre[*k], post[*k], weight[*k], delay[*k]);
        let (p, q): (Vec<NeuronId>, Vec<NeuronId>) =
            mine.par_iter().map(|k| (pick(k).0, pick(k).1)).unzip();
        let (w, d): (Vec<f32>, Vec<f32>) = mine.par_iter().map(|k| (pick(k).2, pick(k).3)).unzip();
        self.graph.connect_many(&p, &q, &w, &d)
    }

    /// Removes every live neuron of `neurons`, on every rank (call it on every rank with
    /// the same neurons), with every synapse of this rank that leaves or enters one.
    /// Returns the synapses removed here. See [`NeuralGraph::remove_neurons`].
    pub fn remove_neurons(&mut self, neurons: &[NeuronId]) -> usize {
        self.shortest_delay = None;
        self.graph.remove_neurons(neurons)
    }

    /// Compacts this rank's tables (see [`NeuralGraph::defragment`]). Handles stay valid.
    ///
    /// # Errors
    /// As [`NeuralGraph::defragment`].
    pub fn defragment(&mut self) -> Result<crate::store::StoreDefragReport, Error> {
        self.graph.defragment()
    }

    /// Sends a spike from each of `sources` as if it fired now (call it on every rank with
    /// the same sources): see [`NeuralGraph::inject_spikes`]. Returns this rank's events.
    ///
    /// # Errors
    /// As [`NeuralGraph::inject_spikes`].
    pub fn inject_spikes(&mut self, sources: &[NeuronId], dt: f64) -> Result<usize, Error> {
        self.graph.inject_spikes(sources, dt)
    }

    /// Advances the network one step of `dt` ms and returns every rank's spikes of the
    /// step, in ascending slot-index order: [`run`](Self::run) for one step. A
    /// collective.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn step(&mut self, dt: f64) -> Result<&[NeuronId], Error> {
        self.run(1, dt, |_, _| ())?;
        Ok(self.graph.last_spikes())
    }

    /// This rank's shortest delay in steps of `dt` (`u64::MAX` with no synapses).
    fn shortest_delay_steps(&mut self, dt: f64) -> u64 {
        let graph = &self.graph;
        let shortest = *self
            .shortest_delay
            .get_or_insert_with(|| graph.shortest_delay_ms());
        shortest.map_or(u64::MAX, |ms| delay_steps(ms, dt))
    }
}

impl<X: SpikeExchange> DistributedGraph<X> {
    /// Advances the network `steps` steps of `dt` ms, calling `on_step(step, spikes)`
    /// after each with every rank's spikes of that step (ascending slot-index order),
    /// the same on every rank and the same as a single [`NeuralGraph`]'s. A collective:
    /// every rank calls it with the same `steps` and `dt`.
    ///
    /// Spikes are exchanged once per interval of the shortest delay of any synapse in
    /// steps (they arrive after it): each rank steps its own neurons through the
    /// interval, then all gather the interval's spikes and deliver them in step order.
    /// So `on_step` for a step comes after the later steps of its interval have been
    /// integrated.
    ///
    /// # Errors
    /// A `dt` that [`NeuralGraph::step`] refuses, on any rank, is an error on every rank
    /// and nothing changes. [`Error::Exchange`] when the ranks are at different steps, use
    /// different `dt`s, or the exchange fails; after an exchange failure the network is
    /// between steps and should be dropped.
    pub fn run(
        &mut self,
        steps: u64,
        dt: f64,
        mut on_step: impl FnMut(u64, &[NeuronId]),
    ) -> Result<(), Error> {
        let interval = self.start_run(dt)?;
        let mut done = 0;
        let mut outbox = Vec::new();
        let mut spikes = Vec::new();
        while done < steps {
            let span = interval.min(steps - done);
            let first = self.graph.current_step();
            outbox.clear();
            for _ in 0..span {
                self.graph.advance(dt)?;
                let fired = self.graph.last_spikes();
                outbox.push(fired.len() as u32);
                outbox.extend(fired.iter().map(|n| n.index()));
            }
            let words = self.exchange_spikes(&outbox)?;
            let per_step = self.split_by_step(&words, span)?;
            for (k, indices) in (0..span).zip(per_step) {
                self.handles_of(indices, &mut spikes)?;
                self.graph.deliver(&spikes, dt, first + k);
                on_step(first + k, &spikes);
            }
            self.stats.steps += span;
            self.graph.set_last_spikes(&spikes);
            done += span;
        }
        Ok(())
    }

    /// Readies every rank for steps of `dt` and agrees on the exchange interval: the
    /// shortest delay of any rank in steps.
    fn start_run(&mut self, dt: f64) -> Result<u64, Error> {
        let ready = self.graph.prepare(dt);
        let state = [
            u64::from(ready.is_err()),
            self.graph.current_step(),
            dt.to_bits(),
            self.shortest_delay_steps(dt),
        ];
        // One gather: whether each rank can step, where it is, and its shortest delay.
        let all = gather_u64s(&mut self.exchange, &state)?;
        ready?;
        let exchange_error = |message: String| Error::Exchange {
            rank: self.rank(),
            message,
        };
        if let Some(rank) = all.iter().position(|s| s[0] != 0) {
            return Err(exchange_error(format!(
                "rank {rank} cannot step by dt = {dt} ms"
            )));
        }
        if let Some((rank, other)) = all.iter().enumerate().find(|(_, s)| s[1..3] != state[1..3]) {
            return Err(exchange_error(format!(
                "this rank is at step {} with dt = {dt} ms, rank {rank} at step {} with dt = {} ms",
                state[1],
                other[1],
                f64::from_bits(other[2])
            )));
        }
        Ok(all.iter().map(|s| s[3]).min().unwrap_or(1).max(1))
    }

    /// Gathers every rank's `outbox` (per step: a count, then slot indices).
    fn exchange_spikes(&mut self, outbox: &[u32]) -> Result<Vec<u32>, Error> {
        let start = Instant::now();
        let words = self.exchange.all_gather(outbox)?;
        self.stats.time += start.elapsed();
        self.stats.exchanges += 1;
        self.stats.words_sent += outbox.len() as u64;
        self.stats.words_received += words.len() as u64;
        Ok(words)
    }

    fn malformed(&self, what: &str) -> Error {
        Error::Exchange {
            rank: self.rank(),
            message: format!("the gathered spikes are malformed: {what}"),
        }
    }

    /// The gathered `words` of an interval of `span` steps (each rank's, per step a
    /// count and slot indices) as the slot indices that fired in each step, every rank's.
    fn split_by_step(&self, words: &[u32], span: u64) -> Result<Vec<Vec<u32>>, Error> {
        let mut per_step = vec![Vec::new(); span as usize];
        let mut rest = words;
        for _ in 0..self.ranks() {
            for step in &mut per_step {
                let (&count, tail) = rest
                    .split_first()
                    .ok_or_else(|| self.malformed("they end early"))?;
                let ids = tail
                    .get(..count as usize)
                    .ok_or_else(|| self.malformed("they end early"))?;
                step.extend_from_slice(ids);
                rest = &tail[count as usize..];
            }
        }
        if !rest.is_empty() {
            return Err(self.malformed("words are left over"));
        }
        Ok(per_step)
    }

    /// The live neurons of slot indices `indices`, in ascending order, into `spikes`.
    fn handles_of(&self, mut indices: Vec<u32>, spikes: &mut Vec<NeuronId>) -> Result<(), Error> {
        indices.sort_unstable();
        spikes.clear();
        let neurons = self.graph.neurons();
        for i in indices {
            let n = neurons
                .live_handle(i)
                .ok_or_else(|| self.malformed("a spike of no live neuron"))?;
            spikes.push(n);
        }
        Ok(())
    }
}

impl<X: SpikeExchange> DistributedGraph<X> {
    /// The file of rank `rank` of `ranks` in a checkpoint directory.
    pub fn checkpoint_path(dir: impl AsRef<Path>, rank: usize, ranks: usize) -> PathBuf {
        dir.as_ref().join(format!("rank-{rank}-of-{ranks}.nsnap"))
    }

    /// Saves this rank's part into `dir` (made if missing) as
    /// [`checkpoint_path`](Self::checkpoint_path)`(dir, rank, ranks)`, atomically (see
    /// [`NeuralGraph::save`]). A collective: it succeeds on every rank only when every
    /// rank saved, so a checkpoint is whole when no rank reports an error.
    ///
    /// # Errors
    /// This rank's [`Error::Io`], or [`Error::Exchange`] naming a rank that failed.
    pub fn save(&mut self, dir: impl AsRef<Path>) -> Result<SnapshotReport, Error> {
        let path = Self::checkpoint_path(&dir, self.rank(), self.ranks());
        let saved = std::fs::create_dir_all(dir.as_ref())
            .map_err(Error::from)
            .and_then(|()| self.graph.save(&path));
        agree(&mut self.exchange, saved, "save its checkpoint")
    }

    /// Loads this rank's part from a checkpoint directory that [`save`](Self::save)
    /// wrote with as many ranks. A collective: every rank loads its own file and all check
    /// that they are at the same step with the same neurons.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the directory holds no file for this rank (saved
    /// with another number of ranks?), what [`NeuralGraph::load`] returns for the file,
    /// or [`Error::Exchange`] naming a rank that failed or disagrees.
    pub fn load(exchange: X, dir: impl AsRef<Path>) -> Result<Self, Error> {
        let mut exchange = exchange;
        let (rank, ranks) = (exchange.rank(), exchange.ranks());
        let path = Self::checkpoint_path(&dir, rank, ranks);
        let loaded = if path.is_file() {
            NeuralGraph::load(&path)
        } else {
            Err(Error::invalid_argument(
                "dir",
                format!(
                    "{} holds no checkpoint of rank {rank} of {ranks} (was it saved with another \
                     number of ranks?)",
                    dir.as_ref().display()
                ),
            ))
        };
        let graph = agree(&mut exchange, loaded, "load its checkpoint")?;
        let state = [graph.current_step(), graph.neuron_count() as u64];
        let all = gather_u64s(&mut exchange, &state)?;
        if let Some(other) = all.iter().position(|s| s[..] != state) {
            return Err(Error::Exchange {
                rank,
                message: format!(
                    "this rank's checkpoint is at step {} with {} neurons, rank {other}'s at \
                     step {} with {}",
                    state[0], state[1], all[other][0], all[other][1]
                ),
            });
        }
        Self::over(graph, exchange)
    }

    /// Every rank's `value`, in rank order: a collective for a program's own figures
    /// (memory per rank, synapses in all).
    ///
    /// # Errors
    /// [`Error::Exchange`] when the exchange fails.
    pub fn all_gather_u64(&mut self, value: u64) -> Result<Vec<u64>, Error> {
        Ok(gather_u64s(&mut self.exchange, &[value])?
            .into_iter()
            .map(|v| v[0])
            .collect())
    }
}
