//! Spike input in flight: the synaptic events of every future step, queued by the step
//! they arrive in.
//!
//! The ring has `slots` arrival slots (the longest delay in steps, plus one): an event
//! arriving in step `t` waits in slot `t % slots`. The neuron columns (a neuron's column
//! is its handle's slot index, which moving objects never changes) are cut into parts of
//! [`PART_COLUMNS`], and each slot keeps one queue of events per part. Queues are written
//! by one or more *senders* at once (one per share of a step's spiking neurons, each on
//! its own thread) and sealed in sender order, so that every (step, column, channel) sums
//! its events in delivery order: source step, then source, then walk order, whatever the
//! number of threads.
//!
//! Just before the neurons of step `t` read their input, [`SpikeRing::gather`] adds slot
//! `t % slots`'s events, part by part, into one dense array of the step's input
//! (excitatory and inhibitory, pA, per column) and empties the slot. Writing an event is an
//! append to one of a few hundred queue ends and reading it back a sequential read plus
//! an add into a part's input that stays in the core's cache, where a dense ring of every
//! future step (tens of megabytes for the full microcircuit) would take a cache miss per
//! event.
//!
//! The queues hold the events in flight (for the full microcircuit about 1.5 million, 12
//! MB); a queue that grows past four times its part's columns (spikes injected again and
//! again before a step, or far more events in flight than neurons) is collapsed to one
//! event per column and channel, so no queue outgrows twice a dense ring's row.
//!
//! Checkpoints hold the input in flight as the dense ring would: per block of
//! [`BLOCK_COLUMNS`] columns, an excitatory and an inhibitory array of `slots ×
//! BLOCK_COLUMNS` values, slot-major ([`SpikeRing::image`]). Each value is its events' sum
//! in delivery order, and a ring made from an image holds one event per non-zero value,
//! so that later events add to the same sums as they would have without the round trip.

use rayon::prelude::*;

use crate::Error;
use crate::error::OomReason;
use crate::snapshot::RingImage;

/// The most slots a ring may have: the longest delay, in steps, plus one.
pub(crate) const MAX_RING_SLOTS: usize = 1 << 20;

/// Neuron columns per block of a checkpoint's ring image (and the unit the ring's width
/// grows by).
pub(crate) const BLOCK_COLUMNS: usize = 1024;

/// Neuron columns per part: one part's input (8 bytes a column, 128 KiB) stays in a
/// core's L2 cache while its events are added, and a step's events go to few enough
/// queues (slots × parts per thread) that their ends stay in L1. (4096 and 8192 columns
/// were 10-15 % slower for the full microcircuit's step, 32768 about 5 %.)
const PART_COLUMNS: usize = 16 * BLOCK_COLUMNS;

/// From this many columns up, [`SpikeRing::gather`] runs its parts on rayon's threads.
const PARALLEL_COLUMNS: usize = 2 * PART_COLUMNS;

/// A queue (one slot of one part, all senders) holding more than twice this many events,
/// or twice as many as its last collapse left, is collapsed to one event per column and
/// channel ([`SpikeRing::collapse`]), so that collapses cost O(1) per event.
const COLLAPSE_EVENTS: usize = 2 * PART_COLUMNS;

/// One synaptic event in a queue: where it goes within its part's input and the weight.
#[derive(Clone, Copy, Debug)]
struct Event {
    /// The input value the event adds to, counted in `f32`s from the part's first
    /// column: twice the column within the part, plus one for the inhibitory channel.
    at: u32,
    weight: f32,
}

impl Event {
    #[inline]
    fn new(column_in_part: usize, inhibitory: bool, weight: f32) -> Self {
        debug_assert!(column_in_part < PART_COLUMNS);
        Event {
            at: (column_in_part as u32) << 1 | u32::from(inhibitory),
            weight,
        }
    }

    fn column_in_part(&self) -> usize {
        (self.at >> 1) as usize
    }

    #[cfg(test)]
    fn channel(&self) -> usize {
        (self.at & 1) as usize
    }

    /// Adds the event to its column's channel in `input`, one part's input with the
    /// channels of each column side by side: one bounds check, no decoding.
    #[inline]
    fn add_to(&self, input: &mut [f32]) {
        if let Some(x) = input.get_mut(self.at as usize) {
            *x += self.weight;
        }
    }
}

/// What one sender appended to a queue since the queue was last emptied.
#[derive(Clone, Copy, Debug)]
struct Segment {
    sender: usize,
    start: usize,
    end: usize,
}

/// The order of one (slot, part)'s events: its senders' segments, in delivery order.
#[derive(Clone, Debug, Default)]
struct Delivery {
    segments: Vec<Segment>,
    /// Per sender, how many of its queue's events segments already cover.
    sealed: Vec<usize>,
    /// The events left by the last collapse (see [`COLLAPSE_EVENTS`]).
    collapsed: usize,
}

impl Delivery {
    /// Forgets every segment: the cell's queues were emptied.
    fn clear(&mut self) {
        self.segments.clear();
        self.sealed.fill(0);
        self.collapsed = 0;
    }
}

/// The non-zero values of `inputs` (per column, excitatory and inhibitory), as (column,
/// inhibitory, value).
fn nonzero(inputs: &[[f32; 2]]) -> impl Iterator<Item = (usize, bool, f32)> + '_ {
    inputs.iter().enumerate().flat_map(|(column, input)| {
        input
            .iter()
            .enumerate()
            .filter(|(_, value)| **value != 0.0)
            .map(move |(channel, &value)| (column, channel == 1, value))
    })
}

/// A sender's queues, one per (slot, part), slot-major.
#[derive(Clone, Debug, Default)]
struct Queues(Vec<Vec<Event>>);

#[derive(Debug, Default)]
pub(crate) struct SpikeRing {
    slots: usize,
    /// Columns held: a multiple of [`BLOCK_COLUMNS`].
    stride: usize,
    senders: Vec<Queues>,
    /// Per (slot, part), slot-major.
    deliveries: Vec<Delivery>,
    /// The input of the step last gathered, per column.
    input: Vec<[f32; 2]>,
}

/// Appends one share's events to the ring, for the step a [`SpikeRing::senders`] call
/// named.
pub(crate) struct Sender<'a> {
    /// Per offset (steps after the sender's step), the queues of the slot that offset
    /// arrives in, one per part; none for an unshaped ring.
    rows: Vec<&'a mut [Vec<Event>]>,
}

impl Sender<'_> {
    /// Queues input of `weight` for `column`, `offset` steps after the step: one event
    /// of a [`row`](Self::row).
    #[cfg(test)]
    pub(crate) fn send(&mut self, offset: u64, column: usize, weight: f32) {
        self.row(offset).push(column, weight);
    }

    /// The queues of the slot `offset` steps after the sender's step (clamped to the
    /// ring's span), for the events of that delay.
    #[inline]
    pub(crate) fn row(&mut self, offset: u64) -> Row<'_> {
        let last = self.rows.len().wrapping_sub(1);
        let offset = usize::try_from(offset).map_or(last, |o| o.min(last));
        // An unshaped ring (no slots) has no rows: events pushed to it are dropped.
        Row(self.rows.get_mut(offset).map_or(&mut [], |row| &mut **row))
    }

    /// Queues `value` for `column`'s `inhibitory` or excitatory channel `offset` slots
    /// after the sender's step (`offset < slots`).
    fn queue(&mut self, offset: usize, column: usize, inhibitory: bool, value: f32) {
        if let Some(row) = self.rows.get_mut(offset) {
            push(row, column, inhibitory, value);
        }
    }
}

/// One slot's queues of a [`Sender`], from [`Sender::row`].
pub(crate) struct Row<'r>(&'r mut [Vec<Event>]);

impl Row<'_> {
    /// Queues input of `weight` for `column`: excitatory when `weight >= 0`, else
    /// inhibitory. Columns past the ring's get none.
    #[inline]
    pub(crate) fn push(&mut self, column: usize, weight: f32) {
        push(self.0, column, weight < 0.0, weight);
    }
}

/// Appends `value` for `column`'s channel to its part's queue in `row`, a slot's queues
/// (none past the ring's columns).
#[inline]
fn push(row: &mut [Vec<Event>], column: usize, inhibitory: bool, value: f32) {
    if let Some(queue) = row.get_mut(column / PART_COLUMNS) {
        let event = Event::new(column % PART_COLUMNS, inhibitory, value);
        // With the room known, the push needs no call: nothing of the walk that calls
        // this has to wait on the stack for one.
        if queue.len() < queue.capacity() {
            queue.push(event);
        } else {
            push_growing(queue, event);
        }
    }
}

/// Appends `event` to a full `queue`, which grows.
#[cold]
#[inline(never)]
fn push_growing(queue: &mut Vec<Event>, event: Event) {
    queue.push(event);
}

/// An allocation of `bytes` the system refused, or one too large to ask for.
fn out_of_memory(bytes: Option<usize>, align: usize) -> Error {
    Error::OutOfMemory {
        requested: bytes.unwrap_or(usize::MAX),
        align,
        reason: if bytes.is_some() {
            OomReason::OsRefused
        } else {
            OomReason::LayoutTooLarge
        },
    }
}

/// `len` copies of `value`, or the error that they could not be allocated.
fn filled<T: Clone>(len: usize, value: T) -> Result<Vec<T>, Error> {
    let bytes = len
        .checked_mul(size_of::<T>())
        .filter(|&n| n <= isize::MAX as usize);
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| out_of_memory(bytes, align_of::<T>()))?;
    v.resize(len, value);
    Ok(v)
}

impl SpikeRing {
    /// An empty ring of `stride` columns (a multiple of [`BLOCK_COLUMNS`]) and `slots`
    /// slots, or the error that its bookkeeping could not be allocated.
    fn shaped(stride: usize, slots: usize) -> Result<Self, Error> {
        debug_assert_eq!(stride % BLOCK_COLUMNS, 0);
        let cells = slots
            .checked_mul(stride.div_ceil(PART_COLUMNS))
            .ok_or_else(|| out_of_memory(None, align_of::<Delivery>()))?;
        Ok(SpikeRing {
            slots,
            stride,
            senders: vec![Queues(filled(cells, Vec::new())?)],
            deliveries: filled(cells, Delivery::default())?,
            input: filled(stride, [0.0; 2])?,
        })
    }

    /// Neuron columns the ring holds (a multiple of [`BLOCK_COLUMNS`]).
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    /// Steps the ring spans.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    fn parts(&self) -> usize {
        self.stride.div_ceil(PART_COLUMNS)
    }

    /// The slot of `step`.
    fn slot_of(&self, step: u64) -> usize {
        (step % self.slots as u64) as usize
    }

    /// Gives the ring at least `columns` columns and exactly `slots` slots (2 ..=
    /// [`MAX_RING_SLOTS`]). Input pending `k` steps after `now` moves to `remap(k)` steps
    /// after `now` (clamped into the new ring; offset 0 stays 0), each pending value
    /// added to its new place in order of `k`. On error nothing changes.
    pub(crate) fn reshape(
        &mut self,
        columns: usize,
        slots: usize,
        now: u64,
        remap: impl Fn(usize) -> usize,
    ) -> Result<(), Error> {
        debug_assert!((2..=MAX_RING_SLOTS).contains(&slots));
        let stride = columns
            .checked_next_multiple_of(BLOCK_COLUMNS)
            .ok_or_else(|| out_of_memory(None, align_of::<f32>()))?;
        let mut ring = SpikeRing::shaped(stride, slots)?;
        let pending = self.dense()?;
        let mut sender = ring.senders(1, now).pop().expect("one sender");
        for k in 0..self.slots {
            let to = if k == 0 {
                0
            } else {
                remap(k).clamp(1, slots - 1)
            };
            let row = self.slot_of(now + k as u64) * self.stride;
            for (column, inhibitory, value) in nonzero(&pending[row..row + self.stride]) {
                sender.queue(to, column, inhibitory, value);
            }
        }
        ring.seal(1);
        *self = ring;
        Ok(())
    }

    /// Every value of the dense ring this one stands for, `[slot * stride + column]`,
    /// each its events' sum in delivery order.
    fn dense(&self) -> Result<Vec<[f32; 2]>, Error> {
        let len = self
            .slots
            .checked_mul(self.stride)
            .ok_or_else(|| out_of_memory(None, align_of::<f32>()))?;
        let mut values = filled(len, [0.0; 2])?;
        let parts = self.parts();
        for (cell, delivery) in self.deliveries.iter().enumerate() {
            let (slot, part) = (cell / parts, cell % parts);
            let start = slot * self.stride + part * PART_COLUMNS;
            let end = (start + PART_COLUMNS).min((slot + 1) * self.stride);
            for event in self.events_of(cell, delivery) {
                event.add_to(values[start..end].as_flattened_mut());
            }
        }
        Ok(values)
    }

    /// The events of `cell`, in delivery order.
    fn events_of<'a>(
        &'a self,
        cell: usize,
        delivery: &'a Delivery,
    ) -> impl Iterator<Item = &'a Event> + 'a {
        delivery
            .segments
            .iter()
            .flat_map(move |s| &self.senders[s.sender].0[cell][s.start..s.end])
    }

    /// The largest `k < slots` such that some non-zero input is pending `k` steps after
    /// `now`.
    pub(crate) fn last_pending_offset(&self, now: u64) -> Option<usize> {
        let parts = self.parts();
        (0..self.slots).rev().find(|&k| {
            let first = self.slot_of(now + k as u64) * parts;
            self.senders.iter().any(|s| {
                s.0[first..first + parts]
                    .iter()
                    .flatten()
                    .any(|e| e.weight != 0.0)
            })
        })
    }

    /// The excitatory and inhibitory input pending for `column` in `step` (none past the
    /// ring's columns).
    #[cfg(test)]
    pub(crate) fn input(&self, step: u64, column: usize) -> (f32, f32) {
        if self.slots == 0 || column >= self.stride {
            return (0.0, 0.0);
        }
        let cell = self.slot_of(step) * self.parts() + column / PART_COLUMNS;
        let mut input = [0.0; 2];
        for event in self.events_of(cell, &self.deliveries[cell]) {
            if event.column_in_part() == column % PART_COLUMNS {
                input[event.channel()] += event.weight;
            }
        }
        (input[0], input[1])
    }

    /// The input pending in the `rows` steps from `now`, `columns` values a row (columns
    /// past the ring's get none): excitatory rows, then inhibitory rows.
    #[cfg(feature = "cuda")]
    pub(crate) fn rows_from(
        &self,
        now: u64,
        columns: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), Error> {
        let dense = self.dense()?;
        let len = self
            .slots
            .checked_mul(columns)
            .ok_or_else(|| out_of_memory(None, align_of::<f32>()))?;
        let (mut ex, mut inh) = (filled(len, 0.0)?, filled(len, 0.0)?);
        for k in 0..self.slots {
            let row = self.slot_of(now + k as u64) * self.stride;
            let held = columns.min(self.stride);
            for (c, input) in dense[row..row + held].iter().enumerate() {
                ex[k * columns + c] = input[0];
                inh[k * columns + c] = input[1];
            }
        }
        Ok((ex, inh))
    }

    /// Adds the events arriving in `now` into the step's input
    /// ([`input_of_step`](Self::input_of_step) reads it) and empties their queues.
    pub(crate) fn gather(&mut self, now: u64) {
        if self.slots == 0 {
            return;
        }
        let parts = self.parts();
        let cells = self.slot_of(now) * parts..(self.slot_of(now) + 1) * parts;
        let mut queues: Vec<Vec<&mut Vec<Event>>> = (0..parts)
            .map(|_| Vec::with_capacity(self.senders.len()))
            .collect();
        for sender in &mut self.senders {
            for (part, queue) in sender.0[cells.clone()].iter_mut().enumerate() {
                queues[part].push(queue);
            }
        }
        let deliveries = &mut self.deliveries[cells];
        if self.stride >= PARALLEL_COLUMNS {
            self.input
                .par_chunks_mut(PART_COLUMNS)
                .zip(deliveries.par_iter_mut())
                .zip(queues)
                .for_each(|((input, delivery), queues)| gather_part(input, delivery, queues));
        } else {
            self.input
                .chunks_mut(PART_COLUMNS)
                .zip(deliveries.iter_mut())
                .zip(queues)
                .for_each(|((input, delivery), queues)| gather_part(input, delivery, queues));
        }
    }

    /// The bytes the ring holds: its queues' capacity, their bookkeeping and one step's
    /// input.
    pub(crate) fn bytes(&self) -> usize {
        let queues: usize = self
            .senders
            .iter()
            .flat_map(|s| &s.0)
            .map(|q| q.capacity() * size_of::<Event>() + size_of::<Vec<Event>>())
            .sum();
        let deliveries: usize = self
            .deliveries
            .iter()
            .map(|d| {
                d.segments.capacity() * size_of::<Segment>()
                    + d.sealed.capacity() * size_of::<usize>()
                    + size_of::<Delivery>()
            })
            .sum();
        queues + deliveries + self.input.capacity() * size_of::<[f32; 2]>()
    }

    /// The input of the step last [`gather`](Self::gather)ed: per column, excitatory and
    /// inhibitory.
    pub(crate) fn input_of_step(&self) -> &[[f32; 2]] {
        &self.input
    }

    /// One sender per share of a step's events, for the step `now`: senders append to
    /// their own queues, and [`seal`](Self::seal) then orders their events sender by
    /// sender.
    pub(crate) fn senders(&mut self, shares: usize, now: u64) -> Vec<Sender<'_>> {
        let cells = self.deliveries.len();
        if self.senders.len() < shares {
            self.senders
                .resize_with(shares, || Queues(vec![Vec::new(); cells]));
        }
        let (base, parts) = (self.base_of(now), self.parts());
        self.senders[..shares]
            .iter_mut()
            .map(|q| {
                // Slot-major rows of `parts` queues, turned so that offset 0 is the
                // sender's step; an unshaped ring has none.
                let mut rows: Vec<&mut [Vec<Event>]> = if parts == 0 {
                    Vec::new()
                } else {
                    q.0.chunks_mut(parts).collect()
                };
                let turn = base.min(rows.len());
                rows.rotate_left(turn);
                Sender { rows }
            })
            .collect()
    }

    fn base_of(&self, now: u64) -> usize {
        if self.slots == 0 {
            0
        } else {
            self.slot_of(now)
        }
    }

    /// Orders what the first `shares` senders queued since the last seal after every
    /// earlier event of the same queue, sender 0's first, and collapses the queues that
    /// grew too long ([`COLLAPSE_EVENTS`]).
    pub(crate) fn seal(&mut self, shares: usize) {
        for cell in 0..self.deliveries.len() {
            let events = self.seal_cell(cell, shares);
            if events > 2 * self.deliveries[cell].collapsed.max(COLLAPSE_EVENTS) {
                self.collapse(cell);
            }
        }
    }

    /// Covers with segments what the first `shares` senders appended to `cell`'s queues
    /// since its last seal, sender 0's first, and returns the events the cell holds.
    fn seal_cell(&mut self, cell: usize, shares: usize) -> usize {
        let delivery = &mut self.deliveries[cell];
        if delivery.sealed.len() < shares {
            delivery.sealed.resize(shares, 0);
        }
        for (index, sender) in self.senders[..shares].iter().enumerate() {
            let (len, sealed) = (sender.0[cell].len(), &mut delivery.sealed[index]);
            if len > *sealed {
                delivery.segments.push(Segment {
                    sender: index,
                    start: *sealed,
                    end: len,
                });
                *sealed = len;
            }
        }
        delivery.sealed.iter().sum()
    }

    /// Replaces the events of `cell` with one per column and channel, their sum in
    /// delivery order (which later events then add to, as they would have to the events
    /// one by one): spikes injected again and again before a step keep the queue no
    /// longer than a dense ring's row.
    #[cold]
    fn collapse(&mut self, cell: usize) {
        let mut sums = vec![[0.0f32; 2]; PART_COLUMNS];
        for event in self.events_of(cell, &self.deliveries[cell]) {
            event.add_to(sums.as_flattened_mut());
        }
        for sender in &mut self.senders {
            sender.0[cell].clear();
        }
        self.deliveries[cell].clear();
        let queue = &mut self.senders[0].0[cell];
        for (column, inhibitory, value) in nonzero(&sums) {
            queue.push(Event::new(column, inhibitory, value));
        }
        self.deliveries[cell].collapsed = self.seal_cell(cell, 1);
    }

    /// Zeroes every pending input of the columns for which `removed` is true (their
    /// neurons were removed). An event keeps its place with weight 0, which adds nothing
    /// to any sum.
    pub(crate) fn clear_columns(&mut self, removed: impl Fn(usize) -> bool + Sync) {
        let parts = self.parts().max(1);
        self.senders.par_iter_mut().for_each(|sender| {
            for (cell, queue) in sender.0.iter_mut().enumerate() {
                let first = cell % parts * PART_COLUMNS;
                for event in queue {
                    if removed(first + event.column_in_part()) {
                        event.weight = 0.0;
                    }
                }
            }
        });
    }

    /// The input in flight as a checkpoint holds it: the dense ring, block by block.
    pub(crate) fn image(&self) -> Result<RingImage<Vec<f32>>, Error> {
        let dense = self.dense()?;
        let len = self.slots * BLOCK_COLUMNS;
        let mut blocks = Vec::new();
        blocks
            .try_reserve_exact(self.stride / BLOCK_COLUMNS)
            .map_err(|_| out_of_memory(None, align_of::<f32>()))?;
        for first in (0..self.stride).step_by(BLOCK_COLUMNS) {
            let (mut ex, mut inh) = (filled(len, 0.0)?, filled(len, 0.0)?);
            for slot in 0..self.slots {
                let row = &dense[slot * self.stride + first..][..BLOCK_COLUMNS];
                for (c, input) in row.iter().enumerate() {
                    ex[slot * BLOCK_COLUMNS + c] = input[0];
                    inh[slot * BLOCK_COLUMNS + c] = input[1];
                }
            }
            blocks.push([ex, inh]);
        }
        Ok(RingImage {
            slots: u32::try_from(self.slots).expect("at most MAX_RING_SLOTS slots"),
            block_columns: BLOCK_COLUMNS as u32,
            blocks,
        })
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
        let mut ring = SpikeRing::shaped(image.blocks.len() * BLOCK_COLUMNS, slots)
            .map_err(|e| e.to_string())?;
        // Seen from step 0, offsets are slots.
        let mut sender = ring.senders(1, 0).pop().expect("one sender");
        for (b, arrays) in image.blocks.iter().enumerate() {
            for (channel, values) in arrays.iter().enumerate() {
                for (at, &value) in values.iter().enumerate() {
                    if value != 0.0 {
                        let column = b * BLOCK_COLUMNS + at % BLOCK_COLUMNS;
                        sender.queue(at / BLOCK_COLUMNS, column, channel == 1, value);
                    }
                }
            }
        }
        ring.seal(1);
        Ok(ring)
    }
}

/// Zeroes one part's input, adds its events in delivery order, and empties its queues.
fn gather_part(input: &mut [[f32; 2]], delivery: &mut Delivery, queues: Vec<&mut Vec<Event>>) {
    input.fill([0.0; 2]);
    let input = input.as_flattened_mut();
    for s in &delivery.segments {
        for event in &queues[s.sender][s.start..s.end] {
            event.add_to(input);
        }
    }
    delivery.clear();
    for queue in queues {
        queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(ring: &mut SpikeRing, now: u64, offset: u64, column: usize, w: f32) {
        ring.senders(1, now)[0].send(offset, column, w);
        ring.seal(1);
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
        ring.clear_columns(|c| c == 1);
        assert_eq!(ring.last_pending_offset(now), Some(2));
        assert_eq!(ring.input(now + 4, 1).0, 0.0);
        ring.gather(now + 2);
        assert_eq!(ring.input_of_step()[3], [0.0, -2.0]);
        assert_eq!(ring.input(now + 2, 3).1, 0.0);
        assert_eq!(ring.last_pending_offset(now), None);
    }

    /// The reference: a dense ring of every future step, each event added where it falls.
    struct DenseRing {
        values: Vec<[f32; 2]>,
        columns: usize,
        slots: usize,
    }

    impl DenseRing {
        fn add(&mut self, now: u64, offset: u64, column: usize, w: f32) {
            let slot = ((now + offset.min(self.slots as u64 - 1)) % self.slots as u64) as usize;
            if column < self.columns {
                self.values[slot * self.columns + column][usize::from(w < 0.0)] += w;
            }
        }

        fn take(&mut self, now: u64) -> Vec<[f32; 2]> {
            let slot = (now % self.slots as u64) as usize;
            let row = &mut self.values[slot * self.columns..][..self.columns];
            let taken = row.to_vec();
            row.fill([0.0; 2]);
            taken
        }
    }

    #[test]
    fn senders_sum_every_input_in_delivery_order() {
        let (columns, slots) = (3 * PART_COLUMNS + 5, 7);
        let mut ring = SpikeRing::default();
        ring.reshape(columns, slots, 0, |k| k).unwrap();
        let stride = ring.stride();
        let mut dense = DenseRing {
            values: vec![[0.0; 2]; stride * slots],
            columns: stride,
            slots,
        };
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for now in 0..40u64 {
            ring.gather(now);
            assert_eq!(ring.input_of_step(), &dense.take(now)[..], "step {now}");
            // Events of very different sizes, so that their order shows in the sums.
            let events: Vec<(u64, usize, f32)> = (0..2000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let w = (x % 1000) as f32 * [1e-4, 1.0, 1e4][(x >> 20) as usize % 3];
                    let sign = if x >> 40 & 1 == 1 { -1.0 } else { 1.0 };
                    (
                        1 + (x >> 8) % 9,
                        (x >> 24) as usize % (columns + 50),
                        sign * w,
                    )
                })
                .collect();
            let shares = 1 + (now as usize % 3);
            let per = events.len().div_ceil(shares);
            for (sender, share) in ring.senders(shares, now).iter_mut().zip(events.chunks(per)) {
                for &(offset, column, w) in share {
                    sender.send(offset, column, w);
                }
            }
            ring.seal(shares);
            for &(offset, column, w) in &events {
                dense.add(now, offset, column, w);
            }
        }
        let queued: usize = ring.senders.iter().flat_map(|s| &s.0).map(Vec::len).sum();
        assert!(queued > 0);
        assert!(ring.bytes() >= queued * size_of::<Event>() + stride * size_of::<[f32; 2]>());
        let image = ring.image().unwrap();
        let back = SpikeRing::from_image(image.clone()).unwrap();
        assert_eq!(back.image().unwrap(), image);
        for k in 0..slots as u64 {
            for c in (0..stride).step_by(97) {
                assert_eq!(back.input(40 + k, c), ring.input(40 + k, c));
            }
        }
    }

    #[test]
    fn spikes_injected_again_and_again_keep_a_queue_short() {
        let mut ring = SpikeRing::default();
        ring.reshape(100, 4, 0, |k| k).unwrap();
        let mut dense = DenseRing {
            values: vec![[0.0; 2]; ring.stride() * 4],
            columns: ring.stride(),
            slots: 4,
        };
        for round in 0..2000 {
            let shares = 1 + round % 2;
            for (i, sender) in ring.senders(shares, 0).iter_mut().enumerate() {
                for column in 0..100 {
                    let w = (round * 7 + column + i) as f32 * 0.37 - 30.0;
                    sender.send(1 + column as u64 % 2, column, w);
                }
            }
            ring.seal(shares);
            for i in 0..shares {
                for column in 0..100 {
                    let w = (round * 7 + column + i) as f32 * 0.37 - 30.0;
                    dense.add(0, 1 + column as u64 % 2, column, w);
                }
            }
        }
        let queued: usize = ring
            .senders
            .iter()
            .map(|s| s.0.iter().map(Vec::len).sum::<usize>())
            .sum();
        assert!(queued <= 4 * COLLAPSE_EVENTS, "{queued} events queued");
        for step in [1, 2] {
            ring.gather(step);
            assert_eq!(ring.input_of_step(), &dense.take(step)[..], "step {step}");
        }
    }

    #[test]
    fn a_ring_comes_back_from_its_image() {
        let mut ring = SpikeRing::default();
        ring.reshape(BLOCK_COLUMNS + 3, 5, 0, |k| k).unwrap();
        add(&mut ring, 3, 2, BLOCK_COLUMNS + 1, 4.0);
        add(&mut ring, 3, 4, 7, -1.5);
        let image = ring.image().unwrap();
        let back = SpikeRing::from_image(image.clone()).unwrap();
        assert_eq!((back.stride(), back.slots()), (ring.stride(), ring.slots()));
        assert_eq!(back.input(5, BLOCK_COLUMNS + 1), (4.0, 0.0));
        assert_eq!(back.input(7, 7), (0.0, -1.5));
        assert_eq!(back.last_pending_offset(3), Some(4));

        let mut one_slot = image.clone();
        one_slot.slots = 1;
        assert!(SpikeRing::from_image(one_slot).is_err());
        let mut narrow = image;
        narrow.block_columns = 512;
        assert!(
            SpikeRing::from_image(narrow)
                .unwrap_err()
                .contains("512 columns")
        );
    }
}
