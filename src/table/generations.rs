//! The compact image of a slot table that has seen removals: per slot one bit (live or
//! vacant) and a generation, with the places of the few live slots away from home.
//!
//! A slot's version is `2 × generation − live`: a live slot in its `g`-th occupation has
//! the odd version `2g − 1`, the same slot vacant after it the even version `2g`. A table
//! filled once and then thinned keeps every slot at generation 1, live or not, so its
//! whole slot table is a bitmap and one generation run, whatever the removals did to the
//! runs of versions and places ([`SlotImage::Runs`](super::persist::SlotImage)). A live slot
//! is at its home place `index − 1` unless an away run names it: live slots that follow
//! one another (vacant slots between them skipped) at places that follow one another are
//! one run, so a table compacted in order is a single run, however many removals made
//! holes in its slots.
//!
//! Checking and rebuilding work on the bitmap a word at a time: the home places of 64
//! slots are one shifted word of the place bitmap.

use rayon::prelude::*;

use super::chunk::{bit_runs, set_range};
use super::persist::{ImageSummary, OWNER_RUNS_IN_PARALLEL_FROM, OwnerStretch, TableImage};
use super::slots::{AWAY, live_word, word_version};
use super::typed::Table;
use crate::error::SnapshotError;

/// Every slot as liveness and generation, and the places of live slots away from home.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GenerationImage {
    /// Slots, the sentinel at index 0 included.
    pub len: usize,
    /// Bit `i % 64` of word `i / 64` is set when slot `i` is live; `len.div_ceil(64)`
    /// words, bits past `len` clear.
    pub live: Vec<u64>,
    /// `[generation, count]` runs (counts above 0) covering the slots in index order.
    pub generations: Vec<[u32; 2]>,
    /// `[first index, first place, count]` runs of the live slots whose objects are not
    /// at `index − 1`, in ascending index order: the `count` live slots from slot
    /// `first index` on (vacant slots skipped) lie at places `first place`,
    /// `first place + 1`, … Runs do not overlap.
    pub away: Vec<[u32; 3]>,
}

/// Where a stretch of a generation image's restore is: the generation run (and the slot
/// it ends before) and the away run (and how many of its slots lie behind) of the slots
/// it comes to next.
struct SlotCursor {
    generation: usize,
    generation_end: usize,
    run: usize,
    offset: u32,
}

impl SlotCursor {
    /// Twice the generation of slot `index` (at or after the cursor's slots so far).
    #[inline]
    fn twice(&mut self, image: &GenerationImage, index: usize) -> u32 {
        while index >= self.generation_end {
            self.generation += 1;
            self.generation_end += image.generations[self.generation][1] as usize;
        }
        image.generations[self.generation][0].wrapping_mul(2)
    }
}

/// Writes 64 slots (fewer at the end) from `first`, of one generation (`twice` is twice
/// it) and none away from home, from their liveness word `live`.
fn write_home_block(
    live: u64,
    first: usize,
    twice: u32,
    words: &mut [u32],
    places: Option<&mut [u32]>,
) {
    for (k, word) in words.iter_mut().enumerate() {
        *word = twice.wrapping_sub((live >> k) as u32 & 1);
    }
    if let Some(places) = places {
        for (k, place) in places.iter_mut().enumerate() {
            let home = (first + k) as u32;
            *place = home.wrapping_sub(1) & ((live >> k) as u32 & 1).wrapping_neg();
        }
    }
}

/// Slots one task of a restore writes, at least (fewer in unit tests, so that small
/// tables take the parallel path).
const MIN_SLOTS_PER_TASK: usize = if cfg!(test) { 64 } else { 1 << 16 };

/// The largest generation: versions count within 31 bits.
const MAX_GENERATION: u32 = 1 << 30;

impl GenerationImage {
    /// Whether slot `index` is live.
    pub(crate) fn is_live(&self, index: usize) -> bool {
        self.live
            .get(index / 64)
            .is_some_and(|w| w >> (index % 64) & 1 == 1)
    }

    /// `(index, place)` of every live slot an away run names, in index order (the runs
    /// passed [`TableImage::check_generations`]).
    pub(crate) fn away_slots(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.away.iter().flat_map(|&[first, place, count]| {
            live_slots_from(&self.live, first as usize)
                .take(count as usize)
                .zip(place..)
                .map(|(index, place)| (index as u32, place))
        })
    }

    /// Writes every slot's word into `words` and, when the place array is kept, its place
    /// into `places` (`len` of each; the image passed
    /// [`TableImage::check_generations`]), on every thread, a stretch of slots per task.
    pub(crate) fn write_slots(&self, words: &mut [u32], places: Option<&mut [u32]>) {
        assert_eq!(words.len(), self.len, "one word a slot");
        let mut generation_starts = Vec::with_capacity(self.generations.len());
        let mut at = 0usize;
        for &[_, count] in &self.generations {
            generation_starts.push(at);
            at += count as usize;
        }
        // A few stretches a thread: each first counts the live slots from the start of
        // the away run it begins in, a pass over that run's bitmap words.
        let tasks = rayon::current_num_threads().max(1) * 4;
        let per_task = self
            .len
            .div_ceil(tasks)
            .next_multiple_of(64)
            .max(MIN_SLOTS_PER_TASK);
        let write = |(k, (words, places)): (usize, (&mut [u32], Option<&mut [u32]>))| {
            self.write_slot_stretch(k * per_task, &generation_starts, words, places);
        };
        match places {
            Some(places) => words
                .par_chunks_mut(per_task)
                .zip(places.par_chunks_mut(per_task))
                .map(|(w, p)| (w, Some(p)))
                .enumerate()
                .for_each(write),
            None => words
                .par_chunks_mut(per_task)
                .map(|w| (w, None))
                .enumerate()
                .for_each(write),
        }
    }

    /// [`write_slots`](Self::write_slots) for the slots from `first` (a multiple of 64)
    /// on, `words.len()` of them; `generation_starts` holds the first slot of each
    /// generation run. A block of 64 slots of one generation with no slot away is written
    /// from its liveness word alone (a loop the compiler vectorises), any other slot by
    /// slot.
    fn write_slot_stretch(
        &self,
        first: usize,
        generation_starts: &[usize],
        words: &mut [u32],
        mut places: Option<&mut [u32]>,
    ) {
        let g = generation_starts.partition_point(|&s| s <= first) - 1;
        let (run, offset) = self.away_position(first);
        let mut at = SlotCursor {
            generation: g,
            generation_end: generation_starts[g] + self.generations[g][1] as usize,
            run,
            offset,
        };
        for (b, block) in words.chunks_mut(64).enumerate() {
            let block_first = first + 64 * b;
            let block_places = places
                .as_deref_mut()
                .map(|p| &mut p[64 * b..64 * b + block.len()]);
            let block_end = block_first + block.len();
            let twice = at.twice(self, block_first);
            let away_from = self.away.get(at.run).map_or(usize::MAX, |r| r[0] as usize);
            if block_end <= at.generation_end && block_end <= away_from {
                write_home_block(
                    self.live[block_first / 64],
                    block_first,
                    twice,
                    block,
                    block_places,
                );
            } else {
                self.write_slot_by_slot(&mut at, block_first, block, block_places);
            }
        }
    }

    /// Writes the slots from `first` on, one by one, moving `at` along.
    fn write_slot_by_slot(
        &self,
        at: &mut SlotCursor,
        first: usize,
        words: &mut [u32],
        mut places: Option<&mut [u32]>,
    ) {
        for (k, word) in words.iter_mut().enumerate() {
            let index = first + k;
            let twice = at.twice(self, index);
            let place = if !self.is_live(index) {
                *word = twice;
                0
            } else {
                let place = match self.away.get(at.run) {
                    Some(&[away_first, away_place, count]) if index >= away_first as usize => {
                        let place = away_place.wrapping_add(at.offset);
                        at.offset += 1;
                        if at.offset == count {
                            (at.run, at.offset) = (at.run + 1, 0);
                        }
                        place
                    }
                    _ => (index as u32).wrapping_sub(1),
                };
                *word = live_word(index as u32, twice.wrapping_sub(1), place);
                place
            };
            if let Some(places) = places.as_deref_mut() {
                places[k] = place;
            }
        }
    }

    /// The away run that slot `index` or the live slots after it come to first, and how
    /// many of its slots lie before `index`.
    fn away_position(&self, index: usize) -> (usize, u32) {
        let run = self.away.partition_point(|r| (r[0] as usize) < index);
        let Some(&[first, _, count]) = run.checked_sub(1).and_then(|r| self.away.get(r)) else {
            return (run, 0);
        };
        let done = count_in(&self.live, u64::from(first), index as u64) as u32;
        if done < count {
            (run - 1, done)
        } else {
            (run, 0)
        }
    }

    /// Every slot's `(version, place)`, in index order (a vacant slot's place is 0).
    pub(crate) fn records(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut away = self.away_slots().peekable();
        let generations = self
            .generations
            .iter()
            .flat_map(|&[g, n]| std::iter::repeat_n(g, n as usize));
        generations.enumerate().map(move |(index, g)| {
            let live = self.is_live(index);
            let version = (2 * g).wrapping_sub(u32::from(live));
            if !live {
                return (version, 0);
            }
            match away.peek() {
                Some(&(i, place)) if i as usize == index => {
                    away.next();
                    (version, place)
                }
                _ => (version, (index as u32).wrapping_sub(1)),
            }
        })
    }

    /// Bytes of this image in a snapshot's SLOT body (after the form byte): the bitmap,
    /// then the counted generation runs and away runs.
    pub(crate) fn encoded_len(&self) -> u64 {
        encoded_len(self.live.len(), self.generations.len(), self.away.len())
    }

    /// The version of slot `index`.
    #[cfg(test)]
    pub(crate) fn version(&self, index: usize) -> Option<u32> {
        self.records().nth(index).map(|r| r.0)
    }
}

impl TableImage {
    /// [`check`](TableImage::check) for a slot table given as [`GenerationImage`].
    pub(crate) fn check_generations(
        &self,
        image: &GenerationImage,
        bad: impl Fn(String) -> SnapshotError,
    ) -> Result<ImageSummary, SnapshotError> {
        let n = image.len;
        if n == 0 || image.live.len() != n.div_ceil(64) {
            return Err(bad(format!(
                "a liveness bitmap of {} words for {n} slots",
                image.live.len()
            )));
        }
        if image.live[0] & 1 != 0 {
            return Err(bad("slot 0 is the sentinel (0, 0), not a live slot".into()));
        }
        if !n.is_multiple_of(64) && image.live[n / 64] >> (n % 64) != 0 {
            return Err(bad(format!("the liveness bitmap marks slots past the {n}")));
        }
        check_generation_runs(image, &bad)?;
        let shift = self.per_chunk.ilog2();
        let places = (self.chunks_present.len() as u64) << shift;
        let taken = taken_places(image, places, &bad)?;
        let live: u64 = image.live.iter().map(|w| u64::from(w.count_ones())).sum();
        // Every taken place lies in a chunk that exists.
        let mut per_chunk_live = vec![0u32; self.chunks_present.len()];
        for (c, present) in self.chunks_present.iter().enumerate() {
            let (from, to) = ((c as u64) << shift, ((c as u64 + 1) << shift));
            let count = count_in(&taken, from, to);
            if count > 0 && !present {
                let p = first_in(&taken, from, to).expect("a counted bit");
                return Err(bad(format!(
                    "a live slot names place {p} in chunk {c}, which does not exist"
                )));
            }
            per_chunk_live[c] = count as u32;
        }
        let vacant = n as u64 - 1 - live;
        self.check_vacant_list(vacant, |i| !image.is_live(i))
            .map_err(&bad)?;
        let holes = self.holes(last_set(&taken), &per_chunk_live);
        Ok(ImageSummary {
            live,
            vacant,
            chunks: self.chunks_present.iter().filter(|p| **p).count() as u64,
            holes,
        })
    }
}

/// The generation runs cover the slots exactly, and every slot's version is within 31
/// bits: slot 0 is the sentinel at generation 0, a live slot needs a generation from 1
/// (an odd version), a vacant one a generation below 2^30.
fn check_generation_runs(
    image: &GenerationImage,
    bad: &impl Fn(String) -> SnapshotError,
) -> Result<(), SnapshotError> {
    let mut at = 0u64;
    for &[g, count] in &image.generations {
        let end = at + u64::from(count);
        if count == 0 || end > image.len as u64 {
            return Err(bad(format!(
                "the generation run ({g}, {count}) from slot {at} does not fit the {} slots",
                image.len
            )));
        }
        if at == 0 && g != 0 {
            return Err(bad(format!(
                "slot 0 is the sentinel (0, 0), not generation {g}"
            )));
        }
        let live = count_in(&image.live, at, end);
        let fits = match g {
            0 => live == 0,
            MAX_GENERATION => live == u64::from(count),
            g => g < MAX_GENERATION,
        };
        if !fits {
            return Err(bad(format!(
                "slots {at}..{end} of generation {g}: versions count within 31 bits, and a \
                 live slot has an odd one"
            )));
        }
        at = end;
    }
    if at != image.len as u64 {
        return Err(bad(format!(
            "the generation runs cover {at} of the {} slots",
            image.len
        )));
    }
    Ok(())
}

/// The place bitmap of every live slot (`places` bits): home places from the liveness
/// bitmap shifted by one, then the away runs' places, each checked to be inside the
/// table and taken once.
fn taken_places(
    image: &GenerationImage,
    places: u64,
    bad: &impl Fn(String) -> SnapshotError,
) -> Result<Vec<u64>, SnapshotError> {
    let n = image.len as u64;
    let home = home_slots(image, bad)?;
    // Slot i's home place is i - 1: slots from `places + 1` on would be past the chunks.
    if count_in(&home, places + 1, n) > 0 {
        let i = first_in(&home, places + 1, n).expect("a counted bit");
        return Err(bad(format!(
            "live slot {i} names place {}, past the {places} places of the table's chunks",
            i - 1
        )));
    }
    // Bit p of `taken` is bit p + 1 of `home`.
    let words = places.div_ceil(64) as usize;
    let mut taken: Vec<u64> = (0..words)
        .map(|w| {
            let lo = home.get(w).copied().unwrap_or(0) >> 1;
            let hi = home.get(w + 1).copied().unwrap_or(0) << 63;
            lo | hi
        })
        .collect();
    if !places.is_multiple_of(64)
        && let Some(last) = taken.last_mut()
    {
        *last &= (1u64 << (places % 64)) - 1;
    }
    for &[index, place, count] in &image.away {
        let end = u64::from(place) + u64::from(count);
        if end > places {
            return Err(bad(format!(
                "live slots from {index} name places {place}..{end}, past the {places} \
                 places of the table's chunks"
            )));
        }
        if let Some(p) = set_range(&mut taken, u64::from(place), end) {
            return Err(bad(format!(
                "two live slots name place {p} (one is in the away run from slot {index})"
            )));
        }
    }
    Ok(taken)
}

/// The liveness bitmap without the slots the away runs name, after checking that each
/// run starts at a live slot past the previous run's last one, counts at least one slot
/// and no more than there are live slots after its first.
fn home_slots(
    image: &GenerationImage,
    bad: &impl Fn(String) -> SnapshotError,
) -> Result<Vec<u64>, SnapshotError> {
    let mut home = image.live.clone();
    let mut next_free = 0usize;
    for &[index, place, count] in &image.away {
        let first = index as usize;
        let starts_well = first >= next_free && first < image.len && image.is_live(first);
        let last = (starts_well && count > 0)
            .then(|| take_live(&mut home, first, count))
            .flatten();
        match last {
            Some(last) => next_free = last + 1,
            None => {
                return Err(bad(format!(
                    "the away list's run ({index}, {place}, {count}) does not name live \
                     slots after the previous run's, in order"
                )));
            }
        }
    }
    Ok(home)
}

/// Clears the first `count` set bits of `words` from bit `first` on, a word at a time;
/// returns the last one cleared, or `None` (having cleared some) if there are fewer.
fn take_live(words: &mut [u64], first: usize, count: u32) -> Option<usize> {
    let mut left = count;
    let mut w = first / 64;
    let mut bits = words.get(w)? & (u64::MAX << (first % 64));
    loop {
        let here = bits.count_ones();
        if here >= left {
            // The lowest `left` set bits: clear them one at a time (fewer than 64).
            let mut last = 0;
            for _ in 0..left {
                last = bits.trailing_zeros();
                bits &= bits - 1;
                words[w] &= !(1u64 << last);
            }
            return Some(w * 64 + last as usize);
        }
        words[w] &= !bits;
        left -= here;
        w += 1;
        bits = *words.get(w)?;
    }
}

/// The index of the set bit of `words` that comes `n` set bits after bit `first`
/// (which is set), a word at a time; past the end if there are not that many.
fn nth_set(words: &[u64], first: usize, n: usize) -> usize {
    let mut left = n + 1;
    let mut w = first / 64;
    let mut bits = words.get(w).map_or(0, |&b| b & (u64::MAX << (first % 64)));
    loop {
        let here = bits.count_ones() as usize;
        if here >= left {
            for _ in 1..left {
                bits &= bits - 1;
            }
            return w * 64 + bits.trailing_zeros() as usize;
        }
        left -= here;
        w += 1;
        match words.get(w) {
            Some(&b) => bits = b,
            None => return words.len() * 64,
        }
    }
}

/// The indices of the set bits of `words` from bit `first` on, in order.
fn live_slots_from(words: &[u64], first: usize) -> impl Iterator<Item = usize> + '_ {
    let mut w = first / 64;
    let mut bits = words.get(w).map_or(0, |&b| b & (u64::MAX << (first % 64)));
    std::iter::from_fn(move || {
        while bits == 0 {
            w += 1;
            bits = *words.get(w)?;
        }
        let bit = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        Some(w * 64 + bit)
    })
}

/// Bytes of a generation image of `words` bitmap words, `generations` generation runs
/// and `away` away runs in a snapshot's SLOT body.
fn encoded_len(words: usize, generations: usize, away: usize) -> u64 {
    words as u64 * 8 + 4 + generations as u64 * 8 + 4 + away as u64 * 12
}

/// Set bits of `words` in `from..to`.
fn count_in(words: &[u64], from: u64, to: u64) -> u64 {
    if from >= to {
        return 0;
    }
    let (first, last) = (from / 64, (to - 1) / 64);
    (first..=last)
        .map(|w| {
            let word = words.get(w as usize).copied().unwrap_or(0);
            let lo = from.max(w * 64) - w * 64;
            let hi = to.min(w * 64 + 64) - w * 64;
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            u64::from((word & mask).count_ones())
        })
        .sum()
}

/// The first set bit of `words` in `from..to`.
fn first_in(words: &[u64], from: u64, to: u64) -> Option<u64> {
    (from..to).find(|&p| {
        words
            .get(p as usize / 64)
            .is_some_and(|w| w >> (p % 64) & 1 == 1)
    })
}

/// The highest set bit of `words`.
fn last_set(words: &[u64]) -> Option<u64> {
    let w = words.iter().rposition(|&w| w != 0)?;
    Some(w as u64 * 64 + 63 - u64::from(words[w].leading_zeros()))
}

impl<T> Table<T> {
    /// Bytes the slot table would take as a [`GenerationImage`] in a snapshot
    /// ([`GenerationImage::encoded_len`]), counted without building it.
    pub(crate) fn generation_image_len(&self) -> u64 {
        let words = self.slots.words();
        if words.is_empty() {
            return encoded_len(1, 1, 0);
        }
        let (mut runs, mut last) = (0usize, None);
        for &word in words {
            let generation = (word_version(word) + (word & 1)) / 2;
            if last != Some(generation) {
                runs += 1;
                last = Some(generation);
            }
        }
        let mut away = 0;
        self.away_runs(|_| away += 1);
        encoded_len(words.len().div_ceil(64), runs, away)
    }

    /// Calls `f` with each away run of the slot table ([`GenerationImage::away`]), in
    /// index order: live slots away from home whose places follow one another, with no
    /// live slot at home between them.
    fn away_runs(&self, mut f: impl FnMut([u32; 3])) {
        let mut open: Option<[u32; 3]> = None;
        for (block, slots) in self.slots.words().chunks(64).enumerate() {
            let (mut live, mut away) = (0u64, 0u64);
            for (k, &word) in slots.iter().enumerate() {
                live |= u64::from(word & 1) << k;
                away |= u64::from(word & AWAY != 0) << k;
            }
            if away == 0 {
                if live != 0 {
                    open.take().map(&mut f);
                }
                continue;
            }
            while live != 0 {
                let k = live.trailing_zeros() as usize;
                live &= live - 1;
                let index = block * 64 + k;
                if away >> k & 1 == 0 {
                    open.take().map(&mut f);
                    continue;
                }
                let place = self.slots.place(index);
                match &mut open {
                    Some([_, first, count]) if first.wrapping_add(*count) == place => *count += 1,
                    _ => {
                        open.replace([index as u32, place, 1]).map(&mut f);
                    }
                }
            }
        }
        open.map(f);
    }

    /// The slot table as a [`GenerationImage`]: one pass over the slot words, and one
    /// more over the live slots if some are away.
    pub(crate) fn generation_image(&self) -> GenerationImage {
        let words = self.slots.words();
        if words.is_empty() {
            return GenerationImage {
                len: 1,
                live: vec![0],
                generations: vec![[0, 1]],
                away: Vec::new(),
            };
        }
        let generation_of = |word: u32| (word_version(word) + (word & 1)) / 2;
        let mut live = Vec::with_capacity(words.len().div_ceil(64));
        let mut generations: Vec<[u32; 2]> = Vec::new();
        let mut any_away = false;
        // 64 slots at a time: their liveness bits gathered in a register, and their
        // generations counted in one go when they all continue the current run.
        for slots in words.chunks(64) {
            let mut bits = 0u64;
            for (k, &word) in slots.iter().enumerate() {
                bits |= u64::from(word & 1) << k;
                any_away |= word & AWAY != 0;
            }
            live.push(bits);
            match generations.last_mut() {
                Some([g, n]) if slots.iter().all(|&w| generation_of(w) == *g) => {
                    *n += slots.len() as u32;
                }
                _ => {
                    for &word in slots {
                        let generation = generation_of(word);
                        match generations.last_mut() {
                            Some([g, n]) if *g == generation => *n += 1,
                            _ => generations.push([generation, 1]),
                        }
                    }
                }
            }
        }
        let mut away = Vec::new();
        if any_away {
            self.away_runs(|run| away.push(run));
        }
        GenerationImage {
            len: words.len(),
            live,
            generations,
            away,
        }
    }

    /// Sets the slots and the chunks' expected owners from `image`, which passed
    /// [`TableImage::check_generations`]; the slot array holds `image.len` zeroed slots
    /// (with a place array if any slot is away) and the chunks exist.
    pub(crate) fn restore_generations(&mut self, image: &GenerationImage) -> usize {
        let (words, places) = self.slots.entries_mut();
        image.write_slots(words, places);
        // Owners: runs of home slots a chunk's stretch at a time, then the away runs.
        let mut home = image.live.clone();
        for &[first, _, count] in &image.away {
            take_live(&mut home, first as usize, count).expect("a checked image");
        }
        let mut live = 0usize;
        if self.per_chunk.is_multiple_of(64) {
            live += self.expect_home_slots(&home);
        } else {
            for (first, count) in bit_runs(&home) {
                live += count as usize;
                self.expect_owner_run(first - 1, first, count);
            }
        }
        live + self.expect_away_runs(image)
    }

    /// Expects the objects of the away runs' slots at their places, a chunk's stretch of
    /// each run at a time, on every thread when there are many (each task owning a
    /// stretch of chunks); returns how many.
    fn expect_away_runs(&mut self, image: &GenerationImage) -> usize {
        let away: usize = image.away.iter().map(|r| r[2] as usize).sum();
        let tasks = if away >= OWNER_RUNS_IN_PARALLEL_FROM {
            rayon::current_num_threads()
        } else {
            1
        };
        self.owner_stretches(tasks)
            .into_par_iter()
            .for_each(|mut stretch| stretch.expect_away_runs(image));
        away
    }
}

impl<T> OwnerStretch<'_, T> {
    /// Marks the places of the away runs that lie in this stretch as pending for their
    /// slots.
    fn expect_away_runs(&mut self, image: &GenerationImage) {
        let places = self.places();
        let mut owners: Vec<u32> = Vec::new();
        for &[first, place, count] in &image.away {
            let end = u64::from(place) + u64::from(count);
            if end <= places.start || u64::from(place) >= places.end {
                continue;
            }
            let (from, to) = (u64::from(place).max(places.start), end.min(places.end));
            let skip = (from - u64::from(place)) as usize;
            let mut slots =
                live_slots_from(&image.live, nth_set(&image.live, first as usize, skip));
            let mut at = from;
            while at < to {
                let ci = (at >> self.shift) as usize - self.first_chunk;
                let pos = (at & u64::from(self.per_chunk - 1)) as u32;
                let here = (to - at).min(u64::from(self.per_chunk - pos)) as usize;
                owners.clear();
                owners.extend(slots.by_ref().take(here).map(|i| i as u32));
                self.chunks[ci]
                    .as_mut()
                    .expect("a checked image names existing chunks")
                    .expect_owner_list(pos, &owners);
                at += here as u64;
            }
        }
    }
}

impl<T> Table<T> {
    /// Expects the object of every slot whose bit is set in `home` at its home place
    /// (slot `i` at place `i - 1`), 64 places at a time; the chunks hold at least 64
    /// places, a multiple of 64. Returns how many it expects.
    fn expect_home_slots(&mut self, home: &[u64]) -> usize {
        let per = self.per_chunk as usize;
        // Bits `bit .. bit + 64` of `home` (zero past its end).
        let bits_at = |bit: usize| {
            let (k, shift) = (bit / 64, bit % 64);
            let low = home.get(k).copied().unwrap_or(0) >> shift;
            let high = match shift {
                0 => 0,
                _ => home.get(k + 1).copied().unwrap_or(0) << (64 - shift),
            };
            low | high
        };
        let mut expected = 0;
        for (ci, chunk) in self.chunks.iter_mut().enumerate() {
            let Some(chunk) = chunk else { continue };
            for w in 0..per / 64 {
                let bits = bits_at(ci * per + 64 * w + 1);
                if bits != 0 {
                    chunk.expect_home_word(w, bits);
                    expected += bits.count_ones() as usize;
                }
            }
        }
        let listed: usize = home.iter().map(|w| w.count_ones() as usize).sum();
        assert_eq!(expected, listed, "a checked image names existing chunks");
        expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::persist::SlotImage;
    use crate::table::persist::tests::restored_on_threads;
    use crate::table::{Handle, default_pool};

    /// A table of 64-place chunks with removals, reused slots and (after a partial
    /// compaction) objects away from their home places.
    fn churned(moved: bool) -> (Table<u64>, Vec<Handle<u64>>) {
        churned_in_chunks_of(64, moved)
    }

    /// As [`churned`], with `places` places a chunk.
    fn churned_in_chunks_of(places: usize, moved: bool) -> (Table<u64>, Vec<Handle<u64>>) {
        let mut t = Table::<u64>::with_pool_and_chunk_bytes(default_pool(), places * 8);
        let hs: Vec<_> = (0..700u64).map(|i| t.insert(i)).collect();
        for (k, h) in hs.iter().enumerate() {
            if k % 3 == 1 || (200..260).contains(&k) {
                t.remove(*h);
            }
        }
        for i in 0..50u64 {
            t.insert(1000 + i);
        }
        if moved {
            t.defragment();
        }
        (t, hs)
    }

    fn as_generations(t: &Table<u64>) -> TableImage {
        TableImage {
            slots: SlotImage::Generations(t.generation_image()),
            ..t.image()
        }
    }

    #[test]
    fn a_generation_image_holds_checks_and_rebuilds_like_records() {
        // Chunks of 64 places and more take home slots a bitmap word at a time; smaller
        // ones a run at a time.
        for (places, moved) in [
            (64, false),
            (64, true),
            (256, false),
            (16, false),
            (16, true),
        ] {
            let (t, hs) = churned_in_chunks_of(places, moved);
            let records = t.image();
            let generations = as_generations(&t);
            let SlotImage::Generations(g) = &generations.slots else {
                unreachable!()
            };
            assert_eq!(g.away.is_empty(), !moved, "moved {moved}");
            assert_eq!(t.generation_image_len(), g.encoded_len());
            assert!(generations.slots.iter().eq(records.slots.iter()));
            assert_eq!(generations.slots.has_away(), records.slots.has_away());
            assert_eq!(
                generations.check("u64").unwrap(),
                records.check("u64").unwrap()
            );
            let mut r = Table::<u64>::restore(default_pool(), t.hints(), &generations).unwrap();
            let mut values = t.object_runs().flatten().copied();
            r.fill_pending("u64", || values.next().map(Ok)).unwrap();
            drop(values);
            assert_eq!(r.image(), records);
            for h in &hs {
                assert_eq!(r.get(*h), t.get(*h));
            }
            let mut t = t;
            for i in 0..100u64 {
                let (a, b) = (t.insert(i), r.insert(i));
                assert_eq!((a, t.location(a)), (b, r.location(b)));
            }
        }
        // A table that never held an object is its sentinel.
        let empty = Table::<u64>::new();
        assert_eq!(as_generations(&empty).check("u64").unwrap().live, 0);
        assert_eq!(
            empty.generation_image_len(),
            empty.generation_image().encoded_len()
        );
    }

    #[test]
    fn a_table_compacted_in_order_is_one_away_run_and_restores_on_many_threads() {
        let mut t = Table::<u64>::with_pool_and_chunk_bytes(default_pool(), 64 * 8);
        let hs: Vec<_> = (0..5000u64).map(|i| t.insert(i)).collect();
        for (k, h) in hs.iter().enumerate() {
            if k % 3 == 1 || (2000..2600).contains(&k) || k % 7 == 0 {
                t.remove(*h);
            }
        }
        for i in 0..50u64 {
            t.insert(1000 + i); // reused slots: more generation runs
        }
        t.compact_in_order().unwrap();
        let image = as_generations(&t);
        let SlotImage::Generations(g) = &image.slots else {
            unreachable!()
        };
        assert_eq!(g.away.len(), 1, "{:?}", g.away);
        assert!(g.generations.len() > 2);
        image.check("u64").unwrap();
        // Tasks of about 5000 / 12 slots, most starting inside the away run.
        let r = restored_on_threads(&t, &image, 3);
        assert_eq!(r.image(), t.image());
        assert_eq!(r.slots.words(), t.slots.words(), "versions and away bits");
        for h in &hs {
            assert_eq!(r.get(*h), t.get(*h));
        }
        // Each place's owner: the handles iteration reads from the chunks.
        assert!(r.iter().eq(t.iter()));
    }

    #[test]
    fn check_refuses_inconsistent_generation_images() {
        let (t, _) = churned(true);
        let good = as_generations(&t);
        good.check("u64").unwrap();
        let SlotImage::Generations(g) = &good.slots else {
            unreachable!()
        };
        assert!(g.away.len() >= 2, "{:?}", g.away);
        let edit = |f: &dyn Fn(&mut GenerationImage)| {
            let mut image = good.clone();
            let SlotImage::Generations(g) = &mut image.slots else {
                unreachable!()
            };
            f(g);
            image
        };
        let first_vacant = |g: &GenerationImage| (1..g.len).find(|&i| !g.is_live(i)).unwrap();
        let cases: Vec<(&str, TableImage)> = vec![
            ("sentinel", edit(&|g| g.live[0] |= 1)),
            ("sentinel", edit(&|g| g.generations[0][0] = 3)),
            (
                "cover",
                edit(&|g| g.generations.last_mut().unwrap()[1] -= 1),
            ),
            ("does not fit", edit(&|g| g.generations.push([1, 5]))),
            (
                "31 bits",
                edit(&|g| g.generations.last_mut().unwrap()[0] = 1 << 31),
            ),
            ("liveness bitmap", edit(&|g| g.live.push(0))),
            ("past the", edit(&|g| g.live[g.len / 64] |= 1 << 63)),
            ("away list", edit(&|g| g.away.reverse())),
            ("away list", edit(&|g| g.away.insert(1, g.away[0]))),
            ("away list", edit(&|g| g.away[0][2] = 0)),
            (
                "away list",
                edit(&|g| g.away[0][0] = first_vacant(g) as u32),
            ),
            (
                "away list",
                edit(&|g| g.away.last_mut().unwrap()[2] += 1000),
            ),
            ("two live slots", edit(&|g| g.away[0][1] = g.away[1][1])),
            ("past the", edit(&|g| g.away[0][1] = 1 << 30)),
            (
                "two live slots",
                // A vacant slot made live at home, where a moved object lies.
                edit(&|g| {
                    let v = first_vacant(g);
                    g.live[v / 64] |= 1 << (v % 64);
                }),
            ),
        ];
        for (want, image) in cases {
            let err = image.check("u64").unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        let mut short = good.clone();
        short.free_order.as_mut().unwrap().pop();
        assert!(
            short
                .check("u64")
                .unwrap_err()
                .to_string()
                .contains("free list holds")
        );
    }

    #[test]
    fn bit_runs_cross_words_and_stop_at_clear_bits() {
        let mut words = vec![0u64; 4];
        for p in (3..70).chain(100..101).chain(128..256) {
            words[p / 64] |= 1 << (p % 64);
        }
        let runs: Vec<_> = bit_runs(&words).collect();
        assert_eq!(runs, [(3, 67), (100, 1), (128, 128)]);
        assert_eq!(bit_runs(&[0, 0]).count(), 0);
        assert_eq!(bit_runs(&[u64::MAX]).collect::<Vec<_>>(), [(0, 64)]);
        assert_eq!(last_set(&words), Some(255));
        assert_eq!(count_in(&words, 60, 130), 10 + 1 + 2);
    }
}
