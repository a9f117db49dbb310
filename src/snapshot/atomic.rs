//! Files written atomically and durably, with the writing to the OS on a second thread.
//!
//! A snapshot's writer spends its time in three places: encoding and checksumming (its
//! own thread), copying into the page cache (the kernel, inside `write`) and waiting for
//! the disk (the final fsync). A [`WriteBehind`] hands full 4 MiB buffers to a thread of
//! its own that makes the `write` calls, so that the first two overlap; at most two
//! buffers wait for it, so the memory it takes is bounded whatever the file's size. Every
//! [`WRITEBACK_EVERY`] bytes that thread asks a third one to `fdatasync` what has reached
//! the page cache, so the disk writes while the rest is produced and the final fsync waits
//! only for the tail (`benches/snapshot.rs` prints the save rate beside the disk's).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::error::Error;

/// The size of the buffers handed to the writing thread.
const PIECE: usize = 4 << 20;

/// How many bytes the writing thread writes between requests to the syncing thread.
const WRITEBACK_EVERY: usize = 64 << 20;

/// A file whose `write` calls are made on a thread of its own (see the module doc).
/// An error of that thread is returned by the next `write`, `flush` or
/// [`finish`](Self::finish).
#[derive(Debug)]
struct WriteBehind {
    buf: Vec<u8>,
    to_worker: Option<SyncSender<Vec<u8>>>,
    /// Buffers the worker has written, for reuse.
    spare: Receiver<Vec<u8>>,
    worker: Option<JoinHandle<std::io::Result<File>>>,
}

impl WriteBehind {
    fn new(file: File) -> std::io::Result<WriteBehind> {
        let (to_worker, work) = sync_channel::<Vec<u8>>(2);
        let (give_back, spare) = sync_channel::<Vec<u8>>(4);
        let (to_syncer, syncer) = early_writeback(file.try_clone()?)?;
        let worker = std::thread::Builder::new()
            .name("neurostore-write".into())
            .spawn(move || {
                let mut file = file;
                let mut since_sync = 0;
                for mut buf in work {
                    file.write_all(&buf)?;
                    since_sync += buf.len();
                    if since_sync >= WRITEBACK_EVERY {
                        // A request still pending covers this one too.
                        let _ = to_syncer.try_send(());
                        since_sync = 0;
                    }
                    buf.clear();
                    let _ = give_back.try_send(buf);
                }
                drop(to_syncer);
                match syncer.join() {
                    Ok(synced) => synced.map(|()| file),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            })?;
        Ok(WriteBehind {
            buf: Vec::with_capacity(PIECE),
            to_worker: Some(to_worker),
            spare,
            worker: Some(worker),
        })
    }

    /// Hands the buffer to the worker (if it holds anything) and takes an empty one.
    fn hand_over(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIECE));
        let full = std::mem::replace(&mut self.buf, next);
        let sent = self.to_worker.as_ref().map(|w| w.send(full));
        match sent {
            Some(Ok(())) => Ok(()),
            // The worker stopped: it failed, and joining it says how.
            _ => self.finish().map(drop),
        }
    }

    /// Writes what is left, waits for the worker and returns the file.
    fn finish(&mut self) -> std::io::Result<File> {
        if !self.buf.is_empty()
            && let Some(to_worker) = &self.to_worker
        {
            // A failed send means the worker stopped; its result below says why.
            let _ = to_worker.send(std::mem::take(&mut self.buf));
        }
        self.to_worker = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Err(std::io::Error::other("the file was already finished")),
        }
    }
}

/// A thread that `fdatasync`s `file` each time it is asked, until the sender is dropped;
/// it returns the first error.
fn early_writeback(
    file: File,
) -> std::io::Result<(SyncSender<()>, JoinHandle<std::io::Result<()>>)> {
    let (to_syncer, requests) = sync_channel::<()>(1);
    let syncer = std::thread::Builder::new()
        .name("neurostore-sync".into())
        .spawn(move || {
            for () in requests {
                file.sync_data()?;
            }
            Ok(())
        })?;
    Ok((to_syncer, syncer))
}

impl Write for WriteBehind {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.worker.is_none() {
            return Err(std::io::Error::other("the file was already finished"));
        }
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIECE {
            self.hand_over()?;
        }
        Ok(n)
    }

    /// Hands over what is buffered; the worker writes it soon after. What reaches the
    /// file is certain only after [`finish`](Self::finish).
    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over()
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.to_worker = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A file written atomically: bytes go to `<path>.tmp`; [`commit`](Self::commit) flushes
/// and fsyncs it, renames it over `<path>` and fsyncs the directory. Dropped without a
/// commit (after an error), it removes the temporary file and leaves `<path>` as it was.
///
/// Writes are buffered 4 MiB at a time and handed to a thread of the file's own, which
/// makes the `write` calls, so the caller's work overlaps the kernel's copying into the
/// page cache; every 64 MiB a third thread has the OS write back what has arrived, so
/// that the disk works while the file is produced and `commit` waits only for the last
/// part. An error of those threads comes back from a later `write` or `flush`, or from
/// `commit`.
///
/// ```
/// use std::io::Write;
/// use neurostore::snapshot::AtomicFile;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("notes.txt");
/// std::fs::write(&path, "old")?;
/// let mut f = AtomicFile::create(&path)?;
/// f.write_all(b"new")?;
/// drop(f); // no commit: the old file stays
/// assert_eq!(std::fs::read_to_string(&path)?, "old");
/// let mut f = AtomicFile::create(&path)?;
/// f.write_all(b"new")?;
/// f.commit()?;
/// assert_eq!(std::fs::read_to_string(&path)?, "new");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<WriteBehind>,
}

impl AtomicFile {
    /// Creates (or truncates) `<path>.tmp`.
    ///
    /// # Errors
    /// [`Error::Io`] if the temporary file cannot be created.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicFile, Error> {
        let path = path.as_ref().to_path_buf();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp)?;
        let file = match WriteBehind::new(file) {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        Ok(AtomicFile {
            path,
            tmp,
            file: Some(file),
        })
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Flushes and fsyncs the temporary file, renames it over the target, and fsyncs
    /// the directory, so the new file survives a crash.
    ///
    /// # Errors
    /// [`Error::Io`] from any step; the target is then the old file (or, if only the
    /// directory fsync failed, the new one, not yet durable).
    pub fn commit(mut self) -> Result<(), Error> {
        let mut writer = self.file.take().expect("commit runs once");
        let result = writer.finish().and_then(|file| {
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)
        });
        if let Err(e) = result {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e.into());
        }
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("open until commit").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("open until commit").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_pieces_of_any_size_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = WriteBehind::new(File::create(&path).unwrap()).unwrap();
        let mut want = Vec::new();
        for (k, len) in [0usize, 1, 7, PIECE - 3, 5, 3 * PIECE + 11, 100]
            .into_iter()
            .enumerate()
        {
            let piece: Vec<u8> = (0..len).map(|i| (i * 31 + k) as u8).collect();
            w.write_all(&piece).unwrap();
            want.extend_from_slice(&piece);
        }
        w.flush().unwrap();
        drop(w.finish().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn a_failed_write_is_returned_by_a_later_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        // Opened for reading only: every write of the worker fails.
        let mut w = WriteBehind::new(File::open(&path).unwrap()).unwrap();
        let piece = vec![1u8; PIECE];
        let failed = (0..8).any(|_| w.write_all(&piece).is_err());
        assert!(failed || w.finish().is_err(), "the error comes back");
        assert!(w.write_all(b"more").is_err(), "nothing is written after it");
    }
}
