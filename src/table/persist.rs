//! A table's image for snapshots: its slot table (every slot's version, vacant slots
//! included), the list of its vacant slots, and which chunks exist; taken from a live
//! table and rebuilt into a new one. Which slots are vacant decides which handle the
//! next insert returns (the lowest vacant one, where the home slot is taken), so a
//! restored table hands out the handles the saved one would have.
//!
//! Objects come after the skeleton: [`Table::restore`] names the owner of every place
//! that will hold an object, and the codec fills those places in storage order
//! ([`Table::fill_pending`], [`Table::fill_pending_pod`]). A place is marked occupied
//! only once its object is in it, so dropping a half-filled table is sound.

use std::sync::Arc;

use rayon::prelude::*;

use super::chunk::{Chunk, bit_runs, set_range};
pub(crate) use super::generations::GenerationImage;
use super::slots::{AWAY, PREFAULT_FROM_BYTES};
use super::typed::Table;
use crate::error::{Error, SnapshotError};
use crate::pool::HierarchicalPool;
use crate::pooled::{PodBytes, PoolHints};

/// The largest chunk capacity a table uses (and a snapshot may claim).
pub(crate) const MAX_PER_CHUNK: u32 = 1 << 24;

/// The most bytes of objects one read of a `Pod` table's load puts straight into its
/// chunks: large enough that a buffered reader passes the read to the file (no copy
/// through its buffer), small enough to report progress often.
const STRETCH_BYTES: usize = 32 << 20;

/// A table's slot table and free-position state, as a snapshot stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableImage {
    /// Places per chunk: a power of two from 1 to 2^24.
    pub per_chunk: u32,
    /// `(version, place)` of every slot in index order, the sentinel at index 0
    /// (`(0, 0)`). An odd version is a live slot and `place` is its object's place
    /// (`chunk << log2(per_chunk) | position`); an even one is vacant and `place` is 0.
    pub slots: SlotImage,
    /// The vacant slots' indices, each once, as files before format version 3 list
    /// them: checked, then not needed (the slot table says which slots are vacant, and
    /// inserts take the lowest). `None` for newer files.
    pub free_order: Option<Vec<u32>>,
    /// Which chunk indices hold a chunk (the free places are those of existing chunks that
    /// no live slot names).
    pub chunks_present: Vec<bool>,
}

/// Figures of a checked [`TableImage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ImageSummary {
    /// Live slots (objects).
    pub live: u64,
    /// Vacant slots, the sentinel not counted.
    pub vacant: u64,
    /// Chunks that exist.
    pub chunks: u64,
    /// Free places below the highest occupied place ([`TableStats::holes`](super::TableStats)).
    pub holes: u64,
}

impl ImageSummary {
    /// `holes / (live + holes)`, as [`TableStats::fragmentation`](super::TableStats).
    pub(crate) fn fragmentation(&self) -> f64 {
        if self.live + self.holes == 0 {
            0.0
        } else {
            self.holes as f64 / (self.live + self.holes) as f64
        }
    }
}

/// Every slot's `(version, place)` in index order, as a snapshot holds them: one record
/// per slot, or runs of consecutive slots with one version and consecutive places
/// (vacant slots: place 0). A table that was filled and never churned is one run, so
/// its image costs nothing to hold or check, however many slots it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SlotImage {
    /// One `(version, place)` per slot.
    Records(Vec<(u32, u32)>),
    /// `[version, first place, count]` runs (counts above 0), with the index of each
    /// run's first slot.
    Runs {
        runs: Vec<[u32; 3]>,
        starts: Vec<u64>,
    },
    /// Liveness bits and generation runs, with the places of live slots away from home:
    /// the short form of a table that has seen removals.
    Generations(GenerationImage),
}

impl Default for SlotImage {
    fn default() -> Self {
        SlotImage::Records(Vec::new())
    }
}

impl SlotImage {
    /// Runs `[version, first place, count]` (counts above 0, vacant runs at place 0).
    pub(crate) fn from_runs(runs: Vec<[u32; 3]>) -> SlotImage {
        let mut next = 0u64;
        let starts = runs
            .iter()
            .map(|r| {
                let at = next;
                next += u64::from(r[2]);
                at
            })
            .collect();
        SlotImage::Runs { runs, starts }
    }

    /// Slots, the sentinel included.
    pub(crate) fn len(&self) -> usize {
        match self {
            SlotImage::Records(r) => r.len(),
            SlotImage::Runs { runs, starts } => match (runs.last(), starts.last()) {
                (Some(r), Some(&s)) => (s + u64::from(r[2])) as usize,
                _ => 0,
            },
            SlotImage::Generations(g) => g.len,
        }
    }

    /// Whether a live slot names a place other than its home place `index - 1` (the
    /// rebuilt slot array then needs its place array).
    pub(crate) fn has_away(&self) -> bool {
        match self {
            SlotImage::Generations(g) => !g.away.is_empty(),
            _ => self.iter().enumerate().any(|(index, (version, place))| {
                version % 2 == 1 && place != (index as u32).wrapping_sub(1)
            }),
        }
    }

    /// The runs `(first index, version, first place, count)`: a record is a run of one
    /// (a generation image gives none: it is checked on its own).
    fn runs(&self) -> impl Iterator<Item = (u64, u32, u32, u32)> + '_ {
        let (records, runs) = match self {
            SlotImage::Records(r) => (Some(r), None),
            SlotImage::Runs { runs, starts } => (None, Some(runs.iter().zip(starts))),
            SlotImage::Generations(_) => (None, None),
        };
        let records = records
            .into_iter()
            .flat_map(|r| r.iter().enumerate().map(|(i, &(v, p))| (i as u64, v, p, 1)));
        let runs = runs
            .into_iter()
            .flatten()
            .map(|(&[v, p, n], &at)| (at, v, p, n));
        records.chain(runs)
    }

    /// Every slot's `(version, place)`, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let (records, runs, generations) = match self {
            SlotImage::Records(r) => (Some(r), None, None),
            SlotImage::Runs { runs, .. } => (None, Some(runs), None),
            SlotImage::Generations(g) => (None, None, Some(g)),
        };
        let records = records.into_iter().flat_map(|r| r.iter().copied());
        let runs = runs.into_iter().flatten().flat_map(|&[v, p, n]| {
            let live = v % 2 == 1;
            (0..n).map(move |k| (v, if live { p + k } else { p }))
        });
        let generations = generations.into_iter().flat_map(GenerationImage::records);
        records.chain(runs).chain(generations)
    }

    /// The version of slot `index`.
    #[cfg(test)]
    pub(crate) fn version(&self, index: usize) -> Option<u32> {
        match self {
            SlotImage::Records(r) => r.get(index).map(|s| s.0),
            SlotImage::Runs { runs, starts } => {
                let run = starts
                    .partition_point(|&s| s <= index as u64)
                    .checked_sub(1)?;
                (index < self.len()).then(|| runs[run][0])
            }
            SlotImage::Generations(g) => g.version(index),
        }
    }

    /// The records, to edit (tests build broken images this way).
    #[cfg(test)]
    pub(crate) fn records_mut(&mut self) -> &mut Vec<(u32, u32)> {
        if !matches!(self, SlotImage::Records(_)) {
            *self = SlotImage::Records(self.iter().collect());
        }
        match self {
            SlotImage::Records(r) => r,
            _ => unreachable!("converted above"),
        }
    }
}

impl TableImage {
    /// Checks everything a table needs of an image: the sentinel, that live slots have
    /// odd versions and name distinct places inside existing chunks, that vacant slots
    /// have even versions, and that a version 1 or 2 file's list of vacant slots holds
    /// each vacant slot exactly once.
    ///
    /// # Errors
    /// [`SnapshotError::InconsistentSlots`] saying what contradicts what.
    pub(crate) fn check(&self, type_name: &str) -> Result<ImageSummary, SnapshotError> {
        let bad = |message: String| SnapshotError::InconsistentSlots {
            type_name: type_name.to_owned(),
            message,
        };
        self.check_limits().map_err(bad)?;
        if let SlotImage::Generations(g) = &self.slots {
            return self.check_generations(g, bad);
        }
        match self.slots.iter().next() {
            Some((0, 0)) => {}
            other => return Err(bad(format!("slot 0 is the sentinel (0, 0), not {other:?}"))),
        }
        let tally = self.tally_runs().map_err(bad)?;
        let vacant = self.slots.len() as u64 - 1 - tally.live;
        let is_vacant = |i: usize| tally.vacant[i / 64] & 1 << (i % 64) != 0;
        self.check_vacant_list(vacant, is_vacant).map_err(bad)?;
        Ok(ImageSummary {
            live: tally.live,
            vacant,
            chunks: self.chunks_present.iter().filter(|p| **p).count() as u64,
            holes: self.holes(tally.highest, &tally.per_chunk_live),
        })
    }

    /// The chunk size is a power of two within bounds, and the chunks and slots fit the
    /// 32-bit places and indices of a table.
    fn check_limits(&self) -> Result<(), String> {
        let per_chunk = self.per_chunk;
        if !per_chunk.is_power_of_two() || per_chunk > MAX_PER_CHUNK {
            return Err(format!(
                "{per_chunk} places per chunk is not a power of two from 1 to {MAX_PER_CHUNK}"
            ));
        }
        let shift = per_chunk.ilog2();
        if self.chunks_present.len() as u64 > 1u64 << (32 - shift) {
            return Err(format!(
                "{} chunks of {per_chunk} places exceed the 2^32 places a table addresses",
                self.chunks_present.len()
            ));
        }
        if self.slots.len() as u64 >= u64::from(u32::MAX) {
            return Err(format!(
                "{} slots exceed the limit of a table",
                self.slots.len()
            ));
        }
        Ok(())
    }

    /// Goes through the records or runs of the slot table (after the sentinel), checking
    /// that each live run names free places in existing chunks and each vacant one names
    /// place 0; counts what it finds.
    fn tally_runs(&self) -> Result<RunTally, String> {
        let shift = self.per_chunk.ilog2();
        let places = (self.chunks_present.len() as u64) << shift;
        let mut taken = vec![0u64; places.div_ceil(64) as usize];
        let mut tally = RunTally {
            live: 0,
            vacant: vec![0u64; self.slots.len().div_ceil(64)],
            per_chunk_live: vec![0u32; self.chunks_present.len()],
            highest: None,
        };
        // Run by run (a record is a run of one): a run of live slots takes a range of
        // places, checked and marked a word at a time.
        for (index, version, place, count) in self.slots.runs() {
            let (from, to) = (index.max(1), index + u64::from(count));
            if from >= to {
                continue; // the sentinel, checked by the caller
            }
            let place = place + (from - index) as u32;
            let n = to - from;
            if version & AWAY != 0 {
                return Err(format!(
                    "slot {from} has version {version}: versions count within 31 bits"
                ));
            }
            if version % 2 == 0 {
                if place != 0 {
                    return Err(format!("vacant slot {from} names place {place}"));
                }
                set_range(&mut tally.vacant, from, to);
                continue;
            }
            let (first, last) = (u64::from(place), u64::from(place) + n - 1);
            if let Some(p) = self.first_place_without_chunk(first, last) {
                return Err(format!(
                    "live slot {} names place {p} in chunk {}, which does not exist",
                    from + (p - first),
                    p >> shift
                ));
            }
            if let Some(p) = set_range(&mut taken, first, last + 1) {
                return Err(format!(
                    "two live slots name place {p} (one is slot {})",
                    from + (p - first)
                ));
            }
            for c in (first >> shift)..=(last >> shift) {
                let lo = first.max(c << shift);
                let hi = last.min(((c + 1) << shift) - 1);
                tally.per_chunk_live[c as usize] += (hi - lo + 1) as u32;
            }
            tally.live += n;
            tally.highest = tally.highest.max(Some(last));
        }
        Ok(tally)
    }

    /// The first of places `first..=last` that lies in a chunk that does not exist.
    fn first_place_without_chunk(&self, first: u64, last: u64) -> Option<u64> {
        let shift = self.per_chunk.ilog2();
        ((first >> shift)..=(last >> shift))
            .find(|&c| {
                !self
                    .chunks_present
                    .get(c as usize)
                    .copied()
                    .unwrap_or(false)
            })
            .map(|c| first.max(c << shift))
    }

    /// A version 1 or 2 file's list of vacant slots, if the image has one, holds
    /// `vacant` entries, each a slot for which `is_vacant` holds (called only for
    /// indices below the slot count), none twice.
    pub(super) fn check_vacant_list(
        &self,
        vacant: u64,
        is_vacant: impl Fn(usize) -> bool,
    ) -> Result<(), String> {
        let Some(list) = &self.free_order else {
            return Ok(());
        };
        if list.len() as u64 != vacant {
            return Err(format!(
                "the free list holds {} slots, but {vacant} slots are vacant",
                list.len()
            ));
        }
        let n = self.slots.len();
        let mut listed = vec![0u64; n.div_ceil(64)];
        for &index in list {
            let i = index as usize;
            if i == 0
                || i >= n
                || !is_vacant(i)
                || set_range(&mut listed, i as u64, i as u64 + 1).is_some()
            {
                return Err(format!(
                    "the free list names slot {index}, which is not vacant or is listed twice"
                ));
            }
        }
        Ok(())
    }

    /// Free places of existing chunks up to the highest live place `top`, given each
    /// chunk's live objects.
    pub(super) fn holes(&self, top: Option<u64>, per_chunk_live: &[u32]) -> u64 {
        let shift = self.per_chunk.ilog2();
        top.map_or(0, |top| {
            (0..=(top >> shift) as usize)
                .filter(|&c| self.chunks_present[c])
                .map(|c| {
                    let span = if c as u64 == top >> shift {
                        (top & u64::from(self.per_chunk - 1)) + 1
                    } else {
                        u64::from(self.per_chunk)
                    };
                    span - u64::from(per_chunk_live[c])
                })
                .sum()
        })
    }
}

/// What [`TableImage::tally_runs`] counts: live slots, the vacant ones (a bit each), the
/// live objects per chunk and the highest live place.
struct RunTally {
    live: u64,
    vacant: Vec<u64>,
    per_chunk_live: Vec<u32>,
    highest: Option<u64>,
}

impl<T> Table<T> {
    /// Slots the table holds, live and vacant, the sentinel at index 0 included (1 for a
    /// table that never held an object): every handle's index is below it, so it sizes a
    /// side table indexed by slot.
    ///
    /// ```
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<u8> = Table::new();
    /// assert_eq!(t.slot_count(), 1);
    /// let h = t.insert(7);
    /// assert!((h.index() as usize) < t.slot_count());
    /// ```
    pub fn slot_count(&self) -> usize {
        self.slots.len().max(1)
    }

    /// `(version, place)` of every slot in index order, as [`TableImage::slots`] (a vacant
    /// slot's place is 0).
    pub(crate) fn slot_records(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let sentinel = (self.slots.len() == 0).then_some((0, 0));
        sentinel.into_iter().chain(self.slots.records())
    }

    /// The slot table as runs `[version, first place, count]` (see [`SlotImage`]), unless
    /// there are more than `budget` of them. A table that never held an object is its
    /// sentinel alone.
    pub(crate) fn slot_runs(&self, budget: usize) -> Option<Vec<[u32; 3]>> {
        if self.slots.len() == 0 {
            return (budget >= 1).then(|| vec![[0, 0, 1]]);
        }
        self.slots.runs_within(budget)
    }

    /// The vacant slots' indices, lowest first: the order the next inserts that need one
    /// take them in.
    #[cfg(test)]
    pub(crate) fn free_order(&self) -> Vec<u32> {
        self.slots.vacant_indices()
    }

    /// Whether each chunk index holds a chunk.
    pub(crate) fn chunks_present(&self) -> impl Iterator<Item = bool> + '_ {
        self.chunks.iter().map(Option::is_some)
    }

    /// The image of this table's slot table and free-position state.
    #[cfg(test)]
    pub(crate) fn image(&self) -> TableImage {
        TableImage {
            per_chunk: self.per_chunk,
            slots: SlotImage::Records(self.slot_records().collect()),
            free_order: Some(self.free_order()),
            chunks_present: self.chunks_present().collect(),
        }
    }

    /// Calls `f` with every maximal run of live objects that lie next to each other, in
    /// storage order, reading each chunk's occupancy a bitmap word at a time; a run goes on
    /// into the next chunk when that one's first places are occupied (chunks lie end to
    /// end in the span), so a table filled in order is one run. Stops at the first error.
    pub(crate) fn for_each_object_run<E>(
        &self,
        mut f: impl FnMut(&[T]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut emit = |(first, count): (u64, u64)| {
            // SAFETY: every place of `first..first + count` is occupied (from the chunks'
            // bitmaps below) and their chunks lie end to end in the span, so the range
            // holds `count` initialised objects in a row; `&self` keeps them there.
            let run =
                unsafe { std::slice::from_raw_parts(self.place_ptr(first as u32), count as usize) };
            f(run)
        };
        let mut pending: Option<(u64, u64)> = None;
        for (ci, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            let base = ci as u64 * u64::from(self.per_chunk);
            for (first, count) in bit_runs(chunk.occupied_words()) {
                let (first, count) = (base + u64::from(first), u64::from(count));
                match pending {
                    Some((at, n)) if at + n == first => pending = Some((at, n + count)),
                    _ => {
                        if let Some(run) = pending.replace((first, count)) {
                            emit(run)?;
                        }
                    }
                }
            }
        }
        match pending {
            Some(run) => emit(run),
            None => Ok(()),
        }
    }

    /// Every live object in storage order, as runs of objects that lie next to each other.
    #[cfg(test)]
    pub(crate) fn object_runs(&self) -> impl Iterator<Item = &[T]> + '_ {
        self.chunks.iter().flatten().flat_map(|c| {
            bit_runs(c.occupied_words())
                .map(move |(first, count)| c.run(first, count).expect("a run of occupied places"))
        })
    }

    /// A table with `image`'s slot table and chunks, whose objects are still
    /// to come: every place a live slot names is pending until a `fill_pending*` call puts
    /// its object there. `image` must have passed [`TableImage::check`].
    ///
    /// # Errors
    /// The pool's error when it cannot give the chunks or slots; nothing is kept.
    pub(crate) fn restore(
        pool: Arc<HierarchicalPool>,
        hints: PoolHints,
        image: &TableImage,
    ) -> Result<Table<T>, Error> {
        let mut table = Table::with_hints(pool, hints)?;
        table.per_chunk = image.per_chunk;
        table.shift = image.per_chunk.ilog2();
        let pool = table.pool.clone();
        if image.slots.has_away() {
            table.slots.list_places(&pool)?;
        }
        table.slots.reset_zeroed(&pool, image.slots.len())?;
        let mut live = table.restore_slot_words(&image.slots);
        // All the objects' address space at once: a large table then takes over the
        // memory of one the pool retains, rather than growing through fresh mappings.
        let object_bytes = image
            .chunks_present
            .len()
            .saturating_mul(table.chunk_bytes());
        table.objects.reserve(&pool, object_bytes)?;
        for (ci, &present) in image.chunks_present.iter().enumerate() {
            if present {
                table.make_chunk_at(ci)?;
            }
        }
        table.populate_present_chunks();
        table.chunk_floor = 0;
        match &image.slots {
            SlotImage::Generations(g) => live = table.restore_generations(g),
            SlotImage::Runs { runs, starts } => table.expect_owners_of_runs(runs, starts),
            SlotImage::Records(_) => table.expect_owners_of_slots(),
        }
        table.len = live;
        table.vacant.rebuild(&table.slots);
        Ok(table)
    }

    /// Has the memory of every chunk faulted in on every thread, a stretch of chunks in
    /// a row at a time, when the table is large: the objects read in after this land in
    /// pages the OS has given already (memory a dropped table left the pool is there
    /// already, and costs nothing here).
    fn populate_present_chunks(&self) {
        if self.chunks.len() * self.chunk_bytes() < PREFAULT_FROM_BYTES {
            return;
        }
        let mut ci = 0;
        while ci < self.chunks.len() {
            if self.chunks[ci].is_none() {
                ci += 1;
                continue;
            }
            let run = self.chunks[ci..].iter().take_while(|c| c.is_some()).count();
            let first = (ci as u64) << self.shift;
            self.populate_places(first, first + ((run as u64) << self.shift));
            ci += run;
        }
    }

    /// Writes the slot words of a record or run image (a generation image's are written
    /// with their owners, once the chunks exist): the live slots.
    fn restore_slot_words(&mut self, image: &SlotImage) -> usize {
        let mut live = 0usize;
        match image {
            SlotImage::Records(records) => {
                for (index, &(version, place)) in records.iter().enumerate() {
                    self.slots.restore(index as u32, version, place);
                    live += usize::from(version % 2 == 1);
                }
            }
            SlotImage::Runs { runs, .. } => live = self.slots.restore_runs(runs),
            SlotImage::Generations(_) => {}
        }
        live
    }

    /// Names the owners of the live runs' places: a run of live slots names consecutive
    /// places, so their owners are written a chunk's stretch at a time. A large table is
    /// restored on every thread, each task owning a stretch of chunks and taking from
    /// every run the places that lie in them.
    fn expect_owners_of_runs(&mut self, runs: &[[u32; 3]], starts: &[u64]) {
        let tasks = if runs.len() >= OWNER_RUNS_IN_PARALLEL_FROM {
            rayon::current_num_threads().max(1)
        } else {
            1
        };
        self.owner_stretches(tasks)
            .into_par_iter()
            .for_each(|mut stretch| stretch.expect_owners_of_runs(runs, starts));
    }

    /// The table's chunks in `tasks` stretches (fewer for a table of fewer chunks), each
    /// for one task of a restore to name the owners of its places.
    pub(super) fn owner_stretches(&mut self, tasks: usize) -> Vec<OwnerStretch<'_, T>> {
        let per_task = self.chunks.len().div_ceil(tasks.max(1)).max(1);
        let (shift, per_chunk) = (self.shift, self.per_chunk);
        self.chunks
            .chunks_mut(per_task)
            .enumerate()
            .map(|(k, chunks)| OwnerStretch {
                first_chunk: k * per_task,
                chunks,
                shift,
                per_chunk,
            })
            .collect()
    }

    /// Names the owner of every live slot's place, slot by slot.
    fn expect_owners_of_slots(&mut self) {
        let (shift, mask) = (self.shift, self.per_chunk - 1);
        let (slots, chunks) = (&self.slots, &mut self.chunks);
        for (index, &word) in slots.words().iter().enumerate() {
            if word & 1 == 1 {
                let place = slots.place(index);
                chunks[(place >> shift) as usize]
                    .as_mut()
                    .expect("a checked image names existing chunks")
                    .expect_owner(place & mask, index as u32);
            }
        }
    }

    /// Marks the `count` places from `first_place` on as pending for the slots from
    /// `first_slot` on, a chunk's stretch at a time (the places lie in existing chunks:
    /// the image was checked).
    pub(super) fn expect_owner_run(&mut self, first_place: u32, first_slot: u32, count: u32) {
        let (mut place, mut slot, mut left) = (first_place, first_slot, count);
        while left > 0 {
            let loc = self.unpack(place);
            let here = left.min(self.per_chunk - loc.pos);
            self.chunks[loc.chunk as usize]
                .as_mut()
                .expect("a checked image names existing chunks")
                .expect_owner_run(loc.pos, here, slot);
            (place, slot, left) = (place + here, slot + here, left - here);
        }
    }

    /// Puts objects made by `next` into the pending places, in storage order, then checks
    /// that none is left.
    ///
    /// # Errors
    /// The first error of `next`; [`SnapshotError::InconsistentSlots`] if `next` runs out
    /// (returns `None`) before every live slot has its object, or has objects left.
    pub(crate) fn fill_pending(
        &mut self,
        type_name: &str,
        mut next: impl FnMut() -> Option<Result<T, Error>>,
    ) -> Result<(), Error> {
        let mut filled = 0u64;
        for ci in 0..self.chunks.len() {
            let Some(chunk) = self.chunks[ci].as_mut() else {
                continue;
            };
            for (first, count) in chunk.pending_runs() {
                for pos in first..first + count {
                    let value =
                        next().ok_or_else(|| missing_objects(type_name, filled, self.len()))??;
                    let chunk = self.chunks[ci].as_mut().expect("checked above");
                    let owner = chunk.owner(pos);
                    chunk.put(pos, value, owner);
                    filled += 1;
                }
            }
        }
        if next().is_some() {
            return Err(SnapshotError::InconsistentSlots {
                type_name: type_name.to_owned(),
                message: format!("the snapshot holds more objects than its {filled} live slots"),
            }
            .into());
        }
        self.finish_restore();
        Ok(())
    }

    /// As [`fill_pending`](Self::fill_pending) for `Pod` objects: `read` fills pending
    /// places with exactly their bytes, in storage order. Chunks whose pending places are
    /// one run each, continuing from chunk to chunk (a filled or compacted table), are
    /// read in one call straight into the table's memory, up to [`STRETCH_BYTES`] at a
    /// time, so that a buffered reader hands large reads to the file directly. A chunk of
    /// many runs (a table that had objects removed) is read in one call into a buffer and
    /// spread over its runs, so that the reader is called once per chunk, not once per run.
    pub(crate) fn fill_pending_pod(
        &mut self,
        pod: PodBytes<T>,
        mut read: impl FnMut(&mut [u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let size = std::mem::size_of::<T>();
        let mut staging: Vec<u8> = Vec::new();
        let mut stretch: Vec<(usize, u32, u32)> = Vec::new();
        let mut ci = 0;
        while ci < self.chunks.len() {
            let Some(chunk) = self.chunks[ci].as_mut() else {
                ci += 1;
                continue;
            };
            if let Some(run) = chunk.pending_as_one_run() {
                self.pending_stretch(ci, run, &mut stretch);
                self.fill_stretch(pod, &stretch, &mut read)?;
                ci += stretch.len();
                continue;
            }
            if chunk.pending_count() > 0 {
                staging.clear();
                staging.resize(chunk.pending_count() * size, 0);
                read(&mut staging)?;
                chunk.fill_pending_from(pod, &staging);
            }
            ci += 1;
        }
        self.finish_restore();
        Ok(())
    }

    /// The chunks from `ci` on (whose pending places are the one run `run`) whose pending
    /// places continue one another in memory: each next chunk's run starts at its first
    /// place and the one before ends at its last. At most [`STRETCH_BYTES`] of them, and
    /// at least chunk `ci`, as `(chunk, first place, count)`.
    fn pending_stretch(&self, ci: usize, run: (u32, u32), stretch: &mut Vec<(usize, u32, u32)>) {
        let size = std::mem::size_of::<T>().max(1);
        stretch.clear();
        stretch.push((ci, run.0, run.1));
        let mut bytes = run.1 as usize * size;
        let mut ends_at_capacity = run.0 + run.1 == self.per_chunk;
        let mut next = ci + 1;
        while ends_at_capacity && bytes < STRETCH_BYTES {
            let Some((0, count)) = self
                .chunks
                .get(next)
                .and_then(|c| c.as_ref())
                .and_then(|c| c.pending_as_one_run())
            else {
                break;
            };
            stretch.push((next, 0, count));
            bytes += count as usize * size;
            ends_at_capacity = count == self.per_chunk;
            next += 1;
        }
    }

    /// Reads the objects of `stretch` (from [`pending_stretch`](Self::pending_stretch))
    /// with one call of `read` into their places, then marks them occupied. If `read`
    /// fails the places stay free.
    fn fill_stretch(
        &mut self,
        pod: PodBytes<T>,
        stretch: &[(usize, u32, u32)],
        read: &mut impl FnMut(&mut [u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let &(first_chunk, first, _) = stretch.first().expect("a stretch holds a chunk");
        let objects: usize = stretch.iter().map(|&(_, _, count)| count as usize).sum();
        let start = self.place_ptr(((first_chunk as u32) << self.shift) + first);
        // SAFETY: the stretch's places are pending places (expected and not occupied) of
        // chunks the table holds, each run continuing the one before in the next chunk,
        // so together they are `objects` consecutive places of the objects' span, whose
        // chunks' memory is committed and holds initialised bytes (zeros when committed,
        // whole objects after). None of them is occupied, so no live object is
        // overwritten and no reference to them exists; the exclusive borrow of the table
        // keeps the slice unique while `read` runs. (`T` may be zero-sized: the slice is
        // then empty.)
        let buf = unsafe {
            std::slice::from_raw_parts_mut(start.cast::<u8>(), objects * std::mem::size_of::<T>())
        };
        read(buf)?;
        for &(ci, first, count) in stretch {
            self.chunks[ci]
                .as_mut()
                .expect("a stretch names chunks the table holds")
                .mark_filled(pod, first, count);
        }
        Ok(())
    }

    /// Marks full chunks as such once every object is in place.
    fn finish_restore(&mut self) {
        for chunk in self.chunks.iter_mut().flatten() {
            chunk.end_restore();
        }
        for ci in 0..self.chunks.len() {
            let non_full = self.chunks[ci]
                .as_ref()
                .is_some_and(|c| c.live() < c.capacity());
            self.set_non_full(ci, non_full);
        }
    }
}

/// Runs (or, for a generation image, slots away from home) from this many on are
/// restored on every thread (fewer in unit tests, so that small tables take the parallel
/// path).
pub(super) const OWNER_RUNS_IN_PARALLEL_FROM: usize = if cfg!(test) { 1 << 10 } else { 1 << 16 };

/// A stretch of a restored table's chunks, whose owners one task names.
pub(super) struct OwnerStretch<'a, T> {
    /// The index of the first chunk of the stretch.
    pub(super) first_chunk: usize,
    pub(super) chunks: &'a mut [Option<Chunk<T>>],
    /// The table's `shift` and `per_chunk`.
    pub(super) shift: u32,
    pub(super) per_chunk: u32,
}

// SAFETY: a stretch is only used to call `Chunk::expect_owner_run` and
// `Chunk::expect_owner_list`, which write the chunk's owner list and its bitmap of
// expected places (integers the chunk owns) and never read, move or drop an object of
// `T`; the stretches of one table are disjoint and borrowed exclusively, so sending one
// to another thread shares nothing.
unsafe impl<T> Send for OwnerStretch<'_, T> {}

impl<T> OwnerStretch<'_, T> {
    /// The places of the stretch's chunks, present or not.
    pub(super) fn places(&self) -> std::ops::Range<u64> {
        let first = self.first_chunk as u64;
        (first << self.shift)..((first + self.chunks.len() as u64) << self.shift)
    }

    /// Marks the places of the live runs that lie in this stretch as pending for their
    /// slots (the runs' places lie in existing chunks: the image was checked).
    fn expect_owners_of_runs(&mut self, runs: &[[u32; 3]], starts: &[u64]) {
        let std::ops::Range { start: lo, end: hi } = self.places();
        for (&[version, first_place, count], &start) in runs.iter().zip(starts) {
            let (first, end) = (
                u64::from(first_place),
                u64::from(first_place) + u64::from(count),
            );
            if version % 2 == 0 || end <= lo || first >= hi {
                continue;
            }
            let (a, b) = (first.max(lo), end.min(hi));
            self.expect_owner_run(a, b, start + (a - first));
        }
    }

    /// Marks places `first..end` (within the stretch) as pending for the slots from
    /// `first_slot` on, a chunk at a time.
    fn expect_owner_run(&mut self, first: u64, end: u64, first_slot: u64) {
        let (mut place, mut slot) = (first, first_slot);
        while place < end {
            let ci = (place >> self.shift) as usize - self.first_chunk;
            let pos = (place & u64::from(self.per_chunk - 1)) as u32;
            let here = (end - place).min(u64::from(self.per_chunk - pos)) as u32;
            self.chunks[ci]
                .as_mut()
                .expect("a checked image names existing chunks")
                .expect_owner_run(pos, here, slot as u32);
            place += u64::from(here);
            slot += u64::from(here);
        }
    }
}

fn missing_objects(type_name: &str, filled: u64, live: usize) -> Error {
    SnapshotError::InconsistentSlots {
        type_name: type_name.to_owned(),
        message: format!("{live} live slots, but the snapshot holds only {filled} objects"),
    }
    .into()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::table::{Handle, default_pool};

    /// Rebuilds `t` from its image and objects, as a snapshot load does.
    fn rebuilt(t: &Table<u64>) -> Table<u64> {
        let image = t.image();
        image
            .check("u64")
            .expect("a live table's image is consistent");
        restored_on_threads(t, &image, 1)
    }

    /// The table `image` (checked, of `t`) restores, on a pool of `threads` threads, and
    /// filled with `t`'s objects.
    pub(in crate::table) fn restored_on_threads(
        t: &Table<u64>,
        image: &TableImage,
        threads: usize,
    ) -> Table<u64> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut r = pool
            .install(|| Table::<u64>::restore(default_pool(), t.hints(), image))
            .unwrap();
        let mut objects = t.object_runs().flatten().copied();
        r.fill_pending("u64", || objects.next().map(Ok)).unwrap();
        r
    }

    /// `t`'s objects' bytes, in storage order.
    fn object_bytes(t: &Table<u64>) -> Vec<u8> {
        t.object_runs()
            .flat_map(|run| bytemuck::cast_slice::<u64, u8>(run).to_vec())
            .collect()
    }

    fn churned() -> (Table<u64>, Vec<Handle<u64>>) {
        let mut t = Table::<u64>::with_pool_and_chunk_bytes(default_pool(), 64 * 8);
        let hs: Vec<_> = (0..300u64).map(|i| t.insert(i)).collect();
        for (k, h) in hs.iter().enumerate() {
            if k % 3 != 1 {
                t.remove(*h);
            }
        }
        // Reuse some slots (versions beyond 2), in an order unlike index order.
        for i in 0..40u64 {
            t.insert(1000 + i);
        }
        for h in hs.iter().rev().step_by(7) {
            t.remove(*h);
        }
        (t, hs)
    }

    #[test]
    fn image_round_trip_keeps_slots_free_order_and_objects() {
        let (t, hs) = churned();
        let mut r = rebuilt(&t);
        assert_eq!(r.image(), t.image());
        assert_eq!(r.len(), t.len());
        for (h, v) in t.iter() {
            assert_eq!(r.get(h), Some(v));
            assert_eq!(r.location(h), t.location(h));
        }
        for h in &hs {
            assert_eq!(r.contains(*h), t.contains(*h));
        }
        // The next inserts name the same handles and places in both.
        let mut t = t;
        for i in 0..200u64 {
            let (a, b) = (t.insert(i), r.insert(i));
            assert_eq!(a, b);
            assert_eq!(t.location(a), r.location(b));
        }
    }

    #[test]
    fn vacant_versions_wrap_like_slotmap() {
        let mut t = Table::<u64>::new();
        let h = t.insert(1);
        t.remove(h);
        let mut image = t.image();
        // Pretend the slot was freed after its version wrapped: version 0 is vacant.
        image.slots.records_mut()[1].0 = 0;
        image.check("u64").unwrap();
        let mut r = Table::<u64>::restore(default_pool(), t.hints(), &image).unwrap();
        r.fill_pending("u64", || None).unwrap();
        assert_eq!(r.image(), image);
        let next = r.insert(5);
        assert_eq!((next.index(), next.generation()), (1, 1));
    }

    #[test]
    fn check_refuses_inconsistent_images() {
        let (t, _) = churned();
        let good = t.image();
        good.check("u64").unwrap();
        let records: Vec<(u32, u32)> = good.slots.iter().collect();
        let live = records.iter().position(|s| s.0 % 2 == 1).unwrap();
        let other_live = records.iter().rposition(|s| s.0 % 2 == 1).unwrap();
        let vacant = records.iter().skip(1).position(|s| s.0 % 2 == 0).unwrap() + 1;
        let mut cases: Vec<(&str, TableImage)> = Vec::new();
        let mut i = good.clone();
        let r = i.slots.records_mut();
        r[live].1 = r[other_live].1;
        cases.push(("two live slots", i));
        let mut i = good.clone();
        let past = (i.chunks_present.len() as u32) * i.per_chunk;
        i.slots.records_mut()[live].1 = past;
        cases.push(("does not exist", i));
        let mut i = good.clone();
        i.slots.records_mut()[vacant].0 += 1; // made live, naming place 0, which another slot holds
        cases.push(("two live slots", i));
        let mut i = good.clone();
        i.free_order.as_mut().unwrap().swap_remove(0);
        cases.push(("free list holds", i));
        let mut i = good.clone();
        let list = i.free_order.as_mut().unwrap();
        list[1] = list[0];
        cases.push(("listed twice", i));
        let mut i = good.clone();
        i.slots.records_mut()[0] = (1, 0);
        cases.push(("sentinel", i));
        let mut i = good.clone();
        i.per_chunk = 48;
        cases.push(("power of two", i));
        let mut i = good.clone();
        i.slots.records_mut()[vacant].1 = 9;
        cases.push(("vacant slot", i));
        for (want, image) in cases {
            let err = image.check("u64").unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    /// `records` as runs, as the snapshot writer makes them.
    fn as_runs(records: &[(u32, u32)]) -> SlotImage {
        let mut runs: Vec<[u32; 3]> = Vec::new();
        for &(v, p) in records {
            if let Some([rv, rp, n]) = runs.last_mut()
                && *rv == v
                && (if v % 2 == 1 { *rp + *n == p } else { p == 0 })
            {
                *n += 1;
            } else {
                runs.push([v, p, 1]);
            }
        }
        SlotImage::from_runs(runs)
    }

    #[test]
    fn runs_hold_and_check_like_records() {
        let (t, hs) = churned();
        let records = t.image();
        let mut runs = records.clone();
        let listed: Vec<(u32, u32)> = records.slots.iter().collect();
        runs.slots = as_runs(&listed);
        assert!(matches!(runs.slots, SlotImage::Runs { .. }));
        assert_eq!(runs.slots.len(), records.slots.len());
        assert!(runs.slots.iter().eq(records.slots.iter()));
        for i in 0..listed.len() + 2 {
            assert_eq!(
                runs.slots.version(i),
                listed.get(i).map(|s| s.0),
                "slot {i}"
            );
        }
        assert_eq!(runs.check("u64").unwrap(), records.check("u64").unwrap());
        let mut r = Table::<u64>::restore(default_pool(), t.hints(), &runs).unwrap();
        let mut values = t.object_runs().flatten().copied();
        r.fill_pending("u64", || values.next().map(Ok)).unwrap();
        assert_eq!(r.image(), records);
        for h in &hs {
            assert_eq!(r.get(*h), t.get(*h));
        }
    }

    #[test]
    fn check_refuses_inconsistent_runs() {
        // A full table of 2 chunks of 4 places: slots 1..=8 live at places 0..8.
        let image = |runs: Vec<[u32; 3]>, free_order: Vec<u32>| TableImage {
            per_chunk: 4,
            slots: SlotImage::from_runs(runs),
            free_order: Some(free_order),
            chunks_present: vec![true, true],
        };
        let good = image(vec![[0, 0, 1], [1, 0, 8]], vec![]);
        let summary = good.check("u64").unwrap();
        assert_eq!((summary.live, summary.vacant, summary.holes), (8, 0, 0));
        let with_hole = image(vec![[0, 0, 1], [1, 0, 3], [2, 0, 1], [1, 4, 4]], vec![4]);
        let summary = with_hole.check("u64").unwrap();
        assert_eq!((summary.live, summary.vacant, summary.holes), (7, 1, 1));
        let cases = [
            (
                image(vec![[0, 0, 1], [1, 0, 5], [1, 3, 3]], vec![]),
                "two live slots name place 3 (one is slot 6)",
            ),
            (
                image(vec![[0, 0, 1], [1, 2, 8]], vec![]),
                "names place 8 in chunk 2",
            ),
            (
                image(vec![[0, 0, 1], [1, 0, 7], [2, 0, 1]], vec![]),
                "free list holds 0",
            ),
            (
                image(vec![[0, 0, 1], [1, 0, 7], [2, 0, 1]], vec![7]),
                "names slot 7",
            ),
            (image(vec![[1, 0, 9]], vec![]), "sentinel"),
        ];
        for (i, want) in cases {
            let err = i.check("u64").unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn set_range_sets_whole_words_and_refuses_clashes() {
        let mut words = vec![0u64; 4];
        assert_eq!(set_range(&mut words, 3, 200), None);
        assert_eq!(words, vec![!0b111, u64::MAX, u64::MAX, (1 << 8) - 1]);
        let before = words.clone();
        assert_eq!(set_range(&mut words, 0, 5), Some(3));
        assert_eq!(words, before, "a clash changes nothing");
        assert_eq!(set_range(&mut words, 200, 201), None);
        assert_eq!(words[3], (1 << 9) - 1);
        assert_eq!(set_range(&mut words, 0, 3), None);
        assert_eq!(set_range(&mut words, 130, 131), Some(130));
    }

    #[test]
    fn fill_pending_counts_objects() {
        let (t, _) = churned();
        let image = t.image();
        let mut r = Table::<u64>::restore(default_pool(), t.hints(), &image).unwrap();
        let err = r.fill_pending("u64", || None).unwrap_err();
        assert!(err.to_string().contains("holds only 0 objects"), "{err}");
        let mut r = Table::<u64>::restore(default_pool(), t.hints(), &image).unwrap();
        let mut endless = 0u64..;
        let err = r
            .fill_pending("u64", || endless.next().map(Ok))
            .unwrap_err();
        assert!(err.to_string().contains("more objects"), "{err}");
    }

    #[test]
    fn pod_fill_reads_runs_into_chunks() {
        let (t, _) = churned();
        let image = t.image();
        let mut r = Table::<u64>::restore(default_pool(), t.hints(), &image).unwrap();
        let bytes = object_bytes(&t);
        let mut at = 0;
        r.fill_pending_pod(PodBytes::new(), |buf| {
            buf.copy_from_slice(&bytes[at..at + buf.len()]);
            at += buf.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(at, bytes.len());
        for (h, v) in t.iter() {
            assert_eq!(r.get(h), Some(v));
        }
        let (a, b) = (r.stats(), t.stats());
        assert_eq!((a.live, a.chunks, a.holes), (b.live, b.chunks, b.holes));
    }

    /// A table of `n` objects (8-byte chunks of 64 places) of which every fourth in the
    /// second half is removed, then compacted in order: the first half at home, one run;
    /// the second half away, as runs of three live slots (some crossing a chunk's end)
    /// and one vacant one.
    fn compacted(n: u64) -> Table<u64> {
        let mut t = Table::<u64>::with_pool_and_chunk_bytes(default_pool(), 64 * 8);
        let hs: Vec<_> = (0..n).map(|i| t.insert(i * 7)).collect();
        for h in hs[n as usize / 2..].iter().skip(3).step_by(4) {
            t.remove(*h);
        }
        t.compact_in_order().unwrap();
        t
    }

    #[test]
    fn runs_restore_on_many_threads_as_on_one() {
        let t = compacted(16 * OWNER_RUNS_IN_PARALLEL_FROM as u64);
        let runs = t.slot_runs(usize::MAX).expect("no budget");
        assert!(
            runs.len() >= OWNER_RUNS_IN_PARALLEL_FROM,
            "{} runs",
            runs.len()
        );
        let image = TableImage {
            slots: SlotImage::from_runs(runs),
            ..t.image()
        };
        image.check("u64").unwrap();
        // Three tasks: run stretches of chunks split the runs that cross them.
        let r = restored_on_threads(&t, &image, 3);
        assert_eq!(r.len(), t.len());
        for (h, v) in t.iter() {
            assert_eq!(r.get(h), Some(v), "{h:?}");
        }
        assert!(t.slot_records().eq(r.slot_records()));
        assert_eq!(t.slots.words(), r.slots.words(), "versions and away bits");
        assert!(t.iter().map(|(h, _)| h).eq(r.iter().map(|(h, _)| h)));
    }

    #[test]
    fn pod_fill_reads_chunks_that_continue_one_another_in_one_call() {
        // Chunks 0-2 full, chunk 3 half full (the stretch ends with it), chunk 4 gone,
        // chunk 5 full and chunk 6 holding holes.
        let mut t = Table::<u64>::with_pool_and_chunk_bytes(default_pool(), 64 * 8);
        let hs: Vec<_> = (0..7 * 64u64).map(|i| t.insert(i)).collect();
        for (k, h) in hs.iter().enumerate() {
            let (chunk, pos) = (k / 64, k % 64);
            if (chunk == 3 && pos >= 32) || chunk == 4 || (chunk == 6 && pos % 5 == 0) {
                t.remove(*h);
            }
        }
        let image = t.image();
        let mut r = Table::<u64>::restore(default_pool(), t.hints(), &image).unwrap();
        let bytes = object_bytes(&t);
        let (mut at, mut reads) = (0, Vec::new());
        r.fill_pending_pod(PodBytes::new(), |buf| {
            buf.copy_from_slice(&bytes[at..at + buf.len()]);
            at += buf.len();
            reads.push(buf.len() / 8);
            Ok(())
        })
        .unwrap();
        assert_eq!(reads, [3 * 64 + 32, 64, 64 - 13]);
        for (h, v) in t.iter() {
            assert_eq!(r.get(h), Some(v));
        }
        assert_eq!(r.len(), t.len());
    }

    #[test]
    fn a_failed_read_leaves_the_stretch_free() {
        let mut t = Table::<u64>::with_pool_and_chunk_bytes(default_pool(), 64 * 8);
        for i in 0..3 * 64u64 {
            t.insert(i);
        }
        let image = t.image();
        let mut r = Table::<u64>::restore(default_pool(), t.hints(), &image).unwrap();
        let err = r
            .fill_pending_pod(PodBytes::new(), |_| {
                Err(SnapshotError::Truncated {
                    section: "OBJS".into(),
                    offset: 0,
                }
                .into())
            })
            .unwrap_err();
        assert!(err.to_string().contains("OBJS"), "{err}");
        assert_eq!(r.values().count(), 0);
    }
}
