//! The build fingerprint processes compare in the cluster handshake: the
//! same for the same sources wherever they are built, different for any
//! change to them.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;
#[path = "../build/fingerprint.rs"]
mod fingerprint;

use std::path::Path;

use common::{root, tidemill_ok};
use fingerprint::{fingerprint, INPUTS};

/// Copies the fingerprinted sources of this crate into `to`.
fn copy_sources(to: &Path) {
    fn copy(from: &Path, to: &Path) {
        if from.is_dir() {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                copy(&entry.path(), &to.join(entry.file_name()));
            }
        } else if from.is_file() {
            std::fs::copy(from, to).unwrap();
        }
    }
    for input in INPUTS {
        copy(&root().join(input), &to.join(input));
    }
}

#[test]
fn the_binary_carries_the_fingerprint_of_its_sources() {
    let build = env!("TIDEMILL_BUILD");
    assert_eq!(fingerprint(&root()).unwrap(), build);
    let version = tidemill_ok(&["--version"]);
    assert!(version.contains(&format!("(build {build})")), "{version}");
}

/// Regression: the handshake compared only the version number, so builds
/// of different sources with one version ran together.
#[test]
fn the_same_sources_elsewhere_agree_and_any_change_differs() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    copy_sources(a.path());
    copy_sources(b.path());
    let (a, b) = (a.path(), b.path());
    let original = fingerprint(a).unwrap();
    assert_eq!(fingerprint(b).unwrap(), original);
    assert_eq!(fingerprint(&root()).unwrap(), original);

    // Windows line endings and editors' files are the same source.
    let lib = b.join("src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, text.replace('\n', "\r\n")).unwrap();
    std::fs::write(b.join("src/.lib.rs.swp"), "swap").unwrap();
    std::fs::write(b.join("src/lib.rs~"), "backup").unwrap();
    assert_eq!(fingerprint(b).unwrap(), original);

    // A changed source, a changed dependency and a new file are not.
    type Change = fn(&str) -> String;
    let changes: [(&str, Change); 3] = [
        ("src/cluster/handshake.rs", |t| t.replacen("fn ", "fn  ", 1)),
        ("Cargo.lock", |t| format!("{t}\n")),
        ("src/cluster/new.rs", |_| "//! new\n".into()),
    ];
    for (file, change) in changes {
        let path = a.join(file);
        let before = std::fs::read_to_string(&path).ok();
        std::fs::write(&path, change(before.as_deref().unwrap_or(""))).unwrap();
        assert_ne!(fingerprint(a).unwrap(), original, "{file} changed");
        match before {
            Some(text) => std::fs::write(&path, text).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        assert_eq!(fingerprint(a).unwrap(), original, "{file} restored");
    }
}
