//! Arbitrary bytes as a snapshot: loading a store or a table of a Pod type or of a serde
//! type must return a typed error or a usable result, never panic, abort or overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurostore::snapshot::TypeRegistry;
use neurostore::{Handle, Neuron, Pooled, Store, Table};
use serde::{Deserialize, Serialize};

/// Heap data through serde + bincode.
#[derive(Pooled, Serialize, Deserialize, Debug)]
#[pooled(serde, retention = "traced")]
struct Note {
    text: String,
    next: Option<Handle<Note>>,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(store) = Store::load_from(data, &TypeRegistry::new()) {
        // A loaded store is usable: every table walks, and a new object goes in.
        for table in store.tables() {
            let _ = table.stats();
        }
        let mut store = store;
        let h = store.insert(Note {
            text: "after load".into(),
            next: None,
        });
        assert!(store.contains(h));
        let _ = store.collect();
    }
    if let Ok(mut table) = Table::<Neuron>::load_from(data) {
        let live = table.len();
        assert_eq!(table.iter().count(), live);
        let _ = table.defragment();
        assert_eq!(table.len(), live);
    }
    let _ = Table::<Note>::load_from(data);
});
