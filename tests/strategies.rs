//! Distribution strategies converge to the allreduce optimum: model
//! averaging (local SGD) on 1, 2 and 4 workers and on 2 processes reaches a
//! documented tolerance (docs/strategies.md) of the optimum of the same
//! objective.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{load, logistic_objective, root, tidemill_ok, Problem};

fn theta_of(model: &serde_json::Value, names: &[String]) -> Vec<f64> {
    let mut t = vec![model["intercept"].as_f64().unwrap()];
    t.extend(
        names
            .iter()
            .map(|n| model["coefficients"][n].as_f64().unwrap()),
    );
    t
}

fn train(
    pipeline: &str,
    sets: &[&str],
    workers: usize,
    dir: &Path,
    name: &str,
) -> serde_json::Value {
    let out = dir.join(name);
    let w = workers.to_string();
    let m = out.to_string_lossy().to_string();
    let mut args = vec!["train", pipeline, "--workers", &w, "--model-out", &m];
    for s in sets {
        args.extend(["--set", s]);
    }
    tidemill_ok(&args);
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

fn train_two_processes(pipeline: &str, sets: &[&str], dir: &Path) -> serde_json::Value {
    let hosts = common::hostfile(dir, 2);
    let model = dir.join("two.json");
    let children: Vec<_> = (0..2)
        .map(|p| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
            cmd.current_dir(root())
                .env("TIDEMILL_LOG", "warn")
                .args(["train", pipeline, "-n", "2", "-p", &p.to_string()])
                .arg("--hostfile")
                .arg(&hosts)
                .arg("--model-out")
                .arg(&model)
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for s in sets {
                cmd.args(["--set", s]);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_str(&std::fs::read_to_string(model).unwrap()).unwrap()
}

/// Trains the optimum with L-BFGS and each model-average run, and checks the
/// relative objective gap.
fn check(
    pipeline: &str,
    p: &Problem,
    objective: impl Fn(&[f64]) -> f64,
    average: &[&str],
    tolerance: f64,
) {
    let dir = tempfile::tempdir().unwrap();
    let base = ["data.validation={ fraction = 0.0001 }"];
    let best = theta_of(
        &train(
            pipeline,
            &["optimizer.kind=lbfgs", "train.epochs=500", base[0]],
            1,
            dir.path(),
            "opt.json",
        ),
        &p.names,
    );
    let f_best = objective(&best);
    let mut runs = Vec::new();
    for w in [1, 2, 4] {
        runs.push((
            format!("{w} workers"),
            train(pipeline, average, w, dir.path(), &format!("w{w}.json")),
        ));
    }
    runs.push((
        "2 processes".into(),
        train_two_processes(pipeline, average, dir.path()),
    ));
    for (name, model) in runs {
        let f = objective(&theta_of(&model, &p.names));
        let gap = (f - f_best) / f_best;
        eprintln!("{pipeline} model-average {name}: objective gap {gap:.2e}");
        assert!(gap > -1e-9, "{name} beat the optimum: {f} < {f_best}");
        assert!(
            gap < tolerance,
            "{name}: objective {f} vs optimum {f_best} (gap {gap:.2e})"
        );
    }
}

#[test]
fn model_average_logistic_breast_cancer() {
    let p = load("breast_cancer.parquet", "target");
    let l2 = 0.01;
    check(
        "pipelines/quickstart.toml",
        &p,
        |t| logistic_objective(&p, t, l2),
        &[
            "train.strategy=model-average",
            "train.sync_every=4",
            "optimizer.kind=sgd",
            "optimizer.learning_rate=0.5",
            "optimizer.batch_size=32",
            "optimizer.schedule=inverse_sqrt",
            "optimizer.decay=0.05",
            "train.epochs=100",
            "data.validation={ fraction = 0.0001 }",
        ],
        1e-3,
    );
}

/// california_housing is ordered geographically: under `slice` each worker
/// holds a different region and local replicas drift apart between
/// averagings (the non-IID case). Shuffled units keep replicas close.
#[test]
fn model_average_ridge_california_housing_shuffled() {
    let p = common::load("california_housing.parquet", "MedHouseVal");
    let l2 = 0.001;
    check(
        "pipelines/california_housing.toml",
        &p,
        |t| common::ridge_objective(&p, t, l2),
        &[
            "train.strategy=model-average",
            "data.partition=shuffle",
            "train.sync_every=4",
            "optimizer.kind=adam",
            "optimizer.learning_rate=0.02",
            "optimizer.batch_size=256",
            "optimizer.schedule=inverse_sqrt",
            "optimizer.decay=0.01",
            "train.epochs=20",
            "data.validation={ fraction = 0.0001 }",
        ],
        2e-2,
    );
}

#[test]
fn model_average_rejects_lbfgs() {
    let out = common::tidemill(&[
        "validate",
        "pipelines/quickstart.toml",
        "--set",
        "train.strategy=model-average",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("model-average"));
}
