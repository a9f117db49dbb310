//! [`DevicePoolRegistry`]: device pools by name, in the host pools' [`PoolRegistry`].

use super::device::Device;
use super::device_pool::{DevicePool, DevicePoolConfig};
use crate::error::Error;
use crate::pool::PoolRegistry;

/// Device pools by name beside the host pools of a [`PoolRegistry`] (the design's
/// `createGPUPool`): one name names one pool, host or device.
///
/// ```
/// use neurostore::cuda::{DevicePoolConfig, DevicePoolRegistry};
/// use neurostore::{Error, PoolRegistry};
///
/// let registry = PoolRegistry::new();
/// match registry.create_gpu("weights", 0, DevicePoolConfig::default()) {
///     Ok(pool) => {
///         assert_eq!(pool.ordinal(), 0);
///         assert!(registry.get_gpu("weights").is_some());
///         assert!(registry.remove_gpu("weights").is_some());
///     }
///     // Without a GPU: an error that says why, never a panic, and no name is taken.
///     Err(Error::CudaUnavailable { reason }) => {
///         println!("no GPU here: {reason}");
///         assert!(registry.is_empty());
///     }
///     Err(e) => panic!("{e}"),
/// }
/// ```
pub trait DevicePoolRegistry {
    /// Opens GPU `device` and registers a device pool on it under `name`, built from
    /// `config`.
    ///
    /// # Errors
    /// `Error::PoolExists` when `name` is taken (by a host or a device pool);
    /// `Error::InvalidArgument` for an impossible `config`; `Error::CudaUnavailable`
    /// without a driver or without that device. Nothing is registered on error.
    fn create_gpu(
        &self,
        name: &str,
        device: usize,
        config: DevicePoolConfig,
    ) -> Result<DevicePool, Error>;

    /// The device pool under `name` (`None` when the name is free or holds a host pool).
    fn get_gpu(&self, name: &str) -> Option<DevicePool>;

    /// Removes the device pool `name` from the registry; its memory goes back to the
    /// driver once the last clone and buffer of the pool are gone.
    fn remove_gpu(&self, name: &str) -> Option<DevicePool>;
}

impl DevicePoolRegistry for PoolRegistry {
    fn create_gpu(
        &self,
        name: &str,
        device: usize,
        config: DevicePoolConfig,
    ) -> Result<DevicePool, Error> {
        let pool = self.create_other(name, || {
            Device::open_with(device, config).map(|d| d.pool().clone())
        })?;
        Ok(DevicePool::clone(&pool))
    }

    fn get_gpu(&self, name: &str) -> Option<DevicePool> {
        self.get_other::<DevicePool>(name)
            .map(|p| DevicePool::clone(&p))
    }

    fn remove_gpu(&self, name: &str) -> Option<DevicePool> {
        self.remove_other::<DevicePool>(name)
            .map(|p| DevicePool::clone(&p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolConfig;

    #[test]
    fn without_a_gpu_nothing_is_registered_and_host_names_are_kept_apart() {
        let registry = PoolRegistry::new();
        registry.create("host", PoolConfig::default()).unwrap();
        // A taken name is refused before any driver call.
        assert!(matches!(
            registry.create_gpu("host", 0, DevicePoolConfig::default()),
            Err(Error::PoolExists { .. })
        ));
        // An impossible config is refused before any driver call too.
        let bad = DevicePoolConfig {
            min_block: 100,
            ..DevicePoolConfig::default()
        };
        assert!(matches!(
            registry.create_gpu("gpu", 0, bad),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(registry.names(), vec!["host".to_string()]);
        assert!(registry.get_gpu("host").is_none());
        assert!(registry.remove_gpu("host").is_none());
        assert!(registry.get("host").is_some());
        match registry.create_gpu("gpu", 1 << 20, DevicePoolConfig::default()) {
            Err(Error::CudaUnavailable { .. }) => {}
            other => panic!("no machine has device 2^20: {other:?}"),
        }
        assert_eq!(registry.len(), 1);
        assert!(registry.get_gpu("gpu").is_none());
    }
}
