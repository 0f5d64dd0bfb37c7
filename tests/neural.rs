//! Multilayer perceptrons (`model.kind = "mlp"`, docs/neural.md) through
//! the real binary: the same model file, byte for byte, on 1, 2 and 4
//! workers and 2 processes under allreduce, the parameter server and
//! model parallelism by hidden units (dense and hashed inputs); model
//! parallel against data parallel; a saved network scores as the trained
//! one did; and
//! on digits, a network beats the linear softmax and is at least as
//! accurate as scikit-learn's MLPClassifier with the same settings on the
//! same split.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::process::Command;

use common::{read_columns, root, tidemill, tidemill_ok};

/// A small network on digits: two tanh layers, Adam, 4 epochs.
const DIGITS: &[&str] = &[
    "model.kind=\"mlp\"",
    "model.head=\"softmax\"",
    "model.hidden=[40, 20]",
    "model.activation=\"tanh\"",
    "model.l2=1e-4",
    "optimizer.kind=\"adam\"",
    "optimizer.learning_rate=0.003",
    "optimizer.batch_size=64",
    "train.epochs=4",
];

/// A ReLU network over adult's hashed categorical columns (an embedding
/// bag into the first layer), 2 epochs.
const ADULT: &[&str] = &[
    "model.kind=\"mlp\"",
    "model.hidden=[32]",
    "model.l2=1e-5",
    "optimizer.kind=\"adam\"",
    "optimizer.learning_rate=0.003",
    "optimizer.batch_size=256",
    "train.epochs=2",
];

fn train(pipeline: &str, sets: &[&str], extra: &[&str], model: &Path) -> String {
    let m = model.to_string_lossy().to_string();
    let mut args = vec!["train", pipeline, "--model-out", &m];
    args.extend(extra);
    for s in sets {
        args.extend(["--set", s]);
    }
    tidemill_ok(&args)
}

/// The model file of `pipeline` + `sets` on 1, 2, 4 workers and 2
/// processes: the same bytes each time.
fn identical_everywhere(pipeline: &str, sets: &[&str], tag: &str) {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join(format!("{tag}-1.json"));
    train(pipeline, sets, &["--workers", "1"], &one);
    let want = std::fs::read(&one).unwrap();
    let file: serde_json::Value = serde_json::from_slice(&want).unwrap();
    assert_eq!(file["version"], 2, "{tag}: a network's file is version 2");
    assert!(file["network"]["layers"].is_array(), "{tag}: {file}");
    for w in ["2", "4"] {
        let path = dir.path().join(format!("{tag}-{w}.json"));
        train(pipeline, sets, &["--workers", w], &path);
        assert!(
            std::fs::read(&path).unwrap() == want,
            "{tag}: {w} workers wrote another model than 1 worker"
        );
    }
    let two = dir.path().join(format!("{tag}-p2.json"));
    common::train_two_processes(pipeline, sets, dir.path(), &two);
    assert!(
        std::fs::read(&two).unwrap() == want,
        "{tag}: 2 processes wrote another model than 1 worker"
    );
}

#[test]
fn a_network_is_the_same_bytes_on_1_2_4_workers_and_2_processes() {
    for strategy in ["allreduce", "param-server", "model-parallel"] {
        let s = format!("train.strategy=\"{strategy}\"");
        let mut sets = DIGITS.to_vec();
        sets.push(&s);
        identical_everywhere(
            "pipelines/digits.toml",
            &sets,
            &format!("digits-{strategy}"),
        );
        let mut sets = ADULT.to_vec();
        sets.push(&s);
        identical_everywhere("pipelines/adult.toml", &sets, &format!("adult-{strategy}"));
    }
}

/// Every weight of a file's network, in order.
fn network_weights(model: &serde_json::Value) -> Vec<f64> {
    let mut out = Vec::new();
    for l in model["network"]["layers"].as_array().unwrap() {
        for row in l["weights"].as_array().unwrap() {
            out.extend(row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()));
        }
        out.extend(
            l["biases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap()),
        );
        for c in l["hashed"].as_array().into_iter().flatten() {
            out.extend(
                c["weights"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap()),
            );
        }
    }
    out
}

/// SGD with weight decay steps a network's hashed columns lazily (the
/// default where it is exact): the same bytes on every layout, and the
/// eager steps' weights within rounding.
#[test]
fn lazy_steps_of_a_networks_hashed_columns_are_the_eager_ones() {
    let lazy: Vec<&str> = [
        "model.kind=\"mlp\"",
        "model.hidden=[32]",
        "model.l2=1e-4",
        "optimizer.kind=\"sgd\"",
        "optimizer.learning_rate=0.05",
        "optimizer.batch_size=256",
        "train.epochs=2",
    ]
    .to_vec();
    identical_everywhere("pipelines/adult.toml", &lazy, "adult-sgd-lazy");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("lazy.json"), dir.path().join("eager.json"));
    train("pipelines/adult.toml", &lazy, &["--workers", "2"], &a);
    let mut eager = lazy.clone();
    eager.push("optimizer.lazy=false");
    train("pipelines/adult.toml", &eager, &["--workers", "2"], &b);
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (wa, wb) = (network_weights(&read(&a)), network_weights(&read(&b)));
    assert_eq!(wa.len(), wb.len(), "the same hashed columns moved");
    let worst = wa
        .iter()
        .zip(&wb)
        .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
        .fold(0.0, f64::max);
    assert!(worst < 1e-9, "lazy and eager differ by {worst:e}");
}

/// Split by units over 3 workers (two hidden layers: forward partials and
/// backward gathers), a network trains to the data-parallel one's weights
/// within rounding; each worker holds about a third of the parameters.
#[test]
fn model_parallel_trains_the_data_parallel_network() {
    let dir = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    let mut held = Vec::new();
    for strategy in ["allreduce", "model-parallel"] {
        let s = format!("train.strategy=\"{strategy}\"");
        let mut sets = ADULT.to_vec();
        sets.extend(["model.hidden=[48, 32]", &s]);
        let path = dir.path().join(format!("{strategy}.json"));
        let summary: serde_json::Value = serde_json::from_str(&train(
            "pipelines/adult.toml",
            &sets,
            &["--workers", "3"],
            &path,
        ))
        .unwrap();
        held.push(summary["params_per_worker"].clone());
        models.push(
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&path).unwrap())
                .unwrap(),
        );
    }
    let (dp, mp) = (network_weights(&models[0]), network_weights(&models[1]));
    assert_eq!(dp.len(), mp.len());
    let worst = dp
        .iter()
        .zip(&mp)
        .map(|(a, b)| (a - b).abs() / (1.0 + a.abs()))
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-9,
        "model-parallel differs from allreduce by {worst:e}"
    );
    let total: u64 = held[0][0].as_u64().unwrap();
    let split: Vec<u64> = held[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(split.iter().sum::<u64>(), total, "{split:?} of {total}");
    assert!(
        split.iter().all(|&h| h * 2 < total),
        "{split:?} of {total}: each worker holds a share"
    );
}

/// Model averaging with a fixed number of replicas (`train.replicas`):
/// each replica's rows and arithmetic are the same on any worker count, and
/// so is the model. Without it there is one replica per worker, and four
/// replicas on four workers are that run.
#[test]
fn model_averaged_networks_with_fixed_replicas_are_the_same_everywhere() {
    let fixed = [
        "train.strategy=\"model-average\"",
        "train.sync_every=4",
        "train.replicas=4",
    ];
    let mut sets = DIGITS.to_vec();
    sets.extend(fixed);
    identical_everywhere("pipelines/digits.toml", &sets, "digits-model-average");
    let mut adult = ADULT.to_vec();
    adult.extend(fixed);
    identical_everywhere("pipelines/adult.toml", &adult, "adult-model-average");
    let dir = tempfile::tempdir().unwrap();
    let four = dir.path().join("four.json");
    train("pipelines/digits.toml", &sets, &["--workers", "4"], &four);
    let per_worker = dir.path().join("per-worker.json");
    train(
        "pipelines/digits.toml",
        &sets[..sets.len() - 1],
        &["--workers", "4"],
        &per_worker,
    );
    assert!(
        std::fs::read(&four).unwrap() == std::fs::read(&per_worker).unwrap(),
        "four replicas on four workers differ from one replica per worker"
    );
}

/// A network's forward pass in plain f64 loops from the model file's
/// layers (docs/model-format.md): the probabilities of each row.
fn forward(model: &serde_json::Value, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let net = &model["network"];
    let relu = net["activation"] == "relu";
    let layers = net["layers"].as_array().unwrap();
    let numeric = model["features"]["numeric"].as_array().unwrap();
    x.iter()
        .map(|row| {
            let mut a: Vec<f64> = numeric
                .iter()
                .zip(row)
                .map(|(f, v)| {
                    // Standardised, then held as f32 (docs/model-format.md).
                    let z = (v - f["center"].as_f64().unwrap()) / f["scale"].as_f64().unwrap();
                    f64::from(z as f32)
                })
                .collect();
            for (li, l) in layers.iter().enumerate() {
                let w = l["weights"].as_array().unwrap();
                let b = l["biases"].as_array().unwrap();
                let z: Vec<f64> = w
                    .iter()
                    .zip(b)
                    .map(|(wr, bi)| {
                        let wr = wr.as_array().unwrap();
                        bi.as_f64().unwrap()
                            + wr.iter()
                                .zip(&a)
                                .map(|(wv, av)| wv.as_f64().unwrap() * av)
                                .sum::<f64>()
                    })
                    .collect();
                a = if li + 1 == layers.len() {
                    z
                } else if relu {
                    z.iter().map(|v| v.max(0.0)).collect()
                } else {
                    z.iter().map(|v| v.tanh()).collect()
                };
            }
            let top = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = a.iter().map(|v| (v - top).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        })
        .collect()
}

/// A saved network scores as the trained one did: `eval` on the
/// validation file gives the training summary's numbers to the bit, and
/// `predict`'s probabilities are the file's layers applied by hand.
#[test]
fn a_saved_network_scores_as_the_trained_one() {
    let dir = tempfile::tempdir().unwrap();
    // The validation file: digits, under another name.
    let digits = dir.path().join("digits.parquet");
    std::fs::copy(root().join("datasets/digits.parquet"), &digits).unwrap();
    let valid = format!("data.validation={{ path = \"{}\" }}", digits.display());
    let mut sets = DIGITS.to_vec();
    sets.extend(["model.activation=\"relu\"", &valid]);
    let model = dir.path().join("m.json");
    let summary: serde_json::Value =
        serde_json::from_str(&train("pipelines/digits.toml", &sets, &[], &model)).unwrap();
    let m = model.to_string_lossy().to_string();
    let d = digits.to_string_lossy().to_string();
    let eval: serde_json::Value =
        serde_json::from_str(&tidemill_ok(&["eval", "-m", &m, "-i", &d])).unwrap();
    for metric in ["loss", "accuracy", "macro_f1"] {
        let (trained, saved) = (&summary["validation"][metric], &eval[metric]);
        assert!(
            trained.as_f64().is_some() && trained.as_f64() == saved.as_f64(),
            "{metric}: training {trained}, eval of the file {saved}\n{eval}"
        );
    }
    assert!(summary["validation"]["accuracy"].as_f64().unwrap() > 0.9);

    let out = dir.path().join("p.parquet");
    let o = out.to_string_lossy().to_string();
    tidemill_ok(&["predict", "-m", &m, "-i", &d, "-o", &o]);
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    let names: Vec<String> = file["features"]["numeric"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let cols = read_columns(&digits, &refs);
    let rows: Vec<Vec<f64>> = (0..cols[0].len())
        .map(|i| cols.iter().map(|c| c[i]).collect())
        .collect();
    let want = forward(&file, &rows);
    let classes: Vec<String> = file["features"]["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("probability_{}", c.as_str().unwrap()))
        .collect();
    let refs: Vec<&str> = classes.iter().map(String::as_str).collect();
    let got = read_columns(&out, &refs);
    let mut worst = 0.0f64;
    for (i, row) in want.iter().enumerate() {
        for (k, p) in row.iter().enumerate() {
            worst = worst.max((got[k][i] - p).abs());
        }
    }
    assert!(
        worst < 1e-12,
        "predict differs from the file's layers by {worst:e}"
    );
}

/// `tidemill stream` trains a network online (every row scored before it
/// is trained on): the same model file on 1 and 2 workers; a stream of a
/// network split by units is refused (exit 2).
#[test]
fn a_network_streams_to_the_same_model_on_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for w in ["1", "2"] {
        let model = dir.path().join(format!("s{w}.json"));
        let set = format!("output.model=\"{}\"", model.display());
        let mut args = vec![
            "stream",
            "pipelines/adult.toml",
            "--input",
            "datasets/adult.parquet",
            "--workers",
            w,
            // One snapshot, at the end: a snapshot every second (the
            // default) would make the model's snapshot count depend on
            // how fast a loaded machine runs.
            "--set",
            "stream.snapshot_seconds=1000000",
        ];
        for s in ADULT.iter().chain([&set.as_str()]) {
            args.extend(["--set", s]);
        }
        let summary: serde_json::Value = serde_json::from_str(&tidemill_ok(&args)).unwrap();
        assert!(
            summary["progressive"]["auc"].as_f64().unwrap() > 0.75,
            "{summary}"
        );
        files.push(std::fs::read(&model).unwrap());
    }
    assert!(
        files[0] == files[1],
        "1 and 2 workers streamed other models"
    );
    let mut args = vec![
        "stream",
        "pipelines/adult.toml",
        "--input",
        "datasets/adult.parquet",
    ];
    for s in ADULT.iter().chain([&"train.strategy=\"model-parallel\""]) {
        args.extend(["--set", s]);
    }
    let out = tidemill(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("train.strategy"));
}

/// `--init-model` starts a network from a saved one, its first layer
/// carried over to the new data's scaling: with a vanishing rate the
/// warm-started network scores as the saved one, though the two were
/// standardised on other rows. A linear model cannot start a network.
#[test]
fn a_network_warm_starts_from_a_saved_one_on_other_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.json");
    train("pipelines/digits.toml", DIGITS, &[], &saved);
    let s = saved.to_string_lossy().to_string();
    let mut sets = DIGITS.to_vec();
    sets.extend([
        "data.validation={ fraction = 0.5 }",
        "optimizer.learning_rate=1e-15",
        "train.epochs=1",
    ]);
    let warm = dir.path().join("warm.json");
    train("pipelines/digits.toml", &sets, &["--init-model", &s], &warm);
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (a, b) = (read(&saved), read(&warm));
    assert_ne!(
        a["features"]["numeric"][20]["center"], b["features"]["numeric"][20]["center"],
        "the scaling should differ"
    );
    let mut probs = Vec::new();
    for (m, name) in [(&saved, "a.parquet"), (&warm, "b.parquet")] {
        let out = dir.path().join(name);
        tidemill_ok(&[
            "predict",
            "-m",
            &m.to_string_lossy(),
            "-i",
            "datasets/digits.parquet",
            "-o",
            &out.to_string_lossy(),
        ]);
        probs.push(read_columns(&out, &["probability_3", "probability_8"]));
    }
    let worst = probs[0]
        .iter()
        .flatten()
        .zip(probs[1].iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "warm start moved the scores by {worst:e}");
    // Another shape, or a linear model, is refused with exit 2.
    let linear = dir.path().join("linear.json");
    train("pipelines/digits.toml", &[], &[], &linear);
    for (init, extra) in [(&linear, None), (&saved, Some("model.hidden=[8]"))] {
        let i = init.to_string_lossy().to_string();
        let mut args = vec!["train", "pipelines/digits.toml", "--init-model", &i];
        let mut sets = DIGITS.to_vec();
        sets.extend(extra);
        for s in &sets {
            args.extend(["--set", s]);
        }
        let out = tidemill(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--init-model"), "{err}");
    }
}

/// Training refuses what a network cannot do, naming the key.
#[test]
fn network_keys_are_checked_before_training() {
    for (sets, key) in [
        (
            &["model.kind=\"mlp\"", "model.hidden=[8]"][..],
            "model.head",
        ),
        (
            &["model.kind=\"mlp\"", "model.head=\"softmax\""][..],
            "model.hidden",
        ),
        (
            &[
                "model.kind=\"mlp\"",
                "model.head=\"softmax\"",
                "model.hidden=[0]",
            ][..],
            "model.hidden",
        ),
        (
            &[
                "model.kind=\"mlp\"",
                "model.head=\"softmax\"",
                "model.hidden=[8]",
                "optimizer.kind=\"lbfgs\"",
            ][..],
            "optimizer.kind",
        ),
        (
            &[
                "model.kind=\"mlp\"",
                "model.head=\"softmax\"",
                "model.hidden=[8]",
                "optimizer.kind=\"adam\"",
                "train.strategy=\"model-parallel\"",
                "output.checkpoint=\"ckpt\"",
            ][..],
            "output.checkpoint",
        ),
        (
            &[
                "model.kind=\"mlp\"",
                "model.head=\"softmax\"",
                "model.hidden=[8]",
                "model.l1=0.1",
            ][..],
            "model.l1",
        ),
        (&["model.hidden=[8]"][..], "model.hidden"),
    ] {
        let mut args = vec!["validate", "pipelines/digits.toml"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = tidemill(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sets:?}: {err}");
        assert!(err.contains(key), "{sets:?} should name {key}: {err}");
    }
}

/// digits, one hidden layer of 64 ReLU units, 60 epochs of Adam (batch
/// 128, rate 1e-3, alpha 1e-4 = l2 · 128), standardised inputs, 10 seeds
/// each: tidemill's mean test accuracy is at least scikit-learn's
/// MLPClassifier's on the same split, and above the linear softmax's
/// (benches/neural_digits.py, run here).
#[test]
fn digits_network_matches_sklearn_and_beats_the_linear_softmax() {
    let Some(python) = common::sklearn_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python)
        .current_dir(root())
        .env("TIDEMILL_BIN", env!("CARGO_BIN_EXE_tidemill"))
        .env("SEEDS", "10")
        .arg("benches/neural_digits.py")
        .arg("datasets/digits.parquet")
        .arg(dir.path())
        .output()
        .unwrap();
    common::assert_success(&out, "benches/neural_digits.py");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mean = |k: &str| r[k]["mean"].as_f64().unwrap();
    let (ours, sklearn, linear) = (
        mean("tidemill_mlp"),
        mean("sklearn_mlp"),
        mean("tidemill_softmax"),
    );
    eprintln!("digits test accuracy: tidemill mlp {ours:.4}, scikit-learn mlp {sklearn:.4}, linear softmax {linear:.4}");
    assert!(ours >= sklearn, "{r}");
    assert!(ours > linear, "{r}");
}

/// The start of a network's hashed columns, written from
/// docs/model-format.md's formula alone, is tidemill's: a reader of the
/// model file can rebuild the columns the file does not list.
#[test]
fn the_documented_hashed_start_is_the_one_tidemill_uses() {
    fn splitmix64(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let documented = |seed: u64, u: u64, s: u64, bound: f64| {
        let x = splitmix64(seed ^ splitmix64((u << 32) ^ s));
        let unit = (x >> 11) as f64 * 2f64.powi(-53);
        (2.0 * unit - 1.0) * bound
    };
    for (seed, unit, slot) in [(0, 0, 0), (3, 7, 17), (u64::MAX, 65_535, (1 << 28) - 1)] {
        let want = documented(seed, unit as u64, slot as u64, 0.29);
        let got = tidemill::model::mlp::hashed_init(seed, unit, slot, 0.29);
        assert_eq!(want.to_bits(), got.to_bits(), "{seed} {unit} {slot}");
    }
}
