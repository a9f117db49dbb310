//! Layer 9, **cuda** (cargo feature `cuda`, on by default): tables mirrored on NVIDIA GPUs.
//!
//! What this layer owns:
//! - [`Device`]: an opened GPU, its stream, and its [`DevicePool`] (device memory in
//!   arenas split by the pool layer's [`BuddyAllocator`](crate::pool::BuddyAllocator)).
//! - [`DeviceMirror<T>`]: a device copy of a `Table<T>` of `Pod` objects and of its slot
//!   table, made by [`DeviceMirror::new`]. [`sync`](DeviceMirror::sync)
//!   uploads the chunks changed since the last sync (adjacent ones in one copy, through
//!   reused pinned staging buffers), [`pull`](DeviceMirror::pull) downloads what kernels
//!   wrote.
//! - [`HEADER`] (`include/neurostore.cuh`): `ns_resolve`, which resolves a handle on the
//!   device exactly as `Table::get` does on the host ([`resolve_place`] is its host twin);
//!   [`Device::compile`] prepends it to kernels compiled with NVRTC.
//! - [`DevicePoolRegistry`]: device pools by name in the host pools' registry.
//! - [`GpuNetwork`]: `NeuralGraph::step` on the device, over mirrored neuron and synapse
//!   tables, with the CPU step's spikes and state bit for bit.
//!
//! Invariants kept here:
//! - no entry point panics without a GPU: cudarc loads libcuda and NVRTC at run time and
//!   panics when they are missing, so [`probe`] checks for them first and every call
//!   into the driver that could still panic is caught; all of it ends in
//!   [`Error::CudaUnavailable`](crate::Error::CudaUnavailable);
//! - after a sync the device holds every chunk's bytes as the host had them and the
//!   slot table of the host, so a handle resolves on the device iff it resolves on the
//!   host, to an object with the same bytes;
//! - a sync moves only chunks stamped after the previous sync (the table's epoch
//!   advances at each sync), and the slot table only when a slot changed since;
//! - the device step adds each neuron's input in the order the CPU step does and rounds
//!   every float operation as Rust does (no fused multiply-add), so it cannot drift;
//! - unsafe code (raw copies between chunk memory, pinned memory and device memory) is
//!   confined to this layer and the table's internals.
//!
//! Without a GPU, everything here still builds, and every entry point returns
//! `CudaUnavailable`; the sync logic is tested against host memory, the step's algorithm
//! on the CPU against `NeuralGraph::step`, and the kernels compile with NVRTC wherever it
//! can be loaded.

mod device;
mod device_pool;
mod mirror;
mod neural;
mod registry;
mod slots;
mod staging;

pub use device::{Device, probe};
pub use device_pool::{DeviceBuffer, DeviceMemory, DevicePool, DevicePoolConfig, DevicePoolStats};
pub use mirror::{DeviceMirror, MirrorView, PullReport, SyncReport};
pub use neural::GpuNetwork;
pub use registry::DevicePoolRegistry;
pub use slots::{DeviceSlot, HEADER, resolve_place};

/// cudarc, as this crate uses it (for launching kernels on [`Device::stream`]).
pub use cudarc;
