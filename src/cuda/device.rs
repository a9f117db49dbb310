//! Opening a GPU without ever panicking when there is none.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, CudaStream, DriverError, sys};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use super::device_pool::{DevicePool, DevicePoolConfig};
use crate::error::Error;

/// Maps a driver error: the codes that mean "no usable GPU here" become
/// [`Error::CudaUnavailable`], the rest [`Error::Cuda`].
pub(crate) fn driver_error(operation: &'static str, e: DriverError) -> Error {
    use sys::cudaError_enum as E;
    let message = e.to_string();
    match e.0 {
        E::CUDA_ERROR_NO_DEVICE
        | E::CUDA_ERROR_INVALID_DEVICE
        | E::CUDA_ERROR_NOT_INITIALIZED
        | E::CUDA_ERROR_DEINITIALIZED
        | E::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
        | E::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => Error::CudaUnavailable {
            reason: format!("{operation}: {message}"),
        },
        _ => Error::Cuda { operation, message },
    }
}

/// Runs a cudarc call that may panic (cudarc panics when a driver symbol it expects is
/// missing, as with a driver older than the CUDA version the crate was built for), and
/// turns a panic into [`Error::CudaUnavailable`].
pub(crate) fn guarded<R>(
    operation: &'static str,
    f: impl FnOnce() -> Result<R, Error>,
) -> Result<R, Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the CUDA bindings panicked");
            Err(Error::CudaUnavailable {
                reason: format!("{operation}: {what}"),
            })
        }
    }
}

/// Checks that the CUDA driver library and NVRTC can be loaded; cudarc panics on first
/// use of a library it cannot load, so every entry point asks this first.
///
/// ```
/// // On a machine without CUDA this is an error that says what is missing.
/// match neurostore::cuda::probe() {
///     Ok(()) => println!("CUDA driver and NVRTC found"),
///     Err(e) => println!("{e}"),
/// }
/// ```
pub fn probe() -> Result<(), Error> {
    // SAFETY: `is_culib_present` only tries to open the library by its usual names and
    // closes it again; it has no precondition.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::CudaUnavailable {
            reason: "the CUDA driver library (libcuda.so) cannot be loaded: no NVIDIA driver \
                     is installed, or it is not on the library path"
                .into(),
        });
    }
    // SAFETY: as above, for the NVRTC library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::CudaUnavailable {
            reason: "the NVRTC library (libnvrtc.so) cannot be loaded: install the CUDA \
                     toolkit's runtime compiler, or put it on the library path"
                .into(),
        });
    }
    Ok(())
}

/// Compiles `source` with [`HEADER`](super::HEADER) prepended to PTX for `arch`
/// (`compute_90`) with NVRTC, without fused multiply-adds: kernels that must agree with
/// the CPU bit for bit round every multiply and add on their own.
pub(crate) fn compile_ptx(name: &str, source: &str, arch: &str) -> Result<Ptx, Error> {
    if source.contains('\0') || name.contains('\0') {
        return Err(Error::invalid_argument(
            "source",
            "CUDA source and names cannot hold NUL bytes",
        ));
    }
    let options = CompileOptions {
        name: Some(format!("{name}.cu")),
        fmad: Some(false),
        options: vec![format!("--gpu-architecture={arch}")],
        ..CompileOptions::default()
    };
    let text = format!("{}\n{source}", super::HEADER);
    guarded("NVRTC", || {
        cudarc::nvrtc::compile_ptx_with_opts(text, options).map_err(|e| Error::Cuda {
            operation: "NVRTC compile",
            message: match e {
                CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
                other => other.to_string(),
            },
        })
    })
}

/// An opened GPU: its context and the stream every neurostore operation on it uses, and
/// the [`DevicePool`] that mirrors take their device memory from.
///
/// Cloning is cheap and shares the device. Work is ordered on the one stream, so a
/// buffer freed and handed out again is never written while an earlier copy or kernel
/// still reads it.
///
/// ```
/// use neurostore::{Error, cuda::Device};
///
/// match Device::open(0) {
///     Ok(gpu) => println!("{} with {} bytes", gpu.name(), gpu.total_memory()?),
///     Err(Error::CudaUnavailable { reason }) => println!("no GPU: {reason}"),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

struct DeviceInner {
    ordinal: usize,
    name: String,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pool: DevicePool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ordinal", &self.inner.ordinal)
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens GPU `ordinal` with a default [`DevicePool`]. Without a driver, NVRTC, or a
    /// device of that ordinal this is [`Error::CudaUnavailable`], never a panic.
    pub fn open(ordinal: usize) -> Result<Device, Error> {
        Self::open_with(ordinal, DevicePoolConfig::default())
    }

    /// Opens GPU `ordinal` with a device pool built from `config`.
    pub fn open_with(ordinal: usize, config: DevicePoolConfig) -> Result<Device, Error> {
        config.validate()?;
        probe()?;
        guarded("opening the device", || {
            let count =
                CudaContext::device_count().map_err(|e| driver_error("cuDeviceGetCount", e))?;
            if ordinal >= count.max(0) as usize {
                return Err(Error::CudaUnavailable {
                    reason: format!(
                        "no CUDA device with ordinal {ordinal}: the driver sees {count}"
                    ),
                });
            }
            let context = CudaContext::new(ordinal)
                .map_err(|e| driver_error("cuDevicePrimaryCtxRetain", e))?;
            let stream = context
                .new_stream()
                .map_err(|e| driver_error("cuStreamCreate", e))?;
            let name = context
                .name()
                .map_err(|e| driver_error("cuDeviceGetName", e))?;
            let pool = DevicePool::new(context.clone(), stream.clone(), config);
            Ok(Device {
                inner: Arc::new(DeviceInner {
                    ordinal,
                    name,
                    context,
                    stream,
                    pool,
                }),
            })
        })
    }

    /// How many CUDA devices the driver sees; [`Error::CudaUnavailable`] without a driver.
    pub fn count() -> Result<usize, Error> {
        probe()?;
        guarded("counting devices", || {
            CudaContext::device_count()
                .map(|n| n.max(0) as usize)
                .map_err(|e| driver_error("cuDeviceGetCount", e))
        })
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// The device's name, as the driver reports it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Bytes of device memory.
    pub fn total_memory(&self) -> Result<usize, Error> {
        self.inner
            .context
            .total_mem()
            .map_err(|e| driver_error("cuDeviceTotalMem", e))
    }

    /// The pool this device's mirrors take their memory from.
    pub fn pool(&self) -> &DevicePool {
        &self.inner.pool
    }

    /// Waits until every copy and kernel queued on this device's stream has finished.
    pub fn synchronize(&self) -> Result<(), Error> {
        self.inner
            .stream
            .synchronize()
            .map_err(|e| driver_error("cuStreamSynchronize", e))
    }

    /// Compiles CUDA C++ `source` for this device with NVRTC, [`HEADER`](super::HEADER)
    /// prepended (so kernels can use `ns_table` and `ns_resolve`), and loads it. Fused
    /// multiply-adds are off (`--fmad=false`), so that float arithmetic rounds as Rust's. Kernels
    /// are then found with `load_function("name")` and launched on
    /// [`stream`](Self::stream). A compile error is [`Error::Cuda`] with NVRTC's log.
    pub fn compile(&self, name: &str, source: &str) -> Result<Arc<CudaModule>, Error> {
        let (major, minor) = self
            .inner
            .context
            .compute_capability()
            .map_err(|e| driver_error("cuDeviceGetAttribute", e))?;
        let ptx = compile_ptx(name, source, &format!("compute_{major}{minor}"))?;
        self.inner
            .context
            .load_module(ptx)
            .map_err(|e| driver_error("cuModuleLoadData", e))
    }

    /// The CUDA context (for loading modules compiled with NVRTC).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.context
    }

    /// The stream neurostore queues its copies on; launch kernels that read or write
    /// mirrors on it too, so that they are ordered with the copies.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate's kernels compile with NVRTC wherever NVRTC can be loaded, with or
    /// without a GPU (set `LD_LIBRARY_PATH` to a CUDA toolkit's or the
    /// `nvidia-cuda-nvrtc` wheel's `lib` folder to run this without a driver).
    #[test]
    fn the_kernels_compile_with_nvrtc() {
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            println!("skipped: NVRTC cannot be loaded here");
            return;
        }
        compile_ptx(
            "neurostore_lif_step",
            super::super::neural::STEP_KERNEL,
            "compute_80",
        )
        .unwrap();
        // The header's whole interface, as a user's kernel uses it.
        let user = r#"
            struct Cell { float v; float w; };
            extern "C" __global__ void touch(ns_table t, const ns_u64* h, ns_u32* places, ns_u32 n) {
                ns_u32 i = blockIdx.x * blockDim.x + threadIdx.x;
                if (i >= n) return;
                ns_u32 place;
                places[i] = ns_resolve_place(t, h[i], &place) ? place : 0xffffffffu;
                Cell* c = NS_RESOLVE(Cell, t, h[i]);
                if (c) c->v += (float)ns_handle_generation(h[i]) + ns_handle_index(h[i]);
            }
        "#;
        compile_ptx("user", user, "compute_80").unwrap();
        let err = compile_ptx("broken", "this is not CUDA", "compute_80").unwrap_err();
        assert!(
            matches!(&err, Error::Cuda { operation: "NVRTC compile", message } if !message.is_empty()),
            "{err:?}"
        );
        assert!(matches!(
            compile_ptx("nul", "a\0b", "compute_80"),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
