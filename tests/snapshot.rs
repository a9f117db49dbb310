//! Snapshots: round trips against a reference model, determinism of later handles, and
//! refusal of every corrupt, truncated or foreign file with a typed error.

mod common;

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;

use neurostore::snapshot::{
    self, AtomicFile, Content, Encoding, Options, SectionInfo, TypeRegistry, inspect,
};
use neurostore::table::Table;
use neurostore::{
    Error, Handle, HierarchicalPool, Neuron, PoolConfig, Pooled, SnapshotError, Store, Synapse,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// A Pod type of the test's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Pooled)]
#[pooled(pod)]
struct Spike {
    at: u64,
    from: Handle<Neuron>,
}

/// A type with heap data, through serde + bincode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Pooled)]
#[pooled(serde)]
struct Note {
    text: String,
    next: Option<Handle<Note>>,
    tags: Vec<u16>,
}

/// A zero-sized serde type: objects encode to no bytes at all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Pooled)]
#[pooled(serde)]
struct Marker;

fn registry() -> TypeRegistry {
    let mut r = TypeRegistry::new();
    r.register::<Spike>()
        .and_then(|r| r.register::<Note>())
        .and_then(|r| r.register::<Marker>())
        .and_then(|r| r.register::<Neuron>())
        .expect("distinct names");
    r
}

fn new_store() -> Store {
    let mut s = Store::new();
    s.register::<Spike>().unwrap();
    s.register::<Note>().unwrap();
    s.register::<Marker>().unwrap();
    s
}

fn spike(i: u64) -> Spike {
    Spike {
        at: i * 3 + 1,
        from: Handle::from_bits(i << 8 | 1 << 32),
    }
}

fn note(i: u64) -> Note {
    Note {
        text: format!("note {i}").repeat((i % 4) as usize),
        next: i.is_multiple_of(3).then(|| Handle::from_bits(i | 1 << 32)),
        tags: (0..(i % 5) as u16).collect(),
    }
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    InsertSpike(u64),
    InsertNote(u64),
    InsertMarker,
    /// Removes the k-th handle ever issued (modulo their number), live or not.
    Remove(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u64>().prop_map(|i| Op::InsertSpike(i % 1000)),
        3 => any::<u64>().prop_map(|i| Op::InsertNote(i % 1000)),
        1 => Just(Op::InsertMarker),
        4 => any::<usize>().prop_map(Op::Remove),
    ]
}

/// A handle of any of the three types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Any {
    S(Handle<Spike>),
    N(Handle<Note>),
    M(Handle<Marker>),
}

/// The store under test and the reference: what each issued handle should resolve to.
#[derive(Default)]
struct Model {
    issued: Vec<Any>,
    spikes: HashMap<Handle<Spike>, Spike>,
    notes: HashMap<Handle<Note>, Note>,
    markers: HashMap<Handle<Marker>, Marker>,
}

impl Model {
    /// Applies `op` to `store` and the reference; returns the handle an insert gave.
    fn apply(&mut self, store: &mut Store, op: &Op) -> Option<Any> {
        match *op {
            Op::InsertSpike(i) => {
                let h = store.insert(spike(i));
                assert!(
                    self.spikes.insert(h, spike(i)).is_none(),
                    "a live handle reused"
                );
                self.issued.push(Any::S(h));
                Some(Any::S(h))
            }
            Op::InsertNote(i) => {
                let h = store.insert(note(i));
                assert!(
                    self.notes.insert(h, note(i)).is_none(),
                    "a live handle reused"
                );
                self.issued.push(Any::N(h));
                Some(Any::N(h))
            }
            Op::InsertMarker => {
                let h = store.insert(Marker);
                assert!(
                    self.markers.insert(h, Marker).is_none(),
                    "a live handle reused"
                );
                self.issued.push(Any::M(h));
                Some(Any::M(h))
            }
            Op::Remove(k) => {
                if !self.issued.is_empty() {
                    match self.issued[k % self.issued.len()] {
                        Any::S(h) => assert_eq!(store.remove(h), self.spikes.remove(&h)),
                        Any::N(h) => assert_eq!(store.remove(h), self.notes.remove(&h)),
                        Any::M(h) => assert_eq!(store.remove(h), self.markers.remove(&h)),
                    }
                }
                None
            }
        }
    }

    /// Every issued handle resolves in `store` exactly as the reference says.
    fn check(&self, store: &Store) {
        for h in &self.issued {
            match *h {
                Any::S(h) => assert_eq!(store.get(h), self.spikes.get(&h), "{h:?}"),
                Any::N(h) => assert_eq!(store.get(h), self.notes.get(&h), "{h:?}"),
                Any::M(h) => assert_eq!(store.get(h), self.markers.get(&h), "{h:?}"),
            }
        }
        assert_eq!(
            store.table::<Spike>().map_or(0, Table::len),
            self.spikes.len()
        );
        assert_eq!(
            store.table::<Note>().map_or(0, Table::len),
            self.notes.len()
        );
        assert_eq!(
            store.table::<Marker>().map_or(0, Table::len),
            self.markers.len()
        );
    }
}

fn save(store: &Store) -> Vec<u8> {
    let mut file = Vec::new();
    store.save_to(&mut file).expect("saving to memory works");
    file
}

fn load(file: &[u8]) -> Result<Store, Error> {
    Store::load_from(file, &registry())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Save, load, and the loaded store resolves every handle ever issued as the original
    /// does; then the same further operations give the same handles in both.
    #[test]
    fn round_trip_and_determinism(
        before in prop::collection::vec(op(), 0..300),
        after in prop::collection::vec(op(), 0..100),
        defrag in any::<bool>(),
    ) {
        let mut store = new_store();
        let mut model = Model::default();
        for op in &before {
            model.apply(&mut store, op);
        }
        if defrag {
            store.defragment();
        }
        let file = save(&store);
        let mut loaded = load(&file).expect("a saved store loads");
        model.check(&store);
        model.check(&loaded);
        let info = inspect(&file[..]).expect("a saved store inspects");
        prop_assert_eq!(info.bytes, file.len() as u64);
        // Placement is kept too: the loaded tables have the same figures.
        for (a, b) in store.stats().tables.iter().zip(loaded.stats().tables.iter()) {
            prop_assert_eq!((a.0, a.1.live, a.1.chunks, a.1.holes), (b.0, b.1.live, b.1.chunks, b.1.holes));
        }
        let mut twin = Model {
            issued: model.issued.clone(),
            spikes: model.spikes.clone(),
            notes: model.notes.clone(),
            markers: model.markers.clone(),
        };
        for op in &after {
            let a = model.apply(&mut store, op);
            let b = twin.apply(&mut loaded, op);
            prop_assert_eq!(a, b, "the loaded store returned another handle");
        }
        model.check(&store);
        twin.check(&loaded);
        // A second round trip of the continued store gives the same bytes.
        prop_assert_eq!(save(&store), save(&loaded));
    }
}

fn small_store() -> Store {
    let mut store = new_store();
    let a = store.insert(spike(1));
    store.insert(spike(2));
    store.remove(a);
    store.insert(note(3));
    let n = store.insert(note(4));
    store.insert(Marker);
    store.add_root(n);
    store
}

/// A store whose tables are dense, so their slot tables are written as runs.
fn dense_store() -> Store {
    let mut store = new_store();
    for i in 0..40 {
        store.insert(spike(i));
    }
    store.insert(note(1));
    store
}

/// The body length of each SLOT section of a file.
fn slot_section_lengths(file: &[u8]) -> Vec<u64> {
    slot_sections(file).iter().map(|s| s.len).collect()
}

/// Every SLOT section of `file`, in order.
fn slot_sections(file: &[u8]) -> Vec<SectionInfo> {
    let mut sections = inspect(file).unwrap().sections;
    sections.retain(|s| s.tag == "SLOT");
    sections
}

#[test]
fn slot_tables_are_written_in_their_shortest_form() {
    let mut store = new_store();
    store.set_defrag_policy(None); // the removals below leave every object where it is
    let hs: Vec<_> = (0..10_000).map(|i| store.insert(spike(i))).collect();
    let dense = save(&store);
    // One run for the sentinel, one for the 10,000 live slots.
    assert_eq!(slot_section_lengths(&dense)[2], 1 + 2 * 12);
    for h in hs.iter().step_by(2) {
        store.remove(*h);
    }
    let sparse = save(&store);
    // Alternating live and vacant slots, all in their first generation: a liveness
    // bitmap of 157 words, two generation runs (the sentinel's and the rest) and no slot
    // away from home, where records would take 1 + 10,001 * 8 bytes.
    assert_eq!(
        slot_section_lengths(&sparse)[2],
        1 + 157 * 8 + 4 + 2 * 8 + 4
    );
    let (dense, sparse) = (load(&dense).unwrap(), load(&sparse).unwrap());
    for (i, h) in hs.iter().enumerate() {
        assert_eq!(dense.get(*h), Some(&spike(i as u64)));
        assert_eq!(
            sparse.get(*h),
            (i % 2 == 1).then(|| spike(i as u64)).as_ref()
        );
    }
}

#[test]
fn every_flipped_byte_and_every_truncation_is_refused() {
    every_flip_and_truncation_of(&save(&small_store()));
    every_flip_and_truncation_of(&save(&dense_store()));
    every_flip_and_truncation_of(&save(&churned_store()));
}

/// A store whose spike table had removals and a compaction, so that its slot table is
/// written in the generation form, with slots away from home.
fn churned_store() -> Store {
    let mut store = new_store();
    store.set_defrag_policy(None);
    let hs: Vec<_> = (0..160).map(|i| store.insert(spike(i))).collect();
    for h in hs.iter().step_by(3) {
        store.remove(*h);
    }
    store.insert(note(5));
    assert!(store.defragment().moved > 0);
    for h in hs.iter().skip(1).step_by(5) {
        store.remove(*h);
    }
    let file = save(&store);
    assert_eq!(
        slot_forms(&file)[2],
        GENERATION_RUNS,
        "not the generation form"
    );
    store
}

/// The SLOT form byte of the generation form with away runs (format version 4).
const GENERATION_RUNS: u8 = 3;

/// The form byte of every SLOT section of `file`, in order.
fn slot_forms(file: &[u8]) -> Vec<u8> {
    slot_sections(file)
        .iter()
        .map(|s| file[s.offset as usize + 4 + 8])
        .collect()
}

#[test]
fn a_table_compacted_after_removals_saves_its_moved_slots_as_one_run() {
    let mut store = new_store();
    store.set_defrag_policy(None);
    let hs: Vec<_> = (0..10_000).map(|i| store.insert(spike(i))).collect();
    for h in hs.iter().step_by(2) {
        store.remove(*h);
    }
    let report = store
        .table_mut::<Spike>()
        .unwrap()
        .compact_in_order()
        .unwrap();
    assert_eq!(report.moved, 5_000);
    let file = save(&store);
    // The liveness bitmap, two generation runs and one away run: the 5,000 live slots
    // hold places 0 to 4,999, the vacant slots between them skipped.
    assert_eq!(slot_forms(&file)[2], GENERATION_RUNS);
    assert_eq!(
        slot_section_lengths(&file)[2],
        1 + 157 * 8 + 4 + 2 * 8 + 4 + 12
    );
    let mut loaded = load(&file).unwrap();
    for (i, h) in hs.iter().enumerate() {
        assert_eq!(
            loaded.get(*h),
            (i % 2 == 1).then(|| spike(i as u64)).as_ref()
        );
    }
    for i in 0..100 {
        assert_eq!(loaded.insert(spike(i)), store.insert(spike(i)));
    }
}

fn every_flip_and_truncation_of(file: &[u8]) {
    let file = file.to_vec();
    assert!(load(&file).is_ok());
    for i in 0..file.len() {
        let mut bad = file.clone();
        bad[i] ^= 0xff;
        assert!(
            load(&bad).is_err(),
            "flipping byte {i} of {} went unnoticed",
            file.len()
        );
        assert!(inspect(&bad[..]).is_err(), "inspect missed a flip at {i}");
        for bit in [0x01, 0x80] {
            let mut bad = file.clone();
            bad[i] ^= bit;
            assert!(
                load(&bad).is_err(),
                "flipping bit {bit:#x} of byte {i} went unnoticed"
            );
        }
    }
    common::every_truncation_is_refused(&file, load);
}

#[test]
fn random_flips_in_a_large_snapshot_are_refused() {
    let mut store = new_store();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut spikes = Vec::new();
    for i in 0..80_000 {
        spikes.push(store.insert(spike(i)));
        if i % 7 == 0 {
            store.insert(note(i));
        }
    }
    for _ in 0..20_000 {
        let k = (next() % spikes.len() as u64) as usize;
        store.remove(spikes[k]);
    }
    let file = save(&store);
    assert!(file.len() > 1 << 20, "{} bytes", file.len());
    load(&file).expect("the intact file loads");
    for _ in 0..60 {
        let mut bad = file.clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() % file.len() as u64) as usize;
            bad[at] ^= 1 << (next() % 8);
        }
        assert!(load(&bad).is_err(), "random flips went unnoticed");
    }
}

/// A writer that fails once `limit` bytes have gone through it.
struct FailAfter<W> {
    inner: W,
    limit: usize,
    written: usize,
}

impl<W: Write> Write for FailAfter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written >= self.limit {
            return Err(io::Error::other("disk full (test)"));
        }
        let n = buf.len().min(self.limit - self.written);
        let n = self.inner.write(&buf[..n])?;
        self.written += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn a_save_that_fails_after_n_bytes_leaves_the_previous_file_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.nsnap");
    let old = small_store();
    old.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    let mut new = small_store();
    for i in 0..500 {
        new.insert(spike(i));
    }
    let size = save(&new).len();
    for limit in (0..size).step_by(97).chain([size - 1]) {
        let file = AtomicFile::create(&path).unwrap();
        let tmp = file.temp_path().to_path_buf();
        let mut failing = FailAfter {
            inner: file,
            limit,
            written: 0,
        };
        let err = new
            .save_to_with(&mut failing, &mut Options::new())
            .expect_err("the writer fails");
        assert!(matches!(err, Error::Io(_)), "{err}");
        drop(failing); // no commit: the temporary file goes
        assert!(!tmp.exists(), "the temporary file is left behind");
        assert_eq!(std::fs::read(&path).unwrap(), before, "limit {limit}");
        let back = Store::load(&path, &registry()).unwrap();
        assert_eq!(back.table::<Spike>().map(Table::len), Some(1));
    }
    // A save that cannot even create its temporary file reports it and changes nothing.
    let missing = dir.path().join("no-such-dir").join("store.nsnap");
    assert!(matches!(new.save(&missing), Err(Error::Io(_))));
    new.save(&path).unwrap();
    let back = Store::load(&path, &registry()).unwrap();
    assert_eq!(back.table::<Spike>().map(Table::len), Some(501));
    assert!(!dir.path().join("store.nsnap.tmp").exists());
}

#[test]
fn roots_survive_and_keep_their_counts() {
    let mut store = small_store();
    let extra = store.insert(spike(9));
    store.add_root(extra);
    store.add_root(extra);
    let loaded = load(&save(&store)).unwrap();
    let mut a = store.roots();
    let mut b = loaded.roots();
    a.sort_by_key(|h| h.to_bits());
    b.sort_by_key(|h| h.to_bits());
    assert_eq!(a, b);
    let mut loaded = loaded;
    assert!(loaded.remove_root(extra));
    assert!(loaded.remove_root(extra));
    assert!(!loaded.remove_root(extra));
}

#[test]
#[allow(clippy::multiple_bound_locations)] // bytemuck's derive repeats `T: Pod`
fn loading_refuses_unknown_types_and_changed_schemas() {
    // Derived types are known by name without being listed; a generic one is not.
    let file = save(&small_store());
    let partial = TypeRegistry::new().with::<Spike>().unwrap();
    assert!(Store::load_from(&file[..], &partial).is_ok());
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Pooled)]
    #[pooled(pod)]
    #[repr(transparent)]
    struct Boxed<T: bytemuck::Pod>(T);
    let mut store = Store::new();
    store.register::<Boxed<u32>>().unwrap();
    store.insert(Boxed(3u32));
    let file = save(&store);
    let err = Store::load_from(&file[..], &partial).unwrap_err();
    assert!(
        matches!(&err, Error::Snapshot(SnapshotError::UnknownType { type_name }) if type_name == "Boxed"),
        "{err}"
    );
    let listed = TypeRegistry::new().with::<Boxed<u32>>().unwrap();
    assert!(Store::load_from(&file[..], &listed).is_ok());

    mod changed {
        use super::*;
        /// The test's `Spike` with one more field, under the same name.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Pooled)]
        #[pooled(pod, name = "Spike")]
        pub struct Spike {
            pub at: u64,
            pub from: Handle<Neuron>,
            pub weight: u64,
        }
        /// The same fields as the test's `Spike`, but 64-byte aligned chunks.
        #[repr(C, align(16))]
        #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Pooled)]
        #[pooled(pod, name = "Spike", align = 16)]
        pub struct Aligned {
            pub at: u64,
            pub from: Handle<Neuron>,
        }
    }
    let mut spikes: Table<Spike> = Table::pooled();
    spikes.insert(spike(5));
    let mut file = Vec::new();
    snapshot::save_table_to(&spikes, &mut file).unwrap();
    let err = snapshot::load_table_from::<changed::Spike>(&file[..]).unwrap_err();
    match err {
        Error::SchemaMismatch {
            type_name,
            expected,
            found,
        } => {
            assert_eq!(type_name, "Spike");
            assert_eq!(expected, changed::Spike::SCHEMA);
            assert_eq!(found, Spike::SCHEMA);
        }
        other => panic!("{other}"),
    }
    // A table file is not a store, and a store file is not a table.
    assert!(matches!(
        load(&file),
        Err(Error::Snapshot(SnapshotError::WrongContent { .. }))
    ));
    assert!(matches!(
        snapshot::load_table_from::<Spike>(&save(&small_store())[..]),
        Err(Error::Snapshot(SnapshotError::WrongContent { .. }))
    ));
    assert!(matches!(
        snapshot::load_table_from::<Note>(&file[..]),
        Err(Error::Snapshot(SnapshotError::WrongContent { .. }))
    ));
}

#[test]
fn element_layout_and_encoding_are_checked() {
    // Same name and field list (so the same schema text), other size: the schema
    // catches it.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Pooled)]
    #[pooled(pod, name = "Wide")]
    struct Wide {
        v: [u32; 2],
    }
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Pooled)]
    #[pooled(pod, name = "Wide", align = 8)]
    struct WideAligned {
        v: [u32; 2],
    }
    #[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Pooled)]
    #[pooled(serde, name = "Wide")]
    #[repr(C)]
    struct WideSerde {
        v: [u32; 2],
    }
    let mut t: Table<Wide> = Table::pooled();
    t.insert(Wide { v: [1, 2] });
    let mut file = Vec::new();
    snapshot::save_table_to(&t, &mut file).unwrap();
    assert_eq!(
        Wide::SCHEMA,
        WideAligned::SCHEMA,
        "hints do not change the schema"
    );
    let err = snapshot::load_table_from::<WideAligned>(&file[..]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Snapshot(SnapshotError::ElementSize {
                found_align: 4,
                expected_align: 8,
                ..
            })
        ),
        "{err}"
    );
    let err = snapshot::load_table_from::<WideSerde>(&file[..]).unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::EncodingMismatch { .. })),
        "{err}"
    );
}

#[test]
fn saving_refuses_tables_it_cannot_name_or_encode() {
    #[derive(Debug, PartialEq, Pooled)]
    struct Opaque(u32);
    assert_eq!(Opaque::CODEC.encoding(), Encoding::Unsupported);

    let mut store = new_store();
    store.register::<Opaque>().unwrap();
    store.insert(Opaque(1));
    let err = store.save_to(Vec::new()).unwrap_err();
    assert!(
        matches!(&err, Error::Snapshot(SnapshotError::NotPersistable { type_name }) if type_name == "Opaque"),
        "{err}"
    );
    let mut t: Table<Opaque> = Table::pooled();
    t.insert(Opaque(2));
    assert!(snapshot::save_table_to(&t, Vec::new()).is_err());
    assert!(matches!(
        TypeRegistry::new().register::<Opaque>(),
        Err(Error::Snapshot(SnapshotError::NotPersistable { .. }))
    ));

    let mut store = new_store();
    store.insert(7u32); // a table made by insert, not register
    let err = store.save_to(Vec::new()).unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::Unregistered { .. })),
        "{err}"
    );
    // An unregistered table that never held an object is left out.
    let mut store = new_store();
    store.ensure_table::<u32>();
    assert!(store.save_to(Vec::new()).is_ok());
}

#[test]
fn registry_refuses_two_types_under_one_name() {
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Pooled)]
    #[repr(C)]
    #[pooled(pod, name = "Neuron")]
    struct Impostor(u32);
    let mut r = TypeRegistry::new();
    r.register::<Neuron>().unwrap();
    let err = r.register::<Impostor>().unwrap_err();
    assert!(
        matches!(&err, Error::Snapshot(SnapshotError::DuplicateType { type_name }) if type_name == "Neuron"),
        "{err}"
    );
    assert_eq!(r.len(), 1);
    r.register::<Synapse>().unwrap();
    assert_eq!(r.len(), 2);
}

#[test]
fn single_tables_round_trip_with_progress() {
    let mut t: Table<Spike> = Table::pooled();
    let hs: Vec<_> = (0..50_000).map(|i| t.insert(spike(i))).collect();
    for h in hs.iter().step_by(3) {
        t.remove(*h);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spikes.nsnap");
    let mut saw = Vec::new();
    let report = Options::new()
        .progress(|p| saw.push(p))
        .save_table(&t, &path)
        .unwrap();
    assert_eq!(report.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(report.objects, t.len() as u64);
    assert_eq!(
        report.object_bytes,
        (t.len() * std::mem::size_of::<Spike>()) as u64
    );
    assert!(saw.windows(2).all(|w| w[0].done < w[1].done));
    assert_eq!(
        saw.last().map(|p| (p.done, p.total)),
        Some((report.bytes, report.bytes))
    );

    let mut loaded_progress = Vec::new();
    let mut back: Table<Spike> = Options::new()
        .progress(|p| loaded_progress.push(p))
        .load_table(&path)
        .unwrap();
    assert_eq!(
        loaded_progress.last().map(|p| (p.done, p.total)),
        Some((report.bytes, report.bytes))
    );
    for h in &hs {
        assert_eq!(back.get(*h), t.get(*h));
    }
    assert_eq!(back.insert(spike(1)), t.insert(spike(1)));
    let info = neurostore::snapshot::inspect_file(&path).unwrap();
    assert_eq!(info.content, Content::Table);
    assert_eq!(info.tables[0].live, t.len() as u64 - 1);
    let tags: Vec<_> = info.sections.iter().map(|s| s.tag.as_str()).collect();
    assert_eq!(tags, ["HEAD", "TABL", "SLOT", "FREE", "OBJS", "DONE"]);
}

/// A large table dropped just before a load leaves its memory with the pool, and the load
/// takes it over: what comes back must be exactly the snapshot, and the pool must hold
/// nothing more than a load into a pool of its own does.
#[test]
fn a_load_into_the_memory_of_a_dropped_table_restores_exactly_the_snapshot() {
    let pool = Arc::new(HierarchicalPool::new(PoolConfig::default()).unwrap());
    let mut t: Table<Spike> = Table::with_pool(pool.clone());
    let hs: Vec<_> = (0..600_000).map(|i| t.insert(spike(i))).collect();
    for h in hs.iter().step_by(4) {
        t.remove(*h);
    }
    let mut file = Vec::new();
    snapshot::save_table_to(&t, &mut file).unwrap();
    let expected: Vec<Option<Spike>> = hs.iter().map(|h| t.get(*h).copied()).collect();
    let in_use = pool.stats().in_use_bytes;
    drop(t);
    assert_eq!(pool.stats().in_use_bytes, 0);
    assert!(
        pool.stats().reserved_bytes >= in_use / 2,
        "the dropped table's memory waits in the pool"
    );

    let mut back: Table<Spike> = Options::new()
        .pool(pool.clone())
        .load_table_from(&file[..])
        .unwrap();
    for (h, e) in hs.iter().zip(&expected) {
        assert_eq!(back.get(*h), e.as_ref());
    }
    let on_its_own = Arc::new(HierarchicalPool::new(PoolConfig::default()).unwrap());
    let mut fresh: Table<Spike> = Options::new()
        .pool(on_its_own.clone())
        .load_table_from(&file[..])
        .unwrap();
    assert_eq!(
        pool.stats().reserved_bytes,
        on_its_own.stats().reserved_bytes
    );
    // The free places are taken by new objects exactly as in a fresh load.
    for i in 0..200_000 {
        let h = back.insert(spike(i + 7));
        assert_eq!(h, fresh.insert(spike(i + 7)));
        assert_eq!(back.get(h), Some(&spike(i + 7)));
    }
    assert!(back.values().eq(fresh.values()));
}

#[test]
fn foreign_files_get_typed_errors() {
    type Expect = fn(&SnapshotError) -> bool;
    let cases: [(&[u8], Expect); 3] = [
        (b"", |e| matches!(e, SnapshotError::BadMagic { .. })),
        (b"PK\x03\x04 a zip file, not a snapshot", |e| {
            matches!(e, SnapshotError::BadMagic { .. })
        }),
        (b"\x89NSNAP\r\n\x05\x00\x00\x00\x0d\x0c\x0b\x0a", |e| {
            matches!(
                e,
                SnapshotError::UnsupportedVersion {
                    found: 5,
                    supported: 4
                }
            )
        }),
    ];
    for (bytes, expected) in cases {
        match load(bytes) {
            Err(Error::Snapshot(e)) => assert!(expected(&e), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    let big_endian = b"\x89NSNAP\r\n\x01\x00\x00\x00\x0a\x0b\x0c\x0d";
    assert!(matches!(
        load(big_endian),
        Err(Error::Snapshot(SnapshotError::ByteOrder {
            found: 0x0d0c_0b0a
        }))
    ));
}

/// `file` as a version 1 writer would have written it: the same sections (version 1 had
/// the records and runs forms of SLOT, and a list of vacant slots, empty for a table
/// without any), the version field 1, the footer's checksums recomputed.
fn as_version_1(file: &[u8]) -> Vec<u8> {
    const FOOTER: usize = 4 + 8 + 12 + 4;
    let mut old = file.to_vec();
    old[8..12].copy_from_slice(&1u32.to_le_bytes());
    let body_at = old.len() - FOOTER + 12;
    let before = old.len() - FOOTER;
    let file_crc = crc32fast::hash(&old[..before]);
    old[body_at + 8..body_at + 12].copy_from_slice(&file_crc.to_le_bytes());
    let section_crc = crc32fast::hash(&old[before..old.len() - 4]);
    let end = old.len();
    old[end - 4..].copy_from_slice(&section_crc.to_le_bytes());
    old
}

#[test]
fn a_version_1_file_still_loads() {
    let store = dense_store();
    let file = save(&store);
    assert_eq!(file[8..12], 4u32.to_le_bytes());
    let old = as_version_1(&file);
    let loaded = load(&old).expect("a version 1 file loads");
    for (h, spike) in store.table::<Spike>().unwrap().iter() {
        assert_eq!(loaded.get(h), Some(spike));
    }
    assert_eq!(inspect(&old[..]).unwrap().format_version, 1);
}

/// The store of `tests/data/version_2_churned.nsnap`: tables with vacant slots and objects
/// away from their home places.
fn churned_fixture_store() -> (Store, Vec<Handle<Spike>>, Vec<Handle<Note>>) {
    let mut store = new_store();
    let spikes: Vec<_> = (0..200).map(|i| store.insert(spike(i))).collect();
    for h in spikes.iter().step_by(3) {
        store.remove(*h);
    }
    let notes: Vec<_> = (0..20).map(|i| store.insert(note(i))).collect();
    store.remove(notes[4]);
    store.defragment();
    for h in spikes.iter().skip(1).step_by(7) {
        store.remove(*h);
    }
    (store, spikes, notes)
}

/// A version 2 file lists the vacant slots in FREE; it loads, and the loaded store hands
/// out the handles the saved one would.
#[test]
fn a_version_2_file_with_vacant_slots_still_loads() {
    let old = include_bytes!("data/version_2_churned.nsnap");
    assert_eq!(inspect(&old[..]).unwrap().format_version, 2);
    let (mut store, spikes, notes) = churned_fixture_store();
    let mut loaded = load(old).expect("a version 2 file loads");
    for h in &spikes {
        assert_eq!(loaded.get(*h), store.get(*h));
    }
    for h in &notes {
        assert_eq!(loaded.get(*h), store.get(*h));
    }
    for i in 0..80 {
        assert_eq!(loaded.insert(spike(i)), store.insert(spike(i)));
    }
    assert_eq!(loaded.insert(note(1)), store.insert(note(1)));
    // Written again, it is a version 4 file, as the store's own save is.
    assert_eq!(save(&loaded), save(&store));
    assert_eq!(inspect(&save(&loaded)[..]).unwrap().format_version, 4);
}

/// A store snapshot whose head announces billions of tables (found by the `snapshot_load`
/// fuzz target): the count is the file's word, so the load refuses the file when the
/// sections run out instead of reserving room for every announced table.
#[test]
fn a_head_announcing_billions_of_tables_is_refused_without_reserving_for_them() {
    let bytes = include_bytes!("data/snapshot_huge_table_count.nsnap");
    for registry in [TypeRegistry::new(), registry()] {
        let err = Store::load_from(&bytes[..], &registry).unwrap_err();
        assert!(matches!(err, Error::Snapshot(_)), "{err}");
    }
}

/// A store of 640,000 spikes (10 MB of objects, so that a load reads them in pieces on
/// every thread) saved to a file.
fn large_store_file(name: &str) -> (Store, std::path::PathBuf) {
    let mut store = new_store();
    store.set_defrag_policy(None);
    let hs: Vec<_> = (0..640_000).map(|i| store.insert(spike(i))).collect();
    for h in hs.iter().step_by(5) {
        store.remove(*h);
    }
    store
        .table_mut::<Spike>()
        .unwrap()
        .compact_in_order()
        .unwrap();
    let path = std::env::temp_dir().join(format!("neurostore-{}-{name}.nsnap", std::process::id()));
    store.save(&path).unwrap();
    (store, path)
}

#[test]
fn a_large_file_loads_from_its_path_as_from_its_bytes() {
    let (store, path) = large_store_file("large");
    let bytes = std::fs::read(&path).unwrap();
    let from_path = Store::load(&path, &registry()).unwrap();
    let from_bytes = load(&bytes).unwrap();
    std::fs::remove_file(&path).unwrap();
    let spikes = store.table::<Spike>().unwrap();
    for loaded in [&from_path, &from_bytes] {
        let table = loaded.table::<Spike>().unwrap();
        assert_eq!(table.len(), spikes.len());
        assert!(table.iter().eq(spikes.iter()));
    }
}

#[test]
fn a_large_file_cut_short_or_changed_inside_its_objects_is_refused_from_its_path() {
    let (_, path) = large_store_file("damaged");
    let bytes = std::fs::read(&path).unwrap();
    let objects = inspect(&bytes[..])
        .unwrap()
        .sections
        .iter()
        .filter(|s| s.tag == "OBJS")
        .map(|s| (s.offset as usize + 12, s.len as usize))
        .max_by_key(|&(_, len)| len)
        .unwrap();
    // Cut in the middle of the objects; then whole, one byte changed there.
    std::fs::write(&path, &bytes[..objects.0 + objects.1 / 2]).unwrap();
    let cut = Store::load(&path, &registry()).unwrap_err();
    assert!(
        matches!(cut, Error::Snapshot(SnapshotError::Truncated { .. })),
        "{cut}"
    );
    let mut changed = bytes.clone();
    changed[objects.0 + objects.1 * 3 / 4] ^= 0x10;
    std::fs::write(&path, &changed).unwrap();
    let flipped = Store::load(&path, &registry()).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(
            flipped,
            Error::Snapshot(SnapshotError::ChecksumMismatch { .. })
        ),
        "{flipped}"
    );
}
