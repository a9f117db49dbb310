//! A binary buddy allocator over an abstract range of offsets.
//!
//! [`BuddyAllocator`] manages `[0, capacity)` in power-of-two blocks between a minimum
//! and the whole range. It never touches the memory it manages: all of its metadata
//! (free lists, block orders) lives in side arrays indexed by minimum-block number, so
//! the same code serves host arenas (the large tier adds the arena's base address) and,
//! later, device memory.
//!
//! Allocation takes the smallest free block of a large enough order, splitting larger
//! blocks in halves as needed; freeing merges a block with its buddy while the buddy is
//! free and whole. Both are O(log(capacity / min_block)). A block of order `k` starts at
//! a multiple of `2^k`, so alignment up to the block size comes free.

use std::alloc::System;

use allocator_api2::vec::Vec as SysVec;

const NONE: u32 = u32::MAX;

/// Why a [`BuddyAllocator`] refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuddyError {
    /// `capacity` or `min_block` is not a power of two, or `min_block > capacity`, or the
    /// range has more than 2^31 minimum blocks.
    #[error(
        "capacity {capacity} and min_block {min_block} must be powers of two with min_block <= capacity"
    )]
    BadGeometry {
        /// The capacity asked for.
        capacity: u64,
        /// The minimum block asked for.
        min_block: u64,
    },
    /// The offset does not start a block this allocator handed out (or it was freed already).
    #[error("offset {0:#x} does not start an allocated block")]
    NotAllocated(u64),
    /// The allocator's bookkeeping (10 bytes per minimum block) could not be allocated.
    #[error(
        "the bookkeeping of {blocks} minimum blocks ({bytes} bytes) could not be allocated: \
         use a larger min_block or a smaller capacity"
    )]
    MetadataUnavailable {
        /// Minimum blocks in the range (`capacity / min_block`).
        blocks: u64,
        /// Bytes of bookkeeping they need.
        bytes: u64,
    },
}

/// A binary buddy allocator over offsets `[0, capacity)`.
///
/// ```
/// use neurostore::pool::BuddyAllocator;
///
/// let mut buddy = BuddyAllocator::new(1 << 20, 4096).unwrap();
/// let a = buddy.allocate(5000, 1).unwrap(); // rounded up to an 8 KiB block
/// let b = buddy.allocate(4096, 4096).unwrap();
/// assert_eq!(buddy.block_size(a), Some(8192));
/// assert_ne!(a, b);
/// buddy.deallocate(a).unwrap();
/// buddy.deallocate(b).unwrap();
/// assert!(buddy.is_empty());
/// assert!(buddy.deallocate(b).is_err()); // double free is reported, not followed
/// ```
pub struct BuddyAllocator {
    capacity: u64,
    min_shift: u32,
    max_order: u32,
    /// Head of the free list of each order (order 0 = `min_block`), as a block index.
    heads: [u32; 64],
    next: SysVec<u32, System>,
    prev: SysVec<u32, System>,
    /// `order + 1` where a free block starts, else 0.
    free_order: SysVec<u8, System>,
    /// `order + 1` where an allocated block starts, else 0.
    alloc_order: SysVec<u8, System>,
    allocated_bytes: u64,
    allocations: u64,
}

impl std::fmt::Debug for BuddyAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuddyAllocator")
            .field("capacity", &self.capacity)
            .field("min_block", &self.min_block())
            .field("allocated_bytes", &self.allocated_bytes)
            .field("allocations", &self.allocations)
            .finish()
    }
}

impl BuddyAllocator {
    /// A buddy allocator over `[0, capacity)` with blocks of at least `min_block` bytes.
    /// Its bookkeeping takes 10 bytes per minimum block (`capacity / min_block` of them),
    /// allocated and written now.
    ///
    /// # Errors
    /// [`BuddyError::BadGeometry`] when `capacity` or `min_block` is not a power of two,
    /// `min_block > capacity`, or the range holds more than 2^31 minimum blocks;
    /// [`BuddyError::MetadataUnavailable`] when the system allocator refuses the
    /// bookkeeping.
    ///
    /// ```
    /// use neurostore::pool::{BuddyAllocator, BuddyError};
    ///
    /// let buddy = BuddyAllocator::new(1 << 30, 4096)?; // 2^18 blocks: 2.5 MiB of bookkeeping
    /// assert_eq!(buddy.capacity(), 1 << 30);
    /// // 2^50 blocks of one byte: more than 2^31, refused before anything is allocated.
    /// assert!(matches!(BuddyAllocator::new(1 << 50, 1), Err(BuddyError::BadGeometry { .. })));
    /// # Ok::<(), BuddyError>(())
    /// ```
    pub fn new(capacity: u64, min_block: u64) -> Result<Self, BuddyError> {
        let bad = BuddyError::BadGeometry {
            capacity,
            min_block,
        };
        if !capacity.is_power_of_two() || !min_block.is_power_of_two() || min_block > capacity {
            return Err(bad);
        }
        let min_shift = min_block.trailing_zeros();
        let max_order = capacity.trailing_zeros() - min_shift;
        if max_order > 31 {
            return Err(bad);
        }
        let n = 1usize << max_order;
        let unavailable = |_| BuddyError::MetadataUnavailable {
            blocks: n as u64,
            bytes: n as u64 * 10,
        };
        let mut me = BuddyAllocator {
            capacity,
            min_shift,
            max_order,
            heads: [NONE; 64],
            next: filled(n, NONE).map_err(unavailable)?,
            prev: filled(n, NONE).map_err(unavailable)?,
            free_order: filled(n, 0).map_err(unavailable)?,
            alloc_order: filled(n, 0).map_err(unavailable)?,
            allocated_bytes: 0,
            allocations: 0,
        };
        me.push(0, max_order);
        Ok(me)
    }

    /// Frees every block at once: afterwards the whole range is one free block, as
    /// after [`new`](Self::new), with the bookkeeping it already has (nothing is
    /// allocated). O(capacity / min_block).
    ///
    /// ```
    /// use neurostore::pool::BuddyAllocator;
    ///
    /// let mut buddy = BuddyAllocator::new(1 << 20, 4096)?;
    /// let a = buddy.allocate(10_000, 8).unwrap();
    /// buddy.allocate(300_000, 4096).unwrap();
    /// buddy.clear();
    /// assert!(buddy.is_empty());
    /// assert_eq!(buddy.largest_free(), 1 << 20);
    /// assert!(buddy.deallocate(a).is_err()); // ended by the clear
    /// # Ok::<(), neurostore::pool::BuddyError>(())
    /// ```
    pub fn clear(&mut self) {
        self.heads = [NONE; 64];
        self.next.fill(NONE);
        self.prev.fill(NONE);
        self.free_order.fill(0);
        self.alloc_order.fill(0);
        self.allocated_bytes = 0;
        self.allocations = 0;
        self.push(0, self.max_order);
    }

    /// Calls `f(offset, size)` for every allocated block, lowest offset first.
    pub(crate) fn for_each_allocated(&self, mut f: impl FnMut(u64, u64)) {
        for (i, &order) in self.alloc_order.iter().enumerate() {
            if order != 0 {
                f(
                    (i as u64) << self.min_shift,
                    1u64 << (self.min_shift + u32::from(order) - 1),
                );
            }
        }
    }

    /// The size of the managed range.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The smallest block handed out.
    pub fn min_block(&self) -> u64 {
        1 << self.min_shift
    }

    /// Bytes in allocated blocks (block sizes, not requested sizes).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes
    }

    /// Number of blocks currently allocated.
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// True when no block is allocated (the whole range is one free block).
    pub fn is_empty(&self) -> bool {
        self.allocations == 0
    }

    /// The size of the largest free block, 0 when none.
    pub fn largest_free(&self) -> u64 {
        (0..=self.max_order)
            .rev()
            .find(|&o| self.heads[o as usize] != NONE)
            .map_or(0, |o| self.order_bytes(o))
    }

    /// The block size that [`allocate`](Self::allocate) would use for this request.
    pub fn block_size_for(&self, size: u64, align: u64) -> Option<u64> {
        self.order_for(size, align).map(|o| self.order_bytes(o))
    }

    /// Allocates a block of at least `size` bytes whose offset is a multiple of `align`
    /// (a power of two). `None` when no free block is large enough.
    pub fn allocate(&mut self, size: u64, align: u64) -> Option<u64> {
        let want = self.order_for(size, align)?;
        let have = (want..=self.max_order).find(|&o| self.heads[o as usize] != NONE)?;
        let idx = self.heads[have as usize];
        self.unlink(idx, have);
        // Split down, returning the upper halves to their free lists.
        let mut order = have;
        while order > want {
            order -= 1;
            self.push(idx + (1 << order), order);
        }
        self.alloc_order[idx as usize] = want as u8 + 1;
        self.allocated_bytes += self.order_bytes(want);
        self.allocations += 1;
        Some((idx as u64) << self.min_shift)
    }

    /// The size of the allocated block starting at `offset`, if there is one.
    pub fn block_size(&self, offset: u64) -> Option<u64> {
        let idx = self.index_of(offset)?;
        match self.alloc_order[idx as usize] {
            0 => None,
            o => Some(self.order_bytes(o as u32 - 1)),
        }
    }

    /// Frees the block starting at `offset` and returns its size. An offset that does not
    /// start an allocated block (never allocated, freed already, inside a block) is
    /// refused and changes nothing.
    pub fn deallocate(&mut self, offset: u64) -> Result<u64, BuddyError> {
        let idx = self
            .index_of(offset)
            .ok_or(BuddyError::NotAllocated(offset))?;
        let order = match self.alloc_order[idx as usize] {
            0 => return Err(BuddyError::NotAllocated(offset)),
            o => o as u32 - 1,
        };
        self.alloc_order[idx as usize] = 0;
        let size = self.order_bytes(order);
        self.allocated_bytes -= size;
        self.allocations -= 1;
        let (mut idx, mut order) = (idx, order);
        while order < self.max_order {
            let buddy = idx ^ (1 << order);
            if self.free_order[buddy as usize] != order as u8 + 1 {
                break;
            }
            self.unlink(buddy, order);
            idx &= !(1 << order);
            order += 1;
        }
        self.push(idx, order);
        Ok(size)
    }

    fn order_bytes(&self, order: u32) -> u64 {
        1u64 << (order + self.min_shift)
    }

    fn order_for(&self, size: u64, align: u64) -> Option<u32> {
        if !align.is_power_of_two() {
            return None;
        }
        let need = size.max(align).max(1).checked_next_power_of_two()?;
        let order = need.trailing_zeros().saturating_sub(self.min_shift);
        (order <= self.max_order).then_some(order)
    }

    fn index_of(&self, offset: u64) -> Option<u32> {
        if offset >= self.capacity || offset & (self.min_block() - 1) != 0 {
            return None;
        }
        Some((offset >> self.min_shift) as u32)
    }

    fn push(&mut self, idx: u32, order: u32) {
        let head = self.heads[order as usize];
        self.next[idx as usize] = head;
        self.prev[idx as usize] = NONE;
        if head != NONE {
            self.prev[head as usize] = idx;
        }
        self.heads[order as usize] = idx;
        self.free_order[idx as usize] = order as u8 + 1;
    }

    fn unlink(&mut self, idx: u32, order: u32) {
        let (n, p) = (self.next[idx as usize], self.prev[idx as usize]);
        if p == NONE {
            self.heads[order as usize] = n;
        } else {
            self.next[p as usize] = n;
        }
        if n != NONE {
            self.prev[n as usize] = p;
        }
        self.free_order[idx as usize] = 0;
    }
}

/// `n` copies of `value`, or the system allocator's refusal.
fn filled<T: Copy>(
    n: usize,
    value: T,
) -> Result<SysVec<T, System>, allocator_api2::collections::TryReserveError> {
    let mut v = SysVec::new_in(System);
    v.try_reserve_exact(n)?;
    v.resize(n, value);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_geometry() {
        assert!(BuddyAllocator::new(1000, 16).is_err());
        assert!(BuddyAllocator::new(1024, 24).is_err());
        assert!(BuddyAllocator::new(16, 1024).is_err());
    }

    #[test]
    fn splits_and_merges_back_to_one_block() {
        let mut b = BuddyAllocator::new(1 << 16, 1 << 10).unwrap();
        let offs: Vec<u64> = (0..64).map(|_| b.allocate(1024, 1).unwrap()).collect();
        assert!(b.allocate(1, 1).is_none());
        assert_eq!(b.allocated_bytes(), 1 << 16);
        for (i, &o) in offs.iter().enumerate().rev().step_by(2) {
            assert_eq!(b.deallocate(o), Ok(1024), "block {i}");
        }
        for &o in offs.iter().step_by(2) {
            b.deallocate(o).unwrap();
        }
        assert!(b.is_empty());
        assert_eq!(b.largest_free(), 1 << 16);
    }

    #[test]
    fn alignment_and_rounding() {
        let mut b = BuddyAllocator::new(1 << 20, 4096).unwrap();
        let a = b.allocate(1, 1).unwrap();
        let c = b.allocate(4096, 1 << 16).unwrap();
        assert_eq!(c % (1 << 16), 0);
        assert_eq!(b.block_size(c), Some(1 << 16));
        assert_eq!(b.block_size(a), Some(4096));
        assert!(b.allocate(1 << 21, 1).is_none());
        assert!(b.allocate(16, 3).is_none());
    }

    #[test]
    fn bad_frees_change_nothing() {
        let mut b = BuddyAllocator::new(1 << 16, 1 << 10).unwrap();
        let a = b.allocate(2048, 1).unwrap();
        assert_eq!(
            b.deallocate(a + 1024),
            Err(BuddyError::NotAllocated(a + 1024))
        );
        assert_eq!(
            b.deallocate(1 << 20),
            Err(BuddyError::NotAllocated(1 << 20))
        );
        assert_eq!(b.deallocate(a + 1), Err(BuddyError::NotAllocated(a + 1)));
        assert_eq!(b.allocated_bytes(), 2048);
        b.deallocate(a).unwrap();
        assert_eq!(b.deallocate(a), Err(BuddyError::NotAllocated(a)));
        assert!(b.is_empty());
    }
}
