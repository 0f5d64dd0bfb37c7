//! Distribution strategies converge to the allreduce optimum: model
//! averaging (local SGD) and the parameter server with bounded staleness, on
//! 1, 2 and 4 workers and on 2 processes, reach a documented tolerance
//! (docs/strategies.md) of the optimum of the same objective. The parameter
//! server with `staleness = 0` is the allreduce loop, byte for byte, and a
//! slowed worker lets the others run ahead by at most `staleness` steps.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::process::Command;

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
    let model = dir.join("two.json");
    common::train_two_processes(pipeline, sets, dir, &model);
    serde_json::from_str(&std::fs::read_to_string(model).unwrap()).unwrap()
}

/// Trains the optimum with L-BFGS and each run of `strategy` (1, 2, 4
/// workers, 2 processes), and checks the relative objective gap.
fn check(
    pipeline: &str,
    p: &Problem,
    objective: impl Fn(&[f64]) -> f64,
    strategy: &[&str],
    tolerance: f64,
) {
    let label = strategy
        .iter()
        .find_map(|s| s.strip_prefix("train.strategy="))
        .unwrap_or("allreduce");
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
            train(pipeline, strategy, w, dir.path(), &format!("w{w}.json")),
        ));
    }
    runs.push((
        "2 processes".into(),
        train_two_processes(pipeline, strategy, dir.path()),
    ));
    for (name, model) in runs {
        let f = objective(&theta_of(&model, &p.names));
        let gap = (f - f_best) / f_best;
        eprintln!("{pipeline} {label} {name}: objective gap {gap:.2e}");
        assert!(gap > -1e-9, "{name} beat the optimum: {f} < {f_best}");
        assert!(
            gap < tolerance,
            "{name}: objective {f} vs optimum {f_best} (gap {gap:.2e})"
        );
    }
}

/// SGD settings for L2 logistic regression on breast_cancer.
const SGD_LOGISTIC: [&str; 7] = [
    "optimizer.kind=sgd",
    "optimizer.learning_rate=0.5",
    "optimizer.batch_size=32",
    "optimizer.schedule=inverse_sqrt",
    "optimizer.decay=0.05",
    "train.epochs=100",
    "data.validation={ fraction = 0.0001 }",
];

/// Adam settings for ridge regression on california_housing.
const ADAM_RIDGE: [&str; 7] = [
    "optimizer.kind=adam",
    "optimizer.learning_rate=0.02",
    "optimizer.batch_size=256",
    "optimizer.schedule=inverse_sqrt",
    "optimizer.decay=0.01",
    "train.epochs=20",
    "data.validation={ fraction = 0.0001 }",
];

/// L2 logistic regression on breast_cancer with SGD, under `strategy`.
fn breast_cancer_logistic(strategy: &[&str], tolerance: f64) {
    let p = load("breast_cancer.parquet", "target");
    let sets: Vec<&str> = strategy.iter().chain(&SGD_LOGISTIC).copied().collect();
    check(
        "pipelines/quickstart.toml",
        &p,
        |t| logistic_objective(&p, t, 0.01),
        &sets,
        tolerance,
    );
}

/// Ridge regression on california_housing with Adam, under `strategy`.
fn california_ridge(strategy: &[&str], tolerance: f64) {
    let p = common::load("california_housing.parquet", "MedHouseVal");
    let sets: Vec<&str> = strategy.iter().chain(&ADAM_RIDGE).copied().collect();
    check(
        "pipelines/california_housing.toml",
        &p,
        |t| common::ridge_objective(&p, t, 0.001),
        &sets,
        tolerance,
    );
}

#[test]
fn model_average_logistic_breast_cancer() {
    breast_cancer_logistic(
        &["train.strategy=model-average", "train.sync_every=4"],
        1e-3,
    );
}

/// california_housing is ordered geographically: under `slice` each worker
/// holds a different region and local replicas drift apart between
/// averagings (the non-IID case). Shuffled units keep replicas close.
#[test]
fn model_average_ridge_california_housing_shuffled() {
    california_ridge(
        &[
            "train.strategy=model-average",
            "data.partition=shuffle",
            "train.sync_every=4",
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

#[test]
fn param_server_logistic_breast_cancer() {
    breast_cancer_logistic(&["train.strategy=param-server", "train.staleness=2"], 1e-3);
}

#[test]
fn param_server_ridge_california_housing() {
    california_ridge(
        &["train.strategy=param-server", "train.staleness=async"],
        2e-2,
    );
}

#[test]
fn param_server_with_zero_staleness_is_allreduce_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for workers in [2, 4] {
        let run = |strategy: &str| {
            let out = dir.path().join(format!("{strategy}-{workers}.json"));
            let w = workers.to_string();
            let m = out.to_string_lossy().to_string();
            let set = format!("train.strategy={strategy}");
            tidemill_ok(&[
                "train",
                "pipelines/breast_cancer.toml",
                "--workers",
                &w,
                "--set",
                &set,
                "--set",
                "train.epochs=5",
                "--model-out",
                &m,
            ]);
            std::fs::read(out).unwrap()
        };
        let a = run("allreduce");
        let b = run("param-server");
        assert!(a == b, "{workers} workers: param-server (s = 0) differs");
    }
}

/// Per step of worker 0: how many steps it is ahead of worker 1, i.e. its
/// step index minus the number of steps worker 1 had finished when it began.
fn run_ahead(trace: &Path) -> Vec<i64> {
    let events: Vec<[u128; 4]> = std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<u128> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect();
    let slow_ends: Vec<u128> = events.iter().filter(|e| e[0] == 1).map(|e| e[3]).collect();
    events
        .iter()
        .filter(|e| e[0] == 0)
        .map(|e| {
            let done = slow_ends.iter().filter(|&&end| end <= e[2]).count();
            e[1] as i64 - done as i64
        })
        .collect()
}

#[test]
fn slowed_worker_lets_others_run_ahead_at_most_staleness_steps() {
    let dir = tempfile::tempdir().unwrap();
    for s in [0i64, 3] {
        let trace = dir.path().join(format!("trace-{s}.txt"));
        let metrics = dir.path().join(format!("metrics-{s}.jsonl"));
        let out = Command::new(env!("CARGO_BIN_EXE_tidemill"))
            .current_dir(root())
            .env("TIDEMILL_LOG", "warn")
            .env("TIDEMILL_SLOW_WORKER", "1:15")
            .env("TIDEMILL_TRACE_STEPS", &trace)
            .args(["train", "pipelines/breast_cancer.toml", "--workers", "2"])
            .args(["--set", "train.strategy=param-server"])
            .args(["--set", &format!("train.staleness={s}")])
            .args(["--set", "train.epochs=2"])
            .arg("--model-out")
            .arg(dir.path().join("m.json"))
            .arg("--metrics-out")
            .arg(&metrics)
            .output()
            .unwrap();
        common::assert_success(&out, "slowed param-server run");
        let ahead = run_ahead(&trace);
        let most = ahead.iter().copied().max().unwrap();
        eprintln!("staleness {s}: worker 0 ran ahead by at most {most} ({ahead:?})");
        assert_eq!(ahead.len(), 30, "one trace line per step of worker 0");
        assert!(most <= s, "ran {most} steps ahead with staleness {s}");
        if s > 0 {
            assert!(most >= 1, "the fast worker never ran ahead: {ahead:?}");
        }
        // The observed staleness histogram (over both workers and all 16
        // shards) never exceeds the bound either.
        for line in std::fs::read_to_string(&metrics).unwrap().lines() {
            let rec: serde_json::Value = serde_json::from_str(line).unwrap();
            let hist: Vec<u64> = rec["staleness"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert!(hist.len() as i64 <= s + 1, "histogram {hist:?}");
            assert_eq!(hist.iter().sum::<u64>(), 15 * 2 * 16, "{hist:?}");
        }
    }
}

#[test]
fn model_parallel_logistic_breast_cancer() {
    breast_cancer_logistic(&["train.strategy=model-parallel"], 1e-3);
}

#[test]
fn model_parallel_ridge_california_housing() {
    california_ridge(&["train.strategy=model-parallel"], 2e-2);
}

/// Model-parallel's model is allreduce's up to the rounding of summed
/// margins: every weight within 1e-9 of the largest.
fn model_parallel_matches(allreduce: &serde_json::Value, mp: &serde_json::Value, what: &str) {
    let (a, b) = (weights(allreduce), weights(mp));
    let scale = a.values().fold(1.0f64, |m, v| m.max(v.abs()));
    for (k, x) in &a {
        let y = b.get(k).copied().unwrap_or(0.0);
        assert!(
            (x - y).abs() <= 1e-9 * scale,
            "{what} {k}: allreduce {x} vs model-parallel {y}"
        );
    }
}

/// Every number in a model file's weights, by path.
fn weights(model: &serde_json::Value) -> std::collections::BTreeMap<String, f64> {
    fn walk(
        path: String,
        v: &serde_json::Value,
        out: &mut std::collections::BTreeMap<String, f64>,
    ) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    walk(format!("{path}/{k}"), v, out);
                }
            }
            v => {
                if let Some(x) = v.as_f64() {
                    out.insert(path, x);
                }
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for key in ["intercept", "coefficients", "hashed"] {
        walk(key.to_string(), &model[key], &mut out);
    }
    out
}

/// Model-parallel on 4 workers trains the allreduce model (up to the
/// rounding of summing partial margins), while each worker holds only its
/// block: numeric columns (breast_cancer, california) or hashed slots
/// (adult).
#[test]
fn model_parallel_is_allreduce_with_each_worker_holding_one_block() {
    let dir = tempfile::tempdir().unwrap();
    for (pipeline, sets) in [
        ("pipelines/breast_cancer.toml", &["train.epochs=10"][..]),
        ("pipelines/california_housing.toml", &ADAM_RIDGE[..5]),
        ("pipelines/adult.toml", &["train.epochs=2"][..]),
    ] {
        let mut summaries = Vec::new();
        let mut models = Vec::new();
        for strategy in ["allreduce", "model-parallel"] {
            let out = dir.path().join(format!("{strategy}.json"));
            let m = out.to_string_lossy().to_string();
            let set = format!("train.strategy={strategy}");
            let mut args = vec![
                "train",
                pipeline,
                "--workers",
                "4",
                "--model-out",
                &m,
                "--set",
                &set,
            ];
            for s in sets {
                args.extend(["--set", s]);
            }
            let stdout = tidemill_ok(&args);
            let json = &stdout[stdout.find('{').unwrap()..];
            summaries.push(serde_json::from_str::<serde_json::Value>(json).unwrap());
            models.push(
                serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out).unwrap())
                    .unwrap(),
            );
        }
        let (a, b) = (weights(&models[0]), weights(&models[1]));
        assert!(a.len() > 5, "{pipeline}: {a:?}");
        model_parallel_matches(&models[0], &models[1], pipeline);
        assert!(
            b.keys().all(|k| a.contains_key(k)),
            "{pipeline}: extra weights"
        );
        let held = |s: &serde_json::Value| -> Vec<u64> {
            s["params_per_worker"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect()
        };
        let (full, blocks) = (held(&summaries[0]), held(&summaries[1]));
        let n = full[0];
        assert_eq!(full, vec![n; 4], "{pipeline}: replicas");
        // Four blocks: every weight once, plus an unused intercept slot in
        // blocks 1-3 (one per output); balanced to within one column.
        assert_eq!(
            blocks.iter().sum::<u64>(),
            n + 3,
            "{pipeline}: {blocks:?} of {n}"
        );
        let (lo, hi) = (blocks.iter().min().unwrap(), blocks.iter().max().unwrap());
        assert!(
            hi - lo <= 1 && *hi <= n / 4 + 2,
            "{pipeline}: {blocks:?} of {n}"
        );
        eprintln!("{pipeline}: {n} parameters, held per worker {blocks:?}");
    }
}

#[test]
fn strategy_keys_are_checked() {
    for (sets, needle) in [
        (&["train.strategy=param-server"][..], "param-server"),
        (&["train.strategy=model-parallel"][..], "model-parallel"),
        (&["train.staleness=2"][..], "train.staleness"),
        (
            &[
                "optimizer.kind=sgd",
                "train.strategy=param-server",
                "train.staleness=33",
            ][..],
            "from 0 to 32",
        ),
        (
            &[
                "optimizer.kind=sgd",
                "train.strategy=param-server",
                "train.staleness=\"soon\"",
            ][..],
            "\"soon\"",
        ),
        (&["train.sync_every=4"][..], "train.sync_every"),
        (&["train.replicas=4"][..], "train.replicas"),
        (
            &[
                "optimizer.kind=sgd",
                "train.strategy=model-average",
                "train.replicas=0",
            ][..],
            "between 1 and 4096",
        ),
    ] {
        let mut args = vec!["validate", "pipelines/quickstart.toml"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = common::tidemill(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sets:?}: {err}");
        assert!(err.contains(needle), "{sets:?}: {err}");
    }
}

/// Every strategy trains softmax (digits, dense) and hashed logistic
/// (adult) models under `slice` and `shuffle`, to well above the majority
/// class (digits ~0.10, adult ~0.76).
#[test]
fn every_strategy_trains_every_model_shape_under_both_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], f64); 2] = [
        (
            "pipelines/digits.toml",
            &["optimizer.kind=adam", "optimizer.learning_rate=0.01"],
            0.85,
        ),
        ("pipelines/adult.toml", &[], 0.84),
    ];
    let strategies: [&[&str]; 4] = [
        &["train.strategy=allreduce"],
        &["train.strategy=param-server", "train.staleness=2"],
        &["train.strategy=model-average", "train.sync_every=8"],
        &["train.strategy=model-parallel"],
    ];
    for (pipeline, sets, floor) in cases {
        for strategy in strategies {
            for partition in ["slice", "shuffle"] {
                let m = dir.path().join("m.json").to_string_lossy().to_string();
                let part = format!("data.partition={partition}");
                let mut args = vec!["train", pipeline, "-w", "2", "--model-out", &m];
                for s in sets
                    .iter()
                    .chain(strategy)
                    .chain(&[part.as_str(), "train.epochs=2"])
                {
                    args.extend(["--set", s]);
                }
                let stdout = tidemill_ok(&args);
                let summary: serde_json::Value =
                    serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
                let acc = summary["validation"]["accuracy"].as_f64().unwrap();
                assert!(
                    acc > floor,
                    "{pipeline} {strategy:?} {partition}: accuracy {acc}"
                );
            }
        }
    }
}

/// With a budget of 2,000,000 parameters per worker, a 2^22-slot model is
/// rejected under allreduce (every worker would hold 4,194,306) and trains
/// under model-parallel on 4 workers, each holding a quarter — the same
/// model allreduce trains without the budget.
#[test]
fn a_model_over_one_workers_budget_trains_model_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "data.hash_bits=22",
        "train.epochs=1",
        "train.max_worker_params=2000000",
    ];
    let run = |workers: &str, extra: &[&str], name: &str| {
        let m = dir.path().join(name).to_string_lossy().to_string();
        let mut args = vec![
            "train",
            "pipelines/nycflights.toml",
            "-w",
            workers,
            "--model-out",
            &m,
        ];
        for s in base.iter().chain(extra) {
            args.extend(["--set", s]);
        }
        (common::tidemill(&args), m)
    };
    let (out, _) = run("2", &[], "allreduce.json");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("train.max_worker_params")
            && err.contains("4194306")
            && err.contains("model-parallel"),
        "{err}"
    );
    let (out, model) = run("4", &["train.strategy=model-parallel"], "mp.json");
    common::assert_success(&out, "model-parallel within budget");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    let held: Vec<u64> = summary["params_per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(held.len(), 4);
    assert!(held.iter().all(|&h| h <= 2_000_000), "{held:?}");
    assert_eq!(held.iter().sum::<u64>(), 4_194_306 + 3, "{held:?}");
    let (out, reference) = run("2", &["train.max_worker_params=100000000"], "ref.json");
    common::assert_success(&out, "allreduce without the budget");
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (a, b) = (weights(&read(&reference)), weights(&read(&model)));
    assert!(a.len() > 1000, "{} weights", a.len());
    for (k, x) in &a {
        let y = b.get(k).copied().unwrap_or(0.0);
        assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{k}: {x} vs {y}");
    }
}

/// Two workers whose rows mirror each other (same features, opposite
/// labels) step their replicas in opposite directions; the average stays
/// exactly 0, so the owners send no change — and the replicas must still
/// come back to it (they hold their own steps, not the owners' values).
#[test]
fn model_average_replicas_return_to_an_unchanged_average() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mirror.parquet");
    common::write_parquet(
        &data,
        vec![
            (
                "x",
                Arc::new(arrow::array::Float64Array::from(vec![1.0, 1.0])) as _,
            ),
            (
                "y",
                Arc::new(arrow::array::Int64Array::from(vec![1, 0])) as _,
            ),
        ],
        1,
    );
    let pipeline = dir.path().join("mirror.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"y\"\npartition = \"slice\"\n\
             [model]\nkind = \"logistic\"\nl2 = 0.0\n\
             [optimizer]\nkind = \"sgd\"\nlearning_rate = 0.5\nbatch_size = 2\n\
             [train]\nepochs = 5\nstrategy = \"model-average\"\nsync_every = 1\n",
            data.to_string_lossy()
        ),
    )
    .unwrap();
    let model = dir.path().join("m.json");
    tidemill_ok(&[
        "train",
        &pipeline.to_string_lossy(),
        "-w",
        "2",
        "--model-out",
        &model.to_string_lossy(),
    ]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert_eq!(m["intercept"].as_f64(), Some(0.0), "{m}");
    assert_eq!(m["coefficients"]["x"].as_f64(), Some(0.0), "{m}");
}

/// Trains `pipeline` with `sets` on 1, 2 and 4 workers and on 2 processes.
fn every_layout(
    pipeline: &str,
    sets: &[&str],
    dir: &Path,
    tag: &str,
) -> Vec<(String, serde_json::Value)> {
    let mut runs: Vec<(String, serde_json::Value)> = [1, 2, 4]
        .iter()
        .map(|&w| {
            let model = train(pipeline, sets, w, dir, &format!("{tag}-w{w}.json"));
            (format!("{w} workers"), model)
        })
        .collect();
    runs.push((
        "2 processes".into(),
        train_two_processes(pipeline, sets, dir),
    ));
    runs
}

/// `model-average` with a fixed number of replicas (`train.replicas`):
/// replica `r` trains the same rows from the same state on any worker
/// count, so the model file is the same bytes on 1, 2, 3 and 4 workers and
/// 2 processes — dense SGD and Adam on breast_cancer with 4 replicas
/// (cached, and streamed in waves), lazy FTRL on hashed adult with 3
/// (uneven over 2 and 4 workers; one idle on 4).
#[test]
fn model_average_with_fixed_replicas_is_the_same_model_on_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 3] = [
        // Streamed units (no cache) in waves: a worker's replicas each
        // move through the waves of a round on their own.
        (
            "pipelines/quickstart.toml",
            &[
                "train.replicas=4",
                "data.cache=false",
                "data.max_unit_rows=64",
                "data.units_per_step=2",
                "optimizer.kind=adam",
                "optimizer.learning_rate=0.01",
                "optimizer.batch_size=64",
                "train.epochs=3",
            ],
        ),
        (
            "pipelines/quickstart.toml",
            &[
                "train.replicas=4",
                "train.sync_every=4",
                "optimizer.kind=sgd",
                "optimizer.learning_rate=0.5",
                "optimizer.batch_size=32",
                "train.epochs=10",
                "data.partition=shuffle",
            ],
        ),
        (
            "pipelines/adult.toml",
            &[
                "train.replicas=3",
                "train.sync_every=8",
                "optimizer.kind=ftrl",
                "model.l1=0.001",
                "train.epochs=2",
            ],
        ),
    ];
    for (pipeline, sets) in cases {
        let sets: Vec<&str> = ["train.strategy=model-average"]
            .iter()
            .chain(sets)
            .copied()
            .collect();
        let mut runs = every_layout(pipeline, &sets, dir.path(), "fixed");
        runs.push((
            "3 workers".into(),
            train(pipeline, &sets, 3, dir.path(), "fixed-w3.json"),
        ));
        let (_, want) = &runs[0];
        for (name, model) in &runs[1..] {
            assert!(model == want, "{pipeline}: {name} differs from 1 worker");
        }
    }
}

/// Lazy updates on a hashed pipeline (adult, 2^12 slots) under every
/// strategy, on 1, 2 and 4 workers and 2 processes: FTRL's lazy model is
/// the eager one bit for bit (its weight is a closed form of state that
/// does not move without a gradient), SGD's is within rounding of it (the
/// decay and L1 threshold of missed steps in closed form), whoever applies
/// the catch-up: owners and readers (allreduce, param-server), replicas
/// (model-average) or blocks (model-parallel).
#[test]
fn lazy_updates_are_the_eager_ones_under_every_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let strategies: [&[&str]; 4] = [
        &["train.strategy=allreduce"],
        &["train.strategy=param-server", "train.staleness=0"],
        &["train.strategy=model-average", "train.sync_every=8"],
        &["train.strategy=model-parallel"],
    ];
    for (optimizer, exact) in [
        (&["optimizer.kind=ftrl", "model.l1=0.001"][..], true),
        (&["optimizer.kind=sgd", "model.l1=0.0005"][..], false),
    ] {
        for strategy in strategies {
            let sets = |lazy: &'static str| -> Vec<&str> {
                optimizer
                    .iter()
                    .chain(strategy)
                    .chain(&["train.epochs=1", lazy])
                    .copied()
                    .collect()
            };
            let eager = every_layout(
                "pipelines/adult.toml",
                &sets("optimizer.lazy=false"),
                dir.path(),
                "e",
            );
            let lazy = every_layout(
                "pipelines/adult.toml",
                &sets("optimizer.lazy=true"),
                dir.path(),
                "l",
            );
            for ((name, e), (_, l)) in eager.iter().zip(&lazy) {
                let (a, b) = (weights(e), weights(l));
                assert!(a.len() > 20, "{strategy:?}: {a:?}");
                let scale = a.values().fold(1e-300f64, |m, v| m.max(v.abs()));
                let worst = a
                    .iter()
                    .map(|(k, x)| (x - b.get(k).copied().unwrap_or(0.0)).abs() / scale)
                    .fold(0.0f64, f64::max);
                eprintln!("{optimizer:?} {strategy:?} {name}: lazy vs eager {worst:.1e}");
                if exact {
                    assert_eq!(a, b, "{optimizer:?} {strategy:?} {name}: not bit-identical");
                } else {
                    assert!(
                        worst <= 1e-12,
                        "{optimizer:?} {strategy:?} {name}: {worst:e}"
                    );
                    assert!(
                        b.keys().all(|k| a.contains_key(k)),
                        "{strategy:?} {name}: extra weights"
                    );
                }
            }
        }
    }
}

/// With lazy updates too, param-server with `staleness = 0` is allreduce
/// byte for byte, model-parallel is allreduce up to the rounding of
/// summed margins, and param-server with `staleness = 2` (whose reads
/// depend on timing) trains as well as allreduce — on a hashed pipeline.
#[test]
fn lazy_updates_keep_the_strategies_guarantees() {
    let dir = tempfile::tempdir().unwrap();
    let run =
        |strategy: &[&str], workers: usize, name: &str| -> (serde_json::Value, f64, Vec<u8>) {
            let out = dir.path().join(name);
            let m = out.to_string_lossy().to_string();
            let w = workers.to_string();
            let mut args = vec!["train", "pipelines/adult.toml", "-w", &w, "--model-out", &m];
            for s in ["optimizer.kind=sgd", "model.l1=0.0005", "train.epochs=2"]
                .iter()
                .chain(strategy)
            {
                args.extend(["--set", s]);
            }
            let stdout = tidemill_ok(&args);
            let summary: serde_json::Value =
                serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
            let loss = summary["validation"]["loss"].as_f64().unwrap();
            let bytes = std::fs::read(&out).unwrap();
            (serde_json::from_slice(&bytes).unwrap(), loss, bytes)
        };
    for workers in [2, 4] {
        let (reference, loss, bytes) = run(&["train.strategy=allreduce"], workers, "a.json");
        let (_, _, ps0) = run(&["train.strategy=param-server"], workers, "p0.json");
        assert!(
            bytes == ps0,
            "{workers} workers: param-server (s = 0) differs"
        );
        let (mp, _, _) = run(&["train.strategy=model-parallel"], workers, "mp.json");
        model_parallel_matches(&reference, &mp, &format!("{workers} workers"));
        let (_, stale, _) = run(
            &["train.strategy=param-server", "train.staleness=2"],
            workers,
            "p2.json",
        );
        eprintln!(
            "{workers} workers: validation loss allreduce {loss:.5}, param-server s = 2 {stale:.5}"
        );
        assert!(
            (stale - loss).abs() < 0.01 * loss,
            "{workers} workers: {stale} vs {loss}"
        );
    }
    // Two processes, scored on the whole file.
    let eval = |model: &Path| -> f64 {
        let m = model.to_string_lossy().to_string();
        let out = tidemill_ok(&["eval", "--model", &m, "--input", "datasets/adult.parquet"]);
        let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let sets = [
        "optimizer.kind=sgd",
        "model.l1=0.0005",
        "train.epochs=2",
        "train.strategy=param-server",
        "train.staleness=2",
    ];
    train_two_processes("pipelines/adult.toml", &sets, dir.path());
    let stale = eval(&dir.path().join("two.json"));
    run(&["train.strategy=allreduce"], 2, "a.json");
    let loss = eval(&dir.path().join("a.json"));
    eprintln!("2 processes: loss allreduce {loss:.5}, param-server s = 2 {stale:.5}");
    assert!(
        (stale - loss).abs() < 0.01 * loss,
        "2 processes: {stale} vs {loss}"
    );
}
