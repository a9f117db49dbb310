//! The store's snapshots: the public face of the snapshot layer for a whole store, which
//! reads and writes the store's tables and roots without knowing the store.

use std::io::{Read, Write};
use std::path::Path;

use super::Store;
use crate::error::Error;
#[cfg(doc)]
use crate::error::SnapshotError;
#[cfg(doc)]
use crate::snapshot::AtomicFile;
use crate::snapshot::{Options, SnapshotReport, StoreParts, TypeRegistry, save_to_path};

impl Store {
    /// Saves the whole store (every table, the GC roots) to `path`, atomically and
    /// durably (see [`AtomicFile`]). Every table must be of a type with a snapshot
    /// encoding whose table was built from its hints: a derived type without generic
    /// parameters always is, others by [`register`](Store::register).
    ///
    /// # Errors
    /// [`SnapshotError::Unregistered`], [`SnapshotError::NotPersistable`],
    /// [`SnapshotError::Encode`], [`SnapshotError::DuplicateType`], [`Error::Io`]; on any
    /// error the file at `path` is as it was.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<SnapshotReport, Error> {
        self.save_with(path, &mut Options::new())
    }

    /// Writes the store as a snapshot to `out` (streaming; no atomicity of its own).
    ///
    /// # Errors
    /// As [`save`](Self::save).
    pub fn save_to(&self, out: impl Write) -> Result<SnapshotReport, Error> {
        self.save_to_with(out, &mut Options::new())
    }

    /// Loads a store saved by [`save`](Self::save), in the default pool. A table's type
    /// is found by its name in `registry`, else among the derived types linked into the
    /// program ([`TypeRegistry::linked`]).
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::SchemaMismatch`], or the [`SnapshotError`] that says what
    /// is wrong with the file; nothing is built.
    pub fn load(path: impl AsRef<Path>, registry: &TypeRegistry) -> Result<Store, Error> {
        Self::load_with(path, registry, &mut Options::new())
    }

    /// Loads a store from a stream written by [`save_to`](Self::save_to).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_from(input: impl Read, registry: &TypeRegistry) -> Result<Store, Error> {
        Self::load_from_with(input, registry, &mut Options::new())
    }

    /// [`save`](Self::save) with `options` (a progress callback).
    ///
    /// # Errors
    /// As [`save`](Self::save).
    pub fn save_with(
        &self,
        path: impl AsRef<Path>,
        options: &mut Options<'_>,
    ) -> Result<SnapshotReport, Error> {
        save_to_path(path, |file| self.save_to_with(file, options))
    }

    /// [`save_to`](Self::save_to) with `options` (a progress callback).
    ///
    /// # Errors
    /// As [`save`](Self::save).
    pub fn save_to_with(
        &self,
        out: impl Write,
        options: &mut Options<'_>,
    ) -> Result<SnapshotReport, Error> {
        options.save_store_parts_to(&self.tables, &self.persist, self.gc.roots.counts(), out)
    }

    /// [`load`](Self::load) with `options` (a progress callback, the pool the tables are
    /// made in).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_with(
        path: impl AsRef<Path>,
        registry: &TypeRegistry,
        options: &mut Options<'_>,
    ) -> Result<Store, Error> {
        let parts = options.load_store_parts_at(path.as_ref(), registry)?;
        Ok(Self::from_parts(parts))
    }

    /// [`load_from`](Self::load_from) with `options`.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_from_with(
        input: impl Read,
        registry: &TypeRegistry,
        options: &mut Options<'_>,
    ) -> Result<Store, Error> {
        let parts = options.load_store_parts_from(input, registry)?;
        Ok(Self::from_parts(parts))
    }

    /// The store a snapshot's parts make.
    fn from_parts(parts: StoreParts) -> Store {
        let mut store = Store::with_pool(parts.pool);
        for loaded in parts.tables {
            store.install_loaded(loaded);
        }
        for (h, n) in parts.roots {
            store.gc.roots.add_n(h, n);
        }
        store
    }
}
