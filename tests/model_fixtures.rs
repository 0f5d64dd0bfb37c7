//! The model file of every bundled pipeline, kept as a fixture: a change
//! anywhere in the engine that moves one bit of a model fails here, on 1,
//! 2 and 4 workers and on 2 processes.
//!
//! A deliberate change of numerics (a bug fix) regenerates the fixtures
//! with `TIDEMILL_BLESS=1 cargo test --release --test model_fixtures` and
//! names the change and that command in its commit.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{finish, root, start, tidemill_ok};

const PIPELINES: [&str; 6] = [
    "adult",
    "breast_cancer",
    "california_housing",
    "digits",
    "nycflights",
    "quickstart",
];

fn fixture(name: &str) -> PathBuf {
    root().join(format!("tests/fixtures/models/{name}.json"))
}

/// Trains pipeline `name` with `extra` arguments; returns the model bytes.
fn train(dir: &Path, name: &str, tag: &str, extra: &[&str]) -> Vec<u8> {
    let model = dir.join(format!("{name}-{tag}.json"));
    let metrics = dir.join(format!("{name}-{tag}.jsonl"));
    let pipeline = format!("pipelines/{name}.toml");
    let (m, x) = (model.to_string_lossy(), metrics.to_string_lossy());
    let mut args = vec!["train", &pipeline, "--model-out", &m, "--metrics-out", &x];
    args.extend_from_slice(extra);
    tidemill_ok(&args);
    std::fs::read(&model).unwrap()
}

/// The same pipeline on two processes of one worker each.
fn train_two_processes(dir: &Path, name: &str) -> Vec<u8> {
    let hosts = common::hostfile(dir, 2);
    let model = dir.join(format!("{name}-2p.json"));
    let metrics = dir.join(format!("{name}-2p.jsonl"));
    let pipeline = format!("pipelines/{name}.toml");
    let (h, m, x) = (
        hosts.to_string_lossy(),
        model.to_string_lossy(),
        metrics.to_string_lossy(),
    );
    let children: Vec<_> = ["0", "1"]
        .iter()
        .map(|p| {
            start(
                &[
                    "train",
                    &pipeline,
                    "-n",
                    "2",
                    "-p",
                    p,
                    "--hostfile",
                    &h,
                    "--model-out",
                    &m,
                    "--metrics-out",
                    &x,
                ],
                &[],
            )
        })
        .collect();
    for (p, child) in children.into_iter().enumerate() {
        let out = finish(child, Duration::from_secs(120));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}, process {p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::read(&model).unwrap()
}

#[test]
fn every_bundled_pipeline_gives_its_fixture_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let bless = std::env::var_os("TIDEMILL_BLESS").is_some();
    for name in PIPELINES {
        let one = train(dir.path(), name, "1", &["--workers", "1"]);
        if bless {
            std::fs::write(fixture(name), &one).unwrap();
        }
        let want = std::fs::read(fixture(name)).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (TIDEMILL_BLESS=1 writes it)",
                fixture(name).display()
            )
        });
        let runs = [
            ("1 worker", one),
            (
                "2 workers",
                train(dir.path(), name, "2", &["--workers", "2"]),
            ),
            (
                "4 workers",
                train(dir.path(), name, "4", &["--workers", "4"]),
            ),
            ("2 processes", train_two_processes(dir.path(), name)),
        ];
        for (how, got) in runs {
            assert!(
                got == want,
                "{name} on {how} differs from {}:\n{}",
                fixture(name).display(),
                first_difference(&want, &got)
            );
        }
    }
}

/// The first line where two model files differ.
fn first_difference(want: &[u8], got: &[u8]) -> String {
    let (want, got) = (String::from_utf8_lossy(want), String::from_utf8_lossy(got));
    want.lines()
        .zip(got.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map_or_else(
            || "lengths differ".into(),
            |(i, (a, b))| format!("line {}: fixture {a}\n        now {b}", i + 1),
        )
}
