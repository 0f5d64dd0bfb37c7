//! Forgetting rows of models without sufficient statistics (logistic,
//! softmax by L-BFGS; hinge, whose dual is then solved exactly):
//! `tidemill forget` re-optimises warm-started from the previous model over
//! the rows that remain, and must reach the optimum of training from
//! scratch on them (objective within 1e-9 relative), in fewer iterations.
//! Real binary, real Parquet files.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, StringArray};
use common::{root, tidemill, tidemill_ok, write_parquet};

fn key_file(dir: &Path, name: &str, rows: impl Iterator<Item = usize>) -> PathBuf {
    common::keys_csv(dir, name, "r", rows)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `datasets/FILE` with a key column `id` = `r<row>`, keeping the rows
/// `keep` selects, in row groups of 4000.
fn keyed(dir: &Path, file: &str, name: &str, keep: impl Fn(usize) -> bool) -> PathBuf {
    let batches = common::dataset_batches(file);
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let picked: Vec<u64> = (0..all.num_rows() as u64)
        .filter(|&i| keep(i as usize))
        .collect();
    let take = arrow::array::UInt64Array::from(picked.clone());
    let schema = all.schema();
    let mut columns: Vec<(&str, ArrayRef)> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                f.name().as_str(),
                arrow::compute::take(all.column(i), &take, None).unwrap(),
            )
        })
        .collect();
    let ids: Vec<String> = picked.iter().map(|i| format!("r{i}")).collect();
    columns.push((
        "id",
        std::sync::Arc::new(StringArray::from(ids)) as ArrayRef,
    ));
    let path = dir.join(name);
    write_parquet(&path, columns, 4000);
    path
}

/// A pipeline over `data` with `body` (the rest of `[data]`, and
/// `[model]`) and `optimizer` (the rest of `[optimizer]`, L-BFGS).
fn pipeline(
    dir: &Path,
    name: &str,
    data: &Path,
    body: &str,
    optimizer: &str,
    state: bool,
) -> PathBuf {
    let mut text = format!(
        "[data]\ntrain = {:?}\nkey = \"id\"\nstandardize = true\n{body}\n[optimizer]\nkind = \"lbfgs\"\n{optimizer}\n",
        s(data)
    );
    if state {
        text += &format!(
            "[output]\nstate = {:?}\n",
            s(&dir.join(format!("{name}.state")))
        );
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn training(model: &Path) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model).unwrap()).unwrap();
    m["training"].clone()
}

/// The model's parameters: intercepts and coefficients, per class or not.
fn weights(model: &Path) -> Vec<f64> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model).unwrap()).unwrap();
    let mut out = Vec::new();
    let mut walk = |v: &serde_json::Value| {
        fn rec(v: &serde_json::Value, out: &mut Vec<f64>) {
            match v {
                serde_json::Value::Number(n) => out.push(n.as_f64().unwrap()),
                serde_json::Value::Object(o) => o.values().for_each(|x| rec(x, out)),
                _ => {}
            }
        }
        rec(v, &mut out)
    };
    walk(&m["intercept"]);
    walk(&m["coefficients"]);
    walk(&m["hashed"]);
    out
}

/// The objectives agree within 1e-9 (relative) and the parameters within
/// what the gradient tolerance leaves (1e-9 over a curvature of at least
/// l2 = 1e-4).
fn same_optimum(got: &Path, want: &Path, what: &str) {
    let (a, b) = (training(got), training(want));
    let (oa, ob) = (
        a["objective"].as_f64().unwrap(),
        b["objective"].as_f64().unwrap(),
    );
    assert!(
        (oa - ob).abs() <= 1e-9 * ob.abs(),
        "{what}: objective after forgetting {oa}, from scratch {ob}"
    );
    let (wa, wb) = (weights(got), weights(want));
    assert_eq!(wa.len(), wb.len(), "{what}");
    let worst = wa
        .iter()
        .zip(&wb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "{what}: a parameter differs by {worst}");
}

/// Trains on every row with a state, forgets `gone` in two requests, and
/// checks the result against training from scratch on the rest (with a
/// state of its own, as a user would train it).
fn forget_reaches_the_scratch_optimum(file: &str, rows: usize, body: &str, optimizer: &str) {
    let dir = tempfile::tempdir().unwrap();
    let gone = |i: usize| i % 17 == 4 || i.is_multiple_of(29);
    let all = keyed(dir.path(), file, "all.parquet", |_| true);
    let rest = keyed(dir.path(), file, "rest.parquet", |i| !gone(i));
    let scratch = dir.path().join("scratch.json");
    let p_rest = pipeline(dir.path(), "rest", &rest, body, optimizer, true);
    tidemill_ok(&["train", s(&p_rest), "--model-out", s(&scratch)]);
    let p_all = pipeline(dir.path(), "all", &all, body, optimizer, true);
    let model = dir.path().join("model.json");
    let out: serde_json::Value = serde_json::from_str(&tidemill_ok(&[
        "train",
        s(&p_all),
        "--model-out",
        s(&model),
        "-w",
        "2",
    ]))
    .unwrap();
    assert!(out["state"].is_string(), "{out}");
    assert_eq!(training(&model)["data"]["rows"], rows);
    for (name, part) in [("a.csv", 0), ("b.csv", 1)] {
        let keys = key_file(
            dir.path(),
            name,
            (0..rows).filter(|&i| gone(i) && i % 2 == part),
        );
        tidemill_ok(&[
            "forget",
            s(&p_all),
            "--keys",
            s(&keys),
            "--model-out",
            s(&model),
            "-w",
            "2",
        ]);
    }
    let (got, want) = (training(&model), training(&scratch));
    let remaining = (0..rows).filter(|&i| !gone(i)).count();
    assert_eq!(got["rows"], remaining);
    assert_eq!(got["data"]["rows"], remaining);
    let _ = want;
    same_optimum(&model, &scratch, file);
    // One row more: a small change to the optimum, found as precisely.
    let one = key_file(dir.path(), "one.csv", [1usize].into_iter());
    tidemill_ok(&[
        "forget",
        s(&p_all),
        "--keys",
        s(&one),
        "--model-out",
        s(&model),
    ]);
    let rest1 = keyed(dir.path(), file, "rest1.parquet", |i| !gone(i) && i != 1);
    let scratch1 = dir.path().join("scratch1.json");
    let p_rest1 = pipeline(dir.path(), "rest1", &rest1, body, optimizer, true);
    tidemill_ok(&["train", s(&p_rest1), "--model-out", s(&scratch1)]);
    same_optimum(&model, &scratch1, &format!("{file}, one row"));
    // Warm-started: fewer iterations than from zero.
    let (ia, ib) = (
        training(&model)["epochs"].as_u64().unwrap(),
        training(&scratch1)["epochs"].as_u64().unwrap(),
    );
    assert!(ia < ib, "{file}: {ia} iterations warm, {ib} from scratch");
    // The model to start from must be the state's.
    let two = key_file(dir.path(), "two.csv", [2usize].into_iter());
    let out = tidemill(&[
        "forget",
        s(&p_all),
        "--keys",
        s(&two),
        "--model-out",
        s(&scratch),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not the model of the state"),
        "{out:?}"
    );
    // The rows must stay what the state was built from.
    std::fs::copy(&rest, &all).unwrap();
    let more = key_file(dir.path(), "c.csv", [2usize].into_iter());
    let out = tidemill(&[
        "forget",
        s(&p_all),
        "--keys",
        s(&more),
        "--model-out",
        s(&model),
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the state was built from"),
        "{out:?}"
    );
}

#[test]
fn forgetting_rows_of_a_logistic_model_reaches_the_scratch_optimum() {
    forget_reaches_the_scratch_optimum(
        "adult.parquet",
        48_842,
        "label = \"income\"\nclasses = [\"<=50K\", \">50K\"]\n\
         categorical = [\"workclass\", \"education\", \"marital-status\", \"occupation\", \"relationship\", \"race\", \"gender\", \"native-country\"]\n\
         hash_bits = 12\n[model]\nkind = \"logistic\"\nl2 = 0.0001",
        SMOOTH,
    );
}

/// The L-BFGS settings of the smooth models: the gradient, to 1e-9.
const SMOOTH: &str = "gradient_tolerance = 1e-9\n[train]\nepochs = 1000";

/// Hinge: L-BFGS gives the start, the dual is solved exactly from it
/// (certified to a relative gap of 1e-10), on adult's hashed columns,
/// whose repeated rows (some with both labels) make the exact step's
/// systems singular.
#[test]
fn forgetting_rows_of_a_hinge_model_reaches_the_scratch_optimum() {
    forget_reaches_the_scratch_optimum(
        "adult.parquet",
        48_842,
        "label = \"income\"\nclasses = [\"<=50K\", \">50K\"]\n\
         categorical = [\"workclass\", \"education\", \"marital-status\", \"occupation\", \"relationship\", \"race\", \"gender\", \"native-country\"]\n\
         hash_bits = 12\n[model]\nkind = \"hinge\"\nl2 = 0.0001",
        "[train]\nepochs = 100",
    );
}

/// A hinge model with a state is the same bits on one worker as on two
/// (the L-BFGS start is, and the dual is solved on process 0 in the
/// rows' order).
#[test]
fn a_hinge_model_with_a_state_is_the_same_on_one_and_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let data = keyed(dir.path(), "breast_cancer.parquet", "bc.parquet", |_| true);
    let mut models = Vec::new();
    for workers in ["1", "2"] {
        let p = pipeline(
            dir.path(),
            &format!("w{workers}"),
            &data,
            "label = \"target\"\n[model]\nkind = \"hinge\"\nl2 = 0.01",
            "[train]\nepochs = 100",
            true,
        );
        let model = dir.path().join(format!("w{workers}.json"));
        tidemill_ok(&["train", s(&p), "--model-out", s(&model), "-w", workers]);
        assert_eq!(training(&model)["optimizer"], "lbfgs+dual");
        models.push(std::fs::read(&model).unwrap());
    }
    assert!(models[0] == models[1], "the models differ");
}

#[test]
fn forgetting_rows_of_a_softmax_model_reaches_the_scratch_optimum() {
    forget_reaches_the_scratch_optimum(
        "digits.parquet",
        1797,
        "label = \"target\"\nclasses = [\"0\", \"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\"]\n\
         [model]\nkind = \"softmax\"\nl2 = 0.01",
        SMOOTH,
    );
}

#[test]
fn a_state_is_refused_where_forgetting_could_not_be_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("datasets/breast_cancer.parquet");
    for (body, optimizer, key) in [
        (
            "[model]\nkind = \"logistic\"\nl2 = 0.01",
            "adam",
            "output.state",
        ),
        ("[model]\nkind = \"logistic\"", "lbfgs", "model.l2"),
        (
            "[model]\nkind = \"hinge\"\nl2 = 0.01\nfit_intercept = false",
            "lbfgs",
            "model.fit_intercept",
        ),
        (
            "[model]\nkind = \"logistic\"\nl2 = 0.01\nl1 = 0.01",
            "lbfgs",
            "model.l1",
        ),
        (
            "[model]\nkind = \"softmax\"\nl2 = 0.01",
            "lbfgs",
            "data.classes",
        ),
    ] {
        let p = dir.path().join("p.toml");
        std::fs::write(
            &p,
            format!(
                "[data]\ntrain = {:?}\nlabel = \"target\"\nkey = \"mean_radius\"\n{body}\n[optimizer]\nkind = \"{optimizer}\"\n[output]\nstate = {:?}\n",
                s(&data),
                s(&dir.path().join("state"))
            ),
        )
        .unwrap();
        let out = tidemill(&["train", s(&p)]);
        assert_eq!(out.status.code(), Some(2), "{body}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(key),
            "{out:?}"
        );
    }
}
