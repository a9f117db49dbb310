//! Where a snapshot is read from: any stream of bytes, or a file, which is read at offsets
//! so that the large bodies of a load (a table's objects, up to 32 MiB a call) are read
//! and checksummed on every thread: from the page cache, one thread copies about 3 GB/s
//! here, so a multi-gigabyte table spent most of its load in one thread's copy.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crc32fast::Hasher;
#[cfg(unix)]
use rayon::prelude::*;

/// A snapshot's input: bytes in order.
pub(crate) trait Input: Read {
    /// Fills `buf` as far as the input goes and adds those bytes to `crc`; returns how
    /// many it read (fewer than `buf.len()` only at the end of the input).
    fn fill_checked(&mut self, buf: &mut [u8], crc: &mut Hasher) -> io::Result<usize> {
        let got = fill(self, buf)?;
        crc.update(&buf[..got]);
        Ok(got)
    }
}

/// Reads into `buf` until it is full or `input` ends; returns how many bytes it read.
fn fill(input: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Any `Read` as a snapshot's input (read in order on the caller's thread).
pub(crate) struct Stream<R>(pub R);

impl<R: Read> Read for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Input for Stream<R> {}

/// Opens the snapshot file at `path` as an input: read at offsets on Unix (see
/// [`FileInput`]), through a buffered reader elsewhere.
pub(crate) fn open(path: &Path) -> io::Result<Box<dyn Input>> {
    let file = File::open(path)?;
    #[cfg(unix)]
    return Ok(Box::new(FileInput::new(file)));
    #[cfg(not(unix))]
    return Ok(Box::new(Stream(io::BufReader::with_capacity(
        BUFFER_BYTES,
        file,
    ))));
}

/// The buffer of small reads (headers, sections' fields, checksums).
const BUFFER_BYTES: usize = 1 << 20;

/// Bodies of this many bytes or more are read and checksummed on every thread.
#[cfg(unix)]
const PARALLEL_FROM: usize = 4 << 20;

/// A file read at offsets: small reads through a buffer, large bodies
/// ([`fill_checked`](Input::fill_checked) of [`PARALLEL_FROM`] bytes or more) in one
/// piece per thread, each checksummed where it was read, the checksums combined in order.
#[cfg(unix)]
pub(crate) struct FileInput {
    file: File,
    buffer: Box<[u8]>,
    /// The unread bytes of `buffer`.
    pos: usize,
    filled: usize,
    /// The file offset of the byte after `buffer`'s last.
    offset: u64,
    parallel_from: usize,
}

#[cfg(unix)]
impl FileInput {
    pub(crate) fn new(file: File) -> FileInput {
        FileInput::with_parallel_from(file, PARALLEL_FROM)
    }

    fn with_parallel_from(file: File, parallel_from: usize) -> FileInput {
        FileInput {
            file,
            buffer: vec![0; BUFFER_BYTES].into_boxed_slice(),
            pos: 0,
            filled: 0,
            offset: 0,
            parallel_from,
        }
    }

    /// Reads `buf.len()` bytes from `self.offset` on, one piece per thread; returns how
    /// many it read (fewer at the end of the file) with their checksum added to `crc`.
    fn read_in_parallel(&mut self, buf: &mut [u8], crc: &mut Hasher) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let piece = buf
            .len()
            .div_ceil(rayon::current_num_threads().max(1))
            .max(1);
        let (file, start) = (&self.file, self.offset);
        let pieces: Vec<io::Result<(usize, Hasher)>> = buf
            .par_chunks_mut(piece)
            .enumerate()
            .map(|(k, part)| {
                let mut at = start + (k * piece) as u64;
                let mut got = 0;
                while got < part.len() {
                    match file.read_at(&mut part[got..], at) {
                        Ok(0) => break,
                        Ok(n) => (got, at) = (got + n, at + n as u64),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                let mut h = Hasher::new();
                h.update(&part[..got]);
                Ok((got, h))
            })
            .collect();
        let mut total = 0;
        for (k, result) in pieces.into_iter().enumerate() {
            let (got, h) = result?;
            crc.combine(&h);
            total += got;
            if got < piece.min(buf.len() - k * piece) {
                break; // the file ended inside this piece
            }
        }
        self.offset += total as u64;
        Ok(total)
    }
}

#[cfg(unix)]
impl Read for FileInput {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.pos == self.filled {
            if out.len() >= self.buffer.len() {
                let n = self.file.read_at(out, self.offset)?;
                self.offset += n as u64;
                return Ok(n);
            }
            let n = self.file.read_at(&mut self.buffer, self.offset)?;
            (self.pos, self.filled, self.offset) = (0, n, self.offset + n as u64);
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buffer[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(unix)]
impl Input for FileInput {
    fn fill_checked(&mut self, buf: &mut [u8], crc: &mut Hasher) -> io::Result<usize> {
        if buf.len() < self.parallel_from {
            let got = fill(self, buf)?;
            crc.update(&buf[..got]);
            return Ok(got);
        }
        // What the buffer holds comes first; the rest straight from the file.
        let head = buf.len().min(self.filled - self.pos);
        buf[..head].copy_from_slice(&self.buffer[self.pos..self.pos + head]);
        self.pos += head;
        crc.update(&buf[..head]);
        Ok(head + self.read_in_parallel(&mut buf[head..], crc)?)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn file_of(bytes: &[u8], name: &str) -> File {
        let path =
            std::env::temp_dir().join(format!("neurostore-input-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn small_and_large_reads_of_a_file_read_its_bytes_in_order_with_their_checksum() {
        let bytes: Vec<u8> = (0..3 * BUFFER_BYTES + 12_345)
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let mut input = FileInput::with_parallel_from(file_of(&bytes, "order"), 1000);
        let (mut out, mut crc) = (Vec::new(), Hasher::new());
        // Small reads through the buffer, between large ones split over three threads.
        for len in [
            5,
            3000,
            17,
            BUFFER_BYTES + 3,
            1,
            999,
            2 * BUFFER_BYTES + 20_000,
        ] {
            let mut buf = vec![0; len];
            let got = threads
                .install(|| input.fill_checked(&mut buf, &mut crc))
                .unwrap();
            out.extend_from_slice(&buf[..got]);
        }
        let first_wrong = out.iter().zip(&bytes).position(|(a, b)| a != b);
        assert_eq!(
            (out.len(), first_wrong),
            (bytes.len(), None),
            "every byte once, in order, the last read cut short"
        );
        assert_eq!(crc.finalize(), crc32fast::hash(&bytes));
        let mut buf = [0u8; 10];
        assert_eq!(input.fill_checked(&mut buf, &mut Hasher::new()).unwrap(), 0);
        assert_eq!(input.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_large_read_past_the_end_returns_what_the_file_holds() {
        let bytes: Vec<u8> = (0..50_000).map(|i| (i % 251) as u8).collect();
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let mut input = FileInput::with_parallel_from(file_of(&bytes, "short"), 1000);
        let mut crc = Hasher::new();
        let mut buf = vec![0; 80_000];
        let got = threads
            .install(|| input.fill_checked(&mut buf, &mut crc))
            .unwrap();
        assert_eq!(got, bytes.len());
        assert!(buf[..got] == bytes[..], "the file's bytes");
        assert_eq!(crc.finalize(), crc32fast::hash(&bytes));
    }
}
