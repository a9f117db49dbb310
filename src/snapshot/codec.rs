//! How a table's objects are encoded in a snapshot, by the type's
//! [`Codec`](crate::pooled::Codec) (declared with the type, in the `pooled` layer): the
//! one module of this layer to change to swap an encoding. The rest of the snapshot layer
//! sees objects only as a section of bytes.

use crate::error::{Error, SnapshotError};
use crate::pooled::{Codec, PodBytes, SerdeForm};
use crate::table::Table;

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

/// How objects come back from an objects section.
pub(crate) enum Decoder<T> {
    /// Streamed straight into chunk memory through a [`Fill`].
    Raw(PodBytes<T>),
    /// Decoded one by one from the whole section, once its checksum has been verified.
    Bytes(SerdeForm<T>),
}

/// Encodes every live object of `table` in storage order by `codec`.
pub(crate) fn encode<'a, T>(
    codec: &Codec<T>,
    table: &'a Table<T>,
    type_name: &str,
) -> Result<Encoded<'a>, Error> {
    if let Some(pod) = codec.pod_bytes() {
        return Ok(encode_pod(pod, table));
    }
    match codec.serde_form() {
        Some(form) => encode_serde(form, table, type_name),
        None => Err(SnapshotError::NotPersistable {
            type_name: type_name.to_owned(),
        }
        .into()),
    }
}

/// How `codec` reads objects back, if the type has an encoding.
pub(crate) fn decoder<T>(codec: &Codec<T>) -> Option<Decoder<T>> {
    codec
        .pod_bytes()
        .map(Decoder::Raw)
        .or_else(|| codec.serde_form().map(Decoder::Bytes))
}

fn encode_pod<T>(pod: PodBytes<T>, table: &Table<T>) -> Encoded<'_> {
    Encoded::Borrowed {
        len: (table.len() * std::mem::size_of::<T>()) as u64,
        walk: Box::new(move |write| table.for_each_object_run(|run| write(pod.bytes(run)))),
    }
}

/// Reads a table's pending objects as raw bytes, chunk by chunk, through `fill`.
pub(crate) fn decode_pod<T>(
    pod: PodBytes<T>,
    table: &mut Table<T>,
    fill: &mut Fill<'_>,
) -> Result<(), Error> {
    table.fill_pending_pod(pod, fill)
}

fn encode_serde<'a, T>(
    form: SerdeForm<T>,
    table: &'a Table<T>,
    type_name: &str,
) -> Result<Encoded<'a>, Error> {
    let mut out = Vec::new();
    for value in table.values() {
        (form.encode)(value, &mut out).map_err(|message| SnapshotError::Encode {
            type_name: type_name.to_owned(),
            message,
        })?;
    }
    Ok(Encoded::Bytes(out))
}

/// Decodes the objects section `bytes` into `table`'s pending places, one object each.
pub(crate) fn decode_serde<T>(
    form: SerdeForm<T>,
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
        Some(match (form.decode)(bytes) {
            Ok((value, used)) => {
                bytes = &bytes[used..];
                index += 1;
                Ok(value)
            }
            Err(message) => Err(SnapshotError::Decode {
                type_name: type_name.to_owned(),
                index,
                message,
            }
            .into()),
        })
    })
}
