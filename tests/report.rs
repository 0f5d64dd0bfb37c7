//! `eval --curves` (ROC curve and calibration table, checked against
//! scikit-learn on the same scores) and `report` (the figure of a set
//! of runs, as SVG and PNG), with their refusals.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array};
use common::{tidemill, tidemill_ok};
use serde_json::Value;

/// scikit-learn's `roc_curve(drop_intermediate=False)`, `roc_auc_score`
/// and `calibration_curve(n_bins=10)` of the labels in `data` (column
/// `label`, positive above 0.5) against the scores `predict` wrote
/// (column `column` of `preds`).
const SKLEARN: &str = r#"
import json, sys
import pyarrow.parquet as pq
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve
data, label, preds, column = sys.argv[1:5]
y = (pq.read_table(data, columns=[label]).column(0).to_numpy().astype(float) > 0.5).astype(int)
s = pq.read_table(preds, columns=[column]).column(0).to_numpy()
fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
out = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "first": str(thr[0]),
       "thresholds": thr[1:].tolist(), "auc": roc_auc_score(y, s)}
if column == "probability":
    prob_true, prob_pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
    out["prob_true"] = prob_true.tolist()
    out["prob_pred"] = prob_pred.tolist()
print(json.dumps(out))
"#;

fn sklearn(python: &str, data: &Path, label: &str, preds: &Path, column: &str) -> Value {
    let out = Command::new(python)
        .args(["-c", SKLEARN])
        .arg(data)
        .arg(label)
        .arg(preds)
        .arg(column)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: {g} vs scikit-learn's {w}"
        );
    }
}

/// The trapezoid area under a curve's ROC points.
fn trapezoid(curves: &Value) -> f64 {
    let (x, y) = (floats(&curves["roc"]["fpr"]), floats(&curves["roc"]["tpr"]));
    (1..x.len())
        .map(|i| (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2.0)
        .sum()
}

/// A table whose one feature takes five values: scores tie in blocks,
/// which the ROC curve must keep as one point each.
fn tied_table(dir: &Path, labels: impl Fn(usize) -> i64) -> PathBuf {
    let n = 240;
    let x: Vec<f64> = (0..n).map(|i| (i % 5) as f64).collect();
    let y: Vec<i64> = (0..n).map(labels).collect();
    let path = dir.join("tied.parquet");
    common::write_parquet(
        &path,
        vec![
            ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
            ("y", Arc::new(Int64Array::from(y)) as ArrayRef),
        ],
        100,
    );
    path
}

fn train_on(dir: &Path, data: &Path, label: &str, kind: &str, name: &str) -> PathBuf {
    let pipeline = dir.join(format!("{name}.toml"));
    let model = dir.join(format!("{name}.json"));
    std::fs::write(
        &pipeline,
        format!(
            "[data]\ntrain = {:?}\nlabel = {label:?}\nstandardize = true\n\n[model]\nkind = {kind:?}\nl2 = 0.01\n\n[optimizer]\nkind = \"lbfgs\"\n\n[train]\nepochs = 50\n\n[output]\nmodel = {:?}\n",
            data.to_string_lossy(),
            model.to_string_lossy()
        ),
    )
    .unwrap();
    tidemill_ok(&["train", &pipeline.to_string_lossy()]);
    model
}

/// `eval --curves` on `data`: the metrics it prints and the curves file.
fn eval_curves(model: &Path, data: &Path, curves: &Path) -> (Value, Value) {
    let stdout = tidemill_ok(&[
        "eval",
        "-m",
        &model.to_string_lossy(),
        "-i",
        &data.to_string_lossy(),
        "--curves",
        &curves.to_string_lossy(),
    ]);
    let metrics: Value = serde_json::from_str(&stdout).unwrap();
    let text = std::fs::read_to_string(curves).unwrap();
    (metrics, serde_json::from_str(&text).unwrap())
}

/// Checks a curves file against scikit-learn on the scores `predict`
/// writes for the same rows (column `column`: `probability` or `score`).
fn check_against_sklearn(python: &str, model: &Path, data: &Path, label: &str, column: &str) {
    let dir = model.parent().unwrap();
    let stem = model.file_stem().unwrap().to_string_lossy();
    let (metrics, curves) = eval_curves(model, data, &dir.join(format!("{stem}.curves.json")));
    let preds = dir.join(format!("{stem}.preds.parquet"));
    tidemill_ok(&[
        "predict",
        "-m",
        &model.to_string_lossy(),
        "-i",
        &data.to_string_lossy(),
        "-o",
        &preds.to_string_lossy(),
    ]);
    let want = sklearn(python, data, label, &preds, column);
    let roc = &curves["roc"];
    assert_close("fpr", &floats(&roc["fpr"]), &floats(&want["fpr"]), 0.0);
    assert_close("tpr", &floats(&roc["tpr"]), &floats(&want["tpr"]), 0.0);
    let thresholds = roc["thresholds"].as_array().unwrap();
    assert_eq!(thresholds[0], Value::Null, "above every score");
    assert_eq!(want["first"], "inf");
    let rest: Vec<f64> = thresholds[1..]
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert_close("thresholds", &rest, &floats(&want["thresholds"]), 0.0);

    let auc = curves["auc"].as_f64().unwrap();
    let sk_auc = want["auc"].as_f64().unwrap();
    assert!(
        (auc - sk_auc).abs() < 1e-12,
        "auc {auc} vs roc_auc_score {sk_auc}"
    );
    let eval_auc = metrics["auc"].as_f64().unwrap();
    let area = trapezoid(&curves);
    assert!(
        (eval_auc - area).abs() < 1e-12,
        "eval's auc {eval_auc} vs the curve's trapezoid area {area}"
    );
    assert_eq!(curves["rows"], metrics["rows"]);
    assert_eq!(
        curves["positives"].as_u64().unwrap() + curves["negatives"].as_u64().unwrap(),
        metrics["rows"].as_u64().unwrap()
    );

    if column == "probability" {
        assert_eq!(curves["score"], "probability");
        let cal = &curves["calibration"];
        assert_eq!(cal["bins"], 10);
        let tol = 1e-12;
        assert_close(
            "prob_true",
            &floats(&cal["prob_true"]),
            &floats(&want["prob_true"]),
            tol,
        );
        assert_close(
            "prob_pred",
            &floats(&cal["prob_pred"]),
            &floats(&want["prob_pred"]),
            tol,
        );
        let counted: u64 = cal["count"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(counted, metrics["rows"].as_u64().unwrap());
    } else {
        assert_eq!(curves["score"], "decision_value");
        assert_eq!(
            curves["calibration"],
            Value::Null,
            "decision values are no probabilities"
        );
    }
}

#[test]
fn logistic_curves_match_scikit_learn() {
    let Some(python) = common::sklearn_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = common::quickstart_model(dir.path());
    let data = common::root().join("datasets/breast_cancer.parquet");
    check_against_sklearn(&python, &model, &data, "target", "probability");

    // Five distinct scores, each shared by 48 rows.
    let tied = tied_table(dir.path(), |i| {
        i64::from((i * 7 + i / 5) % 3 == 0 || i % 5 == 4)
    });
    let model = train_on(dir.path(), &tied, "y", "logistic", "tied");
    check_against_sklearn(&python, &model, &tied, "y", "probability");
    let curves: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tied.curves.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        curves["roc"]["fpr"].as_array().unwrap().len(),
        6,
        "one point per distinct score"
    );
}

#[test]
fn hinge_curves_are_roc_of_decision_values_without_calibration() {
    let Some(python) = common::sklearn_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = common::root().join("datasets/breast_cancer.parquet");
    let model = train_on(dir.path(), &data, "target", "hinge", "hinge");
    check_against_sklearn(&python, &model, &data, "target", "score");
}

/// Refused with exit 2 before anything is written: a curves file not
/// named `.json`, a regression or multiclass model, labels of one class.
#[test]
fn eval_curves_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let quick = common::quickstart_model(dir.path());
    let data = "datasets/breast_cancer.parquet";
    let refused = |model: &Path, data: &str, curves: &Path, says: &str| {
        let r = tidemill(&[
            "eval",
            "-m",
            &model.to_string_lossy(),
            "-i",
            data,
            "--curves",
            &curves.to_string_lossy(),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{says}: {err}");
        assert!(err.contains(says), "expected '{says}' in: {err}");
        assert!(!curves.exists(), "{} written", curves.display());
        let name = curves.file_name().unwrap().to_string_lossy();
        assert!(common::hidden_beside(curves.parent().unwrap(), &name).is_empty());
    };
    refused(
        &quick,
        data,
        &dir.path().join("c.csv"),
        "name the file .json",
    );
    // The extension is checked first: no model or input is read.
    refused(
        &dir.path().join("absent.json"),
        "absent.parquet",
        &dir.path().join("c"),
        "name the file .json",
    );

    let bc = common::root().join(data);
    let linear = train_on(dir.path(), &bc, "target", "linear", "linear");
    refused(
        &linear,
        data,
        &dir.path().join("c.json"),
        "a regression model",
    );
    let softmax = train_on(dir.path(), &bc, "target", "softmax", "softmax");
    refused(
        &softmax,
        data,
        &dir.path().join("c.json"),
        "a 2-class softmax model",
    );

    let tied = tied_table(dir.path(), |i| i64::from(i % 5 == 4));
    let model = train_on(dir.path(), &tied, "y", "logistic", "one_class");
    let positives = dir.path().join("positives.parquet");
    common::write_parquet(
        &positives,
        vec![
            ("x", Arc::new(Float64Array::from(vec![4.0; 10])) as ArrayRef),
            ("y", Arc::new(Int64Array::from(vec![1; 10])) as ArrayRef),
        ],
        100,
    );
    refused(
        &model,
        &positives.to_string_lossy(),
        &dir.path().join("c.json"),
        "are of one class",
    );
}

/// Two runs trained, evaluated with `--curves`, and reported: the SVG
/// names every run and panel, the PNG decodes to the figure's size with
/// text and both runs' colours drawn.
#[test]
fn report_draws_runs_and_curves() {
    let dir = tempfile::tempdir().unwrap();
    let data = "datasets/breast_cancer.parquet";
    let mut metrics = Vec::new();
    let mut curves = Vec::new();
    for (run, sets) in [
        ("run_a", &["optimizer.kind=sgd", "train.epochs=6"][..]),
        ("run_b", &[][..]),
    ] {
        let d = dir.path().join(run);
        let (m, model) = (d.join("metrics.jsonl"), d.join("model.json"));
        let mut args = vec![
            "train".to_string(),
            "pipelines/quickstart.toml".into(),
            "--metrics-out".into(),
            m.to_string_lossy().into(),
            "--model-out".into(),
            model.to_string_lossy().into(),
        ];
        for s in sets {
            args.extend(["--set".into(), s.to_string()]);
        }
        tidemill_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let c = d.join("curves.json");
        eval_curves(&model, &common::root().join(data), &c);
        metrics.push(m.to_string_lossy().into_owned());
        curves.push(c.to_string_lossy().into_owned());
    }
    let svg = dir.path().join("report/report.svg");
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec!["report".into(), metrics[0].clone(), metrics[1].clone()];
        for c in &curves {
            a.extend(["--curves".into(), c.clone()]);
        }
        a.extend(["--out".into(), out.to_string_lossy().into()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| tidemill(&a.iter().map(String::as_str).collect::<Vec<_>>());
    common::assert_success(&run(args(&svg, &[])), "report svg");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"));
    let line = |want: &str| text.lines().any(|l| l.trim() == want);
    for title in [
        "training report",
        "loss against epoch",
        "loss against wall time",
        "validation auc against epoch",
        "validation auc against wall time",
        "ROC curve",
        "calibration (10 bins)",
    ] {
        assert!(line(title), "panel '{title}' missing");
    }
    for label in ["run_a/metrics", "run_b/metrics"] {
        for entry in [
            format!("{label} training"),
            format!("{label} validation"),
            label.to_string(),
        ] {
            assert!(line(&entry), "legend entry '{entry}' missing");
        }
        assert!(
            text.lines()
                .any(|l| l.trim().starts_with(&format!("{label} (AUC 0.9"))),
            "ROC legend of {label} missing"
        );
    }

    // Labels by --label; a metric by name.
    common::assert_success(
        &run(args(
            &svg,
            &["--label", "sgd", "--label", "lbfgs", "--metric", "accuracy"],
        )),
        "report with labels",
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    let line = |want: &str| text.lines().any(|l| l.trim() == want);
    assert!(line("sgd training") && line("lbfgs validation"), "labels");
    assert!(line("validation accuracy against epoch"), "metric");
    assert!(!text.contains("run_a"), "a --label replaces the directory");

    let png = dir.path().join("report.PNG");
    common::assert_success(&run(args(&png, &["--title", "two runs"])), "report png");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    // Two columns of 640 pixels; three rows of 430 and the title's 50.
    assert_eq!((be(16), be(20)), (1280, 1340), "width, height");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let rgb: Vec<[u8; 3]> = pixels[..info.buffer_size()]
        .chunks(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    // The title's band holds dark text (drawn with the bundled font).
    let title_dark = rgb[..1280 * 40]
        .iter()
        .filter(|p| p.iter().all(|&c| c < 100))
        .count();
    assert!(title_dark > 100, "no title text: {title_dark} dark pixels");
    // Both runs' colours (the first two of plotters' Palette99).
    for color in [[230, 25, 75], [60, 180, 75]] {
        let n = rgb.iter().filter(|&&p| p == color).count();
        assert!(n > 500, "run colour {color:?}: {n} pixels");
    }
}

/// Refused with exit 2, naming what is wrong, and nothing written.
#[test]
fn report_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("metrics.jsonl");
    common::quickstart_model(dir.path());
    let ms = m.to_string_lossy().into_owned();
    let refused = |args: &[&str], out: &Path, says: &str| {
        let mut a = vec!["report"];
        a.extend(args);
        let o = out.to_string_lossy();
        a.extend(["--out", &o]);
        let r = tidemill(&a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "expected '{says}' in: {err}");
        assert!(!out.exists());
    };
    let svg = dir.path().join("r.svg");
    refused(
        &[&ms],
        &dir.path().join("r.jpg"),
        "unknown image extension '.jpg'",
    );
    refused(&[&ms], &dir.path().join("report"), "no extension");
    refused(
        &[&ms, "--label", "a", "--label", "b"],
        &svg,
        "2 label(s) for 1 metrics file(s)",
    );
    refused(
        &[&ms, "--metric", "acuracy"],
        &svg,
        "did you mean 'accuracy'?",
    );

    let no_loss = dir.path().join("no_loss.jsonl");
    std::fs::write(
        &no_loss,
        "{\"epoch\":1,\"steps\":1,\"elapsed_s\":0.1,\"bytes_exchanged\":0,\"bytes_per_step\":0.0}\n",
    )
    .unwrap();
    let nl = no_loss.to_string_lossy();
    refused(&[&nl], &svg, &format!("{nl}: no record has a loss"));

    // A regression run beside a classifier: no metric both have.
    let regression = dir.path().join("regression.jsonl");
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("\"auc\"", "\"rmse\"");
    std::fs::write(&regression, text.replace("\"accuracy\"", "\"mae\"")).unwrap();
    let rs = regression.to_string_lossy();
    refused(&[&ms, &rs], &svg, &format!("{rs}: no record has 'auc'"));

    let not_curves = dir.path().join("curves.json");
    std::fs::write(&not_curves, "{\"fpr\": []}").unwrap();
    let nc = not_curves.to_string_lossy();
    refused(
        &[&ms, "--curves", &nc],
        &svg,
        &format!("{nc}: not a tidemill curves file"),
    );
}
