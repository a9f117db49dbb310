//! The device form of a slot table, and the host twin of the header's `ns_resolve`.

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use crate::table::{Table, word_is_live, word_version};

/// The CUDA header shipped with the crate (`include/neurostore.cuh`): `ns_slot`,
/// `ns_table`, `ns_resolve` and `NS_RESOLVE`, to prepend to kernels compiled at run time.
///
/// ```
/// let kernel = format!(
///     "{}\nextern \"C\" __global__ void touch(ns_table t, const unsigned long long* h) {{\n\
///      float* x = NS_RESOLVE(float, t, h[threadIdx.x]); if (x) *x += 1.0f; }}",
///     neurostore::cuda::HEADER
/// );
/// assert!(kernel.contains("ns_resolve"));
/// ```
pub const HEADER: &str = include_str!("../../include/neurostore.cuh");

/// One slot of a mirrored slot table, as uploaded (the header's `ns_slot`): the slot's
/// version, odd while it names an object, and the object's place, meaningful only then.
///
/// ```
/// use neurostore::cuda::DeviceSlot;
///
/// assert_eq!(std::mem::size_of::<DeviceSlot>(), 8);
/// let vacant = DeviceSlot { version: 2, place: 0 };
/// assert!(!vacant.is_live());
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DeviceSlot {
    /// The slot's version: a handle resolves only with this generation.
    pub version: u32,
    /// The place of the object: chunk `place / places_per_chunk`, place
    /// `place % places_per_chunk` in it.
    pub place: u32,
}

impl DeviceSlot {
    /// True while the slot names an object (its version is odd).
    pub fn is_live(&self) -> bool {
        self.version & 1 == 1
    }
}

/// The place `handle` (its [`to_bits`](crate::Handle::to_bits) form) names in a slot
/// image, exactly as the header's `ns_resolve_place` decides it on the device: `None`
/// for the null and the all-zero handle, a stale handle, or an index past the image.
///
/// ```
/// use neurostore::cuda::{DeviceSlot, resolve_place};
///
/// let image = [DeviceSlot::default(), DeviceSlot { version: 3, place: 7 }];
/// assert_eq!(resolve_place(&image, 3 << 32 | 1), Some(7));
/// assert_eq!(resolve_place(&image, 1 << 32 | 1), None); // an older generation
/// assert_eq!(resolve_place(&image, 0), None);
/// ```
pub fn resolve_place(slots: &[DeviceSlot], handle: u64) -> Option<u32> {
    let index = handle as u32;
    if index == 0 {
        return None;
    }
    place_if_named(slots.get(index as usize)?, handle)
}

/// The place `slot` holds if `handle` (whose index is the slot's) names its object.
pub(crate) fn place_if_named(slot: &DeviceSlot, handle: u64) -> Option<u32> {
    let generation = (handle >> 32) as u32;
    (generation & 1 == 1 && slot.version == generation).then_some(slot.place)
}

/// The device slot image of `table`: one [`DeviceSlot`] per slot index, the sentinel at
/// index 0 included, into `out`: each slot's version (without the host's note of whether
/// the object is at its home place) and its place (0 for a vacant slot). Built in
/// parallel blocks; a buffer kept from the last sync is reused as it is, its pages
/// already mapped.
pub(crate) fn slot_image<T: Sync>(table: &Table<T>, out: &mut Vec<DeviceSlot>) {
    const BLOCK: usize = 1 << 16;
    let slots = table.slot_array();
    out.resize(table.slot_count(), DeviceSlot::zeroed());
    if slots.len() == 0 {
        out[0] = DeviceSlot::zeroed();
        return;
    }
    out.par_chunks_mut(BLOCK)
        .zip(slots.words().par_chunks(BLOCK))
        .enumerate()
        .for_each(|(b, (out, words))| {
            for (k, (o, &word)) in out.iter_mut().zip(words).enumerate() {
                *o = DeviceSlot {
                    version: word_version(word),
                    place: if word_is_live(word) {
                        slots.place(b * BLOCK + k)
                    } else {
                        0
                    },
                };
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Handle;

    #[test]
    fn the_image_resolves_exactly_what_the_table_resolves() {
        let mut t: Table<u64> = Table::new();
        let hs: Vec<Handle<u64>> = (0..300).map(|i| t.insert(i)).collect();
        for h in hs.iter().step_by(3) {
            t.remove(*h);
        }
        let again = t.insert(1000); // reuses a vacant slot with a newer version
        let mut image = Vec::new();
        slot_image(&t, &mut image);
        assert_eq!(image.len(), t.slot_count());
        let per = t.places_per_chunk();
        for h in hs.iter().chain([&again]) {
            let place = resolve_place(&image, h.to_bits());
            match t.get(*h) {
                Some(v) => {
                    let place = place.expect("a live handle resolves");
                    let (chunk, pos) = (place / per, place % per);
                    let base = t.chunk_places_ptr(chunk as usize).expect("a live chunk");
                    // SAFETY: a live slot names an occupied place of a live chunk.
                    assert_eq!(unsafe { *base.add(pos as usize) }, *v);
                }
                None => assert_eq!(place, None, "stale {h:?} must not resolve"),
            }
        }
        for bad in [0, Handle::<u64>::null().to_bits(), u64::MAX, 1 << 32] {
            assert_eq!(resolve_place(&image, bad), None, "{bad:#x}");
        }
    }

    #[test]
    fn the_parallel_image_equals_the_slot_tables_walk_and_reuses_any_buffer() {
        let mut t: Table<[u32; 3]> =
            Table::with_pool_and_chunk_bytes(crate::table::default_pool(), 512);
        let mut live: Vec<Handle<[u32; 3]>> = (0..5000).map(|i| t.insert([i; 3])).collect();
        let mut image = vec![
            DeviceSlot {
                version: 77,
                place: 77
            };
            9000
        ]; // stale contents
        let mut seed = 0x9e37_79b9_u64;
        for round in 0..6 {
            for _ in 0..700 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let k = (seed % live.len() as u64) as usize;
                t.remove(live.swap_remove(k));
            }
            live.extend((0..300).map(|i| t.insert([i; 3])));
            if round == 3 {
                t.defragment();
            }
            slot_image(&t, &mut image);
            let walk: Vec<DeviceSlot> = t
                .slot_records()
                .map(|(version, place)| DeviceSlot { version, place })
                .collect();
            assert_eq!(image, walk, "round {round}");
        }
    }

    #[test]
    fn the_header_declares_what_the_view_passes() {
        for needle in [
            "struct ns_slot",
            "struct ns_table",
            "ns_resolve(",
            "NS_RESOLVE",
            "#pragma once",
        ] {
            assert!(HEADER.contains(needle), "{needle}");
        }
    }
}
