//! How a type's objects are written in snapshots, declared beside the type as
//! [`Pooled::CODEC`](crate::Pooled::CODEC). This module only says which encoding a type
//! has and keeps the per-type functions it needs (byte views of `Pod` objects, one
//! object's serde + bincode form); the snapshot layer applies them to whole tables.
//!
//! - [`Encoding::RawPod`]: `bytemuck::Pod` objects as the bytes they are in chunk memory,
//!   run by run in storage order, with no per-object framing; a load reads them straight
//!   into the new table's chunks.
//! - [`Encoding::Bincode`]: each object through serde and bincode 2 (standard
//!   configuration: little-endian, variable-length integers), one after another in
//!   storage order. Decoding one object may claim at most [`MAX_DECODED_OBJECT_BYTES`].

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The most memory (in bytes) the decoding of one bincode object may claim: a length
/// field in a crafted file cannot make a load allocate more.
pub const MAX_DECODED_OBJECT_BYTES: usize = 1 << 32;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODED_OBJECT_BYTES>()
}

/// How a type's objects are written in a snapshot; chosen per type by its [`Codec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encoding {
    /// The type declares no encoding: tables of it cannot be saved.
    Unsupported,
    /// Raw bytes of `bytemuck::Pod` objects (`#[pooled(pod)]`).
    RawPod,
    /// serde + bincode 2 (`#[pooled(serde)]`).
    Bincode,
}

impl Encoding {
    /// The byte that names the encoding in a file.
    pub(crate) const fn code(self) -> u8 {
        match self {
            Encoding::Unsupported => 0,
            Encoding::RawPod => 1,
            Encoding::Bincode => 2,
        }
    }

    /// The encoding a file's byte names.
    pub(crate) fn from_code(code: u8) -> Option<Encoding> {
        match code {
            1 => Some(Encoding::RawPod),
            2 => Some(Encoding::Bincode),
            _ => None,
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoding::Unsupported => "no encoding",
            Encoding::RawPod => "raw Pod bytes",
            Encoding::Bincode => "serde + bincode",
        })
    }
}

/// Evidence that `T` is `bytemuck::Pod` (only [`Codec::pod`] makes one), with its byte
/// view: code that holds a `PodBytes<T>` may treat any bytes as objects of `T`.
pub(crate) struct PodBytes<T> {
    as_bytes: fn(&[T]) -> &[u8],
}

impl<T> Clone for PodBytes<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for PodBytes<T> {}

impl<T> PodBytes<T> {
    /// The evidence for a `Pod` type.
    pub(crate) const fn new() -> Self
    where
        T: bytemuck::Pod,
    {
        PodBytes {
            as_bytes: bytemuck::cast_slice::<T, u8>,
        }
    }

    /// The bytes of `objects`.
    pub(crate) fn bytes<'a>(&self, objects: &'a [T]) -> &'a [u8] {
        (self.as_bytes)(objects)
    }
}

/// Decodes one object from the front of the bytes: the object and the bytes used.
type DecodeOne<T> = fn(&[u8]) -> Result<(T, usize), String>;

/// One object's serde + bincode form, both ways. Errors are bincode's messages.
pub(crate) struct SerdeForm<T> {
    /// Appends the object's encoding.
    pub(crate) encode: fn(&T, &mut Vec<u8>) -> Result<(), String>,
    /// Decodes one object from the front of the bytes.
    pub(crate) decode: DecodeOne<T>,
}

impl<T> Clone for SerdeForm<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SerdeForm<T> {}

fn encode_bincode<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    bincode::serde::encode_into_std_write(value, out, bincode_config())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn decode_bincode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), String> {
    bincode::serde::decode_from_slice::<T, _>(bytes, bincode_config()).map_err(|e| e.to_string())
}

/// What a codec keeps for its encoding.
enum Form<T> {
    Unsupported,
    Pod(PodBytes<T>),
    Serde(SerdeForm<T>),
}

impl<T> Clone for Form<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Form<T> {}

/// The snapshot encoding of a type: [`Pooled::CODEC`](crate::Pooled::CODEC), set by
/// `#[pooled(pod)]` ([`Codec::pod`]) or `#[pooled(serde)]` ([`Codec::serde`]); without
/// either it is [`Codec::unsupported`] and tables of the type cannot be saved.
///
/// ```
/// use neurostore::{Pooled, snapshot::Encoding};
///
/// #[derive(Pooled, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// #[pooled(pod)]
/// struct Sample { t: f32, v: f32 }
///
/// #[derive(Pooled, serde::Serialize, serde::Deserialize)]
/// #[pooled(serde)]
/// struct Label { text: String }
///
/// #[derive(Pooled)]
/// struct Scratch { buf: Vec<u8> }
///
/// assert_eq!(Sample::CODEC.encoding(), Encoding::RawPod);
/// assert_eq!(Label::CODEC.encoding(), Encoding::Bincode);
/// assert_eq!(Scratch::CODEC.encoding(), Encoding::Unsupported);
/// ```
pub struct Codec<T> {
    form: Form<T>,
}

impl<T> Clone for Codec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Codec<T> {}

impl<T> std::fmt::Debug for Codec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("encoding", &self.encoding())
            .finish()
    }
}

impl<T> Codec<T> {
    /// No encoding: saving a table of `T` returns
    /// [`SnapshotError::NotPersistable`](crate::SnapshotError::NotPersistable).
    pub const fn unsupported() -> Self {
        Codec {
            form: Form::Unsupported,
        }
    }

    /// Raw bytes: objects are written and read as the bytes they are in memory.
    pub const fn pod() -> Self
    where
        T: bytemuck::Pod,
    {
        Codec {
            form: Form::Pod(PodBytes::new()),
        }
    }

    /// serde + bincode 2, object by object.
    pub const fn serde() -> Self
    where
        T: Serialize + DeserializeOwned,
    {
        Codec {
            form: Form::Serde(SerdeForm {
                encode: encode_bincode::<T>,
                decode: decode_bincode::<T>,
            }),
        }
    }

    /// The encoding this codec writes.
    pub const fn encoding(&self) -> Encoding {
        match self.form {
            Form::Unsupported => Encoding::Unsupported,
            Form::Pod(_) => Encoding::RawPod,
            Form::Serde(_) => Encoding::Bincode,
        }
    }

    /// The byte view, for [`Encoding::RawPod`].
    pub(crate) fn pod_bytes(&self) -> Option<PodBytes<T>> {
        match self.form {
            Form::Pod(p) => Some(p),
            _ => None,
        }
    }

    /// One object's form, for [`Encoding::Bincode`].
    pub(crate) fn serde_form(&self) -> Option<SerdeForm<T>> {
        match self.form {
            Form::Serde(s) => Some(s),
            _ => None,
        }
    }
}
