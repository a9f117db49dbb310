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
