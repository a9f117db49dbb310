//! [`DeviceMirror`]: a device copy of a table's objects and slot table, synced by chunk.
//!
//! The device holds the table's chunks back to back (chunk `i` at byte
//! `i * places_per_chunk * size_of::<T>()`, so the object of place `p` is at byte
//! `p * size_of::<T>()`, the packed place a slot holds) and one [`DeviceSlot`] per slot
//! index. A sync uploads the chunks stamped with an epoch after the last sync, and the
//! whole slot table when any slot changed since (inserts, removals, moves); adjacent
//! chunks go up in one copy. The table's epoch advances at every sync, so changes made
//! after it are the next sync's. What moves and in what order is decided here, over an
//! abstract [`Target`], so that the same code is tested against host memory on machines
//! without a GPU; the driver's target stages copies through pinned buffers.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::device::Device;
use super::slots::{DeviceSlot, slot_image};
use crate::error::Error;
use crate::table::Table;

/// What one [`DeviceMirror::sync`] moved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    /// Bytes copied to the device (chunks and slot table).
    pub bytes_up: u64,
    /// Copies issued: adjacent chunks share one.
    pub copies: u32,
    /// Chunks uploaded.
    pub chunks: u32,
    /// Bytes of the slot table uploaded (0 when no slot changed since the last sync).
    pub slot_bytes: u64,
    /// Wall time, until the device holds the data.
    pub duration: Duration,
}

/// What one [`DeviceMirror::pull`] moved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PullReport {
    /// Bytes copied from the device into the table's chunks.
    pub bytes_down: u64,
    /// Copies issued.
    pub copies: u32,
    /// Chunks downloaded.
    pub chunks: u32,
    /// Wall time.
    pub duration: Duration,
}

/// A mirrored table as a kernel argument: the header's `ns_table` (same layout), for
/// `ns_resolve` and `NS_RESOLVE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorView {
    /// Device address of the slot table (`const ns_slot*`).
    pub slots: u64,
    /// Slots in it, the sentinel at index 0 included.
    pub slot_count: u32,
    /// Device address of the objects (`char*`; place `p` at `p * elem_size`).
    pub storage: u64,
    /// `size_of::<T>()`.
    pub elem_size: u32,
}

// SAFETY: `MirrorView` is `repr(C)` with the field order, types and padding of the
// header's `ns_table` (8-byte pointer, u32, 8-byte pointer, u32), so the kernel reads
// the bytes cudarc copies as that struct.
unsafe impl cudarc::driver::DeviceRepr for MirrorView {}

/// The two device buffers of a mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Region {
    Storage,
    Slots,
}

/// Device memory as the sync logic sees it.
pub(crate) trait Target {
    /// Bytes the buffer of `region` holds now.
    fn capacity(&self, region: Region) -> u64;
    /// Makes the buffer of `region` hold `bytes`, keeping what it held.
    fn grow(&mut self, region: Region, bytes: u64) -> Result<(), Error>;
    /// Queues a copy of `len` bytes from `src` to byte `offset` of `region`.
    ///
    /// # Safety
    /// `src .. src + len` is readable until [`finish`](Self::finish) returns, and
    /// `offset + len` is at most the region's capacity.
    unsafe fn put(
        &mut self,
        region: Region,
        offset: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), Error>;
    /// Queues a copy of `len` bytes from byte `offset` of `region` to `dst`.
    ///
    /// # Safety
    /// `dst .. dst + len` is writable and nothing else reads or writes it until
    /// [`finish`](Self::finish) returns; `offset + len` is at most the capacity.
    unsafe fn get(
        &mut self,
        region: Region,
        offset: u64,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), Error>;
    /// Completes every queued copy; how many copies were issued since the last finish.
    fn finish(&mut self) -> Result<u32, Error>;
}

/// The host-side state of a mirror: what the device holds, as of which epoch.
#[derive(Debug)]
pub(crate) struct MirrorState {
    table_id: u64,
    elem: usize,
    per_chunk: u32,
    /// The epoch that ended at the last complete sync or pull; `None` before the first
    /// one, or after one failed (the next sync then uploads everything).
    synced: Option<u64>,
    slot_count: u32,
    scratch: Vec<DeviceSlot>,
}

impl MirrorState {
    pub(crate) fn new<T: Pod>(table: &Table<T>) -> Result<Self, Error> {
        let elem = std::mem::size_of::<T>();
        if elem == 0 {
            return Err(Error::invalid_argument(
                "table",
                "a table of zero-sized objects has no bytes to mirror",
            ));
        }
        if elem > u32::MAX as usize {
            return Err(Error::invalid_argument(
                "table",
                format!("objects of {elem} bytes are too large to mirror"),
            ));
        }
        Ok(MirrorState {
            table_id: table.id(),
            elem,
            per_chunk: table.places_per_chunk(),
            synced: None,
            slot_count: 0,
            scratch: Vec::new(),
        })
    }

    fn chunk_bytes(&self) -> u64 {
        u64::from(self.per_chunk) * self.elem as u64
    }

    fn check_table<T>(&self, table: &Table<T>) -> Result<(), Error> {
        if table.id() != self.table_id {
            return Err(Error::invalid_argument(
                "table",
                "this mirror follows another table: make a mirror for each table",
            ));
        }
        Ok(())
    }

    pub(crate) fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// Uploads what changed since the last sync (everything, the first time).
    pub(crate) fn sync<T: Pod + Sync>(
        &mut self,
        table: &Table<T>,
        target: &mut impl Target,
    ) -> Result<SyncReport, Error> {
        self.check_table(table)?;
        let start = Instant::now();
        // Taken while the sync is under way: if it fails, the next one uploads all.
        let previous = self.synced.take();
        let ended = table.advance_epoch();
        let changed = |epoch: u64| previous.is_none_or(|p| epoch > p);
        let mut report = SyncReport::default();
        self.put_changed_chunks(table, target, changed, &mut report)?;
        if changed(table.slots_changed_epoch()) {
            self.put_slots(table, target, &mut report)?;
        }
        report.copies = target.finish()?;
        self.synced = Some(ended);
        report.duration = start.elapsed();
        Ok(report)
    }

    /// Queues the upload of every chunk whose stamp `changed` accepts, growing the
    /// device storage to every chunk index first.
    fn put_changed_chunks<T: Pod + Sync>(
        &self,
        table: &Table<T>,
        target: &mut impl Target,
        changed: impl Fn(u64) -> bool,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let chunk_bytes = self.chunk_bytes();
        let storage = table.chunk_indices() as u64 * chunk_bytes;
        if storage > target.capacity(Region::Storage) {
            let grown = storage.max(2 * target.capacity(Region::Storage));
            target.grow(Region::Storage, grown)?;
        }
        for ci in 0..table.chunk_indices() {
            let Some(stamp) = table.chunk_changed_epoch(ci) else {
                continue;
            };
            if !changed(stamp) {
                continue;
            }
            let src = table
                .chunk_places_ptr(ci)
                .expect("a chunk with a stamp exists");
            // SAFETY: a chunk's places span `chunk_bytes` bytes of its block, which
            // stays put while `table` is borrowed; the range fits the storage (grown
            // above to every chunk index).
            unsafe {
                target.put(
                    Region::Storage,
                    ci as u64 * chunk_bytes,
                    src.cast(),
                    chunk_bytes as usize,
                )?;
            }
            report.chunks += 1;
            report.bytes_up += chunk_bytes;
        }
        Ok(())
    }

    /// Queues the upload of the whole slot table, growing the device buffer if needed.
    fn put_slots<T: Pod + Sync>(
        &mut self,
        table: &Table<T>,
        target: &mut impl Target,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        slot_image(table, &mut self.scratch);
        let bytes: &[u8] = bytemuck::cast_slice(&self.scratch);
        let need = bytes.len() as u64;
        if need > target.capacity(Region::Slots) {
            let grown = need.max(2 * target.capacity(Region::Slots));
            target.grow(Region::Slots, grown)?;
        }
        // SAFETY: `scratch` is not touched until the target's `finish` returns (the
        // caller's next step); the slots buffer holds `need` bytes.
        unsafe { target.put(Region::Slots, 0, bytes.as_ptr(), bytes.len())? };
        report.slot_bytes = need;
        report.bytes_up += need;
        self.slot_count = u32::try_from(self.scratch.len()).map_err(|_| {
            Error::invalid_argument("table", "a slot table of 2^32 slots cannot be mirrored")
        })?;
        Ok(())
    }

    /// Downloads every chunk into `table`. Refused when the table changed since the last
    /// sync: those changes would be overwritten.
    pub(crate) fn pull<T: Pod>(
        &mut self,
        table: &mut Table<T>,
        target: &mut impl Target,
    ) -> Result<PullReport, Error> {
        self.check_table(table)?;
        let Some(synced) = self.synced else {
            return Err(Error::invalid_argument(
                "mirror",
                "the device holds no complete copy of the table: sync before pulling",
            ));
        };
        let changed_chunk = (0..table.chunk_indices())
            .find(|&ci| table.chunk_changed_epoch(ci).is_some_and(|e| e > synced));
        if table.slots_changed_epoch() > synced || changed_chunk.is_some() {
            return Err(Error::invalid_argument(
                "table",
                "the table changed on the host since the last sync; pulling would overwrite \
                 those changes (sync first)",
            ));
        }
        let start = Instant::now();
        self.synced = None;
        let chunk_bytes = self.chunk_bytes();
        let mut report = PullReport::default();
        for ci in 0..table.chunk_indices() {
            let Some(dst) = table.chunk_places_mut_ptr(ci) else {
                continue;
            };
            // SAFETY: the chunk's places span `chunk_bytes` bytes of its block; `table`
            // is borrowed mutably until `finish` returns, so nothing else touches them;
            // `T: Pod` accepts any bytes; the storage holds every chunk index synced.
            unsafe {
                target.get(
                    Region::Storage,
                    ci as u64 * chunk_bytes,
                    dst.cast(),
                    chunk_bytes as usize,
                )?;
            }
            report.chunks += 1;
            report.bytes_down += chunk_bytes;
        }
        report.copies = target.finish()?;
        // The downloaded chunks were stamped in this epoch: ended now, so this mirror
        // does not upload them again, while other consumers see them as changed.
        self.synced = Some(table.advance_epoch());
        report.duration = start.elapsed();
        Ok(report)
    }
}

/// A device copy of a [`Table<T>`] of `Pod` objects and of its slot table, so kernels
/// read and write the same objects and resolve the same handles (with `ns_resolve` from
/// [`HEADER`](super::HEADER)). Made by [`DeviceMirror::new`], which uploads everything;
/// [`sync`](Self::sync) then uploads only the chunks changed since, and
/// [`pull`](Self::pull) brings back what kernels wrote.
///
/// ```no_run
/// use neurostore::{Neuron, neural::NeuronParams, table::Table, cuda::{Device, DeviceMirror}};
///
/// let gpu = Device::open(0)?;
/// let mut neurons: Table<Neuron> = Table::new();
/// let h = neurons.insert(Neuron::new(&NeuronParams::default()));
/// let mut mirror = DeviceMirror::new(&neurons, &gpu)?;
/// neurons.get_mut(h).unwrap().v_m = -60.0;
/// let report = mirror.sync(&neurons)?; // one chunk goes up
/// assert_eq!(report.chunks, 1);
/// // ... launch kernels on gpu.stream() with mirror.view() ...
/// mirror.pull(&mut neurons)?;
/// # Ok::<(), neurostore::Error>(())
/// ```
pub struct DeviceMirror<T> {
    device: Device,
    state: MirrorState,
    buffers: super::staging::Buffers,
    _objects: PhantomData<fn() -> T>,
}

impl<T: Pod + Sync> std::fmt::Debug for DeviceMirror<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMirror")
            .field("device", &self.device)
            .field("view", &self.view())
            .finish_non_exhaustive()
    }
}

impl<T: Pod + Sync> DeviceMirror<T> {
    /// A device mirror of `table` on `device`, with everything uploaded.
    pub fn new(table: &Table<T>, device: &Device) -> Result<DeviceMirror<T>, Error> {
        let mut mirror = DeviceMirror {
            device: device.clone(),
            state: MirrorState::new(table)?,
            buffers: super::staging::Buffers::default(),
            _objects: PhantomData,
        };
        mirror.sync(table)?;
        Ok(mirror)
    }

    /// Uploads the chunks changed since the last sync, and the slot table if any slot
    /// changed. `table` must be the table the mirror was made from.
    pub fn sync(&mut self, table: &Table<T>) -> Result<SyncReport, Error> {
        let mut target = self.buffers.target(&self.device)?;
        self.state.sync(table, &mut target)
    }

    /// Downloads every chunk into `table` (after kernels wrote the device copy). Refused,
    /// with nothing changed, when the table changed on the host since the last sync.
    pub fn pull(&mut self, table: &mut Table<T>) -> Result<PullReport, Error> {
        let mut target = self.buffers.target(&self.device)?;
        self.state.pull(table, &mut target)
    }

    /// The mirror as a kernel argument (the header's `ns_table`). Take it again after
    /// each sync: a table that grew gets larger device buffers at new addresses.
    pub fn view(&self) -> MirrorView {
        MirrorView {
            slots: self.buffers.address(Region::Slots),
            slot_count: self.state.slot_count(),
            storage: self.buffers.address(Region::Storage),
            elem_size: std::mem::size_of::<T>() as u32,
        }
    }

    /// The slot table the device holds now, read back (for checks and debugging).
    pub fn read_slots(&self) -> Result<Vec<DeviceSlot>, Error> {
        let mut out = vec![DeviceSlot::default(); self.state.slot_count() as usize];
        if let Some(buffer) = self.buffers.buffer(Region::Slots) {
            self.device.pool().download(buffer, 0, &mut out)?;
        }
        Ok(out)
    }

    /// The object `h` names in the device's copy, read back through the device's slot
    /// table (as `ns_resolve` finds it); `None` when the handle does not resolve there.
    pub fn read_object(&self, h: crate::Handle<T>) -> Result<Option<T>, Error> {
        let index = h.to_bits() as u32;
        if index == 0 || index >= self.state.slot_count() {
            return Ok(None);
        }
        let Some(slots) = self.buffers.buffer(Region::Slots) else {
            return Ok(None);
        };
        let mut slot = [DeviceSlot::default()];
        self.device
            .pool()
            .download(slots, u64::from(index) * 8, &mut slot)?;
        let Some(place) = super::slots::place_if_named(&slot[0], h.to_bits()) else {
            return Ok(None);
        };
        let Some(storage) = self.buffers.buffer(Region::Storage) else {
            return Ok(None);
        };
        let mut object = [T::zeroed()];
        let at = u64::from(place) * std::mem::size_of::<T>() as u64;
        self.device.pool().download(storage, at, &mut object)?;
        Ok(Some(object[0]))
    }

    /// The device this mirror lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of device memory the mirror holds.
    pub fn device_bytes(&self) -> u64 {
        self.buffers.capacity_of(Region::Storage) + self.buffers.capacity_of(Region::Slots)
    }
}

#[cfg(test)]
pub(crate) mod host {
    //! Host memory as a [`Target`], for tests on machines without a GPU.
    use std::mem::MaybeUninit;

    use super::*;

    /// Two host buffers standing in for the device's, counting copies as the driver's
    /// target does (adjacent queued ranges share one).
    #[derive(Default)]
    pub(crate) struct HostTarget {
        pub(crate) storage: Vec<MaybeUninit<u8>>,
        pub(crate) slots: Vec<MaybeUninit<u8>>,
        last_end: Option<(Region, u64)>,
        copies: u32,
    }

    impl HostTarget {
        fn buffer(&mut self, region: Region) -> &mut Vec<MaybeUninit<u8>> {
            match region {
                Region::Storage => &mut self.storage,
                Region::Slots => &mut self.slots,
            }
        }

        fn count(&mut self, region: Region, offset: u64, len: usize) {
            if self.last_end != Some((region, offset)) {
                self.copies += 1;
            }
            self.last_end = Some((region, offset + len as u64));
        }

        /// The bytes of `region` at `offset .. offset + len`, which a put initialised.
        pub(crate) fn bytes(&self, region: Region, offset: usize, len: usize) -> Vec<u8> {
            let b = match region {
                Region::Storage => &self.storage,
                Region::Slots => &self.slots,
            };
            b[offset..offset + len]
                .iter()
                // SAFETY: the caller asks only for bytes a put copied from initialised
                // data (live objects of a Pod type, or the slot image).
                .map(|x| unsafe { x.assume_init() })
                .collect()
        }

        /// The uploaded slot image.
        pub(crate) fn slot_image(&self, count: u32) -> Vec<DeviceSlot> {
            let bytes = self.bytes(Region::Slots, 0, count as usize * 8);
            bytemuck::pod_collect_to_vec(&bytes)
        }

        /// Writes `bytes` into the storage, as a kernel would.
        pub(crate) fn write_storage(&mut self, offset: usize, bytes: &[u8]) {
            for (d, s) in self.storage[offset..offset + bytes.len()]
                .iter_mut()
                .zip(bytes)
            {
                *d = MaybeUninit::new(*s);
            }
        }
    }

    impl Target for HostTarget {
        fn capacity(&self, region: Region) -> u64 {
            match region {
                Region::Storage => self.storage.len() as u64,
                Region::Slots => self.slots.len() as u64,
            }
        }

        fn grow(&mut self, region: Region, bytes: u64) -> Result<(), Error> {
            self.buffer(region)
                .resize(bytes as usize, MaybeUninit::uninit());
            Ok(())
        }

        unsafe fn put(
            &mut self,
            region: Region,
            offset: u64,
            src: *const u8,
            len: usize,
        ) -> Result<(), Error> {
            self.count(region, offset, len);
            let dst = self.buffer(region)[offset as usize..][..len].as_mut_ptr();
            // SAFETY: per the contract `src` is readable for `len` bytes; the
            // destination slice holds `len` bytes; bytes move as `MaybeUninit`.
            unsafe { std::ptr::copy_nonoverlapping(src.cast(), dst, len) };
            Ok(())
        }

        unsafe fn get(
            &mut self,
            region: Region,
            offset: u64,
            dst: *mut u8,
            len: usize,
        ) -> Result<(), Error> {
            self.count(region, offset, len);
            let src = self.buffer(region)[offset as usize..][..len].as_ptr();
            // SAFETY: per the contract `dst` is writable for `len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(src, dst.cast(), len) };
            Ok(())
        }

        fn finish(&mut self) -> Result<u32, Error> {
            self.last_end = None;
            Ok(std::mem::take(&mut self.copies))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytemuck::Zeroable;
    use proptest::prelude::*;

    use super::host::HostTarget;
    use super::*;
    use crate::Handle;
    use crate::cuda::slots::resolve_place;
    use crate::table::default_pool;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    struct Obj {
        a: u64,
        b: u32,
        c: u32,
    }

    fn obj(i: u64) -> Obj {
        Obj {
            a: i,
            b: i as u32 ^ 0xdead,
            c: 7,
        }
    }

    /// 16 objects per chunk, so a few hundred objects span many chunks.
    fn table() -> Table<Obj> {
        Table::with_pool_and_chunk_bytes(default_pool(), 256)
    }

    /// A table of `n` objects (in storage order from place 0), a mirror state for it and
    /// a host target, nothing synced yet.
    fn filled(n: u64) -> (Table<Obj>, Vec<Handle<Obj>>, MirrorState, HostTarget) {
        let mut t = table();
        let hs = t.insert_batch((0..n).map(obj));
        let st = MirrorState::new(&t).unwrap();
        (t, hs, st, HostTarget::default())
    }

    /// Writes `o` as the object `h` names in the device copy, as a kernel would.
    fn kernel_writes(st: &MirrorState, dev: &mut HostTarget, h: Handle<Obj>, o: &Obj) {
        let image = dev.slot_image(st.slot_count());
        let place = resolve_place(&image, h.to_bits()).expect("a live handle") as usize;
        dev.write_storage(place * std::mem::size_of::<Obj>(), bytemuck::bytes_of(o));
    }

    /// The device copy agrees with the host: the same slot image, and every handle
    /// resolves on the device iff it resolves on the host, to the same bytes.
    fn check(state: &MirrorState, device: &HostTarget, t: &Table<Obj>, handles: &[Handle<Obj>]) {
        let image = device.slot_image(state.slot_count());
        // The reference: the slot table's own walk, not the parallel build under test.
        let expected: Vec<DeviceSlot> = t
            .slot_records()
            .map(|(version, place)| DeviceSlot { version, place })
            .collect();
        assert_eq!(image, expected, "slot images differ");
        for h in handles {
            match (t.get(*h), resolve_place(&image, h.to_bits())) {
                (Some(v), Some(place)) => {
                    let at = place as usize * std::mem::size_of::<Obj>();
                    let bytes = device.bytes(Region::Storage, at, std::mem::size_of::<Obj>());
                    assert_eq!(bytes, bytemuck::bytes_of(v), "{h:?} at place {place}");
                }
                (None, None) => {}
                (host, dev) => panic!("{h:?}: host {host:?}, device place {dev:?}"),
            }
        }
    }

    #[test]
    fn the_first_sync_uploads_everything_and_later_ones_only_what_changed() {
        let (mut t, hs, mut st, mut dev) = filled(160); // chunks 0..10
        let r = st.sync(&t, &mut dev).unwrap();
        assert_eq!(r.chunks, 10);
        assert_eq!(r.copies, 2, "the chunks in one copy, the slots in another");
        assert_eq!(r.slot_bytes, 161 * 8);
        check(&st, &dev, &t, &hs);

        let r = st.sync(&t, &mut dev).unwrap();
        assert_eq!(
            (r.bytes_up, r.copies, r.chunks),
            (0, 0, 0),
            "nothing changed"
        );

        // Chunks 3, 4 and 5 change: one copy; the slots did not change.
        for i in [50, 64, 90] {
            t.get_mut(hs[i]).unwrap().c += 1;
        }
        let r = st.sync(&t, &mut dev).unwrap();
        assert_eq!((r.chunks, r.copies, r.slot_bytes), (3, 1, 0));
        assert_eq!(r.bytes_up, 3 * 256);
        check(&st, &dev, &t, &hs);

        // Chunks 1 and 7: two copies.
        t.get_mut(hs[17]).unwrap().c += 1;
        t.get_mut(hs[120]).unwrap().c += 1;
        let r = st.sync(&t, &mut dev).unwrap();
        assert_eq!((r.chunks, r.copies), (2, 2));
        check(&st, &dev, &t, &hs);
    }

    #[test]
    fn removals_inserts_and_moves_reach_the_device_slot_table() {
        let (mut t, mut hs, mut st, mut dev) = filled(200);
        st.sync(&t, &mut dev).unwrap();
        for h in hs.iter().step_by(3) {
            t.remove(*h);
        }
        let r = st.sync(&t, &mut dev).unwrap();
        assert!(r.slot_bytes > 0, "removals change slots");
        check(&st, &dev, &t, &hs);
        hs.extend((0..40).map(|i| t.insert(obj(1000 + i))));
        st.sync(&t, &mut dev).unwrap();
        check(&st, &dev, &t, &hs);
        let moved = t.defragment();
        assert!(moved.moved > 0);
        st.sync(&t, &mut dev).unwrap();
        check(&st, &dev, &t, &hs);
        t.compact_by_key(|o| std::cmp::Reverse(o.a)).unwrap();
        st.sync(&t, &mut dev).unwrap();
        check(&st, &dev, &t, &hs);
        t.clear();
        let r = st.sync(&t, &mut dev).unwrap();
        assert_eq!(r.chunks, 0);
        check(&st, &dev, &t, &hs);
        hs.extend((0..20).map(|i| t.insert(obj(i))));
        st.sync(&t, &mut dev).unwrap();
        check(&st, &dev, &t, &hs);
    }

    #[test]
    fn pull_brings_back_what_kernels_wrote() {
        let (mut t, hs, mut st, mut dev) = filled(100);
        st.sync(&t, &mut dev).unwrap();
        // A "kernel" adds 1 to every object's `c` on the device.
        for h in &hs {
            let mut o = *t.get(*h).unwrap();
            o.c += 1;
            kernel_writes(&st, &mut dev, *h, &o);
        }
        let since = t.epoch();
        let r = st.pull(&mut t, &mut dev).unwrap();
        assert_eq!(r.chunks, 7);
        assert_eq!(r.copies, 1, "adjacent chunks come down in one copy");
        for (i, h) in hs.iter().enumerate() {
            assert_eq!(t.get(*h).unwrap().c, 8, "object {i}");
        }
        // Other consumers see the pulled chunks as changed; this mirror does not upload them.
        assert_eq!(t.chunks_changed_since(since).count(), 7);
        let r = st.sync(&t, &mut dev).unwrap();
        assert_eq!(r.bytes_up, 0);
        check(&st, &dev, &t, &hs);
    }

    #[test]
    fn pull_refuses_to_overwrite_host_changes_and_changes_nothing() {
        let (mut t, hs, mut st, mut dev) = filled(40);
        assert!(matches!(
            st.pull(&mut t, &mut dev),
            Err(Error::InvalidArgument { name: "mirror", .. })
        ));
        st.sync(&t, &mut dev).unwrap();
        t.get_mut(hs[3]).unwrap().c = 99;
        let epoch = t.epoch();
        assert!(matches!(
            st.pull(&mut t, &mut dev),
            Err(Error::InvalidArgument { name: "table", .. })
        ));
        assert_eq!(t.get(hs[3]).unwrap().c, 99);
        assert_eq!(t.epoch(), epoch);
        // The refused pull left the mirror usable: a sync uploads the one change.
        let r = st.sync(&t, &mut dev).unwrap();
        assert_eq!(r.chunks, 1);
        check(&st, &dev, &t, &hs);
    }

    #[test]
    fn a_mirror_follows_one_table() {
        let a = table();
        let b = table();
        let mut st = MirrorState::new(&a).unwrap();
        let mut dev = HostTarget::default();
        assert!(matches!(
            st.sync(&b, &mut dev),
            Err(Error::InvalidArgument { name: "table", .. })
        ));
        let zst: Table<()> = Table::new();
        assert!(MirrorState::new(&zst).is_err());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64),
        InsertBatch(u8),
        Remove(usize),
        Modify(usize, u32),
        Defragment,
        Clear,
        Sync,
        KernelAndPull(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<u64>().prop_map(Op::Insert),
            1 => (1u8..40).prop_map(Op::InsertBatch),
            4 => any::<usize>().prop_map(Op::Remove),
            4 => (any::<usize>(), any::<u32>()).prop_map(|(i, v)| Op::Modify(i, v)),
            1 => Just(Op::Defragment),
            1 => Just(Op::Clear).prop_filter("rare", |_| true),
            3 => Just(Op::Sync),
            1 => any::<u32>().prop_map(Op::KernelAndPull),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random mutations between syncs and pulls: after each sync the device agrees
        /// with the host and with a HashMap model, and each incremental sync uploads
        /// exactly the chunks changed since the one before.
        #[test]
        fn syncs_keep_the_device_equal_to_the_host(ops in proptest::collection::vec(op(), 1..120)) {
            let mut t = table();
            let mut model: HashMap<Handle<Obj>, Obj> = HashMap::new();
            let mut issued: Vec<Handle<Obj>> = Vec::new();
            let mut st = MirrorState::new(&t).unwrap();
            let mut dev = HostTarget::default();
            st.sync(&t, &mut dev).unwrap();
            for op in ops {
                match op {
                    Op::Insert(x) => {
                        let h = t.insert(obj(x));
                        model.insert(h, obj(x));
                        issued.push(h);
                    }
                    Op::InsertBatch(n) => {
                        let values: Vec<Obj> = (0..u64::from(n)).map(obj).collect();
                        for (h, v) in t.insert_batch(values.clone()).into_iter().zip(values) {
                            model.insert(h, v);
                            issued.push(h);
                        }
                    }
                    Op::Remove(i) if !issued.is_empty() => {
                        let h = issued[i % issued.len()];
                        prop_assert_eq!(t.remove(h), model.remove(&h));
                    }
                    Op::Modify(i, v) if !issued.is_empty() => {
                        let h = issued[i % issued.len()];
                        if let Some(o) = t.get_mut(h) {
                            o.b = v;
                            model.get_mut(&h).unwrap().b = v;
                        }
                    }
                    Op::Defragment => {
                        t.defragment();
                    }
                    Op::Clear => {
                        t.clear();
                        model.clear();
                    }
                    Op::Sync => {
                        let expected: Vec<u32> = {
                            let since = st.synced.map_or(0, |e| e + 1);
                            t.chunks_changed_since(since).collect()
                        };
                        let r = st.sync(&t, &mut dev).unwrap();
                        prop_assert_eq!(r.chunks as usize, expected.len());
                        check(&st, &dev, &t, &issued);
                    }
                    Op::KernelAndPull(v) => {
                        st.sync(&t, &mut dev).unwrap();
                        for (h, o) in model.iter_mut() {
                            o.c = v;
                            kernel_writes(&st, &mut dev, *h, o);
                        }
                        st.pull(&mut t, &mut dev).unwrap();
                    }
                    _ => {}
                }
                for (h, o) in &model {
                    prop_assert_eq!(t.get(*h), Some(o));
                }
            }
            st.sync(&t, &mut dev).unwrap();
            check(&st, &dev, &t, &issued);
        }
    }
}
