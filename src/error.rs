//! The crate's one error type.
//!
//! Every fallible operation in neurostore returns [`Error`]. Its variants are things a
//! caller can act on: retry with less memory, fix a configuration key, stop using a
//! pointer. Nothing a caller passes makes the crate panic; panics are reserved for bugs.

use std::fmt;

/// Why an allocation could not be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OomReason {
    /// Serving the request would take the pool's reserved bytes past `total_memory`.
    MemoryCap {
        /// The configured cap, in bytes.
        limit: usize,
        /// Bytes reserved from the OS when the request arrived.
        reserved: usize,
    },
    /// The small size class already holds `max_chunks` chunks.
    ChunkLimit {
        /// The size class, in bytes.
        class_size: usize,
        /// The configured `memory_pools.small.max_chunks`.
        max_chunks: usize,
    },
    /// The operating system refused to map more memory.
    OsRefused,
    /// The layout cannot be represented (its size overflows when rounded to its alignment).
    LayoutTooLarge,
}

impl fmt::Display for OomReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OomReason::MemoryCap { limit, reserved } => write!(
                f,
                "the pool's total_memory cap of {limit} bytes would be exceeded ({reserved} bytes reserved)"
            ),
            OomReason::ChunkLimit {
                class_size,
                max_chunks,
            } => write!(
                f,
                "the {class_size}-byte size class already holds max_chunks = {max_chunks} chunks"
            ),
            OomReason::OsRefused => f.write_str("the operating system refused to map more memory"),
            OomReason::LayoutTooLarge => {
                f.write_str("the layout's size overflows the address space")
            }
        }
    }
}

/// A configuration value that cannot be used, with the key that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key, as in the TOML layout (`memory_pools.small.sizes`).
    pub key: String,
    /// What is wrong with it and what would be accepted.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// The error type of every fallible neurostore operation.
///
/// ```
/// use neurostore::{Error, HierarchicalPool, PoolConfig};
///
/// let mut config = PoolConfig::default();
/// config.small.sizes = vec![64, 32];
/// match HierarchicalPool::new(config) {
///     Err(Error::Config(e)) => assert_eq!(e.key, "memory_pools.small.sizes"),
///     other => panic!("expected a config error, got {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An allocation of `requested` bytes could not be served; nothing was allocated.
    #[error("out of memory: {requested} bytes (alignment {align}) requested: {reason}")]
    OutOfMemory {
        /// The size that was asked for.
        requested: usize,
        /// The alignment that was asked for.
        align: usize,
        /// Why it could not be served.
        reason: OomReason,
    },
    /// The pointer was not handed out by this pool, or does not start a block it handed out.
    #[error("pointer {address:#x} was not allocated by this pool")]
    ForeignPointer {
        /// The offending address.
        address: usize,
    },
    /// The block at this address is already free.
    #[error("double free of the block at {address:#x}")]
    DoubleFree {
        /// The offending address.
        address: usize,
    },
    /// The layout passed to a deallocation does not match the block's size class or size.
    #[error(
        "layout mismatch at {address:#x}: block holds {block_size} bytes, layout says {layout_size}"
    )]
    LayoutMismatch {
        /// The block's address.
        address: usize,
        /// The size of the block the pool handed out.
        block_size: usize,
        /// The size the caller passed.
        layout_size: usize,
    },
    /// A configuration value is impossible; the key names it.
    #[error("invalid configuration {0}")]
    Config(ConfigError),
    /// A table cannot hold more objects: its slot table addresses at most `places` places.
    #[error("the table is full: it can address at most {places} places")]
    TableFull {
        /// The most places a table can address.
        places: u64,
    },
    /// A named pool already exists in the registry.
    #[error("a pool named `{name}` already exists in the registry")]
    PoolExists {
        /// The name that was asked for.
        name: String,
    },
    /// A handle that names no live object was passed where a live one is needed.
    #[error("{type_name} handle {handle:#x} is stale or null: it names no live object")]
    InvalidHandle {
        /// The short name of the handle's target type (`Neuron`).
        type_name: &'static str,
        /// The handle's stable 64-bit form (`Handle::to_bits`).
        handle: u64,
    },
    /// An argument is outside what the operation accepts; nothing was changed.
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument {
        /// The argument or field that is wrong (`dt`, `tau_m`).
        name: &'static str,
        /// What is wrong with it and what would be accepted.
        message: String,
    },
    /// An I/O error, for example while reading a configuration file.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl Error {
    /// The [`Error::InvalidHandle`] for `handle`.
    pub(crate) fn invalid_handle<T>(handle: crate::table::Handle<T>) -> Self {
        Error::InvalidHandle {
            type_name: crate::table::short_type_name::<T>(),
            handle: handle.to_bits(),
        }
    }

    /// An [`Error::InvalidArgument`].
    pub(crate) fn invalid_argument(name: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name,
            message: message.into(),
        }
    }
}
