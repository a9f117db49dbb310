//! Helpers the integration tests share.
// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::cell::Cell;
use std::rc::Rc;

/// A value that counts its drops, to prove `Drop` runs exactly once per object.
#[derive(Debug)]
pub struct Counted {
    /// What the value is, for comparing with a reference model.
    pub id: u64,
    /// Shared drop counter.
    pub drops: Rc<Cell<u64>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.set(self.drops.get() + 1);
    }
}

/// Checks that `load` refuses every truncation of the snapshot `file` as truncated (or,
/// below the magic's length, as not a snapshot), and `file` with one byte appended as
/// having trailing bytes.
pub fn every_truncation_is_refused<T>(
    file: &[u8],
    load: impl Fn(&[u8]) -> Result<T, neurostore::Error>,
) {
    use neurostore::{Error, SnapshotError};
    for len in 0..file.len() {
        let Err(err) = load(&file[..len]) else {
            panic!("a file truncated at {len} of {} bytes loads", file.len());
        };
        assert!(
            matches!(
                err,
                Error::Snapshot(SnapshotError::Truncated { .. } | SnapshotError::BadMagic { .. })
            ),
            "truncated at {len}: {err}"
        );
    }
    let mut longer = file.to_vec();
    longer.push(0);
    assert!(matches!(
        load(&longer),
        Err(Error::Snapshot(SnapshotError::TrailingBytes { .. }))
    ));
}
