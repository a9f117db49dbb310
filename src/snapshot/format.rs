//! The format on the wire: the preamble, length-prefixed checksummed sections, the footer,
//! and the little-endian fields inside section bodies. Knows nothing of Rust types.
//!
//! ```text
//! file     = preamble section* footer
//! preamble = magic "\x89NSNAP\r\n" (8 bytes), version u32 (`VERSION`), byte-order mark u32 = 0x0a0b0c0d
//! section  = tag [u8; 4], body length u64, body, crc32 u32 (of tag, length and body)
//! footer   = a section tagged DONE whose body is: bytes before the footer u64,
//!            crc32 of every byte before the footer u32
//! ```
//!
//! All integers are little-endian. See `docs/FORMAT.md` for the bodies.

use std::io::{self, Read, Write};

use crc32fast::Hasher;

use super::input::Input;
use crate::error::{Error, SnapshotError};

/// The first 8 bytes of every snapshot: a non-ASCII byte, the name, and CR LF so that a
/// text-mode transfer that mangles line ends is caught at once.
pub const MAGIC: [u8; 8] = *b"\x89NSNAP\r\n";
/// The format version this build writes. Version 2 added the generation form of the
/// SLOT section; version 3 dropped the list of vacant slots from the FREE section (the
/// slot table says which slots are vacant); version 4 lists the live slots away from
/// home in the generation form as runs. Version 1 to 3 files still load.
pub const VERSION: u32 = 4;
/// The oldest format version this build reads.
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Written as a little-endian u32; any other reading means another byte order.
pub const BYTE_ORDER_MARK: u32 = 0x0a0b_0c0d;
/// Bytes of the preamble.
pub const PREAMBLE_LEN: u64 = 16;
/// Bytes a section adds around its body: tag, length, checksum.
pub const SECTION_OVERHEAD: u64 = 4 + 8 + 4;
/// Bytes of the footer section (overhead and its 12-byte body).
pub const FOOTER_LEN: u64 = SECTION_OVERHEAD + 12;

/// The header section: crate version, content, table count, file length.
pub const HEAD: [u8; 4] = *b"HEAD";
/// A table's header: type name, schema, element layout, encoding, counts.
pub const TABL: [u8; 4] = *b"TABL";
/// A table's slot table: `(version, place)` per slot.
pub const SLOT: [u8; 4] = *b"SLOT";
/// A table's free-position state: the chunk-presence bitmap (after the list of vacant
/// slots in files before version 3).
pub const FREE: [u8; 4] = *b"FREE";
/// A table's objects.
pub const OBJS: [u8; 4] = *b"OBJS";
/// A store's GC roots.
pub const ROOT: [u8; 4] = *b"ROOT";
/// A graph checkpoint's simulation state outside its tables.
pub const GRPH: [u8; 4] = *b"GRPH";
/// A graph checkpoint's synaptic input in flight.
pub const RING: [u8; 4] = *b"RING";
/// The footer.
pub const DONE: [u8; 4] = *b"DONE";

/// How far a save or load has come, in bytes of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes written or read so far.
    pub done: u64,
    /// Bytes of the whole file.
    pub total: u64,
}

/// Called as a save or load moves on (at most about once per MiB, and at the end).
pub type ProgressFn<'a> = dyn FnMut(Progress) + 'a;

const REPORT_EVERY: u64 = 1 << 20;

/// A tag as text for messages.
pub(crate) fn tag_text(tag: [u8; 4]) -> String {
    if tag.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(&tag).into_owned()
    } else {
        format!("{tag:02x?}")
    }
}

/// Bytes done so far of a file being written or read, and the progress callback that
/// hears of them (about once per [`REPORT_EVERY`] bytes, and at the end).
struct Meter<'p> {
    offset: u64,
    total: u64,
    reported: u64,
    progress: Option<&'p mut ProgressFn<'p>>,
}

impl<'p> Meter<'p> {
    fn new(total: u64, progress: Option<&'p mut ProgressFn<'p>>) -> Self {
        Meter {
            offset: 0,
            total,
            reported: 0,
            progress,
        }
    }

    /// Counts `n` more bytes and reports when due.
    fn advance(&mut self, n: u64) {
        self.offset += n;
        if self.offset - self.reported >= REPORT_EVERY || self.offset == self.total {
            self.reported = self.offset;
            if let Some(p) = self.progress.as_mut() {
                p(Progress {
                    done: self.offset,
                    total: self.total.max(self.offset),
                });
            }
        }
    }
}

/// Writes a file: tracks the offset and the whole-file checksum, reports progress.
pub(crate) struct Writer<'w> {
    out: &'w mut dyn Write,
    file_crc: Hasher,
    meter: Meter<'w>,
}

/// The body of one section being written.
pub(crate) struct BodyWriter<'a, 'w> {
    writer: &'a mut Writer<'w>,
    crc: Hasher,
    left: u64,
}

impl<'w> Writer<'w> {
    pub(crate) fn new(
        out: &'w mut dyn Write,
        total: u64,
        progress: Option<&'w mut ProgressFn<'w>>,
    ) -> Self {
        Writer {
            out,
            file_crc: Hasher::new(),
            meter: Meter::new(total, progress),
        }
    }

    /// Writes bytes outside any section (preamble, section checksums): they go into the
    /// whole-file checksum here. A section's own bytes go in through its checksum, which
    /// is combined into the file's when the section ends, so each byte is hashed once.
    fn raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.file_crc.update(bytes);
        self.raw_in_section(bytes)
    }

    fn raw_in_section(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.write_all(bytes)?;
        self.meter.advance(bytes.len() as u64);
        Ok(())
    }

    pub(crate) fn preamble(&mut self) -> Result<(), Error> {
        let mut p = Vec::with_capacity(PREAMBLE_LEN as usize);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&VERSION.to_le_bytes());
        p.extend_from_slice(&BYTE_ORDER_MARK.to_le_bytes());
        self.raw(&p)
    }

    /// Writes one section whose body `body` writes, exactly `len` bytes of it.
    pub(crate) fn section(
        &mut self,
        tag: [u8; 4],
        len: u64,
        body: impl FnOnce(&mut BodyWriter<'_, 'w>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut crc = Hasher::new();
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&tag);
        head[4..].copy_from_slice(&len.to_le_bytes());
        crc.update(&head);
        self.raw_in_section(&head)?;
        let mut bw = BodyWriter {
            writer: self,
            crc,
            left: len,
        };
        body(&mut bw)?;
        assert_eq!(
            bw.left,
            0,
            "section {} wrote less than its length",
            tag_text(tag)
        );
        let crc = bw.crc;
        self.file_crc.combine(&crc);
        self.raw(&crc.finalize().to_le_bytes())
    }

    /// Writes a section whose body is in memory.
    pub(crate) fn section_bytes(&mut self, tag: [u8; 4], body: &[u8]) -> Result<(), Error> {
        self.section(tag, body.len() as u64, |w| w.write(body))
    }

    /// Writes the footer and returns the file's length.
    pub(crate) fn footer(mut self) -> Result<u64, Error> {
        let before = self.meter.offset;
        let file_crc = self.file_crc.clone().finalize();
        let mut body = Vec::with_capacity(12);
        body.extend_from_slice(&before.to_le_bytes());
        body.extend_from_slice(&file_crc.to_le_bytes());
        self.section_bytes(DONE, &body)?;
        self.out.flush()?;
        Ok(self.meter.offset)
    }
}

impl BodyWriter<'_, '_> {
    /// Appends bytes to the body.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        assert!(
            bytes.len() as u64 <= self.left,
            "section body longer than its length"
        );
        self.left -= bytes.len() as u64;
        self.crc.update(bytes);
        self.writer.raw_in_section(bytes)
    }
}

/// A section header as read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SectionStart {
    pub tag: [u8; 4],
    pub len: u64,
    /// Offset of the tag.
    pub offset: u64,
}

/// Reads a file: tracks the offset and the whole-file checksum, reports progress, and
/// turns short reads into [`SnapshotError::Truncated`].
pub(crate) struct Reader<'r> {
    input: &'r mut dyn Input,
    file_crc: Hasher,
    meter: Meter<'r>,
    /// The open section: its start, the checksum so far, body bytes left.
    open: Option<(SectionStart, Hasher, u64)>,
    /// Every closed section: tag, offset, body length, checksum.
    closed: Vec<([u8; 4], u64, u64, u32)>,
    /// The file's format version, once the preamble is read.
    version: u32,
}

impl<'r> Reader<'r> {
    pub(crate) fn new(input: &'r mut dyn Input, progress: Option<&'r mut ProgressFn<'r>>) -> Self {
        Reader {
            input,
            file_crc: Hasher::new(),
            meter: Meter::new(0, progress),
            open: None,
            closed: Vec::new(),
            version: VERSION,
        }
    }

    /// The file length the header announced, for progress.
    pub(crate) fn set_total(&mut self, total: u64) {
        self.meter.total = total;
    }

    /// Reads exactly `buf.len()` bytes outside any section's checksum (preamble, section
    /// checksums) into the whole-file checksum; `section` names where, for a truncation
    /// error.
    fn raw(&mut self, buf: &mut [u8], section: &str) -> Result<(), Error> {
        self.raw_in_section(buf, section)?;
        self.file_crc.update(buf);
        Ok(())
    }

    /// As [`raw`](Self::raw) for a section's own bytes, which reach the whole-file
    /// checksum through the section's when it closes.
    fn raw_in_section(&mut self, buf: &mut [u8], section: &str) -> Result<(), Error> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(SnapshotError::Truncated {
                        section: section.to_owned(),
                        offset: self.meter.offset + got as u64,
                    }
                    .into());
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.meter.advance(buf.len() as u64);
        Ok(())
    }

    /// Reads and checks the preamble.
    /// Reads and checks the preamble; returns the file's format version.
    pub(crate) fn preamble(&mut self) -> Result<u32, Error> {
        let mut magic = Vec::with_capacity(8);
        (&mut *self.input).take(8).read_to_end(&mut magic)?;
        self.file_crc.update(&magic);
        self.meter.advance(magic.len() as u64);
        if magic != MAGIC {
            return Err(SnapshotError::BadMagic { found: magic }.into());
        }
        let mut rest = [0u8; 8];
        self.raw(&mut rest, "preamble")?;
        let version = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if !(OLDEST_READABLE_VERSION..=VERSION).contains(&version) {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            }
            .into());
        }
        let mark = u32::from_le_bytes(rest[4..].try_into().expect("4 bytes"));
        if mark != BYTE_ORDER_MARK {
            return Err(SnapshotError::ByteOrder { found: mark }.into());
        }
        self.version = version;
        Ok(version)
    }

    /// The file's format version (read by [`preamble`](Self::preamble)).
    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    /// Opens the next section, which must be tagged `tag`.
    pub(crate) fn open(&mut self, tag: [u8; 4]) -> Result<SectionStart, Error> {
        assert!(self.open.is_none(), "a section is already open");
        let offset = self.meter.offset;
        let mut head = [0u8; 12];
        self.raw_in_section(&mut head, &tag_text(tag))?;
        let found: [u8; 4] = head[..4].try_into().expect("4 bytes");
        if found != tag {
            return Err(SnapshotError::UnexpectedSection {
                expected: tag_text(tag),
                found: tag_text(found),
                offset,
            }
            .into());
        }
        let len = u64::from_le_bytes(head[4..].try_into().expect("8 bytes"));
        let mut crc = Hasher::new();
        crc.update(&head);
        let start = SectionStart { tag, len, offset };
        self.open = Some((start, crc, len));
        Ok(start)
    }

    /// Reads exactly `buf.len()` bytes of the open section's body (a large part, such as
    /// a table's objects, is read and checksummed on every thread when the input is a
    /// file).
    pub(crate) fn body(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        let (start, _, left) = self.open.as_ref().expect("a section is open");
        let start = *start;
        if buf.len() as u64 > *left {
            return Err(self.malformed(start, "a field runs past the end of the section"));
        }
        let (_, crc, left) = self.open.as_mut().expect("a section is open");
        let got = self.input.fill_checked(buf, crc)?;
        if got < buf.len() {
            return Err(SnapshotError::Truncated {
                section: tag_text(start.tag),
                offset: self.meter.offset + got as u64,
            }
            .into());
        }
        *left -= buf.len() as u64;
        self.meter.advance(buf.len() as u64);
        Ok(())
    }

    /// Reads the rest of the open section's body into memory, growing the buffer only as
    /// bytes arrive (a corrupt length cannot make it allocate more than the file holds).
    pub(crate) fn rest_of_body(&mut self) -> Result<Vec<u8>, Error> {
        let left = self.open.as_ref().expect("a section is open").2;
        let mut out = Vec::new();
        let mut done = 0u64;
        while done < left {
            let step = (left - done).min(REPORT_EVERY) as usize;
            let at = out.len();
            out.resize(at + step, 0);
            self.body(&mut out[at..])?;
            done += step as u64;
        }
        Ok(out)
    }

    /// Reads `count` Pod values of the open section's body, growing the buffer only as
    /// bytes arrive.
    pub(crate) fn pod_values<P: bytemuck::Pod>(&mut self, count: u64) -> Result<Vec<P>, Error> {
        let size = std::mem::size_of::<P>() as u64;
        let per_step = (REPORT_EVERY / size).max(1);
        let mut out: Vec<P> = Vec::new();
        let mut done = 0u64;
        while done < count {
            let step = (count - done).min(per_step) as usize;
            let at = out.len();
            out.resize(at + step, P::zeroed());
            self.body(bytemuck::cast_slice_mut(&mut out[at..]))?;
            done += step as u64;
        }
        Ok(out)
    }

    /// Closes the open section: its body must be fully read and match its checksum, which
    /// is returned.
    pub(crate) fn close(&mut self) -> Result<u32, Error> {
        let (start, crc, left) = self.open.take().expect("a section is open");
        if left != 0 {
            return Err(self.malformed(start, format!("{left} bytes of the body were not used")));
        }
        self.file_crc.combine(&crc);
        let mut stored = [0u8; 4];
        self.raw(&mut stored, &tag_text(start.tag))?;
        let stored = u32::from_le_bytes(stored);
        let computed = crc.finalize();
        if stored != computed {
            return Err(SnapshotError::ChecksumMismatch {
                section: tag_text(start.tag),
                offset: start.offset,
                stored,
                computed,
            }
            .into());
        }
        self.closed
            .push((start.tag, start.offset, start.len, computed));
        Ok(computed)
    }

    /// The sections closed so far, in order: tag, offset, body length, checksum.
    pub(crate) fn take_sections(&mut self) -> Vec<([u8; 4], u64, u64, u32)> {
        std::mem::take(&mut self.closed)
    }

    /// Reads and discards the rest of the open section's body.
    pub(crate) fn skip_body(&mut self) -> Result<(), Error> {
        let mut left = self.open.as_ref().expect("a section is open").2;
        let mut scratch = vec![0u8; left.min(REPORT_EVERY) as usize];
        while left > 0 {
            let step = left.min(scratch.len() as u64) as usize;
            self.body(&mut scratch[..step])?;
            left -= step as u64;
        }
        Ok(())
    }

    /// A [`SnapshotError::Malformed`] for section `start`.
    pub(crate) fn malformed(&self, start: SectionStart, message: impl Into<String>) -> Error {
        SnapshotError::Malformed {
            section: tag_text(start.tag),
            offset: start.offset,
            message: message.into(),
        }
        .into()
    }

    /// Reads the footer, checks the whole-file checksum, and that nothing follows.
    pub(crate) fn footer(&mut self) -> Result<u64, Error> {
        let before = self.meter.offset;
        let file_crc = self.file_crc.clone().finalize();
        let start = self.open(DONE)?;
        if start.len != 12 {
            return Err(self.malformed(
                start,
                format!("the footer body is {} bytes, not 12", start.len),
            ));
        }
        let mut body = [0u8; 12];
        self.body(&mut body)?;
        self.close()?;
        let length = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let stored = u32::from_le_bytes(body[8..].try_into().expect("4 bytes"));
        if length != before {
            return Err(self.malformed(
                start,
                format!("the footer says {length} bytes precede it, but {before} do"),
            ));
        }
        if stored != file_crc {
            return Err(SnapshotError::ChecksumMismatch {
                section: "file".to_owned(),
                offset: 0,
                stored,
                computed: file_crc,
            }
            .into());
        }
        let mut extra = [0u8; 1];
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(SnapshotError::TrailingBytes {
                        offset: self.meter.offset,
                        extra: 1,
                    }
                    .into());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.meter.offset)
    }
}

/// Little-endian fields appended to a body in memory.
#[derive(Default)]
pub(crate) struct Fields(pub Vec<u8>);

impl Fields {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A string: u16 length, then UTF-8 bytes (at most 65535).
    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        let len = u16::try_from(s.len()).expect("names are shorter than 64 KiB");
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

/// Little-endian fields read from a body in memory; a short or bad field is
/// [`SnapshotError::Malformed`].
pub(crate) struct FieldReader<'a> {
    bytes: &'a [u8],
    start: SectionStart,
}

impl<'a> FieldReader<'a> {
    pub(crate) fn new(bytes: &'a [u8], start: SectionStart) -> Self {
        FieldReader { bytes, start }
    }

    /// A [`SnapshotError::Malformed`] for this body.
    pub(crate) fn error(&self, message: String) -> Error {
        SnapshotError::Malformed {
            section: tag_text(self.start.tag),
            offset: self.start.offset,
            message,
        }
        .into()
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if self.bytes.len() < n {
            return Err(self.error(format!("the body ends inside {what}")));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    pub(crate) fn str(&mut self, what: &str) -> Result<String, Error> {
        let len = u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes"));
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error(format!("{what} is not UTF-8")))
    }

    /// Fails unless every byte was read.
    pub(crate) fn end(&self) -> Result<(), Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.error(format!(
                "{} bytes left after the last field",
                self.bytes.len()
            )))
        }
    }
}
