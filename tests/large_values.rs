//! Numbers at the scale real tables hold them — Unix timestamps, money
//! amounts in the trillions, columns of very different scales side by side —
//! are summed exactly or the run fails loudly; never a silently wrong model.
//!
//! Regression tests for: `standardize` on epoch seconds wrote `"scale": 1.0`
//! (a moment sum beyond 2^70 became 0), and exact sums wrapped around.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array};
use common::{tidemill, tidemill_ok, write_parquet};
use serde_json::Value;

/// A deterministic pseudo-random stream in [0, 1) (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Approximately standard normal (sum of 12 uniforms).
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.next()).sum::<f64>() - 6.0
    }
}

/// Mean and population standard deviation, computed around the first value
/// (nearby floats subtract exactly): an independent reference.
fn two_pass(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let d: Vec<f64> = xs.iter().map(|x| x - xs[0]).collect();
    let m = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n;
    (xs[0] + m, var.sqrt())
}

struct Data {
    ts: Vec<f64>,
    amount: Vec<f64>,
    tiny: Vec<f64>,
    y: Vec<i64>,
}

/// 5000 rows: epoch seconds around 1.6e9 (std 8.7e6), amounts around 1e12
/// (std 3e9), a column of order 1e-6; the label depends on all three.
fn data() -> Data {
    let mut rng = Rng(7);
    let n = 5000;
    let mut d = Data {
        ts: Vec::new(),
        amount: Vec::new(),
        tiny: Vec::new(),
        y: Vec::new(),
    };
    for _ in 0..n {
        let (a, b, c) = (rng.normal(), rng.normal(), rng.normal());
        d.ts.push((1.6e9 + 8.7e6 * a).round());
        d.amount.push(1e12 + 3e9 * b);
        d.tiny.push(1e-6 * c);
        let z = 2.0 * a - 1.0 * b + 0.5 * c;
        d.y.push(i64::from(rng.next() < 1.0 / (1.0 + (-z).exp())));
    }
    d
}

fn write(dir: &Path, name: &str, d: &Data, shift: bool) -> PathBuf {
    let path = dir.join(name);
    let (s_ts, s_amount) = if shift { (1.6e9, 1e12) } else { (0.0, 0.0) };
    let ts: ArrayRef = if shift {
        Arc::new(Float64Array::from(
            d.ts.iter().map(|v| v - s_ts).collect::<Vec<_>>(),
        ))
    } else {
        Arc::new(Int64Array::from(
            d.ts.iter().map(|&v| v as i64).collect::<Vec<_>>(),
        ))
    };
    write_parquet(
        &path,
        vec![
            ("ts", ts),
            (
                "amount",
                Arc::new(Float64Array::from(
                    d.amount.iter().map(|v| v - s_amount).collect::<Vec<_>>(),
                )),
            ),
            ("tiny", Arc::new(Float64Array::from(d.tiny.clone()))),
            ("y", Arc::new(Int64Array::from(d.y.clone()))),
        ],
        500,
    );
    path
}

fn pipeline(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let p = dir.join(format!(
        "{}.toml",
        data.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &p,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"y\"\nstandardize = true\nvalidation = {{ fraction = 0.2 }}\n[model]\nkind = \"logistic\"\nl2 = 0.0001\n[optimizer]\nkind = \"lbfgs\"\n[train]\nepochs = 100\n{extra}",
            data.to_string_lossy()
        ),
    )
    .unwrap();
    p
}

/// An unstandardised L-BFGS logistic pipeline on `data`, and its model path.
fn plain_lbfgs(dir: &Path, data: &Path) -> (PathBuf, PathBuf) {
    let p = dir.join("plain.toml");
    let model = dir.join("m.json");
    std::fs::write(
        &p,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"y\"\n[model]\nkind = \"logistic\"\n[optimizer]\nkind = \"lbfgs\"\n[output]\nmodel = {:?}\n",
            data.to_string_lossy(),
            model.to_string_lossy()
        ),
    )
    .unwrap();
    (p, model)
}

fn train(pipeline: &Path, model: &Path, workers: usize) -> Value {
    let out = tidemill_ok(&[
        "train",
        &pipeline.to_string_lossy(),
        "--workers",
        &workers.to_string(),
        "--model-out",
        &model.to_string_lossy(),
    ]);
    serde_json::from_str(&out).unwrap()
}

fn numeric(model: &Path) -> Vec<Value> {
    let m: Value = serde_json::from_str(&std::fs::read_to_string(model).unwrap()).unwrap();
    m["features"]["numeric"].as_array().unwrap().clone()
}

#[test]
fn standardisation_of_timestamps_and_money_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let raw = write(dir.path(), "raw.parquet", &d, false);
    let model = dir.path().join("raw.json");
    let summary = train(&pipeline(dir.path(), &raw, ""), &model, 2);

    // The statistics are the training rows' (80%): compare with the
    // validation split applied by a run on the shifted columns, whose
    // moments no method gets wrong, and with two passes over all rows.
    let feats = numeric(&model);
    for (f, col) in [
        (&feats[0], &d.ts),
        (&feats[1], &d.amount),
        (&feats[2], &d.tiny),
    ] {
        let (mean, std) = two_pass(col);
        let center = f["center"].as_f64().unwrap();
        let scale = f["scale"].as_f64().unwrap();
        // A 20% hold-out moves the statistics a little, never by a factor.
        assert!(
            (center - mean).abs() < 0.1 * std && (scale / std - 1.0).abs() < 0.05,
            "{}: center {center} scale {scale}, all rows: {mean} {std}",
            f["name"]
        );
        assert_ne!(scale, 1.0, "{}: standardisation was skipped", f["name"]);
    }

    // The same model as on columns shifted to zero mean: identical
    // validation metrics, identical scales, centers differing by the shift.
    let shifted = write(dir.path(), "shifted.parquet", &d, true);
    let model_s = dir.path().join("shifted.json");
    let summary_s = train(&pipeline(dir.path(), &shifted, ""), &model_s, 2);
    let (v, vs) = (&summary["validation"], &summary_s["validation"]);
    assert!(
        (v["loss"].as_f64().unwrap() - vs["loss"].as_f64().unwrap()).abs() < 1e-9,
        "{v} vs {vs}"
    );
    assert_eq!(v["accuracy"], vs["accuracy"]);
    assert!(v["accuracy"].as_f64().unwrap() > 0.7, "{v}");
    let feats_s = numeric(&model_s);
    for (a, b, shift) in [
        (&feats[0], &feats_s[0], 1.6e9),
        (&feats[1], &feats_s[1], 1e12),
    ] {
        let (sa, sb) = (a["scale"].as_f64().unwrap(), b["scale"].as_f64().unwrap());
        assert!((sa / sb - 1.0).abs() < 1e-9, "{a} vs {b}");
        let (ca, cb) = (a["center"].as_f64().unwrap(), b["center"].as_f64().unwrap());
        assert!(
            ((ca - shift) - cb).abs() < 1e-6 * sa,
            "{a} vs {b}: centers differ by {} not {shift}",
            ca - cb
        );
    }
}

#[test]
fn statistics_of_large_values_are_the_same_bits_on_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write(dir.path(), "raw.parquet", &data(), false);
    let p = pipeline(dir.path(), &raw, "");
    let models: Vec<Vec<u8>> = [1, 2, 3]
        .iter()
        .map(|&w| {
            let m = dir.path().join(format!("m{w}.json"));
            train(&p, &m, w);
            std::fs::read(&m).unwrap()
        })
        .collect();
    assert_eq!(models[0], models[1]);
    assert_eq!(models[0], models[2]);
}

/// A least-squares problem whose label is a money amount around 1e12: its
/// loss sums (½·y² ≈ 5e23 a row) are far beyond 128-bit fixed point, and
/// the model must still reach the closed-form optimum.
#[test]
fn regression_on_amounts_in_the_trillions_reaches_the_closed_form() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(11);
    let n = 4000;
    let (mut x1, mut x2, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (a, b) = (rng.normal(), rng.normal());
        x1.push(a);
        x2.push(b);
        y.push(1e12 + 3e9 * a - 1e9 * b + 1e8 * rng.normal());
    }
    let path = dir.path().join("amounts.parquet");
    write_parquet(
        &path,
        vec![
            ("x1", Arc::new(Float64Array::from(x1.clone())) as ArrayRef),
            ("x2", Arc::new(Float64Array::from(x2.clone()))),
            ("y", Arc::new(Float64Array::from(y.clone()))),
        ],
        500,
    );
    let p = dir.path().join("amounts.toml");
    std::fs::write(
        &p,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"y\"\n[model]\nkind = \"linear\"\n[optimizer]\nkind = \"lbfgs\"\n[train]\nepochs = 200\n",
            path.to_string_lossy()
        ),
    )
    .unwrap();
    let model = dir.path().join("m.json");
    train(&p, &model, 2);
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    let got = [
        m["intercept"].as_f64().unwrap(),
        m["coefficients"]["x1"].as_f64().unwrap(),
        m["coefficients"]["x2"].as_f64().unwrap(),
    ];
    // Closed form of least squares (features read as f32, as tidemill does).
    let rows: Vec<[f64; 3]> = (0..n)
        .map(|i| [1.0, x1[i] as f32 as f64, x2[i] as f32 as f64])
        .collect();
    let mut a = vec![vec![0.0; 3]; 3];
    let mut b = vec![0.0; 3];
    for (r, &yi) in rows.iter().zip(&y) {
        for i in 0..3 {
            b[i] += r[i] * yi;
            for j in 0..3 {
                a[i][j] += r[i] * r[j];
            }
        }
    }
    let want = common::solve(a, b);
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() < 1e-6 * w.abs().max(1e9),
            "{got:?} vs {want:?}"
        );
    }
}

/// Unit partials that each fit in 128-bit fixed point but whose sum does
/// not: the run must stop with exit 6 naming the overflow, where it used to
/// wrap around and train on a garbage gradient.
#[test]
fn an_exact_sum_that_overflows_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4000;
    let path = dir.path().join("huge.parquet");
    write_parquet(
        &path,
        vec![
            (
                "x",
                Arc::new(Float64Array::from(
                    (0..n)
                        .map(|i| 3e18 + (i % 3) as f64 * 1e17)
                        .collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Int64Array::from(
                    (0..n).map(|i| i64::from(i % 10 == 0)).collect::<Vec<_>>(),
                )),
            ),
        ],
        // Units of 100 rows: each unit's partial (≈1.2e20) fits, 40 of them do not.
        100,
    );
    let (p, model) = plain_lbfgs(dir.path(), &path);
    for workers in ["1", "2"] {
        let out = tidemill(&["train", &p.to_string_lossy(), "--workers", workers]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{err}");
        assert!(
            err.contains("fixed point") && err.contains("standardize"),
            "{err}"
        );
        assert!(!model.exists(), "a failed run wrote a model");
    }
}

/// R² is `1 − SSE/SST`, and `SST = Σy² − n·ȳ²` loses everything to
/// cancellation when labels dwarf their spread: at an offset of 1e12 it
/// read 0.99884 where the true value is 0.99005, and was absent at 1e12
/// (early stopping on `r2` then picks noise). Labels are now summed
/// around a reference (the training label mean; in `eval`, the first label).
#[test]
fn r2_keeps_its_precision_when_labels_dwarf_their_spread() {
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for offset in [0.0, 1e10, 1e12] {
        let mut rng = Rng(5);
        let rows = |n: usize, rng: &mut Rng| {
            let (mut a, mut y) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let x = rng.normal();
                a.push(x);
                y.push(offset + 1000.0 * x + 100.0 * rng.normal());
            }
            (a, y)
        };
        let (train_a, train_y) = rows(3000, &mut rng);
        let (test_a, test_y) = rows(1000, &mut rng);
        let write = |name: &str, a: &[f64], y: &[f64]| {
            let p = dir.path().join(format!("{name}-{offset:e}.parquet"));
            write_parquet(
                &p,
                vec![
                    ("a", Arc::new(Float64Array::from(a.to_vec())) as ArrayRef),
                    ("y", Arc::new(Float64Array::from(y.to_vec()))),
                ],
                500,
            );
            p
        };
        let train_path = write("train", &train_a, &train_y);
        let test_path = write("test", &test_a, &test_y);
        let p = dir.path().join(format!("r2-{offset:e}.toml"));
        std::fs::write(
            &p,
            format!(
                "[data]\ntrain = {:?}\nlabel = \"y\"\nvalidation = {{ path = {:?} }}\n[model]\nkind = \"linear\"\n[optimizer]\nkind = \"lbfgs\"\n[train]\nepochs = 100\n",
                train_path.to_string_lossy(),
                test_path.to_string_lossy()
            ),
        )
        .unwrap();
        let model = dir.path().join(format!("m-{offset:e}.json"));
        let summary = train(&p, &model, 2);
        let eval: Value = serde_json::from_str(&tidemill_ok(&[
            "eval",
            "--model",
            &model.to_string_lossy(),
            "--input",
            &test_path.to_string_lossy(),
        ]))
        .unwrap();
        let validation_r2 = summary["validation"]["r2"].as_f64().unwrap();
        let eval_r2 = eval["r2"].as_f64().unwrap();
        results.push((offset, validation_r2, eval_r2));
    }
    let (_, base, _) = results[0];
    assert!(base > 0.98 && base < 0.999, "{results:?}");
    for (offset, v, e) in &results {
        assert!((v - base).abs() < 1e-6, "offset {offset}: {results:?}");
        assert!((e - base).abs() < 1e-6, "offset {offset}: {results:?}");
    }
}

/// Regression: an exact sum failed or not depending on how the units
/// were grouped. Here unit partials of ±1e21 (each within range) cancel in
/// total, but one worker adding three positive ones in a row passed 2^71
/// and failed, while three workers (each summing a + and a − unit) trained
/// on. Whether a sum is exact is now decided by the partials' magnitudes
/// alone, the same on every worker count: the run fails on all of them.
#[test]
fn an_exact_sum_fails_on_every_worker_count_or_on_none() {
    let dir = tempfile::tempdir().unwrap();
    // Six units of 100 rows; x = 2e19, so a unit's partial is ±0.5·100·2e19.
    let signs = [0i64, 0, 0, 1, 1, 1];
    let n = signs.len() * 100;
    let path = dir.path().join("cancel.parquet");
    write_parquet(
        &path,
        vec![
            ("x", Arc::new(Float64Array::from(vec![2e19; n])) as ArrayRef),
            (
                "y",
                Arc::new(Int64Array::from(
                    (0..n).map(|i| signs[i / 100]).collect::<Vec<_>>(),
                )),
            ),
        ],
        100,
    );
    let (p, model) = plain_lbfgs(dir.path(), &path);
    let mut messages = Vec::new();
    for workers in ["1", "2", "3", "6"] {
        let out = tidemill(&["train", &p.to_string_lossy(), "--workers", workers]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(6), "{workers} workers: {err}");
        assert!(!model.exists(), "a failed run wrote a model");
        let line = err
            .lines()
            .find(|l| l.contains("in every order"))
            .unwrap_or_else(|| panic!("{workers} workers: {err}"))
            .to_string();
        messages.push(line);
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:#?}");
}
