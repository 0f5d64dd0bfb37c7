//! The metrics file: one record per epoch, and the bytes exchanged between
//! workers counted by tidemill itself.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::tidemill_ok;
use tidemill::dataflow::gradient::{grad_bytes, param_bytes};
use tidemill::dataflow::{Phase, ShardValues};

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
    let whole = param_bytes(&point, &ShardValues::Dense(vec![0.0; n]));
    let accepted = Phase::Eval {
        epoch: 1,
        steps: 1,
        objective: Some(0.5),
    };
    let unchanged = param_bytes(&accepted, &ShardValues::Delta(Vec::new()));
    let expected = evaluations * (whole + grad_bytes(n)) + recs.len() as u64 * unchanged;
    assert_eq!(total, expected);
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

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"not\": \"a record\"}\n").unwrap();
    let r = common::tidemill(&["plot", &bad.to_string_lossy(), "--out", &out]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("not a tidemill metrics record"));
}
