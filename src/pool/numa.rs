//! NUMA placement of a pool's memory: [`NumaPlacement`] in [`PoolConfig`](super::PoolConfig),
//! checked against the machine's nodes when the pool is made and applied with `mbind` to
//! every region the pool maps (and to the spans of the tables that use the pool).

use crate::error::ConfigError;

/// Where the memory of a pool is placed on a NUMA machine.
///
/// ```
/// use neurostore::{HierarchicalPool, NumaPlacement, PoolConfig};
///
/// // Node 0 exists on every Linux machine; a node the machine lacks is refused by name.
/// let on_node_0 = PoolConfig { numa: NumaPlacement::Node(0), ..PoolConfig::default() };
/// # #[cfg(target_os = "linux")]
/// assert!(HierarchicalPool::new(on_node_0).is_ok());
/// let missing = PoolConfig { numa: NumaPlacement::Node(60), ..PoolConfig::default() };
/// let err = HierarchicalPool::new(missing).unwrap_err();
/// assert!(err.to_string().contains("memory_pools.numa_node"), "{err}");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NumaPlacement {
    /// The operating system's default policy (usually the node of the thread that first
    /// touches a page).
    #[default]
    Anywhere,
    /// Only node `n` (`mbind` with `MPOL_BIND`); node numbers below 64.
    Node(u32),
    /// Page by page across every online node (`MPOL_INTERLEAVE`), for memory that every
    /// thread reads.
    Interleave,
}

/// A resolved placement: the `mbind` mode and node mask, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NumaBinding {
    mode: u32,
    mask: u64,
}

/// `MPOL_BIND` and `MPOL_INTERLEAVE` of `<linux/mempolicy.h>`.
const MPOL_BIND: u32 = 2;
const MPOL_INTERLEAVE: u32 = 3;

impl NumaBinding {
    /// The OS's default policy: nothing to bind.
    pub(crate) const NONE: NumaBinding = NumaBinding { mode: 0, mask: 0 };

    /// True when regions are to be bound.
    pub(crate) fn is_some(self) -> bool {
        self.mode != 0
    }

    /// Checks `placement` against the machine's online nodes.
    pub(crate) fn resolve(placement: NumaPlacement) -> Result<NumaBinding, ConfigError> {
        match placement {
            NumaPlacement::Anywhere => Ok(NumaBinding::NONE),
            NumaPlacement::Node(n) => {
                let online = online_nodes()?;
                if n >= 64 || online & (1 << n) == 0 {
                    return Err(ConfigError::new(
                        "memory_pools.numa_node",
                        format!(
                            "NUMA node {n} does not exist: this machine's online nodes are {}",
                            describe(online)
                        ),
                    ));
                }
                Ok(NumaBinding {
                    mode: MPOL_BIND,
                    mask: 1 << n,
                })
            }
            NumaPlacement::Interleave => Ok(NumaBinding {
                mode: MPOL_INTERLEAVE,
                mask: online_nodes()?,
            }),
        }
    }

    /// Applies the placement to the pages of `[ptr, ptr + len)` that are touched from now
    /// on; true on success (and when there is nothing to bind).
    ///
    /// # Safety
    /// The range is a mapping of the pool's, page aligned.
    pub(crate) unsafe fn apply(self, ptr: *mut u8, len: usize) -> bool {
        if !self.is_some() {
            return true;
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: per the contract the range is ours; mbind only sets the policy of
            // its pages, and `mask` is a 64-bit node mask that outlives the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mbind,
                    ptr,
                    len,
                    self.mode as libc::c_ulong,
                    &self.mask as *const u64,
                    64 as libc::c_ulong,
                    0 as libc::c_uint,
                )
            };
            r == 0
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (ptr, len);
            false
        }
    }
}

/// The online nodes as a mask (nodes 0..64), from `/sys/devices/system/node/online`.
#[cfg(target_os = "linux")]
fn online_nodes() -> Result<u64, ConfigError> {
    let key = "memory_pools.numa_node";
    let text = std::fs::read_to_string("/sys/devices/system/node/online").map_err(|e| {
        ConfigError::new(key, format!("cannot read this machine's NUMA nodes: {e}"))
    })?;
    parse_node_list(text.trim())
        .ok_or_else(|| ConfigError::new(key, format!("cannot read the node list {text:?}")))
}

/// NUMA placement is a Linux feature here.
#[cfg(not(target_os = "linux"))]
fn online_nodes() -> Result<u64, ConfigError> {
    Err(ConfigError::new(
        "memory_pools.numa_node",
        "NUMA placement is only supported on Linux",
    ))
}

/// A kernel node list (`0`, `0-3,8`) as a mask of nodes below 64.
fn parse_node_list(list: &str) -> Option<u64> {
    let mut mask = 0u64;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        for n in a..=b.min(63) {
            mask |= 1 << n;
        }
    }
    Some(mask)
}

/// A node mask as a list of node numbers.
fn describe(mask: u64) -> String {
    let nodes: Vec<String> = (0..64)
        .filter(|n| mask & (1 << n) != 0)
        .map(|n| n.to_string())
        .collect();
    if nodes.is_empty() {
        "none".into()
    } else {
        nodes.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_node_list("0"), Some(1));
        assert_eq!(parse_node_list("0-3,8"), Some(0b1_0000_1111));
        assert_eq!(parse_node_list("1,3-4"), Some(0b11010));
        assert_eq!(parse_node_list("x"), None);
        assert_eq!(describe(0b1011), "0, 1, 3");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn node_zero_resolves_and_a_missing_node_is_named() {
        let b = NumaBinding::resolve(NumaPlacement::Node(0)).unwrap();
        assert_eq!((b.mode, b.mask), (MPOL_BIND, 1));
        for n in [63, 64, u32::MAX] {
            let online = online_nodes().unwrap();
            if n < 64 && online & (1 << n) != 0 {
                continue;
            }
            let e = NumaBinding::resolve(NumaPlacement::Node(n)).unwrap_err();
            assert!(e.to_string().contains(&format!("NUMA node {n}")), "{e}");
        }
    }
}
