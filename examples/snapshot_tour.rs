//! A tour of snapshots: build a network, save it with a progress bar, load it back in a
//! new store, check that every handle means what it meant, and look inside the file.
//!
//! ```sh
//! cargo run --release --example snapshot_tour            # 1,000,000 neurons
//! cargo run --release --example snapshot_tour -- 50000   # another count
//! ```

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use neurostore::neural::{NeuralGraph, NeuronParams};
use neurostore::snapshot::{Options, Progress, TypeRegistry, inspect_file};
use neurostore::{Neuron, Store, Synapse};

fn bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0).with_message(what.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

fn follow(bar: &ProgressBar) -> impl FnMut(Progress) + '_ {
    move |p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let neurons: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("`{n}` is not a neuron count"))?,
        None => 1_000_000,
    };
    if neurons == 0 {
        return Err("the network needs at least one neuron".into());
    }
    let started = Instant::now();
    let mut graph = NeuralGraph::new();
    let ids = graph.add_neurons(neurons, &NeuronParams::default())?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..neurons * 4 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pre = ids[(seed % neurons as u64) as usize];
        let post = ids[((seed >> 32) % neurons as u64) as usize];
        graph.connect(pre, post, 0.1, 1.5)?;
    }
    // Some neurons die; their handles must stay stale after the round trip.
    for id in ids.iter().step_by(10) {
        graph.remove_neuron(*id);
    }
    let store: &Store = graph.store();
    println!(
        "built {} neurons and {} synapses in {:.2?}",
        store.table::<Neuron>().map_or(0, |t| t.len()),
        store.table::<Synapse>().map_or(0, |t| t.len()),
        started.elapsed()
    );

    let dir = std::env::temp_dir().join(format!("neurostore-tour-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("network.nsnap");

    let saving = bar("save");
    let report = store.save_with(&path, &mut Options::new().progress(follow(&saving)))?;
    saving.finish();
    println!(
        "saved {} objects, {} bytes, in {:.2?} ({:.2} GB/s)",
        report.objects,
        report.bytes,
        report.duration,
        report.bytes_per_second() / 1e9
    );

    let registry = TypeRegistry::new().with::<Neuron>()?.with::<Synapse>()?;
    let loading = bar("load");
    let t = Instant::now();
    let loaded = Store::load_with(
        &path,
        &registry,
        &mut Options::new().progress(follow(&loading)),
    )?;
    loading.finish();
    println!("loaded in {:.2?}", t.elapsed());

    let same = ids.iter().all(|id| loaded.get(*id) == store.get(*id));
    let synapses_same = store
        .table::<Synapse>()
        .into_iter()
        .flat_map(|t| t.iter())
        .all(|(h, s)| loaded.get(h) == Some(s));
    println!("every neuron handle resolves as before: {same}; every synapse: {synapses_same}");

    let info = inspect_file(&path)?;
    println!(
        "\n{:<10} {:>12} {:>10} {:>8} {:>14}",
        "type", "objects", "stale", "frag", "object bytes"
    );
    for t in &info.tables {
        println!(
            "{:<10} {:>12} {:>10} {:>7.2}% {:>14}",
            t.type_name,
            t.live,
            t.vacant,
            t.fragmentation * 100.0,
            t.object_bytes
        );
    }
    std::fs::remove_dir_all(&dir)?;
    if same && synapses_same {
        Ok(())
    } else {
        Err("a handle changed its meaning across the round trip".into())
    }
}
