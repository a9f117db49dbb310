//! Arbitrary bytes as a snapshot: loading a store, a table of a Pod type or of a serde
//! type, or a neural graph checkpoint must return a typed error or a usable result, never
//! panic, abort or overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurostore::neural::NeuralGraph;
use neurostore::snapshot::{self, TypeRegistry};
use neurostore::{Handle, Neuron, Pooled, Store};
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
    if let Ok(mut table) = snapshot::load_table_from::<Neuron>(data) {
        let live = table.len();
        assert_eq!(table.iter().count(), live);
        let _ = table.defragment();
        assert_eq!(table.len(), live);
    }
    let _ = snapshot::load_table_from::<Note>(data);
    if let Ok(graph) = NeuralGraph::load_from(data) {
        use_graph(graph);
    }
});

/// A loaded graph is usable: it steps, loses neurons, compacts and saves. It steps only
/// when its delays are short: a delay of `d` ms legitimately takes `d / dt` ring slots of
/// 8 KiB per 1024 neurons, which for the delays arbitrary bytes give is more memory than
/// the fuzzer allows.
fn use_graph(mut graph: NeuralGraph) {
    let short = graph.synapses().iter().all(|(_, s)| s.delay < 20.0);
    if short && graph.neurons().slot_count() < 4096 {
        let dt = graph.resolution().unwrap_or(0.1).max(0.01);
        for _ in 0..3 {
            let _ = graph.step(dt);
        }
    }
    let first: Vec<_> = graph.neurons().iter().map(|(n, _)| n).take(2).collect();
    let synapses = graph.synapse_count();
    let removed = graph.remove_neurons(&first);
    assert_eq!(graph.synapse_count(), synapses - removed);
    let _ = graph.defragment();
    let mut out = Vec::new();
    graph.save_to(&mut out).expect("a loaded graph saves");
    NeuralGraph::load_from(&out[..]).expect("what a loaded graph saves loads");
}
