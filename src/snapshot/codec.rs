//! How a table's objects are encoded in a snapshot: the one module to change to swap an
//! encoding. The rest of the snapshot layer sees objects only as a section of bytes.
//!
//! - [`Encoding::RawPod`]: `bytemuck::Pod` objects as the bytes they are in chunk memory,
//!   run by run in storage order, with no per-object framing; a load reads them straight
//!   into the new table's chunks.
//! - [`Encoding::Bincode`]: each object through serde and bincode 2 (standard
//!   configuration: little-endian, variable-length integers), one after another in
//!   storage order. Decoding one object may claim at most [`MAX_DECODED_OBJECT_BYTES`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, SnapshotError};
use crate::table::Table;

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

/// Hands every piece of a table's encoded objects, in order, to the writer it is given.
type WalkPieces<'a> =
    Box<dyn Fn(&mut dyn FnMut(&[u8]) -> Result<(), Error>) -> Result<(), Error> + 'a>;

/// A table's objects, encoded and ready to write.
pub(crate) enum Encoded<'a> {
    /// `len` bytes borrowed from chunk memory, handed over run by run when written.
    Borrowed { len: u64, walk: WalkPieces<'a> },
    /// Bytes encoded into a buffer.
    Bytes(Vec<u8>),
}

impl Encoded<'_> {
    /// Bytes in all.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Encoded::Borrowed { len, .. } => *len,
            Encoded::Bytes(b) => b.len() as u64,
        }
    }

    /// Calls `write` with the pieces, in order; stops at its first error.
    pub(crate) fn for_each_piece(
        &self,
        write: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self {
            Encoded::Borrowed { walk, .. } => walk(write),
            Encoded::Bytes(b) => write(b),
        }
    }
}

/// Reads exactly `buf.len()` bytes of the objects section into `buf`.
pub(crate) type Fill<'a> = dyn FnMut(&mut [u8]) -> Result<(), Error> + 'a;

/// Decodes a whole objects section (checksum verified) into a restored table.
type DecodeBytes<T> = fn(&mut Table<T>, &[u8], &str) -> Result<(), Error>;
/// Encodes a table's objects.
type EncodeFn<T> = for<'a> fn(&'a Table<T>, &str) -> Result<Encoded<'a>, Error>;

/// How objects come back from an objects section.
pub(crate) enum Decoder<T> {
    /// Streamed straight into chunk memory through a [`Fill`].
    Raw(fn(&mut Table<T>, &mut Fill<'_>) -> Result<(), Error>),
    /// Decoded from the whole section, once its checksum has been verified.
    Bytes(DecodeBytes<T>),
}

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
    encoding: Encoding,
    encode: Option<EncodeFn<T>>,
    decode: Option<Decoder<T>>,
}

impl<T> Clone for Codec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Codec<T> {}

impl<T> Clone for Decoder<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Decoder<T> {}

impl<T> std::fmt::Debug for Codec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("encoding", &self.encoding)
            .finish()
    }
}

impl<T> Codec<T> {
    /// No encoding: saving a table of `T` returns [`SnapshotError::NotPersistable`].
    pub const fn unsupported() -> Self {
        Codec {
            encoding: Encoding::Unsupported,
            encode: None,
            decode: None,
        }
    }

    /// Raw bytes: objects are written and read as the bytes they are in memory.
    pub const fn pod() -> Self
    where
        T: bytemuck::Pod,
    {
        Codec {
            encoding: Encoding::RawPod,
            encode: Some(encode_pod::<T>),
            decode: Some(Decoder::Raw(decode_pod::<T>)),
        }
    }

    /// serde + bincode 2, object by object.
    pub const fn serde() -> Self
    where
        T: Serialize + DeserializeOwned,
    {
        Codec {
            encoding: Encoding::Bincode,
            encode: Some(encode_bincode::<T>),
            decode: Some(Decoder::Bytes(decode_bincode::<T>)),
        }
    }

    /// The encoding this codec writes.
    pub const fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Encodes every live object of `table` in storage order.
    pub(crate) fn encode<'a>(
        &self,
        table: &'a Table<T>,
        type_name: &str,
    ) -> Result<Encoded<'a>, Error> {
        match self.encode {
            Some(encode) => encode(table, type_name),
            None => Err(SnapshotError::NotPersistable {
                type_name: type_name.to_owned(),
            }
            .into()),
        }
    }

    /// The decoder, if the type has an encoding.
    pub(crate) fn decoder(&self) -> Option<Decoder<T>> {
        self.decode
    }
}

fn encode_pod<'a, T: bytemuck::Pod>(table: &'a Table<T>, _: &str) -> Result<Encoded<'a>, Error> {
    Ok(Encoded::Borrowed {
        len: (table.len() * std::mem::size_of::<T>()) as u64,
        walk: Box::new(move |write| {
            table.for_each_object_run(|run| write(bytemuck::cast_slice::<T, u8>(run)))
        }),
    })
}

fn decode_pod<T: bytemuck::Pod>(table: &mut Table<T>, fill: &mut Fill<'_>) -> Result<(), Error> {
    table.fill_pending_pod(fill)
}

fn encode_bincode<'a, T: Serialize>(
    table: &'a Table<T>,
    type_name: &str,
) -> Result<Encoded<'a>, Error> {
    let mut out = Vec::new();
    for value in table.values() {
        bincode::serde::encode_into_std_write(value, &mut out, bincode_config()).map_err(|e| {
            SnapshotError::Encode {
                type_name: type_name.to_owned(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(Encoded::Bytes(out))
}

fn decode_bincode<T: DeserializeOwned>(
    table: &mut Table<T>,
    mut bytes: &[u8],
    type_name: &str,
) -> Result<(), Error> {
    // Objects may encode to no bytes (unit structs): decode one per live slot, then
    // whatever is left is surplus.
    let live = table.len() as u64;
    let mut index = 0u64;
    table.fill_pending(type_name, || {
        if index == live && bytes.is_empty() {
            return None;
        }
        let decoded = bincode::serde::decode_from_slice::<T, _>(bytes, bincode_config());
        Some(match decoded {
            Ok((value, used)) => {
                bytes = &bytes[used..];
                index += 1;
                Ok(value)
            }
            Err(e) => Err(SnapshotError::Decode {
                type_name: type_name.to_owned(),
                index,
                message: e.to_string(),
            }
            .into()),
        })
    })
}
