//! Layer 0, **handle**: [`Handle<T>`], a typed generational name for an object in a table.
//!
//! It sits below every other layer, so that the table that resolves handles and the
//! traits that find handles in values ([`Trace`](crate::Trace)) both build on it. A handle
//! is 8 bytes: a slot index and a version, in slotmap's FFI encoding, so it is also a
//! `slotmap::Key`. It imports nothing from the crate, and its only unsafe code is the three
//! trait promises (`slotmap::Key`, `bytemuck::Zeroable`, `bytemuck::Pod`) that its layout
//! makes true; the layer is otherwise `deny(unsafe_code)`.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use slotmap::KeyData;

/// A typed, generational handle: the name of one object of type `T` in a table.
///
/// Eight bytes, `#[repr(C)]`: a `u32` slot index, then a `u32` generation. A handle
/// resolves to the object it was returned for until that object is removed; after that
/// its slot's generation has moved on and the handle never resolves again. Handles are
/// `Copy`, compare and hash by value, and are [`bytemuck::Pod`], so they can sit inside
/// Pod structs, in snapshots and on the GPU.
///
/// The stable 64-bit form ([`to_bits`](Self::to_bits)) is slotmap's FFI encoding: the index
/// in the low 32 bits and the generation in the high 32 bits. Live handles always have an
/// odd generation, [`from_bits`](Self::from_bits) makes the generation odd as slotmap's
/// `from_ffi` does, and index 0 is a sentinel slot that never holds an object, so neither
/// the all-zero handle nor [`Handle::null`] ever resolves.
///
/// ```
/// use neurostore::table::Handle;
///
/// struct Neuron;
/// let h = Handle::<Neuron>::from_bits((3 << 32) | 12);
/// assert_eq!((h.index(), h.generation()), (12, 3));
/// assert_eq!(Handle::<Neuron>::from_bits(h.to_bits()), h);
/// assert_eq!(format!("{h:?}"), "Neuron#12v3");
/// assert!(Handle::<Neuron>::null().is_null());
/// assert_eq!(std::mem::size_of::<Handle<Neuron>>(), 8);
/// ```
#[repr(C)]
pub struct Handle<T> {
    index: u32,
    generation: u32,
    _type: PhantomData<fn() -> T>,
}

impl<T> Handle<T> {
    /// The null handle: never resolves, and is what `Default` gives.
    pub const fn null() -> Self {
        Handle {
            index: u32::MAX,
            generation: 1,
            _type: PhantomData,
        }
    }

    /// True for the null handle (any handle whose index is `u32::MAX`).
    pub const fn is_null(&self) -> bool {
        self.index == u32::MAX
    }

    /// The slot index.
    pub const fn index(&self) -> u32 {
        self.index
    }

    /// The slot generation (odd for every handle a table hands out).
    pub const fn generation(&self) -> u32 {
        self.generation
    }

    /// The stable 64-bit form: index in the low 32 bits, generation in the high 32.
    pub const fn to_bits(&self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }

    /// A handle from its 64-bit form. The generation is made odd (as slotmap's `from_ffi`
    /// does), so `from_bits(h.to_bits()) == h` for every handle a table hands out.
    pub const fn from_bits(bits: u64) -> Self {
        Handle {
            index: bits as u32,
            generation: (bits >> 32) as u32 | 1,
            _type: PhantomData,
        }
    }

    /// The same slot and generation as a handle of another type.
    pub const fn cast<U>(self) -> Handle<U> {
        Handle {
            index: self.index,
            generation: self.generation,
            _type: PhantomData,
        }
    }
}

/// The last path segment of `T`'s name, without generic arguments (`Neuron`, `Vec`).
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_null() {
            write!(f, "{}#null", short_type_name::<T>())
        } else {
            write!(
                f,
                "{}#{}v{}",
                short_type_name::<T>(),
                self.index,
                self.generation
            )
        }
    }
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Handle<T> {}

impl<T> Default for Handle<T> {
    fn default() -> Self {
        Self::null()
    }
}

impl<T> PartialEq for Handle<T> {
    fn eq(&self, other: &Self) -> bool {
        self.to_bits() == other.to_bits()
    }
}

impl<T> Eq for Handle<T> {}

impl<T> PartialOrd for Handle<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Handle<T> {
    /// By index, then generation (as slotmap's `KeyData`).
    fn cmp(&self, other: &Self) -> Ordering {
        (self.index, self.generation).cmp(&(other.index, other.generation))
    }
}

impl<T> Hash for Handle<T> {
    /// As slotmap's `KeyData`: one `write_u64` of the 64-bit form.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.to_bits());
    }
}

impl<T> From<KeyData> for Handle<T> {
    fn from(k: KeyData) -> Self {
        Self::from_bits(k.as_ffi())
    }
}

#[allow(unsafe_code)] // one of the three promises the layout makes true
// SAFETY: slotmap requires a key to behave exactly as the KeyData it wraps. `data()`
// returns `KeyData::from_ffi(to_bits())`, and `From<KeyData>` stores `as_ffi()` with the
// generation made odd, which KeyData's versions always are, so the two convert into each
// other exactly for every key slotmap makes. A handle built from arbitrary bits (or
// zeroed through `Zeroable`) maps to the KeyData that `from_ffi` makes of the same bits,
// which is always a valid KeyData; slotmap indexes and checks versions only through
// `data()`, so no value of a handle can make it read out of bounds.
unsafe impl<T> slotmap::Key for Handle<T> {
    fn data(&self) -> KeyData {
        KeyData::from_ffi(self.to_bits())
    }
}

#[allow(unsafe_code)] // one of the three promises the layout makes true
// SAFETY: `Handle<T>` is `#[repr(C)]` with two `u32` fields and a zero-sized
// `PhantomData`, so it has no padding and no invalid bit patterns; all zeros is a valid
// value (a handle that never resolves, as index 0 is slotmap's sentinel slot).
unsafe impl<T> bytemuck::Zeroable for Handle<T> {}

#[allow(unsafe_code)] // one of the three promises the layout makes true
// SAFETY: as for `Zeroable`; every bit pattern is a valid handle, the type is `Copy`
// for every `T`, and `'static` when `T` is.
unsafe impl<T: 'static> bytemuck::Pod for Handle<T> {}

/// A handle serializes as its 64-bit form ([`to_bits`](Handle::to_bits)), so objects
/// that hold handles keep them through serde (and `#[pooled(serde)]` snapshots).
///
/// ```
/// use neurostore::Handle;
///
/// let h = Handle::<u8>::from_bits(5 | 3 << 32);
/// assert_eq!(serde_json::to_string(&h)?, "12884901893");
/// assert_eq!(serde_json::from_str::<Handle<u8>>("12884901893")?, h);
/// # Ok::<(), serde_json::Error>(())
/// ```
impl<T> serde::Serialize for Handle<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.to_bits())
    }
}

impl<'de, T> serde::Deserialize<'de> for Handle<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <u64 as serde::Deserialize>::deserialize(deserializer).map(Handle::from_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slotmap::{Key, SlotMap};
    use std::collections::HashSet;

    struct Neuron;

    #[test]
    fn layout_and_bits_are_stable() {
        assert_eq!(std::mem::size_of::<Handle<Neuron>>(), 8);
        assert_eq!(std::mem::align_of::<Handle<Neuron>>(), 4);
        let h = Handle::<Neuron>::from_bits(0x0000_0007_0000_0002);
        assert_eq!((h.index(), h.generation()), (2, 7));
        let bytes: [u8; 8] = bytemuck::cast(h);
        assert_eq!(
            u64::from_le_bytes(bytes),
            h.to_bits(),
            "repr(C) index then generation"
        );
        assert_eq!(
            Handle::<Neuron>::from_bits(0).generation(),
            1,
            "generation made odd"
        );
    }

    #[test]
    fn handles_round_trip_through_slotmap() {
        let mut sm: SlotMap<Handle<Neuron>, u32> = SlotMap::with_key();
        let keys: Vec<_> = (0..100).map(|i| sm.insert(i)).collect();
        for (i, k) in keys.iter().enumerate().step_by(3) {
            assert_eq!(sm.remove(*k), Some(i as u32));
        }
        for (i, k) in keys.iter().enumerate() {
            let back = Handle::<Neuron>::from_bits(k.to_bits());
            assert_eq!(back, *k);
            assert_eq!(back.data(), k.data());
            assert_eq!(sm.get(back).copied(), (i % 3 != 0).then_some(i as u32));
        }
        // Reused slots get a new generation; the stale handle stays stale.
        let fresh = sm.insert(999);
        assert!(keys.iter().all(|k| *k != fresh));
        assert_eq!(sm.get(keys[0]), None);
    }

    #[test]
    fn null_and_zero_never_resolve() {
        let mut sm: SlotMap<Handle<Neuron>, u32> = SlotMap::with_key();
        for i in 0..10 {
            sm.insert(i);
        }
        let zero: Handle<Neuron> = bytemuck::Zeroable::zeroed();
        for h in [
            Handle::null(),
            Handle::default(),
            zero,
            Handle::from_bits(0),
            <Handle<Neuron> as Key>::null(),
        ] {
            assert_eq!(sm.get(h), None, "{h:?} resolved");
        }
        assert!(Handle::<Neuron>::null().is_null());
        assert!(!zero.is_null());
        assert_eq!(<Handle<Neuron> as Key>::null(), Handle::null());
    }

    #[test]
    fn eq_hash_ord_and_debug() {
        let a = Handle::<Neuron>::from_bits((1 << 32) | 5);
        let b = Handle::<Neuron>::from_bits((3 << 32) | 5);
        let c = Handle::<Neuron>::from_bits((1 << 32) | 6);
        assert!(a < b && b < c);
        let set: HashSet<_> = [a, b, c, a].into_iter().collect();
        assert_eq!(set.len(), 3);
        assert_eq!(format!("{a:?}"), "Neuron#5v1");
        assert_eq!(format!("{:?}", Handle::<Vec<u8>>::null()), "Vec#null");
        assert_eq!(a.cast::<u8>().to_bits(), a.to_bits());
    }
}
