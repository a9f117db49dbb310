//! A table's slots: per handle index, a 4-byte word (the version, and whether the object
//! is at its home place) and a 4-byte place, in two pool [`Span`]s.
//!
//! The object of slot `i` usually sits at place `i - 1`, its *home*: an insert gives the
//! object at place `p` slot `p + 1` whenever it can. A lookup therefore compares the
//! handle's generation with the slot's word alone, and reads the object at the home
//! place while the word is still on its way; only an object that was moved (by
//! defragmentation, or an insert that found slot `p + 1` taken) needs the place array.
//! The words are half the bytes of whole slots, so more of them stay in cache: on a
//! million-object table a lookup costs about what `SlotMap::get` does. While every
//! object is at home there is no place array at all: it is made (four bytes a slot) by
//! [`SlotArray::list_places`], which whatever may move an object away calls first.
//!
//! The arrays live in spans rather than `Vec`s so that they are the pool's memory, grow
//! without copying, and get huge pages once they are large.
//!
//! Invariants: `len` words are initialised, and `len` places while `places_listed`
//! (else no live slot is away); slot 0, once there, is the sentinel (word 0, place 0),
//! never live; a live slot's word is `version | AWAY` where `version` is odd and below
//! 2^31 and [`AWAY`] is set iff its place is not `index - 1`; a vacant slot's word is its
//! even version; the first `committed` bytes of each span are counted in the pool and
//! hold at least `room` entries (the places' span only while listed), and `len <= room`.

use rayon::prelude::*;

use crate::error::Error;
use crate::pool::HierarchicalPool;
use crate::pool::span::Span;

/// Bit 31 of a slot's word: set while the object does not sit at place `index - 1`.
pub(crate) const AWAY: u32 = 1 << 31;

/// The word a slot holds for a handle of `generation` whose object is at home: odd (as
/// [`Handle::from_bits`](super::Handle::from_bits) makes it) and without [`AWAY`].
#[inline]
pub(crate) fn home_word(generation: u32) -> u32 {
    (generation | 1) & !AWAY
}

/// The version a slot word holds.
#[inline]
pub(crate) fn word_version(word: u32) -> u32 {
    word & !AWAY
}

/// True for the word of a live slot.
#[inline]
pub(crate) fn word_is_live(word: u32) -> bool {
    word & 1 == 1
}

/// The word of live slot `index` of `version` at `place`.
#[inline]
pub(super) fn live_word(index: u32, version: u32, place: u32) -> u32 {
    debug_assert!(version & 1 == 1 && version & AWAY == 0);
    if place == index.wrapping_sub(1) {
        version
    } else {
        version | AWAY
    }
}

/// The most slots a table holds: index `u32::MAX` is the null handle's.
pub(crate) const MAX_SLOTS: usize = u32::MAX as usize;

/// Slots are committed in steps of this many bytes of each array.
const COMMIT_STEP: usize = 64 << 10;

/// Bulk inserts and restores that write at least this many bytes of objects or slots one
/// after another have that memory faulted in on every thread first.
pub(super) const PREFAULT_FROM_BYTES: usize = 8 << 20;

/// The stretch of memory one thread faults in at a time: a huge page, so that no two
/// threads fault the same one.
const PREFAULT_PIECE_BYTES: usize = 2 << 20;

/// Has the committed bytes `from..to` of `span` faulted in on every thread, a huge page
/// per task.
pub(super) fn populate_in_parallel(span: &Span, from: usize, to: usize) {
    let aligned = from - from % PREFAULT_PIECE_BYTES;
    (aligned..to)
        .into_par_iter()
        .step_by(PREFAULT_PIECE_BYTES)
        .for_each(|piece| {
            let (a, b) = (piece.max(from), (piece + PREFAULT_PIECE_BYTES).min(to));
            span.populate(a, b - a);
        });
}

/// Place-array entries one task writes when the array is made (4 MiB of them).
const PLACES_PER_TASK: usize = 1 << 20;

/// Slots one task of a snapshot's restore writes, at least (4 MiB of words; fewer in
/// unit tests, so that small tables take the parallel path).
const SLOTS_PER_TASK: usize = if cfg!(test) { 1 << 10 } else { 1 << 20 };

/// Writes the slots of `runs` (see [`SlotArray::restore_runs`]), the first of them slot
/// `first_slot`, into `words` and, when the place array is kept, `places`, which hold
/// exactly those slots. Returns how many are live.
fn restore_runs_into(
    first_slot: usize,
    runs: &[[u32; 3]],
    words: &mut [u32],
    mut places: Option<&mut [u32]>,
) -> usize {
    let (mut at, mut live) = (0usize, 0usize);
    for &[version, first_place, count] in runs {
        let range = at..at + count as usize;
        let first = (first_slot + at) as u32;
        let is_live = word_is_live(version);
        let word = if is_live && first_place != first.wrapping_sub(1) {
            version | AWAY
        } else {
            version
        };
        assert!(
            places.is_some() || word & AWAY == 0,
            "slots from {first} point away from home without a place array"
        );
        words[range.clone()].fill(word);
        if let Some(places) = places.as_deref_mut() {
            if is_live {
                for (p, place) in places[range].iter_mut().zip(first_place..) {
                    *p = place;
                }
            } else {
                places[range].fill(0);
            }
        }
        live += if is_live { count as usize } else { 0 };
        at += count as usize;
    }
    live
}

/// Points live slots at new places from many threads at once: the slot words and places
/// of an exclusively borrowed [`SlotArray`], for callers that each name their own slots.
pub(crate) struct PlaceWriter<'a> {
    words: *mut u32,
    places: *mut u32,
    len: usize,
    _array: std::marker::PhantomData<&'a mut SlotArray>,
}

// SAFETY: the writer stands for the exclusive borrow of a slot array's words and places
// (integers); `set_places`' contract keeps the threads that share it on distinct entries.
unsafe impl Send for PlaceWriter<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for PlaceWriter<'_> {}

impl PlaceWriter<'_> {
    /// Points the live slots `owners` at places `first_place`, `first_place + 1`, … (each
    /// word marked away from home unless the place is its home).
    ///
    /// # Safety
    /// No other call on this writer, on any thread, names a slot of `owners` while this
    /// one runs. (A table's owners are distinct: each live slot owns one place.)
    pub(crate) unsafe fn set_places(&self, owners: &[u32], first_place: u32) {
        for (k, &owner) in owners.iter().enumerate() {
            let (index, place) = (owner as usize, first_place.wrapping_add(k as u32));
            assert!(index < self.len, "slot {owner} is past the array");
            // SAFETY: in bounds (checked) of the committed, initialised words and places
            // the writer borrows; per the contract no other thread touches this entry.
            unsafe {
                let word = self.words.add(index);
                *word = live_word(owner, word_version(*word), place);
                *self.places.add(index) = place;
            }
        }
    }
}

/// A table's slots; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct SlotArray {
    words: Span,
    places: Span,
    /// Whether the place array is kept (some live slot is, or was, away).
    places_listed: bool,
    /// While the place array is not kept: entries below this one are written already
    /// (see [`list_places_step`](Self::list_places_step)).
    listed_upto: usize,
    len: usize,
    /// Slots that fit in the committed memory of the words and, when listed, the places.
    room: usize,
}

impl SlotArray {
    /// Slots held, the sentinel included (0 before the first).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of pool memory the slots hold.
    pub(crate) fn committed(&self) -> usize {
        self.words.committed() + self.places.committed()
    }

    #[inline]
    fn words_ptr(&self) -> *mut u32 {
        self.words.base().as_ptr().cast()
    }

    #[inline]
    fn places_ptr(&self) -> *mut u32 {
        self.places.base().as_ptr().cast()
    }

    /// The word of slot `index`, if the table holds it.
    #[inline]
    pub(crate) fn word(&self, index: usize) -> Option<u32> {
        // SAFETY: the first `len` words are initialised (invariant); `&self` keeps the
        // span from moving or changing.
        (index < self.len).then(|| unsafe { *self.words_ptr().add(index) })
    }

    /// The address of slot `index`'s word (for prefetching), if the table holds it.
    #[inline]
    pub(crate) fn word_ptr(&self, index: usize) -> Option<*const u32> {
        (index < self.len).then(|| self.words_ptr().wrapping_add(index).cast_const())
    }

    /// Whether slot `index` is held and live.
    #[inline]
    pub(crate) fn is_live(&self, index: usize) -> bool {
        self.word(index).is_some_and(word_is_live)
    }

    /// The version of slot `index` (0 past the end).
    #[inline]
    pub(crate) fn version(&self, index: usize) -> u32 {
        self.word(index).map_or(0, word_version)
    }

    /// The place of live slot `index` (0 past the end; meaningless while vacant).
    #[inline]
    pub(crate) fn place(&self, index: usize) -> u32 {
        if index >= self.len {
            0
        } else if self.places_listed {
            // SAFETY: as in `word`, for the place array (listed: `len` places are there).
            unsafe { *self.places_ptr().add(index) }
        } else {
            (index as u32).wrapping_sub(1)
        }
    }

    /// Whether the place array is kept.
    pub(crate) fn lists_places(&self) -> bool {
        self.places_listed
    }

    /// Makes the place array (from the home places, every live slot being at home) if
    /// there is none, so that slots may be pointed away from home. On error nothing
    /// changes but the entries already written.
    pub(crate) fn list_places(&mut self, pool: &HierarchicalPool) -> Result<(), Error> {
        self.list_places_step(pool, usize::MAX).map(|_| ())
    }

    /// Writes at most `max_entries` more entries of the place array, so that making it
    /// can be spread over bounded steps; returns whether the array is kept now. Entries
    /// written before a step hold their slots' home places, which stay right while no
    /// slot is away (and none is until the array is complete). On error nothing changes
    /// but the entries already written.
    pub(crate) fn list_places_step(
        &mut self,
        pool: &HierarchicalPool,
        max_entries: usize,
    ) -> Result<bool, Error> {
        if self.places_listed {
            return Ok(true);
        }
        let bytes = self.words.committed();
        if bytes > self.places.committed() {
            self.places.reserve(pool, bytes)?;
            let (from, more) = (self.places.committed(), bytes - self.places.committed());
            self.places.commit(pool, from, more)?;
        }
        let start = self.listed_upto.min(self.len);
        let end = self.len.min(start.saturating_add(max_entries));
        if end > start {
            // SAFETY: the places' span holds at least `len` committed entries (above),
            // which nothing else borrows.
            let places = unsafe {
                std::slice::from_raw_parts_mut(self.places_ptr().add(start), end - start)
            };
            // In parallel: for a large table, first writes to fresh pages cost more in the
            // kernel (zeroing, and under a hypervisor the host's provisioning) than the
            // writes themselves, and that cost is paid by the thread that faults.
            places
                .par_chunks_mut(PLACES_PER_TASK)
                .enumerate()
                .for_each(|(k, chunk)| {
                    let first = start + k * PLACES_PER_TASK;
                    for (i, p) in (first..).zip(chunk.iter_mut()) {
                        *p = (i as u32).saturating_sub(1);
                    }
                });
        }
        self.listed_upto = end;
        if end == self.len {
            self.places_listed = true;
            self.set_room();
        }
        Ok(self.places_listed)
    }

    /// Writes slot `index` (below `len`): its word and, where the place array is kept,
    /// its place. A slot pointed away needs the array ([`list_places`](Self::list_places)).
    #[inline(always)]
    fn write(&mut self, index: usize, word: u32, place: u32) {
        assert!(index < self.len, "slot {index} is past the array");
        assert!(
            self.places_listed || word & AWAY == 0,
            "slot {index} points away from home without a place array"
        );
        // SAFETY: in bounds (checked), inside the committed part of the words' span and,
        // when listed, of the places'; the exclusive borrow means nothing reads them now.
        unsafe {
            self.words_ptr().add(index).write(word);
            if self.places_listed {
                self.places_ptr().add(index).write(place);
            }
        }
    }

    /// Points the live slot `index` at `place` (away from home only once the place array
    /// is kept).
    #[inline]
    pub(crate) fn set_place(&mut self, index: u32, place: u32) {
        let version = self.version(index as usize);
        self.write(index as usize, live_word(index, version, place), place);
    }

    /// Points the live slots `owners` at places `first_place`, `first_place + 1`, …, as
    /// [`set_place`](Self::set_place) each; the place array must be kept.
    pub(crate) fn set_places(&mut self, owners: &[u32], first_place: u32) {
        // SAFETY: the exclusive borrow of the array makes this the only writer.
        unsafe { self.place_writer().set_places(owners, first_place) };
    }

    /// A writer of places that threads share, each pointing its own slots (see
    /// [`PlaceWriter::set_places`]); the place array must be kept.
    pub(crate) fn place_writer(&mut self) -> PlaceWriter<'_> {
        assert!(self.places_listed, "places are set only with a place array");
        PlaceWriter {
            words: self.words_ptr(),
            places: self.places_ptr(),
            len: self.len,
            _array: std::marker::PhantomData,
        }
    }

    /// Makes the live slot `index` vacant: the next version, even.
    #[inline]
    pub(crate) fn vacate(&mut self, index: u32) {
        let i = index as usize;
        assert!(i < self.len, "slot {index} is past the array");
        // SAFETY: in bounds (checked); the exclusive borrow makes the write unshared.
        unsafe {
            let word = self.words_ptr().add(i);
            debug_assert!(word_is_live(*word));
            *word = word_version(*word).wrapping_add(1) & !AWAY;
        }
    }

    /// Makes the live slot `index`, whose version the caller read as `version`, vacant:
    /// [`vacate`](Self::vacate) without reading the word again.
    #[inline]
    pub(crate) fn vacate_from(&mut self, index: u32, version: u32) {
        let i = index as usize;
        assert!(i < self.len, "slot {index} is past the array");
        debug_assert_eq!(self.version(i), version, "slot {index} changed");
        // SAFETY: in bounds (checked); the exclusive borrow makes the write unshared.
        unsafe { *self.words_ptr().add(i) = version.wrapping_add(1) & !AWAY };
    }

    /// Makes the vacant slot `index` live at `place`: the next version, odd.
    #[inline]
    pub(crate) fn occupy(&mut self, index: u32, place: u32) {
        let version = self.version(index as usize);
        debug_assert!(version & 1 == 0, "slot {index} is live");
        self.write(index as usize, live_word(index, version + 1, place), place);
    }

    /// Sets slot `index` (below `len`) from a snapshot's record: `version` (below 2^31)
    /// and, for a live slot, its place.
    pub(crate) fn restore(&mut self, index: u32, version: u32, place: u32) {
        if word_is_live(version) {
            self.write(index as usize, live_word(index, version, place), place);
        } else {
            self.write(index as usize, version, 0);
        }
    }

    /// The slot words and, when the place array is kept, the places, `len` of each, for
    /// a restore that writes every one of them (a snapshot's slot image).
    pub(super) fn entries_mut(&mut self) -> (&mut [u32], Option<&mut [u32]>) {
        // SAFETY: the first `len` words (and, when listed, places) lie in the committed
        // part of their spans and are initialised; the exclusive borrow of the array
        // keeps the two slices, which lie in separate spans, unique.
        let words = unsafe { std::slice::from_raw_parts_mut(self.words_ptr(), self.len) };
        let places = self.places_listed.then(|| {
            // SAFETY: as above, for the place array.
            unsafe { std::slice::from_raw_parts_mut(self.places_ptr(), self.len) }
        });
        (words, places)
    }

    /// Sets every slot from a snapshot's runs `[version, first place, count]`, which tile
    /// the slots `0..len` in index order: each run's slots get `version` (below 2^31)
    /// and, when live, consecutive places from its first place (away from home only once
    /// the place array is kept). Returns how many slots are live. A large array is
    /// written on every thread, a stretch of about [`SLOTS_PER_TASK`] slots per task.
    pub(crate) fn restore_runs(&mut self, runs: &[[u32; 3]]) -> usize {
        let total: u64 = runs.iter().map(|r| u64::from(r[2])).sum();
        assert_eq!(total, self.len as u64, "the runs do not tile the slots");
        let (mut words, mut places) = self.entries_mut();
        let mut tasks = Vec::new();
        let (mut first_run, mut first_slot) = (0, 0usize);
        while first_run < runs.len() {
            let (mut end_run, mut slots) = (first_run, 0usize);
            while end_run < runs.len() && slots < SLOTS_PER_TASK {
                slots += runs[end_run][2] as usize;
                end_run += 1;
            }
            let (task_words, rest) = std::mem::take(&mut words).split_at_mut(slots);
            words = rest;
            let task_places = places.take().map(|p| {
                let (task, rest) = p.split_at_mut(slots);
                places = Some(rest);
                task
            });
            tasks.push((
                first_slot,
                &runs[first_run..end_run],
                task_words,
                task_places,
            ));
            (first_run, first_slot) = (end_run, first_slot + slots);
        }
        tasks
            .into_par_iter()
            .map(|(first_slot, runs, words, places)| {
                restore_runs_into(first_slot, runs, words, places)
            })
            .sum()
    }

    /// The runs `[version, first place, count]` of the slots in index order (a run: slots
    /// of one version with consecutive places, or vacant slots with place 0), unless
    /// there are more than `budget` of them.
    pub(crate) fn runs_within(&self, budget: usize) -> Option<Vec<[u32; 3]>> {
        if !self.places_listed {
            return self.home_runs_within(budget);
        }
        let mut runs: Vec<[u32; 3]> = Vec::new();
        for (index, &word) in self.words().iter().enumerate() {
            let version = word_version(word);
            let place = if word_is_live(word) {
                self.place(index)
            } else {
                0
            };
            if let Some([v, p, n]) = runs.last_mut()
                && *v == version
                && (if word_is_live(word) {
                    p.wrapping_add(*n) == place
                } else {
                    place == 0
                })
            {
                *n += 1;
                continue;
            }
            if runs.len() == budget {
                return None;
            }
            runs.push([version, place, 1]);
        }
        Some(runs)
    }

    /// [`runs_within`](Self::runs_within) while every live slot is at home: a run is then
    /// a stretch of equal words (live ones name consecutive places), found with a
    /// comparison the compiler can vectorise.
    fn home_runs_within(&self, budget: usize) -> Option<Vec<[u32; 3]>> {
        let words = self.words();
        let mut runs: Vec<[u32; 3]> = Vec::new();
        let mut index = 0;
        while index < words.len() {
            if runs.len() == budget {
                return None;
            }
            let word = words[index];
            let count = words[index..]
                .iter()
                .position(|&w| w != word)
                .unwrap_or(words.len() - index);
            let place = if word_is_live(word) {
                (index as u32).wrapping_sub(1)
            } else {
                0
            };
            runs.push([word, place, count as u32]);
            index += count;
        }
        Some(runs)
    }

    /// Every slot's `(version, place)` in index order, the sentinel first; a vacant slot's
    /// place is given as 0.
    pub(crate) fn records(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.words().iter().enumerate().map(|(index, &w)| {
            if word_is_live(w) {
                (word_version(w), self.place(index))
            } else {
                (w, 0)
            }
        })
    }

    /// The words, the sentinel's first.
    pub(crate) fn words(&self) -> &[u32] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the first `len` words are initialised and the borrow keeps them.
        unsafe { std::slice::from_raw_parts(self.words_ptr(), self.len) }
    }

    /// Makes room for `additional` more slots (and the sentinel, if missing) without
    /// taking more memory later; on error nothing changes but the room already made.
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
        let bytes = want * 4;
        let spans = if self.places_listed {
            [Some(&mut self.words), Some(&mut self.places)]
        } else {
            [Some(&mut self.words), None]
        };
        for span in spans.into_iter().flatten() {
            if bytes > span.committed() {
                let to = bytes.div_ceil(COMMIT_STEP) * COMMIT_STEP;
                span.reserve(pool, to)?;
                let (from, more) = (span.committed(), to - span.committed());
                span.commit(pool, from, more)?;
            }
        }
        self.set_room();
        Ok(())
    }

    /// Recounts `room` from the committed bytes.
    fn set_room(&mut self) {
        let bytes = if self.places_listed {
            self.words.committed().min(self.places.committed())
        } else {
            self.words.committed()
        };
        self.room = bytes / 4;
    }

    /// Appends a live slot of `version` naming `place` (after the sentinel, which comes
    /// first in an empty array) and returns its index.
    #[inline]
    pub(crate) fn push(
        &mut self,
        pool: &HierarchicalPool,
        version: u32,
        place: u32,
    ) -> Result<u32, Error> {
        if self.len.max(1) + 1 > self.room {
            self.reserve(pool, 1)?;
        }
        if self.len == 0 {
            self.len = 1;
            self.write(0, 0, 0);
        }
        let index = self.len as u32;
        self.len += 1;
        self.write(index as usize, live_word(index, version, place), place);
        Ok(index)
    }

    /// Whether [`push_home`](Self::push_home) has the memory for one more slot.
    #[inline(always)]
    pub(crate) fn has_room_for_one(&self) -> bool {
        self.len < self.room
    }

    /// Appends a live slot of version 1 for an object at `place`, its home: the array
    /// holds `place + 1` slots (the sentinel included) and
    /// [`has_room_for_one`](Self::has_room_for_one).
    #[inline(always)]
    pub(crate) fn push_home(&mut self, place: u32) {
        assert!(
            self.len == place as usize + 1 && self.has_room_for_one(),
            "slot {} is not next or has no room",
            place as usize + 1
        );
        self.len += 1;
        self.write(place as usize + 1, 1, place);
    }

    /// Sets the length to `len` slots, all vacant of version 0 (the sentinel's form), for
    /// a restore to fill in. On error nothing changes but the room already made.
    pub(crate) fn reset_zeroed(
        &mut self,
        pool: &HierarchicalPool,
        len: usize,
    ) -> Result<(), Error> {
        self.reserve(pool, len.saturating_sub(self.len.max(1)))?;
        // The restore that follows writes every entry, one after another: a large array
        // has its fresh pages faulted in on every thread first.
        if len * 4 >= PREFAULT_FROM_BYTES {
            populate_in_parallel(&self.words, 0, len * 4);
            if self.places_listed {
                populate_in_parallel(&self.places, 0, len * 4);
            }
        }
        // Entries past `len` were never written since their bytes were committed, so
        // they read as zeros (the spans' promise): only the written ones are cleared.
        let written = self.len;
        // SAFETY: `max(len, written)` entries fit in the committed bytes of the words'
        // span and, when listed, of the places' (reserved above, or written before).
        unsafe {
            std::ptr::write_bytes(self.words_ptr(), 0, written);
            if self.places_listed {
                std::ptr::write_bytes(self.places_ptr(), 0, written);
            }
        }
        self.len = len;
        Ok(())
    }

    /// Gives every byte back to the pool; the array is empty afterwards.
    pub(crate) fn release(&mut self, pool: &HierarchicalPool) {
        // SAFETY: the exclusive borrow means no slot is borrowed; the array forgets them.
        unsafe {
            self.words.release(pool);
            self.places.release(pool);
        }
        self.len = 0;
        self.places_listed = false;
        self.listed_upto = 0;
        self.room = 0;
    }
}

/// Where the vacant slots are, for the inserts that cannot take their place's home slot:
/// a hierarchy of bitmaps, lowest slot first.
///
/// Bit `g` of level 0 is set when slots `64 g .. 64 g + 64` may hold a vacant slot; bit
/// `w` of level `l + 1` is set when word `w` of level `l` may be non-zero; the top level
/// is one word. Bits are set when slots are vacated and cleared lazily, when a search
/// finds nothing under them. A removal therefore usually only reads one word that
/// is already set (a group of 64 slots rarely sees its first vacancy), and makes no
/// store; a search clears at most one stale bit per bit set, so it is O(levels)
/// amortised. Which slot comes next depends only on which slots are vacant (the lowest),
/// not on the order they were vacated in, so a table loaded from a snapshot hands out the
/// same handles as the one saved.
///
/// Invariant: every vacant slot's group bit is set, and every non-zero word below the top
/// has its bit set in the level above.
#[derive(Debug, Default)]
pub(crate) struct VacantSlots {
    /// Level 0, apart from the others so that a removal reads it in one step.
    groups: Vec<u64>,
    /// Levels 1 and up.
    upper: Vec<Vec<u64>>,
}

impl VacantSlots {
    /// Notes that slot `index` was just vacated.
    #[inline]
    pub(crate) fn push(&mut self, index: u32) {
        if !self.covers(index) {
            self.mark(index as usize / 64);
        }
    }

    /// Whether the bit of `index`'s group is set already, so that vacating it needs no
    /// [`push`](Self::push).
    #[inline]
    pub(crate) fn covers(&self, index: u32) -> bool {
        let group = index as usize / 64;
        self.groups
            .get(group / 64)
            .is_some_and(|&word| word & 1 << (group % 64) != 0)
    }

    /// Sets the bit of `group` in level 0 and, while a word was zero before, its word's
    /// bit in the level above; adds levels while the top holds more than one word.
    #[cold]
    fn mark(&mut self, group: usize) {
        let mut pos = group;
        for l in 0.. {
            if l == self.level_count() {
                self.upper.push(Vec::new());
            }
            let words = self.level_mut(l);
            let w = pos / 64;
            if words.len() <= w {
                words.resize(w + 1, 0);
            }
            let was = words[w];
            words[w] = was | 1 << (pos % 64);
            if l + 1 == self.level_count() {
                break;
            }
            if was != 0 {
                return;
            }
            pos = w;
        }
        self.cap_levels();
    }

    /// Adds levels above the top until the top is one word.
    fn cap_levels(&mut self) {
        loop {
            let top = self.level_mut(self.level_count() - 1);
            if top.len() <= 1 {
                return;
            }
            let mut above = vec![0u64; top.len().div_ceil(64)];
            for (w, _) in top.iter().enumerate().filter(|(_, word)| **word != 0) {
                above[w / 64] |= 1 << (w % 64);
            }
            self.upper.push(above);
        }
    }

    /// Levels there are (level 0 always counts).
    fn level_count(&self) -> usize {
        1 + self.upper.len()
    }

    fn level(&self, l: usize) -> &[u64] {
        if l == 0 {
            &self.groups
        } else {
            &self.upper[l - 1]
        }
    }

    fn level_mut(&mut self, l: usize) -> &mut Vec<u64> {
        if l == 0 {
            &mut self.groups
        } else {
            &mut self.upper[l - 1]
        }
    }

    /// The lowest vacant slot, if any (it stays vacant until the caller occupies it).
    pub(crate) fn pop(&mut self, slots: &SlotArray) -> Option<u32> {
        'search: loop {
            let top = self.level_count() - 1;
            let mut w = 0;
            for l in (0..=top).rev() {
                let word = self.level(l).get(w).copied().unwrap_or(0);
                if word == 0 {
                    if l == top {
                        return None;
                    }
                    // A stale bit in the level above: clear it and search again.
                    self.level_mut(l + 1)[w / 64] &= !(1 << (w % 64));
                    continue 'search;
                }
                let bit = word.trailing_zeros() as usize;
                if l == 0 {
                    if let Some(index) = slots.first_vacant_in_group(w * 64 + bit) {
                        return Some(index);
                    }
                    self.groups[w] &= !(1 << bit);
                    continue 'search;
                }
                w = w * 64 + bit;
            }
        }
    }

    /// Marks the groups of `slots` that hold a vacant slot, and only those.
    pub(crate) fn rebuild(&mut self, slots: &SlotArray) {
        self.groups.clear();
        self.upper.clear();
        for (group, words) in slots.words().chunks(64).enumerate() {
            // Slot 0, the sentinel, is never vacant.
            let first = usize::from(group == 0);
            if words[first.min(words.len())..]
                .iter()
                .any(|&w| !word_is_live(w))
            {
                self.mark(group);
            }
        }
    }

    /// Bytes of the bitmaps.
    pub(crate) fn bytes(&self) -> usize {
        (self.groups.capacity() + self.upper.iter().map(Vec::capacity).sum::<usize>()) * 8
    }
}

impl SlotArray {
    /// The lowest vacant slot of `group` (slots `64 group .. 64 group + 64`), if any.
    fn first_vacant_in_group(&self, group: usize) -> Option<u32> {
        let start = (group * 64).max(1);
        let end = (group * 64 + 64).min(self.len);
        (start..end)
            .find(|&i| self.word(i).is_some_and(|w| !word_is_live(w)))
            .map(|i| i as u32)
    }

    /// Every vacant slot, lowest first: the order in which inserts that cannot take
    /// their home slot take them.
    #[cfg(test)]
    pub(crate) fn vacant_indices(&self) -> Vec<u32> {
        (1..self.len)
            .filter(|&i| self.word(i).is_some_and(|w| !word_is_live(w)))
            .map(|i| i as u32)
            .collect()
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
        assert_eq!(a.word(0), None);
        a.push(&pool, 1, 0).unwrap();
        assert!(!a.lists_places(), "a slot at home needs no place array");
        a.list_places(&pool).unwrap();
        for i in 2..100_000u32 {
            let index = a.push(&pool, 1, i * 3).unwrap();
            assert_eq!(index, i);
        }
        assert_eq!(a.len(), 100_000);
        assert_eq!((a.word(0), a.place(0), a.place(1)), (Some(0), 0, 0));
        assert!((2..100_000).all(|i| a.place(i) == i as u32 * 3));
        assert!(
            a.words()[2..]
                .iter()
                .all(|&w| word_version(w) == 1 && w & AWAY != 0)
        );
        assert_eq!(a.committed() % COMMIT_STEP, 0);
        assert!(a.committed() >= 100_000 * 8);
        a.reset_zeroed(&pool, 10).unwrap();
        assert!(a.records().eq(std::iter::repeat_n((0, 0), 10)));
        a.release(&pool);
        assert_eq!((a.len(), a.committed()), (0, 0));
    }

    #[test]
    fn a_place_array_made_in_steps_between_changes_names_every_home_place() {
        let pool = default_pool();
        let mut a = SlotArray::default();
        for place in 0..1000 {
            a.push(&pool, 1, place).unwrap();
        }
        assert!(!a.list_places_step(&pool, 300).unwrap());
        assert!(!a.lists_places(), "a partial array is not used");
        // Changes between steps: slots vacated and taken again, new slots past the end.
        a.vacate(10);
        a.occupy(10, 9);
        for place in 1000..70_000 {
            a.push(&pool, 1, place).unwrap();
        }
        let mut more_steps = 1;
        while !a.list_places_step(&pool, 16_384).unwrap() {
            more_steps += 1;
        }
        assert_eq!(more_steps, (70_001 - 300_usize).div_ceil(16_384));
        assert!(a.lists_places());
        assert_eq!((a.word(0), a.place(0)), (Some(0), 0));
        assert!((1..70_001).all(|i| a.place(i) == i as u32 - 1));
        assert!(
            a.list_places_step(&pool, 1).unwrap(),
            "a kept array needs no step"
        );
        a.set_place(5, 60_000);
        assert_eq!(a.place(5), 60_000);
        a.release(&pool);
        assert!(!a.lists_places());
    }

    #[test]
    fn a_slot_is_home_exactly_when_its_place_is_its_index_less_one() {
        let pool = default_pool();
        let mut a = SlotArray::default();
        assert_eq!(a.push(&pool, 1, 0).unwrap(), 1);
        assert_eq!(a.word(1), Some(home_word(1)));
        assert_eq!(a.place(1), 0, "a home place without a place array");
        let away = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut b = SlotArray::default();
            b.push(&pool, 1, 0).unwrap();
            b.set_place(1, 5);
        }));
        assert!(away.is_err(), "pointing away needs the place array first");
        a.list_places(&pool).unwrap();
        a.set_place(1, 5);
        assert_eq!(a.word(1), Some(1 | AWAY));
        assert_eq!((a.version(1), a.place(1)), (1, 5));
        a.vacate(1);
        assert_eq!((a.word(1), a.is_live(1)), (Some(2), false));
        a.occupy(1, 0);
        assert_eq!(a.word(1), Some(home_word(3)));
        a.restore(1, (1 << 31) - 1, 0);
        a.vacate(1);
        assert_eq!(a.version(1), 0, "versions wrap within 31 bits");
        assert_eq!(home_word(u32::MAX), (1 << 31) - 1);
        a.release(&pool);
    }

    /// Every vacant slot of `slots` has its group marked, and every marked word below the
    /// top is marked in the level above.
    fn assert_marked(v: &VacantSlots, slots: &SlotArray) {
        for (i, &w) in slots.words().iter().enumerate().skip(1) {
            assert!(
                word_is_live(w) || v.covers(i as u32),
                "vacant slot {i} is not marked"
            );
        }
        for l in 0..v.level_count() - 1 {
            for (w, &word) in v.level(l).iter().enumerate() {
                let above = v.level(l + 1).get(w / 64).copied().unwrap_or(0);
                assert!(
                    word == 0 || above & 1 << (w % 64) != 0,
                    "level {l} word {w}"
                );
            }
        }
    }

    /// Slots `1..=n`, each live at its home place.
    fn home_slots(pool: &HierarchicalPool, n: u32) -> SlotArray {
        let mut a = SlotArray::default();
        for i in 1..=n {
            a.push(pool, 1, i - 1).unwrap();
        }
        a
    }

    #[test]
    fn random_vacates_and_takes_keep_every_vacant_slot_marked_and_take_the_lowest() {
        let pool = default_pool();
        let n = 20_000u32;
        let mut a = home_slots(&pool, n);
        let mut v = VacantSlots::default();
        let mut x = 0x2545_f491_u64;
        for step in 0..30_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = 1 + (x % u64::from(n)) as u32;
            if x % 5 < 3 {
                if a.is_live(i as usize) {
                    a.vacate(i);
                    v.push(i);
                }
            } else if x % 5 == 3 {
                // Taken another way (its home place): its bit goes stale.
                if !a.is_live(i as usize) {
                    a.occupy(i, i - 1);
                }
            } else {
                let lowest = (1..=n).find(|&j| !a.is_live(j as usize));
                let taken = v.pop(&a);
                assert_eq!(taken, lowest, "step {step}");
                if let Some(j) = taken {
                    a.occupy(j, j - 1);
                }
            }
            if step % 1000 == 0 {
                assert_marked(&v, &a);
            }
        }
        assert_marked(&v, &a);
        let mut rebuilt = VacantSlots::default();
        rebuilt.rebuild(&a);
        assert_marked(&rebuilt, &a);
        a.release(&pool);
    }

    #[test]
    fn vacant_slots_are_found_lowest_first_past_stale_bits() {
        let pool = default_pool();
        let mut a = home_slots(&pool, 300_000);
        let mut v = VacantSlots::default();
        assert_eq!(v.pop(&a), None);
        for i in [250_000u32, 70_000, 3, 5, 7, 299_999] {
            a.vacate(i);
            v.push(i);
        }
        assert_eq!(v.level_count(), 3, "300k slots need three levels");
        // Slot 3 is taken another way: its bit stays, stale, and is passed over.
        a.occupy(3, 2);
        let mut taken = Vec::new();
        while let Some(i) = v.pop(&a) {
            a.occupy(i, i - 1);
            taken.push(i);
        }
        assert_eq!(taken, vec![5, 7, 70_000, 250_000, 299_999]);
        assert!(
            (0..v.level_count()).all(|l| v.level(l).iter().all(|&w| w == 0)),
            "stale bits are cleared"
        );
        a.vacate(9);
        v.rebuild(&a);
        assert_eq!(v.level_count(), 1, "one group marked");
        assert_eq!(a.vacant_indices(), vec![9]);
        assert_eq!(v.pop(&a), Some(9));
        a.release(&pool);
    }
}
