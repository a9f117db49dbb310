//! The pool-wide account of bytes reserved from the OS, with its cap.

use super::sync::{AtomicUsize, Ordering};

use crate::error::OomReason;

/// Bytes reserved from the OS by all tiers of one pool, against `total_memory`.
#[derive(Debug)]
pub(crate) struct Budget {
    reserved: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            reserved: AtomicUsize::new(0),
            limit,
        }
    }

    /// Accounts for `bytes` more, or refuses if the cap would be passed.
    pub(crate) fn reserve(&self, bytes: usize) -> Result<(), OomReason> {
        let mut cur = self.reserved.load(Ordering::Relaxed);
        loop {
            let next = match cur.checked_add(bytes) {
                Some(n) if n <= self.limit => n,
                _ => {
                    return Err(OomReason::MemoryCap {
                        limit: self.limit,
                        reserved: cur,
                    });
                }
            };
            match self.reserved.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back `bytes` reserved earlier.
    pub(crate) fn release(&self, bytes: usize) {
        self.reserved.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> Option<usize> {
        (self.limit != usize::MAX).then_some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_cap_and_changes_nothing() {
        let b = Budget::new(100);
        b.reserve(60).unwrap();
        assert_eq!(
            b.reserve(41),
            Err(OomReason::MemoryCap {
                limit: 100,
                reserved: 60
            })
        );
        assert_eq!(b.reserved(), 60);
        b.reserve(40).unwrap();
        b.release(100);
        assert_eq!(b.reserved(), 0);
        assert_eq!(Budget::new(usize::MAX).limit(), None);
    }
}
