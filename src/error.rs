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
    /// The GPU refused to allocate more device memory (for an arena of a device pool,
    /// `cuda::DevicePool`).
    DeviceRefused,
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
            OomReason::DeviceRefused => {
                f.write_str("the GPU refused to allocate more device memory")
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

/// A `ConfigError` is an error of its own, so that code reading a configuration can
/// return it through `Box<dyn Error>` or `anyhow`, and it is the
/// [`source`](std::error::Error::source) of [`Error::Config`].
///
/// ```
/// use std::error::Error as _;
/// use neurostore::{Error, PoolConfig};
///
/// let err = PoolConfig::from_toml_str("[memory_pools.small]\nsizes = [64, 32]").unwrap_err();
/// let source = err.source().expect("a config error has its key and message as source");
/// assert!(source.to_string().contains("memory_pools.small.sizes"));
/// let Error::Config(config_error) = err else { panic!("a config error") };
/// let boxed: Box<dyn std::error::Error> = config_error.into();
/// assert!(boxed.to_string().starts_with("`memory_pools.small.sizes`"));
/// ```
impl std::error::Error for ConfigError {}

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
    Config(#[source] ConfigError),
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
    /// A snapshot could not be written or read: the file is corrupt, truncated, foreign,
    /// or names types the reader does not know. See [`SnapshotError`].
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A snapshot holds a type under this name whose schema fingerprint differs from the
    /// one compiled into this program: the struct changed (a field was added, renamed,
    /// retyped or reordered) since the file was written. Nothing was loaded.
    #[error(
        "schema mismatch for `{type_name}`: this program expects schema {expected:#018x}, \
         the snapshot holds {found:#018x} (the type changed since the file was written)"
    )]
    SchemaMismatch {
        /// The type's [`Pooled::TYPE_NAME`](crate::Pooled::TYPE_NAME).
        type_name: String,
        /// The fingerprint of the type in this program.
        expected: u64,
        /// The fingerprint the snapshot was written with.
        found: u64,
    },
    /// No usable GPU: the CUDA driver or NVRTC library cannot be loaded, no device has
    /// the ordinal asked for, or the crate was built without its `cuda` feature. Nothing
    /// was started; the same work can run on the CPU.
    #[error("CUDA is unavailable: {reason}")]
    CudaUnavailable {
        /// What is missing, in words.
        reason: String,
    },
    /// A CUDA driver or NVRTC call failed on a working device.
    #[error("CUDA error in {operation}: {message}")]
    Cuda {
        /// The operation that failed (`cuMemcpyHtoDAsync`, `compile lif_step`).
        operation: &'static str,
        /// The driver's or compiler's message.
        message: String,
    },
    /// The ranks of a distributed network could not complete a collective step together:
    /// a rank left, sent what no rank of this library sends, or is not where the others
    /// are (another step, another `dt`, a checkpoint that another rank could not load).
    #[error("distributed exchange, rank {rank}: {message}")]
    Exchange {
        /// The rank that saw the problem.
        rank: usize,
        /// What was wrong, in words.
        message: String,
    },
}

/// Why a snapshot could not be written or read. Every way a file can be wrong has its
/// own variant; a load that returns one has built nothing the caller can see.
///
/// Offsets count bytes from the start of the file (or stream).
///
/// ```
/// use neurostore::{Error, SnapshotError, Store, snapshot::TypeRegistry};
///
/// let err = Store::load_from(&b"not a snapshot"[..], &TypeRegistry::new()).unwrap_err();
/// assert!(matches!(err, Error::Snapshot(SnapshotError::BadMagic { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file does not start with the snapshot magic: it is not a neurostore snapshot.
    #[error("not a neurostore snapshot: the file starts with {found:02x?}")]
    BadMagic {
        /// The first bytes read (fewer than 8 if the file is shorter).
        found: Vec<u8>,
    },
    /// The file was written in a format version this build cannot read.
    #[error("format version {found} is not supported (this build reads versions 1 to {supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The byte-order mark is not the little-endian one every v1 file carries.
    #[error("byte-order mark {found:#010x} is not the little-endian mark 0x0a0b0c0d")]
    ByteOrder {
        /// The mark as read.
        found: u32,
    },
    /// The file ends inside a section.
    #[error("truncated: the file ends at byte {offset}, inside the {section} section")]
    Truncated {
        /// The section being read.
        section: String,
        /// Where the data ran out.
        offset: u64,
    },
    /// A section's bytes do not match its checksum.
    #[error(
        "checksum mismatch in the {section} section at byte {offset}: stored {stored:#010x}, \
         computed {computed:#010x}"
    )]
    ChecksumMismatch {
        /// The section whose checksum failed (`file` for the footer's whole-file checksum).
        section: String,
        /// Where the section starts.
        offset: u64,
        /// The checksum written in the file.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// A section other than the one the format requires at this point.
    #[error("expected a {expected} section at byte {offset}, found tag {found:?}")]
    UnexpectedSection {
        /// The tag the format requires here.
        expected: String,
        /// The tag read, as text where printable.
        found: String,
        /// Where the section starts.
        offset: u64,
    },
    /// A field holds a value the format does not allow (a length that does not add up,
    /// a string that is not UTF-8, a chunk size that is not a power of two, ...).
    #[error("malformed {section} section at byte {offset}: {message}")]
    Malformed {
        /// The section holding the field.
        section: String,
        /// Where the section starts.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// Bytes follow the footer.
    #[error("{extra} unexpected byte(s) after the footer at byte {offset}")]
    TrailingBytes {
        /// Where the footer ends.
        offset: u64,
        /// At least this many bytes follow (reading stops at the first).
        extra: u64,
    },
    /// The file holds a table of a type the [`TypeRegistry`](crate::snapshot::TypeRegistry)
    /// does not list.
    #[error("the snapshot holds a table of `{type_name}`, which the type registry does not list")]
    UnknownType {
        /// The type's name in the file.
        type_name: String,
    },
    /// The file's objects have another size or alignment than the type in this program.
    #[error(
        "`{type_name}` objects are {found_size} bytes aligned to {found_align} in the snapshot, \
         but {expected_size} bytes aligned to {expected_align} here"
    )]
    ElementSize {
        /// The type's name.
        type_name: String,
        /// Size of the type in this program.
        expected_size: u64,
        /// Alignment of the type's table in this program.
        expected_align: u64,
        /// Size in the file.
        found_size: u64,
        /// Alignment in the file.
        found_align: u64,
    },
    /// The file encodes the type's objects otherwise than this program does (raw `Pod`
    /// bytes against serde + bincode).
    #[error("`{type_name}` objects are encoded as {found} in the snapshot, but as {expected} here")]
    EncodingMismatch {
        /// The type's name.
        type_name: String,
        /// This program's encoding.
        expected: String,
        /// The file's encoding.
        found: String,
    },
    /// The slot table contradicts itself or the objects: a live slot without an object,
    /// two slots at one place, a place outside every chunk, a list of vacant slots (in
    /// files before format version 3) that is not the vacant slots.
    #[error("inconsistent slot table of `{type_name}`: {message}")]
    InconsistentSlots {
        /// The table's type name.
        type_name: String,
        /// What contradicts what.
        message: String,
    },
    /// A graph checkpoint whose sections each pass their checks but contradict one
    /// another: a synapse naming a slot that holds no neuron, a neuron beyond the
    /// graph's columns, input in flight the graph could not have, and the like.
    #[error("inconsistent graph checkpoint: {message}")]
    InconsistentGraph {
        /// What contradicts what.
        message: String,
    },
    /// An object's bytes could not be decoded (serde + bincode).
    #[error("object {index} of `{type_name}` does not decode: {message}")]
    Decode {
        /// The table's type name.
        type_name: String,
        /// The object's position in storage order.
        index: u64,
        /// The decoder's message.
        message: String,
    },
    /// An object could not be encoded (serde + bincode) while saving.
    #[error("an object of `{type_name}` does not encode: {message}")]
    Encode {
        /// The table's type name.
        type_name: String,
        /// The encoder's message.
        message: String,
    },
    /// The type declares no snapshot encoding: derive it with `#[pooled(pod)]` (raw bytes)
    /// or `#[pooled(serde)]` (serde + bincode).
    #[error(
        "`{type_name}` has no snapshot encoding: derive Pooled with #[pooled(pod)] or \
         #[pooled(serde)]"
    )]
    NotPersistable {
        /// The type's name.
        type_name: String,
    },
    /// A table of the store was made without [`Store::register`](crate::Store::register),
    /// so the store has no name, schema or encoding to save it under.
    #[error(
        "the store's table of `{type_name}` was not made with Store::register, so it cannot be \
         saved (register the type before inserting)"
    )]
    Unregistered {
        /// The table's Rust type name.
        type_name: String,
    },
    /// Two types under one name: in a registry, in a store being saved, or in a file.
    #[error("two types are named `{type_name}`: snapshot type names must be unique")]
    DuplicateType {
        /// The name.
        type_name: String,
    },
    /// The file holds another kind of snapshot (a single table where a store was asked
    /// for, or a table of another type).
    #[error("the snapshot holds {found}, not {expected}")]
    WrongContent {
        /// What the caller asked to load.
        expected: String,
        /// What the file holds.
        found: String,
    },
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl Error {
    /// The [`Error::InvalidHandle`] for `handle`.
    #[cfg(not(loom))]
    pub(crate) fn invalid_handle<T>(handle: crate::handle::Handle<T>) -> Self {
        Error::InvalidHandle {
            type_name: crate::handle::short_type_name::<T>(),
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
