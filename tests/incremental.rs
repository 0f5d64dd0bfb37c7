//! Exact incremental models (`optimizer.kind = "exact"`, `tidemill
//! forget`) through the real binary on real Parquet files: the solution
//! against an independent closed form, forgetting against training from
//! scratch on what remains (bit for bit), and the refusals.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray};
use common::{assert_success, root, tidemill, tidemill_ok, write_parquet};

const FEATURES: [&str; 8] = common::CALIFORNIA_FEATURES;
const LABEL: &str = common::CALIFORNIA_LABEL;

/// california_housing with a key column `id` = `r<row>`, keeping the rows
/// `keep` selects, in row groups of 1000 (several units).
fn keyed(dir: &Path, name: &str, keep: impl Fn(usize) -> bool) -> PathBuf {
    common::keyed_california(dir, name, keep, |i| format!("r{i}"))
}

fn pipeline(dir: &Path, data: &Path, state: &str) -> PathBuf {
    let text = format!(
        "[data]\ntrain = {:?}\nlabel = \"{LABEL}\"\nkey = \"id\"\nstandardize = true\n\
         [model]\nkind = \"linear\"\nl2 = 0.001\n[optimizer]\nkind = \"exact\"\n\
         [output]\nstate = {:?}\n",
        data.to_string_lossy(),
        dir.join(state).to_string_lossy()
    );
    let path = dir.join(format!("{state}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train(pipeline: &Path, model: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["train", s(pipeline), "--model-out", s(model)];
    args.extend_from_slice(extra);
    serde_json::from_str(&tidemill_ok(&args)).unwrap()
}

/// Runs `tidemill forget` with `keys` as CSV on stdin.
fn forget(pipeline: &Path, model: &Path, keys: &[String]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args([
            "forget",
            s(pipeline),
            "--keys",
            "-",
            "--model-out",
            s(model),
        ])
        .current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let csv = std::iter::once("id".to_string())
        .chain(keys.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    use std::io::Write;
    // A run that refuses its state exits before reading its keys; the
    // closed pipe is then expected, and its exit status is what is tested.
    let mut stdin = child.stdin.take().unwrap();
    if let Err(e) = stdin.write_all(csv.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn keys(rows: impl Iterator<Item = usize>) -> Vec<String> {
    rows.map(|i| format!("r{i}")).collect()
}

fn theta(model: &Path) -> Vec<f64> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model).unwrap()).unwrap();
    std::iter::once(m["intercept"].as_f64().unwrap())
        .chain(
            FEATURES
                .iter()
                .map(|f| m["coefficients"][f].as_f64().unwrap()),
        )
        .collect()
}

#[test]
fn exact_ridge_is_the_closed_form_and_lbfgs_optimum() {
    let dir = tempfile::tempdir().unwrap();
    let data = keyed(dir.path(), "all.parquet", |_| true);
    let p = pipeline(dir.path(), &data, "state");
    let model = dir.path().join("exact.json");
    let summary = train(&p, &model, &["-w", "2"]);
    // The normal equations in f64, computed independently (tests/common).
    let best = common::ridge_closed_form(&common::load("california_housing.parquet", LABEL), 0.001);
    let got = theta(&model);
    let diff = got
        .iter()
        .zip(&best)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        diff < 1e-8,
        "coefficients differ from the closed form by {diff}"
    );
    // L-BFGS on the same objective reaches the same optimum.
    let lbfgs = dir.path().join("lbfgs.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let stateless = dir.path().join("lbfgs.toml");
    std::fs::write(&stateless, text.split("[output]").next().unwrap()).unwrap();
    let out = tidemill_ok(&[
        "train",
        s(&stateless),
        "--set",
        "optimizer.kind=\"lbfgs\"",
        "--set",
        "train.epochs=1000",
        "--model-out",
        s(&lbfgs),
    ]);
    let lb: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (fe, fl) = (
        summary["objective"].as_f64().unwrap(),
        lb["objective"].as_f64().unwrap(),
    );
    assert!(
        (fe - fl).abs() / fl < 1e-8 && fe <= fl * (1.0 + 1e-12),
        "exact {fe} vs L-BFGS {fl}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert_eq!(m["training"]["optimizer"], "exact");
    assert_eq!(m["training"]["data"]["rows"], 20640);
    assert_eq!(m["training"]["data"]["key"], "id");
    // The saved model predicts: the binary reads it back.
    let scored = dir.path().join("scored.csv");
    tidemill_ok(&[
        "predict",
        "--model",
        s(&model),
        "--input",
        s(&data),
        "--output",
        s(&scored),
    ]);
    assert_eq!(
        std::fs::read_to_string(&scored).unwrap().lines().count(),
        20641
    );
}

#[test]
fn forgetting_rows_equals_never_training_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let all = keyed(dir.path(), "all.parquet", |_| true);
    let rest = keyed(dir.path(), "rest.parquet", |i| i % 3 != 0 && i % 7 != 1);
    let p_all = pipeline(dir.path(), &all, "state");
    let p_rest = pipeline(dir.path(), &rest, "rest_state");
    // The model of the remaining rows, trained from scratch on 1 worker.
    let scratch = dir.path().join("scratch.json");
    train(&p_rest, &scratch, &[]);
    // Every row on 3 workers, then two forgets (one key file each).
    let model = dir.path().join("model.json");
    let before = train(&p_all, &model, &["-w", "3"]);
    let first = keys((0..20640).filter(|i| i % 3 == 0));
    let second = keys((0..20640).filter(|i| i % 3 != 0 && i % 7 == 1));
    let out = forget(&p_all, &model, &first);
    assert_success(&out, "forget (first)");
    let out = forget(&p_all, &model, &second);
    assert_success(&out, "forget (second)");
    let after: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(before["keys_blake3_sum"], after["keys_blake3_sum"]);
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(&scratch).unwrap(),
        "the model after forgetting differs from the model of the remaining rows"
    );
}

#[test]
fn same_model_file_on_any_worker_count_and_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let data = keyed(dir.path(), "all.parquet", |_| true);
    let p = pipeline(dir.path(), &data, "state");
    let one = dir.path().join("one.json");
    train(&p, &one, &[]);
    for w in ["2", "4"] {
        let m = dir.path().join(format!("w{w}.json"));
        train(&p, &m, &["-w", w]);
        assert_eq!(
            std::fs::read(&m).unwrap(),
            std::fs::read(&one).unwrap(),
            "{w} workers"
        );
    }
    let hosts = common::hostfile(dir.path(), 2);
    let multi = dir.path().join("multi.json");
    let spawn = |process: &str| {
        common::start(
            &[
                "train",
                s(&p),
                "--processes",
                "2",
                "--process",
                process,
                "--hostfile",
                s(&hosts),
                "--model-out",
                s(&multi),
            ],
            &[],
        )
    };
    let (p0, p1) = (spawn("0"), spawn("1"));
    let limit = std::time::Duration::from_secs(120);
    let (o0, o1) = (common::finish(p0, limit), common::finish(p1, limit));
    assert_success(&o0, "process 0");
    assert_success(&o1, "process 1");
    assert_eq!(
        std::fs::read(&multi).unwrap(),
        std::fs::read(&one).unwrap(),
        "2 processes"
    );
    // And the state the processes wrote together serves a forget.
    let out = forget(&p, &multi, &keys(0..10));
    assert_success(&out, "forget after a 2-process train");
}

#[test]
fn forgetting_keys_never_inserted_is_an_error_that_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = keyed(dir.path(), "all.parquet", |i| i < 5000);
    let p = pipeline(dir.path(), &data, "state");
    let model = dir.path().join("model.json");
    train(&p, &model, &[]);
    let snapshot = |d: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let state = dir.path().join("state");
    let (model_before, state_before) = (std::fs::read(&model).unwrap(), snapshot(&state));
    let out = forget(&p, &model, &["r1".into(), "nobody".into(), "r9999".into()]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 key(s) were never inserted")
            && err.contains("'nobody'")
            && err.contains("'r9999'"),
        "{err}"
    );
    assert!(!err.contains("'r1'"), "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), model_before);
    assert_eq!(snapshot(&state), state_before);
    // Forgetting twice: the second time is an error too.
    assert_success(&forget(&p, &model, &["r1".into()]), "forget r1");
    let out = forget(&p, &model, &["r1".into()]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forgotten already"));
    // A key listed twice in one request.
    let out = forget(&p, &model, &["r2".into(), "r2".into()]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listed twice"));
}

#[test]
fn repeated_keys_and_misfit_pipelines_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Rows 0..100 twice: ids repeat.
    let a = keyed(dir.path(), "a.parquet", |i| i < 100);
    let b = dir.path().join("b.parquet");
    std::fs::copy(&a, &b).unwrap();
    let text = format!(
        "[data]\ntrain = [{:?}, {:?}]\nlabel = \"{LABEL}\"\nkey = \"id\"\n[model]\nkind = \"linear\"\n[optimizer]\nkind = \"exact\"\n",
        a.to_string_lossy(),
        b.to_string_lossy()
    );
    let p = dir.path().join("dup.toml");
    std::fs::write(&p, text).unwrap();
    let out = tidemill(&["train", s(&p), "-w", "2"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("100 key(s)") && err.contains("occur more than once") && err.contains("row 0"),
        "{err}"
    );
    let data = keyed(dir.path(), "all.parquet", |i| i < 100);
    let p = pipeline(dir.path(), &data, "state");
    for (set, key) in [
        ("model.kind=\"logistic\"", "optimizer.kind"),
        ("data.key=\"idd\"", "data.key"),
        ("data.on_missing=\"mean\"", "data.on_missing"),
        ("model.l1=0.1", "model.l1"),
    ] {
        let out = tidemill(&["train", s(&p), "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(key), "{set}: {err}");
    }
}

/// The nycflights13 pipeline of the window test: ridge on a few numeric
/// columns, rows with a missing value dropped.
fn nyc_pipeline(data: &Path, extra: &str) -> String {
    format!(
        "[data]\ntrain = {:?}\nlabel = \"arr_delay\"\n\
         features = [\"dep_delay\", \"distance\", \"hour\", \"sched_dep_time\", \"month\"]\n\
         on_missing = \"skip_row\"\nstandardize = true\n\
         [model]\nkind = \"linear\"\nl2 = 0.01\n[optimizer]\nkind = \"exact\"\n{extra}",
        data.to_string_lossy()
    )
}

#[test]
fn a_seven_day_window_equals_training_on_each_windows_rows() {
    use arrow::array::{Array, AsArray, UInt32Array};
    use arrow::datatypes::{DataType, Int64Type, TimeUnit};
    let dir = tempfile::tempdir().unwrap();
    let nyc = root().join("datasets/nycflights13.parquet");
    let model = dir.path().join("m.json");
    let metrics = dir.path().join("metrics.jsonl");
    let p = dir.path().join("window.toml");
    std::fs::write(
        &p,
        nyc_pipeline(
            &nyc,
            "[stream]\norder_by = \"time_hour\"\nbatch_rows = 40000\nsnapshot_every = 1\nsnapshot_keep = 100\n\
             window = { column = \"time_hour\", length = \"7d\" }\n",
        ),
    )
    .unwrap();
    let out = tidemill_ok(&[
        "stream",
        s(&p),
        "--input",
        s(&nyc),
        "--model-out",
        s(&model),
        "--metrics-out",
        s(&metrics),
        "-w",
        "2",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(summary["expired"].as_u64().unwrap() > 300_000, "{summary}");
    // The rows in time order (a stable sort, as the replay's).
    let batches = common::dataset_batches("nycflights13.parquet");
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let th = all.column_by_name("time_hour").unwrap();
    let text = th.as_string::<i32>();
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_by(|a, b| text.value(*a as usize).cmp(text.value(*b as usize)));
    let sorted = arrow::compute::take_record_batch(&all, &UInt32Array::from(order)).unwrap();
    let secs = arrow::compute::cast(
        sorted.column_by_name("time_hour").unwrap(),
        &DataType::Timestamp(TimeUnit::Second, None),
    )
    .unwrap();
    let secs = arrow::compute::cast(&secs, &DataType::Int64).unwrap();
    let secs = secs.as_primitive::<Int64Type>();
    let usable = |i: usize| {
        [
            "arr_delay",
            "dep_delay",
            "distance",
            "hour",
            "sched_dep_time",
            "month",
        ]
        .iter()
        .all(|c| !sorted.column_by_name(c).unwrap().is_null(i))
    };
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut compared = 0;
    for (k, line) in lines.iter().enumerate() {
        let consumed = line["source_rows"].as_u64().unwrap() as usize;
        let newest = (0..consumed)
            .filter(|&i| usable(i))
            .map(|i| secs.value(i))
            .max()
            .unwrap();
        let keep: Vec<u32> = (0..consumed)
            .filter(|&i| usable(i) && secs.value(i) > newest - 7 * 86_400)
            .map(|i| i as u32)
            .collect();
        let rows = arrow::compute::take_record_batch(&sorted, &UInt32Array::from(keep)).unwrap();
        let part = dir.path().join(format!("window-{k}.parquet"));
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&part).unwrap(),
            rows.schema(),
            None,
        )
        .unwrap();
        w.write(&rows).unwrap();
        w.close().unwrap();
        let scratch_p = dir.path().join(format!("scratch-{k}.toml"));
        std::fs::write(&scratch_p, nyc_pipeline(&part, "")).unwrap();
        let scratch = dir.path().join(format!("scratch-{k}.json"));
        train(&scratch_p, &scratch, &[]);
        let snapshot = dir.path().join(format!("m-{:06}.json", k + 1));
        assert_eq!(
            std::fs::read(&snapshot).unwrap(),
            std::fs::read(&scratch).unwrap(),
            "snapshot {} (after {consumed} rows) differs from training on its window's rows",
            k + 1
        );
        compared += 1;
    }
    assert!(compared >= 5, "{compared} snapshots compared");
}

#[test]
fn a_stream_with_retractions_ends_with_the_model_of_what_remains() {
    let dir = tempfile::tempdir().unwrap();
    let all = keyed(dir.path(), "all.parquet", |_| true);
    let rest = keyed(dir.path(), "rest.parquet", |i| i % 5 != 2);
    // The keys to forget, as CSV, some of them before their rows come.
    let gone = dir.path().join("gone.csv");
    let mut csv = String::from("id\n");
    for i in (0..20640).filter(|i| i % 5 == 2).rev() {
        csv.push_str(&format!("r{i}\n"));
    }
    std::fs::write(&gone, csv).unwrap();
    let p_rest = pipeline(dir.path(), &rest, "rest");
    let scratch = dir.path().join("scratch.json");
    train(&p_rest, &scratch, &[]);
    let text = std::fs::read_to_string(&p_rest).unwrap();
    let stateless = dir.path().join("stream.toml");
    std::fs::write(
        &stateless,
        text.split("[output]").next().unwrap().to_string() + "[stream]\nbatch_rows = 3000\n",
    )
    .unwrap();
    for w in ["1", "3"] {
        let model = dir.path().join(format!("stream-{w}.json"));
        let out = tidemill_ok(&[
            "stream",
            s(&stateless),
            "--input",
            s(&all),
            "--retract",
            s(&gone),
            "--model-out",
            s(&model),
            "-w",
            w,
        ]);
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["retracted"], 4128);
        assert_eq!(summary["rows_present"], 20640 - 4128);
        assert_eq!(
            std::fs::read(&model).unwrap(),
            std::fs::read(&scratch).unwrap(),
            "{w} workers"
        );
    }
    // A key that never comes is an error naming it.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "id\nr1\nstranger\n").unwrap();
    let out = tidemill(&[
        "stream",
        s(&stateless),
        "--input",
        s(&all),
        "--retract",
        s(&bad),
    ]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'stranger'") && !err.contains("'r1'"), "{err}");
}

/// A stream continues the state a `train` left and leaves one that
/// `forget` and a second stream continue: the model at each step is the
/// model of the rows present, trained from scratch.
#[test]
fn streams_continue_a_saved_state_and_leave_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = keyed(dir.path(), "first.parquet", |i| i < 8000);
    let second = keyed(dir.path(), "second.parquet", |i| (8000..15000).contains(&i));
    let third = keyed(dir.path(), "third.parquet", |i| i >= 15000);
    let p = pipeline(dir.path(), &first, "state");
    let model = dir.path().join("model.json");
    train(&p, &model, &[]);
    // Stream the second part, retracting keys of both parts as it goes.
    let gone = |i: usize| i % 9 == 5 && i < 15000;
    let gone_csv = dir.path().join("gone.csv");
    let list: String = (0..20640)
        .filter(|&i| gone(i))
        .map(|i| format!("r{i}\n"))
        .collect();
    std::fs::write(&gone_csv, format!("id\n{list}")).unwrap();
    let out = tidemill_ok(&[
        "stream",
        s(&p),
        "--input",
        s(&second),
        "--retract",
        s(&gone_csv),
        "--model-out",
        s(&model),
        "-w",
        "2",
        "--set",
        "stream.batch_rows=2000",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["rows_continued"], 8000);
    assert!(summary["state"].is_string(), "{summary}");
    let scratch = |name: &str, keep: &dyn Fn(usize) -> bool| {
        let data = keyed(dir.path(), &format!("{name}.parquet"), keep);
        let path = dir.path().join(format!("{name}.json"));
        train(&pipeline(dir.path(), &data, name), &path, &[]);
        std::fs::read(path).unwrap()
    };
    let after_stream = scratch("s1", &|i| i < 15000 && !gone(i));
    assert_eq!(
        std::fs::read(&model).unwrap(),
        after_stream,
        "after the stream"
    );
    // A forget after the stream reaches rows of both parts.
    let out = forget(&p, &model, &keys([3usize, 9000].into_iter()));
    assert_success(&out, "forget after the stream");
    let after_forget = scratch("s2", &|i| i < 15000 && !gone(i) && i != 3 && i != 9000);
    assert_eq!(
        std::fs::read(&model).unwrap(),
        after_forget,
        "after the forget"
    );
    // A second stream continues from there; a key of the state again is
    // an error that leaves the state as it was.
    tidemill_ok(&[
        "stream",
        s(&p),
        "--input",
        s(&third),
        "--model-out",
        s(&model),
    ]);
    let after_third = scratch("s3", &|i| !gone(i) && i != 3 && i != 9000);
    assert_eq!(
        std::fs::read(&model).unwrap(),
        after_third,
        "after the second stream"
    );
    let out = tidemill(&["stream", s(&p), "--input", s(&second)]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("keys of the [output] state count"));
    let out = forget(&p, &model, &keys([20000usize].into_iter()));
    assert_success(&out, "forget after a failed stream");
    let last = scratch("s4", &|i| !gone(i) && i != 3 && i != 9000 && i != 20000);
    assert_eq!(
        std::fs::read(&model).unwrap(),
        last,
        "after the last forget"
    );
    // Training again into a state a stream added rows to would drop them.
    let q = pipeline(dir.path(), &first, "state2");
    train(&q, &model, &[]);
    tidemill_ok(&["stream", s(&q), "--input", s(&second)]);
    let out = tidemill(&["train", s(&q)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("a stream added rows"));
}

/// One feature `t` and a label, written to `name`.
fn two_columns(dir: &Path, name: &str, t: Vec<f64>, y: Vec<f64>) -> PathBuf {
    let path = dir.join(name);
    write_parquet(
        &path,
        vec![
            ("t", Arc::new(Float64Array::from(t)) as ArrayRef),
            ("y", Arc::new(Float64Array::from(y)) as ArrayRef),
        ],
        1000,
    );
    path
}

fn plain_pipeline(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let path = dir.join("plain.toml");
    std::fs::write(
        &path,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"y\"\n{extra}\n[model]\nkind = \"linear\"\nl2 = 0.0\n[optimizer]\nkind = \"exact\"\n",
            data.to_string_lossy()
        ),
    )
    .unwrap();
    path
}

/// Large-offset, constant and tiny columns: the exact centred moments get
/// the first two right, and the third is refused rather than misstated.
#[test]
fn magnitudes_that_cancel_in_floating_point_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    // t = 1.7e9 + i % 100, y = 0.5 (t − 1.7e9) + 3: recovered exactly.
    let t: Vec<f64> = (0..5000).map(|i| 1.7e9 + (i % 100) as f64).collect();
    let y: Vec<f64> = t.iter().map(|t| 0.5 * (t - 1.7e9) + 3.0).collect();
    let data = two_columns(dir.path(), "ts.parquet", t, y);
    for standardize in ["false", "true"] {
        let p = plain_pipeline(dir.path(), &data, &format!("standardize = {standardize}"));
        let model = dir.path().join("ts.json");
        train(&p, &model, &[]);
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
        let f = &m["features"]["numeric"][0];
        let slope = m["coefficients"]["t"].as_f64().unwrap() / f["scale"].as_f64().unwrap();
        assert!(
            (slope - 0.5).abs() < 1e-9,
            "standardize = {standardize}: slope {slope}"
        );
        assert!(m["training"]["objective"].as_f64().unwrap() < 1e-12);
    }
    // A constant column: scale 1, weight 0.
    let data = two_columns(
        dir.path(),
        "const.parquet",
        vec![0.7; 100],
        (0..100).map(f64::from).collect(),
    );
    let p = plain_pipeline(dir.path(), &data, "standardize = true");
    let model = dir.path().join("const.json");
    // (Without a penalty a constant column makes the system singular: an
    // error, tested in solve.rs.)
    train(&p, &model, &["--set", "model.l2=0.01"]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert_eq!(m["features"]["numeric"][0]["scale"], 1.0);
    assert_eq!(m["coefficients"]["t"], 0.0);
    // A column varying by 1e-7: refused, naming it.
    let data = two_columns(
        dir.path(),
        "tiny.parquet",
        (0..100).map(|i| 1e-7 * (i % 7) as f64).collect(),
        (0..100).map(f64::from).collect(),
    );
    let p = plain_pipeline(dir.path(), &data, "standardize = true");
    let out = tidemill(&["train", s(&p)]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("'t' varies by only"));
}

#[test]
fn a_damaged_state_or_one_with_forgotten_keys_is_not_built_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = keyed(dir.path(), "all.parquet", |i| i < 200);
    let p = pipeline(dir.path(), &data, "state");
    let model = dir.path().join("model.json");
    train(&p, &model, &[]);
    assert_success(&forget(&p, &model, &keys(0..3)), "forget");
    // Training again into it would bring the forgotten keys back.
    let out = tidemill(&["train", s(&p)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 forgotten key(s)"));
    // A damaged newest generation: an error, not the older generation.
    let newest = dir.path().join("state/checkpoint-000000000002.tmck");
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&newest, bytes).unwrap();
    let out = forget(&p, &model, &keys(5..6));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
    // A stream whose rows are all retracted ends without a model: an error.
    let gone = dir.path().join("all.csv");
    std::fs::write(
        &gone,
        std::iter::once("id".to_string())
            .chain(keys(0..200))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let stateless = dir.path().join("s.toml");
    std::fs::write(&stateless, text.split("[output]").next().unwrap()).unwrap();
    let out = tidemill(&[
        "stream",
        s(&stateless),
        "--input",
        s(&data),
        "--retract",
        s(&gone),
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key stays forgotten: a retraction applies to the row present, and to
/// a row with that key that comes after it left the window.
#[test]
fn a_forgotten_key_stays_forgotten_in_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("reuse.parquet");
    write_parquet(
        &data,
        vec![
            (
                "x",
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 5.0, 8.0])) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Float64Array::from(vec![1.0, 4.0, 9.0, 25.0, 64.0])) as ArrayRef,
            ),
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b", "c", "a", "d"])) as ArrayRef,
            ),
        ],
        1,
    );
    let p = dir.path().join("reuse.toml");
    std::fs::write(
        &p,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"y\"\nkey = \"id\"\n[model]\nkind = \"linear\"\nl2 = 0.1\n\
             [optimizer]\nkind = \"exact\"\n[stream]\nbatch_rows = 1\nwindow = {{ rows = 2 }}\n",
            data.to_string_lossy()
        ),
    )
    .unwrap();
    let gone = dir.path().join("gone.csv");
    std::fs::write(&gone, "id\na\n").unwrap();
    let out = tidemill_ok(&["stream", s(&p), "--input", s(&data), "--retract", s(&gone)]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The window ends with a (again) and d: a stays forgotten.
    assert_eq!(summary["rows_present"], 1, "{summary}");
    assert_eq!(summary["retracted"], 1, "{summary}");
}

/// Whether any file under `dir` holds `bytes`.
fn dir_holds(dir: &Path, bytes: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let data = std::fs::read(e.unwrap().path()).unwrap_or_default();
        data.windows(bytes.len()).any(|w| w == bytes)
    })
}

/// `forget --erase` removes the rows of every forgotten key from the state
/// on disk (a value only those rows hold is in the directory before and
/// nowhere after), gives the model of a plain forget, and the state goes
/// on: a forgotten key again is refused, a stream continues it (a row
/// with an erased key leaves at once), and a later erase works.
#[test]
fn forget_erase_removes_the_rows_from_the_state_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The rows from 20000 on are not trained on: one comes later.
    let data = keyed(d, "all.parquet", |i| i < 20_000);
    // Rows whose MedInc no other row has: their bytes name them.
    let src = root().join("datasets/california_housing.parquet");
    let medinc = &common::read_columns(&src, &["MedInc"])[0];
    let is_unique = |i: &usize| medinc.iter().filter(|v| **v == medinc[*i]).count() == 1;
    let unique: Vec<usize> = (0..20_000).filter(is_unique).take(3).collect();
    let (a, b, c) = (unique[0], unique[1], unique[2]);
    // The row a stream brings back with b's key, after b was erased.
    let reborn = (20_000..medinc.len()).find(is_unique).unwrap();
    let value = |i: usize| medinc[i].to_le_bytes();
    let (p, q) = (pipeline(d, &data, "s"), pipeline(d, &data, "t"));
    let (pm, qm) = (d.join("p.json"), d.join("q.json"));
    train(&p, &pm, &[]);
    train(&q, &qm, &[]);
    let keys_file = |name: &str, rows: &[usize]| {
        let path = d.join(name);
        let text: String = rows.iter().map(|i| format!("r{i}\n")).collect();
        std::fs::write(&path, format!("id\n{text}")).unwrap();
        path
    };
    let state = d.join("s");
    assert!(
        dir_holds(&state, &value(a)),
        "the value is not in the state"
    );
    let ka = keys_file("a.csv", &[a]);
    let kb = keys_file("b.csv", &[b]);
    tidemill_ok(&["forget", s(&p), "--keys", s(&ka), "--model-out", s(&pm)]);
    assert!(dir_holds(&state, &value(a)), "a plain forget keeps the row");
    let out = tidemill_ok(&[
        "forget",
        s(&p),
        "--keys",
        s(&kb),
        "--erase",
        "--model-out",
        s(&pm),
    ]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["train_rows"], 20_000 - 2, "{summary}");
    for (i, what) in [(a, "earlier"), (b, "erased")] {
        assert!(
            !dir_holds(&state, &value(i)),
            "the {what} forgotten row is still on disk"
        );
    }
    assert!(dir_holds(&state, &value(c)), "a row still present went");
    for k in [&ka, &kb] {
        tidemill_ok(&["forget", s(&q), "--keys", s(k), "--model-out", s(&qm)]);
    }
    assert_eq!(
        std::fs::read(&pm).unwrap(),
        std::fs::read(&qm).unwrap(),
        "an erasing forget's model differs from a plain forget's"
    );
    let out = tidemill(&["forget", s(&p), "--keys", s(&kb), "--erase"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("forgotten already"));
    // A stream continues the erased state; a row with an erased key
    // leaves at once.
    let rows = |m: &Path| -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(m).unwrap()).unwrap();
        v["training"]["data"]["rows"].as_u64().unwrap()
    };
    let before = rows(&pm);
    let again = common::keyed_california(
        d,
        "again.parquet",
        |i| i == reborn || (i > reborn && i <= reborn + 2),
        |i| {
            if i == reborn {
                format!("r{b}")
            } else {
                format!("n{i}")
            }
        },
    );
    tidemill_ok(&["stream", s(&p), "--input", s(&again), "--model-out", s(&pm)]);
    assert_eq!(rows(&pm), before + 2);
    let kc = keys_file("c.csv", &[c]);
    tidemill_ok(&[
        "forget",
        s(&p),
        "--keys",
        s(&kc),
        "--erase",
        "--model-out",
        s(&pm),
    ]);
    // c's row, and the row that came back with b's key, are gone.
    assert!(!dir_holds(&state, &value(c)));
    assert!(
        !dir_holds(&state, &value(reborn)),
        "a row that came with an erased key stayed on disk"
    );
    assert_eq!(rows(&pm), before + 1);
    // A stream on the erased state, stopped mid-way and resumed, ends:
    // the erased keys are not keys to wait for.
    let later = common::keyed_california(d, "later.parquet", |i| i < 3000, |i| format!("l{i}"));
    let stream_args = |extra: &[&str]| {
        let mut a = vec![
            "stream",
            s(&p),
            "--input",
            s(&later),
            "--model-out",
            s(&pm),
            "--set",
            "stream.batch_rows=100",
            "--set",
            "stream.snapshot_every=1",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let argv = stream_args(&["--rate", "2000"]);
    let child = common::start(&argv.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    // Once it has committed a batch or two (a model file is written just
    // before each commit).
    common::wait_until("a commit of the stream", || {
        std::fs::read_to_string(&pm)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["training"]["data"]["rows"].as_u64())
            .is_some_and(|n| n >= before + 1 + 200)
    });
    common::sigterm(&child);
    let out = common::finish(child, std::time::Duration::from_secs(60));
    assert_success(&out, "the stopped stream");
    let argv = stream_args(&["--resume"]);
    let out = tidemill(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_success(&out, "the resumed stream on an erased state");
    assert_eq!(rows(&pm), before + 1 + 3000);
}
