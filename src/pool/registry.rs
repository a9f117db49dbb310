//! [`PoolRegistry`]: pools by name.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use super::config::PoolConfig;
use super::hierarchical::HierarchicalPool;
use crate::error::Error;

/// Named pools, shared as `Arc<HierarchicalPool>`. Thread safe; a process-wide instance
/// is [`PoolRegistry::global`]. With the `cuda` feature the same names can also hold
/// device pools (`neurostore::cuda::DevicePoolRegistry::create_gpu`): one name names one
/// pool, host or device.
///
/// ```
/// use neurostore::{PoolConfig, PoolRegistry};
///
/// let registry = PoolRegistry::new();
/// let synapses = registry.create("synapses", PoolConfig::default())?;
/// assert!(registry.create("synapses", PoolConfig::default()).is_err());
/// assert!(std::sync::Arc::ptr_eq(&synapses, &registry.get("synapses").unwrap()));
/// assert!(registry.remove("synapses").is_some());
/// assert!(registry.get("synapses").is_none());
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Default)]
pub struct PoolRegistry {
    pools: RwLock<HashMap<String, Registered>>,
}

/// What a name holds: a host pool, or a pool of a layer above (a device pool).
#[derive(Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum Registered {
    Host(Arc<HierarchicalPool>),
    Other(Arc<dyn Any + Send + Sync>),
}

impl Registered {
    fn host(&self) -> Option<Arc<HierarchicalPool>> {
        match self {
            Registered::Host(p) => Some(Arc::clone(p)),
            Registered::Other(_) => None,
        }
    }
}

impl std::fmt::Debug for PoolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRegistry")
            .field("names", &self.names())
            .finish()
    }
}

impl PoolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide registry.
    pub fn global() -> &'static PoolRegistry {
        static GLOBAL: OnceLock<PoolRegistry> = OnceLock::new();
        GLOBAL.get_or_init(PoolRegistry::new)
    }

    /// Makes a pool under `name`. `Error::PoolExists` if the name is taken,
    /// `Error::Config` if the config is impossible; either way nothing changes.
    pub fn create(&self, name: &str, config: PoolConfig) -> Result<Arc<HierarchicalPool>, Error> {
        let mut pools = self.pools.write();
        if pools.contains_key(name) {
            return Err(Error::PoolExists {
                name: name.to_owned(),
            });
        }
        let pool = Arc::new(HierarchicalPool::new(config)?);
        pools.insert(name.to_owned(), Registered::Host(Arc::clone(&pool)));
        Ok(pool)
    }

    /// Registers what `make` returns under `name`, holding the registry's lock across
    /// `make` so that a name is never taken twice. `Error::PoolExists` if the name is
    /// taken (then `make` is not called); `make`'s error leaves the registry unchanged.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn create_other<T: Any + Send + Sync>(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<T, Error>,
    ) -> Result<Arc<T>, Error> {
        let mut pools = self.pools.write();
        if pools.contains_key(name) {
            return Err(Error::PoolExists {
                name: name.to_owned(),
            });
        }
        let value = Arc::new(make()?);
        pools.insert(name.to_owned(), Registered::Other(value.clone()));
        Ok(value)
    }

    /// What `name` holds, if it is a `T` registered by [`create_other`](Self::create_other).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn get_other<T: Any + Send + Sync>(&self, name: &str) -> Option<Arc<T>> {
        match self.pools.read().get(name)? {
            Registered::Other(v) => Arc::clone(v).downcast::<T>().ok(),
            Registered::Host(_) => None,
        }
    }

    /// Removes `name` if it holds a `T` registered by [`create_other`](Self::create_other).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn remove_other<T: Any + Send + Sync>(&self, name: &str) -> Option<Arc<T>> {
        let mut pools = self.pools.write();
        let value = match pools.get(name)? {
            Registered::Other(v) => Arc::clone(v).downcast::<T>().ok()?,
            Registered::Host(_) => return None,
        };
        pools.remove(name);
        Some(value)
    }

    /// The host pool under `name`, made with `config()` if there is none yet
    /// (`Error::PoolExists` when the name holds a device pool).
    pub fn get_or_create(
        &self,
        name: &str,
        config: impl FnOnce() -> PoolConfig,
    ) -> Result<Arc<HierarchicalPool>, Error> {
        if let Some(p) = self.get(name) {
            return Ok(p);
        }
        let mut pools = self.pools.write();
        match pools.get(name) {
            Some(Registered::Host(p)) => return Ok(Arc::clone(p)),
            Some(Registered::Other(_)) => {
                return Err(Error::PoolExists {
                    name: name.to_owned(),
                });
            }
            None => {}
        }
        let pool = Arc::new(HierarchicalPool::new(config())?);
        pools.insert(name.to_owned(), Registered::Host(Arc::clone(&pool)));
        Ok(pool)
    }

    /// The host pool under `name` (`None` when the name is free or holds a device pool).
    pub fn get(&self, name: &str) -> Option<Arc<HierarchicalPool>> {
        self.pools.read().get(name)?.host()
    }

    /// Removes the host pool `name` from the registry; the pool itself lives on while
    /// others hold it. A device pool under `name` stays (it has its own `remove_gpu`).
    pub fn remove(&self, name: &str) -> Option<Arc<HierarchicalPool>> {
        let mut pools = self.pools.write();
        let pool = pools.get(name)?.host()?;
        pools.remove(name);
        Some(pool)
    }

    /// The registered names, host and device pools alike, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pools.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Number of registered pools.
    pub fn len(&self) -> usize {
        self.pools.read().len()
    }

    /// True when no pool is registered.
    pub fn is_empty(&self) -> bool {
        self.pools.read().is_empty()
    }
}
