//! `#[derive(Pooled)]`: what `trace` visits for every shape, the schema fingerprint's
//! sensitivity and stability, and the hints the attributes give.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use neurostore::{
    AnyHandle, Handle, Lifetime, ObjectKind, PoolHints, Pooled, Retention, Trace, trace_handles,
};

#[derive(Pooled, Debug)]
struct Node {
    value: u64,
    next: Handle<Node>,
}

#[derive(Pooled)]
struct Edge(Handle<Node>, f32, Handle<Node>);

#[derive(Pooled)]
struct Marker;

#[derive(Pooled)]
#[allow(dead_code)] // the skipped fields exist to be left out of tracing
struct Nested {
    edge: Edge,
    edges: Vec<Edge>,
    maybe: Option<Handle<Node>>,
    arr: [Handle<Edge>; 3],
    pair: (Handle<Node>, u8, Handle<Marker>),
    boxed: Box<[Handle<Node>]>,
    deque: VecDeque<Option<Handle<Node>>>,
    map: BTreeMap<u32, Handle<Node>>,
    shared: Arc<Handle<Node>>,
    #[pooled(skip)]
    skipped: Handle<Node>,
    #[pooled(skip)]
    opaque: std::sync::Mutex<u8>,
}

#[derive(Pooled)]
#[allow(dead_code)]
enum Event {
    Quiet,
    Spike(Handle<Node>, #[pooled(skip)] Handle<Node>),
    Relay {
        from: Handle<Node>,
        to: Vec<Handle<Edge>>,
        gain: f64,
    },
}

#[derive(Pooled)]
struct Wrapper<T, const N: usize> {
    items: [T; N],
    owner: Handle<Node>,
}

#[derive(Pooled)]
struct Bounded<T: Clone>
where
    T: Send,
{
    inner: Option<T>,
}

#[derive(Pooled)]
enum Never {}

fn h<T>(index: u32, generation: u32) -> Handle<T> {
    Handle::from_bits(u64::from(generation) << 32 | u64::from(index))
}

fn bits(seen: &[AnyHandle]) -> Vec<(&'static str, u64)> {
    seen.iter().map(|a| (a.type_name(), a.to_bits())).collect()
}

#[test]
fn a_named_struct_visits_its_handle_fields() {
    let n = Node {
        value: 3,
        next: h(4, 1),
    };
    assert_eq!(
        bits(&trace_handles(&n)),
        [("Node", h::<Node>(4, 1).to_bits())]
    );
    let null = Node {
        value: 3,
        next: Handle::null(),
    };
    assert!(
        trace_handles(&null).is_empty(),
        "the null handle is never visited"
    );
}

#[test]
fn tuple_and_unit_structs() {
    let e = Edge(h(1, 1), 0.5, h(2, 3));
    assert_eq!(
        bits(&trace_handles(&e)),
        [
            ("Node", h::<Node>(1, 1).to_bits()),
            ("Node", h::<Node>(2, 3).to_bits())
        ]
    );
    assert!(trace_handles(&Marker).is_empty());
}

#[test]
fn nested_containers_are_visited_in_field_order_and_skips_are_left_out() {
    let mut map = BTreeMap::new();
    map.insert(2, h(31, 1));
    map.insert(1, h(30, 1));
    let value = Nested {
        edge: Edge(h(1, 1), 1.0, h(2, 1)),
        edges: vec![
            Edge(h(3, 1), 1.0, h(4, 1)),
            Edge(h(5, 1), 1.0, Handle::null()),
        ],
        maybe: Some(h(6, 1)),
        arr: [h(7, 1), Handle::null(), h(8, 1)],
        pair: (h(9, 1), 7, h(10, 1)),
        boxed: vec![h(11, 1), h(12, 1)].into_boxed_slice(),
        deque: VecDeque::from([None, Some(h(13, 1))]),
        map,
        shared: Arc::new(h(14, 1)),
        skipped: h(99, 1),
        opaque: std::sync::Mutex::new(0),
    };
    let seen = trace_handles(&value);
    let node = |i| ("Node", h::<Node>(i, 1).to_bits());
    let edge = |i| ("Edge", h::<Edge>(i, 1).to_bits());
    assert_eq!(
        bits(&seen),
        [
            node(1),
            node(2),
            node(3),
            node(4),
            node(5),
            node(6),
            edge(7),
            edge(8),
            node(9),
            ("Marker", h::<Marker>(10, 1).to_bits()),
            node(11),
            node(12),
            node(13),
            node(30),
            node(31),
            node(14),
        ]
    );
    assert!(
        seen.iter()
            .all(|a| a.to_bits() != h::<Node>(99, 1).to_bits())
    );
    assert_eq!(seen[6].typed::<Edge>(), Some(h(7, 1)));
    assert_eq!(seen[6].typed::<Node>(), None);
}

#[test]
fn enum_variants_are_traced() {
    assert!(trace_handles(&Event::Quiet).is_empty());
    let spike = Event::Spike(h(1, 1), h(2, 1));
    assert_eq!(
        bits(&trace_handles(&spike)),
        [("Node", h::<Node>(1, 1).to_bits())]
    );
    let relay = Event::Relay {
        from: h(3, 5),
        to: vec![h(4, 1), h(5, 1)],
        gain: 2.0,
    };
    assert_eq!(
        bits(&trace_handles(&relay)),
        [
            ("Node", h::<Node>(3, 5).to_bits()),
            ("Edge", h::<Edge>(4, 1).to_bits()),
            ("Edge", h::<Edge>(5, 1).to_bits()),
        ]
    );
    fn traces_never(v: &Never) -> Vec<AnyHandle> {
        trace_handles(v)
    }
    let _ = traces_never;
}

#[test]
fn generic_types_trace_through_their_parameters() {
    let w = Wrapper::<Handle<Edge>, 2> {
        items: [h(1, 1), h(2, 1)],
        owner: h(3, 1),
    };
    assert_eq!(
        bits(&trace_handles(&w)),
        [
            ("Edge", h::<Edge>(1, 1).to_bits()),
            ("Edge", h::<Edge>(2, 1).to_bits()),
            ("Node", h::<Node>(3, 1).to_bits()),
        ]
    );
    let plain = Wrapper::<u16, 4> {
        items: [1, 2, 3, 4],
        owner: Handle::null(),
    };
    assert!(trace_handles(&plain).is_empty());
    let b = Bounded {
        inner: Some(vec![h::<Node>(8, 1)]),
    };
    assert_eq!(trace_handles(&b).len(), 1);
    assert_eq!(Wrapper::<u16, 4>::TYPE_NAME, "Wrapper");
    assert_ne!(
        Wrapper::<u16, 4>::SCHEMA,
        Wrapper::<u64, 4>::SCHEMA,
        "size enters the fingerprint"
    );
}

#[test]
fn std_containers_trace_what_they_hold() {
    let mut m: HashMap<Handle<Node>, Vec<Handle<Edge>>> = HashMap::new();
    m.insert(h(1, 1), vec![h(2, 1)]);
    let seen = trace_handles(&m);
    assert_eq!(
        bits(&seen),
        [
            ("Node", h::<Node>(1, 1).to_bits()),
            ("Edge", h::<Edge>(2, 1).to_bits())
        ]
    );
    let r: Result<Handle<Node>, (u8, Handle<Edge>)> = Err((1, h(3, 1)));
    assert_eq!(
        bits(&trace_handles(&r)),
        [("Edge", h::<Edge>(3, 1).to_bits())]
    );
    let s: &[Handle<Node>] = &[h(1, 1), h(2, 1)];
    assert_eq!(trace_handles(s).len(), 2);
    assert_eq!(
        trace_handles(&String::from("no handles")).len() + trace_handles(&1.5f64).len(),
        0
    );
}

#[test]
fn names_and_hints_come_from_the_attributes() {
    #[derive(Pooled)]
    #[pooled(
        name = "Cell",
        retention = "traced",
        align = 64,
        kind = "activation",
        lifetime = "short"
    )]
    struct Activation {
        values: [f32; 16],
    }
    assert_eq!(Activation::TYPE_NAME, "Cell");
    assert_eq!(
        Activation::HINTS,
        PoolHints {
            retention: Retention::Traced,
            align: 64,
            kind: Some(ObjectKind::Activation),
            lifetime: Some(Lifetime::Short),
            pod: false,
        }
    );
    assert_eq!(Node::TYPE_NAME, "Node");
    assert_eq!(Node::HINTS, PoolHints::of::<Node>());
    assert_eq!(Node::HINTS.align, 8);

    // An alignment below the type's own gives the type's own.
    #[derive(Pooled)]
    #[pooled(
        align = 2,
        kind = "gradient",
        lifetime = "medium",
        retention = "manual"
    )]
    struct Grad(f64);
    assert_eq!(Grad::HINTS.align, 8);
    assert_eq!(Grad::HINTS.kind, Some(ObjectKind::Gradient));
    assert_eq!(Grad::HINTS.lifetime, Some(Lifetime::Medium));
    assert_eq!(Grad::HINTS.retention, Retention::Manual);
}

#[test]
fn pod_types_say_so() {
    #[derive(Pooled, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    #[pooled(pod, kind = "weight")]
    struct W {
        value: f32,
        target: Handle<Node>,
        trace: f32,
    }
    const { assert!(W::HINTS.pod) };
    assert_eq!(W::HINTS.kind, Some(ObjectKind::Weight));
    let w = W {
        value: 1.0,
        target: h(2, 1),
        trace: 0.0,
    };
    assert_eq!(trace_handles(&w).len(), 1);
    assert_eq!(bytemuck::bytes_of(&w).len(), 16);
}

/// Types with one name and one change each, in their own modules.
mod versions {
    use neurostore::{Handle, Pooled};

    pub mod base {
        use super::*;
        #[derive(Pooled)]
        #[pooled(name = "Syn")]
        pub struct S {
            pub pre: Handle<u8>,
            pub weight: f32,
        }
    }
    pub mod same_again {
        use super::*;
        #[derive(Pooled)]
        #[pooled(name = "Syn", retention = "traced", kind = "synapse")]
        pub struct S {
            pub pre: Handle<u8>,
            pub weight: f32,
        }
    }
    pub mod renamed_field {
        use super::*;
        #[derive(Pooled)]
        #[pooled(name = "Syn")]
        pub struct S {
            pub source: Handle<u8>,
            pub weight: f32,
        }
    }
    pub mod retyped_field {
        use super::*;
        #[derive(Pooled)]
        #[pooled(name = "Syn")]
        pub struct S {
            pub pre: Handle<u8>,
            pub weight: u32,
        }
    }
    pub mod reordered {
        use super::*;
        #[derive(Pooled)]
        #[pooled(name = "Syn")]
        pub struct S {
            pub weight: f32,
            pub pre: Handle<u8>,
        }
    }
    pub mod added_field {
        use super::*;
        #[derive(Pooled)]
        #[pooled(name = "Syn")]
        pub struct S {
            pub pre: Handle<u8>,
            pub weight: f32,
            pub delay: f32,
        }
    }
    pub mod renamed_type {
        use super::*;
        #[derive(Pooled)]
        #[pooled(name = "Synapse")]
        pub struct S {
            pub pre: Handle<u8>,
            pub weight: f32,
        }
    }
    pub mod tuple_shape {
        use super::*;
        #[derive(Pooled)]
        #[pooled(name = "Syn")]
        pub struct S(pub Handle<u8>, pub f32);
    }
    pub mod realigned {
        use super::*;
        #[derive(Pooled)]
        #[pooled(name = "Syn")]
        #[repr(C, align(16))]
        pub struct S {
            pub pre: Handle<u8>,
            pub weight: f32,
        }
    }
}

#[test]
fn the_fingerprint_changes_with_every_change_to_the_layout() {
    use versions::*;
    let base = base::S::SCHEMA;
    assert_eq!(
        same_again::S::SCHEMA,
        base,
        "spacing and hints are not part of the schema"
    );
    let changed = [
        ("renamed field", renamed_field::S::SCHEMA),
        ("retyped field", retyped_field::S::SCHEMA),
        ("reordered fields", reordered::S::SCHEMA),
        ("added field", added_field::S::SCHEMA),
        ("renamed type", renamed_type::S::SCHEMA),
        ("tuple shape", tuple_shape::S::SCHEMA),
        ("alignment", realigned::S::SCHEMA),
    ];
    for (i, (what, schema)) in changed.iter().enumerate() {
        assert_ne!(*schema, base, "{what} must change the fingerprint");
        for (other, s) in &changed[i + 1..] {
            assert_ne!(schema, s, "{what} and {other} collide");
        }
    }
    // Values are constants, usable in const context.
    const BASE: u64 = versions::base::S::SCHEMA;
    assert_eq!(BASE, base);
}

/// A fixed type whose fingerprint is pinned: any change to the recipe (the canonical
/// text, the hash, the mixing of size and alignment) breaks every snapshot written before
/// it, so it must show up here.
#[derive(Pooled)]
#[repr(C)]
struct PinnedSchema {
    index: u32,
    generation: u32,
    weights: [f32; 4],
    link: Handle<PinnedSchema>,
}

#[test]
fn the_fingerprint_of_a_fixed_type_is_pinned() {
    // FNV-1a 64 of
    // "neurostore-schema-v1|PinnedSchema|struct{index:u32;generation:u32;weights:[f32;4];link:Handle<PinnedSchema>;}"
    // continued over size 32 and alignment 4, each as 8 little-endian bytes.
    assert_eq!(std::mem::size_of::<PinnedSchema>(), 32);
    assert_eq!(PinnedSchema::SCHEMA, reference_fingerprint());
    assert_eq!(PinnedSchema::SCHEMA, 0x42d1_f7cf_9d12_c6c1);
}

/// The recipe written out independently of the derive.
fn reference_fingerprint() -> u64 {
    let text = "neurostore-schema-v1|PinnedSchema|struct{index:u32;generation:u32;weights:[f32;4];link:Handle<PinnedSchema>;}";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = text
        .bytes()
        .chain(32u64.to_le_bytes())
        .chain(4u64.to_le_bytes());
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[test]
fn trace_is_callable_through_the_trait_object_free_api() {
    fn count<T: Trace>(v: &T) -> usize {
        trace_handles(v).len()
    }
    assert_eq!(
        count(&Node {
            value: 0,
            next: h(1, 1)
        }),
        1
    );
}

mod tables {
    //! Tables built from the hints: retention, alignment, and types without the derive.

    use super::*;
    use neurostore::table::{Table, default_pool};
    use neurostore::{Error, NeuralGraph, Neuron, Store, Synapse};

    #[derive(Pooled, Clone, Copy, Debug, PartialEq)]
    #[pooled(align = 64, retention = "traced", kind = "activation")]
    #[repr(C)]
    struct Line {
        values: [f32; 16],
    }

    #[derive(Pooled, Clone, Copy, Debug, PartialEq)]
    #[pooled(align = 32)]
    struct Half([u8; 32]);

    fn addr<T>(r: &T) -> usize {
        r as *const T as usize
    }

    #[test]
    fn every_object_of_an_aligned_type_is_aligned_across_chunks_and_moves() {
        let mut t: Table<Line> = Table::pooled();
        assert_eq!(t.hints(), Line::HINTS);
        assert_eq!(t.retention(), Retention::Traced);
        let hs: Vec<_> = (0..5000)
            .map(|i| {
                t.insert(Line {
                    values: [i as f32; 16],
                })
            })
            .collect();
        assert!(t.stats().chunks > 1);
        assert!(t.iter().all(|(_, v)| addr(v) % 64 == 0));
        for h in hs.iter().step_by(3) {
            t.remove(*h);
        }
        t.defragment();
        for (i, h) in hs.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
            let v = t.get(*h).expect("live");
            assert_eq!(v.values[0], i as f32);
            assert_eq!(addr(v) % 64, 0);
        }
        // Another alignment, in a pool of its own.
        let pool =
            Arc::new(neurostore::HierarchicalPool::new(neurostore::PoolConfig::default()).unwrap());
        let mut halves: Table<Half> = Table::pooled_in(pool);
        let hs: Vec<_> = (0..3000u32)
            .map(|i| halves.insert(Half([i as u8; 32])))
            .collect();
        assert!(
            hs.iter()
                .all(|h| addr(halves.get(*h).unwrap()).is_multiple_of(32))
        );
    }

    #[test]
    fn impossible_hints_are_errors() {
        let odd = PoolHints {
            align: 48,
            ..PoolHints::of::<[u8; 96]>()
        };
        let too_big = PoolHints {
            align: 8192,
            ..PoolHints::of::<[u8; 8192]>()
        };
        let not_multiple = PoolHints {
            align: 64,
            ..PoolHints::of::<[u8; 96]>()
        };
        for (hints, size_ok) in [(odd, true), (not_multiple, true)] {
            let r = Table::<[u8; 96]>::with_hints(default_pool(), hints);
            assert!(
                matches!(r, Err(Error::InvalidArgument { name: "align", .. })),
                "{hints:?} {size_ok}"
            );
        }
        assert!(matches!(
            Table::<[u8; 8192]>::with_hints(default_pool(), too_big),
            Err(Error::InvalidArgument { name: "align", .. })
        ));
        // Below the type's own alignment: raised to it.
        let low = PoolHints {
            align: 1,
            ..PoolHints::of::<u64>()
        };
        assert_eq!(
            Table::<u64>::with_hints(default_pool(), low)
                .unwrap()
                .hints()
                .align,
            8
        );
    }

    #[test]
    fn types_without_the_derive_get_manual_tables() {
        let mut t: Table<String> = Table::new();
        assert_eq!(t.hints(), PoolHints::of::<String>());
        assert_eq!(t.retention(), Retention::Manual);
        let h = t.insert("plain".to_string());
        assert_eq!(t.get(h).map(String::as_str), Some("plain"));
        let mut store = Store::new();
        store.insert(1.5f32);
        assert!(
            store
                .tables()
                .all(|t| t.hints().retention == Retention::Manual)
        );
    }

    /// A generic derived type: not registered when the program links (a static cannot
    /// name every instance), so `register` decides its table.
    #[derive(Pooled, Clone, Copy, Debug, PartialEq)]
    #[pooled(align = 64, retention = "traced")]
    #[repr(C, align(64))]
    struct Lane<T: Copy + 'static> {
        value: T,
    }

    #[test]
    fn a_derived_type_gets_its_hinted_table_whatever_makes_it() {
        let mut store = Store::new();
        assert_eq!(store.ensure_table::<Line>().hints(), Line::HINTS);
        let mut store = Store::new();
        let h = store.insert(Line { values: [1.0; 16] });
        assert_eq!(store.table::<Line>().unwrap().hints(), Line::HINTS);
        assert!(
            store.register::<Line>().is_ok(),
            "registered already: a no-op"
        );
        assert_eq!(store.get(h).map(|l| l.values[0]), Some(1.0));
        let shared = neurostore::SharedStore::new();
        assert_eq!(shared.ensure_table::<Line>().read().hints(), Line::HINTS);
    }

    #[test]
    fn register_builds_a_generic_types_table_from_the_hints_once() {
        let mut store = Store::new();
        // An empty default table is rebuilt with the hints.
        store.ensure_table::<Lane<f32>>();
        assert_eq!(store.table::<Lane<f32>>().unwrap().hints().align, 64);
        assert_eq!(
            store.table::<Lane<f32>>().unwrap().retention(),
            Retention::Manual
        );
        let t = store.register::<Lane<f32>>().unwrap();
        assert_eq!(t.hints(), Lane::<f32>::HINTS);
        let h = t.insert(Lane { value: 1.0 });
        assert!(store.register::<Lane<f32>>().is_ok(), "again: a no-op");
        assert_eq!(store.get(h).map(|l| l.value), Some(1.0));

        // A table that already holds objects with other hints is refused, unchanged.
        let mut store = Store::new();
        let early = store.insert(Lane { value: 2u64 });
        let err = store.register::<Lane<u64>>().unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { name: "hints", .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("register the type before its first insert")
        );
        assert_eq!(
            store.table::<Lane<u64>>().unwrap().retention(),
            Retention::Manual
        );
        assert_eq!(store.get(early).map(|l| l.value), Some(2));

        // The shared store does the same.
        let shared = neurostore::SharedStore::new();
        let t = shared.register::<Lane<u8>>().unwrap();
        assert_eq!(t.read().retention(), Retention::Traced);
    }

    #[test]
    fn the_built_in_types_use_the_derive() {
        assert_eq!(Neuron::TYPE_NAME, "Neuron");
        assert_eq!(Synapse::TYPE_NAME, "Synapse");
        assert_eq!(Neuron::HINTS.kind, Some(ObjectKind::Neuron));
        assert_eq!(Neuron::HINTS.align, 64);
        const { assert!(Neuron::HINTS.pod && Synapse::HINTS.pod) };
        assert_eq!(Synapse::HINTS.kind, Some(ObjectKind::Synapse));
        assert_eq!(
            neurostore::neural::Signal::HINTS.lifetime,
            Some(Lifetime::Short)
        );
        assert_eq!(
            neurostore::neural::Weight::HINTS.kind,
            Some(ObjectKind::Weight)
        );

        let mut g = NeuralGraph::new();
        let a = g.add_neuron(&Default::default()).unwrap();
        let b = g.add_neuron(&Default::default()).unwrap();
        let s = g.connect(a, b, 1.0, 1.5).unwrap();
        assert_eq!(g.neurons().hints(), Neuron::HINTS);
        assert!(g.neurons().iter().all(|(_, n)| addr(n) % 64 == 0));
        // A stored synapse names its neurons by slot index (the graph keeps them live):
        // it holds no handle for the collector to follow; the graph shows them as handles.
        let record = g.synapses().get(s).unwrap();
        assert!(trace_handles(record).is_empty());
        let view = g.synapse(s).unwrap();
        assert_eq!((view.pre, view.post), (a, b));
    }

    #[test]
    #[allow(clippy::multiple_bound_locations)] // bytemuck's derive repeats `T: Pod`
    fn a_generic_pod_type_is_pooled_where_its_instance_is_pod() {
        #[derive(Pooled, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        #[pooled(pod)]
        #[repr(transparent)]
        struct Cell<T: bytemuck::Pod>(T);
        const { assert!(Cell::<u32>::HINTS.pod) };
        let t: Table<Cell<f64>> = Table::pooled();
        assert!(t.hints().pod);
    }
}
