//! How the ranks of a distributed network talk: the [`SpikeExchange`] trait, one
//! collective (an all-gather of `u32` words), and [`LocalExchange`], ranks that are
//! threads of one process.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::Error;

/// The one collective a [`DistributedGraph`](super::DistributedGraph) needs: every rank
/// gives some `u32` words and gets every rank's words back, in rank order.
///
/// Implemented by [`LocalExchange`] (ranks that are threads of one process) and, with the
/// crate's `mpi` feature, by `MpiExchange` (ranks that are MPI processes). Every rank
/// must make the same calls in the same order, as with any MPI collective.
///
/// ```
/// use neurostore::distributed::{LocalExchange, SpikeExchange};
///
/// let words = LocalExchange::run(3, |mut x| {
///     x.all_gather(&vec![x.rank() as u32; x.rank()]).unwrap()
/// });
/// for got in &words {
///     assert_eq!(got, &vec![1, 2, 2]); // rank 0 gave none, rank 1 one word, rank 2 two
/// }
/// ```
pub trait SpikeExchange {
    /// This rank, `0..ranks()`.
    fn rank(&self) -> usize;

    /// How many ranks there are (at least one).
    fn ranks(&self) -> usize;

    /// Every rank's `local` words, concatenated in rank order. A collective: it returns
    /// once every rank has called it.
    ///
    /// # Errors
    /// [`Error::Exchange`] when the collective cannot complete (a rank left, a message
    /// too long for the transport).
    fn all_gather(&mut self, local: &[u32]) -> Result<Vec<u32>, Error>;
}

/// Ranks that are threads of one process, exchanging through shared memory: for tests
/// of a distributed program, and to run one without MPI. [`group`](Self::group) makes
/// every rank's exchange; move each to the thread that plays that rank, or let
/// [`run`](Self::run) start the threads.
///
/// A rank whose exchange is dropped leaves the group: a collective that waits for it
/// then fails with [`Error::Exchange`] on the others instead of waiting for ever.
#[derive(Debug)]
pub struct LocalExchange {
    rank: usize,
    ranks: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<Round>,
    turn: Condvar,
}

/// One all-gather at a time: ranks deposit their words, the last one joins them, and
/// every rank takes the result before the next round may begin.
#[derive(Debug, Default)]
struct Round {
    /// Each rank's words of the round being gathered.
    deposits: Vec<Option<Vec<u32>>>,
    /// The joined words of the last round, while ranks are still taking them.
    result: Arc<Vec<u32>>,
    /// Ranks yet to take `result`; 0 when a new round may begin.
    readers_left: usize,
    /// Counts completed rounds, so a waiting rank knows when its round is done.
    completed: u64,
    /// Ranks that dropped their exchange.
    left: usize,
}

impl LocalExchange {
    /// One exchange per rank, `ranks` of them, rank `r` at index `r`. `ranks` of 0 makes
    /// none.
    pub fn group(ranks: usize) -> Vec<LocalExchange> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Round {
                deposits: vec![None; ranks],
                ..Round::default()
            }),
            turn: Condvar::new(),
        });
        (0..ranks)
            .map(|rank| LocalExchange {
                rank,
                ranks,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    /// Runs `f` once per rank, `ranks` of them, each on a thread of its own with that
    /// rank's exchange, and returns what each returned, in rank order. A panic on a rank
    /// drops its exchange (so the others' collectives fail instead of waiting) and is
    /// resumed here once every rank has finished.
    ///
    /// ```
    /// use neurostore::distributed::{LocalExchange, SpikeExchange};
    ///
    /// let sums = LocalExchange::run(3, |mut x| {
    ///     let words = x.all_gather(&[x.rank() as u32 + 1]).unwrap();
    ///     words.iter().sum::<u32>()
    /// });
    /// assert_eq!(sums, vec![6, 6, 6]);
    /// ```
    pub fn run<R: Send>(ranks: usize, f: impl Fn(LocalExchange) -> R + Sync) -> Vec<R> {
        std::thread::scope(|s| {
            let f = &f;
            let threads: Vec<_> = Self::group(ranks)
                .into_iter()
                .map(|x| s.spawn(move || f(x)))
                .collect();
            let results: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        // A rank that panicked while holding the lock left the round as it was: every
        // field is still consistent, so the others go on (and see it leave on drop).
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, round: MutexGuard<'a, Round>) -> MutexGuard<'a, Round> {
        self.shared
            .turn
            .wait(round)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn left_error(&self, left: usize) -> Error {
        Error::Exchange {
            rank: self.rank,
            message: format!(
                "{left} of {} ranks left the group before this all-gather completed",
                self.ranks
            ),
        }
    }
}

impl SpikeExchange for LocalExchange {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_gather(&mut self, local: &[u32]) -> Result<Vec<u32>, Error> {
        let mut round = self.lock();
        // The last round's result must be taken by every rank before a new one begins.
        while round.readers_left > 0 {
            round = self.wait(round);
        }
        if round.left > 0 {
            return Err(self.left_error(round.left));
        }
        round.deposits[self.rank] = Some(local.to_vec());
        let mine = round.completed;
        if round.deposits.iter().all(Option::is_some) {
            let joined: Vec<u32> = round
                .deposits
                .iter_mut()
                .flat_map(|d| d.take())
                .flatten()
                .collect();
            round.result = Arc::new(joined);
            round.readers_left = self.ranks;
            round.completed += 1;
            self.shared.turn.notify_all();
        }
        while round.completed == mine {
            if round.left > 0 {
                round.deposits[self.rank] = None;
                return Err(self.left_error(round.left));
            }
            round = self.wait(round);
        }
        let words = Vec::clone(&round.result);
        round.readers_left -= 1;
        if round.readers_left == 0 {
            round.result = Arc::default();
            self.shared.turn.notify_all();
        }
        Ok(words)
    }
}

impl Drop for LocalExchange {
    fn drop(&mut self) {
        let mut round = self.lock();
        round.left += 1;
        self.shared.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_follow_each_other_in_order() {
        let results = LocalExchange::run(4, |mut x| {
            (0..200u32)
                .map(|round| {
                    let words: Vec<u32> = (0..(round as usize + x.rank()) % 3)
                        .map(|k| round * 100 + x.rank() as u32 * 10 + k as u32)
                        .collect();
                    x.all_gather(&words).unwrap()
                })
                .collect::<Vec<_>>()
        });
        for round in 0..200u32 {
            let expected: Vec<u32> = (0..4)
                .flat_map(|r| {
                    (0..(round as usize + r) % 3)
                        .map(move |k| round * 100 + r as u32 * 10 + k as u32)
                })
                .collect();
            for per_rank in &results {
                assert_eq!(per_rank[round as usize], expected, "round {round}");
            }
        }
    }

    #[test]
    fn a_panic_on_one_rank_reaches_the_caller_after_the_others_fail() {
        let failed = std::sync::atomic::AtomicUsize::new(0);
        let caught = std::panic::catch_unwind(|| {
            LocalExchange::run(3, |mut x| {
                if x.rank() == 1 {
                    panic!("rank 1 gives up");
                }
                if x.all_gather(&[1]).is_err() {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        });
        let panic = caught.expect_err("the rank's panic comes back");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"rank 1 gives up"));
        assert_eq!(
            failed.into_inner(),
            2,
            "both other ranks saw the collective fail"
        );
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_instead_of_hanging() {
        let results = LocalExchange::run(3, |mut x| {
            if x.rank() == 1 {
                return Ok(Vec::new()); // leaves without gathering
            }
            x.all_gather(&[7])
        });
        assert!(results[1].is_ok());
        for r in [0, 2] {
            assert!(
                matches!(&results[r], Err(Error::Exchange { rank, .. }) if *rank == r),
                "{:?}",
                results[r]
            );
        }
    }

    #[test]
    fn one_rank_gathers_its_own_words() {
        let mut x = LocalExchange::group(1).pop().unwrap();
        assert_eq!((x.rank(), x.ranks()), (0, 1));
        assert_eq!(x.all_gather(&[1, 2, 3]).unwrap(), vec![1, 2, 3]);
        assert_eq!(x.all_gather(&[]).unwrap(), Vec::<u32>::new());
    }
}
