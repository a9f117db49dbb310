//! Arbitrary text as a pool configuration: a typed error naming the key, or a config that
//! writes back to TOML that reads as the same config and builds a pool.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurostore::{HierarchicalPool, PoolConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = PoolConfig::from_toml_str(text) else {
        return;
    };
    let again = PoolConfig::from_toml_str(&config.to_toml_string())
        .expect("a config's own TOML reads back");
    assert_eq!(again, config);
    // A capped pool, so that a config asking for huge regions cannot exhaust the process.
    let capped = PoolConfig {
        total_memory: Some(config.total_memory.unwrap_or(usize::MAX).min(64 << 20)),
        ..config
    };
    if let Ok(pool) = HierarchicalPool::new(capped) {
        let layout = std::alloc::Layout::from_size_align(100, 8).expect("a valid layout");
        if let Ok(block) = pool.allocate(layout) {
            // SAFETY: allocated just above with this layout and not used.
            unsafe { pool.deallocate(block.cast(), layout) };
        }
        assert_eq!(pool.verify(), Ok(()));
    }
});
