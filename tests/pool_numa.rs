//! NUMA placement: a pool bound to a node (or interleaved) has its memory in every tier,
//! and its tables' spans, under that policy, as `get_mempolicy` reads it back; a node the
//! machine lacks is refused with its key. (One node here: the test checks the policy the
//! kernel records, not a speed-up.)
#![cfg(target_os = "linux")]

use std::alloc::Layout;
use std::sync::Arc;

use neurostore::table::Table;
use neurostore::{Error, HierarchicalPool, NumaPlacement, PoolConfig};

const MPOL_DEFAULT: i32 = 0;
const MPOL_BIND: i32 = 2;
const MPOL_INTERLEAVE: i32 = 3;
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;

/// The policy (mode, node mask) of the page at `addr`.
fn policy_at(addr: *const u8) -> (i32, u64) {
    let (mut mode, mut mask) = (-1i32, 0u64);
    // SAFETY: get_mempolicy writes one int and a 64-bit mask, both ours; `addr` is mapped.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut i32,
            &mut mask as *mut u64,
            64 as libc::c_ulong,
            addr,
            MPOL_F_ADDR,
        )
    };
    assert_eq!(r, 0, "get_mempolicy: {}", std::io::Error::last_os_error());
    (mode, mask)
}

fn online_nodes() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/node/online").unwrap();
    let mut mask = 0;
    for part in text.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        for n in a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap() {
            mask |= 1 << n;
        }
    }
    mask
}

/// A block of every tier (small, medium, a large arena block, a mapping of its own), each
/// touched, with its policy.
fn policies_of_every_tier(pool: &HierarchicalPool) -> Vec<(usize, (i32, u64))> {
    [64, 3000, 1 << 20, 8 << 20]
        .into_iter()
        .map(|size| {
            let l = Layout::from_size_align(size, 16).unwrap();
            let b = pool.allocate(l).unwrap().cast::<u8>();
            // SAFETY: the block is ours and at least `size` bytes long.
            unsafe { b.as_ptr().write(1) };
            let policy = policy_at(b.as_ptr());
            // SAFETY: allocated above with this layout.
            unsafe { pool.deallocate(b, l) };
            (size, policy)
        })
        .collect()
}

fn config(numa: NumaPlacement) -> PoolConfig {
    let mut c = PoolConfig {
        numa,
        ..PoolConfig::default()
    };
    c.large.max_size = 4 << 20; // 8 MiB is then a mapping of its own
    c
}

#[test]
fn a_pool_bound_to_a_node_places_every_tier_there() {
    let pool = HierarchicalPool::new(config(NumaPlacement::Node(0))).unwrap();
    for (size, policy) in policies_of_every_tier(&pool) {
        assert_eq!(policy, (MPOL_BIND, 1), "a block of {size} bytes");
    }
}

#[test]
fn an_interleaved_pool_spreads_over_every_online_node() {
    let pool = HierarchicalPool::new(config(NumaPlacement::Interleave)).unwrap();
    let online = online_nodes();
    for (size, policy) in policies_of_every_tier(&pool) {
        assert_eq!(policy, (MPOL_INTERLEAVE, online), "a block of {size} bytes");
    }
}

#[test]
fn without_a_placement_the_default_policy_stays() {
    let pool = HierarchicalPool::new(config(NumaPlacement::Anywhere)).unwrap();
    for (size, (mode, _)) in policies_of_every_tier(&pool) {
        assert_eq!(mode, MPOL_DEFAULT, "a block of {size} bytes");
    }
}

#[test]
fn the_spans_of_a_pools_tables_follow_its_placement() {
    let pool = Arc::new(HierarchicalPool::new(config(NumaPlacement::Node(0))).unwrap());
    let mut table: Table<[u64; 4]> = Table::with_pool(pool);
    let handles: Vec<_> = (0..200_000u64).map(|i| table.insert([i; 4])).collect();
    for h in [handles[0], handles[100_000], handles[199_999]] {
        let object: *const [u64; 4] = table.get(h).unwrap();
        assert_eq!(policy_at(object.cast()), (MPOL_BIND, 1));
    }
}

#[test]
fn a_node_the_machine_lacks_is_refused_by_key() {
    let missing = (0..64)
        .rev()
        .find(|n| online_nodes() & (1 << n) == 0)
        .unwrap();
    let err = HierarchicalPool::new(config(NumaPlacement::Node(missing))).unwrap_err();
    match &err {
        Error::Config(e) => {
            assert_eq!(e.key, "memory_pools.numa_node");
            assert!(
                e.to_string().contains(&format!("NUMA node {missing}")),
                "{e}"
            );
        }
        other => panic!("expected a config error, got {other}"),
    }
    let from_toml = PoolConfig::from_toml_str(&format!("[memory_pools]\nnuma_node = {missing}"));
    assert!(from_toml.is_err());
}

#[test]
fn placement_reads_and_writes_as_toml() {
    let c = PoolConfig::from_toml_str("[memory_pools]\nnuma_node = 0").unwrap();
    assert_eq!(c.numa, NumaPlacement::Node(0));
    let c = PoolConfig::from_toml_str("[memory_pools]\nnuma_interleave = true").unwrap();
    assert_eq!(c.numa, NumaPlacement::Interleave);
    assert_eq!(PoolConfig::from_toml_str(&c.to_toml_string()).unwrap(), c);
    let both = PoolConfig::from_toml_str("[memory_pools]\nnuma_node = 0\nnuma_interleave = true");
    assert!(
        matches!(both, Err(Error::Config(ref e)) if e.key == "memory_pools.numa_interleave"),
        "{both:?}"
    );
}
