//! An arbitrary sequence of operations on a `Store` (insert, remove, get_mut, removal of
//! stale handles, defragmentation steps, whole and incremental collections, a snapshot
//! round trip), checked after each against a plain list of what should be there: every
//! live handle resolves to its value, every removed one stays stale, counts agree.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use neurostore::defrag::DefragBudget;
use neurostore::snapshot::TypeRegistry;
use neurostore::{Handle, Pooled, Store};

/// A manual Pod object (a root of tracing).
#[derive(Pooled, Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[pooled(pod)]
struct Cell {
    value: u64,
}

/// What the store should hold.
#[derive(Default)]
struct Model {
    live: Vec<(Handle<Cell>, u64)>,
    gone: Vec<Handle<Cell>>,
}

impl Model {
    fn check(&self, store: &Store) {
        let table = store.table::<Cell>();
        assert_eq!(table.map_or(0, |t| t.len()), self.live.len());
        for &(h, value) in &self.live {
            assert_eq!(store.get(h), Some(&Cell { value }), "{h:?}");
        }
        for &h in &self.gone {
            assert!(!store.contains(h), "{h:?} stays stale");
        }
        if let Some(t) = table {
            assert_eq!(t.iter().count(), self.live.len());
        }
    }
}

/// Reads the input as a byte-coded program.
struct Program<'a>(&'a [u8]);

impl Program<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn index(&mut self, len: usize) -> Option<usize> {
        let raw = u16::from_le_bytes([self.byte()?, self.byte().unwrap_or(0)]);
        (len > 0).then(|| raw as usize % len)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut store = Store::new();
    store.set_defrag_policy(None);
    let mut model = Model::default();
    let mut program = Program(data);
    let mut next_value = 0u64;
    while let Some(op) = program.byte() {
        match op % 8 {
            0 | 1 => {
                // Insert a few, so that chunks fill and slots get reused.
                for _ in 0..=(op / 8) % 16 {
                    next_value += 1;
                    let h = store.insert(Cell { value: next_value });
                    model.live.push((h, next_value));
                }
            }
            2 => {
                if let Some(k) = program.index(model.live.len()) {
                    let (h, value) = model.live.swap_remove(k);
                    assert_eq!(store.remove(h), Some(Cell { value }));
                    model.gone.push(h);
                }
            }
            3 => {
                if let Some(k) = program.index(model.live.len()) {
                    next_value += 1;
                    let (h, value) = &mut model.live[k];
                    store.get_mut(*h).expect("a live handle").value = next_value;
                    *value = next_value;
                }
            }
            4 => {
                if let Some(k) = program.index(model.gone.len()) {
                    assert_eq!(store.remove(model.gone[k]), None);
                }
            }
            5 => {
                let budget = DefragBudget::bytes(8 * (1 + usize::from(op / 8)));
                if let Some(t) = store.table_mut::<Cell>() {
                    let _ = t.defragment_step(budget);
                }
            }
            6 => {
                if op / 8 % 2 == 0 {
                    let report = store.collect();
                    assert_eq!(report.freed_total, 0, "manual objects are roots");
                } else if store.gc_begin().is_ok() {
                    let _ = store.gc_step(Duration::from_micros(50));
                    let report = store.gc_finish();
                    assert_eq!(report.freed_total, 0, "manual objects are roots");
                }
            }
            _ => {
                let mut bytes = Vec::new();
                store
                    .save_to(&mut bytes)
                    .expect("a store of Pod cells saves");
                store = Store::load_from(&bytes[..], &TypeRegistry::new()).expect("it loads");
                store.set_defrag_policy(None);
            }
        }
        model.check(&store);
    }
});
