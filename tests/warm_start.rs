//! `train --init-model`: a run that starts from a saved model's weights.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;

use common::{tidemill, tidemill_ok};
use serde_json::Value;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Trains `pipeline` with `extra` arguments into `dir/NAME.json`; returns
/// the stdout summary and the model.
fn train(dir: &Path, name: &str, pipeline: &str, extra: &[&str]) -> (Value, Value) {
    let model = dir.join(format!("{name}.json"));
    let metrics = dir.join(format!("{name}.jsonl"));
    let (m, x) = (s(&model), s(&metrics));
    let mut args = vec!["train", pipeline, "--model-out", &m, "--metrics-out", &x];
    args.extend_from_slice(extra);
    let summary = serde_json::from_str(&tidemill_ok(&args)).unwrap();
    let model = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    (summary, model)
}

fn weights(model: &Value) -> Vec<f64> {
    let mut w = vec![model["intercept"].as_f64().unwrap()];
    w.extend(
        model["coefficients"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap()),
    );
    w
}

/// From a converged L-BFGS model, a warm start is at the optimum already:
/// it stops within 2 iterations with the same objective and weights (to
/// the last digits: tight tolerances).
#[test]
fn a_converged_model_restarts_at_its_optimum() {
    let dir = tempfile::tempdir().unwrap();
    let tight = [
        "--set",
        "optimizer.tolerance=1e-12",
        "--set",
        "optimizer.gradient_tolerance=0",
    ];
    let (cold, m0) = train(dir.path(), "cold", "pipelines/quickstart.toml", &tight);
    let init = s(&dir.path().join("cold.json"));
    let (warm, m1) = train(
        dir.path(),
        "warm",
        "pipelines/quickstart.toml",
        &[&tight[..], &["--init-model", &init]].concat(),
    );
    assert!(cold["epochs"].as_u64().unwrap() > 10, "{cold}");
    assert!(warm["epochs"].as_u64().unwrap() <= 2, "{warm}");
    let (f0, f1) = (
        cold["objective"].as_f64().unwrap(),
        warm["objective"].as_f64().unwrap(),
    );
    assert!(f1 <= f0 && f0 - f1 < 1e-12 * f0, "{f0} then {f1}");
    for (a, b) in weights(&m0).iter().zip(weights(&m1)) {
        assert!(
            (a - b).abs() < 1e-6,
            "{:?} vs {:?}",
            weights(&m0),
            weights(&m1)
        );
    }
}

/// A warm start is as deterministic as a cold one: the same model file on
/// 1, 2 and 3 workers for allreduce and param-server; model-parallel (whose
/// margins are summed over feature blocks in `f64`) agrees to rounding.
#[test]
fn a_warm_start_gives_the_same_bits_on_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    train(
        dir.path(),
        "init",
        "pipelines/breast_cancer.toml",
        &["--set", "train.epochs=2"],
    );
    let init = s(&dir.path().join("init.json"));
    let run = |strategy: &str, workers: &str| {
        let name = format!("{strategy}-{workers}");
        let set = format!("train.strategy=\"{strategy}\"");
        let (_, model) = train(
            dir.path(),
            &name,
            "pipelines/breast_cancer.toml",
            &["--init-model", &init, "--workers", workers, "--set", &set],
        );
        (
            std::fs::read(dir.path().join(format!("{name}.json"))).unwrap(),
            model,
        )
    };
    let (reference, model) = run("allreduce", "1");
    for (strategy, workers) in [
        ("allreduce", "2"),
        ("allreduce", "3"),
        ("param-server", "2"),
    ] {
        assert!(
            run(strategy, workers).0 == reference,
            "{strategy} on {workers}"
        );
    }
    for workers in ["1", "3"] {
        let (_, other) = run("model-parallel", workers);
        for (a, b) in weights(&model).iter().zip(weights(&other)) {
            assert!(
                (a - b).abs() < 1e-9 * (1.0 + a.abs()),
                "model-parallel on {workers}: {a} vs {b}"
            );
        }
    }
}

/// The warm start really starts there: one SGD epoch from a good model
/// keeps it good, one from zero does not get as far.
#[test]
fn a_warm_start_continues_where_the_model_was() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = train(dir.path(), "good", "pipelines/quickstart.toml", &[]);
    let init = s(&dir.path().join("good.json"));
    let sgd = [
        "--set",
        "optimizer.kind=\"sgd\"",
        "--set",
        "optimizer.learning_rate=0.0001",
        "--set",
        "train.epochs=1",
    ];
    let (cold, _) = train(dir.path(), "cold", "pipelines/quickstart.toml", &sgd);
    let mut args = sgd.to_vec();
    args.extend(["--init-model", init.as_str()]);
    let (warm, _) = train(dir.path(), "warm", "pipelines/quickstart.toml", &args);
    let loss = |v: &Value| v["validation"]["loss"].as_f64().unwrap();
    assert!(loss(&warm) < 0.1, "{warm}");
    assert!(loss(&cold) > 0.5, "{cold}");
}

/// A model for other features is refused before training, naming the
/// first feature that differs.
#[test]
fn a_model_for_other_features_is_refused_naming_the_first_difference() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), "m", "pipelines/quickstart.toml", &[]);
    let init = s(&dir.path().join("m.json"));
    let out = tidemill(&[
        "train",
        "pipelines/quickstart.toml",
        "--init-model",
        &init,
        "--set",
        "data.exclude=[\"mean_texture\"]",
        "--model-out",
        &s(&dir.path().join("other.json")),
        "--metrics-out",
        &s(&dir.path().join("other.jsonl")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is a model for other features: numeric feature 2 is 'mean_texture', the pipeline's 'mean_perimeter'"),
        "{err}"
    );
    assert!(!dir.path().join("other.json").exists());

    let out = tidemill(&[
        "train",
        "pipelines/digits.toml",
        "--init-model",
        &init,
        "--model-out",
        &s(&dir.path().join("other.json")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("its kind is logistic, the pipeline's softmax"),
        "{err}"
    );
}

/// Regression: FTRL's weights are a function of its state (z, n), and a
/// warm start left that state at zero, so the first step put every weight
/// back to zero (eager) or kept untouched ones at their start (lazy): the
/// two disagreed and the start was lost. The state now starts at the
/// saved weights: eager and lazy give the same model, which continues
/// from the saved one.
#[test]
fn ftrl_continues_from_the_saved_model_eager_and_lazy_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (start, _) = train(
        dir.path(),
        "init",
        "pipelines/adult.toml",
        &["--set", "train.epochs=1"],
    );
    let init = s(&dir.path().join("init.json"));
    let ftrl = [
        "--set",
        "optimizer.kind=\"ftrl\"",
        "--set",
        "train.epochs=1",
    ];
    let loss = |v: &Value| v["validation"]["loss"].as_f64().unwrap();
    for penalty in ["model.l2=0", "model.l2=0.001"] {
        let mut runs = Vec::new();
        for lazy in ["false", "true"] {
            let name = format!("ftrl-{penalty}-{lazy}");
            let set = format!("optimizer.lazy={lazy}");
            let mut args = ftrl.to_vec();
            args.extend(["--set", penalty, "--set", &set, "--init-model", &init]);
            let (summary, _) = train(dir.path(), &name, "pipelines/adult.toml", &args);
            assert!(
                loss(&summary) < loss(&start) + 0.01,
                "{penalty}, lazy {lazy}: {} from {}",
                loss(&summary),
                loss(&start)
            );
            runs.push(std::fs::read(dir.path().join(format!("{name}.json"))).unwrap());
        }
        assert!(runs[0] == runs[1], "{penalty}: eager and lazy FTRL differ");
    }
}
