//! Layer 2, **pooled**: what `#[derive(Pooled)]` implements, and the
//! tracing every later layer walks handles with.
//!
//! This module owns the [`Pooled`] trait (a stable type name, a schema fingerprint and
//! the hints a table is built from: [`PoolHints`], [`Retention`], [`ObjectKind`],
//! [`Lifetime`], and the snapshot [`Codec`] of its objects) and the [`Trace`] trait with
//! its [`Tracer`], [`AnyHandle`] and [`trace_handles`]. It builds only on the handle type,
//! so the table and every layer above it can name these traits. The derive itself lives
//! in the `neurostore-derive` crate (`derive/` in the workspace) and is re-exported as
//! [`neurostore::Pooled`](crate::Pooled).
//!
//! Invariants kept here:
//! - `SCHEMA` depends only on the type's source tokens (name, shape, field names, field
//!   type tokens) and its size and alignment, through FNV-1a: never on `TypeId`, a seeded
//!   hasher, the compiler or the machine, so snapshots written by one build are checked
//!   against another ([`schema_fingerprint`] documents the exact recipe);
//! - `HINTS.align` is a power of two, at least the type's own alignment, and divides its
//!   size, so that every object in a chunk aligned to it is aligned to it too;
//! - a derived `trace` visits every handle in every field that is not `#[pooled(skip)]`,
//!   and the null handle is never passed to the tracer.
//!
//! This module has no unsafe code: `lib.rs` declares it `#[forbid(unsafe_code)]`.

mod codec;
mod trace;

pub use codec::{Codec, Encoding, MAX_DECODED_OBJECT_BYTES};
pub(crate) use codec::{PodBytes, SerdeForm};
pub(crate) use trace::EdgeBuffer;
pub use trace::{AnyHandle, Trace, Tracer, trace_handles};

/// How the objects of a table stay alive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Retention {
    /// Objects live until removed, and are roots of tracing (the default).
    #[default]
    Manual,
    /// Objects live while a root or a manual object reaches them through handles; the
    /// garbage collector frees the others.
    Traced,
}

/// What an object is: a label that a table's figures carry
/// ([`TableStats::kind`](crate::table::TableStats::kind)). It does not change where or
/// how objects are stored; that is what [`Retention`], `align` and [`Lifetime`] do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A neuron's state and parameters.
    Neuron,
    /// A connection between two neurons.
    Synapse,
    /// A learnable weight.
    Weight,
    /// A message in flight (a spike, an event).
    Signal,
    /// A unit's activation in a rate-based network.
    Activation,
    /// A gradient of a learnable quantity.
    Gradient,
}

/// How long objects of a type are expected to live. Only [`Short`](Self::Short) changes
/// how a table keeps its objects; `Medium` and `Long` keep the default behaviour and are
/// carried in reports ([`TableStats::lifetime`](crate::table::TableStats::lifetime)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lifetime {
    /// Made and removed within a few simulation steps (spikes in flight). The table keeps
    /// every chunk that empties, committed, for the objects that come next (instead of
    /// giving all but one back to the pool and faulting their pages in again), and a
    /// [`Store`](crate::Store)'s [`DefragPolicy`](crate::DefragPolicy) never moves its
    /// objects (holes refill with the next objects; moving objects about to go is
    /// wasted). An explicit [`defragment`](crate::table::Table::defragment) still
    /// compacts it and gives its empty chunks back. In `cargo bench --bench table`, a
    /// store making and removing 100,000 spikes a round spends 0.5–0.8× the time per
    /// spike with this hint as without it.
    Short,
    /// Made and removed during a run (plastic synapses): the default behaviour.
    Medium,
    /// Live for the whole run (neurons): the default behaviour.
    Long,
}

/// The hints a table is built from, given by `#[pooled(...)]` attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolHints {
    /// `retention = "manual" | "traced"`: whether the garbage collector may free objects.
    pub retention: Retention,
    /// The alignment of every object in the table's chunks: `align = N`, or the type's own
    /// alignment when that is larger or `align` is absent. A power of two that divides
    /// the type's size.
    pub align: usize,
    /// `kind = "..."`: a label for reports.
    pub kind: Option<ObjectKind>,
    /// `lifetime = "..."`: `short` keeps emptied chunks and skips automatic
    /// defragmentation ([`Lifetime::Short`]).
    pub lifetime: Option<Lifetime>,
    /// `pod`: the type is `bytemuck::Pod` (checked when it compiles), so mirrors and
    /// snapshots may copy its bytes.
    pub pod: bool,
}

impl PoolHints {
    /// The hints of a type without the derive: manual, its own alignment, no kind, no
    /// lifetime, not known to be Pod.
    pub const fn of<T>() -> PoolHints {
        PoolHints {
            retention: Retention::Manual,
            align: std::mem::align_of::<T>(),
            kind: None,
            lifetime: None,
            pod: false,
        }
    }
}

/// A type whose objects the store knows by a stable name and schema. Implement it with
/// `#[derive(Pooled)]`, which also implements [`Trace`].
///
/// Attributes, all optional, on the type:
///
/// | attribute | effect |
/// | --- | --- |
/// | `#[pooled(name = "Cell")]` | [`TYPE_NAME`](Self::TYPE_NAME) (default: the type's name) |
/// | `#[pooled(retention = "traced")]` | [`Retention::Traced`] (default `"manual"`) |
/// | `#[pooled(align = 64)]` | every object aligned to 64 bytes; the size must be a multiple |
/// | `#[pooled(kind = "neuron")]` | [`ObjectKind`], a label for reports: `neuron`, `synapse`, `weight`, `signal`, `activation`, `gradient` |
/// | `#[pooled(lifetime = "short")]` | [`Lifetime`]: `short` (emptied chunks kept, no automatic defragmentation), `medium`, `long` |
/// | `#[pooled(pod)]` | checks that the type is `bytemuck::Pod` when it compiles; snapshots write its raw bytes ([`Codec::pod`](crate::snapshot::Codec::pod)) |
/// | `#[pooled(serde)]` | snapshots encode it with serde + bincode ([`Codec::serde`](crate::snapshot::Codec::serde)); the type must implement `Serialize` and `Deserialize` |
///
/// and on a field, `#[pooled(skip)]` leaves it out of [`Trace`]. Keys combine:
/// `#[pooled(kind = "synapse", pod)]`.
///
/// The derive also registers a type without generic parameters when the program links
/// (through the `inventory` crate), so its hints hold however its first object arrives:
/// a [`Store`](crate::Store) or [`SharedStore`](crate::SharedStore) builds the type's
/// table from them on its first insert, and a snapshot load finds the type by its name
/// without a [`TypeRegistry`](crate::TypeRegistry) listing it. A generic type cannot be
/// registered that way: call [`Store::register`](crate::Store::register) for each
/// instance before its first insert.
///
/// ```
/// use neurostore::{Handle, Pooled, Retention, trace_handles};
///
/// #[derive(Pooled)]
/// struct Cell {
///     potential: f32,
///     partner: Option<Handle<Cell>>,
/// }
///
/// #[derive(Pooled)]
/// #[pooled(name = "Message", retention = "traced", lifetime = "short")]
/// struct Msg {
///     to: Handle<Cell>,
///     #[pooled(skip)]
///     cached_from: Handle<Cell>,
/// }
///
/// assert_eq!(Cell::TYPE_NAME, "Cell");
/// assert_eq!(Msg::TYPE_NAME, "Message");
/// assert_eq!(Msg::HINTS.retention, Retention::Traced);
/// assert_ne!(Cell::SCHEMA, Msg::SCHEMA);
///
/// let to = Handle::<Cell>::from_bits(7 | 1 << 32);
/// let msg = Msg { to, cached_from: to };
/// let seen = trace_handles(&msg);
/// assert_eq!(seen.len(), 1); // the skipped field is not visited
/// assert_eq!(seen[0].typed::<Cell>(), Some(to));
/// ```
pub trait Pooled: Sized + 'static {
    /// The type's stable name: the same in every build, used by snapshots and reports.
    const TYPE_NAME: &'static str;
    /// A fingerprint of the name, the shape, the field names and field type tokens, and
    /// the size and alignment ([`schema_fingerprint`]). Any change to the layout a
    /// snapshot relies on changes it.
    const SCHEMA: u64;
    /// What tables of this type are built from.
    const HINTS: PoolHints;
    /// How snapshots encode the type's objects: raw bytes with `#[pooled(pod)]`, serde +
    /// bincode with `#[pooled(serde)]`, none otherwise (tables of the type cannot be
    /// saved).
    const CODEC: Codec<Self> = Codec::unsupported();
}

/// FNV-1a, 64 bits: the prime. The offset basis starts the derive's token hash.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The schema fingerprint of a type: `token_hash` (64-bit FNV-1a of the canonical text
/// the derive builds from the type's name, shape, field names and field type tokens)
/// continued, FNV-1a, over the size and then the alignment, each as 8 little-endian bytes.
///
/// The canonical text of `struct Pair { a: u32, b: Handle<Pair> }` is
/// `neurostore-schema-v1|Pair|struct{a:u32;b:Handle<Pair>;}`: words separated by one space
/// only where two meet, no other whitespace; tuple fields are named by index, enum
/// variants are listed with their fields and explicit discriminants.
///
/// ```
/// use neurostore::pooled::schema_fingerprint;
///
/// assert_ne!(schema_fingerprint(1, 8, 4), schema_fingerprint(1, 8, 8));
/// assert_ne!(schema_fingerprint(1, 8, 4), schema_fingerprint(1, 16, 4));
/// ```
pub const fn schema_fingerprint(token_hash: u64, size: usize, align: usize) -> u64 {
    let mut h = token_hash;
    let words = [size as u64, align as u64];
    let mut w = 0;
    while w < words.len() {
        let bytes = words[w].to_le_bytes();
        let mut i = 0;
        while i < bytes.len() {
            h = (h ^ bytes[i] as u64).wrapping_mul(FNV_PRIME);
            i += 1;
        }
        w += 1;
    }
    h
}

/// The largest object alignment a table offers: one page.
pub const MAX_ALIGN: usize = 4096;

/// Why an alignment hint cannot hold ([`hint_align`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AlignHintError {
    /// The alignment asked for is not a power of two.
    NotPowerOfTwo,
    /// The alignment asked for is above [`MAX_ALIGN`].
    TooLarge,
    /// The type's size is not a multiple of the alignment asked for, so objects packed
    /// in a chunk could not all be aligned.
    SizeNotMultiple,
}

impl AlignHintError {
    /// What is wrong and what to do, in words (usable in `const` code, as the derive's
    /// compile-time check does).
    pub const fn message(self) -> &'static str {
        match self {
            AlignHintError::NotPowerOfTwo => "#[pooled(align = N)]: N must be a power of two",
            AlignHintError::TooLarge => "#[pooled(align = N)]: N must be at most 4096 (a page)",
            AlignHintError::SizeNotMultiple => {
                "#[pooled(align = N)] needs the type's size to be a multiple of N, so that \
                 every object in a chunk is aligned: add #[repr(align(N))] or padding fields"
            }
        }
    }
}

impl std::fmt::Display for AlignHintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AlignHintError {}

/// The alignment objects of `T` get from `#[pooled(align = requested)]` (0: none asked):
/// the larger of `requested` and `T`'s own alignment, or why `requested` cannot hold.
/// The derive evaluates it in a constant, so a bad `align` fails to compile.
///
/// ```
/// use neurostore::pooled::{AlignHintError, hint_align};
///
/// assert_eq!(hint_align::<[f32; 16]>(64), Ok(64));
/// assert_eq!(hint_align::<u64>(0), Ok(8));
/// assert_eq!(hint_align::<u64>(2), Ok(8));
/// assert_eq!(hint_align::<[u8; 48]>(48), Err(AlignHintError::NotPowerOfTwo));
/// assert_eq!(hint_align::<[u8; 24]>(16), Err(AlignHintError::SizeNotMultiple));
/// assert_eq!(hint_align::<[u8; 8192]>(8192), Err(AlignHintError::TooLarge));
/// ```
pub const fn hint_align<T>(requested: usize) -> Result<usize, AlignHintError> {
    let natural = std::mem::align_of::<T>();
    if requested <= natural {
        return Ok(natural);
    }
    if !requested.is_power_of_two() {
        return Err(AlignHintError::NotPowerOfTwo);
    }
    if requested > MAX_ALIGN {
        return Err(AlignHintError::TooLarge);
    }
    if !std::mem::size_of::<T>().is_multiple_of(requested) {
        return Err(AlignHintError::SizeNotMultiple);
    }
    Ok(requested)
}

/// `T::HINTS` with its alignment checked and raised to `T`'s own, when the code that
/// names [`HINTS`](Self::HINTS) compiles: a hand-written [`Pooled`] impl with an
/// alignment that cannot hold fails to compile where its table is made, as a derived one
/// fails where the type is declared.
pub(crate) struct CheckedHints<T>(std::marker::PhantomData<T>);

impl<T: Pooled> CheckedHints<T> {
    pub(crate) const HINTS: PoolHints = match hint_align::<T>(T::HINTS.align) {
        Ok(align) => PoolHints { align, ..T::HINTS },
        Err(e) => panic!("{}", e.message()),
    };
}

/// Picks, by autoref, how the derive's generated code registers a type when the program
/// links: the store's and the snapshot layer's registration traits are implemented for
/// `&Probe<T>` when `T` can live in a store (`Send + Sync`) and for `Probe<T>` otherwise,
/// so `(&&Probe::<T>::new()).in_store(store)` picks the first that applies.
#[doc(hidden)]
pub struct Probe<T>(std::marker::PhantomData<T>);

impl<T> Probe<T> {
    /// The probe of `T`.
    pub const fn new() -> Self {
        Probe(std::marker::PhantomData)
    }
}

impl<T> Default for Probe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Items the derive's generated code names. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use super::Probe;
    pub use bytemuck::Pod;
    pub use serde::Serialize;
    pub use serde::de::DeserializeOwned;
}
