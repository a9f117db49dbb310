//! Device memory: arenas from the driver, sub-allocated with the pool layer's buddy
//! allocator over offsets.
//!
//! An arena is one `cuMemAlloc` of [`DevicePoolConfig::arena_bytes`]; requests of at most
//! half an arena are served by the arena's [`BuddyAllocator`], larger ones get an arena
//! of their own. An arena that becomes empty goes back to the driver once more than
//! [`DevicePoolConfig::retain_empty`] arenas are empty. The bookkeeping ([`ArenaSet`]) is
//! written over an abstract memory source, so it is tested on machines without a GPU.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, sys};
use parking_lot::Mutex;

use super::device::driver_error;
use crate::error::{Error, OomReason};
use crate::pool::BuddyAllocator;

/// How a [`DevicePool`] takes and splits device memory.
///
/// ```
/// use neurostore::cuda::DevicePoolConfig;
///
/// let config = DevicePoolConfig { arena_bytes: 64 << 20, ..DevicePoolConfig::default() };
/// assert!(config.validate().is_ok());
/// let bad = DevicePoolConfig { arena_bytes: 3 << 20, ..DevicePoolConfig::default() };
/// assert!(bad.validate().is_err()); // not a power of two
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePoolConfig {
    /// Bytes of one arena (a power of two, at least `min_block`). Default 256 MiB.
    pub arena_bytes: u64,
    /// The smallest block, and the alignment of every block (a power of two, at least
    /// 256: CUDA's own allocation alignment). Default 256.
    pub min_block: u64,
    /// Empty arenas kept for reuse instead of going back to the driver. Default 1.
    pub retain_empty: usize,
    /// Where the arenas live: device memory (the default), or managed (unified) memory.
    pub memory: DeviceMemory,
}

impl Default for DevicePoolConfig {
    fn default() -> Self {
        DevicePoolConfig {
            arena_bytes: 256 << 20,
            min_block: 256,
            retain_empty: 1,
            memory: DeviceMemory::Device,
        }
    }
}

/// The kind of memory a [`DevicePool`] takes from the driver.
///
/// ```
/// use neurostore::cuda::{DeviceMemory, DevicePoolConfig};
///
/// // For tables larger than the GPU's memory: the driver pages managed memory between
/// // host and device on demand, and the host can read and write it directly.
/// let config = DevicePoolConfig { memory: DeviceMemory::Managed, ..DevicePoolConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceMemory {
    /// `cuMemAlloc`: memory on the device only, reached from the host by copies.
    #[default]
    Device,
    /// `cuMemAllocManaged` (attached globally): one address space for host and device,
    /// migrated page by page by the driver, so a pool may hold more than the GPU's memory
    /// and the host can use a buffer in place ([`DeviceBuffer::host_bytes`]).
    Managed,
}

impl DevicePoolConfig {
    /// Checks the sizes; the error names the field that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.min_block.is_power_of_two() || self.min_block < 256 {
            return Err(Error::invalid_argument(
                "min_block",
                format!("{} is not a power of two of at least 256", self.min_block),
            ));
        }
        if !self.arena_bytes.is_power_of_two() || self.arena_bytes < self.min_block {
            return Err(Error::invalid_argument(
                "arena_bytes",
                format!(
                    "{} is not a power of two of at least min_block ({})",
                    self.arena_bytes, self.min_block
                ),
            ));
        }
        if self.arena_bytes / self.min_block > 1 << 31 {
            return Err(Error::invalid_argument(
                "arena_bytes",
                format!(
                    "{} holds more than 2^31 blocks of min_block ({})",
                    self.arena_bytes, self.min_block
                ),
            ));
        }
        Ok(())
    }
}

/// Figures of a [`DevicePool`], like the host pool's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DevicePoolStats {
    /// Bytes taken from the driver (all arenas).
    pub reserved_bytes: u64,
    /// Bytes in blocks handed out (block sizes: a buddy block is a power of two).
    pub in_use_bytes: u64,
    /// Bytes asked for by the blocks handed out.
    pub requested_bytes: u64,
    /// The highest `in_use_bytes` seen.
    pub peak_in_use_bytes: u64,
    /// Blocks handed out since the pool was made.
    pub allocations: u64,
    /// Blocks given back since the pool was made.
    pub deallocations: u64,
    /// Arenas held (shared and dedicated).
    pub arenas: usize,
    /// `1 - in_use / reserved` (0 when nothing is reserved).
    pub fragmentation: f64,
}

/// Where arenas come from: the driver, or a test's stand-in.
pub(crate) trait ArenaMemory {
    /// `bytes` of device memory aligned to at least 256; its device address.
    fn map(&mut self, bytes: u64) -> Result<u64, Error>;
    /// Gives back what `map` returned.
    fn unmap(&mut self, address: u64, bytes: u64);
}

struct Arena {
    address: u64,
    bytes: u64,
    /// `None` for an arena made for one large block.
    buddy: Option<BuddyAllocator>,
}

/// A block of device memory from an [`ArenaSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    arena: u32,
    offset: u64,
    /// Bytes of the block (at least what was asked for).
    size: u64,
    requested: u64,
    /// The block's device address.
    pub(crate) address: u64,
}

/// The arenas of a device pool and their buddy allocators.
pub(crate) struct ArenaSet<M: ArenaMemory> {
    memory: M,
    config: DevicePoolConfig,
    arenas: Vec<Option<Arena>>,
    empty: usize,
    stats: DevicePoolStats,
}

impl<M: ArenaMemory> ArenaSet<M> {
    pub(crate) fn new(memory: M, config: DevicePoolConfig) -> Self {
        ArenaSet {
            memory,
            config,
            arenas: Vec::new(),
            empty: 0,
            stats: DevicePoolStats::default(),
        }
    }

    /// A block of at least `bytes` bytes, aligned to `min_block`.
    pub(crate) fn allocate(&mut self, bytes: u64) -> Result<Block, Error> {
        if bytes == 0 {
            return Err(Error::invalid_argument(
                "bytes",
                "a device block must hold at least one byte",
            ));
        }
        let block = if bytes > self.config.arena_bytes / 2 {
            self.allocate_alone(bytes)?
        } else {
            self.allocate_in_arena(bytes)?
        };
        let s = &mut self.stats;
        s.allocations += 1;
        s.in_use_bytes += block.size;
        s.requested_bytes += block.requested;
        s.peak_in_use_bytes = s.peak_in_use_bytes.max(s.in_use_bytes);
        Ok(block)
    }

    /// A block of `bytes` (more than half an arena) in a mapping of its own.
    fn allocate_alone(&mut self, bytes: u64) -> Result<Block, Error> {
        let size = bytes
            .checked_next_multiple_of(self.config.min_block)
            .ok_or_else(|| Error::OutOfMemory {
                requested: usize::try_from(bytes).unwrap_or(usize::MAX),
                align: 256,
                reason: OomReason::LayoutTooLarge,
            })?;
        let address = self.memory.map(size)?;
        let arena = self.install(Arena {
            address,
            bytes: size,
            buddy: None,
        });
        Ok(Block {
            arena,
            offset: 0,
            size,
            requested: bytes,
            address,
        })
    }

    /// A block of `bytes` from the first arena with room, or from a new arena.
    fn allocate_in_arena(&mut self, bytes: u64) -> Result<Block, Error> {
        let min = self.config.min_block;
        let found = self.arenas.iter_mut().enumerate().find_map(|(i, a)| {
            let a = a.as_mut()?;
            let buddy = a.buddy.as_mut()?;
            let was_empty = buddy.is_empty();
            let offset = buddy.allocate(bytes, min)?;
            let size = buddy.block_size(offset).expect("just allocated");
            Some((i as u32, was_empty, offset, size, a.address))
        });
        let (arena, was_empty, offset, size, base) = match found {
            Some(f) => f,
            None => self.new_arena_for(bytes)?,
        };
        if was_empty {
            self.empty -= 1;
        }
        Ok(Block {
            arena,
            offset,
            size,
            requested: bytes,
            address: base + offset,
        })
    }

    /// A new arena with `bytes` taken from it: its index, `false` (it was not an empty
    /// arena counted as such), the block's offset and size, and the arena's address.
    fn new_arena_for(&mut self, bytes: u64) -> Result<(u32, bool, u64, u64, u64), Error> {
        let (arena_bytes, min) = (self.config.arena_bytes, self.config.min_block);
        // Map after the bookkeeping: the geometry was validated with the config, so only
        // the host allocation of the bookkeeping can fail.
        let mut buddy = BuddyAllocator::new(arena_bytes, min).map_err(|_| Error::OutOfMemory {
            requested: bytes as usize,
            align: min as usize,
            reason: OomReason::OsRefused,
        })?;
        let address = self.memory.map(arena_bytes)?;
        let offset = buddy.allocate(bytes, min).expect("a fresh arena holds it");
        let size = buddy.block_size(offset).expect("just allocated");
        let i = self.install(Arena {
            address,
            bytes: arena_bytes,
            buddy: Some(buddy),
        });
        Ok((i, false, offset, size, address))
    }

    fn install(&mut self, arena: Arena) -> u32 {
        self.stats.reserved_bytes += arena.bytes;
        self.stats.arenas += 1;
        match self.arenas.iter().position(Option::is_none) {
            Some(i) => {
                self.arenas[i] = Some(arena);
                i as u32
            }
            None => {
                self.arenas.push(Some(arena));
                (self.arenas.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(a) = self.arenas[i].take() {
            self.memory.unmap(a.address, a.bytes);
            self.stats.reserved_bytes -= a.bytes;
            self.stats.arenas -= 1;
        }
    }

    /// Gives `block` back. A block this set did not hand out (or gave back already) is
    /// refused and changes nothing.
    pub(crate) fn deallocate(&mut self, block: Block) -> Result<(), Error> {
        let foreign = || Error::ForeignPointer {
            address: usize::try_from(block.address).unwrap_or(usize::MAX),
        };
        let arena = self
            .arenas
            .get_mut(block.arena as usize)
            .and_then(Option::as_mut)
            .ok_or_else(foreign)?;
        if block.address != arena.address + block.offset {
            return Err(foreign());
        }
        match arena.buddy.as_mut() {
            None => {
                if block.offset != 0 || block.size != arena.bytes {
                    return Err(foreign());
                }
                self.remove(block.arena as usize);
            }
            Some(buddy) => {
                if buddy.block_size(block.offset) != Some(block.size) {
                    return Err(foreign());
                }
                buddy.deallocate(block.offset).map_err(|_| foreign())?;
                if buddy.is_empty() {
                    self.empty += 1;
                    if self.empty > self.config.retain_empty {
                        self.empty -= 1;
                        self.remove(block.arena as usize);
                    }
                }
            }
        }
        let s = &mut self.stats;
        s.deallocations += 1;
        s.in_use_bytes -= block.size;
        s.requested_bytes -= block.requested;
        Ok(())
    }

    pub(crate) fn stats(&self) -> DevicePoolStats {
        let mut s = self.stats.clone();
        s.fragmentation = if s.reserved_bytes == 0 {
            0.0
        } else {
            1.0 - s.in_use_bytes as f64 / s.reserved_bytes as f64
        };
        s
    }
}

impl<M: ArenaMemory> Drop for ArenaSet<M> {
    fn drop(&mut self) {
        for i in 0..self.arenas.len() {
            self.remove(i);
        }
    }
}

/// Device memory from the driver, in the context of one device.
pub(crate) struct DriverMemory {
    context: Arc<CudaContext>,
    kind: DeviceMemory,
}

impl ArenaMemory for DriverMemory {
    fn map(&mut self, bytes: u64) -> Result<u64, Error> {
        self.context
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        let size = usize::try_from(bytes).map_err(|_| Error::OutOfMemory {
            requested: usize::MAX,
            align: 256,
            reason: OomReason::LayoutTooLarge,
        })?;
        let (allocated, call) = match self.kind {
            // SAFETY: the context is current on this thread; the memory is only reached
            // through the blocks this pool hands out.
            DeviceMemory::Device => (
                unsafe { cudarc::driver::result::malloc_sync(size) },
                "cuMemAlloc",
            ),
            // SAFETY: as above; managed memory is freed with cuMemFree as well.
            DeviceMemory::Managed => (
                unsafe {
                    cudarc::driver::result::malloc_managed(
                        size,
                        sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL,
                    )
                },
                "cuMemAllocManaged",
            ),
        };
        allocated.map_err(|e| {
            if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                Error::OutOfMemory {
                    requested: size,
                    align: 256,
                    reason: OomReason::DeviceRefused,
                }
            } else {
                driver_error(call, e)
            }
        })
    }

    fn unmap(&mut self, address: u64, _bytes: u64) {
        if self.context.bind_to_thread().is_ok() {
            // SAFETY: `address` came from `malloc_sync` in this context, and every block
            // in it is gone: nothing reaches this memory any more. cuMemFree waits for
            // work queued on it.
            let freed = unsafe { cudarc::driver::result::free_sync(address) };
            self.context.record_err(freed);
        }
    }
}

/// A pool of device memory on one GPU: arenas from the driver split by the buddy
/// allocator of the pool layer (the GPU pool of the design). Cloning shares the pool.
///
/// Every block is aligned to [`DevicePoolConfig::min_block`] (at least 256 bytes). Copies
/// go through the device's stream, as do neurostore's own uploads and downloads, so a
/// block given back and handed out again is ordered after the work that used it.
#[derive(Clone)]
pub struct DevicePool {
    shared: Arc<PoolShared>,
}

struct PoolShared {
    memory: DeviceMemory,
    arenas: Mutex<ArenaSet<DriverMemory>>,
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for DevicePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl DevicePool {
    pub(crate) fn new(
        context: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        config: DevicePoolConfig,
    ) -> Self {
        DevicePool {
            shared: Arc::new(PoolShared {
                memory: config.memory,
                arenas: Mutex::new(ArenaSet::new(
                    DriverMemory {
                        context,
                        kind: config.memory,
                    },
                    config,
                )),
                stream,
            }),
        }
    }

    /// A buffer of at least `bytes` bytes of device memory (contents undefined).
    pub fn allocate(&self, bytes: u64) -> Result<DeviceBuffer, Error> {
        let block = self.shared.arenas.lock().allocate(bytes)?;
        Ok(DeviceBuffer {
            pool: self.clone(),
            block,
        })
    }

    /// The kind of memory the pool's arenas are.
    pub fn memory(&self) -> DeviceMemory {
        self.shared.memory
    }

    /// The ordinal of the device this pool's memory is on.
    pub fn ordinal(&self) -> usize {
        self.shared.stream.context().ordinal()
    }

    /// The stream this pool's copies are queued on (the device's).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.shared.stream
    }

    /// The pool's figures.
    pub fn stats(&self) -> DevicePoolStats {
        self.shared.arenas.lock().stats()
    }

    /// Copies `src` into `buffer` at byte `offset`, and waits until the copy is done.
    pub fn upload<T: bytemuck::Pod>(
        &self,
        buffer: &DeviceBuffer,
        offset: u64,
        src: &[T],
    ) -> Result<(), Error> {
        let bytes: &[u8] = bytemuck::cast_slice(src);
        self.copy(
            buffer,
            offset,
            bytes.len(),
            "cuMemcpyHtoDAsync",
            |at, stream| {
                // SAFETY: `copy` checked that the range lies inside the buffer, which this
                // pool owns until it is dropped; `src` stays borrowed until the stream has
                // finished (`copy` waits).
                unsafe { cudarc::driver::result::memcpy_htod_async(at, bytes, stream) }
            },
        )
    }

    /// Copies from `buffer` at byte `offset` into `dst`, and waits until the copy is done.
    pub fn download<T: bytemuck::Pod>(
        &self,
        buffer: &DeviceBuffer,
        offset: u64,
        dst: &mut [T],
    ) -> Result<(), Error> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        let len = bytes.len();
        self.copy(buffer, offset, len, "cuMemcpyDtoHAsync", |at, stream| {
            // SAFETY: as in `upload`; `dst` stays borrowed until the stream has finished.
            unsafe { cudarc::driver::result::memcpy_dtoh_async(bytes, at, stream) }
        })
    }

    /// Checks that `len` bytes at `offset` fit `buffer`, makes the context current,
    /// queues `op` with the range's device address on the stream, and waits for it.
    fn copy(
        &self,
        buffer: &DeviceBuffer,
        offset: u64,
        len: usize,
        operation: &'static str,
        op: impl FnOnce(u64, sys::CUstream) -> Result<(), cudarc::driver::DriverError>,
    ) -> Result<(), Error> {
        buffer.check_range(offset, len)?;
        let stream = &self.shared.stream;
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        op(buffer.address() + offset, stream.cu_stream())
            .map_err(|e| driver_error(operation, e))?;
        stream
            .synchronize()
            .map_err(|e| driver_error("cuStreamSynchronize", e))
    }
}

/// A block of device memory from a [`DevicePool`], given back when dropped.
pub struct DeviceBuffer {
    pool: DevicePool,
    block: Block,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("address", &format_args!("{:#x}", self.block.address))
            .field("len", &self.block.requested)
            .finish()
    }
}

impl DeviceBuffer {
    /// The device address of the first byte (for kernel arguments).
    pub fn address(&self) -> u64 {
        self.block.address
    }

    /// The bytes asked for.
    pub fn len(&self) -> u64 {
        self.block.requested
    }

    /// Always false: a buffer holds at least one byte.
    pub fn is_empty(&self) -> bool {
        self.block.requested == 0
    }

    /// The bytes of this buffer of a managed pool, in place on the host: the device is
    /// synchronized first (no work queued before this call still runs), and the driver
    /// moves the pages the host touches. The exclusive borrow of the buffer keeps
    /// neurostore's own copies off it meanwhile; kernels launched on the buffer's address
    /// by the caller must not run while the slice lives.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a pool of device memory (use
    /// [`DevicePool::download`] / [`DevicePool::upload`] there); a driver error if
    /// synchronizing fails.
    pub fn host_bytes(&mut self) -> Result<&mut [u8], Error> {
        if self.pool.shared.memory != DeviceMemory::Managed {
            return Err(Error::invalid_argument(
                "buffer",
                "only a buffer of a managed pool (DeviceMemory::Managed) can be used in place on the host",
            ));
        }
        let context = self.pool.shared.stream.context();
        context
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        context
            .synchronize()
            .map_err(|e| driver_error("cuCtxSynchronize", e))?;
        let len = usize::try_from(self.len()).expect("a mapped buffer fits the address space");
        // SAFETY: managed memory attached globally is addressable from the host at its
        // device address; the buffer owns `len` bytes there until it is dropped, the
        // exclusive borrow of `buffer` makes this the only reference neurostore hands
        // out, and the context was synchronized above, so no queued work touches it.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.address() as *mut u8, len) })
    }

    /// `InvalidArgument` unless `offset .. offset + len` lies inside the buffer.
    pub(crate) fn check_range(&self, offset: u64, len: usize) -> Result<(), Error> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::invalid_argument(
                "offset",
                format!(
                    "{len} bytes at offset {offset} do not fit in a device buffer of {} bytes",
                    self.len()
                ),
            )),
        }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let refused = self.pool.shared.arenas.lock().deallocate(self.block);
        debug_assert!(refused.is_ok(), "a buffer's block is the pool's");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses without memory behind them: the bookkeeping alone.
    #[derive(Default)]
    struct FakeMemory {
        next: u64,
        mapped: Vec<(u64, u64)>,
        refuse_after: Option<usize>,
    }

    impl ArenaMemory for FakeMemory {
        fn map(&mut self, bytes: u64) -> Result<u64, Error> {
            if self.refuse_after.is_some_and(|n| self.mapped.len() >= n) {
                return Err(Error::OutOfMemory {
                    requested: bytes as usize,
                    align: 256,
                    reason: OomReason::DeviceRefused,
                });
            }
            let address = 0x7000_0000_0000 + self.next;
            self.next += bytes.next_multiple_of(1 << 20);
            self.mapped.push((address, bytes));
            Ok(address)
        }
        fn unmap(&mut self, address: u64, bytes: u64) {
            let i = self
                .mapped
                .iter()
                .position(|&m| m == (address, bytes))
                .expect("unmap of a mapping");
            self.mapped.remove(i);
        }
    }

    fn config(arena_bytes: u64) -> DevicePoolConfig {
        DevicePoolConfig {
            arena_bytes,
            min_block: 256,
            retain_empty: 1,
            memory: DeviceMemory::Device,
        }
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_inside_their_arenas() {
        let mut set = ArenaSet::new(FakeMemory::default(), config(1 << 20));
        let mut blocks = Vec::new();
        for (i, bytes) in [1u64, 300, 4096, 100_000, 524_288, 3_000_000, 256, 7]
            .into_iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            let b = set.allocate(bytes + i as u64).unwrap();
            assert_eq!(b.address % 256, 0);
            assert!(b.size >= bytes + i as u64);
            blocks.push(b);
        }
        let mut spans: Vec<(u64, u64)> = blocks.iter().map(|b| (b.address, b.size)).collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:?} overlap");
        }
        let st = set.stats();
        assert_eq!(st.allocations, 40);
        assert_eq!(st.in_use_bytes, blocks.iter().map(|b| b.size).sum::<u64>());
        assert!(st.reserved_bytes >= st.in_use_bytes);
        assert_eq!(st.arenas, set.memory.mapped.len());
        for b in blocks {
            set.deallocate(b).unwrap();
        }
        let st = set.stats();
        assert_eq!((st.in_use_bytes, st.requested_bytes), (0, 0));
        // One empty arena is retained; the others went back.
        assert_eq!(set.memory.mapped.len(), 1);
        assert_eq!(st.reserved_bytes, 1 << 20);
    }

    #[test]
    fn a_large_block_gets_its_own_arena_and_gives_it_back() {
        let mut set = ArenaSet::new(FakeMemory::default(), config(1 << 20));
        let big = set.allocate(5 << 20).unwrap();
        assert_eq!(set.stats().reserved_bytes, 5 << 20);
        set.deallocate(big).unwrap();
        assert_eq!(set.stats().reserved_bytes, 0);
        assert!(set.memory.mapped.is_empty());
    }

    #[test]
    fn foreign_and_double_frees_are_refused_and_change_nothing() {
        let mut set = ArenaSet::new(FakeMemory::default(), config(1 << 20));
        let a = set.allocate(1000).unwrap();
        let b = set.allocate(1000).unwrap();
        let before = set.stats();
        let mut moved = a;
        moved.address += 256;
        assert!(set.deallocate(moved).is_err());
        let mut other_arena = a;
        other_arena.arena = 9;
        assert!(set.deallocate(other_arena).is_err());
        assert_eq!(set.stats(), before);
        set.deallocate(a).unwrap();
        assert!(matches!(
            set.deallocate(a),
            Err(Error::ForeignPointer { .. })
        ));
        set.deallocate(b).unwrap();
        assert_eq!(set.stats().in_use_bytes, 0);
    }

    #[test]
    fn a_refused_arena_is_out_of_memory_and_changes_nothing() {
        let memory = FakeMemory {
            refuse_after: Some(1),
            ..FakeMemory::default()
        };
        let mut set = ArenaSet::new(memory, config(1 << 20));
        let a = set.allocate(600 << 10).unwrap();
        let before = set.stats();
        let err = set.allocate(600 << 10).unwrap_err();
        assert!(matches!(
            err,
            Error::OutOfMemory {
                reason: OomReason::DeviceRefused,
                ..
            }
        ));
        assert_eq!(set.stats(), before);
        set.deallocate(a).unwrap();
    }

    #[test]
    fn zero_bytes_and_bad_configs_are_invalid_arguments() {
        let mut set = ArenaSet::new(FakeMemory::default(), config(1 << 20));
        assert!(matches!(
            set.allocate(0),
            Err(Error::InvalidArgument { name: "bytes", .. })
        ));
        for (arena_bytes, min_block, field) in [
            (3 << 20, 256, "arena_bytes"),
            (1 << 20, 100, "min_block"),
            (1 << 20, 128, "min_block"),
            (128, 256, "arena_bytes"),
        ] {
            let c = DevicePoolConfig {
                arena_bytes,
                min_block,
                retain_empty: 0,
                memory: DeviceMemory::Managed,
            };
            assert!(
                matches!(c.validate(), Err(Error::InvalidArgument { name, .. }) if name == field),
                "{c:?}"
            );
        }
    }
}
