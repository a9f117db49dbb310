//! Derived types registered when the program links, so that a type's declared hints hold
//! however its first object arrives.
//!
//! `#[derive(Pooled)]` on a type without generic parameters submits a [`Registration`]
//! (through the `inventory` crate: a static in a linker section, collected before `main`).
//! When a [`Store`] or [`SharedStore`](super::SharedStore) makes the table of a type on
//! its first insert, it looks the type up here and builds the table as
//! [`Store::register`] would: retention, alignment, tracing and snapshot encoding. (The
//! derive registers the type for snapshot loads too, with the snapshot layer:
//! [`TypeRegistry::linked`](crate::snapshot::TypeRegistry::linked).)
//!
//! A generic type cannot be registered this way (a static cannot name every instance):
//! call `register::<Pair<u32>>()` before its first insert.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::OnceLock;

use super::Store;
use crate::error::Error;
use crate::pooled::{PoolHints, Pooled, Probe, Trace};

/// What the derive registers for one type. Made only by the derive's generated code.
#[doc(hidden)]
pub struct Registration {
    type_id: fn() -> TypeId,
    hints: PoolHints,
    in_store: fn(&mut Store) -> Result<bool, Error>,
}

impl Registration {
    /// The registration of one type: its `TypeId`, its hints, and how to register it in
    /// a store (returning false for a type that a store cannot hold, one that is not
    /// `Send + Sync`).
    pub const fn new(
        type_id: fn() -> TypeId,
        hints: PoolHints,
        in_store: fn(&mut Store) -> Result<bool, Error>,
    ) -> Self {
        Registration {
            type_id,
            hints,
            in_store,
        }
    }
}

inventory::collect!(Registration);

/// The registration of the type `type_id`, if the derive made one.
pub(crate) fn linked(type_id: TypeId) -> Option<&'static Registration> {
    static BY_TYPE: OnceLock<HashMap<TypeId, &'static Registration>> = OnceLock::new();
    BY_TYPE
        .get_or_init(|| {
            inventory::iter::<Registration>
                .into_iter()
                .map(|r| ((r.type_id)(), r))
                .collect()
        })
        .get(&type_id)
        .copied()
}

/// Registers the type `type_id` in `store` if the derive made a registration for it;
/// whether it did.
pub(crate) fn register_linked(store: &mut Store, type_id: TypeId) -> bool {
    linked(type_id).is_some_and(|r| (r.in_store)(store).unwrap_or(false))
}

/// The hints the derive declared for the type `type_id`.
pub(crate) fn linked_hints(type_id: TypeId) -> Option<PoolHints> {
    linked(type_id).map(|r| r.hints)
}

/// Registration of a type a store can hold (chosen by autoref first, when `T` is
/// `Send + Sync`): named only by the derive's generated code, as
/// `(&&Probe::<T>::new()).in_store(store)`.
#[doc(hidden)]
pub trait ViaStore {
    /// Registers the type in `store`.
    fn in_store(&self, store: &mut Store) -> Result<bool, Error>;
}

impl<T: Pooled + Trace + Send + Sync> ViaStore for &Probe<T> {
    fn in_store(&self, store: &mut Store) -> Result<bool, Error> {
        store.register::<T>().map(|_| true)
    }
}

/// Registration of a type no store can hold: nothing to do.
#[doc(hidden)]
pub trait Unstorable {
    /// Does nothing: the type is not `Send + Sync`.
    fn in_store(&self, store: &mut Store) -> Result<bool, Error>;
}

impl<T> Unstorable for Probe<T> {
    fn in_store(&self, _: &mut Store) -> Result<bool, Error> {
        Ok(false)
    }
}

/// Items the derive's generated code names. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use super::{Registration, Unstorable, ViaStore};
    pub use crate::pooled::Probe;
    pub use crate::snapshot::{Registration as SnapshotRegistration, Unlistable, ViaRegistry};
    pub use inventory;
}
