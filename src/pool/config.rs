//! [`PoolConfig`]: the size-class table and the knobs of each tier, with presets,
//! validation and a TOML form.
//!
//! A config is checked as a whole before any memory is touched; every impossible value
//! gives [`Error::Config`] naming its dotted TOML key. The checked config is turned into a
//! fixed-size `ResolvedConfig` that the pool reads on its hot paths and that can be
//! built in a `const` context (the global allocator needs one before any heap exists).

use std::path::Path;

use super::numa::{NumaBinding, NumaPlacement};
use crate::error::{ConfigError, Error};

/// The most small size classes a pool may have.
pub const MAX_SMALL_CLASSES: usize = 16;
/// The most medium size classes a pool may have.
pub const MAX_MEDIUM_CLASSES: usize = 15;
/// Granularity of medium blocks; medium classes are multiples of it.
pub(crate) const MEDIUM_QUANTUM: usize = 16;
/// Default of `medium.thread_cache_bytes`. Measured on `benches/pool.rs` (c), standalone,
/// best of 9 x 200k replaces, interleaved runs: 2 MiB gave 51.5-54.5 ns per replace at a
/// reserved / in-use ratio of 1.21, 8 MiB 45-54 ns at 1.27, mimalloc 44.6-47.6 ns.
const DEFAULT_MEDIUM_CACHE_BYTES: usize = 8 << 20;

/// How long a dropped large table's memory waits for reuse by default: long enough for
/// a snapshot load that follows the drop, short enough that a program that dropped a
/// table for good sees its memory go back soon.
const DEFAULT_RETAIN_TABLE_MEMORY_MS: u64 = 10_000;

/// The largest small size class accepted.
pub const MAX_SMALL_CLASS_SIZE: usize = 4096;

/// The small tier: fixed-size pools with per-thread caches.
#[derive(Clone, Debug, PartialEq)]
pub struct SmallConfig {
    /// Block sizes, strictly increasing multiples of `alignment`, at most
    /// [`MAX_SMALL_CLASSES`] of them, none above [`MAX_SMALL_CLASS_SIZE`].
    pub sizes: Vec<usize>,
    /// Blocks carved from one chunk. A chunk spans a whole number of 64 KiB granules, so
    /// a chunk of a small class may hold more blocks than this to fill its last granule.
    pub blocks_per_chunk: usize,
    /// The most chunks one size class may hold; beyond it, allocation fails with
    /// `OutOfMemory` (reason `ChunkLimit`).
    pub max_chunks: usize,
    /// Blocks a thread keeps per class in front of the shared free lists (plus one, the
    /// last freed, in a slot of its own); 0 turns the per-thread caches off.
    pub thread_cache_size: usize,
    /// Minimum alignment of every small block (a power of two, at least 8).
    pub alignment: usize,
}

/// The medium tier: segregated fit with splitting and coalescing.
#[derive(Clone, Debug, PartialEq)]
pub struct MediumConfig {
    /// Size-class boundaries of the free lists, strictly increasing multiples of 16; the
    /// last is the largest request the tier serves.
    pub sizes: Vec<usize>,
    /// Keep one free list per size class (with 8 sub-lists each). When false, all free
    /// blocks share one list searched first-fit.
    pub segregated_fit: bool,
    /// Merge a freed block with free neighbours.
    pub coalescing: bool,
    /// Bytes mapped per medium region (a multiple of 64 KiB holding at least two of the
    /// largest class).
    pub region_size: usize,
    /// Bytes of free medium blocks (up to 64 KiB) each thread may keep in front of the
    /// tier, split evenly between the cache's size classes (see the `thread_cache`
    /// module); every class keeps at least 4 blocks, so a thread may hold up to about
    /// 1 MiB more. 8 MiB by default (16 MiB in [`PoolConfig::high_performance`]); 0 turns
    /// the medium thread caches off, and with it the rounding of medium requests up to the
    /// cache's classes. At most 1 GiB.
    pub thread_cache_bytes: usize,
}

/// How the large tier manages its arenas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LargeStrategy {
    /// Binary buddy allocation, page aligned.
    BuddyAllocator,
}

/// The large tier: buddy arenas; larger requests are mapped on their own.
#[derive(Clone, Debug, PartialEq)]
pub struct LargeConfig {
    /// The allocation strategy.
    pub strategy: LargeStrategy,
    /// The smallest buddy block (a power of two, at least 4096).
    pub min_size: usize,
    /// The largest buddy block and arena (a power of two); larger requests get their own
    /// mapping.
    pub max_size: usize,
    /// Alignment of every large block (a power of two, 4096 ..= `min_size`).
    pub alignment: usize,
}

/// Everything a [`HierarchicalPool`](crate::HierarchicalPool) can be told.
///
/// ```
/// use neurostore::PoolConfig;
///
/// let config = PoolConfig::from_toml_str(
///     r#"
///     [memory_pools.small]
///     sizes = [16, 64, 256]
///     blocks_per_chunk = 2048
///     "#,
/// )
/// .unwrap();
/// assert_eq!(config.small.sizes, vec![16, 64, 256]);
/// assert_eq!(config.small.thread_cache_size, PoolConfig::default().small.thread_cache_size);
///
/// let err = PoolConfig::from_toml_str("[memory_pools.small]\nsizes = [64, 32]").unwrap_err();
/// assert!(err.to_string().contains("memory_pools.small.sizes"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// The small tier.
    pub small: SmallConfig,
    /// The medium tier.
    pub medium: MediumConfig,
    /// The large tier.
    pub large: LargeConfig,
    /// Cap on bytes reserved from the OS; `None` for no cap.
    pub total_memory: Option<usize>,
    /// Ask the OS for transparent huge pages on every region.
    pub use_huge_pages: bool,
    /// Checked mode: detect double frees and foreign pointers, poison freed memory and
    /// report leaks on drop. Turns the per-thread caches off.
    pub checked: bool,
    /// Empty chunks (per small class), regions or arenas kept mapped for reuse; beyond
    /// this, empty ones go back to the OS.
    pub retain_empty: usize,
    /// How long, in milliseconds, the memory of a dropped large table (a span of 4 MiB or
    /// more) stays mapped and resident for the next large table that grows, instead of
    /// going back to the OS at once; 0 gives it back at once. Reused pages skip the
    /// kernel's page faults and zeroing (and a hypervisor's), so that loading a snapshot
    /// right after dropping the original, or rebuilding a table, runs at memory speed.
    /// Retained bytes count against `total_memory` and in the large tier's reserved
    /// bytes; they go back to the OS when they pass this age (checked whenever a table's
    /// memory comes or goes), when a commit would pass the cap, and on
    /// [`HierarchicalPool::trim`](super::HierarchicalPool::trim).
    pub retain_table_memory_ms: u64,
    /// Each new large arena is this many times the previous one (1, 2, 4 or 8), from
    /// 4 MiB up to 64 MiB or `large.max_size`. Medium regions keep `medium.region_size`.
    pub growth_factor: usize,
    /// The NUMA node(s) the pool's memory is bound to (TOML `numa_node = N` or
    /// `numa_interleave = true`); checked against the machine's online nodes when the
    /// pool is made.
    pub numa: NumaPlacement,
}

impl Default for PoolConfig {
    /// Balanced defaults: the size classes of the design, 64-block small thread caches,
    /// 8 MiB medium thread caches, 4 MiB medium regions.
    fn default() -> Self {
        PoolConfig {
            small: SmallConfig {
                sizes: vec![8, 16, 32, 64, 128, 256],
                blocks_per_chunk: 1024,
                max_chunks: 1 << 20,
                thread_cache_size: 64,
                alignment: 8,
            },
            medium: MediumConfig {
                sizes: vec![512, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
                segregated_fit: true,
                coalescing: true,
                region_size: 4 << 20,
                thread_cache_bytes: DEFAULT_MEDIUM_CACHE_BYTES,
            },
            large: LargeConfig {
                strategy: LargeStrategy::BuddyAllocator,
                min_size: 64 << 10,
                max_size: 1 << 30,
                alignment: 4096,
            },
            total_memory: None,
            use_huge_pages: false,
            checked: false,
            retain_empty: 2,
            retain_table_memory_ms: DEFAULT_RETAIN_TABLE_MEMORY_MS,
            growth_factor: 2,
            numa: NumaPlacement::Anywhere,
        }
    }
}

impl PoolConfig {
    /// Throughput first: bigger thread caches and chunks, huge pages, more memory kept.
    pub fn high_performance() -> Self {
        let mut c = PoolConfig::default();
        c.small.blocks_per_chunk = 4096;
        c.small.thread_cache_size = 256;
        c.medium.region_size = 16 << 20;
        c.medium.thread_cache_bytes = 2 * DEFAULT_MEDIUM_CACHE_BYTES;
        c.use_huge_pages = true;
        c.retain_empty = 8;
        c
    }

    /// Checked mode: double frees and foreign pointers are reported, freed memory is
    /// poisoned, leaks are reported on drop, and empty memory goes back to the OS at once
    /// so that a use after free faults.
    pub fn debug() -> Self {
        let mut c = PoolConfig::default();
        c.small.thread_cache_size = 0;
        c.medium.thread_cache_bytes = 0;
        c.checked = true;
        c.retain_empty = 0;
        c.retain_table_memory_ms = 0;
        c
    }

    /// Reads the TOML layout that [`to_toml_string`](Self::to_toml_string) writes; keys
    /// left out keep their [`Default`] values.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::new("memory_pools", format!("not valid TOML: {e}"))
        })?;
        let mut config = PoolConfig::default();
        toml_form::apply(&table, &mut config)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file with [`from_toml_str`](Self::from_toml_str).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)?;
        Self::from_toml_str(&text)
    }

    /// Writes this config in the TOML layout that [`from_toml_str`](Self::from_toml_str) reads.
    pub fn to_toml_string(&self) -> String {
        toml_form::render(self)
    }

    /// Checks every value; the first impossible one is reported with its key.
    pub fn validate(&self) -> Result<(), Error> {
        self.resolve().map(|_| ()).map_err(Error::from)
    }

    /// Checks the small tier's keys.
    fn check_small(&self) -> Result<(), ConfigError> {
        let s = &self.small;
        if !s.alignment.is_power_of_two() || s.alignment < 8 || s.alignment > 4096 {
            return bad(
                "small.alignment",
                format!("{} is not a power of two in 8..=4096", s.alignment),
            );
        }
        check_classes("small.sizes", &s.sizes, MAX_SMALL_CLASSES, s.alignment)?;
        if let Some(&big) = s.sizes.iter().find(|&&c| c > MAX_SMALL_CLASS_SIZE) {
            return bad(
                "small.sizes",
                format!("{big} is above the small tier's limit of {MAX_SMALL_CLASS_SIZE}"),
            );
        }
        if s.blocks_per_chunk == 0 || s.blocks_per_chunk > 1 << 24 {
            return bad(
                "small.blocks_per_chunk",
                format!("{} is not in 1..=16777216", s.blocks_per_chunk),
            );
        }
        if s.max_chunks == 0 {
            return bad("small.max_chunks", "must be at least 1".into());
        }
        if s.thread_cache_size > 1 << 16 {
            return bad(
                "small.thread_cache_size",
                format!("{} is above 65536", s.thread_cache_size),
            );
        }
        Ok(())
    }

    /// Checks the medium tier's keys, against the small tier's largest class.
    fn check_medium(&self) -> Result<(), ConfigError> {
        let (s, m) = (&self.small, &self.medium);
        check_classes("medium.sizes", &m.sizes, MAX_MEDIUM_CLASSES, MEDIUM_QUANTUM)?;
        let small_max = *s.sizes.last().expect("checked non-empty");
        if m.sizes[0] <= small_max {
            return bad(
                "medium.sizes",
                format!(
                    "the first medium class ({}) must be above the largest small class ({small_max})",
                    m.sizes[0]
                ),
            );
        }
        let medium_max = *m.sizes.last().expect("checked non-empty");
        if m.region_size == 0
            || !m.region_size.is_multiple_of(super::os::GRANULE)
            || m.region_size > 1 << 30
        {
            return bad(
                "medium.region_size",
                format!("{} is not a multiple of 65536 up to 1 GiB", m.region_size),
            );
        }
        if m.thread_cache_bytes > 1 << 30 {
            return bad(
                "medium.thread_cache_bytes",
                format!("{} is above 1 GiB", m.thread_cache_bytes),
            );
        }
        if m.region_size < 2 * (medium_max + 2 * MEDIUM_QUANTUM) {
            return bad(
                "medium.region_size",
                format!(
                    "{} cannot hold two blocks of the largest medium class ({medium_max})",
                    m.region_size
                ),
            );
        }
        Ok(())
    }

    /// Checks the large tier's keys, against the medium tier's largest class.
    fn check_large(&self) -> Result<(), ConfigError> {
        let l = &self.large;
        let medium_max = *self.medium.sizes.last().expect("checked non-empty");
        if !l.min_size.is_power_of_two() || l.min_size < 4096 {
            return bad(
                "large.min_size",
                format!("{} is not a power of two of at least 4096", l.min_size),
            );
        }
        if !l.max_size.is_power_of_two() {
            return bad(
                "large.max_size",
                format!("{} is not a power of two", l.max_size),
            );
        }
        if l.min_size > l.max_size {
            return bad(
                "large.min_size",
                format!("min_size {} is above max_size {}", l.min_size, l.max_size),
            );
        }
        if l.max_size < medium_max || l.max_size > 1 << 40 {
            return bad(
                "large.max_size",
                format!(
                    "{} must be between the largest medium class ({medium_max}) and 1 TiB",
                    l.max_size
                ),
            );
        }
        if !l.alignment.is_power_of_two() || l.alignment < 4096 || l.alignment > l.min_size {
            return bad(
                "large.alignment",
                format!("{} is not a power of two in 4096..=min_size", l.alignment),
            );
        }
        Ok(())
    }

    /// Checks the pool's keys (the tiers first, in order: a later check relies on an
    /// earlier one, such as the size lists being non-empty) and resolves the config.
    pub(crate) fn resolve(&self) -> Result<ResolvedConfig, ConfigError> {
        self.check_small()?;
        self.check_medium()?;
        self.check_large()?;
        if self.total_memory == Some(0) {
            return bad(
                "total_memory",
                "must be above zero (leave it out for no cap)".into(),
            );
        }
        if ![1, 2, 4, 8].contains(&self.growth_factor) {
            return bad(
                "growth_factor",
                format!("{} is not one of 1, 2, 4, 8", self.growth_factor),
            );
        }
        let numa = NumaBinding::resolve(self.numa)?;
        let (s, m, l) = (&self.small, &self.medium, &self.large);
        let mut small_sizes = [0; MAX_SMALL_CLASSES];
        small_sizes[..s.sizes.len()].copy_from_slice(&s.sizes);
        let mut medium_sizes = [0; MAX_MEDIUM_CLASSES];
        medium_sizes[..m.sizes.len()].copy_from_slice(&m.sizes);
        Ok(ResolvedConfig {
            small_sizes,
            small_count: s.sizes.len(),
            blocks_per_chunk: s.blocks_per_chunk,
            max_chunks: s.max_chunks,
            thread_cache_size: if self.checked { 0 } else { s.thread_cache_size },
            small_alignment: s.alignment,
            medium_sizes,
            medium_count: m.sizes.len(),
            segregated_fit: m.segregated_fit,
            coalescing: m.coalescing,
            region_size: m.region_size,
            medium_cache_bytes: if self.checked {
                0
            } else {
                m.thread_cache_bytes
            },
            large_min: l.min_size,
            large_max: l.max_size,
            large_alignment: l.alignment,
            total_memory: self.total_memory.unwrap_or(usize::MAX),
            use_huge_pages: self.use_huge_pages,
            checked: self.checked,
            retain_empty: self.retain_empty,
            // Checked mode unmaps what is freed, so that a late use faults.
            retain_table_memory_ms: if self.checked {
                0
            } else {
                self.retain_table_memory_ms
            },
            growth_factor: self.growth_factor,
            numa,
        })
    }
}

/// The error that `key` (under `memory_pools.`) is wrong, as `msg` says.
fn bad<T>(key: &str, msg: String) -> Result<T, ConfigError> {
    Err(ConfigError::new(format!("memory_pools.{key}"), msg))
}

fn check_classes(
    key: &str,
    sizes: &[usize],
    max: usize,
    multiple: usize,
) -> Result<(), ConfigError> {
    let key = format!("memory_pools.{key}");
    if sizes.is_empty() {
        return Err(ConfigError::new(key, "needs at least one size class"));
    }
    if sizes.len() > max {
        return Err(ConfigError::new(
            key,
            format!("{} classes given, at most {max} allowed", sizes.len()),
        ));
    }
    for (i, &c) in sizes.iter().enumerate() {
        if c == 0 {
            return Err(ConfigError::new(
                key,
                "a size class of 0 bytes is impossible",
            ));
        }
        if c % multiple != 0 {
            return Err(ConfigError::new(
                key,
                format!("{c} is not a multiple of the alignment {multiple}"),
            ));
        }
        if i > 0 && c <= sizes[i - 1] {
            return Err(ConfigError::new(
                key,
                format!(
                    "classes must be strictly increasing ({} then {c})",
                    sizes[i - 1]
                ),
            ));
        }
    }
    Ok(())
}

/// A validated config in fixed-size form, readable without allocation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResolvedConfig {
    pub small_sizes: [usize; MAX_SMALL_CLASSES],
    pub small_count: usize,
    pub blocks_per_chunk: usize,
    pub max_chunks: usize,
    pub thread_cache_size: usize,
    pub small_alignment: usize,
    pub medium_sizes: [usize; MAX_MEDIUM_CLASSES],
    pub medium_count: usize,
    pub segregated_fit: bool,
    pub coalescing: bool,
    pub region_size: usize,
    /// 0 when the medium thread caches are off (always in checked mode).
    pub medium_cache_bytes: usize,
    pub large_min: usize,
    pub large_max: usize,
    pub large_alignment: usize,
    pub total_memory: usize,
    pub use_huge_pages: bool,
    pub checked: bool,
    pub retain_empty: usize,
    pub retain_table_memory_ms: u64,
    pub growth_factor: usize,
    pub numa: NumaBinding,
}

impl ResolvedConfig {
    /// The defaults of [`PoolConfig::default`], built without allocating (the global
    /// allocator's config).
    pub(crate) const fn global_default() -> Self {
        let mut small_sizes = [0; MAX_SMALL_CLASSES];
        let s = [8, 16, 32, 64, 128, 256];
        let mut i = 0;
        while i < s.len() {
            small_sizes[i] = s[i];
            i += 1;
        }
        let mut medium_sizes = [0; MAX_MEDIUM_CLASSES];
        let m = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];
        let mut i = 0;
        while i < m.len() {
            medium_sizes[i] = m[i];
            i += 1;
        }
        ResolvedConfig {
            small_sizes,
            small_count: s.len(),
            blocks_per_chunk: 1024,
            max_chunks: 1 << 20,
            thread_cache_size: 64,
            small_alignment: 8,
            medium_sizes,
            medium_count: m.len(),
            segregated_fit: true,
            coalescing: true,
            region_size: 4 << 20,
            medium_cache_bytes: DEFAULT_MEDIUM_CACHE_BYTES,
            large_min: 64 << 10,
            large_max: 1 << 30,
            large_alignment: 4096,
            total_memory: usize::MAX,
            use_huge_pages: false,
            checked: false,
            retain_empty: 2,
            retain_table_memory_ms: DEFAULT_RETAIN_TABLE_MEMORY_MS,
            growth_factor: 2,
            numa: NumaBinding::NONE,
        }
    }

    pub(crate) fn small_sizes(&self) -> &[usize] {
        &self.small_sizes[..self.small_count]
    }

    pub(crate) fn medium_sizes(&self) -> &[usize] {
        &self.medium_sizes[..self.medium_count]
    }
}

/// The TOML layout: reading with exact key names in errors, and writing.
mod toml_form {
    use super::*;
    use toml::{Table, Value};

    fn err(key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::new(key, msg)
    }

    fn table<'a>(v: &'a Value, key: &str) -> Result<&'a Table, ConfigError> {
        v.as_table()
            .ok_or_else(|| err(key, format!("expected a table, found {}", v.type_str())))
    }

    fn size(v: &Value, key: &str) -> Result<usize, ConfigError> {
        match v.as_integer() {
            Some(i) if i >= 0 => {
                usize::try_from(i).map_err(|_| err(key, format!("{i} does not fit in usize")))
            }
            Some(i) => Err(err(key, format!("{i} is negative"))),
            None => Err(err(
                key,
                format!("expected an integer, found {}", v.type_str()),
            )),
        }
    }

    fn flag(v: &Value, key: &str) -> Result<bool, ConfigError> {
        v.as_bool()
            .ok_or_else(|| err(key, format!("expected a boolean, found {}", v.type_str())))
    }

    fn sizes(v: &Value, key: &str) -> Result<Vec<usize>, ConfigError> {
        let arr = v.as_array().ok_or_else(|| {
            err(
                key,
                format!("expected an array of integers, found {}", v.type_str()),
            )
        })?;
        arr.iter().map(|x| size(x, key)).collect()
    }

    fn unknown(key: &str, known: &[&str]) -> ConfigError {
        err(
            key,
            format!("unknown key; expected one of: {}", known.join(", ")),
        )
    }

    pub(super) fn apply(root: &Table, c: &mut PoolConfig) -> Result<(), ConfigError> {
        for (k, v) in root {
            if k != "memory_pools" {
                return Err(unknown(k, &["memory_pools"]));
            }
            apply_pools(table(v, "memory_pools")?, c)?;
        }
        Ok(())
    }

    fn apply_pools(t: &Table, c: &mut PoolConfig) -> Result<(), ConfigError> {
        const KNOWN: &[&str] = &[
            "small",
            "medium",
            "large",
            "total_memory",
            "use_huge_pages",
            "checked",
            "retain_empty",
            "retain_table_memory_ms",
            "growth_factor",
            "numa_node",
            "numa_interleave",
        ];
        for (k, v) in t {
            let key = format!("memory_pools.{k}");
            match k.as_str() {
                "small" => apply_small(table(v, &key)?, &mut c.small)?,
                "medium" => apply_medium(table(v, &key)?, &mut c.medium)?,
                "large" => apply_large(table(v, &key)?, &mut c.large)?,
                "total_memory" => c.total_memory = Some(size(v, &key)?),
                "use_huge_pages" => c.use_huge_pages = flag(v, &key)?,
                "checked" => c.checked = flag(v, &key)?,
                "retain_empty" => c.retain_empty = size(v, &key)?,
                "retain_table_memory_ms" => c.retain_table_memory_ms = size(v, &key)? as u64,
                "growth_factor" => c.growth_factor = size(v, &key)?,
                "numa_node" => {
                    let n = size(v, &key)?;
                    let n =
                        u32::try_from(n).map_err(|_| err(&key, format!("{n} is not a node")))?;
                    c.numa = NumaPlacement::Node(n);
                }
                "numa_interleave" => {
                    if flag(v, &key)? {
                        c.numa = NumaPlacement::Interleave;
                    }
                }
                _ => return Err(unknown(&key, KNOWN)),
            }
        }
        if t.contains_key("numa_node")
            && t.get("numa_interleave").and_then(|v| v.as_bool()) == Some(true)
        {
            return Err(err(
                "memory_pools.numa_interleave",
                "numa_node is set too: a pool is bound to one node or interleaved, not both",
            ));
        }
        Ok(())
    }

    fn apply_small(t: &Table, s: &mut SmallConfig) -> Result<(), ConfigError> {
        const KNOWN: &[&str] = &[
            "sizes",
            "blocks_per_chunk",
            "max_chunks",
            "thread_cache_size",
            "alignment",
        ];
        for (k, v) in t {
            let key = format!("memory_pools.small.{k}");
            match k.as_str() {
                "sizes" => s.sizes = sizes(v, &key)?,
                "blocks_per_chunk" => s.blocks_per_chunk = size(v, &key)?,
                "max_chunks" => s.max_chunks = size(v, &key)?,
                "thread_cache_size" => s.thread_cache_size = size(v, &key)?,
                "alignment" => s.alignment = size(v, &key)?,
                _ => return Err(unknown(&key, KNOWN)),
            }
        }
        Ok(())
    }

    fn apply_medium(t: &Table, m: &mut MediumConfig) -> Result<(), ConfigError> {
        const KNOWN: &[&str] = &[
            "sizes",
            "segregated_fit",
            "coalescing",
            "region_size",
            "thread_cache_bytes",
        ];
        for (k, v) in t {
            let key = format!("memory_pools.medium.{k}");
            match k.as_str() {
                "sizes" => m.sizes = sizes(v, &key)?,
                "segregated_fit" => m.segregated_fit = flag(v, &key)?,
                "coalescing" => m.coalescing = flag(v, &key)?,
                "region_size" => m.region_size = size(v, &key)?,
                "thread_cache_bytes" => m.thread_cache_bytes = size(v, &key)?,
                _ => return Err(unknown(&key, KNOWN)),
            }
        }
        Ok(())
    }

    fn apply_large(t: &Table, l: &mut LargeConfig) -> Result<(), ConfigError> {
        const KNOWN: &[&str] = &["strategy", "min_size", "max_size", "alignment"];
        for (k, v) in t {
            let key = format!("memory_pools.large.{k}");
            match k.as_str() {
                "strategy" => match v.as_str() {
                    Some("buddy_allocator") => l.strategy = LargeStrategy::BuddyAllocator,
                    Some(other) => {
                        return Err(err(
                            &key,
                            format!("unknown strategy {other:?}; expected \"buddy_allocator\""),
                        ));
                    }
                    None => {
                        return Err(err(
                            &key,
                            format!("expected a string, found {}", v.type_str()),
                        ));
                    }
                },
                "min_size" => l.min_size = size(v, &key)?,
                "max_size" => l.max_size = size(v, &key)?,
                "alignment" => l.alignment = size(v, &key)?,
                _ => return Err(unknown(&key, KNOWN)),
            }
        }
        Ok(())
    }

    pub(super) fn render(c: &PoolConfig) -> String {
        let list = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::from("[memory_pools]\n");
        if let Some(t) = c.total_memory {
            out += &format!("total_memory = {t}\n");
        }
        out += &format!(
            "use_huge_pages = {}\nchecked = {}\nretain_empty = {}\nretain_table_memory_ms = {}\ngrowth_factor = {}\n",
            c.use_huge_pages, c.checked, c.retain_empty, c.retain_table_memory_ms, c.growth_factor
        );
        match c.numa {
            NumaPlacement::Anywhere => {}
            NumaPlacement::Node(n) => out += &format!("numa_node = {n}\n"),
            NumaPlacement::Interleave => out += "numa_interleave = true\n",
        }
        out += &format!(
            "\n[memory_pools.small]\nsizes = [{}]\nblocks_per_chunk = {}\nmax_chunks = {}\nthread_cache_size = {}\nalignment = {}\n",
            list(&c.small.sizes),
            c.small.blocks_per_chunk,
            c.small.max_chunks,
            c.small.thread_cache_size,
            c.small.alignment
        );
        out += &format!(
            "\n[memory_pools.medium]\nsizes = [{}]\nsegregated_fit = {}\ncoalescing = {}\nregion_size = {}\nthread_cache_bytes = {}\n",
            list(&c.medium.sizes),
            c.medium.segregated_fit,
            c.medium.coalescing,
            c.medium.region_size,
            c.medium.thread_cache_bytes
        );
        out += &format!(
            "\n[memory_pools.large]\nstrategy = \"buddy_allocator\"\nmin_size = {}\nmax_size = {}\nalignment = {}\n",
            c.large.min_size, c.large.max_size, c.large.alignment
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(r: Result<PoolConfig, Error>) -> String {
        match r {
            Err(Error::Config(e)) => e.key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn presets_are_valid_and_global_default_matches_default() {
        for c in [
            PoolConfig::default(),
            PoolConfig::high_performance(),
            PoolConfig::debug(),
        ] {
            c.validate().unwrap();
        }
        let a = PoolConfig::default().resolve().unwrap();
        let b = ResolvedConfig::global_default();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn the_documented_layout_parses() {
        let text = r#"
            [memory_pools.small]
            sizes = [8, 16, 32, 64, 128, 256]
            blocks_per_chunk = 1024
            max_chunks = 100
            thread_cache_size = 64
            [memory_pools.medium]
            sizes = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
            segregated_fit = true
            coalescing = true
            [memory_pools.large]
            strategy = "buddy_allocator"
            min_size = 65536
            max_size = 1073741824
            alignment = 4096
        "#;
        let c = PoolConfig::from_toml_str(text).unwrap();
        assert_eq!(c.small.max_chunks, 100);
        assert_eq!(c.large.max_size, 1 << 30);
    }

    #[test]
    fn toml_round_trips() {
        for mut c in [
            PoolConfig::default(),
            PoolConfig::high_performance(),
            PoolConfig::debug(),
        ] {
            c.total_memory = Some(1 << 30);
            assert_eq!(PoolConfig::from_toml_str(&c.to_toml_string()).unwrap(), c);
        }
    }

    #[test]
    fn table_memory_retention_reads_from_toml_and_is_off_in_checked_mode() {
        let c = PoolConfig::from_toml_str("[memory_pools]\nretain_table_memory_ms = 250").unwrap();
        assert_eq!(c.retain_table_memory_ms, 250);
        assert_eq!(c.resolve().unwrap().retain_table_memory_ms, 250);
        let checked = PoolConfig { checked: true, ..c };
        assert_eq!(checked.resolve().unwrap().retain_table_memory_ms, 0);
        assert_eq!(PoolConfig::debug().retain_table_memory_ms, 0);
    }

    #[test]
    fn impossible_values_name_their_key() {
        let cases = [
            (
                "[memory_pools.small]\nsizes = [16, 8]",
                "memory_pools.small.sizes",
            ),
            (
                "[memory_pools.small]\nsizes = [8, 12]",
                "memory_pools.small.sizes",
            ),
            (
                "[memory_pools.small]\nsizes = [0, 8]",
                "memory_pools.small.sizes",
            ),
            (
                "[memory_pools.small]\nsizes = []",
                "memory_pools.small.sizes",
            ),
            (
                "[memory_pools.small]\nsizes = \"8\"",
                "memory_pools.small.sizes",
            ),
            (
                "[memory_pools.small]\nblocks_per_chunk = 0",
                "memory_pools.small.blocks_per_chunk",
            ),
            (
                "[memory_pools.small]\nthread_cache_size = -1",
                "memory_pools.small.thread_cache_size",
            ),
            (
                "[memory_pools.small]\nmax_chunks = 1.5",
                "memory_pools.small.max_chunks",
            ),
            (
                "[memory_pools.small]\nbogus = 1",
                "memory_pools.small.bogus",
            ),
            (
                "[memory_pools.medium]\nsizes = [128, 1024]",
                "memory_pools.medium.sizes",
            ),
            (
                "[memory_pools.medium]\ncoalescing = 1",
                "memory_pools.medium.coalescing",
            ),
            (
                "[memory_pools.medium]\nregion_size = 100000",
                "memory_pools.medium.region_size",
            ),
            (
                "[memory_pools.medium]\nthread_cache_bytes = 2147483648",
                "memory_pools.medium.thread_cache_bytes",
            ),
            (
                "[memory_pools.medium]\nthread_cache_bytes = -1",
                "memory_pools.medium.thread_cache_bytes",
            ),
            (
                "[memory_pools.large]\nmin_size = 2097152\nmax_size = 1048576",
                "memory_pools.large.min_size",
            ),
            (
                "[memory_pools.large]\nstrategy = \"slab\"",
                "memory_pools.large.strategy",
            ),
            (
                "[memory_pools.large]\nalignment = 1000",
                "memory_pools.large.alignment",
            ),
            (
                "[memory_pools]\ntotal_memory = 0",
                "memory_pools.total_memory",
            ),
            (
                "[memory_pools]\ngrowth_factor = 3",
                "memory_pools.growth_factor",
            ),
            ("[memory_pools]\nsmall = 3", "memory_pools.small"),
            ("[pools]\nx = 1", "pools"),
            ("not toml [", "memory_pools"),
        ];
        for (text, key) in cases {
            assert_eq!(key_of(PoolConfig::from_toml_str(text)), key, "for {text:?}");
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        assert!(matches!(
            PoolConfig::from_toml_file("/nonexistent/pool.toml"),
            Err(Error::Io(_))
        ));
    }
}
