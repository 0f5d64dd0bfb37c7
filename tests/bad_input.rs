//! Every bad input gets a clear message (file, row group, column, row), a
//! documented non-zero exit code, and leaves no model or prediction file.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use common::{tidemill, write_parquet};

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn model(&self) -> PathBuf {
        self.path("out/model.json")
    }
    /// A pipeline training on `train` with extra `[data]` lines.
    fn pipeline(&self, train: &Path, data_extra: &str) -> PathBuf {
        let p = self.path("pipeline.toml");
        std::fs::write(
            &p,
            format!(
                "[data]\ntrain = {:?}\nlabel = \"y\"\n{data_extra}\n[model]\nkind = \"logistic\"\n[train]\nepochs = 3\n[output]\nmodel = {:?}\n",
                train.to_string_lossy(),
                self.model().to_string_lossy()
            ),
        )
        .unwrap();
        p
    }
    /// Trains and returns (exit code, stderr), checking that no output was left.
    fn train(&self, pipeline: &Path) -> (i32, String) {
        let out = tidemill(&["train", &pipeline.to_string_lossy()]);
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if code != 0 {
            assert!(!self.model().exists(), "a failed run left a model file");
            if let Ok(entries) = std::fs::read_dir(self.path("out")) {
                let left: Vec<_> = entries.map(|e| e.unwrap().file_name()).collect();
                assert!(left.is_empty(), "a failed run left files: {left:?}");
            }
        }
        (code, stderr)
    }
}

fn x(values: Vec<Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from(values))
}

fn good_columns(n: usize) -> Vec<(&'static str, ArrayRef)> {
    vec![
        ("x1", x((0..n).map(|i| Some(i as f64 / 10.0)).collect())),
        ("x2", x((0..n).map(|i| Some((i % 7) as f64)).collect())),
        (
            "y",
            Arc::new(Int64Array::from(
                (0..n).map(|i| (i % 2) as i64).collect::<Vec<_>>(),
            )),
        ),
    ]
}

fn good_file(case: &Case, name: &str) -> PathBuf {
    let p = case.path(name);
    write_parquet(&p, good_columns(40), 20);
    p
}

#[test]
fn good_fixture_trains() {
    let case = Case::new();
    let f = good_file(&case, "good.parquet");
    let (code, err) = case.train(&case.pipeline(&f, ""));
    assert_eq!(code, 0, "{err}");
    assert!(case.model().exists());
}

#[test]
fn truncated_parquet() {
    let case = Case::new();
    let f = good_file(&case, "t.parquet");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let (code, err) = case.train(&case.pipeline(&f, ""));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("t.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );
}

#[test]
fn corrupt_parquet() {
    let case = Case::new();
    let f = good_file(&case, "c.parquet");
    let mut bytes = std::fs::read(&f).unwrap();
    // Damage the data pages, keep the footer intact.
    for b in bytes.iter_mut().skip(8).take(200) {
        *b ^= 0x5a;
    }
    std::fs::write(&f, &bytes).unwrap();
    let (code, err) = case.train(&case.pipeline(&f, ""));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("c.parquet") && err.contains("row group 0"),
        "{err}"
    );
}

#[test]
fn missing_label_column() {
    let case = Case::new();
    let f = good_file(&case, "m.parquet");
    let p = case.pipeline(&f, "");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("label = \"y\"", "label = \"target\"");
    std::fs::write(&p, text).unwrap();
    let (code, err) = case.train(&p);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("column 'target' not found") && err.contains("x1, x2, y"),
        "{err}"
    );
}

#[test]
fn wrong_column_type() {
    let case = Case::new();
    let f = case.path("w.parquet");
    let mut cols = good_columns(10);
    cols[1] = ("x2", Arc::new(StringArray::from(vec!["a"; 10])));
    write_parquet(&f, cols, 5);
    let (code, err) = case.train(&case.pipeline(&f, ""));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("column 'x2' has type Utf8") && err.contains("data.categorical"),
        "{err}"
    );
}

#[test]
fn schema_drift_between_files() {
    let case = Case::new();
    let dir = case.path("parts");
    std::fs::create_dir(&dir).unwrap();
    write_parquet(&dir.join("a.parquet"), good_columns(10), 5);
    let mut cols = good_columns(10);
    cols[0] = ("x1", Arc::new(Int64Array::from(vec![1; 10])));
    write_parquet(&dir.join("b.parquet"), cols, 5);
    let (code, err) = case.train(&case.pipeline(&dir, ""));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("schema drift") && err.contains("b.parquet") && err.contains("column 'x1'"),
        "{err}"
    );
}

fn with_feature(case: &Case, name: &str, values: Vec<Option<f64>>) -> PathBuf {
    let f = case.path(name);
    let n = values.len();
    let mut cols = good_columns(n);
    cols[1] = ("x2", x(values));
    write_parquet(&f, cols, 20);
    f
}

#[test]
fn null_feature_value() {
    let case = Case::new();
    let mut v: Vec<Option<f64>> = (0..40).map(|i| Some(i as f64)).collect();
    v[27] = None;
    let f = with_feature(&case, "n.parquet", v);
    let (code, err) = case.train(&case.pipeline(&f, ""));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("n.parquet, row group 1, column 'x2', row 27: null value")
            && err.contains("on_missing"),
        "{err}"
    );
}

#[test]
fn nan_and_inf_values() {
    for (bad, what) in [(f64::NAN, "NaN"), (f64::INFINITY, "infinite value")] {
        let case = Case::new();
        let mut v: Vec<Option<f64>> = (0..40).map(|i| Some(i as f64)).collect();
        v[3] = Some(bad);
        let f = with_feature(&case, "nan.parquet", v);
        let (code, err) = case.train(&case.pipeline(&f, ""));
        assert_eq!(code, 4, "{err}");
        assert!(
            err.contains(&format!("row group 0, column 'x2', row 3: {what}")),
            "{err}"
        );
    }
}

#[test]
fn missing_value_policies_train() {
    for policy in ["zero", "mean", "skip_row"] {
        let case = Case::new();
        let mut v: Vec<Option<f64>> = (0..40).map(|i| Some(i as f64)).collect();
        v[5] = None;
        v[6] = Some(f64::NAN);
        let f = with_feature(&case, "p.parquet", v);
        let (code, err) = case.train(&case.pipeline(&f, &format!("on_missing = \"{policy}\"")));
        assert_eq!(code, 0, "{policy}: {err}");
        let model = std::fs::read_to_string(case.model()).unwrap();
        let rows = if policy == "skip_row" { 38 } else { 40 };
        assert!(
            model.contains(&format!("\"rows\": {rows}")),
            "{policy}: {model}"
        );
    }
}

#[test]
fn unknown_label_value() {
    let case = Case::new();
    let f = case.path("l.parquet");
    let mut cols = good_columns(30);
    let mut y: Vec<i64> = (0..30).map(|i| i % 2).collect();
    y[22] = 2;
    cols[2] = ("y", Arc::new(Int64Array::from(y)));
    write_parquet(&f, cols, 10);
    let (code, err) = case.train(&case.pipeline(&f, ""));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(
            "row group 2, column 'y', row 22: label value '2' is not one of the classes [0, 1]"
        ),
        "{err}"
    );
}

#[test]
fn empty_file() {
    let case = Case::new();
    let f = case.path("empty.parquet");
    std::fs::write(&f, b"").unwrap();
    let (code, err) = case.train(&case.pipeline(&f, ""));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("empty.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );
}

#[test]
fn zero_rows() {
    let case = Case::new();
    let f = case.path("zero.parquet");
    write_parquet(&f, good_columns(0), 10);
    let (code, err) = case.train(&case.pipeline(&f, ""));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("zero.parquet") && err.contains("no rows to train on"),
        "{err}"
    );
}

#[test]
fn unknown_pipeline_key() {
    let case = Case::new();
    let f = good_file(&case, "k.parquet");
    let p = case.pipeline(&f, "learning_rate = 0.1");
    let (code, err) = case.train(&p);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `learning_rate`"), "{err}");
}

#[test]
fn bad_override_value() {
    let case = Case::new();
    let f = good_file(&case, "o.parquet");
    let p = case.pipeline(&f, "");
    let out = tidemill(&[
        "train",
        &p.to_string_lossy(),
        "--set",
        "optimizer.kind=newton",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("optimizer.kind") && err.contains("newton"),
        "{err}"
    );
    assert!(!case.model().exists());
}

#[test]
fn predict_on_bad_input_leaves_no_output() {
    let case = Case::new();
    let f = good_file(&case, "train.parquet");
    let (code, err) = case.train(&case.pipeline(&f, ""));
    assert_eq!(code, 0, "{err}");
    let mut v: Vec<Option<f64>> = (0..40).map(|i| Some(i as f64)).collect();
    v[33] = None;
    let bad = with_feature(&case, "bad.parquet", v);
    let out_path = case.path("pred/out.parquet");
    let out = tidemill(&[
        "predict",
        "--model",
        &case.model().to_string_lossy(),
        "--input",
        &bad.to_string_lossy(),
        "--output",
        &out_path.to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("row group 1, column 'x2', row 33: null value"),
        "{err}"
    );
    assert!(!out_path.exists());
    let left: Vec<_> = std::fs::read_dir(case.path("pred")).unwrap().collect();
    assert!(left.is_empty(), "temporary prediction files left behind");
}

#[test]
fn bad_model_file() {
    let case = Case::new();
    let m = case.path("model.json");
    std::fs::write(&m, "{\"format\": \"something-else\"}").unwrap();
    let f = good_file(&case, "in.parquet");
    let out = tidemill(&[
        "predict",
        "-m",
        &m.to_string_lossy(),
        "-i",
        &f.to_string_lossy(),
        "-o",
        "-",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a tidemill model"));
}
