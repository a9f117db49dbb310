//! The types a snapshot load may meet, by name: [`TypeRegistry`], and the derived types
//! registered when the program links, which every load also knows.
//!
//! `#[derive(Pooled)]` on a type without generic parameters submits a [`Registration`]
//! (through the `inventory` crate: a static in a linker section, collected before
//! `main`); every such type with a snapshot encoding is listed in
//! [`TypeRegistry::linked`], so a registry given to a load needs to list only generic
//! types and hand-written impls.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::format::Reader;
use super::{Encoding, LoadedTable, TableHeader, TypeOps, read_table};
use crate::error::{Error, SnapshotError};
use crate::handle::Handle;
use crate::pool::HierarchicalPool;
use crate::pooled::{AnyHandle, Pooled, Probe, Trace};

/// Reads one table of the entry's type (after its TABL section) with what a store keeps
/// beside it.
type LoadTable =
    fn(&mut Reader<'_>, &TableHeader, &Arc<HierarchicalPool>) -> Result<LoadedTable, Error>;

#[derive(Clone)]
pub(crate) struct RegistryEntry {
    type_id: TypeId,
    pub(crate) load: LoadTable,
    pub(crate) any_handle: fn(u64) -> AnyHandle,
}

/// The Rust types a snapshot may contain, by their [`Pooled::TYPE_NAME`]: a load finds
/// each table's type here, checks its schema fingerprint and layout, and decodes its
/// objects with the type's [`Codec`](crate::pooled::Codec).
///
/// ```
/// use neurostore::{Neuron, Synapse, snapshot::TypeRegistry};
///
/// let mut registry = TypeRegistry::new();
/// registry.register::<Neuron>()?.register::<Synapse>()?;
/// assert!(registry.contains("Neuron"));
/// registry.register::<Neuron>()?; // again: no change
/// assert_eq!(registry.len(), 2);
/// # Ok::<(), neurostore::Error>(())
/// ```
#[derive(Default)]
pub struct TypeRegistry {
    entries: HashMap<&'static str, RegistryEntry>,
}

impl std::fmt::Debug for TypeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.entries.keys().collect();
        names.sort();
        f.debug_struct("TypeRegistry")
            .field("types", &names)
            .finish()
    }
}

impl TypeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        TypeRegistry::default()
    }

    /// Lists `T` under its [`TYPE_NAME`](Pooled::TYPE_NAME).
    ///
    /// # Errors
    /// [`SnapshotError::NotPersistable`] if `T` has no snapshot encoding (derive it with
    /// `#[pooled(pod)]` or `#[pooled(serde)]`); [`SnapshotError::DuplicateType`] if
    /// another type is listed under the same name (every instantiation of a generic type
    /// shares its name). On error the registry is unchanged.
    pub fn register<T: Pooled + Trace + Send + Sync>(&mut self) -> Result<&mut Self, Error> {
        if T::CODEC.encoding() == Encoding::Unsupported {
            return Err(SnapshotError::NotPersistable {
                type_name: T::TYPE_NAME.to_owned(),
            }
            .into());
        }
        fn load<T: Pooled + Trace + Send + Sync>(
            reader: &mut Reader<'_>,
            header: &TableHeader,
            pool: &Arc<HierarchicalPool>,
        ) -> Result<LoadedTable, Error> {
            let table = read_table::<T>(reader, header, pool.clone())?;
            Ok(LoadedTable {
                type_id: TypeId::of::<T>(),
                table: Box::new(table),
                ops: TypeOps::of::<T>(),
            })
        }
        fn any_handle<T: 'static>(bits: u64) -> AnyHandle {
            AnyHandle::new(Handle::<T>::from_bits(bits))
        }
        match self.entries.get(T::TYPE_NAME) {
            Some(e) if e.type_id != TypeId::of::<T>() => Err(SnapshotError::DuplicateType {
                type_name: T::TYPE_NAME.to_owned(),
            }
            .into()),
            Some(_) => Ok(self),
            None => {
                self.entries.insert(
                    T::TYPE_NAME,
                    RegistryEntry {
                        type_id: TypeId::of::<T>(),
                        load: load::<T>,
                        any_handle: any_handle::<T>,
                    },
                );
                Ok(self)
            }
        }
    }

    /// [`register`](Self::register), by value, for chaining from [`new`](Self::new).
    ///
    /// # Errors
    /// As [`register`](Self::register).
    pub fn with<T: Pooled + Trace + Send + Sync>(mut self) -> Result<Self, Error> {
        self.register::<T>()?;
        Ok(self)
    }

    /// Whether a type is listed under `type_name`.
    pub fn contains(&self, type_name: &str) -> bool {
        self.entries.contains_key(type_name)
    }

    /// Every `#[derive(Pooled)]` type without generic parameters that has a snapshot
    /// encoding and is linked into this program, by name; a name two such types share is
    /// left out. A load looks here for any name its own registry does not list, so a
    /// registry needs to list only generic types and hand-written impls.
    ///
    /// ```
    /// use neurostore::snapshot::TypeRegistry;
    ///
    /// // The neural graph's own types are derived with `#[pooled(pod)]`.
    /// assert!(TypeRegistry::linked().contains("Neuron"));
    /// assert!(TypeRegistry::new().is_empty());
    /// ```
    pub fn linked() -> TypeRegistry {
        let linked = linked_registry();
        TypeRegistry {
            entries: linked
                .entries
                .iter()
                .map(|(name, entry)| (*name, entry.clone()))
                .collect(),
        }
    }

    /// The entry of `type_name`: this registry's, else the linked type's of that name.
    pub(crate) fn entry(&self, type_name: &str) -> Option<&RegistryEntry> {
        self.entries
            .get(type_name)
            .or_else(|| linked_registry().entries.get(type_name))
    }

    /// Drops the entry of `type_name` (a name that two linked types share).
    pub(crate) fn forget(&mut self, type_name: &str) {
        self.entries.remove(type_name);
    }

    /// Number of types listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no type is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the derive registers for one type, for snapshot loads. Made only by the derive's
/// generated code.
#[doc(hidden)]
pub struct Registration {
    in_registry: fn(&mut TypeRegistry) -> Result<bool, Error>,
}

impl Registration {
    /// How to list one type in a type registry (returning false for a type that has no
    /// snapshot encoding or that a store cannot hold, one that is not `Send + Sync`).
    pub const fn new(in_registry: fn(&mut TypeRegistry) -> Result<bool, Error>) -> Self {
        Registration { in_registry }
    }
}

inventory::collect!(Registration);

/// Every linked type with a snapshot encoding, by name. A name two linked types share
/// is left out: a load must be told which one it means.
fn linked_registry() -> &'static TypeRegistry {
    static REGISTRY: OnceLock<TypeRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = TypeRegistry::new();
        let mut shared_names = Vec::new();
        for r in inventory::iter::<Registration> {
            if let Err(Error::Snapshot(SnapshotError::DuplicateType { type_name })) =
                (r.in_registry)(&mut registry)
            {
                shared_names.push(type_name);
            }
        }
        for name in shared_names {
            registry.forget(&name);
        }
        registry
    })
}

/// Listing of a type a store can hold (chosen by autoref first, when `T` is
/// `Send + Sync`): named only by the derive's generated code, as
/// `(&&Probe::<T>::new()).in_registry(registry)`.
#[doc(hidden)]
pub trait ViaRegistry {
    /// Lists the type in `registry` if it has a snapshot encoding.
    fn in_registry(&self, registry: &mut TypeRegistry) -> Result<bool, Error>;
}

impl<T: Pooled + Trace + Send + Sync> ViaRegistry for &Probe<T> {
    fn in_registry(&self, registry: &mut TypeRegistry) -> Result<bool, Error> {
        if T::CODEC.encoding() == Encoding::Unsupported {
            return Ok(false);
        }
        registry.register::<T>().map(|_| true)
    }
}

/// Listing of a type no store can hold: nothing to do.
#[doc(hidden)]
pub trait Unlistable {
    /// Does nothing: the type is not `Send + Sync`.
    fn in_registry(&self, registry: &mut TypeRegistry) -> Result<bool, Error>;
}

impl<T> Unlistable for Probe<T> {
    fn in_registry(&self, _: &mut TypeRegistry) -> Result<bool, Error> {
        Ok(false)
    }
}
