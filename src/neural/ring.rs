//! Spike input in flight: one ring buffer of future steps per neuron.
//!
//! Two arrays (excitatory and inhibitory input, pA) of `slots × stride` values, slot-major:
//! slot `s` holds, for every neuron column `c < stride`, the input that neuron receives in
//! the steps `t` with `t % slots == s`. A neuron's column is its handle's slot index, which
//! moving objects (defragmentation) never changes. Slot-major layout makes the read of one
//! step a sequential walk and its clearing one `fill`.

use crate::Error;
use crate::error::OomReason;

/// The most slots a ring may have: the longest delay, in steps, plus one.
pub(crate) const MAX_RING_SLOTS: usize = 1 << 20;

/// The shape of a [`SpikeRing`]: neuron columns per slot, and slots.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingGeometry {
    stride: usize,
    slots: u64,
}

impl RingGeometry {
    /// The position of `column`'s input `offset` steps after `now` (`offset` is clamped
    /// to the ring's span), or `None` for a column outside the ring or an unshaped ring.
    #[inline]
    pub(crate) fn position(&self, now: u64, offset: u64, column: usize) -> Option<usize> {
        if column >= self.stride || self.slots == 0 {
            return None;
        }
        let offset = offset.min(self.slots - 1);
        Some(((now + offset) % self.slots) as usize * self.stride + column)
    }
}

#[derive(Debug, Default)]
pub(crate) struct SpikeRing {
    ex: Vec<f32>,
    inh: Vec<f32>,
    stride: usize,
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
    /// Neuron columns per slot.
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    /// Steps the ring spans.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Gives the ring at least `stride` columns and exactly `slots` slots (2 ..=
    /// [`MAX_RING_SLOTS`]). Input pending `k` steps after `now` moves to `remap(k)` steps
    /// after `now` (clamped into the new ring; offset 0 stays 0). On error nothing changes.
    pub(crate) fn reshape(
        &mut self,
        stride: usize,
        slots: usize,
        now: u64,
        remap: impl Fn(usize) -> usize,
    ) -> Result<(), Error> {
        debug_assert!((2..=MAX_RING_SLOTS).contains(&slots));
        let len = stride.checked_mul(slots).ok_or(Error::OutOfMemory {
            requested: usize::MAX,
            align: align_of::<f32>(),
            reason: OomReason::LayoutTooLarge,
        })?;
        let mut ex = zeroed(len)?;
        let mut inh = zeroed(len)?;
        if self.slots > 0 {
            let columns = self.stride.min(stride);
            for k in 0..self.slots {
                let to = if k == 0 {
                    0
                } else {
                    remap(k).clamp(1, slots - 1)
                };
                let from_start = self.slot_start_of(now + k as u64);
                let to_start = ((now + to as u64) % slots as u64) as usize * stride;
                for (src, dst) in [(&self.ex, &mut ex), (&self.inh, &mut inh)] {
                    let from = &src[from_start..from_start + columns];
                    for (d, s) in dst[to_start..to_start + columns].iter_mut().zip(from) {
                        *d += *s;
                    }
                }
            }
        }
        self.ex = ex;
        self.inh = inh;
        self.stride = stride;
        self.slots = slots;
        Ok(())
    }

    /// The largest `k < slots` such that some input is pending `k` steps after `now`.
    pub(crate) fn last_pending_offset(&self, now: u64) -> Option<usize> {
        (0..self.slots).rev().find(|&k| {
            let start = self.slot_start_of(now + k as u64);
            let range = start..start + self.stride;
            self.ex[range.clone()]
                .iter()
                .chain(&self.inh[range])
                .any(|&x| x != 0.0)
        })
    }

    fn slot_start_of(&self, step: u64) -> usize {
        (step % self.slots as u64) as usize * self.stride
    }

    /// The excitatory and inhibitory input of every column in `step`.
    pub(crate) fn slot(&self, step: u64) -> (&[f32], &[f32]) {
        if self.slots == 0 {
            return (&[], &[]);
        }
        let start = self.slot_start_of(step);
        let range = start..start + self.stride;
        (&self.ex[range.clone()], &self.inh[range])
    }

    /// Zeroes the input of `step`, once it has been delivered.
    pub(crate) fn clear_slot(&mut self, step: u64) {
        if self.slots == 0 {
            return;
        }
        let start = self.slot_start_of(step);
        self.ex[start..start + self.stride].fill(0.0);
        self.inh[start..start + self.stride].fill(0.0);
    }

    /// Zeroes every pending input of `column` (its neuron was removed).
    pub(crate) fn clear_column(&mut self, column: usize) {
        if column >= self.stride {
            return;
        }
        for slot in 0..self.slots {
            self.ex[slot * self.stride + column] = 0.0;
            self.inh[slot * self.stride + column] = 0.0;
        }
    }

    /// The ring's shape, detached from its storage (so positions can be computed while
    /// the ring is being written).
    pub(crate) fn geometry(&self) -> RingGeometry {
        RingGeometry {
            stride: self.stride,
            slots: self.slots as u64,
        }
    }

    /// Adds a spike of `weight` at `position`: to the excitatory input when `weight >= 0`,
    /// else to the inhibitory one.
    #[inline]
    pub(crate) fn add(&mut self, position: usize, weight: f32) {
        let target = if weight >= 0.0 {
            &mut self.ex
        } else {
            &mut self.inh
        };
        if let Some(x) = target.get_mut(position) {
            *x += weight;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_keeps_its_arrival_step_through_a_reshape() {
        let mut ring = SpikeRing::default();
        ring.reshape(4, 3, 0, |k| k).unwrap();
        let now = 7;
        let p = ring.geometry().position(now, 2, 1).unwrap();
        ring.add(p, 5.0);
        ring.add(ring.geometry().position(now, 1, 3).unwrap(), -2.0);
        ring.reshape(10, 8, now, |k| k).unwrap();
        assert_eq!(ring.slot(now + 2).0[1], 5.0);
        assert_eq!(ring.slot(now + 1).1[3], -2.0);
        assert_eq!(ring.slot(now).0.iter().sum::<f32>(), 0.0);
        // Halving the step doubles the offsets.
        ring.reshape(10, 8, now, |k| 2 * k).unwrap();
        assert_eq!(ring.slot(now + 4).0[1], 5.0);
        assert_eq!(ring.slot(now + 2).1[3], -2.0);
        assert_eq!(ring.last_pending_offset(now), Some(4));
        ring.clear_column(1);
        assert_eq!(ring.last_pending_offset(now), Some(2));
        assert_eq!(ring.slot(now + 4).0[1], 0.0);
        ring.clear_slot(now + 2);
        assert_eq!(ring.slot(now + 2).1[3], 0.0);
    }

    #[test]
    fn impossible_sizes_are_errors_that_change_nothing() {
        let mut ring = SpikeRing::default();
        ring.reshape(2, 2, 0, |k| k).unwrap();
        assert!(ring.reshape(usize::MAX, 2, 0, |k| k).is_err());
        assert!(ring.reshape(usize::MAX / 4, 2, 0, |k| k).is_err());
        assert_eq!((ring.stride(), ring.slots()), (2, 2));
    }
}
