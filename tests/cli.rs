//! The `neurostore` command-line tool on good and bad snapshot files.

use std::process::Command;

use neurostore::neural::NeuronParams;
use neurostore::{Neuron, Store, Synapse};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_neurostore"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_and_verify_a_good_file_and_refuse_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.nsnap");
    let mut store = Store::new();
    store.register::<Neuron>().unwrap();
    store.register::<Synapse>().unwrap();
    let ns: Vec<_> = (0..100)
        .map(|_| store.insert(Neuron::new(&NeuronParams::default())))
        .collect();
    for n in ns.iter().step_by(4) {
        store.remove(*n);
    }
    store.insert(Synapse::new(ns[1], ns[2], 0.5, 1.0));
    store.save(&path).unwrap();
    let file = path.to_str().unwrap();

    let (code, out, err) = run(&["inspect", file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Neuron") && out.contains("Synapse"), "{out}");
    assert!(out.contains("raw Pod bytes"), "{out}");
    assert!(
        out.contains(&format!("{:#018x}", <Neuron as neurostore::Pooled>::SCHEMA)),
        "{out}"
    );
    for tag in ["HEAD", "TABL", "SLOT", "FREE", "OBJS", "ROOT", "DONE"] {
        assert!(out.contains(tag), "{tag} missing from {out}");
    }
    let neuron_row = out.lines().find(|l| l.starts_with("Neuron")).unwrap();
    assert!(
        neuron_row.contains(" 75 ") && neuron_row.contains(" 25 "),
        "{neuron_row}"
    );

    let (code, out, _) = run(&["verify", file]);
    assert_eq!(code, 0);
    assert!(out.contains("ok"), "{out}");

    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    let bad = dir.path().join("bad.nsnap");
    std::fs::write(&bad, &bytes).unwrap();
    let (code, out, err) = run(&["verify", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("checksum") || err.contains("malformed"),
        "{err}"
    );
    let (code, _, err) = run(&["inspect", dir.path().join("none").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("i/o error"), "{err}");
    let (code, _, err) = run(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("usage"), "{err}");
}

#[test]
fn inspect_shows_a_graph_checkpoint() {
    use neurostore::neural::NeuralGraph;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graph.nsnap");
    let mut graph = NeuralGraph::new();
    let ns = graph.add_neurons(5, &NeuronParams::default()).unwrap();
    graph.connect(ns[0], ns[1], 10.0, 1.0).unwrap();
    graph.connect(ns[0], ns[2], -10.0, 0.5).unwrap();
    for _ in 0..42 {
        graph.step(0.1).unwrap();
    }
    graph.inject_spikes(&[ns[0]], 0.1).unwrap();
    graph.save(&path).unwrap();

    let (code, out, err) = run(&["inspect", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("neural graph checkpoint"), "{out}");
    for row in [
        "neurons                  5",
        "synapses                 2",
        "step                     42 (4.",
        "resolution               0.1 ms",
        "input in flight          2 (neuron, step) entries, up to 10 step(s) ahead",
        "ring span                11 steps",
    ] {
        assert!(out.contains(row), "`{row}` missing from {out}");
    }
    for tag in ["GRPH", "RING"] {
        assert!(out.contains(tag), "{tag} missing from {out}");
    }
    let (code, out, _) = run(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("ok"), "{out}");
}
