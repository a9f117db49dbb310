//! The table's iterators and the standard collection traits around them.
//!
//! Every iterator is a named type, so that callers can keep one in a struct or name it in
//! a signature; each knows how many objects it has left (`ExactSizeIterator`), keeps
//! returning `None` once done (`FusedIterator`), and walks the chunks in storage order.
//! Internal iteration (`for_each`, `sum`, `fold`) walks a chunk at a time, and a full
//! chunk as one slice.

use std::iter::FusedIterator;
use std::ops::{Index, IndexMut};

use super::chunk::{Chunk, ChunkValues, ChunkValuesMut, OccupiedPlaces};
use super::slots::SlotArray;
use super::typed::{Table, handle_in};
use crate::handle::Handle;

/// Every live object with its handle, in storage order: [`Table::iter`].
pub struct Iter<'a, T> {
    slots: &'a SlotArray,
    chunks: std::slice::Iter<'a, Option<Chunk<T>>>,
    current: Option<(&'a Chunk<T>, OccupiedPlaces<'a>)>,
    remaining: usize,
}

/// Every live object with its handle, mutably, in storage order: [`Table::iter_mut`].
pub struct IterMut<'a, T> {
    slots: &'a SlotArray,
    chunks: std::slice::IterMut<'a, Option<Chunk<T>>>,
    current: Option<(&'a Chunk<T>, OccupiedPlaces<'a>)>,
    epoch: u64,
    remaining: usize,
}

/// Every live object, in storage order: [`Table::values`].
pub struct Values<'a, T> {
    chunks: std::slice::Iter<'a, Option<Chunk<T>>>,
    current: Option<ChunkValues<'a, T>>,
    remaining: usize,
}

/// Every live object, mutably, in storage order: [`Table::values_mut`].
pub struct ValuesMut<'a, T> {
    chunks: std::slice::IterMut<'a, Option<Chunk<T>>>,
    current: Option<ChunkValuesMut<'a, T>>,
    epoch: u64,
    remaining: usize,
}

/// Removes every object of a table, yielding each with its handle: [`Table::drain`].
/// Dropping it before the end removes (and drops) the objects it did not yield.
pub struct Drain<'a, T> {
    table: &'a mut Table<T>,
    handles: std::vec::IntoIter<Handle<T>>,
}

/// Every object of a table, with its handle, taken out of the table: `for (h, v) in table`.
pub struct IntoIter<T> {
    table: Table<T>,
    handles: std::vec::IntoIter<Handle<T>>,
}

impl<T> Table<T> {
    /// Every live object with its handle, in storage order (chunk by chunk, place by place).
    ///
    /// ```
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<u32> = (0..10).collect();
    /// let h = t.insert(10);
    /// let it = t.iter();
    /// assert_eq!(it.len(), 11);
    /// assert!(it.clone().any(|(handle, v)| handle == h && *v == 10));
    /// assert_eq!(it.map(|(_, v)| v).sum::<u32>(), 55);
    /// ```
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            slots: &self.slots,
            chunks: self.chunks.iter(),
            current: None,
            remaining: self.len,
        }
    }

    /// Every live object, in storage order, without handles (the fastest walk: a full
    /// chunk is one slice).
    pub fn values(&self) -> Values<'_, T> {
        Values {
            chunks: self.chunks.iter(),
            current: None,
            remaining: self.len,
        }
    }

    /// Every live object, mutably, in storage order, without handles. Stamps every
    /// chunk it reaches as changed.
    pub fn values_mut(&mut self) -> ValuesMut<'_, T> {
        ValuesMut {
            epoch: self.epoch(),
            remaining: self.len,
            chunks: self.chunks.iter_mut(),
            current: None,
        }
    }

    /// Every live object with its handle, mutably, in storage order. Stamps every chunk
    /// it reaches as changed.
    ///
    /// ```
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<u32> = (1..=3).collect();
    /// for (_, v) in &mut t {
    ///     *v *= 10;
    /// }
    /// assert_eq!(t.values().copied().collect::<Vec<_>>(), [10, 20, 30]);
    /// ```
    pub fn iter_mut(&mut self) -> IterMut<'_, T> {
        IterMut {
            epoch: self.epoch(),
            remaining: self.len,
            slots: &self.slots,
            chunks: self.chunks.iter_mut(),
            current: None,
        }
    }

    /// Removes every object, yielding it with its handle, in storage order. The objects
    /// not yet yielded when the iterator is dropped are removed and dropped then.
    ///
    /// ```
    /// use neurostore::table::Table;
    ///
    /// let mut t: Table<u32> = (0..100).collect();
    /// let firsts: Vec<u32> = t.drain().take(3).map(|(_, v)| v).collect();
    /// assert_eq!((firsts, t.len()), (vec![0, 1, 2], 0));
    /// ```
    pub fn drain(&mut self) -> Drain<'_, T> {
        let handles: Vec<Handle<T>> = self.iter().map(|(h, _)| h).collect();
        Drain {
            table: self,
            handles: handles.into_iter(),
        }
    }
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = (Handle<T>, &'a T);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((chunk, places)) = &mut self.current
                && let Some(pos) = places.next()
            {
                let chunk: &'a Chunk<T> = chunk;
                self.remaining -= 1;
                // SAFETY: the place is occupied (from the chunk's bitmap, which the shared
                // borrow of the table keeps unchanged), so it holds an object.
                let value = unsafe { chunk.get_unchecked(pos) };
                return Some((handle_in(self.slots, chunk.owner(pos)), value));
            }
            self.current = self
                .chunks
                .next()?
                .as_ref()
                .map(|c| (c, c.occupied_places()));
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }

    fn fold<B, F: FnMut(B, Self::Item) -> B>(self, init: B, mut f: F) -> B {
        let slots = self.slots;
        let mut walk = |acc: B, chunk: &'a Chunk<T>, places: OccupiedPlaces<'a>| {
            places.fold(acc, |acc, pos| {
                // SAFETY: as in `next`.
                let value = unsafe { chunk.get_unchecked(pos) };
                f(acc, (handle_in(slots, chunk.owner(pos)), value))
            })
        };
        let mut acc = init;
        if let Some((chunk, places)) = self.current {
            acc = walk(acc, chunk, places);
        }
        for chunk in self.chunks.flatten() {
            acc = walk(acc, chunk, chunk.occupied_places());
        }
        acc
    }
}

impl<T> Clone for Iter<'_, T> {
    fn clone(&self) -> Self {
        Iter {
            slots: self.slots,
            chunks: self.chunks.clone(),
            current: self.current.clone(),
            remaining: self.remaining,
        }
    }
}

impl<'a, T> Iterator for IterMut<'a, T> {
    type Item = (Handle<T>, &'a mut T);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((chunk, places)) = &mut self.current
                && let Some(pos) = places.next()
            {
                self.remaining -= 1;
                // SAFETY: the place is occupied, so it holds an object; each place is
                // visited once, so the `&mut T`s handed out are disjoint; the pointer comes
                // from the chunk's places, not from a reference, and the table is borrowed
                // exclusively for as long as the iterator and its items live.
                let value = unsafe { &mut *chunk.place_ptr(pos) };
                return Some((handle_in(self.slots, chunk.owner(pos)), value));
            }
            let chunk = self.chunks.next()?.as_mut();
            self.current = chunk.map(|c| {
                c.dirty = self.epoch;
                let c: &'a Chunk<T> = c;
                (c, c.occupied_places())
            });
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<'a, T> Iterator for Values<'a, T> {
    type Item = &'a T;

    #[inline]
    fn next(&mut self) -> Option<&'a T> {
        loop {
            if let Some(value) = self.current.as_mut().and_then(Iterator::next) {
                self.remaining -= 1;
                return Some(value);
            }
            self.current = self.chunks.next()?.as_ref().map(Chunk::values);
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }

    fn fold<B, F: FnMut(B, &'a T) -> B>(self, init: B, mut f: F) -> B {
        let mut acc = init;
        if let Some(current) = self.current {
            acc = current.fold(acc, &mut f);
        }
        for chunk in self.chunks.flatten() {
            acc = chunk.values().fold(acc, &mut f);
        }
        acc
    }
}

impl<T> Clone for Values<'_, T> {
    fn clone(&self) -> Self {
        Values {
            chunks: self.chunks.clone(),
            current: self.current.clone(),
            remaining: self.remaining,
        }
    }
}

impl<'a, T> Iterator for ValuesMut<'a, T> {
    type Item = &'a mut T;

    #[inline]
    fn next(&mut self) -> Option<&'a mut T> {
        loop {
            if let Some(value) = self.current.as_mut().and_then(Iterator::next) {
                self.remaining -= 1;
                return Some(value);
            }
            let chunk = self.chunks.next()?.as_mut();
            self.current = chunk.map(|c| {
                c.dirty = self.epoch;
                c.values_mut()
            });
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }

    fn fold<B, F: FnMut(B, &'a mut T) -> B>(self, init: B, mut f: F) -> B {
        let mut acc = init;
        if let Some(current) = self.current {
            acc = current.fold(acc, &mut f);
        }
        for chunk in self.chunks.flatten() {
            chunk.dirty = self.epoch;
            acc = chunk.values_mut().fold(acc, &mut f);
        }
        acc
    }
}

impl<T> Iterator for Drain<'_, T> {
    type Item = (Handle<T>, T);

    fn next(&mut self) -> Option<Self::Item> {
        take_next(self.table, &mut self.handles)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.handles.size_hint()
    }
}

impl<T> Drop for Drain<'_, T> {
    fn drop(&mut self) {
        for h in self.handles.by_ref() {
            drop(self.table.remove(h));
        }
    }
}

impl<T> Iterator for IntoIter<T> {
    type Item = (Handle<T>, T);

    fn next(&mut self) -> Option<Self::Item> {
        take_next(&mut self.table, &mut self.handles)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.handles.size_hint()
    }
}

/// Removes the object of the next listed handle from `table`, with its handle. Every handle
/// was live when the list was made and the table has been held exclusively since, so each
/// still resolves.
fn take_next<T>(
    table: &mut Table<T>,
    handles: &mut std::vec::IntoIter<Handle<T>>,
) -> Option<(Handle<T>, T)> {
    handles.find_map(|h| table.remove(h).map(|v| (h, v)))
}

impl<T> ExactSizeIterator for Iter<'_, T> {}
impl<T> ExactSizeIterator for IterMut<'_, T> {}
impl<T> ExactSizeIterator for Values<'_, T> {}
impl<T> ExactSizeIterator for ValuesMut<'_, T> {}
impl<T> ExactSizeIterator for Drain<'_, T> {}
impl<T> ExactSizeIterator for IntoIter<T> {}
impl<T> FusedIterator for Iter<'_, T> {}
impl<T> FusedIterator for IterMut<'_, T> {}
impl<T> FusedIterator for Values<'_, T> {}
impl<T> FusedIterator for ValuesMut<'_, T> {}
impl<T> FusedIterator for Drain<'_, T> {}
impl<T> FusedIterator for IntoIter<T> {}

macro_rules! debug_by_count {
    ($($name:ident),*) => {$(
        impl<T> std::fmt::Debug for $name<'_, T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("remaining", &self.len()).finish()
            }
        }
    )*};
}
debug_by_count!(Iter, IterMut, Values, ValuesMut, Drain);

impl<T> std::fmt::Debug for IntoIter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntoIter")
            .field("remaining", &self.len())
            .finish()
    }
}

impl<'a, T> IntoIterator for &'a Table<T> {
    type Item = (Handle<T>, &'a T);
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut Table<T> {
    type Item = (Handle<T>, &'a mut T);
    type IntoIter = IterMut<'a, T>;

    fn into_iter(self) -> IterMut<'a, T> {
        self.iter_mut()
    }
}

/// Takes every object out of the table with its handle, in storage order.
///
/// ```
/// use neurostore::table::Table;
///
/// let t: Table<String> = ["a", "b"].into_iter().map(String::from).collect();
/// let words: Vec<String> = t.into_iter().map(|(_, s)| s).collect();
/// assert_eq!(words, ["a", "b"]);
/// ```
impl<T> IntoIterator for Table<T> {
    type Item = (Handle<T>, T);
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        let handles: Vec<Handle<T>> = self.iter().map(|(h, _)| h).collect();
        IntoIter {
            table: self,
            handles: handles.into_iter(),
        }
    }
}

/// Inserts every value, as [`Table::insert`] does one (aborting as it does if the pool
/// refuses memory; [`Table::try_insert_batch`] returns the error instead).
impl<T> Extend<T> for Table<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, values: I) {
        let values = values.into_iter();
        // A refused reservation is reported by the insert that needs the memory.
        let _ = self.try_reserve(values.size_hint().0);
        for value in values {
            self.insert(value);
        }
    }
}

impl<'a, T: Copy + 'a> Extend<&'a T> for Table<T> {
    fn extend<I: IntoIterator<Item = &'a T>>(&mut self, values: I) {
        self.extend(values.into_iter().copied());
    }
}

/// A table in the [default pool](super::default_pool) holding every value, in order.
impl<T> FromIterator<T> for Table<T> {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        let mut table = Table::new();
        table.extend(values);
        table
    }
}

/// `table[h]`: the object `h` names.
///
/// # Panics
/// If `h` is stale, null or from another table, as slotmap's `SlotMap` does; use
/// [`Table::get`] to get an `Option` instead.
///
/// ```
/// use neurostore::table::Table;
///
/// let mut t = Table::new();
/// let h = t.insert(1.5f32);
/// t[h] += 1.0;
/// assert_eq!(t[h], 2.5);
/// ```
impl<T> Index<Handle<T>> for Table<T> {
    type Output = T;

    #[inline]
    fn index(&self, h: Handle<T>) -> &T {
        match self.get(h) {
            Some(value) => value,
            None => stale_index(h.to_bits()),
        }
    }
}

impl<T> IndexMut<Handle<T>> for Table<T> {
    #[inline]
    fn index_mut(&mut self, h: Handle<T>) -> &mut T {
        match self.get_mut(h) {
            Some(value) => value,
            None => stale_index(h.to_bits()),
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn stale_index(bits: u64) -> ! {
    panic!(
        "table[handle]: handle {bits:#x} (index {}, version {}) names no live object of \
         this table; use `get` for an Option",
        bits as u32,
        bits >> 32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_iterator_counts_down_to_zero_and_stays_done() {
        let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(super::super::default_pool(), 256);
        let hs: Vec<_> = (0..200u64).map(|i| t.insert(i)).collect();
        for h in hs.iter().step_by(3) {
            t.remove(*h);
        }
        let live = t.len();
        let mut it = t.iter();
        for left in (0..live).rev() {
            assert!(it.next().is_some());
            assert_eq!(it.len(), left);
        }
        assert!(it.next().is_none() && it.next().is_none());
        let mut values = t.values();
        assert_eq!(values.by_ref().take(5).count(), 5);
        assert_eq!(values.len(), live - 5);
        assert_eq!(values.count(), live - 5);
        let mut it = t.iter_mut();
        assert_eq!(it.by_ref().take(7).count(), 7);
        assert_eq!(it.len(), live - 7);
        assert_eq!(it.count(), live - 7);
        assert_eq!(t.values_mut().len(), live);
    }

    #[test]
    fn a_walk_started_with_next_and_finished_with_fold_sees_each_object_once() {
        let mut t: Table<u64> = Table::with_pool_and_chunk_bytes(super::super::default_pool(), 256);
        let hs: Vec<_> = (0..300u64).map(|i| t.insert(i)).collect();
        for h in hs.iter().skip(1).step_by(4) {
            t.remove(*h);
        }
        let expected: u64 = t.values().copied().sum();
        for head in [0, 1, 31, 32, 33, 100] {
            let mut it = t.iter();
            let first: u64 = it.by_ref().take(head).map(|(_, v)| *v).sum();
            let rest = it.fold(0, |acc, (h, v)| {
                assert_eq!(t.get(h), Some(v));
                acc + v
            });
            assert_eq!(first + rest, expected, "head {head}");
            let mut vs = t.values_mut();
            let first: u64 = vs.by_ref().take(head).map(|v| *v).sum();
            assert_eq!(first + vs.fold(0, |acc, v| acc + *v), expected);
        }
    }

    #[test]
    fn a_dropped_drain_removes_what_it_did_not_yield() {
        let mut t: Table<String> = (0..50).map(|i| i.to_string()).collect();
        let hs: Vec<_> = t.iter().map(|(h, _)| h).collect();
        let mut drain = t.drain();
        assert_eq!(drain.len(), 50);
        assert_eq!(drain.next(), Some((hs[0], "0".to_string())));
        drop(drain);
        assert!(t.is_empty());
        assert!(hs.iter().all(|h| !t.contains(*h)));
    }

    #[test]
    fn index_reads_and_writes_and_panics_on_a_stale_handle() {
        let mut t = Table::new();
        let h = t.insert(3u32);
        t[h] *= 2;
        assert_eq!(t[h], 6);
        t.remove(h);
        let stale = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t[h]));
        let message = stale.unwrap_err();
        let message = message.downcast_ref::<String>().expect("a formatted panic");
        assert!(message.contains("names no live object"), "{message}");
    }

    #[test]
    fn extend_and_collect_insert_in_order() {
        let mut t: Table<u16> = [1u16, 2, 3]
            .iter()
            .collect::<Vec<_>>()
            .into_iter()
            .copied()
            .collect();
        t.extend(&[4u16, 5]);
        t.extend(6..=7u16);
        assert_eq!(
            t.values().copied().collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6, 7]
        );
        let taken: Vec<u16> = t.into_iter().map(|(_, v)| v).collect();
        assert_eq!(taken, [1, 2, 3, 4, 5, 6, 7]);
    }
}
