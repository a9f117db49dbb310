//! [`AllocFlags`]: what [`HierarchicalPool::allocate_with`](super::HierarchicalPool::allocate_with)
//! does beyond serving a layout.

use std::ops::{BitOr, BitOrAssign};

use crate::error::Error;

/// Requests for one allocation beyond its layout, combined with `|`, for
/// [`HierarchicalPool::allocate_with`](super::HierarchicalPool::allocate_with).
///
/// ```
/// use std::alloc::Layout;
/// use neurostore::{AllocFlags, HierarchicalPool, PoolConfig};
///
/// let pool = HierarchicalPool::new(PoolConfig::default())?;
/// let layout = Layout::from_size_align(8 << 20, 4096).unwrap();
/// let block = pool.allocate_with(layout, AllocFlags::ZEROED | AllocFlags::HUGE_PAGES)?;
/// // SAFETY: the block is 8 MiB long and zeroed.
/// assert!(unsafe { block.as_ref() }.iter().all(|&b| b == 0));
/// // SAFETY: allocated above with this layout.
/// unsafe { pool.deallocate(block.cast(), layout) };
///
/// // Flags read from elsewhere (a file, another language) are checked.
/// assert_eq!(AllocFlags::from_bits(1)?, AllocFlags::ZEROED);
/// assert!(AllocFlags::from_bits(1 << 9).is_err());
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocFlags(u32);

impl AllocFlags {
    /// No request: [`allocate_with`](super::HierarchicalPool::allocate_with) is
    /// [`allocate`](super::HierarchicalPool::allocate).
    pub const NONE: AllocFlags = AllocFlags(0);
    /// The whole block reads as zeros. Memory the OS handed over and nobody has written
    /// since (a fresh mapping, the untouched part of a large arena) is known to be zero
    /// and is not written again; other blocks are zeroed by the pool.
    pub const ZEROED: AllocFlags = AllocFlags(1);
    /// Takes the block from the shared tier under its lock instead of this thread's
    /// cache, so that a thread that allocates once in a while does not fill a cache
    /// with a batch of blocks it will not use. Freeing the block is unchanged. Blocks of
    /// the large tier never go through a cache, so for them this changes nothing.
    pub const BYPASS_THREAD_CACHE: AllocFlags = AllocFlags(2);
    /// Asks the OS to back the block with transparent huge pages (`MADV_HUGEPAGE` on
    /// Linux; elsewhere a hint that is not acted on), which removes most TLB misses from
    /// random access to a large block. Only for layouts the large tier serves: for any
    /// other layout [`allocate_with`](super::HierarchicalPool::allocate_with) returns
    /// [`Error::InvalidArgument`].
    pub const HUGE_PAGES: AllocFlags = AllocFlags(4);

    const KNOWN: u32 = 0b111;

    /// The flags as bits (`ZEROED` = 1, `BYPASS_THREAD_CACHE` = 2, `HUGE_PAGES` = 4).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The flags of `bits`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the bits that are no flag; nothing is made.
    pub fn from_bits(bits: u32) -> Result<AllocFlags, Error> {
        let unknown = bits & !Self::KNOWN;
        if unknown != 0 {
            return Err(Error::invalid_argument(
                "flags",
                format!(
                    "bits {unknown:#x} of {bits:#x} name no allocation flag (known: \
                     ZEROED = 1, BYPASS_THREAD_CACHE = 2, HUGE_PAGES = 4)"
                ),
            ));
        }
        Ok(AllocFlags(bits))
    }

    /// True when every flag of `other` is set in `self`.
    pub const fn contains(self, other: AllocFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for AllocFlags {
    type Output = AllocFlags;

    fn bitor(self, other: AllocFlags) -> AllocFlags {
        AllocFlags(self.0 | other.0)
    }
}

impl BitOrAssign for AllocFlags {
    fn bitor_assign(&mut self, other: AllocFlags) {
        self.0 |= other.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_and_unknown_bits_are_refused() {
        for bits in 0..8 {
            assert_eq!(AllocFlags::from_bits(bits).unwrap().bits(), bits);
        }
        for bits in [8, 1 << 31, u32::MAX] {
            let err = AllocFlags::from_bits(bits).unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument { name: "flags", .. }),
                "{err}"
            );
        }
        let both = AllocFlags::ZEROED | AllocFlags::HUGE_PAGES;
        assert!(
            both.contains(AllocFlags::ZEROED) && !both.contains(AllocFlags::BYPASS_THREAD_CACHE)
        );
        let mut f = AllocFlags::NONE;
        f |= AllocFlags::BYPASS_THREAD_CACHE;
        assert_eq!(f.bits(), 2);
    }
}
