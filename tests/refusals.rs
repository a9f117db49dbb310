//! What a caller can pass that the library must refuse with a typed error, changing
//! nothing: memory the pool will not give, hints and policies that cannot hold.

use std::sync::Arc;

use neurostore::store::{SharedStore, Store};
use neurostore::table::Table;
use neurostore::{Error, HierarchicalPool, PoolConfig};

/// A pool that refuses to reserve more than `bytes` from the OS.
fn capped_pool(bytes: usize) -> Arc<HierarchicalPool> {
    let mut config = PoolConfig::default();
    config.total_memory = Some(bytes);
    Arc::new(HierarchicalPool::new(config).expect("a valid config"))
}

type Row = [u64; 8];

#[test]
fn a_refused_table_insert_is_an_error_and_the_table_keeps_what_it_held() {
    let mut table: Table<Row> = Table::with_pool(capped_pool(1 << 20));
    let mut handles = Vec::new();
    let err = loop {
        match table.try_insert([handles.len() as u64; 8]) {
            Ok(h) => handles.push(h),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
    assert!(!handles.is_empty());
    assert_eq!(table.len(), handles.len());
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(table.get(*h), Some(&[i as u64; 8]));
    }
    let before = table.len();
    let batch = table.try_insert_batch((0..100_000).map(|i| [i; 8]));
    assert!(matches!(batch, Err(Error::OutOfMemory { .. })));
    assert_eq!(
        table.len(),
        before,
        "a refused batch leaves no object behind"
    );
    let mut empty: Table<Row> = Table::with_pool(capped_pool(1 << 20));
    assert!(matches!(
        empty.try_reserve(1 << 20),
        Err(Error::OutOfMemory { .. })
    ));
    assert!(empty.is_empty());
    assert!(matches!(
        Table::<Row>::try_with_capacity(usize::MAX),
        Err(Error::OutOfMemory { .. } | Error::TableFull { .. })
    ));
}

#[test]
fn a_refused_store_insert_is_an_error_and_the_store_keeps_what_it_held() {
    let mut store = Store::with_pool(capped_pool(1 << 20));
    let mut handles = Vec::new();
    let err = loop {
        match store.try_insert([handles.len() as u64; 8]) {
            Ok(h) => handles.push(h),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
    assert_eq!(store.table::<Row>().map(Table::len), Some(handles.len()));
    assert!(handles.iter().all(|h| store.contains(*h)));

    let shared = SharedStore::with_pool(capped_pool(1 << 20));
    let mut inserted = 0;
    let err = loop {
        match shared.try_insert([7u64; 8]) {
            Ok(_) => inserted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
    assert_eq!(
        shared.table::<Row>().map(|t| t.read().len()),
        Some(inserted)
    );
}
