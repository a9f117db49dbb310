//! Whole-table operations for a layer that owns a table outright (the neural graph keeps
//! its synapses in one): the object and handle at a storage place, the handle of a slot
//! index, removing every object a predicate picks in one pass, and closing holes by
//! sliding objects down without changing their order.

use rayon::prelude::*;

use super::chunk::{Chunk, ChunkPlaces, bit_runs, home_owner_list};
use super::typed::Table;
use crate::error::Error;
use crate::handle::Handle;

impl<T> Table<T> {
    /// The handle of the object slot `index` names, if the slot is live: for records
    /// that keep an object's slot index instead of its handle (as the neural graph's
    /// synapses keep their neurons').
    ///
    /// ```
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<u8> = Table::new();
    /// let h = t.insert(7);
    /// assert_eq!(t.live_handle(h.index()), Some(h));
    /// t.remove(h);
    /// assert_eq!(t.live_handle(h.index()), None);
    /// ```
    pub fn live_handle(&self, index: u32) -> Option<Handle<T>> {
        self.slots
            .is_live(index as usize)
            .then(|| self.handle_at(index))
    }

    /// The object at global storage place `place`, if one is there.
    pub(crate) fn get_at_place(&self, place: u64) -> Option<&T> {
        let loc = self.loc_of_global(place);
        self.chunks.get(loc.chunk as usize)?.as_ref()?.get(loc.pos)
    }

    /// Calls `f` with every live object and its slot index, in parallel over chunks (each
    /// chunk's objects in order on one thread), and returns the slot indices for which
    /// `f` returned true, in storage order. Stamps every chunk as changed. Reads no slot:
    /// the index of an object at its home place is its place plus one.
    pub(crate) fn par_update_indexed<S: Send>(
        &mut self,
        init: impl Fn() -> S + Sync + Send,
        f: impl Fn(&mut S, u32, &mut T) -> bool + Sync + Send,
    ) -> Vec<u32>
    where
        T: Send + Sync,
    {
        let epoch = self.epoch();
        self.chunks
            .par_iter_mut()
            .flatten()
            .map_init(&init, |state, c| {
                c.dirty = epoch;
                let c: &Chunk<T> = c;
                let mut picked = Vec::new();
                for pos in c.occupied_places() {
                    // SAFETY: the place is occupied, so it holds an object; each place of
                    // this chunk is visited once by this one task, and chunks are disjoint,
                    // so the `&mut T`s are unique; the table is borrowed exclusively.
                    let value = unsafe { &mut *c.place_ptr(pos) };
                    let index = c.owner(pos);
                    if f(state, index, value) {
                        picked.push(index);
                    }
                }
                picked
            })
            .flatten_iter()
            .collect()
    }

    /// Folds every object with its global storage place into a state per chunk, in
    /// parallel over chunks (each chunk's objects in storage order on one thread), and
    /// returns the states of the present chunks in storage order.
    pub(crate) fn par_fold_chunks<S: Send>(
        &self,
        init: impl Fn() -> S + Sync + Send,
        fold: impl Fn(&mut S, u64, &T) + Sync + Send,
    ) -> Vec<S>
    where
        T: Sync,
    {
        self.chunks
            .par_iter()
            .enumerate()
            .filter_map(|(ci, c)| {
                let c = c.as_ref()?;
                let first = u64::try_from(ci).expect("chunk indices fit u64") << self.shift;
                let mut state = init();
                for pos in c.occupied_places() {
                    let value = c.get(pos).expect("occupied places hold objects");
                    fold(&mut state, first | u64::from(pos), value);
                }
                Some(state)
            })
            .collect()
    }

    /// The handle of the object at global storage place `place`, if one is there.
    pub(crate) fn handle_at_place(&self, place: u64) -> Option<Handle<T>> {
        let loc = self.loc_of_global(place);
        let chunk = self.chunks.get(loc.chunk as usize)?.as_ref()?;
        chunk
            .is_occupied(loc.pos)
            .then(|| self.handle_at(chunk.owner(loc.pos)))
    }

    /// Removes (and drops) every object that `doomed` picks, in one pass over the table:
    /// the objects are looked at in parallel over chunks, then removed on this thread a
    /// bitmap word at a time. Returns how many went. Their handles go stale, as with
    /// [`remove`](Self::remove).
    pub(crate) fn remove_where(&mut self, doomed: impl Fn(&T) -> bool + Sync) -> usize
    where
        T: Send + Sync,
    {
        let marks: Vec<(usize, Vec<(usize, u64)>)> = self
            .chunks
            .par_iter()
            .enumerate()
            .filter_map(|(ci, chunk)| {
                let chunk = chunk.as_ref()?;
                let mut words = Vec::new();
                for w in 0..chunk.bitmap_words() {
                    let (mut bits, mut mask) = (chunk.occupied_word(w), 0u64);
                    while bits != 0 {
                        let b = bits.trailing_zeros();
                        bits &= bits - 1;
                        let pos = 64 * w as u32 + b;
                        if chunk.get(pos).is_some_and(&doomed) {
                            mask |= 1 << b;
                        }
                    }
                    if mask != 0 {
                        words.push((w, mask));
                    }
                }
                (!words.is_empty()).then_some((ci, words))
            })
            .collect();
        let epoch = self.epoch();
        let mut removed = 0;
        let mut carried: Vec<(T, u32)> = Vec::new();
        for (ci, words) in marks {
            let chunk = self.chunks[ci].as_mut().expect("marked above");
            let was_full = chunk.live() == chunk.capacity();
            for (w, mask) in words {
                chunk.take_word(w, mask, &mut carried);
            }
            chunk.dirty = epoch;
            let empty = chunk.live() == 0;
            removed += carried.len();
            for (value, owner) in carried.drain(..) {
                self.slots.vacate(owner);
                self.vacant.push(owner);
                drop(value);
            }
            if was_full {
                self.set_non_full(ci, true);
            }
            if empty {
                self.keep_emptied_chunk(ci as u32);
            }
        }
        if removed > 0 {
            self.len -= removed;
            self.stamp_slots();
        }
        removed
    }

    /// Closes every hole by sliding the objects down, keeping their storage order: after
    /// it the objects fill places `0..len()` in the order they had. Runs of objects move
    /// with one copy each; each moved object's slot names its new place. Chunks left
    /// empty stay (the caller returns them to the pool). Returns the number of objects
    /// that moved.
    ///
    /// The chunks that receive moved objects get their owner lists first, on every
    /// thread (that is most of the fresh memory the slide needs). Then the objects move
    /// a source chunk at a time (its runs copied down, its owners gathered once and
    /// written to the one or two chunks they land in), in waves: a wave is a chunk and
    /// the chunks after it whose objects all land in the holes below it, so that no chunk
    /// of the wave writes what another reads, and its chunks move on every thread. Once
    /// the holes below a chunk hold more than a chunk's objects, waves grow with the
    /// table by its share of holes; the chunks before go one at a time.
    ///
    /// # Errors
    /// The pool's error when a chunk below the new top (a vacant chunk index) cannot be
    /// made; nothing has moved then.
    pub(crate) fn slide_down(&mut self) -> Result<usize, Error> {
        self.slots.list_places(&self.pool)?;
        let per = u64::from(self.per_chunk);
        let needed = (self.len as u64).div_ceil(per) as usize;
        for ci in 0..needed {
            if self.chunks.get(ci).is_none_or(Option::is_none) {
                self.make_chunk_at(ci)?;
            }
        }
        self.layout_version += 1;
        let first_hole = self.chunks[..needed]
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.live() < c.capacity()))
            .unwrap_or(needed);
        self.make_owner_lists(first_hole..needed);
        // Where each chunk's first object goes: the objects before it, in order.
        let mut starts = Vec::with_capacity(self.chunks.len() + 1);
        let mut dst = 0u64;
        for c in &self.chunks {
            starts.push(dst);
            dst += c.as_ref().map_or(0, |c| u64::from(c.live()));
        }
        starts.push(dst);
        let mut moved = 0usize;
        let mut ci = 0;
        while ci < self.chunks.len() {
            // A wave: chunk `ci` and the chunks after it whose objects all land below
            // chunk `ci`'s first place, in the holes before it.
            let below = ci as u64 * per;
            let mut end = ci + 1;
            while end < self.chunks.len() && starts[end + 1] <= below {
                end += 1;
            }
            moved += if end - ci > 1 {
                self.slide_wave(ci..end, &starts)
            } else {
                self.slide_chunk(ci, starts[ci])
            };
            ci = end;
        }
        let epoch = self.epoch();
        for ci in 0..self.chunks.len() {
            let start = ci as u64 * per;
            let Some(chunk) = self.chunks[ci].as_mut() else {
                continue;
            };
            chunk.set_occupied_prefix(dst.saturating_sub(start).min(per) as u32);
            chunk.dirty = epoch;
            let non_full = chunk.live() < chunk.capacity();
            self.set_non_full(ci, non_full);
        }
        self.stamp_slots();
        Ok(moved)
    }

    /// Slides the objects of chunk `ci` (if it is held) down to places `dst..`, in
    /// order (the targets may overlap the chunk's own places); returns how many moved.
    fn slide_chunk(&mut self, ci: usize, mut dst: u64) -> usize {
        let Some(chunk) = &self.chunks[ci] else {
            return 0;
        };
        let per = u64::from(self.per_chunk);
        let mut owners = Vec::new();
        let mut first_moved = None;
        for (first, count) in bit_runs(chunk.occupied_words()) {
            let src = (ci as u64) * per + u64::from(first);
            if src != dst {
                // SAFETY: both ranges lie in chunks the table holds (the sources in chunk
                // `ci`, the targets below them, in chunks made before the slide), in its
                // one span of places, so they are committed memory; `ptr::copy` allows
                // the overlap. The objects are moved bitwise: targets lie below every
                // source not yet moved, and the places they leave are marked free before
                // anything reads them as objects again, so none is dropped or read twice.
                unsafe {
                    std::ptr::copy(
                        self.place_ptr(src as u32),
                        self.place_ptr(dst as u32),
                        count as usize,
                    );
                }
                first_moved.get_or_insert(dst);
                chunk.owners_of(first, count, &mut owners);
            }
            dst += u64::from(count);
        }
        if let Some(first) = first_moved {
            self.write_owners(first, &owners);
        }
        owners.len()
    }

    /// Slides the objects of the chunks `wave` down to their places, `starts[c]..` for
    /// chunk `c`, on every thread. Every target lies below the wave's first place, so no
    /// chunk of the wave writes what another reads, and the targets are disjoint; the
    /// places there were left by objects of earlier chunks, which have moved already.
    /// Returns how many objects moved.
    fn slide_wave(&mut self, wave: std::ops::Range<usize>, starts: &[u64]) -> usize {
        let shift = self.shift;
        let (first, end) = (starts[wave.start], starts[wave.end]);
        debug_assert!(end <= (wave.start as u64) << shift);
        if first == end {
            return 0;
        }
        let objects = MovedObjects(self.objects_ptr());
        let (targets, sources) = self.chunks.split_at_mut(wave.start);
        let first_target = (first >> shift) as usize;
        let owner_lists: Vec<OwnerList> = targets[first_target..=((end - 1) >> shift) as usize]
            .iter_mut()
            .map(|c| {
                let owners = c.as_mut().expect("targets lie in held chunks").owners_mut();
                OwnerList(owners.as_mut_ptr(), owners.len())
            })
            .collect();
        let places: Vec<Option<ChunkPlaces<'_>>> = sources[..wave.len()]
            .iter()
            .map(|c| c.as_ref().map(Chunk::places))
            .collect();
        let slots = self.slots.place_writer();
        places
            .par_iter()
            .enumerate()
            .map(|(k, chunk)| {
                let Some(chunk) = chunk else {
                    return 0;
                };
                let ci = wave.start + k;
                let mut owners = Vec::with_capacity(chunk.live as usize);
                let mut dst = starts[ci];
                for (pos, count) in bit_runs(chunk.occupied) {
                    let src = ((ci as u64) << shift) + u64::from(pos);
                    // SAFETY: sources and targets lie in chunks the table holds, in its
                    // span of places; targets lie below the wave and sources in it, so
                    // the ranges do not overlap, and no other task of the wave reads or
                    // writes these targets (each chunk's targets are its own). The
                    // objects are moved bitwise, without being read as `T`, created or
                    // dropped, so the thread that moves them needs no `T: Send`; their
                    // old places are marked free after the slide.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            objects.at(src),
                            objects.at(dst),
                            count as usize,
                        );
                    }
                    chunk.owners_of(pos, count, &mut owners);
                    dst += u64::from(count);
                }
                for (target, pos, part) in chunk_stretches(starts[ci], owners.len(), shift) {
                    owner_lists[target - first_target].write(pos, &owners[part]);
                }
                // SAFETY: the owners of distinct places are distinct slots, and each task
                // of the wave names the owners of its own chunk's places only.
                unsafe { slots.set_places(&owners, starts[ci] as u32) };
                owners.len()
            })
            .sum()
    }

    /// Gives every held chunk of `chunks` an owner list, the lists made on every thread.
    fn make_owner_lists(&mut self, chunks: std::ops::Range<usize>) {
        let to_make: Vec<(usize, (u32, u32))> = chunks
            .filter_map(|ci| Some((ci, self.chunks[ci].as_ref()?.owner_list_to_make()?)))
            .collect();
        let lists: Vec<Box<[u32]>> = to_make
            .par_iter()
            .map(|&(_, (home, capacity))| home_owner_list(home, capacity))
            .collect();
        for ((ci, _), list) in to_make.into_iter().zip(lists) {
            self.chunks[ci]
                .as_mut()
                .expect("a chunk listed above")
                .adopt_owner_list(list);
        }
    }

    /// Records that the objects of `owners` (slot indices) now lie at places `first..`,
    /// which are in chunks the table holds: in those chunks' owner lists, stretch by
    /// stretch within one chunk, and in the slots, which keep their place array.
    fn write_owners(&mut self, first: u64, owners: &[u32]) {
        for (target, pos, part) in chunk_stretches(first, owners.len(), self.shift) {
            self.chunks[target]
                .as_mut()
                .expect("a target place lies in a held chunk")
                .owners_mut()[pos..pos + part.len()]
                .copy_from_slice(&owners[part]);
        }
        self.slots.set_places(owners, first as u32);
    }
}

/// The places `first..first + len` cut where chunks (of `1 << shift` places) end: per
/// stretch, its chunk, its first position in that chunk, and its offsets from `first`.
fn chunk_stretches(
    first: u64,
    len: usize,
    shift: u32,
) -> impl Iterator<Item = (usize, usize, std::ops::Range<usize>)> {
    let per = 1u64 << shift;
    let mut done = 0usize;
    std::iter::from_fn(move || {
        (done < len).then(|| {
            let place = first + done as u64;
            let pos = place & (per - 1);
            let here = (len - done).min((per - pos) as usize);
            let stretch = ((place >> shift) as usize, pos as usize, done..done + here);
            done += here;
            stretch
        })
    })
}

/// A table's span of places, whose objects the tasks of a wave move bitwise.
struct MovedObjects<T>(*mut T);

// SAFETY: the tasks of a wave only copy objects' bytes between places of the table, which
// is borrowed exclusively while they run, each task to targets no other reads or writes;
// no `T` is read, created or dropped on their threads.
unsafe impl<T> Send for MovedObjects<T> {}
// SAFETY: as for `Send`.
unsafe impl<T> Sync for MovedObjects<T> {}

impl<T> MovedObjects<T> {
    /// The address of place `place` (computed, not read).
    fn at(&self, place: u64) -> *mut T {
        self.0.wrapping_add(place as usize)
    }
}

/// A target chunk's owner list, which the tasks of a wave write at distinct places.
struct OwnerList(*mut u32, usize);

// SAFETY: the list belongs to a chunk borrowed exclusively while the wave runs; tasks
// write disjoint ranges of it.
unsafe impl Send for OwnerList {}
// SAFETY: as for `Send`.
unsafe impl Sync for OwnerList {}

impl OwnerList {
    /// Writes `owners` at positions `pos..`; no other task writes these positions.
    fn write(&self, pos: usize, owners: &[u32]) {
        assert!(pos + owners.len() <= self.1, "owners past the list");
        // SAFETY: in bounds (checked) of the list, which the exclusive borrow keeps alive
        // and which no one reads while the wave runs; the tasks write disjoint ranges.
        unsafe { std::ptr::copy_nonoverlapping(owners.as_ptr(), self.0.add(pos), owners.len()) };
    }
}

#[cfg(test)]
mod tests {
    use crate::table::{Handle, Table, default_pool};

    fn filled(n: u64) -> (Table<u64>, Vec<Handle<u64>>) {
        let mut t = Table::with_pool_and_chunk_bytes(default_pool(), 64 * 8);
        let hs = (0..n).map(|i| t.insert(i)).collect();
        (t, hs)
    }

    /// Whether the slots keep a place array, and how many chunks keep an owner list.
    fn lists(t: &Table<u64>) -> (bool, usize) {
        let owners = t
            .chunks
            .iter()
            .flatten()
            .filter(|c| c.lists_owners())
            .count();
        (t.slots.lists_places(), owners)
    }

    #[test]
    fn objects_at_home_need_no_place_array_and_no_owner_lists() {
        let (mut t, hs) = filled(1000);
        assert_eq!(lists(&t), (false, 0));
        for h in hs.iter().step_by(3) {
            t.remove(*h);
        }
        let again: Vec<_> = (0..300).map(|i| t.insert(i)).collect();
        assert_eq!(lists(&t), (false, 0), "reinserts go home");
        t.compact_in_order().unwrap();
        let (places, owners) = lists(&t);
        assert!(places && owners > 0, "moved objects are away from home");
        for (i, h) in again.iter().enumerate() {
            assert_eq!(t.get(*h), Some(&(i as u64)));
        }
    }

    #[test]
    fn remove_where_takes_exactly_the_picked_objects() {
        let (mut t, hs) = filled(1000);
        let removed = t.remove_where(|v| v % 3 == 0 || (200..330).contains(v));
        let expected = (0..1000u64)
            .filter(|v| v % 3 == 0 || (200..330).contains(v))
            .count();
        assert_eq!((removed, t.len()), (expected, 1000 - expected));
        for (i, h) in hs.iter().enumerate() {
            let gone = i % 3 == 0 || (200..330).contains(&i);
            assert_eq!(t.get(*h), (!gone).then_some(&(i as u64)), "{i}");
        }
        // The next inserts reuse the vacated slots and places.
        let again = t.insert(7);
        assert!(hs.iter().all(|h| *h != again));
        assert_eq!(t.get(again), Some(&7));
    }

    #[test]
    fn place_ranges_are_cut_where_chunks_end() {
        let cut: Vec<_> = super::chunk_stretches(6, 10, 2).collect();
        assert_eq!(cut, [(1, 2, 0..2), (2, 0, 2..6), (3, 0, 6..10)]);
        assert_eq!(
            super::chunk_stretches(8, 4, 2).collect::<Vec<_>>(),
            [(2, 0, 0..4)]
        );
        assert_eq!(super::chunk_stretches(5, 0, 2).count(), 0);
    }

    #[test]
    fn compacting_in_order_on_many_threads_keeps_order_handles_and_owners() {
        // A random third removed: past the first chunks the holes below a chunk hold
        // the objects of many chunks after it, so most of the slide runs in waves.
        let (mut t, hs) = filled(200_000);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut kept = Vec::new();
        for (i, h) in hs.iter().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                t.remove(*h);
            } else {
                kept.push((i as u64, *h));
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let report = pool.install(|| t.compact_in_order()).unwrap();
        assert!(report.moved > kept.len() / 2);
        assert!(
            t.values().copied().eq(kept.iter().map(|&(i, _)| i)),
            "order kept"
        );
        assert!(
            t.iter().map(|(h, _)| h).eq(kept.iter().map(|&(_, h)| h)),
            "owners"
        );
        for &(i, h) in &kept {
            assert_eq!(t.get(h), Some(&i));
        }
        assert_eq!(t.fragmentation().holes, 0);
    }

    #[test]
    fn compacting_in_order_keeps_order_handles_and_returns_chunks() {
        let (mut t, hs) = filled(1000);
        t.remove_where(|v| v % 4 != 1 && *v < 900);
        let before: Vec<(Handle<u64>, u64)> = t.iter().map(|(h, v)| (h, *v)).collect();
        let chunks_before = t.stats().chunks;
        let report = t.compact_in_order().unwrap();
        assert!(report.moved > 0 && report.chunks_released > 0);
        let after: Vec<(Handle<u64>, u64)> = t.iter().map(|(h, v)| (h, *v)).collect();
        assert_eq!(after, before, "same objects, same handles, same order");
        let st = t.stats();
        assert_eq!(st.holes, 0);
        assert!(st.chunks < chunks_before);
        for (k, (h, v)) in after.iter().enumerate() {
            assert_eq!(t.get(*h), Some(v));
            let loc = t.location(*h).unwrap();
            assert_eq!(
                u64::from(loc.chunk) * u64::from(t.chunk_capacity()) + u64::from(loc.pos),
                k as u64
            );
            assert_eq!(t.handle_at_place(k as u64), Some(*h));
        }
        assert!(hs.iter().filter(|h| t.get(**h).is_none()).count() > 600);
        let h = t.insert(5000);
        assert_eq!(t.get(h), Some(&5000));
    }
}
