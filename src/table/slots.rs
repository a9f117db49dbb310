//! A table's slot array: one 8-byte [`Slot`] per handle index, in a pool [`Span`].
//!
//! A live slot holds an odd version and its object's place; a vacant one an even version
//! and the index of the next vacant slot (0 ends the list: slot 0 is the sentinel, which
//! is never live). The array lives in a span rather than a `Vec` so that it is the pool's
//! memory, grows without copying, and gets huge pages once it is large: a lookup reads
//! one slot and then one object, and both reads stay clear of TLB misses.
//!
//! Invariants: `len` slots are initialised; slot 0, once there, is `(0, 0)`; the first
//! `committed` bytes of the span are counted in the pool, and `len * 8 <= committed`.

use bytemuck::{Pod, Zeroable};

use crate::error::Error;
use crate::pool::HierarchicalPool;
use crate::pool::span::Span;

/// One slot: the version a handle must carry, and the place of the object (live) or the
/// next vacant slot (vacant).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct Slot {
    /// Odd while the slot names an object.
    pub version: u32,
    /// The object's place (live), or the next vacant slot's index (vacant).
    pub place: u32,
}

impl Slot {
    /// True while the slot names an object.
    #[inline]
    pub(crate) fn is_live(&self) -> bool {
        self.version & 1 == 1
    }
}

/// The most slots a table holds: index `u32::MAX` is the null handle's.
pub(crate) const MAX_SLOTS: usize = u32::MAX as usize;

/// Slots are committed in steps of this many bytes.
const COMMIT_STEP: usize = 64 << 10;

/// The slot array; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct SlotArray {
    span: Span,
    len: usize,
}

impl SlotArray {
    /// Slots held, the sentinel included (0 before the first).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of pool memory the array holds.
    pub(crate) fn committed(&self) -> usize {
        self.span.committed()
    }

    #[inline]
    fn ptr(&self) -> *mut Slot {
        self.span.base().as_ptr().cast()
    }

    /// Slot `index`, if the array holds it.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&Slot> {
        // SAFETY: the first `len` slots are initialised (invariant); the shared borrow
        // keeps the span from moving or changing.
        (index < self.len).then(|| unsafe { &*self.ptr().add(index) })
    }

    /// Slot `index`, mutably, if the array holds it.
    #[inline]
    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut Slot> {
        // SAFETY: as in `get`, with the exclusive borrow.
        (index < self.len).then(|| unsafe { &mut *self.ptr().add(index) })
    }

    /// Every slot, the sentinel first.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[Slot] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the first `len` slots are initialised and the borrow keeps them.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }

    /// Every slot, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [Slot] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `as_slice`, with the exclusive borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }

    /// Makes room for `additional` more slots (and the sentinel, if missing) without
    /// taking more memory later; on error nothing changes.
    pub(crate) fn reserve(
        &mut self,
        pool: &HierarchicalPool,
        additional: usize,
    ) -> Result<(), Error> {
        let want = self
            .len
            .max(1)
            .checked_add(additional)
            .filter(|&n| n <= MAX_SLOTS)
            .ok_or(Error::TableFull {
                places: MAX_SLOTS as u64,
            })?;
        let bytes = want * std::mem::size_of::<Slot>();
        if bytes <= self.span.committed() {
            return Ok(());
        }
        let to = bytes.div_ceil(COMMIT_STEP) * COMMIT_STEP;
        self.span.reserve(to)?;
        self.span.commit(pool, to - self.span.committed())
    }

    /// Appends `slot` (after the sentinel, which comes first in an empty array) and
    /// returns its index.
    #[inline]
    pub(crate) fn push(&mut self, pool: &HierarchicalPool, slot: Slot) -> Result<u32, Error> {
        if (self.len.max(1) + 1) * std::mem::size_of::<Slot>() > self.span.committed() {
            self.reserve(pool, 1)?;
        }
        if self.len == 0 {
            // SAFETY: committed room for two slots at least (reserved above).
            unsafe { self.ptr().write(Slot::default()) };
            self.len = 1;
        }
        let index = self.len;
        // SAFETY: `index * 8 + 8 <= committed` (reserved above), inside the mapping.
        unsafe { self.ptr().add(index).write(slot) };
        self.len += 1;
        Ok(index as u32)
    }

    /// Sets the length to `len` slots, all `(0, 0)` (the sentinel and vacant slots of
    /// version 0), for a restore to fill in. On error nothing changes.
    pub(crate) fn reset_zeroed(
        &mut self,
        pool: &HierarchicalPool,
        len: usize,
    ) -> Result<(), Error> {
        self.reserve(pool, len.saturating_sub(self.len.max(1)))?;
        // SAFETY: `len` slots fit in the committed bytes (reserved above); `Slot` is Pod,
        // so zero bytes are valid slots.
        unsafe { std::ptr::write_bytes(self.ptr(), 0, len) };
        self.len = len;
        Ok(())
    }

    /// Gives every byte back to the pool; the array is empty afterwards.
    pub(crate) fn release(&mut self, pool: &HierarchicalPool) {
        // SAFETY: the exclusive borrow means no slot is borrowed; the array forgets them.
        unsafe { self.span.release(pool) };
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::default_pool;

    #[test]
    fn slots_grow_past_the_commit_steps_and_keep_their_values() {
        let pool = default_pool();
        let mut a = SlotArray::default();
        assert_eq!(a.get(0), None);
        for i in 1..100_000u32 {
            let index = a
                .push(
                    &pool,
                    Slot {
                        version: 1,
                        place: i * 3,
                    },
                )
                .unwrap();
            assert_eq!(index, i);
        }
        assert_eq!(a.len(), 100_000);
        assert_eq!(a.get(0), Some(&Slot::default()));
        assert!(
            a.as_slice()[1..]
                .iter()
                .enumerate()
                .all(|(k, s)| s.place == (k as u32 + 1) * 3)
        );
        assert_eq!(a.committed() % COMMIT_STEP, 0);
        assert!(a.committed() >= 100_000 * 8);
        a.reset_zeroed(&pool, 10).unwrap();
        assert_eq!(a.as_slice(), &[Slot::default(); 10]);
        a.release(&pool);
        assert_eq!((a.len(), a.committed()), (0, 0));
    }
}
