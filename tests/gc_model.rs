//! The collector against a reference: random graphs over traced and manual types, random
//! roots and removals; the reference computes reachability by BFS over a `HashMap` graph.
//! A full collection frees exactly the unreachable traced objects (cycles included) and
//! drops each once; an incremental cycle with random mutations between its steps never
//! frees an object reachable at its finish.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proptest::prelude::*;

use neurostore::{
    AnyHandle, DanglingPolicy, GcPolicy, GcReport, Handle, Pooled, Retention, Store, Table,
    trace_handles,
};

/// Records its id when dropped.
#[derive(Debug)]
struct DropLog {
    id: u64,
    log: Arc<Mutex<Vec<u64>>>,
}

impl Drop for DropLog {
    fn drop(&mut self) {
        self.log.lock().push(self.id);
    }
}

#[derive(Pooled)]
#[pooled(retention = "traced")]
struct Node {
    edges: Vec<Handle<Node>>,
    leaf: Option<Handle<Leaf>>,
    #[pooled(skip)]
    #[allow(dead_code)] // only ever dropped
    log: DropLog,
}

#[derive(Pooled)]
#[pooled(retention = "traced")]
struct Leaf {
    back: Option<Handle<Node>>,
    #[pooled(skip)]
    #[allow(dead_code)] // only ever dropped
    log: DropLog,
}

/// Manual: every anchor is a root.
#[derive(Pooled)]
struct Anchor {
    nodes: Vec<Handle<Node>>,
    leaves: Vec<Handle<Leaf>>,
}

/// Whether every dangling handle `report` lists names `target`.
fn all_dangling_name<T: 'static>(report: &GcReport, target: Handle<T>) -> bool {
    report
        .dangling
        .iter()
        .all(|d| d.target == AnyHandle::new(target))
}

/// A node holding `edges`, whose drop is logged in `log` as `id`.
fn node(edges: Vec<Handle<Node>>, id: u64, log: &Arc<Mutex<Vec<u64>>>) -> Node {
    Node {
        edges,
        leaf: None,
        log: DropLog {
            id,
            log: log.clone(),
        },
    }
}

#[derive(Clone, Debug)]
enum Op {
    Node {
        edges: Vec<usize>,
        leaf: Option<usize>,
    },
    Leaf {
        back: Option<usize>,
    },
    Anchor {
        nodes: Vec<usize>,
        leaves: Vec<usize>,
    },
    AddEdge {
        from: usize,
        to: usize,
    },
    RemoveNode(usize),
    RemoveAnchor(usize),
    AddRoot(usize),
    RemoveRoot(usize),
    Collect,
    Incremental {
        steps: Vec<Vec<Op>>,
    },
}

fn leaf_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::collection::vec(any::<usize>(), 0..4), prop::option::of(any::<usize>()))
            .prop_map(|(edges, leaf)| Op::Node { edges, leaf }),
        2 => prop::option::of(any::<usize>()).prop_map(|back| Op::Leaf { back }),
        1 => (prop::collection::vec(any::<usize>(), 0..3), prop::collection::vec(any::<usize>(), 0..2))
            .prop_map(|(nodes, leaves)| Op::Anchor { nodes, leaves }),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(from, to)| Op::AddEdge { from, to }),
        1 => any::<usize>().prop_map(Op::RemoveNode),
        1 => any::<usize>().prop_map(Op::RemoveAnchor),
        1 => any::<usize>().prop_map(Op::AddRoot),
        1 => any::<usize>().prop_map(Op::RemoveRoot),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => leaf_op(),
        1 => Just(Op::Collect),
        1 => prop::collection::vec(prop::collection::vec(leaf_op(), 0..6), 1..5)
            .prop_map(|steps| Op::Incremental { steps }),
    ]
}

/// The reference: every object with the handles it holds, the roots, the drops.
struct Model {
    store: Store,
    log: Arc<Mutex<Vec<u64>>>,
    next_id: u64,
    /// Every node, leaf and anchor handle ever made (live or not), for picking.
    nodes: Vec<Handle<Node>>,
    leaves: Vec<Handle<Leaf>>,
    anchors: Vec<Handle<Anchor>>,
    /// Live objects: handle → (id, held handles).
    live: HashMap<AnyHandle, (Option<u64>, Vec<AnyHandle>)>,
    roots: Vec<AnyHandle>,
}

impl Model {
    fn new(policy: DanglingPolicy) -> Model {
        let mut store = Store::new();
        store.register::<Node>().unwrap();
        store.register::<Leaf>().unwrap();
        store.register::<Anchor>().unwrap();
        store.set_dangling_policy(policy);
        Model {
            store,
            log: Arc::new(Mutex::new(Vec::new())),
            next_id: 0,
            nodes: Vec::new(),
            leaves: Vec::new(),
            anchors: Vec::new(),
            live: HashMap::new(),
            roots: Vec::new(),
        }
    }

    fn pick<T>(list: &[Handle<T>], i: usize) -> Option<Handle<T>> {
        (!list.is_empty()).then(|| list[i % list.len()])
    }

    fn log(&mut self) -> DropLog {
        self.next_id += 1;
        DropLog {
            id: self.next_id,
            log: self.log.clone(),
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Node { edges, leaf } => {
                let edges: Vec<_> = edges
                    .iter()
                    .filter_map(|&i| Self::pick(&self.nodes, i))
                    .collect();
                let leaf = leaf.and_then(|i| Self::pick(&self.leaves, i));
                let log = self.log();
                let id = log.id;
                let node = Node { edges, leaf, log };
                let held = trace_handles(&node);
                let h = self.store.insert(node);
                self.nodes.push(h);
                self.live.insert(AnyHandle::new(h), (Some(id), held));
            }
            Op::Leaf { back } => {
                let back = back.and_then(|i| Self::pick(&self.nodes, i));
                let log = self.log();
                let id = log.id;
                let leaf = Leaf { back, log };
                let held = trace_handles(&leaf);
                let h = self.store.insert(leaf);
                self.leaves.push(h);
                self.live.insert(AnyHandle::new(h), (Some(id), held));
            }
            Op::Anchor { nodes, leaves } => {
                let anchor = Anchor {
                    nodes: nodes
                        .iter()
                        .filter_map(|&i| Self::pick(&self.nodes, i))
                        .collect(),
                    leaves: leaves
                        .iter()
                        .filter_map(|&i| Self::pick(&self.leaves, i))
                        .collect(),
                };
                let held = trace_handles(&anchor);
                let h = self.store.insert(anchor);
                self.anchors.push(h);
                self.live.insert(AnyHandle::new(h), (None, held));
            }
            Op::AddEdge { from, to } => {
                let (Some(from), Some(to)) =
                    (Self::pick(&self.nodes, *from), Self::pick(&self.nodes, *to))
                else {
                    return;
                };
                if let Some(n) = self.store.get_mut(from) {
                    n.edges.push(to);
                    self.live
                        .get_mut(&AnyHandle::new(from))
                        .unwrap()
                        .1
                        .push(AnyHandle::new(to));
                } else {
                    assert!(!self.live.contains_key(&AnyHandle::new(from)));
                }
            }
            Op::RemoveNode(i) => {
                let Some(h) = Self::pick(&self.nodes, *i) else {
                    return;
                };
                let removed = self.store.remove(h).is_some();
                assert_eq!(removed, self.live.remove(&AnyHandle::new(h)).is_some());
            }
            Op::RemoveAnchor(i) => {
                let Some(h) = Self::pick(&self.anchors, *i) else {
                    return;
                };
                let removed = self.store.remove(h).is_some();
                assert_eq!(removed, self.live.remove(&AnyHandle::new(h)).is_some());
            }
            Op::AddRoot(i) => {
                if let Some(h) = Self::pick(&self.nodes, *i) {
                    self.store.add_root(h);
                    self.roots.push(AnyHandle::new(h));
                }
            }
            Op::RemoveRoot(i) => {
                if self.roots.is_empty() {
                    return;
                }
                let r = self.roots.remove(i % self.roots.len());
                let h = r.typed::<Node>().unwrap();
                assert!(self.store.remove_root(h));
            }
            Op::Collect => self.collect_and_check(),
            Op::Incremental { steps } => self.incremental(steps),
        }
    }

    /// Reachable live objects and the dangling edges of reachable holders, by BFS.
    fn reachable(&self) -> (HashSet<AnyHandle>, usize) {
        let mut seen = HashSet::new();
        let mut queue = VecDeque::new();
        let mut dangling = 0;
        for (h, _) in self.live.iter().filter(|(h, _)| h.is::<Anchor>()) {
            seen.insert(*h);
            queue.push_back(*h);
        }
        // Each distinct root is visited once by the collector: a dangling one counts once.
        let distinct_roots: HashSet<AnyHandle> = self.roots.iter().copied().collect();
        for r in distinct_roots {
            if self.live.contains_key(&r) {
                if seen.insert(r) {
                    queue.push_back(r);
                }
            } else {
                dangling += 1;
            }
        }
        while let Some(h) = queue.pop_front() {
            for t in &self.live[&h].1 {
                if self.live.contains_key(t) {
                    if seen.insert(*t) {
                        queue.push_back(*t);
                    }
                } else {
                    dangling += 1;
                }
            }
        }
        (seen, dangling)
    }

    fn check_drops(&self, expected: HashSet<u64>) {
        let mut log = self.log.lock();
        let dropped: Vec<u64> = log.drain(..).collect();
        let unique: HashSet<u64> = dropped.iter().copied().collect();
        assert_eq!(unique.len(), dropped.len(), "an object dropped twice");
        assert_eq!(unique, expected, "dropped exactly the freed objects");
    }

    fn collect_and_check(&mut self) {
        self.log.lock().clear();
        let (reachable, dangling) = self.reachable();
        let doomed: Vec<AnyHandle> = self
            .live
            .keys()
            .filter(|h| !h.is::<Anchor>() && !reachable.contains(h))
            .copied()
            .collect();
        let report = self.store.collect();
        assert_eq!(
            report.freed_total,
            doomed.len(),
            "frees exactly the unreachable"
        );
        assert_eq!(
            report.marked,
            reachable.iter().filter(|h| !h.is::<Anchor>()).count()
        );
        assert_eq!(report.dangling_count, dangling);
        for d in &report.dangling {
            assert!(
                !self.live.contains_key(&d.target),
                "{d:?} names a live object"
            );
            match d.holder {
                Some(holder) => assert!(
                    self.live[&holder].1.contains(&d.target),
                    "{d:?}: the holder holds the target"
                ),
                None => assert!(self.roots.contains(&d.target), "{d:?} is a root"),
            }
        }
        let ids: HashSet<u64> = doomed.iter().filter_map(|h| self.live[h].0).collect();
        for h in &doomed {
            self.live.remove(h);
        }
        self.check_drops(ids);
        self.check_store();
    }

    fn incremental(&mut self, steps: &[Vec<Op>]) {
        // Mutations between steps are logged by the model too; drops from removals are
        // not the collector's, so only the collector's frees are checked below.
        self.store.gc_begin().unwrap();
        for ops in steps {
            // A zero budget scans at most 16 objects: marking interleaves with the ops.
            self.store.gc_step(Duration::ZERO);
            for op in ops {
                self.apply(op);
            }
        }
        self.log.lock().clear();
        let (reachable, _) = self.reachable();
        let report = self.store.gc_finish();
        // Nothing reachable at the finish was freed; everything freed was unreachable.
        let freed: Vec<AnyHandle> = self
            .live
            .keys()
            .filter(|h| !self.contains(h))
            .copied()
            .collect();
        assert_eq!(freed.len(), report.freed_total);
        for h in &freed {
            assert!(!reachable.contains(h), "freed a reachable object {h:?}");
        }
        let ids: HashSet<u64> = freed.iter().filter_map(|h| self.live[h].0).collect();
        for h in &freed {
            self.live.remove(h);
        }
        self.check_drops(ids);
        self.check_store();
    }

    /// What the store holds for `h`: the handles its object holds, if it is live.
    fn held_now(&self, h: &AnyHandle) -> Option<Vec<AnyHandle>> {
        if let Some(n) = h.typed::<Node>() {
            self.store.get(n).map(trace_handles)
        } else if let Some(l) = h.typed::<Leaf>() {
            self.store.get(l).map(trace_handles)
        } else {
            self.store.get(h.typed::<Anchor>()?).map(trace_handles)
        }
    }

    fn contains(&self, h: &AnyHandle) -> bool {
        self.held_now(h).is_some()
    }

    /// Every live object of the model resolves, to the same handles, and nothing else.
    fn check_store(&self) {
        let key = |v: &[AnyHandle]| {
            let mut k: Vec<_> = v.iter().map(|a| (a.type_name(), a.to_bits())).collect();
            k.sort();
            k
        };
        for (h, (_, held)) in &self.live {
            let actual = self
                .held_now(h)
                .expect("live in the model, live in the store");
            assert_eq!(key(&actual), key(held));
        }
        let store_len: usize = self.store.tables().map(|t| t.len()).sum();
        assert_eq!(store_len, self.live.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn collection_frees_exactly_the_unreachable(ops in prop::collection::vec(op(), 1..80)) {
        let mut m = Model::new(DanglingPolicy::Report);
        for op in &ops {
            m.apply(op);
        }
        m.collect_and_check();
        // A second collection finds nothing more.
        let again = m.store.collect();
        prop_assert_eq!(again.freed_total, 0);
    }
}

/// A graph far larger than one marking batch, with edges into two traced types,
/// dangling edges and removed roots, collected on pools of 1, 2 and 4 threads: the
/// batches, the runs of one target type and the work split between threads all agree
/// with the reference.
#[test]
fn large_random_graphs_match_the_reference_on_any_number_of_threads() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for threads in [1, 2, 4] {
        let pool = pool_of(threads);
        let mut m = Model::new(DanglingPolicy::Report);
        for i in 0..6_000 {
            m.apply(&Op::Leaf {
                back: (i % 3 == 0).then(|| next(1 << 20)),
            });
        }
        for _ in 0..30_000 {
            let degree = next(5);
            m.apply(&Op::Node {
                edges: (0..degree).map(|_| next(1 << 20)).collect(),
                leaf: (next(4) == 0).then(|| next(1 << 20)),
            });
        }
        for _ in 0..30_000 {
            m.apply(&Op::AddEdge {
                from: next(1 << 20),
                to: next(1 << 20),
            });
        }
        for _ in 0..300 {
            m.apply(&Op::Anchor {
                nodes: (0..3).map(|_| next(1 << 20)).collect(),
                leaves: vec![next(1 << 20)],
            });
        }
        for _ in 0..50 {
            m.apply(&Op::AddRoot(next(1 << 20)));
        }
        // Removals leave dangling edges (and dangling roots) behind.
        for _ in 0..2_000 {
            m.apply(&Op::RemoveNode(next(1 << 20)));
        }
        pool.install(|| m.collect_and_check());
        assert!(m.live.len() > 1_000, "{} objects survive", m.live.len());
        pool.install(|| m.collect_and_check());
    }
}

#[test]
fn cycles_are_collected() {
    let mut m = Model::new(DanglingPolicy::Report);
    // 0 <-> 1, 2 -> 2 and a lone 3: all unreachable. Then 4 <-> 5 with 6 -> 4 anchored.
    let add_nodes = |m: &mut Model, n| {
        for _ in 0..n {
            m.apply(&Op::Node {
                edges: vec![],
                leaf: None,
            });
        }
    };
    add_nodes(&mut m, 4);
    m.apply(&Op::AddEdge { from: 0, to: 1 });
    m.apply(&Op::AddEdge { from: 1, to: 0 });
    m.apply(&Op::AddEdge { from: 2, to: 2 });
    m.collect_and_check();
    assert_eq!(m.live.len(), 0);
    add_nodes(&mut m, 3);
    m.apply(&Op::AddEdge { from: 4, to: 5 });
    m.apply(&Op::AddEdge { from: 5, to: 4 });
    m.apply(&Op::AddEdge { from: 6, to: 4 });
    m.apply(&Op::Anchor {
        nodes: vec![6],
        leaves: vec![],
    });
    m.collect_and_check();
    assert_eq!(m.live.len(), 4, "the anchored cycle survives");
    m.apply(&Op::RemoveAnchor(0));
    m.collect_and_check();
    assert_eq!(m.live.len(), 0);
}

#[test]
fn dangling_handles_are_reported_with_their_holders_or_remove_them() {
    for policy in [
        DanglingPolicy::Ignore,
        DanglingPolicy::Report,
        DanglingPolicy::RemoveHolder,
    ] {
        let mut store = Store::new();
        store.register::<Node>().unwrap();
        store.register::<Anchor>().unwrap();
        store.set_dangling_policy(policy);
        let log = Arc::new(Mutex::new(Vec::new()));
        let node = |edges| node(edges, 0, &log);
        let gone = store.insert(node(vec![]));
        let holder = store.insert(node(vec![gone]));
        let anchor = store.insert(Anchor {
            nodes: vec![holder, gone],
            leaves: vec![],
        });
        store.remove(gone);
        store.add_root(gone);
        let report = store.collect();
        assert_eq!(report.dangling_count, 3, "{policy:?}");
        match policy {
            DanglingPolicy::Ignore => assert!(report.dangling.is_empty()),
            _ => {
                let holders: HashSet<_> = report.dangling.iter().map(|d| d.holder).collect();
                let expected: HashSet<_> = [
                    Some(AnyHandle::new(holder)),
                    Some(AnyHandle::new(anchor)),
                    None,
                ]
                .into();
                assert_eq!(holders, expected);
                assert!(all_dangling_name(&report, gone));
            }
        }
        if policy == DanglingPolicy::RemoveHolder {
            assert_eq!(report.holders_removed, 2);
            assert!(!store.contains(holder) && !store.contains(anchor));
        } else {
            assert_eq!(report.holders_removed, 0);
            assert!(store.contains(holder) && store.contains(anchor));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn incremental_cycles_never_free_a_reachable_object(
        before in prop::collection::vec(leaf_op(), 0..250),
        steps in prop::collection::vec(prop::collection::vec(leaf_op(), 0..8), 1..8),
        after in prop::collection::vec(leaf_op(), 0..20),
    ) {
        let mut m = Model::new(DanglingPolicy::Report);
        for op in &before {
            m.apply(op);
        }
        m.apply(&Op::Incremental { steps });
        for op in &after {
            m.apply(op);
        }
        // A full collection afterwards is exact again.
        m.collect_and_check();
    }
}

#[test]
fn incremental_steps_respect_their_budget_and_finish_like_a_full_collection() {
    let mut m = Model::new(DanglingPolicy::Report);
    for i in 0..20_000usize {
        // Node i points at node i - 1 (and at a pseudo-random earlier one): anchors
        // every 1,000 nodes reach everything below them.
        m.apply(&Op::Node {
            edges: vec![i.wrapping_sub(1), i.wrapping_mul(7919)],
            leaf: None,
        });
        if i % 1000 == 999 && i < 15_000 {
            m.apply(&Op::Anchor {
                nodes: vec![i],
                leaves: vec![],
            });
        }
    }
    let (reachable, _) = m.reachable();
    m.store.gc_begin().unwrap();
    assert!(m.store.gc_begin().is_err(), "one cycle at a time");
    let mut steps = 0;
    loop {
        // A zero budget: the clock is read every 16 objects, so a step scans at most 16.
        let p = m.store.gc_step(Duration::ZERO);
        steps += 1;
        assert!(p.scanned <= 16, "{p:?}");
        if p.done {
            break;
        }
        assert!(steps < 100_000, "steps make progress");
    }
    assert!(
        steps >= 15_000 / 16,
        "{steps} steps for 15,000 reachable objects"
    );
    let report = m.store.gc_finish();
    let unreachable = m
        .live
        .keys()
        .filter(|h| !h.is::<Anchor>() && !reachable.contains(h))
        .count();
    assert_eq!(report.freed_total, unreachable);
    assert_eq!(unreachable, 5_000);
    assert!(!m.store.gc_in_progress());
}

#[test]
fn many_explicit_roots_are_visited_across_steps() {
    let mut m = Model::new(DanglingPolicy::Report);
    // 5,000 rooted nodes, each holding one unrooted node, and 1,000 nodes nothing holds.
    for i in 0..11_000usize {
        let edges = if i % 2 == 1 && i < 10_000 {
            vec![i - 1]
        } else {
            vec![]
        };
        m.apply(&Op::Node { edges, leaf: None });
        if i % 2 == 1 && i < 10_000 {
            m.apply(&Op::AddRoot(i));
        }
    }
    m.store.gc_begin().unwrap();
    // A zero budget: a step visits one block of 1,024 explicit roots, not all 5,000.
    let first = m.store.gc_step(Duration::ZERO);
    assert!(!first.done);
    assert!(first.marked <= 1_024 + 16, "{first:?}");
    let mut steps = 1;
    while !m.store.gc_step(Duration::ZERO).done {
        steps += 1;
        assert!(steps < 100_000, "steps make progress");
    }
    assert!(steps >= 5_000 / 1_024, "{steps} steps");
    let report = m.store.gc_finish();
    assert_eq!(report.marked, 10_000);
    assert_eq!(report.freed_total, 1_000);
    assert_eq!(m.store.table::<Node>().map(|t| t.len()), Some(10_000));
}

#[test]
fn the_policy_collects_every_n_inserts() {
    let mut store = Store::new();
    store.register::<Node>().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    store
        .set_gc_policy(Some(GcPolicy {
            every_n_inserts: Some(10),
            ..GcPolicy::default()
        }))
        .unwrap();
    for i in 0..25u64 {
        store.insert(node(vec![], i, &log));
    }
    // Collections ran after the 10th and the 20th insert; nothing was rooted.
    assert_eq!(log.lock().len(), 20);
    assert_eq!(store.table::<Node>().unwrap().len(), 5);
    assert!(
        store
            .set_gc_policy(Some(GcPolicy {
                trigger_ratio: 1.5,
                every_n_inserts: None
            }))
            .is_err()
    );
}

#[test]
fn memory_pressure_starts_a_collection() {
    let config = neurostore::PoolConfig {
        total_memory: Some(64 << 20),
        ..Default::default()
    };
    let pool = Arc::new(neurostore::HierarchicalPool::new(config).unwrap());
    let mut store = Store::with_pool(pool);
    store.register::<Node>().unwrap();
    store
        .set_gc_policy(Some(GcPolicy {
            trigger_ratio: 0.25,
            every_n_inserts: None,
        }))
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    // Unrooted traced nodes with big edge lists: the chunks alone pass 16 MiB soon.
    let mut inserted = 0;
    while log.lock().is_empty() && inserted < 400_000 {
        store.insert(node(vec![], inserted, &log));
        inserted += 1;
    }
    assert!(
        !log.lock().is_empty(),
        "the pressure alert started a collection"
    );
}

#[test]
fn root_guards_and_retention() {
    let mut store = Store::new();
    store.register::<Node>().unwrap();
    assert_eq!(
        store.table::<Node>().unwrap().retention(),
        Retention::Traced
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let h = store.insert(node(vec![], 1, &log));
    let g1 = store.root(h);
    store.add_root(h);
    assert_eq!(g1.handle(), h);
    assert_eq!(store.roots(), vec![AnyHandle::new(h)]);
    drop(g1);
    store.collect();
    assert!(store.contains(h), "one count of the root is left");
    assert!(store.remove_root(h));
    assert!(!store.remove_root(h));
    store.collect();
    assert!(!store.contains(h));
    assert_eq!(*log.lock(), vec![1]);
}

/// A store with `Node` and `Anchor` registered, and an empty drop log for nodes.
fn nodes_and_anchors() -> (Store, Arc<Mutex<Vec<u64>>>) {
    let mut store = Store::new();
    store.register::<Node>().unwrap();
    store.register::<Anchor>().unwrap();
    (store, Arc::new(Mutex::new(Vec::new())))
}

/// The objects of [`cycle_with_an_unscanned_far_end`].
struct ChainToTarget {
    target: Handle<Node>,
    far_end: Handle<Node>,
    anchor: Handle<Anchor>,
}

/// A store in an open collection cycle whose first step scanned an anchor: the anchor
/// holds the head of a chain of 1,000 nodes whose far end alone holds `target`, and the
/// far end is not scanned yet. Returns the store and its drop log with the objects.
fn cycle_with_an_unscanned_far_end() -> (Store, Arc<Mutex<Vec<u64>>>, ChainToTarget) {
    let (mut store, log) = nodes_and_anchors();
    let node = |edges, id| node(edges, id, &log);
    let target = store.insert(node(vec![], 0));
    let mut next = store.insert(node(vec![target], 1));
    let far_end = next;
    for id in 2..1000 {
        next = store.insert(node(vec![next], id));
    }
    let anchor = store.insert(Anchor {
        nodes: vec![next],
        leaves: vec![],
    });
    store.gc_begin().unwrap();
    let first = store.gc_step(Duration::ZERO);
    assert!(!first.done && first.scanned <= 16, "{first:?}");
    let chain = ChainToTarget {
        target,
        far_end,
        anchor,
    };
    (store, log, chain)
}

#[test]
fn a_handle_moved_into_a_scanned_object_during_a_cycle_keeps_its_target() {
    let (mut store, _log, chain) = cycle_with_an_unscanned_far_end();
    let ChainToTarget {
        target,
        far_end,
        anchor,
    } = chain;
    // The anchor was scanned; the far end was not. Move the handle across.
    store.get_mut(anchor).unwrap().nodes.push(target);
    store.get_mut(far_end).unwrap().edges.clear();
    while !store.gc_step(Duration::ZERO).done {}
    let report = store.gc_finish();
    assert!(
        store.contains(target),
        "the barrier kept the moved handle's target"
    );
    assert_eq!(report.freed_total, 0);
    assert_eq!(store.table::<Node>().unwrap().len(), 1000);
}

#[test]
fn a_handle_moved_through_the_erased_tables_during_a_cycle_keeps_its_target() {
    let (mut store, log, chain) = cycle_with_an_unscanned_far_end();
    let ChainToTarget {
        target,
        far_end,
        anchor,
    } = chain;
    // The same move as above, through the erased tables a generic tool walks: each
    // table is downcast to its type and changed without `Store::get_mut`.
    for table in store.tables_mut() {
        let any = table.as_any_mut();
        if let Some(anchors) = any.downcast_mut::<Table<Anchor>>() {
            anchors.get_mut(anchor).unwrap().nodes.push(target);
        } else if let Some(nodes) = any.downcast_mut::<Table<Node>>() {
            nodes.get_mut(far_end).unwrap().edges.clear();
        }
    }
    while !store.gc_step(Duration::ZERO).done {}
    let report = store.gc_finish();
    assert!(
        store.contains(target),
        "a table handed out through tables_mut is rescanned at the finish"
    );
    assert_eq!(report.freed_total, 0);
    assert!(log.lock().is_empty(), "no node was dropped");
}

#[test]
fn objects_inserted_or_handed_out_during_a_cycle_survive_it() {
    let mut store = Store::new();
    store.register::<Node>().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let node = |edges, id| node(edges, id, &log);
    let old = store.insert(node(vec![], 0));
    store.gc_begin().unwrap();
    let fresh = store.insert(node(vec![old], 1));
    let report = store.gc_finish();
    assert!(
        store.contains(fresh) && store.contains(old),
        "allocated black, scanned"
    );
    assert_eq!(report.freed_total, 0);
    // Next cycle: nothing roots them.
    store.gc_begin().unwrap();
    let through_table = store.table_mut::<Node>().unwrap().insert(node(vec![], 2));
    let report = store.gc_finish();
    assert_eq!(
        report.freed_total, 0,
        "a table handed out mutably is kept whole"
    );
    assert!(store.contains(through_table));
    assert_eq!(store.collect().freed_total, 3);
    let mut dropped = log.lock().clone();
    dropped.sort();
    assert_eq!(dropped, vec![0, 1, 2]);
}

/// An object marked during a cycle and then removed by hand leaves its mark bit set: as
/// many mark bits as objects then does not mean that every object is marked, and the
/// finish must still free the garbage beside it.
#[test]
fn an_object_removed_after_its_marking_does_not_hide_garbage_from_the_finish() {
    let (mut store, log) = nodes_and_anchors();
    let node = |edges, id| node(edges, id, &log);
    let kept = store.insert(node(vec![], 0));
    let garbage = store.insert(node(vec![], 1));
    store.insert(Anchor {
        nodes: vec![kept],
        leaves: vec![],
    });
    store.gc_begin().unwrap();
    while !store.gc_step(Duration::from_millis(10)).done {}
    assert!(store.remove(kept).is_some(), "marked, then removed by hand");
    let report = store.gc_finish();
    assert_eq!(report.freed_total, 1);
    assert!(!store.contains(garbage));
    assert!(store.table::<Node>().unwrap().is_empty());
    assert_eq!(*log.lock(), vec![0, 1]);
}

#[derive(Pooled)]
#[pooled(retention = "traced")]
struct Link {
    next: Handle<Link>,
    fan: Vec<Handle<Link>>,
}

impl Link {
    fn to(next: Handle<Link>) -> Link {
        Link {
            next,
            fan: Vec::new(),
        }
    }
}

/// A rayon pool of `threads` threads.
fn pool_of(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// A full collection marks level by level: a list 100k links long makes a level per
/// link, and a fan-out of 40k makes levels large enough to run in parallel. Both are
/// marked exactly, on one and on two threads.
#[test]
fn deep_lists_and_wide_fan_outs_are_marked_exactly() {
    const LIST: usize = 100_000;
    const FAN: usize = 40_000;
    const GARBAGE: usize = 10_000;
    for threads in [1, 2] {
        let pool = pool_of(threads);
        let mut store = Store::new();
        store.register::<Link>().unwrap();
        let list: Vec<Handle<Link>> = (0..LIST)
            .map(|_| store.insert(Link::to(Handle::null())))
            .collect();
        for w in list.windows(2) {
            store.get_mut(w[0]).unwrap().next = w[1];
        }
        let leaves: Vec<Handle<Link>> = (0..FAN)
            .map(|_| store.insert(Link::to(Handle::null())))
            .collect();
        // Each leaf also points at two others: most edges of the wide levels find their
        // target marked already.
        for (i, &leaf) in leaves.iter().enumerate() {
            let others = vec![leaves[(i * 7 + 1) % FAN], leaves[(i * 13 + 5) % FAN]];
            store.get_mut(leaf).unwrap().fan = others;
        }
        let hub = store.insert(Link {
            next: Handle::null(),
            fan: leaves.clone(),
        });
        // A cycle nothing reaches.
        let garbage: Vec<Handle<Link>> = (0..GARBAGE)
            .map(|_| store.insert(Link::to(Handle::null())))
            .collect();
        for i in 0..GARBAGE {
            store.get_mut(garbage[i]).unwrap().next = garbage[(i + 1) % GARBAGE];
        }
        store.add_root(list[0]);
        store.add_root(hub);

        let report = pool.install(|| store.collect());
        assert_eq!(report.marked, LIST + FAN + 1, "{threads} threads");
        assert_eq!(report.freed_total, GARBAGE);
        assert_eq!(report.dangling_count, 0);
        assert!(garbage.iter().all(|&g| !store.contains(g)));
        assert!(list.iter().chain(&leaves).all(|&h| store.contains(h)));

        // Cut the list in the middle: the tail goes.
        store.get_mut(list[LIST / 2]).unwrap().next = Handle::null();
        let report = pool.install(|| store.collect());
        assert_eq!(report.freed_total, LIST / 2 - 1, "{threads} threads");
        assert!(store.contains(list[LIST / 2]) && !store.contains(list[LIST / 2 + 1]));
        assert!(leaves.iter().all(|&h| store.contains(h)));
    }
}

/// A manual object holding one handle.
#[derive(Pooled)]
struct Tether {
    to: Handle<Link>,
}

/// Many roots into a small traced table (as every synapse's handles into the neuron
/// table): the marker visits a bucket early once it holds enough edges. Marks, frees and
/// dangling reports stay exact, on one and on two threads.
#[test]
fn many_roots_into_a_small_table_are_marked_exactly() {
    const TETHERS: usize = 300_000;
    const DANGLING_EVERY: usize = 150;
    for threads in [1, 2] {
        let pool = pool_of(threads);
        let mut store = Store::new();
        store.set_dangling_policy(DanglingPolicy::Report);
        store.register::<Link>().unwrap();
        store.register::<Tether>().unwrap();
        let links: Vec<Handle<Link>> = (0..100)
            .map(|_| store.insert(Link::to(Handle::null())))
            .collect();
        let gone = links[99];
        assert!(store.remove(gone).is_some());
        let mut dangling_holders = HashSet::new();
        for i in 0..TETHERS {
            let to = if i % DANGLING_EVERY == 0 {
                gone
            } else {
                links[i % 50]
            };
            let t = store.insert(Tether { to });
            if to == gone {
                dangling_holders.insert(AnyHandle::new(t));
            }
        }
        let report = pool.install(|| store.collect());
        assert_eq!(report.marked, 50, "{threads} threads");
        assert_eq!(report.freed_total, 49);
        assert_eq!(report.dangling_count, TETHERS / DANGLING_EVERY);
        let holders: HashSet<AnyHandle> = report.dangling.iter().filter_map(|d| d.holder).collect();
        assert_eq!(holders, dangling_holders);
        assert!(all_dangling_name(&report, gone));
        assert_eq!(report.dangling.len(), TETHERS / DANGLING_EVERY);
        assert!(links[..50].iter().all(|&h| store.contains(h)));
        assert!(links[50..].iter().all(|&h| !store.contains(h)));
    }
}
