//! The metrics file: one record per epoch, and the bytes exchanged between
//! workers counted by tidemill itself.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::tidemill_ok;
use tidemill::dataflow::gradient::{grad_bytes, param_bytes};

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
    // gradient in every training round.
    let recs = records(2, &[]);
    let total: u64 = recs
        .iter()
        .map(|r| r["bytes_exchanged"].as_u64().unwrap())
        .sum();
    let evaluations = recs.last().unwrap()["steps"].as_u64().unwrap();
    let n = 31;
    let expected =
        evaluations * (param_bytes(n) + grad_bytes(n)) + recs.len() as u64 * param_bytes(n);
    assert_eq!(total, expected);
}
