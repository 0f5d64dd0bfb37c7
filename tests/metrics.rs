//! The metrics file: one record per epoch, and the bytes exchanged between
//! workers counted by tidemill itself.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::tidemill_ok;
use tidemill::dataflow::gradient::{grad_bytes, param_bytes};
use tidemill::dataflow::{Phase, Scalars, ShardValues};

fn records(workers: usize, sets: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let w = workers.to_string();
    let p = path.to_string_lossy().to_string();
    let mut args = vec![
        "train",
        "pipelines/quickstart.toml",
        "--workers",
        &w,
        "--metrics-out",
        &p,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    tidemill_ok(&args);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn one_record_per_epoch_with_validation_metrics() {
    let recs = records(1, &["optimizer.kind=sgd", "train.epochs=4"]);
    assert_eq!(recs.len(), 4);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["epoch"], i as u64 + 1);
        assert!(r["train_loss"].as_f64().unwrap() > 0.0);
        let v = &r["validation"];
        assert_eq!(v["rows"], 113);
        for key in ["loss", "accuracy", "auc"] {
            assert!(v[key].is_number(), "{key} missing in {r}");
        }
    }
}

#[test]
fn bytes_exchanged_are_counted() {
    // One worker talks to nobody.
    for r in records(1, &[]) {
        assert_eq!(r["bytes_exchanged"], 0);
    }
    // L-BFGS on 2 workers: one shard of all 31 parameters, owned by worker 0.
    // Worker 1 receives the parameters of every round and sends its
    // gradient in every training round. Every evaluation point moves every
    // parameter (the whole shard travels); an evaluation round re-sends the
    // accepted point it already holds (an empty change list).
    let recs = records(2, &[]);
    let total: u64 = recs
        .iter()
        .map(|r| r["bytes_exchanged"].as_u64().unwrap())
        .sum();
    let evaluations = recs.last().unwrap()["steps"].as_u64().unwrap();
    let n = 31;
    let point = Phase::Train { epoch: 0, step: 0 };
    let whole = param_bytes(
        &point,
        &ShardValues::Dense(vec![0.0; n]),
        &Scalars::default(),
    );
    let accepted = Phase::Eval {
        epoch: 1,
        steps: 1,
        objective: Some(0.5),
    };
    let unchanged = param_bytes(
        &accepted,
        &ShardValues::Delta(Vec::new()),
        &Scalars::default(),
    );
    let expected = evaluations * (whole + grad_bytes(n)) + recs.len() as u64 * unchanged;
    assert_eq!(total, expected);
}

/// Every worker folding (`train.fold = "every-worker"`): in a training
/// step each worker sends its gradient to the other one, and no parameters
/// travel, evaluation rounds included. (Sliced, so that every worker has
/// rows in every step: a worker without any sends an empty sparse partial.)
#[test]
fn bytes_exchanged_when_every_worker_folds() {
    let recs = records(
        2,
        &[
            "data.partition=slice",
            "optimizer.kind=sgd",
            "train.epochs=3",
            "train.shards=1",
            "train.fold=every-worker",
        ],
    );
    let total: u64 = recs
        .iter()
        .map(|r| r["bytes_exchanged"].as_u64().unwrap())
        .sum();
    let steps = recs.last().unwrap()["steps"].as_u64().unwrap();
    assert!(steps > 3, "{recs:?}");
    assert_eq!(total, steps * 2 * grad_bytes(31));
}

#[test]
fn plot_renders_loss_against_wall_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for strategy in ["allreduce", "model-average"] {
        let m = dir.path().join(format!("{strategy}.jsonl"));
        let ms = m.to_string_lossy().to_string();
        let s = format!("train.strategy={strategy}");
        tidemill_ok(&[
            "train",
            "pipelines/breast_cancer.toml",
            "-w",
            "2",
            "--metrics-out",
            &ms,
            "--set",
            &s,
            "--set",
            "optimizer.kind=sgd",
            "--set",
            "train.epochs=5",
        ]);
        files.push(ms);
    }
    let svg = dir.path().join("plot/loss.svg");
    let out = svg.to_string_lossy().to_string();
    tidemill_ok(&["plot", &files[0], &files[1], "--out", &out]);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"));
    assert!(
        text.contains("allreduce") && text.contains("model-average"),
        "legend labels missing"
    );
    assert!(
        text.matches("<polyline").count() >= 2,
        "one line per run expected"
    );

    // Runs whose files share a name are labelled by their directories;
    // AUC by epoch; a metric no record has is refused, with the nearest.
    let mut runs = Vec::new();
    for run in ["run_a", "run_b"] {
        let d = dir.path().join(run);
        std::fs::create_dir(&d).unwrap();
        let to = d.join("metrics.jsonl");
        std::fs::copy(&files[runs.len()], &to).unwrap();
        runs.push(to.to_string_lossy().to_string());
    }
    let auc = dir.path().join("auc.svg").to_string_lossy().to_string();
    tidemill_ok(&[
        "plot",
        &runs[0],
        &runs[1],
        "--out",
        &auc,
        "--metric",
        "auc",
        "--by-epoch",
    ]);
    let text = std::fs::read_to_string(&auc).unwrap();
    assert!(
        text.contains("run_a/metrics") && text.contains("run_b/metrics"),
        "labels"
    );
    let line = |t: &str, want: &str| t.lines().any(|l| l.trim() == want);
    assert!(
        line(&text, "epoch") && line(&text, "auc against epoch"),
        "axes"
    );
    tidemill_ok(&[
        "plot", &runs[0], &runs[1], "--out", &auc, "--label", "first", "--label", "second",
    ]);
    let text = std::fs::read_to_string(&auc).unwrap();
    assert!(line(&text, "first") && line(&text, "second"), "labels");
    let r = common::tidemill(&["plot", &runs[0], "--out", &auc, "--metric", "acuracy"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("did you mean 'accuracy'?"), "{err}");
    let r = common::tidemill(&["plot", &runs[0], &runs[1], "--out", &auc, "--label", "one"]);
    assert_eq!(r.status.code(), Some(2));

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"not\": \"a record\"}\n").unwrap();
    let r = common::tidemill(&["plot", &bad.to_string_lossy(), "--out", &out]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("not a tidemill metrics record"));
}

/// Early stopping: the records flag the epochs that improved on the best
/// by more than `min_delta`, training ends `patience` epochs after the last
/// of them, and the model written is that epoch's: its validation loss,
/// computed here from the Parquet rows, is the one recorded for it.
#[test]
fn early_stopping_writes_the_best_epochs_model() {
    let (seed, fraction, patience, min_delta) = (5u64, 0.3, 3usize, 0.001);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[data]\ntrain = \"datasets/breast_cancer.parquet\"\nvalidation = {{ fraction = {fraction} }}\n\
             label = \"target\"\nstandardize = true\nseed = {seed}\n\
             [model]\nkind = \"logistic\"\n\
             [optimizer]\nkind = \"sgd\"\nlearning_rate = 2.0\nbatch_size = 16\n\
             [train]\nepochs = 60\n\
             early_stopping = {{ metric = \"loss\", patience = {patience}, min_delta = {min_delta} }}\n"
        ),
    )
    .unwrap();
    let (model_path, metrics) = (dir.path().join("m.json"), dir.path().join("m.jsonl"));
    tidemill_ok(&[
        "train",
        &pipeline.to_string_lossy(),
        "--workers",
        "2",
        "--model-out",
        &model_path.to_string_lossy(),
        "--metrics-out",
        &metrics.to_string_lossy(),
    ]);
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let losses: Vec<f64> = recs
        .iter()
        .map(|r| r["validation"]["loss"].as_f64().unwrap())
        .collect();
    // The rule, applied here to the recorded losses.
    let mut best = f64::INFINITY;
    let mut last_best = 0;
    for (i, (&l, r)) in losses.iter().zip(&recs).enumerate() {
        let improved = l < best - min_delta;
        if improved {
            best = l;
            last_best = i;
        }
        assert_eq!(r["best"], improved, "epoch {}", i + 1);
    }
    assert_eq!(
        recs.len(),
        last_best + 1 + patience,
        "training should stop {patience} epochs after the best, {losses:?}"
    );
    assert!(recs.len() < 60, "the run should stop early: {losses:?}");

    // The written model, scored on the held-out rows independently.
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model_path).unwrap()).unwrap();
    let path = common::root().join("datasets/breast_cancer.parquet");
    let names: Vec<String> = common::column_names(&path)
        .into_iter()
        .filter(|n| n != "target")
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let cols = common::read_columns(&path, &refs);
    let y = common::read_columns(&path, &["target"]).remove(0);
    let held: Vec<bool> = (0..y.len() as u64)
        .map(|r| tidemill::data::partition::is_validation(seed, 0, r, fraction))
        .collect();
    let mut x = vec![Vec::new(); y.len()];
    for (j, c) in cols.iter().enumerate() {
        let train: Vec<f64> = c
            .iter()
            .zip(&held)
            .filter(|(_, h)| !**h)
            .map(|(v, _)| *v)
            .collect();
        let n = train.len() as f64;
        let mean = train.iter().sum::<f64>() / n;
        let sd = (train.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let f = &model["features"]["numeric"][j];
        assert_eq!(f["name"], names[j]);
        let (center, scale) = (f["center"].as_f64().unwrap(), f["scale"].as_f64().unwrap());
        assert!(
            (center - mean).abs() <= 1e-12 * sd && (scale - sd).abs() <= 1e-12 * sd,
            "{}: model ({center}, {scale}), training rows ({mean}, {sd})",
            names[j]
        );
        for (row, &v) in x.iter_mut().zip(c) {
            row.push(((v - mean) / sd) as f32 as f64);
        }
    }
    let mut theta = vec![model["intercept"].as_f64().unwrap()];
    theta.extend(
        names
            .iter()
            .map(|n| model["coefficients"][n].as_f64().unwrap()),
    );
    let (mut sum, mut rows) = (0.0, 0);
    for ((xi, &yi), _) in x.iter().zip(&y).zip(&held).filter(|(_, h)| **h) {
        let m = common::margin(&theta, xi);
        sum += common::softplus(m) - yi * m;
        rows += 1;
    }
    let loss = sum / rows as f64;
    assert_eq!(recs[last_best]["validation"]["rows"], rows);
    assert!(
        (loss - losses[last_best]).abs() <= 1e-12 * loss,
        "the model's validation loss {loss} is not the best epoch's {} (epoch {}); last epoch's: {}",
        losses[last_best],
        last_best + 1,
        losses[recs.len() - 1]
    );
    assert!(
        (losses[recs.len() - 1] - loss).abs() > 1e-6,
        "the last epoch must differ from the best"
    );
}
