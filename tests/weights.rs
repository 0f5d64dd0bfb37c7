//! Row weights: `data.weight` counts a row of weight `w` as `w` rows, and
//! `model.class_weight` weighs each class's rows.
//!
//! - A table with integer weights trains the model of its rows repeated
//!   (L-BFGS to its optimum: both reach the same one; standardisation
//!   takes the weighted moments, as of the repeated rows).
//! - Weights of 1 change nothing, bit for bit, and a weighted model is the
//!   same bits on 1 and 3 workers.
//! - `class_weight = "balanced"` is scikit-learn's: the same model as a
//!   weight column of `compute_sample_weight("balanced", y)`, and as
//!   scikit-learn's `LogisticRegression(class_weight="balanced")` at the
//!   same penalty.
//! - Bad weights and misplaced settings fail before training (exit 2, or
//!   exit 4 for a bad value, naming the row).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, UInt32Array};
use arrow::record_batch::RecordBatch;
use common::{root, tidemill, tidemill_ok};

/// breast_cancer's rows as one batch.
fn breast_cancer() -> RecordBatch {
    let batches = common::dataset_batches("breast_cancer.parquet");
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Writes `batch` with `extra` columns added, in row groups of 100 rows.
fn write(path: &std::path::Path, batch: &RecordBatch, extra: Vec<(&str, ArrayRef)>) {
    let mut columns: Vec<(&str, ArrayRef)> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .zip(batch.columns().iter().cloned())
        .collect();
    columns.extend(extra);
    common::write_parquet(path, columns, 100);
}

/// The weights (intercept first, then the coefficients in file order) of
/// a linear-family model file.
fn params(path: &std::path::Path) -> Vec<f64> {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut v = vec![m["intercept"].as_f64().unwrap()];
    for f in m["features"]["numeric"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        v.push(m["coefficients"][name].as_f64().unwrap());
    }
    v
}

fn max_relative_gap(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f64::max)
}

/// The quickstart's pipeline on `train`, without a validation split, to
/// L-BFGS's optimum.
const PIPELINE: &str = r#"
[data]
label = "target"
standardize = true
[model]
kind = "logistic"
l2 = 0.01
[optimizer]
kind = "lbfgs"
gradient_tolerance = 1e-11
[train]
epochs = 500
"#;

/// Trains [`PIPELINE`] on `train` with `sets`, into `model`; returns the
/// summary.
fn train(train: &std::path::Path, model: &std::path::Path, sets: &[&str]) -> serde_json::Value {
    let pipeline = model.with_extension("toml");
    let text = PIPELINE.replace(
        "[data]",
        &format!("[data]\ntrain = \"{}\"", train.display()),
    );
    std::fs::write(&pipeline, text).unwrap();
    let pipeline = pipeline.to_string_lossy().to_string();
    let mut args = vec!["train", &pipeline];
    let model = model.to_string_lossy().to_string();
    for s in sets {
        args.extend(["--set", s]);
    }
    args.extend(["--model-out", &model]);
    serde_json::from_str(&tidemill_ok(&args)).unwrap()
}

#[test]
fn integer_weights_train_the_model_of_the_rows_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let rows = breast_cancer();
    let n = rows.num_rows();
    // Weights 0, 1, 2, 3, … : a row of weight 0 is left out.
    let w: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 4).collect();
    let weighted = dir.path().join("weighted.parquet");
    write(
        &weighted,
        &rows,
        vec![(
            "w",
            Arc::new(Float64Array::from_iter_values(
                w.iter().map(|&x| f64::from(x)),
            )),
        )],
    );
    let take: UInt32Array = (0..n as u32)
        .flat_map(|i| std::iter::repeat_n(i, w[i as usize] as usize))
        .collect();
    let repeated_rows = RecordBatch::try_new(
        rows.schema(),
        rows.columns()
            .iter()
            .map(|c| arrow::compute::take(c, &take, None).unwrap())
            .collect(),
    )
    .unwrap();
    let repeated = dir.path().join("repeated.parquet");
    write(&repeated, &repeated_rows, vec![]);
    for kind in ["logistic", "linear"] {
        let k = format!("model.kind=\"{kind}\"");
        let a = dir.path().join(format!("{kind}_weighted.json"));
        let b = dir.path().join(format!("{kind}_repeated.json"));
        let sa = train(&weighted, &a, &[&k, "data.weight=\"w\""]);
        let sb = train(&repeated, &b, &[&k]);
        assert_eq!(sa["stopped_by"], "converged", "{sa}");
        assert_eq!(sb["stopped_by"], "converged", "{sb}");
        let gap = max_relative_gap(&params(&a), &params(&b));
        eprintln!(
            "{kind}: weighted vs repeated rows, largest gap {gap:e} of the largest weight; objectives {} and {}",
            sa["objective"], sb["objective"]
        );
        assert!(gap < 1e-6, "{kind}: {gap:e}");
        let (oa, ob) = (
            sa["objective"].as_f64().unwrap(),
            sb["objective"].as_f64().unwrap(),
        );
        assert!((oa - ob).abs() <= 1e-9 * ob.abs(), "{oa} vs {ob}");
    }
    // Weights of 1 are no weights, bit for bit; a weighted model is the
    // same bits on 3 workers.
    let ones = dir.path().join("ones.parquet");
    write(
        &ones,
        &rows,
        vec![("w", Arc::new(Float64Array::from(vec![1.0; n])))],
    );
    let (p, q) = (dir.path().join("plain.json"), dir.path().join("ones.json"));
    train(&ones, &p, &["data.exclude=[\"w\"]"]);
    train(&ones, &q, &["data.weight=\"w\""]);
    let same = |a: &std::path::Path, b: &std::path::Path| {
        std::fs::read_to_string(a).unwrap() == std::fs::read_to_string(b).unwrap()
    };
    assert!(same(&p, &q), "weights of 1 trained another model");
    let three = dir.path().join("three.json");
    let data = format!("data.train=\"{}\"", weighted.display());
    for (workers, out) in [("1", &p), ("3", &three)] {
        tidemill_ok(&[
            "train",
            "pipelines/quickstart.toml",
            "-w",
            workers,
            "--set",
            &data,
            "--set",
            "data.weight=\"w\"",
            "--set",
            "optimizer.kind=\"adam\"",
            "--set",
            "train.epochs=3",
            "--model-out",
            &out.to_string_lossy(),
        ]);
    }
    assert!(same(&p, &three), "3 workers trained another weighted model");
}

/// scikit-learn's side: the standardised features with the balanced
/// sample weights (`w`) into `argv[2]`, and
/// `LogisticRegression(class_weight="balanced")` at `C = 1/(l2·n)` on
/// them, its weights (intercept first; on the
/// standardised features, as a model file keeps them) on stdout.
const SKLEARN: &str = r#"
import json, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_sample_weight
t = pq.read_table(sys.argv[1])
y = t.column("target").to_numpy()
names = [c for c in t.column_names if c != "target"]
X = np.column_stack([t.column(c).to_numpy().astype(np.float64) for c in names])
sw = compute_sample_weight("balanced", y)
mean, std = X.mean(axis=0), X.std(axis=0)
Z = (X - mean) / std
cols = {c: Z[:, j] for j, c in enumerate(names)}
cols["target"] = y
cols["w"] = sw
pq.write_table(pa.table(cols), sys.argv[2])
l2 = float(sys.argv[3])
m = LogisticRegression(C=1.0 / (l2 * len(y)), class_weight="balanced", tol=1e-12, max_iter=100000)
m.fit(Z, y)
print(json.dumps([float(m.intercept_[0])] + [float(c) for c in m.coef_[0]]))
"#;

#[test]
fn balanced_class_weights_are_scikit_learns() {
    let Some(python) = common::sklearn_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let with_weights = dir.path().join("bc_w.parquet");
    let out = Command::new(python)
        .current_dir(root())
        .args(["-c", SKLEARN, "datasets/breast_cancer.parquet"])
        .arg(&with_weights)
        .arg("0.01")
        .output()
        .unwrap();
    common::assert_success(&out, "scikit-learn");
    let theirs: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    let a = dir.path().join("balanced.json");
    train(
        &with_weights,
        &a,
        &["model.class_weight=\"balanced\"", "data.exclude=[\"w\"]"],
    );
    let ours = params(&a);
    // A weight column standardises with the weighted moments (those of
    // the rows repeated), class weights with the rows' (scikit-learn's
    // StandardScaler): compared without standardising.
    let (c, d) = (
        dir.path().join("raw_balanced.json"),
        dir.path().join("raw_column.json"),
    );
    let raw = "data.standardize=false";
    train(
        &with_weights,
        &c,
        &[
            "model.class_weight=\"balanced\"",
            "data.exclude=[\"w\"]",
            raw,
        ],
    );
    train(&with_weights, &d, &["data.weight=\"w\"", raw]);
    let column_gap = max_relative_gap(&params(&c), &params(&d));
    let sklearn_gap = max_relative_gap(&ours, &theirs);
    eprintln!(
        "class_weight=balanced vs a column of compute_sample_weight: {column_gap:e}; vs LogisticRegression(class_weight=balanced): {sklearn_gap:e}"
    );
    assert!(column_gap < 1e-6, "{column_gap:e}");
    assert!(
        sklearn_gap < 1e-4,
        "{sklearn_gap:e}\nours {ours:?}\ntheirs {theirs:?}"
    );
    // The weights change the model: balanced is not the unweighted one.
    let plain = dir.path().join("plain.json");
    train(&with_weights, &plain, &["data.exclude=[\"w\"]"]);
    assert!(max_relative_gap(&ours, &params(&plain)) > 1e-3);
    // A table of weights names classes; the classes not named weigh 1.
    let given = dir.path().join("given.json");
    train(
        &with_weights,
        &given,
        &[
            "model.class_weight={\"0\"=1.0, \"1\"=1.0}",
            "data.exclude=[\"w\"]",
        ],
    );
    assert_eq!(params(&given), params(&plain));
}

#[test]
fn weights_are_checked_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let rows = breast_cancer();
    let n = rows.num_rows();
    let bad = dir.path().join("bad.parquet");
    let mut w: Vec<Option<f64>> = vec![Some(1.0); n];
    w[150] = Some(-2.0);
    w[200] = None;
    write(&bad, &rows, vec![("w", Arc::new(Float64Array::from(w)))]);
    let data = format!("data.train=\"{}\"", bad.display());
    let run = |sets: &[&str]| {
        let mut args = vec![
            "train",
            "pipelines/quickstart.toml",
            "--set",
            &data,
            "--set",
            "data.exclude=[\"w\"]",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        let model = dir.path().join("m.json");
        let model = model.to_string_lossy().to_string();
        args.extend(["--model-out", &model]);
        let out = tidemill(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // A negative weight, named by file, row group, column and row.
    let (code, err) = run(&["data.weight=\"w\""]);
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains("weight -2") && err.contains("row 150"),
        "{err}"
    );
    assert!(err.contains("column 'w'") || err.contains("'w'"), "{err}");
    // A null weight under skip_row drops its row; the negative one still fails.
    let (code, err) = run(&["data.weight=\"w\"", "data.on_missing=\"skip_row\""]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("row 150"), "{err}");
    for (sets, needle) in [
        (&["data.weight=\"ww\""][..], "did you mean 'w'?"),
        (&["data.weight=\"target\""][..], "is the label"),
        (
            &[
                "data.weight=\"w\"",
                "data.features=[\"w\", \"mean_radius\"]",
            ][..],
            "is a feature",
        ),
        (
            &["model.class_weight=\"balance\""][..],
            "did you mean 'balanced'?",
        ),
        (
            &["model.class_weight={\"2\"=3.0}"][..],
            "'2' is not a class",
        ),
        (
            &["model.class_weight={\"1\"=-1.0}"][..],
            "a finite number ≥ 0",
        ),
        (
            &["model.kind=\"linear\"", "model.class_weight=\"balanced\""][..],
            "classifier",
        ),
        (
            &[
                "data.weight=\"w\"",
                "train.strategy=\"model-parallel\"",
                "optimizer.kind=\"sgd\"",
            ][..],
            "model-parallel does not weigh rows",
        ),
    ] {
        let (code, err) = run(sets);
        assert_eq!(code, Some(2), "{sets:?}: {err}");
        assert!(err.contains(needle), "{sets:?} should say {needle}: {err}");
    }
    // A NaN weight is an error even under skip_row (only a null is a
    // missing weight).
    let nan = dir.path().join("nan.parquet");
    let mut nw: Vec<Option<f64>> = vec![Some(1.0); n];
    nw[50] = Some(f64::NAN);
    nw[60] = None;
    write(&nan, &rows, vec![("w", Arc::new(Float64Array::from(nw)))]);
    let out = tidemill(&[
        "train",
        "pipelines/quickstart.toml",
        "--set",
        &format!("data.train=\"{}\"", nan.display()),
        "--set",
        "data.weight=\"w\"",
        "--set",
        "data.on_missing=\"skip_row\"",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("weight NaN") && err.contains("row 50"),
        "{err}"
    );
    // All weights 0: nothing to train on.
    let zeros = dir.path().join("zeros.parquet");
    write(
        &zeros,
        &rows,
        vec![("w", Arc::new(Float64Array::from(vec![0.0; n])))],
    );
    let data = format!("data.train=\"{}\"", zeros.display());
    let out = tidemill(&[
        "train",
        "pipelines/quickstart.toml",
        "--set",
        &data,
        "--set",
        "data.weight=\"w\"",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("sum to 0"), "{err}");
    // A stream does not weigh rows yet.
    let out = tidemill(&[
        "stream",
        "pipelines/quickstart.toml",
        "--input",
        "datasets/breast_cancer.parquet",
        "--set",
        "model.class_weight=\"balanced\"",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// Weights scaled by any factor train the same model (the scale is
/// `n / Σ w`, summed in f64 unit by unit); validation rows are not
/// weighted (a validation file needs no weight column, and bad weights
/// there are not read); string classes are told apart by their text.
#[test]
fn weights_are_relative_and_only_training_rows_carry_them() {
    let dir = tempfile::tempdir().unwrap();
    let rows = breast_cancer();
    let n = rows.num_rows();
    let w: Vec<f64> = (0..n).map(|i| ((i * 7) % 4) as f64).collect();
    let mut objectives = Vec::new();
    for (k, factor) in [1.0, 3e-17, 1e-20, 1e12].into_iter().enumerate() {
        let path = dir.path().join(format!("w{k}.parquet"));
        let scaled: Vec<f64> = w.iter().map(|x| x * factor).collect();
        write(
            &path,
            &rows,
            vec![("w", Arc::new(Float64Array::from(scaled)))],
        );
        let model = dir.path().join(format!("m{k}.json"));
        let s = train(&path, &model, &["data.weight=\"w\""]);
        objectives.push(s["objective"].as_f64().unwrap());
    }
    for o in &objectives {
        assert!(
            (o - objectives[0]).abs() <= 1e-9 * objectives[0],
            "{objectives:?}"
        );
    }
    // A validation file without the weight column, and one whose weights
    // are bad, both score the model.
    let good = dir.path().join("w0.parquet");
    let plain = dir.path().join("plain.parquet");
    write(&plain, &rows, vec![]);
    let bad = dir.path().join("bad.parquet");
    let mut bw: Vec<Option<f64>> = vec![Some(1.0); n];
    bw[3] = Some(-1.0);
    bw[4] = None;
    write(&bad, &rows, vec![("w", Arc::new(Float64Array::from(bw)))]);
    for validation in [&plain, &bad] {
        let set = format!("data.validation={{path=\"{}\"}}", validation.display());
        let model = dir.path().join("v.json");
        let s = train(&good, &model, &["data.weight=\"w\"", &set]);
        assert_eq!(s["validation"]["rows"].as_u64(), Some(n as u64), "{s}");
    }
    // Softmax over string classes `1`, `01`, `x` is the model over `b1`,
    // `a01`, `x` (the same order): balanced weights count them apart.
    let features = rows.num_columns() - 1;
    let cut = rows.project(&(0..features).collect::<Vec<_>>()).unwrap();
    let mut objective = Vec::new();
    for (a, b) in [("1", "01"), ("b1", "a01")] {
        let label: Vec<&str> = (0..n).map(|i| [a, b, "x"][(i * 5 + i / 7) % 3]).collect();
        let path = dir.path().join(format!("classes_{a}.parquet"));
        write(
            &path,
            &cut,
            vec![("target", Arc::new(arrow::array::StringArray::from(label)))],
        );
        let model = dir.path().join(format!("classes_{a}.json"));
        let s = train(
            &path,
            &model,
            &["model.kind=\"softmax\"", "model.class_weight=\"balanced\""],
        );
        objective.push(s["objective"].as_f64().unwrap());
    }
    assert_eq!(objective[0], objective[1], "{objective:?}");
    // Two names of one numeric class in a table of weights: refused.
    let out = tidemill(&[
        "train",
        "pipelines/quickstart.toml",
        "--set",
        "model.class_weight={\"1\"=2.0, \"1.0\"=5.0}",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("both name class"), "{err}");
}
