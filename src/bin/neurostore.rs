//! `neurostore`: looks inside snapshot files.
//!
//! ```text
//! neurostore inspect FILE   tables, types, counts, bytes, fragmentation, schema, sections;
//!                           for a graph checkpoint also the step, model time, resolution,
//!                           last spikes and input in flight
//! neurostore verify FILE    checks the whole file; exits 1 with the error if it is bad
//! ```
//!
//! Both read every byte and check every checksum and slot table. Objects encoded with
//! serde + bincode are checksummed but not decoded (that needs their Rust types; loading
//! the file with `Store::load` does it).

use std::process::ExitCode;

/// Under `--cfg loom` the library is only its lock-free pieces (for `tests/loom.rs`), so
/// the tool has nothing to run.
#[cfg(loom)]
fn main() -> ExitCode {
    ExitCode::SUCCESS
}

#[cfg(not(loom))]
fn main() -> ExitCode {
    cli::main()
}

#[cfg(not(loom))]
mod cli {
    use std::process::ExitCode;

    use neurostore::snapshot::{GraphInfo, SnapshotInfo, inspect_file};

    const USAGE: &str = "usage: neurostore inspect FILE | neurostore verify FILE";

    pub fn main() -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let (command, path) = match args.as_slice() {
            [c, p] if c == "inspect" || c == "verify" => (c.as_str(), p.as_str()),
            [h] if h == "-h" || h == "--help" || h == "help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        };
        match inspect_file(path) {
            Ok(info) if command == "inspect" => {
                print!("{}", describe(path, &info));
                ExitCode::SUCCESS
            }
            Ok(info) => {
                let objects: u64 = info.tables.iter().map(|t| t.live).sum();
                println!(
                    "{path}: ok ({} bytes, {} tables, {objects} objects, {} sections checksummed)",
                    info.bytes,
                    info.tables.len(),
                    info.sections.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{path}: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// The lines of the `inspect` report about a graph checkpoint's simulation state.
    fn describe_graph(out: &mut String, info: &SnapshotInfo, g: &GraphInfo) {
        use std::fmt::Write;
        let count = |name: &str| {
            info.tables
                .iter()
                .find(|t| t.type_name == name)
                .map_or(0, |t| t.live)
        };
        let resolution = g.resolution.map_or_else(
            || "none (never stepped)".to_owned(),
            |dt| format!("{dt} ms"),
        );
        let rows = [
            ("neurons", count("Neuron").to_string()),
            ("synapses", count("Synapse").to_string()),
            (
                "step",
                format!("{} ({} ms of model time)", g.step, g.time_ms),
            ),
            ("resolution", resolution),
            ("spikes in the last step", g.last_spikes.to_string()),
            (
                "input in flight",
                format!(
                    "{} (neuron, step) entries, up to {} step(s) ahead",
                    g.pending_inputs, g.pending_span
                ),
            ),
            ("ring span", format!("{} steps", g.ring_steps)),
        ];
        let _ = writeln!(out, "\ngraph checkpoint");
        for (name, value) in rows {
            let _ = writeln!(out, "  {name:<24} {value}");
        }
    }

    /// The `inspect` report.
    fn describe(path: &str, info: &SnapshotInfo) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let content = match info.content {
            neurostore::snapshot::Content::Store => "store",
            neurostore::snapshot::Content::Table => "single table",
            neurostore::snapshot::Content::Graph => "neural graph checkpoint",
        };
        let _ = writeln!(
            out,
            "{path}: neurostore snapshot v{}, written by neurostore {}, {content}, {} bytes",
            info.format_version, info.crate_version, info.bytes
        );
        describe_tables(&mut out, info);
        if info.content == neurostore::snapshot::Content::Store {
            let _ = writeln!(out, "\nGC roots: {}", info.roots);
        }
        if let Some(g) = &info.graph {
            describe_graph(&mut out, info, g);
        }
        let _ = writeln!(
            out,
            "\n{:<6} {:>14} {:>14} {:>10}",
            "section", "offset", "length", "crc32"
        );
        for s in &info.sections {
            let _ = writeln!(
                out,
                "{:<6} {:>14} {:>14} {:#010x}",
                s.tag, s.offset, s.len, s.crc
            );
        }
        out
    }

    /// The `inspect` report's table of tables.
    fn describe_tables(out: &mut String, info: &SnapshotInfo) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "\n{:<20} {:>18} {:>6} {:>5} {:<14} {:>12} {:>10} {:>8} {:>7} {:>13}",
            "type",
            "schema",
            "size",
            "align",
            "encoding",
            "objects",
            "stale",
            "chunks",
            "frag",
            "object bytes"
        );
        for t in &info.tables {
            let _ = writeln!(
                out,
                "{:<20} {:#018x} {:>6} {:>5} {:<14} {:>12} {:>10} {:>8} {:>6.2}% {:>13}",
                t.type_name,
                t.schema,
                t.element_size,
                t.element_align,
                t.encoding.to_string(),
                t.live,
                t.vacant,
                t.chunks,
                t.fragmentation * 100.0,
                t.object_bytes
            );
        }
    }
}
