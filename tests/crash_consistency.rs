//! A save killed at any moment leaves the file at the real name as it was or as the new
//! snapshot, never a mix or a torn file: a child process saves a store (or a neural graph
//! checkpoint) again and again and is killed with SIGKILL at random moments; after each
//! kill the file must load, every object in it must come from one and the same save, and
//! that save must be the one seen before or one of the killed child's.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use neurostore::neural::{NeuralGraph, NeuronParams};
use neurostore::snapshot::TypeRegistry;
use neurostore::{Pooled, Store};

/// A cell stamped with the child run and the save it was written in.
#[derive(Pooled, Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
#[pooled(pod)]
struct Stamped {
    run: u64,
    save: u64,
}

const PATH: &str = "NEUROSTORE_CRASH_PATH";
const RUN: &str = "NEUROSTORE_CRASH_RUN";
const CELLS: u64 = 100_000;
const NEURONS: usize = 20_000;

/// The child: saves the store to `path` forever, every cell restamped before each save.
fn save_forever(path: &str, run: u64) -> ! {
    let mut store = Store::new();
    let cells: Vec<_> = (0..CELLS)
        .map(|_| store.insert(Stamped { run, save: 0 }))
        .collect();
    for save in 1.. {
        for &h in &cells {
            store.get_mut(h).expect("a live cell").save = save;
        }
        store
            .save(path)
            .expect("the save completes until the child is killed");
    }
    unreachable!("saves until killed")
}

/// Every cell's stamp, if they all have one and the same.
fn one_stamp(store: &Store) -> Option<(u64, u64)> {
    let table = store.table::<Stamped>()?;
    assert_eq!(
        table.len() as u64,
        CELLS,
        "every cell of a save is in its file"
    );
    let first = *table.values().next()?;
    table
        .values()
        .all(|c| *c == first)
        .then_some((first.run, first.save))
}

/// The child of the graph test: saves a checkpoint forever, every neuron stamped with the
/// run (its population) and the save (its last spike step) before each save.
fn checkpoint_forever(path: &str, run: u64) -> ! {
    let mut graph = NeuralGraph::new();
    let ns = graph
        .add_neurons(NEURONS, &NeuronParams::default())
        .expect("neurons");
    for pair in ns.windows(2) {
        graph
            .connect(pair[0], pair[1], 1.0, 1.5)
            .expect("a synapse");
    }
    graph.step(0.1).expect("a step shapes the ring");
    for save in 1.. {
        for (_, n) in graph.neurons_mut() {
            n.population = run as u32;
            n.last_spike_step = save;
        }
        graph
            .save(path)
            .expect("the save completes until the child is killed");
    }
    unreachable!("saves until killed")
}

/// The graph checkpoint's stamp, if every neuron has one and the same.
fn one_graph_stamp(path: &Path) -> Option<(u64, u64)> {
    let graph =
        NeuralGraph::load(path).unwrap_or_else(|e| panic!("the file at the real name loads: {e}"));
    assert_eq!(
        graph.neuron_count(),
        NEURONS,
        "every neuron of a save is in its file"
    );
    assert_eq!(graph.synapse_count(), NEURONS - 1);
    let first = *graph.neurons().values().next()?;
    graph
        .neurons()
        .values()
        .all(|n| (n.population, n.last_spike_step) == (first.population, first.last_spike_step))
        .then_some((u64::from(first.population), first.last_spike_step))
}

/// Runs 30 children of the test `test` that save to one file forever, kills each at a
/// random moment, and checks after each kill that the file holds one save (`stamp`), the
/// one seen before or one of the killed child's.
fn kill_savers(test: &str, file: &str, stamp: impl Fn(&Path) -> Option<(u64, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    let mut seen: Option<(u64, u64)> = None;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut torn_saves_survived = 0;
    for run in 1..=30u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture"])
            .env(PATH, &path)
            .env(RUN, run.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50 + rng % 700));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if !path.exists() {
            assert!(seen.is_none(), "a file once written is never lost");
            continue;
        }
        let stamp = stamp(&path).expect("every object from one save");
        assert!(
            Some(stamp) == seen || stamp.0 == run,
            "run {run}: {stamp:?} is neither the file seen before ({seen:?}) nor this run's"
        );
        if path.with_extension("nsnap.tmp").exists() {
            torn_saves_survived += 1;
        }
        seen = Some(stamp);
    }
    assert!(seen.is_some(), "at least one child finished a save");
    // Kills land inside saves too, leaving a partial temporary file beside the good one.
    println!("{test}: {torn_saves_survived} of 30 kills left a partial temporary file behind");
}

/// In a child (the environment names the file and the run): the saver, which never
/// returns.
fn child_saver(save_forever: fn(&str, u64) -> !) {
    if let (Some(path), Some(run)) = (std::env::var_os(PATH), std::env::var_os(RUN)) {
        let run = run
            .to_str()
            .and_then(|r| r.parse().ok())
            .expect("a run number");
        save_forever(path.to_str().expect("a UTF-8 path"), run);
    }
}

#[test]
fn a_save_killed_at_any_moment_leaves_the_old_or_the_new_snapshot() {
    child_saver(save_forever);
    kill_savers(
        "a_save_killed_at_any_moment_leaves_the_old_or_the_new_snapshot",
        "store.nsnap",
        |path| {
            let store = Store::load(path, &TypeRegistry::new())
                .unwrap_or_else(|e| panic!("the file at the real name loads: {e}"));
            one_stamp(&store)
        },
    );
}

#[test]
fn a_checkpoint_killed_at_any_moment_leaves_the_old_or_the_new_checkpoint() {
    child_saver(checkpoint_forever);
    kill_savers(
        "a_checkpoint_killed_at_any_moment_leaves_the_old_or_the_new_checkpoint",
        "graph.nsnap",
        one_graph_stamp,
    );
}
