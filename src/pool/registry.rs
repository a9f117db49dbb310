//! [`PoolRegistry`]: pools by name.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use super::config::PoolConfig;
use super::hierarchical::HierarchicalPool;
use crate::error::Error;

/// Named pools, shared as `Arc<HierarchicalPool>`. Thread safe; a process-wide instance
/// is [`PoolRegistry::global`].
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
    pools: RwLock<HashMap<String, Arc<HierarchicalPool>>>,
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
        pools.insert(name.to_owned(), Arc::clone(&pool));
        Ok(pool)
    }

    /// The pool under `name`, made with `config()` if there is none yet.
    pub fn get_or_create(
        &self,
        name: &str,
        config: impl FnOnce() -> PoolConfig,
    ) -> Result<Arc<HierarchicalPool>, Error> {
        if let Some(p) = self.get(name) {
            return Ok(p);
        }
        let mut pools = self.pools.write();
        if let Some(p) = pools.get(name) {
            return Ok(Arc::clone(p));
        }
        let pool = Arc::new(HierarchicalPool::new(config())?);
        pools.insert(name.to_owned(), Arc::clone(&pool));
        Ok(pool)
    }

    /// The pool under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<HierarchicalPool>> {
        self.pools.read().get(name).cloned()
    }

    /// Removes `name` from the registry; the pool itself lives on while others hold it.
    pub fn remove(&self, name: &str) -> Option<Arc<HierarchicalPool>> {
        self.pools.write().remove(name)
    }

    /// The registered names, sorted.
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
