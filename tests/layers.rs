//! The layers of docs/architecture.md point one way: every `crate::…` path
//! in a module's code (comments and doc links aside) names a lower layer,
//! or, within the foundation, another foundation module. A new upward
//! import fails here with the file and line.

use std::path::{Path, PathBuf};

/// Top-level modules from the bottom up; modules on one line share a layer
/// (and may not import each other, except in the foundation).
const LAYERS: &[&[&str]] = &[
    &["error", "exact", "memory", "io", "cluster", "checkpoint"],
    &["spec"],
    &["source"],
    &["plan"],
    &["data"],
    &["model", "optim"],
    &["metrics"],
    &["dataflow"],
    &["strategy"],
    &["train", "predict", "inspect"],
    &["incremental"],
    &["stream"],
    &["cli", "main"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None`: the crate root).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib").then(|| name.to_string())
}

/// The top-level modules a line of code names through `crate::`.
fn imports(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .map(|(i, _)| {
            code[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn every_import_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut upward = Vec::new();
    let mut seen = 0;
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let from = layer(&module).unwrap_or_else(|| {
            panic!(
                "{}: module '{module}' has no layer in LAYERS",
                file.display()
            )
        });
        let text = std::fs::read_to_string(file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            for target in imports(line) {
                seen += 1;
                if target == module {
                    continue;
                }
                let to = layer(&target).unwrap_or_else(|| {
                    panic!(
                        "{}:{}: crate::{target} has no layer in LAYERS",
                        file.display(),
                        n + 1
                    )
                });
                if to > from || (to == from && from != 0) {
                    upward.push(format!(
                        "{}:{}: {module} imports crate::{target}",
                        file.strip_prefix(&src).unwrap_or(file).display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        seen > 100,
        "found only {seen} crate:: paths: is the scan broken?"
    );
    assert!(
        upward.is_empty(),
        "imports that point up or sideways:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_scan_sees_what_it_must() {
    assert_eq!(
        imports("use crate::strategy::driver::Driver;"),
        ["strategy"]
    );
    assert_eq!(
        imports("    let x = crate::model::build(kind, crate::spec::X); // crate::cli"),
        ["model", "spec"]
    );
    assert!(imports("//! see [`crate::metrics`]").is_empty());
    assert!(imports("/// [`crate::optim::lazy`]").is_empty());
}
