//! `tidemill cv`: k-fold cross-validation. The folds cut the rows the way
//! `data.validation = { fraction }` does — per row, from `(seed, file,
//! row)` — so every row is scored exactly once, fold `i` is the job
//! `train` runs with `data.validation = { fold = i, folds = K }`, and the
//! result is the same on any worker count.

#![allow(clippy::unwrap_used)]

mod common;

use common::{tidemill, tidemill_ok};
use serde_json::Value;

fn cv(args: &[&str]) -> Value {
    let mut all = vec!["cv", "pipelines/quickstart.toml"];
    all.extend(args);
    let mut v: Value = serde_json::from_str(&tidemill_ok(&all)).unwrap();
    v.as_object_mut().unwrap().remove("seconds");
    v
}

#[test]
fn folds_score_every_row_once_and_are_the_train_jobs_they_name() {
    let five = cv(&["--folds", "5"]);
    let folds = five["per_fold"].as_array().unwrap();
    assert_eq!(folds.len(), 5);
    let rows = 569;
    let scored: u64 = folds
        .iter()
        .map(|f| f["validation_rows"].as_u64().unwrap())
        .sum();
    assert_eq!(scored, rows, "{five}");
    for f in folds {
        let (t, v) = (
            f["train_rows"].as_u64().unwrap(),
            f["validation_rows"].as_u64().unwrap(),
        );
        assert_eq!(t + v, rows);
        assert!(v > 60 && v < 170, "{f}");
    }
    // The mean is the folds' mean.
    let mean: f64 = folds
        .iter()
        .map(|f| f["validation"]["auc"].as_f64().unwrap())
        .sum::<f64>()
        / 5.0;
    assert!((five["mean"]["auc"].as_f64().unwrap() - mean).abs() < 1e-15);
    // Fold 3 is `train` with that fold held out, bit for bit; fold 0 of 5
    // holds out the rows a 0.2 fraction does.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.json");
    let metrics = dir.path().join("m.jsonl");
    for (set, fold) in [
        ("data.validation={fold=3, folds=5}", 3),
        ("data.validation={fraction=0.2}", 0),
    ] {
        let out = tidemill_ok(&[
            "train",
            "pipelines/quickstart.toml",
            "--set",
            set,
            "--model-out",
            &model.to_string_lossy(),
            "--metrics-out",
            &metrics.to_string_lossy(),
        ]);
        let summary: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["validation"], folds[fold]["validation"], "{set}");
    }
    // Any worker count: the same folds, the same models.
    assert_eq!(cv(&["--folds", "5", "-w", "3"]), five);
}

#[test]
fn cv_refusals() {
    for (args, needle) in [
        (&["--folds", "1"][..], "--folds"),
        (&["--folds", "101"][..], "--folds"),
        (&["--set", "data.train=\"-\""][..], "data.train"),
    ] {
        let mut all = vec!["cv", "pipelines/quickstart.toml"];
        all.extend(args);
        let out = tidemill(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    for (set, needle) in [
        ("data.validation={fold=5, folds=5}", "fold 5 of 5"),
        ("data.validation={fold=0}", "folds"),
        ("data.validation={fold=0, folds=3, fraction=0.2}", "alone"),
    ] {
        let out = tidemill(&["validate", "pipelines/quickstart.toml", "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(needle), "{set}: {err}");
    }
}
