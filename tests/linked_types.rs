//! A derived type's declared hints hold however its first object arrives: no
//! `register` call is needed before `insert`, and a snapshot load finds derived types by
//! name without a `TypeRegistry` listing them.

use neurostore::snapshot::TypeRegistry;
use neurostore::{Error, Handle, Pooled, Retention, SharedStore, SnapshotError, Store};

/// Traced: lives while something reaches it.
#[derive(Pooled, Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[pooled(retention = "traced", pod)]
struct Link {
    next: Handle<Link>,
    value: u64,
}

/// Manual, so a root of tracing.
#[derive(Pooled, Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[pooled(pod)]
struct Anchor {
    first: Handle<Link>,
}

#[derive(Pooled, Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
#[pooled(align = 64, pod)]
struct Wide {
    lanes: [f32; 16],
}

#[test]
fn a_traced_type_inserted_without_register_is_collected() {
    let mut store = Store::new();
    let kept = store.insert(Link {
        next: Handle::null(),
        value: 1,
    });
    let head = store.insert(Link {
        next: kept,
        value: 2,
    });
    let lost = store.insert(Link {
        next: Handle::null(),
        value: 3,
    });
    store.insert(Anchor { first: head });
    assert_eq!(
        store.table::<Link>().unwrap().retention(),
        Retention::Traced
    );
    let report = store.collect();
    assert_eq!(report.freed_total, 1, "{report:?}");
    assert!(store.contains(kept) && store.contains(head) && !store.contains(lost));
}

#[test]
fn an_aligned_type_is_aligned_in_every_store_without_register() {
    let mut store = Store::new();
    let h = store.insert(Wide { lanes: [1.0; 16] });
    store.insert(Wide { lanes: [2.0; 16] });
    assert_eq!(store.table::<Wide>().unwrap().hints().align, 64);
    assert_eq!(
        store.get(h).map(|w| w as *const Wide as usize % 64),
        Some(0)
    );

    let shared = SharedStore::new();
    shared.insert(Wide { lanes: [3.0; 16] });
    let table = shared.table::<Wide>().unwrap();
    assert_eq!(table.read().hints().align, 64);
    let _ = shared.insert(Link {
        next: Handle::null(),
        value: 0,
    });
    assert_eq!(
        shared.table::<Link>().unwrap().read().retention(),
        Retention::Traced
    );
}

#[test]
fn a_store_of_derived_types_saves_and_loads_without_a_registry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.snap");
    let mut store = Store::new();
    let link = store.insert(Link {
        next: Handle::null(),
        value: 7,
    });
    let anchor = store.insert(Anchor { first: link });
    let wide = store.insert(Wide { lanes: [0.5; 16] });
    store.save(&path).unwrap();

    let back = Store::load(&path, &TypeRegistry::new()).unwrap();
    assert_eq!(back.get(link), store.get(link));
    assert_eq!(back.get(anchor), store.get(anchor));
    assert_eq!(back.get(wide), store.get(wide));
    assert_eq!(back.table::<Link>().unwrap().retention(), Retention::Traced);
    let linked = TypeRegistry::linked();
    assert!(linked.contains("Link") && linked.contains("Wide") && linked.contains("Anchor"));
}

mod first {
    /// One of two linked types named `Twin`.
    #[derive(neurostore::Pooled, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    #[pooled(pod)]
    pub struct Twin(pub u32);
}

mod second {
    /// The other `Twin`.
    #[derive(neurostore::Pooled, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    #[pooled(pod)]
    pub struct Twin(pub u64);
}

#[test]
fn a_name_two_linked_types_share_must_be_registered_to_load() {
    assert!(!TypeRegistry::linked().contains("Twin"));
    let mut store = Store::new();
    let h = store.insert(first::Twin(5));
    let mut bytes = Vec::new();
    store.save_to(&mut bytes).unwrap();
    let unknown = Store::load_from(&bytes[..], &TypeRegistry::new()).unwrap_err();
    assert!(
        matches!(&unknown, Error::Snapshot(SnapshotError::UnknownType { type_name }) if type_name == "Twin"),
        "{unknown}"
    );
    let registry = TypeRegistry::new().with::<first::Twin>().unwrap();
    let back = Store::load_from(&bytes[..], &registry).unwrap();
    assert_eq!(back.get(h).map(|t| t.0), Some(5));
}

/// Not `Send`: no store can hold it, so nothing registers it, and the derive still
/// compiles for it.
#[derive(Pooled)]
#[allow(dead_code)]
struct ThreadBound {
    #[pooled(skip)]
    shared: std::rc::Rc<u32>,
}

#[test]
fn a_type_no_store_can_hold_still_derives() {
    let table: neurostore::Table<ThreadBound> = neurostore::Table::pooled();
    assert!(table.is_empty());
    assert!(!TypeRegistry::linked().contains("ThreadBound"));
}
