//! The driver's [`Target`]: a mirror's device buffers, and copies staged through two
//! reused pinned host buffers.
//!
//! Uploads: queued ranges that are adjacent on the device are gathered into the current
//! staging buffer (host `memcpy`s from chunk memory, split over rayon's threads, since
//! one core copies slower than a PCIe link moves) and go up in one asynchronous copy when
//! the buffer is full or the next range is not adjacent. The other buffer is filled
//! meanwhile; before a buffer is filled again its previous copy must have finished (an
//! event recorded after it). Downloads gather adjacent device ranges the same way: one
//! copy into a staging buffer, then `memcpy`s out to each range's place in the table.
//! Staging memory is allocated with flags 0 (not write-combined: the downloads read it).

use cudarc::driver::{CudaEvent, PinnedHostSlice, sys};

use super::device::{Device, driver_error};
use super::device_pool::DeviceBuffer;
use super::mirror::{Region, Target};
use crate::error::Error;

/// Bytes of each of the two staging buffers.
const STAGE_BYTES: usize = 16 << 20;

/// Bytes one worker copies at a time: gathers and scatters of more than this are split
/// over rayon's threads, since one core's `memcpy` is slower than a PCIe link.
const COPY_SPLIT: usize = 1 << 20;

/// The copies `(from, to, len)` of moving `pieces` (address, length) to and from one
/// contiguous range at `base`, in order, cut at most `COPY_SPLIT` long. `gathering`:
/// the pieces are the sources and the range the destination; else the other way round.
fn copy_plan(
    pieces: &[(usize, usize)],
    base: usize,
    gathering: bool,
) -> Vec<(usize, usize, usize)> {
    let mut plan = Vec::with_capacity(pieces.len());
    let mut at = base;
    for &(address, len) in pieces {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_SPLIT);
            let (piece, contiguous) = (address + done, at + done);
            plan.push(if gathering {
                (piece, contiguous, n)
            } else {
                (contiguous, piece, n)
            });
            done += n;
        }
        at += len;
    }
    plan
}

/// Runs the copies of a plan, in parallel when there is more than one to do.
///
/// # Safety
/// Every `from .. from + len` is readable, every `to .. to + len` writable, and no
/// destination overlaps another copy's source or destination.
unsafe fn run_copies(plan: &[(usize, usize, usize)]) {
    use rayon::prelude::*;
    let copy = |&(from, to, len): &(usize, usize, usize)| {
        // SAFETY: per this function's contract.
        unsafe { std::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, len) }
    };
    if plan.len() > 1 {
        plan.par_iter().for_each(copy);
    } else {
        plan.iter().for_each(copy);
    }
}

/// Copies the `pieces` (address, length) back to back into `dst`.
///
/// # Safety
/// Each piece is readable; `dst` is writable for their total length and overlaps none.
pub(crate) unsafe fn gather(pieces: &[(usize, usize)], dst: *mut u8) {
    // SAFETY: the plan's copies are the pieces and disjoint parts of `dst`.
    unsafe { run_copies(&copy_plan(pieces, dst as usize, true)) }
}

/// Copies back-to-back bytes from `src` out to the `pieces` (address, length).
///
/// # Safety
/// `src` is readable for the pieces' total length; each piece is writable, and no two
/// pieces overlap each other or `src`.
pub(crate) unsafe fn scatter(src: *const u8, pieces: &[(usize, usize)]) {
    // SAFETY: the plan's copies are disjoint parts of `src` and the pieces.
    unsafe { run_copies(&copy_plan(pieces, src as usize, false)) }
}

struct Stage {
    host: PinnedHostSlice<u8>,
    /// The start of `host`, taken once.
    ptr: *mut u8,
    /// Recorded after the last copy that reads or writes this buffer.
    done: Option<CudaEvent>,
}

// SAFETY: `ptr` points into `host`, which cudarc marks Send and Sync; a stage is only
// used through `&mut Buffers`.
unsafe impl Send for Stage {}
// SAFETY: as above.
unsafe impl Sync for Stage {}

/// A mirror's device buffers and staging buffers.
#[derive(Default)]
pub(crate) struct Buffers {
    storage: Option<DeviceBuffer>,
    slots: Option<DeviceBuffer>,
    stages: Vec<Stage>,
}

impl Buffers {
    /// A target over these buffers on `device` (binding its context to this thread).
    pub(crate) fn target<'a>(&'a mut self, device: &'a Device) -> Result<DriverTarget<'a>, Error> {
        device
            .context()
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        Ok(DriverTarget {
            device,
            buffers: self,
            current: 0,
            up: None,
            down: None,
            copies: 0,
        })
    }

    pub(crate) fn buffer(&self, region: Region) -> Option<&DeviceBuffer> {
        match region {
            Region::Storage => self.storage.as_ref(),
            Region::Slots => self.slots.as_ref(),
        }
    }

    /// The device address of `region`'s buffer (0 while there is none).
    pub(crate) fn address(&self, region: Region) -> u64 {
        self.buffer(region).map_or(0, DeviceBuffer::address)
    }

    /// Bytes of `region`'s buffer.
    pub(crate) fn capacity_of(&self, region: Region) -> u64 {
        self.buffer(region).map_or(0, DeviceBuffer::len)
    }
}

/// A copy being gathered: one device range of at most a stage, and the host `pieces`
/// (address, length) it comes from (an upload: gathered into the stage when flushed) or
/// goes to (a download: scattered from the stage after its copy).
struct Run {
    address: u64,
    len: usize,
    pieces: Vec<(usize, usize)>,
}

/// Which way a run copies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Up,
    Down,
}

/// The driver's target for one sync or pull.
pub(crate) struct DriverTarget<'a> {
    device: &'a Device,
    buffers: &'a mut Buffers,
    current: usize,
    up: Option<Run>,
    down: Option<Run>,
    copies: u32,
}

impl DriverTarget<'_> {
    fn stream(&self) -> sys::CUstream {
        self.device.stream().cu_stream()
    }

    /// The current stage, allocated on first use and free of earlier copies.
    fn stage(&mut self) -> Result<*mut u8, Error> {
        while self.buffers.stages.len() < 2 {
            // SAFETY: the pinned memory's contents are only read after a copy or a
            // `memcpy` wrote them.
            let mut host = unsafe {
                self.device
                    .context()
                    .alloc_pinned_with_flags::<u8>(STAGE_BYTES, 0)
            }
            .map_err(|e| driver_error("cuMemHostAlloc", e))?;
            let ptr = host
                .as_mut_ptr()
                .map_err(|e| driver_error("cuEventSynchronize", e))?;
            self.buffers.stages.push(Stage {
                host,
                ptr,
                done: None,
            });
        }
        let stage = &mut self.buffers.stages[self.current];
        if let Some(done) = stage.done.take() {
            done.synchronize()
                .map_err(|e| driver_error("cuEventSynchronize", e))?;
        }
        debug_assert_eq!(stage.host.len(), STAGE_BYTES);
        Ok(stage.ptr)
    }

    /// Records an event after the copy just queued from or to the current stage, and
    /// moves on to the other one.
    fn rotate(&mut self) -> Result<(), Error> {
        let done = self
            .device
            .stream()
            .record_event(None)
            .map_err(|e| driver_error("cuEventRecord", e))?;
        self.buffers.stages[self.current].done = Some(done);
        self.current ^= 1;
        self.copies += 1;
        Ok(())
    }

    fn flush_up(&mut self) -> Result<(), Error> {
        let Some(run) = self.up.take() else {
            return Ok(());
        };
        if run.len == 0 {
            return Ok(());
        }
        let src = self.stage()?;
        // SAFETY: the pieces are readable (the `put` contract: until `finish`) and add up
        // to `run.len <= STAGE_BYTES` bytes; no copy uses the stage (waited in `stage`).
        unsafe { gather(&run.pieces, src) };
        // SAFETY: the stage holds `run.len` bytes gathered for this run; the device range
        // lies inside a buffer of this mirror (checked when queued); the stage is not
        // written again before the event recorded in `rotate` completes.
        unsafe { sys::cuMemcpyHtoDAsync_v2(run.address, src.cast(), run.len, self.stream()) }
            .result()
            .map_err(|e| driver_error("cuMemcpyHtoDAsync", e))?;
        self.rotate()
    }

    fn flush_down(&mut self) -> Result<(), Error> {
        let Some(run) = self.down.take() else {
            return Ok(());
        };
        let stage = self.stage()?;
        // SAFETY: the stage holds STAGE_BYTES >= run.len bytes and no copy uses it (just
        // waited); the device range lies inside a buffer of this mirror.
        unsafe { sys::cuMemcpyDtoHAsync_v2(stage.cast(), run.address, run.len, self.stream()) }
            .result()
            .map_err(|e| driver_error("cuMemcpyDtoHAsync", e))?;
        self.device.synchronize()?;
        // SAFETY: the copy above finished, so the stage holds the run's bytes; each piece
        // is writable (the `get` contract) and does not overlap the pinned stage.
        unsafe { scatter(stage, &run.pieces) };
        self.copies += 1;
        Ok(())
    }

    /// Adds `len` bytes between device `address` and host `host` to the run going
    /// `way`, starting a new run (after flushing the old one) whenever the range does
    /// not continue it or the run fills a stage.
    fn queue(
        &mut self,
        way: Way,
        mut address: u64,
        mut host: usize,
        mut len: usize,
    ) -> Result<(), Error> {
        while len > 0 {
            let run = match way {
                Way::Up => &self.up,
                Way::Down => &self.down,
            };
            let continues = run
                .as_ref()
                .is_some_and(|r| r.address + r.len as u64 == address && r.len < STAGE_BYTES);
            if !continues {
                match way {
                    Way::Up => self.flush_up()?,
                    Way::Down => self.flush_down()?,
                }
            }
            let run = match way {
                Way::Up => &mut self.up,
                Way::Down => &mut self.down,
            };
            let run = run.get_or_insert_with(|| Run {
                address,
                len: 0,
                pieces: Vec::new(),
            });
            let n = len.min(STAGE_BYTES - run.len);
            run.pieces.push((host, n));
            run.len += n;
            address += n as u64;
            host += n;
            len -= n;
        }
        Ok(())
    }

    fn device_range(&self, region: Region, offset: u64, len: usize) -> Result<u64, Error> {
        let buffer = self.buffers.buffer(region).ok_or_else(|| {
            Error::invalid_argument("offset", "the mirror has no device buffer for this yet")
        })?;
        buffer.check_range(offset, len)?;
        Ok(buffer.address() + offset)
    }
}

impl Target for DriverTarget<'_> {
    fn capacity(&self, region: Region) -> u64 {
        self.buffers.capacity_of(region)
    }

    fn grow(&mut self, region: Region, bytes: u64) -> Result<(), Error> {
        self.flush_up()?;
        self.flush_down()?;
        let fresh = self.device.pool().allocate(bytes)?;
        let slot = match region {
            Region::Storage => &mut self.buffers.storage,
            Region::Slots => &mut self.buffers.slots,
        };
        if let Some(old) = slot.as_ref() {
            let keep = old.len().min(fresh.len()) as usize;
            // SAFETY: both ranges lie in live buffers of this mirror's pool; the copy is
            // queued on the device's stream, before any later use of either range (the
            // old block is reused only by work queued after it on the same stream).
            unsafe {
                sys::cuMemcpyDtoDAsync_v2(
                    fresh.address(),
                    old.address(),
                    keep,
                    self.device.stream().cu_stream(),
                )
            }
            .result()
            .map_err(|e| driver_error("cuMemcpyDtoDAsync", e))?;
        }
        *slot = Some(fresh);
        Ok(())
    }

    unsafe fn put(
        &mut self,
        region: Region,
        offset: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), Error> {
        self.flush_down()?;
        let address = self.device_range(region, offset, len)?;
        self.queue(Way::Up, address, src as usize, len)
    }

    unsafe fn get(
        &mut self,
        region: Region,
        offset: u64,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), Error> {
        self.flush_up()?;
        let address = self.device_range(region, offset, len)?;
        self.queue(Way::Down, address, dst as usize, len)
    }

    fn finish(&mut self) -> Result<u32, Error> {
        self.flush_up()?;
        self.flush_down()?;
        self.device.synchronize()?;
        Ok(std::mem::take(&mut self.copies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_and_scatter_move_every_piece_in_order() {
        // Pieces of every size around the split, from and to separate host buffers.
        let sizes = [
            1usize,
            7,
            COPY_SPLIT - 1,
            COPY_SPLIT,
            COPY_SPLIT + 3,
            2 * COPY_SPLIT + 5,
            0,
            64,
        ];
        let sources: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| (i * 31 + k * 7) as u8).collect())
            .collect();
        let pieces: Vec<(usize, usize)> = sources
            .iter()
            .map(|v| (v.as_ptr() as usize, v.len()))
            .collect();
        let total: usize = sizes.iter().sum();
        let mut stage = vec![0u8; total];
        // SAFETY: the sources are live and readable; the stage holds `total` bytes.
        unsafe { gather(&pieces, stage.as_mut_ptr()) };
        assert_eq!(stage, sources.concat());

        let mut targets: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
        let out: Vec<(usize, usize)> = targets
            .iter_mut()
            .map(|v| (v.as_mut_ptr() as usize, v.len()))
            .collect();
        // SAFETY: the stage holds `total` bytes; the targets are live, writable, disjoint.
        unsafe { scatter(stage.as_ptr(), &out) };
        assert_eq!(targets, sources);
    }
}
