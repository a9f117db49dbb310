//! One chunk of a table: a fixed number of object places, with an occupancy bitmap and,
//! per place, the slot index that owns it (the back-reference that iteration and
//! defragmentation use).
//!
//! The object at the table's place `p` usually has slot `p + 1`, its home slot. While
//! every object of a chunk is at home the chunk keeps no owner list at all (the owner of
//! place `pos` is `home + pos`); the list is made, four bytes a place, when an object
//! with another owner comes.
//!
//! Invariants: bit `i` of `occupied` is set iff place `i` holds an initialised object,
//! its owner ([`Chunk::owner`]) is then the index of the slot that names this place (a
//! free place's owner is stale), `live` is the number of set bits, and every word before
//! `free_cursor` is full. During a snapshot load, `expected` marks the free places whose
//! object will come ([`Chunk::pending_runs`]). The places are `capacity` objects in a row
//! at `data`, in the table's span: the table commits that memory before making the chunk,
//! moves `data` when the span moves, and decommits it after [`Chunk::drop_objects`].

use std::ptr::NonNull;

use crate::pooled::PodBytes;

/// Which places of a chunk are occupied and by whom: [`Chunk::places`].
pub(crate) struct ChunkPlaces<'a> {
    pub(crate) occupied: &'a [u64],
    owners: Option<&'a [u32]>,
    home: u32,
    pub(crate) live: u32,
}

impl ChunkPlaces<'_> {
    /// Appends the owners of places `first..first + count` to `out`.
    pub(crate) fn owners_of(&self, first: u32, count: u32, out: &mut Vec<u32>) {
        let range = first as usize..(first + count) as usize;
        match self.owners {
            Some(owners) => out.extend_from_slice(&owners[range]),
            None => out.extend(range.map(|pos| self.home.wrapping_add(pos as u32))),
        }
    }
}

pub(crate) struct Chunk<T> {
    data: NonNull<T>,
    occupied: Box<[u64]>,
    /// The owner of each place; `None` while every object is at home.
    owners: Option<Box<[u32]>>,
    /// The home slot of place 0: the table's first place of the chunk, plus one.
    home: u32,
    capacity: u32,
    /// During a snapshot load: the free places whose objects are still to come.
    expected: Option<Box<[u64]>>,
    live: u32,
    /// Words of `occupied` before this one are full.
    free_cursor: u32,
    /// The table epoch of the last change to this chunk.
    pub dirty: u64,
}

impl<T> Chunk<T> {
    /// A chunk of `capacity` empty places at `data` (committed memory for `capacity`
    /// objects, aligned for them; dangling for zero-sized `T`) whose place 0 is the
    /// table's place `home - 1`.
    pub(crate) fn new(data: NonNull<T>, capacity: u32, home: u32, epoch: u64) -> Self {
        Chunk {
            data,
            occupied: vec![0; (capacity as usize).div_ceil(64)].into_boxed_slice(),
            owners: None,
            home,
            capacity,
            expected: None,
            live: 0,
            free_cursor: 0,
            dirty: epoch,
        }
    }

    /// Points the chunk at its places' new address (the table's span moved, bytes and
    /// all).
    pub(crate) fn rebase(&mut self, data: NonNull<T>) {
        self.data = data;
    }

    /// Bytes of the chunk's bookkeeping (bitmap and owners).
    pub(crate) fn metadata_bytes(&self) -> usize {
        self.occupied.len() * 8
            + self.owners.as_ref().map_or(0, |o| o.len() * 4)
            + self.expected.as_ref().map_or(0, |e| e.len() * 8)
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Whether the chunk keeps an owner list (some object is away from home).
    #[cfg(test)]
    pub(crate) fn lists_owners(&self) -> bool {
        self.owners.is_some()
    }

    /// Sets the owner of place `pos`, making the owner list if `owner` is not the
    /// place's home slot.
    #[inline(always)]
    fn set_owner(&mut self, pos: u32, owner: u32) {
        let home = self.home.wrapping_add(pos);
        match &mut self.owners {
            Some(owners) => owners[pos as usize] = owner,
            None if owner == home => {}
            None => self.owners_mut()[pos as usize] = owner,
        }
    }

    pub(crate) fn live(&self) -> u32 {
        self.live
    }

    /// Words in the occupancy bitmap.
    pub(crate) fn bitmap_words(&self) -> usize {
        self.occupied.len()
    }

    /// Word `w` of the occupancy bitmap: bit `i` is set when place `64 * w + i` is taken.
    /// The occupancy bitmap (bits past the capacity clear).
    pub(crate) fn occupied_words(&self) -> &[u64] {
        &self.occupied
    }

    pub(crate) fn occupied_word(&self, w: usize) -> u64 {
        self.occupied[w]
    }

    /// The free places of word `w` of the bitmap, as its bits (none past the capacity).
    pub(crate) fn free_word(&self, w: usize) -> u64 {
        let places_from_w = self.capacity() as usize - 64 * w;
        let in_chunk = if places_from_w >= 64 {
            u64::MAX
        } else {
            (1u64 << places_from_w) - 1
        };
        !self.occupied[w] & in_chunk
    }

    pub(crate) fn is_occupied(&self, pos: u32) -> bool {
        self.occupied[pos as usize / 64] & (1 << (pos % 64)) != 0
    }

    /// The lowest free place.
    pub(crate) fn first_free(&self) -> Option<u32> {
        let from = self.free_cursor as usize;
        self.occupied[from..]
            .iter()
            .enumerate()
            .find_map(|(w, &word)| {
                let pos = (from + w) as u32 * 64 + (!word).trailing_zeros();
                (word != u64::MAX && pos < self.capacity()).then_some(pos)
            })
    }

    /// Places `value` at `pos` for slot `owner` if `pos` is the chunk's lowest free place
    /// ([`first_free`](Self::first_free)), told from the cursor's word alone; else gives
    /// `value` back and changes nothing.
    #[inline(always)]
    pub(crate) fn try_put_lowest(&mut self, pos: u32, value: T, owner: u32) -> Result<(), T> {
        let w = pos as usize / 64;
        let bit = 1u64 << (pos % 64);
        let lowest = pos < self.capacity
            && self.free_cursor as usize == w
            && self
                .occupied
                .get(w)
                .is_some_and(|&word| word & (bit | (bit - 1)) == bit - 1);
        if !lowest {
            return Err(value);
        }
        // SAFETY: `pos` is within the chunk's places and free (checked above), so writing
        // does not overwrite a live object.
        unsafe { self.data.as_ptr().add(pos as usize).write(value) };
        self.occupied[w] |= bit;
        if self.occupied[w] == u64::MAX {
            self.advance_free_cursor();
        }
        self.set_owner(pos, owner);
        self.live += 1;
        Ok(())
    }

    /// The highest occupied place below `limit`.
    pub(crate) fn last_occupied_below(&self, limit: u32) -> Option<u32> {
        let limit = limit.min(self.capacity());
        if limit == 0 {
            return None;
        }
        let top = (limit - 1) as usize / 64;
        let bits_in_top = (limit - 1) % 64 + 1;
        let mask = if bits_in_top == 64 {
            u64::MAX
        } else {
            (1u64 << bits_in_top) - 1
        };
        std::iter::once((top, self.occupied[top] & mask))
            .chain((0..top).rev().map(|w| (w, self.occupied[w])))
            .find(|(_, word)| *word != 0)
            .map(|(w, word)| w as u32 * 64 + 63 - word.leading_zeros())
    }

    /// Places `value` at the free place `pos`, owned by slot `owner`.
    #[inline]
    pub(crate) fn put(&mut self, pos: u32, value: T, owner: u32) {
        assert!(
            pos < self.capacity() && !self.is_occupied(pos),
            "place {pos} is not free"
        );
        // SAFETY: `pos` is within the chunk's places (checked above) and free, so writing
        // does not overwrite a live object.
        unsafe { self.data.as_ptr().add(pos as usize).write(value) };
        let w = pos as usize / 64;
        self.occupied[w] |= 1 << (pos % 64);
        self.set_owner(pos, owner);
        self.live += 1;
        self.advance_free_cursor();
    }

    /// Moves `free_cursor` past the words that are full.
    fn advance_free_cursor(&mut self) {
        while (self.free_cursor as usize) < self.occupied.len()
            && self.occupied[self.free_cursor as usize] == u64::MAX
        {
            self.free_cursor += 1;
        }
    }

    /// Moves the objects at the places of bitmap word `w` that `mask` names out of the
    /// chunk (highest place first), onto the end of `out` with their owners. Every named
    /// place must hold an object (checked before anything changes).
    pub(crate) fn take_word(&mut self, w: usize, mask: u64, out: &mut Vec<(T, u32)>) {
        assert!(
            w < self.occupied.len() && self.occupied[w] & mask == mask,
            "places {mask:#x} of word {w} are not all taken"
        );
        // Room first: nothing below can fail once bits start to change.
        out.reserve(mask.count_ones() as usize);
        self.occupied[w] &= !mask;
        self.live -= mask.count_ones();
        self.free_cursor = self.free_cursor.min(w as u32);
        // Highest place first: the table's top is read downward, as a stream.
        let mut bits = mask;
        while bits != 0 {
            let bit = 63 - bits.leading_zeros();
            bits &= !(1 << bit);
            let pos = 64 * w + bit as usize;
            let owner = self.owner(pos as u32);
            // SAFETY: the place was occupied (checked above), so it holds an initialised
            // object, which we move out; its bit is clear now, so it is never read again.
            out.push((unsafe { self.data.as_ptr().add(pos).read() }, owner));
        }
    }

    /// Moves objects, with their owners, from the end of `values` into the places of
    /// bitmap word `w` that `mask` names, lowest place first. Every named place must be
    /// free and `values` must hold enough objects (both checked before anything changes).
    pub(crate) fn put_word(&mut self, w: usize, mask: u64, values: &mut Vec<(T, u32)>) {
        let n = mask.count_ones() as usize;
        assert!(
            w < self.occupied.len() && self.free_word(w) & mask == mask && values.len() >= n,
            "places {mask:#x} of word {w} are not all free, or fewer than {n} objects came"
        );
        let mut bits = mask;
        for (value, owner) in values.drain(values.len() - n..) {
            let pos = 64 * w + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // SAFETY: `pos` is a free place of this chunk (checked above), so writing does
            // not overwrite a live object; its bit is set below.
            unsafe { self.data.as_ptr().add(pos).write(value) };
            self.set_owner(pos as u32, owner);
        }
        self.occupied[w] |= mask;
        self.live += n as u32;
        self.advance_free_cursor();
    }

    /// Moves the object out of the occupied place `pos` (its owner entry goes stale).
    #[inline]
    pub(crate) fn take(&mut self, pos: u32) -> T {
        assert!(
            pos < self.capacity() && self.is_occupied(pos),
            "place {pos} is empty"
        );
        self.occupied[pos as usize / 64] &= !(1 << (pos % 64));
        self.live -= 1;
        self.free_cursor = self.free_cursor.min(pos / 64);
        // SAFETY: the place was occupied (checked above), so it holds an initialised
        // object, which we move out; its bit is now clear, so it is never read again.
        unsafe { self.data.as_ptr().add(pos as usize).read() }
    }

    /// Marks the occupied place `pos` free without reading it; the caller moves the
    /// object out (a live slot names `pos`, so it is occupied: checked in debug builds).
    #[inline]
    pub(crate) fn forget(&mut self, pos: u32) {
        debug_assert!(
            pos < self.capacity() && self.is_occupied(pos),
            "place {pos} is empty"
        );
        self.occupied[pos as usize / 64] &= !(1 << (pos % 64));
        self.live -= 1;
        if pos / 64 < self.free_cursor {
            self.free_cursor = pos / 64;
        }
    }

    /// Makes places `0..count` the occupied ones and every other place free: after an
    /// in-order compaction has written `count` objects to the front of the chunk.
    pub(crate) fn set_occupied_prefix(&mut self, count: u32) {
        debug_assert!(count <= self.capacity());
        let (full, rest) = (count as usize / 64, count % 64);
        self.occupied[..full].fill(u64::MAX);
        if full < self.occupied.len() {
            self.occupied[full] = if rest == 0 { 0 } else { (1u64 << rest) - 1 };
            self.occupied[full + 1..].fill(0);
        }
        self.live = count;
        self.free_cursor = full as u32;
        self.advance_free_cursor();
    }

    /// The owners of every place (meaningful where occupied), mutably: the owner list,
    /// made from the home slots if the chunk had none.
    pub(crate) fn owners_mut(&mut self) -> &mut [u32] {
        let (home, capacity) = (self.home, self.capacity);
        self.owners
            .get_or_insert_with(|| home_owner_list(home, capacity))
    }

    /// What [`owners_mut`](Self::owners_mut) would make for a chunk without an owner
    /// list, or `None` when it has one: its home and capacity, from which
    /// [`home_owner_list`] makes the list (on any thread) for
    /// [`adopt_owner_list`](Self::adopt_owner_list).
    pub(crate) fn owner_list_to_make(&self) -> Option<(u32, u32)> {
        self.owners.is_none().then_some((self.home, self.capacity))
    }

    /// Takes `owners`, made by [`home_owner_list`] from this chunk's
    /// [`owner_list_to_make`](Self::owner_list_to_make), as its owner list.
    pub(crate) fn adopt_owner_list(&mut self, owners: Box<[u32]>) {
        assert_eq!(owners.len(), self.capacity as usize, "one owner per place");
        debug_assert!(self.owners.is_none());
        self.owners = Some(owners);
    }

    pub(crate) fn get(&self, pos: u32) -> Option<&T> {
        // SAFETY: an occupied place holds an initialised object; the shared borrow of the
        // chunk keeps it from being moved or dropped.
        self.is_occupied(pos)
            .then(|| unsafe { &*self.data.as_ptr().add(pos as usize) })
    }

    /// The object at `pos`, without checking the occupancy bit.
    ///
    /// # Safety
    /// Place `pos` is occupied (for example: a live slot names it).
    #[inline]
    pub(crate) unsafe fn get_unchecked(&self, pos: u32) -> &T {
        debug_assert!(self.is_occupied(pos));
        // SAFETY: per the contract the place holds an initialised object; the shared
        // borrow of the chunk keeps it in place.
        unsafe { &*self.data.as_ptr().add(pos as usize) }
    }

    /// Calls `f` with each maximal run of objects at consecutive occupied places within
    /// `from..to` (within the capacity), in order, each run as one slice.
    #[inline]
    pub(crate) fn for_each_occupied_run_in<'a>(
        &'a self,
        from: u32,
        to: u32,
        f: &mut impl FnMut(&'a [T]),
    ) {
        debug_assert!(from <= to && to <= self.capacity());
        let (mut p, to) = (u64::from(from), u64::from(to));
        while p < to {
            // The next occupied place.
            let rest = self.occupied[(p / 64) as usize] >> (p % 64);
            if rest == 0 {
                p = (p / 64 + 1) * 64;
                continue;
            }
            p += u64::from(rest.trailing_zeros());
            if p >= to {
                break;
            }
            // The occupied places from there, across words while they stay occupied.
            let first = p;
            loop {
                let word = self.occupied[(p / 64) as usize] >> (p % 64);
                let ones = u64::from((!word).trailing_zeros());
                p += ones;
                if ones == 0 || !p.is_multiple_of(64) || p >= to {
                    break;
                }
            }
            let end = p.min(to);
            // SAFETY: every place `first..end` is occupied (their bits were found set just
            // above), so the block holds initialised objects there in a row; the shared
            // borrow of the chunk keeps them in place and unchanged.
            let run = unsafe {
                std::slice::from_raw_parts(
                    self.data.as_ptr().add(first as usize),
                    (end - first) as usize,
                )
            };
            f(run);
            p = end;
        }
    }

    /// Every object in place order. A full chunk is walked as one slice.
    pub(crate) fn values(&self) -> ChunkValues<'_, T> {
        if self.live == self.capacity() {
            // SAFETY: every place is occupied, so the block holds `capacity` initialised
            // objects in a row; the shared borrow keeps them in place.
            let all =
                unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.capacity() as usize) };
            ChunkValues::Full(all.iter())
        } else {
            ChunkValues::Sparse(self, self.occupied_places())
        }
    }

    /// Every object in place order, mutably. A full chunk is walked as one slice.
    pub(crate) fn values_mut(&mut self) -> ChunkValuesMut<'_, T> {
        if self.live == self.capacity() {
            // SAFETY: as in `values`, with the exclusive borrow.
            let all = unsafe {
                std::slice::from_raw_parts_mut(self.data.as_ptr(), self.capacity() as usize)
            };
            ChunkValuesMut::Full(all.iter_mut())
        } else {
            // The bitmap and the objects are separate allocations: reading the one while
            // handing out `&mut` into the other does not alias.
            let places = OccupiedPlaces::new(&self.occupied);
            ChunkValuesMut::Sparse(self.data.as_ptr(), places, std::marker::PhantomData)
        }
    }

    /// A raw pointer to place `pos` (for prefetching and disjoint borrows).
    pub(crate) fn place_ptr(&self, pos: u32) -> *mut T {
        debug_assert!(pos < self.capacity());
        // SAFETY: `pos` is within the chunk's places, so the offset stays in the block.
        unsafe { self.data.as_ptr().add(pos as usize) }
    }

    /// The slot index that owns place `pos` (meaningful while it is occupied).
    #[inline]
    pub(crate) fn owner(&self, pos: u32) -> u32 {
        match &self.owners {
            Some(owners) => owners[pos as usize],
            None => self.home.wrapping_add(pos),
        }
    }

    /// Appends the owners of places `first..first + count` to `out`.
    pub(crate) fn owners_of(&self, first: u32, count: u32, out: &mut Vec<u32>) {
        self.places().owners_of(first, count, out);
    }

    /// The chunk's bookkeeping of its places (which are occupied, by whom), which threads
    /// may share whatever `T` is.
    pub(crate) fn places(&self) -> ChunkPlaces<'_> {
        ChunkPlaces {
            occupied: &self.occupied,
            owners: self.owners.as_deref(),
            home: self.home,
            live: self.live,
        }
    }

    /// The occupied places, in order.
    pub(crate) fn occupied_places(&self) -> OccupiedPlaces<'_> {
        OccupiedPlaces::new(&self.occupied)
    }

    /// The `count` objects from place `first` on, as one slice; `None` unless every one of
    /// those places is occupied.
    #[cfg(test)]
    pub(crate) fn run(&self, first: u32, count: u32) -> Option<&[T]> {
        let end = first.checked_add(count)?;
        if end > self.capacity() || !(first..end).all(|p| self.is_occupied(p)) {
            return None;
        }
        // SAFETY: every place in `first..end` is occupied (checked above), so the block
        // holds `count` initialised objects in a row there; the shared borrow of the chunk
        // keeps them in place and unchanged.
        Some(unsafe {
            std::slice::from_raw_parts(self.data.as_ptr().add(first as usize), count as usize)
        })
    }

    /// Names slot `owner` as the owner of the object that a snapshot load will put at
    /// free place `pos` (see [`pending_runs`](Self::pending_runs)); the place stays free.
    pub(crate) fn expect_owner(&mut self, pos: u32, owner: u32) {
        assert!(
            pos < self.capacity() && !self.is_occupied(pos),
            "place {pos} is not free"
        );
        self.set_owner(pos, owner);
        self.expect(pos, pos + 1);
    }

    /// Marks places `first..end` as expected.
    fn expect(&mut self, first: u32, end: u32) {
        let words = self.occupied.len();
        let expected = self
            .expected
            .get_or_insert_with(|| vec![0; words].into_boxed_slice());
        let clash = set_range(expected, u64::from(first), u64::from(end));
        debug_assert!(clash.is_none(), "a place expected twice");
    }

    /// Expects, for each place of bitmap word `w` that `bits` names, the object of its
    /// home slot; the places must be free and not yet expected.
    pub(crate) fn expect_home_word(&mut self, w: usize, bits: u64) {
        let words = self.occupied.len();
        let expected = self
            .expected
            .get_or_insert_with(|| vec![0; words].into_boxed_slice());
        assert!(
            (expected[w] | self.occupied[w]) & bits == 0,
            "places of word {w} are expected twice or taken"
        );
        expected[w] |= bits;
        if let Some(owners) = &mut self.owners {
            for (start, len) in word_runs(bits) {
                let first = 64 * w as u32 + start;
                for pos in first..first + len {
                    owners[pos as usize] = self.home.wrapping_add(pos);
                }
            }
        }
    }

    /// Expects owners for the `count` free places from `first`: slot indices from
    /// `first_index` on.
    pub(crate) fn expect_owner_run(&mut self, first: u32, count: u32, first_index: u32) {
        let end = first.checked_add(count).filter(|&e| e <= self.capacity());
        let free = end.is_some_and(|end| self.range_is_free(first, end));
        assert!(free, "places {first}..+{count} are not all free");
        if count == 0 {
            return;
        }
        if self.owners.is_some() || first_index != self.home.wrapping_add(first) {
            for (k, owner) in self.owners_mut()[first as usize..(first + count) as usize]
                .iter_mut()
                .enumerate()
            {
                *owner = first_index + k as u32;
            }
        }
        self.expect(first, first + count);
    }

    /// Marks the places from `first` on as pending for the slots `owners` names, one
    /// place each; the places must be free and not yet expected.
    pub(crate) fn expect_owner_list(&mut self, first: u32, owners: &[u32]) {
        let end = u32::try_from(owners.len())
            .ok()
            .and_then(|count| first.checked_add(count))
            .filter(|&end| end <= self.capacity());
        let free = end.is_some_and(|end| self.range_is_free(first, end));
        assert!(free, "places {first}..+{} are not all free", owners.len());
        let Some(end) = end.filter(|&end| end > first) else {
            return;
        };
        self.owners_mut()[first as usize..end as usize].copy_from_slice(owners);
        self.expect(first, end);
    }

    /// Whether places `first..end` (within the capacity) are all free, a word at a time.
    fn range_is_free(&self, first: u32, end: u32) -> bool {
        let mut pos = first;
        while pos < end {
            let w = pos as usize / 64;
            let (lo, hi) = (pos % 64, (end - 64 * w as u32).min(64));
            let upto = if hi == 64 { u64::MAX } else { (1u64 << hi) - 1 };
            if self.occupied[w] & upto & (u64::MAX << lo) != 0 {
                return false;
            }
            pos = 64 * w as u32 + hi;
        }
        true
    }

    /// Maximal runs of free places that have an expected owner, as `(first, count)`.
    /// Looks at 64 places at a time: the expected places, less the occupied.
    pub(crate) fn pending_runs(&self) -> Vec<(u32, u32)> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        let Some(expected) = &self.expected else {
            return runs;
        };
        for (w, &expected) in expected.iter().enumerate() {
            let mut pending = expected & !self.occupied[w];
            while pending != 0 {
                let start = pending.trailing_zeros();
                let len = (!(pending >> start)).trailing_zeros();
                let first = 64 * w as u32 + start;
                match runs.last_mut() {
                    Some((f, n)) if *f + *n == first => *n += len,
                    _ => runs.push((first, len)),
                }
                pending &= if start + len == 64 {
                    (1u64 << start) - 1
                } else {
                    !(((1u64 << len) - 1) << start)
                };
            }
        }
        runs
    }

    /// The pending places (see [`pending_runs`](Self::pending_runs)) when they are one
    /// run, else `None` (also when there are none).
    pub(crate) fn pending_as_one_run(&self) -> Option<(u32, u32)> {
        let expected = self.expected.as_deref()?;
        let mut run: Option<(u32, u32)> = None;
        for (w, &expected) in expected.iter().enumerate() {
            for (start, len) in word_runs(expected & !self.occupied[w]) {
                let first = 64 * w as u32 + start;
                run = match run {
                    None => Some((first, len)),
                    Some((f, n)) if f + n == first => Some((f, n + len)),
                    Some(_) => return None,
                };
            }
        }
        run
    }

    /// Places whose objects a snapshot load still expects.
    pub(crate) fn pending_count(&self) -> usize {
        self.expected.as_ref().map_or(0, |expected| {
            expected
                .iter()
                .zip(self.occupied.iter())
                .map(|(e, o)| (e & !o).count_ones() as usize)
                .sum()
        })
    }

    /// Fills every pending place from `bytes`, the objects' bytes in storage order (one
    /// object for each of [`pending_count`](Self::pending_count) places), a bitmap word
    /// at a time, and marks the places occupied.
    pub(crate) fn fill_pending_from(&mut self, _pod: PodBytes<T>, bytes: &[u8]) {
        let size = std::mem::size_of::<T>();
        assert_eq!(
            bytes.len(),
            self.pending_count() * size,
            "one object per place"
        );
        let Some(expected) = self.expected.as_deref() else {
            return;
        };
        let mut at = 0;
        for (w, &expected) in expected.iter().enumerate() {
            let pending = expected & !self.occupied[w];
            for (start, len) in word_runs(pending) {
                let first = 64 * w as u32 + start;
                let run = &bytes[at..at + len as usize * size];
                // SAFETY: `first..first + len` are places of this chunk (bits of its
                // bitmap below the capacity: pending places are expected ones, which
                // lie within it) and free (their occupied bits are clear), so no live
                // object is overwritten; the exclusive borrow keeps them unshared. `T`
                // is Pod (the caller holds its `PodBytes`, which only a Pod type has),
                // so the bytes make whole objects.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        run.as_ptr(),
                        self.data.as_ptr().add(first as usize).cast::<u8>(),
                        run.len(),
                    );
                }
                at += run.len();
            }
            self.occupied[w] |= pending;
            self.live += pending.count_ones();
        }
        self.advance_free_cursor();
    }

    /// Forgets which places a snapshot load expected (it has filled them).
    pub(crate) fn end_restore(&mut self) {
        self.expected = None;
    }

    /// Marks the free places `first..first + count` occupied by the objects whose bytes
    /// the caller has just written there (each owned by the handle set with
    /// [`expect_owner_run`](Self::expect_owner_run)). Whatever those bytes are, they make
    /// valid objects: `T` is `Pod` (`_pod` is the evidence), and a table's memory only
    /// ever holds initialised bytes (zeros when first committed, whole objects after).
    pub(crate) fn mark_filled(&mut self, _pod: PodBytes<T>, first: u32, count: u32) {
        let end = first.checked_add(count).expect("run within the chunk");
        assert!(
            end <= self.capacity() && self.range_is_free(first, end),
            "places {first}..{end} are not all free"
        );
        if count == 0 {
            return;
        }
        let clash = set_range(&mut self.occupied, u64::from(first), u64::from(end));
        debug_assert!(clash.is_none(), "the places were checked free above");
        self.live += count;
        self.advance_free_cursor();
    }

    /// Drops every object (the table then decommits the places' memory). The chunk is
    /// consumed, so its bookkeeping is not updated object by object, and a type without
    /// drop glue (a `Pod` neuron or synapse) costs no pass over its objects at all.
    pub(crate) fn drop_objects(self) {
        if std::mem::needs_drop::<T>() {
            for pos in self.occupied_places() {
                // SAFETY: an occupied place holds an initialised object; each place is
                // visited once, and the chunk is consumed here, so nothing reads or drops
                // the object again. The bitmap being walked is a separate allocation from
                // the objects being dropped.
                unsafe { std::ptr::drop_in_place(self.data.as_ptr().add(pos as usize)) };
            }
        }
    }
}

// SAFETY: a chunk owns its objects (like a Vec<T>); moving it to another thread moves them.
unsafe impl<T: Send> Send for Chunk<T> {}
// SAFETY: shared access to a chunk only gives shared access to its objects.
unsafe impl<T: Sync> Sync for Chunk<T> {}

/// Sets bits `start..end` (`start < end`) of `words`, a word at a time; returns the first
/// of them that was set already, if any, and then changes nothing. Used for occupancy and
/// for the place and slot bitmaps a snapshot image is checked with.
#[inline]
pub(crate) fn set_range(words: &mut [u64], start: u64, end: u64) -> Option<u64> {
    if end == start + 1 {
        let (word, bit) = (&mut words[start as usize / 64], 1u64 << (start % 64));
        if *word & bit != 0 {
            return Some(start);
        }
        *word |= bit;
        return None;
    }
    let mask = |w: u64| {
        let lo = start.max(w * 64) - w * 64;
        let hi = end.min(w * 64 + 64) - w * 64;
        if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        }
    };
    let (first, last) = (start / 64, (end - 1) / 64);
    for w in first..=last {
        let clash = words[w as usize] & mask(w);
        if clash != 0 {
            return Some(w * 64 + u64::from(clash.trailing_zeros()));
        }
    }
    for w in first..=last {
        words[w as usize] |= mask(w);
    }
    None
}

/// The maximal runs of set bits of one word, as `(first bit, count)`, lowest first.
fn word_runs(mut word: u64) -> impl Iterator<Item = (u32, u32)> {
    std::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let start = word.trailing_zeros();
        let len = (!(word >> start)).trailing_zeros().min(64 - start);
        word &= if start + len == 64 {
            (1u64 << start).wrapping_sub(1)
        } else {
            !(((1u64 << len) - 1) << start)
        };
        Some((start, len))
    })
}

/// The owner list of a chunk whose objects are all at home: place `pos` is owned by slot
/// `home + pos`.
pub(crate) fn home_owner_list(home: u32, capacity: u32) -> Box<[u32]> {
    (0..capacity).map(|pos| home.wrapping_add(pos)).collect()
}

/// Maximal runs of set bits, as `(first bit, count)`, a word at a time.
pub(crate) fn bit_runs(words: &[u64]) -> impl Iterator<Item = (u32, u32)> + '_ {
    let total = words.len() as u64 * 64;
    let mut p = 0u64;
    std::iter::from_fn(move || {
        // The next set bit.
        loop {
            if p >= total {
                return None;
            }
            let rest = words[(p / 64) as usize] >> (p % 64);
            if rest != 0 {
                p += u64::from(rest.trailing_zeros());
                break;
            }
            p = (p / 64 + 1) * 64;
        }
        let first = p;
        // The ones from there, across words while they stay set.
        while p < total {
            let ones = u64::from((!(words[(p / 64) as usize] >> (p % 64))).trailing_zeros());
            p += ones;
            if ones == 0 || !p.is_multiple_of(64) {
                break;
            }
        }
        Some((first as u32, (p - first) as u32))
    })
}

/// The set bits of an occupancy bitmap, in order, without allocating.
#[derive(Clone)]
pub(crate) struct OccupiedPlaces<'a> {
    words: &'a [u64],
    word: usize,
    bits: u64,
}

impl<'a> OccupiedPlaces<'a> {
    fn new(words: &'a [u64]) -> Self {
        OccupiedPlaces {
            words,
            word: 0,
            bits: words.first().copied().unwrap_or(0),
        }
    }
}

impl Iterator for OccupiedPlaces<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        while self.bits == 0 {
            self.word += 1;
            self.bits = *self.words.get(self.word)?;
        }
        let i = self.bits.trailing_zeros();
        self.bits &= self.bits - 1;
        Some(self.word as u32 * 64 + i)
    }
}

/// The objects of one chunk, in place order.
pub(crate) enum ChunkValues<'a, T> {
    Full(std::slice::Iter<'a, T>),
    Sparse(&'a Chunk<T>, OccupiedPlaces<'a>),
}

impl<T> Clone for ChunkValues<'_, T> {
    fn clone(&self) -> Self {
        match self {
            ChunkValues::Full(it) => ChunkValues::Full(it.clone()),
            ChunkValues::Sparse(c, places) => ChunkValues::Sparse(c, places.clone()),
        }
    }
}

impl<'a, T> Iterator for ChunkValues<'a, T> {
    type Item = &'a T;

    #[inline]
    fn next(&mut self) -> Option<&'a T> {
        match self {
            ChunkValues::Full(it) => it.next(),
            // SAFETY: the places come from the occupancy bitmap of this chunk, which the
            // shared borrow keeps unchanged.
            ChunkValues::Sparse(c, places) => places.next().map(|p| unsafe { c.get_unchecked(p) }),
        }
    }

    /// A full chunk folds as a slice, so internal iteration (`sum`, `for_each`) runs the
    /// slice's own tight loop instead of one `next` per object.
    #[inline]
    fn fold<B, F: FnMut(B, &'a T) -> B>(self, init: B, mut f: F) -> B {
        match self {
            ChunkValues::Full(it) => it.fold(init, f),
            ChunkValues::Sparse(c, places) => places.fold(init, |acc, p| {
                // SAFETY: as in `next`.
                f(acc, unsafe { c.get_unchecked(p) })
            }),
        }
    }
}

/// The objects of one chunk, mutably, in place order.
pub(crate) enum ChunkValuesMut<'a, T> {
    Full(std::slice::IterMut<'a, T>),
    Sparse(
        *mut T,
        OccupiedPlaces<'a>,
        std::marker::PhantomData<&'a mut T>,
    ),
}

impl<'a, T> Iterator for ChunkValuesMut<'a, T> {
    type Item = &'a mut T;

    #[inline]
    fn next(&mut self) -> Option<&'a mut T> {
        match self {
            ChunkValuesMut::Full(it) => it.next(),
            ChunkValuesMut::Sparse(data, places, _) => {
                let p = places.next()?;
                // SAFETY: each place comes once from the occupancy bitmap of a chunk that
                // is exclusively borrowed for 'a, so the references are disjoint and name
                // live objects.
                Some(unsafe { &mut *data.add(p as usize) })
            }
        }
    }

    /// As for `ChunkValues`: a full chunk folds as a slice.
    #[inline]
    fn fold<B, F: FnMut(B, &'a mut T) -> B>(self, init: B, mut f: F) -> B {
        match self {
            ChunkValuesMut::Full(it) => it.fold(init, f),
            ChunkValuesMut::Sparse(data, places, _) => places.fold(init, |acc, p| {
                // SAFETY: as in `next`.
                f(acc, unsafe { &mut *data.add(p as usize) })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;

    /// A chunk of `capacity` places over `memory` (kept alive by the caller).
    fn over(memory: &mut Vec<u64>, capacity: u32) -> Chunk<u64> {
        memory.resize(capacity as usize, 0);
        Chunk::new(NonNull::new(memory.as_mut_ptr()).unwrap(), capacity, 1, 0)
    }

    /// A chunk of 128 places holding `i` with owner `i + 1` at every place but `holes`.
    fn filled(memory: &mut Vec<u64>, holes: &[u32]) -> Chunk<u64> {
        let mut c = over(memory, 128);
        for pos in (0..128).filter(|p| !holes.contains(p)) {
            c.put(pos, u64::from(pos), pos + 1);
        }
        c
    }

    #[test]
    fn occupied_runs_are_the_maximal_runs_of_objects_in_a_range() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            // Holes from none to most places, in runs of every length.
            let density = round % 10;
            let holes: Vec<u32> = (0..128u32).filter(|_| next() % 10 < density).collect();
            let mut memory = Vec::new();
            let c = filled(&mut memory, &holes);
            let from = (next() % 129) as u32;
            let to = from + (next() % u64::from(129 - from)) as u32;
            let mut runs: Vec<Vec<u64>> = Vec::new();
            c.for_each_occupied_run_in(from, to, &mut |run| runs.push(run.to_vec()));
            let objects: Vec<u64> = runs.iter().flatten().copied().collect();
            let expected: Vec<u64> = (from..to)
                .filter(|p| !holes.contains(p))
                .map(u64::from)
                .collect();
            assert_eq!(objects, expected, "{from}..{to}, holes {holes:?}");
            for run in &runs {
                assert!(!run.is_empty());
                assert!(
                    run.windows(2).all(|w| w[1] == w[0] + 1),
                    "a run is consecutive"
                );
            }
            for pair in runs.windows(2) {
                let gap = *pair[0].last().unwrap() + 1;
                assert!(gap < pair[1][0], "runs {pair:?} should be one");
            }
            c.drop_objects();
        }
    }

    #[test]
    fn words_of_objects_move_with_their_owners() {
        let mut memory = Vec::new();
        let mut c = filled(&mut memory, &[3, 5, 9]);
        let mut carried = Vec::new();
        let take = 1 << (100 - 64) | 1 << (101 - 64) | 1 << (127 - 64);
        c.take_word(1, take, &mut carried);
        assert_eq!(c.live(), 122);
        assert!([100, 101, 127].iter().all(|p| !c.is_occupied(*p)));
        c.put_word(0, 1 << 3 | 1 << 5 | 1 << 9, &mut carried);
        assert!(carried.is_empty());
        assert_eq!(c.live(), 125);
        for pos in [3, 5, 9] {
            let value = *c.get(pos).unwrap();
            assert!([100, 101, 127].contains(&value));
            assert_eq!(c.owner(pos), value as u32 + 1);
        }
        assert_eq!(c.free_word(0), 0);
        assert_eq!(c.free_word(1), take);
        c.drop_objects();
    }

    #[test]
    fn home_words_are_expected_then_filled_a_word_at_a_time() {
        let mut memory = Vec::new();
        let mut c = over(&mut memory, 192);
        // Places 60..70 (across a word boundary) and 130, 131, 191; 65 is taken already.
        c.put(65, 999, 66);
        c.expect_home_word(0, 0b1111 << 60);
        c.expect_home_word(1, 0b111111 & !(1 << 1));
        c.expect_home_word(2, 1 << (130 - 128) | 1 << (131 - 128) | 1 << 63);
        assert!(
            catch_unwind(AssertUnwindSafe(|| c.expect_home_word(1, 1 << 1))).is_err(),
            "a taken place is refused"
        );
        assert!(
            catch_unwind(AssertUnwindSafe(|| c.expect_home_word(2, 1 << 63))).is_err(),
            "a place expected twice is refused"
        );
        assert_eq!(c.pending_runs(), vec![(60, 5), (66, 4), (130, 2), (191, 1)]);
        assert_eq!((c.pending_count(), c.pending_as_one_run()), (12, None));
        let values: Vec<u64> = (0..12).map(|k| 1000 + k).collect();
        c.fill_pending_from(PodBytes::new(), bytemuck::cast_slice(&values));
        let placed: Vec<(u32, u64)> = (0..192)
            .filter_map(|p| c.get(p).map(|v| (p, *v)))
            .filter(|&(p, _)| p != 65)
            .collect();
        let places = [60, 61, 62, 63, 64, 66, 67, 68, 69, 130, 131, 191];
        assert_eq!(
            placed,
            places.iter().copied().zip(values).collect::<Vec<_>>()
        );
        assert_eq!((c.live(), c.pending_count()), (13, 0));
        assert_eq!(c.owner(130), 131, "home owners");
        // One run is told as one.
        let mut memory = Vec::new();
        let mut d = over(&mut memory, 128);
        d.expect_home_word(0, u64::MAX << 40);
        d.expect_home_word(1, 0xff);
        assert_eq!(d.pending_as_one_run(), Some((40, 32)));
        d.drop_objects();
        c.drop_objects();
    }

    #[test]
    fn pending_runs_cross_words_and_skip_occupied_places() {
        let (mut memory, mut full_memory) = (Vec::new(), Vec::new());
        let mut c = over(&mut memory, 256);
        // Owners expected for 10..200 (across three word boundaries) and 255; 70 and 71
        // are taken already, so they split the first run.
        c.expect_owner_run(10, 190, 1);
        c.expect_owner(255, 500);
        c.put(70, 7, c.owner(70));
        c.put(71, 7, c.owner(71));
        assert_eq!(c.pending_runs(), vec![(10, 60), (72, 128), (255, 1)]);
        assert_eq!(c.owner(10), 1);
        assert_eq!(c.owner(199), 190);
        // Every place of a word: one run of 64.
        let mut full = over(&mut full_memory, 128);
        full.expect_owner_run(64, 64, 1);
        assert_eq!(full.pending_runs(), vec![(64, 64)]);
        // A run that names a taken place, or runs past the end, is refused.
        assert!(catch_unwind(AssertUnwindSafe(|| c.expect_owner_run(60, 20, 1))).is_err());
        assert!(catch_unwind(AssertUnwindSafe(|| full.expect_owner_run(100, 29, 1))).is_err());
        c.drop_objects();
        full.drop_objects();
    }

    #[test]
    fn word_moves_refuse_wrong_places_and_change_nothing() {
        let mut memory = Vec::new();
        let mut c = filled(&mut memory, &[3, 5]);
        let mut carried = Vec::new();
        let bitmap = |c: &Chunk<u64>| (c.occupied_word(0), c.occupied_word(1), c.live());
        let before = bitmap(&c);
        // Place 3 is free: nothing may be taken from it.
        let taking_a_hole = catch_unwind(AssertUnwindSafe(|| {
            c.take_word(0, 1 << 3 | 1, &mut carried)
        }));
        assert!(taking_a_hole.is_err());
        assert_eq!((bitmap(&c), carried.len()), (before, 0));
        // Place 4 is taken: nothing may be put there.
        c.take_word(1, 0b11, &mut carried);
        let after_take = bitmap(&c);
        let onto_an_object = catch_unwind(AssertUnwindSafe(|| {
            c.put_word(0, 1 << 3 | 1 << 4, &mut carried)
        }));
        assert!(onto_an_object.is_err());
        assert_eq!((bitmap(&c), carried.len()), (after_take, 2));
        // More places than objects carried.
        let mut one = Vec::new();
        c.take_word(1, 1 << 5, &mut one);
        let after_one = bitmap(&c);
        let too_many = catch_unwind(AssertUnwindSafe(|| {
            c.put_word(0, 1 << 3 | 1 << 5, &mut one)
        }));
        assert!(too_many.is_err());
        assert_eq!((bitmap(&c), one.len()), (after_one, 1));
        c.put_word(1, 1 << 5, &mut one);
        c.put_word(0, 1 << 3 | 1 << 5, &mut carried);
        assert_eq!(c.live(), 126);
        c.drop_objects();
    }
}
