//! Spike input in flight: one ring buffer of future steps per neuron.
//!
//! The neuron columns are cut into blocks of [`BLOCK_COLUMNS`]; each block holds two
//! arrays (excitatory and inhibitory input, pA) of `slots × BLOCK_COLUMNS` values,
//! slot-major: slot `s` holds, for each column of the block, the input that neuron
//! receives in the steps `t` with `t % slots == s`. A neuron's column is its handle's slot
//! index, which moving objects (defragmentation) never changes. Reading one step is a
//! sequential walk of each block's row and clearing it one `fill` per block; and the
//! blocks split the columns into disjoint parts that threads fill at once
//! ([`SpikeRing::blocks_mut`]).

use crate::Error;
use crate::error::OomReason;
use crate::snapshot::RingImage;

/// The most slots a ring may have: the longest delay, in steps, plus one.
pub(crate) const MAX_RING_SLOTS: usize = 1 << 20;

/// Neuron columns per block.
pub(crate) const BLOCK_COLUMNS: usize = 1024;

/// The shape of a [`SpikeRing`]: columns and slots.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingGeometry {
    columns: usize,
    slots: u64,
}

impl RingGeometry {
    /// The slots after `now`, for the events of one step.
    pub(crate) fn after(&self, now: u64) -> StepSlots {
        StepSlots {
            base: if self.slots == 0 {
                0
            } else {
                (now % self.slots) as usize
            },
            slots: self.slots as usize,
            columns: self.columns,
        }
    }
}

/// The ring's slots seen from one step ([`RingGeometry::after`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepSlots {
    base: usize,
    slots: usize,
    columns: usize,
}

impl StepSlots {
    /// The slot of input `offset` steps after the step this was made for (`offset`
    /// clamped to the ring's span), or `None` for a column outside the ring or an
    /// unshaped ring.
    #[inline]
    pub(crate) fn slot(&self, offset: u64, column: usize) -> Option<usize> {
        if column >= self.columns || self.slots == 0 {
            return None;
        }
        let offset = offset.min(self.slots as u64 - 1) as usize;
        let slot = self.base + offset;
        Some(if slot >= self.slots {
            slot - self.slots
        } else {
            slot
        })
    }
}

/// The input of one step ([`SpikeRing::inputs`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepInputs<'a> {
    blocks: &'a [RingBlock],
    row: usize,
}

impl StepInputs<'_> {
    /// The excitatory and inhibitory input of `column` (none past the ring's columns).
    #[inline]
    pub(crate) fn of(&self, column: usize) -> (f32, f32) {
        let Some(block) = self.blocks.get(column / BLOCK_COLUMNS) else {
            return (0.0, 0.0);
        };
        let at = self.row + column % BLOCK_COLUMNS;
        (block.ex[at], block.inh[at])
    }
}

/// One block of columns: excitatory and inhibitory input, slot-major.
#[derive(Debug, Default)]
pub(crate) struct RingBlock {
    ex: Vec<f32>,
    inh: Vec<f32>,
}

impl RingBlock {
    /// Adds `weight` to `offset` (column within the block) in `slot`: to the excitatory
    /// input when `weight >= 0`, else to the inhibitory one.
    #[inline]
    pub(crate) fn add(&mut self, slot: usize, offset: usize, weight: f32) {
        let at = slot * BLOCK_COLUMNS + offset;
        let target = if weight >= 0.0 {
            &mut self.ex
        } else {
            &mut self.inh
        };
        if let Some(x) = target.get_mut(at) {
            *x += weight;
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct SpikeRing {
    blocks: Vec<RingBlock>,
    slots: usize,
}

/// A zeroed `Vec<f32>` of `len` values, or the error that it could not be allocated.
fn zeroed(len: usize) -> Result<Vec<f32>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        requested: len.saturating_mul(size_of::<f32>()),
        align: align_of::<f32>(),
        reason: OomReason::OsRefused,
    })?;
    v.resize(len, 0.0);
    Ok(v)
}

impl SpikeRing {
    /// Neuron columns the ring holds (a multiple of [`BLOCK_COLUMNS`]).
    pub(crate) fn stride(&self) -> usize {
        self.blocks.len() * BLOCK_COLUMNS
    }

    /// Steps the ring spans.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Gives the ring at least `columns` columns and exactly `slots` slots (2 ..=
    /// [`MAX_RING_SLOTS`]). Input pending `k` steps after `now` moves to `remap(k)` steps
    /// after `now` (clamped into the new ring; offset 0 stays 0). On error nothing changes.
    pub(crate) fn reshape(
        &mut self,
        columns: usize,
        slots: usize,
        now: u64,
        remap: impl Fn(usize) -> usize,
    ) -> Result<(), Error> {
        debug_assert!((2..=MAX_RING_SLOTS).contains(&slots));
        let too_large = || Error::OutOfMemory {
            requested: usize::MAX,
            align: align_of::<f32>(),
            reason: OomReason::LayoutTooLarge,
        };
        let count = columns.div_ceil(BLOCK_COLUMNS);
        let len = BLOCK_COLUMNS.checked_mul(slots).ok_or_else(too_large)?;
        count
            .checked_mul(len)
            .and_then(|n| n.checked_mul(2 * size_of::<f32>()))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(too_large)?;
        let mut blocks = Vec::new();
        blocks
            .try_reserve_exact(count)
            .map_err(|_| Error::OutOfMemory {
                requested: count.saturating_mul(size_of::<RingBlock>()),
                align: align_of::<RingBlock>(),
                reason: OomReason::OsRefused,
            })?;
        for _ in 0..count {
            blocks.push(RingBlock {
                ex: zeroed(len)?,
                inh: zeroed(len)?,
            });
        }
        for (old, new) in self.blocks.iter().zip(&mut blocks) {
            for k in 0..self.slots {
                let to = if k == 0 {
                    0
                } else {
                    remap(k).clamp(1, slots - 1)
                };
                let from = ((now + k as u64) % self.slots as u64) as usize * BLOCK_COLUMNS;
                let to = ((now + to as u64) % slots as u64) as usize * BLOCK_COLUMNS;
                for (src, dst) in [(&old.ex, &mut new.ex), (&old.inh, &mut new.inh)] {
                    let from = &src[from..from + BLOCK_COLUMNS];
                    for (d, s) in dst[to..to + BLOCK_COLUMNS].iter_mut().zip(from) {
                        *d += *s;
                    }
                }
            }
        }
        self.blocks = blocks;
        self.slots = slots;
        Ok(())
    }

    /// The largest `k < slots` such that some input is pending `k` steps after `now`.
    pub(crate) fn last_pending_offset(&self, now: u64) -> Option<usize> {
        (0..self.slots).rev().find(|&k| {
            let start = self.row_start(now + k as u64);
            let range = start..start + BLOCK_COLUMNS;
            self.blocks.iter().any(|b| {
                b.ex[range.clone()]
                    .iter()
                    .chain(&b.inh[range.clone()])
                    .any(|&x| x != 0.0)
            })
        })
    }

    fn row_start(&self, step: u64) -> usize {
        (step % self.slots as u64) as usize * BLOCK_COLUMNS
    }

    /// The excitatory and inhibitory input `column` receives in `step` (none past the
    /// ring's columns).
    #[inline]
    #[cfg(any(test, feature = "cuda"))]
    pub(crate) fn input(&self, step: u64, column: usize) -> (f32, f32) {
        self.inputs(step).of(column)
    }

    /// The input of every column in `step`.
    pub(crate) fn inputs(&self, step: u64) -> StepInputs<'_> {
        StepInputs {
            blocks: &self.blocks,
            row: if self.slots == 0 {
                0
            } else {
                self.row_start(step)
            },
        }
    }

    /// Zeroes the input of `step`, once it has been delivered.
    pub(crate) fn clear_slot(&mut self, step: u64) {
        if self.slots == 0 {
            return;
        }
        let start = self.row_start(step);
        for b in &mut self.blocks {
            b.ex[start..start + BLOCK_COLUMNS].fill(0.0);
            b.inh[start..start + BLOCK_COLUMNS].fill(0.0);
        }
    }

    /// Zeroes every pending input of `column` (its neuron was removed).
    pub(crate) fn clear_column(&mut self, column: usize) {
        let Some(block) = self.blocks.get_mut(column / BLOCK_COLUMNS) else {
            return;
        };
        for slot in 0..self.slots {
            let at = slot * BLOCK_COLUMNS + column % BLOCK_COLUMNS;
            block.ex[at] = 0.0;
            block.inh[at] = 0.0;
        }
    }

    /// The ring's shape, detached from its storage.
    pub(crate) fn geometry(&self) -> RingGeometry {
        RingGeometry {
            columns: self.stride(),
            slots: self.slots as u64,
        }
    }

    /// Adds a spike of `weight` to `column` in `slot` (from
    /// [`RingGeometry::slot`]): to the excitatory input when `weight >= 0`, else to the
    /// inhibitory one.
    #[inline]
    pub(crate) fn add(&mut self, slot: usize, column: usize, weight: f32) {
        if let Some(block) = self.blocks.get_mut(column / BLOCK_COLUMNS) {
            block.add(slot, column % BLOCK_COLUMNS, weight);
        }
    }

    /// The ring's storage as a checkpoint holds it.
    pub(crate) fn image(&self) -> RingImage<&[f32]> {
        RingImage {
            slots: u32::try_from(self.slots).expect("at most MAX_RING_SLOTS slots"),
            block_columns: BLOCK_COLUMNS as u32,
            blocks: self
                .blocks
                .iter()
                .map(|b| [&b.ex[..], &b.inh[..]])
                .collect(),
        }
    }

    /// The ring a checkpoint's [`image`](Self::image) describes, or what is wrong with
    /// its shape.
    pub(crate) fn from_image(image: RingImage<Vec<f32>>) -> Result<Self, String> {
        let slots = image.slots as usize;
        if image.block_columns as usize != BLOCK_COLUMNS {
            return Err(format!(
                "the ring has blocks of {} columns; this build's have {BLOCK_COLUMNS}",
                image.block_columns
            ));
        }
        let shaped = (2..=MAX_RING_SLOTS).contains(&slots);
        if !(shaped || slots == 0 && image.blocks.is_empty()) {
            return Err(format!(
                "a ring of {slots} slots and {} blocks: a ring is unshaped (0 slots, no \
                 blocks) or spans 2 to {MAX_RING_SLOTS} slots",
                image.blocks.len()
            ));
        }
        let len = slots * BLOCK_COLUMNS;
        if let Some([ex, inh]) = image
            .blocks
            .iter()
            .find(|[ex, inh]| ex.len().max(inh.len()) != len)
        {
            return Err(format!(
                "a ring block holds {} and {} values where {slots} slots take {len}",
                ex.len(),
                inh.len()
            ));
        }
        let blocks = image
            .blocks
            .into_iter()
            .map(|[ex, inh]| RingBlock { ex, inh })
            .collect();
        Ok(SpikeRing { blocks, slots })
    }

    /// The blocks of columns, in order: block `b` holds columns
    /// `b * BLOCK_COLUMNS .. (b + 1) * BLOCK_COLUMNS`.
    pub(crate) fn blocks_mut(&mut self) -> &mut [RingBlock] {
        &mut self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(ring: &mut SpikeRing, now: u64, offset: u64, column: usize, w: f32) {
        let slot = ring.geometry().after(now).slot(offset, column).unwrap();
        ring.add(slot, column, w);
    }

    #[test]
    fn input_keeps_its_arrival_step_through_a_reshape() {
        let mut ring = SpikeRing::default();
        ring.reshape(4, 3, 0, |k| k).unwrap();
        let now = 7;
        add(&mut ring, now, 2, 1, 5.0);
        add(&mut ring, now, 1, 3, -2.0);
        ring.reshape(10, 8, now, |k| k).unwrap();
        assert_eq!(ring.input(now + 2, 1).0, 5.0);
        assert_eq!(ring.input(now + 1, 3).1, -2.0);
        assert_eq!((0..10).map(|c| ring.input(now, c).0).sum::<f32>(), 0.0);
        // Halving the step doubles the offsets.
        ring.reshape(10, 8, now, |k| 2 * k).unwrap();
        assert_eq!(ring.input(now + 4, 1).0, 5.0);
        assert_eq!(ring.input(now + 2, 3).1, -2.0);
        assert_eq!(ring.last_pending_offset(now), Some(4));
        ring.clear_column(1);
        assert_eq!(ring.last_pending_offset(now), Some(2));
        assert_eq!(ring.input(now + 4, 1).0, 0.0);
        ring.clear_slot(now + 2);
        assert_eq!(ring.input(now + 2, 3).1, 0.0);
    }

    #[test]
    fn blocks_hold_their_columns() {
        let columns = 3 * BLOCK_COLUMNS + 5;
        let (mut one, mut split) = (SpikeRing::default(), SpikeRing::default());
        for r in [&mut one, &mut split] {
            r.reshape(columns, 4, 0, |k| k).unwrap();
        }
        let events: Vec<(usize, usize, f32)> = (0..500)
            .map(|k| ((k * 7919) % columns, k % 4, k as f32 - 250.0))
            .collect();
        for &(c, s, w) in &events {
            one.add(s, c, w);
        }
        let blocks = split.blocks_mut();
        assert_eq!(blocks.len(), 4);
        for &(c, s, w) in &events {
            blocks[c / BLOCK_COLUMNS].add(s, c % BLOCK_COLUMNS, w);
        }
        for c in 0..columns {
            for s in 0..4u64 {
                assert_eq!(one.input(s, c), split.input(s, c), "{c} {s}");
            }
        }
    }

    #[test]
    fn a_ring_comes_back_from_its_image() {
        let mut ring = SpikeRing::default();
        ring.reshape(BLOCK_COLUMNS + 3, 5, 0, |k| k).unwrap();
        add(&mut ring, 3, 2, BLOCK_COLUMNS + 1, 4.0);
        add(&mut ring, 3, 4, 7, -1.5);
        let image = ring.image();
        let owned = RingImage {
            slots: image.slots,
            block_columns: image.block_columns,
            blocks: image
                .blocks
                .iter()
                .map(|[e, i]| [e.to_vec(), i.to_vec()])
                .collect(),
        };
        let back = SpikeRing::from_image(owned.clone()).unwrap();
        assert_eq!((back.stride(), back.slots()), (ring.stride(), ring.slots()));
        assert_eq!(back.input(5, BLOCK_COLUMNS + 1), (4.0, 0.0));
        assert_eq!(back.input(7, 7), (0.0, -1.5));
        assert_eq!(back.last_pending_offset(3), Some(4));

        let mut one_slot = owned.clone();
        one_slot.slots = 1;
        assert!(SpikeRing::from_image(one_slot).is_err());
        let mut narrow = owned;
        narrow.block_columns = 512;
        assert!(
            SpikeRing::from_image(narrow)
                .unwrap_err()
                .contains("512 columns")
        );
    }

    #[test]
    fn impossible_sizes_are_errors_that_change_nothing() {
        let mut ring = SpikeRing::default();
        ring.reshape(2, 2, 0, |k| k).unwrap();
        assert!(ring.reshape(usize::MAX, 2, 0, |k| k).is_err());
        assert!(ring.reshape(usize::MAX / 4, 2, 0, |k| k).is_err());
        assert_eq!((ring.stride(), ring.slots()), (BLOCK_COLUMNS, 2));
    }
}
