//! The crate's layers import one way (docs/ARCHITECTURE.md, "Layers and imports"): every
//! `crate::<module>` path in a top-level module's code (comments and `#[cfg(test)]` code
//! aside) names `error` or a module below it in `LAYERS`. This test reads the sources, so
//! a new upward import fails here with the file and line that made it.

use std::path::{Path, PathBuf};

/// The top-level modules from the bottom up.
const LAYERS: &[&str] = &[
    "handle",
    "pool",
    "pooled",
    "table",
    "erased",
    "gc",
    "snapshot",
    "store",
    "neural",
    "cuda",
    "distributed",
];

/// Imported by every layer; imports none.
const SHARED: &str = "error";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The files of top-level module `module`: `src/<module>.rs` and everything under
/// `src/<module>/`.
fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let dir = src.join(module);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    }
    files
}

/// Every `crate::<name>` in `line` with a lower-case name (a module, not a re-exported
/// type at the crate root).
fn crate_paths(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .filter(|(at, _)| {
            // Not part of a longer path (`x::crate::`) or name (`mycrate::`).
            !line[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        })
        .map(|(at, m)| {
            let rest = &line[at + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// The upward imports of `module` (at position `level`): "file:line names `other`".
fn upward_imports(src: &Path, module: &str, level: usize) -> Vec<String> {
    let mut found = Vec::new();
    for file in files_of(src, module) {
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("#[cfg(test)]") {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            for name in crate_paths(code) {
                let allowed = name == SHARED
                    || name == module
                    || LAYERS[..level].contains(&name)
                    || !LAYERS.contains(&name);
                if !allowed {
                    found.push(format!("{}:{} names `{name}`", file.display(), n + 1));
                }
            }
        }
    }
    found
}

#[test]
fn layers_import_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut upward = Vec::new();
    for (level, module) in LAYERS.iter().enumerate() {
        assert!(
            !files_of(&src, module).is_empty(),
            "the layer `{module}` has no source: update LAYERS"
        );
        upward.extend(upward_imports(&src, module, level));
    }
    assert!(
        upward.is_empty(),
        "imports that go up a layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).expect("src/") {
        let path = entry.expect("an entry").path();
        let name = path.file_stem().and_then(|s| s.to_str()).expect("a name");
        if ["lib", "bin", SHARED].contains(&name) {
            continue;
        }
        assert!(
            LAYERS.contains(&name),
            "`{name}` is in no layer: add it to LAYERS and docs/ARCHITECTURE.md"
        );
    }
}

#[test]
fn the_checker_sees_crate_paths() {
    assert_eq!(
        crate_paths("use crate::store::{Store, crate::gc}; x::crate::pool"),
        ["store", "gc"]
    );
    assert_eq!(crate_paths("let e = crate::Error::Io;"), Vec::<&str>::new());
}
